//! Health checks of a freshly activated release: a command that must exit
//! 0 (`sh -c`, in the release) or a URL that must answer 2xx, polled until
//! it passes or the deadline ends. Without either, a release is healthy
//! as soon as it is activated.

use std::time::Duration;

use tokio::process::Command;
use tokio::time::Instant;

use crate::supervisor::Launch;

/// How often a failing check is tried again.
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Default)]
pub struct HealthCheck {
    pub cmd: Option<String>,
    pub url: Option<String>,
}

impl HealthCheck {
    /// Polls the check until it passes (`Ok`) or `timeout` ends (`Err`
    /// with what the last attempt said).
    pub async fn wait(&self, launch: &Launch, timeout: Duration) -> Result<(), String> {
        if self.cmd.is_none() && self.url.is_none() {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        let http = reqwest::Client::builder()
            .timeout(POLL.max(Duration::from_secs(2)))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let last = match tokio::time::timeout(left.max(POLL), self.once(&http, launch)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => "the check did not finish in time".to_string(),
            };
            if Instant::now() + POLL > deadline {
                return Err(format!("not healthy within {timeout:?}: {last}"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn once(&self, http: &reqwest::Client, launch: &Launch) -> Result<(), String> {
        if let Some(cmd) = &self.cmd {
            let status = Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .current_dir(&launch.cwd)
                .envs(launch.env.iter().map(|(k, v)| (k, v)))
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .map_err(|e| format!("cannot run the health command: {e}"))?;
            if !status.success() {
                return Err(format!(
                    "health command {cmd:?} {}",
                    crate::supervisor::describe(status)
                ));
            }
        }
        if let Some(url) = &self.url {
            let res = http.get(url).send().await.map_err(|e| format!("{url}: {e}"))?;
            if !res.status().is_success() {
                return Err(format!("{url} answered HTTP {}", res.status().as_u16()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(dir: &std::path::Path) -> Launch {
        Launch {
            build: None,
            cwd: dir.to_path_buf(),
            env: vec![("WANT".into(), "ok".into())],
        }
    }

    #[tokio::test]
    async fn command_passes_once_it_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("flag");
        let check = HealthCheck {
            cmd: Some(format!("test \"$(cat {} 2>/dev/null)\" = \"$WANT\"", flag.display())),
            url: None,
        };
        let writer = {
            let flag = flag.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                std::fs::write(flag, "ok").unwrap();
            })
        };
        check.wait(&launch(dir.path()), Duration::from_secs(10)).await.unwrap();
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn failing_command_times_out_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let check = HealthCheck {
            cmd: Some("exit 3".into()),
            url: None,
        };
        let started = Instant::now();
        let err = check
            .wait(&launch(dir.path()), Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(err.ends_with("health command \"exit 3\" exited with code 3"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn url_must_answer_2xx() {
        let dir = tempfile::tempdir().unwrap();
        // A port nobody listens on: bind, read the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let check = HealthCheck {
            cmd: None,
            url: Some(format!("http://127.0.0.1:{port}/healthz")),
        };
        assert!(check
            .wait(&launch(dir.path()), Duration::from_millis(400))
            .await
            .is_err());
        assert!(HealthCheck::default()
            .wait(&launch(dir.path()), Duration::ZERO)
            .await
            .is_ok());
    }
}
