//! The operator process: connect → check the CRDs are served → serve health and metrics →
//! win the leader lease → run the controllers → on SIGTERM, stop them, release the lease, exit.

pub mod http;
pub mod startup;

use std::net::SocketAddr;
use std::sync::Arc;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::controller::{self, Context};
use crate::error::Error;
use crate::metrics::Metrics;
use http::{HttpState, Readiness};

/// How the operator process runs (parsed once from the command line).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub listen: SocketAddr,
    /// Whether to take the leader lease before acting (off only for a single local replica).
    pub leader_election: bool,
    /// The namespace of the lease; defaults to the client's namespace.
    pub lease_namespace: Option<String>,
    /// The name of the lease.
    pub lease_name: String,
    /// This replica's identity in the lease and in Events.
    pub identity: String,
    /// Lease duration in seconds: how long a crashed leader blocks the others.
    pub lease_duration_seconds: u64,
    /// Watch databases in this namespace only (the catalog is cluster-wide regardless).
    pub namespace: Option<String>,
    /// How often a settled instance's members are probed again: nothing in Kubernetes tells
    /// Baton that a server changed role or lost its fence, so this bounds how long such a
    /// change goes unseen.
    pub health_interval: std::time::Duration,
    /// Objects of one kind reconciled at once.
    pub concurrency: u16,
}

/// The API client. It names itself `baton/<version> (<identity>)`, so the API server's audit log
/// tells this replica's requests from everyone else's.
async fn client(identity: &str) -> anyhow::Result<Client> {
    let mut config = kube::Config::infer().await?;
    name_client(
        &mut config,
        &format!("baton/{} ({identity})", env!("CARGO_PKG_VERSION")),
    )?;
    Ok(Client::try_from(config)?)
}

/// Sets the User-Agent every request of a client made from `config` carries (kube sends none).
pub fn name_client(config: &mut kube::Config, agent: &str) -> anyhow::Result<()> {
    use axum::http::{HeaderValue, header::USER_AGENT};
    config.headers.retain(|(name, _)| name != USER_AGENT);
    config
        .headers
        .push((USER_AGENT, HeaderValue::from_str(agent)?));
    Ok(())
}

/// Runs the operator until SIGTERM or SIGINT.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let client = client(&settings.identity).await?;
    startup::check_crds(&client).await?;
    info!(identity = %settings.identity, "baton.dev CRDs are served");

    let shutdown = CancellationToken::new();
    // Installed here, before anything is served: a spawned task installing them could run after
    // /readyz already answered, and a SIGTERM in between killed the process uncleanly.
    tokio::spawn(forward_signals(shutdown.clone())?);

    let metrics = Arc::new(Metrics::default());
    let http_state = HttpState::new(metrics.clone());
    let listener = http::bind(settings.listen).await?;
    info!(listen = %settings.listen, "serving /healthz, /readyz and /metrics");
    let server = tokio::spawn(http::serve(listener, http_state.clone(), shutdown.clone()));

    let mut ctx = Context::new(
        client.clone(),
        metrics.clone(),
        &settings.identity,
        settings.namespace.clone(),
    );
    ctx.health_interval = settings.health_interval;
    ctx.concurrency = settings.concurrency;
    let ctx = Arc::new(ctx);
    let result = if settings.leader_election {
        lead(&settings, client, ctx, &http_state, shutdown.clone()).await
    } else {
        http_state.set(Readiness::Leading);
        metrics.leader.set(1);
        controller::run_all(ctx, shutdown.clone()).await;
        Ok(())
    };
    http_state.set(Readiness::ShuttingDown);
    metrics.leader.set(0);
    shutdown.cancel();
    server.await??;
    info!("stopped");
    result.map_err(Into::into)
}

/// Waits for the lease, runs the controllers while holding it, and exits if it is lost.
async fn lead(
    settings: &Settings,
    client: Client,
    ctx: Arc<Context>,
    http_state: &HttpState,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let namespace = settings
        .lease_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let manager = LeaseManagerBuilder::new(client, &settings.lease_name)
        .with_namespace(&namespace)
        .with_identity(&settings.identity)
        .with_duration(settings.lease_duration_seconds)
        .with_grace(settings.lease_duration_seconds.div_ceil(3))
        .build()
        .await
        .map_err(Error::LeaderElection)?;
    let (mut leading, task) = manager.watch().await;
    http_state.set(Readiness::Standby);
    info!(lease = %format!("{namespace}/{}", settings.lease_name), "waiting for the leader lease");

    let won = tokio::select! {
        _ = shutdown.cancelled() => false,
        won = leading.wait_for(|l| *l) => won.is_ok(),
    };
    let outcome = if !won {
        if shutdown.is_cancelled() {
            Ok(())
        } else {
            Err(Error::LeadershipLost)
        }
    } else {
        info!("leading: starting controllers");
        http_state.set(Readiness::Leading);
        ctx.metrics.leader.set(1);
        let controllers = controller::run_all(ctx.clone(), shutdown.clone());
        tokio::select! {
            _ = controllers => Ok(()),
            _ = leading.wait_for(|l| !*l) => {
                warn!("leader lease lost: stopping controllers");
                shutdown.cancel();
                Err(Error::LeadershipLost)
            }
        }
    };
    // Closing the channel makes the manager release the lease so a standby takes over at once.
    drop(leading);
    match task.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!(error = %e, "releasing the leader lease failed"),
        Err(e) => warn!(error = %e, "the lease task panicked"),
    }
    outcome
}

/// Installs the SIGTERM and SIGINT handlers now; the returned task cancels `shutdown` on either.
fn forward_signals(
    shutdown: CancellationToken,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use anyhow::Context as _;
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = int.recv() => info!("SIGINT: shutting down"),
        }
        shutdown.cancel();
    })
}
