//! The plain lapin relay the bridge is measured against (`efficiency`), as a
//! process of its own: the hidden `xbridge-bench relay` subcommand,
//! re-executed as a child, so its `/proc` CPU is the relay's alone.
//!
//! It consumes a quorum queue with a prefetch (16, the bridge's in the same
//! run), and per message, in a task of its own: with an X URL, parses the
//! reply's JSON and POSTs `{"text"}` to X's 1:1 DM send route for its
//! `recipient_id`, OAuth 1.0a-signed as the simulator requires (the
//! simulator's own signing code), expecting a 201; then publishes the
//! message to an output queue with a confirm, and acks once confirmed.
//! That is the bridge's broker work plus one HTTP request, without its
//! state store, ordering, events or retries.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use x_simulator::Account;

use crate::child::spawn_until_ready;

/// Where the relay POSTs each message, and as whom.
struct XTarget {
    base_url: reqwest::Url,
    account: Account,
    http: reqwest::Client,
}

/// The child side: connects, says `ready`, waits for a line on stdin, then
/// relays until stdin closes.
pub async fn serve(
    url: &str,
    input: &str,
    output: &str,
    prefetch: u16,
    x_url: Option<&str>,
    account: Option<&Path>,
) -> anyhow::Result<()> {
    let target = match (x_url, account) {
        (Some(x_url), Some(account)) => Some(Arc::new(XTarget {
            base_url: x_url.parse()?,
            account: serde_json::from_slice(&std::fs::read(account)?)?,
            http: reqwest::Client::new(),
        })),
        (None, None) => None,
        _ => anyhow::bail!("--x-url and --account go together"),
    };
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .context("the relay connects")?;
    let consume_channel = connection.create_channel().await?;
    consume_channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let publish_channel = connection.create_channel().await?;
    publish_channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    println!("ready");
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    if stdin.next_line().await?.is_none() {
        return Ok(());
    }
    let mut consumer = consume_channel
        .basic_consume(
            input.into(),
            "bench-relay".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let output: Arc<str> = output.into();
    let mut rest = stdin.into_inner();
    let mut sink = [0u8; 64];
    loop {
        tokio::select! {
            delivery = consumer.next() => {
                let Some(Ok(delivery)) = delivery else { break };
                tokio::spawn(relay_one(
                    delivery,
                    publish_channel.clone(),
                    output.clone(),
                    target.clone(),
                ));
            }
            read = rest.read(&mut sink) => {
                if matches!(read, Ok(0) | Err(_)) {
                    break;
                }
            }
        }
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// One message: the POST (if any), the confirmed publish, the ack. A
/// message that fails is left unacknowledged, and the run comes up short.
async fn relay_one(
    delivery: lapin::message::Delivery,
    channel: Channel,
    output: Arc<str>,
    target: Option<Arc<XTarget>>,
) {
    if let Some(target) = target {
        if let Err(e) = post(&target, &delivery.data).await {
            eprintln!("relay: the POST failed: {e:#}");
            return;
        }
    }
    forward(&channel, &output, delivery).await;
}

/// The relay's broker work for one message: publishes it to `output` with a
/// confirm, and acks it once confirmed (left unacknowledged otherwise).
/// Both relays use it: this process's and the `outbound` benchmark's.
pub(crate) async fn forward(channel: &Channel, output: &str, delivery: lapin::message::Delivery) {
    let confirmed = async {
        channel
            .basic_publish(
                "".into(),
                output.into(),
                BasicPublishOptions::default(),
                &delivery.data,
                BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2),
            )
            .await?
            .await
    }
    .await;
    if confirmed.is_ok() {
        let _ = delivery.ack(BasicAckOptions::default()).await;
    }
}

/// `POST /2/dm_conversations/with/<recipient_id>/messages` `{"text"}`, signed.
async fn post(target: &XTarget, body: &[u8]) -> anyhow::Result<()> {
    let reply: serde_json::Value = serde_json::from_slice(body)?;
    let recipient = reply["recipient_id"].as_str().context("no recipient_id")?;
    let url = target
        .base_url
        .join(&format!("2/dm_conversations/with/{recipient}/messages"))?;
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let authorization = x_simulator::oauth::authorization_header(
        "POST",
        &url,
        &[],
        &target.account,
        &nonce,
        timestamp,
    );
    let answer = target
        .http
        .post(url)
        .header("authorization", authorization)
        .json(&serde_json::json!({ "text": reply["text"] }))
        .send()
        .await?;
    anyhow::ensure!(
        answer.status().as_u16() == 201,
        "X answered {}",
        answer.status()
    );
    Ok(())
}

/// The parent side: a relay process started, waiting for its go.
pub struct RelayProcess {
    child: Child,
    _lines: Lines<BufReader<ChildStdout>>,
}

/// What the relay needs to POST to X.
pub struct RelayX<'a> {
    /// The simulator's base URL.
    pub base_url: &'a reqwest::Url,
    /// A JSON file holding the account it signs as.
    pub account_file: PathBuf,
}

impl RelayProcess {
    /// Starts `xbridge-bench relay` and waits until it is connected (not yet
    /// consuming: [`RelayProcess::go`] starts it).
    pub async fn start(
        url: &str,
        input: &str,
        output: &str,
        prefetch: u16,
        x: Option<RelayX<'_>>,
    ) -> anyhow::Result<RelayProcess> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("relay")
            .arg("--url")
            .arg(url)
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(output)
            .arg("--prefetch")
            .arg(prefetch.to_string());
        if let Some(x) = &x {
            command
                .arg("--x-url")
                .arg(x.base_url.as_str())
                .arg("--account")
                .arg(&x.account_file);
        }
        let (child, lines) = spawn_until_ready(command, "relay").await?;
        Ok(RelayProcess {
            child,
            _lines: lines,
        })
    }

    /// Its process id, for `/proc`.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Starts consuming.
    pub async fn go(&mut self) -> anyhow::Result<()> {
        let stdin = self.child.stdin.as_mut().context("the relay's stdin")?;
        stdin.write_all(b"go\n").await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Closes its stdin, which ends it, and waits for it.
    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
