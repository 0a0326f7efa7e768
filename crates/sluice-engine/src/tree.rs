//! A snapshot of the engine's live actor tree, read from ractor's supervision links.

use ractor::ActorCell;
use serde::Serialize;

use crate::supervisor::SupervisorStats;

#[derive(Debug, Clone, Serialize)]
pub struct ActorNode {
    pub name: String,
    pub kind: &'static str,
    /// Queue figures, on action supervisors.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub stats: Option<SupervisorStats>,
    pub children: Vec<ActorNode>,
}

fn kind_of(name: &str, root: &str) -> &'static str {
    let Some(rest) = name.strip_prefix(root) else {
        return "actor";
    };
    match rest.trim_start_matches('/').split('/').next() {
        Some("") => "engine",
        Some("ingestor") => "ingestor",
        Some("completions") => "completion-listener",
        Some("dead-letters") => "dead-letter-recorder",
        Some("workers") => "worker-monitor",
        Some("action") => "action-supervisor",
        Some("execution") => "execution",
        _ => "actor",
    }
}

pub(crate) fn snapshot(cell: &ActorCell, root: &str, stats: &[SupervisorStats]) -> ActorNode {
    let name = cell.get_name().unwrap_or_else(|| cell.get_id().to_string());
    let kind = kind_of(&name, root);
    let own_stats = (kind == "action-supervisor")
        .then(|| {
            stats.iter().find(|s| {
                name.strip_prefix(root)
                    .is_some_and(|rest| rest == format!("/action/{}", s.action))
            })
        })
        .flatten()
        .cloned();
    let mut children: Vec<ActorNode> = cell
        .get_children()
        .iter()
        .map(|child| snapshot(child, root, stats))
        .collect();
    children.sort_by(|a, b| a.name.cmp(&b.name));
    ActorNode {
        name,
        kind,
        stats: own_stats,
        children,
    }
}
