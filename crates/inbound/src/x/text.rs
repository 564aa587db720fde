//! Taking the attachment's link out of a DM's text.
//!
//! When a DM carries media, X appends a `https://t.co/…` link that stands for it
//! ("Here is the photo https://t.co/Mq6pVXPx1M"). The CRM gets the media as an
//! attachment, so the link would only be noise in the agent's view. Only that link is
//! removed: links the customer typed stay.

/// Removes the attachment's `link` from `text`.
///
/// Webhook bodies say where the link is (`entities.urls[].indices`, counted in
/// characters). The indices are used when the text at that place is the link; otherwise
/// (indices counted differently, e.g. in UTF-16 before an emoji) a trailing copy of the
/// link is removed. If the link is not found, the text is returned unchanged.
pub(crate) fn strip_indexed_link(
    text: &str,
    link: &str,
    indices: Option<(usize, usize)>,
) -> String {
    if let Some((start, end)) = indices {
        if let (Some(start), Some(end)) = (byte_offset(text, start), byte_offset(text, end)) {
            if start <= end && &text[start..end] == link {
                let (before, after) = (&text[..start], &text[end..]);
                return if after.trim().is_empty() {
                    before.trim_end().to_owned()
                } else {
                    format!("{before}{}", after.trim_start())
                };
            }
        }
    }
    match text.trim_end().strip_suffix(link) {
        Some(before) if !link.is_empty() => before.trim_end().to_owned(),
        _ => text.to_owned(),
    }
}

/// Removes a trailing `https://t.co/…` token, for v2 lookups, whose events say that
/// there is an attachment but not where its link is. Returns the text unchanged when it
/// does not end with such a token.
pub(crate) fn strip_trailing_tco(text: &str) -> String {
    let trimmed = text.trim_end();
    let (before, last) = match trimmed.rfind(char::is_whitespace) {
        Some(at) => (&trimmed[..at], trimmed[at..].trim_start()),
        None => ("", trimmed),
    };
    if is_tco_link(last) {
        before.trim_end().to_owned()
    } else {
        text.to_owned()
    }
}

fn is_tco_link(token: &str) -> bool {
    token
        .strip_prefix("https://t.co/")
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// The byte offset of the `chars`-th character, or of the end of `text`.
fn byte_offset(text: &str, chars: usize) -> Option<usize> {
    text.char_indices()
        .map(|(at, _)| at)
        .chain(std::iter::once(text.len()))
        .nth(chars)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINK: &str = "https://t.co/Mq6pVXPx1M";

    #[test]
    fn the_indexed_link_is_removed() {
        let text = "Here is the photo https://t.co/Mq6pVXPx1M";
        assert_eq!(
            strip_indexed_link(text, LINK, Some((18, 41))),
            "Here is the photo"
        );
    }

    #[test]
    fn indices_count_characters_not_bytes() {
        let text = "Voilà la photo https://t.co/Mq6pVXPx1M";
        assert_eq!(
            strip_indexed_link(text, LINK, Some((15, 38))),
            "Voilà la photo"
        );
    }

    #[test]
    fn indices_that_miss_fall_back_to_the_trailing_link() {
        // UTF-16 indices: the emoji counts twice, so they point one character too far.
        let text = "🙂 photo https://t.co/Mq6pVXPx1M";
        assert_eq!(strip_indexed_link(text, LINK, Some((9, 32))), "🙂 photo");
        assert_eq!(strip_indexed_link(text, LINK, None), "🙂 photo");
    }

    #[test]
    fn a_link_only_text_becomes_empty() {
        assert_eq!(strip_indexed_link(LINK, LINK, Some((0, 23))), "");
        assert_eq!(strip_trailing_tco(LINK), "");
    }

    #[test]
    fn other_links_and_out_of_range_indices_leave_the_text_alone() {
        let text = "see https://example.com";
        assert_eq!(strip_indexed_link(text, LINK, Some((4, 400))), text);
        assert_eq!(strip_indexed_link(text, "", None), text);
    }

    #[test]
    fn only_a_trailing_tco_token_is_removed_from_v2_texts() {
        assert_eq!(
            strip_trailing_tco("Hello, just you! https://t.co/AbC123"),
            "Hello, just you!"
        );
        assert_eq!(
            strip_trailing_tco("https://t.co/AbC123 is my link, and more"),
            "https://t.co/AbC123 is my link, and more"
        );
        assert_eq!(strip_trailing_tco("Hello"), "Hello");
        assert_eq!(strip_trailing_tco("see https://t.co/"), "see https://t.co/");
        assert_eq!(strip_trailing_tco(""), "");
    }
}
