#!/usr/bin/python3
"""generate_batch.py - fwrun generate --prompts: several prompts decoded together.

Usage: /usr/bin/python3 tests/generate_batch.py --fwrun PATH --plugin-path DIR

Models: generate_text.py's random GPT-2 (learned positions; its embeddings
scaled up so that greedy margins are clear) and llama_hf.py's
random Llama (RoPE with llama3 scaling, GQA 6/2, untied head), imported
from Hugging Face folders. Each under attention/mha and attention/flash:
  1. greedy: five token prompts of lengths 1..11 in batches of 3 (a full
     batch, then a partial one): each row's ids equal an independent torch
     greedy decode of that prompt alone (modeling code written from the
     published math: gpt2_parity.forward, llama_hf.hf_forward) and the
     batch-1 `--prompt-tokens` run of fw; each row's log-probabilities equal
     torch's log_softmax of the logits at the chosen ids (1e-4 absolute);
     "finish" is "length";
  2. sampling (temperature, top-k, top-p, repetition penalty, one seed):
     each row equals the batch-1 run of its prompt (the sampler's draws
     depend on the key and the position, never on the row);
  3. GPT-2 under attention/sparse (window 4): rows equal their batch-1 runs;
  4. per-row stops (GPT-2, byte tokenizer, text prompts): a stop string that
     occurs in one row's torch greedy continuation ends that row there
     ("stop", text cut before it) while the other row runs to its length,
     equal to torch;
  5. bad input: a broken JSON line, an id outside the vocabulary, a record
     with no prompt, text without a tokenizer, --prompts with --prompt,
     --batch-size 0, an empty file:
     one "fwrun:" line naming the problem (and the file:line), exit 2.
Ends with "generate_batch: N passed, M failed"; exit 0 only when none failed.
"""
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import generate_text as gt  # noqa: E402
import gpt2_parity as gp  # noqa: E402
import llama_hf as lh  # noqa: E402

torch.set_num_threads(2)
R = gp.Results()

PROMPTS = [[5, 17, 42], [300, 7, 99, 3, 11, 12, 13, 14, 15], [9],
           [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 1], [2, 200, 20, 2]]
N_NEW = 10
BATCH = 3
TOL_LOGPROB = 1e-4
MARGIN = 1e-4           # smallest top-2 logit gap for greedy ids to be comparable


def greedy_ref(logits_of, prompt, n):
    """torch greedy: ids, log-probabilities, smallest top-2 margin."""
    ids, lps, margin = list(prompt), [], 1e9
    with torch.no_grad():
        for _ in range(n):
            lg = logits_of(torch.tensor([ids]))[0, -1].double()
            top = torch.topk(lg, 2)
            margin = min(margin, float(top.values[0] - top.values[1]))
            t = int(top.indices[0])
            lps.append(float(F.log_softmax(lg, -1)[t]))
            ids.append(t)
    return ids[len(prompt):], lps, margin


def write_prompts(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def rows_of(p):
    out = [json.loads(line) for line in p.stdout.strip().splitlines()]
    return sorted(out, key=lambda r: r["index"])


def ids_of(p):
    return [int(t) for t in p.stdout.strip().split(",")] if p.returncode == 0 else None


def check_model(fw, work, name, h5, logits_of, plug):
    tag = f"{name} {plug}"
    plugins = f"--plugins=arch/decoder,attention/{plug}"
    path = os.path.join(work, "prompts.jsonl")
    write_prompts(path, [{"tokens": t} for t in PROMPTS])
    p = fw("generate", plugins, f"--load={h5}", f"--prompts={path}", f"--batch-size={BATCH}",
           f"--max-new-tokens={N_NEW}", "--temperature=0", "--threads=2")
    if not R.check(f"{tag}: --prompts greedy runs", p.returncode == 0, gp.describe(p)):
        return
    order = [json.loads(line)["index"] for line in p.stdout.strip().splitlines()]
    R.check(f"{tag}: one line per prompt, in order", order == list(range(len(PROMPTS))),
            str(order))
    rows = rows_of(p)
    for i, (prompt, row) in enumerate(zip(PROMPTS, rows)):
        want, lps, margin = greedy_ref(logits_of, prompt, N_NEW)
        one = ids_of(fw("generate", plugins, f"--load={h5}",
                        "--prompt-tokens=" + ",".join(map(str, prompt)),
                        f"--max-new-tokens={N_NEW}", "--temperature=0", "--threads=2"))
        R.check(f"{tag}: row {i} (prompt {len(prompt)} ids) greedy ids = torch's",
                row["tokens"] == want and margin >= MARGIN,
                f"fw {row['tokens']} torch {want}; torch top-2 margin {margin:.2e}")
        R.check(f"{tag}: row {i} = the batch-1 run", row["tokens"] == one,
                f"batch {row['tokens']} alone {one}")
        err = max(abs(a - b) for a, b in zip(row["logprobs"], lps))
        R.check(f"{tag}: row {i} log-probabilities = torch's log_softmax",
                len(row["logprobs"]) == N_NEW and err <= TOL_LOGPROB, f"max |diff| {err:.2e}")
        R.check(f"{tag}: row {i} finish is length", row["finish"] == "length", row["finish"])
    sample = ["--temperature=0.9", "--top-k=50", "--top-p=0.95", "--repetition-penalty=1.2",
              "--seed=7"]
    p = fw("generate", plugins, f"--load={h5}", f"--prompts={path}", "--batch-size=5",
           f"--max-new-tokens={N_NEW}", "--threads=2", *sample)
    if not R.check(f"{tag}: --prompts sampling runs", p.returncode == 0, gp.describe(p)):
        return
    rows = rows_of(p)
    alone = [ids_of(fw("generate", plugins, f"--load={h5}",
                       "--prompt-tokens=" + ",".join(map(str, t)), f"--max-new-tokens={N_NEW}",
                       "--threads=2", *sample)) for t in PROMPTS]
    R.check(f"{tag}: sampled rows = their batch-1 runs (same seed)",
            [r["tokens"] for r in rows] == alone,
            f"batch {[r['tokens'] for r in rows]} alone {alone}")
    greedy = [greedy_ref(logits_of, t, N_NEW)[0] for t in PROMPTS]
    R.check(f"{tag}: sampling differs from greedy", [r["tokens"] for r in rows] != greedy)


def check_sparse(fw, work, h5):
    """attention/sparse (a window of 4 keys): rows = their batch-1 runs."""
    plugins = ["--plugins=arch/decoder,attention/sparse", "--sparse-window=4"]
    path = os.path.join(work, "prompts.jsonl")
    write_prompts(path, [{"tokens": t} for t in PROMPTS])
    p = fw("generate", *plugins, f"--load={h5}", f"--prompts={path}", "--batch-size=5",
           f"--max-new-tokens={N_NEW}", "--temperature=0", "--threads=2")
    if not R.check("gpt2 sparse window 4: --prompts runs", p.returncode == 0, gp.describe(p)):
        return
    rows = [r["tokens"] for r in rows_of(p)]
    alone = [ids_of(fw("generate", *plugins, f"--load={h5}",
                       "--prompt-tokens=" + ",".join(map(str, t)), f"--max-new-tokens={N_NEW}",
                       "--temperature=0", "--threads=2")) for t in PROMPTS]
    R.check("gpt2 sparse window 4: rows = their batch-1 runs", rows == alone,
            f"batch {rows} alone {alone}")


def check_stops(fw, work, h5, W):
    """Per-row stop strings, through the byte tokenizer (ids are bytes)."""
    texts = ["The cat ", "Zebras and quokkas, "]
    refs = [greedy_ref(lambda idx: gp.forward(W, idx)[..., :257], t.encode(), 16)
            for t in texts]
    cont = [bytes(r[0]) for r in refs]
    if not R.check("stops: torch continuations have no EOS and distinct bytes",
                   all(256 not in r[0] and len(set(r[0])) > 3 and r[2] >= MARGIN for r in refs),
                   repr(cont)):
        return
    stop = cont[0][5:8]                # inside row 0's continuation
    if stop in cont[1]:
        stop = cont[0][6:9]
    if not R.check("stops: the stop string occurs in row 0 only",
                   stop in cont[0] and stop not in cont[1] and b"\"" not in stop and
                   b"\\" not in stop and all(32 <= c < 127 for c in stop), repr(stop)):
        return
    path = os.path.join(work, "text.jsonl")
    write_prompts(path, [{"prompt": t} for t in texts])
    p = fw("generate", "--plugins=arch/decoder,attention/mha", f"--load={h5}",
           "--tokenizer=byte", f"--prompts={path}", "--max-new-tokens=16", "--temperature=0",
           f"--stop={stop.decode()}", "--threads=2")
    if not R.check("stops: --prompts with --stop runs", p.returncode == 0, gp.describe(p)):
        return
    rows = rows_of(p)
    want0 = cont[0][:cont[0].index(stop)].decode("utf-8", "replace")
    R.check("stops: row 0 stops at the string (text cut before it)",
            rows[0]["finish"] == "stop" and rows[0]["text"] == want0 and
            len(rows[0]["tokens"]) < 16, f"{rows[0]} want text {want0!r}")
    R.check("stops: row 1 runs to its length, = torch",
            rows[1]["finish"] == "length" and rows[1]["tokens"] == refs[1][0] and
            rows[1]["text"] == cont[1].decode("utf-8", "replace"), f"{rows[1]} torch {cont[1]!r}")


def check_bad(fw, work, h5):
    def bad(tag, lines, *extra, expect=""):
        path = os.path.join(work, f"bad_{len(tag)}.jsonl")
        with open(path, "w") as f:
            f.write(lines)
        p = fw("generate", "--plugins=arch/decoder,attention/mha", f"--load={h5}",
               f"--prompts={path}", "--temperature=0", "--max-new-tokens=4", *extra)
        lines_err = p.stderr.strip().splitlines()
        R.check(f"bad: {tag}: one fwrun line with {expect!r}, exit 2, nothing on stdout",
                p.returncode == 2 and len(lines_err) == 1 and lines_err[0].startswith("fwrun:")
                and expect in lines_err[0] and not p.stdout, gp.describe(p))

    bad("broken JSON on line 2", '{"tokens": [1, 2]}\n{"tokens": [1,\n', expect=":2:")
    bad("an id outside the vocabulary", '{"tokens": [1, 2]}\n\n{"tokens": [3, 99999]}\n',
        expect=":3: token 99999 is outside the vocabulary")
    bad("no prompt in a record", '{"text": "hi"}\n', expect=":1: expected an object")
    bad("text without a tokenizer", '{"prompt": "hi"}\n', expect="needs a tokenizer")
    bad("an empty file", "\n\n", expect="has no prompts")
    bad("--prompts with --prompt", '{"tokens": [1]}\n', "--prompt=hi", expect="only one of")
    bad("--batch-size 0", '{"tokens": [1]}\n', "--batch-size=0", expect="batch-size")


def main():
    a, fw = gp.cli(__doc__)

    def body(work):
        W = gt.text_weights()           # mostly printable ASCII under greedy
        W["wte.weight"] *= 8.0          # logits far from uniform: clear argmax margins
        h5 = gp.import_random(fw, work, W, R)
        c = lh.MODELS["llama"]
        Wl = lh.random_hf(c, 500)
        d = os.path.join(work, "llama")
        lh.write_hf(d, c, Wl)
        hl = os.path.join(work, "llama.h5")
        p = fw("import", d, hl)
        R.check("import the random Llama", p.returncode == 0, gp.describe(p))
        for plug in ("mha", "flash"):
            if h5:
                check_model(fw, work, "gpt2", h5, lambda idx: gp.forward(W, idx), plug)
            if p.returncode == 0:
                check_model(fw, work, "llama", hl, lambda idx: lh.hf_forward(c, Wl, idx), plug)
        if h5:
            check_sparse(fw, work, h5)
            check_stops(fw, work, h5, W)
            check_bad(fw, work, h5)

    return R.run("generate_batch", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
