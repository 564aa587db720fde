//! The operator's guide's recipe for who may manage channels ("Who may manage channels",
//! docs/operator.md) holds on a real RabbitMQ: run as written, in a throwaway virtual
//! host with throwaway users (`t-<random>`, deleted afterwards), it lets the CRM's user
//! publish commands to `xbridge.control` and the bridge's user not, and keeps the CRM to
//! its own names. Needs `rabbitmqctl` on the `PATH` able to reach the test broker.

use std::process::Command;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

/// The fenced block below `<!-- recipe: control-permissions -->` in the operator's guide.
fn recipe() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operator.md");
    let guide = std::fs::read_to_string(path).expect("docs/operator.md");
    let after = guide
        .split_once("<!-- recipe: control-permissions -->")
        .expect("the guide marks its recipe")
        .1;
    let block = after.split_once("```sh\n").expect("a sh block").1;
    block
        .split_once("```")
        .expect("a closed block")
        .0
        .to_owned()
}

/// The throwaway names; deleted from the broker when dropped, whatever the test did.
struct Throwaway {
    vhost: String,
    bridge: String,
    crm: String,
    password: String,
}

impl Throwaway {
    fn new() -> Throwaway {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        Throwaway {
            vhost: format!("t-{id}"),
            bridge: format!("t-{id}-bridge"),
            crm: format!("t-{id}-crm"),
            password: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// Runs the recipe with these names in place of the guide's.
    fn apply(&self, recipe: &str) {
        let (names, rest) = recipe.split_once('\n').expect("a first line");
        assert!(
            names.starts_with("vhost="),
            "the recipe starts with its names: {names}"
        );
        let script = format!(
            "set -eu\nvhost={} bridge={} crm={}\n{rest}",
            self.vhost, self.bridge, self.crm
        );
        let output = Command::new("bash")
            .arg("-c")
            .arg(script)
            .env("BRIDGE_PASSWORD", &self.password)
            .env("CRM_PASSWORD", &self.password)
            .output()
            .expect("bash runs");
        assert!(
            output.status.success(),
            "the recipe failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn url(&self, user: &str) -> String {
        let base = xbridge_test_support::amqp_url();
        let host = base
            .split_once('@')
            .map(|(_, rest)| rest)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or("127.0.0.1:5672")
            .to_owned();
        format!("amqp://{user}:{}@{host}/{}", self.password, self.vhost)
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.vhost])
            .output();
        for user in [&self.bridge, &self.crm] {
            let _ = Command::new("rabbitmqctl")
                .args(["delete_user", user])
                .output();
        }
    }
}

/// Publishes one message on a channel of its own and waits for the broker's confirm:
/// `Err` with the broker's refusal (a closed channel) when the user may not.
async fn publish(connection: &Connection, exchange: &str, key: &str) -> Result<(), String> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let confirm = channel
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            br#"{"command":"channel.check","command_id":"c","channel":"acme"}"#,
            BasicProperties::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    confirm.await.map_err(|e| e.to_string())?;
    // A refused publish closes the channel; a round trip makes sure it is seen.
    channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .map_err(|e| e.to_string())
}

async fn declare_exchange(
    connection: &Connection,
    name: &str,
    kind: ExchangeKind,
) -> Result<(), String> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(name.into(), kind, durable, FieldTable::default())
        .await
        .map_err(|e| e.to_string())
}

async fn declare_bound_queue(
    connection: &Connection,
    queue: &str,
    exchange: &str,
) -> Result<(), String> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), durable, FieldTable::default())
        .await
        .map_err(|e| e.to_string())?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())
}

fn refused(outcome: Result<(), String>, what: &str) {
    let error = outcome.expect_err(what);
    assert!(
        error.contains("ACCESS_REFUSED") || error.contains("403"),
        "{what}: {error}"
    );
}

#[tokio::test]
async fn only_the_crm_may_publish_commands() {
    let names = Throwaway::new();
    names.apply(&recipe());
    let bridge = Connection::connect(&names.url(&names.bridge), ConnectionProperties::default())
        .await
        .expect("the bridge's user connects to its virtual host");
    let crm = Connection::connect(&names.url(&names.crm), ConnectionProperties::default())
        .await
        .expect("the CRM's user connects to the virtual host");

    // The bridge declares its topology and binds a queue of its own to the commands.
    declare_exchange(&bridge, "xbridge.control", ExchangeKind::Topic)
        .await
        .unwrap();
    declare_exchange(&bridge, "xbridge.incoming", ExchangeKind::Topic)
        .await
        .unwrap();
    declare_exchange(&bridge, "xbridge.outgoing", ExchangeKind::Direct)
        .await
        .unwrap();
    declare_bound_queue(&bridge, "xbridge.control.replica-1", "xbridge.control")
        .await
        .unwrap();
    declare_bound_queue(&bridge, "xbridge.incoming", "xbridge.incoming")
        .await
        .unwrap();
    publish(&bridge, "xbridge.incoming", "acme.channel.state")
        .await
        .unwrap();
    publish(&bridge, "", "xbridge.poll-lease.acme")
        .await
        .unwrap();
    refused(
        publish(&bridge, "xbridge.control", "channel.upsert").await,
        "the bridge publishes a command",
    );

    // The CRM publishes replies and commands, and nothing else.
    publish(&crm, "xbridge.control", "channel.check")
        .await
        .unwrap();
    publish(&crm, "xbridge.outgoing", "acme").await.unwrap();
    declare_bound_queue(&crm, "crm.events", "xbridge.incoming")
        .await
        .unwrap();
    refused(
        publish(&crm, "xbridge.control", "anything.else").await,
        "a routing key that is no command",
    );
    refused(
        publish(&crm, "xbridge.incoming", "acme.message.sent").await,
        "the CRM forges an event",
    );
    refused(
        declare_exchange(&crm, "xbridge.control", ExchangeKind::Topic).await,
        "the CRM redeclares the exchange",
    );
    refused(
        declare_bound_queue(&crm, "xbridge.control.spy", "xbridge.control").await,
        "the CRM reads the commands",
    );

    let channel = bridge.create_channel().await.unwrap();
    let command = channel
        .basic_get(
            "xbridge.control.replica-1".into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the CRM's command reached the bridge's queue");
    assert_eq!(command.delivery.routing_key.as_str(), "channel.check");
}
