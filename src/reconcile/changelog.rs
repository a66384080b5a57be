//! NetBox's change log, read for what no `last_updated` shows. Deleting a tag removes it from
//! every object it tagged without saving them (their `last_updated` stays), and NetBox logs each
//! removal as an update in the delete's own request (NetBox 4.7.3, recorded in
//! `tests/fixtures/netbox-4.7-api`). Once those webhooks are lost, the log is where the objects
//! are found.

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde_json::{Map, Value};

use crate::netbox::client::{ApiError, NetboxClient};

/// How far before the last mark deletes are read again: a delete whose request was still
/// running when the log was last read is logged with the time it began.
const OVERLAP_MINUTES: i64 = 10;

/// The mark of a log that holds nothing yet: every delete logged later is after it.
pub const EMPTY_LOG: &str = "1970-01-01T00:00:00Z";

/// The time of the newest change in NetBox's change log (None when it holds none).
pub async fn newest(
    client: &NetboxClient,
    version: (u32, u32),
) -> Result<Option<String>, ApiError> {
    let log = Log::of(version);
    let newest = log
        .page(client, "ordering=-id&limit=1&fields=id,time")
        .await?;
    let time = newest.first().and_then(|c| c.get("time")?.as_str());
    Ok(time.map(String::from))
}

/// The objects (`app_label.model`, id) NetBox changed in the requests that deleted an object
/// of `object_type` (`extras.tag`) from a little before `mark` (a time [`newest`] gave) on; the
/// deletes themselves left out.
pub async fn changed_with_deletes_since(
    client: &NetboxClient,
    version: (u32, u32),
    object_type: &str,
    mark: &str,
) -> Result<Vec<(String, u64)>, ApiError> {
    let log = Log::of(version);
    let since = DateTime::parse_from_rfc3339(mark)
        .map(|m| m.with_timezone(&Utc) - Duration::minutes(OVERLAP_MINUTES))
        .unwrap_or(DateTime::UNIX_EPOCH);
    let since = since.to_rfc3339_opts(SecondsFormat::Micros, true);
    let since: String = form_urlencoded::byte_serialize(since.as_bytes()).collect();
    let deletes = format!("changed_object_type={object_type}&action=delete&time_after={since}");
    let mut requests: Vec<String> = Vec::new();
    for change in log.all(client, &deletes, "request_id").await? {
        let request = change.get("request_id").and_then(Value::as_str);
        if let Some(request) = request.filter(|r| !requests.iter().any(|known| known == r)) {
            requests.push(request.to_string());
        }
    }
    let mut changed = Vec::new();
    for request in requests {
        let request: String = form_urlencoded::byte_serialize(request.as_bytes()).collect();
        let query = format!("request_id={request}");
        let fields = "changed_object_type,changed_object_id";
        for change in log.all(client, &query, fields).await? {
            let changed_type = change.get("changed_object_type").and_then(Value::as_str);
            let id = change.get("changed_object_id").and_then(Value::as_u64);
            match (changed_type, id) {
                (Some(t), Some(id)) if t != object_type => changed.push((t.to_string(), id)),
                _ => {}
            }
        }
    }
    Ok(changed)
}

/// Where NetBox serves its change log: `core/` from 4.1, `extras/` before.
struct Log {
    path: &'static str,
    what: &'static str,
    permission: &'static str,
}

impl Log {
    fn of(version: (u32, u32)) -> Log {
        match version >= (4, 1) {
            true => Log {
                path: "/api/core/object-changes/",
                what: "core.objectchange",
                permission: "core.view_objectchange",
            },
            false => Log {
                path: "/api/extras/object-changes/",
                what: "extras.objectchange",
                permission: "extras.view_objectchange",
            },
        }
    }

    async fn page(
        &self,
        client: &NetboxClient,
        query: &str,
    ) -> Result<Vec<Map<String, Value>>, ApiError> {
        let path = format!("{}?{query}", self.path);
        let page = client.get(&path, self.what, self.permission).await?;
        let results = page.get("results").and_then(Value::as_array);
        let objects = results.into_iter().flatten().filter_map(Value::as_object);
        Ok(objects.cloned().collect())
    }

    /// Every change `filter` selects, with `fields` (and `id`), paged by id.
    async fn all(
        &self,
        client: &NetboxClient,
        filter: &str,
        fields: &str,
    ) -> Result<Vec<Map<String, Value>>, ApiError> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let query =
                format!("{filter}&ordering=id&id__gt={after}&limit=1000&fields=id,{fields}");
            let page = self.page(client, &query).await?;
            let last = page.iter().filter_map(|c| c.get("id")?.as_u64()).max();
            match last {
                Some(last) if last > after => after = last,
                _ => return Ok(all),
            }
            all.extend(page);
        }
    }
}
