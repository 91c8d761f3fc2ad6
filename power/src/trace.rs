//! Replaying a recorded (or written-by-hand) power trace from a CSV file.
//!
//! # Format
//!
//! ```text
//! # lines starting with '#' are comments; blank lines are skipped
//! t_s,watts,battery_pct,status,energy_wh
//! 0,   8.0, 100, discharging, 50.0
//! 10,  9.5,  99, discharging,
//! 20, 12.0,  97, charging,
//! ```
//!
//! - The first non-comment line is the header. `t_s` (seconds from the start of the
//!   trace, non-decreasing) is required; the other columns are optional, in any
//!   order, but at least one of `watts` and `battery_pct` must be there:
//!   - `watts`: power drawn, W (finite, >= 0);
//!   - `battery_pct`: battery charge, 0..=100 %;
//!   - `status`: `charging`, `discharging`, `full`, `not_charging` or `unknown`
//!     (the kernel's spellings, `Not charging`, work too); default `discharging`
//!     when `battery_pct` is given, since a trace with a battery is usually a drain;
//!   - `energy_wh`: energy left, Wh (>= 0).
//!
//!   An unknown column name is an error (a misspelt `wats` must not silently read
//!   as "no power figure").
//! - An empty cell means "not known at this row": that field of the sample is `None`
//!   (with [`Interpolation::Linear`], the row is skipped for that column).
//! - At most [`MAX_TRACE_BYTES`] bytes and [`MAX_TRACE_ROWS`] rows.
//!
//! # Time
//!
//! [`TraceSource::sample_at`] reads the trace at a given trace time: the deterministic
//! core, for tests. [`PowerSource::sample`] reads it at the time of its
//! [`TraceClock`]: the wall clock (optionally accelerated, so a 10-minute battery
//! drain replays in a few seconds), or a [`ManualClock`] a test advances by hand.
//! Past the last row the trace holds its last values, loops, or ends
//! ([`EndBehavior`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{BatteryState, BatteryStatus, PowerError, PowerSample, PowerSource};

/// Largest trace file read: 16 MiB (over a million rows of this format).
pub const MAX_TRACE_BYTES: u64 = 16 << 20;
/// Most rows in a trace.
pub const MAX_TRACE_ROWS: usize = 1_000_000;
/// Longest trace time accepted: about 11.5 days, far beyond any test or benchmark,
/// and small enough that durations never overflow.
const MAX_T_S: f64 = 1.0e6;

/// How values between two rows are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Interpolation {
    /// A row's values hold until the next row (default: what a sampled meter reports).
    #[default]
    Step,
    /// Watts, charge and energy change linearly between rows; the status steps.
    Linear,
}

/// What happens past the last row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EndBehavior {
    /// The last row's values hold forever (default).
    #[default]
    Hold,
    /// The trace starts again from its first row (its length is the last `t_s`).
    Loop,
    /// Sampling past the end is [`PowerError::TraceEnded`].
    Stop,
}

/// A clock a test advances by hand. Clones share the time.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current time.
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Acquire))
    }

    /// Moves the clock to `t` (it may go backwards: a test may rewind a trace).
    pub fn set(&self, t: Duration) {
        self.0.store(saturating_nanos(t), Ordering::Release);
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let d = saturating_nanos(d);
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_add(d))
            });
    }
}

fn saturating_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Where a [`TraceSource`] gets its trace time.
#[derive(Clone, Debug)]
pub enum TraceClock {
    /// Wall-clock time since the source was opened, times `speed` (1.0: real time;
    /// 60.0: a minute of trace per second).
    Wall {
        /// When trace time was zero.
        start: Instant,
        /// Trace seconds per wall second (> 0).
        speed: f64,
    },
    /// A clock the caller advances.
    Manual(ManualClock),
}

impl TraceClock {
    /// Real time from now.
    pub fn real_time() -> Self {
        Self::accelerated(1.0)
    }

    /// Wall time from now, `speed` times faster. A speed that is not a positive,
    /// finite number is taken as 1.
    pub fn accelerated(speed: f64) -> Self {
        let speed = if speed.is_finite() && speed > 0.0 {
            speed
        } else {
            1.0
        };
        Self::Wall {
            start: Instant::now(),
            speed,
        }
    }

    /// The current trace time.
    pub fn now(&self) -> Duration {
        match self {
            Self::Wall { start, speed } => {
                Duration::try_from_secs_f64(start.elapsed().as_secs_f64() * speed)
                    .unwrap_or(Duration::MAX)
            }
            Self::Manual(c) => c.now(),
        }
    }
}

/// One row of a trace.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TraceRow {
    /// Trace time.
    pub t: Duration,
    /// Watts, if the row has them.
    pub watts: Option<f64>,
    /// Battery charge, percent.
    pub battery_pct: Option<f64>,
    /// Battery status.
    pub status: Option<BatteryStatus>,
    /// Energy left, Wh.
    pub energy_wh: Option<f64>,
}

/// A parsed trace, independent of any clock.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    rows: Vec<TraceRow>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Column {
    T,
    Watts,
    BatteryPct,
    Status,
    EnergyWh,
}

const COLUMNS: &str = "t_s, watts, battery_pct, status, energy_wh";

impl Trace {
    /// Reads a trace file (capped at [`MAX_TRACE_BYTES`]).
    pub fn load(path: &Path) -> Result<Self, PowerError> {
        let read = |source| PowerError::Read {
            path: path.to_owned(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read)?.len();
        if len > MAX_TRACE_BYTES {
            return Err(PowerError::Parse {
                path: path.to_owned(),
                message: format!(
                    "{len} bytes is more than the {MAX_TRACE_BYTES} a trace may have: resample it coarser"
                ),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Self::parse(&text).map_err(|message| PowerError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses trace text; the error says which line is wrong and why.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() as u64 > MAX_TRACE_BYTES {
            return Err(format!("more than {MAX_TRACE_BYTES} bytes"));
        }
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        let (hline, header) = lines
            .next()
            .ok_or("empty trace: the first line must be a header such as t_s,watts")?;
        let mut columns = Vec::new();
        for name in header.split(',').map(str::trim) {
            let col = match name {
                "t_s" => Column::T,
                "watts" => Column::Watts,
                "battery_pct" => Column::BatteryPct,
                "status" => Column::Status,
                "energy_wh" => Column::EnergyWh,
                other => {
                    return Err(format!(
                        "line {hline}: unknown column {:?} (columns: {COLUMNS})",
                        crate::sysfs::clip(other)
                    ))
                }
            };
            if columns.contains(&col) {
                return Err(format!("line {hline}: column {name} appears twice"));
            }
            columns.push(col);
        }
        if !columns.contains(&Column::T) {
            return Err(format!("line {hline}: the header has no t_s column"));
        }
        if !columns.contains(&Column::Watts) && !columns.contains(&Column::BatteryPct) {
            return Err(format!(
                "line {hline}: the header needs a watts or a battery_pct column"
            ));
        }
        let has_pct = columns.contains(&Column::BatteryPct);
        let mut rows: Vec<TraceRow> = Vec::new();
        for (n, line) in lines {
            if rows.len() >= MAX_TRACE_ROWS {
                return Err(format!("more than {MAX_TRACE_ROWS} rows"));
            }
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            if cells.len() != columns.len() {
                return Err(format!(
                    "line {n}: {} cells, the header has {}",
                    cells.len(),
                    columns.len()
                ));
            }
            let mut row = TraceRow {
                t: Duration::ZERO,
                watts: None,
                battery_pct: None,
                status: None,
                energy_wh: None,
            };
            let mut t = None;
            for (col, cell) in columns.iter().zip(&cells) {
                if cell.is_empty() {
                    continue;
                }
                let num = |lo: f64, hi: f64, what: &str| -> Result<f64, String> {
                    let v: f64 = cell.parse().map_err(|_| {
                        format!(
                            "line {n}: {what} {:?} is not a number",
                            crate::sysfs::clip(cell)
                        )
                    })?;
                    if !v.is_finite() || v < lo || v > hi {
                        return Err(format!("line {n}: {what} {v} is outside {lo}..={hi}"));
                    }
                    Ok(v)
                };
                match col {
                    Column::T => t = Some(num(0.0, MAX_T_S, "t_s")?),
                    Column::Watts => row.watts = Some(num(0.0, f64::MAX, "watts")?),
                    Column::BatteryPct => row.battery_pct = Some(num(0.0, 100.0, "battery_pct")?),
                    Column::EnergyWh => row.energy_wh = Some(num(0.0, f64::MAX, "energy_wh")?),
                    Column::Status => {
                        row.status = Some(BatteryStatus::parse(cell).ok_or_else(|| {
                            format!(
                                "line {n}: status {:?} is not charging, discharging, full, not_charging or unknown",
                                crate::sysfs::clip(cell)
                            )
                        })?)
                    }
                }
            }
            let t = t.ok_or_else(|| format!("line {n}: t_s is empty"))?;
            row.t = Duration::from_secs_f64(t);
            if let Some(prev) = rows.last() {
                if row.t < prev.t {
                    return Err(format!(
                        "line {n}: t_s {t} goes back in time (previous row {})",
                        prev.t.as_secs_f64()
                    ));
                }
            }
            if has_pct && row.battery_pct.is_some() && row.status.is_none() {
                row.status = Some(BatteryStatus::Discharging);
            }
            rows.push(row);
        }
        if rows.is_empty() {
            return Err("the trace has a header but no rows".into());
        }
        Ok(Self { rows })
    }

    /// The rows, in time order.
    pub fn rows(&self) -> &[TraceRow] {
        &self.rows
    }

    /// The last row's time: how long the trace lasts.
    pub fn duration(&self) -> Duration {
        self.rows.last().map(|r| r.t).unwrap_or_default()
    }

    /// The values at trace time `t` (before the first row: the first row's values;
    /// after the last: the last row's).
    pub fn at(&self, t: Duration, interp: Interpolation) -> TraceRow {
        // Index of the last row at or before t.
        let i = self.rows.partition_point(|r| r.t <= t);
        let first = self.rows.first().copied().unwrap_or(TraceRow {
            t: Duration::ZERO,
            watts: None,
            battery_pct: None,
            status: None,
            energy_wh: None,
        });
        let Some(prev) = i.checked_sub(1).and_then(|j| self.rows.get(j)).copied() else {
            return TraceRow { t, ..first };
        };
        let row = TraceRow { t, ..prev };
        let Some(next) = self.rows.get(i).copied() else {
            return row;
        };
        match interp {
            Interpolation::Step => row,
            Interpolation::Linear => {
                let span = (next.t - prev.t).as_secs_f64();
                let f = if span > 0.0 {
                    ((t - prev.t).as_secs_f64() / span).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let lerp = |a: Option<f64>, b: Option<f64>| match (a, b) {
                    (Some(a), Some(b)) => Some(a + (b - a) * f),
                    (a, _) => a,
                };
                TraceRow {
                    t,
                    watts: lerp(prev.watts, next.watts),
                    battery_pct: lerp(prev.battery_pct, next.battery_pct),
                    status: prev.status,
                    energy_wh: lerp(prev.energy_wh, next.energy_wh),
                }
            }
        }
    }
}

/// A [`PowerSource`] replaying a [`Trace`] against a [`TraceClock`].
#[derive(Clone, Debug)]
pub struct TraceSource {
    trace: Trace,
    path: PathBuf,
    clock: TraceClock,
    interp: Interpolation,
    end: EndBehavior,
}

impl TraceSource {
    /// Loads `path`, replayed in real time from now, step interpolation, holding the
    /// last values at the end.
    pub fn open(path: &Path) -> Result<Self, PowerError> {
        Ok(Self::new(Trace::load(path)?, path))
    }

    /// Replays an already parsed trace; `path` names it in messages.
    pub fn new(trace: Trace, path: impl Into<PathBuf>) -> Self {
        Self {
            trace,
            path: path.into(),
            clock: TraceClock::real_time(),
            interp: Interpolation::Step,
            end: EndBehavior::Hold,
        }
    }

    /// Uses `clock` for [`PowerSource::sample`].
    pub fn with_clock(mut self, clock: TraceClock) -> Self {
        self.clock = clock;
        self
    }

    /// Reads between rows with `interp`.
    pub fn with_interpolation(mut self, interp: Interpolation) -> Self {
        self.interp = interp;
        self
    }

    /// What happens past the last row.
    pub fn with_end(mut self, end: EndBehavior) -> Self {
        self.end = end;
        self
    }

    /// The trace.
    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// The sample at trace time `t`, whatever the clock says: the deterministic core
    /// of [`PowerSource::sample`].
    pub fn sample_at(&self, t: Duration) -> Result<PowerSample, PowerError> {
        let end = self.trace.duration();
        let read_t = match self.end {
            EndBehavior::Hold => t,
            EndBehavior::Stop if t > end => {
                return Err(PowerError::TraceEnded {
                    path: self.path.clone(),
                    end,
                })
            }
            EndBehavior::Stop => t,
            EndBehavior::Loop if end.is_zero() => t,
            EndBehavior::Loop => {
                let n = t.as_nanos() % end.as_nanos();
                Duration::from_nanos(u64::try_from(n).unwrap_or(0))
            }
        };
        let row = self.trace.at(read_t, self.interp);
        Ok(PowerSample {
            watts: row.watts,
            battery: row.battery_pct.map(|pct| BatteryState {
                capacity_pct: pct,
                status: row.status.unwrap_or(BatteryStatus::Unknown),
                energy_wh: row.energy_wh,
            }),
            at: t,
        })
    }
}

impl PowerSource for TraceSource {
    fn sample(&mut self) -> Result<PowerSample, PowerError> {
        self.sample_at(self.clock.now())
    }

    fn describe(&self) -> String {
        let speed = match &self.clock {
            TraceClock::Wall { speed, .. } if *speed != 1.0 => format!(", {speed}x"),
            TraceClock::Wall { .. } => String::new(),
            TraceClock::Manual(_) => ", manual clock".into(),
        };
        format!(
            "trace {} ({} rows, {:.1} s{speed})",
            self.path.display(),
            self.trace.rows.len(),
            self.trace.duration().as_secs_f64()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRAIN: &str = "# a battery drain\n\
        t_s,watts,battery_pct,status,energy_wh\n\
        0, 8.0, 100, discharging, 50\n\
        10, 12.0, 90, ,\n\
        20, 4.0, 80, Not charging, 40\n";

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn step_interpolation_holds_each_row_until_the_next() {
        let t = Trace::parse(DRAIN).unwrap();
        let src = TraceSource::new(t, "drain.csv");
        let s = src.sample_at(secs(9.99)).unwrap();
        assert_eq!(s.watts, Some(8.0));
        let b = s.battery.unwrap();
        assert_eq!(
            (b.capacity_pct, b.status, b.energy_wh),
            (100.0, BatteryStatus::Discharging, Some(50.0))
        );
        let s = src.sample_at(secs(10.0)).unwrap();
        assert_eq!(s.watts, Some(12.0));
        // A row with a percentage and no status is a drain; an empty energy cell is
        // "not known".
        let b = s.battery.unwrap();
        assert_eq!((b.status, b.energy_wh), (BatteryStatus::Discharging, None));
        assert_eq!(s.at, secs(10.0));
    }

    #[test]
    fn linear_interpolation_blends_neighbouring_rows() {
        let t = Trace::parse(DRAIN).unwrap();
        let src = TraceSource::new(t, "drain.csv").with_interpolation(Interpolation::Linear);
        let s = src.sample_at(secs(15.0)).unwrap();
        assert!((s.watts.unwrap() - 8.0).abs() < 1e-9);
        assert!((s.battery.unwrap().capacity_pct - 85.0).abs() < 1e-9);
        // Energy is unknown at 10 s, so between 10 and 20 it is that row's (None).
        assert_eq!(s.battery.unwrap().energy_wh, None);
    }

    #[test]
    fn end_behaviours_hold_loop_and_stop() {
        let t = Trace::parse(DRAIN).unwrap();
        let hold = TraceSource::new(t.clone(), "d.csv");
        assert_eq!(hold.sample_at(secs(100.0)).unwrap().watts, Some(4.0));
        let looped = TraceSource::new(t.clone(), "d.csv").with_end(EndBehavior::Loop);
        // 25 s is 5 s into the second pass.
        let s = looped.sample_at(secs(25.0)).unwrap();
        assert_eq!((s.watts, s.at), (Some(8.0), secs(25.0)));
        let stop = TraceSource::new(t, "d.csv").with_end(EndBehavior::Stop);
        assert_eq!(stop.sample_at(secs(20.0)).unwrap().watts, Some(4.0));
        let err = stop.sample_at(secs(20.5)).unwrap_err();
        assert!(matches!(err, PowerError::TraceEnded { .. }), "{err}");
    }

    #[test]
    fn manual_clock_drives_sample() {
        let clock = ManualClock::new();
        let mut src = TraceSource::new(Trace::parse(DRAIN).unwrap(), "d.csv")
            .with_clock(TraceClock::Manual(clock.clone()));
        assert_eq!(src.sample().unwrap().watts, Some(8.0));
        clock.advance(secs(10.0));
        assert_eq!(src.sample().unwrap().watts, Some(12.0));
        clock.set(secs(20.0));
        let s = src.sample().unwrap();
        assert_eq!((s.watts, s.at), (Some(4.0), secs(20.0)));
        assert!(src.describe().contains("manual clock"));
    }

    #[test]
    fn accelerated_clock_runs_faster_than_the_wall() {
        let c = TraceClock::accelerated(1000.0);
        std::thread::sleep(Duration::from_millis(5));
        assert!(c.now() >= Duration::from_secs(5), "{:?}", c.now());
        // Nonsense speeds fall back to real time rather than freezing the trace.
        assert!(
            matches!(TraceClock::accelerated(-3.0), TraceClock::Wall { speed, .. } if speed == 1.0)
        );
    }

    #[test]
    fn watts_only_trace_has_no_battery() {
        let t = Trace::parse("t_s,watts\n0,100\n1,250\n").unwrap();
        let s = TraceSource::new(t, "edge.csv")
            .sample_at(secs(1.5))
            .unwrap();
        assert_eq!((s.watts, s.battery), (Some(250.0), None));
    }

    #[test]
    fn malformed_traces_are_explained_with_their_line() {
        let cases = [
            ("", "empty trace"),
            ("watts\n1\n", "no t_s"),
            ("t_s,status\n0,full\n", "watts or a battery_pct"),
            ("t_s,wats\n0,1\n", "unknown column \"wats\""),
            ("t_s,watts,watts\n0,1,1\n", "appears twice"),
            ("t_s,watts\n", "no rows"),
            ("t_s,watts\n0,1\n1\n", "line 3: 1 cells"),
            (
                "t_s,watts\n0,abc\n",
                "line 2: watts \"abc\" is not a number",
            ),
            ("t_s,watts\n0,-5\n", "outside"),
            ("t_s,watts\n0,inf\n", "outside"),
            ("t_s,watts\n5,1\n4,1\n", "line 3: t_s 4 goes back in time"),
            ("t_s,watts\n,1\n", "t_s is empty"),
            ("t_s,battery_pct\n0,101\n", "outside"),
            ("t_s,battery_pct,status\n0,50,dying\n", "status \"dying\""),
            ("t_s,watts\n1e300,1\n", "outside"),
        ];
        for (text, want) in cases {
            let err = Trace::parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn load_reads_a_file_and_names_it_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("edge.csv");
        std::fs::write(&p, "t_s,watts\n0,1\n").unwrap();
        let src = TraceSource::open(&p).unwrap();
        assert!(src.describe().contains("edge.csv"));
        std::fs::write(&p, "t_s,watts\n0,x\n").unwrap();
        let err = TraceSource::open(&p).unwrap_err().to_string();
        assert!(err.contains("edge.csv") && err.contains("line 2"), "{err}");
        let err = TraceSource::open(&dir.path().join("none.csv")).unwrap_err();
        assert!(matches!(err, PowerError::Read { .. }));
    }
}
