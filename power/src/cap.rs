//! Hardware power caps: what a governor asks of a device that can lower its own draw.
//!
//! [`PowerCap`] is the seam between a governor (splitstream's edge, POLCA style) and
//! the hardware. `nvml::NvmlCap` (feature `nvml`) implements it for NVIDIA GPUs, by
//! power limit or by locked clocks; tests implement it with a recorder. A cap is a
//! fraction of the hardware's full setting, so one governor config fits any GPU.

/// Why a cap could not be applied or restored.
#[derive(Debug, thiserror::Error)]
pub enum CapError {
    /// The hardware refuses this user: caps need root (or CAP_SYS_ADMIN).
    #[error("{what} needs root: {hint}")]
    Permission {
        /// What was refused.
        what: String,
        /// What to do.
        hint: String,
    },
    /// The hardware cannot do this kind of cap (a consumer GPU without locked clocks,
    /// a GPU without a settable power limit).
    #[error("{what} is not supported by {device}")]
    NotSupported {
        /// What was asked.
        what: String,
        /// The device.
        device: String,
    },
    /// Anything else the driver reported.
    #[error("{0}")]
    Driver(String),
}

impl CapError {
    /// Whether retrying cannot help (permission or support): a governor logs it once
    /// and keeps its software caps.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Permission { .. } | Self::NotSupported { .. })
    }
}

/// A device whose power draw can be capped and restored.
pub trait PowerCap: Send {
    /// Caps the device at `fraction` (in (0, 1]) of its full setting; returns what was
    /// set, in words, for logs (`power limit 280 W (was 700 W)`). Applying again
    /// replaces the previous cap.
    fn apply(&mut self, fraction: f64) -> Result<String, CapError>;
    /// Puts back the setting found before the first [`PowerCap::apply`]. Does nothing
    /// when no cap is applied.
    fn restore(&mut self) -> Result<(), CapError>;
    /// The device, for logs.
    fn describe(&self) -> String;
}

impl std::fmt::Debug for dyn PowerCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PowerCap({})", self.describe())
    }
}

impl<C: PowerCap + ?Sized> PowerCap for Box<C> {
    fn apply(&mut self, fraction: f64) -> Result<String, CapError> {
        (**self).apply(fraction)
    }
    fn restore(&mut self) -> Result<(), CapError> {
        (**self).restore()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}
