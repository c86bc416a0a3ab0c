//! Start-up checks: the API server must serve every Baton kind before any controller starts.

use kube::Client;

use crate::crd;
use crate::error::{Error, Result};

/// Fails with [`Error::CrdsMissing`] naming every Baton kind that `baton.dev/v1alpha1` does not
/// serve. Uses discovery, which every authenticated user may read, so it needs no extra RBAC.
pub async fn check_crds(client: &Client) -> Result<()> {
    let group_version = format!("{}/{}", crd::GROUP, crd::API_VERSION);
    let served: Vec<String> = match client.list_api_group_resources(&group_version).await {
        Ok(list) => list.resources.into_iter().map(|r| r.kind).collect(),
        Err(kube::Error::Api(status)) if status.code == 404 => Vec::new(),
        Err(e) => return Err(Error::kube("discovering baton.dev/v1alpha1")(e)),
    };
    let missing: Vec<String> = crd::kinds()
        .into_iter()
        .filter(|k| !served.contains(k))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::CrdsMissing {
            missing: missing.join(", "),
        })
    }
}
