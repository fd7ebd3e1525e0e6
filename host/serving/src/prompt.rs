//! Prompts as the simulator and the picker both see them: the text of an
//! OpenAI request, its tokens and its blocks. A token is [`TOKEN_BYTES`]
//! bytes (about one token of English text); a block is [`BLOCK_TOKENS`]
//! tokens, and a block's hash chains the hashes before it, so two prompts
//! share block hashes exactly as far as they share a block-aligned prefix.
//! The simulator's prefix cache holds such blocks; the picker remembers
//! which endpoint it sent which blocks to; both in a [`BlockCache`].

use std::collections::{BTreeMap, HashMap};

/// Tokens per block (vLLM's default KV-cache block size).
pub const BLOCK_TOKENS: usize = 16;
/// Bytes per token.
pub const TOKEN_BYTES: usize = 4;

/// Tokens in `text` (at least one).
pub fn count_tokens(text: &str) -> usize {
    text.len().div_ceil(TOKEN_BYTES).max(1)
}

/// The hashes of `text`'s full blocks, each chaining the ones before it
/// (FNV-1a, 64 bits). A partial last block has no hash.
pub fn block_hashes(text: &str) -> Vec<u64> {
    let block = BLOCK_TOKENS * TOKEN_BYTES;
    let mut previous = 0xcbf29ce484222325u64;
    text.as_bytes()
        .chunks_exact(block)
        .map(|chunk| {
            let hash = chunk
                .iter()
                .chain(previous.to_le_bytes().iter())
                .fold(0xcbf29ce484222325u64, |h, b| {
                    (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
                });
            previous = hash;
            hash
        })
        .collect()
}

/// Block hashes with LRU eviction, at most `capacity` of them.
#[derive(Debug, Default)]
pub struct BlockCache {
    capacity: usize,
    tick: u64,
    used: HashMap<u64, u64>,
    by_age: BTreeMap<u64, u64>,
}

impl BlockCache {
    pub fn new(capacity_blocks: usize) -> Self {
        BlockCache {
            capacity: capacity_blocks,
            ..Default::default()
        }
    }

    /// How many of `blocks`' leading blocks are cached (a prefix match:
    /// the first miss ends it).
    pub fn cached_prefix(&self, blocks: &[u64]) -> usize {
        blocks
            .iter()
            .take_while(|b| self.used.contains_key(b))
            .count()
    }

    /// Remember `blocks` as just used, evicting the least recently used
    /// ones beyond the capacity.
    pub fn insert(&mut self, blocks: &[u64]) {
        if self.capacity == 0 {
            return;
        }
        for block in blocks {
            self.tick += 1;
            if let Some(old) = self.used.insert(*block, self.tick) {
                self.by_age.remove(&old);
            }
            self.by_age.insert(self.tick, *block);
        }
        while self.used.len() > self.capacity {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.used.remove(&oldest);
        }
    }

    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

/// The prompt of an OpenAI request body: a completion's `prompt` (a string
/// or its string parts), a chat's `messages` as `role: content` lines, or
/// the `input` of the responses and embeddings APIs (a string, strings, or
/// messages; the responses API's `instructions` first). None when the body
/// has none of them.
pub fn prompt_text(body: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    if let Some(prompt) = body.get("prompt") {
        return match prompt {
            Value::String(p) => Some(p.clone()),
            Value::Array(parts) => Some(parts.iter().filter_map(Value::as_str).collect()),
            _ => None,
        };
    }
    if let Some(messages) = body.get("messages") {
        return Some(messages_text(messages.as_array()?));
    }
    let input = match body.get("input")? {
        Value::String(text) => text.clone(),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            items.iter().filter_map(Value::as_str).collect()
        }
        Value::Array(items) if items.iter().all(Value::is_object) => messages_text(items),
        // Token ids (embeddings): their text is theirs.
        other @ Value::Array(_) => other.to_string(),
        _ => return None,
    };
    Some(match body.get("instructions").and_then(Value::as_str) {
        Some(instructions) => format!("system: {instructions}\n{input}"),
        None => input,
    })
}

/// Messages as `role: content` lines; a content given as parts (the
/// responses API's `input_text`, chat's `text`) is their text.
fn messages_text(messages: &[serde_json::Value]) -> String {
    use serde_json::Value;
    messages
        .iter()
        .filter_map(|m| {
            let content = match m.get("content")? {
                Value::String(text) => text.clone(),
                Value::Array(parts) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect(),
                _ => return None,
            };
            let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
            Some(format!("{role}: {content}\n"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_share_block_hashes_as_far_as_they_share_a_prefix() {
        let system = "You are a careful assistant. ".repeat(10); // 290 bytes: 4 full blocks
        let a = block_hashes(&format!("{system}What is Rust?"));
        let b = block_hashes(&format!("{system}Tell me about Envoy, please, in detail."));
        assert_eq!(a.len(), 4);
        assert_eq!(b.len(), 5);
        assert_eq!(a[..4], b[..4]);
        let other = block_hashes(&format!("x{system}"));
        assert!(
            other.iter().zip(&a).all(|(x, y)| x != y),
            "a shifted prompt shares nothing"
        );
        assert!(block_hashes("short").is_empty());
        assert_eq!(count_tokens("abcdefgh"), 2);
        assert_eq!(count_tokens(""), 1);
    }

    #[test]
    fn the_prefix_cache_matches_prefixes_and_evicts_the_least_recently_used() {
        let mut cache = BlockCache::new(4);
        cache.insert(&[1, 2, 3]);
        assert_eq!(cache.cached_prefix(&[1, 2, 3, 4]), 3);
        assert_eq!(cache.cached_prefix(&[2, 3]), 2);
        assert_eq!(cache.cached_prefix(&[9, 1, 2]), 0, "a prefix match only");
        cache.insert(&[1]); // 1 is now the most recent
        cache.insert(&[7, 8]); // over capacity: 2 and 3 go
        assert_eq!(cache.len(), 4);
        assert_eq!(cache.cached_prefix(&[1]), 1);
        assert_eq!(cache.cached_prefix(&[2]), 0);
        assert_eq!(cache.cached_prefix(&[7, 8]), 2);
        let mut off = BlockCache::new(0);
        off.insert(&[1]);
        assert!(off.is_empty());
    }

    #[test]
    fn completions_and_chats_have_a_prompt() {
        let text = |v: serde_json::Value| prompt_text(&v);
        assert_eq!(
            text(serde_json::json!({"prompt": "hi"})).as_deref(),
            Some("hi")
        );
        assert_eq!(
            text(serde_json::json!({"prompt": ["a", "b"]})).as_deref(),
            Some("ab")
        );
        assert_eq!(
            text(serde_json::json!({"messages": [{"role": "system", "content": "be brief"}, {"content": "hi"}]}))
                .as_deref(),
            Some("system: be brief\nuser: hi\n")
        );
        assert_eq!(text(serde_json::json!({"model": "m"})), None);
        // The responses and embeddings APIs.
        assert_eq!(
            text(serde_json::json!({"input": "hi", "instructions": "be brief"})).as_deref(),
            Some("system: be brief\nhi")
        );
        assert_eq!(
            text(serde_json::json!({"input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]}))
                .as_deref(),
            Some("user: hi\n")
        );
        assert_eq!(
            text(serde_json::json!({"input": ["a", "b"]})).as_deref(),
            Some("ab")
        );
        assert_eq!(
            text(serde_json::json!({"input": [1, 2, 3]})).as_deref(),
            Some("[1,2,3]")
        );
        assert_eq!(text(serde_json::json!({"input": 7})), None);
    }
}
