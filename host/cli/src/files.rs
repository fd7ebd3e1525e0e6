//! A directory of YAML as resources: read all at once ([`read_resources`],
//! for `translate` and `component check`), or kept as a snapshot across
//! changes ([`SnapshotFiles`], for standalone mode).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};

use infergate_model::{Settings, Snapshot};
use infergate_resources::{Certificates, ResourceError, Resources, Source, empty_snapshot};

/// The largest configuration file read; a larger one is an error, not an
/// out-of-memory kill (`-f /dev/zero`).
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// The deepest nesting of YAML flow collections (`[`, `{`) accepted; parsing
/// pathological nesting is slow (quadratic) and Kubernetes objects need few levels.
pub const MAX_FLOW_NESTING: usize = 64;

/// The *.yaml / *.yml files of a directory (sorted, not recursive), or the
/// one file `path` names. Entries that are not regular files (FIFOs,
/// devices) are skipped with a warning: reading one could block forever.
fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, Vec<ResourceError>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| vec![io_error(path, e)])?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .filter(|p| {
            let regular = p.is_file();
            if !regular && !p.is_dir() {
                tracing::warn!(file = %p.display(), "skipped: not a regular file");
            }
            regular
        })
        .collect();
    files.sort();
    Ok(files)
}

/// A configuration file's text, within the bounds above; a leading UTF-8
/// byte order mark is dropped.
// The error path is cold and its errors end up in a Vec anyway.
#[allow(clippy::result_large_err)]
pub fn read_text(path: &Path) -> Result<String, ResourceError> {
    use std::io::Read;
    let fail = |message: String| {
        ResourceError::new(
            Source::document(&path.display().to_string(), 0),
            None,
            None,
            message,
        )
    };
    // Looked at before opening: opening a FIFO blocks until it has a writer.
    let metadata = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    if !metadata.is_file() {
        return Err(fail(
            "not a regular file (a FIFO or device could block or never end); give a file or a directory".into(),
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(path, e))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(fail(format!(
            "larger than {} MiB, the most infergate reads from one file; split it",
            MAX_FILE_BYTES >> 20
        )));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        fail(format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    let text = match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    };
    if let Some(line) = too_deep(&text) {
        return Err(fail(format!(
            "line {line}: YAML flow collections ([ ], {{ }}) nested deeper than {MAX_FLOW_NESTING} levels"
        )));
    }
    Ok(text)
}

/// The line where flow collections first nest deeper than
/// [`MAX_FLOW_NESTING`], ignoring quoted text and comments. Brackets inside
/// plain scalars count too, so a pathological file is refused before the
/// YAML parser spends seconds on it.
fn too_deep(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (n, line) in text.lines().enumerate() {
        let mut quote = None;
        let mut previous = ' ';
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '#') if previous.is_whitespace() => break,
                (None, '[' | '{') => {
                    depth += 1;
                    if depth > MAX_FLOW_NESTING {
                        return Some(n + 1);
                    }
                }
                (None, ']' | '}') => depth = depth.saturating_sub(1),
                _ => {}
            }
            previous = c;
        }
    }
    None
}

fn io_error(path: &Path, e: std::io::Error) -> ResourceError {
    ResourceError::new(
        Source::document(&path.display().to_string(), 0),
        None,
        None,
        e.to_string(),
    )
}

/// Read one YAML file, or every YAML file of a directory, checking the
/// documents of CRD kinds against their CRDs. All errors of all files are
/// returned together.
pub fn read_resources(path: &Path) -> Result<Resources, Vec<ResourceError>> {
    read_resources_with(path, true)
}

/// [`read_resources`], with or without the CRD checks.
pub fn read_resources_with(
    path: &Path,
    check_schemas: bool,
) -> Result<Resources, Vec<ResourceError>> {
    let mut resources = Resources {
        check_schemas,
        ..Resources::default()
    };
    let mut errors = Vec::new();
    for file in yaml_files(path)? {
        match read_text(&file) {
            Ok(text) => {
                if let Err(e) = resources.add_yaml(&file.display().to_string(), &text) {
                    errors.extend(e);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    for skipped in &resources.skipped {
        tracing::warn!("{skipped}");
    }
    if errors.is_empty() {
        Ok(resources)
    } else {
        Err(errors)
    }
}

/// The list fields of a snapshot, each with its index into [`Counts`].
macro_rules! for_each_kind {
    ($apply:ident) => {
        $apply!(
            namespaces = 0,
            gateway_classes = 1,
            gateways = 2,
            http_routes = 3,
            reference_grants = 4,
            services = 5,
            endpoint_slices = 6,
            pods = 7,
            inference_pools = 8,
            tls_secrets = 9,
            inference_model_rewrites = 10
        )
    };
}

/// How many objects of each kind a file holds.
type Counts = [usize; 11];

fn counts(part: &Snapshot) -> Counts {
    macro_rules! count {
        ($($field:ident = $i:expr),*) => {{
            let mut counts = Counts::default();
            $(counts[$i] = part.$field.len();)*
            counts
        }};
    }
    for_each_kind!(count)
}

/// What is kept of one file: its text (to tell whether it changed), where
/// each of its objects is defined, what it skipped, and how many objects of
/// each kind it put in the snapshot.
struct FileEntry {
    path: PathBuf,
    text: String,
    origins: Vec<((String, String, String), Source)>,
    skipped: Vec<String>,
    counts: Counts,
    /// The usable certificates of its Secrets (kept out of the snapshot).
    certificates: Certificates,
}

/// A directory of YAML kept as one snapshot. A change re-parses and
/// converts only the files whose text changed; the objects of the others
/// are moved, not copied, into the new snapshot (at 10,000 HTTPRoutes
/// converting or copying everything took about as long as translating it).
#[derive(Default)]
pub struct SnapshotFiles {
    settings: Option<Settings>,
    /// In the order their objects appear in the snapshot (sorted paths).
    files: Vec<FileEntry>,
    snapshot: Option<Snapshot>,
}

/// Where a file's objects in the next snapshot come from.
enum Plan {
    /// The objects of `files[i]`, unchanged.
    Keep(usize),
    /// A file that is new or changed, converted.
    New(Box<(FileEntry, Snapshot)>),
}

impl SnapshotFiles {
    /// Bring the snapshot ([`SnapshotFiles::snapshot`]) up to date with the
    /// files in `path`; true if it changed (a file was added, removed or
    /// changed, or this is the first read). On any error (unreadable, invalid
    /// YAML or resource, an object defined in two files) every error is
    /// returned and the snapshot stays what it was.
    pub fn read(&mut self, path: &Path, settings: &Settings) -> Result<bool, Vec<ResourceError>> {
        let paths = yaml_files(path)?;
        let same_settings = self.settings.as_ref() == Some(settings);
        let known: HashMap<&Path, usize> = self
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.path.as_path(), i))
            .collect();
        let mut plans = Vec::with_capacity(paths.len());
        let mut errors = Vec::new();
        for path in paths {
            let text = match read_text(&path) {
                Ok(text) => text,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            match known.get(path.as_path()) {
                Some(&i) if same_settings && self.files[i].text == text => {
                    plans.push(Plan::Keep(i))
                }
                _ => match convert(path, text, settings) {
                    Ok(converted) => plans.push(Plan::New(Box::new(converted))),
                    Err(e) => errors.extend(e),
                },
            }
        }
        errors.extend(self.defined_twice(&plans));
        if !errors.is_empty() {
            return Err(errors);
        }
        let unchanged = self.snapshot.is_some()
            && plans.len() == self.files.len()
            && plans
                .iter()
                .enumerate()
                .all(|(j, plan)| matches!(plan, Plan::Keep(i) if *i == j));
        if unchanged {
            return Ok(false);
        }
        self.assemble(plans, settings);
        Ok(true)
    }

    /// The snapshot of the last successful [`SnapshotFiles::read`].
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    /// The certificates of the last successful read's Secrets, for the xDS
    /// server (the snapshot says only whether each Secret can serve).
    pub fn certificates(&self) -> Certificates {
        self.files
            .iter()
            .flat_map(|f| f.certificates.iter())
            .map(|(name, certificate)| (name.clone(), certificate.clone()))
            .collect()
    }

    /// Documents the last successful read skipped, with why.
    pub fn skipped(&self) -> impl Iterator<Item = &String> {
        self.files.iter().flat_map(|f| &f.skipped)
    }

    /// An error for each object that two of the planned files define.
    fn defined_twice(&self, plans: &[Plan]) -> Vec<ResourceError> {
        let mut first: HashMap<&(String, String, String), &Source> = HashMap::new();
        let mut errors = Vec::new();
        for plan in plans {
            let entry = match plan {
                Plan::Keep(i) => &self.files[*i],
                Plan::New(new) => &new.0,
            };
            for (key, source) in &entry.origins {
                match first.entry(key) {
                    Entry::Occupied(earlier) => errors.push(ResourceError::defined_twice(
                        key,
                        source.clone(),
                        earlier.get(),
                    )),
                    Entry::Vacant(slot) => {
                        slot.insert(source);
                    }
                }
            }
        }
        errors
    }

    /// The next snapshot: kept files' objects moved out of the current one,
    /// new files' objects from their conversion, in `plans` order.
    fn assemble(&mut self, plans: Vec<Plan>, settings: &Settings) {
        let mut old = self
            .snapshot
            .take()
            .unwrap_or_else(|| empty_snapshot(settings.clone()));
        let old_counts: Vec<Counts> = self.files.iter().map(|f| f.counts).collect();
        let mut old_files: Vec<Option<FileEntry>> = self.files.drain(..).map(Some).collect();
        let mut next = empty_snapshot(settings.clone());
        /// A file's objects: the old snapshot's of file `i`, or converted anew.
        enum Part {
            Old(usize),
            New(Box<Snapshot>),
        }
        let mut parts = Vec::with_capacity(plans.len());
        let mut entries = Vec::with_capacity(plans.len());
        for plan in plans {
            match plan {
                Plan::Keep(i) => {
                    entries.push(old_files[i].take().expect("each file planned once"));
                    parts.push(Part::Old(i));
                }
                Plan::New(new) => {
                    let (entry, part) = *new;
                    entries.push(entry);
                    parts.push(Part::New(Box::new(part)));
                }
            }
        }
        macro_rules! move_objects {
            ($($field:ident = $i:expr),*) => {$(
                // The old snapshot's objects, by the file (old index) they came from.
                let mut chunks = split(std::mem::take(&mut old.$field), old_counts.iter().map(|c| c[$i]));
                for part in &mut parts {
                    match part {
                        Part::Old(i) => next.$field.append(&mut chunks[*i]),
                        Part::New(part) => next.$field.append(&mut part.$field),
                    }
                }
            )*};
        }
        for_each_kind!(move_objects);
        self.files = entries;
        self.settings = Some(settings.clone());
        self.snapshot = Some(next);
    }
}

/// `objects` cut into consecutive runs of the given lengths.
fn split<T>(objects: Vec<T>, lengths: impl Iterator<Item = usize>) -> Vec<Vec<T>> {
    let mut objects = objects.into_iter();
    lengths
        .map(|n| objects.by_ref().take(n).collect())
        .collect()
}

/// Parse and convert one file.
fn convert(
    path: PathBuf,
    text: String,
    settings: &Settings,
) -> Result<(FileEntry, Snapshot), Vec<ResourceError>> {
    let mut resources = Resources::checked();
    resources.add_yaml(&path.display().to_string(), &text)?;
    let part = resources.to_snapshot(settings.clone())?;
    let certificates = resources.certificates();
    let mut origins: Vec<_> = resources.origins.into_iter().collect();
    // Document order, so that errors about them come in that order.
    origins.sort_by_key(|(_, source)| match source {
        Source::Document { index, .. } => *index,
        Source::Api => 0,
    });
    Ok((
        FileEntry {
            path,
            text,
            origins,
            skipped: resources.skipped,
            counts: counts(&part),
            certificates,
        },
        part,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATEWAY: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: infergate}
spec: {controllerName: infergate.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: infergate
  listeners: [{name: http, port: 8080, protocol: HTTP}]
";

    fn route(name: &str, path: &str) -> String {
        format!(
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{matches: [{{path: {{type: PathPrefix, value: {path}}}}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec: {{ports: [{{port: 80}}]}}
"
        )
    }

    fn settings(address: &str) -> Settings {
        Settings {
            default_address: address.into(),
            ..Settings::new(infergate_names::DEFAULT_CONTROLLER_NAME)
        }
    }

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir =
                std::env::temp_dir().join(format!("infergate-files-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }

        fn write(&self, file: &str, text: &str) {
            std::fs::write(self.0.join(file), text).unwrap();
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// What reading and converting every file afresh gives.
    fn fresh(dir: &Dir, settings: &Settings) -> Snapshot {
        read_resources(&dir.0)
            .unwrap()
            .to_snapshot(settings.clone())
            .unwrap()
    }

    #[test]
    fn the_kept_snapshot_follows_every_kind_of_file_change() {
        let dir = Dir::new("changes");
        dir.write("a.yaml", GATEWAY);
        dir.write(
            "c.yaml",
            &format!("{}{}", route("c1", "/c1"), route("c2", "/c2")),
        );
        dir.write("e.yml", &route("e", "/e"));
        dir.write("notes.txt", "not YAML, not read");
        let settings = settings("127.0.0.1");
        let mut files = SnapshotFiles::default();
        let check = |files: &mut SnapshotFiles, what: &str| {
            let expected = fresh(&dir, &settings);
            let changed = files.read(&dir.0, &settings).unwrap();
            assert_eq!(changed, what != "nothing changed", "after {what}");
            assert_eq!(files.snapshot(), Some(&expected), "after {what}");
            expected
        };
        check(&mut files, "the first read");
        dir.write(
            "c.yaml",
            &format!("{}{}", route("c1", "/changed"), route("c3", "/c3")),
        );
        check(&mut files, "a file changed");
        dir.write("b.yaml", &route("b", "/b"));
        let snapshot = check(&mut files, "a file added before others");
        let names: Vec<&str> = snapshot
            .http_routes
            .iter()
            .map(|r| r.meta.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["b", "c1", "c3", "e"],
            "file order, then document order"
        );
        std::fs::remove_file(dir.0.join("c.yaml")).unwrap();
        check(&mut files, "a file removed");
        check(&mut files, "nothing changed");
        assert_eq!(files.snapshot().unwrap().services.len(), 2);
    }

    #[test]
    fn an_error_changes_nothing_and_names_the_file_and_object() {
        let dir = Dir::new("errors");
        dir.write("a.yaml", GATEWAY);
        dir.write("b.yaml", &route("b", "/b"));
        let settings = settings("127.0.0.1");
        let mut files = SnapshotFiles::default();
        assert!(files.read(&dir.0, &settings).unwrap());
        let good = files.snapshot().unwrap().clone();

        dir.write("b.yaml", &format!("{}  bad: [", route("b", "/changed")));
        let errors = files.read(&dir.0, &settings).unwrap_err();
        assert!(errors[0].to_string().contains("b.yaml"), "{errors:?}");
        assert_eq!(files.snapshot(), Some(&good));

        dir.write("b.yaml", &route("b", "/b"));
        // HTTPRoute b again, and a Service that is new.
        let again = route("b", "/again").replace(
            "metadata: {name: b}\nspec: {ports",
            "metadata: {name: c}\nspec: {ports",
        );
        dir.write("c.yaml", &again);
        let errors = files.read(&dir.0, &settings).unwrap_err();
        assert_eq!(errors.len(), 1, "only the object defined twice: {errors:?}");
        let text = errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            text.contains(
                "c.yaml: document 1 (HTTPRoute default/b): defined twice; first defined at"
            ) && text.contains("b.yaml: document 1"),
            "{text}"
        );
        assert_eq!(files.snapshot(), Some(&good));
        // Reading the directory at once (`translate`, `component check`) refuses it too.
        let at_once = read_resources(&dir.0).unwrap_err();
        assert!(
            at_once[0]
                .to_string()
                .contains("(HTTPRoute default/b): defined twice"),
            "{at_once:?}"
        );

        // Fixed: the files are as they were, so the snapshot has not changed.
        std::fs::remove_file(dir.0.join("c.yaml")).unwrap();
        assert!(!files.read(&dir.0, &settings).unwrap());
        assert_eq!(files.snapshot(), Some(&good));
    }

    #[test]
    fn other_settings_convert_every_file_again() {
        let dir = Dir::new("settings");
        dir.write("a.yaml", GATEWAY);
        dir.write("b.yaml", &route("b", "/b"));
        let mut files = SnapshotFiles::default();
        files.read(&dir.0, &settings("127.0.0.1")).unwrap();
        let other = settings("127.0.0.9");
        assert!(files.read(&dir.0, &other).unwrap());
        assert_eq!(files.snapshot(), Some(&fresh(&dir, &other)));
    }

    #[test]
    fn files_are_read_within_bounds() {
        let dir = Dir::new("bounds");
        // A byte order mark is accepted.
        dir.write("bom.yaml", &format!("\u{feff}{GATEWAY}"));
        assert_eq!(
            read_resources(&dir.0.join("bom.yaml"))
                .unwrap()
                .gateways
                .len(),
            1
        );

        // Pathological nesting is refused before the YAML parser sees it.
        dir.write(
            "deep.yaml",
            &format!("x: {}{}", "[".repeat(40_000), "]".repeat(40_000)),
        );
        let started = std::time::Instant::now();
        let error = read_text(&dir.0.join("deep.yaml")).unwrap_err().to_string();
        assert!(error.contains("nested deeper than 64"), "{error}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // Brackets in quoted text and comments do not count.
        dir.write(
            "quoted.yaml",
            &format!("x: \"{}\" # {}\n", "[".repeat(100), "{".repeat(100)),
        );
        assert!(read_text(&dir.0.join("quoted.yaml")).is_ok());
        std::fs::remove_file(dir.0.join("quoted.yaml")).unwrap();

        // Not a regular file: refused, never read.
        let error = read_text(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(error.contains("not a regular file"), "{error}");
        let fifo = dir.0.join("fifo.yaml");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let error = read_text(&fifo).unwrap_err().to_string();
            assert!(error.contains("not a regular file"), "{error}");
            // In a directory it is skipped; the other files are read.
            assert_eq!(
                read_resources(&dir.0).map(|r| r.gateways.len()).ok(),
                None,
                "deep.yaml is still an error"
            );
            std::fs::remove_file(dir.0.join("deep.yaml")).unwrap();
            assert_eq!(read_resources(&dir.0).unwrap().gateways.len(), 1);
        } else {
            panic!("mkfifo is needed for this test");
        }

        // Too large: refused without reading it all.
        let big = std::fs::File::create(dir.0.join("big.yaml")).unwrap();
        big.set_len(MAX_FILE_BYTES + 1).unwrap();
        let error = read_text(&dir.0.join("big.yaml")).unwrap_err().to_string();
        assert!(error.contains("larger than 64 MiB"), "{error}");
    }
}
