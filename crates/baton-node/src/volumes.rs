//! Pod volumes on the local node. A PersistentVolumeClaim is a directory keyed by the claim's
//! UID (same claim, same data; it outlives every pod) and gets a pre-bound hostPath
//! PersistentVolume so the claim reports Bound; emptyDir lives and dies with the pod; ConfigMap
//! and Secret volumes are written as files when the pod starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Volume,
};
use kube::api::{Api, PostParams};
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
        } else if let Some(f) = FileSource::of(v) {
            let data = required(client, &ns, f.source, &f.name, f.optional).await?;
            write_files(&pod_dir.join("files").join(&v.name), data, f.items)?
        } else {
            return Err(VolumeError::Unsupported(v.name.clone()));
        };
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

/// Brings the files of the pod's Secret and ConfigMap volumes up to date, as the kubelet does
/// on its sync: a changed file is replaced whole (written aside, then renamed over), so a
/// reader never sees half of it. Sources that are gone leave their files as they were.
pub async fn refresh(client: &Client, state: &Path, pod: &Pod) -> Result<(), VolumeError> {
    let ns = pod.namespace().unwrap_or_default();
    let pod_dir = pod_dir(state, pod);
    for v in volumes_of(pod) {
        let Some(f) = FileSource::of(v) else {
            continue;
        };
        let Some(data) = source_data(client, &ns, f.source, &f.name).await? else {
            continue;
        };
        let dir = pod_dir.join("files").join(&v.name);
        for (rel, bytes) in files_of(data, f.items) {
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
    items: Option<&'a [k8s_openapi::api::core::v1::KeyToPath]>,
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
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
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

fn write_files(
    dir: &Path,
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
) -> Result<PathBuf, VolumeError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    for (rel, bytes) in files_of(data, items) {
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
