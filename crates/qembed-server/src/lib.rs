//! The `qembed` server as a library: the command line (`args`), the HTTP application
//! (`app(state) -> Router`, one module per API family under `api`), start-up and drain
//! (`serve`), `qembed embed`, `qembed rerank`, `qembed check` and `qembed bench`. The binary is a thin `main` over it, and tests build
//! the router in-process.

pub mod api;
pub mod app;
pub mod args;
pub mod bench_cmd;
pub mod check_cmd;
pub mod embed_cmd;
pub mod error;
pub mod listen;
pub mod metrics;
pub mod middleware;
pub mod rerank_cmd;
pub mod serve;
pub mod state;

pub use app::app;
pub use args::{Cli, Command, ModelArgs, ServeArgs};
pub use state::AppState;
