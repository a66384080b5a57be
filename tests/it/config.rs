//! Configuration layering (defaults < TOML < environment < flags) and validation.
// figment's Jail closures return figment's own (large) error type; that is its API, not ours.
#![allow(clippy::result_large_err)]

use figment::Jail;
use netbox_relay::config::{Config, Overrides};
use secrecy::ExposeSecret;

fn load(jail: &Jail, overrides: &Overrides) -> Result<Config, String> {
    let file = jail.directory().join("relay.toml");
    let file = file.exists().then_some(file);
    Config::load(file.as_deref(), overrides).map_err(|e| e.to_string())
}

#[test]
fn defaults_then_file_then_environment_then_flags() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "relay.toml",
            r#"
            [server]
            listen = "127.0.0.1:9001"
            [webhook]
            secrets = ["from-file"]
            max_body_bytes = 1000
            [nats]
            duplicate_window = "5m"
            [registry]
            partition = "lab"
            "#,
        )?;
        jail.set_env("NETBOX_RELAY_WEBHOOK__MAX_BODY_BYTES", "2000");
        jail.set_env("NETBOX_RELAY_NATS__URL", "nats://10.1.2.3:4222");
        jail.set_env("NETBOX_RELAY_SERVER__LISTEN", "127.0.0.1:9002");
        jail.set_env("NETBOX_RELAY_RECONCILE__INTERVAL", "0");
        jail.set_env("NETBOX_RELAY_NETBOX__URL", "");
        jail.set_env("NETBOX_RELAY_API__ADMIN_TOKEN", "");
        let config = load(jail, &Overrides::default()).unwrap();
        assert!(
            config.reconcile.interval.is_zero(),
            "a bare 0 disables the schedule"
        );
        assert_eq!(config.webhook.max_body_bytes, 2000, "env beats file");
        assert_eq!(config.nats.url, "nats://10.1.2.3:4222");
        assert_eq!(config.registry.partition, "lab", "file beats defaults");
        assert_eq!(config.nats.duplicate_window.as_secs(), 300);
        assert_eq!(
            config.nats.stream, "NETBOX_REGISTRY",
            "defaults fill the rest"
        );
        assert_eq!(config.server.listen.port(), 9002);
        let flags = Overrides {
            listen: Some("127.0.0.1:9003".parse().unwrap()),
            sd_listen: Some("127.0.0.1:9004".parse().unwrap()),
            log_level: Some("debug".into()),
            no_webhooks: false,
        };
        let config = load(jail, &flags).unwrap();
        assert_eq!(config.server.listen.port(), 9003, "flags beat env");
        assert_eq!(config.sd.listen.port(), 9004);
        assert_eq!(config.log.level, "debug");
        Ok(())
    });
}

#[test]
fn a_single_secret_or_a_list_or_a_file_of_secrets() {
    Jail::expect_with(|jail| {
        jail.set_env("NETBOX_RELAY_WEBHOOK__SECRETS", "only-one");
        let config = load(jail, &Overrides::default()).unwrap();
        assert_eq!(config.webhook.secrets.0.len(), 1);
        assert_eq!(config.webhook.secrets.0[0].expose_secret(), "only-one");

        jail.set_env("NETBOX_RELAY_WEBHOOK__SECRETS", "[old, new]");
        let config = load(jail, &Overrides::default()).unwrap();
        assert_eq!(config.webhook.secrets.0.len(), 2);

        jail.create_file("secrets.txt", "rotated-1\n\nrotated-2\n")?;
        jail.set_env("NETBOX_RELAY_WEBHOOK__SECRETS", "[]");
        jail.set_env(
            "NETBOX_RELAY_WEBHOOK__SECRET_FILE",
            jail.directory().join("secrets.txt").display(),
        );
        let config = load(jail, &Overrides::default()).unwrap();
        let secrets: Vec<&str> = config
            .webhook
            .secrets
            .0
            .iter()
            .map(|s| s.expose_secret())
            .collect();
        assert_eq!(secrets, ["rotated-1", "rotated-2"]);
        Ok(())
    });
}

#[test]
fn invalid_values_stop_the_start_naming_the_key() {
    let cases = [
        (
            "NETBOX_RELAY_REGISTRY__PARTITION",
            "a.b",
            "registry.partition",
        ),
        (
            "NETBOX_RELAY_REGISTRY__OBJECT_TYPES",
            "[dcim.device, dcim.cable]",
            "registry.object_types",
        ),
        ("NETBOX_RELAY_NATS__STREAM", "has space", "nats.stream"),
        (
            "NETBOX_RELAY_NATS__SUBJECT_PREFIX",
            "netbox.>",
            "nats.subject_prefix",
        ),
        (
            "NETBOX_RELAY_WEBHOOK__MAX_BODY_BYTES",
            "lots",
            "max_body_bytes",
        ),
        (
            "NETBOX_RELAY_NATS__DUPLICATE_WINDOW",
            "soon",
            "duplicate_window",
        ),
        (
            "NETBOX_RELAY_RECONCILE__MAX_DELETE_FRACTION",
            "2",
            "reconcile.max_delete_fraction",
        ),
        ("NETBOX_RELAY_WEBHOOK__SURPRISE", "1", "surprise"),
        (
            "NETBOX_RELAY_REGISTRY__MAX_EXPANDED_HOSTS",
            "16777216",
            "registry.max_expanded_hosts",
        ),
        (
            "NETBOX_RELAY_SERVER__HEADER_TIMEOUT",
            "0",
            "server.header_timeout",
        ),
        (
            "NETBOX_RELAY_SERVER__MAX_CONNECTIONS",
            "2",
            "server.max_connections",
        ),
        (
            "NETBOX_RELAY_WEBHOOK__MAX_CLOCK_SKEW",
            "later",
            "max_clock_skew",
        ),
        ("NETBOX_RELAY_NETBOX__PAGE_SIZE", "0", "netbox.page_size"),
        (
            "NETBOX_RELAY_NETBOX__CONCURRENCY",
            "0",
            "netbox.concurrency",
        ),
        ("NETBOX_RELAY_WEBHOOK__CONFIRM", "sometimes", "confirm"),
        (
            "NETBOX_RELAY_WEBHOOK__CONFIRM_TIMEOUT",
            "0",
            "webhook.confirm_timeout",
        ),
    ];
    for (var, value, key) in cases {
        Jail::expect_with(|jail| {
            jail.set_env("NETBOX_RELAY_WEBHOOK__SECRETS", "s3cret-value");
            jail.set_env(var, value);
            let error = load(jail, &Overrides::default()).unwrap_err();
            assert!(error.to_lowercase().contains(key), "{var}={value}: {error}");
            Ok(())
        });
    }
}

#[test]
fn a_secret_is_required_unless_signatures_are_switched_off() {
    Jail::expect_with(|jail| {
        let error = load(jail, &Overrides::default()).unwrap_err();
        assert!(error.contains("webhook.secrets"), "{error}");
        // Commands that verify no webhook (tail, check, spool, reconcile) need no secret.
        let no_webhooks = Overrides {
            no_webhooks: true,
            ..Overrides::default()
        };
        assert!(load(jail, &no_webhooks).is_ok());
        jail.set_env("NETBOX_RELAY_WEBHOOK__REQUIRE_SIGNATURE", "false");
        assert!(load(jail, &Overrides::default()).is_ok());
        Ok(())
    });
}

#[test]
fn secrets_never_show_in_debug_output_or_errors() {
    Jail::expect_with(|jail| {
        jail.set_env("NETBOX_RELAY_WEBHOOK__SECRETS", "[hook-secret-1]");
        jail.set_env("NETBOX_RELAY_NETBOX__TOKEN", "nbt_token-secret-2");
        jail.set_env("NETBOX_RELAY_NATS__PASSWORD", "nats-secret-3");
        jail.set_env("NETBOX_RELAY_API__ADMIN_TOKEN", "admin-secret-4");
        let config = load(jail, &Overrides::default()).unwrap();
        let debug = format!("{config:?}");
        jail.set_env("NETBOX_RELAY_REGISTRY__PARTITION", "bad.partition");
        let error = load(jail, &Overrides::default()).unwrap_err();
        for secret in [
            "hook-secret-1",
            "token-secret-2",
            "nats-secret-3",
            "admin-secret-4",
        ] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
            assert!(!error.contains(secret), "{secret} in {error}");
        }
        Ok(())
    });
}

#[test]
fn a_missing_config_file_is_named() {
    let error = Config::load(
        Some("/nonexistent/relay.toml".as_ref()),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/relay.toml"),
        "{error}"
    );
}

const EXAMPLE: &str = include_str!("../../deploy/netbox-relay.example.toml");

#[test]
fn the_example_configuration_in_deploy_loads_and_validates() {
    Jail::expect_with(|jail| {
        // The example reads its secrets from files, as a deployment mounts them.
        jail.create_file("webhook-secret", "example-webhook-secret\n")?;
        jail.create_file("netbox-token", "0123456789abcdef0123456789abcdef01234567\n")?;
        let text = EXAMPLE
            .replace("/etc/netbox-relay/webhook-secret", "webhook-secret")
            .replace("/etc/netbox-relay/netbox-token", "netbox-token");
        jail.create_file("relay.toml", &text)?;
        let config = load(jail, &Overrides::default()).unwrap();
        assert_eq!(config.server.listen.to_string(), "0.0.0.0:8090");
        assert_eq!(config.webhook.secrets.0.len(), 1);
        assert!(config.netbox.token.is_some());
        assert_eq!(config.object_types().unwrap().len(), 12);
        assert_eq!(
            config.state.path.to_str(),
            Some("/var/lib/netbox-relay/netbox-relay.redb")
        );
        Ok(())
    });
}

#[test]
fn the_example_configuration_mentions_every_key() {
    let keys = [
        "server.listen",
        "server.shutdown_timeout",
        "server.header_timeout",
        "server.request_timeout",
        "server.idle_timeout",
        "server.max_connections",
        "webhook.secrets",
        "webhook.secret_file",
        "webhook.require_signature",
        "webhook.max_body_bytes",
        "webhook.max_clock_skew",
        "netbox.url",
        "netbox.token",
        "netbox.token_file",
        "netbox.page_size",
        "netbox.concurrency",
        "netbox.timeout",
        "netbox.insecure_skip_verify",
        "netbox.ca_file",
        "nats.url",
        "nats.creds_file",
        "nats.user",
        "nats.password",
        "nats.token",
        "nats.tls_ca_file",
        "nats.stream",
        "nats.subject_prefix",
        "nats.duplicate_window",
        "nats.replicas",
        "nats.history_per_key",
        "nats.tombstone_ttl",
        "nats.kv_bucket",
        "nats.ack_timeout",
        "registry.partition",
        "registry.object_types",
        "registry.expand_subnets",
        "registry.max_expanded_hosts",
        "reconcile.interval",
        "reconcile.on_start",
        "reconcile.max_delete_fraction",
        "reconcile.lease_ttl",
        "cascade.enabled",
        "cascade.debounce",
        "state.path",
        "state.cache_bytes",
        "sd.listen",
        "sd.token",
        "spool.max_bytes",
        "api.admin_token",
        "log.format",
        "log.level",
    ];
    for key in keys {
        let (section, name) = key.split_once('.').unwrap();
        let header = format!("[{section}]");
        let body = EXAMPLE
            .split_once(&header)
            .unwrap_or_else(|| panic!("no {header}"))
            .1
            .split("\n[")
            .next()
            .unwrap();
        let present = body.lines().any(|line| {
            let line = line.trim_start().trim_start_matches('#').trim_start();
            line.strip_prefix(name)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        });
        assert!(present, "{key} is not in deploy/netbox-relay.example.toml");
    }
}
