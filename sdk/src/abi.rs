//! The raw, C-compatible sink ABI (version 1).
//!
//! Everything here is `#[repr(C)]` and mirrors `sdk/include/sluice_sink.h`
//! field for field. Plugin authors writing Rust should use the safe layer
//! ([`crate::Sink`] and [`crate::export_sink!`]) instead; this module is what
//! the engine's loader and C plugins see.
//!
//! # Versioning
//! * The entry symbol carries the major version: [`ENTRY_SYMBOL`]
//!   (`sluice_sink_entry_v1`). A plugin built for another major version
//!   exports another symbol and is refused with a message naming both.
//! * [`SluiceSinkVTable::abi_major`] must equal [`ABI_MAJOR`].
//! * Every struct that may grow starts with (or carries) its own size:
//!   [`SluiceSinkVTable::struct_size`], [`SluiceHost::struct_size`],
//!   [`SluiceCall::struct_size`], [`SluiceBatch::record_size`]. New fields are
//!   only ever appended, so a reader that knows a smaller struct reads its
//!   prefix and a reader that knows a bigger one treats the missing tail as
//!   absent (function pointers as null, numbers as zero).

use std::ffi::c_void;

/// Major version of this ABI. A plugin is loaded only if it declares the same.
pub const ABI_MAJOR: u32 = 1;
/// Minor version: grows when fields are appended; never breaks older plugins.
pub const ABI_MINOR: u32 = 2;
/// The symbol every plugin exports (NUL-terminated, for `dlsym`).
pub const ENTRY_SYMBOL: &[u8] = b"sluice_sink_entry_v1\0";
/// Prefix of the entry symbol of any major version (`sluice_sink_entry_v<N>`).
pub const ENTRY_SYMBOL_PREFIX: &str = "sluice_sink_entry_v";

/// The plugin's `send` may be called from several threads at once on the same
/// instance. Without it the engine serializes every call on an instance.
pub const FLAG_THREAD_SAFE: u32 = 1;
/// The destination needs the records of one subscription in order (CloudWatch
/// Logs): the engine sends at most one batch per subscription at a time, and
/// a retried record goes before any later record of its subscription.
/// (ABI 1.1; an engine of ABI 1.0 ignores it.)
pub const FLAG_ORDERED: u32 = 2;

/// Status returned by `create`, `send`, `flush` and `verify`: success.
pub const STATUS_OK: i32 = 0;
/// The whole call failed but may succeed later (network down, throttled).
/// For `send`, every record of the batch is retried.
pub const STATUS_RETRY: i32 = 1;
/// The call failed and will not succeed if repeated (bad configuration,
/// missing permission). For `send`, every record is retried under the
/// delivery policy and the destination is marked unhealthy.
pub const STATUS_FATAL: i32 = 2;

/// Per-record outcome: delivered.
pub const OUTCOME_OK: u32 = 0;
/// Per-record outcome: not delivered, try again (optionally after `retry_after_ms`).
pub const OUTCOME_RETRY: u32 = 1;
/// Per-record outcome: refused for good; the engine dead-letters it with the reason.
pub const OUTCOME_REJECT: u32 = 2;
/// What the engine writes into every outcome slot before calling `send`; a slot
/// still holding it afterwards is a plugin bug and is treated as retry.
pub const OUTCOME_UNSET: u32 = u32::MAX;

/// Log levels of [`SluiceHost::log`].
pub const LOG_ERROR: u32 = 1;
/// Warning level.
pub const LOG_WARN: u32 = 2;
/// Info level.
pub const LOG_INFO: u32 = 3;
/// Debug level.
pub const LOG_DEBUG: u32 = 4;

/// A borrowed byte string (UTF-8 where the field says so). Not NUL-terminated.
/// `ptr` may be null only when `len` is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SluiceStr {
    /// First byte.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

impl SluiceStr {
    /// The empty string.
    pub const EMPTY: SluiceStr = SluiceStr {
        ptr: std::ptr::null(),
        len: 0,
    };

    /// Borrows a Rust string. The result is valid as long as `s` is.
    pub const fn from_str(s: &str) -> SluiceStr {
        SluiceStr {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// Borrows bytes. The result is valid as long as `b` is.
    pub const fn from_bytes(b: &[u8]) -> SluiceStr {
        SluiceStr {
            ptr: b.as_ptr(),
            len: b.len(),
        }
    }

    /// The bytes.
    ///
    /// # Safety
    /// `ptr` must point to `len` readable bytes that outlive `'a`.
    pub unsafe fn as_bytes<'a>(&self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            &[]
        } else {
            // SAFETY: guaranteed by the caller.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }

    /// The bytes as UTF-8, replacing invalid sequences.
    ///
    /// # Safety
    /// As for [`SluiceStr::as_bytes`].
    pub unsafe fn to_string_lossy(&self) -> String {
        // SAFETY: guaranteed by the caller.
        String::from_utf8_lossy(unsafe { self.as_bytes() }).into_owned()
    }
}

/// Batch limits a sink declares; the engine never hands it a batch beyond them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SluiceLimits {
    /// Most records in one `send` (0 = no limit).
    pub max_records: u32,
    /// Bytes the vendor counts per record on top of its data (CloudWatch Logs: 26).
    pub record_overhead_bytes: u32,
    /// Most bytes in one `send`, counting data plus overhead of every record (0 = no limit).
    pub max_batch_bytes: u64,
    /// Most bytes of one record's data plus overhead (0 = no limit). A bigger
    /// record is dead-lettered by the engine and never sent.
    pub max_record_bytes: u64,
}

/// One record handed to `send`. Everything it points to is lent by the engine
/// for the duration of the call only.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SluiceRecord {
    /// The encoded event (compact JSON, no trailing newline).
    pub data: *const u8,
    /// Length of `data` in bytes.
    pub len: usize,
    /// The event's `account_id` (UTF-8).
    pub account_id: SluiceStr,
    /// The event's `event_id` (UTF-8).
    pub event_id: SluiceStr,
    /// The event's `event_type`, e.g. `http_request_complete.v0` (UTF-8).
    pub event_type: SluiceStr,
    /// The id of the subscription that selected the record (UTF-8).
    pub subscription_id: SluiceStr,
    /// The event's `event_timestamp` as milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// A batch of records. Read records with a stride of `record_size` bytes, not
/// `size_of::<SluiceRecord>()`: a newer engine may append fields.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SluiceBatch {
    /// Size of this struct as the engine knows it.
    pub struct_size: u32,
    /// Distance in bytes between consecutive records.
    pub record_size: u32,
    /// First record.
    pub records: *const SluiceRecord,
    /// Number of records.
    pub len: usize,
}

/// The outcome of one record, written by the plugin during `send`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SluiceOutcome {
    /// One of `OUTCOME_OK`, `OUTCOME_RETRY`, `OUTCOME_REJECT`.
    pub code: u32,
    /// For `OUTCOME_RETRY`: do not retry before this many milliseconds (0 = engine's backoff).
    pub retry_after_ms: u32,
}

/// Per-call context lent by the engine to every `create`, `send`, `flush` and
/// `verify` call. Valid only during that call; the callbacks copy what they
/// are given, so the plugin keeps ownership of its strings.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SluiceCall {
    /// Size of this struct as the engine knows it.
    pub struct_size: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// Opaque engine pointer, passed back to the callbacks.
    pub ctx: *mut c_void,
    /// Explains a non-OK status of the current call.
    pub set_error: Option<unsafe extern "C" fn(ctx: *mut c_void, message: SluiceStr)>,
    /// Explains the outcome of record `index` (a rejection reason, a retry cause).
    pub set_reason: Option<unsafe extern "C" fn(ctx: *mut c_void, index: usize, reason: SluiceStr)>,
}

/// Host services lent by the engine to a plugin instance, valid from `create`
/// until `destroy` returns. The callbacks are thread-safe.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SluiceHost {
    /// Size of this struct as the engine knows it.
    pub struct_size: u32,
    /// The engine's ABI major version.
    pub abi_major: u32,
    /// The engine's ABI minor version.
    pub abi_minor: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// Opaque engine pointer, passed back to the callbacks.
    pub ctx: *mut c_void,
    /// Writes a log line through the engine's logger (never use your own global logger).
    pub log: Option<unsafe extern "C" fn(ctx: *mut c_void, level: u32, message: SluiceStr)>,
    /// Adds to a counter the engine exports as `sluice_plugin_<name>_total{destination=..}`.
    pub counter_add: Option<unsafe extern "C" fn(ctx: *mut c_void, name: SluiceStr, value: u64)>,
    /// Sets a gauge the engine exports as `sluice_plugin_<name>{destination=..}`.
    pub gauge_set: Option<unsafe extern "C" fn(ctx: *mut c_void, name: SluiceStr, value: f64)>,
    /// The destination id this instance delivers to (UTF-8).
    pub destination_id: SluiceStr,
    /// The operator's rules for this instance (ABI 1.2): `key=value` pairs
    /// separated by `;`, empty when the instance is trusted. See
    /// [`crate::restrictions`]; a plugin that does not know a key must refuse
    /// to be created.
    pub restrictions: SluiceStr,
}

/// `create`: builds an instance from a JSON configuration. Writes the instance
/// pointer to `*out` and returns `STATUS_OK`, or returns another status after
/// calling `call.set_error`.
pub type CreateFn = unsafe extern "C" fn(
    host: *const SluiceHost,
    config: SluiceStr,
    call: *const SluiceCall,
    out: *mut *mut c_void,
) -> i32;
/// `send`: delivers a batch, writing one outcome per record into `outcomes`
/// (an engine-owned array of `batch.len` slots, pre-filled with `OUTCOME_UNSET`).
pub type SendFn = unsafe extern "C" fn(
    sink: *mut c_void,
    batch: *const SluiceBatch,
    outcomes: *mut SluiceOutcome,
    call: *const SluiceCall,
) -> i32;
/// `flush` and `verify`: act on the instance as a whole.
pub type InstanceFn = unsafe extern "C" fn(sink: *mut c_void, call: *const SluiceCall) -> i32;
/// `destroy`: releases the instance. Called once, after every other call returned.
pub type DestroyFn = unsafe extern "C" fn(sink: *mut c_void);

/// What the entry symbol returns: a pointer to a static table the plugin owns
/// for as long as it is loaded.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SluiceSinkVTable {
    /// Must equal [`ABI_MAJOR`].
    pub abi_major: u32,
    /// The minor version the plugin was built with.
    pub abi_minor: u32,
    /// `size_of::<SluiceSinkVTable>()` as the plugin was compiled.
    pub struct_size: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// The destination kind this plugin implements, e.g. `kinesis` (UTF-8, static).
    pub kind: SluiceStr,
    /// The plugin's own version (UTF-8, static).
    pub version: SluiceStr,
    /// One line saying what the plugin does (UTF-8, static).
    pub description: SluiceStr,
    /// JSON Schema of the configuration `create` accepts (UTF-8, static).
    pub config_schema: SluiceStr,
    /// Batch limits.
    pub limits: SluiceLimits,
    /// Required.
    pub create: Option<CreateFn>,
    /// Required.
    pub send: Option<SendFn>,
    /// Optional: push out anything the instance buffers.
    pub flush: Option<InstanceFn>,
    /// Optional: write one test event to the destination.
    pub verify: Option<InstanceFn>,
    /// Required.
    pub destroy: Option<DestroyFn>,
}

/// The signature of the entry symbol.
pub type EntryFn = unsafe extern "C" fn() -> *const SluiceSinkVTable;

// SAFETY: the vtable only holds pointers to static, immutable data and
// functions; sharing it between threads is what the ABI is for.
unsafe impl Send for SluiceSinkVTable {}
// SAFETY: as above.
unsafe impl Sync for SluiceSinkVTable {}
