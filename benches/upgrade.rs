//! `make bench`: N rolling upgrades (default 20; `BATON_BENCH_UPGRADES`) of a 3-member Redis
//! instance, 6.2.14 → 7.0.15, then as many of a 3-member PostgreSQL instance, 16.13 → 16.14, and
//! of a 3-member MariaDB instance, 10.11.18 → 10.11.19 (`BATON_BENCH_DATASTORES=redis`,
//! `postgresql`, `mariadb`, a comma-separated list; all by default), each under a client that
//! writes continuously and follows the
//! primary label as a real client would (with `BATON_BENCH_PINNED=1`, beside one pinned to the
//! first primary's address, as a pooled connection is). Prints, per run and in summary: the
//! label client's observed
//! write gap of the switchover, the total upgrade time, the members' own restart-to-caught-up
//! time (the baseline: what any rolling restart costs), the operator's overhead (total minus
//! the members' time), and acknowledged writes lost. Runs alternate between the two ways in:
//! the instance's spec (even runs) and an UpgradeRequest (odd runs), and the summary compares
//! them. After each engine's upgrades, its scripted floor ([`floor`]): as many switchovers
//! (at most 10) done by this bench itself with the engine's own fence, promote and unfence and
//! the role label, back to back, under the same label-following client; the summary prints
//! Baton's gap against it (medians, maxima, ratio). Then (`redis-cluster` in `BATON_BENCH_DATASTORES`) `BATON_BENCH_CLUSTER_UPGRADES`
//! (default 3) upgrades of a fresh 3 × 2 Redis Cluster, 6.2.14 → 7.0.15, under a client that
//! follows `MOVED` and writes across every slot: the longest time between two acknowledged
//! writes during the upgrade (each shard's failover stops writes to its slots; the client
//! writes one key after another, so its longest gap is the longest any slot refused writes)
//! against the same client's longest gap over as long a quiet period before it, the total
//! upgrade time, and acknowledged writes lost. Not a test: it asserts nothing but that it
//! could measure. `durability` (in the default list) measures the commit cost of
//! `durability: Replicated` against `Local` in the same run, PostgreSQL and MariaDB (see
//! [`bench_durability`]).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use baton::engine::{Lag, Role};
use baton_testkit::workload::{self, Route};

/// One datastore's upgrade under measurement.
#[derive(Clone, Copy)]
struct Flavor {
    ds: workload::Datastore,
    label: &'static str,
    source: &'static str,
    target: &'static str,
}

const FLAVORS: [Flavor; 3] = [
    Flavor {
        ds: workload::Datastore::Redis,
        label: "Redis",
        source: "6.2.14",
        target: "7.0.15",
    },
    Flavor {
        ds: workload::Datastore::Postgresql,
        label: "PostgreSQL",
        source: "16.13",
        target: "16.14",
    },
    Flavor {
        ds: workload::Datastore::Mariadb,
        label: "MariaDB",
        source: "10.11.18",
        target: "10.11.19",
    },
];

/// When each member started its restart and when it was back, caught up, on the target.
#[derive(Default, Debug, Clone, Copy)]
struct MemberTimes {
    patched: Option<Instant>,
    caught_up: Option<Instant>,
}

async fn watch_members(
    client: Client,
    ns: String,
    name: String,
    f: Flavor,
    auth: workload::Auth,
    stop: CancellationToken,
) -> BTreeMap<String, MemberTimes> {
    let target = f.target;
    let engine = baton::engine::for_datastore(f.ds).expect("engine");
    let pods = Api::<Pod>::namespaced(client, &ns);
    let mut times: BTreeMap<String, MemberTimes> = BTreeMap::new();
    while !stop.is_cancelled() {
        let Ok(list) = pods
            .list(&ListParams::default().labels(&format!("baton.dev/instance={name}")))
            .await
        else {
            continue;
        };
        let now = Instant::now();
        let mut probes = BTreeMap::new();
        for p in &list.items {
            if let Some(ip) = p
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref()?.parse().ok())
            {
                let t = auth.target(ip, engine.port());
                probes.insert(p.name_any(), engine.probe(&t).await.ok());
            }
        }
        let primary = probes
            .values()
            .flatten()
            .find(|p| p.writable())
            .map(|p| p.position.clone());
        for p in &list.items {
            let t = times.entry(p.name_any()).or_default();
            let spec_image = p
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            if t.patched.is_none() && spec_image.ends_with(target) {
                t.patched = Some(now);
            }
            if t.patched.is_some() && t.caught_up.is_none() {
                let running = p
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|c| c.first().cloned());
                let on_target = running.is_some_and(|c| c.ready && c.image.ends_with(target));
                let caught = match probes.get(&p.name_any()).cloned().flatten() {
                    Some(pr) if pr.version == target => match pr.role {
                        Role::Standby => {
                            pr.streaming
                                && primary.as_ref().is_some_and(|at| {
                                    matches!(pr.position.behind(at), Some(Lag::Bytes(n)) if n < 1024)
                                        || matches!(pr.position.behind(at), Some(Lag::Transactions(n)) if n < 10)
                                })
                        }
                        Role::Primary => !pr.fenced,
                    },
                    _ => false,
                };
                if on_target && caught {
                    t.caught_up = Some(now);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    times
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// `runs` upgrades of one flavor in namespace `ns`, with their summary printed.
async fn bench(
    client: &Client,
    ns: &str,
    f: Flavor,
    runs: usize,
    pinned_client: bool,
) -> anyhow::Result<Vec<f64>> {
    let ns = ns.to_string();
    println!(
        "{runs} upgrades of a 3-member {} {} → {} under continuous writes (namespace {ns})",
        f.label, f.source, f.target
    );
    println!(
        "{:>3} {:>8} {:>10} {:>10} {:>12} {:>12} {:>9} {:>6}",
        "run", "via", "gap ms", "total s", "members s", "overhead s", "acked", "lost"
    );
    let (mut gaps, mut totals, mut overheads, mut member_sums) = (vec![], vec![], vec![], vec![]);
    let (mut via_spec, mut via_request) = (vec![], vec![]);
    let mut lost_total = 0usize;
    for run in 0..runs {
        let name = format!("{}{run}", f.ds);
        workload::create(client, &ns, &name, f.ds, 3, f.source).await?;
        workload::wait_active(client, &ns, &name, f.source, Duration::from_secs(180))
            .await
            .ok_or_else(|| anyhow::anyhow!("{name} never became Active"))?;
        let stop = CancellationToken::new();
        let writer = tokio::spawn(workload::write_until(
            client.clone(),
            ns.clone(),
            name.clone(),
            f.ds,
            "l",
            Route::FollowLabel,
            Duration::from_millis(50),
            stop.clone(),
        ));
        // With BATON_BENCH_PINNED=1, also a client pinned to the first primary's address, as a
        // pooled connection would be (off by default: it doubles the load, and figures compare
        // with runs that had one client).
        let pinned = if pinned_client {
            let first = workload::primary_address(client, &ns, &name)
                .await
                .ok_or_else(|| anyhow::anyhow!("no primary"))?;
            Some(tokio::spawn(workload::write_until(
                client.clone(),
                ns.clone(),
                name.clone(),
                f.ds,
                "p",
                Route::Pinned(first),
                Duration::from_millis(50),
                stop.clone(),
            )))
        } else {
            None
        };
        let watcher = tokio::spawn(watch_members(
            client.clone(),
            ns.clone(),
            name.clone(),
            f,
            workload::wait_auth(client, &ns, &name).await,
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let by_request = run % 2 == 1;
        let t0 = Instant::now();
        if by_request {
            let req: baton::crd::UpgradeRequest = serde_json::from_value(serde_json::json!({
                "apiVersion": "baton.dev/v1alpha1", "kind": "UpgradeRequest",
                "metadata": {"name": format!("{name}-up")},
                "spec": {"targets": {"instances": [name]}, "targetVersion": f.target},
            }))?;
            Api::<baton::crd::UpgradeRequest>::namespaced(client.clone(), &ns)
                .create(&PostParams::default(), &req)
                .await?;
        } else {
            workload::set_version(client, &ns, &name, f.target).await?;
        }
        workload::wait_active(client, &ns, &name, f.target, Duration::from_secs(300))
            .await
            .ok_or_else(|| anyhow::anyhow!("{name} never finished its upgrade"))?;
        let total = t0.elapsed();
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancel();
        let report = writer.await?;
        let pinned = match pinned {
            Some(t) => t.await?,
            None => workload::Report::default(),
        };
        let times = watcher.await?;
        let members: Duration = times
            .values()
            .filter_map(|t| Some(t.caught_up? - t.patched?))
            .sum();
        let overhead = total.saturating_sub(members);
        let primary = workload::primary_address(client, &ns, &name)
            .await
            .ok_or_else(|| anyhow::anyhow!("no primary"))?;
        let lost = missing(f.ds, primary, &report).await?.len()
            + missing(f.ds, primary, &pinned).await?.len();
        lost_total += lost;
        println!(
            "{:>3} {:>8} {:>10.0} {:>10.2} {:>12.2} {:>12.2} {:>9} {:>6}",
            run + 1,
            if by_request { "request" } else { "spec" },
            ms(report.longest_gap),
            total.as_secs_f64(),
            members.as_secs_f64(),
            overhead.as_secs_f64(),
            report.acked.len() + pinned.acked.len(),
            lost
        );
        gaps.push(ms(report.longest_gap));
        totals.push(total.as_secs_f64());
        if by_request {
            via_request.push(total.as_secs_f64());
        } else {
            via_spec.push(total.as_secs_f64());
        }
        overheads.push(overhead.as_secs_f64());
        member_sums.push(members.as_secs_f64());
        let _ = Api::<baton::crd::DatabaseInstance>::namespaced(client.clone(), &ns)
            .delete(&name, &Default::default())
            .await;
    }
    let max = |v: &[f64]| v.iter().cloned().fold(f64::NAN, f64::max);
    println!();
    println!(
        "write gap per switchover:   median {:.0} ms, max {:.0} ms",
        median(gaps.clone()),
        max(&gaps)
    );
    println!(
        "total upgrade time:         median {:.2} s, max {:.2} s",
        median(totals.clone()),
        max(&totals)
    );
    println!(
        "members' restart+catch-up:  median {:.2} s (baseline: the rolling restart itself)",
        median(member_sums.clone())
    );
    println!(
        "operator overhead:          median {:.2} s ({:.0}% of the upgrade; ratio total/baseline {:.2})",
        median(overheads.clone()),
        100.0 * median(overheads) / median(totals.clone()),
        median(totals) / median(member_sums)
    );
    if !via_request.is_empty() {
        println!(
            "via spec / via request:     median {:.2} s / {:.2} s (ratio request/spec {:.2})",
            median(via_spec.clone()),
            median(via_request.clone()),
            median(via_request) / median(via_spec)
        );
    }
    println!("acknowledged writes lost:   {lost_total}");
    Ok(gaps)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::var("BATON_BENCH_UPGRADES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let pinned_client = std::env::var("BATON_BENCH_PINNED").is_ok_and(|v| v == "1");
    let which = std::env::var("BATON_BENCH_DATASTORES").unwrap_or_default();
    let client = Client::try_default().await?;
    workload::install_crds(&client)
        .await
        .map_err(anyhow::Error::msg)?;
    workload::apply_catalog(&client, workload::EXAMPLE_CATALOG).await?;
    let ns = format!("bench-{:06x}", rand::random::<u32>() & 0xffffff);
    let nso: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &nso)
        .await?;
    // Pods are admitted once the namespace's default ServiceAccount exists.
    let sas = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), &ns);
    while sas.get_opt("default").await?.is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The operator, limited to the bench's namespace, as built by this bench (release).
    let log = std::fs::File::create(std::env::temp_dir().join(format!("{ns}-operator.log")))?;
    let mut operator = tokio::process::Command::new(baton_testkit::operator_bin())
        .args([
            "run",
            "--listen=127.0.0.1:0",
            "--no-leader-election",
            &format!("--namespace={ns}"),
        ])
        .env(
            "BATON_LOG_LEVEL",
            std::env::var("BATON_BENCH_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;

    for f in FLAVORS {
        if which.is_empty() || which.split(',').any(|w| w == f.ds.to_string()) {
            let gaps = bench(&client, &ns, f, runs, pinned_client).await?;
            let floor = floor(&client, &ns, f, runs.clamp(1, 10)).await?;
            let max = |v: &[f64]| v.iter().cloned().fold(f64::NAN, f64::max);
            println!(
                "{} against its floor:  Baton median {:.0} ms (max {:.0}), floor median {:.0} ms (max {:.0}), ratio {:.2}",
                f.label,
                median(gaps.clone()),
                max(&gaps),
                median(floor.clone()),
                max(&floor),
                median(gaps) / median(floor)
            );
            println!();
        }
    }
    if which.is_empty() || which.split(',').any(|w| w == "durability") {
        bench_durability(&client, &ns).await?;
        println!();
    }
    if which.is_empty() || which.split(',').any(|w| w == "redis-cluster") {
        let runs: usize = std::env::var("BATON_BENCH_CLUSTER_UPGRADES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        bench_cluster(&client, &ns, runs).await?;
    }
    operator.kill().await.ok();
    let _ = Api::<Namespace>::all(client.clone())
        .delete(&ns, &Default::default())
        .await;
    Ok(())
}

/// The write-path cost of `durability: Replicated`, per engine that has it (PostgreSQL, then
/// MariaDB): two 3-member instances in the same run, one `Local` and one `Replicated`, each
/// taking single-row autocommit INSERTs from one client connected to its primary, one at a
/// time, in alternating 5-second rounds (three each, so drift on the machine hits both). Prints
/// commit latency (p50, p99) and commits a second per setting, and the ratios.
async fn bench_durability(client: &Client, ns: &str) -> anyhow::Result<()> {
    for f in [FLAVORS[1], FLAVORS[2]] {
        durability_of(client, ns, f).await?;
    }
    Ok(())
}

/// One open session that commits one row per call.
enum Committer {
    Postgres(tokio_postgres::Client, tokio_postgres::Statement),
    Mariadb(mysql_async::Conn),
}

impl Committer {
    async fn open(
        ds: workload::Datastore,
        ip: std::net::IpAddr,
        auth: &workload::Auth,
    ) -> anyhow::Result<Self> {
        match workload::connect(ds, ip, auth).await {
            Some(workload::Conn::Postgres(c)) => {
                c.batch_execute(
                    "CREATE TABLE IF NOT EXISTS bench_commit (id bigserial PRIMARY KEY, v int)",
                )
                .await?;
                let insert = c.prepare("INSERT INTO bench_commit (v) VALUES (1)").await?;
                Ok(Committer::Postgres(c, insert))
            }
            Some(workload::Conn::MariaDb(mut c)) => {
                use mysql_async::prelude::Queryable;
                c.query_drop("CREATE DATABASE IF NOT EXISTS bench").await?;
                c.query_drop(
                    "CREATE TABLE IF NOT EXISTS bench.commits (id bigint AUTO_INCREMENT PRIMARY KEY, v int)",
                )
                .await?;
                Ok(Committer::Mariadb(c))
            }
            _ => anyhow::bail!("cannot connect to {ip}"),
        }
    }

    async fn commit(&mut self) -> anyhow::Result<()> {
        match self {
            Committer::Postgres(c, insert) => {
                c.execute(&*insert, &[]).await?;
            }
            Committer::Mariadb(c) => {
                use mysql_async::prelude::Queryable;
                c.query_drop("INSERT INTO bench.commits (v) VALUES (1)")
                    .await?;
            }
        }
        Ok(())
    }
}

async fn durability_of(client: &Client, ns: &str, f: Flavor) -> anyhow::Result<()> {
    const ROUNDS: usize = 3;
    const ROUND: Duration = Duration::from_secs(5);
    let how = match f.ds {
        workload::Datastore::Postgresql => "synchronous_standby_names 'ANY 1 (*)'",
        _ => "semi-synchronous, AFTER_SYNC",
    };
    println!(
        "{} {}, 3 members: commit cost of durability Replicated ({how}) against Local, {ROUNDS} alternating rounds of {}s each",
        f.label,
        f.source,
        ROUND.as_secs()
    );
    let settings = ["Local", "Replicated"];
    let name = |d: &str| format!("{}-{}", f.ds, d.to_lowercase());
    for d in settings {
        let obj: baton::crd::DatabaseInstance = serde_json::from_value(serde_json::json!({
            "apiVersion": "baton.dev/v1alpha1", "kind": "DatabaseInstance",
            "metadata": {"name": name(d)},
            "spec": {"datastore": {"type": f.ds, "version": f.source}, "replicas": 3,
                     "durability": d},
        }))?;
        Api::<baton::crd::DatabaseInstance>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &obj)
            .await?;
    }
    let mut sessions = vec![];
    for d in settings {
        let name = name(d);
        workload::wait_active(client, ns, &name, f.source, Duration::from_secs(180))
            .await
            .ok_or_else(|| anyhow::anyhow!("{name} never became Active"))?;
        let auth = workload::wait_auth(client, ns, &name).await;
        let ip = workload::primary_address(client, ns, &name)
            .await
            .ok_or_else(|| anyhow::anyhow!("{name} has no primary"))?;
        sessions.push(Committer::open(f.ds, ip, &auth).await?);
    }
    let mut latencies: [Vec<f64>; 2] = [vec![], vec![]];
    for _ in 0..ROUNDS {
        for (i, c) in sessions.iter_mut().enumerate() {
            let end = Instant::now() + ROUND;
            while Instant::now() < end {
                let t = Instant::now();
                c.commit().await?;
                latencies[i].push(ms(t.elapsed()));
            }
        }
    }
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
    };
    let secs = (ROUNDS as f64) * ROUND.as_secs_f64();
    let mut rows = vec![];
    println!(
        "{:>11} {:>10} {:>10} {:>10}",
        "durability", "p50 ms", "p99 ms", "commits/s"
    );
    for (i, d) in settings.iter().enumerate() {
        let v = &mut latencies[i];
        let (p50, p99, rate) = (pct(v, 0.5), pct(v, 0.99), v.len() as f64 / secs);
        println!("{d:>11} {p50:>10.3} {p99:>10.3} {rate:>10.0}");
        rows.push((p50, p99, rate));
    }
    println!(
        "{} Replicated / Local: p50 ×{:.2}, p99 ×{:.2}, commits/s ×{:.2}",
        f.label,
        rows[1].0 / rows[0].0,
        rows[1].1 / rows[0].1,
        rows[1].2 / rows[0].2
    );
    Ok(())
}

/// Polls Cluster `name` until `done` holds (up to `timeout`).
async fn wait_cluster(
    api: &Api<baton::crd::Cluster>,
    name: &str,
    timeout: Duration,
    done: impl Fn(&baton::crd::ClusterStatus) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = api.get(name).await?.status
            && done(&s)
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "cluster {name} timed out");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A writer over every slot through a client that follows MOVED: acknowledged sequence
/// numbers, refusals, and the longest time between two acknowledged writes since
/// [`ClusterWriter::take_gap`] was last called.
struct ClusterWriter {
    stop: CancellationToken,
    gap: std::sync::Arc<std::sync::Mutex<Duration>>,
    task: tokio::task::JoinHandle<(Vec<u64>, u64)>,
}

impl ClusterWriter {
    fn start(client: redis::cluster::ClusterClient) -> ClusterWriter {
        let stop = CancellationToken::new();
        let gap = std::sync::Arc::new(std::sync::Mutex::new(Duration::ZERO));
        let task = tokio::spawn({
            let (stop, gap) = (stop.clone(), gap.clone());
            async move {
                let mut c = client
                    .get_async_connection()
                    .await
                    .expect("cluster connection");
                let (mut acked, mut refused, mut last, mut i) =
                    (vec![], 0u64, Instant::now(), 0u64);
                while !stop.is_cancelled() {
                    let r: redis::RedisResult<()> = redis::cmd("SET")
                        .arg(format!("b{i}"))
                        .arg(i)
                        .query_async(&mut c)
                        .await;
                    if r.is_ok() {
                        acked.push(i);
                        let mut g = gap.lock().unwrap_or_else(|p| p.into_inner());
                        *g = (*g).max(last.elapsed());
                        last = Instant::now();
                    } else {
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    i += 1;
                }
                (acked, refused)
            }
        });
        ClusterWriter { stop, gap, task }
    }

    /// The longest gap since the last call, and a fresh start.
    fn take_gap(&self) -> Duration {
        std::mem::take(&mut *self.gap.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// `runs` upgrades of a fresh 3 × 2 Redis Cluster each, 6.2.14 → 7.0.15, under a writer.
async fn bench_cluster(client: &Client, ns: &str, runs: usize) -> anyhow::Result<()> {
    println!("Redis Cluster 3 shards × 2, 6.2.14 -> 7.0.15, {runs} upgrades");
    let api = Api::<baton::crd::Cluster>::namespaced(client.clone(), ns);
    let ready = |s: &baton::crd::ClusterStatus| {
        s.task == Some(baton::crd::ClusterTask::None)
            && s.upgrade.is_none()
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    };
    let (mut gaps, mut quiet_gaps, mut totals, mut lost_total) = (vec![], vec![], vec![], 0usize);
    for run in 0..runs {
        let name = format!("bench-{run}");
        let cluster: baton::crd::Cluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "baton.dev/v1alpha1", "kind": "Cluster", "metadata": {"name": name},
            "spec": {"datastore": {"type": "redis", "version": "6.2.14"}, "shards": 3, "replicasPerShard": 2},
        }))?;
        api.create(&PostParams::default(), &cluster).await?;
        wait_cluster(&api, &name, Duration::from_secs(300), ready).await?;
        let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
            .get(&format!("{name}-credentials"))
            .await?;
        let key = |k: &str| -> anyhow::Result<String> {
            let v = secret
                .data
                .as_ref()
                .and_then(|d| d.get(k))
                .ok_or_else(|| anyhow::anyhow!("no {k}"))?;
            Ok(String::from_utf8(v.0.clone())?)
        };
        let nodes: Vec<String> = Api::<Pod>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels(&format!("baton.dev/cluster={name}")))
            .await?
            .items
            .iter()
            .filter_map(|p| {
                Some(format!(
                    "redis://{}:6379/",
                    p.status.as_ref()?.pod_ip.as_ref()?
                ))
            })
            .collect();
        let cc = redis::cluster::ClusterClient::builder(nodes)
            .username(key(baton::engine::USERNAME)?)
            .password(key(baton::engine::PASSWORD)?)
            .retries(20)
            .build()?;
        let writer = ClusterWriter::start(cc.clone());
        let started = Instant::now();
        // The baseline: the same client's longest gap over 20 s with nothing happening (after
        // 5 s of warming up its connections).
        tokio::time::sleep(Duration::from_secs(5)).await;
        writer.take_gap();
        tokio::time::sleep(Duration::from_secs(20)).await;
        let quiet = writer.take_gap();
        let begun = Instant::now();
        api.patch(
            &name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                serde_json::json!({"spec": {"datastore": {"version": "7.0.15"}}}),
            ),
        )
        .await?;
        wait_cluster(&api, &name, Duration::from_secs(600), |s| {
            ready(s) && s.version.as_deref() == Some("7.0.15")
        })
        .await?;
        let total = begun.elapsed();
        let gap = writer.take_gap();
        writer.stop.cancel();
        let (acked, refused) = writer.task.await?;
        let mut c = cc.get_async_connection().await?;
        let mut lost = 0;
        for i in &acked {
            let v: Option<u64> = redis::cmd("GET")
                .arg(format!("b{i}"))
                .query_async(&mut c)
                .await?;
            lost += usize::from(v != Some(*i));
        }
        println!(
            "  run {run}: upgrade {:.1} s, longest write gap {:.0} ms (quiet baseline {:.0} ms, ×{:.1}), {} acknowledged, {refused} refused, {lost} lost ({:.0} s of writing)",
            total.as_secs_f64(),
            ms(gap),
            ms(quiet),
            ms(gap) / ms(quiet).max(1.0),
            acked.len(),
            started.elapsed().as_secs_f64()
        );
        gaps.push(ms(gap));
        quiet_gaps.push(ms(quiet));
        totals.push(total.as_secs_f64());
        lost_total += lost;
        api.delete(&name, &Default::default()).await?;
    }
    println!(
        "  median: upgrade {:.1} s, longest write gap {:.0} ms vs quiet {:.0} ms; acknowledged writes lost in all runs: {lost_total}",
        median(totals),
        median(gaps),
        median(quiet_gaps)
    );
    Ok(())
}

/// The scripted floor of a switchover, measured beside Baton's on the same machine: the same
/// guarded protocol's server-side steps (fence, wait for a standby to hold the fenced
/// position, promote, move the role label, unfence), done by this bench back to back on one
/// Baton stands aside from (`spec.paused`), polling the candidate every 2 ms and with no
/// status write, watch or requeue between them. The label-following client's longest gap per
/// switchover is the floor; runs alternate the primary between the first two members.
async fn floor(client: &Client, ns: &str, f: Flavor, runs: usize) -> anyhow::Result<Vec<f64>> {
    use baton::controller::database_instance::children::{LABEL_ROLE, ROLE_PRIMARY, ROLE_STANDBY};
    use kube::api::{Patch, PatchParams};
    let name = format!("{}floor", f.ds);
    workload::create(client, ns, &name, f.ds, 3, f.source).await?;
    workload::wait_active(client, ns, &name, f.source, Duration::from_secs(180))
        .await
        .ok_or_else(|| anyhow::anyhow!("{name} never became Active"))?;
    let instances = Api::<baton::crd::DatabaseInstance>::namespaced(client.clone(), ns);
    instances
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"paused": true}})),
        )
        .await?;
    // Baton has seen the pause once its status says so.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !instances
        .get(&name)
        .await?
        .status
        .and_then(|s| s.message)
        .is_some_and(|m| m.starts_with("paused"))
    {
        anyhow::ensure!(Instant::now() < deadline, "{name} was never paused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let engine = baton::engine::for_datastore(f.ds)?;
    let auth = workload::wait_auth(client, ns, &name).await;
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let label = |pod: String, role: &'static str| {
        let pods = pods.clone();
        async move {
            pods.patch(
                &pod,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"labels": {LABEL_ROLE: role}}})),
            )
            .await
        }
    };
    let addrs = workload::member_addresses(client, ns, &name).await;
    let at = |m: &str| -> anyhow::Result<baton::engine::Target> {
        let ip = addrs
            .get(m)
            .ok_or_else(|| anyhow::anyhow!("{m} has no address"))?;
        Ok(auth.target(*ip, engine.port()))
    };
    let members: Vec<String> = (0..3).map(|i| format!("{name}-{i}")).collect();
    println!(
        "scripted floor of {runs} {} switchovers (instance {name}, paused):",
        f.label
    );
    println!(
        "{:>3} {:>10} {:>10} {:>6}",
        "run", "gap ms", "script ms", "lost"
    );
    let mut gaps = vec![];
    for run in 0..runs {
        let (from, to) = if run % 2 == 0 { (0, 1) } else { (1, 0) };
        let (old, new, other) = (&members[from], &members[to], &members[2]);
        // Both standbys stream from the primary and keep up before each run.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let primary = at(old)?.endpoint;
            let mut ok = engine.probe(&at(old)?).await?.writable();
            for m in [new, other] {
                let s = engine.probe(&at(m)?).await?;
                ok &= s.streaming && s.following.as_deref().is_some_and(|h| primary.is_host(h));
            }
            if ok {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{name}: the standbys do not follow {old}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let stop = CancellationToken::new();
        let writer = tokio::spawn(workload::write_until(
            client.clone(),
            ns.to_string(),
            name.clone(),
            f.ds,
            // A writer name of its own per run, so one run's keys never mask another's.
            Box::leak(format!("f{run}").into_boxed_str()),
            Route::FollowLabel,
            Duration::from_millis(50),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let t0 = Instant::now();
        engine.fence(&at(old)?).await?;
        let goal = engine.probe(&at(old)?).await?.position;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let c = engine.probe(&at(new)?).await;
            if c.is_ok_and(|c| c.streaming && c.position.reached(&goal)) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "{new} never reached {goal}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        engine.promote(&at(new)?, Some(&goal)).await?;
        label(old.clone(), ROLE_STANDBY).await?;
        label(new.clone(), ROLE_PRIMARY).await?;
        engine.unfence(&at(new)?).await?;
        let script = t0.elapsed();
        let primary = at(new)?.endpoint;
        engine.repoint(&at(old)?, &primary).await?;
        engine.repoint(&at(other)?, &primary).await?;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        stop.cancel();
        let report = writer.await?;
        let ip = *addrs
            .get(new.as_str())
            .ok_or_else(|| anyhow::anyhow!("no address"))?;
        let lost = missing(f.ds, ip, &report).await?.len();
        println!(
            "{:>3} {:>10.0} {:>10.0} {:>6}",
            run + 1,
            ms(report.longest_gap),
            ms(script),
            lost
        );
        gaps.push(ms(report.longest_gap));
    }
    let _ = instances.delete(&name, &Default::default()).await;
    Ok(gaps)
}

/// The acknowledged writes of `report` missing at `ip`, retrying the connection for 10 s (a
/// member just restarted or unfenced may refuse a moment longer).
async fn missing(
    ds: baton::crd::Datastore,
    ip: std::net::IpAddr,
    report: &workload::Report,
) -> anyhow::Result<Vec<workload::Ack>> {
    let last = std::sync::Mutex::new(String::new());
    let found = baton_testkit::eventually(Duration::from_secs(10), || async {
        let r = workload::missing(ds, ip, report).await;
        r.map_err(|e| *last.lock().expect("last") = e).ok()
    })
    .await;
    found.ok_or_else(|| anyhow::anyhow!("{}", last.lock().expect("last")))
}
