//! Within a crate, no module imports one that imports it back (docs/architecture.md):
//! a cycle makes two files one concept in disguise, and neither can be read, moved
//! or tested without the other. This test parses every source file of every crate
//! (with `syn`, so comments, doc links and strings are not code), builds each
//! crate's module import graph and fails naming each cycle, link by link, with the
//! file and the path that creates the link.
//!
//! What is an import: a path in a `use` or in code (types, expressions, patterns,
//! trait bounds, and the tokens of macro invocations) that names an item of another
//! module, written from `crate::`, `self::`, `super::`, a child module's name or a
//! name a `use` brought in. A path is followed through re-exports to the module that
//! defines the item. What is not: `mod x;` declarations, visibilities
//! (`pub(super)`), and a re-export of the module's own descendants
//! (`pub use child::Thing;`), which is how a parent presents its children, as the
//! crate root's facade does; the parent's own code naming `Thing` still counts.
//!
//! What is a cycle: a loop of such links in which no module holds all the others.
//! A folder module and its own files may use each other (the parent is built from
//! its parts, the parts use what the parent shares), as the crate root and its
//! modules do; two modules neither of which holds the other may not, nor may a
//! loop that leaves a folder through one part and comes back through another or
//! through the parent. `main.rs` beside `lib.rs` is a crate of its own.
//!
//! Deliberately not seen: code that macros generate (only the tokens written in an
//! invocation or a `macro_rules!` body are read, for paths with at least one `::`),
//! items that come in through a glob `use` (the glob itself links to its module),
//! and local names shadowing an imported one. Inline modules (`mod tests { .. }`)
//! belong to their file: the graph's nodes are files, and `super::` is resolved
//! from where it is written.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use syn::buffer::TokenBuffer;
use syn::visit::{self, Visit};

/// A module's path from its crate's root: empty for the root itself.
type ModPath = Vec<String>;

/// A crate's sources: paths relative to its `src/`, with `/`, and their text.
type Sources = BTreeMap<String, String>;

/// One module, file or inline, as the collector found it.
#[derive(Default)]
struct Module {
    /// The source file, relative to `src/`.
    file: String,
    /// The file module this module belongs to: the graph's node.
    node: ModPath,
    /// Modules declared inside it with `mod`.
    children: BTreeSet<String>,
    /// Names its `use` items bring in, and the path each stands for, as written.
    bindings: BTreeMap<String, Vec<String>>,
    /// Its `use` items, one per leaf of a use tree.
    uses: Vec<Use>,
    /// Paths written in its code and in its macros' tokens.
    paths: Vec<Vec<String>>,
}

struct Use {
    /// The path as written; for a glob, the module it reads.
    written: Vec<String>,
    /// `pub`, `pub(crate)`, `pub(super)`...: others may name the item through it.
    reexport: bool,
}

/// One link of the graph, with the first reference that creates it.
struct Link {
    file: String,
    written: String,
}

/// A crate's module tree, read from one root file (`lib.rs`, `main.rs`, `bin/*.rs`).
struct Tree {
    modules: BTreeMap<ModPath, Module>,
}

impl Tree {
    /// Reads `root` and every file its `mod` declarations reach.
    fn load(sources: &Sources, root: &str) -> Tree {
        let mut modules = BTreeMap::new();
        let dir = root.rsplit_once('/').map_or("", |(dir, _)| dir);
        let mut pending = vec![(root.to_string(), ModPath::new(), dir_prefix(dir))];
        while let Some((file, module, dir)) = pending.pop() {
            let text = &sources[&file];
            let ast = syn::parse_file(text).unwrap_or_else(|e| panic!("{file}: {e}"));
            modules.insert(
                module.clone(),
                Module {
                    file: file.clone(),
                    node: module.clone(),
                    ..Module::default()
                },
            );
            let mut collector = Collector {
                modules: &mut modules,
                pending: &mut pending,
                sources,
                file,
                node: module.clone(),
                scope: module,
                dir,
            };
            collector.visit_file(&ast);
        }
        Tree { modules }
    }

    fn files(&self) -> impl Iterator<Item = &String> {
        self.modules.values().map(|module| &module.file)
    }

    /// The links between file modules, each with the first reference creating it.
    fn links(&self) -> BTreeMap<(ModPath, ModPath), Link> {
        let mut links = BTreeMap::new();
        for (scope, module) in &self.modules {
            let uses = module.uses.iter().filter_map(|u| {
                let target = self.definer(&self.absolute(scope, &u.written, 0)?, 0)?;
                let presents_descendant =
                    u.reexport && target.starts_with(scope) && target != *scope;
                (!presents_descendant).then_some((target, &u.written))
            });
            let paths = module.paths.iter().filter_map(|written| {
                if written.len() == 1 && !module.bindings.contains_key(&written[0]) {
                    return None; // a local name, a type parameter, the prelude
                }
                Some((
                    self.definer(&self.absolute(scope, written, 0)?, 0)?,
                    written,
                ))
            });
            for (target, written) in uses.chain(paths) {
                let to = self.modules[&target].node.clone();
                if to != module.node {
                    links
                        .entry((module.node.clone(), to))
                        .or_insert_with(|| Link {
                            file: module.file.clone(),
                            written: written.join("::"),
                        });
                }
            }
        }
        links
    }

    /// `written`, seen from module `scope`, as a path from the crate's root; `None`
    /// when it leaves the crate (another crate, `std`) or names nothing of a module.
    fn absolute(&self, scope: &ModPath, written: &[String], depth: usize) -> Option<Vec<String>> {
        let (first, rest) = written.split_first()?;
        let module = &self.modules[scope];
        let mut base = match first.as_str() {
            "crate" => ModPath::new(),
            "self" => scope.clone(),
            "super" => scope[..scope.len().checked_sub(1)?].to_vec(),
            name if module.children.contains(name) => {
                [scope.as_slice(), &[name.to_string()]].concat()
            }
            name if depth < 16 => {
                let bound = module.bindings.get(name)?;
                if is_own_macro(bound, name) {
                    return Some([scope.as_slice(), written].concat());
                }
                let mut path = self.absolute(scope, bound, depth + 1)?;
                path.extend_from_slice(rest);
                return Some(path);
            }
            _ => return None,
        };
        let mut rest = rest;
        while let Some(("super", tail)) = rest.split_first().map(|(s, t)| (s.as_str(), t)) {
            base.pop()?;
            rest = tail;
        }
        base.extend_from_slice(rest);
        Some(base)
    }

    /// The module that defines what `path` names, through modules and the `use`
    /// items (re-exports, or a parent's imports seen through `super::`) on the way;
    /// `None` for another crate's item that a `use` here brought in.
    fn definer(&self, path: &[String], depth: usize) -> Option<ModPath> {
        let mut module = ModPath::new();
        for (at, segment) in path.iter().enumerate() {
            let here = &self.modules[&module];
            if here.children.contains(segment) {
                module.push(segment.clone());
            } else if let Some(bound) = here
                .bindings
                .get(segment)
                .filter(|bound| depth < 16 && !is_own_macro(bound, segment))
            {
                let mut target = self.absolute(&module, bound, 0)?;
                target.extend_from_slice(&path[at + 1..]);
                return self.definer(&target, depth + 1);
            } else {
                break; // an item of this module
            }
        }
        Some(module)
    }

    /// The cycles that break the promise, each as the links of one loop.
    ///
    /// A folder module and its own files may use each other: the parent is built
    /// from its children (`mod x;`), and a child uses what its parent shares, as the
    /// crate root and its modules do. So a loop counts only when none of its
    /// modules holds all the others: it joins modules of two branches below their
    /// nearest common parent without passing through it. Each such loop is looked
    /// for once, below that parent: in the graph of its descendants alone, a
    /// strongly connected group that reaches into two of its branches has one.
    fn cycles(&self, label: &str, root: &str) -> Vec<String> {
        let links = self.links();
        let nodes: BTreeSet<&ModPath> = self.modules.values().map(|m| &m.node).collect();
        let mut reports = Vec::new();
        for top in &nodes {
            let below = |m: &ModPath| m.len() > top.len() && m.starts_with(top);
            let mut graph: BTreeMap<&ModPath, BTreeSet<&ModPath>> = BTreeMap::new();
            for (from, to) in links.keys().filter(|(from, to)| below(from) && below(to)) {
                graph.entry(from).or_default().insert(to);
            }
            let branch = |m: &ModPath| m[top.len()].clone();
            for component in strongly_connected(&graph) {
                let crossing = component.iter().find_map(|&from| {
                    graph[from]
                        .iter()
                        .find(|&&to| component.contains(&to) && branch(from) != branch(to))
                        .map(|&to| (from, to))
                });
                let Some((from, to)) = crossing else {
                    continue; // all within one branch: looked at below it
                };
                let loop_: Vec<&ModPath> = std::iter::once(from)
                    .chain(shortest_path(to, from, &graph, &component))
                    .collect();
                reports.push(report(label, root, &loop_, &links));
            }
        }
        reports
    }
}

/// One loop, module by module, with the file and path behind each link.
fn report(
    label: &str,
    root: &str,
    loop_: &[&ModPath],
    links: &BTreeMap<(ModPath, ModPath), Link>,
) -> String {
    let names: Vec<String> = loop_.iter().map(|m| shown_module(m)).collect();
    let mut report = format!(
        "{label} ({root}): a module imports one that imports it back: {}",
        names.join(" -> ")
    );
    for pair in loop_.windows(2) {
        let link = &links[&(pair[0].clone(), pair[1].clone())];
        report.push_str(&format!(
            "\n    {} -> {}: {label}/{} names `{}`",
            shown_module(pair[0]),
            shown_module(pair[1]),
            link.file,
            link.written
        ));
    }
    report
}

/// `use fixture;` after `macro_rules! fixture`: the module's own macro, made
/// nameable by path.
fn is_own_macro(bound: &[String], name: &str) -> bool {
    bound.len() == 1 && bound[0] == name
}

fn dir_prefix(dir: &str) -> String {
    if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    }
}

fn shown_module(module: &ModPath) -> String {
    if module.is_empty() {
        "crate".to_string()
    } else {
        module.join("::")
    }
}

/// Walks one file's syntax tree, filing what it finds under the module it is in.
struct Collector<'a> {
    modules: &'a mut BTreeMap<ModPath, Module>,
    pending: &'a mut Vec<(String, ModPath, String)>,
    sources: &'a Sources,
    file: String,
    node: ModPath,
    scope: ModPath,
    /// Where the files of modules declared here live, relative to `src/`.
    dir: String,
}

impl Collector<'_> {
    fn here(&mut self) -> &mut Module {
        self.modules
            .get_mut(&self.scope)
            .expect("the current module is registered")
    }

    /// The file of `mod name;`, queued to be read as the module `child`.
    fn queue_file(&mut self, name: &str, child: ModPath) {
        let candidates = [
            format!("{}{name}.rs", self.dir),
            format!("{}{name}/mod.rs", self.dir),
        ];
        let file = candidates
            .iter()
            .find(|file| self.sources.contains_key(*file))
            .unwrap_or_else(|| panic!("{}: `mod {name};` has no file: {candidates:?}", self.file));
        let dir = format!("{}{name}/", self.dir);
        self.pending.push((file.clone(), child, dir));
    }

    /// Paths of at least two segments in a macro's or an attribute's tokens.
    fn scan_tokens(&mut self, tokens: TokenBuffer) {
        let mut found = Vec::new();
        token_paths(tokens.begin(), &mut found);
        self.here()
            .paths
            .extend(found.into_iter().filter(|path| path.len() > 1));
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        assert!(
            !item.attrs.iter().any(|a| a.path().is_ident("path")),
            "{}: `#[path]` on `mod {}` is not followed by module_graph.rs",
            self.file,
            item.ident
        );
        let name = item.ident.to_string();
        self.here().children.insert(name.clone());
        let child = [self.scope.as_slice(), std::slice::from_ref(&name)].concat();
        let Some((_, items)) = &item.content else {
            return self.queue_file(&name, child);
        };
        self.modules.insert(
            child.clone(),
            Module {
                file: self.file.clone(),
                node: self.node.clone(),
                ..Module::default()
            },
        );
        let outer = std::mem::replace(&mut self.scope, child);
        let inner_dir = format!("{}{name}/", self.dir);
        let outer_dir = std::mem::replace(&mut self.dir, inner_dir);
        for item in items {
            self.visit_item(item);
        }
        self.scope = outer;
        self.dir = outer_dir;
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let reexport = !matches!(item.vis, syn::Visibility::Inherited);
        let mut leaves = Vec::new();
        use_leaves(&item.tree, Vec::new(), &mut leaves);
        let module = self.here();
        for (written, name) in leaves {
            if let Some(name) = name {
                module.bindings.insert(name, written.clone());
            }
            module.uses.push(Use { written, reexport });
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() {
            let written = path.segments.iter().map(|s| unraw(&s.ident)).collect();
            self.here().paths.push(written);
        }
        visit::visit_path(self, path); // generic arguments hold paths too
    }

    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {
        // `pub(super)`, `pub(in crate::x)`: who may see an item, not an import.
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.visit_path(&mac.path);
        self.scan_tokens(TokenBuffer::new2(mac.tokens.clone()));
    }

    fn visit_attribute(&mut self, attr: &'ast syn::Attribute) {
        // Doc comments are `#[doc = "..."]`: text, not code.
        if let syn::Meta::List(list) = &attr.meta {
            self.scan_tokens(TokenBuffer::new2(list.tokens.clone()));
        }
    }
}

/// The leaves of a use tree: each path as written, and the name it binds
/// (none for a glob or `as _`).
fn use_leaves(
    tree: &syn::UseTree,
    prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, Option<String>)>,
) {
    let with = |ident: &syn::Ident| [prefix.as_slice(), &[unraw(ident)]].concat();
    match tree {
        syn::UseTree::Path(p) => use_leaves(&p.tree, with(&p.ident), out),
        syn::UseTree::Name(n) if n.ident == "self" => {
            let name = prefix.last().cloned();
            out.push((prefix, name));
        }
        syn::UseTree::Name(n) => out.push((with(&n.ident), Some(unraw(&n.ident)))),
        syn::UseTree::Rename(r) => {
            let written = if r.ident == "self" {
                prefix.clone()
            } else {
                with(&r.ident)
            };
            let name = (r.rename != "_").then(|| unraw(&r.rename));
            out.push((written, name));
        }
        syn::UseTree::Glob(_) => out.push((prefix, None)),
        syn::UseTree::Group(g) => {
            for item in &g.items {
                use_leaves(item, prefix.clone(), out);
            }
        }
    }
}

fn unraw(ident: &syn::Ident) -> String {
    let text = ident.to_string();
    text.strip_prefix("r#").map(str::to_string).unwrap_or(text)
}

/// Paths (`a::b::c`, `$crate::x`) in a token sequence and in its groups.
fn token_paths(mut cursor: syn::buffer::Cursor, out: &mut Vec<Vec<String>>) {
    let mut current: Option<Vec<String>> = None;
    let mut colons = 0;
    while !cursor.eof() {
        if let Some((ident, next)) = cursor.ident() {
            let name = unraw(&ident); // `$crate` is `$` then `crate`
            match current.as_mut() {
                Some(path) if colons == 2 => path.push(name),
                _ => {
                    out.extend(current.take());
                    // After a leading `::` the path is another crate's: "::" never resolves.
                    let start = (colons == 2).then(|| "::".to_string());
                    current = Some(start.into_iter().chain([name]).collect());
                }
            }
            colons = 0;
            cursor = next;
            continue;
        }
        if let Some((_, next)) = cursor.punct().filter(|(p, _)| p.as_char() == ':') {
            colons += 1;
            cursor = next;
            continue;
        }
        out.extend(current.take());
        colons = 0;
        if let Some((inside, _, _, next)) = cursor.any_group() {
            token_paths(inside, out);
            cursor = next;
        } else if let Some((_, next)) = cursor.token_tree() {
            cursor = next;
        } else {
            break;
        }
    }
    out.extend(current);
}

/// Tarjan's strongly connected components with more than one module.
fn strongly_connected<'a>(
    graph: &BTreeMap<&'a ModPath, BTreeSet<&'a ModPath>>,
) -> Vec<Vec<&'a ModPath>> {
    struct State<'a> {
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        found: Vec<Vec<&'a ModPath>>,
    }
    fn visit<'a>(
        v: &'a ModPath,
        graph: &BTreeMap<&'a ModPath, BTreeSet<&'a ModPath>>,
        s: &mut State<'a>,
    ) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        for &w in graph.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(w, graph, s);
                s.low.insert(v, s.low[v].min(s.low[w]));
            } else if s.stack.contains(&w) {
                s.low.insert(v, s.low[v].min(s.index[w]));
            }
        }
        if s.low[v] == s.index[v] {
            let at = s
                .stack
                .iter()
                .position(|&m| m == v)
                .expect("v is on the stack");
            let mut component = s.stack.split_off(at);
            component.sort();
            if component.len() > 1 {
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for &v in graph.keys() {
        if !state.index.contains_key(v) {
            visit(v, graph, &mut state);
        }
    }
    state.found
}

/// The shortest way from `start` to `goal` inside `component`, both ends included.
fn shortest_path<'a>(
    start: &'a ModPath,
    goal: &'a ModPath,
    graph: &BTreeMap<&'a ModPath, BTreeSet<&'a ModPath>>,
    component: &[&'a ModPath],
) -> Vec<&'a ModPath> {
    let mut came_from: BTreeMap<&ModPath, &ModPath> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        if v == goal {
            let mut path = vec![goal];
            while let Some(&before) = came_from.get(path[path.len() - 1]) {
                path.push(before);
            }
            path.reverse();
            return path;
        }
        for &w in graph.get(v).into_iter().flatten() {
            if component.contains(&w) && w != start && !came_from.contains_key(w) {
                came_from.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    unreachable!("a strongly connected component joins each of its modules to each")
}

/// The crate roots among `sources`: the library, the binary, other binaries.
fn roots(sources: &Sources) -> Vec<&String> {
    sources
        .keys()
        .filter(|file| {
            *file == "lib.rs"
                || *file == "main.rs"
                || file.strip_prefix("bin/").is_some_and(|binary| {
                    binary
                        .split_once('/')
                        .is_none_or(|(_, rest)| rest == "main.rs")
                })
        })
        .collect()
}

/// Every cycle in every crate `sources` holds (one per root), and every file no
/// root reaches (which this check would otherwise skip in silence); and how many
/// links between modules were seen, so a checker that sees none cannot pass.
fn problems(label: &str, sources: &Sources) -> (Vec<String>, usize) {
    let mut problems = Vec::new();
    let mut reached = BTreeSet::new();
    let mut links = 0;
    for root in roots(sources) {
        let tree = Tree::load(sources, root);
        reached.extend(tree.files().cloned());
        links += tree.links().len();
        problems.extend(tree.cycles(label, root));
    }
    for file in sources.keys().filter(|file| !reached.contains(*file)) {
        problems.push(format!(
            "{label}/{file}: no crate root's `mod` reaches it, so it was not checked"
        ));
    }
    (problems, links)
}

/// The repository's root: this crate lives in `tests/`.
fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `.rs` files under `src`, keyed by their path relative to it.
fn read_sources(src: &Path) -> Sources {
    fn walk(dir: &Path, src: &Path, out: &mut Sources) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("readable directory entry").path();
            if path.is_dir() {
                walk(&path, src, out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let relative = path
                    .strip_prefix(src)
                    .expect("under src")
                    .to_string_lossy()
                    .replace('\\', "/");
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                out.insert(relative, text);
            }
        }
    }
    let mut sources = Sources::new();
    walk(src, src, &mut sources);
    sources
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let root = repository();
    let mut crates: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .expect("crates/")
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|path| path.join("src").is_dir())
        .collect();
    crates.push(root.join("tests"));
    crates.sort();
    let mut problems_found = Vec::new();
    let (mut files, mut links) = (0, 0);
    for dir in &crates {
        let sources = read_sources(&dir.join("src"));
        files += sources.len();
        let label = dir
            .strip_prefix(&root)
            .expect("under the repository")
            .display()
            .to_string();
        let (found, seen) = problems(&format!("{label}/src"), &sources);
        problems_found.extend(found);
        links += seen;
    }
    assert!(
        crates.len() >= 10 && files >= 100 && links >= 300,
        "the walk found only {} crates, {files} files and {links} links between modules",
        crates.len()
    );
    assert!(problems_found.is_empty(), "{}", problems_found.join("\n"));
}

/// The problems of one in-memory crate, for the checker's own tests.
fn problems_of(files: &[(&str, &str)]) -> Vec<String> {
    let sources = files
        .iter()
        .map(|(file, text)| (file.to_string(), text.to_string()))
        .collect();
    problems("demo", &sources).0
}

/// The links of one in-memory crate, as `from -> to`, to show a test is not vacuous.
fn links_of(files: &[(&str, &str)]) -> Vec<String> {
    let sources: Sources = files
        .iter()
        .map(|(file, text)| (file.to_string(), text.to_string()))
        .collect();
    let tree = Tree::load(&sources, "lib.rs");
    let links = tree.links();
    links
        .keys()
        .map(|(from, to)| format!("{} -> {}", shown_module(from), shown_module(to)))
        .collect()
}

fn assert_one_cycle_naming(problems: &[String], links: &[&str]) {
    assert_eq!(problems.len(), 1, "{problems:#?}");
    for link in links {
        assert!(problems[0].contains(link), "no `{link}` in {problems:#?}");
    }
}

#[test]
fn two_modules_that_import_each_other_are_named_with_the_paths_that_link_them() {
    let problems = problems_of(&[
        ("lib.rs", "mod a; mod b;"),
        ("a.rs", "use crate::b::Bee; pub struct Ay(Bee);"),
        ("b.rs", "pub struct Bee; pub fn f(_: &crate::a::Ay) {}"),
    ]);
    assert_eq!(
        problems,
        [
            "demo (lib.rs): a module imports one that imports it back: a -> b -> a\n    \
          a -> b: demo/a.rs names `crate::b::Bee`\n    \
          b -> a: demo/b.rs names `crate::a::Ay`"
        ]
    );
}

#[test]
fn a_mod_declaration_is_not_an_import() {
    let problems = problems_of(&[
        ("lib.rs", "mod a; mod b; pub fn helper() {}"),
        ("a.rs", "use crate::helper; mod inner;"),
        ("a/inner.rs", "pub fn g() { super::super::helper() }"),
        ("b.rs", "pub fn h() { crate::a::inner::g() }"),
    ]);
    assert_eq!(problems, Vec::<String>::new());
}

#[test]
fn a_folder_module_and_its_own_files_may_use_each_other() {
    // As in core's config: the parent reads its parts' raw types, the parts
    // share the parent's settings, and one part uses a sibling one way.
    let files = [
        (
            "lib.rs",
            "pub mod config; fn run() { config::load(Default::default()); }",
        ),
        (
            "config/mod.rs",
            "mod channels; mod media; use channels::RawChannel; pub struct Settings; \
             pub fn load(_: RawChannel) -> Settings { Settings }",
        ),
        (
            "config/channels.rs",
            "pub struct RawChannel(super::media::Media); pub fn check(_: &super::Settings) {}",
        ),
        (
            "config/media.rs",
            "pub struct Media; pub fn f(_: crate::config::Settings) {}",
        ),
    ];
    assert_eq!(
        links_of(&files),
        [
            "crate -> config",
            "config -> config::channels",
            "config::channels -> config",
            "config::channels -> config::media",
            "config::media -> config",
        ]
    );
    assert_eq!(problems_of(&files), Vec::<String>::new());
}

#[test]
fn parts_of_one_folder_that_import_each_other_are_a_cycle() {
    let problems = problems_of(&[
        ("lib.rs", "mod config;"),
        ("config/mod.rs", "mod amqp; mod channels;"),
        (
            "config/amqp.rs",
            "pub struct Amqp(super::channels::Channel);",
        ),
        (
            "config/channels.rs",
            "use super::amqp::Amqp; pub struct Channel; fn f(_: Amqp) {}",
        ),
    ]);
    assert_one_cycle_naming(
        &problems,
        &[
            "config::amqp -> config::channels: demo/config/amqp.rs names `super::channels::Channel`",
            "config::channels -> config::amqp: demo/config/channels.rs names `super::amqp::Amqp`",
        ],
    );
}

#[test]
fn a_loop_that_leaves_a_folder_and_comes_back_through_its_parent_is_a_cycle() {
    // upload uses media's own `get`, which is built from media::fetch, which uses upload.
    let problems = problems_of(&[
        ("lib.rs", "mod media; mod upload;"),
        ("media/mod.rs", "mod fetch; pub fn get() { fetch::start() }"),
        ("media/fetch.rs", "pub fn start() { crate::upload::put() }"),
        (
            "upload.rs",
            "pub fn put() {} pub fn again() { crate::media::get() }",
        ),
    ]);
    assert_one_cycle_naming(
        &problems,
        &[
            "media -> media::fetch: demo/media/mod.rs names `fetch::start`",
            "media::fetch -> upload: demo/media/fetch.rs names `crate::upload::put`",
            "upload -> media: demo/upload.rs names `crate::media::get`",
        ],
    );
}

#[test]
fn a_parent_presenting_its_childs_item_does_not_import_it_but_its_own_code_using_it_does() {
    let files = |parent: &'static str| {
        problems_of(&[
            ("lib.rs", "mod media; mod upload;"),
            ("media/mod.rs", parent),
            (
                "media/fetch.rs",
                "pub struct Fetcher; fn f() { crate::upload::put() }",
            ),
            (
                "upload.rs",
                "pub fn put() {} pub fn again() { crate::media::Body; }",
            ),
        ])
    };
    let presents = "mod fetch; pub use fetch::Fetcher; pub struct Body;";
    assert_eq!(files(presents), Vec::<String>::new());
    let uses =
        "mod fetch; pub use fetch::Fetcher; pub struct Body; pub fn get() -> Fetcher { Fetcher }";
    assert_one_cycle_naming(
        &files(uses),
        &["media -> media::fetch: demo/media/mod.rs names `Fetcher`"],
    );
}

#[test]
fn a_path_through_a_re_export_links_to_the_module_that_defines_the_item() {
    let problems = problems_of(&[
        ("lib.rs", "mod a; mod b; pub use b::Bee;"),
        ("a.rs", "pub struct Ay; pub fn f(_: crate::Bee) {}"),
        ("b.rs", "pub struct Bee(crate::a::Ay);"),
    ]);
    assert_one_cycle_naming(&problems, &["a -> b: demo/a.rs names `crate::Bee`"]);
}

#[test]
fn comments_doc_links_and_strings_are_not_imports() {
    let a = "//! See [`crate::b::Bee`].\n// use crate::b::Bee;\n/* crate::b::Bee */\n\
             /// Unlike [`Bee`](crate::b::Bee).\npub struct Ay; pub const S: &str = \"crate::b::Bee\";";
    let problems = problems_of(&[
        ("lib.rs", "mod a; mod b;"),
        ("a.rs", a),
        ("b.rs", "pub struct Bee(crate::a::Ay);"),
    ]);
    assert_eq!(problems, Vec::<String>::new());
}

#[test]
fn paths_in_macro_invocations_and_macro_rules_are_imports() {
    let a = "pub fn ok() -> bool { true } fn t() { assert!(vec![crate::b::yes()].len() == 1); }";
    let problems = problems_of(&[
        ("lib.rs", "mod a; mod b;"),
        ("a.rs", a),
        (
            "b.rs",
            "pub fn yes() -> bool { true }\nmacro_rules! m { () => { $crate::a::ok() } }",
        ),
    ]);
    assert_one_cycle_naming(
        &problems,
        &[
            "demo/a.rs names `crate::b::yes`",
            "demo/b.rs names `crate::a::ok`",
        ],
    );
}

#[test]
fn a_macro_named_through_its_modules_use_links_to_that_module() {
    let problems = problems_of(&[
        ("lib.rs", "mod a; mod support;"),
        (
            "a.rs",
            "pub struct Ay; fn t() { crate::support::fixture!(); }",
        ),
        (
            "support.rs",
            "macro_rules! fixture { () => {} }\npub(crate) use fixture;\nfn f(_: crate::a::Ay) {}",
        ),
    ]);
    assert_one_cycle_naming(
        &problems,
        &["a -> support: demo/a.rs names `crate::support::fixture`"],
    );
}

#[test]
fn super_in_an_inline_module_is_read_from_where_it_is_written() {
    // `super` in a.rs's tests is a.rs itself, not its folder's sibling b.
    let a =
        "pub fn go() {}\n#[cfg(test)]\nmod tests { use super::*; #[test] fn t() { super::go() } }";
    let problems = problems_of(&[
        ("lib.rs", "mod a; mod b;"),
        ("a.rs", a),
        ("b.rs", "pub fn run() { crate::a::go() }"),
    ]);
    assert_eq!(problems, Vec::<String>::new());
}

#[test]
fn a_file_no_root_reaches_is_reported_rather_than_skipped() {
    let problems = problems_of(&[
        ("lib.rs", "mod a;"),
        ("a.rs", ""),
        ("stray.rs", "use crate::a;"),
    ]);
    assert_eq!(
        problems,
        ["demo/stray.rs: no crate root's `mod` reaches it, so it was not checked"]
    );
}

#[test]
fn the_binary_beside_the_library_is_a_crate_of_its_own() {
    let problems = problems_of(&[
        ("lib.rs", "pub mod a;"),
        ("a.rs", "pub fn f() {}"),
        ("main.rs", "mod cli; fn main() { cli::run() }"),
        ("cli.rs", "pub fn run() { demo::a::f() }"),
    ]);
    assert_eq!(problems, Vec::<String>::new());
}
