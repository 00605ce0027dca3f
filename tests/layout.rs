//! Structure checks on the source tree, run in the regular suite so CI catches a
//! regression of the restructure issue the moment it lands:
//!
//! - `module_graph_has_no_cycle`: the top-level modules (`src/foo.rs` and everything under
//!   `src/foo/` are module `foo`; `main.rs` and `lib.rs` are left out) and the
//!   `crate::<module>` references between them, outside `#[cfg(test)]` items and outside
//!   comments and string literals, form no cycle. A cycle is spelled out as
//!   `a -> b -> c -> a`.
//! - `no_long_functions`: no function outside `#[cfg(test)]` items is longer than
//!   [`MAX_FN_LINES`] lines, counted from its `fn` line to the closing brace at the same
//!   indentation (rustfmt's layout), except the pure data tables in [`LONG_FN_ALLOWED`].
//!
//! Both read the files as text (rustfmt-formatted Rust); the small parsers are unit-tested
//! below on inline examples.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The longest function the project accepts outside tests (the restructure issue's limit).
const MAX_FN_LINES: usize = 80;

/// `(file relative to src/, function name)` of functions allowed to be longer than
/// [`MAX_FN_LINES`]: pure data tables only (a list of literals reads best in one place),
/// never logic.
const LONG_FN_ALLOWED: &[(&str, &str)] = &[];

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let rd = fs::read_dir(&d).unwrap_or_else(|e| panic!("read_dir {}: {e}", d.display()));
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a file under `src/` belongs to (`foo.rs`, `foo/mod.rs` and
/// `foo/bar/baz.rs` are all `foo`); `None` for the crate roots `main.rs` and `lib.rs`,
/// and for a directory's `tests.rs`, which by this crate's convention is only ever
/// declared as `#[cfg(test)] mod tests;` (test code, like an inline test module).
fn top_module(rel: &Path) -> Option<String> {
    if rel.components().count() > 1 && rel.file_name().is_some_and(|n| n == "tests.rs") {
        return None;
    }
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
    (name != "main" && name != "lib").then_some(name)
}

/// `src` with comments and the contents of string and char literals replaced by spaces
/// (newlines kept, so line numbers and indentation stay), so that neither a doc comment
/// mentioning `crate::x` nor a `}` inside a string is mistaken for code.
fn blank_comments_and_strings(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < c.len() {
        let at = |k: usize| c.get(k).copied().unwrap_or('\0');
        if c[i] == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c[i] == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
        } else if (c[i] == 'r' || (c[i] == 'b' && at(i + 1) == 'r'))
            && !at(i.wrapping_sub(1)).is_alphanumeric()
            && at(i.wrapping_sub(1)) != '_'
            && {
                let s = if c[i] == 'b' { i + 2 } else { i + 1 };
                let mut k = s;
                while at(k) == '#' {
                    k += 1;
                }
                at(k) == '"'
            }
        {
            // raw string r#"..."#
            let s = if c[i] == 'b' { i + 2 } else { i + 1 };
            let mut k = s;
            while at(k) == '#' {
                k += 1;
            }
            let hashes = k - s;
            for &ch in &c[i..=k] {
                out.push(ch);
            }
            i = k + 1;
            while i < c.len() {
                if c[i] == '"' && (1..=hashes).all(|h| at(i + h) == '#') {
                    out.push('"');
                    out.extend(std::iter::repeat_n('#', hashes));
                    i += 1 + hashes;
                    break;
                }
                out.push(blank(c[i]));
                i += 1;
            }
        } else if c[i] == '"' {
            out.push('"');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < c.len() {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
            if i < c.len() {
                out.push('"');
                i += 1;
            }
        } else if c[i] == '\'' && (at(i + 1) == '\\' || at(i + 2) == '\'') {
            // a char literal ('x', '\n', '\''), not a lifetime ('a)
            out.push('\'');
            i += 1;
            if c[i] == '\\' {
                // the backslash and the escaped character (which may be a quote)
                out.push_str("  ");
                i += 2;
            }
            while i < c.len() && c[i] != '\'' {
                out.push(' ');
                i += 1;
            }
            if i < c.len() {
                out.push('\'');
                i += 1;
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The index of the last line of the item that starts at `lines[k]` (rustfmt layout): the
/// line itself for a one-liner or a `;`-terminated declaration, else the first later line
/// at the same indentation that closes it (`}`, `};`, `});`, or a `...;` ending a
/// multi-line declaration).
fn item_end(lines: &[&str], k: usize) -> usize {
    let ind = indent_of(lines[k]);
    let first = lines[k].trim_end();
    if first.ends_with(';') || (first.ends_with('}') && first.contains('{')) {
        return k;
    }
    for (m, l) in lines.iter().enumerate().skip(k + 1) {
        let t = l.trim_end();
        if indent_of(l) == ind
            && !t.trim().is_empty()
            && (t.trim().starts_with('}') || t.ends_with(';'))
        {
            return m;
        }
    }
    lines.len() - 1
}

/// Is this (trimmed) line an attribute that compiles its item only for tests?
fn is_test_cfg(trimmed: &str) -> bool {
    trimmed == "#[cfg(test)]" || trimmed.starts_with("#[cfg(all(test")
}

/// The lines of `code` (already blanked) with every `#[cfg(test)]` item (a `mod tests`,
/// a `use`, a helper fn) replaced by an empty line.
fn strip_test_items(code: &str) -> Vec<String> {
    let lines: Vec<&str> = code.lines().collect();
    let mut out: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    let mut i = 0;
    while i < lines.len() {
        if !is_test_cfg(lines[i].trim()) {
            i += 1;
            continue;
        }
        // Skip further attributes and find the item itself.
        let mut k = i + 1;
        while k < lines.len() && lines[k].trim_start().starts_with("#[") {
            k += 1;
        }
        let end = if k < lines.len() {
            item_end(&lines, k)
        } else {
            k - 1
        };
        for l in out.iter_mut().take(end + 1).skip(i) {
            l.clear();
        }
        i = end + 1;
    }
    out
}

fn is_ident_char(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || ch == '_'
}

/// The modules named right after `crate::` in `code`: `crate::x::f()` and
/// `use crate::x` give `x`; `use crate::{a, b::c, d::{e, f}}` gives `a`, `b` and `d`.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = code.as_bytes();
    let mut from = 0;
    while let Some(pos) = code[from..].find("crate::") {
        let at = from + pos;
        from = at + "crate::".len();
        if at > 0 && is_ident_char(b[at - 1] as char) {
            continue; // e.g. `mycrate::`
        }
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level entries of the group, up to its matching brace.
            let mut depth = 0usize;
            let mut entry_start = true;
            for (j, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => entry_start = true,
                    c if entry_start && is_ident_char(c) => {
                        let name: String = group[j..]
                            .chars()
                            .take_while(|&c| is_ident_char(c))
                            .collect();
                        if name != "self" {
                            out.insert(name);
                        }
                        entry_start = false;
                    }
                    c if c.is_whitespace() => {}
                    _ => entry_start = false,
                }
            }
        } else {
            let name: String = rest.chars().take_while(|&c| is_ident_char(c)).collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// module -> the other top-level modules it refers to, for the files `(rel path, text)`.
fn module_graph(files: &[(PathBuf, String)]) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, text) in files {
        let Some(m) = top_module(rel) else { continue };
        let code = strip_test_items(&blank_comments_and_strings(text)).join("\n");
        graph
            .entry(m.clone())
            .or_default()
            .extend(crate_refs(&code));
    }
    let names: BTreeSet<String> = graph.keys().cloned().collect();
    for (m, deps) in graph.iter_mut() {
        deps.retain(|d| d != m && names.contains(d));
    }
    graph
}

/// One cycle per strongly connected component with more than one module, each spelled
/// `a -> b -> ... -> a` (a shortest cycle through the component's first module).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    // Tarjan's algorithm; the graphs are tiny, recursion is fine.
    struct T<'g> {
        g: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on: BTreeSet<&'g str>,
        sccs: Vec<Vec<&'g str>>,
    }
    fn visit<'g>(t: &mut T<'g>, v: &'g str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                scc.push(w);
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.sccs.push(scc);
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        sccs: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    let mut out = Vec::new();
    for scc in &t.sccs {
        let members: BTreeSet<&str> = scc.iter().copied().collect();
        let start = scc[0];
        // BFS inside the component from `start` back to `start`.
        let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut closing = None;
        'bfs: while let Some(v) = queue.pop_front() {
            for w in graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if w == start {
                    closing = Some(v);
                    break 'bfs;
                }
                if members.contains(w) && !prev.contains_key(w) {
                    prev.insert(w, v);
                    queue.push_back(w);
                }
            }
        }
        let mut path = vec![start];
        let mut v = closing.expect("a strongly connected component has a cycle");
        while v != start {
            path.push(v);
            v = prev[v];
        }
        path.push(start);
        let last = path.len() - 1;
        path[1..last].reverse();
        out.push(format!(
            "{}   (the whole cycle group: {})",
            path.join(" -> "),
            scc.join(", ")
        ));
    }
    out
}

/// `(line number, name, length in lines)` of every function in `text` (outside
/// `#[cfg(test)]` items) longer than `max` lines.
fn long_functions(text: &str, max: usize) -> Vec<(usize, String, usize)> {
    let code = strip_test_items(&blank_comments_and_strings(text));
    let lines: Vec<&str> = code.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = fn_name(line) else { continue };
        let end = item_end(&lines, i);
        let len = end - i + 1;
        if len > max {
            out.push((i + 1, name, len));
        }
    }
    out
}

/// The name of the function a line declares (`pub(crate) async fn name(...`), if it does.
fn fn_name(line: &str) -> Option<String> {
    let mut rest = line.trim_start();
    loop {
        let before = rest;
        for q in [
            "pub ",
            "async ",
            "const ",
            "unsafe ",
            "extern \"C\" ",
            "default ",
        ] {
            if let Some(r) = rest.strip_prefix(q) {
                rest = r;
            }
        }
        if rest.starts_with("pub(") {
            rest = rest.split_once(") ").map_or(rest, |(_, r)| r);
        }
        if rest == before {
            break;
        }
    }
    let name: String = rest
        .strip_prefix("fn ")?
        .chars()
        .take_while(|&c| is_ident_char(c))
        .collect();
    (!name.is_empty()).then_some(name)
}

fn read_src() -> Vec<(PathBuf, String)> {
    let src = src_dir();
    rust_files(&src)
        .into_iter()
        .map(|p| {
            let text =
                fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            (p.strip_prefix(&src).unwrap().to_owned(), text)
        })
        .collect()
}

#[test]
fn module_graph_has_no_cycle() {
    let files = read_src();
    assert!(
        files.len() > 5,
        "found only {} files under src/",
        files.len()
    );
    let graph = module_graph(&files);
    let found = cycles(&graph);
    let edges: Vec<String> = graph
        .iter()
        .map(|(m, d)| {
            format!(
                "  {m} -> {}",
                d.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect();
    assert!(
        found.is_empty(),
        "the module graph has {} cycle(s):\n  {}\nthe whole graph (crate:: references outside tests):\n{}",
        found.len(),
        found.join("\n  "),
        edges.join("\n")
    );
}

#[test]
fn no_long_functions() {
    let mut offenders = Vec::new();
    for (rel, text) in read_src() {
        let rel_s = rel.to_string_lossy().into_owned();
        for (line, name, len) in long_functions(&text, MAX_FN_LINES) {
            if !LONG_FN_ALLOWED.contains(&(rel_s.as_str(), name.as_str())) {
                offenders.push(format!("src/{rel_s}:{line}:{name}:{len}"));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "{} function(s) longer than {MAX_FN_LINES} lines outside tests (file:line:name:length):\n  {}",
        offenders.len(),
        offenders.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// The parsers, on small inline examples
// ---------------------------------------------------------------------------

fn graph_of(files: &[(&str, &str)]) -> BTreeMap<String, BTreeSet<String>> {
    let files: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(p, t)| (PathBuf::from(p), (*t).to_owned()))
        .collect();
    module_graph(&files)
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn grouped_use_gives_each_top_level_module() {
    assert_eq!(crate_refs("use crate::{a, b::c};"), set(&["a", "b"]));
    assert_eq!(
        crate_refs("use crate::{\n    a::{x, y},\n    self,\n    b,\n};"),
        set(&["a", "b"])
    );
    assert_eq!(
        crate_refs("use crate::x;\nlet v = crate::y::f(1);"),
        set(&["x", "y"])
    );
    assert_eq!(crate_refs("use mycrate::z;"), set(&[]));
}

#[test]
fn comments_strings_and_test_items_are_not_references() {
    let text = r####"
//! See [`crate::doc_only`].
use crate::real;
/* crate::block_comment */
const S: &str = "crate::in_string";
const R: &str = r#"crate::in_raw "string""#;
const C: char = '"';
const Q: char = '\'';
fn f<'a>(x: &'a str) -> &'a str { crate::also_real::g(x) }
#[cfg(test)]
use crate::test_use;
#[cfg(test)]
mod tests {
    use crate::test_mod;
    fn h() {
        let _ = "}";
    }
}
fn after() { crate::after_tests::k() }
"####;
    let code = strip_test_items(&blank_comments_and_strings(text)).join("\n");
    assert_eq!(
        crate_refs(&code),
        set(&["after_tests", "also_real", "real"])
    );
}

#[test]
fn files_map_to_top_level_modules_and_roots_are_left_out() {
    let g = graph_of(&[
        ("a.rs", "use crate::b::X;"),
        ("b/mod.rs", "use crate::b::inner; use crate::c;"),
        ("b/deep/x.rs", "fn f() { crate::a::g() }"),
        ("c.rs", "use crate::unknown_item;"),
        ("main.rs", "use crate::a;"),
        ("lib.rs", "pub mod a;"),
        ("b/tests.rs", "use crate::d;"),
        ("d.rs", ""),
    ]);
    assert_eq!(
        g.keys().cloned().collect::<BTreeSet<_>>(),
        set(&["a", "b", "c", "d"])
    );
    assert_eq!(g["a"], set(&["b"]));
    assert_eq!(
        g["b"],
        set(&["a", "c"]),
        "self references dropped, nested files count, b/tests.rs is test code"
    );
    assert_eq!(g["c"], set(&[]), "names that are not modules are dropped");
}

#[test]
fn a_cycle_is_found_and_spelled_out() {
    let g = graph_of(&[
        ("a.rs", "use crate::b;"),
        ("b.rs", "use crate::c;"),
        ("c.rs", "use crate::{a, d};"),
        ("d.rs", ""),
    ]);
    let found = cycles(&g);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("a -> b -> c -> a "), "{found:?}");
}

#[test]
fn an_acyclic_graph_has_no_cycle() {
    let g = graph_of(&[
        ("a.rs", "use crate::{b, c};"),
        ("b.rs", "use crate::c;"),
        ("c.rs", "use crate::d;"),
        ("d.rs", "#[cfg(test)]\nmod tests {\n    use crate::a;\n}\n"),
    ]);
    assert_eq!(cycles(&g), Vec::<String>::new());
}

#[test]
fn function_length_runs_from_fn_line_to_its_closing_brace() {
    let mut text =
        String::from("//! x\n\npub(crate) async fn long_one(\n    a: u32,\n) -> u32 {\n");
    for i in 0..80 {
        text.push_str(&format!("    let _v{i} = a;\n"));
    }
    text.push_str("    a\n}\n\nfn short() -> u32 {\n    1\n}\n\nfn one_liner() {}\n");
    text.push_str("trait T {\n    fn decl(\n        &self,\n    ) -> u32;\n    fn other(&self) {\n        let s = \"\n}\n\";\n    }\n}\n");
    text.push_str("#[cfg(test)]\nmod tests {\n    fn huge() {\n");
    for _ in 0..100 {
        text.push_str("        let _ = 1;\n");
    }
    text.push_str("    }\n}\n");
    // 3 signature lines + 80 + `a` + `}` = 85 lines, starting on line 3.
    assert_eq!(
        long_functions(&text, 80),
        vec![(3, "long_one".to_owned(), 85)]
    );
    assert_eq!(long_functions(&text, 85), vec![]);
    assert_eq!(fn_name("    pub(crate) fn x(&self)"), Some("x".to_owned()));
    assert_eq!(fn_name("    let fn_x = 1;"), None);
}
