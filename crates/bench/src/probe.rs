//! What a running `xbridge` process holds, seen from outside: `/proc`, its
//! ops server (`/metrics`, `/channels`) and `rabbitmqctl` for the AMQP
//! channels of its connections.

use std::collections::HashSet;
use std::fmt;

use anyhow::Context as _;

use crate::procstat;
use crate::scale::status_field;

/// One look at the process.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Channels `/channels` lists.
    pub channels_served: i64,
    /// `VmRSS`, KiB.
    pub rss_kib: i64,
    /// Threads.
    pub threads: i64,
    /// Open file descriptors.
    pub fds: i64,
    /// `xbridge_runtime_alive_tasks`.
    pub tasks: i64,
    /// TCP connections to the broker.
    pub connections: i64,
    /// AMQP channels open on those connections, as RabbitMQ counts them.
    pub amqp_channels: i64,
    /// Series on `/metrics` (lines that are not comments).
    pub series: i64,
    /// Of those, series labelled with a churned channel (`channel="churn…"`).
    pub churn_series: i64,
}

/// A row of the table: its label and its figure.
pub type Row = (&'static str, fn(&Snapshot) -> i64);

/// The rows of the churn table, in order.
pub const ROWS: &[Row] = &[
    ("channels served (`/channels`)", |s| s.channels_served),
    ("VmRSS (KiB)", |s| s.rss_kib),
    ("threads", |s| s.threads),
    ("open file descriptors", |s| s.fds),
    ("tokio tasks alive", |s| s.tasks),
    ("connections to RabbitMQ", |s| s.connections),
    ("AMQP channels open (`rabbitmqctl`)", |s| s.amqp_channels),
    ("series on `/metrics`", |s| s.series),
    ("… of them naming an added channel", |s| s.churn_series),
];

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (label, value)) in ROWS.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{label} {}", value(self))?;
        }
        Ok(())
    }
}

/// Looks at process `pid`, whose ops server listens on `ops_port`, with
/// `rabbitmqctl` asking `node` (the default node when `None`).
pub async fn snapshot(pid: u32, ops_port: u16, node: Option<&str>) -> anyhow::Result<Snapshot> {
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{ops_port}");
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let channels: serde_json::Value = http
        .get(format!("{base}/channels"))
        .send()
        .await?
        .json()
        .await?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let ports = broker_ports(pid);
    let series: Vec<&str> = metrics
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    Ok(Snapshot {
        channels_served: channels.as_array().map_or(-1, |a| a.len() as i64),
        rss_kib: status_field(&status, "VmRSS:")? as i64,
        threads: status_field(&status, "Threads:")? as i64,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as i64,
        tasks: gauge(&series, "xbridge_runtime_alive_tasks").unwrap_or(-1),
        connections: ports.len() as i64,
        amqp_channels: amqp_channels(&ports, node)?,
        series: series.len() as i64,
        churn_series: series
            .iter()
            .filter(|line| line.contains("channel=\"churn"))
            .count() as i64,
    })
}

/// The value of an unlabelled gauge.
fn gauge(series: &[&str], name: &str) -> Option<i64> {
    series.iter().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse::<f64>().ok().map(|v| v as i64)
    })
}

/// The local ports of the process's TCP connections to the broker (the
/// port of `XBRIDGE_TEST_AMQP_URL`, 5672 by default).
fn broker_ports(pid: u32) -> HashSet<u16> {
    let broker = procstat::url_port(&xbridge_test_support::amqp_url()).unwrap_or(5672);
    procstat::connections(pid)
        .into_iter()
        .filter(|c| c.remote_port == broker)
        .map(|c| c.local_port)
        .collect()
}

/// AMQP channels RabbitMQ counts on the connections from `ports`.
fn amqp_channels(ports: &HashSet<u16>, node: Option<&str>) -> anyhow::Result<i64> {
    let mut command = std::process::Command::new("rabbitmqctl");
    if let Some(node) = node {
        command.args(["-n", node]);
    }
    let output = command
        .args([
            "list_connections",
            "peer_port",
            "channels",
            "--quiet",
            "--no-table-headers",
        ])
        .output()
        .context("running rabbitmqctl list_connections")?;
    anyhow::ensure!(
        output.status.success(),
        "rabbitmqctl list_connections failed"
    );
    let mut channels = 0;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let mut fields = line.split_whitespace();
        let (Some(port), Some(count)) = (fields.next(), fields.next()) else {
            continue;
        };
        if port.parse().is_ok_and(|port: u16| ports.contains(&port)) {
            channels += count.parse::<i64>().unwrap_or(0);
        }
    }
    Ok(channels)
}
