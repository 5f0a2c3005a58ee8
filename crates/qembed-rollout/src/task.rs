//! What a colour serves (`/info`'s `task`): embeddings or reranking. The task decides
//! which routes its clients call, what its golden set holds and whether the
//! vector-space gate applies, and two colours of one service must share it: the
//! clients of an embedding colour call routes a reranker answers with 400, and the
//! other way round, so a switch that changes the task fails every client.

use std::fmt;

use anyhow::{bail, Result};
use qembed_loadgen::Api;

use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Embed,
    Rerank,
}

impl Task {
    /// `/info`'s `task`; absent (a qembed from before rerankers) means embeddings.
    pub fn parse(s: Option<&str>) -> Result<Self> {
        match s {
            None | Some("embed") => Ok(Self::Embed),
            Some("rerank") => Ok(Self::Rerank),
            Some(other) => bail!(
                "/info reports task `{other}`, which this qembed-rollout does not know \
                 (embed, rerank); upgrade qembed-rollout"
            ),
        }
    }

    /// The route this task's clients call and its request shape.
    pub fn client_route(self, cfg: &Config) -> (String, Api) {
        match self {
            Self::Embed => ("/v1/embeddings".into(), Api::Embeddings),
            Self::Rerank => (
                cfg.clients.rerank_route.clone(),
                Api::Rerank(cfg.clients.rerank_api),
            ),
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Embed => "embed",
            Self::Rerank => "rerank",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_from_info() {
        assert_eq!(Task::parse(None).unwrap(), Task::Embed);
        assert_eq!(Task::parse(Some("embed")).unwrap(), Task::Embed);
        assert_eq!(Task::parse(Some("rerank")).unwrap(), Task::Rerank);
        assert!(Task::parse(Some("classify")).is_err());
    }
}
