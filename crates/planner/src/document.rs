//! The plan as the CLI and the APIs print it: a stable, documented shape (docs/cli.md).

use serde::{Deserialize, Serialize};
use wukong_api::BackendKind;

use crate::plan::{Plan, Step};
use crate::window::RestartDecision;

/// A plan for one VM, as printed by `wukong plan -o json|yaml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanDocument {
    /// Always `Plan`.
    pub kind: String,
    /// The VM.
    pub vm: String,
    /// The backend planned for.
    pub backend: BackendKind,
    /// The steps, in order.
    pub steps: Vec<StepDocument>,
    /// What happens to restart-only steps, when there are any.
    pub restart: Option<RestartDecision>,
    /// Counts per mode.
    pub summary: Summary,
}

/// One step with its words.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepDocument {
    /// Position, from 1.
    pub index: usize,
    /// `cpu`, `memory`, `disk/NAME`, `network/NAME` or `vm`.
    pub resource: String,
    /// The change, e.g. `2 -> 4`.
    pub change: String,
    /// One line for people.
    pub description: String,
    /// The typed step (`action` plus its fields, `mode`, `reason`).
    #[serde(flatten)]
    pub step: Step,
}

/// Counts of steps per mode.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Live steps.
    pub live: usize,
    /// Restart-only steps.
    pub restart: usize,
    /// Offline steps (VM stopped).
    pub offline: usize,
}

impl PlanDocument {
    /// The document for `plan` of `vm` on `backend`.
    pub fn new(vm: &str, backend: BackendKind, plan: &Plan) -> Self {
        let (live, restart, offline) = plan.counts();
        PlanDocument {
            kind: "Plan".into(),
            vm: vm.into(),
            backend,
            steps: plan
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| StepDocument {
                    index: i + 1,
                    resource: s.action.resource(),
                    change: s.action.change(),
                    description: s.action.describe(),
                    step: s.clone(),
                })
                .collect(),
            restart: plan.restart.clone(),
            summary: Summary {
                live,
                restart,
                offline,
            },
        }
    }

    /// A table for terminals.
    pub fn table(&self) -> String {
        let mut out = format!("VM {} ({} backend)\n", self.vm, self.backend);
        if self.steps.is_empty() {
            out.push_str("  nothing to do: the VM already matches the spec\n");
            return out;
        }
        let rows: Vec<[String; 5]> = self
            .steps
            .iter()
            .map(|s| {
                [
                    s.index.to_string(),
                    s.step.mode.to_string(),
                    s.resource.clone(),
                    s.description.clone(),
                    s.step.reason.clone(),
                ]
            })
            .collect();
        let header = ["#", "MODE", "RESOURCE", "STEP", "WHY"].map(String::from);
        let mut widths = header.clone().map(|h| h.len());
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        for r in std::iter::once(&header).chain(&rows) {
            out.push_str("  ");
            for (i, (c, w)) in r.iter().zip(widths).enumerate() {
                if i + 1 == r.len() {
                    out.push_str(c);
                } else {
                    out.push_str(&format!("{c:<w$}  "));
                }
            }
            out.push('\n');
        }
        let s = &self.summary;
        out.push_str(&format!(
            "  {} live, {} need a restart, {} offline\n",
            s.live, s.restart, s.offline
        ));
        if let Some(r) = &self.restart {
            out.push_str(&format!(
                "  restart: {} — {}\n",
                if r.allowed_now {
                    "now, after the live steps"
                } else {
                    "not now"
                },
                r.reason
            ));
        }
        out
    }
}
