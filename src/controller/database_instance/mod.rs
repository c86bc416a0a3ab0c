//! The DatabaseInstance controller, one pipeline per pass:
//! observe (`observe`: the instance read fresh, catalog, pods, owned objects, every member
//! probed) → decide (`decide`, pure: the whole status and at most one act) → write the status
//! once, guarded by the resourceVersion observed (the intent is on record before any side
//! effect) → act once (`act`) → Events derived from what changed (`events`).
//!
//! An upgrade starts when `spec.datastore.version` names a newer catalog version, or when an
//! UpgradeRequest claims the instance; it is driven entirely from `status.upgrade`, so an
//! operator restarted at any instant resumes at the recorded step. A paused instance is
//! observed, never touched.

pub mod act;
pub mod children;
pub mod decide;
pub mod events;
pub mod model;
pub mod observe;
pub mod plan;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{debug, info, warn};

use super::{Context, requeue};
use crate::crd::{DatabaseInstance, DatabaseInstanceStatus, DatastoreVersion};
use crate::error::Result;
use model::{Act, Wake};

/// Builds the controller. It owns the members' pods and the other objects it creates, watched
/// by Baton's own label only, so their changes (and drift) wake it.
pub fn controller(client: Client, namespace: Option<&str>) -> Controller<DatabaseInstance> {
    fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let ours = watcher::Config::default().labels(&format!(
        "{}={}",
        children::LABEL_MANAGED_BY,
        children::MANAGED_BY
    ));
    let ctrl = Controller::new(
        api::<DatabaseInstance>(&client, namespace),
        Default::default(),
    );
    // A catalog change wakes the instances of that datastore (one waiting on a version the
    // catalog lacked proceeds at once).
    let instances = ctrl.store();
    ctrl.watches(
        Api::<DatastoreVersion>::all(client.clone()),
        Default::default(),
        move |dv: DatastoreVersion| {
            instances
                .state()
                .iter()
                .filter(|i| i.spec.datastore.type_ == dv.spec.datastore)
                .map(|i| ObjectRef::from_obj(i.as_ref()))
                .collect::<Vec<_>>()
        },
    )
    .owns(api::<Pod>(&client, namespace), ours.clone())
    .owns(api::<Service>(&client, namespace), ours.clone())
    .owns(api::<PodDisruptionBudget>(&client, namespace), ours.clone())
    .owns(
        api::<PersistentVolumeClaim>(&client, namespace),
        ours.clone(),
    )
    .owns(api::<ConfigMap>(&client, namespace), ours)
}

pub async fn reconcile(cached: Arc<DatabaseInstance>, ctx: Arc<Context>) -> Result<Action> {
    let ns = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let started = std::time::Instant::now();
    let Some(observed) = observe::observe(&ctx, &ns, &name).await? else {
        return Ok(Action::await_change());
    };
    let observed_ms = started.elapsed().as_millis();
    let o = &observed.o;
    let current = o.inst.status.clone().unwrap_or_default();
    let d = decide::decide(o);
    report_probe_errors(&current, &d.status);
    if d.act != Act::None || d.status.upgrade != current.upgrade {
        info!(
            step = d.status.upgrade.as_ref().map(|u| u.describe()).unwrap_or_default(),
            act = ?d.act,
            "decision"
        );
    }
    let key = format!("{ns}/{name}");
    // Positions and lag alone are refreshed only now and then (see `differs_only_in_volatile`
    // and `volatile_refresh`); anything else is written at once.
    let volatile = decide::differs_only_in_volatile(&current, &d.status)
        && ctx.written_within(
            &key,
            decide::volatile_refresh(&current, &d.status, &o.inst.spec.upgrade_policy),
        );
    let changed = d.status != current && !volatile;
    // Intent first. A side effect only from a state this pass has proven current: with an
    // act, the write is made (guarded) even when nothing changed.
    if changed || d.act != Act::None {
        if !write_status_guarded(&ctx, &o.inst, &d.status).await? {
            return Ok(requeue::reread());
        }
        ctx.mark_written(&key);
        debug!(changed = ?crate::status::changed_paths(&current, &d.status, 8), act = d.act.name(), "status written");
    }
    if changed {
        crate::failpoint::passed(&status_point(&d.status)).await;
        trace_switchover(&ctx, &o.inst, &current, &d.status, o.now);
    }
    let act_ok = match observed.engine {
        Some(engine) => run_act(&ctx, o, engine, &d, &key).await,
        None => true,
    };
    let act = if act_ok { &d.act } else { &Act::None };
    for n in events::notes(&current, &d.status, act) {
        ctx.metrics.milestone(n.reason);
        let t = if n.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        publish(&ctx, &o.inst, t, n.reason, n.message).await;
    }
    if !act_ok {
        // A failing member is not hammered: the next attempt comes after a second.
        return Ok(requeue::retry());
    }
    // Where a pass's time goes (the observation probes every member; the rest is API writes).
    debug!(
        observed_ms,
        total_ms = started.elapsed().as_millis(),
        act = d.act.name(),
        "pass"
    );
    Ok(match d.wake {
        Wake::Idle => requeue::health(ctx.health_interval),
        Wake::Poll => requeue::poll(),
        Wake::Fenced => requeue::fenced(),
        Wake::CatchingUp => requeue::catching_up(),
        // The next step is ready: its act's effect is observable at once.
        Wake::Now => requeue::now(),
    })
}

/// Runs the pass's act; false (with a metric, and an Event the first time it fails this way)
/// when it failed.
async fn run_act(
    ctx: &Context,
    o: &model::Observation,
    engine: &'static dyn crate::engine::Engine,
    d: &decide::Decision,
    key: &str,
) -> bool {
    match act::run(&ctx.client, o, engine, &d.status, &d.act).await {
        Ok(()) => {
            ctx.set_act_error(key, None);
            true
        }
        Err(e) => {
            let text = super::chain(&e);
            warn!(act = d.act.name(), member = d.act.member().unwrap_or_default(), error = %text, "act failed");
            ctx.metrics.engine_error(
                o.inst.spec.datastore.type_.as_str(),
                d.act.name(),
                e.category(),
            );
            if ctx.set_act_error(key, Some(text.clone())) {
                publish(ctx, &o.inst, EventType::Warning, "ActFailed", text).await;
            }
            false
        }
    }
}

/// The failpoint of a status write: `api:status:<step>[@ordinal]:<stage>` while upgrading.
fn status_point(s: &DatabaseInstanceStatus) -> String {
    match &s.upgrade {
        Some(u) => format!(
            "api:status:{:?}{}:{}",
            u.step.kind,
            u.step
                .member
                .as_deref()
                .and_then(|m| m.rsplit('-').next())
                .map(|o| format!("@{o}"))
                .unwrap_or_default(),
            u.switchover
                .as_ref()
                .map(|sw| format!("{:?}", sw.stage))
                .unwrap_or_default()
        ),
        None => "api:status".into(),
    }
}

/// Logs a member's probe failure when it starts (status carries it meanwhile).
fn report_probe_errors(old: &DatabaseInstanceStatus, new: &DatabaseInstanceStatus) {
    for m in &new.members {
        let before = old
            .members
            .iter()
            .find(|o| o.pod == m.pod)
            .and_then(|o| o.error.as_ref());
        if let Some(e) = &m.error
            && before != Some(e)
        {
            warn!(member = %m.pod, error = %e, "probing the member failed");
        }
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

/// Writes an instance's whole status, only if the object is still the version `inst` was read
/// at (an optimistic lock: a pass planned from an older read never overwrites a newer step,
/// and two requests never both claim one instance). False on conflict: re-read.
pub(crate) async fn write_status_guarded(
    ctx: &Context,
    inst: &DatabaseInstance,
    next: &DatabaseInstanceStatus,
) -> Result<bool> {
    let api = Api::<DatabaseInstance>::namespaced(
        ctx.client.clone(),
        &inst.namespace().unwrap_or_default(),
    );
    super::apply_status(&api, inst, next, true, "writing DatabaseInstance status").await
}

/// Where a switchover's time goes: each stage it enters, in milliseconds since the fence was
/// recorded, and its whole window when it ends, logged and in the histogram.
fn trace_switchover(
    ctx: &Context,
    inst: &DatabaseInstance,
    before: &DatabaseInstanceStatus,
    after: &DatabaseInstanceStatus,
    now: jiff::Timestamp,
) {
    let stage = |s: &DatabaseInstanceStatus| {
        s.upgrade
            .as_ref()
            .and_then(|u| u.switchover.as_ref())
            .map(|sw| (sw.stage, sw.fenced_at.clone()))
    };
    match (stage(before), stage(after)) {
        (a, Some((stage, Some(fenced)))) if a.as_ref().map(|x| x.0) != Some(stage) => {
            let ms = plan::millis_between(fenced.0, now).unwrap_or_default();
            info!(?stage, since_fence_ms = ms, "switchover stage");
        }
        _ => {}
    }
    if let Some(l) = after
        .last_switchover
        .as_ref()
        .filter(|l| before.last_switchover.as_ref() != Some(*l))
    {
        info!(from = %l.from, to = %l.to, window_ms = l.window_ms, undone = l.undone, "switchover ended");
        ctx.metrics.switchover(
            inst.spec.datastore.type_.as_str(),
            Duration::from_millis(l.window_ms.max(0) as u64),
        );
    }
}
