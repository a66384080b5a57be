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
