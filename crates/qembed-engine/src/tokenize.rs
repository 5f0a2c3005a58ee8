//! Text to the token ids a Qwen3-Embedding forward pass expects.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::{EngineError, Result};

/// The query instruction of Qwen3-Embedding's model card, for clients that say they
/// send a search query but name no instruction (Cohere's `input_type: search_query`).
pub const DEFAULT_QUERY_INSTRUCTION: &str =
    "Given a web search query, retrieve relevant passages that answer the query";

/// Qwen3-Embedding's query format; documents are embedded without it.
pub fn format_query(instruction: &str, text: &str) -> String {
    format!("{}{text}", query_prefix(instruction))
}

/// What `format_query` puts in front of the text.
pub fn query_prefix(instruction: &str) -> String {
    format!("Instruct: {instruction}\nQuery:")
}

/// What happens to input longer than the length limit. The names say which end is cut,
/// as Cohere's `truncate` does (`END` keeps the start, TEI's `right`; `START` keeps the
/// end, TEI's `left`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncate {
    /// Refuse the input with an error.
    #[default]
    Refuse,
    /// Cut tokens off the end: the start of the text is kept.
    End,
    /// Cut tokens off the start of the text: its end is kept. An instruction in front of
    /// the text is kept whole, since the model needs it to read the rest.
    Start,
}

impl From<bool> for Truncate {
    /// `true` is the long-standing meaning of a `truncate` flag: keep the start.
    fn from(truncate: bool) -> Self {
        if truncate {
            Self::End
        } else {
            Self::Refuse
        }
    }
}

/// A Qwen3 tokenizer that always yields `ids + [<|endoftext|>]`.
///
/// Published Qwen3-Embedding revisions differ: some tokenizer.json files append the EOS
/// in a post-processor, some leave it to the caller. We never run the post-processor and
/// append the EOS ourselves, so both kinds give the same ids, and truncation can keep the
/// final EOS (the token whose hidden state becomes the embedding).
pub struct Qwen3Tokenizer {
    inner: Tokenizer,
    eos_id: u32,
}

impl Qwen3Tokenizer {
    /// Loads `tokenizer.json`, taking the EOS token from `tokenizer_config.json` when it
    /// names one (`<|endoftext|>` otherwise).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let err = |message: String| EngineError::Tokenizer {
            path: path.clone(),
            message,
        };
        if !path.is_file() {
            return Err(err("file not found".into()));
        }
        let mut inner = Tokenizer::from_file(&path).map_err(|e| err(e.to_string()))?;
        inner
            .with_truncation(None)
            .map_err(|e| err(e.to_string()))?;
        inner.with_padding(None);
        let eos = eos_token(&dir.join("tokenizer_config.json"))?;
        let eos_id = inner.token_to_id(&eos).ok_or_else(|| {
            err(format!(
                "end-of-text token `{eos}` is not in the vocabulary"
            ))
        })?;
        Ok(Self { inner, eos_id })
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The id of `token` as one vocabulary entry, if it is one.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Number of ids including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text` followed by exactly one EOS. Input longer than `max_length`
    /// is cut to `max_length - 1` text tokens (keeping the EOS) as `truncate` says, or
    /// refused.
    pub fn encode(
        &self,
        text: &str,
        max_length: usize,
        truncate: impl Into<Truncate>,
    ) -> Result<Vec<u32>> {
        self.encode_keeping(text, 0, max_length, truncate.into())
    }

    /// As `encode`, where the first `keep` bytes of `text` (an instruction) survive
    /// truncation at the start: the tokens cut are the first ones after it. Tokens are
    /// found from the whole text's offsets, so the ids are those of the text as
    /// tokenised whole, with a run taken out.
    pub fn encode_keeping(
        &self,
        text: &str,
        keep: usize,
        max_length: usize,
        truncate: Truncate,
    ) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Err(EngineError::EmptyInput);
        }
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| EngineError::Tokenize(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        let room = max_length.saturating_sub(1);
        if ids.len() > room {
            let too_long = EngineError::TooLong {
                tokens: ids.len() + 1,
                max: max_length,
            };
            match truncate {
                Truncate::Refuse => return Err(too_long),
                Truncate::End => ids.truncate(room),
                Truncate::Start => {
                    let head = match keep {
                        0 => 0,
                        _ => enc.get_offsets().iter().take_while(|o| o.0 < keep).count(),
                    };
                    // The instruction alone leaves no room for any of the text.
                    if head >= room {
                        return Err(too_long);
                    }
                    let cut = ids.len() - room;
                    ids.drain(head..head + cut);
                }
            }
        }
        ids.push(self.eos_id);
        Ok(ids)
    }

    /// Token ids without EOS or limits, as `/tokenize` endpoints show them.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| EngineError::Tokenize(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }
}

/// The `eos_token` of a tokenizer_config.json: a string, or `{"content": ...}`.
fn eos_token(config: &Path) -> Result<String> {
    const DEFAULT: &str = "<|endoftext|>";
    let Ok(text) = std::fs::read_to_string(config) else {
        return Ok(DEFAULT.to_string());
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| EngineError::Tokenizer {
            path: config.to_path_buf(),
            message: e.to_string(),
        })?;
    let eos = match json.get("eos_token") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or(DEFAULT)
            .to_string(),
        None => DEFAULT.to_string(),
    };
    Ok(eos)
}
