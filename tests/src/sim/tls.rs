//! The simulator's certificates: a CA of its own, the API's leaf certificate signed by
//! it (SANs 127.0.0.1 and localhost) and swappable at run time, as a dr-provision
//! restarted with a new certificate would present; and a self-signed certificate for
//! the https file server, as a third-party archive server outside any CA would.

use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

const NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

pub struct SimCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl SimCa {
    pub fn new() -> anyhow::Result<SimCa> {
        let mut params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "context-engines test CA");
        let key = KeyPair::generate().context("CA key")?;
        let cert = params.self_signed(&key).context("self-signing the CA")?;
        Ok(SimCa { cert, key })
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf for the sim's names, signed by this CA.
    fn issue(&self) -> anyhow::Result<Arc<CertifiedKey>> {
        let params = CertificateParams::new(NAMES.map(String::from).to_vec()).context("leaf params")?;
        let key = KeyPair::generate().context("leaf key")?;
        let cert = params.signed_by(&key, &self.cert, &self.key).context("signing the leaf")?;
        certified(cert.der().clone(), &key)
    }
}

fn certified(der: CertificateDer<'static>, key: &KeyPair) -> anyhow::Result<Arc<CertifiedKey>> {
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::ring::default_provider().key_provider.load_private_key(private).context("loading the leaf key")?;
    Ok(Arc::new(CertifiedKey::new(vec![der], signing)))
}

/// The API's certificate, replaced by `rotate`.
#[derive(Debug)]
pub struct Swappable(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Swappable {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner())))
    }
}

impl Swappable {
    pub fn current_der(&self) -> CertificateDer<'static> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).cert[0].clone()
    }
}

/// The API's TLS: the CA, the swappable leaf, and the acceptor serving it.
pub struct ApiTls {
    pub ca: SimCa,
    pub leaf: Arc<Swappable>,
    pub acceptor: TlsAcceptor,
}

impl ApiTls {
    pub fn new() -> anyhow::Result<ApiTls> {
        let ca = SimCa::new()?;
        let leaf = Arc::new(Swappable(RwLock::new(ca.issue()?)));
        let acceptor = acceptor(Arc::clone(&leaf) as Arc<dyn ResolvesServerCert>)?;
        Ok(ApiTls { ca, leaf, acceptor })
    }

    /// A new leaf from the same CA for every later handshake.
    pub fn rotate(&self) -> anyhow::Result<()> {
        *self.leaf.0.write().unwrap_or_else(|p| p.into_inner()) = self.ca.issue()?;
        Ok(())
    }
}

/// An acceptor presenting one self-signed certificate for the sim's names.
pub fn self_signed_acceptor() -> anyhow::Result<TlsAcceptor> {
    let key = KeyPair::generate().context("key")?;
    let cert = CertificateParams::new(NAMES.map(String::from).to_vec()).context("params")?.self_signed(&key).context("self-signing")?;
    let leaf = certified(cert.der().clone(), &key)?;
    acceptor(Arc::new(Swappable(RwLock::new(leaf))))
}

fn acceptor(resolver: Arc<dyn ResolvesServerCert>) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("server TLS versions")?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // The servers speak HTTP/1.1 only; advertising it keeps h2-capable clients off h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // No resumption: a client resuming a session is shown no certificate, so a rotated
    // one would go unseen, where a really restarted dr-provision has lost its sessions.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
