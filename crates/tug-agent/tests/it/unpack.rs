//! The agent unpacks tarball artifacts into the release: good archives of
//! each compression come out with their files, directories, links and
//! executable bits; each kind of hostile archive is refused whole, the
//! update fails cleanly (reported, the build given up), the running build
//! stays, and nothing is written outside the agent's release.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tug_api::AgentState;
use tug_core::{ArtifactKind, BuildId};

use crate::{config, current, read, script, until, Result, RunningAgent, Server};

/// One entry of a test archive. Written with raw headers, so an entry may
/// be anything a hostile archive could hold.
enum Entry<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    CharDevice(&'a str),
}

#[derive(Clone, Copy)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    fn suffix(self) -> &'static str {
        match self {
            Compression::None => "tar",
            Compression::Gzip => "tar.gz",
            Compression::Zstd => "tar.zst",
        }
    }
}

fn header(path: &str, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let name = &mut h.as_old_mut().name;
    name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(1_700_000_000);
    h
}

/// The archive's bytes, compressed.
fn archive(entries: &[Entry], compression: Compression) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (mut h, body): (tar::Header, &[u8]) = match e {
            Entry::File(p, body, mode) => (header(p, tar::EntryType::Regular, body.len() as u64, *mode), body),
            Entry::Dir(p) => (header(p, tar::EntryType::Directory, 0, 0o755), b""),
            Entry::Symlink(p, to) | Entry::HardLink(p, to) => {
                let kind = match e {
                    Entry::Symlink(..) => tar::EntryType::Symlink,
                    _ => tar::EntryType::Link,
                };
                let mut h = header(p, kind, 0, 0o777);
                h.set_link_name_literal(to.as_bytes()).unwrap();
                (h, b"")
            }
            Entry::CharDevice(p) => {
                let mut h = header(p, tar::EntryType::Char, 0, 0o666);
                h.set_device_major(1).unwrap();
                h.set_device_minor(3).unwrap();
                (h, b"")
            }
        };
        h.set_cksum();
        b.append(&h, body).unwrap();
    }
    let tar = b.into_inner().unwrap();
    match compression {
        Compression::None => tar,
        Compression::Gzip => {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(&tar).unwrap();
            gz.finish().unwrap()
        }
        Compression::Zstd => ruzstd::encoding::compress_to_vec(&tar[..], ruzstd::encoding::CompressionLevel::Fastest),
    }
}

/// A sealed build of `web` with the agent's `server.sh` (serving
/// `version`) and `extra` artifacts: (name, kind, bytes).
async fn build(server: &Server, version: &str, extra: Vec<(&str, ArtifactKind, Vec<u8>)>) -> Result<BuildId> {
    let mut files = vec![("server.sh", ArtifactKind::Binary, script(version).into_bytes())];
    files.extend(extra);
    server.build_with(version, files).await
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// A good archive of each compression: its files, directories, links and
/// modes land in the release root next to the plain artifacts; one in a
/// subdirectory unpacks there; the program it ships runs.
async fn a_good_archive_is_unpacked(compression: Compression) -> Result {
    let server = Server::start().await?;
    let suffix = compression.suffix();
    let app = archive(
        &[
            Entry::Dir("./"),
            Entry::Dir("./bin/"),
            Entry::File("./bin/tool", b"#!/bin/sh\necho tool\n", 0o755),
            Entry::File("./etc/app.conf", b"port = 8080\n", 0o664),
            Entry::File("./etc/secret.key", b"only for the owner\n", 0o600),
            Entry::File("./odd", b"setuid and world-writable in the archive\n", 0o4777),
            Entry::Symlink("./conf", "etc/app.conf"),
            Entry::Symlink("./bin/up", "../etc"),
            Entry::HardLink("./bin/tool-again", "./bin/tool"),
        ],
        compression,
    );
    let nested = archive(&[Entry::File("data.txt", b"for amd64\n", 0o644)], compression);
    let app_name = format!("app.{suffix}");
    let nested_name = format!("linux-amd64/data.{suffix}");
    let v1 = build(
        &server,
        "1.0.0",
        vec![
            (&app_name, ArtifactKind::Tarball, app),
            (&nested_name, ArtifactKind::Tarball, nested),
            ("README", ArtifactKind::Other, b"plain\n".to_vec()),
        ],
    )
    .await?;
    server.release(&v1).await?;
    let dir = tempfile::tempdir()?;
    let mut c = config(&server, dir.path());
    // The archive's program runs too: the release is healthy only if it
    // is there, executable, and its link resolves.
    c.health_cmd = Some(format!("{} && ./bin/tool-again && test -d bin/up", crate::HEALTH));
    let agent = RunningAgent::start(c);
    until(30, "healthy on the build", || {
        server.reports(dir.path(), AgentState::Healthy, &v1)
    })
    .await?;
    let r = dir.path().join("releases").join(v1.as_str());
    assert_eq!(read(r.join("bin/tool")), "#!/bin/sh\necho tool");
    assert_eq!(read(r.join("conf")), "port = 8080");
    assert_eq!(read(r.join("README")), "plain");
    assert_eq!(read(r.join("linux-amd64/data.txt")), "for amd64");
    assert_eq!(mode(&r.join("bin/tool")), 0o755);
    assert_eq!(mode(&r.join("etc/app.conf")), 0o644, "no group write");
    assert_eq!(mode(&r.join("etc/secret.key")), 0o600, "still private");
    assert_eq!(mode(&r.join("odd")), 0o755, "no setuid, no world write");
    assert_eq!(std::fs::read_link(r.join("bin/up"))?, PathBuf::from("../etc"));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(r.join("bin/tool"))?.ino(),
        std::fs::metadata(r.join("bin/tool-again"))?.ino()
    );
    // The archives themselves are not in the release, only their contents.
    assert!(!r.join(&app_name).exists() && !r.join(&nested_name).exists());
    agent.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_tar_is_unpacked() -> Result {
    a_good_archive_is_unpacked(Compression::None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_tar_gz_is_unpacked() -> Result {
    a_good_archive_is_unpacked(Compression::Gzip).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_tar_zst_is_unpacked() -> Result {
    a_good_archive_is_unpacked(Compression::Zstd).await
}

/// Every path named `pwned` under `root`, links included.
fn pwned(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_name() == "pwned" {
                found.push(p.clone());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p);
            }
        }
    }
    found
}

/// Runs an agent on a good build, releases one with `hostile` (made with
/// `outside`, a directory beside the agent's that nothing may touch) and
/// checks that the update failed cleanly: refused with an error naming the
/// archive and containing `why`, the good build still current and
/// running, no trace of the bad one on disk, nothing written outside.
async fn a_hostile_archive_is_refused(hostile: impl Fn(&Path) -> Vec<u8>, why: &str) -> Result {
    let server = Server::start().await?;
    let top = tempfile::tempdir()?;
    let (dir, outside) = (top.path().join("agent"), top.path().join("outside"));
    std::fs::create_dir_all(&outside)?;
    std::fs::write(outside.join("victim"), b"untouched")?;
    let good = build(&server, "1.0.0", Vec::new()).await?;
    server.release(&good).await?;
    let agent = RunningAgent::start(config(&server, &dir));
    until(30, "healthy on the good build", || {
        server.reports(&dir, AgentState::Healthy, &good)
    })
    .await?;
    let pid = read(dir.join("pid"));

    let bad = build(
        &server,
        "2.0.0",
        vec![("app.tar.gz", ArtifactKind::Tarball, hostile(&outside))],
    )
    .await?;
    server.release(&bad).await?;
    until(30, "the update refused", || async {
        Ok(server
            .agent(&dir)
            .await?
            .is_some_and(|a| a.report.state == AgentState::Failed && a.report.failed_build.as_ref() == Some(&bad)))
    })
    .await?;
    let report = server.agent(&dir).await?.map(|a| a.report).unwrap();
    let error = report.error.unwrap_or_default();
    assert!(
        error.contains("cannot unpack app.tar.gz") && error.contains(why),
        "{error}"
    );
    assert_eq!(report.build.as_ref(), Some(&good), "the good build is what runs");
    assert_eq!(current(&dir).as_deref(), Some(good.as_str()));
    assert_eq!(read(dir.join("pid")), pid, "the running process was not touched");
    assert!(crate::alive(&pid));
    let releases: Vec<String> = std::fs::read_dir(dir.join("releases"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    assert_eq!(releases, vec![good.to_string()], "nothing half-assembled is left");
    assert_eq!(pwned(top.path()), Vec::<PathBuf>::new());
    assert_eq!(std::fs::read(outside.join("victim"))?, b"untouched");
    let state: serde_json::Value = serde_json::from_str(&read(dir.join("state.json")))?;
    assert_eq!(state["failed"]["build"], bad.as_str(), "given up, not retried");
    agent.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_with_an_absolute_path_is_refused() -> Result {
    let hostile = |outside: &Path| {
        let target = outside.join("pwned").display().to_string();
        archive(&[Entry::File(&target, b"owned", 0o644)], Compression::Gzip)
    };
    a_hostile_archive_is_refused(hostile, "is an absolute path").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_with_a_dot_dot_path_is_refused() -> Result {
    let hostile = |_: &Path| {
        archive(
            &[
                Entry::File("ok.txt", b"fine", 0o644),
                Entry::File("../../../outside/pwned", b"owned", 0o644),
            ],
            Compression::Gzip,
        )
    };
    a_hostile_archive_is_refused(hostile, "has a .. component").await
}

/// A link out of the release, then a file written through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_writing_through_an_escaping_symlink_is_refused() -> Result {
    let hostile = |_: &Path| {
        archive(
            &[
                Entry::Symlink("escape", "../../../outside"),
                Entry::File("escape/pwned", b"owned", 0o644),
            ],
            Compression::Gzip,
        )
    };
    a_hostile_archive_is_refused(hostile, "leads outside the release").await
}

/// The same with an absolute target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_writing_through_an_absolute_symlink_is_refused() -> Result {
    let hostile = |outside: &Path| {
        let target = outside.display().to_string();
        archive(
            &[
                Entry::Symlink("escape", &target),
                Entry::File("escape/pwned", b"owned", 0o644),
            ],
            Compression::Gzip,
        )
    };
    a_hostile_archive_is_refused(hostile, "the target is an absolute path").await
}

/// Each link stays inside on its own; together they lead out: `d/up`
/// is the release root, so `e -> d/up/..` is its parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_whose_links_escape_together_is_refused() -> Result {
    let hostile = |_: &Path| {
        archive(
            &[
                Entry::Dir("d/"),
                Entry::Symlink("d/up", ".."),
                Entry::Symlink("e", "d/up/.."),
            ],
            Compression::Gzip,
        )
    };
    a_hostile_archive_is_refused(hostile, "symbolic link e: it leads outside the release").await
}

/// Even a link that stays inside is never written through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_writing_through_an_inner_symlink_is_refused() -> Result {
    let hostile = |_: &Path| {
        archive(
            &[
                Entry::Dir("real/"),
                Entry::Symlink("alias", "real"),
                Entry::File("alias/pwned", b"owned", 0o644),
            ],
            Compression::Gzip,
        )
    };
    a_hostile_archive_is_refused(hostile, "alias is a symbolic link: nothing is written through one").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_with_an_escaping_hard_link_is_refused() -> Result {
    let hostile = |outside: &Path| {
        let victim = outside.join("victim").display().to_string();
        archive(
            &[
                Entry::HardLink("pwned", &victim),
                Entry::HardLink("pwned2", "../../../outside/victim"),
            ],
            Compression::Gzip,
        )
    };
    a_hostile_archive_is_refused(hostile, "is an absolute path").await
}

/// A hard link to a path inside that the archive did not unpack as a
/// regular file (here, a plain artifact of the release) is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_hard_linking_to_another_artifact_is_refused() -> Result {
    let hostile = |_: &Path| archive(&[Entry::HardLink("pwned", "server.sh")], Compression::Gzip);
    a_hostile_archive_is_refused(hostile, "does not name a regular file unpacked before it").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_with_a_device_file_is_refused() -> Result {
    let hostile = |_: &Path| archive(&[Entry::CharDevice("pwned")], Compression::Gzip);
    a_hostile_archive_is_refused(hostile, "pwned is a character device").await
}

/// An archive may not replace a plain artifact (nor another archive's
/// file): a file comes from one place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_replacing_another_artifact_is_refused() -> Result {
    let hostile = |_: &Path| {
        archive(
            &[Entry::File("server.sh", b"#!/bin/sh\necho pwned\n", 0o755)],
            Compression::Gzip,
        )
    };
    a_hostile_archive_is_refused(hostile, "server.sh would replace server.sh from server.sh").await
}

/// A file compressed as the name says it is not: the archive is broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_that_is_not_what_its_name_says_is_refused() -> Result {
    let hostile = |_: &Path| b"this is not gzip".to_vec();
    a_hostile_archive_is_refused(hostile, "cannot unpack app.tar.gz").await
}
