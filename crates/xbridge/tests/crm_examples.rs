//! The CRM client examples an integrator copies (docs/examples) work against
//! a real bridge: each one, run as a child process on the real RabbitMQ,
//! receives a customer's DM from the simulated X once (a repeat of the event
//! is skipped), tells that the channel is out of credits, and sees the reply
//! it published go out to X.
//!
//! The examples need their AMQP clients: pika in the Python on the `PATH`
//! and `node_modules` in docs/examples/node, which `bash .ci/test` installs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

use common::start_bridge;
use x_simulator::{Customer, Fault};
use xbridge_test_support::{amqp_url, spawn_app, TestApp, TestOptions, PATIENCE};

/// What the examples answer every DM with.
const AUTO_REPLY: &str = "Thanks for your message! An agent will answer shortly.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_handles_a_dm_once_and_its_reply_is_sent() {
    exercise(Example::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_example_handles_a_dm_once_and_its_reply_is_sent() {
    exercise(Example::Node).await;
}

#[test]
fn the_python_example_pins_the_pika_that_ci_installs() {
    let pin = |file: &str| {
        std::fs::read_to_string(repo().join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"))
            .lines()
            .find(|l| l.starts_with("pika=="))
            .unwrap_or_else(|| panic!("{file} pins pika"))
            .to_owned()
    };
    assert_eq!(
        pin("docs/examples/python/requirements.txt"),
        pin(".ci/requirements.txt")
    );
}

/// The whole run for one example: a DM arrives and a copy of its event
/// follows it, the channel is out of credits when the example replies, then
/// credits return.
async fn exercise(example: Example) {
    example.check_installed();
    let app = spawn_app(TestOptions {
        inbound: "listen = \"127.0.0.1:0\"\n".into(),
        inbound_mode: Some("webhook".into()),
        ..TestOptions::default()
    })
    .await;
    let bridge = start_bridge(&app).await;
    let addr = bridge.webhook_addr.expect("the webhook is served");
    app.subscribe_webhook("acme", &format!("http://{addr}/webhooks/acme"))
        .await;
    let user = app.user_id("acme");
    let jane = Customer::generate("jane_doe");

    // The event waits in the incoming queue with a repeat behind it, as after
    // a rare double publish: the example must handle it once.
    let tap = Tap::bind(&app, "acme.message.received").await;
    let dm = app
        .simulator
        .customer_dm(&user, &jane, "Where is my order?", None);
    let received_id = tap.republish_next().await;
    assert_eq!(received_id, format!("acme:{}:received", dm.id));
    // The reply will find the account out of credits.
    app.simulator.set_fault(&user, Fault::CreditsDepleted);

    let mut run = example.start(&app);
    run.wait_for(
        "message.received",
        &[("event_id", &dm.id), ("sender", &jane.user_id)],
    )
    .await;
    run.wait_for("duplicate", &[("message_id", &received_id)])
        .await;
    run.wait_for(
        "channel.state",
        &[("channel", "acme"), ("state", "credits_exhausted")],
    )
    .await;
    app.simulator.clear_faults(&user);
    let reply_id = format!("auto-{}", dm.id);
    let sent = run
        .wait_for("message.sent", &[("message_id", &reply_id)])
        .await;
    let status = run.wait().await;
    assert!(
        status.success(),
        "the example ends well: {status}\n{}",
        run.output()
    );

    // X got the reply once, and the example saw X's id for it.
    let dms = app.wait_for_dms("acme", 1).await;
    assert_eq!(dms.len(), 1, "{dms:?}");
    assert_eq!(dms[0].text, AUTO_REPLY);
    assert_eq!(
        dms[0].participant_id.as_deref(),
        Some(jane.user_id.as_str())
    );
    assert!(
        sent.contains(&format!(" dm_event_id={}", dms[0].dm_event_id)),
        "{sent}"
    );
    assert_eq!(run.count("message.received"), 1, "{}", run.output());
    assert_eq!(run.count("published"), 1, "{}", run.output());

    bridge.stop().await;
    app.cleanup().await;
}

/// The root of the repository, where the examples live.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[derive(Debug, Clone, Copy)]
enum Example {
    Python,
    Node,
}

impl Example {
    /// The interpreter and script, as docs/examples/README.md tells an integrator to run them.
    fn program(self) -> (&'static str, &'static str) {
        match self {
            Example::Python => ("python3", "docs/examples/python/crm_client.py"),
            Example::Node => ("node", "docs/examples/node/crm-client.js"),
        }
    }

    /// Fails with what to run when the example's AMQP client is missing.
    fn check_installed(self) {
        let runs = |program: &str, args: &[&str]| {
            std::process::Command::new(program)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let (installed, needs) = match self {
            Example::Python => (
                runs("python3", &["-c", "import pika"]),
                "pika for the python3 on the PATH",
            ),
            Example::Node => (
                runs("node", &["--version"])
                    && repo()
                        .join("docs/examples/node/node_modules/amqplib")
                        .is_dir(),
                "node on the PATH and amqplib in docs/examples/node/node_modules",
            ),
        };
        assert!(
            installed,
            "the {self:?} CRM example needs {needs}: run the tests with `bash .ci/test`, which \
             installs it"
        );
    }

    /// Starts the example on this test's topology, waiting for its reply's
    /// outcome (`--once`), with its own timeout beyond the test's.
    fn start(self, app: &TestApp) -> ExampleRun {
        let (interpreter, script) = self.program();
        let timeout = (PATIENCE * 4).as_secs().to_string();
        let mut command = Command::new(interpreter);
        command
            .arg(repo().join(script))
            .args(["--once", "--timeout", &timeout])
            .env("AMQP_URL", amqp_url())
            .env("XBRIDGE_OUTGOING_EXCHANGE", &app.names.outgoing_exchange)
            .env("XBRIDGE_INCOMING_QUEUE", &app.names.incoming_queue)
            .env("XBRIDGE_CHANNEL", "acme");
        ExampleRun::spawn(self, command)
    }
}

/// A running example, with every line it printed.
struct ExampleRun {
    example: Example,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    new_line: Arc<Notify>,
}

impl ExampleRun {
    fn spawn(example: Example, mut command: Command) -> ExampleRun {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting the {example:?} example: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let new_line = Arc::new(Notify::new());
        collect(child.stdout.take(), "", &lines, &new_line);
        collect(child.stderr.take(), "stderr: ", &lines, &new_line);
        ExampleRun {
            example,
            child,
            lines,
            new_line,
        }
    }

    /// Waits for a line `<what> ... key=value ...` with every field given;
    /// returns it.
    async fn wait_for(&self, what: &str, fields: &[(&str, &str)]) -> String {
        let wait = async {
            loop {
                let notified = self.new_line.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(line) = self.find(what, fields) {
                    return line;
                }
                notified.await;
            }
        };
        tokio::time::timeout(PATIENCE, wait).await.unwrap_or_else(|_| {
            panic!(
                "waited {PATIENCE:?} for the {:?} example to print {what} {fields:?}; it printed:\n{}",
                self.example,
                self.output()
            )
        })
    }

    fn find(&self, what: &str, fields: &[(&str, &str)]) -> Option<String> {
        let lines = self.lines.lock().expect("lines");
        lines
            .iter()
            .find(|line| {
                let mut words = line.split(' ');
                words.next() == Some(what)
                    && fields.iter().all(|(key, value)| {
                        line.split(' ').any(|word| word == format!("{key}={value}"))
                    })
            })
            .cloned()
    }

    /// How many lines start with `<what> `.
    fn count(&self, what: &str) -> usize {
        let prefix = format!("{what} ");
        let lines = self.lines.lock().expect("lines");
        lines.iter().filter(|l| l.starts_with(&prefix)).count()
    }

    fn output(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }

    async fn wait(&mut self) -> ExitStatus {
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the {:?} example did not exit after its reply was sent:\n{}",
                    self.example,
                    self.output()
                )
            })
            .expect("exit status");
        status
    }
}

/// Collects the lines of `pipe` (prefixed) and wakes whoever waits for one.
fn collect(
    pipe: Option<impl AsyncRead + Unpin + Send + 'static>,
    prefix: &'static str,
    lines: &Arc<Mutex<Vec<String>>>,
    new_line: &Arc<Notify>,
) {
    let pipe = pipe.expect("piped");
    let (lines, new_line) = (lines.clone(), new_line.clone());
    tokio::spawn(async move {
        let mut reader = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            eprintln!("[example] {prefix}{line}");
            lines.lock().expect("lines").push(format!("{prefix}{line}"));
            new_line.notify_waiters();
        }
    });
}

/// A private queue bound to the incoming exchange: it sees a copy of what
/// the bridge publishes without taking it from the CRM's queue, and
/// publishes the copy again, the way a repeat would arrive.
struct Tap {
    connection: Connection,
    channel: lapin::Channel,
    consumer: lapin::Consumer,
    exchange: String,
}

impl Tap {
    async fn bind(app: &TestApp, routing_key: &str) -> Tap {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("the tap connects");
        let channel = connection.create_channel().await.expect("a channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the tap's queue");
        let exchange = app.names.incoming_exchange.clone();
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.as_str().into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bound");
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "crm-examples-tap".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume the tap");
        Tap {
            connection,
            channel,
            consumer,
            exchange,
        }
    }

    /// Waits for the next event and publishes it again, body, routing key and
    /// properties unchanged; returns its AMQP `message_id`.
    async fn republish_next(mut self) -> String {
        let delivery = tokio::time::timeout(PATIENCE, self.consumer.next())
            .await
            .expect("the bridge published the DM")
            .expect("the tap's consumer runs")
            .expect("a delivery");
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                delivery.routing_key.clone(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &delivery.data,
                delivery.properties.clone(),
            )
            .await
            .expect("publish the repeat")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "the broker took the repeat");
        // Closing deletes the tap's queue.
        let _ = self.connection.close(200, "done".into()).await;
        delivery
            .properties
            .message_id()
            .as_ref()
            .expect("events carry a message_id")
            .as_str()
            .to_owned()
    }
}
