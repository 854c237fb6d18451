//! Parse throughput of the powermetrics pull parser on the largest real capture.
//!
//! Goal (issue #3): at least 100 MB/s of plist. Run with
//! `cargo bench -p host-bridge --bench powermetrics_parse`. The capture is read from
//! `../shared/fixtures/powermetrics/` and never copied into the repository; without it the
//! bench prints why and measures nothing.
//!
//! Groups: `powermetrics/parse_documents` (parse + sample conversion of every pre-framed
//! document: the figure for the goal), `powermetrics/frame_parse_stream` (the whole live path:
//! NUL framing, parsing, samples and events), and two reference points on the same bytes, a bare
//! quick-xml event loop and a byte scan, which show how much of a run is machine noise.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use host_bridge::sources::power::VmSelector;
use host_bridge::sources::power::powermetrics::frame::{Frame, split_capture};
use host_bridge::sources::power::powermetrics::parse::parse_document;
use host_bridge::sources::power::powermetrics::{DocStream, to_sample};
use protocol::MonoNanos;

const CAPTURE: &str = "../../shared/fixtures/powermetrics/m1pro-macos14-default+process-coalition-energy-io-gpu-netstats-29x130ms.plist";

fn bench(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(CAPTURE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) => {
            eprintln!("skipped: capture {} unreadable: {err}", path.display());
            return;
        }
    };
    let docs: Vec<_> = split_capture(&bytes)
        .into_iter()
        .filter_map(|f| match f {
            Frame::Doc(doc) => Some(doc),
            Frame::Dropped(_) => None,
        })
        .collect();
    let selector = VmSelector::macos_default();
    let mut group = c.benchmark_group("powermetrics");
    group.throughput(Throughput::Bytes(u64::try_from(bytes.len()).expect("fits")));
    group.bench_function("parse_documents", |b| {
        b.iter(|| {
            for doc in &docs {
                let parsed = parse_document(black_box(doc)).expect("capture parses");
                black_box(to_sample(&parsed, MonoNanos(0), &selector).ok());
            }
        });
    });
    group.bench_function("frame_parse_stream", |b| {
        b.iter(|| {
            let mut stream = DocStream::new(selector.clone());
            let out = stream.push(black_box(&bytes), MonoNanos(0));
            black_box(out.samples.len() + stream.finish(MonoNanos(1)).samples.len())
        });
    });
    group.finish();
}

criterion_group!(benches, bench);

fn baseline(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(CAPTURE);
    let Ok(bytes) = std::fs::read(&path) else {
        return;
    };
    let mut group = c.benchmark_group("baseline");
    group.throughput(Throughput::Bytes(u64::try_from(bytes.len()).expect("fits")));
    group.bench_function("quick_xml_events", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for doc in bytes.split(|&b| b == 0) {
                let mut r = quick_xml::Reader::from_reader(doc);
                r.config_mut().trim_text(true);
                loop {
                    match r.read_event() {
                        Ok(quick_xml::events::Event::Eof) | Err(_) => break,
                        Ok(_) => n += 1,
                    }
                }
            }
            black_box(n)
        });
    });
    group.bench_function("byte_scan", |b| {
        b.iter(|| black_box(bytes.iter().filter(|&&b| b == b'<').count()));
    });
    group.finish();
}
criterion_group!(base, baseline);
criterion_main!(benches, base);
