#!/usr/bin/env bash
# Writes the demo corpus as JSONL {"text": ...} records, one per quotation,
# from Debian's fortunes packages (English quotations, poems, jokes; BSD
# licence; /usr/share/games/fortunes, fortunes separated by "%" lines).
# Every 20th quotation goes to the held-out file.
#
# usage: demo-corpus.sh OUT_DIR   ->  OUT_DIR/train.jsonl, OUT_DIR/valid.jsonl
set -euo pipefail
out=${1:?usage: demo-corpus.sh OUT_DIR}
src=/usr/share/games/fortunes
files=(literature fortunes riddles wisdom people humorists science songs-poems
       education food kids love pets platitudes tao work sports art computers linux
       miscellaneous definitions zippy startrek law medicine goedel magic paradoxum news)
mkdir -p "$out"
for f in "${files[@]}"; do
	[ -r "$src/$f" ] || { echo "demo-corpus: $src/$f: missing (apt-get install fortunes)" >&2; exit 1; }
done
# Control characters (the backspaces of old overstrikes) are dropped, tabs
# and newlines kept as JSON escapes.
(cd "$src" && cat "${files[@]}") | tr -d '\000-\010\013-\037' |
	LC_ALL=C sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\t/\\t/g' | LC_ALL=C awk -v out="$out" '
function flush() {
	if (text == "") return
	file = (++n % 20 == 0) ? out "/valid.jsonl.tmp" : out "/train.jsonl.tmp"
	printf "{\"text\": \"%s\"}\n", text > file
	text = ""
}
$0 == "%" { flush(); next }
{ text = (text == "") ? $0 : text "\\n" $0 }
END { flush(); printf "demo-corpus: %d quotations\n", n > "/dev/stderr" }'
mv "$out/train.jsonl.tmp" "$out/train.jsonl"
mv "$out/valid.jsonl.tmp" "$out/valid.jsonl"
