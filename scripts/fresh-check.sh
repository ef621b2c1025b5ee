#!/usr/bin/env bash
# Proves the README's two commands work on a fresh Debian 12 machine: makes a
# clean root with `debootstrap --variant=minbase bookworm`, clones this repo's
# committed HEAD into it, and runs `bash scripts/demo.sh` and `bash .ci/run`
# there in a chroot, as root, with /proc, /sys and /dev mounted. Nothing the
# host has installed is visible inside, so a missing install step fails here.
#
# Usage (as root): scripts/fresh-check.sh [--keep] [--mirror=URL] [DIR]
#   DIR       where the root goes (default: a new /var/tmp/fw-fresh.XXXXXX)
#   --keep    leave the root (and its logs) in place afterwards
# Needs a few GB of disk and 20-40 minutes; not part of CI. Prints the last
# lines of each command and a summary, and exits non-zero if either failed.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

keep=0
mirror=http://deb.debian.org/debian
root=
for a in "$@"; do
	case $a in
	--keep) keep=1 ;;
	--mirror=*) mirror=${a#--mirror=} ;;
	-h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	-*) echo "fresh-check: unknown option $a" >&2; exit 2 ;;
	*) root=$a ;;
	esac
done
if [ "$(id -u)" -ne 0 ]; then
	echo "fresh-check: must run as root (debootstrap, chroot, mount)" >&2
	exit 2
fi
if ! command -v debootstrap >/dev/null; then
	echo "fresh-check: installing debootstrap"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap \
		>/dev/null || { echo "fresh-check: cannot install debootstrap" >&2; exit 2; }
fi
if [ -z "$root" ]; then
	root=$(mktemp -d /var/tmp/fw-fresh.XXXXXX)
elif [ -e "$root" ] && [ -n "$(ls -A "$root")" ]; then
	echo "fresh-check: $root is not empty; give a new directory" >&2
	exit 2
fi
mkdir -p "$root"
root=$(cd "$root" && pwd)
logs=$root/fresh-logs
mounts=()

cleanup() {
	local i
	for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
		umount -l "${mounts[i]}" 2>/dev/null
	done
	if [ $keep -eq 0 ]; then
		rm -rf --one-file-system "$root"
	else
		echo "fresh-check: root kept in $root (logs in $logs)"
	fi
}
trap cleanup EXIT

t0=$(date +%s)
echo "== debootstrap --variant=minbase bookworm $root ($mirror)"
if ! debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.debootstrap.log" 2>&1; then
	tail -20 "$root.debootstrap.log"
	echo "fresh-check: debootstrap failed"
	exit 1
fi
rm -f "$root.debootstrap.log"
mkdir -p "$logs"
# The root gets the host's name service and apt's security suite; nothing else.
cp /etc/resolv.conf "$root/etc/resolv.conf"
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
# Where this network intercepts TLS, the host trusts an extra CA: hand its
# bundle to node (npm fetches the reference tokenizers). Not a package fw
# needs; a machine on the open internet has no such CA.
extra_ca=
if [ -n "${NODE_EXTRA_CA_CERTS:-}" ] && [ -f "$NODE_EXTRA_CA_CERTS" ]; then
	cp "$NODE_EXTRA_CA_CERTS" "$root/etc/fresh-check-host-ca.crt"
	extra_ca=NODE_EXTRA_CA_CERTS=/etc/fresh-check-host-ca.crt
fi

echo "== clone $(git -C "$repo" rev-parse --short HEAD) into $root/root/fw"
git clone -q --no-local "$repo" "$root/root/fw" || { echo "fresh-check: clone failed"; exit 1; }
# shared/ sits beside a checkout here, as in CI
[ -d "$repo/../shared" ] && cp -a "$repo/../shared" "$root/root/shared"

for m in proc sys dev dev/pts; do
	mkdir -p "$root/$m"
	case $m in
	proc) mount -t proc proc "$root/proc" ;;
	sys) mount -t sysfs sys "$root/sys" ;;
	dev) mount --bind /dev "$root/dev" ;;
	dev/pts) mount -t devpts devpts "$root/dev/pts" ;;
	esac && mounts+=("$root/$m")
done

run_in_root() {  # name, command: runs it in the chroot as root, log in $logs/name.log
	local name=$1 cmd=$2 t=$(date +%s) rc
	echo "== $name: $cmd"
	env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		TERM=dumb LANG=C.UTF-8 CI=true $extra_ca \
		chroot "$root" /bin/bash -c "cd /root/fw && $cmd" </dev/null >"$logs/$name.log" 2>&1
	rc=$?
	echo "-- last lines of $name (exit $rc, $(($(date +%s) - t)) s):"
	tail -15 "$logs/$name.log" | sed 's/^/   /'
	return $rc
}

run_in_root demo "bash scripts/demo.sh"
demo_rc=$?
run_in_root ci "bash .ci/run"
ci_rc=$?

echo "== fresh-check: Debian $(cat "$root/etc/debian_version"), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(($(date +%s) - t0)) s"
echo "fresh-check: demo exit $demo_rc, .ci/run exit $ci_rc"
[ $demo_rc -eq 0 ] && [ $ci_rc -eq 0 ]
