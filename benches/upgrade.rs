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
//! them. Not a test: it asserts nothing but that it could measure.

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
) -> anyhow::Result<()> {
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
        let lost = workload::missing(f.ds, primary, &report)
            .await
            .map_err(anyhow::Error::msg)?
            .len()
            + workload::missing(f.ds, primary, &pinned)
                .await
                .map_err(anyhow::Error::msg)?
                .len();
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
    Ok(())
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

    // The operator, limited to the bench's namespace, as built by this bench (release).
    let log = std::fs::File::create(std::env::temp_dir().join(format!("{ns}-operator.log")))?;
    let mut operator = tokio::process::Command::new(baton_testkit::operator_bin())
        .args([
            "run",
            "--listen=127.0.0.1:0",
            "--no-leader-election",
            &format!("--namespace={ns}"),
        ])
        .env("BATON_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;

    for f in FLAVORS {
        if which.is_empty() || which.split(',').any(|w| w == f.ds.to_string()) {
            bench(&client, &ns, f, runs, pinned_client).await?;
            println!();
        }
    }
    operator.kill().await.ok();
    let _ = Api::<Namespace>::all(client.clone())
        .delete(&ns, &Default::default())
        .await;
    Ok(())
}
