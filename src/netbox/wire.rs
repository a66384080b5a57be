//! A webhook body or an API page read in one pass, keeping only what the relay reads. A device's
//! body is mostly nested objects translation never looks at and two snapshots that are only
//! compared, so the skipped fields are checked for well-formed JSON but never built into values,
//! and the snapshots' values stay slices of the body.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The top-level keys parsed whole: all small.
const SMALL: [&str; 8] = [
    "event",
    "timestamp",
    "object_type",
    "model",
    "username",
    "request_id",
    "request",
    "context",
];

/// What a body holds at one key.
#[derive(Debug, Default)]
pub enum Slot<T> {
    #[default]
    Absent,
    Null,
    /// A value of another JSON type than expected.
    Other,
    Is(T),
}

/// A snapshot's top-level fields in the body's order, their values as the body wrote them.
pub type Fields<'a> = Vec<(Cow<'a, str>, &'a RawValue)>;

/// A webhook body's top level.
#[derive(Debug, Default)]
pub struct Top<'a> {
    /// The small keys ([`SMALL`]) the body has, parsed.
    pub small: Map<String, Value>,
    /// `data`, with only the fields and nested fields [`Keep`] names.
    pub data: Slot<Map<String, Value>>,
    /// `snapshots.prechange` and `snapshots.postchange`.
    pub snapshots: Slot<(Slot<Fields<'a>>, Slot<Fields<'a>>)>,
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum WireError {
    NotJson(serde_json::Error),
    NotObject,
}

/// What the caller reads of an object (a webhook's `data`, an API answer's result): its top-level
/// fields for which `fields` is true, and of the objects they hold (related objects, choices,
/// tags) the fields for which `nested` is.
#[derive(Debug, Clone, Copy)]
pub struct Reads {
    pub fields: fn(&str) -> bool,
    pub nested: fn(&str) -> bool,
}

impl Reads {
    /// Everything, as a `Value` would hold it.
    pub const ALL: Reads = Reads {
        fields: |_| true,
        nested: |_| true,
    };

    fn keep(&self) -> Keep<'_> {
        Keep {
            fields: &self.fields,
            nested: &self.nested,
        }
    }
}

/// What of `data` is parsed: its fields for which `fields` is true, and of the objects they hold
/// (at any depth, in lists too) the fields for which `nested` is true.
#[derive(Clone, Copy)]
pub struct Keep<'k> {
    pub fields: &'k dyn Fn(&str) -> bool,
    pub nested: &'k dyn Fn(&str) -> bool,
}

/// Reads `body`, keeping of `data` what `keep` names.
pub fn top<'a>(body: &'a [u8], keep: Keep) -> Result<Top<'a>, WireError> {
    whole(body, TopVisitor { keep })
}

/// `body` read by `visitor` as one JSON object, and nothing after it.
fn whole<'de, V: Visitor<'de>>(body: &'de [u8], visitor: V) -> Result<V::Value, WireError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    match de.deserialize_map(visitor).and_then(|read| {
        de.end()?;
        Ok(read)
    }) {
        Ok(read) => Ok(read),
        // Every value below the top is taken whatever its type, so a data error can only be
        // a top level that is no object; the rest (syntax, recursion limit, end) is not JSON.
        Err(e) if e.classify() == serde_json::error::Category::Data => Err(WireError::NotObject),
        Err(e) => Err(WireError::NotJson(e)),
    }
}

/// The objects of a list answer's `results` (others than objects are passed over), keeping what
/// `reads` names; `None` when it has no `results` list.
pub fn results(body: &[u8], reads: Reads) -> Result<Option<Vec<Map<String, Value>>>, WireError> {
    let page = whole(body, PageVisitor(Parsed(reads.keep())))?;
    Ok(page.results)
}

/// A list answer: its `results`, and whether NetBox said there is no next page.
pub struct Page<T> {
    /// `None` when the answer has no `results` list.
    pub results: Option<Vec<T>>,
    /// `next` was sent, and null: NetBox served fewer objects than the page could hold.
    pub last: bool,
}

/// The objects of a list answer's `results` as the body wrote them, checked to be JSON but not
/// built (others than objects are passed over), and whether it is the last page.
pub fn raw_page(body: &[u8]) -> Result<Page<&RawValue>, WireError> {
    whole(body, PageVisitor(AsWritten))
}

/// One object as [`raw_page`] gave it, keeping what `reads` names.
pub fn object(raw: &[u8], reads: Reads) -> Result<Map<String, Value>, WireError> {
    match whole(raw, SlotOf(DataFields(reads.keep())))? {
        Slot::Is(object) => Ok(object),
        _ => Err(WireError::NotObject),
    }
}

/// An object's `id`: read from the front when it is the first field, as NetBox writes every
/// object, else by reading the object through; `None` when it has no whole-number `id`.
pub fn id_of(raw: &[u8]) -> Option<u64> {
    fn skip_space(b: &[u8]) -> &[u8] {
        let start = b.iter().position(|c| !c.is_ascii_whitespace());
        &b[start.unwrap_or(b.len())..]
    }
    let rest = skip_space(raw.strip_prefix(b"{")?);
    let leading = rest
        .strip_prefix(br#""id""#)
        .map(skip_space)
        .and_then(|r| r.strip_prefix(b":"))
        .map(skip_space)
        .and_then(|r| {
            let digits = r.iter().take_while(|c| c.is_ascii_digit()).count();
            let after = skip_space(&r[digits..]);
            let ends = matches!(after.first(), Some(b',' | b'}'));
            let plain = digits > 0 && (digits == 1 || r[0] != b'0');
            (ends && plain).then(|| std::str::from_utf8(&r[..digits]).ok()?.parse().ok())?
        });
    if leading.is_some() {
        return leading;
    }
    #[derive(serde::Deserialize)]
    struct Id {
        id: Option<u64>,
    }
    serde_json::from_slice::<Id>(raw).ok()?.id
}

struct PageVisitor<I>(I);

impl<'de, I: Item<'de>> Visitor<'de> for PageVisitor<I> {
    type Value = Page<I::Out>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut results = None;
        let mut last = false;
        while let Some(Key(key)) = map.next_key()? {
            match key.as_ref() {
                "results" => {
                    results = match map.next_value_seed(SlotOf(Results(self.0)))? {
                        Slot::Is(objects) => Some(objects),
                        _ => None,
                    }
                }
                "next" => last = map.next_value::<Option<IgnoredAny>>()?.is_none(),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Page { results, last })
    }
}

/// How each item of `results` is read: `Some` for the objects, `None` for anything else.
trait Item<'de>: Copy {
    type Out;
    fn next<A: SeqAccess<'de>>(self, seq: &mut A) -> Result<Option<Option<Self::Out>>, A::Error>;
}

/// Objects parsed, keeping what [`Keep`] names.
#[derive(Clone, Copy)]
struct Parsed<'k>(Keep<'k>);

impl<'de> Item<'de> for Parsed<'_> {
    type Out = Map<String, Value>;

    fn next<A: SeqAccess<'de>>(self, seq: &mut A) -> Result<Option<Option<Self::Out>>, A::Error> {
        let item = seq.next_element_seed(SlotOf(DataFields(self.0)))?;
        Ok(item.map(|slot| match slot {
            Slot::Is(object) => Some(object),
            _ => None,
        }))
    }
}

/// Objects left as the body wrote them.
#[derive(Clone, Copy)]
struct AsWritten;

impl<'de> Item<'de> for AsWritten {
    type Out = &'de RawValue;

    fn next<A: SeqAccess<'de>>(self, seq: &mut A) -> Result<Option<Option<Self::Out>>, A::Error> {
        let item: Option<&'de RawValue> = seq.next_element()?;
        Ok(item.map(|raw| raw.get().starts_with('{').then_some(raw)))
    }
}

/// A list of objects, each read by `I`.
struct Results<I>(I);

impl<'de, I: Item<'de>> Shape<'de> for Results<I> {
    type Out = Vec<I::Out>;

    fn read_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Slot<Self::Out>, A::Error> {
        let mut objects = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = self.0.next(&mut seq)? {
            objects.extend(item);
        }
        Ok(Slot::Is(objects))
    }
}

struct TopVisitor<'k> {
    keep: Keep<'k>,
}

impl<'de> Visitor<'de> for TopVisitor<'_> {
    type Value = Top<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
        let mut top = Top::default();
        while let Some(Key(key)) = map.next_key()? {
            match key.as_ref() {
                "data" => top.data = map.next_value_seed(SlotOf(DataFields(self.keep)))?,
                "snapshots" => {
                    // Only an update's snapshots are compared: a create's or a delete's (when
                    // `event` came first, as NetBox writes it) are checked, not collected.
                    let event = top.small.get("event").and_then(Value::as_str);
                    let compared = !matches!(event, Some("created" | "deleted"));
                    top.snapshots = map.next_value_seed(SlotOf(Snapshots { compared }))?
                }
                small if SMALL.contains(&small) => {
                    top.small.insert(key.into_owned(), map.next_value()?);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(top)
    }
}

/// Reads a value of the shape it expects, an object or a list, into [`Slot::Is`]; a value of
/// another shape is checked to be JSON, skipped and answered as [`Slot::Other`].
trait Shape<'de>: Sized {
    type Out;

    fn read_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Slot<Self::Out>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Slot::Other)
    }

    fn read_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Slot<Self::Out>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Slot::Other)
    }
}

/// `data`'s fields that [`Keep`] names, parsed; the others skipped.
struct DataFields<'k>(Keep<'k>);

impl<'de> Shape<'de> for DataFields<'_> {
    type Out = Map<String, Value>;

    fn read_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Slot<Self::Out>, A::Error> {
        let mut fields = Map::new();
        while let Some(Key(key)) = map.next_key()? {
            if (self.0.fields)(&key) {
                let value = map.next_value_seed(Pruned(self.0.nested))?;
                fields.insert(key.into_owned(), value);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Slot::Is(fields))
    }
}

/// `snapshots`: its `prechange` and `postchange`, their fields collected when `compared`
/// (otherwise each is checked to be JSON and reads as null).
struct Snapshots {
    compared: bool,
}

impl<'de> Shape<'de> for Snapshots {
    type Out = (Slot<Fields<'de>>, Slot<Fields<'de>>);

    fn read_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Slot<Self::Out>, A::Error> {
        let (mut pre, mut post) = (Slot::Absent, Slot::Absent);
        let compared = RawFields {
            collect: self.compared,
        };
        while let Some(Key(key)) = map.next_key()? {
            match key.as_ref() {
                "prechange" => pre = map.next_value_seed(SlotOf(compared))?,
                "postchange" => post = map.next_value_seed(SlotOf(compared))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Slot::Is((pre, post)))
    }
}

/// A snapshot: each field's value left as written, if `collect`; null otherwise.
#[derive(Clone, Copy)]
struct RawFields {
    collect: bool,
}

impl<'de> Shape<'de> for RawFields {
    type Out = Fields<'de>;

    fn read_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Slot<Self::Out>, A::Error> {
        let mut fields = Fields::new();
        while let Some(Key(key)) = map.next_key()? {
            match self.collect {
                true => fields.push((key, map.next_value()?)),
                false => drop(map.next_value::<IgnoredAny>()?),
            }
        }
        // Not collected, a snapshot reads as none was sent: what changed is then unknown, and
        // an odd create that sent both snapshots cascades rather than not.
        Ok(match self.collect {
            true => Slot::Is(fields),
            false => Slot::Null,
        })
    }
}

/// A value that should have the shape `F` reads: [`Slot::Is`] when it has, otherwise what it was.
struct SlotOf<F>(F);

impl<'de, F: Shape<'de>> DeserializeSeed<'de> for SlotOf<F> {
    type Value = Slot<F::Out>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de, F: Shape<'de>> Visitor<'de> for SlotOf<F> {
    type Value = Slot<F::Out>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.0.read_map(map)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.0.read_seq(seq)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Slot::Null)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Slot::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Slot::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Slot::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Slot::Other)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Slot::Other)
    }
}

/// A value whose objects keep only the fields for which the function is true.
#[derive(Clone, Copy)]
struct Pruned<'k>(&'k dyn Fn(&str) -> bool);

impl<'de> DeserializeSeed<'de> for Pruned<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Pruned<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = Map::new();
        while let Some(Key(key)) = map.next_key()? {
            if (self.0)(&key) {
                fields.insert(key.into_owned(), map.next_value_seed(self)?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Value::Object(fields))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_string()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }
}

/// An object key, borrowed from the body unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(s.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(body: &str) -> Result<Top<'_>, WireError> {
        let keep = Keep {
            fields: &|k| k == "id" || k == "site",
            nested: &|k| k == "slug",
        };
        top(body.as_bytes(), keep)
    }

    #[test]
    fn data_keeps_only_the_fields_asked_for_and_snapshots_stay_as_written() {
        let body = r#"{"event": "updated", "noise": [1, {"a": 2}], "data": {"id": 7, "comments": "x",
            "site": {"id": 1, "slug": "fra1", "tags": [{"slug": "x"}]}, "cus\u0074om": {"deep": [1, 2]}},
            "snapshots": {"prechange": {"name": "a",
            "n\u0061me": "b"}, "postchange": null}}"#;
        let top = read(body).unwrap();
        assert_eq!(top.small.keys().collect::<Vec<_>>(), ["event"]);
        let Slot::Is(data) = top.data else { panic!() };
        let kept = r#"{"id":7,"site":{"slug":"fra1"}}"#;
        assert_eq!(serde_json::to_string(&data).unwrap(), kept);
        let Slot::Is((Slot::Is(pre), Slot::Null)) = top.snapshots else {
            panic!()
        };
        let written: Vec<(&str, &str)> = pre.iter().map(|(k, v)| (k.as_ref(), v.get())).collect();
        assert_eq!(written, [("name", r#""a""#), ("name", r#""b""#)]);
    }

    #[test]
    fn a_pages_results_keep_what_is_read_and_only_objects() {
        let reads = Reads {
            fields: |k| k == "id" || k == "site",
            nested: |k| k == "slug",
        };
        let page = br#"{"count": 3, "next": null, "results": [{"id": 1, "comments": "x",
            "site": {"id": 3, "slug": "fra1"}}, 7, {"id": 2}]}"#;
        let objects = results(page, reads).unwrap().unwrap();
        let json = serde_json::to_string(&objects).unwrap();
        assert_eq!(json, r#"[{"id":1,"site":{"slug":"fra1"}},{"id":2}]"#);
        for (body, expected) in [
            (&br#"{"count": 0}"#[..], "no results"),
            (br#"{"results": {"id": 1}}"#, "no results"),
            (br#"{"results": null}"#, "no results"),
        ] {
            assert!(results(body, Reads::ALL).unwrap().is_none(), "{expected}");
        }
        assert!(matches!(
            results(b"[]", Reads::ALL),
            Err(WireError::NotObject)
        ));
        let cut = br#"{"results": [{"id": 1}"#;
        assert!(matches!(
            results(cut, Reads::ALL),
            Err(WireError::NotJson(_))
        ));
    }

    #[test]
    fn a_pages_objects_as_served_are_slices_of_it_each_readable_alone() {
        let page = br#"{"count": 3, "results": [ {"id": 1, "comments": "x",
            "site": {"id": 3, "slug": "fra1"}} , 7, {"name": "b", "id": 22}, {"id": "3"}]}"#;
        let read = raw_page(page).unwrap();
        assert!(!read.last, "no `next` sent: not known to be the last");
        let objects = read.results.unwrap();
        let served: Vec<&str> = objects.iter().map(|o| o.get()).collect();
        assert_eq!(served.len(), 3, "objects only: {served:?}");
        assert!(served[0].starts_with(r#"{"id": 1, "comments""#) && served[0].ends_with("}}"));
        let ids: Vec<Option<u64>> = served.iter().map(|o| id_of(o.as_bytes())).collect();
        assert_eq!(ids, [Some(1), Some(22), None], "first, later, not a number");
        let reads = Reads {
            fields: |k| k == "site",
            nested: |k| k == "slug",
        };
        let one = object(served[0].as_bytes(), reads).unwrap();
        assert_eq!(
            serde_json::to_string(&one).unwrap(),
            r#"{"site":{"slug":"fra1"}}"#
        );
        assert!(raw_page(br#"{"results": 1}"#).unwrap().results.is_none());
        assert!(matches!(
            raw_page(br#"{"results": [{"id": 1}"#),
            Err(WireError::NotJson(_))
        ));
        let next = br#"{"count": null, "next": "http://nb/api/dcim/devices/?limit=2&start=4", "results": []}"#;
        assert!(!raw_page(next).unwrap().last);
        let last = br#"{"count": null, "next": null, "previous": null, "results": [{"id": 9}]}"#;
        assert!(raw_page(last).unwrap().last);
    }

    #[test]
    fn an_id_is_read_from_the_front_only_when_it_is_whole_and_plain() {
        for (raw, id) in [
            (r#"{"id":7,"name":"a"}"#, Some(7)),
            (r#"{ "id" : 12 }"#, Some(12)),
            (r#"{"id":0}"#, Some(0)),
            (r#"{"id":1.5,"x":1}"#, None),
            (r#"{"id":-1}"#, None),
            (r#"{"id":null}"#, None),
            (r#"{"id":99999999999999999999}"#, None),
            (r#"{"name":"a","id":5}"#, Some(5)),
            (r#"{"id":6}"#, Some(6)),
            ("{}", None),
        ] {
            assert_eq!(id_of(raw.as_bytes()), id, "{raw}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_followed() {
        let deep = format!(
            r#"{{"data": {{"site": {}1{}}}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        // Parsed: past serde_json's recursion limit it is an error, and says so.
        let Err(WireError::NotJson(e)) = read(&deep) else {
            panic!("deep nesting in a kept field read");
        };
        assert!(e.to_string().contains("recursion limit"), "{e}");
        // Skipped: serde_json skips without recursing, so no stack is at risk either way.
        let skipped = deep.replace("site", "comments");
        assert!(read(&skipped).is_ok());
    }

    #[test]
    fn wrong_shapes_are_told_apart() {
        let Slot::Other = read(r#"{"data": [1, 2]}"#).unwrap().data else {
            panic!()
        };
        let Slot::Null = read(r#"{"data": null}"#).unwrap().data else {
            panic!()
        };
        assert!(matches!(read("[1]"), Err(WireError::NotObject)));
        assert!(matches!(read("\"x\""), Err(WireError::NotObject)));
        for bad in [
            r#"{"data": {"comments": [1,}}"#,
            r#"{"data": {}} x"#,
            "{",
            "",
        ] {
            assert!(matches!(read(bad), Err(WireError::NotJson(_))), "{bad}");
        }
    }
}
