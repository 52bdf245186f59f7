//! The live dashboard: one page, its script and style inline, embedded in the
//! binary (no build step). It reads `/api/v1/events` and redraws every second.

use axum::http::header;
use axum::response::IntoResponse;

/// The page.
const PAGE: &str = include_str!("dashboard.html");

/// `/`: the dashboard.
pub async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], PAGE)
}
