#!/usr/bin/python3
"""grad_overwrite.py - gradients without zeroing = gradients with zeroing, bit for bit.

Usage: /usr/bin/python3 tests/grad_overwrite.py --fwrun PATH --plugin-path DIR [--keep]

The graph skips zeroing an activation's gradient buffer when the first
backward kernel that touches it writes it whole (FW_OPF_GRAD_OVERWRITE,
docs/architecture.md). The oracle is the zeroing path itself
(FW_GRAD_ZERO_ALL=1: every buffer zeroed, every kernel adds), which the
parity tests check against PyTorch. For small GPT-2 and Llama shaped models
(layernorm, GELU, softmax, permute/cont, add, matmul with bias; rmsnorm,
SiLU, mul, RoPE, GQA), f32 and --bf16, with and without FW_REMAT=0 and
with gradient accumulation (--global-batch-size = 2 micro-batches), fwrun
trains 3 steps three ways:

  1. FW_GRAD_ZERO_ALL=1, the reference;
  2. the default: every loss and grad_norm in metrics.jsonl and every
     tensor of the final checkpoint (weights and Adam state) equal to 1's;
  3. FW_GRAD_POISON=1: the unzeroed buffers start as NaN, so a kernel that
     leaves one element unwritten makes the loss or the weights NaN; all
     equal to 1's again.

FW_OP_PROFILE's summary shows that run 2 overwrote gradient bytes and run 1
none (so the check is not vacuous).

Parameter gradients too: fw_graph_zero_grad only marks them cleared and
their first writer in the next step overwrites them (fw/graph.h). The cases
cover tied embeddings (the fused head's forward writes wte's gradient first,
the embedding adds), the untied Llama (the embedding cannot overwrite: its
gradient is zeroed just before), LoRA, SGD, --fp16 (the head's gradient
from its backward; skipped steps), several micro-batches; the profile's
"cleared parameter gradients" line shows run 2 overwrote parameter
gradients and run 1 none; under FW_GRAD_POISON=1 cleared parameter
gradients start as NaN.
"""
import json
import os
import re
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as gp  # noqa: E402  (Results, the fwrun driver, cli)

R = gp.Results()
PLUGINS = "arch/decoder,attention/mha,optim/adamw"
COMMON = ["--tokenizer=byte",
          "--vocab-size=257", "--n-positions=32", "--micro-batch-size=2", "--seq-length=32",
          "--threads=2", "--weight-decay=0.1", "--lr=3e-3", "--clip-grad=1.0",
          "--train-iters=3", "--save-interval=3"]
GPT2 = ["--n-layer=2", "--n-head=2", "--n-embd=32"]
LLAMA = ["--n-layer=2", "--n-head=4", "--n-embd=32", "--ffn-hidden-size=48",
         "--group-query-attention", "--num-query-groups=2", "--normalization=RMSNorm",
         "--swiglu", "--disable-bias-linear", "--untie-embeddings-and-output-weights",
         "--position-embedding-type=rope"]
CASES = [
    ("gpt2 f32", GPT2, [], {}),
    ("gpt2 f32 FW_REMAT=0", GPT2, [], {"FW_REMAT": "0"}),
    ("gpt2 f32 accumulation", GPT2, ["--global-batch-size=4"], {}),
    ("gpt2 bf16", GPT2, ["--bf16"], {}),
    ("gpt2 bf16 FW_REMAT=0", GPT2, ["--bf16"], {"FW_REMAT": "0"}),
    ("gpt2 bf16 accumulation", GPT2, ["--bf16", "--global-batch-size=4"], {}),
    ("llama f32", LLAMA, [], {}),
    ("llama bf16 accumulation", LLAMA, ["--bf16", "--global-batch-size=4"], {}),
    ("gpt2 sgd 3 micro-batches", GPT2, ["--global-batch-size=6", "--sgd-momentum=0.9"], {},
     "arch/decoder,attention/mha,optim/sgd"),
    ("gpt2 lora bf16", GPT2, ["--bf16", "--lora-r=4"], {},
     "arch/decoder,attention/mha,optim/adamw,peft/lora"),
    ("gpt2 fp16 dynamic scale", GPT2, ["--fp16", "--initial-loss-scale=65536"], {}),
]
PROFILE = re.compile(r"a backward zeroes ([0-9.]+) MiB of gradients and overwrites "
                     r"([0-9.]+) MiB unzeroed")
PARAMS = re.compile(r"cleared parameter gradients, all runs: ([0-9.]+) MiB zeroed, "
                    r"([0-9.]+) MiB overwritten")


def write_text(path):
    words = "the cat dog sat on a mat log and ran far away to see sun moon".split()
    rng = np.random.default_rng(7)
    with open(path, "w") as f:
        f.write(" ".join(words[i] for i in rng.integers(0, len(words), 3000)) + ".\n")


def all_datasets(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda k, v: out.__setitem__(k, np.array(v))
                     if isinstance(v, h5py.Dataset) else None)
    return out


def train_records(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    return [(r["loss"], r["grad_norm"]) for r in recs if r.get("type") == "train"]


def run_case(fw, work, data, name, model, extra, env, plugins=PLUGINS):
    results = {}
    for mode, menv in (("zero-all", {"FW_GRAD_ZERO_ALL": "1"}), ("default", {}),
                       ("poison", {"FW_GRAD_POISON": "1"})):
        run = os.path.join(work, re.sub(r"\W+", "_", name) + "_" + mode)
        saved = dict(fw.env)
        fw.env.update(env, FW_OP_PROFILE="1", **menv)
        p = fw("train", f"--plugins={plugins}", *COMMON, *model, *extra, f"--data={data}",
               f"--run-dir={run}")
        fw.env = saved
        if not R.check(f"{name} [{mode}]: fwrun train exits 0", p.returncode == 0,
                       gp.describe(p) if p.returncode else ""):
            return
        m, mp = PROFILE.search(p.stderr), PARAMS.search(p.stderr)
        if not R.check(f"{name} [{mode}]: the profile reports the gradient bytes",
                       m is not None and mp is not None,
                       p.stderr[-300:] if m is None or mp is None else ""):
            return
        results[mode] = (train_records(run), all_datasets(os.path.join(run, "ckpt-00000003.h5")),
                         float(m.group(1)), float(m.group(2)), float(mp.group(2)))
    ref_recs, ref_t, _, ref_ow, ref_pw = results["zero-all"]
    R.check(f"{name}: FW_GRAD_ZERO_ALL=1 overwrites nothing", ref_ow == 0.0 and ref_pw == 0.0,
            f"{ref_ow} MiB, parameters {ref_pw} MiB")
    R.check(f"{name}: the default overwrites instead of zeroing", results["default"][3] > 0.0,
            f"{results['default'][2]} MiB zeroed, {results['default'][3]} MiB overwritten")
    R.check(f"{name}: the default overwrites cleared parameter gradients",
            results["default"][4] > 0.0, f"{results['default'][4]} MiB")
    for mode in ("default", "poison"):
        recs, t, _, _, _ = results[mode]
        R.check(f"{name} [{mode}]: losses and grad norms equal the zeroing run's",
                len(recs) == 3 and recs == ref_recs, f"{recs} vs {ref_recs}")
        bad = [k for k in ref_t if k not in t or t[k].dtype != ref_t[k].dtype or
               not np.array_equal(t[k], ref_t[k])]
        R.check(f"{name} [{mode}]: the {len(ref_t)} checkpoint tensors equal the zeroing run's",
                not bad and len(t) == len(ref_t), f"differ: {bad[:5]}")


def main():
    a, fw = gp.cli(__doc__)

    def body(work):
        data = os.path.join(work, "train.txt")
        write_text(data)
        for case in CASES:
            run_case(fw, work, data, *case)

    return R.run("grad_overwrite", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
