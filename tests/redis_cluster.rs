//! Redis Cluster's engine part on real servers: six pods with `cluster-enabled yes` on the
//! local node (Redis 6.2.14, and 7.0.15 for shard 0's replica), formed into three shards of two
//! by Baton's formation steps (decided from what the nodes report, one step at a time), then a
//! graceful `CLUSTER FAILOVER` from the 6.2.14 master to the 7.0.15 replica under a
//! cluster-aware client (following MOVED) writing all the while: confirmed only once every node
//! sees it, and every acknowledged write readable afterwards.
//! Then the same through the Cluster kind: a 3 × 2 Cluster created with the operator killed
//! right after its second `CLUSTER ADDSLOTS` (a new one finishes the formation from what the
//! nodes report), then upgraded 6.2.14 → 7.0.15 shard by shard under a writing client, with
//! operators killed at every kind of step (a member's restart recorded, its pod patched, a
//! failover's intent recorded, the failover sent). Then UpgradeRequests over a Cluster: held
//! with every replica upgraded and rolled back; cancelled half-way; held together with an
//! instance and committed; and a one-member Cluster upgraded by type InPlace. Then waves
//! (`maxUnavailableShards`): a 3-shard upgrade with 1 and with 2 under a writer, one in waves
//! of two with an operator killed at each kind of step, and a wave whose replicas cannot
//! start, stopped and reverted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::PostParams;
use serde_json::{Value, json};

use baton::engine::redis_cluster::{self as rc, Formation, Shard, View};
use baton::engine::{Endpoint, Target};
use baton_testkit::env::*;
use baton_testkit::*;

const TIMEOUT: Duration = Duration::from_secs(120);

fn node_pod(name: &str, image: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "cluster"}},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "redis",
                "image": image,
                "args": ["--port", "6379", "--cluster-enabled", "yes",
                         "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000",
                         "--cluster-announce-ip", "$(POD_IP)", "--appendonly", "yes"],
                "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "ports": [{"name": "redis", "containerPort": 6379}],
                "readinessProbe": {"exec": {"command": ["redis-cli", "ping"]}, "periodSeconds": 1},
            }]
        }
    }))
    .expect("pod")
}

async fn views(targets: &BTreeMap<String, Target>) -> BTreeMap<String, View> {
    let mut out = BTreeMap::new();
    for (a, t) in targets {
        if let Ok(v) = rc::view(t).await {
            out.insert(a.clone(), v);
        }
    }
    out
}

/// Forms the cluster the way the operator will: observe, take one step, observe again.
async fn form(shards: &[Shard], targets: &BTreeMap<String, Target>) -> Vec<Formation> {
    let mut steps = vec![];
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let step = rc::next_formation_step(shards, &views(targets).await);
        match &step {
            Formation::Formed => return steps,
            Formation::Conflict(why) => panic!("conflict forming a fresh cluster: {why}"),
            Formation::Wait(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            act => {
                rc::form(act, targets).await.expect("formation step");
                steps.push(step.clone());
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not formed; last step {step:?}; steps so far: {steps:#?}"
        );
    }
}

/// Sends `cmd` to one node, logged in as `t.credentials` when it has some.
async fn ask(t: &Target, cmd: &redis::Cmd) -> String {
    use redis::IntoConnectionInfo;
    let mut info = format!("redis://{}/", t.endpoint)
        .into_connection_info()
        .expect("url");
    if let Some(c) = &t.credentials {
        let login = info
            .redis_settings()
            .clone()
            .set_username(c.username.clone().unwrap_or_default())
            .set_password(c.password.clone());
        info = info.set_redis_settings(login);
    }
    let c = redis::Client::open(info).expect("client");
    let mut c = c.get_multiplexed_async_connection().await.expect("connect");
    cmd.query_async(&mut c).await.expect("command")
}

async fn cluster_info(t: &Target) -> String {
    ask(t, redis::cmd("CLUSTER").arg("INFO")).await
}

/// The version the server itself reports.
async fn server_version(t: &Target) -> String {
    let info = ask(t, redis::cmd("INFO").arg("server")).await;
    baton::engine::redis::info_field(&info, "redis_version")
        .expect("redis_version")
        .to_string()
}

/// A client that follows MOVED writing `<prefix><n>` = n, one key after another across every
/// slot, until `stop`: the acknowledged n, how many writes were refused (each retried after
/// 20 ms), and the longest time between two acknowledged writes.
fn spawn_writer(
    client: redis::cluster::ClusterClient,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<u64>, u32, Duration)> {
    tokio::spawn(async move {
        let mut c = client
            .get_async_connection()
            .await
            .expect("cluster connection");
        let (mut acked, mut refused) = (vec![], 0u32);
        let (mut last, mut gap) = (std::time::Instant::now(), Duration::ZERO);
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let r: redis::RedisResult<()> = redis::cmd("SET")
                .arg(format!("{prefix}{i}"))
                .arg(i)
                .query_async(&mut c)
                .await;
            match r {
                Ok(()) => {
                    acked.push(i);
                    gap = gap.max(last.elapsed());
                    last = std::time::Instant::now();
                }
                Err(_) => {
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            i += 1;
        }
        (acked, refused, gap)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_shards_form_and_a_graceful_failover_loses_no_acknowledged_write() {
    let env = Env::new("rcluster").await;
    let names: Vec<String> = (0..6).map(|i| format!("node-{i}")).collect();
    // node-3, shard 0's replica, already runs the upgrade's target: the failover hands the
    // shard from a 6.2.14 master to a 7.0.15 replica, as a rolling upgrade does.
    for n in &names {
        let image = if n == "node-3" {
            "redis:7.0.15"
        } else {
            "redis:6.2.14"
        };
        env.pods
            .create(&PostParams::default(), &node_pod(n, image))
            .await
            .expect("create pod");
    }
    let (mut addr, mut targets) = (BTreeMap::new(), BTreeMap::new());
    for n in &names {
        let ip = eventually(TIMEOUT, || async {
            let p = env.pods.get(n).await.ok()?;
            let s = p.status?;
            let ready = s
                .conditions?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then_some(s.pod_ip?)
        })
        .await
        .unwrap_or_else(|| panic!("{n} never became Ready"));
        let t = Target::new(Endpoint::new(ip, 6379));
        addr.insert(n.clone(), t.endpoint.to_string());
        targets.insert(t.endpoint.to_string(), t);
    }
    // node-0..2 serve the slots, node-3..5 replicate them.
    let shards: Vec<Shard> = (0..3)
        .map(|i| Shard {
            primary: addr[&names[i]].clone(),
            replicas: vec![addr[&names[i + 3]].clone()],
        })
        .collect();

    let steps = form(&shards, &targets).await;
    let count = |f: fn(&Formation) -> bool| steps.iter().filter(|s| f(s)).count();
    println!(
        "formed in {} steps: {} meet, {} addslots, {} replicate",
        steps.len(),
        count(|s| matches!(s, Formation::Meet { .. })),
        count(|s| matches!(s, Formation::AddSlots { .. })),
        count(|s| matches!(s, Formation::Replicate { .. }))
    );
    assert_eq!(
        count(|s| matches!(s, Formation::AddSlots { .. })),
        3,
        "{steps:#?}"
    );
    assert_eq!(
        count(|s| matches!(s, Formation::Replicate { .. })),
        3,
        "{steps:#?}"
    );
    for t in targets.values() {
        let info = cluster_info(t).await;
        assert!(info.contains("cluster_state:ok"), "{}: {info}", t.endpoint);
        assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
        assert!(info.contains("cluster_size:3"), "{info}");
    }
    // Forming again finds nothing to do.
    assert_eq!(
        rc::next_formation_step(&shards, &views(&targets).await),
        Formation::Formed
    );

    // A client that follows MOVED writes all the while.
    let nodes: Vec<String> = addr.values().map(|a| format!("redis://{a}/")).collect();
    let client = redis::cluster::ClusterClient::builder(nodes.clone())
        .retries(20)
        .build()
        .expect("cluster client");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(client.clone(), "k", stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (old, new) = (&shards[0].primary, &shards[0].replicas[0]);
    assert_eq!(server_version(&targets[old]).await, "6.2.14");
    assert_eq!(server_version(&targets[new]).await, "7.0.15");
    let before = views(&targets).await;
    let old_node = before[old].myself().expect("myself").clone();
    let new_id = before[new].myself().expect("myself").id.clone();
    rc::failover(&targets[new]).await.expect("CLUSTER FAILOVER");
    let confirmed = eventually(TIMEOUT, || async {
        let v: Vec<View> = views(&targets).await.into_values().collect();
        (v.len() == 6)
            .then(|| {
                rc::failover_done(
                    &v,
                    &new_id,
                    &old_node.id,
                    &old_node.slots,
                    old_node.config_epoch,
                )
            })
            .and_then(Result::ok)
    })
    .await;
    assert!(
        confirmed.is_some(),
        "the failover was never seen by every node"
    );
    let healthy = eventually(TIMEOUT, || async {
        let v: Vec<View> = views(&targets).await.into_values().collect();
        rc::health(&v).ok()
    })
    .await;
    assert!(
        healthy.is_some(),
        "the cluster never passed the gate after the failover"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, failed, gap) = writer.await.expect("writer");

    let mut c = client
        .get_async_connection()
        .await
        .expect("cluster connection");
    let lost = lost_writes(&mut c, "k", &acked).await;
    println!(
        "failover {old} -> {new}: {} writes acknowledged, {failed} refused, {} lost, \
         longest time between two acknowledged writes {} ms",
        acked.len(),
        lost.len(),
        gap.as_millis()
    );
    assert!(
        acked.len() > 100,
        "the writer hardly wrote ({})",
        acked.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged writes lost: {:?}",
        &lost[..lost.len().min(20)]
    );
    delete_namespace(&env.client, &env.ns).await;
}

/// The `ip:port` of every member of `cluster`, by pod name.
async fn cluster_members(env: &Env, cluster: &str) -> BTreeMap<String, String> {
    env.pods
        .list(&kube::api::ListParams::default().labels(&format!("baton.dev/cluster={cluster}")))
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.clone()?;
            Some((p.metadata.name.clone()?, format!("{ip}:6379")))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_forms_and_upgrades_shard_by_shard_even_when_the_operator_dies() {
    use baton::crd::{Cluster, ClusterTask};
    let env = Env::new("dbcluster").await;
    let clusters: kube::Api<Cluster> = kube::Api::namespaced(env.client.clone(), &env.ns);
    // Killed right after the second shard took its slots: the cluster is half formed.
    let mut first = env.operator("dbcluster-1", "db:cluster-addslots#2");
    create_cluster(
        &clusters,
        "events",
        json!({"datastore": {"type": "redis", "version": "6.2.14"}, "shards": 3, "replicasPerShard": 2}),
    )
    .await;
    let died = tokio::time::timeout(Duration::from_secs(240), first.child.wait()).await;
    assert!(
        died.is_ok(),
        "the operator never reached its second ADDSLOTS:\n{}",
        first.logs()
    );
    let op = env.operator("dbcluster-2", "");
    let formed = eventually(Duration::from_secs(180), || async {
        let s = clusters.get("events").await.ok()?.status?;
        let ready = s
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        (ready && s.task == Some(ClusterTask::None)).then_some(s)
    })
    .await;
    let Some(status) = formed else {
        panic!(
            "the cluster never became Ready: {:#?}\n{}",
            clusters.get("events").await.ok().and_then(|c| c.status),
            op.logs()
        );
    };

    // Status names each shard as the nodes see it: a master, one replica, a third of the slots.
    assert_eq!(status.shards.len(), 3, "{status:#?}");
    assert_eq!(status.version.as_deref(), Some("6.2.14"));
    let mut slots = 0u32;
    for (n, shard) in status.shards.iter().enumerate() {
        assert_eq!(shard.instance, format!("events-shard-{n}"));
        assert!(
            shard.primary.is_some() && shard.replicas.len() == 1,
            "{shard:#?}"
        );
        assert_eq!(shard.versions.len(), 2, "{shard:#?}");
        assert!(shard.versions.values().all(|v| v == "6.2.14"), "{shard:#?}");
        for r in &shard.slots {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            slots += b.parse::<u32>().unwrap() - a.parse::<u32>().unwrap() + 1;
        }
    }
    assert_eq!(slots, 16384, "{status:#?}");
    env.wait_event("events", "ClusterFormed", "3 shards").await;

    // Every node says the same, and the application account (from the Cluster's Secret)
    // reads and writes every slot through a client that follows MOVED.
    let auth = workload::wait_auth(&env.client, &env.ns, "events-shard-0").await;
    let members = cluster_members(&env, "events").await;
    assert_eq!(members.len(), 6, "{members:?}");
    let app = Some(baton::engine::Credentials {
        username: Some(auth.user.clone()),
        password: auth.password.clone(),
    });
    for (pod, a) in &members {
        let (host, _) = a.split_once(':').unwrap();
        let t = Target {
            credentials: app.clone(),
            ..Target::new(Endpoint::new(host, 6379))
        };
        let info = cluster_info(&t).await;
        for want in [
            "cluster_state:ok",
            "cluster_slots_assigned:16384",
            "cluster_size:3",
        ] {
            assert!(info.contains(want), "{pod}: {info}");
        }
    }
    let (client, mut c) = cluster_client(&env, "events").await;
    for i in 0..1000u32 {
        let () = redis::cmd("SET")
            .arg(format!("key{i}"))
            .arg(i)
            .query_async(&mut c)
            .await
            .unwrap_or_else(|e| panic!("SET key{i}: {e}"));
    }
    for i in 0..1000u32 {
        let v: Option<u32> = redis::cmd("GET")
            .arg(format!("key{i}"))
            .query_async(&mut c)
            .await
            .expect("GET");
        assert_eq!(v, Some(i));
    }
    // The shards are Active DatabaseInstances that never repointed a member themselves.
    for n in 0..3 {
        let s = env.status(&format!("events-shard-{n}")).await;
        assert_eq!(s.phase, Some(baton::crd::InstancePhase::Active), "{s:#?}");
    }

    // The upgrade to 7.0.15, under a client writing across every slot all the while, with an
    // operator killed at each kind of step: right after it recorded a member's restart (before
    // the pod patch), right after the patch, right after it recorded a failover's intent and
    // right after it sent one, until every shard has been through the failover points. Each
    // new operator resumes from status (its first pass of a point is the next one still to
    // do).
    drop(op);
    let (restart_intent, restarted, intent, failover) = (
        "api:cluster-status:restart-intent#1",
        "api:cluster-restart@*#1",
        "api:cluster-status:failover-intent#1",
        "db:cluster-failover#1",
    );
    let crashes = [
        restart_intent, // shard 0's replica
        restarted,
        intent, // shard 0
        failover,
        restart_intent, // shard 0's old master
        restarted,
        intent, // shard 1
        failover,
        restart_intent, // shard 1's old master
        intent,         // shard 2
        failover,
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(client.clone(), "u", stop.clone());
    // Never more than one member of a shard down at once, sampled all along.
    let sampler = tokio::spawn({
        let (pods, stop) = (env.pods.clone(), stop.clone());
        async move {
            let mut worst = 0usize;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(list) = pods
                    .list(&kube::api::ListParams::default().labels("baton.dev/cluster=events"))
                    .await
                {
                    let mut down: BTreeMap<String, usize> = BTreeMap::new();
                    for p in list.items {
                        let ready = p
                            .status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| {
                                c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            });
                        let shard = p
                            .labels()
                            .get("baton.dev/instance")
                            .cloned()
                            .unwrap_or_default();
                        *down.entry(shard).or_default() += usize::from(!ready);
                    }
                    worst = worst.max(down.values().copied().max().unwrap_or(0));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            worst
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    set_version(&clusters, "events", "7.0.15").await;
    let killed = kill_at_each(&env, &clusters, "events", "dbcluster-crash", &crashes).await;
    let op = env.operator("dbcluster-last", "");
    let done = eventually(Duration::from_secs(300), || async {
        let s = clusters.get("events").await.ok()?.status?;
        (s.version.as_deref() == Some("7.0.15")
            && s.task == Some(ClusterTask::None)
            && s.upgrade.is_none())
        .then_some(s)
    })
    .await;
    let Some(status) = done else {
        panic!(
            "the upgrade never finished: {:#?}\n{}",
            clusters.get("events").await.ok().and_then(|c| c.status),
            op.logs()
        );
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, refused, gap) = writer.await.expect("writer");
    let worst = sampler.await.expect("sampler");
    for shard in &status.shards {
        assert!(shard.versions.values().all(|v| v == "7.0.15"), "{shard:#?}");
    }
    for (pod, a) in cluster_members(&env, "events").await {
        let (host, _) = a.split_once(':').unwrap();
        let t = Target {
            credentials: app.clone(),
            ..Target::new(Endpoint::new(host, 6379))
        };
        assert_eq!(server_version(&t).await, "7.0.15", "{pod}");
    }
    let events: Vec<String> = env
        .events("events")
        .await
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    let failovers = events.iter().filter(|r| *r == "ShardFailedOver").count();
    assert!(
        failovers >= 3,
        "one graceful failover per shard: {events:?}"
    );
    for reason in ["UpgradeStarted", "ShardUpgraded", "UpgradeSucceeded"] {
        assert!(
            events.iter().any(|r| r == reason),
            "no {reason}: {events:?}"
        );
    }
    let lost = lost_writes(&mut c, "u", &acked).await;
    println!(
        "cluster upgrade 6.2.14 -> 7.0.15 ({killed} operators killed at restart and failover points): {} \
         writes acknowledged, {refused} refused, {} lost, at most {worst} member of a shard down \
         at once; longest time between two acknowledged writes {} ms (it includes the \
         operators' restarts)",
        acked.len(),
        lost.len(),
        gap.as_millis()
    );
    assert!(
        acked.len() > 100,
        "the writer hardly wrote ({})",
        acked.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged writes lost: {:?}",
        &lost[..lost.len().min(20)]
    );
    assert!(worst <= 1, "{worst} members of one shard were down at once");
    // Settled after the upgrade, the Cluster and its shards cost the API server no writes.
    env.assert_settled_cluster_writes_nothing("events", &op, 4)
        .await;
    delete_namespace(&env.client, &env.ns).await;
}

/// Waits up to `timeout` for Cluster `name`'s status to satisfy `done`.
async fn wait_cluster(
    clusters: &kube::Api<baton::crd::Cluster>,
    name: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&baton::crd::ClusterStatus) -> bool,
    logs: impl Fn() -> String,
) -> baton::crd::ClusterStatus {
    let got = eventually(timeout, || async {
        clusters.get(name).await.ok()?.status.filter(|s| done(s))
    })
    .await;
    match got {
        Some(s) => s,
        None => panic!(
            "{what} never happened: {:#?}\n{}",
            clusters.get(name).await.ok().and_then(|c| c.status),
            logs()
        ),
    }
}

fn ready(s: &baton::crd::ClusterStatus) -> bool {
    s.conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
        && s.task == Some(baton::crd::ClusterTask::None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_cannot_start_stops_the_cluster_upgrade_and_reverting_recovers() {
    sick_replicas_stop_the_upgrade_and_reverting_recovers("dbcsick", 1).await;
}

/// With two shards at once both shards' replicas are moved side by side onto a build that
/// never starts: the older restart fails the upgrade, and the revert brings both back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wave_whose_replicas_cannot_start_stops_and_reverting_recovers_both() {
    sick_replicas_stop_the_upgrade_and_reverting_recovers("dbcsickwave", 2).await;
}

async fn sick_replicas_stop_the_upgrade_and_reverting_recovers(prefix: &str, at_once: usize) {
    use baton::crd::Cluster;
    let env = Env::new(prefix).await;
    env.add_broken_version(REDIS).await;
    let op = env.operator(prefix, "");
    let clusters: kube::Api<Cluster> = kube::Api::namespaced(env.client.clone(), &env.ns);
    create_cluster(
        &clusters,
        "sick",
        json!({"datastore": {"type": "redis", "version": "6.2.14"}, "shards": 2,
                 "replicasPerShard": 2, "upgradePolicy": {"stepTimeoutSeconds": 10},
                 "maxUnavailableShards": at_once}),
    )
    .await;
    let logs = || op.logs();
    let before = wait_cluster(&clusters, "sick", TIMEOUT, "formation", ready, logs).await;
    let masters: Vec<Option<String>> = before.shards.iter().map(|s| s.primary.clone()).collect();

    let to = |v: &str| json!({"spec": {"datastore": {"version": v}}});
    let patch = |v: Value| {
        let clusters = clusters.clone();
        async move {
            clusters
                .patch(
                    "sick",
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(v),
                )
                .await
                .expect("patch version");
        }
    };
    patch(to(REDIS.broken)).await;
    let failed = wait_cluster(
        &clusters,
        "sick",
        TIMEOUT,
        "the upgrade's failure",
        |s| s.upgrade.as_ref().is_some_and(|u| u.failed.is_some()),
        logs,
    )
    .await;
    let u = failed.upgrade.clone().expect("upgrade");
    let why = u.failed.clone().unwrap_or_default();
    assert!(
        why.contains("sick-shard-0-1") && why.contains("10 s"),
        "{why}"
    );
    assert_eq!(u.shard, 0, "{u:#?}");
    // Both shards of a wave were restarting when the first one's deadline passed.
    let restarting: Vec<&str> = u.restarting.iter().map(|r| r.member.as_str()).collect();
    let want = ["sick-shard-0-1", "sick-shard-1-1"];
    assert_eq!(restarting, want[..at_once], "{u:#?}");
    env.wait_event("sick", "UpgradeFailed", "sick-shard-0-1")
        .await;
    // The master was never touched: it still serves its slots on the source version.
    let auth = workload::wait_auth(&env.client, &env.ns, "sick-shard-0").await;
    let members = cluster_members(&env, "sick").await;
    let master = masters[0].clone().expect("shard 0 master");
    let t = Target {
        credentials: Some(baton::engine::Credentials {
            username: Some(auth.user.clone()),
            password: auth.password.clone(),
        }),
        ..Target::new(Endpoint::new(
            members[&master].split(':').next().expect("an address"),
            6379,
        ))
    };
    assert_eq!(server_version(&t).await, "6.2.14");
    let role = ask(&t, redis::cmd("INFO").arg("replication")).await;
    assert!(role.contains("role:master"), "{role}");

    // Back to the source: the broken replica returns to it and the cluster is whole again.
    patch(to(REDIS.source)).await;
    let healed = wait_cluster(
        &clusters,
        "sick",
        TIMEOUT,
        "the revert",
        |s| ready(s) && s.upgrade.is_none() && s.shards.iter().all(|sh| sh.versions.len() == 2),
        logs,
    )
    .await;
    for shard in &healed.shards {
        assert!(shard.versions.values().all(|v| v == "6.2.14"), "{shard:#?}");
    }
    let after: Vec<Option<String>> = healed.shards.iter().map(|s| s.primary.clone()).collect();
    assert_eq!(after, masters, "no shard changed master");
    env.wait_event("sick", "UpgradeReverted", "6.2.14").await;
    delete_namespace(&env.client, &env.ns).await;
}

/// The acknowledged `<prefix><n>` = n writes that do not read back (through MOVED).
async fn lost_writes(
    c: &mut redis::cluster_async::ClusterConnection,
    prefix: &str,
    acked: &[u64],
) -> Vec<u64> {
    let mut lost = vec![];
    for i in acked {
        let v: Option<u64> = redis::cmd("GET")
            .arg(format!("{prefix}{i}"))
            .query_async(c)
            .await
            .expect("GET");
        if v != Some(*i) {
            lost.push(*i);
        }
    }
    lost
}

/// A cluster-aware client (following MOVED) of `cluster`'s members, logged in with the
/// application account, and a connection of it.
async fn cluster_client(
    env: &Env,
    cluster: &str,
) -> (
    redis::cluster::ClusterClient,
    redis::cluster_async::ClusterConnection,
) {
    let auth = workload::wait_auth(&env.client, &env.ns, &format!("{cluster}-shard-0")).await;
    let nodes: Vec<String> = cluster_members(env, cluster)
        .await
        .values()
        .map(|a| format!("redis://{a}/"))
        .collect();
    let client = redis::cluster::ClusterClient::builder(nodes)
        .username(auth.user.clone())
        .password(auth.password.clone())
        .retries(10)
        .build()
        .expect("cluster client");
    let c = client
        .get_async_connection()
        .await
        .expect("cluster connection");
    (client, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_request_holds_rolls_back_cancels_and_upgrades_a_cluster_with_an_instance() {
    use baton::crd::{
        Cluster, InstancePhase, RequestPhase, ShardStage, UpgradeRequest, UpgradeResult,
    };
    let env = Env::new("dbcreq").await;
    let op = env.operator("dbcreq", "");
    let clusters: kube::Api<Cluster> = kube::Api::namespaced(env.client.clone(), &env.ns);
    create_cluster(
        &clusters,
        "events",
        json!({"datastore": {"type": "redis", "version": "6.2.14"}, "shards": 2, "replicasPerShard": 2}),
    )
    .await;
    // A cluster of one shard of one member: no replica to hand its slots to.
    let tiny: Cluster = serde_json::from_value(json!({
        "apiVersion": "baton.dev/v1alpha1", "kind": "Cluster",
        "metadata": {"name": "tiny"},
        "spec": {"datastore": {"type": "redis", "version": "6.2.14"}, "shards": 1, "replicasPerShard": 1},
    }))
    .expect("cluster");
    clusters
        .create(&PostParams::default(), &tiny)
        .await
        .expect("create tiny");
    env.apply_example("redis-ha.yaml");
    let logs = || op.logs();
    let before = wait_cluster(&clusters, "events", TIMEOUT, "formation", ready, logs).await;
    let masters: Vec<Option<String>> = before.shards.iter().map(|s| s.primary.clone()).collect();
    env.wait_for("sessions", InstancePhase::Active, SOURCE, &op)
        .await;
    let versions = |s: &baton::crd::ClusterStatus| {
        s.shards
            .iter()
            .map(|sh| {
                let master = sh.primary.clone().unwrap_or_default();
                let replicas: Vec<&String> = sh
                    .versions
                    .iter()
                    .filter(|(p, _)| **p != master)
                    .map(|(_, v)| v)
                    .collect();
                (
                    sh.versions.get(&master).cloned(),
                    replicas.len(),
                    replicas.iter().all(|v| *v == "7.0.15"),
                )
            })
            .collect::<Vec<_>>()
    };

    // A shard's member is no request's target on its own: the whole Cluster is.
    let shard_req: UpgradeRequest = serde_json::from_value(json!({
        "apiVersion": "baton.dev/v1alpha1", "kind": "UpgradeRequest",
        "metadata": {"name": "one-shard"},
        "spec": {"targets": {"instances": ["events-shard-0"]}, "targetVersion": "7.0.15"},
    }))
    .expect("request");
    requests(&env)
        .create(&PostParams::default(), &shard_req)
        .await
        .expect("create");
    let refused = wait_request(&env, "one-shard", RequestPhase::Failed, &op).await;
    let msg = &job(&refused, "events-shard-0").message;
    assert!(
        msg.as_deref()
            .unwrap_or_default()
            .contains("shard of Cluster events"),
        "{msg:?}"
    );

    // Action Upgrade: every shard's replicas move, no master is handed over, and the request
    // waits in AwaitingCommit; Rollback returns them.
    let canary: UpgradeRequest = serde_json::from_value(json!({
        "apiVersion": "baton.dev/v1alpha1", "kind": "UpgradeRequest",
        "metadata": {"name": "events-canary"},
        "spec": {"targets": {"clusters": ["events"]}, "targetVersion": "7.0.15", "action": "Upgrade"},
    }))
    .expect("request");
    requests(&env)
        .create(&PostParams::default(), &canary)
        .await
        .expect("create");
    let held = wait_request(&env, "events-canary", RequestPhase::AwaitingCommit, &op).await;
    let j = job(&held, "events");
    assert_eq!(j.step.as_deref(), Some("AwaitingCommit"), "{j:?}");
    let s = wait_cluster(
        &clusters,
        "events",
        TIMEOUT,
        "every replica on 7.0.15",
        |s| versions(s).iter().all(|(_, n, all)| *n == 1 && *all),
        logs,
    )
    .await;
    for (master, _, _) in versions(&s) {
        assert_eq!(master.as_deref(), Some("6.2.14"), "{s:#?}");
    }
    env.wait_event("events", "AwaitingCommit", "no master")
        .await;
    set_action(&env, "events-canary", "Rollback").await;
    let back = wait_request(&env, "events-canary", RequestPhase::RolledBack, &op).await;
    assert_eq!(job(&back, "events").phase, RequestPhase::RolledBack);
    let s = wait_cluster(&clusters, "events", TIMEOUT, "the rollback", ready, logs).await;
    for shard in &s.shards {
        assert!(shard.versions.values().all(|v| v == "6.2.14"), "{shard:#?}");
    }
    let now: Vec<Option<String>> = s.shards.iter().map(|s| s.primary.clone()).collect();
    assert_eq!(now, masters, "no shard changed master");
    assert_eq!(
        s.last_upgrade.as_ref().map(|l| l.result),
        Some(UpgradeResult::RolledBack)
    );

    // Writers to the Cluster and the instance from here to the end.
    let (client, mut c) = cluster_client(&env, "events").await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(client.clone(), "b", stop.clone());
    let (stop_inst, inst_writes) = env.writer("sessions");

    // Cancel while shard 1's replica restarts: shard 0 (handed over) stays on 7.0.15, shard 1
    // goes back to 6.2.14, and the cluster is whole.
    let run: UpgradeRequest = serde_json::from_value(json!({
        "apiVersion": "baton.dev/v1alpha1", "kind": "UpgradeRequest",
        "metadata": {"name": "events-cancelled"},
        "spec": {"targets": {"clusters": ["events"]}, "targetVersion": "7.0.15"},
    }))
    .expect("request");
    requests(&env)
        .create(&PostParams::default(), &run)
        .await
        .expect("create");
    wait_cluster(
        &clusters,
        "events",
        TIMEOUT,
        "shard 1's replica restarting",
        |s| {
            s.upgrade.as_ref().is_some_and(|u| {
                u.shard == 1 && u.stage == ShardStage::RestartReplicas && !u.restarting.is_empty()
            })
        },
        logs,
    )
    .await;
    set_action(&env, "events-cancelled", "Cancel").await;
    let r = wait_request(&env, "events-cancelled", RequestPhase::Cancelled, &op).await;
    let j = job(&r, "events");
    assert_eq!(j.phase, RequestPhase::Cancelled, "{j:?}");
    let s = wait_cluster(&clusters, "events", TIMEOUT, "the cancel", ready, logs).await;
    let uniform = |n: usize, v: &str| s.shards[n].versions.values().all(|x| x == v);
    assert!(uniform(0, "7.0.15") && uniform(1, "6.2.14"), "{s:#?}");
    assert_eq!(
        s.last_upgrade.as_ref().map(|l| l.result),
        Some(UpgradeResult::Cancelled)
    );

    // The batch: the instance and the (half-upgraded) Cluster, two at a time.
    env.apply_example("upgrade-fleet.yaml");
    let held = wait_request(&env, "fleet-to-7", RequestPhase::AwaitingCommit, &op).await;
    for target in ["sessions", "events"] {
        assert_eq!(job(&held, target).phase, RequestPhase::AwaitingCommit);
    }
    let s = clusters
        .get("events")
        .await
        .expect("cluster")
        .status
        .expect("status");
    let shard1 = &s.shards[1];
    let master = shard1.primary.clone().unwrap_or_default();
    assert!(
        shard1
            .versions
            .iter()
            .all(|(p, v)| v == if *p == master { "6.2.14" } else { "7.0.15" }),
        "held: shard 1's replica upgraded, its master not: {shard1:#?}"
    );
    set_action(&env, "fleet-to-7", "Commit").await;
    let done = wait_request(&env, "fleet-to-7", RequestPhase::Succeeded, &op).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    stop_inst.cancel();
    let (acked, refused, gap) = writer.await.expect("writer");
    let report = inst_writes.await.expect("writer");
    let st = done.status.clone().expect("status");
    assert_eq!((st.succeeded, st.failed), (2, 0), "{st:#?}");
    assert_eq!(st.progress.as_deref(), Some("2/2"));
    let j = job(&done, "events");
    assert_eq!(j.kind, baton::crd::TargetKind::Cluster);
    assert_eq!(
        (j.source_version.as_deref(), j.target_version.as_deref()),
        (Some("6.2.14"), Some("7.0.15"))
    );
    env.assert_all_run("sessions", TARGET).await;
    assert_nothing_lost(&env, "sessions", &[&report]).await;
    let s = clusters
        .get("events")
        .await
        .expect("cluster")
        .status
        .expect("status");
    assert_eq!(s.version.as_deref(), Some("7.0.15"));
    for shard in &s.shards {
        assert!(shard.versions.values().all(|v| v == "7.0.15"), "{shard:#?}");
    }
    let failovers = env
        .events("events")
        .await
        .into_iter()
        .filter(|(r, _)| r == "ShardFailedOver")
        .count();
    assert!(failovers >= 2, "one graceful failover per shard");
    let now: Vec<Option<String>> = s.shards.iter().map(|s| s.primary.clone()).collect();
    for (n, (was, is)) in masters.iter().zip(&now).enumerate() {
        assert_ne!(was, is, "shard {n}'s master never handed over");
    }
    let lost = lost_writes(&mut c, "b", &acked).await;
    println!(
        "requests over a 2 x 2 cluster (cancel, then with an instance, held and committed): cluster {} writes acknowledged, {refused} refused, {} lost, longest gap {} ms",
        acked.len(),
        lost.len(),
        gap.as_millis()
    );
    assert!(acked.len() > 100, "the writer hardly wrote");
    assert!(
        lost.is_empty(),
        "acknowledged writes lost: {:?}",
        &lost[..lost.len().min(20)]
    );

    // GitOps: the Cluster's spec was not rewritten, and the drift is explained.
    let cond = eventually(Duration::from_secs(30), || async {
        clusters
            .get("events")
            .await
            .ok()?
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "VersionApplied" && c.message.contains("fleet-to-7"))
    })
    .await
    .expect("VersionApplied explains the spec drift");
    assert!(
        cond.message
            .contains("set spec.datastore.version to 7.0.15"),
        "{}",
        cond.message
    );

    // The one-member cluster: its spec cannot move it (that would be an outage), and says how;
    // a request of type InPlace restarts its member on the new version.
    wait_cluster(&clusters, "tiny", TIMEOUT, "tiny's formation", ready, logs).await;
    set_version(&clusters, "tiny", "7.0.15").await;
    let refused = wait_cluster(
        &clusters,
        "tiny",
        TIMEOUT,
        "the refusal of tiny's spec upgrade",
        |s| {
            s.conditions.iter().any(|c| {
                c.type_ == "VersionApplied" && c.status == "False" && c.message.contains("InPlace")
            })
        },
        logs,
    )
    .await;
    assert!(refused.upgrade.is_none() && refused.version.as_deref() == Some("6.2.14"));
    let in_place: UpgradeRequest = serde_json::from_value(json!({
        "apiVersion": "baton.dev/v1alpha1", "kind": "UpgradeRequest",
        "metadata": {"name": "tiny-in-place"},
        "spec": {"targets": {"clusters": ["tiny"]}, "targetVersion": "7.0.15", "type": "InPlace",
                 "action": "UpgradeAutoCommit"},
    }))
    .expect("request");
    requests(&env)
        .create(&PostParams::default(), &in_place)
        .await
        .expect("create");
    wait_request(&env, "tiny-in-place", RequestPhase::Succeeded, &op).await;
    let s = wait_cluster(
        &clusters,
        "tiny",
        TIMEOUT,
        "tiny on 7.0.15 and applied",
        |s| {
            ready(s)
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "VersionApplied" && c.status == "True")
        },
        logs,
    )
    .await;
    assert_eq!(s.version.as_deref(), Some("7.0.15"));
    assert!(
        s.shards[0].versions.values().all(|v| v == "7.0.15"),
        "{s:#?}"
    );
    assert_eq!(s.shards[0].slots, ["0-16383"]);
    delete_namespace(&env.client, &env.ns).await;
}

/// Whether `user` logs in to the node at `addr` (`ip:port`) with `password`.
async fn node_logs_in(addr: &str, user: &str, password: &str) -> bool {
    let Ok(c) = redis::Client::open(format!("redis://{addr}/")) else {
        return false;
    };
    let Ok(mut c) = c.get_multiplexed_async_connection().await else {
        return false;
    };
    redis::cmd("AUTH")
        .arg(user)
        .arg(password)
        .query_async::<()>(&mut c)
        .await
        .is_ok()
}

/// A password change on a Cluster, the way a platform team rotates one: edit the shared
/// Secret. Every shard sets the new passwords on its nodes online (no node restarts, no master
/// changes): the old passwords stop working on every node, a cluster client logged in with the
/// new ones writes across every slot, and what a client on the old password had written is
/// all there. The Cluster stays formed and Ready once every shard has applied them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_cluster_password_is_served_online_and_clients_switch_over() {
    use baton::crd::Cluster;
    use k8s_openapi::api::core::v1::Secret;
    let env = Env::new("dbcrot").await;
    let op = env.operator("dbcrot", "");
    let clusters: kube::Api<Cluster> = kube::Api::namespaced(env.client.clone(), &env.ns);
    create_cluster(
        &clusters,
        "rot",
        json!({"datastore": {"type": "redis", "version": SOURCE}, "shards": 2, "replicasPerShard": 2}),
    )
    .await;
    let logs = || op.logs();
    let before = wait_cluster(&clusters, "rot", TIMEOUT, "formation", ready, logs).await;
    let masters: Vec<Option<String>> = before.shards.iter().map(|s| s.primary.clone()).collect();
    let shards = ["rot-shard-0", "rot-shard-1"];
    let mut restarts = BTreeMap::new();
    for s in shards {
        restarts.extend(env.restarts(s).await);
    }
    let old = workload::wait_auth(&env.client, &env.ns, "rot-shard-0").await;

    // A client on the old password writes until the change is applied.
    let (client, _) = cluster_client(&env, "rot").await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(client, "old-", stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let secrets = kube::Api::<Secret>::namespaced(env.client.clone(), &env.ns);
    env.rotate_passwords("rot-credentials").await;
    let applied = eventually(Duration::from_secs(120), || async {
        let want = secrets.get("rot-credentials").await.ok()?.data?;
        for s in shards {
            let have = secrets
                .get(&format!("{s}-credentials-applied"))
                .await
                .ok()?
                .data?;
            let st = env.instances.get(s).await.ok()?.status?;
            let ok = st
                .conditions
                .iter()
                .any(|c| c.type_ == "CredentialsReady" && c.reason == "Ready");
            if have != want || !ok {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert!(
        applied.is_some(),
        "the changed Secret was never applied by every shard:\n{}",
        tail(&op.logs(), 40)
    );
    stop.store(true, Ordering::Relaxed);
    let (old_acked, _, _) = writer.await.expect("old writer");
    assert!(old_acked.len() > 20, "the old client barely wrote");

    // Every node: the old passwords are refused, the new ones work.
    let new = workload::wait_auth(&env.client, &env.ns, "rot-shard-0").await;
    assert_eq!(new.password, ROTATED_PASSWORD);
    for (pod, addr) in cluster_members(&env, "rot").await {
        assert!(
            !node_logs_in(&addr, &old.user, &old.password).await,
            "{pod}: the old application password still works"
        );
        assert!(
            !node_logs_in(&addr, "baton", &old.admin_password).await,
            "{pod}: Baton's old password still works"
        );
        assert!(
            node_logs_in(&addr, &new.user, &new.password).await,
            "{pod}: the new application password is refused"
        );
        assert!(
            node_logs_in(&addr, "baton", &new.admin_password).await,
            "{pod}: Baton's new password is refused"
        );
    }
    // The client switches over: logged in with the new password, it writes across every slot.
    let (client, mut c) = cluster_client(&env, "rot").await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(client, "new-", stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (new_acked, _, _) = writer.await.expect("new writer");
    assert!(new_acked.len() > 20, "the new client barely wrote");
    assert_eq!(
        lost_writes(&mut c, "old-", &old_acked).await,
        Vec::<u64>::new()
    );
    assert_eq!(
        lost_writes(&mut c, "new-", &new_acked).await,
        Vec::<u64>::new()
    );

    let after = wait_cluster(&clusters, "rot", TIMEOUT, "Ready again", ready, logs).await;
    let now: Vec<Option<String>> = after.shards.iter().map(|s| s.primary.clone()).collect();
    assert_eq!(now, masters, "no shard changed master");
    let mut restarts_after = BTreeMap::new();
    for s in shards {
        restarts_after.extend(env.restarts(s).await);
    }
    assert_eq!(restarts_after, restarts, "no node restarted");
    delete_namespace(&env.client, &env.ns).await;
}

/// A cluster client over TLS, verifying each node's chain against the Cluster's CA. The test
/// certificate names the Service, not the nodes (as a cert-manager one for a Service does), so
/// redis-rs's cluster client, which checks the name, cannot be used: a key goes to the node the
/// last `MOVED` named for its slot, as a cluster client's slot map does.
struct TlsCluster {
    auth: workload::Auth,
    nodes: Vec<std::net::IpAddr>,
    owner: BTreeMap<u16, std::net::IpAddr>,
    conns: BTreeMap<std::net::IpAddr, workload::Conn>,
}

impl TlsCluster {
    async fn new(env: &Env, cluster: &str) -> TlsCluster {
        let auth = workload::wait_auth(&env.client, &env.ns, &format!("{cluster}-shard-0")).await;
        assert!(auth.ca.is_some(), "the client verifies the CA");
        let nodes = cluster_members(env, cluster)
            .await
            .values()
            .filter_map(|a| a.rsplit_once(':')?.0.parse().ok())
            .collect();
        TlsCluster {
            auth,
            nodes,
            owner: BTreeMap::new(),
            conns: BTreeMap::new(),
        }
    }

    /// Sends `SET key n` (`Some`) or reads `key` (`None`), following up to 3 redirects.
    async fn ask(&mut self, key: &str, set: Option<u64>) -> Result<Option<u64>, String> {
        let slot = crc16::State::<crc16::XMODEM>::calculate(key.as_bytes()) % 16384;
        let mut ip = self
            .owner
            .get(&slot)
            .copied()
            .unwrap_or(self.nodes[slot as usize % self.nodes.len()]);
        for _ in 0..4 {
            if !self.conns.contains_key(&ip) {
                let c = workload::connect(workload::Datastore::Redis, ip, &self.auth)
                    .await
                    .ok_or_else(|| format!("cannot connect to {ip}"))?;
                self.conns.insert(ip, c);
            }
            let c = self.conns.get_mut(&ip).expect("connected");
            let r = match set {
                Some(n) => c.write(key, n).await.map(|()| Some(n)),
                None => c
                    .read(&[key.to_string()])
                    .await
                    .map(|v| v.first().copied().flatten()),
            };
            match r {
                Err(e) if e.to_lowercase().contains("moved") => {
                    // `MOVED <slot> <ip>:<port>`: the node that serves the slot now.
                    let to = e
                        .split_whitespace()
                        .last()
                        .and_then(|a| a.rsplit_once(':')?.0.parse().ok())
                        .ok_or_else(|| format!("unreadable redirect: {e}"))?;
                    self.owner.insert(slot, to);
                    ip = to;
                }
                Err(e) => {
                    self.conns.remove(&ip);
                    return Err(e);
                }
                Ok(v) => return Ok(v),
            }
        }
        Err(format!("{key}: too many redirects"))
    }
}

/// `spec.tls` on a Cluster: every node serves clients, the cluster bus and replication over
/// TLS only. A certificate issued for server auth alone is refused with the reason (the nodes
/// present it to each other). A plain-text client and a client trusting another CA are
/// refused; the Cluster upgrades (a hotfix, shard by shard, each shard failed over) under a client that
/// verifies the chain, losing no acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_cluster_upgrades_under_a_verifying_client_and_refuses_plain_text() {
    use baton::crd::Cluster;
    use baton_testkit::certs;
    let env = Env::new("dbctls").await;
    // One certificate for every node, which they also present to each other on the bus.
    let (ca, _, _) = certs::certificates(env.dir.as_path());
    certs::allow_client_auth(env.dir.as_path());
    let (crt, key) = certs::issue(env.dir.as_path());
    certs::create_tls_secret(&env, "events-tls", &ca, &crt, &key).await;
    env.add_redis_hotfix().await;
    let op = env.operator("dbctls", "");
    let clusters: kube::Api<Cluster> = kube::Api::namespaced(env.client.clone(), &env.ns);
    create_cluster(
        &clusters,
        "events",
        json!({"datastore": {"type": "redis", "version": TARGET}, "shards": 2, "replicasPerShard": 2,
                 "tls": {"secretName": "events-tls"}}),
    )
    .await;
    let logs = || op.logs();
    let before = wait_cluster(&clusters, "events", TIMEOUT, "formation", ready, logs).await;
    let masters: Vec<Option<String>> = before.shards.iter().map(|s| s.primary.clone()).collect();

    // A certificate issued for server auth alone: the nodes would refuse each other's on the
    // bus, and the Cluster says so instead of forming.
    let servers_only = tempfile::tempdir().expect("tempdir");
    let (ca, crt, key) = certs::certificates(servers_only.path());
    certs::create_tls_secret(&env, "servers-only", &ca, &crt, &key).await;
    let refused: Cluster = serde_json::from_value(json!({
        "apiVersion": "baton.dev/v1alpha1", "kind": "Cluster",
        "metadata": {"name": "refused"},
        "spec": {"datastore": {"type": "redis", "version": TARGET}, "shards": 1, "replicasPerShard": 1,
                 "tls": {"secretName": "servers-only"}},
    }))
    .expect("cluster");
    clusters
        .create(&PostParams::default(), &refused)
        .await
        .expect("create the refused cluster");
    wait_cluster(
        &clusters,
        "refused",
        TIMEOUT,
        "the refusal of a server-only certificate",
        |s| {
            s.message
                .as_deref()
                .is_some_and(|m| m.contains("server authentication only"))
        },
        logs,
    )
    .await;
    clusters
        .delete("refused", &Default::default())
        .await
        .expect("delete the refused cluster");

    // Plain text: nothing listens for it. Another CA: refused by the client's verification.
    let auth = workload::wait_auth(&env.client, &env.ns, "events-shard-0").await;
    let other = tempfile::tempdir().expect("tempdir");
    let (other_ca, _, _) = certs::certificates(other.path());
    for (pod, addr) in cluster_members(&env, "events").await {
        assert!(
            !node_logs_in(&addr, &auth.user, &auth.password).await,
            "{pod}: a plain-text client logged in"
        );
        let ip = addr.rsplit_once(':').expect("ip:port").0;
        assert!(
            baton::tls::connect(ip, 6379, other_ca.as_bytes())
                .await
                .is_err(),
            "{pod}: a client trusting another CA connected"
        );
    }

    // The upgrade, under a client that verifies the chain.
    let mut client = TlsCluster::new(&env, "events").await;
    let stop = Arc::new(AtomicBool::new(false));
    let writing = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut acked, mut refused) = (vec![], 0u32);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match client.ask(&format!("tls-{i}"), Some(i)).await {
                    Ok(_) => acked.push(i),
                    Err(_) => {
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                i += 1;
            }
            (client, acked, refused)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    set_version(&clusters, "events", "7.0.15-hotfix1").await;
    let after = wait_cluster(
        &clusters,
        "events",
        Duration::from_secs(300),
        "the upgrade over TLS",
        |s| ready(s) && s.version.as_deref() == Some("7.0.15-hotfix1") && s.upgrade.is_none(),
        logs,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut client, acked, refused) = writing.await.expect("writer");
    println!(
        "over TLS: {} acknowledged, {refused} refused during the upgrade",
        acked.len()
    );
    assert!(acked.len() > 50, "the client barely wrote");
    let now: Vec<Option<String>> = after.shards.iter().map(|s| s.primary.clone()).collect();
    assert_ne!(
        now, masters,
        "every shard was handed to an upgraded replica"
    );
    let mut lost = vec![];
    for i in &acked {
        // A refused connection is retried (a node that just restarted); what it answers is final.
        let mut got = Err(String::new());
        for _ in 0..50 {
            got = client.ask(&format!("tls-{i}"), None).await;
            if got.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if got != Ok(Some(*i)) {
            lost.push(*i);
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {lost:?}",
        lost.len()
    );
    delete_namespace(&env.client, &env.ns).await;
}

/// Creates Cluster `name` with `spec` (JSON, the `spec` object).
async fn create_cluster(clusters: &kube::Api<baton::crd::Cluster>, name: &str, spec: Value) {
    let cluster: baton::crd::Cluster = serde_json::from_value(json!({
        "apiVersion": "baton.dev/v1alpha1", "kind": "Cluster",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("cluster");
    clusters
        .create(&PostParams::default(), &cluster)
        .await
        .expect("create cluster");
}

/// What a wave watcher saw of one Cluster's upgrade.
#[derive(Debug, Default)]
struct Overlap {
    /// The most members recorded as restarting at once.
    recorded: usize,
    /// The most members not Ready at once.
    down: usize,
    /// Two members of one shard were not Ready together.
    same_shard: bool,
}

/// Samples `cluster`'s status and pods every 50 ms until `stop`.
fn watch_overlap(
    env: &Env,
    cluster: &str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Overlap> {
    let clusters: kube::Api<baton::crd::Cluster> =
        kube::Api::namespaced(env.client.clone(), &env.ns);
    let pods = env.pods.clone();
    let (name, labels) = (cluster.to_string(), format!("baton.dev/cluster={cluster}"));
    tokio::spawn(async move {
        let mut seen = Overlap::default();
        while !stop.load(Ordering::Relaxed) {
            if let Ok(c) = clusters.get(&name).await
                && let Some(u) = c.status.and_then(|s| s.upgrade)
            {
                seen.recorded = seen.recorded.max(u.restarting.len());
            }
            if let Ok(list) = pods
                .list(&kube::api::ListParams::default().labels(&labels))
                .await
            {
                let down: Vec<String> = list
                    .items
                    .iter()
                    .filter(|p| !pod_is_ready(p))
                    .map(|p| p.name_any())
                    .collect();
                let shards: std::collections::BTreeSet<&str> = down
                    .iter()
                    .map(|p| p.rsplit_once('-').map_or(p.as_str(), |(s, _)| s))
                    .collect();
                seen.same_shard |= shards.len() < down.len();
                seen.down = seen.down.max(down.len());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seen
    })
}

/// Raises (or lowers) Cluster `name`'s version, as a person would.
async fn set_version(clusters: &kube::Api<baton::crd::Cluster>, name: &str, version: &str) {
    clusters
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"datastore": {"version": version}}})),
        )
        .await
        .expect("patch version");
}

/// Waits (up to `timeout`) for Cluster `name` to finish its upgrade to TARGET, and checks every
/// member reports TARGET.
async fn upgraded(
    clusters: &kube::Api<baton::crd::Cluster>,
    name: &str,
    timeout: Duration,
    logs: impl Fn() -> String,
) -> baton::crd::ClusterStatus {
    let done = wait_cluster(
        clusters,
        name,
        timeout,
        "the upgrade",
        |s| ready(s) && s.upgrade.is_none() && s.version.as_deref() == Some(TARGET),
        logs,
    )
    .await;
    for shard in &done.shards {
        assert!(shard.versions.values().all(|v| v == TARGET), "{shard:#?}");
    }
    done
}

/// A MOVED-following client writing `w-<n>` into one Cluster, with a watcher of its members.
struct Writing {
    stop: Arc<AtomicBool>,
    writer: tokio::task::JoinHandle<(Vec<u64>, u32, Duration)>,
    watcher: tokio::task::JoinHandle<Overlap>,
    check: redis::cluster_async::ClusterConnection,
}

impl Writing {
    async fn start(env: &Env, cluster: &str) -> Writing {
        let (client, check) = cluster_client(env, cluster).await;
        let stop = Arc::new(AtomicBool::new(false));
        let writer = spawn_writer(client, "w-", stop.clone());
        let watcher = watch_overlap(env, cluster, stop.clone());
        Writing {
            stop,
            writer,
            watcher,
            check,
        }
    }

    /// Stops the client and checks what every wave test holds to: a real write load, nothing
    /// acknowledged lost, `bound` members restarting together on record, never more members
    /// down, never two of one shard. Returns the acknowledged count, the refused count, the
    /// longest gap and what the watcher saw.
    async fn finish(mut self, what: &str, bound: usize) -> (usize, u32, Duration, Overlap) {
        self.stop.store(true, Ordering::Relaxed);
        let (acked, refused, gap) = self.writer.await.expect("writer");
        let seen = self.watcher.await.expect("watcher");
        assert!(acked.len() > 100, "{what}: the client barely wrote");
        assert_eq!(
            lost_writes(&mut self.check, "w-", &acked).await,
            Vec::<u64>::new(),
            "{what}: acknowledged writes lost"
        );
        // The bound is what Baton worked to: that many shards restarting together on record,
        // never more members down, never two of one shard.
        assert_eq!(seen.recorded, bound, "{what}: {seen:?}");
        assert!(seen.down <= bound, "{what}: {seen:?}");
        assert!(!seen.same_shard, "{what}: {seen:?}");
        (acked.len(), refused, gap, seen)
    }
}

fn pod_is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shards_upgrade_in_waves_of_max_unavailable_shards_and_lose_nothing() {
    use baton::crd::Cluster;
    let env = Env::new("dbcwave").await;
    let op = env.operator("dbcwave", "");
    let clusters: kube::Api<Cluster> = kube::Api::namespaced(env.client.clone(), &env.ns);
    let spec = |at_once: i32| {
        json!({"datastore": {"type": "redis", "version": SOURCE}, "shards": 3,
               "replicasPerShard": 2, "maxUnavailableShards": at_once})
    };
    // More shards down at once than there are shards is refused at admission.
    let too_many: Cluster = serde_json::from_value(json!({
        "apiVersion": "baton.dev/v1alpha1", "kind": "Cluster",
        "metadata": {"name": "too-many"}, "spec": spec(4),
    }))
    .expect("cluster");
    let refused = clusters
        .create(&PostParams::default(), &too_many)
        .await
        .expect_err("maxUnavailableShards above shards must be refused");
    assert!(
        refused
            .to_string()
            .contains("maxUnavailableShards cannot exceed shards"),
        "{refused}"
    );
    create_cluster(&clusters, "one", spec(1)).await;
    create_cluster(&clusters, "two", spec(2)).await;
    let logs = || op.logs();
    for name in ["one", "two"] {
        wait_cluster(&clusters, name, TIMEOUT, "formation", ready, logs).await;
    }
    // The same upgrade of the same layout, one after the other, each under a writing client.
    let mut took = BTreeMap::new();
    for (name, bound) in [("one", 1usize), ("two", 2)] {
        let writing = Writing::start(&env, name).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = std::time::Instant::now();
        set_version(&clusters, name, TARGET).await;
        upgraded(&clusters, name, Duration::from_secs(300), logs).await;
        took.insert(name, started.elapsed());
        let (acked, refused, gap, seen) = writing.finish(name, bound).await;
        println!(
            "{name}: maxUnavailableShards {bound}: {:.1} s, {acked} writes acknowledged, {refused} refused, longest gap {} ms, most members down together {}",
            took[name].as_secs_f64(),
            gap.as_millis(),
            seen.down
        );
    }
    println!(
        "3 shards: maxUnavailableShards 2 took {:.2}× the time of 1",
        took["two"].as_secs_f64() / took["one"].as_secs_f64()
    );
    delete_namespace(&env.client, &env.ns).await;
}

/// A version raised right after a password change waits for every shard to have set the new
/// passwords: a shard held back (paused by a person) holds the upgrade, no member moves, and
/// the Cluster says why; once the shard is let go it applies them and the upgrade runs, after
/// which every node takes only the new passwords.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_waits_until_every_shard_has_the_rotated_passwords() {
    use baton::crd::Cluster;
    let env = Env::new("dbcrotup").await;
    let op = env.operator("dbcrotup", "");
    let clusters: kube::Api<Cluster> = kube::Api::namespaced(env.client.clone(), &env.ns);
    create_cluster(
        &clusters,
        "gate",
        json!({"datastore": {"type": "redis", "version": SOURCE}, "shards": 2, "replicasPerShard": 2}),
    )
    .await;
    let logs = || op.logs();
    wait_cluster(&clusters, "gate", TIMEOUT, "formation", ready, logs).await;
    let old = workload::wait_auth(&env.client, &env.ns, "gate-shard-0").await;
    let pause = |on: bool| {
        let instances = env.instances.clone();
        async move {
            instances
                .patch(
                    "gate-shard-1",
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(json!({"spec": {"paused": on}})),
                )
                .await
                .expect("pause the shard");
        }
    };
    pause(true).await;
    env.rotate_passwords("gate-credentials").await;
    set_version(&clusters, "gate", TARGET).await;
    let held = wait_cluster(
        &clusters,
        "gate",
        TIMEOUT,
        "the upgrade held for the password change",
        |s| {
            s.message
                .as_deref()
                .is_some_and(|m| m.contains("gate-shard-1 has not set the new passwords"))
        },
        logs,
    )
    .await;
    assert!(held.upgrade.is_none(), "{held:#?}");
    // Held, not merely slow: a while later still nothing has moved.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let still = clusters
        .get("gate")
        .await
        .expect("cluster")
        .status
        .expect("status");
    assert!(still.upgrade.is_none(), "{still:#?}");
    for shard in &still.shards {
        assert!(shard.versions.values().all(|v| v == SOURCE), "{shard:#?}");
    }
    pause(false).await;
    upgraded(&clusters, "gate", Duration::from_secs(240), logs).await;
    let new = workload::wait_auth(&env.client, &env.ns, "gate-shard-1").await;
    assert_eq!(new.password, ROTATED_PASSWORD);
    for (pod, addr) in cluster_members(&env, "gate").await {
        assert!(
            !node_logs_in(&addr, &old.user, &old.password).await,
            "{pod}: the old application password still works"
        );
        assert!(
            node_logs_in(&addr, &new.user, &new.password).await,
            "{pod}: the new application password is refused"
        );
    }
    delete_namespace(&env.client, &env.ns).await;
}

/// Runs one operator per crash point in turn, each SIGKILLed at its point, until the upgrade of
/// Cluster `name` to TARGET is done; every point but possibly the last must be reached.
async fn kill_at_each(
    env: &Env,
    clusters: &kube::Api<baton::crd::Cluster>,
    name: &str,
    id: &str,
    crashes: &[&str],
) -> usize {
    let mut killed = 0;
    for (i, point) in crashes.iter().enumerate() {
        let mut op = env.operator(&format!("{id}-{i}"), point);
        let died = tokio::time::timeout(Duration::from_secs(300), op.child.wait()).await;
        let status = clusters.get(name).await.ok().and_then(|c| c.status);
        if status
            .as_ref()
            .is_some_and(|s| s.upgrade.is_none() && s.version.as_deref() == Some(TARGET))
        {
            break;
        }
        assert!(
            died.is_ok(),
            "the operator never passed {point}: {status:#?}\n{}",
            op.logs()
        );
        killed += 1;
    }
    assert!(
        killed + 1 >= crashes.len(),
        "only {killed} of the {} crash points were reached",
        crashes.len()
    );
    killed
}

/// Waves under operator kills: a 3 × 2 Cluster with `maxUnavailableShards: 2` upgraded under a
/// writer, an operator killed at each kind of step of the wave (each member's restart recorded
/// and patched, each failover's intent and send, the old masters' restarts, the last wave).
/// Each new operator resumes the wave from status: never two members of a shard down, never
/// more than two members in all, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wave_upgrade_resumes_after_the_operator_dies_at_every_kind_of_step() {
    use baton::crd::Cluster;
    let env = Env::new("dbcwavecrash").await;
    let clusters: kube::Api<Cluster> = kube::Api::namespaced(env.client.clone(), &env.ns);
    let op = env.operator("dbcwavecrash", "");
    create_cluster(
        &clusters,
        "events",
        json!({"datastore": {"type": "redis", "version": SOURCE}, "shards": 3,
               "replicasPerShard": 2, "maxUnavailableShards": 2}),
    )
    .await;
    let logs = || op.logs();
    wait_cluster(&clusters, "events", TIMEOUT, "formation", ready, logs).await;
    drop(op);
    let writing = Writing::start(&env, "events").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    set_version(&clusters, "events", TARGET).await;
    let (restart_intent, restarted, intent, failover) = (
        "api:cluster-status:restart-intent#1",
        "api:cluster-restart@*#1",
        "api:cluster-status:failover-intent#1",
        "db:cluster-failover#1",
    );
    let crashes = [
        restart_intent, // shard 0's replica
        restarted,
        restart_intent, // shard 1's replica, beside it
        restarted,
        intent, // shard 0
        failover,
        intent, // shard 1
        failover,
        restart_intent, // shard 0's old master
        restarted,
        restart_intent, // shard 1's old master
        intent,         // shard 2, the last wave
        failover,
    ];
    let killed = kill_at_each(&env, &clusters, "events", "dbcwavecrash", &crashes).await;
    println!("{killed} operators killed through the waves");
    let op = env.operator("dbcwavecrash-last", "");
    let logs = || op.logs();
    upgraded(&clusters, "events", Duration::from_secs(300), logs).await;
    writing.finish("the crashed waves", 2).await;
    delete_namespace(&env.client, &env.ns).await;
}

/// Waves through an UpgradeRequest: action Upgrade moves every shard's replicas two shards at
/// a time and holds with no master handed over; Rollback returns them (no master changed);
/// a second request upgrades the Cluster in waves to the end. A client writes throughout:
/// nothing lost, never two members of a shard down, never more than two in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_holds_rolls_back_and_upgrades_a_cluster_in_waves() {
    use baton::crd::{Cluster, RequestPhase, UpgradeRequest};
    let env = Env::new("dbcwavereq").await;
    let op = env.operator("dbcwavereq", "");
    let clusters: kube::Api<Cluster> = kube::Api::namespaced(env.client.clone(), &env.ns);
    create_cluster(
        &clusters,
        "events",
        json!({"datastore": {"type": "redis", "version": SOURCE}, "shards": 3,
               "replicasPerShard": 2, "maxUnavailableShards": 2}),
    )
    .await;
    let logs = || op.logs();
    let before = wait_cluster(&clusters, "events", TIMEOUT, "formation", ready, logs).await;
    let masters: Vec<Option<String>> = before.shards.iter().map(|s| s.primary.clone()).collect();
    let writing = Writing::start(&env, "events").await;
    let request = |name: &str, action: &str| -> UpgradeRequest {
        serde_json::from_value(json!({
            "apiVersion": "baton.dev/v1alpha1", "kind": "UpgradeRequest",
            "metadata": {"name": name},
            "spec": {"targets": {"clusters": ["events"]}, "targetVersion": TARGET, "action": action},
        }))
        .expect("request")
    };
    requests(&env)
        .create(&PostParams::default(), &request("held", "Upgrade"))
        .await
        .expect("create");
    wait_request(&env, "held", RequestPhase::AwaitingCommit, &op).await;
    let s = clusters
        .get("events")
        .await
        .expect("cluster")
        .status
        .expect("status");
    for shard in &s.shards {
        let master = shard.primary.clone().unwrap_or_default();
        for (pod, v) in &shard.versions {
            let want = if *pod == master { SOURCE } else { TARGET };
            assert_eq!(v, want, "{pod}: {s:#?}");
        }
    }
    set_action(&env, "held", "Rollback").await;
    wait_request(&env, "held", RequestPhase::RolledBack, &op).await;
    let s = wait_cluster(&clusters, "events", TIMEOUT, "the rollback", ready, logs).await;
    for shard in &s.shards {
        assert!(shard.versions.values().all(|v| v == SOURCE), "{shard:#?}");
    }
    let now: Vec<Option<String>> = s.shards.iter().map(|s| s.primary.clone()).collect();
    assert_eq!(now, masters, "no shard changed master");
    requests(&env)
        .create(
            &PostParams::default(),
            &request("through", "UpgradeAutoCommit"),
        )
        .await
        .expect("create");
    wait_request(&env, "through", RequestPhase::Succeeded, &op).await;
    let done = wait_cluster(
        &clusters,
        "events",
        TIMEOUT,
        "the upgrade",
        |s| {
            ready(s)
                && s.shards
                    .iter()
                    .all(|sh| sh.versions.values().all(|v| v == TARGET))
        },
        logs,
    )
    .await;
    assert!(done.upgrade.is_none(), "{done:#?}");
    writing.finish("the requests", 2).await;
    delete_namespace(&env.client, &env.ns).await;
}
