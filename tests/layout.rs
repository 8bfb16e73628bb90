//! The crate's shape, checked from its source: the top-level modules depend
//! on each other without cycles, the graph in `docs/architecture.md` is the
//! one the code has, and no source file grows past the size a reader can
//! hold in mind.
//!
//! Every `crate::` path counts, in code and tests alike (comment lines do
//! not), as do the crate-root re-exports it goes through.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lines a source file may have.
const MAX_LINES: usize = 700;

/// Files over [`MAX_LINES`] that another change is rewriting; they leave
/// this list when that lands.
const OVERSIZED_PENDING_REWRITE: [&str; 0] = [];

type Graph = BTreeMap<String, BTreeSet<String>>;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("readable source directory")
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`None` for `lib.rs` and
/// `main.rs`).
fn module_of(path: &Path) -> Option<String> {
    let relative = path.strip_prefix(root().join("src")).expect("under src");
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_owned())
}

/// The file's text without comment lines.
fn code(path: &Path) -> String {
    std::fs::read_to_string(path)
        .expect("readable source")
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn identifier(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The first path segments after each `crate::` in `text`: `crate::a::b`
/// gives `a`, `crate::{a::x, b}` gives `a` and `b`.
fn crate_paths(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item_start = true;
            for (index, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    c if item_start && (c.is_ascii_alphanumeric() || c == '_') => {
                        found.push(identifier(&group[index..]).to_owned());
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.push(identifier(rest).to_owned());
        }
    }
    found
}

/// The top-level modules `lib.rs` declares, and which module each
/// crate-root re-export comes from.
fn crate_root() -> (BTreeSet<String>, BTreeMap<String, String>) {
    let lib = code(&root().join("src/lib.rs"));
    let mut modules = BTreeSet::new();
    let mut reexports = BTreeMap::new();
    for statement in lib.split(';') {
        let statement = statement.trim();
        let declared = ["mod ", "pub mod ", "pub(crate) mod "]
            .iter()
            .find_map(|prefix| statement.rsplit('\n').next()?.trim().strip_prefix(prefix));
        if let Some(name) = declared {
            modules.insert(identifier(name).to_owned());
            continue;
        }
        if let Some(used) = statement.strip_prefix("pub use ") {
            let module = identifier(used).to_owned();
            let names = used
                .split(['{', '}', ',', ':'])
                .map(|part| part.trim().rsplit(' ').next().unwrap_or(""))
                .filter(|name| !name.is_empty() && *name != module);
            for name in names {
                reexports.insert(name.to_owned(), module.clone());
            }
        }
    }
    (modules, reexports)
}

fn graph() -> Graph {
    let (modules, reexports) = crate_root();
    let mut files = Vec::new();
    sources(&root().join("src"), &mut files);
    let mut graph: Graph = modules
        .iter()
        .map(|module| (module.clone(), BTreeSet::new()))
        .collect();
    for file in files {
        let Some(from) = module_of(&file) else {
            continue;
        };
        for segment in crate_paths(&code(&file)) {
            let target = if modules.contains(&segment) {
                Some(segment)
            } else {
                reexports.get(&segment).cloned()
            };
            if let Some(to) = target.filter(|to| *to != from) {
                graph.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    graph
}

/// A cycle through `start`, if any, as the path that closes it.
fn cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        graph: &Graph,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|seen| seen == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(graph, next, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(graph, node, &mut Vec::new(), &mut done))
}

/// One line per module: `module -> its dependencies`.
fn render(graph: &Graph) -> Vec<String> {
    graph
        .iter()
        .map(|(module, deps)| {
            let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
            if deps.is_empty() {
                format!("{module} -> (nothing)")
            } else {
                format!("{module} -> {}", deps.join(", "))
            }
        })
        .collect()
}

#[test]
fn paths_are_read_from_use_lists_and_expressions() {
    let text = "use crate::{config::{self, Config}, engine};\nlet x = crate::metrics::name::X;\n\
                let y = my_crate::nope; $crate::nope2;";
    assert_eq!(crate_paths(text), ["config", "engine", "metrics"]);
}

#[test]
fn the_top_level_modules_have_no_cycles() {
    let graph = graph();
    assert!(graph.contains_key("engine"), "modules found: {graph:?}");
    if let Some(cycle) = cycle(&graph) {
        panic!(
            "a cycle between top-level modules: {}\n{}",
            cycle.join(" -> "),
            render(&graph).join("\n")
        );
    }
}

#[test]
fn the_documented_graph_is_the_code_graph() {
    let doc = std::fs::read_to_string(root().join("docs/architecture.md")).expect("the doc");
    let start = doc
        .find("```text module-graph")
        .expect("a ```text module-graph block in docs/architecture.md");
    let block = &doc[start..];
    let body = &block[block.find('\n').expect("block body") + 1..];
    let documented: Vec<&str> = body[..body.find("```").expect("closed block")]
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    let actual = render(&graph());
    assert_eq!(
        documented,
        actual,
        "update the module-graph block of docs/architecture.md to:\n{}",
        actual.join("\n")
    );
}

#[test]
fn no_source_file_is_too_long() {
    let mut files = Vec::new();
    sources(&root().join("src"), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let relative = file.strip_prefix(root()).ok()?.to_str()?.to_owned();
            let lines = std::fs::read_to_string(file).ok()?.lines().count();
            (lines > MAX_LINES && !OVERSIZED_PENDING_REWRITE.contains(&relative.as_str()))
                .then(|| format!("{relative}: {lines} lines"))
        })
        .collect();
    assert!(
        long.is_empty(),
        "split these files (at most {MAX_LINES} lines): {long:?}"
    );
}
