//! A key's record: what the relay last accepted for it (its head: op, revision, delta id, stream
//! sequence; then the delta), and the rule that judges a new delta against it (stale, duplicate,
//! accept).

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::delta::{Entry, Op, Origin, RegistryDelta};

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
#[serde(from = "HeadFields")]
pub struct RecordHead {
    pub revision: DateTime<Utc>,
    pub delta_id: String,
    pub op: Op,
    /// A delete that reconcile inferred (a complete pull did not return the object), as opposed
    /// to one NetBox reported. It never makes a later sight of the object stale.
    pub inferred: bool,
    /// The stream sequence of this delta's message, when known: the next delta of the key is
    /// published only if it is still the key's last message (`Nats-Expected-Last-Subject-Sequence`).
    pub seq: Option<u64>,
}

/// The fields of a record's JSON that make its head.
#[derive(Deserialize)]
struct HeadFields {
    revision: DateTime<Utc>,
    delta_id: String,
    op: Op,
    origin: Option<Origin>,
}

impl From<HeadFields> for RecordHead {
    fn from(f: HeadFields) -> Self {
        RecordHead {
            inferred: f.op == Op::Delete && f.origin == Some(Origin::Reconcile),
            revision: f.revision,
            delta_id: f.delta_id,
            op: f.op,
            seq: None,
        }
    }
}

/// The op byte of the heads layout. `LEGACY_DELETE` was written for every delete before
/// inferred deletes were told apart: such a head is read from its record's JSON instead.
const UPSERT: u8 = 0;
pub(super) const LEGACY_DELETE: u8 = 1;
const STATED_DELETE: u8 = 2;
const INFERRED_DELETE: u8 = 3;
/// Added to the op byte when a slot for the stream sequence follows the revision. Heads written
/// before it have no slot and read as sequence unknown.
const WITH_SEQ: u8 = 0x10;
/// Where the sequence slot starts in a head.
pub(super) const SEQ_AT: usize = 13;
/// The slot's value until the delta's ack fills it in: sequence unknown.
const UNKNOWN_SEQ: u64 = u64::MAX;

impl RecordHead {
    pub fn deleted(&self) -> bool {
        self.op == Op::Delete
    }

    pub fn of(delta: &RegistryDelta) -> RecordHead {
        RecordHead {
            revision: delta.revision,
            delta_id: delta.delta_id.clone(),
            op: delta.op,
            inferred: delta.op == Op::Delete && delta.origin == Origin::Reconcile,
            seq: None,
        }
    }

    /// The heads table's layout: op (1 byte), revision as seconds (8) and nanoseconds (4), big
    /// endian, the stream sequence (8, [`UNKNOWN_SEQ`] until known), then the delta id. Fixed
    /// and small, so heads stay in redb's cache and reading one parses nothing; the sequence has
    /// a fixed place so that the ack's can be written into an encoded record in place.
    pub(super) fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(SEQ_AT + 8 + self.delta_id.len());
        let op = match (self.op, self.inferred) {
            (Op::Upsert, _) => UPSERT,
            (Op::Delete, false) => STATED_DELETE,
            (Op::Delete, true) => INFERRED_DELETE,
        };
        bytes.push(op | WITH_SEQ);
        bytes.extend(self.revision.timestamp().to_be_bytes());
        bytes.extend(self.revision.timestamp_subsec_nanos().to_be_bytes());
        bytes.extend(self.seq.unwrap_or(UNKNOWN_SEQ).to_be_bytes());
        bytes.extend(self.delta_id.as_bytes());
        bytes
    }

    /// Whether `head` (bytes of [`RecordHead::to_bytes`]) has a sequence slot at [`SEQ_AT`].
    pub(super) fn has_seq_slot(head: &[u8]) -> bool {
        head.first().is_some_and(|op| op & WITH_SEQ != 0) && head.len() >= SEQ_AT + 8
    }

    pub(super) fn from_bytes(bytes: &[u8]) -> Option<RecordHead> {
        let first = *bytes.first()?;
        let (op, inferred) = match first & !WITH_SEQ {
            UPSERT => (Op::Upsert, false),
            STATED_DELETE => (Op::Delete, false),
            INFERRED_DELETE => (Op::Delete, true),
            _ => return None,
        };
        let secs = i64::from_be_bytes(bytes.get(1..9)?.try_into().ok()?);
        let nanos = u32::from_be_bytes(bytes.get(9..13)?.try_into().ok()?);
        let (seq, id_start) = match first & WITH_SEQ {
            0 => (None, SEQ_AT),
            _ => {
                let slot = bytes.get(SEQ_AT..SEQ_AT + 8)?.try_into().ok()?;
                let seq = Some(u64::from_be_bytes(slot)).filter(|s| *s != UNKNOWN_SEQ);
                (seq, SEQ_AT + 8)
            }
        };
        Some(RecordHead {
            revision: DateTime::from_timestamp(secs, nanos)?,
            delta_id: String::from_utf8(bytes.get(id_start..)?.to_vec()).ok()?,
            op,
            inferred,
            seq,
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
///
/// An update after a delete NetBox reported is stale (a late webhook); after a delete reconcile
/// inferred it is not: NetBox shows the object again, so the inference was wrong or outdated. An
/// inferred delete carries the revision of the object as last seen, so any sight of it since
/// passes.
pub fn judge(stored: Option<&RecordHead>, delta: &RegistryDelta) -> Verdict {
    let Some(stored) = stored else {
        return Verdict::Accept;
    };
    let updated_after_delete =
        stored.deleted() && !stored.inferred && delta.event.as_deref() == Some("updated");
    if stored.delta_id == delta.delta_id {
        Verdict::Duplicate
    } else if delta.revision < stored.revision || updated_after_delete {
        Verdict::Stale
    } else {
        Verdict::Accept
    }
}
