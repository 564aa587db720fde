//! What operators and their tools look at: `/healthz` (the process is
//! alive), `/readyz` (connected to RabbitMQ with the topology declared, per
//! side, and a state store that can write) and `/metrics` (Prometheus text
//! format).
//!
//! A state store that cannot write (a full disk) shows in both bodies
//! (`"store": false`), but only `/readyz` fails for it: it is what alerting
//! and traffic routing look at, and nothing goes out while the store cannot
//! record it. `/healthz` stays 200, since a liveness failure makes Kubernetes
//! restart the pod, which would not help: a restart frees no disk, the store
//! reopens itself once there is room, and the process would lose the records
//! it keeps in memory until then.

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
/// recorded before that are not kept), with every metric's `# HELP` text
/// from the catalog.
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
            // Described on this recorder itself, so the help reaches
            // /metrics even where another global recorder won (tests).
            metrics::with_local_recorder(&recorder, || {
                xbridge_core::metrics_catalog::describe();
                // Present on every scrape of a bridge, whatever it does: the
                // series alerts join `up` on to tell xbridge targets apart.
                metrics::gauge!("xbridge_build_info", "version" => env!("CARGO_PKG_VERSION"))
                    .set(1.0);
            });
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
    /// Whether the state store can write.
    pub store: xbridge_store::StoreHealth,
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
        .route("/healthz", get(live))
        .route("/readyz", get(ready))
        .route("/metrics", get(render))
        .with_state(state);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    }
    xbridge_core::server::serve("ops", listener, app, &limits, shutdown).await;
}

/// Always 200 while the process serves: see the module documentation for
/// why a store that cannot write does not fail it.
async fn live(State(state): State<OpsState>) -> impl IntoResponse {
    Json(serde_json::json!({
        "status": "ok",
        "store": state.readiness.store.is_writable(),
    }))
}

async fn ready(State(state): State<OpsState>) -> impl IntoResponse {
    let outbound = *state.readiness.outbound.borrow();
    let inbound = *state.readiness.inbound.borrow();
    let store = state.readiness.store.is_writable();
    let ready = outbound && inbound && store;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({
            "ready": ready,
            "outbound": outbound,
            "inbound": inbound,
            "store": store,
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
