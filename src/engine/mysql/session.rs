//! Connections to a member (TLS, the login fallback), timed statements, and the fence lock.

use super::*;

/// Reloads the server's certificate files. Never written to the binary log: a plain `FLUSH`
/// is, and on a replica it would be a transaction of the replica's own (an errant GTID) that
/// stops replication under `gtid_strict_mode` once the primary reaches the same sequence
/// number.
pub(super) const RELOAD_TLS: &str = "FLUSH NO_WRITE_TO_BINLOG SSL";

pub(super) async fn connect(t: &Target) -> Result<Conn, EngineError> {
    t.login(|t| async move { connect_once(&t).await }).await
}

pub(super) async fn connect_once(t: &Target) -> Result<Conn, EngineError> {
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
    super::super::within(&t.endpoint, "connect", TIMEOUT, Conn::new(opts)).await
}

/// TLS verifying the chain against the instance's CA and the certificate against `name`, a
/// name the Secret's certificate is issued for: members are reached by pod address, which
/// their certificates do not list, and mysql_async cannot check the chain alone (its
/// skip-domain option misses the error rustls returns). Without a name the address is checked.
/// Ends a session politely (a session dropped without a goodbye is logged by the server as
/// aborted), but never waits on a server that stopped answering meanwhile: a pass stuck here
/// would hold every later pass of the instance.
pub(super) async fn goodbye(c: Conn) {
    let _ = tokio::time::timeout(TIMEOUT, c.disconnect()).await;
}

pub fn tls_opts(ca: Vec<u8>, name: Option<String>) -> mysql_async::SslOpts {
    mysql_async::SslOpts::default()
        .with_root_certs(vec![ca.into()])
        .with_danger_tls_hostname_override(name)
}

/// Whether the server serves a certificate other than `cert` (PEM) on this session. The server
/// shows its certificate's validity, not the certificate: a renewed one has another.
pub(super) async fn serves_another(
    c: &mut Conn,
    t: &Target,
    cert: &[u8],
) -> Result<bool, EngineError> {
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
pub(super) async fn timed<T>(
    t: &Target,
    command: &'static str,
    work: impl std::future::Future<Output = Result<T, mysql_async::Error>>,
) -> Result<T, EngineError> {
    super::super::within(&t.endpoint, command, TIMEOUT * 10, work).await
}

pub(super) async fn run(
    c: &mut Conn,
    t: &Target,
    command: &'static str,
    sql: &str,
) -> Result<(), EngineError> {
    timed(t, command, c.query_drop(sql)).await
}

pub(super) async fn rows(
    c: &mut Conn,
    t: &Target,
    command: &'static str,
    sql: &str,
) -> Result<Vec<Row>, EngineError> {
    timed(t, command, c.query::<Row, _>(sql)).await
}

/// Takes the member's fence lock (a named lock, this session's until released or closed), so
/// locking accounts and unfencing never interleave.
pub(super) async fn fence_lock(c: &mut Conn, t: &Target) -> Result<(), EngineError> {
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

/// Passes `out` on; when it is a statement that did not answer in time on session `id`, ends
/// that session from another one first. The server goes on with such a statement, and the
/// session keeps what it holds (the fence lock is its session's until the session ends), so
/// every later fence and unfence of the member would be refused while it waits.
pub(super) async fn end_if_stuck<T>(
    t: &Target,
    id: u32,
    out: Result<T, EngineError>,
) -> Result<T, EngineError> {
    if matches!(out, Err(EngineError::Timeout { .. }))
        && let Ok(mut k) = connect(t).await
    {
        let kill = k.query_drop(format!("KILL CONNECTION {id}"));
        let _ = super::super::within(&t.endpoint, "KILL", TIMEOUT, kill).await;
        goodbye(k).await;
    }
    out
}

/// A column as text, by name (NULL and absent read as None).
pub(super) fn text(r: &Row, col: &str) -> Option<String> {
    text_at(r, r.columns_ref().iter().position(|c| c.name_str() == col)?)
}

/// A column as text, by position.
pub(super) fn text_at(r: &Row, i: usize) -> Option<String> {
    r.as_ref(i).and_then(|v| match v {
        mysql_async::Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        mysql_async::Value::Int(n) => Some(n.to_string()),
        mysql_async::Value::UInt(n) => Some(n.to_string()),
        _ => None,
    })
}
