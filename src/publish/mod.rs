//! Publishing deltas to NATS JetStream: one message per delta on
//! `<prefix>.<partition>.<kind>.<op>`, `Nats-Msg-Id` = `delta_id`, done only once JetStream acked.

mod jetstream;

pub use jetstream::{PublishError, Publisher, StreamSettings};
