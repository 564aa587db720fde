//! The account's recent DM events as the lookup for unrecorded sends reads
//! them (see `reconcile`): a page of X's answer checked before it is
//! believed, what a sent part looks like among them, and the last read kept
//! for every lane of the channel. Pure, so the matching is tested alone.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::Deserialize;

use xbridge_x_api::{ConversationId, DmEventId, DmTarget, UserId, XError};

/// Clock skew allowed between the bridge's intent and X's `created_at`.
pub const SKEW: ChronoDuration = ChronoDuration::seconds(5);

/// A DM event as far as matching needs it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Candidate {
    /// X's id of the event.
    pub id: DmEventId,
    /// Who sent it.
    #[serde(default)]
    pub sender_id: UserId,
    /// Its text (X may append a `t.co` link standing for media).
    #[serde(default)]
    pub text: String,
    /// The conversation it is in.
    #[serde(default)]
    pub dm_conversation_id: ConversationId,
    /// When X created it.
    pub created_at: DateTime<Utc>,
    /// Its media, if any.
    #[serde(default)]
    pub attachments: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Page {
    #[serde(default)]
    pub(crate) data: Vec<Candidate>,
    #[serde(default)]
    pub(crate) meta: Meta,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Meta {
    pub(crate) next_token: Option<String>,
}

/// Reads one page of the lookup. A page that cannot be read, or whose events' ids or
/// next token are not X's, is a transient failure: the part stays ambiguous and the
/// lookup is tried again later, and no made-up id is ever recorded as a send.
pub(crate) fn read_page(body: &[u8]) -> Result<Page, XError> {
    let unreadable = |why: String| XError::Transient {
        status: Some(200),
        detail: format!("unreadable DM events page: {why}"),
    };
    let page: Page = serde_json::from_slice(body)
        .map_err(|e| unreadable(xbridge_core::excerpt::cut(&e.to_string(), 200)))?;
    if let Some(event) = page.data.iter().find(|event| !is_id(event.id.as_str())) {
        return Err(unreadable(format!(
            "event id {} is not an X id",
            xbridge_core::excerpt::quoted(event.id.as_str())
        )));
    }
    if let Some(token) = page.meta.next_token.as_deref() {
        if !xbridge_x_api::is_pagination_token(token) {
            return Err(unreadable(format!(
                "next_token {} is not an X pagination token",
                xbridge_core::excerpt::quoted(token)
            )));
        }
    }
    Ok(page)
}

fn is_id(id: &str) -> bool {
    (1..=19).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit())
}

/// What a sent part looked like, to recognise it on X.
#[derive(Debug, Clone)]
pub struct Sought<'a> {
    /// The account's own user id.
    pub own_user_id: UserId,
    /// Where the part was sent.
    pub target: &'a DmTarget,
    /// Its text.
    pub text: &'a str,
    /// Whether it carried an attachment.
    pub has_media: bool,
    /// When the send started.
    pub since: DateTime<Utc>,
}

/// Whether `event` could be the part described by `sought` (ignoring
/// whether another reply already claimed it).
pub fn matches(event: &Candidate, sought: &Sought<'_>) -> bool {
    if event.sender_id != sought.own_user_id || event.created_at < sought.since - SKEW {
        return false;
    }
    let in_conversation = match sought.target {
        DmTarget::Conversation(id) => event.dm_conversation_id == *id,
        DmTarget::Participant(user) => {
            let mut members = event.dm_conversation_id.as_str().split('-');
            let (a, b) = (members.next(), members.next());
            members.next().is_none()
                && matches!((a, b), (Some(a), Some(b))
                    if (a == user && b == sought.own_user_id) || (b == user && a == sought.own_user_id))
        }
    };
    if !in_conversation || event.attachments.is_some() != sought.has_media {
        return false;
    }
    // With media X may append the t.co link that stands for it.
    let text = event.text.trim_end();
    text == sought.text.trim_end()
        || (sought.has_media
            && text
                .strip_prefix(sought.text.trim_end())
                .is_some_and(|rest| rest.trim_start().starts_with("https://t.co/")))
}

/// The account's recent DM events as last read, newest first: after a crash
/// every lane with an ambiguous part looks at once, and X allows only a few
/// DM reads per window (15 per 15 minutes, shared with the poller), so one
/// read serves them all: each lane's read must come once its own send has
/// settled, and the lanes waiting say when theirs settle, so the first read
/// is taken late enough for the others due soon after (see
/// [`RecentEvents::read_at`]).
#[derive(Debug, Default)]
pub struct RecentEvents {
    read: Option<ReadEvents>,
    /// When the sends the waiting lanes look for settle.
    waiting: Vec<DateTime<Utc>>,
}

impl RecentEvents {
    /// A lane will look for a send that settles at `settled`.
    pub fn expect(&mut self, settled: DateTime<Utc>) {
        self.waiting.push(settled);
    }

    /// A lane that said [`RecentEvents::expect`] looks no more.
    pub fn forget(&mut self, settled: DateTime<Utc>) {
        if let Some(index) = self.waiting.iter().position(|t| *t == settled) {
            self.waiting.swap_remove(index);
        }
    }

    /// When to read for a lane whose send settles at `settled`: then, or as late
    /// as the latest of the other waiting lanes' within [`SKEW`] after it, so
    /// that one read covers them too.
    pub fn read_at(&self, settled: DateTime<Utc>) -> DateTime<Utc> {
        self.waiting
            .iter()
            .copied()
            .filter(|t| *t >= settled && *t <= settled + SKEW)
            .max()
            .unwrap_or(settled)
    }

    /// Whether the last read shows every DM a send started at `since` can have
    /// created: it reaches back before `since` and started once such a send had
    /// settled (see [`settled_at`]). A read taken earlier, even one taken after
    /// `since`, can miss a DM X created while the send was still in flight.
    pub fn covers(&self, since: DateTime<Utc>, settled: DateTime<Utc>) -> bool {
        self.read
            .as_ref()
            .is_some_and(|read| read.at >= settled && read.back_to <= since - SKEW)
    }

    /// Keeps `read` in place of the last one.
    pub fn keep(&mut self, read: ReadEvents) {
        self.read = Some(read);
    }

    /// The events of the last read, newest first (none before the first).
    pub fn events(&self) -> &[Candidate] {
        self.read.as_ref().map_or(&[], |read| &read.events)
    }
}

/// One read of the account's DM events.
#[derive(Debug)]
pub struct ReadEvents {
    /// When the read started: it shows every DM created before then.
    pub at: DateTime<Utc>,
    /// How far back it reaches (the oldest event read, or the start of time
    /// when X had no more).
    pub back_to: DateTime<Utc>,
    /// The events, newest first.
    pub events: Vec<Candidate>,
}

/// When a send that started at `since` (by this process's clock or, give or
/// take [`SKEW`], another replica's) has settled: X has created its DM or
/// never will, because the sender gave up on the request after
/// `request_timeout`. Until then a read of X can miss the DM, as when the
/// replica that sent it lost its broker connection, or died, mid-request.
pub fn settled_at(since: DateTime<Utc>, request_timeout: std::time::Duration) -> DateTime<Utc> {
    let timeout = ChronoDuration::from_std(request_timeout).unwrap_or(ChronoDuration::MAX);
    since
        .checked_add_signed(timeout)
        .and_then(|t| t.checked_add_signed(SKEW))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn event(text: &str, conversation: &str, created: &str) -> Candidate {
        Candidate {
            id: "1900000000000000001".into(),
            sender_id: "100".into(),
            text: text.into(),
            dm_conversation_id: conversation.into(),
            created_at: at(created),
            attachments: None,
        }
    }

    fn sought<'a>(target: &'a DmTarget, text: &'a str) -> Sought<'a> {
        Sought {
            own_user_id: "100".into(),
            target,
            text,
            has_media: false,
            since: at("2026-11-25T10:00:00Z"),
        }
    }

    #[test]
    fn the_same_text_from_us_in_the_conversation_after_the_intent_matches() {
        let to_user = DmTarget::Participant("42".into());
        let in_conversation = DmTarget::Conversation("42-100".into());
        let sent = event("Your order shipped", "42-100", "2026-11-25T10:00:01Z");
        assert!(matches(&sent, &sought(&to_user, "Your order shipped")));
        assert!(matches(
            &sent,
            &sought(&in_conversation, "Your order shipped")
        ));
        // Within the allowed clock skew before the intent.
        let early = event("Your order shipped", "42-100", "2026-11-25T09:59:57Z");
        assert!(matches(&early, &sought(&to_user, "Your order shipped")));
    }

    fn read(at_: &str, back_to: &str) -> RecentEvents {
        let mut recent = RecentEvents::default();
        recent.keep(ReadEvents {
            at: at(at_),
            back_to: at(back_to),
            events: Vec::new(),
        });
        recent
    }

    /// The double send seen when a replica took over from one killed mid-send:
    /// the survivor's read came after the intent but before X created the DM
    /// still in flight, and was trusted.
    #[test]
    fn a_read_covers_a_send_only_once_the_send_has_settled() {
        let since = at("2026-11-25T10:00:00Z");
        let settled = settled_at(since, std::time::Duration::from_secs(10));
        assert_eq!(settled, at("2026-11-25T10:00:15Z"));
        assert!(!RecentEvents::default().covers(since, settled));
        assert!(!read("2026-11-25T10:00:01Z", "2026-11-25T09:00:00Z").covers(since, settled));
        assert!(read("2026-11-25T10:00:15Z", "2026-11-25T09:00:00Z").covers(since, settled));
        assert!(
            !read("2026-11-25T10:01:00Z", "2026-11-25T09:59:58Z").covers(since, settled),
            "it must reach back before the intent, give or take the skew"
        );
        assert_eq!(
            settled_at(since, std::time::Duration::MAX),
            DateTime::<Utc>::MAX_UTC
        );
    }

    #[test]
    fn one_read_serves_the_lanes_whose_sends_settle_soon_after() {
        let mut recent = RecentEvents::default();
        let first = at("2026-11-25T10:00:15Z");
        assert_eq!(recent.read_at(first), first, "alone");
        recent.expect(first);
        recent.expect(at("2026-11-25T10:00:16Z"));
        recent.expect(at("2026-11-25T10:00:19Z"));
        recent.expect(at("2026-11-25T10:01:00Z"));
        assert_eq!(
            recent.read_at(first),
            at("2026-11-25T10:00:19Z"),
            "the latest within the skew, not one a minute later"
        );
        recent.forget(at("2026-11-25T10:00:19Z"));
        assert_eq!(recent.read_at(first), at("2026-11-25T10:00:16Z"));
    }

    #[test]
    fn anything_else_does_not_match() {
        let target = DmTarget::Participant("42".into());
        let s = sought(&target, "Your order shipped");
        let mut other_sender = event("Your order shipped", "42-100", "2026-11-25T10:00:01Z");
        other_sender.sender_id = "42".into();
        assert!(!matches(&other_sender, &s), "the customer's words");
        assert!(!matches(
            &event("Your order shipped", "43-100", "2026-11-25T10:00:01Z"),
            &s
        ));
        assert!(!matches(
            &event("Your order shipped!", "42-100", "2026-11-25T10:00:01Z"),
            &s
        ));
        assert!(
            !matches(
                &event("Your order shipped", "42-100", "2026-11-25T09:50:00Z"),
                &s
            ),
            "an older DM with the same words is an earlier reply"
        );
        let mut with_media = event("Your order shipped", "42-100", "2026-11-25T10:00:01Z");
        with_media.attachments = Some(serde_json::json!({"media_keys": ["3_1"]}));
        assert!(!matches(&with_media, &s));
    }

    /// Found by the property tests: serde's message quoted a wrong value whole, an event
    /// id of letters could be recorded as a send, and a next_token the client refuses
    /// was asked for.
    #[test]
    fn a_page_with_wrong_ids_or_tokens_is_unreadable_and_says_so_briefly() {
        let long = "x".repeat(100_000);
        let event = |id: &str| serde_json::json!({"id": id, "created_at": "2026-11-25T10:00:01Z", "sender_id": "100"});
        for body in [
            serde_json::json!({"data": long}),
            serde_json::json!({"data": [event("12a")]}),
            serde_json::json!({"data": [event(&long)]}),
            serde_json::json!({"data": [event("1")], "meta": {"next_token": "a b"}}),
        ] {
            let error = read_page(body.to_string().as_bytes()).unwrap_err();
            assert!(
                matches!(
                    error,
                    XError::Transient {
                        status: Some(200),
                        ..
                    }
                ),
                "{error:?}"
            );
            assert!(error.detail().len() < 400, "{}", error.detail().len());
        }
        let good = serde_json::json!({"data": [event("1")], "meta": {"next_token": "7140dibdnow9c7btw4b0zmpfdlmg5e6dohbthdfqbwcp2"}});
        assert_eq!(
            read_page(good.to_string().as_bytes()).unwrap().data.len(),
            1
        );
    }

    #[test]
    fn a_media_part_matches_with_the_link_x_appends() {
        let target = DmTarget::Participant("42".into());
        let mut part = event("https://t.co/abc", "42-100", "2026-11-25T10:00:01Z");
        part.attachments = Some(serde_json::json!({"media_keys": ["3_1"]}));
        let s = Sought {
            has_media: true,
            ..sought(&target, "")
        };
        assert!(matches(&part, &s));
    }
}
