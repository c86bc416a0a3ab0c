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
//! Semi-synchronous replication is not turned on: a guarded switchover waits for the candidate
//! to execute the fenced position before promoting it, which is the guarantee semi-sync would
//! buy, without adding a round trip to every commit.

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
/// Where the claim is mounted: the data directory, socket and readiness mark live under it.
const DATA: &str = "/var/lib/mysql";

/// Which SQL a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    MariaDb,
    /// MySQL 8.4 (`CHANGE REPLICATION SOURCE`, GTID sets, `super_read_only`).
    MySql,
}

/// The SQL of one dialect, as plain statements (what the unit tests read).
impl Dialect {
    /// The probe: version, read-only state, the executed position and Baton's fence records.
    pub fn probe_sql(self) -> &'static str {
        match self {
            Dialect::MariaDb => {
                "SELECT @@version, @@read_only, @@gtid_binlog_pos, \
                 (SELECT COUNT(*) FROM baton.fenced)"
            }
            Dialect::MySql => {
                "SELECT @@version, @@super_read_only, @@global.gtid_executed, \
                 (SELECT COUNT(*) FROM baton.fenced)"
            }
        }
    }

    /// The replication status statement (one row while a source is configured).
    pub fn replica_status(self) -> &'static str {
        match self {
            Dialect::MariaDb => "SHOW SLAVE STATUS",
            Dialect::MySql => "SHOW REPLICA STATUS",
        }
    }

    /// Column names of the replica status row: source host, I/O and SQL threads running, the
    /// received position.
    fn status_columns(self) -> [&'static str; 4] {
        match self {
            Dialect::MariaDb => [
                "Master_Host",
                "Slave_IO_Running",
                "Slave_SQL_Running",
                "Gtid_IO_Pos",
            ],
            Dialect::MySql => [
                "Source_Host",
                "Replica_IO_Running",
                "Replica_SQL_Running",
                "Retrieved_Gtid_Set",
            ],
        }
    }

    /// Turns writes off (for everyone but accounts holding the read-only bypass).
    pub fn read_only_on(self) -> &'static str {
        match self {
            Dialect::MariaDb => "SET GLOBAL read_only = ON",
            // super_read_only also stops SUPER accounts, and implies read_only.
            Dialect::MySql => "SET GLOBAL super_read_only = ON",
        }
    }

    pub fn read_only_off(self) -> &'static str {
        // MySQL: turning read_only off turns super_read_only off too.
        "SET GLOBAL read_only = OFF"
    }

    pub fn stop_replica(self) -> &'static str {
        match self {
            Dialect::MariaDb => "STOP SLAVE",
            Dialect::MySql => "STOP REPLICA",
        }
    }

    pub fn start_replica(self) -> &'static str {
        match self {
            Dialect::MariaDb => "START SLAVE",
            Dialect::MySql => "START REPLICA",
        }
    }

    /// Forgets the source entirely: the member is a primary.
    pub fn reset_replica(self) -> &'static str {
        match self {
            Dialect::MariaDb => "RESET SLAVE ALL",
            Dialect::MySql => "RESET REPLICA ALL",
        }
    }

    /// Before following: where replication starts. MariaDB starts from `gtid_slave_pos`, set to
    /// what the member has executed and logged; MySQL's auto-position sends what
    /// `gtid_executed` lacks, so it needs nothing.
    pub fn start_position(self) -> Option<&'static str> {
        match self {
            Dialect::MariaDb => Some("SET GLOBAL gtid_slave_pos = @@gtid_binlog_pos"),
            Dialect::MySql => None,
        }
    }

    /// The statement that points replication at `primary`, built inside the server with the
    /// password in the session variable `@pw` (read from `baton.replication`). `EXECUTE
    /// IMMEDIATE` is MariaDB's; MySQL prepares it from a variable.
    pub fn change_source(self, primary: &Endpoint) -> Vec<String> {
        let host = quote(&primary.host);
        match self {
            Dialect::MariaDb => vec![format!(
                "EXECUTE IMMEDIATE CONCAT('CHANGE MASTER TO MASTER_HOST=', QUOTE({host}), \
                 ', MASTER_PORT={}, MASTER_USER=''{REPLICATION_USER}'', MASTER_PASSWORD=', \
                 QUOTE(@pw), ', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1', \
                 IF(IFNULL(@@ssl_ca, '') <> '', CONCAT(', MASTER_SSL=1, \
                 MASTER_SSL_VERIFY_SERVER_CERT=0, MASTER_SSL_CA=', QUOTE(@@ssl_ca)), ''))",
                primary.port
            )],
            Dialect::MySql => vec![
                format!(
                    "SET @change = CONCAT('CHANGE REPLICATION SOURCE TO SOURCE_HOST=', \
                     QUOTE({host}), ', SOURCE_PORT={}, SOURCE_USER=''{REPLICATION_USER}'', \
                     SOURCE_PASSWORD=', QUOTE(@pw), ', SOURCE_AUTO_POSITION=1, \
                     SOURCE_CONNECT_RETRY=1, GET_SOURCE_PUBLIC_KEY=1', \
                     IF(IFNULL(@@ssl_ca, '') <> '', CONCAT(', SOURCE_SSL=1, \
                     SOURCE_SSL_CA=', QUOTE(@@ssl_ca)), ''))",
                    primary.port
                ),
                "PREPARE change_source FROM @change".into(),
                "EXECUTE change_source".into(),
                "DEALLOCATE PREPARE change_source".into(),
            ],
        }
    }

    /// Runs the statement the SQL expression `expr` evaluates to (built inside the server, so
    /// values in session variables never appear in statement text).
    pub fn dynamic(self, expr: &str) -> Vec<String> {
        match self {
            Dialect::MariaDb => vec![format!("EXECUTE IMMEDIATE {expr}")],
            Dialect::MySql => vec![
                format!("SET @baton_stmt = {expr}"),
                "PREPARE baton_stmt FROM @baton_stmt".into(),
                "EXECUTE baton_stmt".into(),
                "DEALLOCATE PREPARE baton_stmt".into(),
            ],
        }
    }

    /// The statements that give the member's accounts the passwords in the session variables
    /// `@admin`, `@pw` (replication), `@app`/`@apppw`, member-locally (accounts are made per
    /// member, never through the binary log), and keep `@pw` for the next `CHANGE MASTER`.
    pub fn set_passwords(self) -> Vec<String> {
        let mut out = vec![
            "SET sql_log_bin = 0".to_string(),
            "REPLACE INTO baton.replication VALUES (1, @pw)".into(),
        ];
        for (account, var) in [
            (quote(&format!("{ADMIN_USER}@'%'")), "@admin"),
            (quote(&format!("{REPLICATION_USER}@'%'")), "@pw"),
            (format!("QUOTE(@app), {}", quote("@'%'")), "@apppw"),
        ] {
            out.extend(self.dynamic(&format!(
                "CONCAT('ALTER USER ', {account}, ' IDENTIFIED BY ', QUOTE({var}))"
            )));
        }
        out
    }

    /// The statements that make a configured replica use `@pw` from its next connection on.
    pub fn set_source_password(self) -> Vec<String> {
        let (stop, change, start) = match self {
            Dialect::MariaDb => (
                "STOP SLAVE",
                "CHANGE MASTER TO MASTER_PASSWORD=",
                "START SLAVE",
            ),
            Dialect::MySql => (
                "STOP REPLICA",
                "CHANGE REPLICATION SOURCE TO SOURCE_PASSWORD=",
                "START REPLICA",
            ),
        };
        let mut out = vec![stop.to_string()];
        out.extend(self.dynamic(&format!("CONCAT('{change}', QUOTE(@pw))")));
        out.push(start.into());
        out
    }

    /// Reads a position this dialect's server printed.
    pub fn parse_position(self, text: &str) -> Result<Position, ParsePositionError> {
        match self {
            Dialect::MariaDb => Position::parse_mariadb(text),
            Dialect::MySql => Position::parse_gtid_set(text),
        }
    }
}

/// A SQL string literal (`'…'`, quotes and backslashes escaped).
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// An account as SQL names it: `'user'@'host'`.
pub fn account(user: &str, host: &str) -> String {
    format!("{}@{}", quote(user), quote(host))
}

/// Accounts the fence never locks: Baton's own, the server's internal ones, and the pod-local
/// `root@localhost` (reachable only from inside the member's pod).
fn exempt(user: &str, host: &str) -> bool {
    matches!(
        user,
        ADMIN_USER | REPLICATION_USER | "mariadb.sys" | "mysql.sys"
    ) || user.starts_with("mysql.")
        || (user == "root" && host == "localhost")
}

/// What `SHOW GRANTS` says of one account or role: whether a global grant lets it write
/// through `read_only` (`ALL PRIVILEGES`, `SUPER`, `READ ONLY ADMIN`, MySQL's
/// `CONNECTION_ADMIN` does not, `SYSTEM_VARIABLES_ADMIN` could turn read_only off), and the
/// roles it was granted.
pub fn read_grants(grants: &[String]) -> (bool, Vec<String>) {
    let mut bypass = false;
    let mut roles = vec![];
    for g in grants {
        let Some(rest) = g.strip_prefix("GRANT ") else {
            continue;
        };
        match rest.split_once(" ON ") {
            Some((privs, on)) if on.starts_with("*.* TO ") => {
                let privs = privs.to_ascii_uppercase();
                bypass |= [
                    "ALL PRIVILEGES",
                    "SUPER",
                    "READ ONLY ADMIN",
                    "READ_ONLY ADMIN",
                ]
                .iter()
                .chain(&["SYSTEM_VARIABLES_ADMIN"])
                .any(|p| privs.split(',').any(|x| x.trim() == *p));
            }
            Some(_) => {}
            // `GRANT `role`[, …] TO …`: the roles granted.
            None => {
                if let Some((names, _)) = rest.split_once(" TO ") {
                    roles.extend(
                        names
                            .split(',')
                            .map(|r| r.trim().trim_matches('`').trim_matches('\'').to_string())
                            .filter(|r| !r.is_empty()),
                    );
                }
            }
        }
    }
    (bypass, roles)
}

/// The member's start. Initialise an empty data directory (every member: a new replica
/// replays the primary's binary log from its start), start the server read-only with
/// replication stopped (applied in parallel, in commit order: one applier thread cannot keep up
/// with a primary that group-commits many clients), make the member-local accounts (never logged: each member makes its
/// own), run `mariadb-upgrade` (the new binaries' system tables; its failure fails the start),
/// then follow the recorded primary unless this member is it or is quarantined. Every password
/// comes from the Secret through the environment and is set again at each start (a rotated
/// Secret takes effect at the member's next restart); the application account gets every
/// privilege on data but none that writes through `read_only`.
/// The boot script with the statement that follows the recorded primary (`$host`, a shell
/// variable of the script) built by the same code the operator repoints with.
fn boot_script() -> String {
    let follow = Dialect::MariaDb.change_source(&Endpoint::new("$host", PORT));
    BOOT.replace("@CHANGE_MASTER@", &follow.join(";\n"))
}

const BOOT: &str = r#"set -eu
D=/var/lib/mysql
DATADIR=$D/data S=$D/mysqld.sock
rm -f "$D/ready"
me=$POD_NAME primary=${BATON_PRIMARY_POD:-} host=${BATON_PRIMARY_HOST:-}
follow=yes
case " ${BATON_QUARANTINED:-} " in *" $me "*) follow=no ;; esac
[ "$primary" = "$me" ] && follow=no
[ -n "$host" ] || follow=no
B=$(dirname "$(dirname "$(command -v mariadbd)")")
msgs=$B/share/mysql; [ -f "$msgs/english/errmsg.sys" ] || msgs=$B/share
plugins=$B/lib/mysql/plugin; [ -d "$plugins" ] || plugins=$B/lib/plugin
# A server id per member, stable across restarts: from the pod's name.
id=$(printf '%s' "$me" | cksum | cut -d' ' -f1)
id=$((id % 4000000000 + 1))
# The member's own temporary directory: servers sharing one /tmp collide on temporary files.
mkdir -p "$D/tmp"
if [ ! -d "$DATADIR/mysql" ]; then
  rm -rf "$DATADIR"
  mariadb-install-db --no-defaults --basedir="$B" --datadir="$DATADIR" --tmpdir="$D/tmp" \
    --auth-root-authentication-method=normal --skip-test-db --skip-name-resolve >/dev/null
fi
# TLS when the pod mounts a certificate: every network connection must use it (the socket,
# inside the pod, need not), and replication verifies the chain against the CA.
if [ -f /etc/baton/tls/tls.crt ]; then
  set -- "$@" --ssl-cert=/etc/baton/tls/tls.crt --ssl-key=/etc/baton/tls/tls.key \
    --ssl-ca=/etc/baton/tls/ca.crt --require-secure-transport=ON
fi
stopping=
trap 'stopping=yes; [ -z "${pid:-}" ] || kill -TERM "$pid" 2>/dev/null' TERM INT
mariadbd --no-defaults --basedir="$B" --lc-messages-dir="$msgs" --plugin-dir="$plugins" \
  --datadir="$DATADIR" --tmpdir="$D/tmp" --socket="$S" --pid-file="$D/mysqld.pid" \
  --bind-address=0.0.0.0 --port=3306 \
  --skip-name-resolve --server-id="$id" --log-bin=mysql-bin --log-slave-updates \
  --binlog-format=ROW --gtid-strict-mode=ON --read-only=ON --skip-slave-start \
  --relay-log=relay-bin --slave-parallel-threads=4 --slave-parallel-mode=optimistic \
  --innodb-buffer-pool-size=64M "$@" &
pid=$!
sql() { mariadb --no-defaults -S "$S" -u root -N -B "$@"; }
n=0
until sql -e 'SELECT 1' >/dev/null 2>&1; do
  kill -0 "$pid" 2>/dev/null || { wait "$pid" || exit $?; exit 1; }
  n=$((n + 1)); [ "$n" -lt 1200 ] || { echo "baton: the server never answered" >&2; exit 1; }
  sleep 0.1
done
fail() { echo "baton: $*" >&2; kill -TERM "$pid"; wait "$pid" || true; exit 1; }
lit() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e "s/'/''/g"; }
pw=$(lit "$BATON_REPLICATION_PASSWORD") admin=$(lit "$BATON_ADMIN_PASSWORD")
app=$(lit "$BATON_APP_USER") apppw=$(lit "$BATON_APP_PASSWORD")
sql <<SQL || fail "setting up the member's own accounts failed"
SET sql_log_bin = 0;
DELETE FROM mysql.global_priv WHERE User = 'root' AND Host <> 'localhost';
FLUSH PRIVILEGES;
CREATE DATABASE IF NOT EXISTS baton;
CREATE TABLE IF NOT EXISTS baton.fenced (user VARCHAR(128) NOT NULL, host VARCHAR(255) NOT NULL, PRIMARY KEY (user, host));
CREATE TABLE IF NOT EXISTS baton.replication (id INT PRIMARY KEY, password TEXT NOT NULL);
REPLACE INTO baton.replication VALUES (1, '$pw');
CREATE USER IF NOT EXISTS baton@'%' IDENTIFIED BY '$admin';
ALTER USER baton@'%' IDENTIFIED BY '$admin';
GRANT ALL PRIVILEGES ON *.* TO baton@'%' WITH GRANT OPTION;
CREATE USER IF NOT EXISTS replicator@'%' IDENTIFIED BY '$pw';
ALTER USER replicator@'%' IDENTIFIED BY '$pw';
GRANT REPLICATION SLAVE ON *.* TO replicator@'%';
CREATE USER IF NOT EXISTS '$app'@'%' IDENTIFIED BY '$apppw';
ALTER USER '$app'@'%' IDENTIFIED BY '$apppw';
GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER, CREATE TEMPORARY TABLES,
  LOCK TABLES, EXECUTE, CREATE VIEW, SHOW VIEW, CREATE ROUTINE, ALTER ROUTINE, EVENT, TRIGGER,
  REFERENCES ON *.* TO '$app'@'%';
SQL
if command -v mariadb-upgrade >/dev/null; then
  mariadb-upgrade --no-defaults -S "$S" -u root --silent >/dev/null || fail "mariadb-upgrade failed"
fi
if [ "$follow" = yes ]; then
  sql <<SQL || fail "following $host failed"
STOP SLAVE;
SET GLOBAL gtid_slave_pos = @@gtid_binlog_pos;
SELECT password INTO @pw FROM baton.replication WHERE id = 1;
@CHANGE_MASTER@;
START SLAVE;
SQL
else
  sql -e 'STOP SLAVE; RESET SLAVE ALL' || fail "clearing replication failed"
fi
touch "$D/ready"
rc=0
wait "$pid" || rc=$?
while kill -0 "$pid" 2>/dev/null; do wait "$pid" || rc=$?; done
rm -f "$D/ready"
exit "$rc""#;

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

/// Reloads the server's certificate files. Never written to the binary log: a plain `FLUSH`
/// is, and on a replica it would be a transaction of the replica's own (an errant GTID) that
/// stops replication under `gtid_strict_mode` once the primary reaches the same sequence
/// number.
const RELOAD_TLS: &str = "FLUSH NO_WRITE_TO_BINLOG SSL";

async fn connect(t: &Target) -> Result<Conn, EngineError> {
    t.login(|t| async move { connect_once(&t).await }).await
}

async fn connect_once(t: &Target) -> Result<Conn, EngineError> {
    let endpoint = t.endpoint.to_string();
    let (user, password) = match &t.credentials {
        Some(c) => (
            c.username.clone().unwrap_or_else(|| ADMIN_USER.into()),
            Some(c.password.clone()),
        ),
        None => (ADMIN_USER.to_string(), None),
    };
    let opts = OptsBuilder::default()
        .ip_or_hostname(t.endpoint.host.clone())
        .tcp_port(t.endpoint.port)
        .user(Some(user))
        .pass(password)
        .prefer_socket(false)
        .ssl_opts(
            t.ca.clone()
                .map(|ca| tls_opts(ca, t.cert.as_deref().and_then(crate::tls::dns_name))),
        );
    match tokio::time::timeout(TIMEOUT, Conn::new(opts)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(EngineError::Unreachable {
            endpoint,
            source: Box::new(e),
        }),
        Err(_) => Err(EngineError::Timeout {
            endpoint,
            command: "connect",
        }),
    }
}

/// TLS verifying the chain against the instance's CA and the certificate against `name`, a
/// name the Secret's certificate is issued for: members are reached by pod address, which
/// their certificates do not list, and mysql_async cannot check the chain alone (its
/// skip-domain option misses the error rustls returns). Without a name the address is checked.
pub fn tls_opts(ca: Vec<u8>, name: Option<String>) -> mysql_async::SslOpts {
    mysql_async::SslOpts::default()
        .with_root_certs(vec![ca.into()])
        .with_danger_tls_hostname_override(name)
}

/// Whether the server serves a certificate other than `cert` (PEM) on this session. The server
/// shows its certificate's validity, not the certificate: a renewed one has another.
async fn serves_another(c: &mut Conn, t: &Target, cert: &[u8]) -> Result<bool, EngineError> {
    let rows: Vec<(String, String)> = timed(
        t,
        "TLS status",
        c.query(
            "SHOW SESSION STATUS WHERE Variable_name IN ('Ssl_server_not_before', 'Ssl_server_not_after')",
        ),
    )
    .await?;
    let date = |name: &str| {
        rows.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| crate::tls::parse_openssl_date(v))
    };
    let served = date("Ssl_server_not_before").zip(date("Ssl_server_not_after"));
    Ok(served.is_some() && served != crate::tls::validity(cert))
}

/// One statement with the engine's deadline, its failure named by `command`.
async fn timed<T>(
    t: &Target,
    command: &'static str,
    work: impl std::future::Future<Output = Result<T, mysql_async::Error>>,
) -> Result<T, EngineError> {
    match tokio::time::timeout(TIMEOUT * 10, work).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(EngineError::Command {
            endpoint: t.endpoint.to_string(),
            command,
            source: Box::new(e),
        }),
        Err(_) => Err(EngineError::Timeout {
            endpoint: t.endpoint.to_string(),
            command,
        }),
    }
}

async fn run(
    c: &mut Conn,
    t: &Target,
    command: &'static str,
    sql: &str,
) -> Result<(), EngineError> {
    timed(t, command, c.query_drop(sql)).await
}

async fn rows(
    c: &mut Conn,
    t: &Target,
    command: &'static str,
    sql: &str,
) -> Result<Vec<Row>, EngineError> {
    timed(t, command, c.query::<Row, _>(sql)).await
}

/// Takes the member's fence lock (a named lock, this session's until released or closed), so
/// locking accounts and unfencing never interleave.
async fn fence_lock(c: &mut Conn, t: &Target) -> Result<(), EngineError> {
    let got = rows(c, t, "GET_LOCK", "SELECT GET_LOCK('baton_fence', 10)").await?;
    if got.first().and_then(|r| text_at(r, 0)).as_deref() == Some("1") {
        return Ok(());
    }
    Err(EngineError::Refused {
        endpoint: t.endpoint.to_string(),
        act: "fence lock",
        why: "another session held the fence lock for 10 s".into(),
    })
}

/// A column as text, by name (NULL and absent read as None).
fn text(r: &Row, col: &str) -> Option<String> {
    text_at(r, r.columns_ref().iter().position(|c| c.name_str() == col)?)
}

/// A column as text, by position.
fn text_at(r: &Row, i: usize) -> Option<String> {
    r.as_ref(i).and_then(|v| match v {
        mysql_async::Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        mysql_async::Value::Int(n) => Some(n.to_string()),
        mysql_async::Value::UInt(n) => Some(n.to_string()),
        _ => None,
    })
}

/// What one probe returns, before it is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub version: String,
    pub read_only: bool,
    /// Executed (and logged) position.
    pub executed: String,
    /// Accounts Baton locked (rows of `baton.fenced`).
    pub fenced: i64,
    /// The source host, when replication is configured.
    pub source: Option<String>,
    pub io_running: bool,
    pub sql_running: bool,
    pub received: Option<String>,
}

/// Reads a probe: a member with a source configured is a replica; without one it is a primary,
/// fenced while read-only or while accounts Baton locked are still locked.
pub fn parse_probe(
    dialect: Dialect,
    endpoint: &Endpoint,
    o: &Observed,
) -> Result<Probe, EngineError> {
    let bad = |what| EngineError::Unreadable {
        endpoint: endpoint.to_string(),
        what,
    };
    // `10.11.18-MariaDB-0+deb12u1-log`, `8.4.3`: the version is the part before the first '-'.
    let version = o
        .version
        .split('-')
        .next()
        .filter(|v| !v.is_empty())
        .ok_or(bad("version"))?
        .to_string();
    let position = dialect
        .parse_position(&o.executed)
        .map_err(|_| bad("GTID position"))?;
    let fenced = o.read_only || o.fenced > 0;
    Ok(match o.source.as_deref().filter(|h| !h.is_empty()) {
        None => Probe {
            role: Role::Primary,
            version,
            position,
            received: None,
            following: None,
            streaming: false,
            fenced,
            stale_certificate: false,
        },
        Some(host) => Probe {
            role: Role::Standby,
            version,
            position,
            received: o
                .received
                .as_deref()
                .map(|r| dialect.parse_position(r))
                .transpose()
                .map_err(|_| bad("received GTID position"))?,
            following: Some(host.to_string()),
            streaming: o.io_running && o.sql_running,
            fenced,
            stale_certificate: false,
        },
    })
}

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
        let _ = c.query_drop("DO RELEASE_LOCK('baton_fence')").await;
        out
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
        super::member_container(
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
        )
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
        // A session dropped without a goodbye is logged by the server as aborted.
        let _ = c.disconnect().await;
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
        let _ = c.disconnect().await;
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
        let _ = c.disconnect().await;
        crate::failpoint::passed("db:fence").await;
        Ok(())
    }

    async fn unfence(&self, t: &Target) -> Result<(), EngineError> {
        let d = self.dialect;
        let mut c = connect(t).await?;
        let p = self.probe_on(&mut c, t).await?;
        if p.role != Role::Primary {
            return Err(EngineError::Refused {
                endpoint: t.endpoint.to_string(),
                act: "unfence",
                why: "the server follows another member".into(),
            });
        }
        // Writes in first (the locked accounts still cannot log in), then the accounts Baton
        // locked here: a crash in between leaves records that keep the member reported
        // fenced, so the unfence is repeated. Under the fence lock (see `lock_bypassing`),
        // held until the connection ends.
        fence_lock(&mut c, t).await?;
        run(&mut c, t, "read_only", d.read_only_off()).await?;
        let locked = rows(
            &mut c,
            t,
            "fence records",
            "SELECT user, host FROM baton.fenced",
        )
        .await?;
        run(&mut c, t, "local", "SET SESSION sql_log_bin = 0").await?;
        for r in &locked {
            let (Some(user), Some(host)) = (text_at(r, 0), text_at(r, 1)) else {
                continue;
            };
            let sql = format!(
                "ALTER USER IF EXISTS {} ACCOUNT UNLOCK",
                account(&user, &host)
            );
            run(&mut c, t, "ALTER USER ACCOUNT UNLOCK", &sql).await?;
            let sql = format!(
                "DELETE FROM baton.fenced WHERE user = {} AND host = {}",
                quote(&user),
                quote(&host)
            );
            run(&mut c, t, "fence record", &sql).await?;
        }
        let _ = c.disconnect().await;
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
        let _ = c.disconnect().await;
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
        let _ = c.disconnect().await;
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
        let _ = c.disconnect().await;
        crate::failpoint::passed("db:repoint").await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> Endpoint {
        Endpoint::new("127.2.0.2", PORT)
    }

    fn primary() -> Observed {
        Observed {
            version: "10.11.18-MariaDB-0+deb12u1-log".into(),
            read_only: false,
            executed: "0-1-42".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_member_without_a_source_is_a_primary_fenced_while_read_only_or_locked() {
        let p = parse_probe(Dialect::MariaDb, &ep(), &primary()).unwrap();
        assert_eq!((p.role, p.version.as_str()), (Role::Primary, "10.11.18"));
        assert!(p.writable());
        assert_eq!(p.position, Position::parse_mariadb("0-1-42").unwrap());
        for o in [
            Observed {
                read_only: true,
                ..primary()
            },
            Observed {
                fenced: 2,
                ..primary()
            },
        ] {
            assert!(!parse_probe(Dialect::MariaDb, &ep(), &o).unwrap().writable());
        }
    }

    #[test]
    fn a_replica_reports_its_source_its_threads_and_both_positions() {
        let o = Observed {
            read_only: true,
            executed: "0-1-40".into(),
            source: Some("127.2.0.4".into()),
            io_running: true,
            sql_running: true,
            received: Some("0-1-42".into()),
            ..primary()
        };
        let p = parse_probe(Dialect::MariaDb, &ep(), &o).unwrap();
        assert_eq!(p.role, Role::Standby);
        assert_eq!(p.following.as_deref(), Some("127.2.0.4"));
        assert!(p.streaming);
        assert_eq!(p.received, Some(Position::parse_mariadb("0-1-42").unwrap()));
        let stopped = Observed {
            sql_running: false,
            ..o
        };
        assert!(
            !parse_probe(Dialect::MariaDb, &ep(), &stopped)
                .unwrap()
                .streaming
        );
        let empty = Observed {
            executed: String::new(),
            ..primary()
        };
        assert_eq!(
            parse_probe(Dialect::MariaDb, &ep(), &empty)
                .unwrap()
                .position,
            Position::parse_mariadb("").unwrap(),
            "a new member has executed nothing"
        );
    }

    #[test]
    fn mysql_positions_are_gtid_sets() {
        let o = Observed {
            version: "8.4.3".into(),
            executed: "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5".into(),
            ..Default::default()
        };
        let p = parse_probe(Dialect::MySql, &ep(), &o).unwrap();
        assert_eq!(p.version, "8.4.3");
        assert!(matches!(p.position, Position::GtidSet(_)));
    }

    #[test]
    fn grants_that_write_through_read_only_are_found_directly_and_through_roles() {
        let lines = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            read_grants(&lines(&[
                "GRANT ALL PRIVILEGES ON *.* TO `app`@`%` IDENTIFIED BY PASSWORD '*66'"
            ])),
            (true, vec![])
        );
        assert!(read_grants(&lines(&["GRANT READ ONLY ADMIN ON *.* TO `ro`@`%`"])).0);
        assert!(read_grants(&lines(&["GRANT SELECT, SUPER ON *.* TO `s`@`%`"])).0);
        assert!(
            !read_grants(&lines(&["GRANT ALL PRIVILEGES ON `app`.* TO `a`@`%`"])).0,
            "privileges on one database do not bypass read_only"
        );
        assert!(!read_grants(&lines(&["GRANT INSERT ON *.* TO `plain`@`%`"])).0);
        assert_eq!(
            read_grants(&lines(&[
                "GRANT USAGE ON *.* TO `viarole`@`%`",
                "GRANT `admins` TO `viarole`@`%`"
            ])),
            (false, vec!["admins".to_string()])
        );
    }

    #[test]
    fn the_fence_spares_only_batons_own_and_the_pod_local_root() {
        assert!(exempt("baton", "%") && exempt("replicator", "%"));
        assert!(exempt("root", "localhost") && exempt("mariadb.sys", "localhost"));
        assert!(
            !exempt("root", "%"),
            "a root reachable over the network is fenced"
        );
        assert!(!exempt("app", "%"));
    }

    #[test]
    fn new_passwords_are_set_member_locally_from_session_variables_only() {
        for d in [Dialect::MariaDb, Dialect::MySql] {
            let sql = d.set_passwords().join("\n");
            assert!(sql.starts_with("SET sql_log_bin = 0"), "{sql}");
            for var in [
                "QUOTE(@admin)",
                "QUOTE(@pw)",
                "QUOTE(@app)",
                "QUOTE(@apppw)",
            ] {
                assert!(sql.contains(var), "{var} missing: {sql}");
            }
            assert!(
                sql.contains(
                    "CONCAT('ALTER USER ', 'baton@''%''', ' IDENTIFIED BY ', QUOTE(@admin))"
                ),
                "{sql}"
            );
            let source = d.set_source_password().join("\n");
            assert!(source.contains("QUOTE(@pw)"), "{source}");
        }
        assert_eq!(
            Dialect::MariaDb.set_source_password(),
            vec![
                "STOP SLAVE".to_string(),
                "EXECUTE IMMEDIATE CONCAT('CHANGE MASTER TO MASTER_PASSWORD=', QUOTE(@pw))".into(),
                "START SLAVE".into(),
            ]
        );
    }

    #[test]
    fn repointing_mariadb_starts_from_what_the_member_logged_and_keeps_the_password_inside() {
        let d = Dialect::MariaDb;
        assert_eq!(
            d.start_position(),
            Some("SET GLOBAL gtid_slave_pos = @@gtid_binlog_pos")
        );
        let sql = d.change_source(&Endpoint::new("127.2.0.5", PORT)).join(";");
        assert!(sql.starts_with("EXECUTE IMMEDIATE CONCAT('CHANGE MASTER TO MASTER_HOST="));
        assert!(sql.contains("QUOTE('127.2.0.5')") && sql.contains("MASTER_PORT=3306"));
        assert!(sql.contains("QUOTE(@pw)") && sql.contains("MASTER_USE_GTID=slave_pos"));
        assert_eq!(d.stop_replica(), "STOP SLAVE");
        assert_eq!(d.reset_replica(), "RESET SLAVE ALL");
        assert_eq!(d.read_only_on(), "SET GLOBAL read_only = ON");
    }

    #[test]
    fn mysql_statements_use_the_84_replication_syntax_and_super_read_only() {
        let d = Dialect::MySql;
        let sql = d.change_source(&Endpoint::new("db-0.db", PORT));
        assert!(
            sql[0].contains("CHANGE REPLICATION SOURCE TO SOURCE_HOST="),
            "{sql:?}"
        );
        assert!(sql[0].contains("SOURCE_AUTO_POSITION=1") && sql[0].contains("QUOTE(@pw)"));
        assert_eq!(
            sql[1..],
            [
                "PREPARE change_source FROM @change",
                "EXECUTE change_source",
                "DEALLOCATE PREPARE change_source"
            ]
        );
        assert_eq!(d.start_position(), None, "auto-position needs no start");
        assert_eq!(d.stop_replica(), "STOP REPLICA");
        assert_eq!(d.start_replica(), "START REPLICA");
        assert_eq!(d.reset_replica(), "RESET REPLICA ALL");
        assert_eq!(d.replica_status(), "SHOW REPLICA STATUS");
        assert_eq!(d.read_only_on(), "SET GLOBAL super_read_only = ON");
        assert!(d.probe_sql().contains("@@global.gtid_executed"));
        assert!(d.probe_sql().contains("@@super_read_only"));
    }

    #[test]
    fn literals_and_accounts_are_quoted() {
        assert_eq!(quote("it's"), "'it''s'");
        assert_eq!(quote("a\\b"), "'a\\\\b'");
        assert_eq!(account("app", "%"), "'app'@'%'");
    }

    #[test]
    fn every_member_boots_read_only_and_follows_the_recorded_primary() {
        assert!(BOOT.contains("--read-only=ON") && BOOT.contains("--skip-slave-start"));
        assert!(BOOT.contains("--gtid-strict-mode=ON") && BOOT.contains("--log-slave-updates"));
        assert!(BOOT.contains("mariadb-upgrade"));
        assert!(BOOT.contains("SET sql_log_bin = 0"));
        // The script follows the primary with the operator's own statement, TLS clause included.
        let script = boot_script();
        assert!(!script.contains("@CHANGE_MASTER@"));
        assert!(script.contains("QUOTE('$host'), ', MASTER_PORT=3306"));
        assert!(script.contains("MASTER_SSL_CA=', QUOTE(@@ssl_ca)"));
        let c = MARIADB.container(&MemberTemplate {
            topology: "db-topology",
            credentials: "db-credentials",
            tls: None,
            cluster: false,
        });
        let env = serde_json::to_string(&c.env).unwrap();
        assert!(
            env.contains("db-credentials") && env.contains(crate::engine::REPLICATION_PASSWORD)
        );
        for k in [
            "BATON_ADMIN_PASSWORD",
            "BATON_APP_USER",
            "BATON_APP_PASSWORD",
        ] {
            assert!(env.contains(k), "{k} in {env}");
        }
        assert_eq!(c.name, "mariadb");
    }
}
