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
    connect_quickly(cfg, connect_options(cfg).await?).await
}

/// [`connect_once`], telling `on_connection` each time the connection is lost (false) and back
/// (true), for a command left running (`tail`).
pub async fn connect_following(
    cfg: &NatsConfig,
    on_connection: impl Fn(bool) + Send + Sync + 'static,
) -> Result<Client, PublishError> {
    let on_connection = Arc::new(on_connection);
    let options = connect_options(cfg).await?.event_callback(move |event| {
        let on_connection = on_connection.clone();
        async move {
            match event {
                Event::Connected => on_connection(true),
                Event::Disconnected => on_connection(false),
                _ => {}
            }
        }
    });
    connect_quickly(cfg, options).await
}

/// Connects with `options`, failing within 5 s when NATS is away.
async fn connect_quickly(
    cfg: &NatsConfig,
    options: ConnectOptions,
) -> Result<Client, PublishError> {
    options
        .connection_timeout(Duration::from_secs(5))
        .connect(servers(&cfg.url))
        .await
        .map_err(|e| connect_failed(&cfg.url, e))
}

/// A connection error naming the servers tried (without credentials).
pub(super) fn connect_failed(url: &str, e: impl std::fmt::Display) -> PublishError {
    PublishError::Connect(format!("{}: {e}", shown(url)))
}

/// `nats.url` as it may be shown: `user:password@` left out of every server.
pub fn shown(url: &str) -> String {
    let without_user = |server: &str| match (server.split_once("://"), server.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://{}", &server[at + 1..]),
        (None, Some(at)) => server[at + 1..].to_string(),
        _ => server.to_string(),
    };
    servers(url)
        .into_iter()
        .map(without_user)
        .collect::<Vec<_>>()
        .join(",")
}

/// A long-lived connection for reading the stream (`netbox-relay sd`): retried until NATS
/// answers, reconnecting as the relay's own does.
pub async fn connect_reader(cfg: &NatsConfig) -> Result<Client, PublishError> {
    reporting_events(connect_options(cfg).await?, &cfg.url, None)
        .retry_on_initial_connect()
        .connect(servers(&cfg.url))
        .await
        .map_err(|e| connect_failed(&cfg.url, e))
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
    url: &str,
    connected: Option<Arc<watch::Sender<bool>>>,
) -> ConnectOptions {
    let servers: Arc<str> = shown(url).into();
    options.event_callback(move |event| {
        let (connected, servers) = (connected.clone(), servers.clone());
        async move { report(event, &servers, connected.as_deref()) }
    })
}

fn report(event: Event, servers: &str, connected: Option<&watch::Sender<bool>>) {
    let tell = |up: bool| {
        if let Some(connected) = connected {
            connected.send_replace(up);
        }
    };
    match event {
            Event::Connected => {
                tell(true);
                tracing::info!(servers, "connected to NATS")
            }
            Event::Disconnected => {
                tell(false);
                tracing::warn!(servers, "disconnected from NATS")
            }
            // An operator acts on these: refused credentials, a slow consumer, a server limit.
            Event::ServerError(async_nats::ServerError::AuthorizationViolation) => tracing::error!(
                servers, "NATS refused the relay's credentials (nats.user and nats.password, nats.token or nats.creds_file); deltas wait in the spool"
            ),
            Event::ServerError(e) => tracing::warn!(servers, error = %e, "NATS server error"),
            Event::ClientError(e) => tracing::warn!(servers, error = %e, "NATS client error"),
            other => tracing::debug!(event = %other, "NATS client event"),
        }
}

#[cfg(test)]
mod tests {
    #[test]
    fn servers_are_shown_without_credentials() {
        let url = "nats://relay:s3cret@nats-1:4222, tls://n2:4222,user:pw@n3:4222";
        let shown = super::shown(url);
        assert_eq!(shown, "nats://nats-1:4222,tls://n2:4222,n3:4222");
        assert!(!shown.contains("s3cret"));
    }
}
