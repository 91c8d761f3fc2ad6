//! NVIDIA Jetson power rails through the INA3221 monitors' hwmon driver.
//!
//! Jetson boards (Xavier NX, Orin NX/Nano/AGX on JetPack 5 and later) carry one or two
//! TI INA3221 three-channel monitors. The mainline `ina3221` hwmon driver exposes, per
//! chip folder (`/sys/class/hwmon/hwmonN`, `name` = `ina3221`) and channel `i` in 1..=3:
//! `in{i}_input` (bus voltage, mV), `curr{i}_input` (current, mA), `in{i}_label` (the
//! rail: `VDD_IN`, `VDD_CPU_GPU_CV`, `VDD_SOC`, ...) and, on some kernels,
//! `in{i}_enable`. A rail's power is voltage × current.
//!
//! The board total: a rail that is the module's input (`VDD_IN`, `POM_5V_IN`) is the
//! total by itself, because the other rails are inside it; when no such rail exists
//! (AGX Orin) the rails are summed. Rails labelled `NC` (not connected) and disabled
//! channels are skipped. [`Ina3221Source::with_rails`] picks rails by hand.
//!
//! Older JetPack 4 boards (Nano, TX2) use the out-of-tree `ina3221x` IIO driver
//! instead (`in_power0_input` under `iio:device*`); it is not read here: record a
//! trace with `tegrastats` and replay it (`trace:FILE`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::sysfs::{list_dir, read_attr_opt, read_i64_opt};
use crate::{PowerError, PowerSample, PowerSource};

/// Where hwmon devices are listed.
pub const DEFAULT_ROOT: &str = "/sys/class/hwmon";

/// Rail labels that are a Jetson module's whole input.
const TOTAL_RAILS: &[&str] = &["VDD_IN", "POM_5V_IN"];

/// One monitored rail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rail {
    /// Its label (`VDD_IN`), or `hwmonN/chI` when the driver gives none.
    pub label: String,
    voltage: PathBuf,
    current: PathBuf,
}

/// Reads the INA3221 rails. See the module documentation for what is summed.
#[derive(Debug)]
pub struct Ina3221Source {
    rails: Vec<Rail>,
    summed: Vec<usize>,
    start: Instant,
}

fn is_ina3221(dir: &Path) -> bool {
    read_attr_opt(&dir.join("name"))
        .ok()
        .flatten()
        .is_some_and(|n| n == "ina3221")
}

fn chip_rails(dir: &Path) -> Result<Vec<Rail>, PowerError> {
    let chip = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("ina3221")
        .to_owned();
    let mut rails = Vec::new();
    for i in 1..=3 {
        let voltage = dir.join(format!("in{i}_input"));
        let current = dir.join(format!("curr{i}_input"));
        if !voltage.exists() || !current.exists() {
            continue;
        }
        if read_i64_opt(&dir.join(format!("in{i}_enable")))? == Some(0) {
            continue;
        }
        let label = read_attr_opt(&dir.join(format!("in{i}_label")))?
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| format!("{chip}/ch{i}"));
        if label == "NC" {
            continue;
        }
        rails.push(Rail {
            label,
            voltage,
            current,
        });
    }
    Ok(rails)
}

impl Ina3221Source {
    /// Opens the INA3221 chips at `path`: either one chip's hwmon folder, or a folder
    /// of hwmon devices (normally [`DEFAULT_ROOT`]) searched for chips named `ina3221`.
    pub fn open(path: &Path) -> Result<Self, PowerError> {
        let chips: Vec<PathBuf> = if is_ina3221(path) {
            vec![path.to_owned()]
        } else if path.is_dir() {
            list_dir(path)?
                .into_iter()
                .map(|(_, p)| p)
                .filter(|p| is_ina3221(p))
                .collect()
        } else {
            Vec::new()
        };
        let mut rails = Vec::new();
        for chip in &chips {
            rails.extend(chip_rails(chip)?);
        }
        if rails.is_empty() {
            return Err(PowerError::NotFound {
                what: format!("no INA3221 rails under {}", path.display()),
                hint: "this is not a Jetson with the ina3221 hwmon driver (JetPack 5 or later); \
                       on JetPack 4 record `tegrastats` into a trace and use trace:FILE, \
                       elsewhere use rapl, battery, nvml or const:W"
                    .into(),
            });
        }
        let summed = match rails
            .iter()
            .position(|r| TOTAL_RAILS.contains(&r.label.as_str()))
        {
            Some(i) => vec![i],
            None => (0..rails.len()).collect(),
        };
        let src = Self {
            rails,
            summed,
            start: Instant::now(),
        };
        src.read_rails()?;
        Ok(src)
    }

    /// Sums only the rails with these labels instead of the default choice. Errors
    /// naming the rails there are when one is missing.
    pub fn with_rails(mut self, labels: &[&str]) -> Result<Self, PowerError> {
        let mut summed = Vec::new();
        for l in labels {
            let i = self
                .rails
                .iter()
                .position(|r| r.label == *l)
                .ok_or_else(|| PowerError::NotFound {
                    what: format!("no INA3221 rail {l}"),
                    hint: format!("the rails are: {}", self.rail_labels().join(", ")),
                })?;
            summed.push(i);
        }
        self.summed = summed;
        Ok(self)
    }

    /// Every rail found, by label.
    pub fn rail_labels(&self) -> Vec<&str> {
        self.rails.iter().map(|r| r.label.as_str()).collect()
    }

    /// The rails counted in [`PowerSample::watts`].
    pub fn summed_labels(&self) -> Vec<&str> {
        self.summed
            .iter()
            .filter_map(|&i| self.rails.get(i))
            .map(|r| r.label.as_str())
            .collect()
    }

    /// Each rail's power now, in watts, by label.
    pub fn read_rails(&self) -> Result<Vec<(String, f64)>, PowerError> {
        self.rails
            .iter()
            .map(|r| {
                let mv = read_i64_opt(&r.voltage)?.unwrap_or(0);
                let ma = read_i64_opt(&r.current)?.unwrap_or(0);
                // Both magnitudes: a rail never feeds power back.
                let w = (mv.unsigned_abs() as f64) * (ma.unsigned_abs() as f64) * 1e-6;
                Ok((r.label.clone(), w))
            })
            .collect()
    }
}

impl PowerSource for Ina3221Source {
    fn sample(&mut self) -> Result<PowerSample, PowerError> {
        let rails = self.read_rails()?;
        let watts = self
            .summed
            .iter()
            .filter_map(|&i| rails.get(i))
            .map(|(_, w)| w)
            .sum();
        Ok(PowerSample {
            watts: Some(watts),
            battery: None,
            at: crate::since(self.start),
        })
    }

    fn describe(&self) -> String {
        format!("INA3221 {}", self.summed_labels().join(" + "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chip(root: &Path, name: &str, channels: &[(u32, &str, i64, i64)]) -> PathBuf {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("name"), "ina3221\n").unwrap();
        for &(i, label, mv, ma) in channels {
            std::fs::write(d.join(format!("in{i}_label")), format!("{label}\n")).unwrap();
            std::fs::write(d.join(format!("in{i}_input")), format!("{mv}\n")).unwrap();
            std::fs::write(d.join(format!("curr{i}_input")), format!("{ma}\n")).unwrap();
        }
        d
    }

    #[test]
    fn vdd_in_is_the_total_when_present() {
        let tmp = tempfile::tempdir().unwrap();
        // An Orin Nano: VDD_IN holds the other two.
        chip(
            tmp.path(),
            "hwmon1",
            &[
                (1, "VDD_IN", 5000, 1200),
                (2, "VDD_CPU_GPU_CV", 5000, 400),
                (3, "VDD_SOC", 5000, 300),
            ],
        );
        let other = tmp.path().join("hwmon0");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("name"), "coretemp\n").unwrap();
        let mut src = Ina3221Source::open(tmp.path()).unwrap();
        assert_eq!(src.rail_labels(), ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"]);
        assert_eq!(src.summed_labels(), ["VDD_IN"]);
        assert!((src.sample().unwrap().watts.unwrap() - 6.0).abs() < 1e-9);
        let rails = src.read_rails().unwrap();
        assert!((rails[1].1 - 2.0).abs() < 1e-9);
    }

    #[test]
    fn rails_are_summed_across_chips_without_a_total_rail() {
        let tmp = tempfile::tempdir().unwrap();
        // An AGX Orin: two chips, no VDD_IN, one channel not connected.
        chip(
            tmp.path(),
            "hwmon2",
            &[
                (1, "VDD_GPU_SOC", 19000, 500),
                (2, "VDD_CPU_CV", 19000, 200),
                (3, "VIN_SYS_5V0", 5000, 400),
            ],
        );
        let c2 = chip(
            tmp.path(),
            "hwmon3",
            &[(1, "NC", 0, 0), (2, "VDDQ_VDD2_1V8AO", 1800, 1000)],
        );
        std::fs::write(c2.join("in3_enable"), "0\n").unwrap();
        let mut src = Ina3221Source::open(tmp.path()).unwrap();
        assert_eq!(
            src.summed_labels(),
            [
                "VDD_GPU_SOC",
                "VDD_CPU_CV",
                "VIN_SYS_5V0",
                "VDDQ_VDD2_1V8AO"
            ]
        );
        let w = src.sample().unwrap().watts.unwrap();
        assert!((w - (9.5 + 3.8 + 2.0 + 1.8)).abs() < 1e-9, "{w}");
    }

    #[test]
    fn a_chip_folder_can_be_given_directly_and_rails_picked() {
        let tmp = tempfile::tempdir().unwrap();
        let c = chip(
            tmp.path(),
            "hwmon1",
            &[(1, "VDD_IN", 5000, 1000), (2, "VDD_SOC", 5000, 200)],
        );
        let src = Ina3221Source::open(&c)
            .unwrap()
            .with_rails(&["VDD_SOC"])
            .unwrap();
        assert_eq!(src.describe(), "INA3221 VDD_SOC");
        let err = Ina3221Source::open(&c)
            .unwrap()
            .with_rails(&["VDD_GPU"])
            .unwrap_err();
        assert!(err.to_string().contains("VDD_IN, VDD_SOC"), "{err}");
    }

    #[test]
    fn no_chip_is_explained() {
        let tmp = tempfile::tempdir().unwrap();
        let err = Ina3221Source::open(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("trace:FILE"), "{err}");
    }

    #[test]
    fn unlabelled_channels_are_named_by_chip_and_garbage_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let c = tmp.path().join("hwmon4");
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(c.join("name"), "ina3221\n").unwrap();
        std::fs::write(c.join("in1_input"), "12000\n").unwrap();
        std::fs::write(c.join("curr1_input"), "250\n").unwrap();
        let mut src = Ina3221Source::open(tmp.path()).unwrap();
        assert_eq!(src.rail_labels(), ["hwmon4/ch1"]);
        assert_eq!(src.sample().unwrap().watts, Some(3.0));
        std::fs::write(c.join("curr1_input"), "12.5mA\n").unwrap();
        assert!(matches!(src.sample(), Err(PowerError::Parse { .. })));
    }
}
