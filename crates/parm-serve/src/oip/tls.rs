//! Transport security (TLS 1.2 and 1.3 through rustls, ring provider) for every parm listener
//! and for the frontend's connections to its instances. Certificates and keys are PEM files:
//! a server presents [`TlsFiles::cert`] (its chain) and [`TlsFiles::key`]; with
//! [`TlsFiles::client_ca`] it also demands a client certificate signed by that CA (mutual TLS,
//! for instances that only their frontends may call). A client ([`ClientTls`]) trusts the CA
//! it is given, not the system's roots (parm talks to its own fleet), may present a client
//! certificate, and checks the server's certificate against a name: the instance's host, or
//! [`ClientTls::server_name`] when the address is an IP (as DNS discovery gives).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// TLS settings that cannot be used, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key in it ({reason})")]
    NoKey { path: PathBuf, reason: String },
    #[error("TLS settings refused: {0}")]
    Rustls(String),
    #[error("{0} needs {1} too")]
    Incomplete(&'static str, &'static str),
}

/// A server's certificate chain and key, and the CA its clients' certificates must chain to
/// (none: no client certificate asked for).
#[derive(Clone, Debug, PartialEq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&read(path)?).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|e| TlsError::NoKey { path: path.to_path_buf(), reason: e.to_string() })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The PEM text of `path`, checked to hold a certificate.
fn certificate_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    certificates(path)?;
    read(path)
}

impl TlsFiles {
    /// From the `--tls-cert`, `--tls-key` and `--tls-client-ca` flags: `None` without any.
    ///
    /// Errors: a certificate without a key or the other way round, or a client CA without both.
    pub fn from_flags(cert: Option<PathBuf>, key: Option<PathBuf>, client_ca: Option<PathBuf>) -> Result<Option<Self>, TlsError> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(Self { cert, key, client_ca })),
            (Some(_), None) => Err(TlsError::Incomplete("--tls-cert", "--tls-key")),
            (None, Some(_)) => Err(TlsError::Incomplete("--tls-key", "--tls-cert")),
            (None, None) if client_ca.is_some() => Err(TlsError::Incomplete("--tls-client-ca", "--tls-cert and --tls-key")),
            (None, None) => Ok(None),
        }
    }

    /// The rustls server configuration for HTTP listeners (ALPN `h2`, `http/1.1`).
    ///
    /// Errors: an unreadable file, no certificate or key in it, a key that does not fit the
    /// certificate.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let rustls_err = |e: rustls::Error| TlsError::Rustls(e.to_string());
        let builder = rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().map_err(rustls_err)?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certificates(ca)? {
                    roots.add(c).map_err(rustls_err)?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|e| TlsError::Rustls(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(certificates(&self.cert)?, private_key(&self.key)?).map_err(rustls_err)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The same settings for a tonic (gRPC) server.
    ///
    /// Errors: as [`Self::server_config`], which is also run to check the files.
    pub fn tonic_server(&self) -> Result<tonic::transport::ServerTlsConfig, TlsError> {
        self.server_config()?;
        let identity = tonic::transport::Identity::from_pem(read(&self.cert)?, read(&self.key)?);
        let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(certificate_pem(ca)?));
        }
        Ok(config)
    }
}

/// How a client reaches instances over TLS.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ClientTls {
    /// The CA the instances' certificates chain to.
    pub ca: PathBuf,
    /// A client certificate and key to present (instances with `--tls-client-ca`).
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name the instances' certificates are checked against, instead of the host of
    /// their address (needed when addresses are IPs).
    pub server_name: Option<String>,
}

impl ClientTls {
    /// From the `--instance-tls-ca`, `--instance-tls-cert`, `--instance-tls-key` and
    /// `--instance-tls-server-name` flags: `None` without a CA.
    ///
    /// Errors: a certificate without a key or the other way round, or any of them without a CA.
    pub fn from_flags(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        server_name: Option<String>,
    ) -> Result<Option<Self>, TlsError> {
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (Some(_), None) => return Err(TlsError::Incomplete("--instance-tls-cert", "--instance-tls-key")),
            (None, Some(_)) => return Err(TlsError::Incomplete("--instance-tls-key", "--instance-tls-cert")),
            (None, None) => None,
        };
        match ca {
            Some(ca) => Ok(Some(Self { ca, identity, server_name })),
            None if identity.is_some() || server_name.is_some() => {
                Err(TlsError::Incomplete("--instance-tls-cert, --instance-tls-key and --instance-tls-server-name", "--instance-tls-ca"))
            }
            None => Ok(None),
        }
    }

    /// The tonic client configuration.
    ///
    /// Errors: an unreadable file, or no certificate or key in it.
    pub fn tonic_client(&self) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
        let mut config =
            tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(certificate_pem(&self.ca)?));
        if let Some((cert, key)) = &self.identity {
            private_key(key)?;
            config = config.identity(tonic::transport::Identity::from_pem(certificate_pem(cert)?, read(key)?));
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        Ok(config)
    }
}
