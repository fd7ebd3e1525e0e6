//! What the picker reads and changes in a response body on its way to the
//! client: the usage (tokens in and out) and when tokens came, for the
//! per-model metrics; the name the client asked for, put back where the
//! server names the model it served under another name; and the usage chunk
//! the picker asked for on the client's behalf, taken out.
//!
//! Server-sent events (streamed completions) pass event by event as soon
//! as each is whole, so tokens are not held up; a JSON answer is held until
//! it has ended (up to a bound, past which it passes unread).

use std::time::Instant;

use serde_json::Value;

/// A JSON answer larger than this passes unread (no usage, no renaming).
pub const MAX_JSON_BYTES: usize = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    EventStream,
    Json,
    Other,
}

pub struct ResponseBody {
    format: Format,
    /// (the name served, the name asked): put back in the body.
    rename: Option<(String, String)>,
    /// Take out the chunk that only carries the usage.
    strip_usage: bool,
    /// An event (or JSON answer) not yet whole.
    pending: Vec<u8>,
    pub usage: Option<Usage>,
    /// When the first and the last token came (streamed answers).
    pub first_token: Option<Instant>,
    pub last_token: Option<Instant>,
}

impl ResponseBody {
    /// For a response of `content_type`; `rename` is (served, asked).
    pub fn new(
        content_type: Option<&str>,
        rename: Option<(String, String)>,
        strip_usage: bool,
    ) -> Self {
        let essence = content_type
            .and_then(|t| t.split(';').next())
            .map(|t| t.trim().to_ascii_lowercase());
        let format = match essence.as_deref() {
            Some("text/event-stream") => Format::EventStream,
            Some("application/json") => Format::Json,
            _ => Format::Other,
        };
        ResponseBody {
            format,
            rename,
            strip_usage,
            pending: Vec::new(),
            usage: None,
            first_token: None,
            last_token: None,
        }
    }

    /// Server-sent events: a streamed answer.
    pub fn is_stream(&self) -> bool {
        self.format == Format::EventStream
    }

    /// The body's length may change: the response's Content-Length must go.
    pub fn changes_length(&self) -> bool {
        self.format != Format::Other && (self.rename.is_some() || self.strip_usage)
    }

    /// Take in a chunk (`end`: the body's last), give back what goes on now.
    pub fn push(&mut self, chunk: &[u8], end: bool, now: Instant) -> Vec<u8> {
        match self.format {
            Format::Other => chunk.to_vec(),
            Format::Json => {
                self.pending.extend_from_slice(chunk);
                if self.pending.len() > MAX_JSON_BYTES {
                    // Too large to hold: it goes on as it is, unread.
                    self.format = Format::Other;
                    return std::mem::take(&mut self.pending);
                }
                if !end {
                    return Vec::new();
                }
                let body = std::mem::take(&mut self.pending);
                if let Ok(json) = serde_json::from_slice::<Value>(&body) {
                    self.usage = usage(&json).or(self.usage);
                    self.first_token.get_or_insert(now);
                    self.last_token = Some(now);
                }
                self.renamed(body)
            }
            Format::EventStream => {
                self.pending.extend_from_slice(chunk);
                let mut out = Vec::new();
                while let Some((length, separator)) = event_end(&self.pending) {
                    let event: Vec<u8> = self.pending.drain(..length + separator).collect();
                    if let Some(kept) = self.event(event, now) {
                        out.extend_from_slice(&kept);
                    }
                }
                if end && !self.pending.is_empty() {
                    let rest = std::mem::take(&mut self.pending);
                    if let Some(kept) = self.event(rest, now) {
                        out.extend_from_slice(&kept);
                    }
                }
                out
            }
        }
    }

    /// One whole event: read, and given back (changed) unless taken out.
    fn event(&mut self, event: Vec<u8>, now: Instant) -> Option<Vec<u8>> {
        let text = String::from_utf8_lossy(&event);
        let data: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        let Ok(json) = serde_json::from_str::<Value>(&data.join("\n")) else {
            return Some(event); // `[DONE]`, a comment, or not ours to read
        };
        if is_token(&json) {
            self.first_token.get_or_insert(now);
            self.last_token = Some(now);
        }
        if let Some(usage) = usage(&json) {
            self.usage = Some(usage);
            let only_usage = json
                .get("choices")
                .and_then(Value::as_array)
                .is_some_and(|c| c.is_empty());
            if self.strip_usage && only_usage {
                return None;
            }
        }
        Some(self.renamed(event))
    }

    fn renamed(&self, body: Vec<u8>) -> Vec<u8> {
        match &self.rename {
            Some((served, asked)) => rename_model(&body, served, asked),
            None => body,
        }
    }
}

/// Where the first event of `buffer` ends: its length and its blank line's.
fn event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = find(buffer, b"\n\n").map(|i| (i, 2));
    let crlf = find(buffer, b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A chunk that carries generated text: a chat delta's content, a
/// completion's text, a responses API text delta.
fn is_token(json: &Value) -> bool {
    if json.get("type").and_then(Value::as_str) == Some("response.output_text.delta") {
        return true;
    }
    let Some(choice) = json.pointer("/choices/0") else {
        return false;
    };
    let non_empty = |v: Option<&Value>| v.and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    non_empty(choice.pointer("/delta/content")) || non_empty(choice.get("text"))
}

/// The usage an answer (or a chunk, or a responses API event) reports.
fn usage(json: &Value) -> Option<Usage> {
    let usage = json
        .get("usage")
        .filter(|u| u.is_object())
        .or_else(|| json.pointer("/response/usage").filter(|u| u.is_object()))?;
    let number = |keys: [&str; 2]| keys.iter().find_map(|k| usage.get(*k)?.as_u64());
    Some(Usage {
        input_tokens: number(["prompt_tokens", "input_tokens"])?,
        output_tokens: number(["completion_tokens", "output_tokens"]).unwrap_or(0),
    })
}

/// `body` with every `"model": "<served>"` (JSON, any spacing) naming
/// `asked` instead.
pub fn rename_model(body: &[u8], served: &str, asked: &str) -> Vec<u8> {
    let served = serde_json::to_string(served).expect("a string serializes");
    let asked = serde_json::to_string(asked).expect("a string serializes");
    let key = b"\"model\"";
    let mut out = Vec::with_capacity(body.len());
    let mut at = 0;
    while let Some(found) = find(&body[at..], key) {
        let mut i = at + found + key.len();
        out.extend_from_slice(&body[at..i]);
        let skip_space = |mut i: usize| {
            while body.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
                i += 1;
            }
            i
        };
        let colon = skip_space(i);
        if body.get(colon) == Some(&b':') {
            let value = skip_space(colon + 1);
            if body[value..].starts_with(served.as_bytes()) {
                out.extend_from_slice(&body[i..value]);
                out.extend_from_slice(asked.as_bytes());
                i = value + served.len();
            }
        }
        at = i;
    }
    out.extend_from_slice(&body[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse(events: &[&str]) -> String {
        events.iter().map(|e| format!("data: {e}\n\n")).collect()
    }

    #[test]
    fn streamed_chats_pass_event_by_event_and_give_their_usage() {
        let mut body = ResponseBody::new(Some("text/event-stream; charset=utf-8"), None, true);
        let now = Instant::now();
        let first = sse(&[
            r#"{"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"}}]}"#,
        ]);
        // An event split across chunks is held until it is whole.
        let (a, b) = first.split_at(20);
        assert!(body.push(a.as_bytes(), false, now).is_empty());
        assert_eq!(body.push(b.as_bytes(), false, now), first.as_bytes());
        assert_eq!(body.first_token, Some(now));
        let later = now + std::time::Duration::from_millis(30);
        let rest = sse(&[
            r#"{"model":"m","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}"#,
            r#"{"model":"m","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}"#,
            "[DONE]",
        ]);
        let out = String::from_utf8(body.push(rest.as_bytes(), true, later)).unwrap();
        assert!(out.contains(r#""content":"lo""#), "{out}");
        assert!(
            !out.contains("usage"),
            "the usage chunk the client did not ask for: {out}"
        );
        assert!(out.ends_with("data: [DONE]\n\n"), "{out}");
        assert_eq!(body.last_token, Some(later));
        assert_eq!(
            body.usage,
            Some(Usage {
                input_tokens: 7,
                output_tokens: 2
            })
        );
        assert!(body.changes_length());
    }

    #[test]
    fn a_usage_the_client_asked_for_stays() {
        let mut body = ResponseBody::new(Some("text/event-stream"), None, false);
        let events = sse(&[r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#]);
        assert_eq!(
            body.push(events.as_bytes(), true, Instant::now()),
            events.as_bytes()
        );
        assert!(!body.changes_length());
    }

    #[test]
    fn a_rewritten_model_is_named_as_the_client_asked_streamed_or_not() {
        let rename = Some(("llama-3.1-70b".to_string(), "chat".to_string()));
        let mut body = ResponseBody::new(Some("application/json"), rename.clone(), false);
        let whole = br#"{"id":"x","model" : "llama-3.1-70b","choices":[{"text":"the model \"llama-3.1-70b\""}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        assert!(body.push(&whole[..10], false, Instant::now()).is_empty());
        let out = String::from_utf8(body.push(&whole[10..], true, Instant::now())).unwrap();
        assert_eq!(
            out,
            r#"{"id":"x","model" : "chat","choices":[{"text":"the model \"llama-3.1-70b\""}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
            "only the model field changes"
        );
        assert_eq!(body.usage.map(|u| u.output_tokens), Some(4));

        let mut body = ResponseBody::new(Some("text/event-stream"), rename, false);
        let events = sse(&[
            r#"{"type":"response.created","response":{"model":"llama-3.1-70b","usage":null}}"#,
            r#"{"type":"response.output_text.delta","delta":"hi"}"#,
            r#"{"type":"response.completed","response":{"model":"llama-3.1-70b","usage":{"input_tokens":5,"output_tokens":1}}}"#,
        ]);
        let out = String::from_utf8(body.push(events.as_bytes(), true, Instant::now())).unwrap();
        assert!(!out.contains("llama-3.1-70b"), "{out}");
        assert_eq!(out.matches(r#""model":"chat""#).count(), 2, "{out}");
        assert_eq!(
            body.usage,
            Some(Usage {
                input_tokens: 5,
                output_tokens: 1
            })
        );
        assert!(body.first_token.is_some());
    }

    #[test]
    fn other_bodies_pass_untouched_and_a_huge_json_unread() {
        let mut body = ResponseBody::new(Some("text/plain"), Some(("a".into(), "b".into())), true);
        assert_eq!(body.push(b"model a", false, Instant::now()), b"model a");
        assert!(!body.changes_length());
        let mut body = ResponseBody::new(Some("application/json"), None, false);
        let big = vec![b' '; MAX_JSON_BYTES + 1];
        assert_eq!(body.push(&big, false, Instant::now()).len(), big.len());
        assert_eq!(body.push(b"{}", true, Instant::now()), b"{}");
    }
}
