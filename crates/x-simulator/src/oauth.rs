//! OAuth 1.0a HMAC-SHA1 signatures, written from X's documentation (README §7) independently of
//! the bridge's client, so a signing bug there shows up as a 401 here instead of being mirrored.
//!
//! The functions are public so tools and tests can talk to the simulator without the real client;
//! the bridge itself must keep signing with its own code.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha1::Sha1;
use url::Url;

use crate::accounts::Account;

/// RFC 3986 unreserved characters are the only ones OAuth leaves unescaped.
const OAUTH_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes as OAuth 1.0a demands: every byte outside `A-Z a-z 0-9 - . _ ~` becomes
/// `%XX` with uppercase hex, and a space is `%20`, never `+`.
pub fn percent_encode(text: &str) -> String {
    utf8_percent_encode(text, OAUTH_UNRESERVED).to_string()
}

/// The "base string URI": `scheme://host[:port]/path`, lowercase scheme and host, default port
/// dropped, no query, as the client addressed the server.
pub fn base_string_uri(scheme: &str, host_and_port: &str, path: &str) -> String {
    let scheme = scheme.to_ascii_lowercase();
    let host_and_port = host_and_port.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => Some(":80"),
        "https" => Some(":443"),
        _ => None,
    };
    let host = default_port
        .and_then(|port| host_and_port.strip_suffix(port))
        .unwrap_or(&host_and_port);
    format!("{scheme}://{host}{path}")
}

/// The signature base string: `METHOD&pct(uri)&pct(k1=v1&k2=v2…)`, parameters (query, form body and
/// `oauth_*` except the signature, already decoded) encoded and sorted by key, then value.
pub fn signature_base_string(method: &str, base_uri: &str, params: &[(String, String)]) -> String {
    let mut encoded: Vec<(String, String)> = params
        .iter()
        .map(|(key, value)| (percent_encode(key), percent_encode(value)))
        .collect();
    encoded.sort();
    let parameter_string = encoded
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join("&");
    format!(
        "{}&{}&{}",
        method.to_ascii_uppercase(),
        percent_encode(base_uri),
        percent_encode(&parameter_string)
    )
}

fn signing_mac(consumer_secret: &str, token_secret: &str) -> Hmac<Sha1> {
    let key = format!(
        "{}&{}",
        percent_encode(consumer_secret),
        percent_encode(token_secret)
    );
    // HMAC takes keys of any length, so this cannot fail.
    Hmac::<Sha1>::new_from_slice(key.as_bytes()).expect("HMAC accepts keys of any length")
}

/// `base64(HMAC-SHA1(pct(consumer_secret)&pct(token_secret), base_string))`, before the header's
/// own percent-encoding.
pub fn signature(base_string: &str, consumer_secret: &str, token_secret: &str) -> String {
    let mut mac = signing_mac(consumer_secret, token_secret);
    mac.update(base_string.as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

/// Whether `claimed` (base64, as decoded from the header) is the signature of `base_string`,
/// compared in constant time so response timing leaks nothing about the right signature.
pub fn signature_matches(
    base_string: &str,
    consumer_secret: &str,
    token_secret: &str,
    claimed: &str,
) -> bool {
    let Ok(claimed) = BASE64.decode(claimed) else {
        return false;
    };
    let mut mac = signing_mac(consumer_secret, token_secret);
    mac.update(base_string.as_bytes());
    mac.verify_slice(&claimed).is_ok()
}

/// A signed `Authorization: OAuth …` header value for `method url` as `account`, with form-body
/// parameters if the body is `application/x-www-form-urlencoded` (JSON bodies are not signed).
///
/// Nonce and timestamp are parameters so tests can replay or age a request on purpose.
pub fn authorization_header(
    method: &str,
    url: &Url,
    form_params: &[(&str, &str)],
    account: &Account,
    nonce: &str,
    timestamp: i64,
) -> String {
    let timestamp = timestamp.to_string();
    let oauth_params = [
        ("oauth_consumer_key", account.consumer_key.as_str()),
        ("oauth_nonce", nonce),
        ("oauth_signature_method", "HMAC-SHA1"),
        ("oauth_timestamp", timestamp.as_str()),
        ("oauth_token", account.access_token.as_str()),
        ("oauth_version", "1.0"),
    ];
    let mut params: Vec<(String, String)> = url
        .query_pairs()
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    params.extend(
        form_params
            .iter()
            .chain(oauth_params.iter())
            .map(|(key, value)| (key.to_string(), value.to_string())),
    );
    let host_and_port = match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_string(),
        (None, _) => String::new(),
    };
    let base_uri = base_string_uri(url.scheme(), &host_and_port, url.path());
    let base_string = signature_base_string(method, &base_uri, &params);
    let signature = signature(
        &base_string,
        &account.consumer_secret,
        &account.access_token_secret,
    );
    let fields = oauth_params
        .iter()
        .map(|(key, value)| (*key, *value))
        .chain(std::iter::once(("oauth_signature", signature.as_str())))
        .map(|(key, value)| format!("{key}=\"{}\"", percent_encode(value)))
        .collect::<Vec<_>>()
        .join(", ");
    format!("OAuth {fields}")
}

/// The `oauth_*` fields of an `Authorization: OAuth …` header, percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OAuthHeader {
    /// Every field except `oauth_signature` and `realm`: exactly what goes into the base string.
    pub signed_params: Vec<(String, String)>,
    pub signature: String,
}

impl OAuthHeader {
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.signed_params
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }
}

/// Why an Authorization header could not even be read; each ends in a 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderError {
    NotOAuth,
    Malformed(String),
}

/// Parses `OAuth k="v", k2="v2"`, rejecting duplicates and anything that is not `key="value"`.
pub(crate) fn parse_authorization_header(value: &str) -> Result<OAuthHeader, HeaderError> {
    let value = value.trim_start();
    let Some((scheme, fields)) = value.split_once(' ') else {
        return Err(HeaderError::NotOAuth);
    };
    if !scheme.eq_ignore_ascii_case("OAuth") {
        return Err(HeaderError::NotOAuth);
    }
    let mut signed_params: Vec<(String, String)> = Vec::new();
    let mut signature = None;
    for field in fields.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let (key, quoted) = field
            .split_once('=')
            .ok_or_else(|| HeaderError::Malformed(format!("field without '=': {field}")))?;
        let raw_value = quoted
            .trim()
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or_else(|| HeaderError::Malformed(format!("unquoted value in: {field}")))?;
        let key = percent_decode(key.trim())?;
        let value = percent_decode(raw_value)?;
        if key == "oauth_signature" {
            if signature.replace(value).is_some() {
                return Err(HeaderError::Malformed("duplicate oauth_signature".into()));
            }
        } else if key != "realm" {
            if signed_params.iter().any(|(known, _)| *known == key) {
                return Err(HeaderError::Malformed(format!("duplicate {key}")));
            }
            signed_params.push((key, value));
        }
    }
    let signature = signature.ok_or_else(|| HeaderError::Malformed("no oauth_signature".into()))?;
    Ok(OAuthHeader {
        signed_params,
        signature,
    })
}

fn percent_decode(text: &str) -> Result<String, HeaderError> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| HeaderError::Malformed(format!("not UTF-8 once decoded: {text}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The documented example of README §7 (X's "Creating a signature" page).
    fn documented_example_params() -> Vec<(String, String)> {
        owned(&[
            ("include_entities", "true"),
            (
                "status",
                "Hello Ladies + Gentlemen, a signed OAuth request!",
            ),
            ("oauth_consumer_key", "xvz1evFS4wEEPTGEFPHBog"),
            ("oauth_nonce", "kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg"),
            ("oauth_signature_method", "HMAC-SHA1"),
            ("oauth_timestamp", "1318622958"),
            (
                "oauth_token",
                "370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb",
            ),
            ("oauth_version", "1.0"),
        ])
    }

    const EXAMPLE_CONSUMER_SECRET: &str = "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw";
    const EXAMPLE_TOKEN_SECRET: &str = "LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE";

    #[test]
    fn documented_test_vector_verifies_for_api_x_com() {
        let uri = base_string_uri("https", "api.x.com", "/1.1/statuses/update.json");
        let base = signature_base_string("POST", &uri, &documented_example_params());
        assert_eq!(base.matches('&').count(), 2, "{base}");
        assert_eq!(
            signature(&base, EXAMPLE_CONSUMER_SECRET, EXAMPLE_TOKEN_SECRET),
            "Ls93hJiZbQ3akF3HF3x1Bz8/zU4="
        );
        assert!(signature_matches(
            &base,
            EXAMPLE_CONSUMER_SECRET,
            EXAMPLE_TOKEN_SECRET,
            "Ls93hJiZbQ3akF3HF3x1Bz8/zU4="
        ));
        assert!(!signature_matches(
            &base,
            EXAMPLE_CONSUMER_SECRET,
            EXAMPLE_TOKEN_SECRET,
            "Ls93hJiZbQ3akF3HF3x1Bz8/zU5="
        ));
    }

    #[test]
    fn documented_test_vector_differs_for_api_twitter_com() {
        let uri = base_string_uri("https", "api.twitter.com", "/1.1/statuses/update.json");
        let base = signature_base_string("POST", &uri, &documented_example_params());
        assert_eq!(
            signature(&base, EXAMPLE_CONSUMER_SECRET, EXAMPLE_TOKEN_SECRET),
            "hCtSmYh+iHYCEqBWrE7C7hYmtUk="
        );
    }

    #[test]
    fn authorization_header_helper_reproduces_the_vector() {
        let account = Account {
            consumer_key: "xvz1evFS4wEEPTGEFPHBog".into(),
            consumer_secret: EXAMPLE_CONSUMER_SECRET.into(),
            access_token: "370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb".into(),
            access_token_secret: EXAMPLE_TOKEN_SECRET.into(),
            ..Account::generate("example")
        };
        let url =
            Url::parse("https://api.x.com/1.1/statuses/update.json?include_entities=true").unwrap();
        let header = authorization_header(
            "POST",
            &url,
            &[(
                "status",
                "Hello Ladies + Gentlemen, a signed OAuth request!",
            )],
            &account,
            "kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg",
            1318622958,
        );
        assert!(
            header.contains("oauth_signature=\"Ls93hJiZbQ3akF3HF3x1Bz8%2FzU4%3D\""),
            "{header}"
        );
        let parsed = parse_authorization_header(&header).unwrap();
        assert_eq!(parsed.signature, "Ls93hJiZbQ3akF3HF3x1Bz8/zU4=");
        assert_eq!(parsed.get("oauth_timestamp"), Some("1318622958"));
    }

    #[test]
    fn percent_encoding_follows_rfc_3986_with_uppercase_hex() {
        assert_eq!(
            percent_encode("Ladies + Gentlemen"),
            "Ladies%20%2B%20Gentlemen"
        );
        assert_eq!(percent_encode("☃"), "%E2%98%83");
        assert_eq!(
            percent_encode("An encoded string!"),
            "An%20encoded%20string%21"
        );
        assert_eq!(
            percent_encode("Dogs, Cats & Mice"),
            "Dogs%2C%20Cats%20%26%20Mice"
        );
        assert_eq!(percent_encode("a-b.c_d~e"), "a-b.c_d~e");
    }

    #[test]
    fn default_ports_drop_out_of_the_base_uri() {
        assert_eq!(
            base_string_uri("HTTP", "Example.COM:80", "/a"),
            "http://example.com/a"
        );
        assert_eq!(
            base_string_uri("http", "127.0.0.1:8081", "/a"),
            "http://127.0.0.1:8081/a"
        );
    }

    #[test]
    fn garbage_headers_are_errors_not_panics() {
        for garbage in [
            "",
            "OAuth",
            "Bearer abc",
            "OAuth oauth_signature",
            "OAuth oauth_signature=unquoted",
            "OAuth oauth_nonce=\"%FF\", oauth_signature=\"x\"",
            "OAuth oauth_nonce=\"a\", oauth_nonce=\"b\", oauth_signature=\"x\"",
            "OAuth oauth_nonce=\"a\"",
            "OAuth ,,,=\"",
            "OAuth \u{1F600}=\"\u{1F600}\"",
        ] {
            assert!(
                parse_authorization_header(garbage).is_err(),
                "accepted {garbage:?}"
            );
        }
    }
}
