//! Held webhooks: kept in the state file until NetBox's main confirms them, then delivered. Every
//! round tries each held webhook that is not waiting, oldest first; what cannot be confirmed
//! waits by what it blames (NetBox, its type, itself: see `unconfirmed.rs`), so that a type the
//! token may not read never holds up the others. Such webhooks stay held, shown by `/readyz`,
//! the `netbox_relay_webhooks_unconfirmed` gauge and a warning, until they can be confirmed or an
//! operator releases or drops them (`netbox-relay held`). Nothing held is dropped silently.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use futures::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;

use super::confirm::{ConfirmError, Confirmed, Confirmer, HoldError};
use super::unconfirmed::Blame;
use crate::delta::RegistryDelta;
use crate::netbox::webhook::{self, Parsed, WebhookEvent};
use crate::publish::{Delivered, Delivery, DeliveryError};
use crate::state::Write;
use crate::telemetry;
use crate::translate::Outcome;

/// Held webhooks read from the state file, and confirmed, at a time. NetBox sees far fewer
/// requests: confirmations of one type share them (`on_main.rs`).
const BATCH: usize = 64;

/// A held webhook as it was when it was held.
struct Held {
    event: Box<WebhookEvent>,
    delta: RegistryDelta,
}

/// Held webhooks that wait, by (type, reason label): how many, and one of them.
type Tally = HashMap<(&'static str, &'static str), (usize, u64)>;

impl Confirmer {
    /// Keeps a verified body until main can confirm it; durable when it returns `Ok`.
    pub async fn hold(&self, body: Bytes) -> Result<(), HoldError> {
        if self.is_full() {
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

    /// Confirms held webhooks whenever some are held, until `shutdown`. A new hold starts a
    /// round at once, unless everything waits (NetBox away): then the next try is the back-off's.
    pub async fn run(self: Arc<Self>, delivery: Arc<Delivery>, shutdown: CancellationToken) {
        telemetry::held(self.held());
        // The plugin question, answered before the first webhook needs it.
        if let Some(client) = self.client.clone() {
            tokio::spawn(async move { client.status().await });
        }
        loop {
            if self.held() == 0 {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            let next = tokio::select! {
                next = self.round(&delivery) => next,
                _ = shutdown.cancelled() => return,
            };
            // Nothing waits: a hold made during the round has left its wake-up.
            let (until, wakes) = match next {
                None => (Instant::now() + Duration::from_secs(1), true),
                Some(until) => (until, self.waiting_for_netbox().is_none()),
            };
            let sleep = tokio::time::sleep_until(until.into());
            tokio::select! {
                _ = sleep => {}
                _ = self.wake.notified(), if wakes => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Tries every held webhook that is not waiting once, oldest first; answers when the next
    /// waiting one is due. Stops early only when everything must wait (NetBox away, the state
    /// file or the spool failing).
    async fn round(&self, delivery: &Delivery) -> Option<Instant> {
        if let Some((_, until)) = self.waits().everything(Instant::now()) {
            return Some(until);
        }
        let mut after = None;
        let mut tally = Tally::new();
        let complete = loop {
            let store = self.store.clone();
            let rows = match store.read(move |s| s.held_after(after, BATCH)).await {
                Ok(rows) => rows,
                Err(e) => break self.round_failed(None, "", ConfirmError::Store(e)),
            };
            let Some((last, _)) = rows.last() else {
                break true;
            };
            after = Some(*last);
            let (mut settled, due) = self.sort(rows, &mut tally);
            let outcomes: Vec<_> = stream::iter(due)
                .map(|(id, held)| async move {
                    let object_type = held.event.object_type.name;
                    (id, object_type, self.settle(delivery, held).await)
                })
                .buffer_unordered(BATCH)
                .collect()
                .await;
            let mut complete = true;
            for (id, object_type, outcome) in outcomes {
                match outcome {
                    Ok(()) => settled.push(id),
                    Err(e) => {
                        complete &= self.round_failed(Some(id), object_type, e);
                        if let Some(label) = self.waits().waiting(id, object_type, Instant::now()) {
                            tally.entry((object_type, label)).or_insert((0, id)).0 += 1;
                        }
                    }
                }
            }
            if let Err(e) = self.release(settled).await {
                break self.round_failed(None, "", e);
            }
            if !complete {
                break false;
            }
        };
        let mut waits = self.waits();
        // A round cut short saw only some of what waits: the last whole round's tally stands.
        if complete {
            waits.tally(&tally);
        }
        let away = waits.everything(Instant::now()).map(|(_, until)| until);
        away.or(waits.next_due())
    }

    /// Held webhooks parsed: those to drop (unreadable: logged), and those due now; those that
    /// wait are counted in `tally`.
    fn sort(&self, rows: Vec<(u64, Vec<u8>)>, tally: &mut Tally) -> (Vec<u64>, Vec<(u64, Held)>) {
        let (mut dropped, mut due) = (Vec::new(), Vec::new());
        // Parsed before the waits are locked: live webhooks take that lock too.
        let mut prepared = Vec::with_capacity(rows.len());
        for (id, body) in rows {
            match self.prepare(&body) {
                Some(held) => prepared.push((id, held)),
                None => dropped.push(id),
            }
        }
        let now = Instant::now();
        let waits = self.waits();
        for (id, held) in prepared {
            let object_type = held.event.object_type.name;
            match waits.waiting(id, object_type, now) {
                Some(label) => tally.entry((object_type, label)).or_insert((0, id)).0 += 1,
                None => due.push((id, held)),
            }
        }
        (dropped, due)
    }

    /// Records a failure; whether the round may go on.
    fn round_failed(&self, row: Option<u64>, object_type: &'static str, e: ConfirmError) -> bool {
        let failure = e.failure();
        self.waits()
            .failed(row, object_type, &failure, Instant::now());
        failure.blame != Blame::Everything
    }

    /// Forgets held webhooks whose outcome is durable.
    async fn release(&self, ids: Vec<u64>) -> Result<(), ConfirmError> {
        if ids.is_empty() {
            return Ok(());
        }
        let count = ids.len() as u64;
        {
            let mut waits = self.waits();
            for id in &ids {
                waits.settled(*id);
            }
        }
        self.committer.commit(Write::Release { ids }).await?;
        telemetry::held(self.held.fetch_sub(count, Ordering::SeqCst) - count);
        Ok(())
    }

    /// A held body as the webhook path read it. It was verified, parsed and translated before
    /// it was held; one that no longer is (a relay of another version wrote it) is dropped with
    /// an error, and the next reconcile repairs its object.
    fn prepare(&self, body: &[u8]) -> Option<Held> {
        let event = match webhook::parse(body, crate::translate::READS) {
            Ok(Parsed::Change(event)) => event,
            Ok(_) => return None,
            Err(e) => {
                tracing::error!(error = %e, "a held webhook is unreadable; dropped");
                return None;
            }
        };
        match self.translator.webhook(&event, Utc::now()) {
            Ok(Outcome::Publish(delta)) => Some(Held {
                event,
                delta: *delta,
            }),
            Ok(Outcome::Ignore(_)) => None,
            Err(e) => {
                tracing::error!(error = %e, "a held webhook does not translate; dropped");
                None
            }
        }
    }

    /// Confirms one held webhook and delivers what main has; `Ok` once its outcome is durable.
    async fn settle(&self, delivery: &Delivery, held: Held) -> Result<(), ConfirmError> {
        let Held { event, delta } = held;
        let key = delta.key.clone();
        let (main, newer) = match self.confirm(&event, &delta).await {
            Ok(Confirmed::AsSent) => (None, None),
            Ok(Confirmed::Main {
                delta: main, newer, ..
            }) => (Some(main), newer),
            Ok(Confirmed::NotOnMain(reason)) => {
                tracing::info!(%key, %reason, "held webhook not published");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        // As the webhook path does: kept before the delta is delivered, whatever becomes of it.
        let mut judged_by_the_record = false;
        if let Some(cascades) = &self.cascades {
            let mut trigger = newer.or_else(|| event.cascade());
            // The key's record is read only where a lost change may call for a cascade.
            if trigger.is_none() && event.may_follow_a_lost_change() {
                let key = key.clone();
                let recorded = self.store.read(move |s| s.head(&key)).await?;
                let shown = main.as_deref().unwrap_or(&delta);
                trigger = event.cascade_after(recorded.is_some_and(|h| h.shows_as(shown)));
                judged_by_the_record = trigger.is_none();
            }
            if let Some(trigger) = trigger {
                cascades.push(trigger).await?;
            }
        }
        let shown = main.as_deref().unwrap_or(&delta);
        let outcome = match delivery.deliver(shown).await {
            // Another relay's message was the key's last, not the recorded one: judged again.
            Ok(Delivered::Published {
                over: Some(registry),
            }) if judged_by_the_record => {
                let entries = (registry.entry.as_ref(), shown.entry.as_ref());
                if let (Some(cascades), Some(trigger)) = (
                    &self.cascades,
                    event.cascade_after_entry(entries.0, entries.1),
                ) {
                    cascades.push(trigger).await?;
                }
                "published"
            }
            Ok(Delivered::Published { .. }) => "published",
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
