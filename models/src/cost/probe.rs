//! Measuring this machine: peak arithmetic per instruction set and thread count, read
//! bandwidth and latency per cache level, the clock. `splitstream-bench machine` turns
//! these into a [`Profile`](super::Profile).
//!
//! The arithmetic kernels keep a dozen independent FMA chains in registers (enough to
//! cover the FMA latency times the ports on current x86 cores), the bandwidth kernel
//! sums a buffer with the widest loads the CPU has, and the latency kernel chases
//! pointers around one random cycle through the buffer's cache lines (Sattolo's
//! algorithm), so that neither the prefetchers nor out-of-order execution hide a miss.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

/// An instruction set the peak kernels can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeIsa {
    /// Plain Rust at the target's baseline (what the compiler makes of mul + add).
    Portable,
    /// AVX2 + FMA, 8 lanes.
    Avx2Fma,
    /// AVX-512F, 16 lanes.
    Avx512,
}

impl ProbeIsa {
    /// The name a profile's compute rows use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx2Fma => "avx2-fma",
            Self::Avx512 => "avx512",
        }
    }

    /// The instruction sets this CPU has, baseline first.
    pub fn available() -> Vec<Self> {
        let mut v = vec![Self::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                v.push(Self::Avx2Fma);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                v.push(Self::Avx512);
            }
        }
        v
    }

    /// The profile name of the CPU backend's instruction set.
    pub fn of_backend(isa: crate::backend::cpu::Isa) -> Self {
        match isa {
            crate::backend::cpu::Isa::Avx512 => Self::Avx512,
            crate::backend::cpu::Isa::Avx2 => Self::Avx2Fma,
            crate::backend::cpu::Isa::Portable => Self::Portable,
        }
    }
}

/// Independent accumulators per kernel.
const CHAINS: usize = 12;

/// `iters` rounds of `CHAINS` multiply-adds of `lanes` lanes; returns FLOPs done.
fn fma_kernel(isa: ProbeIsa, iters: u64) -> u64 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        ProbeIsa::Avx512 => {
            // SAFETY: `available()` offers Avx512 only when the CPU has AVX-512F.
            black_box(unsafe { x86::fma512(iters) });
            iters * CHAINS as u64 * 16 * 2
        }
        #[cfg(target_arch = "x86_64")]
        ProbeIsa::Avx2Fma => {
            // SAFETY: offered only when the CPU has AVX2 and FMA.
            black_box(unsafe { x86::fma256(iters) });
            iters * CHAINS as u64 * 8 * 2
        }
        _ => {
            let b = black_box(0.999_9f32);
            let a = black_box(1e-3f32);
            let mut acc = [1.0f32; 16];
            for _ in 0..iters {
                for x in &mut acc {
                    *x = *x * b + a;
                }
            }
            black_box(acc);
            iters * 16 * 2
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::CHAINS;

    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fma512(iters: u64) -> f32 {
        let a = _mm512_set1_ps(1e-3);
        let b = _mm512_set1_ps(0.999_9);
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for x in &mut acc {
                *x = _mm512_fmadd_ps(*x, b, a);
            }
        }
        let mut s = _mm512_setzero_ps();
        for x in acc {
            s = _mm512_add_ps(s, x);
        }
        _mm512_reduce_add_ps(s)
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fma256(iters: u64) -> f32 {
        let a = _mm256_set1_ps(1e-3);
        let b = _mm256_set1_ps(0.999_9);
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for x in &mut acc {
                *x = _mm256_fmadd_ps(*x, b, a);
            }
        }
        let mut s = _mm256_setzero_ps();
        for x in acc {
            s = _mm256_add_ps(s, x);
        }
        let mut out = [0f32; 8];
        // SAFETY: `out` holds 8 f32.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
        out.iter().sum()
    }

    /// Sums `x` with 512-bit loads, four accumulators.
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn sum512(x: &[f32]) -> f32 {
        let body = x.len() - x.len() % 64;
        let p = x.as_ptr();
        // Four named accumulators, unrolled by hand: the dev profile (opt-level 1) does
        // not unroll a loop over an array of them and would measure its own spills.
        let (mut a0, mut a1, mut a2, mut a3) = (
            _mm512_setzero_ps(),
            _mm512_setzero_ps(),
            _mm512_setzero_ps(),
            _mm512_setzero_ps(),
        );
        let mut i = 0;
        while i < body {
            // SAFETY: i + 64 <= body <= x.len().
            unsafe {
                a0 = _mm512_add_ps(a0, _mm512_loadu_ps(p.add(i)));
                a1 = _mm512_add_ps(a1, _mm512_loadu_ps(p.add(i + 16)));
                a2 = _mm512_add_ps(a2, _mm512_loadu_ps(p.add(i + 32)));
                a3 = _mm512_add_ps(a3, _mm512_loadu_ps(p.add(i + 48)));
            }
            i += 64;
        }
        let s = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
        _mm512_reduce_add_ps(s) + x[body..].iter().sum::<f32>()
    }

    /// Sums `x` with 256-bit loads, four accumulators.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn sum256(x: &[f32]) -> f32 {
        let body = x.len() - x.len() % 32;
        let p = x.as_ptr();
        let (mut a0, mut a1, mut a2, mut a3) = (
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
            _mm256_setzero_ps(),
        );
        let mut i = 0;
        while i < body {
            // SAFETY: i + 32 <= body <= x.len().
            unsafe {
                a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p.add(i)));
                a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p.add(i + 8)));
                a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p.add(i + 16)));
                a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p.add(i + 24)));
            }
            i += 32;
        }
        let s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
        let mut out = [0f32; 8];
        // SAFETY: `out` holds 8 f32.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
        out.iter().sum::<f32>() + x[body..].iter().sum::<f32>()
    }
}

/// Sums a buffer with the widest loads this CPU has (the bandwidth kernel).
fn read_sum(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: checked just above.
            return unsafe { x86::sum512(x) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: checked just above.
            return unsafe { x86::sum256(x) };
        }
    }
    // Eight partial sums: independent chains the compiler can keep in vector lanes.
    let mut acc = [0f32; 8];
    for c in x.chunks_exact(8) {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum()
}

/// Runs `work(thread)` on `threads` threads started together; returns the wall time
/// from the common start to the last finish.
fn on_threads(threads: usize, work: impl Fn(usize) + Sync) -> Duration {
    let barrier = std::sync::Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (barrier, work) = (&barrier, &work);
            s.spawn(move || {
                barrier.wait();
                work(t);
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    })
}

/// Peak f32 GFLOP/s of `isa` on `threads` threads: the best of `reps` runs of about
/// `budget` each.
pub fn peak_gflops(isa: ProbeIsa, threads: usize, budget: Duration, reps: usize) -> f64 {
    // Size the run on one thread first.
    let mut iters = 1u64 << 12;
    loop {
        let t0 = Instant::now();
        fma_kernel(isa, iters);
        if t0.elapsed() >= budget / 4 || iters > 1 << 40 {
            break;
        }
        iters *= 2;
    }
    let iters = iters * 4;
    let mut best = 0f64;
    for _ in 0..reps.max(1) {
        let wall = on_threads(threads, |_| {
            fma_kernel(isa, iters);
        });
        let flops = fma_kernel_flops(isa, iters) * threads as u64;
        best = best.max(flops as f64 / wall.as_secs_f64() / 1e9);
    }
    best
}

fn fma_kernel_flops(isa: ProbeIsa, iters: u64) -> u64 {
    match isa {
        ProbeIsa::Avx512 => iters * CHAINS as u64 * 16 * 2,
        ProbeIsa::Avx2Fma => iters * CHAINS as u64 * 8 * 2,
        ProbeIsa::Portable => iters * 16 * 2,
    }
}

/// Read bandwidth, GB/s, of `threads` threads each summing its own buffer of
/// `bytes_per_thread` over and over for about `budget`: the best of `reps`.
pub fn read_bandwidth(
    bytes_per_thread: usize,
    threads: usize,
    budget: Duration,
    reps: usize,
) -> f64 {
    let n = (bytes_per_thread / 4).max(64);
    let bufs: Vec<Vec<f32>> = (0..threads)
        .map(|t| (0..n).map(|i| (i + t) as f32 * 1e-6).collect())
        .collect();
    // Passes per run: enough to fill the budget on one thread.
    let t0 = Instant::now();
    let mut passes = 0u64;
    while t0.elapsed() < budget / 8 {
        black_box(read_sum(&bufs[0]));
        passes += 1;
    }
    let passes = passes.max(1) * 8;
    let mut best = 0f64;
    for _ in 0..reps.max(1) {
        let wall = on_threads(threads, |t| {
            for _ in 0..passes {
                black_box(read_sum(black_box(&bufs[t])));
            }
        });
        let bytes = (n * 4) as f64 * passes as f64 * threads as f64;
        best = best.max(bytes / wall.as_secs_f64() / 1e9);
    }
    best
}

/// Load-to-use latency, ns, of a dependent random walk over `bytes` of cache lines.
pub fn latency_ns(bytes: usize, budget: Duration) -> f64 {
    const LINE: usize = 64 / std::mem::size_of::<usize>();
    let lines = (bytes / 64).max(2);
    // Sattolo's algorithm: a random permutation that is one single cycle.
    let mut order: Vec<usize> = (0..lines).collect();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for i in (1..lines).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let j = (state % i as u64) as usize;
        order.swap(i, j);
    }
    let mut next = vec![0usize; lines * LINE];
    for i in 0..lines {
        // order[] as a cycle: line order[i] points to line order[i + 1].
        let from = order[i];
        let to = order[(i + 1) % lines];
        next[from * LINE] = to * LINE;
    }
    // Warm up one lap, then time.
    let mut p = 0usize;
    for _ in 0..lines {
        p = next[p];
    }
    let mut steps = 0u64;
    let start = Instant::now();
    while start.elapsed() < budget {
        for _ in 0..4096 {
            p = next[p];
        }
        steps += 4096;
    }
    black_box(p);
    start.elapsed().as_secs_f64() * 1e9 / steps as f64
}

/// A cache level as sysfs tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheInfo {
    /// 1, 2, 3.
    pub level: u32,
    /// Bytes.
    pub size_bytes: u64,
    /// Private to one core.
    pub per_core: bool,
}

/// The data (and unified) caches of CPU 0, innermost first, from
/// `/sys/devices/system/cpu/cpu0/cache` (empty where sysfs has none).
pub fn cache_levels() -> Vec<CacheInfo> {
    cache_levels_in(Path::new("/sys/devices/system/cpu/cpu0/cache"))
}

/// [`cache_levels`] from another directory (for tests).
pub fn cache_levels_in(dir: &Path) -> Vec<CacheInfo> {
    let read = |p: &Path| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
    let mut out = Vec::new();
    for i in 0..16 {
        let d = dir.join(format!("index{i}"));
        let Some(kind) = read(&d.join("type")) else {
            continue;
        };
        if kind == "Instruction" {
            continue;
        }
        let (Some(level), Some(size)) = (
            read(&d.join("level")).and_then(|l| l.parse::<u32>().ok()),
            read(&d.join("size")).and_then(|s| parse_size(&s)),
        ) else {
            continue;
        };
        let shared = read(&d.join("shared_cpu_list")).unwrap_or_default();
        let per_core = !shared.contains(['-', ',']);
        out.push(CacheInfo {
            level,
            size_bytes: size,
            per_core,
        });
    }
    out.sort_by_key(|c| c.level);
    out.dedup_by_key(|c| c.level);
    out
}

/// `48K`, `1024K`, `32M`, `512` as bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1u64 << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

/// The core clock now, MHz, and where it was read: cpufreq's `scaling_cur_freq`, else
/// `/proc/cpuinfo`'s `cpu MHz` (a virtual machine often has only the latter).
pub fn frequency_mhz() -> Option<(f64, &'static str)> {
    if let Ok(s) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    {
        if let Ok(khz) = s.trim().parse::<f64>() {
            return Some((khz / 1e3, "cpufreq scaling_cur_freq"));
        }
    }
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse::<f64>()
        .ok()?;
    Some((mhz, "/proc/cpuinfo cpu MHz"))
}
