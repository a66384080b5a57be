//! Publishing deltas to NATS JetStream: one message per delta on its key's subject,
//! `<prefix>.<partition>.<kind>.<object_id>`, `Nats-Msg-Id` = `delta_id`; the stream keeps the
//! last `nats.history_per_key` messages of each key. A delta counts as delivered
//! once JetStream acked it or it is fsynced into the spool, which is drained once NATS is back.

mod connect;
mod delivery;
mod drain;
mod jetstream;
mod order;
mod reads;
mod spool;
mod stream;
pub mod subject;

pub use connect::{
    connect_following, connect_once, connect_reader, probe, shown as shown_servers, Probe,
};
pub use delivery::{Delivered, Delivery, DeliveryError};
pub use drain::{drain, Rereads};
pub use jetstream::{Last, PublishError, Publisher};
pub use reads::LastPerKey;
pub use spool::Spool;
pub use stream::StreamSettings;
