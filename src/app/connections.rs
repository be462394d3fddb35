//! The connections the gRPC server writes to, plain or TLS, each wrapped in
//! `Unvectored` so that a unary answer leaves in one write.
//!
//! HTTP/2 (h2) buffers a response's frames and writes them when the connection
//! task flushes. On a socket that says it takes vectored writes, h2 does not
//! copy a DATA payload of more than 256 bytes into its buffer but chains it,
//! and holds every later frame until that chain is written. An IssueLink
//! answer (its URL alone is a few hundred bytes) then went out as two
//! `writev`s, headers and data, then the trailers: 1.7-2 writes a response
//! against 1.0 for a no-op, a quarter of the server's CPU under load
//! (docs/BENCHMARKS.md). On a socket that says it does not, h2 copies payloads
//! up to 1,024 bytes and the whole answer (headers, data, trailers) is one
//! write; larger payloads (a page of ListLinks) are still chained.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// A connection that tells its writer it takes no vectored writes; everything
/// else is the inner connection's, its peer's address and certificates too.
#[derive(Debug)]
pub struct Unvectored<T>(pub T);

impl<T: AsyncRead + Unpin> AsyncRead for Unvectored<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Unvectored<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        // Not called by a writer that asks `is_write_vectored` first; for
        // one that does not, the inner connection's own.
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<T: Connected> Connected for Unvectored<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What h2 reads to choose between chaining and copying; the rest passes
    /// through unchanged (bytes both ways, the peer's address).
    #[tokio::test]
    async fn a_connection_says_it_takes_no_vectored_writes_and_passes_the_rest_through() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(b"ping").await.unwrap();
            let mut back = [0u8; 4];
            c.read_exact(&mut back).await.unwrap();
            (c.local_addr().unwrap(), back)
        });
        let (tcp, _) = listener.accept().await.unwrap();
        assert!(tcp.is_write_vectored(), "the plain socket does");
        let mut conn = Unvectored(tcp);
        assert!(!conn.is_write_vectored());
        let mut got = [0u8; 4];
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        conn.write_all(b"pong").await.unwrap();
        let (client_addr, back) = client.await.unwrap();
        assert_eq!(&back, b"pong");
        assert_eq!(conn.connect_info().remote_addr(), Some(client_addr));
    }
}
