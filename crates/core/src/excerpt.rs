//! Outside input quoted in errors and logs, bounded.
//!
//! A refusal that quotes the value it refuses helps whoever sent it, but the value may be
//! of any size: a 100 KB "id" quoted whole would travel into a dead letter's headers (past
//! RabbitMQ's frame size), a status event and every log line about it. So a quote shows the
//! start of the value and says how long it was.

/// How many characters of a value a quote shows.
pub const QUOTED_CHARS: usize = 64;

/// `text` quoted as `{:?}` would, cut to [`QUOTED_CHARS`] characters; a cut quote ends
/// with `…` and gives the value's full length in bytes.
pub fn quoted(text: &str) -> String {
    match text.char_indices().nth(QUOTED_CHARS) {
        None => format!("{text:?}"),
        Some((end, _)) => format!("{:?}… ({} bytes)", &text[..end], text.len()),
    }
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
        let shown = quoted(&long);
        assert_eq!(
            shown,
            format!("{:?}… (2000 bytes)", "é".repeat(QUOTED_CHARS))
        );
    }
}
