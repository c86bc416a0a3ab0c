//! The members' boot script: fenced by construction, following the recorded primary.

use super::*;

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
pub(super) fn boot_script() -> String {
    let follow = Dialect::MariaDb.change_source(&Endpoint::new("$host", PORT));
    BOOT.replace("@CHANGE_MASTER@", &follow.join(";\n"))
}

pub(super) const BOOT: &str = r#"set -eu
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
