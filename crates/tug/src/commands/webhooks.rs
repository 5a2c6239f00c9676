//! `tug webhook`: create, list and delete webhooks, see their deliveries
//! and send one again.

use std::process::ExitCode;

use tug_api::CreateWebhook;
use tug_client::Client;

use crate::cli::{Output, WebhookCommand};
use crate::output::{self, col, keep, opt, print, time, Table};

pub async fn run(client: &Client, out: Output, c: WebhookCommand) -> anyhow::Result<ExitCode> {
    match c {
        WebhookCommand::Create {
            url,
            service,
            events,
            kind,
        } => {
            let created = client
                .create_webhook(&CreateWebhook {
                    url,
                    kind: Some(kind),
                    service,
                    events,
                })
                .await?;
            // The secret alone goes to stdout, as `tug token create` does.
            print(out, &created, |c| c.secret.clone())?;
            if out == Output::Table {
                eprintln!(
                    "Webhook {} ({}) created. The secret above signs its requests and is shown only once: give it to the receiver now.",
                    created.webhook.id, created.webhook.kind
                );
            }
        }
        WebhookCommand::List => {
            let hooks = client.list_webhooks().await?;
            print(out, &hooks, |hooks| {
                let mut t = Table::new(&[
                    keep("ID"),
                    col("KIND", 1),
                    keep("URL"),
                    col("SERVICE", 2),
                    col("EVENTS", 3),
                    col("CREATED", 4),
                ]);
                for w in hooks {
                    t.row(vec![
                        output::short(&w.short_id, &w.id),
                        w.kind.to_string(),
                        w.url.clone(),
                        opt(&w.service),
                        w.events.join(","),
                        time(&w.created_at),
                    ]);
                }
                t.to_string()
            })?;
        }
        WebhookCommand::Delete { id } => {
            let w = client.delete_webhook(&id).await?;
            print(out, &w, |w| {
                format!("Webhook {} deleted; nothing more is sent to it.", w.id)
            })?;
        }
        WebhookCommand::Deliveries { id } => {
            let deliveries = client.webhook_deliveries(&id).await?;
            print(out, &deliveries, |ds| {
                let mut t = Table::new(&[
                    keep("DELIVERY"),
                    keep("EVENT"),
                    keep("STATE"),
                    col("ATTEMPTS", 1),
                    col("LAST", 2),
                    col("NEXT", 3),
                    col("AT", 4),
                ]);
                for d in ds {
                    let last = match (&d.last_status, &d.last_error) {
                        (_, Some(e)) => e.clone(),
                        (Some(s), None) => format!("HTTP {s}"),
                        (None, None) => "-".into(),
                    };
                    t.row(vec![
                        d.id.clone(),
                        d.event_id.to_string(),
                        d.state.to_string(),
                        d.attempts.to_string(),
                        last,
                        d.next_attempt_at.as_ref().map(time).unwrap_or_else(|| "-".into()),
                        time(&d.last_attempt_at),
                    ]);
                }
                t.to_string()
            })?;
        }
        WebhookCommand::Redeliver { delivery } => {
            let d = client.redeliver(&delivery).await?;
            print(out, &d, |d| match (&d.last_status, &d.last_error) {
                (_, Some(e)) => format!("Delivery {} sent again and failed: {e}", d.id),
                (Some(s), None) => format!("Delivery {} sent again: HTTP {s}.", d.id),
                (None, None) => format!("Delivery {} sent again.", d.id),
            })?;
            // A failed attempt is recorded; the exit status says it failed.
            if d.last_error.is_some() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
