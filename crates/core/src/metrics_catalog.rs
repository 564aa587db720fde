//! Every metric the bridge records, with its type, labels and the help text
//! `/metrics` shows as `# HELP`. One list, so an operator reading `/metrics`
//! (or the operator's guide, which is written from it) learns what a series
//! counts without reading the code, and so a metric added without a
//! description fails the test below instead of reaching production silent.
//!
//! Label values are closed sets (channel names from the configuration,
//! reasons, outcomes, endpoints): never message, event or user ids, so
//! cardinality stays at channels × a fixed number of values.

/// How a metric behaves, as Prometheus types it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (from zero at each start of the bridge).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Observations in buckets (`_bucket`, `_sum`, `_count`).
    Histogram,
}

/// One metric of the catalog.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// Its name on `/metrics`.
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Its labels, exactly those every recording of it sets.
    pub labels: &'static [&'static str],
    /// The `# HELP` text: what it counts and what its labels hold.
    pub help: &'static str,
}

const fn counter(
    name: &'static str,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        labels,
        help,
    }
}

const fn gauge(name: &'static str, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric {
        name,
        kind: Kind::Gauge,
        labels,
        help,
    }
}

/// Every metric the bridge records.
pub const METRICS: &[Metric] = &[
    gauge(
        "xbridge_build_info",
        &["version", "commit"],
        "Always 1, with the running bridge's version and the commit it was built from (as `xbridge --version` prints them) as labels; marks a scrape target as an xbridge (alerts join up on it).",
    ),
    // Replies (CRM -> X).
    counter(
        "xbridge_dms_sent_total",
        &["channel"],
        "DMs sent to X (one per part of a reply split into several DMs), by channel.",
    ),
    counter(
        "xbridge_dms_failed_total",
        &["channel", "reason"],
        "Replies that failed for good (a message.failed event was published), by channel and reason (retries_exhausted, credits_exhausted, invalid_message, unknown_channel, recipient_refuses, unauthorized, missing_permission, ...); channel=\"unknown\" for a channel the bridge does not serve.",
    ),
    counter(
        "xbridge_dead_letters_total",
        &["channel", "reason"],
        "Replies published to the dead-letter exchange, by channel and reason (same values as xbridge_dms_failed_total).",
    ),
    gauge(
        "xbridge_dead_letter_queue_depth",
        &[],
        "Messages waiting in the dead-letter queue for an operator to replay or discard; sampled after each park or dead letter and every 15 s.",
    ),
    gauge(
        "xbridge_delay_queue_depth",
        &["delay"],
        "Replies parked in a delay queue for a later try, by delay (one of outbound.retry.delays, e.g. \"30s\"); sampled like the dead-letter queue depth.",
    ),
    counter(
        "xbridge_retries_total",
        &["channel"],
        "Transient send failures (timeouts, 5xx, rate limits) that led to another try, by channel.",
    ),
    counter(
        "xbridge_reply_headers_dropped_total",
        &[],
        "AMQP headers of CRM replies dropped because they did not fit in one frame beside the bridge's own when the reply was republished (retried or dead-lettered).",
    ),
    // Customers' DMs (X -> CRM).
    counter(
        "xbridge_dms_received_total",
        &["channel", "via", "type"],
        "DM events published to the CRM, by channel, route (via: webhook, poll) and type (message.received, message.echo).",
    ),
    gauge(
        "xbridge_last_poll_success_timestamp_seconds",
        &["channel"],
        "Unix time of the channel's last successful poll of GET /2/dm_events by this process; time() minus it (max over replicas) is the poll lag. Polled channels only, from their first successful poll.",
    ),
    counter(
        "xbridge_dm_events_read_total",
        &["channel"],
        "DM events read from GET /2/dm_events by polling, by channel (X bills each one read).",
    ),
    counter(
        "xbridge_poll_errors_total",
        &["channel"],
        "Polls of GET /2/dm_events that failed, by channel.",
    ),
    gauge(
        "xbridge_poll_lease_held",
        &["channel"],
        "1 while this process holds the channel's poll lease (it is the one polling X), else 0; summed over replicas it is 1 for each polled channel. Polled channels only.",
    ),
    gauge(
        "xbridge_stream_apps_held",
        &[],
        "X Apps whose activity stream this process holds (inbound = \"stream\", one lease per App); summed over replicas it is the number of Apps with stream channels.",
    ),
    counter(
        "xbridge_stream_connects_total",
        &[],
        "Activity stream connections opened.",
    ),
    counter(
        "xbridge_stream_disconnects_total",
        &[],
        "Activity stream connections that ended: cut by X, stalled, or a line not delivered; each is followed by a reconnection with a backfill.",
    ),
    counter(
        "xbridge_stream_connect_failures_total",
        &[],
        "Activity stream connections refused or failed.",
    ),
    counter(
        "xbridge_stream_events_total",
        &[],
        "Activity stream event lines delivered (published, or found delivered already).",
    ),
    counter(
        "xbridge_stream_lines_skipped_total",
        &[],
        "Activity stream lines skipped: over 256 KiB, or not an X event.",
    ),
    counter(
        "xbridge_stream_backfill_gaps_total",
        &[],
        "Reconnections after more than X's 5-minute backfill: X did not replay older events; the bridge reads the stream channels' DMs back to the gap's start instead.",
    ),
    gauge(
        "xbridge_replicas_live",
        &[],
        "Replicas this one saw live in the shared state store at its last heartbeat, itself included (1 with the embedded store).",
    ),
    gauge(
        "xbridge_channels_served",
        &[],
        "Channels this replica serves (consumes the reply queue of, polls): its share of the channels served, once the replica that held each let it go.",
    ),
    gauge(
        "xbridge_channel_served",
        &["channel"],
        "1 on the replica whose share the channel is (it consumes the channel's replies and polls it), else 0; summed over replicas it is 1 for each channel.",
    ),
    gauge(
        "xbridge_reply_consumers",
        &[],
        "Reply queues this process consumes now, those still stopping included.",
    ),
    counter(
        "xbridge_webhook_signature_failures_total",
        &["channel"],
        "Webhook POSTs refused because their signature did not verify, by channel (the URL's).",
    ),
    counter(
        "xbridge_webhook_requests_refused_total",
        &["reason"],
        "Webhook requests refused before reaching a channel, by reason (unknown_channel, too_large, no_body_memory, unreadable_body, bad_crc_token, bad_signature).",
    ),
    counter(
        "xbridge_webhook_unknown_account_total",
        &["channel"],
        "Webhook events for an X account no configured channel serves, kept in the dead-letter queue, by the channel whose URL received them.",
    ),
    counter(
        "xbridge_webhook_revalidations_total",
        &["channel", "outcome"],
        "Requests to X to revalidate a webhook X marked invalid, by channel and outcome (revalidated, failed).",
    ),
    counter(
        "xbridge_media_proxy_requests_total",
        &["channel", "outcome"],
        "Requests to the media proxy, by channel and outcome (ok, invalid, expired, origin_refused, not_dm_media, unknown_channel, timeout, x_error, unreachable, too_large, upstream_cut, client_gone).",
    ),
    // Channels, broker and store.
    gauge(
        "xbridge_channel_state",
        &["channel", "state"],
        "1 for the channel's current state, else 0; state: ok, rate_limited, credits_exhausted, unauthorized, missing_permission, webhook_invalid, polling_paused, paused, removed, broker_refused.",
    ),
    gauge(
        "xbridge_rabbitmq_connected",
        &["side"],
        "1 while that side (inbound, outbound) has a live RabbitMQ connection with its topology declared, else 0.",
    ),
    gauge(
        "xbridge_state_store_writable",
        &[],
        "1 while the state store (embedded file or PostgreSQL) can write, else 0; nothing is sent or published while it is 0.",
    ),
    counter(
        "xbridge_state_store_write_failures_total",
        &[],
        "Writes to the state store that failed (a full disk, PostgreSQL unreachable, ...).",
    ),
    counter(
        "xbridge_state_pruned_total",
        &["table"],
        "Records the state store pruned as older than state.retention, by table (sent_replies, sent_reply_parts, send_intents, own_sends, delivered_events).",
    ),
    gauge(
        "xbridge_runtime_alive_tasks",
        &[],
        "Tasks alive in the bridge's async runtime when /metrics was rendered (tokio's num_alive_tasks); flat over time with a steady set of channels, so growth after channels are removed is a leak.",
    ),
    // X's API.
    counter(
        "xbridge_x_requests_total",
        &["endpoint", "status"],
        "Requests to X's API, by endpoint (dm_send, dm_events, media, media_upload_*, ...) and status (the HTTP status, timeout or connection_error).",
    ),
    Metric {
        name: "xbridge_x_request_duration_seconds",
        kind: Kind::Histogram,
        labels: &["endpoint"],
        help: "Duration of requests to X's API in seconds, by endpoint (as xbridge_x_requests_total).",
    },
    // The bridge's HTTP servers.
    gauge(
        "xbridge_http_connections",
        &["server"],
        "Open connections, by server (webhook: X's webhook and the media proxy; ops: health and metrics).",
    ),
    counter(
        "xbridge_http_accept_errors_total",
        &["server", "kind"],
        "Connections that failed before they were accepted, by server and kind (out_of_files, out_of_memory, connection, other).",
    ),
    counter(
        "xbridge_http_stalled_connections_total",
        &["server", "stage"],
        "Connections closed because the client stalled, by server and stage (headers: sent no request headers in time; response: read nothing of the response in time).",
    ),
];

/// Looks a metric up by name.
pub fn find(name: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|metric| metric.name == name)
}

/// Gives every metric its help text in the current recorder (call it with
/// the recorder that renders `/metrics`, before anything is recorded, so
/// each `# TYPE` line comes with its `# HELP`).
pub fn describe() {
    for metric in METRICS {
        match metric.kind {
            Kind::Counter => metrics::describe_counter!(metric.name, metric.help),
            Kind::Gauge => metrics::describe_gauge!(metric.name, metric.help),
            Kind::Histogram => metrics::describe_histogram!(metric.name, metric.help),
        }
    }
}
