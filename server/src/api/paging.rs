//! Query strings and pages of lists: `before_id` (and the JavaScript
//! client's `beforeId`), `limit`, `filter`, `next_page_uri`.

use super::*;

/// Paging parameters of a list request.
pub(super) struct ListQuery {
    pub(super) before_id: Option<String>,
    pub(super) limit: usize,
    pub(super) filter: Option<(String, ListFilter)>,
}

pub(super) fn decode_component(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                let v = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
                match v {
                    Some(v) => out.push(v),
                    None => {
                        return Err(ApiError::new(
                            Code::MalformedQuery,
                            "The query string is malformed.",
                        ));
                    }
                }
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::new(Code::MalformedQuery, "The query string is not valid UTF-8."))
}

pub(super) fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(super) fn parse_query(
    raw: Option<&str>,
    allowed: &[&str],
) -> Result<Vec<(String, String)>, ApiError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for part in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let (k, v) = (decode_component(k)?, decode_component(v)?);
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::new(
                Code::UnknownQueryParameter,
                format!(
                    "The query parameter '{k}' is unknown; supported parameters are: {}.",
                    allowed.join(", ")
                ),
            ));
        }
        if out.iter().any(|(x, _)| *x == k) {
            return Err(ApiError::new(
                Code::RepeatedQueryParameter,
                format!("The query parameter '{k}' may only be given once."),
            ));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// Query keys the official clients send under another spelling than the
/// API's, with the API's spelling. The JavaScript client (`@ngrok/ngrok-api`)
/// asks for the second page onward with `beforeId`; the Python and Go
/// clients send `before_id`.
pub(super) const QUERY_ALIASES: &[(&str, &str)] = &[("beforeId", "before_id")];

/// Maps every alias in `params` to its canonical key. Two spellings of one
/// key with different values are ERR_NGROK_232; the same value twice is one.
pub(super) fn canonical_keys(
    params: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, ApiError> {
    // (canonical key, value, key as the request spelled it)
    let mut out: Vec<(String, String, String)> = Vec::with_capacity(params.len());
    for (spelled, v) in params {
        let key = QUERY_ALIASES
            .iter()
            .find(|(alias, _)| *alias == spelled)
            .map_or(spelled.as_str(), |(_, canonical)| canonical)
            .to_string();
        match out.iter().find(|(k, _, _)| *k == key) {
            Some((_, earlier, _)) if *earlier == v => {}
            Some((_, earlier, first)) => {
                return Err(ApiError::new(
                    Code::RepeatedQueryParameter,
                    format!(
                        "The query parameter '{key}' is given twice, as '{first}' and \
                         '{spelled}', with different values ('{earlier}' and '{v}'); give it once."
                    ),
                ));
            }
            None => out.push((key, v, spelled)),
        }
    }
    Ok(out.into_iter().map(|(k, v, _)| (k, v)).collect())
}

pub(super) fn list_query(raw: Option<&str>, prefix: &str) -> Result<ListQuery, ApiError> {
    let params = canonical_keys(parse_query(
        raw,
        &["before_id", "beforeId", "limit", "filter"],
    )?)?;
    let mut q = ListQuery {
        before_id: None,
        limit: 100,
        filter: None,
    };
    for (k, v) in params {
        match k.as_str() {
            "before_id" if !v.is_empty() => {
                if !check_id(&v, prefix, "before_id")? {
                    return Err(ApiError::new(
                        Code::InvalidFieldValue,
                        format!("Invalid value for parameter 'before_id': '{v}'."),
                    ));
                }
                q.before_id = Some(v);
            }
            "limit" if !v.is_empty() => {
                q.limit = match v.trim().parse::<i64>() {
                    Ok(n) if (1..=100).contains(&n) => n as usize,
                    _ => {
                        return Err(ApiError::new(
                            Code::LimitOutOfRange,
                            format!("limit must be between 1 and 100, got '{v}'."),
                        ));
                    }
                };
            }
            "filter" if !v.trim().is_empty() => {
                let f = ListFilter::compile(&v)?;
                q.filter = Some((v, f));
            }
            _ => {}
        }
    }
    Ok(q)
}

/// One page of a newest-first list: the items, and the uri of the next page.
pub(super) fn page<'a, T>(
    items: &'a std::collections::BTreeMap<String, T>,
    q: &ListQuery,
    fields: impl Fn(&T) -> (&str, &str, &str, &str),
    list_uri: &str,
) -> (Vec<&'a T>, Value) {
    let range = match &q.before_id {
        Some(b) => items.range::<String, _>(..b.clone()),
        None => items.range::<String, _>(..),
    };
    let mut out = Vec::new();
    let mut more = false;
    for (_, it) in range.rev() {
        let keep = match &q.filter {
            None => true,
            Some((_, f)) => {
                let (id, created, desc, meta) = fields(it);
                f.matches(id, created, desc, meta)
            }
        };
        if !keep {
            continue;
        }
        if out.len() == q.limit {
            more = true;
            break;
        }
        out.push(it);
    }
    let next = if more {
        let last = out
            .last()
            .map(|t| fields(t).0.to_string())
            .unwrap_or_default();
        let mut u = format!("{list_uri}?limit={}&before_id={last}", q.limit);
        if let Some((src, _)) = &q.filter {
            u.push_str("&filter=");
            u.push_str(&encode_component(src));
        }
        Value::String(u)
    } else {
        Value::Null
    };
    (out, next)
}
