//! The record codec: a delta is stored under its key as its head ([`RecordHead::to_bytes`]) and
//! published as its JSON; both are made here, once per delta.

use bytes::{Bytes, BytesMut};

use super::record::RecordHead;
use crate::delta::{hash_of, RegistryDelta};

/// A delta serialized once for everything: the record as stored and the JSON as published and
/// spooled.
pub struct Encoded {
    pub record: Bytes,
    pub json: Bytes,
}

pub fn encode(delta: &RegistryDelta) -> Result<Encoded, serde_json::Error> {
    let mut json = Vec::with_capacity(1024);
    serde_json::to_writer(&mut json, delta)?;
    // The entry's hash is of its JSON, which the delta's JSON holds already: the entry is
    // serialized once here instead of twice (2 % of the relay's CPU per webhook).
    let head = match (&delta.entry, entry_json(&json)) {
        (Some(_), Some(entry)) => RecordHead::stored_with(delta, Some(hash_of(entry))),
        _ => RecordHead::stored(delta)?,
    };
    Ok(Encoded {
        record: Bytes::from(head.to_bytes()),
        json: Bytes::from(json),
    })
}

/// The JSON of the entry within a delta's JSON: its last field, so what follows the first
/// `"entry":` up to the closing brace. A string before it cannot hold those bytes unescaped.
fn entry_json(delta_json: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"\"entry\":";
    let at = memchr::memmem::find(delta_json, KEY)?;
    delta_json
        .get(at + KEY.len()..delta_json.len().checked_sub(1)?)
        .filter(|_| delta_json.ends_with(b"}"))
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
