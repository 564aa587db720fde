use super::*;
use crate::{problems, Fault};

fn remaining(answer: &Answer) -> u32 {
    answer.header("x-rate-limit-remaining").parse().unwrap()
}

#[tokio::test]
async fn window_answers_429_after_the_limit_and_recovers_when_it_ends() {
    let h = harness().await;
    h.sim.set_fault(
        h.user_id(),
        Fault::RateLimitWindow {
            limit: 3,
            window_secs: 60,
        },
    );
    let path = with_participant(RECIPIENT);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let answer = h.post(&path, hello()).await;
        assert_eq!(answer.status, 201);
        assert_eq!(answer.header("x-rate-limit-limit"), "3");
        seen.push(remaining(&answer));
    }
    assert_eq!(seen, [2, 1, 0]);

    let limited = h.post(&path, hello()).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.body, problems::RATE_LIMITED);
    assert_eq!(remaining(&limited), 0);
    let reset: i64 = limited.header("x-rate-limit-reset").parse().unwrap();
    assert!(reset > h.clock.now().timestamp());
    assert!(reset <= h.clock.now().timestamp() + 61);
    assert_eq!(h.sim.sent_dms().len(), 3, "a rate-limited send is not a DM");
    assert_eq!(h.sim.counters().rate_limited, 1);

    // Still inside the window: still refused, and counted.
    h.clock.advance(Duration::from_secs(30));
    assert_eq!(h.post(&path, hello()).await.status, 429);

    h.clock.advance(Duration::from_secs(30));
    let recovered = h.post(&path, hello()).await;
    assert_eq!(recovered.status, 201, "{}", recovered.body);
    assert_eq!(remaining(&recovered), 2);
}

#[tokio::test]
async fn refused_sends_count_against_the_window() {
    let h = harness().await;
    h.sim.set_fault(
        h.user_id(),
        Fault::RateLimitWindow {
            limit: 2,
            window_secs: 60,
        },
    );
    let path = with_participant(RECIPIENT);
    assert_eq!(h.post(&path, "{}").await.status, 400);
    assert_eq!(h.post(&path, hello()).await.status, 201);
    assert_eq!(h.post(&path, hello()).await.status, 429);
}

#[tokio::test]
async fn clearing_faults_restores_the_configured_window() {
    let h = harness().await;
    h.sim.set_fault(
        h.user_id(),
        Fault::RateLimitWindow {
            limit: 1,
            window_secs: 3600,
        },
    );
    let path = with_participant(RECIPIENT);
    assert_eq!(h.post(&path, hello()).await.status, 201);
    assert_eq!(h.post(&path, hello()).await.status, 429);
    h.sim.clear_faults(h.user_id());
    let answer = h.post(&path, hello()).await;
    assert_eq!(answer.status, 201);
    assert_eq!(answer.header("x-rate-limit-limit"), "1000");
}

#[tokio::test]
async fn windows_are_per_account() {
    let h = harness().await;
    let other = Account::generate("other_brand");
    h.sim.add_account(other.clone());
    h.sim.set_fault(
        h.user_id(),
        Fault::RateLimitWindow {
            limit: 1,
            window_secs: 60,
        },
    );
    let path = with_participant(RECIPIENT);
    assert_eq!(h.post(&path, hello()).await.status, 201);
    assert_eq!(h.post(&path, hello()).await.status, 429);
    assert_eq!(h.post_as(&other, &path, hello()).await.status, 201);
}
