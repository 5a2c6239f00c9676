//! Running the real `git` on a working clone of one repository, with the
//! server's identity and credentials.
//!
//! Credentials reach `git` only through its environment, never its
//! arguments (which other users may read in `/proc`), the repository's
//! address, the clone's configuration, logs or error messages: an HTTPS
//! token becomes an `Authorization` header through `GIT_CONFIG_COUNT` /
//! `GIT_CONFIG_KEY_n` / `GIT_CONFIG_VALUE_n` (`http.extraHeader`), an SSH
//! key a `GIT_SSH_COMMAND`. The user's and the system's git configuration
//! are ignored, and git never prompts. Every command has a deadline and is
//! killed when it passes.

use std::path::{Path, PathBuf};

use base64::Engine;
use tokio::time::Instant;

/// The server's git identity and credentials (`[git]` in `tug.toml`).
#[derive(Clone, PartialEq, Eq)]
pub struct GitSettings {
    /// Who commits: `Name <email>`'s two parts.
    pub author_name: String,
    pub author_email: String,
    /// Credentials by repository address prefix; the longest matching
    /// prefix wins.
    pub credentials: Vec<GitCredential>,
    /// Where the working clones live (under the data directory).
    pub work_dir: PathBuf,
}

impl Default for GitSettings {
    fn default() -> Self {
        GitSettings {
            author_name: "Tugboat".into(),
            author_email: "tugboat@localhost".into(),
            credentials: Vec::new(),
            work_dir: PathBuf::from("tug-data/git"),
        }
    }
}

/// The paths of secret files, never their contents: `Debug` is safe.
impl std::fmt::Debug for GitSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitSettings")
            .field("author_name", &self.author_name)
            .field("author_email", &self.author_email)
            .field("credentials", &self.credentials)
            .field("work_dir", &self.work_dir)
            .finish()
    }
}

/// The credential for repositories whose address starts with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitCredential {
    pub prefix: String,
    pub secret: GitSecret,
}

/// Where a credential is read from, at each use (so a rotated token is
/// picked up without a restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitSecret {
    /// An HTTPS token, sent as HTTP Basic authentication with `username`
    /// (GitHub takes `x-access-token`, GitLab `oauth2`).
    Token { file: PathBuf, username: String },
    /// An SSH private key.
    SshKey { file: PathBuf },
}

/// Why a git command failed: its message, with any secret removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GitError(pub String);

impl GitError {
    /// A push the remote refused because the branch moved (someone else
    /// pushed first): fetch and apply again.
    pub fn is_stale(&self) -> bool {
        self.0.contains("fetch first") || self.0.contains("non-fast-forward") || self.0.contains("stale info")
    }
}

/// A working clone of one repository, and how to run git in it.
pub struct Git {
    dir: PathBuf,
    env: Vec<(String, String)>,
    /// Secrets to scrub from messages.
    secrets: Vec<String>,
}

/// The longest message of a failed git command kept (its end, where git
/// says what went wrong).
const MAX_MESSAGE: usize = 2000;

impl Git {
    /// The clone of `url` under the settings' work directory, created (with
    /// `origin` set to `url`) if missing.
    pub async fn open(settings: &GitSettings, url: &str, deadline: Instant) -> Result<Git, GitError> {
        let dir = settings
            .work_dir
            .join(&tug_core::Digest::of(url.as_bytes()).hex()[..16]);
        let (env, secrets) = environment(settings, url)?;
        let git = Git { dir, env, secrets };
        if !git.dir.join(".git").exists() {
            std::fs::create_dir_all(&git.dir)
                .map_err(|e| GitError(format!("cannot create {}: {e}", git.dir.display())))?;
            git.run(&["init", "-q"], deadline).await?;
            git.run(&["remote", "add", "origin", url], deadline).await?;
        }
        // Only this server writes the clone (it holds the repository's
        // lease), so a lock file is what a git command killed at its
        // deadline (or a crash) left behind.
        for lock in ["index.lock", "HEAD.lock", "shallow.lock", "config.lock"] {
            let _ = std::fs::remove_file(git.dir.join(".git").join(lock));
        }
        Ok(git)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `git args…` in the clone; its standard output.
    pub async fn run(&self, args: &[&str], deadline: Instant) -> Result<String, GitError> {
        let mut cmd = tokio::process::Command::new("git");
        cmd.args(args)
            .current_dir(&self.dir)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let what = args.first().copied().unwrap_or("git");
        let child = cmd.spawn().map_err(|e| GitError(format!("cannot run git: {e}")))?;
        let out = match tokio::time::timeout_at(deadline, child.wait_with_output()).await {
            Err(_) => return Err(GitError(format!("git {what} did not finish in time"))),
            Ok(Err(e)) => return Err(GitError(format!("git {what}: {e}"))),
            Ok(Ok(out)) => out,
        };
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let mut message = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if message.is_empty() {
            message = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        for s in &self.secrets {
            message = message.replace(s.as_str(), "***");
        }
        if message.len() > MAX_MESSAGE {
            let mut cut = message.len() - MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut += 1;
            }
            message = format!("…{}", &message[cut..]);
        }
        Err(GitError(format!("git {what} failed: {message}")))
    }
}

/// The environment every git command runs with: a fixed identity, no
/// prompts, no user or system configuration, and the credential for `url`.
/// Variables to set, and the secrets among their values.
type Environment = (Vec<(String, String)>, Vec<String>);

fn environment(settings: &GitSettings, url: &str) -> Result<Environment, GitError> {
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        ),
        ("HOME".into(), settings.work_dir.display().to_string()),
        ("GIT_TERMINAL_PROMPT".into(), "0".into()),
        ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
        ("GIT_CONFIG_GLOBAL".into(), "/dev/null".into()),
        ("GIT_AUTHOR_NAME".into(), settings.author_name.clone()),
        ("GIT_AUTHOR_EMAIL".into(), settings.author_email.clone()),
        ("GIT_COMMITTER_NAME".into(), settings.author_name.clone()),
        ("GIT_COMMITTER_EMAIL".into(), settings.author_email.clone()),
        ("LC_ALL".into(), "C".into()),
    ];
    let mut config: Vec<(String, String)> = vec![
        // Branch names are given on every command; this only keeps git
        // from advising about it.
        ("init.defaultBranch".into(), "main".into()),
        ("advice.detachedHead".into(), "false".into()),
        ("gc.auto".into(), "0".into()),
    ];
    let mut secrets = Vec::new();
    let credential = settings
        .credentials
        .iter()
        .filter(|c| url.starts_with(&c.prefix))
        .max_by_key(|c| c.prefix.len());
    match credential.map(|c| &c.secret) {
        None => env.push(("GIT_SSH_COMMAND".into(), "ssh -o BatchMode=yes".into())),
        Some(GitSecret::Token { file, username }) => {
            let token = std::fs::read_to_string(file)
                .map_err(|e| GitError(format!("cannot read the token file {}: {e}", file.display())))?;
            let token = token.trim().to_string();
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{token}"));
            config.push(("http.extraHeader".into(), format!("Authorization: Basic {basic}")));
            secrets.push(token);
            secrets.push(basic);
        }
        Some(GitSecret::SshKey { file }) => {
            let quoted = file.display().to_string().replace('\'', "'\\''");
            env.push((
                "GIT_SSH_COMMAND".into(),
                format!("ssh -i '{quoted}' -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=accept-new"),
            ));
        }
    }
    env.push(("GIT_CONFIG_COUNT".into(), config.len().to_string()));
    for (i, (k, v)) in config.into_iter().enumerate() {
        env.push((format!("GIT_CONFIG_KEY_{i}"), k));
        env.push((format!("GIT_CONFIG_VALUE_{i}"), v));
    }
    Ok((env, secrets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_goes_into_the_environment_only_for_its_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let settings = GitSettings {
            credentials: vec![
                GitCredential {
                    prefix: "https://git.example.com/".into(),
                    secret: GitSecret::Token {
                        file: token.clone(),
                        username: "x-access-token".into(),
                    },
                },
                GitCredential {
                    prefix: "ssh://".into(),
                    secret: GitSecret::SshKey {
                        file: "/etc/tug/key".into(),
                    },
                },
            ],
            ..GitSettings::default()
        };
        let (env, secrets) = environment(&settings, "https://git.example.com/c.git").unwrap();
        let header = env
            .iter()
            .find(|(_, v)| v.starts_with("Authorization: Basic "))
            .unwrap();
        assert!(header.0.starts_with("GIT_CONFIG_VALUE_"));
        assert_eq!(secrets[0], "s3cret");
        let (env, secrets) = environment(&settings, "https://other.example.com/c.git").unwrap();
        assert!(env.iter().all(|(_, v)| !v.contains("Authorization")));
        assert!(secrets.is_empty());
        let (env, _) = environment(&settings, "ssh://git@h/c.git").unwrap();
        assert!(env
            .iter()
            .any(|(k, v)| k == "GIT_SSH_COMMAND" && v.contains("-i '/etc/tug/key'")));
        assert!(!format!("{settings:?}").contains("s3cret"));
    }
}
