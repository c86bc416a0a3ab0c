//! TLS towards members: the server's certificate chain is verified against the instance's CA
//! (`ca.crt` of its TLS Secret); the name in the certificate is not, because Baton reaches a
//! member by its pod address, which a certificate issued for the Services' DNS names does not
//! list. That is libpq's `sslmode=verify-ca`: a server without a certificate signed by the CA
//! is refused, and so is a plain-text one.

use std::sync::{Arc, Mutex};

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

/// The certificate a server serves (its leaf), as seen by the last handshake of a
/// configuration from [`client_config_seeing`].
pub type Seen = Arc<Mutex<Option<Vec<u8>>>>;

/// The first certificate of a PEM bundle (a `tls.crt`: the leaf, then its chain), as DER.
pub fn leaf(pem: &[u8]) -> Option<Vec<u8>> {
    CertificateDer::pem_slice_iter(pem)
        .next()?
        .ok()
        .map(|c| c.as_ref().to_vec())
}

/// A client configuration that trusts exactly the certificates in `ca_pem` and checks the chain
/// but not the name (see the module).
pub fn client_config(ca_pem: &[u8]) -> Result<ClientConfig, TlsError> {
    client_config_seeing(ca_pem).map(|(c, _)| c)
}

/// [`client_config`], also keeping the leaf certificate of a chain that verified: whether a
/// member serves the certificate its TLS Secret holds now.
pub fn client_config_seeing(ca_pem: &[u8]) -> Result<(ClientConfig, Seen), TlsError> {
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
    let seen: Seen = Arc::default();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainOnly(chain, seen.clone())))
        .with_no_client_auth();
    Ok((config, seen))
}

/// A TLS stream to `host:port` verified against `ca_pem` (chain, not name), with the leaf
/// certificate the server served.
pub async fn connect(
    host: &str,
    port: u16,
    ca_pem: &[u8],
) -> std::io::Result<(
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Option<Vec<u8>>,
)> {
    let (config, seen) = client_config_seeing(ca_pem).map_err(std::io::Error::other)?;
    let name = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(host.to_string()).map_err(std::io::Error::other)?,
    };
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let leaf = seen.lock().ok().and_then(|s| s.clone());
    Ok((stream, leaf))
}

/// The web PKI verifier, with a certificate valid for another name accepted: webpki checks the
/// chain (signatures, validity, CA constraints, usage) before the name, so that error is only
/// ever returned for a chain that verified.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>, Seen);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = match self.0.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        };
        if verdict.is_ok()
            && let Ok(mut seen) = self.1.lock()
        {
            *seen = Some(end_entity.as_ref().to_vec());
        }
        verdict
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
