// hf_reference.js - the reference side of tests/hf_tokenizers.py: Hugging
// Face's tokenizers library (npm tokenizers, Rust with Node bindings).
//
//   node hf_reference.js MODULE_DIR encode TOKENIZER_JSON IN.jsonl OUT.jsonl
//       one line per {"text": ...} of IN: {"plain": ids without special
//       tokens, "special": ids with them, "decoded": decode(special, false),
//       "offsets": special's offsets, in characters}
//   node hf_reference.js MODULE_DIR pairs TOKENIZER_JSON IN.jsonl OUT.jsonl
//       one line per {"a", "b" (null: single), "add", "trunc": null or
//       {"max", "strategy", "direction"}, "pad": null or {"max",
//       "direction", "multiple", "id", "type_id", "token"}, "file": true
//       to use the file's own truncation and padding instead} of IN:
//       {"ids", "type_ids", "attention_mask", "special_tokens_mask",
//       "offsets", "seq": sequence ids, "full": {"ids", "type_ids", "seq",
//       "special_tokens_mask"} untruncated and unpadded}, or {"error":
//       message} where the library refuses
//   node hf_reference.js MODULE_DIR build SPEC.json OUT_DIR
//       builds and saves the tokenizers SPEC describes (a BERT WordPiece, a
//       T5/ALBERT-style Unigram, a RoBERTa byte-level BPE) with the library
//       itself: OUT_DIR/NAME.json for each.
//   node hf_reference.js MODULE_DIR bench TOKENIZER_JSON TEXT_FILE
//       for bench/tokenizer.c: encodes the file as one string (no special
//       tokens) three times; prints "bytes tokens first_s checksum best_s"
//       (best_s: the fastest of the two later runs, the cache warm), in
//       seconds of the process's CPU time (its threads together).
'use strict';
const fs = require('fs');
const path = require('path');

const [moduleDir, cmd, ...args] = process.argv.slice(2);
const tk = require(fs.realpathSync(moduleDir));

async function encode(file, inp, out) {
	const t = tk.Tokenizer.fromFile(file);
	const lines = fs.readFileSync(inp, 'utf8').split('\n').filter((l) => l);
	const res = [];
	for (const l of lines) {
		const text = JSON.parse(l).text;
		const plain = (await t.encode(text, null, { addSpecialTokens: false })).getIds();
		const enc = await t.encode(text, null, { addSpecialTokens: true });
		const special = enc.getIds();
		const decoded = await t.decode(special, false);
		res.push(JSON.stringify({ plain, special, decoded, offsets: enc.getOffsets() }));
	}
	fs.writeFileSync(out, res.join('\n') + '\n');
}

async function pairs(file, inp, out) {
	const lines = fs.readFileSync(inp, 'utf8').split('\n').filter((l) => l);
	const res = [];
	const t = tk.Tokenizer.fromFile(file);
	const asFile = tk.Tokenizer.fromFile(file);     // its own truncation and padding
	for (const l of lines) {
		const r = JSON.parse(l);
		t.disableTruncation();
		t.disablePadding();
		try {
			// the pair untruncated, for the test's account of truncation
			const f = await t.encode(r.a, r.b, { addSpecialTokens: r.add });
			const full = { ids: f.getIds(), type_ids: f.getTypeIds(), seq: f.getSequenceIds(),
				special_tokens_mask: f.getSpecialTokensMask() };
			if (r.trunc && !r.file)
				t.setTruncation(r.trunc.max, { strategy: r.trunc.strategy,
					direction: r.trunc.direction });
			if (r.pad && !r.file)
				t.setPadding({ maxLength: r.pad.max, direction: r.pad.direction,
					padToMultipleOf: r.pad.multiple, padId: r.pad.id,
					padTypeId: r.pad.type_id, padToken: r.pad.token });
			const e = await (r.file ? asFile : t).encode(r.a, r.b, { addSpecialTokens: r.add });
			res.push(JSON.stringify({ ids: e.getIds(), type_ids: e.getTypeIds(),
				attention_mask: e.getAttentionMask(),
				special_tokens_mask: e.getSpecialTokensMask(), offsets: e.getOffsets(), seq: e.getSequenceIds(), full }));
		} catch (err) {
			res.push(JSON.stringify({ error: String(err && err.message || err) }));
		}
	}
	fs.writeFileSync(out, res.join('\n') + '\n');
}

async function bench(file, textFile) {
	const t = tk.Tokenizer.fromFile(file);
	const buf = fs.readFileSync(textFile);
	const text = buf.toString('utf8');
	let ids = null, first = 0, best = Infinity;
	for (let r = 0; r < 3; r++) {
		const t0 = process.cpuUsage();
		ids = (await t.encode(text, null, { addSpecialTokens: false })).getIds();
		const u = process.cpuUsage(t0);
		const s = (u.user + u.system) / 1e6;
		if (r === 0)
			first = s;
		else
			best = Math.min(best, s);
	}
	let sum = 0;
	for (const id of ids)
		sum = (sum * 31 + id) % 1000000007;
	process.stdout.write(`${buf.length} ${ids.length} ${first} ${sum} ${best}\n`);
}

function build(specFile, outDir) {
	const spec = JSON.parse(fs.readFileSync(specFile, 'utf8'));
	// BERT: WordPiece, BertNormalizer (uncased, accents stripped),
	// BertPreTokenizer, [CLS] A [SEP], WordPiece decoder.
	{
		const t = new tk.Tokenizer(tk.WordPiece.init(spec.wordpiece, { unkToken: '[UNK]' }));
		t.setNormalizer(tk.bertNormalizer({ cleanText: true, handleChineseChars: true,
			stripAccents: true, lowercase: true }));
		t.setPreTokenizer(tk.bertPreTokenizer());
		t.setPostProcessor(tk.bertProcessing(['[SEP]', spec.wordpiece['[SEP]']],
			['[CLS]', spec.wordpiece['[CLS]']]));
		t.setDecoder(tk.wordPieceDecoder('##', true));
		t.addSpecialTokens(['[UNK]', '[CLS]', '[SEP]', '[PAD]', '[MASK]']);
		t.addAddedTokens([new tk.AddedToken('<ent>', false, { singleWord: true }),
			new tk.AddedToken('hello world', false, { normalized: true })]);
		t.save(path.join(outDir, 'bert.json'));
	}
	// T5/ALBERT-style Unigram: NFKC + lowercase, Metaspace, </s> after.
	{
		const t = new tk.Tokenizer(tk.Unigram.init(spec.unigram, { unkId: 2, byteFallback: false }));
		t.setNormalizer(tk.sequenceNormalizer([tk.nfkcNormalizer(), tk.lowercase(),
			tk.replace('``', '"')]));
		t.setPreTokenizer(tk.sequencePreTokenizer([tk.whitespaceSplitPreTokenizer(),
			tk.metaspacePreTokenizer('\u2581', 'always', true)]));
		t.setPostProcessor(tk.templateProcessing('$A </s>', '$A </s> $B </s>',
			[['</s>', 1]]));
		t.setDecoder(tk.metaspaceDecoder('\u2581', 'always', true));
		t.addSpecialTokens(['<pad>', '</s>', '<unk>']);
		t.addAddedTokens([new tk.AddedToken('<sep>', true, { leftStrip: true, rightStrip: true })]);
		t.save(path.join(outDir, 'unigram.json'));
	}
	// The same Unigram with byte fallback and Digits/Punctuation splits.
	{
		const t = new tk.Tokenizer(tk.Unigram.init(spec.unigram_bytes,
			{ unkId: 2, byteFallback: true }));
		t.setNormalizer(tk.sequenceNormalizer([tk.nfdNormalizer(), tk.stripAccentsNormalizer(),
			tk.stripNormalizer(true, true)]));
		t.setPreTokenizer(tk.sequencePreTokenizer([tk.digitsPreTokenizer(true),
			tk.punctuationPreTokenizer('isolated'),
			tk.metaspacePreTokenizer('\u2581', 'first', true)]));
		t.setDecoder(tk.sequenceDecoder([tk.metaspaceDecoder('\u2581', 'first', true),
			tk.byteFallbackDecoder(), tk.fuseDecoder()]));
		t.addSpecialTokens(['<pad>', '</s>', '<unk>']);
		t.save(path.join(outDir, 'unigram_bytes.json'));
	}
	// RoBERTa: byte-level BPE with <s> A </s>, <mask> with lstrip.
	{
		const t = new tk.Tokenizer(tk.BPE.init(spec.bpe_vocab, spec.bpe_merges, {}));
		t.setPreTokenizer(tk.byteLevelPreTokenizer(true, true));
		t.setPostProcessor(tk.robertaProcessing(['</s>', spec.bpe_vocab['</s>']],
			['<s>', spec.bpe_vocab['<s>']]));
		// (no ByteLevel decoder in the Node bindings: hf_tokenizers.py adds it)
		t.addSpecialTokens(['<s>', '</s>', '<pad>']);
		t.addAddedTokens([new tk.AddedToken('<mask>', true, { leftStrip: true })]);
		t.save(path.join(outDir, 'roberta.json'));
	}
	// WordPiece with Whitespace + Split (regex, every behavior), lowercase
	// NFD StripAccents, Replace, Prepend; its decoder WordPiece without cleanup.
	{
		const t = new tk.Tokenizer(tk.WordPiece.init(spec.wordpiece, { unkToken: '[UNK]' }));
		t.setNormalizer(tk.sequenceNormalizer([tk.nfkdNormalizer(), tk.stripAccentsNormalizer(),
			tk.lowercase(), tk.replace('  ', ' ')]));
		t.setPreTokenizer(tk.sequencePreTokenizer([tk.whitespacePreTokenizer(),
			tk.splitPreTokenizer('-', 'mergedWithNext', false),
			tk.splitPreTokenizer('\'', 'mergedWithPrevious', false),
			tk.splitPreTokenizer('.', 'contiguous', false),
			tk.splitPreTokenizer('a', 'removed', true)]));
		t.setDecoder(tk.wordPieceDecoder('##', false));
		t.addSpecialTokens(['[UNK]', '[CLS]', '[SEP]']);
		t.save(path.join(outDir, 'wordpiece_split.json'));
	}
}

(async () => {
	if (cmd === 'encode')
		await encode(args[0], args[1], args[2]);
	else if (cmd === 'pairs')
		await pairs(args[0], args[1], args[2]);
	else if (cmd === 'build')
		build(args[0], args[1]);
	else if (cmd === 'bench')
		await bench(args[0], args[1]);
	else {
		process.stderr.write('usage: node hf_reference.js MODULE_DIR encode|pairs|build|bench ...\n');
		process.exit(2);
	}
})().catch((e) => {
	process.stderr.write(String(e && e.stack || e) + '\n');
	process.exit(1);
});
