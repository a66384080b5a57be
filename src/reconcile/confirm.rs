//! Confirmation against main. netbox-branching sends the changes made in a branch through the
//! same event rules as main's, and only a change made in the web UI (or with its
//! `add_branch_context` event pipeline step) says so. A webhook that does not say where its
//! change was made is therefore checked against NetBox's main (no branch header, no cookie), and
//! what main has is published: the object as main serializes it, a delete only once main lacks
//! the object, nothing for an object main does not have.
//!
//! NetBox is asked while the webhook waits, for at most `webhook.confirm_timeout`; past it (NetBox
//! down, slow or refusing) the verified body is held in the state file, the webhook answered 202,
//! and [`Confirmer::run`] confirms it once NetBox answers, after a restart too (`held.rs`). While
//! NetBox is known to be away, or a type known to be unreadable, webhooks are held at once.
//! Confirmations go through [`MainReads`], many ids to a request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;
use tokio::sync::Notify;

use super::on_main::MainReads;
use super::unconfirmed::{Blame, Failure, Unconfirmed, Waits};
use super::Cascades;
use crate::config::{Config, Confirm};
use crate::delta::{Origin, RegistryDelta};
use crate::netbox::client::NetboxClient;
use crate::netbox::parents::{Parent, Trigger};
use crate::netbox::webhook::{ChangeEvent, WebhookEvent};
use crate::publish::DeliveryError;
use crate::state::{Committer, Store, StoreError};
use crate::telemetry;
use crate::translate::{dated_unstamped, is_unstamped, Translator};

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
    pub(super) client: Option<Arc<NetboxClient>>,
    pub(super) main: Option<Arc<MainReads>>,
    pub(super) translator: Translator,
    pub(super) store: Arc<Store>,
    pub(super) committer: Committer,
    mode: Confirm,
    timeout: Duration,
    pub(super) max_held: u64,
    pub(super) held: AtomicU64,
    pub(super) next_id: AtomicU64,
    pub(super) wake: Notify,
    /// What confirmations wait for: NetBox, a type, a held webhook.
    pub(super) waits: Mutex<Waits>,
    /// Where a confirmed parent's cascade goes (cascades on).
    pub(super) cascades: Option<Arc<Cascades>>,
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
        if config.webhook.confirm == Confirm::Never {
            tracing::info!(
                "webhook.confirm = never: webhooks not marked as a branch change are trusted"
            );
        }
        if held > 0 {
            tracing::info!(
                held,
                "webhooks held from before wait for NetBox's main to confirm them"
            );
        }
        let main = client
            .clone()
            .map(|c| MainReads::new(c, config.netbox.concurrency));
        Ok(Confirmer {
            client,
            main,
            translator,
            store,
            committer,
            mode: config.webhook.confirm,
            timeout: config.webhook.confirm_timeout,
            max_held: config.webhook.max_held,
            held: AtomicU64::new(held),
            next_id: AtomicU64::new(next_id),
            wake: Notify::new(),
            waits: Mutex::new(Waits::default()),
            cascades: None,
        })
    }

    /// Confirmed webhooks of parents queue their cascades here.
    pub fn cascading(mut self, cascades: Option<Arc<Cascades>>) -> Self {
        self.cascades = cascades;
        self
    }

    /// Whether `event` is to be checked against main before it is published: not when its body
    /// says it comes from main, nor (`auto`) while NetBox was last known to have no
    /// netbox-branching, so that most relays ask nothing per webhook. Never waits: the plugin
    /// question is asked again in the background.
    pub fn needed(&self, event: &WebhookEvent) -> bool {
        let Some(client) = &self.client else {
            return false;
        };
        match self.mode {
            Confirm::Never => false,
            _ if event.on_main => false,
            Confirm::Auto => client.last_branching() != Some(false),
            Confirm::Always => true,
        }
    }

    /// Why a webhook of `object_type` is held without asking NetBox: NetBox away, or the type
    /// unreadable, since held webhooks were last tried.
    pub fn holds_at_once(&self, object_type: &str) -> Option<String> {
        self.waits().holds_at_once(object_type)
    }

    /// A live confirmation failed: what it blames waits, and the next ones are held at once.
    pub fn failed(&self, object_type: &'static str, error: &Unconfirmed) {
        self.waits()
            .failed(None, object_type, &error.failure(), Instant::now());
    }

    pub(super) fn waits(&self) -> std::sync::MutexGuard<'_, Waits> {
        self.waits.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Held webhooks that wait while the others go on, by type and reason.
    pub fn stuck(&self) -> Vec<super::unconfirmed::Stuck> {
        self.waits().stuck().to_vec()
    }

    /// Why every confirmation waits now (NetBox away), if it does.
    pub fn waiting_for_netbox(&self) -> Option<String> {
        let waits = self.waits();
        waits
            .everything(Instant::now())
            .map(|(reason, _)| reason.to_string())
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Webhooks held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// No room to hold one more webhook (`webhook.max_held`).
    pub fn is_full(&self) -> bool {
        self.held() >= self.max_held
    }

    /// Asks main about `event`, whose own delta is `delta`.
    pub async fn confirm(
        &self,
        event: &WebhookEvent,
        delta: &RegistryDelta,
    ) -> Result<Confirmed, Unconfirmed> {
        let (Some(client), Some(main)) = (&self.client, &self.main) else {
            return Err(Unconfirmed::Status(
                crate::netbox::client::ApiError::NotConfigured,
            ));
        };
        let status = match client.last_status() {
            Some(status) => status,
            None => client.status().await.map_err(Unconfirmed::Status)?,
        };
        if self.mode == Confirm::Auto && status.branching.is_none() {
            return Ok(Confirmed::AsSent);
        }
        let fields = status.version >= (4, 0);
        let confirmed = match main.get(event.object_type, event.object_id, fields).await {
            Ok(object) => {
                self.waits().answered(event.object_type.name);
                self.judge(object, event, delta)
            }
            Err(e) => Err(e.into()),
        };
        telemetry::confirmed(match &confirmed {
            Ok(Confirmed::Main { delta: main, .. }) if overtaken(main, delta) => "newer_on_main",
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

    /// What main's object (`None`: main lacks it) says of the webhook's change.
    fn judge(
        &self,
        main: Option<serde_json::Map<String, Value>>,
        event: &WebhookEvent,
        delta: &RegistryDelta,
    ) -> Result<Confirmed, Unconfirmed> {
        let (what, id) = (event.object_type.name, event.object_id);
        Ok(match (main, event.event) {
            (Some(_), ChangeEvent::Deleted) => Confirmed::NotOnMain(format!(
                "{what} {id} is still on NetBox's main: a delete made in a branch"
            )),
            (None, ChangeEvent::Deleted) => Confirmed::AsSent,
            (Some(object), _) => {
                let mut main = self.as_main(event, delta, &object)?;
                // Main shows the change when it shows its entry, saved then or later (a merge
                // saves again); an older save means the change never reached main. A merge's
                // creates are not stamped at all: dated by the webhook, as on every path.
                if is_unstamped(&object) {
                    main = dated_unstamped(main, delta.revision);
                }
                // A later save on main may have overtaken this change (made on main or not):
                // main's object is what the registry is to show either way.
                let shown = main.entry == delta.entry && main.revision >= delta.revision;
                let differs = (!shown && main.revision <= delta.revision).then(|| {
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

    /// Main's object as the webhook's delta: main's entry and revision, the webhook's provenance.
    fn as_main(
        &self,
        event: &WebhookEvent,
        delta: &RegistryDelta,
        object: &serde_json::Map<String, Value>,
    ) -> Result<RegistryDelta, Unconfirmed> {
        let mut main = self
            .translator
            .reconcile_upsert(event.object_type, object, Utc::now())
            .map_err(|e| Unconfirmed::Untranslatable {
                what: event.object_type.name,
                id: event.object_id,
                message: e.to_string(),
            })?;
        main.origin = Origin::Webhook;
        main.event.clone_from(&delta.event);
        main.request_id.clone_from(&delta.request_id);
        main.user.clone_from(&delta.user);
        if main.entry == delta.entry {
            main.changed_fields.clone_from(&delta.changed_fields);
        }
        Ok(main)
    }
}

/// Main shows another entry, saved later than the change: whether the change itself reached
/// main cannot be told (and need not be: main's object is what the registry is to show).
fn overtaken(main: &RegistryDelta, delta: &RegistryDelta) -> bool {
    main.entry != delta.entry && main.revision > delta.revision
}

/// Why a held webhook could not be confirmed now.
#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    #[error(transparent)]
    Main(#[from] Unconfirmed),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
}

impl ConfirmError {
    /// The state file or the spool failing holds up every held webhook alike.
    pub fn failure(&self) -> Failure {
        match self {
            ConfirmError::Main(e) => e.failure(),
            e => Failure {
                blame: Blame::Everything,
                label: "unavailable",
                reason: e.to_string(),
            },
        }
    }
}

/// Why a webhook could not be held.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("{0} webhooks already wait for NetBox's main to confirm them (webhook.max_held)")]
    Full(u64),
    #[error(transparent)]
    Store(StoreError),
}
