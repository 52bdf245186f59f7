//! What a failed admin request gets. The API, the dashboard's summary and the
//! token check all answer with it, so it sits below them.

use crate::store::StoreError;
use axum::extract::rejection::QueryRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// What a failed request gets.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiError {
    /// What went wrong, for a person.
    pub error: String,
    #[serde(skip)]
    status: StatusCode,
}

impl ApiError {
    /// An error answered with `status`.
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError { error: error.into(), status }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "an API read from the store failed");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("the store could not be read: {e}"))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, e.body_text())
    }
}
