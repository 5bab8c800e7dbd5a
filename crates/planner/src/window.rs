//! Whether the restart policy allows a restart now, and when it next will.

use jiff::civil::Weekday as CivilDay;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use wukong_api::validate::parse_window;
use wukong_api::{MaintenanceWindow, RestartPolicy, Weekday};

/// What happens to the restart-only steps of a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestartDecision {
    /// The policy that decided.
    pub policy: RestartPolicy,
    /// Whether the restart happens right after the live steps.
    pub allowed_now: bool,
    /// Why, in words.
    pub reason: String,
    /// Under `Window`, when the next window opens (RFC 3339, UTC), if it is not open now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_window: Option<String>,
}

fn civil(day: Weekday) -> CivilDay {
    match day {
        Weekday::Mon => CivilDay::Monday,
        Weekday::Tue => CivilDay::Tuesday,
        Weekday::Wed => CivilDay::Wednesday,
        Weekday::Thu => CivilDay::Thursday,
        Weekday::Fri => CivilDay::Friday,
        Weekday::Sat => CivilDay::Saturday,
        Weekday::Sun => CivilDay::Sunday,
    }
}

/// Decides the restart for `policy` at `now`.
pub fn restart_decision(
    policy: RestartPolicy,
    window: Option<&MaintenanceWindow>,
    now: Timestamp,
) -> RestartDecision {
    match policy {
        RestartPolicy::Never => RestartDecision {
            policy,
            allowed_now: false,
            reason: "restartPolicy is Never: the changes wait, listed in RestartRequired, until `wukong restart`".into(),
            next_window: None,
        },
        RestartPolicy::Automatic => RestartDecision {
            policy,
            allowed_now: true,
            reason: "restartPolicy is Automatic: one restart after the live steps".into(),
            next_window: None,
        },
        RestartPolicy::Window => match window.map(|w| (w, window_state(w, now))) {
            Some((w, Some(WindowState::Open { closes }))) => RestartDecision {
                policy,
                allowed_now: true,
                reason: format!(
                    "the maintenance window ({} for {}) is open until {closes}",
                    w.start, w.duration
                ),
                next_window: None,
            },
            Some((w, Some(WindowState::Closed { opens }))) => RestartDecision {
                policy,
                allowed_now: false,
                reason: format!(
                    "waiting for the maintenance window ({} UTC for {}), next at {opens}",
                    w.start, w.duration
                ),
                next_window: Some(opens.to_string()),
            },
            _ => RestartDecision {
                policy,
                allowed_now: false,
                reason: "restartPolicy is Window but the maintenanceWindow is missing or invalid".into(),
                next_window: None,
            },
        },
    }
}

/// Open (until when) or closed (opening when).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowState {
    /// Open now.
    Open {
        /// When it closes.
        closes: Timestamp,
    },
    /// Closed now.
    Closed {
        /// When it next opens.
        opens: Timestamp,
    },
}

/// Where `now` stands relative to a weekly UTC window; `None` for an invalid window.
pub fn window_state(w: &MaintenanceWindow, now: Timestamp) -> Option<WindowState> {
    let m = parse_window(w).ok()?;
    let today = now.to_zoned(TimeZone::UTC).date();
    let days: Vec<CivilDay> = w.days.iter().map(|d| civil(*d)).collect();
    let opens_on = |date: jiff::civil::Date| days.is_empty() || days.contains(&date.weekday());
    // A window that opened yesterday may still be open today.
    for offset in -1i64..=7 {
        let date = today.checked_add(jiff::Span::new().days(offset)).ok()?;
        if !opens_on(date) {
            continue;
        }
        let start = date
            .to_zoned(TimeZone::UTC)
            .ok()?
            .timestamp()
            .checked_add(SignedDuration::from_mins(i64::from(m.start)))
            .ok()?;
        let end = start
            .checked_add(SignedDuration::from_mins(i64::from(m.duration)))
            .ok()?;
        if start <= now && now < end {
            return Some(WindowState::Open { closes: end });
        }
        if start > now {
            return Some(WindowState::Closed { opens: start });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(days: &[Weekday], start: &str, duration: &str) -> MaintenanceWindow {
        MaintenanceWindow {
            days: days.to_vec(),
            start: start.into(),
            duration: duration.into(),
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn open_inside_closed_outside() {
        // 2026-11-28 is a Saturday.
        let w = window(&[Weekday::Sat], "02:00", "3h");
        assert_eq!(
            window_state(&w, at("2026-11-28T03:00:00Z")),
            Some(WindowState::Open {
                closes: at("2026-11-28T05:00:00Z")
            })
        );
        assert_eq!(
            window_state(&w, at("2026-11-28T05:00:00Z")),
            Some(WindowState::Closed {
                opens: at("2026-12-05T02:00:00Z")
            })
        );
        assert_eq!(
            window_state(&w, at("2026-11-25T12:00:00Z")),
            Some(WindowState::Closed {
                opens: at("2026-11-28T02:00:00Z")
            })
        );
    }

    #[test]
    fn a_window_spanning_midnight_is_open_the_next_morning() {
        let w = window(&[Weekday::Fri], "23:00", "2h");
        assert_eq!(
            window_state(&w, at("2026-11-28T00:30:00Z")),
            Some(WindowState::Open {
                closes: at("2026-11-28T01:00:00Z")
            })
        );
    }

    #[test]
    fn no_days_means_every_day() {
        let w = window(&[], "01:00", "1h");
        assert_eq!(
            window_state(&w, at("2026-11-25T12:00:00Z")),
            Some(WindowState::Closed {
                opens: at("2026-11-26T01:00:00Z")
            })
        );
    }

    #[test]
    fn decisions() {
        let now = at("2026-11-25T12:00:00Z");
        assert!(!restart_decision(RestartPolicy::Never, None, now).allowed_now);
        assert!(restart_decision(RestartPolicy::Automatic, None, now).allowed_now);
        let w = window(&[], "11:30", "1h");
        assert!(restart_decision(RestartPolicy::Window, Some(&w), now).allowed_now);
        let d = restart_decision(
            RestartPolicy::Window,
            Some(&window(&[], "13:00", "1h")),
            now,
        );
        assert!(!d.allowed_now);
        assert_eq!(d.next_window.as_deref(), Some("2026-11-25T13:00:00Z"));
        assert!(!restart_decision(RestartPolicy::Window, None, now).allowed_now);
    }
}
