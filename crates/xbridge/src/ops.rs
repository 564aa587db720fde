//! What operators and their tools look at: `/healthz` (the process is
//! alive), `/readyz` (connected to RabbitMQ with the topology declared, per
//! side, and a state store that can write), `/readyz/webhook` (X's webhook
//! and the media proxy are served), `/metrics` (Prometheus text format) and
//! `/channels` (the channels served now, from the file and the CRM, each
//! with its state: what `xbridge channels list` prints).
//!
//! Two readiness endpoints, because they answer different questions.
//! `/readyz` tells the truth about the whole bridge: an operator, a script
//! or an alert looks at it. `/readyz/webhook` is for traffic routing (the
//! Kubernetes readinessProbe): what reaches this process from outside is X's
//! webhook and the CRM's media downloads, and both keep working while
//! RabbitMQ or the store is away — the CRC is answered, media is proxied, and
//! a POST that cannot be published is answered 503 so X sends it again. A
//! readinessProbe on `/readyz` would take the pod out of the Service during a
//! broker outage; X's CRC would then fail at the ingress, X would mark the
//! webhook invalid and stop delivering, and the CRM's media links would break.
//!
//! A state store that cannot write (a full disk) shows in both bodies
//! (`"store": false`), but only `/readyz` fails for it: it is what alerting
//! and traffic routing look at, and nothing goes out while the store cannot
//! record it. `/healthz` stays 200, since a liveness failure makes Kubernetes
//! restart the pod, which would not help: a restart frees no disk, the store
//! reopens itself once there is room, and the process would lose the records
//! it keeps in memory until then.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use xbridge_core::channel_identity::ChannelIdentities;
use xbridge_core::channel_state::ChannelStates;
use xbridge_core::config::{HttpSettings, InboundMode};
use xbridge_core::contract::ChannelStatus;
use xbridge_core::live_channels::LiveChannels;

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
                metrics::gauge!(
                    "xbridge_build_info",
                    "version" => env!("CARGO_PKG_VERSION"),
                    "commit" => env!("XBRIDGE_BUILD_COMMIT")
                )
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
    pub channels: Arc<ChannelStates>,
    /// Whether the state store can write.
    pub store: xbridge_store::StoreHealth,
    /// Whether X's webhook and the media proxy are served; `None` when no
    /// webhook is configured (`inbound.listen` unset).
    pub webhook: Option<watch::Receiver<bool>>,
}

/// What `/channels` lists: the channels served now, their states and
/// accounts.
#[derive(Clone)]
pub struct Registry {
    /// The channels served now, file and CRM.
    pub live: Arc<LiveChannels>,
    /// Each channel's state.
    pub states: Arc<ChannelStates>,
    /// Each channel's account, once known.
    pub identities: Arc<ChannelIdentities>,
    /// The channels this replica serves.
    pub shares: Arc<xbridge_sharing::Shares>,
}

/// One channel as `/channels` lists it. Nothing in it is a credential: the
/// listing is for anyone who can reach the operations port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelEntry {
    /// The channel's name (its replies' routing key).
    pub name: String,
    /// `file` (a `[[channels]]` entry) or `crm` (created by the CRM).
    pub origin: String,
    /// The registry revision it was read from (0 for the file's).
    pub revision: u64,
    /// Replies held by the CRM's `channel.pause`.
    pub paused: bool,
    /// How its DMs come in: `webhook`, `poll` or `both`.
    pub inbound: String,
    /// Its state (`ok`, `unauthorized`, …); none while it starts.
    pub state: Option<String>,
    /// Its account's X user id: configured, or once X said it.
    pub user_id: Option<String>,
    /// Whether this replica serves it: its share of the channels, whose
    /// replies it consumes and which it polls. Absent from a bridge of an
    /// earlier version, which served every channel.
    #[serde(default = "served_here_before")]
    pub here: bool,
}

fn served_here_before() -> bool {
    true
}

impl Registry {
    /// Every channel served now, by name.
    pub fn entries(&self) -> Vec<ChannelEntry> {
        self.live
            .current()
            .values()
            .map(|channel| ChannelEntry {
                name: channel.name().to_owned(),
                origin: channel.origin.as_str().to_owned(),
                revision: channel.revision,
                paused: channel.paused,
                inbound: inbound_name(channel.settings.inbound).to_owned(),
                state: self
                    .states
                    .get(channel.name())
                    .map(|s| s.state.as_str().to_owned()),
                user_id: self
                    .identities
                    .user_id(channel.name())
                    .map(String::from)
                    .or_else(|| channel.settings.user_id.clone()),
                here: self.shares.serves(channel.name()),
            })
            .collect()
    }
}

fn inbound_name(mode: InboundMode) -> &'static str {
    match mode {
        InboundMode::Webhook => "webhook",
        InboundMode::Poll => "poll",
        InboundMode::Both => "both",
        InboundMode::Stream => "stream",
    }
}

#[derive(Clone)]
struct OpsState {
    readiness: Readiness,
    registry: Registry,
    metrics: PrometheusHandle,
}

/// Serves the operations endpoints on `listener` within `limits` until
/// `shutdown`.
pub async fn serve(
    listener: std::net::TcpListener,
    readiness: Readiness,
    registry: Registry,
    limits: HttpSettings,
    shutdown: CancellationToken,
) {
    let state = OpsState {
        readiness,
        registry,
        metrics: metrics_handle(),
    };
    let app = Router::new()
        .route("/healthz", get(live))
        .route("/readyz", get(ready))
        .route("/readyz/webhook", get(webhook_ready))
        .route("/metrics", get(render))
        .route("/channels", get(channels))
        .with_state(state);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(
            %addr,
            "serving /healthz, /readyz, /readyz/webhook, /metrics and /channels"
        );
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

/// 200 when both sides are connected to RabbitMQ with the topology declared
/// and the store can write; else 503. The body says which part is missing.
async fn ready(State(state): State<OpsState>) -> impl IntoResponse {
    let body = state.readiness.report();
    let ready = body.outbound && body.inbound && body.store;
    answer(ready, body.json(ready))
}

/// 200 while this process serves X's webhook (CRC and POSTs) and the media
/// proxy, whatever RabbitMQ and the store do; 503 before the server runs and
/// from the moment shutdown begins. The body is `/readyz`'s with `"ready"` meaning this
/// endpoint's answer, plus `"webhook"`: whether the server runs.
///
/// Without a webhook (`inbound.listen` unset: poll-only, or a replica that
/// only sends) it answers 200 with `"webhook": false`. Such a process serves
/// nothing anyone outside reaches, so there is no traffic for readiness to
/// route; a 503 there would only keep the pod unready forever and hold every
/// rollout and PodDisruptionBudget. `/readyz` still tells how it is doing.
async fn webhook_ready(State(state): State<OpsState>) -> impl IntoResponse {
    let body = state.readiness.report();
    let (ready, serving) = match &state.readiness.webhook {
        Some(serving) => {
            let serving = *serving.borrow();
            (serving, serving)
        }
        None => (true, false),
    };
    let mut json = body.json(ready);
    json["webhook"] = serving.into();
    answer(ready, json)
}

/// The channels served now, by name: see [`ChannelEntry`].
async fn channels(State(state): State<OpsState>) -> impl IntoResponse {
    Json(state.registry.entries())
}

fn answer(ready: bool, body: serde_json::Value) -> impl IntoResponse {
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// What both readiness endpoints show, read once per request.
struct Report {
    outbound: bool,
    inbound: bool,
    store: bool,
    channels: BTreeMap<String, ChannelStatus>,
}

impl Readiness {
    fn report(&self) -> Report {
        Report {
            outbound: *self.outbound.borrow(),
            inbound: *self.inbound.borrow(),
            store: self.store.is_writable(),
            channels: self.channels.snapshot(),
        }
    }
}

impl Report {
    fn json(self, ready: bool) -> serde_json::Value {
        serde_json::json!({
            "ready": ready,
            "outbound": self.outbound,
            "inbound": self.inbound,
            "store": self.store,
            "channels": self.channels,
        })
    }
}

/// Keeps `xbridge_rabbitmq_connected{side}` equal to each side's readiness
/// (1 while connected with the topology declared, else 0) until the side's
/// readiness ends or `shutdown`. Derived here, from the watches `/readyz`
/// reads, so the gauge and the probe cannot disagree and the sides need not
/// know about it. Alerts use it: a probe only says "not ready", the gauge
/// says the broker is the reason, per replica and side.
pub async fn track_broker_connections(readiness: &Readiness, shutdown: CancellationToken) {
    tokio::join!(
        track_side("inbound", readiness.inbound.clone(), shutdown.clone()),
        track_side("outbound", readiness.outbound.clone(), shutdown),
    );
}

async fn track_side(
    side: &'static str,
    mut connected: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    let gauge = metrics::gauge!("xbridge_rabbitmq_connected", "side" => side);
    loop {
        gauge.set(if *connected.borrow_and_update() {
            1.0
        } else {
            0.0
        });
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = connected.changed() => if changed.is_err() { break },
        }
    }
    // Stopping, or the side is gone: either way not connected.
    gauge.set(0.0);
}

async fn render(State(state): State<OpsState>) -> impl IntoResponse {
    record_runtime();
    let served = state.registry.live.current();
    (
        [("content-type", "text/plain; version=0.0.4")],
        served_only(&state.metrics.render(), |name| served.contains_key(name)),
    )
}

/// The rendered metrics without the series of channels no longer served.
///
/// The `metrics` recorder cannot forget a series, and a channel removed at run
/// time would otherwise be exported for the rest of the process's life (its
/// nine `xbridge_channel_state` series, its counters): every channel the CRM
/// ever added would count against Prometheus' cardinality, and `state="removed"`
/// would stay 1. What stays in the recorder is a few hundred bytes a name; a
/// channel added back under its name shows its counters again, still monotonic.
/// `channel="unknown"` (replies and media for no served channel) is kept.
fn served_only(rendered: &str, served: impl Fn(&str) -> bool) -> String {
    let mut kept = String::with_capacity(rendered.len());
    for line in rendered.split_inclusive('\n') {
        let channel = line
            .split_once("channel=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(name, _)| name);
        // Channel names hold no quote or backslash, so the value ends at the next quote.
        let gone = channel.is_some_and(|name| name != "unknown" && !served(name));
        if line.starts_with('#') || !gone {
            kept.push_str(line);
        }
    }
    kept
}

/// Samples the runtime at each scrape: counting tasks costs one atomic load,
/// and a sample taken only when someone looks needs no task of its own.
fn record_runtime() {
    let alive = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    metrics::gauge!("xbridge_runtime_alive_tasks").set(alive as f64);
}

/// Binds the operations address early, so a port in use fails at startup.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    xbridge_core::server::bind(addr)
}

#[cfg(test)]
mod tests {
    use super::served_only;

    #[test]
    fn series_of_channels_no_longer_served_are_left_out() {
        let rendered = "# HELP xbridge_channel_state state\n\
# TYPE xbridge_channel_state gauge\n\
xbridge_channel_state{channel=\"acme\",state=\"ok\"} 1\n\
xbridge_channel_state{channel=\"gone\",state=\"removed\"} 1\n\
xbridge_dms_failed_total{channel=\"unknown\",reason=\"unknown_channel\"} 2\n\
xbridge_dms_sent_total{channel=\"gone\"} 7\n\
xbridge_state_store_writable 1\n";
        let kept = served_only(rendered, |name| name == "acme");
        assert_eq!(
            kept,
            "# HELP xbridge_channel_state state\n\
# TYPE xbridge_channel_state gauge\n\
xbridge_channel_state{channel=\"acme\",state=\"ok\"} 1\n\
xbridge_dms_failed_total{channel=\"unknown\",reason=\"unknown_channel\"} 2\n\
xbridge_state_store_writable 1\n"
        );
    }
}
