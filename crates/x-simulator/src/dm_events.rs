//! `GET /2/dm_events`: the account's DM history, newest first, paged with opaque tokens, with
//! X's field selection and expansions, its own rate-limit window and billing per event returned.

use std::collections::{BTreeSet, HashMap};

use axum::http::StatusCode;
use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Map, Value};

use crate::authorized::{Authorized, DmRead};
use crate::customers::{find_user, UserView};
use crate::problems;
use crate::reply::Reply;
use crate::state::{DmAttachment, DmEvent, Inner};

/// How long X keeps DM events for `GET /2/dm_events`.
pub const RETENTION_DAYS: i64 = 30;

/// `max_results` when the query does not say.
const DEFAULT_MAX_RESULTS: usize = 100;

const PARAMETERS: &[&str] = &[
    "dm_event.fields",
    "event_types",
    "expansions",
    "max_results",
    "media.fields",
    "pagination_token",
    "place.fields",
    "poll.fields",
    "post.fields",
    "tweet.fields",
    "user.fields",
];
const EVENT_FIELDS: &[&str] = &[
    "attachments",
    "created_at",
    "dm_conversation_id",
    "entities",
    "event_type",
    "id",
    "participant_ids",
    "referenced_tweets",
    "sender_id",
    "text",
];
const EXPANSIONS: &[&str] = &[
    "attachments.media_keys",
    "participant_ids",
    "referenced_posts",
    "referenced_tweets.id",
    "sender_id",
];
const EVENT_TYPES: &[&str] = &["MessageCreate", "ParticipantsJoin", "ParticipantsLeave"];

/// Which way a pagination token points from the event it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// `next_token`: the events older than it.
    Older,
    /// `previous_token`: the events newer than it.
    Newer,
}

/// The base32hex alphabet; X's tokens look like `18LAA581J5II7LA00C00ZZZZ`.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHIJKLMNOPQRSTUV";
const TOKEN_SUFFIX: &str = "ZZZZ";

fn checksum(direction: Direction, id: u64) -> u64 {
    let mut mixed = id
        ^ if direction == Direction::Older {
            0x5bd1_e995
        } else {
            0x1b87_3593
        };
    mixed = mixed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mixed >> 54) & 0x3ff
}

/// An opaque token: `1`, a direction letter, the event id in 13 base32hex digits, a 2-digit
/// check, `ZZZZ` — 21 characters of X's token alphabet.
fn encode_token(direction: Direction, id: u64) -> String {
    let mut token = String::from(match direction {
        Direction::Older => "18",
        Direction::Newer => "1B",
    });
    for shift in (0..13).rev() {
        token.push(char::from(ALPHABET[((id >> (shift * 5)) & 31) as usize]));
    }
    let check = checksum(direction, id);
    token.push(char::from(ALPHABET[(check >> 5) as usize]));
    token.push(char::from(ALPHABET[(check & 31) as usize]));
    token.push_str(TOKEN_SUFFIX);
    token
}

fn decode_token(token: &str) -> Option<(Direction, u64)> {
    let body = token.strip_suffix(TOKEN_SUFFIX)?;
    let (direction, digits) = match body.get(..2)? {
        "18" => (Direction::Older, &body[2..]),
        "1B" => (Direction::Newer, &body[2..]),
        _ => return None,
    };
    if digits.len() != 15 {
        return None;
    }
    let value = |c: u8| ALPHABET.iter().position(|&a| a == c).map(|v| v as u64);
    let mut id: u64 = 0;
    for (index, c) in digits.bytes().take(13).enumerate() {
        let v = value(c)?;
        // 13 digits hold 65 bits; the first may only carry the top bit of a u64.
        if index == 0 && v > 15 {
            return None;
        }
        id = (id << 5) | v;
    }
    let check = (value(digits.as_bytes()[13])? << 5) | value(digits.as_bytes()[14])?;
    (check == checksum(direction, id)).then_some((direction, id))
}

/// A parsed, valid query.
#[derive(Debug)]
struct ListQuery {
    max_results: usize,
    token: Option<(String, Direction, u64)>,
    event_types: Option<BTreeSet<String>>,
    fields: BTreeSet<String>,
    expansions: BTreeSet<String>,
    user_fields: BTreeSet<String>,
    media_fields: BTreeSet<String>,
}

fn invalid(message: String, parameter: &str, value: &str) -> String {
    problems::invalid_request(&message, Some((parameter, value)))
}

/// A comma-separated list whose items must each be one of `allowed` (`None`: any
/// `[a-z_.]+`), reported as X does.
fn list(name: &str, value: &str, allowed: Option<&[&str]>) -> Result<BTreeSet<String>, String> {
    let mut items = BTreeSet::new();
    for item in value.split(',') {
        let known = match allowed {
            Some(allowed) => allowed.contains(&item),
            None => {
                !item.is_empty()
                    && item
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.')
            }
        };
        if !known {
            let message = match allowed {
                Some(allowed) => format!(
                    "The `{name}` query parameter value [{item}] is not one of [{}]",
                    allowed.join(",")
                ),
                None => format!("The `{name}` query parameter value [{item}] is not valid"),
            };
            return Err(invalid(message, name, value));
        }
        items.insert(item.to_string());
    }
    Ok(items)
}

fn parse_query(query: Option<&str>) -> Result<ListQuery, String> {
    let seen = parameters(query)?;
    let set = |name: &str, allowed: Option<&[&str]>| -> Result<BTreeSet<String>, String> {
        seen.get(name)
            .map_or_else(|| Ok(BTreeSet::new()), |value| list(name, value, allowed))
    };
    Ok(ListQuery {
        max_results: max_results(&seen)?,
        token: pagination_token(&seen)?,
        event_types: seen
            .get("event_types")
            .map(|value| list("event_types", value, Some(EVENT_TYPES)))
            .transpose()?,
        fields: set("dm_event.fields", Some(EVENT_FIELDS))?,
        expansions: set("expansions", Some(EXPANSIONS))?,
        user_fields: set("user.fields", None)?,
        media_fields: set("media.fields", None)?,
    })
}

/// The query's parameters by name: each one X knows, at most once.
fn parameters(query: Option<&str>) -> Result<HashMap<String, String>, String> {
    let mut seen: HashMap<String, String> = HashMap::new();
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if !PARAMETERS.contains(&name.as_ref()) {
            return Err(invalid(
                format!(
                    "The query parameter [{name}] is not one of [{}]",
                    PARAMETERS.join(",")
                ),
                &name,
                &value,
            ));
        }
        if seen.contains_key(name.as_ref()) {
            return Err(invalid(
                format!("Duplicate parameters are not allowed: the `{name}` query parameter"),
                &name,
                &value,
            ));
        }
        seen.insert(name.into_owned(), value.into_owned());
    }
    Ok(seen)
}

/// `max_results`: 1 to 100, [`DEFAULT_MAX_RESULTS`] when absent.
fn max_results(seen: &HashMap<String, String>) -> Result<usize, String> {
    let Some(value) = seen.get("max_results") else {
        return Ok(DEFAULT_MAX_RESULTS);
    };
    match value.parse::<usize>() {
        Ok(n) if (1..=100).contains(&n) => Ok(n),
        _ => Err(invalid(
            format!("The `max_results` query parameter value [{value}] is not between 1 and 100"),
            "max_results",
            value,
        )),
    }
}

/// `pagination_token`, decoded: the token as sent, which way it leads and from which event.
fn pagination_token(
    seen: &HashMap<String, String>,
) -> Result<Option<(String, Direction, u64)>, String> {
    let Some(value) = seen.get("pagination_token") else {
        return Ok(None);
    };
    match decode_token(value) {
        Some((direction, id)) if value.len() >= 16 => Ok(Some((value.clone(), direction, id))),
        _ => Err(bad_token(value)),
    }
}

fn bad_token(value: &str) -> String {
    invalid(
        format!("The `pagination_token` query parameter value [{value}] is not a valid token"),
        "pagination_token",
        value,
    )
}

/// `GET /2/dm_events`: after the gate (credentials, the read window, the read faults), the
/// query (400), then the page, billed per event returned.
pub(crate) async fn list_events(caller: Authorized<DmRead>) -> Reply {
    let Authorized {
        state,
        account,
        now,
        reply,
        uri,
        ..
    } = caller;
    let mut guard = state.lock();
    let inner = &mut *guard;
    let user_id = account.user_id.as_str();
    let query = match parse_query(uri.query()) {
        Ok(query) => query,
        Err(problem) => return reply.answer(StatusCode::BAD_REQUEST, problem),
    };
    let events = visible_events(inner, user_id, now - Duration::days(RETENTION_DAYS), &query);
    let (start, end) = match page_bounds(inner, user_id, &events, &query) {
        Ok(bounds) => bounds,
        Err(problem) => return reply.answer(StatusCode::BAD_REQUEST, problem),
    };
    if start == end {
        return reply.answer(StatusCode::OK, r#"{"meta":{"result_count":0}}"#);
    }
    let body = render_page(inner, &events, (start, end), &query);
    bill(inner, user_id, (end - start) as u64);
    reply.answer(StatusCode::OK, body.to_string())
}

/// The account's events within retention and of the asked-for types, newest first.
fn visible_events<'a>(
    inner: &'a Inner,
    user_id: &str,
    cutoff: DateTime<Utc>,
    query: &ListQuery,
) -> Vec<&'a DmEvent> {
    let mut events: Vec<&DmEvent> = inner
        .events
        .iter()
        .filter(|event| event.involves(user_id) && event.created_at >= cutoff)
        .filter(|event| {
            query
                .event_types
                .as_ref()
                .is_none_or(|types| types.contains(&event.event_type))
        })
        .collect();
    events.sort_by_key(|event| std::cmp::Reverse(event.numeric_id()));
    events
}

/// Where the page starts and ends in `events`: the first `max_results`, or those strictly
/// older or newer than the token's event. A token naming no event of the account is 400.
fn page_bounds(
    inner: &Inner,
    user_id: &str,
    events: &[&DmEvent],
    query: &ListQuery,
) -> Result<(usize, usize), String> {
    let Some((token, direction, id)) = &query.token else {
        return Ok((0, query.max_results.min(events.len())));
    };
    // The token must name one of the account's events, as one X handed out would.
    if !inner
        .events
        .iter()
        .any(|e| e.involves(user_id) && e.numeric_id() == *id)
    {
        return Err(bad_token(token));
    }
    Ok(match direction {
        Direction::Older => {
            let start = events.partition_point(|e| e.numeric_id() >= *id);
            (start, (start + query.max_results).min(events.len()))
        }
        Direction::Newer => {
            let end = events.partition_point(|e| e.numeric_id() > *id);
            (end.saturating_sub(query.max_results), end)
        }
    })
}

/// The page's `data`, `includes` and `meta` (with the tokens to the older and newer pages).
fn render_page(
    inner: &Inner,
    events: &[&DmEvent],
    (start, end): (usize, usize),
    query: &ListQuery,
) -> Value {
    let page = &events[start..end];
    let mut meta = json!({ "result_count": page.len() });
    if end < events.len() {
        meta["next_token"] = json!(encode_token(
            Direction::Older,
            page[page.len() - 1].numeric_id()
        ));
    }
    if start > 0 {
        meta["previous_token"] = json!(encode_token(Direction::Newer, page[0].numeric_id()));
    }
    let mut body = json!({
        "data": page.iter().map(|event| render_event(event, query)).collect::<Vec<_>>(),
    });
    let includes = render_includes(inner, page, query);
    if !includes.is_empty() {
        body["includes"] = Value::Object(includes);
    }
    body["meta"] = meta;
    body
}

/// X bills "DM Event: Read" per event returned.
fn bill(inner: &mut Inner, user_id: &str, events: u64) {
    *inner
        .billed_dm_events
        .entry(user_id.to_string())
        .or_default() += events;
    inner.counters.dm_events_billed += events;
}

/// One event with X's default fields (`id`, `event_type`, `text`) plus those asked for; an
/// expansion brings the field it expands, as a client asking for it surely wants.
fn render_event(event: &DmEvent, query: &ListQuery) -> Value {
    let wants = |field: &str| query.fields.contains(field);
    let mut rendered = json!({
        "id": event.id,
        "event_type": event.event_type,
        "text": event.text,
    });
    if wants("created_at") {
        rendered["created_at"] = json!(event.created_at_string());
    }
    if wants("dm_conversation_id") {
        rendered["dm_conversation_id"] = json!(event.dm_conversation_id);
    }
    if wants("sender_id") || query.expansions.contains("sender_id") {
        rendered["sender_id"] = json!(event.sender_id);
    }
    if let Some(attachment) = &event.attachment {
        if wants("attachments") || query.expansions.contains("attachments.media_keys") {
            rendered["attachments"] = json!({ "media_keys": [attachment.media_key] });
        }
    }
    rendered
}

fn render_includes(inner: &Inner, page: &[&DmEvent], query: &ListQuery) -> Map<String, Value> {
    let mut includes = Map::new();
    if query.expansions.contains("sender_id") {
        let mut seen = BTreeSet::new();
        let users: Vec<Value> = page
            .iter()
            .filter(|event| seen.insert(event.sender_id.clone()))
            .filter_map(|event| find_user(&inner.accounts, &inner.customers, &event.sender_id))
            .map(|user| render_user(&user, &query.user_fields))
            .collect();
        if !users.is_empty() {
            includes.insert("users".into(), Value::Array(users));
        }
    }
    if query.expansions.contains("attachments.media_keys") {
        let media: Vec<Value> = page
            .iter()
            .filter_map(|event| event.attachment.as_ref())
            .map(|attachment| render_media(attachment, &query.media_fields))
            .collect();
        if !media.is_empty() {
            includes.insert("media".into(), Value::Array(media));
        }
    }
    includes
}

/// A v2 media object: `media_key` and `type`, plus the asked-for fields the media has.
fn render_media(attachment: &DmAttachment, fields: &BTreeSet<String>) -> Value {
    let wants = |field: &str| fields.contains(field);
    let mut rendered = json!({
        "media_key": attachment.media_key,
        "type": attachment.media_type.as_str(),
    });
    if wants("url") {
        rendered["url"] = json!(attachment.url);
    }
    if wants("preview_image_url") {
        if let Some(preview) = &attachment.preview_image_url {
            rendered["preview_image_url"] = json!(preview);
        }
    }
    if wants("variants") && !attachment.variants.is_empty() {
        rendered["variants"] = json!(attachment
            .variants
            .iter()
            .map(|v| json!({
                "bit_rate": v.bit_rate,
                "content_type": v.content_type,
                "url": v.url,
            }))
            .collect::<Vec<_>>());
    }
    if wants("width") {
        rendered["width"] = json!(attachment.width);
    }
    if wants("height") {
        rendered["height"] = json!(attachment.height);
    }
    if wants("duration_ms") {
        if let Some(duration) = attachment.duration_ms {
            rendered["duration_ms"] = json!(duration);
        }
    }
    rendered
}

/// A v2 user: `id`, `name`, `username`, plus the asked-for fields the simulator knows
/// (`profile_image_url`, `protected`, `verified`, `receives_your_dm`); others are left out.
pub(crate) fn render_user(user: &UserView, fields: &BTreeSet<String>) -> Value {
    let mut rendered = json!({ "id": user.id, "name": user.name, "username": user.username });
    for field in fields {
        match field.as_str() {
            "profile_image_url" => rendered[field] = json!(user.profile_image_url),
            "protected" | "verified" => rendered[field] = json!(false),
            "receives_your_dm" => rendered[field] = json!(true),
            _ => {}
        }
    }
    rendered
}

/// `user.fields` of a users lookup, validated like the DM read's.
pub(crate) fn user_fields(query: Option<&str>) -> Result<BTreeSet<String>, String> {
    let mut fields = BTreeSet::new();
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match name.as_ref() {
            "user.fields" => fields = list("user.fields", &value, None)?,
            "expansions" | "tweet.fields" | "post.fields" => {}
            other => {
                return Err(invalid(
                    format!(
                        "The query parameter [{other}] is not one of [expansions,post.fields,tweet.fields,user.fields]"
                    ),
                    other,
                    &value,
                ))
            }
        }
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        for id in [0u64, 1, 1_585_047_616_894_574_596, u64::MAX] {
            for direction in [Direction::Older, Direction::Newer] {
                let token = encode_token(direction, id);
                assert!(token.len() >= 16, "{token}");
                assert!(token
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()));
                assert_eq!(decode_token(&token), Some((direction, id)), "{token}");
            }
        }
        let token = encode_token(Direction::Older, 1_585_047_616_894_574_596);
        let mut tampered = token.clone().into_bytes();
        tampered[9] = if tampered[9] == b'0' { b'1' } else { b'0' };
        assert_eq!(decode_token(&String::from_utf8(tampered).unwrap()), None);
        for junk in ["", "ZZZZ", "18LAA581J5II7LA00C00ZZZZ", "not-a-token"] {
            assert_eq!(decode_token(junk), None, "{junk}");
        }
    }

    #[test]
    fn query_is_checked_like_x() {
        assert_eq!(parse_query(None).unwrap().max_results, 100);
        assert_eq!(parse_query(Some("max_results=1")).unwrap().max_results, 1);
        for bad in [
            "max_results=0",
            "max_results=101",
            "max_results=ten",
            "since_id=1",
            "max_results=5&max_results=6",
            "dm_event.fields=text,bogus",
            "expansions=author_id",
            "event_types=MessageDelete",
            "pagination_token=18LAA581J5II7LA00C00ZZZZ",
            "user.fields=",
        ] {
            let problem = parse_query(Some(bad)).expect_err(bad);
            let problem: Value = serde_json::from_str(&problem).unwrap();
            assert_eq!(problem["type"], problems::INVALID_REQUEST_TYPE, "{bad}");
            assert!(problem["errors"][0]["parameters"].is_object(), "{bad}");
        }
    }
}
