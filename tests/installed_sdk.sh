#!/usr/bin/env bash
# installed_sdk.sh - what a plugin author gets from `cmake --install`:
#   1. every installed header compiles on its own, warning-free under
#      -Wall -Wextra -Werror, with gcc and clang, as C11 and as C++17;
#   2. the install is relocatable: it is made in one prefix and moved to
#      another, and then fwrun runs, finds its own plugins, and
#      examples/hello-optim builds out of tree against the moved CMake package
#      and pkg-config file with gcc and clang, and fwrun loads the plugin;
#   3. examples/lora-finetune, a program on the runtime library alone, builds
#      the same ways and fine-tunes a tiny model with LoRA.
# Usage: tests/installed_sdk.sh BUILD_DIR SOURCE_DIR
# Ends with "installed_sdk: N passed, M failed"; exit 0 only without failures.
set -uo pipefail
build=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
work=$(mktemp -d /tmp/installed_sdk.XXXXXX)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0

check() {  # name, command...: runs command, its output kept in $work/log
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

prefix=$work/moved/prefix
if ! cmake --install "$build" --prefix "$work/first" >"$work/install.log" 2>&1; then
	cat "$work/install.log"
	echo "installed_sdk: 0 passed, 1 failed (cmake --install)"
	exit 1
fi
mkdir -p "$work/moved" && mv "$work/first" "$prefix"

echo "the install, moved from $work/first to $prefix:"
check "fwrun runs (RUNPATH relative to \$ORIGIN)" "$prefix/bin/fwrun" --version
check "fwrun searches the moved prefix's plugin dir, loads arch/decoder from it" \
	bash -c "env -u FW_PLUGIN_PATH '$prefix/bin/fwrun' list | grep -q '(${prefix}/lib/fw/plugins/arch/decoder.so)'"
check "fw.pc points into the moved prefix" \
	bash -c "[ \"\$(PKG_CONFIG_PATH='$prefix/lib/pkgconfig' pkg-config --variable=includedir fw)\" -ef '$prefix/include' ]"

echo "installed headers ($prefix/include/fw, fw/runtime):"
headers=("$prefix"/include/fw/*.h "$prefix"/include/fw/runtime/*.h)
[ ${#headers[@]} -ge 10 ] || { echo "  FAIL  only ${#headers[@]} headers installed"; exit 1; }
compilers=("gcc -std=c11 -x c" "clang -std=c11 -x c" "g++ -std=c++17 -x c++"
	   "clang++ -std=c++17 -x c++")
for cc in "${compilers[@]}"; do
	for h in "${headers[@]}"; do
		name=${h#"$prefix"/include/}
		# twice: the include guard holds
		printf '#include <%s>\n#include <%s>\nint main(void) { return 0; }\n' "$name" "$name" \
			>"$work/one.c"
		# shellcheck disable=SC2086
		check "$name: $cc" $cc -Wall -Wextra -Werror -fsyntax-only -I "$prefix/include" \
			"$work/one.c"
	done
done

# A sanitized fw (FW_SANITIZE) needs the sanitizer runtime of the compiler
# that built it in every program linking it: programs are then built by clang
# with the same -fsanitize flags, and the gcc program builds are left to the
# Release suite (said below). Plugins (modules) need nothing.
prog_ccs=(gcc clang)
prog_flags=
if grep -q '^FW_SANITIZE:BOOL=ON' "$build/CMakeCache.txt" 2>/dev/null; then
	prog_ccs=(clang)
	prog_flags="-fsanitize=address,undefined"
fi

cmake_example() {  # example folder, output folder, extra flags, compilers...: configure, build
	local ex=$1 out=$2 flags=$3 cc
	shift 3
	for cc in "$@"; do
		check "$cc: configure" cmake -S "$src/examples/$ex" -B "$work/$out-$cc" \
			-DCMAKE_C_COMPILER=$cc -DCMAKE_PREFIX_PATH="$prefix" \
			-DCMAKE_C_FLAGS="-Werror $flags" -DCMAKE_EXE_LINKER_FLAGS="$flags"
		check "$cc: build" cmake --build "$work/$out-$cc"
	done
}

echo "examples/hello-optim against the installed package:"
cmake_example hello-optim hello "" gcc clang
for cc in gcc clang; do
	out=$work/hello-$cc
	check "$cc: fwrun list shows optim/hello" \
		bash -c "FW_PLUGIN_PATH='$out/plugins' '$prefix/bin/fwrun' list | grep -q 'optim/hello'"
done

echo "examples/hello-optim through the moved fw.pc (pkg-config):"
for cc in gcc clang; do
	out=$work/pc-$cc/optim
	mkdir -p "$out"
	check "$cc: build" bash -c "$cc -Wall -Wextra -Wno-unused-parameter -Werror -shared -fPIC \
		-o '$out/hello.so' '$src/examples/hello-optim/hello.c' \
		\$(PKG_CONFIG_PATH='$prefix/lib/pkgconfig' pkg-config --cflags --libs fw)"
	check "$cc: fwrun list shows optim/hello" \
		bash -c "FW_PLUGIN_PATH='$work/pc-$cc' '$prefix/bin/fwrun' list | grep -q 'optim/hello'"
done

echo "examples/lora-finetune (the runtime API alone) against the installed package:"
[ ${#prog_ccs[@]} -eq 1 ] && echo "  (sanitized fw: programs built by clang with $prog_flags; gcc's in the Release suite)"
cmake_example lora-finetune finetune "$prog_flags" "${prog_ccs[@]}"
check "lora-finetune trains a tiny LoRA model, its loss falls, the adapter is saved" \
	bash -c "env -u FW_PLUGIN_PATH '$work/finetune-${prog_ccs[0]}/lora-finetune' '$work/adapter.h5' && \
		 [ -s '$work/adapter.h5' ]"
check "lora-finetune through pkg-config fw-runtime" \
	bash -c "${prog_ccs[0]} -Wall -Wextra -Werror $prog_flags -o '$work/finetune-pc' \
		 '$src/examples/lora-finetune/finetune.c' \
		 \$(PKG_CONFIG_PATH='$prefix/lib/pkgconfig' pkg-config --cflags --libs fw-runtime) \
		 -Wl,-rpath,'$prefix/lib' && '$work/finetune-pc' '$work/adapter2.h5'"

echo "installed_sdk: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
