//! The OpenAI API's shapes, as vLLM answers them: completions, chat
//! completions and responses, whole or streamed as server-sent events, and
//! embeddings. Every answer also carries `served_by`, the simulator that gave
//! it (clients ignore fields they do not know).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde_json::{Map, Value, json};

/// The generation APIs.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Api {
    /// `/v1/completions`: a `prompt`.
    Completions,
    /// `/v1/chat/completions`: `messages`.
    Chat,
    /// `/v1/responses`: an `input` (and `instructions`).
    Responses,
}

impl Api {
    /// What a request of this API must have to be generated from.
    pub(crate) fn prompt_field(self) -> &'static str {
        match self {
            Api::Completions => "prompt",
            Api::Chat => "messages",
            Api::Responses => "input",
        }
    }

    /// The field that caps the tokens generated, newest name first.
    pub(crate) fn max_tokens_fields(self) -> &'static [&'static str] {
        match self {
            Api::Completions => &["max_tokens"],
            Api::Chat => &["max_completion_tokens", "max_tokens"],
            Api::Responses => &["max_output_tokens"],
        }
    }

    fn id_prefix(self) -> &'static str {
        match self {
            Api::Completions => "cmpl",
            Api::Chat => "chatcmpl",
            Api::Responses => "resp",
        }
    }
}

/// What every response to one request shares.
pub(crate) struct Reply {
    pub api: Api,
    pub id: String,
    pub created: u64,
    pub model: String,
    pub served_by: String,
    pub prompt_tokens: usize,
    /// A stream ends with the usage: `stream_options.include_usage`
    /// (the responses API always ends with it).
    pub include_usage: bool,
}

/// The id of simulator `name`'s `n`th answer of `api`.
pub(crate) fn answer_id(api: Api, name: &str, n: u64) -> String {
    format!("{}-{name}-{n}", api.id_prefix())
}

impl Reply {
    fn usage(&self, generated: usize) -> Value {
        match self.api {
            Api::Responses => json!({
                "input_tokens": self.prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": generated,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.prompt_tokens + generated,
            }),
            _ => json!({
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": generated,
                "total_tokens": self.prompt_tokens + generated,
            }),
        }
    }

    pub(crate) fn finish_reason(generated: usize, max_tokens: usize) -> &'static str {
        if generated >= max_tokens {
            "length"
        } else {
            "stop"
        }
    }

    /// The whole answer, once every token is there.
    pub(crate) fn whole(&self, text: &str, generated: usize, max_tokens: usize) -> Value {
        let finish = Self::finish_reason(generated, max_tokens);
        let choice = match self.api {
            Api::Completions => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
            }
            Api::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish,
            }),
            Api::Responses => return self.response(Some(text), generated, max_tokens),
        };
        json!({
            "id": self.id,
            "object": match self.api { Api::Chat => "chat.completion", _ => "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage(generated),
            "served_by": self.served_by,
        })
    }

    /// The responses API's response object: in progress (`text` None) or
    /// completed.
    fn response(&self, text: Option<&str>, generated: usize, max_tokens: usize) -> Value {
        let output = match text {
            Some(text) => json!([{
                "type": "message",
                "id": self.message_id(),
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }]),
            None => json!([]),
        };
        let incomplete = text.is_some() && Self::finish_reason(generated, max_tokens) == "length";
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": match (text, incomplete) {
                (None, _) => "in_progress",
                (Some(_), true) => "incomplete",
                (Some(_), false) => "completed",
            },
            "incomplete_details": if incomplete { json!({"reason": "max_output_tokens"}) } else { Value::Null },
            "error": null,
            "model": self.model,
            "output": output,
            "usage": if text.is_some() { self.usage(generated) } else { Value::Null },
            "parallel_tool_calls": false,
            "tool_choice": "auto",
            "tools": [],
            "served_by": self.served_by,
        })
    }

    fn message_id(&self) -> String {
        format!("msg-{}", self.id)
    }

    /// One streamed chunk of a completion or chat completion.
    fn chunk(&self, text: Option<&str>, finish: Option<&str>, first: bool) -> Value {
        let choice = match self.api {
            Api::Chat => {
                let mut delta = Map::new();
                if first {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(text) = text {
                    delta.insert("content".into(), json!(text));
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            _ => json!({
                "index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish,
            }),
        };
        json!({
            "id": self.id,
            "object": match self.api { Api::Chat => "chat.completion.chunk", _ => "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "served_by": self.served_by,
        })
    }
}

/// Server-sent events, one per token as it is produced. Completions and
/// chat: a chunk per token, one with the finish reason, with
/// `include_usage` one with no choices and the usage, then `[DONE]`.
/// Responses: `response.created`, a `response.output_text.delta` per
/// token, `response.completed` (or `response.incomplete`) with the whole
/// response.
pub(crate) fn stream(
    reply: Reply,
    tokens: impl futures::Stream<Item = String> + Send + 'static,
    max_tokens: usize,
) -> impl futures::Stream<Item = Bytes> + Send + 'static {
    use futures::StreamExt;
    let reply = Arc::new(reply);
    let count = Arc::new(AtomicU64::new(0));
    let text = Arc::new(std::sync::Mutex::new(String::new()));
    let start = match reply.api {
        Api::Responses => Some(typed_event(
            "response.created",
            0,
            json!({"response": reply.response(None, 0, max_tokens)}),
        )),
        _ => None,
    };
    let events = {
        let (reply, count, text) = (reply.clone(), count.clone(), text.clone());
        tokens.map(move |token| {
            let n = count.fetch_add(1, Ordering::Relaxed);
            match reply.api {
                Api::Responses => {
                    text.lock().expect("text lock").push_str(&token);
                    typed_event(
                        "response.output_text.delta",
                        n + 1,
                        json!({"item_id": reply.message_id(), "output_index": 0,
                               "content_index": 0, "delta": token, "logprobs": []}),
                    )
                }
                _ => event(&reply.chunk(Some(&token), None, n == 0)),
            }
        })
    };
    let end = futures::stream::once(async move {
        let generated = count.load(Ordering::Relaxed) as usize;
        if reply.api == Api::Responses {
            let text = text.lock().expect("text lock").clone();
            let response = reply.response(Some(&text), generated, max_tokens);
            let kind = if response["status"] == "incomplete" {
                "response.incomplete"
            } else {
                "response.completed"
            };
            return typed_event(kind, generated as u64 + 1, json!({"response": response}));
        }
        let last = reply.chunk(
            None,
            Some(Reply::finish_reason(generated, max_tokens)),
            false,
        );
        let mut bytes = event(&last).to_vec();
        if reply.include_usage {
            let mut usage = reply.chunk(None, None, false);
            usage["choices"] = json!([]);
            usage["usage"] = reply.usage(generated);
            bytes.extend_from_slice(&event(&usage));
        }
        bytes.extend_from_slice(b"data: [DONE]\n\n");
        Bytes::from(bytes)
    });
    futures::stream::iter(start).chain(events).chain(end)
}

fn event(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// A responses API event: `event:` names its type, which `data` repeats.
fn typed_event(kind: &str, sequence: u64, mut fields: Value) -> Bytes {
    fields["type"] = json!(kind);
    fields["sequence_number"] = json!(sequence);
    Bytes::from(format!("event: {kind}\ndata: {fields}\n\n"))
}

/// Dimensions of the simulated embeddings.
pub(crate) const EMBEDDING_DIMENSIONS: usize = 8;

/// `/v1/embeddings`' answer: a unit vector per input, the same for the same
/// text (from its hash), as floats or, with `encoding_format: base64` (the
/// OpenAI client's default), as little-endian f32 bytes in base64.
pub(crate) fn embeddings(
    model: &str,
    inputs: &[String],
    prompt_tokens: usize,
    base64: bool,
    served_by: &str,
) -> Value {
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = embedding(input);
            let encoded = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64_encode(&bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": encoded})
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        "served_by": served_by,
    })
}

fn embedding(text: &str) -> Vec<f32> {
    let mut state = text.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    let raw: Vec<f32> = (0..EMBEDDING_DIMENSIONS)
        .map(|_| {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let norm = raw
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    raw.iter().map(|x| x / norm).collect()
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_as_rfc_4648_says() {
        for (input, output) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(input.as_bytes()), output, "{input:?}");
        }
    }

    #[test]
    fn embeddings_are_unit_vectors_the_same_for_the_same_text() {
        let a = embedding("hello");
        assert_eq!(a.len(), EMBEDDING_DIMENSIONS);
        assert!((a.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
        assert_eq!(a, embedding("hello"));
        assert_ne!(a, embedding("hello!"));
    }
}
