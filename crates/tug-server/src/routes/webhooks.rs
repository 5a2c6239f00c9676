//! `/v1/webhooks`: create, list and delete webhooks, list a webhook's
//! deliveries and send one again (admin only). A webhook's secret is in
//! the answer that created it and in no other.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use tug_api::{CreateWebhook, CreatedWebhook, Delivery, DeliveryList, Webhook, WebhookList};
use tug_core::webhook::{DeliveryRecord as DeliveryRow, WebhookRecord as WebhookRow};

use crate::error::ApiError;
use crate::extract::{Caller, Json};
use crate::AppState;

/// The wire form of a webhook: never its secret, its URL as
/// [`tug_service::shown_url`] shows it.
fn webhook(w: WebhookRow, short: &HashMap<String, String>) -> Webhook {
    Webhook {
        short_id: short.get(&w.id).cloned().unwrap_or_default(),
        url: tug_service::shown_url(&w.url, w.kind),
        kind: w.kind,
        service: w.service,
        events: w.events.split(',').map(str::to_string).collect(),
        created_at: w.created_at,
        created_by: w.created_by,
        id: w.id,
    }
}

fn delivery(d: DeliveryRow) -> Delivery {
    Delivery {
        id: d.id,
        webhook: d.webhook_id,
        event_id: d.event_id,
        state: d.state,
        attempts: d.attempts,
        last_status: d.last_status,
        last_error: d.last_error,
        first_attempt_at: d.first_attempt_at,
        last_attempt_at: d.last_attempt_at,
        next_attempt_at: d.next_attempt_at,
        delivered_at: d.delivered_at,
    }
}

pub async fn create(
    State(state): State<AppState>,
    Caller(who): Caller,
    Json(req): Json<CreateWebhook>,
) -> Result<(StatusCode, axum::Json<CreatedWebhook>), ApiError> {
    let created = state
        .tugboat
        .create_webhook(
            &who,
            tug_service::NewWebhook {
                url: req.url,
                kind: req.kind,
                service: req.service,
                events: req.events,
            },
        )
        .await?;
    let short = match state.tugboat.list_webhooks(&who).await {
        Ok(all) => tug_core::short_id::short_ids(all.iter().map(|w| w.id.as_str())),
        Err(_) => HashMap::new(),
    };
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedWebhook {
            webhook: webhook(created.webhook, &short),
            secret: created.secret,
        }),
    ))
}

pub async fn list(State(state): State<AppState>, Caller(who): Caller) -> Result<axum::Json<WebhookList>, ApiError> {
    let all = state.tugboat.list_webhooks(&who).await?;
    let short = tug_core::short_id::short_ids(all.iter().map(|w| w.id.as_str()));
    Ok(axum::Json(WebhookList {
        webhooks: all.into_iter().map(|w| webhook(w, &short)).collect(),
    }))
}

pub async fn delete(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<Webhook>, ApiError> {
    let deleted = state.tugboat.delete_webhook(&who, &id).await?;
    Ok(axum::Json(webhook(deleted, &HashMap::new())))
}

pub async fn deliveries(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<DeliveryList>, ApiError> {
    let (_, rows) = state.tugboat.webhook_deliveries(&who, &id).await?;
    Ok(axum::Json(DeliveryList {
        deliveries: rows.into_iter().map(delivery).collect(),
    }))
}

pub async fn redeliver(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<Delivery>, ApiError> {
    Ok(axum::Json(delivery(state.tugboat.redeliver(&who, &id).await?)))
}
