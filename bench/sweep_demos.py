#!/usr/bin/python3
"""The sweep demonstrations of bench/README.md, each made by fwrun sweep + fwrun report.

  1. LoRA rank r in {1, 2, 4, 8, 16, 32, 64} x 2 seeds, fine-tuning a small GPT
     pretrained on Debian's licence texts to Vim's help files (lora_vs_full's
     tasks, smaller): final held-out loss per r, spread of the means against
     the seed-to-seed std.
  2. attention/mha vs attention/flash vs attention/sparse (window 16): curves.
  3. lr x warmup grid from scratch: the final loss against lr.
  4. the same 8-trial sweep with --jobs=2 --threads=1 and --jobs=1 --threads=2:
     total wall time of each.

    FW_PLUGIN_PATH=build/plugins /usr/bin/python3 bench/sweep_demos.py [--fwrun build/tools/fwrun]
        [--keep DIR]

Prints markdown: the tables fwrun report wrote (results.md), and the numbers
this script derives from sweep.jsonl. Standard library only.
"""
import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import machine_line  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = """[arch/decoder]
n-layer = 2
n-head = 2
n-embd = 64
n-positions = 64
vocab-size = 257
"""
TRAIN = """micro-batch-size = 8
seq-length = 64
tokenizer = byte
eval-iters = 8
log-interval = 50
"""


def run(cmd, ok=(0,)):
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode not in ok:
        sys.exit(f"sweep_demos: failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return p, time.time() - t0


def sweep(fw, work, name, text, *extra):
    path = os.path.join(work, name + ".ini")
    with open(path, "w") as f:
        f.write(text)
    d = os.path.join(work, name)
    # 10 + n: n trials failed; they are listed, the others reported
    _, wall = run([fw, "sweep", path, f"--dir={d}"] + list(extra), ok=range(0, 111))
    run([fw, "report", d])
    recs = [json.loads(line) for line in open(os.path.join(d, "sweep.jsonl"))]
    for r in recs:
        if r["status"] == "failed":
            print(f"failed trial {r['index'] + 1} {r['params']}: {r['error']}\n")
    return d, [r for r in recs if r["status"] != "failed"], wall


def results_md(d):
    text = open(os.path.join(d, "report", "results.md")).read()
    return text.split("\n", 2)[2].strip()      # without the "# fw report" title


def curve(d, rec, kind="train"):
    out = {}
    for line in open(os.path.join(d, rec["dir"], "metrics.jsonl")):
        r = json.loads(line)
        if r["type"] == kind:
            out[r["step"]] = r["loss" if kind == "train" else "eval_loss"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fwrun", default=os.path.join(ROOT, "build", "tools", "fwrun"))
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--finetune-steps", type=int, default=150)
    ap.add_argument("--keep", default=None)
    a = ap.parse_args()
    fw = os.path.abspath(a.fwrun)
    if "FW_PLUGIN_PATH" not in os.environ:
        os.environ["FW_PLUGIN_PATH"] = os.path.join(os.path.dirname(os.path.dirname(fw)), "plugins")
    work = a.keep or tempfile.mkdtemp(prefix="sweep_demos.")
    os.makedirs(work, exist_ok=True)
    print(machine_line())
    print(f"load average before: {os.getloadavg()[0]:.2f}\n")
    try:
        lic = sorted(p for p in glob.glob("/usr/share/common-licenses/*")
                     if os.path.isfile(p) and not os.path.islink(p))
        vim = sorted(glob.glob("/usr/share/vim/vim*/doc/*.txt"))[:40]
        if not lic or not vim:
            sys.exit("sweep_demos: needs /usr/share/common-licenses and Vim's help files")
        for name, files in (("a", lic), ("b", vim)):
            run([fw, "tokenize", "--tokenizer=byte", f"--out={work}/{name}", "--valid-fraction=0.1",
                 "--split=paragraph", "--progress=false"] + files)
        data = {n: (",".join(sorted(glob.glob(f"{work}/{n}_train_*.bin"))),
                    ",".join(sorted(glob.glob(f"{work}/{n}_val_*.bin")))) for n in "ab"}

        # --- 1. LoRA rank ---------------------------------------------------------
        pre = f"{work}/pretrain"
        run([fw, "train", "--plugins=arch/decoder,attention/mha,optim/adamw",
             "--tokenizer=byte",
             "--n-layer=2", "--n-head=2", "--n-embd=64", "--n-positions=64", "--vocab-size=257",
             "--micro-batch-size=8", "--seq-length=64", f"--data={data['a'][0]}",
             f"--train-iters={a.pretrain_steps}", "--lr=2e-3", "--lr-decay-style=cosine",
             "--lr-warmup-iters=20", f"--run-dir={pre}", "--log-interval=100"])
        ckpt = sorted(glob.glob(f"{pre}/ckpt-*.h5"))[-1]
        run([fw, "export", ckpt, f"{work}/pre_hf"])
        run([fw, "import", f"{work}/pre_hf", f"{work}/pretrained.h5"])
        rank_ini = f"""[sweep]
metric = eval_loss
repeats = 2
[run]
plugins = arch/decoder, attention/mha, optim/adamw, peft/lora
load = {work}/pretrained.h5
data = {data['b'][0]}
valid-data = {data['b'][1]}
train-iters = {a.finetune_steps}
eval-interval = {a.finetune_steps}
lr = 2e-3
lr-decay-style = cosine
lr-warmup-iters = 10
{TRAIN}[peft/lora]
lora-target-modules = all-linear
lora-alpha = 16
{MODEL}[grid]
lora-r = 1, 2, 4, 8, 16, 32, 64
"""
        d, recs, wall = sweep(fw, work, "lora_rank", rank_ini)
        by_r = {}
        for r in recs:
            by_r.setdefault(int(r["params"]["lora-r"]), []).append(r["final"])
        means = [statistics.mean(v) for v in by_r.values()]
        stds = [statistics.stdev(v) for v in by_r.values()]
        print(f"## 1. LoRA rank ({len(recs)} trials, {wall:.0f} s)\n")
        print(results_md(d) + "\n")
        print(f"Spread of the per-r means (max - min): {max(means) - min(means):.4f}; "
              f"mean seed-to-seed std: {statistics.mean(stds):.4f} "
              f"(ratio {(max(means) - min(means)) / statistics.mean(stds):.2f})\n")

        # --- 2. attention plugins -----------------------------------------------------
        attn_ini = f"""[sweep]
metric = eval_loss
[run]
plugins = arch/decoder, attention/mha, optim/adamw
data = {data['a'][0]}
valid-data = {data['a'][1]}
train-iters = 100
eval-interval = 50
lr = 2e-3
{TRAIN}{MODEL}[link attention]
plugins.attention = attention/mha, attention/flash, attention/sparse
sparse-window = -, -, 16
"""
        d, recs, wall = sweep(fw, work, "attention", attn_ini)
        c = {r["params"]["plugins.attention"]: curve(d, r) for r in recs}
        mha = c["attention/mha"]
        diff = lambda o: max(abs(o[s] - mha[s]) for s in mha)
        print(f"## 2. Attention plugins ({len(recs)} trials, {wall:.0f} s)\n")
        print(results_md(d) + "\n")
        print(f"Largest |train loss - mha's| over the 100 steps: flash {diff(c['attention/flash']):.3g}, "
              f"sparse (window 16) {diff(c['attention/sparse']):.3g}\n")

        # --- 3. lr x warmup ---------------------------------------------------------------
        lr_ini = f"""[sweep]
metric = eval_loss
[run]
plugins = arch/decoder, attention/mha, optim/adamw
data = {data['a'][0]}
valid-data = {data['a'][1]}
train-iters = 150
eval-interval = 150
lr-decay-style = cosine
{TRAIN}{MODEL}[grid]
lr = 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1
lr-warmup-iters = 0, 30
"""
        d, recs, wall = sweep(fw, work, "lr_warmup", lr_ini, "--jobs=2")
        print(f"## 3. Learning rate x warmup ({len(recs)} trials, --jobs=2, {wall:.0f} s)\n")
        print("| lr | warmup 0 | warmup 30 |\n|---|---|---|")
        for lr in ("1e-4", "3e-4", "1e-3", "3e-3", "1e-2", "3e-2", "1e-1"):
            v = {r["params"]["lr-warmup-iters"]: r["final"] for r in recs if r["params"]["lr"] == lr}
            print(f"| {lr} | {v.get('0', float('nan')):.4f} | {v.get('30', float('nan')):.4f} |")
        print(f"\n(fwrun report's full table and plots: {d}/report)\n")

        # --- 4. jobs x threads --------------------------------------------------------------
        jobs_ini = f"""[sweep]
metric = loss
[run]
plugins = arch/decoder, attention/mha, optim/adamw
data = {data['a'][0]}
train-iters = 100
{TRAIN}{MODEL}[grid]
lr = 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2
"""
        print("## 4. Parallel trials: the same 8-trial sweep\n")
        print("| jobs x threads | wall (s) | mean trial time (s) |\n|---|---|---|")
        for jobs, threads in ((2, 1), (1, 2)):
            name = f"jobs{jobs}x{threads}"
            d, recs, wall = sweep(fw, work, name, jobs_ini, f"--jobs={jobs}", f"--threads={threads}")
            print(f"| {jobs} x {threads} | {wall:.1f} | "
                  f"{statistics.mean(r['time_s'] for r in recs):.2f} |")
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
