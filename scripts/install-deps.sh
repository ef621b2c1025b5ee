#!/usr/bin/env bash
# Installs every Debian package fw needs to build, test and benchmark.
# Idempotent: does nothing when all are present. Run as root on Debian 12.
set -euo pipefail

PACKAGES=(
	clang libomp-dev cmake make pkg-config        # toolchain, LLVM OpenMP
	libdnnl-dev                                   # oneDNN: matrix multiply
	libhdf5-dev hdf5-tools                        # weights and checkpoints
	check                                         # unit tests
	libjansson-dev                                # JSON (configs, safetensors)
	libinih-dev                                   # INI config files
	libpcre2-dev                                  # regexes (tokenizer)
	python3-torch python3-h5py python3-numpy      # PyTorch oracle for tests
	nodejs npm                                    # reference GPT-2 encoder for tests
	fortunes                                      # the demo corpus: English quotations
)

missing=()
for p in "${PACKAGES[@]}"; do
	# A newer node (e.g. NodeSource's nodejs, which bundles npm) will do.
	[ "$p" = nodejs ] && command -v node >/dev/null && continue
	[ "$p" = npm ] && command -v npm >/dev/null && continue
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi
echo "install-deps: installing ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: need root to install packages" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
