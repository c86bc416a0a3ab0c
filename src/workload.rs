//! A client workload for checking upgrades: it writes continuously to an instance's primary,
//! found the way a client outside the operator would (the pod labelled `baton.dev/role=primary`;
//! the read-write Service selects the same pods), records every acknowledged write and the gaps
//! between acknowledgements, and afterwards verifies that every acknowledged write is present.
//! Used by the end-to-end tests, the demo and the benchmark.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams};
use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

use crate::controller::database_instance::children::{LABEL_INSTANCE, LABEL_ROLE, ROLE_PRIMARY};

/// What a writer saw.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub attempted: u64,
    /// Sequence numbers of acknowledged writes (key `w:<n>`, value `<n>`).
    pub acked: Vec<u64>,
    pub errors: u64,
    /// Intervals between consecutive acknowledgements longer than the outage threshold.
    pub gaps: Vec<Duration>,
    pub longest_gap: Duration,
    pub elapsed: Duration,
}

/// The address of the pod that carries the primary label, if exactly one does and it has one.
pub async fn primary_address(client: &Client, ns: &str, instance: &str) -> Option<Ipv4Addr> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!(
            "{LABEL_INSTANCE}={instance},{LABEL_ROLE}={ROLE_PRIMARY}"
        )))
        .await
        .ok()?;
    match pods.items.as_slice() {
        [p] => p.status.as_ref()?.pod_ip.as_deref()?.parse().ok(),
        _ => None,
    }
}

async fn connect(ip: Ipv4Addr) -> Option<MultiplexedConnection> {
    let c = redis::Client::open(format!("redis://{ip}:6379/")).ok()?;
    tokio::time::timeout(Duration::from_secs(2), c.get_multiplexed_async_connection())
        .await
        .ok()?
        .ok()
}

/// Writes `w:<n>` to the primary until `stop`, one write at a time (each waits for its
/// acknowledgement); a gap longer than `outage` between acknowledgements is recorded.
pub async fn write_until(
    client: Client,
    ns: String,
    instance: String,
    outage: Duration,
    stop: CancellationToken,
) -> Report {
    let mut r = Report::default();
    let start = Instant::now();
    let mut last_ack = Instant::now();
    let mut conn: Option<(Ipv4Addr, MultiplexedConnection)> = None;
    let mut n: u64 = 0;
    while !stop.is_cancelled() {
        if conn.is_none() {
            conn = match primary_address(&client, &ns, &instance).await {
                Some(ip) => connect(ip).await.map(|c| (ip, c)),
                None => None,
            };
            if conn.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        }
        let Some((_, c)) = conn.as_mut() else {
            continue;
        };
        n += 1;
        r.attempted += 1;
        let res: Result<Result<(), redis::RedisError>, _> = tokio::time::timeout(
            Duration::from_secs(2),
            redis::cmd("SET")
                .arg(format!("w:{n}"))
                .arg(n)
                .query_async(c),
        )
        .await;
        match res {
            Ok(Ok(())) => {
                let now = Instant::now();
                let gap = now - last_ack;
                if gap > outage {
                    r.gaps.push(gap);
                }
                r.longest_gap = r.longest_gap.max(gap);
                last_ack = now;
                r.acked.push(n);
            }
            _ => {
                // Fenced (NOREPLICAS), demoted (READONLY) or gone: find the primary again.
                r.errors += 1;
                conn = None;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    r.elapsed = start.elapsed();
    r
}

/// The acknowledged writes missing from the server at `ip`.
pub async fn missing(ip: Ipv4Addr, acked: &[u64]) -> Result<Vec<u64>, redis::RedisError> {
    let mut c = connect(ip)
        .await
        .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Io, "cannot connect")))?;
    let mut lost = Vec::new();
    for chunk in acked.chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|n| format!("w:{n}")).collect();
        let values: Vec<Option<u64>> = redis::cmd("MGET").arg(&keys).query_async(&mut c).await?;
        lost.extend(
            chunk
                .iter()
                .zip(values)
                .filter(|(n, v)| *v != Some(**n))
                .map(|(n, _)| *n),
        );
    }
    Ok(lost)
}

/// The distinct sequence numbers, for sanity checks.
pub fn distinct(acked: &[u64]) -> usize {
    acked.iter().collect::<BTreeSet<_>>().len()
}

/// The example catalog (Redis 6.2.14 and 7.0.15 with the 6 → 7 edge), as the demo, the
/// benchmark and the tests apply it.
pub const EXAMPLE_CATALOG: &str = include_str!("../examples/catalog.yaml");

/// Installs (server-side apply) every Baton CRD, then waits until each is Established and the
/// group is served (discovery lags Established by a moment). The error names what is missing.
pub async fn install_crds(client: &Client) -> Result<(), String> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    for crd in crate::crd::all() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply("baton-workload").force(),
            &Patch::Apply(&crd),
        )
        .await
        .map_err(|e| format!("applying CRD {name}: {e}"))?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut missing = vec![];
        for crd in crate::crd::all() {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let established = api
                .get(&name)
                .await
                .ok()
                .and_then(|c| c.status?.conditions)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if !established {
                missing.push(name);
            }
        }
        let served =
            missing.is_empty() && crate::operator::startup::check_crds(client).await.is_ok();
        if served {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "CRDs not Established and served within 60 s: {missing:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Applies every DatastoreVersion in a multi-document YAML file (server-side apply).
pub async fn apply_catalog(client: &Client, yaml: &str) -> Result<(), kube::Error> {
    use kube::api::{Patch, PatchParams};
    let api = Api::<crate::crd::DatastoreVersion>::all(client.clone());
    for doc in yaml
        .split("\n---\n")
        .filter(|d| d.contains("kind: DatastoreVersion"))
    {
        let dv: crate::crd::DatastoreVersion =
            serde_yaml_ng::from_str(doc).map_err(|e| kube::Error::Service(Box::new(e)))?;
        let name = dv.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply("baton-workload").force(),
            &Patch::Apply(&dv),
        )
        .await?;
    }
    Ok(())
}

/// Creates a Redis instance of `replicas` members on `version`.
pub async fn create_redis(
    client: &Client,
    ns: &str,
    name: &str,
    replicas: i32,
    version: &str,
) -> Result<(), kube::Error> {
    let obj: crate::crd::DatabaseInstance = serde_json::from_value(serde_json::json!({
        "apiVersion": "baton.dev/v1alpha1", "kind": "DatabaseInstance",
        "metadata": {"name": name},
        "spec": {"datastore": {"type": "redis", "version": version}, "replicas": replicas},
    }))
    .map_err(|e| kube::Error::Service(Box::new(e)))?;
    Api::<crate::crd::DatabaseInstance>::namespaced(client.clone(), ns)
        .create(&Default::default(), &obj)
        .await?;
    Ok(())
}

/// Sets `spec.datastore.version` (the GitOps way to upgrade).
pub async fn set_version(
    client: &Client,
    ns: &str,
    name: &str,
    version: &str,
) -> Result<(), kube::Error> {
    use kube::api::{Patch, PatchParams};
    let patch = serde_json::json!({"spec": {"datastore": {"version": version}}});
    Api::<crate::crd::DatabaseInstance>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Waits until the instance is Active on `version` with no upgrade in flight.
pub async fn wait_active(
    client: &Client,
    ns: &str,
    name: &str,
    version: &str,
    timeout: Duration,
) -> Option<crate::crd::DatabaseInstance> {
    let api = Api::<crate::crd::DatabaseInstance>::namespaced(client.clone(), ns);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(i) = api.get(name).await
            && let Some(s) = &i.status
            && s.phase == Some(crate::crd::InstancePhase::Active)
            && s.version.as_deref() == Some(version)
            && s.upgrade.is_none()
        {
            return Some(i);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The version a Redis server itself reports.
pub async fn server_version(ip: Ipv4Addr) -> Option<String> {
    let mut c = connect(ip).await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut c)
        .await
        .ok()?;
    crate::engine::redis::info_field(&info, "redis_version").map(str::to_string)
}
