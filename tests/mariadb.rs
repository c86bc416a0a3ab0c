//! MariaDB end to end: the real control plane, the local node and real MariaDB 10.11.18 and
//! 10.11.19 servers (Debian's packages, unpacked). Each test runs its own operator in its own
//! namespace; writers commit one autocommit INSERT at a time as an account holding `ALL
//! PRIVILEGES` (which `read_only` alone does not stop), and count a write only once its commit
//! returned.

use std::net::IpAddr;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use baton::crd::InstancePhase;
use baton_testkit::env::*;
use baton_testkit::faults::{self, Scenario};
use baton_testkit::scenarios;
use baton_testkit::workload;
use baton_testkit::*;

/// A plain-text connection to the member at `ip` as `user` with `password`.
async fn login(ip: IpAddr, user: &str, password: &str) -> Result<mysql_async::Conn, String> {
    workload::mariadb_login(ip, (user, password), None, Duration::from_secs(10)).await
}

/// As Baton's own account (its password from the instance's Secret).
async fn admin(ip: IpAddr, auth: &workload::Auth) -> Result<mysql_async::Conn, String> {
    login(ip, "baton", &auth.admin_password).await
}

/// As the workload's writer account (`ALL PRIVILEGES`: `read_only` alone does not stop it).
async fn writer(ip: IpAddr) -> Result<mysql_async::Conn, String> {
    login(ip, "writer", "writer").await
}

/// A rolling minor upgrade under a client that follows the primary label, one pinned to the
/// first primary's address and one trailing the label by a second: replicas first, a guarded
/// switchover, the old primary last; never two writable members, at most one not Ready, every
/// committed row on every member.
#[tokio::test]
async fn three_members_roll_a_minor_under_committing_clients_and_lose_nothing() {
    let env = Env::new("my-roll").await;
    let sc = Scenario::prepare(&env, "db", MARIADB_SOURCE, MARIADB.spec()).await;
    env.assert_all_run("db", MARIADB_SOURCE).await;
    let first = sc.first_primary;
    let auth = sc.auth.clone();
    let op = env.operator("my-roll", "");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mark = baton_testkit::audit::mark();
    sc.set_version(MARIADB_TARGET).await;
    let out = sc.finish(&op, MARIADB_TARGET).await;
    assert_eq!(out.result, Ok(()));
    env.assert_all_run("db", MARIADB_TARGET).await;
    assert_ne!(env.primary_ip("db").await, first, "the primary role moved");
    let label = out
        .reports
        .iter()
        .find(|r| r.writer == "label")
        .expect("label writer");
    env.assert_switchover_measured("db", label).await;
    print_upgrade_writes(&env, &mark);
    // Settled after the upgrade, the instance costs the API server no writes.
    env.assert_settled_passes_write_nothing("db", &op, 4).await;
    let restarts: Vec<String> = env
        .events("db")
        .await
        .into_iter()
        .filter(|(r, _)| r == "MemberRestarting")
        .map(|(_, n)| n.split(' ').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        restarts,
        ["db-1", "db-2", "db-0"],
        "replicas first, the old primary last"
    );
    // mariadb-upgrade ran on every member as part of its start: it marks the data directory
    // with the version whose system tables it checked (within one series it leaves the mark of
    // the first check: a patch release changes no system table). Only the primary has no source.
    for (name, ip) in workload::member_addresses(&env.client, &env.ns, "db").await {
        let mut c = admin(ip, &auth).await.expect("connect");
        let marked: Option<Option<String>> = c
            .query_first("SELECT CAST(LOAD_FILE(CONCAT(@@datadir, 'mysql_upgrade_info')) AS CHAR)")
            .await
            .expect("read the upgrade mark");
        let marked = marked.flatten().unwrap_or_default();
        let series = MARIADB_TARGET
            .rsplit_once('.')
            .map(|(s, _)| s)
            .unwrap_or_default();
        assert!(
            marked.starts_with(&format!("{series}.")),
            "{name}: mariadb-upgrade left {marked:?}"
        );
        let replicating: Vec<mysql_async::Row> =
            c.query("SHOW SLAVE STATUS").await.expect("status");
        let primary = env.primary_ip("db").await == ip;
        assert_eq!(replicating.is_empty(), primary, "{name}: replication state");
    }
    for r in &out.reports {
        println!("{r}");
    }
    delete_namespace(&env.client, &env.ns).await;
}

/// `secondSwitch`: after the old primary is upgraded the role goes back to it.
#[tokio::test]
async fn second_switch_returns_the_role_to_the_original_primary() {
    scenarios::second_switch_returns_the_role(MARIADB, "my-second").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_primary_is_reported_down_and_not_replaced() {
    scenarios::hung_primary_is_reported_down_and_not_replaced(MARIADB, "my-hung").await;
}

/// A primary that hangs for good is failed over and rejoins as a standby (see the scenario).
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_primary_is_failed_over_with_failover_on_and_rejoins() {
    scenarios::hung_primary_is_failed_over_and_rejoins(MARIADB, "my-failover").await;
}

/// A rolling upgrade with `durability: Replicated` (semi-synchronous) under three clients
/// (see the scenario).
#[tokio::test]
async fn a_replicated_instance_rolls_a_minor_under_committing_clients_and_loses_nothing() {
    scenarios::replicated_instance_rolls_losing_nothing(MARIADB, "my-roll-sync").await;
}

/// With `durability: Replicated` (semi-synchronous) the same failover loses no acknowledged
/// write (see the scenario).
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_primary_with_replicated_durability_is_failed_over_losing_nothing() {
    scenarios::hung_replicated_primary_is_failed_over_losing_nothing(MARIADB, "my-durable").await;
}

/// Account changes on the promoted member while Baton unfences it, as the test writers make
/// their account (through Baton's own account, which `read_only` does not stop). Under
/// `durability: Replicated` such a change waits for a replica's acknowledgement while it holds
/// the account tables, which the unfence needs to unlock accounts: Baton points the other
/// standby at the new primary before it unfences, so each change is acknowledged and the
/// unfence goes through. (Unfenced first, a change made once the semi-synchronous primary side
/// was on waited for a replica that was repointed only after the unfence, which waited on it.)
/// A failover's promotion.
#[tokio::test(flavor = "multi_thread")]
async fn account_changes_on_the_promoted_member_do_not_hold_its_unfence() {
    account_changes_through_the_unfence("my-held", Promotion::Failover).await;
}

/// The same through an upgrade's switchover (found by CI in the crash suite: the unfence of
/// the switchover waited for good on a writer's account change).
#[tokio::test(flavor = "multi_thread")]
async fn account_changes_on_the_switchover_candidate_do_not_hold_its_unfence() {
    account_changes_through_the_unfence("my-held-sw", Promotion::Switchover).await;
}

enum Promotion {
    /// db-0 hangs and is failed over.
    Failover,
    /// The upgrade hands db-0's role to a standby.
    Switchover,
}

async fn account_changes_through_the_unfence(prefix: &str, how: Promotion) {
    let mut spec = MARIADB.spec();
    spec["failover"] = json!({"enabled": true, "afterSeconds": 5});
    spec["durability"] = json!("Replicated");
    let (env, op) = Env::with_active(prefix, "db", 3, spec).await;
    drop(op);
    let op = env.operator_with(
        &format!("{prefix}-op"),
        &[("BATON_HOLD_AT", "db:promote@*#1:8000")],
    );
    let auth = env.auth("db").await;
    let ips = workload::member_addresses(&env.client, &env.ns, "db").await;
    // The writer's account and table, made by a writer for a moment.
    let (stop, task) = env.writer("db");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();
    assert!(!task.await.expect("writer").acked.is_empty(), "no write");
    let hung = match how {
        Promotion::Failover => Some(
            faults::hang_member(&env, "db-0")
                .await
                .expect("db-0's processes stopped"),
        ),
        Promotion::Switchover => {
            env.patch_spec("db", json!({"datastore": {"version": MARIADB.target}}))
                .await;
            None
        }
    };
    // The promoted standby, once it follows nobody (the operator is held there for 8 s).
    let to = eventually(Duration::from_secs(180), || async {
        let s = env.instances.get("db").await.ok()?.status?;
        let to = match how {
            Promotion::Failover => s.failover?.to?,
            Promotion::Switchover => s.upgrade?.switchover?.candidate?,
        };
        let mut c = admin(ips[&to], &auth).await.ok()?;
        let replica: Vec<mysql_async::Row> = c.query("SHOW SLAVE STATUS").await.ok()?;
        replica.is_empty().then_some(to)
    })
    .await
    .unwrap_or_else(|| panic!("nothing was promoted:\n{}", tail(&op.logs(), 30)));
    let other = ips
        .keys()
        .find(|m| **m != to && *m != "db-0")
        .expect("db-2")
        .clone();
    // Account changes back to back from the promotion on, each bounded, until the writer's
    // account is unlocked there.
    let done = CancellationToken::new();
    let changing = tokio::spawn({
        let (ip, auth, done) = (ips[&to], auth.clone(), done.clone());
        async move {
            let mut c = admin(ip, &auth).await.expect("connect");
            let mut n = 0u32;
            while !done.is_cancelled() {
                let change = c.query_drop(
                    "CREATE USER IF NOT EXISTS held@'%' IDENTIFIED BY 'held'; \
                     GRANT SELECT ON app.* TO held@'%'",
                );
                match tokio::time::timeout(Duration::from_secs(30), change).await {
                    Ok(Ok(())) => n += 1,
                    Ok(Err(e)) => return Err(format!("change {n}: {e}")),
                    Err(_) => return Err(format!("change {n} waited 30 s")),
                }
            }
            Ok(n)
        }
    });
    // Unfenced: the writer account commits there (acknowledged by a replica) ...
    let wrote = eventually(Duration::from_secs(60), || async {
        let mut w = writer(ips[&to]).await.ok()?;
        w.query_drop("INSERT INTO app.baton_w VALUES ('after-held', 1)")
            .await
            .ok()
    })
    .await;
    assert!(
        wrote.is_some(),
        "{to} never took the writer's commit:\n{}",
        tail(&op.logs(), 30)
    );
    done.cancel();
    let changes = changing.await.expect("changes");
    assert!(
        matches!(changes, Ok(n) if n > 0),
        "an account change failed or waited: {changes:?}\n{}",
        tail(&op.logs(), 30)
    );
    // ... which, like the account changes, reached the standby pointed at it. The changes run
    // back to back (thousands), and a replica applies them one commit at a time, so it waits
    // on the promoted member's position rather than for a fixed time (CI once saw 30 s fall
    // short of 35,000 changes on a loaded machine).
    let n = changes.expect("changes");
    let pos: String = admin(ips[&to], &auth)
        .await
        .expect("connect")
        .query_first("SELECT @@gtid_binlog_pos")
        .await
        .expect("gtid_binlog_pos")
        .expect("a position");
    let caught_up = std::time::Instant::now();
    let mut c = admin(ips[&other], &auth).await.expect("connect");
    let waited: Option<i64> = c
        .exec_first("SELECT MASTER_GTID_WAIT(?, 600)", (pos.clone(),))
        .await
        .expect("MASTER_GTID_WAIT");
    assert_eq!(
        waited,
        Some(0),
        "{other} never reached {to}'s position {pos}"
    );
    println!(
        "{n} account changes; {other} reached {pos} {:.1} s after the writer's commit",
        caught_up.elapsed().as_secs_f64()
    );
    let held: Option<i64> = c
        .query_first("SELECT COUNT(*) FROM mysql.user WHERE user = 'held'")
        .await
        .expect("users");
    let row: Option<i64> = c
        .query_first("SELECT COUNT(*) FROM app.baton_w WHERE k = 'after-held'")
        .await
        .expect("rows");
    assert_eq!(
        (held, row),
        (Some(1), Some(1)),
        "{other} lacks what {to} committed"
    );
    match how {
        Promotion::Failover => {
            let last = env.status("db").await.last_failover.expect("lastFailover");
            assert_eq!(
                (last.from.as_str(), last.to.as_str()),
                ("db-0", to.as_str())
            );
        }
        Promotion::Switchover => {
            env.wait_for("db", InstancePhase::Active, MARIADB.target, &op)
                .await;
        }
    }
    drop(hung);
    delete_namespace(&env.client, &env.ns).await;
}

/// A primary that dies while the upgrade restarts a standby: the upgrade pauses, the failover
/// runs, the old primary rejoins and the upgrade resumes to the end (see the scenario).
#[tokio::test(flavor = "multi_thread")]
async fn a_primary_dying_mid_upgrade_is_failed_over_and_the_upgrade_resumes() {
    scenarios::primary_dying_mid_upgrade_is_failed_over_and_the_upgrade_resumes(
        MARIADB,
        "my-failover-upgrade",
    )
    .await;
}

/// With no writes in flight the old primary holds nothing more and rejoins on its own (Redis:
/// kept, its history cannot be compared); see the scenario.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_primary_with_no_writes_in_flight_is_failed_over_and_rejoins() {
    scenarios::idle_primary_is_failed_over_and_rejoins(MARIADB, "my-failover-idle").await;
}

#[tokio::test]
async fn a_replica_that_cannot_start_halts_the_upgrade_and_reverting_recovers() {
    scenarios::broken_standby_halts_and_reverting_recovers(MARIADB, "my-broken").await;
}

/// Closed by default, and the fence closes the gap `read_only` leaves. The example comes up as
/// written; a client without credentials, or with a wrong password, is refused; the Secret's
/// application account writes on the primary and reads on a replica; while the primary is
/// fenced a privileged account can neither connect nor keep a session; no generated password
/// is in status, Events or the operator's log.
#[tokio::test]
async fn the_example_comes_up_closed_and_the_fence_stops_a_privileged_account() {
    let env = Env::new("my-example").await;
    let op = env.operator("my-example", "");
    env.apply_example("mariadb-ha.yaml");
    let inst = env
        .wait_for("shop", InstancePhase::Active, MARIADB_SOURCE, &op)
        .await;
    env.assert_all_run("shop", MARIADB_SOURCE).await;
    let s = inst.status.clone().expect("status");
    assert_eq!(s.members.len(), 3);
    let auth = env.auth("shop").await;
    assert_eq!(auth.user, "app");
    let primary = env.primary_ip("shop").await;
    let replica = workload::member_addresses(&env.client, &env.ns, "shop")
        .await
        .into_values()
        .find(|ip| *ip != primary)
        .expect("a replica");

    for (user, password) in [("root", ""), ("app", ""), ("app", "wrong"), ("baton", "")] {
        assert!(
            login(primary, user, password).await.is_err(),
            "{user} with password {password:?} was let in"
        );
    }
    let mut app = login(primary, &auth.user, &auth.password)
        .await
        .expect("the Secret's account logs in");
    app.query_drop("CREATE DATABASE IF NOT EXISTS shop; CREATE TABLE shop.t (x INT PRIMARY KEY); INSERT INTO shop.t VALUES (1)")
        .await
        .expect("and writes on the primary");
    let read = eventually(Duration::from_secs(10), || async {
        let mut c = login(replica, &auth.user, &auth.password).await.ok()?;
        c.query_first::<i64, _>("SELECT x FROM shop.t").await.ok()?
    })
    .await;
    assert_eq!(read, Some(1), "the Secret's account reads on a replica");
    assert!(
        login(replica, &auth.user, &auth.password)
            .await
            .expect("login")
            .query_drop("INSERT INTO shop.t VALUES (2)")
            .await
            .is_err(),
        "a replica took a write"
    );

    // The workload's privileged account exists once a client wrote through the primary.
    let (stop, writes) = env.writer("shop");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    let report = writes.await.expect("writer");
    assert!(!report.acked.is_empty(), "no write was committed");
    let mut w = writer(primary).await.expect("the writer connects");
    w.query_drop("SELECT 1").await.expect("a live session");
    // Fence it the way a switchover does, through the engine.
    let engine = baton::engine::for_datastore(baton::crd::Datastore::Mariadb).expect("engine");
    let target = auth.target(primary, 3306);
    engine.fence(&target).await.expect("fence");
    assert!(
        w.query_drop("INSERT INTO app.baton_w VALUES ('after-fence', 1)")
            .await
            .is_err(),
        "the privileged session survived the fence"
    );
    assert!(
        writer(primary).await.is_err(),
        "a privileged account connected to a fenced primary"
    );
    let p = engine.probe(&target).await.expect("probe");
    assert!(p.fenced && !p.writable(), "{p:?}");
    engine.unfence(&target).await.expect("unfence");
    let mut w = writer(primary)
        .await
        .expect("the writer connects after the unfence");
    w.query_drop("INSERT INTO app.baton_w VALUES ('after-unfence', 1)")
        .await
        .expect("writes again");
    // Probes that race an unfence (a leader handing over, a watcher): a probe that saw the
    // fence a moment before it was lifted must not lock the accounts it just unlocked.
    for round in 0..20 {
        engine.fence(&target).await.expect("fence");
        let stop = CancellationToken::new();
        let probers: Vec<_> = (0..6)
            .map(|_| {
                let (target, stop) = (target.clone(), stop.clone());
                tokio::spawn(async move {
                    let engine = baton::engine::for_datastore(baton::crd::Datastore::Mariadb)
                        .expect("engine");
                    while !stop.is_cancelled() {
                        let _ = engine.probe(&target).await;
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(30)).await;
        engine.unfence(&target).await.expect("unfence");
        tokio::time::sleep(Duration::from_millis(30)).await;
        stop.cancel();
        for p in probers {
            p.await.expect("prober");
        }
        if let Err(e) = writer(primary).await {
            panic!("round {round}: the primary is unfenced, yet its writer cannot connect: {e}");
        }
    }
    assert_nothing_lost(&env, "shop", &[&report]).await;
    assert_secrets_kept(&env, &op, "shop", &inst).await;
    delete_namespace(&env.client, &env.ns).await;
}

/// Replicas that cannot execute the fenced position before `fenceTimeoutSeconds` (their SQL
/// threads stopped while the operator is about to fence): the fence is undone, the primary is
/// unchanged and takes writes again, and the failure names why.
#[tokio::test]
async fn a_candidate_that_cannot_catch_up_in_time_undoes_the_fence() {
    let env = Env::new("my-undo").await;
    let mut spec = MARIADB.spec();
    spec["upgradePolicy"] = json!({"fenceTimeoutSeconds": 5});
    let sc = Scenario::prepare(&env, "db", MARIADB_SOURCE, spec).await;
    let first = sc.first_primary;
    let auth = sc.auth.clone();
    // The operator holds for 4 s right after it recorded the Fencing stage, before fencing.
    let op = env.operator_with(
        "my-undo",
        &[("BATON_HOLD_AT", "api:status:Switchover:Fencing#1:4000")],
    );
    sc.set_version(MARIADB_TARGET).await;
    let fencing = eventually(LONG, || async {
        let st = env.instances.get("db").await.ok()?.status?;
        st.upgrade?.switchover.map(|_| ())
    })
    .await;
    assert!(
        fencing.is_some(),
        "no switchover began:\n{}",
        tail(&op.logs(), 30)
    );
    let ips = workload::member_addresses(&env.client, &env.ns, "db").await;
    for (name, ip) in &ips {
        if *ip != first {
            let mut c = admin(*ip, &auth).await.expect("connect");
            c.query_drop("STOP SLAVE SQL_THREAD")
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
    let failed = eventually(LONG, || async {
        let st = env.instances.get("db").await.ok()?.status?;
        (st.phase == Some(InstancePhase::Error)).then_some(st)
    })
    .await;
    assert!(
        failed.is_some(),
        "the step never failed:\n{}",
        tail(&op.logs(), 40)
    );
    // The replicas resume, so every member can be checked for every committed write.
    for (name, ip) in &ips {
        if *ip != first {
            let mut c = admin(*ip, &auth).await.expect("connect");
            c.query_drop("START SLAVE SQL_THREAD")
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
    env.wait_event("db", "SwitchoverUndone", "").await;
    assert_eq!(env.primary_ip("db").await, first, "the primary moved");
    let mut app = writer(first).await.expect("the primary takes clients");
    app.query_drop("INSERT INTO app.baton_w VALUES ('after-undo', 1)")
        .await
        .expect("the primary takes writes again");
    // Nothing lost on any member, never two writable, the labelled primary the one writable.
    let out = sc.finish(&op, MARIADB_TARGET).await;
    let why = out.result.expect_err("the step failed");
    assert!(
        why.contains("no upgraded standby reached") && why.contains("undone"),
        "{why}"
    );
    delete_namespace(&env.client, &env.ns).await;
}

/// Upgrade → AwaitingCommit → Rollback: the replicas go to 10.11.19 and come back to
/// 10.11.18, the primary never moves, nothing committed is lost.
#[tokio::test]
async fn upgrade_then_rollback_returns_every_member_to_the_old_minor() {
    scenarios::upgrade_then_rollback_returns_every_member(
        MARIADB,
        "my-rollback",
        ("mariadb-ha.yaml", "shop"),
        ("mariadb-canary.yaml", "shop-canary"),
    )
    .await;
}

/// One request over two Redis and two MariaDB instances (a label selector, no target version:
/// each goes to its datastore's catalog default) → Succeeded 4/0.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_over_redis_and_mariadb_instances_succeeds_four_of_four() {
    scenarios::a_batch_beside_redis_succeeds_four_of_four(MARIADB, "my-batch").await;
}

/// A replica made a primary behind Baton's back, which then took a write (a database only it
/// has): Baton fences it, quarantines it, keeps its data, and an upgrade waits until a person
/// decides; deleting the member's claim is that decision.
#[tokio::test]
async fn a_second_writer_is_fenced_and_quarantined_and_keeps_its_writes_until_a_person_decides() {
    let (env, op) = Env::with_active("my-second-writer", "db", 3, MARIADB.spec()).await;
    let ips = workload::member_addresses(&env.client, &env.ns, "db").await;
    let stray = ips["db-2"];
    let auth = env.auth("db").await;
    let mut c = admin(stray, &auth).await.expect("connect db-2");
    c.query_drop("STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = OFF")
        .await
        .expect("make db-2 a primary");
    c.query_drop("CREATE DATABASE only_on_db_2")
        .await
        .expect("a write on db-2");
    drop(c);

    scenarios::wait_quarantined(&env, &op, "db-2").await;
    let p = baton::engine::for_datastore(baton::crd::Datastore::Mariadb)
        .expect("engine")
        .probe(&auth.target(stray, 3306))
        .await
        .expect("probe db-2");
    assert!(p.fenced && !p.writable(), "db-2 still takes writes: {p:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kept: Option<String> = admin(stray, &auth)
        .await
        .expect("connect db-2")
        .query_first("SELECT schema_name FROM information_schema.schemata WHERE schema_name = 'only_on_db_2'")
        .await
        .expect("read the schemata");
    assert!(kept.is_some(), "db-2's write was thrown away");

    scenarios::upgrade_waits_until_the_quarantine_is_released(&env, &op, MARIADB, "db-2").await;
    delete_namespace(&env.client, &env.ns).await;
}

/// `InPlace`: both members restarted together on 10.11.19 (an outage the job announces); the
/// primary, read-only after its restart, is unfenced again by Baton; nothing committed is lost.
#[tokio::test]
async fn in_place_restarts_every_member_together() {
    scenarios::in_place_restarts_every_member_together(MARIADB, "my-inplace", None).await;
}

/// `spec.tls`: members require TLS on every network connection and replicate over it,
/// verifying the chain. A 10.11.18 → 10.11.19 roll under clients that verify the CA loses
/// nothing; a plain-text client and a client trusting another CA are refused; a renewed
/// certificate is served by every member without a restart.
#[tokio::test]
async fn tls_members_roll_under_verifying_clients_and_refuse_plain_text() {
    use baton_testkit::certs;
    let env = Env::new("my-tls").await;
    certs::tls_secret(&env, "db-tls").await;
    let mut spec = MARIADB.spec();
    spec["tls"] = json!({"secretName": "db-tls"});
    let sc = Scenario::prepare(&env, "db", MARIADB_SOURCE, spec).await;
    assert!(sc.auth.ca.is_some(), "the test clients verify the CA");
    let primary = sc.first_primary;
    let auth = sc.auth.clone();
    let plain = admin(primary, &auth)
        .await
        .expect_err("a plain-text client was let in");
    // MariaDB answers a plain-text login under require_secure_transport as a wrong password;
    // the same login over TLS is let in, so the transport is what was refused.
    assert!(plain.to_string().contains("Access denied"), "{plain}");
    let timeout = Duration::from_secs(10);
    let admin_login = ("baton", auth.admin_password.as_str());
    workload::mariadb_login(primary, admin_login, auth.ca.as_ref(), timeout)
        .await
        .expect("the same login over TLS");
    let other = tempfile::tempdir().expect("tempdir");
    let (other_ca, _, _) = certs::certificates(other.path());
    let refused =
        workload::mariadb_login(primary, admin_login, Some(&other_ca.into_bytes()), timeout)
            .await
            .expect_err("a client trusting another CA connected");
    // The other CA has the same subject, so the chain fails on its signature.
    assert!(
        refused.to_string().contains("invalid peer certificate"),
        "{refused}"
    );

    let op = env.operator("my-tls", "");
    sc.set_version(MARIADB_TARGET).await;
    let out = sc.finish(&op, MARIADB_TARGET).await;
    assert_eq!(out.result, Ok(()));
    for r in &out.reports {
        println!("over TLS, {r}");
    }
    certs::renewed_certificate_is_served_online(&env, &op, "db", "db-tls").await;
    delete_namespace(&env.client, &env.ns).await;
}

/// A candidate promoted just before the operator died and not answering the next operator,
/// past the fence deadline: the switchover is undone and the candidate follows db-0 again with
/// every acknowledged write (see the scenario).
#[tokio::test(flavor = "multi_thread")]
async fn a_candidate_promoted_before_an_undo_follows_the_old_primary_again() {
    scenarios::promoted_candidate_of_an_undone_switchover_follows_again(MARIADB, "my-undo").await;
}
