//! RTMPS: the TLS configuration every shard's RTMPS listener shares
//! (rustls with the ring provider, TLS 1.2 and 1.3 only), certificates
//! chosen by SNI, and their reload from disk without dropping connections:
//! a handshake takes whatever certificate set is current; sessions already
//! up keep theirs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::TlsConfig;

#[derive(Debug)]
struct CertSet {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

/// The certificates, reloadable.
#[derive(Debug)]
pub struct Certs {
    /// (server name or "" for the default, cert file, key file)
    files: Vec<(String, PathBuf, PathBuf)>,
    current: RwLock<(Vec<Option<SystemTime>>, Arc<CertSet>)>,
}

/// Why certificates could not be loaded (at start, or on a reload, when
/// the ones in use stay).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{}: no certificate in it", .0.display())]
    NoCertificate(PathBuf),
    #[error("{}: {source}", path.display())]
    Key {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{} and {} do not match: {source}", cert.display(), key.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("no default certificate")]
    NoDefault,
    #[error("TLS: {0}")]
    Config(#[from] rustls::Error),
}

fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let pem = |source| TlsError::Pem {
        path: cert.to_owned(),
        source,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(pem)?
        .collect::<Result<_, _>>()
        .map_err(pem)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_owned()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Pem {
        path: key.to_owned(),
        source,
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|source| {
        TlsError::Key {
            path: key.to_owned(),
            source,
        }
    })?;
    let pair = CertifiedKey::new(chain, signing);
    // A certificate caught mid-rotation with the old key: refuse the pair.
    pair.keys_match().map_err(|source| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    })?;
    Ok(Arc::new(pair))
}

fn mtimes(files: &[(String, PathBuf, PathBuf)]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .flat_map(|(_, c, k)| [c, k])
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

impl Certs {
    /// Loads every certificate now; any error stops the start.
    pub fn load(config: &TlsConfig) -> Result<Arc<Certs>, TlsError> {
        let mut files = vec![(String::new(), config.cert.clone(), config.key.clone())];
        for sni in &config.sni {
            files.push((
                sni.name.to_ascii_lowercase(),
                sni.cert.clone(),
                sni.key.clone(),
            ));
        }
        let set = Self::build(&files)?;
        let times = mtimes(&files);
        Ok(Arc::new(Certs {
            files,
            current: RwLock::new((times, Arc::new(set))),
        }))
    }

    fn build(files: &[(String, PathBuf, PathBuf)]) -> Result<CertSet, TlsError> {
        let mut default = None;
        let mut by_name = HashMap::new();
        for (name, cert, key) in files {
            let pair = load_pair(cert, key)?;
            if name.is_empty() {
                default = Some(pair);
            } else {
                by_name.insert(name.clone(), pair);
            }
        }
        Ok(CertSet {
            default: default.ok_or(TlsError::NoDefault)?,
            by_name,
        })
    }

    /// Reloads if a file changed (or `force`); returns whether it did. On
    /// error the certificates in use stay.
    pub fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let now = mtimes(&self.files);
        let unchanged = self.current.read().map(|c| c.0 == now).unwrap_or(false);
        if unchanged && !force {
            return Ok(false);
        }
        let set = Self::build(&self.files)?;
        if let Ok(mut c) = self.current.write() {
            *c = (now, Arc::new(set));
        }
        Ok(true)
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.current.read().ok()?.1.clone();
        let named = hello
            .server_name()
            .and_then(|n| set.by_name.get(&n.to_ascii_lowercase()));
        Some(named.unwrap_or(&set.default).clone())
    }
}

/// One TLS connection's state on the shard's socket ring, server side
/// (RTMPS, HTTPS media) or client side (an rtmps:// push target): the ring
/// feeds it the bytes received and sends the records it produces.
pub type RingTls = rustls::Connection;

/// The configuration every shard's RTMPS listener uses: TLS 1.2/1.3, no
/// client certificates, certificates from `certs` (by SNI, reloadable).
pub fn server_config(certs: Arc<Certs>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    let mut config = config;
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A new server-side TLS session. Its buffer limit is off: what it holds is
/// bounded by the connection's output queue limits instead, and the ring
/// hands it whole messages.
pub fn accept(config: &Arc<rustls::ServerConfig>) -> Result<RingTls, rustls::Error> {
    let mut tls = rustls::ServerConnection::new(config.clone())?;
    tls.set_buffer_limit(None);
    Ok(RingTls::Server(tls))
}

/// The configuration of rtmps:// push targets: TLS 1.2/1.3, the system's
/// roots and, for a private target, the certificates of `ca_file`.
pub fn client_config(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    for e in &system.errors {
        tracing::debug!("system root certificates: {e}");
    }
    let (added, _) = roots.add_parsable_certificates(system.certs);
    if !ca_file.as_os_str().is_empty() {
        let pem = |source| TlsError::Pem {
            path: ca_file.to_owned(),
            source,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_file)
            .map_err(pem)?
            .collect::<Result<_, _>>()
            .map_err(pem)?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate(ca_file.to_owned()));
        }
        for cert in certs {
            roots.add(cert)?;
        }
    } else if added == 0 {
        tracing::warn!("no system root certificates: rtmps:// push targets will not verify");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A new client-side TLS session to `host` (its SNI and the name its
/// certificate must carry); its buffer limit is off as `accept`'s is.
pub fn connect(config: &Arc<rustls::ClientConfig>, host: &str) -> Result<RingTls, rustls::Error> {
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|_| rustls::Error::General(format!("{host:?} is not a server name")))?;
    let mut tls = rustls::ClientConnection::new(config.clone(), name)?;
    tls.set_buffer_limit(None);
    Ok(RingTls::Client(tls))
}
