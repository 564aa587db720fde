//! A scripted run leaves every query of the Grafana dashboard
//! (deploy/grafana/xbridge.json) non-empty: a real Prometheus scrapes a
//! bridge that receives DMs by webhook and by poll, sends a reply, fails one,
//! retries one through a delay queue, dead-letters one, holds the poll
//! lease and has a webhook X marked invalid revalidated; then each panel's
//! query, with Grafana's variables filled in, is asked of Prometheus' HTTP
//! API until it returns data. A panel left empty
//! is named. The same Prometheus loads deploy/prometheus/alerts.yml, and
//! the dead letter fires DeadLettersGrowing. In its own test binary, since
//! metrics are process-wide.
//!
//! Needs `prometheus` on the PATH (`bash .ci/test` installs it).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::start_bridge_with;
use serde_json::Value;
use x_simulator::{Customer, Fault};
use xbridge_test_support::{reply, spawn_app, Crm, Event, TestApp, TestOptions, PATIENCE};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A Prometheus server of this test's own: temporary storage, a free port,
/// scraping the bridge's ops port every second. Killed when dropped.
struct Prometheus {
    base: String,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

async fn start_prometheus(target: SocketAddr) -> Prometheus {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: dashboard-test\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules = root().join("deploy/prometheus/alerts.yml").display()
        ),
    )
    .expect("write prometheus.yml");
    let listen = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("a log file");
    let child = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={listen}"))
        .stdout(log.try_clone().expect("the log file"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|error| {
            panic!("cannot run prometheus ({error}): run the tests with `bash .ci/test`, which installs it")
        });
    let prometheus = Prometheus {
        base: format!("http://{listen}"),
        _child: child,
        _dir: dir,
    };
    let http = reqwest::Client::new();
    let ready = format!("{}/-/ready", prometheus.base);
    let became_ready = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Ok(answer) = http.get(&ready).send().await {
                if answer.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        became_ready.is_ok(),
        "prometheus did not become ready; its log:\n{}",
        std::fs::read_to_string(prometheus._dir.path().join("prometheus.log")).unwrap_or_default()
    );
    prometheus
}

/// One query of one panel.
struct PanelQuery {
    panel: String,
    ref_id: String,
    expr: String,
}

/// The value a variable has in the dashboard as shipped: a textbox's
/// default, "All" (`allValue`) for a query variable.
fn variable_values(dashboard: &Value) -> Vec<(String, String)> {
    let mut values = vec![
        ("$__rate_interval".to_owned(), "1m".to_owned()),
        ("$__interval".to_owned(), "15s".to_owned()),
        ("$__range".to_owned(), "1h".to_owned()),
    ];
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        let name = variable["name"].as_str().expect("a variable name");
        let value = match variable["type"].as_str() {
            Some("textbox" | "constant") => variable["query"].as_str(),
            Some("query") => variable["allValue"].as_str(),
            _ => continue,
        };
        let value = value.unwrap_or_else(|| panic!("variable {name} has no value to use"));
        values.push((format!("${{{name}}}"), value.to_owned()));
        values.push((format!("${name}"), value.to_owned()));
    }
    // Longest first, so `$channel` does not eat into `$channel_x`.
    values.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    values
}

fn collect_queries(panels: &Value, values: &[(String, String)], found: &mut Vec<PanelQuery>) {
    for panel in panels.as_array().into_iter().flatten() {
        collect_queries(&panel["panels"], values, found);
        for target in panel["targets"].as_array().into_iter().flatten() {
            let Some(expr) = target["expr"].as_str() else {
                continue;
            };
            let mut expr = expr.to_owned();
            for (name, value) in values {
                expr = expr.replace(name.as_str(), value);
            }
            assert!(!expr.contains('$'), "an unknown variable in {expr}");
            found.push(PanelQuery {
                panel: panel["title"].as_str().unwrap_or("?").to_owned(),
                ref_id: target["refId"].as_str().unwrap_or("?").to_owned(),
                expr,
            });
        }
    }
}

fn dashboard_queries() -> Vec<PanelQuery> {
    let text =
        std::fs::read_to_string(root().join("deploy/grafana/xbridge.json")).expect("the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let values = variable_values(&dashboard);
    let mut found = Vec::new();
    collect_queries(&dashboard["panels"], &values, &mut found);
    assert!(found.len() > 15, "the dashboard's queries were found");
    found
}

/// How many series `expr` returns now.
async fn result_count(http: &reqwest::Client, prometheus: &Prometheus, expr: &str) -> usize {
    let url = reqwest::Url::parse_with_params(
        &format!("{}/api/v1/query", prometheus.base),
        &[("query", expr)],
    )
    .expect("a query URL");
    let answer: Value = http
        .get(url)
        .send()
        .await
        .expect("prometheus answers")
        .json()
        .await
        .expect("a JSON answer");
    assert_eq!(answer["status"], "success", "{expr}: {answer}");
    answer["data"]["result"].as_array().map_or(0, Vec::len)
}

/// The next event of `kind` about `id` (its `message_id` or `event_id`).
async fn next_about(crm: &mut Crm, kind: &str, id: &str) -> Event {
    loop {
        let event = crm.next_event().await;
        let about = [&event.body["message_id"], &event.body["event_id"]];
        if event.body["type"] == kind && about.iter().any(|field| *field == id) {
            return event;
        }
    }
}

/// An Account Activity payload of one DM from `sender` to `user`.
fn activity(user: &str, sender: &Customer, event_id: &str, text: &str) -> String {
    serde_json::json!({
        "for_user_id": user,
        "direct_message_events": [{
            "type": "message_create", "id": event_id, "created_timestamp": "1516403560557",
            "message_create": {"target": {"recipient_id": user}, "sender_id": sender.user_id,
                "message_data": {"text": text}}
        }]
    })
    .to_string()
}

/// Customers write: to acme through its webhook (an event X delivers but
/// polling will not find), to pull (not subscribed) found by polling; a
/// POST with a bad signature is refused; X marks the webhook invalid and the
/// bridge has it revalidated.
async fn dms_arrive_by_webhook_and_by_poll(app: &TestApp, crm: &mut Crm, webhook: SocketAddr) {
    app.subscribe_webhook("acme", &format!("http://{webhook}/webhooks/acme"))
        .await;
    let webhook_id = app.simulator.webhooks()[0].id.clone();
    let jane = Customer::generate("jane_dash");
    app.simulator.add_customer(jane.clone());
    let acme = app.user_id("acme");
    let event_id = "1000000000000000777";
    let body = activity(&acme, &jane, event_id, "hello by webhook");
    let status = app
        .simulator
        .deliver_raw(&webhook_id, body.clone(), None)
        .await;
    assert_eq!(status, 200, "the webhook takes a signed POST");
    let event = next_about(crm, "message.received", event_id).await;
    assert_eq!(event.body["received_via"], "webhook");
    let status = app
        .simulator
        .deliver_raw(
            &webhook_id,
            body,
            Some("sha256=bm90IGEgc2lnbmF0dXJl".into()),
        )
        .await;
    assert_eq!(status, 401, "a bad signature is refused");

    let polled = app
        .simulator
        .customer_dm(&app.user_id("pull"), &jane, "hello by poll", None);
    let event = next_about(crm, "message.received", &polled.id).await;
    assert_eq!(event.body["received_via"], "poll");

    // X marks acme's webhook invalid (failed CRCs): the bridge revalidates it.
    assert!(app.simulator.invalidate_webhook(&webhook_id));
}

/// acme sends one reply, fails one for good (dead-lettered), and retries
/// one through a delay queue while X answers 503; pull's polls fail twice.
async fn replies_are_sent_failed_and_retried(app: &TestApp, crm: &mut Crm) {
    let acme = app.user_id("acme");
    crm.publish_reply("acme", &reply("m-sent", "944480690", "hello"))
        .await;
    next_about(crm, "message.sent", "m-sent").await;

    app.simulator.set_fault(
        &acme,
        Fault::RecipientRefuses {
            participant_id: "111222333".into(),
        },
    );
    crm.publish_reply("acme", &reply("m-refused", "111222333", "no"))
        .await;
    next_about(crm, "message.failed", "m-refused").await;
    app.simulator.clear_faults(&acme);

    let sends = "/2/dm_conversations/";
    let before = app
        .simulator
        .requests_for(&acme)
        .iter()
        .filter(|r| r.path.starts_with(sends))
        .count();
    app.simulator.set_fault(
        &acme,
        Fault::ServerError {
            status: 503,
            times: None,
        },
    );
    crm.publish_reply("acme", &reply("m-retried", "944480690", "again"))
        .await;
    // Past the immediate attempts (3): the fourth try came from a delay queue.
    tokio::time::timeout(
        PATIENCE,
        app.simulator.wait_for_requests_to(&acme, sends, before + 4),
    )
    .await
    .expect("the reply is retried after a delay");
    app.simulator.clear_faults(&acme);
    next_about(crm, "message.sent", "m-retried").await;

    let pull = app.user_id("pull");
    let polls = app.simulator.requests_for(&pull).len();
    app.simulator.set_fault(
        &pull,
        Fault::ReadServerError {
            status: 500,
            times: Some(2),
        },
    );
    app.wait_for_requests("pull", polls + 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_run_leaves_every_dashboard_query_non_empty() {
    let queries = dashboard_queries();
    let app = spawn_app(TestOptions {
        channels: vec!["acme".into(), "pull".into()],
        inbound:
            "listen = \"127.0.0.1:0\"\npoll_interval = \"50ms\"\nsafety_poll_interval = \"100ms\"\nwebhook_check_interval = \"100ms\"\n"
                .into(),
        inbound_mode: Some("both".into()),
        ..TestOptions::default()
    })
    .await;
    let bridge = start_bridge_with(&app, "[telemetry]\nlisten = \"127.0.0.1:0\"\n").await;
    let prometheus = start_prometheus(bridge.ops_addr.expect("the ops port")).await;
    // This CRM leaves the dead-letter queue alone, so its depth shows.
    let mut crm =
        Crm::connect_without_dead_letters(&xbridge_test_support::amqp_url(), app.names.clone())
            .await;

    dms_arrive_by_webhook_and_by_poll(&app, &mut crm, bridge.webhook_addr.expect("the webhook"))
        .await;
    replies_are_sent_failed_and_retried(&app, &mut crm).await;

    // The rules Prometheus loaded from alerts.yml see the dead letter too.
    let alert = PanelQuery {
        panel: "alert DeadLettersGrowing".to_owned(),
        ref_id: "-".to_owned(),
        expr: "ALERTS{alertname=\"DeadLettersGrowing\", alertstate=\"firing\", channel=\"acme\", reason=\"recipient_refuses\"}".to_owned(),
    };
    let http = reqwest::Client::new();
    let mut waiting: Vec<&PanelQuery> = queries.iter().chain([&alert]).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !waiting.is_empty() && tokio::time::Instant::now() < deadline {
        let mut still = Vec::new();
        for query in waiting {
            if result_count(&http, &prometheus, &query.expr).await == 0 {
                still.push(query);
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let empty: Vec<String> = waiting
        .iter()
        .map(|q| format!("\"{}\" ({}): {}", q.panel, q.ref_id, q.expr))
        .collect();
    assert!(
        empty.is_empty(),
        "dashboard panels without data after the scripted run:\n{}",
        empty.join("\n")
    );

    drop(prometheus);
    bridge.stop().await;
    app.cleanup().await;
}
