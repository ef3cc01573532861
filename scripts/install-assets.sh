#!/usr/bin/env bash
# Front-end assets from the npm registry at the versions pinned in package-lock.json, copied into
# static/vendor so every page loads them from our own server (no CDN).
set -euo pipefail
cd "$(dirname "$0")/.."
npm ci --no-audit --no-fund --silent
mkdir -p static/vendor
cp node_modules/htmx.org/dist/htmx.min.js static/vendor/htmx.min.js
cp node_modules/3dmol/build/3Dmol-min.js static/vendor/3Dmol-min.js
echo "assets: htmx $(node -p 'require("htmx.org/package.json").version'), 3dmol $(node -p 'require("3dmol/package.json").version')"
