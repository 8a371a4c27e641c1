//! The safe Rust layer over [`crate::abi`].

use crate::abi::{
    self, SluiceBatch, SluiceCall, SluiceHost, SluiceOutcome, SluiceRecord, SluiceStr,
};
use std::any::Any;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

/// Batch limits of a sink, counted the way its vendor counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Most records per batch (0 = no limit).
    pub max_records: u32,
    /// Bytes counted per record on top of its data (CloudWatch Logs: 26).
    pub record_overhead_bytes: u32,
    /// Most bytes per batch, data plus per-record overhead (0 = no limit).
    pub max_batch_bytes: u64,
    /// Most bytes of one record, data plus overhead (0 = no limit).
    pub max_record_bytes: u64,
}

impl From<Limits> for abi::SluiceLimits {
    fn from(l: Limits) -> Self {
        abi::SluiceLimits {
            max_records: l.max_records,
            record_overhead_bytes: l.record_overhead_bytes,
            max_batch_bytes: l.max_batch_bytes,
            max_record_bytes: l.max_record_bytes,
        }
    }
}

/// What a plugin declares about itself.
#[derive(Clone, Copy, Debug)]
pub struct SinkInfo {
    /// The destination kind, e.g. `kinesis`. Lowercase letters, digits and `_`.
    pub kind: &'static str,
    /// The plugin's version.
    pub version: &'static str,
    /// One line saying what it does.
    pub description: &'static str,
    /// JSON Schema of the configuration [`Sink::create`] accepts.
    pub config_schema: &'static str,
    /// Batch limits.
    pub limits: Limits,
    /// Whether [`Sink::send`] may run on several threads at once.
    pub thread_safe: bool,
    /// Whether the destination needs each subscription's records in order
    /// (see [`abi::FLAG_ORDERED`]).
    pub ordered: bool,
}

/// An error returned by a plugin call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    retryable: bool,
    message: String,
}

impl Error {
    /// A failure that may go away if the call is repeated (network, throttling).
    pub fn retry(message: impl Into<String>) -> Error {
        Error {
            retryable: true,
            message: message.into(),
        }
    }

    /// A failure that will not go away by itself (bad configuration, permissions).
    pub fn fatal(message: impl Into<String>) -> Error {
        Error {
            retryable: false,
            message: message.into(),
        }
    }

    /// Whether the failure may go away if the call is repeated.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    fn status(&self) -> i32 {
        if self.retryable {
            abi::STATUS_RETRY
        } else {
            abi::STATUS_FATAL
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// A sink: one instance per destination.
///
/// The engine calls [`Sink::create`] once per destination configuration, then
/// [`Sink::send`] for every batch (concurrently when [`SinkInfo::thread_safe`]),
/// [`Sink::flush`] when it drains, and drops the instance when the destination
/// goes away.
pub trait Sink: Send + Sync + Sized + 'static {
    /// Describes the plugin. Called once, when the library is loaded.
    fn info() -> SinkInfo;

    /// Builds an instance from the destination's JSON configuration. Return
    /// [`Error::fatal`] with a message naming the bad key for a bad configuration.
    fn create(config: &str, host: Host) -> Result<Self, Error>;

    /// Delivers a batch. Report every record through `outcomes`; a record left
    /// unreported is retried. Returning `Err` retries the whole batch.
    fn send(&self, batch: &Batch<'_>, outcomes: &mut Outcomes<'_>) -> Result<(), Error>;

    /// Pushes out anything buffered. The default does nothing.
    fn flush(&self) -> Result<(), Error> {
        Ok(())
    }

    /// Whether [`Sink::verify`] is implemented: set it to `true` when you
    /// implement `verify`. When `false` the exported vtable's `verify` is
    /// null, which tells the engine (and `sluice plugin check`) that the
    /// plugin has no test-event call.
    const HAS_VERIFY: bool = false;

    /// Writes one test event to the destination, to check the configuration
    /// end to end. Only called when [`Sink::HAS_VERIFY`] is `true`.
    fn verify(&self) -> Result<(), Error> {
        Err(Error::fatal("this plugin does not implement verify"))
    }
}

/// Log levels for [`Host::log`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Something failed.
    Error,
    /// Something looks wrong.
    Warn,
    /// Worth knowing.
    Info,
    /// Detail.
    Debug,
}

/// The engine's services, lent to an instance for its whole life.
#[derive(Clone, Copy)]
pub struct Host {
    raw: SluiceHost,
    restrictions: crate::Restrictions,
}

// SAFETY: the ABI requires the host callbacks to be thread-safe and the
// context to outlive the instance.
unsafe impl Send for Host {}
// SAFETY: as above.
unsafe impl Sync for Host {}

impl Host {
    /// Copies the host table, reading no more than the engine says it has,
    /// and reads the operator's restrictions: one this SDK does not know is
    /// a fatal error (a plugin cannot enforce a rule it does not know).
    ///
    /// # Safety
    /// `raw` is null or points to a `SluiceHost` of at least `struct_size` bytes.
    unsafe fn from_raw(raw: *const SluiceHost) -> Result<Host, Error> {
        // SAFETY: an all-zero SluiceHost is valid (null pointers, `None` callbacks).
        let mut host: SluiceHost = unsafe { std::mem::zeroed() };
        if !raw.is_null() {
            // SAFETY: the caller guarantees `struct_size` readable bytes.
            let size = unsafe { (*raw).struct_size } as usize;
            let n = size.min(std::mem::size_of::<SluiceHost>());
            // SAFETY: both regions are valid for `n` bytes and do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    raw as *const u8,
                    &mut host as *mut SluiceHost as *mut u8,
                    n,
                )
            };
        }
        // SAFETY: the engine lends the string until destroy; a table too
        // short to hold it left it zeroed (empty).
        let text = unsafe { host.restrictions.to_string_lossy() };
        let restrictions = crate::Restrictions::parse(&text).map_err(Error::fatal)?;
        Ok(Host {
            raw: host,
            restrictions,
        })
    }

    /// A host that drops everything: for unit tests of a sink outside the engine.
    pub fn detached() -> Host {
        Host {
            // SAFETY: an all-zero SluiceHost is valid and has no callbacks.
            raw: unsafe { std::mem::zeroed() },
            restrictions: crate::Restrictions::default(),
        }
    }

    /// Logs through the engine's logger.
    pub fn log(&self, level: Level, message: &str) {
        if let Some(log) = self.raw.log {
            let level = match level {
                Level::Error => abi::LOG_ERROR,
                Level::Warn => abi::LOG_WARN,
                Level::Info => abi::LOG_INFO,
                Level::Debug => abi::LOG_DEBUG,
            };
            // SAFETY: the engine keeps `ctx` valid while the instance lives.
            unsafe { log(self.raw.ctx, level, SluiceStr::from_str(message)) }
        }
    }

    /// Adds `value` to the plugin counter `name`.
    pub fn counter_add(&self, name: &str, value: u64) {
        if let Some(f) = self.raw.counter_add {
            // SAFETY: as for `log`.
            unsafe { f(self.raw.ctx, SluiceStr::from_str(name), value) }
        }
    }

    /// Sets the plugin gauge `name`.
    pub fn gauge_set(&self, name: &str, value: f64) {
        if let Some(f) = self.raw.gauge_set {
            // SAFETY: as for `log`.
            unsafe { f(self.raw.ctx, SluiceStr::from_str(name), value) }
        }
    }

    /// The id of the destination this instance delivers to.
    pub fn destination_id(&self) -> String {
        // SAFETY: the engine keeps the id alive while the instance lives.
        unsafe { self.raw.destination_id.to_string_lossy() }
    }

    /// The operator's rules for this instance (none from an engine older
    /// than ABI 1.2, or for a trusted one). The SDK has already refused to
    /// create an instance under a rule it does not know.
    pub fn restrictions(&self) -> crate::Restrictions {
        self.restrictions
    }

    /// A host with these restrictions and no callbacks: for unit tests of a
    /// sink's egress checks outside the engine.
    pub fn detached_with(restrictions: crate::Restrictions) -> Host {
        Host {
            restrictions,
            ..Host::detached()
        }
    }
}

/// A batch of records lent for the duration of one [`Sink::send`].
pub struct Batch<'a> {
    records: *const u8,
    stride: usize,
    len: usize,
    _lent: std::marker::PhantomData<&'a SluiceRecord>,
}

impl<'a> Batch<'a> {
    /// # Safety
    /// `raw` points to a valid batch whose records outlive `'a`.
    unsafe fn from_raw(raw: &SluiceBatch) -> Batch<'a> {
        Batch {
            records: raw.records as *const u8,
            stride: raw.record_size as usize,
            len: if raw.records.is_null() { 0 } else { raw.len },
            _lent: std::marker::PhantomData,
        }
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Record `index`, or `None` past the end.
    pub fn get(&self, index: usize) -> Option<Record<'a>> {
        if index >= self.len {
            return None;
        }
        // SAFETY: the engine lays out `len` records `stride` bytes apart and
        // each has at least `stride` readable bytes.
        let at = unsafe { self.records.add(index * self.stride) };
        let rec = if self.stride >= std::mem::size_of::<SluiceRecord>() {
            // The usual case (an engine of this minor version or newer): a
            // fixed-size read of the prefix this SDK knows.
            // SAFETY: at least size_of::<SluiceRecord>() readable bytes at `at`.
            unsafe { std::ptr::read_unaligned(at as *const SluiceRecord) }
        } else {
            // An older engine's smaller record: its prefix, the rest zero.
            // SAFETY: an all-zero SluiceRecord is valid (null pointers, zero lengths).
            let mut rec: SluiceRecord = unsafe { std::mem::zeroed() };
            // SAFETY: `stride` readable bytes at `at`; `rec` has more room.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    at,
                    &mut rec as *mut SluiceRecord as *mut u8,
                    self.stride,
                )
            };
            rec
        };
        Some(Record {
            raw: rec,
            _lent: std::marker::PhantomData,
        })
    }

    /// The records in order.
    pub fn iter(&self) -> impl Iterator<Item = Record<'a>> + '_ {
        (0..self.len).filter_map(move |i| self.get(i))
    }
}

/// One record of a [`Batch`].
#[derive(Clone, Copy)]
pub struct Record<'a> {
    raw: SluiceRecord,
    _lent: std::marker::PhantomData<&'a [u8]>,
}

fn text<'a>(s: &SluiceStr) -> &'a str {
    // SAFETY: the engine lends these strings for the whole call ('a).
    std::str::from_utf8(unsafe { s.as_bytes() }).unwrap_or("")
}

impl<'a> Record<'a> {
    /// The encoded event: compact JSON, no trailing newline.
    pub fn data(&self) -> &'a [u8] {
        // SAFETY: lent by the engine for the whole call.
        unsafe { SluiceStr::from_raw_parts(self.raw.data, self.raw.len).as_bytes() }
    }
    /// The event's `account_id`.
    pub fn account_id(&self) -> &'a str {
        text(&self.raw.account_id)
    }
    /// The event's `event_id`.
    pub fn event_id(&self) -> &'a str {
        text(&self.raw.event_id)
    }
    /// The event's `event_type`.
    pub fn event_type(&self) -> &'a str {
        text(&self.raw.event_type)
    }
    /// The id of the subscription that selected it.
    pub fn subscription_id(&self) -> &'a str {
        text(&self.raw.subscription_id)
    }
    /// The event's `event_timestamp`, in milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> i64 {
        self.raw.timestamp_ms
    }
}

impl SluiceStr {
    const fn from_raw_parts(ptr: *const u8, len: usize) -> SluiceStr {
        SluiceStr { ptr, len }
    }
}

/// Where [`Sink::send`] reports the outcome of each record.
pub struct Outcomes<'a> {
    slots: &'a mut [SluiceOutcome],
    call: CallRef,
}

impl Outcomes<'_> {
    /// Number of slots (= records in the batch).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are no slots.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn slot(&mut self, index: usize) -> &mut SluiceOutcome {
        let len = self.slots.len();
        match self.slots.get_mut(index) {
            Some(s) => s,
            None => panic!("outcome index {index} out of range for a batch of {len}"),
        }
    }

    /// Record `index` was delivered.
    pub fn ok(&mut self, index: usize) {
        *self.slot(index) = SluiceOutcome {
            code: abi::OUTCOME_OK,
            retry_after_ms: 0,
        };
    }

    /// Every record was delivered.
    pub fn all_ok(&mut self) {
        for s in self.slots.iter_mut() {
            *s = SluiceOutcome {
                code: abi::OUTCOME_OK,
                retry_after_ms: 0,
            };
        }
    }

    /// Record `index` was not delivered and should be retried, not before
    /// `after` if given. `reason` says why (e.g. the vendor's error code).
    pub fn retry(&mut self, index: usize, after: Option<Duration>, reason: &str) {
        let ms = after.map_or(0, |d| d.as_millis().min(u32::MAX as u128) as u32);
        *self.slot(index) = SluiceOutcome {
            code: abi::OUTCOME_RETRY,
            retry_after_ms: ms,
        };
        self.call.set_reason(index, reason);
    }

    /// Record `index` is refused for good; the engine dead-letters it with `reason`.
    pub fn reject(&mut self, index: usize, reason: &str) {
        *self.slot(index) = SluiceOutcome {
            code: abi::OUTCOME_REJECT,
            retry_after_ms: 0,
        };
        self.call.set_reason(index, reason);
    }
}

#[derive(Clone, Copy)]
struct CallRef {
    raw: Option<SluiceCall>,
}

impl CallRef {
    /// # Safety
    /// `raw` is null or a valid call table of at least `struct_size` bytes.
    unsafe fn new(raw: *const SluiceCall) -> CallRef {
        if raw.is_null() {
            return CallRef { raw: None };
        }
        // SAFETY: an all-zero SluiceCall is valid (no callbacks).
        let mut call: SluiceCall = unsafe { std::mem::zeroed() };
        // SAFETY: the caller guarantees `struct_size` readable bytes.
        let n = (unsafe { (*raw).struct_size } as usize).min(std::mem::size_of::<SluiceCall>());
        // SAFETY: both regions valid for `n` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(raw as *const u8, &mut call as *mut _ as *mut u8, n)
        };
        CallRef { raw: Some(call) }
    }

    fn set_error(&self, msg: &str) {
        if let Some(c) = &self.raw
            && let Some(f) = c.set_error
        {
            // SAFETY: valid during the call; the engine copies the message.
            unsafe { f(c.ctx, SluiceStr::from_str(msg)) }
        }
    }

    fn set_reason(&self, index: usize, msg: &str) {
        if let Some(c) = &self.raw
            && let Some(f) = c.set_reason
        {
            // SAFETY: as for `set_error`.
            unsafe { f(c.ctx, index, SluiceStr::from_str(msg)) }
        }
    }
}

fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// A vtable in a `static`: raw pointers made shareable.
#[doc(hidden)]
pub struct StaticVTable(abi::SluiceSinkVTable);

impl StaticVTable {
    /// The pointer the entry symbol returns.
    pub fn as_ptr(&self) -> *const abi::SluiceSinkVTable {
        &self.0
    }
}

/// Builds the vtable of `T`, or `None` if `T::info` panics.
#[doc(hidden)]
pub fn build_vtable<T: Sink>() -> Option<StaticVTable> {
    let info = catch_unwind(T::info).ok()?;
    Some(StaticVTable(abi::SluiceSinkVTable {
        abi_major: abi::ABI_MAJOR,
        abi_minor: abi::ABI_MINOR,
        struct_size: std::mem::size_of::<abi::SluiceSinkVTable>() as u32,
        flags: if info.thread_safe {
            abi::FLAG_THREAD_SAFE
        } else {
            0
        } | if info.ordered { abi::FLAG_ORDERED } else { 0 },
        kind: SluiceStr::from_str(info.kind),
        version: SluiceStr::from_str(info.version),
        description: SluiceStr::from_str(info.description),
        config_schema: SluiceStr::from_str(info.config_schema),
        limits: info.limits.into(),
        create: Some(create::<T>),
        send: Some(send::<T>),
        flush: Some(flush::<T>),
        verify: if T::HAS_VERIFY {
            Some(verify::<T>)
        } else {
            None
        },
        destroy: Some(destroy::<T>),
    }))
}

unsafe extern "C" fn create<T: Sink>(
    host: *const SluiceHost,
    config: SluiceStr,
    call: *const SluiceCall,
    out: *mut *mut c_void,
) -> i32 {
    // SAFETY: per the ABI, `call` is null or valid for this call.
    let call = unsafe { CallRef::new(call) };
    if out.is_null() {
        call.set_error("create called with a null output pointer");
        return abi::STATUS_FATAL;
    }
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: per the ABI, `host` is null or valid until destroy.
        let host = unsafe { Host::from_raw(host) }?;
        // SAFETY: the engine lends the configuration for the call.
        let bytes = unsafe { config.as_bytes() };
        let config = std::str::from_utf8(bytes)
            .map_err(|e| Error::fatal(format!("configuration is not valid UTF-8: {e}")))?;
        T::create(config, host)
    }));
    match result {
        Ok(Ok(sink)) => {
            // SAFETY: checked non-null above.
            unsafe { *out = Box::into_raw(Box::new(sink)) as *mut c_void };
            abi::STATUS_OK
        }
        Ok(Err(e)) => {
            call.set_error(&e.message);
            e.status()
        }
        Err(p) => {
            call.set_error(&format!(
                "plugin panicked in create: {}",
                panic_message(&*p)
            ));
            abi::STATUS_FATAL
        }
    }
}

unsafe extern "C" fn send<T: Sink>(
    sink: *mut c_void,
    batch: *const SluiceBatch,
    outcomes: *mut SluiceOutcome,
    call: *const SluiceCall,
) -> i32 {
    // SAFETY: per the ABI, `call` is null or valid for this call.
    let call = unsafe { CallRef::new(call) };
    if sink.is_null() || batch.is_null() {
        call.set_error("send called with a null instance or batch");
        return abi::STATUS_FATAL;
    }
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `sink` came from `create::<T>`; `batch` is valid for the call.
        let (sink, raw) = unsafe { (&*(sink as *const T), &*batch) };
        // SAFETY: the engine lends the records for the call.
        let batch = unsafe { Batch::from_raw(raw) };
        let slots: &mut [SluiceOutcome] = if outcomes.is_null() || batch.is_empty() {
            &mut []
        } else {
            // SAFETY: the engine provides `len` outcome slots.
            unsafe { std::slice::from_raw_parts_mut(outcomes, batch.len()) }
        };
        let mut outcomes = Outcomes { slots, call };
        sink.send(&batch, &mut outcomes)
    }));
    finish(&call, result, "send")
}

unsafe extern "C" fn flush<T: Sink>(sink: *mut c_void, call: *const SluiceCall) -> i32 {
    // SAFETY: per the ABI.
    let call = unsafe { CallRef::new(call) };
    if sink.is_null() {
        call.set_error("flush called with a null instance");
        return abi::STATUS_FATAL;
    }
    // SAFETY: `sink` came from `create::<T>`.
    let sink = unsafe { &*(sink as *const T) };
    finish(
        &call,
        catch_unwind(AssertUnwindSafe(|| sink.flush())),
        "flush",
    )
}

unsafe extern "C" fn verify<T: Sink>(sink: *mut c_void, call: *const SluiceCall) -> i32 {
    // SAFETY: per the ABI.
    let call = unsafe { CallRef::new(call) };
    if sink.is_null() {
        call.set_error("verify called with a null instance");
        return abi::STATUS_FATAL;
    }
    // SAFETY: `sink` came from `create::<T>`.
    let sink = unsafe { &*(sink as *const T) };
    finish(
        &call,
        catch_unwind(AssertUnwindSafe(|| sink.verify())),
        "verify",
    )
}

unsafe extern "C" fn destroy<T: Sink>(sink: *mut c_void) {
    if sink.is_null() {
        return;
    }
    // A panicking Drop is swallowed.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `sink` came from `Box::into_raw` in `create::<T>` and the
        // engine calls destroy exactly once.
        drop(unsafe { Box::from_raw(sink as *mut T) })
    }));
}

fn finish(call: &CallRef, result: std::thread::Result<Result<(), Error>>, what: &str) -> i32 {
    match result {
        Ok(Ok(())) => abi::STATUS_OK,
        Ok(Err(e)) => {
            call.set_error(&e.message);
            e.status()
        }
        Err(p) => {
            call.set_error(&format!(
                "plugin panicked in {what}: {}",
                panic_message(&*p)
            ));
            abi::STATUS_RETRY
        }
    }
}
