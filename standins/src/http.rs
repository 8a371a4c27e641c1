//! The strict HTTP stand-in, for the delivery tests: it listens on loopback,
//! speaks the protocol the `http` sink plugin speaks (NDJSON or JSON-array
//! bodies, optional gzip, keep-alive), and misbehaves on demand: any status
//! with `Retry-After`, connection resets, hangs, refusal to accept
//! connections (down), and partial acceptance of a batch. It records every
//! request and every record it accepted.

use std::io::BufReader;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the receiver does with one request.
#[derive(Clone, Debug)]
pub enum Action {
    /// Answer with this status, `Retry-After` header, and body. On a 2xx, a
    /// JSON body `{"retry":[i..],"rejected":[{"index":i,"reason":r}..]}`
    /// makes those records not accepted.
    Respond {
        /// Status code.
        status: u16,
        /// `Retry-After` value.
        retry_after: Option<String>,
        /// Body.
        body: String,
    },
    /// Reset the connection (RST) without answering.
    Reset,
    /// Read the request, then say nothing for this long, then close.
    Hang(Duration),
}

impl Action {
    /// 200 with an empty body.
    pub fn ok() -> Action {
        Action::Respond {
            status: 200,
            retry_after: None,
            body: String::new(),
        }
    }

    /// A status with no body.
    pub fn status(status: u16, retry_after: Option<&str>) -> Action {
        Action::Respond {
            status,
            retry_after: retry_after.map(str::to_string),
            body: String::new(),
        }
    }
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Request {
    /// When it arrived.
    pub at: Instant,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The records in the body (decompressed, parsed).
    pub records: Vec<serde_json::Value>,
    /// What the receiver did.
    pub action: Action,
}

impl Request {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

type Behavior = Box<dyn Fn(&Request) -> Action + Send + Sync>;

struct State {
    behavior: Mutex<Behavior>,
    requests: Mutex<Vec<Request>>,
    accepted: Mutex<Vec<serde_json::Value>>,
    down: AtomicBool,
    stop: AtomicBool,
    protocol_errors: AtomicU64,
}

/// The receiver. Stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    state: Arc<State>,
    listener: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// While down: a socket bound to the port but not listening, so that
    /// connections are refused and no other listener (another test's
    /// `bind(0)`) can be handed the port meanwhile.
    reserved: Mutex<Option<socket2::Socket>>,
}

impl Receiver {
    /// Starts on a free loopback port, answering 200 to everything.
    pub fn start() -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let state = Arc::new(State {
            behavior: Mutex::new(Box::new(|_| Action::ok())),
            requests: Mutex::new(Vec::new()),
            accepted: Mutex::new(Vec::new()),
            down: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            protocol_errors: AtomicU64::new(0),
        });
        let r = Receiver {
            addr,
            state,
            listener: Mutex::new(None),
            reserved: Mutex::new(None),
        };
        r.listen(l);
        r
    }

    fn listen(&self, l: TcpListener) {
        let state = self.state.clone();
        l.set_nonblocking(true).expect("nonblocking");
        let t = std::thread::spawn(move || {
            while !state.stop.load(Ordering::SeqCst) && !state.down.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let st = state.clone();
                        std::thread::spawn(move || serve(s, st));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => break,
                }
            }
            // Dropping the listener closes the port: connections are refused.
        });
        *self.listener.lock().unwrap() = Some(t);
    }

    /// `http://127.0.0.1:PORT/ingest`.
    pub fn url(&self) -> String {
        format!("http://{}/ingest", self.addr)
    }

    /// Sets what it does with each request from now on.
    pub fn set(&self, f: impl Fn(&Request) -> Action + Send + Sync + 'static) {
        *self.state.behavior.lock().unwrap() = Box::new(f);
    }

    /// Stops listening (connections are refused); a request arriving on a
    /// connection opened before is read and dropped without an answer. The
    /// port stays bound, without a listener, until [`Receiver::come_back`].
    pub fn go_down(&self) {
        self.state.down.store(true, Ordering::SeqCst);
        if let Some(t) = self.listener.lock().unwrap().take() {
            let _ = t.join();
        }
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        s.set_reuse_address(true).expect("SO_REUSEADDR");
        s.bind(&self.addr.into())
            .unwrap_or_else(|e| panic!("cannot keep {} bound while down: {e}", self.addr));
        *self.reserved.lock().unwrap() = Some(s);
    }

    /// Listens again on the same port.
    pub fn come_back(&self) {
        drop(self.reserved.lock().unwrap().take());
        let deadline = Instant::now() + Duration::from_secs(10);
        let l = loop {
            match TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.addr),
            }
        };
        self.state.down.store(false, Ordering::SeqCst);
        self.listen(l);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Every record accepted so far, in order (a record sent twice and
    /// accepted twice appears twice).
    pub fn accepted(&self) -> Vec<serde_json::Value> {
        self.state.accepted.lock().unwrap().clone()
    }

    /// Requests that broke the protocol (bad method, content type, body).
    pub fn protocol_errors(&self) -> u64 {
        self.state.protocol_errors.load(Ordering::SeqCst)
    }

    /// Waits until `n` records were accepted; false on timeout.
    pub fn wait_accepted(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.state.accepted.lock().unwrap().len() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.go_down();
    }
}

fn respond(s: &mut TcpStream, status: u16, extra: &str, body: &str) -> std::io::Result<()> {
    crate::wire::write_response(
        s,
        status,
        &format!("content-type: application/json\r\n{extra}"),
        body,
    )
}

/// Serves one connection (keep-alive) until it closes.
fn serve(stream: TcpStream, st: Arc<State>) {
    let mut out = match stream.try_clone() {
        Ok(o) => o,
        Err(_) => return,
    };
    let mut r = BufReader::new(stream);
    loop {
        if st.stop.load(Ordering::SeqCst) || st.down.load(Ordering::SeqCst) {
            return;
        }
        let Some(req) = crate::wire::read_http_request(&mut r) else {
            return;
        };
        let method_ok = req.line.starts_with("POST ");
        let headers = req.headers.clone();
        let get = |k: &str| req.header(k);
        let mut body = req.body.clone();
        if st.down.load(Ordering::SeqCst) {
            let _ = out.shutdown(Shutdown::Both);
            return;
        }
        // The protocol: POST, a JSON content type, a body of records.
        let ct = get("content-type").unwrap_or_default();
        let mut bad = !method_ok
            || !(ct.starts_with("application/x-ndjson") || ct.starts_with("application/json"));
        if get("content-encoding").as_deref() == Some("gzip") {
            match crate::wire::gunzip(&body) {
                Ok(d) => body = d,
                Err(_) => bad = true,
            }
        }
        let records: Option<Vec<serde_json::Value>> = if ct.starts_with("application/json") {
            serde_json::from_slice::<Vec<serde_json::Value>>(&body).ok()
        } else {
            body.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice(l).ok())
                .collect()
        };
        let Some(records) = records.filter(|_| !bad) else {
            st.protocol_errors.fetch_add(1, Ordering::SeqCst);
            if respond(&mut out, 400, "", r#"{"error":"bad request"}"#).is_err() {
                return;
            }
            continue;
        };
        let mut req = Request {
            at: Instant::now(),
            headers: headers.clone(),
            records,
            action: Action::ok(),
        };
        let action = (st.behavior.lock().unwrap())(&req);
        req.action = action.clone();
        match &action {
            Action::Respond {
                status,
                retry_after,
                body,
            } => {
                if (200..300).contains(status) {
                    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
                    let mut not: Vec<usize> = Vec::new();
                    for key in ["retry", "rejected"] {
                        for item in v[key].as_array().into_iter().flatten() {
                            let i = item.as_u64().or_else(|| item["index"].as_u64());
                            not.extend(i.map(|i| i as usize));
                        }
                    }
                    let mut acc = st.accepted.lock().unwrap();
                    for (i, rec) in req.records.iter().enumerate() {
                        if !not.contains(&i) {
                            acc.push(rec.clone());
                        }
                    }
                }
                st.requests.lock().unwrap().push(req);
                let extra = retry_after
                    .as_ref()
                    .map(|v| format!("retry-after: {v}\r\n"))
                    .unwrap_or_default();
                if respond(&mut out, *status, &extra, body).is_err() {
                    return;
                }
            }
            Action::Reset => {
                st.requests.lock().unwrap().push(req);
                let _ = socket2::SockRef::from(&out).set_linger(Some(Duration::ZERO));
                return;
            }
            Action::Hang(d) => {
                st.requests.lock().unwrap().push(req);
                std::thread::sleep(*d);
                return;
            }
        }
    }
}
