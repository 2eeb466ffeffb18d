//! How a discovery source is doing, as one watch sees it.

use std::time::{Duration, SystemTime};

/// The state of one watch's source. A watch whose source fails keeps its last endpoint set;
/// this says since when that set is unconfirmed and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceHealth {
    /// The source's kind (`static`, `consul`).
    pub source: &'static str,
    /// When the source last answered.
    pub last_success: Option<SystemTime>,
    /// When the current run of failures began (`None` while the source answers).
    pub failing_since: Option<SystemTime>,
    /// The last failure, for operators.
    pub last_error: Option<String>,
    /// Failures in a row.
    pub consecutive_errors: u32,
    /// The source's version of the answer (Consul's `X-Consul-Index`), 0 when it has none.
    pub index: u64,
    /// Answers that changed the endpoint set.
    pub changes: u64,
}

impl SourceHealth {
    /// A source that has not answered yet.
    pub fn new(source: &'static str) -> Self {
        Self {
            source,
            last_success: None,
            failing_since: None,
            last_error: None,
            consecutive_errors: 0,
            index: 0,
            changes: 0,
        }
    }

    /// A source that always answers (static configuration).
    pub fn always(source: &'static str) -> Self {
        Self {
            last_success: Some(SystemTime::now()),
            ..Self::new(source)
        }
    }

    /// Whether the last attempt to reach the source failed, so the set in use may be stale.
    pub fn is_stale(&self) -> bool {
        self.failing_since.is_some()
    }

    /// How long the set has gone unconfirmed: time since the last answer while failing.
    pub fn staleness(&self, now: SystemTime) -> Option<Duration> {
        self.failing_since?;
        let since = self.last_success.or(self.failing_since)?;
        Some(now.duration_since(since).unwrap_or_default())
    }

    pub(crate) fn succeeded(&mut self, index: u64, changed: bool) {
        self.last_success = Some(SystemTime::now());
        self.failing_since = None;
        self.consecutive_errors = 0;
        self.index = index;
        if changed {
            self.changes += 1;
        }
    }

    pub(crate) fn failed(&mut self, error: String) {
        if self.failing_since.is_none() {
            self.failing_since = Some(SystemTime::now());
        }
        self.last_error = Some(error);
        self.consecutive_errors = self.consecutive_errors.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_runs_from_the_last_answer_while_failing() {
        let mut h = SourceHealth::new("consul");
        assert!(!h.is_stale());
        h.succeeded(5, true);
        let answered = h.last_success.expect("answered");
        h.failed("connection refused".into());
        h.failed("connection refused".into());
        assert!(h.is_stale());
        assert_eq!(h.consecutive_errors, 2);
        let later = answered + Duration::from_secs(7);
        assert_eq!(h.staleness(later), Some(Duration::from_secs(7)));
        h.succeeded(6, false);
        assert!(!h.is_stale());
        assert_eq!(h.staleness(later), None);
        assert_eq!(h.consecutive_errors, 0);
        assert_eq!(h.changes, 1);
        assert_eq!(
            h.last_error.as_deref(),
            Some("connection refused"),
            "kept for operators"
        );
    }
}
