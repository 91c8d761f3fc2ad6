//! Model-ready representations of event streams: SpikePoint-style point clouds over
//! sliding windows, voxel grids with bilinear weighting in time, two-channel count
//! histograms and time surfaces. Tensors are flat `Vec<f32>` in C order.

use std::collections::VecDeque;

use crate::video::Rng;
use crate::Event;

/// How point clouds are cut from the stream.
#[derive(Clone, Debug)]
pub struct PointCloudConfig {
    /// Window length in microseconds.
    pub window_us: i64,
    /// Distance between window ends (equal to `window_us` for back-to-back windows,
    /// smaller for overlapping ones).
    pub stride_us: i64,
    /// Points per cloud.
    pub points: usize,
    /// Sensor size, to normalise x and y to [0, 1).
    pub width: u16,
    /// Sensor height.
    pub height: u16,
    /// Seed of the sampler (same seed, same clouds).
    pub seed: u64,
    /// Most events held at once; the oldest are dropped past it (bounds memory when a
    /// window is extremely busy).
    pub max_buffered: usize,
}

impl Default for PointCloudConfig {
    /// SpikePoint's setting for DVS gesture data: 1024 points per 500 ms window... at
    /// 128x128; change the size for other sensors.
    fn default() -> Self {
        Self {
            window_us: 500_000,
            stride_us: 250_000,
            points: 1024,
            width: 128,
            height: 128,
            seed: 0,
            max_buffered: 4 << 20,
        }
    }
}

/// One cloud: `points` rows of `[x, y, t, p]`, x and y divided by the sensor size, t
/// as the fraction of the window elapsed, p 1.0 for ON and 0.0 for OFF.
#[derive(Clone, Debug, PartialEq)]
pub struct PointCloud {
    /// End of the window (exclusive), microseconds.
    pub t_end: i64,
    /// How many events fell in the window.
    pub events_in_window: usize,
    /// The sampled points, in time order.
    pub points: Vec<[f32; 4]>,
}

/// Cuts a stream into sliding windows and samples each into a point cloud.
pub struct PointClouds {
    cfg: PointCloudConfig,
    buf: VecDeque<Event>,
    next_end: Option<i64>,
    rng: Rng,
}

impl PointClouds {
    /// A windower with the given configuration.
    pub fn new(cfg: PointCloudConfig) -> Self {
        let rng = Rng::new(cfg.seed);
        Self {
            cfg,
            buf: VecDeque::new(),
            next_end: None,
            rng,
        }
    }

    /// Feeds events (in time order); appends every window that they complete.
    pub fn push(&mut self, events: &[Event], out: &mut Vec<PointCloud>) {
        for &e in events {
            let next_end = *self.next_end.get_or_insert(e.t + self.cfg.window_us.max(1));
            if e.t >= next_end {
                self.emit_until(e.t, out);
            }
            if self.buf.len() >= self.cfg.max_buffered.max(1) {
                self.buf.pop_front();
            }
            self.buf.push_back(e);
        }
    }

    /// Emits the last, partly filled window.
    pub fn finish(&mut self, out: &mut Vec<PointCloud>) {
        if let Some(end) = self.next_end {
            if !self.buf.is_empty() {
                self.emit(end, out);
            }
        }
        self.buf.clear();
        self.next_end = None;
    }

    fn emit_until(&mut self, t: i64, out: &mut Vec<PointCloud>) {
        while let Some(end) = self.next_end {
            if t < end {
                break;
            }
            self.emit(end, out);
            let stride = self.cfg.stride_us.max(1);
            let start = end + stride - self.cfg.window_us;
            while self.buf.front().is_some_and(|e| e.t < start) {
                self.buf.pop_front();
            }
            // Skip windows that would be empty (long pauses in the stream).
            let next = match self.buf.front() {
                None => end + stride.max((t - end) / stride * stride),
                Some(_) => end + stride,
            };
            self.next_end = Some(next);
        }
    }

    fn emit(&mut self, end: i64, out: &mut Vec<PointCloud>) {
        let start = end - self.cfg.window_us;
        let window: Vec<Event> = self
            .buf
            .iter()
            .filter(|e| e.t >= start && e.t < end)
            .copied()
            .collect();
        if window.is_empty() {
            return;
        }
        let (w, h) = (
            f32::from(self.cfg.width.max(1)),
            f32::from(self.cfg.height.max(1)),
        );
        let span = self.cfg.window_us.max(1) as f32;
        let pick = sample_indices(window.len(), self.cfg.points, &mut self.rng);
        let points = pick
            .into_iter()
            .map(|i| {
                let e = window[i];
                [
                    f32::from(e.x) / w,
                    f32::from(e.y) / h,
                    (e.t - start) as f32 / span,
                    if e.p { 1.0 } else { 0.0 },
                ]
            })
            .collect();
        out.push(PointCloud {
            t_end: end,
            events_in_window: window.len(),
            points,
        });
    }
}

/// `k` indices out of `n`, in increasing order: a uniform sample without replacement
/// when `n >= k` (Knuth's selection sampling, one pass), otherwise every index
/// repeated in turn until there are `k`.
fn sample_indices(n: usize, k: usize, rng: &mut Rng) -> Vec<usize> {
    if n <= k {
        let mut v: Vec<usize> = (0..k).map(|i| i % n.max(1)).collect();
        v.sort_unstable();
        return v;
    }
    let mut out = Vec::with_capacity(k);
    for i in 0..n {
        let left = n - i;
        let need = k - out.len();
        if (rng.next_f64() * left as f64) < need as f64 {
            out.push(i);
            if out.len() == k {
                break;
            }
        }
    }
    out
}

/// A voxel grid `[bins, height, width]`: each event adds its polarity (+1 ON, -1 OFF)
/// to the two time bins around its normalised time, weighted linearly (bilinear in
/// time). Time runs from `t0` (bin 0) to `t1` (bin `bins - 1`).
pub fn voxel_grid(
    events: &[Event],
    bins: usize,
    width: u16,
    height: u16,
    t0: i64,
    t1: i64,
) -> Vec<f32> {
    let (w, h) = (usize::from(width), usize::from(height));
    let mut grid = vec![0.0f32; bins * w * h];
    if bins == 0 {
        return grid;
    }
    let span = (t1 - t0).max(1) as f32;
    for e in events {
        let (x, y) = (usize::from(e.x), usize::from(e.y));
        if x >= w || y >= h || e.t < t0 || e.t > t1 {
            continue;
        }
        let tn = (e.t - t0) as f32 / span * (bins - 1) as f32;
        let lo = tn.floor() as usize;
        let frac = tn - lo as f32;
        let v = if e.p { 1.0 } else { -1.0 };
        let at = y * w + x;
        grid[lo.min(bins - 1) * w * h + at] += v * (1.0 - frac);
        if lo + 1 < bins {
            grid[(lo + 1) * w * h + at] += v * frac;
        }
    }
    grid
}

/// Event counts per pixel in two channels `[2, height, width]`: 0 for OFF, 1 for ON.
pub fn histogram(events: &[Event], width: u16, height: u16) -> Vec<f32> {
    let (w, h) = (usize::from(width), usize::from(height));
    let mut hist = vec![0.0f32; 2 * w * h];
    for e in events {
        let (x, y) = (usize::from(e.x), usize::from(e.y));
        if x < w && y < h {
            hist[usize::from(e.p) * w * h + y * w + x] += 1.0;
        }
    }
    hist
}

/// Per-pixel, per-polarity time of the latest event, read out as an exponentially
/// decaying surface.
pub struct TimeSurface {
    width: usize,
    height: usize,
    last: Vec<i64>,
}

impl TimeSurface {
    /// An empty surface (no pixel has fired).
    pub fn new(width: u16, height: u16) -> Self {
        let (w, h) = (usize::from(width), usize::from(height));
        Self {
            width: w,
            height: h,
            last: vec![i64::MIN; 2 * w * h],
        }
    }

    /// Records events (pixels outside the sensor are ignored).
    pub fn update(&mut self, events: &[Event]) {
        let plane = self.width * self.height;
        for e in events {
            let (x, y) = (usize::from(e.x), usize::from(e.y));
            if x < self.width && y < self.height {
                let slot = &mut self.last[usize::from(e.p) * plane + y * self.width + x];
                *slot = (*slot).max(e.t);
            }
        }
    }

    /// `[2, height, width]`: `exp(-(t_ref - t_last) / tau)` per pixel and polarity, 0
    /// where the pixel has not fired (or fired after `t_ref`).
    pub fn render(&self, t_ref: i64, tau_us: f32) -> Vec<f32> {
        let tau = tau_us.max(1.0);
        self.last
            .iter()
            .map(|&t| {
                if t == i64::MIN || t > t_ref {
                    0.0
                } else {
                    (-((t_ref - t) as f32) / tau).exp()
                }
            })
            .collect()
    }
}
