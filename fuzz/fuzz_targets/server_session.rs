//! A server session fed a real handshake and then arbitrary bytes, with
//! every request accepted (the path that reaches the most code): it must
//! return events or an error, never panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tributary::protocol::server::{ServerConfig, ServerEvent, ServerSession};

fuzz_target!(|data: &[u8]| {
    let mut server = ServerSession::new(ServerConfig::default(), 0, 1);
    let mut input = vec![3u8];
    input.extend_from_slice(&[0u8; 1536 * 2]);
    input.extend_from_slice(data);
    let mut rest = &input[..];
    let mut out = BytesMut::new();
    let mut reject = false;
    while !rest.is_empty() {
        let n = match server.handle_input(rest) {
            Ok(n) => n,
            Err(_) => break,
        };
        rest = &rest[n..];
        let mut progressed = n > 0;
        while let Some(event) = server.poll_event() {
            progressed = true;
            // Alternate accepting and rejecting to reach both answers.
            reject = !reject;
            match event {
                ServerEvent::ConnectRequest(_) => server.accept_connect(),
                ServerEvent::PublishRequest { stream_id, .. } if reject => {
                    server.reject_publish(stream_id, "NetStream.Publish.BadName", "taken")
                }
                ServerEvent::PublishRequest { stream_id, .. } => server.accept_publish(stream_id),
                ServerEvent::PlayRequest { stream_id, .. } if reject => {
                    server.reject_play(stream_id, "NetStream.Play.StreamNotFound", "none")
                }
                ServerEvent::PlayRequest { stream_id, .. } => {
                    server.accept_play(stream_id);
                    server.notify_unpublish(stream_id);
                    server.notify_publish(stream_id);
                }
                _ => {}
            }
        }
        if !progressed {
            break;
        }
        out.clear();
        server.poll_transmit(&mut out);
    }
});
