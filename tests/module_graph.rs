//! The `signer` crate's top-level modules form a layered graph without cycles:
//! infrastructure below, services above it, `node/` wiring them, `api/` and `cli/`
//! on top (README, "Architecture"). This test reads `signer/src`, takes every
//! `crate::<module>` path a top-level module uses (comments left out, test code
//! included), and fails with the cycle and the lines that make it when two modules
//! depend on each other, directly or through others.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `from -> to -> [file:line evidence]`.
type Graph = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The source without comments (line, doc and block comments), line structure kept.
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let b = src.as_bytes();
    let (mut i, mut in_str, mut block) = (0, false, 0usize);
    while i < b.len() {
        let c = b[i];
        if block > 0 {
            if c == b'*' && b.get(i + 1) == Some(&b'/') {
                block -= 1;
                i += 2;
                continue;
            }
            if c == b'/' && b.get(i + 1) == Some(&b'*') {
                block += 1;
                i += 2;
                continue;
            }
            if c == b'\n' {
                out.push('\n');
            }
            i += 1;
            continue;
        }
        if in_str {
            if c == b'\\' {
                out.push(c as char);
                if let Some(&n) = b.get(i + 1) {
                    out.push(n as char);
                }
                i += 2;
                continue;
            }
            if c == b'"' {
                in_str = false;
            }
            out.push(c as char);
            i += 1;
            continue;
        }
        match (c, b.get(i + 1)) {
            (b'/', Some(b'/')) => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            (b'/', Some(b'*')) => {
                block = 1;
                i += 2;
            }
            (b'"', _) => {
                in_str = true;
                out.push('"');
                i += 1;
            }
            _ => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Top-level module names used after each `crate::` in `line`, including every
/// first-level name of a `crate::{a, b::c, d::{e}}` group.
fn used_modules(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(pos) = rest.find("crate::") {
        let preceded_by_ident = rest[..pos]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
        rest = &rest[pos + "crate::".len()..];
        if preceded_by_ident {
            continue;
        }
        let tail = rest.trim_start();
        if let Some(group) = tail.strip_prefix('{') {
            let mut depth = 0usize;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_ascii_alphabetic() || c == '_') => {
                        out.push(ident_at(&group[i..]).to_owned());
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let id = ident_at(tail);
            if !id.is_empty() {
                out.push(id.to_owned());
            }
        }
    }
    out
}

fn module_graph(src: &Path) -> (BTreeSet<String>, Graph) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut modules = BTreeSet::new();
    let mut graph = Graph::new();
    let owned: Vec<(String, PathBuf)> = files
        .into_iter()
        .filter_map(|f| {
            let rel = f.strip_prefix(src).expect("under src").to_path_buf();
            let first = rel.components().next()?.as_os_str().to_string_lossy();
            let module = first.trim_end_matches(".rs").to_owned();
            (module != "lib" && module != "main").then_some((module, f))
        })
        .collect();
    for (m, _) in &owned {
        modules.insert(m.clone());
    }
    for (module, file) in &owned {
        let text = std::fs::read_to_string(file).expect("readable source");
        for (n, line) in strip_comments(&text).lines().enumerate() {
            for used in used_modules(line) {
                if used != *module && modules.contains(&used) {
                    let rel = file.strip_prefix(src).expect("under src");
                    graph
                        .entry(module.clone())
                        .or_default()
                        .entry(used)
                        .or_default()
                        .push(format!("signer/src/{}:{}", rel.display(), n + 1));
                }
            }
        }
    }
    (modules, graph)
}

/// One cycle through the graph, as a closed path, if any.
fn find_cycle(modules: &BTreeSet<String>, graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        m: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(m.to_owned(), Mark::Open);
        stack.push(m.to_owned());
        for next in graph.get(m).into_iter().flat_map(|e| e.keys()) {
            match marks.get(next).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let start = stack.iter().position(|s| s == next).expect("on stack");
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(next, graph, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(m.to_owned(), Mark::Done);
        None
    }
    let mut marks: BTreeMap<String, Mark> =
        modules.iter().map(|m| (m.clone(), Mark::New)).collect();
    for m in modules {
        if marks[m] == Mark::New {
            if let Some(c) = visit(m, graph, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn describe(cycle: &[String], graph: &Graph) -> String {
    let mut s = format!("module cycle: {}\n", cycle.join(" -> "));
    for pair in cycle.windows(2) {
        let lines = &graph[&pair[0]][&pair[1]];
        let shown: Vec<&str> = lines.iter().take(3).map(String::as_str).collect();
        s.push_str(&format!(
            "  {} -> {}: {}{}\n",
            pair[0],
            pair[1],
            shown.join(", "),
            if lines.len() > 3 { ", ..." } else { "" }
        ));
    }
    s
}

#[test]
fn signer_top_level_modules_import_each_other_in_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../signer/src");
    let (modules, graph) = module_graph(&src);
    assert!(
        ["api", "cli", "node", "store", "tx", "dkg"]
            .iter()
            .all(|m| modules.contains(*m)),
        "signer/src not read as expected: {modules:?}"
    );
    assert!(
        graph.get("node").is_some_and(|e| e.contains_key("tx")),
        "the reader found no imports (node uses tx): {graph:?}"
    );
    if let Some(cycle) = find_cycle(&modules, &graph) {
        panic!("{}", describe(&cycle, &graph));
    }
}

#[test]
fn the_checker_reports_a_cycle_through_a_third_module_with_its_lines() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path();
    std::fs::create_dir(src.join("a")).expect("dir");
    std::fs::write(src.join("lib.rs"), "pub mod a; pub mod b; pub mod c;").expect("write");
    std::fs::write(
        src.join("a/mod.rs"),
        "// crate::c in a comment is no import\nuse crate::{b::X, self as _};\n",
    )
    .expect("write");
    std::fs::write(src.join("b.rs"), "fn f() { crate::c::g() }\n").expect("write");
    std::fs::write(
        src.join("c.rs"),
        "/* crate::b */ pub fn g() {}\nuse crate::a;\n",
    )
    .expect("write");
    let (modules, graph) = module_graph(src);
    let cycle = find_cycle(&modules, &graph).expect("a -> b -> c -> a");
    let text = describe(&cycle, &graph);
    assert_eq!(cycle.first(), cycle.last(), "{text}");
    assert_eq!(cycle.len(), 4, "{text}");
    assert!(text.contains("signer/src/b.rs:1"), "{text}");
    assert!(text.contains("signer/src/c.rs:2"), "{text}");
    assert!(!graph["a"].contains_key("c"), "comment counted: {graph:?}");
    assert!(
        !graph["c"].contains_key("b"),
        "block comment counted: {graph:?}"
    );

    std::fs::write(src.join("c.rs"), "pub fn g() {}\n").expect("write");
    let (modules, graph) = module_graph(src);
    assert_eq!(find_cycle(&modules, &graph), None);
}
