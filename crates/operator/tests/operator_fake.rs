//! Operator tests that need the fake API server's own fault injection (conflicts on demand,
//! a compacted watch history): they run on the fake only.

mod common;

use common::{BASIC, Cluster};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_are_retried_until_the_change_lands() {
    let c = Cluster::start().await;
    c.create("w", BASIC).await;
    c.converged("w").await;
    // Someone else writes the VM and the Wukong at the same time: the operator's writes
    // meet 409 Conflict twice each, and are retried.
    c.fake().store.inject_conflicts("virtualmachines", "w", 2);
    c.patch_spec("w", json!({"cpu": 4})).await;
    c.fake().store.inject_conflicts("wukongs", "w", 2);
    c.converged("w").await;
    assert_eq!(
        c.vmi("w").unwrap()["status"]["currentCPUTopology"]["sockets"],
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_watches_expire_the_operator_relists_and_keeps_reacting() {
    let c = Cluster::start().await;
    c.create("w", BASIC).await;
    c.converged("w").await;
    // Every watch ends and its resource version is gone: clients get 410 and must re-list.
    c.fake().store.compact();
    c.patch_spec("w", json!({"cpu": 3})).await;
    c.converged("w").await;
    assert_eq!(
        c.vmi("w").unwrap()["status"]["currentCPUTopology"]["sockets"],
        3
    );
}
