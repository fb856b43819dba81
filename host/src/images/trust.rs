//! Whom the plugin believes when it downloads an image archive over https. Without a
//! Checksum, whoever answers for the host chooses the image every agent of that Context
//! runs, with host networking and a machine token; so certificates are verified against
//! the system's CA store (`SSL_CERT_FILE`/`SSL_CERT_DIR` honoured), and only the hosts
//! an operator lists in `insecure-hosts` are taken on trust.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::params;
use crate::tls::{self, Policy};

#[derive(Debug)]
pub struct DownloadTrust {
    /// The system's CAs, or why there are none usable.
    verifier: Result<Arc<WebPkiServerVerifier>, String>,
    insecure: RwLock<BTreeSet<String>>,
    /// Hosts whose unchecked certificate was already logged.
    told: Mutex<BTreeSet<String>>,
}

impl DownloadTrust {
    pub fn from_system() -> DownloadTrust {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!("reading the system's CA certificates: {error}");
        }
        let mut roots = rustls::RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(found.certs);
        let verifier = if added == 0 {
            Err("the system has no CA certificates (install ca-certificates, or set SSL_CERT_FILE)".to_string())
        } else {
            tls::webpki_verifier(roots)
        };
        DownloadTrust { verifier, insecure: RwLock::default(), told: Mutex::default() }
    }

    pub fn set_insecure_hosts(&self, hosts: &[String]) {
        *self.insecure.write().unwrap_or_else(|p| p.into_inner()) = hosts.iter().cloned().collect();
    }

    pub fn is_insecure(&self, host: &str) -> bool {
        self.insecure.read().unwrap_or_else(|p| p.into_inner()).contains(&host.to_ascii_lowercase())
    }

    pub fn client_config(self: &Arc<Self>) -> rustls::ClientConfig {
        tls::client_config(Arc::clone(self))
    }
}

/// An `insecure-hosts` entry: a host name or IP address, no scheme, port or path (a
/// certificate belongs to a host, not to one of its ports).
pub fn insecure_host(entry: &str) -> Result<String, String> {
    let host = entry.trim().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    if host.parse::<IpAddr>().is_ok() {
        return Ok(host);
    }
    let label_ok = |label: &str| !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !host.is_empty() && host.split('.').all(label_ok) {
        return Ok(host);
    }
    Err(format!("'{entry}' is not a host name or IP address (give the host alone: no scheme, port or path); in {}", params::INSECURE_HOSTS))
}

fn host_of(server: &ServerName<'_>) -> String {
    match server {
        ServerName::DnsName(name) => name.as_ref().to_ascii_lowercase(),
        ServerName::IpAddress(ip) => IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

impl Policy for DownloadTrust {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), String> {
        let host = host_of(server);
        if self.is_insecure(&host) {
            if self.told.lock().unwrap_or_else(|p| p.into_inner()).insert(host.clone()) {
                tracing::warn!("not checking the certificate of {host}: it is listed in {}", params::INSECURE_HOSTS);
            }
            return Ok(());
        }
        let verifier = self.verifier.as_ref().map_err(String::clone)?;
        tls::verify_with(verifier, end_entity, intermediates, server, now).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_host_entries_are_hosts_alone() {
        assert_eq!(insecure_host("Files.Example.com"), Ok("files.example.com".to_string()));
        assert_eq!(insecure_host("[::1]"), Ok("::1".to_string()));
        assert_eq!(insecure_host("127.0.0.1"), Ok("127.0.0.1".to_string()));
        for bad in ["127.0.0.1:8443", "https://x", "x/y", "", "a..b"] {
            let err = insecure_host(bad).unwrap_err();
            assert!(err.contains(params::INSECURE_HOSTS), "{err}");
        }
    }
}
