//! The process's open-files limit. Every connection a server holds is a file
//! descriptor, as are the RabbitMQ and X connections and the state file;
//! systemd and Docker start processes with a soft limit of 1024 under a much
//! higher hard limit (524288 or 1048576), and past the soft limit every
//! accept fails. A process may raise its own soft limit up to the hard one,
//! so the bridge does that at startup.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// `RLIMIT_NOFILE` after [`raise_open_files_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The limit in force now.
    pub soft: u64,
    /// The most it could be raised to without privileges.
    pub hard: u64,
    /// The soft limit before, when it was raised.
    pub raised_from: Option<u64>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (when it is lower), so
/// the HTTP servers' connection caps are not cut short by a default of 1024.
pub fn raise_open_files_limit() -> nix::Result<OpenFiles> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= hard {
        return Ok(OpenFiles {
            soft,
            hard,
            raised_from: None,
        });
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(OpenFiles {
        soft: hard,
        hard,
        raised_from: Some(soft),
    })
}
