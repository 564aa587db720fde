//! The deployment kit as an operator uses it: the Kubernetes manifests rendered by
//! kustomize (the one-replica base and the PostgreSQL overlay) pass the Kubernetes
//! schemas, and the configuration they carry passes `xbridge check-config` in the
//! environment and files the pod would have, with media URLs under the Ingress host,
//! a spool volume and a memory limit that fit it; the compose file passes the compose
//! specification and every service it starts by default has a health check for what
//! it runs; the Dockerfile passes hadolint.
//!
//! The checkers (kubectl, kubernetes-validate, check-jsonschema, hadolint) are put on
//! the PATH by `bash .ci/test`, the README's test command.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use base64::Engine as _;
use secrecy::ExposeSecret as _;
use serde_json::Value;
use xbridge_core::config::{Settings, StateBackend};

/// The Kubernetes release whose schemas the manifests must pass (kubectl here is 1.32).
const KUBERNETES_VERSION: &str = "1.32.0";

/// Custom resources the bundled schemas do not know; none is rendered today, and one
/// that is gets skipped by name here rather than failing the schema check.
const CUSTOM_KINDS: &[&str] = &["ServiceMonitor", "PodMonitor", "PrometheusRule"];

/// What the example Secrets hold in place of every real value.
const PLACEHOLDER: &str = "CHANGE-ME";

/// What this test fills placeholders with: long enough for every secret the
/// configuration checks (the media signing key needs 32 characters), and
/// base64 of 36 bytes, as `state.credentials_key` must be.
const DUMMY: &str = "dummyvalue0123456789abcdefghijklmnopqrstuvwxyzAB";

/// X's largest DM media (video), and the attachments one reply may carry, all
/// downloaded before the first is sent (docs/media.md, "From agents: reply attachments").
const LARGEST_MEDIA: u64 = 512 * MIB;
const MAX_ATTACHMENTS: u64 = xbridge_core::contract::MAX_ATTACHMENTS as u64;

const MIB: u64 = 1024 * 1024;

/// Loading settings in this process reads the environment, which is process-wide.
static ENV: Mutex<()> = Mutex::new(());

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs a checker, failing with how to get it when it is not installed.
fn tool(program: &str, args: &[&str]) -> Output {
    match Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "{program} is not on the PATH: run the tests with `bash .ci/test`, which installs it"
        ),
        Err(e) => panic!("{program} could not run: {e}"),
    }
}

fn succeed(program: &str, args: &[&str]) -> String {
    let output = tool(program, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{text}"
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn yaml_documents(text: &str) -> Vec<Value> {
    let mut documents = Vec::new();
    let mut current = String::new();
    for line in text.lines().chain(std::iter::once("---")) {
        if line.trim_end() == "---" {
            let document: Value = serde_norway::from_str(&current).expect("valid YAML");
            // kustomize v2 may emit an empty document.
            if document.as_object().is_some_and(|o| !o.is_empty()) {
                documents.push(document);
            }
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    documents
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {value:#}"))
}

fn array_at<'a>(value: &'a Value, pointer: &str) -> &'a [Value] {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn named<'a>(items: &'a [Value], name: &str) -> &'a Value {
    items
        .iter()
        .find(|item| item["name"] == name)
        .unwrap_or_else(|| panic!("nothing named {name} in {items:#?}"))
}

/// Bytes of a Kubernetes quantity such as `640Mi`, `6Gi` or `1000`.
fn quantity(text: &str) -> u64 {
    let units = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
    ];
    for (suffix, factor) in units {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<u64>().expect("a whole quantity") * factor;
        }
    }
    text.parse()
        .unwrap_or_else(|_| panic!("unsupported quantity {text}"))
}

/// One rendered kustomization, with the example Secrets an operator creates
/// beside it.
struct Rendered {
    documents: Vec<Value>,
    /// The example Secrets (`*.example.yaml`), which no kustomization renders.
    secrets: Vec<Value>,
}

impl Rendered {
    fn of(dir: &str, secret_files: &[&str]) -> Rendered {
        let yaml = succeed("kubectl", &["kustomize", dir]);
        let secrets = secret_files
            .iter()
            .flat_map(|file| {
                let text = std::fs::read_to_string(root().join(file))
                    .unwrap_or_else(|e| panic!("{file}: {e}"));
                yaml_documents(&text)
            })
            .collect();
        Rendered {
            documents: yaml_documents(&yaml),
            secrets,
        }
    }

    /// An example Secret by name.
    fn secret(&self, name: &str) -> &Value {
        self.secrets
            .iter()
            .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no example Secret {name}"))
    }

    fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.documents
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.find(kind, name)
            .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.documents
            .iter()
            .filter(|d| d["kind"] == kind)
            .collect()
    }

    /// A Secret's key, placeholders filled in as an operator would.
    fn secret_value(&self, secret: &str, key: &str) -> String {
        let secret = self.secret(secret);
        let value = match secret["stringData"][key].as_str() {
            Some(text) => text.to_owned(),
            None => {
                let encoded = str_at(secret, &format!("/data/{key}"));
                String::from_utf8(
                    base64::engine::general_purpose::STANDARD
                        .decode(encoded)
                        .expect("base64 data"),
                )
                .expect("UTF-8 secret")
            }
        };
        value.replace(PLACEHOLDER, DUMMY)
    }

    fn secret_keys(&self, secret: &str) -> Vec<String> {
        let secret = self.secret(secret);
        ["stringData", "data"]
            .iter()
            .filter_map(|field| secret[field].as_object())
            .flat_map(|map| map.keys().cloned())
            .collect()
    }

    /// Every rendered document passes the Kubernetes schemas, strictly (no unknown
    /// field), except custom resources, skipped by kind.
    fn validate(&self, dir: &str) {
        let files = tempfile::tempdir().unwrap();
        let mut checked = Vec::new();
        for (i, document) in self.documents.iter().chain(&self.secrets).enumerate() {
            let kind = document["kind"].as_str().unwrap_or_default();
            if CUSTOM_KINDS.contains(&kind) {
                continue;
            }
            let path = files.path().join(format!("{i}.json"));
            std::fs::write(&path, document.to_string()).unwrap();
            checked.push(path.to_string_lossy().into_owned());
        }
        let mut args = vec!["--strict", "--quiet", "-k", KUBERNETES_VERSION];
        args.extend(checked.iter().map(String::as_str));
        let output = tool("kubernetes-validate", &args);
        assert!(
            output.status.success(),
            "{dir} fails the Kubernetes {KUBERNETES_VERSION} schemas:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The `--config` the container runs with.
fn config_arg(container: &Value) -> &str {
    let args: Vec<&str> = array_at(container, "/args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    args.iter()
        .position(|a| *a == "--config")
        .map(|i| args[i + 1])
        .expect("the container names its --config")
}

/// `toml` with every quoted absolute path on one of `mounts` moved under `root`.
fn relocate(toml: &str, mounts: &[(String, Value)], root: &Path) -> String {
    let mut out = String::new();
    let mut rest = toml;
    while let Some(start) = rest.find("\"/") {
        out.push_str(&rest[..=start]);
        rest = &rest[start + 1..];
        let end = rest.find('"').unwrap_or(rest.len());
        let path = &rest[..end];
        let mounted = mounts
            .iter()
            .any(|(mount, _)| path == mount || path.starts_with(&format!("{mount}/")));
        if mounted {
            out.push_str(&root.display().to_string());
        }
        out.push_str(path);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The files and environment the bridge's container would get, laid out under a
/// temporary directory: every volume mount becomes a directory there, filled from
/// its ConfigMap or Secret.
struct Pod {
    root: tempfile::TempDir,
    env: BTreeMap<String, String>,
    config: PathBuf,
    /// Mount path to the volume mounted there.
    mounts: Vec<(String, Value)>,
    /// The mount paths mounted `readOnly`.
    read_only: Vec<String>,
}

impl Pod {
    fn of(kit: &Rendered, deployment: &Value, container: &Value) -> Pod {
        let root = tempfile::tempdir().unwrap();
        let mounts = Self::mount_volumes(kit, deployment, container, root.path());
        let env = Self::environment(kit, container);
        let config = Self::write_config(kit, container, &mounts, root.path());
        let read_only = array_at(container, "/volumeMounts")
            .iter()
            .filter(|m| m["readOnly"] == true)
            .map(|m| str_at(m, "/mountPath").to_owned())
            .collect();
        Pod {
            root,
            env,
            config,
            mounts,
            read_only,
        }
    }

    /// Every volume mount as a directory under `root`, Secrets' keys written as files
    /// with the volume's mode; longest mount path first, so a mount inside another
    /// is found as itself.
    fn mount_volumes(
        kit: &Rendered,
        deployment: &Value,
        container: &Value,
        root: &Path,
    ) -> Vec<(String, Value)> {
        use std::os::unix::fs::PermissionsExt;
        let volumes = array_at(deployment, "/spec/template/spec/volumes");
        let mut mounts = Vec::new();
        for mount in array_at(container, "/volumeMounts") {
            let path = str_at(mount, "/mountPath").to_owned();
            let volume = named(volumes, str_at(mount, "/name")).clone();
            let dir = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(&dir).unwrap();
            if let Some(name) = volume.pointer("/secret/secretName").and_then(Value::as_str) {
                let mode = volume
                    .pointer("/secret/defaultMode")
                    .and_then(Value::as_u64)
                    .unwrap_or(0o644) as u32;
                for key in kit.secret_keys(name) {
                    let file = dir.join(&key);
                    std::fs::write(&file, kit.secret_value(name, &key)).unwrap();
                    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
                }
            }
            mounts.push((path, volume));
        }
        mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        mounts
    }

    /// The container's environment: `envFrom` Secrets, then `env`.
    fn environment(kit: &Rendered, container: &Value) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for source in array_at(container, "/envFrom") {
            let name = str_at(source, "/secretRef/name");
            for key in kit.secret_keys(name) {
                env.insert(key.clone(), kit.secret_value(name, &key));
            }
        }
        for var in array_at(container, "/env") {
            let value = match var.get("value") {
                Some(value) => value.as_str().unwrap_or_default().to_owned(),
                None => kit.secret_value(
                    str_at(var, "/valueFrom/secretKeyRef/name"),
                    str_at(var, "/valueFrom/secretKeyRef/key"),
                ),
            };
            env.insert(str_at(var, "/name").to_owned(), value);
        }
        env
    }

    /// The file the container's `--config` names, taken from the ConfigMap mounted
    /// there, its paths moved under `root`.
    fn write_config(
        kit: &Rendered,
        container: &Value,
        mounts: &[(String, Value)],
        root: &Path,
    ) -> PathBuf {
        let config_at = config_arg(container);
        let (mount_path, volume) = mounts
            .iter()
            .find(|(path, _)| config_at.starts_with(&format!("{path}/")))
            .unwrap_or_else(|| panic!("{config_at} is on no volume"));
        let configmap = kit.get("ConfigMap", str_at(volume, "/configMap/name"));
        let item = &config_at[mount_path.len() + 1..];
        let key = array_at(volume, "/configMap/items")
            .iter()
            .find(|i| i["path"] == item)
            .map(|i| str_at(i, "/key"))
            .unwrap_or(item);
        let toml = relocate(str_at(configmap, &format!("/data/{key}")), mounts, root);
        let config = root.join(config_at.trim_start_matches('/'));
        std::fs::write(&config, toml).unwrap();
        config
    }

    /// The volume a path in the pod (as the configuration names it here) is on.
    fn volume_of(&self, local: &Path) -> (&str, &Value) {
        let in_pod = Path::new("/").join(
            local
                .strip_prefix(self.root.path())
                .unwrap_or_else(|_| panic!("{} is on no volume of the pod", local.display())),
        );
        self.mounts
            .iter()
            .find(|(path, _)| in_pod.starts_with(path))
            .map(|(path, volume)| (path.as_str(), volume))
            .unwrap_or_else(|| panic!("{} is on no volume of the pod", in_pod.display()))
    }

    fn check_config(&self, env: &BTreeMap<String, String>) -> (bool, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_xbridge"))
            .arg("check-config")
            .arg("--config")
            .arg(&self.config)
            .env_clear()
            .envs(env)
            .output()
            .expect("xbridge check-config runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    }

    /// The settings as `xbridge run` would load them in the pod.
    fn settings(&self) -> Settings {
        let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
        for (key, value) in &self.env {
            std::env::set_var(key, value);
        }
        let settings = Settings::load(&self.config);
        for key in self.env.keys() {
            std::env::remove_var(key);
        }
        settings.expect("the pod's configuration loads")
    }
}

enum Store {
    Embedded,
    Postgres,
}

fn check_kubernetes(dir: &str, secret_files: &[&str], store: Store) {
    let kit = Rendered::of(dir, secret_files);
    kit.validate(dir);
    for kind in [
        "Deployment",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Ingress",
    ] {
        assert!(!kit.of_kind(kind).is_empty(), "{dir} renders no {kind}");
    }

    let deployment = kit.get("Deployment", "xbridge");
    let containers = array_at(deployment, "/spec/template/spec/containers");
    let container = named(containers, "xbridge");
    check_secrets(dir, &kit, deployment, container);

    // A released image: the workspace version, never `latest`.
    let image = str_at(container, "/image");
    let tag = image.rsplit_once(':').map(|(_, tag)| tag).unwrap_or("");
    assert_eq!(
        tag,
        env!("CARGO_PKG_VERSION"),
        "{dir}: image {image} should carry the workspace version"
    );

    // The pod's configuration passes check-config, and fails with the example
    // signing key left in place.
    let pod = Pod::of(&kit, deployment, container);
    // `kubectl exec deploy/xbridge -- xbridge webhook register ...` (the README's
    // way to register the webhook) reads the file `run` reads.
    assert_eq!(
        pod.env.get("XBRIDGE_CONFIG").map(String::as_str),
        Some(config_arg(container)),
        "{dir}: XBRIDGE_CONFIG must name the --config of `run`, for the tools run in the pod"
    );
    let (ok, text) = pod.check_config(&pod.env);
    assert!(ok, "{dir}: check-config fails:\n{text}");
    assert!(!text.contains("warning"), "{dir}: {text}");
    assert!(
        !text.contains(DUMMY),
        "{dir}: a secret was printed:\n{text}"
    );
    let mut unchanged = pod.env.clone();
    unchanged.insert("XBRIDGE_MEDIA_SIGNING_KEY".into(), PLACEHOLDER.into());
    let (ok, text) = pod.check_config(&unchanged);
    assert!(
        !ok && text.contains("inbound.media.signing_key"),
        "{dir}: the example signing key must be refused:\n{text}"
    );

    let settings = pod.settings();
    check_media(dir, &kit, &settings);
    check_ports_and_probes(dir, &kit, deployment, container, &settings);
    check_network_policy(dir, &kit, &settings);
    check_spool(dir, &pod, &settings);
    check_writable(dir, &pod, deployment, container, &settings);
    check_memory(dir, container, &settings);
    check_termination(dir, deployment, container, &settings);

    let replicas = deployment["spec"]["replicas"].as_u64().unwrap_or(1);
    match (store, &settings.state.backend) {
        (Store::Embedded, StateBackend::Embedded { path }) => {
            let (_, volume) = pod.volume_of(path);
            assert!(
                volume.get("persistentVolumeClaim").is_some(),
                "{dir}: the state file must be on a persistent volume, not {volume}"
            );
            assert_eq!(replicas, 1, "{dir}: one process may open the state file");
            assert_eq!(str_at(deployment, "/spec/strategy/type"), "Recreate");
        }
        (Store::Postgres, StateBackend::Postgres { .. }) => {
            assert!(replicas >= 2, "{dir}: the overlay is for several replicas");
            assert!(
                kit.of_kind("PersistentVolumeClaim").is_empty(),
                "{dir}: no state volume with PostgreSQL"
            );
        }
        (_, backend) => panic!("{dir}: unexpected state store {}", backend.describe()),
    }
}

/// No Secret is part of the kustomization: `kubectl apply -k` would write the
/// example values over the operator's real Secrets at every apply, and one dropped
/// from it would break the overlays patching it. Every Secret and key the pod
/// refers to has an example to create beside it.
fn check_secrets(dir: &str, kit: &Rendered, deployment: &Value, container: &Value) {
    assert!(
        kit.of_kind("Secret").is_empty(),
        "{dir}: `kubectl apply -k` would overwrite the operator's Secrets with the examples"
    );
    let mut wanted: Vec<(&str, Option<&str>)> = Vec::new();
    for source in array_at(container, "/envFrom") {
        wanted.push((str_at(source, "/secretRef/name"), None));
    }
    for var in array_at(container, "/env") {
        if var.pointer("/valueFrom/secretKeyRef").is_some() {
            wanted.push((
                str_at(var, "/valueFrom/secretKeyRef/name"),
                Some(str_at(var, "/valueFrom/secretKeyRef/key")),
            ));
        }
    }
    for volume in array_at(deployment, "/spec/template/spec/volumes") {
        if let Some(name) = volume.pointer("/secret/secretName").and_then(Value::as_str) {
            wanted.push((name, None));
        }
    }
    for (name, key) in wanted {
        let keys = kit.secret_keys(name);
        if let Some(key) = key {
            assert!(
                keys.iter().any(|k| k == key),
                "{dir}: the example Secret {name} has no key {key}"
            );
        }
    }
}

/// Media URLs the bridge makes are under the configured public prefix, which the
/// Ingress serves over TLS and routes to the bridge's webhook port.
fn check_media(dir: &str, kit: &Rendered, settings: &Settings) {
    let prefix = settings
        .inbound
        .media
        .public_base_url
        .clone()
        .unwrap_or_else(|| panic!("{dir}: inbound.media.public_base_url is not set"));
    assert_eq!(prefix.scheme(), "https", "{dir}: {prefix}");
    let links = xbridge_inbound::service::media_links(settings, settings.inbound.listen);
    let channel = &settings.channels[0].name;
    let x_url =
        "https://ton.twitter.com/1.1/ton/data/dm/1585047616894574596/1585047616894574597/photo.jpg";
    let url = links
        .link(channel, "1585047616894574596", x_url)
        .expect("a media URL for X's DM media");
    let expected = format!("{prefix}media/{channel}/");
    assert!(
        url.starts_with(&expected),
        "{dir}: media URL {url} is not under {expected}"
    );

    let host = prefix.host_str().unwrap();
    let ingress = kit.get("Ingress", "xbridge");
    let tls_hosts: Vec<&str> = array_at(ingress, "/spec/tls")
        .iter()
        .flat_map(|tls| array_at(tls, "/hosts"))
        .filter_map(Value::as_str)
        .collect();
    assert!(tls_hosts.contains(&host), "{dir}: no TLS for {host}");
    let rule = array_at(ingress, "/spec/rules")
        .iter()
        .find(|rule| rule["host"] == host)
        .unwrap_or_else(|| panic!("{dir}: the Ingress has no rule for {host}"));
    let paths = array_at(rule, "/http/paths");
    let media_path = format!("{}media/", prefix.path());
    for wanted in [media_path.as_str(), "/webhooks/"] {
        let path = paths
            .iter()
            .find(|p| wanted.starts_with(str_at(p, "/path")))
            .unwrap_or_else(|| panic!("{dir}: the Ingress does not route {wanted}"));
        assert_eq!(str_at(path, "/backend/service/name"), "xbridge");
        assert_eq!(
            str_at(path, "/backend/service/port/name"),
            "webhook",
            "{dir}: {wanted} must reach the webhook port, never the ops port"
        );
    }
    assert_eq!(
        paths.len(),
        2,
        "{dir}: only the webhook and the media proxy are public"
    );
    check_ingress_limits(dir, ingress, settings);
}

/// ingress-nginx lets through every webhook body the bridge takes (a smaller
/// limit there answers X 413, and X gives up on the event) and waits for
/// the bridge's answer as long as the bridge may take.
fn check_ingress_limits(dir: &str, ingress: &Value, settings: &Settings) {
    let annotation = |name: &str| {
        ingress["metadata"]["annotations"][format!("nginx.ingress.kubernetes.io/{name}")]
            .as_str()
            .map(str::to_owned)
    };
    // nginx's default is 1m.
    let body = annotation("proxy-body-size").unwrap_or_else(|| "1m".into());
    let (number, factor) = match body.to_ascii_lowercase().chars().last() {
        Some('k') => (&body[..body.len() - 1], 1024),
        Some('m') => (&body[..body.len() - 1], MIB),
        Some('g') => (&body[..body.len() - 1], 1024 * MIB),
        _ => (body.as_str(), 1),
    };
    let body_bytes = number.parse::<u64>().expect("an nginx size") * factor;
    assert!(
        body_bytes == 0 || body_bytes >= settings.inbound.body_limit as u64,
        "{dir}: the Ingress refuses webhook bodies over {body}, below inbound.body_limit"
    );
    // nginx's default is 60 (seconds).
    let read = annotation("proxy-read-timeout").map_or(60, |t| t.parse::<u64>().expect("seconds"));
    assert!(
        read >= settings.http.request_timeout.as_secs(),
        "{dir}: the Ingress gives up after {read} s, before http.request_timeout"
    );
}

fn port_of(container: &Value, name: &str) -> u64 {
    array_at(container, "/ports")
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port {name}"))
}

/// The ports are the configured listeners; readiness keeps X's webhook served while
/// the broker is away, liveness needs nothing but the process; one set of scrape
/// annotations, on the pod.
fn check_ports_and_probes(
    dir: &str,
    kit: &Rendered,
    deployment: &Value,
    container: &Value,
    settings: &Settings,
) {
    let webhook = settings.inbound.listen.expect("inbound.listen").port();
    let ops = settings.telemetry.listen.expect("telemetry.listen").port();
    assert_eq!(port_of(container, "webhook"), u64::from(webhook), "{dir}");
    assert_eq!(port_of(container, "metrics"), u64::from(ops), "{dir}");
    for (probe, path) in [
        ("readinessProbe", "/readyz/webhook"),
        ("livenessProbe", "/healthz"),
    ] {
        assert_eq!(str_at(container, &format!("/{probe}/httpGet/path")), path);
        assert_eq!(
            str_at(container, &format!("/{probe}/httpGet/port")),
            "metrics"
        );
    }

    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true", "{dir}");
    assert_eq!(annotations["prometheus.io/port"], ops.to_string(), "{dir}");
    for service in kit.of_kind("Service") {
        let scraped = service["metadata"]["annotations"]
            .as_object()
            .is_some_and(|a| a.keys().any(|k| k.starts_with("prometheus.io/")));
        assert!(
            !scraped,
            "{dir}: scrape annotations on the Service double every series"
        );
    }
    let service = kit.get("Service", "xbridge");
    let ports = array_at(service, "/spec/ports");
    assert_eq!(named(ports, "metrics")["targetPort"], "metrics", "{dir}");
    assert_eq!(named(ports, "webhook")["targetPort"], "webhook", "{dir}");
}

/// The NetworkPolicies let in what the Service exposes and let out what the
/// configuration connects to: DNS, RabbitMQ's port, PostgreSQL's with that store,
/// HTTPS for X.
fn check_network_policy(dir: &str, kit: &Rendered, settings: &Settings) {
    let ports = |direction: &str| -> Vec<u64> {
        kit.of_kind("NetworkPolicy")
            .into_iter()
            .flat_map(|policy| array_at(policy, &format!("/spec/{direction}")))
            .flat_map(|rule| array_at(rule, "/ports"))
            .filter_map(|port| port["port"].as_u64())
            .collect()
    };
    let incoming = ports("ingress");
    for listen in [settings.inbound.listen, settings.telemetry.listen] {
        let port = u64::from(listen.unwrap().port());
        assert!(
            incoming.contains(&port),
            "{dir}: nothing may reach port {port}"
        );
    }
    let port_of_url = |url: &str, default: u16| {
        u64::from(
            reqwest::Url::parse(url)
                .expect("a URL")
                .port()
                .unwrap_or(default),
        )
    };
    let mut needed = vec![
        53,
        443,
        port_of_url(settings.amqp.url.expose_secret(), 5672),
    ];
    if let StateBackend::Postgres { url, .. } = &settings.state.backend {
        needed.push(port_of_url(url.expose_secret(), 5432));
    }
    let outgoing = ports("egress");
    for port in needed {
        assert!(
            outgoing.contains(&port),
            "{dir}: egress to port {port} is not allowed"
        );
    }
}

/// The pod meets the "restricted" Pod Security Standard with a read-only root
/// filesystem, and every path the bridge writes (the embedded store's file, the
/// spool, the temporary directory when there is no spool) is on a writable volume:
/// a path left on the root filesystem or on a read-only mount fails only when the
/// bridge first writes there.
fn check_writable(
    dir: &str,
    pod: &Pod,
    deployment: &Value,
    container: &Value,
    settings: &Settings,
) {
    let security = &container["securityContext"];
    let pod_security = &deployment["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true, "{dir}");
    assert_eq!(security["allowPrivilegeEscalation"], false, "{dir}");
    assert!(
        array_at(security, "/capabilities/drop").contains(&Value::from("ALL")),
        "{dir}: capabilities must drop ALL"
    );
    assert!(
        security["runAsNonRoot"] == true || pod_security["runAsNonRoot"] == true,
        "{dir}: runAsNonRoot"
    );
    let seccomp = security["seccompProfile"]["type"]
        .as_str()
        .or(pod_security["seccompProfile"]["type"].as_str());
    assert_eq!(seccomp, Some("RuntimeDefault"), "{dir}");

    let mut written = Vec::new();
    if let StateBackend::Embedded { path } = &settings.state.backend {
        written.push(path.parent().expect("a folder").to_path_buf());
    }
    match &settings.outbound.media.spool_dir {
        Some(spool) => written.push(spool.clone()),
        // tempfile's directory: TMPDIR, else /tmp.
        None => written.push(
            pod.root.path().join(
                pod.env
                    .get("TMPDIR")
                    .map_or("tmp", |t| t.trim_start_matches('/')),
            ),
        ),
    }
    for local in written {
        let (path, volume) = pod.volume_of(&local);
        let kind = ["configMap", "secret", "projected", "downwardAPI"]
            .into_iter()
            .find(|kind| volume.get(*kind).is_some());
        assert!(
            kind.is_none() && !pod.read_only.iter().any(|p| p == path),
            "{dir}: the bridge writes under {path}, which is mounted read-only"
        );
    }
}

/// Reply attachments spool to a volume of their own that holds one reply of X's
/// largest media.
fn check_spool(dir: &str, pod: &Pod, settings: &Settings) {
    let spool = settings
        .outbound
        .media
        .spool_dir
        .as_deref()
        .unwrap_or_else(|| panic!("{dir}: outbound.media.spool_dir is not set"));
    let (path, volume) = pod.volume_of(spool);
    let size = volume
        .pointer("/ephemeral/volumeClaimTemplate/spec/resources/requests/storage")
        .or_else(|| volume.pointer("/emptyDir/sizeLimit"))
        .and_then(Value::as_str)
        .map(quantity)
        .unwrap_or_else(|| panic!("{dir}: the spool volume at {path} has no size: {volume}"));
    let largest = settings
        .outbound
        .media
        .max_download_bytes
        .min(LARGEST_MEDIA);
    assert!(
        size >= MAX_ATTACHMENTS * largest,
        "{dir}: the spool ({size} bytes) cannot hold a reply of {MAX_ATTACHMENTS} attachments of {largest} bytes"
    );
}

/// A terminating pod serves on until the ingress controller has taken it out of
/// its endpoints (a preStop pause), then finishes what it does within the
/// grace period: replies in flight get `outbound.shutdown_grace` while the HTTP
/// servers' requests in flight get theirs at the same time, and the AMQP
/// connection closes. A shorter period gets the process killed mid-send.
fn check_termination(dir: &str, deployment: &Value, container: &Value, settings: &Settings) {
    let pause = match array_at(container, "/lifecycle/preStop/exec/command") {
        [sleep, seconds] if sleep == "sleep" => seconds
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{dir}: preStop sleeps {seconds}")),
        _ => container
            .pointer("/lifecycle/preStop/sleep/seconds")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    };
    assert!(
        pause >= 1,
        "{dir}: no preStop pause: X's webhook POSTs are refused while the ingress still routes to a stopping pod"
    );
    let grace = deployment
        .pointer("/spec/template/spec/terminationGracePeriodSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(30);
    let draining = settings
        .outbound
        .shutdown_grace
        .max(xbridge_core::server::SHUTDOWN_GRACE)
        .as_secs();
    // Closing the AMQP connection and the store.
    let closing = 5;
    assert!(
        grace >= pause + draining + closing,
        "{dir}: terminationGracePeriodSeconds {grace} < preStop {pause} s + draining {draining} s + closing {closing} s"
    );
}

/// The memory limit covers the worst case the configuration allows, as the comment
/// in the Deployment works it out.
fn check_memory(dir: &str, container: &Value, settings: &Settings) {
    let limit = quantity(str_at(container, "/resources/limits/memory"));
    let channels = settings.channels.len() as u64;
    let held_reply = 3 * settings.outbound.max_reply_bytes as u64 + 4 * MIB;
    let needed = 64 * MIB
        + settings.inbound.body_memory as u64
        + channels * u64::from(settings.amqp.prefetch) * held_reply;
    assert!(
        limit >= needed,
        "{dir}: memory limit {limit} is below the {needed} bytes the configuration may hold"
    );
}

#[test]
fn the_kubernetes_base_passes_the_schemas_and_its_configuration_works() {
    check_kubernetes(
        "deploy/kubernetes/base",
        &["deploy/kubernetes/secrets.example.yaml"],
        Store::Embedded,
    );
}

#[test]
fn the_postgres_overlay_passes_the_schemas_and_its_configuration_works() {
    check_kubernetes(
        "deploy/kubernetes/overlays/postgres",
        &[
            "deploy/kubernetes/secrets.example.yaml",
            "deploy/kubernetes/overlays/postgres/secret.example.yaml",
        ],
        Store::Postgres,
    );
}

#[test]
fn the_compose_file_passes_the_spec_and_every_default_service_has_a_health_check() {
    succeed(
        "check-jsonschema",
        &[
            "--builtin-schema",
            "vendor.compose-spec",
            "docker-compose.yml",
        ],
    );
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    let compose = &yaml_documents(&text)[0];
    let services = compose["services"].as_object().expect("services");
    let mut started = Vec::new();
    for (name, service) in services {
        if service.get("profiles").is_some() {
            continue;
        }
        started.push(name.as_str());
        let test = &service["healthcheck"]["test"];
        let disabled = service["healthcheck"]["disable"] == true || test[0] == "NONE";
        assert!(
            !test.is_null() && !disabled,
            "service {name} is started by default without a health check"
        );
    }
    assert!(started.contains(&"xbridge") && started.contains(&"x-simulator"));

    // The simulator's check asks its own port, not the bridge's.
    let simulator = &services["x-simulator"];
    assert_eq!(simulator["build"]["target"], "simulator");
    let bind = array_at(simulator, "/command")
        .iter()
        .skip_while(|a| *a != "--bind")
        .nth(1)
        .and_then(Value::as_str)
        .expect("the simulator's --bind");
    let port = bind.rsplit_once(':').unwrap().1;
    let check = simulator["healthcheck"]["test"].to_string();
    assert!(
        check.contains(&format!("/{port}")) && check.contains("/_sim/"),
        "the simulator's health check must ask its admin API on port {port}: {check}"
    );

    // Each bridge's check asks /healthz on its configuration's telemetry port, and
    // that configuration passes check-config.
    for name in ["xbridge", "xbridge-2"] {
        let bridge = &services[name];
        assert_eq!(bridge["build"]["target"], "runtime", "{name}");
        let file = array_at(bridge, "/volumes")
            .iter()
            .filter_map(Value::as_str)
            .map(interpolate_default)
            .find_map(|v| {
                v.strip_suffix(":/etc/xbridge/xbridge.toml:ro")
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| panic!("{name} mounts no configuration"));
        let output = Command::new(env!("CARGO_BIN_EXE_xbridge"))
            .args(["check-config", "--config", &file])
            .current_dir(root())
            .env_clear()
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{name}: {file}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let settings = Settings::load(&root().join(&file)).unwrap();
        let ops = settings.telemetry.listen.expect("telemetry.listen").port();
        let check = bridge["healthcheck"]["test"].to_string();
        assert!(
            check.contains(&format!("/{ops}")) && check.contains("/healthz"),
            "{name}: the health check must ask /healthz on port {ops}: {check}"
        );
    }
}

/// A compose path with `${VAR:-default}` as compose reads it when VAR is unset.
fn interpolate_default(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closed ${") + start;
        let inner = &rest[start + 2..end];
        out.push_str(inner.split_once(":-").map(|(_, d)| d).unwrap_or(""));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

#[test]
fn the_dockerfile_passes_hadolint_and_builds_a_production_image_without_the_simulator() {
    succeed("hadolint", &["deploy/Dockerfile"]);
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let stage = |name: &str| -> String {
        let start = text
            .find(&format!(" AS {name}\n"))
            .unwrap_or_else(|| panic!("no stage {name}"));
        let rest = &text[start..];
        let end = rest[1..].find("\nFROM ").map_or(rest.len(), |i| i + 1);
        rest[..end].to_owned()
    };
    let runtime = stage("runtime");
    assert!(runtime.contains("/out/xbridge"), "{runtime}");
    assert!(
        !runtime.contains("x-simulator"),
        "the production image ships the simulator"
    );
    assert!(stage("simulator").contains("/out/x-simulator"));
    // Nor inside the bridge: `xbridge demo` embeds the simulator and is a
    // default feature, which the image's build of the bridge leaves out.
    assert!(
        stage("builder")
            .contains("cargo build --release --locked -p xbridge --no-default-features"),
        "the production binary must be built without the demo (and its simulator)"
    );
    // `docker exec` / `kubectl exec ... xbridge webhook|check|dlq` find the
    // configuration `run` reads without a --config.
    let cmd_config = runtime
        .lines()
        .find_map(|l| l.strip_prefix("CMD [\"run\", \"--config\", \""))
        .and_then(|rest| rest.strip_suffix("\"]"))
        .expect("CMD runs with a --config");
    assert!(
        runtime.contains(&format!("ENV XBRIDGE_CONFIG={cmd_config}\n")),
        "the runtime image must set XBRIDGE_CONFIG={cmd_config}"
    );
    let last_stage = text.lines().rev().find(|l| l.starts_with("FROM "));
    assert_eq!(
        last_stage,
        Some("FROM base AS runtime"),
        "runtime is the default (last) target"
    );
    assert!(
        text.contains(&format!(
            "ARG XBRIDGE_VERSION={}\n",
            env!("CARGO_PKG_VERSION")
        )),
        "the image's version label must default to the workspace version"
    );
    assert!(
        text.contains("ARG XBRIDGE_COMMIT"),
        "xbridge --version needs the commit"
    );
}
