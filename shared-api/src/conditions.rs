//! Status conditions (`metav1.Condition`), set the way Kubernetes tools expect: the transition
//! time changes only when the status does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Condition type: everything desired is in place.
pub const AVAILABLE: &str = "Available";
/// Condition type: work is under way.
pub const PROGRESSING: &str = "Progressing";
/// Condition type: something needs the administrator.
pub const DEGRADED: &str = "Degraded";
/// Condition type: the spec was accepted with warnings (as admission returned them).
pub const SPEC_WARNINGS: &str = "SpecWarnings";

/// A condition to set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted<'a> {
    /// Condition type.
    pub type_: &'a str,
    /// Whether it holds.
    pub status: bool,
    /// CamelCase reason.
    pub reason: &'a str,
    /// Message for a person.
    pub message: String,
}

/// Sets `wanted` in `conditions`, keeping the last transition time when the status is unchanged.
pub fn set(conditions: &mut Vec<Condition>, wanted: Wanted<'_>, generation: Option<i64>, now: Timestamp) {
    let status = if wanted.status { "True" } else { "False" };
    let existing = conditions.iter_mut().find(|c| c.type_ == wanted.type_);
    let transition = match &existing {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(now),
    };
    let new = Condition {
        type_: wanted.type_.to_owned(),
        status: status.to_owned(),
        reason: wanted.reason.to_owned(),
        message: wanted.message,
        observed_generation: generation,
        last_transition_time: transition,
    };
    match existing {
        Some(c) => *c = new,
        None => conditions.push(new),
    }
}

/// Whether the condition `type_` is present and `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions.iter().any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut c = Vec::new();
        let w = |status, msg: &str| Wanted {
            type_: DEGRADED,
            status,
            reason: "R",
            message: msg.into(),
        };
        set(&mut c, w(false, "a"), Some(1), at(0));
        set(&mut c, w(false, "b"), Some(2), at(10));
        assert_eq!(c.len(), 1);
        assert_eq!(
            (
                c[0].message.as_str(),
                c[0].last_transition_time.0,
                c[0].observed_generation
            ),
            ("b", at(0), Some(2))
        );
        set(&mut c, w(true, "c"), Some(2), at(20));
        assert_eq!(c[0].last_transition_time.0, at(20));
        assert!(is_true(&c, DEGRADED));
        assert!(!is_true(&c, AVAILABLE));
    }
}
