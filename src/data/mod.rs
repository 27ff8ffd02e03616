//! The data stage: DeepLesion's format, a synthetic DeepLesion, lesion crops.
//!
//! Public API:
//! - [`dl_info`]: `read_dl_info(path) -> DlInfo { records: Vec<LesionRecord>, skipped, .. }`,
//!   `write_dl_info`, `LesionRecord` (typed columns: `recist: [[f32; 2]; 4]` = long axis p1, p2
//!   then short axis p3, p4; `bbox`, `spacing`, `window`, `coarse_type`, `split`, ...;
//!   `slice_path(root, offset)`, `recist_box()`, `validate()`), `CoarseType`, `OfficialSplit`.
//! - [`slice`]: `load_hu(path) -> Image<i16>` (HU), `save_hu`, `load_lesion_slices(root, rec)`
//!   (key-1, key, key+1; key repeated when a neighbour file is missing), `window_unit`, `window_u8`.
//! - [`crop`]: `CropParams { size: 128, context, min_side_px, window }`, `CropBox::around(rec, p)`
//!   with `to_crop` / `to_slice` (points), `crop_hu`, `crop_mask`, `paste_mask` (crop mask back
//!   into a full slice mask), and `lesion_crop(root, rec, p) -> LesionCrop` (3 windowed channels).
//! - [`recist`]: `recist_from_mask(mask, w, h)`: longest chord, then longest perpendicular chord.
//! - [`synth`]: `synth_dataset(out, &SynthParams)` writes DL_info.csv, Images_png/ and
//!   masks/<File_name>.png; `synth_lesion(seed, i, size)` makes one lesion in memory.

pub mod crop;
pub mod csv;
pub mod dl_info;
pub mod recist;
pub mod slice;
pub mod synth;

pub use crop::{lesion_crop, CropBox, CropParams, LesionCrop};
pub use dl_info::{read_dl_info, write_dl_info, CoarseType, DlInfo, LesionRecord, OfficialSplit, SkippedRow};
pub use slice::{load_hu, load_lesion_slices, save_hu, HuSlice, LesionSlices};
