//! A Cluster's upgrade, in waves of `maxUnavailableShards` shards and one member of each shard
//! at a time: each replica is restarted on the target version and must rejoin (Ready,
//! reporting the target, every node seeing it healthy) before its shard's next; then graceful
//! `CLUSTER FAILOVER`s, one at a time with every node up, hand each shard's slots to an
//! upgraded replica, each confirmed only when every node sees it (never by the command's OK);
//! then the old masters, now replicas, are restarted. Every step is recorded in
//! `status.upgrade` before its side effect, so a restarted operator resumes it.
//!
//! Only a healthy cluster takes a step (the caller has passed the gate: every member Ready,
//! every slot served, no node failing, every node agreeing on each shard's master), except
//! that the members recorded as restarting may be down or catching up (`Seen::troubled`).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::{Layout, Pass, owner};
use crate::controller::database_instance::children::{self, ANNOTATION_VERSION};
use crate::controller::database_instance::observe::{image_current, pod_ready};
use crate::controller::{Context, requeue};
use crate::crd::{
    Cluster, ClusterTask, ClusterUpgrade, Datastore, DatastoreVersion, FailoverIntent,
    MemberRestart, ShardStage, UpgradeOutcome, UpgradeResult,
};
use crate::engine::redis_cluster::{self as rc, SlotRange, View};
use crate::engine::{Probe, Target};
use crate::error::{Error, Result};
use crate::version::Version;

/// What the pass observed, for the upgrade to decide from.
pub(super) struct Seen<'a> {
    /// A shard whose members do not run with the credentials Secret's passwords yet, looked
    /// at only before an upgrade starts.
    pub rotating: Option<String>,
    pub names: &'a [String],
    pub layout: &'a Layout,
    /// Members recorded as restarting that are not back yet (down, unanswering, or seen in
    /// trouble by some node): the gate let them be, and their shards wait for them.
    pub troubled: &'a std::collections::BTreeSet<String>,
    pub targets: &'a BTreeMap<String, Target>,
    pub views: &'a [View],
    pub probes: &'a BTreeMap<String, Probe>,
    pub catalog: Vec<DatastoreVersion>,
}

impl Seen<'_> {
    /// The member runs `version` for real: its pod asks for it, the node runs that image, and
    /// the server itself reports that release.
    fn runs(&self, pod: &str, version: &str) -> bool {
        let release = |v: &str| v.split('-').next().unwrap_or(v).parse::<Version>().ok();
        let Some(p) = self.layout.pods.get(pod) else {
            return false;
        };
        p.annotations().get(ANNOTATION_VERSION).map(String::as_str) == Some(version)
            && image_current(p)
            && self.probes.get(pod).is_some_and(|probe| {
                match (release(&probe.version), release(version)) {
                    (Some(a), Some(b)) => a.cmp_release(&b).is_eq(),
                    _ => false,
                }
            })
    }

    fn members(&self, shard: usize) -> Vec<&String> {
        let name = &self.names[shard];
        self.layout
            .addr
            .keys()
            .filter(|p| owner(p) == name.as_str())
            .collect()
    }

    /// The node id, config epoch and slots of `pod` as the first view has them (the gate has
    /// checked that every view agrees).
    fn node(&self, pod: &str) -> Option<&rc::Node> {
        let addr = self.layout.addr.get(pod)?;
        self.views.first()?.nodes.iter().find(|n| &n.addr == addr)
    }
}

/// Stops the upgrade in flight if its step has waited past its deadline; `why` is what it
/// waited for.
pub(super) fn check_deadline(p: &mut Pass, why: &str) {
    let now = p.now.0;
    let (step_timeout, fence_timeout) = (p.step_timeout, p.fence_timeout);
    let Some(u) = p.s.upgrade.as_mut().filter(|u| u.failed.is_none()) else {
        return;
    };
    // A failover has fenceTimeoutSeconds from its intent; a restart its step timeout from its
    // own record (the oldest one still in flight is the one that is late).
    let (since, limit, what) = if let Some(f) = &u.failover {
        let what = format!("handing {}'s slots to {}", f.master, f.candidate);
        (u.step_started.0, fence_timeout, what)
    } else if let Some(r) = u.restarting.iter().min_by_key(|r| r.started.0) {
        let what = format!("restarting {} on {}", r.member, u.target_version);
        (r.started.0, step_timeout, what)
    } else if u.stage == ShardStage::Failover {
        (u.step_started.0, fence_timeout, "the failover".to_string())
    } else {
        (u.step_started.0, step_timeout, "the step".to_string())
    };
    let elapsed = Duration::try_from(now.duration_since(since)).unwrap_or_default();
    if elapsed <= limit {
        return;
    }
    let note = format!(
        "{} of the upgrade to {}: {what} did not finish within {} s ({why}); the upgrade stopped and the shards' masters were not touched by Baton after that",
        u.shards_text(),
        u.target_version,
        limit.as_secs()
    );
    warn!(reason = %note, "cluster upgrade stopped");
    u.failed = Some(note.clone());
    p.cond("Progressing", false, "UpgradeFailed", note.clone());
    p.events.push((EventType::Warning, "UpgradeFailed", note));
}

/// Takes the next step of the upgrade (or starts or refuses one). `None`: nothing to do, the
/// cluster is idle on its version.
pub(super) async fn step(
    ctx: &Context,
    cluster: &Cluster,
    api: &Api<Cluster>,
    p: &mut Pass,
    seen: &Seen<'_>,
) -> Result<Option<Action>> {
    let wanted = cluster.spec.datastore.version.clone();
    let running = p.s.version.clone().unwrap_or_else(|| wanted.clone());
    let Some(mut u) = p.s.upgrade.clone() else {
        return Ok(idle(cluster, p, seen, &running, &wanted));
    };
    if let Some(action) = stopped(cluster, p) {
        return Ok(Some(action));
    }
    p.s.task = Some(ClusterTask::UpgradingCluster);
    // Rollback and Cancel take effect between steps, while no master was handed over in the
    // shard in progress; otherwise that shard is finished first.
    if (u.rollback || u.cancel)
        && !u.reverting
        && u.failover.is_none()
        && u.stage != ShardStage::RestartOldMaster
    {
        let what = if u.rollback { "rollback" } else { "cancel" };
        // Between steps: the members restarting now come back first.
        if let Some(wait) = until_back(p, seen, &format!("the {what}")) {
            return Ok(Some(wait));
        }
        begin_revert(p, u, None, what);
        return Ok(Some(requeue::reread()));
    }
    if u.stage == ShardStage::AwaitingCommit {
        if u.hold {
            p.s.message = Some(format!(
                "every shard's replicas run redis {}; the masters still run {}: set the UpgradeRequest's action to Commit or Rollback",
                u.target_version, u.source_version
            ));
            return Ok(Some(requeue::members()));
        }
        info!(cluster = %cluster.name_any(), "committed: handing each shard over in turn");
        (u.shard, u.stage, u.step_started) = (0, ShardStage::Failover, p.now.clone());
        p.s.upgrade = Some(u);
        return Ok(Some(requeue::reread()));
    }
    let target = u.target_version.clone();
    let image = match crate::catalog::find(&seen.catalog, Datastore::Redis, &target) {
        Some(e) => e.spec.image.clone(),
        None => {
            p.waiting(
                "VersionNotInCatalog",
                format!("redis {target} left the catalog during the upgrade"),
            );
            return Ok(Some(requeue::person()));
        }
    };
    // A failover on record is confirmed (or sent) before anything else happens.
    if let Some(f) = u.failover.clone() {
        return confirm_failover(cluster, api, p, seen, u, f).await;
    }
    if matches!(u.stage, ShardStage::Failover | ShardStage::RestartOldMaster) {
        // Every shard of the wave is handed over before its old masters restart, so those
        // restarts overlap. Until the first handover is confirmed (stage Failover) the wave
        // can still go back.
        match next_handover(p, seen, &u) {
            Err(wait) => return Ok(Some(wait)),
            Ok(Some((shard, master))) => {
                return start_failover(cluster, api, p, seen, u, shard, &master).await;
            }
            Ok(None) if u.stage == ShardStage::Failover => return advance(p, seen, u).map(Some),
            Ok(None) => {}
        }
    }
    restart_wave(ctx, cluster, api, p, seen, u, &image).await
}

/// The first shard of the wave whose master does not run the target yet, with that master.
/// `Err`: a shard has no master (the caller waits).
fn next_handover(
    p: &mut Pass,
    seen: &Seen<'_>,
    u: &ClusterUpgrade,
) -> std::result::Result<Option<(usize, String)>, Action> {
    for shard in u.wave(seen.names.len()) {
        let master = master_of(p, shard)?;
        if !seen.runs(&master, &u.target_version) {
            return Ok(Some((shard, master)));
        }
    }
    Ok(None)
}

/// Shard `shard`'s master as every node sees it; `Err` (after saying so) when it has none.
fn master_of(p: &mut Pass, shard: usize) -> std::result::Result<String, Action> {
    match p.s.shards.get(shard).and_then(|s| s.primary.clone()) {
        Some(m) => Ok(m),
        None => {
            p.waiting("Unhealthy", format!("shard {shard} has no master"));
            Err(requeue::retry())
        }
    }
}

/// The restarting stages: each shard of the wave moves its next member to the target once the
/// one before it is back, so the wave's shards restart side by side, never two members of
/// one shard. When every shard of the wave is through, the wave's stage is done.
async fn restart_wave(
    ctx: &Context,
    cluster: &Cluster,
    api: &Api<Cluster>,
    p: &mut Pass,
    seen: &Seen<'_>,
    mut u: ClusterUpgrade,
    image: &str,
) -> Result<Option<Action>> {
    let mut masters = BTreeMap::new();
    for shard in u.wave(seen.names.len()) {
        match master_of(p, shard) {
            Ok(m) => masters.insert(shard, m),
            Err(wait) => return Ok(Some(wait)),
        };
    }
    let step = plan_wave(&mut u, seen, &masters);
    p.s.upgrade = Some(u.clone());
    match step {
        WaveStep::Move(member) => {
            let recorded = u.restarting.iter().any(|r| r.member == member);
            if !recorded
                && let Some(wait) = window_closed(cluster, p, &u, &format!("restarting {member}"))
            {
                return Ok(Some(wait));
            }
            let (pods, target) = (&seen.layout.pods, u.target_version.clone());
            move_member(ctx, cluster, api, p, pods, u, &member, image, &target)
                .await
                .map(Some)
        }
        WaveStep::Wait(waits) => {
            let why = waits.join("; ");
            p.s.message = Some(why.clone());
            check_deadline(p, &why);
            Ok(Some(requeue::retry()))
        }
        WaveStep::Done => advance(p, seen, u).map(Some),
    }
}

/// What a wave's restarting stage does next.
#[derive(Debug, PartialEq, Eq)]
enum WaveStep {
    /// Move this member to the target version (recorded first, then its pod patched).
    Move(String),
    /// Every shard of the wave waits on its member; each says on what.
    Wait(Vec<String>),
    /// Every shard of the wave is through the stage.
    Done,
}

/// Decides the wave's next restart from what the pass saw (`masters`: each shard's master),
/// shard by shard in order: a shard whose member on record is not back waits for it (unless
/// the upgrade turned around: it is moved back first); a shard whose members all run the
/// target is through, and its record is dropped from `u`; otherwise its next member moves.
fn plan_wave(
    u: &mut ClusterUpgrade,
    seen: &Seen<'_>,
    masters: &BTreeMap<usize, String>,
) -> WaveStep {
    let target = u.target_version.clone();
    let pods = &seen.layout.pods;
    let mut waits = vec![];
    for (&shard, master) in masters {
        let name = seen.names[shard].as_str();
        let pending = u
            .restarting
            .iter()
            .find(|r| owner(&r.member) == name)
            .map(|r| r.member.clone());
        let next = match &pending {
            Some(r) if seen.troubled.contains(r) => {
                if asks_for(pods, r, &target) {
                    waits.push(format!("waiting for {r} to rejoin on redis {target}"));
                    continue;
                }
                Some(r.clone())
            }
            // Reverting: a shard whose master already runs the new version keeps its replicas
            // on it (a replica cannot follow a newer master).
            _ if u.reverting && !seen.runs(master, &target) => None,
            // InPlace: the shard's only member is its master.
            _ => seen
                .members(shard)
                .into_iter()
                .find(|m| (u.in_place || *m != master) && !seen.runs(m, &target))
                .cloned(),
        };
        let Some(member) = next else {
            u.restarting.retain(|r| owner(&r.member) != name);
            continue;
        };
        if pending.as_deref() == Some(member.as_str()) && asks_for(pods, &member, &target) {
            // Patched already; the node has not come back on the target yet.
            waits.push(format!("waiting for {member} to run redis {target}"));
            continue;
        }
        return WaveStep::Move(member);
    }
    if waits.is_empty() {
        WaveStep::Done
    } else {
        WaveStep::Wait(waits)
    }
}

/// No upgrade in flight: the version applied, or one to start (or refuse, or wait for a
/// password change to reach every shard first).
fn idle(
    cluster: &Cluster,
    p: &mut Pass,
    seen: &Seen<'_>,
    running: &str,
    wanted: &str,
) -> Option<Action> {
    let versions: std::collections::BTreeSet<&str> =
        seen.probes.values().map(|p| p.version.as_str()).collect();
    if versions.len() > 1 {
        // A shard left half-way by a withdrawn upgrade, or a member changed by hand.
        p.cond(
            "VersionApplied",
            false,
            "MixedVersions",
            format!(
                "the members run different versions ({}); set spec.datastore.version to the newest (or run an UpgradeRequest to it) to finish the upgrade",
                versions.into_iter().collect::<Vec<_>>().join(", ")
            ),
        );
        if wanted == running {
            return None;
        }
    } else if wanted == running {
        p.cond(
            "VersionApplied",
            true,
            "Applied",
            format!("every shard runs redis {running}"),
        );
        return None;
    }
    if let Some(shard) = &seen.rotating {
        p.s.message = Some(format!(
            "the credentials Secret changed and {shard} has not set the new passwords on its members yet; the upgrade to {wanted} starts once every shard has"
        ));
        return Some(requeue::members());
    }
    start(cluster, p, seen, running, wanted)
}

/// `what` waits while a member the upgrade restarts is not back (said in status, the step's
/// deadline checked): `Some(wait)` until every one is.
fn until_back(p: &mut Pass, seen: &Seen<'_>, what: &str) -> Option<Action> {
    if seen.troubled.is_empty() {
        return None;
    }
    let waiting: Vec<&str> = seen.troubled.iter().map(String::as_str).collect();
    let why = format!("{what} waits for {} to be back", waiting.join(", "));
    p.s.message = Some(why.clone());
    check_deadline(p, &why);
    Some(requeue::retry())
}

/// With schedule MaintenanceWindow, a forward step (`what`) starts only while the Cluster's
/// window is open: Some(wait) when it is closed.
fn window_closed(
    cluster: &Cluster,
    p: &mut Pass,
    u: &ClusterUpgrade,
    what: &str,
) -> Option<Action> {
    let w = cluster.spec.maintenance_window.as_ref()?;
    if !u.window_only || u.reverting || crate::window::is_open(p.now.0, w) {
        return None;
    }
    let opens = crate::window::next_open(p.now.0, w);
    p.s.message = Some(format!(
        "the maintenance window is closed; {what} starts when it opens at {opens}"
    ));
    let wait = Duration::try_from(opens.duration_since(p.now.0)).unwrap_or_default();
    Some(requeue::after(wait))
}

/// Turns the upgrade around: every replica whose master still runs the source returns to it,
/// shard by shard. `aborted` is the failure that caused it (a request's upgrade goes back on
/// its own); `what` names the cause in the Event.
fn begin_revert(p: &mut Pass, mut u: ClusterUpgrade, aborted: Option<String>, what: &str) {
    let note = format!(
        "{what}: the replicas return to redis {} (no master was handed over in {})",
        u.source_version,
        u.shards_text()
    );
    info!("{note}");
    p.events
        .push((EventType::Normal, "UpgradeReverting", note.clone()));
    p.cond("Progressing", true, "Reverting", note);
    // After a hold every shard's replicas may have moved; otherwise only the wave in progress
    // (the earlier ones were handed over and stay). Members still restarting stay on record:
    // the gate lets them be down while they are moved back.
    if u.rollback || u.hold || u.stage == ShardStage::AwaitingCommit {
        u.shard = 0;
    }
    u.target_version = u.source_version.clone();
    (u.failed, u.reverting, u.stage) = (None, true, ShardStage::RestartReplicas);
    (u.failover, u.step_started) = (None, p.now.clone());
    // Their move back is a new step, with its own deadline.
    for r in &mut u.restarting {
        r.started = p.now.clone();
    }
    if aborted.is_some() {
        u.aborted = aborted;
    }
    p.s.upgrade = Some(u);
}

/// How `u` ended, for `status.lastUpgrade` (where its UpgradeRequest's job reads it).
fn outcome(p: &Pass, u: &ClusterUpgrade, result: UpgradeResult, note: String) -> UpgradeOutcome {
    UpgradeOutcome {
        request: u.request.clone(),
        job: u.job.clone(),
        source_version: u.source_version.clone(),
        target_version: u.target_version.clone(),
        result,
        message: Some(note),
        finish_time: Some(p.now.clone()),
        outage_ms: None,
        switchover_ms: None,
    }
}

/// The upgrade ended: its outcome on record (an UpgradeRequest reads it there), the cluster
/// idle again.
fn end(p: &mut Pass, u: &ClusterUpgrade, result: UpgradeResult, note: String) {
    info!(?result, "{note}");
    p.s.last_upgrade = Some(outcome(p, u, result, note.clone()));
    if result == UpgradeResult::Succeeded {
        p.s.version = Some(u.target_version.clone());
        p.cond("VersionApplied", true, "Applied", note.clone());
    }
    p.s.upgrade = None;
    p.s.task = Some(ClusterTask::None);
    p.cond("Progressing", false, "Idle", String::new());
    let (t, reason) = match result {
        UpgradeResult::Succeeded => (EventType::Normal, "UpgradeSucceeded"),
        UpgradeResult::Failed => (EventType::Warning, "UpgradeFailed"),
        UpgradeResult::Cancelled => (EventType::Normal, "UpgradeCancelled"),
        UpgradeResult::RolledBack => (EventType::Normal, "UpgradeReverted"),
    };
    p.events.push((t, reason, note));
}

/// Starts an upgrade to `wanted`, or says why it cannot run (None: the cluster stays idle and
/// watched on its version).
fn start(
    cluster: &Cluster,
    p: &mut Pass,
    seen: &Seen<'_>,
    running: &str,
    wanted: &str,
) -> Option<Action> {
    let refuse = |p: &mut Pass, reason: &str, why: String| {
        p.cond("VersionApplied", false, reason, why);
        None
    };
    let Some(entry) = crate::catalog::find(&seen.catalog, Datastore::Redis, wanted) else {
        return refuse(
            p,
            "VersionNotInCatalog",
            format!(
                "redis {wanted} is not in the DatastoreVersion catalog; the Cluster stays on {running}"
            ),
        );
    };
    if let Err(e) = crate::catalog::check_path(Datastore::Redis, running, &entry.spec) {
        // An UpgradeRequest moved the cluster past its spec: say so, and how to align Git.
        let by_request =
            p.s.last_upgrade
                .as_ref()
                .filter(|l| l.result == UpgradeResult::Succeeded && l.target_version == running)
                .and_then(|l| l.request.clone());
        let why = match (by_request, &e) {
            (Some(r), crate::catalog::PathError::Downgrade { .. }) => format!(
                "UpgradeRequest {r} upgraded the Cluster to {running}; spec version {wanted} is older and is not acted on — set spec.datastore.version to {running}"
            ),
            _ => format!("{e}; the Cluster stays on {running}"),
        };
        return refuse(p, "UpgradeRefused", why);
    }
    if cluster.spec.replicas_per_shard < 2 {
        return refuse(
            p,
            "UpgradeRefused",
            format!(
                "a shard of one member cannot hand its slots to an upgraded replica, so upgrading it means an outage of its slots: only an UpgradeRequest of type InPlace does that (it restarts each shard's only member on the new version), or create the Cluster with replicasPerShard 2 or more. The Cluster stays on {running}"
            ),
        );
    }
    let mut u = ClusterUpgrade::new(running, wanted, p.now.clone());
    u.shards_at_once = shards_at_once(cluster, false);
    let note = format!(
        "upgrading {} shards from redis {running} to {wanted}, {}",
        seen.names.len(),
        match u.shards_at_once {
            1 => "one shard at a time".to_string(),
            n => format!("{n} shards at a time"),
        }
    );
    info!(cluster = %cluster.name_any(), "{note}");
    p.s.upgrade = Some(u);
    p.s.task = Some(ClusterTask::UpgradingCluster);
    p.cond("VersionApplied", false, "Upgrading", note.clone());
    p.cond("Progressing", true, "Upgrading", note.clone());
    p.events.push((EventType::Normal, "UpgradeStarted", note));
    Some(requeue::reread())
}

/// How many shards an upgrade of `cluster` takes at once: its `maxUnavailableShards`, one for
/// InPlace (whose restarts leave slots unserved).
pub fn shards_at_once(cluster: &Cluster, in_place: bool) -> i32 {
    if in_place {
        1
    } else {
        cluster
            .spec
            .max_unavailable_shards
            .clamp(1, cluster.spec.shards.max(1))
    }
}

/// How a finished revert ended, by its cause: a failed step, a Cancel, or a rollback.
fn reverted(u: &ClusterUpgrade) -> (UpgradeResult, String) {
    match (&u.aborted, u.cancel) {
        (Some(why), _) => (
            UpgradeResult::Failed,
            format!("{why}; the replicas are back on redis {}", u.source_version),
        ),
        (None, true) => (
            UpgradeResult::Cancelled,
            format!(
                "cancelled; the shards in progress are back on redis {}",
                u.source_version
            ),
        ),
        _ => (
            UpgradeResult::RolledBack,
            format!(
                "every replica whose master runs redis {0} runs {0} again; the upgrade is withdrawn",
                u.source_version
            ),
        ),
    }
}

/// The wave's current stage is done: on to its next stage, the next wave, or the end.
fn advance(p: &mut Pass, seen: &Seen<'_>, mut u: ClusterUpgrade) -> Result<Action> {
    let wave = u.wave(seen.names.len());
    let in_wave = |pod: &str| wave.clone().any(|s| owner(pod) == seen.names[s]);
    u.restarting.retain(|r| !in_wave(&r.member));
    u.step_started = p.now.clone();
    let last = wave.end >= seen.names.len();
    let at_once = u.shards_at_once.max(1);
    let again = requeue::reread();
    match u.stage {
        ShardStage::RestartReplicas if u.reverting && last => {
            let (result, note) = reverted(&u);
            end(p, &u, result, note);
            return Ok(again);
        }
        // A hold upgrades every shard's replicas before any failover.
        ShardStage::RestartReplicas if u.reverting || (u.hold && !last) => u.shard += at_once,
        ShardStage::RestartReplicas if u.hold => {
            (u.shard, u.stage) = (0, ShardStage::AwaitingCommit);
            p.events.push((
                EventType::Normal,
                "AwaitingCommit",
                format!(
                    "every shard's replicas run redis {}; no master was handed over",
                    u.target_version
                ),
            ));
        }
        ShardStage::RestartReplicas if !u.in_place => {
            u.stage = ShardStage::Failover;
            u.failover = None;
        }
        ShardStage::AwaitingCommit => (u.shard, u.stage) = (0, ShardStage::Failover),
        // Every master of the wave runs the target: on to restarting the old ones.
        ShardStage::Failover => u.stage = ShardStage::RestartOldMaster,
        // The wave is done: its old masters restarted, or (InPlace) its only members.
        ShardStage::RestartReplicas | ShardStage::RestartOldMaster => {
            let done = wave.end.saturating_sub(1);
            u.failover = None;
            if last {
                let note = format!(
                    "every shard runs redis {} (from {})",
                    u.target_version, u.source_version
                );
                end(p, &u, UpgradeResult::Succeeded, note);
                return Ok(again);
            }
            for shard in wave {
                let master = p.s.shards.get(shard).and_then(|s| s.primary.clone());
                p.events.push((
                    EventType::Normal,
                    "ShardUpgraded",
                    format!(
                        "shard {shard} runs redis {} (master {})",
                        u.target_version,
                        master.unwrap_or_default()
                    ),
                ));
            }
            if u.cancel || u.rollback {
                let note = format!(
                    "cancelled after shard {done} was handed over: shards 0 to {done} run redis {}, the others {}",
                    u.target_version, u.source_version
                );
                end(p, &u, UpgradeResult::Cancelled, note);
                return Ok(again);
            }
            u.shard += at_once;
            u.stage = ShardStage::RestartReplicas;
        }
    }
    p.s.upgrade = Some(u);
    Ok(again)
}

/// Hands `shard`'s slots from `master` to an upgraded replica streaming from it: the intent
/// on record first, then a graceful `CLUSTER FAILOVER`, confirmed when every node sees it.
#[allow(clippy::too_many_arguments)]
async fn start_failover(
    cluster: &Cluster,
    api: &Api<Cluster>,
    p: &mut Pass,
    seen: &Seen<'_>,
    mut u: ClusterUpgrade,
    shard: usize,
    master: &str,
) -> Result<Option<Action>> {
    let target = u.target_version.clone();
    // A failover is voted on by the masters and confirmed by every node: all of them up.
    if let Some(wait) = until_back(p, seen, &format!("handing {master}'s slots over")) {
        return Ok(Some(wait));
    }
    if let Some(wait) = window_closed(cluster, p, &u, &format!("handing {master}'s slots over")) {
        return Ok(Some(wait));
    }
    let candidate = p.s.shards[shard].replicas.iter().find(|r| {
        seen.runs(r, &target)
            && !seen.troubled.contains(*r)
            && seen.probes.get(*r).is_some_and(|probe| probe.streaming)
    });
    let (Some(candidate), Some(old)) = (candidate.cloned(), seen.node(master)) else {
        p.waiting(
            "NoCandidate",
            format!("no upgraded replica of {master} is streaming from it yet"),
        );
        return Ok(Some(requeue::retry()));
    };
    let Some(new) = seen.node(&candidate) else {
        p.waiting("NoCandidate", format!("no node id for {candidate}"));
        return Ok(Some(requeue::retry()));
    };
    let f = FailoverIntent {
        master: master.to_string(),
        master_id: old.id.clone(),
        config_epoch: old.config_epoch as i64,
        slots: old.slots.iter().map(|&(a, b)| format!("{a}-{b}")).collect(),
        candidate: candidate.clone(),
        candidate_id: new.id.clone(),
        sent: false,
    };
    u.failover = Some(f.clone());
    u.step_started = p.now.clone();
    p.s.upgrade = Some(u.clone());
    p.s.message = Some(format!(
        "shard {shard}: handing {master}'s slots to {candidate} (CLUSTER FAILOVER)"
    ));
    // The intent first: a restarted operator confirms or sends this failover, never another.
    if !p.record(api, cluster).await? {
        return Ok(Some(requeue::reread()));
    }
    crate::failpoint::passed("api:cluster-status:failover-intent").await;
    send(cluster, api, p, seen, u, f).await
}

/// The failover on record: confirmed when every node sees it done, sent if the operator died
/// between recording and sending it.
async fn confirm_failover(
    cluster: &Cluster,
    api: &Api<Cluster>,
    p: &mut Pass,
    seen: &Seen<'_>,
    mut u: ClusterUpgrade,
    f: FailoverIntent,
) -> Result<Option<Action>> {
    let shard = owner(&f.master).to_string();
    let slots: Vec<SlotRange> = f.slots.iter().filter_map(|r| parse_range(r)).collect();
    match rc::failover_done(
        seen.views,
        &f.candidate_id,
        &f.master_id,
        &slots,
        f.config_epoch.max(0) as u64,
    ) {
        Ok(()) => {
            let note = format!(
                "{shard}: {} took {}'s slots with a graceful CLUSTER FAILOVER, confirmed by every node",
                f.candidate, f.master
            );
            info!("{note}");
            p.events.push((EventType::Normal, "ShardFailedOver", note));
            // The wave has handed a shard over: from here it only goes forward.
            u.stage = ShardStage::RestartOldMaster;
            u.failover = None;
            u.step_started = p.now.clone();
            p.s.upgrade = Some(u);
            Ok(Some(requeue::reread()))
        }
        // Recorded but not known to be sent (the operator died in between): send it, unless
        // a node already sees the candidate leading (it was sent; a replica's FAILOVER sent
        // to it now would be refused).
        Err(why)
            if !f.sent
                && !seen
                    .views
                    .iter()
                    .any(|v| v.node(&f.candidate_id).is_some_and(|n| n.master)) =>
        {
            tracing::debug!(%why, "the failover was recorded but not sent");
            send(cluster, api, p, seen, u, f).await
        }
        Err(why) => {
            p.s.message = Some(format!("{shard}: failover not confirmed yet: {why}"));
            check_deadline(p, &why);
            Ok(Some(requeue::confirm()))
        }
    }
}

async fn send(
    cluster: &Cluster,
    api: &Api<Cluster>,
    p: &mut Pass,
    seen: &Seen<'_>,
    mut u: ClusterUpgrade,
    mut f: FailoverIntent,
) -> Result<Option<Action>> {
    let t = seen
        .layout
        .addr
        .get(&f.candidate)
        .and_then(|a| seen.targets.get(a));
    let Some(t) = t else {
        p.waiting("NoCandidate", format!("{} has no address", f.candidate));
        return Ok(Some(requeue::retry()));
    };
    info!(candidate = %f.candidate, master = %f.master, "CLUSTER FAILOVER");
    if let Err(e) = rc::failover(t).await {
        p.waiting(
            "FailoverRefused",
            format!("CLUSTER FAILOVER on {}: {e}", f.candidate),
        );
        return Ok(Some(requeue::retry()));
    }
    f.sent = true;
    u.failover = Some(f);
    p.s.upgrade = Some(u);
    // Lost to a concurrent write: the failover was sent, and the next pass confirms it (a node
    // seeing the candidate lead keeps it from being sent twice).
    p.record(api, cluster).await?;
    Ok(Some(requeue::confirm()))
}

fn parse_range(r: &str) -> Option<SlotRange> {
    let (a, b) = r.split_once('-').unwrap_or((r, r));
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Moves `member` to the target version in place: the node restarts on its claim with the
/// same `nodes.conf`, so it rejoins as the same node.
async fn restart(
    ctx: &Context,
    cluster: &Cluster,
    member: &str,
    image: &str,
    version: &str,
) -> Result<()> {
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    info!(
        member,
        version, "restarting the member on the target version"
    );
    pods.patch(
        member,
        &PatchParams::default(),
        &Patch::Strategic(children::version_patch(rc::CONTAINER, image, version)),
    )
    .await
    .map_err(Error::kube("moving a member to the target version"))?;
    crate::failpoint::passed(&format!("api:cluster-restart@{member}")).await;
    Ok(())
}

/// While reverting, the member to return to the source may be one that is down (its new image
/// never started): it is restarted without the gate, which would wait for it forever (an
/// InPlace shard's slots are unserved meanwhile), as long as every member down is one the
/// upgrade restarts (still one member of a shard down at most).
pub(super) async fn revert_down_member(
    ctx: &Context,
    cluster: &Cluster,
    api: &Api<Cluster>,
    p: &mut Pass,
    layout: &Layout,
    catalog: &[DatastoreVersion],
) -> Result<Option<Action>> {
    let Some(u) =
        p.s.upgrade
            .clone()
            .filter(|u| u.reverting && u.failed.is_none())
    else {
        return Ok(None);
    };
    let down: Vec<&String> = layout
        .pods
        .iter()
        .filter(|(_, p)| !pod_ready(p))
        .map(|(n, _)| n)
        .collect();
    // Down for the upgrade's sake: recorded as restarting (one per shard at most), or the one
    // member down.
    let restarting = |m: &String| u.restarting.iter().any(|r| &r.member == m);
    if down.len() > 1 && !down.iter().all(|m| restarting(m)) {
        return Ok(None);
    }
    // Only a member moved to the new version is moved back (any shard: after a hold the
    // revert starts at shard 0 while the failed member may be in a later one).
    let Some(member) = down
        .into_iter()
        .find(|m| !asks_for(&layout.pods, m, &u.target_version))
    else {
        return Ok(None);
    };
    let Some(entry) = crate::catalog::find(catalog, Datastore::Redis, &u.target_version) else {
        return Ok(None);
    };
    let target = u.target_version.clone();
    move_member(
        ctx,
        cluster,
        api,
        p,
        &layout.pods,
        u,
        member,
        &entry.spec.image,
        &target,
    )
    .await
    .map(Some)
}

/// The member's pod asks for `version` (it was patched; whether it runs it is another matter).
fn asks_for(pods: &BTreeMap<String, Pod>, member: &str, version: &str) -> bool {
    pods.get(member)
        .and_then(|p| p.annotations().get(ANNOTATION_VERSION))
        .is_some_and(|v| v == version)
}

/// Moves `member` to `version`: the intent first (`u.member`), then the pod patch. A recorded
/// intent whose patch never landed (the operator died in between) is patched now; one that
/// landed is not patched again.
#[allow(clippy::too_many_arguments)]
async fn move_member(
    ctx: &Context,
    cluster: &Cluster,
    api: &Api<Cluster>,
    p: &mut Pass,
    pods: &BTreeMap<String, Pod>,
    mut u: ClusterUpgrade,
    member: &str,
    image: &str,
    version: &str,
) -> Result<Action> {
    let recorded = u.restarting.iter().any(|r| r.member == member);
    if !recorded {
        let shard = owner(member);
        u.restarting.retain(|r| owner(&r.member) != shard);
        u.restarting.push(MemberRestart {
            member: member.to_string(),
            started: p.now.clone(),
        });
    }
    // Another shard of the wave may be ready to move too: look again soon.
    let next = if u.restarting.len() < u.shards_at_once.max(1) as usize {
        requeue::reread()
    } else {
        requeue::retry()
    };
    p.s.upgrade = Some(u);
    if !recorded {
        p.s.message = Some(format!("restarting {member} on redis {version}"));
        if !p.record(api, cluster).await? {
            return Ok(requeue::reread());
        }
        crate::failpoint::passed("api:cluster-status:restart-intent").await;
    }
    if !asks_for(pods, member, version) {
        restart(ctx, cluster, member, image, version).await?;
    }
    Ok(next)
}

/// A stopped upgrade. A request's goes back on its own while the shard's master still runs
/// the source; a spec-driven one stays stopped, saying why, until the version is set back to
/// the source. Either returns the replicas to it. Runs before any gate (the member that
/// stopped it is typically down). `None` when no upgrade is stopped.
pub(super) fn stopped(cluster: &Cluster, p: &mut Pass) -> Option<Action> {
    let wanted = &cluster.spec.datastore.version;
    let u = p.s.upgrade.clone()?;
    let why = u.failed.clone()?;
    // The shard's master still runs the source unless it already failed over (a source
    // replica cannot follow a newer master, so that shard is not reverted).
    let revertible = u.stage != ShardStage::RestartOldMaster && !u.reverting;
    if revertible && (u.request.is_some() || *wanted == u.source_version) {
        let what = if u.request.is_some() {
            "the step failed"
        } else {
            "reverting"
        };
        begin_revert(p, u.clone(), u.request.as_ref().map(|_| why), what);
        return Some(requeue::reread());
    }
    if u.request.is_some() && p.s.last_upgrade.as_ref().map(|l| &l.job) != Some(&u.job) {
        // Cannot go back: the request learns the outcome; the cluster waits for a person.
        let note = format!(
            "{why}; {}: a master already runs {}, so it cannot be returned: the member needs a person to start on it",
            u.shards_text(),
            u.target_version
        );
        p.s.last_upgrade = Some(outcome(p, &u, UpgradeResult::Failed, note));
    }
    p.s.message = Some(if revertible {
        format!(
            "the upgrade to {} stopped: {why}; set spec.datastore.version back to {} to return the shard's replicas to it",
            u.target_version, u.source_version
        )
    } else {
        format!("the upgrade to {} stopped: {why}", u.target_version)
    });
    p.s.task = Some(ClusterTask::UpgradingCluster);
    Some(requeue::person())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ClusterStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    fn pass(now: i64, stage: ShardStage) -> Pass {
        let s = ClusterStatus {
            upgrade: Some(ClusterUpgrade {
                shard: 1,
                stage,
                restarting: if stage == ShardStage::Failover {
                    vec![]
                } else {
                    vec![MemberRestart {
                        member: "c-shard-1-1".into(),
                        started: at(1000),
                    }]
                },
                step_started: at(1000),
                ..ClusterUpgrade::new("6.2.14", "7.0.15", at(900))
            }),
            ..Default::default()
        };
        Pass {
            written: s.clone(),
            s,
            generation: Some(2),
            now: at(now),
            events: vec![],
            step_timeout: Duration::from_secs(600),
            fence_timeout: Duration::from_secs(60),
            rv: None,
        }
    }

    fn cluster(version: &str) -> Cluster {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "baton.dev/v1alpha1", "kind": "Cluster",
            "metadata": {"name": "c", "namespace": "ns"},
            "spec": {"datastore": {"type": "redis", "version": version}, "shards": 3},
        }))
        .unwrap()
    }

    #[test]
    fn a_step_fails_at_its_own_deadline_and_a_failover_at_the_fence_timeout() {
        let mut p = pass(1000 + 599, ShardStage::RestartReplicas);
        check_deadline(&mut p, "not Ready");
        assert!(p.s.upgrade.as_ref().unwrap().failed.is_none());
        let mut p = pass(1000 + 601, ShardStage::RestartReplicas);
        check_deadline(&mut p, "not Ready");
        let why = p.s.upgrade.as_ref().unwrap().failed.clone().unwrap();
        assert!(
            why.contains("c-shard-1-1") && why.contains("600 s") && why.contains("not Ready"),
            "{why}"
        );
        assert_eq!(p.events.len(), 1);
        assert_eq!(p.events[0].1, "UpgradeFailed");
        // A failover gets fenceTimeoutSeconds, not the step's ten minutes.
        let mut p = pass(1000 + 61, ShardStage::Failover);
        check_deadline(&mut p, "not confirmed");
        assert!(
            p.s.upgrade
                .as_ref()
                .unwrap()
                .failed
                .as_deref()
                .unwrap()
                .contains("the failover")
        );
        // Once failed, it is not failed again (one Event).
        check_deadline(&mut p, "still");
        assert_eq!(p.events.len(), 1);
    }

    #[test]
    fn a_stopped_upgrade_waits_for_the_source_version_and_then_reverts_the_shards_replicas() {
        let mut p = pass(2000, ShardStage::RestartReplicas);
        check_deadline(&mut p, "not Ready");
        assert!(stopped(&cluster("7.0.15"), &mut p).is_some());
        let msg = p.s.message.clone().unwrap();
        assert!(msg.contains("back to 6.2.14"), "{msg}");
        assert!(stopped(&cluster("6.2.14"), &mut p).is_some());
        let u = p.s.upgrade.clone().unwrap();
        assert!(u.reverting && u.failed.is_none());
        assert_eq!(
            (u.target_version.as_str(), u.stage, u.shard),
            ("6.2.14", ShardStage::RestartReplicas, 1)
        );
        // The member that did not come back stays on record (the gate lets it be down while
        // it is moved back), its clock restarted for that move.
        assert_eq!(u.restarting.len(), 1);
        assert_eq!(
            (u.restarting[0].member.as_str(), &u.restarting[0].started),
            ("c-shard-1-1", &at(2000))
        );
        // A shard that already failed over to the new version is not reverted.
        let mut p = pass(2000, ShardStage::RestartOldMaster);
        check_deadline(&mut p, "not Ready");
        stopped(&cluster("6.2.14"), &mut p);
        assert!(!p.s.upgrade.as_ref().unwrap().reverting);
        // Nothing stopped: nothing to say.
        let mut p = pass(1000, ShardStage::Failover);
        assert!(stopped(&cluster("6.2.14"), &mut p).is_none());
    }

    fn seen_of<'a>(names: &'a [String], layout: &'a Layout) -> Seen<'a> {
        static T: std::sync::OnceLock<BTreeMap<String, Target>> = std::sync::OnceLock::new();
        static P: std::sync::OnceLock<BTreeMap<String, Probe>> = std::sync::OnceLock::new();
        static N: std::sync::OnceLock<std::collections::BTreeSet<String>> =
            std::sync::OnceLock::new();
        Seen {
            rotating: None,
            names,
            layout,
            troubled: N.get_or_init(Default::default),
            targets: T.get_or_init(BTreeMap::new),
            views: &[],
            probes: P.get_or_init(BTreeMap::new),
            catalog: vec![],
        }
    }

    #[test]
    fn a_hold_moves_every_shards_replicas_before_any_failover_and_commit_starts_at_shard_0() {
        let names: Vec<String> = (0..2).map(|n| format!("c-shard-{n}")).collect();
        let layout = Layout::default();
        let seen = seen_of(&names, &layout);
        let mut p = pass(1000, ShardStage::RestartReplicas);
        let mut u = p.s.upgrade.clone().unwrap();
        (u.shard, u.hold) = (0, true);
        advance(&mut p, &seen, u).unwrap();
        let u = p.s.upgrade.clone().unwrap();
        assert_eq!((u.shard, u.stage), (1, ShardStage::RestartReplicas));
        advance(&mut p, &seen, u).unwrap();
        let u = p.s.upgrade.clone().unwrap();
        assert_eq!((u.shard, u.stage), (0, ShardStage::AwaitingCommit));
        assert_eq!(p.events.last().unwrap().1, "AwaitingCommit");
        // Without the hold, a shard's replicas are followed by its failover.
        let mut p = pass(1000, ShardStage::RestartReplicas);
        let u = p.s.upgrade.clone().unwrap();
        advance(&mut p, &seen, u).unwrap();
        assert_eq!(p.s.upgrade.as_ref().unwrap().stage, ShardStage::Failover);
    }

    #[test]
    fn shards_go_in_waves_each_stage_for_the_whole_wave_and_a_restart_has_its_own_clock() {
        let names: Vec<String> = (0..3).map(|n| format!("c-shard-{n}")).collect();
        let layout = Layout::default();
        let seen = seen_of(&names, &layout);
        let mut p = pass(1000, ShardStage::RestartReplicas);
        let mut u = p.s.upgrade.clone().unwrap();
        (u.shard, u.shards_at_once) = (0, 2);
        u.restarting = ["c-shard-0-1", "c-shard-1-1", "c-shard-2-1"]
            .iter()
            .map(|m| MemberRestart {
                member: m.to_string(),
                started: at(1000),
            })
            .collect();
        assert_eq!(u.wave(3), 0..2);
        assert_eq!(
            u.describe(),
            "shards 0-1 RestartReplicas c-shard-0-1,c-shard-1-1,c-shard-2-1"
        );
        let stages = |p: &mut Pass, u: ClusterUpgrade| {
            advance(p, &seen, u).unwrap();
            let u = p.s.upgrade.clone().unwrap();
            (u.shard, u.stage, u)
        };
        let (shard, stage, u) = stages(&mut p, u);
        assert_eq!((shard, stage), (0, ShardStage::Failover));
        // The wave's members leave the record; another shard's (after a hold's revert) stays.
        let left: Vec<&str> = u.restarting.iter().map(|r| r.member.as_str()).collect();
        assert_eq!(left, ["c-shard-2-1"]);
        let (shard, stage, u) = stages(&mut p, u);
        assert_eq!((shard, stage), (0, ShardStage::RestartOldMaster));
        let (shard, stage, u) = stages(&mut p, u);
        assert_eq!((shard, stage), (2, ShardStage::RestartReplicas));
        assert_eq!(u.wave(3), 2..3, "the last wave is what is left");
        let events: Vec<&str> = p.events.iter().map(|e| e.2.as_str()).collect();
        assert!(
            events.iter().any(|e| e.starts_with("shard 0 runs"))
                && events.iter().any(|e| e.starts_with("shard 1 runs")),
            "{events:?}"
        );
        let (_, stage, u) = stages(&mut p, u);
        assert_eq!(stage, ShardStage::Failover);
        let (_, _, u) = stages(&mut p, u);
        advance(&mut p, &seen, u).unwrap();
        assert!(p.s.upgrade.is_none(), "every wave done");
        assert_eq!(
            p.s.last_upgrade.as_ref().unwrap().result,
            UpgradeResult::Succeeded
        );
        // Each restart's deadline runs from its own record: the older one is late first.
        let mut p = pass(1000 + 601, ShardStage::RestartReplicas);
        p.s.upgrade
            .as_mut()
            .unwrap()
            .restarting
            .push(MemberRestart {
                member: "c-shard-2-1".into(),
                started: at(1500),
            });
        check_deadline(&mut p, "not back");
        let why = p.s.upgrade.as_ref().unwrap().failed.clone().unwrap();
        assert!(why.contains("restarting c-shard-1-1"), "{why}");
    }

    /// A member pod that asks for `asks` and runs `runs` (the node's container, and what its
    /// server reports), Ready.
    fn member(name: &str, asks: &str, runs: &str) -> (Pod, Probe) {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "annotations": {ANNOTATION_VERSION: asks}},
            "spec": {"containers": [{"name": "redis", "image": format!("redis:{asks}")}]},
            "status": {
                "podIP": "127.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "redis", "image": format!("redis:{runs}"),
                    "imageID": "", "ready": true, "restartCount": 0}],
            },
        }))
        .unwrap();
        let probe = Probe {
            role: crate::engine::Role::Standby,
            version: runs.to_string(),
            position: crate::engine::position::Position::Lsn(0),
            received: None,
            following: None,
            streaming: true,
            fenced: false,
            stale_certificate: false,
        };
        (pod, probe)
    }

    #[test]
    fn a_wave_moves_each_shards_next_member_once_the_one_before_is_back() {
        let names: Vec<String> = (0..3).map(|n| format!("c-shard-{n}")).collect();
        let masters: BTreeMap<usize, String> =
            (0..2).map(|n| (n, format!("c-shard-{n}-0"))).collect();
        let (old, new) = ("6.2.14", "7.0.15");
        // Each case: the members as (name, asks, runs), the members on record, those not back,
        // and what the wave does next.
        type Case<'a> = (
            &'a str,
            Vec<(&'a str, &'a str, &'a str)>,
            Vec<&'a str>,
            Vec<&'a str>,
            WaveStep,
            Vec<&'a str>,
        );
        let shard = |n: usize, replica: (&'static str, &'static str)| {
            vec![
                (["c-shard-0-0", "c-shard-1-0"][n], old, old),
                (["c-shard-0-1", "c-shard-1-1"][n], replica.0, replica.1),
            ]
        };
        let both = |a, b| [shard(0, a), shard(1, b)].concat();
        let cases: Vec<Case> = vec![
            (
                "nothing moved: shard 0's replica first",
                both((old, old), (old, old)),
                vec![],
                vec![],
                WaveStep::Move("c-shard-0-1".into()),
                vec![],
            ),
            (
                "shard 0's replica restarting and not back: shard 1's moves beside it",
                both((new, old), (old, old)),
                vec!["c-shard-0-1"],
                vec!["c-shard-0-1"],
                WaveStep::Move("c-shard-1-1".into()),
                vec!["c-shard-0-1"],
            ),
            (
                "both restarting: the wave waits on both",
                both((new, old), (new, old)),
                vec!["c-shard-0-1", "c-shard-1-1"],
                vec!["c-shard-0-1", "c-shard-1-1"],
                WaveStep::Wait(vec![
                    "waiting for c-shard-0-1 to rejoin on redis 7.0.15".into(),
                    "waiting for c-shard-1-1 to rejoin on redis 7.0.15".into(),
                ]),
                vec!["c-shard-0-1", "c-shard-1-1"],
            ),
            (
                "patched, the node not restarted yet (Ready on the old build): it waits",
                both((new, old), (new, new)),
                vec!["c-shard-0-1", "c-shard-1-1"],
                vec![],
                WaveStep::Wait(vec!["waiting for c-shard-0-1 to run redis 7.0.15".into()]),
                vec!["c-shard-0-1"],
            ),
            (
                "both back on the target: the wave is through, its records dropped",
                both((new, new), (new, new)),
                vec!["c-shard-0-1", "c-shard-1-1"],
                vec![],
                WaveStep::Done,
                vec![],
            ),
            (
                "on the target but some node still sees it failing: not back",
                both((new, new), (new, new)),
                vec!["c-shard-0-1"],
                vec!["c-shard-0-1"],
                WaveStep::Wait(vec![
                    "waiting for c-shard-0-1 to rejoin on redis 7.0.15".into(),
                ]),
                vec!["c-shard-0-1"],
            ),
        ];
        for (what, pods, recorded, troubled, want, left) in cases {
            let mut layout = Layout::default();
            let mut probes = BTreeMap::new();
            for (name, asks, runs) in pods {
                let (pod, probe) = member(name, asks, runs);
                layout.addr.insert(name.into(), format!("{name}:6379"));
                layout.pods.insert(name.into(), pod);
                probes.insert(name.to_string(), probe);
            }
            let troubled: std::collections::BTreeSet<String> =
                troubled.iter().map(|t| t.to_string()).collect();
            let seen = Seen {
                probes: &probes,
                troubled: &troubled,
                ..seen_of(&names, &layout)
            };
            let mut u = ClusterUpgrade::new(old, new, at(1000));
            u.shards_at_once = 2;
            u.restarting = recorded
                .iter()
                .map(|m| MemberRestart {
                    member: m.to_string(),
                    started: at(1000),
                })
                .collect();
            assert_eq!(plan_wave(&mut u, &seen, &masters), want, "{what}");
            let kept: Vec<&str> = u.restarting.iter().map(|r| r.member.as_str()).collect();
            assert_eq!(kept, left, "{what}");
        }
    }

    #[test]
    fn a_wave_turned_around_moves_a_member_that_never_came_back_first() {
        let names: Vec<String> = (0..2).map(|n| format!("c-shard-{n}")).collect();
        let masters = BTreeMap::from([(0, "c-shard-0-0".to_string())]);
        let mut layout = Layout::default();
        let mut probes = BTreeMap::new();
        for (name, asks, runs) in [
            ("c-shard-0-0", "6.2.14", "6.2.14"),
            ("c-shard-0-1", "7.0.15", "7.0.15"),
            ("c-shard-0-2", "broken", "6.2.14"),
        ] {
            let (pod, probe) = member(name, asks, runs);
            layout.addr.insert(name.into(), format!("{name}:6379"));
            layout.pods.insert(name.into(), pod);
            probes.insert(name.to_string(), probe);
        }
        // Reverting to 6.2.14: c-shard-0-2 (on record, down on the broken build) goes first,
        // although c-shard-0-1 comes before it.
        layout.addr.remove("c-shard-0-2");
        let troubled = std::collections::BTreeSet::from(["c-shard-0-2".to_string()]);
        let seen = Seen {
            probes: &probes,
            troubled: &troubled,
            ..seen_of(&names, &layout)
        };
        let mut u = ClusterUpgrade::new("6.2.14", "6.2.14", at(1000));
        u.reverting = true;
        u.restarting = vec![MemberRestart {
            member: "c-shard-0-2".into(),
            started: at(1000),
        }];
        assert_eq!(
            plan_wave(&mut u, &seen, &masters),
            WaveStep::Move("c-shard-0-2".into())
        );
    }

    #[test]
    fn a_revert_ends_with_the_outcome_its_cause_names() {
        let names: Vec<String> = (0..2).map(|n| format!("c-shard-{n}")).collect();
        let layout = Layout::default();
        let seen = seen_of(&names, &layout);
        let ended = |rollback: bool, cancel: bool, aborted: Option<&str>| {
            let mut p = pass(1000, ShardStage::RestartReplicas);
            let mut u = p.s.upgrade.clone().unwrap();
            u.request = Some("ns/r".into());
            u.job = Some("j".into());
            (u.rollback, u.cancel, u.aborted) = (rollback, cancel, aborted.map(String::from));
            begin_revert(&mut p, u, None, "test");
            let u = p.s.upgrade.clone().unwrap();
            assert!(u.reverting && u.target_version == "6.2.14");
            // A rollback goes over every shard from the first; otherwise the shard in progress.
            assert_eq!(u.shard, if rollback { 0 } else { 1 });
            let mut u = u;
            u.shard = 1;
            advance(&mut p, &seen, u).unwrap();
            assert!(p.s.upgrade.is_none());
            assert_eq!(p.s.task, Some(ClusterTask::None));
            let last = p.s.last_upgrade.clone().unwrap();
            assert_eq!(last.job.as_deref(), Some("j"));
            (last.result, last.message.unwrap_or_default())
        };
        assert_eq!(ended(true, false, None).0, UpgradeResult::RolledBack);
        assert_eq!(ended(false, true, None).0, UpgradeResult::Cancelled);
        let (r, why) = ended(false, false, Some("c-shard-1-1 did not start"));
        assert_eq!(r, UpgradeResult::Failed);
        assert!(
            why.contains("did not start") && why.contains("back on redis 6.2.14"),
            "{why}"
        );
    }

    #[test]
    fn a_requests_failed_step_goes_back_on_its_own_or_reports_that_it_cannot() {
        let mut p = pass(2000, ShardStage::RestartReplicas);
        p.s.upgrade.as_mut().unwrap().request = Some("ns/r".into());
        check_deadline(&mut p, "not Ready");
        // The spec still names the source (a request never rewrites it): not a revert signal.
        assert!(stopped(&cluster("6.2.14"), &mut p).is_some());
        let u = p.s.upgrade.clone().unwrap();
        assert!(u.reverting && u.failed.is_none(), "{u:#?}");
        assert!(u.aborted.as_deref().unwrap().contains("600 s"));
        // Past the failover the shard cannot go back: the request learns it failed, once.
        let mut p = pass(2000, ShardStage::RestartOldMaster);
        let u = p.s.upgrade.as_mut().unwrap();
        (u.request, u.job) = (Some("ns/r".into()), Some("j".into()));
        check_deadline(&mut p, "not Ready");
        stopped(&cluster("6.2.14"), &mut p);
        let last = p.s.last_upgrade.clone().unwrap();
        assert_eq!(last.result, UpgradeResult::Failed);
        assert!(last.message.unwrap().contains("cannot be returned"));
        assert!(p.s.upgrade.as_ref().unwrap().failed.is_some());
    }
}
