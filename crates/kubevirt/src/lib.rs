//! Wukong on KubeVirt, the pure part: what objects a `Wukong` becomes (render), which changes a
//! given cluster can make live (preflight → capabilities for the planner), and the exact edits
//! that carry a plan out. No cluster needed; the operator builds on it.
#![forbid(unsafe_code)]

pub mod edits;
pub mod preflight;
pub mod render;

pub use edits::{Edit, apply_patches, edits};

/// A quantity as a cluster object holds it (`"2Gi"` or a plain number), in bytes.
pub fn bytes(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::String(s) => wukong_api::quantity::parse_bytes(s).ok(),
        serde_json::Value::Number(n) => n.as_u64(),
        _ => None,
    }
}
pub use preflight::{ClusterFacts, Preflight, preflight};
pub use render::{Rendered, expected_guest_size, render};
