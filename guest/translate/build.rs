//! Generates one test per golden case in `testdata/` (`<case>.in.yaml`), with
//! the files embedded so the same tests run under WebAssembly with no
//! filesystem access.

use std::fmt::Write;

fn main() {
    let dir = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("testdata");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut cases: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(".in.yaml"))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    cases.sort();
    let mut out = String::new();
    for case in cases {
        let input = dir.join(format!("{case}.in.yaml"));
        let expected = dir.join(format!("{case}.out.yaml"));
        println!("cargo:rerun-if-changed={}", input.display());
        println!("cargo:rerun-if-changed={}", expected.display());
        let test = case.replace(['-', '.'], "_");
        let expected_text = if expected.exists() {
            format!("Some(include_str!({:?}))", expected.display().to_string())
        } else {
            "None".to_string()
        };
        writeln!(
            out,
            "#[test]\nfn {test}() {{ check({case:?}, include_str!({:?}), {expected_text}); }}",
            input.display().to_string()
        )
        .unwrap();
    }
    let dest = std::path::Path::new(&std::env::var("OUT_DIR").unwrap()).join("golden_cases.rs");
    std::fs::write(dest, out).unwrap();
}
