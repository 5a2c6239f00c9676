//! `/v1/services`: what is released.

use axum::extract::State;
use axum::http::StatusCode;
use tug_api::{CreateService, Service, ServiceList};

use crate::error::ApiError;
use crate::extract::{Caller, Json};
use crate::AppState;

pub async fn create(
    State(state): State<AppState>,
    Caller(who): Caller,
    Json(req): Json<CreateService>,
) -> Result<(StatusCode, axum::Json<Service>), ApiError> {
    let created = state.tugboat.create_service(&who, &req.name).await?;
    let services = state.tugboat.list_services(&who).await?;
    let (name, created_at) = services
        .into_iter()
        .find(|(n, _)| *n == req.name)
        .ok_or_else(|| ApiError::from(tug_service::Error::ServiceNotFound(req.name.clone())))?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, axum::Json(Service { name, created_at })))
}

pub async fn list(State(state): State<AppState>, Caller(who): Caller) -> Result<axum::Json<ServiceList>, ApiError> {
    let services = state.tugboat.list_services(&who).await?;
    Ok(axum::Json(ServiceList {
        services: services
            .into_iter()
            .map(|(name, created_at)| Service { name, created_at })
            .collect(),
    }))
}
