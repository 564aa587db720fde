//! X's webhook security: answering the CRC challenge and checking the
//! signature of every event POST, both keyed by the channel's consumer
//! secret (not the bearer or access token).
//!
//! The signature is checked over the raw body, in constant time, before the
//! body is parsed, so a forged request costs us no JSON parsing.

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
