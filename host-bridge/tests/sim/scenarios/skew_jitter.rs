//! A guest clock running 200 ppm fast, 5 ms of transport jitter, phased workloads and dropped
//! samples.

use crate::sim::{HALF_PERCENT_PPM, Scenario, Workload};

#[test]
fn skew_and_jitter_proportional_within_half_percent() {
    let mut s = Scenario::new("skew_jitter");
    s.skew_ppm = 200;
    s.jitter_ns = 5_000_000;
    s.drop_every = 7;
    s.seed = 7;
    let mut bursty = Workload::steady("bursty", 0);
    bursty.phases = vec![
        (0, 120, 1500),
        (120, 300, 200),
        (300, 480, 2000),
        (480, 600, 100),
    ];
    s.containers.push(bursty);
    let (_, att) = s.check_proportional(HALF_PERCENT_PPM);
    assert!(att.quality.seq_gaps > 0, "dropped samples are counted");
    assert_eq!(att.quality.degraded_windows, 0, "skew is not a pause");
}
