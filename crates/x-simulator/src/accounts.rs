//! The X accounts the simulator knows, with the credentials a client must sign with.

use std::path::Path;

use anyhow::Context as _;
use figment::providers::{Format as _, Toml};
use figment::Figment;
use rand::distr::{Alphanumeric, SampleString as _};
use rand::Rng as _;
use serde::{Deserialize, Serialize};

/// One X user plus the App credentials that act for it.
///
/// X ties a user token to an App, so the simulator keeps both halves together: a request is
/// accepted only when its `oauth_consumer_key` and `oauth_token` both belong to the same account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// X's numeric user id as a string (X ids exceed what JSON doubles hold); the sender of its DMs
    /// and one half of every 1:1 conversation id.
    pub user_id: String,
    /// The @handle, answered by `GET /2/users/me` so a client can check whose token it holds.
    pub username: String,
    /// The display name, answered by `GET /2/users/me`.
    pub name: String,
    /// The App's API key: `oauth_consumer_key` in the Authorization header.
    pub consumer_key: String,
    /// The App's API secret: first half of the HMAC-SHA1 signing key.
    pub consumer_secret: String,
    /// The user's access token: `oauth_token` in the Authorization header.
    pub access_token: String,
    /// The user's access token secret: second half of the HMAC-SHA1 signing key.
    pub access_token_secret: String,
    /// The App-only token; X refuses it on DM endpoints, and so does the simulator (403).
    pub bearer_token: String,
}

/// The `--demo` account's user id, fixed so docker-compose and the bridge's demo config can name it.
pub const DEMO_USER_ID: &str = "1000000000000000001";

impl Account {
    /// An account with random credentials and a random 18 or 19-digit user id, so tests running
    /// side by side never collide and a client cannot accidentally pass with hard-coded secrets.
    pub fn generate(username: &str) -> Account {
        let mut rng = rand::rng();
        let user_id = rng
            .random_range(100_000_000_000_000_000u64..10_000_000_000_000_000_000u64)
            .to_string();
        let mut random_text = |len: usize| Alphanumeric.sample_string(&mut rng, len);
        // Shapes follow X's own credentials: a user token starts with its user id.
        Account {
            consumer_key: random_text(25),
            consumer_secret: random_text(50),
            access_token: format!("{user_id}-{}", random_text(40)),
            access_token_secret: random_text(45),
            bearer_token: format!("AAAAAAAAAAAAAAAAAAAAA{}", random_text(80)),
            name: username.to_string(),
            username: username.to_string(),
            user_id,
        }
    }

    /// The same account with a regenerated access token and secret, as the X developer
    /// console makes them: same user, same App, the old token no longer valid.
    pub fn with_regenerated_token(&self) -> Account {
        let mut rng = rand::rng();
        Account {
            access_token: format!(
                "{}-{}",
                self.user_id,
                Alphanumeric.sample_string(&mut rng, 40)
            ),
            access_token_secret: Alphanumeric.sample_string(&mut rng, 45),
            ..self.clone()
        }
    }

    /// Another account on the App of `app`: its own user and access token, the App's consumer
    /// key, secret and bearer token. X's Pay Per Use lets up to 3 accounts of one App subscribe to
    /// the App's one webhook, so their events all arrive at one URL.
    pub fn generate_for_app(username: &str, app: &Account) -> Account {
        Account {
            consumer_key: app.consumer_key.clone(),
            consumer_secret: app.consumer_secret.clone(),
            bearer_token: app.bearer_token.clone(),
            ..Account::generate(username)
        }
    }

    /// The fixed account that `x-simulator --demo` serves, so a demo runs with no setup.
    ///
    /// Its credentials are public and documented in the crate docs; never use them anywhere real.
    pub fn demo() -> Account {
        Account {
            user_id: DEMO_USER_ID.to_string(),
            username: "xbridge_demo".to_string(),
            name: "xbridge demo".to_string(),
            consumer_key: "demo-consumer-key".to_string(),
            consumer_secret: "demo-consumer-secret".to_string(),
            access_token: "demo-access-token".to_string(),
            access_token_secret: "demo-access-token-secret".to_string(),
            bearer_token: "demo-bearer-token".to_string(),
        }
    }
}

/// The shape of an `--accounts` file: a list of `[[accounts]]` tables.
#[derive(Debug, Deserialize)]
struct AccountsFile {
    #[serde(default)]
    accounts: Vec<Account>,
}

/// Reads the accounts of a TOML file made of `[[accounts]]` tables with [`Account`]'s fields.
///
/// A missing or malformed file is an error rather than an empty list, so a typo in a path does
/// not silently start a simulator that answers 401 to everyone.
pub fn load_accounts(path: &Path) -> anyhow::Result<Vec<Account>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading accounts file {}", path.display()))?;
    parse_accounts(&text).with_context(|| format!("parsing accounts file {}", path.display()))
}

fn parse_accounts(toml: &str) -> anyhow::Result<Vec<Account>> {
    let file: AccountsFile = Figment::from(Toml::string(toml)).extract()?;
    Ok(file.accounts)
}

/// The accounts a running simulator knows, looked up by the credentials a request carries:
/// their OAuth 1.0a tokens and App tokens, and their OAuth 2.0 grants.
#[derive(Debug, Default)]
pub(crate) struct AccountRegistry {
    accounts: Vec<Account>,
    /// OAuth 2.0 clients and grants; kept apart from [`Account`] so its fields (the accounts
    /// file's) stay as they are, and kept by `upsert` since a grant outlives a new OAuth 1.0a
    /// token.
    pub(crate) oauth2: crate::oauth2::OAuth2Book,
}

impl AccountRegistry {
    /// Adds an account, replacing any earlier one with the same user id (credentials rotated).
    pub(crate) fn upsert(&mut self, account: Account) {
        self.accounts
            .retain(|known| known.user_id != account.user_id);
        self.accounts.push(account);
    }

    /// Adds `account`'s user token beside the ones already valid for its user id (a second
    /// token of the same account); [`AccountRegistry::upsert`] of the account revokes all but
    /// its own.
    pub(crate) fn add_token(&mut self, account: Account) {
        self.accounts.push(account);
    }

    pub(crate) fn by_user_token(&self, consumer_key: &str, access_token: &str) -> Option<&Account> {
        self.accounts
            .iter()
            .find(|a| a.consumer_key == consumer_key && a.access_token == access_token)
    }

    pub(crate) fn by_bearer_token(&self, bearer_token: &str) -> Option<&Account> {
        self.accounts
            .iter()
            .find(|a| a.bearer_token == bearer_token)
    }

    pub(crate) fn by_user_id(&self, user_id: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.user_id == user_id)
    }

    pub(crate) fn contains(&self, user_id: &str) -> bool {
        self.accounts.iter().any(|a| a.user_id == user_id)
    }

    pub(crate) fn all(&self) -> Vec<Account> {
        self.accounts.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_accounts_have_x_shaped_ids_and_distinct_secrets() {
        for _ in 0..100 {
            let account = Account::generate("someone");
            let digits = account.user_id.len();
            assert!(digits == 18 || digits == 19, "{}", account.user_id);
            assert!(account.user_id.bytes().all(|b| b.is_ascii_digit()));
            assert!(account
                .access_token
                .starts_with(&format!("{}-", account.user_id)));
        }
        assert_ne!(
            Account::generate("a").consumer_secret,
            Account::generate("a").consumer_secret
        );
    }

    #[test]
    fn accounts_of_one_app_share_its_credentials_but_not_their_own() {
        let alpha = Account::generate("alpha");
        let beta = Account::generate_for_app("beta", &alpha);
        assert_eq!(
            (
                &beta.consumer_key,
                &beta.consumer_secret,
                &beta.bearer_token
            ),
            (
                &alpha.consumer_key,
                &alpha.consumer_secret,
                &alpha.bearer_token
            )
        );
        assert_ne!(beta.user_id, alpha.user_id);
        assert_ne!(beta.access_token, alpha.access_token);
        let mut registry = AccountRegistry::default();
        registry.upsert(alpha.clone());
        registry.upsert(beta.clone());
        assert_eq!(
            registry.by_user_token(&beta.consumer_key, &beta.access_token),
            Some(&beta)
        );
    }

    #[test]
    fn accounts_file_lists_accounts() {
        let toml = r#"
            [[accounts]]
            user_id = "1000000000000000001"
            username = "acme"
            name = "Acme Support"
            consumer_key = "ck"
            consumer_secret = "cs"
            access_token = "at"
            access_token_secret = "ats"
            bearer_token = "bt"
        "#;
        let accounts = parse_accounts(toml).unwrap();
        assert_eq!(accounts.len(), 1);
        assert_eq!(accounts[0].username, "acme");
        assert_eq!(accounts[0].access_token_secret, "ats");
    }

    #[test]
    fn accounts_file_missing_a_field_is_an_error() {
        let toml = "[[accounts]]\nuser_id = \"1\"\n";
        assert!(parse_accounts(toml).is_err());
    }

    #[test]
    fn registry_matches_consumer_key_and_token_together() {
        let mut registry = AccountRegistry::default();
        let a = Account::generate("a");
        let b = Account::generate("b");
        registry.upsert(a.clone());
        registry.upsert(b.clone());
        assert_eq!(
            registry.by_user_token(&a.consumer_key, &a.access_token),
            Some(&a)
        );
        assert_eq!(
            registry.by_user_token(&a.consumer_key, &b.access_token),
            None
        );
    }
}
