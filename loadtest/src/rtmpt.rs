//! RTMPT for the load tool: RTMP tunnelled in HTTP, the way ffmpeg's
//! `rtmpt://` client does it. One keep-alive HTTP connection per client;
//! `POST /open/1` gives the session id; what the session writes goes in a
//! `POST /send/ID/SEQ` body, and a read with nothing buffered polls with
//! `POST /idle/ID/SEQ`, waiting [`IDLE_WAIT`] after an answer that carried
//! no RTMP bytes (ffmpeg waits 50 ms). Each answer's first byte is the
//! server's polling interval, skipped; the rest is RTMP bytes for the
//! session. One request is in flight at a time, as with ffmpeg.

use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The wait after an answer with no RTMP bytes, as ffmpeg's client.
pub const IDLE_WAIT: Duration = Duration::from_millis(50);

/// The largest answer head taken.
const MAX_HEAD: usize = 8 * 1024;

/// The largest answer body taken.
const MAX_BODY: usize = 64 * 1024 * 1024;

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("rtmpt: {what}"))
}

pub struct Tunnel {
    socket: TcpStream,
    host: String,
    id: String,
    seq: u64,
    /// Answer bytes read past the current answer (the next head).
    input: BytesMut,
    /// RTMP bytes from answers not yet read by the session.
    pending: BytesMut,
}

impl Tunnel {
    /// Opens a session on `socket` (connected to the media listener).
    pub async fn open(socket: TcpStream, host: &str) -> io::Result<Tunnel> {
        let mut t = Tunnel {
            socket,
            host: host.to_owned(),
            id: String::new(),
            seq: 0,
            input: BytesMut::with_capacity(16 * 1024),
            pending: BytesMut::new(),
        };
        let body = t.request("/open/1", &[0]).await?;
        let id = std::str::from_utf8(&body)
            .map_err(|_| bad("the session id is not text"))?
            .trim_end();
        if id.is_empty() || id.len() > 64 {
            return Err(bad("no session id"));
        }
        t.id = id.to_owned();
        Ok(t)
    }

    /// One request and its answer's body.
    async fn request(&mut self, path: &str, body: &[u8]) -> io::Result<BytesMut> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nAccept: */*\r\nConnection: keep-alive\r\nContent-Type: application/x-fcs\r\nUser-Agent: Shockwave Flash\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        self.socket.write_all(head.as_bytes()).await?;
        self.socket.write_all(body).await?;
        // The answer's head.
        let end = loop {
            if let Some(at) = self.input.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if self.input.len() > MAX_HEAD {
                return Err(bad("answer head too large"));
            }
            if self.socket.read_buf(&mut self.input).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        };
        let head = self.input.split_to(end);
        let text = std::str::from_utf8(&head).map_err(|_| bad("answer head not text"))?;
        if !text.starts_with("HTTP/1.1 200 ") {
            let status = text.lines().next().unwrap_or("").to_owned();
            return Err(bad(&format!("answered {status}")));
        }
        let len: usize = text
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .ok_or_else(|| bad("answer without Content-Length"))?;
        if len > MAX_BODY {
            return Err(bad("answer body too large"));
        }
        while self.input.len() < len {
            if self.socket.read_buf(&mut self.input).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.input.split_to(len))
    }

    /// A `send`, `idle` or `close` exchange; its RTMP bytes join `pending`.
    /// Returns how many it carried.
    async fn exchange(&mut self, cmd: &str, body: &[u8]) -> io::Result<usize> {
        let path = format!("/{cmd}/{}/{}", self.id, self.seq);
        self.seq += 1;
        let mut answer = self.request(&path, body).await?;
        if answer.is_empty() {
            return Err(bad("an answer without its polling byte"));
        }
        answer.advance(1);
        let n = answer.len();
        self.pending.extend_from_slice(&answer);
        Ok(n)
    }

    /// Sends RTMP bytes (one `/send`).
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.exchange("send", bytes).await.map(|_| ())
    }

    /// RTMP bytes already received, if any, without asking the server.
    pub fn read_buffered(&mut self, buf: &mut [u8]) -> usize {
        let n = self.pending.len().min(buf.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.advance(n);
        n
    }

    /// RTMP bytes: buffered ones, else polls until some come.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.read_buffered(buf);
            if n > 0 {
                return Ok(n);
            }
            if self.exchange("idle", &[0]).await? == 0 {
                tokio::time::sleep(IDLE_WAIT).await;
            }
        }
    }

    /// Ends the session (`/close`).
    pub async fn close(&mut self) {
        let _ = self.exchange("close", &[0]).await;
    }
}

/// What an RTMP client connection runs over.
pub enum Transport {
    Tcp(TcpStream),
    Tunnel(Box<Tunnel>),
}

impl Transport {
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.read(buf).await,
            Transport::Tunnel(t) => t.read(buf).await,
        }
    }

    /// For a `select!` beside writes: a TCP read, or a tunnel's buffered
    /// bytes (its requests are made by writes and reads, one at a time,
    /// so this never starts one: it waits forever when nothing is
    /// buffered, and a cancelled wait loses nothing).
    pub async fn read_alongside_writes(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.read(buf).await,
            Transport::Tunnel(t) => match t.read_buffered(buf) {
                0 => std::future::pending().await,
                n => Ok(n),
            },
        }
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.write_all(bytes).await,
            Transport::Tunnel(t) => t.write_all(bytes).await,
        }
    }

    /// Half-closes a TCP connection; closes a tunnel's session.
    pub async fn shutdown(&mut self) {
        match self {
            Transport::Tcp(s) => {
                let _ = s.shutdown().await;
            }
            Transport::Tunnel(t) => t.close().await,
        }
    }
}
