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
