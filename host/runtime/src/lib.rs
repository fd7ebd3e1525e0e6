//! Runs translation components under wasmtime.
//!
//! One [`Runtime`] (one wasmtime `Engine`) per process. A component is
//! checked when it is loaded ([`Runtime::load`]): it must be a component, it
//! must import nothing, and it must export `infergate:translator/translate`
//! at the version this host was built for. Each translation gets a fresh
//! `Store` with a memory limit and an epoch deadline, so a guest that loops or
//! allocates without end is stopped with an error naming the limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder};

pub use infergate_model::WIT_PACKAGE;

/// The name of the interface a translation component must export.
pub fn expected_export() -> String {
    let (package, version) = WIT_PACKAGE
        .split_once('@')
        .expect("WIT_PACKAGE is name@version");
    format!("{package}/translate@{version}")
}

/// Bounds on one translation.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Linear memory a guest may grow to, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock budget of one translation.
    pub deadline: Duration,
    /// Guest memory kept mapped between translations, per pool slot, so the
    /// next translation does not fault it in again; the controller's
    /// resident memory grows by up to this much.
    pub memory_kept_resident_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 512 << 20,
            deadline: Duration::from_secs(5),
            memory_kept_resident_bytes: 64 << 20,
        }
    }
}

/// Why a component was refused at load time.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a WebAssembly file (it does not start with the \\0asm magic number)")]
    NotWasm,
    #[error("not a valid WebAssembly component: {0:#}")]
    Invalid(wasmtime::Error),
    #[error(
        "the component imports {0:?}; a translation component must import nothing (build it for wasm32-unknown-unknown and encode it with `cargo xtask component`)"
    )]
    Imports(Vec<String>),
    #[error(
        "the component was built for {found}, this host speaks {expected}; rebuild it against this host's wit/ directory"
    )]
    WitVersion { found: String, expected: String },
    #[error("the component does not export {expected}; it exports {found:?}")]
    MissingExport {
        expected: String,
        found: Vec<String>,
    },
    #[error("the component's types do not match {expected}: {source:#}")]
    TypeMismatch {
        expected: String,
        source: wasmtime::Error,
    },
}

/// Why one translation failed. The caller keeps serving what it had.
#[derive(Debug, thiserror::Error)]
pub enum TranslateFailure {
    #[error("the translation ran past its deadline of {0:?} and was stopped")]
    Deadline(Duration),
    #[error("the translation tried to use more than its memory limit of {0} MiB and was stopped")]
    Memory(usize),
    #[error("the translation component trapped: {0}")]
    Trap(String),
    #[error("the translation component reported an error: {0}")]
    Guest(String),
    #[error("the translation component's output is inconsistent: {0}")]
    Inconsistent(String),
}

/// One wasmtime engine and the limits every translation runs under.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    limits: Limits,
}

/// Translations that may run at once on one runtime (the controller runs
/// one at a time, plus a canary when a component is swapped in).
const POOL_SLOTS: u32 = 8;

/// Epoch ticks happen this often; deadlines are counted in them.
const EPOCH_TICK: Duration = Duration::from_millis(10);

impl Runtime {
    pub fn new(limits: Limits) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // Instances come from a pool whose memories stay mapped between
        // translations: each one still starts from zeroed memory, but
        // memset instead of fresh pages (a 10,000-route translation touches
        // about 40 MiB; faulting that in anew each time cost more than the
        // translation itself on a busy VM).
        let mut pooling = wasmtime::PoolingAllocationConfig::new();
        pooling
            .total_component_instances(POOL_SLOTS)
            .total_core_instances(POOL_SLOTS)
            .total_memories(POOL_SLOTS)
            .total_tables(POOL_SLOTS)
            .max_memory_size(limits.memory_bytes.min(4 << 30))
            .linear_memory_keep_resident(limits.memory_kept_resident_bytes);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pooling));
        // For profiling: name the guest's compiled functions in
        // /tmp/perf-<pid>.map, which `perf report` reads.
        if std::env::var_os("INFERGATE_WASM_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config)
            .map_err(|e| anyhow::anyhow!("creating the wasmtime engine: {e:#}"))?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;
        Ok(Runtime { engine, limits })
    }

    /// Compile and check a component. Nothing runs yet.
    pub fn load(&self, bytes: &[u8]) -> Result<Translator, LoadError> {
        self.load_cached(bytes, None)
    }

    /// As [`Runtime::load`], with compiled code cached in `cache_dir`, keyed
    /// by the component's sha256 and this engine's compatibility hash, so a
    /// component seen before (a swap back, a restart) is not compiled again.
    /// The directory must be writable by this user only: cached code is
    /// loaded as trusted. A cache entry that fails to load is compiled anew;
    /// a cache that cannot be written is only logged. Every check below runs
    /// either way.
    pub fn load_cached(
        &self,
        bytes: &[u8],
        cache_dir: Option<&std::path::Path>,
    ) -> Result<Translator, LoadError> {
        if !bytes.starts_with(b"\0asm") {
            return Err(LoadError::NotWasm);
        }
        let started = Instant::now();
        let digest = sha256_hex(bytes);
        let cached = cache_dir.map(|dir| {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            self.engine
                .precompile_compatibility_hash()
                .hash(&mut hasher);
            dir.join(format!("{digest}-{:016x}.cwasm", hasher.finish()))
        });
        // Read into memory rather than mapped: a file changed under a
        // mapping would crash the process.
        // SAFETY: the file was written by `Component::serialize` of an
        // engine with the same compatibility hash, into a directory that the
        // caller keeps private (see above); wasmtime checks its header.
        let from_cache = cached
            .as_ref()
            .and_then(|path| std::fs::read(path).ok())
            .and_then(|code| unsafe { Component::deserialize(&self.engine, code) }.ok());
        let component = match from_cache {
            Some(component) => component,
            None => {
                let component = Component::new(&self.engine, bytes).map_err(LoadError::Invalid)?;
                if let Some(path) = &cached {
                    let written = component
                        .serialize()
                        .map_err(std::io::Error::other)
                        .and_then(|code| {
                            if let Some(dir) = path.parent() {
                                std::fs::create_dir_all(dir)?;
                            }
                            let tmp = path.with_extension("tmp");
                            std::fs::write(&tmp, code)?;
                            std::fs::rename(&tmp, path)
                        });
                    if let Err(e) = written {
                        tracing::warn!(
                            "could not cache the compiled component at {}: {e}",
                            path.display()
                        );
                    }
                }
                component
            }
        };
        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        if !imports.is_empty() {
            return Err(LoadError::Imports(imports));
        }
        let expected = expected_export();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        if !exports.contains(&expected) {
            let package = WIT_PACKAGE
                .split_once('@')
                .map(|(p, _)| p)
                .unwrap_or(WIT_PACKAGE);
            if let Some(other) = exports
                .iter()
                .find(|e| e.starts_with(&format!("{package}/translate@")))
            {
                let version = other.rsplit_once('@').map(|(_, v)| v).unwrap_or("?");
                return Err(LoadError::WitVersion {
                    found: format!("{package}@{version}"),
                    expected: WIT_PACKAGE.to_string(),
                });
            }
            return Err(LoadError::MissingExport {
                expected,
                found: exports,
            });
        }
        let linker: Linker<StoreState> = Linker::new(&self.engine);
        let pre = linker
            .instantiate_pre(&component)
            .and_then(infergate_model::TranslatorPre::new)
            .map_err(|source| LoadError::TypeMismatch {
                expected: expected.clone(),
                source,
            })?;
        Ok(Translator {
            pre,
            info: Arc::new(ComponentInfo {
                digest,
                wit_package: WIT_PACKAGE.to_string(),
                compile_time: started.elapsed(),
            }),
        })
    }

    /// Translate `snapshot` with `translator`, in a fresh store under this
    /// runtime's limits.
    pub fn translate(
        &self,
        translator: &Translator,
        snapshot: &infergate_model::Snapshot,
    ) -> Result<infergate_model::Output, TranslateFailure> {
        self.translate_measured(translator, snapshot).0
    }

    /// As [`Runtime::translate`], also saying what the translation used.
    pub fn translate_measured(
        &self,
        translator: &Translator,
        snapshot: &infergate_model::Snapshot,
    ) -> (Result<infergate_model::Output, TranslateFailure>, Usage) {
        let mut store = Store::new(
            &self.engine,
            StoreState {
                limits: StoreLimitsBuilder::new()
                    .memory_size(self.limits.memory_bytes)
                    .trap_on_grow_failure(true)
                    .build(),
                memory_peak: 0,
            },
        );
        store.limiter(|state| state);
        store.set_epoch_deadline(
            (self.limits.deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64,
        );
        let outcome = translator.pre.instantiate(&mut store).and_then(|instance| {
            instance
                .infergate_translator_translate()
                .call_translate(&mut store, snapshot)
        });
        let usage = Usage {
            memory_peak_bytes: store.data().memory_peak,
        };
        let result = match outcome {
            Ok(Ok(output)) => output
                .check_references()
                .map(|()| output)
                .map_err(TranslateFailure::Inconsistent),
            Ok(Err(error)) => Err(TranslateFailure::Guest(error.message)),
            Err(error) => Err(self.classify(error)),
        };
        (result, usage)
    }

    fn classify(&self, error: wasmtime::Error) -> TranslateFailure {
        if let Some(wasmtime::Trap::Interrupt) = error.downcast_ref::<wasmtime::Trap>() {
            return TranslateFailure::Deadline(self.limits.deadline);
        }
        // The store limiter refuses the growth and, with trap_on_grow_failure,
        // traps with this message.
        let message = format!("{error:#}");
        if message.contains("forcing trap when growing memory") {
            TranslateFailure::Memory(self.limits.memory_bytes >> 20)
        } else {
            TranslateFailure::Trap(message)
        }
    }
}

/// What one translation used.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// The guest's linear memory at its largest, in bytes.
    pub memory_peak_bytes: usize,
}

struct StoreState {
    limits: StoreLimits,
    memory_peak: usize,
}

/// The store's limits, recording how far the memory grew.
impl ResourceLimiter for StoreState {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            self.memory_peak = self.memory_peak.max(desired);
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }
}

/// A loaded, checked component, ready to instantiate.
#[derive(Clone)]
pub struct Translator {
    pre: infergate_model::TranslatorPre<StoreState>,
    info: Arc<ComponentInfo>,
}

impl Translator {
    pub fn info(&self) -> &ComponentInfo {
        &self.info
    }
}

/// What the host knows about a loaded component.
#[derive(Debug, Clone)]
pub struct ComponentInfo {
    /// sha256 of the component file, hex.
    pub digest: String,
    pub wit_package: String,
    pub compile_time: Duration,
}

/// sha256 of `bytes`, hex: the digest components are known by.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
