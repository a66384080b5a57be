//! A state file whose disk fills up: webhooks get 503 (nothing published), readiness says why,
//! and once space is freed the relay takes webhooks again without a restart; nothing is published
//! twice and the store agrees with the stream. The state file lives on a real tmpfs of 8 MiB.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::durability::device_update;
use crate::helpers::{stream_messages, test_config, wait_for_published, NatsServer, TestRelay};

/// A tmpfs mounted for the test's lifetime (the test runs as root, as CI does).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a filler file until the disk is full.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while file.write_all(&chunk).is_ok() {}
        file.sync_all().ok();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status()
            .ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_and_the_relay_recovers_without_a_restart() {
    let disk = SmallDisk::mount("8m");
    let nats = NatsServer::start();
    let mut config = test_config(&nats);
    config.state.path = disk.path().join("netbox-relay.redb");
    // A short de-duplication window: a delta published twice would show on the stream.
    config.nats.duplicate_window = Duration::from_secs(1);
    let relay = TestRelay::start(config).await;
    assert_eq!(relay.post_signed(&device_update(1, 1)).await.0, 202);

    let filler = disk.fill();
    let (mut accepted, mut refused) = (vec![1u64], Vec::new());
    for id in 2..=400u64 {
        let (status, body) = relay.post_signed(&device_update(id, 1)).await;
        match status {
            202 => accepted.push(id),
            503 => {
                assert_eq!(body["error"], "unavailable", "{body}");
                refused.push(id);
                if refused.len() == 3 {
                    break;
                }
            }
            other => panic!("unexpected {other}: {body}"),
        }
        // Idle moments let the commit thread flush, as it does between webhooks in production.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(refused.len(), 3, "the full disk was never noticed");
    let (status, ready) = relay.get("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready["reason"].as_str().unwrap().contains("state file"),
        "{ready}"
    );

    // Space comes back: no restart, webhooks are taken again.
    std::fs::remove_file(filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while relay.get("/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "the relay did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(relay.post_signed(&device_update(1000, 1)).await.0, 202);
    accepted.push(1000);
    // What the store kept agrees with the stream: an older change of a published key is stale.
    let last = accepted[accepted.len() - 2];
    let (status, body) = relay.post_signed(&device_update(last, 0)).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ignored")),
        "{body}"
    );

    wait_for_published(&nats.url(), accepted.len() as u64, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored = stream_messages(&nats.url()).await;
    let ids: Vec<u64> = stored
        .iter()
        .map(|m| m.delta["object_id"].as_u64().unwrap())
        .collect();
    let unique: HashSet<&u64> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "a delta was published twice: {ids:?}"
    );
    assert_eq!(
        ids, accepted,
        "exactly the 202s are on the stream, in order"
    );
    relay.relay.stop().await.unwrap();
}
