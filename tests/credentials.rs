//! Closed by default: every instance Baton creates requires credentials, from a Secret Baton
//! generates or one the user names; the operator reads them at connect time and never shows
//! them. (MariaDB's own checks are in tests/mariadb.rs: the example test.)

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

use baton::crd::InstancePhase;
use baton_testkit::env::*;
use baton_testkit::workload;
use baton_testkit::*;

async fn redis_conn(
    ip: std::net::IpAddr,
    user: Option<(&str, &str)>,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let url = match user {
        Some((u, p)) => format!("redis://{u}:{p}@{ip}:6379/"),
        None => format!("redis://{ip}:6379/"),
    };
    redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await
}

/// Redis: the `default` user is off, so a client without credentials is refused; the Secret's
/// application account reads and writes but cannot run `@admin` commands (it cannot lift the
/// fence); Baton's account cannot touch a key; replicas authenticate and replicate; no password is shown anywhere.
#[tokio::test]
async fn redis_refuses_a_client_without_credentials_and_serves_the_secrets_account() {
    let (env, op) = Env::with_active("cred-redis", "db", 2, json!({})).await;
    let auth = env.auth("db").await;
    assert_eq!(auth.user, "app");
    let primary = env.primary_ip("db").await;
    match redis_conn(primary, None).await {
        Err(_) => {}
        Ok(mut c) => {
            let r: redis::RedisResult<()> = redis::cmd("SET")
                .arg("k")
                .arg("v")
                .query_async(&mut c)
                .await;
            let e = r.expect_err("an unauthenticated client wrote");
            assert!(e.to_string().contains("NOAUTH"), "{e}");
        }
    }
    assert!(
        redis_conn(primary, Some(("app", "wrong"))).await.is_err(),
        "a wrong password was accepted"
    );
    let mut c = redis_conn(primary, Some((&auth.user, &auth.password)))
        .await
        .expect("the Secret's account logs in");
    let _: () = redis::cmd("SET")
        .arg("cred-k")
        .arg("1")
        .query_async(&mut c)
        .await
        .expect("writes");
    let lift: redis::RedisResult<()> = redis::cmd("CONFIG")
        .arg("SET")
        .arg("min-replicas-to-write")
        .arg("0")
        .query_async(&mut c)
        .await;
    assert!(
        lift.is_err(),
        "the application account ran an @admin command"
    );
    // Baton's own account runs the commands Baton sends and touches no data.
    let mut b = redis_conn(primary, Some(("baton", &auth.admin_password)))
        .await
        .expect("Baton's account logs in");
    let read: redis::RedisResult<Option<String>> =
        redis::cmd("GET").arg("cred-k").query_async(&mut b).await;
    let e = read.expect_err("Baton's account read a key");
    assert!(e.to_string().to_lowercase().contains("noperm"), "{e}");
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut b)
        .await
        .expect("Baton's account reads INFO");
    assert!(info.contains("role:master"), "{info}");
    // The standby replicated it: it authenticated as the replicator.
    let standby = workload::member_addresses(&env.client, &env.ns, "db")
        .await
        .into_values()
        .find(|ip| *ip != primary)
        .expect("a standby");
    let got = eventually(Duration::from_secs(10), || async {
        let mut c = redis_conn(standby, Some((&auth.user, &auth.password)))
            .await
            .ok()?;
        redis::cmd("GET")
            .arg("cred-k")
            .query_async::<Option<String>>(&mut c)
            .await
            .ok()?
    })
    .await;
    assert_eq!(got.as_deref(), Some("1"), "the standby did not replicate");
    // Least access around the members: the object is right (the local node enforces none).
    let np = Api::<k8s_openapi::api::networking::v1::NetworkPolicy>::namespaced(
        env.client.clone(),
        &env.ns,
    )
    .get("db")
    .await
    .expect("the instance's NetworkPolicy");
    let spec = serde_json::to_value(np.spec).expect("spec");
    assert_eq!(
        spec["podSelector"]["matchLabels"]["baton.dev/instance"],
        "db"
    );
    assert_eq!(spec["policyTypes"], json!(["Ingress"]));
    assert_eq!(spec["ingress"][0]["ports"][0]["port"], 6379);
    let from = spec["ingress"][0]["from"].as_array().expect("from").clone();
    assert_eq!(from.len(), 3, "{from:?}");
    assert_eq!(
        from[1]["podSelector"]["matchLabels"]["baton.dev/client"],
        "db"
    );
    assert_eq!(
        from[2]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "baton"
    );
    let inst = env.instances.get("db").await.expect("instance");
    assert_secrets_kept(&env, &op, "db", &inst).await;
    delete_namespace(&env.client, &env.ns).await;
}

/// PostgreSQL: over the network every role needs its password (no trust); the Secret's
/// application account owns a database of its name and works there.
#[tokio::test]
async fn postgresql_refuses_a_client_without_credentials_and_serves_the_secrets_account() {
    let (env, op) = Env::with_active("cred-pg", "db", 2, postgres(PG_SOURCE)).await;
    let auth = env.auth("db").await;
    let primary = env.primary_ip("db").await;
    let pg = |user: String, password: Option<String>, db: String| async move {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(primary.to_string())
            .port(5432)
            .user(&user)
            .dbname(&db)
            .connect_timeout(Duration::from_secs(3));
        if let Some(p) = &password {
            cfg.password(p);
        }
        let (c, conn) = cfg.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok::<_, tokio_postgres::Error>(c)
    };
    for (user, pw) in [
        ("postgres", None),
        ("baton", None),
        ("app", None),
        ("app", Some("wrong")),
        ("replicator", None),
    ] {
        assert!(
            pg(user.into(), pw.map(str::to_string), "postgres".into())
                .await
                .is_err(),
            "{user} with password {pw:?} was let in"
        );
    }
    let c = pg(
        auth.user.clone(),
        Some(auth.password.clone()),
        auth.user.clone(),
    )
    .await
    .expect("the Secret's account logs in to its database");
    c.batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .await
        .expect("and writes there");
    let inst = env.instances.get("db").await.expect("instance");
    assert_secrets_kept(&env, &op, "db", &inst).await;
    delete_namespace(&env.client, &env.ns).await;
}

/// A Secret the user names: without a key, nothing is started and the CredentialsReady
/// condition names the key; once the key is there, the instance comes up with the user's
/// passwords (Baton generates no Secret of its own).
#[tokio::test]
async fn a_named_secret_missing_a_key_starts_nothing_until_the_key_is_added() {
    let env = Env::new("cred-named").await;
    let op = env.operator("cred-named", "");
    let secrets = Api::<Secret>::namespaced(env.client.clone(), &env.ns);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "mine"},
        "stringData": {
            "username": "shopper",
            "password": "a-password-of-the-users-own",
            "replication-password": "the-users-replication-password",
        },
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the Secret");
    env.create("db", 2, json!({"credentials": {"secretName": "mine"}}))
        .await;
    let cond = eventually(Duration::from_secs(30), || async {
        let st = env.instances.get("db").await.ok()?.status?;
        st.conditions
            .into_iter()
            .find(|c| c.type_ == "CredentialsReady" && c.status == "False")
    })
    .await
    .unwrap_or_else(|| panic!("no CredentialsReady=False:\n{}", tail(&op.logs(), 20)));
    assert!(
        cond.message.contains("\"admin-password\"") && cond.message.contains("mine"),
        "{}",
        cond.message
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pods = Api::<Pod>::namespaced(env.client.clone(), &env.ns)
        .list(&ListParams::default().labels("baton.dev/instance=db"))
        .await
        .expect("pods");
    assert!(pods.items.is_empty(), "members were started");
    assert!(
        secrets
            .get_opt("db-credentials")
            .await
            .expect("get")
            .is_none(),
        "Baton generated a Secret of its own"
    );

    secrets
        .patch(
            "mine",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"stringData": {"admin-password": "the-users-password-for-baton"}}),
            ),
        )
        .await
        .expect("add the key");
    let inst = env.wait_for("db", InstancePhase::Active, SOURCE, &op).await;
    let primary = env.primary_ip("db").await;
    let mut c = redis_conn(primary, Some(("shopper", "a-password-of-the-users-own")))
        .await
        .expect("the user's own account logs in");
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async(&mut c)
        .await
        .expect("writes");
    assert_secrets_kept(&env, &op, "db", &inst).await;
    delete_namespace(&env.client, &env.ns).await;
}

/// Whether `user`/`password` logs in to the member at `ip` (the application account into its
/// own database, on PostgreSQL).
async fn logs_in(
    ds: workload::Datastore,
    ip: std::net::IpAddr,
    user: &str,
    password: &str,
) -> bool {
    let timeout = Duration::from_secs(3);
    match ds {
        workload::Datastore::Redis => redis_conn(ip, Some((user, password))).await.is_ok(),
        workload::Datastore::Postgresql => {
            let mut cfg = tokio_postgres::Config::new();
            let db = if user == "baton" { "baton" } else { user };
            cfg.host(ip.to_string())
                .port(5432)
                .user(user)
                .password(password)
                .dbname(db)
                .connect_timeout(timeout);
            match cfg.connect(tokio_postgres::NoTls).await {
                Ok((_c, conn)) => {
                    tokio::spawn(conn);
                    true
                }
                Err(_) => false,
            }
        }
        workload::Datastore::Mariadb | workload::Datastore::Mysql => {
            workload::mariadb_login(ip, (user, password), None, timeout)
                .await
                .is_ok()
        }
    }
}

/// Writes `key` on the primary with `auth` and waits until the standby has it.
async fn replicated(env: &Env, f: Flavor, auth: &workload::Auth, key: &str, n: u64) {
    let primary = env.primary_ip("db").await;
    let mut c = workload::connect(f.datastore, primary, auth)
        .await
        .expect("a client connects to the primary with the Secret's credentials");
    c.write(key, n).await.expect("the primary takes a write");
    let standby = workload::member_addresses(&env.client, &env.ns, "db")
        .await
        .into_values()
        .find(|ip| *ip != primary)
        .expect("a standby");
    let got = eventually(Duration::from_secs(30), || async {
        let mut c = workload::connect_admin(f.datastore, standby, auth).await?;
        c.read(&[key.to_string()]).await.ok()?.first().copied()?
    })
    .await;
    assert_eq!(got, Some(n), "the standby does not have {key}");
}

/// A password change, the way a platform team rotates one: edit the Secret. Baton sets every
/// changed password on every member online (no restart), then records them as applied; the old
/// passwords stop working, the new ones work, replication keeps authenticating — also after
/// the primary restarts, when the standby logs in again and the restarted member boots with
/// the applied copy.
async fn a_changed_secret_is_applied_online(prefix: &str, f: Flavor) {
    let (env, op) = Env::with_active(prefix, "db", 2, f.spec()).await;
    let old = env.auth("db").await;
    replicated(&env, f, &old, "before", 1).await;
    let restarts = env.restarts("db").await;
    let secrets = Api::<Secret>::namespaced(env.client.clone(), &env.ns);
    env.rotate_passwords("db-credentials").await;
    // Looked at within the health interval; a touch of the instance makes it now.
    env.label("db", "rotated", "1").await;
    let applied = eventually(Duration::from_secs(90), || async {
        let want = secrets.get("db-credentials").await.ok()?.data?;
        let have = secrets.get("db-credentials-applied").await.ok()?.data?;
        let st = env.instances.get("db").await.ok()?.status?;
        let ready = st
            .conditions
            .iter()
            .any(|c| c.type_ == "CredentialsReady" && c.reason == "Ready");
        (want == have && ready).then_some(())
    })
    .await;
    assert!(
        applied.is_some(),
        "the changed Secret was never applied: {:#?}\n{}",
        env.status("db").await.conditions,
        tail(&op.logs(), 30)
    );
    assert_eq!(env.restarts("db").await, restarts, "no member restarted");
    let new = env.auth("db").await;
    assert_eq!(new.password, ROTATED_PASSWORD);
    for ip in workload::member_addresses(&env.client, &env.ns, "db")
        .await
        .into_values()
    {
        assert!(
            !logs_in(f.datastore, ip, &old.user, &old.password).await,
            "{ip}: the old application password still works"
        );
        assert!(
            !logs_in(f.datastore, ip, "baton", &old.admin_password).await,
            "{ip}: Baton's old password still works"
        );
        assert!(
            logs_in(f.datastore, ip, &new.user, &new.password).await,
            "{ip}: the new application password is refused"
        );
        assert!(
            logs_in(f.datastore, ip, "baton", &new.admin_password).await,
            "{ip}: Baton's new password is refused"
        );
    }
    replicated(&env, f, &new, "after", 2).await;
    env.wait_event("db", "PasswordsChanging", "").await;
    // The primary restarts: it boots with the applied copy, Baton logs in with the new
    // password, and the standby authenticates to it with the new replication password.
    let primary = env.status("db").await.primary.expect("a primary");
    let uid = env.member_pods("db").await[&primary].metadata.uid.clone();
    env.pods
        .delete(&primary, &Default::default())
        .await
        .expect("delete the primary's pod");
    let back = eventually(Duration::from_secs(120), || async {
        let st = env.instances.get("db").await.ok()?.status?;
        let ready = st.phase == Some(InstancePhase::Active)
            && st.members.iter().all(|m| m.ready && m.error.is_none())
            && st
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
        let pods = env.member_pods("db").await;
        let fresh = pods
            .get(&primary)
            .is_some_and(|p| p.metadata.uid.is_some() && p.metadata.uid != uid);
        (ready && fresh).then_some(())
    })
    .await;
    assert!(
        back.is_some(),
        "the instance did not come back after its primary restarted: {:#?}\n{}",
        env.status("db").await,
        tail(&op.logs(), 30)
    );
    replicated(&env, f, &new, "after-restart", 3).await;
    let inst = env.instances.get("db").await.expect("instance");
    assert_secrets_kept(&env, &op, "db", &inst).await;
    delete_namespace(&env.client, &env.ns).await;
}

#[tokio::test]
async fn redis_passwords_change_online_when_the_secret_changes() {
    a_changed_secret_is_applied_online("rot-redis", REDIS).await;
}

#[tokio::test]
async fn postgresql_passwords_change_online_when_the_secret_changes() {
    a_changed_secret_is_applied_online("rot-pg", POSTGRES).await;
}

#[tokio::test]
async fn mariadb_passwords_change_online_when_the_secret_changes() {
    a_changed_secret_is_applied_online("rot-maria", MARIADB).await;
}

/// Redis with `spec.tls` (the 7.0.15 build has TLS): members serve TLS only (no plain-text
/// port) and replicate over it; a hotfix roll under clients that verify the CA loses nothing;
/// a renewed certificate is served without a restart; the 6.2.14 build, which has no TLS, is
/// not started without it and the instance says so.
#[tokio::test]
async fn redis_tls_members_roll_under_verifying_clients_and_a_build_without_tls_says_so() {
    use baton_testkit::certs;
    use baton_testkit::faults::Scenario;
    let env = Env::new("redis-tls").await;
    certs::tls_secret(&env, "db-tls").await;
    env.add_redis_hotfix().await;
    let spec = json!({
        "datastore": {"type": "redis", "version": TARGET},
        "tls": {"secretName": "db-tls"},
    });
    let sc = Scenario::prepare(&env, "db", TARGET, spec).await;
    assert!(sc.auth.ca.is_some(), "the test clients verify the CA");
    let primary = sc.first_primary;
    let auth = sc.auth.clone();
    // Plain text: nothing listens for it. Another CA: refused by the client's verification.
    assert!(
        redis_conn(primary, Some((&auth.user, &auth.password)))
            .await
            .is_err(),
        "a plain-text client connected"
    );
    let other = tempfile::tempdir().expect("tempdir");
    let (other_ca, _, _) = certs::certificates(other.path());
    assert!(
        baton::tls::connect(&primary.to_string(), 6379, other_ca.as_bytes())
            .await
            .is_err(),
        "a client trusting another CA connected"
    );

    let op = env.operator("redis-tls", "");
    sc.set_version("7.0.15-hotfix1").await;
    let out = sc.finish(&op, "7.0.15-hotfix1").await;
    assert_eq!(out.result, Ok(()));
    for r in &out.reports {
        println!("over TLS, {r}");
    }

    certs::renewed_certificate_is_served_online(&env, &op, "db", "db-tls").await;

    // The 6.2.14 build has no TLS: its member is not started without it, and the instance
    // says so.
    env.create(
        "old",
        1,
        json!({"datastore": {"type": "redis", "version": SOURCE}, "tls": {"secretName": "db-tls"}}),
    )
    .await;
    let cond = eventually(Duration::from_secs(60), || async {
        let st = env.instances.get("old").await.ok()?.status?;
        st.conditions
            .into_iter()
            .find(|c| c.type_ == "TLSReady" && c.status == "False")
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "no TLSReady=False for a build without TLS:\n{}",
            tail(&op.logs(), 20)
        )
    });
    assert!(cond.message.contains("has no TLS"), "{}", cond.message);
    let pods = env.member_pods("old").await;
    assert!(
        pods.values().all(|p| !p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.ready))),
        "a member without TLS became Ready"
    );
    delete_namespace(&env.client, &env.ns).await;
}
