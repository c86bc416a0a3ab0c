//! The MySQL-family engine: MariaDB and MySQL with GTID replication, probed and driven over SQL.
//! One engine, two SQL dialects ([`Dialect`]): the protocol is the same, the statements differ.
//! MariaDB runs here end to end; no MySQL server is installable on the machines Baton is tested
//! on, so the MySQL statements are unit-tested for what they say and never claimed exercised.
//!
//! **Fenced by construction.** Every member starts `read_only` with replication stopped, and
//! follows the primary the topology ConfigMap names (its boot script configures replication
//! with the replication user from the instance's Secret). The recorded primary boots following
//! nobody, still read-only: a fenced primary that Baton unfences once it has confirmed it is the
//! one primary.
//!
//! **The fence.** `read_only` does not stop accounts holding `READ ONLY ADMIN` (MariaDB: part
//! of `SUPER` and `ALL PRIVILEGES` up to 11.0; MySQL's `super_read_only` closes it). So on every
//! read-only member — each replica, and the primary once fenced — Baton also locks every such
//! account (`ALTER USER … ACCOUNT LOCK`), directly privileged or through a role, except its own
//! (`baton`, `replicator`) and the pod-local `root@localhost`, and ends its sessions. The locks
//! are member-local (`sql_log_bin = 0`, recorded in the member's own `baton.fenced`): a
//! privileged account logs in on the writable primary only, and a client pinned to a demoted
//! primary cannot write an errant transaction there. A probe of a read-only member locks any
//! such account that appeared since (created on the primary and replicated). The switchover
//! fence adds `read_only` on the primary and ends every client session; nothing writes after
//! that, so the position at which writes stopped is the fenced server's `gtid_binlog_pos`, and
//! the candidate has everything once it has executed it. Unfencing turns `read_only` off and
//! unlocks exactly the accounts Baton locked there (an account its owner locked stays locked).
//!
//! **Repointing** is online: `STOP SLAVE`, start position = the member's own binary log
//! position (every member logs what it applies, `log_slave_updates`, under
//! `gtid_strict_mode`, so that is exactly what it has), `CHANGE MASTER TO … MASTER_USE_GTID =
//! slave_pos`, `START SLAVE`. The replication password never passes through Baton: the
//! statement is built inside the server from a member-local table its boot script fills from
//! the Secret (`EXECUTE IMMEDIATE`).
//!
//! **Durability.** Replication is asynchronous by default: a guarded switchover waits for the
//! candidate to execute the fenced position before promoting it, so it loses nothing without a
//! round trip on every commit; only a failover (the primary gone) can lose its last writes.
//! `durability: Replicated` turns semi-synchronous replication on (`AFTER_SYNC`, no fallback to
//! asynchronous), so those are on a replica too: every member acknowledges as a replica, and
//! the primary side is turned on when a member is unfenced as the primary and off before it
//! follows another (a replica waiting for acknowledgements would block applying what it logs).
//! Baton's own statements never wait for one: every write it makes is member-local
//! (`sql_log_bin = 0`), so nothing it does is binlogged.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Container;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row};

use super::{
    ADMIN_PASSWORD, Accounts, Endpoint, Engine, EngineError, MemberTemplate, PASSWORD,
    ParsePositionError, Position, Probe, REPLICATION_PASSWORD, Role, Strategy, Target, USERNAME,
};
use crate::crd::Datastore;
use crate::version::Version;

/// Port every member listens on.
pub const PORT: u16 = 3306;
/// The account Baton connects as (its password is the Secret's `admin-password`).
pub use super::ADMIN_USER;
/// The replication account.
pub const REPLICATION_USER: &str = "replicator";
const TIMEOUT: Duration = Duration::from_secs(3);
/// MariaDB's semi-synchronous replication, for `durability: Replicated`.
/// The primary side is turned on when a member is unfenced as the primary, never at boot (see
/// [`Dialect::semi_sync_as_primary`]); the replica side marks the member as Replicated.
const SEMI_SYNC: [&str; 3] = [
    "--rpl-semi-sync-slave-enabled=ON",
    "--rpl-semi-sync-master-wait-point=AFTER_SYNC",
    "--rpl-semi-sync-master-timeout=4294967295",
];
/// Where the claim is mounted: the data directory, socket and readiness mark live under it.
const DATA: &str = "/var/lib/mysql";

mod boot;
mod dialect;
mod probe;
mod session;
#[cfg(test)]
mod tests;

use boot::*;
use dialect::*;
pub use dialect::{Dialect, account, quote, read_grants};
pub use probe::{Observed, parse_probe};
pub use session::tls_opts;
use session::*;

/// The MySQL-family engine for one datastore.
#[derive(Debug, Clone, Copy)]
pub struct MySqlFamily {
    pub datastore: Datastore,
    pub dialect: Dialect,
}

pub const MARIADB: MySqlFamily = MySqlFamily {
    datastore: Datastore::Mariadb,
    dialect: Dialect::MariaDb,
};

pub const MYSQL: MySqlFamily = MySqlFamily {
    datastore: Datastore::Mysql,
    dialect: Dialect::MySql,
};

impl MySqlFamily {
    async fn observe(&self, c: &mut Conn, t: &Target) -> Result<Observed, EngineError> {
        let d = self.dialect;
        let probe = rows(c, t, "probe", d.probe_sql()).await?;
        let r = probe.first().ok_or(EngineError::Unreadable {
            endpoint: t.endpoint.to_string(),
            what: "probe row",
        })?;
        let mut o = Observed {
            version: text_at(r, 0).unwrap_or_default(),
            read_only: text_at(r, 1).as_deref() == Some("1"),
            executed: text_at(r, 2).unwrap_or_default().replace('\n', ""),
            fenced: text_at(r, 3).and_then(|n| n.parse().ok()).unwrap_or(0),
            ..Default::default()
        };
        let status = rows(c, t, "replica status", d.replica_status()).await?;
        if let Some(s) = status.first() {
            let [host, io, sql, received] = d.status_columns();
            o.source = text(s, host);
            o.io_running = text(s, io).as_deref() == Some("Yes");
            o.sql_running = text(s, sql).as_deref() == Some("Yes");
            o.received = text(s, received).map(|r| r.replace('\n', ""));
        }
        Ok(o)
    }

    /// Probes the member, and keeps the fence whole on a read-only member: an account that
    /// could write through `read_only` and is not locked yet (created on the primary since
    /// and replicated here, say) is locked.
    async fn probe_on(&self, c: &mut Conn, t: &Target) -> Result<Probe, EngineError> {
        let o = self.observe(c, t).await?;
        if o.read_only {
            self.lock_bypassing(c, t).await?;
        }
        parse_probe(self.dialect, &t.endpoint, &o)
    }

    /// Locks, on this member only (never logged, never replicated), every account that could
    /// write through `read_only`, records it in `baton.fenced` (before it is locked: a crash in
    /// between leaves a record the unfence reads, never a lock nobody knows of), and ends its
    /// sessions.
    async fn lock_bypassing(&self, c: &mut Conn, t: &Target) -> Result<(), EngineError> {
        // Under the fence lock, and only while still read-only: a probe that saw read_only
        // just before an unfence turned it off must not lock the accounts the unfence has just
        // unlocked (two probers: a leader handing over, or a test's safety watcher).
        fence_lock(c, t).await?;
        let out = self.lock_bypassing_held(c, t).await;
        // After a timeout the session may still be running the statement: it is ended, not
        // asked to release.
        if !matches!(out, Err(EngineError::Timeout { .. })) {
            let _ = c.query_drop("DO RELEASE_LOCK('baton_fence')").await;
        }
        end_if_stuck(t, c.id(), out).await
    }

    /// The accounts Baton locked here first, in one statement, then their records, then
    /// writes in (`read_only` off) last: once writes are in, a commit may wait for a replica's
    /// acknowledgement (`durability: Replicated`) while it holds what it wrote (an account
    /// change holds the account tables), and an unlock after it would wait with it. A crash
    /// part-way leaves the member read-only, so reported fenced, and the unfence is repeated.
    async fn unfence_held(&self, c: &mut Conn, t: &Target) -> Result<(), EngineError> {
        let d = self.dialect;
        if let Some(sql) = d.semi_sync_as_primary() {
            // Before the first write: none is acknowledged without a replica when it must be.
            run(c, t, "semi-sync", sql).await?;
        }
        let locked = rows(c, t, "fence records", "SELECT user, host FROM baton.fenced").await?;
        let accounts: Vec<String> = locked
            .iter()
            .filter_map(|r| Some(account(&text_at(r, 0)?, &text_at(r, 1)?)))
            .collect();
        if !accounts.is_empty() {
            run(c, t, "local", "SET SESSION sql_log_bin = 0").await?;
            let sql = format!(
                "ALTER USER IF EXISTS {} ACCOUNT UNLOCK",
                accounts.join(", ")
            );
            run(c, t, "ALTER USER ACCOUNT UNLOCK", &sql).await?;
            run(c, t, "fence records", "DELETE FROM baton.fenced").await?;
            run(c, t, "local", "SET SESSION sql_log_bin = 1").await?;
        }
        run(c, t, "read_only", d.read_only_off()).await
    }

    async fn lock_bypassing_held(&self, c: &mut Conn, t: &Target) -> Result<(), EngineError> {
        let still = rows(c, t, "read_only", "SELECT @@global.read_only").await?;
        if still.first().and_then(|r| text_at(r, 0)).as_deref() != Some("1") {
            return Ok(());
        }
        let accounts = self.bypassing_accounts(c, t).await?;
        if accounts.is_empty() {
            return Ok(());
        }
        run(c, t, "local", "SET SESSION sql_log_bin = 0").await?;
        for (user, host) in accounts {
            let sql = format!(
                "INSERT IGNORE INTO baton.fenced (user, host) VALUES ({}, {})",
                quote(&user),
                quote(&host)
            );
            run(c, t, "fence record", &sql).await?;
            let lock = format!("ALTER USER {} ACCOUNT LOCK", account(&user, &host));
            run(c, t, "ALTER USER ACCOUNT LOCK", &lock).await?;
            let sessions = rows(
                c,
                t,
                "list sessions",
                &format!(
                    "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = {} \
                     AND ID <> CONNECTION_ID()",
                    quote(&user)
                ),
            )
            .await?;
            for id in sessions.iter().filter_map(|r| text_at(r, 0)) {
                let _ = c.query_drop(format!("KILL CONNECTION {id}")).await;
            }
        }
        run(c, t, "local", "SET SESSION sql_log_bin = 1").await
    }

    /// Accounts that can write through `read_only`, directly or through roles (followed
    /// transitively), that are not exempt and not already locked by their owner.
    async fn bypassing_accounts(
        &self,
        c: &mut Conn,
        t: &Target,
    ) -> Result<Vec<(String, String)>, EngineError> {
        let all = rows(
            c,
            t,
            "list accounts",
            "SELECT User, Host, is_role FROM mysql.user",
        )
        .await?;
        let mut grants = std::collections::BTreeMap::new();
        for r in &all {
            let (Some(user), host) = (text_at(r, 0), text_at(r, 1).unwrap_or_default()) else {
                continue;
            };
            let is_role = text_at(r, 2).as_deref() == Some("Y");
            let who = if is_role {
                quote(&user)
            } else {
                account(&user, &host)
            };
            let lines: Vec<String> = rows(c, t, "SHOW GRANTS", &format!("SHOW GRANTS FOR {who}"))
                .await?
                .iter()
                .filter_map(|r| text_at(r, 0))
                .collect();
            grants.insert((user, host, is_role), read_grants(&lines));
        }
        // Roles that bypass, to a fixed point (a role granted a bypassing role bypasses).
        let mut bypassing: BTreeSet<String> = grants
            .iter()
            .filter(|((_, _, role), (b, _))| *role && *b)
            .map(|((u, _, _), _)| u.clone())
            .collect();
        loop {
            let more: Vec<String> = grants
                .iter()
                .filter(|((u, _, role), (_, rs))| {
                    *role && !bypassing.contains(u) && rs.iter().any(|r| bypassing.contains(r))
                })
                .map(|((u, _, _), _)| u.clone())
                .collect();
            if more.is_empty() {
                break;
            }
            bypassing.extend(more);
        }
        let mut out = vec![];
        for ((user, host, role), (b, rs)) in &grants {
            if *role || exempt(user, host) || !(*b || rs.iter().any(|r| bypassing.contains(r))) {
                continue;
            }
            let create = rows(
                c,
                t,
                "SHOW CREATE USER",
                &format!("SHOW CREATE USER {}", account(user, host)),
            )
            .await?;
            let locked = create
                .first()
                .and_then(|r| text_at(r, 0))
                .is_some_and(|s| s.contains("ACCOUNT LOCK"));
            if !locked {
                out.push((user.clone(), host.clone()));
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Engine for MySqlFamily {
    fn datastore(&self) -> Datastore {
        self.datastore
    }

    fn port(&self) -> u16 {
        PORT
    }

    fn container_name(&self) -> &'static str {
        match self.dialect {
            Dialect::MariaDb => "mariadb",
            Dialect::MySql => "mysql",
        }
    }

    fn container(&self, m: &MemberTemplate<'_>) -> Container {
        let mut c = super::member_container(
            m,
            self.container_name(),
            &boot_script(),
            self.credential_keys(),
            ("mysql", PORT),
            // Ready once the boot script has set the member up (and the server answers on its
            // socket: no network view of the pod needed).
            format!(
                "test -f {DATA}/ready && mariadb-admin --no-defaults -S {DATA}/mysqld.sock -u root ping >/dev/null"
            ),
            DATA,
        );
        if m.replicated && self.dialect == Dialect::MariaDb {
            // The server's arguments (`"$@"`): a commit returns once a replica has the
            // transaction in its relay log (after the primary synced its binlog, before it
            // commits: no other session sees it first). Every member acknowledges as a
            // replica; the primary side is turned on at unfence. The timeout (ms) is the
            // longest there is: falling back to asynchronous after it would silently drop the
            // guarantee, so writes wait instead while no replica follows, as PostgreSQL's do.
            c.args = Some(SEMI_SYNC.iter().map(|a| a.to_string()).collect());
        }
        c
    }

    fn parse_position(&self, text: &str) -> Result<Position, ParsePositionError> {
        self.dialect.parse_position(text)
    }

    /// Within a release series replicas of the older and newer version replicate (rolling);
    /// across series too for MariaDB (a newer replica of an older primary is supported), so
    /// every catalog edge rolls, and the catalog says which edges exist.
    fn strategy(&self, _from: &Version, _to: &Version) -> Strategy {
        Strategy::Rolling
    }

    async fn probe(&self, t: &Target) -> Result<Probe, EngineError> {
        let mut c = connect(t).await?;
        let mut p = self.probe_on(&mut c, t).await;
        if let (Ok(probe), Some(cert)) = (&mut p, &t.cert) {
            probe.stale_certificate = serves_another(&mut c, t, cert).await?;
        }
        goodbye(c).await;
        p
    }

    /// [`RELOAD_TLS`] loads the certificate files again (new connections get the new one),
    /// once the mounted file holds the Secret's certificate (read by the server: `LOAD_FILE`).
    async fn reload_tls(&self, t: &Target) -> Result<(), EngineError> {
        let mut c = connect(t).await?;
        let mounted = format!("{}/tls.crt", super::TLS_DIR);
        let current: Option<Option<i64>> = timed(
            t,
            "reading the mounted certificate",
            c.exec_first(
                "SELECT LOAD_FILE(?) = ?",
                (mounted, t.cert.clone().unwrap_or_default()),
            ),
        )
        .await?;
        if current.flatten() == Some(1) {
            run(&mut c, t, "FLUSH SSL", RELOAD_TLS).await?;
        }
        goodbye(c).await;
        crate::failpoint::passed("db:reload-tls").await;
        Ok(())
    }

    async fn fence(&self, t: &Target) -> Result<(), EngineError> {
        let d = self.dialect;
        let mut c = connect(t).await?;
        let p = self.observe(&mut c, t).await?;
        if p.source.is_none() {
            run(&mut c, t, "read_only", d.read_only_on()).await?;
            self.lock_bypassing(&mut c, t).await?;
            // Every client session ends (a pooled connection pinned here must notice).
            let sessions = rows(
                &mut c,
                t,
                "list sessions",
                "SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() \
                 AND USER NOT IN ('system user', 'event_scheduler', 'baton', 'replicator', \
                 'root', 'unauthenticated user') AND COMMAND NOT IN ('Binlog Dump', \
                 'Binlog Dump GTID', 'Daemon')",
            )
            .await?;
            for id in sessions.iter().filter_map(|r| text_at(r, 0)) {
                // A session that ended meanwhile is no error.
                let _ = c.query_drop(format!("KILL CONNECTION {id}")).await;
            }
        }
        goodbye(c).await;
        crate::failpoint::passed("db:fence").await;
        Ok(())
    }

    async fn unfence(&self, t: &Target) -> Result<(), EngineError> {
        let mut c = connect(t).await?;
        let p = self.probe_on(&mut c, t).await?;
        if p.role != Role::Primary {
            return Err(EngineError::Refused {
                endpoint: t.endpoint.to_string(),
                act: "unfence",
                why: "the server follows another member".into(),
            });
        }
        // Under the fence lock (see `lock_bypassing`), held until the connection ends.
        fence_lock(&mut c, t).await?;
        let out = self.unfence_held(&mut c, t).await;
        let out = end_if_stuck(t, c.id(), out).await;
        goodbye(c).await;
        out?;
        crate::failpoint::passed("db:unfence").await;
        Ok(())
    }

    async fn promote(&self, t: &Target, at_least: Option<&Position>) -> Result<(), EngineError> {
        let d = self.dialect;
        let mut c = connect(t).await?;
        let p = self.probe_on(&mut c, t).await?;
        if let Some(goal) = at_least
            && !p.position.reached(goal)
        {
            return Err(EngineError::Refused {
                endpoint: t.endpoint.to_string(),
                act: "promote",
                why: format!("it has executed {} and does not hold {goal}", p.position),
            });
        }
        if p.role == Role::Standby {
            // Still read-only, and fenced by the records it replicated: a fenced primary.
            run(&mut c, t, "stop replica", d.stop_replica()).await?;
            run(&mut c, t, "reset replica", d.reset_replica()).await?;
        }
        goodbye(c).await;
        crate::failpoint::passed("db:promote").await;
        Ok(())
    }

    /// Member-local accounts, so every member is changed on its own; a replica also restarts
    /// its replication threads with the new password (they resume where they stopped).
    async fn set_passwords(&self, t: &Target, to: &Accounts) -> Result<(), EngineError> {
        let d = self.dialect;
        let mut c = connect(t).await?;
        timed(
            t,
            "passwords",
            c.exec_drop(
                "SET @admin = ?, @pw = ?, @app = ?, @apppw = ?",
                (
                    to.get(ADMIN_PASSWORD),
                    to.get(REPLICATION_PASSWORD),
                    to.get(USERNAME),
                    to.get(PASSWORD),
                ),
            ),
        )
        .await?;
        for sql in d.set_passwords() {
            run(&mut c, t, "set passwords", &sql).await?;
        }
        let replica: Vec<Row> = timed(t, "replica status", c.query(d.replica_status())).await?;
        if !replica.is_empty() {
            for sql in d.set_source_password() {
                run(&mut c, t, "replication password", &sql).await?;
            }
        }
        goodbye(c).await;
        crate::failpoint::passed("db:set-passwords").await;
        Ok(())
    }

    async fn repoint(&self, t: &Target, primary: &Endpoint) -> Result<(), EngineError> {
        let d = self.dialect;
        let mut c = connect(t).await?;
        let p = self.probe_on(&mut c, t).await?;
        if p.writable() {
            return Err(EngineError::Refused {
                endpoint: t.endpoint.to_string(),
                act: "repoint",
                why: "it is a primary that accepts writes; following another would diverge".into(),
            });
        }
        run(&mut c, t, "read_only", d.read_only_on()).await?;
        self.lock_bypassing(&mut c, t).await?;
        run(&mut c, t, "stop replica", d.stop_replica()).await?;
        if let Some(sql) = d.semi_sync_as_replica() {
            run(&mut c, t, "semi-sync", sql).await?;
        }
        if let Some(sql) = d.start_position() {
            run(&mut c, t, "start position", sql).await?;
        }
        run(
            &mut c,
            t,
            "replication password",
            "SELECT password INTO @pw FROM baton.replication WHERE id = 1",
        )
        .await?;
        for sql in d.change_source(primary) {
            run(&mut c, t, "change source", &sql).await?;
        }
        run(&mut c, t, "start replica", d.start_replica()).await?;
        goodbye(c).await;
        crate::failpoint::passed("db:repoint").await;
        Ok(())
    }
}
