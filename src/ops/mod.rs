//! Operator commands beside `serve`: `check` (is everything wired?), `netbox-setup` (wire the
//! NetBox side), `tail` (watch the deltas) and `spool` (what waits, and the dead letters).

pub mod check;
pub mod setup;
pub mod spool;
pub mod tail;
