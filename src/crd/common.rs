//! Types shared by several Baton resources: datastore kinds, version references, maintenance
//! windows, upgrade policy, storage, and the status conditions every resource reports.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The pattern every version string must match: `MAJOR[.MINOR[.PATCH]][-BUILD]`, for example
/// `7.0.15`, `15`, `10.11` or `7.0.15-hotfix1`. The part after `-` names a build of the same
/// version (what a Hotfix upgrade changes).
pub const VERSION_PATTERN: &str = r"^[0-9]+(\.[0-9]+){0,2}(-[0-9A-Za-z][0-9A-Za-z.]*)?$";

/// A database engine Baton knows how to run and upgrade.
///
/// One of `redis`, `postgresql`, `mysql`, `mariadb`.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum Datastore {
    Redis,
    Postgresql,
    Mysql,
    Mariadb,
}

impl Datastore {
    /// Every datastore, in a fixed order (for deterministic listings).
    pub const ALL: [Datastore; 4] = [
        Datastore::Redis,
        Datastore::Postgresql,
        Datastore::Mysql,
        Datastore::Mariadb,
    ];

    /// The lowercase name used in manifests and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Datastore::Redis => "redis",
            Datastore::Postgresql => "postgresql",
            Datastore::Mysql => "mysql",
            Datastore::Mariadb => "mariadb",
        }
    }
}

impl std::fmt::Display for Datastore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which datastore and version a database runs. The pair must name an active DatastoreVersion.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DatastoreRef {
    /// The datastore type: `redis`, `postgresql`, `mysql` or `mariadb`. Cannot change after
    /// creation (a change of datastore is an UpgradeRequest along a catalog edge).
    #[serde(rename = "type")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("datastore type is immutable; use an UpgradeRequest with a catalog edge to change datastore"))]
    pub type_: Datastore,

    /// The desired version, for example `7.0.15`. It must be a version in the DatastoreVersion
    /// catalog. Raising it starts a rolling upgrade (the GitOps way to upgrade); a version older
    /// than the running one is reported as a condition and never acted on.
    #[schemars(regex(pattern = VERSION_PATTERN))]
    pub version: String,
}

/// A day of the week, in English, capitalised: `Monday` … `Sunday`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weekday {
    Monday,
    Tuesday,
    Wednesday,
    Thursday,
    Friday,
    Saturday,
    Sunday,
}

/// A weekly maintenance window, in UTC. Upgrades scheduled with `schedule: MaintenanceWindow`
/// only start a step inside it.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindow {
    /// The day the window opens (UTC): `Monday` … `Sunday`.
    pub day_of_week: Weekday,

    /// The time of day the window opens, `HH:MM` in 24-hour UTC, for example `02:30`.
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub start_time: String,

    /// How long the window stays open, in minutes (30 to 1440). Default 120.
    #[serde(default = "default_window_minutes")]
    #[schemars(range(min = 30, max = 1440))]
    pub duration_minutes: i32,
}

fn default_window_minutes() -> i32 {
    120
}

/// How the primary is upgraded once every standby runs the new version.
///
/// `Switchover` (default): hand the primary role to a caught-up upgraded standby, then upgrade
/// the old primary as a standby (writes pause only for the switchover); when no upgraded
/// standby catches up within `stepTimeoutSeconds` the step fails with nothing fenced.
/// `Restart`: restart the primary in place on the new version (writes are unavailable while it
/// restarts). `Auto`: a switchover as soon as an upgraded standby is caught up; when none is
/// within `stepTimeoutSeconds`, restart the primary in place if `allowOffline` accepts a write
/// outage, else keep waiting — status and an Event say which.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PrimaryUpdateMethod {
    #[default]
    Switchover,
    Restart,
    Auto,
}

/// How Baton rolls a new version through the members of an instance.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UpgradePolicy {
    /// `Switchover` (default) hands the primary role to an upgraded standby before the old
    /// primary is upgraded; `Restart` restarts the primary in place (a write outage); `Auto`
    /// switches over when a standby catches up and otherwise, past `stepTimeoutSeconds`,
    /// restarts in place only if `allowOffline` accepts the outage (else it waits).
    #[serde(default)]
    pub primary_update_method: PrimaryUpdateMethod,

    /// The largest replication lag, in bytes of the primary's replication stream, that still
    /// counts as caught up, for datastores that count lag in bytes (Redis, PostgreSQL). A
    /// standby further behind blocks the upgrade's pre-checks and is never fenced for. Default
    /// 0: a standby must have everything the primary has. A candidate is promoted only once it
    /// has everything the fenced primary wrote, whatever this bound.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub max_lag_bytes: i64,

    /// The largest replication lag, in transactions, that still counts as caught up, for
    /// datastores that count lag in transactions (MariaDB and MySQL GTID replication). Same
    /// rules as `maxLagBytes`. Default 0.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub max_lag_transactions: i64,

    /// How long writes may stay fenced during a switchover, in seconds (5 to 3600), before
    /// Baton undoes the switchover — the old primary is unfenced and stays primary — and the
    /// step fails with the reason. Default 60.
    #[serde(default = "default_fence_timeout")]
    #[schemars(range(min = 5, max = 3600))]
    pub fence_timeout_seconds: i32,

    /// How long one step (one member restarted and caught up, or one switchover) may take
    /// before the upgrade stops in phase Error, in seconds (10 to 86400). Default 600.
    #[serde(default = "default_step_timeout")]
    #[schemars(range(min = 10, max = 86400))]
    pub step_timeout_seconds: i32,

    /// After the old primary is upgraded, switch back to it so the primary ends on the member
    /// where it started (RDS "second switch"). Default false.
    #[serde(default)]
    pub second_switch: bool,

    /// Accept an offline upgrade where replication cannot cross the versions (a PostgreSQL
    /// major: `pg_upgrade`): the primary's data is converted while it is stopped — a write
    /// outage of seconds to minutes, growing with the data — and the standbys are cloned again.
    /// Default false: such a spec version is refused with the reason (`PathNeedsOffline`) and
    /// nothing is changed. An UpgradeRequest accepts it with its own `allowOffline`. With
    /// `primaryUpdateMethod: Auto` it also lets a primary no standby can take over from be
    /// restarted in place.
    #[serde(default)]
    pub allow_offline: bool,
}

fn default_step_timeout() -> i32 {
    600
}

fn default_fence_timeout() -> i32 {
    60
}

impl Default for UpgradePolicy {
    fn default() -> Self {
        UpgradePolicy {
            primary_update_method: PrimaryUpdateMethod::default(),
            max_lag_bytes: 0,
            max_lag_transactions: 0,
            fence_timeout_seconds: default_fence_timeout(),
            step_timeout_seconds: default_step_timeout(),
            second_switch: false,
            allow_offline: false,
        }
    }
}

/// The persistent volume each member gets. Claims are kept across restarts and upgrades.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// The size of each member's volume, as a Kubernetes quantity, for example `1Gi`.
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub size: String,

    /// The StorageClass of the members' claims. Omit to use the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: "1Gi".into(),
            storage_class_name: None,
        }
    }
}

/// What each member of a database gets, shared by DatabaseInstance and Cluster: its volume
/// and its database container's resources.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberResources {
    /// The volume of each member (one PersistentVolumeClaim per member, kept across restarts
    /// and upgrades).
    #[serde(default)]
    pub storage: StorageSpec,

    /// CPU and memory requests and limits of each database container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// The standard condition list, merged by `type` so several writers can share it.
pub type Conditions = Vec<Condition>;
