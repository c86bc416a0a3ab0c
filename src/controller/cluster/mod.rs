//! The Cluster controller (Redis Cluster). A Cluster owns one DatabaseInstance per shard
//! (`<cluster>-shard-<n>`), which runs the shard's members in cluster mode and reports them;
//! the Cluster owns what only the whole cluster can decide: it forms the cluster once every
//! member runs (one step per pass, decided from every node's own `CLUSTER NODES`, so an
//! operator killed half-way picks up where the nodes are), lifts the boot fence of each master
//! only once every node agrees it leads its shard, and reports each shard as the nodes see it.
//!
//! A changed `spec.datastore.version` is rolled out shard by shard (`upgrade`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use tracing::{info, warn};

use super::database_instance::children::{
    self, LABEL_CLIENT, LABEL_CLUSTER, LABEL_MANAGED_BY, MANAGED_BY,
};
use super::database_instance::observe::{pod_ready, read_tls, secret_values};
use super::{Context, FIELD_MANAGER, requeue};
use crate::crd::{
    Cluster, ClusterStatus, ClusterTask, CredentialsRef, DatabaseInstance, DatabaseInstanceSpec,
    DatastoreRef, ShardStatus,
};
use crate::crd::{Datastore, MemberResources};
use crate::engine::redis_cluster::{self as rc, Formation, Shard, View};
use crate::engine::{self, Accounts, Credentials, Engine, Probe, Target};
use crate::error::{Error, Result};
use crate::status::{self, Desired};

pub(crate) mod upgrade;

/// Builds the controller. Besides its shards it watches their members' pods (by the Cluster
/// label): a member restarted by an upgrade wakes the Cluster when it turns Ready, rather than
/// at the next poll.
pub fn controller(
    clusters: Api<Cluster>,
    instances: Api<DatabaseInstance>,
    pods: Api<Pod>,
) -> Controller<Cluster> {
    Controller::new(clusters, Default::default())
        .owns(instances, Default::default())
        .watches(
            pods,
            kube::runtime::watcher::Config::default().labels(LABEL_CLUSTER),
            |pod: Pod| {
                let cluster = pod.labels().get(LABEL_CLUSTER)?;
                Some(kube::runtime::reflector::ObjectRef::new(cluster).within(&pod.namespace()?))
            },
        )
}

/// The name of shard `n`'s DatabaseInstance.
pub fn shard_name(cluster: &str, n: i32) -> String {
    format!("{cluster}-shard-{n}")
}

/// The Secret every node of the cluster authenticates with: a cluster-aware client logs in to
/// every node with one account, so all shards share it.
pub fn credentials_name(cluster: &str) -> String {
    format!("{cluster}-credentials")
}

pub async fn reconcile(cached: Arc<Cluster>, ctx: Arc<Context>) -> Result<Action> {
    let ns = cached.namespace().unwrap_or_default();
    let api = Api::<Cluster>::namespaced(ctx.client.clone(), &ns);
    // A fresh read: the watch cache can trail this controller's own last status write.
    let Some(cluster) = api
        .get_opt(&cached.name_any())
        .await
        .map_err(Error::kube("reading the Cluster"))?
    else {
        return Ok(Action::await_change());
    };
    let before = cluster.status.clone().unwrap_or_default();
    let policy = &cluster.spec.upgrade_policy;
    let mut pass = Pass {
        s: before.clone(),
        generation: cluster.metadata.generation,
        now: ctx.now(),
        events: vec![],
        step_timeout: Duration::from_secs(policy.step_timeout_seconds.max(1) as u64),
        fence_timeout: Duration::from_secs(policy.fence_timeout_seconds.max(1) as u64),
        written: before.clone(),
        rv: cluster.resource_version(),
    };
    pass.s.observed_generation = cluster.metadata.generation;
    let action = run(&ctx, &cluster, &api, &mut pass).await;
    pass.settle_health(cluster.spec.paused);
    if pass.s != pass.written && !pass.record(&api, &cluster).await? {
        // The Cluster changed since this pass read it (an UpgradeRequest claimed or steered
        // it): decide again from a fresh read, and publish nothing of this pass.
        return Ok(requeue::reread());
    }
    for (t, reason, note) in std::mem::take(&mut pass.events) {
        publish(&ctx, &cluster, t, reason, note).await;
    }
    let formed_now = |s: &ClusterStatus| {
        status::find(&s.conditions, "Formed").is_some_and(|c| c.status == "True")
    };
    if formed_now(&pass.s) && !formed_now(&before) {
        let note = format!(
            "{} shards serve all {} slots",
            pass.s.shards.len(),
            rc::SLOTS
        );
        info!(cluster = %cluster.name_any(), "{note}");
        publish(&ctx, &cluster, EventType::Normal, "ClusterFormed", note).await;
    }
    action
}

struct Pass {
    s: ClusterStatus,
    generation: Option<i64>,
    now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// Events to publish once the status that records them is written.
    events: Vec<(EventType, &'static str, String)>,
    step_timeout: Duration,
    fence_timeout: Duration,
    /// The status as last written (an act writes its intent before it runs).
    written: ClusterStatus,
    /// The resourceVersion every write is guarded by: the read's, then each write's own.
    rv: Option<String>,
}

impl Pass {
    fn cond(&mut self, type_: &str, ok: bool, reason: &str, message: String) {
        self.s.conditions = status::merge(
            &self.s.conditions,
            Desired {
                type_,
                status: ok,
                reason,
                message,
            },
            self.generation,
            self.now.clone(),
        );
    }

    /// Not ready for `why`: said in `message` and the `Ready` condition. An upgrade step that
    /// has waited past its deadline stops the upgrade here, with `why` as the reason.
    fn waiting(&mut self, reason: &str, why: String) {
        self.s.message = Some(why.clone());
        self.cond("Ready", false, reason, why.clone());
        upgrade::check_deadline(self, &why);
    }

    /// Writes the whole status now (an act's intent is on record before the act runs), by
    /// server-side apply guarded by the resourceVersion this pass last saw, so a pass never
    /// overwrites an UpgradeRequest's claim or steer it did not read. False when the Cluster
    /// changed since: the act must not run.
    async fn record(&mut self, api: &Api<Cluster>, cluster: &Cluster) -> Result<bool> {
        self.settle_health(cluster.spec.paused);
        let rv = self.rv.clone();
        let written = super::apply_status_at(
            api,
            &cluster.name_any(),
            rv,
            &self.s,
            "writing Cluster status",
        )
        .await?;
        let Some(written) = written else {
            return Ok(false);
        };
        self.rv = written.resource_version();
        self.written = self.s.clone();
        Ok(true)
    }

    /// The GitOps pair (`Reconciling`, `Stalled`) from the status this pass built.
    fn settle_health(&mut self, paused: bool) {
        let health = crate::health::cluster(&self.s, paused);
        self.s.conditions = crate::health::apply(
            &self.s.conditions,
            &health,
            self.generation,
            self.now.clone(),
        );
    }

    fn formed(&self) -> bool {
        status::find(&self.s.conditions, "Formed").is_some_and(|c| c.status == "True")
    }
}

/// A pass stops here with this requeue (what it waits for is already said in status).
type Stop = Action;

/// One pass: admit the spec, observe the members and every node's view, form the cluster or
/// pass the gate, then take the upgrade's next step.
async fn run(ctx: &Context, cluster: &Cluster, api: &Api<Cluster>, p: &mut Pass) -> Result<Action> {
    let Some((engine, version)) = admitted(ctx, cluster, p) else {
        return Ok(Action::await_change());
    };
    let ns = cluster.namespace().unwrap_or_default();
    let (accounts, names, layout) = members(ctx, cluster, p, engine, &version).await?;
    if let Some(action) = upgrade::stopped(cluster, p) {
        return Ok(action);
    }
    if let Some(action) =
        upgrade::revert_down_member(ctx, cluster, api, p, &layout, &ctx.catalog()).await?
    {
        return Ok(action);
    }
    // The members an upgrade restarts may be down or catching up meanwhile (one per shard at
    // most, recorded before each restart): the gate lets them be, and their shards wait.
    let excused: BTreeSet<String> =
        p.s.upgrade
            .iter()
            .flat_map(|u| u.restarting.iter().map(|r| r.member.clone()))
            .collect();
    if let Some(why) = layout.missing(&excused) {
        p.waiting("MembersNotReady", why);
        return Ok(requeue::members());
    }
    let (targets, views) = match read_nodes(ctx, cluster, p, &layout, &accounts, engine).await? {
        Ok(nodes) => nodes,
        Err(stop) => return Ok(stop),
    };
    if !p.formed()
        && let Some(stop) = formation(cluster, p, &names, &layout, &targets, &views).await
    {
        return Ok(stop);
    }
    let (all, mut troubled) = match gate(p, &names, &layout, &views, &excused) {
        Ok(gated) => gated,
        Err(stop) => return Ok(stop),
    };
    let probes = match probe(
        p,
        engine,
        &names,
        &layout,
        &targets,
        &excused,
        &mut troubled,
    )
    .await
    {
        Ok(probes) => probes,
        Err(stop) => return Ok(stop),
    };
    settled(p, &names, &probes, &troubled);
    let spec = &cluster.spec;
    let rotating = if p.s.upgrade.is_none() && p.s.version.as_ref() != Some(&spec.datastore.version)
    {
        shard_behind_secret(ctx, &ns, &names, &accounts, engine).await?
    } else {
        None
    };
    let seen = upgrade::Seen {
        rotating,
        names: &names,
        layout: &layout,
        troubled: &troubled,
        targets: &targets,
        views: &all,
        probes: &probes,
        catalog: ctx.catalog(),
    };
    if let Some(action) = upgrade::step(ctx, cluster, api, p, &seen).await? {
        return Ok(action);
    }
    p.s.task = Some(ClusterTask::None);
    Ok(super::requeue::health(ctx.health_interval))
}

/// The engine and the version the shards run, or `None` (said in status) when Baton does not
/// act on this Cluster: paused, a datastore other than Redis, a version not in the catalog.
fn admitted(
    ctx: &Context,
    cluster: &Cluster,
    p: &mut Pass,
) -> Option<(&'static dyn Engine, String)> {
    let spec = &cluster.spec;
    if spec.paused {
        p.s.message = Some("paused: Baton touches nothing until spec.paused is false".into());
        return None;
    }
    let engine = match engine::for_datastore(spec.datastore.type_) {
        Ok(e) if spec.datastore.type_ == Datastore::Redis => e,
        _ => {
            p.waiting(
                "DatastoreUnsupported",
                format!(
                    "a Cluster of {} is not supported: Baton runs Redis Cluster (datastore.type: redis); for one {} database use a DatabaseInstance",
                    spec.datastore.type_, spec.datastore.type_
                ),
            );
            return None;
        }
    };
    // The shards stay on their version until an upgrade moves them.
    let version =
        p.s.version
            .clone()
            .unwrap_or_else(|| spec.datastore.version.clone());
    if crate::catalog::find(&ctx.catalog(), Datastore::Redis, &version).is_none() {
        p.waiting(
            "VersionNotInCatalog",
            format!(
                "redis {version} is not in the DatastoreVersion catalog; add it or choose a listed version"
            ),
        );
        return None;
    }
    if p.s.task.is_none() {
        p.s.task = Some(ClusterTask::Building);
    }
    Some((engine, version))
}

/// The credentials, the shards' names and where every member is: what the Cluster owns is
/// created when missing (the Secret, the NetworkPolicy, a shard with no pod at all).
async fn members(
    ctx: &Context,
    cluster: &Cluster,
    p: &Pass,
    engine: &dyn Engine,
    version: &str,
) -> Result<(Accounts, Vec<String>, Layout)> {
    let spec = &cluster.spec;
    // Read at every pass: a rotated password is used at once.
    let accounts = ensure_credentials(ctx, cluster, engine).await?;
    // Checked on every pass but an upgrade's (which come every 100 ms to 1 s): a deleted or
    // edited policy is restored within a health interval.
    if p.s.upgrade.is_none() {
        ensure_network_policy(ctx, cluster).await?;
    }
    let names: Vec<String> = (0..spec.shards.max(1))
        .map(|n| shard_name(&cluster.name_any(), n))
        .collect();
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default())
        .list(&ListParams::default().labels(&format!("{LABEL_CLUSTER}={}", cluster.name_any())))
        .await
        .map_err(Error::kube("listing the Cluster's pods"))?;
    // A shard with no pod at all is created (or was deleted, taking its pods with it); one
    // with pods exists, and its instance replaces a missing pod itself.
    for name in &names {
        if !pods.items.iter().any(|p| owner(&p.name_any()) == name) {
            ensure_shard(ctx, cluster, name, version).await?;
        }
    }
    let layout = Layout::of(&names, spec.replicas_per_shard, &pods.items);
    Ok((accounts, names, layout))
}

/// How to reach every Ready member (TLS and login), and each one's own `CLUSTER NODES`, keyed
/// by address; a node that does not answer is left out of the views.
async fn read_nodes(
    ctx: &Context,
    cluster: &Cluster,
    p: &mut Pass,
    layout: &Layout,
    accounts: &Accounts,
    engine: &dyn Engine,
) -> Result<std::result::Result<(BTreeMap<String, Target>, BTreeMap<String, View>), Stop>> {
    let spec = &cluster.spec;
    let ns = cluster.namespace().unwrap_or_default();
    // With spec.tls every node serves TLS only: Baton verifies the chain against the CA.
    let (ca, cert) = match read_tls(ctx, &ns, spec.tls.as_ref()).await? {
        Ok(tls) => tls.unzip(),
        Err(why) => {
            p.waiting("TLSUnavailable", why);
            return Ok(Err(requeue::person()));
        }
    };
    if let (Some(tls), Some(cert)) = (&spec.tls, &cert)
        && !crate::tls::allows_client_auth(cert)
    {
        p.waiting(
            "TLSUnavailable",
            format!(
                "the certificate in Secret {} is for server authentication only (extended key usage); the nodes present it to each other on the cluster bus, which refuses it: issue it for client auth too (cert-manager usages: server auth, client auth)",
                tls.secret_name
            ),
        );
        return Ok(Err(requeue::person()));
    }
    let login = accounts.admin(engine);
    let mut targets: BTreeMap<String, Target> = layout
        .addr
        .values()
        .map(|a| {
            let t = Target {
                ca: ca.clone(),
                cert: cert.clone(),
                ..rc::target(a, &login)
            };
            (a.clone(), t)
        })
        .collect();
    let mut views = BTreeMap::new();
    // A changed Secret reaches the nodes shard by shard: each shard sets the passwords on its
    // members, then records them in its applied copy, which its members boot with. A node that
    // refuses the Secret's login is asked again with its shard's copy (read only then).
    let mut applied: BTreeMap<&str, Option<Credentials>> = BTreeMap::new();
    for (pod, a) in &layout.addr {
        let mut view = rc::view(&targets[a]).await;
        if view.is_err() {
            let shard = owner(pod);
            if !applied.contains_key(shard) {
                let copy = applied_copy(ctx, &ns, shard, engine).await?;
                applied.insert(shard, copy.map(|c| c.admin(engine)).filter(|c| *c != login));
            }
            if let Some(t) = targets.get_mut(a)
                && let Some(copy) = applied[shard].clone()
            {
                t.fallback = Some(copy);
                view = rc::view(t).await;
            }
        }
        match view {
            Ok(v) => {
                views.insert(a.clone(), v);
            }
            Err(e) => warn!(node = %a, error = %e, "reading the node's view of the cluster failed"),
        }
    }
    Ok(Ok((targets, views)))
}

/// Until the cluster is formed: its next formation step, decided from every node's view and
/// taken (one per pass). `None` once formed (recorded in `Formed`, never done again).
async fn formation(
    cluster: &Cluster,
    p: &mut Pass,
    names: &[String],
    layout: &Layout,
    targets: &BTreeMap<String, Target>,
    views: &BTreeMap<String, View>,
) -> Option<Stop> {
    let step = rc::next_formation_step(&layout.shards, views);
    match &step {
        Formation::Formed => {
            p.cond(
                "Formed",
                true,
                "Formed",
                format!("{} shards formed", names.len()),
            );
            None
        }
        Formation::Conflict(why) => {
            p.waiting(
                "FormationConflict",
                format!("the nodes were formed otherwise and Baton does not undo that: {why}"),
            );
            Some(requeue::person())
        }
        Formation::Wait(why) => {
            p.waiting("Forming", format!("forming the cluster: {why}"));
            Some(requeue::poll())
        }
        act => {
            info!(cluster = %cluster.name_any(), step = ?act, "forming");
            p.waiting("Forming", format!("forming the cluster: {}", describe(act)));
            if let Err(e) = rc::form(act, targets).await {
                warn!(error = %e, "a formation step failed");
                p.waiting("Forming", format!("forming the cluster: {e}"));
                return Some(requeue::retry());
            }
            Some(requeue::reread())
        }
    }
}

/// The gate over a formed cluster: every node answers and every view agrees before a master
/// takes writes or a step is taken, except for the members an upgrade restarts (`excused`).
/// Returns the views (those of nodes not restarting first) and the excused members not back.
fn gate(
    p: &mut Pass,
    names: &[String],
    layout: &Layout,
    views: &BTreeMap<String, View>,
    excused: &BTreeSet<String>,
) -> std::result::Result<(Vec<View>, BTreeSet<String>), Stop> {
    let excused_addr: BTreeMap<String, String> = excused
        .iter()
        .filter_map(|pod| Some((layout.address_of(pod)?, pod.clone())))
        .collect();
    let unread: Vec<&String> = layout
        .addr
        .iter()
        .filter(|(_, a)| !views.contains_key(*a))
        .map(|(pod, _)| pod)
        .collect();
    if unread.iter().any(|pod| !excused.contains(*pod)) {
        p.waiting(
            "NodesUnreachable",
            format!(
                "{} of {} nodes answered CLUSTER NODES",
                views.len(),
                layout.addr.len()
            ),
        );
        return Err(requeue::members());
    }
    // The shards are reported as the nodes not restarting see them.
    let mut all: Vec<View> = views.values().cloned().collect();
    all.sort_by_key(|v| {
        v.myself()
            .is_some_and(|me| excused_addr.contains_key(&me.addr))
    });
    p.s.shards = shard_statuses(names, layout, &all);
    let addrs: BTreeSet<String> = excused_addr.keys().cloned().collect();
    let mut troubled: BTreeSet<String> = match rc::health_excusing(&all, &addrs) {
        Ok(t) => t
            .iter()
            .filter_map(|a| excused_addr.get(a).cloned())
            .collect(),
        Err(why) => {
            p.waiting("Unhealthy", why.to_string());
            return Err(requeue::retry());
        }
    };
    troubled.extend(unread.into_iter().cloned());
    troubled.extend(
        excused
            .iter()
            .filter(|pod| !layout.addr.contains_key(*pod))
            .cloned(),
    );
    Ok((all, troubled))
}

/// Every Ready member probed (its version into the shard's status), and each shard's master
/// unfenced once every node agrees it leads. A restarting member that does not answer is not
/// back (`troubled`); any other stops the pass.
async fn probe(
    p: &mut Pass,
    engine: &dyn Engine,
    names: &[String],
    layout: &Layout,
    targets: &BTreeMap<String, Target>,
    excused: &BTreeSet<String>,
    troubled: &mut BTreeSet<String>,
) -> std::result::Result<BTreeMap<String, Probe>, Stop> {
    let mut probes = BTreeMap::new();
    for (shard, st) in names.iter().zip(p.s.shards.iter_mut()) {
        for (pod, a) in layout.addr.iter().filter(|(pod, _)| owner(pod) == *shard) {
            let t = &targets[a];
            let probe = match engine.probe(t).await {
                Ok(probe) => probe,
                Err(_) if excused.contains(pod) => {
                    troubled.insert(pod.clone());
                    continue;
                }
                Err(e) => {
                    p.waiting("MembersNotReady", format!("probing {pod}: {e}"));
                    return Err(requeue::retry());
                }
            };
            st.versions.insert(pod.clone(), probe.version.clone());
            // The boot fence comes off a master only once every node agrees it leads.
            if st.primary.as_deref() == Some(pod.as_str()) && probe.fenced {
                info!(member = %pod, "unfencing the shard's master: every node agrees it leads");
                if let Err(e) = engine.unfence(t).await {
                    p.waiting("Unfencing", format!("unfencing {pod}: {e}"));
                    return Err(requeue::retry());
                }
            }
            probes.insert(pod.clone(), probe);
        }
    }
    Ok(probes)
}

/// The gate passed: the version every member runs (when one, and no upgrade), and `Ready`.
fn settled(
    p: &mut Pass,
    names: &[String],
    probes: &BTreeMap<String, Probe>,
    troubled: &BTreeSet<String>,
) {
    let versions: BTreeSet<&str> = probes.values().map(|p| p.version.as_str()).collect();
    if p.s.upgrade.is_none()
        && let [only] = versions.iter().collect::<Vec<_>>().as_slice()
    {
        p.s.version = Some(only.to_string());
    }
    p.s.message = None;
    let restarting = if troubled.is_empty() {
        String::new()
    } else {
        let pods: Vec<&str> = troubled.iter().map(String::as_str).collect();
        format!(" ({} restarting for the upgrade)", pods.join(", "))
    };
    p.cond(
        "Ready",
        true,
        "ClusterOk",
        format!(
            "{} shards serve all {} slots; every node agrees{restarting}",
            names.len(),
            rc::SLOTS
        ),
    );
}

fn describe(step: &Formation) -> String {
    match step {
        Formation::Meet { on, peer } => format!("{on} meets {peer}"),
        Formation::AddSlots { on, ranges } => format!("{on} takes slots {}", ranges_text(ranges)),
        Formation::Replicate { on, master } => format!("{on} replicates node {master}"),
        Formation::Wait(why) | Formation::Conflict(why) => why.clone(),
        Formation::Formed => "formed".into(),
    }
}

fn ranges_text(ranges: &[rc::SlotRange]) -> String {
    ranges
        .iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The shard a member pod belongs to (`<cluster>-shard-<n>-<ordinal>` → `<cluster>-shard-<n>`).
fn owner(pod: &str) -> &str {
    pod.rsplit_once('-').map_or(pod, |(shard, _)| shard)
}

/// Where every member is and how the shards were laid out at creation: each shard's member 0
/// serves its slots, the others replicate it.
#[derive(Debug, Default)]
struct Layout {
    /// `ip:port` of every member, by pod name.
    addr: BTreeMap<String, String>,
    /// Every member's pod, Ready or not.
    pods: BTreeMap<String, Pod>,
    shards: Vec<Shard>,
    /// The members not Ready yet, and how many there are in all.
    waiting: Vec<String>,
    expected: usize,
}

impl Layout {
    fn of(shards: &[String], per_shard: i32, pods: &[Pod]) -> Layout {
        let by_name: BTreeMap<String, &Pod> = pods.iter().map(|p| (p.name_any(), p)).collect();
        let mut l = Layout {
            pods: by_name
                .iter()
                .map(|(n, p)| (n.clone(), (*p).clone()))
                .collect(),
            ..Default::default()
        };
        let mut waiting = vec![];
        for shard in shards {
            let members: Vec<String> = (0..per_shard.max(1))
                .map(|i| format!("{shard}-{i}"))
                .collect();
            for m in &members {
                match by_name
                    .get(m)
                    .filter(|p| pod_ready(p))
                    .and_then(|p| p.status.as_ref().and_then(|s| s.pod_ip.clone()))
                {
                    Some(ip) => {
                        l.addr.insert(m.clone(), rc::address(&ip));
                    }
                    None => waiting.push(m.clone()),
                }
            }
            if let Some((first, rest)) = members.split_first()
                && let Some(primary) = l.addr.get(first)
            {
                l.shards.push(Shard {
                    primary: primary.clone(),
                    replicas: rest.iter().filter_map(|m| l.addr.get(m).cloned()).collect(),
                });
            }
        }
        l.waiting = waiting;
        l.expected = shards.len() * per_shard.max(1) as usize;
        l
    }

    /// Why the layout is not complete, leaving out the members in `excused`.
    fn missing(&self, excused: &BTreeSet<String>) -> Option<String> {
        let waiting: Vec<&str> = self
            .waiting
            .iter()
            .filter(|m| !excused.contains(*m))
            .map(String::as_str)
            .collect();
        (!waiting.is_empty()).then(|| {
            format!(
                "waiting for {} of {} members to be Ready: {}",
                waiting.len(),
                self.expected,
                waiting.join(", ")
            )
        })
    }

    /// The `ip:port` of `pod`, Ready or not (a restarting member keeps its pod and address).
    fn address_of(&self, pod: &str) -> Option<String> {
        let ip = self.pods.get(pod)?.status.as_ref()?.pod_ip.clone()?;
        Some(rc::address(&ip))
    }
}

/// Each shard as every view agrees (the health gate has checked they do): its master, the
/// replicas following it, and its slots. A pod whose node is unknown is left out.
fn shard_statuses(shards: &[String], layout: &Layout, views: &[View]) -> Vec<ShardStatus> {
    let Some(first) = views.first() else {
        return shards
            .iter()
            .map(|s| ShardStatus {
                instance: s.clone(),
                ..Default::default()
            })
            .collect();
    };
    let pod_of = |addr: &str| {
        layout
            .addr
            .iter()
            .find(|(_, a)| a.as_str() == addr)
            .map(|(p, _)| p.clone())
    };
    shards
        .iter()
        .map(|shard| {
            let mut st = ShardStatus {
                instance: shard.clone(),
                ..Default::default()
            };
            let members: Vec<&rc::Node> = first
                .nodes
                .iter()
                .filter(|n| pod_of(&n.addr).is_some_and(|p| owner(&p) == shard))
                .collect();
            if let Some(master) = members.iter().find(|n| n.master && !n.slots.is_empty()) {
                st.primary = pod_of(&master.addr);
                let mut slots = master.slots.clone();
                slots.sort();
                st.slots = slots
                    .iter()
                    .map(|r| ranges_text(std::slice::from_ref(r)))
                    .collect();
                st.replicas = members
                    .iter()
                    .filter(|n| n.master_id.as_deref() == Some(master.id.as_str()))
                    .filter_map(|n| pod_of(&n.addr))
                    .collect();
            }
            st
        })
        .collect()
}

/// The cluster's Secret: generated once (an existing one is never rewritten, so a user's
/// rotation is theirs), owned by the Cluster.
async fn ensure_credentials(
    ctx: &Context,
    cluster: &Cluster,
    engine: &dyn Engine,
) -> Result<Accounts> {
    let ns = cluster.namespace().unwrap_or_default();
    let api = Api::<Secret>::namespaced(ctx.client.clone(), &ns);
    let name = credentials_name(&cluster.name_any());
    let keys = engine.credential_keys();
    let read = |s: &Secret| Accounts(secret_values(s, keys));
    if let Some(s) = api
        .get_opt(&name)
        .await
        .map_err(Error::kube("reading the Cluster's credentials"))?
    {
        return Ok(read(&s));
    }
    let values = children::generated_values(keys);
    let secret = Secret {
        metadata: meta(cluster, name.clone()),
        string_data: Some(values.0.clone()),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(values),
        // Another pass created it first: use what it wrote.
        Err(kube::Error::Api(s)) if s.code == 409 => api
            .get(&name)
            .await
            .map(|s| read(&s))
            .map_err(Error::kube("reading the Cluster's credentials")),
        Err(e) => Err(Error::kube("creating the Cluster's credentials")(e)),
    }
}

/// Shard `shard`'s applied copy of the credentials (what its members run with), if it has one.
async fn applied_copy(
    ctx: &Context,
    ns: &str,
    shard: &str,
    engine: &dyn Engine,
) -> Result<Option<Accounts>> {
    Ok(Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(&children::applied_credentials_of(shard))
        .await
        .map_err(Error::kube("reading a shard's applied credentials"))?
        .map(|s| Accounts(secret_values(&s, engine.credential_keys()))))
}

/// The first shard whose members do not run with the Secret's passwords yet (it sets them
/// only while no upgrade is in flight; an upgrade waits for it, so no member restarts
/// half-way through a change).
async fn shard_behind_secret(
    ctx: &Context,
    ns: &str,
    shards: &[String],
    secret: &Accounts,
    engine: &dyn Engine,
) -> Result<Option<String>> {
    for shard in shards {
        if applied_copy(ctx, ns, shard, engine).await?.as_ref() != Some(secret) {
            return Ok(Some(shard.clone()));
        }
    }
    Ok(None)
}

fn meta(cluster: &Cluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cluster.namespace(),
        labels: Some(BTreeMap::from([
            (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
            (LABEL_CLUSTER.to_string(), cluster.name_any()),
        ])),
        owner_references: cluster.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

/// Creates shard `name` if it does not exist. An existing shard is left as it is: its spec is
/// the Cluster's to change only through an upgrade.
async fn ensure_shard(ctx: &Context, cluster: &Cluster, name: &str, version: &str) -> Result<()> {
    let ns = cluster.namespace().unwrap_or_default();
    let api = Api::<DatabaseInstance>::namespaced(ctx.client.clone(), &ns);
    if api
        .get_opt(name)
        .await
        .map_err(Error::kube("reading a shard"))?
        .is_some()
    {
        return Ok(());
    }
    let spec = &cluster.spec;
    let mut shard = DatabaseInstance::new(
        name,
        DatabaseInstanceSpec {
            datastore: DatastoreRef {
                type_: spec.datastore.type_,
                version: version.to_string(),
            },
            replicas: spec.replicas_per_shard,
            members: MemberResources {
                storage: spec.members.storage.clone(),
                resources: spec.members.resources.clone(),
            },
            maintenance_window: spec.maintenance_window.clone(),
            upgrade_policy: spec.upgrade_policy.clone(),
            paused: false,
            credentials: Some(CredentialsRef {
                secret_name: credentials_name(&cluster.name_any()),
            }),
            tls: spec.tls.clone(),
            // A shard's roles are the Cluster's (every node's view decides a failover).
            failover: Default::default(),
            durability: Default::default(),
        },
    );
    shard.metadata = meta(cluster, name.to_string());
    match api.create(&PostParams::default(), &shard).await {
        Ok(_) => {
            info!(shard = %name, "created the shard");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(Error::kube("creating a shard")(e)),
    }
}

/// Lets the nodes of the cluster reach each other on the client and bus ports (each shard's
/// own policy admits only its members), and clients labelled `baton.dev/client: <cluster>` the
/// client port. Enforcement is the network plugin's.
async fn ensure_network_policy(ctx: &Context, cluster: &Cluster) -> Result<()> {
    let ns = cluster.namespace().unwrap_or_default();
    let name = cluster.name_any();
    let select = |k: &str| LabelSelector {
        match_labels: Some(BTreeMap::from([(k.to_string(), name.clone())])),
        ..Default::default()
    };
    let port = |p: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(p)),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let peer = |k: &str| NetworkPolicyPeer {
        pod_selector: Some(select(k)),
        ..Default::default()
    };
    let policy = NetworkPolicy {
        metadata: meta(cluster, format!("{name}-cluster")),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(select(LABEL_CLUSTER)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    ports: Some(vec![port(rc::PORT as i32), port(rc::BUS_PORT as i32)]),
                    from: Some(vec![peer(LABEL_CLUSTER)]),
                },
                NetworkPolicyIngressRule {
                    ports: Some(vec![port(rc::PORT as i32)]),
                    from: Some(vec![peer(LABEL_CLIENT)]),
                },
            ]),
            ..Default::default()
        }),
    };
    let api = Api::<NetworkPolicy>::namespaced(ctx.client.clone(), &ns);
    // Applied only when missing or edited: a settled Cluster costs the API server no writes.
    let have = api
        .get_opt(&format!("{name}-cluster"))
        .await
        .map_err(Error::kube("reading the Cluster's NetworkPolicy"))?;
    if have.is_some_and(|h| h.spec == policy.spec) {
        return Ok(());
    }
    api.patch(
        &format!("{name}-cluster"),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&policy),
    )
    .await
    .map_err(Error::kube("applying the Cluster's NetworkPolicy"))?;
    Ok(())
}

async fn publish(ctx: &Context, cluster: &Cluster, type_: EventType, reason: &str, note: String) {
    super::publish(ctx, &cluster.object_ref(&()), type_, reason, note).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ip: Option<&str>, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {
                "podIP": ip,
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
            }
        }))
        .unwrap()
    }

    #[test]
    fn members_are_laid_out_member_zero_first_and_a_missing_one_is_named() {
        let shards = vec!["c-shard-0".to_string(), "c-shard-1".to_string()];
        let pods = vec![
            pod("c-shard-0-0", Some("127.2.0.1"), true),
            pod("c-shard-0-1", Some("127.2.0.2"), true),
            pod("c-shard-1-0", Some("127.2.0.3"), true),
            pod("c-shard-1-1", Some("127.2.0.4"), true),
        ];
        let none = BTreeSet::new();
        let l = Layout::of(&shards, 2, &pods);
        assert_eq!(l.missing(&none), None);
        assert_eq!(
            l.shards,
            vec![
                Shard {
                    primary: "127.2.0.1:6379".into(),
                    replicas: vec!["127.2.0.2:6379".into()]
                },
                Shard {
                    primary: "127.2.0.3:6379".into(),
                    replicas: vec!["127.2.0.4:6379".into()]
                },
            ]
        );
        let l = Layout::of(&shards, 2, &pods[..3]);
        let why = l.missing(&none).unwrap();
        assert!(
            why.contains("1 of 4") && why.contains("c-shard-1-1"),
            "{why}"
        );
        let mut not_ready = pods.clone();
        not_ready[0] = pod("c-shard-0-0", Some("127.2.0.1"), false);
        let l = Layout::of(&shards, 2, &not_ready);
        assert!(l.missing(&none).unwrap().contains("c-shard-0-0"));
        // A member an upgrade restarts is let be; its address is still known.
        let restarting = BTreeSet::from(["c-shard-0-0".to_string()]);
        assert_eq!(l.missing(&restarting), None);
        assert_eq!(
            l.address_of("c-shard-0-0").as_deref(),
            Some("127.2.0.1:6379")
        );
    }

    /// Shard n's members: 700(n+1) serves its slots at formation, 700(n+4) replicates it.
    fn fixture_layout() -> (Vec<String>, Layout) {
        let shards: Vec<String> = (0..3).map(|n| format!("c-shard-{n}")).collect();
        let mut l = Layout::default();
        for n in 0..3 {
            for (i, port) in [(0, 7001 + n), (1, 7004 + n)] {
                l.addr
                    .insert(format!("c-shard-{n}-{i}"), format!("127.0.0.1:{port}"));
            }
        }
        (shards, l)
    }

    #[test]
    fn shards_are_reported_as_the_nodes_see_them_before_and_after_a_failover() {
        let (shards, layout) = fixture_layout();
        let formed =
            View::parse(include_str!("../../testdata/redis-cluster/formed-7001.txt")).unwrap();
        let st = shard_statuses(&shards, &layout, &[formed]);
        assert_eq!(st[0].primary.as_deref(), Some("c-shard-0-0"));
        assert_eq!(st[0].replicas, vec!["c-shard-0-1".to_string()]);
        assert_eq!(st[0].slots, vec!["0-5460".to_string()]);
        assert_eq!(st[1].slots, vec!["5461-10922".to_string()]);
        assert_eq!(st[2].primary.as_deref(), Some("c-shard-2-0"));
        // 7004 took shard 0's slots with a CLUSTER FAILOVER; 7001 follows it.
        let after = View::parse(include_str!(
            "../../testdata/redis-cluster/failed-over-7001.txt"
        ))
        .unwrap();
        let st = shard_statuses(&shards, &layout, &[after]);
        assert_eq!(st[0].primary.as_deref(), Some("c-shard-0-1"));
        assert_eq!(st[0].replicas, vec!["c-shard-0-0".to_string()]);
        assert_eq!(st[0].slots, vec!["0-5460".to_string()]);
    }

    #[test]
    fn a_member_pod_names_its_shard() {
        assert_eq!(owner("events-shard-12-1"), "events-shard-12");
    }
}
