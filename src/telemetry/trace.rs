//! W3C trace context (`traceparent`, `tracestate`): parsing, and the child
//! span that Dapr starts for a publish or a delivery. Dapr keeps the trace id
//! and issues a new span id at each hop; so do we.

use std::fmt;

/// One `traceparent` value: version 00, trace id, parent span id, flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// 16-byte trace id, shared by every span of one trace.
    pub trace_id: [u8; 16],
    /// 8-byte id of the span this context points at.
    pub span_id: [u8; 8],
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceParent {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; anything else is `None`
    /// (W3C says to start a new trace then).
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        decode_hex(trace, &mut trace_id)?;
        decode_hex(span, &mut span_id)?;
        let mut f = [0u8; 1];
        decode_hex(flags.get(..2)?, &mut f)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags: f[0],
        })
    }

    /// A new sampled root context with random ids.
    pub fn new_root() -> Self {
        let a = uuid::Uuid::new_v4().into_bytes();
        Self {
            trace_id: a,
            span_id: random_span_id(),
            flags: 1,
        }
    }

    /// The context of a child span: same trace, new span id.
    pub fn child(&self) -> Self {
        Self {
            span_id: random_span_id(),
            ..*self
        }
    }

    /// The child of `parent` when it parses, else a new root.
    pub fn child_of(parent: Option<&str>) -> Self {
        parent
            .and_then(Self::parse)
            .map(|p| p.child())
            .unwrap_or_else(Self::new_root)
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `00-<trace id>-<span id>-<flags>`, built on the stack: this runs
        // for every delivery.
        let mut buf = [b'-'; 55];
        buf[..2].copy_from_slice(b"00");
        encode_hex(&self.trace_id, &mut buf[3..35]);
        encode_hex(&self.span_id, &mut buf[36..52]);
        encode_hex(&[self.flags], &mut buf[53..55]);
        f.write_str(std::str::from_utf8(&buf).expect("hex digits and dashes are ASCII"))
    }
}

/// A span id unique within the process and unpredictable across processes:
/// SplitMix64 over a counter that starts at a random seed (a bijection, so
/// no id repeats), instead of a system random call per delivery.
fn random_span_id() -> [u8; 8] {
    static NEXT: std::sync::OnceLock<std::sync::atomic::AtomicU64> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let seed = uuid::Uuid::new_v4().as_u64_pair().0;
        std::sync::atomic::AtomicU64::new(seed)
    });
    let mut z = next.fetch_add(0x9E37_79B9_7F4A_7C15, std::sync::atomic::Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // An all-zero span id is invalid (W3C).
    z.max(1).to_be_bytes()
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of `bytes` into `out`, which is twice as long.
fn encode_hex(bytes: &[u8], out: &mut [u8]) {
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = HEX_DIGITS[usize::from(b >> 4)];
        pair[1] = HEX_DIGITS[usize::from(b & 0x0f)];
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    encode_hex(bytes, &mut out);
    String::from_utf8(out).expect("hex digits are ASCII")
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn decode_hex(s: &str, out: &mut [u8]) -> Option<()> {
    let s = s.as_bytes();
    if s.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_child_keep_trace_id() {
        let s = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let p = TraceParent::parse(s).unwrap();
        assert_eq!(p.to_string(), s);
        let c = p.child();
        assert_eq!(c.trace_id, p.trace_id);
        assert_ne!(c.span_id, p.span_id);
        assert_eq!(c.flags, 1);
    }

    #[test]
    fn hex_round_trips_and_span_ids_do_not_repeat() {
        let p = TraceParent {
            trace_id: *b"\x00\x01\x7f\x80\xfe\xffABCDEFGHIJ",
            span_id: [0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3],
            flags: 0x0f,
        };
        let s = p.to_string();
        assert_eq!(s, "00-00017f80feff4142434445464748494a-deadbeef00010203-0f");
        assert_eq!(TraceParent::parse(&s), Some(p));
        assert_eq!(
            TraceParent::parse(&s.to_uppercase()).map(|u| u.trace_id),
            Some(p.trace_id),
            "upper-case hex is read too"
        );
        let ids: std::collections::HashSet<[u8; 8]> =
            (0..10_000).map(|_| random_span_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(!ids.contains(&[0; 8]));
    }

    #[test]
    fn rejects_malformed() {
        assert!(TraceParent::parse("garbage").is_none());
        assert!(
            TraceParent::parse("00-00000000000000000000000000000000-b7ad6b7169203331-01").is_none()
        );
        assert!(
            TraceParent::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033-01").is_none()
        );
    }
}
