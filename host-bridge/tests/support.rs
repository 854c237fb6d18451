//! What several of the host bridge's integration tests share. (Report builders and golden-file
//! comparison are in `report_support`, real cgroups in `real_cgroup`, the simulator in `sim`;
//! message builders in `protocol::testing`; environment checks in the `testkit` crate.)

use std::future::Future;
use std::time::Duration;

use host_bridge::journal::RecordEntry;
use host_bridge::pipeline::{LedgerView, LiveLedger, PipelineConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

/// How often [`poll_until`] looks again.
const POLL: Duration = Duration::from_millis(10);

/// The view a live bridge publishes after recording `entries`, built the way `serve` builds it.
pub fn view_of(entries: &[RecordEntry], cfg: PipelineConfig) -> LedgerView {
    let mut ledger = LiveLedger::new(cfg).expect("valid attribution settings");
    for entry in entries {
        ledger.push(entry);
    }
    ledger.view()
}

/// The body of `GET /metrics` at `addr` (the response must be a 200).
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect /metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// Look at `ready` every few milliseconds until it holds; fail the test naming `what` when it
/// does not within `timeout`. The wait ends as soon as the condition does, never later.
pub async fn poll_until<F, Fut>(timeout: Duration, what: &str, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !ready().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}
