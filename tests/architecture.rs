//! The dependency rules ARCHITECTURE.md states, checked against the code:
//! which workspace crates each crate may depend on, which crates must stay
//! out of the engine, and which engine modules each engine module may use.
//! The rules are read from ARCHITECTURE.md itself (its `rules:` blocks), so
//! the page and the check cannot drift apart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The lines of the fenced block that follows `<!-- rules: NAME -->`.
fn rules_block(name: &str) -> Vec<String> {
    let page = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let marker = format!("<!-- rules: {name} -->");
    let at = page
        .find(&marker)
        .unwrap_or_else(|| panic!("ARCHITECTURE.md has no '{marker}' block"));
    let rest = &page[at + marker.len()..];
    let open = rest.find("```").expect("a fenced block after the marker");
    let body = &rest[open..];
    let body = &body[body.find('\n').expect("fence line") + 1..];
    let close = body.find("```").expect("the block is closed");
    body[..close]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// `name: a b c` lines → name → {a, b, c}.
fn allowed(name: &str) -> BTreeMap<String, BTreeSet<String>> {
    rules_block(name)
        .iter()
        .map(|l| {
            let (k, v) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("rule line without ':': {l}"));
            (
                k.trim().to_string(),
                v.split_whitespace().map(String::from).collect(),
            )
        })
        .collect()
}

/// Every workspace member's manifest: package name → (dependencies of any
/// kind named in its manifest, normal dependencies only).
fn manifests() -> BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> {
    let workspace: toml::Table = std::fs::read_to_string(root().join("Cargo.toml"))
        .expect("Cargo.toml")
        .parse()
        .expect("Cargo.toml parses");
    let members = workspace["workspace"]["members"]
        .as_array()
        .expect("members");
    let mut out = BTreeMap::new();
    for m in members {
        let dir = root().join(m.as_str().expect("member path"));
        let manifest: toml::Table = std::fs::read_to_string(dir.join("Cargo.toml"))
            .expect("member manifest")
            .parse()
            .expect("member manifest parses");
        let name = manifest["package"]["name"]
            .as_str()
            .expect("package name")
            .to_string();
        let keys = |section: &str| -> BTreeSet<String> {
            manifest
                .get(section)
                .and_then(|t| t.as_table())
                .map(|t| t.keys().cloned().collect())
                .unwrap_or_default()
        };
        let normal = keys("dependencies");
        let mut all = normal.clone();
        all.extend(keys("dev-dependencies"));
        all.extend(keys("build-dependencies"));
        out.insert(name, (all, normal));
    }
    out
}

#[test]
fn crates_depend_only_on_what_architecture_md_allows() {
    let rules = allowed("crates");
    let manifests = manifests();
    let ours: BTreeSet<&String> = manifests.keys().collect();
    let mut broken = Vec::new();
    for (name, (all, _)) in &manifests {
        let Some(may) = rules.get(name) else {
            broken.push(format!("{name} has no line in the 'crates' rules"));
            continue;
        };
        for dep in all.iter().filter(|d| ours.contains(d)) {
            if !may.contains(dep) {
                broken.push(format!("{name} depends on {dep}"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "crate dependencies that ARCHITECTURE.md does not allow:\n  {}",
        broken.join("\n  ")
    );
}

#[test]
fn the_engine_keeps_no_http_sql_or_vendor_dependency() {
    let forbidden = rules_block("engine-never");
    let manifests = manifests();
    let (_, engine) = &manifests["sluice-engine"];
    let found: Vec<&String> = engine
        .iter()
        .filter(|d| {
            forbidden
                .iter()
                .any(|f| f.strip_suffix('*').map_or(*d == f, |p| d.starts_with(p)))
        })
        .collect();
    assert!(
        found.is_empty(),
        "the engine depends on {found:?}, which ARCHITECTURE.md keeps out of it"
    );
}

/// The engine modules a module's non-test code names through `crate::`.
fn module_edges(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("engine/src") {
        let path = entry.expect("dir entry").path();
        let module = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("file name")
            .to_string();
        if module == "lib" {
            continue;
        }
        let mut files = Vec::new();
        collect_rs(&path, &mut files);
        let edges = out.entry(module.clone()).or_default();
        // Test modules (`tests.rs`, or after `#[cfg(test)]` in a file) may
        // use anything.
        for f in files.iter().filter(|f| !f.ends_with("tests.rs")) {
            let text = std::fs::read_to_string(f).expect("source file");
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            let mut rest = code;
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                    .collect();
                if !name.is_empty() && name != module {
                    edges.insert(name);
                }
            }
        }
    }
    out
}

fn collect_rs(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for e in std::fs::read_dir(path).expect("module directory") {
            collect_rs(&e.expect("dir entry").path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

#[test]
fn engine_modules_use_only_what_architecture_md_allows() {
    let rules = allowed("engine-modules");
    let edges = module_edges(&root().join("engine/src"));
    let mut broken = Vec::new();
    for (module, uses) in &edges {
        let Some(may) = rules.get(module) else {
            broken.push(format!("engine module {module} has no line in the rules"));
            continue;
        };
        for u in uses {
            if !may.contains(u) {
                broken.push(format!("{module} uses crate::{u}"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "engine module edges that ARCHITECTURE.md does not allow:\n  {}",
        broken.join("\n  ")
    );
}

#[test]
fn the_rules_catch_a_forbidden_edge() {
    // The checker itself: a module that names a module it may not use is
    // found (so the tests above can fail).
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("json.rs"),
        "use crate::delivery::Task;\n#[cfg(test)]\nmod tests { use crate::engine; }\n",
    )
    .expect("write");
    let edges = module_edges(dir.path());
    assert_eq!(
        edges["json"],
        BTreeSet::from(["delivery".to_string()]),
        "the edge in code is found and the one in tests is not"
    );
    assert!(
        !allowed("engine-modules")["json"].contains("delivery"),
        "json may not use delivery"
    );
}
