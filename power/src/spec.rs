//! Power sources named by a short string, for command lines and config files.

use std::path::{Path, PathBuf};

use crate::{PowerError, PowerSource};

/// A parsed power-source spec.
///
/// | spec | source |
/// | --- | --- |
/// | `rapl` | RAPL under `/sys/class/powercap` |
/// | `battery` / `battery:BAT0` | every system battery / the one named |
/// | `ina3221` / `ina3221:PATH` | INA3221 chips under `/sys/class/hwmon` / at PATH |
/// | `nvml` / `nvml:1` | NVIDIA GPU 0 / GPU 1 (cargo feature `nvml`) |
/// | `trace:FILE` | a CSV trace replayed in real time (see [`crate::trace`]) |
/// | `const:W` | always W watts |
#[derive(Clone, Debug, PartialEq)]
pub enum SourceSpec {
    /// RAPL powercap.
    Rapl,
    /// A battery, or all of them.
    Battery(Option<String>),
    /// INA3221 hwmon chips, at a path or the default root.
    Ina3221(Option<PathBuf>),
    /// An NVIDIA GPU by index.
    Nvml(u32),
    /// A CSV trace.
    Trace(PathBuf),
    /// A constant figure.
    Const(f64),
}

impl SourceSpec {
    /// Parses a spec; the error says what forms exist.
    pub fn parse(spec: &str) -> Result<Self, PowerError> {
        let bad = |message: &str| PowerError::Spec {
            spec: spec.to_owned(),
            message: message.to_owned(),
        };
        let (kind, arg) = match spec.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (spec, None),
        };
        let arg = arg.map(str::trim);
        Ok(match (kind.trim(), arg) {
            ("rapl", None) => Self::Rapl,
            ("rapl", Some(_)) => return Err(bad("rapl takes no argument")),
            ("battery", None) => Self::Battery(None),
            ("battery", Some(n)) if !n.is_empty() => Self::Battery(Some(n.to_owned())),
            ("ina3221", None) => Self::Ina3221(None),
            ("ina3221", Some(p)) if !p.is_empty() => Self::Ina3221(Some(PathBuf::from(p))),
            ("nvml", None) => Self::Nvml(0),
            ("nvml", Some(i)) => Self::Nvml(
                i.parse()
                    .map_err(|_| bad("the GPU index is a number, as nvidia-smi shows it"))?,
            ),
            ("trace", Some(f)) if !f.is_empty() => Self::Trace(PathBuf::from(f)),
            ("trace", _) => return Err(bad("trace needs a file: trace:FILE")),
            ("const", Some(w)) => {
                let w: f64 = w
                    .parse()
                    .map_err(|_| bad("const needs a number of watts: const:15"))?;
                if !w.is_finite() || w < 0.0 {
                    return Err(bad("watts must be a finite number, zero or more"));
                }
                Self::Const(w)
            }
            ("const", None) => return Err(bad("const needs a number of watts: const:15")),
            (_, Some("")) => return Err(bad("nothing after ':'")),
            _ => return Err(bad("unknown kind")),
        })
    }

    /// Opens the source at the kernel's usual places.
    pub fn open(&self) -> Result<Box<dyn PowerSource>, PowerError> {
        Ok(match self {
            Self::Rapl => Box::new(crate::rapl::RaplSource::open(Path::new(
                crate::rapl::DEFAULT_ROOT,
            ))?),
            Self::Battery(name) => Box::new(crate::battery::BatterySource::open(
                Path::new(crate::battery::DEFAULT_ROOT),
                name.as_deref(),
            )?),
            Self::Ina3221(path) => Box::new(crate::ina3221::Ina3221Source::open(
                path.as_deref()
                    .unwrap_or(Path::new(crate::ina3221::DEFAULT_ROOT)),
            )?),
            #[cfg(feature = "nvml")]
            Self::Nvml(i) => Box::new(crate::nvml::NvmlSource::open(*i)?),
            #[cfg(not(feature = "nvml"))]
            Self::Nvml(_) => {
                return Err(PowerError::FeatureDisabled {
                    what: "the nvml power source".into(),
                    feature: "nvml".into(),
                })
            }
            Self::Trace(path) => Box::new(crate::trace::TraceSource::open(path)?),
            Self::Const(w) => Box::new(crate::constant::ConstantSource::new(*w)?),
        })
    }
}

impl std::str::FromStr for SourceSpec {
    type Err = PowerError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Parses and opens a spec in one step (see [`SourceSpec`]).
pub fn open(spec: &str) -> Result<Box<dyn PowerSource>, PowerError> {
    SourceSpec::parse(spec)?.open()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_form_parses() {
        let cases = [
            ("rapl", SourceSpec::Rapl),
            ("battery", SourceSpec::Battery(None)),
            ("battery:BAT1", SourceSpec::Battery(Some("BAT1".into()))),
            ("ina3221", SourceSpec::Ina3221(None)),
            (
                "ina3221:/sys/class/hwmon/hwmon3",
                SourceSpec::Ina3221(Some("/sys/class/hwmon/hwmon3".into())),
            ),
            ("nvml", SourceSpec::Nvml(0)),
            ("nvml:2", SourceSpec::Nvml(2)),
            (
                "trace:/tmp/a:b.csv",
                SourceSpec::Trace("/tmp/a:b.csv".into()),
            ),
            ("const:12.5", SourceSpec::Const(12.5)),
        ];
        for (text, want) in cases {
            assert_eq!(SourceSpec::parse(text).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn bad_specs_are_explained() {
        for (text, want) in [
            ("solar", "unknown kind"),
            ("const:lots", "number of watts"),
            ("const:-3", "zero or more"),
            ("nvml:first", "GPU index"),
            ("trace:", "trace:FILE"),
            ("battery:", "nothing after"),
            ("rapl:0", "no argument"),
        ] {
            let err = SourceSpec::parse(text).unwrap_err().to_string();
            assert!(
                err.contains(want) && err.contains("const:WATTS"),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn const_and_trace_open_from_a_spec() {
        let mut s = open("const:7").unwrap();
        assert_eq!(s.sample().unwrap().watts, Some(7.0));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        std::fs::write(&p, "t_s,watts\n0,3\n").unwrap();
        let mut s = open(&format!("trace:{}", p.display())).unwrap();
        assert_eq!(s.sample().unwrap().watts, Some(3.0));
    }

    #[cfg(not(feature = "nvml"))]
    #[test]
    fn nvml_without_the_feature_names_the_feature() {
        let err = open("nvml").unwrap_err().to_string();
        assert!(err.contains("feature `nvml`"), "{err}");
    }
}
