//! The objects a DatabaseInstance owns, as typed Kubernetes objects built from its spec: one
//! pod and one claim per member, the read-write, read-only and headless Services, the
//! PodDisruptionBudget, and the topology ConfigMap every member reads at start (which member
//! is the primary, at which address, and which members are quarantined). Names are
//! deterministic and everything but pods is server-side applied, so drift is repaired; for
//! pods only the mutable fields (image, labels, annotations) are ever patched.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
    Pod, PodSpec, Secret, SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume,
    VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{DatabaseInstance, Durability};
use crate::engine::{
    Engine, MemberTemplate, TOPOLOGY_PRIMARY_HOST, TOPOLOGY_PRIMARY_POD, TOPOLOGY_QUARANTINED,
};

pub const LABEL_INSTANCE: &str = "baton.dev/instance";
pub const LABEL_ROLE: &str = "baton.dev/role";
/// On every object of a Cluster's shards: the Cluster's name.
pub const LABEL_CLUSTER: &str = "baton.dev/cluster";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "baton";
pub const ANNOTATION_VERSION: &str = "baton.dev/version";
/// On an offline hop's check pod: the attempt it checks.
pub const ANNOTATION_OFFLINE_CHECK: &str = "baton.dev/offline-check";
pub const ROLE_PRIMARY: &str = "primary";
pub const ROLE_STANDBY: &str = "standby";

/// Pod names, in ordinal order: `<instance>-0` …
pub fn member_names(inst: &DatabaseInstance) -> Vec<String> {
    (0..inst.spec.replicas.max(1))
        .map(|i| format!("{}-{i}", inst.name_any()))
        .collect()
}

pub fn claim_name(pod: &str) -> String {
    format!("data-{pod}")
}

pub fn topology_name(inst: &DatabaseInstance) -> String {
    format!("{}-topology", inst.name_any())
}

/// The instance's credentials Secret: the one its spec names, or the one Baton generates.
pub fn credentials_name(inst: &DatabaseInstance) -> String {
    match &inst.spec.credentials {
        Some(c) => c.secret_name.clone(),
        None => format!("{}-credentials", inst.name_any()),
    }
}

/// Baton's copy of the credentials the members run with (their pods read it): the Secret's
/// values once Baton has applied them to every member. A changed Secret is applied online and
/// then copied here, so a member restarted at any point boots with what the others have.
pub fn applied_credentials_name(inst: &DatabaseInstance) -> String {
    applied_credentials_of(&inst.name_any())
}

/// The applied copy's name for the instance named `instance`.
pub fn applied_credentials_of(instance: &str) -> String {
    format!("{instance}-credentials-applied")
}

/// The applied copy holding `values`.
pub fn applied_credentials(inst: &DatabaseInstance, values: &crate::engine::Accounts) -> Secret {
    Secret {
        metadata: meta(inst, applied_credentials_name(inst)),
        data: Some(
            values
                .0
                .iter()
                .map(|(k, v)| (k.clone(), k8s_openapi::ByteString(v.clone().into_bytes())))
                .collect(),
        ),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// A fresh random value for each of `keys` (`username`: [`crate::engine::DEFAULT_APP_USER`]).
pub fn generated_values(keys: &[&str]) -> crate::engine::Accounts {
    use rand::Rng;
    let value = || -> String {
        rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(32)
            .map(char::from)
            .collect()
    };
    let entry = |k: &&str| {
        let v = if *k == crate::engine::USERNAME {
            crate::engine::DEFAULT_APP_USER.to_string()
        } else {
            value()
        };
        (k.to_string(), v)
    };
    crate::engine::Accounts(keys.iter().map(entry).collect())
}

/// The generated credentials Secret holding `values`. Created, never applied again: a change
/// to it is the user's (and Baton applies it to the members).
pub fn credentials(inst: &DatabaseInstance, values: &crate::engine::Accounts) -> Secret {
    Secret {
        metadata: meta(inst, credentials_name(inst)),
        string_data: Some(values.0.clone()),
        ..Default::default()
    }
}

fn labels(inst: &DatabaseInstance) -> BTreeMap<String, String> {
    let cluster = inst.cluster_owner().map(|c| (LABEL_CLUSTER, c.to_string()));
    [
        (
            "app.kubernetes.io/name",
            inst.spec.datastore.type_.as_str().to_string(),
        ),
        ("app.kubernetes.io/instance", inst.name_any()),
        (LABEL_MANAGED_BY, MANAGED_BY.to_string()),
        (LABEL_INSTANCE, inst.name_any()),
    ]
    .into_iter()
    .chain(cluster)
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn meta(inst: &DatabaseInstance, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: inst.namespace(),
        labels: Some(labels(inst)),
        owner_references: inst.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

fn selector(inst: &DatabaseInstance, role: Option<&str>) -> BTreeMap<String, String> {
    let mut s = BTreeMap::from([(LABEL_INSTANCE.to_string(), inst.name_any())]);
    if let Some(r) = role {
        s.insert(LABEL_ROLE.into(), r.into());
    }
    s
}

pub fn claim(inst: &DatabaseInstance, pod: &str) -> PersistentVolumeClaim {
    let storage = &inst.spec.members.storage;
    PersistentVolumeClaim {
        metadata: meta(inst, claim_name(pod)),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(storage.size.clone()),
                )])),
                ..Default::default()
            }),
            storage_class_name: storage.storage_class_name.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A member's pod running `image` (catalog `version`), labelled primary or standby.
pub fn pod(
    inst: &DatabaseInstance,
    engine: &dyn Engine,
    name: &str,
    image: &str,
    version: &str,
    primary: bool,
) -> Pod {
    let topology = topology_name(inst);
    let credentials = applied_credentials_name(inst);
    let tls = inst.spec.tls.as_ref().map(|t| t.secret_name.as_str());
    let mut container = engine.container(&MemberTemplate {
        topology: &topology,
        credentials: &credentials,
        tls,
        cluster: inst.cluster_owner().is_some(),
        replicated: inst.spec.durability == Durability::Replicated,
    });
    container.image = Some(image.into());
    container.resources = inst.spec.members.resources.clone();
    let mut metadata = meta(inst, name.into());
    metadata.labels.get_or_insert_default().insert(
        LABEL_ROLE.into(),
        if primary { ROLE_PRIMARY } else { ROLE_STANDBY }.into(),
    );
    metadata.annotations = Some(BTreeMap::from([(
        ANNOTATION_VERSION.to_string(),
        version.to_string(),
    )]));
    Pod {
        metadata,
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(
                std::iter::once(Volume {
                    name: "data".into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: claim_name(name),
                        read_only: None,
                    }),
                    ..Default::default()
                })
                .chain(tls.map(|secret| Volume {
                    name: crate::engine::TLS_VOLUME.into(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(secret.into()),
                        // Readable by the server's non-root user, which copies the key to a
                        // private file at start.
                        default_mode: Some(0o444),
                        ..Default::default()
                    }),
                    ..Default::default()
                }))
                .collect(),
            ),
            termination_grace_period_seconds: Some(30),
            // A database server never calls the API server: no token in its pod.
            automount_service_account_token: Some(false),
            ..Default::default()
        }),
        status: None,
    }
}

/// The name of the instance's offline check pod (`dry_run`: a dry run's, apart from an
/// upgrade's).
pub fn offline_check_name(inst: &DatabaseInstance, dry_run: bool) -> String {
    let what = if dry_run {
        "dry-run-check"
    } else {
        "offline-check"
    };
    format!("{}-{what}", inst.name_any())
}

/// What the offline check pod checks: the hop and images, and whose attempt it is.
#[derive(Debug, Clone, Copy)]
pub struct OfflineCheckSpec<'a> {
    pub member: &'a str,
    pub node: Option<&'a str>,
    pub key: &'a str,
    pub from_image: &'a str,
    pub to_image: &'a str,
    pub dry_run: bool,
}

/// The one-off pod that checks an offline hop on `member`'s volume, on its node, before
/// anything is stopped. It carries no member label: no Service, PDB or NetworkPolicy selects it.
pub fn offline_check_pod(
    inst: &DatabaseInstance,
    engine: &dyn Engine,
    c: &OfflineCheckSpec,
) -> Option<Pod> {
    let (member, node, key) = (c.member, c.node, c.key);
    let (keep, check) = engine.offline_check(c.from_image, c.to_image, c.dry_run)?;
    let mut metadata = meta(inst, offline_check_name(inst, c.dry_run));
    metadata.labels = Some(BTreeMap::from([(
        LABEL_MANAGED_BY.to_string(),
        MANAGED_BY.to_string(),
    )]));
    metadata.annotations = Some(BTreeMap::from([(
        ANNOTATION_OFFLINE_CHECK.to_string(),
        key.to_string(),
    )]));
    Some(Pod {
        metadata,
        spec: Some(PodSpec {
            init_containers: Some(vec![keep]),
            containers: vec![check],
            restart_policy: Some("Never".into()),
            // Beside the member: a ReadWriteOnce volume is shared by pods on one node only.
            node_name: node.map(str::to_string),
            volumes: Some(vec![Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim_name(member),
                    read_only: None,
                }),
                ..Default::default()
            }]),
            automount_service_account_token: Some(false),
            ..Default::default()
        }),
        status: None,
    })
}

/// The strategic-merge patch that moves a member to another version, in place.
pub fn version_patch(container: &str, image: &str, version: &str) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"annotations": {ANNOTATION_VERSION: version}},
        "spec": {"containers": [{"name": container, "image": image}]},
    })
}

pub fn role_patch(primary: bool) -> serde_json::Value {
    serde_json::json!({"metadata": {"labels": {LABEL_ROLE: role(primary)}}})
}

/// The role label's value for a primary or a standby.
pub fn role(primary: bool) -> &'static str {
    if primary { ROLE_PRIMARY } else { ROLE_STANDBY }
}

/// `<name>` (read-write: the primary), `<name>-ro` (standbys), `<name>-headless` (every member).
pub fn services(inst: &DatabaseInstance, engine: &dyn Engine) -> [Service; 3] {
    let name = inst.name_any();
    let ports = vec![ServicePort {
        name: Some(inst.spec.datastore.type_.as_str().into()),
        port: engine.port() as i32,
        target_port: Some(IntOrString::Int(engine.port() as i32)),
        ..Default::default()
    }];
    let make = |svc: String, role: Option<&str>, headless: bool| Service {
        metadata: meta(inst, svc),
        spec: Some(ServiceSpec {
            selector: Some(selector(inst, role)),
            ports: Some(ports.clone()),
            cluster_ip: headless.then(|| "None".to_string()),
            publish_not_ready_addresses: headless.then_some(true),
            ..Default::default()
        }),
        status: None,
    };
    [
        make(name.clone(), Some(ROLE_PRIMARY), false),
        make(format!("{name}-ro"), Some(ROLE_STANDBY), false),
        make(format!("{name}-headless"), None, true),
    ]
}

/// At most one member voluntarily down at a time (never "primary only", which blocks drains).
pub fn pdb(inst: &DatabaseInstance) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(inst, inst.name_any()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector(inst, None)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// The label a client pod carries (value: the instance's name) to be let through the
/// instance's NetworkPolicy.
pub const LABEL_CLIENT: &str = "baton.dev/client";

/// Least access around the members: only the instance's own members (replication), pods in
/// its namespace labelled `baton.dev/client: <instance>`, and the operator's pods (label
/// `app.kubernetes.io/name: baton` in `operator_namespace`) reach the database port.
/// Enforcement is the cluster network plugin's.
pub fn network_policy(
    inst: &DatabaseInstance,
    engine: &dyn Engine,
    operator_namespace: &str,
) -> NetworkPolicy {
    let pods = |labels: BTreeMap<String, String>| LabelSelector {
        match_labels: Some(labels),
        ..Default::default()
    };
    NetworkPolicy {
        metadata: meta(inst, inst.name_any()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pods(selector(inst, None))),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(engine.port() as i32)),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                from: Some(vec![
                    NetworkPolicyPeer {
                        pod_selector: Some(pods(selector(inst, None))),
                        ..Default::default()
                    },
                    NetworkPolicyPeer {
                        pod_selector: Some(pods(BTreeMap::from([(
                            LABEL_CLIENT.to_string(),
                            inst.name_any(),
                        )]))),
                        ..Default::default()
                    },
                    NetworkPolicyPeer {
                        namespace_selector: Some(pods(BTreeMap::from([(
                            "kubernetes.io/metadata.name".to_string(),
                            operator_namespace.to_string(),
                        )]))),
                        pod_selector: Some(pods(BTreeMap::from([(
                            "app.kubernetes.io/name".to_string(),
                            "baton".to_string(),
                        )]))),
                        ..Default::default()
                    },
                ]),
            }]),
            ..Default::default()
        }),
    }
}

/// What the topology ConfigMap says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    pub primary: String,
    /// The primary's address, once its pod has one.
    pub host: Option<String>,
    pub quarantined: Vec<String>,
}

impl Topology {
    pub fn read(cm: &ConfigMap) -> Topology {
        let data = cm.data.clone().unwrap_or_default();
        Topology {
            primary: data.get(TOPOLOGY_PRIMARY_POD).cloned().unwrap_or_default(),
            host: data.get(TOPOLOGY_PRIMARY_HOST).cloned(),
            quarantined: data
                .get(TOPOLOGY_QUARANTINED)
                .map(|q| q.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
        }
    }
}

pub fn topology(inst: &DatabaseInstance, t: &Topology) -> ConfigMap {
    let mut data = BTreeMap::from([(TOPOLOGY_PRIMARY_POD.to_string(), t.primary.clone())]);
    if let Some(h) = &t.host {
        data.insert(TOPOLOGY_PRIMARY_HOST.into(), h.clone());
    }
    if !t.quarantined.is_empty() {
        data.insert(TOPOLOGY_QUARANTINED.into(), t.quarantined.join(" "));
    }
    ConfigMap {
        metadata: meta(inst, topology_name(inst)),
        data: Some(data),
        ..Default::default()
    }
}

/// The owned objects as they are, for the drift check.
#[derive(Debug, Clone, Default)]
pub struct Owned {
    pub claims: Vec<PersistentVolumeClaim>,
    pub services: Vec<Service>,
    pub pdb: Option<PodDisruptionBudget>,
    pub topology: Option<ConfigMap>,
    /// Whether the credentials Secret exists.
    pub credentials: bool,
    /// Whether the applied copy of the credentials exists.
    pub applied_credentials: bool,
    /// Whether the instance's NetworkPolicy exists.
    pub network_policy: bool,
}

/// Which owned objects are missing or differ from what Baton declares, in the fields Baton sets
/// (others — defaults, fields other managers own — are not drift). Only those are applied, so
/// building an instance or mending one costs the writes it needs and no more.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drift {
    pub claims: bool,
    /// Each of [`services`], in its order.
    pub services: [bool; 3],
    pub pdb: bool,
    pub topology: bool,
    pub credentials: bool,
    pub network_policy: bool,
}

impl Drift {
    /// Everything, when the owned objects were not read (an upgrade in flight reads only the
    /// topology): a missing pod is then rebuilt with all it needs.
    pub const ALL: Drift = Drift {
        claims: true,
        services: [true; 3],
        pdb: true,
        topology: true,
        credentials: true,
        network_policy: true,
    };

    pub fn any(&self) -> bool {
        *self != Drift::default()
    }
}

pub fn drift(inst: &DatabaseInstance, engine: &dyn Engine, owned: &Owned) -> Drift {
    let claims_missing = member_names(inst).iter().any(|m| {
        !owned
            .claims
            .iter()
            .any(|c| c.name_any() == claim_name(m) && c.metadata.deletion_timestamp.is_none())
    });
    let service_drift = services(inst, engine).map(|want| {
        let Some(have) = owned
            .services
            .iter()
            .find(|s| s.name_any() == want.name_any())
        else {
            return true;
        };
        let (w, h) = (
            want.spec.clone().unwrap_or_default(),
            have.spec.clone().unwrap_or_default(),
        );
        let ports =
            |p: Option<Vec<ServicePort>>| -> Vec<(Option<String>, i32, Option<IntOrString>)> {
                p.unwrap_or_default()
                    .into_iter()
                    .map(|p| (p.name, p.port, p.target_port))
                    .collect()
            };
        w.selector != h.selector
            || ports(w.ports) != ports(h.ports)
            || (w.cluster_ip.is_some() && w.cluster_ip != h.cluster_ip)
    });
    let pdb_drift = owned.pdb.as_ref().is_none_or(|have| {
        let want = pdb(inst).spec;
        let have = have.spec.clone();
        want.as_ref().map(|s| (&s.max_unavailable, &s.selector))
            != have.as_ref().map(|s| (&s.max_unavailable, &s.selector))
    });
    // Only a generated Secret is Baton's to create.
    let credentials_missing =
        (inst.spec.credentials.is_none() && !owned.credentials) || !owned.applied_credentials;
    Drift {
        claims: claims_missing,
        services: service_drift,
        pdb: pdb_drift,
        topology: owned.topology.is_none(),
        credentials: credentials_missing,
        network_policy: !owned.network_policy,
    }
}

/// The member that the primary label and the topology ConfigMap both name, with the right
/// address and quarantine list — or None while they disagree or lag.
pub fn published(
    pods: &BTreeMap<String, Pod>,
    topology: Option<&ConfigMap>,
    host_of: impl Fn(&str) -> Option<String>,
    quarantined: &[String],
) -> Option<String> {
    let t = Topology::read(topology?);
    let labelled: Vec<&String> = pods
        .iter()
        .filter(|(_, p)| p.labels().get(LABEL_ROLE).map(String::as_str) == Some(ROLE_PRIMARY))
        .map(|(n, _)| n)
        .collect();
    let standbys_labelled = pods.iter().all(|(n, p)| {
        *n == t.primary || p.labels().get(LABEL_ROLE).map(String::as_str) == Some(ROLE_STANDBY)
    });
    let host = host_of(&t.primary);
    (labelled == [&t.primary]
        && standbys_labelled
        && host.is_some()
        && t.host == host
        && t.quarantined == quarantined)
        .then_some(t.primary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::for_datastore;
    use serde_json::json;

    fn inst() -> DatabaseInstance {
        serde_json::from_value(json!({
            "apiVersion": "baton.dev/v1alpha1", "kind": "DatabaseInstance",
            "metadata": {"name": "db", "namespace": "ns", "uid": "u1"},
            "spec": {"datastore": {"type": "redis", "version": "7.0.15"}, "replicas": 2},
        }))
        .unwrap()
    }

    fn labelled(role: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([(LABEL_ROLE.to_string(), role.to_string())])),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn drift_is_the_fields_baton_sets_and_nothing_else() {
        let i = inst();
        let engine = for_datastore(crate::crd::Datastore::Redis).unwrap();
        let mut owned = Owned {
            claims: member_names(&i).iter().map(|m| claim(&i, m)).collect(),
            services: services(&i, engine).to_vec(),
            pdb: Some(pdb(&i)),
            topology: Some(topology(&i, &Topology::default())),
            credentials: true,
            applied_credentials: true,
            network_policy: true,
        };
        // What the API server adds is not drift.
        owned.services[0].spec.as_mut().unwrap().cluster_ip = Some("10.0.0.7".into());
        owned.services[0].spec.as_mut().unwrap().session_affinity = Some("None".into());
        assert!(!drift(&i, engine, &owned).any());
        owned.services[1].spec.as_mut().unwrap().selector = None;
        assert_eq!(
            drift(&i, engine, &owned),
            Drift {
                services: [false, true, false],
                ..Default::default()
            },
            "a selector edited away: that Service alone"
        );
        owned.services = services(&i, engine).to_vec();
        owned.claims.pop();
        assert!(drift(&i, engine, &owned).claims, "a claim deleted");
        owned.claims = member_names(&i).iter().map(|m| claim(&i, m)).collect();
        owned.credentials = false;
        assert!(
            drift(&i, engine, &owned).credentials,
            "the generated Secret deleted"
        );
        owned.credentials = true;
        owned.network_policy = false;
        assert!(
            drift(&i, engine, &owned).network_policy,
            "the NetworkPolicy deleted"
        );
    }

    #[test]
    fn the_network_policy_lets_in_members_labelled_clients_and_the_operator_only() {
        let i = inst();
        let engine = for_datastore(crate::crd::Datastore::Redis).unwrap();
        let np = network_policy(&i, engine, "baton-system");
        let spec = np.spec.unwrap();
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
        let rule = &spec.ingress.unwrap()[0];
        assert_eq!(
            rule.ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(6379))
        );
        let from = serde_json::to_string(&rule.from).unwrap();
        assert!(
            from.contains(&format!("\"{LABEL_CLIENT}\":\"db\"")),
            "{from}"
        );
        assert!(
            from.contains("\"kubernetes.io/metadata.name\":\"baton-system\""),
            "{from}"
        );
        assert_eq!(rule.from.as_ref().unwrap().len(), 3, "nothing else");
    }

    #[test]
    fn the_primary_is_published_when_labels_and_configmap_agree() {
        let i = inst();
        let cm = topology(
            &i,
            &Topology {
                primary: "db-0".into(),
                host: Some("127.2.0.2".into()),
                quarantined: vec![],
            },
        );
        let host = |n: &str| (n == "db-0").then(|| "127.2.0.2".to_string());
        let mut pods = BTreeMap::from([
            ("db-0".to_string(), labelled(ROLE_PRIMARY)),
            ("db-1".to_string(), labelled(ROLE_STANDBY)),
        ]);
        assert_eq!(
            published(&pods, Some(&cm), host, &[]).as_deref(),
            Some("db-0")
        );
        assert_eq!(published(&pods, Some(&cm), host, &["db-1".into()]), None);
        pods.insert("db-1".into(), labelled(ROLE_PRIMARY));
        assert_eq!(
            published(&pods, Some(&cm), host, &[]),
            None,
            "two labelled primaries"
        );
        let moved = |n: &str| (n == "db-0").then(|| "127.2.0.9".to_string());
        pods.insert("db-1".into(), labelled(ROLE_STANDBY));
        assert_eq!(
            published(&pods, Some(&cm), moved, &[]),
            None,
            "a stale address"
        );
    }

    #[test]
    fn a_member_pod_carries_its_version_role_claim_and_topology() {
        let i = inst();
        let engine = for_datastore(crate::crd::Datastore::Redis).unwrap();
        let p = pod(&i, engine, "db-1", "redis:7.0.15", "7.0.15", false);
        assert_eq!(p.annotations()[ANNOTATION_VERSION], "7.0.15");
        assert_eq!(p.labels()[LABEL_ROLE], ROLE_STANDBY);
        let spec = p.spec.unwrap();
        assert_eq!(spec.containers[0].image.as_deref(), Some("redis:7.0.15"));
        let env = serde_json::to_string(&spec.containers[0].env).unwrap();
        assert!(env.contains("db-topology"), "{env}");
        assert_eq!(
            spec.volumes.unwrap()[0]
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "data-db-1"
        );
    }
}
