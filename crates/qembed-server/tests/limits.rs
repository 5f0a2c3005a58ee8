//! What a hostile or broken client can cost a real `qembed serve` process: memory per
//! request bounded by what the limits allow, declared sizes refused before reading.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use qembed_testkit::{fixture, Server};
use serde_json::Value;

const MODEL: &str = "qwen3-tiny-gqa";

fn start(args: &[&str]) -> Server {
    Server::start(
        Path::new(env!("CARGO_BIN_EXE_qembed")),
        &fixture(MODEL),
        args,
    )
}

/// A field of /proc/PID/status in bytes (VmRSS: resident now, VmHWM: the peak).
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    kb * 1024
}

const MB: u64 = 1 << 20;

/// 32 MiB bodies of one-letter strings (8.4M items against a limit of 2048), four at
/// once: each is refused at the first item past the limit, the server's peak memory
/// stays within 200 MB of its idle size (it was ~1 GB a request when the body became a
/// JSON tree first), and it keeps serving.
#[test]
fn hostile_bodies_cost_memory_in_proportion_to_their_size() {
    let s = start(&[]);
    let pid = s.pid();
    let idle = status_bytes(pid, "VmRSS:");
    let items = (32 << 20) / 4 - 16;
    let mut body = String::with_capacity(items * 4 + 16);
    body.push_str("{\"input\":[");
    for i in 0..items {
        body.push_str(if i == 0 { "\"a\"" } else { ",\"a\"" });
    }
    body.push_str("]}");
    assert!(body.len() <= 32 << 20);
    let body = std::sync::Arc::new(body);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (body, base) = (body.clone(), s.base.clone());
            std::thread::spawn(move || {
                let r = reqwest::blocking::Client::new()
                    .post(format!("{base}/v1/embeddings"))
                    .header("content-type", "application/json")
                    .body(body.as_bytes().to_vec())
                    .send()
                    .unwrap();
                (r.status().as_u16(), r.json::<Value>().unwrap())
            })
        })
        .collect();
    for t in threads {
        let (status, body) = t.join().unwrap();
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["param"], "input", "{body}");
    }
    let peak = status_bytes(pid, "VmHWM:");
    println!(
        "idle RSS {} MB, peak {} MB under four 32 MiB hostile bodies",
        idle / MB,
        peak / MB
    );
    assert!(
        peak < idle + 200 * MB,
        "peak {} MB over idle {} MB",
        peak / MB,
        idle / MB
    );
    assert_eq!(s.get_status("/health"), Some(200));
    // Once idle (2 s by default), the burst's memory goes back to the OS.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut now = status_bytes(pid, "VmRSS:");
    while now > idle + 40 * MB && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        now = status_bytes(pid, "VmRSS:");
    }
    println!("RSS {} MB once idle", now / MB);
    assert!(
        now <= idle + 40 * MB,
        "RSS {} MB ten seconds after the burst, {} MB before it",
        now / MB,
        idle / MB
    );
}

/// A `Content-Length` over `--max-body-bytes` gets 413 at once: the server does not
/// wait for a terabyte that will never come.
#[test]
fn declared_oversize_body_is_refused_before_it_is_read() {
    let s = start(&["--max-body-bytes", "4096"]);
    let addr = s.base.strip_prefix("http://").unwrap();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        c,
        "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n{{\"input\":"
    )
    .unwrap();
    let mut head = [0u8; 12];
    c.read_exact(&mut head).expect("an answer without the body");
    assert_eq!(&head[9..12], b"413");
}
