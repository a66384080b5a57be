//! The receiver's native TLS (`server.tls_cert`, `server.tls_key`): PEM files read at start and
//! read again whenever either changes (certificates rotate), so NetBox can call the relay over
//! HTTPS with certificate verification on and no proxy in front. A file that no longer reads
//! keeps the last good certificate in use, and says so.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How often the files' modification times are looked at.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls_cert {path}: {message}")]
    Cert { path: PathBuf, message: String },
    #[error("server.tls_key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("server.tls_cert and server.tls_key do not make a TLS configuration: {0}")]
    Config(String),
}

pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Loaded>,
}

struct Loaded {
    acceptor: TlsAcceptor,
    stamp: Stamp,
}

/// The files' modification times when they were read.
type Stamp = (Option<SystemTime>, Option<SystemTime>);

impl Tls {
    /// Reads the certificate chain and key; an error names the file and what is wrong.
    pub fn load(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let stamp = stamp(cert, key);
        let acceptor = acceptor(cert, key)?;
        Ok(Tls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Loaded { acceptor, stamp }),
        })
    }

    /// The acceptor for a new connection: the certificate read last.
    pub fn acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.acceptor.clone()
    }

    /// Reads the files again whenever either changes, until `shutdown`. The files are read on
    /// the blocking pool, and without the lock: new connections keep being accepted meanwhile.
    pub async fn reload_on_change(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RELOAD_EVERY) => {}
                _ = shutdown.cancelled() => return,
            }
            let tls = self.clone();
            tokio::task::spawn_blocking(move || tls.reload_if_changed())
                .await
                .ok();
        }
    }

    fn reload_if_changed(&self) {
        let now = stamp(&self.cert, &self.key);
        let seen = self.current.read().unwrap_or_else(|e| e.into_inner()).stamp;
        if now == seen {
            return;
        }
        let read = acceptor(&self.cert, &self.key);
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        // Looked at once per change, even when the new files do not read.
        current.stamp = now;
        match read {
            Ok(acceptor) => {
                current.acceptor = acceptor;
                drop(current);
                tracing::info!(cert = %self.cert.display(), "TLS certificate read again");
            }
            Err(e) => {
                drop(current);
                tracing::error!(error = %e,
                    "the changed TLS files do not read; the previous certificate stays in use")
            }
        }
    }
}

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (modified(cert), modified(key))
}

fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let cert_error = |message: String| TlsError::Cert {
        path: cert.to_path_buf(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no PEM certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
