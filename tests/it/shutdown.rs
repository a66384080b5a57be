//! Graceful shutdown: a webhook in flight when shutdown begins still gets its answer, and a client
//! that never finishes cannot hold the relay past `server.shutdown_timeout`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    fixture, free_port, published_count, wait_for_requests_in_flight, NatsServer, RelayProcess,
};

/// Sends the request head and the first half of the body; the caller sends the rest.
async fn start_request(addr: SocketAddr, body: &[u8], signature: &str) -> TcpStream {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /webhooks/netbox HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\n\
         x-hook-signature: {signature}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body[..body.len() / 2]).await.unwrap();
    conn
}

/// Waits until the relay refuses new connections: its shutdown has begun.
async fn wait_until_refused(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the relay still accepts connections"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_webhook_in_flight_at_shutdown_is_answered_and_published() {
    let nats = NatsServer::start();
    let mut relay = RelayProcess::start(&nats, free_port());
    relay.wait_ready().await;
    let f = fixture("020_device_created.json");
    let mut conn = start_request(relay.addr, &f.body, &f.signature).await;
    wait_for_requests_in_flight(&relay.base, 1).await;

    relay.send_sigterm();
    wait_until_refused(relay.addr).await;
    conn.write_all(&f.body[f.body.len() / 2..]).await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(relay.wait_exit(Duration::from_secs(10)), "the relay exited");
    assert_eq!(
        published_count(&nats.url()).await,
        1,
        "the in-flight delta was published"
    );
}

#[tokio::test]
async fn a_stalled_client_cannot_hold_shutdown_past_the_grace_period() {
    let nats = NatsServer::start();
    let env = [
        ("NETBOX_RELAY_LOG__LEVEL", "warn"),
        ("NETBOX_RELAY_SERVER__SHUTDOWN_TIMEOUT", "300ms"),
    ];
    let mut relay = RelayProcess::start_with(&nats, free_port(), &env, None);
    relay.wait_ready().await;
    let f = fixture("020_device_created.json");
    let _stalled = start_request(relay.addr, &f.body, &f.signature).await;
    wait_for_requests_in_flight(&relay.base, 1).await;
    let started = Instant::now();
    assert!(
        relay.terminate(Duration::from_secs(5)),
        "still running 5 s after SIGTERM with a 300 ms grace period"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "a request in its handler gets the grace period: exited after {:?}",
        started.elapsed()
    );
}

/// `netbox-relay serve | head -1`, or a log shipper that died: every log line now fails to
/// write. The relay goes on answering and still stops on SIGTERM.
#[tokio::test]
async fn a_closed_log_pipe_stops_neither_work_nor_shutdown() {
    use std::io::BufRead;
    let nats = NatsServer::start();
    let env = [("NETBOX_RELAY_LOG__LEVEL", "info")];
    let (mut relay, log) = RelayProcess::start_piped(&nats, free_port(), &env);
    let mut first = String::new();
    let mut log = std::io::BufReader::new(log);
    log.read_line(&mut first).unwrap();
    assert!(first.contains("\"level\""), "first log line: {first}");
    drop(log);
    relay.wait_ready().await;

    let f = fixture("020_device_created.json");
    let status = reqwest::Client::new()
        .post(format!("{}/webhooks/netbox", relay.base))
        .header("content-type", "application/json")
        .header("x-hook-signature", &f.signature)
        .body(f.body.clone())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202, "a webhook logged into a closed pipe");
    assert_eq!(published_count(&nats.url()).await, 1);
    assert!(
        relay.terminate(Duration::from_secs(10)),
        "the relay ignored SIGTERM with its log pipe closed"
    );
}
