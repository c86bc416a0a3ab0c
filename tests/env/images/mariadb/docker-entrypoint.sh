#!/bin/sh
# Stands in for the official mariadb image's entrypoint: on first start, initialise the data
# directory and set the root password from MARIADB_ROOT_PASSWORD; then run the server with no
# host configuration files (the image ships its own).
set -e
if [ "${1#-}" != "$1" ]; then set -- mariadbd "$@"; fi
if [ "$1" = mariadbd ] || [ "$1" = mysqld ]; then
  shift
  datadir=/var/lib/mysql
  sock="$datadir/mysqld.sock"
  # The binaries' own tree (a package unpacked elsewhere than /usr), and root only as root.
  B=$(dirname "$(dirname "$(command -v mariadbd)")")
  msgs=$B/share/mysql; [ -f "$msgs/english/errmsg.sys" ] || msgs=$B/share
  base="--basedir=$B --lc-messages-dir=$msgs"
  user=; [ "$(id -u)" = 0 ] && user=--user=root
  if [ ! -d "$datadir/mysql" ]; then
    if [ -z "${MARIADB_ROOT_PASSWORD:-}" ]; then
      echo "error: MARIADB_ROOT_PASSWORD is not set (the mariadb image requires it)" >&2
      exit 1
    fi
    mariadb-install-db --no-defaults --basedir="$B" --datadir="$datadir" --auth-root-authentication-method=normal \
      --skip-test-db >/dev/null
    mariadbd --no-defaults $base --datadir="$datadir" --socket="$sock" --skip-networking $user &
    pid=$!
    for _ in $(seq 1 100); do
      mariadb --no-defaults --socket="$sock" -uroot -e 'select 1' >/dev/null 2>&1 && break
      sleep 0.2
    done
    mariadb --no-defaults --socket="$sock" -uroot <<SQL
CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY '${MARIADB_ROOT_PASSWORD}';
GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;
ALTER USER 'root'@'localhost' IDENTIFIED BY '${MARIADB_ROOT_PASSWORD}';
FLUSH PRIVILEGES;
SQL
    kill "$pid"
    wait "$pid" || true
  fi
  exec mariadbd --no-defaults $base --datadir="$datadir" --socket="$sock" --bind-address=0.0.0.0 \
    --port=3306 $user "$@"
fi
exec "$@"
