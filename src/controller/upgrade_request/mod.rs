//! The UpgradeRequest controller: an upgrade job per target, run through the targets' status.
//!
//! A job claims its instance by writing `status.upgrade` (with `request` and `job` set) guarded
//! by the instance's resourceVersion, so two requests — or a request and a spec change — can
//! never both own one instance. From then on the DatabaseInstance controller drives the
//! upgrade exactly as a spec-driven one; this controller only steers it (Commit lifts `hold`;
//! Rollback, Cancel and deletion set `rollback` / `cancel`) and reads the outcome back from
//! `status.lastUpgrade`. It never writes an instance's spec.
//!
//! Per pass, a pipeline: fresh read → resolve the targets (once) → sync the started jobs with
//! their instances → admit the waiting ones (`jobs::admit`, pure: start, wait for a window,
//! refuse, cancel, within `maxConcurrent` and the failure budget) → claim → summary (pure) →
//! status, written once. A finalizer keeps a running request until its targets are healthy.

pub mod jobs;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::Selector;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::info;

use super::{Context, apply_status, database_instance, publish, requeue};
use crate::crd::{
    Cluster, ClusterStatus, ClusterTask, ClusterUpgrade, DatabaseInstance, InstancePhase,
    RequestPhase, Schedule, ShardStage, StepKind, TargetJob, TargetKind, UpgradeAction,
    UpgradeInFlight, UpgradeOutcome, UpgradeRequest, UpgradeRequestStatus,
};
use crate::error::{Error, Result};
use crate::status::{self, Desired};

/// Held while a request has targets to stop on deletion.
pub const FINALIZER: &str = "baton.dev/upgrade-request";

/// Builds the controller; a change to an instance or a Cluster wakes the requests that own or
/// owned its upgrade.
pub fn controller(
    requests: Api<UpgradeRequest>,
    instances: Api<DatabaseInstance>,
    clusters: Api<Cluster>,
) -> Controller<UpgradeRequest> {
    Controller::new(requests, Default::default())
        .watches(instances, Default::default(), |inst: DatabaseInstance| {
            owners(&inst.namespace().unwrap_or_default(), instance_state(&inst))
        })
        .watches(clusters, Default::default(), |c: Cluster| {
            owners(&c.namespace().unwrap_or_default(), cluster_state(&c))
        })
}

/// The requests of namespace `ns` that own `t`'s upgrade in flight or owned its last one.
fn owners(ns: &str, t: TargetState) -> Vec<ObjectRef<UpgradeRequest>> {
    [
        t.flight.and_then(|f| f.request),
        t.last.and_then(|l| l.request),
    ]
    .into_iter()
    .flatten()
    .filter_map(|key| {
        let (rns, name) = key.split_once('/')?;
        (rns == ns).then(|| ObjectRef::new(name).within(rns))
    })
    .collect()
}

pub async fn reconcile(cached: Arc<UpgradeRequest>, ctx: Arc<Context>) -> Result<Action> {
    let ns = cached.namespace().unwrap_or_default();
    let api = Api::<UpgradeRequest>::namespaced(ctx.client.clone(), &ns);
    let Some(req) = api
        .get_opt(&cached.name_any())
        .await
        .map_err(Error::kube("reading the UpgradeRequest"))?
    else {
        return Ok(Action::await_change());
    };
    let deleting = req.metadata.deletion_timestamp.is_some();
    let current = req.status.clone().unwrap_or_default();
    let has_finalizer = req.finalizers().iter().any(|f| f == FINALIZER);
    if current.phase.is_some_and(jobs::is_terminal) {
        if has_finalizer {
            set_finalizer(&api, &req, false).await?;
        }
        return Ok(Action::await_change());
    }
    if !deleting && !has_finalizer && !req.spec.dry_run {
        // Before any target is touched, so a deletion always finds the request to stop (a
        // dry run touches none).
        set_finalizer(&api, &req, true).await?;
        return Ok(requeue::reread());
    }
    let instances = Api::<DatabaseInstance>::namespaced(ctx.client.clone(), &ns);
    let mut next = current.clone();
    next.observed_generation = req.metadata.generation;
    // Events of what this pass records, published only once the record is written: a lost
    // write repeats the pass, and would otherwise repeat its Events.
    let mut notes = Notes::default();
    // 1. Resolve the targets, once.
    if next.jobs.is_empty() {
        next.jobs = resolve_targets(&req, &instances).await?;
        let names: Vec<&str> = next.jobs.iter().map(|j| j.target.as_str()).collect();
        let note = format!("{} target(s): {}", names.len(), names.join(", "));
        notes.push(EventType::Normal, "Accepted", note);
    }
    // A dry run: each target's verdict, read from the API server, and nothing claimed.
    if req.spec.dry_run {
        return dry_run_pass(&ctx, &req, &current, next, notes, deleting).await;
    }
    // 2. Sync the started jobs with their instances (each target read once per pass).
    let Some(read) = sync_started(&ctx, &req, &mut next, &mut notes, deleting).await? else {
        return Ok(requeue::reread());
    };
    // 3. Admit the waiting jobs (pure), then 4. claim the ones that start.
    let Some(soonest) = admit_and_claim(&ctx, &req, &mut next, &mut notes, &read, deleting).await?
    else {
        return Ok(requeue::reread());
    };
    // 5. Summary and conditions (pure), written once.
    summarize_into(&ctx, &req, &mut next, deleting);
    let done = next.phase.is_some_and(jobs::is_terminal);
    if next != current && !record(&ctx, &req, &current, &next, notes).await? {
        return Ok(requeue::reread());
    }
    if done {
        // The finalizer goes in the next pass, once the terminal phase is on record.
        return Ok(requeue::reread());
    }
    Ok(requeue::soonest(soonest))
}

/// Writes the pass's status when the record is current, then its Events and, on a new
/// terminal phase, the outcome's. False when another writer got there first.
async fn record(
    ctx: &Context,
    req: &UpgradeRequest,
    current: &UpgradeRequestStatus,
    next: &UpgradeRequestStatus,
    mut notes: Notes,
) -> Result<bool> {
    if !write_status(ctx, req, next).await? {
        return Ok(false);
    }
    notes.publish(ctx, req).await;
    if current.phase != next.phase {
        info!(phase = ?next.phase, "upgrade request phase");
        if let Some(phase) = next.phase.filter(|p| jobs::is_terminal(*p)) {
            let t = if next.failed > 0 {
                EventType::Warning
            } else {
                EventType::Normal
            };
            let msg = next.message.clone().unwrap_or_default();
            publish_req(ctx, req, t, phase_reason(phase), msg).await;
        }
    }
    Ok(true)
}

/// A dry run's pass: each target's verdict, read from the API server, and nothing claimed.
async fn dry_run_pass(
    ctx: &Context,
    req: &UpgradeRequest,
    current: &UpgradeRequestStatus,
    mut next: UpgradeRequestStatus,
    mut notes: Notes,
    deleting: bool,
) -> Result<Action> {
    dry_run(ctx, req, &mut next).await?;
    summarize_into(ctx, req, &mut next, deleting);
    if next != *current && write_status(ctx, req, &next).await? {
        notes.publish(ctx, req).await;
        if next.phase.is_some_and(jobs::is_terminal) {
            let msg = next.message.clone().unwrap_or_default();
            publish_req(ctx, req, EventType::Normal, "DryRunCompleted", msg).await;
        }
    }
    // An offline pre-check in a pod has no watch here: look again soon.
    if next.jobs.iter().any(|j| !jobs::is_terminal(j.phase)) {
        return Ok(requeue::retry());
    }
    Ok(Action::await_change())
}

/// Fills each waiting job of a dry run with its verdict: Succeeded (it would start) or Failed
/// (with the first check that failed), and what the upgrade would be in `plan`.
async fn dry_run(
    ctx: &Context,
    req: &UpgradeRequest,
    next: &mut UpgradeRequestStatus,
) -> Result<()> {
    let ns = req.namespace().unwrap_or_default();
    let catalog = ctx.catalog();
    for job in next.jobs.iter_mut().filter(|j| !jobs::is_terminal(j.phase)) {
        let verdict = match job.kind {
            TargetKind::DatabaseInstance => {
                Api::<DatabaseInstance>::namespaced(ctx.client.clone(), &ns)
                    .get_opt(&job.target)
                    .await
                    .map_err(Error::kube("reading a target"))?
                    .map(|i| {
                        let hops = jobs::validate(&req.spec, &i, &catalog).map(|p| p.hops);
                        (
                            crate::dryrun::instance(&req.spec, &i, &catalog),
                            hops,
                            Some(i),
                        )
                    })
            }
            TargetKind::Cluster => Api::<Cluster>::namespaced(ctx.client.clone(), &ns)
                .get_opt(&job.target)
                .await
                .map_err(Error::kube("reading a target"))?
                .map(|c| {
                    let hops = jobs::validate_cluster(&req.spec, &c, &catalog).map(|p| p.hops);
                    (crate::dryrun::cluster(&req.spec, &c, &catalog), hops, None)
                }),
        };
        let Some((mut d, hops, inst)) = verdict else {
            let why = format!(
                "{:?} {} does not exist in namespace {ns}",
                job.kind, job.target
            );
            finish_job(job, RequestPhase::Failed, format!("dry run: {why}"), ctx);
            continue;
        };
        if let Some(i) = inst.as_ref().filter(|_| d.offline && d.refusal().is_some()) {
            // Refused before its check ended (a member fell behind meanwhile): no pod is left.
            delete_dry_check(ctx, i).await?;
        }
        if let Some(i) = inst.filter(|_| d.offline && d.refusal().is_none()) {
            match offline_dry_check(ctx, req, &i, &catalog, &d).await? {
                Some(result) => d.add("offline pre-check", result),
                None => {
                    job.phase = RequestPhase::Running;
                    job.message = Some(
                        "dry run: the offline conversion is checked against the live primary"
                            .into(),
                    );
                    continue;
                }
            }
        }
        job.source_version = d.source_version.clone();
        job.target_version = d.target_version.clone();
        job.plan = Some(d.plan(hops.unwrap_or_default()));
        match d.refusal() {
            None => finish_job(
                job,
                RequestPhase::Succeeded,
                format!(
                    "dry run: would start ({}; outage: {})",
                    d.strategy, d.outage
                ),
                ctx,
            ),
            Some(why) => finish_job(job, RequestPhase::Failed, format!("dry run: {why}"), ctx),
        }
    }
    Ok(())
}

/// A dry run's offline pre-check (pg_upgrade --check against the live primary), in a pod of
/// the dry run's own on the primary's volume that leaves nothing behind: started on the first
/// pass, read and deleted on a later one. None while it runs.
async fn offline_dry_check(
    ctx: &Context,
    req: &UpgradeRequest,
    inst: &DatabaseInstance,
    catalog: &[crate::crd::DatastoreVersion],
    d: &crate::dryrun::DryRun,
) -> Result<Option<std::result::Result<String, String>>> {
    use crate::controller::database_instance::children;
    use crate::controller::database_instance::model::CheckOutcome;
    let ns = req.namespace().unwrap_or_default();
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(ctx.client.clone(), &ns);
    let name = children::offline_check_name(inst, true);
    let key = req.metadata.uid.clone().unwrap_or_default();
    if let Some(p) = pods
        .get_opt(&name)
        .await
        .map_err(Error::kube("reading the dry run's check pod"))?
    {
        let seen = crate::controller::database_instance::observe::offline_check_of(&p);
        let result = match seen.outcome {
            _ if seen.key != key => None,
            CheckOutcome::Passed => Some(Ok(
                "pg_upgrade --check passed against the live primary".to_string()
            )),
            CheckOutcome::Failed(why) => Some(Err(format!("pg_upgrade --check failed: {why}"))),
            CheckOutcome::Running | CheckOutcome::Deleting => return Ok(None),
        };
        if p.metadata.deletion_timestamp.is_none() {
            delete_dry_check(ctx, inst).await?;
        }
        return Ok(result);
    }
    let status = inst.status.clone().unwrap_or_default();
    let image = |v: Option<&str>| {
        v.and_then(|v| crate::catalog::find(catalog, inst.spec.datastore.type_, v))
            .map(|e| e.spec.image.clone())
            .unwrap_or_default()
    };
    let (from_image, to_image) = (
        image(d.source_version.as_deref()),
        image(d.target_version.as_deref()),
    );
    let (Some(primary), Ok(engine)) = (
        status.primary.as_deref(),
        crate::engine::for_datastore(inst.spec.datastore.type_),
    ) else {
        return Ok(Some(Err("no primary to check against".into())));
    };
    // The member's node, as its pod runs now.
    let node = pods
        .get_opt(primary)
        .await
        .map_err(Error::kube("reading the primary's pod"))?
        .and_then(|p| p.spec?.node_name);
    let spec = children::OfflineCheckSpec {
        member: primary,
        node: node.as_deref(),
        key: &key,
        from_image: &from_image,
        to_image: &to_image,
        dry_run: true,
    };
    if let Some(pod) = children::offline_check_pod(inst, engine, &spec) {
        match pods.create(&kube::api::PostParams::default(), &pod).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(Error::kube("creating a dry run's check pod")(e)),
        }
    }
    Ok(None)
}

/// Deletes the dry run's check pod of `inst`, if there is one.
async fn delete_dry_check(ctx: &Context, inst: &DatabaseInstance) -> Result<()> {
    crate::controller::database_instance::act::delete_offline_check(&ctx.client, inst, true)
        .await
        .map_err(Error::kube("deleting a dry run's check pod"))
}

/// Every target read this pass, by kind (None: it does not exist).
#[derive(Default)]
struct Read {
    instances: BTreeMap<String, Option<DatabaseInstance>>,
    clusters: BTreeMap<String, Option<Cluster>>,
}

/// How many targets a pass reads, or claims, at once: a request over a fleet waits on the API
/// server's round trips, not on one after the other.
const AT_ONCE: usize = 16;

impl Read {
    /// Reads the target of every job not yet finished, fresh (a claim is guarded by the
    /// resourceVersion read here), several at a time; each kept found or not.
    async fn fetch_all(ctx: &Context, ns: &str, all: &[TargetJob]) -> Result<Read> {
        let wanted: std::collections::BTreeSet<(bool, &str)> = all
            .iter()
            .filter(|j| !jobs::is_terminal(j.phase))
            .map(|j| (j.kind == TargetKind::Cluster, j.target.as_str()))
            .collect();
        // Collected first: a lazily mapped stream of borrowing futures is not Send enough for
        // the controller's runtime.
        let fetches: Vec<_> = wanted
            .into_iter()
            .map(|(cluster, name)| fetch(ctx, ns, cluster, name))
            .collect();
        let reads = stream::iter(fetches)
            .buffer_unordered(AT_ONCE)
            .collect::<Vec<_>>()
            .await;
        let mut read = Read::default();
        for r in reads {
            match r? {
                Fetched::Instance(name, found) => {
                    read.instances.insert(name, found.map(|b| *b));
                }
                Fetched::Cluster(name, found) => {
                    read.clusters.insert(name, found.map(|b| *b));
                }
            }
        }
        Ok(read)
    }

    /// `job`'s target as read, if it exists.
    fn target(&self, job: &TargetJob) -> Option<Target<'_>> {
        match job.kind {
            TargetKind::DatabaseInstance => self
                .instances
                .get(&job.target)?
                .as_ref()
                .map(Target::Instance),
            TargetKind::Cluster => self
                .clusters
                .get(&job.target)?
                .as_ref()
                .map(Target::Cluster),
        }
    }
}

/// Reads one target, fresh.
async fn fetch(ctx: &Context, ns: &str, cluster: bool, name: &str) -> Result<Fetched> {
    if cluster {
        let found = Api::<Cluster>::namespaced(ctx.client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(Error::kube("reading a target Cluster"))?;
        return Ok(Fetched::Cluster(name.to_string(), found.map(Box::new)));
    }
    let found = Api::<DatabaseInstance>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(Error::kube("reading a target instance"))?;
    Ok(Fetched::Instance(name.to_string(), found.map(Box::new)))
}

/// One target as read.
enum Fetched {
    Instance(String, Option<Box<DatabaseInstance>>),
    Cluster(String, Option<Box<Cluster>>),
}

/// A job's target, whatever its kind: what the job reads of it, and the two writes a request
/// makes to it (the claim, and steering its upgrade), each guarded by the resourceVersion read.
enum Target<'a> {
    Instance(&'a DatabaseInstance),
    Cluster(&'a Cluster),
}

impl Target<'_> {
    fn state(&self) -> TargetState {
        match self {
            Target::Instance(inst) => instance_state(inst),
            Target::Cluster(c) => cluster_state(c),
        }
    }

    /// Sets the upgrade's hold, rollback and cancel as the request's action asks. False when
    /// the target changed since it was read.
    async fn steer(&self, ctx: &Context, flags: jobs::Flags) -> Result<bool> {
        let set = |hold: &mut bool, rollback: &mut bool, cancel: &mut bool| {
            (*hold, *rollback, *cancel) = (flags.hold, flags.rollback, flags.cancel);
        };
        match self {
            Target::Instance(inst) => {
                let mut status = inst.status.clone().unwrap_or_default();
                if let Some(w) = status.upgrade.as_mut() {
                    set(&mut w.hold, &mut w.rollback, &mut w.cancel);
                }
                database_instance::write_status_guarded(ctx, inst, &status).await
            }
            Target::Cluster(c) => {
                let mut status = c.status.clone().unwrap_or_default();
                if let Some(w) = status.upgrade.as_mut() {
                    set(&mut w.hold, &mut w.rollback, &mut w.cancel);
                }
                write_cluster_guarded(ctx, c, &status).await
            }
        }
    }

    /// Claims the target for `job`: its upgrade record, written only if it is unchanged since
    /// it was validated. False when it changed meanwhile.
    async fn claim(
        &self,
        ctx: &Context,
        req: &UpgradeRequest,
        key: &str,
        job: &TargetJob,
        plan: &jobs::Plan,
    ) -> Result<bool> {
        match self {
            Target::Instance(inst) => claim(ctx, req, key, job, inst, plan).await,
            Target::Cluster(c) => claim_cluster(ctx, req, key, job, c, plan).await,
        }
    }
}

/// Brings every started job up to date with its target. Returns each target read, or None
/// when a write to a target lost a race (re-read).
async fn sync_started(
    ctx: &Context,
    req: &UpgradeRequest,
    next: &mut UpgradeRequestStatus,
    notes: &mut Notes,
    deleting: bool,
) -> Result<Option<Read>> {
    let ns = req.namespace().unwrap_or_default();
    let read = Read::fetch_all(ctx, &ns, &next.jobs).await?;
    for job in next.jobs.iter_mut().filter(|j| !jobs::is_terminal(j.phase)) {
        let Some(target) = read.target(job) else {
            if jobs::is_started(job.phase) {
                let why = format!("the {:?} was deleted", job.kind);
                finish_job(job, RequestPhase::Failed, why, ctx);
            }
            continue;
        };
        let Some(flags) = sync_job(ctx, req, job, &target.state(), notes, deleting) else {
            continue;
        };
        // The action asks something new of the target's upgrade: steer it, guarded.
        if !target.steer(ctx, flags).await? {
            return Ok(None);
        }
        let what = match flags {
            jobs::Flags { cancel: true, .. } => "cancel: stop after the current step",
            jobs::Flags { rollback: true, .. } => "rollback: standbys back to the source version",
            _ => "commit: switch over and finish",
        };
        info!(target = %job.target, what, "steering the target's upgrade");
        publish_req(
            ctx,
            req,
            EventType::Normal,
            "TargetSteered",
            format!("{}: {what}", job.target),
        )
        .await;
    }
    Ok(Some(read))
}

/// Writes a Cluster's status only if it is unchanged since it was read (see
/// `write_status_guarded`). False on conflict.
async fn write_cluster_guarded(ctx: &Context, c: &Cluster, next: &ClusterStatus) -> Result<bool> {
    let api = Api::<Cluster>::namespaced(ctx.client.clone(), &c.namespace().unwrap_or_default());
    apply_status(&api, c, next, true, "writing Cluster status").await
}

/// What a job reads of its target, whatever its kind.
struct TargetState {
    /// The target's last finished upgrade.
    last: Option<UpgradeOutcome>,
    /// The upgrade in flight.
    flight: Option<Flight>,
}

struct Flight {
    /// The request that owns it (`namespace/name`).
    request: Option<String>,
    job: Option<String>,
    source: String,
    target: String,
    started: Option<Time>,
    /// Held before the primary (masters) is touched, waiting for Commit or Rollback.
    awaiting: bool,
    step: String,
    /// Why it goes back or stopped, if it does.
    trouble: Option<String>,
    /// The primary, or the masters, still on the source while awaiting.
    awaiting_message: String,
    flags: jobs::Flags,
    /// The longest switchover window so far, in milliseconds.
    switchover_ms: Option<i64>,
}

fn instance_state(inst: &DatabaseInstance) -> TargetState {
    let s = inst.status.clone().unwrap_or_default();
    TargetState {
        last: s.last_upgrade.clone(),
        flight: s.upgrade.as_ref().map(|u| Flight {
            request: u.request.clone(),
            job: u.job.clone(),
            source: u.first_version().to_string(),
            target: u.final_version().to_string(),
            started: u.step_started.clone(),
            awaiting: u.step.kind == StepKind::AwaitingCommit && u.hold,
            step: u.describe(),
            trouble: match (&u.aborted, &u.failure) {
                (Some(why), _) => Some(format!("rolling back to {}: {why}", u.source_version)),
                (None, f) => f.clone(),
            },
            awaiting_message: format!(
                "the standbys run {}; the primary {} still runs {}: set action Commit or Rollback",
                u.target_version,
                s.primary.clone().unwrap_or_default(),
                u.source_version
            ),
            flags: jobs::Flags {
                hold: u.hold,
                rollback: u.rollback,
                cancel: u.cancel,
            },
            switchover_ms: u.switchover_ms,
        }),
    }
}

fn cluster_state(c: &Cluster) -> TargetState {
    let s = c.status.clone().unwrap_or_default();
    TargetState {
        last: s.last_upgrade.clone(),
        flight: s.upgrade.as_ref().map(|u| Flight {
            request: u.request.clone(),
            job: u.job.clone(),
            source: u.source_version.clone(),
            target: u.target_version.clone(),
            started: Some(u.started.clone()),
            awaiting: u.stage == ShardStage::AwaitingCommit && u.hold,
            step: u.describe(),
            trouble: match (&u.aborted, &u.failed) {
                (Some(why), _) => Some(format!("rolling back to {}: {why}", u.source_version)),
                (None, f) => f.clone(),
            },
            awaiting_message: format!(
                "every shard's replicas run {}; the masters still run {}: set action Commit or Rollback",
                u.target_version, u.source_version
            ),
            flags: jobs::Flags {
                hold: u.hold,
                rollback: u.rollback,
                cancel: u.cancel,
            },
            // A Cluster's failovers are not measured yet.
            switchover_ms: None,
        }),
    }
}

/// Applies `jobs::admit` to the waiting jobs: cancels, refusals (with an Event), schedules
/// and claims. Returns how long until the soonest window opens, or None when a claim lost a
/// race (re-read).
async fn admit_and_claim(
    ctx: &Context,
    req: &UpgradeRequest,
    next: &mut UpgradeRequestStatus,
    notes: &mut Notes,
    read: &Read,
    deleting: bool,
) -> Result<Option<Option<Duration>>> {
    let ns = req.namespace().unwrap_or_default();
    let waiting = next
        .jobs
        .iter()
        .any(|j| matches!(j.phase, RequestPhase::Pending | RequestPhase::Scheduled));
    // The catalog is read only when a target is about to be validated.
    let catalog = if waiting { ctx.catalog() } else { vec![] };
    let now = ctx.clock.now();
    let input = jobs::AdmitInput {
        spec: &req.spec,
        deleting,
        now,
        namespace: &ns,
        catalog: &catalog,
        targets: &read.instances,
        clusters: &read.clusters,
    };
    let key = format!("{ns}/{}", req.name_any());
    let mut soonest: Option<Duration> = None;
    let mut starts: Vec<(usize, jobs::Plan)> = vec![];
    next.scheduled_start = None;
    for (i, admission) in jobs::admit(&next.jobs, &input) {
        let job = &mut next.jobs[i];
        match admission {
            jobs::Admission::Later => {}
            jobs::Admission::Cancel(why) => finish_job(job, RequestPhase::Cancelled, why, ctx),
            jobs::Admission::Refuse(why) => fail_job(ctx, job, notes, why),
            jobs::Admission::Schedule {
                plan,
                window,
                opens,
            } => {
                job.source_version = Some(plan.source);
                job.target_version = Some(plan.target);
                job.phase = RequestPhase::Scheduled;
                job.message = Some(format!(
                    "waiting for the maintenance window ({window}); opens {opens}"
                ));
                next.scheduled_start = Some(
                    next.scheduled_start
                        .clone()
                        .map_or(Time(opens), |t| Time(t.0.min(opens))),
                );
                let wait = Duration::try_from(opens.duration_since(now)).unwrap_or_default();
                soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
            }
            jobs::Admission::Start(plan) => {
                job.source_version = Some(plan.source.clone());
                job.target_version = Some(plan.target.clone());
                starts.push((i, plan));
            }
        }
    }
    let all = claim_all(ctx, req, &key, next, read, &starts, notes).await?;
    Ok(all.then_some(soonest))
}

/// Claims the targets of the jobs that start, together, each guarded by its own target's
/// resourceVersion. False when one lost a race: the pass re-reads, and the ones that landed
/// are adopted by the next pass (their flight names this job), so a partial set is never lost.
async fn claim_all(
    ctx: &Context,
    req: &UpgradeRequest,
    key: &str,
    next: &mut UpgradeRequestStatus,
    read: &Read,
    starts: &[(usize, jobs::Plan)],
    notes: &mut Notes,
) -> Result<bool> {
    let claims: Vec<_> = starts
        .iter()
        .map(|(i, plan)| {
            let job = &next.jobs[*i];
            let target = read.target(job);
            async move {
                match target {
                    Some(t) => t.claim(ctx, req, key, job, plan).await.map(Some),
                    None => Ok(None),
                }
            }
        })
        .collect();
    let claimed = stream::iter(claims)
        .buffered(AT_ONCE)
        .collect::<Vec<_>>()
        .await;
    let mut lost = false;
    for ((i, plan), claim) in starts.iter().zip(claimed) {
        match claim? {
            Some(true) => started(ctx, req, &mut next.jobs[*i], plan, notes),
            Some(false) => lost = true,
            None => {}
        }
    }
    Ok(!lost)
}

/// The request's phase, GaussDB summary, message and conditions from its jobs.
fn summarize_into(
    ctx: &Context,
    req: &UpgradeRequest,
    next: &mut UpgradeRequestStatus,
    deleting: bool,
) {
    let summary = jobs::summarize(&next.jobs, req.spec.action, deleting);
    next.phase = Some(summary.phase);
    next.succeeded = summary.succeeded;
    next.failed = summary.failed;
    next.failed_targets = summary.failed_targets;
    next.error_messages = summary.error_messages;
    next.progress = Some(summary.progress);
    next.message = Some(phase_message(next, req));
    let done = jobs::is_terminal(summary.phase);
    let generation = req.metadata.generation;
    let msg = next.message.clone().unwrap_or_default();
    let failed = next.failed > 0;
    let errors = next.error_messages.join("; ");
    for (type_, ok, reason, message) in [
        (
            "Progressing",
            !done,
            if done { "Finished" } else { "Running" },
            msg.clone(),
        ),
        (
            // Done what its action asks (finished, or holding as action Upgrade asks).
            "Ready",
            crate::health::request_done(summary.phase, req.spec.action),
            phase_reason(summary.phase),
            msg,
        ),
        (
            "Degraded",
            failed,
            if failed { "TargetsFailed" } else { "NoFailure" },
            errors,
        ),
    ] {
        next.conditions = status::merge(
            &next.conditions,
            Desired {
                type_,
                status: ok,
                reason,
                message,
            },
            generation,
            ctx.now(),
        );
    }
    let health = crate::health::request(next, req.spec.action);
    next.conditions = crate::health::apply(&next.conditions, &health, generation, ctx.now());
}

/// The jobs of a new request: listed instances, then selector matches, then clusters; each once.
async fn resolve_targets(
    req: &UpgradeRequest,
    instances: &Api<DatabaseInstance>,
) -> Result<Vec<TargetJob>> {
    let mut names: Vec<String> = req.spec.targets.instances.clone();
    if let Some(sel) = &req.spec.targets.selector {
        match Selector::try_from(sel.clone()) {
            Ok(selector) => {
                let mut found: Vec<String> = instances
                    .list(&ListParams::default().labels_from(&selector))
                    .await
                    .map_err(Error::kube("listing the instances the selector matches"))?
                    .into_iter()
                    .map(|i| i.name_any())
                    .collect();
                found.sort();
                names.extend(found);
            }
            Err(e) => {
                // The schema cannot check operator values; report it on a job of its own.
                return Ok(vec![new_job(
                    req,
                    TargetKind::DatabaseInstance,
                    "selector",
                    Some(format!("the selector is invalid: {e}")),
                )]);
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut out: Vec<TargetJob> = names
        .into_iter()
        .filter(|n| seen.insert(n.clone()))
        .map(|n| new_job(req, TargetKind::DatabaseInstance, &n, None))
        .collect();
    out.extend(
        req.spec
            .targets
            .clusters
            .iter()
            .map(|c| new_job(req, TargetKind::Cluster, c, None)),
    );
    if out.is_empty() {
        out.push(new_job(
            req,
            TargetKind::DatabaseInstance,
            "selector",
            Some("the selector matches no DatabaseInstance in this namespace".into()),
        ));
    }
    Ok(out)
}

fn new_job(
    req: &UpgradeRequest,
    kind: TargetKind,
    target: &str,
    failed: Option<String>,
) -> TargetJob {
    let uid: String = req.uid().unwrap_or_default().chars().take(8).collect();
    TargetJob {
        job_id: format!("{uid}-{target}"),
        kind,
        target: target.into(),
        source_version: None,
        target_version: None,
        switchover_ms: None,
        phase: if failed.is_some() {
            RequestPhase::Failed
        } else {
            RequestPhase::Pending
        },
        step: None,
        message: failed,
        start_time: None,
        finish_time: None,
        plan: None,
    }
}

fn finish_job(job: &mut TargetJob, phase: RequestPhase, message: String, ctx: &Context) {
    job.phase = phase;
    job.message = Some(message);
    job.finish_time = Some(ctx.now());
}

fn fail_job(ctx: &Context, job: &mut TargetJob, notes: &mut Notes, why: String) {
    info!(target = %job.target, reason = %why, "target refused");
    notes.push(
        EventType::Warning,
        "TargetFailed",
        format!("{}: {why}", job.target),
    );
    finish_job(job, RequestPhase::Failed, why, ctx);
}

/// Claims `inst` for `job`: its upgrade record, written only if the instance is unchanged since
/// it was validated. False when the instance changed meanwhile (re-read and re-validate).
async fn claim(
    ctx: &Context,
    req: &UpgradeRequest,
    key: &str,
    job: &TargetJob,
    inst: &DatabaseInstance,
    plan: &jobs::Plan,
) -> Result<bool> {
    let mut status = inst.status.clone().unwrap_or_default();
    let primary = status.primary.clone().unwrap_or_default();
    // A path of several hops starts at its first; the instance moves on hop by hop.
    let first = plan
        .hops
        .first()
        .cloned()
        .unwrap_or_else(|| plan.target.clone());
    let mut u = UpgradeInFlight::new(&plan.source, &first, &primary, ctx.now());
    if plan.hops.len() > 1 {
        u.path = plan.hops.clone();
        u.origin_version = Some(plan.source.clone());
    }
    u.request = Some(key.to_string());
    u.job = Some(job.job_id.clone());
    u.type_ = Some(req.spec.type_);
    u.hold = req.spec.action == UpgradeAction::Upgrade;
    u.window_only = req.spec.schedule == Schedule::MaintenanceWindow;
    u.second_switch = req.spec.second_switch.then_some(true);
    u.switchover_to = req.spec.switchover_to.clone();
    status.upgrade = Some(u);
    status.phase = Some(InstancePhase::Upgrading);
    status.message = Some(format!(
        "{}: claimed by UpgradeRequest {key}",
        describe_plan(req, plan)
    ));
    let health = crate::health::instance(&status);
    status.conditions = crate::health::apply(
        &status.conditions,
        &health,
        inst.metadata.generation,
        ctx.now(),
    );
    database_instance::write_status_guarded(ctx, inst, &status).await
}

/// Claims Cluster `c` for `job`, as `claim` does an instance: its upgrade record, written only
/// if the Cluster is unchanged since it was validated. False when it changed meanwhile.
async fn claim_cluster(
    ctx: &Context,
    req: &UpgradeRequest,
    key: &str,
    job: &TargetJob,
    c: &Cluster,
    plan: &jobs::Plan,
) -> Result<bool> {
    let mut status = c.status.clone().unwrap_or_default();
    let mut u = ClusterUpgrade::new(&plan.source, &plan.target, ctx.now());
    u.request = Some(key.to_string());
    u.job = Some(job.job_id.clone());
    u.hold = req.spec.action == UpgradeAction::Upgrade;
    u.window_only = req.spec.schedule == Schedule::MaintenanceWindow;
    u.in_place = req.spec.type_ == crate::crd::UpgradeType::InPlace;
    u.shards_at_once = super::cluster::upgrade::shards_at_once(c, u.in_place);
    status.upgrade = Some(u);
    status.task = Some(ClusterTask::UpgradingCluster);
    status.message = Some(format!(
        "{} → {}: claimed by UpgradeRequest {key}",
        plan.source, plan.target
    ));
    let health = crate::health::cluster(&status, c.spec.paused);
    status.conditions = crate::health::apply(
        &status.conditions,
        &health,
        c.metadata.generation,
        ctx.now(),
    );
    write_cluster_guarded(ctx, c, &status).await
}

/// A claimed job starts. Its Event waits for the request's status write: a claim of a later
/// target that conflicts drops this pass, and the next would announce the start again.
fn started(
    ctx: &Context,
    req: &UpgradeRequest,
    job: &mut TargetJob,
    plan: &jobs::Plan,
    notes: &mut Notes,
) {
    job.phase = RequestPhase::Running;
    job.step = Some("PreCheck".into());
    job.start_time = Some(ctx.now());
    let outage = if req.spec.type_ == crate::crd::UpgradeType::InPlace {
        " (InPlace: every member restarts together, the database is unavailable meanwhile)"
    } else {
        ""
    };
    let what = describe_plan(req, plan);
    job.message = Some(format!("{what}{outage}"));
    notes.push(
        EventType::Normal,
        "TargetStarted",
        format!("{}: {what} ({:?}){outage}", job.target, req.spec.type_),
    );
}

/// What a job does, in words: `7.0.15 → 7.2.4`, or a planned switchover.
fn describe_plan(req: &UpgradeRequest, plan: &jobs::Plan) -> String {
    if plan.hops.len() > 1 {
        return format!(
            "{} → {} in {} hops ({})",
            plan.source,
            plan.target,
            plan.hops.len(),
            plan.hops.join(" → ")
        );
    }
    match (req.spec.type_, &req.spec.switchover_to) {
        (crate::crd::UpgradeType::Switchover, Some(to)) => {
            format!("planned switchover to {to} on {}", plan.source)
        }
        (crate::crd::UpgradeType::Switchover, None) => {
            format!("planned switchover on {}", plan.source)
        }
        _ => format!("{} → {}", plan.source, plan.target),
    }
}

/// Brings a job up to date with its target. Returns the flags to write when the request's
/// action asks something new of the target's upgrade.
fn sync_job(
    ctx: &Context,
    req: &UpgradeRequest,
    job: &mut TargetJob,
    t: &TargetState,
    notes: &mut Notes,
    deleting: bool,
) -> Option<jobs::Flags> {
    if let Some(last) = t
        .last
        .as_ref()
        .filter(|l| l.job.as_deref() == Some(job.job_id.as_str()))
    {
        let phase = jobs::finished_phase(last.result);
        let message = last.message.clone().unwrap_or_default();
        let (ty, reason) = match phase {
            RequestPhase::Succeeded => (EventType::Normal, "TargetSucceeded"),
            RequestPhase::Failed => (EventType::Warning, "TargetFailed"),
            RequestPhase::RolledBack => (EventType::Normal, "TargetRolledBack"),
            _ => (EventType::Normal, "TargetCancelled"),
        };
        notes.push(ty, reason, format!("{}: {message}", job.target));
        job.phase = phase;
        job.message = Some(message);
        job.switchover_ms = last.switchover_ms;
        job.step = None;
        job.finish_time = last.finish_time.clone().or_else(|| Some(ctx.now()));
        return None;
    }
    let Some(u) = t
        .flight
        .as_ref()
        .filter(|u| u.job.as_deref() == Some(job.job_id.as_str()))
    else {
        if jobs::is_started(job.phase) {
            finish_job(
                job,
                RequestPhase::Failed,
                "the target's upgrade record disappeared (was its status reset?)".into(),
                ctx,
            );
        }
        return None;
    };
    if job.start_time.is_none() {
        job.start_time = u.started.clone();
        job.source_version = Some(u.source.clone());
        job.target_version = Some(u.target.clone());
    }
    job.phase = if u.awaiting {
        RequestPhase::AwaitingCommit
    } else {
        RequestPhase::Running
    };
    job.step = Some(u.step.clone());
    job.switchover_ms = u.switchover_ms;
    if let Some(why) = &u.trouble {
        job.message = Some(why.clone());
    } else if u.awaiting {
        job.message = Some(u.awaiting_message.clone());
    }
    let want = jobs::desired_flags(req.spec.action, deleting, u.flags);
    (want != u.flags).then_some(want)
}

fn phase_reason(p: RequestPhase) -> &'static str {
    match p {
        RequestPhase::Pending => "Pending",
        RequestPhase::Scheduled => "Scheduled",
        RequestPhase::Running => "Running",
        RequestPhase::AwaitingCommit => "AwaitingCommit",
        RequestPhase::Succeeded => "Succeeded",
        RequestPhase::PartiallySucceeded => "PartiallySucceeded",
        RequestPhase::Failed => "Failed",
        RequestPhase::RolledBack => "RolledBack",
        RequestPhase::Cancelled => "Cancelled",
    }
}

fn phase_message(s: &UpgradeRequestStatus, req: &UpgradeRequest) -> String {
    let total = s.jobs.len();
    if req.spec.dry_run && s.phase.is_some_and(jobs::is_terminal) {
        let refused = if s.error_messages.is_empty() {
            String::new()
        } else {
            format!(": {}", s.error_messages.join("; "))
        };
        return format!(
            "dry run, nothing changed: {} of {total} target(s) would start, {} would not{refused}",
            s.succeeded, s.failed
        );
    }
    match s.phase.unwrap_or_default() {
        RequestPhase::Scheduled => match &s.scheduled_start {
            Some(t) => format!("scheduled: the first step starts at {}", t.0),
            None => "scheduled".into(),
        },
        RequestPhase::AwaitingCommit => {
            "the standbys run the new version: set action Commit to finish, or Rollback".into()
        }
        RequestPhase::Succeeded => format!("{} of {total} target(s) upgraded", s.succeeded),
        RequestPhase::PartiallySucceeded | RequestPhase::Failed => format!(
            "{} of {total} target(s) upgraded, {} failed: {}",
            s.succeeded,
            s.failed,
            s.error_messages.join("; ")
        ),
        RequestPhase::RolledBack => "rolled back: every target is on its source version".into(),
        RequestPhase::Cancelled => {
            format!(
                "cancelled ({}); {} target(s) upgraded before it stopped",
                if req.metadata.deletion_timestamp.is_some() {
                    "deleted"
                } else {
                    "action Cancel"
                },
                s.succeeded
            )
        }
        RequestPhase::Pending | RequestPhase::Running => {
            let running: Vec<String> = s
                .jobs
                .iter()
                .filter(|j| j.phase == RequestPhase::Running)
                .map(|j| format!("{} at {}", j.target, j.step.clone().unwrap_or_default()))
                .collect();
            if running.is_empty() {
                "waiting to start".into()
            } else {
                format!("upgrading {}", running.join(", "))
            }
        }
    }
}

/// Writes the request's status by server-side apply, only if the request is still the
/// version this pass read. False on conflict.
async fn write_status(
    ctx: &Context,
    req: &UpgradeRequest,
    next: &UpgradeRequestStatus,
) -> Result<bool> {
    let api =
        Api::<UpgradeRequest>::namespaced(ctx.client.clone(), &req.namespace().unwrap_or_default());
    apply_status(&api, req, next, true, "writing UpgradeRequest status").await
}

/// Adds or removes the finalizer, guarded by the resourceVersion read.
async fn set_finalizer(api: &Api<UpgradeRequest>, req: &UpgradeRequest, on: bool) -> Result<()> {
    let mut list: Vec<String> = req
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if on {
        list.push(FINALIZER.into());
    }
    let patch =
        json!({"metadata": {"finalizers": list, "resourceVersion": req.resource_version()}});
    match api
        .patch(
            &req.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube("updating the UpgradeRequest's finalizers")(e)),
    }
}

/// Events waiting for the status write that records what they say.
#[derive(Default)]
struct Notes(Vec<(EventType, &'static str, String)>);

impl Notes {
    fn push(&mut self, t: EventType, reason: &'static str, note: String) {
        self.0.push((t, reason, note));
    }

    async fn publish(&mut self, ctx: &Context, req: &UpgradeRequest) {
        for (t, reason, note) in self.0.drain(..) {
            publish_req(ctx, req, t, reason, note).await;
        }
    }
}

async fn publish_req(
    ctx: &Context,
    req: &UpgradeRequest,
    type_: EventType,
    reason: &str,
    note: String,
) {
    publish(ctx, &req.object_ref(&()), type_, reason, note).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_has_a_message() {
        let req: UpgradeRequest = serde_json::from_value(json!({
            "apiVersion": "baton.dev/v1alpha1", "kind": "UpgradeRequest",
            "metadata": {"name": "r", "namespace": "ns"},
            "spec": {"targets": {"instances": ["a"]}},
        }))
        .unwrap();
        for p in [
            RequestPhase::Pending,
            RequestPhase::Scheduled,
            RequestPhase::Running,
            RequestPhase::AwaitingCommit,
            RequestPhase::Succeeded,
            RequestPhase::PartiallySucceeded,
            RequestPhase::Failed,
            RequestPhase::RolledBack,
            RequestPhase::Cancelled,
        ] {
            let s = UpgradeRequestStatus {
                phase: Some(p),
                ..Default::default()
            };
            assert!(!phase_message(&s, &req).is_empty());
            assert_eq!(format!("{p:?}"), phase_reason(p));
        }
    }
}
