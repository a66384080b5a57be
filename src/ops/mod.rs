//! Operator commands beside `serve`: `audit` (is the registry NetBox's main?), `check` (is
//! everything wired?), `netbox-setup` (wire the NetBox side), `tail` (watch the deltas), `spool`
//! (what waits, and the dead letters), `held` (webhooks waiting for NetBox's main) and
//! `send-test-webhook` (try the relay without NetBox).

pub mod audit;
pub mod check;
pub mod held;
pub mod send;
pub mod setup;
pub mod spool;
pub mod tail;
