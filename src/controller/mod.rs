//! One controller per Baton kind, each a pipeline observe → decide → act → write status, and
//! the driver that runs them with shared metrics, back-off and shutdown.
//!
//! - `datastore_version`: validates each catalog entry against the rest and writes its status.
//! - `database_instance`: runs each instance's members, keeps replication converged, and rolls
//!   upgrades through them (standbys first, switchover, primary last).
//! - `upgrade_request`: runs upgrade jobs over instances by steering their `status.upgrade`.
//! - `cluster`: runs a Redis Cluster over one DatabaseInstance per shard: forms it, lifts each
//!   master's fence once every node agrees, and reports the shards (upgrades not built yet).

pub mod cluster;
pub mod context;
pub mod database_instance;
pub mod datastore_version;
pub mod requeue;
pub mod upgrade_request;

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Instant;

use futures::{FutureExt, StreamExt};
use kube::api::{Patch, PatchParams};
use kube::runtime::Controller;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

pub use context::{Context, FIELD_MANAGER};

use crate::crd::{Cluster, DatabaseInstance, DatastoreVersion, UpgradeRequest};
use crate::error::Error;

/// Runs every controller until `shutdown` is cancelled.
pub async fn run_all(ctx: Arc<Context>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    // The catalog store every instance pass reads (a LIST per pass cost most of a pass).
    if let Some(writer) = ctx.take_catalog_writer() {
        let stream = kube::runtime::watcher(
            Api::<DatastoreVersion>::all(client.clone()),
            Default::default(),
        )
        .default_backoff()
        .reflect(writer)
        .applied_objects();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream.take_until(stop.cancelled_owned()));
            while let Some(event) = stream.next().await {
                if let Err(e) = event {
                    warn!(error = %e, "the catalog watch failed; retrying");
                }
            }
        });
        tokio::select! {
            ready = ctx.catalog.wait_until_ready() => {
                if ready.is_err() && !shutdown.is_cancelled() {
                    warn!("the catalog store never became ready");
                }
            }
            _ = shutdown.cancelled() => return,
        }
    }
    tokio::join!(
        drive(
            "datastoreversion",
            datastore_version::controller(client.clone()),
            datastore_version::reconcile,
            ctx.clone(),
            shutdown.clone(),
        ),
        drive(
            "databaseinstance",
            database_instance::controller(client.clone(), ctx.namespace.as_deref()),
            database_instance::reconcile,
            ctx.clone(),
            shutdown.clone(),
        ),
        drive(
            "cluster",
            cluster::controller(
                scoped::<Cluster>(&client, &ctx),
                scoped::<DatabaseInstance>(&client, &ctx),
                scoped::<k8s_openapi::api::core::v1::Pod>(&client, &ctx),
            ),
            cluster::reconcile,
            ctx.clone(),
            shutdown.clone(),
        ),
        drive(
            "upgraderequest",
            upgrade_request::controller(
                scoped::<UpgradeRequest>(&client, &ctx),
                scoped::<DatabaseInstance>(&client, &ctx),
                scoped::<Cluster>(&client, &ctx),
            ),
            upgrade_request::reconcile,
            ctx,
            shutdown,
        ),
    );
}

/// An Api over every namespace, or over the one the operator is limited to.
fn scoped<K>(client: &kube::Client, ctx: &Context) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match &ctx.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs one controller: a tracing span per reconcile, metrics, per-object back-off on errors.
async fn drive<K, F, Fut>(
    name: &'static str,
    controller: Controller<K>,
    reconcile: F,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Clone + Debug + Eq + Hash + Unpin,
    F: Fn(Arc<K>, Arc<Context>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    let reconcile = Arc::new(reconcile);
    let store = controller.store();
    let watched = store.clone();
    let observed = move |obj: Arc<K>, ctx: Arc<Context>| {
        let watched = watched.len();
        let reconcile = reconcile.clone();
        let key = object_key(obj.as_ref());
        let span = info_span!(
            "reconcile",
            kind = name,
            namespace = obj.namespace().unwrap_or_default(),
            name = obj.name_any()
        );
        async move {
            let started = Instant::now();
            ctx.metrics.reconcile_started(name, watched);
            let result = reconcile(obj, ctx.clone()).await;
            ctx.metrics
                .reconciled(name, started.elapsed(), result.is_ok());
            match &result {
                Ok(_) => ctx.backoffs.succeeded(&key),
                Err(e) => ctx.metrics.failed(name, e.category()),
            }
            result
        }
        .instrument(span)
    };
    let error_policy = move |obj: Arc<K>, err: &Error, ctx: Arc<Context>| {
        warn!(kind = name, object = %object_key(obj.as_ref()), error = %chain(err), "reconcile failed");
        ctx.backoffs.failed(&object_key(obj.as_ref()))
    };
    let run = controller
        .with_config(kube::runtime::controller::Config::default().concurrency(ctx.concurrency))
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(observed, error_policy, ctx)
        .for_each(|_| async {});
    let mut run = std::pin::pin!(run);
    tokio::select! {
        _ = &mut run => return,
        _ = shutdown.cancelled() => {}
    }
    // kube-runtime holds reconciles until the controller's first list, and its graceful shutdown
    // stops that list: stopped before it, the controller would wait forever. Nothing can be in
    // flight then, so stop at once.
    if !matches!(store.wait_until_ready().now_or_never(), Some(Ok(()))) {
        return;
    }
    // Let in-flight reconciles finish (every step is safe to cut, as a crash would), but within
    // the pod's termination grace period so the lease is released before SIGKILL.
    if tokio::time::timeout(SHUTDOWN_GRACE, run).await.is_err() {
        warn!(kind = name, grace = ?SHUTDOWN_GRACE, "reconciles still running at shutdown; stopping them");
    }
}

/// How long in-flight reconciles get to finish after SIGTERM; below the chart's 30 s
/// `terminationGracePeriodSeconds`, leaving time to release the leader lease.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

/// Writes `status` of `obj` by server-side apply as Baton's field manager. With `guarded`, the
/// write carries the resourceVersion `obj` was read at, so it lands only if nothing changed
/// since (an optimistic lock). Returns false when that lock failed: re-read before deciding.
pub(crate) async fn apply_status<K>(
    api: &Api<K>,
    obj: &K,
    status: &impl serde::Serialize,
    guarded: bool,
    action: &'static str,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let rv = if guarded {
        obj.resource_version()
    } else {
        None
    };
    Ok(apply_status_at(api, &obj.name_any(), rv, status, action)
        .await?
        .is_some())
}

/// `apply_status` guarded by `rv` when given: the object as written, or None when the lock
/// failed (a caller that writes several times in a pass guards each by the last write's).
pub(crate) async fn apply_status_at<K>(
    api: &Api<K>,
    name: &str,
    rv: Option<String>,
    status: &impl serde::Serialize,
    action: &'static str,
) -> Result<Option<K>, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let mut patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    if let Some(rv) = rv {
        patch["metadata"] = serde_json::json!({"resourceVersion": rv});
    }
    match api
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(written) => Ok(Some(written)),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
        Err(e) => Err(Error::kube(action)(e)),
    }
}

/// Publishes an Event about `obj`. The note doubles as the action, so each distinct step is an
/// Event of its own rather than a count on the first one (the recorder folds events with equal
/// reason and action). A failed publish is logged, never fatal.
pub(crate) async fn publish(
    ctx: &Context,
    obj: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let action: String = note.chars().take(40).collect();
    // The API server refuses a note over 1024 bytes.
    let note = if note.len() > 1024 {
        let mut cut = 1020;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}…", &note[..cut])
    } else {
        note
    };
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action,
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, obj).await {
        warn!(error = %e, "publishing an event failed");
    }
}

/// An error with its sources, `outer: inner: innermost`, for one log field. A source that
/// only repeats what is already said (clients often wrap `timed out` in `timed out`) is left out.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn object_key<K: Resource>(obj: &K) -> String {
    match obj.meta().namespace.as_deref() {
        Some(ns) => format!("{ns}/{}", obj.meta().name.as_deref().unwrap_or_default()),
        None => obj.meta().name.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct E(&'static str, #[source] Option<Box<E>>);

    #[test]
    fn a_chain_names_each_source_once() {
        let inner = E("timed out", None);
        let wrap = E("timed out", Some(Box::new(inner)));
        let outer = E("cannot reach 127.0.0.1:6379", Some(Box::new(wrap)));
        assert_eq!(chain(&outer), "cannot reach 127.0.0.1:6379: timed out");
        let refused = E(
            "cannot reach a",
            Some(Box::new(E("connection refused", None))),
        );
        assert_eq!(chain(&refused), "cannot reach a: connection refused");
    }
}
