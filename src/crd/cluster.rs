//! Cluster: a sharded database, each shard an HA DatabaseInstance that the Cluster owns.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Conditions, DatastoreRef, MaintenanceWindow, MemberResources, UpgradePolicy};
use super::database_instance::{TlsRef, UpgradeOutcome};

/// The desired state of a sharded database: the datastore version, the number of shards and the
/// members per shard.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "baton.dev",
    version = "v1alpha1",
    kind = "Cluster",
    plural = "clusters",
    shortname = "dbc",
    category = "baton",
    namespaced,
    status = "ClusterStatus",
    doc = "A Cluster is a sharded database (first: Redis Cluster). Each shard is a DatabaseInstance owned by the Cluster; an upgrade rolls one shard at a time, or maxUnavailableShards at once.",
    printcolumn(
        name = "Datastore",
        type_ = "string",
        json_path = ".spec.datastore.type"
    ),
    printcolumn(name = "Version", type_ = "string", json_path = ".status.version"),
    printcolumn(name = "Task", type_ = "string", json_path = ".status.task"),
    printcolumn(name = "Shards", type_ = "integer", json_path = ".spec.shards"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxUnavailableShards <= self.shards").message("maxUnavailableShards cannot exceed shards: set it to at most the number of shards").field_path(".maxUnavailableShards"))]
#[x_kube(validation = Rule::new("has(self.tls) == has(oldSelf.tls) && (!has(self.tls) || self.tls == oldSelf.tls)").message("tls is set when the Cluster is created (its nodes talk to each other with it): create a new Cluster to change it").field_path(".tls"))]
pub struct ClusterSpec {
    /// The datastore type and the desired version of every shard.
    pub datastore: DatastoreRef,

    /// The number of shards (1 to 64). Fixed at creation: resharding is not supported yet.
    #[schemars(range(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("shards cannot change after creation: resharding is not supported yet; create a new Cluster and move the data"))]
    pub shards: i32,

    /// Members per shard: a primary and `replicasPerShard - 1` standbys (1 to 9). Default 2.
    #[serde(default = "default_replicas_per_shard")]
    #[schemars(range(min = 1, max = 9))]
    pub replicas_per_shard: i32,

    /// How many shards an upgrade works on at once (1 to 64, at most `shards`; default 1).
    /// Shards go in waves of this many, in shard order; within a shard it is still one member
    /// at a time, so at most this many members of the cluster are down together, never two of
    /// one shard. Failovers stay one at a time, each with every node up and confirming it.
    /// An `InPlace` upgrade (shards of one member) always takes one shard at a time.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 64))]
    pub max_unavailable_shards: i32,

    /// Each member's volume and container resources (`storage`, `resources`).
    #[serde(flatten)]
    pub members: MemberResources,

    /// The weekly window (UTC) in which scheduled upgrades may run steps. Omit for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<MaintenanceWindow>,

    /// How upgrades roll through the members of each shard.
    #[serde(default)]
    pub upgrade_policy: UpgradePolicy,

    /// When true, Baton touches nothing of this cluster or its shards.
    #[serde(default)]
    pub paused: bool,

    /// Serve TLS: a Secret in the Cluster's namespace with `tls.crt`, `tls.key` and `ca.crt`
    /// (what cert-manager writes), one certificate for every node. Nodes serve clients, the
    /// cluster bus and replication over TLS only, and Baton connects verifying the chain
    /// against `ca.crt`; a renewed certificate is loaded online. Fixed at creation (nodes of a
    /// cluster cannot mix plain text and TLS). Needs a Redis build with TLS (7.0.15 here, not
    /// 6.2.14).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsRef>,
}

fn default_replicas_per_shard() -> i32 {
    2
}

fn one() -> i32 {
    1
}

/// The cluster-wide task in progress (Trove's cluster task): `None`, `Building` or
/// `UpgradingCluster`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClusterTask {
    #[default]
    None,
    Building,
    UpgradingCluster,
}

/// What Baton observed of the cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `None`, `Building` or `UpgradingCluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<ClusterTask>,
    /// The version every shard runs (while upgrading, the source version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// What Baton is waiting for or why it stopped, in a sentence; empty when all is well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The upgrade in flight (or stopped, with `failed`), recorded before each of its side
    /// effects so that a restarted operator resumes it at the recorded step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<ClusterUpgrade>,
    /// How the last upgrade ended (an UpgradeRequest reads its job's outcome here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_upgrade: Option<UpgradeOutcome>,
    /// Each shard as every node of the cluster agrees it is, in shard order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardStatus>,
    /// Conditions: `Ready` (every slot served, every node agreeing; False says what is
    /// awaited), `Formed` (the cluster was formed: from then on Baton never forms it again),
    /// `VersionApplied` (the spec's version runs; False says why not or that an upgrade is in
    /// flight), `Progressing` (an upgrade or a revert is running), and kstatus's pair for
    /// GitOps tools: `Reconciling` (forming or upgrading) and `Stalled` (stopped until a person
    /// acts: a failed upgrade, a refused spec, a cluster formed otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Conditions,
}

/// One shard of a Cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShardStatus {
    /// The DatabaseInstance that runs the shard's members (`<cluster>-shard-<n>`).
    pub instance: String,
    /// The pod serving the shard's slots (its master).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// The pods replicating the master.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
    /// The slot ranges the master serves, for example `0-5460`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<String>,
    /// The version each member's server reports, by pod name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub versions: std::collections::BTreeMap<String, String>,
}

/// A Cluster's upgrade: in waves of `shardsAtOnce` shards in shard order, and in each shard its
/// replicas first (one member at a time), then a graceful `CLUSTER FAILOVER` to an upgraded
/// replica, then the old master.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterUpgrade {
    /// The version the cluster ran when the upgrade started.
    pub source_version: String,
    /// The version being rolled out.
    pub target_version: String,
    /// The first shard of the wave being upgraded (0-based): the wave is shards `shard` to
    /// `shard + shardsAtOnce - 1`; the others are untouched meanwhile.
    pub shard: i32,
    /// How many shards a wave takes (the Cluster's `maxUnavailableShards` when the upgrade
    /// started; 1 for `InPlace`).
    #[serde(default = "one")]
    pub shards_at_once: i32,
    /// The wave's stage: `RestartReplicas`, `AwaitingCommit`, `Failover` (no shard of the wave
    /// handed over yet) or `RestartOldMaster` (handing over the wave's shards and restarting
    /// their old masters).
    pub stage: ShardStage,
    /// The members being restarted on the target version: at most one per shard, each
    /// recorded before its pod is patched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restarting: Vec<MemberRestart>,
    /// The failover in flight: recorded before `CLUSTER FAILOVER` is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverIntent>,
    /// When the current step started; it fails after `upgradePolicy.stepTimeoutSeconds` (a
    /// failover after `fenceTimeoutSeconds`).
    pub step_started: Time,
    /// When the upgrade started.
    pub started: Time,
    /// Why the upgrade stopped; set, Baton takes no further step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// The version was set back to the source after a failure: the stopped shard's replicas
    /// are being returned to it (`targetVersion` is then the source).
    #[serde(default)]
    pub reverting: bool,
    /// The UpgradeRequest that owns this upgrade (`namespace/name`); empty when it follows
    /// `spec.datastore.version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The UpgradeRequest's job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Stop in `AwaitingCommit` once every shard's replicas run the target, before any
    /// failover (the request's action `Upgrade`; `Commit` clears it).
    #[serde(default)]
    pub hold: bool,
    /// Return every replica whose master still runs the source to it (action `Rollback`).
    #[serde(default)]
    pub rollback: bool,
    /// Stop at the next step boundary: the shard in progress goes back to the source if its
    /// master was not handed over yet, else it is finished (action `Cancel`).
    #[serde(default)]
    pub cancel: bool,
    /// Why a request's upgrade is being returned to the source on its own (a step failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
    /// Forward steps start only inside `spec.maintenanceWindow` (schedule `MaintenanceWindow`).
    #[serde(default)]
    pub window_only: bool,
    /// Type `InPlace` (shards of one member): each shard's only member is restarted on the new
    /// version, its slots unavailable meanwhile; there is no replica to hand them to.
    #[serde(default)]
    pub in_place: bool,
}

impl ClusterUpgrade {
    /// A new upgrade of every shard from `source` to `target`, starting at shard 0.
    pub fn new(source: &str, target: &str, now: Time) -> Self {
        ClusterUpgrade {
            source_version: source.into(),
            target_version: target.into(),
            shard: 0,
            shards_at_once: 1,
            stage: ShardStage::RestartReplicas,
            restarting: vec![],
            failover: None,
            step_started: now.clone(),
            started: now,
            failed: None,
            reverting: false,
            request: None,
            job: None,
            hold: false,
            rollback: false,
            cancel: false,
            aborted: None,
            window_only: false,
            in_place: false,
        }
    }

    /// The shards of the wave in progress, among `count`.
    pub fn wave(&self, count: usize) -> std::ops::Range<usize> {
        let first = self.shard.max(0) as usize;
        first..(first + self.shards_at_once.max(1) as usize).min(count)
    }

    /// The wave in words: `shard 1`, or `shards 0-1` for a wave of two.
    pub fn shards_text(&self) -> String {
        match self.shards_at_once {
            n if n > 1 => format!("shards {}-{}", self.shard, self.shard + n - 1),
            _ => format!("shard {}", self.shard),
        }
    }

    /// The step in words, for an UpgradeRequest's job: `shard 1 RestartReplicas c-shard-1-1`
    /// (`shards 0-1 …` for a wave of two).
    pub fn describe(&self) -> String {
        let mut out = match self.stage {
            ShardStage::AwaitingCommit => "AwaitingCommit".to_string(),
            stage => format!("{} {stage:?}", self.shards_text()),
        };
        if !self.restarting.is_empty() {
            let members: Vec<&str> = self.restarting.iter().map(|r| r.member.as_str()).collect();
            out = format!("{out} {}", members.join(","));
        }
        if self.reverting {
            out = format!("{out} (reverting)");
        }
        out
    }
}

/// A member being restarted on the target version, and since when (its step fails after
/// `upgradePolicy.stepTimeoutSeconds`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberRestart {
    /// The member's pod.
    pub member: String,
    /// When its restart was recorded.
    pub started: Time,
}

/// Where a shard's upgrade is.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardStage {
    RestartReplicas,
    /// Every shard's replicas run the target and the request holds before any failover.
    AwaitingCommit,
    Failover,
    RestartOldMaster,
}

/// What a failover is to achieve, read before it is sent: it is confirmed only when every
/// node sees `candidate` serving exactly `slots` with a config epoch above `configEpoch`, and
/// the old master replicating it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverIntent {
    /// The old master's pod.
    pub master: String,
    /// The old master's node id.
    pub master_id: String,
    /// The old master's config epoch before the failover.
    pub config_epoch: i64,
    /// The slots it served (`a-b` ranges).
    pub slots: Vec<String>,
    /// The upgraded replica taking over: its pod.
    pub candidate: String,
    /// Its node id.
    pub candidate_id: String,
    /// `CLUSTER FAILOVER` was sent (false: recorded, not yet sent, so a restarted operator
    /// sends it).
    #[serde(default)]
    pub sent: bool,
}
