//! The integration tests: one binary, shared helpers, recorded NetBox fixtures.

mod bad_input;
mod branching;
mod cascade;
mod cluster;
mod commands;
mod compaction;
mod config;
mod connections;
mod consistency;
mod discovery;
mod durability;
mod expected;
mod fake_netbox;
mod hardening;
mod helpers;
mod live;
mod nats_auth;
mod netbox47;
mod operations;
mod reconcile;
mod replicas;
mod schema;
mod shutdown;
mod storage;
mod translate;
mod webhooks;
