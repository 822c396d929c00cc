//! Why rrank stopped: a refusal before anything was loaded (exit code 2) or a
//! failure while running (exit code 1), and how the typed errors of the modules map
//! onto the two.

use super::model::config::ValidationError;
use super::{dist, engine, tokenizer};

/// Why rrank stopped.
#[derive(Debug, thiserror::Error)]
pub enum RankError {
    /// Bad flags, placement or checkpoint: nothing was loaded. Exit code 2.
    #[error("{0}")]
    Invalid(String),
    /// Failure while running. Exit code 1.
    #[error("{0}")]
    Runtime(String),
}

impl From<ValidationError> for RankError {
    fn from(e: ValidationError) -> Self {
        RankError::Invalid(e.0)
    }
}

/// The env contract is wrong: nothing was started.
impl From<dist::EnvError> for RankError {
    fn from(e: dist::EnvError) -> Self {
        RankError::Invalid(e.to_string())
    }
}

impl From<dist::tcp::ConnectError> for RankError {
    fn from(e: dist::tcp::ConnectError) -> Self {
        RankError::Runtime(e.to_string())
    }
}

/// A prompt that cannot be tokenized or templated is the user's input.
impl From<tokenizer::TextError> for RankError {
    fn from(e: tokenizer::TextError) -> Self {
        RankError::Invalid(e.to_string())
    }
}

impl From<engine::plan::PlanError> for RankError {
    fn from(e: engine::plan::PlanError) -> Self {
        RankError::Runtime(e.to_string())
    }
}

impl RankError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            RankError::Invalid(_) => 2,
            RankError::Runtime(_) => 1,
        }
    }
}
