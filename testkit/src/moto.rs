//! The moto server: a real AWS-compatible service (Kinesis, Firehose, S3,
//! CloudWatch Logs), started on loopback from `.venv-moto` (which
//! `scripts/test` installs), with a boto3 helper (`tests/python/aws_moto.py`)
//! to create and read back streams, buckets and log groups.

use crate::KillOnDrop;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A moto server on a free loopback port; stopped when dropped.
pub struct Moto {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    _child: KillOnDrop,
}

impl Moto {
    /// Starts moto and waits until it answers.
    pub fn start() -> Moto {
        let bin = crate::installed(".venv-moto/bin/moto_server");
        let port = crate::free_port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let m = Moto {
            url: format!("http://127.0.0.1:{port}"),
            _child: KillOnDrop(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = write!(
                    s,
                    "GET /moto-api/ HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
                );
                let mut head = [0u8; 12];
                if s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") {
                    return m;
                }
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer in 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `aws_moto.py URL ARGS...`; returns its JSON lines.
    pub fn py(&self, args: &[&str]) -> Vec<Value> {
        let out = Command::new(crate::root().join(".venv-moto/bin/python"))
            .arg(crate::root().join("tests/python/aws_moto.py"))
            .arg(&self.url)
            .args(args)
            .output()
            .expect("running aws_moto.py");
        assert!(
            out.status.success(),
            "aws_moto.py {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }
}
