//! Changing the configuration file's channels while the bridge runs (SIGHUP),
//! and seeing what the running bridge serves (`/channels`, `xbridge channels
//! list`). The reload test runs the real binary and sends it a real SIGHUP.

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use x_simulator::Account;
use xbridge::app::Bridge;
use xbridge::ops::ChannelEntry;
use xbridge::reload::{ReloadError, Reloader};
use xbridge_core::config::Settings;
use xbridge_core::live_channels::{LiveChannel, LiveChannels, Origin};
use xbridge_test_support::{reply, spawn_app, BridgeProcess, TestApp, TestOptions, PATIENCE};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_xbridge"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// The test's configuration with only the channels `keep`, and the
/// operations port on `port`.
fn config_with(app: &TestApp, keep: &[&str], port: u16) -> String {
    let toml = app.config_toml();
    let mut blocks = toml.split("\n[[channels]]\n");
    let mut config = blocks.next().expect("the sections").to_owned();
    for block in blocks {
        if keep
            .iter()
            .any(|name| block.starts_with(&format!("name = \"{name}\"\n")))
        {
            config.push_str("\n[[channels]]\n");
            config.push_str(block);
        }
    }
    config + &format!("\n[telemetry]\nlisten = \"127.0.0.1:{port}\"\n")
}

/// Every credential of the test's accounts, and `more`.
fn credentials(app: &TestApp, more: &[&Account]) -> Vec<String> {
    app.accounts
        .iter()
        .map(|(_, account)| account)
        .chain(more.iter().copied())
        .flat_map(|a| {
            [
                a.consumer_key.clone(),
                a.consumer_secret.clone(),
                a.access_token.clone(),
                a.access_token_secret.clone(),
                a.bearer_token.clone(),
            ]
        })
        .collect()
}

async fn channels(port: u16) -> Vec<ChannelEntry> {
    let answer = reqwest::get(format!("http://127.0.0.1:{port}/channels"))
        .await
        .expect("/channels answers");
    assert_eq!(answer.status(), 200);
    answer.json().await.expect("a channel list")
}

/// Asks `/channels` until `done` holds of its answer (an event the test
/// cannot be told of otherwise); fails after [`PATIENCE`].
async fn wait_for_channels(port: u16, done: impl Fn(&[ChannelEntry]) -> bool) -> Vec<ChannelEntry> {
    let wait = async {
        loop {
            let served = channels(port).await;
            if done(&served) {
                return served;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    match tokio::time::timeout(PATIENCE, wait).await {
        Ok(served) => served,
        Err(_) => panic!(
            "waited {PATIENCE:?}; /channels is {:?}",
            channels(port).await
        ),
    }
}

fn names(entries: &[ChannelEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.name.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_the_edited_channels_and_an_invalid_file_changes_nothing() {
    let app = spawn_app(TestOptions {
        channels: vec!["acme".into(), "beta".into(), "gamma".into()],
        ..TestOptions::default()
    })
    .await;
    let port = free_port();
    let config = app.dir.path().join("reload.toml");
    std::fs::write(&config, config_with(&app, &["acme", "beta"], port)).unwrap();
    let bridge = BridgeProcess::start(binary(), &config, &[]);
    bridge.wait_for_log("outbound running", 1).await;
    assert_eq!(names(&channels(port).await), ["acme", "beta"]);

    // The edit: acme removed, gamma added, beta's access token rotated (X
    // now refuses the old one).
    let old_beta = app.account("beta").clone();
    let new_beta = Account {
        access_token: format!("{}-rotated{}", old_beta.user_id, "x".repeat(30)),
        ..old_beta.clone()
    };
    app.simulator.add_account(new_beta.clone());
    let edited = config_with(&app, &["beta", "gamma"], port)
        .replace(&old_beta.access_token, &new_beta.access_token);
    std::fs::write(&config, &edited).unwrap();
    bridge.hangup();
    bridge.wait_for_log("configuration reloaded", 1).await;
    let reloaded = bridge
        .logs()
        .into_iter()
        .find(|l| l.contains("configuration reloaded"))
        .unwrap();
    for count in ["added=1", "changed=1", "removed=1"] {
        assert!(reloaded.contains(count), "{reloaded}");
    }
    let served = channels(port).await;
    assert_eq!(names(&served), ["beta", "gamma"]);
    assert!(served.iter().all(|c| c.origin == "file"), "{served:?}");

    // An invalid edit: refused as a whole, every reason logged, nothing changed.
    let invalid = edited
        .replace("name = \"gamma\"", "name = \"Gamma Bad\"")
        .replace("max_attempts = 8", "max_attempts = 0");
    std::fs::write(&config, invalid).unwrap();
    bridge.hangup();
    bridge
        .wait_for_log("configuration reload refused as a whole", 1)
        .await;
    let errors: Vec<String> = bridge
        .logs()
        .into_iter()
        .filter(|l| l.contains("ERROR") && l.contains("configuration reload refused"))
        .collect();
    for field in ["channels[1].name", "outbound.retry.max_attempts"] {
        assert!(
            errors.iter().any(|l| l.contains(field)),
            "no error names {field}: {errors:#?}"
        );
    }
    let after = channels(port).await;
    assert_eq!(names(&after), names(&served), "the running channels stay");
    assert!(after.iter().all(|c| c.origin == "file"), "{after:?}");
    assert_eq!(bridge.count_logs("configuration reloaded"), 1);

    // The added channel and the changed one both send. The sides apply a
    // reload after it is logged: gamma is `ok` once its queue is declared and
    // consumed, and beta's change came before gamma's addition.
    wait_for_channels(port, |c| {
        c.iter()
            .any(|c| c.name == "gamma" && c.state.as_deref() == Some("ok"))
    })
    .await;
    let crm = app.crm().await;
    crm.publish_reply("gamma", &reply("r-1", "944480690", "from the new channel"))
        .await;
    crm.publish_reply("beta", &reply("r-2", "944480690", "with the new token"))
        .await;
    assert_eq!(
        app.wait_for_dms("gamma", 1).await[0].text,
        "from the new channel"
    );
    assert_eq!(
        app.wait_for_dms("beta", 1).await[0].text,
        "with the new token"
    );

    let (status, logs) = bridge.terminate_keeping_logs().await;
    assert!(status.success(), "{status:?}");
    let logs = logs.join("\n");
    for secret in credentials(&app, &[&new_beta]) {
        assert!(!logs.contains(&secret), "a credential is in the log");
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_list_names_each_origin_and_no_secret() {
    let app = spawn_app(TestOptions {
        channels: vec!["acme".into(), "crmchan".into()],
        ..TestOptions::default()
    })
    .await;
    let port = free_port();
    let config = app.dir.path().join("list.toml");
    std::fs::write(&config, config_with(&app, &["acme"], port)).unwrap();
    let bridge = Bridge::build(Settings::load(&config).unwrap())
        .await
        .unwrap();
    // A channel as the CRM's control commands add one.
    let crm_channel = Settings::from_toml(&config_with(&app, &["crmchan"], port))
        .unwrap()
        .channels
        .remove(0);
    bridge.live_channels().upsert(LiveChannel {
        origin: Origin::Crm,
        revision: 4,
        ..LiveChannel::from_file(crm_channel)
    });
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(bridge.run(shutdown.clone()));

    let table = list(&config, &[]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("CHANNEL"), "{table}");
    let row = |name: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_else(|| panic!("no row for {name}: {table}"))
    };
    assert_eq!(row("acme")[1..4], ["file", "0", "no"], "{table}");
    assert_eq!(row("crmchan")[1..4], ["crm", "4", "no"], "{table}");
    let json: Vec<ChannelEntry> = serde_json::from_str(&list(&config, &["--json"]).await).unwrap();
    assert_eq!(names(&json), ["acme", "crmchan"]);
    for secret in credentials(&app, &[]) {
        assert!(!table.contains(&secret), "a credential is in the table");
        assert!(
            !serde_json::to_string(&json).unwrap().contains(&secret),
            "a credential is in the JSON"
        );
    }
    shutdown.cancel();
    tokio::time::timeout(PATIENCE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    app.cleanup().await;
}

/// `xbridge channels list --config <config> <args>`'s output; fails unless
/// it succeeds.
async fn list(config: &Path, args: &[&str]) -> String {
    let output = tokio::process::Command::new(binary())
        .args(["channels", "list", "--config"])
        .arg(config)
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn channels_list_says_when_no_bridge_answers() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("xbridge.toml");
    // Only [telemetry] is read: the secrets of the rest need not resolve.
    std::fs::write(
        &config,
        format!(
            "[telemetry]\nlisten = \"0.0.0.0:{}\"\n[[channels]]\nname = \"acme\"\nconsumer_key = {{ env = \"XBRIDGE_TEST_SURELY_UNSET\" }}\n",
            free_port()
        ),
    )
    .unwrap();
    let output = tokio::process::Command::new(binary())
        .args(["channels", "list", "--config"])
        .arg(&config)
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no bridge answers at http://127.0.0.1:"),
        "{stderr}"
    );
    assert!(stderr.contains("is `xbridge run` running"), "{stderr}");
}

/// A configuration file for the reloader tests (no broker is reached).
fn file_config(dir: &Path, channels: &[(&str, &str)], extra: &str) -> std::path::PathBuf {
    let mut toml = format!("{extra}\n");
    for (name, token) in channels {
        toml.push_str(&format!(
            "[[channels]]\nname = \"{name}\"\nconsumer_key = \"ck\"\nconsumer_secret = \"cs\"\naccess_token = \"{token}\"\naccess_token_secret = \"ats\"\nbearer_token = \"bt\"\n"
        ));
    }
    let path = dir.join("xbridge.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

#[test]
fn a_file_channel_named_like_a_crm_channel_refuses_the_reload_as_a_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = file_config(dir.path(), &[("acme", "t1")], "");
    let running = Settings::load_with_sections(&path).unwrap();
    let live = Arc::new(LiveChannels::new(&running.settings.channels));
    let crm = Settings::load(&file_config(dir.path(), &[("shop", "t1")], ""))
        .unwrap()
        .channels
        .remove(0);
    live.upsert(LiveChannel {
        origin: Origin::Crm,
        revision: 1,
        ..LiveChannel::from_file(crm)
    });
    let before = live.current();
    file_config(
        dir.path(),
        &[("acme", "t2"), ("new", "t1"), ("shop", "t1")],
        "",
    );
    let reloader = Reloader::new(path, running, live.clone());
    match reloader.reload_and_log() {
        Err(ReloadError::NamedLikeCrm(names)) => assert_eq!(names, ["shop"]),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(Arc::ptr_eq(&before, &live.current()), "nothing changed");
    assert_eq!(live.get("shop").unwrap().origin, Origin::Crm);
}

#[test]
fn a_reload_past_max_channels_or_clashing_with_a_crm_channel_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bound = "[amqp]\nmax_channels = 2\n";
    let path = file_config(dir.path(), &[("acme", "t1")], bound);
    let running = Settings::load_with_sections(&path).unwrap();
    let live = Arc::new(LiveChannels::new(&running.settings.channels));
    let mut crm = Settings::load(&file_config(dir.path(), &[("shop", "t9")], ""))
        .unwrap()
        .channels
        .remove(0);
    crm.user_id = Some("42".into());
    live.upsert(LiveChannel {
        origin: Origin::Crm,
        revision: 1,
        ..LiveChannel::from_file(crm)
    });
    let before = live.current();
    let reloader = Reloader::new(path.clone(), running, live.clone());

    file_config(dir.path(), &[("acme", "t1"), ("new", "t2")], bound);
    match reloader.reload_and_log() {
        Err(ReloadError::TooManyChannels { file, crm, max }) => {
            assert_eq!((file, crm, max), (2, 1, 2))
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    file_config(dir.path(), &[("acme", "t1")], bound);
    let mut toml = std::fs::read_to_string(&path).unwrap();
    toml.push_str("user_id = \"42\"\n");
    std::fs::write(&path, toml).unwrap();
    match reloader.reload_and_log() {
        Err(ReloadError::ClashesWithCrm(reasons)) => {
            assert!(
                reasons[0].contains("acme") && reasons[0].contains("shop"),
                "{reasons:?}"
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The CRM's App (consumer_key "ck") with another secret.
    file_config(dir.path(), &[("acme", "t1")], bound);
    let toml = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, toml.replace("\"cs\"", "\"cs2\"")).unwrap();
    match reloader.reload_and_log() {
        Err(ReloadError::ClashesWithCrm(reasons)) => {
            assert!(reasons[0].contains("consumer_secret"), "{reasons:?}");
            assert!(!reasons[0].contains("cs2"), "no secret in {reasons:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The CRM's App (consumer_key "ck") with another secret.
    file_config(dir.path(), &[("acme", "t1")], bound);
    let toml = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, toml.replace("\"cs\"", "\"cs2\"")).unwrap();
    match reloader.reload_and_log() {
        Err(ReloadError::ClashesWithCrm(reasons)) => {
            assert!(reasons[0].contains("consumer_secret"), "{reasons:?}");
            assert!(!reasons[0].contains("cs2"), "no secret in {reasons:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(Arc::ptr_eq(&before, &live.current()), "nothing changed");
}

#[test]
fn a_reload_applies_the_channels_and_names_the_sections_a_restart_applies() {
    let dir = tempfile::tempdir().unwrap();
    let path = file_config(dir.path(), &[("acme", "t1"), ("beta", "t1")], "");
    let running = Settings::load_with_sections(&path).unwrap();
    let live = Arc::new(LiveChannels::new(&running.settings.channels));
    let reloader = Reloader::new(path, running, live.clone());
    file_config(
        dir.path(),
        &[("beta", "t2"), ("gamma", "t1")],
        "[outbound]\nshutdown_grace = \"1s\"\n",
    );
    let reloaded = reloader.reload_and_log().unwrap();
    assert_eq!(reloaded.added, ["gamma"]);
    assert_eq!(reloaded.changed, ["beta"]);
    assert_eq!(reloaded.removed, ["acme"]);
    assert_eq!(reloaded.restart_needed, ["outbound"]);
    let served: Vec<String> = live.current().keys().cloned().collect();
    assert_eq!(served, ["beta", "gamma"]);
    // Compared with what the process started with: still said next time.
    let again = reloader.reload_and_log().unwrap();
    assert_eq!(again.restart_needed, ["outbound"]);
    assert!(again.added.is_empty() && again.changed.is_empty() && again.removed.is_empty());
}

#[tokio::test]
async fn a_rotated_secret_file_is_reloaded_without_a_signal() {
    use secrecy::ExposeSecret as _;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("access_token");
    std::fs::write(&token, "old-token\n").unwrap();
    let path = file_config(dir.path(), &[("acme", "unused")], "");
    let toml = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"unused\"", &format!("{{ file = {token:?} }}"));
    std::fs::write(&path, toml).unwrap();
    let running = Settings::load_with_sections(&path).unwrap();
    let live = Arc::new(LiveChannels::new(&running.settings.channels));
    let reloader = Reloader::new(path, running, live.clone());
    let mut changes = live.subscribe();
    changes.mark_unchanged();
    let shutdown = CancellationToken::new();
    let watch = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            reloader
                .watch_secret_files(std::time::Duration::from_millis(20), shutdown)
                .await
        }
    });

    // As Kubernetes rotates a mounted secret: a new file in its place.
    let next = dir.path().join("access_token.new");
    std::fs::write(&next, "new-token\n").unwrap();
    std::fs::rename(&next, &token).unwrap();
    tokio::time::timeout(PATIENCE, changes.changed())
        .await
        .expect("the rotation is applied")
        .unwrap();
    let acme = live.get("acme").unwrap();
    assert_eq!(acme.settings.access_token.expose_secret(), "new-token");
    shutdown.cancel();
    watch.await.unwrap();
}
