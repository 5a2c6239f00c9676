//! The public release catalog through the real server, read as a stranger
//! would read it (no token, `reqwest` and `curl`): the JSON catalog of the
//! versions public environments ran, its order, pages and changelogs; the
//! stable download links with their HTTP caching and range semantics; the
//! HTML page, parsed; and artifacts of kind `reference`, which are listed
//! everywhere and downloaded nowhere.

use std::path::Path;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{Backend, TestServer};

const PIPELINE: &str = r#"
service = "api"

[[environments]]
name = "dev"

[[environments]]
name = "stable"
upstream = "dev"
public = true

[[environments]]
name = "sec"
private = true
"#;

const REPO: &str = "https://git.example.com/acme/api.git";

/// A server with the service `api` and its pipeline, and a working
/// directory for the CLI.
async fn started(backend: Backend) -> (TestServer, tempfile::TempDir) {
    let server = TestServer::start_with(backend, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path();
    server.tug(w, &["service", "create", "api"]).ok();
    std::fs::write(w.join("p.toml"), PIPELINE).unwrap();
    server.tug(w, &["pipeline", "apply", "-f", "p.toml"]).ok();
    (server, dir)
}

/// Creates, fills and seals a build of `api` with files (name, body), a
/// commit and a message; returns its id.
fn build(
    server: &TestServer,
    w: &Path,
    version: &str,
    commit: &str,
    message: &str,
    files: &[(&str, &[u8])],
    extra: &[&str],
) -> String {
    let mut args = vec![
        "build",
        "create",
        "--service",
        "api",
        "--version",
        version,
        "--commit",
        commit,
        "--message",
        message,
        "--repo",
        REPO,
        "--branch",
        "main",
        "--author",
        "Ada",
        "--output",
        "json",
    ];
    args.extend_from_slice(extra);
    let id = server.tug(w, &args).json()["id"].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    for (i, (name, body)) in files.iter().enumerate() {
        let path = dir.path().join(format!("f{i}"));
        std::fs::write(&path, body).unwrap();
        server
            .tug(w, &["push", &id, path.to_str().unwrap(), "--name", name])
            .ok();
    }
    server.tug(w, &["build", "seal", &id]).ok();
    id
}

/// An embargoed build (message "secret fix") running in the private
/// environment; returns its id.
fn embargoed(server: &TestServer, w: &Path, version: &str, commit: &str) -> String {
    let id = build(
        server,
        w,
        version,
        commit,
        "secret fix",
        &[("app.tar.gz", b"secret")],
        &["--embargo"],
    );
    server.tug(w, &["release", "api", "--env", "sec", "--build", &id]).ok();
    id
}

async fn anonymous(server: &TestServer, method: Method, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .request(method, format!("{}{path}", server.url))
        .send()
        .await
        .unwrap()
}

async fn catalog(server: &TestServer, query: &str) -> Value {
    let res = anonymous(server, Method::GET, &format!("/v1/releases/api{query}")).await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

fn versions(c: &Value) -> Vec<&str> {
    c["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect()
}

fn changelog(v: &Value) -> Vec<&str> {
    v["changelog"]["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["version"].as_str().unwrap())
        .collect()
}

const C1: &str = "aaaa111122223333";
const C2: &str = "bbbb111122223333";
const C3: &str = "cccc111122223333";
const C4: &str = "dddd111122223333";
const XSS: &str = "<script>alert(1)</script>";

/// The catalog of one public environment: order, current marks, files with
/// links (a reference without one), source links, changelogs without the
/// embargoed build until its embargo is lifted; the same with a token.
async fn catalog_shows_what_public_environments_ran(backend: Backend) {
    let (server, dir) = started(backend).await;
    let w = dir.path();
    let v1 = build(
        &server,
        w,
        "1.0.0",
        C1,
        "first",
        &[("app.tar.gz", b"app one"), ("linux/amd64/tool", b"tool one")],
        &[],
    );
    server.tug(w, &["release", "api", "--env", "dev", "--build", &v1]).ok();
    server.tug(w, &["promote", "api", "--to", "stable"]).ok();
    let mid = build(&server, w, "1.0.1", C2, XSS, &[("app.tar.gz", b"app mid")], &[]);
    let secret = embargoed(&server, w, "1.0.2", C3);
    let v2 = build(&server, w, "1.1.0", C4, "second", &[("app.tar.gz", b"app two")], &[]);
    server.tug(w, &["release", "api", "--env", "dev", "--build", &v2]).ok();
    server.tug(w, &["promote", "api", "--to", "stable"]).ok();

    let c = catalog(&server, "").await;
    assert_eq!(c["service"], "api");
    assert_eq!(
        c["environments"],
        json!([{"name": "stable", "current": {"version": "1.1.0", "build": v2}}])
    );
    // 1.0.1 was never deployed: not published.
    assert_eq!(versions(&c), ["1.1.0", "1.0.0"]);
    let (new, old) = (&c["versions"][0], &c["versions"][1]);
    assert_eq!(new["environments"][0]["name"], "stable");
    assert_eq!(new["environments"][0]["current"], true);
    assert_eq!(old["environments"][0]["current"], false);
    assert_eq!(old["yanked"], false);
    let files: Vec<(&str, &str)> = old["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap(), a["download_url"].as_str().unwrap()))
        .collect();
    assert_eq!(
        files,
        [
            ("app.tar.gz", "/dl/api/1.0.0/app.tar.gz"),
            ("linux/amd64/tool", "/dl/api/1.0.0/linux/amd64/tool")
        ]
    );
    assert_eq!(old["artifacts"][0]["size"], 7);
    assert_eq!(
        old["artifacts"][0]["digest"],
        crate::support::digest_of(b"app one").to_string()
    );
    assert_eq!(
        old["source"]["commit_url"],
        format!("https://git.example.com/acme/api/commit/{C1}")
    );
    assert_eq!(old["source"]["branch"], "main");
    // The changelog: the builds since the previous published version,
    // without the embargoed one.
    assert_eq!(changelog(new), ["1.1.0", "1.0.1"]);
    assert_eq!(new["changelog"]["previous"], "1.0.0");
    assert_eq!(
        new["changelog"]["compare_url"],
        format!("https://git.example.com/acme/api/compare/{C1}...{C4}")
    );
    assert_eq!(new["changelog"]["builds"][1]["message"], XSS);
    assert_eq!(new["changelog"]["builds"][1]["author"], "Ada");
    assert_eq!(new["changelog"]["builds"][1]["build"], mid.as_str());
    assert_eq!(changelog(old), ["1.0.0"]);
    assert_eq!(old["changelog"]["previous"], Value::Null);
    let text = c.to_string();
    for hidden in ["secret fix", secret.as_str(), "1.0.2", "sec\""] {
        assert!(!text.contains(hidden), "{hidden} in {text}");
    }
    // A token changes nothing: this is the public view.
    let with_token: Value = server
        .http(Method::GET, "/v1/releases/api")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(with_token, c);
    // One environment, by name; a non-public one does not exist here.
    assert_eq!(versions(&catalog(&server, "?env=stable").await), ["1.1.0", "1.0.0"]);
    for path in [
        "/v1/releases/api?env=dev",
        "/v1/releases/api?env=sec",
        "/v1/releases/api?env=nope",
        "/v1/releases/nope",
    ] {
        let res = anonymous(&server, Method::GET, path).await;
        assert_eq!(res.status(), 404, "{path}");
        let body: Value = res.json().await.unwrap();
        assert!(
            body["code"].is_string() && body["message"].is_string(),
            "{path}: {body}"
        );
    }

    // Once its embargo is lifted, the build is part of the changelog.
    server.tug(w, &["build", "unembargo", &secret]).ok();
    let c = catalog(&server, "").await;
    assert_eq!(changelog(&c["versions"][0]), ["1.1.0", "1.0.2", "1.0.1"]);

    // A yanked version stays listed, marked.
    server.tug(w, &["build", "yank", &v1]).ok();
    let c = catalog(&server, "").await;
    assert_eq!(c["versions"][1]["yanked"], true);
}
on_both_backends!(catalog_shows_what_public_environments_ran);

/// Pages of two, with a cursor that keeps its place while new versions are
/// published above it; bad limits and cursors are 400s.
async fn pages_stay_in_place_while_versions_are_published(backend: Backend) {
    let (server, dir) = started(backend).await;
    let w = dir.path();
    let publish = |v: &str, commit: &str| {
        let id = build(&server, w, v, commit, v, &[("app", v.as_bytes())], &[]);
        server
            .tug(w, &["release", "api", "--env", "stable", "--build", &id])
            .ok();
    };
    for (i, v) in ["1.0.1", "1.0.2", "1.0.3", "1.0.4", "1.0.5"].iter().enumerate() {
        publish(v, &format!("{:x}0000000", i + 1));
    }
    let p1 = catalog(&server, "?limit=2").await;
    assert_eq!(versions(&p1), ["1.0.5", "1.0.4"]);
    let cursor = p1["next_cursor"].as_str().unwrap().to_string();
    publish("1.0.6", "f0000000");
    let p2 = catalog(&server, &format!("?limit=2&cursor={cursor}")).await;
    assert_eq!(versions(&p2), ["1.0.3", "1.0.2"]);
    // The last of a page knows the version before it, on the next page.
    assert_eq!(p2["versions"][1]["changelog"]["previous"], "1.0.1");
    let p3 = catalog(
        &server,
        &format!("?limit=2&cursor={}", p2["next_cursor"].as_str().unwrap()),
    )
    .await;
    assert_eq!(versions(&p3), ["1.0.1"]);
    assert_eq!(p3["next_cursor"], Value::Null);
    assert_eq!(versions(&catalog(&server, "?limit=2").await), ["1.0.6", "1.0.5"]);
    for q in ["?limit=0", "?limit=101", "?cursor=nonsense", "?limit=x", "?other=1"] {
        let res = anonymous(&server, Method::GET, &format!("/v1/releases/api{q}")).await;
        assert_eq!(res.status(), 400, "{q}");
        let body: Value = res.json().await.unwrap();
        assert!(body["message"].is_string(), "{q}: {body}");
    }
}
on_both_backends!(pages_stay_in_place_while_versions_are_published);

fn header<'a>(res: &'a reqwest::Response, name: &str) -> &'a str {
    res.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

/// Stable links: whole and ranged downloads, HEAD, ETag and
/// If-None-Match, file names, cache headers; `latest` follows promotions;
/// nothing unpublished, non-public, embargoed or outside the build is
/// served, whatever the path says.
async fn download_links_serve_published_files(backend: Backend) {
    let (server, dir) = started(backend).await;
    let w = dir.path();
    let body = b"0123456789 release one".to_vec();
    let v1 = build(
        &server,
        w,
        "1.0.0",
        C1,
        "one",
        &[("app.tar.gz", &body), ("linux/amd64/tool", b"tool")],
        &[],
    );
    server.tug(w, &["release", "api", "--env", "dev", "--build", &v1]).ok();
    server.tug(w, &["promote", "api", "--to", "stable"]).ok();
    let etag = format!("\"{}\"", crate::support::digest_of(&body));

    let res = anonymous(&server, Method::GET, "/dl/api/1.0.0/app.tar.gz").await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "etag"), etag);
    assert_eq!(header(&res, "cache-control"), "public, max-age=31536000, immutable");
    assert_eq!(header(&res, "accept-ranges"), "bytes");
    assert_eq!(header(&res, "content-length"), body.len().to_string());
    assert!(header(&res, "content-disposition").starts_with("attachment; filename=\"app.tar.gz\""));
    assert_eq!(res.bytes().await.unwrap(), body);
    // A leading v names the same version.
    assert_eq!(
        anonymous(&server, Method::GET, "/dl/api/v1.0.0/app.tar.gz")
            .await
            .status(),
        200
    );

    let head = anonymous(&server, Method::HEAD, "/dl/api/1.0.0/app.tar.gz").await;
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "content-length"), body.len().to_string());
    assert_eq!(header(&head, "etag"), etag);
    assert!(head.bytes().await.unwrap().is_empty());

    let client = reqwest::Client::new();
    let url = format!("{}/dl/api/1.0.0/app.tar.gz", server.url);
    let part = client.get(&url).header("Range", "bytes=2-5").send().await.unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&part, "content-range"), format!("bytes 2-5/{}", body.len()));
    assert_eq!(part.bytes().await.unwrap(), &body[2..6]);
    let tail = client.get(&url).header("Range", "bytes=-3").send().await.unwrap();
    assert_eq!(tail.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail.bytes().await.unwrap(), &body[body.len() - 3..]);
    let past = client.get(&url).header("Range", "bytes=999-").send().await.unwrap();
    assert_eq!(past.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&past, "content-range"), format!("bytes */{}", body.len()));
    let cached = client.get(&url).header("If-None-Match", &etag).send().await.unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header(&cached, "etag"), etag);
    let other = client
        .get(&url)
        .header("If-None-Match", "\"sha256:00\"")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);

    // Names with directories.
    let tool = anonymous(&server, Method::GET, "/dl/api/1.0.0/linux/amd64/tool").await;
    assert_eq!(tool.status(), 200);
    assert!(header(&tool, "content-disposition").starts_with("attachment; filename=\"tool\""));

    // latest follows what the public environment runs.
    let latest = anonymous(&server, Method::GET, "/dl/api/stable/latest/app.tar.gz").await;
    assert_eq!(latest.status(), 200);
    assert_eq!(header(&latest, "cache-control"), "public, max-age=60");
    assert_eq!(latest.bytes().await.unwrap(), body);
    let v2 = build(&server, w, "1.1.0", C2, "two", &[("app.tar.gz", b"release two")], &[]);
    server.tug(w, &["release", "api", "--env", "dev", "--build", &v2]).ok();
    assert_eq!(
        anonymous(&server, Method::GET, "/dl/api/stable/latest/app.tar.gz")
            .await
            .bytes()
            .await
            .unwrap(),
        body,
        "dev is not public: stable still runs 1.0.0"
    );
    assert_eq!(
        anonymous(&server, Method::GET, "/dl/api/1.1.0/app.tar.gz")
            .await
            .status(),
        404
    );
    server.tug(w, &["promote", "api", "--to", "stable"]).ok();
    assert_eq!(
        anonymous(&server, Method::GET, "/dl/api/stable/latest/app.tar.gz")
            .await
            .bytes()
            .await
            .unwrap(),
        &b"release two"[..]
    );
    assert_eq!(
        anonymous(&server, Method::GET, "/dl/api/1.1.0/app.tar.gz")
            .await
            .status(),
        200
    );
    // The older version's link still works.
    assert_eq!(
        anonymous(&server, Method::GET, "/dl/api/1.0.0/app.tar.gz")
            .await
            .bytes()
            .await
            .unwrap(),
        body
    );

    // What is not published is not found, worded as JSON.
    embargoed(&server, w, "1.2.0", C3);
    for path in [
        "/dl/api/1.2.0/app.tar.gz",
        "/dl/api/1.0.0/missing",
        "/dl/api/9.9.9/app.tar.gz",
        "/dl/api/dev/latest/app.tar.gz",
        "/dl/api/sec/latest/app.tar.gz",
        "/dl/api/stable/other/app.tar.gz",
        "/dl/nope/1.0.0/app.tar.gz",
    ] {
        let res = anonymous(&server, Method::GET, path).await;
        assert_eq!(res.status(), 404, "{path}");
        let b: Value = res.json().await.unwrap();
        assert!(b["code"].is_string(), "{path}: {b}");
    }
    // Paths that climb out are refused before anything is looked up
    // (curl --path-as-is sends them as written).
    for path in [
        "/dl/api/1.0.0/../../../etc/passwd",
        "/dl/api/1.0.0/..%2F..%2Fetc%2Fpasswd",
        "/dl/api/1.0.0/%2e%2e/%2e%2e/etc/passwd",
        "/dl/api/1.0.0/linux//tool",
    ] {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "--path-as-is",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                &format!("{}{path}", server.url),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap();
        assert!(code == "400" || code == "404", "{path}: {code} {body}");
        let b: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{path}: {body}"));
        assert!(b["code"].is_string(), "{path}: {b}");
        assert!(!body.contains("root:"), "{path}");
    }
}
on_both_backends!(download_links_serve_published_files);

/// Parses an HTML page with Python's html.parser: its links, headings
/// (h2), script elements and text.
fn parse_html(html: &str) -> Value {
    let script = r#"
import json, sys
from html.parser import HTMLParser
class P(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.h2, self.scripts, self.text, self.meta, self.stack = [], [], 0, [], [], []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.stack.append(tag)
        if tag == "a": self.links.append(a.get("href"))
        if tag == "script": self.scripts += 1
        if tag == "meta": self.meta.append(a)
        if tag == "h2": self.h2.append("")
    def handle_endtag(self, tag):
        if self.stack: self.stack.pop()
    def handle_data(self, data):
        self.text.append(data)
        if self.stack and self.stack[-1] == "h2": self.h2[-1] += data
p = P(); p.feed(sys.stdin.read())
print(json.dumps({"links": p.links, "h2": p.h2, "scripts": p.scripts, "text": "".join(p.text), "meta": p.meta}))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(html.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The HTML page lists what the JSON does, escapes what builds carry, and
/// leaves embargoed builds out.
async fn the_html_page_lists_versions_escaped(backend: Backend) {
    let (server, dir) = started(backend).await;
    let w = dir.path();
    let v1 = build(&server, w, "1.0.0", C1, "first", &[("app.tar.gz", b"one")], &[]);
    server
        .tug(w, &["release", "api", "--env", "stable", "--build", &v1])
        .ok();
    let secret = embargoed(&server, w, "1.0.1", C2);
    let v2 = build(&server, w, "1.1.0", C3, XSS, &[("app.tar.gz", b"two")], &[]);
    server
        .tug(w, &["release", "api", "--env", "stable", "--build", &v2])
        .ok();

    let res = anonymous(&server, Method::GET, "/releases/api").await;
    assert_eq!(res.status(), 200);
    assert!(header(&res, "content-type").starts_with("text/html"));
    let html = res.text().await.unwrap();
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{html}");
    let page = parse_html(&html);
    assert_eq!(page["scripts"], 0, "{html}");
    assert!(page["text"].as_str().unwrap().contains(XSS));
    assert_eq!(page["h2"], json!(["Environments", "1.1.0", "1.0.0"]));
    assert!(page["meta"].as_array().unwrap().iter().any(|m| m["name"] == "viewport"));
    let links: Vec<&str> = page["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    for l in ["/dl/api/1.1.0/app.tar.gz", "/dl/api/1.0.0/app.tar.gz"] {
        assert!(links.contains(&l), "{l} in {links:?}");
    }
    assert!(
        links.contains(&format!("https://git.example.com/acme/api/commit/{C3}").as_str()),
        "{links:?}"
    );
    for hidden in ["secret fix", "1.0.1", secret.as_str()] {
        assert!(!html.contains(hidden), "{hidden}");
    }
    // Each link serves its file.
    let res = anonymous(&server, Method::GET, "/dl/api/1.1.0/app.tar.gz").await;
    assert_eq!(res.bytes().await.unwrap(), &b"two"[..]);
}
on_both_backends!(the_html_page_lists_versions_escaped);

/// References: registered from the CLI with their digest, refused when
/// malformed, shown by build show and diff and in the catalog, handed to
/// no agent, pulled by no one, and unknown to gc and fsck.
async fn references_are_listed_and_never_downloaded(backend: Backend) {
    let (server, dir) = started(backend).await;
    let w = dir.path();
    let digest = crate::support::digest_of(b"the image").to_string();
    let draft = |version: &str| {
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
                    "--commit",
                    C1,
                    "--output",
                    "json",
                ],
            )
            .json()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let b1 = draft("1.0.0");
    std::fs::write(w.join("app"), b"app").unwrap();
    server.tug(w, &["push", &b1, "app"]).ok();
    server
        .tug(
            w,
            &[
                "push",
                &b1,
                "--reference",
                "ami=aws:ec2:us-east-1:ami-0abc",
                "--digest",
                &digest,
            ],
        )
        .ok();
    // Bad input names what is wrong.
    let err = server
        .tug(
            w,
            &["push", &b1, "--reference", "img=not an address", "--digest", &digest],
        )
        .fails()
        .to_string();
    assert!(err.contains("reference uri") && err.contains("whitespace"), "{err}");
    let err = server
        .tug(w, &["push", &b1, "--reference", "img=registry.example.com/app"])
        .fails()
        .to_string();
    assert!(err.contains("--digest"), "{err}");
    let err = server
        .tug(
            w,
            &[
                "push",
                &b1,
                "app",
                "--reference",
                "img=registry.example.com/app",
                "--digest",
                &digest,
            ],
        )
        .fails()
        .to_string();
    assert!(err.contains("no file"), "{err}");
    for (spec, field) in [
        (
            json!({"name": "img", "kind": "reference", "size": 0, "digest": digest}),
            "artifacts[img].uri",
        ),
        (
            json!({"name": "img", "kind": "reference", "size": 5, "digest": digest, "uri": "registry.example.com/app"}),
            "artifacts[img].size",
        ),
        (
            json!({"name": "img", "kind": "binary", "size": 0, "digest": digest, "uri": "registry.example.com/app"}),
            "artifacts[img].uri",
        ),
        (
            json!({"name": "img", "kind": "reference", "size": 0, "digest": digest, "uri": "bad\u{7}uri"}),
            "reference uri",
        ),
    ] {
        let res = server
            .http(Method::POST, &format!("/v1/builds/{b1}/artifacts"))
            .json(&json!({"artifacts": [spec]}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{spec}");
        let body: Value = res.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains(field), "{field}: {body}");
    }
    server.tug(w, &["build", "seal", &b1]).ok();
    let shown = server.tug(w, &["build", "show", &b1]).ok().to_string();
    assert!(shown.contains("ami -> aws:ec2:us-east-1:ami-0abc"), "{shown}");
    let json = server.tug(w, &["build", "show", &b1, "--output", "json"]).json();
    let ami = json["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "ami")
        .unwrap()
        .clone();
    assert_eq!(ami["kind"], "reference");
    assert_eq!(ami["size"], 0);
    assert_eq!(ami["uri"], "aws:ec2:us-east-1:ami-0abc");
    assert_eq!(ami["digest"], digest);

    // A second build moves the reference: diff names the old and new uri.
    let b2 = draft("1.1.0");
    server.tug(w, &["push", &b2, "app"]).ok();
    server
        .tug(
            w,
            &[
                "push",
                &b2,
                "--reference",
                "ami=aws:ec2:us-east-1:ami-0def",
                "--digest",
                &digest,
                "--seal",
            ],
        )
        .ok();
    let diff = server
        .tug(w, &["diff", "api", "--from", &b1, "--to", &b2])
        .ok()
        .to_string();
    assert!(
        diff.contains("ami: aws:ec2:us-east-1:ami-0abc -> aws:ec2:us-east-1:ami-0def"),
        "{diff}"
    );
    let diff = server
        .tug(w, &["diff", "api", "--from", &b1, "--to", &b2, "--output", "json"])
        .json();
    assert_eq!(diff["changes"][0]["new_uri"], "aws:ec2:us-east-1:ami-0def");

    // Agents are handed files only.
    server
        .tug(w, &["release", "api", "--env", "stable", "--build", &b1])
        .ok();
    let channel: Value = server
        .http(Method::GET, "/v1/channels/api/stable?platform=linux/amd64")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = channel["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["app"], "{channel}");
    // tug pull fetches the files and says a reference is not one.
    let dest = tempfile::tempdir().unwrap();
    server
        .tug(w, &["pull", &b1, "--dest", dest.path().to_str().unwrap()])
        .ok();
    assert!(dest.path().join("app").exists() && !dest.path().join("ami").exists());
    let err = server
        .tug(
            w,
            &[
                "pull",
                &b1,
                "--artifact",
                "ami",
                "--dest",
                dest.path().to_str().unwrap(),
            ],
        )
        .fails()
        .to_string();
    assert!(err.contains("reference"), "{err}");

    // The catalog lists it with its uri and no link; its link is not found.
    let c = catalog(&server, "").await;
    let listed = c["versions"][0]["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "ami")
        .unwrap()
        .clone();
    assert_eq!(listed["uri"], "aws:ec2:us-east-1:ami-0abc");
    assert_eq!(listed["download_url"], Value::Null);
    assert_eq!(anonymous(&server, Method::GET, "/dl/api/1.0.0/ami").await.status(), 404);

    // fsck finds nothing missing; gc looks for no blob of it.
    let fsck = server.tug(w, &["fsck", "--output", "json"]).json();
    assert_eq!(fsck["missing"], json!([]), "{fsck}");
    server.tug(w, &["gc"]).ok();
    let fsck = server.tug(w, &["fsck", "--output", "json"]).json();
    assert_eq!(fsck["missing"], json!([]), "{fsck}");
    assert_eq!(anonymous(&server, Method::GET, "/dl/api/1.0.0/app").await.status(), 200);
}
on_both_backends!(references_are_listed_and_never_downloaded);
