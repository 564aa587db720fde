//! Polling `GET /2/dm_events`: the catch-up path for what the webhook missed, and the
//! only path for channels without a webhook.
//!
//! - [`poller`]: one poll of one channel ([`poller::poll_once`]), paging back to the
//!   stored cursor and publishing oldest first; [`poller::catch_up`], the same read back to
//!   a point in time without the cursor, for the activity stream's long gaps.
//! - `schedule`: the loop that polls a channel on its interval while this replica holds
//!   its lease, pausing while the account's credits are out.
//! - [`lease`]: the poll lease, so one replica polls a channel at a time.

pub mod lease;
pub mod poller;
pub(crate) mod schedule;
