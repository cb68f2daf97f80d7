//! The last bytes of a container's output, so a failing caller can show them.

use std::collections::VecDeque;

/// Keeps the last `cap` bytes pushed into it.
#[derive(Debug, Clone)]
pub struct OutputTail {
    buf: VecDeque<u8>,
    cap: usize,
}

impl OutputTail {
    pub fn new(cap: usize) -> Self {
        OutputTail {
            buf: VecDeque::with_capacity(cap.min(1 << 20)),
            cap,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        let bytes = &bytes[bytes.len().saturating_sub(self.cap)..];
        let overflow = (self.buf.len() + bytes.len()).saturating_sub(self.cap);
        self.buf.drain(..overflow);
        self.buf.extend(bytes);
    }

    pub fn into_vec(self) -> Vec<u8> {
        self.buf.into()
    }
}

#[cfg(test)]
mod tests {
    use super::OutputTail;

    #[test]
    fn keeps_the_last_bytes() {
        let mut t = OutputTail::new(4);
        t.push(b"ab");
        t.push(b"cd");
        t.push(b"e");
        assert_eq!(t.clone().into_vec(), b"bcde");
        t.push(b"0123456789");
        assert_eq!(t.into_vec(), b"6789");
    }
}
