//! `/v1/tokens`: create, list and revoke API tokens (admin only).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use tug_api::{CreateToken, CreatedToken, Token, TokenList};
use tug_db::TokenRow;

use crate::error::ApiError;
use crate::extract::{Caller, Json};
use crate::AppState;

pub fn token(t: TokenRow) -> Token {
    Token {
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
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedToken {
            token: token(created.token),
            secret: created.secret,
        }),
    ))
}

pub async fn list(State(state): State<AppState>, Caller(who): Caller) -> Result<axum::Json<TokenList>, ApiError> {
    let tokens = state.tugboat.list_tokens(&who).await?;
    Ok(axum::Json(TokenList {
        tokens: tokens.into_iter().map(token).collect(),
    }))
}

pub async fn revoke(
    State(state): State<AppState>,
    Caller(who): Caller,
    Path(name): Path<String>,
) -> Result<axum::Json<Token>, ApiError> {
    Ok(axum::Json(token(state.tugboat.revoke_token(&who, &name).await?)))
}
