#!/usr/bin/python3
"""generate_prefill.py - prefill in one forward, per-row cache slots and continuous
batching against a plain torch full-sequence forward.

Usage: /usr/bin/python3 tests/generate_prefill.py --fwrun PATH --plugin-path DIR

Models: llama_parity.py's Llama (RoPE with llama3 scaling, GQA 6/2, RMSNorm,
SwiGLU) and BLOOM-style ALiBi model (6 heads: non-power-of-two slopes), with
768 positions, random weights large enough for clear greedy margins. The
reference is llama_parity.forward: torch's full forward over prompt +
generated ids at every step (written from the HF math, no cache).
For each under attention/mha and attention/flash:
  1. `--prompts` with prompts of 600, 5, 530, 70 and 1 tokens in 2 rows: the
     600- and 530-token prompts take two prefill forwards (512 tokens, then
     the rest), the short ones one; rows finish at different times and take
     the next prompt (continuous batching), and decoding attends over more
     than 512 cached keys (flash: several key blocks). Each prompt's ids equal
     torch's greedy continuation (top-2 margin >= 1e-4) and each
     log-probability (the first one is the prefill's last logits) equals
     torch's log_softmax within 1e-4 absolute;
  2. each prompt's ids equal fw's batch-1 `--prompt-tokens` run (bitwise:
     same kernels, a row never sees another's slots);
  3. (Llama) sampling (temperature, top-k, top-p, repetition penalty) in 2
     rows equals the batch-1 runs with the same seed.
Then --eos-token-id (Llama, mha), as Hugging Face's eos_token_id: with the
4th torch greedy id of prompt 0 (not earlier in it), and then that id and
another, prompt 0 stops right after generating it (the id kept, finish "eos")
while a prompt whose greedy ids lack both runs to its length; the same for
the batch-1 --prompt-tokens run. Bad values (not ids, an id outside the
vocabulary): one fwrun line naming the option, exit 2.
Ends with "generate_prefill: N passed, M failed"; exit 0 only when none failed.
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import generate_batch as gb  # noqa: E402
import gpt2_parity as gp  # noqa: E402
import llama_parity as lp  # noqa: E402

torch.set_num_threads(2)
R = gp.Results()

N_POS = 768
N_NEW = 8
TOL_LOGPROB = 1e-4
MARGIN = 1e-4
LENGTHS = [600, 5, 530, 70, 1]


def ini(m):
    """llama_parity's [arch/decoder] section with N_POS positions."""
    lines = ["[arch/decoder]"]
    for a in lp.flags(m):
        k, _, v = a[2:].partition("=")
        lines.append(f"{k} = {N_POS if k == 'n-positions' else v or 'true'}")
    return "\n".join(lines) + "\n"


def greedy_ref(m, W, prompt, n):
    """torch greedy ids, log-probabilities, smallest top-2 margin."""
    return gb.greedy_ref(lambda idx: lp.forward(m, W, idx), prompt, n)


def check(fw, work, name, m, W, ck, prompts, refs, att, sampling):
    tag = f"{name} {att}"
    plugins = f"--plugins=arch/decoder,attention/{att}"
    path = os.path.join(work, f"{name}.jsonl")
    with open(path, "w") as f:
        for t in prompts:
            f.write(json.dumps({"tokens": t}) + "\n")
    p = fw("generate", plugins, f"--load={ck}", f"--prompts={path}", "--batch-size=2",
           f"--max-new-tokens={N_NEW}", "--temperature=0", "--threads=2")
    if not R.check(f"{tag}: --prompts greedy runs", p.returncode == 0, gp.describe(p)):
        return
    rows = gb.rows_of(p)
    R.check(f"{tag}: one line per prompt", [r["index"] for r in rows] ==
            list(range(len(prompts))), str([r["index"] for r in rows]))
    for i, (prompt, row, (want, lps, margin)) in enumerate(zip(prompts, rows, refs)):
        R.check(f"{tag}: prompt {i} ({len(prompt)} ids) greedy ids = torch's full forward",
                row["tokens"] == want and margin >= MARGIN,
                f"fw {row['tokens']} torch {want}; top-2 margin {margin:.2e}")
        err = max(abs(a - b) for a, b in zip(row["logprobs"], lps)) \
            if len(row["logprobs"]) == N_NEW else float("inf")
        R.check(f"{tag}: prompt {i} log-probabilities (prefill's first) = torch's "
                f"log_softmax within {TOL_LOGPROB:g}", err <= TOL_LOGPROB,
                f"max |diff| {err:.2e}")
        one = gb.ids_of(fw("generate", plugins, f"--load={ck}",
                        "--prompt-tokens=" + ",".join(map(str, prompt)),
                        f"--max-new-tokens={N_NEW}", "--temperature=0", "--threads=2"))
        R.check(f"{tag}: prompt {i} = its batch-1 run", row["tokens"] == one,
                f"batch {row['tokens']} alone {one}")
    if not sampling:
        return
    sample = ["--temperature=0.9", "--top-k=40", "--top-p=0.9", "--repetition-penalty=1.3",
              "--seed=11"]
    p = fw("generate", plugins, f"--load={ck}", f"--prompts={path}", "--batch-size=2",
           f"--max-new-tokens={N_NEW}", "--threads=2", *sample)
    if not R.check(f"{tag}: --prompts sampling runs", p.returncode == 0, gp.describe(p)):
        return
    got = [r["tokens"] for r in gb.rows_of(p)]
    alone = [gb.ids_of(fw("generate", plugins, f"--load={ck}",
                       "--prompt-tokens=" + ",".join(map(str, t)), f"--max-new-tokens={N_NEW}",
                       "--threads=2", *sample)) for t in prompts]
    R.check(f"{tag}: sampled rows = their batch-1 runs (same seed)", got == alone,
            f"batch {got} alone {alone}")


def check_eos(fw, work, ck, prompts, refs):
    plugins = "--plugins=arch/decoder,attention/mha"
    want = refs[0][0]
    eos = want[3]
    stop_at = want.index(eos) + 1
    other = next((i for i in range(1, len(prompts)) if eos not in refs[i][0]), None)
    extra = next(t for t in range(lp.VOCAB) if t not in want and
                 (other is None or t not in refs[other][0]))
    if not R.check("eos: torch continuations fit the check", other is not None,
                   f"{[r[0] for r in refs]}"):
        return
    path = os.path.join(work, "eos.jsonl")
    with open(path, "w") as f:
        for i in (0, other):
            f.write(json.dumps({"tokens": prompts[i]}) + "\n")
    for ids in (f"{eos}", f"{extra},{eos}"):
        p = fw("generate", plugins, f"--load={ck}", f"--prompts={path}", "--batch-size=2",
               f"--max-new-tokens={N_NEW}", "--temperature=0", "--threads=2",
               f"--eos-token-id={ids}")
        if not R.check(f"eos {ids}: --prompts runs", p.returncode == 0, gp.describe(p)):
            continue
        rows = gb.rows_of(p)
        R.check(f"eos {ids}: prompt 0 stops at id {eos} (kept), finish eos",
                rows[0]["tokens"] == want[:stop_at] and rows[0]["finish"] == "eos",
                f"{rows[0]['tokens']} {rows[0]['finish']}; torch {want}")
        R.check(f"eos {ids}: the other prompt runs to its length",
                rows[1]["tokens"] == refs[other][0] and rows[1]["finish"] == "length",
                f"{rows[1]['tokens']} {rows[1]['finish']}; torch {refs[other][0]}")
        one = gb.ids_of(fw("generate", plugins, f"--load={ck}",
                        "--prompt-tokens=" + ",".join(map(str, prompts[0])),
                        f"--max-new-tokens={N_NEW}", "--temperature=0", "--threads=2",
                        f"--eos-token-id={ids}"))
        R.check(f"eos {ids}: the --prompt-tokens run stops there too", one == want[:stop_at],
                f"{one}; torch {want}")
    for bad, expect in (("x,2", "--eos-token-id: 'x,2' is not"),
                        (str(lp.VOCAB), f"--eos-token-id: id {lp.VOCAB} is outside")):
        p = fw("generate", plugins, f"--load={ck}", "--prompt-tokens=1,2",
               "--max-new-tokens=2", f"--eos-token-id={bad}")
        lines = p.stderr.strip().splitlines()
        R.check(f"eos bad {bad!r}: one fwrun line, exit 2", p.returncode == 2 and
                len(lines) == 1 and expect in lines[0] and not p.stdout, gp.describe(p))


def main():
    a, fw = gp.cli(__doc__)

    def body(work):
        g = np.random.RandomState(5)
        prompts = [[int(x) for x in g.randint(0, lp.VOCAB, n)] for n in LENGTHS]
        for name in ("llama", "alibi"):
            m = lp.MODELS[name]
            W = lp.random_weights(m, 99, std=0.25)
            ck = os.path.join(work, name + ".h5")
            lp.write_ckpt(ck, m, W, ini(m))
            refs = [greedy_ref(m, W, t, N_NEW) for t in prompts]
            for att in ("mha", "flash"):
                check(fw, work, name, m, W, ck, prompts, refs, att, name == "llama")
            if name == "llama":
                check_eos(fw, work, ck, prompts, refs)

    return R.run("generate_prefill", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
