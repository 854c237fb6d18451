//! Wire format v1, pinned byte for byte.
//!
//! Each message kind has a golden frame in `tests/fixtures/v1/<name>.bin`. If this test fails,
//! the bytes on the wire changed: that breaks every deployed agent or bridge. Either undo the
//! change or bump `PROTOCOL_VERSION.major` and add `fixtures/v2/`. To (re)create missing
//! fixtures deliberately: `JOULEBRIDGE_BLESS=1 cargo test -p protocol --test wire`.

use std::path::PathBuf;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use proptest::prelude::*;
use protocol::codec::{self, CodecError};
use protocol::*;
use tokio_util::codec::{Decoder, Framed};

const ID: &str = "4f1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";

/// The golden Hello is a v1.0 agent's: its bytes must never change, whatever this build speaks.
fn hello() -> Message {
    Message::Hello(Hello {
        protocol: ProtocolVersion { major: 1, minor: 0 },
        agent_version: "0.1.0".into(),
        boot_id: "0f6b3c1e-8d2a-4f55-9a7e-1c2d3e4f5a6b".into(),
        instance_id: 0x0123_4567_89ab_cdef,
        vm_name: "docker-desktop".into(),
        hostname: "docker-desktop".into(),
        kernel_release: "6.12.5-linuxkit".into(),
        cgroup_mode: CgroupMode::V2,
        cpu_count: 8,
        clock: ClockReading {
            mono_ns: MonoNanos(12_345_678_901),
            unix_ns: UnixNanos(1_764_320_000_000_000_000),
        },
        sample_period_ms: 1000,
        has_container_metadata: true,
        auth_token: None,
    })
}

fn sample() -> Message {
    Message::Sample(Sample {
        seq: 42,
        clock: ClockReading {
            mono_ns: MonoNanos(13_345_678_901),
            unix_ns: UnixNanos(1_764_320_001_000_000_000),
        },
        vm: ProcStat {
            user: CpuMicros(1_000_000),
            nice: CpuMicros(0),
            system: CpuMicros(250_000),
            idle: CpuMicros(9_000_000),
            iowait: CpuMicros(10_000),
            irq: CpuMicros(0),
            softirq: CpuMicros(5_000),
            steal: CpuMicros(20_000),
            guest: CpuMicros(0),
            guest_nice: CpuMicros(0),
        },
        containers: vec![ContainerCounters {
            id: ID.into(),
            cpu: CpuCounters {
                usage: CpuMicros(900_000),
                user: CpuMicros(800_000),
                system: CpuMicros(100_000),
                nr_periods: 10,
                nr_throttled: 2,
                throttled: CpuMicros(30_000),
            },
            memory_current: Some(Bytes(64 << 20)),
            io: Some(IoCounters {
                read: Bytes(4096),
                write: Bytes(0),
            }),
            cpu_limit_millicores: Some(1500),
        }],
    })
}

fn containers() -> Message {
    Message::Containers(Containers {
        full: true,
        entries: vec![ContainerInfo {
            id: ID.into(),
            name: "shop-web-1".into(),
            image: "nginx:1.27".into(),
            compose_project: Some("shop".into()),
            compose_service: Some("web".into()),
            compose_number: Some(1),
            labels: vec![("tier".into(), "frontend".into())],
            pid: Some(4242),
            cgroup_path: format!("/docker/{ID}"),
            state: ContainerState::Running,
        }],
    })
}

fn all() -> Vec<(&'static str, Message)> {
    vec![
        ("hello", hello()),
        ("sample", sample()),
        ("containers", containers()),
        ("ack", Message::Ack(Ack { seq: 42 })),
        (
            "ping",
            Message::Ping(Ping {
                id: 8,
                guest_send: MonoNanos(2_000_000_000),
                prev_pong: Some(PongReceipt {
                    id: 7,
                    guest_recv: MonoNanos(1_000_300),
                }),
            }),
        ),
        (
            "pong",
            Message::Pong(Pong {
                id: 7,
                guest_send: MonoNanos(1_000),
                host_recv: MonoNanos(5_000_000_000),
                host_send: MonoNanos(5_000_000_100),
            }),
        ),
        (
            "goodbye",
            Message::Goodbye(Goodbye {
                reason: "shutdown".into(),
            }),
        ),
        (
            "error",
            Message::Error(ErrorMessage {
                code: ErrorCode::UnsupportedVersion,
                message: "protocol major version 2 is not supported; this bridge speaks 1".into(),
            }),
        ),
        (
            "energy",
            Message::Energy(EnergyReport {
                epoch: 0x5eed_0000_0000_0001,
                window_end: UnixNanos(1_764_320_010_000_000_000),
                provenance: EnergyProvenance::VendorModel,
                vm: AttributedEnergy {
                    energy: MicroJoules(12_345_678),
                    low: MicroJoules(11_000_000),
                    high: MicroJoules(13_500_000),
                },
                containers: vec![ContainerEnergy {
                    id: ID.into(),
                    name: "web-1".into(),
                    energy: AttributedEnergy {
                        energy: MicroJoules(9_000_000),
                        low: MicroJoules(8_000_000),
                        high: MicroJoules(9_900_000),
                    },
                }],
            }),
        ),
    ]
}

/// Mixed versions: a v1.0 peer's frames decode in this build, the v1.0 kinds keep their
/// variant numbers (Energy is appended as the 9th), and a v1.0 decoder (the same enum without
/// the last variant) refuses Energy with a decode error rather than misreading it — which is
/// why the bridge sends Energy only to agents whose Hello says minor ≥ 1.
#[test]
fn energy_is_appended_and_gated_by_minor_version() {
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    enum MessageV1_0 {
        Hello(Hello),
        Sample(Sample),
        Containers(Containers),
        Ack(Ack),
        Ping(Ping),
        Pong(Pong),
        Goodbye(Goodbye),
        Error(ErrorMessage),
    }
    for (name, msg) in all() {
        let payload = codec::encode_payload(&msg).unwrap();
        let old = codec::decode_payload::<MessageV1_0>(&payload);
        if name == "energy" {
            assert_eq!(payload[0], 8, "Energy is variant 8");
            assert!(old.is_err(), "a v1.0 decoder must not accept Energy");
        } else {
            assert!(old.is_ok(), "{name} must stay readable by a v1.0 peer");
        }
    }
    const {
        assert!(PROTOCOL_VERSION.major == 1 && PROTOCOL_VERSION.minor >= ENERGY_SINCE_MINOR);
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/v1")
        .join(format!("{name}.bin"))
}

#[test]
fn golden_frames_v1_are_byte_identical() {
    let bless = std::env::var_os("JOULEBRIDGE_BLESS").is_some();
    for (name, msg) in all() {
        let mut frame = BytesMut::new();
        codec::encode_frame(&msg, &mut frame).unwrap();
        let path = fixture(name);
        if bless && !path.exists() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &frame).unwrap();
        }
        let golden = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("missing golden frame {path:?} ({e}); see module docs"));
        assert_eq!(&frame[..], &golden[..], "wire bytes of {name} changed");
        // And the golden bytes decode back to the same message.
        let mut buf = BytesMut::from(&golden[..]);
        assert_eq!(MessageCodec.decode(&mut buf).unwrap(), Some(msg));
        assert!(buf.is_empty());
    }
}

#[test]
fn golden_ack_prefix_is_big_endian_length() {
    // Ack{seq: 42}: variant 3, then varint 42 → payload [3, 42], prefix 00 00 00 02.
    let golden = std::fs::read(fixture("ack")).unwrap();
    assert_eq!(golden, vec![0, 0, 0, 2, 3, 42]);
}

#[test]
fn version_is_readable_from_a_future_hello() {
    // A v9 Hello whose body we cannot decode must still reveal its version.
    let mut payload = codec::encode_payload(&0u32).unwrap(); // variant 0 = Hello
    payload.extend(codec::encode_payload(&ProtocolVersion { major: 9, minor: 3 }).unwrap());
    payload.extend([0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(
        codec::peek_version(&payload),
        Some(ProtocolVersion { major: 9, minor: 3 })
    );
    assert!(codec::decode_payload::<Message>(&payload).is_err());
}

#[tokio::test]
async fn framed_round_trip_over_duplex() {
    let (a, b) = tokio::io::duplex(64); // small buffer: frames cross many partial reads
    let mut tx = Framed::new(a, MessageCodec);
    let mut rx = Framed::new(b, MessageCodec);
    let msgs = all();
    let expected: Vec<Message> = msgs.iter().map(|(_, m)| m.clone()).collect();
    let send = tokio::spawn(async move {
        for (_, m) in msgs {
            tx.send(m).await.unwrap();
        }
    });
    for want in expected {
        assert_eq!(rx.next().await.unwrap().unwrap(), want);
    }
    send.await.unwrap();
    assert!(rx.next().await.is_none(), "clean EOF after the last frame");
}

#[tokio::test]
async fn eof_inside_a_frame_is_an_error() {
    let (a, b) = tokio::io::duplex(1024);
    let mut frame = BytesMut::new();
    codec::encode_frame(&sample(), &mut frame).unwrap();
    let mut a = a;
    tokio::io::AsyncWriteExt::write_all(&mut a, &frame[..frame.len() / 2])
        .await
        .unwrap();
    drop(a);
    let mut rx = Framed::new(b, MessageCodec);
    let err = rx.next().await.unwrap().unwrap_err();
    assert!(matches!(err, CodecError::Truncated { .. }), "{err}");
}

fn arb_counters() -> impl Strategy<Value = ContainerCounters> {
    (
        "[0-9a-f]{64}",
        any::<[u64; 6]>(),
        any::<Option<u64>>(),
        any::<Option<(u64, u64)>>(),
        any::<Option<u32>>(),
    )
        .prop_map(|(id, c, mem, io, lim)| ContainerCounters {
            id,
            cpu: CpuCounters {
                usage: CpuMicros(c[0]),
                user: CpuMicros(c[1]),
                system: CpuMicros(c[2]),
                nr_periods: c[3],
                nr_throttled: c[4],
                throttled: CpuMicros(c[5]),
            },
            memory_current: mem.map(Bytes),
            io: io.map(|(r, w)| IoCounters {
                read: Bytes(r),
                write: Bytes(w),
            }),
            cpu_limit_millicores: lim,
        })
}

proptest! {
    #[test]
    fn sample_round_trips(seq: u64, mono: u64, unix: u64, ticks in any::<[u64; 10]>(),
                          containers in proptest::collection::vec(arb_counters(), 0..20)) {
        let msg = Message::Sample(Sample {
            seq,
            clock: ClockReading { mono_ns: MonoNanos(mono), unix_ns: UnixNanos(unix) },
            vm: ProcStat {
                user: CpuMicros(ticks[0]), nice: CpuMicros(ticks[1]), system: CpuMicros(ticks[2]),
                idle: CpuMicros(ticks[3]), iowait: CpuMicros(ticks[4]), irq: CpuMicros(ticks[5]),
                softirq: CpuMicros(ticks[6]), steal: CpuMicros(ticks[7]), guest: CpuMicros(ticks[8]),
                guest_nice: CpuMicros(ticks[9]),
            },
            containers,
        });
        let mut buf = BytesMut::new();
        codec::encode_frame(&msg, &mut buf).unwrap();
        prop_assert_eq!(MessageCodec.decode(&mut buf).unwrap(), Some(msg));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&bytes[..]);
        // Any outcome but a panic or an unbounded allocation is fine; on success re-encoding
        // must reproduce a decodable frame.
        if let Ok(Some(msg)) = MessageCodec.decode(&mut buf) {
            let mut again = BytesMut::new();
            codec::encode_frame(&msg, &mut again).unwrap();
            prop_assert_eq!(MessageCodec.decode(&mut again).unwrap(), Some(msg));
        }
    }
}
