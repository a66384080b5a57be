//! What netbox-relay knows about NetBox: its object types and the webhook wire format.

pub mod client;
pub mod object_type;
pub mod parents;
pub mod webhook;
pub mod wire;

pub use object_type::ObjectType;
pub use wire::Reads;
