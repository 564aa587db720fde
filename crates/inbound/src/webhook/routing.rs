//! Which channel a webhook body belongs to.
//!
//! X allows one webhook per App, so the events of every account subscribed to an
//! App's webhook arrive at the one URL registered for it (say `/webhooks/alpha`),
//! each body naming its account (`for_user_id`, or `data.filter.user_id` in the X
//! Activity API). The body's signature is checked with the secret of the App whose
//! URL was called; [`route`] then picks the channel of *that App* which is the named
//! account. A channel of another App is never picked, even when it is the account:
//! the signature only vouches for the App that made it, and publishing under a
//! channel on another App's word would let whoever holds one App's secret speak for
//! every channel. Such a body is kept like one for an account nobody configured.

use xbridge_core::channel_identity::{AppId, ChannelIdentity, Identity};

/// Where a webhook body goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// Publish its events under this channel: the App's channel that is the account.
    Channel(String),
    /// Some channels of the App are not known yet (X has not said who they are):
    /// the body may be theirs, so X must send it again later (503).
    Wait {
        /// Those channels.
        pending: Vec<String>,
    },
    /// No channel of the App is the account: keep the body as a dead letter.
    Keep {
        /// Why, for the dead letter and the log.
        detail: String,
    },
}

/// Where the body that arrived at `url_channel`'s URL for `account` goes, given
/// every channel's identity (in configuration order: of two channels of one App
/// that are one account, which the configuration refuses and only learnt ids can
/// produce, the URL's own channel wins, else the first).
pub(crate) fn route(channels: &[ChannelIdentity], url_channel: &str, account: &str) -> Route {
    let Some(app) = channels
        .iter()
        .find(|c| c.name == url_channel)
        .map(|c| c.app)
    else {
        return Route::Keep {
            detail: format!("channel {url_channel} is not configured"),
        };
    };
    let of_app: Vec<&ChannelIdentity> = channels.iter().filter(|c| c.app == app).collect();
    let is_account = |c: &ChannelIdentity| c.identity == Identity::Known(account.into());
    let owners: Vec<&&ChannelIdentity> = of_app.iter().filter(|c| is_account(c)).collect();
    if let Some(owner) = owners
        .iter()
        .find(|c| c.name == url_channel)
        .or_else(|| owners.first())
    {
        return Route::Channel(owner.name.clone());
    }
    let pending: Vec<String> = of_app
        .iter()
        .filter(|c| c.identity == Identity::Pending)
        .map(|c| c.name.clone())
        .collect();
    if !pending.is_empty() {
        return Route::Wait { pending };
    }
    Route::Keep {
        detail: no_channel_detail(channels, app, &of_app, url_channel, account),
    }
}

/// Why no channel of the App is the account, for the dead letter: the App's channels
/// (bounded, as the detail rides in a header; X lets 3 accounts share an App), the ones
/// whose account is not known and why, and a channel of another App that is the account.
fn no_channel_detail(
    channels: &[ChannelIdentity],
    app: AppId,
    of_app: &[&ChannelIdentity],
    url_channel: &str,
    account: &str,
) -> String {
    let mut names: Vec<&str> = of_app.iter().take(5).map(|c| c.name.as_str()).collect();
    if of_app.len() > names.len() {
        names.push("…");
    }
    let mut detail = format!(
        "X delivered a body for X account {account} to the webhook of channel {url_channel}; no channel of that X App ({}) is this account",
        names.join(", ")
    );
    for channel in of_app.iter().take(5) {
        if let Identity::Unavailable(reason) = &channel.identity {
            detail.push_str(&format!(
                "; channel {} is not known: {reason}",
                channel.name
            ));
        }
    }
    let is_account = |c: &ChannelIdentity| c.identity == Identity::Known(account.into());
    if let Some(elsewhere) = channels.iter().find(|c| c.app != app && is_account(c)) {
        detail.push_str(&format!(
            "; channel {} is this account but on another X App, whose signature this body does not carry",
            elsewhere.name
        ));
    }
    detail
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;
    use xbridge_core::channel_identity::{ChannelAccount, ChannelIdentities};

    use super::*;

    /// alpha and beta on one App (beta's id not configured), gamma on another.
    fn identities() -> ChannelIdentities {
        let (one, two) = (SecretString::from("one"), SecretString::from("two"));
        ChannelIdentities::new([
            ChannelAccount {
                name: "alpha",
                consumer_key: &one,
                user_id: Some("1"),
            },
            ChannelAccount {
                name: "beta",
                consumer_key: &one,
                user_id: None,
            },
            ChannelAccount {
                name: "gamma",
                consumer_key: &two,
                user_id: Some("3"),
            },
        ])
    }

    #[test]
    fn a_body_goes_to_the_apps_channel_that_is_its_account_whatever_the_url() {
        let ids = identities();
        ids.learn("beta", "2").unwrap();
        let all = ids.snapshot();
        assert_eq!(route(&all, "alpha", "1"), Route::Channel("alpha".into()));
        assert_eq!(route(&all, "alpha", "2"), Route::Channel("beta".into()));
        assert_eq!(route(&all, "beta", "1"), Route::Channel("alpha".into()));
    }

    #[test]
    fn while_a_channel_of_the_app_is_not_known_other_accounts_wait() {
        let ids = identities();
        let all = ids.snapshot();
        assert_eq!(route(&all, "alpha", "1"), Route::Channel("alpha".into()));
        assert_eq!(
            route(&all, "alpha", "2"),
            Route::Wait {
                pending: vec!["beta".into()]
            }
        );
        // X will not say who beta is: bodies stop waiting for it and are kept.
        ids.unavailable("beta", "X refused the channel's credentials");
        let Route::Keep { detail } = route(&ids.snapshot(), "alpha", "2") else {
            panic!("kept")
        };
        assert!(detail.contains("account 2"), "{detail}");
        assert!(
            detail.contains("channel beta is not known: X refused"),
            "{detail}"
        );
    }

    #[test]
    fn an_account_of_another_app_is_kept_not_published() {
        let ids = identities();
        ids.learn("beta", "2").unwrap();
        let Route::Keep { detail } = route(&ids.snapshot(), "alpha", "3") else {
            panic!("kept")
        };
        assert!(detail.contains("(alpha, beta)"), "{detail}");
        assert!(
            detail.contains("channel gamma is this account but on another X App"),
            "{detail}"
        );
        let Route::Keep { detail } = route(&ids.snapshot(), "gamma", "9") else {
            panic!("kept")
        };
        assert!(
            detail.contains("account 9") && detail.contains("(gamma)"),
            "{detail}"
        );
    }

    #[test]
    fn of_two_channels_that_are_one_account_the_urls_own_wins() {
        let ids = identities();
        ids.learn("beta", "1").unwrap();
        let all = ids.snapshot();
        assert_eq!(route(&all, "beta", "1"), Route::Channel("beta".into()));
        assert_eq!(route(&all, "alpha", "1"), Route::Channel("alpha".into()));
    }
}
