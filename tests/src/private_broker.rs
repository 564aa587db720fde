//! A RabbitMQ node of one test's own, for tests that need the broker to go
//! away and come back. The shared broker on 5672 serves every other test
//! running at the same time, so it is never stopped; this node has its own
//! name, AMQP and distribution ports, data and log directories, a
//! configuration file of its own (the system's pins the listener to 5672) and
//! no plugins (so no management or Prometheus port clashes with the shared
//! node's). Its data outlives [`PrivateBroker::stop`], as a real broker's
//! does across a restart, and is deleted with the node when dropped.
//!
//! It runs the RabbitMQ server of this machine: Debian's scripts in
//! `/usr/lib/rabbitmq/bin` (the `/usr/sbin` wrappers would switch to the
//! `rabbitmq` user, who cannot write the test's directories), else
//! `rabbitmq-server` and `rabbitmqctl` from the `PATH`.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::PATIENCE;

/// Where Debian installs the server's own scripts.
const DEBIAN_SCRIPTS: &str = "/usr/lib/rabbitmq/bin";

/// Between two attempts to connect while the node boots.
const BOOT_POLL: Duration = Duration::from_millis(200);

/// A private RabbitMQ node: configured by [`PrivateBroker::new`], run by
/// [`PrivateBroker::start`], stopped (and deleted) on drop.
pub struct PrivateBroker {
    node: String,
    amqp_port: u16,
    dist_port: u16,
    dir: tempfile::TempDir,
    running: bool,
    /// A cluster member's `HOME`, where its Erlang cookie is (shared by the
    /// members); `None`: the user's own, as a lone node needs no other.
    home: Option<PathBuf>,
}

impl PrivateBroker {
    /// A node configured but not started: its AMQP URL refuses connections,
    /// as a broker that is down does.
    pub fn new() -> PrivateBroker {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        PrivateBroker::named(format!("xbt-{id}"), None)
    }

    /// A node named `<name>@localhost`, configured but not started, with
    /// `HOME` set to `home` when given.
    fn named(name: String, home: Option<PathBuf>) -> PrivateBroker {
        let dir = tempfile::tempdir().expect("a directory for the private broker");
        let amqp_port = free_port();
        let dist_port = free_port();
        std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
        std::fs::create_dir_all(dir.path().join("log")).expect("log dir");
        std::fs::write(
            dir.path().join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{amqp_port}\nloopback_users = none\n"),
        )
        .expect("the private broker's config");
        // An empty list: no plugins, so no ports beside AMQP and distribution.
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").expect("enabled_plugins");
        PrivateBroker {
            node: format!("{name}@localhost"),
            amqp_port,
            dist_port,
            dir,
            running: false,
            home,
        }
    }

    /// A node started and accepting AMQP connections.
    pub async fn started() -> PrivateBroker {
        let mut broker = PrivateBroker::new();
        broker.start().await;
        broker
    }

    /// The Erlang node name (`xbt-…@localhost`), to find its `beam.smp`.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// Starts the node (again, with the data it had) and waits until it
    /// accepts an AMQP connection; fails the test after twice [`PATIENCE`]
    /// (a first boot on a busy machine is slow).
    pub async fn start(&mut self) {
        assert!(!self.running, "the private broker is already running");
        let mut command = self.command("rabbitmq-server");
        run(command.arg("-detached")).await;
        self.running = true;
        self.wait_for_amqp().await;
    }

    /// Waits until the node accepts an AMQP connection.
    async fn wait_for_amqp(&self) {
        // An AMQP handshake is what clients wait for; `rabbitmqctl
        // await_startup` fails before the node registered and then looks again
        // only every 10 s.
        let url = self.amqp_url();
        let boot = async {
            loop {
                let properties = lapin::ConnectionProperties::default();
                if let Ok(connection) = lapin::Connection::connect(&url, properties).await {
                    let _ = connection.close(200, "booted".into()).await;
                    return;
                }
                tokio::time::sleep(BOOT_POLL).await;
            }
        };
        if tokio::time::timeout(PATIENCE * 2, boot).await.is_err() {
            panic!(
                "the private broker {} did not accept connections within {:?}; its log:\n{}",
                self.node,
                PATIENCE * 2,
                self.log_tail()
            );
        }
    }

    /// Stops the node (`rabbitmqctl stop`) and waits until its process
    /// exited: its clients' connections are closed, its port refuses.
    pub async fn stop(&mut self) {
        assert!(self.running, "the private broker is not running");
        let mut command = self.command("rabbitmqctl");
        run(command
            .args(["-n", &self.node, "stop"])
            .arg(self.pid_file()))
        .await;
        self.running = false;
    }

    /// Closes every client connection by force (`rabbitmqctl
    /// close_all_connections`), as a network blip does; the node stays up.
    pub async fn close_all_connections(&self, reason: &str) {
        assert!(self.running, "the private broker is not running");
        self.ctl(&["close_all_connections", reason]).await;
    }

    /// `rabbitmqctl -n <this node> <args>`, to its end; fails the test if it
    /// fails.
    async fn ctl(&self, args: &[&str]) {
        let mut command = self.command("rabbitmqctl");
        run(command.args(["-n", &self.node]).args(args)).await;
    }

    /// `rabbitmqctl -n <this node> --quiet <args>`: what it printed, or why it
    /// failed (for the benchmark's looks at a node of its own).
    pub async fn ctl_output(&self, args: &[&str]) -> Result<String, String> {
        let mut command = self.command("rabbitmqctl");
        let output = command
            .args(["-n", &self.node, "--quiet"])
            .args(args)
            .output()
            .await
            .map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// The node's log, its last lines, for failure messages.
    pub fn log_tail(&self) -> String {
        let path = self
            .dir
            .path()
            .join("log")
            .join(format!("{}.log", self.node));
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir
            .path()
            .join("data")
            .join(format!("{}.pid", self.node))
    }

    /// One of the server's scripts, with this node's environment.
    fn command(&self, script: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(script_path(script));
        if let Some(home) = &self.home {
            command.env("HOME", home);
        }
        command
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", Ipv4Addr::LOCALHOST.to_string())
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.dir.path().join("data"))
            .env("RABBITMQ_LOG_BASE", self.dir.path().join("log"))
            .env("RABBITMQ_PID_FILE", self.pid_file())
            .env(
                "RABBITMQ_CONFIG_FILE",
                self.dir.path().join("rabbitmq.conf"),
            )
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.path().join("enabled_plugins"),
            )
            // Schedulers that sleep when idle instead of spinning: several
            // nodes share this machine's few cores with the builds and tests.
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "+sbwt none +sbwtdcpu none +sbwtdio none",
            )
            .current_dir(self.dir.path())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(false);
        command
    }
}

impl Default for PrivateBroker {
    fn default() -> Self {
        PrivateBroker::new()
    }
}

impl Drop for PrivateBroker {
    /// Stops the node, even when the test failed; the directory goes with
    /// the [`tempfile::TempDir`].
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        let mut command = std::process::Command::new(script_path("rabbitmqctl"));
        if let Some(home) = &self.home {
            command.env("HOME", home);
        }
        let stopped = command
            .args(["-n", &self.node, "stop"])
            .arg(self.pid_file())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if !stopped.is_ok_and(|s| s.success()) {
            eprintln!(
                "could not stop the private RabbitMQ node {}; stop it with `rabbitmqctl -n {} stop`",
                self.node, self.node
            );
        }
    }
}

/// Three private RabbitMQ nodes joined in one cluster, for tests of a node
/// loss: each a [`PrivateBroker`] of its own (name unique to the test run,
/// ports, directories, configuration file), sharing an Erlang cookie of
/// their own in a `HOME` of their own (`RABBITMQ_ERLANG_COOKIE` is
/// deprecated), so neither the shared node nor the user's cookie is touched.
/// A quorum queue declared on it has a member on each node (RabbitMQ's
/// default initial group size is the cluster's size). Every node is stopped
/// and deleted on drop.
pub struct PrivateCluster {
    nodes: Vec<PrivateBroker>,
    /// Holds `.erlang.cookie`; kept until the nodes are gone.
    _home: tempfile::TempDir,
}

/// How many nodes a [`PrivateCluster`] has: the least that keeps a quorum
/// (two) when one is lost.
pub const CLUSTER_SIZE: usize = 3;

impl PrivateCluster {
    /// Starts three nodes and joins the second and third to the first;
    /// returns once all three run the cluster and accept AMQP connections.
    pub async fn started() -> PrivateCluster {
        let home = tempfile::tempdir().expect("a HOME for the cluster's cookie");
        let cookie = home.path().join(".erlang.cookie");
        std::fs::write(&cookie, uuid::Uuid::new_v4().simple().to_string()).expect("the cookie");
        // Erlang refuses a cookie file others can read.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400))
            .expect("the cookie's mode");
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let mut nodes: Vec<PrivateBroker> = (1..=CLUSTER_SIZE)
            .map(|n| PrivateBroker::named(format!("xbc-{id}-{n}"), Some(home.path().into())))
            .collect();
        futures::future::join_all(nodes.iter_mut().map(|node| node.start())).await;
        let first = nodes[0].node.clone();
        for node in &nodes[1..] {
            node.ctl(&["stop_app"]).await;
            node.ctl(&["join_cluster", &first]).await;
            node.ctl(&["start_app"]).await;
            node.wait_for_amqp().await;
        }
        let cluster = PrivateCluster { nodes, _home: home };
        let running = cluster.running_nodes().await;
        assert_eq!(
            running.len(),
            CLUSTER_SIZE,
            "the cluster's running nodes: {running:?}"
        );
        cluster
    }

    /// The AMQP URL of node `index` (0, 1 or 2).
    pub fn amqp_url(&self, index: usize) -> String {
        self.nodes[index].amqp_url()
    }

    /// Every node's AMQP URL, the first node's first.
    pub fn amqp_urls(&self) -> Vec<String> {
        self.nodes.iter().map(PrivateBroker::amqp_url).collect()
    }

    /// `127.0.0.1:<port>` of each node, as `amqp.hosts` takes them.
    pub fn hosts(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.amqp_port))
            .collect()
    }

    /// The Erlang node name of node `index` (`xbc-…-1@localhost`).
    pub fn node_name(&self, index: usize) -> &str {
        &self.nodes[index].node
    }

    /// The node loss: `rabbitmqctl stop_app` on node `index`. RabbitMQ
    /// closes its clients' connections and its listener; the other two keep
    /// the cluster's queues (a quorum of their members) going.
    pub async fn stop_app(&self, index: usize) {
        self.nodes[index].ctl(&["stop_app"]).await;
    }

    /// Starts node `index`'s RabbitMQ again (`rabbitmqctl start_app`) and
    /// waits until it accepts AMQP connections: it rejoins the cluster.
    pub async fn start_app(&self, index: usize) {
        self.nodes[index].ctl(&["start_app"]).await;
        self.nodes[index].wait_for_amqp().await;
    }

    /// How many members the quorum queue `queue` (on vhost `/`) has, as
    /// node `index` lists them (`rabbitmq-queues quorum_status`).
    pub async fn quorum_members(&self, index: usize, queue: &str) -> usize {
        let node = &self.nodes[index];
        let mut command = node.command("rabbitmq-queues");
        command.args([
            "-n",
            &node.node,
            "quorum_status",
            queue,
            "--formatter",
            "json",
        ]);
        let output = command.output().await.expect("rabbitmq-queues runs");
        assert!(
            output.status.success(),
            "quorum_status {queue}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let members: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("quorum_status prints JSON");
        members.as_array().map_or(0, Vec::len)
    }

    /// How many consumers each queue on vhost `/` has, as the first node
    /// that answers lists them (`rabbitmqctl list_queues name consumers`).
    pub async fn consumers(&self) -> std::collections::BTreeMap<String, usize> {
        for node in &self.nodes {
            let mut command = node.command("rabbitmqctl");
            command.args([
                "-n",
                &node.node,
                "list_queues",
                "name",
                "consumers",
                "--formatter",
                "json",
            ]);
            let Ok(output) = command.output().await else {
                continue;
            };
            if !output.status.success() {
                continue;
            }
            let queues: serde_json::Value =
                serde_json::from_slice(&output.stdout).expect("list_queues prints JSON");
            return queues
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|q| {
                    let name = q["name"].as_str()?.to_owned();
                    Some((name, q["consumers"].as_u64()? as usize))
                })
                .collect();
        }
        panic!("no node of the cluster lists its queues");
    }

    /// The nodes the first running one says run the cluster, as
    /// `rabbitmqctl cluster_status` lists them.
    pub async fn running_nodes(&self) -> Vec<String> {
        for node in &self.nodes {
            let mut command = node.command("rabbitmqctl");
            command.args(["-n", &node.node, "cluster_status", "--formatter", "json"]);
            let Ok(output) = command.output().await else {
                continue;
            };
            if !output.status.success() {
                continue;
            }
            let status: serde_json::Value =
                serde_json::from_slice(&output.stdout).expect("cluster_status prints JSON");
            return status["running_nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect();
        }
        Vec::new()
    }
}

/// Runs one of the server's scripts to its end, quietly unless it fails.
async fn run(command: &mut tokio::process::Command) {
    let output = command
        .output()
        .await
        .unwrap_or_else(|e| panic!("{command:?} cannot run: {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn script_path(script: &str) -> PathBuf {
    let debian = Path::new(DEBIAN_SCRIPTS).join(script);
    if debian.exists() {
        debian
    } else {
        PathBuf::from(script)
    }
}

/// A port nothing listens on now. Another process could take it before the
/// node binds it; the node then fails to start, with a clear log.
fn free_port() -> u16 {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
