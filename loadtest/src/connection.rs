//! One RTMP client connection's plumbing: a TCP connect with a deadline,
//! bytes pumped between the socket and the sans-IO `ClientSession`, the
//! setup (connect → createStream → publish or play) with a deadline, and
//! failures turned into short reasons that group well in a report (the
//! kind of I/O error, the server's status code; never a peer's free text
//! beyond its status description).

use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tributary::protocol::client::{ClientConfig, ClientError, ClientEvent, ClientSession, Role};

use crate::rtmpt::{Transport, Tunnel};
use crate::target::Target;

/// Bytes read from the socket at a time (and kept per connection).
pub const READ_BUFFER_BYTES: usize = 64 * 1024;

pub struct RtmpConnection {
    pub socket: Transport,
    pub session: ClientSession,
    out: BytesMut,
    buf: Box<[u8]>,
    /// Unconsumed input: `buf[start..end]`.
    start: usize,
    end: usize,
}

/// Why a connection failed, as it goes in the report.
pub fn io_reason(stage: &str, e: &std::io::Error) -> String {
    format!("{stage}: {:?}", e.kind())
}

pub fn protocol_reason(e: &ClientError) -> String {
    // Keep the variant, not the numbers, so reasons group.
    let text = e.to_string();
    let short = text.split(':').next().unwrap_or(&text);
    format!("protocol: {short}")
}

impl RtmpConnection {
    /// Connects and runs the setup until publish or play has started.
    /// `stream_name` is the key; `seed` makes each handshake distinct.
    pub async fn open(
        target: &Target,
        role: Role,
        stream_name: &str,
        seed: u64,
        deadline: Instant,
    ) -> Result<Self, String> {
        let socket = match timeout_at(deadline, TcpStream::connect(target.addr)).await {
            Err(_) => return Err("connect: timed out".into()),
            Ok(Err(e)) => return Err(io_reason("connect", &e)),
            Ok(Ok(s)) => s,
        };
        let _ = socket.set_nodelay(true);
        let socket = if target.url.tunnel {
            let host = format!("{}:{}", target.url.host, target.url.port);
            match timeout_at(deadline, Tunnel::open(socket, &host)).await {
                Err(_) => return Err("rtmpt open: timed out".into()),
                Ok(Err(e)) => return Err(io_reason("rtmpt open", &e)),
                Ok(Ok(t)) => Transport::Tunnel(Box::new(t)),
            }
        } else {
            Transport::Tcp(socket)
        };
        let config = ClientConfig::new(role, &target.tc_url, &target.url.app, stream_name);
        let mut conn = Self {
            socket,
            session: ClientSession::new(config, 0, seed),
            out: BytesMut::with_capacity(16 * 1024),
            buf: vec![0u8; READ_BUFFER_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
        };
        conn.setup(deadline).await?;
        Ok(conn)
    }

    async fn setup(&mut self, deadline: Instant) -> Result<(), String> {
        loop {
            self.flush()
                .await
                .map_err(|e| io_reason("setup write", &e))?;
            if self.start == self.end {
                match timeout_at(deadline, self.read()).await {
                    Err(_) => return Err("setup: timed out".into()),
                    Ok(Err(e)) => return Err(io_reason("setup read", &e)),
                    Ok(Ok(0)) => return Err("setup: closed by server".into()),
                    Ok(Ok(_)) => {}
                }
            }
            let mut started = false;
            let mut rejected = None;
            self.feed(|event| match event {
                ClientEvent::ConnectRejected { description } => {
                    rejected = Some(format!("connect rejected: {description}"));
                    false
                }
                ClientEvent::StreamRejected { code, .. } => {
                    rejected = Some(format!("rejected: {code}"));
                    false
                }
                ClientEvent::PublishStarted { .. } | ClientEvent::PlayStarted { .. } => {
                    started = true;
                    false
                }
                _ => true,
            })
            .map_err(|e| protocol_reason(&e))?;
            if let Some(reason) = rejected {
                return Err(reason);
            }
            if started {
                self.flush()
                    .await
                    .map_err(|e| io_reason("setup write", &e))?;
                return Ok(());
            }
        }
    }

    /// Reads once into the buffer (which must be fully consumed).
    pub async fn read(&mut self) -> std::io::Result<usize> {
        debug_assert_eq!(self.start, self.end);
        let n = self.socket.read(&mut self.buf).await?;
        self.start = 0;
        self.end = n;
        Ok(n)
    }

    /// True when input is buffered that `feed` has not consumed yet.
    pub fn has_input(&self) -> bool {
        self.start < self.end
    }

    /// Hands buffered input to the session and each event to `on_event`,
    /// until the input is used up or `on_event` returns false (the rest
    /// stays buffered for the next call).
    pub fn feed(
        &mut self,
        mut on_event: impl FnMut(ClientEvent) -> bool,
    ) -> Result<(), ClientError> {
        while self.start < self.end {
            let used = self.session.handle_input(&self.buf[self.start..self.end])?;
            self.start += used;
            let mut go_on = true;
            while let Some(event) = self.session.poll_event() {
                go_on &= on_event(event);
            }
            if !go_on {
                return Ok(());
            }
            if used == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Writes whatever the session has to send; returns the byte count.
    pub async fn flush(&mut self) -> std::io::Result<usize> {
        self.out.clear();
        let n = self.session.poll_transmit(&mut self.out);
        if n > 0 {
            self.socket.write_all(&self.out).await?;
        }
        Ok(n)
    }

    /// Ends the stream politely (FCUnpublish/deleteStream), half-closes, and
    /// reads until the server closes (at most `linger`), so that our close
    /// is a FIN the server reads after the last message, never a reset.
    pub async fn close(mut self, linger: Duration) {
        self.session.close_stream();
        if self.flush().await.is_err() {
            return;
        }
        self.socket.shutdown().await;
        if matches!(self.socket, Transport::Tunnel(_)) {
            // The session is closed: nothing more to read.
            return;
        }
        let deadline = Instant::now() + linger;
        loop {
            match timeout_at(deadline, self.socket.read(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => continue,
                _ => return,
            }
        }
    }
}
