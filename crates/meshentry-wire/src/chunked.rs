//! Finding the end of a `Transfer-Encoding: chunked` body without decoding it, so the fast path
//! can relay chunked bytes unchanged and still know when the message is over.

/// The longest chunk-size line (size and extensions) accepted: a relay keeps no line in
/// memory, but an endless extension is still no body anyone means to send.
pub const MAX_LINE: usize = 4096;

/// Extension bytes (after each `;`) a whole body may carry: hyper refuses a body once they
/// reach this many, and a body we relay must read the same to it.
pub const MAX_EXTENSIONS: u64 = 16 * 1024;

/// A trailer section (its final CRLF included) must be shorter than this, as in hyper.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// Trailer fields a body may carry, as hyper's default header count bounds them.
pub const MAX_TRAILER_FIELDS: usize = 100;

/// Where the scanner is in the chunked grammar (RFC 9112 7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading the hex chunk size.
    Size,
    /// Whitespace after the size (BWS), before `;` or CR.
    SizeWs,
    /// After `;`: extensions, up to CR.
    Extension,
    /// Expecting LF after the size line's CR.
    SizeLf,
    /// Inside chunk data; `remaining` bytes left.
    Data,
    /// Expecting CR after chunk data.
    DataCr,
    /// Expecting LF after chunk data.
    DataLf,
    /// After the last (zero) chunk: at the start of a trailer line or the final CRLF.
    TrailerStart,
    /// Inside a trailer field's name, up to `:`.
    TrailerName,
    /// Inside a trailer field's value, up to CR.
    TrailerValue,
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

/// Scans a chunked body fed in pieces. Strict where peers are known to differ: a bare LF or
/// CR anywhere outside chunk data, a trailer line that is not `name: value`, and a control
/// byte in a trailer are errors, since a lenient reader could find a different end. Where
/// we are stricter than hyper (a bare LF in the trailer section, a control byte in an
/// extension, a size line over [`MAX_LINE`]), `tests/differential.rs` lists it; everywhere
/// else hyper and this scanner end a body at the same byte or both refuse it.
#[derive(Clone, Debug)]
pub struct ChunkScanner {
    state: State,
    size: u64,
    size_digits: u8,
    remaining: u64,
    /// Bytes of the current size line, or of the trailer section.
    line: usize,
    /// Extension bytes so far in the body.
    extensions: u64,
    /// Trailer fields so far.
    trailers: usize,
}

impl Default for ChunkScanner {
    fn default() -> Self {
        Self {
            state: State::Size,
            size: 0,
            size_digits: 0,
            remaining: 0,
            line: 0,
            extensions: 0,
            trailers: 0,
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
                State::Size | State::SizeWs | State::Extension => {
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err(ChunkError("chunk size line too long"));
                    }
                    self.size_line(b)?;
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError("expected LF after chunk size"));
                    }
                    self.line = 0;
                    if self.size == 0 {
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
                    let take = usize::try_from(self.remaining)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len() - i);
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
                State::TrailerStart | State::TrailerName | State::TrailerValue | State::TrailerLf => {
                    self.line += 1;
                    if self.line >= MAX_TRAILERS {
                        return Err(ChunkError("trailer section too large"));
                    }
                    self.trailer(b)?;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError("expected final LF"));
                    }
                    self.line += 1;
                    if self.line >= MAX_TRAILERS {
                        return Err(ChunkError("trailer section too large"));
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

    /// One byte of a chunk-size line: `1*HEXDIG [ BWS ";" chunk-ext ] CRLF`.
    fn size_line(&mut self, b: u8) -> Result<(), ChunkError> {
        match (self.state, b) {
            (State::Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                let d = u64::from(match b {
                    b'0'..=b'9' => b - b'0',
                    b'a'..=b'f' => b - b'a' + 10,
                    _ => b - b'A' + 10,
                });
                self.size = self
                    .size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(d))
                    .ok_or(ChunkError("chunk size too large"))?;
                self.size_digits = self.size_digits.saturating_add(1);
            }
            (State::Size | State::SizeWs, b' ' | b'\t') if self.size_digits > 0 => self.state = State::SizeWs,
            (State::Size | State::SizeWs, b';') if self.size_digits > 0 => self.state = State::Extension,
            (State::Size | State::SizeWs | State::Extension, b'\r') if self.size_digits > 0 => {
                self.state = State::SizeLf
            }
            (State::Extension, b'\n') => return Err(ChunkError("bare LF in chunk extension")),
            // Extension text: visible characters, spaces and tabs (token, `=`, quoted strings).
            (State::Extension, b) if b == b'\t' || b >= 0x20 && b != 0x7f => {
                self.extensions += 1;
                if self.extensions >= MAX_EXTENSIONS {
                    return Err(ChunkError("chunk extensions too large"));
                }
            }
            (State::Extension, _) => return Err(ChunkError("control character in chunk extension")),
            _ => return Err(ChunkError("bad chunk size")),
        }
        Ok(())
    }

    /// One byte of the trailer section: `*( field-name ":" OWS field-value OWS CRLF ) CRLF`.
    fn trailer(&mut self, b: u8) -> Result<(), ChunkError> {
        self.state = match (self.state, b) {
            (State::TrailerStart, b'\r') => State::EndLf,
            (State::TrailerStart | State::TrailerName, b) if is_tchar(b) => State::TrailerName,
            (State::TrailerName, b':') => State::TrailerValue,
            (State::TrailerValue, b'\r') => State::TrailerLf,
            (State::TrailerValue, b) if b == b'\t' || b >= 0x20 && b != 0x7f => State::TrailerValue,
            (State::TrailerLf, b'\n') => {
                self.trailers += 1;
                if self.trailers > MAX_TRAILER_FIELDS {
                    return Err(ChunkError("too many trailer fields"));
                }
                State::TrailerStart
            }
            // Named apart: hyper reads on to the next CRLF here, so this is one of the places
            // where we are deliberately stricter.
            (_, b'\n') => return Err(ChunkError("bare LF in trailer section")),
            (State::TrailerValue, _) => return Err(ChunkError("control character in trailer field")),
            _ => return Err(ChunkError("malformed trailer field")),
        };
        Ok(())
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }
}

/// RFC 9110 5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
        )
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
        // Bare LF or CR where CRLF belongs, anywhere a lenient reader could end elsewhere.
        assert!(scan_all(b"5\nhello\r\n0\r\n\r\n").is_err());
        assert!(scan_all(b"5\r\nhello\n0\r\n\r\n").is_err());
        assert!(scan_all(b"0\r\n\n").is_err());
        assert!(scan_all(b"0\r\nx: y\nHTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(scan_all(b"0\r\nx: y\r\r\n\r\n").is_err());
        assert!(scan_all(b"5;a\rb\r\nhello\r\n0\r\n\r\n").is_err());
        // Not a field line, or a control byte in one.
        assert!(scan_all(b"0\r\nno-colon\r\n\r\n").is_err());
        assert!(scan_all(b"0\r\n: empty-name\r\n\r\n").is_err());
        assert!(scan_all(b"0\r\nx: a\x00b\r\n\r\n").is_err());
        assert!(scan_all(b" 5\r\n").is_err());
        assert!(scan_all(b"5 x\r\n").is_err());
        let long = format!("5;{}\r\n", "a".repeat(MAX_LINE));
        assert!(scan_all(long.as_bytes()).is_err());
    }

    // Found by tests/differential.rs: hyper caps a trailer section at 16 KiB and 100 fields
    // (this scanner allowed 64 KiB and any count), so we relayed bodies hyper refuses.
    #[test]
    fn trailer_limits_are_hyper_s() {
        let section = |value_len: usize| {
            let mut body = b"0\r\nx: ".to_vec();
            body.resize(body.len() + value_len, b'v');
            body.extend_from_slice(b"\r\n\r\n");
            body
        };
        // "x: " + value + CRLF + CRLF = value + 7 bytes of trailer section.
        let largest = section(MAX_TRAILERS - 1 - 7);
        assert_eq!(scan_all(&largest), Ok(Some(largest.len())));
        assert!(scan_all(&section(MAX_TRAILERS - 7)).is_err());

        let fields = |n: usize| {
            let mut body = b"0\r\n".to_vec();
            for i in 0..n {
                body.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
            }
            body.extend_from_slice(b"\r\n");
            body
        };
        let most = fields(MAX_TRAILER_FIELDS);
        assert_eq!(scan_all(&most), Ok(Some(most.len())));
        assert_eq!(
            scan_all(&fields(MAX_TRAILER_FIELDS + 1)),
            Err(ChunkError("too many trailer fields"))
        );
    }

    // Found by tests/differential.rs: hyper counts extension bytes over the whole body.
    #[test]
    fn extension_budget_spans_the_body() {
        let ext = ";".to_string() + &"e".repeat(MAX_LINE - 8);
        let mut body = Vec::new();
        let mut total = 0u64;
        while total < MAX_EXTENSIONS {
            body.extend_from_slice(format!("1{ext}\r\nx\r\n").as_bytes());
            total += ext.len() as u64 - 1;
        }
        body.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(scan_all(&body), Err(ChunkError("chunk extensions too large")));
        let small = format!("1{ext}\r\nx\r\n0\r\n\r\n");
        assert_eq!(scan_all(small.as_bytes()), Ok(Some(small.len())));
    }

    #[test]
    fn trailer_errors_say_what_is_wrong() {
        assert_eq!(
            scan_all(b"0\r\n\nGET / HTTP/1.1\r\n\r\n"),
            Err(ChunkError("bare LF in trailer section"))
        );
        assert_eq!(
            scan_all(b"0\r\nx: y\nz: w\r\n\r\n"),
            Err(ChunkError("bare LF in trailer section"))
        );
        assert_eq!(scan_all(b"0\r\nx\n"), Err(ChunkError("bare LF in trailer section")));
        assert_eq!(
            scan_all(b"0\r\nx: a\x01\r\n\r\n"),
            Err(ChunkError("control character in trailer field"))
        );
        assert_eq!(
            scan_all(b"0\r\nx y: 1\r\n\r\n"),
            Err(ChunkError("malformed trailer field"))
        );
    }

    #[test]
    fn whitespace_extensions_and_leading_zeros() {
        for body in [
            &b"5 ;a=b\r\nhello\r\n0\r\n\r\n"[..],
            b"5\t\r\nhello\r\n0\r\n\r\n",
            b"5;name=\"quoted value\"\r\nhello\r\n0\r\n\r\n",
            b"00000000000000000005\r\nhello\r\n0\r\n\r\n",
            b"0\r\nx-sum: 1\r\nx-b:\t2 \r\n\r\n",
        ] {
            let mut with_next = body.to_vec();
            with_next.extend_from_slice(b"GET /next HTTP/1.1\r\n");
            assert_eq!(
                scan_all(&with_next),
                Ok(Some(body.len())),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
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
