//! `netbox-relay spool`: what waits in the spool, and the dead letters, with retry and drop.
//! It opens the state file itself, so the relay must be stopped (redb locks the file).

use anyhow::Context;

use crate::cli::{Pick, SpoolAction};
use crate::config::Config;
use crate::state::{key_and_id, Selection, Store, StoreError};

/// Pending rows listed before "... and N more".
const LIST: usize = 100;

/// Runs the command; answers the lines to print.
pub fn run(config: &Config, action: Option<&SpoolAction>) -> anyhow::Result<Vec<String>> {
    let store = Store::open(&config.state.path).map_err(|e| match e {
        StoreError::InUse { path } => anyhow::anyhow!(
            "{} is held by a running `netbox-relay serve`: stop it first (it drains the spool by itself; dead letters wait for this command)",
            path.display()
        ),
        e => e.into(),
    })?;
    match action {
        None => list(&store),
        Some(SpoolAction::Retry(pick)) => {
            let retried = store.retry_dead(&selection(pick))?;
            let mut lines = vec![format!(
                "{} dead letter(s) back in the spool; `netbox-relay serve` publishes them",
                retried.requeued.len()
            )];
            for (seq, why) in retried.kept {
                lines.push(format!("kept dead letter {seq}: {why}"));
            }
            Ok(lines)
        }
        Some(SpoolAction::Drop(pick)) => {
            let dropped = store.drop_dead(&selection(pick))?;
            Ok(vec![format!("{dropped} dead letter(s) dropped")])
        }
    }
}

fn selection(pick: &Pick) -> Selection {
    match pick.all {
        true => Selection::All,
        false => Selection::Ids(pick.delta_ids.clone()),
    }
}

fn list(store: &Store) -> anyhow::Result<Vec<String>> {
    let stats = store.spool_stats().context("reading the spool")?;
    let mut lines = vec![format!(
        "spool: {} delta(s) waiting for NATS, {} bytes",
        stats.depth, stats.bytes
    )];
    for row in store.spool_head(LIST)? {
        let (key, id) = names(&row.bytes);
        lines.push(format!("  pending {:>8}  {id}  {key}", row.seq));
    }
    if stats.depth > LIST as u64 {
        lines.push(format!("  ... and {} more", stats.depth - LIST as u64));
    }
    let letters = store.dead_letters()?;
    lines.push(format!("dead letters: {}", letters.len()));
    for letter in &letters {
        let (key, id) = names(&letter.bytes);
        let when = letter
            .dead_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        lines.push(format!(
            "  dead {:>8}  {id}  {key}  {when}  {}",
            letter.seq,
            letter.reason.escape_debug()
        ));
    }
    Ok(lines)
}

fn names(json: &[u8]) -> (String, String) {
    key_and_id(json).unwrap_or_else(|| {
        let unreadable = "(unreadable)".to_string();
        (unreadable.clone(), unreadable)
    })
}
