//! The objects a DatabaseInstance owns, built from its spec: one pod and one claim per member,
//! the read-write, read-only and headless Services, and the PodDisruptionBudget. Names are
//! deterministic, so creating one twice is a no-op.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::crd::DatabaseInstance;
use crate::engine::Engine;

pub const LABEL_INSTANCE: &str = "baton.dev/instance";
pub const LABEL_ROLE: &str = "baton.dev/role";
pub const ANNOTATION_VERSION: &str = "baton.dev/version";
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

fn owner(inst: &DatabaseInstance) -> Value {
    serde_json::to_value(
        inst.controller_owner_ref(&())
            .into_iter()
            .collect::<Vec<_>>(),
    )
    .unwrap_or(json!([]))
}

fn labels(inst: &DatabaseInstance) -> Value {
    json!({
        "app.kubernetes.io/name": inst.spec.datastore.type_.as_str(),
        "app.kubernetes.io/instance": inst.name_any(),
        "app.kubernetes.io/managed-by": "baton",
        LABEL_INSTANCE: inst.name_any(),
    })
}

pub fn claim(inst: &DatabaseInstance, pod: &str) -> PersistentVolumeClaim {
    let mut spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": inst.spec.storage.size}},
    });
    if let Some(class) = &inst.spec.storage.storage_class_name {
        spec["storageClassName"] = json!(class);
    }
    serde_json::from_value(json!({
        "metadata": {"name": claim_name(pod), "labels": labels(inst), "ownerReferences": owner(inst)},
        "spec": spec,
    }))
    .unwrap_or_default()
}

/// A member's pod running `image` (catalog `version`) in `role`.
pub fn pod(
    inst: &DatabaseInstance,
    engine: &Engine,
    name: &str,
    image: &str,
    version: &str,
    role: &str,
) -> Pod {
    let mut container = engine.container();
    container["image"] = json!(image);
    if let Some(r) = &inst.spec.resources {
        container["resources"] = serde_json::to_value(r).unwrap_or(json!({}));
    }
    let mut l = labels(inst);
    l[LABEL_ROLE] = json!(role);
    serde_json::from_value(json!({
        "metadata": {
            "name": name, "labels": l, "ownerReferences": owner(inst),
            "annotations": {ANNOTATION_VERSION: version},
        },
        "spec": {
            "containers": [container],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim_name(name)}}],
            "terminationGracePeriodSeconds": 30,
        },
    }))
    .unwrap_or_default()
}

/// The strategic-merge patch that moves a member to another version, in place.
pub fn version_patch(engine: &Engine, image: &str, version: &str) -> Value {
    let name = engine.container()["name"].clone();
    json!({
        "metadata": {"annotations": {ANNOTATION_VERSION: version}},
        "spec": {"containers": [{"name": name, "image": image}]},
    })
}

pub fn role_patch(role: &str) -> Value {
    json!({"metadata": {"labels": {LABEL_ROLE: role}}})
}

/// `<name>` (read-write: the primary), `<name>-ro` (standbys), `<name>-headless` (every member).
pub fn services(inst: &DatabaseInstance, engine: &Engine) -> Vec<Service> {
    let name = inst.name_any();
    let ports = engine.container()["ports"].clone();
    let svc_ports: Vec<Value> = ports
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| json!({"name": p["name"], "port": p["containerPort"], "targetPort": p["name"]}))
        .collect();
    let make = |svc: String, role: Option<&str>, headless: bool| {
        let mut selector = json!({LABEL_INSTANCE: name});
        if let Some(r) = role {
            selector[LABEL_ROLE] = json!(r);
        }
        let mut spec = json!({"selector": selector, "ports": svc_ports});
        if headless {
            spec["clusterIP"] = json!("None");
            spec["publishNotReadyAddresses"] = json!(true);
        }
        serde_json::from_value::<Service>(json!({
            "metadata": {"name": svc, "labels": labels(inst), "ownerReferences": owner(inst)},
            "spec": spec,
        }))
        .unwrap_or_default()
    };
    vec![
        make(name.clone(), Some(ROLE_PRIMARY), false),
        make(format!("{name}-ro"), Some(ROLE_STANDBY), false),
        make(format!("{name}-headless"), None, true),
    ]
}

/// At most one member voluntarily down at a time (never "primary only", which blocks drains).
pub fn pdb(inst: &DatabaseInstance) -> PodDisruptionBudget {
    serde_json::from_value(json!({
        "metadata": {"name": inst.name_any(), "labels": labels(inst), "ownerReferences": owner(inst)},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {LABEL_INSTANCE: inst.name_any()}}},
    }))
    .unwrap_or_default()
}
