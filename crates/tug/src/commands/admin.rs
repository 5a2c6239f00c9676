//! `tug token`, `tug service`, `tug fsck`, `tug gc`, `tug audit`.

use std::process::ExitCode;

use anyhow::Context;
use tug_api::{CreateToken, GcRequest};
use tug_client::Client;
use tug_core::{EnvName, ServiceName, TokenName};

use crate::cli::{AuditCommand, GcArgs, Output, ServiceCommand, TokenCommand};
use crate::output::{self, col, keep, opt, plural, print, time, Table};

pub async fn token(client: &Client, out: Output, c: TokenCommand) -> anyhow::Result<ExitCode> {
    match c {
        TokenCommand::Create {
            name,
            role,
            service,
            env,
        } => {
            let req = CreateToken {
                name: TokenName::parse(&name)?,
                role,
                service: service.as_deref().map(ServiceName::parse).transpose()?,
                environment: env.as_deref().map(EnvName::parse).transpose()?,
            };
            let created = client.create_token_with(&req).await?;
            // The secret alone goes to stdout, so `T=$(tug token create …)`
            // holds just the secret; the note is for the person at the
            // terminal.
            print(out, &created, |c| c.secret.clone())?;
            if out == Output::Table {
                eprintln!(
                    "Token {} ({}) created. The secret above is shown only once: store it now (e.g. as TUG_TOKEN in CI).",
                    created.token.name, created.token.role
                );
            }
        }
        TokenCommand::List => {
            let tokens = client.list_tokens().await?;
            print(out, &tokens, |tokens| {
                let mut t = Table::new(&[
                    keep("NAME"),
                    keep("ID"),
                    col("ROLE", 1),
                    col("SERVICE", 2),
                    col("ENV", 3),
                    col("CREATED", 5),
                    col("BY", 6),
                    col("REVOKED", 4),
                ]);
                for tok in tokens {
                    t.row(vec![
                        tok.name.to_string(),
                        output::short(&tok.short_id, &tok.id),
                        tok.role.to_string(),
                        opt(&tok.service),
                        opt(&tok.environment),
                        time(&tok.created_at),
                        opt(&tok.created_by),
                        tok.revoked_at.as_ref().map(time).unwrap_or_else(|| "-".into()),
                    ]);
                }
                t.to_string()
            })?;
        }
        TokenCommand::Revoke { name } => {
            let token = client.revoke_token(&name).await?;
            print(out, &token, |t| {
                format!("Token {} revoked; requests with it are refused from now on.", t.name)
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn service(client: &Client, out: Output, c: ServiceCommand) -> anyhow::Result<ExitCode> {
    match c {
        ServiceCommand::Create { name } => {
            let name = ServiceName::parse(&name)?;
            let s = client.create_service(&name).await?;
            print(out, &s, |s| format!("Service {} is ready.", s.name))?;
        }
        ServiceCommand::List => {
            let services = client.list_services().await?;
            print(out, &services, |services| {
                let mut t = Table::new(&[keep("SERVICE"), col("CREATED", 1)]);
                for s in services {
                    t.row(vec![s.name.to_string(), time(&s.created_at)]);
                }
                t.to_string()
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn fsck(client: &Client, out: Output, repair: bool) -> anyhow::Result<ExitCode> {
    let report = client
        .fsck(&tug_api::FsckQuery { repair })
        .await
        .context("fsck failed")?;
    let healthy = report.corrupt.is_empty() && report.missing.is_empty();
    print(out, &report, |r| {
        let mut s = format!("Checked {} ({}).\n", plural(r.checked, "blob"), output::bytes(r.bytes));
        let users = |digest: &tug_core::Digest| {
            let mut lines = String::new();
            for u in r.needed_by.iter().filter(|u| u.digest == *digest) {
                lines.push_str(&format!(
                    "  needed by {} of build {} ({} {}, {})\n",
                    u.artifact, u.build, u.service, u.version, u.state
                ));
            }
            lines
        };
        for c in &r.corrupt {
            s.push_str(&format!(
                "CORRUPT {} ({} bytes) now hashes to {}\n",
                c.digest, c.size, c.actual
            ));
            if let Some(to) = &c.moved_to {
                s.push_str(&format!("  moved aside to {to}\n"));
            }
            s.push_str(&users(&c.digest));
        }
        for m in r.missing.iter().filter(|m| !r.corrupt.iter().any(|c| c.digest == **m)) {
            s.push_str(&format!("MISSING {m} is referenced by a build but not stored\n"));
            s.push_str(&users(m));
        }
        if healthy {
            s.push_str("Every blob matches its digest.");
        } else if r.repaired || r.corrupt.is_empty() {
            s.push_str(
                "Push the files named above again (tug push BUILD FILE…, also into a sealed build) to restore them, then run tug fsck.",
            );
        } else {
            s.push_str(
                "Run tug fsck --repair to move the corrupt blobs aside, then push the files named above again (tug push BUILD FILE…).",
            );
        }
        s
    })?;
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub async fn gc(client: &Client, out: Output, a: GcArgs) -> anyhow::Result<ExitCode> {
    let req = GcRequest {
        dry_run: a.dry_run,
        draft_max_age_secs: a.draft_max_age,
        grace_secs: a.grace,
    };
    let report = client.gc(&req).await.context("gc failed")?;
    print(out, &report, |r| {
        let verb = if r.dry_run { "Would delete" } else { "Deleted" };
        let mut s = String::new();
        for b in &r.abandoned_drafts {
            let verb = if r.dry_run { "would abandon" } else { "abandoned" };
            s.push_str(&format!("{verb} stale draft {b}\n"));
        }
        for d in &r.deleted {
            s.push_str(&format!("{} {d}\n", if r.dry_run { "would delete" } else { "deleted" }));
        }
        s.push_str(&format!(
            "{verb} {} ({}); kept {}.",
            plural(r.deleted.len() as u64, "blob"),
            output::bytes(r.freed_bytes),
            r.kept
        ));
        s
    })?;
    Ok(ExitCode::SUCCESS)
}

pub async fn audit(client: &Client, out: Output, c: AuditCommand) -> anyhow::Result<ExitCode> {
    match c {
        AuditCommand::Verify => {
            let v = client.audit_verify().await.context("audit verify failed")?;
            print(out, &v, |v| match &v.broken {
                None => format!(
                    "Verified {}: every event matches its hash and follows the one before it, up to event {} ({}).",
                    plural(v.events, "event"),
                    v.head_id,
                    v.head_hash
                ),
                Some(b) => format!(
                    "BROKEN at event {} ({}): {}\nChecked {} before it.",
                    b.id,
                    b.problem,
                    b.message,
                    plural(v.events, "event")
                ),
            })?;
            Ok(if v.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        AuditCommand::Export { since, service } => {
            use futures::StreamExt;
            if let Some(s) = &service {
                ServiceName::parse(s)?;
            }
            let records = client
                .audit_export(&tug_api::AuditExportQuery { since, service })
                .await
                .context("audit export failed")?;
            let mut records = std::pin::pin!(records);
            // JSON lines whatever the output format: the export is for
            // machines.
            while let Some(r) = records.next().await {
                let r = r.context("the audit export was cut short")?;
                output::write(serde_json::to_string(&r)?)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
