//! The strict AWS stand-in, for what moto cannot do (throttling, partial
//! failures, 5xx): a real HTTP/1.1 server speaking the AWS JSON 1.1
//! protocol of Kinesis, Firehose and CloudWatch Logs (and STS AssumeRole).
//! It enforces what AWS documents (SigV4 authorization header and
//! credential scope, content type, target, batch and record limits,
//! timestamp order and span, no sequence tokens, existing log streams) and
//! records every call. STS AssumeRole issues credentials of a set lifetime
//! (and refuses a role named `denied`); calls signed with expired ones are
//! refused.

use crate::protocol::{AWS_JSON, aws_success};
use crate::wire::{HttpAnswer, HttpRequest, serve_http, url_decode_pairs};
use base64::Engine as _;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// One call received by [`FakeAws`].
#[derive(Clone, Debug)]
pub struct AwsCall {
    /// When it arrived.
    pub at: Instant,
    /// `X-Amz-Target` (e.g. `Kinesis_20131202.PutRecords`), or `STS.AssumeRole`.
    pub target: String,
    /// The JSON body (for STS, the form fields as an object).
    pub body: Value,
    /// The records of a put, decoded: Kinesis and Firehose data, CloudWatch messages.
    pub records: Vec<String>,
    /// CloudWatch timestamps of the records (empty otherwise).
    pub timestamps: Vec<i64>,
    /// The access key the call was signed with.
    pub access_key: String,
}

/// What [`FakeAws`] answers.
#[derive(Clone, Debug)]
pub enum AwsAnswer {
    /// Success for every record.
    Ok,
    /// Success of the call, with a per-record error code (`None`: accepted).
    /// Kinesis and Firehose only.
    Partial(Vec<Option<String>>),
    /// An error of the whole call: HTTP status, `__type`, message.
    Error(u16, String, String),
}

type Behavior = Box<dyn Fn(&AwsCall) -> AwsAnswer + Send + Sync>;

struct Issued {
    token: String,
    expires: SystemTime,
}

struct State {
    behavior: Mutex<Behavior>,
    calls: Mutex<Vec<AwsCall>>,
    accepted: Mutex<Vec<(String, String)>>,
    violations: Mutex<Vec<String>>,
    streams: Mutex<BTreeSet<String>>,
    issued: Mutex<HashMap<String, Issued>>,
    sts_lifetime: Mutex<Duration>,
    serial: AtomicU64,
    stop: AtomicBool,
}

/// The fake AWS endpoint. Stops when dropped.
pub struct FakeAws {
    addr: SocketAddr,
    state: Arc<State>,
}

impl Default for FakeAws {
    fn default() -> Self {
        Self::start()
    }
}

impl FakeAws {
    /// Starts on a free loopback port, answering success.
    pub fn start() -> FakeAws {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let state = Arc::new(State {
            behavior: Mutex::new(Box::new(|_| AwsAnswer::Ok)),
            calls: Mutex::default(),
            accepted: Mutex::default(),
            violations: Mutex::default(),
            streams: Mutex::default(),
            issued: Mutex::default(),
            sts_lifetime: Mutex::new(Duration::from_secs(3600)),
            serial: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let (a, b) = (state.clone(), state.clone());
        serve_http(
            l,
            move || a.stop.load(Ordering::SeqCst),
            move |req| handle(&b, req),
        );
        FakeAws { addr, state }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets the answer to each put from now on.
    pub fn set(&self, f: impl Fn(&AwsCall) -> AwsAnswer + Send + Sync + 'static) {
        *self.state.behavior.lock().unwrap() = Box::new(f);
    }

    /// How long the credentials of an AssumeRole stay valid.
    pub fn set_sts_lifetime(&self, d: Duration) {
        *self.state.sts_lifetime.lock().unwrap() = d;
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<AwsCall> {
        self.state.calls.lock().unwrap().clone()
    }

    /// Every accepted record so far: (target, record).
    pub fn accepted(&self) -> Vec<(String, String)> {
        self.state.accepted.lock().unwrap().clone()
    }

    /// What broke the protocol (each also answered with a 400).
    pub fn violations(&self) -> Vec<String> {
        self.state.violations.lock().unwrap().clone()
    }

    /// Log streams created so far.
    pub fn log_streams(&self) -> BTreeSet<String> {
        self.state.streams.lock().unwrap().clone()
    }
}

impl Drop for FakeAws {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
    }
}

fn respond(status: u16, ct: &str, body: &str) -> HttpAnswer {
    (
        status,
        format!("content-type: {ct}\r\nx-amzn-requestid: fake\r\n"),
        body.to_string(),
    )
}

fn error(status: u16, code: &str, msg: &str) -> HttpAnswer {
    let body = json!({"__type": code, "message": msg}).to_string();
    respond(status, AWS_JSON, &body)
}

fn form(body: &[u8]) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in url_decode_pairs(&String::from_utf8_lossy(body)) {
        m.insert(k, Value::String(v));
    }
    Value::Object(m)
}

/// Checks the SigV4 authorization of a request; returns the access key.
fn check_auth(
    st: &State,
    get: &dyn Fn(&str) -> Option<String>,
    service: &str,
) -> Result<String, String> {
    let auth = get("authorization").ok_or("no Authorization header")?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 Credential=")
        .ok_or_else(|| format!("Authorization is not SigV4: {auth}"))?;
    let (cred, rest) = rest.split_once(", ").ok_or("no SignedHeaders")?;
    let parts: Vec<&str> = cred.split('/').collect();
    if parts.len() != 5 || parts[4] != "aws4_request" {
        return Err(format!("bad credential scope {cred}"));
    }
    if parts[2] != "us-east-1" || parts[3] != service {
        return Err(format!(
            "credential scope {}/{} is not us-east-1/{service}",
            parts[2], parts[3]
        ));
    }
    let sig = rest.split("Signature=").nth(1).ok_or("no Signature")?;
    if sig.len() != 64 || !sig.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("bad signature {sig}"));
    }
    if !rest.contains("SignedHeaders=") || !rest.contains("x-amz-date") {
        return Err("x-amz-date is not signed".into());
    }
    get("x-amz-date").ok_or("no x-amz-date")?;
    let key = parts[0].to_string();
    if key.starts_with("ASIAFAKE") {
        let issued = st.issued.lock().unwrap();
        let i = issued
            .get(&key)
            .ok_or_else(|| format!("{key} was never issued"))?;
        if SystemTime::now() > i.expires {
            return Err(format!("{key} expired"));
        }
        if get("x-amz-security-token").as_deref() != Some(i.token.as_str()) {
            return Err(format!("{key} used without its session token"));
        }
    }
    Ok(key)
}

fn sts_answer(st: &State, form: &Value) -> String {
    let n = st.serial.fetch_add(1, Ordering::SeqCst);
    let key = format!("ASIAFAKE{n:08}");
    let lifetime = *st.sts_lifetime.lock().unwrap();
    let expires = SystemTime::now() + lifetime;
    let exp: chrono::DateTime<chrono::Utc> = expires.into();
    let token = format!("token-{n}");
    st.issued.lock().unwrap().insert(
        key.clone(),
        Issued {
            token: token.clone(),
            expires,
        },
    );
    let session = form["RoleSessionName"].as_str().unwrap_or("");
    format!(
        r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult><Credentials><AccessKeyId>{key}</AccessKeyId><SecretAccessKey>secret-{n}</SecretAccessKey><SessionToken>{token}</SessionToken><Expiration>{}</Expiration></Credentials><AssumedRoleUser><AssumedRoleId>AROAFAKE:{session}</AssumedRoleId><Arn>arn:aws:sts::123456789012:assumed-role/r/{session}</Arn></AssumedRoleUser></AssumeRoleResult><ResponseMetadata><RequestId>fake</RequestId></ResponseMetadata></AssumeRoleResponse>"#,
        exp.format("%Y-%m-%dT%H:%M:%SZ")
    )
}

/// The records of a put, decoded, or what is wrong with it.
fn records_of(target: &str, body: &Value) -> Result<(Vec<String>, Vec<i64>), String> {
    let b64 = |v: &Value| -> Result<Vec<u8>, String> {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().ok_or("Data is not a string")?)
            .map_err(|e| format!("Data is not base64: {e}"))
    };
    let text = |b: Vec<u8>| String::from_utf8(b).map_err(|_| "a record is not UTF-8".to_string());
    match target {
        "Kinesis_20131202.PutRecords" => {
            body["StreamName"].as_str().ok_or("no StreamName")?;
            let recs = body["Records"].as_array().ok_or("no Records")?;
            if recs.is_empty() || recs.len() > 500 {
                return Err(format!("{} records (1 to 500 allowed)", recs.len()));
            }
            let (mut out, mut sizes) = (Vec::new(), Vec::new());
            for r in recs {
                let key = r["PartitionKey"].as_str().ok_or("no PartitionKey")?;
                if key.is_empty() || key.len() > 256 {
                    return Err(format!("partition key of {} bytes", key.len()));
                }
                let data = b64(&r["Data"])?;
                let size = data.len() + key.len();
                if size > 1 << 20 {
                    return Err(format!("a record of {size} bytes (1 MiB allowed)"));
                }
                sizes.push(size);
                out.push(text(data)?);
            }
            let total: usize = sizes.iter().sum();
            if total > 5 << 20 {
                return Err(format!("a batch of {total} bytes (5 MiB allowed)"));
            }
            Ok((out, vec![]))
        }
        "Firehose_20150804.PutRecordBatch" => {
            body["DeliveryStreamName"]
                .as_str()
                .ok_or("no DeliveryStreamName")?;
            let recs = body["Records"].as_array().ok_or("no Records")?;
            if recs.is_empty() || recs.len() > 500 {
                return Err(format!("{} records (1 to 500 allowed)", recs.len()));
            }
            let (mut out, mut sizes) = (Vec::new(), Vec::new());
            for r in recs {
                let data = b64(&r["Data"])?;
                if data.len() > 1000 * 1024 {
                    return Err(format!(
                        "a record of {} bytes (1,000 KiB allowed)",
                        data.len()
                    ));
                }
                sizes.push(data.len());
                out.push(text(data)?);
            }
            let total: usize = sizes.iter().sum();
            if total > 4 << 20 {
                return Err(format!("a batch of {total} bytes (4 MiB allowed)"));
            }
            Ok((out, vec![]))
        }
        "Logs_20140328.PutLogEvents" => {
            if body.get("sequenceToken").is_some() {
                return Err("sequenceToken sent (not needed since 2023)".into());
            }
            let evs = body["logEvents"].as_array().ok_or("no logEvents")?;
            if evs.is_empty() || evs.len() > 10_000 {
                return Err(format!("{} events (1 to 10,000 allowed)", evs.len()));
            }
            let (mut out, mut ts, mut sizes) = (Vec::new(), Vec::new(), Vec::new());
            for e in evs {
                let m = e["message"].as_str().ok_or("no message")?;
                let t = e["timestamp"].as_i64().ok_or("no timestamp")?;
                if let Some(&prev) = ts.last()
                    && t < prev
                {
                    return Err("log events not in chronological order".into());
                }
                sizes.push(m.len() + 26);
                out.push(m.to_string());
                ts.push(t);
            }
            let total: usize = sizes.iter().sum();
            if total > 1_048_576 {
                return Err(format!("a batch of {total} bytes (1,048,576 allowed)"));
            }
            if ts.last().unwrap() - ts[0] > 86_400_000 {
                return Err("a batch spanning more than 24 hours".into());
            }
            Ok((out, ts))
        }
        "Kinesis_20131202.PutRecord" => {
            let key = body["PartitionKey"].as_str().ok_or("no PartitionKey")?;
            if key.is_empty() {
                return Err("empty PartitionKey".into());
            }
            Ok((vec![text(b64(&body["Data"])?)?], vec![]))
        }
        "Firehose_20150804.PutRecord" => Ok((vec![text(b64(&body["Record"]["Data"])?)?], vec![])),
        _ => Ok((vec![], vec![])),
    }
}

fn handle(st: &State, req: &HttpRequest) -> HttpAnswer {
    let (line, body) = (&req.line, &req.body[..]);
    let get = |k: &str| req.header(k);
    let violation = |what: String| -> HttpAnswer {
        st.violations.lock().unwrap().push(what.clone());
        error(400, "ValidationException", &what)
    };
    if !line.starts_with("POST / ") {
        return violation(format!("request line {}", line.trim()));
    }
    let ct = get("content-type").unwrap_or_default();
    // STS (query protocol).
    if ct.starts_with("application/x-www-form-urlencoded") {
        let f = form(body);
        if f["Action"] != "AssumeRole" {
            return violation(format!("STS action {}", f["Action"]));
        }
        let key = match check_auth(st, &get, "sts") {
            Ok(k) => k,
            Err(e) => return violation(format!("STS: {e}")),
        };
        if f["RoleArn"]
            .as_str()
            .is_some_and(|r| r.ends_with("/denied"))
        {
            let xml = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>User is not authorized to perform: sts:AssumeRole</Message></Error><RequestId>fake</RequestId></ErrorResponse>"#;
            return respond(403, "text/xml", xml);
        }
        let xml = sts_answer(st, &f);
        st.calls.lock().unwrap().push(AwsCall {
            at: Instant::now(),
            target: "STS.AssumeRole".into(),
            body: f,
            records: vec![],
            timestamps: vec![],
            access_key: key,
        });
        return respond(200, "text/xml", &xml);
    }
    if ct != AWS_JSON {
        return violation(format!("content-type {ct}"));
    }
    let target = get("x-amz-target").unwrap_or_default();
    let service = match target.split('.').next().unwrap_or("") {
        "Kinesis_20131202" => "kinesis",
        "Firehose_20150804" => "firehose",
        "Logs_20140328" => "logs",
        other => return violation(format!("unknown X-Amz-Target service {other}")),
    };
    let key = match check_auth(st, &get, service) {
        Ok(k) => k,
        Err(e) => return violation(format!("{target}: {e}")),
    };
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return error(400, "SerializationException", "body is not JSON");
    };
    let (records, timestamps) = match records_of(&target, &v) {
        Ok(r) => r,
        Err(e) => return violation(format!("{target}: {e}")),
    };
    let call = AwsCall {
        at: Instant::now(),
        target: target.clone(),
        body: v.clone(),
        records,
        timestamps,
        access_key: key,
    };
    st.calls.lock().unwrap().push(call.clone());
    match target.as_str() {
        "Logs_20140328.CreateLogStream" => {
            let name = v["logStreamName"].as_str().unwrap_or("").to_string();
            if !st.streams.lock().unwrap().insert(name) {
                return error(
                    400,
                    "ResourceAlreadyExistsException",
                    "The specified log stream already exists",
                );
            }
            return respond(200, AWS_JSON, "{}");
        }
        "Logs_20140328.PutLogEvents" => {
            let name = v["logStreamName"].as_str().unwrap_or("");
            if !st.streams.lock().unwrap().contains(name) {
                return error(
                    400,
                    "ResourceNotFoundException",
                    "The specified log stream does not exist.",
                );
            }
        }
        "Kinesis_20131202.PutRecords"
        | "Kinesis_20131202.PutRecord"
        | "Firehose_20150804.PutRecordBatch"
        | "Firehose_20150804.PutRecord" => {}
        other => {
            return error(
                400,
                "UnknownOperationException",
                &format!("{other} is not served here"),
            );
        }
    }
    let answer = (st.behavior.lock().unwrap())(&call);
    let per_record: Vec<Option<String>> = match answer {
        AwsAnswer::Error(status, code, msg) => return error(status, &code, &msg),
        AwsAnswer::Ok => vec![None; call.records.len()],
        AwsAnswer::Partial(p) => {
            assert_eq!(p.len(), call.records.len(), "a partial answer per record");
            p
        }
    };
    let service = target.split('_').next().unwrap_or("").to_ascii_lowercase();
    {
        let mut acc = st.accepted.lock().unwrap();
        for (rec, a) in call.records.iter().zip(&per_record) {
            if a.is_none() {
                acc.push((service.clone(), rec.clone()));
            }
        }
    }
    respond(200, AWS_JSON, &aws_success(&target, &per_record))
}
