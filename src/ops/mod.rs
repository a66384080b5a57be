//! Operator commands beside `serve`: `check` (is everything wired?), `netbox-setup` (wire the
//! NetBox side) and `tail` (watch the deltas).

pub mod check;
pub mod setup;
pub mod tail;
