//! The record codec: a delta is stored under its key as its head ([`RecordHead::to_bytes`]) and
//! published as its JSON; both are made here, once per delta.

use bytes::{Bytes, BytesMut};

use super::record::RecordHead;
use crate::delta::RegistryDelta;

/// A delta serialized once for everything: the record as stored and the JSON as published and
/// spooled.
pub struct Encoded {
    pub record: Bytes,
    pub json: Bytes,
}

pub fn encode(delta: &RegistryDelta) -> Result<Encoded, serde_json::Error> {
    let mut json = Vec::with_capacity(1024);
    serde_json::to_writer(&mut json, delta)?;
    Ok(Encoded {
        record: record(delta)?,
        json: Bytes::from(json),
    })
}

/// The record of `delta` alone, for a delta that is already on the stream.
pub fn record(delta: &RegistryDelta) -> Result<Bytes, serde_json::Error> {
    Ok(Bytes::from(RecordHead::stored(delta)?.to_bytes()))
}

/// `record` (made by [`encode`]) with the stream sequence its delta was stored at, written into
/// its slot: in place when nothing else holds the buffer, in a copy otherwise.
pub fn with_seq(record: Bytes, seq: u64) -> Bytes {
    let mut bytes = record
        .try_into_mut()
        .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
    RecordHead::set_seq(&mut bytes, seq);
    bytes.freeze()
}
