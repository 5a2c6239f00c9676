//! A real Prometheus server (Debian's `prometheus`) scraping a small HTTP
//! target whose error counter the test controls, for the metric gates.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::{eventually, KillOnDrop};

/// An HTTP target exposing `test_errors_total` at `/metrics`, set by the
/// test.
pub struct ErrorTarget {
    pub addr: SocketAddr,
    errors: Arc<AtomicU64>,
}

impl ErrorTarget {
    pub fn start(errors: u64) -> ErrorTarget {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicU64::new(errors));
        let served = count.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                // Read the request's head; a scrape has no body.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                let body = format!(
                    "# HELP test_errors_total Errors the test made.\n# TYPE test_errors_total counter\ntest_errors_total {}\n",
                    served.load(Ordering::SeqCst)
                );
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        ErrorTarget { addr, errors: count }
    }

    pub fn set(&self, errors: u64) {
        self.errors.store(errors, Ordering::SeqCst);
    }
}

/// A Prometheus server scraping one target every second.
pub struct Prometheus {
    pub url: String,
    _child: KillOnDrop,
}

/// A free port on the loopback interface (bound, then released for the
/// child to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Prometheus {
    pub fn start(dir: &Path, target: SocketAddr) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: target\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run prometheus (Debian package prometheus; scripts/test installs it)");
        let prometheus = Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            _child: KillOnDrop(child),
        };
        let ready = format!("{}/-/ready", prometheus.url);
        eventually(30, || reqwest::blocking_get_ok(&ready).then_some(()));
        prometheus
    }

    /// Waits until the query's value, as Prometheus answers it now, is
    /// `want` (the target was scraped since it changed).
    pub fn wait_for(&self, query: &str, want: f64) {
        let url = format!("{}/api/v1/query", self.url);
        eventually(30, || {
            let answer = reqwest::blocking_query(&url, query)?;
            let value: f64 = answer["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
            (value == want).then_some(())
        });
    }
}

/// Blocking HTTP for the polls above, on a thread and runtime of their
/// own (a test's runtime must not be blocked inside one of its tasks).
mod reqwest {
    pub fn blocking_get_ok(url: &str) -> bool {
        let url = url.to_string();
        run(async move { ::reqwest::get(url).await.is_ok_and(|r| r.status().is_success()) })
    }

    pub fn blocking_query(url: &str, query: &str) -> Option<serde_json::Value> {
        let (url, query) = (url.to_string(), query.to_string());
        run(async move {
            let r = ::reqwest::Client::new()
                .get(url)
                .query(&[("query", query)])
                .send()
                .await
                .ok()?;
            r.json().await.ok()
        })
    }

    fn run<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f)
        })
        .join()
        .unwrap()
    }
}
