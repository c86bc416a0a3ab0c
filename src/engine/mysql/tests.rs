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
            sql.contains("CONCAT('ALTER USER ', 'baton@''%''', ' IDENTIFIED BY ', QUOTE(@admin))"),
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
        replicated: false,
    });
    let env = serde_json::to_string(&c.env).unwrap();
    assert!(env.contains("db-credentials") && env.contains(crate::engine::REPLICATION_PASSWORD));
    for k in [
        "BATON_ADMIN_PASSWORD",
        "BATON_APP_USER",
        "BATON_APP_PASSWORD",
    ] {
        assert!(env.contains(k), "{k} in {env}");
    }
    assert_eq!(c.name, "mariadb");
    assert_eq!(c.args, None, "asynchronous unless asked");
    let sync = MARIADB.container(&MemberTemplate {
        replicated: true,
        topology: "db-topology",
        credentials: "db-credentials",
        tls: None,
        cluster: false,
    });
    let args = sync.args.unwrap().join(" ");
    // The primary side only once unfenced as the primary: a replica waiting for replicas of
    // its own would never apply what it logs.
    assert!(!args.contains("master-enabled"), "{args}");
    for a in [
        "--rpl-semi-sync-slave-enabled=ON",
        "--rpl-semi-sync-master-wait-point=AFTER_SYNC",
    ] {
        assert!(args.contains(a), "{a} in {args}");
    }
    // Never falling back to asynchronous within any time a person would wait.
    assert!(
        args.contains("--rpl-semi-sync-master-timeout=4294967295"),
        "{args}"
    );
    assert!(BOOT.contains("\"$@\""), "the arguments reach the server");
}
