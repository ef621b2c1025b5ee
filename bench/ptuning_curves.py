#!/usr/bin/python3
"""P-tuning against prompt tuning: do the encoded virtual tokens converge faster?

The project's notes say that P-tuning's prompt encoder (an MLP or an LSTM over
the virtual-token table) converges faster than training free virtual-token
embeddings (prompt tuning). This measures it: a small byte-level GPT (the
model of lora_vs_full.py) pretrained on Debian's licence texts, then each
method trains 16 virtual tokens on the fortunes quotations (scripts/
demo-corpus.sh) with the same schedule and lr, the base frozen. Printed: the
training loss averaged over windows of steps, and the held-out loss of the
quotations at every --eval-interval, per method.

    FW_PLUGIN_PATH=build/plugins /usr/bin/python3 bench/ptuning_curves.py
        [--fwrun build/tools/fwrun] [--base PRETRAINED.h5] [--pretrain-steps 200]
        [--steps 150] [--lr 5e-3] [--eval-interval 25] [--keep DIR]

--base takes a pretrained weights file (peft_compare.py --keep DIR leaves
DIR/pretrained.h5) instead of pretraining. Uses only fwrun and the standard
library.
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lora_vs_full as lvf  # noqa: E402
from machine import machine_line  # noqa: E402

NVT = 16
SEQ = lvf.T - NVT            # the virtual tokens take positions: 112 + 16 = n-positions
METHODS = [
    ("prompt tuning (random init)", "peft/prompt", [f"--prompt-num-virtual-tokens={NVT}"]),
    ("P-tuning, MLP encoder (h 128)", "peft/ptuning",
     [f"--ptuning-num-virtual-tokens={NVT}", "--ptuning-encoder-hidden-size=128"]),
    ("P-tuning, LSTM encoder (h 128)", "peft/ptuning",
     [f"--ptuning-num-virtual-tokens={NVT}", "--ptuning-encoder-hidden-size=128",
      "--ptuning-encoder-reparameterization-type=LSTM"]),
]


def pretrained(fw, a, work):
    if a.base:
        return a.base
    files_a = sorted(p for p in glob.glob("/usr/share/common-licenses/*")
                     if os.path.isfile(p) and not os.path.islink(p))
    tr_a, _, _, _ = lvf.tokenize(fw, "a", files_a, "paragraph", work)
    pre = os.path.join(work, "pretrain")
    lvf.train(fw, lvf.BASE_PLUGINS + ",optim/adamw", tr_a, pre, a.pretrain_steps, 1e-3, [], work)
    ckpt = sorted(glob.glob(os.path.join(pre, "ckpt-*.h5")))[-1]
    hf, weights = os.path.join(work, "pretrain_hf"), os.path.join(work, "pretrained.h5")
    lvf.run([fw, "export", ckpt, hf])
    lvf.run([fw, "import", hf, weights])
    return weights


def curves(run_dir):
    train, evals = {}, {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r.get("type") == "eval":
                evals[r["step"]] = r["eval_loss"]
            elif "loss" in r and "step" in r:
                train[r["step"]] = r["loss"]
    return train, evals


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fwrun", default=os.path.join(lvf.ROOT, "build", "tools", "fwrun"))
    ap.add_argument("--base", default=None)
    ap.add_argument("--pretrain-steps", type=int, default=200)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--eval-interval", type=int, default=25)
    ap.add_argument("--eval-iters", type=int, default=20)
    ap.add_argument("--window", type=int, default=25)
    ap.add_argument("--keep", default=None, help="work in DIR and keep it")
    a = ap.parse_args()
    fw = a.fwrun
    if "FW_PLUGIN_PATH" not in os.environ:
        os.environ["FW_PLUGIN_PATH"] = os.path.join(os.path.dirname(os.path.dirname(fw)),
                                                    "plugins")
    work = a.keep or tempfile.mkdtemp(prefix="ptuning_curves.")
    os.makedirs(work, exist_ok=True)
    t0 = time.time()
    results = []
    try:
        corpus = os.path.join(work, "fortunes")
        subprocess.run(["bash", os.path.join(lvf.ROOT, "scripts", "demo-corpus.sh"), corpus],
                       check=True, capture_output=True)
        weights = pretrained(fw, a, work)
        data = ["--tokenizer=byte", f"--data={corpus}/train.jsonl",
                f"--valid-data={corpus}/valid.jsonl", f"--eval-interval={a.eval_interval}",
                f"--eval-iters={a.eval_iters}", f"--seq-length={SEQ}", f"--load={weights}"]
        for i, (name, peft, opts) in enumerate(METHODS):
            d = os.path.join(work, f"m{i}")
            r = lvf.train(fw, f"{lvf.BASE_PLUGINS},optim/adamw,{peft}", "", d, a.steps, a.lr,
                          data + opts, work)
            results.append((name, r, *curves(d)))
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)

    print("# P-tuning vs prompt tuning: convergence on the fortunes quotations\n")
    print(machine_line() + "\n")
    model = " ".join(o for o in lvf.MODEL if not o.startswith("--seq-length"))
    print(f"Model: arch/decoder {model} --seq-length={SEQ} (byte tokenizer), "
          f"base pretrained on Debian's licences and frozen; {NVT} virtual tokens, "
          f"{a.steps} steps, lr {a.lr:g} (cosine to lr/10, warm-up {max(1, a.steps // 20)}), "
          f"micro-batch {lvf.B}. Loss in nats/byte.\n")
    print("| method | trainable params | ms/step |")
    print("|---|---|---|")
    for name, r, _, _ in results:
        ms = f"{r['step_ms']:.0f}" if r["step_ms"] else "-"
        print(f"| {name} | {r['trainable']:,} | {ms} |")
    w = a.window
    print(f"\nTraining loss, mean over steps (k-{w}, k]:\n")
    print("| step k | " + " | ".join(n for n, _, _, _ in results) + " |")
    print("|---|" + "---|" * len(results))
    for k in range(w, a.steps + 1, w):
        cells = []
        for _, _, tr, _ in results:
            v = [tr[s] for s in range(k - w + 1, k + 1) if s in tr]
            cells.append(f"{sum(v) / len(v):.4f}" if v else "-")
        print(f"| {k} | " + " | ".join(cells) + " |")
    print("\nHeld-out loss (the quotations' validation file):\n")
    print("| step | " + " | ".join(n for n, _, _, _ in results) + " |")
    print("|---|" + "---|" * len(results))
    steps = sorted(set().union(*(ev.keys() for _, _, _, ev in results)))
    for s in steps:
        print(f"| {s} | " + " | ".join(f"{ev[s]:.4f}" if s in ev else "-"
                                       for _, _, _, ev in results) + " |")
    print(f"\n(total runtime {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
