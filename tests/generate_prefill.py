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
  3. sampling (temperature, top-k, top-p, repetition penalty) in 2 rows equals
     the batch-1 runs with the same seed.
Ends with "generate_prefill: N passed, M failed"; exit 0 only when none failed.
"""
import json
import os
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
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


def write_ckpt(path, m, W):
    with h5py.File(path, "w") as f:
        f.attrs["fw_format"] = "fw-tensors"
        f.attrs["fw_format_version"] = np.int32(1)
        f.attrs["fw_arch"] = "arch/decoder"
        f.attrs["config"] = ini(m)
        t = f.create_group("tensors", track_order=True)
        for n, _ in lp.names(m):
            t[n] = W[n].numpy()


def greedy_ref(m, W, prompt, n):
    """torch greedy ids, log-probabilities, smallest top-2 margin."""
    ids, lps, margin = list(prompt), [], 1e9
    with torch.no_grad():
        for _ in range(n):
            lg = lp.forward(m, W, torch.tensor([ids]))[0, -1].double()
            top = torch.topk(lg, 2)
            margin = min(margin, float(top.values[0] - top.values[1]))
            t = int(top.indices[0])
            lps.append(float(F.log_softmax(lg, -1)[t]))
            ids.append(t)
    return ids[len(prompt):], lps, margin


def rows_of(p):
    out = [json.loads(line) for line in p.stdout.strip().splitlines()]
    return sorted(out, key=lambda r: r["index"])


def ids_of(p):
    return [int(t) for t in p.stdout.strip().split(",")] if p.returncode == 0 else None


def check(fw, work, name, m, W, ck, prompts, refs, att):
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
    rows = rows_of(p)
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
        one = ids_of(fw("generate", plugins, f"--load={ck}",
                        "--prompt-tokens=" + ",".join(map(str, prompt)),
                        f"--max-new-tokens={N_NEW}", "--temperature=0", "--threads=2"))
        R.check(f"{tag}: prompt {i} = its batch-1 run", row["tokens"] == one,
                f"batch {row['tokens']} alone {one}")
    sample = ["--temperature=0.9", "--top-k=40", "--top-p=0.9", "--repetition-penalty=1.3",
              "--seed=11"]
    p = fw("generate", plugins, f"--load={ck}", f"--prompts={path}", "--batch-size=2",
           f"--max-new-tokens={N_NEW}", "--threads=2", *sample)
    if not R.check(f"{tag}: --prompts sampling runs", p.returncode == 0, gp.describe(p)):
        return
    got = [r["tokens"] for r in rows_of(p)]
    alone = [ids_of(fw("generate", plugins, f"--load={ck}",
                       "--prompt-tokens=" + ",".join(map(str, t)), f"--max-new-tokens={N_NEW}",
                       "--threads=2", *sample)) for t in prompts]
    R.check(f"{tag}: sampled rows = their batch-1 runs (same seed)", got == alone,
            f"batch {got} alone {alone}")


def main():
    a, fw = gp.cli(__doc__)

    def body(work):
        g = np.random.RandomState(5)
        prompts = [[int(x) for x in g.randint(0, lp.VOCAB, n)] for n in LENGTHS]
        for name in ("llama", "alibi"):
            m = lp.MODELS[name]
            W = lp.random_weights(m, 99, std=0.25)
            ck = os.path.join(work, name + ".h5")
            write_ckpt(ck, m, W)
            refs = [greedy_ref(m, W, t, N_NEW) for t in prompts]
            for att in ("mha", "flash"):
                check(fw, work, name, m, W, ck, prompts, refs, att)

    return R.run("generate_prefill", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
