//! Container images without a base image or a registry: each image is one
//! layer holding a binary, the shared libraries it loads (its `ldd`
//! closure), a non-root user and a `/tmp`, written as an archive that is both
//! an OCI image layout (`oci-layout`, `index.json`, `blobs/`) and a
//! docker-archive (`manifest.json`), so that containerd (`ctr images
//! import`), registry tools (crane, skopeo) and `docker load` all read it.
//!
//! The layer is reproducible: entries sorted, owned by root, mtime 0.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The registry part of every image name: nothing is pulled from it.
pub const REGISTRY: &str = "infergate.local";
/// The user images run as (no home, no shell).
const USER: u32 = 65532;

/// One image to build.
pub struct Image {
    /// `infergate.local/<name>:<tag>`, unless `repository` names another.
    pub name: String,
    pub tag: String,
    /// The whole repository part of the reference, for an image that must
    /// carry a name fixed elsewhere (the upstream conformance manifests').
    pub repository: Option<String>,
    /// The entrypoint binary, installed as `/usr/local/bin/<file name>`.
    pub binary: PathBuf,
    /// Arguments that are part of the entrypoint (Kubernetes `args` replace
    /// `cmd`, never these).
    pub entrypoint_args: Vec<String>,
    /// Arguments after the entrypoint by default.
    pub cmd: Vec<String>,
    /// More files: (source, path in the image).
    pub files: Vec<(PathBuf, String)>,
    pub env: Vec<String>,
    pub description: String,
    /// Run as root rather than the unprivileged user (only for a third
    /// party's image whose manifests need it, e.g. binding port 53).
    pub run_as_root: bool,
}

impl Image {
    pub fn reference(&self) -> String {
        match &self.repository {
            Some(repository) => format!("{repository}:{}", self.tag),
            None => format!("{REGISTRY}/{}:{}", self.name, self.tag),
        }
    }
}

/// Build `image` into `out` (an archive file).
pub fn build(image: &Image, out: &Path) -> anyhow::Result<()> {
    let entry = format!(
        "/usr/local/bin/{}",
        image
            .binary
            .file_name()
            .context("the binary has no file name")?
            .to_string_lossy()
    );
    let mut files: BTreeMap<String, Content> = BTreeMap::new();
    files.insert(entry.clone(), Content::File(image.binary.clone(), 0o755));
    for library in shared_libraries(&image.binary)? {
        let path = library.display().to_string();
        files.insert(path, Content::File(library, 0o755));
    }
    for (source, path) in &image.files {
        for library in shared_libraries(source).unwrap_or_default() {
            let lib = library.display().to_string();
            files.insert(lib, Content::File(library, 0o755));
        }
        // Executables stay executable (the Envoy image's drain hook).
        let executable = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(source)
                .with_context(|| format!("reading {}", source.display()))?
                .permissions(),
        ) & 0o111
            != 0;
        let mode = if executable { 0o755 } else { 0o644 };
        files.insert(path.clone(), Content::File(source.clone(), mode));
    }
    files.insert(
        "/etc/passwd".into(),
        Content::Text(format!(
            "root:x:0:0:root:/:/sbin/nologin\nnonroot:x:{USER}:{USER}:nonroot:/:/sbin/nologin\n"
        )),
    );
    files.insert(
        "/etc/group".into(),
        Content::Text(format!("root:x:0:\nnonroot:x:{USER}:\n")),
    );
    let layer = layer(&files).context("writing the layer")?;
    let layer_digest = sha256(&layer);

    let revision = git_revision();
    let mut labels = serde_json::Map::new();
    labels.insert("org.opencontainers.image.title".into(), json!(image.name));
    labels.insert(
        "org.opencontainers.image.description".into(),
        json!(image.description),
    );
    labels.insert("org.opencontainers.image.version".into(), json!(image.tag));
    labels.insert(
        "org.opencontainers.image.source".into(),
        json!("https://github.com/infergate/infergate"),
    );
    if let Some(revision) = &revision {
        labels.insert("org.opencontainers.image.revision".into(), json!(revision));
    }
    let mut env = vec!["PATH=/usr/local/bin".to_string()];
    env.extend(image.env.iter().cloned());
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "User": if image.run_as_root { "0:0".to_string() } else { format!("{USER}:{USER}") },
            "Entrypoint": std::iter::once(&entry).chain(&image.entrypoint_args).collect::<Vec<_>>(),
            "Cmd": image.cmd,
            "Env": env,
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
        "history": [{ "created": "1970-01-01T00:00:00Z", "created_by": "cargo xtask images" }],
    }))?;
    let config_digest = sha256(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer.len(),
        }],
        "annotations": { "org.opencontainers.image.version": image.tag },
    }))?;
    let manifest_digest = sha256(&manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": image.reference(),
                "org.opencontainers.image.ref.name": image.tag,
            },
        }],
    }))?;
    let docker_manifest = serde_json::to_vec(&json!([{
        "Config": format!("blobs/sha256/{config_digest}"),
        "RepoTags": [image.reference()],
        "Layers": [format!("blobs/sha256/{layer_digest}")],
    }]))?;

    let mut archive: BTreeMap<String, Content> = BTreeMap::new();
    archive.insert(
        "oci-layout".into(),
        Content::Text(json!({"imageLayoutVersion": "1.0.0"}).to_string()),
    );
    archive.insert("index.json".into(), Content::Bytes(index));
    archive.insert("manifest.json".into(), Content::Bytes(docker_manifest));
    archive.insert(
        format!("blobs/sha256/{config_digest}"),
        Content::Bytes(config),
    );
    archive.insert(
        format!("blobs/sha256/{manifest_digest}"),
        Content::Bytes(manifest),
    );
    archive.insert(
        format!("blobs/sha256/{layer_digest}"),
        Content::Bytes(layer),
    );
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let bytes = tar(&archive, false)?;
    let partial = out.with_extension("tar.partial");
    std::fs::write(&partial, bytes).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, out)?;
    Ok(())
}

enum Content {
    File(PathBuf, u32),
    Text(String),
    Bytes(Vec<u8>),
}

/// The image's only layer: `files` with every parent directory, and `/tmp`.
fn layer(files: &BTreeMap<String, Content>) -> anyhow::Result<Vec<u8>> {
    tar(files, true)
}

fn tar(files: &BTreeMap<String, Content>, rootfs: bool) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    if rootfs {
        let mut dirs: std::collections::BTreeSet<String> = files
            .keys()
            .flat_map(|path| {
                let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
                (1..parts.len())
                    .map(|n| parts[..n].join("/"))
                    .collect::<Vec<_>>()
            })
            .collect();
        dirs.insert("tmp".into());
        for dir in dirs {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(if dir == "tmp" { 0o1777 } else { 0o755 });
            header.set_size(0);
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            builder.append_data(&mut header, format!("{dir}/"), std::io::empty())?;
        }
    }
    for (path, content) in files {
        let (bytes, mode) = match content {
            Content::File(source, mode) => (
                std::fs::read(source).with_context(|| format!("reading {}", source.display()))?,
                *mode,
            ),
            Content::Text(text) => (text.clone().into_bytes(), 0o644),
            Content::Bytes(bytes) => (bytes.clone(), 0o644),
        };
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(mode);
        header.set_size(bytes.len() as u64);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        builder.append_data(&mut header, path.trim_start_matches('/'), bytes.as_slice())?;
    }
    Ok(builder.into_inner()?)
}

/// The shared libraries `binary` loads, the dynamic loader included, as
/// `ldd` resolves them on this machine (empty for a static binary).
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        if text.contains("not a dynamic executable") || text.contains("statically linked") {
            return Ok(vec![]);
        }
        let error = String::from_utf8_lossy(&output.stderr);
        if error.contains("not a dynamic executable") {
            return Ok(vec![]);
        }
        bail!("ldd {}: {error}", binary.display());
    }
    let mut libraries = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("not found") {
            bail!("{}: {line}", binary.display());
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or
        // `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split(" (").next().unwrap_or_default().trim();
        if path.starts_with('/') {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

fn sha256(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn git_revision() -> Option<String> {
    let output = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(crate::workspace_root())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Check an archive the way a registry client would read it: the index
/// names one manifest, every blob's digest and size match, and the config's
/// diff_ids are the layers'. Returns the image reference.
pub fn verify(archive: &Path) -> anyhow::Result<String> {
    let file = std::fs::File::open(archive)?;
    let mut entries: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for entry in tar::Archive::new(file).entries()? {
        let mut entry = entry?;
        let path = entry.path()?.display().to_string();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes)?;
        entries.insert(path, bytes);
    }
    let blob = |descriptor: &Value| -> anyhow::Result<&Vec<u8>> {
        let digest = descriptor["digest"]
            .as_str()
            .context("a descriptor without digest")?;
        let hex = digest
            .strip_prefix("sha256:")
            .context("not a sha256 digest")?;
        let bytes = entries
            .get(&format!("blobs/sha256/{hex}"))
            .with_context(|| format!("blob {digest} missing"))?;
        if sha256(bytes) != hex {
            bail!("blob {digest} has another digest");
        }
        if descriptor["size"].as_u64() != Some(bytes.len() as u64) {
            bail!("blob {digest} has another size");
        }
        Ok(bytes)
    };
    let index: Value = serde_json::from_slice(entries.get("index.json").context("no index.json")?)?;
    let descriptor = &index["manifests"][0];
    let manifest: Value = serde_json::from_slice(blob(descriptor)?)?;
    let config: Value = serde_json::from_slice(blob(&manifest["config"])?)?;
    let layers = manifest["layers"].as_array().context("no layers")?;
    for (layer, diff_id) in layers.iter().zip(
        config["rootfs"]["diff_ids"]
            .as_array()
            .into_iter()
            .flatten(),
    ) {
        blob(layer)?;
        if layer["digest"] != *diff_id {
            bail!("an uncompressed layer's digest must be its diff_id");
        }
    }
    descriptor["annotations"]["io.containerd.image.name"]
        .as_str()
        .map(str::to_string)
        .context("no image name")
}
