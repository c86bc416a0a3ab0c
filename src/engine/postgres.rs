//! The PostgreSQL engine: physical streaming replication, probed and driven over SQL.
//!
//! **Fenced by construction.** Every member starts in recovery (its boot script writes
//! `standby.signal` at every start), so a restarted member — the primary included — cannot take
//! a write. A member in recovery that follows nobody (no `primary_conninfo`) is the recorded
//! primary waiting for Baton: it reports itself a fenced primary, and unfencing it is
//! `pg_promote()` once Baton has confirmed it is the only candidate.
//!
//! **The switchover fence.** `default_transaction_read_only` can be undone by any session, so
//! the fence is stronger: every application database refuses connections (`ALLOW_CONNECTIONS
//! false` binds superusers too), every client session is terminated, and then the server is
//! stopped cleanly (`pg_ctl stop -m fast`, through `COPY … TO PROGRAM`). Its boot script starts
//! it again at once in recovery, following nobody, without a container restart. The clean stop
//! is what makes the position exact: the shutdown checkpoint is the last record the server
//! writes and the standbys receive it before the server exits, so no standby can hold WAL the
//! chosen candidate lacks (a fenced server left running still writes background records, and a
//! standby that received one the candidate did not could not follow the new timeline). The
//! databases fenced are listed in a table of Baton's own database (`baton.public.fenced`, never
//! fenced), so the fence is data: it replicates, and a standby promoted from a fenced primary is
//! fenced too until Baton unfences it.
//!
//! **Repointing** is online (`ALTER SYSTEM SET primary_conninfo` and a reload, PG 13+) for a
//! server in recovery. A member that may have led on a timeline the primary left is rewound
//! (`pg_rewind`) by its boot script at its next start, onto the primary the topology ConfigMap
//! names. A fenced primary still out of recovery is a candidate promoted before its switchover
//! was undone: fenced since its promotion, it never took a write, and its history forked where
//! the old primary's own promotion may reuse the timeline id (pg_rewind would see one history),
//! so its repoint starts its container again and its boot clones it from the primary.

use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Container, EnvVar};
use tokio_postgres::{Client, NoTls};

use super::{
    ADMIN_PASSWORD, Accounts, Endpoint, Engine, EngineError, MemberTemplate, PASSWORD,
    ParsePositionError, Position, Probe, REPLICATION_PASSWORD, Role, Strategy, Target, USERNAME,
};
use crate::crd::Datastore;
use crate::version::Version;

mod offline;

/// Port every PostgreSQL member listens on.
pub const PORT: u16 = 5432;
/// Baton's own database: never fenced, holds the list of fenced databases.
pub const ADMIN_DB: &str = "baton";
/// The role Baton connects as (a superuser; its password is the Secret's `admin-password`).
pub use super::ADMIN_USER;
/// The bootstrap superuser: reachable only over the member's own socket.
pub const LOCAL_SUPERUSER: &str = "postgres";
const TIMEOUT: Duration = Duration::from_secs(3);
/// Where the claim is mounted; the data directory is a subdirectory of it (so the mount
/// point's own files never sit in PGDATA).
const DATA: &str = "/var/lib/postgresql/data";

/// The member's start: initialise (member 0) or clone (the others), then always start in
/// recovery, following the recorded primary unless this member is it or is quarantined.
const BOOT: &str = r#"set -eu
D=/var/lib/postgresql/data
export PGDATA="$D/pgdata" PGPASSFILE="$D/pgpass"
umask 077
printf '*:*:*:replicator:%s\n' "$BATON_REPLICATION_PASSWORD" > "$PGPASSFILE"
me=$POD_NAME primary=${BATON_PRIMARY_POD:-} host=${BATON_PRIMARY_HOST:-}
# TLS when the pod mounts a certificate: the server serves it, replication verifies the chain,
# and pg_hba (written below at every start) refuses every plain-text connection.
tls= ssl=
if [ -f /etc/baton/tls/tls.crt ]; then
  mkdir -p "$D/tls"
  cp /etc/baton/tls/tls.crt /etc/baton/tls/tls.key /etc/baton/tls/ca.crt "$D/tls/"
  chmod 600 "$D/tls/tls.key"
  tls="-c ssl=on -c ssl_cert_file=$D/tls/tls.crt -c ssl_key_file=$D/tls/tls.key -c ssl_ca_file=$D/tls/ca.crt"
  ssl=" sslmode=verify-ca sslrootcert=$D/tls/ca.crt"
  export PGSSLMODE=verify-ca PGSSLROOTCERT="$D/tls/ca.crt"
fi
follow=yes
case " ${BATON_QUARANTINED:-} " in *" $me "*) follow=no ;; esac
[ "$primary" = "$me" ] && follow=no
conninfo="host=$host port=5432 user=replicator passfile=$PGPASSFILE application_name=$me$ssl"
# An offline major upgrade: data of another major under this server. The primary converts it
# into a new directory with the release the pre-check kept in $D/.baton and keeps the old one
# (pgdata.kept) until the upgrade is finalized; booted again on the old major (a rollback), it
# takes the kept directory back. A standby is cloned again. Each move can be cut off and is
# finished or redone at the next start.
want=$(postgres -V | sed -E 's/^[^0-9]*([0-9]+).*/\1/')
major() { cat "$1/PG_VERSION" 2>/dev/null || true; }
if [ ! -e "$PGDATA" ] && [ "$(major "$D/pgdata.kept")" = "$want" ]; then
  mv "$D/pgdata.kept" "$PGDATA"
elif [ ! -e "$PGDATA" ] && [ -e "$D/pgdata.next/.baton-converted" ] && [ "$(major "$D/pgdata.next")" = "$want" ]; then
  mv "$D/pgdata.next" "$PGDATA"
fi
have=$(major "$PGDATA")
if [ -n "$have" ] && [ "$have" != "$want" ]; then
  if [ "$(major "$D/pgdata.kept")" = "$want" ]; then
    echo "baton: back to the kept PostgreSQL $want data; the $have copy is removed" >&2
    rm -rf "$D/pgdata.undone"
    mv "$PGDATA" "$D/pgdata.undone"
    mv "$D/pgdata.kept" "$PGDATA"
    rm -rf "$D/pgdata.undone"
  elif [ "$primary" = "$me" ]; then
    old="$D/.baton/pg-$have"
    [ -s "$old/bindir" ] || { echo "baton: the data is PostgreSQL $have and no $have release is kept at $old (Baton's pre-check keeps it); not converting" >&2; exit 1; }
    echo "baton: converting the PostgreSQL $have data to $want (pg_upgrade --copy; the $have directory is kept)" >&2
    rm -rf "$D/pgdata.next" "$D/.baton/upgrade"
    mkdir -p "$D/.baton/upgrade"
    initdb -D "$D/pgdata.next" -U postgres -E UTF8 -k --auth-local=trust --auth-host=trust >/dev/null
    (cd "$D/.baton/upgrade" && pg_upgrade --copy -b "$old$(cat "$old/bindir")" -B "$(dirname "$(command -v postgres)")" \
      -d "$PGDATA" -D "$D/pgdata.next" -U postgres -s "$D/.baton/upgrade") >&2
    touch "$D/pgdata.next/.baton-converted"
    rm -rf "$D/pgdata.kept"
    mv "$PGDATA" "$D/pgdata.kept"
    mv "$D/pgdata.next" "$PGDATA"
  elif [ -n "$primary" ] && [ "$follow" = yes ]; then
    echo "baton: PostgreSQL $have data under a $want server: cloned again from the primary" >&2
    rm -rf "$PGDATA"
  else
    echo "baton: PostgreSQL $have data under a $want server, and no primary to clone from" >&2
    exit 1
  fi
fi
rm -rf "$D/pgdata.next" "$PGDATA/.baton-converted"
# A candidate promoted for a switchover that was then undone (Baton's repoint asked for this
# start): its history forked at its promotion, and the old primary, promoted again when it was
# unfenced, may have taken the same timeline id, which pg_rewind would read as one history.
# It was fenced from its promotion on and never took a write, so it is cloned again from the
# primary. Kept when the topology names it the primary.
if [ -e "$D/.baton-reclone" ]; then
  if [ "$follow" = yes ] && [ -n "$host" ]; then
    echo "baton: promoted for a switchover that was undone, never written to: cloned again from the primary" >&2
    rm -rf "$PGDATA"
  fi
  rm -f "$D/.baton-reclone"
fi
if [ "$follow" = yes ] && [ -n "$host" ] && [ -s "$PGDATA/PG_VERSION" ]; then
  # A member that may have led on a timeline the primary left is rewound onto it (a no-op when
  # it did not). pg_rewind needs a clean shutdown: a primary that crashed recovers alone first
  # (single-user mode refuses standby mode, so the last boot's signal file goes; it is written
  # again below), keeping the WAL pg_rewind reads as the server does. A standby that crashed
  # ("in archive recovery") never led: it just resumes streaming.
  state=$(pg_controldata "$PGDATA" | sed -n 's/^Database cluster state: *//p')
  case "$state" in
    "in production")
      rm -f "$PGDATA/standby.signal"
      postgres --single -D "$PGDATA" -c wal_keep_size=256MB postgres </dev/null >/dev/null
      rewind=yes ;;
    "shut down"|"shut down in recovery") rewind=yes ;;
    *) rewind=no ;;
  esac
  # The primary may be restarting at the same moment (an InPlace upgrade restarts every member
  # together): a source that does not take connections yet is tried again, 30 times, a second
  # apart, in this container rather than by failing it (pg_rewind touches nothing before it
  # connects; a hung primary times out in 5 s, so a changed topology is read at a next start).
  n=0
  while [ "$rewind" = yes ] && ! pg_rewind -D "$PGDATA" --source-server="$conninfo dbname=baton connect_timeout=5" >/dev/null 2>"$D/rewind.err"; do
    n=$((n + 1))
    if [ "$n" -lt 30 ] && grep -q "connection to server" "$D/rewind.err"; then
      sleep 1
      continue
    fi
    cat "$D/rewind.err" >&2
    # The WAL back to the last checkpoint both share is gone: rebuilt from the primary below,
    # as a new member is (what it held past the fork is discarded either way). Any other
    # failure (the primary unreachable for 30 s) keeps the data and tries again at the
    # next start.
    grep -q "could not find previous WAL record" "$D/rewind.err" || exit 1
    echo "baton: pg_rewind cannot reach the fork (its WAL is gone): cloned again from the primary" >&2
    rm -rf "$PGDATA"
    break
  done
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  rm -rf "$PGDATA"
  if [ "$primary" = "$me" ]; then
    initdb -D "$PGDATA" -U postgres -E UTF8 -k --auth-local=trust --auth-host=trust >/dev/null
    pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -c unix_socket_directories=$D" start >/dev/null
    psql -qX -h "$D" -U postgres -d postgres -v ON_ERROR_STOP=1 -v pw="$BATON_REPLICATION_PASSWORD" \
      -v admin="$BATON_ADMIN_PASSWORD" -v app="$BATON_APP_USER" -v apppw="$BATON_APP_PASSWORD" <<'SQL'
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'pw';
CREATE ROLE baton WITH SUPERUSER LOGIN PASSWORD :'admin';
CREATE ROLE :"app" WITH LOGIN PASSWORD :'apppw';
CREATE DATABASE baton;
CREATE DATABASE :"app" OWNER :"app";
SQL
    # What pg_rewind reads, granted in the database it connects to (grants are per database).
    psql -qX -h "$D" -U postgres -d baton -v ON_ERROR_STOP=1 <<'SQL'
CREATE TABLE fenced (datname name PRIMARY KEY);
GRANT EXECUTE ON FUNCTION pg_ls_dir(text, boolean, boolean), pg_stat_file(text, boolean),
  pg_read_binary_file(text), pg_read_binary_file(text, bigint, bigint, boolean) TO replicator;
SQL
    pg_ctl -D "$PGDATA" -w stop -m fast >/dev/null
  elif [ "$follow" = yes ] && [ -n "$host" ]; then
    # Clone a primary that has left recovery: a backup taken from the recorded primary while
    # it still waits in recovery is void once it is promoted.
    n=0
    until [ "$(psql -qAtX -h "$host" -U replicator -d baton -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do
      n=$((n + 1))
      [ "$n" -lt 120 ] || { echo "baton: $host never left recovery; nothing to clone" >&2; exit 1; }
      sleep 1
    done
    pg_basebackup -h "$host" -p 5432 -U replicator -D "$PGDATA" -X stream -c fast -w
  else
    echo "baton: no data yet and no primary to clone from; waiting for the topology" >&2
    exit 1
  fi
fi
# Over the network every role needs its password (and, with TLS, an encrypted connection);
# the socket, inside the pod, is trusted.
if [ -n "$tls" ]; then
  cat > "$PGDATA/pg_hba.conf" <<'HBA'
local all all trust
hostnossl all all all reject
hostnossl replication all all reject
hostssl replication replicator all scram-sha-256
hostssl all all all scram-sha-256
HBA
else
  cat > "$PGDATA/pg_hba.conf" <<'HBA'
local all all trust
host replication replicator all scram-sha-256
host all all all scram-sha-256
HBA
fi
touch "$PGDATA/standby.signal"
sed -i '/^primary_conninfo/d' "$PGDATA/postgresql.auto.conf"
if [ "$follow" = yes ] && [ -n "$host" ]; then
  printf "primary_conninfo = '%s'\n" "$conninfo" >> "$PGDATA/postgresql.auto.conf"
fi
# The server runs under this script. A clean stop nobody asked the container for is Baton's
# fence: the server starts again at once in recovery following nobody (the recorded primary
# waiting for Baton) and the container keeps running. The container's stop signal is passed
# on as a fast shutdown.
stopping=
trap 'stopping=yes; kill -INT "$pid" 2>/dev/null' TERM INT
while :; do
  postgres -D "$PGDATA" -c listen_addresses='*' -c port=5432 -c unix_socket_directories="$D" \
    -c wal_level=replica -c hot_standby=on -c max_wal_senders=10 -c wal_keep_size=256MB \
    -c recovery_target_timeline=latest -c hot_standby_feedback=on \
    -c wal_retrieve_retry_interval=50ms $tls "$@" &
  pid=$!
  rc=0
  wait "$pid" || rc=$?
  while kill -0 "$pid" 2>/dev/null; do wait "$pid" || rc=$?; done
  if [ -n "$stopping" ] || [ "$rc" -ne 0 ]; then exit "$rc"; fi
  # Stopped to follow a primary its history forked from (a promoted candidate whose switchover
  # was undone): the container starts again, and the boot above clones it from the primary the
  # topology names now.
  if [ -e "$D/.baton-reclone" ]; then
    echo "baton: stopped to be cloned again from the primary; the container starts again" >&2
    exit 0
  fi
  echo "baton: the server was stopped cleanly (a fence); starting it again in recovery" >&2
  touch "$PGDATA/standby.signal"
  sed -i '/^primary_conninfo/d' "$PGDATA/postgresql.auto.conf"
done"#;

/// `spec.durability: Replicated`: any one standby, whatever its name.
const SYNCHRONOUS_STANDBYS: &str = "ANY 1 (*)";

#[derive(Debug, Clone, Copy, Default)]
pub struct Postgres;

async fn connect(t: &Target) -> Result<Client, EngineError> {
    Ok(connect_seeing(t).await?.0)
}

/// Connects, with whether the server serves a certificate other than `t.cert`.
async fn connect_seeing(t: &Target) -> Result<(Client, bool), EngineError> {
    t.login(|t| async move { connect_once(&t).await }).await
}

async fn connect_once(t: &Target) -> Result<(Client, bool), EngineError> {
    let endpoint = t.endpoint.to_string();
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&t.endpoint.host)
        .port(t.endpoint.port)
        .dbname(ADMIN_DB)
        .user(ADMIN_USER)
        .application_name("baton")
        // Baton's own commits (the fence list, role passwords) never wait for a synchronous
        // standby: it unfences a promoted member before it repoints the standbys to it, and
        // a clean stop streams everything anyway.
        .options("-c synchronous_commit=local")
        .connect_timeout(TIMEOUT);
    if let Some(c) = &t.credentials {
        if let Some(u) = &c.username {
            cfg.user(u);
        }
        cfg.password(&c.password);
    }
    let connected = match &t.ca {
        // TLS only, verifying the chain against the instance's CA.
        Some(ca) => {
            let (config, seen) =
                crate::tls::client_config_seeing(ca).map_err(|e| EngineError::Unreachable {
                    endpoint: endpoint.clone(),
                    source: Box::new(e),
                })?;
            cfg.ssl_mode(tokio_postgres::config::SslMode::Require);
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(config);
            let want = t.cert.as_deref().and_then(crate::tls::leaf);
            let (client, conn) =
                super::within(&t.endpoint, "connect", TIMEOUT, cfg.connect(tls)).await?;
            tokio::spawn(conn);
            let served = seen.lock().ok().and_then(|s| s.clone());
            (client, want.is_some() && served != want)
        }
        None => {
            let (client, conn) =
                super::within(&t.endpoint, "connect", TIMEOUT, cfg.connect(NoTls)).await?;
            tokio::spawn(conn);
            (client, false)
        }
    };
    Ok(connected)
}

async fn run(c: &Client, t: &Target, command: &'static str, sql: &str) -> Result<(), EngineError> {
    super::within(&t.endpoint, command, TIMEOUT * 20, c.batch_execute(sql)).await
}

/// What one probe query returns, before it is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    pub server_version: String,
    pub in_recovery: bool,
    /// `pg_current_wal_lsn()` of a primary, `pg_last_wal_replay_lsn()` of a server in recovery.
    pub lsn: Option<String>,
    pub received_lsn: Option<String>,
    pub primary_conninfo: String,
    pub receiver_status: Option<String>,
    pub sender_host: Option<String>,
    /// Databases Baton fenced (the rows of `baton.public.fenced`).
    pub fenced: i64,
}

const PROBE: &str = "SELECT current_setting('server_version'), pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text ELSE pg_current_wal_lsn()::text END, \
     pg_last_wal_receive_lsn()::text, current_setting('primary_conninfo'), \
     (SELECT status FROM pg_stat_wal_receiver), (SELECT sender_host FROM pg_stat_wal_receiver), \
     (SELECT count(*) FROM fenced)";

/// The value of `key` in a libpq connection string (`host=10.0.0.3 port=5432 …`).
fn conninfo_value<'a>(conninfo: &'a str, key: &str) -> Option<&'a str> {
    conninfo
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim_matches('\''))
        .filter(|v| !v.is_empty())
}

/// Reads a probe row: a primary (fenced when Baton fenced its databases), a standby following
/// its `primary_conninfo` host, or — in recovery, following nobody — the recorded primary
/// waiting to be promoted, which counts as a fenced primary.
pub fn parse_probe(endpoint: &Endpoint, row: &Row) -> Result<Probe, EngineError> {
    let bad = |what| EngineError::Unreadable {
        endpoint: endpoint.to_string(),
        what,
    };
    let version = row
        .server_version
        .split_whitespace()
        .next()
        .ok_or(bad("server_version"))?
        .to_string();
    let lsn = |s: &Option<String>| s.as_deref().map(Position::parse_lsn).transpose();
    let position = lsn(&row.lsn)
        .map_err(|_| bad("LSN"))?
        .unwrap_or(Position::Lsn(0));
    let upstream = conninfo_value(&row.primary_conninfo, "host");
    let (role, fenced, following, streaming, received) = match (row.in_recovery, upstream) {
        (false, _) => (Role::Primary, row.fenced > 0, None, false, None),
        (true, None) => (Role::Primary, true, None, false, None),
        (true, Some(host)) => (
            Role::Standby,
            true,
            Some(row.sender_host.clone().unwrap_or_else(|| host.to_string())),
            row.receiver_status.as_deref() == Some("streaming"),
            lsn(&row.received_lsn).map_err(|_| bad("received LSN"))?,
        ),
    };
    Ok(Probe {
        role,
        version,
        position,
        received,
        following,
        streaming,
        fenced,
        stale_certificate: false,
    })
}

/// The SQL that fences every application database: recorded first (so the record is in the
/// same WAL the candidate must reach), then closed, then its sessions ended.
const FENCE: &str = "INSERT INTO fenced SELECT datname FROM pg_database \
     WHERE datallowconn AND datname NOT IN ('template0', 'baton') ON CONFLICT DO NOTHING; \
     DO $$ DECLARE d name; BEGIN \
       FOR d IN SELECT f.datname FROM fenced f JOIN pg_database p ON p.datname = f.datname WHERE p.datallowconn LOOP \
         EXECUTE format('ALTER DATABASE %I ALLOW_CONNECTIONS false', d); \
       END LOOP; END $$; \
     SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
       AND datname IS DISTINCT FROM 'baton';";

/// The SQL that lifts the fence: exactly the databases Baton fenced.
const UNFENCE: &str = "DO $$ DECLARE d name; BEGIN \
       FOR d IN SELECT datname FROM fenced LOOP \
         EXECUTE format('ALTER DATABASE %I ALLOW_CONNECTIONS true', d); \
       END LOOP; END $$; \
     DELETE FROM fenced;";

/// Whether the server is in recovery (a standby, or a member waiting to be promoted).
async fn in_recovery(c: &Client, t: &Target) -> Result<bool, EngineError> {
    c.query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map(|r| r.get::<_, bool>(0))
        .map_err(|e| EngineError::Command {
            endpoint: t.endpoint.to_string(),
            command: "pg_is_in_recovery",
            source: Box::new(e),
        })
}

/// Promotes a server in recovery and waits until it has left recovery (a no-op on a primary:
/// idempotent). Polled from here every 10 ms: `pg_promote(true)` polls in 100 ms ticks, which
/// the clients' write gap would pay.
async fn promote_now(c: &Client, t: &Target) -> Result<(), EngineError> {
    let in_recovery = || in_recovery(c, t);
    if !in_recovery().await? {
        return Ok(());
    }
    run(c, t, "pg_promote", "SELECT pg_promote(false)").await?;
    let deadline = tokio::time::Instant::now() + TIMEOUT * 20;
    while in_recovery().await? {
        if tokio::time::Instant::now() >= deadline {
            return Err(EngineError::Timeout {
                endpoint: t.endpoint.to_string(),
                command: "pg_promote",
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// A libpq string literal for SQL (`'…'` with quotes doubled).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Stops the server cleanly; its boot script starts it again at once in recovery, following
/// nobody. Returns a connection to it once it is back in recovery.
async fn stop_into_recovery(c: Client, t: &Target) -> Result<Client, EngineError> {
    let stop = format!("COPY (SELECT 1) TO PROGRAM '{STOP}'");
    stop_and_wait(c, t, &stop).await
}

/// Stops a fenced primary so that its container starts again and its boot clones it from the
/// primary the topology names (see the boot script: a promoted candidate of an undone
/// switchover, which never took a write).
async fn restart_recloned(c: Client, t: &Target) -> Result<Client, EngineError> {
    let stop =
        format!("COPY (SELECT 1) TO PROGRAM 'touch \"$PGDATA/../.baton-reclone\" && {STOP}'");
    stop_and_wait(c, t, &stop).await
}

/// A clean stop of the server, run by the server itself (`COPY … TO PROGRAM`).
const STOP: &str = "pg_ctl stop -D \"$PGDATA\" -m fast -W";

/// Runs `stop` (a clean stop of the server) and waits until the server answers again in
/// recovery.
async fn stop_and_wait(c: Client, t: &Target, stop: &str) -> Result<Client, EngineError> {
    // The shutdown ends this session (and may kill `pg_ctl` itself, a child of the session):
    // an error here is expected, and only the server coming back in recovery says the stop
    // happened. The error is kept for the message in case it never does.
    let stop_error = c.batch_execute(stop).await.err().and_then(|e| {
        (e.as_db_error().is_some()
            && e.code() != Some(&tokio_postgres::error::SqlState::ADMIN_SHUTDOWN))
        .then(|| EngineError::Command {
            endpoint: t.endpoint.to_string(),
            command: "pg_ctl stop",
            source: Box::new(e),
        })
    });
    drop(c);
    let deadline = tokio::time::Instant::now() + TIMEOUT * 5;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok(c) = connect(t).await
            && in_recovery(&c, t).await.unwrap_or(false)
        {
            return Ok(c);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(stop_error.unwrap_or(EngineError::Timeout {
                endpoint: t.endpoint.to_string(),
                command: "restart in recovery",
            }));
        }
    }
}

/// The connection string a standby follows `primary` with (the password comes from the
/// passfile the boot script writes from the Secret: it never passes through Baton).
pub fn conninfo(primary: &Endpoint, application_name: &str, tls: bool) -> String {
    let ssl = if tls {
        format!(" sslmode=verify-ca sslrootcert={DATA}/tls/ca.crt")
    } else {
        String::new()
    };
    format!(
        "host={} port={} user=replicator passfile={DATA}/pgpass application_name={application_name}{ssl}",
        primary.host, primary.port
    )
}

impl Postgres {
    async fn probe_on(&self, c: &Client, t: &Target) -> Result<Probe, EngineError> {
        let rows = tokio::time::timeout(TIMEOUT, c.query(PROBE, &[]))
            .await
            .map_err(|_| EngineError::Timeout {
                endpoint: t.endpoint.to_string(),
                command: "probe",
            })?
            .map_err(|e| EngineError::Command {
                endpoint: t.endpoint.to_string(),
                command: "probe",
                source: Box::new(e),
            })?;
        let r = rows.first().ok_or(EngineError::Unreadable {
            endpoint: t.endpoint.to_string(),
            what: "probe row",
        })?;
        let row = Row {
            server_version: r.try_get(0).unwrap_or_default(),
            in_recovery: r.try_get(1).unwrap_or(true),
            lsn: r.try_get(2).unwrap_or_default(),
            received_lsn: r.try_get(3).unwrap_or_default(),
            primary_conninfo: r.try_get(4).unwrap_or_default(),
            receiver_status: r.try_get(5).unwrap_or_default(),
            sender_host: r.try_get(6).unwrap_or_default(),
            fenced: r.try_get(7).unwrap_or_default(),
        };
        parse_probe(&t.endpoint, &row)
    }
}

#[async_trait]
impl Engine for Postgres {
    fn datastore(&self) -> Datastore {
        Datastore::Postgresql
    }

    fn port(&self) -> u16 {
        PORT
    }

    fn container_name(&self) -> &'static str {
        "postgres"
    }

    fn container(&self, m: &MemberTemplate<'_>) -> Container {
        let mut c = super::member_container(
            m,
            self.container_name(),
            BOOT,
            self.credential_keys(),
            ("postgresql", PORT),
            // Over the socket: the probe needs no network view of the pod.
            format!("pg_isready -q -h {DATA} -U {LOCAL_SUPERUSER} -p {PORT} -d {ADMIN_DB}"),
            DATA,
        );
        c.env.get_or_insert_default().push(EnvVar {
            name: "PGDATA".into(),
            value: Some(format!("{DATA}/pgdata")),
            ..Default::default()
        });
        if m.replicated {
            // The server's arguments (`"$@"`): a commit returns once any one standby has
            // flushed it. Every member gets it; only a primary uses it.
            c.args = Some(vec![
                "-c".into(),
                format!("synchronous_standby_names={SYNCHRONOUS_STANDBYS}"),
            ]);
        }
        c
    }

    fn parse_position(&self, text: &str) -> Result<Position, ParsePositionError> {
        Position::parse_lsn(text)
    }

    /// Minor versions share one data format (rolling); a major needs `pg_upgrade` (offline).
    fn strategy(&self, from: &Version, to: &Version) -> Strategy {
        if from.major() == to.major() {
            Strategy::Rolling
        } else {
            Strategy::Offline
        }
    }

    fn offline_check(
        &self,
        from_image: &str,
        to_image: &str,
        dry_run: bool,
    ) -> Option<(Container, Container)> {
        Some(offline::check_containers(from_image, to_image, dry_run))
    }

    async fn offline_leftovers(&self, t: &Target) -> Result<bool, EngineError> {
        let c = connect(t).await?;
        let row = super::within(
            &t.endpoint,
            "looking for the kept old data",
            TIMEOUT,
            c.query_one(offline::LEFTOVERS, &[]),
        )
        .await?;
        Ok(row.get::<_, bool>(0))
    }

    async fn finish_offline(&self, t: &Target) -> Result<(), EngineError> {
        let c = connect(t).await?;
        let sql = format!("COPY (SELECT 1) TO PROGRAM '{}'", offline::FINISH);
        run(&c, t, "finishing the offline upgrade", &sql).await?;
        crate::failpoint::passed("db:offline-finished").await;
        Ok(())
    }

    async fn probe(&self, t: &Target) -> Result<Probe, EngineError> {
        let (c, stale_certificate) = connect_seeing(t).await?;
        let p = self.probe_on(&c, t).await?;
        Ok(Probe {
            stale_certificate,
            ..p
        })
    }

    /// The server reads its certificate from copies in its data directory (the key must be
    /// the server's own, mode 0600): the mounted files are copied again, and the server
    /// reloads them (`pg_reload_conf`; PostgreSQL reloads its SSL files on SIGHUP). Sessions
    /// open keep the certificate they began with; new ones get the new one.
    async fn reload_tls(&self, t: &Target) -> Result<(), EngineError> {
        let c = connect(t).await?;
        // Until the node has updated the mounted files there is nothing new to load.
        let mounted = format!("{}/tls.crt", super::TLS_DIR);
        let current = match tokio::time::timeout(
            TIMEOUT,
            c.query_one(
                "SELECT pg_read_binary_file($1) = $2",
                &[&mounted, &t.cert.as_deref().unwrap_or_default()],
            ),
        )
        .await
        {
            Ok(Ok(row)) => row.get::<_, bool>(0),
            Ok(Err(e)) => {
                return Err(EngineError::Command {
                    endpoint: t.endpoint.to_string(),
                    command: "reading the mounted certificate",
                    source: Box::new(e),
                });
            }
            Err(_) => {
                return Err(EngineError::Timeout {
                    endpoint: t.endpoint.to_string(),
                    command: "reading the mounted certificate",
                });
            }
        };
        if !current {
            return Ok(());
        }
        let copy = format!(
            "COPY (SELECT 1) TO PROGRAM 'cp {dir}/tls.crt {dir}/tls.key {dir}/ca.crt {DATA}/tls/ && chmod 600 {DATA}/tls/tls.key'; \
             SELECT pg_reload_conf()",
            dir = super::TLS_DIR
        );
        run(&c, t, "reloading TLS", &copy).await?;
        crate::failpoint::passed("db:reload-tls").await;
        Ok(())
    }

    async fn fence(&self, t: &Target) -> Result<(), EngineError> {
        let c = connect(t).await?;
        // A server in recovery takes no write: it is fenced already.
        if !in_recovery(&c, t).await? {
            // Closed first (the list replicates, so a standby promoted from here is fenced
            // too), then stopped cleanly: a clean shutdown streams every WAL record, the
            // shutdown checkpoint included, to the standbys, and the server writes nothing
            // after it. No standby can then hold WAL the candidate lacks, and the position at
            // which writes stopped is the restarted server's own replay position.
            run(&c, t, "fence", FENCE).await?;
            stop_into_recovery(c, t).await?;
        }
        crate::failpoint::passed("db:fence").await;
        Ok(())
    }

    async fn unfence(&self, t: &Target) -> Result<(), EngineError> {
        let c = connect(t).await?;
        let p = self.probe_on(&c, t).await?;
        if p.role != Role::Primary {
            return Err(EngineError::Refused {
                endpoint: t.endpoint.to_string(),
                act: "unfence",
                why: "the server follows another member".into(),
            });
        }
        // The recorded primary waiting in recovery: promoting it is what lets writes in.
        promote_now(&c, t).await?;
        run(&c, t, "unfence", UNFENCE).await?;
        crate::failpoint::passed("db:unfence").await;
        Ok(())
    }

    async fn promote(&self, t: &Target, at_least: Option<&Position>) -> Result<(), EngineError> {
        let c = connect(t).await?;
        let p = self.probe_on(&c, t).await?;
        if let Some(goal) = at_least
            && (!p.position.reached(goal) || (p.role == Role::Standby && !p.streaming))
        {
            return Err(EngineError::Refused {
                endpoint: t.endpoint.to_string(),
                act: "promote",
                why: format!("it has replayed {} and does not hold {goal}", p.position),
            });
        }
        // Promoted, it keeps the fenced primary's fence (the list replicated with the data).
        promote_now(&c, t).await?;
        crate::failpoint::passed("db:promote").await;
        Ok(())
    }

    /// Roles replicate, so their passwords change on the primary only, as SCRAM verifiers
    /// computed here (the clear text never reaches the server, nor its log). The password a
    /// member replicates with lives in its own `pgpass` file, rewritten on every member (a
    /// server in recovery can write files through `COPY … TO PROGRAM`; the value travels as a
    /// bind parameter, never in statement text).
    async fn set_passwords(&self, t: &Target, to: &Accounts) -> Result<(), EngineError> {
        let c = connect(t).await?;
        if !in_recovery(&c, t).await? {
            let ident = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
            let sql: String = [
                (ADMIN_USER, to.get(ADMIN_PASSWORD)),
                ("replicator", to.get(REPLICATION_PASSWORD)),
                (to.get(USERNAME), to.get(PASSWORD)),
            ]
            .iter()
            .map(|(role, pw)| {
                format!(
                    "ALTER ROLE {} PASSWORD '{}';",
                    ident(role),
                    postgres_protocol::password::scram_sha_256(pw.as_bytes())
                )
            })
            .collect();
            run(&c, t, "ALTER ROLE … PASSWORD", &sql).await?;
        }
        let pgpass = format!("{DATA}/pgpass");
        let copy = format!(
            "COPY (SELECT '*:*:*:replicator:' || replace(replace(current_setting('baton.replication'),              '\\', '\\\\'), ':', '\\:')) TO PROGRAM 'umask 077 && cat > {pgpass}.new && mv {pgpass}.new {pgpass}'              WITH (FORMAT csv, DELIMITER E'\\x1f', QUOTE E'\\x1e')"
        );
        let write = async {
            c.execute(
                "SELECT set_config('baton.replication', $1, false)",
                &[&to.get(REPLICATION_PASSWORD)],
            )
            .await?;
            c.batch_execute(&copy).await?;
            c.batch_execute("RESET baton.replication").await
        };
        match tokio::time::timeout(TIMEOUT * 5, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(EngineError::Command {
                    endpoint: t.endpoint.to_string(),
                    command: "writing pgpass",
                    source: Box::new(e),
                });
            }
            Err(_) => {
                return Err(EngineError::Timeout {
                    endpoint: t.endpoint.to_string(),
                    command: "writing pgpass",
                });
            }
        }
        crate::failpoint::passed("db:set-passwords").await;
        Ok(())
    }

    async fn repoint(&self, t: &Target, primary: &Endpoint) -> Result<(), EngineError> {
        let c = connect(t).await?;
        let p = self.probe_on(&c, t).await?;
        if p.writable() {
            return Err(EngineError::Refused {
                endpoint: t.endpoint.to_string(),
                act: "repoint",
                why: "it is a primary that accepts writes; a resync would throw them away".into(),
            });
        }
        // A fenced primary follows only from recovery. Still out of it, it was promoted and not
        // restarted since: a candidate whose switchover was undone, fenced from its promotion
        // on (`writable` is refused above). Its history forked at the promotion and cannot be
        // followed as it is, nor rewound reliably (the old primary's own promotion may reuse
        // the timeline id), so it is cloned again: it holds nothing the primary lacks.
        let c = if in_recovery(&c, t).await? {
            c
        } else {
            restart_recloned(c, t).await?
        };
        let name = t.endpoint.host.replace(['.', ':'], "_");
        // Each alone: ALTER SYSTEM refuses to run inside a multi-statement transaction.
        let sql = format!(
            "ALTER SYSTEM SET primary_conninfo = {}",
            literal(&conninfo(primary, &name, t.ca.is_some()))
        );
        run(&c, t, "ALTER SYSTEM", &sql).await?;
        run(&c, t, "pg_reload_conf", "SELECT pg_reload_conf()").await?;
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

    fn row() -> Row {
        Row {
            server_version: "16.13".into(),
            in_recovery: false,
            lsn: Some("0/3000060".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_primary_is_fenced_only_while_baton_fenced_its_databases() {
        let p = parse_probe(&ep(), &row()).unwrap();
        assert_eq!(
            (p.role, p.version.as_str(), p.fenced),
            (Role::Primary, "16.13", false)
        );
        assert!(p.writable());
        assert_eq!(p.position, Position::parse_lsn("0/3000060").unwrap());
        let fenced = parse_probe(&ep(), &Row { fenced: 3, ..row() }).unwrap();
        assert!(fenced.fenced && !fenced.writable());
    }

    #[test]
    fn a_member_in_recovery_following_nobody_is_the_primary_waiting_to_be_promoted() {
        let r = Row {
            in_recovery: true,
            primary_conninfo: String::new(),
            ..row()
        };
        let p = parse_probe(&ep(), &r).unwrap();
        assert_eq!(p.role, Role::Primary);
        assert!(
            p.fenced && !p.writable(),
            "recovery is a fence nobody can lift but Baton"
        );
    }

    #[test]
    fn a_standby_reports_its_upstream_its_stream_and_both_positions() {
        let r = Row {
            in_recovery: true,
            lsn: Some("0/2FFF000".into()),
            received_lsn: Some("0/3000000".into()),
            primary_conninfo:
                "host=127.2.0.4 port=5432 user=replicator passfile=/x application_name=db-1".into(),
            receiver_status: Some("streaming".into()),
            sender_host: Some("127.2.0.4".into()),
            ..row()
        };
        let p = parse_probe(&ep(), &r).unwrap();
        assert_eq!(p.role, Role::Standby);
        assert_eq!(p.following.as_deref(), Some("127.2.0.4"));
        assert!(p.streaming);
        assert_eq!(p.received, Some(Position::parse_lsn("0/3000000").unwrap()));
        let lost = parse_probe(
            &ep(),
            &Row {
                receiver_status: None,
                sender_host: None,
                ..r
            },
        )
        .unwrap();
        assert!(!lost.streaming, "no WAL receiver: not streaming");
        assert_eq!(
            lost.following.as_deref(),
            Some("127.2.0.4"),
            "still configured to follow it"
        );
    }

    #[test]
    fn the_replication_password_never_passes_through_baton() {
        let c = conninfo(&Endpoint::new("fd00::3", PORT), "db-1", false);
        assert!(
            conninfo(&Endpoint::new("fd00::3", PORT), "db-1", true)
                .ends_with(" sslmode=verify-ca sslrootcert=/var/lib/postgresql/data/tls/ca.crt")
        );
        assert!(
            c.starts_with("host=fd00::3 port=5432 user=replicator passfile="),
            "{c}"
        );
        assert!(!c.contains("password"), "{c}");
        assert_eq!(literal("it's"), "'it''s'");
    }

    #[test]
    fn minors_roll_and_majors_need_an_offline_upgrade() {
        let v = |s: &str| s.parse::<Version>().unwrap();
        assert_eq!(
            Postgres.strategy(&v("16.13"), &v("16.14")),
            Strategy::Rolling
        );
        assert_eq!(
            Postgres.strategy(&v("15.19"), &v("16.14")),
            Strategy::Offline
        );
    }

    #[test]
    fn every_member_boots_in_recovery_following_the_recorded_primary() {
        assert!(BOOT.contains("touch \"$PGDATA/standby.signal\""));
        assert!(BOOT.contains("pg_rewind"));
        let c = Postgres.container(&MemberTemplate {
            topology: "db-topology",
            credentials: "db-credentials",
            tls: None,
            cluster: false,
            replicated: false,
        });
        let env = serde_json::to_string(&c.env).unwrap();
        assert!(
            env.contains("db-credentials") && env.contains(crate::engine::REPLICATION_PASSWORD),
            "{env}"
        );
        assert!(!env.contains("\"value\":\"s3cr"), "no literal secret");
        assert_eq!(c.args, None, "asynchronous unless asked");
        let sync = Postgres.container(&MemberTemplate {
            replicated: true,
            topology: "db-topology",
            credentials: "db-credentials",
            tls: None,
            cluster: false,
        });
        assert_eq!(
            sync.args.unwrap(),
            ["-c", "synchronous_standby_names=ANY 1 (*)"]
        );
    }
}
