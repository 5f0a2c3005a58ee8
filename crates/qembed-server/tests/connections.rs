//! What slow or idle clients can hold of a real `qembed serve` process: a request head
//! must arrive within the header timeout (the clock starts at its first byte), idle
//! keep-alive connections close after their own, longer timeout, and at a low file
//! limit a flood of half-sent requests does not take the server offline.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use qembed_testkit::{fixture, Server};

const MODEL: &str = "qwen3-tiny-gqa";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_qembed"))
}

fn addr(s: &Server) -> String {
    s.base.strip_prefix("http://").unwrap().to_string()
}

/// A connection that has sent part of a request line and nothing more.
fn half_request(addr: &str) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"GET /health HT").unwrap();
    c
}

/// Seconds until the server closes `c` (reads return 0 or fail), at most `limit`.
fn closed_after(c: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    c.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 256];
    while start.elapsed() < limit {
        match c.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// Whether the server has closed `c`, without waiting.
fn is_closed(mut c: &TcpStream) -> bool {
    c.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    match c.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    }
}

/// Sends one keep-alive GET and reads its whole response; returns the status.
fn get_keep_alive(c: &mut TcpStream, path: &str) -> u16 {
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut data = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the response");
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("content-length");
            if data.len() >= end + 4 + len {
                return text[9..12].parse().unwrap();
            }
        }
    }
}

/// A probe on a new connection, with the time it took.
fn timed_health(s: &Server) -> (Option<u16>, Duration) {
    let t = Instant::now();
    let status = s.get_status("/health");
    (status, t.elapsed())
}

#[test]
fn slow_heads_are_closed_by_the_header_timeout_while_others_are_served() {
    let s = Server::start(bin(), &fixture(MODEL), &["--header-read-timeout", "1"]);
    let a = addr(&s);
    let opened = Instant::now();
    let mut slow: Vec<TcpStream> = (0..50).map(|_| half_request(&a)).collect();
    // One that trickles a byte every 200 ms: bytes do not restart the head clock.
    let trickle = {
        let mut c = TcpStream::connect(&a).unwrap();
        std::thread::spawn(move || {
            for b in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: yes"
                .iter()
                .cycle()
                .take(40)
            {
                if c.write_all(&[*b]).is_err() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            false
        })
    };
    for _ in 0..3 {
        let (status, took) = timed_health(&s);
        assert_eq!(status, Some(200));
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
    for (i, c) in slow.iter_mut().enumerate() {
        let after = closed_after(c, Duration::from_secs(5)).map(|_| opened.elapsed());
        let after = after.unwrap_or_else(|| panic!("slow connection {i} still open after 5 s"));
        assert!(
            after >= Duration::from_millis(900) && after < Duration::from_secs(4),
            "connection {i} closed after {after:?}"
        );
    }
    assert!(
        trickle.join().unwrap(),
        "the trickling head was never cut off"
    );
    assert_eq!(s.get_status("/health"), Some(200));
}

#[test]
fn idle_keep_alive_outlives_the_header_timeout_and_then_closes() {
    let s = Server::start(
        bin(),
        &fixture(MODEL),
        &["--header-read-timeout", "1", "--keep-alive-timeout", "3"],
    );
    let mut c = TcpStream::connect(addr(&s)).unwrap();
    assert_eq!(get_keep_alive(&mut c, "/health"), 200);
    // Idle for twice the header timeout: the connection is still good.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(get_keep_alive(&mut c, "/info"), 200);
    let closed = closed_after(&mut c, Duration::from_secs(8)).expect("idle connection kept");
    assert!(
        closed >= Duration::from_millis(2500) && closed < Duration::from_secs(5),
        "idle connection closed after {closed:?}, keep-alive timeout is 3 s"
    );
}

/// 400 half-sent requests against a server whose file limit is 256: the connections
/// past the cap (the limit less 64) push out the oldest waiting ones, so new clients get
/// in at once, and the server never runs out of descriptors.
#[test]
fn a_server_at_a_low_file_limit_keeps_answering() {
    let s = Server::start_under(
        &["prlimit", "--nofile=256:256", "--"],
        bin(),
        &fixture(MODEL),
        &["--header-read-timeout", "60"],
    );
    flood_then_probe(&s, 400);
}

/// The same flood with the cap set above the file limit: `accept` fails for lack of
/// descriptors, and the server closes waiting connections and backs off instead of
/// spinning or going deaf.
#[test]
fn running_out_of_descriptors_is_survived() {
    let s = Server::start_under(
        &["prlimit", "--nofile=256:256", "--"],
        bin(),
        &fixture(MODEL),
        &["--header-read-timeout", "60", "--max-connections", "100000"],
    );
    flood_then_probe(&s, 400);
}

fn flood_then_probe(s: &Server, n: usize) {
    let a = addr(s);
    let slow: Vec<TcpStream> = (0..n).map(|_| half_request(&a)).collect();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        let (status, took) = timed_health(s);
        assert_eq!(status, Some(200), "health after {took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }
    // The server let go of enough of them to stay under its limit.
    let closed = slow.iter().filter(|c| is_closed(c)).count();
    assert!(
        closed >= n - 256,
        "only {closed} of {n} slow connections closed"
    );
    let body = r#"{"input": ["still embedding"]}"#;
    let resp = reqwest::blocking::Client::new()
        .post(s.url("/v1/embeddings"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
}
