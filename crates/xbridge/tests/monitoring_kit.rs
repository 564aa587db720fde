//! The monitoring kit under deploy/ works as shipped: Prometheus accepts the
//! configuration and the rules, `promtool test rules` proves every alert
//! fires on the series it is meant for, and the Prometheus Operator's
//! PrometheusRule carries exactly the same rules.
//!
//! Needs promtool and kubectl on the PATH (`bash .ci/test` installs them).

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `tool args` and returns its stdout; fails the test with the tool's
/// output when it fails, and with how to get it when it is missing.
fn run(tool: &str, args: &[&str], dir: &Path) -> String {
    let output = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|error| {
            panic!("cannot run {tool} ({error}): run the tests with `bash .ci/test`, which installs it")
        });
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{tool} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn promtool_accepts_the_configuration_and_the_rules_and_their_tests_pass() {
    let dir = root().join("deploy/prometheus");
    run("promtool", &["check", "config", "prometheus.yml"], &dir);
    run("promtool", &["check", "rules", "alerts.yml"], &dir);
    run("promtool", &["test", "rules", "alerts.test.yml"], &dir);
}

/// The alert names of a rules file, in order.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("- alert: "))
        .map(|name| name.trim().to_owned())
        .collect()
}

#[test]
fn every_alert_has_a_test_where_it_fires() {
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(root().join("deploy/prometheus/alerts.test.yml")).unwrap();
    let names = alert_names(&rules);
    assert!(names.len() > 10, "alerts found: {names:?}");
    for name in names {
        // A test case of this alert whose expected alerts are not `[]`.
        let fires = tests.split("- eval_time:").any(|case| {
            case.contains(&format!("alertname: {name}\n")) && case.contains("exp_labels")
        });
        assert!(
            fires,
            "deploy/prometheus/alerts.test.yml has no case where {name} fires"
        );
    }
}

const RULE_HEADER: &str = "\
# The rules of deploy/prometheus/alerts.yml for the Prometheus Operator: its
# groups, unchanged, under spec. Edit alerts.yml, not this file; the test
# crates/xbridge/tests/monitoring_kit.rs fails while the two differ and
# rewrites this file when run with XBRIDGE_REGENERATE=1.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: xbridge
  labels:
    app.kubernetes.io/name: xbridge
spec:
";

/// The PrometheusRule for `alerts`: its `groups:` and all after, indented
/// under `spec:` (which keeps every YAML value, block scalars included).
fn prometheus_rule(alerts: &str) -> String {
    let groups = alerts
        .find("\ngroups:")
        .map(|at| &alerts[at + 1..])
        .expect("alerts.yml has top-level groups");
    let mut rule = RULE_HEADER.to_owned();
    for line in groups.split_inclusive('\n') {
        if !line.trim().is_empty() {
            rule.push_str("  ");
        }
        rule.push_str(line);
    }
    rule
}

#[test]
fn the_prometheus_rule_carries_the_same_groups_as_alerts_yml() {
    let alerts = std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap();
    let path = root().join("deploy/kubernetes/monitoring/prometheusrule.yaml");
    let expected = prometheus_rule(&alerts);
    if std::env::var_os("XBRIDGE_REGENERATE").is_some() {
        std::fs::write(&path, &expected).unwrap();
    }
    let shipped = std::fs::read_to_string(&path).unwrap();
    assert!(
        shipped == expected,
        "{} differs from deploy/prometheus/alerts.yml's groups; \
         run this test with XBRIDGE_REGENERATE=1 to rewrite it",
        path.display()
    );
}

/// What kustomize renders for the Operator is what promtool proved: the
/// PrometheusRule's spec, as `kubectl kustomize` prints it, passes the same
/// rule tests.
#[test]
fn the_rendered_prometheus_rule_passes_the_alert_tests() {
    let rendered = run(
        "kubectl",
        &["kustomize", "deploy/kubernetes/monitoring"],
        &root(),
    );
    assert!(rendered.contains("kind: ServiceMonitor"), "{rendered}");
    let rule = rendered
        .split("\n---\n")
        .find(|doc| doc.contains("kind: PrometheusRule"))
        .expect("a PrometheusRule");
    let spec = rule
        .find("\nspec:\n")
        .map(|at| &rule[at + "\nspec:\n".len()..])
        .expect("the PrometheusRule has a spec");
    let groups: String = spec
        .split_inclusive('\n')
        .take_while(|line| line.starts_with("  ") || line.trim().is_empty())
        .map(|line| line.strip_prefix("  ").unwrap_or(line))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("alerts.yml"), groups).unwrap();
    std::fs::copy(
        root().join("deploy/prometheus/alerts.test.yml"),
        dir.path().join("alerts.test.yml"),
    )
    .unwrap();
    run(
        "promtool",
        &["test", "rules", "alerts.test.yml"],
        dir.path(),
    );
}

/// The YAML documents `kubectl kustomize dir` renders, as JSON values.
fn rendered(dir: &str) -> Vec<serde_json::Value> {
    run("kubectl", &["kustomize", dir], &root())
        .split("\n---\n")
        .map(|doc| serde_norway::from_str(doc).expect("valid YAML"))
        .filter(|doc: &serde_json::Value| doc.as_object().is_some_and(|o| !o.is_empty()))
        .collect()
}

/// The ServiceMonitor scrapes what the kit deploys: its selector matches the
/// Service's labels in the base and the overlay, and its port is a port name
/// of that Service. A mismatch validates fine and scrapes nothing, which only
/// XbridgeAbsent would tell, once the rules are loaded.
#[test]
fn the_service_monitor_selects_the_services_metrics_port() {
    let monitoring = rendered("deploy/kubernetes/monitoring");
    let monitor = monitoring
        .iter()
        .find(|doc| doc["kind"] == "ServiceMonitor")
        .expect("a ServiceMonitor");
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("the ServiceMonitor selects by labels");
    let endpoints = monitor["spec"]["endpoints"].as_array().unwrap();
    for dir in [
        "deploy/kubernetes/base",
        "deploy/kubernetes/overlays/postgres",
    ] {
        let kit = rendered(dir);
        let selected: Vec<_> = kit
            .iter()
            .filter(|doc| doc["kind"] == "Service")
            .filter(|service| {
                selector
                    .iter()
                    .all(|(key, value)| &service["metadata"]["labels"][key] == value)
            })
            .collect();
        assert_eq!(
            selected.len(),
            1,
            "{dir}: the ServiceMonitor selects {selected:?}"
        );
        let ports: Vec<_> = selected[0]["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|port| &port["name"])
            .collect();
        for endpoint in endpoints {
            assert!(
                ports.contains(&&endpoint["port"]),
                "{dir}: the Service has no port {} (it has {ports:?})",
                endpoint["port"]
            );
        }
    }
}
