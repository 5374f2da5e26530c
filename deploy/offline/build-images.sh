#!/usr/bin/env bash
# Builds funnel's container images without pulling anything: for machines
# (like CI here) whose Docker engine has no registry. Each image is
# `FROM scratch` plus a root filesystem assembled here from files already on
# this machine:
#
#   funnel image: the given funnel binary (stripped), the shared libraries
#                 `ldd` lists for it, busybox (a shell for the one-shot
#                 training job and `wget` for health checks), a passwd entry
#                 for the unprivileged user 10001, /var/lib/funnel (data) and
#                 /bundles owned by it.
#   LB image:     HAProxy from this machine (`apt-get install haproxy`) with
#                 its shared libraries and deploy/haproxy/haproxy.cfg.
#
# Usage:
#   deploy/offline/build-images.sh --funnel target/release/funnel \
#       [--tag funnel:local] [--lb-tag funnel-lb:local]
#
# With a registry, use deploy/Dockerfile instead (a normal multi-stage build).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
deploy="$(dirname "$here")"

funnel_bin=""
tag="funnel:local"
lb_tag="funnel-lb:local"
while [ $# -gt 0 ]; do
  case "$1" in
    --funnel) funnel_bin="${2:?--funnel needs a path}"; shift 2 ;;
    --tag) tag="${2:?--tag needs a name}"; shift 2 ;;
    --lb-tag) lb_tag="${2:?--lb-tag needs a name}"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument $1; see --help" >&2; exit 2 ;;
  esac
done

die() { echo "build-images: $*" >&2; exit 1; }

[ -n "$funnel_bin" ] || die "--funnel PATH is required (e.g. target/release/funnel after cargo build --release)"
[ -x "$funnel_bin" ] || die "$funnel_bin is not an executable file; build it first (cargo build --release)"

need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"
}
need docker "install Docker Engine (apt-get install docker.io)"
need ldd "install libc-bin"
need strip "install binutils"
haproxy_bin="$(command -v haproxy || true)"
[ -n "$haproxy_bin" ] || haproxy_bin=/usr/sbin/haproxy
[ -x "$haproxy_bin" ] || die "haproxy not found: apt-get install haproxy (the load balancer image is built from it)"
busybox_bin="$(command -v busybox || true)"
[ -n "$busybox_bin" ] || die "busybox not found: apt-get install busybox-static"
# a dynamically linked busybox would need its libraries too; the static one does not
if ldd "$busybox_bin" >/dev/null 2>&1; then
  die "$busybox_bin is dynamically linked; apt-get install busybox-static"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Copies every shared library `ldd` lists for $2 (and the dynamic loader)
# into root filesystem $1 at the same absolute path, following symlinks.
copy_libs() {
  local root="$1" bin="$2" lib
  for lib in $(ldd "$bin" | awk '/=> \//{print $3} /^\t\//{print $1}'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}

# --- funnel ------------------------------------------------------------------
ctx="$work/funnel"
root="$ctx/rootfs"
owned="$ctx/owned"
mkdir -p "$root/usr/local/bin" "$root/bin" "$root/etc" "$root/tmp" \
         "$owned/var/lib/funnel" "$owned/bundles"
strip -o "$root/usr/local/bin/funnel" "$funnel_bin"
copy_libs "$root" "$funnel_bin"
cp "$busybox_bin" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
chmod 1777 "$root/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\nfunnel:x:10001:10001:funnel:/var/lib/funnel:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\nfunnel:x:10001:\n' >"$root/etc/group"
# COPY of an empty directory is not reliable across builders: keep a marker
touch "$owned/var/lib/funnel/.keep" "$owned/bundles/.keep"
cp "$here/funnel.Dockerfile" "$ctx/Dockerfile"
docker build -q -t "$tag" "$ctx" >/dev/null
echo "built $tag from $funnel_bin"

# --- load balancer -------------------------------------------------------------
ctx="$work/lb"
root="$ctx/rootfs"
mkdir -p "$root/usr/sbin" "$root/etc" "$root/usr/local/etc/haproxy" "$root/tmp"
cp -L "$haproxy_bin" "$root/usr/sbin/haproxy"
copy_libs "$root" "$haproxy_bin"
cp "$deploy/haproxy/haproxy.cfg" "$root/usr/local/etc/haproxy/haproxy.cfg"
chmod 1777 "$root/tmp"
printf 'root:x:0:0:root:/root:/nonexistent\nhaproxy:x:10002:10002:haproxy:/nonexistent:/nonexistent\n' >"$root/etc/passwd"
printf 'root:x:0:\nhaproxy:x:10002:\n' >"$root/etc/group"
cp "$here/lb.Dockerfile" "$ctx/Dockerfile"
docker build -q -t "$lb_tag" "$ctx" >/dev/null
echo "built $lb_tag from $haproxy_bin ($("$haproxy_bin" -v | head -1))"
