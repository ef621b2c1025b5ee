#!/usr/bin/env bash
# Installs every Debian package fw needs to build, test and benchmark, one a
# line with the reason. Installed with --no-install-recommends, so anything a
# package only recommends but the build needs is named here too.
# Idempotent: does nothing when all are present. Run as root on Debian 12.
set -euo pipefail

PACKAGES=(
	ca-certificates     # npm fetches the reference tokenizer over https
	clang               # the compiler of the default build and the ASan+UBSan suite
	libclang-rt-14-dev  # clang's sanitizer runtimes (ASan+UBSan suite); not pulled in by clang
	gcc                 # the other supported compiler (CI builds with both)
	g++                 # the installed headers are checked to compile as C++17
	libomp-dev          # LLVM OpenMP: fw's thread pool (linked before libdnnl's libgomp)
	cmake               # the build
	make                # cmake's generator
	pkg-config          # finds check, jansson, pcre2; the installed fw.pc
	libdnnl-dev         # oneDNN: matrix multiply
	ocl-icd-opencl-dev  # only Recommended by libdnnl-dev, but its dnnl-config.cmake finds OpenCL
	libhdf5-dev         # weights and checkpoints
	hdf5-tools          # h5dump/h5ls in the HDF5 format docs and checks
	check               # the C unit test framework
	libjansson-dev      # JSON: configs, safetensors headers, tokenizer.json
	libpcre2-dev        # regexes: GPT-2's pre-tokenizer
	libicu-dev          # Unicode: normalization (NFC/NFKC/NFD), categories, case mapping for tokenizer.json
	python3             # the oracle scripts run under /usr/bin/python3
	python3-torch       # PyTorch: the oracle of the parity tests
	python3-h5py        # the oracle scripts read fw's HDF5 files
	python3-numpy       # the oracle scripts' arrays
	nodejs              # runs GPT-2's reference encoder (npm gpt-3-encoder)
	npm                 # fetches that encoder
	fortunes            # the demo corpus: English quotations
	gnuplot-nox         # fwrun report's plots (SVG, inlined in report.html); 6 s to install here
	chromium            # tests/sweep_cli.py loads report.html headless: console, screenshot, series; 21 s here
	openmpi-bin         # mpirun: fwrun sweep --launcher=mpi spreads trials over ranks (tests/sweep_cli.py); 24 s to install here
	libopenblas0-openmp # bench/gpt2_train.py: torch's fp32 BLAS (OpenMP OpenBLAS, loaded by LD_LIBRARY_PATH), the fair baseline
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
