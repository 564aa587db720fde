//! Learning which X account each channel is, before its DMs are routed.
//!
//! A channel's account id comes from its `user_id`, or, when the configuration does
//! not give it, from X (`GET /2/users/me` with the channel's access token). A given
//! id is checked the same way: one that is not the token's account would route one
//! account's DMs to another's channel, so it stops the bridge with both ids named.
//!
//! At startup every receiving channel is asked once, all at once ([`IdentityResolver::resolve_once`]),
//! so a mismatch is a startup error. X may be unreachable then: the bridge starts
//! anyway and [`IdentityResolver::run`] asks again with a growing pause (1 s up to
//! 5 min) until X answers. Meanwhile a configured id is trusted, and a channel
//! without one is `Pending`: bodies that may be its account's are answered 503
//! (X sends them again later). While X refuses the channel's credentials it is
//! `Unavailable` instead, and such bodies are kept as dead letters rather than
//! refused until X gives up on them. What is learnt lands in the shared
//! [`ChannelIdentities`], where the outbound side finds it too.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use xbridge_core::channel_identity::{ChannelIdentities, IdentityMismatch};
use xbridge_x_api::{XClient, XError};

/// Who a channel's access token belongs to, as X says.
#[async_trait]
pub trait AccountLookup: Send + Sync {
    /// The account's X user id.
    async fn own_account(&self) -> Result<String, XError>;
}

#[async_trait]
impl AccountLookup for XClient {
    async fn own_account(&self) -> Result<String, XError> {
        Ok(self.me().await?.0.id.into())
    }
}

/// Whether a failed lookup may pass by itself (X unreachable, slow, rate-limited),
/// so bodies may wait for the next one; anything else (credentials refused, App
/// not enrolled, no credits) needs an operator.
fn passes_by_itself(error: &XError) -> bool {
    matches!(error, XError::Transient { .. } | XError::RateLimited { .. })
}

/// What becomes of a tolerated channel whose configured id X contradicts.
pub type OnContradicted = Arc<dyn Fn(&IdentityMismatch) + Send + Sync>;

/// Learns the accounts of some channels into the shared identities.
pub struct IdentityResolver {
    identities: Arc<ChannelIdentities>,
    lookups: Vec<(String, Arc<dyn AccountLookup>)>,
    first_pause: Duration,
    max_pause: Duration,
    /// Channels whose contradicted id does not stop the bridge, and what is
    /// done instead (besides leaving the identities).
    tolerated: Vec<String>,
    on_contradicted: Option<OnContradicted>,
}

impl IdentityResolver {
    /// A resolver asking `lookups` (channel name → its account lookup) and keeping
    /// the answers in `identities`.
    pub fn new(
        identities: Arc<ChannelIdentities>,
        lookups: Vec<(String, Arc<dyn AccountLookup>)>,
    ) -> IdentityResolver {
        IdentityResolver {
            identities,
            lookups,
            first_pause: Duration::from_secs(1),
            max_pause: Duration::from_secs(300),
            tolerated: Vec::new(),
            on_contradicted: None,
        }
    }

    /// A contradicted id of one of `channels` does not stop the bridge: the
    /// channel leaves the identities (its webhook bodies are not routed to it),
    /// is logged, and `then` is told. For the CRM's channels: the CRM, not the
    /// operator, fixes them, which it cannot do with the bridge stopped.
    pub fn tolerating(
        mut self,
        channels: Vec<String>,
        then: impl Fn(&IdentityMismatch) + Send + Sync + 'static,
    ) -> IdentityResolver {
        self.tolerated = channels;
        self.on_contradicted = Some(Arc::new(then));
        self
    }

    /// `Err` unless `mismatch` is of a tolerated channel, which is then left
    /// out of routing.
    fn contradicted(&self, mismatch: IdentityMismatch) -> Result<(), IdentityMismatch> {
        if !self.tolerated.contains(&mismatch.channel) {
            return Err(mismatch);
        }
        self.identities.remove(&mismatch.channel);
        tracing::error!(channel = mismatch.channel, error = %mismatch, "the channel is not the X account its settings name: its webhook bodies are not routed to it until its settings change");
        if let Some(then) = &self.on_contradicted {
            then(&mismatch);
        }
        Ok(())
    }

    /// Asks X once for every channel, all at once. The channels X did not answer
    /// for, or the first configured id X contradicts.
    pub async fn resolve_once(&self) -> Result<Vec<String>, IdentityMismatch> {
        let mut asks = JoinSet::new();
        for (channel, lookup) in &self.lookups {
            let (channel, lookup) = (channel.clone(), lookup.clone());
            let identities = self.identities.clone();
            asks.spawn(async move {
                let answered = ask(&identities, &channel, lookup.as_ref()).await?;
                Ok::<_, IdentityMismatch>((!answered).then_some(channel))
            });
        }
        let mut unanswered = Vec::new();
        while let Some(joined) = asks.join_next().await {
            match joined {
                Ok(Ok(Some(channel))) => unanswered.push(channel),
                Ok(Ok(None)) => {}
                Ok(Err(mismatch)) => self.contradicted(mismatch)?,
                Err(failure) => {
                    tracing::error!(%failure, "asking X for a channel's account failed")
                }
            }
        }
        unanswered.sort();
        Ok(unanswered)
    }

    /// Asks again for the `unanswered` channels, each with its own growing pause,
    /// until X has answered for all of them or `shutdown`. A contradicted
    /// configured id ends it with the error: the bridge must stop.
    pub async fn run(
        self,
        unanswered: Vec<String>,
        shutdown: CancellationToken,
    ) -> Result<(), IdentityMismatch> {
        let mut tasks = JoinSet::new();
        for (channel, lookup) in self.lookups.clone() {
            if !unanswered.contains(&channel) {
                continue;
            }
            let identities = self.identities.clone();
            let mut pauses = ExponentialBuilder::default()
                .with_min_delay(self.first_pause)
                .with_max_delay(self.max_pause)
                .with_jitter()
                .without_max_times()
                .build();
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                loop {
                    let pause = pauses.next().unwrap_or(Duration::from_secs(300));
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(pause) => {}
                    }
                    if ask(&identities, &channel, lookup.as_ref()).await? {
                        return Ok(());
                    }
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            if let Ok(Err(mismatch)) = joined {
                self.contradicted(mismatch)?;
            }
        }
        Ok(())
    }
}

/// Asks X who `channel` is and records it: `true` once X answered, `false` to ask
/// again later.
async fn ask(
    identities: &ChannelIdentities,
    channel: &str,
    lookup: &dyn AccountLookup,
) -> Result<bool, IdentityMismatch> {
    match lookup.own_account().await {
        Ok(actual) => {
            let known_before = identities.user_id(channel);
            identities.learn(channel, &actual)?;
            if known_before.is_none() {
                tracing::info!(
                    channel,
                    user_id = actual,
                    "learnt the channel's X account from X"
                );
            }
            Ok(true)
        }
        Err(error) => {
            let configured = identities.user_id(channel).is_some();
            if !passes_by_itself(&error) {
                // Bounded: it ends up in dead letters' detail header.
                let reason: String = error.to_string().chars().take(200).collect();
                identities.unavailable(channel, &reason);
            }
            if configured {
                tracing::warn!(channel, %error, "cannot confirm the channel's user_id with X; trusting the configuration and asking again later");
            } else {
                tracing::warn!(channel, %error, "cannot learn the channel's X account from X; asking again later, and webhook bodies that may be its account's wait");
            }
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use secrecy::SecretString;
    use xbridge_core::channel_identity::{ChannelAccount, Identity};

    use super::*;

    /// Answers from a script, then the last answer forever.
    struct Scripted(Mutex<VecDeque<Result<String, XError>>>);

    impl Scripted {
        fn lookup(answers: Vec<Result<String, XError>>) -> Arc<dyn AccountLookup> {
            Arc::new(Scripted(Mutex::new(answers.into())))
        }
    }

    #[async_trait]
    impl AccountLookup for Scripted {
        async fn own_account(&self) -> Result<String, XError> {
            let mut answers = self.0.lock().unwrap();
            if answers.len() > 1 {
                answers.pop_front().unwrap()
            } else {
                answers.front().cloned().unwrap()
            }
        }
    }

    fn transient() -> XError {
        XError::Transient {
            status: None,
            detail: "connection refused".into(),
        }
    }

    fn identities() -> Arc<ChannelIdentities> {
        let key = SecretString::from("app");
        Arc::new(ChannelIdentities::new([
            ChannelAccount {
                name: "alpha",
                consumer_key: &key,
                user_id: Some("1"),
            },
            ChannelAccount {
                name: "beta",
                consumer_key: &key,
                user_id: None,
            },
        ]))
    }

    #[tokio::test(start_paused = true)]
    async fn an_account_x_could_not_tell_at_startup_is_learnt_later() {
        let ids = identities();
        let resolver = IdentityResolver::new(
            ids.clone(),
            vec![
                ("alpha".into(), Scripted::lookup(vec![Ok("1".into())])),
                (
                    "beta".into(),
                    Scripted::lookup(vec![Err(transient()), Err(transient()), Ok("2".into())]),
                ),
            ],
        );
        let unanswered = resolver.resolve_once().await.unwrap();
        assert_eq!(unanswered, vec!["beta".to_owned()]);
        assert_eq!(ids.identity("beta"), Some(Identity::Pending));
        resolver
            .run(unanswered, CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(
            ids.user_id("beta").as_ref().map(|id| id.as_str()),
            Some("2")
        );
    }

    #[tokio::test]
    async fn a_configured_id_x_contradicts_is_an_error_naming_both() {
        let ids = identities();
        let resolver = IdentityResolver::new(
            ids.clone(),
            vec![("alpha".into(), Scripted::lookup(vec![Ok("7".into())]))],
        );
        let error = resolver.resolve_once().await.unwrap_err();
        assert_eq!(
            (
                error.channel.as_str(),
                error.configured.as_str(),
                error.actual.as_str()
            ),
            ("alpha", "1", "7")
        );
    }

    #[tokio::test]
    async fn a_tolerated_channel_x_contradicts_leaves_routing_and_the_others_resolve() {
        let ids = identities();
        let told = Arc::new(std::sync::Mutex::new(Vec::new()));
        let resolver = IdentityResolver::new(
            ids.clone(),
            vec![
                ("alpha".into(), Scripted::lookup(vec![Ok("7".into())])),
                ("beta".into(), Scripted::lookup(vec![Ok("2".into())])),
            ],
        )
        .tolerating(vec!["alpha".into()], {
            let told = told.clone();
            move |m: &IdentityMismatch| told.lock().unwrap().push(m.channel.clone())
        });
        assert!(resolver.resolve_once().await.unwrap().is_empty());
        assert_eq!(*told.lock().unwrap(), vec!["alpha".to_owned()]);
        assert!(ids.identity("alpha").is_none(), "alpha is not routed");
        assert_eq!(
            ids.user_id("beta").as_ref().map(|id| id.as_str()),
            Some("2")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refused_credentials_stop_bodies_waiting_but_not_the_asking() {
        let ids = identities();
        let refused = XError::Unauthorized { problem: None };
        let resolver = IdentityResolver::new(
            ids.clone(),
            vec![(
                "beta".into(),
                Scripted::lookup(vec![Err(refused.clone()), Err(transient()), Ok("2".into())]),
            )],
        );
        let unanswered = resolver.resolve_once().await.unwrap();
        assert!(
            matches!(ids.identity("beta"), Some(Identity::Unavailable(reason)) if reason.contains("credentials"))
        );
        // A configured id is kept whatever X says.
        ids.unavailable("alpha", &refused.to_string());
        assert_eq!(
            ids.user_id("alpha").as_ref().map(|id| id.as_str()),
            Some("1")
        );
        resolver
            .run(unanswered, CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(
            ids.user_id("beta").as_ref().map(|id| id.as_str()),
            Some("2")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn asking_again_stops_on_shutdown() {
        let ids = identities();
        let resolver = IdentityResolver::new(
            ids.clone(),
            vec![("beta".into(), Scripted::lookup(vec![Err(transient())]))],
        );
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(resolver.run(vec!["beta".into()], shutdown.clone()));
        tokio::time::sleep(Duration::from_secs(3600)).await;
        shutdown.cancel();
        run.await.unwrap().unwrap();
        assert_eq!(ids.identity("beta"), Some(Identity::Pending));
    }
}
