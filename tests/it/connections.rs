//! Connection limits: slow and idle clients are closed, never lock out the probes or NetBox, and
//! never hold up shutdown. Real relay, real sockets on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::helpers::{
    fixture, free_port, post_fixture_to, test_config, NatsServer, RelayProcess, TestRelay,
};

/// `count` connections: three in four send half a request head, the rest nothing at all.
async fn crowd(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(count);
    for i in 0..count {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        if i % 4 != 0 {
            let partial = b"POST /webhooks/netbox HTTP/1.1\r\nHost: relay\r\nX-Slow: ";
            stream.write_all(partial).await.expect("write");
        }
        streams.push(stream);
    }
    streams
}

/// Answers when the relay has closed the connection (end of stream or reset).
async fn closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_closed_and_never_lock_out_probes_or_webhooks() {
    netbox_relay::webhook::server::raise_open_files_limit();
    let nats = NatsServer::start();
    let mut config = test_config(&nats);
    config.server.header_timeout = Duration::from_secs(1);
    config.server.request_timeout = Duration::from_secs(1);
    config.server.idle_timeout = Duration::from_secs(2);
    config.server.max_connections = 64;
    let relay = TestRelay::start(config).await;
    let mut slow = crowd(relay.relay.addr(), 600).await;

    // Far more slow clients than the cap, and still every answer comes.
    let bound = Duration::from_secs(5);
    let (status, _) = timeout(bound, relay.get("/healthz"))
        .await
        .expect("/healthz");
    assert_eq!(status, 200);
    let (status, body) = timeout(bound, relay.get("/readyz")).await.expect("/readyz");
    assert_eq!(status, 200, "{body}");
    let (status, body) = timeout(bound, relay.post_fixture("020_device_created.json"))
        .await
        .expect("a signed webhook is answered");
    assert_eq!(status, 202, "{body}");

    // Every slow or idle connection is closed by the relay, evicted or timed out.
    for stream in &mut slow {
        timeout(Duration::from_secs(10), closed(stream))
            .await
            .expect("a slow connection was held open");
    }

    // A body that stops half way is answered 408 once server.request_timeout has passed.
    let mut stream = TcpStream::connect(relay.relay.addr()).await.unwrap();
    let head = "POST /webhooks/netbox HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nX-Hook-Signature: 00\r\nContent-Length: 100\r\n\r\n{\"event\":";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the stalled body was not cut off")
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    relay.relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_is_cut_off_at_the_request_timeout() {
    let nats = NatsServer::start();
    let mut config = test_config(&nats);
    config.server.request_timeout = Duration::from_secs(1);
    let relay = TestRelay::start(config).await;
    let mut stream = TcpStream::connect(relay.relay.addr()).await.unwrap();
    let head = "POST /webhooks/netbox HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nX-Hook-Signature: 00\r\nContent-Length: 100\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    // One byte every 300 ms: each arrives well within the timeout, the whole body never does.
    // The answer must come while the body is still trickling (40 bytes take 12 s).
    let mut answer = vec![0u8; 512];
    for _ in 0..40 {
        stream.write_all(b" ").await.ok();
        if let Ok(read) = timeout(Duration::from_millis(300), stream.read(&mut answer)).await {
            let answer = String::from_utf8_lossy(&answer[..read.unwrap_or(0)]).into_owned();
            assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
            return;
        }
    }
    panic!("a body sent one byte at a time held its connection past the request timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_does_not_wait_for_idle_or_stalled_clients() {
    netbox_relay::webhook::server::raise_open_files_limit();
    let nats = NatsServer::start();
    let port = free_port();
    // The default grace period (30 s) would be the wait if stalled clients held shutdown.
    let mut relay = RelayProcess::start(&nats, port);
    relay.wait_ready().await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let _slow = crowd(addr, 100).await;
    // One keep-alive connection that has been answered once and then sits idle.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(idle.read(&mut buf).await.unwrap() > 0);
    let f = fixture("020_device_created.json");
    let status = post_fixture_to(&relay.base, f).await;
    assert_eq!(status, 202);
    let exited = tokio::task::block_in_place(|| relay.terminate(Duration::from_secs(5)));
    assert!(exited, "SIGTERM waited for idle or stalled clients");
}
