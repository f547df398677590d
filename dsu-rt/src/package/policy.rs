//! Update policies: when prepare-to-die starts, and what happens when it cannot finish.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A time of day, UTC, as `HH:MM`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TimeOfDay {
    pub minutes: u32,
}

impl TryFrom<String> for TimeOfDay {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let (h, m) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}` is not a time of day; write HH:MM (UTC)"))?;
        let h: u32 = h.parse().map_err(|_| format!("bad hour in `{s}`"))?;
        let m: u32 = m.parse().map_err(|_| format!("bad minute in `{s}`"))?;
        if h > 23 || m > 59 {
            return Err(format!("`{s}` is not a time of day; write HH:MM (UTC)"));
        }
        Ok(TimeOfDay {
            minutes: h * 60 + m,
        })
    }
}

impl From<TimeOfDay> for String {
    fn from(t: TimeOfDay) -> String {
        format!("{:02}:{:02}", t.minutes / 60, t.minutes % 60)
    }
}

/// When an update's prepare-to-die may start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "when", rename_all = "snake_case")]
pub enum Policy {
    /// As soon as the package is validated (the default).
    Asap {
        /// Attempts after a prepare-to-die timeout.
        #[serde(default)]
        retries: u32,
        #[serde(default = "default_retry_delay")]
        retry_delay_ms: u64,
    },
    /// When every affected component's call rate is below a bound, sampled over `sample_ms`.
    RateBelow {
        calls_per_sec: f64,
        #[serde(default = "default_sample")]
        sample_ms: u64,
        /// Give up when the rate stays above the bound this long.
        #[serde(default = "default_give_up")]
        give_up_ms: u64,
        #[serde(default)]
        retries: u32,
    },
    /// Inside a daily UTC window (`start` may be after `end`: the window spans midnight).
    Window {
        start: TimeOfDay,
        end: TimeOfDay,
        /// Give up when the window has not opened within this long.
        #[serde(default = "default_window_give_up")]
        give_up_ms: u64,
        #[serde(default)]
        retries: u32,
    },
    /// Validated and loaded now, applied only when an operator commits it.
    Staged,
}

fn default_retry_delay() -> u64 {
    500
}
fn default_sample() -> u64 {
    200
}
fn default_give_up() -> u64 {
    60_000
}
fn default_window_give_up() -> u64 {
    24 * 3600 * 1000
}

impl Default for Policy {
    fn default() -> Self {
        Policy::Asap {
            retries: 0,
            retry_delay_ms: default_retry_delay(),
        }
    }
}

impl Policy {
    /// Attempts after the first one.
    pub fn retries(&self) -> u32 {
        match self {
            Policy::Asap { retries, .. }
            | Policy::RateBelow { retries, .. }
            | Policy::Window { retries, .. } => *retries,
            Policy::Staged => 0,
        }
    }

    pub(crate) fn retry_delay(&self) -> Duration {
        match self {
            Policy::Asap { retry_delay_ms, .. } => Duration::from_millis(*retry_delay_ms),
            _ => Duration::from_millis(default_retry_delay()),
        }
    }
}

/// Minutes since midnight UTC.
pub(crate) fn now_minutes() -> u32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    ((secs / 60) % (24 * 60)) as u32
}

/// Whether `now` (minutes since midnight) is inside the window.
pub(crate) fn in_window(start: TimeOfDay, end: TimeOfDay, now: u32) -> bool {
    if start.minutes <= end.minutes {
        (start.minutes..end.minutes).contains(&now)
    } else {
        now >= start.minutes || now < end.minutes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TimeOfDay {
        TimeOfDay::try_from(s.to_string()).unwrap()
    }

    #[test]
    fn windows_including_midnight() {
        assert!(in_window(t("02:00"), t("04:00"), 3 * 60));
        assert!(!in_window(t("02:00"), t("04:00"), 4 * 60));
        assert!(in_window(t("23:00"), t("01:00"), 23 * 60 + 30));
        assert!(in_window(t("23:00"), t("01:00"), 30));
        assert!(!in_window(t("23:00"), t("01:00"), 12 * 60));
    }

    #[test]
    fn policies_read_from_json() {
        let p: Policy =
            serde_json::from_str(r#"{"when":"window","start":"02:00","end":"04:30"}"#).unwrap();
        assert!(matches!(p, Policy::Window { .. }));
        let p: Policy =
            serde_json::from_str(r#"{"when":"rate_below","calls_per_sec":10}"#).unwrap();
        assert!(matches!(p, Policy::RateBelow { sample_ms: 200, .. }));
        assert!(serde_json::from_str::<Policy>(
            r#"{"when":"window","start":"25:00","end":"01:00"}"#
        )
        .is_err());
    }
}
