//! The record codec: how a delta is stored under its key (a marker byte, the head's length, the
//! head, then the delta's JSON), so that judging a delta and diffing a reconcile read the head
//! alone; records written before the head prefix hold the JSON alone and are read too.

use bytes::{Bytes, BytesMut};

use super::record::{RecordHead, LEGACY_DELETE, SEQ_AT};
use super::store::{corrupt, StoreError};
use crate::delta::RegistryDelta;

pub(super) fn parse<T: serde::de::DeserializeOwned>(
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(key, e))
}

/// Marks a record value that starts with its head.
pub(super) const HEAD_PREFIX: u8 = 1;

/// A delta serialized once for everything: the record as stored (its head, then the JSON) and,
/// sharing the same buffer, the JSON alone as published and spooled.
pub struct Encoded {
    pub record: Bytes,
    pub json: Bytes,
}

pub fn encode(delta: &RegistryDelta) -> Result<Encoded, serde_json::Error> {
    let head = RecordHead::of(delta).to_bytes();
    let mut value = Vec::with_capacity(2 + head.len() + 1024);
    value.push(HEAD_PREFIX);
    value.push(head.len() as u8);
    value.extend_from_slice(&head);
    let json_start = value.len();
    serde_json::to_writer(&mut value, delta)?;
    let record = Bytes::from(value);
    let json = record.slice(json_start..);
    Ok(Encoded { record, json })
}

/// `record` (made by [`encode`]) with the stream sequence its delta was stored at, written into
/// its head's slot: in place when nothing else holds the buffer (the webhook path drops the
/// published JSON first), in a copy otherwise.
pub fn with_seq(record: Bytes, seq: u64) -> Bytes {
    let slotted = matches!(split(&record), (Some(head), _) if RecordHead::has_seq_slot(head));
    if !slotted {
        return record;
    }
    let mut bytes = record
        .try_into_mut()
        .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
    let at = 2 + SEQ_AT;
    bytes[at..at + 8].copy_from_slice(&seq.to_be_bytes());
    bytes.freeze()
}

/// A record value's head bytes (if it has them) and its delta JSON.
pub(super) fn split(value: &[u8]) -> (Option<&[u8]>, &[u8]) {
    match value {
        [HEAD_PREFIX, len, rest @ ..] if rest.len() >= *len as usize => {
            let (head, json) = rest.split_at(*len as usize);
            (Some(head), json)
        }
        json => (None, json),
    }
}

pub(super) fn head(key: &str, value: &[u8]) -> Result<RecordHead, StoreError> {
    match split(value) {
        // Written before inferred deletes were told apart: the JSON says who deleted.
        (Some([LEGACY_DELETE, ..]), json) => parse(key, json),
        (Some(head), _) => {
            RecordHead::from_bytes(head).ok_or_else(|| corrupt(key, "malformed record head"))
        }
        (None, json) => parse(key, json),
    }
}
