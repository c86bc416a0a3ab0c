//! The operator's HTTP endpoints: `/healthz` (the process serves), `/readyz` (start-up checks
//! passed and the replica is either leading with its controllers running or standing by for the
//! lease), `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What `/readyz` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    Starting,
    Standby,
    Leading,
    ShuttingDown,
}

/// Shared by the handlers.
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    readiness: Mutex<Readiness>,
}

impl HttpState {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(HttpState {
            metrics,
            readiness: Mutex::new(Readiness::Starting),
        })
    }

    pub fn set(&self, r: Readiness) {
        *self.readiness.lock().unwrap_or_else(|p| p.into_inner()) = r;
    }

    fn get(&self) -> Readiness {
        *self.readiness.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<HttpState>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Binds the listen address (so a busy port fails start-up, not a background task).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

async fn readyz(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    match state.get() {
        Readiness::Leading => (StatusCode::OK, "ready: leading\n"),
        Readiness::Standby => (StatusCode::OK, "ready: standing by for the leader lease\n"),
        Readiness::Starting => (StatusCode::SERVICE_UNAVAILABLE, "not ready: starting\n"),
        Readiness::ShuttingDown => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n",
        ),
    }
}

async fn metrics(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
