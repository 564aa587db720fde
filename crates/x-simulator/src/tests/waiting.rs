use super::*;
use crate::Fault;

#[tokio::test]
async fn wait_for_dms_wakes_when_the_dms_arrive() {
    let h = harness().await;
    let waiter = {
        let sim = h.sim.clone();
        let user_id = h.user_id().to_string();
        tokio::spawn(async move { sim.wait_for_dms(&user_id, 2).await })
    };
    let path = with_participant(RECIPIENT);
    h.post(&path, r#"{"text":"one"}"#).await;
    h.post(&path, r#"{"text":"two"}"#).await;
    let dms = promptly(waiter).await.unwrap();
    let texts: Vec<_> = dms.iter().map(|dm| dm.text.as_str()).collect();
    assert_eq!(texts, ["one", "two"]);
}

#[tokio::test]
async fn wait_for_dms_returns_at_once_when_enough_were_sent() {
    let h = harness().await;
    h.post(&with_participant(RECIPIENT), hello()).await;
    assert_eq!(promptly(h.sim.wait_for_dms(h.user_id(), 1)).await.len(), 1);
    assert!(promptly(h.sim.wait_for_dms(h.user_id(), 0)).await.len() == 1);
}

#[tokio::test]
async fn wait_for_dms_ignores_other_accounts() {
    let h = harness().await;
    let other = Account::generate("other_brand");
    h.sim.add_account(other.clone());
    let waiter = {
        let sim = h.sim.clone();
        let user_id = h.user_id().to_string();
        tokio::spawn(async move { sim.wait_for_dms(&user_id, 1).await })
    };
    h.post_as(&other, &with_participant(RECIPIENT), hello())
        .await;
    h.post(&with_participant(RECIPIENT), r#"{"text":"mine"}"#)
        .await;
    let dms = promptly(waiter).await.unwrap();
    assert_eq!(dms.len(), 1);
    assert_eq!(dms[0].text, "mine");
}

#[tokio::test]
async fn wait_for_requests_counts_refused_requests_too() {
    let h = harness().await;
    h.sim.set_fault(h.user_id(), Fault::CreditsDepleted);
    let waiter = {
        let sim = h.sim.clone();
        let user_id = h.user_id().to_string();
        tokio::spawn(async move { sim.wait_for_requests(&user_id, 2).await })
    };
    let path = with_participant(RECIPIENT);
    h.post(&path, hello()).await;
    h.post(&path, hello()).await;
    let requests = promptly(waiter).await.unwrap();
    assert_eq!(requests.len(), 2);
    assert!(requests
        .iter()
        .all(|r| r.status == 402 && r.method == "POST"));
    assert_eq!(requests[0].path, path);
    assert!(h.sim.sent_dms().is_empty());
}
