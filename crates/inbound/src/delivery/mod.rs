//! What happens to a customer's DM once the webhook or a poll found it, the same for
//! both, and where the resulting events go.
//!
//! - `dm`: the fate of one DM: skipped if already delivered, dropped if the echo of the
//!   bridge's own reply, published as an echo or as received, recorded only once
//!   confirmed.
//! - [`in_flight`]: the deliveries in flight (one event delivered once at a time), and
//!   the records the store could not take yet, written when it can.
//! - [`echo`]: tells a customer's DM from one the company sent ([`echo::classify`]).
//! - [`profiles`]: looks up (and caches) a sender's profile when the body lacks it.
//! - [`sink`]: publishes the events for the CRM (`message.received`, `message.echo`,
//!   typing, read: the contract's, `xbridge_core::contract`, each as an
//!   [`EventToCrm`](xbridge_core::contract::EventToCrm)) to the incoming exchange,
//!   persistent, `mandatory` and confirmed; and the inbound dead letters.
//! - `contract_tests` (tests only): the events made from X's recorded bodies are what
//!   `docs/schemas/` describes.

#[cfg(test)]
mod contract_tests;
pub(crate) mod dm;
pub mod echo;
pub mod in_flight;
pub mod profiles;
pub mod sink;
