//! Main's objects for confirmation, many ids to a request. A webhook whose type has a request
//! free is asked about at once, so a quiet relay adds no wait; while a type's requests are all
//! under way, the ids that arrive wait together and go in the next one (`id=` repeated, as the
//! cheap pass asks). A bulk edit of 10,000 devices costs NetBox a request per batch, not one per
//! webhook.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tokio::sync::oneshot;

use super::pull::selection;
use crate::netbox::client::{ApiError, NetboxClient};
use crate::netbox::ObjectType;

/// Ids in one request: the URL stays short (about 1 KiB), the page one NetBox serves at once.
const MAX_IDS: usize = 100;

/// An object as main has it, `None` when main does not have it.
pub type OnMain = Result<Option<Map<String, Value>>, ApiError>;

pub struct MainReads {
    client: Arc<NetboxClient>,
    /// Requests of one type under way at once.
    per_type: usize,
    queues: Mutex<HashMap<&'static str, Queue>>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<(u64, oneshot::Sender<OnMain>)>,
    under_way: usize,
}

impl MainReads {
    pub fn new(client: Arc<NetboxClient>, per_type: usize) -> Arc<MainReads> {
        Arc::new(MainReads {
            client,
            per_type: per_type.max(1),
            queues: Mutex::new(HashMap::new()),
        })
    }

    /// Object `id` of `object_type` as main has it; `fields` when NetBox takes `fields=` (4.0+).
    pub async fn get(self: &Arc<Self>, object_type: ObjectType, id: u64, fields: bool) -> OnMain {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            let queue = queues.entry(object_type.name).or_default();
            queue.waiting.push((id, answer));
            let start = queue.under_way < self.per_type;
            queue.under_way += usize::from(start);
            start
        };
        // A task of its own: a caller that stops waiting (its timeout) leaves the others served.
        if start {
            tokio::spawn(self.clone().serve(object_type, fields));
        }
        answered.await.unwrap_or_else(|_| {
            Err(ApiError::Transport {
                what: object_type.name.to_string(),
                message: "the request was abandoned".into(),
            })
        })
    }

    /// Asks for what waits, a batch at a time, until nothing of `object_type` waits.
    async fn serve(self: Arc<Self>, object_type: ObjectType, fields: bool) {
        loop {
            let batch = {
                let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
                let queue = queues.entry(object_type.name).or_default();
                if queue.waiting.is_empty() {
                    queue.under_way -= 1;
                    return;
                }
                let take = queue.waiting.len().min(MAX_IDS);
                queue.waiting.drain(..take).collect::<Vec<_>>()
            };
            let ids: BTreeSet<u64> = batch.iter().map(|(id, _)| *id).collect();
            match self.fetch(object_type, &ids, fields).await {
                Ok(found) => {
                    for (id, answer) in batch {
                        let _ = answer.send(Ok(found.get(&id).cloned()));
                    }
                }
                Err(e) => {
                    for (_, answer) in batch {
                        let _ = answer.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    async fn fetch(
        &self,
        object_type: ObjectType,
        ids: &BTreeSet<u64>,
        fields: bool,
    ) -> Result<HashMap<u64, Map<String, Value>>, ApiError> {
        let mut query = String::new();
        for id in ids {
            query.push_str(&format!("id={id}&"));
        }
        query.push_str(&format!(
            "limit={}{}",
            ids.len(),
            selection(object_type, fields)
        ));
        let page = self
            .client
            .page(object_type, &query, crate::translate::READS)
            .await?;
        Ok(page
            .results
            .into_iter()
            .filter_map(|o| Some((o.get("id")?.as_u64()?, o)))
            .filter(|(id, _)| ids.contains(id))
            .collect())
    }
}
