# The guest agent as a scratch image for LinuxKit's `services:` (and for Docker Desktop injection).
# Context: a directory holding a static `guest-agent` binary, e.g.
#   cargo build -p guest-agent --release --target x86_64-unknown-linux-musl
#   docker build -f linuxkit/guest-agent.Dockerfile -t joulebridge/guest-agent:dev \
#       target/x86_64-unknown-linux-musl/release
FROM scratch
COPY guest-agent /guest-agent
ENTRYPOINT ["/guest-agent"]
