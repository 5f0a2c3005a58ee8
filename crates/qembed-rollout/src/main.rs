//! `qembed-rollout`: verify a colour, switch nginx to it, watch it, roll back, retire.
//!
//! Exit codes a script can rely on:
//! 0 done; 1 error (config, I/O, nginx; nothing was moved); 2 verify failed, nothing
//! switched; 3 switched, then rolled back by the watch; 4 refused (re-index needed, or
//! retire before the keep period); 5 a rollback was due (asked for, or the watch broke)
//! and could not be carried out: traffic is still on the colour it was meant to leave;
//! 6 the upstream include and the colour nginx really serves disagree.

mod config;
mod instance;
mod live;
mod nginx;
mod secret;
mod state;
mod switch;
mod traffic;
mod verify;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use config::Config;
use instance::Instance;
use state::{now_unix, State};
use traffic::Current;
use verify::Compat;

const EXIT_VERIFY_FAILED: u8 = 2;
const EXIT_ROLLED_BACK: u8 = 3;
const EXIT_REFUSED: u8 = 4;
const EXIT_ROLLBACK_FAILED: u8 = 5;
const EXIT_MISMATCH: u8 = 6;

#[derive(Parser)]
#[command(
    name = "qembed-rollout",
    version,
    about = "Blue/green controller for qembed"
)]
struct Cli {
    /// Rollout configuration (see deploy/rollout.example.toml).
    #[arg(
        long,
        short,
        env = "QEMBED_ROLLOUT_CONFIG",
        default_value = "/etc/qembed/rollout.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Both colours' identity and readiness, the colour the upstream include names and
    /// the one nginx really serves (exit 6 when they differ).
    Status,
    /// First install: point the upstream file at a colour without reloading nginx.
    Init {
        #[arg(long)]
        color: String,
    },
    /// Run the gates on a colour, called as the clients call it: ready, client contract,
    /// golden set, load, vector-space compatibility.
    Verify {
        #[arg(long)]
        color: String,
        /// Accept a colour whose vectors differ from the active colour's.
        #[arg(long)]
        allow_reindex: bool,
        /// The colour serving now, for the compatibility check (default: from nginx).
        #[arg(long)]
        against: Option<String>,
    },
    /// Verify, switch nginx, watch, and roll back by itself if a threshold breaks.
    Switch {
        #[arg(long)]
        to: String,
        #[arg(long)]
        allow_reindex: bool,
    },
    /// Send traffic back to the previous colour (exit 5 if it cannot be done).
    Rollback,
    /// Stop the previous colour once its keep period is over (never the one nginx serves).
    Retire {
        /// Stop it now, whatever the keep period.
        #[arg(long)]
        force: bool,
    },
}

/// Why a command stopped short, with its exit code.
pub struct Stop(u8, String);

/// A command's result: an error (exit 1), a stop with its own code, or done.
pub type Outcome = Result<std::result::Result<(), Stop>>;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QEMBED_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(Stop(code, why))) => {
            tracing::error!("{why}");
            ExitCode::from(code)
        }
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}

async fn dispatch(cli: Cli) -> Outcome {
    let cfg = Config::load(&cli.config)?;
    match cli.command {
        Cmd::Status => status(&cfg).await,
        Cmd::Init { color } => init(&cfg, &color).map(Ok),
        Cmd::Verify {
            color,
            allow_reindex,
            against,
        } => {
            let active = match (against, &cfg.nginx) {
                (Some(a), _) => Some(cfg.color(&a).map(|_| a)?),
                (None, Some(_)) => {
                    let cur = Current::read(&cfg).await?;
                    cur.warn();
                    cur.active().map(str::to_string)
                }
                (None, None) => None,
            };
            gate(&cfg, &color, active.as_deref(), allow_reindex).await
        }
        Cmd::Switch { to, allow_reindex } => switch::switch(&cfg, &to, allow_reindex).await,
        Cmd::Rollback => switch::rollback(&cfg).await,
        Cmd::Retire { force } => retire(&cfg, force).await,
    }
}

fn timeout(cfg: &Config) -> Duration {
    Duration::from_secs_f64(cfg.verify.timeout_s)
}

async fn status(cfg: &Config) -> Outcome {
    let cur = Current::read(cfg).await?;
    let st = State::load(&cfg.nginx()?.state_file)?;
    println!(
        "active (nginx upstream): {}",
        cur.include.as_deref().unwrap_or("none")
    );
    match (&cur.live, &cfg.nginx()?.url) {
        (Some(live), Some(url)) => println!("live (through nginx at {url}): {live}"),
        _ => println!("live: not probed (set nginx.url to check what nginx really serves)"),
    }
    for (name, color) in &cfg.colors {
        let inst = Instance::new(name, cfg, timeout(cfg))?;
        let ready = inst.ready().await;
        let info = inst.info().await.ok();
        println!(
            "{name:6} {:9} ready={ready:<5} model={} dims={} fingerprint={} url={}",
            if cur.active() == Some(name) {
                "ACTIVE"
            } else {
                "idle"
            },
            info.as_ref().map(|i| i.model_id.as_str()).unwrap_or("-"),
            info.as_ref().map(|i| i.hidden_size).unwrap_or(0),
            info.as_ref().map(|i| i.fingerprint.as_str()).unwrap_or("-"),
            color.url
        );
    }
    if let (Some(prev), Some(at)) = (&st.previous, st.switched_at) {
        println!(
            "previous: {prev}, switched {}s ago",
            now_unix().saturating_sub(at)
        );
    }
    if let Some(d) = cur.disagreement() {
        println!("{d}");
        return Ok(Err(Stop(EXIT_MISMATCH, d)));
    }
    Ok(Ok(()))
}

fn init(cfg: &Config, color: &str) -> Result<()> {
    let addr = cfg.color(color)?.upstream_addr()?;
    nginx::write(
        &cfg.nginx()?.upstream_file,
        &nginx::render(color, &addr, None, cfg.nginx()?.keepalive),
    )?;
    State {
        active: Some(color.to_string()),
        ..State::default()
    }
    .save(&cfg.nginx()?.state_file)?;
    tracing::info!(color, file = %cfg.nginx()?.upstream_file.display(), "upstream written");
    Ok(())
}

/// Verify, turning the outcome into a stop or a go. Returns the compatibility verdict.
async fn gate(cfg: &Config, color: &str, active: Option<&str>, allow_reindex: bool) -> Outcome {
    let out = verify::verify(cfg, color, active).await?;
    if !out.passed {
        return Ok(Err(Stop(
            EXIT_VERIFY_FAILED,
            format!("verify {color}: FAILED"),
        )));
    }
    if let Compat::Incompatible(why) = &out.compat {
        if !allow_reindex {
            return Ok(Err(Stop(
                EXIT_REFUSED,
                format!(
                    "verify {color}: vectors are not compatible with the active colour ({why}); \
                     re-index stored vectors and pass --allow-reindex"
                ),
            )));
        }
        tracing::warn!("--allow-reindex given: proceeding; stored vectors MUST be re-indexed");
    }
    tracing::info!(color, "verify: PASSED");
    Ok(Ok(()))
}

async fn retire(cfg: &Config, force: bool) -> Outcome {
    let mut st = State::load(&cfg.nginx()?.state_file)?;
    // Which colour is "previous" is only clear when the include and nginx agree: with a
    // stale include the previous colour may be the one serving.
    let cur = Current::read(cfg).await?;
    if let Some(d) = cur.disagreement() {
        return Ok(Err(Stop(
            EXIT_MISMATCH,
            format!("{d}; not retiring anything"),
        )));
    }
    let active = cur.active().map(str::to_string);
    let Some(prev) = st.previous.clone().filter(|p| Some(p) != active.as_ref()) else {
        tracing::info!("no previous colour to retire");
        return Ok(Ok(()));
    };
    let keep = (cfg.retire.keep_hours * 3600.0) as u64;
    let age = now_unix().saturating_sub(st.switched_at.unwrap_or(0));
    if age < keep && !force {
        return Ok(Err(Stop(
            EXIT_REFUSED,
            format!(
                "{prev} stays up for rollback for another {}s (keep_hours = {}); use --force to stop it now",
                keep - age,
                cfg.retire.keep_hours
            ),
        )));
    }
    let stop = &cfg.color(&prev)?.stop;
    if stop.is_empty() {
        bail!("colour {prev} has no `stop` command configured");
    }
    nginx::run(stop, &format!("stopping {prev}"))?;
    st.retired = Some(prev.clone());
    st.save(&cfg.nginx()?.state_file)?;
    tracing::info!(retired = %prev, "retired");
    Ok(Ok(()))
}
