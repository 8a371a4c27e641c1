//! Loading sink plugins and calling them through the C ABI of `sluice-sdk`.
//!
//! Plugins are shared libraries named `*sluice_sink_*.{so,dylib,dll}` found in
//! the plugin directories, in order: `--plugin-dir`, `$SLUICE_PLUGIN_DIR`, then
//! the directory of the running executable (where `cargo build` puts them).
//! Before anything else the loader checks the entry symbol's major version, the
//! vtable's declared major version and its size, and refuses a mismatch with a
//! message that says what was expected. Libraries are never unloaded.

use crate::metrics::{DestinationStats, PluginValue};
use sluice_sdk::abi::{
    self, SluiceBatch, SluiceCall, SluiceHost, SluiceOutcome, SluiceRecord, SluiceSinkVTable,
    SluiceStr,
};
use std::collections::BTreeMap;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Why a plugin could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file is not a loadable shared library.
    #[error("{path}: not a loadable shared library: {message}")]
    NotALibrary {
        /// The file.
        path: PathBuf,
        /// The loader's message.
        message: String,
    },
    /// The library exports no entry symbol of any known version.
    #[error("{path}: not a Sluice sink plugin (no `sluice_sink_entry_v1` symbol)")]
    NoEntry {
        /// The file.
        path: PathBuf,
    },
    /// The library was built for another ABI.
    #[error(
        "{path}: built for sink ABI {found}; this engine supports ABI v{}, entry `sluice_sink_entry_v{}`",
        abi::ABI_MAJOR,
        abi::ABI_MAJOR
    )]
    AbiMismatch {
        /// The file.
        path: PathBuf,
        /// What the plugin declared.
        found: String,
    },
    /// The vtable is malformed.
    #[error("{path}: invalid plugin: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No loaded plugin implements this kind.
    #[error(
        "no plugin for destination kind `{kind}` (loaded: {loaded}); plugin directories searched: {dirs}"
    )]
    UnknownKind {
        /// The kind asked for.
        kind: String,
        /// Kinds loaded.
        loaded: String,
        /// Directories searched.
        dirs: String,
    },
    /// `create` failed: FATAL (the configuration is wrong) or RETRY (it
    /// could not be done now, e.g. the vendor was unreachable).
    #[error(
        "plugin `{kind}` {} destination `{destination}`: {message}",
        if *retryable { "could not create (it asked to retry later)" } else { "refused the configuration of" }
    )]
    Create {
        /// The plugin kind.
        kind: String,
        /// The destination.
        destination: String,
        /// The plugin's message.
        message: String,
        /// The plugin answered RETRY rather than FATAL.
        retryable: bool,
    },
}

/// What a plugin declares about itself.
#[derive(Clone, Debug)]
pub struct PluginInfo {
    /// The destination kind.
    pub kind: String,
    /// The plugin's version.
    pub version: String,
    /// One-line description.
    pub description: String,
    /// JSON Schema of its configuration.
    pub config_schema: String,
    /// Batch limits.
    pub limits: abi::SluiceLimits,
    /// Whether `send` may run concurrently on one instance.
    pub thread_safe: bool,
    /// Whether each subscription's records must reach the sink in order.
    pub ordered: bool,
    /// ABI minor version it was built with.
    pub abi_minor: u32,
    /// Size of its vtable.
    pub vtable_size: u32,
}

/// A loaded plugin library.
pub struct PluginLibrary {
    /// Where it was loaded from.
    pub path: PathBuf,
    /// What it declares.
    pub info: PluginInfo,
    vtable: SluiceSinkVTable,
    _lib: libloading::Library,
}

impl std::fmt::Debug for PluginLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginLibrary")
            .field("path", &self.path)
            .field("info", &self.info)
            .finish()
    }
}

/// Size of a v1.0 vtable: every later ABI has at least this.
const MIN_VTABLE_SIZE: usize = std::mem::size_of::<SluiceSinkVTable>();

fn static_str(s: &SluiceStr, what: &str, path: &Path) -> Result<String, PluginError> {
    // SAFETY: the ABI says these point to static UTF-8 owned by the plugin.
    let bytes = unsafe { s.as_bytes() };
    std::str::from_utf8(bytes)
        .map(str::to_string)
        .map_err(|_| PluginError::Invalid {
            path: path.to_path_buf(),
            message: format!("{what} is not UTF-8"),
        })
}

impl PluginLibrary {
    /// Loads and checks one plugin file.
    pub fn load(path: &Path) -> Result<PluginLibrary, PluginError> {
        // Every symbol is resolved now (RTLD_NOW): a library missing one is
        // refused here with the loader's reason, instead of ending the
        // process when the function is first called (RTLD_LAZY's default).
        #[cfg(unix)]
        let opened = {
            use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
            // SAFETY: loading a library runs its initializers; plugins are only
            // loaded from the directories the operator configured.
            unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }
                .map(libloading::Library::from)
        };
        #[cfg(not(unix))]
        // SAFETY: as above.
        let opened = unsafe { libloading::Library::new(path) };
        let lib = opened.map_err(|e| PluginError::NotALibrary {
            path: path.to_path_buf(),
            // libloading puts the loader's own words (dlerror) in the source.
            message: match std::error::Error::source(&e) {
                Some(why) => format!("{e}: {why}"),
                None => e.to_string(),
            },
        })?;
        // SAFETY: the symbol, if present, has the EntryFn signature by contract.
        let entry: Result<libloading::Symbol<'_, abi::EntryFn>, _> =
            unsafe { lib.get(abi::ENTRY_SYMBOL) };
        let entry = match entry {
            Ok(e) => *e,
            Err(_) => {
                for v in (0..=9).filter(|v| *v != abi::ABI_MAJOR) {
                    let name = format!("{}{v}\0", abi::ENTRY_SYMBOL_PREFIX);
                    // SAFETY: only probing for presence; the symbol is not called.
                    if unsafe { lib.get::<*const c_void>(name.as_bytes()) }.is_ok() {
                        return Err(PluginError::AbiMismatch {
                            path: path.to_path_buf(),
                            found: format!("v{v} (exports `{}{v}`)", abi::ENTRY_SYMBOL_PREFIX),
                        });
                    }
                }
                return Err(PluginError::NoEntry {
                    path: path.to_path_buf(),
                });
            }
        };
        // SAFETY: calling the plugin's entry point as the ABI defines it.
        let raw = match catch_unwind(|| unsafe { entry() }) {
            Ok(p) => p,
            Err(_) => {
                return Err(PluginError::Invalid {
                    path: path.to_path_buf(),
                    message: "the entry function panicked".into(),
                });
            }
        };
        if raw.is_null() {
            return Err(PluginError::Invalid {
                path: path.to_path_buf(),
                message: "the entry function returned null (the plugin failed to initialize)"
                    .into(),
            });
        }
        // Read the fixed prefix first: major version and size.
        // SAFETY: every ABI version starts with these three u32 fields.
        let (major, minor, size) = unsafe {
            let p = raw as *const u32;
            (
                p.read_unaligned(),
                p.add(1).read_unaligned(),
                p.add(2).read_unaligned(),
            )
        };
        if major != abi::ABI_MAJOR {
            return Err(PluginError::AbiMismatch {
                path: path.to_path_buf(),
                found: format!("v{major}.{minor} (declared in its vtable)"),
            });
        }
        if (size as usize) < MIN_VTABLE_SIZE {
            return Err(PluginError::Invalid {
                path: path.to_path_buf(),
                message: format!(
                    "vtable is {size} bytes, ABI v{}.0 needs at least {MIN_VTABLE_SIZE}",
                    abi::ABI_MAJOR
                ),
            });
        }
        // SAFETY: an all-zero vtable is valid (null strings, `None` functions);
        // the plugin guarantees `size` readable bytes, of which we copy at most ours.
        let vtable: SluiceSinkVTable = unsafe {
            let mut v: SluiceSinkVTable = std::mem::zeroed();
            let n = (size as usize).min(std::mem::size_of::<SluiceSinkVTable>());
            std::ptr::copy_nonoverlapping(raw as *const u8, &mut v as *mut _ as *mut u8, n);
            v
        };
        let missing: Vec<&str> = [
            ("create", vtable.create.is_none()),
            ("send", vtable.send.is_none()),
            ("destroy", vtable.destroy.is_none()),
        ]
        .iter()
        .filter(|(_, m)| *m)
        .map(|(n, _)| *n)
        .collect();
        if !missing.is_empty() {
            return Err(PluginError::Invalid {
                path: path.to_path_buf(),
                message: format!("required functions are null: {}", missing.join(", ")),
            });
        }
        let kind = static_str(&vtable.kind, "kind", path)?;
        if kind.is_empty()
            || !kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(PluginError::Invalid {
                path: path.to_path_buf(),
                message: format!(
                    "kind `{kind}` must be non-empty lowercase letters, digits and `_`"
                ),
            });
        }
        let info = PluginInfo {
            kind,
            version: static_str(&vtable.version, "version", path)?,
            description: static_str(&vtable.description, "description", path)?,
            config_schema: static_str(&vtable.config_schema, "config_schema", path)?,
            limits: vtable.limits,
            thread_safe: vtable.flags & abi::FLAG_THREAD_SAFE != 0,
            ordered: vtable.flags & abi::FLAG_ORDERED != 0,
            abi_minor: minor,
            vtable_size: size,
        };
        Ok(PluginLibrary {
            path: path.to_path_buf(),
            info,
            vtable,
            _lib: lib,
        })
    }

    /// Whether the plugin implements `verify`.
    pub fn has_verify(&self) -> bool {
        self.vtable.verify.is_some()
    }
}

/// Extensions of shared libraries.
const LIBRARY_EXTENSIONS: [&str; 3] = [".so", ".dylib", ".dll"];

/// The kind a plugin file's name declares, when it follows the rule
/// `[lib]sluice_sink_<kind>.<so|dylib|dll>` (what `cargo build` names a
/// cdylib crate `sluice-sink-<kind>`): `libsluice_sink_datadog.so` →
/// `datadog`. Discovery loads only such files, and only when the plugin
/// declares that same kind.
pub fn kind_of_file_name(path: &Path) -> Option<&str> {
    let name = path.file_name()?.to_str()?;
    let stem = LIBRARY_EXTENSIONS
        .iter()
        .find_map(|e| name.strip_suffix(e))?;
    let kind = stem
        .strip_prefix("lib")
        .unwrap_or(stem)
        .strip_prefix("sluice_sink_")?;
    (!kind.is_empty()).then_some(kind)
}

/// Whether a file name follows the plugin naming rule ([`kind_of_file_name`]).
pub fn is_plugin_file(path: &Path) -> bool {
    kind_of_file_name(path).is_some()
}

/// Whether a file is a shared library by its extension.
fn is_library_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| LIBRARY_EXTENSIONS.iter().any(|e| n.ends_with(e)))
}

/// Makes `dir` a plugin directory that offers `plugins`, each a
/// (kind, library) pair, under the file name discovery looks for
/// (`libsluice_sink_<kind>.so`), as a symbolic link to the library. Test
/// plugins are built as `libsluice_test_sink_<kind>.so`, a name discovery
/// skips, so that they are never loaded from next to the `sluice` executable;
/// a test links them into a directory of its own and points the engine at it.
/// Idempotent and safe for concurrent callers.
pub fn link_plugins(dir: &Path, plugins: &[(&str, &Path)]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (kind, lib) in plugins {
        let name = format!(
            "{}sluice_sink_{kind}{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        );
        let link = dir.join(&name);
        if link.exists() {
            continue;
        }
        // Made under a unique name, then renamed into place: atomic.
        let tmp = dir.join(format!(
            ".{name}.{}.{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_file(&tmp);
        #[cfg(unix)]
        std::os::unix::fs::symlink(lib, &tmp)?;
        #[cfg(not(unix))]
        std::fs::copy(lib, &tmp).map(drop)?;
        std::fs::rename(&tmp, &link)?;
    }
    Ok(())
}

/// The plugin directories in search order: `explicit`, `$SLUICE_PLUGIN_DIR`,
/// then the executable's directory.
pub fn plugin_dirs(explicit: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = explicit.to_vec();
    if let Some(env) = std::env::var_os("SLUICE_PLUGIN_DIR") {
        dirs.extend(std::env::split_paths(&env));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        dirs.push(dir.to_path_buf());
        // Test binaries live in target/<profile>/deps; the plugins one level up.
        if dir.file_name().is_some_and(|n| n == "deps")
            && let Some(up) = dir.parent()
        {
            dirs.push(up.to_path_buf());
        }
    }
    dirs
}

/// The loaded plugins, by kind.
#[derive(Debug, Default)]
pub struct PluginRegistry {
    by_kind: BTreeMap<String, Arc<PluginLibrary>>,
    dirs: Vec<PathBuf>,
    /// Files that looked like plugins but could not be loaded.
    pub errors: Vec<PluginError>,
    /// Shared libraries in a plugin directory that were not loaded because
    /// their name does not follow the rule of [`kind_of_file_name`].
    pub skipped: Vec<PathBuf>,
}

impl PluginRegistry {
    /// Loads every plugin found in `dirs` (earlier directories win for a kind).
    pub fn discover(dirs: &[PathBuf]) -> PluginRegistry {
        let mut reg = PluginRegistry {
            dirs: dirs.to_vec(),
            ..Default::default()
        };
        for dir in dirs {
            let Ok(rd) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| is_library_file(p))
                .collect();
            files.sort();
            for f in files {
                let Some(named) = kind_of_file_name(&f) else {
                    tracing::debug!(path = %f.display(), "not named [lib]sluice_sink_<kind>.so: not a plugin; skipped");
                    reg.skipped.push(f);
                    continue;
                };
                match PluginLibrary::load(&f) {
                    Ok(lib) if lib.info.kind != named => {
                        let e = PluginError::Invalid {
                            path: f.clone(),
                            message: format!(
                                "the file name says kind `{named}` but the plugin declares `{}`; \
                                 name the file libsluice_sink_{}.so (or declare `{named}`)",
                                lib.info.kind, lib.info.kind
                            ),
                        };
                        tracing::warn!("{e}");
                        reg.errors.push(e);
                    }
                    Ok(lib) => {
                        if reg.by_kind.contains_key(&lib.info.kind) {
                            tracing::debug!(path = %f.display(), kind = %lib.info.kind, "plugin kind already loaded from an earlier directory; skipped");
                            continue;
                        }
                        reg.by_kind.insert(lib.info.kind.clone(), Arc::new(lib));
                    }
                    Err(e) => {
                        tracing::warn!("{e}");
                        reg.errors.push(e);
                    }
                }
            }
        }
        reg
    }

    /// Adds an already loaded plugin (replacing one of the same kind).
    pub fn insert(&mut self, lib: PluginLibrary) {
        self.by_kind.insert(lib.info.kind.clone(), Arc::new(lib));
    }

    /// The plugin for `kind`.
    pub fn get(&self, kind: &str) -> Result<Arc<PluginLibrary>, PluginError> {
        self.by_kind
            .get(kind)
            .cloned()
            .ok_or_else(|| PluginError::UnknownKind {
                kind: kind.to_string(),
                loaded: if self.by_kind.is_empty() {
                    "none".into()
                } else {
                    self.by_kind.keys().cloned().collect::<Vec<_>>().join(", ")
                },
                dirs: self
                    .dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Every loaded plugin.
    pub fn all(&self) -> impl Iterator<Item = &Arc<PluginLibrary>> {
        self.by_kind.values()
    }

    /// The kinds loaded.
    pub fn kinds(&self) -> Vec<String> {
        self.by_kind.keys().cloned().collect()
    }
}

/// Per-instance host state, reached from the plugin through `SluiceHost::ctx`.
struct HostState {
    destination: String,
    restrictions: String,
    kind: String,
    stats: Arc<DestinationStats>,
}

unsafe extern "C" fn host_log(ctx: *mut c_void, level: u32, msg: SluiceStr) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if ctx.is_null() {
            return;
        }
        // SAFETY: ctx is the HostState of a live instance.
        let st = unsafe { &*(ctx as *const HostState) };
        // SAFETY: lent by the plugin for this call.
        let text = unsafe { msg.to_string_lossy() };
        match level {
            abi::LOG_ERROR => {
                tracing::error!(destination = %st.destination, plugin = %st.kind, "{text}")
            }
            abi::LOG_WARN => {
                tracing::warn!(destination = %st.destination, plugin = %st.kind, "{text}")
            }
            abi::LOG_INFO => {
                tracing::info!(destination = %st.destination, plugin = %st.kind, "{text}")
            }
            _ => tracing::debug!(destination = %st.destination, plugin = %st.kind, "{text}"),
        }
    }));
}

unsafe extern "C" fn host_counter_add(ctx: *mut c_void, name: SluiceStr, value: u64) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if ctx.is_null() {
            return;
        }
        // SAFETY: as in host_log.
        let st = unsafe { &*(ctx as *const HostState) };
        // SAFETY: lent for the call.
        let name = unsafe { name.to_string_lossy() };
        let mut m = st.stats.plugin.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(name).or_insert(PluginValue::Counter(0));
        if let PluginValue::Counter(c) = e {
            *c = c.saturating_add(value);
        }
    }));
}

unsafe extern "C" fn host_gauge_set(ctx: *mut c_void, name: SluiceStr, value: f64) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if ctx.is_null() {
            return;
        }
        // SAFETY: as in host_log.
        let st = unsafe { &*(ctx as *const HostState) };
        // SAFETY: lent for the call.
        let name = unsafe { name.to_string_lossy() };
        st.stats
            .plugin
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, PluginValue::Gauge(value));
    }));
}

/// What one call told the engine besides its status.
#[derive(Default)]
struct CallState {
    error: Option<String>,
    reasons: Vec<(usize, String)>,
}

unsafe extern "C" fn call_set_error(ctx: *mut c_void, msg: SluiceStr) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if ctx.is_null() {
            return;
        }
        // SAFETY: ctx is the CallState of the current call.
        let st = unsafe { &mut *(ctx as *mut CallState) };
        // SAFETY: lent for the call.
        let mut text = unsafe { msg.to_string_lossy() };
        text.truncate(4096);
        st.error = Some(text);
    }));
}

unsafe extern "C" fn call_set_reason(ctx: *mut c_void, index: usize, msg: SluiceStr) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if ctx.is_null() {
            return;
        }
        // SAFETY: as in call_set_error.
        let st = unsafe { &mut *(ctx as *mut CallState) };
        // SAFETY: lent for the call.
        let mut text = unsafe { msg.to_string_lossy() };
        text.truncate(1024);
        st.reasons.push((index, text));
    }));
}

fn new_call(state: &mut CallState) -> SluiceCall {
    SluiceCall {
        struct_size: std::mem::size_of::<SluiceCall>() as u32,
        reserved: 0,
        ctx: state as *mut CallState as *mut c_void,
        set_error: Some(call_set_error),
        set_reason: Some(call_set_reason),
    }
}

/// The outcome of one record as the engine understands it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Delivered.
    Ok,
    /// Try again, not before `after_ms` (0 = engine's backoff).
    Retry {
        /// Minimum delay asked by the plugin.
        after_ms: u32,
        /// Why.
        reason: String,
    },
    /// Refused for good.
    Reject {
        /// Why.
        reason: String,
    },
}

/// The result of a `send` call.
#[derive(Debug)]
pub struct SendReport {
    /// One outcome per record.
    pub outcomes: Vec<RecordOutcome>,
    /// The call as a whole failed: the status and message.
    pub failure: Option<(i32, String)>,
    /// The plugin broke the contract (bad outcome codes or status).
    pub protocol_errors: usize,
}

/// A record to send: data plus metadata, borrowed for the call.
pub struct RecordRef<'a> {
    /// Encoded JSON.
    pub data: &'a [u8],
    /// `account_id`.
    pub account_id: &'a str,
    /// `event_id`.
    pub event_id: &'a str,
    /// `event_type`.
    pub event_type: &'a str,
    /// The subscription that selected it.
    pub subscription_id: &'a str,
    /// `event_timestamp` in ms.
    pub timestamp_ms: i64,
}

/// A live plugin instance for one destination.
pub struct SinkInstance {
    lib: Arc<PluginLibrary>,
    ptr: *mut c_void,
    host: Box<SluiceHost>,
    _state: Box<HostState>,
    serial: Option<Mutex<()>>,
}

// SAFETY: calls on a non-thread-safe instance are serialized by `serial`; the
// ABI requires thread-safe instances to accept concurrent calls.
unsafe impl Send for SinkInstance {}
// SAFETY: as above.
unsafe impl Sync for SinkInstance {}

impl std::fmt::Debug for SinkInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkInstance")
            .field("kind", &self.lib.info.kind)
            .finish()
    }
}

impl SinkInstance {
    /// Creates an instance of `lib` for `destination` with a JSON
    /// configuration, under the operator's `restrictions`
    /// (`sluice_sdk::restrictions`; empty: trusted). A plugin built before
    /// ABI 1.2 cannot read restrictions, so it is refused any.
    pub fn create(
        lib: Arc<PluginLibrary>,
        destination: &str,
        config_json: &str,
        restrictions: &str,
        stats: Arc<DestinationStats>,
    ) -> Result<SinkInstance, PluginError> {
        if !restrictions.is_empty() && lib.info.abi_minor < 2 {
            return Err(PluginError::Create {
                kind: lib.info.kind.clone(),
                destination: destination.to_string(),
                retryable: false,
                message: format!(
                    "the plugin was built for ABI 1.{}, which cannot receive the operator's restrictions ({restrictions}); rebuild it with an SDK of ABI 1.2 or later",
                    lib.info.abi_minor
                ),
            });
        }
        let state = Box::new(HostState {
            destination: destination.to_string(),
            restrictions: restrictions.to_string(),
            kind: lib.info.kind.clone(),
            stats,
        });
        let host = Box::new(SluiceHost {
            struct_size: std::mem::size_of::<SluiceHost>() as u32,
            abi_major: abi::ABI_MAJOR,
            abi_minor: abi::ABI_MINOR,
            reserved: 0,
            ctx: &*state as *const HostState as *mut c_void,
            log: Some(host_log),
            counter_add: Some(host_counter_add),
            gauge_set: Some(host_gauge_set),
            destination_id: SluiceStr::from_str(&state.destination),
            restrictions: SluiceStr::from_str(&state.restrictions),
        });
        let mut cs = CallState::default();
        let call = new_call(&mut cs);
        let mut out: *mut c_void = std::ptr::null_mut();
        let create = lib.vtable.create.ok_or_else(|| PluginError::Invalid {
            path: lib.path.clone(),
            message: "create is null".into(),
        })?;
        // SAFETY: calling the plugin per the ABI; every pointer is valid for the call
        // and `host` outlives the instance.
        let status = unsafe { create(&*host, SluiceStr::from_str(config_json), &call, &mut out) };
        if status != abi::STATUS_OK || out.is_null() {
            return Err(PluginError::Create {
                kind: lib.info.kind.clone(),
                destination: destination.to_string(),
                retryable: status == abi::STATUS_RETRY,
                message: cs.error.unwrap_or_else(|| {
                    if status == abi::STATUS_OK {
                        "create returned OK but no instance".into()
                    } else {
                        format!("create failed with status {status} and no message")
                    }
                }),
            });
        }
        let serial = (!lib.info.thread_safe).then(|| Mutex::new(()));
        Ok(SinkInstance {
            lib,
            ptr: out,
            host,
            _state: state,
            serial,
        })
    }

    /// The plugin behind the instance.
    pub fn plugin(&self) -> &Arc<PluginLibrary> {
        &self.lib
    }

    /// Sends a batch and reads back one outcome per record. Blocks for as
    /// long as the plugin takes.
    pub fn send(&self, records: &[RecordRef<'_>]) -> SendReport {
        let raw: Vec<SluiceRecord> = records
            .iter()
            .map(|r| SluiceRecord {
                data: r.data.as_ptr(),
                len: r.data.len(),
                account_id: SluiceStr::from_str(r.account_id),
                event_id: SluiceStr::from_str(r.event_id),
                event_type: SluiceStr::from_str(r.event_type),
                subscription_id: SluiceStr::from_str(r.subscription_id),
                timestamp_ms: r.timestamp_ms,
            })
            .collect();
        let batch = SluiceBatch {
            struct_size: std::mem::size_of::<SluiceBatch>() as u32,
            record_size: std::mem::size_of::<SluiceRecord>() as u32,
            records: raw.as_ptr(),
            len: raw.len(),
        };
        let mut slots = vec![
            SluiceOutcome {
                code: abi::OUTCOME_UNSET,
                retry_after_ms: 0,
            };
            raw.len()
        ];
        let mut cs = CallState::default();
        let call = new_call(&mut cs);
        let Some(send) = self.lib.vtable.send else {
            return SendReport {
                outcomes: vec![
                    RecordOutcome::Retry {
                        after_ms: 0,
                        reason: "plugin has no send".into()
                    };
                    records.len()
                ],
                failure: Some((abi::STATUS_FATAL, "plugin has no send".into())),
                protocol_errors: 1,
            };
        };
        let status = {
            let _g = self
                .serial
                .as_ref()
                .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()));
            // SAFETY: every pointer is valid for the duration of the call, and
            // `slots` has one entry per record.
            unsafe { send(self.ptr, &batch, slots.as_mut_ptr(), &call) }
        };
        drop(raw);
        // Reasons come with retries and rejects only: usually none.
        let mut reasons: Vec<Option<String>> = Vec::new();
        if !cs.reasons.is_empty() {
            reasons.resize(records.len(), None);
            for (i, r) in cs.reasons.drain(..) {
                if let Some(slot) = reasons.get_mut(i) {
                    *slot = Some(r);
                }
            }
        }
        let mut protocol_errors = 0;
        if status != abi::STATUS_OK {
            if status != abi::STATUS_RETRY && status != abi::STATUS_FATAL {
                protocol_errors += 1;
            }
            let msg = cs
                .error
                .unwrap_or_else(|| format!("send failed with status {status} and no message"));
            return SendReport {
                outcomes: vec![
                    RecordOutcome::Retry {
                        after_ms: 0,
                        reason: msg.clone()
                    };
                    records.len()
                ],
                failure: Some((status, msg)),
                protocol_errors,
            };
        }
        let outcomes = slots
            .iter()
            .enumerate()
            .map(|(i, o)| (o, reasons.get_mut(i).and_then(Option::take)))
            .map(|(o, reason)| match o.code {
                abi::OUTCOME_OK => RecordOutcome::Ok,
                abi::OUTCOME_RETRY => RecordOutcome::Retry {
                    after_ms: o.retry_after_ms,
                    reason: reason.unwrap_or_else(|| "plugin asked to retry".into()),
                },
                abi::OUTCOME_REJECT => RecordOutcome::Reject {
                    reason: reason.unwrap_or_else(|| "rejected by the destination".into()),
                },
                abi::OUTCOME_UNSET => {
                    protocol_errors += 1;
                    RecordOutcome::Retry {
                        after_ms: 0,
                        reason: "plugin did not report an outcome".into(),
                    }
                }
                other => {
                    protocol_errors += 1;
                    RecordOutcome::Retry {
                        after_ms: 0,
                        reason: format!("plugin reported invalid outcome code {other}"),
                    }
                }
            })
            .collect();
        SendReport {
            outcomes,
            failure: None,
            protocol_errors,
        }
    }

    fn instance_call(&self, f: Option<abi::InstanceFn>, what: &str) -> Result<(), VerifyError> {
        let Some(f) = f else {
            return Err(VerifyError {
                retryable: false,
                message: format!("plugin `{}` does not implement {what}", self.lib.info.kind),
            });
        };
        let mut cs = CallState::default();
        let call = new_call(&mut cs);
        let status = {
            let _g = self
                .serial
                .as_ref()
                .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()));
            // SAFETY: valid instance and call table.
            unsafe { f(self.ptr, &call) }
        };
        if status == abi::STATUS_OK {
            Ok(())
        } else {
            Err(VerifyError {
                retryable: status == abi::STATUS_RETRY,
                message: cs
                    .error
                    .unwrap_or_else(|| format!("{what} failed with status {status}")),
            })
        }
    }

    /// Sends encoded records of one subscription (see [`SinkInstance::send`]).
    pub fn send_records(
        &self,
        records: &[crate::encode::Record],
        subscription: &str,
    ) -> SendReport {
        let refs: Vec<RecordRef<'_>> = records
            .iter()
            .map(|r| RecordRef {
                data: r.data(),
                account_id: r.account_id(),
                event_id: r.event_id(),
                event_type: r.event_type.name(),
                subscription_id: subscription,
                timestamp_ms: r.timestamp_ms,
            })
            .collect();
        self.send(&refs)
    }

    /// Asks the plugin to push out what it buffers.
    pub fn flush(&self) -> Result<(), String> {
        match self.lib.vtable.flush {
            None => Ok(()),
            f => self.instance_call(f, "flush").map_err(|e| e.message),
        }
    }

    /// Asks the plugin to write one test event.
    pub fn verify(&self) -> Result<(), VerifyError> {
        self.instance_call(self.lib.vtable.verify, "verify")
    }
}

/// Sends a destination's test event: creates a throwaway instance of its
/// plugin with its configuration and calls the ABI's verify (the plugin
/// writes one record of `event_type` `test`). Used by `sluice check
/// --destination` and by the API's `verify_with_test_event`, under the
/// operator's `restrictions` (see [`SinkInstance::create`]). Blocks for as
/// long as the plugin's call takes.
pub fn verify_destination(
    plugins: &PluginRegistry,
    d: &crate::config::DestinationSpec,
    restrictions: &str,
) -> Result<(), VerifyError> {
    let refused = |e: &PluginError| VerifyError {
        retryable: matches!(
            e,
            PluginError::Create {
                retryable: true,
                ..
            }
        ),
        message: e.to_string(),
    };
    let lib = plugins.get(&d.kind).map_err(|e| refused(&e))?;
    let inst = SinkInstance::create(
        lib,
        &d.id,
        &d.config.to_string(),
        restrictions,
        Arc::new(DestinationStats::default()),
    )
    .map_err(|e| refused(&e))?;
    inst.verify()
}

/// Why a test event (or another instance call) did not go through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyError {
    /// The plugin answered RETRY: the destination could not take it now
    /// (throttled, unavailable, unreachable), not a refusal.
    pub retryable: bool,
    /// What the plugin (or the engine) said.
    pub message: String,
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Drop for SinkInstance {
    fn drop(&mut self) {
        if let Some(destroy) = self.lib.vtable.destroy {
            // SAFETY: called once, after every other call on the instance returned
            // (we hold the only reference).
            unsafe { destroy(self.ptr) };
        }
        let _ = &self.host;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_file_names() {
        assert!(is_plugin_file(Path::new("/x/libsluice_sink_file.so")));
        assert!(is_plugin_file(Path::new("sluice_sink_file.dll")));
        assert!(!is_plugin_file(Path::new("/x/libsluice_engine.so")));
        assert!(!is_plugin_file(Path::new("/x/libsluice_sink_file.rlib")));
        // The kind is the name's: another name around `sluice_sink_` is not one.
        assert_eq!(
            kind_of_file_name(Path::new("/x/libsluice_sink_cloudwatch_logs.so")),
            Some("cloudwatch_logs")
        );
        assert_eq!(
            kind_of_file_name(Path::new("sluice_sink_file.dll")),
            Some("file")
        );
        assert_eq!(
            kind_of_file_name(Path::new("/x/libmy_sluice_sink_x.so")),
            None
        );
        assert_eq!(kind_of_file_name(Path::new("/x/libsluice_sink_.so")), None);
    }

    #[test]
    fn a_file_that_is_not_a_library_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("libsluice_sink_fake.so");
        std::fs::write(&p, b"not an ELF file").unwrap();
        let err = PluginLibrary::load(&p).unwrap_err();
        assert!(matches!(err, PluginError::NotALibrary { .. }), "{err}");
        let reg = PluginRegistry::discover(&[dir.path().to_path_buf()]);
        assert_eq!(reg.errors.len(), 1);
        let e = reg.get("fake").unwrap_err().to_string();
        assert!(e.contains("no plugin for destination kind `fake`"), "{e}");
    }
}
