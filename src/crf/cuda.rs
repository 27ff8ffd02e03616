//! The dense CRF on a CUDA device: the permutohedral lattice built, filtered and iterated in
//! `kernels/crf.cu`, for a batch of same-size images in one set of launches.
//!
//! [`GpuLattice`] is the lattice of `lattice.rs` on the device: built from features already on
//! the device (a batch of images at once, each image on its own lattice: the image index is part
//! of every key), filtered by splat / blur / slice. [`refine_batch`] is `crf::refine_batch` on the
//! device: both pairwise kernels' lattices, the normalisation and the mean field, with one host
//! wait at the end (vertex counts stay on the device; kernels read them there).
//!
//! Parameters, defaults and results are the CPU version's: the embedding repeats its float
//! operations exactly, so the lattices have the same vertices; sums run in another order (atomic
//! splats), so marginals agree to about 1e-6, not bit for bit.

use super::CrfParams;
use super::kernel::check_width;
use crate::backend::cuda::kernels as k;
use crate::backend::cuda::launch::{Arg, grid_1d, launch, to_i32};
use crate::backend::cuda::{CudaDevice, GpuBuffer};
use crate::error::{Error, Result};
use crate::io::Image;
use cudarc::driver::{DeviceRepr, LaunchConfig};

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
struct BlurJob {
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

/// One pairwise kernel's lattice in the mean field (`struct CrfLattice` of crf.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct CrfLattice {
    offsets: u64,
    bary: u64,
    norm: u64,
    total: u64,
    alpha: f32,
    compat: f32,
}

/// `struct CrfArgs` of crf.cu: lattice 0 smoothness (shared by the batch), 1 appearance.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct CrfArgs {
    lat: [CrfLattice; 2],
    images: i32,
    pixels: i32,
}

// SAFETY: plain #[repr(C)] structs of u64/i32/f32 whose layouts match crf.cu's structs.
unsafe impl DeviceRepr for LatticeScale {}
unsafe impl DeviceRepr for BlurJob {}
unsafe impl DeviceRepr for CrfArgs {}

const MIB: f64 = 1024.0 * 1024.0;

/// A permutohedral lattice on the device over `points` feature vectors of `dim` values
/// (`per_image` consecutive points per image; each image gets its own vertices).
pub struct GpuLattice {
    dim: usize,
    points: usize,
    /// Hash table: slot state (0 empty, 1 being written, 2 full), keys (4 words), dense ids.
    state: GpuBuffer,
    keys: GpuBuffer,
    ids: GpuBuffer,
    /// Word 0: the vertex count; word 4 (16-byte aligned, as launches require): 0xffffffff less
    /// the first point that overflowed the keys, 0 if none.
    meta: GpuBuffer,
    /// points x (d+1): vertex id + 1 of each simplex corner (0 is the zero sentinel row).
    corners: GpuBuffer,
    /// points x (d+1): barycentric weights.
    bary: GpuBuffer,
    /// vertices x (d+1) x 2: id + 1 of the neighbours below and above along each direction.
    neighbors: GpuBuffer,
}

/// Hash table slots for a lattice of `points` points: at least twice the most vertices it can
/// have (each corner of each point distinct), so the table is at most half full.
fn table_log2(points: usize, dim: usize) -> u32 {
    (2 * points * (dim + 1)).max(2).next_power_of_two().trailing_zeros()
}

impl GpuLattice {
    /// Device bytes a lattice over `points` points of `dim` features takes (the table sized for
    /// the worst case, every corner a distinct vertex).
    pub fn bytes_needed(points: usize, dim: usize) -> usize {
        let d1 = dim + 1;
        let cap = 1usize << table_log2(points, dim);
        4 * (cap * (1 + 4 + 1) + 8 + points * d1 * 2 + points * d1 * d1 * 2)
    }

    /// The most vertices the lattice can have (the value buffers' row count less the sentinel).
    pub fn max_vertices(&self) -> usize {
        self.points * (self.dim + 1)
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
    /// reported by [`Self::check`] (or [`Self::vertices`]).
    pub fn build(dev: &CudaDevice, features: &GpuBuffer, dim: usize, points: usize, per_image: usize) -> Result<Self> {
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
        let cap_log2 = table_log2(points, dim);
        let cap = 1usize << cap_log2;
        to_i32(op, "hash table slots", cap)?;
        to_i32(op, "neighbour entries", points * d1 * d1 * 2)?;
        check_free_memory(dev, op, Self::bytes_needed(points, dim), &format!("a lattice over {points} points of {dim} features"))?;
        let mut lat = GpuLattice {
            dim,
            points,
            state: dev.alloc(cap)?,
            keys: dev.alloc(cap * 4)?,
            ids: dev.alloc(cap)?,
            meta: dev.alloc(8)?,
            corners: dev.alloc(points * d1)?,
            bary: dev.alloc(points * d1)?,
            neighbors: dev.alloc(points * d1 * d1 * 2)?,
        };
        dev.zero(&mut lat.state)?;
        dev.zero(&mut lat.meta)?;
        let scale = LatticeScale::new(dim);
        launch(
            dev,
            embed,
            grid_1d(dev, points),
            &[
                Arg::Ptr(features.ptr()),
                Arg::I32(points as i32),
                Arg::I32(per_image as i32),
                Arg::Struct(&scale),
                Arg::Ptr(lat.corners.ptr_mut()),
                Arg::Ptr(lat.bary.ptr_mut()),
                Arg::Ptr(lat.state.ptr_mut()),
                Arg::Ptr(lat.keys.ptr_mut()),
                Arg::I32(cap_log2 as i32),
                Arg::Ptr(lat.meta.ptr_mut() + 16),
            ],
        )?;
        launch(
            dev,
            k::LATTICE_COMPACT,
            grid_1d(dev, cap),
            &[Arg::Ptr(lat.state.ptr()), Arg::Ptr(lat.ids.ptr_mut()), Arg::I32(cap as i32), Arg::Ptr(lat.meta.ptr_mut())],
        )?;
        launch(
            dev,
            k::LATTICE_FINISH,
            grid_1d(dev, cap.max(points * d1)),
            &[
                Arg::Ptr(lat.corners.ptr_mut()),
                Arg::I32((points * d1) as i32),
                Arg::Ptr(lat.state.ptr()),
                Arg::Ptr(lat.keys.ptr()),
                Arg::Ptr(lat.ids.ptr()),
                Arg::I32(cap_log2 as i32),
                Arg::I32(dim as i32),
                Arg::Ptr(lat.neighbors.ptr_mut()),
            ],
        )?;
        Ok(lat)
    }

    /// The vertex count and the first point whose coordinates overflowed the keys (waits for
    /// the device).
    fn read_meta(&self, dev: &CudaDevice) -> Result<(usize, Option<usize>)> {
        let m: Vec<u32> = dev.dtoh_words(&self.meta)?;
        let overflow = (m[4] != 0).then(|| (u32::MAX - m[4]) as usize);
        Ok((m[0] as usize, overflow))
    }

    /// An error naming the first point whose features are too large for the 16-bit lattice
    /// keys (as the CPU lattice reports it), if any.
    pub fn check(&self, dev: &CudaDevice) -> Result<()> {
        match self.read_meta(dev)?.1 {
            None => Ok(()),
            Some(point) => Err(overflow_error("gpu lattice", &format!("point {point}"))),
        }
    }

    /// Number of lattice vertices (waits for the device).
    pub fn vertices(&self, dev: &CudaDevice) -> Result<usize> {
        self.check(dev)?;
        Ok(self.read_meta(dev)?.0)
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

    /// The blur pass along direction `j` from `input` to `output`, optionally clearing `zero`.
    fn blur_job(&self, j: usize, input: &GpuBuffer, output: &mut GpuBuffer, channels: usize, zero: Option<(&mut GpuBuffer, usize)>) -> BlurJob {
        let (zero, zero_channels) = zero.map_or((0, 0), |(z, c)| (z.ptr_mut(), c as i32));
        BlurJob {
            meta: self.meta.ptr(),
            neighbors: self.neighbors.ptr(),
            input: input.ptr(),
            output: output.ptr_mut(),
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
        for j in 0..d1 {
            let (from, to) = if j % 2 == 0 { (&a, &mut b) } else { (&b, &mut a) };
            let job = self.blur_job(j, from, to, channels, None);
            blur(dev, &[job], (self.max_vertices() + 1) * channels)?;
        }
        let result = if d1 % 2 == 0 { &a } else { &b };
        let mut args = corners.to_vec();
        args.extend([Arg::Ptr(result.ptr()), Arg::I32(channels as i32), Arg::F32(self.alpha()), Arg::Ptr(out.ptr_mut())]);
        launch(dev, k::LATTICE_SLICE, grid_1d(dev, n), &args)
    }
}

fn overflow_error(op: &'static str, at: &str) -> Error {
    Error::invalid(
        op,
        format!("{at}: a lattice coordinate overflows the 16-bit keys (features too large: is a kernel width far too small?)"),
    )
}

/// One blur launch over up to two lattices' passes; `elements` bounds the rows x channels any
/// of them has (the kernel reads the true vertex counts on the device).
fn blur(dev: &CudaDevice, jobs: &[BlurJob], elements: usize) -> Result<()> {
    let mut cfg: LaunchConfig = grid_1d(dev, elements);
    cfg.grid_dim.1 = jobs.len() as u32;
    let second = jobs.get(1).copied().unwrap_or_default();
    launch(dev, k::LATTICE_BLUR, cfg, &[Arg::Struct(&jobs[0]), Arg::Struct(&second)])
}

/// Refuses a request that would not fit in the device's free memory, naming the size.
fn check_free_memory(dev: &CudaDevice, op: &'static str, bytes: usize, what: &str) -> Result<()> {
    let (free, total) = dev.mem_info()?;
    // Cached blocks of coseg's own allocator are free for it too.
    let free = free + dev.memory_stats().cached_bytes;
    if bytes > free {
        return Err(Error::Device(format!(
            "{op}: {what} needs {:.1} MiB of device memory; cuda:{} has {:.1} MiB free of {:.1} MiB",
            bytes as f64 / MIB,
            dev.ordinal(),
            free as f64 / MIB,
            total as f64 / MIB
        )));
    }
    Ok(())
}

/// Whether a batch of `images` images of `width` x `height` fits the device's free memory and
/// the kernels' 32-bit indices; the error names the size.
pub fn batch_fits(dev: &CudaDevice, images: usize, width: usize, height: usize) -> Result<()> {
    let op = "gpu crf";
    let what = format!("a batch of {images} images of {width}x{height}");
    let bytes = refine_bytes_needed(images, width * height);
    check_free_memory(dev, op, bytes, &what)?;
    to_i32(op, &format!("{what}: hash table slots"), 4 * images * width * height * 6)?;
    Ok(())
}

/// Device bytes `refine_batch` needs for `images` images of `pixels` pixels.
pub fn refine_bytes_needed(images: usize, pixels: usize) -> usize {
    let points = images * pixels;
    let spatial = GpuLattice::bytes_needed(pixels, 2) + 4 * (3 * (pixels * 3 + 1) * images + 2 * pixels * 2);
    let appearance = GpuLattice::bytes_needed(points, 5) + 4 * (3 * (points * 6 + 1) + 2 * points + points * 5);
    // Inputs (image bytes, probabilities), output, the flag.
    spatial + appearance + points * 3 + 4 * (2 * points + 4)
}

/// Three vertex buffers of one lattice and their roles in the mean field: `target` (zeroed,
/// the next splat's), `partner` (the blur's other buffer) and `spare` (cleared during the blur
/// for the splat after). After the d+1 blur passes the result is in `target` (d+1 even) or in
/// `partner` (odd).
struct Rotation {
    bufs: [GpuBuffer; 3],
    target: usize,
    partner: usize,
    spare: usize,
}

impl Rotation {
    fn new(lat: &GpuLattice, dev: &CudaDevice, channels: usize) -> Result<Self> {
        let bufs = [lat.values(dev, channels)?, lat.values(dev, channels)?, lat.values(dev, channels)?];
        Ok(Rotation { bufs, target: 0, partner: 1, spare: 2 })
    }

    /// Index of the buffer holding the blur's result.
    fn result(&self, d1: usize) -> usize {
        if d1 % 2 == 0 { self.target } else { self.partner }
    }

    /// Blur pass j: (input, output, buffer to clear on pass 0).
    fn pass(&mut self, j: usize) -> (&GpuBuffer, &mut GpuBuffer, Option<&mut GpuBuffer>) {
        let (from, to) = if j % 2 == 0 { (self.target, self.partner) } else { (self.partner, self.target) };
        let [a, b, c] = &mut self.bufs;
        let mut refs = [Some(a), Some(b), Some(c)];
        let input = refs[from].take().map(|r| &*r).expect("distinct roles");
        let output = refs[to].take().expect("distinct roles");
        let spare = if j == 0 { refs[self.spare].take() } else { None };
        (input, output, spare)
    }

    /// After the blur's result has been read: the cleared spare becomes the target, the result
    /// the partner, the other buffer the spare.
    fn advance(&mut self, d1: usize) {
        let result = self.result(d1);
        let other = if result == self.target { self.partner } else { self.target };
        (self.target, self.partner, self.spare) = (self.spare, result, other);
    }
}

/// The d+1 blur passes of both lattices (`lats[i]`, `rots[i]`, values of `channels[i]`), the
/// spare buffers cleared for a next splat of `next_channels[i]` values per vertex.
fn blur_both(dev: &CudaDevice, lats: [&GpuLattice; 2], rots: &mut [Rotation; 2], channels: [usize; 2], next_channels: [usize; 2]) -> Result<()> {
    let d1 = lats.map(|l| l.dim + 1);
    let bound = (0..2).map(|i| (lats[i].max_vertices() + 1) * channels[i].max(next_channels[i])).max().unwrap_or(0);
    let [r0, r1] = rots;
    for j in 0..d1[0].max(d1[1]) {
        let mut jobs = Vec::with_capacity(2);
        for (i, rot) in [&mut *r0, &mut *r1].into_iter().enumerate() {
            if j < d1[i] {
                let (input, output, spare) = rot.pass(j);
                jobs.push(lats[i].blur_job(j, input, output, channels[i], spare.map(|s| (s, next_channels[i]))));
            }
        }
        blur(dev, &jobs, bound)?;
    }
    Ok(())
}

/// `crf::refine_batch` on `dev`: the lesion marginal of every image after `params.iters`
/// mean-field iterations of the binary CRF, the whole batch in one set of launches. Images and
/// probability maps must all have one size and channel count (`crf::refine_batch_on` groups
/// them); an error names the item at fault.
pub fn refine_batch(dev: &CudaDevice, images: &[Image<u8>], probs: &[Image<f32>], params: &CrfParams) -> Result<Vec<Image<f32>>> {
    if images.len() != probs.len() {
        return Err(Error::shape("gpu crf", format!("{} images but {} probability maps", images.len(), probs.len())));
    }
    let items: Vec<usize> = (0..images.len()).collect();
    refine_group(dev, &images.iter().collect::<Vec<_>>(), &probs.iter().collect::<Vec<_>>(), &items, params)
}

/// `refine_batch` over borrowed items; errors name item `items[k]` for the k-th.
pub fn refine_group(dev: &CudaDevice, images: &[&Image<u8>], probs: &[&Image<f32>], items: &[usize], params: &CrfParams) -> Result<Vec<Image<f32>>> {
    let op = "gpu crf";
    let Some(first) = images.first() else {
        return Ok(Vec::new());
    };
    let (w, h, channels) = (first.width, first.height, first.channels);
    check_batch(images, probs, items, w, h, channels)?;
    check_width(op, "gauss_sxy", params.gauss_sxy)?;
    check_width(op, "bilateral_sxy", params.bilateral_sxy)?;
    check_width(op, "bilateral_srgb", params.bilateral_srgb)?;
    for (name, v) in [("gauss_compat", params.gauss_compat), ("bilateral_compat", params.bilateral_compat)] {
        if !v.is_finite() {
            return Err(Error::invalid(op, format!("{name} must be finite, got {v}")));
        }
    }
    let (b, n) = (images.len(), w * h);
    let points = b * n;
    batch_fits(dev, b, w, h)?;

    // Inputs: image bytes packed into words, probabilities.
    let mut bytes = vec![0u32; (points * channels).div_ceil(4)];
    let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut bytes);
    for (img, chunk) in images.iter().zip(dst.chunks_mut(n * channels)) {
        chunk.copy_from_slice(&img.data);
    }
    let pixels = dev.htod_words(&bytes)?;
    let prob_host: Vec<f32> = probs.iter().flat_map(|p| p.data.iter().copied()).collect();
    let prob = dev.htod(&prob_host)?;

    // Features and lattices: smoothness once for the batch (every image has the same), appearance per image.
    let mut fs = dev.alloc(n * 2)?;
    let sxy = params.gauss_sxy;
    launch(dev, k::CRF_FEATURES_SPATIAL, grid_1d(dev, n), &[Arg::Ptr(fs.ptr_mut()), Arg::I32(w as i32), Arg::I32(n as i32), Arg::F32(sxy)])?;
    let mut fb = dev.alloc(points * 5)?;
    launch(
        dev,
        k::CRF_FEATURES_BILATERAL,
        grid_1d(dev, points),
        &[
            Arg::Ptr(pixels.ptr()),
            Arg::Ptr(fb.ptr_mut()),
            Arg::I32(points as i32),
            Arg::I32(n as i32),
            Arg::I32(w as i32),
            Arg::I32(channels as i32),
            Arg::F32(params.bilateral_sxy),
            Arg::F32(params.bilateral_srgb),
        ],
    )?;
    let smooth = GpuLattice::build(dev, &fs, 2, n, n)?;
    let appear = GpuLattice::build(dev, &fb, 5, points, n)?;
    drop((fs, fb));

    let (mut norm_s, mut total_s) = (dev.alloc(n)?, dev.alloc(n)?);
    let (mut norm_b, mut total_b) = (dev.alloc(points)?, dev.alloc(points)?);
    let lattice = |l: &GpuLattice, norm: &mut GpuBuffer, total: &mut GpuBuffer, compat: f32| CrfLattice {
        offsets: l.corners.ptr(),
        bary: l.bary.ptr(),
        norm: norm.ptr_mut(),
        total: total.ptr_mut(),
        alpha: l.alpha(),
        compat,
    };
    let args = CrfArgs {
        lat: [lattice(&smooth, &mut norm_s, &mut total_s, params.gauss_compat), lattice(&appear, &mut norm_b, &mut total_b, params.bilateral_compat)],
        images: b as i32,
        pixels: n as i32,
    };
    let mut out = dev.alloc(points)?;
    let mut bad = dev.alloc(4)?;
    dev.zero(&mut bad)?;
    let (out_ptr, bad_ptr) = (out.ptr_mut(), bad.ptr_mut());

    // The smoothness lattice's values hold one channel per image in the iterations, one in the
    // normalisation; the appearance lattice's one channel throughout.
    let mut rots = [Rotation::new(&smooth, dev, b)?, Rotation::new(&appear, dev, 1)?];
    let lats = [&smooth, &appear];
    let d1 = [3, 6];
    let per_point = grid_1d(dev, n + points);
    let per_pixel = grid_1d(dev, points);
    let targets = |r: &[Rotation; 2]| [Arg::Ptr(r[0].bufs[r[0].target].ptr()), Arg::Ptr(r[1].bufs[r[1].target].ptr())];
    let results = |r: &[Rotation; 2]| [Arg::Ptr(r[0].bufs[r[0].result(d1[0])].ptr()), Arg::Ptr(r[1].bufs[r[1].result(d1[1])].ptr())];

    // norm = 1 / sqrt(K(1) + 1e-20), then total = compat * norm * K(norm) and the initial Q.
    let [t0, t1] = targets(&rots);
    launch(dev, k::CRF_DENSITY_SPLAT, per_point, &[Arg::Struct(&args), t0, t1])?;
    blur_both(dev, lats, &mut rots, [1, 1], [1, 1])?;
    let ([r0, r1], mut rots) = (results(&rots), advance(rots, d1));
    let [t0, t1] = targets(&rots);
    launch(dev, k::CRF_NORM, per_point, &[Arg::Struct(&args), r0, r1, t0, t1])?;
    blur_both(dev, lats, &mut rots, [1, 1], [b, 1])?;
    let ([r0, r1], mut rots) = (results(&rots), advance(rots, d1));
    let [t0, t1] = targets(&rots);
    let iters = params.iters;
    let tail = |last: bool| [Arg::Ptr(out_ptr), Arg::Ptr(bad_ptr), Arg::I32(last as i32)];
    let mut start = vec![Arg::Struct(&args), r0, r1, Arg::Ptr(prob.ptr()), t0, t1];
    start.extend(tail(iters == 0));
    launch(dev, k::CRF_START, per_pixel, &start)?;
    for it in 0..iters {
        blur_both(dev, lats, &mut rots, [b, 1], [b, 1])?;
        let [r0, r1] = results(&rots);
        rots = advance(rots, d1);
        let [t0, t1] = targets(&rots);
        let mut step = vec![Arg::Struct(&args), r0, r1, Arg::Ptr(prob.ptr()), t0, t1];
        step.extend(tail(it + 1 == iters));
        launch(dev, k::CRF_STEP, per_pixel, &step)?;
    }
    let q = dev.dtoh(&out)?;

    // Errors the kernels recorded, named as the CPU names them.
    let bad: Vec<u32> = dev.dtoh_words(&bad)?;
    if bad[0] != 0 {
        let i = (u32::MAX - bad[0]) as usize;
        let (item, p) = (items[i / n], i % n);
        return Err(Error::invalid(
            op,
            format!(
                "item {item}: unary from probabilities: label 1 at (x {}, y {}) has probability {}; expected [0, 1]",
                p % w,
                p / w,
                prob_host[i]
            ),
        ));
    }
    smooth.check(dev)?;
    if let Some(i) = appear.read_meta(dev)?.1 {
        let (item, p) = (items[i / n], i % n);
        return Err(overflow_error(op, &format!("item {item}: pixel (x {}, y {})", p % w, p / w)));
    }
    Ok(q.chunks_exact(n).map(|c| Image::new(w, h, 1, c.to_vec())).collect())
}

fn advance(mut rots: [Rotation; 2], d1: [usize; 2]) -> [Rotation; 2] {
    rots[0].advance(d1[0]);
    rots[1].advance(d1[1]);
    rots
}

/// Every item of a device batch: the same size and channels as the first, one probability channel.
fn check_batch(images: &[&Image<u8>], probs: &[&Image<f32>], items: &[usize], w: usize, h: usize, channels: usize) -> Result<()> {
    let op = "gpu crf";
    if images.len() != probs.len() || images.len() != items.len() {
        return Err(Error::shape(op, format!("{} images but {} probability maps", images.len(), probs.len())));
    }
    if channels != 1 && channels != 3 {
        return Err(Error::invalid(op, format!("item {}: guide image has {channels} channels; expected 1 (grey) or 3 (RGB)", items[0])));
    }
    for ((img, p), i) in images.iter().zip(probs).zip(items) {
        if (img.width, img.height, img.channels) != (w, h, channels) {
            return Err(Error::shape(
                op,
                format!("item {i}: {}x{}x{} image in a batch of {w}x{h}x{channels}", img.width, img.height, img.channels),
            ));
        }
        if img.data.len() != w * h * channels {
            return Err(Error::shape(op, format!("item {i}: {w}x{h}x{channels} image holds {} values", img.data.len())));
        }
        if p.channels != 1 {
            return Err(Error::invalid(op, format!("item {i}: lesion probability has {} channels; expected 1", p.channels)));
        }
        if (p.width, p.height) != (w, h) || p.data.len() != w * h {
            return Err(Error::shape(op, format!("item {i}: image is {w}x{h} but the probability map is {}x{}", p.width, p.height)));
        }
    }
    Ok(())
}
