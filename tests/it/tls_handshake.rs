//! TLS handshakes are bounded: a client that connects and never says hello is
//! dropped after the timeout, and one address cannot hold more than its share
//! of handshakes in progress while another address still gets served.

use crate::pki::{self, Ca};
use presignd::tls::{self, HandshakeLimits};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_stream::StreamExt;

const LIMITS: HandshakeLimits = HandshakeLimits {
    timeout: Duration::from_millis(1500),
    per_peer: 2,
    total: 64,
};

/// How long until the server closes `tcp` (EOF or reset), reading nothing.
async fn closed_after(tcp: &mut TcpStream, at_most: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(at_most, tcp.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => start.elapsed(),
        Ok(Ok(n)) => panic!("the server sent {n} bytes to a client that said nothing"),
        Err(_) => panic!("the connection was still open after {at_most:?}"),
    }
}

async fn connect_from(ip: [u8; 4], port: u16) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind((ip, 0).into()).unwrap();
    socket.connect(([127, 0, 0, 1], port).into()).await.unwrap()
}

#[tokio::test]
async fn silent_clients_are_dropped_after_the_timeout_and_capped_per_address() {
    let ca = Ca::new("presignd handshake CA");
    let dir = pki::temp_dir();
    let server = ca.server();
    let (cert, key) = (dir.join("s.pem"), dir.join("s.key"));
    std::fs::write(&cert, &server.cert).unwrap();
    std::fs::write(&key, &server.key).unwrap();
    let setup = tls::load(&cert, &key, None).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut established = tls::incoming_with(listener, setup.into(), LIMITS);

    // Two silent connections from 127.0.0.1 take its two handshake slots...
    let mut silent = Vec::new();
    for _ in 0..LIMITS.per_peer {
        silent.push(connect_from([127, 0, 0, 1], port).await);
    }
    let started = Instant::now();
    // ...so its third is closed at once, long before any timeout.
    let mut third = connect_from([127, 0, 0, 1], port).await;
    let took = closed_after(&mut third, LIMITS.timeout / 2).await;
    assert!(took < LIMITS.timeout / 2, "{took:?}");

    // Another address completes a handshake meanwhile.
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
        .unwrap();
    let client =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = connect_from([127, 0, 0, 2], port).await;
    let _client = TlsConnector::from(Arc::new(client))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("a handshake from another address succeeds");
    let tls = tokio::time::timeout(Duration::from_secs(1), established.next())
        .await
        .expect("the server yields the established connection")
        .unwrap()
        .unwrap();
    assert_eq!(
        tls.get_ref().0.peer_addr().unwrap().ip().to_string(),
        "127.0.0.2"
    );

    // The silent ones are dropped once the timeout passed, not before.
    for tcp in &mut silent {
        closed_after(tcp, LIMITS.timeout * 3).await;
    }
    let waited = started.elapsed();
    assert!(
        waited >= LIMITS.timeout - Duration::from_millis(200),
        "dropped after {waited:?}, before the timeout"
    );
    // Their slots are free again: 127.0.0.1 may connect, and is timed out too.
    let mut again = connect_from([127, 0, 0, 1], port).await;
    let took = closed_after(&mut again, LIMITS.timeout * 3).await;
    assert!(
        took >= LIMITS.timeout - Duration::from_millis(200),
        "{took:?}"
    );
}

#[test]
fn the_default_handshake_limits_are_a_few_seconds_and_a_small_share_per_address() {
    let d = HandshakeLimits::default();
    assert!(d.timeout >= Duration::from_secs(2) && d.timeout <= Duration::from_secs(10));
    assert!(d.per_peer >= 2 && d.per_peer * 8 <= d.total);
}
