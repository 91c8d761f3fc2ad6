//! Linux RAPL (Running Average Power Limit) through the powercap framework.
//!
//! Intel (Sandy Bridge on) and AMD (Zen on) CPUs count the energy their packages use;
//! the kernel exposes it as `/sys/class/powercap/intel-rapl:N/energy_uj`, a counter in
//! microjoules that wraps at `max_energy_range_uj`. Power is the energy between two
//! samples over the time between them, so the first sample has no figure.
//!
//! Which zones are summed, so nothing is counted twice:
//! - a `psys` zone (the whole platform, on recent laptops) alone, when there is one,
//!   since it already contains the packages and memory;
//! - otherwise every `package-N` zone, plus `dram` subzones, which the package
//!   counter does not include on servers. `core`/`uncore` subzones are parts of
//!   their package and are left out.
//!
//! `intel-rapl-mmio:*` zones repeat the package counter through another interface
//! and are ignored.
//!
//! Since Linux 5.10 `energy_uj` is readable by root only (CVE-2020-8694, the PLATYPUS
//! side channel: energy readings leaked what other processes computed). A permission
//! error says so and how to grant access.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::sysfs::{list_dir, read_attr, read_u64};
use crate::{PowerError, PowerSample, PowerSource};

/// Where the kernel puts powercap zones.
pub const DEFAULT_ROOT: &str = "/sys/class/powercap";

/// Why `energy_uj` may be unreadable, and how to fix it.
pub fn permission_hint() -> String {
    "RAPL energy counters are readable only by root since Linux 5.10 (CVE-2020-8694). \
     Run as root, or grant read access until the next boot with \
     `sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj /sys/class/powercap/intel-rapl:*:*/energy_uj` \
     (a udev rule or a systemd-tmpfiles line makes it permanent; prefer a group with \
     chgrp + chmod g+r over o+r on shared machines), or pick another source \
     (--power-source battery, nvml, trace:FILE, const:W)"
        .into()
}

#[derive(Debug)]
struct Zone {
    name: String,
    energy: PathBuf,
    /// Where the counter wraps; 0 when the kernel does not say.
    max_range_uj: u64,
    last_uj: u64,
}

/// Sums RAPL energy counters into watts. See the module documentation.
#[derive(Debug)]
pub struct RaplSource {
    root: PathBuf,
    zones: Vec<Zone>,
    start: Instant,
    last_at: Duration,
}

/// A zone folder name: `intel-rapl:N` (top level) or `intel-rapl:N:M` (subzone).
fn zone_depth(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("intel-rapl:")?;
    let parts: Vec<&str> = rest.split(':').collect();
    let ok = parts
        .iter()
        .all(|p| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit()));
    (ok && parts.len() <= 2).then_some(parts.len())
}

impl RaplSource {
    /// Opens the RAPL zones under `root` (normally [`DEFAULT_ROOT`]) and reads each
    /// counter once as the baseline.
    pub fn open(root: &Path) -> Result<Self, PowerError> {
        let not_found = || PowerError::NotFound {
            what: format!("no RAPL zones (intel-rapl:N) under {}", root.display()),
            hint: "this CPU or kernel has no powercap RAPL driver (modprobe intel_rapl_common; \
                   virtual machines usually have none): use --power-source battery, nvml, \
                   trace:FILE or const:W"
                .into(),
        };
        if !root.is_dir() {
            return Err(not_found());
        }
        let mut top = Vec::new();
        let mut sub = Vec::new();
        for (name, path) in list_dir(root)? {
            match zone_depth(&name) {
                Some(1) => top.push(path),
                Some(2) => sub.push(path),
                _ => {}
            }
        }
        // Subzones also appear inside their parent's folder on real systems.
        for parent in &top {
            if let Ok(entries) = list_dir(parent) {
                for (name, path) in entries {
                    if zone_depth(&name) == Some(2)
                        && !sub.iter().any(|s| s.file_name() == path.file_name())
                    {
                        sub.push(path);
                    }
                }
            }
        }
        let named = |paths: &[PathBuf]| -> Result<Vec<(String, PathBuf)>, PowerError> {
            paths
                .iter()
                .map(|p| Ok((read_attr(&p.join("name"), String::new)?, p.clone())))
                .collect()
        };
        let top = named(&top)?;
        let sub = named(&sub)?;
        let chosen: Vec<(String, PathBuf)> =
            if let Some(psys) = top.iter().find(|(n, _)| n == "psys") {
                vec![psys.clone()]
            } else {
                let mut v: Vec<_> = top
                    .iter()
                    .filter(|(n, _)| n.starts_with("package"))
                    .cloned()
                    .collect();
                if v.is_empty() {
                    v = top.clone();
                }
                v.extend(sub.iter().filter(|(n, _)| n == "dram").cloned());
                v
            };
        if chosen.is_empty() {
            return Err(not_found());
        }
        let mut zones = Vec::with_capacity(chosen.len());
        for (name, path) in chosen {
            let energy = path.join("energy_uj");
            let last_uj = read_u64(&energy, permission_hint)?;
            let max_path = path.join("max_energy_range_uj");
            let max_range_uj = if max_path.exists() {
                read_u64(&max_path, permission_hint)?
            } else {
                0
            };
            zones.push(Zone {
                name,
                energy,
                max_range_uj,
                last_uj,
            });
        }
        Ok(Self {
            root: root.to_owned(),
            zones,
            start: Instant::now(),
            last_at: Duration::ZERO,
        })
    }

    /// The names of the zones summed (`package-0`, `dram`, ...).
    pub fn zone_names(&self) -> Vec<&str> {
        self.zones.iter().map(|z| z.name.as_str()).collect()
    }

    /// Reads the counters as if at `now` (time since the source was opened): the
    /// deterministic core of [`PowerSource::sample`], for tests with a fake clock.
    /// Watts are `None` when no time has passed since the previous sample, or when a
    /// counter went backwards without a known wrap range (the next sample has a figure
    /// again).
    pub fn sample_at(&mut self, now: Duration) -> Result<PowerSample, PowerError> {
        let mut readings = Vec::with_capacity(self.zones.len());
        for z in &self.zones {
            readings.push(read_u64(&z.energy, permission_hint)?);
        }
        let dt = now.saturating_sub(self.last_at).as_secs_f64();
        let mut total_uj: Option<u64> = Some(0);
        for (z, &e) in self.zones.iter_mut().zip(&readings) {
            let delta = if e >= z.last_uj {
                Some(e - z.last_uj)
            } else if z.max_range_uj > 0 && z.last_uj <= z.max_range_uj {
                // The counter wrapped: up to the top, then from zero.
                Some(z.max_range_uj - z.last_uj + e)
            } else {
                tracing::debug!(zone = %z.name, "RAPL counter went backwards with no wrap range");
                None
            };
            total_uj = match (total_uj, delta) {
                (Some(a), Some(b)) => a.checked_add(b),
                _ => None,
            };
            z.last_uj = e;
        }
        self.last_at = now;
        let watts = match total_uj {
            Some(uj) if dt > 0.0 => Some(uj as f64 * 1e-6 / dt),
            _ => None,
        };
        Ok(PowerSample {
            watts,
            battery: None,
            at: now,
        })
    }
}

impl PowerSource for RaplSource {
    fn sample(&mut self) -> Result<PowerSample, PowerError> {
        let now = crate::since(self.start);
        self.sample_at(now)
    }

    fn describe(&self) -> String {
        format!(
            "RAPL {} ({})",
            self.zone_names().join(" + "),
            self.root.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(root: &Path, dir: &str, name: &str, energy: u64, max: Option<u64>) -> PathBuf {
        let d = root.join(dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("name"), format!("{name}\n")).unwrap();
        std::fs::write(d.join("energy_uj"), format!("{energy}\n")).unwrap();
        if let Some(m) = max {
            std::fs::write(d.join("max_energy_range_uj"), format!("{m}\n")).unwrap();
        }
        d
    }

    fn set(dir: &Path, energy: u64) {
        std::fs::write(dir.join("energy_uj"), format!("{energy}\n")).unwrap();
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn packages_and_dram_are_summed_cores_are_not() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        let p0 = zone(
            r,
            "intel-rapl:0",
            "package-0",
            1_000_000,
            Some(262_143_328_850),
        );
        let p1 = zone(r, "intel-rapl:1", "package-1", 0, Some(262_143_328_850));
        let core = zone(r, "intel-rapl:0:0", "core", 0, Some(262_143_328_850));
        let dram = zone(r, "intel-rapl:0:1", "dram", 0, Some(65_712_999_613));
        zone(r, "intel-rapl-mmio:0", "package-0", 0, None);
        let mut src = RaplSource::open(r).unwrap();
        assert_eq!(src.zone_names(), ["package-0", "package-1", "dram"]);
        // Over 2 s: 60 J + 40 J of packages, 10 J of DRAM; the core's 50 J is inside
        // package-0's figure.
        set(&p0, 61_000_000);
        set(&p1, 40_000_000);
        set(&core, 50_000_000);
        set(&dram, 10_000_000);
        let s = src.sample_at(secs(2)).unwrap();
        assert_eq!(s.at, secs(2));
        assert!((s.watts.unwrap() - 55.0).abs() < 1e-9, "{:?}", s.watts);
        assert!(src.describe().contains("package-0 + package-1 + dram"));
    }

    #[test]
    fn counter_wrap_around_is_measured_across_the_wrap() {
        let tmp = tempfile::tempdir().unwrap();
        let max = 1_000_000_000; // 1 kJ range, to wrap quickly
        let p0 = zone(
            tmp.path(),
            "intel-rapl:0",
            "package-0",
            max - 5_000_000,
            Some(max),
        );
        let mut src = RaplSource::open(tmp.path()).unwrap();
        // 5 J to the top, then 15 J after the wrap: 20 J in 1 s.
        set(&p0, 15_000_000);
        let s = src.sample_at(secs(1)).unwrap();
        assert!((s.watts.unwrap() - 20.0).abs() < 1e-9, "{:?}", s.watts);
        // And it keeps measuring from the new position.
        set(&p0, 25_000_000);
        let s = src.sample_at(secs(2)).unwrap();
        assert!((s.watts.unwrap() - 10.0).abs() < 1e-9, "{:?}", s.watts);
    }

    #[test]
    fn backwards_counter_without_a_range_gives_no_figure_then_recovers() {
        let tmp = tempfile::tempdir().unwrap();
        let p0 = zone(tmp.path(), "intel-rapl:0", "package-0", 9_000_000, None);
        let mut src = RaplSource::open(tmp.path()).unwrap();
        set(&p0, 1_000_000);
        assert_eq!(src.sample_at(secs(1)).unwrap().watts, None);
        set(&p0, 4_000_000);
        assert_eq!(src.sample_at(secs(2)).unwrap().watts, Some(3.0));
    }

    #[test]
    fn no_time_passed_means_no_figure() {
        let tmp = tempfile::tempdir().unwrap();
        zone(tmp.path(), "intel-rapl:0", "package-0", 0, None);
        let mut src = RaplSource::open(tmp.path()).unwrap();
        assert_eq!(src.sample_at(Duration::ZERO).unwrap().watts, None);
    }

    #[test]
    fn psys_alone_is_used_when_present() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        zone(r, "intel-rapl:0", "package-0", 0, None);
        let psys = zone(r, "intel-rapl:1", "psys", 0, None);
        let mut src = RaplSource::open(r).unwrap();
        assert_eq!(src.zone_names(), ["psys"]);
        set(&psys, 30_000_000);
        assert_eq!(src.sample_at(secs(3)).unwrap().watts, Some(10.0));
    }

    #[test]
    fn subzones_nested_in_their_package_folder_are_found() {
        let tmp = tempfile::tempdir().unwrap();
        let p0 = zone(tmp.path(), "intel-rapl:0", "package-0", 0, None);
        zone(&p0, "intel-rapl:0:2", "dram", 0, None);
        let src = RaplSource::open(tmp.path()).unwrap();
        assert_eq!(src.zone_names(), ["package-0", "dram"]);
    }

    #[test]
    fn missing_tree_explains_what_to_use_instead() {
        let tmp = tempfile::tempdir().unwrap();
        let err = RaplSource::open(tmp.path()).unwrap_err();
        assert!(matches!(err, PowerError::NotFound { .. }));
        assert!(err.to_string().contains("--power-source"), "{err}");
        let err = RaplSource::open(&tmp.path().join("absent")).unwrap_err();
        assert!(matches!(err, PowerError::NotFound { .. }));
    }

    #[test]
    fn garbage_counter_is_a_parse_error_not_a_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let p0 = zone(tmp.path(), "intel-rapl:0", "package-0", 0, None);
        let mut src = RaplSource::open(tmp.path()).unwrap();
        std::fs::write(p0.join("energy_uj"), "-12\n").unwrap();
        let err = src.sample_at(secs(1)).unwrap_err();
        assert!(matches!(err, PowerError::Parse { .. }), "{err}");
    }

    #[test]
    fn permission_hint_names_the_kernel_change_and_the_fix() {
        let h = permission_hint();
        assert!(
            h.contains("5.10") && h.contains("root") && h.contains("chmod"),
            "{h}"
        );
    }

    #[test]
    fn zone_names_are_matched_exactly() {
        assert_eq!(zone_depth("intel-rapl:0"), Some(1));
        assert_eq!(zone_depth("intel-rapl:1:2"), Some(2));
        assert_eq!(zone_depth("intel-rapl-mmio:0"), None);
        assert_eq!(zone_depth("intel-rapl:"), None);
        assert_eq!(zone_depth("intel-rapl:0:1:2"), None);
        assert_eq!(zone_depth("intel-rapl:x"), None);
    }
}
