//! The modules of the `gossamer` crate import each other in layers, never in a circle:
//! a door calls the query service, the service never calls a door, the CLI talks to a
//! node through the client, and so on (ARCHITECTURE.md, "Inside the binary").
//!
//! Every source file is parsed with `syn`; every path that names a module of the
//! crate — in `use` declarations, types, expressions and patterns, inside function
//! bodies too — is an edge from the file's module to that module. Test modules
//! (`#[cfg(test)]`) are left out, and so are macro arguments, which `syn` does not
//! parse as paths. A cycle fails the test and is printed.
//!
//! (cargo-modules was weighed for this: its `--acyclic` looks for cycles between items,
//! which every crate with a method on a type has, and its module graph leaves out paths
//! written inside function bodies.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// `a/b.rs` -> `a::b`, `a/mod.rs` -> `a`, `lib.rs` -> `` (the crate root).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts.join("::")
}

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

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| a.path().is_ident("cfg") && a.meta.require_list().is_ok_and(|l| l.tokens.to_string() == "test"))
}

/// The paths one file names, as absolute module paths (`crate::` dropped).
struct Paths<'a> {
    module: &'a str,
    /// Names of the modules declared in this file (`mod x;`): relative paths from here.
    children: BTreeSet<String>,
    found: Vec<Vec<String>>,
}

impl Paths<'_> {
    /// `segments` as written, resolved against this module; `None` when it is not a
    /// path inside the crate (std, a dependency, a local item).
    fn resolve(&self, segments: &[String]) -> Option<Vec<String>> {
        let here: Vec<String> = if self.module.is_empty() { vec![] } else { self.module.split("::").map(String::from).collect() };
        let first = segments.first()?;
        match first.as_str() {
            "crate" => Some(segments[1..].to_vec()),
            "self" => Some(here.into_iter().chain(segments[1..].iter().cloned()).collect()),
            "super" => {
                let mut base = here;
                let mut rest = segments;
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                Some(base.into_iter().chain(rest.iter().cloned()).collect())
            }
            name if self.children.contains(name) => Some(here.into_iter().chain(segments.iter().cloned()).collect()),
            _ => None,
        }
    }

    fn record(&mut self, segments: Vec<String>) {
        if let Some(p) = self.resolve(&segments) {
            self.found.push(p);
        }
    }

    fn use_tree(&mut self, prefix: Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                let mut next = prefix;
                next.push(p.ident.to_string());
                self.use_tree(next, &p.tree);
            }
            syn::UseTree::Name(n) => {
                let mut full = prefix;
                if n.ident != "self" {
                    full.push(n.ident.to_string());
                }
                self.record(full);
            }
            syn::UseTree::Rename(r) => {
                let mut full = prefix;
                if r.ident != "self" {
                    full.push(r.ident.to_string());
                }
                self.record(full);
            }
            syn::UseTree::Glob(_) => self.record(prefix),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix.clone(), t);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Paths<'_> {
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        self.record(p.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, p);
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if !is_cfg_test(&m.attrs) {
            syn::visit::visit_item_mod(self, m);
        }
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if !is_cfg_test(&f.attrs) {
            syn::visit::visit_item_fn(self, f);
        }
    }
}

/// Every module of the crate and the modules each one names.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.retain(|f| f.file_name().is_some_and(|n| n != "main.rs"));
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(src, f)).collect();
    let mut graph = BTreeMap::new();
    for file in &files {
        let module = module_of(src, file);
        let text = std::fs::read_to_string(file).unwrap();
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let children = ast
            .items
            .iter()
            .filter_map(|i| if let syn::Item::Mod(m) = i { (!is_cfg_test(&m.attrs)).then(|| m.ident.to_string()) } else { None })
            .collect();
        let mut paths = Paths { module: &module, children, found: Vec::new() };
        paths.visit_file(&ast);
        let mut names = BTreeSet::new();
        for p in paths.found {
            // The longest prefix that is a module: `service::query::search` -> `service::query`.
            let target = (1..=p.len()).rev().map(|n| p[..n].join("::")).find(|m| modules.contains(m));
            if let Some(t) = target.filter(|t| *t != module && !t.is_empty()) {
                names.insert(t);
            }
        }
        graph.insert(module, names);
    }
    graph
}

/// A cycle, if the graph has one: the modules along it, the first repeated at the end.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(m.to_string(), 1);
        stack.push(m.to_string());
        for next in graph.get(m).into_iter().flatten() {
            match state.get(next).copied().unwrap_or(0) {
                1 => {
                    let start = stack.iter().position(|s| s == next).unwrap();
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(next, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in graph.keys() {
        if state.get(m).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(m, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_module_imports_a_module_that_imports_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    assert!(graph.len() > 20, "the crate's modules were not found: {graph:?}");
    // The walker sees paths in function bodies: the node's wiring reaches the REST server.
    assert!(graph["node"].contains("rest::server"), "{:?}", graph["node"]);
    if let Some(cycle) = find_cycle(&graph) {
        panic!("modules import each other in a circle: {}", cycle.join(" -> "));
    }
}

/// The checker finds a circle where there is one, through a body path and a `use`.
#[test]
fn a_circle_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::B;\npub struct A;\n").unwrap();
    std::fs::write(src.join("b.rs"), "pub struct B;\npub fn f() { let _ = crate::a::A; }\n").unwrap();
    let graph = module_graph(src);
    let cycle = find_cycle(&graph).expect("a -> b -> a");
    assert_eq!(cycle.first(), cycle.last());
    assert!(cycle.contains(&"a".to_string()) && cycle.contains(&"b".to_string()), "{cycle:?}");
    // Without the body path, no circle.
    std::fs::write(src.join("b.rs"), "pub struct B;\n").unwrap();
    assert_eq!(find_cycle(&module_graph(src)), None);
}
