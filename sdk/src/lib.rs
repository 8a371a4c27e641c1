//! # sluice-sdk: write a Sluice sink plugin
//!
//! A sink plugin is a shared library (`cdylib`) that delivers batches of
//! encoded events to one kind of destination. The engine loads it at run time
//! through a small, versioned C ABI ([`abi`]); this crate gives Rust authors a
//! safe layer over it, so that a plugin needs no `unsafe` at all:
//!
//! ```
//! use sluice_sdk::{Batch, Error, Host, Limits, Outcomes, Sink, SinkInfo};
//!
//! pub struct Stdout;
//!
//! impl Sink for Stdout {
//!     fn info() -> SinkInfo {
//!         SinkInfo {
//!             kind: "stdout",
//!             version: env!("CARGO_PKG_VERSION"),
//!             description: "prints every record on standard output",
//!             config_schema: r#"{"type":"object"}"#,
//!             limits: Limits { max_records: 500, ..Limits::default() },
//!             thread_safe: true,
//!             ordered: false,
//!         }
//!     }
//!     fn create(_config: &str, _host: Host) -> Result<Self, Error> {
//!         Ok(Stdout)
//!     }
//!     fn send(&self, batch: &Batch<'_>, outcomes: &mut Outcomes<'_>) -> Result<(), Error> {
//!         for (i, record) in batch.iter().enumerate() {
//!             println!("{}", String::from_utf8_lossy(record.data()));
//!             outcomes.ok(i);
//!         }
//!         Ok(())
//!     }
//! }
//!
//! sluice_sdk::export_sink!(Stdout);
//! ```
//!
//! Every entry point is wrapped in `catch_unwind`: a panic becomes an error
//! returned to the engine (retryable for `send`), never an unwind across the
//! C boundary. See `sdk/README.md` for the full contract.

#![warn(missing_docs)]

pub mod abi;
pub mod events;
pub mod restrictions;
mod sink;

#[doc = include_str!("../README.md")]
pub mod contract {}

pub use restrictions::Restrictions;
pub use sink::{Batch, Error, Host, Level, Limits, Outcomes, Record, Sink, SinkInfo};

#[doc(hidden)]
pub mod __private {
    pub use crate::sink::{StaticVTable, build_vtable};

    /// Silences the default panic message of this library's copy of std: a
    /// panic in a plugin is caught at the entry point and reported to the
    /// engine (`set_error`), which logs it; the default hook would also
    /// print it, with a backtrace, on the host process's stderr. Only the
    /// entry symbol calls this, so a plugin crate linked as an rlib (tests)
    /// keeps its host's hook.
    pub fn quiet_panics() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    }
}

/// Exports a [`Sink`] implementation as a plugin: defines the
/// `sluice_sink_entry_v1` symbol returning the type's vtable.
///
/// Use it once per `cdylib`, at the crate root.
#[macro_export]
macro_rules! export_sink {
    ($ty:ty) => {
        /// The Sluice sink ABI v1 entry point.
        #[unsafe(no_mangle)]
        pub extern "C" fn sluice_sink_entry_v1() -> *const $crate::abi::SluiceSinkVTable {
            static VTABLE: ::std::sync::OnceLock<
                ::std::option::Option<$crate::__private::StaticVTable>,
            > = ::std::sync::OnceLock::new();
            match VTABLE.get_or_init(|| {
                $crate::__private::quiet_panics();
                $crate::__private::build_vtable::<$ty>()
            }) {
                ::std::option::Option::Some(v) => v.as_ptr(),
                ::std::option::Option::None => ::std::ptr::null(),
            }
        }
    };
}
