//! `make bench-scale`: what one operator (release build) costs with a fleet of instances.
//!
//! This machine cannot run a thousand real database servers beside the control plane, so the
//! fleet is made of two parts, said in every figure: `BATON_SCALE_ACTIVE` (default 50)
//! single-member Redis instances that really start and go Active, and enough instances created
//! `paused` to reach `BATON_SCALE_TOTAL` (default 1,000) objects, which the operator watches and
//! passes over but never starts. Prints:
//! - the operator's RSS idle, with the Active part, and with the whole fleet;
//! - the time from creating the Active part to all Active, and the operator's CPU seconds for it;
//! - over a settled window (`BATON_SCALE_WINDOW_SECONDS`, default 90; the health resync is 30 s):
//!   passes, the operator's API requests by verb from the API server's audit log, writes and
//!   reads per pass, and its CPU seconds;
//! - an UpgradeRequest over `BATON_SCALE_REQUEST` (default 20) of the Active instances with
//!   `maxConcurrent: 1`, then one over as many others with `maxConcurrent: 10`: each one's time,
//!   and the second against a tenth of the first (the linear ideal).
//!
//! Not a test: it asserts nothing but that it could measure.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

use baton::crd::{DatabaseInstance, InstancePhase, RequestPhase, UpgradeRequest};
use baton_testkit::env::{Env, SOURCE, TARGET, reconciles};
use baton_testkit::{Operator, audit};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident memory of `pid` in MiB, as the kernel counts it.
fn rss_mib(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// CPU seconds (user + system) `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15: indexes 11 and 12 after the state.
    (ticks(11) + ticks(12)) / 100.0
}

/// The machine's busy and total CPU ticks so far (all cores), from /proc/stat.
fn machine_ticks() -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let total: f64 = v.iter().sum();
    // idle and iowait are fields 4 and 5.
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

/// The group label each instance carries: which request (if any) upgrades it.
const GROUP: &str = "bench.baton.dev/group";

async fn create_all(api: &Api<DatabaseInstance>, names: Vec<String>, paused: bool, request: usize) {
    stream::iter(names.into_iter().enumerate())
        .for_each_concurrent(16, |(i, name)| async move {
            let group = match i / request.max(1) {
                0 if !paused => "one",
                1 if !paused => "ten",
                _ => "none",
            };
            let obj: DatabaseInstance = serde_json::from_value(json!({
                "apiVersion": "baton.dev/v1alpha1", "kind": "DatabaseInstance",
                "metadata": {"name": name, "labels": {GROUP: group}},
                "spec": {"datastore": {"type": "redis", "version": SOURCE}, "replicas": 1,
                         "paused": paused},
            }))
            .expect("instance");
            api.create(&PostParams::default(), &obj)
                .await
                .unwrap_or_else(|e| panic!("create {name}: {e}"));
        })
        .await;
}

async fn active(api: &Api<DatabaseInstance>) -> usize {
    api.list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .filter(|i| {
                    i.status
                        .as_ref()
                        .is_some_and(|s| s.phase == Some(InstancePhase::Active))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Waits for the operator's memory to stop growing (its caches filled), up to a minute.
async fn settled_rss(pid: u32) -> f64 {
    let mut last = rss_mib(pid);
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = rss_mib(pid);
        if (now - last).abs() < 0.5 {
            return now;
        }
        last = now;
    }
    last
}

#[tokio::main]
async fn main() {
    let n_active = env_or("BATON_SCALE_ACTIVE", 50) as usize;
    let total = env_or("BATON_SCALE_TOTAL", 1000).max(n_active as u64) as usize;
    let window = Duration::from_secs(env_or("BATON_SCALE_WINDOW_SECONDS", 90));
    let n_request = (env_or("BATON_SCALE_REQUEST", 20) as usize).min(n_active / 2);
    let env = Env::new("scale").await;
    // The operator as shipped: the default 30 s health resync.
    let op: Operator = env.operator_with("scale", &[("BATON_HEALTH_INTERVAL_SECONDS", "30")]);
    assert!(
        op.wait_ready(Duration::from_secs(60)).await,
        "the operator never became ready"
    );
    let pid = op.child.id().expect("the operator's pid");
    let idle = settled_rss(pid);
    let idle = idle.await;
    println!("operator (release build), namespace {}", env.ns);
    println!("  RSS idle, no instances: {idle:.1} MiB");

    let names = |from: usize, to: usize| (from..to).map(|i| format!("db-{i:04}")).collect();
    let cpu0 = cpu_seconds(pid);
    let started = Instant::now();
    create_all(&env.instances, names(0, n_active), false, n_request).await;
    loop {
        let n = active(&env.instances).await;
        if n >= n_active {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "only {n} of {n_active} instances Active after 30 minutes"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let took = started.elapsed();
    let cpu_active = cpu_seconds(pid) - cpu0;
    let rss_active = settled_rss(pid).await;
    println!(
        "  {n_active} single-member Redis instances created → all Active in {:.1} s; operator CPU {cpu_active:.1} s ({:.2} s an instance)",
        took.as_secs_f64(),
        cpu_active / n_active as f64
    );
    println!("  RSS with {n_active} Active instances: {rss_active:.1} MiB");

    let paused = total - n_active;
    let cpu1 = cpu_seconds(pid);
    let started = Instant::now();
    create_all(&env.instances, names(n_active, total), true, n_request).await;
    let created = started.elapsed();
    let rss_total = settled_rss(pid).await;
    println!(
        "  + {paused} paused instances (created in {:.1} s; operator CPU {:.1} s): RSS with {total} instances: {rss_total:.1} MiB",
        created.as_secs_f64(),
        cpu_seconds(pid) - cpu1
    );

    // The settled window: every pass is a resync (or a pod's status moving), nothing changes.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let mark = audit::mark();
    let passes0 = reconciles(&op, "databaseinstance").await;
    let cpu2 = cpu_seconds(pid);
    tokio::time::sleep(window).await;
    let passes = reconciles(&op, "databaseinstance").await - passes0;
    let cpu = cpu_seconds(pid) - cpu2;
    let mut verbs: BTreeMap<String, usize> = BTreeMap::new();
    let mut written: BTreeMap<String, usize> = BTreeMap::new();
    for r in mark.operator_requests(&env.ns) {
        *verbs.entry(r.verb.clone()).or_default() += 1;
        if r.is_write() {
            *written.entry(r.describe()).or_default() += 1;
        }
    }
    let writes: usize = written.values().sum();
    let reads = verbs.values().sum::<usize>() - writes;
    let per = |n: usize| n as f64 / passes.max(1) as f64;
    println!(
        "  settled, {}s window over {total} instances: {passes} passes, operator CPU {cpu:.1} s ({:.0} ms a pass)",
        window.as_secs(),
        cpu * 1000.0 / passes.max(1) as f64
    );
    println!(
        "    namespaced API requests by verb: {verbs:?}; {writes} writes ({:.2} a pass), {reads} reads ({:.1} a pass)",
        per(writes),
        per(reads)
    );
    if !written.is_empty() {
        println!("    writes: {written:?}");
    }

    if n_request > 0 {
        let (one, busy_one) = request(&env, "one", 1, n_request).await;
        let (ten, busy_ten) = request(&env, "ten", 10, n_request).await;
        let linear = one.as_secs_f64() / 10.0;
        println!(
            "  UpgradeRequest over {n_request} single-member instances ({SOURCE} → {TARGET}, in place): maxConcurrent 1 {:.1} s (CPUs {busy_one:.0}% busy), maxConcurrent 10 {:.1} s (CPUs {busy_ten:.0}% busy) = {:.2}× the linear {linear:.1} s",
            one.as_secs_f64(),
            ten.as_secs_f64(),
            ten.as_secs_f64() / linear
        );
    }
    baton_testkit::delete_namespace(&env.client, &env.ns).await;
}

/// Upgrades the instances of `group` with one request of `max_concurrent`; its time from
/// creation to Succeeded, and how busy the machine's CPUs were meanwhile (percent).
async fn request(env: &Env, group: &str, max_concurrent: i32, n: usize) -> (Duration, f64) {
    let api: Api<UpgradeRequest> = Api::namespaced(env.client.clone(), &env.ns);
    let r: UpgradeRequest = serde_json::from_value(json!({
        "apiVersion": "baton.dev/v1alpha1", "kind": "UpgradeRequest",
        "metadata": {"name": format!("to-{group}")},
        "spec": {"targets": {"selector": {"matchLabels": {GROUP: group}}},
                 "targetVersion": TARGET, "maxConcurrent": max_concurrent},
    }))
    .expect("request");
    let started = Instant::now();
    let (busy0, total0) = machine_ticks();
    api.create(&PostParams::default(), &r)
        .await
        .expect("create the request");
    let busy = || {
        let (busy1, total1) = machine_ticks();
        100.0 * (busy1 - busy0) / (total1 - total0).max(1.0)
    };
    loop {
        let phase = api
            .get(&format!("to-{group}"))
            .await
            .ok()
            .and_then(|r| r.status)
            .and_then(|s| s.phase);
        match phase {
            Some(RequestPhase::Succeeded) => return (started.elapsed(), busy()),
            Some(p @ (RequestPhase::Failed | RequestPhase::PartiallySucceeded)) => {
                panic!("the request over {n} instances ended {p:?}")
            }
            _ => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "the request over {n} instances did not finish in 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
