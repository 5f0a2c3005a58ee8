//! `qembed-rollout`: verify a colour, switch nginx to it, watch it, roll back, retire.
//!
//! Exit codes a script can rely on:
//! 0 done; 1 error (config, I/O, nginx); 2 verify failed, nothing switched;
//! 3 switched, then rolled back by the watch; 4 refused (re-index needed, or retire
//! before the keep period).

mod config;
mod instance;
mod nginx;
mod state;
mod verify;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use config::Config;
use instance::Instance;
use state::{now_unix, State};
use verify::Compat;

const EXIT_VERIFY_FAILED: u8 = 2;
const EXIT_ROLLED_BACK: u8 = 3;
const EXIT_REFUSED: u8 = 4;

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
    /// Both colours' identity and readiness, and which one nginx sends traffic to.
    Status,
    /// First install: point the upstream file at a colour without reloading nginx.
    Init {
        #[arg(long)]
        color: String,
    },
    /// Run the gates on a colour: ready, golden set, load, vector-space compatibility.
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
    /// Send traffic back to the previous colour.
    Rollback,
    /// Stop the previous colour once its keep period is over.
    Retire {
        /// Stop it now, whatever the keep period.
        #[arg(long)]
        force: bool,
    },
}

/// Why a command stopped short, with its exit code.
struct Stop(u8, String);

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

async fn dispatch(cli: Cli) -> Result<std::result::Result<(), Stop>> {
    let cfg = Config::load(&cli.config)?;
    match cli.command {
        Cmd::Status => status(&cfg).await.map(Ok),
        Cmd::Init { color } => init(&cfg, &color).map(Ok),
        Cmd::Verify {
            color,
            allow_reindex,
            against,
        } => {
            let active = match (against, &cfg.nginx) {
                (Some(a), _) => Some(cfg.color(&a).map(|_| a)?),
                (None, Some(n)) => nginx::active(&n.upstream_file)?,
                (None, None) => None,
            };
            gate(&cfg, &color, active.as_deref(), allow_reindex).await
        }
        Cmd::Switch { to, allow_reindex } => switch(&cfg, &to, allow_reindex).await,
        Cmd::Rollback => rollback(&cfg).await.map(Ok),
        Cmd::Retire { force } => retire(&cfg, force),
    }
}

fn timeout(cfg: &Config) -> Duration {
    Duration::from_secs_f64(cfg.verify.timeout_s)
}

async fn status(cfg: &Config) -> Result<()> {
    let active = nginx::active(&cfg.nginx()?.upstream_file)?;
    let st = State::load(&cfg.nginx()?.state_file)?;
    println!(
        "active (nginx upstream): {}",
        active.as_deref().unwrap_or("none")
    );
    for (name, color) in &cfg.colors {
        let inst = Instance::new(name, color, timeout(cfg))?;
        let ready = inst.ready().await;
        let info = inst.info().await.ok();
        println!(
            "{name:6} {:9} ready={ready:<5} model={} dims={} fingerprint={} url={}",
            if active.as_deref() == Some(name) {
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
    Ok(())
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
async fn gate(
    cfg: &Config,
    color: &str,
    active: Option<&str>,
    allow_reindex: bool,
) -> Result<std::result::Result<(), Stop>> {
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

/// Points nginx at `to`, with a retry backup only when both colours serve one model.
async fn point_nginx(cfg: &Config, to: &str, from: Option<&str>) -> Result<()> {
    let addr = cfg.color(to)?.upstream_addr()?;
    let mut backup = None;
    if let Some(from) = from.filter(|f| *f != to) {
        let a = Instance::new(to, cfg.color(to)?, timeout(cfg))?
            .info()
            .await;
        let b = Instance::new(from, cfg.color(from)?, timeout(cfg))?
            .info()
            .await;
        if let (Ok(a), Ok(b)) = (a, b) {
            if !a.fingerprint.is_empty() && a.fingerprint == b.fingerprint {
                backup = Some(cfg.color(from)?.upstream_addr()?);
            }
        }
    }
    let file = &cfg.nginx()?.upstream_file;
    let old = std::fs::read_to_string(file).ok();
    nginx::write(
        file,
        &nginx::render(to, &addr, backup.as_deref(), cfg.nginx()?.keepalive),
    )?;
    if let Err(e) = nginx::run(&cfg.nginx()?.test, "nginx -t") {
        // Leave nginx exactly as it was.
        if let Some(old) = old {
            nginx::write(file, &old)?;
        }
        return Err(e);
    }
    nginx::run(&cfg.nginx()?.reload, "nginx reload")?;
    tracing::info!(to, backup = ?backup, "nginx now sends traffic to {to}");
    Ok(())
}

async fn switch(
    cfg: &Config,
    to: &str,
    allow_reindex: bool,
) -> Result<std::result::Result<(), Stop>> {
    cfg.color(to)?;
    let active = nginx::active(&cfg.nginx()?.upstream_file)?;
    if active.as_deref() == Some(to) {
        tracing::info!(to, "already active; nothing to do");
        return Ok(Ok(()));
    }
    if let Err(stop) = gate(cfg, to, active.as_deref(), allow_reindex).await? {
        return Ok(Err(stop));
    }
    let started = std::time::Instant::now();
    point_nginx(cfg, to, active.as_deref()).await?;
    let mut st = State::load(&cfg.nginx()?.state_file)?;
    st.previous = active.clone();
    st.active = Some(to.to_string());
    st.switched_at = Some(now_unix());
    st.save(&cfg.nginx()?.state_file)?;
    tracing::info!(
        to,
        switch_ms = started.elapsed().as_millis() as u64,
        "switched; watching"
    );

    let inst = Instance::new(to, cfg.color(to)?, timeout(cfg))?;
    match watch::watch(&inst, &cfg.watch).await? {
        Ok(()) => {
            tracing::info!(to, window_s = cfg.watch.window_s, "watch window passed");
            Ok(Ok(()))
        }
        Err(why) => {
            tracing::error!(to, %why, "threshold broken during watch: rolling back");
            let Some(prev) = active else {
                bail!("{why}, and there is no previous colour to roll back to");
            };
            point_nginx(cfg, &prev, Some(to)).await?;
            let st = State {
                active: Some(prev.clone()),
                previous: Some(to.to_string()),
                switched_at: Some(now_unix()),
                retired: None,
            };
            st.save(&cfg.nginx()?.state_file)?;
            Ok(Err(Stop(
                EXIT_ROLLED_BACK,
                format!("rolled back to {prev}: {why}"),
            )))
        }
    }
}

async fn rollback(cfg: &Config) -> Result<()> {
    let active = nginx::active(&cfg.nginx()?.upstream_file)?
        .context("no active colour in the upstream file")?;
    let st = State::load(&cfg.nginx()?.state_file)?;
    let prev = match st.previous {
        Some(p) if p != active => p,
        _ => cfg.other(&active)?,
    };
    if st.retired.as_deref() == Some(prev.as_str()) {
        bail!("{prev} was retired; start it again before rolling back to it");
    }
    let inst = Instance::new(&prev, cfg.color(&prev)?, timeout(cfg))?;
    if !inst.ready().await {
        bail!("{prev} is not ready; refusing to send traffic to it");
    }
    point_nginx(cfg, &prev, Some(&active)).await?;
    State {
        active: Some(prev.clone()),
        previous: Some(active),
        switched_at: Some(now_unix()),
        retired: None,
    }
    .save(&cfg.nginx()?.state_file)?;
    tracing::info!(to = %prev, "rolled back");
    Ok(())
}

fn retire(cfg: &Config, force: bool) -> Result<std::result::Result<(), Stop>> {
    let mut st = State::load(&cfg.nginx()?.state_file)?;
    let active = nginx::active(&cfg.nginx()?.upstream_file)?;
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
