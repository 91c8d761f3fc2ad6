//! A source that always reads the same figure: for machines without a power meter
//! (the policy still needs a number) and for tests.

use std::time::Instant;

use crate::{PowerError, PowerSample, PowerSource};

/// Always `watts`; `at` is the time since it was made.
#[derive(Clone, Debug)]
pub struct ConstantSource {
    watts: f64,
    start: Instant,
}

impl ConstantSource {
    /// A source that reads `watts`. Errors unless it is a finite, non-negative number.
    pub fn new(watts: f64) -> Result<Self, PowerError> {
        if !watts.is_finite() || watts < 0.0 {
            return Err(PowerError::Spec {
                spec: format!("const:{watts}"),
                message: "watts must be a finite number, zero or more".into(),
            });
        }
        Ok(Self {
            watts,
            start: Instant::now(),
        })
    }
}

impl PowerSource for ConstantSource {
    fn sample(&mut self) -> Result<PowerSample, PowerError> {
        Ok(PowerSample {
            watts: Some(self.watts),
            battery: None,
            at: crate::since(self.start),
        })
    }

    fn describe(&self) -> String {
        format!("constant {} W", self.watts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_reads_its_figure_with_advancing_time() {
        let mut s = ConstantSource::new(12.5).unwrap();
        let a = s.sample().unwrap();
        let b = s.sample().unwrap();
        assert_eq!((a.watts, b.watts), (Some(12.5), Some(12.5)));
        assert!(b.at >= a.at);
        assert!(ConstantSource::new(-1.0).is_err());
        assert!(ConstantSource::new(f64::NAN).is_err());
    }
}
