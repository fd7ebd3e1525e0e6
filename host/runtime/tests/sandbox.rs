//! The runtime's promises, tested with real components built by
//! `cargo xtask component` and `cargo xtask test-components`.

use std::path::PathBuf;
use std::time::Duration;

use infergate_model::{Settings, Snapshot};
use infergate_runtime::{Limits, LoadError, Runtime, TranslateFailure};

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")))
}

fn read(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!("{}: {e}; build it first with `cargo xtask component` and `cargo xtask test-components`", path.display())
    })
}

fn real_component() -> Vec<u8> {
    read(target_dir().join("infergate-translator.wasm"))
}

fn test_component(name: &str) -> Vec<u8> {
    read(
        target_dir()
            .join("test-components")
            .join(format!("{name}.wasm")),
    )
}

fn example_snapshot(controller: &str) -> Snapshot {
    let mut resources = infergate_resources::Resources::default();
    resources
        .add_yaml(
            "example.yaml",
            // The GatewayClass names the same controller, so that the
            // Gateway is translated whatever the behaviour selected.
            &include_str!("../../../guest/translate/testdata/weighted-backends.in.yaml")
                .replace("infergate.dev/gateway-controller", controller),
        )
        .expect("example parses");
    resources
        .to_snapshot(Settings::new(controller))
        .expect("example converts")
}

fn runtime(limits: Limits) -> Runtime {
    Runtime::new(limits).expect("engine starts")
}

#[test]
fn the_component_translates_exactly_like_the_native_library() {
    let rt = runtime(Limits::default());
    let translator = rt
        .load(&real_component())
        .expect("the real component loads");
    assert_eq!(
        translator.info().wit_package,
        infergate_runtime::WIT_PACKAGE
    );
    assert_eq!(translator.info().digest.len(), 64);
    let snapshot = example_snapshot("infergate.dev/gateway-controller");
    let through_wasm = rt.translate(&translator, &snapshot).expect("translates");
    let native = infergate_translate::translate(&snapshot).expect("translates natively");
    assert_eq!(through_wasm, native);
    assert!(
        !through_wasm.gateways.is_empty(),
        "the example has a Gateway of ours"
    );
}

#[test]
fn anything_but_a_component_of_our_wit_version_is_refused_with_its_reason() {
    let rt = runtime(Limits::default());
    match rt.load(b"apiVersion: v1\nkind: Service\n") {
        Err(LoadError::NotWasm) => {}
        other => panic!("YAML must be refused as not wasm, got {:?}", other.err()),
    }
    // A valid core module is not a component.
    let core_module = b"\0asm\x01\0\0\0";
    assert!(matches!(rt.load(core_module), Err(LoadError::Invalid(_))));
    // Truncated component.
    let real = real_component();
    assert!(matches!(
        rt.load(&real[..real.len() / 2]),
        Err(LoadError::Invalid(_))
    ));

    let err = rt
        .load(&test_component("infergate-test-other-version"))
        .err()
        .expect("other version is refused");
    let message = err.to_string();
    assert!(matches!(err, LoadError::WitVersion { .. }), "{message}");
    assert!(
        message.contains("infergate:translator@0.0.9"),
        "names the component's version: {message}"
    );
    assert!(
        message.contains(infergate_runtime::WIT_PACKAGE),
        "names the host's version: {message}"
    );
}

#[test]
fn a_guest_that_loops_is_stopped_at_its_deadline_and_the_next_translation_works() {
    let rt = runtime(Limits {
        deadline: Duration::from_millis(300),
        ..Limits::default()
    });
    let translator = rt
        .load(&test_component("infergate-test-misbehaving"))
        .expect("loads");
    let started = std::time::Instant::now();
    let err = rt
        .translate(&translator, &example_snapshot("test:loop"))
        .expect_err("a loop cannot finish");
    assert!(matches!(err, TranslateFailure::Deadline(_)), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopped near its deadline, took {:?}",
        started.elapsed()
    );
    // A fresh store per translation: the component is still usable.
    let output = rt
        .translate(
            &translator,
            &example_snapshot("infergate.dev/gateway-controller"),
        )
        .expect("works");
    assert!(!output.gateways.is_empty());
}

#[test]
fn a_guest_that_allocates_without_end_is_stopped_at_its_memory_limit() {
    let rt = runtime(Limits {
        memory_bytes: 64 << 20,
        ..Limits::default()
    });
    let translator = rt
        .load(&test_component("infergate-test-misbehaving"))
        .expect("loads");
    let err = rt
        .translate(&translator, &example_snapshot("test:alloc"))
        .expect_err("cannot allocate forever");
    assert!(matches!(err, TranslateFailure::Memory(64)), "{err}");
}

#[test]
fn the_real_component_reports_its_memory_and_a_tighter_limit_stops_it() {
    let snapshot = example_snapshot("infergate.dev/gateway-controller");
    let rt = runtime(Limits::default());
    let translator = rt.load(&real_component()).expect("loads");
    let (first, usage) = rt.translate_measured(&translator, &snapshot);
    first.expect("translates");
    assert!(usage.memory_peak_bytes > 0, "{usage:?}");
    // The component's allocator never frees across calls, which is only
    // right because every translation starts from a fresh memory.
    let (second, again) = rt.translate_measured(&translator, &snapshot);
    second.expect("translates again");
    assert_eq!(again.memory_peak_bytes, usage.memory_peak_bytes);

    let tight = runtime(Limits {
        memory_bytes: usage.memory_peak_bytes - 1,
        ..Limits::default()
    });
    let translator = tight.load(&real_component()).expect("loads");
    let err = tight
        .translate(&translator, &snapshot)
        .expect_err("needs more memory than allowed");
    assert!(matches!(err, TranslateFailure::Memory(_)), "{err}");
}

#[test]
fn guest_traps_and_guest_errors_are_reported_as_such() {
    let rt = runtime(Limits::default());
    let translator = rt
        .load(&test_component("infergate-test-misbehaving"))
        .expect("loads");
    let err = rt
        .translate(&translator, &example_snapshot("test:trap"))
        .expect_err("traps");
    assert!(matches!(err, TranslateFailure::Trap(_)), "{err}");
    let err = rt
        .translate(&translator, &example_snapshot("test:error"))
        .expect_err("errors");
    assert!(
        matches!(&err, TranslateFailure::Guest(m) if m == "deliberate error"),
        "{err}"
    );
}

#[test]
fn output_whose_routes_name_missing_rules_is_refused() {
    let rt = runtime(Limits::default());
    let translator = rt
        .load(&test_component("infergate-test-misbehaving"))
        .expect("loads");
    // The same component translates the snapshot consistently otherwise.
    let good = rt
        .translate(&translator, &example_snapshot("test:ok"))
        .expect("translates");
    assert!(good.gateways.iter().any(|g| {
        g.listeners
            .iter()
            .any(|l| l.virtual_hosts().any(|vh| !vh.routes.is_empty()))
    }));
    let err = rt
        .translate(&translator, &example_snapshot("test:dangling"))
        .expect_err("refused");
    assert!(
        matches!(&err, TranslateFailure::Inconsistent(m) if m.contains("virtual host") && m.contains("refers to rule 0")),
        "{err}"
    );
}

#[test]
fn compiled_components_are_cached_and_a_bad_cache_entry_is_compiled_anew() {
    let dir = std::env::temp_dir().join(format!("infergate-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let runtime = runtime(Limits::default());
    let bytes = real_component();
    let snapshot = example_snapshot("infergate.dev/gateway-controller");

    let first = runtime.load_cached(&bytes, Some(&dir)).unwrap();
    let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(entries.len(), 1, "one compiled entry is written");
    let entry = entries[0].path();
    assert!(
        entry
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&first.info().digest),
        "{entry:?} is keyed by the component's digest"
    );
    let expected = runtime.translate(&first, &snapshot).unwrap();

    let second = runtime.load_cached(&bytes, Some(&dir)).unwrap();
    assert_eq!(runtime.translate(&second, &snapshot).unwrap(), expected);

    // A damaged entry is not trusted blindly: it fails to load and the
    // component is compiled again.
    std::fs::write(&entry, b"garbage").unwrap();
    let third = runtime.load_cached(&bytes, Some(&dir)).unwrap();
    assert_eq!(runtime.translate(&third, &snapshot).unwrap(), expected);

    // The checks still run on a cached load.
    let other = test_component("infergate-test-other-version");
    assert!(matches!(
        runtime.load_cached(&other, Some(&dir)),
        Err(LoadError::WitVersion { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}
