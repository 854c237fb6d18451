//! Hostile or broken peers: each one gets a clear log line naming the peer and a closed
//! connection, while a real agent connected to the same bridge keeps streaming.
//!
//! The bridge runs as its real binary with JSON logs, so the test reads the very lines an
//! operator would see.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use nix::sys::signal::Signal;
use protocol::codec;
use protocol::{ClockReading, ErrorCode, Hello, Message, MonoNanos, ProtocolVersion, UnixNanos};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;
use tokio::process::Command;
use tokio::sync::oneshot;

use crate::real_cgroup::{Accounting, TestCgroup, agent_config, signal, wait_recorded};
use crate::support::{self, scrape};

const DEADLINE: Duration = Duration::from_secs(30);
/// The bridge's `--frame-timeout-ms` in this test.
const FRAME_TIMEOUT_MS: u64 = 500;

/// Send `bytes`, then read until the bridge closes; returns what it sent back.
async fn exchange(socket: &Path, bytes: &[u8], hold_open: bool) -> Vec<u8> {
    let mut stream = UnixStream::connect(socket).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    if !hold_open {
        stream.shutdown().await.expect("shutdown write side");
    }
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply))
        .await
        .expect("the bridge must close the connection")
        .expect("read");
    reply
}

/// The Error the bridge sent, decoded.
fn error_in(reply: &[u8]) -> (ErrorCode, String) {
    let mut buf = BytesMut::from(reply);
    let payload = codec::split_frame(&mut buf)
        .expect("valid frame")
        .expect("a whole frame before the close");
    match codec::decode_payload::<Message>(&payload).expect("decodes") {
        Message::Error(e) => (e.code, e.message),
        other => panic!("expected Error, got {other:?}"),
    }
}

fn hello_v99() -> Vec<u8> {
    hello_frame(
        ProtocolVersion {
            major: 99,
            minor: 3,
        },
        None,
    )
}

fn hello_frame(protocol: ProtocolVersion, auth_token: Option<String>) -> Vec<u8> {
    let hello = Message::Hello(Hello {
        protocol,
        agent_version: "99.0.0".into(),
        cpu_count: 1,
        auth_token,
        ..protocol::testing::hello("b", 1, "future")
    });
    let mut buf = BytesMut::new();
    codec::encode_frame(&hello, &mut buf).expect("encode");
    buf.to_vec()
}

/// Wait until the good agent's recorded sample count passes `count`.
async fn agent_still_streaming(record: &Path, id: &str, count: usize) -> usize {
    let rec = wait_recorded(record, DEADLINE, "the good agent's next samples", |r| {
        r.usage_of(id).len() >= count + 2
    })
    .await;
    rec.usage_of(id).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and cgroup CPU accounting"]
async fn bad_peers_are_closed_and_logged_while_agents_keep_streaming() {
    let accounting = Accounting::find();
    let mut cg = TestCgroup::create(&accounting, "bad-input-idle");
    cg.spawn_idle().await;

    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("bridge.sock");
    let record = dir.path().join("rec.jbr");
    let log_path = dir.path().join("bridge.log");
    let mut bridge = Command::new(env!("CARGO_BIN_EXE_host-bridge"))
        .args(["serve", "--no-live", "--log-format", "json", "--listen"])
        .arg(format!("unix://{}", socket.display()))
        .arg("--record")
        .arg(&record)
        .arg("--frame-timeout-ms")
        .arg(FRAME_TIMEOUT_MS.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn host-bridge");
    support::poll_until(DEADLINE, "the bridge to listen", || async {
        UnixStream::connect(&socket).await.is_ok()
    })
    .await;

    let agent = agent_config(&format!("unix://{}", socket.display()), &[&cg.rel], 100);
    let (stop_agent, agent_stopped) = oneshot::channel::<()>();
    let agent_task = tokio::spawn(guest_agent::run(agent, async {
        let _stopped = agent_stopped.await;
    }));
    let mut seen = agent_still_streaming(&record, &cg.rel, 0).await;

    // 1. Garbage: a plausible length, then bytes that are no Hello.
    let mut garbage = vec![0, 0, 0, 12];
    garbage.extend_from_slice(&[0xff; 12]);
    let (code, message) = error_in(&exchange(&socket, &garbage, false).await);
    assert_eq!(code, ErrorCode::MalformedFrame, "{message}");
    assert!(message.contains("not a joulebridge Hello"), "{message}");
    seen = agent_still_streaming(&record, &cg.rel, seen).await;

    // 2. A length prefix far above the frame limit.
    let (code, message) =
        error_in(&exchange(&socket, &[0x7f, 0xff, 0xff, 0xff, 1, 2], false).await);
    assert_eq!(code, ErrorCode::FrameTooLarge, "{message}");
    assert!(message.contains("exceeds the limit"), "{message}");
    seen = agent_still_streaming(&record, &cg.rel, seen).await;

    // 3. A Hello from a future major version: told so in words.
    let (code, message) = error_in(&exchange(&socket, &hello_v99(), false).await);
    assert_eq!(code, ErrorCode::UnsupportedVersion, "{message}");
    assert!(
        message.contains("v99.3") && message.contains("v1."),
        "{message}"
    );
    seen = agent_still_streaming(&record, &cg.rel, seen).await;

    // 4. A peer that stops in the middle of a frame (and keeps the socket open).
    let started = Instant::now();
    let reply = exchange(&socket, &[0, 0, 0, 100, 1, 2, 3], true).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(FRAME_TIMEOUT_MS - 50),
        "closed after {waited:?}, before the frame timeout"
    );
    let (_, message) = error_in(&reply);
    assert!(message.contains("stalled"), "{message}");
    agent_still_streaming(&record, &cg.rel, seen).await;

    let _sent = stop_agent.send(());
    agent_task
        .await
        .expect("agent task")
        .expect("agent ends cleanly");
    signal(bridge.id().expect("bridge pid"), Signal::SIGTERM);
    let status = bridge.wait().await.expect("wait bridge");
    assert!(status.success(), "bridge exited with {status}");

    let log = std::fs::read_to_string(&log_path).expect("bridge log");
    let warn_with_peer = |needle: &str| {
        log.lines().any(|l| {
            l.contains("\"level\":\"WARN\"") && l.contains("\"peer\":") && l.contains(needle)
        })
    };
    for needle in [
        "Rejected a peer at the handshake; closing.",
        "MalformedFrame",
        "Frame too large; closing.",
        "UnsupportedVersion",
        "Peer stalled; closing.",
    ] {
        assert!(
            warn_with_peer(needle),
            "no WARN line with the peer mentioning {needle:?} in:\n{log}"
        );
    }
    let connected = log.matches("Agent connected.").count();
    assert_eq!(
        connected, 1,
        "the good agent had to reconnect ({connected} connections):\n{log}"
    );
}

/// Over the connection cap an agent is told "busy"; without the right token, "unauthorized".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_peers_are_told_busy_and_wrong_tokens_unauthorized() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("bridge.sock");
    let config = host_bridge::config::Config {
        listen: vec![host_bridge::config::ListenEndpoint::Unix(socket.clone())],
        record: dir.path().join("rec.jbr"),
        max_connections: 1,
        auth_token: Some("s3cret".into()),
        live: false,
        frame_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(60),
        power: None,
    };
    let bridge = host_bridge::serve::Bridge::bind(config)
        .await
        .expect("bridge binds");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(bridge.run(async {
        let _stopped = stopped.await;
    }));

    // A wrong token is refused in words.
    let wrong = hello_frame(protocol::PROTOCOL_VERSION, Some("guess".into()));
    let (code, message) = error_in(&exchange(&socket, &wrong, false).await);
    assert_eq!(code, ErrorCode::Unauthorized, "{message}");
    assert!(message.contains("--auth-token"), "{message}");

    // One agent holds the only slot: it is in once its sample is acknowledged ...
    // (The rejected peer's slot is freed just after its socket closes: retry while busy.)
    let deadline = Instant::now() + DEADLINE;
    let holder = loop {
        let mut holder = UnixStream::connect(&socket).await.expect("connect");
        let mut opening = hello_frame(protocol::PROTOCOL_VERSION, Some("s3cret".into()));
        let sample = Message::Sample(protocol::Sample {
            seq: 0,
            clock: ClockReading {
                mono_ns: MonoNanos(1),
                unix_ns: UnixNanos(1),
            },
            vm: protocol::ProcStat::default(),
            containers: Vec::new(),
        });
        let mut buf = BytesMut::new();
        codec::encode_frame(&sample, &mut buf).expect("encode");
        opening.extend_from_slice(&buf);
        holder.write_all(&opening).await.expect("write");
        let mut reply = BytesMut::new();
        let first = loop {
            if let Some(payload) = codec::split_frame(&mut reply).expect("valid frame") {
                break codec::decode_payload::<Message>(&payload).expect("decodes");
            }
            let n = tokio::time::timeout(DEADLINE, holder.read_buf(&mut reply))
                .await
                .expect("answered in time")
                .expect("read");
            assert!(n > 0, "the bridge closed the holder without a word");
        };
        match first {
            Message::Ack(ack) => {
                assert_eq!(ack.seq, 0);
                break holder;
            }
            Message::Error(e) if e.code == ErrorCode::Busy && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => panic!("expected the holder's sample acknowledged, got {other:?}"),
        }
    };

    // ... so the next one is told to come back later.
    let (code, message) = error_in(&exchange(&socket, &[], false).await);
    assert_eq!(code, ErrorCode::Busy, "{message}");
    assert!(message.contains("--max-connections"), "{message}");
    drop(holder);

    let _sent = stop.send(());
    task.await
        .expect("bridge task")
        .expect("bridge ends cleanly");
}

/// One sample of a label-less metric in a `/metrics` body.
fn metric(body: &str, name: &str) -> u64 {
    let line = body
        .lines()
        .find(|l| l.split_once(' ').is_some_and(|(n, _)| n == name))
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{body}"));
    let (_, value) = line.split_once(' ').expect("name value");
    // Rendered as a float of a whole number ("3.0").
    value
        .strip_suffix(".0")
        .unwrap_or(value)
        .parse()
        .unwrap_or_else(|e| panic!("{line}: {e}"))
}

/// Scrape until `name` reads `want` (a task's end lands just after its socket closes).
async fn scrape_until(addr: std::net::SocketAddr, name: &str, want: u64) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let body = scrape(addr).await;
        if metric(&body, name) == want || Instant::now() >= deadline {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The bridge's own counters on `/metrics`: every rejected frame counts once, refusals at
/// the cap count apart, and the open-connections gauge follows the live agent back to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_and_open_connections_are_counted_on_metrics() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("bridge.sock");
    let record = dir.path().join("rec.jbr");
    let config = host_bridge::config::Config {
        listen: vec![host_bridge::config::ListenEndpoint::Unix(socket.clone())],
        record: record.clone(),
        max_connections: 1,
        auth_token: Some("s3cret".into()),
        live: false,
        frame_timeout: Duration::from_millis(FRAME_TIMEOUT_MS),
        idle_timeout: Duration::from_secs(60),
        power: None,
    };
    let attribution = host_bridge::cli::AttributionArgs {
        policy: host_bridge::pipeline::IdlePolicy::Exclude,
        window: 5.0,
        idle_watts: None,
        grid_intensity: None,
    };
    let mut bridge = host_bridge::serve::Bridge::bind(config)
        .await
        .expect("bridge binds");
    let live = host_bridge::serve::live::attach(
        &mut bridge,
        &record,
        attribution.pipeline_config().expect("pipeline settings"),
        Some(host_bridge::serve::live::MetricsBind {
            addr: "127.0.0.1:0".parse().expect("address"),
            required: true,
        }),
    )
    .await
    .expect("live attribution attaches");
    let addr = live.metrics_addr.expect("metrics are served");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(bridge.run(async {
        let _stopped = stopped.await;
    }));

    let body = scrape(addr).await;
    assert_eq!(metric(&body, "joulebridge_frames_rejected_total"), 0);
    assert_eq!(metric(&body, "joulebridge_agent_connections_open"), 0);

    // Every kind of frame the bridge refuses, each on its own connection.
    let mut garbage = vec![0, 0, 0, 12];
    garbage.extend_from_slice(&[0xff; 12]);
    let mut ping = BytesMut::new();
    let first_ping = Message::Ping(protocol::Ping {
        id: 1,
        guest_send: MonoNanos(1),
        prev_pong: None,
    });
    codec::encode_frame(&first_ping, &mut ping).expect("encode");
    let bad: [(&str, Vec<u8>, bool, ErrorCode); 6] = [
        ("garbage", garbage, false, ErrorCode::MalformedFrame),
        (
            "oversize prefix",
            vec![0xff, 0xff, 0xff, 0xff],
            true,
            ErrorCode::FrameTooLarge,
        ),
        (
            "v99 Hello",
            hello_v99(),
            false,
            ErrorCode::UnsupportedVersion,
        ),
        (
            "Ping first",
            ping.to_vec(),
            false,
            ErrorCode::UnexpectedMessage,
        ),
        (
            "wrong token",
            hello_frame(protocol::PROTOCOL_VERSION, Some("guess".into())),
            false,
            ErrorCode::Unauthorized,
        ),
        (
            "stalled mid-frame",
            vec![0, 0, 0, 40, 1, 2],
            true,
            ErrorCode::MalformedFrame,
        ),
    ];
    // A refused peer's slot frees just after its socket closes: peers told Busy meanwhile
    // are counted apart, and retried.
    let mut busy = 0;
    for (what, bytes, hold_open, want) in &bad {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let (code, message) = error_in(&exchange(&socket, bytes, *hold_open).await);
            if code == ErrorCode::Busy && Instant::now() < deadline {
                busy += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            assert_eq!(code, *want, "{what}: {message}");
            break;
        }
    }
    let body = scrape_until(addr, "joulebridge_agent_connections_open", 0).await;
    assert_eq!(
        metric(&body, "joulebridge_frames_rejected_total"),
        u64::try_from(bad.len()).expect("small"),
        "{body}"
    );
    assert_eq!(metric(&body, "joulebridge_agent_connections_open"), 0);
    assert_eq!(
        metric(&body, "joulebridge_agent_connections_refused_total"),
        busy
    );

    // A live agent holds the only slot: the gauge reads 1, and the next peer is refused.
    let deadline = Instant::now() + DEADLINE;
    let holder = loop {
        let mut holder = UnixStream::connect(&socket).await.expect("connect");
        let hello = hello_frame(protocol::PROTOCOL_VERSION, Some("s3cret".into()));
        holder.write_all(&hello).await.expect("write");
        let mut ping = BytesMut::new();
        codec::encode_frame(&first_ping, &mut ping).expect("encode");
        holder.write_all(&ping).await.expect("write");
        let mut reply = BytesMut::new();
        let first = loop {
            if let Some(payload) = codec::split_frame(&mut reply).expect("valid frame") {
                break codec::decode_payload::<Message>(&payload).expect("decodes");
            }
            let n = tokio::time::timeout(DEADLINE, holder.read_buf(&mut reply))
                .await
                .expect("answered in time")
                .expect("read");
            assert!(n > 0, "the bridge closed the holder without a word");
        };
        match first {
            Message::Pong(pong) => {
                assert_eq!(pong.id, 1);
                break holder;
            }
            Message::Error(e) if e.code == ErrorCode::Busy && Instant::now() < deadline => {
                busy += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => panic!("expected the holder's Ping answered, got {other:?}"),
        }
    };
    let (code, message) = error_in(&exchange(&socket, &[], false).await);
    assert_eq!(code, ErrorCode::Busy, "{message}");
    busy += 1;
    let body = scrape(addr).await;
    assert_eq!(
        metric(&body, "joulebridge_agent_connections_open"),
        1,
        "{body}"
    );
    assert_eq!(
        metric(&body, "joulebridge_agent_connections_refused_total"),
        busy
    );
    assert_eq!(
        metric(&body, "joulebridge_frames_rejected_total"),
        u64::try_from(bad.len()).expect("small"),
        "a refusal at the cap is no rejected frame"
    );

    // The agent leaves: the gauge goes back to 0.
    drop(holder);
    let body = scrape_until(addr, "joulebridge_agent_connections_open", 0).await;
    assert_eq!(
        metric(&body, "joulebridge_agent_connections_open"),
        0,
        "{body}"
    );

    let _sent = stop.send(());
    task.await
        .expect("bridge task")
        .expect("bridge ends cleanly");
    live.stop().await.expect("live attribution stops");
}
