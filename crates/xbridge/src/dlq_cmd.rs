//! `xbridge dlq …`: what operators do with dead-lettered replies without the
//! management UI: see them (`list`, `show`), send them again once the cause is
//! fixed (`replay`, e.g. after credits were topped up) or drop them (`purge`).
//! The queue also keeps webhook bodies from X the bridge could not route (marked
//! inbound): they are listed, shown and purged alike, but never replayed, since
//! they were never replies.
//!
//! Every command reads the dead-letter queue (see
//! [`xbridge_amqp::dead_letters`] for how, and why nothing is lost if
//! the command dies), the whole of it up to a bound ([`ReadBound`]: a queue
//! flooded past it is worked through by running the command again), acts on
//! the letters its filters match and gives the rest back in their order. Output is a plain table for people; dead letters hold
//! no credentials by design, so nothing here needs redacting.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context as _};
use lapin::types::{AMQPValue, FieldTable};
use xbridge_amqp::{connect_any, FailureHeaders};

use xbridge_amqp::dead_letters::{DeadLetter, DeadLetterQueue, Filter, ReadBound, Taken};
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
    let (options, id, action) = parse(command)?;
    let settings = Settings::load(&options.config)?;
    let filter = Filter {
        id,
        channel: options.channel,
        reason: options.reason,
        older_than: options.older_than,
    };
    let (connection, _) = connect_any(&settings.amqp.brokers, 0, "xbridge dlq").await?;
    let mut queue = DeadLetterQueue::open(&connection, settings.amqp.topology.clone()).await?;
    let bound = ReadBound::default();
    let Taken { letters, more } = queue.take(bound).await?;
    if more {
        warn_more_behind(letters.len(), bound);
    }
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

/// The subcommand as filters, an optional message id and an action. A purge
/// without `--yes` or `--dry-run` is refused here, before anything connects.
fn parse(command: DlqCommand) -> anyhow::Result<(DlqFilter, Option<String>, Action)> {
    Ok(match command {
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
    })
}

/// Tells the operator (on stderr, beside the table) that the queue holds more
/// than one command reads, so an empty result is not taken for an empty queue.
fn warn_more_behind(read: usize, bound: ReadBound) {
    eprintln!(
        "xbridge: only the oldest {} dead letters ({} MiB of bodies at most) are read by one command; more wait behind them: act on these, then run it again",
        read,
        bound.bytes / (1024 * 1024)
    );
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
            list(all, matching);
            Ok(())
        }
        Action::Show => show_oldest(filter, matching),
        Action::Replay { dry_run } => replay(queue, dry_run, all, matching).await,
        Action::Purge { dry_run } => purge(queue, dry_run, all, matching).await,
    }
}

/// `dlq list`: counts by channel and reason, then one row per letter.
fn list(all: &[DeadLetter], matching: &[&DeadLetter]) {
    print_counts(matching);
    crate::outln!();
    print_table(matching);
    if matching.len() != all.len() {
        crate::outln!(
            "({} of {} dead letters match the filters)",
            matching.len(),
            all.len()
        );
    }
}

/// `dlq show`: the oldest letter with the id, saying when there are more.
fn show_oldest(filter: &Filter, matching: &[&DeadLetter]) -> anyhow::Result<()> {
    let Some(letter) = matching.first() else {
        bail!(
            "no dead letter with message_id {}",
            filter.id.as_deref().unwrap_or("-")
        );
    };
    show(letter);
    if matching.len() > 1 {
        crate::outln!(
            "({} dead letters have this message_id; showing the oldest)",
            matching.len()
        );
    }
    Ok(())
}

/// `dlq replay`: sends the matching replies again, one by one, so a failure
/// midway says how many went. Webhook bodies from X are skipped: they were
/// never replies, so there is nothing to send.
async fn replay(
    queue: &DeadLetterQueue,
    dry_run: bool,
    all: &[DeadLetter],
    matching: &[&DeadLetter],
) -> anyhow::Result<()> {
    let verb = if dry_run { "would replay" } else { "replayed" };
    let mut done = 0;
    let mut skipped = 0;
    for letter in matching {
        if letter.is_inbound() {
            skipped += 1;
            crate::outln!(
                "skipped {}: a webhook body from X, not a reply, so it cannot be replayed; read it with `dlq show`, drop it with `dlq purge`",
                described(letter)
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
        crate::outln!("{verb} {}", described(letter));
    }
    if skipped > 0 {
        crate::outln!("skipped {skipped} webhook bod(y/ies) from X");
    }
    print_done(verb, done, all.len() - if dry_run { 0 } else { done });
    Ok(())
}

/// `dlq purge`: drops the matching letters for good.
async fn purge(
    queue: &DeadLetterQueue,
    dry_run: bool,
    all: &[DeadLetter],
    matching: &[&DeadLetter],
) -> anyhow::Result<()> {
    let verb = if dry_run { "would drop" } else { "dropped" };
    let mut done = 0;
    for letter in matching {
        if !dry_run {
            queue.remove(letter).await?;
        }
        done += 1;
        crate::outln!("{verb} {}", described(letter));
    }
    print_done(verb, done, all.len() - if dry_run { 0 } else { done });
    Ok(())
}

/// One letter as replay and purge name it: id, channel and reason.
fn described(letter: &DeadLetter) -> String {
    format!(
        "{} (channel {}, reason {})",
        id(letter),
        channel(letter),
        reason(letter)
    )
}

/// The last line of replay and purge: how many, and how many are left.
fn print_done(verb: &str, done: usize, left: usize) {
    crate::outln!("{verb} {done} dead letter(s); {left} left in the queue");
}

fn print_counts(letters: &[&DeadLetter]) {
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for letter in letters {
        *counts.entry((channel(letter), reason(letter))).or_default() += 1;
    }
    crate::outln!("{:<20} {:<24} {:>6}", "CHANNEL", "REASON", "COUNT");
    for ((channel, reason), count) in &counts {
        crate::outln!("{channel:<20} {reason:<24} {count:>6}");
    }
    crate::outln!("{:<20} {:<24} {:>6}", "total", "", letters.len());
}

fn print_table(letters: &[&DeadLetter]) {
    crate::outln!(
        "{:<36} {:<16} {:<22} {:>8} {:>8}  DETAIL",
        "MESSAGE_ID",
        "CHANNEL",
        "REASON",
        "ATTEMPTS",
        "AGE"
    );
    for letter in letters {
        crate::outln!(
            "{:<36} {:<16} {:<22} {:>8} {:>8}  {}",
            id(letter),
            channel(letter),
            reason(letter),
            letter.headers.attempts,
            letter
                .age_now()
                .map(short_age)
                .unwrap_or_else(|| "-".into()),
            one_line(letter.headers.detail.as_deref().unwrap_or("")),
        );
    }
}

/// `dlq show` of one letter: what it is, its failure history, its
/// properties' headers and its body, every value made printable.
fn show(letter: &DeadLetter) {
    crate::outln!("message_id:        {}", id(letter));
    crate::outln!("channel:           {}", channel(letter));
    crate::outln!("reason:            {}", reason(letter));
    if letter.is_inbound() {
        crate::outln!("direction:         inbound (a webhook body from X, kept as X sent it; it cannot be replayed)");
    }
    show_history(&letter.headers);
    crate::outln!(
        "age:               {}",
        letter
            .age_now()
            .map(short_age)
            .unwrap_or_else(|| "-".into())
    );
    crate::outln!("routing key:       {}", printable(&letter.routing_key));
    if let Some(headers) = letter.properties.headers() {
        crate::outln!("headers:");
        for (key, value) in headers.inner() {
            crate::outln!(
                "  {}: {}",
                printable(key.as_str()),
                shown(value, SHOWN_CHARS)
            );
        }
    }
    show_body(&letter.body);
}

/// The bridge's own headers: why the letter failed, when, and where from.
fn show_history(h: &FailureHeaders) {
    crate::outln!(
        "detail:            {}",
        printable(h.detail.as_deref().unwrap_or("-"))
    );
    crate::outln!("attempts:          {}", h.attempts);
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
        ("dropped headers", h.dropped_headers.clone()),
    ] {
        crate::outln!(
            "{:<18} {}",
            format!("{name}:"),
            value.as_deref().map_or_else(|| "-".into(), printable)
        );
    }
}

/// The body, pretty-printed when it is JSON. JSON escapes C0 controls in
/// strings, but not DEL or C1 (`\u{9b}` is a CSI to some terminals), so
/// each line still goes through [`printable`].
fn show_body(body: &[u8]) {
    crate::outln!("body:");
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(json) => {
            for line in serde_json::to_string_pretty(&json)
                .unwrap_or_default()
                .lines()
            {
                crate::outln!("{}", printable(line));
            }
        }
        Err(_) => crate::outln!("{}", printable(&String::from_utf8_lossy(body))),
    }
}

/// How much of one header value `show` prints: headers can be as large as an
/// AMQP frame, and nobody reads 100 KB on a terminal.
const SHOWN_CHARS: usize = 512;

/// A header value for people: strings as text, numbers as numbers, times
/// with their date, tables and arrays by their items; at most about `max`
/// characters, saying how long the rest was.
fn shown(value: &AMQPValue, max: usize) -> String {
    let text = match value {
        AMQPValue::LongString(s) => long_string_text(s.as_bytes()),
        AMQPValue::ShortString(s) => printable(s.as_str()),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::DecimalValue(d) => format!("{}e-{}", d.value, d.scale),
        AMQPValue::Timestamp(t) => timestamp_text(*t),
        AMQPValue::FieldTable(table) => table_text(table, max),
        AMQPValue::FieldArray(array) => {
            let items: Vec<String> = array.as_slice().iter().map(|v| shown(v, max)).collect();
            format!("[{}]", items.join(", "))
        }
        AMQPValue::ByteArray(bytes) => format!("<{} bytes>", bytes.as_slice().len()),
        AMQPValue::Void => "(void)".to_owned(),
    };
    cut(text, max)
}

/// A long string as text when it is UTF-8; otherwise only its size.
fn long_string_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => printable(text),
        Err(_) => format!("<{} bytes, not UTF-8>", bytes.len()),
    }
}

/// An AMQP timestamp (seconds) with its date, when it has one.
fn timestamp_text(t: u64) -> String {
    match i64::try_from(t)
        .ok()
        .and_then(|t| chrono::DateTime::<chrono::Utc>::from_timestamp(t, 0))
    {
        Some(at) => format!("{t} ({})", at.to_rfc3339()),
        None => t.to_string(),
    }
}

/// A nested table (`x-death`'s entries, say) as `{key: value, …}`.
fn table_text(table: &FieldTable, max: usize) -> String {
    let items: Vec<String> = table
        .inner()
        .iter()
        .map(|(key, value)| format!("{}: {}", printable(key.as_str()), shown(value, max)))
        .collect();
    format!("{{{}}}", items.join(", "))
}

/// `text` cut to `max` characters, saying how long it was.
fn cut(text: String, max: usize) -> String {
    let chars = text.chars().count();
    if chars > max {
        let kept: String = text.chars().take(max).collect();
        format!("{kept}… ({chars} characters in all)")
    } else {
        text
    }
}

/// A letter's id for people: it comes from the reply's body, which whoever
/// published the reply chose.
fn id(letter: &DeadLetter) -> String {
    printable(&letter.id())
}

/// A letter's channel for people: a header or a routing key, chosen by the
/// reply's publisher for a reply to an unknown channel.
fn channel(letter: &DeadLetter) -> String {
    printable(letter.channel())
}

/// A letter's reason for people: a header the reply's publisher may have set.
fn reason(letter: &DeadLetter) -> String {
    printable(&letter.reason())
}

/// `text` with control characters escaped, so a header or body cannot move
/// the cursor, recolour or retitle the operator's terminal, or (OSC 52) fill
/// its clipboard. Every value of a dead letter is printed through it: the
/// reply's publisher chose its body, its headers and its routing key.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, LongString};

    #[test]
    fn header_values_are_shown_as_text_and_numbers() {
        let text = AMQPValue::LongString(LongString::from("xb-trace-1"));
        assert_eq!(shown(&text, 512), "xb-trace-1");
        assert_eq!(shown(&AMQPValue::LongLongInt(3), 512), "3");
        assert_eq!(
            shown(&AMQPValue::Timestamp(1_764_064_800), 512),
            "1764064800 (2025-11-25T10:00:00+00:00)"
        );
        let mut death = FieldTable::default();
        death.insert("count".into(), AMQPValue::LongLongInt(1));
        death.insert(
            "queue".into(),
            AMQPValue::LongString("xbridge.delay.10s".into()),
        );
        let deaths = AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)]));
        assert_eq!(
            shown(&deaths, 512),
            "[{count: 1, queue: xbridge.delay.10s}]"
        );
        let binary = AMQPValue::LongString(LongString::from(vec![0xff, 0xfe]));
        assert_eq!(shown(&binary, 512), "<2 bytes, not UTF-8>");
    }

    #[test]
    fn long_values_are_cut_and_control_characters_escaped() {
        let long = AMQPValue::LongString(LongString::from(vec![b'p'; 130_700]));
        let text = shown(&long, 512);
        assert!(text.starts_with(&"p".repeat(512)));
        assert!(text.ends_with("… (130700 characters in all)"), "{text}");
        let hostile = AMQPValue::LongString(LongString::from("a\u{1b}[2Jb"));
        assert_eq!(shown(&hostile, 512), "a\\u{1b}[2Jb");
    }
}
