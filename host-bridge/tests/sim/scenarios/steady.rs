//! Two steady containers, measured power with noise: the baseline case.

use crate::sim::{HALF_PERCENT_PPM, Scenario};

#[test]
fn steady_proportional_within_half_percent() {
    let (run, att) = Scenario::new("steady").check_proportional(HALF_PERCENT_PPM);
    // The pipeline never invents energy: the ledger holds what was measured.
    eprintln!(
        "measured/true: {} / {}",
        run.measured_energy, run.true_energy
    );
    assert_eq!(att.ledger.total().0, run.measured_energy);
    assert_eq!(att.quality.degraded_windows, 0);
}
