//! Connection limits on the frontend's listeners (`parm_serve::server::conn`), over 127.0.0.1:
//! past `max_connections` a new connection is closed at once, on the HTTP and the gRPC port
//! alike; a closed connection frees its place; a kept-alive connection that goes idle is
//! closed after the idle timeout, while one in use is not.

use crate::support;

use std::time::{Duration, Instant};

use parm_serve::oip::security::ServeOptions;
use parm_serve::server::conn::ConnLimits;
use support::{cluster, expected, good_body, input, output_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const IDLE: Duration = Duration::from_millis(500);

/// Whether the server closed `s` within `wait` (a read ends or fails).
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // the rest of an answer
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_limit_connections_and_close_idle_ones() {
    let limits = ConnLimits { max_connections: 2, idle_timeout: IDLE };
    let c = cluster(ServeOptions { conn: limits, ..Default::default() }, None).await;
    let grpc_addr = c.grpc.trim_start_matches("http://").to_string();
    for addr in [c.http_addr.clone(), grpc_addr] {
        // Two silent connections take both places; a third is closed at once.
        let mut held = vec![TcpStream::connect(&addr).await.unwrap(), TcpStream::connect(&addr).await.unwrap()];
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut third = TcpStream::connect(&addr).await.unwrap();
        assert!(closed_within(&mut third, Duration::from_secs(2)).await, "{addr}: a third connection was kept");
        // One closes: a new one is admitted (and, silent, closed only by the idle timeout).
        drop(held.pop());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut next = TcpStream::connect(&addr).await.unwrap();
        assert!(!closed_within(&mut next, IDLE / 5).await, "{addr}: a freed place was not given");
    }

    // A kept-alive HTTP/1.1 connection in use stays open past the timeout; idle, it is closed.
    let c = cluster(ServeOptions { conn: limits, ..Default::default() }, None).await;
    let mut s = TcpStream::connect(&c.http_addr).await.unwrap();
    let body = serde_json::to_vec(&good_body(3)).unwrap();
    let start = Instant::now();
    while start.elapsed() < IDLE * 2 {
        let head = format!(
            "POST /v2/models/lin/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body).await.unwrap();
        let answer = read_response(&mut s).await;
        assert_eq!(output_of(&answer), expected(&input(3)));
        tokio::time::sleep(IDLE / 5).await;
    }
    let quiet = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(5)).await, "an idle connection was kept");
    let waited = quiet.elapsed();
    assert!(waited >= IDLE / 2, "closed after {waited:?}, before the idle timeout");
}

/// Reads one HTTP/1.1 response with a content-length and returns its JSON body.
async fn read_response(s: &mut TcpStream) -> serde_json::Value {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("an answer").unwrap();
        assert!(n > 0, "connection closed while in use");
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .expect("a content-length");
            if raw.len() >= end + 4 + length {
                assert!(text.starts_with("HTTP/1.1 200"), "{text}");
                return serde_json::from_slice(&raw[end + 4..end + 4 + length]).unwrap();
            }
        }
    }
}
