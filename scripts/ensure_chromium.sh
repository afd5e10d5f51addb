#!/usr/bin/env bash
# Make sure Debian's Chromium is installed for the browser tests (tests/integration/test_ui_browser.py
# drives /usr/bin/chromium through Playwright; Playwright's own browser download is never used).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != "0" ]; then
  echo "chromium is missing and this user cannot apt-get install it; the browser tests will skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends chromium >/dev/null
command -v chromium >/dev/null
