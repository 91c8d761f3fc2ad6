//! What the sampler reads besides power: memory (`/proc/self/status`), temperatures
//! (thermal zones and hwmon `temp*_input`), CPU frequency (cpufreq) and the process's
//! CPU time (`/proc/self/stat`, for the power model). Every path hangs off a root folder
//! so tests run on fake trees; every read is capped (the sysfs helpers) and a sensor
//! that fails to read is `None` in that sample, never an error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sysfs;

/// Most temperature sensors kept (the first by name); a server with hundreds of hwmon
/// channels would otherwise make every sample line long.
pub(crate) const MAX_TEMPS: usize = 32;

/// Most CPUs whose frequency is read each sample.
const MAX_CPUS: usize = 1024;

/// The clock ticks per second of `/proc/PID/stat` times: `USER_HZ`, 100 on every Linux
/// architecture (the kernel converts to it for userspace whatever its own HZ).
const USER_HZ: f64 = 100.0;

/// The sensors found at start.
#[derive(Debug, Default)]
pub(crate) struct Probes {
    /// (name, file in millidegrees Celsius)
    temps: Vec<(String, PathBuf)>,
    /// `scaling_cur_freq` (kHz) of each CPU.
    freqs: Vec<PathBuf>,
    /// `/proc/self/status`, `/proc/self/stat`.
    status: PathBuf,
    stat: PathBuf,
}

impl Probes {
    /// Looks for sensors under `sys` (normally `/sys`) and `proc_self` (normally
    /// `/proc/self`); the second value says, in words, what is absent.
    pub(crate) fn discover(sys: &Path, proc_self: &Path) -> (Self, Vec<String>) {
        let mut absent = Vec::new();
        let mut temps = Vec::new();
        let thermal = sys.join("class/thermal");
        for (name, dir) in sysfs::list_dir(&thermal).unwrap_or_default() {
            if !name.starts_with("thermal_zone") || !dir.join("temp").exists() {
                continue;
            }
            let kind = sysfs::read_attr_opt(&dir.join("type"))
                .ok()
                .flatten()
                .unwrap_or_else(|| "zone".into());
            temps.push((format!("{name}:{kind}"), dir.join("temp")));
        }
        if temps.is_empty() {
            absent.push(format!("thermal zones: none under {}", thermal.display()));
        }
        let hwmon = sys.join("class/hwmon");
        let before = temps.len();
        for (name, dir) in sysfs::list_dir(&hwmon).unwrap_or_default() {
            let chip = sysfs::read_attr_opt(&dir.join("name"))
                .ok()
                .flatten()
                .unwrap_or_else(|| name.clone());
            for (file, path) in sysfs::list_dir(&dir).unwrap_or_default() {
                let Some(channel) = file
                    .strip_prefix("temp")
                    .and_then(|f| f.strip_suffix("_input"))
                else {
                    continue;
                };
                let label = sysfs::read_attr_opt(&dir.join(format!("temp{channel}_label")))
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| format!("temp{channel}"));
                temps.push((format!("{name}:{chip}/{label}"), path));
            }
        }
        if temps.len() == before {
            absent.push(format!(
                "hwmon temperatures: none under {}",
                hwmon.display()
            ));
        }
        if temps.len() > MAX_TEMPS {
            absent.push(format!(
                "temperatures: {} sensors found, the first {MAX_TEMPS} kept",
                temps.len()
            ));
            temps.truncate(MAX_TEMPS);
        }
        let cpus = sys.join("devices/system/cpu");
        let freqs: Vec<PathBuf> = sysfs::list_dir(&cpus)
            .unwrap_or_default()
            .into_iter()
            .filter(|(n, _)| {
                n.strip_prefix("cpu")
                    .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
            })
            .map(|(_, d)| d.join("cpufreq/scaling_cur_freq"))
            .filter(|p| p.exists())
            .take(MAX_CPUS)
            .collect();
        if freqs.is_empty() {
            absent.push(format!(
                "CPU frequency: no cpufreq under {} (a VM, or a kernel without cpufreq)",
                cpus.display()
            ));
        }
        let status = proc_self.join("status");
        let stat = proc_self.join("stat");
        if !status.exists() {
            absent.push(format!("memory: no {}", status.display()));
        }
        (
            Self {
                temps,
                freqs,
                status,
                stat,
            },
            absent,
        )
    }

    /// The temperature sensors' names, in the order samples list them.
    pub(crate) fn temp_names(&self) -> Vec<String> {
        self.temps.iter().map(|(n, _)| n.clone()).collect()
    }

    /// How many CPUs report a frequency.
    pub(crate) fn cpus_with_freq(&self) -> usize {
        self.freqs.len()
    }

    /// Each sensor in degrees Celsius (`None`: this read failed).
    pub(crate) fn temps_c(&self) -> Vec<Option<f64>> {
        self.temps
            .iter()
            .map(|(_, p)| {
                sysfs::read_i64(p)
                    .ok()
                    // Millidegrees; a sensor reading absurd values is treated as absent.
                    .map(|m| m as f64 / 1000.0)
                    .filter(|c| (-100.0..=250.0).contains(c))
            })
            .collect()
    }

    /// Mean and highest current frequency in MHz over the CPUs that answered.
    pub(crate) fn freq_mhz(&self) -> (Option<f64>, Option<f64>) {
        let mhz: Vec<f64> = self
            .freqs
            .iter()
            .filter_map(|p| sysfs::read_u64(p, String::new).ok())
            .map(|khz| khz as f64 / 1000.0)
            .collect();
        if mhz.is_empty() {
            return (None, None);
        }
        let mean = mhz.iter().sum::<f64>() / mhz.len() as f64;
        (Some(mean), mhz.iter().copied().reduce(f64::max))
    }

    /// (VmRSS, VmHWM) in KiB.
    pub(crate) fn memory_kib(&self) -> (Option<u64>, Option<u64>) {
        // /proc/self/status is about 1.5 KiB; read it in full, capped.
        let Ok(text) = read_capped(&self.status, 16 << 10) else {
            return (None, None);
        };
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.trim().strip_suffix("kB"))
                .and_then(|n| n.trim().parse::<u64>().ok())
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// The process's CPU time so far (user + system), from `/proc/self/stat`.
    pub(crate) fn cpu_time(&self) -> Option<Duration> {
        let text = read_capped(&self.stat, 4096).ok()?;
        // The command name (field 2) is in parentheses and may hold spaces: count the
        // fields after its closing one. utime and stime are fields 14 and 15.
        let rest = &text[text.rfind(')')? + 1..];
        let mut fields = rest.split_whitespace();
        let utime: u64 = fields.nth(11)?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        Some(Duration::from_secs_f64((utime + stime) as f64 / USER_HZ))
    }
}

fn read_capped(path: &Path, cap: u64) -> std::io::Result<String> {
    use std::io::Read;
    let mut out = String::new();
    std::fs::File::open(path)?
        .take(cap)
        .read_to_string(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn fake_tree_sensors_are_found_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        write(&sys, "class/thermal/thermal_zone0/temp", "45500\n");
        write(&sys, "class/thermal/thermal_zone0/type", "cpu-thermal\n");
        write(&sys, "class/thermal/cooling_device0/type", "fan\n");
        write(&sys, "class/hwmon/hwmon1/name", "coretemp\n");
        write(&sys, "class/hwmon/hwmon1/temp1_input", "61000\n");
        write(&sys, "class/hwmon/hwmon1/temp1_label", "Package id 0\n");
        write(
            &sys,
            "devices/system/cpu/cpu0/cpufreq/scaling_cur_freq",
            "1500000\n",
        );
        write(
            &sys,
            "devices/system/cpu/cpu1/cpufreq/scaling_cur_freq",
            "2500000\n",
        );
        write(&sys, "devices/system/cpu/cpufreq/policy0/x", "");
        let proc_self = dir.path().join("proc");
        write(
            &proc_self,
            "status",
            "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n",
        );
        write(
            &proc_self,
            "stat",
            "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0\n",
        );
        let (p, absent) = Probes::discover(&sys, &proc_self);
        assert!(absent.is_empty(), "{absent:?}");
        assert_eq!(
            p.temp_names(),
            ["thermal_zone0:cpu-thermal", "hwmon1:coretemp/Package id 0"]
        );
        assert_eq!(p.temps_c(), [Some(45.5), Some(61.0)]);
        assert_eq!(p.freq_mhz(), (Some(2000.0), Some(2500.0)));
        assert_eq!(p.memory_kib(), (Some(1024), Some(2048)));
        assert_eq!(p.cpu_time(), Some(Duration::from_secs(3)));
    }

    #[test]
    fn an_empty_machine_says_what_is_absent() {
        let dir = tempfile::tempdir().unwrap();
        let (p, absent) = Probes::discover(&dir.path().join("sys"), &dir.path().join("proc"));
        assert!(p.temps_c().is_empty());
        assert_eq!(p.freq_mhz(), (None, None));
        assert_eq!(p.memory_kib(), (None, None));
        let text = absent.join("; ");
        for word in ["thermal zones", "hwmon", "CPU frequency", "memory"] {
            assert!(text.contains(word), "{text}");
        }
    }
}
