//! Channel credentials encrypted at rest.
//!
//! The CRM hands the bridge each channel's five X credentials; the registry
//! keeps them in the state store so they survive restarts, and a copy of the
//! state file or a database dump must not give them away. So they are stored
//! only sealed with AES-256-GCM (an AEAD: a changed byte is refused, never
//! decrypted into something else) under a key derived from a secret the
//! operator provides (`state.credentials_key`).
//!
//! A sealed blob is `[format = 1][key id][12-byte random nonce][ciphertext][16-byte tag]`.
//! The channel's name, the format and the key id are the associated data: a
//! blob copied to another channel's row, or relabelled with another key id,
//! does not open. The key id is in the blob so a later key can be introduced
//! beside the old one and blobs re-sealed at leisure; today there is one key,
//! id 1.
//!
//! The key is HKDF-SHA256 (RFC 5869) of the operator's secret, with a fixed
//! salt and an info naming the purpose and key id. HKDF does no stretching:
//! from a passphrase, a dump would let anyone guess the key offline. So the
//! secret must be random key material, written as base64 (standard, padded
//! or not) or hex, of at least [`MIN_KEY_BYTES`] bytes (`openssl rand -base64
//! 48`); HKDF then only ties the key to this one use. Only the form is
//! checked: a long passphrase that happens to be valid base64 is not caught. The AEAD comes from `aws-lc-rs`,
//! the crypto library the TLS stack already builds (`ring` is in `Cargo.lock`
//! but not built). The secret stays in a `SecretString`; HKDF's output is
//! zeroized by aws-lc-rs and the key's context cleansed by AWS-LC when freed;
//! buffers here that held credentials in the clear are zeroized.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hkdf::{Salt, HKDF_SHA256};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};

/// The blob's first byte: how the rest is laid out.
const FORMAT: u8 = 1;
/// The id of the one key there is today.
const CURRENT_KEY_ID: u8 = 1;
/// The format byte and the key id.
const HEADER_LEN: usize = 2;
const TAG_LEN: usize = 16;
/// Fewest bytes of key material the operator's secret must decode to.
pub const MIN_KEY_BYTES: usize = 32;
/// HKDF's salt: fixed, since the secret itself is long and random.
const HKDF_SALT: &[u8] = b"xbridge state credentials";
/// The associated data's prefix, so no other use of the key could produce a
/// blob that opens here.
const AAD_PREFIX: &[u8] = b"xbridge channel credentials\0";
/// The key-check record's associated data's prefix: not a channel's.
const KEY_CHECK_AAD: &[u8] = b"xbridge credentials key check\0";
/// What the key-check record seals.
const KEY_CHECK_TEXT: &str = "xbridge credentials key check, format 1";

/// Why credentials could not be sealed or opened. Callers branch on it: a
/// missing key refuses a command, a blob that does not open marks the channel
/// broken. No variant carries any part of a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// No `state.credentials_key` is configured: credentials are not stored
    /// in the clear, so they are not stored at all.
    #[error("state.credentials_key is not set: channel credentials are stored only encrypted, so they cannot be stored")]
    NoKey,
    /// The secret is not random key material of at least [`MIN_KEY_BYTES`]
    /// bytes in base64 or hex. The message never shows the secret.
    #[error("state.credentials_key must be random key material of at least {MIN_KEY_BYTES} bytes, written as base64 or hex (make one with `openssl rand -base64 48`)")]
    WeakSecret,
    /// The blob is shorter than its header, nonce and tag, or of an unknown
    /// format.
    #[error("sealed credentials of channel {channel} are malformed ({reason})")]
    Malformed {
        /// The channel whose blob it is.
        channel: String,
        /// What is wrong with its layout.
        reason: &'static str,
    },
    /// The blob names a key this bridge does not have.
    #[error("sealed credentials of channel {channel} use key id {key_id}, which is not configured (this bridge has key id {CURRENT_KEY_ID})")]
    UnknownKey {
        /// The channel whose blob it is.
        channel: String,
        /// The key id in the blob.
        key_id: u8,
    },
    /// Authentication failed: the configured key is not the one the blob was
    /// sealed with, the blob belongs to another channel, or it was altered.
    #[error("sealed credentials of channel {channel} do not open: state.credentials_key is not the key they were sealed with, or the stored blob was altered or belongs to another channel")]
    Refused {
        /// The channel whose blob it is.
        channel: String,
    },
    /// The system's random source or the cipher failed.
    #[error("cannot seal credentials: {0}")]
    Crypto(&'static str),
}

/// The key channel credentials are sealed with, derived from the operator's
/// secret. Its `Debug` shows only the key id.
pub struct CredentialsKey {
    id: u8,
    key: LessSafeKey,
}

impl std::fmt::Debug for CredentialsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialsKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Credentials sealed for one channel: only [`CredentialsKey::seal`] makes
/// them, so the store cannot be handed credentials in the clear. `Debug`
/// shows only the length.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedCredentials(Vec<u8>);

impl std::fmt::Debug for SealedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedCredentials({} bytes)", self.0.len())
    }
}

impl SealedCredentials {
    /// The blob as stored.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A blob read back from the store; [`CredentialsKey::open`] checks it.
    /// Only the store decodes stored blobs.
    pub(crate) fn from_stored(bytes: Vec<u8>) -> SealedCredentials {
        SealedCredentials(bytes)
    }
}

impl CredentialsKey {
    /// Derives the key from the operator's secret (`state.credentials_key`),
    /// which must be key material in base64 or hex ([`SealError::WeakSecret`]
    /// otherwise).
    pub fn derive(secret: &SecretString) -> Result<CredentialsKey, SealError> {
        let material = key_material(secret.expose_secret()).ok_or(SealError::WeakSecret)?;
        let info = [
            b"xbridge credentials AES-256-GCM key id ".as_slice(),
            &[CURRENT_KEY_ID],
        ];
        let prk = Salt::new(HKDF_SHA256, HKDF_SALT).extract(&material);
        let okm = prk
            .expand(&info, &AES_256_GCM)
            .map_err(|_| SealError::Crypto("key derivation failed"))?;
        Ok(CredentialsKey {
            id: CURRENT_KEY_ID,
            key: LessSafeKey::new(UnboundKey::from(okm)),
        })
    }

    /// The key, or [`SealError::NoKey`] when none is configured: the one
    /// check before credentials are stored.
    pub fn required(key: Option<&CredentialsKey>) -> Result<&CredentialsKey, SealError> {
        key.ok_or(SealError::NoKey)
    }

    /// Seals `credentials` (any text: the registry stores its five X
    /// credentials as JSON) for `channel`, under a fresh random nonce.
    pub fn seal(
        &self,
        channel: &str,
        credentials: &SecretString,
    ) -> Result<SealedCredentials, SealError> {
        self.seal_for(AAD_PREFIX, channel, credentials)
    }

    /// Opens what [`CredentialsKey::seal`] sealed for `channel`.
    pub fn open(
        &self,
        channel: &str,
        sealed: &SealedCredentials,
    ) -> Result<SecretString, SealError> {
        self.open_for(AAD_PREFIX, channel, sealed)
    }

    /// The store's key-check record: a constant sealed with associated data
    /// of its own, so it opens only as a key check, never as a channel's
    /// credentials.
    pub(crate) fn seal_key_check(&self) -> Result<SealedCredentials, SealError> {
        self.seal_for(KEY_CHECK_AAD, "", &SecretString::from(KEY_CHECK_TEXT))
    }

    /// Whether `stored` is a key-check record sealed with this key.
    pub(crate) fn opens_key_check(&self, stored: &SealedCredentials) -> bool {
        self.open_for(KEY_CHECK_AAD, "", stored)
            .is_ok_and(|text| text.expose_secret() == KEY_CHECK_TEXT)
    }

    /// Seals `credentials` for `channel` under the associated data `prefix`.
    pub(crate) fn seal_for(
        &self,
        prefix: &[u8],
        channel: &str,
        credentials: &SecretString,
    ) -> Result<SealedCredentials, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Crypto("the system's random source failed"))?;
        let header = [FORMAT, self.id];
        let plain = credentials.expose_secret().as_bytes();
        let mut blob = Vec::with_capacity(HEADER_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        blob.extend_from_slice(&header);
        blob.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        let result = self.key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(associated_data(prefix, channel, header)),
            &mut sealed,
        );
        if result.is_err() {
            zero(&mut sealed);
            return Err(SealError::Crypto("encryption failed"));
        }
        blob.extend_from_slice(&sealed);
        Ok(SealedCredentials(blob))
    }

    /// Opens what [`CredentialsKey::seal_for`] sealed with the same `prefix`.
    pub(crate) fn open_for(
        &self,
        prefix: &[u8],
        channel: &str,
        sealed: &SealedCredentials,
    ) -> Result<SecretString, SealError> {
        let blob = sealed.as_bytes();
        let malformed = |reason| SealError::Malformed {
            channel: channel.to_owned(),
            reason,
        };
        if blob.len() < HEADER_LEN + NONCE_LEN + TAG_LEN {
            return Err(malformed("too short"));
        }
        let header = [blob[0], blob[1]];
        if header[0] != FORMAT {
            return Err(malformed("unknown format"));
        }
        if header[1] != self.id {
            return Err(SealError::UnknownKey {
                channel: channel.to_owned(),
                key_id: header[1],
            });
        }
        let (nonce, ciphertext) = blob[HEADER_LEN..].split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| malformed("nonce"))?;
        let mut buffer = ciphertext.to_vec();
        let opened = self
            .key
            .open_in_place(
                nonce,
                Aad::from(associated_data(prefix, channel, header)),
                &mut buffer,
            )
            .map(|plain| String::from_utf8(plain.to_vec()));
        zero(&mut buffer);
        match opened {
            Ok(Ok(text)) => Ok(SecretString::from(text)),
            Ok(Err(not_text)) => {
                let mut bytes = not_text.into_bytes();
                zero(&mut bytes);
                Err(malformed("not text"))
            }
            Err(_) => Err(SealError::Refused {
                channel: channel.to_owned(),
            }),
        }
    }
}

/// The bytes the operator's secret stands for: hex when it is only hex
/// digits, else standard base64 (padded or not); `None` unless that gives at
/// least [`MIN_KEY_BYTES`]. Surrounding whitespace (a file's newline) is
/// ignored. Zeroized when dropped.
fn key_material(secret: &str) -> Option<Zeroizing<Vec<u8>>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    use base64::Engine;
    let text = secret.trim();
    let decoded = if text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex(text)
    } else {
        STANDARD
            .decode(text)
            .or_else(|_| STANDARD_NO_PAD.decode(text))
            .ok()
    };
    let material = Zeroizing::new(decoded?);
    (material.len() >= MIN_KEY_BYTES).then_some(material)
}

/// Hex digits as bytes; `None` for an odd count.
fn hex(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    let value = |d: u8| (d as char).to_digit(16).map(|v| v as u8);
    digits
        .chunks(2)
        .map(|pair| Some(value(pair[0])? << 4 | value(pair[1])?))
        .collect()
}

/// What binds a blob to its use (`prefix`), its channel, format and key id.
fn associated_data(prefix: &[u8], channel: &str, header: [u8; HEADER_LEN]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(prefix.len() + HEADER_LEN + channel.len());
    aad.extend_from_slice(prefix);
    aad.extend_from_slice(&header);
    aad.extend_from_slice(channel.as_bytes());
    aad
}

/// Overwrites a buffer that held credentials in the clear.
fn zero(buffer: &mut [u8]) {
    use secrecy::zeroize::Zeroize;
    buffer.zeroize();
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(secret: &str) -> CredentialsKey {
        CredentialsKey::derive(&SecretString::from(secret)).unwrap()
    }

    /// 48 random bytes, as `openssl rand -base64 48` writes them.
    const SECRET: &str = "q6tq0Zf1N8x0m2v7WmJx0qG2cQwz3yR8D1kTnq1Zr3bYtV9Hc8Fw3o7s1A0PqLzE";
    const CREDENTIALS: &str = r#"{"consumer_key":"ck-7f3a","access_token":"at-secret-9c1e"}"#;

    #[test]
    fn sealed_credentials_open_for_their_channel_only() {
        let key = key(SECRET);
        let sealed = key.seal("acme", &SecretString::from(CREDENTIALS)).unwrap();
        assert_eq!(
            key.open("acme", &sealed).unwrap().expose_secret(),
            CREDENTIALS
        );
        assert_eq!(
            key.open("globex", &sealed).unwrap_err(),
            SealError::Refused {
                channel: "globex".into()
            }
        );
    }

    #[test]
    fn each_seal_uses_a_fresh_nonce() {
        let key = key(SECRET);
        let one = key.seal("acme", &SecretString::from(CREDENTIALS)).unwrap();
        let two = key.seal("acme", &SecretString::from(CREDENTIALS)).unwrap();
        assert_ne!(one, two);
        assert_eq!(one.as_bytes()[..2], [FORMAT, CURRENT_KEY_ID]);
    }

    #[test]
    fn a_wrong_key_is_refused_with_a_clear_error() {
        let sealed = key(SECRET)
            .seal("acme", &SecretString::from(CREDENTIALS))
            .unwrap();
        let error = key("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
            .open("acme", &sealed)
            .unwrap_err();
        assert!(matches!(error, SealError::Refused { .. }));
        assert!(
            error.to_string().contains("state.credentials_key"),
            "{error}"
        );
    }

    #[test]
    fn short_unknown_or_relabelled_blobs_are_refused() {
        let key = key(SECRET);
        let sealed = key.seal("acme", &SecretString::from(CREDENTIALS)).unwrap();
        let mut bytes = sealed.as_bytes().to_vec();
        let short = SealedCredentials::from_stored(bytes[..20].to_vec());
        assert!(matches!(
            key.open("acme", &short),
            Err(SealError::Malformed { .. })
        ));
        bytes[1] = 2;
        let relabelled = SealedCredentials::from_stored(bytes.clone());
        assert!(matches!(
            key.open("acme", &relabelled),
            Err(SealError::UnknownKey { key_id: 2, .. })
        ));
        bytes[0] = 9;
        assert!(matches!(
            key.open("acme", &SealedCredentials::from_stored(bytes)),
            Err(SealError::Malformed { .. })
        ));
    }

    #[test]
    fn no_key_and_weak_secrets_are_refused() {
        assert_eq!(
            CredentialsKey::required(None).unwrap_err(),
            SealError::NoKey
        );
        assert_eq!(
            CredentialsKey::derive(&SecretString::from("short")).unwrap_err(),
            SealError::WeakSecret
        );
    }

    #[test]
    fn only_random_key_material_of_32_bytes_or_more_is_a_secret() {
        let derives = |secret: &str| CredentialsKey::derive(&SecretString::from(secret)).is_ok();
        let bytes_32 = [7u8; 32];
        let bytes_31 = [7u8; 31];
        {
            use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
            use base64::Engine;
            assert!(derives(&STANDARD.encode(bytes_32)));
            assert!(derives(&STANDARD_NO_PAD.encode(bytes_32)));
            assert!(derives(&format!("{}\n", STANDARD.encode(bytes_32))));
            assert!(!derives(&STANDARD.encode(bytes_31)));
        }
        assert!(derives(&"ab".repeat(32)));
        assert!(derives(&"AB".repeat(32)));
        assert!(!derives(&"ab".repeat(31)));
        assert!(!derives(&"a".repeat(65)), "an odd count of hex digits");
        // A passphrase, however long, is not key material.
        assert!(!derives(
            "an-operator-passphrase-of-well-over-32-characters!"
        ));
        assert!(!derives(
            "correct horse battery staple correct horse battery"
        ));
        // The same material in hex and in base64 is the same key.
        let hex_key = key(&"07".repeat(32));
        let sealed = hex_key
            .seal("acme", &SecretString::from(CREDENTIALS))
            .unwrap();
        let b64 = key("BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=");
        assert!(b64.open("acme", &sealed).is_ok());
        let refused = SealError::WeakSecret.to_string();
        assert!(refused.contains("openssl rand -base64 48"), "{refused}");
    }

    #[test]
    fn the_key_check_opens_with_its_key_only_and_never_as_credentials() {
        let key = key(SECRET);
        let check = key.seal_key_check().unwrap();
        assert!(key.opens_key_check(&check));
        assert!(!key.opens_key_check(&key.seal("", &SecretString::from(KEY_CHECK_TEXT)).unwrap()));
        assert!(key.open("", &check).is_err());
        let other = super::tests::key(&"ab".repeat(32));
        assert!(!other.opens_key_check(&check));
    }

    #[test]
    fn nothing_secret_is_debug_printed() {
        let key = key(SECRET);
        let sealed = key.seal("acme", &SecretString::from(CREDENTIALS)).unwrap();
        let shown = format!("{key:?} {sealed:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("bytes"), "{shown}");
    }

    proptest! {
        #[test]
        fn open_undoes_seal(credentials in any::<String>(), channel in "[a-z0-9_-]{1,40}") {
            let key = key(SECRET);
            let sealed = key.seal(&channel, &SecretString::from(credentials.clone())).unwrap();
            let opened = key.open(&channel, &sealed).unwrap();
            prop_assert_eq!(opened.expose_secret(), credentials.as_str());
            if credentials.len() >= 8 {
                let clear = credentials.as_bytes();
                prop_assert!(!sealed.as_bytes().windows(clear.len()).any(|w| w == clear));
            }
        }

        #[test]
        fn any_bit_flip_is_refused(credentials in any::<String>(), bit in any::<usize>()) {
            let key = key(SECRET);
            let sealed = key.seal("acme", &SecretString::from(credentials)).unwrap();
            let mut bytes = sealed.as_bytes().to_vec();
            let bit = bit % (bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(key.open("acme", &SealedCredentials::from_stored(bytes)).is_err());
        }
    }
}
