#!/usr/bin/env bash
# check_layers.sh - refuses an #include that crosses fw's layers the wrong way
# (docs/architecture.md, "Layers"):
#
#   core/engine/   libfw's engine: tensors, graph, ops     (sees only itself)
#   core/formats/  libfw's formats/IO                       (sees the engine's public headers)
#   core/loader/   libfw's plugin loader                    (sees engine and formats public headers)
#   runtime/       libfw_runtime                            (sees libfw's public headers)
#   tools/         fwrun                                    (sees runtime and libfw's public headers)
#   plugins/       one .so each                             (sees fw/plugin.h and what it includes,
#                                                            never the loader or runtime)
#   examples/      built against the installed package      (installed headers only)
#
# Include directories stop most wrong-way includes at compile time: each of
# libfw's layers is an object library that sees only its own folder and the
# include/ folders of the layers below (core/CMakeLists.txt; ctest's
# layers_compile_* build probes that must fail); runtime/include is seen only
# by what links fw_runtime; core/*/src and tools/fwrun by nobody else. This
# script catches the rest: relative paths into another layer's folder, and
# public headers of a higher layer that share an installed include path
# (fw/loader.h for plugins built against the installed package).
#
# Usage: tests/check_layers.sh SOURCE_DIR      check the tree
#        tests/check_layers.sh --self-test      each rule refuses a planted include
set -uo pipefail

# Known debts, each "FILE<TAB>INCLUDE" (none: adapter.c's LoRA format went
# behind the peft hooks, hf.c's GPT-2 behind the arch's Hugging Face map).
allowed=

# rule: LAYER_GLOB<TAB>FORBIDDEN_REGEX<TAB>WHY
rules=$'core/\tfw/runtime|runtime/|tools/|plugins/|fwrun\\.h\tlibfw (engine, formats, loader) is below the runtime, tools and plugins
core/engine/\tfw/(io|safetensors|tokenizer|chat_template|plugin|loader|fw)\\.h|formats/|loader/|tokenizer_(internal|hf)\\.h|loader_internal\\.h\tthe engine is the bottom layer: it sees no header of formats or the loader
core/formats/\tfw/(plugin|loader|fw)\\.h|loader/|engine/src|(^|/)internal\\.h|(^|/)kernel\\.h|vmath\\.h|loader_internal\\.h\tformats/IO sees the engine\'s public headers only, nothing of the loader
core/loader/\tengine/src|formats/src|(^|/)internal\\.h|(^|/)kernel\\.h|vmath\\.h|tokenizer_(internal|hf)\\.h\tthe loader sees the public headers of the engine and formats only
runtime/\ttools/|fwrun\\.h|plugins/|core/[a-z]+/src|core/src|(^|/)internal\\.h|(^|/)kernel\\.h|loader_internal\\.h\tthe runtime sees libfw\'s public headers only
tools/\tcore/[a-z]+/src|core/src|(^|/)internal\\.h|(^|/)kernel\\.h|tokenizer_internal\\.h|loader_internal\\.h|plugins/|runtime/src\ttools see the public headers of libfw and the runtime only
plugins/\tfw/runtime|fw/loader\\.h|fw/fw\\.h|core/[a-z]+/src|core/src|(^|/)internal\\.h|loader_internal\\.h|runtime/|tools/|fwrun\\.h\tplugins see fw/plugin.h and the engine\'s headers, never the loader, runtime or tools
examples/\t^\\.\\./|core/[a-z]+/src|core/src|(^|/)internal\\.h|fw/loader\\.h|tools/\texamples use the installed headers only'

check_tree() {  # root: prints violations, returns their count (capped)
	local root=$1 bad=0
	while IFS=$'\t' read -r layer forbidden why; do
		[ -d "$root/$layer" ] || continue
		while IFS= read -r hit; do
			local file=${hit%%:*} rest=${hit#*:}
			local line=${rest%%:*} text=${rest#*:}
			local inc
			inc=$(sed -E 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*[<"]([^">]*)[">].*/\1/' <<<"$text")
			local rel=${file#"$root"/}
			echo "$inc" | grep -Eq "$forbidden" || continue
			if grep -qxF "$rel"$'\t'"$inc" <<<"$allowed"; then
				continue
			fi
			echo "check_layers: $rel:$line: #include \"$inc\": $why"
			bad=$((bad + 1))
		done < <(grep -rnE --include='*.c' --include='*.h' --include='*.cpp' --include='*.hpp' \
				'^[[:space:]]*#[[:space:]]*include' "$root/$layer" 2>/dev/null)
	done <<<"$rules"
	return $((bad > 100 ? 100 : bad))
}

if [ "${1:-}" = "--self-test" ]; then
	work=$(mktemp -d /tmp/check_layers.XXXXXX)
	trap 'rm -rf "$work"' EXIT
	fails=0
	plant() {  # folder, include: one file with that include must be refused
		rm -rf "${work:?}"/*
		mkdir -p "$work/$1"
		printf '#include "%s"\n' "$2" >"$work/$1/x.c"
		if check_tree "$work" >/dev/null; then
			echo "check_layers self-test: $1 including $2 was not refused"
			fails=$((fails + 1))
		fi
	}
	plant core/engine/src fw/runtime.h
	plant core/loader/src ../../../tools/fwrun/fwrun.h
	plant core/engine/src fw/io.h
	plant core/engine/src fw/plugin.h
	plant core/engine/src fw/fw.h
	plant core/engine/src ../../formats/src/tokenizer_hf.h
	plant core/engine/src loader_internal.h
	plant core/formats/src fw/plugin.h
	plant core/formats/src fw/loader.h
	plant core/formats/src internal.h
	plant core/formats/src ../../engine/src/kernel.h
	plant core/loader/src internal.h
	plant core/loader/src tokenizer_internal.h
	plant core/loader/src ../../engine/src/vmath.h
	plant runtime/src ../../core/engine/src/internal.h
	plant runtime/src loader_internal.h
	plant runtime/src ../../tools/fwrun/fwrun.h
	plant runtime/src internal.h
	plant tools/fwrun ../../core/engine/src/internal.h
	plant plugins/attention/x ../../../core/loader/src/loader_internal.h
	plant tools/fwrun ../../plugins/peft/lora/other.h
	plant plugins/peft/x fw/runtime.h
	plant plugins/peft/x fw/runtime/schedule.h
	plant plugins/peft/x fw/loader.h
	plant plugins/arch/x ../../../runtime/src/a.h
	plant examples/x ../../core/loader/include/fw/fw.h
	plant tools/fwrun ../../plugins/peft/lora/lora_format.h
	plant tools/fwrun ../../plugins/arch/decoder/dims.h
	# and the public headers stay allowed
	rm -rf "${work:?}"/*
	mkdir -p "$work/tools/fwrun"
	printf '#include "fw/runtime.h"\n#include "fw/plugin.h"\n' >"$work/tools/fwrun/ok.c"
	mkdir -p "$work/core/engine/src" "$work/core/formats/src" "$work/core/loader/src"
	printf '#include "internal.h"\n#include "kernel.h"\n#include "vmath.h"\n#include "fw/graph.h"\n' \
		>"$work/core/engine/src/ok.c"
	printf '#include "fw/tensor.h"\n#include "fw/io.h"\n#include "tokenizer_internal.h"\n' \
		>"$work/core/formats/src/ok.c"
	printf '#include "fw/fw.h"\n#include "fw/plugin.h"\n#include "loader_internal.h"\n' \
		>"$work/core/loader/src/ok.c"
	if ! check_tree "$work"; then
		echo "check_layers self-test: an allowed include was refused"
		fails=$((fails + 1))
	fi
	echo "check_layers self-test: $fails failed"
	[ "$fails" -eq 0 ]
	exit
fi

root=$(cd "${1:?usage: check_layers.sh SOURCE_DIR | --self-test}" && pwd)
check_tree "$root"
n=$?
echo "check_layers: $n wrong-way includes"
[ "$n" -eq 0 ]
