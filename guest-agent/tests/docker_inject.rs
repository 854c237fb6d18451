//! `scripts/inject-docker-desktop.sh` against this machine's engine: the agent image runs as an
//! injected container and its stream reaches a listener on the host over TCP, at the host's
//! address as containers see it (the docker0 gateway; Docker Desktop's `host.docker.internal`
//! plays that role on a Mac).
//!
//! Needs the agent image and the busybox test image, both built by `scripts/setup-test-env.sh`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use protocol::{Message, MessageCodec};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

const AGENT_IMAGE: &str = "joulebridge/guest-agent:dev";
const BUSYBOX: &str = "joulebridge-test/busybox:latest";
const DEADLINE: Duration = Duration::from_secs(90);

async fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{program} {args:?} did not finish"))
    .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

async fn docker(args: &[&str]) -> String {
    let (ok, stdout, stderr) = run("docker", args).await;
    assert!(ok, "docker {args:?} failed: {stderr}");
    stdout
}

/// Removes the named containers when dropped, even after a panic.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _status = std::process::Command::new("docker")
            .args(["rm", "-f"])
            .args(&self.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Docker engine, the agent image and the test image (scripts/setup-test-env.sh)"]
async fn inject_script_runs_the_agent_image_and_its_stream_reaches_the_host() {
    testkit::require_docker_image(AGENT_IMAGE);
    testkit::require_docker_image(BUSYBOX);
    let scripts = testkit::workspace_root().join("scripts");

    let tag = format!("{}-{}", std::process::id(), rand::random::<u32>());
    let agent = format!("jbt-inject-agent-{tag}");
    let workload = format!("jbt-inject-work-{tag}");
    let vm_name = format!("jbt-vm-{tag}");
    let _cleanup = Cleanup(vec![agent.clone(), workload.clone()]);
    let workload_id = docker(&[
        "run",
        "-d",
        "--name",
        &workload,
        "--network",
        "none",
        "--cpus",
        "0.25",
        BUSYBOX,
        "sh",
        "-c",
        "while :; do :; done",
    ])
    .await;

    // The host as containers see it: the default bridge network's gateway (this machine's
    // own docker0 address). Listening there keeps the port off other interfaces.
    // Older engines leave IPAM's Gateway empty; Docker then uses the subnet's first address.
    let ipam = docker(&[
        "network",
        "inspect",
        "bridge",
        "--format",
        "{{(index .IPAM.Config 0).Gateway}} {{(index .IPAM.Config 0).Subnet}}",
    ])
    .await;
    let gateway = match ipam.split_whitespace().collect::<Vec<_>>()[..] {
        [gateway, _subnet] => gateway.to_owned(),
        [subnet] => {
            let network: std::net::Ipv4Addr = subnet
                .split('/')
                .next()
                .and_then(|a| a.parse().ok())
                .expect("the bridge network has an IPv4 subnet");
            std::net::Ipv4Addr::from(u32::from(network) + 1).to_string()
        }
        _ => panic!("unexpected bridge network IPAM: {ipam:?}"),
    };
    let listener = TcpListener::bind((gateway.as_str(), 0))
        .await
        .expect("bind on the docker0 gateway address");
    let port = listener
        .local_addr()
        .expect("bound address")
        .port()
        .to_string();

    let inject = scripts.join("inject-docker-desktop.sh");
    let (injected, stdout, stderr) = run(
        inject.to_str().expect("utf-8 path"),
        &[
            "--no-build",
            "--image",
            AGENT_IMAGE,
            "--name",
            &agent,
            "--bridge-host",
            &gateway,
            "--bridge-port",
            &port,
            "--vm-name",
            &vm_name,
            "--add-host-gateway",
        ],
    )
    .await;
    assert!(injected, "inject script failed:\n{stdout}\n{stderr}");
    let settings = docker(&[
        "inspect",
        "--format",
        "{{.HostConfig.PidMode}} {{.HostConfig.CgroupnsMode}} {{.HostConfig.RestartPolicy.Name}} \
         {{.HostConfig.Privileged}} {{.HostConfig.CapDrop}} {{.HostConfig.CapAdd}} \
         {{.HostConfig.ReadonlyRootfs}} {{.HostConfig.SecurityOpt}}",
        &agent,
    ])
    .await;
    // Least privilege: no --privileged, no capability at all, read-only root, no setuid gains.
    // (The engine adds `label=disable` to the security options of --pid=host containers.)
    assert!(
        settings.starts_with("host host unless-stopped false [ALL] [] true [")
            && settings.contains("no-new-privileges"),
        "{settings}"
    );

    let (stream, peer) = tokio::time::timeout(DEADLINE, listener.accept())
        .await
        .expect("the injected agent connects within the deadline")
        .expect("accept");
    assert_ne!(
        peer.ip().to_string(),
        gateway,
        "the connection comes from the container"
    );
    let mut frames = Framed::new(stream, MessageCodec);

    let mut hello = None;
    let mut named = false;
    let mut counted = false;
    let deadline = Instant::now() + DEADLINE;
    while !(hello.is_some() && named && counted) {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = match tokio::time::timeout(left, frames.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(err))) => panic!("undecodable frame from the agent: {err}"),
            Ok(None) => panic!("the agent closed the stream"),
            Err(_) => panic!(
                "incomplete stream: hello {}, workload named {named}, workload counted {counted}",
                hello.is_some()
            ),
        };
        match message {
            Message::Hello(h) => hello = Some(h),
            Message::Containers(table) => {
                named |= table
                    .entries
                    .iter()
                    .any(|c| c.id == workload_id && c.name == workload);
            }
            Message::Sample(sample) => {
                counted |= sample
                    .containers
                    .iter()
                    .any(|c| c.id == workload_id && c.cpu.usage.0 > 0);
            }
            _ => {}
        }
    }
    let hello = hello.expect("loop ends only with a Hello");
    assert_eq!(hello.vm_name, vm_name);
    assert!(hello.cpu_count > 0);

    let remove = scripts.join("remove-docker-desktop.sh");
    let (removed, _, err) = run(remove.to_str().expect("utf-8 path"), &["--name", &agent]).await;
    assert!(removed, "remove script failed: {err}");
    let (still_there, _, _) = run("docker", &["container", "inspect", &agent]).await;
    assert!(!still_there, "the agent container is gone");
}
