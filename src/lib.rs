//! netbox-relay keeps downstream systems in step with NetBox.
//!
//! Data flow: NetBox POSTs a signed webhook to [`webhook`]; its signature is checked on the raw
//! bytes; [`netbox::webhook`] parses the body; [`translate`] turns the object into a
//! [`delta::RegistryDelta`]; [`publish`] puts it on NATS JetStream and the webhook is answered
//! 202 only after JetStream acked. [`config`] holds every setting; [`app`] wires the stages.

pub mod app;
pub mod backoff;
pub mod bearer;
pub mod cli;
pub mod config;
pub mod delta;
pub mod netbox;
pub mod ops;
pub mod publish;
pub mod reconcile;
pub mod sd;
pub mod state;
pub mod supervise;
pub mod telemetry;
pub mod translate;
pub mod webhook;
