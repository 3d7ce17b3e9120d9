//! The kernel's random source for what must not be guessed: session ids
//! (LL-HLS, RTMPT) and RTMPE's Diffie-Hellman keys.

/// Fills `buf` from getrandom(2); false if it fails (it fails only before
/// Linux 3.17, which io_uring rules out).
pub fn fill(buf: &mut [u8]) -> bool {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a live, writable buffer of `rest.len()` bytes
        // for the whole call, and getrandom(2) writes at most that many.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return false;
        }
    }
    true
}

/// `N` random bytes, or None (see [`fill`]).
pub fn bytes<const N: usize>() -> Option<[u8; N]> {
    let mut out = [0u8; N];
    fill(&mut out).then_some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn fills_the_whole_buffer_and_differs_each_time() {
        let (a, b) = (super::bytes::<64>().unwrap(), super::bytes::<64>().unwrap());
        assert_ne!(a, b);
        assert!(a.iter().any(|&x| x != 0));
        let mut empty = [];
        assert!(super::fill(&mut empty));
    }
}
