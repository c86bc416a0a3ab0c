//! The observing half of a pass: the instance read fresh, the catalog, the member pods, the
//! owned objects (when no upgrade is in flight), and every member probed through its engine.
//! Reads only; a probe that fails is counted and reported on the member, never hidden.

use std::collections::BTreeMap;

use futures::future::join_all;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::children::{self, ANNOTATION_VERSION, LABEL_INSTANCE, Owned};
use super::model::{CheckOutcome, Member, Observation, OfflineCheck};
use crate::controller::Context;
use crate::crd::database_instance::TlsRef;
use crate::crd::{Cluster, DatabaseInstance};
use crate::engine::{self, Endpoint, Engine, Target};
use crate::error::{Error, Result};
use crate::version::Version;
use crate::window;

/// What a pass observed, with the engine that serves the instance.
pub struct Observed {
    pub o: Observation,
    pub engine: Option<&'static dyn Engine>,
}

/// Reads everything a pass decides from. None when the instance is gone.
pub async fn observe(ctx: &Context, ns: &str, name: &str) -> Result<Option<Observed>> {
    // Decide from a fresh read, never from the watch cache: the cache can lag this controller's
    // own last status write, and a plan made from it would repeat or undo a recorded step.
    let Some(inst) = Api::<DatabaseInstance>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(Error::kube("reading the DatabaseInstance"))?
    else {
        return Ok(None);
    };
    let names = children::member_names(&inst);
    let status = inst.status.clone().unwrap_or_default();
    let mut o = Observation::of(inst, ctx.clock.now());
    o.members = names
        .iter()
        .map(|n| Member {
            name: n.clone(),
            ..Default::default()
        })
        .collect();
    o.window_open = o
        .inst
        .spec
        .maintenance_window
        .as_ref()
        .is_none_or(|w| window::is_open(o.now, w));
    o.last_act_error = ctx.act_error(&format!("{ns}/{name}"));
    let engine = match engine::for_datastore(o.inst.spec.datastore.type_) {
        Ok(e) => e,
        Err(e) => {
            o.unsupported = Some(e.to_string());
            return Ok(Some(Observed { o, engine: None }));
        }
    };
    o.catalog = ctx.catalog();
    // Every read below depends only on the instance: one round trip's wait, not six (each
    // pass of a switchover is write outage).
    let selector = format!("{LABEL_INSTANCE}={}", o.inst.name_any());
    let (owned, pods) = tokio::try_join!(
        read_secrets_and_owned(ctx, ns, &mut o, engine, &status),
        list_pods(ctx, ns, &selector),
    )?;
    let login = Target {
        endpoint: Endpoint::new("", 0),
        credentials: o.admin.clone(),
        fallback: o.admin_fallback.clone(),
        ca: o.ca.clone(),
        cert: o.cert.clone(),
    };
    read_members(ctx, &mut o, engine, &login, &names, &status, &owned, pods).await;
    o.fence_goal = fence_goal(engine, &status);
    if let Some(u) = status.upgrade.as_ref().filter(|u| u.offline.is_some()) {
        o.offline_check = read_offline_check(ctx, ns, &o.inst).await?;
        if u.step.kind == crate::crd::StepKind::Finalize {
            o.offline_leftovers = leftovers(engine, &login, &o.members, &status).await;
        }
    }
    let running = status.version.as_deref().unwrap_or_default();
    if let (Ok(from), Ok(to)) = (
        running.parse::<Version>(),
        o.inst.spec.datastore.version.parse::<Version>(),
    ) {
        o.strategy_to_spec = Some(engine.strategy(&from, &to));
    }
    Ok(Some(Observed {
        o,
        engine: Some(engine),
    }))
}

/// The credentials (and, for a shard whose passwords changed, whether its Cluster is
/// upgrading), the TLS Secret, and the owned objects with their drift.
async fn read_secrets_and_owned(
    ctx: &Context,
    ns: &str,
    o: &mut Observation,
    engine: &'static dyn Engine,
    status: &crate::crd::DatabaseInstanceStatus,
) -> Result<Owned> {
    let (seen, tls, mut owned) = tokio::try_join!(
        read_credentials(ctx, ns, &o.inst, engine),
        read_tls(ctx, ns, o.inst.spec.tls.as_ref()),
        read_owned(ctx, ns, &o.inst, status.upgrade.is_some()),
    )?;
    let (secret_exists, applied_exists) = (seen.exists, seen.applied.is_some());
    settle_credentials(o, engine, seen);
    if o.credentials_changed.is_some()
        && let Some(owner) = o.inst.cluster_owner()
    {
        o.cluster_upgrading = Api::<Cluster>::namespaced(ctx.client.clone(), ns)
            .get_opt(owner)
            .await
            .map_err(Error::kube("reading the shard's Cluster"))?
            .and_then(|c| c.status)
            .is_some_and(|s| s.upgrade.is_some());
    }
    match tls {
        Ok(Some((ca, cert))) => (o.ca, o.cert) = (Some(ca), Some(cert)),
        Ok(None) => {}
        Err(why) => o.tls_problem = Some(why),
    }
    owned.credentials = secret_exists;
    owned.applied_credentials = applied_exists;
    if status.upgrade.is_none() {
        o.drift = Some(children::drift(&o.inst, engine, &owned));
    }
    Ok(owned)
}

/// The member pods, every member probed through the engine, and which member the primary
/// label and the topology name.
#[allow(clippy::too_many_arguments)]
async fn read_members(
    ctx: &Context,
    o: &mut Observation,
    engine: &'static dyn Engine,
    login: &Target,
    names: &[String],
    status: &crate::crd::DatabaseInstanceStatus,
    owned: &Owned,
    pods: BTreeMap<String, Pod>,
) {
    // During a switchover nothing writes (fenced) and every pass is write outage: all at once.
    let switching = status
        .upgrade
        .as_ref()
        .is_some_and(|u| u.switchover.is_some());
    o.members = probe_all(
        ctx,
        engine,
        login,
        names,
        status.primary.as_deref().filter(|_| !switching),
        &pods,
        &owned.claims,
    )
    .await;
    let quarantined: Vec<String> = status.quarantine.iter().map(|q| q.member.clone()).collect();
    let members = &o.members;
    o.published = children::published(
        &pods,
        owned.topology.as_ref(),
        |n| {
            members
                .iter()
                .find(|m| m.name == n)
                .and_then(|m| m.endpoint.as_ref())
                .map(|e| e.host.clone())
        },
        &quarantined,
    );
}

/// The instance's pods by name, from the API server's watch cache, as informers read them: a
/// consistent LIST waits on etcd and cost most of a pass; the servers' own probes are the
/// authority on roles and fences, and every act a pod's state leads to is idempotent.
async fn list_pods(ctx: &Context, ns: &str, selector: &str) -> Result<BTreeMap<String, Pod>> {
    Ok(Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default().labels(selector).match_any())
        .await
        .map_err(Error::kube("listing the instance's pods"))?
        .into_iter()
        .map(|p| (p.name_any(), p))
        .collect())
}

/// The recorded fence position, read back by the engine; None (and a warning) when it does not
/// parse: the switchover waits, and is undone at its deadline, rather than guess.
fn fence_goal(
    engine: &'static dyn Engine,
    status: &crate::crd::DatabaseInstanceStatus,
) -> Option<crate::engine::Position> {
    let recorded = status
        .upgrade
        .as_ref()?
        .switchover
        .as_ref()?
        .fence_position
        .as_deref()?;
    engine
        .parse_position(recorded)
        .inspect_err(|e| tracing::warn!(error = %e, "the recorded fence position is unreadable"))
        .ok()
}

/// The offline hop's check pod, with its outcome.
async fn read_offline_check(
    ctx: &Context,
    ns: &str,
    inst: &DatabaseInstance,
) -> Result<Option<OfflineCheck>> {
    let pod = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .get_opt(&children::offline_check_name(inst, false))
        .await
        .map_err(Error::kube("reading the offline check pod"))?;
    Ok(pod.as_ref().map(offline_check_of))
}

/// What an offline check pod says: its attempt and its outcome.
pub(crate) fn offline_check_of(p: &Pod) -> OfflineCheck {
    let key = p
        .annotations()
        .get(children::ANNOTATION_OFFLINE_CHECK)
        .cloned()
        .unwrap_or_default();
    let status = p.status.clone().unwrap_or_default();
    let outcome = if p.metadata.deletion_timestamp.is_some() {
        CheckOutcome::Deleting
    } else {
        match status.phase.as_deref() {
            Some("Succeeded") => CheckOutcome::Passed,
            Some("Failed") => {
                // The first container that failed says why (its message is its log's end).
                let said = status
                    .init_container_statuses
                    .iter()
                    .flatten()
                    .chain(status.container_statuses.iter().flatten())
                    .filter_map(|c| c.state.as_ref()?.terminated.clone())
                    .find(|t| t.exit_code != 0)
                    .map(|t| {
                        t.message
                            .unwrap_or_else(|| format!("exit code {}", t.exit_code))
                    });
                CheckOutcome::Failed(said.unwrap_or_else(|| "the check pod failed".into()))
            }
            _ => CheckOutcome::Running,
        }
    };
    OfflineCheck { key, outcome }
}

/// Whether the offline hop's kept data is still on the recorded primary; None when it cannot
/// be asked now.
async fn leftovers(
    engine: &'static dyn Engine,
    login: &Target,
    members: &[Member],
    status: &crate::crd::DatabaseInstanceStatus,
) -> Option<bool> {
    let primary = status.primary.as_deref()?;
    let endpoint = members
        .iter()
        .find(|m| m.name == primary)?
        .endpoint
        .clone()?;
    engine
        .offline_leftovers(&Target {
            endpoint,
            ..login.clone()
        })
        .await
        .ok()
}

/// The owned objects: only the topology ConfigMap while an upgrade runs (the planner needs
/// it each pass); claims, Services and the PDB too otherwise (drift is repaired between
/// upgrades).
async fn read_owned(
    ctx: &Context,
    ns: &str,
    inst: &DatabaseInstance,
    upgrading: bool,
) -> Result<Owned> {
    let c = &ctx.client;
    let selector = format!("{LABEL_INSTANCE}={}", inst.name_any());
    let name = inst.name_any();
    // Served from the API server's cache (any version): these only feed the drift check and
    // a claim's UID, and a consistent LIST cost most of a pass.
    let lp = ListParams::default().labels(&selector).match_any();
    let topology_name = children::topology_name(inst);
    let topology = get::<ConfigMap>(c, ns, &topology_name, "reading the topology ConfigMap");
    let claims = list::<PersistentVolumeClaim>(c, ns, &lp, "listing the instance's claims");
    if upgrading {
        let (topology, claims) = tokio::try_join!(topology, claims)?;
        return Ok(Owned {
            claims,
            topology,
            ..Default::default()
        });
    }
    let services = list::<Service>(c, ns, &lp, "listing the instance's services");
    let pdb = get::<PodDisruptionBudget>(c, ns, &name, "reading the PodDisruptionBudget");
    let network_policy = get::<NetworkPolicy>(c, ns, &name, "reading the NetworkPolicy");
    let (topology, claims, services, pdb, network_policy) =
        tokio::try_join!(topology, claims, services, pdb, network_policy)?;
    Ok(Owned {
        claims,
        services,
        pdb,
        topology,
        credentials: false,
        applied_credentials: false,
        network_policy: network_policy.is_some(),
    })
}

/// A namespaced built-in kind a pass reads.
trait Namespaced:
    kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
}

impl<K> Namespaced for K where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
{
}

/// One namespaced object by name, if it exists.
async fn get<K: Namespaced>(
    c: &kube::Client,
    ns: &str,
    name: &str,
    what: &'static str,
) -> Result<Option<K>> {
    Api::<K>::namespaced(c.clone(), ns)
        .get_opt(name)
        .await
        .map_err(Error::kube(what))
}

/// The namespaced objects `lp` selects.
async fn list<K: Namespaced>(
    c: &kube::Client,
    ns: &str,
    lp: &ListParams,
    what: &'static str,
) -> Result<Vec<K>> {
    Ok(Api::<K>::namespaced(c.clone(), ns)
        .list(lp)
        .await
        .map_err(Error::kube(what))?
        .items)
}

/// Reads the TLS Secret `spec.tls` names, at every pass: the CA Baton verifies members
/// against and the certificate they are to serve, or why TLS cannot be honoured.
pub(crate) async fn read_tls(
    ctx: &Context,
    ns: &str,
    tls: Option<&TlsRef>,
) -> Result<std::result::Result<Option<(Vec<u8>, Vec<u8>)>, String>> {
    let Some(tls) = tls else {
        return Ok(Ok(None));
    };
    let name = &tls.secret_name;
    let Some(secret) = Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(Error::kube("reading the TLS Secret"))?
    else {
        return Ok(Err(format!(
            "the Secret {name} named in spec.tls.secretName does not exist"
        )));
    };
    let data = secret.data.unwrap_or_default();
    if let Some(k) = engine::TLS_KEYS
        .iter()
        .find(|k| data.get(**k).is_none_or(|v| v.0.is_empty()))
    {
        return Ok(Err(format!(
            "the Secret {name} has no key {k:?}; a TLS Secret needs tls.crt, tls.key and ca.crt"
        )));
    }
    let ca = data.get("ca.crt").map(|v| v.0.clone()).unwrap_or_default();
    if let Err(e) = crate::tls::client_config(&ca) {
        return Ok(Err(format!("the Secret {name}: {e}")));
    }
    let cert = data.get("tls.crt").map(|v| v.0.clone()).unwrap_or_default();
    if crate::tls::leaf(&cert).is_none() {
        return Ok(Err(format!(
            "the Secret {name}: tls.crt holds no PEM certificate"
        )));
    }
    Ok(Ok(Some((ca, cert))))
}

/// The credentials as this pass found them.
struct SeenCredentials {
    /// The credentials Secret's values, or why they cannot be used.
    wanted: std::result::Result<Option<engine::Accounts>, String>,
    /// Whether the credentials Secret exists.
    exists: bool,
    /// The applied copy: what the members run with.
    applied: Option<engine::Accounts>,
}

/// A key–value Secret's data as text, for the keys an engine reads.
pub(crate) fn secret_values(secret: &Secret, keys: &[&str]) -> BTreeMap<String, String> {
    keys.iter()
        .filter_map(|k| {
            let v = secret.data.as_ref()?.get(*k)?;
            let v = String::from_utf8(v.0.clone()).ok()?;
            (!v.is_empty()).then(|| (k.to_string(), v))
        })
        .collect()
}

/// Reads the credentials Secret and its applied copy at every pass. A generated Secret not
/// created yet is no problem (the children step creates it); a Secret the spec names must
/// exist and hold every key, each without whitespace or control characters (they end up in
/// server configuration files one line per account).
async fn read_credentials(
    ctx: &Context,
    ns: &str,
    inst: &DatabaseInstance,
    engine: &dyn Engine,
) -> Result<SeenCredentials> {
    let keys = engine.credential_keys();
    let name = children::credentials_name(inst);
    let applied_name = children::applied_credentials_name(inst);
    let c = &ctx.client;
    let (applied, secret) = tokio::try_join!(
        get::<Secret>(c, ns, &applied_name, "reading the applied credentials"),
        get::<Secret>(c, ns, &name, "reading the credentials Secret"),
    )?;
    let applied = applied.map(|s| engine::Accounts(secret_values(&s, keys)));
    let Some(secret) = secret else {
        let wanted = if inst.spec.credentials.is_some() {
            Err(format!(
                "the Secret {name} named in spec.credentials.secretName does not exist"
            ))
        } else {
            Ok(None)
        };
        return Ok(SeenCredentials {
            wanted,
            exists: false,
            applied,
        });
    };
    let values = secret_values(&secret, keys);
    let problem = if let Some(k) = keys.iter().find(|k| !values.contains_key(**k)) {
        Some(format!(
            "the Secret {name} has no key {k:?} (or it is empty); it needs {}",
            keys.join(", ")
        ))
    } else {
        values
            .iter()
            .find(|(_, v)| v.chars().any(|c| c.is_whitespace() || c.is_control()))
            .map(|(k, _)| {
                format!(
                    "the Secret {name}: the value of {k:?} has whitespace or a control character; use printable characters without spaces"
                )
            })
    };
    Ok(SeenCredentials {
        wanted: match problem {
            Some(why) => Err(why),
            None => Ok(Some(engine::Accounts(values))),
        },
        exists: true,
        applied,
    })
}

/// What the pass logs in with, and what it is to apply: the members run with the applied copy;
/// a Secret that differs from it is applied (its login tried where the copy's is refused). A
/// Secret that cannot be used stops nothing once a copy exists — the members keep the copy.
fn settle_credentials(o: &mut Observation, engine: &dyn Engine, seen: SeenCredentials) {
    let name = children::credentials_name(&o.inst);
    match (seen.wanted, seen.applied) {
        (Err(why), None) => o.credentials_problem = Some(why),
        (Err(why), Some(applied)) => {
            o.admin = Some(applied.admin(engine));
            o.credentials_change_refused = Some(format!(
                "{why}; the members keep the credentials they run with"
            ));
        }
        (Ok(Some(wanted)), None) => {
            o.admin = Some(wanted.admin(engine));
            o.credentials_unapplied = Some(wanted);
        }
        (Ok(None), None) => {}
        (Ok(wanted), Some(applied)) => {
            o.admin = Some(applied.admin(engine));
            let Some(wanted) = wanted.filter(|w| *w != applied) else {
                return;
            };
            let (was, now) = (applied.get(engine::USERNAME), wanted.get(engine::USERNAME));
            if was != now {
                o.credentials_change_refused = Some(format!(
                    "the Secret {name} renames the application account {was} to {now}, which Baton does not do; set username back to {was} (passwords may change)"
                ));
                return;
            }
            let login = wanted.admin(engine);
            o.admin_fallback = (o.admin.as_ref() != Some(&login)).then_some(login);
            o.credentials_changed = Some(wanted);
        }
    }
}

pub(crate) fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Why the pod's first container is waiting, as the node reports it, with what its boot script
/// said when it last gave up (a `baton: …` line of its termination message).
fn waiting(p: &Pod) -> Option<String> {
    let c = p.status.as_ref()?.container_statuses.as_ref()?.first()?;
    let w = c.state.as_ref()?.waiting.clone()?;
    let gave_up = c
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .and_then(|t| t.message.as_deref())
        .and_then(|m| m.lines().rev().find(|l| l.starts_with("baton: ")));
    Some(match gave_up {
        Some(line) => format!(
            "{}: {} ({})",
            w.reason.unwrap_or_default(),
            w.message.unwrap_or_default(),
            line
        ),
        None => format!(
            "{}: {}",
            w.reason.unwrap_or_default(),
            w.message.unwrap_or_default()
        ),
    })
}

/// The node runs the image the pod's spec names, and it is ready.
pub(crate) fn image_current(p: &Pod) -> bool {
    let want = p
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone());
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref()?.first().cloned())
        .is_some_and(|c| Some(c.image) == want && c.ready)
}

/// Probes the recorded primary, then every other member concurrently. In that order a
/// standby that keeps up under writes reads as caught up (at or past the position the primary
/// had a moment before); probed together, it is behind whenever its probe lands first, and a
/// step waiting for it to catch up within a bound of 0 waits on chance.
async fn probe_all(
    ctx: &Context,
    engine: &'static dyn Engine,
    login: &Target,
    names: &[String],
    primary: Option<&str>,
    pods: &BTreeMap<String, Pod>,
    claims: &[PersistentVolumeClaim],
) -> Vec<Member> {
    let (first, rest): (Vec<&String>, Vec<&String>) =
        names.iter().partition(|n| Some(n.as_str()) == primary);
    let mut members = probe_each(ctx, engine, login, &first, pods, claims).await;
    members.extend(probe_each(ctx, engine, login, &rest, pods, claims).await);
    // In the members' order, as every other reader of `Observation::members` expects.
    members.sort_by_key(|m| names.iter().position(|n| *n == m.name));
    members
}

/// Probes `names` concurrently.
async fn probe_each(
    ctx: &Context,
    engine: &'static dyn Engine,
    login: &Target,
    names: &[&String],
    pods: &BTreeMap<String, Pod>,
    claims: &[PersistentVolumeClaim],
) -> Vec<Member> {
    join_all(names.iter().map(|&n| async move {
        let pod = pods.get(n);
        let endpoint = pod
            .and_then(|p| p.status.as_ref()?.pod_ip.clone())
            .filter(|ip| !ip.is_empty())
            .map(|ip| Endpoint::new(ip, engine.port()));
        let (probe, probe_error) = match &endpoint {
            Some(e) => match engine
                .probe(&Target {
                    endpoint: e.clone(),
                    ..login.clone()
                })
                .await
            {
                Ok(p) => (Some(p), None),
                Err(err) => {
                    ctx.metrics
                        .engine_error(engine.datastore().as_str(), "probe", err.category());
                    (None, Some(crate::controller::chain(&err)))
                }
            },
            None => (None, None),
        };
        // A claim being deleted counts as gone: a person chose to discard that member's data.
        let claim_uid = claims
            .iter()
            .find(|c| c.name_any() == children::claim_name(n))
            .filter(|c| c.metadata.deletion_timestamp.is_none())
            .and_then(|c| c.metadata.uid.clone());
        Member {
            name: n.clone(),
            exists: pod.is_some(),
            pod_uid: pod.and_then(|p| p.metadata.uid.clone()),
            version: pod.and_then(|p| p.annotations().get(ANNOTATION_VERSION).cloned()),
            ready: pod.is_some_and(pod_ready),
            fence_position: engine.fence_position(probe.as_ref(), pod),
            endpoint,
            probe,
            probe_error,
            waiting: pod.and_then(waiting),
            image_current: pod.is_some_and(image_current),
            claim_uid,
            node: pod.and_then(|p| p.spec.as_ref()?.node_name.clone()),
            role_label: pod.and_then(|p| p.labels().get(children::LABEL_ROLE).cloned()),
        }
    }))
    .await
}
