#!/usr/bin/env bash
# Builds the Function App zip: host.json, the accessgate binary (Linux, exec bit kept) and one
# folder per function, all at the zip root as the Functions host expects.
# Usage: function-app/package.sh [OUT.zip]   (default target/accessgate-functions.zip)
#   ACCESSGATE_BINARY=path   package that binary instead of building one
#   ACCESSGATE_ZIGBUILD=1    build with cargo-zigbuild against glibc 2.28 (runs on the
#                            Functions Linux image; `pip install cargo-zigbuild ziglang`)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/target/accessgate-functions.zip}
if [ -n "${ACCESSGATE_BINARY:-}" ]; then
  bin=$ACCESSGATE_BINARY
elif [ "${ACCESSGATE_ZIGBUILD:-}" = "1" ]; then
  cargo zigbuild --release --manifest-path "$root/Cargo.toml" -p accessgate --target x86_64-unknown-linux-gnu.2.28
  bin=$root/target/x86_64-unknown-linux-gnu/release/accessgate
else
  cargo build --release --manifest-path "$root/Cargo.toml" -p accessgate
  bin=$root/target/release/accessgate
fi
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$root/host.json" "$stage/"
# 0755: zips made by some tools drop the bit, and the host then cannot start the handler.
install -m 0755 "$bin" "$stage/accessgate"
for f in "$root"/function-app/*/; do
  name=$(basename "$f")
  mkdir -p "$stage/$name"
  cp "$f/function.json" "$stage/$name/"
done
rm -f "$out"
# Python's zipfile records each file's mode, the executable bit included.
(cd "$stage" && python3 -c 'import shutil,sys; shutil.make_archive(sys.argv[1][:-4], "zip", ".")' "$out")
echo "wrote $out"
