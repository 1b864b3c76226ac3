//! The optional raw TCP echo port: every byte back until the client closes,
//! a long-lived connection a test can watch stay pinned to one backend.

use std::net::SocketAddr;

use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
    sync::watch,
};

use super::serve::{ACCEPT_BACKOFF, stopped};

/// Accepts echo connections until shutdown begins. The connections it spawns
/// are detached on purpose: they outlive shutdown (see Shutdown in the
/// `demo_backend` docs).
pub(super) async fn accept_echo(listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(echo(stream, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "echo accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

async fn echo(mut stream: TcpStream, peer: SocketAddr) {
    let (mut reader, mut writer) = stream.split();
    match tokio::io::copy(&mut reader, &mut writer).await {
        Ok(bytes) => {
            // Pass the client's EOF on, so it knows everything came back.
            let _ = writer.shutdown().await;
            tracing::debug!(%peer, bytes, "echo connection closed");
        }
        Err(e) => tracing::debug!(%peer, error = %e, "echo connection failed"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt as _;

    use super::*;
    use crate::demo_backend::{Role, serve::GRACE_PERIOD, test_client::Backend};

    #[tokio::test]
    async fn the_echo_port_sends_every_byte_back_until_eof() {
        let backend = Backend::start_with(Role::Live, 0, true, GRACE_PERIOD).await;
        let mut stream = TcpStream::connect(backend.echo.unwrap()).await.unwrap();
        stream.write_all(b"hello").await.unwrap();
        let mut buf = [0; 5];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");

        let payload: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let (mut reader, mut writer) = stream.into_split();
        let sent = payload.clone();
        let writing = tokio::spawn(async move {
            writer.write_all(&sent).await.unwrap();
            writer.shutdown().await.unwrap();
        });
        let mut echoed = Vec::new();
        reader.read_to_end(&mut echoed).await.unwrap();
        writing.await.unwrap();
        assert_eq!(echoed, payload);
    }

    #[tokio::test]
    async fn echo_connections_outlive_shutdown_but_new_ones_are_refused() {
        let mut backend = Backend::start_with(Role::Live, 0, true, GRACE_PERIOD).await;
        let echo_addr = backend.echo.unwrap();
        let mut stream = TcpStream::connect(echo_addr).await.unwrap();
        backend.shut_down();
        tokio::time::timeout(Duration::from_secs(5), &mut backend.task)
            .await
            .expect("serve did not return")
            .unwrap()
            .unwrap();

        stream.write_all(b"still here").await.unwrap();
        let mut buf = [0; 10];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"still here");
        assert!(TcpStream::connect(echo_addr).await.is_err());
    }
}
