//! The integration tests: one binary, shared helpers, recorded NetBox fixtures.

mod bad_input;
mod commands;
mod config;
mod consistency;
mod durability;
mod expected;
mod fake_netbox;
mod helpers;
mod operations;
mod reconcile;
mod schema;
mod shutdown;
mod translate;
mod webhooks;
