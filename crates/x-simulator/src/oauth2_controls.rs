//! The [`Simulator`]'s OAuth 2.0 controls for tests: clients, grants without the
//! browser step, expiring access tokens and revoking grants on demand. Apart from
//! `oauth2.rs` (X's endpoints), which the account registry uses, so that module
//! never names the simulator that holds the registry.

use crate::oauth2::{OAuth2Client, OAuth2Tokens};
use crate::Simulator;

impl Simulator {
    /// Registers an OAuth 2.0 client whose authorize page approves as `client.user_id`.
    pub fn add_oauth2_client(&self, client: OAuth2Client) {
        self.state().lock().accounts.oauth2.add_client(client);
    }

    /// The tokens of a grant of `scopes` to `client_id`, as if its user had gone through the
    /// authorize page; a refresh token only with `offline.access`. `None` for an unknown client.
    pub fn oauth2_grant(&self, client_id: &str, scopes: &[&str]) -> Option<OAuth2Tokens> {
        let now = self.state().now();
        let scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
        self.state()
            .lock()
            .accounts
            .oauth2
            .grant(client_id, scopes, now)
    }

    /// Expires every OAuth 2.0 access token of the account now; its refresh tokens still
    /// work. Returns how many tokens it ended.
    pub fn oauth2_expire_access_tokens(&self, user_id: &str) -> usize {
        let now = self.state().now();
        self.state()
            .lock()
            .accounts
            .oauth2
            .expire_access_tokens(user_id, now)
    }

    /// Revokes every OAuth 2.0 grant of the account, as its user would in X's settings:
    /// requests with its access tokens get 401 and a refresh gets X's refusal. Returns how
    /// many grants it revoked.
    pub fn oauth2_revoke_grants(&self, user_id: &str) -> usize {
        self.state().lock().accounts.oauth2.revoke_grants(user_id)
    }
}
