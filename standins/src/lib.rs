//! # sluice-standins
//!
//! Stand-ins for the vendors Sluice delivers to: real servers on loopback
//! that speak each destination's protocol, in two modes.
//!
//! | vendor | strict (tests) | fast (benchmarks) |
//! | --- | --- | --- |
//! | the `http` sink's endpoint | [`http::Receiver`] | [`fast::Kind::Http`] |
//! | Kinesis, Firehose, CloudWatch Logs, STS | [`aws::FakeAws`] | [`fast::Kind::Aws`] |
//! | Datadog logs intake v2 | [`intake::Intake`] with [`intake::Vendor::Datadog`] | [`fast::Kind::Datadog`] |
//! | Azure Monitor Logs Ingestion and its token authority | [`intake::Intake`] with [`intake::Vendor::Azure`] | [`fast::Kind::Azure`] |
//! | a destination that never answers | [`http::Action::Hang`] | [`fast::Kind::Hang`] |
//!
//! - **Strict** stand-ins parse every request, refuse and record whatever
//!   breaks the vendor's documented protocol (a test asserts there were no
//!   violations), keep every record they accepted, and misbehave on demand
//!   (statuses, `Retry-After`, partial failures, resets, hangs, expiring
//!   credentials). They run on plain threads ([`wire`]).
//! - **Fast** stand-ins check what is cheap to check and answer success as
//!   fast as they can, counting records, requests, connections and bytes,
//!   so a benchmark measures Sluice rather than the stand-in. They run on a
//!   current-thread tokio runtime each ([`fast`]).
//!
//! Both take the vendor's limits and answers from one place ([`protocol`]).
//! Real services the tests also use (moto, nats-server, the official ngrok
//! clients) are processes started by `sluice-testkit`, not stand-ins.

pub mod aws;
pub mod fast;
pub mod http;
pub mod intake;
pub mod protocol;
pub mod wire;
