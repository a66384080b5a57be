//! `netbox-relay audit`: the registry on the stream against NetBox's main, read from the recorded
//! NetBox 4.6 stand-in; every kind of difference reported by key, nothing changed.

use std::process::Command;

use serde_json::{json, Value};

use crate::fake_netbox::{device_like, FakeNetbox, TOKEN};
use crate::helpers::{published_count, NatsServer, TestRelay};
use crate::reconcile::{config, fake_with_recorded, reconcile};

/// `netbox-relay audit <args>` against `fake` and `nats`: exit code, stdout, stderr.
fn audit(nats: &NatsServer, fake: &FakeNetbox, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_netbox-relay"))
        .arg("audit")
        .args(args)
        .env("NETBOX_RELAY_NETBOX__URL", &fake.url)
        .env("NETBOX_RELAY_NETBOX__TOKEN", TOKEN)
        .env("NETBOX_RELAY_NATS__URL", nats.url())
        .env(
            "NETBOX_RELAY_STATE__PATH",
            nats.scratch().join("audit-never.redb"),
        )
        .env("NETBOX_RELAY_LOG__LEVEL", "warn")
        .output()
        .expect("run netbox-relay");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn audit_json(nats: &NatsServer, fake: &FakeNetbox) -> (i32, Value) {
    let (code, out, err) = audit(nats, fake, &["--json"]);
    let report = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
    (code, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_after_a_full_reconcile_is_equal_and_names_each_difference_after_changes() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    let relay = TestRelay::start(config(&nats, &fake, 1000)).await;
    let report = reconcile(&relay).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    let published = published_count(&nats.url()).await;

    let (code, report) = audit_json(&nats, &fake);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["equal"], true, "{report}");
    let objects = fake.with(|s| s.objects.values().map(|o| o.len()).sum::<usize>());
    assert!(report["registry_keys"].as_u64().unwrap() > 10, "{report}");
    assert_eq!(
        report["registry_keys"], report["netbox_objects"],
        "{report}"
    );
    assert!(report["netbox_objects"].as_u64().unwrap() <= objects as u64);

    // Changes NetBox made while no webhook came: one renamed, one gone, one new.
    fake.with(|s| {
        let devices = s.objects.get_mut("dcim/devices").unwrap();
        let renamed = devices.get_mut(&4).unwrap();
        renamed["name"] = json!("renamed-without-webhook");
        renamed["last_updated"] = json!("2026-11-22T12:00:00.000000Z");
        devices.remove(&5);
        let added = device_like(&devices[&6], 99);
        devices.insert(99, added);
    });
    let (code, report) = audit_json(&nats, &fake);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["equal"], false);
    assert_eq!(
        report["counts"],
        json!({"missing": 1, "not_in_netbox": 1, "differs": 1}),
        "{report}"
    );
    let differences = report["differences"].as_array().unwrap();
    let find = |what: &str| {
        differences
            .iter()
            .find(|d| d["what"] == what)
            .unwrap_or_else(|| panic!("{what}: {report}"))
    };
    assert_eq!(find("missing")["key"], "netbox/default/dcim.device/99");
    assert_eq!(find("not_in_netbox")["key"], "netbox/default/dcim.device/5");
    let differs = find("differs");
    assert_eq!(differs["key"], "netbox/default/dcim.device/4");
    let name = differs["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == "name")
        .unwrap_or_else(|| panic!("{differs}"));
    assert_eq!(name["netbox"], "renamed-without-webhook");
    assert_ne!(name["registry"], name["netbox"]);

    // The text report says the same, a line per key.
    let (code, text, _) = audit(&nats, &fake, &[]);
    assert_eq!(code, 1);
    assert!(text.contains("3 difference(s)"), "{text}");
    assert!(
        text.contains("differs         netbox/default/dcim.device/4"),
        "{text}"
    );
    assert!(text.contains("name: registry"), "{text}");

    // The audit changed nothing; a default run repairs all three and the audit agrees.
    assert_eq!(published_count(&nats.url()).await, published);
    let report = reconcile(&relay).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    let (code, report) = audit_json(&nats, &fake);
    assert_eq!((code, &report["equal"]), (0, &json!(true)), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_of_one_type_and_a_foreign_message_on_a_key() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    let relay = TestRelay::start(config(&nats, &fake, 1000)).await;
    reconcile(&relay).await;
    // Another tool publishes on a key's subject.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.publish("netbox.registry.default.device.4", "not a delta".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let (code, report) = audit_json(&nats, &fake);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["counts"]["foreign"], 1, "{report}");
    // Only sites: equal (the foreign message is on a device's key).
    let (code, out, err) = audit(&nats, &fake, &["--object-type", "dcim.site", "--json"]);
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert_eq!((code, &report["equal"]), (0, &json!(true)), "{report}");
    let sites = fake.count("dcim/sites") as u64;
    assert_eq!(report["netbox_objects"], sites, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_that_cannot_read_a_type_or_has_no_netbox_exits_2_naming_the_setting() {
    let nats = NatsServer::start();
    let fake = fake_with_recorded("4.6.8").await;
    let (code, _, err) = audit(&nats, &fake, &[]);
    assert_eq!(code, 2, "no stream yet: {err}");
    assert!(err.contains("nats.stream"), "{err}");
    let _relay = TestRelay::start(config(&nats, &fake, 1000)).await;
    fake.with(|s| s.denied.push("ipam/services".into()));
    let (code, out, err) = audit(&nats, &fake, &[]);
    assert_eq!(code, 2, "{out} {err}");
    assert!(err.contains("ipam.view_service"), "{err}");

    let output = Command::new(env!("CARGO_BIN_EXE_netbox-relay"))
        .arg("audit")
        .env("NETBOX_RELAY_NATS__URL", nats.url())
        .env_remove("NETBOX_RELAY_NETBOX__URL")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("netbox.url"), "{err}");
    assert!(!err.contains(TOKEN));
}
