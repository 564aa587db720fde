//! `xbridge check` against the simulator: the right diagnosis and fix for
//! each way a channel's X setup can be wrong, exit 0 only when all are
//! ready, and never a secret in the output.

use std::path::Path;

use x_simulator::Fault;
use xbridge_test_support::{spawn_app, TestApp, TestOptions};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_xbridge"))
}

async fn check(app: &TestApp) -> (bool, String) {
    let output = tokio::process::Command::new(binary())
        .arg("check")
        .arg("--config")
        .arg(app.write_config())
        .output()
        .await
        .expect("xbridge check runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for (_, account) in &app.accounts {
        for secret in [
            &account.consumer_key,
            &account.consumer_secret,
            &account.access_token,
            &account.access_token_secret,
            &account.bearer_token,
        ] {
            assert!(
                !text.contains(secret.as_str()),
                "a secret was printed:\n{text}"
            );
        }
    }
    (output.status.success(), text)
}

fn polled() -> TestOptions {
    TestOptions {
        inbound_mode: Some("poll".into()),
        ..TestOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_channel_passes_and_shows_its_account() {
    let app = spawn_app(polled()).await;
    let (ok, text) = check(&app).await;
    assert!(ok, "{text}");
    let account = app.account("acme");
    assert!(
        text.contains(&format!("@{} (id {})", account.username, account.user_id)),
        "{text}"
    );
    assert!(text.contains("ready"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_gets_its_diagnosis_and_fix() {
    let cases = [
        (Fault::Unauthorized, "X refuses the credentials (HTTP 401)"),
        (
            Fault::MissingPermission,
            "\"Read and write and Direct message\", then regenerate",
        ),
        (Fault::NotEnrolled, "not attached to a Project"),
        (Fault::CreditsDepleted, "no credits"),
    ];
    for (fault, expected) in cases {
        let app = spawn_app(polled()).await;
        app.simulator.set_fault(&app.user_id("acme"), fault.clone());
        let (ok, text) = check(&app).await;
        assert!(!ok, "{fault:?} must fail the check:\n{text}");
        assert!(
            text.contains(expected),
            "{fault:?}: expected {expected:?} in:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_channel_without_a_webhook_is_not_ready() {
    let app = spawn_app(TestOptions::default()).await;
    let (ok, text) = check(&app).await;
    assert!(!ok, "{text}");
    assert!(text.contains("no webhook is registered"), "{text}");
    assert!(text.contains("xbridge webhook register"), "{text}");
}
