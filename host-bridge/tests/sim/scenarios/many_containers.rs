//! Forty small containers with different power per core (P/E-like mix) and CPU limits.

use crate::sim::{HALF_PERCENT_PPM, Scenario, Workload};

#[test]
fn many_containers_proportional_within_half_percent() {
    let mut s = Scenario::new("many_containers");
    s.vm_cpus = 8;
    s.containers = (0..40u64)
        .map(|i| {
            let mut w = Workload::steady(&format!("c{i:02}"), 20 + i * 7);
            w.k_mw = 4_000 + i * 300;
            w.limit = (i % 3 == 0).then_some(500);
            w
        })
        .collect();
    s.check_proportional(HALF_PERCENT_PPM);
}
