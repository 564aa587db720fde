use super::*;
use crate::{Customer, Fault};

#[tokio::test]
async fn known_users_are_found_with_a_user_or_an_app_token() {
    let h = harness().await;
    let customer = Customer::generate("jane_doe");
    h.sim.add_customer(customer.clone());

    let answer = h
        .get(&format!(
            "/2/users/{}?user.fields=profile_image_url",
            customer.user_id
        ))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.json(),
        serde_json::json!({ "data": {
            "id": customer.user_id,
            "name": "Jane Doe",
            "username": "jane_doe",
            "profile_image_url": customer.profile_image_url,
        }})
    );

    let by_app = h
        .bearer(
            &h.account,
            reqwest::Method::GET,
            &format!("/2/users/{}", h.user_id()),
            None,
        )
        .await;
    assert_eq!(by_app.status, 200, "{}", by_app.body);
    assert_eq!(
        by_app.json(),
        serde_json::json!({ "data": {
            "id": h.user_id(),
            "name": h.account.name,
            "username": h.account.username,
        }}),
        "default fields only, as on X"
    );
    assert_eq!(h.sim.counters().users_read, 2);
    assert_eq!(h.sim.requests_for(h.user_id()).len(), 2);
}

#[tokio::test]
async fn customers_who_wrote_are_known() {
    let h = harness().await;
    let customer = Customer::generate("writer");
    h.sim.customer_dm(h.user_id(), &customer, "hi", None);
    let answer = h.get(&format!("/2/users/{}", customer.user_id)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["data"]["username"], "writer");
}

#[tokio::test]
async fn unknown_users_get_404_with_x_problem() {
    let h = harness().await;
    let answer = h.get("/2/users/1234567890").await;
    assert_eq!(answer.status, 404, "{}", answer.body);
    let problem = answer.json();
    assert_eq!(problem["title"], "Not Found Error");
    assert_eq!(
        problem["type"],
        "https://api.twitter.com/2/problems/resource-not-found"
    );
    assert_eq!(
        problem["detail"],
        "Could not find user with id: [1234567890]."
    );
    assert_eq!(problem["errors"][0]["resource_id"], "1234567890");
    assert_eq!(problem["errors"][0]["parameter"], "id");
    assert_eq!(h.sim.counters().users_read, 0);

    let bad = h.get("/2/users/not-a-number").await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.json()["errors"][0]["parameters"]["id"][0],
        "not-a-number"
    );
    assert_eq!(h.get("/2/users/1?bogus=1").await.status, 400);
    let unsigned = h.send(h.client.get(h.url("/2/users/1"))).await;
    assert_eq!(unsigned.status, 401);
}

#[tokio::test]
async fn billing_faults_reach_user_lookups_but_dm_permission_does_not() {
    let h = harness().await;
    let path = format!("/2/users/{}", h.user_id());
    h.sim.set_fault(h.user_id(), Fault::CreditsDepleted);
    assert_eq!(h.get(&path).await.status, 402);
    h.sim.clear_faults(h.user_id());
    h.sim.set_fault(h.user_id(), Fault::MissingPermission);
    let answer = h.get(&path).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("x-access-level"), "read-write");
    h.sim.set_fault(
        h.user_id(),
        Fault::ReadServerError {
            status: 503,
            times: None,
        },
    );
    assert_eq!(h.get(&path).await.status, 503);
    // users/me is the credential check and stays unaffected.
    assert_eq!(h.get("/2/users/me").await.status, 200);
}
