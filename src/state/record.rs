use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::delta::{Entry, Op, RegistryDelta};

/// What the relay last accepted for one registry key. It is stored as the accepted delta itself,
/// the bytes that were published, so a webhook serializes its delta once; these are the fields
/// read back.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Record {
    pub revision: DateTime<Utc>,
    pub delta_id: String,
    pub op: Op,
    pub entry: Option<Entry>,
}

impl Record {
    /// A tombstone: the last accepted delta was a delete.
    pub fn deleted(&self) -> bool {
        self.op == Op::Delete
    }
}

/// A [`Record`] without its entry, which parsing skips: all that judging a delta and the delete
/// scan need.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RecordHead {
    pub revision: DateTime<Utc>,
    pub delta_id: String,
    pub op: Op,
}

impl RecordHead {
    pub fn deleted(&self) -> bool {
        self.op == Op::Delete
    }

    pub fn of(delta: &RegistryDelta) -> RecordHead {
        RecordHead {
            revision: delta.revision,
            delta_id: delta.delta_id.clone(),
            op: delta.op,
        }
    }

    /// The heads table's layout: op (1 byte), revision as seconds (8) and nanoseconds (4), big
    /// endian, then the delta id. Fixed and small, so heads stay in redb's cache and reading one
    /// parses nothing.
    pub(super) fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(13 + self.delta_id.len());
        bytes.push(match self.op {
            Op::Upsert => 0,
            Op::Delete => 1,
        });
        bytes.extend(self.revision.timestamp().to_be_bytes());
        bytes.extend(self.revision.timestamp_subsec_nanos().to_be_bytes());
        bytes.extend(self.delta_id.as_bytes());
        bytes
    }

    pub(super) fn from_bytes(bytes: &[u8]) -> Option<RecordHead> {
        let op = match *bytes.first()? {
            0 => Op::Upsert,
            1 => Op::Delete,
            _ => return None,
        };
        let secs = i64::from_be_bytes(bytes.get(1..9)?.try_into().ok()?);
        let nanos = u32::from_be_bytes(bytes.get(9..13)?.try_into().ok()?);
        Some(RecordHead {
            revision: DateTime::from_timestamp(secs, nanos)?,
            delta_id: String::from_utf8(bytes.get(13..)?.to_vec()).ok()?,
            op,
        })
    }
}

/// Whether a delta should be published, given what was accepted before for its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Older than what was accepted, or an update of an object already deleted.
    Stale,
    /// The same change again (same `delta_id`).
    Duplicate,
}

impl Verdict {
    pub fn reason(self) -> &'static str {
        match self {
            Verdict::Accept => "accepted",
            Verdict::Stale => "stale",
            Verdict::Duplicate => "duplicate",
        }
    }
}

/// The same revision with a different entry is a real change: NetBox sends exactly that to every
/// tagged object when a tag is deleted, without touching `last_updated`.
pub fn judge(stored: Option<&RecordHead>, delta: &RegistryDelta) -> Verdict {
    let Some(stored) = stored else {
        return Verdict::Accept;
    };
    if stored.delta_id == delta.delta_id {
        Verdict::Duplicate
    } else if delta.revision < stored.revision
        || (stored.deleted() && delta.event.as_deref() == Some("updated"))
    {
        Verdict::Stale
    } else {
        Verdict::Accept
    }
}
