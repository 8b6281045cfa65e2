#!/usr/bin/env bash
# Install a headless browser for the HTML-report tests: Debian's chromium and chromium-driver.
# Idempotent: does nothing when `chromium` and `chromedriver` are already on PATH.
# Without root or apt-get it prints how to install them and exits 0; the browser tests then skip
# with that reason (tests/browser.py: browser_available()).
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  echo "install_browser: installing chromium and chromium-driver with apt-get" >&2
  if apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null \
      && command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
  fi
  echo "install_browser: apt-get could not install chromium; the browser tests will be SKIPPED" >&2
  exit 0
fi
cat >&2 <<'MSG'
install_browser: chromium and chromedriver are not both on PATH, and this script can only install them
as root on a system with apt-get. Install them yourself, for example:
  Debian/Ubuntu:  sudo apt-get install chromium chromium-driver
  Fedora:         sudo dnf install chromium chromedriver
  macOS:          brew install --cask chromium && brew install --cask chromedriver
The browser tests are skipped until both are on PATH.
MSG
exit 0
