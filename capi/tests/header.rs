//! The hand-written header and the library agree: every function the
//! library exports is declared in `include/orcwire.h`, and every function
//! the header declares is exported.

use std::collections::BTreeSet;

/// Every `.rs` file under `dir`, subfolders included.
fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read a source folder") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Names of `extern "C"` functions defined in `src/`.
fn exported() -> BTreeSet<String> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut names = BTreeSet::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read a source file");
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            if line.trim() != "#[no_mangle]" {
                continue;
            }
            let def = lines.next().expect("a definition follows #[no_mangle]");
            let after = def
                .split("extern \"C\" fn ")
                .nth(1)
                .unwrap_or_else(|| panic!("not an extern fn: {def}"));
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

/// Names of functions declared in the header (`... name(` at the start of
/// a declaration, outside comments and macros).
fn declared() -> BTreeSet<String> {
    let header = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("include/orcwire.h");
    let text = std::fs::read_to_string(header).expect("read orcwire.h");
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let l = line.trim_start();
        if l.starts_with("/*")
            || l.starts_with('*')
            || l.starts_with('#')
            || l.starts_with("typedef")
            || l.starts_with("orcwire_check_abi(ORCWIRE")
        {
            continue;
        }
        // The identifier right before the first '('.
        let Some(paren) = l.find('(') else { continue };
        let name: String = l[..paren]
            .chars()
            .rev()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if name.starts_with("orcwire_") {
            names.insert(name);
        }
    }
    names
}

#[test]
fn header_declares_exactly_the_exported_functions() {
    let exported = exported();
    let declared = declared();
    assert!(exported.len() > 40, "found only {exported:?}");
    let missing: Vec<_> = exported.difference(&declared).collect();
    let extra: Vec<_> = declared.difference(&exported).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "exported but not in orcwire.h: {missing:?}; in orcwire.h but not exported: {extra:?}"
    );
}
