//! RFC 7606 outcomes per neighbour: UPDATEs whose routes were treated as withdrawn, and those
//! that had attributes discarded. Counted for metrics, and logged at warn the first time each
//! kind happens on a neighbour, at debug after that, so a peer sending the same malformed
//! attribute in every UPDATE cannot flood the log.

use std::net::IpAddr;

use crate::wire::attribute::AttributeError;
use crate::wire::update::ErrorAction;

/// The two survivable outcomes (RFC 7606 §2), as metrics label them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// "treat-as-withdraw": the UPDATE's routes were withdrawn instead.
    TreatAsWithdraw,
    /// "attribute discard": attributes were dropped, the routes stand.
    AttributeDiscard,
}

impl Outcome {
    /// The label value: `treat-as-withdraw` or `attribute-discard`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::TreatAsWithdraw => "treat-as-withdraw",
            Outcome::AttributeDiscard => "attribute-discard",
        }
    }
}

/// One neighbour's RFC 7606 counts and what was logged.
#[derive(Debug, Clone, Default)]
pub(super) struct Malformed {
    /// UPDATEs treated as withdraw.
    pub(super) treat_as_withdraw: u64,
    /// UPDATEs with attributes discarded.
    pub(super) attribute_discard: u64,
    warned_withdraw: bool,
    warned_discard: bool,
}

impl Malformed {
    /// Counts an UPDATE's outcome and logs it; returns the outcome and whether it was logged
    /// at warn (the first of its kind on this neighbour).
    pub(super) fn record(&mut self, peer: IpAddr, action: &ErrorAction) -> Option<(Outcome, bool)> {
        let (outcome, errors, count, warned) = match action {
            ErrorAction::None => return None,
            ErrorAction::TreatAsWithdraw(errors) => (
                Outcome::TreatAsWithdraw,
                errors,
                &mut self.treat_as_withdraw,
                &mut self.warned_withdraw,
            ),
            ErrorAction::Discarded(errors) => (
                Outcome::AttributeDiscard,
                errors,
                &mut self.attribute_discard,
                &mut self.warned_discard,
            ),
        };
        *count += 1;
        let attributes = describe(errors);
        let first = !std::mem::replace(warned, true);
        if first {
            tracing::warn!(
                %peer,
                outcome = outcome.label(),
                %attributes,
                "malformed UPDATE (RFC 7606); further ones from this neighbour are logged at debug"
            );
        } else {
            tracing::debug!(%peer, outcome = outcome.label(), %attributes, "malformed UPDATE (RFC 7606)");
        }
        Some((outcome, first))
    }
}

/// `type 7 (malformed attribute value), …` for the log.
fn describe(errors: &[AttributeError]) -> String {
    errors
        .iter()
        .map(|e| format!("type {} ({})", e.code, e.reason))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::attribute::Remedy;

    fn error(remedy: Remedy) -> AttributeError {
        AttributeError {
            code: 7,
            remedy,
            data: bytes::Bytes::new(),
            reason: "malformed attribute value",
        }
    }

    #[test]
    fn each_outcome_is_counted_and_warned_about_once() {
        let peer: IpAddr = "198.18.0.2".parse().unwrap();
        let mut malformed = Malformed::default();
        let withdraw = ErrorAction::TreatAsWithdraw(vec![error(Remedy::TreatAsWithdraw)]);
        let discard = ErrorAction::Discarded(vec![error(Remedy::Discard)]);
        assert_eq!(malformed.record(peer, &ErrorAction::None), None);
        assert_eq!(
            malformed.record(peer, &withdraw),
            Some((Outcome::TreatAsWithdraw, true))
        );
        assert_eq!(
            malformed.record(peer, &withdraw),
            Some((Outcome::TreatAsWithdraw, false)),
            "the second one is logged at debug"
        );
        assert_eq!(
            malformed.record(peer, &discard),
            Some((Outcome::AttributeDiscard, true)),
            "the other kind warns once too"
        );
        assert_eq!(
            (malformed.treat_as_withdraw, malformed.attribute_discard),
            (2, 1)
        );
    }
}
