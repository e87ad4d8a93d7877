#!/usr/bin/env bash
# Headless Chromium and its WebDriver for the browser tier (tests/browser/), from Debian's packages.
# Idempotent: does nothing when `chromium` and `chromedriver` are already on PATH.
# Debian's packages, not a browser downloaded at run time: selenium-manager and Chrome for Testing fetch
# from the internet, which CI machines here cannot reach (NOTES-infra.md, "Verified 2026-11-30"); the
# tests point selenium at this chromedriver explicitly (tests/browser/conftest.py).
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "infra/browser.sh: apt-get not found, so Chromium cannot be installed here." >&2
  echo "Install Chromium and the chromedriver of the same version with this system's package manager," >&2
  echo "so that both are on PATH as 'chromium' and 'chromedriver', then re-run." >&2
  exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  echo "infra/browser.sh: installing chromium and chromium-driver needs root, and sudo is not available." >&2
  echo "As root: apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver" >&2
  exit 1
fi

echo "installing chromium and chromium-driver (Debian packages)"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium chromium-driver

for tool in chromium chromedriver; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "infra/browser.sh: '$tool' is still not on PATH after installing the packages." >&2
    exit 1
  }
done
