//! The agent's stream sink against a scripted fake bridge on a temporary Unix socket:
//! reconnect after a drop or a rejection, resend of the unacknowledged spool, the full spool
//! dropping its oldest samples, and the Goodbye after the final Ack on shutdown.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use guest_agent::config::{Endpoint, StreamConfig};
use guest_agent::sinks::ContainerTable;
use guest_agent::sinks::stream::{AgentIdentity, StreamSink, StreamStats};
use protocol::{
    Ack, CgroupMode, ClockReading, ErrorCode, ErrorMessage, Message, MessageCodec, MonoNanos,
    ProcStat, Sample, UnixNanos,
};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

/// Longest wait for any single step.
const STEP: Duration = Duration::from_secs(10);

type Bridge = Framed<UnixStream, MessageCodec>;

fn sample(seq: u64) -> Sample {
    Sample {
        seq,
        clock: ClockReading {
            mono_ns: MonoNanos(seq),
            unix_ns: UnixNanos(seq),
        },
        vm: ProcStat::default(),
        containers: Vec::new(),
    }
}

struct Agent {
    samples: mpsc::Sender<Sample>,
    _table: watch::Sender<ContainerTable>,
    stats: Arc<StreamStats>,
    task: JoinHandle<()>,
    instance_id: u64,
}

fn start_agent(socket: &Path, spool_capacity: usize) -> Agent {
    let config = StreamConfig {
        endpoint: Endpoint::Unix(socket.to_path_buf()),
        ping_interval: Duration::from_secs(3600),
        connect_timeout: Duration::from_secs(2),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        spool_capacity,
        shutdown_ack_timeout: Duration::from_secs(5),
        auth_token: None,
    };
    let instance_id = rand::random();
    let identity = AgentIdentity {
        boot_id: "test-boot".into(),
        instance_id,
        vm_name: "test-vm".into(),
        hostname: "h".into(),
        kernel_release: "k".into(),
        cgroup_mode: CgroupMode::V2,
        cpu_count: 1,
        sample_period_ms: 100,
        has_container_metadata: false,
    };
    let (samples, rx) = mpsc::channel(64);
    let (table, table_rx) = watch::channel(ContainerTable::new());
    let sink = StreamSink::new(config, identity, rx, table_rx);
    let stats = sink.stats();
    Agent {
        samples,
        _table: table,
        stats,
        task: tokio::spawn(sink.run()),
        instance_id,
    }
}

async fn next(bridge: &mut Bridge) -> Message {
    tokio::time::timeout(STEP, bridge.next())
        .await
        .expect("the agent sends in time")
        .expect("the agent keeps the connection open")
        .expect("a valid frame")
}

/// Accept a connection and check its opening: Hello (of `instance_id`), full Containers.
async fn accept(listener: &UnixListener, instance_id: u64) -> Bridge {
    let (stream, _) = tokio::time::timeout(STEP, listener.accept())
        .await
        .expect("the agent connects in time")
        .expect("accept");
    let mut bridge = Framed::new(stream, MessageCodec);
    match next(&mut bridge).await {
        Message::Hello(h) => assert_eq!(h.instance_id, instance_id),
        other => panic!("expected Hello first, got {other:?}"),
    }
    match next(&mut bridge).await {
        Message::Containers(c) => assert!(c.full, "the first Containers must be the full table"),
        other => panic!("expected Containers, got {other:?}"),
    }
    bridge
}

/// After the final Ack: only Pings may come before the Goodbye, then the sink task ends.
async fn goodbye_then_stop(bridge: &mut Bridge, task: JoinHandle<()>) {
    loop {
        match next(bridge).await {
            Message::Goodbye(_) => break,
            Message::Ping(_) => {}
            other => panic!("expected Goodbye, got {other:?}"),
        }
    }
    tokio::time::timeout(STEP, task)
        .await
        .expect("the sink stops after Goodbye")
        .expect("the sink task does not panic");
}

/// Read the next `n` samples, skipping Pings.
async fn samples(bridge: &mut Bridge, n: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.len() < n {
        match next(bridge).await {
            Message::Sample(s) => seqs.push(s.seq),
            Message::Ping(_) => {}
            other => panic!("expected Sample, got {other:?}"),
        }
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_resends_unacked_spool_after_reconnect_and_says_goodbye() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bridge.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let agent = start_agent(&socket, 100);

    let mut bridge = accept(&listener, agent.instance_id).await;
    for seq in 0..5 {
        agent.samples.send(sample(seq)).await.unwrap();
    }
    assert_eq!(samples(&mut bridge, 5).await, [0, 1, 2, 3, 4]);
    bridge.send(Message::Ack(Ack { seq: 2 })).await.unwrap();
    // Wait until the agent saw the Ack, then drop the connection.
    let deadline = tokio::time::Instant::now() + STEP;
    while agent.stats.acked_next.load(Ordering::Relaxed) < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Ack never processed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(bridge);

    // Taken while disconnected: spooled.
    agent.samples.send(sample(5)).await.unwrap();
    agent.samples.send(sample(6)).await.unwrap();

    let mut bridge = accept(&listener, agent.instance_id).await;
    assert_eq!(
        samples(&mut bridge, 4).await,
        [3, 4, 5, 6],
        "everything not acknowledged is resent, in order"
    );
    agent.samples.send(sample(7)).await.unwrap();
    assert_eq!(samples(&mut bridge, 1).await, [7]);

    // Shutdown: the agent waits for the Ack of its last sample, then says Goodbye.
    drop(agent.samples);
    bridge.send(Message::Ack(Ack { seq: 7 })).await.unwrap();
    goodbye_then_stop(&mut bridge, agent.task).await;
    assert_eq!(agent.stats.connections.load(Ordering::Relaxed), 2);
    assert_eq!(agent.stats.spool_dropped.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_spool_full_drops_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bridge.sock");
    // No bridge yet: the agent keeps failing to connect and spools.
    let agent = start_agent(&socket, 3);
    for seq in 0..6 {
        agent.samples.send(sample(seq)).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + STEP;
    while agent.stats.spool_dropped.load(Ordering::Relaxed) < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the spool never overflowed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let listener = UnixListener::bind(&socket).unwrap();
    let mut bridge = accept(&listener, agent.instance_id).await;
    assert_eq!(
        samples(&mut bridge, 3).await,
        [3, 4, 5],
        "a full spool keeps the newest samples (cumulative counters: nothing lost but resolution)"
    );
    assert_eq!(agent.stats.spool_dropped.load(Ordering::Relaxed), 3);
    bridge.send(Message::Ack(Ack { seq: 5 })).await.unwrap();
    drop(agent.samples);
    goodbye_then_stop(&mut bridge, agent.task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_reconnects_after_bridge_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bridge.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let agent = start_agent(&socket, 10);
    agent.samples.send(sample(0)).await.unwrap();

    let mut bridge = accept(&listener, agent.instance_id).await;
    bridge
        .send(Message::Error(ErrorMessage {
            code: ErrorCode::Busy,
            message: "at the connection limit".into(),
        }))
        .await
        .unwrap();
    drop(bridge);

    // The agent comes back on its own and resends the unacknowledged sample.
    let mut bridge = accept(&listener, agent.instance_id).await;
    assert_eq!(samples(&mut bridge, 1).await, [0]);
    bridge.send(Message::Ack(Ack { seq: 0 })).await.unwrap();
    drop(agent.samples);
    goodbye_then_stop(&mut bridge, agent.task).await;
    assert_eq!(agent.stats.connections.load(Ordering::Relaxed), 2);
}
