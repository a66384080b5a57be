//! Publishing deltas to NATS JetStream: one message per delta on its key's subject,
//! `<prefix>.<partition>.<kind>.<object_id>`, `Nats-Msg-Id` = `delta_id`; the stream keeps the
//! last `nats.history_per_key` messages of each key. A delta counts as delivered
//! once JetStream acked it or it is fsynced into the spool, which is drained once NATS is back.

mod delivery;
mod drain;
mod jetstream;
mod order;
mod spool;
pub mod subject;

pub use delivery::{Delivered, Delivery, DeliveryError};
pub use drain::drain;
pub use jetstream::{
    connect_once, connect_reader, probe, Last, Probe, PublishError, Publisher, StreamSettings,
};
pub use spool::Spool;
