//! DL_info.csv: one row per lesion, every column parsed into a typed [`LesionRecord`].
//!
//! Columns are found by header name, so extra columns (the official test split carries
//! `Nifti_ct_name`) and reordered files are accepted. A row that cannot be parsed, or whose
//! geometry is unusable (RECIST outside the image, zero-length axis), is skipped and recorded in
//! [`DlInfo::skipped`] with its row number and the column at fault; the rest of the file is kept.
//! A row repeating an earlier one exactly is dropped the same way, naming the row it repeats.

use super::csv::{quote, split_record};
use crate::error::{Error, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The DL_info.csv header of NIH DeepLesion, in file order.
pub const DL_INFO_COLUMNS: [&str; 18] = [
    "File_name",
    "Patient_index",
    "Study_index",
    "Series_ID",
    "Key_slice_index",
    "Measurement_coordinates",
    "Bounding_boxes",
    "Lesion_diameters_Pixel_",
    "Normalized_lesion_location",
    "Coarse_lesion_type",
    "Possibly_noisy",
    "Slice_range",
    "Spacing_mm_px_",
    "Image_size",
    "DICOM_windows",
    "Patient_gender",
    "Patient_age",
    "Train_Val_Test",
];

/// DeepLesion's coarse lesion types (column Coarse_lesion_type; -1 = not labelled, as in the
/// official training split).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum CoarseType {
    Unknown = -1,
    Bone = 1,
    Abdomen = 2,
    Mediastinum = 3,
    Liver = 4,
    Lung = 5,
    Kidney = 6,
    SoftTissue = 7,
    Pelvis = 8,
}

impl CoarseType {
    pub const ALL: [CoarseType; 9] = [
        CoarseType::Unknown,
        CoarseType::Bone,
        CoarseType::Abdomen,
        CoarseType::Mediastinum,
        CoarseType::Liver,
        CoarseType::Lung,
        CoarseType::Kidney,
        CoarseType::SoftTissue,
        CoarseType::Pelvis,
    ];
    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| *t as i32 == code)
    }
    pub fn code(self) -> i32 {
        self as i32
    }
    /// Index 0..9 for one-hot encodings (Unknown = 0, Bone = 1, ..., Pelvis = 8).
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }
}

/// Official split of a lesion (Train_Val_Test: 1 train, 2 validation, 3 test).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum OfficialSplit {
    Train = 1,
    Val = 2,
    Test = 3,
}

/// One DL_info.csv row with every column typed. Coordinates are 0-based pixel coordinates of the
/// slice (pixel centre at integer coordinates).
#[derive(Clone, Debug, PartialEq)]
pub struct LesionRecord {
    /// 1-based line number in the file it came from (header = line 1); 0 when built in memory.
    pub row: usize,
    /// `<patient>_<study>_<series>_<slice:03>.png`
    pub file_name: String,
    pub patient: u32,
    pub study: u32,
    pub series: u32,
    pub key_slice: u32,
    /// RECIST marks: long axis end points p1, p2, then short axis end points p3, p4, as (x, y).
    pub recist: [[f32; 2]; 4],
    /// Bounding box x0, y0, x1, y1 (DeepLesion pads the RECIST extent by 5 px).
    pub bbox: [f32; 4],
    /// Long and short diameter in pixels.
    pub diameters_px: [f32; 2],
    /// Normalised x, y, z location of the lesion in the body.
    pub location: [f32; 3],
    pub coarse_type: CoarseType,
    pub possibly_noisy: bool,
    /// First and last slice index of the lesion's sub-volume.
    pub slice_range: [u32; 2],
    /// Pixel spacing x, y and slice spacing z, in mm.
    pub spacing: [f32; 3],
    /// Width, height in pixels.
    pub image_size: [u32; 2],
    /// DICOM window lower and upper bound in HU.
    pub window: [f32; 2],
    /// As written in the file (DeepLesion uses F and M).
    pub gender: String,
    /// None when the file leaves the age empty or NaN.
    pub age: Option<f32>,
    pub split: OfficialSplit,
}

/// A row that was not kept, with why.
#[derive(Clone, Debug, PartialEq)]
pub struct SkippedRow {
    /// 1-based line number in the file (header = line 1).
    pub row: usize,
    /// The row's File_name when it could be read, else empty.
    pub file_name: String,
    pub reason: String,
}

impl std::fmt::Display for SkippedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "row {} ({}): {}", self.row, self.file_name, self.reason)
    }
}

/// A parsed DL_info.csv: the rows kept and the rows skipped.
#[derive(Clone, Debug)]
pub struct DlInfo {
    pub path: PathBuf,
    pub records: Vec<LesionRecord>,
    pub skipped: Vec<SkippedRow>,
    /// Header columns this reader does not use (kept so a caller can report them).
    pub extra_columns: Vec<String>,
}

impl LesionRecord {
    /// `<patient>_<study>_<series>` folder under Images_png.
    pub fn series_dir(&self) -> String {
        format!("{:06}_{:02}_{:02}", self.patient, self.study, self.series)
    }

    /// Path of slice `key_slice + offset` under the data root (offset -1, 0, +1 for the 3 channels).
    pub fn slice_path(&self, root: &Path, offset: i32) -> PathBuf {
        let idx = self.key_slice as i64 + offset as i64;
        root.join("Images_png").join(self.series_dir()).join(format!("{idx:03}.png"))
    }

    /// Long axis length in pixels, computed from the RECIST points.
    pub fn long_axis_px(&self) -> f32 {
        dist(self.recist[0], self.recist[1])
    }
    /// Short axis length in pixels, computed from the RECIST points.
    pub fn short_axis_px(&self) -> f32 {
        dist(self.recist[2], self.recist[3])
    }
    /// Tight box x0, y0, x1, y1 around the four RECIST points.
    pub fn recist_box(&self) -> [f32; 4] {
        recist_box_of(&self.recist)
    }
    /// RECIST centre: midpoint of the long axis.
    pub fn centre(&self) -> [f32; 2] {
        [(self.recist[0][0] + self.recist[1][0]) / 2.0, (self.recist[0][1] + self.recist[1][1]) / 2.0]
    }

    /// The geometry checks every consumer relies on (`recist::check_recist` and `check_window`,
    /// shared with `segment` and the crops): points inside the image, axes of non-zero length
    /// that cross, a window lo < hi, positive spacing. Returns the column at fault and why.
    pub fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        let [w, h] = self.image_size.map(|v| v as f32);
        if w < 1.0 || h < 1.0 {
            return Err(("Image_size", format!("{w}x{h} is empty")));
        }
        super::recist::check_recist(&self.recist, w as usize, h as usize).map_err(|why| ("Measurement_coordinates", why))?;
        if !self.spacing.iter().all(|s| s.is_finite() && *s > 0.0) {
            return Err(("Spacing_mm_px_", format!("spacing {:?} must be positive", self.spacing)));
        }
        super::recist::check_window(self.window).map_err(|why| ("DICOM_windows", why))?;
        Ok(())
    }
}

fn dist(a: [f32; 2], b: [f32; 2]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

/// Reads DL_info.csv (or any file with its columns). Fails only when the file cannot be read or
/// the header lacks a required column; bad rows are skipped and listed in `skipped`.
pub fn read_dl_info(path: impl AsRef<Path>) -> Result<DlInfo> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_dl_info(&text, path)
}

/// Parses DL_info.csv text; `path` is only used in messages.
pub fn parse_dl_info(text: &str, path: &Path) -> Result<DlInfo> {
    let mut lines = text.lines().enumerate();
    let header_line = lines.next().map(|(_, l)| l).unwrap_or("");
    let header = split_record(header_line.trim_start_matches('\u{feff}'))
        .map_err(|e| Error::format(path, Some(1), format!("header: {e}")))?;
    let mut col = [0usize; 18];
    for (i, name) in DL_INFO_COLUMNS.iter().enumerate() {
        col[i] = header.iter().position(|h| h.trim() == *name).ok_or_else(|| {
            Error::format(path, Some(1), format!("header lacks column {name}; found {}", header.join(",")))
        })?;
    }
    let extra_columns = header
        .iter()
        .filter(|h| !DL_INFO_COLUMNS.contains(&h.trim()))
        .cloned()
        .collect();
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    // An exact duplicate row is one lesion listed twice: kept, it would be paired with itself
    // and counted twice in every mean. Rows are compared as parsed (canonical text).
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (i, line) in lines {
        let row = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        match parse_row(line, row, &header, &col) {
            Ok(rec) => match rec.validate() {
                Ok(()) => match seen.entry(format_row(&rec)) {
                    std::collections::hash_map::Entry::Occupied(first) => skipped.push(SkippedRow {
                        row,
                        file_name: rec.file_name.clone(),
                        reason: format!("exact duplicate of row {}; dropped", first.get()),
                    }),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(row);
                        records.push(rec);
                    }
                },
                Err((column, why)) => skipped.push(SkippedRow {
                    row,
                    file_name: rec.file_name.clone(),
                    reason: format!("column {column}: {why}"),
                }),
            },
            Err((file_name, reason)) => skipped.push(SkippedRow { row, file_name, reason }),
        }
    }
    Ok(DlInfo { path: path.to_path_buf(), records, skipped, extra_columns })
}

/// A failed row: (file name if known, reason naming the column).
type RowError = (String, String);

/// One row's fields, read by column index of [`DL_INFO_COLUMNS`]; every failure names its column.
struct RowFields<'a> {
    fields: Vec<String>,
    col: &'a [usize; 18],
    file_name: String,
}

impl RowFields<'_> {
    fn fail(&self, c: usize, why: String) -> RowError {
        (self.file_name.clone(), format!("column {}: {why}", DL_INFO_COLUMNS[c]))
    }
    fn field(&self, c: usize) -> &str {
        self.fields[self.col[c]].trim()
    }
    /// An integer, also written as a float with no fraction ("16.0").
    fn int(&self, c: usize) -> std::result::Result<i64, RowError> {
        let s = self.field(c);
        s.parse::<i64>()
            .or_else(|_| s.parse::<f64>().map_err(|_| ()).and_then(|v| if v.fract() == 0.0 { Ok(v as i64) } else { Err(()) }))
            .map_err(|_| self.fail(c, format!("'{s}' is not an integer")))
    }
    fn uint(&self, c: usize) -> std::result::Result<u32, RowError> {
        let v = self.int(c)?;
        u32::try_from(v).map_err(|_| self.fail(c, format!("{v} is negative or too large")))
    }
    /// A quoted list of exactly `n` finite numbers ("x1, y1, ...").
    fn list(&self, c: usize, n: usize) -> std::result::Result<Vec<f32>, RowError> {
        let s = self.field(c);
        let vals: Vec<&str> = s.split(',').map(str::trim).collect();
        if vals.len() != n {
            return Err(self.fail(c, format!("'{s}' has {} values, expected {n}", vals.len())));
        }
        vals.iter()
            .map(|v| v.parse::<f32>().ok().filter(|x| x.is_finite()).ok_or_else(|| self.fail(c, format!("'{v}' is not a finite number"))))
            .collect()
    }
    /// A list value that must be a non-negative whole number (a slice index, a pixel size).
    fn whole(&self, c: usize, v: f32) -> std::result::Result<u32, RowError> {
        if v >= 0.0 && v.fract() == 0.0 && v <= u32::MAX as f32 {
            Ok(v as u32)
        } else {
            Err(self.fail(c, format!("{v} is not a non-negative integer")))
        }
    }
    /// Empty or "nan" is unknown.
    fn age(&self) -> std::result::Result<Option<f32>, RowError> {
        let s = self.field(16);
        if s.is_empty() || s.eq_ignore_ascii_case("nan") {
            return Ok(None);
        }
        s.parse::<f32>().map(Some).map_err(|_| self.fail(16, format!("'{s}' is not a number")))
    }
    fn split(&self) -> std::result::Result<OfficialSplit, RowError> {
        match self.int(17)? {
            1 => Ok(OfficialSplit::Train),
            2 => Ok(OfficialSplit::Val),
            3 => Ok(OfficialSplit::Test),
            v => Err(self.fail(17, format!("{v} is not 1, 2 or 3"))),
        }
    }
}

/// Parses one row; on failure returns (file name if known, reason naming the column). Columns
/// are checked in file order, so the first bad one is the one named.
fn parse_row(line: &str, row: usize, header: &[String], col: &[usize; 18]) -> std::result::Result<LesionRecord, RowError> {
    let fields = split_record(line).map_err(|e| (String::new(), e))?;
    let file_name = fields.get(col[0]).cloned().unwrap_or_default();
    if fields.len() != header.len() {
        return Err((file_name, format!("{} fields, header has {}", fields.len(), header.len())));
    }
    let f = RowFields { fields, col, file_name };
    if f.file_name.is_empty() {
        return Err(f.fail(0, "empty".into()));
    }
    let (m, b, d, loc) = (f.list(5, 8)?, f.list(6, 4)?, f.list(7, 2)?, f.list(8, 3)?);
    let code = f.int(9)?;
    let coarse_type = CoarseType::from_code(code as i32).ok_or_else(|| f.fail(9, format!("{code} is not a coarse type (-1 or 1..8)")))?;
    let noisy = f.int(10)?;
    if noisy != 0 && noisy != 1 {
        return Err(f.fail(10, format!("{noisy} is not 0 or 1")));
    }
    let (sr, spacing, size, window) = (f.list(11, 2)?, f.list(12, 3)?, f.list(13, 2)?, f.list(14, 2)?);
    let (age, split) = (f.age()?, f.split()?);
    Ok(LesionRecord {
        row,
        file_name: f.file_name.clone(),
        patient: f.uint(1)?,
        study: f.uint(2)?,
        series: f.uint(3)?,
        key_slice: f.uint(4)?,
        recist: [[m[0], m[1]], [m[2], m[3]], [m[4], m[5]], [m[6], m[7]]],
        bbox: [b[0], b[1], b[2], b[3]],
        diameters_px: [d[0], d[1]],
        location: [loc[0], loc[1], loc[2]],
        coarse_type,
        possibly_noisy: noisy == 1,
        slice_range: [f.whole(11, sr[0])?, f.whole(11, sr[1])?],
        spacing: [spacing[0], spacing[1], spacing[2]],
        image_size: [f.whole(13, size[0])?, f.whole(13, size[1])?],
        window: [window[0], window[1]],
        gender: f.field(15).to_string(),
        age,
        split,
    })
}

fn join(v: &[f32]) -> String {
    v.iter().map(|x| format!("{x}")).collect::<Vec<_>>().join(", ")
}

/// One record as a DL_info.csv line (no newline), columns in [`DL_INFO_COLUMNS`] order.
pub fn format_row(r: &LesionRecord) -> String {
    let m: Vec<f32> = r.recist.iter().flatten().copied().collect();
    let fields = [
        r.file_name.clone(),
        r.patient.to_string(),
        r.study.to_string(),
        r.series.to_string(),
        r.key_slice.to_string(),
        join(&m),
        join(&r.bbox),
        join(&r.diameters_px),
        join(&r.location),
        r.coarse_type.code().to_string(),
        (r.possibly_noisy as u8).to_string(),
        format!("{}, {}", r.slice_range[0], r.slice_range[1]),
        join(&r.spacing),
        format!("{}, {}", r.image_size[0], r.image_size[1]),
        join(&r.window),
        r.gender.clone(),
        r.age.map(|a| format!("{a:.1}")).unwrap_or_default(),
        (r.split as u8).to_string(),
    ];
    fields.iter().map(|f| quote(f)).collect::<Vec<_>>().join(",")
}

/// Writes records as DL_info.csv with DeepLesion's header, creating parent folders.
pub fn write_dl_info(path: impl AsRef<Path>, records: &[LesionRecord]) -> Result<()> {
    let path = path.as_ref();
    let mut out = DL_INFO_COLUMNS.join(",");
    out.push('\n');
    for r in records {
        let _ = writeln!(out, "{}", format_row(r));
    }
    crate::io::write_atomic(path, out.as_bytes())
}

/// Tight box x0, y0, x1, y1 around four RECIST points (long p1, p2, short p3, p4).
pub fn recist_box_of(points: &[[f32; 2]; 4]) -> [f32; 4] {
    let xs = points.map(|p| p[0]);
    let ys = points.map(|p| p[1]);
    let min = |v: [f32; 4]| v.into_iter().fold(f32::INFINITY, f32::min);
    let max = |v: [f32; 4]| v.into_iter().fold(f32::NEG_INFINITY, f32::max);
    [min(xs), min(ys), max(xs), max(ys)]
}
