//! `upgrade`, `switchover`, `commit`, `rollback` and `cancel`: UpgradeRequests created or
//! steered as a user would with kubectl, a dry run that changes nothing, and `--wait`.

use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde::Serialize;
use serde_json::json;

use baton::crd::{
    Cluster, DatabaseInstance, PlanCheck, RequestPhase, TargetKind, UpgradeAction, UpgradeRequest,
    UpgradeType,
};

use crate::output::{columns, print};
use crate::{ActionArgs, Failure, Format, Outcome, RequestArgs, Session};

/// What the user asked for.
pub struct Ask<'a> {
    pub target: &'a str,
    pub version: Option<&'a str>,
    pub type_: UpgradeType,
    pub hold: bool,
    pub allow_offline: bool,
    pub switchover_to: Option<&'a str>,
}

/// Which kind the target is: an instance or a Cluster of the namespace.
enum Target {
    Instance,
    Cluster,
}

async fn find(s: &Session, name: &str) -> Result<Target, Failure> {
    let ns = &s.namespace;
    if Api::<DatabaseInstance>::namespaced(s.client.clone(), ns)
        .get_opt(name)
        .await?
        .is_some()
    {
        return Ok(Target::Instance);
    }
    if Api::<Cluster>::namespaced(s.client.clone(), ns)
        .get_opt(name)
        .await?
        .is_some()
    {
        return Ok(Target::Cluster);
    }
    Err(Failure::NotFound(format!(
        "no DatabaseInstance or Cluster {name} in namespace {ns}"
    )))
}

/// A DNS-1123 name for the request: `<target>-to-<version>` or `<target>-switchover-`.
fn request_name(ask: &Ask) -> String {
    let base = match (ask.type_, ask.version) {
        (UpgradeType::Switchover, _) => format!("{}-switchover", ask.target),
        (_, Some(v)) => format!("{}-to-{}", ask.target, v.replace('.', "-")),
        (_, None) => format!("{}-to-default", ask.target),
    };
    base.to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn build(ask: &Ask, target: &Target, name: &str, generate: bool) -> UpgradeRequest {
    let targets = match target {
        Target::Instance => json!({"instances": [ask.target]}),
        Target::Cluster => json!({"clusters": [ask.target]}),
    };
    let mut spec = json!({
        "targets": targets,
        "type": ask.type_,
        "action": if ask.hold { UpgradeAction::Upgrade } else { UpgradeAction::UpgradeAutoCommit },
    });
    if let Some(v) = ask.version {
        spec["targetVersion"] = json!(v);
    }
    if let Some(m) = ask.switchover_to {
        spec["switchoverTo"] = json!(m);
    }
    if ask.allow_offline {
        spec["allowOffline"] = json!(true);
    }
    let metadata = if generate {
        json!({"generateName": format!("{name}-")})
    } else {
        json!({"name": name})
    };
    serde_json::from_value(json!({
        "apiVersion": "baton.dev/v1alpha1", "kind": "UpgradeRequest",
        "metadata": metadata, "spec": spec,
    }))
    .expect("a well-formed UpgradeRequest")
}

/// A dry run's verdict for the target, as the operator wrote it in the request's job.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DryRunReport {
    /// The dry-run UpgradeRequest that was asked (and deleted once read).
    request: String,
    kind: TargetKind,
    target: String,
    source_version: Option<String>,
    target_version: Option<String>,
    /// The path's kind in words.
    path: Option<String>,
    /// The versions the upgrade would pass through.
    hops: Vec<String>,
    strategy: String,
    outage: String,
    steps: Vec<String>,
    checks: Vec<PlanCheck>,
    would_start: bool,
    message: Option<String>,
}

/// `upgrade` and `switchover`.
pub async fn upgrade(s: &Session, ask: Ask<'_>, args: &RequestArgs) -> Outcome {
    let target = find(s, ask.target).await?;
    // A switchover's name is generated: it is asked again and again, each one a new job.
    let generate = ask.type_ == UpgradeType::Switchover && args.request_name.is_none();
    let name = args
        .request_name
        .clone()
        .unwrap_or_else(|| request_name(&ask));
    let req = build(&ask, &target, &name, generate);
    let api = Api::<UpgradeRequest>::namespaced(s.client.clone(), &s.namespace);
    if args.dry_run {
        return dry_run(s, &api, req).await;
    }
    let created = api.create(&PostParams::default(), &req).await?;
    let created_name = created.metadata.name.clone().unwrap_or_default();
    if s.format == Format::Table {
        println!("upgraderequest.baton.dev/{created_name} created");
    } else if !args.wait {
        print(s.format, &created, |_| String::new());
    }
    if args.wait {
        let aim = if ask.hold {
            RequestPhase::AwaitingCommit
        } else {
            RequestPhase::Succeeded
        };
        return wait(s, &api, &created_name, aim, args.timeout).await;
    }
    Ok(())
}

async fn dry_run(s: &Session, api: &Api<UpgradeRequest>, mut req: UpgradeRequest) -> Outcome {
    // The operator's own verdict: a request with dryRun claims nothing and touches nothing;
    // it is deleted once read.
    req.spec.dry_run = true;
    let base = req
        .metadata
        .name
        .take()
        .or_else(|| req.metadata.generate_name.clone())
        .unwrap_or_default();
    req.metadata.generate_name = Some(format!("{}-dry-run-", base.trim_end_matches('-')));
    let created = match api.create(&PostParams::default(), &req).await {
        Ok(r) => r,
        // The API server's admission (schema and CEL) refused it: that is the verdict.
        Err(kube::Error::Api(e)) if e.code < 500 => {
            return Err(Failure::Refused(format!(
                "the API server refuses the request: {}",
                e.message
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let name = created.metadata.name.clone().unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let r = api.get(&name).await?;
        if r.status
            .as_ref()
            .and_then(|st| st.phase)
            .is_some_and(baton::controller::upgrade_request::jobs::is_terminal)
        {
            break r;
        }
        if Instant::now() >= deadline {
            let _ = api.delete(&name, &DeleteParams::default()).await;
            return Err(Failure::Api(format!(
                "no operator answered dry run {name} within 60 s: is Baton running and watching namespace {}?",
                s.namespace
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let _ = api.delete(&name, &DeleteParams::default()).await;
    let status = done.status.clone().unwrap_or_default();
    let Some(job) = status.jobs.first() else {
        return Err(Failure::Refused(status.message.unwrap_or_default()));
    };
    let plan = job.plan.clone().unwrap_or_default();
    let mut checks = vec![PlanCheck {
        name: "admission".into(),
        passed: true,
        detail: "the API server admits the request".into(),
    }];
    checks.extend(plan.checks.clone());
    let report = DryRunReport {
        request: name,
        kind: job.kind,
        target: job.target.clone(),
        source_version: plan.source_version.clone(),
        target_version: job.target_version.clone(),
        path: plan.kind.clone(),
        hops: plan.path.clone(),
        strategy: plan.strategy.clone(),
        outage: plan.outage.clone(),
        steps: plan.steps.clone(),
        checks,
        would_start: job.phase == RequestPhase::Succeeded,
        message: job.message.clone(),
    };
    let would = report.would_start;
    print(s.format, &report, |v| {
        let mut out = format!(
            "Dry run by the operator (UpgradeRequest {}, deleted): nothing was changed.\nTarget:     {:?} {}\nVersion:    {} → {}\nPath:       {}\nStrategy:   {}\nOutage:     {}\nSteps:\n",
            v.request,
            v.kind,
            v.target,
            v.source_version.as_deref().unwrap_or("-"),
            v.target_version.as_deref().unwrap_or("-"),
            v.path.as_deref().unwrap_or("-"),
            if v.strategy.is_empty() {
                "-"
            } else {
                &v.strategy
            },
            if v.outage.is_empty() { "-" } else { &v.outage },
        );
        for (i, step) in v.steps.iter().enumerate() {
            out.push_str(&format!("  {}. {step}\n", i + 1));
        }
        out.push_str("Checks:\n");
        let mut rows = vec![crate::output::header(&["", "CHECK", "DETAIL"])];
        for c in &v.checks {
            rows.push(vec![
                if c.passed { "ok" } else { "FAIL" }.into(),
                c.name.clone(),
                c.detail.clone(),
            ]);
        }
        for line in columns(&rows).lines() {
            out.push_str(&format!("  {line}\n"));
        }
        out.push_str(if v.would_start {
            "Verdict:    the upgrade would start now.\n"
        } else {
            "Verdict:    the upgrade would be refused or wait (see FAIL above).\n"
        });
        out
    });
    if would {
        Ok(())
    } else {
        Err(Failure::Refused(
            job.message
                .clone()
                .unwrap_or_else(|| "a pre-check failed".into()),
        ))
    }
}

/// `commit`, `rollback`, `cancel`: the request's action, as `kubectl patch` would set it (the
/// API server refuses any other move, with its reason).
pub async fn act(s: &Session, a: &ActionArgs, action: UpgradeAction) -> Outcome {
    let api = Api::<UpgradeRequest>::namespaced(s.client.clone(), &s.namespace);
    let patched = api
        .patch(
            &a.request,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"action": action}})),
        )
        .await?;
    if s.format == Format::Table {
        println!(
            "upgraderequest.baton.dev/{} action set to {action:?}",
            a.request
        );
    } else if !a.wait {
        print(s.format, &patched, |_| String::new());
    }
    if a.wait {
        let aim = match action {
            UpgradeAction::Rollback => RequestPhase::RolledBack,
            UpgradeAction::Cancel => RequestPhase::Cancelled,
            _ => RequestPhase::Succeeded,
        };
        return wait(s, &api, &a.request, aim, a.timeout).await;
    }
    Ok(())
}

/// Follows the request until it reaches `aim` (exit 0) or ends otherwise (exit 1), printing
/// each change of its phase or of a job's step.
async fn wait(
    s: &Session,
    api: &Api<UpgradeRequest>,
    name: &str,
    aim: RequestPhase,
    timeout: u64,
) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let mut last = String::new();
    loop {
        let r = api.get(name).await?;
        let st = r.status.clone().unwrap_or_default();
        let phase = st.phase.unwrap_or_default();
        let line = format!(
            "{phase:?}{}",
            st.jobs
                .iter()
                .map(|j| format!(
                    "  {}: {:?}{}",
                    j.target,
                    j.phase,
                    j.step
                        .as_ref()
                        .map(|s| format!(" ({s})"))
                        .unwrap_or_default()
                ))
                .collect::<String>()
        );
        if line != last && s.format == Format::Table {
            println!("{line}");
            last = line;
        }
        if phase == aim || baton::controller::upgrade_request::jobs::is_terminal(phase) {
            if s.format != Format::Table {
                print(s.format, &r, |_| String::new());
            }
            if phase == aim {
                return Ok(());
            }
            let why: Vec<String> = st.error_messages.into_iter().chain(st.message).collect();
            let why = why.join("; ");
            return Err(Failure::Refused(format!(
                "upgraderequest {name} ended {phase:?}, not {aim:?}: {why}"
            )));
        }
        if Instant::now() >= deadline {
            return Err(Failure::Refused(format!(
                "upgraderequest {name} is still {phase:?} after {timeout}s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_names_are_dns_labels_named_after_the_target() {
        let ask = |v: Option<&'static str>, t| Ask {
            target: "Orders_DB",
            version: v,
            type_: t,
            hold: false,
            allow_offline: false,
            switchover_to: None,
        };
        assert_eq!(
            request_name(&ask(Some("16.14"), UpgradeType::Rolling)),
            "orders-db-to-16-14"
        );
        assert_eq!(
            request_name(&ask(None, UpgradeType::Rolling)),
            "orders-db-to-default"
        );
        assert_eq!(
            request_name(&ask(None, UpgradeType::Switchover)),
            "orders-db-switchover"
        );
    }

    #[test]
    fn allow_offline_is_asked_only_when_given() {
        let ask = |allow_offline| Ask {
            target: "ledger",
            version: Some("17.11"),
            type_: UpgradeType::Rolling,
            hold: true,
            allow_offline,
            switchover_to: None,
        };
        let r = build(&ask(true), &Target::Instance, "ledger-to-17", false);
        assert!(r.spec.allow_offline);
        assert_eq!(r.spec.action, UpgradeAction::Upgrade);
        let r = build(&ask(false), &Target::Instance, "ledger-to-17", false);
        assert!(!r.spec.allow_offline);
    }
}
