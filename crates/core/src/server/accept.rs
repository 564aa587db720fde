//! What a server does when `accept` fails. Two kinds of failure come out of
//! it: one pending connection's own trouble (it was reset before it was
//! taken), after which the next can be taken at once; and the process or the
//! system running out of something (open files, memory), which the next
//! accept would hit again at once. Retrying the second kind in a loop spins a
//! core and writes a log line per turn, so it pauses, growing from 10 ms to
//! 1 s, and its log lines are at most one a minute, each saying how many
//! failures it stands for.

use std::io;
use std::time::{Duration, Instant};

use backon::BackoffBuilder as _;

/// What to do after a failed accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptFate {
    /// One connection's trouble: take the next at once.
    Next,
    /// Out of a resource, or an error not known to be harmless: pause, then
    /// try again (connections wait in the listen queue meanwhile).
    Pause,
}

/// The fate of an accept that failed with `error`.
pub(crate) fn accept_fate(error: &io::Error) -> AcceptFate {
    use nix::errno::Errno;
    match error.raw_os_error().map(Errno::from_raw) {
        // Linux hands a pending connection's network errors to accept.
        Some(
            Errno::ECONNABORTED
            | Errno::ECONNRESET
            | Errno::EPROTO
            | Errno::EPERM
            | Errno::ENETDOWN
            | Errno::ENETUNREACH
            | Errno::EHOSTDOWN
            | Errno::EHOSTUNREACH
            | Errno::ENOPROTOOPT
            | Errno::EOPNOTSUPP,
        ) => AcceptFate::Next,
        // EMFILE, ENFILE, ENOBUFS, ENOMEM, and anything else.
        _ => AcceptFate::Pause,
    }
}

/// The label of `error` in `xbridge_http_accept_errors_total`.
fn kind(error: &io::Error) -> &'static str {
    use nix::errno::Errno;
    match error.raw_os_error().map(Errno::from_raw) {
        Some(Errno::EMFILE | Errno::ENFILE) => "out_of_files",
        Some(Errno::ENOBUFS | Errno::ENOMEM) => "out_of_memory",
        _ if accept_fate(error) == AcceptFate::Next => "connection",
        _ => "other",
    }
}

/// How often a streak of failed accepts is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// One server's failed accepts: the pause before the next try, and the log.
pub(crate) struct AcceptTrouble {
    server: &'static str,
    pauses: backon::ExponentialBackoff,
    log: LogBudget,
}

impl AcceptTrouble {
    pub(crate) fn new(server: &'static str) -> AcceptTrouble {
        AcceptTrouble {
            server,
            pauses: pauses(),
            log: LogBudget::new(LOG_EVERY),
        }
    }

    /// Counts and (within the log budget) logs `error`; how long to wait
    /// before the next accept.
    pub(crate) fn failed(&mut self, error: &io::Error) -> Duration {
        let server = self.server;
        let kind = kind(error);
        metrics::counter!("xbridge_http_accept_errors_total", "server" => server, "kind" => kind)
            .increment(1);
        let fate = accept_fate(error);
        let pause = match fate {
            AcceptFate::Next => Duration::ZERO,
            AcceptFate::Pause => self.pauses.next().unwrap_or(MAX_PAUSE),
        };
        if let Some(not_logged) = self.log.take(Instant::now()) {
            match fate {
                AcceptFate::Next => tracing::debug!(
                    server, %error, kind, not_logged, "a connection failed before it was accepted"
                ),
                AcceptFate::Pause => tracing::warn!(
                    server,
                    %error,
                    kind,
                    not_logged,
                    pause_ms = pause.as_millis() as u64,
                    "cannot accept connections; pausing (logged at most once a minute)"
                ),
            }
        }
        pause
    }

    /// A connection was accepted: the next failure starts from a short pause.
    pub(crate) fn cleared(&mut self) {
        self.pauses = pauses();
    }
}

/// Longest pause between accepts while they fail.
const MAX_PAUSE: Duration = Duration::from_secs(1);

fn pauses() -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(10))
        .with_max_delay(MAX_PAUSE)
        .without_max_times()
        .build()
}

/// At most one log line per `every` for a stream of like events; each line
/// says how many were not logged since the last.
#[derive(Debug)]
pub(crate) struct LogBudget {
    every: Duration,
    last: Option<Instant>,
    not_logged: u64,
}

impl LogBudget {
    pub(crate) fn new(every: Duration) -> LogBudget {
        LogBudget {
            every,
            last: None,
            not_logged: 0,
        }
    }

    /// Whether to log an event happening at `now`: `Some(n)` with the `n`
    /// events not logged since the last line, or `None` (it is counted).
    pub(crate) fn take(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.not_logged += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.not_logged))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::errno::Errno;

    fn os(errno: Errno) -> io::Error {
        io::Error::from_raw_os_error(errno as i32)
    }

    #[test]
    fn running_out_of_files_or_memory_pauses_and_a_broken_connection_does_not() {
        for errno in [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM] {
            assert_eq!(accept_fate(&os(errno)), AcceptFate::Pause, "{errno}");
        }
        for errno in [Errno::ECONNABORTED, Errno::ECONNRESET, Errno::EPROTO] {
            assert_eq!(accept_fate(&os(errno)), AcceptFate::Next, "{errno}");
        }
        // Unknown errors pause: a loop must never spin on them.
        assert_eq!(accept_fate(&os(Errno::EBADF)), AcceptFate::Pause);
        assert_eq!(
            accept_fate(&io::Error::other("no errno")),
            AcceptFate::Pause
        );
        assert_eq!(kind(&os(Errno::EMFILE)), "out_of_files");
        assert_eq!(kind(&os(Errno::ENFILE)), "out_of_files");
        assert_eq!(kind(&os(Errno::ENOMEM)), "out_of_memory");
        assert_eq!(kind(&os(Errno::ECONNABORTED)), "connection");
        assert_eq!(kind(&os(Errno::EBADF)), "other");
    }

    #[test]
    fn pauses_grow_to_a_second_and_start_over_after_an_accept() {
        let mut trouble = AcceptTrouble::new("test");
        let emfile = os(Errno::EMFILE);
        let pauses: Vec<Duration> = (0..12).map(|_| trouble.failed(&emfile)).collect();
        assert!(pauses.iter().all(|p| !p.is_zero() && *p <= MAX_PAUSE));
        assert!(pauses[0] < pauses[5], "{pauses:?}");
        assert_eq!(pauses[11], MAX_PAUSE);
        trouble.cleared();
        assert!(trouble.failed(&emfile) < MAX_PAUSE);
        assert_eq!(trouble.failed(&os(Errno::ECONNRESET)), Duration::ZERO);
    }

    #[test]
    fn a_streak_of_failures_is_one_line_a_minute_saying_how_many_it_stands_for() {
        let start = Instant::now();
        let mut budget = LogBudget::new(Duration::from_secs(60));
        assert_eq!(budget.take(start), Some(0));
        for second in 1..60 {
            assert_eq!(budget.take(start + Duration::from_secs(second)), None);
        }
        assert_eq!(budget.take(start + Duration::from_secs(60)), Some(59));
        assert_eq!(budget.take(start + Duration::from_secs(61)), None);
        assert_eq!(budget.take(start + Duration::from_secs(200)), Some(1));
    }
}
