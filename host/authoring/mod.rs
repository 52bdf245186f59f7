//! The plugin author's tools, run by `eligo plugin`: a plugin's hooks on cases
//! ([`runner`]), a new plugin's project ([`scaffold`]), and a candidate plugin
//! over the recorded history beside the active ones ([`replay`]).

pub mod replay;
pub mod runner;
pub mod scaffold;
