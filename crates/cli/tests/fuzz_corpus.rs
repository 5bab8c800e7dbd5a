//! The fuzz targets' saved corpora (`fuzz/corpus/<target>/`), replayed through the same target
//! bodies on stable: every input that ever found new coverage, and every crash found (kept as
//! `crash-*`), stays a test. The long runs use cargo-fuzz on nightly (`fuzz/README.md`).

#[path = "../../../fuzz/targets.rs"]
mod targets;

use std::path::PathBuf;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| f(&data));
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
        n += 1;
    }
    assert!(n > 0, "{target}: the corpus is empty");
}

#[test]
fn spec_corpus() {
    replay("spec", targets::spec);
}

#[test]
fn quantity_corpus() {
    replay("quantity", targets::quantity);
}

#[test]
fn merge_corpus() {
    replay("merge", targets::merge);
}

#[test]
fn guest_output_corpus() {
    replay("guest_output", targets::guest_output);
}

#[test]
fn names_corpus() {
    replay("names", targets::names);
}

#[test]
fn agent_reply_corpus() {
    replay("agent_reply", targets::agent_reply);
}

#[test]
fn api_request_corpus() {
    replay("api_request", targets::api_request);
}

#[test]
fn qmp_reply_corpus() {
    replay("qmp_reply", targets::qmp_reply);
}
