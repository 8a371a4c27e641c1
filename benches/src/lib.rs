//! # sluice-bench
//!
//! The benchmark and load-test harness behind `sluice bench`: scenario
//! files, in-process runs with throughput, latency, CPU, memory and allocation
//! figures, the naive baseline, JSON records with a regression guard, and
//! SVG plots.

#![warn(missing_docs)]

pub mod alloc;
pub mod baseline;
pub mod cluster_harness;
pub mod harness;
pub mod plot;
pub mod report;
pub mod results;
pub mod scenario;
pub mod serve_harness;
pub mod sink_servers;
pub mod sysinfo;
