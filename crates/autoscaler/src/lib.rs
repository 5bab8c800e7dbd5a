//! The autoscaler's recommender, pure: samples of the guest's metrics come in with the time
//! they were taken (a clock the caller owns), decisions come out with the figures that caused
//! them. Backends only collect samples and apply decisions; this crate holds the rules and
//! carries their table, property and simulated-time tests.
#![forbid(unsafe_code)]

pub mod export;
pub mod recommend;
pub mod rules;
pub mod sample;
pub mod status;

pub use export::AutoscalerMetrics;
pub use recommend::{Change, Current, Evaluation, Recommender};
pub use sample::{CpuSample, FsSample, MemorySample, Sample};
