//! The module graph of `docs/architecture.md`, checked on the code: every `crate::` path in a
//! file of `src/` names a module its layer may use. An arrow pointing up (the engine reaching
//! into the room, the room into the wire protocol, the load tester into the server) fails here
//! with the file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module of the crate and what it may import. `root` is `lib.rs` (and
/// `main.rs`): the composition, which may use everything, and whose `AppState` and `Error` the
/// outer layers share.
const ALLOWED: &[(&str, &[&str])] = &[
    // Leaf utilities, usable by all.
    ("metrics", &[]),
    ("ratelimit", &[]),
    // The data plane's pure logic.
    ("media", &[]),
    // Rooms, participants, published tracks: the control plane's state.
    ("room", &["media", "metrics", "ratelimit"]),
    // Workers, peer connections, the Router.
    ("engine", &["media", "metrics", "ratelimit"]),
    // The one place that wires a client to a room and to the engine.
    (
        "signal",
        &[
            "room",
            "engine",
            "media",
            "metrics",
            "ratelimit",
            "config",
            "root",
        ],
    ),
    (
        "http",
        &["signal", "metrics", "ratelimit", "config", "root", "error"],
    ),
    // The load tester: an independent client of the wire protocol.
    ("load", &["metrics", "ratelimit"]),
    // The flags of every layer, turned into each layer's settings: it sits with the root.
    ("config", &["engine", "media", "http", "error", "root"]),
    ("error", &["engine"]),
    ("root", &["*"]),
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ readable") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src/");
    let first = rel
        .components()
        .next()
        .and_then(|c| c.as_os_str().to_str())
        .unwrap_or_default();
    match first.trim_end_matches(".rs") {
        "lib" | "main" => "root".into(),
        other => other.into(),
    }
}

/// What a `crate::` path names at the top: a module, or `root` for an item of `lib.rs`.
fn target_of(path_after_crate: &str, modules: &[&str]) -> String {
    let head: String = path_after_crate
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if modules.contains(&head.as_str()) {
        head
    } else {
        "root".into()
    }
}

#[test]
fn every_import_points_down_the_module_graph() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: Vec<&str> = ALLOWED.iter().map(|(m, _)| *m).collect();
    let mut violations = Vec::new();
    let mut edges: BTreeMap<(String, String), usize> = BTreeMap::new();
    for file in &files {
        let from = module_of(&src, file);
        let allowed = ALLOWED
            .iter()
            .find(|(m, _)| *m == from)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("{} is in no layer of ALLOWED", file.display()));
        let text = std::fs::read_to_string(file).expect("readable");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for (at, _) in code.match_indices("crate::") {
                let to = target_of(&code[at + "crate::".len()..], &modules);
                if to == from {
                    continue;
                }
                *edges.entry((from.clone(), to.clone())).or_default() += 1;
                if !allowed.contains(&"*") && !allowed.contains(&to.as_str()) {
                    violations.push(format!(
                        "{}:{}: {from} uses {to}: {}",
                        file.strip_prefix(&src).unwrap_or(file).display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports against the module graph (docs/architecture.md):\n{}",
        violations.join("\n")
    );
    // The graph has no cycle: the layers above are ordered, but say so on the code too.
    for (from, to) in edges.keys() {
        if from != "root" && to != "root" {
            assert!(
                !edges.contains_key(&(to.clone(), from.clone())),
                "{from} and {to} use each other"
            );
        }
    }
}
