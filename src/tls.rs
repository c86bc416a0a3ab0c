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

/// The validity of the first certificate of a PEM bundle, in seconds since the epoch:
/// `(not_before, not_after)`.
pub fn validity(pem: &[u8]) -> Option<(i64, i64)> {
    validity_der(&leaf(pem)?)
}

/// [`validity`] of one DER certificate.
pub fn validity_der(der: &[u8]) -> Option<(i64, i64)> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let v = &cert.tbs_certificate.validity;
    Some((
        v.not_before.to_unix_duration().as_secs() as i64,
        v.not_after.to_unix_duration().as_secs() as i64,
    ))
}

/// Whether the first certificate of a PEM bundle may authenticate a client: it has no extended
/// key usage, or one naming client auth (or any usage). A Redis Cluster node presents its
/// certificate to the others on the cluster bus, and they refuse one issued for servers alone.
pub fn allows_client_auth(pem: &[u8]) -> bool {
    use x509_cert::der::Decode;
    use x509_cert::der::oid::db::rfc5280::{ANY_EXTENDED_KEY_USAGE, ID_KP_CLIENT_AUTH};
    use x509_cert::ext::pkix::ExtendedKeyUsage;
    let Some(cert) = leaf(pem).and_then(|der| x509_cert::Certificate::from_der(&der).ok()) else {
        return false;
    };
    match cert.tbs_certificate.get::<ExtendedKeyUsage>() {
        Ok(None) => true,
        Ok(Some((_, eku))) => eku
            .0
            .iter()
            .any(|o| *o == ID_KP_CLIENT_AUTH || *o == ANY_EXTENDED_KEY_USAGE),
        Err(_) => false,
    }
}

/// The first DNS name the first certificate of a PEM bundle is issued for (its subject
/// alternative names): the name a client that cannot skip the name check verifies a member
/// against, when it reaches the member by address.
pub fn dns_name(pem: &[u8]) -> Option<String> {
    use x509_cert::der::Decode;
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;
    let cert = x509_cert::Certificate::from_der(&leaf(pem)?).ok()?;
    let (_, san) = cert
        .tbs_certificate
        .get::<SubjectAltName>()
        .ok()
        .flatten()?;
    san.0.into_iter().find_map(|n| match n {
        GeneralName::DnsName(name) => Some(name.to_string()),
        _ => None,
    })
}

/// A date as OpenSSL prints one (`Dec  3 11:40:00 2026 GMT`), in seconds since the epoch.
pub fn parse_openssl_date(text: &str) -> Option<i64> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [month, day, time, year, "GMT"] = parts.as_slice() else {
        return None;
    };
    let normal = format!("{month} {day:0>2} {year} {time} +0000");
    jiff::Timestamp::strptime("%b %d %Y %H:%M:%S %z", &normal)
        .ok()
        .map(|t| t.as_second())
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
    fn openssl_dates_read_as_seconds() {
        assert_eq!(
            parse_openssl_date("Jan  1 00:00:00 2027 GMT"),
            Some(1_798_761_600)
        );
        assert_eq!(
            parse_openssl_date("Dec 13 11:40:05 2026 GMT"),
            Some(1_797_162_005)
        );
        assert_eq!(parse_openssl_date(""), None);
        assert_eq!(parse_openssl_date("Dec 13 11:40:05 2026 CET"), None);
    }

    #[test]
    fn a_certificate_for_servers_alone_cannot_authenticate_a_cluster_node() {
        assert!(!allows_client_auth(include_bytes!(
            "testdata/server-only.pem"
        )));
        assert!(allows_client_auth(include_bytes!(
            "testdata/server-client.pem"
        )));
        // No extended key usage: any.
        assert!(allows_client_auth(FIXTURE));
        assert!(!allows_client_auth(b""));
    }

    #[test]
    fn a_ca_without_a_certificate_is_refused_with_a_reason() {
        assert!(matches!(client_config(b""), Err(TlsError::NoCertificate)));
        assert!(
            client_config(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
                .is_err()
        );
    }

    /// A self-signed certificate made once with the openssl CLI: an address first, then two DNS
    /// names, valid Dec 1 2026 14:34:20 GMT for 100 years.
    const FIXTURE: &[u8] = include_bytes!("testdata/san.pem");

    #[test]
    fn the_first_dns_name_and_the_validity_read_from_a_certificate() {
        assert_eq!(dns_name(FIXTURE).as_deref(), Some("db.example"));
        let (from, until) = validity(FIXTURE).expect("validity");
        assert_eq!(Some(from), parse_openssl_date("Dec  1 14:34:20 2026 GMT"));
        assert_eq!(Some(until), parse_openssl_date("Nov  7 14:34:20 2126 GMT"));
        assert_eq!(dns_name(b"not a certificate"), None);
    }
}
