//! What the host reports about a plugin. Both the composed set and a shadow
//! candidate carry one, so it sits below them both.

/// What the host reports about an active plugin.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PluginReport {
    /// The key: the file stem, which also orders composition.
    pub key: String,
    /// The file it was loaded from (empty for a built-in policy).
    pub file: String,
    /// The name the plugin gives itself.
    pub name: String,
    /// The version the plugin gives itself.
    pub version: String,
    /// The contract it was built against, e.g. `eligo:policy@0.2.0`.
    pub wit: String,
    /// Where its settings came from (a `.toml` file or a configuration table);
    /// `None` when it runs with none. The settings themselves are not shown: they
    /// may hold secrets.
    pub settings: Option<String>,
    /// sha256 of the file, hex.
    pub sha256: String,
    /// When it was loaded, RFC 3339.
    pub loaded_at: String,
    /// The hooks it implements.
    pub hooks: Vec<String>,
    /// How its code was made: `fresh` (compiled at this load) or `cache` (taken
    /// from eligo's cache of compiled plugins); `None` for a built-in policy.
    pub compiled: Option<super::Compiled>,
    /// Whether this is no plugin but the refusing stand-in for one that failed to
    /// load: it decides, but is listed under `failed`, not as active.
    #[serde(skip)]
    pub stand_in: bool,
}
