//! Container restarts (counter back to zero), an agent restart (new instance, same boot) and a
//! reconnect that resends samples.

use crate::sim::{HALF_PERCENT_PPM, Scenario};

#[test]
fn restarts_and_reconnects_proportional_within_half_percent() {
    let mut s = Scenario::new("restart");
    s.containers[0].restarts_at = vec![200, 401];
    s.agent_restarts_at = vec![300];
    s.reconnects_at = vec![450];
    let (_, att) = s.check_proportional(HALF_PERCENT_PPM);
    let web = att.ledger.container("sim-vm", "web").expect("web row");
    assert_eq!(web.restarts, 2);
    assert_eq!(
        att.quality.duplicate_samples, 3,
        "resent samples are ignored"
    );
}
