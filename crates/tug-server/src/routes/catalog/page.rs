//! `GET /releases/{service}`: the release catalog as one server-rendered
//! HTML page (no script), readable on a phone. It shows what the JSON
//! catalog holds: per public environment the version it runs, then each
//! published version with its files, sizes, digests, download links,
//! source and changelog. Every string comes through `maud`, which escapes
//! it; links are only ever made from https addresses and from paths this
//! server built.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use tug_api::{Catalog, CatalogQuery, PublishedVersion};

use super::{catalog_of, SHORT};
use crate::error::ApiError;
use crate::AppState;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0 auto;max-width:60rem;padding:1rem;line-height:1.4}\
table{border-collapse:collapse;width:100%;display:block;overflow-x:auto}td,th{padding:.25rem .5rem;text-align:left;border-bottom:1px solid #ddd;vertical-align:top}\
code{font-size:.85em;word-break:break-all}.yanked{color:#a00}section{margin:1.5rem 0}\
@media(max-width:40rem){td,th{padding:.2rem}h1{font-size:1.4rem}}";

pub(super) async fn releases_page(
    State(state): State<AppState>,
    Path(service): Path<String>,
    Query(q): Query<CatalogQuery>,
) -> Result<Response, ApiError> {
    let catalog = catalog_of(&state, &service, &q).await?;
    let body = render(&catalog, q.env.as_deref()).into_string();
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(SHORT));
    Ok(res)
}

/// Only https addresses become links: a `javascript:` or other address
/// supplied with a build stays text.
fn link(url: Option<&str>, text: &str) -> Markup {
    match url.filter(|u| u.starts_with("https://") || u.starts_with("/")) {
        Some(u) => html! { a href=(u) { (text) } },
        None => html! { (text) },
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn render(c: &Catalog, env: Option<&str>) -> Markup {
    let service = c.service.as_str();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Releases of " (service) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "Releases of " (service) }
                p { "Also as JSON: " a href={ "/v1/releases/" (service) } { "/v1/releases/" (service) } }
                h2 { "Environments" }
                table {
                    thead { tr { th { "environment" } th { "runs" } } }
                    tbody {
                        @for e in &c.environments {
                            tr {
                                td { (e.name) }
                                td {
                                    @if let Some(cur) = &e.current { (cur.version) } @else { "nothing yet" }
                                }
                            }
                        }
                    }
                }
                @for v in &c.versions { (version(service, v)) }
                @if c.versions.is_empty() { p { "No version is published yet." } }
                @if let Some(next) = &c.next_cursor {
                    p {
                        a.older href={
                            "/releases/" (service) "?cursor=" (next)
                            @if let Some(e) = env { "&env=" (e) }
                        } { "Older versions" }
                    }
                }
            }
        }
    }
}

fn version(service: &str, v: &PublishedVersion) -> Markup {
    html! {
        section.version id={ "v" (v.version) } {
            h2 {
                (v.version)
                @if v.yanked { " " span.yanked { "(yanked)" } }
            }
            p {
                "Published " (v.published_at.format("%Y-%m-%d %H:%M UTC")) " in "
                @for (i, e) in v.environments.iter().enumerate() {
                    @if i > 0 { ", " }
                    (e.name) @if e.current { " (current)" }
                }
                "."
            }
            p.source {
                "Source: "
                @if let Some(commit) = &v.source.commit { "commit " (link(v.source.commit_url.as_deref(), commit)) " " }
                @if let Some(tag) = &v.source.tag { "tag " (tag) " " }
                @if let Some(branch) = &v.source.branch { "branch " (branch) " " }
                @if let Some(repo) = &v.source.repo { "in " (link(Some(repo), repo)) }
            }
            table.artifacts {
                thead { tr { th { "file" } th { "platform" } th { "size" } th { "sha256" } } }
                tbody {
                    @for a in &v.artifacts {
                        tr {
                            td {
                                @if let Some(url) = &a.download_url {
                                    a.download href=(url) { (a.name) }
                                } @else {
                                    (a.name) " → "
                                    @if let Some(uri) = &a.uri { code { (link(Some(uri.as_str()).filter(|_| uri.is_https()), uri.as_str())) } }
                                }
                            }
                            td { @if let Some(p) = &a.platform { (p) } @else { "any" } }
                            td { @if a.download_url.is_some() { (bytes(a.size)) } @else { (a.kind) } }
                            td { code { (a.digest.hex()) } }
                        }
                    }
                }
            }
            details.changelog open {
                summary {
                    "Changes"
                    @if let Some(prev) = &v.changelog.previous { " since " (prev) }
                    @if let Some(url) = &v.changelog.compare_url { " (" (link(Some(url), "compare")) ")" }
                }
                ul {
                    @for b in &v.changelog.builds {
                        li {
                            (b.version) " "
                            @if let Some(commit) = &b.commit { code { (link(b.commit_url.as_deref(), commit.get(..12).unwrap_or(commit))) } " " }
                            @if let Some(m) = &b.message { (m.lines().next().unwrap_or("")) }
                            @if let Some(a) = &b.author { " (" (a) ")" }
                        }
                    }
                    @if v.changelog.truncated { li { "… and earlier builds" } }
                }
            }
            p { small { "Service " (service) ", build " code { (v.build) } } }
        }
    }
}
