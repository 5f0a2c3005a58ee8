//! A keep-alive connection the server closes between requests (what nginx's old
//! workers do to idle client connections when it reloads) costs no failed request: the
//! load generator sends it again on a fresh connection and counts the retry. A server
//! that never answers is still a failure: the retry happens once, not forever.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use qembed_loadgen::{Lengths, LoadConfig};

/// Reads one request's headers and body; false at EOF.
fn read_request(r: &mut BufReader<TcpStream>) -> bool {
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).is_ok()
}

/// Answers the first request on each connection with keep-alive, then reads the next
/// request and closes the connection without answering it (`answer_again` false), or
/// never answers anything (`never` true).
fn server(never: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                if !read_request(&mut r) || never {
                    return;
                }
                let body = r#"{"data":[],"usage":{"prompt_tokens":3}}"#;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = w.write_all(resp.as_bytes());
                // The client reuses this connection for its next request: drop it then.
                let _ = read_request(&mut r);
            });
        }
    });
    format!("http://{addr}/v1/embeddings")
}

fn config(url: String) -> LoadConfig {
    LoadConfig {
        url,
        concurrency: 1,
        rate: None,
        max_requests: 6,
        max_duration: Duration::from_secs(20),
        lengths: Lengths::Fixed(2),
        timeout: Duration::from_secs(5),
        ..LoadConfig::default()
    }
}

#[tokio::test]
async fn a_connection_closed_between_requests_is_retried_once() {
    let (report, samples) = qembed_loadgen::run(&config(server(false))).await.unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.ok, 6);
    // Every request after the first went out on a kept-alive connection that the
    // server then dropped, and succeeded on a fresh one.
    assert!(!samples[0].retried, "{:?}", samples[0]);
    assert_eq!(report.retried, 5, "{report:?}");
}

#[tokio::test]
async fn a_server_that_never_answers_still_fails() {
    let (report, samples) = qembed_loadgen::run(&config(server(true))).await.unwrap();
    assert_eq!(report.ok, 0, "{report:?}");
    assert!(
        samples.iter().all(|s| s.retried && s.status == 0),
        "{samples:?}"
    );
}
