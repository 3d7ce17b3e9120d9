//! Recordings served across the cluster: a node asked for a recording it
//! does not hold fetches the answer from the node that does (the cluster's
//! index names it), through NATS.
//!
//! The asking node sends `trib.recget.<owner>` a path under `/recordings/`
//! (built from the parsed request, never the raw URL) and an optional
//! `Range`, with an inbox to answer on. The owner's control thread asks its
//! own media listener over loopback, with the node's internal credential
//! (the asking node applied the play rules), and sends the HTTP answer back
//! as it comes: a hello frame naming its acknowledgement subject, data
//! frames, an end frame. It keeps at most [`WINDOW`] frames unacknowledged,
//! so a slow viewer on the asking node slows the owner's reads instead of
//! filling a queue; a session whose acknowledgements stop for
//! [`SESSION_IDLE`] ends.

use super::*;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Frames in flight before the owner waits for an acknowledgement.
const WINDOW: u64 = 8;
/// Bytes of the answer in one frame.
const FRAME: usize = 256 * 1024;
/// A session with no acknowledgement (or no frame) for this long ends.
pub(super) const SESSION_IDLE: Duration = Duration::from_secs(10);
/// While its viewer does not read (a paused player), the asking node
/// repeats its last acknowledgement this often, so the session stays (the
/// viewer's own connection is cut by the write-stall limit if it never
/// reads again).
const KEEPALIVE: Duration = Duration::from_secs(2);
/// The longest path a request may name.
const MAX_PATH: usize = 4096;

#[derive(serde::Serialize, serde::Deserialize)]
struct Ask {
    path: String,
    range: Option<String>,
}

/// Whether `path` and `range` are what a node may ask another for: a path
/// under `/recordings/` and a byte range, with nothing that could end the
/// request line or add a header.
fn acceptable(ask: &Ask) -> bool {
    let clean = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
    ask.path.starts_with("/recordings/")
        && ask.path.len() <= MAX_PATH
        && clean(&ask.path)
        && ask.range.as_deref().is_none_or(|r| {
            r.len() <= 64
                && r.strip_prefix("bytes=")
                    .is_some_and(|v| v.bytes().all(|b| b.is_ascii_digit() || b == b'-'))
        })
}

impl<N: Nats> Control<N> {
    /// The asking side: relays `owner`'s answer to `path` into `chunks` (the
    /// raw HTTP answer, head included); the channel closes at its end, or
    /// at once when the owner does not answer.
    pub(super) async fn fetch_recording(
        &self,
        owner: String,
        path: String,
        range: Option<String>,
        chunks: mpsc::Sender<Bytes>,
    ) {
        let inbox = self.client.new_inbox();
        let Ok(mut sub) = self.client.subscribe(inbox.clone()).await else {
            return;
        };
        if self.client.flush().await.is_err() {
            return;
        }
        let body = serde_json::to_vec(&Ask { path, range }).unwrap_or_default();
        let subject = format!("trib.recget.{}", wire::token(&owner));
        if self
            .client
            .publish_with_reply(subject, inbox, body.into())
            .await
            .is_err()
        {
            return;
        }
        let mut ack = None;
        let mut taken = 0u64;
        loop {
            let Ok(Some(msg)) = tokio::time::timeout(SESSION_IDLE, sub.next()).await else {
                return;
            };
            let (kind, rest) = match msg.payload.first() {
                Some(k) => (*k, msg.payload.slice(1..)),
                None => return,
            };
            match kind {
                // Acknowledgements go to the holder's inbox, nowhere else.
                b'H' => {
                    ack = std::str::from_utf8(&rest)
                        .ok()
                        .filter(|s| {
                            s.starts_with("_INBOX.") && s.bytes().all(|b| b.is_ascii_graphic())
                        })
                        .map(str::to_owned)
                }
                b'D' => {
                    let mut send = std::pin::pin!(chunks.send(rest));
                    loop {
                        tokio::select! {
                            sent = &mut send => match sent {
                                Ok(()) => break,
                                Err(_) => return, // the viewer left
                            },
                            _ = tokio::time::sleep(KEEPALIVE) => {
                                if let Some(ack) = &ack {
                                    let n = Bytes::from(taken.to_string());
                                    let _ = self.client.publish(ack.clone(), n).await;
                                }
                            }
                        }
                    }
                    taken += 1;
                    if let Some(ack) = &ack {
                        let n = Bytes::from(taken.to_string());
                        let _ = self.client.publish(ack.clone(), n).await;
                    }
                }
                _ => return, // the end, or the owner's error
            }
        }
    }

    /// The owner's side: answers one node's ask from this node's media
    /// listener.
    pub(super) async fn serve_recording(&self, payload: &[u8], reply: String) {
        let end = |kind: u8, text: &str| {
            let mut b = vec![kind];
            b.extend_from_slice(text.as_bytes());
            Bytes::from(b)
        };
        let ask = match serde_json::from_slice::<Ask>(payload) {
            Ok(a) if acceptable(&a) => a,
            _ => {
                let _ = self.client.publish(reply, end(b'X', "a bad request")).await;
                return;
            }
        };
        let Some(media) = self.s.media_addr else {
            let _ = self
                .client
                .publish(reply, end(b'X', "no media listener here"))
                .await;
            return;
        };
        let ack_inbox = self.client.new_inbox();
        let Ok(mut acks) = self.client.subscribe(ack_inbox.clone()).await else {
            return;
        };
        let _ = self.client.flush().await;
        let mut socket = match tokio::net::TcpStream::connect(media).await {
            Ok(s) => s,
            Err(e) => {
                let _ = self.client.publish(reply, end(b'X', &e.to_string())).await;
                return;
            }
        };
        let sep = if ask.path.contains('?') { '&' } else { '?' };
        let range = ask
            .range
            .map(|r| format!("Range: {r}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET {}{sep}{}={} HTTP/1.1\r\nHost: tributary\r\nConnection: close\r\n{range}\r\n",
            ask.path,
            crate::output::pipeline::INTERNAL_PARAM,
            crate::output::pipeline::internal_secret()
        );
        if socket.write_all(request.as_bytes()).await.is_err() {
            return;
        }
        if self
            .client
            .publish(reply.clone(), end(b'H', &ack_inbox))
            .await
            .is_err()
        {
            return;
        }
        let (mut sent, mut acked) = (0u64, 0u64);
        // A frame fits the server's largest message.
        let mut buf = vec![0u8; FRAME.min(self.max_frame().saturating_sub(1)).max(1024)];
        loop {
            while sent >= acked + WINDOW {
                match tokio::time::timeout(SESSION_IDLE, acks.next()).await {
                    Ok(Some(m)) => {
                        let n = std::str::from_utf8(&m.payload)
                            .ok()
                            .and_then(|s| s.parse::<u64>().ok());
                        // Never past what was sent (a peer's number).
                        acked = acked.max(n.unwrap_or(acked).min(sent));
                    }
                    _ => return, // the asking node is gone
                }
            }
            let n = match socket.read(&mut buf[1..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf[0] = b'D';
            let frame = Bytes::copy_from_slice(&buf[..n + 1]);
            if self.client.publish(reply.clone(), frame).await.is_err() {
                return;
            }
            sent += 1;
        }
        let _ = self.client.publish(reply, end(b'E', "")).await;
    }
}

#[test]
fn only_recording_paths_and_byte_ranges_are_asked_for() {
    let ask = |path: &str, range: Option<&str>| Ask {
        path: path.to_owned(),
        range: range.map(str::to_owned),
    };
    assert!(acceptable(&ask("/recordings/live/cam.mp4?start=x", None)));
    assert!(acceptable(&ask(
        "/recordings/live/cam/a.mp4",
        Some("bytes=0-99")
    )));
    for (path, range) in [
        ("/live/cam.flv", None),
        ("/recordings/live/cam.mp4 HTTP/1.1\r\nX: y", None),
        ("/recordings/live/cam.mp4\r\n", None),
        ("/recordings/live/cam.mp4", Some("bytes=0-1\r\nX: y")),
        ("/recordings/live/cam.mp4", Some("items=0-1")),
    ] {
        assert!(!acceptable(&ask(path, range)), "{path:?} {range:?}");
    }
    assert!(!acceptable(&ask(
        &format!("/recordings/{}", "a".repeat(5000)),
        None
    )));
}
