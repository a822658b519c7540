//! Finding the end of a `Transfer-Encoding: chunked` body without decoding it, so the fast path
//! can relay chunked bytes unchanged and still know when the message is over.

/// Where the scanner is in the chunked grammar (RFC 9112 7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading the hex chunk size.
    Size,
    /// After the size: extensions, up to CR.
    Extension,
    /// Expecting LF after the size line's CR.
    SizeLf,
    /// Inside chunk data; this many bytes left.
    Data,
    /// Expecting CR after chunk data.
    DataCr,
    /// Expecting LF after chunk data.
    DataLf,
    /// After the last (zero) chunk: at the start of a trailer line or the final CRLF.
    TrailerStart,
    /// Inside a trailer field line, up to CR.
    Trailer,
    /// Expecting LF ending a trailer line.
    TrailerLf,
    /// Expecting the final LF.
    EndLf,
    Done,
}

/// A malformed chunked body.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct ChunkError(pub &'static str);

/// Scans a chunked body fed in pieces.
#[derive(Clone, Debug)]
pub struct ChunkScanner {
    state: State,
    size: u64,
    size_digits: u8,
    remaining: u64,
    last: bool,
}

impl Default for ChunkScanner {
    fn default() -> Self {
        Self {
            state: State::Size,
            size: 0,
            size_digits: 0,
            remaining: 0,
            last: false,
        }
    }
}

impl ChunkScanner {
    /// Consumes `bytes`; returns `Some(n)` when the body ends after the first `n` of them.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, ChunkError> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.state {
                State::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.size_digits >= 15 {
                            return Err(ChunkError("chunk size too large"));
                        }
                        let d = (b as char).to_digit(16).unwrap_or(0);
                        self.size = self.size * 16 + u64::from(d);
                        self.size_digits += 1;
                    }
                    b';' | b' ' | b'\t' if self.size_digits > 0 => self.state = State::Extension,
                    b'\r' if self.size_digits > 0 => self.state = State::SizeLf,
                    _ => return Err(ChunkError("bad chunk size")),
                },
                State::Extension => {
                    if b == b'\r' {
                        self.state = State::SizeLf;
                    } else if b == b'\n' {
                        return Err(ChunkError("bare LF in chunk extension"));
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError("expected LF after chunk size"));
                    }
                    if self.size == 0 {
                        self.last = true;
                        self.state = State::TrailerStart;
                    } else {
                        self.remaining = self.size;
                        self.state = State::Data;
                    }
                    self.size = 0;
                    self.size_digits = 0;
                }
                State::Data => {
                    // Skip as much data as this piece holds in one step.
                    let take = (self.remaining as usize).min(bytes.len() - i);
                    self.remaining -= take as u64;
                    i += take;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError("expected CRLF after chunk data"));
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError("expected CRLF after chunk data"));
                    }
                    self.state = State::Size;
                }
                State::TrailerStart => {
                    self.state = if b == b'\r' { State::EndLf } else { State::Trailer };
                }
                State::Trailer => {
                    if b == b'\r' {
                        self.state = State::TrailerLf;
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError("expected LF after trailer"));
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError("expected final LF"));
                    }
                    self.state = State::Done;
                    return Ok(Some(i + 1));
                }
                State::Done => return Ok(Some(i)),
            }
            i += 1;
        }
        Ok(None)
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn scan_all(body: &[u8]) -> Result<Option<usize>, ChunkError> {
        ChunkScanner::default().feed(body)
    }

    #[test]
    fn ends() {
        assert_eq!(scan_all(b"0\r\n\r\n"), Ok(Some(5)));
        assert_eq!(scan_all(b"5\r\nhello\r\n0\r\n\r\nNEXT"), Ok(Some(15)));
        assert_eq!(scan_all(b"5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"), Ok(Some(29)));
        assert_eq!(scan_all(b"A\r\n0123456789\r\n0\r\n\r\n"), Ok(Some(20)));
        assert_eq!(scan_all(b"5\r\nhel"), Ok(None));
    }

    #[test]
    fn malformed() {
        assert!(scan_all(b"x\r\n").is_err());
        assert!(scan_all(b"5\r\nhelloXX").is_err());
        assert!(scan_all(b"\r\n").is_err());
        assert!(scan_all(b"fffffffffffffffff\r\n").is_err());
    }

    proptest! {
        #[test]
        fn any_split_finds_the_same_end(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..40), 0..6), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..5)) {
            let mut body = Vec::new();
            for c in &chunks {
                body.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                body.extend_from_slice(c);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n\r\n");
            let total = body.len();
            body.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(body.len())).collect();
            points.sort();
            let mut s = ChunkScanner::default();
            let mut start = 0;
            let mut end = None;
            for p in points.into_iter().chain([body.len()]) {
                if p < start { continue; }
                if let Some(n) = s.feed(&body[start..p]).unwrap() {
                    end = Some(start + n);
                    break;
                }
                start = p;
            }
            prop_assert_eq!(end, Some(total));
        }
    }
}
