//! Specs for aggregates: *given* past events, *when* a command, *then* these events or this
//! refusal — checked without an engine.
//!
//! [`Aggregate::handle`] is pure and [`Aggregate::apply`] never fails, so an aggregate's
//! decisions can be tested as plain functions: [`AggregateSpec::given`] folds the events into
//! a new state with `apply` (as a load from the store would), [`AggregateSpec::when`] calls
//! `handle` once, and [`SpecOutcome::then_expect_events`] / [`SpecOutcome::then_expect_error`]
//! compare its answer with the expected one, panicking (at the caller's line) with both when they
//! differ. These specs pin down the business rules quickly; the engine-backed tests of the
//! [`CommandBus`](crate::CommandBus) cover what only the engine can show (concurrency, snapshots,
//! restarts). After serverlesstechnology/cqrs's `TestFramework`.
//!
//! ```
//! use inorder_cqrs::{Aggregate, DomainEvent, testing::AggregateSpec};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Default, Serialize, Deserialize)]
//! struct Account {
//!     funds: u64,
//! }
//!
//! enum Command {
//!     Deposit(u64),
//!     Grant(u64),
//! }
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! enum Event {
//!     Deposited(u64),
//!     Granted(u64),
//! }
//!
//! impl DomainEvent for Event {
//!     fn action(&self) -> &'static str {
//!         match self {
//!             Self::Deposited(_) => "account.deposited",
//!             Self::Granted(_) => "account.granted",
//!         }
//!     }
//! }
//!
//! #[derive(Debug, PartialEq, thiserror::Error)]
//! #[error("{available} available")]
//! struct InsufficientFunds {
//!     available: u64,
//! }
//!
//! impl Aggregate for Account {
//!     const TOPIC: &'static str = "accounts";
//!     type Command = Command;
//!     type Event = Event;
//!     type Error = InsufficientFunds;
//!
//!     fn handle(&self, command: &Command) -> Result<Vec<Event>, InsufficientFunds> {
//!         match *command {
//!             Command::Deposit(amount) => Ok(vec![Event::Deposited(amount)]),
//!             Command::Grant(amount) if amount > self.funds => {
//!                 Err(InsufficientFunds { available: self.funds })
//!             }
//!             Command::Grant(amount) => Ok(vec![Event::Granted(amount)]),
//!         }
//!     }
//!
//!     fn apply(&mut self, event: &Event) {
//!         match *event {
//!             Event::Deposited(amount) => self.funds += amount,
//!             Event::Granted(amount) => self.funds -= amount,
//!         }
//!     }
//! }
//!
//! AggregateSpec::<Account>::given([Event::Deposited(50)])
//!     .when(Command::Grant(30))
//!     .then_expect_events([Event::Granted(30)]);
//! AggregateSpec::<Account>::given([Event::Deposited(50), Event::Granted(30)])
//!     .when(Command::Grant(30))
//!     .then_expect_error(InsufficientFunds { available: 20 });
//! ```

use std::fmt::Debug;

use crate::aggregate::Aggregate;

/// An aggregate in a known state, waiting for the command of a spec.
#[derive(Debug, Clone)]
pub struct AggregateSpec<A> {
    state: A,
}

impl<A: Aggregate> AggregateSpec<A> {
    /// A new aggregate: no event yet (the state is `A::default()`).
    #[must_use]
    pub fn given_no_events() -> Self {
        Self { state: A::default() }
    }

    /// An aggregate whose stream holds `events`: each applied in order to a new state.
    #[must_use]
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        let mut state = A::default();
        for event in events {
            state.apply(&event);
        }
        Self { state }
    }

    /// Lets the aggregate decide `command` (one call of [`Aggregate::handle`]).
    #[must_use = "a spec checks nothing until one of its `then_expect_*` methods is called"]
    #[expect(
        clippy::needless_pass_by_value,
        reason = "owned, so that a spec reads `.when(Grant(30))`"
    )]
    pub fn when(self, command: A::Command) -> SpecOutcome<A> {
        let decision = self.state.handle(&command);
        SpecOutcome { decision }
    }
}

/// What the aggregate decided in a spec, to compare with what was expected.
pub struct SpecOutcome<A: Aggregate> {
    decision: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> Debug for SpecOutcome<A>
where
    A::Event: Debug,
{
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("SpecOutcome").field("decision", &self.decision).finish()
    }
}

impl<A: Aggregate> SpecOutcome<A> {
    /// Checks that the command was carried out with exactly `expected`, in order (none for a
    /// command that changes nothing).
    ///
    /// # Panics
    /// When the aggregate refused the command or decided other events.
    #[track_caller]
    pub fn then_expect_events(self, expected: impl IntoIterator<Item = A::Event>)
    where
        A::Event: PartialEq + Debug,
        A::Error: Debug,
    {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.decision {
            Ok(events) => assert_eq!(
                events, expected,
                "the aggregate decided other events (left) than expected (right)"
            ),
            Err(refusal) => {
                panic!("expected the events {expected:?}, but the aggregate refused: {refusal:?}")
            }
        }
    }

    /// Checks that the aggregate refused the command with `expected`.
    ///
    /// # Panics
    /// When the aggregate carried the command out or refused it otherwise.
    #[track_caller]
    #[expect(
        clippy::needless_pass_by_value,
        reason = "owned, so that a spec reads `.then_expect_error(InsufficientFunds { .. })`"
    )]
    pub fn then_expect_error(self, expected: A::Error)
    where
        A::Event: Debug,
        A::Error: PartialEq + Debug,
    {
        match self.decision {
            Err(refusal) => {
                assert_eq!(
                    refusal, expected,
                    "the aggregate refused (left) otherwise than expected (right)"
                );
            }
            Ok(events) => {
                panic!("expected the refusal {expected:?}, but the aggregate decided {events:?}")
            }
        }
    }

    /// Checks that the aggregate refused the command with an error whose message
    /// (`Display`) is `expected`: for error types that are not `PartialEq`.
    ///
    /// # Panics
    /// When the aggregate carried the command out or refused it with another message.
    #[track_caller]
    pub fn then_expect_error_message(self, expected: &str)
    where
        A::Event: Debug,
    {
        match self.decision {
            Err(refusal) => {
                assert_eq!(
                    refusal.to_string(),
                    expected,
                    "the aggregate refused (left) otherwise than expected (right)"
                );
            }
            Ok(events) => {
                panic!("expected the refusal {expected:?}, but the aggregate decided {events:?}")
            }
        }
    }

    /// The decision itself, to check it some other way.
    ///
    /// # Errors
    /// The aggregate's refusal.
    pub fn into_result(self) -> Result<Vec<A::Event>, A::Error> {
        self.decision
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::aggregate::DomainEvent;

    /// A light that is switched on once.
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    struct Light {
        on: bool,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct SwitchedOn;

    impl DomainEvent for SwitchedOn {
        fn action(&self) -> &'static str {
            "light.switched_on"
        }
    }

    #[derive(Debug, PartialEq, thiserror::Error)]
    enum LightError {
        #[error("already on")]
        AlreadyOn,
        #[error("broken")]
        Broken,
    }

    impl Aggregate for Light {
        const TOPIC: &'static str = "lights";
        type Command = ();
        type Event = SwitchedOn;
        type Error = LightError;

        fn handle(&self, (): &()) -> Result<Vec<SwitchedOn>, LightError> {
            if self.on { Err(LightError::AlreadyOn) } else { Ok(vec![SwitchedOn]) }
        }

        fn apply(&mut self, SwitchedOn: &SwitchedOn) {
            self.on = true;
        }
    }

    /// The message a failing spec panics with.
    fn failure(spec: impl FnOnce()) -> String {
        let Err(payload) = catch_unwind(AssertUnwindSafe(spec)) else {
            panic!("the spec passed; it should have failed");
        };
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|text| (*text).to_owned()))
            .unwrap_or_default()
    }

    #[test]
    fn given_events_are_applied_before_the_command_is_decided() {
        AggregateSpec::<Light>::given_no_events().when(()).then_expect_events([SwitchedOn]);
        AggregateSpec::<Light>::given([SwitchedOn])
            .when(())
            .then_expect_error(LightError::AlreadyOn);
        AggregateSpec::<Light>::given([SwitchedOn])
            .when(())
            .then_expect_error_message("already on");
        let decided = AggregateSpec::<Light>::given_no_events().when(()).into_result();
        assert_eq!(decided, Ok(vec![SwitchedOn]));
    }

    #[test]
    fn a_spec_fails_naming_both_sides_when_the_decision_is_not_the_expected_one() {
        let other_events =
            failure(|| AggregateSpec::<Light>::given_no_events().when(()).then_expect_events([]));
        assert!(
            other_events.contains("other events (left) than expected (right)"),
            "{other_events}"
        );
        assert!(other_events.contains("SwitchedOn"), "{other_events}");

        let refused = failure(|| {
            AggregateSpec::<Light>::given([SwitchedOn]).when(()).then_expect_events([SwitchedOn]);
        });
        assert!(refused.contains("refused: AlreadyOn"), "{refused}");

        let carried_out = failure(|| {
            AggregateSpec::<Light>::given_no_events()
                .when(())
                .then_expect_error(LightError::Broken);
        });
        assert!(carried_out.contains("the refusal Broken"), "{carried_out}");
        assert!(carried_out.contains("decided [SwitchedOn]"), "{carried_out}");

        let other_refusal = failure(|| {
            AggregateSpec::<Light>::given([SwitchedOn])
                .when(())
                .then_expect_error(LightError::Broken);
        });
        assert!(
            other_refusal.contains("refused (left) otherwise than expected (right)"),
            "{other_refusal}"
        );
        assert!(other_refusal.contains("AlreadyOn"), "{other_refusal}");

        let other_message = failure(|| {
            AggregateSpec::<Light>::given([SwitchedOn])
                .when(())
                .then_expect_error_message("broken");
        });
        assert!(other_message.contains("already on"), "{other_message}");
    }
}
