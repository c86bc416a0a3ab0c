//! The acting half of a pass: performs the one act `decide` chose, after its intent is on
//! record. Every act is idempotent; each API write and database command passes a named
//! failpoint right after it took effect (the crash-anywhere harness stops the operator there).

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::children::{self, Topology};
use super::model::{Act, Member, Observation};
use crate::controller::FIELD_MANAGER;
use crate::crd::DatabaseInstanceStatus;
use crate::engine::{Engine, EngineError, Target};
use crate::failpoint;

/// Why an act failed.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    #[error("{act} {member}")]
    Engine {
        act: &'static str,
        member: String,
        #[source]
        source: EngineError,
    },
    /// What the API server answered, in its own words (not its whole Status).
    #[error("{action}: {reason}")]
    Kube {
        action: &'static str,
        reason: String,
    },
    #[error("{member} has no address yet")]
    NoAddress { member: String },
}

impl ActError {
    /// A fixed name for metric labels.
    pub fn category(&self) -> &'static str {
        match self {
            ActError::Engine { source, .. } => source.category(),
            ActError::Kube { .. } => "KubeApi",
            ActError::NoAddress { .. } => "NoAddress",
        }
    }
}

fn kube_err(action: &'static str) -> impl FnOnce(kube::Error) -> ActError {
    move |e| ActError::Kube {
        action,
        reason: match e {
            kube::Error::Api(s) => s.message,
            other => other.to_string(),
        },
    }
}

fn member<'a>(o: &'a Observation, name: &str) -> Result<&'a Member, ActError> {
    o.members
        .iter()
        .find(|m| m.name == name && m.endpoint.is_some())
        .ok_or_else(|| ActError::NoAddress {
            member: name.into(),
        })
}

fn target(o: &Observation, name: &str) -> Result<Target, ActError> {
    let m = member(o, name)?;
    Ok(Target {
        endpoint: m.endpoint.clone().ok_or_else(|| ActError::NoAddress {
            member: name.into(),
        })?,
        credentials: o.admin.clone(),
        fallback: o.admin_fallback.clone(),
        ca: o.ca.clone(),
        cert: o.cert.clone(),
    })
}

async fn apply<K>(api: &Api<K>, obj: &K, action: &'static str) -> Result<(), ActError>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(kube_err(action))?;
    Ok(())
}

/// The topology the status names: its primary, the primary's address, quarantined members.
fn topology_of(o: &Observation, status: &DatabaseInstanceStatus, primary: &str) -> Topology {
    Topology {
        primary: primary.into(),
        host: o
            .members
            .iter()
            .find(|m| m.name == primary)
            .and_then(|m| m.endpoint.as_ref())
            .map(|e| e.host.clone()),
        quarantined: status.quarantine.iter().map(|q| q.member.clone()).collect(),
    }
}

/// Performs `act`. `status` is the status just written for this pass.
pub async fn run(
    client: &kube::Client,
    o: &Observation,
    engine: &'static dyn Engine,
    status: &DatabaseInstanceStatus,
    act: &Act,
) -> Result<(), ActError> {
    let ns = o.inst.namespace().unwrap_or_default();
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    match act {
        Act::None => Ok(()),
        Act::ApplyChildren { pods: new } => apply_children(client, o, engine, status, new).await,
        Act::SetVersion {
            member,
            version,
            image,
        } => {
            let container = engine.container_name();
            pods.patch(
                member,
                &PatchParams::default(),
                &Patch::Strategic(&children::version_patch(container, image, version)),
            )
            .await
            .map_err(kube_err("changing a member's image"))?;
            failpoint::scoped(member, failpoint::passed("api:pod-image")).await;
            Ok(())
        }
        Act::Publish { primary } => publish(client, o, status, primary).await,
        Act::Depose { member, uid } => depose(&pods, member, uid).await,
        Act::SetPasswords { members } => set_passwords(client, o, engine, members).await,
        Act::CheckOffline {
            member,
            key,
            from_image,
            to_image,
        } => check_offline(client, o, engine, member, key, from_image, to_image).await,
        Act::FinishOffline { .. } => {
            on_members(o, engine, act).await?;
            // Its check passed long ago: the pod goes with the kept data (a failed one stays,
            // for a person to read, until the next attempt replaces it).
            delete_offline_check(client, &o.inst, false)
                .await
                .map_err(kube_err("deleting the offline check pod"))
        }
        Act::Repoint { .. }
        | Act::Fence { .. }
        | Act::Unfence { .. }
        | Act::Promote { .. }
        | Act::ReloadTls { .. } => on_members(o, engine, act).await,
    }
}

/// The acts the engine performs on members' servers, in order; the first failure stops them.
async fn on_members(
    o: &Observation,
    engine: &'static dyn Engine,
    act: &Act,
) -> Result<(), ActError> {
    let engine_err = |act: &'static str, member: &str| {
        let member = member.to_string();
        move |source| ActError::Engine {
            act,
            member,
            source,
        }
    };
    match act {
        Act::Repoint { members, primary } => {
            let p = member_endpoint(o, primary)?;
            for member in members {
                let t = target(o, member)?;
                failpoint::scoped(member, engine.repoint(&t, &p))
                    .await
                    .map_err(engine_err("repoint", member))?;
            }
            Ok(())
        }
        Act::Fence { member } => failpoint::scoped(member, engine.fence(&target(o, member)?))
            .await
            .map_err(engine_err("fence", member)),
        Act::Unfence { member } => failpoint::scoped(member, engine.unfence(&target(o, member)?))
            .await
            .map_err(engine_err("unfence", member)),
        Act::Promote { member, at_least } => {
            let t = target(o, member)?;
            failpoint::scoped(member, engine.promote(&t, at_least.as_ref()))
                .await
                .map_err(engine_err("promote", member))
        }
        Act::FinishOffline { member } => {
            failpoint::scoped(member, engine.finish_offline(&target(o, member)?))
                .await
                .map_err(engine_err("finish the offline upgrade on", member))
        }
        Act::ReloadTls { members } => {
            for m in members {
                failpoint::scoped(m, engine.reload_tls(&target(o, m)?))
                    .await
                    .map_err(engine_err("reload TLS", m))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Deletes the down primary's pod `member`, if it is still the pod with `uid`.
async fn depose(pods: &Api<Pod>, member: &str, uid: &str) -> Result<(), ActError> {
    // A short grace: the server already stopped serving; the node stops it for good (SIGTERM,
    // then SIGKILL), and only then does the pod go. The UID keeps a pod created in its place
    // from being deleted by a repeated pass.
    let dp = kube::api::DeleteParams {
        grace_period_seconds: Some(1),
        preconditions: Some(kube::api::Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match pods.delete(member, &dp).await {
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        r => {
            r.map_err(kube_err("deleting the down primary's pod"))?;
        }
    }
    failpoint::scoped(member, failpoint::passed("api:depose")).await;
    Ok(())
}

/// Deletes `inst`'s offline check pod (`dry_run`: the dry run's), if there is one.
pub(crate) async fn delete_offline_check(
    client: &kube::Client,
    inst: &crate::crd::DatabaseInstance,
    dry_run: bool,
) -> Result<(), kube::Error> {
    let pods = Api::<Pod>::namespaced(client.clone(), &inst.namespace().unwrap_or_default());
    match pods
        .delete(
            &children::offline_check_name(inst, dry_run),
            &Default::default(),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The offline hop's check pod for attempt `key`: another attempt's pod is deleted first
/// (the next pass creates this one once it is gone).
async fn check_offline(
    client: &kube::Client,
    o: &Observation,
    engine: &dyn Engine,
    member: &str,
    key: &str,
    from_image: &str,
    to_image: &str,
) -> Result<(), ActError> {
    let pods = Api::<Pod>::namespaced(client.clone(), &o.inst.namespace().unwrap_or_default());
    if o.offline_check.as_ref().is_some_and(|c| c.key != key) {
        return delete_offline_check(client, &o.inst, false)
            .await
            .map_err(kube_err("deleting an earlier offline check pod"));
    }
    let node = o
        .members
        .iter()
        .find(|m| m.name == member)
        .and_then(|m| m.node.as_deref());
    let spec = children::OfflineCheckSpec {
        member,
        node,
        key,
        from_image,
        to_image,
        dry_run: false,
    };
    let Some(pod) = children::offline_check_pod(&o.inst, engine, &spec) else {
        return Ok(());
    };
    match pods.create(&PostParams::default(), &pod).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(kube_err("creating the offline check pod")(e)),
    }
    failpoint::scoped(member, failpoint::passed("api:offline-check")).await;
    Ok(())
}

/// The changed credentials Secret applied to every member online, then recorded in the applied
/// copy (which members read when they start). Stopped anywhere, it is simply done again: each
/// member answers to the old or the new login, and setting a password twice is harmless.
async fn set_passwords(
    client: &kube::Client,
    o: &Observation,
    engine: &dyn Engine,
    members: &[String],
) -> Result<(), ActError> {
    let Some(to) = &o.credentials_changed else {
        return Ok(());
    };
    for m in members {
        failpoint::scoped(m, engine.set_passwords(&target(o, m)?, to))
            .await
            .map_err(|source| ActError::Engine {
                act: "set passwords",
                member: m.clone(),
                source,
            })?;
    }
    let secrets =
        Api::<Secret>::namespaced(client.clone(), &o.inst.namespace().unwrap_or_default());
    apply(
        &secrets,
        &children::applied_credentials(&o.inst, to),
        "recording the applied credentials",
    )
    .await?;
    failpoint::passed("api:credentials-applied").await;
    Ok(())
}

fn member_endpoint(o: &Observation, name: &str) -> Result<crate::engine::Endpoint, ActError> {
    member(o, name)?
        .endpoint
        .clone()
        .ok_or_else(|| ActError::NoAddress {
            member: name.into(),
        })
}

/// The topology ConfigMap first (members that restart from now on follow `primary`), then the
/// role labels: standbys first, the primary last, so two members never carry the primary label.
async fn publish(
    client: &kube::Client,
    o: &Observation,
    status: &DatabaseInstanceStatus,
    primary: &str,
) -> Result<(), ActError> {
    let ns = o.inst.namespace().unwrap_or_default();
    let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let cm = children::topology(&o.inst, &topology_of(o, status, primary));
    apply(&cms, &cm, "writing the topology ConfigMap").await?;
    failpoint::passed("api:topology").await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let order = o
        .members
        .iter()
        .filter(|m| m.exists && m.name != primary)
        .chain(o.members.iter().filter(|m| m.exists && m.name == primary));
    for m in order {
        // A pod already labelled as it should be costs no write.
        if m.role_label.as_deref() != Some(children::role(m.name == primary)) {
            pods.patch(
                &m.name,
                &PatchParams::default(),
                &Patch::Merge(&children::role_patch(m.name == primary)),
            )
            .await
            .map_err(kube_err("moving the primary label"))?;
        }
        failpoint::scoped(&m.name, failpoint::passed("api:label")).await;
    }
    Ok(())
}

/// What drifted of the claims, the topology ConfigMap, the Services, the PDB and the
/// NetworkPolicy, by server-side apply, and the credentials; then the missing member pods
/// (created once: a pod's spec is immutable but for its image), with the topology they boot
/// from rewritten first.
async fn apply_children(
    client: &kube::Client,
    o: &Observation,
    engine: &'static dyn Engine,
    status: &DatabaseInstanceStatus,
    new: &[super::model::NewPod],
) -> Result<(), ActError> {
    let inst = &o.inst;
    let ns = inst.namespace().unwrap_or_default();
    let drift = o.drift.unwrap_or(children::Drift::ALL);
    if drift.claims {
        let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns);
        for m in children::member_names(inst) {
            apply(&claims, &children::claim(inst, &m), "applying a claim").await?;
        }
    }
    if drift.topology || !new.is_empty() {
        let primary = status.primary.clone().unwrap_or_default();
        let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns);
        let cm = children::topology(inst, &topology_of(o, status, &primary));
        apply(&cms, &cm, "writing the topology ConfigMap").await?;
    }
    let services = Api::<Service>::namespaced(client.clone(), &ns);
    for (svc, drifted) in children::services(inst, engine).iter().zip(drift.services) {
        if drifted {
            apply(&services, svc, "applying a service").await?;
        }
    }
    if drift.pdb {
        let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns);
        apply(&pdbs, &children::pdb(inst), "applying the PDB").await?;
    }
    if drift.network_policy {
        // The operator's own namespace: in a cluster, the service account's.
        let np = children::network_policy(inst, engine, client.default_namespace());
        let nps = Api::<NetworkPolicy>::namespaced(client.clone(), &ns);
        apply(&nps, &np, "applying the NetworkPolicy").await?;
    }
    if drift.credentials {
        ensure_credentials(client, o, engine).await?;
    }
    failpoint::passed("api:children").await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    for p in new {
        let pod = children::pod(inst, engine, &p.name, &p.image, &p.version, p.primary);
        match pods.create(&PostParams::default(), &pod).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(kube_err("creating a member pod")(e)),
        }
    }
    Ok(())
}

/// The credentials Secret (when Baton generates it) and its applied copy, before any pod reads
/// them. A generated Secret that was deleted comes back with the values the members run with.
async fn ensure_credentials(
    client: &kube::Client,
    o: &Observation,
    engine: &dyn Engine,
) -> Result<(), ActError> {
    let inst = &o.inst;
    let secrets = Api::<Secret>::namespaced(client.clone(), &inst.namespace().unwrap_or_default());
    let mut values = o.credentials_unapplied.clone();
    if inst.spec.credentials.is_none() && values.is_none() && o.admin.is_none() {
        // Neither the Secret nor its copy: a new instance.
        let fresh = children::generated_values(engine.credential_keys());
        let secret = children::credentials(inst, &fresh);
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => values = Some(fresh),
            // Made since this pass looked: the next pass copies what it holds.
            Err(kube::Error::Api(s)) if s.code == 409 => return Ok(()),
            Err(e) => return Err(kube_err("creating the credentials Secret")(e)),
        }
    }
    if inst.spec.credentials.is_none() && o.admin.is_some() && values.is_none() {
        // The generated Secret was deleted: restored from what the members run with.
        if let Some(applied) = secrets
            .get_opt(&children::applied_credentials_name(inst))
            .await
            .map_err(kube_err("reading the applied credentials"))?
        {
            let mut restored = children::credentials(inst, &Default::default());
            restored.string_data = None;
            restored.data = applied.data;
            create(&secrets, &restored, "restoring the credentials Secret").await?;
        }
    }
    if let Some(v) = values {
        // Created once; afterwards only a completed change of passwords rewrites it.
        create(
            &secrets,
            &children::applied_credentials(inst, &v),
            "creating the applied credentials",
        )
        .await?;
    }
    Ok(())
}

/// Creates `obj`; one that exists already is left as it is.
async fn create<K>(api: &Api<K>, obj: &K, action: &'static str) -> Result<(), ActError>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(kube_err(action)(e)),
    }
}
