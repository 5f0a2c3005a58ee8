//! Open-loop latency must count queueing (coordinated omission): against a server that
//! takes longer per request than the arrival interval, with one in-flight slot, each
//! arrival waits longer than the last. Response time (from the scheduled send) must grow
//! while service time (from the actual send) stays flat.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qembed_loadgen::{Lengths, LoadConfig};

const SERVICE: Duration = Duration::from_millis(40);

/// Reads one HTTP/1.1 request (headers and a Content-Length body); false at EOF.
fn read_request(r: &mut BufReader<TcpStream>) -> bool {
    let mut len = 0usize;
    let mut first = true;
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        if line == "\r\n" && !first {
            break;
        }
        first = false;
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).is_ok()
}

/// A keep-alive HTTP server on loopback that answers every request after `SERVICE`,
/// one request at a time across all connections (one slot).
fn slow_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let slot = Arc::new(Mutex::new(()));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let slot = slot.clone();
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                while read_request(&mut r) {
                    let _busy = slot.lock().unwrap();
                    std::thread::sleep(SERVICE);
                    let body = r#"{"data":[],"usage":{"prompt_tokens":3}}"#;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if w.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}/v1/embeddings")
}

#[tokio::test]
async fn open_loop_latency_counts_the_wait_for_a_slot() {
    let url = slow_server();
    // 50 arrivals/s (every 20 ms) against 40 ms of service and one slot: arrival k waits
    // about 20 ms * k for its turn.
    let cfg = LoadConfig {
        url,
        concurrency: 1,
        rate: Some(50.0),
        max_requests: 20,
        max_duration: Duration::from_secs(20),
        lengths: Lengths::Fixed(2),
        timeout: Duration::from_secs(10),
        ..LoadConfig::default()
    };
    let (report, samples) = qembed_loadgen::run(&cfg).await.unwrap();
    assert_eq!(report.ok, 20, "{report:?}");

    // Service time stays near SERVICE for every request (generous for a busy machine).
    let service = SERVICE.as_secs_f64() * 1000.0;
    for s in &samples {
        assert!(
            s.service_ms >= service * 0.9 && s.service_ms < service + 150.0,
            "{s:?}"
        );
        assert!(s.latency_ms + 1e-6 >= s.service_ms, "{s:?}");
        assert!(s.sent_at + 1e-6 >= s.scheduled_at, "{s:?}");
    }
    // Arrivals were due every 20 ms, whatever the server did.
    let last = &samples[samples.len() - 1];
    assert!(
        (last.scheduled_at - 19.0 * 0.02).abs() < 0.05,
        "due times drifted: {last:?}"
    );
    // Response time grows with the queue: the last arrival waited for the 19 before it,
    // about 19 * (40 - 20) ms = 380 ms more than the first. Service time does not.
    let mean = |xs: &[qembed_loadgen::Sample], f: fn(&qembed_loadgen::Sample) -> f64| {
        xs.iter().map(f).sum::<f64>() / xs.len() as f64
    };
    let (head, tail) = (&samples[..5], &samples[15..]);
    let growth = mean(tail, |s| s.latency_ms) - mean(head, |s| s.latency_ms);
    assert!(
        growth > 200.0,
        "response time did not grow: +{growth:.0} ms"
    );
    let service_growth = mean(tail, |s| s.service_ms) - mean(head, |s| s.service_ms);
    assert!(
        service_growth < 60.0,
        "service time grew: +{service_growth:.0} ms"
    );
    assert!(report.p99_ms > report.service_p99_ms + 200.0, "{report:?}");
}
