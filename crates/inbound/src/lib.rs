//! The inbound side of xbridge (X webhook and poller → CRM) is **not built yet**.
//!
//! It is tracked by the inbound issue; nothing in this crate receives DMs today, and
//! the binary does not start anything from it.
