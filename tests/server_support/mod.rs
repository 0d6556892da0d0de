//! Runs the `kiln serve` binary on the built-in demo model for the HTTP tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to start or stop before the test fails (generous: CI
/// machines are slow; this is a hang guard, not a timing assertion).
const STARTUP_LIMIT: Duration = Duration::from_secs(120);

pub const MODEL: &str = "kiln-demo";

pub struct Server {
    child: Option<Child>,
    pub base: String,
}

impl Server {
    /// Starts `kiln serve` with `flags` on a free port and waits until /health is 200.
    pub fn start(flags: &[&str]) -> Server {
        let server = Server::spawn(flags);
        server.wait_healthy();
        server
    }

    /// Starts `kiln serve` and returns once it listens (the model may still be loading).
    pub fn spawn(flags: &[&str]) -> Server {
        let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-cache");
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["serve", "--host", "127.0.0.1", "--port", "0"])
            .args(flags)
            .env("HF_HUB_OFFLINE", "1")
            .env("KILN_CACHE_DIR", cache)
            .env("NO_COLOR", "1")
            .env("KILN_LOG", "warn,kiln::server=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting kiln serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the log for the bound address, then keeps draining it so the server
        // never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr: String = rest
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '\u{1b}')
                        .collect();
                    let _ = tx.send(addr);
                }
                if std::env::var_os("KILN_TEST_SERVER_LOG").is_some() {
                    eprintln!("[server] {line}");
                }
            }
        });
        let addr = rx
            .recv_timeout(STARTUP_LIMIT)
            .expect("the server logs its address");
        Server {
            child: Some(child),
            base: format!("http://{addr}"),
        }
    }

    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + STARTUP_LIMIT;
        loop {
            if let Ok(200) = raw_http::get_status(&format!("{}/health", self.base)) {
                return;
            }
            assert!(Instant::now() < deadline, "server did not become healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success());
    }

    /// Waits for the process to exit (after a signal).
    pub fn wait(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + STARTUP_LIMIT;
        loop {
            if let Some(status) = child.try_wait().expect("polling the server") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("server did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A plain HTTP/1.1 GET without an async runtime, for the health poll.
pub mod raw_http {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    pub fn get_status(url: &str) -> std::io::Result<u16> {
        let rest = url.trim_start_matches("http://");
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut stream = TcpStream::connect(host)?;
        write!(
            stream,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0))
    }
}

/// POSTs `body` as JSON; the status and the body read as JSON (or as text, if it is not).
pub async fn post_json(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = client.post(url).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, value)
}

/// Reads an SSE body into its `data:` payloads (without the final `[DONE]`), checking
/// that the stream ends with `[DONE]`.
pub async fn sse_events(response: reqwest::Response) -> Vec<serde_json::Value> {
    parse_sse(&response.text().await.expect("reading the stream"))
}

/// Splits SSE text into its JSON payloads, checking that it ends with `[DONE]`.
pub fn parse_sse(text: &str) -> Vec<serde_json::Value> {
    let payloads: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .expect("every event is a data line")
        })
        .collect();
    assert_eq!(payloads.last(), Some(&"[DONE]"), "stream ends with [DONE]");
    payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).expect("chunks are JSON"))
        .collect()
}

/// A metric's value from the Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in metrics"))
}
