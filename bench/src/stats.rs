//! Summary statistics every bench reports the same way: the median, percentiles by one
//! rule, and peak resident memory.

/// The median of `values` (the mean of the two middle ones for an even count); `None`
/// when there are none. NaNs sort last.
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// The `q` quantile (`0.0..=1.0`) of already sorted `sorted`: the element at rank
/// `round(q * (n - 1))`, ties to even. It is the rule `python/bench_onnxruntime.py`
/// uses (Python's `round`), so our figures and the peer's compare like for like.
/// `None` when empty.
pub(crate) fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let idx = (q.clamp(0.0, 1.0) * last as f64).round_ties_even() as usize;
    Some(sorted[idx.min(last)])
}

/// Peak resident set (`VmHWM`) in KiB of process `pid`, or of this process for `None`;
/// `None` where the OS does not report it (off Linux).
pub(crate) fn peak_rss_kib(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    vm_hwm_kib(&std::fs::read_to_string(path).ok()?)
}

/// [`peak_rss_kib`] in MiB.
pub(crate) fn peak_rss_mib(pid: Option<u32>) -> Option<f64> {
    peak_rss_kib(pid).map(|kib| kib as f64 / 1024.0)
}

/// The `VmHWM:` line of a `/proc/PID/status` text, in KiB.
fn vm_hwm_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn percentile_takes_the_nearest_rank_with_pythons_rounding() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 0.5), Some(3.0));
        assert_eq!(percentile(&v, 0.9), Some(5.0));
        assert_eq!(percentile(&v, 1.0), Some(5.0));
        // round(0.5 * 1) = 0 in Python (ties to even), not 1.
        assert_eq!(percentile(&[1.0, 2.0], 0.5), Some(1.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn vm_hwm_is_read_from_a_status_text() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t  1234 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(vm_hwm_kib(status), Some(1234));
        assert_eq!(vm_hwm_kib("Name:\tx\n"), None);
        if cfg!(target_os = "linux") {
            assert!(peak_rss_kib(None).is_some_and(|k| k > 0));
        }
    }
}
