//! `xbridge dlq …`: what operators do with dead-lettered replies without the
//! management UI: see them (`list`, `show`), send them again once the cause is
//! fixed (`replay`, e.g. after credits were topped up) or drop them (`purge`).
//! The queue also keeps webhook bodies from X the bridge could not route (marked
//! inbound): they are listed, shown and purged alike, but never replayed, since
//! they were never replies.
//!
//! Every command reads the whole dead-letter queue (see
//! [`xbridge_core::amqp::dead_letters`] for how, and why nothing is lost if
//! the command dies), acts on the letters its filters match and gives the rest
//! back in their order. Output is a plain table for people; dead letters hold
//! no credentials by design, so nothing here needs redacting.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context as _};
use xbridge_core::amqp::connect;
use xbridge_core::amqp::dead_letters::{DeadLetter, DeadLetterQueue, Filter};
use xbridge_core::config::Settings;

use crate::cli::{DlqCommand, DlqFilter};

/// What a command does with the letters its filters match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    List,
    Show,
    Replay { dry_run: bool },
    Purge { dry_run: bool },
}

/// Runs one `dlq` subcommand to completion.
pub async fn run(command: DlqCommand) -> anyhow::Result<()> {
    let (options, id, action) = match command {
        DlqCommand::List { filter } => (filter, None, Action::List),
        DlqCommand::Show { id, config } => (
            DlqFilter {
                config,
                channel: None,
                reason: None,
                older_than: None,
            },
            Some(id),
            Action::Show,
        ),
        DlqCommand::Replay {
            filter,
            id,
            dry_run,
        } => (filter, id, Action::Replay { dry_run }),
        DlqCommand::Purge {
            filter,
            id,
            dry_run,
            yes,
        } => {
            if !dry_run && !yes {
                bail!(
                    "purge drops dead letters for good: add --yes (or look first with --dry-run)"
                );
            }
            (filter, id, Action::Purge { dry_run })
        }
    };
    let settings = Settings::load(&options.config)?;
    let filter = Filter {
        id,
        channel: options.channel,
        reason: options.reason,
        older_than: options.older_than,
    };
    let connection = connect(&settings.amqp.url, "xbridge dlq").await?;
    let mut queue = DeadLetterQueue::open(&connection, settings.amqp.topology.clone()).await?;
    let letters = queue.take_all().await?;
    let matching: Vec<&DeadLetter> = letters.iter().filter(|l| filter.matches_now(l)).collect();
    let outcome = act(&queue, action, &filter, &letters, &matching).await;
    // Whatever happened, what is still held goes back to the queue; closing
    // the connection would return it too, this keeps the order explicit.
    let released = queue.release_rest().await;
    let _ = connection.close(200, "done".into()).await;
    outcome?;
    released?;
    Ok(())
}

async fn act(
    queue: &DeadLetterQueue,
    action: Action,
    filter: &Filter,
    all: &[DeadLetter],
    matching: &[&DeadLetter],
) -> anyhow::Result<()> {
    match action {
        Action::List => {
            print_counts(matching);
            println!();
            print_table(matching);
            if matching.len() != all.len() {
                println!(
                    "({} of {} dead letters match the filters)",
                    matching.len(),
                    all.len()
                );
            }
            Ok(())
        }
        Action::Show => {
            let Some(letter) = matching.first() else {
                bail!(
                    "no dead letter with message_id {}",
                    filter.id.as_deref().unwrap_or("-")
                );
            };
            show(letter);
            if matching.len() > 1 {
                println!(
                    "({} dead letters have this message_id; showing the oldest)",
                    matching.len()
                );
            }
            Ok(())
        }
        Action::Replay { dry_run } => {
            let verb = if dry_run { "would replay" } else { "replayed" };
            let mut done = 0;
            let mut skipped = 0;
            for letter in matching {
                // A webhook body from X was never a reply: there is nothing to send.
                if letter.is_inbound() {
                    skipped += 1;
                    println!(
                        "skipped {} (channel {}, reason {}): a webhook body from X, not a reply, so it cannot be replayed; read it with `dlq show`, drop it with `dlq purge`",
                        letter.id(),
                        letter.channel(),
                        letter.reason()
                    );
                    continue;
                }
                if !dry_run {
                    queue
                        .replay(letter)
                        .await
                        .with_context(|| format!("after {done} replayed"))?;
                }
                done += 1;
                println!(
                    "{verb} {} (channel {}, reason {})",
                    letter.id(),
                    letter.channel(),
                    letter.reason()
                );
            }
            if skipped > 0 {
                println!("skipped {skipped} webhook bod(y/ies) from X");
            }
            println!(
                "{verb} {done} dead letter(s); {} left in the queue",
                all.len() - if dry_run { 0 } else { done }
            );
            Ok(())
        }
        Action::Purge { dry_run } => {
            let verb = if dry_run { "would drop" } else { "dropped" };
            let mut done = 0;
            for letter in matching {
                if !dry_run {
                    queue.remove(letter).await?;
                }
                done += 1;
                println!(
                    "{verb} {} (channel {}, reason {})",
                    letter.id(),
                    letter.channel(),
                    letter.reason()
                );
            }
            println!(
                "{verb} {done} dead letter(s); {} left in the queue",
                all.len() - if dry_run { 0 } else { done }
            );
            Ok(())
        }
    }
}

fn print_counts(letters: &[&DeadLetter]) {
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for letter in letters {
        *counts
            .entry((letter.channel().to_owned(), letter.reason()))
            .or_default() += 1;
    }
    println!("{:<20} {:<24} {:>6}", "CHANNEL", "REASON", "COUNT");
    for ((channel, reason), count) in &counts {
        println!("{channel:<20} {reason:<24} {count:>6}");
    }
    println!("{:<20} {:<24} {:>6}", "total", "", letters.len());
}

fn print_table(letters: &[&DeadLetter]) {
    println!(
        "{:<36} {:<16} {:<22} {:>8} {:>8}  DETAIL",
        "MESSAGE_ID", "CHANNEL", "REASON", "ATTEMPTS", "AGE"
    );
    for letter in letters {
        println!(
            "{:<36} {:<16} {:<22} {:>8} {:>8}  {}",
            letter.id(),
            letter.channel(),
            letter.reason(),
            letter.headers.attempts,
            letter
                .age_now()
                .map(short_age)
                .unwrap_or_else(|| "-".into()),
            one_line(letter.headers.detail.as_deref().unwrap_or("")),
        );
    }
}

fn show(letter: &DeadLetter) {
    let h = &letter.headers;
    println!("message_id:        {}", letter.id());
    println!("channel:           {}", letter.channel());
    println!("reason:            {}", letter.reason());
    if letter.is_inbound() {
        println!("direction:         inbound (a webhook body from X, kept as X sent it; it cannot be replayed)");
    }
    println!("detail:            {}", h.detail.as_deref().unwrap_or("-"));
    println!("attempts:          {}", h.attempts);
    for (name, value) in [
        ("first seen at", h.first_seen_at.map(|t| t.to_rfc3339())),
        (
            "first failure at",
            h.first_failure_at.map(|t| t.to_rfc3339()),
        ),
        ("last failure at", h.last_failure_at.map(|t| t.to_rfc3339())),
        ("http status", h.http_status.map(|s| s.to_string())),
        ("problem type", h.problem_type.clone()),
        ("original exchange", h.original_exchange.clone()),
        ("original key", h.original_routing_key.clone()),
    ] {
        println!(
            "{:<18} {}",
            format!("{name}:"),
            value.unwrap_or_else(|| "-".into())
        );
    }
    println!(
        "age:               {}",
        letter
            .age_now()
            .map(short_age)
            .unwrap_or_else(|| "-".into())
    );
    println!("routing key:       {}", letter.routing_key);
    if let Some(headers) = letter.properties.headers() {
        println!("headers:");
        for (key, value) in headers.inner() {
            println!("  {key}: {value:?}");
        }
    }
    println!("body:");
    match serde_json::from_slice::<serde_json::Value>(&letter.body) {
        Ok(json) => println!(
            "{}",
            serde_json::to_string_pretty(&json).unwrap_or_default()
        ),
        Err(_) => println!("{}", String::from_utf8_lossy(&letter.body)),
    }
}

/// `42s`, `5m`, `3h`, `2d`: enough to tell old from new in a table.
fn short_age(age: Duration) -> String {
    let s = age.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// Keeps a table row on one line, and short.
fn one_line(text: &str) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > 80 {
        format!("{}…", flat.chars().take(79).collect::<String>())
    } else {
        flat
    }
}
