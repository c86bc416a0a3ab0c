//! Certificates for the TLS suites, made with the openssl CLI: a CA, and server certificates it
//! issues for the names `db`, `db-headless` (never the pods' addresses, as a certificate for a
//! Service's names is: Baton and the members verify the chain, as libpq's `verify-ca` does, and
//! MariaDB clients the name [`NAME`]).

/// The first name the test certificates are issued for.
pub const NAME: &str = "db";

/// A CA and a server certificate for the names `db`, `db-headless` (not the pods' addresses),
/// made with the openssl CLI, as `(ca.crt, tls.crt, tls.key)`, in `dir`.
pub fn certificates(dir: &std::path::Path) -> (String, String, String) {
    let run = |args: &[&str]| openssl(dir, args);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:db,DNS:db-headless\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=baton-test-ca",
    ]);
    let (crt, key) = issue(dir);
    let ca = std::fs::read_to_string(dir.join("ca.crt")).expect("read");
    (ca, crt, key)
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// From now on [`issue`] in `dir` makes certificates that may authenticate clients too (as a
/// Redis Cluster node's must: the nodes present theirs to each other on the cluster bus).
pub fn allow_client_auth(dir: &std::path::Path) {
    let ext = dir.join("ext.cnf");
    let text = std::fs::read_to_string(&ext).expect("ext");
    std::fs::write(
        &ext,
        text.replace(
            "extendedKeyUsage=serverAuth\n",
            "extendedKeyUsage=serverAuth,clientAuth\n",
        ),
    )
    .expect("ext");
}

/// A new server key and certificate from the CA in `dir` (what a renewal writes).
pub fn issue(dir: &std::path::Path) -> (String, String) {
    let run = |args: &[&str]| openssl(dir, args);
    run(&[
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "tls.key", "-out", "tls.csr", "-subj",
        "/CN=db",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "tls.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("read");
    (read("tls.crt"), read("tls.key"))
}

/// Creates the TLS Secret `name` (type `kubernetes.io/tls`, with `ca.crt`) from a new CA made in
/// the environment's directory; returns the CA.
pub async fn tls_secret(env: &crate::env::Env, name: &str) -> String {
    let (ca, crt, key) = certificates(env.dir.as_path());
    create_tls_secret(env, name, &ca, &crt, &key).await;
    ca
}

/// Creates TLS Secret `name` (cert-manager's keys) in the test's namespace.
pub async fn create_tls_secret(env: &crate::env::Env, name: &str, ca: &str, crt: &str, key: &str) {
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": crt, "tls.key": key, "ca.crt": ca},
    }))
    .expect("secret");
    kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(env.client.clone(), &env.ns)
        .create(&Default::default(), &secret)
        .await
        .expect("create the TLS Secret");
}

/// The validity (`not_before`, `not_after`) of the certificate the member at `ip` serves, as a
/// client verifying the chain against `auth.ca` sees it.
pub async fn served(
    ds: crate::workload::Datastore,
    ip: std::net::IpAddr,
    auth: &crate::workload::Auth,
) -> Option<(i64, i64)> {
    use crate::workload::Datastore;
    let ca = auth.ca.as_deref()?;
    let der_validity = |der: Vec<u8>| baton::tls::validity_der(&der);
    match ds {
        Datastore::Redis => {
            let (_, leaf) = baton::tls::connect(&ip.to_string(), 6379, ca).await.ok()?;
            der_validity(leaf?)
        }
        Datastore::Postgresql => {
            let (config, seen) = baton::tls::client_config_seeing(ca).ok()?;
            let mut cfg = tokio_postgres::Config::new();
            cfg.host(ip.to_string())
                .port(5432)
                .user(&auth.user)
                .password(&auth.password)
                .dbname(&auth.user)
                .ssl_mode(tokio_postgres::config::SslMode::Require)
                .connect_timeout(std::time::Duration::from_secs(3));
            let (_c, conn) = cfg
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(config))
                .await
                .ok()?;
            drop(conn);
            let leaf = seen.lock().ok()?.clone()?;
            der_validity(leaf)
        }
        Datastore::Mariadb | Datastore::Mysql => {
            use mysql_async::prelude::Queryable;
            let mut c = crate::workload::connect_admin(ds, ip, auth).await?;
            let crate::workload::Conn::MariaDbReader(c) = &mut c else {
                return None;
            };
            let rows: Vec<(String, String)> = c
                .query("SHOW SESSION STATUS LIKE 'Ssl_server_not_%'")
                .await
                .ok()?;
            let date = |n: &str| {
                rows.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(n))
                    .and_then(|(_, v)| baton::tls::parse_openssl_date(v))
            };
            date("Ssl_server_not_before").zip(date("Ssl_server_not_after"))
        }
    }
}

/// The certificate of the TLS Secret `secret` is renewed (a new key and certificate from the
/// same CA, as cert-manager writes them before expiry): every member of `instance` serves the
/// new one within a minute with no restart, and a verifying client then writes.
pub async fn renewed_certificate_is_served_online(
    env: &crate::env::Env,
    op: &crate::Operator,
    instance: &str,
    secret: &str,
) {
    let ds = env.datastore(instance).await;
    let auth = env.auth(instance).await;
    let restarts = env.restarts(instance).await;
    let (crt, key) = issue(env.dir.as_path());
    kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(env.client.clone(), &env.ns)
        .patch(
            secret,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                serde_json::json!({"stringData": {"tls.crt": crt, "tls.key": key}}),
            ),
        )
        .await
        .expect("renew the certificate");
    // Looked at within the health interval; a touch of the instance makes it now.
    env.label(instance, "renewed", "1").await;
    let want = baton::tls::validity(crt.as_bytes()).expect("validity");
    let members = crate::workload::member_addresses(&env.client, &env.ns, instance).await;
    let all = crate::eventually(std::time::Duration::from_secs(60), || async {
        for ip in members.values() {
            if served(ds, *ip, &auth).await? != want {
                return None;
            }
        }
        Some(())
    })
    .await;
    if all.is_none() {
        // What each member serves now (None: the check could not connect or read it).
        let mut seen = vec![];
        for (name, ip) in &members {
            seen.push((name.clone(), served(ds, *ip, &auth).await));
        }
        panic!(
            "not every member serves the renewed certificate (validity {want:?}); served: {seen:?}\n{:#?}\n{}",
            env.status(instance).await.conditions,
            crate::env::tail(&op.logs(), 20)
        );
    }
    assert_eq!(env.restarts(instance).await, restarts, "a member restarted");
    let primary = env.primary_ip(instance).await;
    let mut c = crate::workload::connect(ds, primary, &auth)
        .await
        .expect("a verifying client connects after the renewal");
    let keys: Vec<String> = (0..5).map(|i| format!("renewed-{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        c.write(k, i as u64).await.expect("and writes");
    }
    // The reload took nothing away from replication: every member gets the writes made after
    // it (a reload recorded as a replica's own transaction would stop that replica here).
    for (name, ip) in &members {
        let all = crate::eventually(std::time::Duration::from_secs(30), || async {
            let mut r = crate::workload::connect_admin(ds, *ip, &auth).await?;
            let got = r.read(&keys).await.ok()?;
            got.iter().all(Option::is_some).then_some(())
        })
        .await;
        assert!(
            all.is_some(),
            "{name} did not receive the writes made after the renewal"
        );
    }
}
