#!/usr/bin/env bash
# check_layers.sh - refuses an #include that crosses fw's layers the wrong way
# (docs/architecture.md, "Layers"):
#
#   core/     libfw: engine, formats/IO, plugin loader  (sees only itself)
#   runtime/  libfw_runtime                             (sees core's public headers)
#   tools/    fwrun                                     (sees runtime and core's public headers)
#   plugins/  one .so each                              (sees fw/plugin.h and core's public
#                                                        headers, never the loader or runtime)
#   examples/ built against the installed package       (installed headers only)
#
# Include directories already stop most wrong-way includes at compile time
# (runtime/include is seen only by what links fw_runtime; core/src and
# tools/fwrun by nobody else); this script catches the rest: relative paths
# into another layer's folder, and public headers of a higher layer that sit
# on a lower layer's include path (fw/loader.h for plugins).
#
# Usage: tests/check_layers.sh SOURCE_DIR      check the tree
#        tests/check_layers.sh --self-test      each rule refuses a planted include
set -uo pipefail

# Known debts, each "FILE<TAB>INCLUDE" (none: adapter.c's LoRA format went
# behind the peft hooks, hf.c's GPT-2 behind the arch's Hugging Face map).
allowed=

# rule: LAYER_GLOB<TAB>FORBIDDEN_REGEX<TAB>WHY
rules=$'core/\tfw/runtime|runtime/|tools/|plugins/|fwrun\\.h\tcore (engine, formats, loader) is the bottom layer
runtime/\ttools/|fwrun\\.h|plugins/|core/src|internal\\.h|kernel\\.h\tthe runtime sees core\'s public headers only
tools/\tcore/src|(^|/)internal\\.h|(^|/)kernel\\.h|tokenizer_internal\\.h|plugins/|runtime/src\ttools see the public headers of core and runtime only
plugins/\tfw/runtime|fw/loader\\.h|fw/fw\\.h|core/src|(^|/)internal\\.h|runtime/|tools/|fwrun\\.h\tplugins see fw/plugin.h and the engine\'s headers, never the loader, runtime or tools
examples/\t^\\.\\./|core/src|(^|/)internal\\.h|fw/loader\\.h|tools/\texamples use the installed headers only'

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
	plant core/src fw/runtime.h
	plant core/src ../../tools/fwrun/fwrun.h
	plant runtime/src ../../tools/fwrun/fwrun.h
	plant runtime/src internal.h
	plant tools/fwrun ../../core/src/internal.h
	plant tools/fwrun ../../plugins/peft/lora/other.h
	plant plugins/peft/x fw/runtime.h
	plant plugins/peft/x fw/runtime/schedule.h
	plant plugins/peft/x fw/loader.h
	plant plugins/arch/x ../../../runtime/src/a.h
	plant examples/x ../../core/include/fw/fw.h
	plant tools/fwrun ../../plugins/peft/lora/lora_format.h
	plant tools/fwrun ../../plugins/arch/decoder/dims.h
	# and the public headers stay allowed
	rm -rf "${work:?}"/*
	mkdir -p "$work/tools/fwrun"
	printf '#include "fw/runtime.h"\n#include "fw/plugin.h"\n' >"$work/tools/fwrun/ok.c"
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
