//! Publishing deltas to NATS JetStream: one message per delta on
//! `<prefix>.<partition>.<kind>.<op>`, `Nats-Msg-Id` = `delta_id`. A delta counts as delivered
//! once JetStream acked it or it is fsynced into the spool, which is drained once NATS is back.

mod delivery;
mod jetstream;
mod spool;

pub use delivery::{Delivered, Delivery, DeliveryError};
pub use jetstream::{connect_once, probe, Probe, PublishError, Publisher, StreamSettings};
pub use spool::{drain, Spool};
