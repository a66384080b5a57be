//! The NetBox REST API, as reconciliation reads it: token auth (v1 `Token <key>`, v2
//! `Bearer nbt_...`, chosen by the token's form), keyset pages, retries that honour `Retry-After`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde_json::{Map, Value};

use super::wire::{self, Reads, WireError};
use super::ObjectType;
use crate::backoff::Backoff;
use crate::config::NetboxConfig;
use crate::telemetry;

/// Why a NetBox request failed. Never carries the token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("netbox.url or netbox.token is not configured")]
    NotConfigured,
    #[error("{key}: {message}")]
    Config { key: &'static str, message: String },
    #[error("NetBox refused {what}: {detail} ({hint})")]
    Forbidden {
        what: String,
        detail: String,
        hint: String,
    },
    #[error("NetBox answered {status} for {what}: {message}")]
    Status {
        what: String,
        status: u16,
        message: String,
    },
    #[error("NetBox did not answer {what}: {message}")]
    Transport { what: String, message: String },
    #[error("NetBox sent an unreadable answer for {what}: {message}")]
    Decode { what: String, message: String },
}

/// One page of a list endpoint.
#[derive(Debug, Default)]
pub struct Page {
    pub results: Vec<Map<String, Value>>,
}

/// One page of a list endpoint as NetBox served it: the body, and the id and place in it of each
/// object of its `results` (read through once, nothing built).
#[derive(Debug)]
pub struct ServedPage {
    what: &'static str,
    body: Bytes,
    objects: Vec<(Option<u64>, std::ops::Range<usize>)>,
    /// NetBox said no page follows (`next: null`): it served fewer objects than the page holds.
    last: bool,
}

impl ServedPage {
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Whether NetBox said no page follows this one.
    pub fn is_last(&self) -> bool {
        self.last
    }

    /// The objects' ids, those that have one.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.objects.iter().filter_map(|(id, _)| *id)
    }

    /// Each object's id and its bytes as served.
    pub fn served(&self) -> impl Iterator<Item = (Option<u64>, &[u8])> + '_ {
        let body = &self.body;
        self.objects
            .iter()
            .map(move |(id, at)| (*id, &body[at.clone()]))
    }

    /// One object as served, parsed for what `reads` names.
    pub fn parse_one(&self, raw: &[u8], reads: Reads) -> Result<Map<String, Value>, ApiError> {
        wire::object(raw, reads).map_err(|e| unreadable(self.what, e))
    }

    /// Every object, parsed for what `reads` names.
    pub fn parse(&self, reads: Reads) -> Result<Vec<Map<String, Value>>, ApiError> {
        self.served()
            .map(|(_, raw)| self.parse_one(raw, reads))
            .collect()
    }
}

pub struct NetboxClient {
    http: reqwest::Client,
    base: String,
    attempts: u32,
    /// `/api/status/`'s last answer and when it came (or was last kept through a failure).
    status: std::sync::Mutex<Option<(std::time::Instant, NetboxStatus)>>,
    /// One refresh of the status at a time: callers that find one under way take the last answer.
    refreshing: tokio::sync::Mutex<()>,
    status_ttl: Duration,
}

/// What NetBox's `/api/status/` says that the relay needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetboxStatus {
    pub version: (u32, u32),
    /// The netbox-branching plugin's version, when it is installed.
    pub branching: Option<String>,
}

impl NetboxStatus {
    pub fn of(status: &Map<String, Value>) -> Result<NetboxStatus, ApiError> {
        let branching = status
            .get("plugins")
            .and_then(|p| p.get("netbox_branching"))
            .map(|v| v.as_str().unwrap_or("installed").to_string());
        Ok(NetboxStatus {
            version: parse_version(status)?,
            branching,
        })
    }
}

/// Attempts per request: the first and up to four retries.
const ATTEMPTS: u32 = 5;

impl NetboxClient {
    pub fn new(cfg: &NetboxConfig) -> Result<NetboxClient, ApiError> {
        let (Some(url), Some(token)) = (&cfg.url, cfg.token.as_ref()) else {
            return Err(ApiError::NotConfigured);
        };
        let token = token.expose_secret().trim();
        let scheme = if token.starts_with("nbt_") {
            "Bearer"
        } else {
            "Token"
        };
        let mut auth =
            HeaderValue::from_str(&format!("{scheme} {token}")).map_err(|_| ApiError::Config {
                key: "netbox.token",
                message: "the token holds characters a header cannot carry".into(),
            })?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::from_iter([(AUTHORIZATION, auth)]);
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(cfg.timeout)
            .user_agent(concat!("netbox-relay/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(cfg.insecure_skip_verify);
        if let Some(path) = &cfg.ca_file {
            let pem = std::fs::read(path).map_err(|e| ApiError::Config {
                key: "netbox.ca_file",
                message: format!("{}: {e}", path.display()),
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| ApiError::Config {
                key: "netbox.ca_file",
                message: e.to_string(),
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().map_err(|e| ApiError::Config {
            key: "netbox",
            message: e.to_string(),
        })?;
        Ok(NetboxClient {
            http,
            base: url.trim_end_matches('/').to_string(),
            attempts: ATTEMPTS,
            status: std::sync::Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            status_ttl: cfg.status_ttl,
        })
    }

    /// No retries: for `check`, which should answer quickly about a NetBox that is down.
    pub fn without_retries(mut self) -> Self {
        self.attempts = 1;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// NetBox's version as (major, minor), from `/api/status/`.
    pub async fn version(&self) -> Result<(u32, u32), ApiError> {
        Ok(self.status().await?.version)
    }

    /// `/api/status/` (version, plugins), asked at most every `netbox.status_ttl`. Once NetBox
    /// has answered, its answer stands while it does not answer again (a NetBox without
    /// netbox-branching stays trusted through an outage), and is asked again a TTL later. One
    /// caller asks at a time; the others are served the last answer meanwhile, and wait only
    /// when there is none yet.
    pub async fn status(&self) -> Result<NetboxStatus, ApiError> {
        let known = self.known_status();
        if let Some((at, status)) = &known {
            if at.elapsed() < self.status_ttl {
                return Ok(status.clone());
            }
        }
        let _refresh = match (self.refreshing.try_lock(), &known) {
            (Ok(guard), _) => guard,
            (Err(_), Some((_, status))) => return Ok(status.clone()),
            (Err(_), None) => {
                let guard = self.refreshing.lock().await;
                if let Some((_, status)) = self.known_status() {
                    return Ok(status);
                }
                guard
            }
        };
        let asked = self
            .get("/api/status/", "the status endpoint", "")
            .await
            .and_then(|answer| NetboxStatus::of(&answer));
        let status = match (asked, known) {
            (Ok(status), known) => {
                if known.as_ref().map(|(_, s)| &s.branching) != Some(&status.branching) {
                    match &status.branching {
                        Some(v) => {
                            tracing::info!(plugin_version = %v, "NetBox has netbox-branching")
                        }
                        None => tracing::info!("NetBox has no netbox-branching"),
                    }
                }
                status
            }
            (Err(e), Some((_, status))) => {
                tracing::warn!(error = %e, "NetBox's status could not be asked again; taken as it was");
                status
            }
            (Err(e), None) => return Err(e),
        };
        let now = std::time::Instant::now();
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Some((now, status.clone()));
        Ok(status)
    }

    /// NetBox's last known status, however old, without waiting: a stale one is asked again in
    /// the background. `None` until NetBox has answered once.
    pub fn last_status(self: &Arc<Self>) -> Option<NetboxStatus> {
        let (at, status) = self.known_status()?;
        self.refresh_if_stale(at);
        Some(status)
    }

    /// Whether NetBox last said it has netbox-branching, as [`Self::last_status`] but cloning
    /// nothing: read on every webhook that may need confirmation, so that none waits for the
    /// plugin question.
    pub fn last_branching(self: &Arc<Self>) -> Option<bool> {
        let (at, branching) = {
            let status = self.status.lock().unwrap_or_else(|e| e.into_inner());
            let (at, status) = status.as_ref()?;
            (*at, status.branching.is_some())
        };
        self.refresh_if_stale(at);
        Some(branching)
    }

    fn refresh_if_stale(self: &Arc<Self>, at: std::time::Instant) {
        if at.elapsed() >= self.status_ttl && self.refreshing.try_lock().is_ok() {
            let client = self.clone();
            tokio::spawn(async move { client.status().await });
        }
    }

    fn known_status(&self) -> Option<(std::time::Instant, NetboxStatus)> {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `GET path` (with its query) on the API; `what` and `permission` name it in errors.
    pub async fn get(
        &self,
        path: &str,
        what: &str,
        permission: &str,
    ) -> Result<Map<String, Value>, ApiError> {
        let body = self.call(Method::GET, path, None, what, permission).await?;
        decoded(what, serde_json::from_slice(&body))
    }

    /// `POST` or `PATCH` a JSON body; never retried, since NetBox may have applied it.
    pub async fn write(
        &self,
        method: Method,
        path: &str,
        body: &Value,
        what: &str,
        permission: &str,
    ) -> Result<Map<String, Value>, ApiError> {
        let body = self
            .call(method, path, Some(body), what, permission)
            .await?;
        decoded(what, serde_json::from_slice(&body))
    }

    /// One page of `object_type`'s list endpoint; `query` starts after the `?`. Of each object
    /// only what `reads` names is parsed.
    pub async fn page(
        &self,
        object_type: ObjectType,
        query: &str,
        reads: Reads,
    ) -> Result<Page, ApiError> {
        let body = self.list(object_type, query).await?;
        match wire::results(&body, reads) {
            Ok(Some(results)) => Ok(Page { results }),
            Ok(None) => Err(decode_error(object_type.name, "no results list".into())),
            Err(e) => Err(unreadable(object_type.name, e)),
        }
    }

    /// [`Self::page`] with its objects left as NetBox served them.
    pub async fn served_page(
        &self,
        object_type: ObjectType,
        query: &str,
    ) -> Result<ServedPage, ApiError> {
        let body = self.list(object_type, query).await?;
        let (objects, last) = match wire::raw_page(&body) {
            Ok(wire::Page {
                results: Some(objects),
                last,
            }) => (objects, last),
            Ok(_) => return Err(decode_error(object_type.name, "no results list".into())),
            Err(e) => return Err(unreadable(object_type.name, e)),
        };
        // Each object is a slice of the body (serde_json borrows it): kept as its place.
        let start = body.as_ptr() as usize;
        let place = |raw: &str| {
            let at = (raw.as_ptr() as usize).checked_sub(start)?;
            let place = at..at.checked_add(raw.len())?;
            body.get(place.clone()).map(|_| place)
        };
        let objects = objects
            .into_iter()
            .map(|raw| Some((wire::id_of(raw.get().as_bytes()), place(raw.get())?)))
            .collect::<Option<_>>()
            .ok_or_else(|| decode_error(object_type.name, "an object outside the body".into()))?;
        Ok(ServedPage {
            what: object_type.name,
            objects,
            last,
            body,
        })
    }

    async fn list(&self, object_type: ObjectType, query: &str) -> Result<Bytes, ApiError> {
        let path = format!("/api/{}/?{query}", object_type.api_path);
        let permission = format!("{}.view_{}", object_type.app_label(), object_type.model());
        self.call(Method::GET, &path, None, object_type.name, &permission)
            .await
    }

    /// One request; a GET is retried on 429, 5xx and transport errors, honouring `Retry-After`.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
        permission: &str,
    ) -> Result<Bytes, ApiError> {
        let url = format!("{}{path}", self.base);
        let attempts = if method == Method::GET {
            self.attempts
        } else {
            1
        };
        let mut attempt = 0;
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        loop {
            attempt += 1;
            let mut request = self.http.request(method.clone(), &url);
            if let Some(body) = body {
                request = request.json(body);
            }
            let sent = request.send().await;
            telemetry::netbox_request(sent.as_ref().ok().map(|r| r.status().as_u16()));
            let (error, wait) = match sent {
                Ok(response) if response.status().is_success() => {
                    return response
                        .bytes()
                        .await
                        .map_err(|e| decode_error(what, e.without_url().to_string()));
                }
                Ok(response) => {
                    let status = response.status();
                    let wait = retry_after(&response);
                    let message = detail(response.text().await.unwrap_or_default());
                    if status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED {
                        let hint = match permission {
                            "" => "check netbox.token: NetBox answers 403 to a missing, unknown, expired or disabled token".to_string(),
                            p => format!("if the token is valid, it needs the permission {p}"),
                        };
                        return Err(ApiError::Forbidden {
                            what: what.into(),
                            detail: message,
                            hint,
                        });
                    }
                    let retryable =
                        status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
                    let error = ApiError::Status {
                        what: what.into(),
                        status: status.as_u16(),
                        message,
                    };
                    if !retryable {
                        return Err(error);
                    }
                    (error, wait)
                }
                Err(e) => {
                    let message = causes(e.without_url());
                    (
                        ApiError::Transport {
                            what: what.into(),
                            message,
                        },
                        None,
                    )
                }
            };
            if attempt >= attempts {
                return Err(error);
            }
            let wait = wait
                .unwrap_or_else(|| backoff.next_wait())
                .min(Duration::from_secs(60));
            tracing::warn!(%error, attempt, retry_in = ?wait, "NetBox request failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }
}

fn unreadable(what: &str, e: WireError) -> ApiError {
    let message = match e {
        WireError::NotJson(e) => e.to_string(),
        WireError::NotObject => "not a JSON object".to_string(),
    };
    decode_error(what, message)
}

fn decode_error(what: &str, message: String) -> ApiError {
    ApiError::Decode {
        what: what.into(),
        message,
    }
}

/// An answer's JSON object, or why it is none.
fn decoded(
    what: &str,
    parsed: Result<Map<String, Value>, serde_json::Error>,
) -> Result<Map<String, Value>, ApiError> {
    parsed.map_err(|e| decode_error(what, format!("error decoding response body: {e}")))
}

/// NetBox's version as (major, minor) from a `/api/status/` answer.
pub fn parse_version(status: &Map<String, Value>) -> Result<(u32, u32), ApiError> {
    let version = status
        .get("netbox-version")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut parts = version.split(['.', '-']).map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => Ok((major, minor)),
        _ => Err(ApiError::Decode {
            what: "the status endpoint".into(),
            message: format!("no netbox-version in {version:?}"),
        }),
    }
}

/// The error and its causes ("error sending request: ... Connection refused"); the URL, which
/// may carry credentials, is already stripped.
fn causes(e: reqwest::Error) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(RETRY_AFTER)?.to_str().ok()?;
    retry_after_value(value, chrono::Utc::now())
}

/// `Retry-After` in both of its forms (RFC 9110): seconds, or an HTTP date (`Wed, 21 Oct 2015
/// 07:28:00 GMT`), the wait until then (none for a date already past).
fn retry_after_value(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or_default(),
    )
}

/// NetBox's reason: `{"detail": "..."}`, a list of messages, or the text, kept short.
fn detail(text: String) -> String {
    let reason = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(o)) => o.get("detail").and_then(Value::as_str).map(String::from),
        Ok(Value::Array(a)) => a.first().and_then(Value::as_str).map(String::from),
        _ => None,
    };
    let mut reason = reason.unwrap_or(text);
    reason.truncate(
        reason
            .char_indices()
            .nth(200)
            .map_or(reason.len(), |(i, _)| i),
    );
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds_and_as_an_http_date() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:27:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            retry_after_value("120", now),
            Some(Duration::from_secs(120))
        );
        let date = "Wed, 21 Oct 2015 07:28:00 GMT";
        assert_eq!(retry_after_value(date, now), Some(Duration::from_secs(60)));
        let past = "Wed, 21 Oct 2015 07:00:00 GMT";
        assert_eq!(retry_after_value(past, now), Some(Duration::ZERO));
        assert_eq!(retry_after_value("soon", now), None);
    }
}
