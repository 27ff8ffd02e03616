//! Opt-in per-op GPU timing: where a step's GPU time goes, by kernel.
//!
//! With profiling on ([`CudaDevice::set_profiling`]), every kernel launch (`launch::launch_with`)
//! and every cuBLAS call (`blas`) records a timing event on the device's stream before and after
//! it, keyed by the kernel's name (cuBLAS: "cublas sgemm"). [`CudaDevice::flush_profile`] waits
//! for the stream and adds each launch's elapsed time to running totals per name;
//! [`CudaDevice::collect_profile`] hands the totals over as a [`Profile`] and starts again.
//! Events are pooled: once a flush has returned them, later launches reuse them, so a profiled
//! training loop that flushes once per step allocates no events after its first step.
//!
//! What a row measures: the time between the event before the launch and the event after it, on
//! the stream. When the stream is busy the kernel starts as soon as its predecessor ends; when the
//! stream runs dry (the host is slower than the GPU) the interval also holds the wait for the host
//! to queue the launch. So a row is an upper bound of its kernels' execution time; Nsight Compute
//! (`../shared/gpu/profile.sh`) gives exact per-kernel times. A step's wall time minus the sum of
//! its kernels' times is what the GPU spent waiting between launches: the host overhead.
//!
//! Each launch is also filed under the model part it ran in ([`crate::autograd::current_part`]:
//! an encoder stage, the attention, the decoder, the loss, the optimiser; forward or backward),
//! so [`Profile::parts`] says where in the model the time went, not only in which kernels.
//!
//! Off (the default), the hot path costs one relaxed atomic load per launch.

use super::context::CudaDevice;
use super::error::CudaError;
use crate::autograd::{Part, current_part};
use crate::error::{Error, Result};
use cudarc::driver::{CudaEvent, CudaStream, sys};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// The per-device recorder behind [`CudaDevice::set_profiling`].
#[derive(Default)]
pub(crate) struct OpTimer {
    enabled: AtomicBool,
    state: Mutex<TimerState>,
}

#[derive(Default)]
struct TimerState {
    /// Timing events ready for reuse.
    free: Vec<CudaEvent>,
    /// Launches queued since the last flush: name, model part, event before, event after.
    pending: Vec<(&'static str, Part, CudaEvent, CudaEvent)>,
    /// Per name: launches and milliseconds, since the last collect.
    totals: Totals,
    /// The same launches per model part.
    part_totals: HashMap<Part, (u64, f64)>,
}

/// Launches and milliseconds per op name, summed.
pub type Totals = HashMap<&'static str, (u64, f64)>;

impl OpTimer {
    fn state(&self) -> MutexGuard<'_, TimerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Before a launch: None when profiling is off, else an event recorded on `stream`.
    pub(crate) fn start(&self, stream: &CudaStream) -> std::result::Result<Option<CudaEvent>, sys::CUresult> {
        if !self.enabled.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let ev = self.take_event(stream)?;
        ev.record(stream).map_err(|e| e.0)?;
        Ok(Some(ev))
    }

    /// After the launch `start` preceded: records the closing event and queues the pair.
    pub(crate) fn stop(&self, start: Option<CudaEvent>, name: &'static str, stream: &CudaStream) -> std::result::Result<(), sys::CUresult> {
        let Some(start) = start else { return Ok(()) };
        let end = self.take_event(stream)?;
        end.record(stream).map_err(|e| e.0)?;
        self.state().pending.push((name, current_part(), start, end));
        Ok(())
    }

    fn take_event(&self, stream: &CudaStream) -> std::result::Result<CudaEvent, sys::CUresult> {
        if let Some(ev) = self.state().free.pop() {
            return Ok(ev);
        }
        // Timing events (new_event(None) would disable timing).
        stream.context().new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(|e| e.0)
    }

    /// Adds the queued launches' times to the totals and returns their events to the pool. The
    /// caller has synchronised the stream, so every event has completed.
    fn flush(&self) -> std::result::Result<(), sys::CUresult> {
        let mut st = self.state();
        let pending = std::mem::take(&mut st.pending);
        let TimerState { free, totals, part_totals, .. } = &mut *st;
        for (name, part, start, end) in pending {
            let ms = start.elapsed_ms(&end).map_err(|e| e.0)? as f64;
            for t in [totals.entry(name).or_default(), part_totals.entry(part).or_default()] {
                t.0 += 1;
                t.1 += ms;
            }
            free.push(start);
            free.push(end);
        }
        Ok(())
    }

    /// The totals per name and per model part, starting again from zero.
    fn take_totals(&self) -> (Totals, HashMap<Part, (u64, f64)>) {
        let mut st = self.state();
        (std::mem::take(&mut st.totals), std::mem::take(&mut st.part_totals))
    }

    /// Events held by the pool and the queue (for tests: a warm profiled loop holds a fixed number).
    fn events_held(&self) -> usize {
        let st = self.state();
        st.free.len() + 2 * st.pending.len()
    }
}

impl CudaDevice {
    /// Turns per-op GPU timing on or off for every later launch on this device (process-wide,
    /// like the device). Launches timed before turning it off are still collected.
    pub fn set_profiling(&self, on: bool) {
        self.timer().set_enabled(on)
    }

    pub fn profiling(&self) -> bool {
        self.timer().enabled()
    }

    /// Waits for the stream and adds the timed launches queued so far to the running totals,
    /// freeing their events for reuse. Call it at a synchronisation point (the end of a step).
    pub fn flush_profile(&self) -> Result<()> {
        self.synchronize()?;
        self.timer().flush().map_err(|code| self.profile_error("reading the timing events", code))
    }

    /// The timed launches since the last collect (flushed first) as a profile of `steps` steps;
    /// the totals start again from zero.
    pub fn collect_profile(&self, steps: usize) -> Result<Profile> {
        self.flush_profile()?;
        let (totals, parts) = self.timer().take_totals();
        let mut profile = Profile::from_totals(&totals, steps);
        profile.parts = parts.into_iter().map(|(part, (launches, total_ms))| PartRow { part, launches, total_ms }).collect();
        profile.parts.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms).then_with(|| a.part.to_string().cmp(&b.part.to_string())));
        Ok(profile)
    }

    /// Timing events the profiler holds (pooled or queued).
    pub fn profile_events_held(&self) -> usize {
        self.timer().events_held()
    }

    /// Milliseconds of GPU time between two events recorded on the stream around `work`; the
    /// host waits for the second (one counted host wait). For choosing between kernels
    /// (`ops::conv::tune`) outside the steady state, not for per-op profiling.
    pub fn time_ms(&self, work: impl FnOnce() -> Result<()>) -> Result<f64> {
        let event = || self.context().new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(|e| self.profile_error("creating an event", e.0));
        let (start, end) = (event()?, event()?);
        start.record(self.stream()).map_err(|e| self.profile_error("recording an event", e.0))?;
        work()?;
        end.record(self.stream()).map_err(|e| self.profile_error("recording an event", e.0))?;
        self.count_host_wait();
        end.synchronize().map_err(|e| self.profile_error("waiting for an event", e.0))?;
        Ok(start.elapsed_ms(&end).map_err(|e| self.profile_error("reading the timing events", e.0))? as f64)
    }

    pub(crate) fn profile_error(&self, what: &str, code: sys::CUresult) -> Error {
        CudaError::driver(self.ordinal(), format!("profiling: {what}"), cudarc::driver::DriverError(code)).into()
    }
}

/// One op's row: its launches and their summed time over the profiled steps.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileRow {
    pub name: String,
    pub launches: u64,
    pub total_ms: f64,
}

/// One model part's row (forward or backward): its launches and their summed time.
#[derive(Clone, Debug, PartialEq)]
pub struct PartRow {
    pub part: Part,
    pub launches: u64,
    pub total_ms: f64,
}

/// Per-op GPU time over `steps` steps, rows by time, longest first (ties by name).
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub rows: Vec<ProfileRow>,
    /// The same launches by model part, longest first (empty for a profile made from records).
    pub parts: Vec<PartRow>,
    pub steps: usize,
    /// Wall time of the profiled steps together, when the steps were timed (see [`StepProfiler`]).
    pub wall_ms: Option<f64>,
}

/// One line of the CSV form: per-step figures and the share of the kernel total (a fraction).
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileCsvRow {
    pub name: String,
    pub launches_per_step: f64,
    pub ms_per_step: f64,
    pub share: f64,
}

const CSV_HEADER: &str = "name,launches_per_step,ms_per_step,share";

impl Profile {
    /// Sums (name, ms) records, one per launch, into a profile of `steps` steps.
    pub fn from_records<'a>(records: impl IntoIterator<Item = (&'a str, f64)>, steps: usize) -> Profile {
        let mut by_name: HashMap<&str, (u64, f64)> = HashMap::new();
        for (name, ms) in records {
            let t = by_name.entry(name).or_default();
            t.0 += 1;
            t.1 += ms;
        }
        Self::from_totals(&by_name, steps)
    }

    fn from_totals(totals: &HashMap<&str, (u64, f64)>, steps: usize) -> Profile {
        let mut rows: Vec<ProfileRow> =
            totals.iter().map(|(n, &(launches, total_ms))| ProfileRow { name: n.to_string(), launches, total_ms }).collect();
        rows.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms).then_with(|| a.name.cmp(&b.name)));
        Profile { rows, parts: Vec::new(), steps, wall_ms: None }
    }

    /// The kernels' summed time, all steps.
    pub fn kernel_ms(&self) -> f64 {
        self.rows.iter().map(|r| r.total_ms).sum()
    }

    /// Per-step divisor: at least one step, so a profile of zero steps shows totals.
    fn per(&self) -> f64 {
        self.steps.max(1) as f64
    }

    /// Kernel time per step, and (when timed) wall time per step and the host overhead between.
    pub fn per_step(&self) -> (f64, Option<f64>, Option<f64>) {
        let kernels = self.kernel_ms() / self.per();
        let wall = self.wall_ms.map(|w| w / self.per());
        (kernels, wall, wall.map(|w| w - kernels))
    }

    /// The rows per step, with each one's share of the kernel total (0 when nothing was timed).
    pub fn csv_rows(&self) -> Vec<ProfileCsvRow> {
        self.per_step_rows(self.rows.iter().map(|r| (r.name.clone(), r.launches, r.total_ms)))
    }

    /// [`Self::csv_rows`] of the model parts ("decoder", "decoder backward", ...).
    pub fn part_csv_rows(&self) -> Vec<ProfileCsvRow> {
        self.per_step_rows(self.parts.iter().map(|r| (r.part.to_string(), r.launches, r.total_ms)))
    }

    /// (name, launches, ms) totals as rows per step, each with its share of their sum.
    fn per_step_rows(&self, totals: impl Iterator<Item = (String, u64, f64)> + Clone) -> Vec<ProfileCsvRow> {
        let total: f64 = totals.clone().map(|(_, _, ms)| ms).sum();
        totals
            .map(|(name, launches, ms)| ProfileCsvRow {
                name,
                launches_per_step: launches as f64 / self.per(),
                ms_per_step: ms / self.per(),
                share: if total > 0.0 { ms / total } else { 0.0 },
            })
            .collect()
    }

    /// The CSV form: a header, then one row per op, longest first. Numbers print exactly
    /// (shortest round-trip form), so [`parse_csv`] reads back what was written.
    pub fn to_csv(&self) -> String {
        csv_text(&self.csv_rows())
    }

    /// The table a performance engineer reads: op, launches and ms per step, share of the kernel
    /// total; then the kernel total against the wall time per step, the gap being host overhead.
    pub fn table(&self) -> String {
        let mut s = format!("per-op GPU time over {} step(s) (event to event around each launch: an upper bound)\n", self.steps);
        s += &table_lines("op", &self.csv_rows());
        let launches: f64 = self.rows.iter().map(|r| r.launches as f64).sum::<f64>() / self.per();
        let (kernels, wall, gap) = self.per_step();
        s += &format!("kernels: {launches:.0} launches, {kernels:.3} ms per step");
        if let (Some(wall), Some(gap)) = (wall, gap) {
            let pct = if wall > 0.0 { 100.0 * gap / wall } else { 0.0 };
            s += &format!("; wall {wall:.3} ms per step; host overhead (wall - kernels) {gap:.3} ms ({pct:.1}% of the step)");
        }
        s += "\n";
        if !self.parts.is_empty() {
            s += "the same launches by model part\n";
            s += &table_lines("model part", &self.part_csv_rows());
        }
        s
    }

    /// The model parts in [`Self::to_csv`]'s form (the part in the name column), for
    /// `profile-parts.csv`; [`parse_csv`] reads it.
    pub fn parts_to_csv(&self) -> String {
        csv_text(&self.part_csv_rows())
    }
}

/// A table's header (`first` over the names) and one line per row.
fn table_lines(first: &str, rows: &[ProfileCsvRow]) -> String {
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(first.len());
    let mut s = format!("{first:<width$}  {:>10}  {:>10}  {:>6}\n", "launches", "ms/step", "share");
    for r in rows {
        s += &format!("{:<width$}  {:>10.1}  {:>10.3}  {:>5.1}%\n", r.name, r.launches_per_step, r.ms_per_step, 100.0 * r.share);
    }
    s
}

/// The header, then one line per row.
fn csv_text(rows: &[ProfileCsvRow]) -> String {
    let mut s = format!("{CSV_HEADER}\n");
    for r in rows {
        s += &format!("{},{},{},{}\n", csv_field(&r.name), r.launches_per_step, r.ms_per_step, r.share);
    }
    s
}

/// A CSV field: quoted (quotes doubled) when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// Reads [`Profile::to_csv`]'s form back; `what` names the source in errors.
pub fn parse_csv(text: &str, what: &str) -> Result<Vec<ProfileCsvRow>> {
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some(CSV_HEADER) {
        return Err(Error::invalid("profile csv", format!("{what}: the first line is not `{CSV_HEADER}`")));
    }
    lines
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| parse_csv_line(line).ok_or_else(|| Error::invalid("profile csv", format!("{what}: line {}: cannot read `{line}`", i + 2))))
        .collect()
}

fn parse_csv_line(line: &str) -> Option<ProfileCsvRow> {
    // The name may be quoted; the three numbers after it never are.
    let (name, rest) = match line.strip_prefix('"') {
        Some(q) => {
            let mut name = String::new();
            let mut chars = q.char_indices().peekable();
            loop {
                let (i, c) = chars.next()?;
                match (c, chars.peek()) {
                    ('"', Some((_, '"'))) => {
                        name.push('"');
                        chars.next();
                    }
                    ('"', _) => break (name, q[i + 1..].strip_prefix(',')?),
                    _ => name.push(c),
                }
            }
        }
        None => {
            let (n, r) = line.split_once(',')?;
            (n.to_string(), r)
        }
    };
    let nums: Vec<f64> = rest.split(',').map(|v| v.trim().parse().ok()).collect::<Option<_>>()?;
    let [launches_per_step, ms_per_step, share] = nums[..] else { return None };
    Some(ProfileCsvRow { name, launches_per_step, ms_per_step, share })
}

/// Profiles whole steps on a device: each step runs between [`begin`](Self::begin) and
/// [`end`](Self::end), with per-op timing on only inside (what runs between steps, such as
/// validation, is not counted) and its wall time measured from an idle stream to an idle stream.
/// The synchronisation at both ends keeps steps from overlapping, so the wall time is the step's.
pub struct StepProfiler {
    dev: Arc<CudaDevice>,
    steps: usize,
    wall_ms: f64,
    began: Option<Instant>,
}

impl StepProfiler {
    /// Starts with empty totals (launches timed earlier on the device are dropped).
    pub fn new(dev: Arc<CudaDevice>) -> Result<StepProfiler> {
        dev.collect_profile(0)?;
        Ok(StepProfiler { dev, steps: 0, wall_ms: 0.0, began: None })
    }

    pub fn begin(&mut self) -> Result<()> {
        self.dev.synchronize()?;
        self.dev.set_profiling(true);
        self.began = Some(Instant::now());
        Ok(())
    }

    /// Ends the step `begin` started (a step that failed between them is simply not counted).
    pub fn end(&mut self) -> Result<()> {
        let Some(began) = self.began.take() else {
            return Err(Error::invalid("profile", "StepProfiler::end without begin"));
        };
        self.dev.set_profiling(false);
        self.dev.synchronize()?;
        // The wall time stops before the events are read back (reading them is not the step's).
        self.wall_ms += began.elapsed().as_secs_f64() * 1e3;
        self.dev.flush_profile()?;
        self.steps += 1;
        Ok(())
    }

    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The profile of the steps so far, with their wall time; the totals start again.
    pub fn finish(self) -> Result<Profile> {
        self.dev.set_profiling(false);
        let mut p = self.dev.collect_profile(self.steps)?;
        p.wall_ms = Some(self.wall_ms);
        Ok(p)
    }
}

impl Drop for StepProfiler {
    /// A step that failed between `begin` and `end` must not leave the device timing (and
    /// queueing events) for the rest of the process.
    fn drop(&mut self) {
        self.dev.set_profiling(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const NAMES: [&str; 6] = ["conv2d_fwd_f32", "cublas sgemm", "binary_nd_fwd_f32", "sgd_fwd_f32", "odd, \"quoted\" name", "bn_bwd_f32"];

    /// Random launches of a random subset of NAMES, as (name, ms) records.
    fn records(rng: &mut ChaCha8Rng) -> Vec<(&'static str, f64)> {
        let n = rng.random_range(1..200);
        (0..n).map(|_| (NAMES[rng.random_range(0..NAMES.len())], rng.random_range(0.001..5.0))).collect()
    }

    #[test]
    fn records_sum_per_name_sorted_longest_first_and_divided_per_step() {
        for seed in 0..50 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let recs = records(&mut rng);
            let steps = rng.random_range(1..12);
            let p = Profile::from_records(recs.iter().copied(), steps);
            assert_eq!(p.steps, steps);
            assert!(p.rows.windows(2).all(|w| w[0].total_ms >= w[1].total_ms), "seed {seed}: not sorted: {:?}", p.rows);
            let names: std::collections::HashSet<&str> = recs.iter().map(|r| r.0).collect();
            assert_eq!(p.rows.len(), names.len());
            for row in &p.rows {
                let mine: Vec<f64> = recs.iter().filter(|r| r.0 == row.name).map(|r| r.1).collect();
                assert_eq!(row.launches, mine.len() as u64);
                assert!((row.total_ms - mine.iter().sum::<f64>()).abs() < 1e-9);
            }
            let total: f64 = recs.iter().map(|r| r.1).sum();
            assert!((p.kernel_ms() - total).abs() < 1e-9);
            let csv = p.csv_rows();
            assert!((csv.iter().map(|r| r.share).sum::<f64>() - 1.0).abs() < 1e-12, "seed {seed}: shares do not sum to 1");
            for (c, r) in csv.iter().zip(&p.rows) {
                assert!((c.ms_per_step * steps as f64 - r.total_ms).abs() < 1e-9);
                assert!((c.launches_per_step * steps as f64 - r.launches as f64).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn the_csv_reads_back_what_was_written() {
        for seed in 0..30 {
            let mut rng = ChaCha8Rng::seed_from_u64(100 + seed);
            let p = Profile::from_records(records(&mut rng), rng.random_range(1..9));
            assert_eq!(parse_csv(&p.to_csv(), "test").unwrap(), p.csv_rows(), "seed {seed}");
        }
        assert!(parse_csv("name,ms\nx,1\n", "bad header").unwrap_err().to_string().contains("first line"));
        let e = parse_csv(&format!("{CSV_HEADER}\nx,1,2\n"), "short").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(parse_csv(&format!("{CSV_HEADER}\n\"open,1,2,3\n"), "unclosed quote").is_err());
    }

    #[test]
    fn the_table_lists_every_op_and_the_host_overhead() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let recs = records(&mut rng);
        let mut p = Profile::from_records(recs.iter().copied(), 4);
        let kernels = p.kernel_ms() / 4.0;
        let wall_per_step = kernels + rng.random_range(0.5..20.0);
        p.wall_ms = Some(4.0 * wall_per_step);
        let (k, w, gap) = p.per_step();
        assert!((k - kernels).abs() < 1e-9 && (w.unwrap() - wall_per_step).abs() < 1e-9);
        assert!((gap.unwrap() - (wall_per_step - kernels)).abs() < 1e-9);
        let t = p.table();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), p.rows.len() + 3, "{t}");
        for (line, row) in lines[2..].iter().zip(&p.rows) {
            assert!(line.starts_with(row.name.as_str()), "{line} vs {}", row.name);
            assert!(line.contains(&format!("{:.3}", row.total_ms / 4.0)), "{line}");
        }
        let last = lines.last().unwrap();
        assert!(last.contains(&format!("{kernels:.3} ms per step")), "{last}");
        assert!(last.contains(&format!("wall {wall_per_step:.3}")) && last.contains(&format!("host overhead (wall - kernels) {:.3}", gap.unwrap())), "{last}");
        // Untimed steps: no wall, no overhead claimed.
        p.wall_ms = None;
        assert!(!p.table().contains("host overhead"));
    }

    #[test]
    fn an_empty_profile_has_no_shares_and_no_rows() {
        let p = Profile::from_records(std::iter::empty(), 0);
        assert!(p.rows.is_empty() && p.csv_rows().is_empty());
        assert_eq!(p.to_csv(), format!("{CSV_HEADER}\n"));
        assert_eq!(parse_csv(&p.to_csv(), "empty").unwrap(), vec![]);
        let zero = Profile::from_records([("a", 0.0), ("b", 0.0)], 2);
        assert!(zero.csv_rows().iter().all(|r| r.share == 0.0));
    }
}
