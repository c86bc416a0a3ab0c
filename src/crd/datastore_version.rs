//! DatastoreVersion: one entry of the version catalog (cluster-scoped), what
//! `openstack datastore version list` shows.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{Conditions, Datastore, VERSION_PATTERN};

/// One version of one datastore that Baton can run: its image, whether it may be a target, and
/// the explicit upgrade edges that lead to it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "baton.dev",
    version = "v1alpha1",
    kind = "DatastoreVersion",
    plural = "datastoreversions",
    shortname = "dsv",
    category = "baton",
    status = "DatastoreVersionStatus",
    doc = "A DatastoreVersion is one entry of Baton's version catalog: a datastore version, the image that runs it, whether it may be an upgrade target, and the upgrade edges that lead to it.",
    printcolumn(name = "Datastore", type_ = "string", json_path = ".spec.datastore"),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.version"),
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.image"),
    printcolumn(name = "Active", type_ = "boolean", json_path = ".spec.active"),
    printcolumn(name = "Default", type_ = "boolean", json_path = ".spec.default"),
    printcolumn(
        name = "Valid",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Valid\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!self.default || self.active").message("an inactive version cannot be the default: set active to true or default to false").field_path(".default"))]
#[serde(rename_all = "camelCase")]
pub struct DatastoreVersionSpec {
    /// The datastore this version belongs to: `redis`, `postgresql`, `mysql` or `mariadb`.
    pub datastore: Datastore,

    /// The version, `MAJOR[.MINOR[.PATCH]][-BUILD]`, for example `7.0.15`. Versions are compared
    /// numerically part by part; `-BUILD` names another build of the same version (a Hotfix).
    #[schemars(regex(pattern = VERSION_PATTERN))]
    pub version: String,

    /// The container image that runs this version, for example `redis:7.0.15`.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new("!self.contains(' ')").message("image must not contain spaces"))]
    pub image: String,

    /// Whether this version may be the target of an upgrade or of a new instance. Inactive
    /// versions stay in the catalog so running databases keep a valid source. Default true.
    #[serde(default = "default_true")]
    pub active: bool,

    /// Whether this is the preferred version of its datastore: the target of an UpgradeRequest
    /// that names no version. At most one version per datastore should be the default; the
    /// operator reports conflicting defaults in status. Default false.
    #[serde(default)]
    pub default: bool,

    /// Explicit upgrade edges that lead to this version. A minor upgrade (same datastore, same
    /// major, newer version) needs no edge; a major upgrade or a change of datastore is allowed
    /// only from a source an edge names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub upgrade_from: Vec<UpgradeEdge>,
}

fn default_true() -> bool {
    true
}

/// A source from which upgrading to this version is allowed: a datastore and an inclusive
/// version range.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeEdge {
    /// The datastore of the source version (for a change of datastore, the old one).
    pub datastore: Datastore,

    /// The lowest source version allowed, inclusive. Omit for no lower bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = VERSION_PATTERN))]
    pub min_version: Option<String>,

    /// The highest source version allowed, inclusive; a shorter version covers all its
    /// releases (`6` covers `6.2.14`). Omit for no upper bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = VERSION_PATTERN))]
    pub max_version: Option<String>,
}

/// What the operator found when it checked this catalog entry against the rest of the catalog.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatastoreVersionStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Valid`: True when the entry can be used; False with a reason (`DuplicateVersion`,
    /// `ConflictingDefault`, `InvalidEdge`) and a message that says what to fix. `Ready` says
    /// the same for GitOps tools, with kstatus's `Reconciling` (never True) and `Stalled`
    /// (True while the entry is invalid).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Conditions,
}
