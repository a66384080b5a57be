//! Confirmation against main. netbox-branching sends the changes made in a branch through the
//! same event rules as main's, and only a change made in the web UI (or with its
//! `add_branch_context` event pipeline step) says so. A webhook that does not say where its
//! change was made is therefore checked against NetBox's main (no branch header, no cookie), and
//! what main has is published: the object as main serializes it, a delete only once main lacks
//! the object, nothing for an object main does not have.
//!
//! NetBox is asked while the webhook waits, for at most `webhook.confirm_timeout`; past it (NetBox
//! down, slow or refusing) the verified body is held in the state file, the webhook answered 202,
//! and [`Confirmer::run`] confirms it once NetBox answers, after a restart too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use futures::stream::{self, StreamExt};
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::pull::selection;
use super::Cascades;
use crate::backoff::Backoff;
use crate::config::{Config, Confirm};
use crate::delta::{Origin, RegistryDelta};
use crate::netbox::client::{ApiError, NetboxClient};
use crate::netbox::parents::{Parent, Trigger};
use crate::netbox::webhook::{self, ChangeEvent, Parsed, WebhookEvent};
use crate::publish::{Delivered, Delivery, DeliveryError};
use crate::state::{Committer, Store, StoreError, Write};
use crate::telemetry;
use crate::translate::{dated_unstamped, is_unstamped, Outcome, Translator};

/// Held webhooks read from the state file at a time.
const BATCH: usize = 64;
/// The longest wait between two tries to confirm held webhooks.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What main says of one webhook.
#[derive(Debug)]
pub enum Confirmed {
    /// Publish the webhook's own delta: NetBox has no netbox-branching (`auto`), or main lacks
    /// the object the webhook deletes.
    AsSent,
    /// Publish main's object in its place.
    Main {
        delta: Box<RegistryDelta>,
        /// Why, when main's entry differs from the webhook's: the change is not on main, and
        /// main's object is published only if the registry does not show it yet.
        differs: Option<String>,
        /// The cascade main's object calls for when it is newer than the webhook's change
        /// (changes made since, whose own webhooks may never come) and is a parent.
        newer: Option<Trigger>,
    },
    /// Main does not show the change; the reason is for the 200 answer.
    NotOnMain(String),
}

pub struct Confirmer {
    client: Option<Arc<NetboxClient>>,
    translator: Translator,
    store: Arc<Store>,
    committer: Committer,
    mode: Confirm,
    timeout: Duration,
    max_held: u64,
    concurrency: usize,
    held: AtomicU64,
    next_id: AtomicU64,
    wake: Notify,
    /// Where a confirmed parent's cascade goes (cascades on).
    cascades: Option<Arc<Cascades>>,
}

impl Confirmer {
    pub fn new(
        config: &Config,
        client: Option<Arc<NetboxClient>>,
        translator: Translator,
        store: Arc<Store>,
        committer: Committer,
    ) -> Result<Confirmer, StoreError> {
        let (held, next_id) = store.held_stats()?;
        match (config.webhook.confirm, &client) {
            (Confirm::Never, _) => tracing::info!("webhook.confirm = never: webhooks not marked as a branch change are trusted"),
            (Confirm::Auto, None) => tracing::info!("webhook.confirm = auto, but netbox.url or netbox.token is not set: branch changes made through the REST API, and merges, cannot be told from main's (netbox-branching)"),
            _ => {}
        }
        if held > 0 {
            tracing::info!(
                held,
                "webhooks held from before wait for NetBox's main to confirm them"
            );
        }
        Ok(Confirmer {
            client,
            translator,
            store,
            committer,
            mode: config.webhook.confirm,
            timeout: config.webhook.confirm_timeout,
            max_held: config.webhook.max_held,
            concurrency: config.netbox.concurrency.max(1),
            held: AtomicU64::new(held),
            next_id: AtomicU64::new(next_id),
            wake: Notify::new(),
            cascades: None,
        })
    }

    /// Confirmed webhooks of parents queue their cascades here.
    pub fn cascading(mut self, cascades: Option<Arc<Cascades>>) -> Self {
        self.cascades = cascades;
        self
    }

    /// Whether `event` is to be checked against main before it is published: not when its body
    /// says it comes from main, nor (`auto`) while NetBox is known to have no netbox-branching,
    /// so that most relays ask nothing per webhook.
    pub fn needed(&self, event: &WebhookEvent) -> bool {
        let Some(client) = &self.client else {
            return false;
        };
        match self.mode {
            Confirm::Never => false,
            _ if event.on_main => false,
            Confirm::Auto => client.has_branching() != Some(false),
            Confirm::Always => true,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Webhooks held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Asks main about `event`, whose own delta is `delta`.
    pub async fn confirm(
        &self,
        event: &WebhookEvent,
        delta: &RegistryDelta,
    ) -> Result<Confirmed, ApiError> {
        let client = self.client.as_ref().ok_or(ApiError::NotConfigured)?;
        let status = client.status().await?;
        if self.mode == Confirm::Auto && status.branching.is_none() {
            return Ok(Confirmed::AsSent);
        }
        let confirmed = self.ask(client, status.version, event, delta).await;
        telemetry::confirmed(match &confirmed {
            Ok(Confirmed::AsSent | Confirmed::Main { differs: None, .. }) => "on_main",
            Ok(
                Confirmed::Main {
                    differs: Some(_), ..
                }
                | Confirmed::NotOnMain(_),
            ) => "not_on_main",
            Err(_) => "failed",
        });
        confirmed
    }

    async fn ask(
        &self,
        client: &NetboxClient,
        version: (u32, u32),
        event: &WebhookEvent,
        delta: &RegistryDelta,
    ) -> Result<Confirmed, ApiError> {
        let main = self.on_main(client, event, version).await?;
        let (what, id) = (event.object_type.name, event.object_id);
        Ok(match (main, event.event) {
            (Some(_), ChangeEvent::Deleted) => Confirmed::NotOnMain(format!(
                "{what} {id} is still on NetBox's main: a delete made in a branch"
            )),
            (None, ChangeEvent::Deleted) => Confirmed::AsSent,
            (Some(object), _) => {
                let Some(mut main) = self.as_main(event, delta, &object) else {
                    return Ok(Confirmed::AsSent);
                };
                // Main shows the change when it shows its entry, saved then or later (a merge
                // saves again); an older save means the change never reached main. A merge's
                // creates are not stamped at all: dated by the webhook, as on every path.
                if is_unstamped(&object) {
                    main = dated_unstamped(main, delta.revision);
                }
                let shown = main.entry == delta.entry && main.revision >= delta.revision;
                let differs = (!shown).then(|| {
                    format!(
                        "NetBox's main does not show this change of {what} {id}: made in a branch"
                    )
                });
                let newer = (main.revision > delta.revision)
                    .then(|| Parent::from_name(what))
                    .flatten()
                    .map(|parent| parent.any_change(id, &object));
                Confirmed::Main {
                    delta: Box::new(main),
                    differs,
                    newer,
                }
            }
            (None, _) => Confirmed::NotOnMain(format!(
                "{what} {id} is not on NetBox's main: a change made in a branch"
            )),
        })
    }

    /// The object as main has it, or `None` when main does not have it.
    async fn on_main(
        &self,
        client: &NetboxClient,
        event: &WebhookEvent,
        version: (u32, u32),
    ) -> Result<Option<serde_json::Map<String, Value>>, ApiError> {
        let query = format!(
            "id={}&limit=1{}",
            event.object_id,
            selection(event.object_type, version >= (4, 0))
        );
        let page = client
            .page(event.object_type, &query, crate::translate::READS)
            .await?;
        Ok(page
            .results
            .into_iter()
            .find(|o| o.get("id").and_then(Value::as_u64) == Some(event.object_id)))
    }

    /// Main's object as the webhook's delta: main's entry and revision, the webhook's provenance.
    fn as_main(
        &self,
        event: &WebhookEvent,
        delta: &RegistryDelta,
        object: &serde_json::Map<String, Value>,
    ) -> Option<RegistryDelta> {
        let main = self
            .translator
            .reconcile_upsert(event.object_type, object, Utc::now());
        let mut main = match main {
            Ok(main) => main,
            Err(e) => {
                tracing::warn!(error = %e, "main's object does not translate; the webhook's is published");
                return None;
            }
        };
        main.origin = Origin::Webhook;
        main.event.clone_from(&delta.event);
        main.request_id.clone_from(&delta.request_id);
        main.user.clone_from(&delta.user);
        if main.entry == delta.entry {
            main.changed_fields.clone_from(&delta.changed_fields);
        }
        Some(main)
    }

    /// Keeps a verified body until main can confirm it; durable when it returns `Ok`.
    pub async fn hold(&self, body: Bytes) -> Result<(), HoldError> {
        if self.held() >= self.max_held {
            return Err(HoldError::Full(self.max_held));
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        self.committer
            .commit(Write::Hold { id, body })
            .await
            .map_err(HoldError::Store)?;
        telemetry::held(self.held.fetch_add(1, Ordering::SeqCst) + 1);
        self.wake.notify_one();
        Ok(())
    }

    /// Confirms held webhooks whenever some are held, until `shutdown`; waits longer after each
    /// round NetBox did not answer.
    pub async fn run(self: Arc<Self>, delivery: Arc<Delivery>, shutdown: CancellationToken) {
        telemetry::held(self.held());
        let mut backoff = Backoff::new(Duration::from_secs(1), MAX_BACKOFF);
        loop {
            if self.held() == 0 {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            let done = tokio::select! {
                done = self.round(&delivery) => done,
                _ = shutdown.cancelled() => return,
            };
            let wait = match done {
                Ok(()) => {
                    backoff.reset();
                    continue;
                }
                Err(e) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(held = self.held(), error = %e, retry_in = ?wait,
                        "held webhooks wait: NetBox's main cannot confirm them yet");
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Confirms every held webhook once, oldest first, a few at a time. Stops after the first
    /// batch NetBox did not answer for: what fails here (NetBox away or refusing, the state file)
    /// fails for every webhook alike, and a delta that can never be published is dropped.
    async fn round(&self, delivery: &Delivery) -> Result<(), ConfirmError> {
        let mut after = None;
        loop {
            let store = self.store.clone();
            let rows = store.read(move |s| s.held_after(after, BATCH)).await?;
            let Some((last, _)) = rows.last() else {
                return Ok(());
            };
            after = Some(*last);
            let outcomes: Vec<(u64, Result<(), ConfirmError>)> = stream::iter(rows)
                .map(|(id, body)| async move { (id, self.settle(delivery, &body).await) })
                .buffer_unordered(self.concurrency)
                .collect()
                .await;
            let mut settled = Vec::new();
            let mut failure = None;
            for (id, outcome) in outcomes {
                match outcome {
                    Ok(()) => settled.push(id),
                    Err(e) => failure = Some(e),
                }
            }
            if !settled.is_empty() {
                let count = settled.len() as u64;
                self.committer
                    .commit(Write::Release { ids: settled })
                    .await?;
                telemetry::held(self.held.fetch_sub(count, Ordering::SeqCst) - count);
            }
            if let Some(e) = failure {
                return Err(e);
            }
        }
    }

    /// Confirms one held body and delivers what main has; `Ok` once its outcome is durable.
    async fn settle(&self, delivery: &Delivery, body: &[u8]) -> Result<(), ConfirmError> {
        // The body was verified, parsed and translated before it was held; one that no longer
        // is (a relay of another version wrote it) is dropped, the next reconcile repairs it.
        let event = match webhook::parse(body, crate::translate::READS) {
            Ok(Parsed::Change(event)) => event,
            Ok(_) => return Ok(()),
            Err(e) => {
                tracing::error!(error = %e, "a held webhook is unreadable; dropped");
                return Ok(());
            }
        };
        let delta = match self.translator.webhook(&event, Utc::now()) {
            Ok(Outcome::Publish(delta)) => *delta,
            Ok(Outcome::Ignore(_)) => return Ok(()),
            Err(e) => {
                tracing::error!(error = %e, "a held webhook does not translate; dropped");
                return Ok(());
            }
        };
        let key = delta.key.clone();
        let (main, newer) = match self.confirm(&event, &delta).await? {
            Confirmed::AsSent => (None, None),
            Confirmed::Main {
                delta: main, newer, ..
            } => (Some(main), newer),
            Confirmed::NotOnMain(reason) => {
                tracing::info!(%key, %reason, "held webhook not published");
                return Ok(());
            }
        };
        // As the webhook path does: kept before the delta is delivered, whatever becomes of it.
        if let Some(cascades) = &self.cascades {
            let mut trigger = newer.or_else(|| event.cascade());
            // The key's record is read only where a lost change may call for a cascade.
            if trigger.is_none() && event.may_follow_a_lost_change() {
                let key = key.clone();
                let recorded = self.store.read(move |s| s.head(&key)).await?;
                trigger = event.cascade_after(recorded.map(|h| h.revision));
            }
            if let Some(trigger) = trigger {
                cascades.push(trigger).await?;
            }
        }
        let outcome = match delivery.deliver(main.as_deref().unwrap_or(&delta)).await {
            Ok(Delivered::Published) => "published",
            Ok(Delivered::Spooled) => "spooled",
            Ok(Delivered::Dropped(verdict)) => verdict.reason(),
            // Never publishable (the webhook's own delta was checked before it was held).
            Err(e @ DeliveryError::TooLarge { .. }) => {
                tracing::error!(%key, error = %e, "a held webhook's delta cannot be published; dropped");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        tracing::info!(%key, outcome, "held webhook confirmed by NetBox's main");
        Ok(())
    }
}

/// Why held webhooks could not be confirmed now.
#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
}

/// Why a webhook could not be held.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("{0} webhooks already wait for NetBox's main to confirm them (webhook.max_held)")]
    Full(u64),
    #[error(transparent)]
    Store(StoreError),
}
