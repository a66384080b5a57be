//! Connecting to NATS: the configured servers and credentials, the relay's long-lived
//! connection (retried until NATS answers, its events logged and followed by the stream keeper),
//! and the one-shot connections of commands.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{jetstream, Client, ConnectOptions, Event};
use secrecy::ExposeSecret;
use tokio::sync::watch;

use super::jetstream::PublishError;
use super::stream::stream_not_found;
use crate::config::NatsConfig;

/// What `check` found on NATS: the stream's subjects, if the stream exists.
#[derive(Debug)]
pub struct Probe {
    pub server_version: String,
    pub stream_subjects: Option<Vec<String>>,
}

/// A connection with the configured credentials that fails at once when NATS is away, for
/// commands (`check`, `tail`) rather than the long-running relay.
pub async fn connect_once(cfg: &NatsConfig) -> Result<Client, PublishError> {
    connect_options(cfg)
        .await?
        .connection_timeout(Duration::from_secs(5))
        .connect(servers(&cfg.url))
        .await
        .map_err(|e| PublishError::Connect(e.to_string()))
}

/// A long-lived connection for reading the stream (`netbox-relay sd`): retried until NATS
/// answers, reconnecting as the relay's own does.
pub async fn connect_reader(cfg: &NatsConfig) -> Result<Client, PublishError> {
    reporting_events(connect_options(cfg).await?, None)
        .retry_on_initial_connect()
        .connect(servers(&cfg.url))
        .await
        .map_err(|e| PublishError::Connect(e.to_string()))
}

/// Connects once (no retries), and looks up the configured stream.
pub async fn probe(cfg: &NatsConfig) -> Result<Probe, PublishError> {
    let client = connect_once(cfg).await?;
    let server_version = client.server_info().version;
    let js = jetstream::new(client.clone());
    let stream_subjects = match js.get_stream(&cfg.stream).await {
        Ok(mut stream) => {
            let info = stream.info().await.map_err(|e| PublishError::Stream {
                stream: cfg.stream.clone(),
                message: e.to_string(),
            })?;
            Some(info.config.subjects.clone())
        }
        Err(e) if stream_not_found(e.kind()) => None,
        Err(e) => {
            return Err(PublishError::Stream {
                stream: cfg.stream.clone(),
                message: e.to_string(),
            })
        }
    };
    client.drain().await.ok();
    Ok(Probe {
        server_version,
        stream_subjects,
    })
}

/// `nats.url`: one server, or several separated by commas (a cluster's nodes; the client also
/// learns the others from the server it reaches).
pub(super) fn servers(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

pub(super) async fn connect_options(cfg: &NatsConfig) -> Result<ConnectOptions, PublishError> {
    let mut options = match &cfg.creds_file {
        Some(path) => ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| {
                PublishError::Connect(format!("nats.creds_file {}: {e}", path.display()))
            })?,
        None => ConnectOptions::new(),
    };
    if let (Some(user), Some(password)) = (&cfg.user, &cfg.password) {
        options = options.user_and_password(user.clone(), password.expose_secret().to_string());
    }
    if let Some(token) = &cfg.token {
        options = options.token(token.expose_secret().to_string());
    }
    if let Some(ca) = &cfg.tls_ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    Ok(options.name("netbox-relay"))
}

/// The relay reports its NATS connection coming and going (and tells `connected`, when given);
/// commands (`check`, `tail`) do not.
pub(super) fn reporting_events(
    options: ConnectOptions,
    connected: Option<Arc<watch::Sender<bool>>>,
) -> ConnectOptions {
    options.event_callback(move |event| {
        let connected = connected.clone();
        async move { report(event, connected.as_deref()) }
    })
}

fn report(event: Event, connected: Option<&watch::Sender<bool>>) {
    let tell = |up: bool| {
        if let Some(connected) = connected {
            connected.send_replace(up);
        }
    };
    match event {
            Event::Connected => {
                tell(true);
                tracing::info!("connected to NATS")
            }
            Event::Disconnected => {
                tell(false);
                tracing::warn!("disconnected from NATS")
            }
            // An operator acts on these: refused credentials, a slow consumer, a server limit.
            Event::ServerError(async_nats::ServerError::AuthorizationViolation) => tracing::error!(
                "NATS refused the relay's credentials (nats.user and nats.password, nats.token or nats.creds_file); deltas wait in the spool"
            ),
            Event::ServerError(e) => tracing::warn!(error = %e, "NATS server error"),
            Event::ClientError(e) => tracing::warn!(error = %e, "NATS client error"),
            other => tracing::debug!(event = %other, "NATS client event"),
        }
}
