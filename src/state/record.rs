//! A key's record: what the relay last accepted for it (the head of its delta: op, revision,
//! delta id, stream sequence, a hash of the entry), and the rule that judges a new delta against
//! it (stale, duplicate, accept).

use chrono::{DateTime, Utc};

use crate::delta::{entry_hash, EntryHash, Op, Origin, RegistryDelta};
use crate::netbox::parents::{Parent, ShownHash};

/// What the relay last accepted for one registry key: the head of its last delta. The delta
/// itself is on the stream; its entry is kept as a hash, all reconcile compares.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The hash of the delta's entry ([`entry_hash`]); None for a delete.
    pub entry: Option<EntryHash>,
    /// For a parent's upsert, the hash of what its dependents show of it
    /// ([`Parent::shown_hash`]). Heads written before it have none.
    pub shown: Option<ShownHash>,
}

/// The op byte of the heads layout. 1 was written for every delete before inferred deletes
/// were told apart, only in records that held the delta's JSON too ([`super::migrate`]).
const UPSERT: u8 = 0;
const STATED_DELETE: u8 = 2;
const INFERRED_DELETE: u8 = 3;
/// Added to the op byte when a slot for the stream sequence follows the revision. Heads written
/// before it have no slot and read as sequence unknown.
const WITH_SEQ: u8 = 0x10;
/// Added to the op byte when the entry's hash follows the sequence slot.
const WITH_ENTRY: u8 = 0x20;
/// Added to the op byte when the hash of what dependents show follows the entry's hash.
const WITH_SHOWN: u8 = 0x40;
/// Where the sequence slot starts in a head.
const SEQ_AT: usize = 13;
/// The slot's value until the delta's ack fills it in: sequence unknown.
const UNKNOWN_SEQ: u64 = u64::MAX;

impl RecordHead {
    pub fn deleted(&self) -> bool {
        self.op == Op::Delete
    }

    /// The head of `delta`, without its entry's hash (enough to judge a delta against it).
    pub fn of(delta: &RegistryDelta) -> RecordHead {
        RecordHead {
            revision: delta.revision,
            delta_id: delta.delta_id.clone(),
            op: delta.op,
            inferred: delta.op == Op::Delete && delta.origin == Origin::Reconcile,
            seq: None,
            entry: None,
            shown: None,
        }
    }

    /// The head of `delta` as it is stored, its entry's hashes included.
    pub fn stored(delta: &RegistryDelta) -> Result<RecordHead, serde_json::Error> {
        let entry = delta.entry.as_ref().map(entry_hash).transpose()?;
        Ok(RecordHead::stored_with(delta, entry))
    }

    /// [`RecordHead::stored`] with the entry's hash computed already.
    pub fn stored_with(delta: &RegistryDelta, entry: Option<EntryHash>) -> RecordHead {
        RecordHead {
            entry,
            shown: shown_hash(delta),
            ..RecordHead::of(delta)
        }
    }

    /// Whether the registry, at this head, shows the dependents of `delta`'s object what `delta`
    /// shows them. Unknown (a head without the hash, from an older relay) counts as no, unless
    /// the entries are the same.
    pub fn shows_as(&self, delta: &RegistryDelta) -> bool {
        if self.deleted() {
            return false;
        }
        if let Some(shown) = self.shown {
            return shown_hash(delta) == Some(shown);
        }
        let entry = delta.entry.as_ref().and_then(|e| entry_hash(e).ok());
        entry.is_some() && entry == self.entry
    }

    /// The heads table's layout: op (1 byte), revision as seconds (8) and nanoseconds (4), big
    /// endian, the stream sequence (8, [`UNKNOWN_SEQ`] until known), the entry's hash (16, where
    /// there is an entry), the hash of what dependents show (8, for a parent), then the delta id. Fixed and small (under 80 bytes), so heads stay
    /// in redb's cache and reading one parses nothing; the sequence has a fixed place so that the
    /// ack's can be written into an encoded head in place.
    pub(super) fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(SEQ_AT + 8 + 16 + 8 + self.delta_id.len());
        let op = match (self.op, self.inferred) {
            (Op::Upsert, _) => UPSERT,
            (Op::Delete, false) => STATED_DELETE,
            (Op::Delete, true) => INFERRED_DELETE,
        };
        let with_entry = if self.entry.is_some() { WITH_ENTRY } else { 0 };
        let with_shown = if self.shown.is_some() { WITH_SHOWN } else { 0 };
        bytes.push(op | WITH_SEQ | with_entry | with_shown);
        bytes.extend(self.revision.timestamp().to_be_bytes());
        bytes.extend(self.revision.timestamp_subsec_nanos().to_be_bytes());
        bytes.extend(self.seq.unwrap_or(UNKNOWN_SEQ).to_be_bytes());
        if let Some(entry) = &self.entry {
            bytes.extend(entry);
        }
        if let Some(shown) = &self.shown {
            bytes.extend(shown);
        }
        bytes.extend(self.delta_id.as_bytes());
        bytes
    }

    /// `head` (bytes of [`RecordHead::to_bytes`]) with the stream sequence `seq` in its slot, if
    /// it has one.
    pub(super) fn set_seq(head: &mut [u8], seq: u64) {
        let slotted = head.first().is_some_and(|op| op & WITH_SEQ != 0);
        if let Some(slot) = head.get_mut(SEQ_AT..SEQ_AT + 8).filter(|_| slotted) {
            slot.copy_from_slice(&seq.to_be_bytes());
        }
    }

    pub(super) fn from_bytes(bytes: &[u8]) -> Option<RecordHead> {
        let first = *bytes.first()?;
        let (op, inferred) = match first & !(WITH_SEQ | WITH_ENTRY | WITH_SHOWN) {
            UPSERT => (Op::Upsert, false),
            STATED_DELETE => (Op::Delete, false),
            INFERRED_DELETE => (Op::Delete, true),
            _ => return None,
        };
        let secs = i64::from_be_bytes(bytes.get(1..9)?.try_into().ok()?);
        let nanos = u32::from_be_bytes(bytes.get(9..13)?.try_into().ok()?);
        let mut at = SEQ_AT;
        let mut seq = None;
        if first & WITH_SEQ != 0 {
            let slot = bytes.get(at..at + 8)?.try_into().ok()?;
            seq = Some(u64::from_be_bytes(slot)).filter(|s| *s != UNKNOWN_SEQ);
            at += 8;
        }
        let mut entry = None;
        if first & WITH_ENTRY != 0 {
            entry = Some(bytes.get(at..at + 16)?.try_into().ok()?);
            at += 16;
        }
        let mut shown = None;
        if first & WITH_SHOWN != 0 {
            shown = Some(bytes.get(at..at + 8)?.try_into().ok()?);
            at += 8;
        }
        Some(RecordHead {
            revision: DateTime::from_timestamp(secs, nanos)?,
            delta_id: String::from_utf8(bytes.get(at..)?.to_vec()).ok()?,
            op,
            inferred,
            seq,
            entry,
            shown,
        })
    }
}

/// What `delta`'s entry shows its object's dependents, hashed: for a parent's upsert only.
fn shown_hash(delta: &RegistryDelta) -> Option<ShownHash> {
    let entry = delta.entry.as_ref()?;
    Parent::from_name(&delta.object_type)?.shown_hash(entry)
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
