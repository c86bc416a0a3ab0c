//! Pure helpers for status conditions: a condition's `lastTransitionTime` moves only when its
//! status flips, so rewriting the same status never re-triggers a controller.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition as a controller wants it, before timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired<'a> {
    pub type_: &'a str,
    pub status: bool,
    pub reason: &'a str,
    pub message: String,
}

/// Returns `existing` with `desired` merged in, ordered by type. `now` is used only when the
/// condition is new or its status flips.
pub fn merge(
    existing: &[Condition],
    desired: Desired<'_>,
    generation: Option<i64>,
    now: Time,
) -> Vec<Condition> {
    let status = if desired.status { "True" } else { "False" };
    let previous = existing.iter().find(|c| c.type_ == desired.type_);
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => now,
    };
    let mut out: Vec<Condition> = existing
        .iter()
        .filter(|c| c.type_ != desired.type_)
        .cloned()
        .collect();
    out.push(Condition {
        type_: desired.type_.to_string(),
        status: status.to_string(),
        reason: desired.reason.to_string(),
        message: desired.message,
        observed_generation: generation,
        last_transition_time,
    });
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The paths where two statuses differ, for the log line of a status write: top-level fields
/// by name, list items by index (`members.1.ready`), at most `limit` of them.
pub fn changed_paths(
    a: &impl serde::Serialize,
    b: &impl serde::Serialize,
    limit: usize,
) -> Vec<String> {
    fn walk(a: &serde_json::Value, b: &serde_json::Value, path: String, out: &mut Vec<String>) {
        use serde_json::Value::{Array, Object};
        match (a, b) {
            (Object(x), Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let (u, v) = (
                        x.get(k).unwrap_or(&serde_json::Value::Null),
                        y.get(k).unwrap_or(&serde_json::Value::Null),
                    );
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(u, v, p, out);
                }
            }
            (Array(x), Array(y)) if x.len() == y.len() => {
                for (i, (u, v)) in x.iter().zip(y).enumerate() {
                    walk(u, v, format!("{path}.{i}"), out);
                }
            }
            _ if a != b => out.push(path),
            _ => {}
        }
    }
    let (a, b) = (
        serde_json::to_value(a).unwrap_or_default(),
        serde_json::to_value(b).unwrap_or_default(),
    );
    let mut out = Vec::new();
    walk(&a, &b, String::new(), &mut out);
    if out.len() > limit {
        let more = out.len() - limit;
        out.truncate(limit);
        out.push(format!("{more} more"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).expect("valid timestamp"))
    }

    fn valid(status: bool, msg: &str) -> Desired<'static> {
        Desired {
            type_: "Valid",
            status,
            reason: if status { "Valid" } else { "Duplicate" },
            message: msg.into(),
        }
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let first = merge(&[], valid(true, "ok"), Some(1), at(10));
        assert_eq!(first[0].last_transition_time, at(10));
        let same = merge(&first, valid(true, "still ok"), Some(2), at(20));
        assert_eq!(same[0].last_transition_time, at(10));
        assert_eq!(same[0].message, "still ok");
        let flipped = merge(&same, valid(false, "dup"), Some(3), at(30));
        assert_eq!(flipped[0].last_transition_time, at(30));
        assert_eq!(flipped[0].status, "False");
    }

    #[test]
    fn other_conditions_are_kept_in_type_order() {
        let ready = Desired {
            type_: "Ready",
            status: true,
            reason: "Ready",
            message: String::new(),
        };
        let c = merge(
            &merge(&[], valid(true, ""), None, at(1)),
            ready,
            None,
            at(2),
        );
        let types: Vec<&str> = c.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Ready", "Valid"]);
    }

    #[test]
    fn changed_paths_name_the_leaves_that_differ() {
        let a = serde_json::json!({"phase": "Upgrading", "members": [{"pod": "db-0", "ready": true}, {"pod": "db-1", "ready": true}]});
        let b = serde_json::json!({"phase": "Upgrading", "message": "x", "members": [{"pod": "db-0", "ready": true}, {"pod": "db-1", "ready": false}]});
        assert_eq!(
            super::changed_paths(&a, &b, 5),
            ["members.1.ready", "message"]
        );
        assert_eq!(super::changed_paths(&a, &a, 5), Vec::<String>::new());
        assert_eq!(
            super::changed_paths(&a, &b, 1),
            ["members.1.ready", "1 more"]
        );
        // A list that grew is one change.
        let c = serde_json::json!({"phase": "Upgrading", "members": []});
        assert_eq!(super::changed_paths(&a, &c, 5), ["members"]);
    }
}
