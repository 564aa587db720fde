//! What operators and their tools look at: `/healthz` (the process is
//! alive), `/readyz` (connected to RabbitMQ with the topology declared, per
//! side) and `/metrics` (Prometheus text format).

use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use xbridge_core::config::HttpSettings;

/// The process-wide Prometheus recorder, installed on first use (metrics
/// recorded before that are not kept).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Buckets make the X latency a real histogram (p99 across replicas).
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("xbridge_x_request_duration_seconds".into()),
                    &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
                )
                .expect("static, non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may be installed already (tests); ours still renders.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// What `/readyz` reports on.
#[derive(Clone)]
pub struct Readiness {
    /// The outbound side consumes replies.
    pub outbound: watch::Receiver<bool>,
    /// The inbound side can publish events.
    pub inbound: watch::Receiver<bool>,
    /// Every channel's state, shown per channel.
    pub channels: std::sync::Arc<xbridge_core::channel_state::ChannelStates>,
}

#[derive(Clone)]
struct OpsState {
    readiness: Readiness,
    metrics: PrometheusHandle,
}

/// Serves the operations endpoints on `listener` within `limits` until
/// `shutdown`.
pub async fn serve(
    listener: std::net::TcpListener,
    readiness: Readiness,
    limits: HttpSettings,
    shutdown: CancellationToken,
) {
    let state = OpsState {
        readiness,
        metrics: metrics_handle(),
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(render))
        .with_state(state);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    }
    xbridge_core::server::serve("ops", listener, app, &limits, shutdown).await;
}

async fn ready(State(state): State<OpsState>) -> impl IntoResponse {
    let outbound = *state.readiness.outbound.borrow();
    let inbound = *state.readiness.inbound.borrow();
    let status = if outbound && inbound {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({
            "ready": outbound && inbound,
            "outbound": outbound,
            "inbound": inbound,
            "channels": state.readiness.channels.snapshot(),
        })),
    )
}

async fn render(State(state): State<OpsState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// Binds the operations address early, so a port in use fails at startup.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    xbridge_core::server::bind(addr)
}
