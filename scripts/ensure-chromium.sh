#!/usr/bin/env bash
# The report test opens the page in headless Chromium (Debian's `chromium`). Install it when we can
# (root with apt-get, as on CI); otherwise that one test skips and prints why. Never fails the build.
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the report's browser test..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "could not install chromium: the browser test will skip and say so"
else
  echo "chromium is absent and cannot be installed here (not root / no apt-get): the browser test will skip"
fi
exit 0
