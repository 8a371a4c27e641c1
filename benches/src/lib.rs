//! # sluice-bench
//!
//! The traffic generator behind `sluice gen` and `sluice demo`, and the
//! benchmark and load-test harness behind `sluice bench`.

#![warn(missing_docs)]

pub mod traffic;
