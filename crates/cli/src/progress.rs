//! Showing an operation as it happens: a progress bar per step on a terminal, plain lines
//! otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use wukong_engine::Event;
use wukong_local::store::StoredEvent;

/// Renders events of one VM; returns `Some(succeeded)` when an operation finished.
pub struct Renderer {
    tty: bool,
    multi: MultiProgress,
    bars: HashMap<usize, ProgressBar>,
    descriptions: HashMap<usize, String>,
}

impl Renderer {
    /// A renderer for stdout (bars only on a terminal).
    pub fn new() -> Self {
        let tty = std::io::stdout().is_terminal();
        let multi = MultiProgress::with_draw_target(if tty {
            ProgressDrawTarget::stdout()
        } else {
            ProgressDrawTarget::hidden()
        });
        Renderer {
            tty,
            multi,
            bars: HashMap::new(),
            descriptions: HashMap::new(),
        }
    }

    fn line(&self, text: String) {
        if self.tty {
            let _ = self.multi.println(text);
        } else {
            println!("{text}");
        }
    }

    /// Shows one event; `Some(ok)` when it ends an operation.
    pub fn show(&mut self, e: &StoredEvent) -> Option<bool> {
        match &e.event {
            Event::Planned { plan, .. } | Event::Replanned { plan, .. } => {
                let verb = if matches!(e.event, Event::Planned { .. }) {
                    "plan"
                } else {
                    "re-planned (the spec changed)"
                };
                let (live, restart, offline) = plan.counts();
                self.line(format!(
                    "{verb}: {live} live, {restart} need a restart, {offline} offline"
                ));
            }
            Event::StepStarted { index, step, .. } => {
                let d = format!("[{}] {}", step.mode, step.action.describe());
                self.descriptions.insert(*index, d.clone());
                if self.tty {
                    let bar = self.multi.add(ProgressBar::new(100));
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{spinner} {msg:60} [{bar:20}] {pos:>3}% {elapsed_precise}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    bar.set_message(d);
                    bar.enable_steady_tick(Duration::from_millis(100));
                    self.bars.insert(*index, bar);
                } else {
                    self.line(format!("  … {d}"));
                }
            }
            Event::StepProgress {
                index,
                done,
                total,
                note,
                ..
            } => {
                if let Some(bar) = self.bars.get(index)
                    && *total > 0
                {
                    bar.set_position((done * 100 / total).min(100));
                    let _ = note;
                }
            }
            Event::StepDone {
                index, duration_ms, ..
            } => {
                let d = self.descriptions.get(index).cloned().unwrap_or_default();
                match self.bars.remove(index) {
                    Some(bar) => {
                        bar.set_position(100);
                        bar.finish_and_clear();
                        self.line(format!(
                            "  ✓ {d} — verified in the guest in {duration_ms} ms"
                        ));
                    }
                    None => self.line(format!(
                        "  ✓ {d} — verified in the guest in {duration_ms} ms"
                    )),
                }
            }
            Event::StepFailed {
                index,
                error,
                undone,
                ..
            } => {
                if let Some(bar) = self.bars.remove(index) {
                    bar.abandon();
                }
                let d = self.descriptions.get(index).cloned().unwrap_or_default();
                self.line(format!(
                    "  ✗ {d}: {error}{}",
                    if *undone { " (undone)" } else { "" }
                ));
            }
            Event::Restarting { steps, .. } => {
                self.line(format!("  … restarting to apply {} change(s)", steps.len()));
            }
            Event::Restarted { duration_ms, .. } => {
                self.line(format!("  ✓ restarted, guest back after {duration_ms} ms"));
            }
            Event::RestartPending { reason, steps, .. } => {
                for s in steps {
                    self.line(format!(
                        "  ⏸ {} — needs a restart: {}",
                        s.action.describe(),
                        s.reason
                    ));
                }
                self.line(format!("  pending: {reason}"));
            }
            Event::Notice { message, warning } => {
                self.line(format!("  {} {message}", if *warning { "!" } else { "·" }));
            }
            Event::Finished {
                succeeded, message, ..
            } => {
                for (_, bar) in self.bars.drain() {
                    bar.abandon();
                }
                match message {
                    Some(m) if !succeeded => self.line(format!("failed: {m}")),
                    _ => self.line("done".into()),
                }
                return Some(*succeeded);
            }
        }
        None
    }
}
