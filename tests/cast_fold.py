#!/usr/bin/python3
"""cast_fold.py - a norm that writes autocast's half copy itself = norm then cast, bit for bit.

Usage: /usr/bin/python3 tests/cast_fold.py --fwrun PATH --plugin-path DIR [--keep]

Under --bf16/--fp16 a pre-LN block reads its LayerNorm/RMSNorm output
through autocast's cast to half before a matmul. The graph folds that cast
into the norm (core/engine/src/graph.c, fold_casts): the norm rounds its
f32 result to the half dtype as it stores it, and the cast becomes a view.
That changes no arithmetic, so the oracle is the unfolded graph itself
(FW_CAST_FOLD=0: a separate f32 norm output and a cast pass), which the
parity tests check against PyTorch. For a tiny GPT-2 (LayerNorm) and a
tiny Llama (RMSNorm, SwiGLU, RoPE, GQA), --bf16 and --fp16 (dynamic loss
scale, its skipped steps included), with FW_REMAT=0, with checkpointed
blocks (--recompute-activations) and with LoRA on the bf16 base, fwrun
trains 8 AdamW steps both ways: every loss, grad norm and loss scale in
metrics.jsonl and every tensor of the final checkpoint (weights and Adam
state) must be equal. `fwrun plan` shows the fold happened (fewer
activation bytes) and that f32 training, which has no cast, is unchanged.
"""
import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as gp  # noqa: E402  (Results, the fwrun driver, cli)
import grad_overwrite as go  # noqa: E402  (the text, the checkpoint reader)

R = gp.Results()
PLUGINS = go.PLUGINS
COMMON = [a for a in go.COMMON if not a.startswith(("--train-iters=", "--save-interval="))] + [
    "--train-iters=8", "--save-interval=8"]
CASES = [
    ("gpt2 bf16", go.GPT2, ["--bf16"], {}),
    ("gpt2 bf16 FW_REMAT=0", go.GPT2, ["--bf16"], {"FW_REMAT": "0"}),
    ("gpt2 bf16 recomputed blocks", go.GPT2, ["--bf16", "--recompute-activations"], {}),
    ("gpt2 lora bf16", go.GPT2, ["--bf16", "--lora-r=4"], {}, PLUGINS + ",peft/lora"),
    ("gpt2 fp16 dynamic scale", go.GPT2, ["--fp16", "--initial-loss-scale=1048576"], {}),
    ("llama bf16", go.LLAMA, ["--bf16"], {}),
    ("llama fp16 dynamic scale", go.LLAMA, ["--fp16", "--initial-loss-scale=1048576"], {}),
]
ACTIVATIONS = re.compile(r"^\s*activations\s+([0-9.]+) MiB", re.M)
UNPLANNED = re.compile(r"activations without reuse would take ([0-9.]+) MiB")


def train_records(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    return [(r["loss"], r["grad_norm"], r.get("loss_scale"), r.get("skipped"))
            for r in recs if r.get("type") == "train"]


def plan_activations(fw, model, extra, env, plugins=PLUGINS):
    """The plan's activation MiB and their sum without reuse (a batch of 32 rows, so
    that the printed digits resolve them), or None."""
    saved = dict(fw.env)
    fw.env.update(env)
    p = fw("plan", f"--plugins={plugins}", "--vocab-size=257", "--n-positions=32",
           "--micro-batch-size=32", "--seq-length=32", *model, *extra)
    fw.env = saved
    m, u = ACTIVATIONS.search(p.stdout + p.stderr), UNPLANNED.search(p.stdout + p.stderr)
    return (float(m.group(1)), float(u.group(1))) if p.returncode == 0 and m and u else None


def run_case(fw, work, data, name, model, extra, env, plugins=PLUGINS):
    results = {}
    for mode, fold in (("FW_CAST_FOLD=0", "0"), ("default", None)):
        run = os.path.join(work, re.sub(r"\W+", "_", f"{name}_{mode}"))
        saved = dict(fw.env)
        fw.env.update(env)
        fw.env.pop("FW_CAST_FOLD", None)
        if fold:
            fw.env["FW_CAST_FOLD"] = fold
        p = fw("train", f"--plugins={plugins}", *COMMON, *model, *extra, f"--data={data}",
               f"--run-dir={run}")
        fw.env = saved
        if not R.check(f"{name} [{mode}]: fwrun train exits 0", p.returncode == 0,
                       gp.describe(p) if p.returncode else ""):
            return
        results[mode] = (train_records(run),
                         go.all_datasets(os.path.join(run, "ckpt-00000008.h5")))
    ref_recs, ref_t = results["FW_CAST_FOLD=0"]
    recs, t = results["default"]
    same = len(recs) == 8 and recs == ref_recs
    R.check(f"{name}: 8 losses, grad norms and loss scales equal the unfolded run's", same,
            f"last loss {recs[-1][0]}" if same else f"{recs} vs {ref_recs}")
    bad = [k for k in ref_t if k not in t or t[k].dtype != ref_t[k].dtype or
           not np.array_equal(t[k], ref_t[k], equal_nan=True)]
    R.check(f"{name}: the {len(ref_t)} checkpoint tensors equal the unfolded run's",
            not bad and len(t) == len(ref_t), f"differ: {bad[:5]}")
    if "--fp16" in extra:
        R.check(f"{name}: the dynamic scale skipped steps (so both runs took that path)",
                any(r[3] for r in recs), f"{sum(bool(r[3]) for r in recs)} skipped")


def check_plans(fw):
    for name, model, plugins in (("gpt2", go.GPT2, PLUGINS), ("llama", go.LLAMA, PLUGINS),
                                 ("gpt2 recomputed blocks", go.GPT2 + ["--recompute-activations"],
                                  PLUGINS),
                                 ("gpt2 lora", go.GPT2 + ["--lora-r=4"], PLUGINS + ",peft/lora")):
        for extra in ([], ["--bf16"], ["--fp16"]):
            off = plan_activations(fw, model, extra, {"FW_CAST_FOLD": "0"}, plugins)
            on = plan_activations(fw, model, extra, {}, plugins)
            label = f"{name} {' '.join(extra) or 'f32'}"
            if not R.check(f"plan {label}: fwrun plan prints the activations", off and on,
                           f"{off}, {on}"):
                continue
            if not extra:
                R.check(f"plan {label}: f32 has no cast, the plan is unchanged", on == off,
                        f"{off} -> {on} MiB")
                continue
            R.check(f"plan {label}: folding the norms' casts lowers the activations "
                    "without reuse", on[1] < off[1], f"{off[1]} -> {on[1]} MiB")
            if "--recompute-activations" not in model:   # its peak is not at the blocks
                R.check(f"plan {label}: folding the norms' casts lowers the peak",
                        on[0] < off[0], f"{off[0]} -> {on[0]} MiB")


def main():
    a, fw = gp.cli(__doc__)

    def body(work):
        data = os.path.join(work, "train.txt")
        go.write_text(data)
        check_plans(fw)
        for case in CASES:
            run_case(fw, work, data, *case)

    return R.run("cast_fold", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
