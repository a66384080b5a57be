//! `netbox-relay netbox-setup`: creates or updates, by name, the NetBox webhook that points at the
//! relay and the event rule that fires it, with the fields the detected NetBox version expects.
//! Running it again changes nothing.

use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{json, Map, Value};

use crate::config::Config;
use crate::netbox::client::{ApiError, NetboxClient};
use crate::netbox::parents::PARENTS;
use crate::ops::check;

/// What the command was asked to do.
#[derive(Debug, Clone)]
pub struct SetupOptions {
    /// The relay's base URL as NetBox reaches it (or the full webhook URL).
    pub relay_url: String,
    /// Name of both the webhook and the event rule.
    pub name: String,
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(
        "NetBox {0}.{1} has no event rules (they came with 3.7); configure the webhook by hand"
    )]
    TooOld(u32, u32),
    #[error(
        "webhook.secrets is empty: NetBox would send unsigned webhooks that the relay rejects"
    )]
    NoSecret,
    #[error("--relay-url {0:?} is not an http(s) URL")]
    RelayUrl(String),
}

/// What happened to one NetBox object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Created { id: Option<u64> },
    Updated { id: u64, fields: Vec<String> },
    Unchanged { id: u64 },
}

/// One line of the command's output: the object, what happened, and (dry run) the body sent.
#[derive(Debug, Clone)]
pub struct Step {
    pub object: String,
    pub change: Change,
    /// The body that was (or would be) sent, the secret redacted.
    pub body: Option<Value>,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.change {
            Change::Created { id: Some(id) } => write!(f, "{}: created (id {id})", self.object)?,
            Change::Created { id: None } => write!(f, "{}: would be created", self.object)?,
            Change::Updated { id, fields } => write!(
                f,
                "{} (id {id}): updated {}",
                self.object,
                fields.join(", ")
            )?,
            Change::Unchanged { id } => write!(f, "{} (id {id}): unchanged", self.object)?,
        }
        match &self.body {
            Some(body) => write!(f, "\n  {body}"),
            None => Ok(()),
        }
    }
}

const WEBHOOKS: &str = "/api/extras/webhooks/";
const EVENT_RULES: &str = "/api/extras/event-rules/";
/// What a token needs for this command.
const PERMISSIONS: &str = "a write-enabled token with extras.{view,add,change}_webhook and \
                           extras.{view,add,change}_eventrule";

/// What `netbox-setup` did, and how branch changes will be told from main's.
pub struct SetupReport {
    pub steps: Vec<Step>,
    pub branching: String,
}

pub async fn run(config: &Config, options: &SetupOptions) -> Result<SetupReport, SetupError> {
    let client = NetboxClient::new(&config.netbox)?;
    let status = client.status().await?;
    let (major, minor) = status.version;
    if (major, minor) < (3, 7) {
        return Err(SetupError::TooOld(major, minor));
    }
    let secret = match config.webhook.secrets.0.first() {
        Some(secret) => secret.expose_secret().to_string(),
        None if !config.webhook.require_signature => String::new(),
        None => return Err(SetupError::NoSecret),
    };
    let webhook = webhook_body(options, secret)?;
    let setup = Setup {
        client: &client,
        dry_run: options.dry_run,
    };
    let first = setup
        .apply(WEBHOOKS, "webhook", &options.name, webhook)
        .await?;
    let webhook_id = match first.change {
        Change::Created { id } => id,
        Change::Updated { id, .. } | Change::Unchanged { id } => Some(id),
    };
    let mut types: Vec<String> = config
        .object_types()
        .unwrap_or_default()
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    // Parents that are no registry kind only trigger cascades; NetBox sends their changes
    // only if the rule lists them.
    if config.cascade.enabled != Some(false) {
        let triggers = PARENTS.iter().filter(|p| p.trigger_only());
        types.extend(triggers.map(|p| p.name.to_string()));
    }
    let rule = rule_body(&options.name, (major, minor), types, webhook_id);
    let second = setup
        .apply(EVENT_RULES, "event rule", &options.name, rule)
        .await?;
    let branching = check::branching(config, status.branching.as_deref());
    Ok(SetupReport {
        steps: vec![first, second],
        branching: branching.detail,
    })
}

fn webhook_body(options: &SetupOptions, secret: String) -> Result<Map<String, Value>, SetupError> {
    let base = options.relay_url.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(SetupError::RelayUrl(options.relay_url.clone()));
    }
    let url = match base.ends_with("/webhooks/netbox") {
        true => base.to_string(),
        false => format!("{base}/webhooks/netbox"),
    };
    let body = json!({
        "name": options.name,
        "payload_url": url,
        "http_method": "POST",
        "http_content_type": "application/json",
        "secret": secret,
        "ssl_verification": true,
    });
    Ok(as_map(body))
}

/// The event rule in the fields of `version`: `content_types` before 4.0, `object_types` after;
/// `type_create`/`type_update`/`type_delete` booleans before 4.1, `event_types` after.
fn rule_body(
    name: &str,
    version: (u32, u32),
    mut types: Vec<String>,
    webhook_id: Option<u64>,
) -> Map<String, Value> {
    types.sort();
    let mut body = as_map(json!({
        "name": name,
        "enabled": true,
        "action_type": "webhook",
        "action_object_type": "extras.webhook",
        "action_object_id": webhook_id,
        "conditions": null,
    }));
    let types_key = match version >= (4, 0) {
        true => "object_types",
        false => "content_types",
    };
    body.insert(types_key.into(), json!(types));
    if version >= (4, 1) {
        let events = ["object_created", "object_updated", "object_deleted"];
        body.insert("event_types".into(), json!(events));
    } else {
        for (key, on) in [
            ("type_create", true),
            ("type_update", true),
            ("type_delete", true),
            ("type_job_start", false),
            ("type_job_end", false),
        ] {
            body.insert(key.into(), json!(on));
        }
    }
    body
}

struct Setup<'a> {
    client: &'a NetboxClient,
    dry_run: bool,
}

impl Setup<'_> {
    /// Creates the object named `name` at `endpoint`, or patches the fields that differ.
    async fn apply(
        &self,
        endpoint: &str,
        what: &str,
        name: &str,
        wanted: Map<String, Value>,
    ) -> Result<Step, SetupError> {
        let object = format!("{what} {name:?}");
        let existing = self.find(endpoint, &object, name).await?;
        let (method, path, body, change) = match existing {
            None => {
                let change = Change::Created { id: None };
                (Method::POST, endpoint.to_string(), wanted, change)
            }
            Some(current) => {
                let id = current
                    .get("id")
                    .and_then(Value::as_u64)
                    .unwrap_or_default();
                let differing: Map<String, Value> = wanted
                    .into_iter()
                    .filter(|(key, value)| !same(current.get(key), value))
                    .collect();
                if differing.is_empty() {
                    let change = Change::Unchanged { id };
                    return Ok(Step {
                        object,
                        change,
                        body: None,
                    });
                }
                let fields = differing.keys().cloned().collect();
                let change = Change::Updated { id, fields };
                (Method::PATCH, format!("{endpoint}{id}/"), differing, change)
            }
        };
        let shown = Some(redacted(&body));
        if self.dry_run {
            return Ok(Step {
                object,
                change,
                body: shown,
            });
        }
        let answer = self
            .client
            .write(method, &path, &Value::Object(body), &object, PERMISSIONS)
            .await?;
        let change = match change {
            Change::Created { .. } => Change::Created {
                id: answer.get("id").and_then(Value::as_u64),
            },
            other => other,
        };
        Ok(Step {
            object,
            change,
            body: None,
        })
    }

    async fn find(
        &self,
        endpoint: &str,
        object: &str,
        name: &str,
    ) -> Result<Option<Map<String, Value>>, SetupError> {
        let query: String = form_urlencoded::byte_serialize(name.as_bytes()).collect();
        let path = format!("{endpoint}?name={query}");
        let mut page = self.client.get(&path, object, PERMISSIONS).await?;
        let results = match page.remove("results") {
            Some(Value::Array(results)) => results,
            _ => Vec::new(),
        };
        let found = results.into_iter().find_map(|r| match r {
            Value::Object(o) if o.get("name").and_then(Value::as_str) == Some(name) => Some(o),
            _ => None,
        });
        Ok(found)
    }
}

/// Whether NetBox's current value already is the wanted one. NetBox answers choices as
/// `{"value", "label"}` objects and lists in its own order.
fn same(current: Option<&Value>, wanted: &Value) -> bool {
    let current = match current {
        Some(Value::Object(o)) if o.contains_key("value") && !wanted.is_object() => &o["value"],
        Some(value) => value,
        None => return false,
    };
    match (current, wanted) {
        (Value::Array(a), Value::Array(b)) => {
            let mut a: Vec<String> = a.iter().map(Value::to_string).collect();
            let mut b: Vec<String> = b.iter().map(Value::to_string).collect();
            a.sort();
            b.sort();
            a == b
        }
        _ => current == wanted,
    }
}

fn redacted(body: &Map<String, Value>) -> Value {
    let mut body = body.clone();
    if let Some(secret) = body.get_mut("secret") {
        *secret = json!("<redacted>");
    }
    Value::Object(body)
}

fn as_map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_and_list_order_do_not_count_as_changes() {
        let choice = json!({"value": "webhook", "label": "Webhook"});
        assert!(same(Some(&choice), &json!("webhook")));
        assert!(same(Some(&json!(["b", "a"])), &json!(["a", "b"])));
        assert!(!same(Some(&json!(["a"])), &json!(["a", "b"])));
        assert!(!same(None, &json!(null)));
        assert!(same(Some(&json!(null)), &json!(null)));
    }

    #[test]
    fn each_generation_gets_its_fields() {
        let types = vec!["dcim.device".to_string()];
        let new = rule_body("r", (4, 6), types.clone(), Some(1));
        assert!(new.contains_key("event_types") && new.contains_key("object_types"));
        assert!(!new.contains_key("type_create"));
        let four = rule_body("r", (4, 0), types.clone(), Some(1));
        assert!(four.contains_key("object_types") && four["type_delete"] == json!(true));
        let three = rule_body("r", (3, 7), types, Some(1));
        assert!(three.contains_key("content_types") && !three.contains_key("object_types"));
    }
}
