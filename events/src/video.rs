//! Events from ordinary video, in the manner of v2e and ESIM: every pixel keeps a
//! reference log intensity and fires an event each time its log intensity moves a
//! contrast threshold away from it.
//!
//! - Log intensity is `ln(I)` above a small level near black and linear below it
//!   (v2e's "lin-log"), so dark noise does not explode into events.
//! - Each pixel has its own ON and OFF thresholds, drawn once from a Gaussian around
//!   the nominal value (real pixels differ).
//! - Between two frames the log intensity is interpolated linearly in time, so a
//!   pixel that crosses several thresholds fires several events spread over the
//!   interval, at the times the line crosses each level.
//! - A refractory period suppresses events closer together than it at one pixel.
//! - Leak events: the reference drifts down at `leak_rate_hz` thresholds per second
//!   (ON events in a static scene, as real DVS pixels show).
//! - Shot noise: random ON/OFF events at `shot_noise_rate_hz` per pixel.
//!
//! The core takes grayscale frames (`f32`, 0..255) with timestamps, so it is tested
//! without any video decoder; [`ffmpeg`] feeds it from a video file.

pub mod ffmpeg;

use crate::Event;

/// Simulator settings. Defaults follow v2e's "clean" preset.
#[derive(Clone, Debug)]
pub struct DvsConfig {
    /// Nominal ON threshold, in log-intensity units.
    pub pos_threshold: f32,
    /// Nominal OFF threshold, in log-intensity units.
    pub neg_threshold: f32,
    /// Standard deviation of the per-pixel thresholds.
    pub threshold_sigma: f32,
    /// Intensity (0..255 scale) below which the log curve is linear.
    pub lin_log_threshold: f32,
    /// Shortest time between two events of one pixel, microseconds.
    pub refractory_us: i64,
    /// Leak rate in thresholds per second (0 disables).
    pub leak_rate_hz: f32,
    /// Shot-noise rate per pixel, events per second (0 disables).
    pub shot_noise_rate_hz: f32,
    /// Seed for thresholds and noise (same seed, same events).
    pub seed: u64,
}

impl Default for DvsConfig {
    fn default() -> Self {
        Self {
            pos_threshold: 0.2,
            neg_threshold: 0.2,
            threshold_sigma: 0.03,
            lin_log_threshold: 20.0,
            refractory_us: 0,
            leak_rate_hz: 0.0,
            shot_noise_rate_hz: 0.0,
            seed: 0,
        }
    }
}

/// Feeding a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame has the wrong number of pixels.
    #[error("frame has {got} pixels, the simulator was made for {expected}")]
    Size {
        /// Pixels expected (width * height).
        expected: usize,
        /// Pixels given.
        got: usize,
    },
    /// The frame's time is not after the previous one's.
    #[error("frame time {t} us is not after the previous frame's {previous} us")]
    Time {
        /// This frame's time.
        t: i64,
        /// The previous frame's time.
        previous: i64,
    },
}

/// A small deterministic generator (SplitMix64): reproducible across platforms and
/// dependency upgrades, which a seed promises.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.next_f64().max(f64::MIN_POSITIVE);
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Poisson-distributed count with mean `lambda` (Knuth's method for small means,
    /// a rounded normal for large ones).
    pub fn poisson(&mut self, lambda: f64) -> u64 {
        if lambda <= 0.0 {
            return 0;
        }
        if lambda > 30.0 {
            return (lambda + lambda.sqrt() * self.normal()).round().max(0.0) as u64;
        }
        let limit = (-lambda).exp();
        let mut k = 0;
        let mut p = self.next_f64();
        while p > limit {
            k += 1;
            p *= self.next_f64();
        }
        k
    }
}

/// The DVS pixel-array simulator.
pub struct DvsSimulator {
    width: u16,
    height: u16,
    cfg: DvsConfig,
    on: Vec<f32>,
    off: Vec<f32>,
    reference: Vec<f32>,
    last_log: Vec<f32>,
    last_event: Vec<i64>,
    last_t: Option<i64>,
    rng: Rng,
    scratch: Vec<Event>,
}

impl DvsSimulator {
    /// A simulator for frames of `width` x `height`.
    pub fn new(width: u16, height: u16, cfg: DvsConfig) -> Self {
        let n = usize::from(width) * usize::from(height);
        let mut rng = Rng::new(cfg.seed);
        let mut draw = |nominal: f32| -> Vec<f32> {
            (0..n)
                .map(|_| (nominal + cfg.threshold_sigma * rng.normal() as f32).max(0.01))
                .collect()
        };
        let on = draw(cfg.pos_threshold);
        let off = draw(cfg.neg_threshold);
        Self {
            width,
            height,
            on,
            off,
            reference: vec![0.0; n],
            last_log: vec![0.0; n],
            last_event: vec![i64::MIN / 2; n],
            last_t: None,
            rng,
            cfg,
            scratch: Vec::new(),
        }
    }

    /// The lin-log curve.
    pub fn log_intensity(&self, i: f32) -> f32 {
        let thr = self.cfg.lin_log_threshold.max(1e-3);
        if i <= thr {
            i * thr.ln() / thr
        } else {
            i.ln()
        }
    }

    /// Feeds a grayscale frame (row-major, 0..255) taken at `t_us`; appends the events
    /// of the interval since the previous frame, sorted by time. The first frame sets
    /// the references and yields none.
    pub fn push_frame(
        &mut self,
        gray: &[f32],
        t_us: i64,
        out: &mut Vec<Event>,
    ) -> Result<(), FrameError> {
        let expected = usize::from(self.width) * usize::from(self.height);
        if gray.len() != expected {
            return Err(FrameError::Size {
                expected,
                got: gray.len(),
            });
        }
        let Some(t0) = self.last_t else {
            for (i, &v) in gray.iter().enumerate() {
                let l = self.log_intensity(v);
                self.reference[i] = l;
                self.last_log[i] = l;
            }
            self.last_t = Some(t_us);
            return Ok(());
        };
        if t_us <= t0 {
            return Err(FrameError::Time {
                t: t_us,
                previous: t0,
            });
        }
        let dt = (t_us - t0) as f32;
        let leak = self.cfg.leak_rate_hz * dt * 1e-6;
        let w = usize::from(self.width);
        let mut events = std::mem::take(&mut self.scratch);
        events.clear();
        for (i, &v) in gray.iter().enumerate() {
            let l0 = self.last_log[i];
            let l1 = self.log_intensity(v);
            self.last_log[i] = l1;
            if leak > 0.0 {
                self.reference[i] -= leak * self.on[i];
            }
            let (x, y) = ((i % w) as u16, (i / w) as u16);
            let slope = l1 - l0;
            // ON crossings: levels reference + k * on, k = 1.. while <= l1.
            let (th, up) = if l1 >= self.reference[i] {
                (self.on[i], true)
            } else {
                (self.off[i], false)
            };
            let gap = if up {
                l1 - self.reference[i]
            } else {
                self.reference[i] - l1
            };
            let n = (gap / th).floor() as i64;
            for k in 1..=n.min(1000) {
                let level = if up {
                    self.reference[i] + k as f32 * th
                } else {
                    self.reference[i] - k as f32 * th
                };
                let frac = if slope.abs() > f32::EPSILON {
                    ((level - l0) / slope).clamp(0.0, 1.0)
                } else {
                    1.0
                };
                let t = t0 + (frac * dt).round() as i64;
                if t - self.last_event[i] >= self.cfg.refractory_us {
                    events.push(Event {
                        t: t.max(t0 + 1).min(t_us),
                        x,
                        y,
                        p: up,
                    });
                    self.last_event[i] = t;
                }
            }
            if n > 0 {
                let moved = n as f32 * th;
                self.reference[i] += if up { moved } else { -moved };
            }
        }
        if self.cfg.shot_noise_rate_hz > 0.0 {
            let pixels = expected as f64;
            let count = self
                .rng
                .poisson(f64::from(self.cfg.shot_noise_rate_hz) * f64::from(dt) * 1e-6 * pixels);
            for _ in 0..count {
                let i = (self.rng.next_u64() % expected as u64) as usize;
                let t = t0 + 1 + (self.rng.next_f64() * f64::from(dt - 1.0).max(0.0)) as i64;
                events.push(Event {
                    t,
                    x: (i % w) as u16,
                    y: (i / w) as u16,
                    p: self.rng.next_u64() & 1 == 1,
                });
            }
        }
        events.sort_by_key(|e| e.t);
        out.extend_from_slice(&events);
        self.scratch = events;
        self.last_t = Some(t_us);
        Ok(())
    }
}
