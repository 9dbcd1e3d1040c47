//! Byte transports under a session: plain TCP, and WebSocket over TCP or TLS.
//!
//! A session only needs two things from a transport: "append whatever arrives to this
//! buffer" and "write these frames". WebSocket messages, binary or text, are just more
//! bytes for the one decoder; each outbound frame is one binary message, because old JS
//! SDKs mis-parse several packets in one message.

use std::future::Future;
use std::io;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// How much to reserve for a read when the buffer has no room. Small, because most
/// packets are small and idle connections should hold nothing.
const READ_CHUNK: usize = 1024;

/// What a session reads from and writes to.
pub(crate) trait Transport: Send + 'static {
    /// Waits for bytes and appends them to `buf`. `Ok(false)`: the peer closed.
    /// Cancel-safe: dropping the future loses no bytes.
    fn read_into(&mut self, buf: &mut BytesMut) -> impl Future<Output = io::Result<bool>> + Send;

    /// Writes `frames` in order, each a whole packet, and flushes.
    fn write_frames(&mut self, frames: &[Bytes]) -> impl Future<Output = io::Result<()>> + Send;

    /// Closes the connection, politely where the transport has a way to.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// Plain TCP: reads wait for readiness first, so an idle connection holds no buffer.
#[derive(Debug)]
pub(crate) struct TcpTransport {
    stream: TcpStream,
}

impl TcpTransport {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self { stream }
    }
}

impl Transport for TcpTransport {
    async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<bool> {
        loop {
            self.stream.readable().await?;
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            match self.stream.try_read_buf(buf) {
                Ok(0) => return Ok(false),
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    async fn write_frames(&mut self, frames: &[Bytes]) -> io::Result<()> {
        match frames {
            [] => Ok(()),
            [one] => self.stream.write_all(one).await,
            many => {
                // One syscall for a burst rather than one per packet.
                let mut joined = BytesMut::with_capacity(many.iter().map(Bytes::len).sum());
                for f in many {
                    joined.extend_from_slice(f);
                }
                self.stream.write_all(&joined).await
            }
        }
    }

    async fn close(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// WebSocket over any byte stream (TCP for WS, TLS for WSS).
#[derive(Debug)]
pub(crate) struct WsTransport<S> {
    ws: WebSocketStream<S>,
}

impl<S> WsTransport<S> {
    pub(crate) fn new(ws: WebSocketStream<S>) -> Self {
        Self { ws }
    }
}

fn ws_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for WsTransport<S> {
    async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<bool> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Binary(data))) => {
                    buf.extend_from_slice(&data);
                    return Ok(true);
                }
                Some(Ok(Message::Text(text))) => {
                    buf.extend_from_slice(text.as_bytes());
                    return Ok(true);
                }
                // tungstenite answers pings itself; pongs and raw frames carry nothing for us.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(_))) | None => return Ok(false),
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => return Ok(false),
                Some(Err(e)) => return Err(ws_io(e)),
            }
        }
    }

    async fn write_frames(&mut self, frames: &[Bytes]) -> io::Result<()> {
        for frame in frames {
            self.ws.feed(Message::Binary(frame.clone())).await.map_err(ws_io)?;
        }
        self.ws.flush().await.map_err(ws_io)
    }

    async fn close(&mut self) {
        let _ = self.ws.close(None).await;
    }
}
