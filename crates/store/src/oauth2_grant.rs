//! A channel's OAuth 2.0 grant in the state store (docs/design-oauth2.md).
//!
//! X rotates refresh tokens: every refresh answers a new one and the one used is dead.
//! So the grant is kept where every replica finds it, sealed like channel credentials
//! but under associated data of its own (a credentials blob never opens as a grant, nor
//! one channel's grant as another's), with a `generation` that every stored grant moves
//! on: a write names the generation it started from and is refused when the row moved
//! on since ([`GrantWrite::Stale`]), so a replica that refreshed late never replaces the
//! newer grant another stored. A refresh lease lets one replica at a time ask X, and a
//! refused mark tells every replica that only an operator can help (authorise again).

use chrono::{DateTime, Utc};
use secrecy::SecretString;

use crate::sealed::{CredentialsKey, SealError, SealedCredentials};

/// The associated data's prefix of a sealed grant: not the channel credentials' one.
const GRANT_AAD_PREFIX: &[u8] = b"xbridge channel oauth2 grant\0";

/// A grant sealed for one channel: only [`CredentialsKey::seal_grant`] makes one.
/// `Debug` shows only the length.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedGrant(SealedCredentials);

impl std::fmt::Debug for SealedGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedGrant({} bytes)", self.0.as_bytes().len())
    }
}

impl SealedGrant {
    /// The blob as stored.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// A blob read back from the store; [`CredentialsKey::open_grant`] checks it.
    pub(crate) fn from_stored(bytes: Vec<u8>) -> SealedGrant {
        SealedGrant(SealedCredentials::from_stored(bytes))
    }
}

impl CredentialsKey {
    /// Seals a grant (the bridge stores it as JSON) for `channel`.
    pub fn seal_grant(
        &self,
        channel: &str,
        grant: &SecretString,
    ) -> Result<SealedGrant, SealError> {
        self.seal_for(GRANT_AAD_PREFIX, channel, grant)
            .map(SealedGrant)
    }

    /// Opens what [`CredentialsKey::seal_grant`] sealed for `channel`.
    pub fn open_grant(
        &self,
        channel: &str,
        sealed: &SealedGrant,
    ) -> Result<SecretString, SealError> {
        self.open_for(GRANT_AAD_PREFIX, channel, &sealed.0)
    }
}

/// A channel's stored grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2GrantRow {
    /// Moves on by one with every stored grant: the compare-and-set guard.
    pub generation: u64,
    /// The grant, sealed.
    pub sealed: SealedGrant,
    /// When its access token ends, if X said: in the clear, so a replica can tell
    /// whether to refresh without opening the blob. Not a secret.
    pub expires_at: Option<DateTime<Utc>>,
    /// X refused this grant: an operator must authorise the channel again.
    pub refused: bool,
}

/// What [`crate::StateStore::store_oauth2_grant`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantWrite {
    /// Stored, at this generation.
    Stored(u64),
    /// Nothing written: the row is at this generation, not the one expected (another
    /// replica stored a newer grant, or an operator authorised again). Read it.
    Stale(u64),
}

/// Which generation a grant write expects to replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantBase {
    /// The generation the writer read (0: there was no grant, or it was deleted).
    Generation(u64),
    /// Any: a new authorisation replaces whatever is stored and clears the refused mark.
    Any,
}

impl GrantBase {
    /// Whether a row at `current`, holding a grant or not (`has_grant`), may be replaced.
    /// A deleted grant ([`crate::StateStore::delete_oauth2_grant`]) leaves its generation
    /// behind: a write based on no grant (0) is taken and moves on from there, while a
    /// refresh that read the deleted grant (and spent its token) is refused, even once a
    /// later grant is stored, whose generation is higher.
    pub fn admits(self, current: u64, has_grant: bool) -> bool {
        match self {
            GrantBase::Generation(0) => !has_grant,
            GrantBase::Generation(expected) => has_grant && expected == current,
            GrantBase::Any => true,
        }
    }
}
