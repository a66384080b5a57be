//! NetBox's change log, read for what no `last_updated` shows. Deleting a tag removes it from
//! every object it tagged without saving them (their `last_updated` stays), and NetBox logs each
//! removal as an update in the delete's own request (NetBox 4.7.3, recorded in
//! `tests/fixtures/netbox-4.7-api`). Once those webhooks are lost, the log is where the objects
//! are found.

use serde_json::{Map, Value};

use crate::netbox::client::{ApiError, NetboxClient};

/// The objects (`app_label.model`, id) NetBox changed in the request that deleted object `id` of
/// `object_type` (`extras.tag`), the delete itself left out; None when the log holds no such
/// delete (NetBox's `changelog_retention` has purged it, or it was never deleted).
pub async fn changed_with_delete(
    client: &NetboxClient,
    version: (u32, u32),
    object_type: &str,
    id: u64,
) -> Result<Option<Vec<(String, u64)>>, ApiError> {
    let log = Log::of(version);
    let query =
        format!("changed_object_type={object_type}&changed_object_id={id}&action=delete&limit=10&fields=id,request_id");
    let deletes = log.page(client, &query).await?;
    let requests = deletes.iter().filter_map(|c| c.get("request_id")?.as_str());
    let requests: Vec<String> = requests.map(String::from).collect();
    if requests.is_empty() {
        return Ok(None);
    }
    let mut changed = Vec::new();
    for request in requests {
        changed.extend(log.of_request(client, &request).await?);
    }
    changed.retain(|(t, changed_id)| !(t == object_type && *changed_id == id));
    Ok(Some(changed))
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
        let page = client
            .get(
                &format!("{}?{query}", self.path),
                self.what,
                self.permission,
            )
            .await?;
        let results = page.get("results").and_then(Value::as_array);
        let objects = results.into_iter().flatten().filter_map(Value::as_object);
        Ok(objects.cloned().collect())
    }

    /// Every change logged under `request`, paged by id.
    async fn of_request(
        &self,
        client: &NetboxClient,
        request: &str,
    ) -> Result<Vec<(String, u64)>, ApiError> {
        let request: String = form_urlencoded::byte_serialize(request.as_bytes()).collect();
        let fields = "fields=id,changed_object_type,changed_object_id";
        let mut changed = Vec::new();
        let mut after = 0;
        loop {
            let query =
                format!("request_id={request}&ordering=id&id__gt={after}&limit=1000&{fields}");
            let page = self.page(client, &query).await?;
            let Some(last) = page.iter().filter_map(|c| c.get("id")?.as_u64()).max() else {
                return Ok(changed);
            };
            if last <= after {
                return Ok(changed);
            }
            after = last;
            changed.extend(page.iter().filter_map(|c| {
                let object_type = c.get("changed_object_type")?.as_str()?;
                let id = c.get("changed_object_id")?.as_u64()?;
                Some((object_type.to_string(), id))
            }));
        }
    }
}
