//! What an `eventName` says about who acted and what happened.
//!
//! Tradecloud adds event names at any time, so nothing here is a closed list: the actor is read
//! from the `By{Buyer,Supplier}` suffix and the category is the rest of the name in kebab case,
//! without the leading `Order`/`OrderLines`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Who caused the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Actor {
    /// The event name ends in `ByBuyer`.
    Buyer,
    /// The event name ends in `BySupplier`.
    Supplier,
    /// The event name names no actor (`OrderSynced`, `OrderLinesItemDetailsChanged`, ...).
    System,
}

/// The actor named by an event name's suffix.
pub fn actor(event_name: &str) -> Actor {
    if event_name.ends_with("ByBuyer") {
        Actor::Buyer
    } else if event_name.ends_with("BySupplier") {
        Actor::Supplier
    } else {
        Actor::System
    }
}

/// The event's category: `OrderLinesConfirmedBySupplier` -> `confirmed`,
/// `OrderChangesProposedBySupplier` -> `changes-proposed`, `OrderIssuedByBuyer` -> `issued`.
pub fn category(event_name: &str) -> String {
    let core = event_name
        .strip_suffix("ByBuyer")
        .or_else(|| event_name.strip_suffix("BySupplier"))
        .unwrap_or(event_name);
    let core = core.strip_prefix("Order").unwrap_or(core);
    let core = match core.strip_prefix("Lines") {
        Some(rest) if !rest.is_empty() => rest,
        _ => core,
    };
    let core = if core.is_empty() { event_name } else { core };
    let mut out = String::with_capacity(core.len() + 4);
    for (i, c) in core.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_from_suffix() {
        assert_eq!(actor("OrderLinesConfirmedBySupplier"), Actor::Supplier);
        assert_eq!(actor("OrderIssuedByBuyer"), Actor::Buyer);
        assert_eq!(actor("OrderSynced"), Actor::System);
        assert_eq!(actor("SomethingNewByRobot"), Actor::System);
    }

    #[test]
    fn category_from_name() {
        assert_eq!(category("OrderLinesConfirmedBySupplier"), "confirmed");
        assert_eq!(category("OrderIssuedByBuyer"), "issued");
        assert_eq!(
            category("OrderChangesProposedBySupplier"),
            "changes-proposed"
        );
        assert_eq!(
            category("CancelledOrderLinesRevertedByBuyer"),
            "cancelled-order-lines-reverted"
        );
        assert_eq!(category("OrderSynced"), "synced");
        assert_eq!(
            category("OrderLinesItemDetailsChanged"),
            "item-details-changed"
        );
        assert_eq!(
            category("OrderDocumentsAttachedBySupplier"),
            "documents-attached"
        );
        assert_eq!(category("Order"), "order");
    }
}
