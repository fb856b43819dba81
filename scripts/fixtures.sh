#!/usr/bin/env bash
# Builds the test images without any registry: a rootfs holding Debian's static busybox,
# imported into dockerd and saved as `docker save` archives the tests load through the
# plugin. Output: target/fixtures/{plain,baked}.tar and .tar.gz, and drpcli.
#   plain: no entrypoint of its own (agents need drpcli injection)
#   baked: the test drpcli at /usr/bin/drpcli as its entrypoint (the older convention)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/target/fixtures"
[ -f "$out/.done" ] && [ "$out/.done" -nt "$root/tests/fixtures/drpcli" ] && exit 0
[ -x /bin/busybox ] || { echo "fixtures: FATAL: /bin/busybox missing (apt-get install busybox-static)" >&2; exit 1; }
file /bin/busybox 2>/dev/null | grep -q dynamic && { echo "fixtures: FATAL: /bin/busybox is not static" >&2; exit 1; }
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/bin" "$work/rootfs/usr/bin" "$work/rootfs/tmp"
cp /bin/busybox "$work/rootfs/bin/busybox"
for applet in sh sleep wget sed echo cat env ls hostname true head; do
  ln -sf busybox "$work/rootfs/bin/$applet"
done
tar -C "$work/rootfs" -cf "$work/plain-rootfs.tar" .
cp "$root/tests/fixtures/drpcli" "$work/rootfs/usr/bin/drpcli"
tar -C "$work/rootfs" -cf "$work/baked-rootfs.tar" .

docker import "$work/plain-rootfs.tar" ce-test/plain:1 >/dev/null
docker import --change 'ENTRYPOINT ["/usr/bin/drpcli","machines","processjobs"]' \
  "$work/baked-rootfs.tar" ce-test/baked:1 >/dev/null
docker save -o "$out/plain.tar" ce-test/plain:1
docker save -o "$out/baked.tar" ce-test/baked:1
gzip -kf "$out/plain.tar"
gzip -kf "$out/baked.tar"
cp "$root/tests/fixtures/drpcli" "$out/drpcli"
# The tests load these through the plugin; the daemon must not already have them.
docker rmi ce-test/plain:1 ce-test/baked:1 >/dev/null
touch "$out/.done"
echo "fixtures: built $(ls "$out" | tr '\n' ' ')" >&2
