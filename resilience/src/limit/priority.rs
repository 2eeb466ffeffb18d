//! Request priority: a score from 0 to 100 and the three classes shedding and the metrics name.

use std::fmt;

/// How much a request matters when there is not room for every request: a score from 0
/// (shed first) to 100 (shed last).
///
/// The classes are score ranges: [`Class::Critical`] 80-100, [`Class::Degraded`] 40-79,
/// [`Class::NonCritical`] 0-39. Their names stand for 100, 60 and 20.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(u8);

/// A priority class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Shed first (prefetch, logging, playback events).
    NonCritical,
    /// Serves a degraded experience when shed (browsing, artwork).
    Degraded,
    /// The product does not work without it (playback).
    Critical,
}

impl Class {
    /// Every class, lowest first (the order of per-class counters).
    pub const ALL: [Class; 3] = [Class::NonCritical, Class::Degraded, Class::Critical];

    /// The name in config, metrics and logs: `critical`, `degraded`, `non_critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Critical => "critical",
            Class::Degraded => "degraded",
            Class::NonCritical => "non_critical",
        }
    }

    /// Index into [`Class::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far a retry ranks below its request's first attempt.
const RETRY_PENALTY: u8 = 30;

impl Priority {
    /// The `critical` class's score.
    pub const CRITICAL: Priority = Priority(100);
    /// The `degraded` class's score: the default of a request nothing ranks.
    pub const DEGRADED: Priority = Priority(60);
    /// The `non_critical` class's score.
    pub const NON_CRITICAL: Priority = Priority(20);

    /// A score; `None` above 100.
    pub fn new(score: u8) -> Option<Self> {
        (score <= 100).then_some(Self(score))
    }

    /// The score.
    pub fn score(self) -> u8 {
        self.0
    }

    /// Its class.
    pub fn class(self) -> Class {
        match self.0 {
            80.. => Class::Critical,
            40..=79 => Class::Degraded,
            _ => Class::NonCritical,
        }
    }

    /// What a retry (or hedge) of a request with this priority ranks as: 30 points lower, so
    /// a retry of a critical request ranks with degraded first attempts.
    pub fn retry(self) -> Self {
        Self(self.0.saturating_sub(RETRY_PENALTY))
    }

    /// Reads a class name (`critical`, `degraded`, `non_critical` or `non-critical`) or a
    /// score (`0`-`100`), as config, claims and headers carry them.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        match t.to_ascii_lowercase().as_str() {
            "critical" => return Ok(Self::CRITICAL),
            "degraded" => return Ok(Self::DEGRADED),
            "non_critical" | "non-critical" | "noncritical" => return Ok(Self::NON_CRITICAL),
            _ => {}
        }
        t.parse::<u8>().ok().and_then(Self::new).ok_or_else(|| {
            format!(
                "`{t}` is not a priority: use critical, degraded, non_critical or a score from 0 to 100"
            )
        })
    }
}

impl Default for Priority {
    fn default() -> Self {
        Self::DEGRADED
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.0, self.class())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_scores_and_classes() {
        assert_eq!(Priority::parse("critical"), Ok(Priority::CRITICAL));
        assert_eq!(
            Priority::parse(" Non-Critical "),
            Ok(Priority::NON_CRITICAL)
        );
        assert_eq!(
            Priority::parse("75").map(Priority::class),
            Ok(Class::Degraded)
        );
        assert_eq!(
            Priority::parse("80").map(Priority::class),
            Ok(Class::Critical)
        );
        assert_eq!(
            Priority::parse("39").map(Priority::class),
            Ok(Class::NonCritical)
        );
        for bad in ["101", "-1", "", "urgent", "1e2"] {
            assert!(Priority::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Priority::CRITICAL.retry().class(), Class::Degraded);
        assert_eq!(Priority::NON_CRITICAL.retry(), Priority(0));
    }
}
