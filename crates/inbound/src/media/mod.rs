//! The media of published DMs: X's media URLs need the channel's OAuth signature, which
//! the CRM must not hold, so the CRM gets signed URLs of the bridge instead.
//!
//! - [`links`]: makes and checks those signed URLs ([`links::MediaLinks`]).
//! - [`proxy`]: the endpoint that serves them: checks the URL, fetches the media from X
//!   with the channel's signature and streams it through, bounded in size and time.

pub mod links;
pub mod proxy;
