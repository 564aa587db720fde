//! `[telemetry]`: log format and where health and metrics are served.

use serde::Deserialize;

/// Log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Logging, health and metrics; the log level comes from `RUST_LOG`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Text or JSON lines.
    pub log_format: LogFormat,
    /// Where `/healthz`, `/readyz` and `/metrics` are served (for probes and
    /// Prometheus); unset, they are not served.
    pub listen: Option<std::net::SocketAddr>,
}
