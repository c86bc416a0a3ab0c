//! The client workload and the write-loss checker shared by the tests, the demo and the
//! benchmark. A writer writes `w:<writer>:<n>` one write at a time (each waits for its
//! acknowledgement) and records every acknowledged write with the address that acknowledged
//! it, so a loss names where the write went. Writers behave like real clients do:
//!
//! - [`Route::FollowLabel`] finds the primary as a client outside the operator would (the pod
//!   labelled `baton.dev/role=primary`, which the read-write Service selects) after each error;
//! - [`Route::Trailing`] does the same through a view of the label that trails it (as a
//!   Service's endpoints trail a label change in a real cluster);
//! - [`Route::Pinned`] keeps reconnecting to one address (a pooled connection pinned to an old
//!   primary's address).
//!
//! A write is a Redis `SET` or, on PostgreSQL, an autocommit `INSERT` into `baton_w` of the
//! `postgres` database, or on MariaDB into `app.baton_w` as the account `app` (acknowledged =
//! committed); [`Conn`] hides which. The MariaDB account holds `ALL PRIVILEGES` on purpose:
//! such an account writes through `read_only`, so the suites prove Baton's fence stops it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use baton::controller::database_instance::children::{LABEL_INSTANCE, LABEL_ROLE, ROLE_PRIMARY};
pub use baton::crd::Datastore;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams};
use redis::aio::MultiplexedConnection;
use tokio_util::sync::CancellationToken;

/// How a writer finds where to write.
#[derive(Debug, Clone)]
pub enum Route {
    FollowLabel,
    /// The label as it was `delay` ago.
    Trailing {
        delay: Duration,
    },
    Pinned(IpAddr),
}

/// One acknowledged write: its sequence number and who acknowledged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ack {
    pub seq: u64,
    pub by: IpAddr,
}

/// What a writer saw.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The writer's key space: keys are `w:<writer>:<n>`.
    pub writer: String,
    pub attempted: u64,
    pub acked: Vec<Ack>,
    pub errors: u64,
    /// Connections that could not be made (refused, timed out, login refused).
    pub failed_connects: u64,
    /// The last failure, write or connection, and when (since the writer started): what a
    /// test failure needs to say why a writer stopped writing.
    pub last_error: Option<String>,
    /// Intervals between consecutive acknowledgements longer than the outage threshold.
    pub gaps: Vec<Duration>,
    pub longest_gap: Duration,
    pub elapsed: Duration,
    /// The instance's logins, for reading the writes back.
    pub auth: Auth,
}

/// A client's logins for one instance, read from its credentials Secret as an application
/// would get them. `Debug` hides the passwords.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Auth {
    pub user: String,
    pub password: String,
    /// Baton's own account (`baton`): what the checks read every member with.
    pub admin_password: String,
    /// The instance's CA (PEM) when it serves TLS: clients then connect over TLS only,
    /// verifying the server's chain against it.
    pub ca: Option<Vec<u8>>,
    /// The instance's certificate (`tls.crt`): MariaDB clients verify members against its name.
    pub cert: Option<Vec<u8>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Baton's login, for engine probes.
    pub fn admin(&self) -> baton::engine::Credentials {
        baton::engine::Credentials {
            username: Some(baton::engine::ADMIN_USER.into()),
            password: self.admin_password.clone(),
        }
    }

    /// A target reached with Baton's login.
    pub fn target(&self, ip: IpAddr, port: u16) -> baton::engine::Target {
        baton::engine::Target {
            endpoint: baton::engine::Endpoint::new(ip.to_string(), port),
            credentials: Some(self.admin()),
            fallback: None,
            ca: self.ca.clone(),
            cert: self.cert.clone(),
        }
    }
}

/// The logins of `instance`, from the Secret its spec names or the one Baton generated (None
/// until it exists).
pub async fn auth(client: &Client, ns: &str, instance: &str) -> Option<Auth> {
    let inst = Api::<baton::crd::DatabaseInstance>::namespaced(client.clone(), ns)
        .get(instance)
        .await
        .ok()?;
    let name = baton::controller::database_instance::children::credentials_name(&inst);
    let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
        .get(&name)
        .await
        .ok()?;
    let get = |k: &str| -> Option<String> {
        String::from_utf8(secret.data.as_ref()?.get(k)?.0.clone()).ok()
    };
    let tls = match &inst.spec.tls {
        Some(t) => Some(
            Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
                .get(&t.secret_name)
                .await
                .ok()?
                .data?,
        ),
        None => None,
    };
    let tls_file = |k: &str| -> Option<Vec<u8>> { Some(tls.as_ref()?.get(k)?.0.clone()) };
    let (ca, cert) = (tls_file("ca.crt"), tls_file("tls.crt"));
    if tls.is_some() && ca.is_none() {
        return None;
    }
    Some(Auth {
        user: get(baton::engine::USERNAME)?,
        password: get(baton::engine::PASSWORD)?,
        admin_password: get(baton::engine::ADMIN_PASSWORD)?,
        ca,
        cert,
    })
}

/// Waits (up to a minute) for the logins of `instance`.
pub async fn wait_auth(client: &Client, ns: &str, instance: &str) -> Auth {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(a) = auth(client, ns, instance).await {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "{ns}/{instance} has no credentials Secret"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One line for a test's output: what the writer committed, where, and its longest outage.
impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} committed ({:?}), {} refused, longest gap {:?}",
            self.writer,
            self.acked.len(),
            self.acked_by(),
            self.errors,
            self.longest_gap
        )
    }
}

impl Report {
    pub fn key(&self, seq: u64) -> String {
        format!("w:{}:{seq}", self.writer)
    }

    /// The acknowledgements, counted by the address that gave them.
    pub fn acked_by(&self) -> BTreeMap<IpAddr, usize> {
        let mut out = BTreeMap::new();
        for a in &self.acked {
            *out.entry(a.by).or_default() += 1;
        }
        out
    }
}

/// The address of the pod that carries the primary label, if exactly one does and it has one.
pub async fn primary_address(client: &Client, ns: &str, instance: &str) -> Option<IpAddr> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!(
            "{LABEL_INSTANCE}={instance},{LABEL_ROLE}={ROLE_PRIMARY}"
        )))
        .await
        .ok()?;
    match pods.items.as_slice() {
        [p] => p.status.as_ref()?.pod_ip.as_deref()?.parse().ok(),
        _ => None,
    }
}

/// Every member's address, by pod name.
pub async fn member_addresses(
    client: &Client,
    ns: &str,
    instance: &str,
) -> BTreeMap<String, IpAddr> {
    let Ok(pods) = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("{LABEL_INSTANCE}={instance}")))
        .await
    else {
        return BTreeMap::new();
    };
    pods.items
        .into_iter()
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
            Some((p.metadata.name?, ip))
        })
        .collect()
}

/// A client connection to one member, of whichever datastore it runs.
pub enum Conn {
    Redis(MultiplexedConnection),
    Postgres(tokio_postgres::Client),
    /// As the application account `app`.
    MariaDb(mysql_async::Conn),
    /// As Baton's account, on a member where `app` does not exist yet: reads only.
    MariaDbReader(mysql_async::Conn),
}

/// The MariaDB writer account (made by the workload, with `ALL PRIVILEGES`: an account
/// `read_only` alone does not stop, so the suites prove Baton's fence does) and table.
const MY_USER: &str = "writer";
const MY_TABLE: &str = "app.baton_w";

/// A MariaDB login at `ip`; over TLS trusting `ca` when one is given.
pub async fn mariadb_login(
    ip: IpAddr,
    (user, password): (&str, &str),
    ca: Option<&Vec<u8>>,
    timeout: Duration,
) -> Result<mysql_async::Conn, String> {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(ip.to_string())
        .tcp_port(baton::engine::mysql::PORT)
        .user(Some(user))
        .pass(Some(password))
        .prefer_socket(false)
        // Verifies the name the test certificates are issued for, as a client reaching the
        // Service by name does.
        .ssl_opts(
            ca.cloned()
                .map(|ca| baton::engine::mysql::tls_opts(ca, Some(crate::certs::NAME.into()))),
        );
    match tokio::time::timeout(timeout, mysql_async::Conn::new(opts)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("connect timed out".into()),
    }
}

/// Connects as the writer account; where it does not exist yet, makes it (with the table) on
/// a writable primary through Baton's account, or returns a read-only connection elsewhere.
async fn connect_mariadb(ip: IpAddr, auth: &Auth, timeout: Duration) -> Option<Conn> {
    use mysql_async::prelude::Queryable;
    let ca = auth.ca.as_ref();
    match mariadb_login(ip, (MY_USER, MY_USER), ca, timeout).await {
        Ok(c) => return Some(Conn::MariaDb(c)),
        Err(e) if !e.contains("Access denied") => return None,
        Err(_) => {}
    }
    let login = (baton::engine::ADMIN_USER, auth.admin_password.as_str());
    let mut admin = mariadb_login(ip, login, ca, timeout).await.ok()?;
    let read_only: Option<i64> = admin.query_first("SELECT @@read_only").await.ok()?;
    let replica: Vec<mysql_async::Row> = admin.query("SHOW SLAVE STATUS").await.ok()?;
    if read_only == Some(0) && replica.is_empty() {
        admin
            .query_drop(format!(
                "CREATE USER IF NOT EXISTS {MY_USER}@'%' IDENTIFIED BY '{MY_USER}'; \
                 GRANT ALL PRIVILEGES ON *.* TO {MY_USER}@'%'; \
                 CREATE DATABASE IF NOT EXISTS app; \
                 CREATE TABLE IF NOT EXISTS {MY_TABLE} (k VARCHAR(64) PRIMARY KEY, v BIGINT NOT NULL)"
            ))
            .await
            .ok()?;
        return mariadb_login(ip, (MY_USER, MY_USER), ca, timeout)
            .await
            .ok()
            .map(Conn::MariaDb);
    }
    Some(Conn::MariaDbReader(admin))
}

/// The PostgreSQL table the writers write to (in the `postgres` database).
const PG_TABLE: &str = "baton_w";

/// Connects to the member at `ip` as a client would, with the Secret's application account
/// (2 s timeout).
pub async fn connect(ds: Datastore, ip: IpAddr, auth: &Auth) -> Option<Conn> {
    connect_as(ds, ip, auth, false).await.ok()
}

/// Connects with the account the checks read every member with: Baton's, but on Redis (where
/// Baton's account may touch no key) the application account.
pub async fn connect_admin(ds: Datastore, ip: IpAddr, auth: &Auth) -> Option<Conn> {
    connect_as(ds, ip, auth, ds != Datastore::Redis).await.ok()
}

/// Connects as [`connect`] or [`connect_admin`] do, saying why it could not.
async fn connect_as(ds: Datastore, ip: IpAddr, auth: &Auth, admin: bool) -> Result<Conn, String> {
    let timed_out = || format!("connecting to {ip} timed out");
    let failed = |e: &dyn std::fmt::Display| format!("connecting to {ip}: {e}");
    let timeout = Duration::from_secs(2);
    let (user, password) = if admin {
        (baton::engine::ADMIN_USER, auth.admin_password.as_str())
    } else {
        (auth.user.as_str(), auth.password.as_str())
    };
    match ds {
        Datastore::Postgresql => {
            let mut cfg = tokio_postgres::Config::new();
            // The application account's own database, where the writes go.
            cfg.host(ip.to_string())
                .port(baton::engine::postgres::PORT)
                .user(user)
                .password(password)
                .dbname(&auth.user)
                .connect_timeout(timeout);
            let c = match &auth.ca {
                Some(ca) => {
                    cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
                    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(
                        baton::tls::client_config(ca).map_err(|e| failed(&e))?,
                    );
                    let (c, conn) = tokio::time::timeout(timeout, cfg.connect(tls))
                        .await
                        .map_err(|_| timed_out())?
                        .map_err(|e| failed(&e))?;
                    tokio::spawn(conn);
                    c
                }
                None => {
                    let (c, conn) =
                        tokio::time::timeout(timeout, cfg.connect(tokio_postgres::NoTls))
                            .await
                            .map_err(|_| timed_out())?
                            .map_err(|e| failed(&e))?;
                    tokio::spawn(conn);
                    c
                }
            };
            Ok(Conn::Postgres(c))
        }
        Datastore::Mariadb | Datastore::Mysql if admin => {
            mariadb_login(ip, (user, password), auth.ca.as_ref(), timeout)
                .await
                .map(Conn::MariaDbReader)
                .map_err(|e| failed(&e))
        }
        Datastore::Mariadb | Datastore::Mysql => connect_mariadb(ip, auth, timeout)
            .await
            .ok_or_else(|| failed(&"could not log in as the application account")),
        Datastore::Redis => {
            use redis::IntoConnectionInfo;
            let settings = redis::RedisConnectionInfo::default()
                .set_username(user)
                .set_password(password);
            if let Some(ca) = &auth.ca {
                // TLS only, verifying the chain against the instance's CA.
                let connecting = async {
                    let (stream, _) = baton::tls::connect(&ip.to_string(), 6379, ca)
                        .await
                        .map_err(|e| failed(&e))?;
                    let (c, driver) = MultiplexedConnection::new_with_config(
                        &settings,
                        stream,
                        redis::AsyncConnectionConfig::default(),
                    )
                    .await
                    .map_err(|e| failed(&e))?;
                    tokio::spawn(driver);
                    Ok(Conn::Redis(c))
                };
                return tokio::time::timeout(timeout, connecting)
                    .await
                    .map_err(|_| timed_out())?;
            }
            let info = redis::ConnectionAddr::Tcp(ip.to_string(), 6379)
                .into_connection_info()
                .map_err(|e| failed(&e))?
                .set_redis_settings(settings);
            let c = redis::Client::open(info).map_err(|e| failed(&e))?;
            tokio::time::timeout(timeout, c.get_multiplexed_async_connection())
                .await
                .map_err(|_| timed_out())?
                .map(Conn::Redis)
                .map_err(|e| failed(&e))
        }
    }
}

impl Conn {
    /// Writes `key` = `n` and waits for the acknowledgement (a committed transaction).
    pub async fn write(&mut self, key: &str, n: u64) -> Result<(), String> {
        match self {
            Conn::Redis(c) => redis::cmd("SET")
                .arg(key)
                .arg(n)
                .query_async::<()>(c)
                .await
                .map_err(|e| e.to_string()),
            Conn::Postgres(c) => {
                let insert = format!("INSERT INTO {PG_TABLE} (k, v) VALUES ($1, $2)");
                let first = c.execute(&insert, &[&key, &(n as i64)]).await;
                match first {
                    Ok(_) => Ok(()),
                    Err(e)
                        if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) =>
                    {
                        // The first write of a new instance creates the table (racing writers
                        // may collide on it: that is an error, and the writer retries).
                        let create = format!(
                            "CREATE TABLE IF NOT EXISTS {PG_TABLE} (k text PRIMARY KEY, v bigint NOT NULL)"
                        );
                        c.batch_execute(&create).await.map_err(|e| e.to_string())?;
                        c.execute(&insert, &[&key, &(n as i64)])
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            Conn::MariaDb(c) => {
                use mysql_async::prelude::Queryable;
                c.exec_drop(
                    format!("INSERT INTO {MY_TABLE} (k, v) VALUES (?, ?)"),
                    (key, n as i64),
                )
                .await
                .map_err(|e| e.to_string())
            }
            Conn::MariaDbReader(_) => Err(format!("the account {MY_USER} does not exist here")),
        }
    }

    /// The values stored under `keys` (None where a key is absent).
    pub async fn read(&mut self, keys: &[String]) -> Result<Vec<Option<u64>>, String> {
        match self {
            Conn::Redis(c) => redis::cmd("MGET")
                .arg(keys)
                .query_async(c)
                .await
                .map_err(|e| e.to_string()),
            Conn::Postgres(c) => {
                let sql = format!("SELECT k, v FROM {PG_TABLE} WHERE k = ANY($1)");
                let rows = match c.query(&sql, &[&keys]).await {
                    Ok(rows) => rows,
                    // No table: nothing was ever written here.
                    Err(e)
                        if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) =>
                    {
                        vec![]
                    }
                    Err(e) => return Err(e.to_string()),
                };
                let found: BTreeMap<String, i64> =
                    rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                Ok(keys
                    .iter()
                    .map(|k| found.get(k).map(|v| *v as u64))
                    .collect())
            }
            Conn::MariaDb(c) | Conn::MariaDbReader(c) => {
                use mysql_async::prelude::Queryable;
                if keys.is_empty() {
                    return Ok(vec![]);
                }
                let marks = vec!["?"; keys.len()].join(",");
                let sql = format!("SELECT k, v FROM {MY_TABLE} WHERE k IN ({marks})");
                let rows: Vec<(String, i64)> = match c.exec(sql, keys.to_vec()).await {
                    Ok(rows) => rows,
                    // No table (or no database): nothing was ever written here.
                    Err(mysql_async::Error::Server(e)) if e.code == 1146 || e.code == 1049 => {
                        vec![]
                    }
                    Err(e) => return Err(e.to_string()),
                };
                let found: BTreeMap<String, i64> = rows.into_iter().collect();
                Ok(keys
                    .iter()
                    .map(|k| found.get(k).map(|v| *v as u64))
                    .collect())
            }
        }
    }

    /// The version the server itself reports.
    pub async fn server_version(&mut self) -> Option<String> {
        match self {
            Conn::Redis(c) => {
                let info: String = redis::cmd("INFO").arg("server").query_async(c).await.ok()?;
                baton::engine::redis::info_field(&info, "redis_version").map(str::to_string)
            }
            Conn::Postgres(c) => {
                let v: String = c.query_one("SHOW server_version", &[]).await.ok()?.get(0);
                v.split_whitespace().next().map(str::to_string)
            }
            Conn::MariaDb(c) | Conn::MariaDbReader(c) => {
                use mysql_async::prelude::Queryable;
                let v: String = c.query_first("SELECT @@version").await.ok()??;
                v.split('-').next().map(str::to_string)
            }
        }
    }
}

/// The label's history, for a trailing view of it.
struct Trail {
    seen: VecDeque<(Instant, Option<IpAddr>)>,
    last_poll: Option<Instant>,
}

impl Trail {
    async fn at(
        &mut self,
        client: &Client,
        ns: &str,
        instance: &str,
        delay: Duration,
    ) -> Option<IpAddr> {
        let now = Instant::now();
        if self
            .last_poll
            .is_none_or(|t| now - t >= Duration::from_millis(50))
        {
            self.seen
                .push_back((now, primary_address(client, ns, instance).await));
            self.last_poll = Some(now);
        }
        // The newest observation at least `delay` old; before there is one, the oldest.
        while self.seen.len() > 1 && now - self.seen[1].0 >= delay {
            self.seen.pop_front();
        }
        self.seen.front().and_then(|s| s.1)
    }
}

/// Writes `w:<writer>:<n>` along `route` until `stop`; a gap longer than `outage` between
/// acknowledgements is recorded.
#[allow(clippy::too_many_arguments)]
pub async fn write_until(
    client: Client,
    ns: String,
    instance: String,
    ds: Datastore,
    writer: &str,
    route: Route,
    outage: Duration,
    stop: CancellationToken,
) -> Report {
    let mut r = Report {
        writer: writer.into(),
        auth: wait_auth(&client, &ns, &instance).await,
        ..Default::default()
    };
    let start = Instant::now();
    let mut last_ack = Instant::now();
    let mut conn: Option<(IpAddr, Conn)> = None;
    let mut trail = Trail {
        seen: VecDeque::new(),
        last_poll: None,
    };
    let mut n: u64 = 0;
    while !stop.is_cancelled() {
        if conn.is_none() {
            let ip = match &route {
                Route::FollowLabel => primary_address(&client, &ns, &instance).await,
                Route::Trailing { delay } => trail.at(&client, &ns, &instance, *delay).await,
                Route::Pinned(ip) => Some(*ip),
            };
            conn = match ip {
                Some(ip) => match connect_as(ds, ip, &r.auth, false).await {
                    Ok(c) => Some((ip, c)),
                    Err(e) => {
                        r.failed_connects += 1;
                        r.last_error = Some(format!("{:.1?} {e}", start.elapsed()));
                        None
                    }
                },
                None => {
                    r.last_error = Some(format!("{:.1?} no labelled primary", start.elapsed()));
                    None
                }
            };
            if conn.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        }
        let Some((ip, c)) = conn.as_mut() else {
            continue;
        };
        n += 1;
        r.attempted += 1;
        let key = r.key(n);
        let res = tokio::time::timeout(Duration::from_secs(2), c.write(&key, n)).await;
        match res {
            Ok(Ok(())) => {
                let now = Instant::now();
                let gap = now - last_ack;
                if gap > outage {
                    r.gaps.push(gap);
                }
                r.longest_gap = r.longest_gap.max(gap);
                last_ack = now;
                r.acked.push(Ack { seq: n, by: *ip });
            }
            failed => {
                // Fenced, demoted (read-only) or gone: find the primary again.
                let why = match failed {
                    Ok(Err(e)) => e,
                    _ => "no answer in 2 s".into(),
                };
                r.last_error = Some(format!("{:.1?} writing to {ip}: {why}", start.elapsed()));
                r.errors += 1;
                conn = None;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    r.elapsed = start.elapsed();
    r
}

/// The acknowledged writes of `report` missing from the server at `ip`.
pub async fn missing(ds: Datastore, ip: IpAddr, report: &Report) -> Result<Vec<Ack>, String> {
    // Nothing to look for (a writer that never ran has no logins either).
    if report.acked.is_empty() {
        return Ok(Vec::new());
    }
    // One try: a member that has just restarted may refuse a moment longer, and the caller
    // decides how long to retry (`eventually`).
    let mut c = connect_admin(ds, ip, &report.auth)
        .await
        .ok_or_else(|| format!("cannot connect to {ip}"))?;
    let mut lost = Vec::new();
    for chunk in report.acked.chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|a| report.key(a.seq)).collect();
        let values = c.read(&keys).await?;
        lost.extend(
            chunk
                .iter()
                .zip(values)
                .filter(|(a, v)| *v != Some(a.seq))
                .map(|(a, _)| *a),
        );
    }
    Ok(lost)
}

/// Lost writes in words: how many, and which member acknowledged them.
pub fn describe_loss(lost: &[Ack], members: &BTreeMap<String, IpAddr>) -> String {
    let mut by: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for a in lost {
        let who = members
            .iter()
            .find(|(_, ip)| **ip == a.by)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| a.by.to_string());
        by.entry(who).or_default().push(a.seq);
    }
    by.iter()
        .map(|(who, seqs)| {
            format!(
                "{} acknowledged by {who} (e.g. {:?})",
                seqs.len(),
                &seqs[..seqs.len().min(5)]
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The distinct sequence numbers, for sanity checks.
pub fn distinct(acked: &[Ack]) -> usize {
    acked.iter().map(|a| a.seq).collect::<BTreeSet<_>>().len()
}

/// The example catalog, as the demo, the benchmark and the tests apply it.
pub const EXAMPLE_CATALOG: &str = include_str!("../../../examples/catalog.yaml");

/// Installs (server-side apply) every Baton CRD, then waits until each is Established and the
/// group is served (discovery lags Established by a moment). The error names what is missing.
pub async fn install_crds(client: &Client) -> Result<(), String> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    for crd in baton::crd::all() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply("baton-workload").force(),
            &Patch::Apply(&crd),
        )
        .await
        .map_err(|e| format!("applying CRD {name}: {e}"))?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut missing = vec![];
        for crd in baton::crd::all() {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let established = api
                .get(&name)
                .await
                .ok()
                .and_then(|c| c.status?.conditions)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if !established {
                missing.push(name);
            }
        }
        let served =
            missing.is_empty() && baton::operator::startup::check_crds(client).await.is_ok();
        if served {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "CRDs not Established and served within 60 s: {missing:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Applies every DatastoreVersion in a multi-document YAML file (server-side apply).
pub async fn apply_catalog(client: &Client, yaml: &str) -> Result<(), kube::Error> {
    use kube::api::{Patch, PatchParams};
    let api = Api::<baton::crd::DatastoreVersion>::all(client.clone());
    for doc in yaml
        .split("\n---\n")
        .filter(|d| d.contains("kind: DatastoreVersion"))
    {
        let dv: baton::crd::DatastoreVersion =
            serde_yaml_ng::from_str(doc).map_err(|e| kube::Error::Service(Box::new(e)))?;
        let name = dv.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply("baton-workload").force(),
            &Patch::Apply(&dv),
        )
        .await?;
    }
    Ok(())
}

/// Creates an instance of `ds` with `replicas` members on `version`.
pub async fn create(
    client: &Client,
    ns: &str,
    name: &str,
    ds: Datastore,
    replicas: i32,
    version: &str,
) -> Result<(), kube::Error> {
    let obj: baton::crd::DatabaseInstance = serde_json::from_value(serde_json::json!({
        "apiVersion": "baton.dev/v1alpha1", "kind": "DatabaseInstance",
        "metadata": {"name": name},
        "spec": {"datastore": {"type": ds, "version": version}, "replicas": replicas},
    }))
    .map_err(|e| kube::Error::Service(Box::new(e)))?;
    Api::<baton::crd::DatabaseInstance>::namespaced(client.clone(), ns)
        .create(&Default::default(), &obj)
        .await?;
    Ok(())
}

/// Sets `spec.datastore.version` (the GitOps way to upgrade).
pub async fn set_version(
    client: &Client,
    ns: &str,
    name: &str,
    version: &str,
) -> Result<(), kube::Error> {
    use kube::api::{Patch, PatchParams};
    let patch = serde_json::json!({"spec": {"datastore": {"version": version}}});
    Api::<baton::crd::DatabaseInstance>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Waits until the instance is Active on `version` with no upgrade in flight.
pub async fn wait_active(
    client: &Client,
    ns: &str,
    name: &str,
    version: &str,
    timeout: Duration,
) -> Option<baton::crd::DatabaseInstance> {
    let api = Api::<baton::crd::DatabaseInstance>::namespaced(client.clone(), ns);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(i) = api.get(name).await
            && let Some(s) = &i.status
            && s.phase == Some(baton::crd::InstancePhase::Active)
            && s.version.as_deref() == Some(version)
            && s.upgrade.is_none()
        {
            return Some(i);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The version a server itself reports.
pub async fn server_version(ds: Datastore, ip: IpAddr, auth: &Auth) -> Option<String> {
    connect_admin(ds, ip, auth).await?.server_version().await
}
