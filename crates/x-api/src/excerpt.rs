//! Outside input quoted in errors and logs, bounded.
//!
//! A refusal that quotes the value it refuses helps whoever sent it, but the value may be
//! of any size: a 100 KB "id" quoted whole would travel into a dead letter's headers (past
//! RabbitMQ's frame size), a status event and every log line about it. So a quote shows the
//! start of the value and says how long it was.

/// How many bytes of a value, escaped, a quote shows at most.
pub const QUOTED_BYTES: usize = 80;

/// `text` quoted and escaped as `{:?}` would, showing at most [`QUOTED_BYTES`] of it; a
/// cut quote ends with `…` and gives the value's full length in bytes. Bounded in bytes,
/// not characters: one control character takes up to ten once escaped.
pub fn quoted(text: &str) -> String {
    let mut shown = String::with_capacity(QUOTED_BYTES.min(text.len()) + 2);
    for c in text.chars() {
        let escaped = c.escape_debug();
        if shown.len() + escaped.len() > QUOTED_BYTES {
            return format!("\"{shown}\"… ({} bytes)", text.len());
        }
        shown.extend(escaped);
    }
    format!("\"{shown}\"")
}

/// The start of `text`, at most `max_bytes` bytes cut at a character boundary, ending
/// with `…` when cut: for texts shown as they are (X's error messages), not quoted.
/// Bounded in bytes, like [`quoted`], since the bounds that matter (a header, a frame, a
/// log line) are: 200 characters of emoji are 800 bytes.
pub fn cut(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_owned();
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_quoted_whole() {
        assert_eq!(quoted("12ab"), r#""12ab""#);
        assert_eq!(quoted("a\nb"), r#""a\nb""#);
    }

    #[test]
    fn long_values_show_their_start_and_length() {
        let long = "é".repeat(1000);
        assert_eq!(
            quoted(&long),
            format!("{:?}… (2000 bytes)", "é".repeat(QUOTED_BYTES / 2))
        );
        let controls = "\u{1}".repeat(100);
        let shown = quoted(&controls);
        assert!(shown.len() < QUOTED_BYTES + 20, "{shown}");
        assert!(shown.starts_with(r#""\u{1}"#), "{shown}");
    }

    #[test]
    fn texts_are_cut_at_a_character_within_their_bytes() {
        assert_eq!(cut("héllo", 3), "hé…");
        assert_eq!(cut("héllo", 2), "h…");
        assert_eq!(cut("hé", 3), "hé");
        // Found by the reconcile page's property test: 200 four-byte characters.
        let emoji = "🙂".repeat(200);
        assert!(cut(&emoji, 200).len() <= 200 + "…".len());
    }
}
