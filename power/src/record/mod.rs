//! Run records, MELT style: stage markers (preprocess, head, encode, send, tail,
//! decode; prefill and decode for language models) joined with a power trace, memory,
//! temperatures and CPU frequency sampled over time, in one JSON-lines file.
//!
//! ```text
//! {"header":{"format":"splitstream-run/1","command":["splitstream-device",...],"host":"pi4",...}}
//! {"sample":{"t_s":0.1,"watts":4.2,"rss_kib":81234,"hwm_kib":81234,"temps_c":[52.1],"freq_mhz":1500.0,...}}
//! {"stage":{"name":"head","t_s":0.132,"ms":31.4,"frame":0}}
//! ...
//! {"end":{"t_s":12.0,"frames":300,"tokens":0,"energy_j":51.3,...}}
//! ```
//!
//! A [`Recorder`] writes it: a background thread samples the power source and the
//! sensors every interval; the runtime calls [`Recorder::stage`] with timings it already
//! measures. Every time is seconds since the recorder started, on the monotonic clock
//! (a power source's own clock is not used). Sensors that do not exist (no RAPL in a
//! VM, no thermal zones) are listed in the header's `absent` and never fail the run;
//! without a power meter the trace comes from a CPU-time power model, and the header
//! says so (`power.measured: false`). The file is capped ([`RecordOptions::max_bytes`]):
//! past the cap stage and sample lines are counted but not written, and the end line
//! says `capped`.
//!
//! Energy is the trapezoid integral of the samples' watts over time; per frame and per
//! token it is that divided by the frames and tokens the run reported, so idle time
//! between frames is part of each frame's cost (as on a battery). [`read()`] parses a
//! record back and [`Summary`] computes what `splitstream report` prints. See
//! `docs/runrecord.md`.
//!
//! One process-wide recorder may be installed ([`install`]) for code that runs deep in
//! a runtime (the edge's batch worker marks `decode` and `tail` through [`global`]).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::{PowerSource, SourceSpec};

mod probe;
mod read;

pub use read::{read, read_str, ReadError, Run, StageSummary, Summary};

/// The prefix of a stage name that marks a part of the run rather than work.
pub const PHASE: &str = "phase:";

/// The format name and version in every header.
pub const FORMAT: &str = "splitstream-run/1";

/// One line of a record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Line {
    /// The first line: what ran, where, and what was measured.
    Header(Header),
    /// A span of work.
    Stage(Stage),
    /// One reading of the sensors.
    Sample(Sample),
    /// The last line, written when the run ends.
    End(End),
}

/// What ran, where, and with which sensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// [`FORMAT`].
    pub format: String,
    /// The command line.
    pub command: Vec<String>,
    /// The host name (`/proc/sys/kernel/hostname`; empty when unknown).
    pub host: String,
    /// When the record started, seconds since the Unix epoch.
    pub started_unix_s: f64,
    /// Where the watts come from.
    pub power: PowerInfo,
    /// The temperature sensors, in the order each sample's `temps_c` lists them.
    pub temperatures: Vec<String>,
    /// How many CPUs report their frequency (0: no cpufreq).
    pub cpus_with_freq: usize,
    /// What was looked for and not found, in words.
    pub absent: Vec<String>,
    /// The sampling interval, ms.
    pub interval_ms: f64,
}

/// Where the watts come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PowerInfo {
    /// The kind: `rapl`, `battery`, `ina3221`, `nvml`, `trace`, `const`, or `model`.
    pub source: String,
    /// In words (`RAPL package-0 (/sys/class/powercap)`, the model's figures).
    pub describe: String,
    /// Whether a meter measured it (`false` for `model`, `const` and `trace`).
    pub measured: bool,
}

/// A span of work: `name` ran from `t_s` for `ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    /// `preprocess`, `head`, `encode`, `send`, `tail`, `decode`, `prefill`, ...; a
    /// name starting `phase:` marks a part of the run (a demo mode, a bench cell),
    /// drawn as a labelled boundary rather than shaded.
    pub name: String,
    /// Start, seconds since the record started.
    pub t_s: f64,
    /// Length, ms.
    pub ms: f64,
    /// The frame (its sequence number), when the span is one frame's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame: Option<u64>,
    /// Frames in the span, when it is a batch's (the edge's tail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<u32>,
    /// Tokens the span made or read (prefill: the prompt's; decode: one per row).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u32>,
}

impl Stage {
    /// A span of `name` from `t_s` for `ms`, with nothing else said.
    pub fn new(name: &str, t_s: f64, ms: f64) -> Self {
        Self {
            name: name.to_owned(),
            t_s,
            ms,
            frame: None,
            items: None,
            tokens: None,
        }
    }
}

/// One reading of the sensors; a sensor that did not answer is `null`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the record started.
    pub t_s: f64,
    /// Watts (`null` for a counter's first reading).
    pub watts: Option<f64>,
    /// Resident memory now, KiB (VmRSS).
    pub rss_kib: Option<u64>,
    /// Peak resident memory so far, KiB (VmHWM).
    pub hwm_kib: Option<u64>,
    /// Each temperature sensor, degrees Celsius, in the header's order.
    #[serde(default)]
    pub temps_c: Vec<Option<f64>>,
    /// Mean current frequency over the CPUs, MHz.
    pub freq_mhz: Option<f64>,
    /// The highest CPU's current frequency, MHz.
    pub freq_max_mhz: Option<f64>,
    /// CPU cores this process kept busy since the previous sample (CPU time / wall).
    pub cpu_cores: Option<f64>,
}

/// The totals, written when the run ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct End {
    /// Seconds since the record started.
    pub t_s: f64,
    /// Frames the run finished.
    pub frames: u64,
    /// Tokens the run made (language models).
    pub tokens: u64,
    /// The trapezoid integral of the samples' watts, joules (`null`: fewer than two
    /// samples had watts).
    pub energy_j: Option<f64>,
    /// Sample lines taken (written or not).
    pub samples: u64,
    /// Stage lines taken (written or not).
    pub stages: u64,
    /// Peak resident memory, KiB (VmHWM at the end).
    pub peak_hwm_kib: Option<u64>,
    /// Whether the file reached its cap and later lines were left out.
    pub capped: bool,
}

impl End {
    /// The line a command prints when its record is complete.
    pub fn describe(&self, path: &Path) -> String {
        format!(
            "run record: {} ({} frames, {} samples)",
            path.display(),
            self.frames,
            self.samples
        )
    }
}

/// A CPU-time power model for machines without a meter: `idle_w` plus `per_core_w`
/// for each core this process keeps busy. The defaults are the device policy's
/// (`wait=2.5` W idle, `compute=6` W with one core busy); a modelled trace shows when
/// the run worked, not what a meter would read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuModel {
    /// Watts with the process idle.
    pub idle_w: f64,
    /// Watts added per busy core.
    pub per_core_w: f64,
}

impl Default for CpuModel {
    fn default() -> Self {
        Self {
            idle_w: 2.5,
            per_core_w: 3.5,
        }
    }
}

/// Where the recorder takes its watts from.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum PowerChoice {
    /// The first meter that opens and reads (RAPL, INA3221, NVML, a battery reporting
    /// power), else the CPU-time model.
    #[default]
    Auto,
    /// A `--power-source` spec ([`SourceSpec`]); the model if it does not open.
    Spec(String),
    /// The CPU-time model.
    Model(CpuModel),
}

/// How to record.
#[derive(Clone, Debug)]
pub struct RecordOptions {
    /// The command line for the header.
    pub command: Vec<String>,
    /// Where watts come from.
    pub power: PowerChoice,
    /// Sampling interval (at least 10 ms).
    pub interval: Duration,
    /// Where sysfs is (`/sys`; tests give fake trees).
    pub sys_root: PathBuf,
    /// Largest file written, bytes; later stage and sample lines are left out.
    pub max_bytes: u64,
}

impl Default for RecordOptions {
    fn default() -> Self {
        Self {
            command: std::env::args().collect(),
            power: PowerChoice::Auto,
            interval: Duration::from_millis(100),
            sys_root: PathBuf::from("/sys"),
            // An hour at 30 frames/s with five stages each is about 50 MB.
            max_bytes: 256 << 20,
        }
    }
}

/// Why a record could not be written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The file could not be created or written.
    #[error("run record {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The sampler thread could not be started.
    #[error("run record: cannot start the sampler thread: {0}")]
    Thread(std::io::Error),
}

/// Writes a run record; cheap to clone (all clones write the same file).
#[derive(Clone, Debug)]
pub struct Recorder {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    start: Instant,
    out: Arc<Mutex<Writer>>,
    frames: AtomicU64,
    tokens: AtomicU64,
    sampler: Mutex<Option<(mpsc::Sender<()>, JoinHandle<SamplerTotals>)>>,
    ended: Mutex<Option<End>>,
}

#[derive(Debug)]
struct Writer {
    file: BufWriter<File>,
    bytes: u64,
    max_bytes: u64,
    capped: bool,
    stages: u64,
    samples: u64,
    error: Option<String>,
}

impl Writer {
    /// Writes one line unless the cap is reached (the end line always goes out).
    fn line(&mut self, line: &Line, always: bool) {
        // Serialising plain structs of numbers and strings cannot fail.
        let Ok(mut text) = serde_json::to_string(line) else {
            return;
        };
        text.push('\n');
        if !always && self.bytes + text.len() as u64 > self.max_bytes {
            self.capped = true;
            return;
        }
        if let Err(e) = self.file.write_all(text.as_bytes()) {
            if self.error.is_none() {
                tracing::warn!("run record: {e}; later lines are lost");
                self.error = Some(e.to_string());
            }
            return;
        }
        self.bytes += text.len() as u64;
    }
}

#[derive(Debug, Default)]
struct SamplerTotals {
    energy_j: Option<f64>,
    hwm_kib: Option<u64>,
}

impl Recorder {
    /// Creates `path`, writes the header and starts sampling. Only a file that cannot
    /// be written is an error; missing sensors are listed in the header.
    pub fn create(path: &Path, opts: RecordOptions) -> Result<Self, RecordError> {
        let io = |source| RecordError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::create(path).map_err(io)?;
        let (probes, mut absent) = probe::Probes::discover(&opts.sys_root, Path::new("/proc/self"));
        let (source, power, model) = open_power(&opts.power, &mut absent);
        let interval = opts.interval.max(Duration::from_millis(10));
        let header = Header {
            format: FORMAT.to_owned(),
            command: opts.command.clone(),
            host: hostname(),
            started_unix_s: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            power,
            temperatures: probes.temp_names(),
            cpus_with_freq: probes.cpus_with_freq(),
            absent,
            interval_ms: interval.as_secs_f64() * 1e3,
        };
        let mut writer = Writer {
            file: BufWriter::new(file),
            bytes: 0,
            max_bytes: opts.max_bytes,
            capped: false,
            stages: 0,
            samples: 0,
            error: None,
        };
        writer.line(&Line::Header(header), true);
        writer.file.flush().map_err(io)?;
        let out = Arc::new(Mutex::new(writer));
        let start = Instant::now();
        let (stop, stopped) = mpsc::channel();
        let thread_out = out.clone();
        let handle = std::thread::Builder::new()
            .name("run-record".into())
            .spawn(move || {
                let sampler = Sampler::new(source, model, probes, start);
                sampler.run(interval, stopped, &thread_out)
            })
            .map_err(RecordError::Thread)?;
        tracing::info!("run record: writing {}", path.display());
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                start,
                out,
                frames: AtomicU64::new(0),
                tokens: AtomicU64::new(0),
                sampler: Mutex::new(Some((stop, handle))),
                ended: Mutex::new(None),
            }),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Seconds since the record started at `at` (0 for instants before it).
    pub fn seconds(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.inner.start).as_secs_f64()
    }

    /// Records a span of `name` that started at `start` and lasted `len`, for `frame`.
    pub fn stage(&self, name: &str, start: Instant, len: Duration, frame: Option<u64>) {
        let mut s = Stage::new(name, self.seconds(start), len.as_secs_f64() * 1e3);
        s.frame = frame;
        self.stage_line(s);
    }

    /// Records a span given in full (batch sizes, token counts).
    pub fn stage_line(&self, stage: Stage) {
        let mut w = lock(&self.inner.out);
        w.stages += 1;
        w.line(&Line::Stage(stage), false);
    }

    /// Counts `n` finished frames.
    pub fn frames(&self, n: u64) {
        self.inner.frames.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` generated tokens.
    pub fn tokens(&self, n: u64) {
        self.inner.tokens.fetch_add(n, Ordering::Relaxed);
    }

    /// Stops sampling (one last sample is taken) and writes the end line. Later calls
    /// return the same totals.
    pub fn finish(&self) -> Result<End, RecordError> {
        let mut ended = lock(&self.inner.ended);
        if let Some(end) = ended.as_ref() {
            return Ok(end.clone());
        }
        let totals = match lock(&self.inner.sampler).take() {
            Some((stop, handle)) => {
                let _ = stop.send(());
                handle.join().unwrap_or_default()
            }
            None => SamplerTotals::default(),
        };
        let mut w = lock(&self.inner.out);
        let end = End {
            t_s: self.inner.start.elapsed().as_secs_f64(),
            frames: self.inner.frames.load(Ordering::Relaxed),
            tokens: self.inner.tokens.load(Ordering::Relaxed),
            energy_j: totals.energy_j,
            samples: w.samples,
            stages: w.stages,
            peak_hwm_kib: totals.hwm_kib,
            capped: w.capped,
        };
        w.line(&Line::End(end.clone()), true);
        let flushed = w.file.flush();
        let path = self.inner.path.clone();
        let result = match (flushed, w.error.take()) {
            (Err(e), _) => Err(RecordError::Io { path, source: e }),
            (Ok(()), Some(e)) => Err(RecordError::Io {
                path,
                source: std::io::Error::other(e),
            }),
            (Ok(()), None) => Ok(end.clone()),
        };
        *ended = Some(end);
        result
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A recorder dropped without `finish` (an error path) still stops its thread
        // and leaves a readable file, without an end line.
        if let Some((stop, handle)) = lock(&self.sampler).take() {
            let _ = stop.send(());
            let _ = handle.join();
        }
        let _ = lock(&self.out).file.flush();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The power source for a choice (`None`: the model), what the header says of it, and
/// the model's figures.
fn open_power(
    choice: &PowerChoice,
    absent: &mut Vec<String>,
) -> (Option<Box<dyn PowerSource>>, PowerInfo, CpuModel) {
    let model = |m: CpuModel| PowerInfo {
        source: "model".into(),
        describe: format!(
            "CPU-time model: {} W idle + {} W per busy core (not measured)",
            m.idle_w, m.per_core_w
        ),
        measured: false,
    };
    let opened = |kind: &str, s: Box<dyn PowerSource>| {
        let info = PowerInfo {
            source: kind.to_owned(),
            describe: s.describe(),
            measured: !matches!(kind, "const" | "trace"),
        };
        (Some(s), info, CpuModel::default())
    };
    match choice {
        PowerChoice::Model(m) => (None, model(*m), *m),
        PowerChoice::Spec(spec) => {
            let kind = spec.split(':').next().unwrap_or("").trim().to_owned();
            match crate::open(spec) {
                Ok(s) => opened(&kind, s),
                Err(e) => {
                    absent.push(format!("power source {spec}: {e}"));
                    (None, model(CpuModel::default()), CpuModel::default())
                }
            }
        }
        PowerChoice::Auto => {
            for spec in [
                SourceSpec::Rapl,
                SourceSpec::Ina3221(None),
                SourceSpec::Nvml(0),
                SourceSpec::Battery(None),
            ] {
                let kind = match &spec {
                    SourceSpec::Rapl => "rapl",
                    SourceSpec::Ina3221(_) => "ina3221",
                    SourceSpec::Nvml(_) => "nvml",
                    _ => "battery",
                };
                match spec.open() {
                    // A battery that reports only its charge gives no watts.
                    Ok(mut s) if kind == "battery" => match s.sample() {
                        Ok(first) if first.watts.is_some() => return opened(kind, s),
                        _ => absent.push("battery: reports no power".into()),
                    },
                    Ok(s) => return opened(kind, s),
                    Err(e) => absent.push(format!("{kind}: {e}")),
                }
            }
            (None, model(CpuModel::default()), CpuModel::default())
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().chars().take(255).collect())
        .unwrap_or_default()
}

/// The sampler thread's state: the sources, the previous readings, the running totals.
struct Sampler {
    source: Option<Box<dyn PowerSource>>,
    probes: probe::Probes,
    start: Instant,
    model: CpuModel,
    last_cpu: Option<(Instant, Duration)>,
    prev_watts: Option<(f64, f64)>,
    totals: SamplerTotals,
    warned: bool,
}

impl Sampler {
    /// Reads everything once, integrates the watts and writes the sample line.
    fn take(&mut self, out: &Mutex<Writer>) {
        let now = Instant::now();
        let cpu = self.probes.cpu_time();
        let cpu_cores = match (cpu, self.last_cpu) {
            (Some(c), Some((t, c0))) if now > t => {
                Some(c.saturating_sub(c0).as_secs_f64() / (now - t).as_secs_f64())
            }
            _ => None,
        };
        self.last_cpu = cpu.map(|c| (now, c));
        let watts = match self.source.as_mut() {
            Some(s) => match s.sample() {
                Ok(sample) => sample.watts,
                Err(e) => {
                    if !self.warned {
                        tracing::warn!("run record: power reading failed: {e}");
                        self.warned = true;
                    }
                    None
                }
            },
            None => cpu_cores.map(|c| self.model.idle_w + self.model.per_core_w * c),
        }
        .filter(|w| w.is_finite() && *w >= 0.0);
        let t_s = now.saturating_duration_since(self.start).as_secs_f64();
        if let Some(w) = watts {
            if let Some((t0, w0)) = self.prev_watts {
                *self.totals.energy_j.get_or_insert(0.0) += (t_s - t0) * (w0 + w) / 2.0;
            }
            self.prev_watts = Some((t_s, w));
        }
        let (rss_kib, hwm_kib) = self.probes.memory_kib();
        self.totals.hwm_kib = hwm_kib.or(self.totals.hwm_kib);
        let (freq_mhz, freq_max_mhz) = self.probes.freq_mhz();
        let sample = Sample {
            t_s,
            watts,
            rss_kib,
            hwm_kib,
            temps_c: self.probes.temps_c(),
            freq_mhz,
            freq_max_mhz,
            cpu_cores,
        };
        let mut w = lock(out);
        w.samples += 1;
        w.line(&Line::Sample(sample), false);
        // Flushed each sample: a run that is killed leaves a readable file.
        let _ = w.file.flush();
    }
}

impl Sampler {
    fn new(
        source: Option<Box<dyn PowerSource>>,
        model: CpuModel,
        probes: probe::Probes,
        start: Instant,
    ) -> Self {
        Self {
            source,
            last_cpu: probes.cpu_time().map(|c| (start, c)),
            probes,
            start,
            model,
            prev_watts: None,
            totals: SamplerTotals::default(),
            warned: false,
        }
    }

    /// The thread's body: a sample now, then every `interval` until told to stop, then
    /// a last one so the trace covers the run's end.
    fn run(
        mut self,
        interval: Duration,
        stop: mpsc::Receiver<()>,
        out: &Mutex<Writer>,
    ) -> SamplerTotals {
        let mut next = self.start;
        loop {
            self.take(out);
            next += interval;
            let wait = next.saturating_duration_since(Instant::now());
            match stop.recv_timeout(wait) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // Told to stop, or the recorder is gone.
                _ => {
                    self.take(out);
                    return self.totals;
                }
            }
        }
    }
}

static GLOBAL: RwLock<Option<Recorder>> = RwLock::new(None);

/// Makes `recorder` the process's recorder (for [`global`]); replaces any other.
pub fn install(recorder: Recorder) {
    *GLOBAL.write().unwrap_or_else(|e| e.into_inner()) = Some(recorder);
}

/// Removes the process's recorder, returning it.
pub fn uninstall() -> Option<Recorder> {
    GLOBAL.write().unwrap_or_else(|e| e.into_inner()).take()
}

/// The process's recorder, when one is installed: code deep in a runtime marks stages
/// through it (a read lock and an `Arc` clone; nothing when none is installed).
pub fn global() -> Option<Recorder> {
    GLOBAL.read().unwrap_or_else(|e| e.into_inner()).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(power: PowerChoice, sys: &Path) -> RecordOptions {
        RecordOptions {
            command: vec!["test".into(), "--record".into()],
            power,
            interval: Duration::from_millis(10),
            sys_root: sys.to_owned(),
            max_bytes: 1 << 20,
        }
    }

    #[test]
    fn a_record_reads_back_with_its_stages_and_energy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.jsonl");
        let rec = Recorder::create(
            &path,
            opts(
                PowerChoice::Spec("const:4".into()),
                &dir.path().join("nosys"),
            ),
        )
        .unwrap();
        let t0 = Instant::now();
        for frame in 0..3 {
            std::thread::sleep(Duration::from_millis(15));
            rec.stage("head", t0, Duration::from_millis(2 + frame), Some(frame));
            rec.frames(1);
        }
        let mut s = Stage::new("decode", 0.01, 1.0);
        s.tokens = Some(2);
        rec.stage_line(s);
        rec.tokens(2);
        let end = rec.finish().unwrap();
        assert_eq!(rec.finish().unwrap(), end, "finish is idempotent");
        let run = read(&path).unwrap();
        assert_eq!(run.header.power.source, "const");
        assert!(!run.header.power.measured);
        assert!(run.header.absent.iter().any(|a| a.contains("thermal")));
        assert_eq!(run.stages.len(), 4);
        assert_eq!(run.end.as_ref(), Some(&end));
        assert_eq!((end.frames, end.tokens, end.stages), (3, 2, 4));
        assert!(run.samples.len() >= 3, "{}", run.samples.len());
        assert_eq!(end.samples, run.samples.len() as u64);
        // 4 W from the first sample to the last.
        let span = run.samples.last().unwrap().t_s - run.samples[0].t_s;
        let energy = end.energy_j.unwrap();
        assert!((energy - 4.0 * span).abs() < 1e-9, "{energy} vs {span}");
        let sum = Summary::of(&run);
        assert!((sum.energy_j.unwrap() - energy).abs() < 1e-9);
        assert!((sum.energy_per_frame_j.unwrap() - energy / 3.0).abs() < 1e-9);
        assert!((sum.mean_watts.unwrap() - 4.0).abs() < 1e-9);
        let head = &sum.stages[0];
        assert_eq!((head.name.as_str(), head.count), ("head", 3));
        assert!((head.median_ms - 3.0).abs() < 0.5, "{}", head.median_ms);
        assert_eq!(sum.stages[1].tokens_per_s, Some(2000.0));
    }

    #[test]
    fn without_a_meter_the_model_is_named_and_gives_watts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.jsonl");
        let model = CpuModel {
            idle_w: 1.0,
            per_core_w: 2.0,
        };
        let rec = Recorder::create(
            &path,
            opts(PowerChoice::Model(model), &dir.path().join("x")),
        )
        .unwrap();
        // Keep a core busy for a while so CPU time moves.
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        rec.finish().unwrap();
        let run = read(&path).unwrap();
        assert_eq!(run.header.power.source, "model");
        assert!(run.header.power.describe.contains("not measured"));
        let watts: Vec<f64> = run.samples.iter().filter_map(|s| s.watts).collect();
        assert!(watts.len() >= 2);
        assert!(
            watts.iter().all(|w| (1.0..=1.0 + 2.0 * 64.0).contains(w)),
            "{watts:?}"
        );
        assert!(
            run.samples[0].hwm_kib.is_some(),
            "Linux has /proc/self/status"
        );
    }

    #[test]
    fn a_bad_spec_falls_back_to_the_model_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.jsonl");
        let rec = Recorder::create(
            &path,
            opts(
                PowerChoice::Spec("trace:/nonexistent.csv".into()),
                dir.path(),
            ),
        )
        .unwrap();
        rec.finish().unwrap();
        let run = read(&path).unwrap();
        assert_eq!(run.header.power.source, "model");
        assert!(
            run.header
                .absent
                .iter()
                .any(|a| a.contains("/nonexistent.csv")),
            "{:?}",
            run.header.absent
        );
    }

    #[test]
    fn the_cap_leaves_lines_out_and_the_end_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.jsonl");
        let mut o = opts(PowerChoice::Spec("const:1".into()), dir.path());
        o.max_bytes = 2000;
        let rec = Recorder::create(&path, o).unwrap();
        for i in 0..200 {
            rec.stage("head", Instant::now(), Duration::from_millis(1), Some(i));
        }
        let end = rec.finish().unwrap();
        assert!(end.capped);
        assert_eq!(end.stages, 200);
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size < 2000 + 400, "{size}");
        let run = read(&path).unwrap();
        assert!(run.stages.len() < 200);
        assert!(Summary::of(&run).capped);
    }

    #[test]
    fn broken_records_are_clear_errors() {
        let path = Path::new("run.jsonl");
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.jsonl");
        let rec =
            Recorder::create(&good, opts(PowerChoice::Spec("const:1".into()), dir.path())).unwrap();
        rec.stage("head", Instant::now(), Duration::from_millis(1), Some(0));
        rec.finish().unwrap();
        let text = std::fs::read_to_string(&good).unwrap();
        let cases = [
            (String::new(), "the file is empty"),
            ("hello\n".to_owned(), "not a run record"),
            (
                text.replace("splitstream-run/1", "splitstream-run/9"),
                "this build reads",
            ),
            (text[..text.len() - 9].to_owned(), "is cut off"),
            (
                text.replacen("\"stage\"", "\"stagex\"", 1),
                "unknown variant `stagex`",
            ),
            (text.replacen("\"ms\":", "\"ms\":-", 1), "negative"),
            (format!("{text}{text}"), "after the end line"),
        ];
        for (body, want) in cases {
            let err = read_str(&body, path).unwrap_err().to_string();
            assert!(
                err.contains(want) && err.contains("run.jsonl"),
                "{want}: {err}"
            );
        }
        // A run stopped before its end line is still read.
        let cut = text
            .lines()
            .filter(|l| !l.starts_with("{\"end\""))
            .collect::<Vec<_>>();
        let run = read_str(&(cut.join("\n") + "\n"), path).unwrap();
        assert!(run.end.is_none());
        let s = Summary::of(&run);
        assert_eq!((s.frames, s.complete), (1, false));
        assert!(s.to_string().contains("no end line"));
    }
}
