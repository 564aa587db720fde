//! Logging what unauthenticated clients send, bounded in size and in rate.
//!
//! Anyone who reaches the webhook's port can make the bridge log: a request for an
//! unknown channel, a bad signature, a media URL that does not check out. Logged as
//! they came, 2,000 requests naming a 16 KB channel wrote 31 MB of log in half a
//! second. So every log line fed by such input shows the value through [`shown`]
//! (at most [`SHOWN_CHARS`] characters, escaped to printable ASCII) and is written
//! only if its [`LogLimiter`] allows: the first `burst` lines of an interval are
//! written, later ones are counted, and the next line written after the interval
//! is preceded by one summary line with that count. Metrics still count every
//! request; only the log is thinned.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How many characters of an untrusted value a log line shows.
pub const SHOWN_CHARS: usize = 64;

/// `value` as a log line may show it: its first [`SHOWN_CHARS`] characters with
/// control and non-ASCII characters escaped (so nothing can fake a line break or
/// hide in the terminal), and how much more there was.
pub fn shown(value: &str) -> String {
    shown_within(value, SHOWN_CHARS)
}

/// [`shown`] with room for `max_chars` characters, for longer texts built from
/// outside input (a parser's complaint naming a field path).
pub fn shown_within(value: &str, max_chars: usize) -> String {
    let mut out: String = value
        .chars()
        .take(max_chars)
        .flat_map(char::escape_default)
        .collect();
    let kept: usize = value.chars().take(max_chars).map(char::len_utf8).sum();
    if kept < value.len() {
        out.push_str(&format!("…(+{} bytes)", value.len() - kept));
    }
    out
}

/// Whether one line may be written, as [`LogLimiter::check`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it; `suppressed_before` lines of the last interval were not written
    /// (say so first when it is not 0).
    Write {
        /// Lines suppressed since the last one written.
        suppressed_before: u64,
    },
    /// Do not write it; it is counted.
    Suppress,
}

#[derive(Debug, Default)]
struct Window {
    started: Option<Instant>,
    written: u32,
    suppressed: u64,
}

/// Lets the first `burst` lines of each `interval` through, for one kind of line.
#[derive(Debug)]
pub struct LogLimiter {
    what: &'static str,
    burst: u32,
    interval: Duration,
    window: Mutex<Window>,
}

impl LogLimiter {
    /// A limiter for lines about `what` (named in the summary line).
    pub fn new(what: &'static str, burst: u32, interval: Duration) -> LogLimiter {
        LogLimiter {
            what,
            burst,
            interval,
            window: Mutex::default(),
        }
    }

    /// The default for lines fed by unauthenticated requests: 5 a minute per kind,
    /// enough to diagnose a misconfiguration, far too few to fill a disk.
    pub fn for_requests(what: &'static str) -> LogLimiter {
        LogLimiter::new(what, 5, Duration::from_secs(60))
    }

    /// Whether a line may be written at `now`.
    pub fn check(&self, now: Instant) -> Verdict {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let mut suppressed_before = 0;
        if window
            .started
            .is_none_or(|started| now.saturating_duration_since(started) >= self.interval)
        {
            suppressed_before = std::mem::take(&mut window.suppressed);
            window.started = Some(now);
            window.written = 0;
        }
        if window.written < self.burst {
            window.written += 1;
            Verdict::Write { suppressed_before }
        } else {
            window.suppressed += 1;
            Verdict::Suppress
        }
    }

    /// Whether the caller may write its line now; writes the summary line of the
    /// interval before first, when lines were suppressed in it.
    pub fn allow(&self) -> bool {
        match self.check(Instant::now()) {
            Verdict::Write { suppressed_before } => {
                if suppressed_before > 0 {
                    tracing::warn!(
                        suppressed = suppressed_before,
                        what = self.what,
                        interval_secs = self.interval.as_secs(),
                        "log lines suppressed: more of these came than are logged per interval"
                    );
                }
                true
            }
            Verdict::Suppress => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_value_is_cut_and_escaped() {
        assert_eq!(shown("acme"), "acme");
        assert_eq!(shown("a\nb\u{202e}é"), "a\\nb\\u{202e}\\u{e9}");
        let long = "x".repeat(16 * 1024);
        let line = shown(&long);
        assert_eq!(
            line,
            format!("{}…(+{} bytes)", "x".repeat(64), 16 * 1024 - 64)
        );
        // Multi-byte characters are counted, not split.
        let wide = "é".repeat(100);
        assert!(shown(&wide).ends_with(&format!("…(+{} bytes)", 2 * 36)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_lines_of_an_interval_pass_then_one_summary_counts_the_rest() {
        let limiter = LogLimiter::new("tests", 3, Duration::from_secs(60));
        let at = |limiter: &LogLimiter| limiter.check(Instant::now());
        for _ in 0..3 {
            assert_eq!(
                at(&limiter),
                Verdict::Write {
                    suppressed_before: 0
                }
            );
        }
        for _ in 0..1000 {
            assert_eq!(at(&limiter), Verdict::Suppress);
        }
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(at(&limiter), Verdict::Suppress, "still the same interval");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            at(&limiter),
            Verdict::Write {
                suppressed_before: 1001
            }
        );
        assert_eq!(
            at(&limiter),
            Verdict::Write {
                suppressed_before: 0
            },
            "the count is reported once"
        );
        // A quiet interval reports nothing.
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(
            at(&limiter),
            Verdict::Write {
                suppressed_before: 0
            }
        );
    }
}
