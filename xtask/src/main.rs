//! Project tasks that cargo alone does not do.
//!
//! - `cargo xtask component [--out PATH]` builds the translation guest for
//!   `wasm32-unknown-unknown` and encodes it as a WebAssembly component
//!   (wit-component), written to `<target>/infergate-translator.wasm` unless
//!   `--out` says otherwise.
//! - `cargo xtask test-components` builds the components that tests swap in
//!   (`guest/testing/`) into `<target>/test-components/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("component") => {
            let out = match args.iter().position(|a| a == "--out") {
                Some(i) => Some(PathBuf::from(
                    args.get(i + 1).context("--out needs a path")?,
                )),
                None => None,
            };
            let out = out.unwrap_or_else(|| target_dir().join("infergate-translator.wasm"));
            build_component("infergate-guest", &out)?;
            println!("{}", out.display());
            Ok(())
        }
        Some("test-components") => {
            let dir = target_dir().join("test-components");
            // (package, features, file): the misbehaving component as it is
            // (misbehaves on request), and variants that always misbehave
            // (for swap tests, where the canary must fail).
            for (package, features, file) in [
                (
                    "infergate-test-misbehaving",
                    &[][..],
                    "infergate-test-misbehaving",
                ),
                (
                    "infergate-test-misbehaving",
                    &["always-loop"][..],
                    "infergate-test-loop",
                ),
                (
                    "infergate-test-misbehaving",
                    &["always-alloc"][..],
                    "infergate-test-alloc",
                ),
                (
                    "infergate-test-other-version",
                    &[][..],
                    "infergate-test-other-version",
                ),
            ] {
                let out = dir.join(format!("{file}.wasm"));
                build_component_with(package, features, &out)?;
                println!("{}", out.display());
            }
            Ok(())
        }
        _ => {
            eprintln!(
                "usage: cargo xtask component [--out PATH] | cargo xtask test-components\n\n  component        build the translation component (wasm32-unknown-unknown + wit-component)\n  test-components  build the components that tests swap in"
            );
            std::process::exit(2);
        }
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn workspace_root() -> PathBuf {
    // `cargo run` says where this package is now; the path compiled in is
    // only a fallback, since one binary may serve several clones that share
    // a target directory.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    Path::new(&manifest_dir)
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn build_component(package: &str, out: &Path) -> anyhow::Result<()> {
    build_component_with(package, &[], out)
}

fn build_component_with(package: &str, features: &[&str], out: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(workspace_root()).args([
        "build",
        "--package",
        package,
        "--target",
        "wasm32-unknown-unknown",
        "--profile",
        "component",
    ]);
    if !features.is_empty() {
        command.args(["--features", &features.join(",")]);
    }
    let status = command
        .status()
        .context("running cargo build for the guest")?;
    if !status.success() {
        bail!(
            "building {package} failed (is the target installed? `rustup target add wasm32-unknown-unknown`)"
        );
    }
    let module_path = target_dir()
        .join("wasm32-unknown-unknown/component")
        .join(format!("{}.wasm", package.replace('-', "_")));
    let module = std::fs::read(&module_path)
        .with_context(|| format!("reading {}", module_path.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .context("the guest module carries no component type information")?
        .validate(true)
        .encode()
        .context("encoding the component")?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, &component).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
