//! The dense CRF on a CUDA device (`kernels/crf.cu`), mirroring the CPU modules beside it:
//! [`lattice`] is `crf::lattice` (the permutohedral lattice, built and filtered on the device)
//! and [`meanfield`] is `crf::refine_batch` (both pairwise kernels, pydensecrf's normalisation and
//! the mean field of the binary lesion CRF) for a batch of same-size images in one set of
//! launches, with one wait for the host at the end.
//!
//! Parameters, defaults and results are the CPU version's: the embedding repeats its float
//! operations exactly, so the lattices have the same vertices; sums run in another order (atomic
//! splats), so marginals agree to about 1e-6, not bit for bit (tests/gpu_crf.rs).

pub mod lattice;
pub mod meanfield;

pub use lattice::{GPU_DIMS, GpuLattice, MAX_IMAGES, TableSize};
pub use meanfield::{DeviceBatch, Refined, batch_fits, refine_batch, refine_bytes_needed, refine_group};
