//! Every committed corpus entry and every crash found so far, through its
//! fuzz target, on the stable toolchain. Panics in any thread fail the test.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) {
            files.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
        }
    }
    files.sort();
    files
}

fn replay(target: &str, run: fn(&[u8])) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
    let files = inputs(target);
    assert!(
        !files.is_empty(),
        "no corpus for {target} in fuzz/corpus/{target}"
    );
    for file in &files {
        let data = std::fs::read(file).unwrap();
        let before = PANICS.load(Ordering::SeqCst);
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(
            outcome.is_ok() && PANICS.load(Ordering::SeqCst) == before,
            "{target}: {} panicked",
            file.display()
        );
    }
    println!("{target}: {} inputs replayed", files.len());
}

/// One test for all targets: a panic in any thread is counted, so targets
/// replayed at once would be blamed for each other's panics.
#[test]
fn every_committed_input_replays_cleanly() {
    replay("yaml_translate", infergate_fuzzing::yaml_translate);
    replay("sim_http", infergate_fuzzing::sim_http);
    replay("picker_extproc", infergate_fuzzing::picker_extproc);
}
