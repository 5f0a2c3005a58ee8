use std::path::PathBuf;

use qembed_model::ModelError;

/// Why a text could not become a vector. Input errors (the caller's fault) are told
/// apart from model and file errors so that a server can map them to 4xx vs 5xx.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("cannot load tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    #[error("token id {id} is outside the vocabulary (0..{vocab})")]
    InvalidToken { id: u32, vocab: usize },
    #[error("input is empty")]
    EmptyInput,
    #[error("input has {tokens} tokens (with the end-of-text token), more than the limit of {max}; shorten it or enable truncation")]
    TooLong { tokens: usize, max: usize },
    #[error("dimensions must be between {min} and {max}, got {got}")]
    Dimensions { got: usize, min: usize, max: usize },
    #[error("this server runs the {loaded} task (`--task {loaded}`); the request needs `--task {wanted}`")]
    WrongTask {
        wanted: crate::Task,
        loaded: crate::Task,
    },
    #[error("invalid setting: {0}")]
    Setting(String),
    #[error("model `{id}` is not a local directory and could not be fetched from the Hugging Face hub (cache: {cache}): {message}")]
    Hub {
        id: String,
        cache: PathBuf,
        message: String,
    },
}

impl EngineError {
    /// True when the request itself is at fault (bad text, bad dimensions, too long).
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            EngineError::EmptyInput
                | EngineError::InvalidToken { .. }
                | EngineError::TooLong { .. }
                | EngineError::Dimensions { .. }
                | EngineError::Tokenize(_)
                | EngineError::WrongTask { .. }
                | EngineError::Model(ModelError::Input(_))
        )
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;
