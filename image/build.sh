#!/usr/bin/env bash
# Build meshlet's image on a machine with no container engine and no registry access:
# debootstrap makes a Debian root filesystem, meshlet and its dependencies are installed into a
# virtual environment inside it, and buildah commits it from scratch to an OCI archive.
#
#   image/build.sh [OUTPUT.tar]     (default: build/meshlet-oci.tar; needs root, buildah, debootstrap)
#
# The result matches image/Containerfile: /opt/meshlet venv, iptables, user 65532, entrypoint
# `meshlet`. It is checked by running `meshlet --version` inside the committed image.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
output=${1:-$here/build/meshlet-oci.tar}
suite=bookworm
mirror=${MESHLET_DEBIAN_MIRROR:-http://deb.debian.org/debian}

for tool in buildah debootstrap; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is not installed (apt-get install $tool)" >&2; exit 1; }
done
[[ $(id -u) -eq 0 ]] || { echo "build.sh: debootstrap needs root" >&2; exit 1; }

work=$(mktemp -d /tmp/meshlet-image.XXXXXX)
container=""
cleanup() {
  [[ -n $container ]] && buildah --storage-driver vfs rm "$container" >/dev/null 2>&1 || true
  for mount in proc dev; do umount "$work/rootfs/$mount" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

echo "build.sh: debootstrap $suite (minbase)" >&2
debootstrap --variant=minbase --include=python3,python3-venv,iptables \
  "$suite" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }

echo "build.sh: installing meshlet into /opt/meshlet" >&2
mkdir -p "$work/wheels"
python3 -m pip wheel --quiet --wheel-dir "$work/wheels" "$here"
mkdir -p "$work/rootfs/wheels"
cp "$work"/wheels/*.whl "$work/rootfs/wheels/"
mount -t proc proc "$work/rootfs/proc"
chroot "$work/rootfs" python3 -m venv /opt/meshlet
chroot "$work/rootfs" /opt/meshlet/bin/pip install --quiet --no-index --find-links /wheels meshlet
chroot "$work/rootfs" /opt/meshlet/bin/pip uninstall --quiet --yes pip
chroot "$work/rootfs" dpkg --purge python3-venv python3.11-venv python3-pip-whl python3-setuptools-whl >/dev/null
umount "$work/rootfs/proc"
chroot "$work/rootfs" groupadd --gid 65532 meshlet
chroot "$work/rootfs" useradd --uid 65532 --gid 65532 --no-create-home -K UID_MAX=65535 meshlet

# Keep the image small: no package caches, docs, wheels or compiled bytecode of tests.
rm -rf "$work/rootfs/wheels" "$work/rootfs/var/cache/apt/"* "$work/rootfs/var/lib/apt/lists/"* \
  "$work/rootfs/var/cache/debconf/"*-old "$work/rootfs/var/log/"* \
  "$work/rootfs/usr/share/doc" "$work/rootfs/usr/share/man" "$work/rootfs/usr/share/locale" \
  "$work/rootfs/usr/share/info" "$work/rootfs/usr/lib/python3.11/ensurepip"
python3 -c "import pathlib, shutil; [shutil.rmtree(p) for p in pathlib.Path('$work/rootfs/opt/meshlet').rglob('tests') if p.is_dir() and 'site-packages' in str(p)]"

echo "build.sh: committing the image" >&2
container=$(buildah --storage-driver vfs from scratch)
buildah --storage-driver vfs copy "$container" "$work/rootfs" / >/dev/null
buildah --storage-driver vfs config \
  --env PATH=/opt/meshlet/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --user 65532:65532 \
  --entrypoint '["meshlet"]' --cmd '["--version"]' \
  --label org.opencontainers.image.title=meshlet \
  "$container"
mkdir -p "$(dirname "$output")"
rm -f "$output"
buildah --storage-driver vfs commit --quiet --disable-compression=false "$container" "oci-archive:$output:localhost/meshlet:0.1.0" >/dev/null

echo "build.sh: checking the image runs" >&2
version=$(buildah --storage-driver vfs run --isolation chroot "$container" meshlet --version)
echo "build.sh: $version" >&2
[[ $version == meshlet\ * ]] || { echo "build.sh: the image did not print its version" >&2; exit 1; }
ls -l "$output" >&2
echo "$output"
