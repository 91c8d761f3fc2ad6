//! Batteries through the kernel's `power_supply` class (`/sys/class/power_supply`).
//!
//! Per battery folder (`BAT0`, `battery` on Android, ...):
//! - `type` is `Battery`; peripheral batteries (a mouse, a pen) have `scope` `Device`
//!   and are ignored;
//! - power: `power_now` (µW), or else `current_now` (µA) × `voltage_now` (µV). Some
//!   drivers report the discharge current as negative: the magnitude is used;
//! - `capacity` (%), `status` (`Charging`, `Discharging`, `Full`, `Not charging`,
//!   `Unknown`);
//! - energy left: `energy_now` (µWh), or else `charge_now` (µAh) × `voltage_now`.
//!
//! With several system batteries (some laptops have two) the figures are combined:
//! watts and energy added, the charge weighted by each battery's full energy (or
//! averaged when that is unknown), the status "discharging" if any battery is.
//!
//! Readings are instantaneous (the driver's latest figure), not averages.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::sysfs::{list_dir, read_attr_opt, read_i64_opt};
use crate::{BatteryState, BatteryStatus, PowerError, PowerSample, PowerSource};

/// Where the kernel lists power supplies.
pub const DEFAULT_ROOT: &str = "/sys/class/power_supply";

/// Reads one battery, or all of the system's.
#[derive(Debug)]
pub struct BatterySource {
    dirs: Vec<PathBuf>,
    start: Instant,
}

/// One battery's reading.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Reading {
    watts: Option<f64>,
    capacity_pct: Option<f64>,
    status: BatteryStatus,
    energy_wh: Option<f64>,
    full_wh: Option<f64>,
}

impl BatterySource {
    /// The battery `name` under `root` (normally [`DEFAULT_ROOT`]), or every system
    /// battery there when `name` is `None`.
    pub fn open(root: &Path, name: Option<&str>) -> Result<Self, PowerError> {
        let dirs = match name {
            Some(n) => {
                if n.is_empty() || n.contains('/') || n == "." || n == ".." {
                    return Err(PowerError::Spec {
                        spec: format!("battery:{n}"),
                        message: "a battery name is a folder name such as BAT0".into(),
                    });
                }
                let d = root.join(n);
                if !d.is_dir() {
                    return Err(PowerError::NotFound {
                        what: format!("no power supply {n} under {}", root.display()),
                        hint: format!(
                            "the batteries there are: {}",
                            list_batteries(root).join(", ")
                        ),
                    });
                }
                vec![d]
            }
            None => {
                let names = list_batteries(root);
                if names.is_empty() {
                    return Err(PowerError::NotFound {
                        what: format!("no system battery under {}", root.display()),
                        hint: "this machine runs on mains power: use --power-source rapl, nvml, \
                               trace:FILE or const:W"
                            .into(),
                    });
                }
                names.iter().map(|n| root.join(n)).collect()
            }
        };
        let src = Self {
            dirs,
            start: Instant::now(),
        };
        // Fail now, not at the first sample, if the files are not what a battery has.
        src.read_all()?;
        Ok(src)
    }

    fn read_all(&self) -> Result<Vec<Reading>, PowerError> {
        self.dirs.iter().map(|d| read_battery(d)).collect()
    }
}

/// System batteries under `root`, by folder name (empty when there are none or the
/// folder cannot be read).
pub fn list_batteries(root: &Path) -> Vec<String> {
    let Ok(entries) = list_dir(root) else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter(|(_, p)| {
            let ty = read_attr_opt(&p.join("type")).ok().flatten();
            let scope = read_attr_opt(&p.join("scope")).ok().flatten();
            ty.as_deref() == Some("Battery") && scope.as_deref() != Some("Device")
        })
        .map(|(n, _)| n)
        .collect()
}

fn read_battery(dir: &Path) -> Result<Reading, PowerError> {
    let micro = |name: &str| -> Result<Option<f64>, PowerError> {
        Ok(read_i64_opt(&dir.join(name))?.map(|v| (v as f64).abs() * 1e-6))
    };
    let voltage = micro("voltage_now")?;
    let watts = match micro("power_now")? {
        Some(w) => Some(w),
        None => match (micro("current_now")?, voltage) {
            (Some(a), Some(v)) => Some(a * v),
            _ => None,
        },
    };
    let energy_wh = match micro("energy_now")? {
        Some(e) => Some(e),
        None => match (micro("charge_now")?, voltage) {
            (Some(ah), Some(v)) => Some(ah * v),
            _ => None,
        },
    };
    let full_wh = match micro("energy_full")? {
        Some(e) => Some(e),
        None => match (micro("charge_full")?, voltage) {
            (Some(ah), Some(v)) => Some(ah * v),
            _ => None,
        },
    };
    let capacity_pct = match read_i64_opt(&dir.join("capacity"))? {
        Some(c) if (0..=100).contains(&c) => Some(c as f64),
        Some(c) => {
            return Err(PowerError::Parse {
                path: dir.join("capacity"),
                message: format!("capacity {c} is outside 0..=100"),
            })
        }
        // Derive it from the energies when the driver has no capacity file.
        None => match (energy_wh, full_wh) {
            (Some(e), Some(f)) if f > 0.0 => Some((e / f * 100.0).clamp(0.0, 100.0)),
            _ => None,
        },
    };
    let status = match read_attr_opt(&dir.join("status"))? {
        Some(s) => BatteryStatus::parse(&s).unwrap_or(BatteryStatus::Unknown),
        None => BatteryStatus::Unknown,
    };
    Ok(Reading {
        watts,
        capacity_pct,
        status,
        energy_wh,
        full_wh,
    })
}

fn combine(readings: &[Reading]) -> (Option<f64>, Option<BatteryState>) {
    let sum = |f: fn(&Reading) -> Option<f64>| -> Option<f64> {
        readings.iter().map(f).sum::<Option<f64>>()
    };
    let watts = sum(|r| r.watts);
    let energy_wh = sum(|r| r.energy_wh);
    let capacity = match (energy_wh, sum(|r| r.full_wh)) {
        (Some(e), Some(f)) if f > 0.0 && readings.len() > 1 => {
            Some((e / f * 100.0).clamp(0.0, 100.0))
        }
        _ => {
            let caps: Vec<f64> = readings.iter().filter_map(|r| r.capacity_pct).collect();
            (!caps.is_empty()).then(|| caps.iter().sum::<f64>() / caps.len() as f64)
        }
    };
    let status = if readings
        .iter()
        .any(|r| r.status == BatteryStatus::Discharging)
    {
        BatteryStatus::Discharging
    } else if readings.iter().any(|r| r.status == BatteryStatus::Charging) {
        BatteryStatus::Charging
    } else if !readings.is_empty() && readings.iter().all(|r| r.status == BatteryStatus::Full) {
        BatteryStatus::Full
    } else if readings
        .iter()
        .any(|r| r.status == BatteryStatus::NotCharging)
    {
        BatteryStatus::NotCharging
    } else {
        BatteryStatus::Unknown
    };
    let battery = capacity.map(|capacity_pct| BatteryState {
        capacity_pct,
        status,
        energy_wh,
    });
    (watts, battery)
}

impl PowerSource for BatterySource {
    fn sample(&mut self) -> Result<PowerSample, PowerError> {
        let readings = self.read_all()?;
        let (watts, battery) = combine(&readings);
        Ok(PowerSample {
            watts,
            battery,
            at: crate::since(self.start),
        })
    }

    fn describe(&self) -> String {
        let names: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        format!("battery {}", names.join(" + "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supply(root: &Path, name: &str, attrs: &[(&str, &str)]) -> PathBuf {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for (k, v) in attrs {
            std::fs::write(d.join(k), format!("{v}\n")).unwrap();
        }
        d
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn power_now_capacity_and_status_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        supply(
            tmp.path(),
            "BAT0",
            &[
                ("type", "Battery"),
                ("status", "Discharging"),
                ("capacity", "73"),
                ("power_now", "9500000"),
                ("energy_now", "36500000"),
            ],
        );
        supply(tmp.path(), "AC", &[("type", "Mains"), ("online", "0")]);
        let mut src = BatterySource::open(tmp.path(), None).unwrap();
        let s = src.sample().unwrap();
        assert!(close(s.watts, 9.5), "{:?}", s.watts);
        let b = s.battery.unwrap();
        assert_eq!(
            (b.capacity_pct, b.status),
            (73.0, BatteryStatus::Discharging)
        );
        assert!(close(b.energy_wh, 36.5));
    }

    #[test]
    fn current_times_voltage_when_there_is_no_power_now() {
        let tmp = tempfile::tempdir().unwrap();
        supply(
            tmp.path(),
            "battery",
            &[
                ("type", "Battery"),
                ("status", "Not charging"),
                ("capacity", "80"),
                // Negative current while discharging, as some phone drivers report.
                ("current_now", "-500000"),
                ("voltage_now", "4000000"),
                ("charge_now", "2000000"),
            ],
        );
        let mut src = BatterySource::open(tmp.path(), Some("battery")).unwrap();
        let s = src.sample().unwrap();
        assert!(close(s.watts, 2.0), "{:?}", s.watts);
        let b = s.battery.unwrap();
        assert_eq!(b.status, BatteryStatus::NotCharging);
        assert!(close(b.energy_wh, 8.0));
    }

    #[test]
    fn two_batteries_are_combined_by_energy() {
        let tmp = tempfile::tempdir().unwrap();
        let common = [("type", "Battery"), ("power_now", "5000000")];
        let mut a = common.to_vec();
        a.extend([
            ("status", "Discharging"),
            ("capacity", "100"),
            ("energy_now", "20000000"),
            ("energy_full", "20000000"),
        ]);
        let mut b = common.to_vec();
        b.extend([
            ("status", "Full"),
            ("capacity", "25"),
            ("energy_now", "15000000"),
            ("energy_full", "60000000"),
        ]);
        supply(tmp.path(), "BAT0", &a);
        supply(tmp.path(), "BAT1", &b);
        let s = BatterySource::open(tmp.path(), None)
            .unwrap()
            .sample()
            .unwrap();
        assert!(close(s.watts, 10.0));
        let bat = s.battery.unwrap();
        // 35 Wh of 80 Wh, not the 62.5 % mean of the two percentages.
        assert!((bat.capacity_pct - 43.75).abs() < 1e-9, "{bat:?}");
        assert_eq!(bat.status, BatteryStatus::Discharging);
    }

    #[test]
    fn peripheral_batteries_and_mains_are_not_system_batteries() {
        let tmp = tempfile::tempdir().unwrap();
        supply(
            tmp.path(),
            "hidpp_battery_0",
            &[("type", "Battery"), ("scope", "Device"), ("capacity", "50")],
        );
        supply(tmp.path(), "AC", &[("type", "Mains")]);
        let err = BatterySource::open(tmp.path(), None).unwrap_err();
        assert!(matches!(err, PowerError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("mains"), "{err}");
    }

    #[test]
    fn unknown_name_lists_the_batteries_there() {
        let tmp = tempfile::tempdir().unwrap();
        supply(
            tmp.path(),
            "BAT1",
            &[("type", "Battery"), ("capacity", "50")],
        );
        let err = BatterySource::open(tmp.path(), Some("BAT0")).unwrap_err();
        assert!(err.to_string().contains("BAT1"), "{err}");
        let err = BatterySource::open(tmp.path(), Some("../etc")).unwrap_err();
        assert!(matches!(err, PowerError::Spec { .. }), "{err}");
    }

    #[test]
    fn odd_values_are_errors_or_unknowns_never_panics() {
        let tmp = tempfile::tempdir().unwrap();
        let d = supply(
            tmp.path(),
            "BAT0",
            &[
                ("type", "Battery"),
                ("capacity", "250"),
                ("status", "Exploding"),
            ],
        );
        let err = BatterySource::open(tmp.path(), None).unwrap_err();
        assert!(err.to_string().contains("outside 0..=100"), "{err}");
        std::fs::write(d.join("capacity"), "40\n").unwrap();
        let mut src = BatterySource::open(tmp.path(), None).unwrap();
        let s = src.sample().unwrap();
        // An unheard-of status word reads as unknown; no power file means no watts.
        assert_eq!(s.battery.unwrap().status, BatteryStatus::Unknown);
        assert_eq!(s.watts, None);
        std::fs::write(d.join("power_now"), "lots\n").unwrap();
        assert!(matches!(src.sample(), Err(PowerError::Parse { .. })));
    }

    #[test]
    fn capacity_is_derived_from_energy_when_missing() {
        let tmp = tempfile::tempdir().unwrap();
        supply(
            tmp.path(),
            "BAT0",
            &[
                ("type", "Battery"),
                ("energy_now", "10000000"),
                ("energy_full", "40000000"),
            ],
        );
        let s = BatterySource::open(tmp.path(), None)
            .unwrap()
            .sample()
            .unwrap();
        assert_eq!(s.battery.unwrap().capacity_pct, 25.0);
    }
}
