//! `make demo`: against the local environment (`make up`: control plane, local node, and the
//! operator installed with its Helm chart, running as the chart's pod on the local node),
//! create a 3-member Redis 6.2.14 instance, write to it under a steady client load, upgrade it
//! to 7.0.15 by editing its spec, show the progress as it happens, and end with a summary.
//! `make demo-postgres` (`demo postgresql`) does the same with PostgreSQL 16.13 → 16.14, and
//! `make demo-mariadb` (`demo mariadb`) with MariaDB 10.11.18 → 10.11.19.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use baton::crd::DatabaseInstance;
use baton_testkit::workload::{self, Route};

const NS: &str = "baton-demo";

/// What the demo upgrades: the datastore, its display name, the instance's name, and the
/// versions from and to.
struct Flavor {
    ds: workload::Datastore,
    label: &'static str,
    name: &'static str,
    from: &'static str,
    to: &'static str,
}

const REDIS: Flavor = Flavor {
    ds: workload::Datastore::Redis,
    label: "Redis",
    name: "sessions",
    from: "6.2.14",
    to: "7.0.15",
};
const POSTGRES: Flavor = Flavor {
    ds: workload::Datastore::Postgresql,
    label: "PostgreSQL",
    name: "orders",
    from: "16.13",
    to: "16.14",
};

const MARIADB: Flavor = Flavor {
    ds: workload::Datastore::Mariadb,
    label: "MariaDB",
    name: "shop",
    from: "10.11.18",
    to: "10.11.19",
};

fn row(i: &DatabaseInstance) -> String {
    let s = i.status.clone().unwrap_or_default();
    let step = s
        .upgrade
        .as_ref()
        .map(|u| format!("  step: {}", u.describe()));
    let members: Vec<String> = s
        .members
        .iter()
        .map(|m| {
            format!(
                "{}={}{}{}",
                m.pod,
                m.version.as_deref().unwrap_or("?"),
                if m.role == Some(baton::crd::MemberRole::Primary) {
                    "*"
                } else {
                    ""
                },
                if m.ready { "" } else { "(down)" }
            )
        })
        .collect();
    format!(
        "{:<10} {:<6} {:<8} {:<10} {:<12} {}{}",
        i.name_any(),
        i.spec.datastore.type_,
        s.version.unwrap_or_default(),
        s.phase.map(|p| format!("{p:?}")).unwrap_or_default(),
        s.primary.unwrap_or_default(),
        members.join(" "),
        step.unwrap_or_default()
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let f = match std::env::args().nth(1).as_deref() {
        None | Some("redis") => REDIS,
        Some("postgresql") => POSTGRES,
        Some("mariadb") => MARIADB,
        Some(other) => anyhow::bail!("unknown datastore {other}: redis, postgresql or mariadb"),
    };
    let (name, from, to) = (f.name, f.from, f.to);
    let client = Client::try_default().await?;
    // The chart installed the catalog; a cluster without one gets the example's entries.
    if Api::<baton::crd::DatastoreVersion>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await?
        .items
        .is_empty()
    {
        workload::apply_catalog(&client, workload::EXAMPLE_CATALOG).await?;
    }
    let namespaces = Api::<Namespace>::all(client.clone());
    if namespaces.get_opt(NS).await?.is_some() {
        println!("removing the previous demo namespace …");
        namespaces.delete(NS, &Default::default()).await?;
        while namespaces.get_opt(NS).await?.is_some() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": NS}}))?;
    namespaces.create(&PostParams::default(), &ns).await?;
    // Pods are admitted once the namespace's default ServiceAccount exists.
    let sas = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), NS);
    while sas.get_opt("default").await?.is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    println!(
        "== creating a 3-member {} {from} instance ({NS}/{name})",
        f.label
    );
    let t0 = Instant::now();
    workload::create(&client, NS, name, f.ds, 3, from).await?;
    workload::wait_active(&client, NS, name, from, Duration::from_secs(180))
        .await
        .ok_or_else(|| anyhow::anyhow!("the instance never became Active"))?;
    println!("Active after {:.1}s", t0.elapsed().as_secs_f64());

    println!("== writing under a steady client load (the client follows the primary label)");
    let stop = CancellationToken::new();
    let writer = tokio::spawn(workload::write_until(
        client.clone(),
        NS.into(),
        name.into(),
        f.ds,
        "demo",
        Route::FollowLabel,
        Duration::from_millis(250),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;

    println!("== upgrading to {to}: spec.datastore.version {from} → {to}");
    println!(
        "{:<10} {:<6} {:<8} {:<10} {:<12} MEMBERS (* primary)",
        "NAME", "TYPE", "VERSION", "STATUS", "PRIMARY"
    );
    let instances = Api::<DatabaseInstance>::namespaced(client.clone(), NS);
    let started = Instant::now();
    workload::set_version(&client, NS, name, to).await?;
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let i = instances.get(name).await?;
        let line = row(&i);
        if line != last {
            println!("[{:>5.1}s] {line}", started.elapsed().as_secs_f64());
            last = line;
        }
        let s = i.status.clone().unwrap_or_default();
        if s.version.as_deref() == Some(to)
            && s.upgrade.is_none()
            && s.phase == Some(baton::crd::InstancePhase::Active)
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the upgrade did not finish in 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let upgrade_time = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    let report = writer.await?;

    println!("== summary");
    let pods = Api::<Pod>::namespaced(client.clone(), NS)
        .list(&ListParams::default().labels(&format!("baton.dev/instance={name}")))
        .await?;
    let mut versions = BTreeMap::new();
    for p in pods {
        let ip = p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        let v = workload::server_version(f.ds, ip.parse()?, &report.auth)
            .await
            .unwrap_or_else(|| "unreachable".into());
        let role = p
            .labels()
            .get("baton.dev/role")
            .cloned()
            .unwrap_or_default();
        versions.insert(p.name_any(), format!("{v} ({role})"));
    }
    for (pod, v) in &versions {
        println!("  {pod}: {} {v}, as the server reports", f.label);
    }
    let primary = workload::primary_address(&client, NS, name)
        .await
        .ok_or_else(|| anyhow::anyhow!("no primary"))?;
    let lost = workload::missing(f.ds, primary, &report)
        .await
        .map_err(anyhow::Error::msg)?;
    println!("  keys verified:                {}", report.acked.len());
    println!("  acknowledged writes lost:     {}", lost.len());
    println!("  write errors (retried):       {}", report.errors);
    println!(
        "  longest write gap:            {:.0} ms",
        report.longest_gap.as_secs_f64() * 1000.0
    );
    println!(
        "  upgrade time (spec → Active): {:.1} s",
        upgrade_time.as_secs_f64()
    );
    println!(
        "  total demo time:              {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    anyhow::ensure!(lost.is_empty(), "acknowledged writes were lost");
    anyhow::ensure!(
        versions.values().all(|v| v.starts_with(to)),
        "not every member runs {to}"
    );
    Ok(())
}
