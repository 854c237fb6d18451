//! The hand-written powermetrics fixtures (`tests/fixtures/powermetrics/`): each quirk of real
//! output, through the framer, the parser and the sample conversion.

use std::path::PathBuf;

use host_bridge::sources::power::powermetrics::parse::PlistError;
use host_bridge::sources::power::powermetrics::{DocStream, parse_capture};
use host_bridge::sources::power::{PowerEvent, Provenance, VmSelector};
use protocol::{MicroJoules, MonoNanos};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/powermetrics")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture in the repository")
}

fn run(
    name: &str,
    selector: VmSelector,
) -> (
    Vec<host_bridge::sources::power::PowerSample>,
    Vec<PowerEvent>,
) {
    let mut stream = DocStream::new(selector);
    let mut out = stream.push(&read(name), MonoNanos(5_000_000_000));
    let tail = stream.finish(MonoNanos(6_000_000_000));
    out.samples.extend(tail.samples);
    out.events.extend(tail.events);
    (out.samples, out.events)
}

#[test]
fn fixture_apple_silicon_energy_is_power_times_elapsed() {
    let (samples, events) = run(
        "apple-silicon-docker-3x1s.plist",
        VmSelector::macos_default(),
    );
    assert_eq!(
        samples.len(),
        3,
        "three documents, the last without a trailing NUL"
    );
    // 71234.5 mW × 1 s = 71 234 500 µJ (above 16 bits in mJ, too).
    assert_eq!(samples[0].energy, MicroJoules(71_234_500));
    assert_eq!(samples[0].component("cpu"), Some(MicroJoules(71_234_500)));
    assert_eq!(samples[0].component("gpu"), Some(MicroJoules(812_250)));
    assert_eq!(
        samples[0].component("combined"),
        Some(MicroJoules(72_046_750))
    );
    // 1500.75 mW × 1.0025 s = 1 504 501.875 µJ.
    assert_eq!(samples[1].energy, MicroJoules(1_504_502));
    assert_eq!(samples[1].window_ns, 1_002_500_000);
    assert!(samples.iter().all(|s| s.provenance == Provenance::Measured));
    assert!(
        events.iter().any(|e| matches!(e, PowerEvent::VmFound { matched } if matched.contains("com.docker.docker/com.apple.Virtualization.VirtualMachine[501]"))),
        "{events:?}"
    );
}

#[test]
fn fixture_vm_share_uses_all_tasks_not_coalition_sum() {
    let (samples, events) = run(
        "apple-silicon-docker-3x1s.plist",
        VmSelector::macos_default(),
    );
    let share = samples[0].vm_share.as_ref().expect("tasks present");
    assert_eq!(share.vm_cpu_ns, 900_000_000);
    assert_eq!(share.total_cpu_ns, 1_000_000_000);
    assert_eq!(share.vm_energy_impact, Some(80.0));
    assert_eq!(share.total_energy_impact, Some(100.0));
    let host = samples[0].host_cpu.expect("host cpu");
    assert_eq!(host.busy_ns, 1_000_000_000);
    assert_eq!(
        host.capacity_ns, 4_000_000_000,
        "4 CPUs listed in the clusters"
    );
    // Third document: the VM task reports 0 ns but is listed; still found.
    assert_eq!(samples[2].vm_share.as_ref().map(|s| s.vm_cpu_ns), Some(0));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, PowerEvent::VmNotFound { .. }))
    );
}

#[test]
fn fixture_vm_selected_by_pid_or_name() {
    let (by_pid, _) = run(
        "apple-silicon-docker-3x1s.plist",
        VmSelector::parse("pid:502").expect("selector"),
    );
    assert_eq!(
        by_pid[0].vm_share.as_ref().map(|s| s.vm_cpu_ns),
        Some(20_000_000)
    );
    let (by_name, events) = run(
        "apple-silicon-docker-3x1s.plist",
        VmSelector::parse("no-such-vm").expect("selector"),
    );
    assert_eq!(by_name[0].vm_share.as_ref().map(|s| s.vm_cpu_ns), Some(0));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, PowerEvent::VmNotFound { selector } if selector == "no-such-vm"))
    );
    let (intel, _) = run("intel-package-1x5s.plist", VmSelector::macos_default());
    let share = intel[0].vm_share.as_ref().expect("tasks");
    assert_eq!(
        (share.vm_cpu_ns, share.total_cpu_ns),
        (2_500_000_000, 3_000_000_000)
    );
}

#[test]
fn fixture_truncated_last_document_is_dropped_and_counted() {
    let (samples, events) = run(
        "apple-silicon-truncated-last.plist",
        VmSelector::macos_default(),
    );
    assert_eq!(samples.len(), 2);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, PowerEvent::IncompleteDocumentDropped { bytes } if *bytes > 1000)),
        "{events:?}"
    );
}

#[test]
fn fixture_intel_package_is_split_domain() {
    let (samples, _) = run("intel-package-1x5s.plist", VmSelector::macos_default());
    assert_eq!(samples.len(), 1);
    // 5.5 W × 5 s = 27.5 J.
    assert_eq!(samples[0].energy, MicroJoules(27_500_000));
    assert_eq!(
        samples[0].component("package"),
        Some(MicroJoules(27_500_000))
    );
}

#[test]
fn fixture_no_energy_gives_state_not_crash() {
    let (samples, events) = run("vm-guest-no-energy-1x1s.plist", VmSelector::macos_default());
    assert!(samples.is_empty());
    let reason = events
        .iter()
        .find_map(|e| match e {
            PowerEvent::NoEnergyData { reason } => Some(reason.clone()),
            _ => None,
        })
        .expect("no energy data event");
    assert!(
        reason.contains("VirtualMac9,1") && reason.contains("no energy keys"),
        "{reason}"
    );
    assert!(events.iter().any(
        |e| matches!(e, PowerEvent::SourceWarning { message } if message.starts_with("warning: time went backwards"))
    ));
}

#[test]
fn fixture_text_format_is_refused() {
    let err = parse_capture(&read("text-format-1x1s.txt")).expect_err("text");
    assert!(matches!(err, PlistError::TextFormat));
    assert!(err.to_string().contains("plist output"));
}

mod chunking {
    use super::*;
    use proptest::prelude::*;

    fn samples_in_chunks(
        bytes: &[u8],
        cuts: &[usize],
    ) -> Vec<host_bridge::sources::power::PowerSample> {
        let mut stream = DocStream::new(VmSelector::macos_default());
        let mut samples = Vec::new();
        let mut start = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        for cut in cuts.into_iter().chain(std::iter::once(bytes.len())) {
            samples.extend(
                stream
                    .push(&bytes[start..cut.max(start)], MonoNanos(7))
                    .samples,
            );
            start = cut.max(start);
        }
        samples.extend(stream.finish(MonoNanos(7)).samples);
        samples
    }

    proptest! {
        /// However the stream is cut into reads, the same documents come out.
        #[test]
        fn stream_chunk_boundaries_do_not_change_samples(
            cuts in proptest::collection::vec(0usize..20_000, 0..12),
        ) {
            let bytes = read("apple-silicon-docker-3x1s.plist");
            let whole = samples_in_chunks(&bytes, &[]);
            prop_assert_eq!(whole.len(), 3);
            prop_assert_eq!(samples_in_chunks(&bytes, &cuts), whole);
        }

        /// Arbitrary bytes never panic the framer or the parser.
        #[test]
        fn stream_arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
            cut in 0usize..4096,
        ) {
            let cut = cut.min(bytes.len());
            let mut stream = DocStream::new(VmSelector::macos_default());
            let first = stream.push(&bytes[..cut], MonoNanos(1));
            let second = stream.push(&bytes[cut..], MonoNanos(2));
            let last = stream.finish(MonoNanos(3));
            prop_assert!(first.samples.len() + second.samples.len() + last.samples.len() <= 1);
        }

        /// A corrupted byte inside a valid capture costs at most that document.
        #[test]
        fn stream_corrupted_byte_loses_at_most_one_document(
            at in 0usize..9_000,
            value in any::<u8>(),
        ) {
            let mut bytes = read("apple-silicon-docker-3x1s.plist");
            let at = at % bytes.len();
            bytes[at] = value;
            let samples = samples_in_chunks(&bytes, &[]);
            prop_assert!(samples.len() >= 2, "{} samples", samples.len());
        }
    }
}
