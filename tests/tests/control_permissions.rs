//! The operator's guide's recipe for who may manage channels ("Who may manage channels",
//! docs/operator.md) holds on a real RabbitMQ: run as written, in a throwaway virtual
//! host with throwaway users (`t-<unix secs>-<random>`, deleted afterwards, and swept
//! after an hour if a run died), it lets the CRM's user publish commands to
//! `xbridge.control` and the bridge's user not, keeps the CRM to its own names (it can
//! neither read the commands nor route anything into `xbridge.incoming`), and records
//! the two ways the bridge's user still reaches its control queue, which the bridge's
//! own exchange and `user_id` check is for. Needs `rabbitmqctl` on the `PATH` able to
//! reach the test broker.

use std::process::Command;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
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

/// How long a throwaway may outlive its run before the next run deletes it.
const STALE_SECS: u64 = 3600;

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// The creation time of a name of this test (`t-<secs>-<hex>` with an optional
/// `-bridge` or `-crm`), or `None` for anyone else's name.
fn created_at(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("t-")?;
    let (secs, rest) = rest.split_once('-')?;
    let id = rest
        .strip_suffix("-bridge")
        .or_else(|| rest.strip_suffix("-crm"))
        .unwrap_or(rest);
    let hex = id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit());
    hex.then(|| secs.parse().ok()).flatten()
}

/// Deletes the virtual hosts and users a run of this test left behind more than
/// [`STALE_SECS`] ago (a run that was killed never drops its [`Throwaway`]).
fn sweep_stale() {
    let now = unix_secs();
    for (list, delete) in [
        (
            &["list_vhosts", "-q", "--no-table-headers", "name"][..],
            "delete_vhost",
        ),
        (
            &["list_users", "-q", "--no-table-headers"][..],
            "delete_user",
        ),
    ] {
        let Ok(output) = Command::new("rabbitmqctl").args(list).output() else {
            return;
        };
        let listed = String::from_utf8_lossy(&output.stdout).into_owned();
        // One per line; a user's line goes on with its tags.
        for name in listed
            .lines()
            .filter_map(|line| line.split_whitespace().next())
        {
            if created_at(name).is_some_and(|at| at + STALE_SECS < now) {
                let _ = Command::new("rabbitmqctl").args([delete, name]).output();
            }
        }
    }
}

impl Throwaway {
    fn new() -> Throwaway {
        sweep_stale();
        let rand = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let id = format!("{}-{rand}", unix_secs());
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
    publish_with(connection, exchange, key, BasicProperties::default()).await
}

/// Publishes a command body with `user_id` = `user` (as the broker vouches for it).
async fn publish_as(
    connection: &Connection,
    user: &str,
    exchange: &str,
    key: &str,
) -> Result<(), String> {
    let properties = BasicProperties::default().with_user_id(user.into());
    publish_with(connection, exchange, key, properties).await
}

/// Publishes a command body with `properties` on a channel of its own and waits
/// for the broker's confirm.
async fn publish_with(
    connection: &Connection,
    exchange: &str,
    key: &str,
    properties: BasicProperties,
) -> Result<(), String> {
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
            properties,
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

/// Declares a queue with `arguments`, on a channel of its own.
async fn declare_queue(
    connection: &Connection,
    queue: &str,
    arguments: FieldTable,
) -> Result<(), String> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::default(), arguments)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Binds `queue` to `exchange` with `#`, on a channel of its own.
async fn bind(connection: &Connection, queue: &str, exchange: &str) -> Result<(), String> {
    let channel = connection
        .create_channel()
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

/// A table of one string argument.
fn argument(key: &str, value: &str) -> FieldTable {
    let mut table = FieldTable::default();
    table.insert(key.into(), AMQPValue::LongString(value.into()));
    table
}

/// Takes the next message of `queue`, if any: (exchange it came from, its `user_id`).
async fn take(connection: &Connection, queue: &str) -> Option<(String, Option<String>)> {
    let channel = connection.create_channel().await.unwrap();
    let message = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()?;
    let user = message
        .properties
        .user_id()
        .as_ref()
        .map(|u| u.as_str().to_owned());
    Some((message.delivery.exchange.as_str().to_owned(), user))
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
        "the CRM declares a queue among the bridge's names",
    );
    declare_queue(&crm, "crm.spy", FieldTable::default())
        .await
        .expect("the CRM declares a queue of its own");
    refused(
        bind(&crm, "crm.spy", "xbridge.control").await,
        "the CRM reads the commands through a queue of its own",
    );
    crm_cannot_route_into_incoming(&crm).await;

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
    bridge_reaches_its_control_queue(&bridge, &names.bridge).await;
}

/// The CRM's ways to get a message into `xbridge.incoming` through objects of its own
/// are all refused when it declares them (RabbitMQ checks `write` on a dead-letter or
/// alternate exchange, and on an exchange-to-exchange binding's destination).
async fn crm_cannot_route_into_incoming(crm: &Connection) {
    refused(
        declare_queue(
            crm,
            "crm.dlx",
            argument("x-dead-letter-exchange", "xbridge.incoming"),
        )
        .await,
        "the CRM dead-letters into xbridge.incoming",
    );
    refused(
        {
            let alternate = argument("alternate-exchange", "xbridge.incoming");
            let channel = crm.create_channel().await.unwrap();
            channel
                .exchange_declare(
                    "crm.ae".into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions::default(),
                    alternate,
                )
                .await
                .map_err(|e| e.to_string())
        },
        "the CRM routes unroutable messages into xbridge.incoming",
    );
    declare_exchange(crm, "crm.fanout", ExchangeKind::Fanout)
        .await
        .expect("the CRM declares an exchange of its own");
    refused(
        {
            let channel = crm.create_channel().await.unwrap();
            channel
                .exchange_bind(
                    "xbridge.incoming".into(),
                    "crm.fanout".into(),
                    "#".into(),
                    ExchangeBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| e.to_string())
        },
        "the CRM binds xbridge.incoming to an exchange of its own",
    );
}

/// Documented facts, not wishes: the bridge's user reaches its own control queue
/// through `amq.default` (its write pattern needs it for the poll leases) and by binding
/// the queue to an exchange it may read. Both SUCCEED at the broker today; what refuses
/// such a command is the bridge itself, which will run a command only when it was
/// delivered from `xbridge.control` with a `user_id` of `amqp.control.allowed_users`
/// (docs/operator.md, "Who may manage channels"). The assertions show that both
/// injections are told apart by exactly those two properties.
async fn bridge_reaches_its_control_queue(bridge: &Connection, user: &str) {
    publish_as(bridge, user, "", "xbridge.control.replica-1")
        .await
        .expect("the bridge's user publishes into its control queue via amq.default");
    bind(bridge, "xbridge.control.replica-1", "xbridge.incoming")
        .await
        .expect("the bridge's user binds its control queue to xbridge.incoming");
    publish_as(bridge, user, "xbridge.incoming", "channel.upsert")
        .await
        .expect("the bridge's user publishes through that binding");
    let queue = "xbridge.control.replica-1";
    let first = take(bridge, queue)
        .await
        .expect("the injection via amq.default");
    assert_eq!(first, (String::new(), Some(user.to_owned())));
    let second = take(bridge, queue)
        .await
        .expect("the injection via a binding");
    assert_eq!(
        second,
        ("xbridge.incoming".to_owned(), Some(user.to_owned()))
    );
}
