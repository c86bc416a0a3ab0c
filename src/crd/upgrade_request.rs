//! UpgradeRequest: an upgrade job over one target or a batch (Trove `instance upgrade`,
//! RDS `db-upgrade`, GaussDB batch upgrade), driven through the targets' status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Conditions, Datastore, VERSION_PATTERN};

/// An upgrade job: which databases, to which version, how, and when.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "baton.dev",
    version = "v1alpha1",
    kind = "UpgradeRequest",
    plural = "upgraderequests",
    shortname = "ur",
    shortname = "upgrade",
    category = "baton",
    namespaced,
    status = "UpgradeRequestStatus",
    doc = "An UpgradeRequest is an upgrade job for one database or a batch: the targets, the target version, the upgrade type and action, and a schedule. Baton drives it through the targets' status and never rewrites their spec.",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "Action", type_ = "string", json_path = ".spec.action"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetVersion"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress"),
    printcolumn(name = "Succeeded", type_ = "integer", json_path = ".status.succeeded"),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.failed"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.targetVersion) == has(oldSelf.targetVersion) && (!has(self.targetVersion) || self.targetVersion == oldSelf.targetVersion)").message("targetVersion is immutable: create a new UpgradeRequest for another version").field_path(".targetVersion"))]
#[x_kube(validation = Rule::new("has(self.datastore) == has(oldSelf.datastore) && (!has(self.datastore) || self.datastore == oldSelf.datastore)").message("datastore is immutable: create a new UpgradeRequest").field_path(".datastore"))]
#[x_kube(validation = Rule::new("self.type != 'InPlace' || !(self.action in ['Upgrade', 'Commit', 'Rollback'])").message("type InPlace restarts every member together, so it has no AwaitingCommit stage: use action UpgradeAutoCommit, or type Rolling with action Upgrade").field_path(".action"))]
#[x_kube(validation = Rule::new("self.type != 'Switchover' || self.action in ['UpgradeAutoCommit', 'Cancel']").message("type Switchover hands the primary role over in one step, with nothing to commit or roll back: use action UpgradeAutoCommit (or Cancel)").field_path(".action"))]
#[x_kube(validation = Rule::new("self.type != 'Switchover' || (!has(self.targetVersion) && !has(self.datastore))").message("type Switchover keeps every target's version and datastore: omit targetVersion and datastore").field_path(".type"))]
#[x_kube(validation = Rule::new("self.type != 'Switchover' || !has(self.targets.clusters) || size(self.targets.clusters) == 0").message("type Switchover moves the primary of DatabaseInstances; a Cluster's masters move by its own upgrades: list instances, not clusters").field_path(".targets"))]
#[x_kube(validation = Rule::new("!has(self.switchoverTo) || (self.type == 'Switchover' && has(self.targets.instances) && size(self.targets.instances) == 1 && !has(self.targets.selector))").message("switchoverTo names a member of one instance: use it with type Switchover and exactly one entry in targets.instances").field_path(".switchoverTo"))]
#[serde(rename_all = "camelCase")]
pub struct UpgradeRequestSpec {
    /// The databases to upgrade: instance names, cluster names, or a label selector over the
    /// DatabaseInstances of this namespace. At least one. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("targets are immutable: create a new UpgradeRequest for other targets"))]
    pub targets: UpgradeTargets,

    /// The version to upgrade to, `MAJOR[.MINOR[.PATCH]][-BUILD]`. Omit to use the catalog's
    /// default version of the target datastore. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = VERSION_PATTERN))]
    pub target_version: Option<String>,

    /// The target datastore, for a change of datastore along a catalog edge (for example
    /// mysql → mariadb). Omit to keep each target's datastore. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datastore: Option<Datastore>,

    /// How the members are upgraded: `Rolling` (default; one member at a time, standbys first,
    /// switchover, primary last), `InPlace` (every member restarted together: fast, with an
    /// outage), `Hotfix` (same version, new build; rolling, no primary outage beyond the
    /// switchover), or `Switchover` (no version change: a planned switchover that hands each
    /// target's primary role to a caught-up standby through the same fenced protocol, for
    /// maintenance of the primary's node; omit targetVersion). Immutable.
    #[serde(default, rename = "type")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("type is immutable: create a new UpgradeRequest"))]
    pub type_: UpgradeType,

    /// What to do: `UpgradeAutoCommit` (default: upgrade and finish), `Upgrade` (upgrade the
    /// standbys and stop in AwaitingCommit with the old primary still primary), `Commit` (after
    /// Upgrade: switch over and finish), `Rollback` (after Upgrade: return the standbys to the
    /// source version), or `Cancel` (stop after the current step, leaving every target healthy).
    /// May only move Upgrade → Commit, Upgrade → Rollback, or to Cancel.
    #[serde(default)]
    #[x_kube(
        validation = Rule::new("self == oldSelf || self == 'Cancel' || (oldSelf == 'Upgrade' && (self == 'Commit' || self == 'Rollback'))").message("action may only move from Upgrade to Commit or Rollback, or to Cancel"),
        validation = Rule::new("oldSelf.hasValue() || !(self in ['Commit', 'Rollback'])").message("a new request cannot start with Commit or Rollback: create it with Upgrade, then change the action").optional_old_self(true),
    )]
    pub action: UpgradeAction,

    /// When to run: `Immediate` (default) or `MaintenanceWindow` (each step starts only inside
    /// the target's weekly maintenance window; the request shows Scheduled until it opens).
    #[serde(default)]
    pub schedule: Schedule,

    /// After the old primary is upgraded, switch back so the primary ends on the member where
    /// it started (RDS "second switch"). Default false: each target's own
    /// `spec.upgradePolicy.secondSwitch` applies.
    #[serde(default)]
    pub second_switch: bool,

    /// How many targets are upgraded at the same time (1 to 100). Default 1.
    #[serde(default = "default_max_concurrent")]
    #[schemars(range(min = 1, max = 100))]
    pub max_concurrent: i32,

    /// Stop starting new targets once this many have failed (the failure budget). Omit for no
    /// limit: every target is attempted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_failures: Option<i32>,

    /// With type Switchover and one instance: the member (pod name, for example `db-2`) to hand
    /// the primary role to. It must be a standby that is Ready and caught up when the switchover
    /// starts. Omit to let Baton choose the most advanced caught-up standby after the fence.
    /// Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("switchoverTo is immutable: create a new UpgradeRequest"))]
    pub switchover_to: Option<String>,

    /// Only check, change nothing: per target, the path, the strategy and the outage to expect,
    /// the steps, and the pre-checks as the members' status shows them, in
    /// `status.jobs[].plan`. No target is claimed; the request ends Succeeded (every target
    /// would start), PartiallySucceeded or Failed (some or none would), with the reasons in
    /// `errorMessages`. `kubectl baton upgrade --dry-run` creates one. Immutable.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("dryRun is immutable: create a new UpgradeRequest"))]
    pub dry_run: bool,

    /// Accept offline hops: where replication cannot cross the versions (a PostgreSQL major,
    /// `pg_upgrade`), each target's primary is converted while stopped — a write outage of
    /// seconds to minutes, growing with the data — and its standbys are cloned again. With
    /// action `Upgrade` the converted primary waits read-only in AwaitingCommit; `Rollback`
    /// returns it to the kept old data, losing nothing. Default false: a target whose path
    /// needs an offline hop is refused with the reason and not touched.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_offline: bool,
}

fn default_max_concurrent() -> i32 {
    1
}

/// The databases an UpgradeRequest targets, all in the request's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("(has(self.instances) && size(self.instances) > 0) || (has(self.clusters) && size(self.clusters) > 0) || has(self.selector)").message("at least one target is required: list instances or clusters, or set a selector"))]
#[serde(rename_all = "camelCase")]
pub struct UpgradeTargets {
    /// Names of DatabaseInstances to upgrade.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub instances: Vec<String>,

    /// Names of Clusters to upgrade (every shard, one at a time).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub clusters: Vec<String>,

    /// A label selector over the DatabaseInstances of this namespace (a batch). Resolved once,
    /// when the request starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// How the members of a target are upgraded.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpgradeType {
    #[default]
    Rolling,
    InPlace,
    Hotfix,
    /// No version change: only the switchover, on demand.
    Switchover,
}

/// What an UpgradeRequest is asked to do.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpgradeAction {
    #[default]
    UpgradeAutoCommit,
    Upgrade,
    Commit,
    Rollback,
    Cancel,
}

/// When an UpgradeRequest runs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Schedule {
    #[default]
    Immediate,
    MaintenanceWindow,
}

/// The phase of a request, or of one target's job.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RequestPhase {
    #[default]
    Pending,
    Scheduled,
    Running,
    AwaitingCommit,
    Succeeded,
    PartiallySucceeded,
    Failed,
    RolledBack,
    Cancelled,
}

/// The kind of a target.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
pub enum TargetKind {
    DatabaseInstance,
    Cluster,
}

/// One target's upgrade job.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetJob {
    /// A stable id of this job: `<request uid prefix>-<target>`.
    pub job_id: String,
    /// The target's kind.
    pub kind: TargetKind,
    /// The target's name.
    pub target: String,
    /// The version the target ran when its job started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_version: Option<String>,
    /// The version this job upgrades to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
    /// The job's phase (the request phases, less PartiallySucceeded).
    pub phase: RequestPhase,
    /// The step the job is at, in words: `PreCheck`, `UpgradeStandby db-1`,
    /// `Switchover: Promoting db-2` (the instance's `status.upgrade` has it typed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Why the job is in its phase, in words a person can act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the job started touching the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// The longest write-unavailable window of the target's switchovers in this job, in
    /// milliseconds (the instance's `status.lastSwitchover` has the last one in full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover_ms: Option<i64>,
    /// When the job finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<Time>,
    /// With `spec.dryRun`: what the upgrade of this target would be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<TargetPlan>,
}

/// What a dry run found for one target.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TargetPlan {
    /// The version the target runs now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_version: Option<String>,
    /// The versions the upgrade would pass through, in order, the last being where it ends
    /// (one entry for a direct step).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path: Vec<String>,
    /// The path's kind in words: `Minor`, `Major` (with its hops), `Hotfix` or `Switchover`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// How the members would be moved, in words.
    pub strategy: String,
    /// The outage to expect: `none` (writes pause only for a switchover) or what goes down.
    pub outage: String,
    /// The steps, in the order Baton would take them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<String>,
    /// Each pre-check and what it found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<PlanCheck>,
    /// Every check passed: a request created now would start on this target.
    pub would_start: bool,
}

/// One pre-check of a dry run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PlanCheck {
    /// What was checked: `request` (the request's own rules for this target), `primary`,
    /// `standby <member>`, `shard <instance>`, `quarantine`.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// What was found, in words.
    pub detail: String,
}

/// The progress of the request: its phase, one job per target, and the batch summary.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeRequestStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Pending`, `Scheduled`, `Running`, `AwaitingCommit`, `Succeeded`,
    /// `PartiallySucceeded`, `Failed`, `RolledBack` or `Cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RequestPhase>,
    /// A human-readable explanation of the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// With schedule MaintenanceWindow, when the first step is expected to start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_start: Option<Time>,
    /// Finished jobs of all jobs, for example `2/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// One job per target, in target order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<TargetJob>,
    /// How many targets were upgraded successfully.
    #[serde(default)]
    pub succeeded: i32,
    /// How many targets failed.
    #[serde(default)]
    pub failed: i32,
    /// The names of the targets that failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_targets: Vec<String>,
    /// One message per failed target: `<target>: <why>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error_messages: Vec<String>,
    /// Conditions: `Ready` (the request did what its action asks: finished, or holding in
    /// AwaitingCommit for action Upgrade), `Progressing` (jobs still run), `Degraded` (a target
    /// failed), and kstatus's pair for GitOps tools: `Reconciling` (still working or waiting)
    /// and `Stalled` (Failed or PartiallySucceeded: a person must look at the failed targets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Conditions,
}
