#!/usr/bin/env bash
# omp_plugin.sh - fw_add_plugin gives a plugin that uses `#pragma omp` LLVM's
# libomp, never GNU libgomp, under gcc and clang, also when the plugin links
# CMake's OpenMP::OpenMP_C; and such a plugin (entry point without
# FW_PLUGIN_EXPORT, -Wmissing-prototypes -Werror) builds and loads.
# Usage: tests/abi/omp_plugin.sh BUILD_DIR SOURCE_DIR
# Ends with "omp_plugin: N passed, M failed"; exit 0 only without failures.
set -uo pipefail
build=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
work=$(mktemp -d /tmp/omp_plugin.XXXXXX)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0

check() {  # name, command...
	local name=$1
	shift
	if "$@" >"$work/log" 2>&1; then
		passed=$((passed + 1))
		echo "  ok    $name"
	else
		failed=$((failed + 1))
		echo "  FAIL  $name"
		sed 's/^/        /' "$work/log" | head -20
	fi
}

for cc in gcc clang; do
	for cmake_omp in OFF ON; do
		out=$work/$cc-$cmake_omp
		so=$out/plugins/optim/omp.so
		what="$cc, OpenMP::OpenMP_C $cmake_omp"
		check "$what: configure" cmake -S "$src/tests/abi/omp-plugin" -B "$out" \
			-DCMAKE_C_COMPILER=$cc -DWITH_CMAKE_OPENMP=$cmake_omp \
			-DFW_SOURCE_DIR="$src" -DFW_LIBRARY="$build/libfw.so"
		check "$what: build (-Wmissing-prototypes -Werror)" cmake --build "$out"
		check "$what: NEEDED libomp.so" bash -c "readelf -d '$so' | grep -q 'NEEDED.*\[libomp\.so'"
		check "$what: no libgomp NEEDED" bash -c "! readelf -d '$so' | grep -q 'NEEDED.*libgomp'"
		check "$what: fwrun loads it" \
			bash -c "FW_PLUGIN_PATH='$out/plugins' '$build/tools/fwrun' list | grep -q '^optim/omp '"
	done
done
echo "omp_plugin: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
