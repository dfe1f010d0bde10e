//! The modules of `control` form no import circle: read from the sources, the graph of
//! `crate::MODULE` references between top-level modules (a directory module counts as
//! one) has no cycle. `cli` dispatches to the commands; the commands share only the
//! leaf `args`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let name: String = text[i + 7..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut add = |module: String, text: &str| {
        let deps = refs(text);
        let e = g.entry(module.clone()).or_default();
        e.extend(deps.into_iter().filter(|d| *d != module));
    };
    for entry in std::fs::read_dir(&src).expect("src") {
        let p = entry.expect("entry").path();
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            for f in std::fs::read_dir(&p).expect("dir") {
                let f = f.expect("entry").path();
                if f.extension().is_some_and(|e| e == "rs") {
                    add(name.clone(), &std::fs::read_to_string(&f).unwrap());
                }
            }
        } else if p.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main" {
            add(name, &std::fs::read_to_string(&p).unwrap());
        }
    }
    g
}

/// A cycle through `at`, if any (depth-first search).
fn cycle(
    g: &BTreeMap<String, BTreeSet<String>>,
    at: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(i) = path.iter().position(|p| p == at) {
        let mut c = path[i..].to_vec();
        c.push(at.to_string());
        return Some(c);
    }
    if done.contains(at) {
        return None;
    }
    path.push(at.to_string());
    for next in g.get(at).into_iter().flatten() {
        if let Some(c) = cycle(g, next, path, done) {
            return Some(c);
        }
    }
    path.pop();
    done.insert(at.to_string());
    None
}

#[test]
fn control_has_no_import_circle() {
    let g = graph();
    assert!(
        g.contains_key("cli") && g["cli"].contains("daemon"),
        "the graph was not read: {g:?}"
    );
    let mut done = BTreeSet::new();
    for m in g.keys() {
        if let Some(c) = cycle(&g, m, &mut Vec::new(), &mut done) {
            panic!("import circle: {}", c.join(" → "));
        }
    }
    // And the cycle finder finds one when there is one.
    let mut bad = g.clone();
    bad.entry("args".into()).or_default().insert("cli".into());
    let found = bad
        .keys()
        .find_map(|m| cycle(&bad, m, &mut Vec::new(), &mut BTreeSet::new()));
    assert!(found.is_some());
}
