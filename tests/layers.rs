//! The `use` graph of `src/node/` is in layers: every file imports only
//! from its own layer or those below, files of one layer import each other
//! without a circle, and every file of the crate opens with a `//!` saying
//! what it owns. (A file may use its parent module, whose impl it splits:
//! `ring/send.rs` is part of the ring.) `src/container/` and `src/output/`
//! import nothing from `node`. Read from the source text, so that a new file or import
//! that runs back up the layers fails here with its name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `node/`'s modules by layer, lowest first; a module not listed fails.
const LAYERS: &[&[&str]] = &[
    // Leaf state and the ring's own parts.
    &[
        "stats",
        "random",
        "gate",
        "directory",
        "gop",
        "ring::wake",
        "ring::buffers",
        "ring::probe",
    ],
    // The socket ring and its per-socket handle.
    &[
        "ring",
        "ring::conn",
        "ring::tls",
        "ring::send",
        "ring::close",
    ],
    // Fan-out, and the mesh between shards.
    &[
        "hub",
        "hub::fanout",
        "hub::mesh",
        "hub::outbox",
        "hub::relay",
        "hub::streams",
        "hub::tests",
        "pump",
    ],
    // What a shard's connections share (its push targets among it), and
    // who may publish or play.
    &["push", "record", "context"],
    &["admission"],
    // LL-HLS on the shards.
    &["hls", "hls::session", "hls::run"],
    // The connection tasks.
    &[
        "rtmp",
        "http",
        "http::request",
        "http::flv",
        "http::hls",
        "http::recording",
        "http::rtmpt",
        "srt",
    ],
    // The shard's executor, then the node.
    &["shard"],
    &[""],
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `ring/conn.rs` → `ring::conn`, `hub/mod.rs` → `hub`, `mod.rs` → ``.
fn module_of(root: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(root).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

fn parent(module: &str) -> Option<String> {
    if module.is_empty() {
        return None;
    }
    Some(module.rsplit_once("::").map_or("", |(p, _)| p).to_owned())
}

/// The node modules a file names: `super::…` and `crate::node::…` paths,
/// resolved against the file's own module, cut to the longest known one.
fn imports(module: &str, text: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    for (at, _) in text
        .match_indices("super::")
        .chain(text.match_indices("crate::node"))
    {
        // Only the start of a path (not the `super::` inside `super::super::`).
        if at > 0 && (bytes[at - 1] == b':' || bytes[at - 1].is_ascii_alphanumeric()) {
            continue;
        }
        // `pub(in crate::node)` names who may see an item, not an import.
        if text[..at].ends_with("in ") {
            continue;
        }
        let path: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let mut segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        let mut base: Vec<String> = if segments.first() == Some(&"crate") {
            segments.drain(..2);
            Vec::new()
        } else {
            let mut m = module.to_owned();
            while segments.first() == Some(&"super") {
                segments.remove(0);
                m = parent(&m).unwrap_or_default();
            }
            m.split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let mut target = base.join("::");
        for s in segments {
            base.push(s.to_owned());
            let candidate = base.join("::");
            if known.contains(&candidate) {
                target = candidate;
            } else {
                break;
            }
        }
        if target != module {
            out.insert(target);
        }
    }
    out
}

/// A file's code as the layers see it: no comments, and no inline test
/// module (whose `super` is the file itself).
fn code_of(text: &str) -> String {
    // The inline test module, `pub(super)` or not.
    let end = text
        .match_indices("#[cfg(test)]\n")
        .map(|(at, m)| (at, &text[at + m.len()..]))
        .find(|(_, rest)| {
            rest.lines()
                .next()
                .is_some_and(|l| l.trim_end().ends_with("mod tests {"))
        })
        .map_or(text.len(), |(at, _)| at);
    text[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn node_is_in_layers_and_every_file_says_what_it_owns() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    rust_files(&src, &mut all);
    for file in &all {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            text.starts_with("//!"),
            "{} does not open with a //! saying what it owns",
            file.display()
        );
    }
    let sans_io =
        |f: &&PathBuf| f.starts_with(src.join("container")) || f.starts_with(src.join("output"));
    for file in all.iter().filter(sans_io) {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            !text.contains("crate::node"),
            "{}: containers and outputs are sans-IO and import nothing from node/",
            file.display()
        );
    }

    let root = src.join("node");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let layer: BTreeMap<String, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, mods)| mods.iter().map(move |m| (m.to_string(), i)))
        .collect();
    let known: BTreeSet<String> = layer.keys().cloned().collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let module = module_of(&root, file);
        let Some(&mine) = layer.get(&module) else {
            panic!(
                "node::{module} ({}) is in no layer of tests/layers.rs",
                file.display()
            );
        };
        let text = std::fs::read_to_string(file).unwrap();
        for target in imports(&module, &code_of(&text), &known) {
            let theirs = layer[&target];
            assert!(
                theirs <= mine,
                "node::{module} (layer {mine}) imports node::{target}, a layer above (layer {theirs})"
            );
            // A file may use its parent, whose impl it splits.
            if theirs == mine && parent(&module).as_deref() != Some(target.as_str()) {
                graph.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    // No circle among the files of one layer (depth-first search).
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if let Some(at) = path.iter().position(|p| p == m) {
            panic!("an import circle in node/: {}", path[at..].join(" → "));
        }
        if done.contains(m) {
            return;
        }
        path.push(m.to_owned());
        for next in graph.get(m).into_iter().flatten() {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(m.to_owned());
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn the_layer_check_sees_an_import_that_runs_up() {
    let known: BTreeSet<String> = ["ring", "ring::conn", "stats", "shard", "hub", "hub::mesh"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let text = "use super::conn::Conn;\nuse super::super::shard::run;\nuse crate::node::hub::mesh::ShardMsg;\nfn f() { super::super::stats::x() }";
    let got = imports("ring::tls", text, &known);
    let want: BTreeSet<String> = ["ring::conn", "shard", "hub::mesh", "stats"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        module_of(Path::new("/n"), Path::new("/n/hub/mod.rs")),
        "hub"
    );
    assert_eq!(module_of(Path::new("/n"), Path::new("/n/mod.rs")), "");
    // An inline test module is not the file's code, whatever its visibility.
    for head in ["mod tests {", "pub(super) mod tests {"] {
        let file = format!("use super::conn;\n#[cfg(test)]\n{head}\n    use super::*;\n}}\n");
        assert_eq!(code_of(&file), "use super::conn;");
    }
}
