//! `status` and `versions`: reports built from the resources' status, printed as a table or as
//! JSON/YAML (the same fields either way).

use kube::api::{Api, ListParams};
use serde::Serialize;

use baton::catalog;
use baton::crd::{Cluster, DatabaseInstance, Datastore, DatastoreVersion};

use crate::{Failure, Format, Outcome, Session};

/// Prints `value` as JSON or YAML, or as the table `table` renders.
pub fn print<T: Serialize>(format: Format, value: &T, table: impl FnOnce(&T) -> String) {
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Format::Yaml => print!("{}", serde_yaml_ng::to_string(value).unwrap_or_default()),
        Format::Table => print!("{}", table(value)),
    }
}

/// Left-aligned columns, as kubectl prints them.
pub fn columns(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

fn dash(v: Option<impl ToString>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MemberRow {
    pod: String,
    role: Option<String>,
    version: Option<String>,
    ready: bool,
    lag: Option<String>,
    fenced: bool,
    error: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UpgradeRow {
    source_version: String,
    target_version: String,
    step: String,
    request: Option<String>,
    job: Option<String>,
    failure: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InstanceReport {
    kind: &'static str,
    name: String,
    namespace: String,
    datastore: Datastore,
    version: Option<String>,
    phase: Option<String>,
    primary: Option<String>,
    /// Why the primary does not lead, and since when (its `PrimaryAvailable` condition).
    #[serde(skip_serializing_if = "Option::is_none")]
    primary_down: Option<String>,
    message: Option<String>,
    members: Vec<MemberRow>,
    upgrade: Option<UpgradeRow>,
    /// The last switchover in words: who to whom, when, and how long writes were refused.
    last_switchover: Option<String>,
    /// The last automatic failover in words: who replaced whom, and since when it was down.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_failover: Option<String>,
    conditions: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ShardRow {
    instance: String,
    master: Option<String>,
    replicas: Vec<String>,
    slots: Vec<String>,
    versions: std::collections::BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClusterReport {
    kind: &'static str,
    name: String,
    namespace: String,
    datastore: Datastore,
    version: Option<String>,
    task: Option<String>,
    message: Option<String>,
    shards: Vec<ShardRow>,
    upgrade: Option<UpgradeRow>,
    conditions: Vec<String>,
}

fn conditions(cs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> Vec<String> {
    cs.iter()
        .map(|c| format!("{}={} ({})", c.type_, c.status, c.reason))
        .collect()
}

fn instance_report(i: &DatabaseInstance) -> InstanceReport {
    let s = i.status.clone().unwrap_or_default();
    InstanceReport {
        kind: "DatabaseInstance",
        name: i.metadata.name.clone().unwrap_or_default(),
        namespace: i.metadata.namespace.clone().unwrap_or_default(),
        datastore: i.spec.datastore.type_,
        version: s.version.clone(),
        phase: s.phase.map(|p| format!("{p:?}")),
        primary: s.primary.clone(),
        primary_down: baton::status::find(&s.conditions, "PrimaryAvailable")
            .filter(|c| c.status == "False")
            .map(|c| format!("{} since {}", c.reason, c.last_transition_time.0)),
        message: s.message.clone(),
        members: s
            .members
            .iter()
            .map(|m| MemberRow {
                pod: m.pod.clone(),
                role: m.role.map(|r| format!("{r:?}")),
                version: m.version.clone(),
                ready: m.ready,
                lag: match (m.lag_bytes, m.lag_transactions) {
                    (Some(b), _) => Some(format!("{b} bytes")),
                    (None, Some(t)) => Some(format!("{t} transactions")),
                    (None, None) => None,
                },
                fenced: m.fenced,
                error: m.error.clone(),
            })
            .collect(),
        upgrade: s.upgrade.as_ref().map(|u| UpgradeRow {
            source_version: u.source_version.clone(),
            target_version: u.target_version.clone(),
            step: u.describe(),
            request: u.request.clone(),
            job: u.job.clone(),
            failure: u.failure.clone(),
        }),
        last_switchover: s.last_switchover.as_ref().map(|l| {
            format!(
                "{} → {}{} at {}, writes refused for {} ms",
                l.from,
                l.to,
                if l.undone { " (undone)" } else { "" },
                l.writable_at.0,
                l.window_ms
            )
        }),
        last_failover: s.last_failover.as_ref().map(|f| {
            format!(
                "{} → {} at {} ({} down since {})",
                f.from, f.to, f.promoted_at.0, f.from, f.down_since.0
            )
        }),
        conditions: conditions(&s.conditions),
    }
}

fn cluster_report(c: &Cluster) -> ClusterReport {
    let s = c.status.clone().unwrap_or_default();
    ClusterReport {
        kind: "Cluster",
        name: c.metadata.name.clone().unwrap_or_default(),
        namespace: c.metadata.namespace.clone().unwrap_or_default(),
        datastore: c.spec.datastore.type_,
        version: s.version.clone(),
        task: s.task.map(|t| format!("{t:?}")),
        message: s.message.clone(),
        shards: s
            .shards
            .iter()
            .map(|sh| ShardRow {
                instance: sh.instance.clone(),
                master: sh.primary.clone(),
                replicas: sh.replicas.clone(),
                slots: sh.slots.clone(),
                versions: sh.versions.clone(),
            })
            .collect(),
        upgrade: s.upgrade.as_ref().map(|u| UpgradeRow {
            source_version: u.source_version.clone(),
            target_version: u.target_version.clone(),
            step: u.describe(),
            request: u.request.clone(),
            job: u.job.clone(),
            failure: u.failed.clone(),
        }),
        conditions: conditions(&s.conditions),
    }
}

fn upgrade_lines(u: &Option<UpgradeRow>, out: &mut String) {
    if let Some(u) = u {
        out.push_str(&format!(
            "Upgrade:    {} → {}, step {}{}\n",
            u.source_version,
            u.target_version,
            u.step,
            u.request
                .as_ref()
                .map(|r| format!(", UpgradeRequest {r}"))
                .unwrap_or_default()
        ));
        if let Some(f) = &u.failure {
            out.push_str(&format!("Failure:    {f}\n"));
        }
    }
}

/// A `kubectl describe`-like sheet: the fields, the upgrade in flight, the message and the
/// conditions, then a table.
fn sheet(
    fields: &[(&str, String)],
    upgrade: &Option<UpgradeRow>,
    message: &Option<String>,
    conditions: &[String],
    rows: &[Vec<String>],
) -> String {
    let mut out = String::new();
    for (k, v) in fields {
        out.push_str(&format!("{:<12}{v}\n", format!("{k}:")));
    }
    upgrade_lines(upgrade, &mut out);
    if let Some(m) = message {
        out.push_str(&format!("Message:    {m}\n"));
    }
    out.push_str(&format!("Conditions: {}\n\n", conditions.join(", ")));
    out.push_str(&columns(rows));
    out
}

pub fn header(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn instance_table(r: &InstanceReport) -> String {
    let mut rows = vec![header(&[
        "MEMBER", "ROLE", "VERSION", "READY", "LAG", "FENCED",
    ])];
    for m in &r.members {
        rows.push(vec![
            m.pod.clone(),
            dash(m.role.as_ref()),
            dash(m.version.as_ref()),
            m.ready.to_string(),
            dash(m.lag.as_ref()),
            m.fenced.to_string(),
        ]);
    }
    let fields = [
        (
            "Name",
            format!("{} (DatabaseInstance, {})", r.name, r.datastore),
        ),
        ("Namespace", r.namespace.clone()),
        ("Version", dash(r.version.as_ref())),
        ("Phase", dash(r.phase.as_ref())),
        (
            "Primary",
            match &r.primary_down {
                Some(down) => format!("{} ({down})", dash(r.primary.as_ref())),
                None => dash(r.primary.as_ref()),
            },
        ),
        ("Switchover", dash(r.last_switchover.as_ref())),
        ("Failover", dash(r.last_failover.as_ref())),
    ];
    sheet(&fields, &r.upgrade, &r.message, &r.conditions, &rows)
}

fn cluster_table(r: &ClusterReport) -> String {
    let mut rows = vec![header(&[
        "SHARD", "MASTER", "REPLICAS", "SLOTS", "VERSIONS",
    ])];
    for s in &r.shards {
        rows.push(vec![
            s.instance.clone(),
            dash(s.master.as_ref()),
            s.replicas.join(","),
            s.slots.join(","),
            s.versions
                .iter()
                .map(|(p, v)| format!("{p}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        ]);
    }
    let fields = [
        ("Name", format!("{} (Cluster, {})", r.name, r.datastore)),
        ("Namespace", r.namespace.clone()),
        ("Version", dash(r.version.as_ref())),
        ("Task", dash(r.task.as_ref())),
    ];
    sheet(&fields, &r.upgrade, &r.message, &r.conditions, &rows)
}

/// `status [NAME]`.
pub async fn status(s: &Session, name: Option<&str>) -> Outcome {
    let instances = Api::<DatabaseInstance>::namespaced(s.client.clone(), &s.namespace);
    let clusters = Api::<Cluster>::namespaced(s.client.clone(), &s.namespace);
    let Some(name) = name else {
        return overview(s, &instances, &clusters).await;
    };
    if let Some(i) = instances.get_opt(name).await? {
        print(s.format, &instance_report(&i), instance_table);
        return Ok(());
    }
    if let Some(c) = clusters.get_opt(name).await? {
        print(s.format, &cluster_report(&c), cluster_table);
        return Ok(());
    }
    Err(Failure::NotFound(format!(
        "no DatabaseInstance or Cluster {name} in namespace {}",
        s.namespace
    )))
}

#[derive(Serialize)]
struct Overview {
    instances: Vec<InstanceReport>,
    clusters: Vec<ClusterReport>,
}

async fn overview(
    s: &Session,
    instances: &Api<DatabaseInstance>,
    clusters: &Api<Cluster>,
) -> Outcome {
    let lp = ListParams::default();
    let all = Overview {
        // A Cluster's shards are listed under it, not as instances of their own.
        instances: instances
            .list(&lp)
            .await?
            .items
            .iter()
            .filter(|i| i.cluster_owner().is_none())
            .map(instance_report)
            .collect(),
        clusters: clusters
            .list(&lp)
            .await?
            .items
            .iter()
            .map(cluster_report)
            .collect(),
    };
    print(s.format, &all, |o| {
        let mut rows = vec![header(&[
            "KIND",
            "NAME",
            "DATASTORE",
            "VERSION",
            "STATUS",
            "PRIMARY",
            "UPGRADE",
        ])];
        for i in &o.instances {
            rows.push(vec![
                "DatabaseInstance".into(),
                i.name.clone(),
                i.datastore.to_string(),
                dash(i.version.as_ref()),
                dash(i.phase.as_ref()),
                dash(i.primary.as_ref()),
                dash(i.upgrade.as_ref().map(|u| u.step.clone())),
            ]);
        }
        for c in &o.clusters {
            rows.push(vec![
                "Cluster".into(),
                c.name.clone(),
                c.datastore.to_string(),
                dash(c.version.as_ref()),
                dash(c.task.as_ref()),
                "-".into(),
                dash(c.upgrade.as_ref().map(|u| u.step.clone())),
            ]);
        }
        columns(&rows)
    });
    Ok(())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VersionRow {
    name: String,
    version: String,
    image: String,
    active: bool,
    default: bool,
    /// With --from: whether an upgrade from it may target this version, and how (`Minor`,
    /// `Major`, `Hotfix`, or the hops of a longer path) or why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    reachable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
}

/// `versions DATASTORE [--from V]`.
pub async fn versions(s: &Session, ds: Datastore, from: Option<&str>) -> Outcome {
    let mut entries: Vec<DatastoreVersion> = Api::<DatastoreVersion>::all(s.client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|d| d.spec.datastore == ds)
        .collect();
    entries.sort_by(|a, b| {
        let v = |d: &DatastoreVersion| d.spec.version.parse::<baton::version::Version>().ok();
        v(a).cmp(&v(b)).then(a.spec.version.cmp(&b.spec.version))
    });
    if let Some(f) = from
        && !entries.iter().any(|d| d.spec.version == f)
    {
        return Err(Failure::NotFound(format!(
            "{ds} {f} is not in the DatastoreVersion catalog"
        )));
    }
    let rows: Vec<VersionRow> = entries
        .iter()
        .filter(|d| from != Some(d.spec.version.as_str()))
        .map(|d| {
            // Reachable along the catalog's path, hop by hop, as an upgrade would run it.
            let verdict = from.map(|f| {
                catalog::resolve_path(&entries, ds, f, &d.spec).map(|hops| {
                    let kind = hops.last().map(|h| h.kind);
                    match hops.as_slice() {
                        [_] | [] => format!("{:?}", kind.unwrap_or(catalog::PathKind::Minor)),
                        _ => format!(
                            "{} hops: {}",
                            hops.len(),
                            hops.iter()
                                .map(|h| h.version.as_str())
                                .collect::<Vec<_>>()
                                .join(" → ")
                        ),
                    }
                })
            });
            VersionRow {
                name: d.metadata.name.clone().unwrap_or_default(),
                version: d.spec.version.clone(),
                image: d.spec.image.clone(),
                active: d.spec.active,
                default: d.spec.default,
                reachable: verdict.as_ref().map(Result::is_ok),
                path: verdict.map(|v| v.unwrap_or_else(|e| e.to_string())),
            }
        })
        .collect();
    print(s.format, &rows, |rows| {
        let mut table = vec![header(&["VERSION", "IMAGE", "ACTIVE", "DEFAULT"])];
        if from.is_some() {
            table[0].push("FROM ".to_string() + from.unwrap_or_default());
        }
        for r in rows {
            let mut row = vec![
                r.version.clone(),
                r.image.clone(),
                r.active.to_string(),
                r.default.to_string(),
            ];
            if let Some(p) = &r.path {
                row.push(if r.reachable == Some(true) {
                    format!("allowed ({p})")
                } else {
                    format!("no: {p}")
                });
            }
            table.push(row);
        }
        columns(&table)
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(conditions: serde_json::Value) -> DatabaseInstance {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "baton.dev/v1alpha1", "kind": "DatabaseInstance",
            "metadata": {"name": "db", "namespace": "ns"},
            "spec": {"datastore": {"type": "redis", "version": "7.0.15"}, "replicas": 3},
            "status": {"phase": "Active", "primary": "db-0", "conditions": conditions},
        }))
        .expect("an instance")
    }

    #[test]
    fn a_primary_that_does_not_lead_says_why_and_since_when() {
        let down = instance(
            serde_json::json!([{"type": "PrimaryAvailable", "status": "False",
            "reason": "PrimaryDown", "message": "…", "lastTransitionTime": "2026-12-06T02:40:00Z"}]),
        );
        let table = instance_table(&instance_report(&down));
        assert!(
            table.contains("db-0 (PrimaryDown since 2026-12-06T02:40:00Z)"),
            "{table}"
        );
        let leading = instance(
            serde_json::json!([{"type": "PrimaryAvailable", "status": "True",
            "reason": "Leading", "message": "db-0 leads", "lastTransitionTime": "2026-12-06T02:40:00Z"}]),
        );
        let report = instance_report(&leading);
        assert!(report.primary_down.is_none());
        assert!(!instance_table(&report).contains("since"));
    }

    #[test]
    fn the_last_failover_says_who_replaced_whom() {
        let mut i = instance(serde_json::json!([]));
        i.status.as_mut().unwrap().last_failover = serde_json::from_value(serde_json::json!({
            "from": "db-0", "to": "db-2", "downSince": "2026-12-06T04:30:00Z",
            "promotedAt": "2026-12-06T04:30:41.000000Z",
        }))
        .unwrap();
        let table = instance_table(&instance_report(&i));
        assert!(
            table.contains(
                "db-0 → db-2 at 2026-12-06T04:30:41Z (db-0 down since 2026-12-06T04:30:00Z)"
            ),
            "{table}"
        );
    }
}
