//! The integration tests: one binary, shared helpers, recorded NetBox fixtures.

mod bad_input;
mod config;
mod consistency;
mod durability;
mod expected;
mod helpers;
mod schema;
mod shutdown;
mod translate;
mod webhooks;
