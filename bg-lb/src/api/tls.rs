//! The remote API's TLS (rustls, ring provider): a certificate chain and
//! key from PEM files, HTTP/1.1 only.

use std::sync::Arc;

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
};
use tokio_rustls::TlsAcceptor;

use super::ApiError;
use crate::config::TlsFiles;

pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, ApiError> {
    let bad = |path: &std::path::Path| {
        let path = path.to_owned();
        move |e: rustls::pki_types::pem::Error| ApiError::Tls {
            path,
            cause: e.to_string(),
        }
    };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(bad(&files.cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad(&files.cert))?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(bad(&files.key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| ApiError::Tls {
            path: files.cert.clone(),
            cause: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
