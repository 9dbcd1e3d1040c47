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

    /// The login succeeded: lift whatever cap held the bytes read before it.
    fn logged_in(&mut self) {}
}

/// A byte stream that yields at most `remaining` bytes until [`Capped::lift`]: what a
/// WebSocket client may send before its login (the upgrade request and the CONNECT).
/// The WebSocket layer buffers a whole message before handing it on, so a cap on
/// the packet decoder alone would come too late; this one closes the connection
/// (a read error) the moment a client sends more than a login needs.
#[derive(Debug)]
pub(crate) struct Capped<S> {
    inner: S,
    remaining: usize,
}

impl<S> Capped<S> {
    pub(crate) fn new(inner: S, limit: usize) -> Self {
        Self { inner, remaining: limit }
    }

    pub(crate) fn lift(&mut self) {
        self.remaining = usize::MAX;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if self.remaining == 0 {
            return std::task::Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "more bytes before login than a login needs",
            )));
        }
        if self.remaining == usize::MAX {
            return std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let allowed = buf.remaining().min(self.remaining);
        let mut limited = tokio::io::ReadBuf::new(buf.initialize_unfilled_to(allowed));
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, &mut limited);
        let read = limited.filled().len();
        buf.advance(read);
        self.remaining -= read;
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capped<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
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
                // Grow with what has arrived (doubling a large frame's buffer as its
                // bytes come in), never with what a header announces.
                buf.reserve(READ_CHUNK.max(buf.len()));
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

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for WsTransport<Capped<S>> {
    fn logged_in(&mut self) {
        self.ws.get_mut().lift();
    }

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
