//! A plugin built with this SDK keeps working with engines of the same ABI
//! major that are newer (bigger host, call, batch and record structs) or
//! older (smaller ones): it reads what the engine says it has, by
//! `struct_size` and `record_size`, never more. The engine side of the same
//! rule (a newer plugin's bigger vtable) is tested in
//! `engine/tests/pipeline.rs`.

use sluice_sdk::abi::*;
use sluice_sdk::{Batch, Error, Host, Limits, Outcomes, Sink, SinkInfo};
use std::ffi::c_void;
use std::mem::{offset_of, size_of};
use std::sync::Mutex;

static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
static HOST_CALLS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static REASONS: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());

struct Probe {
    host: Host,
}

impl Sink for Probe {
    fn info() -> SinkInfo {
        SinkInfo {
            kind: "probe",
            version: "1",
            description: "records what it is given",
            config_schema: "{}",
            limits: Limits::default(),
            thread_safe: true,
            ordered: false,
        }
    }

    fn create(_config: &str, host: Host) -> Result<Self, Error> {
        SEEN.lock()
            .unwrap()
            .push(format!("destination={}", host.destination_id()));
        SEEN.lock()
            .unwrap()
            .push(format!("restrictions={}", host.restrictions().encode()));
        host.gauge_set("g", 1.0);
        host.counter_add("c", 2);
        Ok(Probe { host })
    }

    fn send(&self, batch: &Batch<'_>, outcomes: &mut Outcomes<'_>) -> Result<(), Error> {
        for (i, r) in batch.iter().enumerate() {
            SEEN.lock().unwrap().push(format!(
                "{}|{}|{}|{}|{}|{}",
                String::from_utf8_lossy(r.data()),
                r.account_id(),
                r.event_id(),
                r.event_type(),
                r.subscription_id(),
                r.timestamp_ms()
            ));
            if i == 1 {
                outcomes.reject(i, "second record refused");
            } else {
                outcomes.ok(i);
            }
        }
        self.host.counter_add("sent", batch.len() as u64);
        Ok(())
    }
}

unsafe extern "C" fn log(_: *mut c_void, _: u32, m: SluiceStr) {
    HOST_CALLS
        .lock()
        .unwrap()
        // SAFETY: the plugin passes a valid string for the call's duration.
        .push(format!("log {}", unsafe { m.to_string_lossy() }));
}
unsafe extern "C" fn counter(_: *mut c_void, n: SluiceStr, v: u64) {
    HOST_CALLS
        .lock()
        .unwrap()
        // SAFETY: the plugin passes a valid string for the call's duration.
        .push(format!("counter {} {v}", unsafe { n.to_string_lossy() }));
}
unsafe extern "C" fn gauge(_: *mut c_void, n: SluiceStr, v: f64) {
    HOST_CALLS
        .lock()
        .unwrap()
        // SAFETY: the plugin passes a valid string for the call's duration.
        .push(format!("gauge {} {v}", unsafe { n.to_string_lossy() }));
}
unsafe extern "C" fn set_error(_: *mut c_void, _: SluiceStr) {}
unsafe extern "C" fn set_reason(_: *mut c_void, i: usize, r: SluiceStr) {
    REASONS
        .lock()
        .unwrap()
        // SAFETY: the plugin passes a valid string for the call's duration.
        .push((i, unsafe { r.to_string_lossy() }));
}

fn host(struct_size: usize) -> SluiceHost {
    SluiceHost {
        struct_size: struct_size as u32,
        abi_major: ABI_MAJOR,
        abi_minor: ABI_MINOR,
        reserved: 0,
        ctx: std::ptr::null_mut(),
        log: Some(log),
        counter_add: Some(counter),
        gauge_set: Some(gauge),
        destination_id: SluiceStr::from_str("ed_compat"),
        restrictions: SluiceStr::from_str("egress=public"),
    }
}

fn call(struct_size: usize) -> SluiceCall {
    SluiceCall {
        struct_size: struct_size as u32,
        reserved: 0,
        ctx: std::ptr::null_mut(),
        set_error: Some(set_error),
        set_reason: Some(set_reason),
    }
}

fn record(i: usize, data: &'static str) -> SluiceRecord {
    SluiceRecord {
        data: data.as_ptr(),
        len: data.len(),
        account_id: SluiceStr::from_str("ac_1"),
        event_id: SluiceStr::from_str(["ev_0", "ev_1", "ev_2"][i]),
        event_type: SluiceStr::from_str("http_request_complete.v0"),
        subscription_id: SluiceStr::from_str("esb_1"),
        timestamp_ms: 1000 + i as i64,
    }
}

/// A record as a future engine might lay it out: the same prefix, more after.
#[repr(C)]
struct FutureRecord {
    base: SluiceRecord,
    future: [u64; 3],
}

#[repr(C)]
struct FutureHost {
    base: SluiceHost,
    future: [u64; 4],
}

#[repr(C)]
struct FutureCall {
    base: SluiceCall,
    future: u64,
}

#[repr(C)]
struct FutureBatch {
    base: SluiceBatch,
    future: u64,
}

fn vtable() -> &'static SluiceSinkVTable {
    let vt = Box::leak(Box::new(
        sluice_sdk::__private::build_vtable::<Probe>().unwrap(),
    ));
    // SAFETY: the vtable lives for the rest of the test process.
    unsafe { &*vt.as_ptr() }
}

/// Both scenarios run in one test: they share the recording statics.
#[test]
fn a_plugin_reads_exactly_what_newer_and_older_engines_give_it() {
    let vt = vtable();
    assert_eq!(vt.struct_size as usize, size_of::<SluiceSinkVTable>());

    // A newer engine: every table is bigger than this SDK knows.
    let fh = FutureHost {
        base: host(size_of::<FutureHost>()),
        future: [u64::MAX; 4],
    };
    let fc = FutureCall {
        base: call(size_of::<FutureCall>()),
        future: u64::MAX,
    };
    let mut inst: *mut c_void = std::ptr::null_mut();
    let config = SluiceStr::from_str("{}");
    // SAFETY: the tables are valid for the calls; `inst` receives the instance.
    let st = unsafe { (vt.create.unwrap())(&fh.base, config, &fc.base, &mut inst) };
    assert_eq!(st, STATUS_OK);
    let recs = [
        FutureRecord {
            base: record(0, "{\"a\":0}"),
            future: [7; 3],
        },
        FutureRecord {
            base: record(1, "{\"a\":1}"),
            future: [7; 3],
        },
        FutureRecord {
            base: record(2, "{\"a\":2}"),
            future: [7; 3],
        },
    ];
    let fb = FutureBatch {
        base: SluiceBatch {
            struct_size: size_of::<FutureBatch>() as u32,
            record_size: size_of::<FutureRecord>() as u32,
            records: &recs[0].base,
            len: 3,
        },
        future: u64::MAX,
    };
    let mut outcomes = [SluiceOutcome {
        code: OUTCOME_UNSET,
        retry_after_ms: 0,
    }; 3];
    // SAFETY: as above.
    let st = unsafe { (vt.send.unwrap())(inst, &fb.base, outcomes.as_mut_ptr(), &fc.base) };
    assert_eq!(st, STATUS_OK);
    assert_eq!(
        outcomes.map(|o| o.code),
        [OUTCOME_OK, OUTCOME_REJECT, OUTCOME_OK]
    );
    assert_eq!(
        *REASONS.lock().unwrap(),
        vec![(1, "second record refused".to_string())]
    );
    let seen = std::mem::take(&mut *SEEN.lock().unwrap());
    assert_eq!(
        seen,
        vec![
            "destination=ed_compat".to_string(),
            "restrictions=egress=public".into(),
            "{\"a\":0}|ac_1|ev_0|http_request_complete.v0|esb_1|1000".into(),
            "{\"a\":1}|ac_1|ev_1|http_request_complete.v0|esb_1|1001".into(),
            "{\"a\":2}|ac_1|ev_2|http_request_complete.v0|esb_1|1002".into(),
        ],
        "records read with the engine's stride, not the SDK's record size"
    );
    let calls = std::mem::take(&mut *HOST_CALLS.lock().unwrap());
    assert!(calls.contains(&"gauge g 1".to_string()), "{calls:?}");
    assert!(calls.contains(&"counter sent 3".to_string()), "{calls:?}");
    // SAFETY: the instance came from create and is destroyed once.
    unsafe { (vt.destroy.unwrap())(inst) };

    // An older engine: its host table ends before `gauge_set`, its call
    // table before `set_reason`. What lies beyond must not be read: the
    // callbacks there would record calls, the id there would show.
    REASONS.lock().unwrap().clear();
    let old_host = host(offset_of!(SluiceHost, gauge_set));
    let old_call = call(offset_of!(SluiceCall, set_reason));
    let mut inst: *mut c_void = std::ptr::null_mut();
    // SAFETY: as above.
    let st = unsafe { (vt.create.unwrap())(&old_host, config, &old_call, &mut inst) };
    assert_eq!(st, STATUS_OK);
    let recs = [record(0, "{}"), record(1, "{}")];
    let batch = SluiceBatch {
        struct_size: size_of::<SluiceBatch>() as u32,
        record_size: size_of::<SluiceRecord>() as u32,
        records: recs.as_ptr(),
        len: 2,
    };
    let mut outcomes = [SluiceOutcome {
        code: OUTCOME_UNSET,
        retry_after_ms: 0,
    }; 2];
    // SAFETY: as above.
    let st = unsafe { (vt.send.unwrap())(inst, &batch, outcomes.as_mut_ptr(), &old_call) };
    assert_eq!(st, STATUS_OK);
    assert_eq!(outcomes.map(|o| o.code), [OUTCOME_OK, OUTCOME_REJECT]);
    assert!(
        REASONS.lock().unwrap().is_empty(),
        "set_reason is beyond the old call table"
    );
    let seen = std::mem::take(&mut *SEEN.lock().unwrap());
    assert_eq!(
        seen[0], "destination=",
        "destination_id is beyond the old host table"
    );
    assert_eq!(
        seen[1], "restrictions=",
        "restrictions are beyond the old host table: none"
    );
    let calls = std::mem::take(&mut *HOST_CALLS.lock().unwrap());
    assert!(
        !calls.iter().any(|c| c.starts_with("gauge")),
        "gauge_set is beyond the old host table: {calls:?}"
    );
    assert!(
        calls.contains(&"counter c 2".to_string()),
        "counter_add is within it: {calls:?}"
    );
    // SAFETY: as above.
    unsafe { (vt.destroy.unwrap())(inst) };
}
