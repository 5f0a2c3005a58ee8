//! The blue/green test bench: real nginx, two real `qembed serve` processes, the real
//! `qembed-rollout` binary, all on loopback. Each test file's tests run one at a time
//! (`serial`): two cores cannot host several benches and keep the verify gates' QPS.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held for a whole test: one bench at a time.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// The `qembed` binary beside ours, built if this package's tests ran alone.
fn qembed_bin() -> PathBuf {
    let rollout = PathBuf::from(env!("CARGO_BIN_EXE_qembed-rollout"));
    let bin = rollout.with_file_name("qembed");
    if !bin.exists() {
        let ok = Command::new(env!("CARGO"))
            .args(["build", "-p", "qembed-server"])
            .current_dir(root())
            .status()
            .unwrap();
        assert!(ok.success(), "building qembed failed");
    }
    bin
}

fn nginx_bin() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// nginx in the foreground. Dropping it stops it with `nginx -s stop`: a SIGKILL to
/// the master alone would leave its workers serving, orphaned, after the test.
pub struct Nginx {
    child: Child,
    args: Vec<String>,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new(&self.args[0])
            .args(&self.args[1..])
            .args(["-s", "stop"])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One colour's instance: a fixture model and extra `qembed serve` flags.
#[derive(Clone)]
pub struct Spec {
    pub model: &'static str,
    pub args: Vec<&'static str>,
}

impl Spec {
    pub fn model(model: &'static str) -> Self {
        Self {
            model,
            args: Vec::new(),
        }
    }

    pub fn args(mut self, args: &[&'static str]) -> Self {
        self.args.extend_from_slice(args);
        self
    }
}

/// Starts `qembed serve` on a free loopback port; returns the process and its base URL.
fn start_qembed(spec: &Spec, color: &str) -> (Proc, String) {
    let mut child = Command::new(qembed_bin())
        .args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--color",
            color,
        ])
        .args(&spec.args)
        .arg("--model-path")
        .arg(root().join("models").join(spec.model))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("qembed listening on ") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("qembed did not start");
    (Proc(child), format!("http://{addr}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The colour answering `url`'s `/ready`, if it answers 200.
pub async fn answering(url: &str) -> Option<String> {
    let r = reqwest::Client::new()
        .get(format!("{url}/ready"))
        .send()
        .await
        .ok()?;
    let c = r
        .headers()
        .get("x-qembed-color")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (r.status() == 200).then_some(c).flatten()
}

pub async fn wait_ready(url: &str, color: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(got) = answering(url).await {
            if color.is_none() || Some(got.as_str()) == color {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{url} never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The bench's load gate: `[verify]` lines every config gets unless `Cfg::load`.
pub const LOAD_GATE: &str = "load_requests = 200
load_duration_s = 10.0
load_concurrency = 4
load_words = 64
# Rerankers only: documents per load request (a pair with the reranker's template is
# about twice an embedding input's tokens).
load_documents = 1
max_p99_ms = 2000.0
max_error_rate = 0.001
# Other work shares the test machine's cores (17.8 QPS, p99 464 ms measured at load
# average 8 on 2 cores): this gate only has to show that the load ran and was answered
# without errors.
min_qps = 8.0";

/// Extra lines for a rollout config written by `Env::config`.
#[derive(Default)]
pub struct Cfg<'a> {
    /// Replaces the bench's load gate lines (`LOAD_GATE`) when not empty.
    pub load: &'a str,
    pub verify: &'a str,
    pub watch: &'a str,
    pub blue: &'a str,
    pub green: &'a str,
    /// Appended at the end (more sections, e.g. `[clients]`).
    pub tail: &'a str,
}

/// Fields drop in order: nginx first (stopping it reads its config and pid file), the
/// directory holding them last.
pub struct Env {
    pub nginx: Option<Nginx>,
    pub blue: (Proc, String),
    pub green: (Proc, String),
    pub nginx_url: String,
    pub nginx_args: Vec<String>,
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The directory of the upstream include, alone in it (tests make it read-only).
    pub fn upstream_dir(&self) -> PathBuf {
        self.path("upstream")
    }

    pub fn upstream_file(&self) -> PathBuf {
        self.upstream_dir().join("active.conf")
    }

    /// Writes a rollout config: the colours, [nginx] (with its URL), [verify] and
    /// [watch] with the bench's defaults, plus `c`'s extra lines.
    pub fn config(&self, name: &str, c: Cfg) -> PathBuf {
        let cmd = |extra: &[&str]| -> String {
            let mut all: Vec<String> = self.nginx_args.clone();
            all.extend(extra.iter().map(|s| s.to_string()));
            format!(
                "[{}]",
                all.iter()
                    .map(|a| format!("{a:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let load = if c.load.is_empty() { LOAD_GATE } else { c.load };
        let watch = if c.watch.is_empty() {
            "window_s = 2.0\ninterval_s = 0.5"
        } else {
            c.watch
        };
        let text = format!(
            r#"[colors.blue]
url = "{blue}"
stop = ["true"]
{blue_extra}

[colors.green]
url = "{green}"
stop = ["true"]
{green_extra}

[nginx]
upstream_file = "{upstream}"
state_file = "{state}"
test = {test}
reload = {reload}
keepalive = 8
url = "{nginx_url}"

[verify]
{load}
{verify_extra}

[watch]
{watch}

{tail}
"#,
            blue = self.blue.1,
            green = self.green.1,
            blue_extra = c.blue,
            green_extra = c.green,
            upstream = self.upstream_file().display(),
            state = self.path("state.json").display(),
            test = cmd(&["-t"]),
            reload = cmd(&["-s", "reload"]),
            nginx_url = self.nginx_url,
            load = load,
            verify_extra = c.verify,
            tail = c.tail,
        );
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// The colour the include file names.
    pub fn active(&self) -> String {
        let text = std::fs::read_to_string(self.upstream_file()).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("# qembed-rollout active colour: "))
            .unwrap()
            .to_string()
    }

    /// The include file and the state file, byte for byte.
    pub fn files(&self) -> (String, String) {
        (
            std::fs::read_to_string(self.upstream_file()).unwrap(),
            std::fs::read_to_string(self.path("state.json")).unwrap(),
        )
    }

    pub fn start_nginx(&mut self) {
        let child = Command::new(&self.nginx_args[0])
            .args(&self.nginx_args[1..])
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.nginx = Some(Nginx {
            child,
            args: self.nginx_args.clone(),
        });
    }
}

pub fn rollout(config: &Path, args: &[&str]) -> (i32, String) {
    rollout_env(config, args, &[])
}

/// Runs `qembed-rollout` with `env` set (or removed, for an empty value).
pub fn rollout_env(config: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qembed-rollout"));
    cmd.arg("--config").arg(config).args(args);
    for (k, v) in env {
        if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    let out = cmd.output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), log)
}

/// Blue serving qwen3-tiny-gqa and green qwen3-tiny-mqa, nginx on blue.
pub async fn setup() -> Option<Env> {
    setup_with(Spec::model("qwen3-tiny-gqa"), Spec::model("qwen3-tiny-mqa")).await
}

/// Both colours as given, `init --color blue`, nginx started and answering with blue.
/// `None` (skipped) where nginx is not installed, except in CI.
pub async fn setup_with(blue: Spec, green: Spec) -> Option<Env> {
    let Some(nginx) = nginx_bin() else {
        assert!(std::env::var_os("CI").is_none(), "CI must install nginx");
        eprintln!("skipped: nginx is not installed");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let blue = start_qembed(&blue, "blue");
    let green = start_qembed(&green, "green");
    wait_ready(&blue.1, Some("blue")).await;
    wait_ready(&green.1, Some("green")).await;

    let port = free_port();
    let site = std::fs::read_to_string(root().join("deploy/nginx/qembed-site.conf"))
        .unwrap()
        .replace("listen 8080;", &format!("listen 127.0.0.1:{port};"));
    let d = dir.path();
    std::fs::write(d.join("qembed-site.conf"), site).unwrap();
    let conf = format!(
        "user root;\nworker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         include {d}/upstream/active.conf;\n  include {d}/qembed-site.conf;\n}}\n",
        d = d.display()
    );
    std::fs::write(d.join("nginx.conf"), conf).unwrap();
    let nginx_args = vec![
        nginx.display().to_string(),
        "-p".into(),
        d.display().to_string(),
        "-c".into(),
        d.join("nginx.conf").display().to_string(),
        "-e".into(),
        d.join("error.log").display().to_string(),
    ];
    let mut env = Env {
        dir,
        blue,
        green,
        nginx: None,
        nginx_url: format!("http://127.0.0.1:{port}"),
        nginx_args,
    };
    let base = env.config("base.toml", Cfg::default());
    let (code, log) = rollout(&base, &["init", "--color", "blue"]);
    assert_eq!(code, 0, "{log}");
    env.start_nginx();
    wait_ready(&env.nginx_url, Some("blue")).await;
    Some(env)
}

/// Makes a directory unwritable for the controller, root included: mode 0555, and
/// where that is not enough (root ignores modes) the immutable attribute. Undone on
/// drop. `None` where neither works (root without `chattr` or CAP_LINUX_IMMUTABLE);
/// CI must manage.
pub struct ReadOnly {
    dir: PathBuf,
    immutable: bool,
}

fn writable(dir: &Path) -> bool {
    let probe = dir.join(".write-probe");
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

impl ReadOnly {
    pub fn new(dir: &Path) -> Option<Self> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        let mut ro = Self {
            dir: dir.to_path_buf(),
            immutable: false,
        };
        if writable(dir) {
            ro.immutable = Command::new("chattr")
                .arg("+i")
                .arg(dir)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        }
        if writable(dir) {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must be able to make {} read-only",
                dir.display()
            );
            eprintln!("skipped: cannot make {} read-only here", dir.display());
            return None;
        }
        Some(ro)
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if self.immutable {
            let _ = Command::new("chattr").arg("-i").arg(&self.dir).status();
        }
        let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o755));
    }
}
