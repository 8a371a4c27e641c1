//! The HTTP/1.1 wire of the strict stand-ins: a blocking server (a thread
//! per keep-alive connection) that hands each request, read whole, to a
//! handler, plus the body codings vendors use (gzip, URL-encoded forms).
//! Deliberately small and literal, so a test sees exactly what a sink sent.

use std::io::Read;

/// An HTTP/1.1 request as read off a connection.
pub struct HttpRequest {
    /// The request line, e.g. `POST / HTTP/1.1`.
    pub line: String,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The body (`content-length` bytes).
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

/// Reads the next request of a keep-alive connection; `None` when it closes.
pub fn read_http_request<R: std::io::BufRead>(r: &mut R) -> Option<HttpRequest> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let mut req = HttpRequest {
        line,
        headers,
        body: Vec::new(),
    };
    let len: usize = req
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    req.body = vec![0u8; len];
    r.read_exact(&mut req.body).ok()?;
    Some(req)
}

/// An answer of a test server: status, extra header lines (each ending
/// with `\r\n`, content type included) and body.
pub type HttpAnswer = (u16, String, String);

/// Writes an HTTP/1.1 response (a 204 without its body).
pub fn write_response(
    s: &mut std::net::TcpStream,
    status: u16,
    headers: &str,
    body: &str,
) -> std::io::Result<()> {
    use std::io::Write;
    let body = if status == 204 { "" } else { body };
    write!(
        s,
        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n{headers}\r\n{body}",
        body.len()
    )?;
    s.flush()
}

/// Serves HTTP/1.1 on `l` (keep-alive, a thread per connection) until
/// `stopped()` says so, each request answered by `handle`.
pub fn serve_http(
    l: std::net::TcpListener,
    stopped: impl Fn() -> bool + Send + Sync + 'static,
    handle: impl Fn(&HttpRequest) -> HttpAnswer + Send + Sync + 'static,
) {
    let stopped = std::sync::Arc::new(stopped);
    let handle = std::sync::Arc::new(handle);
    l.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        while !stopped() {
            match l.accept() {
                Ok((s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let (stopped, handle) = (stopped.clone(), handle.clone());
                    std::thread::spawn(move || {
                        let Ok(mut out) = s.try_clone() else {
                            return;
                        };
                        let mut r = std::io::BufReader::new(s);
                        while !stopped() {
                            let Some(req) = read_http_request(&mut r) else {
                                return;
                            };
                            let (status, headers, body) = handle(&req);
                            if write_response(&mut out, status, &headers, &body).is_err() {
                                return;
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(2)),
            }
        }
    });
}

/// Gunzips a whole body (every member); the error says why it is not gzip.
pub fn gunzip(body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(body.len() * 4);
    flate2::read::MultiGzDecoder::new(body)
        .read_to_end(&mut out)
        .map_err(|e| format!("bad gzip: {e}"))?;
    Ok(out)
}

/// `k=v&k2=v2`, percent- and plus-decoded.
pub fn url_decode_pairs(s: &str) -> Vec<(String, String)> {
    let dec = |x: &str| -> String {
        let b = x.replace('+', " ");
        let bytes = b.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%'
                && i + 2 < bytes.len()
                && let Ok(v) = u8::from_str_radix(&b[i + 1..i + 3], 16)
            {
                out.push(v);
                i += 3;
                continue;
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (dec(k), dec(v))
        })
        .collect()
}
