//! Filling a gap of an App's activity stream that X's backfill cannot: one read of each
//! stream channel's DMs (`GET /2/dm_events`) back to the gap's start, with the poller's own
//! paging and delivery ([`poller::catch_up`]), so what the stream lost reaches the CRM
//! through the same delivered record, once.
//!
//! Only DMs: `GET /2/dm_events` keeps no typing or read events, and what X's backfill still
//! has comes again through the stream (dropped there if the catch-up delivered it).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::parts::Shared;
use crate::polling::poller::{self, snowflake_at, PollContext};

use super::Member;

/// How much earlier than the gap's start the read goes: X's ids carry X's clock, not ours.
const CLOCK_MARGIN: chrono::Duration = chrono::Duration::minutes(1);

/// What a catch-up reads with besides the members.
pub(super) struct CatchUp<'a> {
    pub(super) app: &'a str,
    pub(super) shared: &'a Shared,
    pub(super) publish_echoes: bool,
}

impl CatchUp<'_> {
    /// Reads each member's DMs back to `since` and delivers what the CRM lacks. The members
    /// that could not be caught up (logged), to try again at the next reconnection.
    pub(super) async fn run(
        &self,
        members: &BTreeMap<String, Member>,
        since: DateTime<Utc>,
    ) -> Vec<String> {
        let mut failed = Vec::new();
        for member in members.values() {
            let channel = member.settings.name.as_str();
            let ctx = self.poll_context(member);
            let from = snowflake_at(since - CLOCK_MARGIN);
            match poller::catch_up(&ctx, from).await {
                Ok(outcome) => tracing::info!(
                    app = self.app,
                    channel,
                    since = %since,
                    delivered = outcome.delivered,
                    pages = outcome.pages,
                    "activity stream gap caught up by reading the channel's DMs"
                ),
                Err(error) => {
                    tracing::error!(app = self.app, channel, since = %since, %error, "activity stream gap not caught up: DMs older than X's backfill may be missing until a later try succeeds");
                    failed.push(member.settings.name.clone());
                }
            }
        }
        failed
    }

    fn poll_context(&self, member: &Member) -> PollContext {
        let channel = &member.settings;
        PollContext {
            channel: channel.name.clone(),
            own_user_id: channel.user_id.clone().unwrap_or_default(),
            client: member.client.clone(),
            store: self.shared.store.clone(),
            sink: self.shared.sink.clone(),
            publish_echoes: self.publish_echoes,
            backfill: None,
            profiles: Some(member.profiles.clone()),
            media: Some(self.shared.media.clone()),
            in_flight: self.shared.in_flight.clone(),
        }
    }
}
