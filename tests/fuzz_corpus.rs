//! Replays the fuzz corpus (`fuzz/corpus/<target>/*`, seeds and whatever fuzzing found worth
//! keeping) through the same entry points the libFuzzer targets call, so the targets cannot rot
//! and every input that once crashed stays fixed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[test]
fn every_corpus_input_runs_through_its_target_without_panicking() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut counted = Vec::new();
    for (name, target) in keygate::fuzzing::TARGETS {
        let dir = root.join(name);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let r = std::panic::catch_unwind(|| target(&data));
            assert!(r.is_ok(), "{name}: {} panicked", path.display());
            n += 1;
        }
        assert!(n >= 3, "{name}: only {n} corpus inputs");
        counted.push((name, n));
    }
    // every target has its corpus directory and every directory a target
    let dirs: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for d in &dirs {
        assert!(
            keygate::fuzzing::TARGETS.iter().any(|(n, _)| n == d),
            "fuzz/corpus/{d} has no target"
        );
    }
    println!("{counted:?}");
}
