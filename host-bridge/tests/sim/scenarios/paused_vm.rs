//! The VM pauses for a minute (Docker Desktop Resource Saver), once with the guest clock
//! running and once with it stopped.

use crate::sim::{HALF_PERCENT_PPM, Scenario};

fn paused(clock_stops: bool) {
    let mut s = Scenario::new(if clock_stops {
        "paused_clock_stops"
    } else {
        "paused_vm"
    });
    s.pauses = vec![(200_300, 260_300)];
    s.clock_stops_in_pause = clock_stops;
    let (_, att) = s.check_proportional(HALF_PERCENT_PPM);
    assert!(att.quality.degraded_windows >= 6, "{:?}", att.quality);
    assert!(
        att.ledger
            .bucket(&host_bridge::pipeline::Bucket::Unattributed)
            .0
            > 0
    );
}

#[test]
fn paused_vm_clock_running_is_flagged_and_within_half_percent() {
    paused(false);
}

#[test]
fn paused_vm_clock_stopped_is_flagged_and_within_half_percent() {
    paused(true);
}
