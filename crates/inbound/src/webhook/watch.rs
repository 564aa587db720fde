//! The periodic webhook check of a channel that receives by webhook: X stops
//! delivering to a webhook whose CRC failed (an outage, a bad deploy) until it
//! is revalidated, and nothing else would tell. Asking X with the channel's
//! bearer token turns that silence into the `webhook_invalid` channel state.
//!
//! The bridge then heals it itself when it can: if the invalid webhook is this
//! channel's URL (`…/webhooks/{channel}`), this process serves it, and its own
//! CRC answer is right ([`crate::webhook::crc_self_check`]), it asks X to revalidate the
//! webhook (`PUT /2/webhooks/:id`, which makes X run the CRC again). A refusal
//! keeps `webhook_invalid` with X's reason, and the next request waits longer
//! each time ([`Pacing`]); a success brings the channel back to `ok`. Each
//! request counts in `xbridge_webhook_revalidations_total{channel,outcome}`.
//! Webhooks at another URL are left to their own channel, or to an operator
//! (`xbridge webhook revalidate`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use url::Url;

use xbridge_core::channel_state::ChannelStates;
use xbridge_core::contract::ChannelState;
use xbridge_core::excerpt::cut;
use xbridge_x_api::{webhook_problem, Webhook, WebhookClient, WebhookError};

use crate::webhook::crc_self_check::CrcSelfCheck;

/// What the check needs from X: the App's webhooks, and a revalidation.
#[async_trait]
pub trait WebhookAdmin: Send + Sync {
    /// `GET /2/webhooks`.
    async fn list_webhooks(&self) -> Result<Vec<Webhook>, WebhookError>;
    /// `PUT /2/webhooks/:id`: X runs the CRC and re-enables the webhook if it passes.
    async fn revalidate_webhook(&self, webhook_id: &str) -> Result<(), WebhookError>;
}

#[async_trait]
impl WebhookAdmin for WebhookClient {
    async fn list_webhooks(&self) -> Result<Vec<Webhook>, WebhookError> {
        WebhookClient::list_webhooks(self).await
    }

    async fn revalidate_webhook(&self, webhook_id: &str) -> Result<(), WebhookError> {
        WebhookClient::revalidate_webhook(self, webhook_id).await
    }
}

/// The webhooks of one X App, as its channels' checks last listed them. One App
/// has one list, and X limits `GET /2/webhooks` per App (the Account Activity
/// API's limit is 15 requests in 15 minutes): a bridge with three channels of
/// one App and two replicas would ask 18 times in 15 minutes at the default
/// interval if each check asked X itself.
pub struct AppWebhooks {
    fresh_for: Duration,
    last: tokio::sync::Mutex<Option<(Instant, Vec<Webhook>)>>,
}

impl AppWebhooks {
    /// A list for checks `interval` apart: one listing serves every check of
    /// the same round (the checks tick in phase), never the next round.
    pub fn new(interval: Duration) -> Arc<AppWebhooks> {
        Arc::new(AppWebhooks {
            fresh_for: interval / 2,
            last: tokio::sync::Mutex::new(None),
        })
    }
}

/// A channel's [`WebhookAdmin`] whose listings are shared with the other
/// channels of its App ([`AppWebhooks`]); revalidations stay the channel's own
/// and make the next listing ask X again.
pub struct AppListing {
    /// X, with the channel's bearer token.
    pub x: Arc<dyn WebhookAdmin>,
    /// The App's shared list.
    pub app: Arc<AppWebhooks>,
}

#[async_trait]
impl WebhookAdmin for AppListing {
    async fn list_webhooks(&self) -> Result<Vec<Webhook>, WebhookError> {
        // Held while X answers, so the checks of one round wait for one listing.
        let mut last = self.app.last.lock().await;
        if let Some((at, webhooks)) = last.as_ref() {
            if at.elapsed() < self.app.fresh_for {
                return Ok(webhooks.clone());
            }
        }
        let webhooks = self.x.list_webhooks().await?;
        *last = Some((Instant::now(), webhooks.clone()));
        Ok(webhooks)
    }

    async fn revalidate_webhook(&self, webhook_id: &str) -> Result<(), WebhookError> {
        let result = self.x.revalidate_webhook(webhook_id).await;
        *self.app.last.lock().await = None;
        result
    }
}

/// One channel's periodic check.
pub struct WebhookWatch {
    /// The channel.
    pub channel: String,
    /// X, with the channel's bearer token.
    pub x: Arc<dyn WebhookAdmin>,
    /// This process's own CRC answer for the channel; `None` when it does not
    /// serve the webhook (no `inbound.listen`), which leaves revalidation to an
    /// operator.
    pub crc: Option<Arc<dyn CrcSelfCheck>>,
    /// The other channels of the same X App that receive by webhook here: one
    /// App has one webhook, and the watch of the channel whose URL it is heals it.
    pub app_channels: Vec<String>,
    /// Between checks (`inbound.webhook_check_interval`).
    pub interval: Duration,
    /// Which channels this replica serves: every replica checks the webhook
    /// (so each one's state says what X says), but only the one whose share
    /// the channel is asks X to revalidate it, so R replicas do not make R
    /// requests each round.
    pub shares: Arc<xbridge_sharing::Shares>,
}

/// What one look at the App's webhooks calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A webhook of the App is valid: X delivers.
    Valid,
    /// X will not deliver, and the bridge cannot fix it: what is wrong and the fix.
    Broken(String),
    /// X marked the webhook at this channel's URL invalid, and this process serves
    /// that URL: ask X to revalidate it.
    Revalidate(Webhook),
}

/// Decides from the App's webhooks as X lists them. Only the webhook whose URL
/// is this channel's is ever revalidated, and only by a process that serves it;
/// one at the URL of another of the App's channels (`app_channels`) is left to
/// that channel's watch.
pub fn verdict(
    webhooks: &[Webhook],
    channel: &str,
    serves_webhook: bool,
    app_channels: &[String],
) -> Verdict {
    let Some(problem) = webhook_problem(webhooks) else {
        return Verdict::Valid;
    };
    if !serves_webhook {
        return Verdict::Broken(problem);
    }
    if let Some(webhook) = webhooks
        .iter()
        .find(|w| !w.valid && names_channel(&w.url, channel))
    {
        return Verdict::Revalidate(webhook.clone());
    }
    let sibling = webhooks.iter().find_map(|w| {
        let owner = app_channels.iter().find(|c| names_channel(&w.url, c))?;
        Some((w, owner))
    });
    match sibling {
        Some((webhook, owner)) => Verdict::Broken(format!(
            "X considers the webhook {} invalid (its CRC check failed); the bridge asks X to revalidate it for channel {owner}, whose URL it is",
            cut(&webhook.url, 300)
        )),
        None => Verdict::Broken(problem),
    }
}

/// Whether X calls `url` for `channel`: the bridge serves `/webhooks/{channel}`,
/// behind whatever path prefix a proxy adds.
fn names_channel(url: &str, channel: &str) -> bool {
    let Ok(url) = Url::parse(url) else {
        return false;
    };
    let segments: Vec<&str> = url
        .path_segments()
        .map(Iterator::collect)
        .unwrap_or_default();
    matches!(segments.as_slice(), [.., "webhooks", last] if *last == channel)
}

/// The longest pause between two revalidation requests: X itself re-checks a
/// webhook every 30 to 60 minutes, so asking more rarely would add nothing.
pub const MAX_PAUSE: Duration = Duration::from_secs(3600);

/// When X may next be asked to revalidate: at once the first time, then after
/// pauses that double from the check interval up to [`MAX_PAUSE`] (or the
/// interval, if longer), so a webhook X cannot reach does not make the bridge
/// trigger a CRC at every check. Starts over once a check finds the webhook valid.
pub struct Pacing {
    interval: Duration,
    pauses: ExponentialBackoff,
    not_before: Option<Instant>,
}

impl Pacing {
    /// Pacing for checks `interval` apart.
    pub fn new(interval: Duration) -> Pacing {
        let pauses = ExponentialBuilder::default()
            .with_min_delay(interval)
            .with_max_delay(MAX_PAUSE.max(interval))
            .with_factor(2.0)
            .without_max_times()
            .build();
        Pacing {
            interval,
            pauses,
            not_before: None,
        }
    }

    /// Whether a request may be made at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|at| now >= at)
    }

    /// Records a request made at `now`; returns the pause before the next one.
    pub fn requested(&mut self, now: Instant) -> Duration {
        let pause = self.pauses.next().unwrap_or(MAX_PAUSE.max(self.interval));
        self.not_before = Some(now + pause);
        pause
    }

    /// The webhook is valid: the next problem is asked about at once.
    pub fn reset(&mut self) {
        *self = Pacing::new(self.interval);
    }
}

/// How one attempt to heal the webhook went.
#[derive(Debug)]
pub enum Revalidation {
    /// X's CRC passed: X delivers again.
    Revalidated,
    /// This process's own CRC answer fails (why); X was not asked.
    NotAnswering(String),
    /// X was asked and refused: its CRC failed, or the call did.
    Refused(WebhookError),
}

/// Checks the channel's webhook now and then every `interval` until shutdown.
/// A failed check (network, bearer token refused) leaves the state as it is:
/// it says nothing about the webhook, and `xbridge check` diagnoses tokens.
pub async fn watch_webhook(
    watch: WebhookWatch,
    states: Arc<ChannelStates>,
    shutdown: CancellationToken,
) {
    let mut pacing = Pacing::new(watch.interval);
    // Fixed ticks, not a sleep after each check: the checks of an App's
    // channels keep the same phase, so they share one list ([`AppListing`]).
    let mut ticks = tokio::time::interval(watch.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = check(&watch, &states, &mut pacing) => {}
        }
    }
}

/// One check: ask X, decide, and heal or report.
async fn check(watch: &WebhookWatch, states: &ChannelStates, pacing: &mut Pacing) {
    let channel = watch.channel.as_str();
    let webhooks = match watch.x.list_webhooks().await {
        Ok(webhooks) => webhooks,
        Err(error) => {
            tracing::warn!(channel, error = %error, "cannot check the webhook with X; the channel state is unchanged");
            return;
        }
    };
    match verdict(&webhooks, channel, watch.crc.is_some(), &watch.app_channels) {
        Verdict::Valid => {
            pacing.reset();
            apply(states, channel, None);
        }
        Verdict::Broken(problem) => apply(states, channel, Some(problem)),
        Verdict::Revalidate(webhook) => {
            // A more precise cause from an earlier attempt stays.
            report_invalid(states, channel, healing(&webhook), false);
            let Some(crc) = &watch.crc else { return };
            if watch.shares.serves(channel) && pacing.due(Instant::now()) {
                let outcome = revalidate(watch, crc.as_ref(), &webhook, pacing).await;
                report(states, channel, &webhook, outcome);
            }
        }
    }
}

/// Asks X to revalidate `webhook`, after making sure this process answers the
/// CRC X is about to send; counts each request X gets.
async fn revalidate(
    watch: &WebhookWatch,
    crc: &dyn CrcSelfCheck,
    webhook: &Webhook,
    pacing: &mut Pacing,
) -> Revalidation {
    let channel = watch.channel.as_str();
    if let Err(why) = crc.answers().await {
        tracing::warn!(channel, why = %why, "not asking X to revalidate the webhook: this bridge's own CRC answer fails");
        return Revalidation::NotAnswering(why);
    }
    let pause = pacing.requested(Instant::now());
    let answer = match watch.x.revalidate_webhook(&webhook.id).await {
        Ok(()) => confirmed(watch.x.as_ref(), &webhook.id).await,
        Err(error) => Err(error),
    };
    let outcome = match answer {
        Ok(()) => {
            tracing::info!(channel, webhook_id = %webhook.id, "X revalidated the webhook");
            Revalidation::Revalidated
        }
        Err(error) => {
            tracing::warn!(
                channel,
                webhook_id = %webhook.id,
                error = %error,
                next_in_secs = pause.as_secs(),
                "X refused to revalidate the webhook"
            );
            Revalidation::Refused(error)
        }
    };
    let label = match outcome {
        Revalidation::Revalidated => "revalidated",
        _ => "failed",
    };
    metrics::counter!(
        "xbridge_webhook_revalidations_total",
        "channel" => channel.to_owned(),
        "outcome" => label
    )
    .increment(1);
    outcome
}

/// Whether X, having answered a revalidation with success, lists the webhook as
/// valid: X's answer may say only that it ran the CRC (`"attempted": true`).
/// Taking that for a pass would report the channel `ok` and count
/// `revalidated` while X still delivers nothing, and the channel would flap
/// between `ok` and `webhook_invalid` (two `channel.state` events per attempt).
/// A list that fails says nothing: the next check looks again.
async fn confirmed(x: &dyn WebhookAdmin, webhook_id: &str) -> Result<(), WebhookError> {
    match x.list_webhooks().await {
        Ok(webhooks) if webhooks.iter().any(|w| w.id == webhook_id && !w.valid) => {
            Err(WebhookError::CrcValidationFailed)
        }
        _ => Ok(()),
    }
}

/// Records how an attempt went as the channel's state.
fn report(states: &ChannelStates, channel: &str, webhook: &Webhook, outcome: Revalidation) {
    let url = cut(&webhook.url, 300);
    let detail = match outcome {
        Revalidation::Revalidated => return apply(states, channel, None),
        Revalidation::NotAnswering(why) => format!(
            "X considers the webhook {url} invalid (its CRC check failed), and this bridge does not ask X to revalidate it because its own CRC answer fails ({why}): check inbound.listen and this channel's consumer_secret"
        ),
        Revalidation::Refused(error) => format!(
            "X considers the webhook {url} invalid and refused to revalidate it: {error}. The bridge asks X again, less and less often (at most hourly)"
        ),
    };
    report_invalid(states, channel, detail, true);
}

/// The cause told while the bridge asks X to revalidate.
fn healing(webhook: &Webhook) -> String {
    format!(
        "X considers the webhook {} invalid (its CRC check failed); the bridge is asking X to revalidate it",
        cut(&webhook.url, 300)
    )
}

/// Records the outcome of one check: `Some` cause of X not delivering, or
/// `None` when it delivers. A webhook problem does not mask a state that stops
/// replies (credits, rate limit, credentials): those are what agents must hear
/// about first, and the next check reports the webhook once they clear. Only
/// this check clears `webhook_invalid`.
pub fn apply(states: &ChannelStates, channel: &str, problem: Option<String>) {
    match problem {
        Some(detail) => report_invalid(states, channel, detail, true),
        None => {
            if states.get(channel).map(|status| status.state) == Some(ChannelState::WebhookInvalid)
            {
                states.set(channel, ChannelState::Ok, None, None);
            }
        }
    }
}

/// Reports `webhook_invalid` because of `detail`, unless a state that stops
/// replies holds; a channel already in it takes the new cause only when
/// `new_cause`.
fn report_invalid(states: &ChannelStates, channel: &str, detail: String, new_cause: bool) {
    match states.get(channel).map(|status| status.state) {
        Some(ChannelState::Ok | ChannelState::PollingPaused) => {
            tracing::warn!(channel, detail = %detail, "X will not deliver to the webhook");
            states.set(channel, ChannelState::WebhookInvalid, None, Some(detail));
        }
        Some(ChannelState::WebhookInvalid) if new_cause => {
            states.explain(channel, ChannelState::WebhookInvalid, detail);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use chrono::Utc;
    use xbridge_x_api::XError;

    use super::*;

    const URL: &str = "https://bridge.example.com/xbridge/webhooks/acme";

    fn webhook(url: &str, valid: bool) -> Webhook {
        Webhook {
            id: "1234567890123456789".into(),
            url: url.into(),
            valid,
            created_at: Utc::now(),
        }
    }

    fn state(states: &ChannelStates) -> ChannelState {
        states.get("acme").unwrap().state
    }

    fn detail(states: &ChannelStates) -> String {
        states.get("acme").unwrap().detail.unwrap_or_default()
    }

    #[test]
    fn only_an_invalid_webhook_at_the_channels_own_served_url_is_revalidated() {
        let invalid = webhook(URL, false);
        assert_eq!(
            verdict(std::slice::from_ref(&invalid), "acme", true, &[]),
            Verdict::Revalidate(invalid.clone())
        );
        assert!(matches!(
            verdict(std::slice::from_ref(&invalid), "acme", false, &[]),
            Verdict::Broken(why) if why.contains("xbridge webhook revalidate")
        ));
        for other in ["beta", "acm", "acme2"] {
            assert!(
                matches!(
                    verdict(std::slice::from_ref(&invalid), other, true, &[]),
                    Verdict::Broken(why) if why.contains("xbridge webhook revalidate")
                ),
                "{other}"
            );
        }
        let elsewhere = webhook("https://example.com/hooks/acme", false);
        assert!(matches!(
            verdict(&[elsewhere], "acme", true, &[]),
            Verdict::Broken(_)
        ));
        assert_eq!(
            verdict(&[webhook(URL, true)], "acme", true, &[]),
            Verdict::Valid
        );
        assert!(matches!(
            verdict(&[], "acme", true, &[]),
            Verdict::Broken(why) if why.contains("xbridge webhook register")
        ));
    }

    #[test]
    fn the_webhook_of_an_app_is_healed_by_the_channel_whose_url_it_is() {
        let invalid = webhook(URL, false);
        assert!(matches!(
            verdict(std::slice::from_ref(&invalid), "beta", true, &["acme".into()]),
            Verdict::Broken(why) if why.contains("for channel acme")
        ));
        assert!(matches!(
            verdict(&[invalid], "beta", true, &["other".into()]),
            Verdict::Broken(why) if why.contains("xbridge webhook revalidate")
        ));
    }

    #[test]
    fn an_invalid_webhook_marks_an_ok_channel_and_a_valid_one_clears_it() {
        let states = ChannelStates::new(["acme"]);
        apply(
            &states,
            "acme",
            Some("X considers the webhook invalid".into()),
        );
        assert_eq!(state(&states), ChannelState::WebhookInvalid);
        assert_eq!(detail(&states), "X considers the webhook invalid");
        apply(&states, "acme", Some("no webhook".into()));
        assert_eq!(detail(&states), "no webhook", "a new cause is told");
        apply(&states, "acme", None);
        assert_eq!(state(&states), ChannelState::Ok);
    }

    #[test]
    fn a_state_that_stops_replies_is_not_masked() {
        for blocking in [
            ChannelState::CreditsExhausted,
            ChannelState::RateLimited,
            ChannelState::Unauthorized,
            ChannelState::MissingPermission,
        ] {
            let states = ChannelStates::new(["acme"]);
            states.set("acme", blocking, None, None);
            apply(&states, "acme", Some("no webhook".into()));
            assert_eq!(state(&states), blocking);
            apply(&states, "acme", None);
            assert_eq!(
                state(&states),
                blocking,
                "a valid webhook clears only webhook_invalid"
            );
        }
    }

    #[test]
    fn an_invalid_webhook_outranks_paused_polling() {
        let states = ChannelStates::new(["acme"]);
        states.set("acme", ChannelState::PollingPaused, None, None);
        apply(&states, "acme", Some("no webhook".into()));
        assert_eq!(state(&states), ChannelState::WebhookInvalid);
    }

    /// X with one webhook at [`URL`]: revalidation answers come from `answers`
    /// (then success), and each request's (virtual) time is kept.
    #[derive(Default)]
    struct FakeX {
        valid: Mutex<bool>,
        answers: Mutex<Vec<Result<(), WebhookError>>>,
        requests: Mutex<Vec<Instant>>,
    }

    impl FakeX {
        fn refusing(times: usize) -> Arc<FakeX> {
            Arc::new(FakeX {
                answers: Mutex::new(
                    (0..times)
                        .map(|_| Err(WebhookError::CrcValidationFailed))
                        .collect(),
                ),
                ..FakeX::default()
            })
        }

        fn requests(&self) -> Vec<Instant> {
            self.requests.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl WebhookAdmin for FakeX {
        async fn list_webhooks(&self) -> Result<Vec<Webhook>, WebhookError> {
            Ok(vec![webhook(URL, *self.valid.lock().unwrap())])
        }

        async fn revalidate_webhook(&self, _: &str) -> Result<(), WebhookError> {
            self.requests.lock().unwrap().push(Instant::now());
            let mut answers = self.answers.lock().unwrap();
            let answer = if answers.is_empty() {
                Ok(())
            } else {
                answers.remove(0)
            };
            *self.valid.lock().unwrap() = answer.is_ok();
            answer
        }
    }

    struct Crc(Result<(), String>);

    #[async_trait]
    impl CrcSelfCheck for Crc {
        async fn answers(&self) -> Result<(), String> {
            self.0.clone()
        }
    }

    const INTERVAL: Duration = Duration::from_secs(60);

    /// Runs the watch on `x` for `how_long` of virtual time.
    async fn watch_for(
        x: Arc<FakeX>,
        crc: Result<(), String>,
        states: &Arc<ChannelStates>,
        how_long: Duration,
    ) {
        let shares = xbridge_sharing::Shares::everything();
        watch_on_replica(x, crc, states, how_long, shares).await;
    }

    /// [`watch_for`] on a replica whose share is `shares`.
    async fn watch_on_replica(
        x: Arc<FakeX>,
        crc: Result<(), String>,
        states: &Arc<ChannelStates>,
        how_long: Duration,
        shares: Arc<xbridge_sharing::Shares>,
    ) {
        let shutdown = CancellationToken::new();
        let watch = WebhookWatch {
            channel: "acme".into(),
            x,
            crc: Some(Arc::new(Crc(crc))),
            app_channels: Vec::new(),
            interval: INTERVAL,
            shares,
        };
        let task = tokio::spawn(watch_webhook(watch, states.clone(), shutdown.clone()));
        tokio::time::sleep(how_long).await;
        shutdown.cancel();
        task.await.unwrap();
    }

    fn gaps(requests: &[Instant]) -> Vec<u64> {
        requests
            .windows(2)
            .map(|pair| (pair[1] - pair[0]).as_secs())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn refused_revalidations_are_asked_again_less_and_less_often() {
        let x = FakeX::refusing(100);
        let states = Arc::new(ChannelStates::new(["acme"]));
        watch_for(x.clone(), Ok(()), &states, Duration::from_secs(5 * 3600)).await;

        // Checks every minute; requests 1, 2, 4, … minutes apart, at most hourly.
        assert_eq!(
            gaps(&x.requests())[..9],
            [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
        );
        assert_eq!(state(&states), ChannelState::WebhookInvalid);
        let detail = detail(&states);
        assert!(detail.contains("refused to revalidate"), "{detail}");
        assert!(detail.contains("CrcValidationFailed"), "{detail}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_revalidation_that_passes_brings_the_channel_back_and_starts_the_pacing_over() {
        let x = FakeX::refusing(4);
        let states = Arc::new(ChannelStates::new(["acme"]));
        let mut changes = states.subscribe();
        let start = Instant::now();
        let shutdown = CancellationToken::new();
        let watch = WebhookWatch {
            channel: "acme".into(),
            x: x.clone(),
            crc: Some(Arc::new(Crc(Ok(())))),
            app_channels: Vec::new(),
            interval: INTERVAL,
            shares: xbridge_sharing::Shares::everything(),
        };
        let task = tokio::spawn(watch_webhook(watch, states.clone(), shutdown.clone()));

        tokio::time::sleep(Duration::from_secs(990)).await;
        assert_eq!(
            gaps(&x.requests()),
            [60, 120, 240, 480],
            "refused 4 times, then passed"
        );
        assert_eq!(state(&states), ChannelState::Ok);
        let told: Vec<_> = std::iter::from_fn(|| changes.try_recv().ok())
            .map(|e| (e.status.state, e.status.detail.unwrap_or_default()))
            .collect();
        assert_eq!(told.len(), 3, "{told:?}");
        assert!(told[0].1.contains("asking X to revalidate"), "{told:?}");
        assert!(told[1].1.contains("refused to revalidate"), "{told:?}");
        assert_eq!(told[2].0, ChannelState::Ok);

        // X marks it invalid again: asked at the next check (1020 s), not after
        // the 960 s pause that followed the last request.
        *x.valid.lock().unwrap() = false;
        *x.answers.lock().unwrap() = vec![Err(WebhookError::Other(XError::Transient {
            status: Some(503),
            detail: "X is down".into(),
        }))];
        tokio::time::sleep(Duration::from_secs(60)).await;
        let requests = x.requests();
        assert_eq!(requests.len(), 6);
        assert_eq!((requests[5] - start).as_secs(), 1020);
        assert!(detail(&states).contains("X is down"), "{}", detail(&states));
        shutdown.cancel();
        task.await.unwrap();
    }

    /// X that answers every revalidation with success (`"attempted": true`)
    /// while its CRC keeps failing: the webhook stays invalid.
    struct AttemptingX(FakeX);

    #[async_trait]
    impl WebhookAdmin for AttemptingX {
        async fn list_webhooks(&self) -> Result<Vec<Webhook>, WebhookError> {
            Ok(vec![webhook(URL, false)])
        }

        async fn revalidate_webhook(&self, id: &str) -> Result<(), WebhookError> {
            self.0.revalidate_webhook(id).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_answer_that_leaves_the_webhook_invalid_is_a_failure() {
        let x = Arc::new(AttemptingX(FakeX::default()));
        let states = Arc::new(ChannelStates::new(["acme"]));
        let mut changes = states.subscribe();
        let shutdown = CancellationToken::new();
        let watch = WebhookWatch {
            channel: "acme".into(),
            x: x.clone(),
            crc: Some(Arc::new(Crc(Ok(())))),
            app_channels: Vec::new(),
            interval: INTERVAL,
            shares: xbridge_sharing::Shares::everything(),
        };
        let task = tokio::spawn(watch_webhook(watch, states.clone(), shutdown.clone()));
        tokio::time::sleep(Duration::from_secs(3 * 3600)).await;
        shutdown.cancel();
        task.await.unwrap();

        assert_eq!(
            gaps(&x.0.requests())[..4],
            [60, 120, 240, 480],
            "paced as refusals"
        );
        let told: Vec<_> = std::iter::from_fn(|| changes.try_recv().ok())
            .map(|e| e.status.state)
            .collect();
        assert_eq!(
            told,
            [ChannelState::WebhookInvalid, ChannelState::WebhookInvalid],
            "never ok: invalid, then X's refusal, once"
        );
        assert!(
            detail(&states).contains("CrcValidationFailed"),
            "{}",
            detail(&states)
        );
    }

    /// Counts the listings X answers.
    #[derive(Default)]
    struct CountingX {
        listings: Mutex<u32>,
        inner: FakeX,
    }

    #[async_trait]
    impl WebhookAdmin for CountingX {
        async fn list_webhooks(&self) -> Result<Vec<Webhook>, WebhookError> {
            *self.listings.lock().unwrap() += 1;
            self.inner.list_webhooks().await
        }

        async fn revalidate_webhook(&self, id: &str) -> Result<(), WebhookError> {
            self.inner.revalidate_webhook(id).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_channels_of_one_app_list_its_webhooks_once_per_round() {
        let x = Arc::new(CountingX::default());
        *x.inner.valid.lock().unwrap() = true;
        let app = AppWebhooks::new(INTERVAL);
        let channels = ["acme", "beta", "gamma"];
        let states = Arc::new(ChannelStates::new(channels));
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        for channel in channels {
            let watch = WebhookWatch {
                channel: channel.into(),
                x: Arc::new(AppListing {
                    x: x.clone(),
                    app: app.clone(),
                }),
                crc: Some(Arc::new(Crc(Ok(())))),
                app_channels: channels
                    .iter()
                    .filter(|c| **c != channel)
                    .map(|c| (*c).to_owned())
                    .collect(),
                interval: INTERVAL,
                shares: xbridge_sharing::Shares::everything(),
            };
            tasks.push(tokio::spawn(watch_webhook(
                watch,
                states.clone(),
                shutdown.clone(),
            )));
            // Spawned a little apart, as a real startup does.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Rounds at 0, 60, …, 600 s.
        tokio::time::sleep(Duration::from_secs(630)).await;
        shutdown.cancel();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*x.listings.lock().unwrap(), 11, "one listing per round");
        assert_eq!(state(&states), ChannelState::Ok);
    }

    /// Every replica sees the webhook invalid, but only the one serving the
    /// channel asks X to revalidate it: R replicas are not R requests a round.
    #[tokio::test(start_paused = true)]
    async fn a_replica_whose_share_the_channel_is_not_does_not_ask_x_to_revalidate() {
        let x = FakeX::refusing(100);
        let states = Arc::new(ChannelStates::new(["acme"]));
        let elsewhere = xbridge_sharing::Shares::new("another-replica");
        watch_on_replica(
            x.clone(),
            Ok(()),
            &states,
            Duration::from_secs(3600),
            elsewhere,
        )
        .await;
        assert!(x.requests().is_empty(), "{:?}", x.requests());
        assert_eq!(state(&states), ChannelState::WebhookInvalid);
    }

    #[tokio::test(start_paused = true)]
    async fn x_is_not_asked_while_the_bridges_own_crc_answer_fails() {
        let x = FakeX::refusing(0);
        let states = Arc::new(ChannelStates::new(["acme"]));
        watch_for(
            x.clone(),
            Err("GET /webhooks/acme answered 404".into()),
            &states,
            Duration::from_secs(600),
        )
        .await;
        assert!(x.requests().is_empty());
        assert_eq!(state(&states), ChannelState::WebhookInvalid);
        let detail = detail(&states);
        assert!(detail.contains("answered 404"), "{detail}");
        assert!(detail.contains("does not ask X"), "{detail}");
    }
}
