#!/usr/bin/env bash
# Browser tests drive Debian's Chromium: Playwright's own browser download cannot work
# behind a firewall. Installs it through apt when missing (CI runs as root).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != "0" ] && ! command -v sudo >/dev/null 2>&1; then
  echo "chromium is missing and cannot be installed without root; browser tests will be skipped" >&2
  exit 0
fi
SUDO=""; [ "$(id -u)" != "0" ] && SUDO="sudo"
echo "installing Debian's chromium for the browser tests..." >&2
$SUDO apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
