//! The two SQL dialects of the family: every statement Baton sends, as plain text, and how
//! grants and positions read.

use super::*;

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
    pub(super) fn status_columns(self) -> [&'static str; 4] {
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

    /// Before a primary takes writes: it waits for a replica's acknowledgement exactly when the
    /// member was started with the replica side of semi-synchronous replication on
    /// (`durability: Replicated`). Only the writable primary may wait: a replica that waited
    /// would block applying what it logs (`log_slave_updates`) for replicas it has none of.
    /// MariaDB's; MySQL members are not built.
    pub fn semi_sync_as_primary(self) -> Option<&'static str> {
        match self {
            Dialect::MariaDb => {
                Some("SET GLOBAL rpl_semi_sync_master_enabled = @@rpl_semi_sync_slave_enabled")
            }
            Dialect::MySql => None,
        }
    }

    /// Before a member follows another: it never waits for acknowledgements (see
    /// [`Dialect::semi_sync_as_primary`]).
    pub fn semi_sync_as_replica(self) -> Option<&'static str> {
        match self {
            Dialect::MariaDb => Some("SET GLOBAL rpl_semi_sync_master_enabled = OFF"),
            Dialect::MySql => None,
        }
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
pub(super) fn exempt(user: &str, host: &str) -> bool {
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
