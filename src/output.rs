//! One output policy for every command that writes, and the one way files are written.
//!
//! Users keep true masks, DL_info.csv and slices for years; a tool that overwrites them (or
//! scores its own output against itself) cannot be trusted. So every command declares what it
//! reads and what it will write, before it writes anything, through an [`Outputs`]:
//!
//! - An output never replaces an input of the same run: a file that is an input, a file inside an
//!   input folder, or (for output folders) a folder that is, holds or lies inside an input, is
//!   refused, with or without `--overwrite`.
//! - An output never replaces a file coseg did not write, and coseg never writes into a folder
//!   holding other data, unless the user passes `--overwrite` (where the command has it).
//! - Replacing an earlier output of coseg is allowed, and said on stderr.
//!
//! How coseg recognises its own outputs (provenance records, plain text so a user can read them):
//! - An output folder coseg created, or found empty, gets a marker file [`FOLDER_MARKER`]; every
//!   file under a marked folder is coseg's. A folder holding other data is never marked, not even
//!   with `--overwrite`, so the next run asks again.
//! - A single output file (a manifest, an .npy, a mask) written into a folder that is not marked
//!   gets its name appended to that folder's [`FILE_RECORD`] before the file is put in place, so a
//!   run killed in between never leaves an unrecorded coseg file behind.
//!
//! Every file is written by [`crate::io::write_atomic`]: to a hidden temporary name in the same
//! folder, then renamed into place (atomic on one file system), so a killed run leaves either the
//! old file or the new one, never half a file that a later run trusts.

use crate::error::{Error, Result};
use crate::io::{parent_of, write_atomic};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

/// Marks a folder (and everything under it) as coseg's output.
pub const FOLDER_MARKER: &str = ".coseg-output";
/// Lists, one name a line, the files coseg wrote into a folder that is not its own.
pub const FILE_RECORD: &str = ".coseg-files";

/// `path` made absolute, `.` and `..` removed, and the symbolic links of its longest existing
/// prefix resolved, so that two spellings of one file compare equal.
fn resolve(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map(|c| c.join(path)).unwrap_or_else(|_| path.to_path_buf())
    };
    let mut norm = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                norm.pop();
            }
            other => norm.push(other),
        }
    }
    let (mut existing, mut rest) = (norm.clone(), Vec::new());
    loop {
        if let Ok(mut r) = existing.canonicalize() {
            for part in rest.iter().rev() {
                r.push(part);
            }
            return r;
        }
        match (existing.file_name().map(|n| n.to_owned()), existing.parent().map(Path::to_path_buf)) {
            (Some(n), Some(p)) => {
                rest.push(n);
                existing = p;
            }
            _ => return norm,
        }
    }
}

/// Whether two existing paths are one file (hard links included).
#[cfg(unix)]
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}
#[cfg(not(unix))]
fn same_file(_: &Path, _: &Path) -> bool {
    false
}

/// Whether `dir` or one of its ancestors is a coseg output folder.
pub fn in_coseg_folder(dir: &Path) -> bool {
    resolve(dir).ancestors().any(|a| a.join(FOLDER_MARKER).is_file())
}

/// Marks `dir` (created if needed) as a coseg output folder.
pub fn mark_folder(dir: &Path, command: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let text = format!(
        "coseg output folder: written by `coseg {command}` (coseg {}).\n\
         coseg may replace any file under this folder; it never replaces files elsewhere that it did not write.\n",
        env!("CARGO_PKG_VERSION")
    );
    write_atomic(&dir.join(FOLDER_MARKER), text.as_bytes())
}

fn recorded_files(dir: &Path) -> HashSet<String> {
    std::fs::read_to_string(dir.join(FILE_RECORD))
        .map(|t| t.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).map(str::to_string).collect())
        .unwrap_or_default()
}

/// Whether coseg wrote the file at `path`: it lies under a marked folder, or its folder's record
/// names it.
pub fn is_coseg_file(path: &Path) -> bool {
    let r = resolve(path);
    let (Some(dir), Some(name)) = (r.parent(), r.file_name()) else { return false };
    in_coseg_folder(dir) || recorded_files(dir).contains(&*name.to_string_lossy())
}

/// Appends `path`'s name to its folder's record (created with a header the first time).
fn record_file(path: &Path) -> Result<()> {
    let r = resolve(path);
    let (Some(dir), Some(name)) = (r.parent(), r.file_name()) else {
        return Err(Error::invalid("output", format!("{}: not a file path", path.display())));
    };
    let name = name.to_string_lossy().to_string();
    if name.contains('\n') {
        return Err(Error::invalid("output", format!("{:?}: a file name with a line break", path)));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let record = dir.join(FILE_RECORD);
    let fresh = !record.exists();
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&record).map_err(|e| Error::io(&record, e))?;
    let mut text = String::new();
    if fresh {
        text += "# Files coseg wrote into this folder, one name a line: coseg replaces these and no other file here.\n";
    }
    text += &name;
    text.push('\n');
    f.write_all(text.as_bytes()).map_err(|e| Error::io(&record, e))
}

struct Input {
    given: PathBuf,
    resolved: PathBuf,
    what: String,
}

/// The inputs and the output rules of one run (see the module docs). Build it before reading
/// or computing anything, claim every output, then write.
pub struct Outputs {
    command: String,
    /// `None` when the command has no `--overwrite` (the refusals then do not suggest it).
    overwrite: Option<bool>,
    inputs: Vec<Input>,
    said: Mutex<HashSet<PathBuf>>,
}

impl Outputs {
    /// The rules for `coseg <command>`; `overwrite` is its `--overwrite` flag, `None` if it has none.
    pub fn new(command: &str, overwrite: Option<bool>) -> Self {
        Outputs { command: command.to_string(), overwrite, inputs: Vec::new(), said: Mutex::new(HashSet::new()) }
    }

    /// Declares a file or folder this run reads (`what` names it in refusals: "the true masks").
    pub fn input(&mut self, path: impl AsRef<Path>, what: &str) -> &mut Self {
        let given = path.as_ref().to_path_buf();
        self.inputs.push(Input { resolved: resolve(&given), given, what: what.to_string() });
        self
    }

    /// Declares the parts of a DeepLesion-layout folder a run reads: DL_info.csv, Images_png/
    /// and, when it exists, masks/ (true masks).
    pub fn data_inputs(&mut self, root: &Path) -> &mut Self {
        self.input(root.join("DL_info.csv"), "DL_info.csv");
        self.input(root.join("Images_png"), "slice folder");
        let masks = root.join("masks");
        if masks.is_dir() {
            self.input(masks, "true-mask folder");
        }
        self
    }

    fn say_once(&self, key: &Path, text: String) {
        if self.said.lock().map(|mut s| s.insert(key.to_path_buf())).unwrap_or(true) {
            eprintln!("{text}");
        }
    }

    fn refusal(&self, path: &Path, why: String) -> Error {
        let hint = match self.overwrite {
            Some(_) => "; pass --overwrite to replace it, or choose another path",
            None => "; choose another path",
        };
        Error::invalid("output", format!("coseg {}: {}: {why}{hint}", self.command, path.display()))
    }

    fn input_clash(&self, path: &Path, r: &Path, folder: bool) -> Option<Error> {
        for i in &self.inputs {
            let clash = if r == i.resolved || same_file(path, &i.given) {
                Some(format!("is the {} this run reads", i.what))
            } else if r.starts_with(&i.resolved) && i.resolved.is_dir() {
                Some(format!("lies inside the {} {} this run reads", i.what, i.given.display()))
            } else if folder && i.resolved.starts_with(r) {
                Some(format!("holds the {} {} this run reads", i.what, i.given.display()))
            } else {
                None
            };
            if let Some(c) = clash {
                return Some(Error::invalid(
                    "output",
                    format!("coseg {}: {}: {c}; an output never replaces an input of the same run: choose another path", self.command, path.display()),
                ));
            }
        }
        None
    }

    /// Checks that `path` may be written as an output file of this run, and records it as
    /// coseg's (before anything is written, so that a killed run leaves no unrecorded file).
    /// Says so when it replaces an earlier coseg output or, with `--overwrite`, a file coseg did
    /// not write. Then write the file with any writer of this crate (they all go through
    /// [`crate::io::write_atomic`]).
    pub fn claim(&self, path: &Path) -> Result<()> {
        let r = resolve(path);
        if let Some(e) = self.input_clash(path, &r, false) {
            return Err(e);
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => return Err(self.refusal(path, "is a folder; expected a file path".into())),
            Ok(_) => {
                if is_coseg_file(path) {
                    self.say_once(&r, format!("replacing {} (an earlier output of coseg)", path.display()));
                } else if self.overwrite == Some(true) {
                    self.say_once(&r, format!("replacing {} (not written by coseg; --overwrite)", path.display()));
                } else {
                    return Err(self.refusal(path, "exists and was not written by coseg; it is not replaced".into()));
                }
            }
            Err(_) => {}
        }
        if !parent_of(&r).is_some_and(in_coseg_folder) {
            record_file(path)?;
        }
        Ok(())
    }

    /// Checks that `dir` may be an output folder of this run, creates it if needed, and marks it
    /// as coseg's when it is new or empty. An earlier coseg output folder is reused (said); a
    /// folder holding other data is refused unless `--overwrite` was given.
    pub fn folder(&self, dir: &Path) -> Result<()> {
        let r = resolve(dir);
        if let Some(e) = self.input_clash(dir, &r, true) {
            return Err(e);
        }
        match std::fs::metadata(dir) {
            Err(_) => return mark_folder(dir, &self.command),
            Ok(m) if !m.is_dir() => return Err(self.refusal(dir, "is a file; expected a folder".into())),
            Ok(_) => {}
        }
        let mut entries: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n != FOLDER_MARKER)
            .collect();
        if in_coseg_folder(dir) {
            if !entries.is_empty() {
                self.say_once(&r, format!("writing into {}, an earlier output folder of coseg: its files may be replaced", dir.display()));
            }
            return Ok(());
        }
        if entries.is_empty() {
            return mark_folder(dir, &self.command);
        }
        if self.overwrite == Some(true) {
            self.say_once(&r, format!("writing into {}, which holds data coseg did not write (--overwrite): files of the same names are replaced", dir.display()));
            return Ok(());
        }
        entries.sort();
        let n = entries.len();
        let shown = entries.into_iter().take(3).collect::<Vec<_>>().join(", ");
        Err(self.refusal(dir, format!("holds {n} entries coseg did not write ({shown}{}); nothing is written into it", if n > 3 { ", ..." } else { "" })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("coseg-output-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&d).ok();
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random()).collect()
    }

    #[test]
    fn claims_refuse_inputs_and_foreign_files_and_allow_own() {
        let d = tmp("claim");
        let data = d.join("data");
        std::fs::create_dir_all(data.join("masks")).unwrap();
        std::fs::create_dir_all(data.join("Images_png")).unwrap();
        let csv = random_bytes(100, 3);
        std::fs::write(data.join("DL_info.csv"), &csv).unwrap();
        let mut o = Outputs::new("test", Some(false));
        o.data_inputs(&data);
        // An input, by another spelling, and a file inside an input folder.
        let e = o.claim(&d.join("data/../data/./DL_info.csv")).unwrap_err().to_string();
        assert!(e.contains("DL_info.csv") && e.contains("input"), "{e}");
        assert!(o.claim(&data.join("masks/x.png")).unwrap_err().to_string().contains("true-mask folder"));
        // A symbolic link to an input and a hard link of it are the input.
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(data.join("DL_info.csv"), d.join("sym.csv")).unwrap();
            std::fs::hard_link(data.join("DL_info.csv"), d.join("hard.csv")).unwrap();
            let mut w = Outputs::new("test", Some(true));
            w.data_inputs(&data);
            for p in ["sym.csv", "hard.csv"] {
                assert!(w.claim(&d.join(p)).unwrap_err().to_string().contains("DL_info.csv this run reads"), "{p}");
            }
        }
        // A folder that is, holds or lies in an input.
        for f in [data.join("masks"), data.clone(), data.join("Images_png/sub")] {
            assert!(o.folder(&f).is_err(), "{}", f.display());
        }
        // A file coseg did not write: refused; a new file: claimed and recorded; then its own.
        let foreign = d.join("notes.json");
        std::fs::write(&foreign, b"user data").unwrap();
        let e = o.claim(&foreign).unwrap_err().to_string();
        assert!(e.contains("not written by coseg") && e.contains("--overwrite"), "{e}");
        let own = d.join("manifest.json");
        o.claim(&own).unwrap();
        write_atomic(&own, &random_bytes(10, 4)).unwrap();
        assert!(is_coseg_file(&own) && !is_coseg_file(&foreign));
        o.claim(&own).unwrap();
        // --overwrite replaces a foreign file but never an input.
        let mut w = Outputs::new("test", Some(true));
        w.data_inputs(&data);
        w.claim(&foreign).unwrap();
        assert!(w.claim(&data.join("DL_info.csv")).is_err());
        assert_eq!(std::fs::read(data.join("DL_info.csv")).unwrap(), csv);
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn folders_are_marked_when_new_or_empty_and_refused_when_holding_other_data() {
        let d = tmp("folder");
        let o = Outputs::new("test", Some(false));
        o.folder(&d.join("new")).unwrap();
        assert!(d.join("new").join(FOLDER_MARKER).is_file());
        std::fs::write(d.join("new/a.png"), random_bytes(20, 5)).unwrap();
        o.folder(&d.join("new")).unwrap();
        o.folder(&d.join("new/inner")).unwrap();
        assert!(is_coseg_file(&d.join("new/inner/b.png")));
        let theirs = d.join("theirs");
        std::fs::create_dir_all(&theirs).unwrap();
        std::fs::write(theirs.join("DL_info.csv"), random_bytes(20, 6)).unwrap();
        let e = o.folder(&theirs).unwrap_err().to_string();
        assert!(e.contains("DL_info.csv") && e.contains("did not write"), "{e}");
        assert!(!theirs.join(FOLDER_MARKER).exists());
        Outputs::new("test", Some(true)).folder(&theirs).unwrap();
        // --overwrite does not adopt the folder: the next run asks again.
        assert!(!theirs.join(FOLDER_MARKER).exists());
        let e = Outputs::new("test", None).folder(&theirs).unwrap_err().to_string();
        assert!(!e.contains("--overwrite"), "{e}");
        std::fs::remove_dir_all(d).ok();
    }
}
