//! The credential check against X, one diagnosis for `xbridge check` and for the
//! answers to `channel.upsert` and `channel.check`: an operator at a terminal and an
//! administrator at the CRM's form read the same words for the same problem.
//!
//! It asks X who the access token belongs to (`GET /2/users/me`), then reads one DM
//! page: X answers `/users/me` even for a token without DM permission or an account
//! without credits, so only a DM endpoint shows those.

use xbridge_core::config::ChannelSettings;
use xbridge_core::contract::control::AnswerAccount;
use xbridge_core::contract::ChannelState;
use xbridge_x_api::{DmEventsRequest, UserCredentials, XClient, XClientConfig, XError};

/// What to do when the token lacks the Direct Messages permission: the permission
/// alone is not enough, as a token keeps the permissions it was made with.
pub const PERMISSION_FIX: &str = "Fix: in the X developer console set the App's permissions to \"Read and write and Direct message\", then regenerate the access token and secret (a token keeps the permissions it was made with) and update this channel's credentials";

/// One problem found, as the channel state it puts the channel in and the words
/// (with the fix) an operator acts on. Never a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The state the problem means for the channel; `None` when the check could not
    /// finish (X out of reach), which says nothing about the credentials.
    pub state: Option<ChannelState>,
    /// What is wrong and what to do about it.
    pub text: String,
}

/// What X said about a channel's user credentials.
#[derive(Debug, Clone, Default)]
pub struct AccountCheck {
    /// The account the access token belongs to, when X said.
    pub account: Option<AnswerAccount>,
    /// Whether a DM page could be read (permission, enrollment and credits all fine).
    pub dms_readable: bool,
    /// Every problem found, in the order a fix is found.
    pub problems: Vec<Problem>,
}

impl AccountCheck {
    /// The channel's state by this check: its first problem's, `ok` without one, and
    /// `None` when the check could not finish.
    pub fn state(&self) -> Option<ChannelState> {
        self.problems
            .first()
            .map_or(Some(ChannelState::Ok), |p| p.state)
    }

    /// The problems' words, one sentence each, for a `channel.state`'s `detail`.
    pub fn detail(&self) -> Option<String> {
        let texts: Vec<&str> = self.problems.iter().map(|p| p.text.as_str()).collect();
        (!texts.is_empty()).then(|| texts.join("; "))
    }
}

/// Checks `channel`'s user credentials: the account first (if X refuses the
/// credentials nothing else can be asked), then Direct Messages.
pub async fn check_account(config: XClientConfig, channel: &ChannelSettings) -> AccountCheck {
    match XClient::new(config, UserCredentials::from(channel)) {
        Ok(client) => check_account_with(&client, channel).await,
        Err(error) => AccountCheck {
            problems: vec![diagnose(&error)],
            ..AccountCheck::default()
        },
    }
}

/// [`check_account`] with a client the caller built (an OAuth 2.0 channel's, whose
/// Bearer token comes from the grant in the state store).
pub async fn check_account_with(client: &XClient, channel: &ChannelSettings) -> AccountCheck {
    let mut check = AccountCheck::default();
    if let Err(error) = who_am_i(client, channel, &mut check).await {
        check.problems.push(diagnose(&error));
        return check;
    }
    match client.list_dm_events(&DmEventsRequest::first(1)).await {
        Ok(_) => check.dms_readable = true,
        Err(error) => check.problems.push(diagnose(&error)),
    }
    check
}

/// Who the access token belongs to: the account must be the configured `user_id`,
/// and the token must carry the Direct Messages permission.
async fn who_am_i(
    client: &XClient,
    channel: &ChannelSettings,
    check: &mut AccountCheck,
) -> Result<(), XError> {
    let (user, access_level) = client.me().await?;
    let id = user.id.as_str().to_owned();
    if let Some(configured) = channel.user_id.as_ref().filter(|c| **c != id) {
        check.problems.push(Problem {
            state: Some(ChannelState::Unauthorized),
            text: format!(
                "user_id is {configured} in the channel's settings, but the access token belongs to {id} (@{}): fix user_id or the credentials",
                user.username
            ),
        });
    }
    match access_level.as_deref() {
        Some("read-write-directmessages") | None => {}
        Some(level) => check.problems.push(Problem {
            state: Some(ChannelState::MissingPermission),
            text: format!(
                "the access token's permission is {level:?}, without Direct Messages. {PERMISSION_FIX}"
            ),
        }),
    }
    check.account = Some(AnswerAccount {
        user_id: id,
        username: user.username,
    });
    Ok(())
}

/// The problem an X error shows, with what to do about it.
pub fn diagnose(error: &XError) -> Problem {
    use ChannelState::{CreditsExhausted, MissingPermission, RateLimited, Unauthorized};
    let (state, text) = match error {
        XError::Unauthorized { .. } => (Some(Unauthorized), format!(
            "X refuses the credentials (HTTP {}): check the API key and secret and the access token and secret; regenerate them in the X developer console if they were revoked",
            error.http_status().unwrap_or(401)
        )),
        XError::MissingDmPermission { .. } => (Some(MissingPermission), format!(
            "the access token may not use Direct Messages (403 oauth1-permissions). {PERMISSION_FIX}"
        )),
        XError::NotEnrolled { .. } => (Some(Unauthorized), "the X App is not attached to a Project with an active plan (403 client-forbidden): attach it in the X developer console".into()),
        XError::CreditsExhausted { .. } => (Some(CreditsExhausted), format!(
            "the X account has no credits or is over its spending cap (HTTP {}): top up or raise the limit at console.x.com",
            error.http_status().unwrap_or(402)
        )),
        XError::RateLimited { .. } => (Some(RateLimited), "X's rate limit is used up right now; the check could not finish, try again after the reset".into()),
        XError::Transient { .. } | XError::NotConnected { .. } => {
            (None, format!("cannot reach X, the check could not finish: {error}"))
        }
        XError::RecipientRefuses { .. }
        | XError::InvalidRequest { .. }
        | XError::MediaProcessingFailed { .. } => {
            (None, format!("X refused the check: {error}"))
        }
    };
    Problem { state, text }
}
