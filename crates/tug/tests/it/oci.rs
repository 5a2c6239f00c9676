//! The OCI registry at `/v2/` with real clients: Debian's `skopeo` copies a
//! multi-layer image into a draft build's tag and out again, inspects it,
//! copies by digest, follows an environment's tag across a promotion and
//! pulls anonymously from a public environment only; PyPI's `oras` pushes
//! an artifact with an `artifactType` and a `subject`, lists the referrers
//! and pulls it back. Bad input gets the specification's error codes and
//! leaves nothing behind.

use std::path::Path;
use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::{Backend, TestServer};

/// Writes an OCI image layout (see the script) and returns its manifest's
/// digest.
const MKLAYOUT: &str = include_str!("../../../../bench/oci-copy/mklayout.py");

const PIPELINE: &str = r#"
service = "api"

[[environments]]
name = "dev"
public = true

[[environments]]
name = "prod"
upstream = "dev"
"#;

fn layout(dir: &Path, name: &str, layers: u32, seed: &str) -> String {
    let script = dir.join("mklayout.py");
    std::fs::write(&script, MKLAYOUT).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .arg(dir.join(name))
        .arg(layers.to_string())
        .arg("70000")
        .arg(seed)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Runs skopeo (with no policy file of the machine's, and a throw-away
/// home for its caches); returns success, stdout and stderr.
fn skopeo(home: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .current_dir(home)
        .env("HOME", home)
        .env_remove("REGISTRY_AUTH_FILE")
        .output()
        .expect("skopeo is installed (scripts/test installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn skopeo_ok(home: &Path, args: &[&str]) -> String {
    let (ok, out, err) = skopeo(home, args);
    assert!(ok, "skopeo {args:?} failed: {err}");
    out
}

fn host(server: &TestServer) -> String {
    server.url.trim_start_matches("http://").to_string()
}

fn draft(server: &TestServer, w: &Path, version: &str) -> String {
    server
        .tug(
            w,
            &[
                "build",
                "create",
                "--service",
                "api",
                "--version",
                version,
                "--output",
                "json",
            ],
        )
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn token(server: &TestServer, w: &Path, name: &str, role: &str, service: Option<&str>) -> String {
    let mut args = vec!["token", "create", "--name", name, "--role", role, "--output", "json"];
    if let Some(s) = service {
        args.extend(["--service", s]);
    }
    server.tug(w, &args).json()["secret"].as_str().unwrap().to_string()
}

/// The registry answer to a request with Basic credentials (`None`: none).
async fn call(
    server: &TestServer,
    token: Option<&str>,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", server.url));
    if let Some(t) = token {
        req = req.basic_auth("ci", Some(t));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(body).send().await.unwrap()
}

/// The first error code of a registry error answer.
async fn code(res: reqwest::Response) -> String {
    let body: Value = res.json().await.unwrap();
    body["errors"][0]["code"].as_str().unwrap_or_default().to_string()
}

async fn skopeo_copies_images_in_and_out_and_tags_follow_builds_and_environments(backend: Backend) {
    let server = TestServer::start_with(backend, &[]).await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    std::fs::write(w.join("p.toml"), PIPELINE).unwrap();
    server.tug(w, &["pipeline", "apply", "-f", "p.toml"]).ok();
    let ci = token(&server, w, "ci", "ci", Some("api"));
    let viewer = token(&server, w, "viewer", "viewer", None);
    let host = host(&server);
    let dest = format!("x:{ci}");
    let src = format!("x:{viewer}");

    // In: a three-layer image into a draft build's tag.
    let first_digest = layout(w, "one", 3, "one");
    let first = draft(&server, w, "1.0.0");
    let tagged = format!("docker://{host}/api/server:build-{first}");
    skopeo_ok(
        w,
        &[
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            &dest,
            "oci:one:latest",
            &tagged,
        ],
    );
    let shown = server.tug(w, &["build", "show", &first, "--output", "json"]).json();
    let artifact = &shown["artifacts"][0];
    assert_eq!(artifact["name"], "server");
    assert_eq!(artifact["kind"], "oci");
    assert_eq!(artifact["platform"], "linux/amd64");
    assert_eq!(artifact["digest"], first_digest.as_str(), "the image went in unchanged");

    // Out again, byte for byte, and inspected.
    skopeo_ok(
        w,
        &[
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            &src,
            &tagged,
            "oci:back:latest",
        ],
    );
    let mut sent: Vec<_> = std::fs::read_dir(w.join("one/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut got: Vec<_> = std::fs::read_dir(w.join("back/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    sent.sort();
    got.sort();
    assert_eq!(sent, got, "the same manifest, config and layers came back");
    let inspected: Value = serde_json::from_str(&skopeo_ok(
        w,
        &["inspect", "--tls-verify=false", "--creds", &src, &tagged],
    ))
    .unwrap();
    assert_eq!(inspected["Digest"], first_digest.as_str());
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 3);

    // By digest.
    let by_digest = format!("docker://{host}/api/server@{first_digest}");
    skopeo_ok(
        w,
        &[
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            &src,
            &by_digest,
            "oci:bydigest:x",
        ],
    );

    // Sealed: the version is a tag, and the build's tag takes no more pushes.
    server.tug(w, &["build", "seal", &first]).ok();
    let version = format!("docker://{host}/api/server:1.0.0");
    let inspected: Value = serde_json::from_str(&skopeo_ok(
        w,
        &["inspect", "--tls-verify=false", "--creds", &src, &version],
    ))
    .unwrap();
    assert_eq!(inspected["Digest"], first_digest.as_str());
    let (ok, _, err) = skopeo(
        w,
        &[
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            &dest,
            "oci:one:latest",
            &tagged,
        ],
    );
    assert!(!ok && err.contains("denied") && err.contains("sealed"), "{err}");

    // Environments are tags that follow their deployments.
    server
        .tug(w, &["release", "api", "--env", "dev", "--build", &first])
        .ok();
    server.tug(w, &["promote", "api", "--to", "prod"]).ok();
    let second_digest = layout(w, "two", 2, "two");
    let second = draft(&server, w, "1.1.0");
    skopeo_ok(
        w,
        &[
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            &dest,
            "oci:two:latest",
            &format!("docker://{host}/api/server:build-{second}"),
        ],
    );
    server.tug(w, &["build", "seal", &second]).ok();
    let prod = format!("docker://{host}/api/server:prod");
    let digest_of = |image: &str, creds: &str| -> String {
        let v: Value = serde_json::from_str(&skopeo_ok(
            w,
            &["inspect", "--tls-verify=false", "--creds", creds, image],
        ))
        .unwrap();
        v["Digest"].as_str().unwrap().to_string()
    };
    assert_eq!(digest_of(&prod, &src), first_digest);
    server
        .tug(w, &["release", "api", "--env", "dev", "--build", &second])
        .ok();
    server.tug(w, &["promote", "api", "--to", "prod"]).ok();
    assert_eq!(digest_of(&prod, &src), second_digest, "the promotion moved the tag");
    let tags: Value = serde_json::from_str(&skopeo_ok(
        w,
        &[
            "list-tags",
            "--tls-verify=false",
            "--creds",
            &src,
            &format!("docker://{host}/api/server"),
        ],
    ))
    .unwrap();
    let tags: Vec<&str> = tags["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for t in [
        "1.0.0",
        "1.1.0",
        "dev",
        "prod",
        &format!("build-{first}"),
        &format!("build-{second}"),
    ] {
        assert!(tags.contains(&t), "{t} in {tags:?}");
    }

    // Without a token: the public environment only.
    let dev = format!("docker://{host}/api/server:dev");
    skopeo_ok(
        w,
        &[
            "copy",
            "--src-tls-verify=false",
            "--src-no-creds",
            &dev,
            "oci:anonymous:x",
        ],
    );
    for refused in [prod.as_str(), version.as_str(), tagged.as_str()] {
        let (ok, _, err) = skopeo(w, &["inspect", "--tls-verify=false", "--no-creds", refused]);
        assert!(!ok, "{refused} is not public: {err}");
    }
    let (ok, _, _) = skopeo(
        w,
        &[
            "copy",
            "--dest-tls-verify=false",
            "--dest-no-creds",
            "oci:one:latest",
            &format!("docker://{host}/api/server:anon"),
        ],
    );
    assert!(!ok, "nobody pushes without a token");

    // gc keeps every blob of the builds' images.
    server.tug(w, &["gc", "--grace", "0"]).ok();
    skopeo_ok(
        w,
        &[
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            &src,
            &version,
            "oci:aftergc:x",
        ],
    );
}
on_both_backends!(skopeo_copies_images_in_and_out_and_tags_follow_builds_and_environments);

/// An embargoed build's image is invisible to whoever may not see it, and
/// a token scoped to another service gets nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embargoed_images_and_other_services_are_hidden() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    server.tug(w, &["service", "create", "web"]).ok();
    let ci = token(&server, w, "ci", "ci", Some("api"));
    let web = token(&server, w, "web", "viewer", Some("web"));
    let host = host(&server);
    let manifest_digest = layout(w, "img", 1, "e");
    let build = server
        .tug_as(
            &ci,
            w,
            &[
                "build",
                "create",
                "--service",
                "api",
                "--version",
                "2.0.0",
                "--embargo",
                "--output",
                "json",
            ],
        )
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let tagged = format!("docker://{host}/api/server:build-{build}");
    skopeo_ok(
        w,
        &[
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            &format!("x:{ci}"),
            "oci:img:latest",
            &tagged,
        ],
    );
    let viewer = token(&server, w, "viewer", "viewer", None);
    let (ok, _, err) = skopeo(
        w,
        &[
            "inspect",
            "--tls-verify=false",
            "--creds",
            &format!("x:{viewer}"),
            &tagged,
        ],
    );
    assert!(!ok && err.contains("manifest unknown"), "{err}");
    let (ok, _, err) = skopeo(
        w,
        &["inspect", "--tls-verify=false", "--creds", &format!("x:{web}"), &tagged],
    );
    assert!(!ok, "{err}");
    // Nor through a repository of its own service, by the layer's digest.
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(
            w.join("img/blobs/sha256")
                .join(manifest_digest.trim_start_matches("sha256:")),
        )
        .unwrap(),
    )
    .unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let web_ci = token(&server, w, "web-ci", "ci", Some("web"));
    for (secret, path) in [
        (&web_ci, format!("/v2/web/app/blobs/{layer}")),
        (&viewer, format!("/v2/api/server/blobs/{layer}")),
        (&viewer, format!("/v2/api/server/manifests/{manifest_digest}")),
    ] {
        let res = call(&server, Some(secret), Method::GET, &path, &[], vec![]).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
    }
    skopeo_ok(
        w,
        &["inspect", "--tls-verify=false", "--creds", &format!("x:{ci}"), &tagged],
    );
}

/// oras-py pushes an artifact with an artifactType and a subject, finds it
/// among the subject's referrers and pulls it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oras_pushes_and_pulls_an_artifact_with_a_subject() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    let ci = token(&server, w, "ci", "ci", Some("api"));
    let host = host(&server);
    let subject = layout(w, "img", 1, "s");
    let size = std::fs::metadata(w.join("img/blobs/sha256").join(subject.trim_start_matches("sha256:")))
        .unwrap()
        .len()
        .to_string();
    skopeo_ok(
        w,
        &[
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            &format!("x:{ci}"),
            "oci:img:latest",
            &format!("docker://{host}/api/server:base"),
        ],
    );
    std::fs::write(w.join("oras_check.py"), ORAS_SCRIPT).unwrap();
    let out = Command::new("python3")
        .current_dir(w)
        .env("HOME", w)
        .args(["oras_check.py", &host, &ci, "api/server", &subject, &size])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value =
        serde_json::from_slice(out.stdout.rsplit(|b| *b == b'\n').find(|l| !l.is_empty()).unwrap()).unwrap();
    assert_eq!(report["subject_header"], subject.as_str());
    assert_eq!(report["filters"], "artifactType");
    let referrers = report["referrers"]["manifests"].as_array().unwrap();
    assert_eq!(referrers.len(), 1, "{report}");
    assert_eq!(referrers[0]["artifactType"], "application/vnd.example.sbom.v1");
    assert_eq!(referrers[0]["digest"], report["digest"]);
    assert_eq!(report["pulled"][0], "{\"packages\": []}");
    // A filter for another type finds nothing.
    let res = call(
        &server,
        Some(&ci),
        Method::GET,
        &format!("/v2/api/server/referrers/{subject}?artifactType=application/x-other"),
        &[],
        vec![],
    )
    .await;
    let index: Value = res.json().await.unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 0);
}

const ORAS_SCRIPT: &str = r#"
"""Pushes an artifact with an artifactType and a subject through oras-py,
lists the subject's referrers and pulls the artifact back."""
import json, os, sys

import oras.client
import oras.oci

host, token, repo, subject, size = sys.argv[1:6]
client = oras.client.OrasClient(hostname=host, insecure=True)
client.auth.set_basic_auth("x", token)
with open("sbom.json", "w") as f:
    f.write('{"packages": []}')
with open("config.json", "w") as f:
    f.write("{}")
pushed = client.push(
    target=f"{host}/{repo}:sbom",
    files=["sbom.json:application/spdx+json"],
    manifest_config="config.json:application/vnd.example.sbom.v1",
    subject=oras.oci.Subject(mediaType="application/vnd.oci.image.manifest.v1+json", digest=subject, size=int(size)),
    quiet=True,
)
digest = pushed.headers["Docker-Content-Digest"]
refs = client.do_request(
    f"http://{host}/v2/{repo}/referrers/{subject}?artifactType=application/vnd.example.sbom.v1", "GET"
)
os.makedirs("out", exist_ok=True)
files = client.pull(target=f"{host}/{repo}@{digest}", outdir="out")
print(json.dumps({
    "digest": digest,
    "subject_header": pushed.headers.get("OCI-Subject"),
    "referrers": refs.json(),
    "filters": refs.headers.get("OCI-Filters-Applied"),
    "pulled": [open(f).read() for f in files],
}))
"#;

/// Uploads a blob in one request; returns its digest.
async fn upload(server: &TestServer, token: &str, repo: &str, bytes: &[u8]) -> String {
    let digest = crate::support::digest_of(bytes).to_string();
    let res = call(
        server,
        Some(token),
        Method::POST,
        &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
        &[],
        bytes.to_vec(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    digest
}

fn image_manifest(config: &str, config_size: usize, layers: &[(&str, usize)]) -> Vec<u8> {
    let layers: Vec<Value> = layers
        .iter()
        .map(
            |(d, s)| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s}),
        )
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": layers,
    }))
    .unwrap()
}

const MANIFEST_TYPE: (&str, &str) = ("content-type", "application/vnd.oci.image.manifest.v1+json");

async fn registry_refuses_bad_input_and_stores_nothing(backend: Backend) {
    let server = TestServer::start_with(backend, &[]).await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    std::fs::write(w.join("p.toml"), PIPELINE).unwrap();
    server.tug(w, &["pipeline", "apply", "-f", "p.toml"]).ok();
    let ci = token(&server, w, "ci", "ci", Some("api"));
    let t = Some(ci.as_str());
    let repo = "api/server";

    // No credentials: a challenge naming the token endpoint and the scope.
    let res = call(&server, None, Method::GET, "/v2/api/server/tags/list", &[], vec![]).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let challenge = res.headers()["www-authenticate"].to_str().unwrap().to_string();
    assert!(
        challenge.starts_with("Bearer realm=\"http://")
            && challenge.contains("/v2/token\"")
            && challenge.contains("service=\"tugboat\"")
            && challenge.contains("scope=\"repository:api/server:pull\""),
        "{challenge}"
    );
    assert_eq!(code(res).await, "UNAUTHORIZED");
    let res = call(&server, t, Method::GET, "/v2/", &[], vec![]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["docker-distribution-api-version"], "registry/2.0");

    // The token flow: Basic credentials for a bearer token that works.
    let res = call(
        &server,
        t,
        Method::GET,
        "/v2/token?service=tugboat&scope=repository:api/server:pull,push",
        &[],
        vec![],
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["token"], body["access_token"]);
    assert!(body["expires_in"].as_u64().unwrap() > 0);
    let bearer = body["token"].as_str().unwrap().to_string();
    let res = reqwest::Client::new()
        .get(format!("{}/v2/api/server/tags/list", server.url))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = reqwest::Client::new()
        .get(format!("{}/v2/api/other/tags/list", server.url))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "the token names its repositories"
    );
    let res = reqwest::Client::new()
        .get(format!("{}/v2/api/server/tags/list", server.url))
        .bearer_auth(format!("{bearer}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "a forged token is refused");
    let res = call(
        &server,
        Some("tug_wrong"),
        Method::GET,
        "/v2/token?scope=repository:api/server:pull",
        &[],
        vec![],
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // A token scoped to another service is denied.
    server.tug(w, &["service", "create", "web"]).ok();
    let web = token(&server, w, "web", "ci", Some("web"));
    let res = call(
        &server,
        Some(&web),
        Method::POST,
        "/v2/api/server/blobs/uploads/",
        &[],
        vec![],
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(code(res).await, "DENIED");

    // Names and tags.
    for bad in ["API/server", "api/../x", "api", "api/Server"] {
        let res = call(&server, t, Method::GET, &format!("/v2/{bad}/tags/list"), &[], vec![]).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(code(res).await, "NAME_INVALID", "{bad}");
    }
    let res = call(
        &server,
        Some(&server.admin_token),
        Method::GET,
        "/v2/nothing/server/tags/list",
        &[],
        vec![],
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(code(res).await, "NAME_UNKNOWN");

    let config = br#"{"os":"linux","architecture":"arm64"}"#;
    let config_digest = upload(&server, &ci, repo, config).await;
    let layer = vec![7u8; 5000];
    let layer_digest = upload(&server, &ci, repo, &layer).await;
    let good = image_manifest(&config_digest, config.len(), &[(&layer_digest, layer.len())]);

    let res = call(
        &server,
        t,
        Method::PUT,
        "/v2/api/server/manifests/.bad",
        &[MANIFEST_TYPE],
        good.clone(),
    )
    .await;
    assert_eq!(code(res).await, "TAG_INVALID");

    // A manifest naming a blob the store lacks.
    let missing = crate::support::digest_of(b"never uploaded").to_string();
    let dangling = image_manifest(&config_digest, config.len(), &[(&missing, 14)]);
    let res = call(
        &server,
        t,
        Method::PUT,
        "/v2/api/server/manifests/dangling",
        &[MANIFEST_TYPE],
        dangling,
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(code(res).await, "MANIFEST_BLOB_UNKNOWN");
    // Not JSON.
    let res = call(
        &server,
        t,
        Method::PUT,
        "/v2/api/server/manifests/broken",
        &[MANIFEST_TYPE],
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(code(res).await, "MANIFEST_INVALID");
    // Larger than 4 MiB.
    let mut huge = good.clone();
    huge.extend(std::iter::repeat_n(b' ', 4 << 20));
    let res = call(
        &server,
        t,
        Method::PUT,
        "/v2/api/server/manifests/huge",
        &[MANIFEST_TYPE],
        huge,
    )
    .await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code(res).await, "SIZE_INVALID");
    // A digest that is not the manifest's.
    let res = call(
        &server,
        t,
        Method::PUT,
        &format!("/v2/api/server/manifests/{missing}"),
        &[MANIFEST_TYPE],
        good.clone(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(code(res).await, "DIGEST_INVALID");
    let good_digest = crate::support::digest_of(&good).to_string();
    for (reference, name) in [
        ("dangling", "dangling"),
        ("broken", "broken"),
        ("huge", "huge"),
        (good_digest.as_str(), "digest"),
    ] {
        let res = call(
            &server,
            t,
            Method::GET,
            &format!("/v2/api/server/manifests/{reference}"),
            &[],
            vec![],
        )
        .await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{name} was not stored");
        assert_eq!(code(res).await, "MANIFEST_UNKNOWN");
    }

    // Uploads: a wrong digest stores nothing; chunks must come in order.
    let res = call(&server, t, Method::POST, "/v2/api/server/blobs/uploads/", &[], vec![]).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let location = res.headers()["location"].to_str().unwrap().to_string();
    let res = call(
        &server,
        t,
        Method::PATCH,
        &location,
        &[("content-range", "0-2")],
        b"abc".to_vec(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(res.headers()["range"], "0-2");
    let res = call(
        &server,
        t,
        Method::PATCH,
        &location,
        &[("content-range", "5-7")],
        b"xyz".to_vec(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(res.headers()["range"], "0-2");
    assert_eq!(code(res).await, "RANGE_INVALID");
    let res = call(&server, t, Method::GET, &location, &[], vec![]).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(res.headers()["range"], "0-2");
    let res = call(
        &server,
        t,
        Method::PATCH,
        &location,
        &[("content-range", "3-5")],
        b"def".to_vec(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let wrong = crate::support::digest_of(b"abc").to_string();
    let res = call(
        &server,
        t,
        Method::PUT,
        &format!("{location}?digest={wrong}"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(code(res).await, "DIGEST_INVALID");
    let res = call(&server, t, Method::GET, &location, &[], vec![]).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND, "the failed session is gone");
    for d in [wrong.clone(), crate::support::digest_of(b"abcdef").to_string()] {
        let res = call(
            &server,
            t,
            Method::HEAD,
            &format!("/v2/api/server/blobs/{d}"),
            &[],
            vec![],
        )
        .await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{d} was not stored");
    }
    // A chunked upload that ends well.
    let res = call(&server, t, Method::POST, "/v2/api/server/blobs/uploads/", &[], vec![]).await;
    let location = res.headers()["location"].to_str().unwrap().to_string();
    call(
        &server,
        t,
        Method::PATCH,
        &location,
        &[("content-range", "0-2")],
        b"abc".to_vec(),
    )
    .await;
    let whole = crate::support::digest_of(b"abcdef").to_string();
    let res = call(
        &server,
        t,
        Method::PUT,
        &format!("{location}?digest={whole}"),
        &[],
        b"def".to_vec(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["docker-content-digest"], whole.as_str());

    // Ranges of a blob, and past its end.
    let path = format!("/v2/api/server/blobs/{whole}");
    let res = call(&server, t, Method::GET, &path, &[("range", "bytes=2-3")], vec![]).await;
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(res.headers()["content-range"], "bytes 2-3/6");
    assert_eq!(res.bytes().await.unwrap().as_ref(), b"cd");
    let res = call(&server, t, Method::GET, &path, &[("range", "bytes=6-")], vec![]).await;
    assert_eq!(res.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(res.headers()["content-range"], "bytes */6");
    assert_eq!(code(res).await, "RANGE_INVALID");

    // Cross-repository mounts: a blob the caller may read elsewhere is
    // mounted (201, nothing copied); one from a repository it may not
    // read is not (202, a new session to upload it into).
    let res = call(
        &server,
        t,
        Method::POST,
        &format!("/v2/api/other/blobs/uploads/?mount={whole}&from=api/server"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(
        res.headers()["location"],
        format!("/v2/api/other/blobs/{whole}").as_str()
    );
    let secret = b"web's own layer".to_vec();
    let web_blob = upload(&server, &web, "web/app", &secret).await;
    let res = call(
        &server,
        t,
        Method::POST,
        &format!("/v2/api/other/blobs/uploads/?mount={web_blob}&from=web/app"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(
        res.status(),
        StatusCode::ACCEPTED,
        "no mount from a service out of the token's scope"
    );
    assert!(res.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/v2/api/other/blobs/uploads/"));

    // The OAuth2 form of the token endpoint.
    let res = reqwest::Client::new()
        .post(format!("{}/v2/token", server.url))
        .form(&[
            ("grant_type", "password"),
            ("username", "ci"),
            ("password", ci.as_str()),
            ("service", "tugboat"),
            ("scope", "repository:api/server:pull"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert!(body["access_token"].as_str().is_some_and(|t| !t.is_empty()));

    // Pushing into a sealed build, or to an environment's tag, is denied.
    let sealed = draft(&server, w, "3.0.0");
    let res = call(
        &server,
        t,
        Method::PUT,
        &format!("/v2/api/server/manifests/build-{sealed}"),
        &[MANIFEST_TYPE],
        good.clone(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    server.tug(w, &["build", "seal", &sealed]).ok();
    let other = image_manifest(&config_digest, config.len(), &[]);
    let res = call(
        &server,
        t,
        Method::PUT,
        &format!("/v2/api/server/manifests/build-{sealed}"),
        &[MANIFEST_TYPE],
        other.clone(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(code(res).await, "DENIED");
    for tag in ["dev", "3.0.0"] {
        let res = call(
            &server,
            t,
            Method::PUT,
            &format!("/v2/api/server/manifests/{tag}"),
            &[MANIFEST_TYPE],
            other.clone(),
        )
        .await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{tag}");
        assert_eq!(code(res).await, "DENIED", "{tag}");
    }
    let other_digest = crate::support::digest_of(&other).to_string();
    let res = call(
        &server,
        t,
        Method::GET,
        &format!("/v2/api/server/manifests/{other_digest}"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(
        res.status(),
        StatusCode::NOT_FOUND,
        "nothing of the refused pushes was stored"
    );
    let shown = server.tug(w, &["build", "show", &sealed, "--output", "json"]).json();
    assert_eq!(shown["artifacts"].as_array().unwrap().len(), 1);
    assert_eq!(shown["artifacts"][0]["platform"], "linux/arm64");
    let tags: Value = call(&server, t, Method::GET, "/v2/api/server/tags/list", &[], vec![])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        tags["tags"],
        serde_json::json!(["3.0.0", format!("build-{sealed}")]),
        "no tag of a refused push"
    );

    // Free tags, pagination, deletes; gc forgets untagged manifests.
    for tag in ["a", "b", "c"] {
        let res = call(
            &server,
            t,
            Method::PUT,
            &format!("/v2/api/server/manifests/{tag}"),
            &[MANIFEST_TYPE],
            other.clone(),
        )
        .await;
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    let res = call(&server, t, Method::GET, "/v2/api/server/tags/list?n=2", &[], vec![]).await;
    let link = res.headers()["link"].to_str().unwrap().to_string();
    assert_eq!(link, "</v2/api/server/tags/list?n=2&last=a>; rel=\"next\"");
    let page: Value = res.json().await.unwrap();
    assert_eq!(page["tags"], serde_json::json!(["3.0.0", "a"]));
    let page: Value = call(
        &server,
        t,
        Method::GET,
        "/v2/api/server/tags/list?n=2&last=a",
        &[],
        vec![],
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(page["tags"], serde_json::json!(["b", format!("build-{sealed}")]));
    for tag in ["a", "b"] {
        let res = call(
            &server,
            t,
            Method::DELETE,
            &format!("/v2/api/server/manifests/{tag}"),
            &[],
            vec![],
        )
        .await;
        assert_eq!(res.status(), StatusCode::ACCEPTED);
    }
    let res = call(
        &server,
        t,
        Method::DELETE,
        &format!("/v2/api/server/manifests/{good_digest}"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(code(res).await, "DENIED", "a build's image goes with its build");
    let res = call(
        &server,
        t,
        Method::DELETE,
        &format!("/v2/api/server/manifests/{other_digest}"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let res = call(&server, t, Method::GET, "/v2/api/server/manifests/c", &[], vec![]).await;
    assert_eq!(
        res.status(),
        StatusCode::NOT_FOUND,
        "deleting the manifest removed its tags"
    );
    server.tug(w, &["gc", "--grace", "0"]).ok();
    let res = call(
        &server,
        t,
        Method::HEAD,
        &format!("/v2/api/server/blobs/{layer_digest}"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK, "gc keeps the sealed build's layers");
    let res = call(&server, t, Method::GET, "/v2/api/server/manifests/3.0.0", &[], vec![]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["docker-content-digest"], good_digest.as_str());
    assert_eq!(res.headers()["content-type"], MANIFEST_TYPE.1);
    assert_eq!(res.bytes().await.unwrap().as_ref(), good.as_slice(), "the exact bytes");
    let res = call(&server, t, Method::HEAD, "/v2/api/server/manifests/3.0.0", &[], vec![]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["docker-content-digest"], good_digest.as_str());
    assert_eq!(res.headers()["content-length"], good.len().to_string().as_str());
}

/// A manifest pushed to a draft build's tag while the build is sealed:
/// either the push lands first and the sealed build has the image, or the
/// seal does and the push is denied. Never an image added after the seal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_push_racing_a_seal_lands_before_it_or_not_at_all() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    let ci = token(&server, w, "ci", "ci", Some("api"));
    let config = br#"{"os":"linux","architecture":"amd64"}"#;
    let config_digest = upload(&server, &ci, "api/one", config).await;
    let manifest = image_manifest(&config_digest, config.len(), &[]);
    let (mut landed, mut denied) = (0, 0);
    for round in 0..8 {
        let build = draft(&server, w, &format!("1.0.{round}"));
        let res = call(
            &server,
            Some(&ci),
            Method::PUT,
            &format!("/v2/api/one/manifests/build-{build}"),
            &[MANIFEST_TYPE],
            manifest.clone(),
        )
        .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        let path = format!("/v2/api/two/manifests/build-{build}");
        let push = call(
            &server,
            Some(&ci),
            Method::PUT,
            &path,
            &[MANIFEST_TYPE],
            manifest.clone(),
        );
        let seal = server.http(Method::POST, &format!("/v1/builds/{build}/seal")).send();
        let (push, seal) = tokio::join!(push, seal);
        assert!(seal.unwrap().status().is_success());
        let status = push.status();
        let shown = server.tug(w, &["build", "show", &build, "--output", "json"]).json();
        let names: Vec<&str> = shown["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        let manifest_text = server
            .http(Method::GET, &format!("/v1/builds/{build}/manifest"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if status == StatusCode::CREATED {
            landed += 1;
            assert_eq!(names, ["one", "two"]);
            assert!(
                manifest_text.contains("\"two\""),
                "the sealed manifest has the image: {manifest_text}"
            );
        } else {
            denied += 1;
            assert_eq!(status, StatusCode::FORBIDDEN);
            assert_eq!(code(push).await, "DENIED");
            assert_eq!(names, ["one"]);
            assert!(!manifest_text.contains("\"two\""), "{manifest_text}");
        }
    }
    assert_eq!(landed + denied, 8);
}
on_both_backends!(registry_refuses_bad_input_and_stores_nothing);

/// A multi-platform image: its child manifests pushed by digest, then the
/// index to a draft build's tag. skopeo copies all of it out, before and
/// after a gc, and an index naming a manifest never pushed is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_is_a_builds_image_with_its_children() {
    let server = TestServer::start().await;
    let w = tempfile::tempdir().unwrap();
    let w = w.path();
    server.tug(w, &["service", "create", "api"]).ok();
    let ci = token(&server, w, "ci", "ci", Some("api"));
    let t = Some(ci.as_str());
    let repo = "api/server";
    let layer = vec![3u8; 4000];
    let layer_digest = upload(&server, &ci, repo, &layer).await;
    let mut children = Vec::new();
    for arch in ["amd64", "arm64"] {
        let config = format!(r#"{{"os":"linux","architecture":"{arch}"}}"#).into_bytes();
        let config_digest = upload(&server, &ci, repo, &config).await;
        let manifest = image_manifest(&config_digest, config.len(), &[(&layer_digest, layer.len())]);
        let digest = crate::support::digest_of(&manifest).to_string();
        let res = call(
            &server,
            t,
            Method::PUT,
            &format!("/v2/{repo}/manifests/{digest}"),
            &[MANIFEST_TYPE],
            manifest.clone(),
        )
        .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        children.push(serde_json::json!({
            "mediaType": MANIFEST_TYPE.1, "digest": digest, "size": manifest.len(),
            "platform": {"os": "linux", "architecture": arch},
        }));
    }
    let index_type = ("content-type", "application/vnd.oci.image.index.v1+json");
    // What the image was made from, as `tug push --derived-from` says it
    // for files: an annotation of the index.
    let index = |children: &[Value]| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": index_type.1, "manifests": children,
            "annotations": {"dev.tugboat.derived-from": layer_digest},
        }))
        .unwrap()
    };
    let build = draft(&server, w, "1.0.0");
    let mut dangling = children.clone();
    dangling.push(serde_json::json!({
        "mediaType": MANIFEST_TYPE.1, "digest": crate::support::digest_of(b"x").to_string(), "size": 1,
    }));
    let res = call(
        &server,
        t,
        Method::PUT,
        &format!("/v2/{repo}/manifests/build-{build}"),
        &[index_type],
        index(&dangling),
    )
    .await;
    assert_eq!(code(res).await, "MANIFEST_BLOB_UNKNOWN");
    let res = call(
        &server,
        t,
        Method::PUT,
        &format!("/v2/{repo}/manifests/build-{build}"),
        &[index_type],
        index(&children),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let shown = server.tug(w, &["build", "show", &build, "--output", "json"]).json();
    assert_eq!(shown["artifacts"][0]["kind"], "oci");
    assert!(shown["artifacts"][0]["platform"].is_null(), "{shown}");
    assert_eq!(
        shown["artifacts"][0]["derived_from"],
        serde_json::json!([layer_digest]),
        "{shown}"
    );
    server.tug(w, &["build", "seal", &build]).ok();
    server.tug(w, &["gc", "--grace", "0"]).ok();
    let host = host(&server);
    skopeo_ok(
        w,
        &[
            "copy",
            "--all",
            "--src-tls-verify=false",
            "--src-creds",
            &format!("x:{ci}"),
            &format!("docker://{host}/{repo}:1.0.0"),
            "oci:all:x",
        ],
    );
    let copied = std::fs::read_dir(w.join("all/blobs/sha256")).unwrap().count();
    assert_eq!(copied, 6, "the index, two manifests, two configs and the layer");
}

/// A chunked upload's bytes are staged on the server that started it: a
/// chunk sent to another server of the same database is told the session
/// is unknown there (not an internal error), the first server goes on with
/// it, and any server may cancel it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_sent_to_another_server_is_refused_as_an_unknown_session() {
    let first = TestServer::start_with(Backend::postgres_s3().await, &[]).await;
    let second = first.sibling().await;
    let w = tempfile::tempdir().unwrap();
    std::fs::write(w.path().join("pipeline.toml"), PIPELINE).unwrap();
    first.tug(w.path(), &["service", "create", "api"]).ok();
    first.tug(w.path(), &["pipeline", "apply", "-f", "pipeline.toml"]).ok();
    let ci = token(&first, w.path(), "ci", "ci", None);

    let res = call(
        &first,
        Some(&ci),
        Method::POST,
        "/v2/api/app/blobs/uploads/",
        &[],
        Vec::new(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let session = res.headers()["location"].to_str().unwrap().to_string();
    let range = [("content-range", "0-4"), ("content-type", "application/octet-stream")];

    let res = call(&second, Some(&ci), Method::PATCH, &session, &range, b"hello".to_vec()).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "BLOB_UPLOAD_UNKNOWN", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("another server"),
        "{body}"
    );
    let res = call(&second, Some(&ci), Method::GET, &session, &[], Vec::new()).await;
    assert_eq!(code(res).await, "BLOB_UPLOAD_UNKNOWN");

    let res = call(&first, Some(&ci), Method::PATCH, &session, &range, b"hello".to_vec()).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(res.headers()["range"], "0-4");

    let res = call(&second, Some(&ci), Method::DELETE, &session, &[], Vec::new()).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = call(&first, Some(&ci), Method::GET, &session, &[], Vec::new()).await;
    assert_eq!(code(res).await, "BLOB_UPLOAD_UNKNOWN");
}
