//! The body of a NetBox event-rule webhook, in every generation NetBox has sent:
//! `model` + `username` + `request_id` (up to 4.3), `object_type` (4.4+), `request` (4.6+), and
//! bodies with none of these where only `data.url` tells the object type.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::object_type::{api_endpoint, ObjectType};
use super::parents::{Parent, Trigger};
pub use super::wire::Reads;
use super::wire::{self, Fields, Slot, WireError};
use crate::delta::Entry;

/// A change NetBox reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeEvent {
    Created,
    Updated,
    Deleted,
}

impl ChangeEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeEvent::Created => "created",
            ChangeEvent::Updated => "updated",
            ChangeEvent::Deleted => "deleted",
        }
    }
}

/// A webhook about a change of a supported object type.
#[derive(Debug, Clone)]
pub struct WebhookEvent {
    pub event: ChangeEvent,
    /// When NetBox queued the change (`timestamp`), if it said.
    pub timestamp: Option<DateTime<Utc>>,
    pub object_type: ObjectType,
    pub object_id: u64,
    /// The object as the REST API serializes it (as it was, for a delete): only what the caller
    /// reads ([`Reads`]) and this module reads.
    pub data: Map<String, Value>,
    pub request_id: Option<String>,
    pub user: Option<String>,
    pub changes: Changes,
    /// The body says the change was made on main (`data.active_branch: null`, sent when NetBox's
    /// `EVENTS_PIPELINE` has netbox-branching's `add_branch_context`); otherwise it does not say.
    pub on_main: bool,
}

/// What an update's snapshots (`snapshots.prechange`, `.postchange`) say.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// The top-level fields whose values differ, sorted; `None` unless both snapshots were sent.
    pub fields: Option<Vec<String>>,
    /// The object's slug after the change, when the after snapshot has one.
    pub slug_after: Option<String>,
}

/// What a well-formed webhook body asks of us.
#[derive(Debug)]
pub enum Parsed {
    Change(Box<WebhookEvent>),
    /// A change of a parent that is no registry kind (device role, platform, tag, IPAM role):
    /// the cascade its update calls for, if any.
    Parent {
        parent: &'static Parent,
        object_id: u64,
        trigger: Option<Trigger>,
    },
    /// Nothing to translate; the reason is for the 200 answer.
    Ignored(String),
    /// A change made in a netbox-branching branch (named), which never reaches the registry.
    Branch(String),
}

/// Why a body is not a usable webhook. Messages name the key and never echo the body.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("body is not valid JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("body is not a JSON object")]
    NotObject,
    #[error("`{0}` is missing")]
    Missing(&'static str),
    #[error("`{key}` must be {expected}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
    },
    #[error("cannot tell the object type: no `object_type`, `model` or API `data.url`")]
    NoObjectType,
    #[error("`{0}` is not an RFC 3339 timestamp")]
    BadTimestamp(&'static str),
}

/// The fields of `data` this module reads itself, beside those the caller reads: at the top, and
/// in nested objects (`active_branch.name`, `assigned_object.device.id`).
const READ_HERE: [&str; 5] = ["id", "url", "active_branch", "slug", "assigned_object"];
const NESTED_HERE: [&str; 4] = ["id", "name", "device", "virtual_machine"];

/// Parses a webhook body that has already passed the signature check. Of `data`, only what
/// `reads` names (and what is read here) is parsed; the rest of the body is checked to be JSON
/// and skipped.
pub fn parse(body: &[u8], reads: Reads) -> Result<Parsed, PayloadError> {
    let fields = |field: &str| READ_HERE.contains(&field) || (reads.fields)(field);
    let nested = |field: &str| NESTED_HERE.contains(&field) || (reads.nested)(field);
    let keep = wire::Keep {
        fields: &fields,
        nested: &nested,
    };
    let wire::Top {
        small: top,
        data,
        snapshots,
    } = wire::top(body, keep).map_err(|e| match e {
        WireError::NotJson(e) => PayloadError::NotJson(e),
        WireError::NotObject => PayloadError::NotObject,
    })?;
    let event = match required_str(&top, "event")? {
        "created" => ChangeEvent::Created,
        "updated" => ChangeEvent::Updated,
        "deleted" => ChangeEvent::Deleted,
        "job_started" | "job_ended" => return Ok(Parsed::Ignored("job event".into())),
        other => {
            return Ok(Parsed::Ignored(format!(
                "event {} is not a change",
                short(other)
            )))
        }
    };
    let data = match data {
        Slot::Is(data) => data,
        Slot::Absent => return Err(PayloadError::Missing("data")),
        Slot::Null | Slot::Other => return Err(wrong("data", "an object")),
    };
    if let Some(branch) = branch(&top, &data) {
        return Ok(Parsed::Branch(branch));
    }
    let on_main = data.get("active_branch").is_some_and(Value::is_null);
    let object_type = match object_type(&top, &data)? {
        Ok(t) => t,
        Err(unsupported) => return parent_only(event, &unsupported, snapshots, &data),
    };
    let object_id = object_id(&data)?;
    let changes = changes(snapshots)?;
    Ok(Parsed::Change(Box::new(WebhookEvent {
        event,
        timestamp: optional_timestamp(&top, "timestamp")?,
        object_type,
        object_id,
        request_id: optional_str(&top, "request_id")?.or(request_field(&top, "id")?),
        user: optional_str(&top, "username")?.or(request_field(&top, "user")?),
        data,
        changes,
        on_main,
    })))
}

/// The branch a body says its change was made in: netbox-branching's `context.active_branch`
/// (changes made in the web UI) or `data.active_branch` (with its `add_branch_context` event
/// pipeline step), each `{id, name, schema_id}` for a branch and null or absent for main.
fn branch(top: &Map<String, Value>, data: &Map<String, Value>) -> Option<String> {
    let context = top.get("context").and_then(|c| c.get("active_branch"));
    let marked = [context, data.get("active_branch")]
        .into_iter()
        .flatten()
        .find(|b| !b.is_null())?;
    let name = match marked {
        Value::Object(b) => b.get("name").and_then(Value::as_str).map(short),
        Value::String(s) => Some(short(s)),
        _ => None,
    };
    let id = marked.get("id").and_then(Value::as_u64);
    Some(match (name, id) {
        (Some(name), Some(id)) => format!("{name} (id {id})"),
        (Some(name), None) => name.to_string(),
        (None, Some(id)) => format!("id {id}"),
        (None, None) => "unnamed".to_string(),
    })
}

/// NetBox's ids are PostgreSQL `bigint`s: never above the signed 64-bit maximum, and JSON
/// consumers would lose precision on one that was.
fn object_id(data: &Map<String, Value>) -> Result<u64, PayloadError> {
    match data.get("id") {
        Some(id) => id
            .as_u64()
            .filter(|id| *id <= i64::MAX as u64)
            .ok_or(wrong("data.id", "an integer from 0 to 2^63-1")),
        None => Err(PayloadError::Missing("data.id")),
    }
}

/// A type that is no registry kind: a parent only, or not supported at all. `name` is what the
/// body called it (`object_type`, `model`, or `app/endpoint` of its URL).
fn parent_only(
    event: ChangeEvent,
    name: &str,
    snapshots: RawSnapshots,
    data: &Map<String, Value>,
) -> Result<Parsed, PayloadError> {
    let parent = Parent::from_name(name)
        .or_else(|| Parent::from_model(name))
        .or_else(|| {
            data.get("url")
                .and_then(Value::as_str)
                .and_then(Parent::from_url)
        });
    let Some(parent) = parent.filter(|p| p.trigger_only()) else {
        let reason = format!("object type {} is not supported", short(name));
        return Ok(Parsed::Ignored(reason));
    };
    let object_id = object_id(data)?;
    let changes = changes(snapshots)?;
    let trigger = cascade_of(parent, event, object_id, data, &changes);
    Ok(Parsed::Parent {
        parent,
        object_id,
        trigger,
    })
}

impl WebhookEvent {
    /// The cascade this change calls for, when its object is also a parent (site, tenant,
    /// cluster, VRF, VLAN, device, VM).
    pub fn cascade(&self) -> Option<Trigger> {
        let parent = Parent::from_name(self.object_type.name)?;
        cascade_of(
            parent,
            self.event,
            self.object_id,
            &self.data,
            &self.changes,
        )
    }
}

impl WebhookEvent {
    /// Whether this change may call for a cascade its snapshots do not show: an update of a
    /// parent, whose shown fields may have changed in a save whose webhook was lost (see
    /// [`WebhookEvent::cascade_after`]).
    pub fn may_follow_a_lost_change(&self) -> bool {
        self.event == ChangeEvent::Updated && Parent::from_name(self.object_type.name).is_some()
    }

    /// The cascade this change calls for, given whether the registry shows the object's
    /// dependents what this webhook's object shows them. The snapshots tell what changed since
    /// the save before this one. When they show no change of a shown field, the object showed
    /// the same before this save; a registry that shows otherwise missed a save, whose webhook
    /// never arrived and whose change no dependent shows yet. (NetBox's snapshots carry no
    /// `last_updated` to tell that save by.)
    pub fn cascade_after(&self, registry_shows_the_same: bool) -> Option<Trigger> {
        let parent = Parent::from_name(self.object_type.name)?;
        let own = self.cascade();
        let missed = self.event == ChangeEvent::Updated && !registry_shows_the_same;
        match (own, missed) {
            (Some(trigger), _) => Some(trigger),
            (None, true) => Some(parent.any_change(self.object_id, &self.data)),
            (None, false) => None,
        }
    }

    /// [`WebhookEvent::cascade_after`] once the registry's last entry for the object turned out
    /// to be another relay's (`registry`) rather than the one this relay had on record: whether
    /// that entry shows the dependents what this webhook's (`entry`) shows them.
    pub fn cascade_after_entry(
        &self,
        registry: Option<&Entry>,
        entry: Option<&Entry>,
    ) -> Option<Trigger> {
        let parent = Parent::from_name(self.object_type.name)?;
        let shown = |e: Option<&Entry>| e.and_then(|e| parent.shown_in(e));
        self.cascade_after(registry.is_some() && shown(registry) == shown(entry))
    }
}

/// An update can change what a parent's dependents show; nothing points at a new object. A
/// deleted one's references are protected, or cleared by NetBox with a save (and a webhook) of
/// each object that pointed at it, except a deleted IP address's: NetBox clears it from its
/// host's primary or OOB IP without saving the host.
fn cascade_of(
    parent: &'static Parent,
    event: ChangeEvent,
    id: u64,
    data: &Map<String, Value>,
    changes: &Changes,
) -> Option<Trigger> {
    match event {
        ChangeEvent::Updated => parent.trigger(id, data, changes),
        ChangeEvent::Deleted if parent.cleared_unsaved() => Some(parent.any_change(id, data)),
        ChangeEvent::Created | ChangeEvent::Deleted => None,
    }
}

/// `Ok(Ok(type))` when supported, `Ok(Err(name))` when well named but not supported.
fn object_type(
    top: &Map<String, Value>,
    data: &Map<String, Value>,
) -> Result<Result<ObjectType, String>, PayloadError> {
    let url = match data.get("url") {
        Some(Value::String(url)) => Some(url.as_str()),
        Some(Value::Null) | None => None,
        Some(_) => return Err(wrong("data.url", "a string")),
    };
    if let Some(name) = optional_str(top, "object_type")? {
        return Ok(ObjectType::from_name(&name).ok_or(name));
    }
    if let Some(model) = optional_str(top, "model")? {
        let app = url.and_then(api_endpoint).map(|(app, _)| app);
        return Ok(ObjectType::from_model(&model, app).ok_or(model));
    }
    let url = url.ok_or(PayloadError::NoObjectType)?;
    let (app, endpoint) = api_endpoint(url).ok_or(PayloadError::NoObjectType)?;
    Ok(ObjectType::from_url(url).ok_or_else(|| format!("{app}/{endpoint}")))
}

type RawSnapshots<'a> = Slot<(Slot<Fields<'a>>, Slot<Fields<'a>>)>;

/// What the snapshots say: the fields that differ when both were sent, compared as NetBox wrote
/// them (one serializer wrote both, so equal values are written alike), and the slug after.
fn changes(snapshots: RawSnapshots) -> Result<Changes, PayloadError> {
    let (pre, post) = match snapshots {
        Slot::Is(both) => both,
        Slot::Absent | Slot::Null => return Ok(Changes::default()),
        Slot::Other => return Err(wrong("snapshots", "an object")),
    };
    let snapshot = |slot, key| match slot {
        Slot::Is(fields) => Ok(Some(fields)),
        Slot::Absent | Slot::Null => Ok(None),
        Slot::Other => Err(wrong(key, "an object or null")),
    };
    let (pre, post): (Option<Fields>, Option<Fields>) =
        (snapshot(pre, "prechange")?, snapshot(post, "postchange")?);
    let slug_after = post
        .as_ref()
        .and_then(|post| written(post, "slug"))
        .and_then(|slug| serde_json::from_str::<String>(slug).ok());
    let fields = pre.zip(post).map(|(pre, post)| changed(&pre, &post));
    Ok(Changes { fields, slug_after })
}

/// The fields whose values differ, sorted. NetBox writes both snapshots' fields in one order, so
/// they are compared side by side; otherwise each field is looked up.
fn changed(pre: &Fields, post: &Fields) -> Vec<String> {
    let same_order = pre.len() == post.len() && pre.iter().zip(post).all(|(a, b)| a.0 == b.0);
    let mut changed: Vec<String> = if same_order {
        let differ = pre.iter().zip(post).filter(|(a, b)| a.1.get() != b.1.get());
        differ.map(|(a, _)| a.0.to_string()).collect()
    } else {
        let keys: BTreeSet<&str> = pre.iter().chain(post).map(|(k, _)| k.as_ref()).collect();
        let differ = keys
            .into_iter()
            .filter(|k| written(pre, k) != written(post, k));
        differ.map(String::from).collect()
    };
    changed.sort_unstable();
    changed.dedup();
    changed
}

/// A snapshot field's value as NetBox wrote it (the last, if a key came twice).
fn written<'a>(snapshot: &'a Fields, key: &str) -> Option<&'a str> {
    let (_, value) = snapshot.iter().rev().find(|(k, _)| k == key)?;
    Some(value.get())
}

fn required_str<'a>(
    top: &'a Map<String, Value>,
    key: &'static str,
) -> Result<&'a str, PayloadError> {
    match top.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(wrong(key, "a string")),
        None => Err(PayloadError::Missing(key)),
    }
}

fn optional_str(
    top: &Map<String, Value>,
    key: &'static str,
) -> Result<Option<String>, PayloadError> {
    match top.get(key) {
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Null) | None => Ok(None),
        Some(_) => Err(wrong(key, "a string")),
    }
}

/// A field of the 4.6+ `request` object; NetBox may leave the object out.
fn request_field(
    top: &Map<String, Value>,
    key: &'static str,
) -> Result<Option<String>, PayloadError> {
    match top.get("request") {
        Some(Value::Object(request)) => {
            Ok(request.get(key).and_then(Value::as_str).map(String::from))
        }
        Some(Value::Null) | None => Ok(None),
        Some(_) => Err(wrong("request", "an object")),
    }
}

fn optional_timestamp(
    top: &Map<String, Value>,
    key: &'static str,
) -> Result<Option<DateTime<Utc>>, PayloadError> {
    optional_str(top, key)?
        .map(|s| parse_timestamp(&s).ok_or(PayloadError::BadTimestamp(key)))
        .transpose()
}

/// NetBox writes `2026-11-22T10:46:07.281940Z` in objects and `...+00:00` in event timestamps.
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn wrong(key: &'static str, expected: &'static str) -> PayloadError {
    PayloadError::WrongType { key, expected }
}

/// Names from the network go into answers; keep them short.
fn short(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(body: Value) -> Parsed {
        parse(&serde_json::to_vec(&body).unwrap(), Reads::ALL).unwrap()
    }

    fn device(extra_data: Value, context: Option<Value>) -> Value {
        let mut data = json!({"id": 7, "url": "/api/dcim/devices/7/", "name": "d7",
            "last_updated": "2026-12-04T10:00:00Z"});
        for (k, v) in extra_data.as_object().unwrap() {
            data[k] = v.clone();
        }
        let mut body = json!({"event": "updated", "timestamp": "2026-12-04T10:00:01+00:00",
            "model": "device", "data": data});
        if let Some(context) = context {
            body["context"] = context;
        }
        body
    }

    #[test]
    fn a_branch_named_in_context_or_data_is_refused_whatever_the_generation() {
        let branch = json!({"id": 3, "name": "planning", "schema_id": "abc"});
        let marked = [
            device(json!({}), Some(json!({"active_branch": branch}))),
            device(json!({"active_branch": branch}), None),
            device(
                json!({"active_branch": "planning"}),
                Some(json!({"active_branch": null})),
            ),
        ];
        for body in marked {
            match parsed(body) {
                Parsed::Branch(name) => assert!(name.starts_with("planning"), "{name}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn only_data_active_branch_null_says_main() {
        let main = parsed(device(json!({"active_branch": null}), None));
        let unmarked = parsed(device(json!({}), Some(json!({"active_branch": null}))));
        match (main, unmarked) {
            (Parsed::Change(main), Parsed::Change(unmarked)) => {
                assert!(main.on_main);
                assert!(
                    !unmarked.on_main,
                    "the REST API's branch header sends context null"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    /// A create's or a delete's snapshots are checked to be JSON of the right shape but not
    /// collected: what changed is unknown (an odd create with both snapshots says no fewer
    /// fields than one without), while an update's are compared.
    #[test]
    fn only_an_updates_snapshots_are_compared() {
        let (pre, post) = (json!({"name": "d6", "x": 1}), json!({"name": "d7", "x": 1}));
        let changed = |event: &str, snapshots: Value| {
            let mut body = device(json!({}), None);
            body["event"] = json!(event);
            body["snapshots"] = snapshots;
            match parse(&serde_json::to_vec(&body).unwrap(), Reads::ALL) {
                Ok(Parsed::Change(change)) => Ok(change.changes.fields),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e.to_string()),
            }
        };
        let both = json!({"prechange": pre, "postchange": post});
        assert_eq!(
            changed("updated", both.clone()),
            Ok(Some(vec!["name".into()]))
        );
        assert_eq!(changed("created", both.clone()), Ok(None));
        assert_eq!(changed("deleted", both), Ok(None));
        for event in ["created", "updated", "deleted"] {
            let wrong = json!({"prechange": null, "postchange": "d7"});
            let error = changed(event, wrong).unwrap_err();
            assert!(error.contains("postchange"), "{event}: {error}");
        }
    }
}
