//! The documents are part of the contract: an integrator copies their examples
//! and follows their links. These tests fail when an example in the AsyncAPI
//! document or in the Markdown guides stops matching its JSON Schema, when a
//! new event example is added without naming its schema, or when a relative
//! link points at nothing.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::Value;
use xbridge_test_support::schema_errors;

/// The repository's root: this crate lives in `tests/`.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Every Markdown file of the repository (README.md, docs/, the READMEs of
/// deploy/ and of the examples, CHANGELOG.md), the documents whose examples and
/// links are checked: a reader follows a link from any of them.
fn documents() -> Vec<PathBuf> {
    let mut docs = files_under(&root(), &|path| {
        path.extension().is_some_and(|ext| ext == "md")
    });
    docs.sort();
    assert!(
        docs.contains(&root().join("README.md")) && docs.contains(&root().join("docs/operator.md")),
        "the document walk missed README.md or docs/operator.md"
    );
    docs
}

/// Files below `dir` that `keep` accepts, leaving out what is not the
/// project's own text: build output, installed packages and hidden folders.
fn files_under(dir: &Path, keep: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("readable directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !(name.starts_with('.') && name != ".ci"
                || name == "target"
                || name == "node_modules")
            {
                found.extend(files_under(&path, keep));
            }
        } else if keep(&path) {
            found.push(path);
        }
    }
    found
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn shown(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn every_asyncapi_example_is_valid_against_its_schema() {
    let text = read(&root().join("docs/asyncapi.yaml"));
    let doc: Value = serde_norway::from_str(&text).expect("docs/asyncapi.yaml is YAML");
    let messages = doc["components"]["messages"]
        .as_object()
        .expect("components.messages");
    let mut failures = Vec::new();
    let mut checked = 0;
    for (name, message) in messages {
        let examples = message["examples"].as_array().cloned().unwrap_or_default();
        assert!(
            !examples.is_empty(),
            "message {name} has no example: add one, so integrators see its shape"
        );
        let payload_schemas = schema_refs(&message["payload"]);
        assert!(
            !payload_schemas.is_empty(),
            "message {name}'s payload names no schema in docs/schemas"
        );
        for example in examples {
            let label = format!("{name}/{}", example["name"].as_str().unwrap_or("?"));
            if let Some(payload) = example.get("payload") {
                // A payload that is `anyOf` several schemas is valid against one of them.
                let all: Vec<String> = payload_schemas
                    .iter()
                    .flat_map(|schema| schema_errors(schema, payload))
                    .collect();
                let valid_against_one = payload_schemas
                    .iter()
                    .any(|schema| schema_errors(schema, payload).is_empty());
                if !valid_against_one {
                    failures.push(format!("{label}: payload: {all:?}"));
                }
                checked += 1;
            }
            if let Some(headers) = example.get("headers") {
                let schemas = schema_refs(&message["headers"]);
                assert_eq!(schemas.len(), 1, "{label}: headers need one schema");
                let errors = schema_errors(&schemas[0], headers);
                if !errors.is_empty() {
                    failures.push(format!("{label}: headers: {errors:?}"));
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "no example found in docs/asyncapi.yaml");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The names of the schemas in docs/schemas/ a payload or headers object
/// refers to, directly or through `anyOf`/`oneOf`.
fn schema_refs(node: &Value) -> Vec<String> {
    let mut refs = Vec::new();
    if let Some(target) = node["$ref"].as_str() {
        refs.push(schema_name(target));
    }
    for key in ["anyOf", "oneOf"] {
        for item in node[key].as_array().into_iter().flatten() {
            refs.extend(schema_refs(item));
        }
    }
    refs
}

fn schema_name(target: &str) -> String {
    let file = target
        .strip_prefix("./schemas/")
        .unwrap_or_else(|| panic!("$ref {target} is not under ./schemas/"));
    file.strip_suffix(".json")
        .unwrap_or_else(|| panic!("$ref {target} is not a .json file"))
        .to_owned()
}

/// A fenced code block of a Markdown document.
struct Block {
    line: usize,
    info: String,
    text: String,
    /// The line right above the opening fence, trimmed.
    above: String,
}

fn fenced_blocks(text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            let start = i;
            let mut body = Vec::new();
            i += 1;
            while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                body.push(lines[i]);
                i += 1;
            }
            blocks.push(Block {
                line: start + 1,
                info: info.trim().to_owned(),
                text: body.join("\n"),
                above: start
                    .checked_sub(1)
                    .map(|above| lines[above].trim().to_owned())
                    .unwrap_or_default(),
            });
        }
        i += 1;
    }
    blocks
}

/// `<!-- schema: message-sent -->` gives `message-sent`.
fn schema_marker(line: &str) -> Option<&str> {
    line.strip_prefix("<!--")?
        .strip_suffix("-->")?
        .trim()
        .strip_prefix("schema:")
        .map(str::trim)
}

/// An example of the contract: an event (it has `type`) or a reply (it has `message_id`).
fn looks_like_a_message(text: &str, parsed: Option<&Value>) -> bool {
    match parsed {
        Some(Value::Object(object)) => {
            object.contains_key("type") || object.contains_key("message_id")
        }
        Some(_) => false,
        None => text.contains("\"type\"") || text.contains("\"message_id\""),
    }
}

#[test]
fn every_json_example_in_the_guides_is_valid_against_its_marked_schema() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        for block in fenced_blocks(&read(&doc)) {
            if block.info != "json" {
                continue;
            }
            let at = format!("{}:{}", shown(&doc), block.line);
            let parsed: Option<Value> = serde_json::from_str(&block.text).ok();
            match schema_marker(&block.above) {
                Some(schema) => {
                    let Some(value) = parsed else {
                        failures.push(format!("{at}: marked {schema} but is not JSON"));
                        continue;
                    };
                    let errors = schema_errors(schema, &value);
                    if !errors.is_empty() {
                        failures.push(format!("{at}: not valid against {schema}: {errors:?}"));
                    }
                    checked += 1;
                }
                None if looks_like_a_message(&block.text, parsed.as_ref()) => failures.push(
                    format!("{at}: a message example without `<!-- schema: NAME -->` above it"),
                ),
                None => {}
            }
        }
    }
    assert!(checked >= 5, "only {checked} marked JSON examples found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn an_unmarked_event_example_is_caught() {
    let doc = "Text\n\n```json\n{\"type\":\"message.sent\",\"message_id\":\"x\"}\n```\n";
    let blocks = fenced_blocks(doc);
    assert_eq!(blocks.len(), 1);
    assert_eq!(schema_marker(&blocks[0].above), None);
    let parsed = serde_json::from_str(&blocks[0].text).ok();
    assert!(looks_like_a_message(&blocks[0].text, parsed.as_ref()));
    assert_eq!(
        schema_marker("<!-- schema: message-sent -->"),
        Some("message-sent")
    );
}

/// The text outside fenced blocks and inline code, where links are read.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        // Drop inline code spans: `...`.
        let mut keep = true;
        for c in line.chars() {
            if c == '`' {
                keep = !keep;
            } else if keep {
                out.push(c);
            }
        }
        out.push('\n');
    }
    out
}

/// Targets of inline links `[text](target)`.
fn link_targets(prose: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = prose;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let end = after.find(')').unwrap_or(after.len());
        let target = after[..end].split_whitespace().next().unwrap_or("");
        targets.push(target.to_owned());
        rest = &after[end..];
    }
    targets
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    let mut text = String::new();
    // A link in a heading counts by its text.
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        match rest[open..].find("](") {
            Some(mid) => {
                text.push_str(&rest[..open]);
                text.push_str(&rest[open + 1..open + mid]);
                let after = &rest[open + mid + 2..];
                rest = after.find(')').map_or("", |close| &after[close + 1..]);
            }
            None => break,
        }
    }
    text.push_str(rest);
    text.to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor a Markdown document defines: its headings' and `id="…"`'s.
fn anchors(text: &str) -> HashSet<String> {
    let mut found = HashSet::new();
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        if let Some(heading) = line.strip_prefix('#') {
            let heading = heading.trim_start_matches('#');
            if heading.starts_with(' ') {
                let base = slug(heading.trim());
                let count = seen.entry(base.clone()).or_insert(0);
                found.insert(if *count == 0 {
                    base.clone()
                } else {
                    format!("{base}-{count}")
                });
                *count += 1;
            }
        }
        for marker in ["id=\"", "name=\""] {
            let mut rest = line;
            while let Some(at) = rest.find(marker) {
                let after = &rest[at + marker.len()..];
                let end = after.find('"').unwrap_or(after.len());
                found.insert(after[..end].to_owned());
                rest = &after[end..];
            }
        }
    }
    found
}

#[test]
fn every_relative_link_in_the_guides_resolves() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = read(&doc);
        for target in link_targets(&prose(&text)) {
            if target.contains("://") || target.starts_with("mailto:") || target.is_empty() {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                doc.clone()
            } else {
                doc.parent().expect("a document has a folder").join(path)
            };
            checked += 1;
            if !file.exists() {
                failures.push(format!("{}: {target}: no such file", shown(&doc)));
                continue;
            }
            let is_markdown = file.extension().is_some_and(|ext| ext == "md");
            if let (Some(anchor), true) = (anchor, is_markdown) {
                if !anchors(&read(&file)).contains(anchor) {
                    failures.push(format!("{}: {target}: no such heading", shown(&doc)));
                }
            }
        }
    }
    assert!(checked > 0, "no relative link found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn anchors_follow_github() {
    assert_eq!(slug("Replies (CRM → xbridge)"), "replies-crm--xbridge");
    assert_eq!(slug("Setting up X's webhook"), "setting-up-xs-webhook");
    assert_eq!(
        slug("Sent once: what holds and what does not"),
        "sent-once-what-holds-and-what-does-not"
    );
    assert_eq!(slug("`/readyz` answers 503"), "readyz-answers-503");
    let doc = "# A\n## A\n```\n# not a heading\n```\n";
    let found = anchors(doc);
    assert!(found.contains("a") && found.contains("a-1") && !found.contains("not-a-heading"));
}

/// Where a comment in the code or the deployment kit points a reader to a
/// guide: `docs/operator.md#getting-rabbitmq`, or `docs/operator.md, "Running
/// several replicas"` (file, then a heading's text, on one line), or the
/// README's `README, "Quick start"`.
#[derive(Debug, PartialEq, Eq)]
struct Pointer {
    file: String,
    section: Option<Section>,
}

#[derive(Debug, PartialEq, Eq)]
enum Section {
    Anchor(String),
    Heading(String),
}

fn pointers(line: &str) -> Vec<Pointer> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("docs/") {
        // A path that ends in docs/ is read from the root: `../` before it
        // names the same file.
        let after = &rest[at..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || "/._-".contains(c)))
            .unwrap_or(after.len());
        let file = after[..end].trim_end_matches('.');
        rest = &after[file.len()..];
        if !file.ends_with(".md") {
            continue;
        }
        let section = if let Some(anchor) = rest.strip_prefix('#') {
            let end = anchor
                .find(|c: char| !(c.is_ascii_alphanumeric() || "_-".contains(c)))
                .unwrap_or(anchor.len());
            Some(Section::Anchor(anchor[..end].to_owned()))
        } else if let Some(quoted) = rest.strip_prefix(", \"") {
            quoted
                .find('"')
                .map(|end| Section::Heading(quoted[..end].to_owned()))
        } else {
            None
        };
        found.push(Pointer {
            file: file.to_owned(),
            section,
        });
    }
    let mut rest = line;
    while let Some(at) = rest.find("README, \"") {
        let quoted = &rest[at + "README, \"".len()..];
        let Some(end) = quoted.find('"') else { break };
        found.push(Pointer {
            file: "README.md".into(),
            section: Some(Section::Heading(quoted[..end].to_owned())),
        });
        rest = &quoted[end..];
    }
    found
}

#[test]
fn pointers_are_read_as_written() {
    assert_eq!(
        pointers("see docs/operator.md#getting-rabbitmq)"),
        vec![Pointer {
            file: "docs/operator.md".into(),
            section: Some(Section::Anchor("getting-rabbitmq".into())),
        }]
    );
    assert_eq!(
        pointers("# (docs/operator.md, \"Running several replicas\"): the same"),
        vec![Pointer {
            file: "docs/operator.md".into(),
            section: Some(Section::Heading("Running several replicas".into())),
        }]
    );
    assert_eq!(
        pointers("(README, \"Sent once\")"),
        vec![Pointer {
            file: "README.md".into(),
            section: Some(Section::Heading("Sent once".into())),
        }]
    );
    assert_eq!(
        pointers("(see docs/benchmarks.md). And docs/schemas/x.json"),
        vec![Pointer {
            file: "docs/benchmarks.md".into(),
            section: None,
        }]
    );
}

/// The code and the deployment kit point readers at sections of the guides.
/// The guides get reorganised (the README's reference moved to docs/ once,
/// and left a dozen comments pointing at sections that no longer existed):
/// every such pointer must name a file and a section that exist.
#[test]
fn every_pointer_from_the_code_and_the_kit_to_a_guide_resolves() {
    let text_file = |path: &Path| {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        ["rs", "toml", "yaml", "yml", "json", "sh", "py", "js"].contains(&ext)
            || name == "Dockerfile"
            || path.parent().and_then(Path::file_name) == Some(".ci".as_ref())
    };
    let mut sources = Vec::new();
    for dir in ["crates", "deploy", "tests", ".ci", "docs/examples"] {
        sources.extend(files_under(&root().join(dir), &text_file));
    }
    sources.push(root().join("docker-compose.yml"));
    let mut failures = Vec::new();
    let mut checked = 0;
    for source in &sources {
        let Ok(text) = std::fs::read_to_string(source) else {
            continue; // not text
        };
        for (number, line) in text.lines().enumerate() {
            for pointer in pointers(line) {
                checked += 1;
                let at = format!("{}:{}", shown(source), number + 1);
                let target = root().join(&pointer.file);
                if !target.exists() {
                    failures.push(format!("{at}: {}: no such file", pointer.file));
                    continue;
                }
                let anchor = match &pointer.section {
                    None => continue,
                    Some(Section::Anchor(anchor)) => anchor.clone(),
                    Some(Section::Heading(heading)) => slug(heading),
                };
                if !anchors(&read(&target)).contains(&anchor) {
                    failures.push(format!(
                        "{at}: {}: no section {:?}",
                        pointer.file, pointer.section
                    ));
                }
            }
        }
    }
    assert!(checked >= 5, "only {checked} pointers to guides found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The operator's guide's metrics table is the reference operators read; a
/// metric added to the catalog (and so to `/metrics`) without a row there is
/// one nobody learns to alert on, and a row without a metric sends them
/// looking for a series that does not exist.
#[test]
fn the_operators_guide_lists_every_metric_of_the_catalog() {
    let guide = read(&root().join("docs/operator.md"));
    let rows: HashSet<&str> = guide
        .lines()
        .filter_map(|line| line.strip_prefix("| `xbridge_"))
        .filter_map(|rest| rest.split('`').next())
        .collect();
    let catalog: HashSet<&str> = xbridge_core::metrics_catalog::METRICS
        .iter()
        .map(|metric| {
            metric
                .name
                .strip_prefix("xbridge_")
                .expect("xbridge_ prefix")
        })
        .collect();
    let mut missing: Vec<_> = catalog.difference(&rows).collect();
    let mut unknown: Vec<_> = rows.difference(&catalog).collect();
    missing.sort();
    unknown.sort();
    assert!(
        missing.is_empty(),
        "metrics without a row in docs/operator.md's metrics table: xbridge_{missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "rows of docs/operator.md's metrics table that name no metric of crates/core/src/metrics_catalog.rs: xbridge_{unknown:?}"
    );
}

/// The guides tell an operator to point the Kubernetes kit at their own image
/// with `kustomize edit set image NAME=...` in `base/` or an overlay. Below
/// `common/`, whose `images` entry renames `xbridge`, the image already has
/// that entry's `newName`: an entry for any other name matches nothing, and
/// the pods keep pulling the default image (the guides once said `xbridge`).
#[test]
fn every_set_image_command_names_the_image_as_the_kit_renders_it() {
    let common = root().join("deploy/kubernetes/common/kustomization.yaml");
    let kustomization: Value =
        serde_norway::from_str(&read(&common)).expect("common/kustomization.yaml is YAML");
    let rendered_as = kustomization["images"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|image| image["name"] == "xbridge")
        .and_then(|image| image["newName"].as_str())
        .expect("common/kustomization.yaml renames the image xbridge")
        .to_owned();
    let mut sources = documents();
    sources.extend(files_under(&root().join("deploy/kubernetes"), &|path| {
        path.file_name()
            .is_some_and(|name| name == "kustomization.yaml")
    }));
    let mut failures = Vec::new();
    let mut checked = 0;
    for source in &sources {
        for (number, line) in read(source).lines().enumerate() {
            let Some((_, command)) = line.split_once("set image ") else {
                continue;
            };
            let name = command
                .trim_start_matches(['`', '"'])
                .split('=')
                .next()
                .unwrap_or("");
            checked += 1;
            if name != rendered_as {
                failures.push(format!(
                    "{}:{}: `set image {name}=…` matches nothing below common/; name it {rendered_as}",
                    shown(source),
                    number + 1
                ));
            }
        }
    }
    assert!(checked >= 2, "only {checked} `set image` commands found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
