//! `netbox-relay held`: the webhooks held for NetBox's main to confirm, by type; `release`
//! publishes them as sent (through the spool, at the relay's next start), `drop` forgets them
//! (the next reconcile publishes what main has of the types the token may read). It opens the
//! state file itself, so the relay must be stopped (redb locks the file).

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::Utc;

use crate::cli::{HeldAction, HeldPick};
use crate::config::Config;
use crate::delta::RegistryDelta;
use crate::netbox::webhook::{self, Parsed};
use crate::state::{Store, StoreError};
use crate::translate::{Outcome, Translator, READS};

/// Held webhooks listed one by one before "... and N more".
const LIST: usize = 100;

/// A held webhook as the relay would publish it unconfirmed.
struct Row {
    id: u64,
    object_type: &'static str,
    line: String,
    delta: Option<RegistryDelta>,
}

/// Runs the command; answers the lines to print.
pub fn run(
    config: &Config,
    translator: &Translator,
    action: Option<&HeldAction>,
) -> anyhow::Result<Vec<String>> {
    let store = Store::open(&config.state.path).map_err(|e| match e {
        StoreError::InUse { path } => anyhow::anyhow!(
            "{} is held by a running `netbox-relay serve`: stop it first (`/readyz` shows what waits while it runs)",
            path.display()
        ),
        e => e.into(),
    })?;
    let rows: Vec<Row> = store
        .held_all()
        .context("reading the held webhooks")?
        .into_iter()
        .map(|(id, body)| row(translator, id, &body))
        .collect();
    let Some(action) = action else {
        return Ok(list(&rows));
    };
    let (pick, releasing) = match action {
        HeldAction::Release(pick) => (pick, true),
        HeldAction::Drop(pick) => (pick, false),
    };
    let (mut release, mut drop) = (Vec::new(), Vec::new());
    for row in rows.into_iter().filter(|r| picks(pick, r)) {
        match (releasing, row.delta) {
            (true, Some(delta)) => release.push((row.id, delta)),
            _ => drop.push(row.id),
        }
    }
    let unheld = store.unhold(release, drop)?;
    let mut lines = Vec::new();
    if releasing {
        lines.push(format!(
            "{} held webhook(s) released: their deltas are in the spool, published as sent when `netbox-relay serve` starts",
            unheld.spooled
        ));
        if unheld.older > 0 {
            lines.push(format!(
                "{} released webhook(s) not spooled: the registry has a newer delta of their object",
                unheld.older
            ));
        }
    }
    if unheld.dropped > 0 || !releasing {
        lines.push(format!(
            "{} held webhook(s) dropped; the next reconcile publishes what NetBox's main has",
            unheld.dropped
        ));
    }
    Ok(lines)
}

fn picks(pick: &HeldPick, row: &Row) -> bool {
    pick.all || pick.object_types.iter().any(|t| t == row.object_type)
}

fn row(translator: &Translator, id: u64, body: &[u8]) -> Row {
    let unreadable = |why: String| Row {
        id,
        object_type: "(unreadable)",
        line: format!("  {id:>8}  {why}"),
        delta: None,
    };
    let event = match webhook::parse(body, READS) {
        Ok(Parsed::Change(event)) => event,
        Ok(_) => return unreadable("not a change of a followed object".into()),
        Err(e) => return unreadable(e.to_string()),
    };
    let when = event
        .timestamp
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".into());
    let delta = match translator.webhook(&event, Utc::now()) {
        Ok(Outcome::Publish(delta)) => Some(*delta),
        _ => None,
    };
    Row {
        id,
        object_type: event.object_type.name,
        line: format!(
            "  {id:>8}  {} {} {}  {when}",
            event.object_type.name,
            event.object_id,
            event.event.as_str()
        ),
        delta,
    }
}

fn list(rows: &[Row]) -> Vec<String> {
    let mut by_type: BTreeMap<&str, usize> = BTreeMap::new();
    for row in rows {
        *by_type.entry(row.object_type).or_default() += 1;
    }
    let mut lines = vec![format!(
        "held: {} webhook(s) waiting for NetBox's main to confirm them",
        rows.len()
    )];
    for (object_type, count) in &by_type {
        lines.push(format!("  {object_type}: {count}"));
    }
    lines.extend(rows.iter().take(LIST).map(|r| r.line.clone()));
    if rows.len() > LIST {
        lines.push(format!("  ... and {} more", rows.len() - LIST));
    }
    lines
}
