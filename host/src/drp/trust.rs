//! Whom the plugin believes to be dr-provision. The API and the websocket carry the
//! plugin's superuser token, so a server that merely completes a handshake is not
//! enough. dr-provision's certificate is usually self-signed, so the default is trust
//! on first use: the certificate seen at the first connection is pinned for the life of
//! the process and any other one is refused. `drp-cert-sha256` (an exact certificate)
//! and `drp-ca` (a CA whose certificates are believed, name and validity checked) make
//! that decision from the start instead; with a CA a rotated certificate is accepted,
//! which is what a CA is for.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::params;
use crate::tls::{self, Policy};

/// The trust settings from the plugin's params.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrustSettings {
    /// `drp-ca`: the CA certificates dr-provision's certificate must chain to.
    pub ca: Vec<CertificateDer<'static>>,
    /// `drp-cert-sha256`: the one certificate dr-provision may present.
    pub cert_sha256: Option<String>,
}

impl TrustSettings {
    /// Reads both params; a PEM that holds no usable CA is refused here, not at the
    /// first connection.
    pub fn from_params(ca_pem: Option<&str>, cert_sha256: Option<&str>) -> Result<TrustSettings, params::ParamError> {
        let invalid = |name: &str, why: String| params::ParamError::Invalid { name: name.to_string(), why };
        let ca = match ca_pem {
            Some(pem) => tls::parse_pem_certificates(pem).map_err(|why| invalid(params::DRP_CA, why))?,
            None => Vec::new(),
        };
        if !ca.is_empty() {
            roots_verifier(&ca).map_err(|why| invalid(params::DRP_CA, why))?;
        }
        let cert_sha256 = cert_sha256.map(tls::parse_sha256).transpose().map_err(|why| invalid(params::DRP_CERT_SHA256, why))?;
        Ok(TrustSettings { ca, cert_sha256 })
    }
}

fn roots_verifier(ca: &[CertificateDer<'static>]) -> Result<Arc<WebPkiServerVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca {
        roots.add(cert.clone()).map_err(|e| format!("a certificate is not a usable CA: {e}"))?;
    }
    tls::webpki_verifier(roots)
}

/// The decisions, shared by every connection to dr-provision.
#[derive(Debug, Default)]
pub struct DrpTrust {
    mode: RwLock<Mode>,
    /// Trust on first use: the fingerprint seen first.
    pinned: Mutex<Option<String>>,
    /// Refusals already logged, so a reconnect loop does not repeat itself.
    told: Mutex<BTreeSet<String>>,
}

#[derive(Debug, Default)]
struct Mode {
    ca: Option<Arc<WebPkiServerVerifier>>,
    cert_sha256: Option<String>,
}

impl DrpTrust {
    /// Applies the params; later connections are judged by them.
    pub fn configure(&self, settings: &TrustSettings) {
        let ca = if settings.ca.is_empty() { None } else { roots_verifier(&settings.ca).ok() };
        *self.mode.write().unwrap_or_else(|p| p.into_inner()) = Mode { ca, cert_sha256: settings.cert_sha256.clone() };
    }

    pub fn client_config(self: &Arc<Self>) -> rustls::ClientConfig {
        tls::client_config(Arc::clone(self))
    }

    fn decide(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), String> {
        let seen = tls::fingerprint(end_entity);
        let mode = self.mode.read().unwrap_or_else(|p| p.into_inner());
        if let Some(wanted) = &mode.cert_sha256
            && *wanted != seen
        {
            return Err(format!(
                "dr-provision presented a certificate with SHA-256 {seen}, not the {wanted} that {} names",
                params::DRP_CERT_SHA256
            ));
        }
        if let Some(ca) = &mode.ca {
            return tls::verify_with(ca, end_entity, intermediates, server, now)
                .map_err(|e| format!("dr-provision's certificate (SHA-256 {seen}) does not verify against {}: {e}", params::DRP_CA));
        }
        if mode.cert_sha256.is_some() {
            return Ok(());
        }
        let mut pinned = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
        match pinned.as_deref() {
            None => {
                tracing::info!(
                    "dr-provision's certificate (SHA-256 {seen}) is pinned for the life of this process; set {} or {} to verify it from the start",
                    params::DRP_CERT_SHA256,
                    params::DRP_CA
                );
                *pinned = Some(seen);
                Ok(())
            }
            Some(first) if first == seen => Ok(()),
            Some(first) => Err(format!(
                "dr-provision's certificate changed: it presented SHA-256 {seen}, but {first} was pinned at the first connection; refused (if the change is expected, restart the plugin or set {})",
                params::DRP_CERT_SHA256
            )),
        }
    }

    /// Logs a refusal once per distinct reason.
    fn tell(&self, why: &str) {
        if self.told.lock().unwrap_or_else(|p| p.into_inner()).insert(why.to_string()) {
            tracing::error!("{why}");
        }
    }
}

impl Policy for DrpTrust {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), String> {
        self.decide(end_entity, intermediates, server, now).inspect_err(|why| self.tell(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(trust: &DrpTrust, cert: &[u8]) -> Result<(), String> {
        let server = ServerName::try_from("127.0.0.1").expect("a name");
        trust.decide(&CertificateDer::from(cert.to_vec()), &[], &server, UnixTime::now())
    }

    #[test]
    fn the_first_certificate_is_pinned_and_another_refused() {
        let trust = DrpTrust::default();
        assert_eq!(check(&trust, b"first"), Ok(()));
        assert_eq!(check(&trust, b"first"), Ok(()));
        let refused = check(&trust, b"second").unwrap_err();
        assert!(refused.contains("changed") && refused.contains(&tls::fingerprint(&CertificateDer::from(b"first".to_vec()))), "{refused}");
    }

    #[test]
    fn a_configured_fingerprint_decides_from_the_start() {
        let trust = DrpTrust::default();
        let wanted = tls::fingerprint(&CertificateDer::from(b"wanted".to_vec()));
        trust.configure(&TrustSettings { ca: Vec::new(), cert_sha256: Some(wanted) });
        assert!(check(&trust, b"other").unwrap_err().contains(params::DRP_CERT_SHA256));
        assert_eq!(check(&trust, b"wanted"), Ok(()));
    }

    #[test]
    fn a_ca_param_that_is_not_pem_is_refused_by_name() {
        let err = TrustSettings::from_params(Some("not a certificate"), None).unwrap_err();
        assert!(err.to_string().contains(params::DRP_CA), "{err}");
        let err = TrustSettings::from_params(None, Some("12:34")).unwrap_err();
        assert!(err.to_string().contains(params::DRP_CERT_SHA256), "{err}");
    }
}
