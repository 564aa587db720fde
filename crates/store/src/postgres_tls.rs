//! TLS to PostgreSQL: whether the [`PostgresStore`](crate::PostgresStore)
//! encrypts its connections, and what it checks of the server.
//!
//! Managed databases require TLS, and a connection that crosses a network the
//! bridge does not own carries the database password and every recorded reply.
//! `verify-full` is the mode to use there: the server's certificate must chain
//! to the operator's CA file AND name the host the URL connects to, so neither
//! an eavesdropper nor a machine in the middle sees the session. `require`
//! encrypts without checking who answers (libpq's meaning of the word): it
//! stops a passive eavesdropper only. `disable` is plain TCP, today's behaviour
//! for a database on a trusted network.
//!
//! rustls with its aws-lc-rs provider (already in the tree under the HTTP
//! client) does the TLS; `tokio-postgres-rustls` plugs it into the driver.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::StoreError;

/// How the store's connections to PostgreSQL are secured (`state.tls`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PostgresTls {
    /// Plain TCP, no TLS (`disable`): for a database on a trusted network or
    /// behind a local TLS-terminating proxy. The default, as before TLS was
    /// supported.
    #[default]
    Disable,
    /// TLS, the server's certificate not checked (`require`): encrypted
    /// against a passive eavesdropper, not against a machine in the middle.
    Require,
    /// TLS, the server's certificate checked against the CA certificates in
    /// `ca_file` (PEM) and against the host name the URL connects to
    /// (`verify-full`).
    VerifyFull {
        /// PEM file of the CA certificate(s) the server's chain must reach.
        ca_file: PathBuf,
    },
}

impl PostgresTls {
    /// The mode's name as configured (`disable`, `require`, `verify-full`).
    pub fn mode(&self) -> &'static str {
        match self {
            PostgresTls::Disable => "disable",
            PostgresTls::Require => "require",
            PostgresTls::VerifyFull { .. } => "verify-full",
        }
    }

    /// The driver's SSL mode for this setting: a TLS mode never falls back
    /// to plain TCP (the URL's `prefer` default would).
    pub(crate) fn ssl_mode(&self) -> SslMode {
        match self {
            PostgresTls::Disable => SslMode::Disable,
            PostgresTls::Require | PostgresTls::VerifyFull { .. } => SslMode::Require,
        }
    }

    /// The rustls connector for a TLS mode (`None` for `disable`). Fails
    /// when the CA file cannot be read or holds no certificate.
    pub(crate) fn connector(&self) -> Result<Option<MakeRustlsConnect>, StoreError> {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let builder = || {
            ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| StoreError::Failed(format!("cannot set up TLS: {e}")))
        };
        let config = match self {
            PostgresTls::Disable => return Ok(None),
            PostgresTls::Require => builder()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider.clone())))
                .with_no_client_auth(),
            PostgresTls::VerifyFull { ca_file } => builder()?
                .with_root_certificates(load_ca_file(ca_file)?)
                .with_no_client_auth(),
        };
        Ok(Some(MakeRustlsConnect::new(config)))
    }
}

/// The CA certificates in the PEM file at `path`. The configuration checks
/// the same at load ([`check_ca_file`]), so this fails only when the file
/// changed since.
fn load_ca_file(path: &Path) -> Result<RootCertStore, StoreError> {
    let fail = |why: String| StoreError::Failed(format!("state.ca_file {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| fail(format!("not a PEM certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| fail(format!("not a CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(fail("holds no PEM certificate".into()));
    }
    Ok(roots)
}

/// Whether `path` is a readable PEM file of at least one certificate that
/// rustls takes as a trust anchor: `verify-full` with anything else could
/// never connect, so the configuration refuses it at load. The message says
/// why.
pub fn check_ca_file(path: &Path) -> Result<(), String> {
    load_ca_file(path).map(|_| ()).map_err(|e| match e {
        StoreError::Failed(message) | StoreError::Unavailable(message) => message,
        fenced @ StoreError::Fenced { .. } => fenced.to_string(),
    })
}

/// `require`'s verifier: any certificate is taken (libpq's `sslmode=require`
/// without a root certificate), but the handshake's signatures are still
/// checked, so the session is encrypted to whoever holds the certificate's key.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = check_ca_file(&missing).unwrap_err();
        assert!(err.contains("cannot read it"), "{err}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = check_ca_file(&empty).unwrap_err();
        assert!(err.contains("holds no PEM certificate"), "{err}");
    }

    #[test]
    fn tls_modes_never_fall_back_to_plain_tcp() {
        assert_eq!(PostgresTls::Disable.ssl_mode(), SslMode::Disable);
        assert_eq!(PostgresTls::Require.ssl_mode(), SslMode::Require);
        assert!(PostgresTls::Disable.connector().unwrap().is_none());
        assert!(PostgresTls::Require.connector().unwrap().is_some());
    }
}
