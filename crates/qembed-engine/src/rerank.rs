//! Qwen3-Reranker's input: the model card's chat template around one (query, document)
//! pair, tokenised the way the card's transformers code does it.
//!
//! The card tokenises the template's prefix and suffix once, the formatted body of each
//! pair on its own (no special tokens added, no EOS), cuts the body's ids at the end so
//! that prefix + body + suffix fits the length limit, and concatenates the three. Doing
//! the same here (rather than tokenising one long string) gives the card's ids exactly,
//! including when truncation cuts into the instruction or the query.

use crate::tokenize::Qwen3Tokenizer;
use crate::{EngineError, Result};

/// The system turn and the opening of the user turn, verbatim from the model card.
pub const RERANK_PREFIX: &str = "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n";

/// The end of the user turn and an assistant turn with an empty thinking block.
pub const RERANK_SUFFIX: &str = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n";

/// The instruction the card uses when a request names none.
pub const DEFAULT_RERANK_INSTRUCTION: &str =
    "Given a web search query, retrieve relevant passages that answer the query";

/// The card's `max_length`: prefix + body + suffix at most this many tokens.
pub const RERANK_MAX_LENGTH: usize = 8192;

/// The tokens whose logits make the score.
pub const YES: &str = "yes";
pub const NO: &str = "no";

/// One query and one document to score.
#[derive(Debug, Clone, Copy)]
pub struct Pair<'a> {
    pub query: &'a str,
    pub document: &'a str,
    /// The task; `None` means [`DEFAULT_RERANK_INSTRUCTION`].
    pub instruction: Option<&'a str>,
}

/// The body of the user turn for one pair.
pub fn format_pair(pair: Pair<'_>) -> String {
    let instruction = pair.instruction.unwrap_or(DEFAULT_RERANK_INSTRUCTION);
    format!(
        "<Instruct>: {instruction}\n<Query>: {}\n<Document>: {}",
        pair.query, pair.document
    )
}

/// The template's prefix and suffix as token ids, and the ids of `yes` and `no`, read
/// from the checkpoint's own tokenizer once at load.
#[derive(Debug, Clone)]
pub struct RerankTemplate {
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    pub yes: u32,
    pub no: u32,
}

impl RerankTemplate {
    pub fn new(tokenizer: &Qwen3Tokenizer) -> Result<Self> {
        let single = |token: &str| -> Result<u32> {
            tokenizer.token_id(token).ok_or_else(|| {
                EngineError::Setting(format!(
                    "the tokenizer has no single token `{token}`: not a Qwen3-Reranker vocabulary"
                ))
            })
        };
        Ok(Self {
            prefix: tokenizer.encode_plain(RERANK_PREFIX)?,
            suffix: tokenizer.encode_plain(RERANK_SUFFIX)?,
            yes: single(YES)?,
            no: single(NO)?,
        })
    }

    /// Tokens the template adds around every body.
    pub fn overhead(&self) -> usize {
        self.prefix.len() + self.suffix.len()
    }

    /// The ids the model sees for `pair`: prefix + body + suffix. A body longer than
    /// `max_length` leaves room for is cut at its end when `truncate`, else refused.
    /// `max_document_tokens` (Cohere's `max_tokens_per_doc`) first cuts a longer
    /// document's tokens from the end of the body, where the document is.
    pub fn encode(
        &self,
        tokenizer: &Qwen3Tokenizer,
        pair: Pair<'_>,
        max_length: usize,
        truncate: bool,
        max_document_tokens: Option<usize>,
    ) -> Result<Vec<u32>> {
        if pair.query.is_empty() || pair.document.is_empty() {
            return Err(EngineError::EmptyInput);
        }
        let room = max_length.saturating_sub(self.overhead());
        if room == 0 {
            return Err(EngineError::Setting(format!(
                "max length {max_length} leaves no room for a pair after the template's {} tokens",
                self.overhead()
            )));
        }
        let mut body = tokenizer.encode_plain(&format_pair(pair))?;
        if let Some(cap) = max_document_tokens {
            let document = tokenizer.encode_plain(pair.document)?.len();
            // The body ends with the document, whose tokens it shares but for the
            // boundary after "<Document>:"; cutting the excess from the end keeps `cap`.
            let excess = document.saturating_sub(cap);
            body.truncate(body.len().saturating_sub(excess));
        }
        if body.len() > room {
            if !truncate {
                return Err(EngineError::TooLong {
                    tokens: body.len() + self.overhead(),
                    max: max_length,
                });
            }
            body.truncate(room);
        }
        let mut ids = Vec::with_capacity(self.overhead() + body.len());
        ids.extend_from_slice(&self.prefix);
        ids.extend_from_slice(&body);
        ids.extend_from_slice(&self.suffix);
        Ok(ids)
    }
}

/// The relevance score of a logit difference `l_yes - l_no`: the softmax of the two
/// logits at "yes", i.e. the logistic function, computed without overflow.
pub fn sigmoid(logit: f32) -> f32 {
    let x = logit as f64;
    let s = if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    };
    s as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_the_cards_format() {
        let p = Pair {
            query: "q",
            document: "d",
            instruction: None,
        };
        assert_eq!(
            format_pair(p),
            format!("<Instruct>: {DEFAULT_RERANK_INSTRUCTION}\n<Query>: q\n<Document>: d")
        );
        let p = Pair {
            instruction: Some("task"),
            ..p
        };
        assert_eq!(
            format_pair(p),
            "<Instruct>: task\n<Query>: q\n<Document>: d"
        );
    }

    #[test]
    fn sigmoid_is_the_two_way_softmax() {
        for x in [-80.0f32, -3.0, -0.5, 0.0, 0.5, 3.0, 80.0] {
            let (y, n) = (x as f64, 0.0f64);
            let softmax = y.exp() / (y.exp() + n.exp());
            assert!((sigmoid(x) as f64 - softmax).abs() < 1e-7, "{x}");
        }
        assert_eq!(sigmoid(0.0), 0.5);
        assert!(sigmoid(-1000.0) >= 0.0 && sigmoid(1000.0) <= 1.0);
    }
}
