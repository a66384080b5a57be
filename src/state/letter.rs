//! A dead letter as the state file keeps it: the spooled row and why it left the spool.

use chrono::{DateTime, Utc};
use serde::Deserialize;

/// One dead letter: the row as it was spooled, and why it left the spool.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Its sequence in the spool, kept as its id here.
    pub seq: u64,
    pub reason: String,
    pub dead_at: DateTime<Utc>,
    /// The delta's JSON as spooled (possibly unreadable: that may be why it is here).
    pub bytes: Vec<u8>,
}

/// The fields of a delta that name it, read even from a delta that does not parse whole.
#[derive(Deserialize)]
struct Names {
    key: String,
    delta_id: String,
}

impl DeadLetter {
    /// Layout: reason length (2 bytes, big endian), reason, dead_at in milliseconds (8), delta.
    pub(super) fn to_bytes(&self) -> Vec<u8> {
        let reason = &self.reason.as_bytes()[..self.reason.len().min(u16::MAX as usize)];
        let mut bytes = Vec::with_capacity(10 + reason.len() + self.bytes.len());
        bytes.extend((reason.len() as u16).to_be_bytes());
        bytes.extend(reason);
        bytes.extend(self.dead_at.timestamp_millis().to_be_bytes());
        bytes.extend(&self.bytes);
        bytes
    }

    pub(super) fn from_bytes(seq: u64, value: &[u8]) -> Option<DeadLetter> {
        let len = u16::from_be_bytes(value.get(..2)?.try_into().ok()?) as usize;
        let reason = String::from_utf8_lossy(value.get(2..2 + len)?).into_owned();
        let millis = i64::from_be_bytes(value.get(2 + len..10 + len)?.try_into().ok()?);
        Some(DeadLetter {
            seq,
            reason,
            dead_at: DateTime::from_timestamp_millis(millis)?,
            bytes: value.get(10 + len..)?.to_vec(),
        })
    }

    /// The registry key and delta id, when the delta is readable that far.
    pub fn key_and_id(&self) -> Option<(String, String)> {
        key_and_id(&self.bytes)
    }
}

/// The registry key and delta id of a delta's JSON (spooled or dead), when readable that far.
pub fn key_and_id(json: &[u8]) -> Option<(String, String)> {
    let names: Names = serde_json::from_slice(json).ok()?;
    Some((names.key, names.delta_id))
}
