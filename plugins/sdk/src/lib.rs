//! Guest-side bindings for the `eligo:policy@0.2.0` world, generated once and shared
//! by every plugin in this workspace, and the [`Policy`] trait that spares a
//! plugin the hooks it does not implement.
//!
//! A plugin implements [`Policy`] (only `info` is required) and exports it:
//!
//! ```ignore
//! use eligo_plugin_sdk::*;
//! struct MyPolicy;
//! impl Policy for MyPolicy {
//!     fn info() -> PluginInfo { PluginInfo { name: "my-policy".into(), version: "0.1.0".into(), hooks: vec![Hook::ValidateSolution] } }
//!     fn validate_solution(job: Job, solution: Solution) -> Result<(), Reason> { Ok(()) }
//! }
//! export_policy!(MyPolicy);
//! ```
//!
//! Hooks a plugin does not list in its `info().hooks` are never called by the host.

wit_bindgen::generate!({
    path: "../../wit",
    world: "policy",
    pub_export_macro: true,
    default_bindings_module: "eligo_plugin_sdk",
});

pub use eligo::policy::host::log;
pub use eligo::policy::types::*;
pub use exports::eligo::policy::decisions::Guest;
pub use serde;
pub use serde_json;

/// A policy. Every hook but `info` has a default: the answer of a policy with no
/// opinion (admit, offer to everyone, valid, no settings). Override the hooks the
/// policy decides and list them in `info().hooks`.
pub trait Policy {
    /// Name, version and the hooks this policy implements.
    fn info() -> PluginInfo;

    /// The operator's settings, a JSON object as text (`{}` when none were
    /// given); called on every new instance before any decision. Refuse settings
    /// you cannot use: the host then keeps the previous version serving and shows
    /// the reason. The default takes no settings (see [`Settings`] for a policy
    /// that does).
    fn configure(settings: String) -> Result<(), Reason> {
        if settings.trim() == "{}" {
            Ok(())
        } else {
            Err(format!("{} takes no settings, got {settings}", Self::info().name))
        }
    }

    /// May this connection open at all? Default: yes.
    fn admit_connection(_request: ConnectionRequest, _now: TimestampMs) -> Result<(), Reason> {
        Ok(())
    }

    /// A worker's welcome: its profile and initial state word. Default: admitted,
    /// no tags or limits, state 0.
    fn admit_worker(_welcome: Welcome, _now: TimestampMs) -> Result<WorkerAdmission, Reason> {
        Ok(WorkerAdmission { profile: WorkerProfile { tags: Vec::new(), limits: Vec::new() }, state: 0 })
    }

    /// A node's job, with the node connection's state blob. Default: admitted
    /// unchanged, state unchanged.
    fn admit_job(job: JobSubmission, state: Vec<u8>, _now: TimestampMs) -> Result<JobAdmission, Reason> {
        Ok(JobAdmission { job, state })
    }

    /// Which workers receive a job. Default: all of them, states unchanged.
    fn offer_job(_job: Job, _profiles: Vec<WorkerProfile>, workers: Workers, _now: TimestampMs) -> JobOffer {
        JobOffer { workers: (0..workers.states.len() as u32).collect(), states: workers.states }
    }

    /// Is a solution valid for its job? Default: yes.
    fn validate_solution(_job: Job, _solution: Solution) -> Result<(), Reason> {
        Ok(())
    }

    /// Which nodes receive a valid solution. Default: all of them.
    fn offer_solution(_job: Job, _solution: Solution, nodes: Vec<NodeView>, _now: TimestampMs) -> Vec<u32> {
        (0..nodes.len() as u32).collect()
    }

    /// This server's answer to a client's challenge `once`. Default: refused.
    fn challenge_answer(_request: ConnectionRequest, _once: String) -> Result<String, Reason> {
        Err("this policy does not take the challenge".into())
    }

    /// The client's answer to the host's `once`, or `None` if it took no
    /// challenge: may the connection go on? Default: yes.
    fn check_challenge(
        _request: ConnectionRequest,
        _once: String,
        _answer: Option<String>,
        _now: TimestampMs,
    ) -> Result<(), Reason> {
        Ok(())
    }
}

/// Exports a [`Policy`] as the plugin's `decisions`.
#[macro_export]
macro_rules! export_policy {
    ($policy:ident) => {
        impl $crate::Guest for $policy {
            fn info() -> $crate::PluginInfo {
                <$policy as $crate::Policy>::info()
            }
            fn configure(settings: String) -> Result<(), $crate::Reason> {
                <$policy as $crate::Policy>::configure(settings)
            }
            fn admit_connection(
                request: $crate::ConnectionRequest,
                now: $crate::TimestampMs,
            ) -> Result<(), $crate::Reason> {
                <$policy as $crate::Policy>::admit_connection(request, now)
            }
            fn admit_worker(
                welcome: $crate::Welcome,
                now: $crate::TimestampMs,
            ) -> Result<$crate::WorkerAdmission, $crate::Reason> {
                <$policy as $crate::Policy>::admit_worker(welcome, now)
            }
            fn admit_job(
                job: $crate::JobSubmission,
                state: Vec<u8>,
                now: $crate::TimestampMs,
            ) -> Result<$crate::JobAdmission, $crate::Reason> {
                <$policy as $crate::Policy>::admit_job(job, state, now)
            }
            fn offer_job(
                job: $crate::Job,
                profiles: Vec<$crate::WorkerProfile>,
                workers: $crate::Workers,
                now: $crate::TimestampMs,
            ) -> $crate::JobOffer {
                <$policy as $crate::Policy>::offer_job(job, profiles, workers, now)
            }
            fn validate_solution(job: $crate::Job, solution: $crate::Solution) -> Result<(), $crate::Reason> {
                <$policy as $crate::Policy>::validate_solution(job, solution)
            }
            fn offer_solution(
                job: $crate::Job,
                solution: $crate::Solution,
                nodes: Vec<$crate::NodeView>,
                now: $crate::TimestampMs,
            ) -> Vec<u32> {
                <$policy as $crate::Policy>::offer_solution(job, solution, nodes, now)
            }
            fn challenge_answer(request: $crate::ConnectionRequest, once: String) -> Result<String, $crate::Reason> {
                <$policy as $crate::Policy>::challenge_answer(request, once)
            }
            fn check_challenge(
                request: $crate::ConnectionRequest,
                once: String,
                answer: Option<String>,
                now: $crate::TimestampMs,
            ) -> Result<(), $crate::Reason> {
                <$policy as $crate::Policy>::check_challenge(request, once, answer, now)
            }
        }
        $crate::export!($policy with_types_in $crate);
    };
}

/// A policy's settings, parsed once per instance by `configure` and read by the
/// hooks; the defaults (`T::default()`) apply until then.
///
/// ```ignore
/// #[derive(Default, serde::Deserialize)]
/// #[serde(default, deny_unknown_fields, crate = "eligo_plugin_sdk::serde")]
/// struct Config { cap: usize }
/// static CONFIG: Settings<Config> = Settings::new();
/// // in configure: CONFIG.configure(&settings)
/// // in a hook:    CONFIG.get().cap
/// ```
pub struct Settings<T>(std::sync::OnceLock<T>);

impl<T: Default + serde::de::DeserializeOwned> Settings<T> {
    /// No settings yet.
    pub const fn new() -> Self {
        Settings(std::sync::OnceLock::new())
    }

    /// Parses `settings` (the JSON text `configure` got) and keeps them; the
    /// refusal names what is wrong, e.g. an unknown key or a wrong type.
    pub fn configure(&self, settings: &str) -> Result<(), Reason> {
        let parsed: T = serde_json::from_str(settings).map_err(|e| format!("bad settings: {e}"))?;
        self.0.set(parsed).map_err(|_| "configured twice".to_string())
    }

    /// The settings; the defaults before `configure`.
    pub fn get(&self) -> &T {
        self.0.get_or_init(T::default)
    }
}

impl<T: Default + serde::de::DeserializeOwned> Default for Settings<T> {
    fn default() -> Self {
        Self::new()
    }
}
