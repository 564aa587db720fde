//! `XBRIDGE_A__B` environment variables override the file. Alone in its own
//! test binary: the environment is process-wide, and a variable set here
//! would change what the configuration unit tests read in parallel.

use xbridge_core::config::Settings;

#[test]
fn nested_settings_can_come_from_the_environment() {
    let toml = r#"
        [amqp]
        url = "amqp://guest:guest@127.0.0.1:5672/%2f"

        [[channels]]
        name = "acme"
        consumer_key = "ck"
        consumer_secret = "cs"
        access_token = "at"
        access_token_secret = "ats"
        bearer_token = "bt"
    "#;
    std::env::set_var("XBRIDGE_INBOUND__MEDIA__MAX_BYTES", "4096");
    std::env::set_var("XBRIDGE_INBOUND__WEBHOOK_CHECK_INTERVAL", "90s");
    let settings = Settings::from_toml(toml);
    std::env::remove_var("XBRIDGE_INBOUND__MEDIA__MAX_BYTES");
    std::env::remove_var("XBRIDGE_INBOUND__WEBHOOK_CHECK_INTERVAL");
    let settings = settings.unwrap();
    assert_eq!(settings.inbound.media.max_bytes, 4096);
    assert_eq!(
        settings.inbound.webhook_check_interval,
        std::time::Duration::from_secs(90)
    );
}
