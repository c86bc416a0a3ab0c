//! DatabaseInstance: one database, single or primary + standbys, and what Baton observed of it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Conditions, DatastoreRef, MaintenanceWindow, MemberResources, UpgradePolicy};
use super::upgrade_request::UpgradeType;

/// The desired state of one database: which datastore version, how many members, their storage
/// and resources, and how upgrades roll through them.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "baton.dev",
    version = "v1alpha1",
    kind = "DatabaseInstance",
    plural = "databaseinstances",
    shortname = "dbi",
    shortname = "dbinstance",
    category = "baton",
    namespaced,
    status = "DatabaseInstanceStatus",
    doc = "A DatabaseInstance is one database: a single member or a primary with standbys. Baton runs its members, keeps replication converged, and upgrades it one member at a time when spec.datastore.version changes or an UpgradeRequest targets it.",
    printcolumn(
        name = "Datastore",
        type_ = "string",
        json_path = ".spec.datastore.type"
    ),
    printcolumn(name = "Version", type_ = "string", json_path = ".status.version"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Primary", type_ = "string", json_path = ".status.primary"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.durability != 'Replicated' || self.replicas >= 2").message("durability Replicated waits for a standby to have each write: set replicas to 2 or more (3 keep writes flowing while one member restarts)").field_path(".durability"))]
#[x_kube(validation = Rule::new("self.durability != 'Replicated' || self.datastore.type in ['postgresql', 'mariadb']").message("durability Replicated is built for PostgreSQL and MariaDB: Redis replication has no synchronous acknowledgement (have the client call WAIT 1 <ms> after a write it must not lose), and MySQL members are not built; use durability Local").field_path(".durability"))]
#[serde(rename_all = "camelCase")]
pub struct DatabaseInstanceSpec {
    /// The datastore type and the desired version. Changing `version` to a newer catalog
    /// version starts a rolling upgrade.
    pub datastore: DatastoreRef,

    /// The number of members: 1 for a single database, N for a primary and N-1 standbys.
    /// Default 1.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 9))]
    pub replicas: i32,

    /// Each member's volume and container resources (`storage`, `resources`).
    #[serde(flatten)]
    pub members: MemberResources,

    /// The weekly window (UTC) in which scheduled upgrades may run steps. Omit for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<MaintenanceWindow>,

    /// How upgrades roll through the members: primary update method, lag bound, step timeout
    /// and second switch.
    #[serde(default)]
    pub upgrade_policy: UpgradePolicy,

    /// When true, Baton touches nothing of this instance (no restart, no switchover, no
    /// repair) until it is set back to false; status still reports what is observed.
    #[serde(default)]
    pub paused: bool,

    /// The Secret holding the instance's credentials. Omit it and Baton generates
    /// `<instance>-credentials` (once; Baton never rewrites it). A Secret named here must hold
    /// every key the datastore needs — `username` and `password` (the application account),
    /// `admin-password` (the account Baton itself connects as, `baton`) and
    /// `replication-password` (the account standbys replicate with) — or nothing is started
    /// and the `CredentialsReady` condition names the missing key. Edit a password in the
    /// Secret to rotate it: Baton sets it on every member online and records what the members
    /// run with in `<instance>-credentials-applied`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsRef>,

    /// Serve TLS: a Secret in the instance's namespace with `tls.crt`, `tls.key` and `ca.crt`
    /// (what cert-manager writes). Members serve and replicate over TLS only (plain-text
    /// clients are refused) and Baton connects verifying the chain against `ca.crt`. Set it
    /// when the instance is created (members are created with it). A renewed certificate is
    /// loaded by the members online. A server build without TLS (Redis 6.2.14 here) or a
    /// Secret missing a key starts nothing and says so in the `TLSReady` condition. MariaDB
    /// clients that cannot skip the name check (Baton's) verify a member against the first DNS
    /// name of `tls.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsRef>,

    /// Automatic failover: what Baton does when the primary stays down outside an upgrade.
    /// Off by default (Baton then restarts the primary in place and promotes nothing).
    #[serde(default)]
    pub failover: FailoverPolicy,

    /// When a write is acknowledged. `Local` (default): once the primary has it on disk (each
    /// commit flushed; Redis's append-only file written and flushed before each reply), so a
    /// primary that is killed and restarts keeps it; replication is asynchronous, so a failover
    /// may lose the last writes (counted in `status.lastFailover`). `Replicated`: only once a
    /// standby has it too (PostgreSQL `synchronous_standby_names = 'ANY 1 (*)'`, every commit
    /// waiting for one standby to flush it; MariaDB semi-synchronous replication, `AFTER_SYNC`,
    /// never falling back to asynchronous), so a failover, which promotes the standby holding the most, loses nothing
    /// acknowledged. Each commit costs a round trip to a standby, and writes wait while no
    /// standby follows: with `replicas: 2`, while the standby restarts (an upgrade) and after a
    /// failover until the old primary rejoins; 3 members keep a standby to answer. Needs 2
    /// members or more; PostgreSQL and MariaDB (Redis replication has no synchronous
    /// acknowledgement: a client that must not lose a write calls `WAIT 1 <ms>` after it).
    /// Set it when the instance is created (members start with it).
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("durability is set when the instance is created (its members start with it): create a new instance to change it"))]
    pub durability: Durability,
}

/// When a write is acknowledged: on the primary alone, or on a standby too.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledged once the primary has it (asynchronous replication).
    #[default]
    Local,
    /// Acknowledged once a standby has it too (synchronous replication to any one standby).
    Replicated,
}

/// When Baton replaces a primary that is down.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverPolicy {
    /// Promote the most advanced standby once the primary has been down for `afterSeconds`.
    /// Off by default: replication is asynchronous, so a standby may lack the last writes the
    /// primary acknowledged before it died; enabling this accepts that loss (reported in
    /// `status.lastFailover`) in exchange for a writer without a person. Baton first deletes
    /// the old primary's pod (its server is stopped and it boots fenced when it comes back),
    /// then promotes; the old member rejoins as a standby once it can start.
    #[serde(default)]
    pub enabled: bool,
    /// How long the primary must be down before Baton fails over, in seconds (5 to 3600,
    /// default 30): down means its node reports its container not running or its pod not
    /// Ready, and its server does not answer Baton, counted from when both first hold. A
    /// primary whose node reports it Ready but that does not answer Baton (it may be cut off
    /// from Baton rather than down) is never failed over, and that time does not count.
    #[serde(default = "default_failover_after")]
    #[schemars(range(min = 5, max = 3600))]
    pub after_seconds: i32,
}

impl Default for FailoverPolicy {
    fn default() -> Self {
        FailoverPolicy {
            enabled: false,
            after_seconds: default_failover_after(),
        }
    }
}

fn default_failover_after() -> i32 {
    30
}

/// A failover in flight: the old primary is deposed first, then a standby is promoted.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverState {
    /// The primary that went down.
    pub from: String,
    /// The UID of `from`'s pod when the failover began: that pod is deleted (its server
    /// stopped by its node) before anything is promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_pod_uid: Option<String>,
    /// Since when `from` has not led (the `PrimaryAvailable` condition's transition).
    pub down_since: Time,
    /// When Baton decided to fail over.
    pub started_at: MicroTime,
    /// The standby being promoted, chosen once `from`'s pod is gone: the one holding the most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// `to`'s position when it was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_position: Option<String>,
    /// `from`'s position as status last recorded it before it went down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_position: Option<String>,
}

/// The last automatic failover.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LastFailover {
    /// The primary that went down.
    pub from: String,
    /// The standby promoted in its place.
    pub to: String,
    /// Since when `from` had not led.
    pub down_since: Time,
    /// When `to` was confirmed the primary.
    pub promoted_at: MicroTime,
    /// `to`'s position when it was chosen, before its promotion: everything it got from `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
    /// What `from` held beyond `position` when it came back ("0 bytes", "361 transactions"):
    /// writes it committed, most of them acknowledged, that never reached `to`. Measured
    /// before it is repointed; a member that holds any is quarantined with them (fenced, never
    /// repointed) for a person to read or discard, and one that holds none rejoins as a
    /// standby. "unknown" when the two positions cannot be compared (a Redis member restarted
    /// without its replication history); such a member is quarantined too. Absent when a
    /// person discarded the member (deleted its claim) before it came back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreplicated: Option<String>,
    /// `from`'s position as status last recorded it. Replication is asynchronous: what `from`
    /// acknowledged after its last write reached a standby is not on `to`, and Baton cannot
    /// count it (status records positions at most every few minutes on a settled instance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_position: Option<String>,
}

/// Where an instance's TLS certificate is.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TlsRef {
    /// The name of a Secret in the instance's namespace (type `kubernetes.io/tls`, with
    /// `ca.crt`).
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// Where an instance's credentials are.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsRef {
    /// The name of a Secret in the instance's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

impl DatabaseInstance {
    /// The Cluster this instance is a shard of: the one that controls it (its controller
    /// owner reference). A shard's members run in cluster mode and their roles are the
    /// Cluster's to change, never the instance's.
    pub fn cluster_owner(&self) -> Option<&str> {
        self.metadata
            .owner_references
            .as_ref()?
            .iter()
            .find(|o| {
                o.controller == Some(true)
                    && o.kind == "Cluster"
                    && o.api_version.starts_with("baton.dev/")
            })
            .map(|o| o.name.as_str())
    }
}

fn default_replicas() -> i32 {
    1
}

/// The lifecycle phase of an instance (Trove's BUILD / ACTIVE / UPGRADE / ERROR).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InstancePhase {
    #[default]
    Building,
    Active,
    Upgrading,
    Error,
    Paused,
}

/// The role a member plays in replication.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberRole {
    Primary,
    Standby,
}

/// What Baton observed of one member.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// The member's pod name.
    pub pod: String,
    /// `Primary` or `Standby`, as the database server itself reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<MemberRole>,
    /// The version the database server itself reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Whether the member's pod is Ready.
    #[serde(default)]
    pub ready: bool,
    /// The member's replication position as its datastore prints it (Redis
    /// `replicationId:offset`, PostgreSQL an LSN, MariaDB a GTID position): for a primary what
    /// it has written, for a standby what it has applied. While nothing else changes it is
    /// refreshed at most every 10 s during an upgrade and every 5 minutes otherwise (a settled
    /// instance costs the API server no writes between). A member that does not answer keeps
    /// the last position recorded for it (what a failover compares the new primary with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
    /// For a standby, what it has received but not necessarily applied, where the datastore
    /// tells the two apart (PostgreSQL, MariaDB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_position: Option<String>,
    /// For a standby, how far behind the primary it is in bytes of the replication stream
    /// (Redis, PostgreSQL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<i64>,
    /// For a standby, how many transactions behind the primary it is (MariaDB, MySQL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_transactions: Option<i64>,
    /// True while the member refuses client writes by Baton's fence. Every member starts
    /// fenced; Baton lifts the fence only on the one primary it has confirmed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fenced: bool,
    /// Why Baton could not probe the member's server, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The kind of an upgrade step.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StepKind {
    /// Checking the members before anything is touched.
    #[default]
    PreCheck,
    /// Restarting one standby (`member`) on the version being rolled out.
    UpgradeStandby,
    /// Stopped before the primary is touched until an UpgradeRequest's action moves to Commit.
    AwaitingCommit,
    /// Handing the primary role to an upgraded standby.
    Switchover,
    /// Restarting the primary (`member`) in place (a single member, or `Restart`).
    RestartPrimary,
    /// Restarting every member at once (an `InPlace` upgrade).
    RestartAll,
    /// Handing the primary role back to the original primary (`secondSwitch`).
    SwitchBack,
    /// After an offline upgrade: what the conversion asks to follow (statistics, extension
    /// updates), then the kept old data directory removed.
    Finalize,
}

/// One step of an upgrade: its kind and, where the step is about one member, that member.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeStep {
    /// `PreCheck`, `UpgradeStandby`, `AwaitingCommit`, `Switchover`, `RestartPrimary`,
    /// `RestartAll`, `SwitchBack` or `Finalize`.
    pub kind: StepKind,
    /// The member the step restarts (`UpgradeStandby`, `RestartPrimary`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
}

impl UpgradeStep {
    pub fn of(kind: StepKind) -> UpgradeStep {
        UpgradeStep { kind, member: None }
    }

    pub fn on(kind: StepKind, member: &str) -> UpgradeStep {
        UpgradeStep {
            kind,
            member: Some(member.into()),
        }
    }
}

impl std::fmt::Display for UpgradeStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.member {
            Some(m) => write!(f, "{:?} {m}", self.kind),
            None => write!(f, "{:?}", self.kind),
        }
    }
}

/// A stage of a switchover.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchoverStage {
    /// Writes are being fenced on the primary.
    Fencing,
    /// The candidate, chosen after the fence, is catching up to the fence position.
    CatchingUp,
    /// The candidate is being promoted (still fenced); it is the recorded primary from here.
    Promoting,
    /// The other members are being pointed at the new primary, and the read-write label moves.
    Repointing,
    /// The new primary, confirmed as the only primary, gets its fence lifted.
    Unfencing,
}

/// A switchover in flight.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SwitchoverState {
    /// `Fencing`, `CatchingUp`, `Promoting`, `Repointing` or `Unfencing`.
    pub stage: SwitchoverStage,
    /// The primary handing over its role.
    pub from: String,
    /// The standby chosen, after the fence, to become primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
    /// The primary's replication position once fenced, as its datastore prints it; the
    /// candidate is promoted only when it has reached it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_position: Option<String>,
    /// When writes were fenced (to the microsecond: switchover windows are measured from it);
    /// `upgradePolicy.fenceTimeoutSeconds` counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_at: Option<MicroTime>,
    /// The switchover is being undone: `from` becomes primary again (the candidate never took
    /// a write), and the step then fails with `failure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undoing: Option<String>,
    /// When Baton first saw the new primary lead unfenced, if other members still had to be
    /// repointed then: the end of the switchover's write-unavailable window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writable_at: Option<MicroTime>,
}

/// The upgrade in flight on an instance: where it started, where it goes, and the step it is at.
/// Written before each side effect, so a restarted operator resumes at the right step.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeInFlight {
    /// The version the instance ran when the upgrade started.
    pub source_version: String,
    /// The version being rolled out.
    pub target_version: String,
    /// The UpgradeRequest driving this upgrade (`namespace/name`), or empty when the instance's
    /// own spec version started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The job id of the UpgradeRequest's job for this instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The current step.
    #[serde(default)]
    pub step: UpgradeStep,
    /// When the current step started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started: Option<Time>,
    /// The primary when the upgrade started (where `secondSwitch` returns the role).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_primary: Option<String>,
    /// The switchover in flight, during a `Switchover` or `SwitchBack` step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover: Option<SwitchoverState>,
    /// Why the upgrade stopped, when it failed (phase Error). Setting the spec version back to
    /// `sourceVersion` returns every member to it (for an UpgradeRequest, Baton does so itself
    /// while the primary is still on the source version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Why a rollback is running: the failure that stopped the upgrade (an UpgradeRequest's
    /// upgrade returns to the source version on its own while the primary still runs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
    /// How the members are restarted: `Rolling` (default: one at a time, standbys first),
    /// `InPlace` (all together, an outage), `Hotfix` (rolling, a new build of the same version)
    /// or `Switchover` (no restart: only the switchover).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<UpgradeType>,
    /// Stop before the primary is touched (step `AwaitingCommit`) until an UpgradeRequest's
    /// action moves to Commit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hold: bool,
    /// Return every upgraded member to `sourceVersion` (an UpgradeRequest's Rollback, Cancel, or
    /// a failure while the primary is still on the source version).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollback: bool,
    /// Stop after the current step: return to `sourceVersion` if the primary still runs it,
    /// otherwise finish (the only way left to a healthy instance).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel: bool,
    /// Start each step only inside the instance's maintenance window.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub window_only: bool,
    /// Overrides `spec.upgradePolicy.secondSwitch` for this upgrade (an UpgradeRequest's own
    /// `secondSwitch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second_switch: Option<bool>,
    /// The member a planned switchover (type `Switchover`) must hand the primary role to; none:
    /// the most advanced caught-up standby.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover_to: Option<String>,
    /// An upgrade along several catalog hops (for example 6.2.14 → 7.0.15 → 7.2.4 → 8.2.3):
    /// every version after `originVersion`, in order, the last being where the upgrade ends.
    /// `sourceVersion` → `targetVersion` is the hop in progress; each hop rolls like a whole
    /// upgrade. Empty for a single hop.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path: Vec<String>,
    /// The version before the first hop of a path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_version: Option<String>,
    /// Present while the hop in progress is an offline upgrade (replication cannot cross it,
    /// as a PostgreSQL major): the primary's data is converted while it is stopped, then the
    /// standbys are cloned again from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline: Option<OfflineUpgrade>,
    /// The longest write-unavailable window of this upgrade's switchovers so far, in
    /// milliseconds (see `status.lastSwitchover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover_ms: Option<i64>,
    /// With `primaryUpdateMethod: Auto`: why the primary was restarted in place instead of
    /// handing over (no upgraded standby caught up in time, and `allowOffline` accepted the
    /// outage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted_in_place: Option<String>,
}

/// The last switchover's write-unavailable window, as Baton measured it: from the fence on the
/// old primary to the pass that saw the new one lead, labelled, with its fence lifted.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LastSwitchover {
    /// The primary that handed over its role (was fenced).
    pub from: String,
    /// The member that leads now (`from` again when the switchover was undone).
    pub to: String,
    /// When writes were fenced on `from`.
    pub fenced_at: MicroTime,
    /// When Baton saw `to` lead with its fence lifted: writable, and labelled.
    pub writable_at: MicroTime,
    /// `writableAt` − `fencedAt` in milliseconds: how long no member accepted a write. Never
    /// shorter than that; longer by the pass that sees the fence lifted.
    pub window_ms: i64,
    /// True when the switchover was undone (a candidate that could not take over in time):
    /// `from` leads again with nothing lost.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub undone: bool,
}

/// An offline hop's progress and its write outage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OfflineUpgrade {
    /// The conversion's own pre-check (`pg_upgrade --check` against the live primary) passed:
    /// nothing had been stopped before it did.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub checked: bool,
    /// When the primary was stopped for the conversion: writes are refused from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<MicroTime>,
    /// When writes were let in on the converted primary. From then on the kept old data
    /// directory lacks those writes, so the upgrade only moves forward (Rollback is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writable_at: Option<MicroTime>,
    /// What the conversion asks to follow ran on the new primary and the kept old data was
    /// removed (step `Finalize`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub finalized: bool,
    /// The write outage in milliseconds (`writableAt` − `stoppedAt`), including any time held
    /// in AwaitingCommit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outage_ms: Option<i64>,
}

impl UpgradeInFlight {
    /// An upgrade from `source` to `target` at its first step (the pre-check).
    pub fn new(source: &str, target: &str, primary: &str, started: Time) -> UpgradeInFlight {
        UpgradeInFlight {
            source_version: source.into(),
            target_version: target.into(),
            request: None,
            step: UpgradeStep::default(),
            step_started: Some(started),
            original_primary: Some(primary.into()),
            switchover: None,
            failure: None,
            job: None,
            aborted: None,
            type_: None,
            hold: false,
            rollback: false,
            cancel: false,
            window_only: false,
            second_switch: None,
            switchover_to: None,
            path: vec![],
            origin_version: None,
            offline: None,
            switchover_ms: None,
            restarted_in_place: None,
        }
    }

    /// The version the whole upgrade ends on (the last hop's).
    pub fn final_version(&self) -> &str {
        self.path.last().unwrap_or(&self.target_version)
    }

    /// The version the whole upgrade started from (before its first hop).
    pub fn first_version(&self) -> &str {
        self.origin_version
            .as_deref()
            .unwrap_or(&self.source_version)
    }

    /// The hop after the one in progress, if the path goes on.
    pub fn next_hop(&self) -> Option<&str> {
        let at = self.path.iter().position(|v| *v == self.target_version)?;
        self.path.get(at + 1).map(String::as_str)
    }

    /// The hop in progress and the number of hops, for a path of more than one.
    pub fn hop(&self) -> Option<(usize, usize)> {
        let at = self.path.iter().position(|v| *v == self.target_version)?;
        (self.path.len() > 1).then_some((at + 1, self.path.len()))
    }

    /// The upgrade type (Rolling when unset).
    pub fn kind(&self) -> UpgradeType {
        self.type_.unwrap_or_default()
    }

    /// The step and, during a switchover, its stage, in words (`UpgradeStandby db-1`,
    /// `Switchover: CatchingUp db-2`).
    pub fn describe(&self) -> String {
        let step = self.describe_step();
        match self.hop() {
            Some((i, n)) => format!(
                "hop {i}/{n} {} → {}: {step}",
                self.source_version, self.target_version
            ),
            None => step,
        }
    }

    fn describe_step(&self) -> String {
        match &self.switchover {
            Some(sw) => {
                let who = match sw.stage {
                    SwitchoverStage::Fencing => sw.from.as_str(),
                    _ => sw.candidate.as_deref().unwrap_or(sw.from.as_str()),
                };
                format!("{}: {:?} {who}", self.step, sw.stage)
            }
            None => self.step.to_string(),
        }
    }
}

/// A member Baton will not repoint: it took writes the primary does not have, so a resync
/// would throw them away. It stays fenced until a person decides (see the operations guide).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QuarantinedMember {
    /// The member's pod name.
    pub member: String,
    /// What Baton saw.
    pub reason: String,
    /// When Baton saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// The UID of the member's claim at the time: deleting the claim (a decision to discard
    /// the member's data) releases the quarantine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_uid: Option<String>,
    /// Held by an automatic failover, not yet judged: the deposed primary starts without
    /// following anyone until Baton has compared what it holds with what the promoted standby
    /// got. Released when it holds nothing more; kept (and no longer held) when it does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

/// How an upgrade ended.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpgradeResult {
    /// Every member runs the target version.
    Succeeded,
    /// Every member is back on the source version, as asked (Rollback, or the spec set back).
    RolledBack,
    /// Stopped by a Cancel: back on the source version, or finished when the primary had
    /// already moved to the target.
    Cancelled,
    /// The upgrade failed; the message says whether the members went back to the source.
    Failed,
}

/// The outcome of the last upgrade of an instance or a Cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeOutcome {
    /// The UpgradeRequest that drove it (`namespace/name`); empty for a spec-driven upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The UpgradeRequest's job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The version the upgrade started from.
    pub source_version: String,
    /// The version it upgraded to.
    pub target_version: String,
    /// `Succeeded`, `RolledBack`, `Cancelled` or `Failed`.
    pub result: UpgradeResult,
    /// What happened, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<Time>,
    /// For an offline upgrade: how long writes were refused, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outage_ms: Option<i64>,
    /// The longest write-unavailable window of its switchovers, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover_ms: Option<i64>,
}

/// What Baton observed of the instance, and the upgrade in flight.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseInstanceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Building`, `Active`, `Upgrading`, `Error` or `Paused`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<InstancePhase>,
    /// A human-readable explanation of the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The version every member runs (while upgrading, the source version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The pod name of the current primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// One entry per member, ordered by pod name. While an upgrade step runs, what the members
    /// report (a restarting member going not Ready and back) is refreshed at most every 10 s;
    /// each new step, and the upgrade's end, writes them as they are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// The upgrade in flight, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeInFlight>,
    /// How the last upgrade ended (an UpgradeRequest reads its job's outcome here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_upgrade: Option<UpgradeOutcome>,
    /// The last switchover (of an upgrade or a planned one) and how long writes were refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_switchover: Option<LastSwitchover>,
    /// The automatic failover in flight, if any (`spec.failover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverState>,
    /// The last automatic failover: who replaced whom, and what the new primary may lack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<LastFailover>,
    /// Members that took writes the primary does not have: fenced, never repointed by Baton.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantine: Vec<QuarantinedMember>,
    /// Conditions: `Ready` (every member Ready and caught up), `Progressing` (an upgrade is
    /// running), `Degraded` (an upgrade failed, or a member took writes behind Baton's back),
    /// `VersionApplied` (the spec's version runs; False says why not: not in the catalog, a
    /// refused path or downgrade, a pre-check that waits, an upgrade in flight),
    /// `CredentialsReady` (the credentials Secret is usable; `Changing` while new passwords are
    /// set), `TLSReady` (with spec.tls: members serve TLS; `Reloading` while a renewed
    /// certificate is loaded), `PrimaryAvailable` (outside upgrades: the recorded primary
    /// leads; False says what its node and server report — `PrimaryDown` (the node reports it
    /// not running or not Ready), `PrimaryUnreachable` (its node reports it Ready but it does
    /// not answer Baton: maybe cut off), `PrimaryNotLeading`, `PrimaryMissing` — and its
    /// lastTransitionTime says since when), and kstatus's pair for GitOps tools: `Reconciling` (building,
    /// upgrading, or waiting on something that passes) and `Stalled` (stopped until a person
    /// acts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Conditions,
}
