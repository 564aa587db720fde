//! What the commands print for people, on standard output, written so that a
//! reader going away is not an error: `xbridge dlq list | head` must not panic
//! (Rust's `println!` does when the pipe is closed) nor fail.
//!
//! When stdout is a closed pipe (`EPIPE`), the rest of the output is dropped
//! quietly and the command finishes its work: a `dlq replay` or `purge` is not
//! left half done because its reader stopped reading, and it still gives back
//! the letters it held. The exit status stays what the work decides (0 for
//! success). Any other write error (a full disk behind a redirect) is said
//! once on stderr and makes the exit status 1, since the output is lost.

use std::io::{ErrorKind, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);
static FAILED: AtomicBool = AtomicBool::new(false);

/// Writes one line to stdout, unless stdout stopped taking output.
pub fn line(args: std::fmt::Arguments<'_>) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"));
    if let Err(error) = written {
        CLOSED.store(true, Ordering::Relaxed);
        if error.kind() != ErrorKind::BrokenPipe {
            FAILED.store(true, Ordering::Relaxed);
            eprintln!("xbridge: cannot write the output: {error}");
        }
    }
}

/// Whether output was lost for another reason than a reader that went away.
pub fn failed() -> bool {
    FAILED.load(Ordering::Relaxed)
}

/// `println!` for the commands' output: see the module.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}
