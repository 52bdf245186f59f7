//! The live dashboard: one page, its script and style inline, embedded in the
//! binary (no build step). It reads `/api/v1/events` and redraws every second.
//! And a miner's page, `/miners/<address>`: the same, for one payout address,
//! from `/api/v1/miners/<address>`, readable on a phone.

use axum::http::header;
use axum::response::IntoResponse;

/// The page.
const PAGE: &str = include_str!("dashboard.html");

/// `/`: the dashboard.
pub async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], PAGE)
}

/// A miner's page.
const MINER_PAGE: &str = include_str!("miner.html");

/// `/miners/<address>`: a miner's page (the address is read by its script).
pub async fn miner_page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], MINER_PAGE)
}
