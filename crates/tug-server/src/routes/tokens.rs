//! `/v1/tokens`: create, list and revoke API tokens (admin only).

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use tug_api::{CreateToken, CreatedToken, Token, TokenList};
use tug_core::records::TokenRecord;
use tug_service::Principal;

use crate::error::ApiError;
use crate::extract::{Caller, Json};
use crate::AppState;

/// The wire form of a token; `short` maps every token id (revoked ones
/// too) to its shortest unique prefix.
pub fn token(t: TokenRecord, short: &HashMap<String, String>) -> Token {
    Token {
        short_id: short.get(&t.id).cloned().unwrap_or_default(),
        id: t.id,
        name: t.name,
        role: t.role,
        service: t.service,
        environment: t.environment,
        created_at: t.created_at,
        created_by: t.created_by,
        revoked_at: t.revoked_at,
    }
}

/// The short form of every token id: unique among all tokens, so the
/// short id `tug token list` shows is one `tug token revoke` takes. After
/// a change that was made, a failure here leaves the short ids out rather
/// than answer as if the change had failed.
async fn short_ids(state: &AppState, who: &Principal) -> HashMap<String, String> {
    match state.tugboat.list_tokens(who).await {
        Ok(all) => tug_core::short_id::short_ids(all.iter().map(|t| t.id.as_str())),
        Err(e) => {
            tracing::warn!(error = %e, "answering without short token ids");
            HashMap::new()
        }
    }
}

pub async fn create(
    State(state): State<AppState>,
    Caller(who): Caller,
    Json(req): Json<CreateToken>,
) -> Result<(StatusCode, axum::Json<CreatedToken>), ApiError> {
    let created = state
        .tugboat
        .create_token(
            &who,
            req.name,
            req.role,
            tug_service::Scope {
                service: req.service,
                environment: req.environment,
            },
        )
        .await?;
    let short = short_ids(&state, &who).await;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedToken {
            token: token(created.token, &short),
            secret: created.secret,
        }),
    ))
}

pub async fn list(State(state): State<AppState>, Caller(who): Caller) -> Result<axum::Json<TokenList>, ApiError> {
    let tokens = state.tugboat.list_tokens(&who).await?;
    let short = tug_core::short_id::short_ids(tokens.iter().map(|t| t.id.as_str()));
    Ok(axum::Json(TokenList {
        tokens: tokens.into_iter().map(|t| token(t, &short)).collect(),
    }))
}

pub async fn revoke(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(name): Path<String>,
) -> Result<axum::Json<Token>, ApiError> {
    let revoked = state.tugboat.revoke_token(&who, &name).await?;
    let short = short_ids(&state, &who).await;
    Ok(axum::Json(token(revoked, &short)))
}
