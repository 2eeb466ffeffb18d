//! The retry rule, in one place: whether a classified failure earns another attempt. The
//! gateway's exchange and the tower [`RetryLayer`](crate::tower::RetryLayer) both decide with
//! [`RetryPolicy::decide`]; the budget is applied apart from the policy, after it agrees.

use std::time::Instant;

use crate::{Condition, Failure, FailureSet, RetryBudget, StatusSet};

/// When and how often a call is attempted again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    /// The failures that call for a retry. Refusals (open breaker, full bulkhead, no
    /// instance) are never retried, whatever the set says: they are load shedding.
    pub on: FailureSet,
    /// Retry requests that are not idempotent even after they were sent. A request that was
    /// never sent (a connect failure) is always safe to send.
    pub non_idempotent: bool,
}

impl RetryPolicy {
    /// Up to `retries` retries of any failure of the dependency (connect, timeout, reset, any
    /// failure status), for calls that are safe to repeat: what the tower layer does when
    /// its classifier is the only judge.
    pub fn any_failure(retries: u32) -> Self {
        Self {
            retries,
            on: FailureSet::new(
                [
                    Condition::ConnectFailure,
                    Condition::Timeout,
                    Condition::Reset,
                ],
                StatusSet::range(100, 639),
            ),
            non_idempotent: true,
        }
    }

    /// The policy's answer alone, before the budget: another attempt after `failure` of a
    /// request (`idempotent` or not) that has had `retries_done` retries.
    pub fn wants(&self, failure: Failure, idempotent: bool, retries_done: u32) -> RetryDecision {
        if failure.is_refusal() || !self.on.contains(failure) {
            return RetryDecision::NotCovered;
        }
        if failure.sent() && !idempotent && !self.non_idempotent {
            return RetryDecision::Unsafe;
        }
        if retries_done >= self.retries {
            return RetryDecision::RetriesUsed;
        }
        RetryDecision::Retry
    }

    /// [`wants`](Self::wants), then a withdrawal from `budget` at `now` when the policy
    /// agrees.
    pub fn decide(
        &self,
        failure: Failure,
        idempotent: bool,
        retries_done: u32,
        budget: &RetryBudget,
        now: Instant,
    ) -> RetryDecision {
        match self.wants(failure, idempotent, retries_done) {
            RetryDecision::Retry if !budget.try_withdraw(now) => RetryDecision::OverBudget,
            other => other,
        }
    }
}

/// The answer of [`RetryPolicy::decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Attempt again (the budget paid for it).
    Retry,
    /// The policy does not retry this failure.
    NotCovered,
    /// The request was sent and is not idempotent.
    Unsafe,
    /// The policy's retries are used up.
    RetriesUsed,
    /// The retry budget is exhausted.
    OverBudget,
}

impl RetryDecision {
    /// Whether another attempt follows.
    pub fn retries(self) -> bool {
        self == Self::Retry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BudgetConfig;
    use std::time::Duration;

    fn policy(retries: u32) -> RetryPolicy {
        RetryPolicy {
            retries,
            on: FailureSet::new(
                [Condition::ConnectFailure, Condition::Reset],
                StatusSet::range(502, 504),
            ),
            non_idempotent: false,
        }
    }

    #[test]
    fn covered_failures_are_retried_until_the_retries_are_used() {
        let p = policy(2);
        assert_eq!(p.wants(Failure::Status(503), true, 0), RetryDecision::Retry);
        assert_eq!(p.wants(Failure::Status(503), true, 1), RetryDecision::Retry);
        assert_eq!(
            p.wants(Failure::Status(503), true, 2),
            RetryDecision::RetriesUsed
        );
        assert_eq!(
            p.wants(Failure::Status(500), true, 0),
            RetryDecision::NotCovered
        );
        assert_eq!(
            p.wants(Failure::Timeout, true, 0),
            RetryDecision::NotCovered
        );
    }

    #[test]
    fn a_sent_request_that_is_not_idempotent_is_not_resent_unless_allowed() {
        let p = policy(1);
        assert_eq!(p.wants(Failure::Reset, false, 0), RetryDecision::Unsafe);
        assert_eq!(
            p.wants(Failure::Connect, false, 0),
            RetryDecision::Retry,
            "never sent: any method"
        );
        let allowed = RetryPolicy {
            non_idempotent: true,
            ..p
        };
        assert_eq!(
            allowed.wants(Failure::Reset, false, 0),
            RetryDecision::Retry
        );
    }

    #[test]
    fn refusals_are_never_retried() {
        let mut p = policy(3);
        p.on = FailureSet::new(Condition::ALL, StatusSet::server_errors());
        for f in [
            Failure::CircuitOpen,
            Failure::BulkheadFull,
            Failure::NoEndpoints,
        ] {
            assert_eq!(p.wants(f, true, 0), RetryDecision::NotCovered, "{f}");
        }
    }

    #[test]
    fn the_budget_is_applied_after_the_policy() {
        let now = Instant::now();
        let empty = RetryBudget::new(
            BudgetConfig {
                ratio: 0.0,
                min_per_second: 0,
                window: Duration::from_secs(10),
            },
            now,
        );
        let p = policy(1);
        assert_eq!(
            p.decide(Failure::Reset, true, 0, &empty, now),
            RetryDecision::OverBudget
        );
        assert_eq!(
            p.decide(Failure::Status(500), true, 0, &empty, now),
            RetryDecision::NotCovered,
            "the budget is not touched when the policy says no"
        );
        let roomy = RetryBudget::new(BudgetConfig::default(), now);
        assert!(p.decide(Failure::Reset, true, 0, &roomy, now).retries());
    }
}
