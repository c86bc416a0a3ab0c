//! What an UpgradeRequest would do to one target, decided from what the API server reports now
//! and changing nothing: whether the request would accept it (the same rules as the request
//! controller), the path and the strategy with the outage to expect, the order of its steps,
//! and the pre-checks the members pass or fail as their status shows them. Pure: the request
//! controller reads the objects for a request with `spec.dryRun` and records the verdict.

use serde::Serialize;

use crate::controller::upgrade_request::jobs;
use crate::crd::{
    Cluster, DatabaseInstance, DatastoreVersion, MemberRole, PlanCheck, PrimaryUpdateMethod,
    TargetPlan, UpgradeRequestSpec, UpgradeType,
};
use crate::engine::{self, Strategy};
use crate::version::Version;

/// One pre-check and what it found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// The verdict of a dry run over one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DryRun {
    pub kind: String,
    pub target: String,
    /// The version it runs now.
    pub source_version: Option<String>,
    /// The version it would run.
    pub target_version: Option<String>,
    /// `Minor`, `Major`, `Hotfix`, or `Switchover` (no version change).
    pub path: Option<String>,
    /// How the members would be moved, in words.
    pub strategy: String,
    /// The outage to expect: `none` (writes pause only for a switchover) or what goes down.
    pub outage: String,
    /// The steps, in the order Baton would take them.
    pub steps: Vec<String>,
    pub checks: Vec<Check>,
    /// Every check passed: a request created now would start on this target.
    pub would_start: bool,
    /// The step is an offline hop: its own check (pg_upgrade --check) runs in a pod.
    #[serde(skip)]
    pub offline: bool,
}

impl DryRun {
    /// The job's record of this verdict (`status.jobs[].plan`), with the path's hops.
    pub fn plan(&self, hops: Vec<String>) -> TargetPlan {
        TargetPlan {
            source_version: self.source_version.clone(),
            path: hops,
            kind: self.path.clone(),
            strategy: self.strategy.clone(),
            outage: self.outage.clone(),
            steps: self.steps.clone(),
            checks: self
                .checks
                .iter()
                .map(|c| PlanCheck {
                    name: c.name.clone(),
                    passed: c.passed,
                    detail: c.detail.clone(),
                })
                .collect(),
            would_start: self.would_start,
        }
    }

    /// Adds a check's verdict.
    pub fn add(&mut self, name: &str, result: Result<String, String>) {
        self.checks.push(check(name, result));
        self.would_start = self.checks.iter().all(|c| c.passed);
    }

    /// The first check that failed, in words.
    pub fn refusal(&self) -> Option<String> {
        self.checks
            .iter()
            .find(|c| !c.passed)
            .map(|c| c.detail.clone())
    }
}

/// The request's own verdict on the target.
fn request_check(validated: &Result<jobs::Plan, String>) -> Check {
    check(
        "request",
        validated
            .as_ref()
            .map(|_| "the request would accept this target".to_string())
            .map_err(Clone::clone),
    )
}

fn check(name: &str, result: Result<String, String>) -> Check {
    let (passed, detail) = match result {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    Check {
        name: name.into(),
        passed,
        detail,
    }
}

/// The dry run of `spec` over instance `inst`.
pub fn instance(
    spec: &UpgradeRequestSpec,
    inst: &DatabaseInstance,
    catalog: &[DatastoreVersion],
) -> DryRun {
    let name = inst.metadata.name.clone().unwrap_or_default();
    let status = inst.status.clone().unwrap_or_default();
    let validated = jobs::validate(spec, inst, catalog);
    let mut checks = vec![request_check(&validated)];
    let primary = status.primary.clone().unwrap_or_default();
    let policy = &inst.spec.upgrade_policy;
    checks.extend(member_checks(&status, policy, &primary));
    let plan = validated.ok();
    let shape = Shape {
        offline: offline_step(spec, inst, catalog),
        single: inst.spec.replicas < 2,
        restart: policy.primary_update_method == PrimaryUpdateMethod::Restart,
        second_switch: spec.second_switch || policy.second_switch,
    };
    let (strategy, outage) = shape.how(spec, &status);
    let standbys: Vec<String> = status
        .members
        .iter()
        .filter(|m| m.pod != primary)
        .map(|m| m.pod.clone())
        .collect();
    let steps = shape.steps(spec, plan.as_ref(), &primary, &standbys);
    let would_start = checks.iter().all(|c| c.passed);
    DryRun {
        kind: "DatabaseInstance".into(),
        target: name,
        source_version: status.version.clone(),
        target_version: plan.as_ref().map(|p| p.target.clone()),
        path: plan.as_ref().map(|p| match p.kind {
            Some(k) if p.hops.len() > 1 => {
                format!("{k:?}, {} hops: {}", p.hops.len(), p.hops.join(" → "))
            }
            Some(k) => format!("{k:?}"),
            None => "Switchover".into(),
        }),
        strategy,
        outage,
        steps,
        checks,
        would_start,
        offline: shape.offline,
    }
}

/// The members' pre-checks, as their status shows them: the primary Ready as a primary, each
/// standby Ready and replicating within the lag bound, nobody quarantined.
fn member_checks(
    status: &crate::crd::DatabaseInstanceStatus,
    policy: &crate::crd::UpgradePolicy,
    primary: &str,
) -> Vec<Check> {
    let members = &status.members;
    let mut checks = vec![check(
        "primary",
        match members.iter().find(|m| m.pod == primary) {
            Some(m) if m.ready && m.role == Some(MemberRole::Primary) => {
                Ok(format!("{primary} is Ready as the primary"))
            }
            Some(_) => Err(format!("the primary {primary} is not Ready as a primary")),
            None => Err("no primary is recorded".into()),
        },
    )];
    for m in members.iter().filter(|m| m.pod != primary) {
        let lag = match (m.lag_bytes, m.lag_transactions) {
            (Some(b), _) => Some((b, policy.max_lag_bytes, "bytes", "maxLagBytes")),
            (None, Some(t)) => Some((
                t,
                policy.max_lag_transactions,
                "transactions",
                "maxLagTransactions",
            )),
            (None, None) => None,
        };
        checks.push(check(
            &format!("standby {}", m.pod),
            match (m.ready, lag) {
                (false, _) => Err(format!("{} is not Ready", m.pod)),
                (true, None) => Err(format!("{} is not replicating from {primary}", m.pod)),
                (true, Some((n, bound, unit, field))) if n > bound => Err(format!(
                    "{} lags {n} {unit} behind (bound {field} {bound})",
                    m.pod
                )),
                (true, Some((n, _, unit, _))) => Ok(format!(
                    "{} is Ready and replicating, {n} {unit} behind",
                    m.pod
                )),
            },
        ));
    }
    if let Some(q) = status.quarantine.first() {
        checks.push(check(
            "quarantine",
            Err(format!(
                "{} is quarantined ({}); a person must decide first",
                q.member, q.reason
            )),
        ));
    }
    checks
}

/// Whether replication crosses the step, from the running version to the one asked, whether or
/// not the request would accept it (an offline step is one reason it would not).
fn offline_step(
    spec: &UpgradeRequestSpec,
    inst: &DatabaseInstance,
    catalog: &[DatastoreVersion],
) -> bool {
    let ds = inst.spec.datastore.type_;
    let running = inst.status.as_ref().and_then(|s| s.version.as_deref());
    let goal = jobs::target_version(spec, catalog, spec.datastore.unwrap_or(ds)).ok();
    spec.type_ != UpgradeType::Switchover
        && running.zip(goal.as_deref()).is_some_and(|(a, b)| {
            let (Ok(a), Ok(b)) = (a.parse::<Version>(), b.parse::<Version>()) else {
                return false;
            };
            a < b
                && engine::for_datastore(ds).is_ok_and(|e| e.strategy(&a, &b) == Strategy::Offline)
        })
}

/// What decides how an instance's upgrade would run.
struct Shape {
    /// The step is an offline hop.
    offline: bool,
    /// One member: nothing to switch over to.
    single: bool,
    /// `primaryUpdateMethod: Restart`.
    restart: bool,
    /// The role goes back to the original primary at the end.
    second_switch: bool,
}

impl Shape {
    /// The strategy and the outage to expect, in words.
    fn how(
        &self,
        spec: &UpgradeRequestSpec,
        status: &crate::crd::DatabaseInstanceStatus,
    ) -> (String, String) {
        match spec.type_ {
            _ if self.offline => (
                "offline: the primary's data converted while it is stopped (pg_upgrade --copy, the old data kept until the end), the standbys cloned again".to_string(),
                match status.last_upgrade.as_ref().and_then(|l| l.outage_ms) {
                    Some(ms) => format!(
                        "writes are refused while the primary is converted (grows with the data; the last offline upgrade here took {ms} ms); reads go on on the standbys"
                    ),
                    None => "writes are refused while the primary is converted (grows with the data); reads go on on the standbys".into(),
                },
            ),
            UpgradeType::InPlace => (
                "in place: every member restarted together".into(),
                "the database is unavailable while its members restart".into(),
            ),
            UpgradeType::Switchover => (
                "switchover: fence the primary, catch a standby up to it, promote it".into(),
                "none: writes pause only for the switchover".into(),
            ),
            _ if self.single || self.restart => (
                "rolling, the primary restarted in place".into(),
                format!(
                    "writes are unavailable while the primary restarts ({})",
                    if self.single {
                        "a single member"
                    } else {
                        "primaryUpdateMethod Restart"
                    }
                ),
            ),
            _ => (
                "rolling: standbys one at a time, then a switchover, the old primary last".into(),
                "none: writes pause only for the switchover".into(),
            ),
        }
    }

    /// The steps, in the order Baton would take them.
    fn steps(
        &self,
        spec: &UpgradeRequestSpec,
        plan: Option<&jobs::Plan>,
        primary: &str,
        standbys: &[String],
    ) -> Vec<String> {
        let hops = plan.map(|p| p.hops.clone()).unwrap_or_default();
        let held = spec.action == crate::crd::UpgradeAction::Upgrade;
        let upgrade_each = || standbys.iter().map(|s| format!("UpgradeStandby {s}"));
        match spec.type_ {
            _ if hops.len() > 1 => {
                let mut from = plan.map(|p| p.source.clone()).unwrap_or_default();
                let mut steps = vec![];
                for (i, h) in hops.iter().enumerate() {
                    steps.push(format!(
                        "hop {}/{} {from} → {h}: standbys one at a time, a switchover, the old primary last",
                        i + 1,
                        hops.len()
                    ));
                    from = h.clone();
                }
                steps
            }
            _ if self.offline => {
                let mut steps = vec![
                    "PreCheck: pg_upgrade --check against the live primary, in a pod on its volume (a dry run runs it too)".to_string(),
                    format!("RestartPrimary {primary}: stopped, converted, back read-only"),
                ];
                if held {
                    steps.push(
                        "AwaitingCommit (read-only until Commit; Rollback returns to the kept data)"
                            .into(),
                    );
                }
                steps.push(format!("writes let in on {primary}; Finalize: statistics, extension updates, the kept data removed"));
                steps.extend(
                    standbys
                        .iter()
                        .map(|s| format!("UpgradeStandby {s}: cloned again")),
                );
                steps
            }
            UpgradeType::Switchover => vec![format!(
                "Switchover from {primary} to {}",
                spec.switchover_to
                    .clone()
                    .unwrap_or_else(|| "the most advanced caught-up standby".into())
            )],
            UpgradeType::InPlace => vec!["RestartAll".into()],
            _ if self.single || self.restart => upgrade_each()
                .chain([format!("RestartPrimary {primary}")])
                .collect(),
            _ => {
                let mut steps: Vec<String> = upgrade_each().collect();
                if held {
                    steps.push("AwaitingCommit (until action Commit or Rollback)".into());
                }
                steps.push(format!("Switchover from {primary}"));
                steps.push(format!("UpgradeStandby {primary}"));
                if self.second_switch {
                    steps.push(format!("SwitchBack to {primary}"));
                }
                steps
            }
        }
    }
}

/// The dry run of `spec` over Cluster `c`.
pub fn cluster(spec: &UpgradeRequestSpec, c: &Cluster, catalog: &[DatastoreVersion]) -> DryRun {
    let status = c.status.clone().unwrap_or_default();
    let validated = jobs::validate_cluster(spec, c, catalog);
    let mut checks = vec![request_check(&validated)];
    for s in &status.shards {
        checks.push(check(
            &format!("shard {}", s.instance),
            match (&s.primary, s.replicas.len(), s.slots.is_empty()) {
                (None, _, _) => Err(format!("{} has no master", s.instance)),
                (Some(_), _, true) => Err(format!("{} serves no slots", s.instance)),
                (Some(m), n, false) => Ok(format!(
                    "master {m} serves {}, {n} replica(s)",
                    s.slots.join(" ")
                )),
            },
        ));
    }
    let plan = validated.ok();
    let in_place = spec.type_ == UpgradeType::InPlace;
    let steps = status
        .shards
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if in_place {
                format!(
                    "shard {i}: restart {}",
                    s.primary.clone().unwrap_or_default()
                )
            } else {
                format!(
                    "shard {i}: replicas {}, CLUSTER FAILOVER, then the old master",
                    s.replicas.join(", ")
                )
            }
        })
        .collect();
    let would_start = checks.iter().all(|c| c.passed);
    DryRun {
        kind: "Cluster".into(),
        target: c.metadata.name.clone().unwrap_or_default(),
        source_version: status.version.clone(),
        target_version: plan.as_ref().map(|p| p.target.clone()),
        path: plan.as_ref().and_then(|p| p.kind.map(|k| format!("{k:?}"))),
        strategy: if in_place {
            "in place: each shard's only member restarted".into()
        } else {
            let at_once = crate::controller::cluster::upgrade::shards_at_once(c, false);
            format!(
                "{}: replicas first, a graceful CLUSTER FAILOVER, the old master last",
                match at_once {
                    1 => "shard by shard".to_string(),
                    n => format!("{n} shards at a time"),
                }
            )
        },
        outage: if in_place {
            "each shard's slots are unavailable while its member restarts".into()
        } else {
            "none: each shard's writes pause only for its failover".into()
        },
        steps,
        checks,
        would_start,
        offline: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalog() -> Vec<DatastoreVersion> {
        ["6.2.14", "7.0.15"]
            .iter()
            .map(|v| {
                serde_json::from_value(json!({
                    "apiVersion": "baton.dev/v1alpha1", "kind": "DatastoreVersion",
                    "metadata": {"name": format!("redis-{v}")},
                    "spec": {"datastore": "redis", "version": v, "image": format!("redis:{v}"),
                             "upgradeFrom": [{"datastore": "redis", "minVersion": "6.0", "maxVersion": "6"}]}
                }))
                .unwrap()
            })
            .collect()
    }

    fn instance_with(lag: i64, ready: bool) -> DatabaseInstance {
        serde_json::from_value(json!({
            "apiVersion": "baton.dev/v1alpha1", "kind": "DatabaseInstance",
            "metadata": {"name": "db", "namespace": "ns"},
            "spec": {"datastore": {"type": "redis", "version": "6.2.14"}, "replicas": 3},
            "status": {"phase": "Active", "version": "6.2.14", "primary": "db-0", "members": [
                {"pod": "db-0", "role": "Primary", "ready": true},
                {"pod": "db-1", "role": "Standby", "ready": ready, "lagBytes": lag},
                {"pod": "db-2", "role": "Standby", "ready": true, "lagBytes": 0},
            ]}
        }))
        .unwrap()
    }

    fn spec(v: &str, type_: &str) -> UpgradeRequestSpec {
        serde_json::from_value(
            json!({"targets": {"instances": ["db"]}, "targetVersion": v, "type": type_}),
        )
        .unwrap()
    }

    /// The dry run of a request to `v` of `type_` over `db`, whose db-1 lags `lag` bytes.
    fn dry(v: &str, type_: &str, lag: i64, ready: bool) -> DryRun {
        instance(&spec(v, type_), &instance_with(lag, ready), &catalog())
    }

    #[test]
    fn a_healthy_instance_would_roll_with_no_outage_in_member_order() {
        let d = dry("7.0.15", "Rolling", 0, true);
        assert!(d.would_start, "{d:#?}");
        assert_eq!(d.path.as_deref(), Some("Major"));
        assert!(d.outage.starts_with("none"));
        assert_eq!(
            d.steps,
            [
                "UpgradeStandby db-1",
                "UpgradeStandby db-2",
                "Switchover from db-0",
                "UpgradeStandby db-0"
            ]
        );
    }

    #[test]
    fn a_lagging_or_down_standby_and_a_missing_version_fail_their_checks() {
        let d = dry("7.0.15", "Rolling", 512, true);
        assert!(!d.would_start);
        let c = d.checks.iter().find(|c| c.name == "standby db-1").unwrap();
        assert!(!c.passed && c.detail.contains("lags 512 bytes"), "{c:?}");
        let d = dry("7.0.15", "Rolling", 0, false);
        assert!(
            d.checks
                .iter()
                .any(|c| !c.passed && c.detail == "db-1 is not Ready")
        );
        let d = dry("7.2.4", "Rolling", 0, true);
        let r = &d.checks[0];
        assert!(
            !r.passed && r.detail.contains("not in the DatastoreVersion catalog"),
            "{r:?}"
        );
    }

    #[test]
    fn in_place_and_switchover_say_what_they_cost() {
        let d = dry("7.0.15", "InPlace", 0, true);
        assert!(d.outage.contains("unavailable"), "{}", d.outage);
        let mut s: UpgradeRequestSpec =
            serde_json::from_value(json!({"targets": {"instances": ["db"]}, "type": "Switchover"}))
                .unwrap();
        s.switchover_to = Some("db-2".into());
        let d = instance(&s, &instance_with(0, true), &catalog());
        assert!(d.would_start, "{d:#?}");
        assert_eq!(d.path.as_deref(), Some("Switchover"));
        assert_eq!(d.steps, ["Switchover from db-0 to db-2"]);
    }
}
