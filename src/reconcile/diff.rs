//! One object type: upserts for new or changed entries, deletes for keys the complete pull did not
//! return (and whose revision predates the run), nothing for the unchanged; deletes withheld past
//! `reconcile.max_delete_fraction` unless forced, and none at all after a failed pull.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::task::JoinHandle;

use super::repair::RunCascades;
use super::runs::{PassKind, RunStatus, TypeReport};
use super::served;
use super::{Output, Reconciler};
use crate::delta::{entry_hash, RegistryDelta};
use crate::netbox::client::{ApiError, NetboxClient, ServedPage};
use crate::netbox::parents::{Parent, Trigger};
use crate::netbox::{ObjectType, Reads};
use crate::publish::{Delivered, Last};
use crate::state::{Known, RecordHead, Served, ServedHash, Store, StoreError};
use crate::telemetry;
use crate::translate::{dated_unstamped, is_unstamped, listed_revision, Object, Translator, READS};

/// Deltas in flight at once. A pull returns each object once, so they are all of different keys
/// and per-key order holds; JetStream acks and state commits overlap instead of queueing.
const IN_FLIGHT: usize = 256;

/// Pages translated and compared with the state at once, each on a blocking thread: with two
/// the translation of one page overlaps the next page's download and the deliveries.
const SORTING: usize = 2;

/// Objects fetched in full per request by the cheap pass (`id=` repeated): URLs stay about 1 KB.
const BY_IDS: usize = 100;
/// Keys another relay published that are read one at a time; past this many, every key of the
/// type is read in one pass.
const READ_ONE_BY_ONE: usize = 64;

/// One page, translated and compared with the state store.
#[derive(Default)]
pub(super) struct Sorted {
    pub ids: Vec<u64>,
    pub changed: Vec<RegistryDelta>,
    /// Of the changed, the ids of objects saved since their key's live entry was published:
    /// only a save changes what an object's dependents show (a new object is shown by none, and
    /// one re-labelled by a cascade was not saved).
    pub replaced: Vec<u64>,
    unchanged: u64,
    /// The unchanged that were translated, each with the stream sequence of the record it
    /// matched: what a cascade checks against the stream (`Reconciler::moved_on_stream`).
    pub matched: Vec<(RegistryDelta, Option<u64>)>,
    /// Of the unchanged, those served as when a full pass last translated them: not parsed.
    as_served: u64,
    errors: u64,
    /// What the page's full-pass translations matched or made, for the next full pass.
    served: Vec<Served>,
}

/// Translates a page and keeps the deltas whose entry differs from the stored one (one state
/// read for the page). CPU work and local reads only: it runs off the async threads.
pub(super) fn sort(
    translator: &Translator,
    store: &Store,
    object_type: ObjectType,
    page: Vec<Object>,
) -> Sorted {
    let mut sorted = Sorted::default();
    let objects = page.into_iter().map(|obj| (obj, None)).collect();
    sorted.translate(translator, store, object_type, objects);
    sorted
}

/// [`sort`] for a full pass's page as NetBox served it. An object served byte for byte as when
/// its head was made or matched ([`served`]) counts as unchanged unparsed; the others are
/// parsed and translated, and what each matched or made is kept in [`Sorted::served`].
pub(super) fn sort_served(
    translator: &Translator,
    store: &Store,
    object_type: ObjectType,
    page: ServedPage,
    before: &served::Index,
) -> Sorted {
    let mut sorted = Sorted::default();
    let mut objects = Vec::new();
    for (id, raw) in page.served() {
        let hash = before.hash(raw);
        if let Some(id) = id.filter(|id| before.holds(*id, &hash)) {
            sorted.ids.push(id);
            sorted.unchanged += 1;
            sorted.as_served += 1;
            continue;
        }
        match page.parse_one(raw, READS) {
            Ok(obj) => objects.push((obj, Some(hash))),
            Err(e) => {
                tracing::warn!(object_type = object_type.name, error = %e, "reconcile: object not read");
                sorted.ids.extend(id);
                sorted.errors += 1;
            }
        }
    }
    sorted.translate(translator, store, object_type, objects);
    sorted
}

impl Sorted {
    fn translate(
        &mut self,
        translator: &Translator,
        store: &Store,
        object_type: ObjectType,
        objects: Vec<(Object, Option<ServedHash>)>,
    ) {
        let now = Utc::now();
        let mut deltas = Vec::with_capacity(objects.len());
        for (obj, hash) in objects {
            self.ids
                .extend(obj.get("id").and_then(serde_json::Value::as_u64));
            match translator.reconcile_upsert(object_type, &obj, now) {
                Ok(delta) => deltas.push((delta, hash, is_unstamped(&obj))),
                Err(e) => {
                    tracing::warn!(object_type = object_type.name, error = %e, "reconcile: object not translated");
                    self.errors += 1;
                }
            }
        }
        match changed(store, deltas) {
            Ok(compared) => {
                self.changed = compared.changed;
                self.replaced = compared.replaced;
                self.unchanged += compared.same.len() as u64;
                self.matched = compared.same;
                self.served = compared.served;
            }
            Err((e, count)) => {
                tracing::error!(error = %e, "reconcile: state unreadable");
                self.errors += count;
            }
        }
    }
}

/// Counts a sorted page and sends its changed deltas on their way. A page that could not be
/// sorted fails the pull: its ids are unknown, so deletes would be guesses.
async fn take(
    sorted: Result<Sorted, tokio::task::JoinError>,
    report: &mut TypeReport,
    seen: &mut HashSet<u64>,
    emitter: &mut Emitter<'_>,
) -> Result<(), PullError> {
    let sorted = sorted?;
    report.fetched += sorted.ids.len() as u64;
    report.fetched_in_full += sorted.ids.len() as u64;
    seen.extend(sorted.ids);
    report.unchanged += sorted.unchanged;
    report.unchanged_as_served += sorted.as_served;
    report.errors += sorted.errors;
    for delta in sorted.changed {
        emitter.push(delta).await;
    }
    // A dry run changes no state.
    if let (Output::Publish(delivery), false) = (emitter.output, sorted.served.is_empty()) {
        delivery.remember_served(sorted.served).await;
    }
    Ok(())
}

/// A page's deltas against the stored records.
#[derive(Default)]
struct Compared {
    changed: Vec<RegistryDelta>,
    replaced: Vec<u64>,
    same: Vec<(RegistryDelta, Option<u64>)>,
    served: Vec<Served>,
}

impl Compared {
    /// That the object served as `hash` translated into the head `delta_id` (made or matched).
    fn remember(&mut self, key: &str, hash: Option<ServedHash>, delta_id: &str) {
        if let Some(hash) = hash {
            let (key, delta_id) = (key.to_string(), delta_id.to_string());
            self.served.push(Served {
                key,
                hash,
                delta_id,
            });
        }
    }
}

/// The deltas whose entry differs from the stored one, how many did not, and for those served
/// with a hash what they matched or made. An equal `delta_id` proves an equal entry (it hashes
/// key, op, revision and entry); for the rest the entry's hash is compared with the head's.
fn changed(
    store: &Store,
    deltas: Vec<(RegistryDelta, Option<ServedHash>, bool)>,
) -> Result<Compared, (StoreError, u64)> {
    let count = deltas.len() as u64;
    let keys: Vec<&str> = deltas.iter().map(|(d, _, _)| d.key.as_str()).collect();
    let heads = store.heads(&keys).map_err(|e| (e, count))?;
    let mut compared = Compared::default();
    for ((delta, hash, unstamped), head) in deltas.into_iter().zip(heads) {
        let delta = match (&head, unstamped) {
            (Some(h), true) => dated_unstamped(delta, h.revision),
            _ => delta,
        };
        match head {
            Some(h) if !h.deleted() && same_entry(&h, &delta) => {
                compared.remember(&delta.key, hash, &h.delta_id);
                compared.same.push((delta, h.seq));
            }
            _ => {
                compared.remember(&delta.key, hash, &delta.delta_id);
                if head.is_some_and(|h| !h.deleted() && h.revision < delta.revision) {
                    compared.replaced.push(delta.object_id);
                }
                compared.changed.push(delta);
            }
        }
    }
    Ok(compared)
}

/// Whether `delta` has the entry of the delta `head` stands for.
fn same_entry(head: &RecordHead, delta: &RegistryDelta) -> bool {
    if head.delta_id == delta.delta_id {
        return true;
    }
    let translated = delta.entry.as_ref().map(entry_hash);
    matches!((head.entry, translated), (Some(stored), Some(Ok(translated))) if stored == translated)
}

/// What [`Delivery`] judges an emitted delta against.
#[derive(Clone, Copy)]
enum Judged {
    ByRecord,
    ByStream,
    Gone(DateTime<Utc>),
}

/// What became of one delta.
enum Emitted {
    Out,
    /// Published over another relay's message of the same revision with another entry: which
    /// of the two NetBox shows now cannot be told (that relay may have pulled later), so the
    /// object is to be read again.
    OutOver(Trigger),
    /// Spooled (NATS away), to be published once NATS is back.
    Spooled,
    /// Delivery judged it stale or duplicate: a newer webhook won.
    Dropped,
    Failed,
}

/// Counts of emitted deltas.
#[derive(Default)]
pub(super) struct Tally {
    pub out: u64,
    pub dropped: u64,
    pub failed: u64,
    /// Objects to read again (see [`Emitted::OutOver`]).
    pub reread: Vec<Trigger>,
    /// Of the out, those spooled (NATS away): published later, perhaps after NetBox changed.
    pub spooled: u64,
}

/// Deltas on their way, at most `IN_FLIGHT` at once, each delivered on its own task: delivery
/// (serializing, publishing, awaiting the ack, recording) runs on the runtime's other threads
/// while the next page is translated, instead of every page waiting for the last ack of the one
/// before.
pub(super) struct Emitter<'a> {
    output: &'a Output,
    in_flight: FuturesUnordered<JoinHandle<Emitted>>,
    tally: Tally,
}

impl<'a> Emitter<'a> {
    pub fn new(output: &'a Output) -> Self {
        Emitter {
            output,
            in_flight: FuturesUnordered::new(),
            tally: Tally::default(),
        }
    }

    pub async fn push(&mut self, delta: RegistryDelta) {
        self.send(delta, Judged::ByRecord).await
    }

    /// [`Emitter::push`] of a delta judged against the key's last message on the stream (see
    /// [`Delivery::deliver_judged_by_stream`]).
    pub async fn push_judged_by_stream(&mut self, delta: RegistryDelta) {
        self.send(delta, Judged::ByStream).await
    }

    /// [`Emitter::push`] of the delete of a key a listing begun at `listed_from` did not return
    /// (see [`Delivery::deliver_gone`]).
    pub async fn push_gone(&mut self, delta: RegistryDelta, listed_from: DateTime<Utc>) {
        self.send(delta, Judged::Gone(listed_from)).await
    }

    async fn send(&mut self, delta: RegistryDelta, judged: Judged) {
        let delivery = match self.output {
            Output::Print => return self.count(Ok(print(&delta))),
            Output::Publish(delivery) => delivery.clone(),
        };
        while self.in_flight.len() >= IN_FLIGHT {
            if let Some(done) = self.in_flight.next().await {
                self.count(done);
            }
        }
        self.in_flight.push(tokio::spawn(async move {
            let delivered = match judged {
                Judged::ByRecord => delivery.deliver(&delta).await,
                Judged::ByStream => delivery.deliver_judged_by_stream(&delta).await,
                Judged::Gone(listed_from) => delivery.deliver_gone(&delta, listed_from).await,
            };
            match delivered {
                Ok(Delivered::Published { over: Some(other) })
                    if delta.differs_at_same_revision(&other) =>
                {
                    let object_type = ObjectType::from_kind(delta.kind).name;
                    Emitted::OutOver(Trigger::reread(object_type, delta.object_id))
                }
                Ok(Delivered::Spooled) => Emitted::Spooled,
                Ok(Delivered::Published { .. }) => Emitted::Out,
                Ok(Delivered::Dropped(_)) => Emitted::Dropped,
                Err(e) => {
                    tracing::error!(error = %e, key = %delta.key, "reconcile: delta not delivered");
                    Emitted::Failed
                }
            }
        }));
    }

    /// Waits for every delta still in flight.
    pub async fn finish(mut self) -> Tally {
        while let Some(done) = self.in_flight.next().await {
            self.count(done);
        }
        self.tally
    }

    fn count(&mut self, done: Result<Emitted, tokio::task::JoinError>) {
        match done {
            Ok(Emitted::Out) => self.tally.out += 1,
            Ok(Emitted::Spooled) => {
                self.tally.out += 1;
                self.tally.spooled += 1;
            }
            Ok(Emitted::OutOver(trigger)) => {
                self.tally.out += 1;
                self.tally.reread.push(trigger);
            }
            Ok(Emitted::Dropped) => self.tally.dropped += 1,
            Ok(Emitted::Failed) | Err(_) => self.tally.failed += 1,
        }
    }
}

/// A dry run's output: the delta as one JSON line.
fn print(delta: &RegistryDelta) -> Emitted {
    match serde_json::to_string(delta) {
        Ok(line) => {
            println!("{line}");
            Emitted::Out
        }
        Err(_) => Emitted::Failed,
    }
}

impl Reconciler {
    /// [`sort`] on a blocking thread: translation and state reads stay off the async threads.
    pub(super) fn sort_off_runtime(
        &self,
        object_type: ObjectType,
        page: Vec<Object>,
    ) -> JoinHandle<Sorted> {
        let (translator, store) = (self.translator.clone(), self.store.clone());
        tokio::task::spawn_blocking(move || sort(&translator, &store, object_type, page))
    }

    /// [`sort_served`] on a blocking thread.
    fn sort_served_off_runtime(
        &self,
        object_type: ObjectType,
        page: ServedPage,
        before: Arc<served::Index>,
    ) -> JoinHandle<Sorted> {
        let (translator, store) = (self.translator.clone(), self.store.clone());
        tokio::task::spawn_blocking(move || {
            sort_served(&translator, &store, object_type, page, &before)
        })
    }
}

/// The cascade each object of `page` calls for should its entry have changed, when its type is
/// also a parent.
pub(super) fn cascades_of(object_type: ObjectType, page: &[Object]) -> HashMap<u64, Trigger> {
    let Some(parent) = Parent::from_name(object_type.name) else {
        return HashMap::new();
    };
    let each = page.iter().filter_map(|obj| {
        let id = obj.get("id").and_then(serde_json::Value::as_u64)?;
        Some((id, parent.any_change(id, obj)))
    });
    each.collect()
}

/// Waits for the deltas `emitter` sent and counts them in `report` as upserts.
impl Pass<'_> {
    async fn count_upserts(&self, emitter: Emitter<'_>, report: &mut TypeReport) {
        let tally = emitter.finish().await;
        report.upserted += tally.out;
        report.unchanged += tally.dropped;
        report.errors += tally.failed;
        if let Err(e) = self.cascades.found(tally.reread).await {
            tracing::warn!(error = %e, "reconcile: cannot keep the objects to read again; the next full pass compares them");
        }
    }
}

/// Why a pull (of a pass's object type, or of a cascade's dependents) ended early.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("netbox.url or netbox.token is not configured")]
    NotConfigured,
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("translating a page failed: {0}")]
    Translate(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0} deltas not delivered")]
    NotDelivered(u64),
}

impl PullError {
    /// NetBox refused to show the type (403: the token lacks its view permission).
    fn refused(&self) -> bool {
        matches!(self, PullError::Api(ApiError::Forbidden { .. }))
    }
}

/// The run-wide facts one object type needs.
pub(super) struct Pass<'a> {
    pub reconciler: &'a Reconciler,
    pub output: &'a Output,
    pub version: (u32, u32),
    pub run_start: DateTime<Utc>,
    pub force: bool,
    pub kind: PassKind,
    pub cascades: &'a RunCascades,
}

impl Pass<'_> {
    pub async fn object_type(&self, object_type: ObjectType) -> TypeReport {
        let mut report = TypeReport::default();
        let mut seen = HashSet::new();
        // The stream's keys of the type are listed while NetBox is: neither waits for the other.
        let (on_stream, compared) = tokio::join!(
            self.ids_on_stream(object_type),
            self.pull_and_compare(object_type, &mut report, &mut seen)
        );
        let (known, pulled) = match compared {
            Ok(compared) => compared,
            Err(e) => {
                report.status = Some(RunStatus::Failed);
                report.message = Some(e.to_string());
                return report;
            }
        };
        telemetry::reconcile_objects(report.fetched, report.fetched_in_full);
        if let Err(failure) = pulled {
            tracing::error!(object_type = object_type.name, error = %failure, "reconcile: pull failed; no deletes");
            // NetBox refusing a type (no view permission) leaves the others complete: partial.
            report.refused = failure.refused();
            report.status = Some(match failure.refused() {
                true => RunStatus::Partial,
                false => RunStatus::Failed,
            });
            report.message = Some(failure.to_string());
            return report;
        }
        self.deletes(object_type, known, on_stream, &seen, &mut report)
            .await;
        if report.status.is_none() {
            let clean = report.errors == 0;
            report.status = Some(if clean {
                RunStatus::Succeeded
            } else {
                RunStatus::Partial
            });
        }
        report
    }

    /// The pass over one type. The type's records are read once, for the cheap pass's
    /// comparison and the delete scan (at a million keys a read of the state file costs about
    /// what the listing does), while NetBox's first pages are on their way.
    async fn pull_and_compare(
        &self,
        object_type: ObjectType,
        report: &mut TypeReport,
        seen: &mut HashSet<u64>,
    ) -> Result<(Vec<Known>, Result<(), PullError>), StoreError> {
        let Some(client) = self.reconciler.client.clone() else {
            return Ok((Vec::new(), Err(PullError::NotConfigured)));
        };
        // A cheap pass lists `netbox.concurrency` types at once, each by one cursor (run.rs).
        let listing = self.kind == PassKind::Cheap;
        let options = super::pull::PullOptions {
            version: self.version,
            page_size: self.reconciler.page_size,
            concurrency: if listing {
                1
            } else {
                self.reconciler.concurrency
            },
            listing,
        };
        let pages = super::pull::pages(client.clone(), object_type, options);
        let scan = self.reconciler.translator.key_prefix(object_type);
        let full = self.kind == PassKind::Full;
        let known = self
            .reconciler
            .store
            .read(move |s| match full {
                true => s.known_and_served_under(&scan),
                false => s.known_under(&scan),
            })
            .await?;
        let pulled = match self.kind {
            PassKind::Full => {
                let fingerprint =
                    served::Fingerprint::new(&self.reconciler.translator, object_type);
                let before = Arc::new(served::Index::of(&known, fingerprint));
                self.pull(object_type, pages, before, report, seen).await
            }
            PassKind::Cheap => {
                let stored = known.iter().filter(|k| k.live).map(|k| (k.id, k.revision));
                let stored = stored.collect();
                self.list(&client, object_type, pages, stored, report, seen)
                    .await
            }
        };
        Ok((known, pulled))
    }

    async fn pull(
        &self,
        object_type: ObjectType,
        mut pages: super::pull::Pages,
        before: Arc<served::Index>,
        report: &mut TypeReport,
        seen: &mut HashSet<u64>,
    ) -> Result<(), PullError> {
        let mut emitter = Emitter::new(self.output);
        let mut sorting = FuturesUnordered::new();
        let mut failure = None;
        while let Some(page) = pages.recv().await {
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    failure = Some(e.into());
                    break;
                }
            };
            if sorting.len() >= SORTING {
                if let Some(sorted) = sorting.next().await {
                    if let Err(e) = take(sorted, report, seen, &mut emitter).await {
                        failure = Some(e);
                        break;
                    }
                }
            }
            let sort = self
                .reconciler
                .sort_served_off_runtime(object_type, page, before.clone());
            sorting.push(sort);
        }
        while let Some(sorted) = sorting.next().await {
            if let Err(e) = take(sorted, report, seen, &mut emitter).await {
                failure.get_or_insert(e);
            }
        }
        // What was sent stays sent, and counted, even when the pull failed part way.
        self.count_upserts(emitter, report).await;
        failure.map_or(Ok(()), Err)
    }

    /// The ids of `object_type`'s keys on the stream, whichever relay published them; None
    /// when they cannot be listed (deletes then come from this relay's records only).
    async fn ids_on_stream(&self, object_type: ObjectType) -> Option<Vec<u64>> {
        let Output::Publish(delivery) = self.output else {
            return None;
        };
        let partition = self.reconciler.translator.partition();
        let listed = delivery
            .publisher()
            .ids_on_stream(partition, object_type.kind)
            .await;
        listed
            .inspect_err(|e| {
                tracing::warn!(object_type = object_type.name, error = %e,
                "reconcile: cannot list the stream's keys; deletes from this relay's records only")
            })
            .ok()
    }

    /// The keys among `ids` (on the stream) that another relay published and this one has no
    /// record of, read from the stream (their last message), so that their deletes are inferred
    /// too. Each is remembered: a later run reads it no more. A few are read one at a time, more
    /// in one pass over every key of the type. A single relay knows every key it published.
    async fn stream_only(
        &self,
        object_type: ObjectType,
        ids: Vec<u64>,
        known: &[Known],
        seen: &HashSet<u64>,
    ) -> Vec<Known> {
        let Output::Publish(delivery) = self.output else {
            return Vec::new();
        };
        let (publisher, translator) = (delivery.publisher(), &self.reconciler.translator);
        let (partition, kind) = (translator.partition(), object_type.kind);
        let known: HashSet<u64> = known.iter().map(|k| k.id).collect();
        let unknown: HashSet<u64> = ids
            .into_iter()
            .filter(|id| !known.contains(id) && !seen.contains(id))
            .collect();
        let mut found = Vec::new();
        if unknown.len() > READ_ONE_BY_ONE {
            let wanted = |d: &RegistryDelta, _| unknown.contains(&d.object_id);
            let each = |d: &RegistryDelta| found.push(Known::of(d));
            let learned = super::learn::learn(delivery, partition, Some(kind), wanted, each).await;
            if let Err(e) = learned {
                tracing::warn!(error = %e, "reconcile: cannot read the keys another relay published; deletes from this relay's records and those read");
            }
            return found;
        }
        for id in unknown {
            match publisher.last_of_key(partition, kind, id).await {
                Ok(Some(Last::Delta(latest, seq))) => {
                    if let Err(e) = delivery.remember(&latest, seq).await {
                        tracing::warn!(key = %latest.key, error = %e, "reconcile: cannot remember a key read from the stream");
                    }
                    found.push(Known::of(&latest));
                }
                // Not a delta (published by hand): no key of ours to delete.
                Ok(Some(Last::Foreign(_)) | None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "reconcile: cannot read a key's last message; deletes from this relay's records only");
                    break;
                }
            }
        }
        found
    }

    /// The cheap pass of one type: ids and revisions listed (same cursor and rules as the full
    /// pull), compared with the records, and only the new and the changed fetched in full, in
    /// batches of `BY_IDS`. Listed ids count as seen, so deletes are inferred as in a full pass.
    async fn list(
        &self,
        client: &NetboxClient,
        object_type: ObjectType,
        mut pages: super::pull::Pages,
        stored: HashMap<u64, DateTime<Utc>>,
        report: &mut TypeReport,
        seen: &mut HashSet<u64>,
    ) -> Result<(), PullError> {
        let mut emitter = Emitter::new(self.output);
        let mut stale = Vec::new();
        let mut failure = None;
        while let Some(page) = pages.recv().await {
            // Ids and revisions only: small objects, parsed whole.
            let page = match page.and_then(|page| page.parse(Reads::ALL)) {
                Ok(page) => page,
                Err(e) => {
                    failure = Some(e.into());
                    break;
                }
            };
            for obj in &page {
                let Some(id) = obj.get("id").and_then(serde_json::Value::as_u64) else {
                    continue;
                };
                seen.insert(id);
                report.fetched += 1;
                match (stored.get(&id), listed_revision(obj)) {
                    (Some(stored), Some(listed)) if listed == *stored => report.unchanged += 1,
                    // Unstamped, so unsaved since the sight its record dates (dated_unstamped).
                    (Some(stored), Some(listed)) if is_unstamped(obj) && listed <= *stored => {
                        report.unchanged += 1
                    }
                    _ => stale.push(id),
                }
            }
            while stale.len() >= BY_IDS && failure.is_none() {
                let batch: Vec<u64> = stale.drain(..BY_IDS).collect();
                let fetched = self
                    .fetch(client, object_type, &batch, report, &mut emitter)
                    .await;
                failure = fetched.err();
            }
            if failure.is_some() {
                break;
            }
        }
        if failure.is_none() && !stale.is_empty() {
            let fetched = self
                .fetch(client, object_type, &stale, report, &mut emitter)
                .await;
            failure = fetched.err();
        }
        self.count_upserts(emitter, report).await;
        failure.map_or(Ok(()), Err)
    }

    /// Fetches `ids` in full and sends on what changed.
    async fn fetch(
        &self,
        client: &NetboxClient,
        object_type: ObjectType,
        ids: &[u64],
        report: &mut TypeReport,
        emitter: &mut Emitter<'_>,
    ) -> Result<(), PullError> {
        let page = super::pull::by_ids(client, object_type, ids).await?;
        let mut candidates = cascades_of(object_type, &page);
        let mut sorted = self.reconciler.sort_off_runtime(object_type, page).await?;
        // Saved since the record, with the recorded entry: the record may be behind the stream
        // (another relay's publish), which is read for these few.
        let matched = std::mem::take(&mut sorted.matched);
        let moved = self.reconciler.moved_on_stream(matched).await;
        report.fetched_in_full += sorted.ids.len() as u64;
        report.unchanged += sorted.unchanged - moved.changed.len() as u64;
        sorted
            .replaced
            .extend(moved.changed.iter().map(|d| d.object_id));
        sorted.changed.extend(moved.changed);
        for delta in moved.unread {
            emitter.push_judged_by_stream(delta).await;
        }
        report.errors += sorted.errors;
        // A changed parent's dependents were not stamped: kept before the parent is published.
        if self.cascades.enabled() {
            let triggers = sorted.replaced.iter();
            let triggers = triggers.filter_map(|id| candidates.remove(id)).collect();
            let triggers = self
                .reconciler
                .shown_changed(triggers, &sorted.changed)
                .await;
            self.cascades.found(triggers).await?;
        }
        for delta in sorted.changed {
            emitter.push(delta).await;
        }
        Ok(())
    }

    /// Deletes for the known live keys a complete pull did not see. `heads` were read before
    /// the pull: a key created meanwhile is not among them, one deleted meanwhile is judged
    /// against its record when its delete is delivered (and dropped as stale).
    async fn deletes(
        &self,
        object_type: ObjectType,
        mut heads: Vec<Known>,
        on_stream: Option<Vec<u64>>,
        seen: &HashSet<u64>,
        report: &mut TypeReport,
    ) {
        if let Some(ids) = on_stream {
            heads.extend(self.stream_only(object_type, ids, &heads, seen).await);
        }
        // The registry's size after the pass: what was live before it, and what it saw.
        let live: HashSet<u64> = heads.iter().filter(|k| k.live).map(|k| k.id).collect();
        let known = live.len() + seen.iter().filter(|id| !live.contains(id)).count();
        drop(live);
        let gone: Vec<(u64, DateTime<Utc>)> = heads
            .iter()
            .filter(|k| k.live && k.revision < self.run_start && !seen.contains(&k.id))
            .map(|k| (k.id, k.revision))
            .collect();
        drop(heads);
        let fraction = self.reconciler.max_delete_fraction;
        let many = gone.len() as u64 > self.reconciler.delete_floor;
        if !self.force && many && gone.len() as f64 > fraction * known as f64 {
            report.withheld_deletes = gone.len() as u64;
            telemetry::deletes_withheld(report.withheld_deletes);
            report.status = Some(RunStatus::Partial);
            report.message = Some(format!(
                "{} deletes withheld: more than {:.0}% of {known} known entries (reconcile.max_delete_fraction) and more than {} (reconcile.delete_floor); force the run to apply them",
                gone.len(),
                fraction * 100.0,
                self.reconciler.delete_floor
            ));
            tracing::warn!(
                object_type = object_type.name,
                withheld = gone.len(),
                known,
                "reconcile: deletes withheld"
            );
            return;
        }
        let now = Utc::now();
        let translator = &self.reconciler.translator;
        let deltas: Vec<RegistryDelta> = gone
            .into_iter()
            .filter_map(|(id, last_seen)| {
                translator
                    .reconcile_delete(object_type, id, last_seen, now)
                    .ok()
            })
            .collect();
        let clears_unsaved =
            Parent::from_name(object_type.name).is_some_and(|p| p.cleared_unsaved());
        if clears_unsaved && self.cascades.enabled() {
            let ids: Vec<u64> = deltas.iter().map(|d| d.object_id).collect();
            let triggers = self.reconciler.hosts_of_deleted(&ids).await;
            if let Err(e) = self.cascades.found(triggers).await {
                tracing::warn!(error = %e, "reconcile: cannot keep the cascades of deleted addresses; their hosts keep them until a full pass");
            }
        }
        let mut emitter = Emitter::new(self.output);
        for delta in deltas {
            emitter.push_gone(delta, self.run_start).await;
        }
        let tally = emitter.finish().await;
        report.deleted += tally.out;
        report.unchanged += tally.dropped;
        report.errors += tally.failed;
    }
}
