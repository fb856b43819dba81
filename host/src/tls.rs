//! TLS client settings for the plugin's two kinds of HTTPS peers: dr-provision (its API
//! and websocket, see `drp::trust`) and the servers image archives are downloaded from
//! (`images::trust`). Each decides whom it believes through a [`Policy`]; signatures
//! are always checked, so the handshake proves the peer holds the certificate's key.

use std::sync::{Arc, OnceLock};

use rustls::DigitallySignedStruct;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest as _, Sha256};

/// Whether a server's certificate is believed. A refusal's text is what the operator
/// reads, at the end of the connection error.
pub trait Policy: Send + Sync + std::fmt::Debug {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), String>;
}

/// A refusal, carried through rustls and the HTTP client to the caller's error chain
/// (where `certificate_problem` finds it).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

#[derive(Debug)]
struct Verifier<P> {
    policy: Arc<P>,
    provider: Arc<CryptoProvider>,
}

impl<P: Policy> ServerCertVerifier for Verifier<P> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.policy.check(end_entity, intermediates, server_name, now).map_err(|why| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(Refused(why)))))
        })?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// A client config whose every certificate decision is `policy`'s.
pub fn client_config<P: Policy + 'static>(policy: Arc<P>) -> rustls::ClientConfig {
    let verifier = Arc::new(Verifier { policy, provider: provider() });
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        // The ring provider supports the default versions; failing here is a build bug.
        .expect("ring supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth()
}

/// Standard verification (chain to `roots`, validity, the server's name), for a policy
/// to delegate to.
pub fn webpki_verifier(roots: rustls::RootCertStore) -> Result<Arc<WebPkiServerVerifier>, String> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build().map_err(|e| e.to_string())
}

pub fn verify_with(
    verifier: &WebPkiServerVerifier,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    server: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    verifier.verify_server_cert(end_entity, intermediates, server, &[], now).map(|_| ())
}

/// Lowercase hex SHA-256 of a certificate's DER, as `openssl x509 -fingerprint -sha256`
/// prints it without the colons.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(Sha256::digest(cert.as_ref()))
}

/// A SHA-256 as operators paste it: hex, any case, with or without colons or a
/// `sha256:` prefix.
pub fn parse_sha256(text: &str) -> Result<String, String> {
    let hex_digits: String =
        text.trim().trim_start_matches("sha256:").chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
    if hex_digits.len() == 64 && hex_digits.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(hex_digits)
    } else {
        Err(format!("'{text}' is not a SHA-256 (64 hex digits, colons allowed)"))
    }
}

/// Every certificate in a PEM text; none, or a broken one, is an error.
pub fn parse_pem_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs =
        CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_string());
    }
    Ok(certs)
}

/// An error and its causes on one line: an HTTP client's own text ("error sending
/// request") says nothing of the certificate that was refused underneath it.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = cause.source();
    }
    text
}

/// A failed connection, told by its refused certificate when that is the cause, else by
/// its whole chain of causes.
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    certificate_problem(error).unwrap_or_else(|| error_chain(error))
}

/// The refusal or certificate error somewhere in `error`'s causes, if any. An
/// `io::Error` hides the error it wraps from `source()` (and HTTP clients wrap one
/// `io::Error` in another), so those are looked into.
pub fn certificate_problem(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source = Some(error);
    while let Some(cause) = source {
        let mut inner = Some(cause);
        while let Some(candidate) = inner {
            match candidate.downcast_ref::<rustls::Error>() {
                Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) => return Some(other.to_string()),
                Some(rustls::Error::InvalidCertificate(e)) => return Some(format!("invalid certificate: {e}")),
                _ => {}
            }
            inner = candidate.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).map(|e| e as &(dyn std::error::Error + 'static));
        }
        source = cause.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_is_read_as_operators_paste_it() {
        let plain = "ab".repeat(32);
        assert_eq!(parse_sha256(&plain.to_ascii_uppercase()), Ok(plain.clone()));
        let colons = plain.as_bytes().chunks(2).map(|c| String::from_utf8_lossy(c).to_string()).collect::<Vec<_>>().join(":");
        assert_eq!(parse_sha256(&colons), Ok(plain.clone()));
        assert_eq!(parse_sha256(&format!("sha256:{plain}")), Ok(plain));
        assert!(parse_sha256("abc").unwrap_err().contains("'abc'"));
    }

    #[test]
    fn pem_without_a_certificate_is_refused() {
        assert!(parse_pem_certificates("hello").is_err());
        assert!(parse_pem_certificates("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").is_err());
    }
}
