//! An evaluation folded into `status.autoscaling` (pure; both backends write it this way).

use wukong_api::Quantity;
use wukong_api::autoscaling::{AutoscalingMode, AutoscalingStatus, Policy, ScalingChange, Target};

use crate::recommend::{Change, Evaluation};

/// Writes `ev`, evaluated at wall-clock time `now` (RFC 3339), into `status`. In `Auto` mode
/// the changes go into the target (the owned fields of the desired state) and the last
/// change; `Recommend` mode writes the recommendation only and drops any target. Returns
/// whether the target changed (the backend then applies the new desired state).
pub fn record(status: &mut AutoscalingStatus, policy: &Policy, ev: &Evaluation, now: &str) -> bool {
    status.mode = Some(policy.mode);
    status.last_evaluation = Some(now.to_string());
    if ev.metrics.is_some() {
        status.metrics = ev.metrics.clone();
    }
    status.recommendation = Some(ev.recommendation.clone());
    status.reason = (!ev.reasons.is_empty()).then(|| ev.reasons.join("; "));
    if policy.mode == AutoscalingMode::Recommend {
        status.target = None;
        return false;
    }
    if ev.changes.is_empty() {
        return false;
    }
    let target = status.target.get_or_insert_with(Target::default);
    for c in &ev.changes {
        set(target, c);
    }
    status.last_change = ev.changes.last().map(|c| ScalingChange {
        time: now.to_string(),
        resource: c.resource.clone(),
        from: c.show(c.from),
        to: c.show(c.to),
        reason: c.reason.clone(),
    });
    true
}

fn set(target: &mut Target, c: &Change) {
    match c.resource.as_str() {
        "cpu" => target.cpu = Some(c.to as u32),
        "memory" => target.memory = Some(Quantity::from_bytes(c.to)),
        other => {
            if let Some(disk) = other.strip_prefix("disk/") {
                target
                    .disks
                    .insert(disk.to_string(), Quantity::from_bytes(c.to));
            }
        }
    }
}

/// The condition a resource sets that should grow but is at its maximum.
pub const LIMITED: &str = "AutoscalingLimited";

/// The `AutoscalingLimited` condition an evaluation calls for, as (status, reason, message):
/// true while a resource is held at its maximum; false once none is, but only for a VM that
/// `has` the condition already; nothing when the evaluation could not tell (no reading).
pub fn limited(ev: &Evaluation, has: bool) -> Option<(bool, &'static str, String)> {
    let held: Vec<&str> = ev
        .reasons
        .iter()
        .filter(|x| x.contains("at maxSize"))
        .map(String::as_str)
        .collect();
    if !held.is_empty() {
        Some((true, "AtMaxSize", held.join("; ")))
    } else if has && ev.metrics.is_some() {
        Some((
            false,
            "WithinBounds",
            "every owned resource can still grow".into(),
        ))
    } else {
        None
    }
}

/// The Event message of one change.
pub fn describe(c: &Change) -> String {
    format!(
        "autoscaler: {} {} -> {}: {}",
        c.resource,
        c.show(c.from),
        c.show(c.to),
        c.reason
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use wukong_api::autoscaling::AutoscalingSpec;

    fn ev() -> Evaluation {
        Evaluation {
            recommendation: Target {
                cpu: Some(2),
                ..Default::default()
            },
            changes: vec![Change {
                resource: "cpu".into(),
                from: 1,
                to: 2,
                reason: "utilisation 100 %".into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn auto_sets_the_target_and_the_last_change() {
        let p = Policy::of(&AutoscalingSpec::default());
        let mut s = AutoscalingStatus::default();
        assert!(record(&mut s, &p, &ev(), "t1"));
        assert_eq!(s.target.as_ref().unwrap().cpu, Some(2));
        let last = s.last_change.as_ref().unwrap();
        assert_eq!((last.from.as_str(), last.to.as_str()), ("1", "2"));
        assert!(!record(&mut s, &p, &Evaluation::default(), "t2"));
        assert_eq!(s.target.as_ref().unwrap().cpu, Some(2), "kept");
        assert_eq!(s.last_evaluation.as_deref(), Some("t2"));
    }

    #[test]
    fn recommend_changes_nothing() {
        let p = Policy::of(&AutoscalingSpec {
            mode: Some(AutoscalingMode::Recommend),
            ..Default::default()
        });
        let mut s = AutoscalingStatus {
            target: Some(Target::default()),
            ..Default::default()
        };
        assert!(!record(&mut s, &p, &ev(), "t"));
        assert!(s.target.is_none() && s.last_change.is_none());
        assert_eq!(s.recommendation.as_ref().unwrap().cpu, Some(2));
    }
}
