//! The one classification of a failed call ([`Failure`]) and typed sets of failures
//! ([`FailureSet`]) that retry, fallback and breaker settings share.
//!
//! A failure is classified once, where it happens; everything else derives from it: what the
//! breaker records ([`Failure::outcome`]), what the rolling window counts ([`Failure::event`]),
//! whether a policy covers it ([`FailureSet::contains`]).

use std::borrow::Cow;
use std::fmt;

use crate::{Event, Outcome};

/// Why a call produced no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// Connecting failed (refused, unreachable, TLS): the request was not sent.
    Connect,
    /// The TLS handshake with the dependency failed (its certificate is not trusted or not
    /// for the name asked, or no protocol in common): the request was not sent.
    Tls,
    /// Connecting took longer than the connect timeout: the request was not sent.
    ConnectTimeout,
    /// The attempt (or the call's deadline) timed out after the request was sent, or the
    /// deadline had passed before it could be.
    Timeout,
    /// The dependency broke the exchange (closed early, an invalid answer).
    Reset,
    /// The dependency answered with a status its caller counts as a failure.
    Status(u16),
    /// The dependency's answer cannot be relayed (its head breaks a size limit); it counts
    /// as a 502 from the dependency and is never retried.
    BadResponse,
    /// The circuit breaker refused the call.
    CircuitOpen,
    /// The bulkhead refused the call (full, or the queue wait ran out).
    BulkheadFull,
    /// No usable instance of the dependency.
    NoEndpoints,
    /// The concurrency limiter shed the call (the limit was reached for its priority). The
    /// caller's protection, never the dependency's failure: no breaker ever records it.
    Shed,
}

impl Failure {
    /// Whether the request may have reached the dependency (so only idempotent requests are
    /// safe to send again).
    pub fn sent(self) -> bool {
        matches!(
            self,
            Self::Timeout | Self::Reset | Self::Status(_) | Self::BadResponse
        )
    }

    /// Whether this is the caller's own refusal to call (load shedding), not the
    /// dependency's failure: never retried, never recorded as the dependency's outcome.
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            Self::CircuitOpen | Self::BulkheadFull | Self::NoEndpoints | Self::Shed
        )
    }

    /// What the circuit breaker records for an attempt that ended this way.
    pub fn outcome(self) -> Outcome {
        match self {
            Self::ConnectTimeout | Self::Timeout => Outcome::Timeout,
            _ => Outcome::Failure,
        }
    }

    /// The Hystrix event a call that ended this way counts as.
    pub fn event(self) -> Event {
        match self {
            Self::CircuitOpen => Event::ShortCircuited,
            Self::BulkheadFull | Self::Shed => Event::Rejected,
            Self::ConnectTimeout | Self::Timeout => Event::Timeout,
            Self::Connect
            | Self::Tls
            | Self::Reset
            | Self::Status(_)
            | Self::BadResponse
            | Self::NoEndpoints => Event::Failure,
        }
    }

    /// The condition name that covers this failure (`connect_failure`, `timeout`,
    /// `status_503`, ...), as `X-Fallback` and the logs name it.
    pub fn reason(self) -> Cow<'static, str> {
        match self {
            Self::Connect | Self::Tls => "connect_failure".into(),
            Self::ConnectTimeout | Self::Timeout => "timeout".into(),
            Self::Reset => "reset".into(),
            Self::Status(s) => format!("status_{s}").into(),
            Self::BadResponse => "status_502".into(),
            Self::CircuitOpen => "circuit_open".into(),
            Self::BulkheadFull => "bulkhead_full".into(),
            Self::NoEndpoints => "no_endpoints".into(),
            Self::Shed => "overloaded".into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason())
    }
}

/// A set of HTTP status codes (100-639).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct StatusSet([u64; 10]);

impl StatusSet {
    /// No status.
    pub const EMPTY: Self = Self([0; 10]);

    /// Every status from `from` to `to`, inclusive.
    pub fn range(from: u16, to: u16) -> Self {
        let mut s = Self::default();
        for c in from..=to {
            s.insert(c);
        }
        s
    }

    /// Every 5xx status.
    pub fn server_errors() -> Self {
        Self::range(500, 599)
    }

    /// Adds `code` (ignored when out of range).
    pub fn insert(&mut self, code: u16) {
        let c = usize::from(code);
        if let Some(w) = self.0.get_mut(c / 64) {
            *w |= 1 << (c % 64);
        }
    }

    /// Whether `code` is in the set.
    pub fn contains(&self, code: u16) -> bool {
        let c = usize::from(code);
        self.0.get(c / 64).is_some_and(|w| w & (1 << (c % 64)) != 0)
    }

    /// Adds every member of `other`.
    pub fn extend(&mut self, other: StatusSet) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a |= b;
        }
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
}

/// A failure condition by name, as config lists it (`on = ["connect_failure", 503]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Condition {
    /// `connect_failure`: connecting failed or timed out.
    ConnectFailure,
    /// `timeout`: an attempt, the deadline or the connect timed out.
    Timeout,
    /// `reset`: the dependency broke the exchange.
    Reset,
    /// `circuit_open`: the breaker refused the call.
    CircuitOpen,
    /// `bulkhead_full`: the bulkhead refused the call.
    BulkheadFull,
    /// `no_endpoints`: no usable instance.
    NoEndpoints,
    /// `overloaded`: the concurrency limiter shed the call.
    Overloaded,
}

impl Condition {
    /// Every condition, in a fixed order.
    pub const ALL: [Condition; 7] = [
        Self::ConnectFailure,
        Self::Timeout,
        Self::Reset,
        Self::CircuitOpen,
        Self::BulkheadFull,
        Self::NoEndpoints,
        Self::Overloaded,
    ];

    /// The name config uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::ConnectFailure => "connect_failure",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::CircuitOpen => "circuit_open",
            Self::BulkheadFull => "bulkhead_full",
            Self::NoEndpoints => "no_endpoints",
            Self::Overloaded => "overloaded",
        }
    }

    /// The condition called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// Which failures a policy covers: named conditions plus failure statuses. Built once at
/// config load; [`contains`](Self::contains) is a few bit tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct FailureSet {
    conditions: u8,
    statuses: StatusSet,
}

impl FailureSet {
    /// No failure.
    pub const EMPTY: Self = Self {
        conditions: 0,
        statuses: StatusSet::EMPTY,
    };

    /// The set of `conditions` and `statuses`.
    pub fn new(conditions: impl IntoIterator<Item = Condition>, statuses: StatusSet) -> Self {
        Self {
            conditions: conditions.into_iter().fold(0, |acc, c| acc | c.bit()),
            statuses,
        }
    }

    /// Every failure of the dependency itself (connect, timeout, reset, 5xx), no refusal:
    /// what a breaker counts by default.
    pub fn dependency_failures() -> Self {
        Self::new(
            [
                Condition::ConnectFailure,
                Condition::Timeout,
                Condition::Reset,
            ],
            StatusSet::server_errors(),
        )
    }

    /// Whether `condition` is named.
    pub fn has(&self, condition: Condition) -> bool {
        self.conditions & condition.bit() != 0
    }

    /// The failure statuses.
    pub fn statuses(&self) -> &StatusSet {
        &self.statuses
    }

    /// Whether the set covers `failure`. A connect timeout is covered by `timeout` and by
    /// `connect_failure`; an unrelayable answer counts as status 502.
    pub fn contains(&self, failure: Failure) -> bool {
        match failure {
            Failure::Connect | Failure::Tls => self.has(Condition::ConnectFailure),
            Failure::ConnectTimeout => {
                self.has(Condition::ConnectFailure) || self.has(Condition::Timeout)
            }
            Failure::Timeout => self.has(Condition::Timeout),
            Failure::Reset => self.has(Condition::Reset),
            Failure::Status(s) => self.statuses.contains(s),
            Failure::BadResponse => self.statuses.contains(502),
            Failure::CircuitOpen => self.has(Condition::CircuitOpen),
            Failure::BulkheadFull => self.has(Condition::BulkheadFull),
            Failure::NoEndpoints => self.has(Condition::NoEndpoints),
            Failure::Shed => self.has(Condition::Overloaded),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_sets() {
        let mut s = StatusSet::range(500, 599);
        assert!(s.contains(500) && s.contains(599) && !s.contains(499) && !s.contains(600));
        s.insert(429);
        assert!(s.contains(429));
        s.insert(9999);
        assert!(!s.contains(9999));
        assert!(StatusSet::default().is_empty());
    }

    #[test]
    fn a_set_covers_its_conditions_and_statuses() {
        let set = FailureSet::new([Condition::Reset], StatusSet::range(502, 504));
        assert!(set.contains(Failure::Reset));
        assert!(set.contains(Failure::Status(503)));
        assert!(set.contains(Failure::BadResponse), "counts as a 502");
        assert!(!set.contains(Failure::Status(500)));
        assert!(!set.contains(Failure::Connect));
        assert!(!set.contains(Failure::ConnectTimeout));
        assert!(!set.contains(Failure::CircuitOpen));
        let connect = FailureSet::new([Condition::ConnectFailure], StatusSet::EMPTY);
        assert!(connect.contains(Failure::ConnectTimeout));
        assert!(!connect.contains(Failure::Timeout));
        let timeout = FailureSet::new([Condition::Timeout], StatusSet::EMPTY);
        assert!(timeout.contains(Failure::ConnectTimeout) && timeout.contains(Failure::Timeout));
    }

    #[test]
    fn names_round_trip_and_failures_derive_their_records() {
        for c in Condition::ALL {
            assert_eq!(Condition::from_name(c.name()), Some(c));
        }
        assert_eq!(Condition::from_name("5xx"), None);
        assert_eq!(Failure::ConnectTimeout.outcome(), Outcome::Timeout);
        assert_eq!(Failure::Status(503).outcome(), Outcome::Failure);
        assert_eq!(Failure::CircuitOpen.event(), Event::ShortCircuited);
        assert_eq!(Failure::BulkheadFull.event(), Event::Rejected);
        assert_eq!(Failure::Timeout.event(), Event::Timeout);
        assert_eq!(Failure::Status(500).reason(), "status_500");
        assert!(!Failure::Connect.sent() && Failure::Reset.sent());
        assert!(Failure::NoEndpoints.is_refusal() && !Failure::Reset.is_refusal());
        assert!(Failure::Shed.is_refusal() && !Failure::Shed.sent());
        assert_eq!(Failure::Shed.event(), Event::Rejected);
    }
}
