//! TLS for the gRPC server (rustls with ring), and client certificates as caller
//! identities (mTLS).
//!
//! With a client CA bundle, the handshake asks for a client certificate and
//! checks that the client holds its private key, but the certificate's chain,
//! validity period and usage are checked by the authenticator on each request
//! (`ClientCerts::identify`, cached per certificate). So an expired certificate
//! or one from another CA gets a precise UNAUTHENTICATED and an audit row,
//! rather than an opaque handshake failure that nobody records.

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{
    self, CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

const CACHE_LIMIT: usize = 4096;

/// Bounds on handshakes in progress, so a client that opens connections and
/// never finishes a handshake cannot pile up tasks or crowd out other peers.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeLimits {
    /// A handshake not done by then is dropped (a ClientHello never sent).
    pub timeout: Duration,
    /// Handshakes in progress from one IP address; past that, its new
    /// connections are closed at once.
    pub per_peer: usize,
    /// Handshakes in progress from everyone.
    pub total: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            per_peer: 16,
            total: 1024,
        }
    }
}

/// Handshakes in progress per IP address; a slot is given back when dropped.
#[derive(Default)]
struct PeerSlots(Mutex<HashMap<IpAddr, usize>>);

struct PeerSlot(Arc<PeerSlots>, IpAddr);

impl PeerSlots {
    fn take(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<PeerSlot> {
        let mut map = self.0.lock().expect("peer slots");
        let n = map.entry(ip).or_default();
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(PeerSlot(self.clone(), ip))
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.0.0.lock().expect("peer slots");
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
}

pub struct TlsSetup {
    pub acceptor: TlsAcceptor,
    /// Set when client certificates are accepted (`--client-ca`).
    pub client_certs: Option<Arc<ClientCerts>>,
}

/// The TLS settings in force, swapped whole when the certificate, key or client
/// CA is reloaded: connections established before keep theirs, new ones get
/// the new settings, nothing is dropped.
#[derive(Clone)]
pub struct LiveTls {
    acceptor: Arc<ArcSwap<TlsAcceptor>>,
    client_certs: Arc<ArcSwap<Option<Arc<ClientCerts>>>>,
}

impl LiveTls {
    pub fn new(setup: TlsSetup) -> Self {
        Self {
            acceptor: Arc::new(ArcSwap::from_pointee(setup.acceptor)),
            client_certs: Arc::new(ArcSwap::from_pointee(setup.client_certs)),
        }
    }

    pub fn swap(&self, setup: TlsSetup) {
        self.acceptor.store(Arc::new(setup.acceptor));
        self.client_certs.store(Arc::new(setup.client_certs));
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        (**self.acceptor.load()).clone()
    }

    pub fn client_certs(&self) -> Option<Arc<ClientCerts>> {
        (**self.client_certs.load()).clone()
    }
}

impl From<TlsSetup> for LiveTls {
    fn from(setup: TlsSetup) -> Self {
        Self::new(setup)
    }
}

/// Reads the server's certificate chain and key, and the client CA bundle.
pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> anyhow::Result<TlsSetup> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certs(cert).context("--tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("--tls-key: no PEM private key in {}", key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let (builder, client_certs) = match client_ca {
        None => (builder.with_no_client_auth(), None),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs(ca).context("--client-ca")? {
                roots
                    .add(c)
                    .with_context(|| format!("--client-ca: a certificate in {}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("--client-ca")?;
            let deferred = Arc::new(Deferred(verifier.clone()));
            let certs = ClientCerts {
                verifier,
                cache: Mutex::default(),
            };
            (
                builder.with_client_cert_verifier(deferred),
                Some(Arc::new(certs)),
            )
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .context("--tls-cert and --tls-key do not make a usable pair")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsSetup {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        client_certs,
    })
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", path.display()))?;
    if certs.is_empty() {
        bail!("no PEM certificate in {}", path.display());
    }
    Ok(certs)
}

/// Accepts TLS connections in the background (one task per handshake, so a slow
/// client does not hold up the others, within `HandshakeLimits::default()`) and
/// yields the established ones.
pub fn incoming(
    listener: TcpListener,
    tls: LiveTls,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    incoming_with(listener, tls, HandshakeLimits::default())
}

/// As `incoming`, with the given limits (tests shorten them).
pub fn incoming_with(
    listener: TcpListener,
    tls: LiveTls,
    limits: HandshakeLimits,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.total));
    let peers = Arc::new(PeerSlots::default());
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(peer_slot) = peers.take(peer.ip(), limits.per_peer) else {
                tracing::warn!(%peer, "too many TLS handshakes in progress from this address: connection closed");
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "too many TLS handshakes in progress: connection closed");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            // The settings in force now: a reload applies from the next connection.
            let (acceptor, tx) = (tls.acceptor(), tx.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(limits.timeout, acceptor.accept(tcp)).await;
                drop((slot, peer_slot));
                match handshake {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The handshake side: asks for a certificate and checks the proof of its
/// private key; leaves the chain to `ClientCerts::identify`.
#[derive(Debug)]
struct Deferred(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for Deferred {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        // Bearer tokens remain possible; a caller without either is refused
        // by the authenticator with UNAUTHENTICATED.
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
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

/// A verified client certificate: the names it may identify a caller by (URI
/// SANs, DNS SANs, then the subject CN) and when it stops being valid.
#[derive(Debug, Clone)]
pub struct CertIdentity {
    pub names: Vec<String>,
    not_after: i64,
}

/// Verifies client certificate chains against the client CA bundle.
pub struct ClientCerts {
    verifier: Arc<dyn ClientCertVerifier>,
    cache: Mutex<HashMap<[u8; 32], CertIdentity>>,
}

impl ClientCerts {
    /// The identity of a presented chain (end entity first), or why it is
    /// refused.
    pub fn identify(&self, chain: &[CertificateDer<'_>]) -> Result<CertIdentity, String> {
        let (end_entity, intermediates) = chain
            .split_first()
            .ok_or_else(|| "no certificate presented".to_owned())?;
        let digest: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        let now = UnixTime::now();
        let now_secs = now.as_secs() as i64;
        if let Some(id) = self.cache.lock().expect("cert cache").get(&digest)
            && now_secs < id.not_after
        {
            return Ok(id.clone());
        }
        self.verifier
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(describe)?;
        let id = names_of(end_entity)?;
        let mut cache = self.cache.lock().expect("cert cache");
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(digest, id.clone());
        Ok(id)
    }
}

fn describe(e: rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "expired".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not valid yet".to_owned()
            }
            CertificateError::UnknownIssuer => {
                "not issued by a trusted CA (--client-ca)".to_owned()
            }
            CertificateError::Revoked => "revoked".to_owned(),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "not valid for client authentication (extended key usage)".to_owned()
            }
            other => format!("invalid ({other:?})"),
        },
        other => format!("invalid ({other})"),
    }
}

fn names_of(der: &CertificateDer<'_>) -> Result<CertIdentity, String> {
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(der.as_ref()).map_err(|_| "unparseable".to_owned())?;
    let (mut uris, mut dns) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => uris.push(u.to_string()),
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                _ => {}
            }
        }
    }
    let cn = cert
        .subject()
        .iter_common_name()
        .filter_map(|a| a.as_str().ok().map(str::to_owned));
    let names: Vec<String> = uris.into_iter().chain(dns).chain(cn).collect();
    if names.is_empty() {
        return Err("names nobody: no URI or DNS subject alternative name, no CN".to_owned());
    }
    Ok(CertIdentity {
        names,
        not_after: cert.validity().not_after.timestamp(),
    })
}
