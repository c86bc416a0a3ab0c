//! GitOps health. Flux and Argo CD read a resource's health without custom code through kstatus:
//! `status.observedGeneration` equal to `metadata.generation`, then the abnormal-true pair of
//! conditions — `Reconciling` (work left to do: InProgress) and `Stalled` (stopped until a
//! person acts: Failed) — and, when neither is True, `Ready` (False reads as InProgress, True as
//! Current). Each kind derives the pair here from the status its controller already computed,
//! so the verdict never disagrees with the phase; `Ready` stays each controller's own and is
//! True whenever the pair is quiet and the resource is up. Pure: no client, time is an input.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{
    ClusterStatus, ClusterTask, DatabaseInstanceStatus, InstancePhase, RequestPhase, UpgradeAction,
    UpgradeOutcome, UpgradeRequestStatus, UpgradeResult,
};
use crate::status::{self, Desired};

/// Where a resource stands for a GitOps tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Reconciled: nothing left to do.
    Current,
    /// Work in progress (a build, an upgrade, a step waiting on something that will pass).
    Reconciling { reason: String, message: String },
    /// Stopped until a person acts (a failed upgrade, a spec Baton refuses, a second writer).
    Stalled { reason: String, message: String },
}

fn reconciling(reason: &str, message: impl Into<String>) -> Health {
    Health::Reconciling {
        reason: reason.into(),
        message: message.into(),
    }
}

fn stalled(reason: &str, message: impl Into<String>) -> Health {
    Health::Stalled {
        reason: reason.into(),
        message: message.into(),
    }
}

/// `conditions` with `Reconciling` and `Stalled` set from `health` (both present, True or
/// False, so a tool never reads a stale one).
pub fn apply(
    conditions: &[Condition],
    health: &Health,
    generation: Option<i64>,
    now: Time,
) -> Vec<Condition> {
    let (rec, stall) = match health {
        Health::Current => (None, None),
        Health::Reconciling { reason, message } => (Some((reason, message)), None),
        Health::Stalled { reason, message } => (None, Some((reason, message))),
    };
    let mut out = conditions.to_vec();
    for (type_, set, idle) in [
        ("Reconciling", rec, "Reconciled"),
        ("Stalled", stall, "NotStalled"),
    ] {
        out = status::merge(
            &out,
            Desired {
                type_,
                status: set.is_some(),
                reason: set.map_or(idle, |(r, _)| r.as_str()),
                message: set.map(|(_, m)| m.clone()).unwrap_or_default(),
            },
            generation,
            now.clone(),
        );
    }
    out
}

fn false_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    status::find(conditions, type_).filter(|c| c.status == "False")
}

/// The spec names an older version only because an UpgradeRequest moved the target past it:
/// the database is healthy, and the drift is reported as `VersionApplied=False`, not a failure.
fn applied_by_request(last: Option<&UpgradeOutcome>, running: Option<&str>) -> bool {
    last.is_some_and(|l| {
        l.request.is_some()
            && l.result == UpgradeResult::Succeeded
            && Some(l.target_version.as_str()) == running
    })
}

/// A DatabaseInstance: building and upgrading reconcile; an upgrade stopped in Error, a spec
/// Baton refuses, unusable credentials or TLS, and a second writer stall.
pub fn instance(s: &DatabaseInstanceStatus) -> Health {
    let message = s.message.clone().unwrap_or_default();
    if s.phase == Some(InstancePhase::Error) {
        let reason = status::find(&s.conditions, "Degraded")
            .filter(|c| c.status == "True")
            .map_or("Error", |c| c.reason.as_str());
        return stalled(reason, message);
    }
    if let Some(c) = status::find(&s.conditions, "Degraded").filter(|c| c.status == "True") {
        return stalled(&c.reason, c.message.clone());
    }
    for type_ in ["CredentialsReady", "TLSReady"] {
        if let Some(c) = false_condition(&s.conditions, type_) {
            return stalled(&c.reason, c.message.clone());
        }
    }
    if let Some(c) = false_condition(&s.conditions, "VersionApplied") {
        match c.reason.as_str() {
            // Waits on something that passes (a standby catching up, the upgrade in flight).
            "PreCheckFailed" | "UpgradeInFlight" => {
                return reconciling(&c.reason, c.message.clone());
            }
            "DowngradeRefused"
                if applied_by_request(s.last_upgrade.as_ref(), s.version.as_deref()) => {}
            _ => return stalled(&c.reason, c.message.clone()),
        }
    }
    match s.phase.unwrap_or_default() {
        InstancePhase::Building => reconciling("Building", message),
        InstancePhase::Upgrading => reconciling("Upgrading", message),
        InstancePhase::Active | InstancePhase::Paused | InstancePhase::Error => {
            // kstatus reads a False `Ready` as InProgress: say why (a primary that does not
            // lead first, then a member Baton is bringing back), rather than leave the pair
            // quiet.
            if s.phase == Some(InstancePhase::Active)
                && let Some(ready) = false_condition(&s.conditions, "Ready")
            {
                let c = false_condition(&s.conditions, "PrimaryAvailable").unwrap_or(ready);
                return reconciling(&c.reason, c.message.clone());
            }
            for (type_, reason) in [("CredentialsReady", "Changing"), ("TLSReady", "Reloading")] {
                if let Some(c) = status::find(&s.conditions, type_).filter(|c| c.reason == reason) {
                    return reconciling(reason, c.message.clone());
                }
            }
            Health::Current
        }
    }
}

/// A Cluster: forming and upgrading reconcile; a stopped upgrade, a spec Baton refuses and a
/// cluster formed otherwise stall.
pub fn cluster(s: &ClusterStatus, paused: bool) -> Health {
    if paused {
        return Health::Current;
    }
    if let Some(why) = s.upgrade.as_ref().and_then(|u| u.failed.clone()) {
        return stalled("UpgradeFailed", why);
    }
    if let Some(c) = false_condition(&s.conditions, "Ready").filter(|c| {
        matches!(
            c.reason.as_str(),
            "DatastoreUnsupported" | "VersionNotInCatalog" | "FormationConflict"
        )
    }) {
        return stalled(&c.reason, c.message.clone());
    }
    if let Some(c) = false_condition(&s.conditions, "VersionApplied")
        .filter(|c| c.reason != "Upgrading")
        .filter(|_| !applied_by_request(s.last_upgrade.as_ref(), s.version.as_deref()))
    {
        return stalled(&c.reason, c.message.clone());
    }
    if s.task != Some(ClusterTask::None) {
        let reason = match s.task {
            Some(ClusterTask::UpgradingCluster) => "Upgrading",
            _ => "Building",
        };
        return reconciling(reason, s.message.clone().unwrap_or_default());
    }
    if let Some(c) = false_condition(&s.conditions, "Ready") {
        // Formed and idle, but a node or a shard is not right yet: Baton is repairing it.
        return reconciling(&c.reason, c.message.clone());
    }
    Health::Current
}

/// Whether an UpgradeRequest has done what its action asks: it finished (whatever became of
/// the targets it was asked to stop), or it holds in AwaitingCommit as action Upgrade asks.
pub fn request_done(phase: RequestPhase, action: UpgradeAction) -> bool {
    match phase {
        RequestPhase::Succeeded | RequestPhase::RolledBack | RequestPhase::Cancelled => true,
        RequestPhase::AwaitingCommit => action == UpgradeAction::Upgrade,
        _ => false,
    }
}

/// An UpgradeRequest: a job that failed stalls it; one that has done what its action asks is
/// current; anything else is in progress.
pub fn request(s: &UpgradeRequestStatus, action: UpgradeAction) -> Health {
    let phase = s.phase.unwrap_or_default();
    let message = s.message.clone().unwrap_or_default();
    match phase {
        RequestPhase::Failed | RequestPhase::PartiallySucceeded => {
            stalled(&format!("{phase:?}"), s.error_messages.join("; "))
        }
        p if request_done(p, action) => Health::Current,
        p => reconciling(&format!("{p:?}"), message),
    }
}

/// A catalog entry: one that fails its checks stalls (a person must fix the catalog).
pub fn catalog_entry(valid: bool, reason: &str, message: &str) -> Health {
    if valid {
        Health::Current
    } else {
        stalled(reason, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).expect("valid"))
    }

    fn cond(type_: &str, status: &str, reason: &str) -> serde_json::Value {
        json!({"type": type_, "status": status, "reason": reason, "message": format!("{type_} {reason}"),
               "lastTransitionTime": "2026-01-01T00:00:00Z"})
    }

    fn inst(v: serde_json::Value) -> DatabaseInstanceStatus {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn an_instance_reconciles_while_building_or_upgrading_and_stalls_when_a_person_must_act() {
        let active = inst(json!({"phase": "Active", "version": "7.0.15",
            "conditions": [cond("Ready", "True", "MembersReady"), cond("VersionApplied", "True", "Applied")]}));
        assert_eq!(instance(&active), Health::Current);
        let upgrading = inst(json!({"phase": "Upgrading", "message": "6.2.14 → 7.0.15"}));
        assert!(
            matches!(instance(&upgrading), Health::Reconciling { reason, .. } if reason == "Upgrading")
        );
        let error = inst(
            json!({"phase": "Error", "message": "member db-1 did not start",
            "conditions": [cond("Degraded", "True", "UpgradeFailed")]}),
        );
        assert!(
            matches!(instance(&error), Health::Stalled { reason, message } if reason == "UpgradeFailed" && message.contains("db-1"))
        );
        let waits = inst(
            json!({"phase": "Active", "conditions": [cond("VersionApplied", "False", "PreCheckFailed")]}),
        );
        assert!(matches!(instance(&waits), Health::Reconciling { .. }));
        let offline = inst(
            json!({"phase": "Active", "conditions": [cond("VersionApplied", "False", "PathNeedsOffline")]}),
        );
        assert!(matches!(instance(&offline), Health::Stalled { .. }));
        let secret = inst(
            json!({"phase": "Active", "conditions": [cond("CredentialsReady", "False", "ChangeRefused")]}),
        );
        assert!(matches!(instance(&secret), Health::Stalled { .. }));
        let rotating = inst(
            json!({"phase": "Active", "conditions": [cond("CredentialsReady", "True", "Changing")]}),
        );
        assert!(matches!(instance(&rotating), Health::Reconciling { .. }));
        // Without a leading primary, the GitOps tool shows why, not only that a member is down.
        let down = inst(json!({"phase": "Active", "conditions": [
            cond("Ready", "False", "MembersNotReady"),
            cond("PrimaryAvailable", "False", "PrimaryDown")]}));
        assert!(
            matches!(instance(&down), Health::Reconciling { reason, message } if reason == "PrimaryDown" && message == "PrimaryAvailable PrimaryDown")
        );
        let standby = inst(json!({"phase": "Active", "conditions": [
            cond("Ready", "False", "MembersNotReady"),
            cond("PrimaryAvailable", "True", "Leading")]}));
        assert!(
            matches!(instance(&standby), Health::Reconciling { reason, .. } if reason == "MembersNotReady")
        );
    }

    #[test]
    fn a_spec_left_behind_by_a_request_is_drift_not_a_failure() {
        let mut s = inst(json!({"phase": "Active", "version": "7.0.15",
            "conditions": [cond("VersionApplied", "False", "DowngradeRefused")],
            "lastUpgrade": {"request": "ns/r", "sourceVersion": "6.2.14", "targetVersion": "7.0.15",
                            "result": "Succeeded"}}));
        assert_eq!(instance(&s), Health::Current);
        s.last_upgrade = None;
        assert!(
            matches!(instance(&s), Health::Stalled { reason, .. } if reason == "DowngradeRefused")
        );
    }

    #[test]
    fn a_request_is_current_once_it_did_what_its_action_asks() {
        let r = |phase: &str| -> UpgradeRequestStatus {
            serde_json::from_value(json!({"phase": phase, "errorMessages": ["db: it is paused"]}))
                .unwrap()
        };
        for p in ["Succeeded", "RolledBack", "Cancelled"] {
            assert_eq!(
                request(&r(p), UpgradeAction::UpgradeAutoCommit),
                Health::Current,
                "{p}"
            );
        }
        assert_eq!(
            request(&r("AwaitingCommit"), UpgradeAction::Upgrade),
            Health::Current
        );
        assert!(matches!(
            request(&r("Running"), UpgradeAction::Commit),
            Health::Reconciling { .. }
        ));
        assert!(matches!(
            request(&r("Pending"), UpgradeAction::UpgradeAutoCommit),
            Health::Reconciling { .. }
        ));
        for p in ["Failed", "PartiallySucceeded"] {
            assert!(
                matches!(request(&r(p), UpgradeAction::UpgradeAutoCommit),
                Health::Stalled { message, .. } if message == "db: it is paused"),
                "{p}"
            );
        }
    }

    #[test]
    fn a_cluster_stalls_on_a_failed_upgrade_and_reconciles_while_forming() {
        let c = |v: serde_json::Value| -> ClusterStatus { serde_json::from_value(v).unwrap() };
        let ok = c(json!({"task": "None", "conditions": [cond("Ready", "True", "ClusterOk")]}));
        assert_eq!(cluster(&ok, false), Health::Current);
        let forming =
            c(json!({"task": "Building", "conditions": [cond("Ready", "False", "Forming")]}));
        assert!(
            matches!(cluster(&forming, false), Health::Reconciling { reason, .. } if reason == "Building")
        );
        let conflict = c(
            json!({"task": "Building", "conditions": [cond("Ready", "False", "FormationConflict")]}),
        );
        assert!(matches!(cluster(&conflict, false), Health::Stalled { .. }));
        assert_eq!(
            cluster(&conflict, true),
            Health::Current,
            "paused: Baton does nothing"
        );
    }

    #[test]
    fn apply_sets_both_conditions_and_moves_time_only_on_a_flip() {
        let c = apply(&[], &Health::Current, Some(3), at(10));
        let get = |c: &[Condition], t: &str| status::find(c, t).cloned().unwrap();
        assert_eq!(get(&c, "Reconciling").status, "False");
        assert_eq!(get(&c, "Stalled").status, "False");
        let c2 = apply(&c, &stalled("UpgradeFailed", "why"), Some(4), at(20));
        assert_eq!(get(&c2, "Stalled").status, "True");
        assert_eq!(get(&c2, "Stalled").last_transition_time, at(20));
        assert_eq!(get(&c2, "Reconciling").last_transition_time, at(10));
    }
}
