//! What the store says of each payout address: `/api/v1/miners/{address}`, what a
//! miner looks at (its workers, their solutions over the last 15 minutes, hour and
//! day; public with `[admin] public_miner_stats`, see [`super::public`]), and
//! `/api/v1/shares`, the valid solutions of every address in a time range: the
//! input of a payout system (PPLNS, per epoch…), which eligo does not run itself.
//!
//! Both count the solutions stored with the address, which the worker server takes
//! from the welcome of the connection that sent them. Solutions stored before
//! eligo kept it have none and are counted for no one.

use super::error::ApiError;
use super::AdminState;
use crate::store::{MinerActivity, Shares, Tally};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// The windows of a miner's counts, narrowest first, as they are named in its JSON.
const WINDOWS: [Duration; 3] = [Duration::minutes(15), Duration::hours(1), Duration::hours(24)];

/// The longest address asked about; a welcome's is far shorter.
const MAX_ADDRESS_CHARS: usize = 512;

/// Solutions in the last 15 minutes, hour and day.
#[derive(Debug, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Windows {
    /// In the last 15 minutes.
    #[serde(rename = "15m")]
    pub last_15m: u64,
    /// In the last hour.
    #[serde(rename = "1h")]
    pub last_1h: u64,
    /// In the last 24 hours.
    #[serde(rename = "24h")]
    pub last_24h: u64,
}

impl Windows {
    fn of(counts: &[u64]) -> Self {
        let at = |i: usize| counts.get(i).copied().unwrap_or(0);
        Windows { last_15m: at(0), last_1h: at(1), last_24h: at(2) }
    }
}

/// One worker of a payout address.
#[derive(Debug, Serialize, ToSchema)]
pub struct MinerWorker {
    /// Its `hardware_id`.
    pub hardware_id: String,
    /// Its `caption`.
    pub caption: String,
    /// A connection of it under this address is open, as the `worker` table says
    /// (any server instance's; a crashed instance's are finished when it restarts).
    pub online: bool,
    /// When that connection opened.
    pub connected_since: Option<DateTime<Utc>>,
    /// Solutions every validating policy accepted.
    pub valid: Windows,
    /// Solutions a policy refused.
    pub invalid: Windows,
    /// Solutions not validated: no policy validates solutions, not yet, or of an unknown job.
    pub unchecked: Windows,
    /// Its latest solution in the last 24 hours.
    pub last_solution_at: Option<DateTime<Utc>>,
}

/// A payout address's workers and their solutions over time, from its own rows only.
#[derive(Debug, Serialize, ToSchema)]
pub struct MinerStats {
    /// The payout address, as workers send it in their welcome.
    pub address: String,
    /// When the windows end: now.
    pub as_of: DateTime<Utc>,
    /// Its workers online now.
    pub workers_online: usize,
    /// Solutions of all its workers every validating policy accepted.
    pub valid: Windows,
    /// Solutions of all its workers a policy refused.
    pub invalid: Windows,
    /// Solutions of all its workers not validated.
    pub unchecked: Windows,
    /// Its latest solution, at any time.
    pub last_solution_at: Option<DateTime<Utc>>,
    /// Its workers that are online, or sent a solution or went offline in the
    /// last 24 hours; by `hardware_id`, then `caption`.
    pub workers: Vec<MinerWorker>,
    /// Its solutions in each of the last 24 hours (hours back from `as_of`), oldest first.
    pub hourly: Vec<Hour>,
}

/// A payout address's solutions in one hour.
#[derive(Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Hour {
    /// When the hour starts.
    pub hour: DateTime<Utc>,
    /// Accepted by every validating policy.
    pub valid: u64,
    /// Refused by a policy.
    pub invalid: u64,
    /// Not validated.
    pub unchecked: u64,
}

/// How many hours the hourly series covers.
const HOURS: usize = 24;

/// The starts of the windows a miner's counts are asked for: [`WINDOWS`], then the
/// last 1, 2, … [`HOURS`] hours (the hourly series is their differences).
fn window_starts(now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let hours = (1..=HOURS as i64).map(|h| now - Duration::hours(h));
    WINDOWS.iter().map(|w| now - *w).chain(hours).collect()
}

/// The hourly series out of the counts since each of [`window_starts`].
fn hourly(total: &Tally, now: DateTime<Utc>) -> Vec<Hour> {
    let since = |counts: &[u64], hours: usize| {
        if hours == 0 {
            0
        } else {
            counts.get(WINDOWS.len() + hours - 1).copied().unwrap_or(0)
        }
    };
    (0..HOURS)
        .rev()
        .map(|back| {
            let within = |counts: &[u64]| since(counts, back + 1).saturating_sub(since(counts, back));
            Hour {
                hour: now - Duration::hours(back as i64 + 1),
                valid: within(&total.valid),
                invalid: within(&total.invalid),
                unchecked: within(&total.unchecked),
            }
        })
        .collect()
}

impl MinerStats {
    fn new(address: String, as_of: DateTime<Utc>, activity: MinerActivity) -> Self {
        let mut total = Tally::zero(WINDOWS.len() + HOURS);
        let workers: Vec<MinerWorker> = activity
            .workers
            .into_iter()
            .map(|w| {
                total.add(&w.tally);
                MinerWorker {
                    online: w.connected_since.is_some(),
                    connected_since: w.connected_since,
                    valid: Windows::of(&w.tally.valid),
                    invalid: Windows::of(&w.tally.invalid),
                    unchecked: Windows::of(&w.tally.unchecked),
                    last_solution_at: w.last_solution_at,
                    hardware_id: w.hardware_id,
                    caption: w.caption,
                }
            })
            .collect();
        MinerStats {
            address,
            as_of,
            workers_online: workers.iter().filter(|w| w.online).count(),
            valid: Windows::of(&total.valid),
            invalid: Windows::of(&total.invalid),
            unchecked: Windows::of(&total.unchecked),
            last_solution_at: activity.last_solution_at,
            hourly: hourly(&total, as_of),
            workers,
        }
    }
}

/// One payout address's workers: online or not, and their solutions by verdict in
/// the last 15 minutes, hour and day. Needs the admin token unless `[admin]
/// public_miner_stats` is on; then it is answered to anyone, at a rate per client IP.
#[utoipa::path(get, path = "/api/v1/miners/{address}",
    params(("address" = String, Path, description = "The payout address, as workers send it in their welcome")),
    responses(
        (status = 200, body = MinerStats),
        (status = 400, description = "The address is too long", body = ApiError),
        (status = 401, body = ApiError),
        (status = 429, description = "Public mode: over this client's rate", body = ApiError,
            headers(("Retry-After" = u64, description = "Seconds until a request is served again"))),
        (status = 503, description = "The store cannot be read", body = ApiError),
    ),
    security((), ("admin_token" = [])))]
pub async fn miner(
    State(state): State<Arc<AdminState>>,
    Path(address): Path<String>,
) -> Result<Json<MinerStats>, ApiError> {
    if address.chars().count() > MAX_ADDRESS_CHARS {
        let why = format!("an address is at most {MAX_ADDRESS_CHARS} characters");
        return Err(ApiError::new(StatusCode::BAD_REQUEST, why));
    }
    let now = Utc::now();
    let activity = state.services.store.miner_activity(&address, &window_starts(now)).await?;
    Ok(Json(MinerStats::new(address, now, activity)))
}

/// The range of `/api/v1/shares`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SharesQuery {
    /// Start of the range, included: an RFC 3339 time such as `2025-01-31T12:00:00Z`.
    since: Option<String>,
    /// End of the range, excluded (default: now).
    until: Option<String>,
}

/// One payout address's share of a range.
#[derive(Debug, Serialize, ToSchema)]
pub struct SharesLine {
    /// The payout address.
    pub address: String,
    /// Its valid solutions stored in the range.
    pub valid: u64,
    /// The sum of their `solution_target`s, in decimal: it may pass 2^64.
    pub solution_target_sum: String,
}

impl From<Shares> for SharesLine {
    fn from(s: Shares) -> Self {
        SharesLine { address: s.address, valid: s.valid, solution_target_sum: s.target_sum.to_string() }
    }
}

/// The valid solutions of every payout address in a range.
#[derive(Debug, Serialize, ToSchema)]
pub struct SharesOut {
    /// Start of the range, included.
    pub since: DateTime<Utc>,
    /// End of the range, excluded: the `since` of the next range, so that no
    /// solution counts twice.
    pub until: DateTime<Utc>,
    /// One line per address with a valid solution in the range, by address.
    pub shares: Vec<SharesLine>,
}

impl SharesOut {
    /// As CSV (RFC 4180): a header line, then `address,valid,solution_target_sum`.
    fn csv(&self) -> String {
        let mut out = String::from("address,valid,solution_target_sum\r\n");
        for line in &self.shares {
            out.push_str(&format!("{},{},{}\r\n", csv_field(&line.address), line.valid, line.solution_target_sum));
        }
        out
    }
}

/// A CSV field: quoted, its quotes doubled, when it holds a comma, a quote or a line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// An RFC 3339 time of the query, or a 400 that says which and how it should look.
fn time_of(name: &str, text: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)).map_err(|e| {
        let why = format!("{name} is not an RFC 3339 time like 2025-01-31T12:00:00Z ({e}): {text:?}");
        ApiError::new(StatusCode::BAD_REQUEST, why)
    })
}

/// Whether the client asked for CSV before JSON in its `Accept`.
fn wants_csv(headers: &HeaderMap) -> bool {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let first = accept
        .split(',')
        .map(|range| range.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
        .find(|media| media == "text/csv" || media == "application/json");
    first.as_deref() == Some("text/csv")
}

/// Per payout address, its valid solutions stored in `[since, until)` and the sum
/// of their targets: the input of a payout system (PPLNS, or one share per
/// solution per epoch), which eligo does not run. JSON, or CSV with `Accept:
/// text/csv`. Consecutive ranges (each `until` the next `since`) count every
/// solution once; ask for ranges that ended a minute ago or more, so that the
/// solutions stored near their end have their verdict.
#[utoipa::path(get, path = "/api/v1/shares", params(SharesQuery),
    responses(
        (status = 200, description = "One line per address, by address",
            content((SharesOut = "application/json"), (String = "text/csv"))),
        (status = 400, description = "since missing, a time that is not RFC 3339, or since not before until",
            body = ApiError),
        (status = 401, body = ApiError),
        (status = 503, description = "The store cannot be read", body = ApiError),
    ))]
pub async fn shares(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    query: Result<Query<SharesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let since = q.since.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "since is required: the start of the range, e.g. ?since=2025-01-31T12:00:00Z",
        )
    })?;
    let since = time_of("since", since)?;
    let until = match q.until.as_deref() {
        Some(until) => time_of("until", until)?,
        None => Utc::now(),
    };
    if since >= until {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("since ({since}) must be before until ({until})")));
    }
    let lines = state.services.store.shares(since, until).await?;
    let out = SharesOut { since, until, shares: lines.into_iter().map(Into::into).collect() };
    if !wants_csv(&headers) {
        return Ok(Json(out).into_response());
    }
    let name = format!("attachment; filename=\"shares-{}-{}.csv\"", since.timestamp(), until.timestamp());
    let disposition = HeaderValue::from_str(&name).unwrap_or(HeaderValue::from_static("attachment"));
    let kind = HeaderValue::from_static("text/csv; charset=utf-8");
    Ok(([(header::CONTENT_TYPE, kind), (header::CONTENT_DISPOSITION, disposition)], out.csv()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hourly_series_is_the_differences_of_the_windows_back_from_now() {
        let now = Utc::now();
        assert_eq!(window_starts(now).len(), WINDOWS.len() + HOURS);
        // Cumulative: 2 in the last hour, 5 in the last 2 hours, 5 in every wider window.
        let mut total = Tally::zero(WINDOWS.len() + HOURS);
        total.valid[WINDOWS.len()] = 2;
        for h in 1..HOURS {
            total.valid[WINDOWS.len() + h] = 5;
        }
        total.invalid[WINDOWS.len() + HOURS - 1] = 1;
        let hours = hourly(&total, now);
        assert_eq!(hours.len(), HOURS);
        assert_eq!((hours[HOURS - 1].valid, hours[HOURS - 2].valid), (2, 3), "the last hour, the one before");
        assert_eq!(hours[0].invalid, 1, "the oldest hour");
        assert_eq!(hours.iter().map(|h| h.valid).sum::<u64>(), 5);
        assert_eq!(hours[HOURS - 1].hour, now - Duration::hours(1));
        assert!(hours.windows(2).all(|w| w[0].hour < w[1].hour), "oldest first");
    }

    #[test]
    fn csv_quotes_only_what_needs_it() {
        assert_eq!(csv_field("aleo1abc"), "aleo1abc");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\"\n"), "\"say \"\"hi\"\"\n\"");
    }

    #[test]
    fn csv_is_chosen_only_before_json() {
        let with = |accept: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_str(accept).expect("a header"));
            wants_csv(&headers)
        };
        assert!(with("text/csv"));
        assert!(with("Text/CSV; charset=utf-8, application/json"));
        assert!(!with("application/json, text/csv"));
        assert!(!with("*/*"));
        assert!(!wants_csv(&HeaderMap::new()));
    }

    #[test]
    fn target_sums_past_u64_are_written_whole() {
        let line = SharesLine::from(Shares { address: "a".into(), valid: 3, target_sum: 3 * u128::from(u64::MAX) });
        assert_eq!(line.solution_target_sum, "55340232221128654845");
    }
}
