//! The permutohedral lattice of `crf::lattice` on the device (`kernels/crf.cu`): built from
//! features already on the device, a batch of images at once (each image on its own lattice:
//! the image index is part of every key), then filtered by splat / blur / slice. Nothing is read
//! back to build it: vertex counts stay on the device, where the kernels read them.

use crate::backend::cuda::kernels as k;
use crate::backend::cuda::launch::{Arg, grid_1d, launch, launch_cooperative, to_i32};
use crate::backend::cuda::{CudaDevice, CudaError, GpuBuffer};
use crate::error::{Error, Result};
use cudarc::driver::DeviceRepr;

/// Feature dimensions the device lattice is compiled for: smoothness (x, y) and appearance
/// (x, y, r, g, b), the two kernels of pydensecrf's usual call.
pub const GPU_DIMS: [usize; 2] = [2, 5];

/// Most images one batched lattice holds (the image index is a 16-bit lane of every key).
pub const MAX_IMAGES: usize = 1 << 16;

/// Per-dimension scale of the elevation, as `lattice::Embedder::new` computes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct LatticeScale {
    s: [f32; 8],
}

impl LatticeScale {
    fn new(dim: usize) -> Self {
        let d1 = dim + 1;
        let inv_std_dev = ((2.0f64 / 3.0).sqrt() * d1 as f64) as f32;
        let mut s = [0f32; 8];
        for (i, v) in s[..dim].iter_mut().enumerate() {
            *v = (1.0 / (((i + 2) * (i + 1)) as f64).sqrt() * inv_std_dev as f64) as f32;
        }
        LatticeScale { s }
    }
}

/// One blur pass of one lattice (`struct BlurJob` of crf.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct BlurJob {
    meta: u64,
    neighbors: u64,
    input: u64,
    output: u64,
    zero: u64,
    d1: i32,
    j: i32,
    channels: i32,
    zero_channels: i32,
}

/// Most blur passes (d + 1 for the largest device dimension).
pub(super) const MAX_PASSES: usize = 6;

/// Every blur pass of up to two lattices, one cooperative launch (`struct BlurPasses` of crf.cu);
/// a job whose `meta` is 0 is skipped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct BlurPasses {
    pub(super) job: [[BlurJob; 2]; MAX_PASSES],
    pub(super) passes: i32,
}

// SAFETY: plain #[repr(C)] structs of u64/i32/f32 whose layouts match crf.cu's structs.
unsafe impl DeviceRepr for LatticeScale {}
unsafe impl DeviceRepr for BlurPasses {}

/// What the build kernels record in a lattice's meta words.
struct Meta {
    vertices: usize,
    /// The first point whose coordinates overflowed the 16-bit keys.
    overflow: Option<usize>,
    full: bool,
}

/// How large a lattice's hash table is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableSize {
    /// One slot per point: ample for images (neighbouring pixels share simplices, so vertices
    /// are a small fraction of points). Probing is bounded; if the table fills up, the build
    /// says so ([`GpuLattice::table_full`]) and is redone with `WorstCase`.
    Expected,
    /// Twice the most vertices the points can make (every simplex corner distinct): never full.
    WorstCase,
}

/// Slots probed before an `Expected` table counts as full.
const MAX_PROBES: u32 = 64;


/// A permutohedral lattice on the device over `points` feature vectors of `dim` values
/// (`per_image` consecutive points per image; each image gets its own vertices).
pub struct GpuLattice {
    pub(super) dim: usize,
    points: usize,
    /// Hash table: slot state (0 empty, 1 being written, 2 full), keys (4 words), dense ids.
    state: GpuBuffer,
    keys: GpuBuffer,
    ids: GpuBuffer,
    /// Word 0: the vertex count; word 4: 0xffffffff less the first point that overflowed the
    /// keys, 0 if none; word 8: 1 if the table filled up.
    meta: GpuBuffer,
    /// Table slots and the most vertices the lattice can have.
    cap: usize,
    max_vertices: usize,
    /// points x (d+1): vertex id + 1 of each simplex corner (0 is the zero sentinel row).
    pub(super) corners: GpuBuffer,
    /// points x (d+1): barycentric weights.
    pub(super) bary: GpuBuffer,
    /// vertices x (d+1) x 2: id + 1 of the neighbours below and above along each direction.
    neighbors: GpuBuffer,
}

/// Hash table slots for a lattice of `points` points: at least twice the most vertices it can
/// have (each corner of each point distinct), so the table is at most half full.
/// log2 of the table slots and the probe limit for `points` points of `dim` features.
fn table_shape(points: usize, dim: usize, size: TableSize) -> (u32, u32) {
    match size {
        TableSize::Expected => (points.max(64).next_power_of_two().trailing_zeros(), MAX_PROBES),
        TableSize::WorstCase => {
            let log2 = (2 * points * (dim + 1)).max(2).next_power_of_two().trailing_zeros();
            (log2, 1u32 << log2.min(31))
        }
    }
}

impl GpuLattice {
    /// Device bytes a lattice over `points` points of `dim` features takes.
    pub fn bytes_needed(points: usize, dim: usize, size: TableSize) -> usize {
        let d1 = dim + 1;
        let cap = 1usize << table_shape(points, dim, size).0;
        let vertices = cap.min(points * d1);
        4 * (cap * (1 + 4 + 1) + 12 + points * d1 * 2 + vertices * d1 * 2)
    }

    /// The most vertices the lattice can have (the value buffers' row count less the sentinel).
    pub fn max_vertices(&self) -> usize {
        self.max_vertices
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn points(&self) -> usize {
        self.points
    }

    /// densecrf's slice scale, 1 / (1 + 2^-d), as `Lattice::alpha`.
    pub fn alpha(&self) -> f32 {
        1.0 / (1.0 + 2f32.powi(-(self.dim as i32)))
    }

    /// Builds the lattice of `features` (points x dim f32 on the device, already divided by the
    /// kernel widths). Asynchronous: a point whose coordinates overflow the 16-bit keys is
    /// reported by [`Self::check`], a table that filled up by [`Self::table_full`].
    pub fn build(dev: &CudaDevice, features: &GpuBuffer, dim: usize, points: usize, per_image: usize, size: TableSize) -> Result<Self> {
        let op = "gpu lattice";
        let embed = match dim {
            2 => k::LATTICE_EMBED_D2,
            5 => k::LATTICE_EMBED_D5,
            _ => {
                return Err(Error::invalid(op, format!("feature dimension {dim}; the device lattice is built for {GPU_DIMS:?}")));
            }
        };
        if points == 0 || per_image == 0 || points % per_image != 0 {
            return Err(Error::shape(op, format!("{points} points are not whole images of {per_image} points")));
        }
        if points / per_image > MAX_IMAGES {
            return Err(Error::invalid(op, format!("{} images in one lattice; at most {MAX_IMAGES}", points / per_image)));
        }
        if features.len() != points * dim {
            return Err(Error::shape(op, format!("{} feature values for {points} points x {dim}", features.len())));
        }
        let d1 = dim + 1;
        let (cap_log2, max_probes) = table_shape(points, dim, size);
        let cap = 1usize << cap_log2;
        let max_vertices = cap.min(points * d1);
        to_i32(op, "hash table slots", cap)?;
        to_i32(op, "neighbour entries", max_vertices * d1 * 2)?;
        to_i32(op, "simplex corners", points * d1)?;
        check_free_memory(dev, op, Self::bytes_needed(points, dim, size), &format!("a lattice over {points} points of {dim} features"))?;
        let mut lat = GpuLattice {
            dim,
            points,
            state: dev.alloc(cap)?,
            keys: dev.alloc(cap * 4)?,
            ids: dev.alloc(cap)?,
            meta: dev.alloc(12)?,
            cap,
            max_vertices,
            corners: dev.alloc(points * d1)?,
            bary: dev.alloc(points * d1)?,
            neighbors: dev.alloc(max_vertices * d1 * 2)?,
        };
        dev.zero(&mut lat.state)?;
        dev.zero(&mut lat.meta)?;
        let scale = LatticeScale::new(dim);
        let table = [Arg::Ptr(lat.state.ptr_mut()), Arg::Ptr(lat.keys.ptr_mut()), Arg::I32(cap_log2 as i32), Arg::I32(max_probes as i32)];
        let mut args = vec![
            Arg::Ptr(features.ptr()),
            Arg::I32(points as i32),
            Arg::I32(per_image as i32),
            Arg::Struct(&scale),
            Arg::Ptr(lat.corners.ptr_mut()),
            Arg::Ptr(lat.bary.ptr_mut()),
        ];
        args.extend(table);
        args.push(Arg::Ptr(lat.meta.ptr_mut()));
        launch(dev, embed, grid_1d(dev, points), &args)?;
        let compact = [Arg::Ptr(lat.state.ptr()), Arg::Ptr(lat.ids.ptr_mut()), Arg::I32(cap as i32), Arg::Ptr(lat.meta.ptr_mut())];
        launch(dev, k::LATTICE_COMPACT, grid_1d(dev, cap), &compact)?;
        let finish = [
            Arg::Ptr(lat.corners.ptr_mut()),
            Arg::I32((points * d1) as i32),
            Arg::Ptr(lat.state.ptr()),
            Arg::Ptr(lat.keys.ptr()),
            Arg::Ptr(lat.ids.ptr()),
            Arg::I32(cap_log2 as i32),
            Arg::I32(max_probes as i32),
            Arg::I32(dim as i32),
            Arg::Ptr(lat.neighbors.ptr_mut()),
        ];
        launch(dev, k::LATTICE_FINISH, grid_1d(dev, cap.max(points * d1)), &finish)?;
        Ok(lat)
    }

    /// Whether the hash table filled up (waits for the device); the lattice is then incomplete
    /// and must be built again with [`TableSize::WorstCase`].
    pub fn table_full(&self, dev: &CudaDevice) -> Result<bool> {
        Ok(self.read_meta(dev)?.full)
    }

    /// The device address of the meta words (the crf_flags kernel reads words 4 and 8).
    pub(super) fn meta_ptr(&self) -> u64 {
        self.meta.ptr()
    }

    /// The meta words, read in one copy (waits for the device).
    fn read_meta(&self, dev: &CudaDevice) -> Result<Meta> {
        let m: Vec<u32> = dev.dtoh_words(&self.meta)?;
        Ok(Meta { vertices: m[0] as usize, overflow: (m[4] != 0).then(|| (u32::MAX - m[4]) as usize), full: m[8] != 0 })
    }

    /// The vertex count, or an error naming the first point whose features are too large for the
    /// 16-bit lattice keys (as the CPU lattice reports it) or saying the table filled up.
    fn checked_meta(&self, dev: &CudaDevice) -> Result<Meta> {
        let meta = self.read_meta(dev)?;
        if meta.full {
            return Err(CudaError::TableFull { op: "gpu lattice", slots: Some(self.cap) }.into());
        }
        match meta.overflow {
            None => Ok(meta),
            Some(point) => Err(overflow_error("gpu lattice", &format!("point {point}"))),
        }
    }

    /// An error if the build overflowed the keys or filled the table (waits for the device).
    pub fn check(&self, dev: &CudaDevice) -> Result<()> {
        self.checked_meta(dev).map(|_| ())
    }

    /// Number of lattice vertices (waits for the device).
    pub fn vertices(&self, dev: &CudaDevice) -> Result<usize> {
        Ok(self.checked_meta(dev)?.vertices)
    }

    /// Every vertex as (image, its first d coordinates), in no particular order (waits for the
    /// device). For tests and inspection: the CPU lattice of the same features has the same set.
    pub fn vertex_keys(&self, dev: &CudaDevice) -> Result<Vec<(u32, Vec<i32>)>> {
        self.check(dev)?;
        let state: Vec<u32> = dev.dtoh_words(&self.state)?;
        let keys: Vec<[u32; 4]> = dev.dtoh_words(&self.keys)?;
        let lane = |k: &[u32; 4], i: usize| (k[i / 2] >> (16 * (i % 2))) & 0xffff;
        Ok(state
            .iter()
            .zip(&keys)
            .filter(|(s, _)| **s == 2)
            .map(|(_, k)| (lane(k, 7), (0..self.dim).map(|i| lane(k, i) as i32 - 32768).collect()))
            .collect())
    }

    /// A vertex value buffer for `channels` values per vertex, every row zero (row 0 is the
    /// sentinel a missing neighbour reads).
    pub fn values(&self, dev: &CudaDevice, channels: usize) -> Result<GpuBuffer> {
        let mut b = dev.alloc((self.max_vertices() + 1) * channels)?;
        dev.zero(&mut b)?;
        Ok(b)
    }

    /// The blur pass along direction `j` from `input` to `output` (`channels` values per
    /// vertex; device addresses), optionally clearing `zero` (address, its channels).
    pub(super) fn blur_job(&self, j: usize, input: u64, output: u64, channels: usize, zero: Option<(u64, usize)>) -> BlurJob {
        let (zero, zero_channels) = zero.map_or((0, 0), |(z, c)| (z, c as i32));
        BlurJob {
            meta: self.meta.ptr(),
            neighbors: self.neighbors.ptr(),
            input,
            output,
            zero,
            d1: (self.dim + 1) as i32,
            j: j as i32,
            channels: channels as i32,
            zero_channels,
        }
    }

    /// The lattice filter (splat, blur, slice; `Lattice::filter` on the CPU): `input` and `out`
    /// are points x channels on the device.
    pub fn filter(&self, dev: &CudaDevice, input: &GpuBuffer, channels: usize, out: &mut GpuBuffer) -> Result<()> {
        let op = "gpu lattice filter";
        let n = self.points * channels;
        if channels == 0 || input.len() != n || out.len() != n {
            return Err(Error::shape(
                op,
                format!("{} points x {channels} channels; got input {} and output {}", self.points, input.len(), out.len()),
            ));
        }
        to_i32(op, "values", (self.max_vertices() + 1) * channels)?;
        let d1 = self.dim + 1;
        let mut a = self.values(dev, channels)?;
        let mut b = self.values(dev, channels)?;
        let corners = [Arg::Ptr(self.corners.ptr()), Arg::Ptr(self.bary.ptr()), Arg::I32(self.points as i32), Arg::I32(d1 as i32)];
        let mut args = corners.to_vec();
        args.extend([Arg::Ptr(input.ptr()), Arg::I32(channels as i32), Arg::Ptr(a.ptr_mut())]);
        launch(dev, k::LATTICE_SPLAT, grid_1d(dev, n), &args)?;
        let (pa, pb) = (a.ptr_mut(), b.ptr_mut());
        let mut passes = BlurPasses { passes: d1 as i32, ..Default::default() };
        for j in 0..d1 {
            let (from, to) = if j % 2 == 0 { (pa, pb) } else { (pb, pa) };
            passes.job[j][0] = self.blur_job(j, from, to, channels, None);
        }
        let mut barrier = dev.alloc(4)?;
        blur(dev, &passes, &mut barrier, (self.max_vertices() + 1) * channels)?;
        let result = if d1 % 2 == 0 { &a } else { &b };
        let mut args = corners.to_vec();
        args.extend([Arg::Ptr(result.ptr()), Arg::I32(channels as i32), Arg::F32(self.alpha()), Arg::Ptr(out.ptr_mut())]);
        launch(dev, k::LATTICE_SLICE, grid_1d(dev, n), &args)
    }
}

pub(super) fn overflow_error(op: &'static str, at: &str) -> Error {
    Error::invalid(
        op,
        format!("{at}: a lattice coordinate overflows the 16-bit keys (features too large: is a kernel width far too small?)"),
    )
}

/// Blocks per multiprocessor of the cooperative blur (all must be resident at once: its
/// 256-thread blocks use 32 registers a thread, so two fit on any multiprocessor).
const BLUR_BLOCKS_PER_SM: usize = 2;

/// Every pass of `passes` in one cooperative launch; `elements` bounds the rows x channels any
/// job has (the kernel reads the true vertex counts on the device); `barrier` (4 words) holds
/// the grid barrier's counters, cleared here.
pub(super) fn blur(dev: &CudaDevice, passes: &BlurPasses, barrier: &mut GpuBuffer, elements: usize) -> Result<()> {
    let mut cfg = grid_1d(dev, elements);
    cfg.grid_dim.0 = cfg.grid_dim.0.min(dev.sm_count() * BLUR_BLOCKS_PER_SM as u32);
    dev.zero(barrier)?;
    launch_cooperative(dev, k::LATTICE_BLUR, cfg, &[Arg::Struct(passes), Arg::Ptr(barrier.ptr_mut())])
}

/// Refuses a request that would not fit in the device's free memory, naming the size.
pub(super) fn check_free_memory(dev: &CudaDevice, op: &'static str, bytes: usize, what: &str) -> Result<()> {
    let (free, total) = dev.mem_info()?;
    // Cached blocks of coseg's own allocator are free for it too.
    let free = free + dev.memory_stats().cached_bytes;
    if bytes > free {
        let stats = dev.memory_stats();
        return Err(CudaError::OutOfMemory {
            ordinal: dev.ordinal(),
            what: format!("{op}: {what}"),
            requested: bytes,
            free: Some(free),
            total: Some(total),
            held: stats.in_use_bytes,
            peak: stats.peak_in_use_bytes,
        }
        .into());
    }
    Ok(())
}

