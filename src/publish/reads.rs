//! Reads of the stream: a key's last message (what the per-key rule compares against), the
//! ids of a kind's keys (what reconcile's deletes start from), and every key's last message in
//! one pass (what a relay with a new state file learns the registry from).

use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use futures::StreamExt;

use super::jetstream::{Last, PublishError, Publisher};
use super::subject;
use crate::delta::{Kind, RegistryDelta};

impl Publisher {
    /// The key's last message on the stream (read from the stream's leader), with its sequence;
    /// None when the key has none (never published, or its tombstone expired).
    pub async fn last_of(&self, delta: &RegistryDelta) -> Result<Option<Last>, PublishError> {
        self.last_on(&self.subject(delta)).await
    }

    /// The key of `kind` `id`'s last message on the stream, as [`Publisher::last_of`].
    pub async fn last_of_key(
        &self,
        partition: &str,
        kind: Kind,
        id: u64,
    ) -> Result<Option<Last>, PublishError> {
        let prefix = &self.settings.subject_prefix;
        self.last_on(&subject::key(prefix, partition, kind, id))
            .await
    }

    /// The object ids of `kind` that have a message on the stream (an entry or a tombstone),
    /// whichever relay published it.
    pub async fn ids_on_stream(
        &self,
        partition: &str,
        kind: Kind,
    ) -> Result<Vec<u64>, PublishError> {
        let prefix = &self.settings.subject_prefix;
        let filter = subject::keys_of(prefix, partition, Some(&kind));
        let api = format!("STREAM.INFO.{}", self.settings.name);
        let mut ids = Vec::new();
        let mut offset = 0;
        loop {
            let request = serde_json::json!({"subjects_filter": filter, "offset": offset});
            let failed = |e: &dyn std::fmt::Display| {
                PublishError::Read(format!("listing the keys of {kind}: {e}"))
            };
            let page: keys::Page = self
                .js
                .request(api.clone(), &request)
                .await
                .map_err(|e| failed(&e))?;
            let (listed, total) = page.into_ids(&mut ids).map_err(|e| failed(&e))?;
            offset += listed;
            if listed == 0 || offset >= total {
                return Ok(ids);
            }
        }
    }

    /// The last message of every key of `kind` (every kind when None) in `partition`, read in
    /// one pass in subject order: an ordered consumer with the "last per subject" policy,
    /// nothing stored on the server. A million keys take seconds this way, where reading them
    /// one at a time takes a request each.
    pub async fn last_per_key(
        &self,
        partition: &str,
        kind: Option<Kind>,
    ) -> Result<LastPerKey, PublishError> {
        let failed = |e: &dyn std::fmt::Display| {
            PublishError::Read(format!("reading the last message of every key: {e}"))
        };
        let stream = self
            .js
            .get_stream_no_info(&self.settings.name)
            .await
            .map_err(|e| PublishError::NoStream(e.to_string()))?;
        let prefix = &self.settings.subject_prefix;
        let config = OrderedConfig {
            filter_subject: subject::keys_of(
                prefix,
                partition,
                kind.as_ref().map(|k| k as &dyn std::fmt::Display),
            ),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        };
        let consumer = stream.create_consumer(config).await.map_err(|e| {
            use jetstream::stream::ConsumerErrorKind;
            match e.kind() {
                ConsumerErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    PublishError::NoStream(e.to_string())
                }
                _ => failed(&e),
            }
        })?;
        let pending = consumer.cached_info().num_pending;
        let messages = consumer.messages().await.map_err(|e| failed(&e))?;
        Ok(LastPerKey { messages, pending })
    }

    async fn last_on(&self, subject: &str) -> Result<Option<Last>, PublishError> {
        use jetstream::stream::LastRawMessageErrorKind;
        // Away: answered now rather than after the request's timeout.
        if !self.is_connected() {
            return Err(PublishError::NotConnected);
        }
        crate::telemetry::key_read();
        let stream = self
            .js
            .get_stream_no_info(&self.settings.name)
            .await
            .map_err(|e| PublishError::NoStream(e.to_string()))?;
        let message = match stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => message,
            Err(e) => {
                return match e.kind() {
                    LastRawMessageErrorKind::NoMessageFound => Ok(None),
                    LastRawMessageErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                    {
                        self.stream_lost();
                        Err(PublishError::NoStream(e.to_string()))
                    }
                    _ => Err(PublishError::Read(format!(
                        "reading the key's last message: {e}"
                    ))),
                }
            }
        };
        Ok(Some(
            match serde_json::from_slice::<RegistryDelta>(&message.payload) {
                Ok(last) => Last::Delta(Box::new(last), message.sequence),
                Err(_) => Last::Foreign(message.sequence),
            },
        ))
    }
}

/// The keys' last messages, as [`Publisher::last_per_key`] reads them.
pub struct LastPerKey {
    messages: jetstream::consumer::pull::Ordered,
    /// Messages left to read; the pass ends at the last key, whatever is published meanwhile.
    pending: u64,
}

impl LastPerKey {
    /// The next key's last message; None once every key has been read.
    pub async fn next(&mut self) -> Option<Result<Last, PublishError>> {
        if self.pending == 0 {
            return None;
        }
        let message = match self.messages.next().await? {
            Ok(message) => message,
            Err(e) => {
                self.pending = 0;
                return Some(Err(PublishError::Read(format!(
                    "reading the last message of every key: {e}"
                ))));
            }
        };
        let (seq, pending) = match message.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(e) => {
                self.pending = 0;
                return Some(Err(PublishError::Read(format!(
                    "a message's metadata: {e}"
                ))));
            }
        };
        self.pending = pending;
        Some(Ok(
            match serde_json::from_slice::<RegistryDelta>(&message.payload) {
                Ok(last) => Last::Delta(Box::new(last), seq),
                Err(_) => Last::Foreign(seq),
            },
        ))
    }
}

/// The stream's answer to a subjects listing (`STREAM.INFO` with `subjects_filter`), read as the
/// ids its subjects end with. A page lists up to 100,000 subjects; async-nats' own listing holds
/// two copies of each page as strings, several times what the ids take.
mod keys {
    use std::fmt;

    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub struct Page {
        #[serde(default)]
        state: Option<State>,
        #[serde(default)]
        total: usize,
        #[serde(default)]
        error: Option<ApiError>,
    }

    #[derive(Deserialize)]
    struct ApiError {
        #[serde(default)]
        description: String,
    }

    #[derive(Deserialize)]
    struct State {
        #[serde(default, deserialize_with = "ids")]
        subjects: Listed,
    }

    /// How many subjects the page listed, and the ids of those that end with one.
    #[derive(Default)]
    struct Listed(usize, Vec<u64>);

    impl Page {
        /// Appends the page's ids; returns how many subjects it listed and the total.
        pub fn into_ids(self, ids: &mut Vec<u64>) -> Result<(usize, usize), String> {
            if let Some(error) = self.error {
                return Err(error.description);
            }
            let Listed(listed, found) = self.state.map(|s| s.subjects).unwrap_or_default();
            ids.extend(found);
            Ok((listed, self.total))
        }
    }

    fn ids<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Listed, D::Error> {
        struct Ids;
        impl<'de> Visitor<'de> for Ids {
            type Value = Listed;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of subjects to message counts")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Listed, M::Error> {
                let mut listed = Listed::default();
                while let Some(subject) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    listed.0 += 1;
                    if let Some(id) = subject.rsplit('.').next().and_then(|id| id.parse().ok()) {
                        listed.1.push(id);
                    }
                }
                Ok(listed)
            }
        }
        deserializer.deserialize_map(Ids)
    }
}
