//! Pod volumes on the local node. A PersistentVolumeClaim is a directory keyed by the claim's
//! UID (same claim, same data; it outlives every pod) and gets a pre-bound hostPath
//! PersistentVolume so the claim reports Bound; emptyDir lives and dies with the pod; ConfigMap,
//! Secret, downwardAPI and projected volumes are written as files when the pod starts and kept
//! up to date while it runs. A projected `serviceAccountToken` is a token from the TokenRequest
//! API bound to the pod, renewed at 80% of its lifetime as the kubelet does — so a pod the
//! ServiceAccount admission plugin gave `kube-api-access-*` reads its token, the cluster CA and
//! its namespace under `/var/run/secrets/kubernetes.io/serviceaccount`, as on a real node.
//! A deleted claim's directory and PersistentVolume are reclaimed (`reclaim`), as a dynamic
//! provisioner's `Delete` policy does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod,
    ProjectedVolumeSource, Secret, ServiceAccount, Volume,
};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

/// Why a volume could not be prepared (shown as the container's waiting message).
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("persistentvolumeclaim {0:?} not found")]
    ClaimNotFound(String),
    #[error("{0} {1:?} not found")]
    NotFound(&'static str, String),
    #[error("volume {0:?} has a type the local node does not support")]
    Unsupported(String),
    #[error("downward API field {0:?} is not supported by the local node")]
    UnsupportedField(String),
    #[error("api: {0}")]
    Api(#[from] kube::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Prepares every volume of `pod`; returns volume name → host path.
pub async fn prepare(
    client: &Client,
    state: &Path,
    pod: &Pod,
) -> Result<BTreeMap<String, PathBuf>, VolumeError> {
    let ns = pod.namespace().unwrap_or_default();
    let pod_dir = pod_dir(state, pod);
    let mut out = BTreeMap::new();
    for v in volumes_of(pod) {
        let path = if let Some(pvc) = &v.persistent_volume_claim {
            claim_dir(client, state, &ns, &pvc.claim_name).await?
        } else if v.empty_dir.is_some() {
            let d = pod_dir.join("empty").join(&v.name);
            std::fs::create_dir_all(&d)?;
            d
        } else if let Some(files) = generated_files(client, state, pod, v, true).await? {
            write_files(&pod_dir.join("files").join(&v.name), files)?
        } else {
            return Err(VolumeError::Unsupported(v.name.clone()));
        };
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

/// Brings the files of the pod's Secret, ConfigMap, downwardAPI and projected volumes up to
/// date, as the kubelet does on its sync: a changed file is replaced whole (written aside, then
/// renamed over), so a reader never sees half of it. Sources that are gone leave their files as
/// they were; a token is renewed only when it is due.
pub async fn refresh(client: &Client, state: &Path, pod: &Pod) -> Result<(), VolumeError> {
    let pod_dir = pod_dir(state, pod);
    for v in volumes_of(pod) {
        let Some(files) = generated_files(client, state, pod, v, false).await? else {
            continue;
        };
        let dir = pod_dir.join("files").join(&v.name);
        for (rel, bytes) in files {
            let p = dir.join(&rel);
            if !super::runtime::is_within(&dir, &p)
                || std::fs::read(&p).is_ok_and(|have| have == bytes)
            {
                continue;
            }
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let aside = p.with_extension("baton-new");
            std::fs::write(&aside, bytes)?;
            std::fs::rename(&aside, &p)?;
        }
    }
    Ok(())
}

/// The files of a volume the node writes itself (Secret, ConfigMap, downwardAPI, projected),
/// or None for other kinds. `starting`: the pod is starting, so a missing required source is
/// an error and every token is fresh; otherwise a missing source leaves its files alone and a
/// token is only renewed when due.
async fn generated_files(
    client: &Client,
    state: &Path,
    pod: &Pod,
    v: &Volume,
    starting: bool,
) -> Result<Option<Vec<(String, Vec<u8>)>>, VolumeError> {
    let ns = pod.namespace().unwrap_or_default();
    if let Some(f) = FileSource::of(v) {
        let data = if starting {
            required(client, &ns, f.source, &f.name, f.optional).await?
        } else {
            match source_data(client, &ns, f.source, &f.name).await? {
                Some(d) => d,
                None => return Ok(None),
            }
        };
        return Ok(Some(files_of(data, f.items)));
    }
    if let Some(d) = &v.downward_api {
        return Ok(Some(downward_files(
            pod,
            d.items.as_deref().unwrap_or_default(),
        )?));
    }
    let Some(p) = &v.projected else {
        return Ok(None);
    };
    projected_files(client, state, pod, &v.name, p, starting)
        .await
        .map(Some)
}

/// Every file of a projected volume, in source order (a later source's file wins).
async fn projected_files(
    client: &Client,
    state: &Path,
    pod: &Pod,
    volume: &str,
    p: &ProjectedVolumeSource,
    starting: bool,
) -> Result<Vec<(String, Vec<u8>)>, VolumeError> {
    let ns = pod.namespace().unwrap_or_default();
    let mut out = Vec::new();
    for src in p.sources.as_deref().unwrap_or_default() {
        let keyed = [
            src.secret.as_ref().map(|s| {
                (
                    Source::Secret,
                    s.name.clone(),
                    s.items.as_deref(),
                    s.optional,
                )
            }),
            src.config_map.as_ref().map(|c| {
                (
                    Source::ConfigMap,
                    c.name.clone(),
                    c.items.as_deref(),
                    c.optional,
                )
            }),
        ];
        for (source, name, items, optional) in keyed.into_iter().flatten() {
            match source_data(client, &ns, source, &name).await? {
                Some(data) => out.extend(files_of(data, items)),
                None if optional == Some(true) || !starting => {}
                None => return Err(VolumeError::NotFound(source.kind(), name)),
            }
        }
        if let Some(d) = &src.downward_api {
            out.extend(downward_files(pod, d.items.as_deref().unwrap_or_default())?);
        }
        if let Some(t) = &src.service_account_token {
            let due = token_due_file(state, pod, volume, &t.path);
            let fresh = starting
                || std::fs::read_to_string(&due)
                    .ok()
                    .and_then(|s| s.trim().parse::<i64>().ok())
                    .is_none_or(|at| jiff::Timestamp::now().as_second() >= at);
            if !fresh {
                continue; // the file on disk is still good: leave it as it is
            }
            let ttl = t.expiration_seconds.unwrap_or(3600).max(600);
            let token = request_token(client, pod, t.audience.clone(), ttl).await?;
            if let Some(parent) = due.parent() {
                std::fs::create_dir_all(parent)?;
            }
            // Renewed at 80% of its lifetime, as the kubelet does.
            let renew_at = jiff::Timestamp::now().as_second() + ttl * 8 / 10;
            std::fs::write(&due, renew_at.to_string())?;
            out.push((t.path.clone(), token.into_bytes()));
        }
    }
    Ok(out)
}

/// Where the renewal time of one projected token is kept (beside the pod's files, not in them).
fn token_due_file(state: &Path, pod: &Pod, volume: &str, path: &str) -> PathBuf {
    pod_dir(state, pod)
        .join("tokens")
        .join(format!("{volume}_{}", path.replace('/', "_")))
}

/// A token for the pod's ServiceAccount from the TokenRequest API, bound to the pod (it stops
/// working when the pod is deleted), as the kubelet requests it.
async fn request_token(
    client: &Client,
    pod: &Pod,
    audience: Option<String>,
    ttl: i64,
) -> Result<String, VolumeError> {
    let ns = pod.namespace().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: audience.map(|a| vec![a]),
            expiration_seconds: Some(ttl),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.metadata.uid.clone(),
            }),
        }),
        ..Default::default()
    };
    let issued = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .create_token_request(&sa, &PostParams::default(), &req)
        .await?;
    Ok(issued.status.and_then(|s| s.token).unwrap_or_default())
}

/// The files of downward API items: the pod's name, namespace, UID, labels and annotations.
fn downward_files(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
) -> Result<Vec<(String, Vec<u8>)>, VolumeError> {
    let map_text = |m: &BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut out = Vec::new();
    for item in items {
        let Some(f) = &item.field_ref else {
            return Err(VolumeError::UnsupportedField(item.path.clone()));
        };
        let value = match f.field_path.as_str() {
            "metadata.name" => pod.name_any(),
            "metadata.namespace" => pod.namespace().unwrap_or_default(),
            "metadata.uid" => pod.metadata.uid.clone().unwrap_or_default(),
            "metadata.labels" => map_text(pod.labels()),
            "metadata.annotations" => map_text(pod.annotations()),
            other => {
                let label = other
                    .strip_prefix("metadata.labels['")
                    .and_then(|k| k.strip_suffix("']"))
                    .map(|k| pod.labels().get(k));
                let annotation = other
                    .strip_prefix("metadata.annotations['")
                    .and_then(|k| k.strip_suffix("']"))
                    .map(|k| pod.annotations().get(k));
                match label.or(annotation) {
                    Some(v) => v.cloned().unwrap_or_default(),
                    None => return Err(VolumeError::UnsupportedField(other.to_string())),
                }
            }
        };
        out.push((item.path.clone(), value.into_bytes()));
    }
    Ok(out)
}

fn volumes_of(pod: &Pod) -> &[Volume] {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default()
}

/// A volume whose files come from a Secret or a ConfigMap.
struct FileSource<'a> {
    source: Source,
    name: String,
    items: Option<&'a [KeyToPath]>,
    optional: Option<bool>,
}

impl<'a> FileSource<'a> {
    fn of(v: &'a Volume) -> Option<Self> {
        if let Some(cm) = &v.config_map {
            Some(FileSource {
                source: Source::ConfigMap,
                name: cm.name.clone(),
                items: cm.items.as_deref(),
                optional: cm.optional,
            })
        } else {
            v.secret.as_ref().map(|sec| FileSource {
                source: Source::Secret,
                name: sec.secret_name.clone().unwrap_or_default(),
                items: sec.items.as_deref(),
                optional: sec.optional,
            })
        }
    }
}

/// The files a volume of `data` holds: every key, or the `items` it names.
fn files_of(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
) -> Vec<(String, Vec<u8>)> {
    match items {
        Some(items) => items
            .iter()
            .filter_map(|i| data.get(&i.key).map(|d| (i.path.clone(), d.clone())))
            .collect(),
        None => data.into_iter().collect(),
    }
}

/// A key–value source of files and environment.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    ConfigMap,
    Secret,
}

impl Source {
    fn kind(self) -> &'static str {
        match self {
            Source::ConfigMap => "configmap",
            Source::Secret => "secret",
        }
    }
}

/// The data of a ConfigMap or Secret (values as bytes), or None if it does not exist.
pub async fn source_data(
    client: &Client,
    ns: &str,
    source: Source,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, kube::Error> {
    Ok(match source {
        Source::ConfigMap => Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await?
            .map(|c| {
                c.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect()
            }),
        Source::Secret => Api::<Secret>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await?
            .map(|s| {
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect()
            }),
    })
}

/// Like [`source_data`], with Kubernetes' `optional`: a missing optional source is empty.
pub async fn required(
    client: &Client,
    ns: &str,
    source: Source,
    name: &str,
    optional: Option<bool>,
) -> Result<BTreeMap<String, Vec<u8>>, VolumeError> {
    match source_data(client, ns, source, name).await? {
        Some(d) => Ok(d),
        None if optional == Some(true) => Ok(BTreeMap::new()),
        None => Err(VolumeError::NotFound(source.kind(), name.to_string())),
    }
}

/// The directory that holds a pod's own volumes (emptyDir, files); removed with the pod.
pub fn pod_dir(state: &Path, pod: &Pod) -> PathBuf {
    state
        .join("pods")
        .join(pod.metadata.uid.as_deref().unwrap_or("no-uid"))
}

fn write_files(dir: &Path, files: Vec<(String, Vec<u8>)>) -> Result<PathBuf, VolumeError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    for (rel, bytes) in files {
        let p = dir.join(&rel);
        if !super::runtime::is_within(dir, &p) {
            continue;
        }
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(p, bytes)?;
    }
    Ok(dir.to_path_buf())
}

/// The directory of a claim, and a hostPath PersistentVolume pre-bound to it.
async fn claim_dir(
    client: &Client,
    state: &Path,
    ns: &str,
    claim: &str,
) -> Result<PathBuf, VolumeError> {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get_opt(claim)
        .await?
        .ok_or_else(|| VolumeError::ClaimNotFound(claim.to_string()))?;
    let uid = pvc.metadata.uid.clone().unwrap_or_default();
    let dir = state.join("volumes").join(&uid);
    std::fs::create_dir_all(&dir)?;
    let bound = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .is_some();
    if !bound {
        let spec = pvc.spec.clone().unwrap_or_default();
        let storage = spec
            .resources
            .and_then(|r| r.requests)
            .and_then(|r| r.get("storage").cloned())
            .map(|q| q.0)
            .unwrap_or_else(|| "1Gi".into());
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": format!("baton-local-{uid}"), "labels": {"baton.dev/local-node": "true"}},
            "spec": {
                "capacity": {"storage": storage},
                "accessModes": spec.access_modes.unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": spec.storage_class_name.unwrap_or_default(),
                "hostPath": {"path": dir.to_string_lossy()},
                "claimRef": {"namespace": ns, "name": claim, "uid": uid},
            }
        }))
        .map_err(|e| VolumeError::Io(std::io::Error::other(e)))?;
        match Api::<PersistentVolume>::all(client.clone())
            .create(&PostParams::default(), &pv)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(dir)
}

/// Deletes the directory and PersistentVolume of every claim that no longer exists; returns the
/// UIDs reclaimed. The directories are listed before the claims: a directory is made only after
/// its claim was read, so one listed here whose claim is not in the (later, consistent) list
/// belongs to a deleted claim — and a claim is deleted only once no pod uses it (the
/// `pvc-protection` finalizer).
pub async fn reclaim(client: &Client, state: &Path) -> Result<Vec<String>, VolumeError> {
    let root = state.join("volumes");
    let dirs: Vec<String> = match std::fs::read_dir(&root) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    if dirs.is_empty() {
        return Ok(dirs);
    }
    let live: std::collections::BTreeSet<String> =
        Api::<PersistentVolumeClaim>::all(client.clone())
            .list_metadata(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|c| c.metadata.uid)
            .collect();
    let pvs = Api::<PersistentVolume>::all(client.clone());
    let mut gone = Vec::new();
    for uid in dirs.into_iter().filter(|u| !live.contains(u)) {
        match pvs
            .delete(&format!("baton-local-{uid}"), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        let dir = root.join(&uid);
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir))
            .await
            .map_err(std::io::Error::other)??;
        gone.push(uid);
    }
    Ok(gone)
}
