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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use futures::stream::{self, StreamExt};
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::pull::selection;
use crate::backoff::Backoff;
use crate::config::{Config, Confirm};
use crate::delta::{Origin, RegistryDelta};
use crate::netbox::client::{parse_version, ApiError, NetboxClient};
use crate::netbox::webhook::{self, ChangeEvent, Parsed, WebhookEvent};
use crate::publish::{Delivered, Delivery, DeliveryError};
use crate::state::{Committer, Store, StoreError, Write};
use crate::telemetry;
use crate::translate::{Outcome, Translator};

/// How long NetBox's plugin list is trusted before it is asked again.
const STATUS_TTL: Duration = Duration::from_secs(300);
/// Held webhooks read from the state file at a time.
const BATCH: usize = 64;
/// The longest wait between two tries to confirm held webhooks.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What NetBox's `/api/status/` says that confirmation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetboxStatus {
    pub version: (u32, u32),
    /// The netbox-branching plugin's version, when it is installed.
    pub branching: Option<String>,
}

impl NetboxStatus {
    pub fn of(status: &serde_json::Map<String, Value>) -> Result<NetboxStatus, ApiError> {
        let branching = status
            .get("plugins")
            .and_then(|p| p.get("netbox_branching"))
            .map(|v| v.as_str().unwrap_or("installed").to_string());
        Ok(NetboxStatus {
            version: parse_version(status)?,
            branching,
        })
    }
}

/// What main says of one webhook.
#[derive(Debug)]
pub enum Confirmed {
    /// Publish this delta: main's object (or the webhook's delete, main lacking the object);
    /// with a reason when main's entry differs from the webhook's (the change is not on main,
    /// and main's object is published only if the registry does not show it yet).
    Publish(Box<RegistryDelta>, Option<String>),
    /// NetBox has no netbox-branching (`auto`): publish the webhook's own delta.
    Trusted(Box<RegistryDelta>),
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
    status: Mutex<Option<(Instant, NetboxStatus)>>,
    held: AtomicU64,
    next_id: AtomicU64,
    wake: Notify,
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
            status: Mutex::new(None),
            held: AtomicU64::new(held),
            next_id: AtomicU64::new(next_id),
            wake: Notify::new(),
        })
    }

    /// Whether `event` is to be checked against main before it is published. A body that says
    /// it comes from main needs no check; in `auto` mode the answer may still be "no" once
    /// NetBox's plugins are known ([`Confirmer::confirm`] tells).
    pub fn needed(&self, event: &WebhookEvent) -> bool {
        self.mode != Confirm::Never && self.client.is_some() && !event.on_main
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
        delta: RegistryDelta,
    ) -> Result<Confirmed, ApiError> {
        let confirmed = self.ask(event, delta).await;
        let result = match &confirmed {
            Ok(Confirmed::Trusted(_)) => return confirmed,
            Ok(Confirmed::Publish(_, None)) => "on_main",
            Ok(Confirmed::Publish(_, Some(_))) => "not_on_main",
            Ok(Confirmed::NotOnMain(_)) => "not_on_main",
            Err(_) => "failed",
        };
        telemetry::confirmed(result);
        confirmed
    }

    async fn ask(&self, event: &WebhookEvent, delta: RegistryDelta) -> Result<Confirmed, ApiError> {
        let client = self.client.as_ref().ok_or(ApiError::NotConfigured)?;
        let status = self.status(client).await?;
        if self.mode == Confirm::Auto && status.branching.is_none() {
            return Ok(Confirmed::Trusted(Box::new(delta)));
        }
        let main = self.on_main(client, event, status.version).await?;
        let (what, id) = (event.object_type.name, event.object_id);
        Ok(match (main, event.event) {
            (Some(_), ChangeEvent::Deleted) => Confirmed::NotOnMain(format!(
                "{what} {id} is still on NetBox's main: a delete made in a branch"
            )),
            (None, ChangeEvent::Deleted) => Confirmed::Publish(Box::new(delta), None),
            (Some(object), _) => {
                let main = self.as_main(event, &delta, &object);
                // Main shows the change when it shows its entry, saved then or later (a merge
                // saves again); an older save means the change never reached main. A merge's
                // creates are not stamped at all.
                let unstamped = object.get("last_updated").is_none_or(Value::is_null);
                let shown =
                    main.entry == delta.entry && (main.revision >= delta.revision || unstamped);
                let differs = (!shown).then(|| {
                    format!(
                        "NetBox's main does not show this change of {what} {id}: made in a branch"
                    )
                });
                Confirmed::Publish(Box::new(main), differs)
            }
            (None, _) => Confirmed::NotOnMain(format!(
                "{what} {id} is not on NetBox's main: a change made in a branch"
            )),
        })
    }

    /// NetBox's status, asked again after [`STATUS_TTL`]; the last answer stands while NetBox
    /// does not give a new one (a NetBox without the plugin stays trusted through an outage).
    async fn status(&self, client: &NetboxClient) -> Result<NetboxStatus, ApiError> {
        let known = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some((at, status)) = &known {
            if at.elapsed() < STATUS_TTL {
                return Ok(status.clone());
            }
        }
        let asked = client
            .status()
            .await
            .and_then(|answer| NetboxStatus::of(&answer));
        let status = match (asked, known) {
            (Ok(status), _) => status,
            (Err(e), Some((_, status))) => {
                tracing::warn!(error = %e, "NetBox's status could not be asked again; its plugins are taken as they were");
                let mut cached = self.status.lock().unwrap_or_else(|e| e.into_inner());
                *cached = Some((Instant::now(), status.clone()));
                return Ok(status);
            }
            (Err(e), None) => return Err(e),
        };
        let mut cached = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if cached.as_ref().map(|(_, s)| &s.branching) != Some(&status.branching) {
            match &status.branching {
                Some(v) => {
                    tracing::info!(plugin_version = %v, "NetBox has netbox-branching: webhooks that do not say they come from main are confirmed against main")
                }
                None => tracing::info!("NetBox has no netbox-branching: webhooks are trusted"),
            }
        }
        *cached = Some((Instant::now(), status.clone()));
        Ok(status)
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
        let page = client.page(event.object_type, &query).await?;
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
    ) -> RegistryDelta {
        let main = self
            .translator
            .reconcile_upsert(event.object_type, object, Utc::now());
        let mut main = match main {
            Ok(main) => main,
            Err(e) => {
                tracing::warn!(error = %e, "main's object does not translate; the webhook's is published");
                return delta.clone();
            }
        };
        main.origin = Origin::Webhook;
        main.event.clone_from(&delta.event);
        main.request_id.clone_from(&delta.request_id);
        main.user.clone_from(&delta.user);
        if main.entry == delta.entry {
            main.changed_fields.clone_from(&delta.changed_fields);
        }
        main
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

    /// Confirms every held webhook once, oldest first, a few at a time. Stops at the first
    /// batch NetBox did not answer for.
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
        let event = match webhook::parse(body) {
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
        match self.confirm(&event, delta).await? {
            Confirmed::Publish(delta, _) | Confirmed::Trusted(delta) => {
                let delivered = delivery.deliver(&delta).await?;
                let outcome = match delivered {
                    Delivered::Published => "published",
                    Delivered::Spooled => "spooled",
                    Delivered::Dropped(verdict) => verdict.reason(),
                };
                tracing::info!(%key, outcome, "held webhook confirmed by NetBox's main");
            }
            Confirmed::NotOnMain(reason) => {
                tracing::info!(%key, %reason, "held webhook not published");
            }
        }
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
