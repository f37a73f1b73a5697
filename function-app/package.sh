#!/usr/bin/env bash
# Builds the Function App zip: host.json, the accessgate binary (Linux, exec bit kept) and one
# folder per function, all at the zip root as the Functions host expects.
# Usage: function-app/package.sh [OUT.zip]   (default target/accessgate-functions.zip)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/target/accessgate-functions.zip}
cargo build --release --manifest-path "$root/Cargo.toml" -p accessgate
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$root/host.json" "$stage/"
install -m 0755 "$root/target/release/accessgate" "$stage/accessgate"
for f in "$root"/function-app/*/; do
  name=$(basename "$f")
  mkdir -p "$stage/$name"
  cp "$f/function.json" "$stage/$name/"
done
rm -f "$out"
(cd "$stage" && python3 -c 'import shutil,sys; shutil.make_archive(sys.argv[1][:-4], "zip", ".")' "$out")
echo "wrote $out"
