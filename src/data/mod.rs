//! The data stage: DeepLesion's format, a synthetic DeepLesion, lesion crops, embeddings,
//! clustering, the stratified split and the co-segmentation pairs.
//!
//! Public API:
//! - [`dl_info`]: `read_dl_info(path) -> DlInfo { records: Vec<LesionRecord>, skipped, .. }`,
//!   `write_dl_info`, `LesionRecord` (typed columns: `recist: [[f32; 2]; 4]` = long axis p1, p2
//!   then short axis p3, p4; `bbox`, `spacing`, `window`, `coarse_type`, `split`, ...;
//!   `slice_path(root, offset)`, `recist_box()`, `validate()`), `CoarseType`, `OfficialSplit`.
//! - [`slice`](mod@slice): `load_hu(path) -> Image<i16>` (HU), `save_hu`, `load_lesion_slices(root, rec)`
//!   (key-1, key, key+1; key repeated when a neighbour file is missing), `window_unit`, `window_u8`.
//! - [`crop`]: `CropParams { size: 128, context, min_side_px, window }`, `CropBox::around(rec, p)`
//!   with `to_crop` / `to_slice` (points), `crop_hu`, `crop_mask`, `paste_mask` (crop mask back
//!   into a full slice mask), and `lesion_crop(root, rec, p) -> LesionCrop` (3 windowed channels).
//! - [`recist`]: `recist_from_mask(mask, w, h)`: longest chord, then longest perpendicular chord.
//! - [`synth`]: `synth_dataset(out, &SynthParams)` writes DL_info.csv, Images_png/ and
//!   masks/<File_name>.png; `Synthesizer::new(seed, size)?.lesion(i)` makes one in memory.
//! - [`hu_stats`]: HU band fractions, tissue mean/std, noise; `compare_report` (real vs synthetic).
//! - [`embed`]: `embed_dataset(root, records) -> Embeddings` (26 standardised features, listed
//!   in the module docs), `lesion_features`, `standardize`.
//! - [`kmeans`]: `kmeans(data, dim, k, seed, max_iter) -> KMeans` (k-means++ seeding).
//! - [`split`]: `stratified_split`, `make_pairs(.., PairRule::All | PerLesion(k), ..)`,
//!   `Manifest { lesions: [{file_name, row, cluster, split}], pairs: {train, val, test}, .. }`
//!   with `save` / `load`.
//! - [`npy`]: `read_npy_f32` / `write_npy_f32` (float32 C-order .npy, any rank).

pub mod crop;
pub mod csv;
pub mod dl_info;
pub mod embed;
pub mod hu_stats;
pub mod kmeans;
pub mod npy;
pub mod recist;
pub mod slice;
pub mod split;
pub mod synth;

pub use crop::{lesion_crop, CropBox, CropParams, LesionCrop};
pub use dl_info::{read_dl_info, recist_box_of, write_dl_info, CoarseType, DlInfo, LesionRecord, OfficialSplit, SkippedRow};
pub use slice::{load_hu, load_lesion_slices, save_hu, HuSlice, LesionSlices};
pub use split::{Manifest, PairRule, Split};
