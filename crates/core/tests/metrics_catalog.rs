//! The metrics catalog matches the code: every metric any crate records is
//! in it, with the same type and labels, so a new metric without `# HELP`
//! text (or with a label the catalog does not document) fails here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use xbridge_core::metrics_catalog::{find, Kind, METRICS};

/// One `counter!`/`gauge!`/`histogram!` call found in the source.
#[derive(Debug)]
struct Recording {
    file: PathBuf,
    kind: Kind,
    name: String,
    labels: BTreeSet<String>,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// Every crate's `src`: where metrics are recorded.
fn source_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let crates = workspace_root().join("crates");
    for entry in std::fs::read_dir(&crates).expect("crates/") {
        let src = entry.expect("a crate").path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    assert!(files.len() > 20, "found the sources under {crates:?}");
    files
}

/// The text of a macro call's arguments: from after `(` to its matching `)`.
fn arguments(rest: &str) -> &str {
    let mut depth = 1;
    for (at, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &rest[..at];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced macro call: {rest:.80}")
}

/// The string literal `text` starts with (after whitespace), if any.
fn leading_literal(text: &str) -> Option<&str> {
    let text = text.trim_start().strip_prefix('"')?;
    text.find('"').map(|end| &text[..end])
}

/// Label keys: the string literals followed by `=>`.
fn label_keys(arguments: &str) -> BTreeSet<String> {
    let pieces: Vec<&str> = arguments.split("=>").collect();
    pieces[..pieces.len() - 1]
        .iter()
        .filter_map(|before| {
            let before = before.trim_end().strip_suffix('"')?;
            before
                .rfind('"')
                .map(|start| before[start + 1..].to_owned())
        })
        .collect()
}

fn recordings_in(file: &Path, found: &mut Vec<Recording>) {
    let text = std::fs::read_to_string(file).expect("readable source");
    for (kind, word) in [
        (Kind::Counter, "counter"),
        (Kind::Gauge, "gauge"),
        (Kind::Histogram, "histogram"),
    ] {
        let call = format!("{word}!(");
        for (at, _) in text.match_indices(&call) {
            // `describe_counter!(...)` and the like are not recordings.
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c == '_' || c.is_alphanumeric()) {
                continue;
            }
            let args = arguments(&text[at + call.len()..]);
            let name = leading_literal(args).unwrap_or_else(|| {
                panic!(
                    "{}: {word}! without a literal metric name ({args:.60}); \
                     name metrics with literals so this test can check them",
                    file.display()
                )
            });
            found.push(Recording {
                file: file.to_owned(),
                kind,
                name: name.to_owned(),
                labels: label_keys(args),
            });
        }
    }
}

fn recordings() -> Vec<Recording> {
    let mut found = Vec::new();
    for file in source_files() {
        recordings_in(&file, &mut found);
    }
    found
}

#[test]
fn every_recorded_metric_is_in_the_catalog_with_its_type_and_labels() {
    let found = recordings();
    assert!(found.len() > 20, "the scan finds the recordings: {found:?}");
    for recording in &found {
        let Some(metric) = find(&recording.name) else {
            panic!(
                "{} records {} but crates/core/src/metrics_catalog.rs does not describe it: \
                 add it there with its help text",
                recording.file.display(),
                recording.name
            );
        };
        assert_eq!(
            metric.kind,
            recording.kind,
            "{}: {} recorded as another type than the catalog says",
            recording.file.display(),
            recording.name
        );
        let documented: BTreeSet<String> = metric.labels.iter().map(|l| l.to_string()).collect();
        assert_eq!(
            documented,
            recording.labels,
            "{}: {} recorded with other labels than the catalog lists",
            recording.file.display(),
            recording.name
        );
    }
}

#[test]
fn the_catalog_lists_only_metrics_the_code_records() {
    let recorded: BTreeSet<String> = recordings().into_iter().map(|r| r.name).collect();
    for metric in METRICS {
        assert!(
            recorded.contains(metric.name),
            "the catalog lists {} but no code records it",
            metric.name
        );
    }
}

#[test]
fn catalog_entries_are_unique_prometheus_names_with_help() {
    let mut names = BTreeSet::new();
    for metric in METRICS {
        assert!(names.insert(metric.name), "{} listed twice", metric.name);
        assert!(
            metric.name.starts_with("xbridge_")
                && metric
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{} is not an xbridge_ snake_case name",
            metric.name
        );
        assert_eq!(
            metric.kind == Kind::Counter,
            metric.name.ends_with("_total"),
            "{}: counters, and only counters, end in _total",
            metric.name
        );
        assert!(
            metric.help.len() > 20 && !metric.help.contains('\n'),
            "{}: help is one line that says what it counts",
            metric.name
        );
    }
}
