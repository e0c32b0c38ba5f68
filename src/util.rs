//! Small helpers shared by several modules: Go-compatible duration and
//! boolean parsing (Dapr's YAML and query values are read by Go's
//! `time.ParseDuration` and `strconv.ParseBool`), JSON encoding that matches
//! Go's `encoding/json`, and a constant-time comparison for API tokens.

use std::time::Duration;

/// Parses a duration the way Go's `time.ParseDuration` does: a sequence of
/// decimal numbers with units `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`
/// (`"1m30s"`, `"500ms"`, `"1.5h"`). A bare `"0"` is zero. Negative values are
/// rejected because no Perch setting accepts them.
pub fn parse_go_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.starts_with('-') {
        return Err(format!("negative duration {input:?}"));
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("invalid duration {input:?}"));
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("invalid duration {input:?}"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1e0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("missing unit in duration {input:?}")),
            other => return Err(format!("unknown unit {other:?} in duration {input:?}")),
        };
        total += value * nanos_per_unit;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_nanos(total.round() as u64))
}

/// A TTL as Dapr writes one: whole seconds or a Go duration, above zero.
pub fn parse_ttl(input: &str) -> Result<Duration, String> {
    let ttl = match input.trim().parse::<i64>() {
        Ok(secs) if secs > 0 => Duration::from_secs(secs as u64),
        Ok(_) => Duration::ZERO,
        Err(_) => parse_go_duration(input)?,
    };
    if ttl.is_zero() {
        return Err(format!(
            "must be above zero (whole seconds or a duration such as 30s), got {input:?}"
        ));
    }
    Ok(ttl)
}

/// Parses a boolean the way Go's `strconv.ParseBool` does.
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Compares two byte strings in time that depends only on their lengths, so
/// an API token cannot be guessed byte by byte from response times.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serialises a value exactly as Go's `json.Marshal` would for the same map:
/// keys sorted (serde_json's default map), and `<`, `>`, `&`, U+2028, U+2029
/// escaped as `\u003c` etc. Dapr's envelopes go through `json.Marshal`, so
/// bytes on the wire match what daprd would send.
pub fn to_go_json<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    // Serialising a JSON value into a Vec cannot fail.
    value
        .serialize(&mut ser)
        .expect("JSON serialisation into memory");
    out
}

struct GoFormatter;

impl serde_json::ser::Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        // A byte scan (no UTF-8 decoding): this runs over every published
        // payload, so a whole chunk with nothing to escape is skipped at
        // once (a fixed-size fold with no early exit, which the compiler
        // turns into vector compares); only a chunk with a candidate byte,
        // and the tail, are looked at byte by byte.
        const CHUNK: usize = 32;
        let bytes = fragment.as_bytes();
        let (mut start, mut i) = (0, 0);
        while i < bytes.len() {
            if let Some(chunk) = bytes
                .get(i..i + CHUNK)
                .and_then(|c| <&[u8; CHUNK]>::try_from(c).ok())
            {
                let candidate = chunk.iter().fold(0u8, |acc, &b| {
                    acc | u8::from(b == b'<')
                        | u8::from(b == b'>')
                        | u8::from(b == b'&')
                        | u8::from(b == 0xE2)
                });
                if candidate == 0 {
                    i += CHUNK;
                    continue;
                }
            }
            let end = (i + CHUNK).min(bytes.len());
            while i < end {
                if let Some((esc, len)) = go_escape(&bytes[i..]) {
                    writer.write_all(&bytes[start..i])?;
                    writer.write_all(esc)?;
                    i += len;
                    start = i;
                } else {
                    i += 1;
                }
            }
        }
        writer.write_all(&bytes[start..])
    }
}

/// What Go's `json.Marshal` writes instead of the character `rest` starts
/// with, and that character's length in bytes; `None` when it is written as
/// it is. U+2028 and U+2029 are E2 80 A8 and E2 80 A9.
fn go_escape(rest: &[u8]) -> Option<(&'static [u8], usize)> {
    match rest {
        [b'<', ..] => Some((b"\\u003c", 1)),
        [b'>', ..] => Some((b"\\u003e", 1)),
        [b'&', ..] => Some((b"\\u0026", 1)),
        [0xE2, 0x80, 0xA8, ..] => Some((b"\\u2028", 3)),
        [0xE2, 0x80, 0xA9, ..] => Some((b"\\u2029", 3)),
        _ => None,
    }
}

/// Formats a duration for humans and for the metadata API (`5s`, `500ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Spawns a background task whose panic is logged at ERROR naming it,
/// instead of vanishing with its dropped handle (review F11). For the
/// long-lived loops (relay, gauges, broker poll and connection loops,
/// store batchers).
pub fn spawn_watched<F>(what: &'static str, fut: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let task = tokio::spawn(fut);
    tokio::spawn(async move {
        if let Err(e) = task.await {
            if e.is_panic() {
                tracing::error!(task = what, panic = %panic_text(e), "a background task panicked; Perch is degraded and should be restarted");
            }
        }
    });
}

/// Takes the tasks out of `tasks` and waits for all of them, at most
/// `grace`; false when some were still running.
pub async fn join_within(
    tasks: &std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    grace: Duration,
) -> bool {
    let tasks = std::mem::take(
        &mut *tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let all = async {
        for t in tasks {
            let _ = t.await;
        }
    };
    tokio::time::timeout(grace, all).await.is_ok()
}

/// The message of a task's panic (or why it ended otherwise).
pub fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => panic_message(p.as_ref()),
        Err(e) => e.to_string(),
    }
}

/// The message a panic carried (`panic!` with a literal or a format).
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Polls a future and catches a panic in it: `Err` with the panic's
/// payload, reported where it happened rather than when its task is
/// joined. The future is not polled again after a panic (it is dropped
/// with whatever it held, whose guards run as in an unwinding task).
pub struct CatchPanic<'a, F>(pub std::pin::Pin<&'a mut F>);

impl<F: std::future::Future> std::future::Future for CatchPanic<'_, F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let fut = self.get_mut().0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Err(p) => std::task::Poll::Ready(Err(p)),
        }
    }
}

/// A fault hook for the tests that need a panic Perch's own code never
/// has: hit when the environment variable `var` is set (non-empty) and
/// `data` contains its value. Unset (always, outside those tests), a hit
/// costs one read of a cached `None`.
pub struct FaultHook {
    var: &'static str,
    marker: std::sync::OnceLock<Option<Vec<u8>>>,
}

impl FaultHook {
    /// A hook on `var`, read on first use.
    pub const fn new(var: &'static str) -> Self {
        Self {
            var,
            marker: std::sync::OnceLock::new(),
        }
    }

    /// `data` contains the marker.
    pub fn hit(&self, data: &[u8]) -> bool {
        let marker = self.marker.get_or_init(|| {
            std::env::var(self.var)
                .ok()
                .filter(|m| !m.is_empty())
                .map(String::into_bytes)
        });
        marker
            .as_ref()
            .is_some_and(|m| data.windows(m.len()).any(|w| w == m.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn catch_panic_hands_back_the_panic_of_a_future_that_was_pending_first() {
        let mut polled = false;
        let fut = std::future::poll_fn(|cx| {
            if !polled {
                polled = true;
                cx.waker().wake_by_ref();
                return std::task::Poll::<()>::Pending;
            }
            panic!("boom {}", 7)
        });
        let p = CatchPanic(std::pin::pin!(fut)).await.unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "boom 7");
        let ok = CatchPanic(std::pin::pin!(async { 5 })).await;
        assert_eq!(ok.ok(), Some(5));
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        assert!(parse_go_duration("5").is_err());
        assert!(parse_go_duration("5 s").is_err());
        assert!(parse_go_duration("-1s").is_err());
        assert!(parse_go_duration("abc").is_err());
    }

    #[test]
    fn go_bools() {
        assert_eq!(parse_go_bool("True"), Some(true));
        assert_eq!(parse_go_bool("0"), Some(false));
        assert_eq!(parse_go_bool("yes"), None);
    }

    #[test]
    fn go_json_escapes_html_and_sorts_keys() {
        let v = serde_json::json!({"b": "<a&b>", "a": 1});
        assert_eq!(
            String::from_utf8(to_go_json(&v)).unwrap(),
            r#"{"a":1,"b":"\u003ca\u0026b\u003e"}"#
        );
    }

    /// The chunked scan against the plain rule (serde_json's output with
    /// Go's five replacements), for every special character at every
    /// position around the chunk edges, alone and in pairs.
    #[test]
    fn go_json_escapes_wherever_the_character_falls() {
        let go = |s: &str| {
            serde_json::to_string(s)
                .unwrap()
                .replace('<', "\\u003c")
                .replace('>', "\\u003e")
                .replace('&', "\\u0026")
                .replace('\u{2028}', "\\u2028")
                .replace('\u{2029}', "\\u2029")
        };
        let specials = [
            "<", ">", "&", "\u{2028}", "\u{2029}", "€", "…", "é", "\"", "\n",
        ];
        for len in [0, 1, 31, 32, 33, 63, 64, 65, 100] {
            for at in 0..=len {
                for a in specials {
                    for b in ["", "&", "\u{2029}"] {
                        let s = format!("{}{a}{}{b}", "x".repeat(at), "y".repeat(len - at));
                        let got = String::from_utf8(to_go_json(&s)).unwrap();
                        assert_eq!(got, go(&s), "{s:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn go_json_escapes_line_separators_and_keeps_other_characters() {
        // U+2028/2029 escaped as Go does; other E2-led characters (€ is
        // E2 82 AC, … is E2 80 A6), accents, quotes and controls unchanged
        // or escaped by serde_json as usual.
        let v = serde_json::json!("a\u{2028}b\u{2029}c€…é\"\n<");
        assert_eq!(
            String::from_utf8(to_go_json(&v)).unwrap(),
            r#""a\u2028b\u2029c€…é\"\n\u003c""#
        );
    }

    #[test]
    fn constant_time() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
