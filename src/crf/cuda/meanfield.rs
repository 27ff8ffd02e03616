//! Mean field of the binary lesion CRF on the device (`crf::meanfield` and `crf::kernel` on the
//! CPU), for a batch of same-size images: the smoothness lattice (x, y) built once and shared by
//! the batch (its values hold one channel per image), the appearance lattice (x, y, r, g, b) one
//! per image, pydensecrf's symmetric normalisation and Potts messages, the softmax update.
//!
//! [`DeviceBatch::upload`] copies the inputs through page-locked memory, [`DeviceBatch::refine`]
//! queues every launch without waiting, and [`Refined::download`] brings the marginals back with
//! the errors the kernels recorded in one transfer. [`refine_group`] uploads the probabilities
//! while the device builds the lattices from the guide images.

use super::lattice::{BlurPasses, GpuLattice, TableSize, blur, check_free_memory, overflow_error};
use crate::backend::cuda::kernels as k;
use crate::backend::cuda::launch::{Arg, grid_1d, launch, to_i32};
use crate::backend::cuda::{CudaDevice, CudaError, GpuBuffer};
use crate::crf::CrfParams;
use crate::crf::kernel::check_width;
use crate::error::{Error, Result};
use crate::io::Image;
use cudarc::driver::DeviceRepr;

const OP: &str = "gpu crf";

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
unsafe impl DeviceRepr for CrfArgs {}

/// Simplex sizes (d + 1) of the two lattices, as crf.cu's D1_SMOOTH and D1_APPEAR.
const D1: [usize; 2] = [3, 6];

/// Words behind the marginals in the output buffer: the errors the kernels recorded.
const TAIL: usize = 8;

/// Whether a batch of `images` images of `width` x `height` fits the device's free memory and
/// the kernels' 32-bit indices; the error names the size.
pub fn batch_fits(dev: &CudaDevice, images: usize, width: usize, height: usize) -> Result<()> {
    let what = format!("a batch of {images} images of {width}x{height}");
    check_free_memory(dev, OP, refine_bytes_needed(images, width * height, TableSize::Expected), &what)?;
    to_i32(OP, &format!("{what}: hash table slots"), 4 * images * width * height * D1[1])?;
    Ok(())
}

/// Device bytes a batch of `images` images of `pixels` pixels needs with lattice tables of `size`.
pub fn refine_bytes_needed(images: usize, pixels: usize, size: TableSize) -> usize {
    let points = images * pixels;
    let values = |lattice_points: usize, d1: usize, channels: usize| {
        let cap = if size == TableSize::Expected { lattice_points.max(64).next_power_of_two() } else { usize::MAX };
        3 * (cap.min(lattice_points * d1) + 1) * channels
    };
    let smooth = GpuLattice::bytes_needed(pixels, 2, size) + 4 * (values(pixels, D1[0], images) + 2 * pixels + 2 * pixels);
    let appear = GpuLattice::bytes_needed(points, 5, size) + 4 * (values(points, D1[1], 1) + 2 * points + 5 * points);
    // Inputs (probabilities, image bytes), marginals, flags.
    smooth + appear + 4 * (2 * points + TAIL + 4) + 3 * points
}

/// A batch of same-size images and their lesion probabilities on the device.
pub struct DeviceBatch {
    width: usize,
    height: usize,
    channels: usize,
    /// The input position of each image, for error messages.
    items: Vec<usize>,
    /// The guide images' bytes, image after image (packed into words).
    pixels: GpuBuffer,
    /// images x pixels lesion probabilities.
    probs: GpuBuffer,
}

impl DeviceBatch {
    /// Checks and uploads a batch (one size and channel count; errors name `items[k]`).
    pub fn upload(dev: &CudaDevice, images: &[&Image<u8>], probs: &[&Image<f32>], items: &[usize]) -> Result<Self> {
        let (pixels, (w, h, channels)) = upload_images(dev, images, probs, items)?;
        let probs = upload_probs(dev, probs, w * h)?;
        Ok(DeviceBatch { width: w, height: h, channels, items: items.to_vec(), pixels, probs })
    }

    pub fn images(&self) -> usize {
        self.items.len()
    }

    /// Queues the whole refinement (both lattices built, normalisation, `params.iters`
    /// iterations) without waiting for the device, with hash tables sized for images.
    pub fn refine(&self, dev: &CudaDevice, params: &CrfParams) -> Result<Refined> {
        self.refine_with(dev, params, TableSize::Expected)
    }

    /// `refine` with lattice hash tables of `size`.
    pub fn refine_with(&self, dev: &CudaDevice, params: &CrfParams, size: TableSize) -> Result<Refined> {
        let shape = BatchShape { width: self.width, height: self.height, channels: self.channels, images: self.images() };
        Setup::queue(dev, &shape, &self.pixels, params, size)?.iterate(dev, &self.probs, params, &self.items)
    }
}

/// Checks a batch and uploads its guide images; returns them with (width, height, channels).
fn upload_images(dev: &CudaDevice, images: &[&Image<u8>], probs: &[&Image<f32>], items: &[usize]) -> Result<(GpuBuffer, (usize, usize, usize))> {
    let Some(first) = images.first() else {
        return Err(Error::shape(OP, "an empty batch"));
    };
    let (w, h, channels) = (first.width, first.height, first.channels);
    check_batch(images, probs, items, w, h, channels)?;
    batch_fits(dev, images.len(), w, h)?;
    let bytes_per_image = w * h * channels;
    let pixels = dev.htod_staged((images.len() * bytes_per_image).div_ceil(4), |host| {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(host);
        for (img, dst) in images.iter().zip(bytes.chunks_mut(bytes_per_image)) {
            dst.copy_from_slice(&img.data);
        }
    })?;
    Ok((pixels, (w, h, channels)))
}

/// Uploads the lesion probabilities (checked by `upload_images`), image after image.
fn upload_probs(dev: &CudaDevice, probs: &[&Image<f32>], pixels: usize) -> Result<GpuBuffer> {
    dev.htod_staged(probs.len() * pixels, |host| {
        for (p, dst) in probs.iter().zip(host.chunks_exact_mut(pixels)) {
            dst.copy_from_slice(&p.data);
        }
    })
}

#[derive(Clone, Copy)]
struct BatchShape {
    width: usize,
    height: usize,
    channels: usize,
    images: usize,
}

/// What the guide images alone decide, queued on the device: both lattices, the normalisation
/// and the total messages (K(norm) blurred, sliced by the first iteration's kernel). The
/// probabilities are needed only after it, so their upload overlaps this work.
struct Setup {
    shape: BatchShape,
    lats: [GpuLattice; 2],
    rots: [Rotation; 2],
    /// Per lattice point: norm, then (from a 4-word boundary) the total message.
    _norm_total: [GpuBuffer; 2],
    args: CrfArgs,
    /// The blurred K(norm) of each lattice, for crf_start.
    k_norm: [Arg<'static>; 2],
    barrier: GpuBuffer,
}

impl Setup {
    fn queue(dev: &CudaDevice, shape: &BatchShape, pixels: &GpuBuffer, params: &CrfParams, size: TableSize) -> Result<Self> {
        check_params(params)?;
        let (w, b, n) = (shape.width, shape.images, shape.width * shape.height);
        let points = b * n;
        // Features and lattices: smoothness once for the batch (every image has the same),
        // appearance per image.
        let mut fs = dev.alloc(n * 2)?;
        let spatial = [Arg::Ptr(fs.ptr_mut()), Arg::I32(w as i32), Arg::I32(n as i32), Arg::F32(params.gauss_sxy)];
        launch(dev, k::CRF_FEATURES_SPATIAL, grid_1d(dev, n), &spatial)?;
        let mut fb = dev.alloc(points * 5)?;
        let bilateral = [
            Arg::Ptr(pixels.ptr()),
            Arg::Ptr(fb.ptr_mut()),
            Arg::I32(points as i32),
            Arg::I32(n as i32),
            Arg::I32(w as i32),
            Arg::I32(shape.channels as i32),
            Arg::F32(params.bilateral_sxy),
            Arg::F32(params.bilateral_srgb),
        ];
        launch(dev, k::CRF_FEATURES_BILATERAL, grid_1d(dev, points), &bilateral)?;
        let lats = [GpuLattice::build(dev, &fs, 2, n, n, size)?, GpuLattice::build(dev, &fb, 5, points, n, size)?];
        drop((fs, fb));

        // Per-point normalisation and total message of each lattice, written by the kernels.
        let mut norm_total = [dev.alloc(n.next_multiple_of(4) + n)?, dev.alloc(points.next_multiple_of(4) + points)?];
        let lattice = |l: &GpuLattice, nt: &mut GpuBuffer, points: usize, compat: f32| {
            let base = nt.ptr_mut();
            CrfLattice {
                offsets: l.corners.ptr(),
                bary: l.bary.ptr(),
                norm: base,
                total: base + 4 * points.next_multiple_of(4) as u64,
                alpha: l.alpha(),
                compat,
            }
        };
        let [nt0, nt1] = &mut norm_total;
        let args = CrfArgs {
            lat: [lattice(&lats[0], nt0, n, params.gauss_compat), lattice(&lats[1], nt1, points, params.bilateral_compat)],
            images: b as i32,
            pixels: n as i32,
        };
        let mut barrier = dev.alloc(4)?;
        // The smoothness lattice's values hold one channel per image in the iterations, one in
        // the normalisation; the appearance lattice's one channel throughout.
        let mut rots = [Rotation::new(dev, &lats[0], b)?, Rotation::new(dev, &lats[1], 1)?];
        let per_lattice_point = grid_1d(dev, n + points);
        // norm = 1 / sqrt(K(1) + 1e-20), then K(norm) for total = compat * norm * K(norm).
        launch(dev, k::CRF_DENSITY_SPLAT, per_lattice_point, &[Arg::Struct(&args), rots[0].target(), rots[1].target()])?;
        let [r0, r1] = blur_both(dev, &lats, &mut rots, &mut barrier, [1, 1], [1, 1])?;
        launch(dev, k::CRF_NORM, per_lattice_point, &[Arg::Struct(&args), r0, r1, rots[0].target(), rots[1].target()])?;
        let k_norm = blur_both(dev, &lats, &mut rots, &mut barrier, [1, 1], [b, 1])?;
        Ok(Setup { shape: *shape, lats, rots, _norm_total: norm_total, args, k_norm, barrier })
    }

    /// Queues the totals, the initial Q from `probs` and the iterations, then the error flags.
    fn iterate(mut self, dev: &CudaDevice, probs: &GpuBuffer, params: &CrfParams, items: &[usize]) -> Result<Refined> {
        let (b, n) = (self.shape.images, self.shape.width * self.shape.height);
        let points = b * n;
        let mut out = dev.alloc(points.next_multiple_of(4) + TAIL)?;
        let mut bad = dev.alloc(4)?;
        dev.zero(&mut bad)?;
        let (out_ptr, bad_ptr, prob) = (out.ptr_mut(), bad.ptr_mut(), probs.ptr());
        let per_pixel = grid_1d(dev, points);
        let iters = params.iters;
        let tail = |last: bool| [Arg::Ptr(out_ptr), Arg::Ptr(bad_ptr), Arg::I32(last as i32)];
        let [r0, r1] = self.k_norm;
        let mut start = vec![Arg::Struct(&self.args), r0, r1, Arg::Ptr(prob), self.rots[0].target(), self.rots[1].target()];
        start.extend(tail(iters == 0));
        launch(dev, k::CRF_START, per_pixel, &start)?;
        for it in 0..iters {
            let [r0, r1] = blur_both(dev, &self.lats, &mut self.rots, &mut self.barrier, [b, 1], [b, 1])?;
            let mut step = vec![Arg::Struct(&self.args), r0, r1, Arg::Ptr(prob), self.rots[0].target(), self.rots[1].target()];
            step.extend(tail(it + 1 == iters));
            launch(dev, k::CRF_STEP, per_pixel, &step)?;
        }
        let flags = [
            Arg::Ptr(bad_ptr),
            Arg::Ptr(prob),
            Arg::Ptr(self.lats[0].meta_ptr()),
            Arg::Ptr(self.lats[1].meta_ptr()),
            Arg::Ptr(out_ptr + 4 * points.next_multiple_of(4) as u64),
        ];
        launch(dev, k::CRF_FLAGS, grid_1d(dev, 1), &flags)?;
        Ok(Refined { out, width: self.shape.width, height: self.shape.height, items: items.to_vec() })
    }
}

/// A refinement queued on the device: the marginals and the errors recorded, not yet read.
pub struct Refined {
    /// images x pixels lesion marginals, padded to 4 words, then the TAIL flag words.
    out: GpuBuffer,
    width: usize,
    height: usize,
    items: Vec<usize>,
}

impl Refined {
    /// Waits for the device and returns each image's lesion marginal, or the first error the
    /// kernels recorded, named as the CPU names it.
    pub fn download(&self, dev: &CudaDevice) -> Result<Vec<Image<f32>>> {
        self.fetch(dev)?.ok_or_else(|| CudaError::TableFull { op: OP, slots: None }.into())
    }

    /// `download`, or None when a lattice's hash table filled up (the result is then incomplete).
    fn fetch(&self, dev: &CudaDevice) -> Result<Option<Vec<Image<f32>>>> {
        let (w, h, n) = (self.width, self.height, self.width * self.height);
        let points = self.items.len() * n;
        let (images, flags) = dev.dtoh_staged(&self.out, |host| {
            let images: Vec<Image<f32>> = host[..points].chunks_exact(n).map(|q| Image::new(w, h, 1, q.to_vec())).collect();
            let tail = &host[points.next_multiple_of(4)..][..TAIL];
            (images, tail.iter().map(|v| v.to_bits()).collect::<Vec<u32>>())
        })?;
        let first = |v: u32| (v != 0).then(|| (u32::MAX - v) as usize);
        let at = |i: usize| format!("(x {}, y {})", (i % n) % w, (i % n) / w);
        if let Some(i) = first(flags[0]) {
            return Err(Error::invalid(
                OP,
                format!(
                    "item {}: unary from probabilities: label 1 at {} has probability {}; expected [0, 1]",
                    self.items[i / n],
                    at(i),
                    f32::from_bits(flags[1])
                ),
            ));
        }
        if let Some(p) = first(flags[2]) {
            return Err(overflow_error(OP, &format!("smoothness kernel, pixel {}", at(p))));
        }
        if let Some(i) = first(flags[3]) {
            return Err(overflow_error(OP, &format!("item {}: appearance kernel, pixel {}", self.items[i / n], at(i))));
        }
        if flags[4] != 0 || flags[5] != 0 {
            return Ok(None);
        }
        Ok(Some(images))
    }
}

/// `crf::refine_batch` on `dev`: the lesion marginal of every image after `params.iters`
/// mean-field iterations of the binary CRF, the whole batch in one set of launches. Images and
/// probability maps must all have one size and channel count (`crf::refine_batch_on` groups
/// them); an error names the item at fault.
pub fn refine_batch(dev: &CudaDevice, images: &[Image<u8>], probs: &[Image<f32>], params: &CrfParams) -> Result<Vec<Image<f32>>> {
    if images.len() != probs.len() {
        return Err(Error::shape(OP, format!("{} images but {} probability maps", images.len(), probs.len())));
    }
    let items: Vec<usize> = (0..images.len()).collect();
    refine_group(dev, &images.iter().collect::<Vec<_>>(), &probs.iter().collect::<Vec<_>>(), &items, params)
}

/// `refine_batch` over borrowed items; errors name item `items[k]` for the k-th.
pub fn refine_group(dev: &CudaDevice, images: &[&Image<u8>], probs: &[&Image<f32>], items: &[usize], params: &CrfParams) -> Result<Vec<Image<f32>>> {
    if images.is_empty() && probs.is_empty() {
        return Ok(Vec::new());
    }
    check_params(params)?;
    // The lattices need only the guide images: they are built while the host copies the
    // probabilities into page-locked memory.
    let (pixels, (width, height, channels)) = upload_images(dev, images, probs, items)?;
    let shape = BatchShape { width, height, channels, images: images.len() };
    let setup = Setup::queue(dev, &shape, &pixels, params, TableSize::Expected)?;
    let probs = upload_probs(dev, probs, width * height)?;
    match setup.iterate(dev, &probs, params, items)?.fetch(dev)? {
        Some(q) => Ok(q),
        // Far more distinct simplices than pixels (noise-like images, tiny kernel widths): the
        // tables sized for images filled up; build them for the worst case.
        None => Setup::queue(dev, &shape, &pixels, params, TableSize::WorstCase)?.iterate(dev, &probs, params, items)?.download(dev),
    }
}

fn check_params(params: &CrfParams) -> Result<()> {
    check_width(OP, "gauss_sxy", params.gauss_sxy)?;
    check_width(OP, "bilateral_sxy", params.bilateral_sxy)?;
    check_width(OP, "bilateral_srgb", params.bilateral_srgb)?;
    for (name, v) in [("gauss_compat", params.gauss_compat), ("bilateral_compat", params.bilateral_compat)] {
        if !v.is_finite() {
            return Err(Error::invalid(OP, format!("{name} must be finite, got {v}")));
        }
    }
    Ok(())
}

/// Three vertex buffers of one lattice and their roles in the mean field: `target` (the next
/// splat accumulates into it: cleared), `partner` (the blur's other buffer) and `spare` (cleared
/// during the blur for the splat after). After the d+1 blur passes the result is in `target`
/// (d+1 even) or in `partner` (odd). Only the first target is cleared here: a partner is written
/// whole by the blur before it is read, and every later target was a spare.
struct Rotation {
    bufs: [GpuBuffer; 3],
    target: usize,
    partner: usize,
    spare: usize,
}

impl Rotation {
    fn new(dev: &CudaDevice, lat: &GpuLattice, channels: usize) -> Result<Self> {
        let len = (lat.max_vertices() + 1) * channels;
        let mut bufs = [dev.alloc(len)?, dev.alloc(len)?, dev.alloc(len)?];
        dev.zero(&mut bufs[0])?;
        Ok(Rotation { bufs, target: 0, partner: 1, spare: 2 })
    }

    /// The target as a kernel argument (kernels write these buffers through the addresses).
    fn target(&self) -> Arg<'static> {
        Arg::Ptr(self.bufs[self.target].ptr())
    }

    /// The blur pass along direction j of `lat`; pass 0 also clears the spare for a splat of
    /// `next_channels` values per vertex.
    fn pass(&self, lat: &GpuLattice, j: usize, channels: usize, next_channels: usize) -> super::lattice::BlurJob {
        let (from, to) = if j % 2 == 0 { (self.target, self.partner) } else { (self.partner, self.target) };
        let spare = (j == 0).then(|| (self.bufs[self.spare].ptr(), next_channels));
        lat.blur_job(j, self.bufs[from].ptr(), self.bufs[to].ptr(), channels, spare)
    }

    /// After the blur: the result as a kernel argument; the cleared spare becomes the target,
    /// the result the partner (the next blur overwrites it only after its reader has run), the
    /// other buffer the spare.
    fn advance(&mut self, d1: usize) -> Arg<'static> {
        let result = if d1 % 2 == 0 { self.target } else { self.partner };
        let other = if result == self.target { self.partner } else { self.target };
        (self.target, self.partner, self.spare) = (self.spare, result, other);
        Arg::Ptr(self.bufs[result].ptr())
    }
}

/// The d+1 blur passes of both lattices in one launch (values of `channels[i]` per vertex, the
/// spares cleared for a next splat of `next_channels[i]`); returns where each result is.
fn blur_both(
    dev: &CudaDevice,
    lats: &[GpuLattice; 2],
    rots: &mut [Rotation; 2],
    barrier: &mut GpuBuffer,
    channels: [usize; 2],
    next_channels: [usize; 2],
) -> Result<[Arg<'static>; 2]> {
    let bound = (0..2).map(|i| (lats[i].max_vertices() + 1) * channels[i].max(next_channels[i])).max().unwrap_or(0);
    let mut passes = BlurPasses { passes: D1[1] as i32, ..Default::default() };
    for (j, jobs) in passes.job.iter_mut().enumerate().take(D1[1]) {
        for i in (0..2).filter(|&i| j < D1[i]) {
            jobs[i] = rots[i].pass(&lats[i], j, channels[i], next_channels[i]);
        }
    }
    blur(dev, &passes, barrier, bound)?;
    Ok([rots[0].advance(D1[0]), rots[1].advance(D1[1])])
}

/// Every item of a device batch: the same size and channels as the first, one probability channel.
fn check_batch(images: &[&Image<u8>], probs: &[&Image<f32>], items: &[usize], w: usize, h: usize, channels: usize) -> Result<()> {
    if images.len() != probs.len() || images.len() != items.len() {
        return Err(Error::shape(OP, format!("{} images but {} probability maps", images.len(), probs.len())));
    }
    if channels != 1 && channels != 3 {
        return Err(Error::invalid(OP, format!("item {}: guide image has {channels} channels; expected 1 (grey) or 3 (RGB)", items[0])));
    }
    for ((img, p), i) in images.iter().zip(probs).zip(items) {
        if (img.width, img.height, img.channels) != (w, h, channels) {
            return Err(Error::shape(OP, format!("item {i}: {}x{}x{} image in a batch of {w}x{h}x{channels}", img.width, img.height, img.channels)));
        }
        if img.data.len() != w * h * channels {
            return Err(Error::shape(OP, format!("item {i}: {w}x{h}x{channels} image holds {} values", img.data.len())));
        }
        if p.channels != 1 {
            return Err(Error::invalid(OP, format!("item {i}: lesion probability has {} channels; expected 1", p.channels)));
        }
        if (p.width, p.height) != (w, h) || p.data.len() != w * h {
            return Err(Error::shape(OP, format!("item {i}: image is {w}x{h} but the probability map is {}x{}", p.width, p.height)));
        }
    }
    Ok(())
}
