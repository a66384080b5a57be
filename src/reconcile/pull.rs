//! A complete pull of one object type in id order, page by page, never with offsets (which skip or
//! repeat rows while NetBox changes): the `start=<id>` cursor on NetBox 4.6+,
//! `ordering=id&id__gt=<last id>` before.

use serde_json::Value;

use crate::netbox::client::{ApiError, NetboxClient};
use crate::netbox::ObjectType;
use crate::translate::Object;

/// NetBox's default `MAX_PAGE_SIZE`; a larger `limit` is silently capped.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Hands out the pages of one object type as they arrive, so memory holds one page at a time.
pub struct Pager<'a> {
    client: &'a NetboxClient,
    object_type: ObjectType,
    limit: u32,
    cursor_pagination: bool,
    after: Option<u64>,
    done: bool,
}

impl<'a> Pager<'a> {
    pub fn new(
        client: &'a NetboxClient,
        object_type: ObjectType,
        version: (u32, u32),
        page_size: u32,
    ) -> Self {
        Pager {
            client,
            object_type,
            limit: page_size.clamp(1, MAX_PAGE_SIZE),
            cursor_pagination: version >= (4, 6),
            after: None,
            done: false,
        }
    }

    /// The next page, or `None` once NetBox answered an empty one. Only an empty page ends the
    /// pull: a short one may just be NetBox capping `limit` below ours, and ending early there
    /// would turn into false deletes.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Object>>, ApiError> {
        if self.done {
            return Ok(None);
        }
        let page = self.client.page(self.object_type, &self.query()).await?;
        if page.results.is_empty() {
            self.done = true;
            return Ok(None);
        }
        let last = page
            .results
            .iter()
            .filter_map(|o| o.get("id").and_then(Value::as_u64))
            .max();
        match (last, self.after) {
            (Some(last), Some(after)) if last <= after => {
                Err(self.stuck(format!("the cursor did not advance past id {after}")))
            }
            (Some(last), _) => {
                self.after = Some(last);
                Ok(Some(page.results))
            }
            (None, _) => Err(self.stuck("a page without object ids".to_string())),
        }
    }

    fn query(&self) -> String {
        let limit = self.limit;
        // config_context is the costliest field NetBox renders, and translation never reads it.
        let exclude = match self.object_type.name {
            "dcim.device" | "virtualization.virtualmachine" => "&exclude=config_context",
            _ => "",
        };
        match (self.cursor_pagination, self.after) {
            (true, None) => format!("start=0&limit={limit}{exclude}"),
            (true, Some(last)) => format!("start={}&limit={limit}{exclude}", last + 1),
            (false, None) => format!("ordering=id&limit={limit}{exclude}"),
            (false, Some(last)) => format!("ordering=id&id__gt={last}&limit={limit}{exclude}"),
        }
    }

    fn stuck(&self, message: String) -> ApiError {
        ApiError::Decode {
            what: self.object_type.name.into(),
            message,
        }
    }
}
