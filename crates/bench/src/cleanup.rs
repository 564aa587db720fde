//! Deletes what an interrupted run left on the broker: every queue and
//! exchange whose name starts with `<prefix>.`, as `rabbitmqctl` lists them.

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use xbridge_test_support::amqp_url;

/// Deletes the queues and exchanges named `<prefix>.…`.
pub async fn run(prefix: &str) -> anyhow::Result<()> {
    run_on(prefix, None).await
}

/// [`run`] with `rabbitmqctl` asking `node` (`-n`), when not the default one.
pub async fn run_on(prefix: &str, node: Option<&str>) -> anyhow::Result<()> {
    anyhow::ensure!(
        prefix.starts_with("t-") || prefix.starts_with("bench-"),
        "only the benchmark's own prefixes (t-…, bench-…) are deleted"
    );
    let wanted = format!("{prefix}.");
    let queues = listed("list_queues", &wanted, node)?;
    let exchanges = listed("list_exchanges", &wanted, node)?;
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    for queue in &queues {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    for exchange in &exchanges {
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    println!(
        "deleted {} queue(s) and {} exchange(s) named {wanted}…",
        queues.len(),
        exchanges.len()
    );
    Ok(())
}

/// Names `rabbitmqctl <command> name` lists that start with `wanted`.
fn listed(command: &str, wanted: &str, node: Option<&str>) -> anyhow::Result<Vec<String>> {
    let mut rabbitmqctl = std::process::Command::new("rabbitmqctl");
    if let Some(node) = node {
        rabbitmqctl.args(["-n", node]);
    }
    let output = rabbitmqctl
        .args([command, "name", "--quiet", "--no-table-headers"])
        .output()?;
    anyhow::ensure!(output.status.success(), "rabbitmqctl {command} failed");
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|name| name.starts_with(wanted))
        .map(str::to_owned)
        .collect())
}
