#!/usr/bin/env bash
# Headless Chromium and its WebDriver for the dashboard's browser test (tests/dashboard/test_control_browser.py).
#
#   bash .ci/chromium.sh        # installs the OS packages if missing (as root, with apt), then prints the versions
#
# Debian's `chromium` and `chromium-driver` packages are used (Ubuntu's `chromium` is a snap shim that does not
# run in a container). Exits non-zero when no browser can be had; .ci/run then fails on CI (CI=true) and
# otherwise lets the browser test skip.
set -euo pipefail

have() {
    command -v chromedriver >/dev/null && { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; }
}

if ! have; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "chromium.sh: installing chromium and chromium-driver from the OS packages" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2 || true
        apt-get install -y -qq --no-install-recommends chromium chromium-driver >&2
    fi
fi
have || { echo "chromium.sh: chromium and chromedriver are not installed (need root and apt-get)" >&2; exit 1; }
browser=$(command -v chromium || command -v chromium-browser)
echo "chromium.sh: $("$browser" --version 2>/dev/null | head -n 1); $(chromedriver --version | head -n 1)" >&2
