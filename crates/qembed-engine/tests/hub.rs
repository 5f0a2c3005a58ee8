//! Hub downloads against a stand-in for the hub: a small HTTP server in the test that
//! serves real fixture models under `/{repo}/resolve/{revision}/{file}` the way the
//! hub does (etag / x-repo-commit on every file, safetensors redirected to a "CDN"
//! path with x-linked-etag, Range answered with 206 + Content-Range), counts what it
//! is asked, and can break a transfer on purpose.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use qembed_engine::{
    resolve_model, resolve_model_with, Embedder, HubSettings, Input, LoadOptions, OutputOptions,
    ProgressMode,
};
use qembed_testkit::fixture;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A transfer the server breaks once.
#[derive(Clone, Copy)]
enum Fault {
    /// Announce the full length, send this many body bytes, close the connection.
    CloseAfter(usize),
    /// Send the body this many bytes short, with no Content-Length (so the client
    /// sees a clean end of stream and only a size check can notice).
    Short(usize),
}

/// One request the server answered with file bytes.
#[derive(Debug, Clone)]
struct Served {
    file: String,
    range: Option<String>,
}

#[derive(Default)]
struct State {
    /// "org/name" -> file name -> bytes.
    repos: HashMap<String, HashMap<String, Vec<u8>>>,
    faults: HashMap<String, Fault>,
    /// Every request line seen.
    requests: Vec<String>,
    /// Requests that got file bytes (not hf-hub's `bytes=0-0` probes).
    downloads: Vec<Served>,
}

struct FakeHub {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FakeHub {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, addr, &state));
            }
        });
        Self { addr, state }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves the model files of fixture `name` as repo `id` (not its reference.json).
    fn add_fixture(&self, id: &str, name: &str) {
        let mut files = HashMap::new();
        for entry in std::fs::read_dir(fixture(name)).unwrap() {
            let entry = entry.unwrap();
            let file = entry.file_name().into_string().unwrap();
            if file != "reference.json" {
                files.insert(file, std::fs::read(entry.path()).unwrap());
            }
        }
        self.add_repo(id, files);
    }

    fn add_repo(&self, id: &str, files: HashMap<String, Vec<u8>>) {
        self.state
            .lock()
            .unwrap()
            .repos
            .insert(id.to_string(), files);
    }

    fn break_once(&self, file: &str, fault: Fault) {
        self.state
            .lock()
            .unwrap()
            .faults
            .insert(file.to_string(), fault);
    }

    fn requests(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }

    fn downloads(&self) -> Vec<Served> {
        self.state.lock().unwrap().downloads.clone()
    }

    fn ranges_of(&self, file: &str) -> Vec<Option<String>> {
        self.downloads()
            .into_iter()
            .filter(|d| d.file == file)
            .map(|d| d.range)
            .collect()
    }

    fn settings(&self, cache: &Path) -> HubSettings {
        HubSettings {
            endpoint: self.endpoint(),
            cache_dir: cache.to_path_buf(),
            offline: false,
            token: None,
            retries: 0,
            progress: ProgressMode::Log,
        }
    }
}

fn etag(bytes: &[u8]) -> String {
    // FNV-1a: a content-derived tag, enough to tell the fixtures' files apart.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016x}{:08x}", bytes.len())
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}

fn serve(mut stream: TcpStream, addr: SocketAddr, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    let mut st = state.lock().unwrap();
    st.requests.push(line.trim().to_string());
    let not_found = |stream: &mut TcpStream| {
        let headers = [
            ("X-Error-Code".to_string(), "EntryNotFound".to_string()),
            ("Content-Length".to_string(), "0".to_string()),
        ];
        respond(stream, "404 Not Found", &headers, b"");
    };
    // /{org}/{name}/resolve/{rev}/{file} or /cdn/{org}/{name}/{file}
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    let (id, file, cdn) = match parts.as_slice() {
        ["cdn", org, name, file] => (format!("{org}/{name}"), file.to_string(), true),
        [org, name, "resolve", _rev, file] => (format!("{org}/{name}"), file.to_string(), false),
        _ => return not_found(&mut stream),
    };
    let Some(bytes) = st.repos.get(&id).and_then(|r| r.get(&file)).cloned() else {
        return not_found(&mut stream);
    };
    let tag = etag(&bytes);
    let mut headers = vec![("X-Repo-Commit".to_string(), COMMIT.to_string())];
    if file.ends_with(".safetensors") && !cdn {
        // The hub keeps LFS files elsewhere: a redirect carrying the LFS etag.
        headers.push(("X-Linked-Etag".to_string(), format!("\"{tag}\"")));
        headers.push((
            "Location".to_string(),
            format!("http://{addr}/cdn/{id}/{file}"),
        ));
        headers.push(("Content-Length".to_string(), "0".to_string()));
        return respond(&mut stream, "302 Found", &headers, b"");
    }
    headers.push(("ETag".to_string(), format!("\"{tag}\"")));
    let total = bytes.len();
    let (start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap();
            let a: usize = a.parse().unwrap();
            let b: usize = if b.is_empty() {
                total - 1
            } else {
                b.parse::<usize>().unwrap().min(total - 1)
            };
            if a >= total {
                headers.push(("Content-Range".to_string(), format!("bytes */{total}")));
                headers.push(("Content-Length".to_string(), "0".to_string()));
                return respond(&mut stream, "416 Range Not Satisfiable", &headers, b"");
            }
            headers.push((
                "Content-Range".to_string(),
                format!("bytes {a}-{b}/{total}"),
            ));
            (a, b + 1)
        }
        None => (0, total),
    };
    let status = if range.is_some() {
        "206 Partial Content"
    } else {
        "200 OK"
    };
    let body = &bytes[start..end];
    if range.as_deref() == Some("bytes=0-0") {
        headers.push(("Content-Length".to_string(), body.len().to_string()));
        return respond(&mut stream, status, &headers, body);
    }
    st.downloads.push(Served {
        file: file.clone(),
        range: range.clone(),
    });
    match st.faults.remove(&file) {
        Some(Fault::CloseAfter(n)) => {
            headers.push(("Content-Length".to_string(), body.len().to_string()));
            respond(&mut stream, status, &headers, &body[..n.min(body.len())]);
            let _ = stream.shutdown(Shutdown::Write);
        }
        Some(Fault::Short(missing)) => {
            let cut = body.len().saturating_sub(missing);
            respond(&mut stream, status, &headers, &body[..cut]);
            let _ = stream.shutdown(Shutdown::Write);
        }
        None => {
            headers.push(("Content-Length".to_string(), body.len().to_string()));
            respond(&mut stream, status, &headers, body);
        }
    }
}

fn embed(dir: &Path) -> Vec<Vec<f32>> {
    let e = Embedder::load(dir, &LoadOptions::default()).unwrap();
    let inputs = [
        Input {
            text: "hub downloads a user can watch",
            instruction: None,
        },
        Input {
            text: "what is the capital of France?",
            instruction: Some("Given a question, retrieve passages that answer it"),
        },
    ];
    e.embed(&inputs, true, OutputOptions::default())
        .unwrap()
        .into_iter()
        .map(|(v, _)| v)
        .collect()
}

fn snapshot(cache: &Path, id: &str) -> PathBuf {
    cache
        .join(format!("models--{}", id.replace('/', "--")))
        .join("snapshots")
        .join(COMMIT)
}

fn blobs(cache: &Path, id: &str) -> Vec<(String, u64)> {
    let dir = cache
        .join(format!("models--{}", id.replace('/', "--")))
        .join("blobs");
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn download_into_an_empty_cache_then_cache_only_then_offline() {
    let hub = FakeHub::start();
    hub.add_fixture("test/tiny", "qwen3-tiny-f16");
    let cache = tempfile::tempdir().unwrap();
    let settings = hub.settings(cache.path());

    let dir = resolve_model_with("test/tiny", &settings).unwrap();
    assert_eq!(dir, snapshot(cache.path(), "test/tiny"));
    for file in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ] {
        assert_eq!(
            std::fs::read(dir.join(file)).unwrap(),
            std::fs::read(fixture("qwen3-tiny-f16").join(file)).unwrap(),
            "{file}"
        );
    }
    let mut fetched: Vec<_> = hub.downloads().into_iter().map(|d| d.file).collect();
    fetched.sort();
    assert_eq!(
        fetched,
        [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
    assert_eq!(embed(&dir), embed(&fixture("qwen3-tiny-f16")));

    // Second run: everything from the cache, including "there is no index" (the
    // `.no_exist` marker written on the 404): not a single request.
    let before = hub.requests();
    assert_eq!(resolve_model_with("test/tiny", &settings).unwrap(), dir);
    assert_eq!(hub.requests(), before, "the second run asked the hub");

    // Offline with a warm cache: the same directory, no requests.
    let offline = HubSettings {
        offline: true,
        ..settings.clone()
    };
    assert_eq!(resolve_model_with("test/tiny", &offline).unwrap(), dir);
    assert_eq!(hub.requests(), before);

    // Offline with a cold cache: a clear error naming the first file it lacks.
    let cold = tempfile::tempdir().unwrap();
    let err = resolve_model_with(
        "test/tiny",
        &HubSettings {
            cache_dir: cold.path().to_path_buf(),
            ..offline
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`config.json`") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    assert_eq!(hub.requests(), before);
}

#[test]
fn sharded_checkpoint_downloads_every_shard() {
    let hub = FakeHub::start();
    hub.add_fixture("test/gqa", "qwen3-tiny-gqa");
    let cache = tempfile::tempdir().unwrap();
    let dir = resolve_model_with("test/gqa@main", &hub.settings(cache.path())).unwrap();
    let shards = hub
        .downloads()
        .iter()
        .filter(|d| d.file.starts_with("model-0000"))
        .count();
    assert_eq!(shards, 9);
    assert!(hub.ranges_of("model.safetensors").is_empty());
    assert_eq!(embed(&dir), embed(&fixture("qwen3-tiny-gqa")));
}

#[test]
fn a_missing_file_is_named_with_its_repo() {
    let hub = FakeHub::start();
    let files = HashMap::from([(
        "config.json".to_string(),
        std::fs::read(fixture("qwen3-tiny-f16").join("config.json")).unwrap(),
    )]);
    hub.add_repo("test/no-tokenizer", files);
    let cache = tempfile::tempdir().unwrap();
    let settings = hub.settings(cache.path());
    let err = resolve_model_with("test/no-tokenizer", &settings)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`tokenizer.json` is not in repo `test/no-tokenizer` at revision `main`")
            && err.contains("404"),
        "{err}"
    );
    let err = resolve_model_with("test/nothing-here@v2", &settings)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`config.json` is not in repo `test/nothing-here` at revision `v2`"),
        "{err}"
    );
}

#[test]
fn an_interrupted_download_resumes_in_the_next_run() {
    let hub = FakeHub::start();
    hub.add_fixture("test/tiny", "qwen3-tiny-f16");
    let size = std::fs::metadata(fixture("qwen3-tiny-f16").join("model.safetensors"))
        .unwrap()
        .len();
    let cut = 100_000;
    hub.break_once("model.safetensors", Fault::CloseAfter(cut));
    let cache = tempfile::tempdir().unwrap();
    let settings = hub.settings(cache.path());

    let err = resolve_model_with("test/tiny", &settings)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "download of `model.safetensors` of `test/tiny` stopped at {cut} of {size} bytes"
        )),
        "{err}"
    );
    // The partial file is kept where hf-hub resumes from.
    let part: Vec<_> = blobs(cache.path(), "test/tiny")
        .into_iter()
        .filter(|(n, _)| n.ends_with(".part"))
        .collect();
    assert_eq!(part.len(), 1);
    assert_eq!(part[0].1, cut as u64);
    assert!(!snapshot(cache.path(), "test/tiny")
        .join("model.safetensors")
        .exists());

    let dir = resolve_model_with("test/tiny", &settings).unwrap();
    assert_eq!(
        hub.ranges_of("model.safetensors"),
        [Some("bytes=0-".to_string()), Some(format!("bytes={cut}-"))],
        "the rerun must ask only for the rest"
    );
    // The files fetched in the first run are not fetched again.
    assert_eq!(hub.ranges_of("config.json").len(), 1);
    assert_eq!(embed(&dir), embed(&fixture("qwen3-tiny-f16")));
}

#[test]
fn an_interrupted_transfer_is_retried_from_where_it_stopped_within_a_run() {
    let hub = FakeHub::start();
    hub.add_fixture("test/tiny", "qwen3-tiny-f16");
    hub.break_once("model.safetensors", Fault::CloseAfter(150_000));
    let cache = tempfile::tempdir().unwrap();
    let settings = HubSettings {
        retries: 1,
        ..hub.settings(cache.path())
    };
    let dir = resolve_model_with("test/tiny", &settings).unwrap();
    assert_eq!(
        hub.ranges_of("model.safetensors"),
        [
            Some("bytes=0-".to_string()),
            Some("bytes=150000-".to_string())
        ]
    );
    assert_eq!(embed(&dir), embed(&fixture("qwen3-tiny-f16")));
}

#[test]
fn a_file_of_the_wrong_size_is_an_error_and_is_not_cached() {
    let hub = FakeHub::start();
    hub.add_fixture("test/tiny", "qwen3-tiny-f16");
    hub.break_once("model.safetensors", Fault::Short(1000));
    let size = std::fs::metadata(fixture("qwen3-tiny-f16").join("model.safetensors"))
        .unwrap()
        .len();
    let cache = tempfile::tempdir().unwrap();
    let settings = hub.settings(cache.path());

    let err = resolve_model_with("test/tiny", &settings)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "`model.safetensors` of `test/tiny` arrived with {} bytes but the hub announced {size}",
            size - 1000
        )),
        "{err}"
    );
    let link = snapshot(cache.path(), "test/tiny").join("model.safetensors");
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "bad file left in the snapshot"
    );
    assert!(
        blobs(cache.path(), "test/tiny")
            .iter()
            .all(|(_, len)| *len != size - 1000),
        "bad blob left in the cache"
    );

    let dir = resolve_model_with("test/tiny", &settings).unwrap();
    assert_eq!(
        hub.ranges_of("model.safetensors"),
        [Some("bytes=0-".to_string()), Some("bytes=0-".to_string())]
    );
    assert_eq!(
        std::fs::metadata(dir.join("model.safetensors"))
            .unwrap()
            .len(),
        size
    );
}

/// The only test here that touches the process environment (the others pass
/// settings explicitly, so they do not race with it).
#[test]
fn resolve_model_reads_the_hub_environment() {
    let hub = FakeHub::start();
    hub.add_fixture("test/tiny", "qwen3-tiny-f16");
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("HF_ENDPOINT", hub.endpoint());
    std::env::set_var("HF_HOME", home.path());
    for k in ["HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN"] {
        std::env::remove_var(k);
    }
    let dir = resolve_model("test/tiny").unwrap();
    assert_eq!(dir, snapshot(&home.path().join("hub"), "test/tiny"));
    assert_eq!(hub.ranges_of("model.safetensors").len(), 1);

    std::env::set_var("HF_HUB_OFFLINE", "1");
    assert_eq!(resolve_model("test/tiny").unwrap(), dir);
    let err = resolve_model("test/other").unwrap_err().to_string();
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    std::env::remove_var("HF_HUB_OFFLINE");
}
