//! TLS on the ring's sockets (RTMPS, HTTPS media): the connection's
//! rustls session encrypts its queued output into records as the ring
//! gathers a send (`encrypt`), and decrypts the records the ring received
//! into plaintext for the connection task ([`decrypt`]). Both directions
//! sit here, beside the per-socket handle that holds the session.

use std::cell::RefCell;
use std::io::Write;

use bytes::Bytes;

use super::buffers::Lease;
use super::conn::Conn;
use crate::tls::RingTls;

/// Encrypts everything `conn` has queued (after the handshake) into TLS
/// records, with close_notify after the last message once the connection
/// is closing; None when there is nothing to send.
pub(super) fn encrypt(conn: &Conn, tls: &RefCell<RingTls>) -> Option<Bytes> {
    let mut tls = tls.borrow_mut();
    if !tls.is_handshaking() {
        while let Some(b) = conn.pop_output() {
            // The buffer limit is off (see `tls::RingTls`): all is taken.
            let _ = tls.writer().write_all(&b);
            conn.sent(b.len());
        }
        // Closing: close_notify goes after the last queued message.
        if conn.is_closed() && !conn.close_notified.replace(true) {
            tls.send_close_notify();
        }
    }
    let mut records = Vec::new();
    while tls.wants_write() {
        match tls.write_tls(&mut records) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    if records.is_empty() {
        return None;
    }
    conn.added(records.len());
    Some(Bytes::from(records))
}

/// Why TLS input could not be decrypted.
#[derive(Debug, thiserror::Error)]
pub enum TlsInputError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS input not taken")]
    Stuck,
}

/// Feeds received TLS records to rustls and appends the plaintext to
/// `plain`.
pub fn decrypt(
    tls: &RefCell<RingTls>,
    lease: &mut Lease,
    plain: &mut Vec<u8>,
) -> Result<(), TlsInputError> {
    let mut tls = tls.borrow_mut();
    while !lease.is_empty() {
        let mut input: &[u8] = lease;
        let before = input.len();
        tls.read_tls(&mut input)?;
        let used = before - input.len();
        lease.consume(used);
        let state = tls.process_new_packets()?;
        let n = state.plaintext_bytes_to_read();
        if n > 0 {
            let at = plain.len();
            plain.resize(at + n, 0);
            std::io::Read::read_exact(&mut tls.reader(), &mut plain[at..])?;
        }
        if used == 0 && n == 0 {
            return Err(TlsInputError::Stuck);
        }
    }
    Ok(())
}
