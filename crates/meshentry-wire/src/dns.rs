//! DNS messages (RFC 1035, EDNS RFC 6891) as the DNS proxy needs them: a query read without
//! allocating, answers written into a reused buffer, and the few facts a forwarded response
//! must yield (its id, question, truncation, and where its TTLs are, for the cache).
//!
//! Only what a stub resolver sends is accepted as a query: one question, no answer or
//! authority records, at most one OPT record, no trailing bytes, no compression in the
//! question. Anything else is refused (FORMERR, NOTIMP) or, when not even a header can be
//! read or it is not a query, dropped: a reply to a reply is how reflection loops start.

use std::net::IpAddr;

/// The fixed header's length.
pub const HEADER_LEN: usize = 12;
/// The longest name on the wire (RFC 1035 2.3.4), length bytes included.
pub const MAX_NAME_WIRE: usize = 255;
/// The largest UDP answer without EDNS (RFC 1035 4.2.1).
pub const MIN_UDP_SIZE: usize = 512;
/// The UDP payload size this proxy advertises and accepts at most (DNS flag day 2020: no IP
/// fragmentation on any path).
pub const EDNS_UDP_SIZE: u16 = 1232;

/// Record types the proxy handles by number.
pub mod rtype {
    pub const A: u16 = 1;
    pub const CNAME: u16 = 5;
    pub const SOA: u16 = 6;
    pub const AAAA: u16 = 28;
    pub const OPT: u16 = 41;
    pub const ANY: u16 = 255;
}

/// Response codes (the 4 header bits; BADVERS is extended, RFC 6891).
pub mod rcode {
    pub const NOERROR: u8 = 0;
    pub const FORMERR: u8 = 1;
    pub const SERVFAIL: u8 = 2;
    pub const NXDOMAIN: u8 = 3;
    pub const NOTIMP: u8 = 4;
    pub const REFUSED: u8 = 5;
    pub const BADVERS: u16 = 16;
}

/// The Internet class.
pub const CLASS_IN: u16 = 1;

const QR: u16 = 0x8000;
const AA: u16 = 0x0400;
const TC: u16 = 0x0200;
const RD: u16 = 0x0100;
const RA: u16 = 0x0080;
const CD: u16 = 0x0010;
const OPCODE_QUERY: u8 = 0;

/// A query's EDNS (its OPT record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edns {
    pub udp_size: u16,
    pub version: u8,
    pub dnssec_ok: bool,
}

/// A query that passed [`Query::parse`]. Borrowing the message, it holds the question's
/// bytes as sent (their case is echoed back, for clients that randomise it) and the name
/// lower-cased and dotted, for lookups.
pub struct Query<'a> {
    pub id: u16,
    flags: u16,
    /// Name, type and class, as on the wire.
    question: &'a [u8],
    name: [u8; MAX_NAME_WIRE],
    name_len: u8,
    /// Whether every label is a plain host label (no dot, space or control byte in it), so that
    /// the dotted form names it unambiguously; only such names are answered locally.
    plain: bool,
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<Edns>,
}

impl std::fmt::Debug for Query<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Query")
            .field("id", &self.id)
            .field("name", &self.name())
            .field("qtype", &self.qtype)
            .field("qclass", &self.qclass)
            .field("edns", &self.edns)
            .finish_non_exhaustive()
    }
}

/// Why a message gets no normal answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not answered at all: shorter than a header, or a response.
    Drop,
    /// Answered with this code and no question (the question could not be read).
    Reply { id: u16, flags: u16, rcode: u8 },
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Skips a possibly compressed name starting at `at`; returns where it ends. Pointers are
/// not followed: the record after them starts right after the pointer.
fn skip_name(b: &[u8], mut at: usize) -> Option<usize> {
    let mut total = 0usize;
    loop {
        let len = *b.get(at)? as usize;
        match len & 0xC0 {
            0x00 => {
                at += 1;
                if len == 0 {
                    return Some(at);
                }
                total += len + 1;
                if total >= MAX_NAME_WIRE {
                    return None;
                }
                b.get(at + len - 1)?;
                at += len;
            }
            0xC0 => {
                b.get(at + 1)?;
                return Some(at + 2);
            }
            _ => return None,
        }
    }
}

/// Skips one resource record; returns (type, where its TTL is, where the record ends).
fn skip_record(b: &[u8], at: usize) -> Option<(u16, usize, usize)> {
    let at = skip_name(b, at)?;
    let rtype = u16_at(b, at)?;
    let rdlen = u16_at(b, at + 8)? as usize;
    let end = at + 10 + rdlen;
    (end <= b.len()).then_some((rtype, at + 4, end))
}

impl<'a> Query<'a> {
    /// Reads a query. `Err` says how to refuse it.
    pub fn parse(msg: &'a [u8]) -> Result<Query<'a>, Refusal> {
        let (Some(id), Some(flags)) = (u16_at(msg, 0), u16_at(msg, 2)) else {
            return Err(Refusal::Drop);
        };
        if msg.len() < HEADER_LEN || flags & QR != 0 {
            return Err(Refusal::Drop);
        }
        let refuse = |rcode| Refusal::Reply { id, flags, rcode };
        let opcode = ((flags >> 11) & 0xF) as u8;
        if opcode != OPCODE_QUERY {
            return Err(refuse(rcode::NOTIMP));
        }
        let count = |i: usize| u16_at(msg, 4 + 2 * i).unwrap_or(0);
        if count(0) != 1 || count(1) != 0 || count(2) != 0 {
            return Err(refuse(rcode::FORMERR));
        }
        let mut name = [0u8; MAX_NAME_WIRE];
        let mut name_len = 0usize;
        let mut plain = true;
        let mut at = HEADER_LEN;
        loop {
            let Some(&len) = msg.get(at) else {
                return Err(refuse(rcode::FORMERR));
            };
            let len = len as usize;
            at += 1;
            if len == 0 {
                break;
            }
            // No compression (a question has nothing before it to point to) and no
            // extended label types.
            if len > 63 {
                return Err(refuse(rcode::FORMERR));
            }
            let Some(label) = msg.get(at..at + len) else {
                return Err(refuse(rcode::FORMERR));
            };
            if at - HEADER_LEN + len >= MAX_NAME_WIRE {
                return Err(refuse(rcode::FORMERR));
            }
            if name_len > 0 {
                name[name_len] = b'.';
                name_len += 1;
            }
            for &c in label {
                plain &= c.is_ascii_graphic() && c != b'.';
                name[name_len] = c.to_ascii_lowercase();
                name_len += 1;
            }
            at += len;
        }
        let (Some(qtype), Some(qclass)) = (u16_at(msg, at), u16_at(msg, at + 2)) else {
            return Err(refuse(rcode::FORMERR));
        };
        let question = &msg[HEADER_LEN..at + 4];
        at += 4;
        let mut edns = None;
        for _ in 0..count(3) {
            let Some((rt, ttl_at, end)) = skip_record(msg, at) else {
                return Err(refuse(rcode::FORMERR));
            };
            if rt == rtype::OPT {
                // One OPT, owned by the root (RFC 6891 6.1.1).
                if edns.is_some() || msg[at] != 0 {
                    return Err(refuse(rcode::FORMERR));
                }
                let ttl = u32_at(msg, ttl_at).unwrap_or(0);
                edns = Some(Edns {
                    udp_size: u16_at(msg, at + 3).unwrap_or(0),
                    version: (ttl >> 16) as u8,
                    dnssec_ok: ttl & 0x8000 != 0,
                });
            }
            at = end;
        }
        if at != msg.len() {
            return Err(refuse(rcode::FORMERR));
        }
        Ok(Query {
            id,
            flags,
            question,
            name,
            name_len: name_len as u8,
            plain,
            qtype,
            qclass,
            edns,
        })
    }

    /// The name, lower-cased, dotted, without the root's dot (`""` for the root). Only
    /// meaningful when [`Query::plain`].
    pub fn name(&self) -> &str {
        std::str::from_utf8(&self.name[..self.name_len as usize]).unwrap_or("")
    }

    /// Whether [`Query::name`] names it unambiguously (every label printable ASCII without
    /// a dot).
    pub fn plain(&self) -> bool {
        self.plain
    }

    /// The question as sent: name, type and class.
    pub fn question(&self) -> &'a [u8] {
        self.question
    }

    pub fn recursion_desired(&self) -> bool {
        self.flags & RD != 0
    }

    pub fn checking_disabled(&self) -> bool {
        self.flags & CD != 0
    }

    /// How large a UDP answer may be: 512 without EDNS, else the size the client
    /// advertises, between 512 and [`EDNS_UDP_SIZE`].
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            None => MIN_UDP_SIZE,
            Some(e) => (e.udp_size as usize).clamp(MIN_UDP_SIZE, EDNS_UDP_SIZE as usize),
        }
    }
}

/// Writes the refusal `r` into `out` (cleared first); false when nothing is to be sent.
pub fn write_refusal(out: &mut Vec<u8>, r: Refusal) -> bool {
    out.clear();
    match r {
        Refusal::Drop => false,
        Refusal::Reply { id, flags, rcode } => {
            let flags = QR | (flags & (0x7800 | RD)) | RA | rcode as u16;
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&flags.to_be_bytes());
            out.extend_from_slice(&[0; 8]);
            true
        }
    }
}

/// Builds an answer to one query in a reused buffer: [`Answer::begin`], records, then
/// [`Answer::finish`].
pub struct Answer;

/// Where a record's owner name is: the question's name, or a name written earlier.
#[derive(Clone, Copy, Debug)]
pub struct Owner(u16);

impl Owner {
    /// The question's name (always at offset 12).
    pub const QUESTION: Owner = Owner(HEADER_LEN as u16);
}

fn bump(out: &mut [u8], section: usize) {
    let at = 6 + 2 * section;
    let n = u16::from_be_bytes([out[at], out[at + 1]]).wrapping_add(1);
    out[at..at + 2].copy_from_slice(&n.to_be_bytes());
}

impl Answer {
    /// Clears `out` and writes the header (`rcode`, authoritative or not) and `q`'s question.
    pub fn begin(out: &mut Vec<u8>, q: &Query<'_>, rcode: u8, authoritative: bool) {
        out.clear();
        let mut flags = QR | (q.flags & (RD | CD)) | RA | (rcode as u16 & 0xF);
        if authoritative {
            flags |= AA;
        }
        out.extend_from_slice(&q.id.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(q.question);
    }

    /// Appends an A or AAAA record for `ip`, owned by `owner`.
    pub fn address(out: &mut Vec<u8>, owner: Owner, ip: IpAddr, ttl: u32) {
        out.extend_from_slice(&(0xC000 | owner.0).to_be_bytes());
        match ip {
            IpAddr::V4(v4) => {
                out.extend_from_slice(&rtype::A.to_be_bytes());
                out.extend_from_slice(&CLASS_IN.to_be_bytes());
                out.extend_from_slice(&ttl.to_be_bytes());
                out.extend_from_slice(&4u16.to_be_bytes());
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.extend_from_slice(&rtype::AAAA.to_be_bytes());
                out.extend_from_slice(&CLASS_IN.to_be_bytes());
                out.extend_from_slice(&ttl.to_be_bytes());
                out.extend_from_slice(&16u16.to_be_bytes());
                out.extend_from_slice(&v6.octets());
            }
        }
        bump(out, 0);
    }

    /// Appends a CNAME from the question's name to its first `labels_len` wire bytes (the
    /// name without a suffix, e.g. a search domain), and returns where that target is, for
    /// the records it owns.
    pub fn cname_to_prefix(out: &mut Vec<u8>, q: &Query<'_>, labels_len: usize, ttl: u32) -> Owner {
        let labels = &q.question[..labels_len.min(q.question.len())];
        out.extend_from_slice(&(0xC000 | HEADER_LEN as u16).to_be_bytes());
        out.extend_from_slice(&rtype::CNAME.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&(labels.len() as u16 + 1).to_be_bytes());
        let target = out.len() as u16;
        out.extend_from_slice(labels);
        out.push(0);
        bump(out, 0);
        Owner(target)
    }

    /// Adds the OPT record when the query had EDNS, and truncates to `limit` bytes: a
    /// message that does not fit loses its records and gets TC, so that the client asks
    /// again over TCP (RFC 1035 4.2.1, RFC 7766).
    pub fn finish(out: &mut Vec<u8>, q: &Query<'_>, limit: usize) {
        let opt_len = if q.edns.is_some() { 11 } else { 0 };
        if out.len() + opt_len > limit {
            out.truncate(HEADER_LEN + q.question.len());
            out[2] |= (TC >> 8) as u8;
            out[6..12].fill(0);
        }
        if q.edns.is_some() {
            push_opt(out, 0);
        }
    }
}

/// Appends our OPT record (extended rcode bits `ext`) and counts it.
fn push_opt(out: &mut Vec<u8>, ext: u8) {
    out.push(0);
    out.extend_from_slice(&rtype::OPT.to_be_bytes());
    out.extend_from_slice(&EDNS_UDP_SIZE.to_be_bytes());
    out.extend_from_slice(&[ext, 0, 0, 0]);
    out.extend_from_slice(&0u16.to_be_bytes());
    bump(out, 2);
}

/// Writes the answer to a query whose EDNS version this proxy does not speak: BADVERS
/// (RFC 6891 6.1.3), with our OPT saying version 0.
pub fn write_badvers(out: &mut Vec<u8>, q: &Query<'_>) {
    Answer::begin(out, q, 0, false);
    push_opt(out, (rcode::BADVERS >> 4) as u8);
}

/// What the proxy needs to know of an upstream's response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspected {
    pub id: u16,
    pub rcode: u8,
    pub truncated: bool,
    /// Where each answer and authority record's TTL is, to age them in the cache.
    pub ttl_offsets: Vec<u16>,
    /// How long the response may be cached: the smallest TTL of its answers; for a negative
    /// answer (NXDOMAIN, or NOERROR without answers) its SOA's TTL capped by the SOA's
    /// minimum (RFC 2308 5); `None` when it must not be (no SOA in a negative answer, a
    /// failure code, truncation).
    pub cache_ttl: Option<u32>,
}

/// Reads an upstream response to `q`, checking that it is one (QR set) and carries `q`'s
/// question; `None` when it is malformed or answers something else.
pub fn inspect_response(msg: &[u8], q: &Query<'_>) -> Option<Inspected> {
    let id = u16_at(msg, 0)?;
    let flags = u16_at(msg, 2)?;
    if flags & QR == 0 || msg.len() < HEADER_LEN {
        return None;
    }
    let count = |i: usize| u16_at(msg, 4 + 2 * i).unwrap_or(0);
    if count(0) != 1 {
        return None;
    }
    let question = msg.get(HEADER_LEN..HEADER_LEN + q.question.len())?;
    if !question.eq_ignore_ascii_case(q.question) {
        return None;
    }
    let rcode = (flags & 0xF) as u8;
    let truncated = flags & TC != 0;
    let mut at = HEADER_LEN + q.question.len();
    let mut ttl_offsets = Vec::new();
    let mut min_answer: Option<u32> = None;
    let mut soa: Option<u32> = None;
    let answers = count(1);
    for i in 0..answers + count(2) {
        let (rt, ttl_at, end) = skip_record(msg, at)?;
        let ttl = u32_at(msg, ttl_at)?;
        ttl_offsets.push(u16::try_from(ttl_at).ok()?);
        if i < answers {
            min_answer = Some(min_answer.map_or(ttl, |m| m.min(ttl)));
        } else if rt == rtype::SOA {
            // The SOA's MINIMUM is its RDATA's last four bytes.
            let minimum = u32_at(msg, end.checked_sub(4)?)?;
            soa = Some(ttl.min(minimum));
        }
        at = end;
    }
    for _ in 0..count(3) {
        let (_, _, end) = skip_record(msg, at)?;
        at = end;
    }
    let cache_ttl = match (truncated, rcode, min_answer) {
        (true, _, _) => None,
        (false, rcode::NOERROR, Some(ttl)) => Some(ttl),
        (false, rcode::NOERROR | rcode::NXDOMAIN, None) => soa,
        _ => None,
    };
    Some(Inspected {
        id,
        rcode,
        truncated,
        ttl_offsets,
        cache_ttl,
    })
}

/// Copies a stored response for `q`: its id and question bytes (the client's case) put in,
/// every TTL lowered by `age` seconds, then truncated like [`Answer::finish`] when larger
/// than `limit` (keeping the upstream's own OPT out: ours is added when `q` had EDNS).
pub fn write_stored(out: &mut Vec<u8>, stored: &[u8], ttl_offsets: &[u16], age: u32, q: &Query<'_>, limit: usize) {
    out.clear();
    out.extend_from_slice(stored);
    if out.len() < HEADER_LEN + q.question.len() {
        return;
    }
    out[0..2].copy_from_slice(&q.id.to_be_bytes());
    out[HEADER_LEN..HEADER_LEN + q.question.len()].copy_from_slice(q.question);
    for &at in ttl_offsets {
        let at = at as usize;
        if let Some(ttl) = u32_at(out, at) {
            out[at..at + 4].copy_from_slice(&ttl.saturating_sub(age).to_be_bytes());
        }
    }
    if out.len() > limit {
        out.truncate(HEADER_LEN + q.question.len());
        out[2] |= (TC >> 8) as u8;
        out[6..12].fill(0);
        if q.edns.is_some() {
            push_opt(out, 0);
        }
    }
}

/// Writes `q` again with another id, for the upstream: the client's id never leaves, so
/// an upstream answer is matched to the query this proxy sent.
pub fn write_forward(out: &mut Vec<u8>, msg: &[u8], id: u16) {
    out.clear();
    out.extend_from_slice(msg);
    if out.len() >= 2 {
        out[0..2].copy_from_slice(&id.to_be_bytes());
    }
}

/// A SERVFAIL for `q` (no upstream answered).
pub fn write_servfail(out: &mut Vec<u8>, q: &Query<'_>) {
    Answer::begin(out, q, rcode::SERVFAIL, false);
    Answer::finish(out, q, usize::MAX);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, edns.is_some() as u8];
        for label in name.split('.').filter(|l| !l.is_empty()) {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&CLASS_IN.to_be_bytes());
        if let Some(size) = edns {
            m.extend_from_slice(&[0, 0, 41]);
            m.extend_from_slice(&size.to_be_bytes());
            m.extend_from_slice(&[0, 0, 0x80, 0, 0, 0]);
        }
        m
    }

    #[test]
    fn a_query_is_read_lower_cased_with_its_question_as_sent() {
        let m = query("Api.Example.COM", rtype::A, Some(4096));
        let q = Query::parse(&m).expect("valid");
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.name(), "api.example.com");
        assert!(q.plain());
        assert_eq!(q.qtype, rtype::A);
        assert_eq!(
            q.edns,
            Some(Edns {
                udp_size: 4096,
                version: 0,
                dnssec_ok: true
            })
        );
        assert_eq!(q.udp_limit(), EDNS_UDP_SIZE as usize);
        assert_eq!(&q.question()[..4], b"\x03Api");
    }

    #[test]
    fn hostile_queries_are_refused_not_answered_wrongly() {
        assert_eq!(Query::parse(b"\x12").unwrap_err(), Refusal::Drop);
        let mut response = query("a.com", rtype::A, None);
        response[2] |= 0x80;
        assert_eq!(Query::parse(&response).unwrap_err(), Refusal::Drop);
        let mut trailing = query("a.com", rtype::A, None);
        trailing.push(0);
        assert!(matches!(
            Query::parse(&trailing),
            Err(Refusal::Reply {
                rcode: rcode::FORMERR,
                ..
            })
        ));
        let mut pointer = query("a.com", rtype::A, None);
        pointer[12] = 0xC0;
        assert!(matches!(Query::parse(&pointer), Err(Refusal::Reply { rcode: 1, .. })));
        let mut two = query("a.com", rtype::A, None);
        two[5] = 2;
        assert!(matches!(Query::parse(&two), Err(Refusal::Reply { rcode: 1, .. })));
        let mut notify = query("a.com", rtype::A, None);
        notify[2] = 0x20;
        assert!(matches!(
            Query::parse(&notify),
            Err(Refusal::Reply {
                rcode: rcode::NOTIMP,
                ..
            })
        ));
        let long = vec!["a".repeat(63); 4].join(".");
        assert!(Query::parse(&query(&long, rtype::A, None)).is_err());
        let odd = query("a\u{1}b.com", rtype::A, None);
        assert!(!Query::parse(&odd).expect("valid").plain());
    }

    #[test]
    fn an_answer_that_does_not_fit_is_truncated_with_tc() {
        let m = query("big.example", rtype::A, None);
        let q = Query::parse(&m).expect("valid");
        let mut out = Vec::new();
        Answer::begin(&mut out, &q, rcode::NOERROR, true);
        for i in 0..40u8 {
            Answer::address(&mut out, Owner::QUESTION, IpAddr::from([10, 0, 0, i]), 30);
        }
        assert!(out.len() > MIN_UDP_SIZE);
        Answer::finish(&mut out, &q, q.udp_limit());
        assert_eq!(out.len(), HEADER_LEN + q.question().len());
        assert_eq!(out[2] & 0x02, 0x02, "TC set");
        assert_eq!(&out[6..12], &[0; 6]);
    }
}
