//! X's webhook security: answering the CRC challenge and checking the
//! signature of every event POST, both keyed by the channel's consumer
//! secret (not the bearer or access token).
//!
//! The signature is checked over the raw body, in constant time, before the
//! body is parsed, so a forged request costs us no JSON parsing.
//!
//! X's CRC answer and its body signatures are the same HMAC under the same
//! secret, and anyone may ask for a CRC answer. Answering any `crc_token` would
//! sign any body for whoever asks: a forged DM, published as a customer's. So
//! only tokens shaped like X's are answered ([`is_crc_token`]): letters, digits
//! and base64 signs, none of which can make the `{` every webhook body starts
//! with.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// The header X signs event POSTs with.
pub const SIGNATURE_HEADER: &str = "x-twitter-webhooks-signature";

/// Why an event POST is refused before its body is read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature header.
    #[error("the request has no x-twitter-webhooks-signature header")]
    Missing,
    /// The header is not `sha256=<base64>`.
    #[error("the x-twitter-webhooks-signature header is malformed")]
    Malformed,
    /// The signature does not match the body.
    #[error("the x-twitter-webhooks-signature does not match the body")]
    Mismatch,
}

fn mac(consumer_secret: &SecretString) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(consumer_secret.expose_secret().as_bytes())
        .expect("HMAC takes keys of any length")
}

/// Longest `crc_token` answered. X's are a few dozen characters.
pub const MAX_CRC_TOKEN: usize = 256;

/// Whether `token` is shaped like the CRC tokens X sends (1 to
/// [`MAX_CRC_TOKEN`] characters of the base64 and base64url alphabets, `=`
/// included), so that its answer can never double as the signature of a webhook
/// body: those are JSON objects, and `{` is not among these characters.
pub fn is_crc_token(token: &str) -> bool {
    (1..=MAX_CRC_TOKEN).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_'))
}

/// The body of the answer to `GET ?crc_token=…`:
/// `sha256=` + base64(HMAC-SHA256(consumer secret, token)).
pub fn crc_response_token(consumer_secret: &SecretString, crc_token: &str) -> String {
    let mut mac = mac(consumer_secret);
    mac.update(crc_token.as_bytes());
    format!("sha256={}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// Checks an event POST's signature header against its raw body.
pub fn verify_signature(
    consumer_secret: &SecretString,
    body: &[u8],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let encoded = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed)?;
    let signature = STANDARD
        .decode(encoded)
        .map_err(|_| SignatureError::Malformed)?;
    let mut mac = mac(consumer_secret);
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&signature)
        .map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values computed independently, with Python's hmac module:
    // base64(hmac.new(secret, message, hashlib.sha256).digest()).
    const SECRET: &str = "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw";

    fn secret() -> SecretString {
        SecretString::from(SECRET)
    }

    fn fixture() -> Vec<u8> {
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/x-api/webhook_aaa_dm.json"
        ))
        .expect("fixture")
    }

    #[test]
    fn the_crc_answer_matches_an_independent_computation() {
        assert_eq!(
            crc_response_token(&secret(), "8f3ba2b1-1d87-4d5e-9f1b-0c2c4c1a7a5e"),
            "sha256=MosEQWJAvCCWOIKRBC6aYDNH4A7Xf/PiRiaANbd+3qI="
        );
    }

    #[test]
    fn only_tokens_shaped_like_xs_are_crc_tokens() {
        for token in [
            "8f3ba2b1-1d87-4d5e-9f1b-0c2c4c1a7a5e",
            "ZmY4MTk0ZTAtYTQ2Ni00MzQ3LWJmYjYtNzM5NjdkZDc5ZDQ1",
            "a+b/c=_-",
            &"A".repeat(MAX_CRC_TOKEN),
        ] {
            assert!(is_crc_token(token), "{token}");
        }
        let body = String::from_utf8(fixture()).unwrap();
        for token in [
            "",
            &"A".repeat(MAX_CRC_TOKEN + 1),
            body.as_str(),
            "{}",
            "a b",
            "a.b",
            "é",
        ] {
            assert!(!is_crc_token(token), "{token}");
        }
    }

    #[test]
    fn a_body_signed_by_x_is_accepted() {
        let header = "sha256=UxI5VQCQ3mj9W74QtbAd7Pp8wOgWdC/A3vMYL3yp92Q=";
        assert_eq!(
            verify_signature(&secret(), &fixture(), Some(header)),
            Ok(())
        );
    }

    #[test]
    fn missing_malformed_and_wrong_signatures_are_refused() {
        let body = fixture();
        assert_eq!(
            verify_signature(&secret(), &body, None),
            Err(SignatureError::Missing)
        );
        for header in [
            "UxI5VQCQ",
            "sha256=***",
            "sha1=UxI5VQCQ3mj9W74QtbAd7Pp8wOgWdC/A3vMYL3yp92Q=",
        ] {
            assert_eq!(
                verify_signature(&secret(), &body, Some(header)),
                Err(SignatureError::Malformed),
                "{header}"
            );
        }
        let good = "sha256=UxI5VQCQ3mj9W74QtbAd7Pp8wOgWdC/A3vMYL3yp92Q=";
        let mut tampered = body.clone();
        tampered[10] ^= 1;
        assert_eq!(
            verify_signature(&secret(), &tampered, Some(good)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(&SecretString::from("other-secret"), &body, Some(good)),
            Err(SignatureError::Mismatch)
        );
    }
}
