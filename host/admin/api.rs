//! `/api/v1`: the operator's read-only JSON API over the store and the live
//! registries, described by the OpenAPI document at `/api/v1/openapi.json`
//! (generated from these handlers and types by `utoipa`).

use super::jobs::job_detail;
use super::summary::Summary;
use super::AdminState;
use crate::pipeline::views::{NodeView, WorkerPolicyView, WorkerView};
use crate::plugin::{Compiling, LoadFailure, PluginReport, Reload, ShadowReport};
use crate::store::{Page, SolutionFilter, WorkerFilter, WorkerRow};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, OpenApi, ToSchema};

// Defined below both this API and the dashboard's summary, which show them too;
// named here, where they were defined before.
pub use super::error::ApiError;
pub use super::jobs::{JobDetail, JobOut, SolutionOut, SolutionStatus};

/// Rows per page when the request does not say.
const DEFAULT_LIMIT: u32 = 50;

/// The API's routes, under `/api/v1`.
pub fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/api/v1/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .route("/api/v1/summary", get(summary))
        .route("/api/v1/jobs", get(list_jobs))
        .route("/api/v1/jobs/{task_id}", get(job_by_task))
        .route("/api/v1/heights/{block_height}", get(job_by_height))
        .route("/api/v1/solutions", get(list_solutions))
        .route("/api/v1/workers", get(live_workers))
        .route("/api/v1/workers/connections", get(worker_connections))
        .route("/api/v1/nodes", get(live_nodes))
        .route("/api/v1/plugins", get(plugins))
        .route("/api/v1/series", get(super::history::series))
        .route("/api/v1/shares", get(super::miners::shares))
}

/// `/api/v1/miners/{address}`: apart from [`routes`], as it may be public
/// (`[admin] public_miner_stats`) and is then guarded by a rate, not the token.
pub fn miner_route() -> Router<Arc<AdminState>> {
    Router::new().route("/api/v1/miners/{address}", get(super::miners::miner))
}

/// The OpenAPI document of `/api/v1`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "eligo operator API",
        description = "Read-only views of jobs, solutions, connections, miners and plugins. When `[admin] token` \
                       is set, every path needs `Authorization: Bearer <token>` (or `?token=<token>`), but \
                       `/api/v1/miners/{address}` when `[admin] public_miner_stats` is on."
    ),
    paths(
        summary, list_jobs, job_by_task, job_by_height, list_solutions, live_workers, worker_connections, live_nodes,
        plugins, super::history::series, super::miners::miner, super::miners::shares
    ),
    components(schemas(
        ApiError, JobOut, JobDetail, JobPage, SolutionOut, SolutionStatus, SolutionPage, WorkerRow, ConnectionPage,
        LiveWorkers, LiveNodes, WorkerView, WorkerPolicyView, NodeView, PluginsOut, Summary, super::history::Series,
        super::summary::ShadowLine, super::summary::DisagreementLine, super::summary::ReloadLine,
        super::miners::MinerStats, super::miners::MinerWorker, super::miners::Windows, super::miners::Hour, super::miners::SharesOut,
        super::miners::SharesLine
    )),
    modifiers(&BearerToken),
    security(("admin_token" = []))
)]
pub struct ApiDoc;

struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// `limit` and `before` of a listing.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Rows to return (1 to 500; default 50).
    limit: Option<u32>,
    /// The `next` of the previous page.
    before: Option<i64>,
}

impl PageQuery {
    fn page(&self) -> Page {
        Page::new(self.limit.unwrap_or(DEFAULT_LIMIT), self.before)
    }
}

/// A page of jobs, highest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    /// The jobs.
    pub items: Vec<JobOut>,
    /// `before` of the next page (a height); absent on the last page.
    pub next: Option<i64>,
}

/// A page of solutions, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SolutionPage {
    /// The solutions.
    pub items: Vec<SolutionOut>,
    /// `before` of the next page; absent on the last page.
    pub next: Option<i64>,
}

/// A page of worker connections, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionPage {
    /// The connections.
    pub items: Vec<WorkerRow>,
    /// `before` of the next page; absent on the last page.
    pub next: Option<i64>,
}

/// `limit` and `after` of a listing of live connections, by connection number.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LiveQuery {
    /// Connections to return (1 to 500; default 50).
    limit: Option<u32>,
    /// Only connections numbered above this: the last `connection` of the previous page.
    after: Option<u64>,
}

impl LiveQuery {
    fn bounds(&self) -> (u64, usize) {
        let page = Page::new(self.limit.unwrap_or(DEFAULT_LIMIT), None);
        (self.after.unwrap_or(0), page.limit as usize)
    }
}

/// The workers connected to this process now.
#[derive(Debug, Serialize, ToSchema)]
pub struct LiveWorkers {
    /// How many are connected in all.
    pub total: usize,
    /// This page of them, by connection number.
    pub items: Vec<WorkerView>,
}

/// The nodes connected to this process now.
#[derive(Debug, Serialize, ToSchema)]
pub struct LiveNodes {
    /// How many are connected in all.
    pub total: usize,
    /// This page of them, by connection number.
    pub items: Vec<NodeView>,
}

/// The plugins: what serves, what was refused, and the latest reloads.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginsOut {
    /// The active policies, in composition order.
    #[schema(value_type = Vec<Object>)]
    pub active: Vec<PluginReport>,
    /// Files that failed to load at the last attempt.
    #[schema(value_type = Vec<Object>)]
    pub failed: Vec<LoadFailure>,
    /// Files being compiled now; the version before each (if any) serves meanwhile.
    #[schema(value_type = Vec<Object>)]
    pub compiling: Vec<Compiling>,
    /// Candidates in `shadow/`: whom each shadows, how often it agreed, its cost
    /// per call and samples of disagreements.
    #[schema(value_type = Vec<Object>)]
    pub shadows: Vec<ShadowReport>,
    /// The latest reloads that changed something, oldest first (at most 50).
    #[schema(value_type = Vec<Object>)]
    pub reloads: Vec<Reload>,
}

/// Counters, latencies, connections and the latest jobs: what the dashboard shows.
#[utoipa::path(get, path = "/api/v1/summary", responses((status = 200, body = Summary), (status = 401, body = ApiError)))]
async fn summary(State(state): State<Arc<AdminState>>) -> ApiResult<Summary> {
    Ok(Json(Summary::now(&state, None).await?))
}

/// Stored jobs, highest first.
#[utoipa::path(get, path = "/api/v1/jobs", params(PageQuery),
    responses((status = 200, body = JobPage), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
async fn list_jobs(
    State(state): State<Arc<AdminState>>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<JobPage> {
    let page = state.services.store.list_jobs(query?.page()).await?;
    Ok(Json(JobPage { items: page.items.into_iter().map(Into::into).collect(), next: page.next }))
}

/// One job by task id, with its solutions and delivery counts.
#[utoipa::path(get, path = "/api/v1/jobs/{task_id}", params(("task_id" = String, Path, description = "The job's task id")),
    responses((status = 200, body = JobDetail), (status = 404, body = ApiError), (status = 401, body = ApiError)))]
async fn job_by_task(State(state): State<Arc<AdminState>>, Path(task_id): Path<String>) -> ApiResult<JobDetail> {
    let job = state.services.store.job_by_task(&task_id).await?;
    let job = job.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no job with task id {task_id}")))?;
    Ok(Json(job_detail(&state, job).await?))
}

/// The job at one height, with its solutions and delivery counts.
#[utoipa::path(get, path = "/api/v1/heights/{block_height}", params(("block_height" = i64, Path, description = "The height")),
    responses((status = 200, body = JobDetail), (status = 404, body = ApiError), (status = 401, body = ApiError)))]
async fn job_by_height(State(state): State<Arc<AdminState>>, Path(height): Path<i64>) -> ApiResult<JobDetail> {
    let job = state.services.store.job_at_height(height).await?;
    let job = job.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no job at height {height}")))?;
    Ok(Json(job_detail(&state, job).await?))
}

/// Which solutions to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SolutionQuery {
    /// Solutions to this job.
    task_id: Option<String>,
    /// Solutions of this worker hardware.
    hardware_id: Option<String>,
    /// The solution with this nonce (its unique key).
    nonce: Option<String>,
    /// Rows to return (1 to 500; default 50).
    limit: Option<u32>,
    /// The `next` of the previous page.
    before: Option<i64>,
}

/// Stored solutions, newest first, by job, worker hardware or nonce.
#[utoipa::path(get, path = "/api/v1/solutions", params(SolutionQuery),
    responses((status = 200, body = SolutionPage), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
async fn list_solutions(
    State(state): State<Arc<AdminState>>,
    query: Result<Query<SolutionQuery>, QueryRejection>,
) -> ApiResult<SolutionPage> {
    let Query(q) = query?;
    let filter = SolutionFilter { task_id: q.task_id, hardware_id: q.hardware_id, unique_key: q.nonce };
    let page = Page::new(q.limit.unwrap_or(DEFAULT_LIMIT), q.before);
    let found = state.services.store.list_solutions(&filter, page).await?;
    let items = found.items.into_iter().map(|s| SolutionOut::new(s, &state)).collect();
    Ok(Json(SolutionPage { items, next: found.next }))
}

/// Workers connected to this process now: welcome, policies' profiles and state words, outbox, jobs received.
#[utoipa::path(get, path = "/api/v1/workers", params(LiveQuery),
    responses((status = 200, body = LiveWorkers), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
async fn live_workers(
    State(state): State<Arc<AdminState>>,
    query: Result<Query<LiveQuery>, QueryRejection>,
) -> ApiResult<LiveWorkers> {
    let (after, limit) = query?.bounds();
    let (total, items) =
        state.workers.as_ref().map_or((0, Vec::new()), |w| (w.connections(), w.snapshot(after, limit)));
    Ok(Json(LiveWorkers { total, items }))
}

/// Which worker connections to list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConnectionQuery {
    /// Connections of this worker hardware.
    hardware_id: Option<String>,
    /// `true`: only open ones; `false`: only finished ones.
    open: Option<bool>,
    /// Rows to return (1 to 500; default 50).
    limit: Option<u32>,
    /// The `next` of the previous page.
    before: Option<i64>,
}

/// Worker connections as stored (every server instance's, past and present), newest first.
#[utoipa::path(get, path = "/api/v1/workers/connections", params(ConnectionQuery),
    responses((status = 200, body = ConnectionPage), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
async fn worker_connections(
    State(state): State<Arc<AdminState>>,
    query: Result<Query<ConnectionQuery>, QueryRejection>,
) -> ApiResult<ConnectionPage> {
    let Query(q) = query?;
    let filter = WorkerFilter { hardware_id: q.hardware_id, open: q.open };
    let found = state
        .services
        .store
        .list_worker_connections(&filter, Page::new(q.limit.unwrap_or(DEFAULT_LIMIT), q.before))
        .await?;
    Ok(Json(ConnectionPage { items: found.items, next: found.next }))
}

/// Nodes connected to this process now: heights submitted, solutions delivered.
#[utoipa::path(get, path = "/api/v1/nodes", params(LiveQuery),
    responses((status = 200, body = LiveNodes), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
async fn live_nodes(
    State(state): State<Arc<AdminState>>,
    query: Result<Query<LiveQuery>, QueryRejection>,
) -> ApiResult<LiveNodes> {
    let (after, limit) = query?.bounds();
    let (total, items) = state.nodes.as_ref().map_or((0, Vec::new()), |n| (n.connections(), n.snapshot(after, limit)));
    Ok(Json(LiveNodes { total, items }))
}

/// Active plugins, files that failed to load, and the latest reloads.
#[utoipa::path(get, path = "/api/v1/plugins", responses((status = 200, body = PluginsOut), (status = 401, body = ApiError)))]
async fn plugins(State(state): State<Arc<AdminState>>) -> ApiResult<PluginsOut> {
    let plugins = &state.services.plugins;
    Ok(Json(PluginsOut {
        active: plugins.reports(),
        failed: plugins.failures(),
        compiling: plugins.compiling(),
        shadows: plugins.shadows(),
        reloads: plugins.history(),
    }))
}
