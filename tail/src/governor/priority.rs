//! Which sessions the governor caps first.
//!
//! The transport's `Hello` has no priority field, so priority comes from two places:
//! - the edge's config, `[power] low_priority = ["cam-7", ...]`, by authenticated
//!   device id: the operator decides;
//! - a device may volunteer to be low priority by listing the capability extension
//!   `priority=low` in its `Hello`. A device can only lower its own priority this way,
//!   never raise it, so the claim needs no trust.
//!
//! Everything else is high priority: capped only when the edge sheds.

/// A session's priority.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Priority {
    /// Capped above T1.
    Low,
    /// Capped only above T2 (by the GPU cap; its split work still runs).
    #[default]
    High,
}

/// The capability extension a device lists to ask for low priority.
pub const LOW_PRIORITY_EXTENSION: &str = "priority=low";

impl Priority {
    /// The priority of `device_id`, given its capability extensions and the config's
    /// low-priority list.
    pub fn of(device_id: &str, extensions: &[String], low_priority: &[String]) -> Self {
        if low_priority.iter().any(|d| d == device_id)
            || extensions.iter().any(|e| e == LOW_PRIORITY_EXTENSION)
        {
            Priority::Low
        } else {
            Priority::High
        }
    }

    /// `low` or `high`.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::High => "high",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_list_and_volunteers_are_low_everyone_else_high() {
        let list = vec!["cam-7".to_owned()];
        assert_eq!(Priority::of("cam-7", &[], &list), Priority::Low);
        assert_eq!(
            Priority::of("cam-1", &["priority=low".into()], &list),
            Priority::Low
        );
        assert_eq!(
            Priority::of("cam-1", &["priority=high".into()], &list),
            Priority::High
        );
        assert_eq!(Priority::of("cam-1", &[], &[]), Priority::High);
    }
}
