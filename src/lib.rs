//! coseg: weakly supervised lesion co-segmentation on CT (Agarwal, Tang, Xiao, Summers).
//!
//! Data flows one way, and each stage is a module and a `coseg` subcommand that reads and writes
//! plain files (PNG, CSV/JSON, safetensors):
//!
//! ```text
//! data (DeepLesion reader, synthetic set, crops, clustering, split, pairs)
//!   -> pseudo (GrabCut pseudo-masks from RECIST)
//!   -> nn + train (Siamese dilated ResNet + attention + decoder on tensor/autograd/ops/backend)
//!   -> crf (dense CRF refinement) -> metrics (recall, precision, Dice, AVD, VS)
//! ```
//!
//! The module docs also name the private pieces of each op family (the `*Kernels` traits that
//! `cpu.rs` and `cuda.rs` implement): `cargo doc --document-private-items` renders those links.
#![allow(rustdoc::private_intra_doc_links)]

pub mod autograd;
pub mod backend;
pub mod crf;
pub mod data;
pub mod device;
pub mod error;
pub mod io;
pub mod metrics;
pub mod nn;
pub mod ops;
pub mod output;
pub mod progress;
pub mod pseudo;
pub mod tensor;
pub mod train;

pub use device::Device;
pub use error::{Error, Result};
