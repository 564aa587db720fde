//! The CRM's reader as a process of its own (`efficiency`): the hidden
//! `xbridge-bench crm-reader` subcommand, re-executed as a child, consumes a
//! queue (the bridge's `message.sent` events, or a relay's output) and
//! writes one line per outcome to stdout: `<sent|other> <i> <unix µs>`, `i`
//! from the message id `m-<i>`, the time when it was read by the wall clock
//! (the same clock the parent and the simulator read on this machine). The
//! JSON parsing and the consumer's work then count in neither the bridge's
//! CPU nor the benchmark's.

use std::collections::HashMap;
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures::StreamExt;
use lapin::{Connection, ConnectionProperties};
use tokio::io::{AsyncReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::mpsc;

use crate::child::spawn_until_ready;
use crate::harness::consume_no_ack;

/// The child side: reads `queue` at `url` without acknowledgements, says
/// `ready` once consuming, writes a line per outcome, and exits when its
/// stdin closes (the parent went away or is done).
pub async fn serve(url: &str, queue: &str) -> anyhow::Result<()> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .context("the reader connects")?;
    let channel = connection.create_channel().await?;
    let mut consumer = consume_no_ack(&channel, queue, "bench-reader").await?;
    say("ready")?;
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    loop {
        tokio::select! {
            delivery = consumer.next() => {
                let Some(Ok(delivery)) = delivery else { break };
                let at = micros(SystemTime::now());
                if let Some(line) = outcome_line(&delivery.data, at) {
                    say(&line)?;
                }
            }
            read = stdin.read(&mut sink) => {
                if matches!(read, Ok(0) | Err(_)) {
                    break;
                }
            }
        }
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// The line for one message: a bridge event by its `type` (`channel.state`
/// and others without a reply's id are left out), or a relayed reply (no
/// `type`) as `sent`.
fn outcome_line(body: &[u8], at: u128) -> Option<String> {
    let body: serde_json::Value = serde_json::from_slice(body).ok()?;
    let i: usize = body["message_id"]
        .as_str()?
        .strip_prefix("m-")?
        .parse()
        .ok()?;
    let kind = match body["type"].as_str() {
        None | Some("message.sent") => "sent",
        Some("channel.state") => return None,
        Some(_) => "other",
    };
    Some(format!("{kind} {i} {at}"))
}

/// One line on stdout, flushed so the parent reads it at once.
fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

fn micros(at: SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

/// The parent side: a running reader and its lines, drained from its stdout
/// by a task of their own as they come: a reader whose pipe filled while the
/// parent was busy publishing would stop consuming and date its outcomes
/// late.
pub struct ReaderProcess {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

/// Every line `lines` gives, handed over as it comes until the pipe closes.
fn drain(mut lines: Lines<BufReader<ChildStdout>>) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// How a backlog of replies `m-<i>` ended, as the reader saw it.
#[derive(Debug, Default)]
pub struct Outcomes {
    /// When the first `sent` line of each reply was read, by the wall clock.
    pub sent_at: HashMap<usize, SystemTime>,
    /// Replies that ended otherwise.
    pub other: usize,
}

impl Outcomes {
    /// The first and last `sent`, if any.
    pub fn span(&self) -> Option<(SystemTime, SystemTime)> {
        Some((*self.sent_at.values().min()?, *self.sent_at.values().max()?))
    }
}

impl ReaderProcess {
    /// Starts `xbridge-bench crm-reader` on `queue` and waits until it consumes.
    pub async fn start(url: &str, queue: &str) -> anyhow::Result<ReaderProcess> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("crm-reader")
            .arg("--url")
            .arg(url)
            .arg("--queue")
            .arg(queue);
        let (child, lines) = spawn_until_ready(command, "CRM reader").await?;
        Ok(ReaderProcess {
            child,
            lines: drain(lines),
        })
    }

    /// Reads outcomes until `expected` replies have one or `timeout` passed
    /// (then says so on stderr, prefixed with `what`).
    pub async fn collect(&mut self, expected: usize, timeout: Duration, what: &str) -> Outcomes {
        let mut outcomes = Outcomes::default();
        let deadline = tokio::time::Instant::now() + timeout;
        while outcomes.sent_at.len() + outcomes.other < expected {
            let Ok(Some(line)) = tokio::time::timeout_at(deadline, self.lines.recv()).await else {
                eprintln!(
                    "{what}: gave up after {timeout:?} with {} of {expected} outcomes",
                    outcomes.sent_at.len() + outcomes.other
                );
                break;
            };
            let mut fields = line.split(' ');
            let (Some(kind), Some(i), Some(at)) = (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let (Ok(i), Ok(at)) = (i.parse::<usize>(), at.parse::<u64>()) else {
                continue;
            };
            match kind {
                "sent" => {
                    outcomes
                        .sent_at
                        .entry(i)
                        .or_insert(UNIX_EPOCH + Duration::from_micros(at));
                }
                _ => outcomes.other += 1,
            }
        }
        outcomes
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
