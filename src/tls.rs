//! TLS towards members: the server's certificate chain is verified against the instance's CA
//! (`ca.crt` of its TLS Secret); the name in the certificate is not, because Baton reaches a
//! member by its pod address, which a certificate issued for the Services' DNS names does not
//! list. That is libpq's `sslmode=verify-ca`: a server without a certificate signed by the CA
//! is refused, and so is a plain-text one.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// Why a CA could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("ca.crt holds no PEM certificate")]
    NoCertificate,
    #[error("ca.crt is not a usable CA: {0}")]
    Invalid(String),
}

/// A client configuration that trusts exactly the certificates in `ca_pem` and checks the chain
/// but not the name (see the module).
pub fn client_config(ca_pem: &[u8]) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| TlsError::Invalid(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| TlsError::Invalid(e.to_string()))?;
        n += 1;
    }
    if n == 0 {
        return Err(TlsError::NoCertificate);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainOnly(chain)))
        .with_no_client_auth();
    Ok(config)
}

/// The web PKI verifier, with a certificate valid for another name accepted: webpki checks the
/// chain (signatures, validity, CA constraints, usage) before the name, so that error is only
/// ever returned for a chain that verified.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_without_a_certificate_is_refused_with_a_reason() {
        assert!(matches!(client_config(b""), Err(TlsError::NoCertificate)));
        assert!(
            client_config(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
                .is_err()
        );
    }
}
