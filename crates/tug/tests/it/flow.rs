//! The push flow as CI and release engineers run it: create a draft, push
//! from several jobs, seal, show, list, pull.

use crate::support::{write_files, Backend, TestServer};

/// The whole flow through the CLI; `backend` picks the storage.
pub async fn push_seal_show_pull(server: &TestServer) {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    server.tug(w, &["service", "create", "teleport"]).ok();
    write_files(
        w,
        &[
            ("dist/linux-amd64/teleport.tar.gz", b"tarball amd64"),
            ("dist/linux-arm64/teleport.tar.gz", b"tarball arm64"),
            ("pkg/teleport_amd64.deb", b"deb amd64"),
            ("img/teleport.oci", b"oci image"),
        ],
    );
    let id = server
        .tug(
            w,
            &[
                "build",
                "create",
                "--service",
                "teleport",
                "--version",
                "14.1.0",
                "--branch",
                "master",
                "--commit",
                "4f2a9c1e",
                "--repo",
                "https://example.com/teleport.git",
                "--author",
                "Ada",
                "--message",
                "Fix the thing",
                "--expect",
                "teleport_amd64.deb",
                "--expect",
                "teleport.oci",
            ],
        )
        .ok()
        .trim()
        .to_string();
    tug_core::BuildId::parse(&id).expect("build create prints the id alone");

    // A directory push names artifacts by their path inside it.
    let pushed = server
        .tug(w, &["push", &id, "dist", "--kind", "tarball", "--output", "json"])
        .json();
    assert_eq!(pushed["artifacts"], 2);
    assert_eq!(pushed["uploaded_blobs"], 2);

    // Sealing names what is still missing.
    let err = server.tug(w, &["build", "seal", &id]).fails().to_string();
    assert!(
        err.contains("teleport.oci") && err.contains("teleport_amd64.deb"),
        "{err}"
    );
    assert!(err.contains("missing_artifacts"), "{err}");

    server
        .tug(
            w,
            &[
                "push",
                &id,
                "pkg/teleport_amd64.deb",
                // A stand-in, not a Debian package: pushed as a plain file.
                "--kind",
                "other",
                "--platform",
                "linux/amd64",
                "--derived-from",
                "linux-amd64/teleport.tar.gz",
            ],
        )
        .ok();
    server
        .tug(
            w,
            &["push", &id, "img/teleport.oci", "--derived-from", "teleport_amd64.deb"],
        )
        .ok();
    let sealed = server.tug(w, &["build", "seal", &id, "--output", "json"]).json();
    let manifest = sealed["manifest_digest"].as_str().unwrap().to_string();
    assert_eq!(sealed["state"], "sealed");

    // The manifest digest is the sha256 of the canonical manifest.
    let bytes = server.client().manifest(&id).await.unwrap();
    assert_eq!(tug_core::Digest::of(&bytes).to_string(), manifest);

    // Show by id and by manifest digest agree; the table has the metadata.
    let by_digest = server.tug(w, &["build", "show", &manifest, "--output", "json"]).json();
    assert_eq!(by_digest["id"], id.as_str());
    assert_eq!(by_digest["artifacts"].as_array().unwrap().len(), 4);
    let table = server.tug(w, &["build", "show", &id]).ok().to_string();
    for needle in [
        "14.1.0",
        "master",
        "4f2a9c1e",
        "Ada",
        "teleport_amd64.deb",
        "linux/amd64",
        &manifest,
    ] {
        assert!(table.contains(needle), "{needle} missing from:\n{table}");
    }
    let graph = server.tug(w, &["build", "show", &id, "--graph"]).ok().to_string();
    let lines: Vec<&str> = graph.lines().collect();
    assert!(
        lines[0].starts_with("source https://example.com/teleport.git@4f2a9c1e"),
        "{graph}"
    );
    let pos = |name: &str| {
        lines
            .iter()
            .position(|l| l.contains(name))
            .unwrap_or_else(|| panic!("{name}:\n{graph}"))
    };
    assert!(pos("linux-amd64/teleport.tar.gz") < pos("teleport_amd64.deb"));
    assert!(pos("teleport_amd64.deb") < pos("teleport.oci"));
    assert!(
        lines[pos("teleport.oci")].starts_with("│       └── teleport.oci"),
        "oci is three levels deep:\n{graph}"
    );

    // List with filters.
    let other = server
        .tug(
            w,
            &[
                "build",
                "create",
                "--service",
                "teleport",
                "--version",
                "14.0.9",
                "--branch",
                "release-14",
            ],
        )
        .ok()
        .trim()
        .to_string();
    let list = server
        .tug(w, &["build", "list", "--service", "teleport", "--output", "json"])
        .json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let master = server
        .tug(
            w,
            &[
                "build",
                "list",
                "--service",
                "teleport",
                "--branch",
                "master",
                "--output",
                "json",
            ],
        )
        .json();
    assert_eq!(master.as_array().unwrap().len(), 1);
    assert_eq!(master[0]["id"], id.as_str());
    let v = server
        .tug(
            w,
            &[
                "build",
                "list",
                "--service",
                "teleport",
                "--version",
                "14.0.9",
                "--output",
                "json",
            ],
        )
        .json();
    assert_eq!(v[0]["id"], other.as_str());
    assert!(server
        .tug(w, &["build", "list", "--service", "teleport"])
        .ok()
        .contains("release-14"));

    // Pull everything, then one artifact; every file is byte-identical.
    let out = w.join("out");
    server.tug(w, &["pull", &id, "--dest", out.to_str().unwrap()]).ok();
    assert_eq!(
        std::fs::read(out.join("linux-arm64/teleport.tar.gz")).unwrap(),
        b"tarball arm64"
    );
    assert_eq!(std::fs::read(out.join("teleport.oci")).unwrap(), b"oci image");
    let one = w.join("one");
    server
        .tug(
            w,
            &[
                "pull",
                &id,
                "--artifact",
                "teleport_amd64.deb",
                "--dest",
                one.to_str().unwrap(),
            ],
        )
        .ok();
    let names: Vec<String> = std::fs::read_dir(&one)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["teleport_amd64.deb"]);
    let err = server
        .tug(
            w,
            &["pull", &id, "--artifact", "nope.rpm", "--dest", one.to_str().unwrap()],
        )
        .fails()
        .to_string();
    assert!(err.contains("no artifact named nope.rpm"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_seal_show_pull_on_embedded_defaults() {
    let server = TestServer::start().await;
    push_seal_show_pull(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_push_of_stored_blobs_sends_no_bytes() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    write_files(w, &[("a.bin", &[7u8; 300_000]), ("b.bin", b"b")]);
    let first = server
        .tug(
            w,
            &[
                "push",
                "--service",
                "api",
                "--version",
                "1.0.0",
                "a.bin",
                "b.bin",
                "--output",
                "json",
            ],
        )
        .json();
    assert_eq!(first["uploaded_bytes"], 300_001);
    let again = server
        .tug(
            w,
            &[
                "push",
                "--service",
                "api",
                "--version",
                "1.0.1",
                "a.bin",
                "b.bin",
                "--output",
                "json",
            ],
        )
        .json();
    assert_eq!(again["uploaded_blobs"], 0);
    assert_eq!(again["uploaded_bytes"], 0);
    assert_eq!(again["skipped_bytes"], 300_001);
    assert_eq!(again["registered"], 2);

    // A PUT of a stored blob answers without reading the body: curl-like
    // clients that send `Expect: 100-continue` never send it.
    let digest = crate::support::digest_of(&[7u8; 300_000]);
    let res = server
        .http(reqwest::Method::PUT, &format!("/v1/blobs/{digest}"))
        .body(vec![7u8; 300_000])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["created"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_push_creates_and_seals() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    write_files(w, &[("dist/api-linux-amd64", b"bin"), ("dist/api.tar.gz", b"tgz")]);
    let out = server
        .tug(
            w,
            &[
                "push",
                "--service",
                "api",
                "--branch",
                "master",
                "--commit",
                "0a1b2c3d4e5f6a7b",
                "--seal",
                "dist/api-linux-amd64",
                "dist/api.tar.gz",
                "--output",
                "json",
            ],
        )
        .json();
    assert_eq!(out["sealed"]["state"], "sealed");
    assert_eq!(
        out["sealed"]["version"], "0.0.0-g0a1b2c3d4e5f",
        "the version defaults to the commit"
    );
    let build = server.client().build(out["build"].as_str().unwrap()).await.unwrap();
    let kinds: Vec<String> = build
        .artifacts
        .unwrap()
        .iter()
        .map(|a| format!("{}={}", a.name, a.kind))
        .collect();
    assert_eq!(kinds, vec!["api-linux-amd64=other", "api.tar.gz=tarball"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_ci_jobs_push_into_one_draft_at_once() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path().to_path_buf();
    server.tug(&w, &["service", "create", "api"]).ok();
    let id = server
        .tug(&w, &["build", "create", "--service", "api", "--version", "2.0.0"])
        .ok()
        .trim()
        .to_string();
    let server = std::sync::Arc::new(server);
    let jobs: Vec<_> = (0..6)
        .map(|job| {
            let (server, w, id) = (server.clone(), w.clone(), id.clone());
            std::thread::spawn(move || {
                let dir = w.join(format!("job{job}"));
                let files: Vec<(String, Vec<u8>)> = (0..5)
                    .map(|i| (format!("job{job}/f{i}.bin"), format!("job {job} file {i}").into_bytes()))
                    .collect();
                for (n, b) in &files {
                    write_files(&dir, &[(n.as_str(), b.as_slice())]);
                }
                server.tug(&dir, &["push", &id, "."]).ok().to_string()
            })
        })
        .collect();
    for j in jobs {
        j.join().unwrap();
    }
    let sealed = server.tug(&w, &["build", "seal", &id, "--output", "json"]).json();
    assert_eq!(sealed["artifact_count"], 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_resumes_an_interrupted_download_and_verifies_it() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    let body: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    write_files(w, &[("big.bin", &body)]);
    let out = server
        .tug(
            w,
            &[
                "push",
                "--service",
                "api",
                "--version",
                "1.0.0",
                "--seal",
                "big.bin",
                "--output",
                "json",
            ],
        )
        .json();
    let id = out["build"].as_str().unwrap().to_string();

    // Half a file left by an interrupted pull: the rest comes with Range.
    let dest = w.join("out");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::write(dest.join("big.bin.part"), &body[..1_000_000]).unwrap();
    let pulled = server
        .tug(w, &["pull", &id, "--dest", dest.to_str().unwrap(), "--output", "json"])
        .json();
    assert_eq!(pulled["downloaded_bytes"], 1_000_000, "only the missing half travels");
    assert_eq!(std::fs::read(dest.join("big.bin")).unwrap(), body);
    assert!(!dest.join("big.bin.part").exists());

    // A corrupt partial file is caught by the digest check and removed.
    let bad = w.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("big.bin.part"), vec![0u8; 1_000_000]).unwrap();
    let err = server
        .tug(w, &["pull", &id, "--dest", bad.to_str().unwrap()])
        .fails()
        .to_string();
    assert!(err.contains("hash to") && err.contains("pull again"), "{err}");
    assert!(!bad.join("big.bin").exists() && !bad.join("big.bin.part").exists());
    server.tug(w, &["pull", &id, "--dest", bad.to_str().unwrap()]).ok();
    assert_eq!(std::fs::read(bad.join("big.bin")).unwrap(), body);

    // A second pull finds the file up to date.
    let again = server
        .tug(w, &["pull", &id, "--dest", dest.to_str().unwrap(), "--output", "json"])
        .json();
    assert_eq!(again["up_to_date"], 1);

    // GET honours Range directly too.
    let digest = crate::support::digest_of(&body);
    let res = server
        .http(reqwest::Method::GET, &format!("/v1/blobs/{digest}"))
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 206);
    assert_eq!(res.headers()["content-range"], "bytes 10-19/2000000");
    assert_eq!(res.bytes().await.unwrap().as_ref(), &body[10..20]);
    let res = server
        .http(reqwest::Method::GET, &format!("/v1/blobs/{digest}"))
        .header("Range", "bytes=2000000-")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 416);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_shuts_down_gracefully_on_sigterm() {
    let mut server = TestServer::start_with(Backend::Embedded, &[]).await;
    server.client().health().await.unwrap();
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}; log:\n{}", server.log());
    assert!(server.log().contains("shutting down"), "{}", server.log());
}
