//! The DatabaseInstance controller: observe (catalog, owned objects, each member probed through
//! its engine) → ensure the owned objects exist → keep replication converged → decide the next
//! upgrade step (`plan`, pure) → record intent → act once → write status.
//!
//! An upgrade starts when `spec.datastore.version` names a newer catalog version (or, later, an
//! UpgradeRequest asks); it is driven entirely from `status.upgrade`, so an operator restarted at
//! any point resumes at the recorded step. A paused instance is observed, never touched.

pub mod children;
pub mod plan;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::info;

use super::{Context, requeue};
use crate::catalog;
use crate::crd::{
    DatabaseInstance, DatabaseInstanceStatus, DatastoreVersion, InstancePhase, MemberRole,
    MemberStatus, UpgradeInFlight, UpgradeOutcome, UpgradeResult,
};
use crate::engine::{Engine, Role};
use crate::error::{Error, Result};
use crate::status::{self, Desired};
use crate::window;
use children::{ANNOTATION_VERSION, LABEL_INSTANCE, ROLE_PRIMARY, ROLE_STANDBY};
use plan::{Act, Member, View};

/// Builds the controller: it owns the members' pods, so their status changes wake it.
pub fn controller(client: Client, namespace: Option<&str>) -> Controller<DatabaseInstance> {
    let (instances, pods) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::<Pod>::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::<Pod>::all(client)),
    };
    Controller::new(instances, Default::default()).owns(pods, Default::default())
}

/// What a pass learned, for status.
struct Observed {
    members: Vec<Member>,
    primary: String,
}

pub async fn reconcile(cached: Arc<DatabaseInstance>, ctx: Arc<Context>) -> Result<Action> {
    let ns = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let client = ctx.client.clone();
    // Decide from a fresh read, never from the watch cache: the cache can lag this controller's
    // own last status write, and a plan made from it would repeat or undo a recorded step.
    let Some(inst) = Api::<DatabaseInstance>::namespaced(client.clone(), &ns)
        .get_opt(&name)
        .await
        .map_err(Error::kube("reading the DatabaseInstance"))?
    else {
        return Ok(Action::await_change());
    };
    let current = inst.status.clone().unwrap_or_default();
    let mut next = current.clone();
    next.observed_generation = inst.metadata.generation;
    let ds = inst.spec.datastore.type_;

    let engine = match Engine::for_datastore(ds) {
        Ok(e) => e,
        Err(e) => {
            set_condition(
                &mut next,
                &ctx,
                "VersionApplied",
                false,
                "DatastoreUnsupported",
                e.to_string(),
                &inst,
            );
            next.phase = Some(InstancePhase::Error);
            return finish(&ctx, &inst, &current, next, None, requeue::idle()).await;
        }
    };
    let catalog: Vec<DatastoreVersion> = Api::<DatastoreVersion>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(Error::kube("listing the DatastoreVersion catalog"))?
        .items;
    let entry = |v: &str| catalog::find(&catalog, ds, v);
    let pods_api = Api::<Pod>::namespaced(client.clone(), &ns);
    let pods: BTreeMap<String, Pod> = pods_api
        .list(&ListParams::default().labels(&format!("{LABEL_INSTANCE}={name}")))
        .await
        .map_err(Error::kube("listing the instance's pods"))?
        .into_iter()
        .map(|p| (p.name_any(), p))
        .collect();
    let names = children::member_names(&inst);
    let primary = current.primary.clone().unwrap_or_else(|| names[0].clone());
    let running = current.version.clone();

    let base_version = running
        .clone()
        .unwrap_or_else(|| inst.spec.datastore.version.clone());
    // A new instance needs an active catalog entry before anything is created; a running one
    // only needs its version listed.
    let base_entry = entry(&base_version);
    let problem = match base_entry {
        None => Some((
            "VersionNotInCatalog",
            format!(
                "{ds} {base_version} is not in the DatastoreVersion catalog; add it or choose a listed version"
            ),
        )),
        Some(e) if running.is_none() && !e.spec.active => Some((
            "VersionInactive",
            format!("{ds} {base_version} is inactive in the catalog; choose an active version"),
        )),
        Some(_) => None,
    };
    let (Some(base_entry), None) = (base_entry, problem.clone()) else {
        let (reason, msg) = problem.unwrap_or(("VersionNotInCatalog", String::new()));
        set_condition(&mut next, &ctx, "VersionApplied", false, reason, msg, &inst);
        if running.is_none() {
            next.phase = Some(InstancePhase::Error);
        }
        return finish(
            &ctx,
            &inst,
            &current,
            next,
            Some((reason, EventType::Warning)),
            requeue::idle(),
        )
        .await;
    };

    let observed = observe(&engine, &names, &pods, &primary).await;
    next.members = member_statuses(&observed);
    next.primary = Some(primary.clone());

    if inst.spec.paused {
        next.phase = Some(InstancePhase::Paused);
        next.message = Some("paused: Baton touches nothing until spec.paused is false".into());
        return finish(&ctx, &inst, &current, next, None, requeue::idle()).await;
    }

    // Owned objects: claims, services, PDB, and any missing member pod.
    ensure_owned(&ctx, &inst, &engine).await?;
    let upgrade = current.upgrade.clone();
    let mut created = false;
    for m in &names {
        if !pods.contains_key(m) {
            let version = upgrade
                .as_ref()
                .map(|u| u.source_version.clone())
                .unwrap_or_else(|| base_version.clone());
            let image = entry(&version)
                .map(|e| e.spec.image.clone())
                .unwrap_or_else(|| base_entry.spec.image.clone());
            let role = if *m == primary {
                ROLE_PRIMARY
            } else {
                ROLE_STANDBY
            };
            create_ignoring_conflict(
                &pods_api,
                &children::pod(&inst, &engine, m, &image, &version, role),
            )
            .await?;
            created = true;
        }
    }
    if created {
        next.phase.get_or_insert(InstancePhase::Building);
        return finish(&ctx, &inst, &current, next, None, requeue::poll()).await;
    }

    let mut policy = inst.spec.upgrade_policy.clone();
    if let Some(second) = upgrade.as_ref().and_then(|u| u.second_switch) {
        policy.second_switch = second;
    }
    let now = ctx.clock.now();
    let elapsed = upgrade
        .as_ref()
        .and_then(|u| u.step_started.as_ref())
        .map(|t| now.duration_since(t.0))
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(Duration::ZERO);
    let may_start_step = match (&upgrade, &inst.spec.maintenance_window) {
        (Some(u), Some(w)) if u.window_only => window::is_open(now, w),
        _ => true,
    };
    let view = View {
        members: &observed.members,
        primary: &observed.primary,
        policy: &policy,
        step_elapsed: elapsed,
        may_start_step,
    };

    let Some(u) = upgrade else {
        // Converge replication: every other member follows the primary.
        if !converge(&ctx, &inst, &current, &engine, &view).await? {
            return Ok(reread());
        }
        let all_caught_up = observed
            .members
            .iter()
            .filter(|m| m.name != primary)
            .all(|m| plan::caught_up(&view, m))
            && observed
                .members
                .iter()
                .any(|m| m.name == primary && m.ready);
        let version = observed
            .members
            .iter()
            .find(|m| m.name == primary)
            .and_then(|m| m.version.clone())
            .unwrap_or(base_version.clone());
        if !all_caught_up {
            if current.phase != Some(InstancePhase::Active) {
                next.phase = Some(InstancePhase::Building);
            }
            next.message = Some("waiting for every member to be Ready and replicating".into());
            set_condition(
                &mut next,
                &ctx,
                "Ready",
                false,
                "MembersNotReady",
                "not every member is Ready and caught up".into(),
                &inst,
            );
            return finish(&ctx, &inst, &current, next, None, requeue::poll()).await;
        }
        next.version = Some(version.clone());
        next.phase = Some(InstancePhase::Active);
        next.message = None;
        set_condition(
            &mut next,
            &ctx,
            "Ready",
            true,
            "MembersReady",
            format!("{} members on {version}", names.len()),
            &inst,
        );
        set_condition(
            &mut next,
            &ctx,
            "Progressing",
            false,
            "Idle",
            String::new(),
            &inst,
        );

        let spec_version = inst.spec.datastore.version.clone();
        // An UpgradeRequest moved the instance past its spec: say so, and how to align Git.
        let by_request = current
            .last_upgrade
            .as_ref()
            .filter(|l| l.target_version == version && l.result == UpgradeResult::Succeeded)
            .and_then(|l| l.request.clone());
        if spec_version == version {
            set_condition(
                &mut next,
                &ctx,
                "VersionApplied",
                true,
                "Applied",
                format!("running {version}"),
                &inst,
            );
            return finish(&ctx, &inst, &current, next, None, requeue::idle()).await;
        }
        // The spec names another version: check the path, then the members, then start.
        let refused = |reason: &'static str, msg: String| (reason, msg);
        let verdict = match entry(&spec_version) {
            None => Err(refused(
                "VersionNotInCatalog",
                format!(
                    "{ds} {spec_version} is not in the DatastoreVersion catalog; nothing was changed"
                ),
            )),
            Some(target) => match catalog::check_path(ds, &version, &target.spec) {
                Err(catalog::PathError::Downgrade { .. }) => Err(refused(
                    "DowngradeRefused",
                    match &by_request {
                        Some(r) => format!(
                            "UpgradeRequest {r} upgraded the instance to {version}; spec version {spec_version} is older and is not acted on — set spec.datastore.version to {version}"
                        ),
                        None => format!(
                            "spec version {spec_version} is older than the running {version}; downgrades are never performed — set it back to {version}"
                        ),
                    },
                )),
                Err(e) => Err(refused(
                    "PathNotAllowed",
                    format!("{e}; nothing was changed"),
                )),
                Ok(_) => plan::precheck(&view).map_err(|e| {
                    refused(
                        "PreCheckFailed",
                        format!("upgrade to {spec_version} waits: {e}"),
                    )
                }),
            },
        };
        if let Err((reason, msg)) = verdict {
            set_condition(&mut next, &ctx, "VersionApplied", false, reason, msg, &inst);
            let retry = if reason == "PreCheckFailed" {
                requeue::poll()
            } else {
                requeue::idle()
            };
            return finish(
                &ctx,
                &inst,
                &current,
                next,
                Some((reason, EventType::Warning)),
                retry,
            )
            .await;
        }
        let start = UpgradeInFlight::new(&version, &spec_version, &primary, ctx.now());
        next.upgrade = Some(start);
        next.phase = Some(InstancePhase::Upgrading);
        next.message = Some(format!("upgrading {version} → {spec_version}"));
        set_condition(
            &mut next,
            &ctx,
            "Progressing",
            true,
            "Upgrading",
            format!("{version} → {spec_version}"),
            &inst,
        );
        ctx.metrics.milestone("UpgradeStarted");
        publish(
            &ctx,
            &inst,
            EventType::Normal,
            "UpgradeStarted",
            format!("rolling upgrade {version} → {spec_version}, standbys first"),
        )
        .await;
        return finish(
            &ctx,
            &inst,
            &current,
            next,
            None,
            Action::requeue(Duration::from_millis(100)),
        )
        .await;
    };

    // An upgrade is in flight (or failed). A request's upgrade goes back only when asked
    // (`rollback`); a spec-driven one when the spec is set back to the source version.
    let spec_version = inst.spec.datastore.version.clone();
    let reverting = u.rollback || (u.request.is_none() && spec_version == u.source_version);
    let mut u = u;
    if let (Some(why), Some(_)) = (u.failure.clone(), u.request.as_ref()) {
        if !u.rollback && plan::revertible(&view, &u) {
            // A request's failed upgrade returns to the source on its own: the primary still
            // runs it, so this is always safe.
            u = UpgradeInFlight {
                aborted: Some(why.clone()),
                rollback: true,
                hold: false,
                ..back_to_source(u, ctx.now())
            };
            next.upgrade = Some(u.clone());
            next.message = Some(format!("rolling back to {}: {why}", u.source_version));
            publish(
                &ctx,
                &inst,
                EventType::Warning,
                "RollbackStarted",
                format!("returning every member to {}: {why}", u.source_version),
            )
            .await;
            return finish(&ctx, &inst, &current, next, None, reread()).await;
        }
        // Cannot go back (the primary already runs the target, or the rollback itself failed):
        // stop in Error and report the outcome to the request.
        let why = if u.rollback {
            format!("rolling back to {} failed: {why}", u.source_version)
        } else {
            format!(
                "{why}; the primary already runs {}, so it cannot be rolled back: the member needs a person to start on it",
                u.target_version
            )
        };
        next.phase = Some(InstancePhase::Error);
        next.message = Some(why.clone());
        set_condition(
            &mut next,
            &ctx,
            "Degraded",
            true,
            "UpgradeFailed",
            why.clone(),
            &inst,
        );
        if current.last_upgrade.as_ref().and_then(|l| l.job.as_ref()) != u.job.as_ref() {
            next.last_upgrade = Some(outcome(&ctx, &u, UpgradeResult::Failed, why));
        }
        return finish(&ctx, &inst, &current, next, None, requeue::idle()).await;
    }
    if u.failure.is_some() {
        if !reverting {
            next.phase = Some(InstancePhase::Error);
            next.message = u.failure.clone();
            set_condition(
                &mut next,
                &ctx,
                "Degraded",
                true,
                "UpgradeFailed",
                u.failure.clone().unwrap_or_default(),
                &inst,
            );
            set_condition(
                &mut next,
                &ctx,
                "Progressing",
                false,
                "UpgradeFailed",
                format!(
                    "set spec.datastore.version back to {} to return every member to it",
                    u.source_version
                ),
                &inst,
            );
            return finish(&ctx, &inst, &current, next, None, requeue::idle()).await;
        }
        // The spec went back to the source version: start returning every member to it.
        u = back_to_source(u, ctx.now());
        next.upgrade = Some(u.clone());
        publish(
            &ctx,
            &inst,
            EventType::Normal,
            "RevertStarted",
            format!("returning every member to {}", u.source_version),
        )
        .await;
        return finish(
            &ctx,
            &inst,
            &current,
            next,
            None,
            Action::requeue(Duration::from_millis(100)),
        )
        .await;
    }
    if reverting && !plan::revertible(&view, &u) {
        let msg = format!(
            "the primary already runs {}; the upgrade can only move forward to it",
            u.target_version
        );
        set_condition(
            &mut next,
            &ctx,
            "VersionApplied",
            false,
            "RevertImpossible",
            msg,
            &inst,
        );
        return finish(&ctx, &inst, &current, next, None, requeue::poll()).await;
    }
    if !reverting && u.request.is_none() && spec_version != u.target_version {
        let msg = format!(
            "an upgrade to {} is in flight; {spec_version} waits until it ends",
            u.target_version
        );
        set_condition(
            &mut next,
            &ctx,
            "VersionApplied",
            false,
            "UpgradeInFlight",
            msg,
            &inst,
        );
    }

    let decision = plan::next(&view, &u, reverting);
    let new_image = match &decision.act {
        Act::SetVersion { version, .. } => entry(version).map(|e| e.spec.image.clone()),
        _ => None,
    };
    if decision.before.is_some()
        || decision.after.is_some()
        || !matches!(decision.act, Act::Wait(_))
    {
        info!(step = %u.step, switchover = ?u.switchover, act = ?decision.act, "upgrade decision");
    }
    next.phase = Some(InstancePhase::Upgrading);
    if let Some(before) = decision.before.clone() {
        record(&ctx, &mut next, &u, before, decision.reverted, &primary);
        mark_degraded(&mut next, &ctx, &inst);
        // Intent first: written before the side effect.
        if !write_status(&ctx, &inst, &current, &next, Guard::FirstWrite, true).await? {
            return Ok(reread());
        }
        if let Some(u) = &next.upgrade {
            // Crash tests: stop right after an intent is recorded, before its side effect.
            let stage = u
                .switchover
                .as_deref()
                .and_then(|s| s.split('/').next())
                .unwrap_or("");
            let step = u.step.split('/').next().unwrap_or("");
            crate::failpoint::hit(&format!("recorded:{step}:{stage}"));
        }
        let written = next.clone();
        return act_and_finish(
            &ctx,
            &inst,
            &engine,
            &observed,
            (decision, new_image),
            &written,
            next,
        )
        .await;
    }
    if u.switchover.is_none() && !converge(&ctx, &inst, &current, &engine, &view).await? {
        return Ok(reread());
    }
    act_and_finish(
        &ctx,
        &inst,
        &engine,
        &observed,
        (decision, new_image),
        &current,
        next,
    )
    .await
}

/// `u` restarted at its first step, to return every member to its source version: the failure
/// and any switchover state are cleared.
fn back_to_source(u: UpgradeInFlight, now: Time) -> UpgradeInFlight {
    UpgradeInFlight {
        failure: None,
        step: String::new(),
        step_started: Some(now),
        switchover: None,
        candidate: None,
        fence_offset: None,
        ..u
    }
}

/// Applies a recorded upgrade state (or its end) to the status being built.
fn record(
    ctx: &Context,
    next: &mut DatabaseInstanceStatus,
    prev: &UpgradeInFlight,
    rec: Option<UpgradeInFlight>,
    reverted: bool,
    primary: &str,
) {
    match rec {
        Some(mut r) => {
            if r.step != prev.step
                || r.switchover.as_ref().map(|s| s.split('/').next())
                    != prev.switchover.as_ref().map(|s| s.split('/').next())
                || r.step_started.is_none()
            {
                r.step_started = Some(ctx.now());
            }
            if r.failure.is_some() {
                next.phase = Some(InstancePhase::Error);
                next.message = r.failure.clone();
            } else {
                next.message = Some(format!(
                    "{} → {}: {}",
                    r.source_version, r.target_version, r.step
                ));
            }
            next.upgrade = Some(r);
        }
        None => {
            let (result, message) = match (reverted, &prev.aborted, prev.cancel) {
                (false, _, false) => (
                    UpgradeResult::Succeeded,
                    format!("every member runs {}", prev.target_version),
                ),
                (false, _, true) => (
                    UpgradeResult::Succeeded,
                    format!(
                        "cancelled after the primary had moved to {}: finished, the only way to a healthy instance",
                        prev.target_version
                    ),
                ),
                (true, Some(why), _) => (
                    UpgradeResult::Failed,
                    format!("{why}; every member is back on {}", prev.source_version),
                ),
                (true, None, true) => (
                    UpgradeResult::Cancelled,
                    format!("cancelled; every member is back on {}", prev.source_version),
                ),
                (true, None, false) => (
                    UpgradeResult::RolledBack,
                    format!("every member is back on {}", prev.source_version),
                ),
            };
            next.last_upgrade = Some(outcome(ctx, prev, result, message));
            next.version = Some(if reverted {
                prev.source_version.clone()
            } else {
                prev.target_version.clone()
            });
            next.upgrade = None;
            next.phase = Some(InstancePhase::Active);
            next.message = None;
            next.primary = Some(primary.to_string());
        }
    }
}

fn outcome(
    ctx: &Context,
    u: &UpgradeInFlight,
    result: UpgradeResult,
    message: String,
) -> UpgradeOutcome {
    UpgradeOutcome {
        request: u.request.clone(),
        job: u.job.clone(),
        source_version: u.source_version.clone(),
        target_version: u.target_version.clone(),
        result,
        message: Some(message),
        finish_time: Some(ctx.now()),
    }
}

async fn act_and_finish(
    ctx: &Context,
    inst: &DatabaseInstance,
    engine: &Engine,
    observed: &Observed,
    // The decision, and for `Act::SetVersion` the catalog image of that version (resolved by
    // the caller, which has the catalog already).
    (decision, new_image): (plan::Decision, Option<String>),
    written: &DatabaseInstanceStatus,
    mut next: DatabaseInstanceStatus,
) -> Result<Action> {
    // A side effect only from a state this pass has proven current: if nothing was written yet
    // in this pass, write (guarded) first.
    let mut base = written.clone();
    let mut wrote = *written != inst.status.clone().unwrap_or_default();
    if !wrote && !matches!(decision.act, Act::Wait(_)) {
        if !write_status(ctx, inst, written, &next, Guard::FirstWrite, true).await? {
            return Ok(reread());
        }
        base = next.clone();
        wrote = true;
    }
    let ns = inst.namespace().unwrap_or_default();
    let pods_api = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
    let ip = |n: &str| {
        observed
            .members
            .iter()
            .find(|m| m.name == n)
            .and_then(|m| m.ip)
    };
    let ok = match &decision.act {
        Act::Wait(_) => true,
        Act::SetVersion { member, version } => {
            let image = new_image.clone();
            match image {
                Some(image) => {
                    info!(member, version, image, "restarting member on a new version");
                    pods_api
                        .patch(
                            member,
                            &PatchParams::default(),
                            &Patch::Strategic(&children::version_patch(engine, &image, version)),
                        )
                        .await
                        .map_err(Error::kube("changing a member's image"))?;
                    publish(
                        ctx,
                        inst,
                        EventType::Normal,
                        "MemberRestarting",
                        format!("{member} → {version} ({image})"),
                    )
                    .await;
                    true
                }
                None => false,
            }
        }
        Act::Repoint { member } => match (ip(member), ip(&observed.primary)) {
            (Some(m), Some(p)) => engine.replicate_from(m, p).await.is_ok(),
            _ => false,
        },
        Act::Fence { member } => match ip(member) {
            Some(m) => engine.fence(m).await.is_ok(),
            None => false,
        },
        Act::Unfence { member } => match ip(member) {
            Some(m) => engine.unfence(m).await.is_ok(),
            None => false,
        },
        Act::Promote { candidate } => promote(engine, &pods_api, observed, candidate).await?,
    };
    if ok
        && let Some(after) = decision.after.clone()
        && let Some(prev) = next.upgrade.clone().or_else(|| written.upgrade.clone())
    {
        let primary = decision
            .new_primary
            .clone()
            .unwrap_or_else(|| observed.primary.clone());
        next.primary = Some(primary.clone());
        record(ctx, &mut next, &prev, after, decision.reverted, &primary);
    }
    if ok && let Some((reason, msg)) = &decision.event {
        let t = if *reason == "UpgradeFailed" {
            EventType::Warning
        } else {
            EventType::Normal
        };
        info!(reason, message = %msg, "upgrade milestone");
        ctx.metrics.milestone(reason);
        publish(ctx, inst, t, reason, msg.clone()).await;
    }
    mark_degraded(&mut next, ctx, inst);
    if next.upgrade.is_none() {
        set_condition(
            &mut next,
            ctx,
            "Progressing",
            false,
            "Idle",
            String::new(),
            inst,
        );
    }
    let busy = decision.before.is_some() || decision.after.is_some();
    let again = if busy {
        Action::requeue(Duration::from_millis(100))
    } else {
        requeue::poll()
    };
    let guard = if wrote {
        Guard::SamePass
    } else {
        Guard::FirstWrite
    };
    finish_with(ctx, inst, &base, next, again, guard).await
}

/// Promote the candidate, make every other member follow it, and move the primary label.
async fn promote(
    engine: &Engine,
    pods: &Api<Pod>,
    observed: &Observed,
    candidate: &str,
) -> Result<bool> {
    let Some(cip) = observed
        .members
        .iter()
        .find(|m| m.name == candidate)
        .and_then(|m| m.ip)
    else {
        return Ok(false);
    };
    if engine.promote(cip).await.is_err() {
        return Ok(false);
    }
    for m in observed.members.iter().filter(|m| m.name != candidate) {
        if let Some(ip) = m.ip {
            let _ = engine.replicate_from(ip, cip).await;
        }
    }
    // Labels last: the read-write Service follows the primary label.
    for m in &observed.members {
        let role = if m.name == candidate {
            ROLE_PRIMARY
        } else {
            ROLE_STANDBY
        };
        pods.patch(
            &m.name,
            &PatchParams::default(),
            &Patch::Merge(&children::role_patch(role)),
        )
        .await
        .map_err(Error::kube("moving the primary label"))?;
    }
    Ok(true)
}

/// Probes every member concurrently.
async fn observe(
    engine: &Engine,
    names: &[String],
    pods: &BTreeMap<String, Pod>,
    primary: &str,
) -> Observed {
    let members = join_all(names.iter().map(|n| async move {
        let pod = pods.get(n);
        let ip: Option<Ipv4Addr> =
            pod.and_then(|p| p.status.as_ref()?.pod_ip.as_deref()?.parse().ok());
        let ready = pod.is_some_and(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        let waiting = pod
            .and_then(|p| {
                p.status
                    .as_ref()?
                    .container_statuses
                    .as_ref()?
                    .first()?
                    .state
                    .as_ref()?
                    .waiting
                    .clone()
            })
            .map(|w| {
                format!(
                    "{}: {}",
                    w.reason.unwrap_or_default(),
                    w.message.unwrap_or_default()
                )
            });
        let probe = match ip {
            Some(ip) if pod.is_some() => engine.probe(ip).await.ok(),
            _ => None,
        };
        let image_current = pod.is_some_and(|p| {
            let want = p
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone());
            let running = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref()?.first().cloned());
            running.is_some_and(|c| Some(c.image) == want && c.ready)
        });
        Member {
            name: n.clone(),
            version: pod.and_then(|p| p.annotations().get(ANNOTATION_VERSION).cloned()),
            ready,
            ip,
            probe,
            waiting,
            image_current,
        }
    }))
    .await;
    Observed {
        members,
        primary: primary.to_string(),
    }
}

/// Repoints every reachable member that does not follow the primary (a restarted member comes
/// back as a lone primary).
/// Repoints every reachable member that does not follow the primary (a restarted member comes
/// back as a lone primary). Returns false, touching nothing, if the object changed since this
/// pass read it: a repoint made from an older view could point members at a former primary.
async fn converge(
    ctx: &Context,
    inst: &DatabaseInstance,
    current: &DatabaseInstanceStatus,
    engine: &Engine,
    v: &View<'_>,
) -> Result<bool> {
    let Some(pip) = v
        .members
        .iter()
        .find(|m| m.name == v.primary)
        .and_then(|m| m.ip)
    else {
        return Ok(true);
    };
    let strays: Vec<(&Member, Ipv4Addr)> = v
        .members
        .iter()
        .filter(|m| m.name != v.primary)
        .filter_map(|m| {
            let (ip, p) = (m.ip?, m.probe.as_ref()?);
            (p.role == Role::Primary || p.following != Some(pip)).then_some((m, ip))
        })
        .collect();
    if strays.is_empty() {
        return Ok(true);
    }
    if !write_status(ctx, inst, current, current, Guard::FirstWrite, true).await? {
        return Ok(false);
    }
    for (m, ip) in strays {
        info!(member = %m.name, primary = %v.primary, "repointing member to the primary");
        let _ = engine.replicate_from(ip, pip).await;
    }
    Ok(true)
}

fn member_statuses(o: &Observed) -> Vec<MemberStatus> {
    let poff = o
        .members
        .iter()
        .find(|m| m.name == o.primary)
        .and_then(|m| m.probe.as_ref())
        .map(|p| p.offset);
    o.members
        .iter()
        .map(|m| MemberStatus {
            pod: m.name.clone(),
            role: m.probe.as_ref().map(|p| {
                if p.role == Role::Primary {
                    MemberRole::Primary
                } else {
                    MemberRole::Standby
                }
            }),
            version: m.probe.as_ref().map(|p| p.version.clone()),
            ready: m.ready,
            lag_bytes: m
                .probe
                .as_ref()
                .filter(|p| p.role == Role::Standby)
                .and_then(|p| poff.map(|o| (o - p.offset).max(0))),
        })
        .collect()
}

async fn ensure_owned(ctx: &Context, inst: &DatabaseInstance, engine: &Engine) -> Result<()> {
    let ns = inst.namespace().unwrap_or_default();
    let claims = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns);
    for m in children::member_names(inst) {
        if claims
            .get_opt(&children::claim_name(&m))
            .await
            .map_err(Error::kube("reading a claim"))?
            .is_none()
        {
            create_ignoring_conflict(&claims, &children::claim(inst, &m)).await?;
        }
    }
    let services = Api::<Service>::namespaced(ctx.client.clone(), &ns);
    for svc in children::services(inst, engine) {
        if services
            .get_opt(&svc.name_any())
            .await
            .map_err(Error::kube("reading a service"))?
            .is_none()
        {
            create_ignoring_conflict(&services, &svc).await?;
        }
    }
    let pdbs = Api::<PodDisruptionBudget>::namespaced(ctx.client.clone(), &ns);
    if pdbs
        .get_opt(&inst.name_any())
        .await
        .map_err(Error::kube("reading the PDB"))?
        .is_none()
    {
        create_ignoring_conflict(&pdbs, &children::pdb(inst)).await?;
    }
    Ok(())
}

async fn create_ignoring_conflict<K>(api: &Api<K>, obj: &K) -> Result<()>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(Error::kube("creating an owned object")(e)),
    }
}

fn set_condition(
    next: &mut DatabaseInstanceStatus,
    ctx: &Context,
    type_: &'static str,
    ok: bool,
    reason: &'static str,
    message: String,
    inst: &DatabaseInstance,
) {
    next.conditions = status::merge(
        &next.conditions,
        Desired {
            type_,
            status: ok,
            reason,
            message,
        },
        inst.metadata.generation,
        ctx.now(),
    );
}

/// `Degraded` follows the recorded failure, in the same write that records it.
fn mark_degraded(next: &mut DatabaseInstanceStatus, ctx: &Context, inst: &DatabaseInstance) {
    match next.upgrade.as_ref().and_then(|u| u.failure.clone()) {
        Some(f) => set_condition(next, ctx, "Degraded", true, "UpgradeFailed", f, inst),
        None => set_condition(
            next,
            ctx,
            "Degraded",
            false,
            "NoFailure",
            String::new(),
            inst,
        ),
    }
}

async fn publish(
    ctx: &Context,
    inst: &DatabaseInstance,
    type_: EventType,
    reason: &str,
    note: String,
) {
    super::publish(ctx, &inst.object_ref(&()), type_, reason, note).await;
}

/// How a status write is guarded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Guard {
    /// The first write of a pass: only if the object is still the version this pass read (an
    /// optimistic lock), so a pass planned from an older read can never overwrite a newer step.
    FirstWrite,
    /// A later write of the same pass, after a guarded one succeeded.
    SamePass,
}

/// Writes `next` when it differs from `current` (or always, with `force`: that checks the
/// lock before a side effect). Returns false when the lock failed: the caller must re-read.
async fn write_status(
    ctx: &Context,
    inst: &DatabaseInstance,
    current: &DatabaseInstanceStatus,
    next: &DatabaseInstanceStatus,
    guard: Guard,
    force: bool,
) -> Result<bool> {
    if next == current && !force {
        return Ok(true);
    }
    let api = Api::<DatabaseInstance>::namespaced(
        ctx.client.clone(),
        &inst.namespace().unwrap_or_default(),
    );
    super::apply_status(
        &api,
        inst,
        next,
        guard == Guard::FirstWrite,
        "writing DatabaseInstance status",
    )
    .await
}

/// Writes an instance's whole status (an UpgradeRequest claiming or steering its upgrade), only
/// if the object is still the version `inst` was read at. False on conflict: re-read.
pub(crate) async fn write_status_guarded(
    ctx: &Context,
    inst: &DatabaseInstance,
    next: &DatabaseInstanceStatus,
) -> Result<bool> {
    let current = inst.status.clone().unwrap_or_default();
    write_status(ctx, inst, &current, next, Guard::FirstWrite, true).await
}

/// Re-read soon: the object changed since this pass read it.
fn reread() -> Action {
    Action::requeue(Duration::from_millis(100))
}

/// Writes the status if it changed; emits a Warning when a condition newly turns false.
async fn finish(
    ctx: &Context,
    inst: &DatabaseInstance,
    current: &DatabaseInstanceStatus,
    next: DatabaseInstanceStatus,
    warn_on: Option<(&'static str, EventType)>,
    action: Action,
) -> Result<Action> {
    if let Some((reason, t)) = warn_on {
        let was = current.conditions.iter().any(|c| c.reason == reason);
        if !was && let Some(c) = next.conditions.iter().find(|c| c.reason == reason) {
            publish(ctx, inst, t, reason, c.message.clone()).await;
        }
    }
    finish_with(ctx, inst, current, next, action, Guard::FirstWrite).await
}

async fn finish_with(
    ctx: &Context,
    inst: &DatabaseInstance,
    current: &DatabaseInstanceStatus,
    next: DatabaseInstanceStatus,
    action: Action,
    guard: Guard,
) -> Result<Action> {
    if write_status(ctx, inst, current, &next, guard, false).await? {
        Ok(action)
    } else {
        Ok(reread())
    }
}
