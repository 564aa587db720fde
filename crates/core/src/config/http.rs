//! `[http]`: timeouts and limits of both HTTP servers.

use std::time::Duration;

use serde::Deserialize;

/// Timeouts and limits of the bridge's two HTTP servers (`[http]`): X's
/// webhook with the media proxy (`inbound.listen`), and `/healthz`, `/readyz`
/// and `/metrics` (`telemetry.listen`). Anyone who can reach a port can open
/// connections and stall them; these bounds make a stalled client cost one
/// connection slot for a while, never the server (see `xbridge_core::server`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// How long a client has to send a request's headers, counted from when
    /// the connection opens or the previous response ends; so it is also how
    /// long an idle keep-alive connection is kept.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// The longest pause while a request's body arrives.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Bound on a request from its headers to the response's headers (body
    /// read and handling included); a media stream already under way is not
    /// cut by it. Past it the client gets 408.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The longest a response may wait to be written because the client reads
    /// nothing (a hung consumer, or requests pipelined and never read). Then
    /// the connection is closed. A slow reader that reads at all is not cut.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Connections each server holds at once. When full, it accepts no more
    /// until one closes: new ones wait in the kernel's listen queue instead
    /// of being accepted and failed.
    pub max_connections: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    }
}

/// Most connections a server may be configured to hold: each is a file
/// descriptor and a few kilobytes of buffers.
const MAX_HTTP_CONNECTIONS: usize = 65_536;

/// Validates `[http]`, with `media_timeout` (`inbound.media.timeout`), which
/// must end before the request timeout would answer for it.
pub(super) fn validate(http: &HttpSettings, media_timeout: Duration, errors: &mut Vec<String>) {
    for (key, value) in [
        ("header_read_timeout", http.header_read_timeout),
        ("body_read_timeout", http.body_read_timeout),
        ("request_timeout", http.request_timeout),
        ("write_timeout", http.write_timeout),
    ] {
        if value.is_zero() {
            errors.push(format!("http.{key}: must be greater than zero"));
        }
    }
    if http.request_timeout <= media_timeout {
        errors.push(
            "http.request_timeout: must be longer than inbound.media.timeout (X's answer to a media download must come before the request times out)"
                .into(),
        );
    }
    if !(1..=MAX_HTTP_CONNECTIONS).contains(&http.max_connections) {
        errors.push(format!(
            "http.max_connections: must be 1 to {MAX_HTTP_CONNECTIONS}"
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::{Settings, VALID};

    #[test]
    fn http_limits_have_defaults_and_bad_ones_name_their_field() {
        let defaults = Settings::from_toml(VALID).unwrap().http;
        assert_eq!(defaults.header_read_timeout, Duration::from_secs(10));
        assert_eq!(defaults.body_read_timeout, Duration::from_secs(10));
        assert_eq!(defaults.request_timeout, Duration::from_secs(60));
        assert_eq!(defaults.write_timeout, Duration::from_secs(10));
        assert_eq!(defaults.max_connections, 1024);

        let toml = format!(
            "{VALID}\n[http]\nheader_read_timeout = \"2s\"\nbody_read_timeout = \"3s\"\nrequest_timeout = \"40s\"\nwrite_timeout = \"5s\"\nmax_connections = 10\n"
        );
        let http = Settings::from_toml(&toml).unwrap().http;
        assert_eq!(http.write_timeout, Duration::from_secs(5));
        assert_eq!(http.header_read_timeout, Duration::from_secs(2));
        assert_eq!(http.body_read_timeout, Duration::from_secs(3));
        assert_eq!(http.request_timeout, Duration::from_secs(40));
        assert_eq!(http.max_connections, 10);

        let toml = format!(
            "{VALID}\n[http]\nheader_read_timeout = \"0s\"\nwrite_timeout = \"0s\"\nrequest_timeout = \"20s\"\nmax_connections = 0\n"
        );
        let err = Settings::from_toml(&toml).unwrap_err().to_string();
        for expected in [
            "http.header_read_timeout: must be greater than zero",
            "http.write_timeout: must be greater than zero",
            "http.request_timeout: must be longer than inbound.media.timeout",
            "http.max_connections: must be 1 to 65536",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
    }
}
