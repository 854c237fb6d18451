#!/usr/bin/env bash
# Installs what the host-bridge UI tests need (issue #6):
#   - Debian's `chromium` (headless) and a font, for tests/html_chromium.rs, which opens the HTML
#     report in a real browser, dumps the rendered DOM and keeps a screenshot;
#   - Python's `prometheus-client`, whose exposition-format parser
#     (`prometheus_client.parser.text_string_to_metric_families`) reads back our /metrics text in
#     tests/prometheus_*.rs.
# Idempotent; safe to run on every CI run. Needs root (CI and dev machines run as root).
set -euo pipefail

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
dpkg -s fonts-dejavu-core >/dev/null 2>&1 || need_apt+=(fonts-dejavu-core)
if ((${#need_apt[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# The tests run `python3` from PATH, so install into that interpreter.
if ! python3 -c 'import prometheus_client.parser' >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check prometheus-client \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages prometheus-client
fi

chromium --version
python3 -c 'import prometheus_client; print("prometheus_client", prometheus_client.__version__ if hasattr(prometheus_client, "__version__") else "installed")'
