//! Choosing a convolution's kernel by timing it, as PyTorch's `cudnn.benchmark` does
//! (`COSEG_CONV_TUNE`, `[train] conv_tune`).
//!
//! [`cuda::plan`](super::cuda::plan) picks a tensor-core pass's output tile, and the weight
//! gradient's split of its reduction, from a model of waves on the SMs. The model is a guess: on the
//! H200 the tile it chose for the 512-channel 16x16 layers left a wave 21% full, and the split it
//! chose for their weight gradient ran 2.2 waves (kernels/NOTES.md). With tuning on, the first time
//! a pass of a convolution shape runs at a precision, each candidate plan of the device's kernel
//! family ([`candidate_plans`](super::cuda::candidate_plans): every tile, the channels-last 64 x 64
//! too; for the weight gradient splits around the model's; for a forward or input gradient on a
//! short grid, its reduction split in 2 and 4) runs on random operands of that shape, once to warm
//! up and then [`TIMED_RUNS`] times between CUDA events, and the fastest (least of its runs) is
//! used from then on. Ties keep the model's plan.
//!
//! - Tuning waits for the GPU, so it happens in the first (eager) step, never in a captured one:
//!   a pass first met while a CUDA graph is being captured runs the model's plan, and says so
//!   (COSEG_KERNEL_LOG=1).
//! - Every candidate computes the same convolution; the tiles give the same bits (each output's
//!   reduction runs in the same order whatever the tile), a different split adds its partial sums
//!   in another grouping (round-off apart). A split forward writes no batch-norm partial
//!   statistics, so batch norm reads its output for them (not in the timing: on the short grids
//!   where splits are offered that pass is short). With a tuning file the choices are kept, so a
//!   resumed run makes the same ones.
//! - The timings are kept: [`records`] and the file hold every candidate's time, the table a
//!   performance engineer reads first ([`table`]).
//!
//! `COSEG_CONV_TUNE`: unset, empty or `0` off; `1` on, choices kept in memory; anything else a
//! JSON file, read when the device first tunes (choices made on another device or SM count are
//! not used) and written after each new choice. `[train] conv_tune = true` tunes into
//! `<out>/conv-tune.json`.

use super::cuda::{ConvPass, ConvPlan, candidate_plans, describe, launch_plan};
use crate::backend::cpu::conv::ConvGeometry;
use crate::backend::cuda::CudaDevice;
use crate::backend::cuda::launch::log_kernel_choice;
use crate::device::{Precision, TcVariant};
use crate::error::{Error, Result};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Timed runs per candidate after its warm-up run; the least counts.
pub const TIMED_RUNS: usize = 3;

/// Whether, and where, a device's convolutions are tuned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TuneMode {
    Off,
    /// Tuned, the choices kept in memory for the process.
    On,
    /// Tuned, the choices read from and written to this JSON file.
    File(PathBuf),
    /// For tests: every plan timed as [`TuneMode::On`], but the last candidate chosen (the
    /// model's plan is the first), so a test runs a plan other than the model's, the same one on
    /// any machine. The fastest depend on the machine: on CI's emulator the model's plan won
    /// every pass, and under ThreadSanitizer other plans won than without it.
    AvoidModel,
}

impl TuneMode {
    /// `COSEG_CONV_TUNE`'s value (module docs).
    pub fn from_env_value(v: &str) -> TuneMode {
        match v.trim() {
            "" | "0" => TuneMode::Off,
            "1" => TuneMode::On,
            path => TuneMode::File(PathBuf::from(path)),
        }
    }
}

/// One candidate plan and its time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimedPlan {
    pub kernel: String,
    pub tile: [usize; 2],
    pub splits: usize,
    pub chunk: usize,
    /// The least of its timed runs, in milliseconds.
    pub ms: f64,
}

impl TimedPlan {
    fn of(p: &ConvPlan, ms: f64) -> TimedPlan {
        TimedPlan { kernel: p.kernel.name.to_string(), tile: [p.tile.0, p.tile.1], splits: p.splits, chunk: p.chunk, ms }
    }
    fn is(&self, p: &ConvPlan) -> bool {
        self.kernel == p.kernel.name && self.tile == [p.tile.0, p.tile.1] && self.splits == p.splits && self.chunk == p.chunk
    }
}

/// The choice for one pass of one convolution at a precision and kernel family, with every
/// candidate's time; `candidates[0]` is the model's plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TuneRecord {
    pub conv: ConvGeometry,
    pub pass: ConvPass,
    pub precision: Precision,
    pub variant: String,
    /// Index of the chosen plan in `candidates`.
    pub chosen: usize,
    pub candidates: Vec<TimedPlan>,
}

impl TuneRecord {
    /// The model's plan's time over the chosen one's (1 when the model chose right).
    pub fn speedup(&self) -> f64 {
        self.candidates[0].ms / self.candidates[self.chosen].ms.max(1e-9)
    }
}

/// What a tuning file holds.
#[derive(Serialize, Deserialize)]
struct TuneFile {
    device: String,
    sm_count: u32,
    records: Vec<TuneRecord>,
}

/// What one pass's plan is chosen for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct TuneKey {
    conv: ConvGeometry,
    pass: ConvPass,
    precision: Precision,
    variant: TcVariant,
}

impl TuneKey {
    fn of(r: &TuneRecord) -> Option<TuneKey> {
        Some(TuneKey { conv: r.conv, pass: r.pass, precision: r.precision, variant: r.variant.parse().ok()? })
    }
}

/// One device's tuning state.
struct DeviceTune {
    mode: TuneMode,
    chosen: HashMap<TuneKey, ConvPlan>,
    records: Vec<TuneRecord>,
}

fn state() -> MutexGuard<'static, HashMap<usize, DeviceTune>> {
    static STATE: OnceLock<Mutex<HashMap<usize, DeviceTune>>> = OnceLock::new();
    STATE.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner())
}

/// The device's state, made from `COSEG_CONV_TUNE` on first use.
fn device_state<'a>(all: &'a mut HashMap<usize, DeviceTune>, dev: &CudaDevice) -> Result<&'a mut DeviceTune> {
    if !all.contains_key(&dev.ordinal()) {
        let mode = std::env::var("COSEG_CONV_TUNE").map_or(TuneMode::Off, |v| TuneMode::from_env_value(&v));
        all.insert(dev.ordinal(), fresh_state(dev, mode)?);
    }
    Ok(all.get_mut(&dev.ordinal()).expect("inserted above"))
}

/// A state in `mode`, with a file's choices for this device read in.
fn fresh_state(dev: &CudaDevice, mode: TuneMode) -> Result<DeviceTune> {
    let mut st = DeviceTune { mode, chosen: HashMap::new(), records: Vec::new() };
    let TuneMode::File(path) = &st.mode else { return Ok(st) };
    let Some(file) = read_file(path)? else { return Ok(st) };
    if file.device != dev.name() || file.sm_count != dev.sm_count() {
        eprintln!(
            "conv tune: {} was tuned on {} ({} SMs), this is {} ({} SMs): its {} choices are not used, and the file will hold this device's",
            path.display(),
            file.device,
            file.sm_count,
            dev.name(),
            dev.sm_count(),
            file.records.len()
        );
        return Ok(st);
    }
    let mut stale = Vec::new();
    for r in file.records {
        let plan = TuneKey::of(&r).and_then(|key| {
            let cands = candidate_plans(&key.conv, key.pass, key.precision, key.variant, dev.sm_count() as usize);
            let p = r.candidates.get(r.chosen).and_then(|t| cands.into_iter().find(|p| t.is(p)))?;
            Some((key, p))
        });
        match plan {
            Some((key, p)) => {
                st.chosen.insert(key, p);
                st.records.push(r);
            }
            None => stale.push(r),
        }
    }
    if !stale.is_empty() {
        eprintln!("conv tune: {} of the choices in {} name plans this build does not make: tuned again when met", stale.len(), path.display());
    }
    Ok(st)
}

/// The file's contents, None when it does not exist yet.
fn read_file(path: &Path) -> Result<Option<TuneFile>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    parse_file(&text, path).map(Some)
}

fn parse_file(text: &str, path: &Path) -> Result<TuneFile> {
    serde_json::from_str(text).map_err(|e| Error::format(path, Some(e.line()), format!("not a convolution tuning file: {e}")))
}

/// Writes the device's records to `path`, through a temporary file so a reader never sees half
/// of it.
fn write_file(path: &Path, dev: &CudaDevice, st: &DeviceTune) -> Result<()> {
    let file = TuneFile { device: dev.name().to_string(), sm_count: dev.sm_count(), records: st.records.clone() };
    let text = serde_json::to_string_pretty(&file).map_err(|e| Error::Config(format!("conv tune: {e}")))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text + "\n").map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Sets how `dev`'s convolutions are tuned from now on (replacing `COSEG_CONV_TUNE`'s setting);
/// choices already made are dropped and a file's are read.
pub fn set_mode(dev: &CudaDevice, mode: TuneMode) -> Result<()> {
    let st = fresh_state(dev, mode)?;
    state().insert(dev.ordinal(), st);
    Ok(())
}

/// How `dev`'s convolutions are tuned now.
pub fn mode(dev: &CudaDevice) -> Result<TuneMode> {
    Ok(device_state(&mut state(), dev)?.mode.clone())
}

/// Every choice made or read on `dev`, in the order made.
pub fn records(dev: &CudaDevice) -> Result<Vec<TuneRecord>> {
    Ok(device_state(&mut state(), dev)?.records.clone())
}

/// How a plan was come by, for the kernel log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// The model's plan: tuning is off, or there was one candidate.
    Model,
    /// Chosen by timing (now or earlier, or read from a file).
    Tuned,
    /// Tuning is on but a graph capture was under way: the model's plan.
    ModelWhileCapturing,
}

/// The plan for one pass on `dev`: `model`'s (the heuristic's) unless tuning is on and there are
/// other candidates, then the fastest candidate (timed now if this pass was not met before; the
/// last one under [`TuneMode::AvoidModel`]).
pub(super) fn choose(dev: &CudaDevice, sh: &ConvGeometry, pass: ConvPass, precision: Precision, model: ConvPlan) -> Result<(ConvPlan, Choice)> {
    let key = TuneKey { conv: *sh, pass, precision, variant: dev.tc_variant() };
    let avoid_model = {
        let mut all = state();
        let st = device_state(&mut all, dev)?;
        if st.mode == TuneMode::Off {
            return Ok((model, Choice::Model));
        }
        if let Some(p) = st.chosen.get(&key) {
            return Ok((*p, Choice::Tuned));
        }
        st.mode == TuneMode::AvoidModel
    };
    let cands = candidate_plans(sh, pass, precision, key.variant, dev.sm_count() as usize);
    if cands.len() < 2 {
        return Ok((model, Choice::Model));
    }
    if dev.capturing() {
        return Ok((model, Choice::ModelWhileCapturing));
    }
    let times = time_plans(dev, sh, pass, &cands)?;
    let chosen = if avoid_model { times.len() - 1 } else { fastest(&times) };
    let record = TuneRecord {
        conv: *sh,
        pass,
        precision,
        variant: key.variant.name().to_string(),
        chosen,
        candidates: cands.iter().zip(&times).map(|(p, &ms)| TimedPlan::of(p, ms)).collect(),
    };
    log_kernel_choice(|| format!("conv tune: {}", record_line(&record)));
    let mut all = state();
    let st = device_state(&mut all, dev)?;
    st.chosen.insert(key, cands[chosen]);
    st.records.push(record);
    if let TuneMode::File(path) = &st.mode {
        write_file(path, dev, st)?;
    }
    Ok((cands[chosen], Choice::Tuned))
}

/// The index of the least time; the first of equals (the model's plan comes first).
pub fn fastest(times: &[f64]) -> usize {
    times.iter().enumerate().fold(0, |best, (i, &t)| if t < times[best] { i } else { best })
}

/// Each plan's least time over [`TIMED_RUNS`] runs after one warm-up, on random operands of the
/// pass's shapes (fixed seed). The per-op profiler is paused meanwhile, so a profile shows the
/// run's own launches.
fn time_plans(dev: &CudaDevice, sh: &ConvGeometry, pass: ConvPass, plans: &[ConvPlan]) -> Result<Vec<f64>> {
    let [a, b, out] = pass.operands(sh).map(|(_, dims)| dims.iter().product::<usize>());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x7e57);
    let mut random = |len: usize| dev.htod(&(0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>());
    let (a, b, mut out) = (random(a)?, random(b)?, dev.alloc(out)?);
    let profiling = dev.profiling();
    dev.set_profiling(false);
    let timed = plans
        .iter()
        .map(|p| {
            launch_plan(dev, sh, pass, p, &a, &b, None, &mut out)?;
            (0..TIMED_RUNS).map(|_| dev.time_ms(|| launch_plan(dev, sh, pass, p, &a, &b, None, &mut out))).try_fold(f64::INFINITY, |m, t| t.map(|t| m.min(t)))
        })
        .collect();
    dev.set_profiling(profiling);
    timed
}

/// One line per record: the convolution, the pass, and each candidate's time, the chosen one
/// starred.
fn record_line(r: &TuneRecord) -> String {
    let cands: Vec<String> = r
        .candidates
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{}{}x{}/{} {:.4} ms", if i == r.chosen { "*" } else { "" }, t.tile[0], t.tile[1], t.splits, t.ms))
        .collect();
    format!("{} {:?} {} {}: {} (model's first; x{:.2})", describe(&r.conv), r.pass, r.precision, r.variant, cands.join(", "), r.speedup())
}

/// The records as a markdown table: one row per pass, the model's plan and time, the chosen
/// plan and time, and the ratio; then the totals.
pub fn table(records: &[TuneRecord]) -> String {
    let mut out = String::from("| conv | pass | precision | model's plan | ms | chosen plan | ms | model / chosen |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n");
    let plan = |t: &TimedPlan| format!("{} split {}", t.kernel, t.splits);
    for r in records {
        let g = &r.conv;
        let (m, c) = (&r.candidates[0], &r.candidates[r.chosen]);
        out += &format!(
            "| {}x{}x{}x{} k{} {}x{} s{} d{} | {:?} | {} | {} | {:.4} | {} | {:.4} | {:.2} |\n",
            g.n,
            g.c,
            g.h,
            g.w,
            g.k,
            g.r,
            g.s,
            g.stride,
            g.dilation,
            r.pass,
            r.precision,
            plan(m),
            m.ms,
            plan(c),
            c.ms,
            r.speedup()
        );
    }
    out + &summary(records)
}

/// One line: passes tuned, how many the model got wrong, and the summed times of the model's
/// plans and of the chosen ones (each pass counted once, as met).
pub fn summary(records: &[TuneRecord]) -> String {
    let model: f64 = records.iter().map(|r| r.candidates[0].ms).sum();
    let chosen: f64 = records.iter().map(|r| r.candidates[r.chosen].ms).sum();
    let changed = records.iter().filter(|r| r.chosen != 0).count();
    format!(
        "conv tune: {} passes tuned, {changed} not the model's plan; summed once each, the model's plans take {model:.3} ms, the chosen {chosen:.3} ms (x{:.2})\n",
        records.len(),
        model / chosen.max(1e-9)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_value_names_the_mode() {
        assert_eq!(TuneMode::from_env_value(""), TuneMode::Off);
        assert_eq!(TuneMode::from_env_value("0"), TuneMode::Off);
        assert_eq!(TuneMode::from_env_value("1"), TuneMode::On);
        assert_eq!(TuneMode::from_env_value("runs/t.json"), TuneMode::File("runs/t.json".into()));
    }

    #[test]
    fn the_fastest_is_the_least_time_and_ties_keep_the_first() {
        assert_eq!(fastest(&[0.3, 0.1, 0.2]), 1);
        assert_eq!(fastest(&[0.2, 0.2, 0.3]), 0);
        assert_eq!(fastest(&[0.5, 0.4, 0.4]), 1);
        assert_eq!(fastest(&[0.1]), 0);
    }

    fn record(chosen: usize, ms: &[f64]) -> TuneRecord {
        let conv = ConvGeometry { n: 20, c: 512, h: 16, w: 16, k: 512, r: 3, s: 3, stride: 1, pad: 4, dilation: 4 };
        let candidates = ms.iter().enumerate().map(|(i, &ms)| TimedPlan { kernel: format!("k{i}"), tile: [128, 64], splits: i + 1, chunk: 32 * (i + 1), ms }).collect();
        TuneRecord { conv, pass: ConvPass::WeightGrad, precision: Precision::Bf16, variant: "nhwc".into(), chosen, candidates }
    }

    // A file written is read back to the same records; a file that is not one is refused naming
    // its path and line.
    #[test]
    fn a_tuning_file_round_trips_and_a_bad_one_is_named() {
        let file = TuneFile { device: "NVIDIA H200".into(), sm_count: 132, records: vec![record(1, &[0.4, 0.25]), record(0, &[0.1, 0.3, 0.2])] };
        let text = serde_json::to_string_pretty(&file).unwrap();
        let back = parse_file(&text, Path::new("t.json")).unwrap();
        assert_eq!((back.device.as_str(), back.sm_count), ("NVIDIA H200", 132));
        assert_eq!(back.records, file.records);
        assert_eq!(TuneKey::of(&back.records[0]).unwrap().variant, TcVariant::Nhwc);
        let e = parse_file(&text.replace("\"chosen\"", "\"chose\""), Path::new("runs/t.json")).err().unwrap().to_string();
        assert!(e.contains("runs/t.json") && e.contains("row ") && e.contains("chosen"), "{e}");
    }

    // The summary's totals are the sums of the model's and the chosen plans' times; the table has
    // a row per record naming both plans.
    #[test]
    fn the_table_sums_the_model_and_the_chosen_times() {
        let rs = [record(1, &[0.4, 0.25]), record(0, &[0.1, 0.3, 0.2])];
        assert!((rs[0].speedup() - 1.6).abs() < 1e-12 && rs[1].speedup() == 1.0);
        let s = summary(&rs);
        assert!(s.contains("2 passes tuned, 1 not the model's plan") && s.contains("0.500 ms") && s.contains("0.350 ms") && s.contains("x1.43"), "{s}");
        let t = table(&rs);
        assert_eq!(t.lines().filter(|l| l.starts_with("| 20x512")).count(), 2, "{t}");
        assert!(t.contains("| k0 split 1 | 0.4000 | k1 split 2 | 0.2500 | 1.60 |"), "{t}");
    }
}
