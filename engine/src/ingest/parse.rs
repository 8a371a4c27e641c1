//! Parsing one event: simd-json onto a reused tape, then the envelope checks.

use crate::events::{EventTypeId, parse_rfc3339_ms};
use crate::json::{Json, Kind};
use simd_json::{Buffers, ErrorType, Tape};

/// Largest event accepted, in bytes.
pub const MAX_EVENT_BYTES: usize = 1 << 20;
/// Deepest nesting of objects and arrays accepted (the envelope counts as 1).
pub const MAX_DEPTH: usize = 128;

/// Why an event was rejected. The reason's [`RejectReason::as_str`] is the
/// `reason` label of `sluice_events_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum RejectReason {
    /// Over [`MAX_EVENT_BYTES`].
    TooLarge,
    /// Not valid UTF-8.
    InvalidUtf8,
    /// Not valid JSON.
    BadJson,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Valid JSON but not an object.
    NotAnObject,
    /// A required envelope field is missing.
    MissingField,
    /// An envelope field has the wrong JSON type.
    IllTypedField,
    /// `event_type` is not in the registry.
    UnknownEventType,
    /// `event_timestamp` is not RFC 3339.
    BadTimestamp,
    /// An envelope field appears more than once (which one is meant is ambiguous).
    DuplicateField,
}

impl RejectReason {
    /// Every reason, in a fixed order (for metrics).
    pub const ALL: [RejectReason; 10] = [
        RejectReason::TooLarge,
        RejectReason::InvalidUtf8,
        RejectReason::BadJson,
        RejectReason::TooDeep,
        RejectReason::NotAnObject,
        RejectReason::MissingField,
        RejectReason::IllTypedField,
        RejectReason::UnknownEventType,
        RejectReason::BadTimestamp,
        RejectReason::DuplicateField,
    ];

    /// The label used in metrics and the rejects file.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::TooLarge => "too_large",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::BadJson => "bad_json",
            RejectReason::TooDeep => "too_deep",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::MissingField => "missing_field",
            RejectReason::IllTypedField => "ill_typed_field",
            RejectReason::UnknownEventType => "unknown_event_type",
            RejectReason::BadTimestamp => "bad_timestamp",
            RejectReason::DuplicateField => "duplicate_field",
        }
    }

    /// Index into [`RejectReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A rejection: the reason and a detail for humans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    /// The counted reason.
    pub reason: RejectReason,
    /// What exactly was wrong (field name, parser message, ...).
    pub detail: String,
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.detail)
    }
}

/// The envelope of a parsed event, borrowing the parser's tape.
#[derive(Clone, Copy, Debug)]
pub struct Envelope<'t, 'i> {
    /// `event_id`.
    pub event_id: &'i str,
    /// `event_type`, resolved in the registry.
    pub event_type: EventTypeId,
    /// `event_timestamp` as written.
    pub event_timestamp: &'i str,
    /// `event_timestamp` in milliseconds since the epoch.
    pub timestamp_ms: i64,
    /// `account_id`.
    pub account_id: &'i str,
    /// `principal`, if present (may be JSON null).
    pub principal: Option<Json<'t, 'i>>,
    /// `object`.
    pub object: Json<'t, 'i>,
    /// Whether the event's members are exactly the envelope's, in the order
    /// Sluice writes them (`event_id`, `event_type`, `event_timestamp`,
    /// `account_id`, `principal` if present, `object`).
    pub in_writer_order: bool,
}

/// Parses events one at a time, reusing its buffers: after warm-up it does
/// not allocate per event. One per worker thread.
pub struct EventParser {
    scratch: Vec<u8>,
    buffers: Buffers,
    tape: Tape<'static>,
}

impl Default for EventParser {
    fn default() -> Self {
        Self::new()
    }
}

impl EventParser {
    /// A parser with buffers sized for typical events.
    pub fn new() -> EventParser {
        EventParser {
            scratch: Vec::with_capacity(4096),
            buffers: Buffers::with_max_depth(4096, MAX_DEPTH),
            tape: Tape(Vec::with_capacity(256)),
        }
    }

    /// Parses `raw` and calls `f` with the envelope or the rejection. The
    /// envelope borrows the parser, hence the callback.
    pub fn parse<R>(
        &mut self,
        raw: &[u8],
        f: impl FnOnce(Result<Envelope<'_, '_>, Reject>) -> R,
    ) -> R {
        if raw.len() > MAX_EVENT_BYTES {
            return f(Err(Reject {
                reason: RejectReason::TooLarge,
                detail: format!(
                    "event is {} bytes, the limit is {MAX_EVENT_BYTES}",
                    raw.len()
                ),
            }));
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(raw);
        self.scratch
            .extend_from_slice(&[0u8; simd_json::INPUT_PADDING]);
        let mut tape = std::mem::replace(&mut self.tape, Tape(Vec::new())).reset();
        let parsed =
            simd_json::fill_tape_padded(&mut self.scratch, raw.len(), &mut self.buffers, &mut tape);
        let out = match parsed {
            Ok(()) => f(envelope(&tape)),
            Err(e) => f(Err(json_reject(raw, e.error()))),
        };
        self.tape = tape.reset();
        out
    }
}

fn json_reject(raw: &[u8], e: &ErrorType) -> Reject {
    match e {
        ErrorType::InvalidUtf8 => Reject {
            reason: RejectReason::InvalidUtf8,
            detail: "event is not valid UTF-8".into(),
        },
        ErrorType::DepthLimitExceeded => Reject {
            reason: RejectReason::TooDeep,
            detail: format!("objects and arrays nest deeper than {MAX_DEPTH}"),
        },
        other => {
            // simd-json checks UTF-8 only in string content on some paths; say
            // so precisely when that is the cause.
            if std::str::from_utf8(raw).is_err() {
                Reject {
                    reason: RejectReason::InvalidUtf8,
                    detail: "event is not valid UTF-8".into(),
                }
            } else {
                Reject {
                    reason: RejectReason::BadJson,
                    detail: format!("not valid JSON: {other:?}"),
                }
            }
        }
    }
}

fn missing(field: &str) -> Reject {
    Reject {
        reason: RejectReason::MissingField,
        detail: format!("missing field `{field}`"),
    }
}

fn ill_typed(field: &str, want: &str, got: Kind) -> Reject {
    Reject {
        reason: RejectReason::IllTypedField,
        detail: format!("field `{field}` must be {want}, found {got:?}").to_lowercase(),
    }
}

fn envelope<'t, 'i>(tape: &'t Tape<'i>) -> Result<Envelope<'t, 'i>, Reject> {
    let Some(root) = Json::root(&tape.0) else {
        return Err(Reject {
            reason: RejectReason::BadJson,
            detail: "empty document".into(),
        });
    };
    if !root.is_object() {
        return Err(Reject {
            reason: RejectReason::NotAnObject,
            detail: format!("an event must be a JSON object, found {:?}", root.kind())
                .to_lowercase(),
        });
    }
    let mut event_id = None;
    let mut event_type = None;
    let mut event_timestamp = None;
    let mut account_id = None;
    let mut principal = None;
    let mut object = None;
    // Envelope members seen in the writer's order so far, and whether any
    // other member or order broke it.
    let mut order = 0usize;
    let mut in_writer_order = true;
    for (k, v) in root.entries() {
        let slot = match k {
            "event_id" => &mut event_id,
            "event_type" => &mut event_type,
            "event_timestamp" => &mut event_timestamp,
            "account_id" => &mut account_id,
            "principal" => &mut principal,
            "object" => &mut object,
            _ => {
                in_writer_order = false;
                continue;
            }
        };
        let rank = match k {
            "event_id" => 0,
            "event_type" => 1,
            "event_timestamp" => 2,
            "account_id" => 3,
            "principal" => 4,
            _ => 5,
        };
        if rank < order || (rank > order && !(order == 4 && rank == 5)) {
            in_writer_order = false;
        }
        order = rank + 1;
        if slot.is_some() {
            // JSON readers disagree on which of two equal keys wins; for the
            // envelope (whose account is it?) the only safe answer is none.
            return Err(Reject {
                reason: RejectReason::DuplicateField,
                detail: format!("envelope field `{k}` appears more than once"),
            });
        }
        *slot = Some(v);
    }
    let string = |v: Option<Json<'t, 'i>>, name: &str| -> Result<&'i str, Reject> {
        let v = v.ok_or_else(|| missing(name))?;
        v.as_str()
            .ok_or_else(|| ill_typed(name, "a string", v.kind()))
    };
    let event_id = string(event_id, "event_id")?;
    let type_name = string(event_type, "event_type")?;
    let event_timestamp = string(event_timestamp, "event_timestamp")?;
    let account_id = string(account_id, "account_id")?;
    let object = object.ok_or_else(|| missing("object"))?;
    if !object.is_object() {
        return Err(ill_typed("object", "an object", object.kind()));
    }
    if let Some(p) = principal
        && !matches!(p.kind(), Kind::Object | Kind::Null)
    {
        return Err(ill_typed("principal", "an object or null", p.kind()));
    }
    let event_type = EventTypeId::from_name(type_name).ok_or_else(|| Reject {
        reason: RejectReason::UnknownEventType,
        detail: match crate::events::closest(type_name, crate::events::type_names()) {
            Some(s) => format!("unknown event_type `{type_name}` (did you mean `{s}`?)"),
            None => format!("unknown event_type `{type_name}`"),
        },
    })?;
    let timestamp_ms = parse_rfc3339_ms(event_timestamp).ok_or_else(|| Reject {
        reason: RejectReason::BadTimestamp,
        detail: format!("event_timestamp `{event_timestamp}` is not RFC 3339"),
    })?;
    Ok(Envelope {
        event_id,
        event_type,
        event_timestamp,
        timestamp_ms,
        account_id,
        principal,
        object,
        in_writer_order: in_writer_order && order == 6,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(raw: &[u8]) -> Option<RejectReason> {
        EventParser::new().parse(raw, |r| r.err().map(|e| e.reason))
    }

    const GOOD: &str = r#"{"event_id":"ev_1","event_type":"http_request_complete.v0","event_timestamp":"2022-02-23T23:44:16Z","account_id":"ac_1","object":{"conn":{"server_port":443}}}"#;

    #[test]
    fn accepts_a_good_event_and_reads_the_envelope() {
        let mut p = EventParser::new();
        p.parse(GOOD.as_bytes(), |r| {
            let e = r.unwrap();
            assert_eq!(e.event_id, "ev_1");
            assert_eq!(e.account_id, "ac_1");
            assert_eq!(e.event_type.name(), "http_request_complete.v0");
            assert_eq!(e.timestamp_ms, 1_645_659_856_000);
            assert!(e.principal.is_none());
            assert_eq!(
                e.object.path(&["conn", "server_port"]).unwrap().kind(),
                Kind::Number
            );
        });
        // The parser is reusable after a rejection.
        assert_eq!(reason(b"{"), Some(RejectReason::BadJson));
        p.parse(GOOD.as_bytes(), |r| assert!(r.is_ok()));
    }

    #[test]
    fn rejects_each_kind_of_bad_input_with_its_reason() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_EVENT_BYTES));
        let cases: Vec<(Vec<u8>, RejectReason)> = vec![
            (b"not json".to_vec(), RejectReason::BadJson),
            (b"{\"a\":1".to_vec(), RejectReason::BadJson),
            (
                b"{\"event_id\":\"\xff\xfe\"}".to_vec(),
                RejectReason::InvalidUtf8,
            ),
            (deep.into_bytes(), RejectReason::TooDeep),
            (big.into_bytes(), RejectReason::TooLarge),
            (b"[1,2]".to_vec(), RejectReason::NotAnObject),
            (
                GOOD.replace("\"event_id\":\"ev_1\",", "").into_bytes(),
                RejectReason::MissingField,
            ),
            (
                GOOD.replace("\"ac_1\"", "17").into_bytes(),
                RejectReason::IllTypedField,
            ),
            (
                GOOD.replace("{\"conn\":{\"server_port\":443}}", "\"x\"")
                    .into_bytes(),
                RejectReason::IllTypedField,
            ),
            (
                GOOD.replace("http_request_complete.v0", "http_request_complete.v9")
                    .into_bytes(),
                RejectReason::UnknownEventType,
            ),
            (
                GOOD.replace("2022-02-23T23:44:16Z", "yesterday")
                    .into_bytes(),
                RejectReason::BadTimestamp,
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(
                reason(&raw),
                Some(want),
                "{}",
                String::from_utf8_lossy(&raw[..raw.len().min(80)])
            );
        }
    }

    #[test]
    fn nesting_at_the_limit_is_accepted() {
        // Envelope (1) + object (1) + 126 arrays = 128 levels.
        let inner = format!("{}{}", "[".repeat(126), "]".repeat(126));
        let ev = GOOD.replace(
            "{\"conn\":{\"server_port\":443}}",
            &format!("{{\"a\":{inner}}}"),
        );
        assert_eq!(reason(ev.as_bytes()), None);
        let inner = format!("{}{}", "[".repeat(127), "]".repeat(127));
        let ev = GOOD.replace(
            "{\"conn\":{\"server_port\":443}}",
            &format!("{{\"a\":{inner}}}"),
        );
        assert_eq!(reason(ev.as_bytes()), Some(RejectReason::TooDeep));
    }
}
