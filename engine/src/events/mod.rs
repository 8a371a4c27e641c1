//! The event model: the envelope, the registry of event types and their
//! fields, and RFC 3339 timestamps.
//!
//! An event is a JSON object
//! `{event_id, event_type, event_timestamp, account_id, principal, object}`.
//! `object` is the audited resource (audit types) or the traffic record
//! (traffic types); `principal` is who made an audited change (null or absent
//! for traffic).

pub mod registry;

use crate::short_eq::short_eq;
pub use registry::{EVENT_TYPES, EventClass, EventTypeDef, FieldDef, FieldType, PathLookup};
use rustc_hash::FxHashMap;
use std::sync::OnceLock;

/// Index of an event type in [`EVENT_TYPES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventTypeId(pub u16);

impl EventTypeId {
    /// Looks a type up by its full name (`http_request_complete.v0`): one
    /// slot of [`TypeTable`], picked from the name's length and first and
    /// last eight bytes, then one comparison. (A stream of mixed types
    /// missed the last-type cache this replaced on one event in five,
    /// and paid a hash of the whole name then: `from_name` was 1.8% of
    /// many-tenants' samples.)
    #[inline]
    pub fn from_name(name: &str) -> Option<EventTypeId> {
        TypeTable::get().find(name)
    }

    /// The type's definition.
    pub fn def(self) -> &'static EventTypeDef {
        &EVENT_TYPES[self.0 as usize]
    }

    /// The type's full name.
    pub fn name(self) -> &'static str {
        self.def().name
    }

    /// Every event type id.
    pub fn all() -> impl Iterator<Item = EventTypeId> {
        (0..EVENT_TYPES.len() as u16).map(EventTypeId)
    }
}

/// The types by name: a table of slots that the names of most types have
/// to themselves (a multiplier is tried until they all do, or a few
/// share), and a hash map for the rest.
struct TypeTable {
    /// The multiplier of [`TypeTable::slot`].
    mul: u64,
    /// The type filed in each slot, or [`TypeTable::EMPTY`], or
    /// [`TypeTable::SHARED`] (more than one name falls in it: those
    /// names are looked up in `by_name`).
    slots: Box<[u16]>,
    by_name: FxHashMap<&'static str, u16>,
}

impl TypeTable {
    const EMPTY: u16 = u16::MAX;
    const SHARED: u16 = u16::MAX - 1;
    /// Slots: a power of two, some 16 per type.
    const BITS: u32 = 10;

    fn get() -> &'static TypeTable {
        static TABLE: OnceLock<TypeTable> = OnceLock::new();
        TABLE.get_or_init(TypeTable::build)
    }

    fn build() -> TypeTable {
        // Odd multipliers from the golden ratio's: the first without a
        // clash, else the one with the fewest.
        let mut best = TypeTable::with_multiplier(0x9E37_79B9_7F4A_7C15);
        let mut mul = best.0.mul;
        for _ in 0..256 {
            if best.1 == 0 {
                break;
            }
            mul = mul.wrapping_add(0x2545_F491_4F6C_DD1E) | 1;
            let next = TypeTable::with_multiplier(mul);
            if next.1 < best.1 {
                best = next;
            }
        }
        best.0
    }

    /// The table with multiplier `mul`, and how many names share a slot.
    fn with_multiplier(mul: u64) -> (TypeTable, usize) {
        let mut t = TypeTable {
            mul,
            slots: vec![Self::EMPTY; 1 << Self::BITS].into(),
            by_name: EVENT_TYPES
                .iter()
                .enumerate()
                .map(|(i, ty)| (ty.name, i as u16))
                .collect(),
        };
        let mut clashes = 0;
        for (i, ty) in EVENT_TYPES.iter().enumerate() {
            let Some(s) = t.slot(ty.name.as_bytes()) else {
                continue;
            };
            t.slots[s] = if t.slots[s] == Self::EMPTY {
                i as u16
            } else {
                clashes += 1;
                Self::SHARED
            };
        }
        (t, clashes)
    }

    /// The type named `name`. (Inlined, with the hash map out of line:
    /// called, it saved and restored six registers for the hash's sake.)
    #[inline(always)]
    fn find(&self, name: &str) -> Option<EventTypeId> {
        let b = name.as_bytes();
        match self.slot(b).map(|s| self.slots[s]) {
            Some(Self::EMPTY) => None,
            Some(Self::SHARED) | None => self.find_by_hash(name),
            Some(id) => {
                short_eq(EVENT_TYPES[usize::from(id)].name.as_bytes(), b).then_some(EventTypeId(id))
            }
        }
    }

    /// The type named `name` from the hash map (names that share a slot).
    #[cold]
    #[inline(never)]
    fn find_by_hash(&self, name: &str) -> Option<EventTypeId> {
        self.by_name.get(name).map(|&i| EventTypeId(i))
    }

    /// The slot of a name of at least eight bytes (`None`: shorter, no
    /// type's name is).
    #[inline(always)]
    fn slot(&self, b: &[u8]) -> Option<usize> {
        let first = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
        let last = u64::from_le_bytes(b[b.len() - 8..].try_into().ok()?);
        let x = (first ^ last.rotate_left(29) ^ b.len() as u64).wrapping_mul(self.mul);
        Some((x >> (64 - Self::BITS)) as usize)
    }
}

/// The names of every event type, for error messages.
pub fn type_names() -> impl Iterator<Item = &'static str> {
    EVENT_TYPES.iter().map(|t| t.name)
}

/// The known name closest to `name` by edit distance, if one is close enough
/// to be a likely typo.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    nearest(name, candidates, usize::MAX)
        .filter(|(d, c)| *d <= (c.len() / 3).max(2))
        .map(|(_, c)| c)
}

/// The candidate nearest to `name` by edit distance, with that distance,
/// among those at most `max` away (a candidate whose length alone puts it
/// farther is skipped without computing the distance).
fn nearest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    max: usize,
) -> Option<(usize, &'a str)> {
    let mut best: Option<(usize, &str)> = None;
    let chars = name.chars().count();
    for c in candidates {
        if c.chars().count().abs_diff(chars) > max {
            continue;
        }
        let d = edit_distance(name, c);
        if d <= max && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best
}

/// A path as messages show it: whole up to 80 characters, cut after that
/// (paths come from tenants and can be as long as a filter).
pub fn shown_path(path: &str) -> std::borrow::Cow<'_, str> {
    match path.char_indices().nth(80) {
        None => path.into(),
        Some((i, _)) => format!("{}…", &path[..i]).into(),
    }
}

/// One warning for the paths of `def` that the registry does not know but
/// that were accepted, each already named as it should be shown (e.g.
/// "`conn.x` at 1:5"): the first five, then how many more. `None` for none.
/// One sentence however many paths, so a tenant cannot flood a log with them.
pub fn unknown_paths_warning(def: &EventTypeDef, names: &[String]) -> Option<String> {
    const NAMED: usize = 5;
    let (first, rest) = names.split_at(names.len().min(NAMED));
    let mut who = first.join(", ");
    if !rest.is_empty() {
        who.push_str(&format!(" and {} more", rest.len()));
    }
    (!first.is_empty()).then(|| {
        format!(
            "{who} {} not in Sluice's registry of {}: read from what each event carries \
             (payloads may gain fields without a new version); if it is a typo, \
             `sluice check --list-types` lists the known fields",
            if names.len() == 1 { "is" } else { "are" },
            def.name
        )
    })
}

/// The candidate nearest to `name` that is at most `max` edits away, if any.
pub fn nearest_within<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    max: usize,
) -> Option<&'a str> {
    nearest(name, candidates, max).map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Parses an RFC 3339 timestamp (`2022-02-23T23:44:16.732791273Z`,
/// `2022-02-23T23:44:16+01:00`) into milliseconds since the Unix epoch.
/// Returns `None` for anything else. Allocation-free.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &c in b.get(r)? {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Some(v)
    };
    let year = num(0..4)?;
    let month = num(5..7)?;
    let day = num(8..10)?;
    let hour = num(11..13)?;
    let min = num(14..16)?;
    let sec = num(17..19)?;
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || min > 59
        || sec > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..3 {
            millis *= 10;
        }
    }
    let offset_min = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        c @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 60 + om;
            if *c == b'+' { o } else { -o }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_min * 60;
    Some(secs * 1000 + millis)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats milliseconds since the epoch as RFC 3339 UTC with milliseconds
/// (`2024-01-02T03:04:05.678Z`).
pub fn format_rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// The date of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_lookup_round_trips() {
        for id in EventTypeId::all() {
            assert_eq!(EventTypeId::from_name(id.name()), Some(id));
        }
        assert_eq!(EventTypeId::from_name("http_request_complete.v1"), None);
    }

    #[test]
    fn every_type_has_a_slot_of_its_own() {
        let t = TypeTable::get();
        assert!(!t.slots.contains(&TypeTable::SHARED), "names share slots");
        for id in EventTypeId::all() {
            let s = t.slot(id.name().as_bytes()).expect("eight bytes or more");
            assert_eq!(t.slots[s], id.0, "{}", id.name());
        }
    }

    #[test]
    fn names_that_share_a_slot_are_found_by_hash() {
        // Multiplier 0: every name in slot 0.
        let (t, clashes) = TypeTable::with_multiplier(0);
        assert_eq!(clashes, EVENT_TYPES.len() - 1);
        for id in EventTypeId::all() {
            assert_eq!(t.find(id.name()), Some(id));
        }
        assert_eq!(t.find("http_reqUEST_COMplete.v0"), None);
    }

    #[test]
    fn names_that_are_not_types_are_not_found() {
        for name in [
            "",
            "http",
            "http_request_complete",
            // The same length, first and last eight bytes as a type's.
            "http_reqUEST_COMplete.v0",
            "http_request_complete.v0 ",
            "tcp_connection_closed.v0tcp_connection_closed.v0",
        ] {
            assert_eq!(EventTypeId::from_name(name), None, "{name}");
        }
    }

    #[test]
    fn closest_suggests_typos_only() {
        assert_eq!(
            closest("http_request_completed.v0", type_names()),
            Some("http_request_complete.v0")
        );
        assert_eq!(closest("zzzz", type_names()), None);
    }

    #[test]
    fn rfc3339_parses_the_forms_of_the_spec() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2022-02-23T23:44:16Z"),
            Some(1_645_659_856_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2022-02-23T23:44:16.732791273Z"),
            Some(1_645_659_856_732)
        );
        assert_eq!(
            parse_rfc3339_ms("2022-02-23T23:44:16.7Z"),
            Some(1_645_659_856_700)
        );
        assert_eq!(
            parse_rfc3339_ms("2022-02-24T00:44:16+01:00"),
            Some(1_645_659_856_000)
        );
        for bad in [
            "",
            "2022-02-23",
            "2022-02-30T00:00:00Z",
            "2022-13-01T00:00:00Z",
            "2022-02-23T24:00:00Z",
            "2022-02-23T23:44:16",
            "2022-02-23T23:44:16.Z",
            "2022-02-23T23:44:16Zjunk",
            "2022-02-23T23:44:16+0100",
            "２０２２-02-23T23:44:16Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-800_000, -1, 0, 1, 19_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(
            format_rfc3339_ms(1_645_659_856_732),
            "2022-02-23T23:44:16.732Z"
        );
    }
}
