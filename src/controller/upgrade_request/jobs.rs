//! The pure rules of an UpgradeRequest: whether one target may be upgraded (and to what),
//! which waiting jobs start, wait or are refused (`admit`), how the request's action maps onto
//! the flags of a target's upgrade, and the request's phase and summary from its jobs. No
//! client; time is an input.

use std::collections::BTreeMap;

use jiff::Timestamp;

use crate::catalog::{self, PathKind};
use crate::crd::{
    Cluster, ClusterTask, DatabaseInstance, Datastore, DatastoreVersion, InstancePhase,
    RequestPhase, Schedule, TargetJob, TargetKind, UpgradeAction, UpgradeRequestSpec,
    UpgradeResult, UpgradeType,
};
use crate::window;

/// What a target will be upgraded from and to, once it passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub source: String,
    pub target: String,
    /// The catalog path's kind (of its largest hop); None for a planned switchover (no version
    /// change).
    pub kind: Option<PathKind>,
    /// Every hop's version, in order, the last being `target` (one entry for a direct step).
    pub hops: Vec<String>,
}

/// The version a request upgrades to: its own, or the catalog's default of the datastore.
pub fn target_version(
    spec: &UpgradeRequestSpec,
    catalog: &[DatastoreVersion],
    ds: Datastore,
) -> Result<String, String> {
    if let Some(v) = &spec.target_version {
        return Ok(v.clone());
    }
    let defaults: Vec<&DatastoreVersion> = catalog
        .iter()
        .filter(|d| d.spec.datastore == ds && d.spec.default && d.spec.active)
        .collect();
    match defaults.as_slice() {
        [one] => Ok(one.spec.version.clone()),
        [] => Err(format!(
            "no targetVersion was given and the catalog has no active default version of {ds}; set targetVersion or mark one DatastoreVersion default"
        )),
        _ => Err(format!(
            "no targetVersion was given and the catalog has several default versions of {ds}; set targetVersion or keep one default"
        )),
    }
}

/// Why a target whose upgrade is in flight (owned by `request`, or by its spec) is refused.
fn busy(request: Option<&str>, target: &str, step: &str) -> String {
    match request {
        Some(r) => format!(
            "another UpgradeRequest ({r}) owns its upgrade to {target} (step {step}); wait for it to finish or cancel it"
        ),
        None => format!(
            "an upgrade to {target} from its spec is in flight (step {step}); wait for it to finish"
        ),
    }
}

/// Checks one instance before anything is touched. `me` is this request (`namespace/name`).
/// The message says what to fix.
pub fn validate(
    spec: &UpgradeRequestSpec,
    inst: &DatabaseInstance,
    catalog: &[DatastoreVersion],
) -> Result<Plan, String> {
    let status = inst.status.clone().unwrap_or_default();
    if let Some(u) = &status.upgrade {
        return Err(busy(u.request.as_deref(), &u.target_version, &u.describe()));
    }
    if let Some(c) = inst.cluster_owner() {
        return Err(format!(
            "it is a shard of Cluster {c}, upgraded only with the whole cluster; list the Cluster under targets.clusters instead"
        ));
    }
    if inst.spec.paused {
        return Err("it is paused (spec.paused); unpause it to upgrade".into());
    }
    let phase = status.phase.unwrap_or_default();
    if phase != InstancePhase::Active {
        let why = status.message.map(|m| format!(": {m}")).unwrap_or_default();
        return Err(format!(
            "it is {phase:?}, not Active{why}; only an Active instance is upgraded"
        ));
    }
    let Some(source) = status.version.clone() else {
        return Err("it has not reported a running version yet; wait until it is Active".into());
    };
    if spec.schedule == Schedule::MaintenanceWindow && inst.spec.maintenance_window.is_none() {
        return Err(
            "schedule MaintenanceWindow needs the instance's spec.maintenanceWindow; set one, or use schedule Immediate"
                .into(),
        );
    }
    if spec.type_ == UpgradeType::Switchover {
        return switchover_plan(spec, inst, source);
    }
    plan_for(spec, inst.spec.datastore.type_, source, catalog)
}

/// A planned switchover keeps the version: it needs a standby, and a named member must be one.
fn switchover_plan(
    spec: &UpgradeRequestSpec,
    inst: &DatabaseInstance,
    source: String,
) -> Result<Plan, String> {
    let status = inst.status.clone().unwrap_or_default();
    if inst.spec.replicas < 2 {
        return Err(
            "it has a single member: there is no standby to hand the primary role to".into(),
        );
    }
    if let Some(to) = &spec.switchover_to {
        let members: Vec<&str> = status.members.iter().map(|m| m.pod.as_str()).collect();
        if !members.contains(&to.as_str()) {
            return Err(format!(
                "switchoverTo {to} is not one of its members ({})",
                members.join(", ")
            ));
        }
        if status.primary.as_deref() == Some(to.as_str()) {
            return Err(format!(
                "{to} is already its primary: nothing to switch over"
            ));
        }
    }
    Ok(Plan {
        target: source.clone(),
        hops: vec![source.clone()],
        source,
        kind: None,
    })
}

/// The path from `source` of datastore `from_ds` to the request's target, checked against the
/// catalog and the request's type.
fn plan_for(
    spec: &UpgradeRequestSpec,
    from_ds: Datastore,
    source: String,
    catalog: &[DatastoreVersion],
) -> Result<Plan, String> {
    let to_ds = spec.datastore.unwrap_or(from_ds);
    let target = target_version(spec, catalog, to_ds)?;
    let Some(to) = catalog::find(catalog, to_ds, &target) else {
        return Err(format!(
            "{to_ds} {target} is not in the DatastoreVersion catalog; add it, or choose a listed version"
        ));
    };
    let hops =
        catalog::resolve_path(catalog, from_ds, &source, &to.spec).map_err(|e| e.to_string())?;
    // The path's kind is its largest hop's: Hotfix < Minor < Major < CrossDatastore.
    let rank = |k: &PathKind| match k {
        PathKind::Hotfix => 0,
        PathKind::Minor => 1,
        PathKind::Major => 2,
        PathKind::CrossDatastore => 3,
    };
    let kind = hops
        .iter()
        .map(|h| h.kind)
        .max_by_key(rank)
        .unwrap_or(PathKind::Minor);
    match (spec.type_, kind) {
        (_, PathKind::CrossDatastore) => {
            return Err(format!(
                "the catalog edge allows {from_ds} {source} → {to_ds} {target}, but no engine can change a database's datastore yet; nothing was changed"
            ));
        }
        (UpgradeType::Hotfix, k) if k != PathKind::Hotfix => {
            return Err(format!(
                "type Hotfix only changes the build of a version, and {source} → {target} is a {k:?} upgrade; use type Rolling"
            ));
        }
        _ => {}
    }
    // A hop that replication cannot cross means a write outage: never a surprise.
    let mut from = source.clone();
    for h in hops.iter().filter(|_| !spec.allow_offline) {
        if crate::engine::strategy(to_ds, &from, &h.version)
            == Some(crate::engine::Strategy::Offline)
        {
            return Err(format!(
                "{to_ds} {from} → {} needs an offline upgrade: the primary's data is converted while it is stopped (a write outage) and the standbys are cloned again; set allowOffline: true to accept it; nothing was changed",
                h.version
            ));
        }
        from = h.version.clone();
    }
    Ok(Plan {
        source,
        target,
        kind: Some(kind),
        hops: hops.into_iter().map(|h| h.version).collect(),
    })
}

/// Checks one Cluster before anything is touched; the message says what to fix.
pub fn validate_cluster(
    spec: &UpgradeRequestSpec,
    c: &Cluster,
    catalog: &[DatastoreVersion],
) -> Result<Plan, String> {
    let status = c.status.clone().unwrap_or_default();
    if let Some(u) = &status.upgrade {
        return Err(busy(u.request.as_deref(), &u.target_version, &u.describe()));
    }
    if c.spec.paused {
        return Err("it is paused (spec.paused); unpause it to upgrade".into());
    }
    match (spec.type_, c.spec.replicas_per_shard < 2) {
        (UpgradeType::InPlace, false) => {
            return Err("its shards have replicas, so each master hands its slots to an upgraded replica with no outage: use type Rolling (InPlace is only for shards of one member)".into());
        }
        (UpgradeType::Rolling | UpgradeType::Hotfix, true) => {
            return Err("its shards have one member each, with no replica to hand the slots to: only type InPlace upgrades it, restarting each shard's member with its slots unavailable meanwhile (or create the Cluster with replicasPerShard 2 or more)".into());
        }
        _ => {}
    }
    let ready =
        crate::status::find(&status.conditions, "Ready").is_some_and(|c| c.status == "True");
    if !ready || status.task != Some(ClusterTask::None) {
        let why = status.message.map(|m| format!(": {m}")).unwrap_or_default();
        return Err(format!(
            "it is not Ready and idle{why}; only a Ready cluster with no task in progress is upgraded"
        ));
    }
    let Some(source) = status.version.clone() else {
        return Err("it has not reported a running version yet; wait until it is Ready".into());
    };
    if spec.schedule == Schedule::MaintenanceWindow && c.spec.maintenance_window.is_none() {
        return Err(
            "schedule MaintenanceWindow needs the Cluster's spec.maintenanceWindow; set one, or use schedule Immediate"
                .into(),
        );
    }
    if spec.datastore.is_some_and(|d| d != c.spec.datastore.type_) {
        return Err(
            "a Cluster's datastore cannot change; omit datastore for Cluster targets".into(),
        );
    }
    plan_for(spec, c.spec.datastore.type_, source, catalog)
}

/// What becomes of a job that has not started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Never started: the request is stopping, or its failure budget is spent.
    Cancel(String),
    /// The target failed its checks: nothing was touched.
    Refuse(String),
    /// Valid, waiting for the target's maintenance window (described), which opens at `opens`.
    Schedule {
        plan: Plan,
        window: String,
        opens: Timestamp,
    },
    /// Claim the target now.
    Start(Plan),
    /// Not now: the concurrency limit is reached.
    Later,
}

/// What `admit` decides from.
pub struct AdmitInput<'a> {
    pub spec: &'a UpgradeRequestSpec,
    pub deleting: bool,
    pub now: Timestamp,
    pub namespace: &'a str,
    pub catalog: &'a [DatastoreVersion],
    /// Each instance target read this pass (None: it does not exist).
    pub targets: &'a BTreeMap<String, Option<DatabaseInstance>>,
    /// Each Cluster target read this pass (None: it does not exist).
    pub clusters: &'a BTreeMap<String, Option<Cluster>>,
}

/// Decides, in job order, what becomes of each job that has not started (Pending or
/// Scheduled): within `maxConcurrent`, the failure budget (refusals of this pass count), the
/// action and the maintenance window. Returns (job index, admission).
pub fn admit(jobs: &[TargetJob], a: &AdmitInput) -> Vec<(usize, Admission)> {
    let action = a.spec.action;
    let stopping = a.deleting || matches!(action, UpgradeAction::Cancel | UpgradeAction::Rollback);
    let count = |p: RequestPhase| jobs.iter().filter(|j| j.phase == p).count() as i32;
    let (mut failed, mut running) = (count(RequestPhase::Failed), count(RequestPhase::Running));
    let mut out = vec![];
    for (i, job) in jobs.iter().enumerate() {
        if !matches!(job.phase, RequestPhase::Pending | RequestPhase::Scheduled) {
            continue;
        }
        let budget_spent = a.spec.max_failures.is_some_and(|m| failed >= m);
        if stopping || budget_spent {
            let why = if a.deleting {
                "not started: the request was deleted".to_string()
            } else if action == UpgradeAction::Rollback {
                "not started: the request was rolled back".to_string()
            } else if action == UpgradeAction::Cancel {
                "not started: the request was cancelled".to_string()
            } else {
                format!(
                    "not started: the failure budget (maxFailures {}) is spent",
                    a.spec.max_failures.unwrap_or_default()
                )
            };
            out.push((i, Admission::Cancel(why)));
            continue;
        }
        if running >= a.spec.max_concurrent {
            out.push((i, Admission::Later));
            continue;
        }
        let missing = |kind: &str| {
            format!(
                "{kind} {} does not exist in namespace {}",
                job.target, a.namespace
            )
        };
        let checked = match job.kind {
            TargetKind::Cluster => match a.clusters.get(&job.target).cloned().flatten() {
                None => Err(missing("Cluster")),
                Some(c) => validate_cluster(a.spec, &c, a.catalog)
                    .map(|p| (c.spec.maintenance_window.clone(), p)),
            },
            TargetKind::DatabaseInstance => match a.targets.get(&job.target).cloned().flatten() {
                None => Err(missing("DatabaseInstance")),
                Some(inst) => validate(a.spec, &inst, a.catalog)
                    .map(|p| (inst.spec.maintenance_window.clone(), p)),
            },
        };
        let (window, plan) = match checked {
            Ok(ok) => ok,
            Err(why) => {
                failed += 1;
                out.push((i, Admission::Refuse(why)));
                continue;
            }
        };
        if a.spec.schedule == Schedule::MaintenanceWindow
            && let Some(w) = &window
            && !window::is_open(a.now, w)
        {
            let window = format!(
                "{:?} {} UTC, {} min",
                w.day_of_week, w.start_time, w.duration_minutes
            );
            let opens = window::next_open(a.now, w);
            out.push((
                i,
                Admission::Schedule {
                    plan,
                    window,
                    opens,
                },
            ));
            continue;
        }
        running += 1;
        out.push((i, Admission::Start(plan)));
    }
    out
}

/// A target's upgrade flags: `hold`, `rollback`, `cancel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flags {
    pub hold: bool,
    pub rollback: bool,
    pub cancel: bool,
}

/// The flags the request's action asks of a target's upgrade in flight (`now`). Commit lifts
/// the hold; Rollback and Cancel are sticky (once asked, never taken back).
pub fn desired_flags(action: UpgradeAction, deleting: bool, now: Flags) -> Flags {
    Flags {
        hold: now.hold && action == UpgradeAction::Upgrade,
        rollback: now.rollback || action == UpgradeAction::Rollback,
        cancel: now.cancel || action == UpgradeAction::Cancel || deleting,
    }
}

/// A job's phase from the target's recorded outcome.
pub fn finished_phase(r: UpgradeResult) -> RequestPhase {
    match r {
        UpgradeResult::Succeeded => RequestPhase::Succeeded,
        UpgradeResult::RolledBack => RequestPhase::RolledBack,
        UpgradeResult::Cancelled => RequestPhase::Cancelled,
        UpgradeResult::Failed => RequestPhase::Failed,
    }
}

pub fn is_terminal(p: RequestPhase) -> bool {
    matches!(
        p,
        RequestPhase::Succeeded
            | RequestPhase::PartiallySucceeded
            | RequestPhase::Failed
            | RequestPhase::RolledBack
            | RequestPhase::Cancelled
    )
}

/// A job that has touched (or owns) its target and is not finished.
pub fn is_started(p: RequestPhase) -> bool {
    matches!(p, RequestPhase::Running | RequestPhase::AwaitingCommit)
}

/// The summary of a request's jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub phase: RequestPhase,
    pub succeeded: i32,
    pub failed: i32,
    pub failed_targets: Vec<String>,
    pub error_messages: Vec<String>,
    pub progress: String,
}

/// The request's phase and GaussDB-style summary from its jobs and its action.
pub fn summarize(jobs: &[TargetJob], action: UpgradeAction, deleting: bool) -> Summary {
    let count = |p: RequestPhase| jobs.iter().filter(|j| j.phase == p).count() as i32;
    let failed: Vec<&TargetJob> = jobs
        .iter()
        .filter(|j| j.phase == RequestPhase::Failed)
        .collect();
    let succeeded = count(RequestPhase::Succeeded);
    let finished = jobs.iter().filter(|j| is_terminal(j.phase)).count();
    let any = |p: RequestPhase| jobs.iter().any(|j| j.phase == p);
    let waiting = jobs
        .iter()
        .filter(|j| matches!(j.phase, RequestPhase::Pending | RequestPhase::Scheduled))
        .count();
    let phase = if any(RequestPhase::Running) {
        RequestPhase::Running
    } else if any(RequestPhase::AwaitingCommit) && waiting == 0 {
        RequestPhase::AwaitingCommit
    } else if waiting > 0 {
        if finished > 0 || any(RequestPhase::AwaitingCommit) {
            RequestPhase::Running
        } else if jobs.iter().all(|j| j.phase == RequestPhase::Scheduled) {
            RequestPhase::Scheduled
        } else {
            RequestPhase::Pending
        }
    } else if action == UpgradeAction::Cancel || deleting {
        RequestPhase::Cancelled
    } else if action == UpgradeAction::Rollback && failed.is_empty() {
        RequestPhase::RolledBack
    } else if failed.is_empty() && succeeded > 0 {
        RequestPhase::Succeeded
    } else if succeeded == 0 {
        RequestPhase::Failed
    } else {
        RequestPhase::PartiallySucceeded
    };
    Summary {
        phase,
        succeeded,
        failed: failed.len() as i32,
        failed_targets: failed.iter().map(|j| j.target.clone()).collect(),
        error_messages: failed
            .iter()
            .map(|j| format!("{}: {}", j.target, j.message.clone().unwrap_or_default()))
            .collect(),
        progress: format!("{finished}/{}", jobs.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{
        DatabaseInstanceStatus, DatastoreVersionSpec, TargetKind, UpgradeEdge, UpgradeInFlight,
    };
    use serde_json::json;

    fn dv(ds: Datastore, v: &str, default: bool, edges: Vec<UpgradeEdge>) -> DatastoreVersion {
        DatastoreVersion::new(
            &format!("{ds}-{v}"),
            DatastoreVersionSpec {
                datastore: ds,
                version: v.into(),
                image: format!("{ds}:{v}"),
                active: true,
                default,
                upgrade_from: edges,
            },
        )
    }

    fn catalog() -> Vec<DatastoreVersion> {
        let edge = UpgradeEdge {
            datastore: Datastore::Redis,
            min_version: Some("6.0".into()),
            max_version: Some("6".into()),
        };
        vec![
            dv(Datastore::Redis, "6.2.14", false, vec![]),
            dv(Datastore::Redis, "7.0.15", true, vec![edge]),
            dv(Datastore::Redis, "7.0.15-hf1", false, vec![]),
            dv(Datastore::Redis, "8.0.0", false, vec![]),
        ]
    }

    fn instance(version: &str, phase: InstancePhase) -> DatabaseInstance {
        let mut i: DatabaseInstance = serde_json::from_value(json!({
            "apiVersion": "baton.dev/v1alpha1", "kind": "DatabaseInstance",
            "metadata": {"name": "db", "namespace": "ns"},
            "spec": {"datastore": {"type": "redis", "version": version}, "replicas": 3},
        }))
        .unwrap();
        i.status = Some(DatabaseInstanceStatus {
            phase: Some(phase),
            version: Some(version.into()),
            ..Default::default()
        });
        i
    }

    fn spec(target: Option<&str>, type_: &str) -> UpgradeRequestSpec {
        serde_json::from_value(json!({
            "targets": {"instances": ["db"]}, "targetVersion": target, "type": type_,
        }))
        .unwrap()
    }

    #[test]
    fn an_allowed_path_passes_and_an_omitted_version_means_the_default() {
        let c = catalog();
        let ok = validate(
            &spec(None, "Rolling"),
            &instance("6.2.14", InstancePhase::Active),
            &c,
        );
        assert_eq!(
            ok,
            Ok(Plan {
                source: "6.2.14".into(),
                target: "7.0.15".into(),
                kind: Some(PathKind::Major),
                hops: vec!["7.0.15".into()],
            })
        );
    }

    #[test]
    fn refusals_say_what_to_fix() {
        let c = catalog();
        let active = instance("7.0.15", InstancePhase::Active);
        let err = |s: UpgradeRequestSpec, i: &DatabaseInstance| validate(&s, i, &c).unwrap_err();
        assert!(
            err(spec(Some("6.2.14"), "Rolling"), &active)
                .contains("downgrades are never performed")
        );
        assert!(
            err(spec(Some("9.9.9"), "Rolling"), &active)
                .contains("not in the DatastoreVersion catalog")
        );
        assert!(err(spec(Some("8.0.0"), "Rolling"), &active).contains("no catalog path"));
        assert!(
            err(spec(Some("7.0.15"), "Rolling"), &active).contains("already the running version")
        );
        assert!(
            err(
                spec(Some("7.0.15"), "Hotfix"),
                &instance("6.2.14", InstancePhase::Active)
            )
            .contains("type Hotfix only changes the build")
        );
        assert_eq!(
            validate(&spec(Some("7.0.15-hf1"), "Hotfix"), &active, &c).map(|p| p.kind),
            Ok(Some(PathKind::Hotfix))
        );
        let building = instance("6.2.14", InstancePhase::Error);
        assert!(err(spec(None, "Rolling"), &building).contains("it is Error, not Active"));
        let mut windowless = spec(None, "Rolling");
        windowless.schedule = Schedule::MaintenanceWindow;
        assert!(
            err(windowless, &instance("6.2.14", InstancePhase::Active))
                .contains("needs the instance's spec.maintenanceWindow")
        );
    }

    static NO_CLUSTERS: BTreeMap<String, Option<Cluster>> = BTreeMap::new();

    fn input<'a>(
        spec: &'a UpgradeRequestSpec,
        c: &'a [DatastoreVersion],
        targets: &'a BTreeMap<String, Option<DatabaseInstance>>,
    ) -> AdmitInput<'a> {
        AdmitInput {
            spec,
            deleting: false,
            now: Timestamp::UNIX_EPOCH,
            namespace: "ns",
            catalog: c,
            targets,
            clusters: &NO_CLUSTERS,
        }
    }

    #[test]
    fn admission_starts_within_the_limit_refuses_bad_targets_and_keeps_the_budget() {
        let c = catalog();
        let mut spec: UpgradeRequestSpec = serde_json::from_value(json!({
            "targets": {"instances": ["a", "b", "c", "d"]}, "targetVersion": "7.0.15",
            "maxConcurrent": 2, "maxFailures": 1,
        }))
        .unwrap();
        let targets: BTreeMap<String, Option<DatabaseInstance>> = [
            ("a", Some(instance("6.2.14", InstancePhase::Active))),
            ("b", None),
            ("c", Some(instance("6.2.14", InstancePhase::Active))),
            ("d", Some(instance("6.2.14", InstancePhase::Active))),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let jobs: Vec<TargetJob> = ["a", "b", "c", "d"]
            .iter()
            .map(|t| job(t, RequestPhase::Pending))
            .collect();
        let got = admit(&jobs, &input(&spec, &c, &targets));
        assert!(matches!(got[0], (0, Admission::Start(_))));
        assert!(matches!(&got[1], (1, Admission::Refuse(w)) if w.contains("does not exist")));
        // b's refusal spent the budget (maxFailures 1): nothing else starts.
        assert!(matches!(&got[2], (2, Admission::Cancel(w)) if w.contains("failure budget")));
        spec.max_failures = None;
        let got = admit(&jobs, &input(&spec, &c, &targets));
        assert!(matches!(got[2], (2, Admission::Start(_))));
        assert_eq!(got[3], (3, Admission::Later), "two at a time");
        spec.action = UpgradeAction::Cancel;
        let got = admit(&jobs, &input(&spec, &c, &targets));
        assert!(got.iter().all(|(_, a)| matches!(a, Admission::Cancel(_))));
    }

    fn ready_cluster(version: &str, per_shard: i32) -> Cluster {
        serde_json::from_value(json!({
            "apiVersion": "baton.dev/v1alpha1", "kind": "Cluster",
            "metadata": {"name": "events", "namespace": "ns"},
            "spec": {"datastore": {"type": "redis", "version": version}, "shards": 2,
                     "replicasPerShard": per_shard},
            "status": {"task": "None", "version": version, "conditions": [{
                "type": "Ready", "status": "True", "reason": "ClusterOk", "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
        }))
        .unwrap()
    }

    #[test]
    fn a_cluster_is_checked_like_an_instance_and_its_shards_are_not_targets() {
        let c = catalog();
        let s = spec(Some("7.0.15"), "Rolling");
        let plan = validate_cluster(&s, &ready_cluster("6.2.14", 2), &c).unwrap();
        assert_eq!(
            (plan.source.as_str(), plan.target.as_str()),
            ("6.2.14", "7.0.15")
        );
        let err = |s: &UpgradeRequestSpec, cl: &Cluster| validate_cluster(s, cl, &c).unwrap_err();
        assert!(err(&s, &ready_cluster("6.2.14", 1)).contains("only type InPlace"));
        let in_place = spec(Some("7.0.15"), "InPlace");
        assert!(validate_cluster(&in_place, &ready_cluster("6.2.14", 1), &c).is_ok());
        assert!(
            err(
                &spec(Some("7.0.15"), "InPlace"),
                &ready_cluster("6.2.14", 2)
            )
            .contains("use type Rolling")
        );
        assert!(
            err(
                &spec(Some("6.2.14"), "Rolling"),
                &ready_cluster("7.0.15", 2)
            )
            .contains("downgrades are never performed")
        );
        let mut paused = ready_cluster("6.2.14", 2);
        paused.spec.paused = true;
        assert!(err(&s, &paused).contains("paused"));
        let mut busy = ready_cluster("6.2.14", 2);
        let mut u = crate::crd::ClusterUpgrade::new("6.2.14", "7.0.15", t0());
        u.request = Some("ns/first".into());
        busy.status.as_mut().unwrap().upgrade = Some(u);
        assert!(err(&s, &busy).contains("another UpgradeRequest (ns/first)"));
        let mut forming = ready_cluster("6.2.14", 2);
        forming.status.as_mut().unwrap().task = Some(ClusterTask::Building);
        assert!(err(&s, &forming).contains("not Ready and idle"));
        // A shard's instance: the Cluster is the target.
        let mut shard = instance("6.2.14", InstancePhase::Active);
        shard.metadata.owner_references = Some(vec![
            serde_json::from_value(json!({
                "apiVersion": "baton.dev/v1alpha1", "kind": "Cluster", "name": "events",
                "uid": "u1", "controller": true,
            }))
            .unwrap(),
        ]);
        let e = validate(&s, &shard, &c).unwrap_err();
        assert!(e.contains("shard of Cluster events"), "{e}");
    }

    #[test]
    fn a_scheduled_request_waits_for_each_targets_window() {
        let c = catalog();
        let spec: UpgradeRequestSpec = serde_json::from_value(json!({
            "targets": {"instances": ["a"]}, "targetVersion": "7.0.15", "schedule": "MaintenanceWindow",
        }))
        .unwrap();
        let mut a = instance("6.2.14", InstancePhase::Active);
        // The epoch is a Thursday, 00:00 UTC: a Sunday window is closed.
        a.spec.maintenance_window =
            serde_json::from_value(json!({"dayOfWeek": "Sunday", "startTime": "02:00"})).unwrap();
        let targets = BTreeMap::from([("a".to_string(), Some(a))]);
        let got = admit(
            &[job("a", RequestPhase::Pending)],
            &input(&spec, &c, &targets),
        );
        match &got[0].1 {
            Admission::Schedule { window, opens, .. } => {
                assert!(window.contains("Sunday 02:00"), "{window}");
                assert_eq!(opens.to_string(), "1970-01-04T02:00:00Z");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_planned_switchover_keeps_the_version_and_needs_a_standby_it_can_name() {
        let c = catalog();
        let mut inst = instance("7.0.15", InstancePhase::Active);
        let st = inst.status.as_mut().unwrap();
        st.primary = Some("db-0".into());
        st.members = ["db-0", "db-1", "db-2"]
            .iter()
            .map(|p| serde_json::from_value(json!({"pod": p})).unwrap())
            .collect();
        let plan = validate(&spec(None, "Switchover"), &inst, &c).unwrap();
        assert_eq!(
            (plan.source.as_str(), plan.target.as_str()),
            ("7.0.15", "7.0.15")
        );
        assert_eq!(plan.kind, None);
        let to = |m: &str| {
            let mut s = spec(None, "Switchover");
            s.switchover_to = Some(m.into());
            s
        };
        assert!(validate(&to("db-2"), &inst, &c).is_ok());
        let err = validate(&to("db-7"), &inst, &c).unwrap_err();
        assert!(
            err.contains("not one of its members (db-0, db-1, db-2)"),
            "{err}"
        );
        let err = validate(&to("db-0"), &inst, &c).unwrap_err();
        assert!(err.contains("already its primary"), "{err}");
        inst.spec.replicas = 1;
        let err = validate(&spec(None, "Switchover"), &inst, &c).unwrap_err();
        assert!(err.contains("no standby"), "{err}");
    }

    #[test]
    fn a_busy_instance_names_its_owner() {
        let c = catalog();
        let mut busy = instance("6.2.14", InstancePhase::Upgrading);
        let mut u = UpgradeInFlight::new("6.2.14", "7.0.15", "db-0", t0());
        u.request = Some("ns/first".into());
        u.step = crate::crd::UpgradeStep::on(crate::crd::StepKind::UpgradeStandby, "db-1");
        busy.status.as_mut().unwrap().upgrade = Some(u);
        let e = validate(&spec(None, "Rolling"), &busy, &c).unwrap_err();
        assert!(e.contains("another UpgradeRequest (ns/first)"), "{e}");
        assert!(e.contains("(step UpgradeStandby db-1)"), "{e}");
    }

    #[test]
    fn a_cross_datastore_edge_is_honoured() {
        let edge = UpgradeEdge {
            datastore: Datastore::Mysql,
            min_version: Some("8.0".into()),
            max_version: Some("8.0".into()),
        };
        let mut c = catalog();
        c.push(dv(Datastore::Mariadb, "10.11", false, vec![]));
        let mut mysql = instance("8.0.36", InstancePhase::Active);
        mysql.spec.datastore.type_ = Datastore::Mysql;
        let mut s = spec(Some("10.11"), "Rolling");
        s.datastore = Some(Datastore::Mariadb);
        let e = validate(&s, &mysql, &c).unwrap_err();
        assert!(e.contains("no catalog edge"), "{e}");
        c.pop();
        c.push(dv(Datastore::Mariadb, "10.11", false, vec![edge]));
        let e = validate(&s, &mysql, &c).unwrap_err();
        assert!(
            e.contains("the catalog edge allows mysql 8.0.36 → mariadb 10.11"),
            "{e}"
        );
    }

    fn t0() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH)
    }

    fn job(target: &str, phase: RequestPhase) -> TargetJob {
        TargetJob {
            job_id: format!("x-{target}"),
            kind: TargetKind::DatabaseInstance,
            target: target.into(),
            source_version: None,
            target_version: None,
            phase,
            step: None,
            message: Some("why".into()),
            start_time: None,
            switchover_ms: None,
            finish_time: None,
            plan: None,
        }
    }

    #[test]
    fn the_request_phase_follows_its_jobs() {
        use RequestPhase::*;
        let s = |phases: &[RequestPhase], action| {
            let jobs: Vec<TargetJob> = phases
                .iter()
                .enumerate()
                .map(|(i, p)| job(&format!("t{i}"), *p))
                .collect();
            summarize(&jobs, action, false)
        };
        let auto = UpgradeAction::UpgradeAutoCommit;
        assert_eq!(s(&[Pending, Pending], auto).phase, Pending);
        assert_eq!(s(&[Scheduled, Scheduled], auto).phase, Scheduled);
        assert_eq!(s(&[Succeeded, Pending], auto).phase, Running);
        assert_eq!(s(&[Succeeded, Succeeded], auto).phase, Succeeded);
        let partial = s(&[Succeeded, Failed, Succeeded], auto);
        assert_eq!(partial.phase, PartiallySucceeded);
        assert_eq!((partial.succeeded, partial.failed), (2, 1));
        assert_eq!(partial.failed_targets, ["t1"]);
        assert_eq!(partial.error_messages, ["t1: why"]);
        assert_eq!(partial.progress, "3/3");
        assert_eq!(s(&[Failed], auto).phase, Failed);
        assert_eq!(
            s(&[AwaitingCommit, AwaitingCommit], UpgradeAction::Upgrade).phase,
            AwaitingCommit
        );
        assert_eq!(
            s(&[AwaitingCommit, Pending], UpgradeAction::Upgrade).phase,
            Running
        );
        assert_eq!(
            s(&[RolledBack, Cancelled], UpgradeAction::Rollback).phase,
            RolledBack
        );
        assert_eq!(
            s(&[Succeeded, Cancelled], UpgradeAction::Cancel).phase,
            Cancelled
        );
    }

    #[test]
    fn an_offline_hop_needs_allow_offline() {
        let edge = UpgradeEdge {
            datastore: Datastore::Postgresql,
            min_version: Some("15".into()),
            max_version: Some("16".into()),
        };
        let c = vec![
            dv(Datastore::Postgresql, "15.19", false, vec![]),
            dv(Datastore::Postgresql, "17.11", false, vec![edge]),
        ];
        let mut i = instance("15.19", InstancePhase::Active);
        i.spec.datastore.type_ = Datastore::Postgresql;
        let mut s = spec(Some("17.11"), "Rolling");
        let why = validate(&s, &i, &c).unwrap_err();
        assert!(
            why.contains("15.19 → 17.11 needs an offline upgrade")
                && why.contains("allowOffline: true"),
            "{why}"
        );
        s.allow_offline = true;
        assert_eq!(
            validate(&s, &i, &c).map(|p| p.hops),
            Ok(vec!["17.11".into()])
        );
    }

    #[test]
    fn commit_lifts_the_hold_and_rollback_or_cancel_stick() {
        let f = |hold, rollback, cancel| Flags {
            hold,
            rollback,
            cancel,
        };
        let held = f(true, false, false);
        assert_eq!(desired_flags(UpgradeAction::Upgrade, false, held), held);
        assert_eq!(
            desired_flags(UpgradeAction::Commit, false, held),
            f(false, false, false)
        );
        assert_eq!(
            desired_flags(UpgradeAction::Rollback, false, held),
            f(false, true, false)
        );
        assert_eq!(
            desired_flags(UpgradeAction::Upgrade, true, held),
            f(true, false, true)
        );
        assert!(desired_flags(UpgradeAction::Upgrade, false, f(false, false, true)).cancel);
    }
}
