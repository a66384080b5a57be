//! Reading NetBox's REST serialization. Every reader takes only what both a webhook's `data` and
//! the REST API's answer carry (names, slugs, values), never counters such as `device_count`.

use std::collections::BTreeMap;

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value};

use super::TranslateError;
use crate::delta::Entry;

pub type Object = Map<String, Value>;

/// A non-empty string at `key`.
pub fn text<'a>(obj: &'a Object, key: &str) -> Option<&'a str> {
    obj.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The nested object at `key`, if it is one.
pub fn nested<'a>(obj: &'a Object, key: &str) -> Option<&'a Object> {
    obj.get(key).and_then(Value::as_object)
}

/// `key.field` as text, e.g. `site.slug`.
pub fn nested_text<'a>(obj: &'a Object, key: &str, field: &str) -> Option<&'a str> {
    nested(obj, key).and_then(|n| text(n, field))
}

/// A label value for a related object or a choice: its slug, else its choice value, else its
/// name; a plain string as it is.
pub fn label_value(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::Object(o) => ["slug", "value", "name"]
            .iter()
            .find_map(|k| o.get(*k).and_then(scalar_text)),
        scalar => scalar_text(scalar),
    }
}

/// A scalar as text: strings as they are, numbers and booleans printed.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The object's display name: `name`, else `display`.
pub fn name(obj: &Object) -> String {
    text(obj, "name")
        .or_else(|| text(obj, "display"))
        .unwrap_or_default()
        .to_string()
}

/// A URL made relative: `https://netbox.example.net/api/dcim/devices/1/` -> `/api/dcim/devices/1/`.
pub fn relative_url(url: &str) -> &str {
    match url.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => url,
    }
}

/// Collects an entry's labels and attributes, skipping what is absent or empty.
pub struct EntryBuilder {
    labels: BTreeMap<String, String>,
    attributes: BTreeMap<String, Value>,
    addresses: Vec<String>,
}

impl EntryBuilder {
    /// Starts with `source=netbox`, `status` and the `tag.<slug>` labels, which every kind shares.
    pub fn new(obj: &Object) -> Self {
        let mut builder = EntryBuilder {
            labels: BTreeMap::from([("source".to_string(), "netbox".to_string())]),
            attributes: BTreeMap::new(),
            addresses: Vec::new(),
        };
        builder.label("status", label_value(obj.get("status")));
        let tags = obj
            .get("tags")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        for tag in tags.filter_map(|t| label_value(Some(t))) {
            builder
                .labels
                .insert(format!("tag.{tag}"), "true".to_string());
        }
        builder
    }

    pub fn label(&mut self, key: &str, value: Option<String>) -> &mut Self {
        if let Some(value) = value {
            self.labels.insert(key.to_string(), value);
        }
        self
    }

    /// Labels `key` from the related object or choice at `field` of `obj`.
    pub fn label_from(&mut self, key: &str, obj: &Object, field: &str) -> &mut Self {
        self.label(key, label_value(obj.get(field)))
    }

    pub fn attr(&mut self, key: &str, value: Option<Value>) -> &mut Self {
        match value {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(value) => {
                self.attributes.insert(key.to_string(), value);
            }
        }
        self
    }

    /// Copies the scalar or list at `field` of `obj` to attribute `key`.
    pub fn attr_from(&mut self, key: &str, obj: &Object, field: &str) -> &mut Self {
        let value = obj.get(field).filter(|v| !v.is_object()).cloned();
        self.attr(key, value)
    }

    pub fn text_attr(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        self.attr(key, value.map(|s| Value::String(s.to_string())))
    }

    pub fn address(&mut self, address: String) -> &mut Self {
        if !self.addresses.contains(&address) {
            self.addresses.push(address);
        }
        self
    }

    pub fn build(self, obj: &Object, name: String, netbox_url: String) -> Entry {
        Entry {
            name,
            status: label_value(obj.get("status")),
            addresses: self.addresses,
            labels: self.labels,
            attributes: self.attributes,
            sweep: None,
            netbox_url,
        }
    }
}

/// Prefixes and clusters have a generic scope since NetBox 4.2; the site label applies when the
/// scope is a site, and older versions carry `site` directly.
pub fn scoped_site(obj: &Object, builder: &mut EntryBuilder) {
    if text(obj, "scope_type") == Some("dcim.site") {
        builder.label_from("site", obj, "scope");
    } else {
        builder.label_from("site", obj, "site");
    }
}

/// `10.0.0.5/24` -> `10.0.0.5`; IPv6 in its canonical form.
pub fn without_mask(field: &'static str, address: &str) -> Result<String, TranslateError> {
    Ok(cidr(field, Some(address))?.addr().to_string())
}

pub fn cidr(field: &'static str, value: Option<&str>) -> Result<IpNet, TranslateError> {
    let value = value.ok_or(TranslateError::MissingField(field))?;
    // NetBox always writes a mask; a bare address is taken as a host.
    value
        .parse::<IpNet>()
        .or_else(|_| value.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| TranslateError::InvalidField {
            field,
            expected: "an IP address or CIDR",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_dropped_and_ipv6_normalized() {
        assert_eq!(without_mask("a", "10.10.0.11/24").unwrap(), "10.10.0.11");
        assert_eq!(
            without_mask("a", "2001:DB8:10:0::11/64").unwrap(),
            "2001:db8:10::11"
        );
        assert!(without_mask("a", "not-an-ip").is_err());
    }
    use serde_json::json;

    #[test]
    fn label_values_prefer_slug_then_choice_value() {
        let site = json!({"id": 1, "name": "FRA1", "slug": "fra1"});
        let status = json!({"value": "active", "label": "Active"});
        let cluster = json!({"id": 1, "name": "fra1-pve01"});
        assert_eq!(label_value(Some(&site)).as_deref(), Some("fra1"));
        assert_eq!(label_value(Some(&status)).as_deref(), Some("active"));
        assert_eq!(label_value(Some(&cluster)).as_deref(), Some("fra1-pve01"));
        assert_eq!(label_value(Some(&json!(100))).as_deref(), Some("100"));
        assert_eq!(label_value(Some(&Value::Null)), None);
    }

    #[test]
    fn urls_lose_scheme_and_host() {
        assert_eq!(
            relative_url("https://nb.example.net/api/dcim/sites/1/"),
            "/api/dcim/sites/1/"
        );
        assert_eq!(relative_url("/api/dcim/sites/1/"), "/api/dcim/sites/1/");
    }
}
