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
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        )
    }
}

fn random_span_id() -> [u8; 8] {
    let b = uuid::Uuid::new_v4().into_bytes();
    let mut id = [0u8; 8];
    id.copy_from_slice(&b[..8]);
    if id == [0; 8] {
        id[7] = 1;
    }
    id
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(s: &str, out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
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
