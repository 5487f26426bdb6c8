//! The crate's module graph has no import circle.
//!
//! Reads `src/`, collects every `crate::`, `super::` and `self::` path each
//! module names (in `use` items, grouped or not, and inline), and fails when
//! two modules reach each other. A module naming its own submodules is not an
//! edge: a parent owns its children. Test modules (`#[cfg(test)] mod tests`)
//! are left out: they may import what they test from anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            // `tests.rs`: a unit-test module in its own file, left out
            // like the inline ones.
            if p.extension().is_none_or(|x| x != "rs")
                || p.file_name().is_some_and(|n| n == "tests.rs")
            {
                continue;
            }
            let rel = p.strip_prefix(src).unwrap().with_extension("");
            let mut m: Module = rel.iter().map(|s| s.to_string_lossy().into()).collect();
            if matches!(m.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                m.pop();
            }
            out.insert(m, p);
        }
    }
    out
}

/// The source without comments and without the unit-test module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path a `use` tree names: `a::{b, c::{d}}` → `a::b`, `a::c::d`.
fn expand(prefix: &[String], tree: &str, out: &mut Vec<Module>) {
    let mut depth = 0;
    let mut item = String::new();
    let mut items = Vec::new();
    for ch in tree.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if ch == ',' && depth == 0 {
            items.push(std::mem::take(&mut item));
        } else {
            item.push(ch);
        }
    }
    items.push(item);
    for it in items {
        let it = it.trim();
        if it.is_empty() {
            continue;
        }
        if let Some(open) = it.find('{') {
            let head: Vec<String> = it[..open]
                .split("::")
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().to_string())
                .collect();
            let inner = &it[open + 1..it.rfind('}').unwrap()];
            let mut p = prefix.to_vec();
            p.extend(head);
            expand(&p, inner, out);
        } else {
            let name = it.split(" as ").next().unwrap();
            let mut p = prefix.to_vec();
            p.extend(name.split("::").map(|s| s.trim().to_string()));
            out.push(p);
        }
    }
}

fn paths(code: &str) -> Vec<Module> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let before = rest[..i].chars().last();
        rest = &rest[i + 4..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let t = rest.trim_start();
        if !(t.starts_with("crate::") || t.starts_with("super::") || t.starts_with("self::")) {
            continue;
        }
        if let Some(end) = t.find(';') {
            expand(&[], &t[..end], &mut out);
        }
    }
    // Inline paths: `crate::a::b`, `super::a`.
    let bytes = code.as_bytes();
    for root in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(root) {
            let at = from + i;
            from = at + root.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            let end = code[at..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| at + e);
            out.push(code[at..end].split("::").map(str::to_string).collect());
        }
    }
    out
}

fn resolve(mods: &BTreeMap<Module, PathBuf>, from: &Module, p: &Module) -> Option<Module> {
    let mut abs: Module = match p.first().map(String::as_str) {
        Some("crate") => p[1..].to_vec(),
        Some("super") | Some("self") => {
            // `self` is the module itself (a `mod.rs` file is its directory's
            // module); each `super` is one step up.
            let mut base = from.clone();
            let mut rest = &p[..];
            if rest[0] == "self" {
                rest = &rest[1..];
            }
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
            base.extend(rest.iter().cloned());
            base
        }
        _ => return None,
    };
    while !abs.is_empty() {
        if mods.contains_key(&abs) {
            return Some(abs);
        }
        abs.pop();
    }
    None
}

fn graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mods = modules(src);
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (m, file) in &mods {
        let text = std::fs::read_to_string(file).unwrap();
        for p in paths(&code(&text)) {
            let Some(t) = resolve(&mods, m, &p) else {
                continue;
            };
            // Root, self, or one of its own submodules: not an import.
            if t.is_empty() || t == *m || t.starts_with(m) {
                continue;
            }
            edges.entry(m.clone()).or_default().insert(t);
        }
    }
    edges
}

/// Strongly connected components with more than one module (Tarjan).
fn circles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct T<'a> {
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<Module, usize>,
        low: BTreeMap<Module, usize>,
        stack: Vec<Module>,
        on: BTreeSet<Module>,
        next: usize,
        out: Vec<Vec<Module>>,
    }
    fn visit(t: &mut T, v: &Module) {
        t.index.insert(v.clone(), t.next);
        t.low.insert(v.clone(), t.next);
        t.next += 1;
        t.stack.push(v.clone());
        t.on.insert(v.clone());
        for w in t.edges.get(v).into_iter().flatten() {
            if !t.index.contains_key(w) {
                visit(t, w);
                let l = t.low[v].min(t.low[w]);
                t.low.insert(v.clone(), l);
            } else if t.on.contains(w) {
                let l = t.low[v].min(t.index[w]);
                t.low.insert(v.clone(), l);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(&w);
                let done = w == *v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    let nodes: BTreeSet<Module> = edges
        .iter()
        .flat_map(|(k, v)| std::iter::once(k.clone()).chain(v.iter().cloned()))
        .collect();
    for n in &nodes {
        if !t.index.contains_key(n) {
            visit(&mut t, n);
        }
    }
    t.out
}

fn name(m: &Module) -> String {
    m.join("::")
}

#[test]
fn the_crate_has_no_import_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = graph(&src);
    assert!(
        edges.len() > 20,
        "the graph reader found too few modules: {edges:?}"
    );
    // The reader sees what the refactoring broke up.
    assert!(edges[&vec!["app".to_string()]].contains(&vec!["store".to_string()]));
    let found = circles(&edges);
    let shown: Vec<Vec<String>> = found.iter().map(|c| c.iter().map(name).collect()).collect();
    assert!(found.is_empty(), "import circles: {shown:?}");
}

#[test]
fn the_circle_check_finds_a_circle() {
    let dir = std::env::temp_dir().join(format!("chartcache-graph-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("b")).unwrap();
    std::fs::write(dir.join("lib.rs"), "pub mod a;\npub mod b;\n").unwrap();
    std::fs::write(dir.join("a.rs"), "use crate::b::{self, c::D};\n").unwrap();
    std::fs::write(dir.join("b/mod.rs"), "pub mod c;\n").unwrap();
    std::fs::write(dir.join("b/c.rs"), "fn f() { crate::a::g(); }\n").unwrap();
    let found = circles(&graph(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let mut names: Vec<String> = found[0].iter().map(name).collect();
    names.sort();
    assert_eq!(names, ["a", "b::c"]);
}

/// The layers `src/lib.rs` lists: blocks of `pub mod` lines separated by
/// blank lines, bottom-up. Top-level module → layer index.
fn layers(lib: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut layer = 0;
    let mut in_block = false;
    for line in lib.lines() {
        let line = line.trim();
        if line.is_empty() {
            if in_block {
                layer += 1;
            }
            in_block = false;
        } else if let Some(rest) = line.strip_prefix("pub mod ") {
            out.insert(rest.trim_end_matches(';').to_string(), layer);
            in_block = true;
        }
    }
    out
}

/// Modules importing from a top-level module of a later layer of `lib.rs`,
/// as `module -> top-level module`.
fn upward(
    edges: &BTreeMap<Module, BTreeSet<Module>>,
    layers: &BTreeMap<String, usize>,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (from, tos) in edges {
        let Some(&lf) = layers.get(&from[0]) else {
            continue;
        };
        for to in tos {
            if to[0] == from[0] {
                continue;
            }
            if layers.get(&to[0]).is_some_and(|&lt| lt > lf) {
                out.insert(format!("{} -> {}", name(from), to[0]));
            }
        }
    }
    out
}

/// `lib.rs` lists the modules bottom-up in layers; at most one import runs
/// from a layer up to a later one (the async-job registry, which keeps
/// entries and locks of the store), and any other fails here.
#[test]
fn imports_run_down_the_layers_of_lib_rs() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layers = layers(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    assert!(
        layers.len() > 30 && layers["app"] > layers["store"],
        "{layers:?}"
    );
    assert!(layers["key"] < layers["fingerprint"] && layers["proxy"] > layers["app"]);
    let up = upward(&graph(&src), &layers);
    assert!(
        up.len() <= 1,
        "imports from a layer up to a later one: {up:?}"
    );
}

#[test]
fn the_layer_check_finds_an_upward_import() {
    let lib = "pub mod a;\n\n// above\npub mod b;\npub mod c;\n";
    let l = layers(lib);
    assert_eq!((l["a"], l["b"], l["c"]), (0, 1, 1));
    let mut edges = BTreeMap::new();
    edges.insert(
        vec!["a".to_string()],
        BTreeSet::from([vec!["b".to_string(), "x".to_string()]]),
    );
    edges.insert(
        vec!["c".to_string()],
        BTreeSet::from([vec!["a".to_string()], vec!["b".to_string()]]),
    );
    assert_eq!(upward(&edges, &l), BTreeSet::from(["a -> b".to_string()]));
}
