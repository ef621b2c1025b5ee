#!/usr/bin/python3
"""PEFT methods against full fine-tuning, in one table.

The task of lora_vs_full.py (pretrain a small GPT on Debian's licence texts,
task A; fine-tune on Vim's help files, task B) with one row per method:
full fine-tuning, LoRA, AdaLoRA, QLoRA, IA3, prefix tuning, prompt tuning,
P-tuning with an MLP and with an LSTM encoder (a method is a row of
methods(); a plugin that is not built is skipped with a note; --only picks
rows by a part of their names, --base skips pretraining). Columns:
trainable parameters, peak RSS measured and planned, median ms/step, the
held-out loss on B (new task) and on A (forgetting). Then GPT-2 124M:
fwrun plan of full fine-tuning, LoRA, QLoRA and AdaLoRA, and peak RSS and
ms/step of a few measured steps of full fine-tuning and QLoRA.

    FW_PLUGIN_PATH=build/plugins /usr/bin/python3 bench/peft_compare.py [--fwrun build/tools/fwrun]
        [--pretrain-steps 600] [--finetune-steps 300] [--gpt2-steps 3] [--keep DIR]
        [--only NAME,...] [--base PRETRAINED.h5]

Uses only the fwrun binary and the standard library.
"""
import argparse
import glob
import os
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lora_vs_full as lvf  # noqa: E402
from machine import machine_line  # noqa: E402

BASE = lvf.BASE_PLUGINS
ALL_LINEAR_LORA = ["--lora-target-modules=all-linear", "--lora-r=8", "--lora-alpha=16"]


def adalora_opts(steps):
    return ["--adalora-target-modules=c_attn,c_proj,c_fc", "--adalora-init-r=12",
            "--adalora-target-r=8", f"--adalora-tinit={steps // 10}",
            f"--adalora-tfinal={steps // 5}", f"--adalora-delta-t={max(1, steps // 30)}"]


# name, peft plugin (None: full fine-tuning), options, lr, eval-only options
def methods(steps):
    return [
        ("full fine-tuning", None, [], 3e-4, []),
        ("LoRA (all-linear, r 8)", "peft/lora", ALL_LINEAR_LORA, 2e-3, []),
        ("AdaLoRA (init_r 12 -> target_r 8)", "peft/adalora", adalora_opts(steps), 2e-3,
         ["--adalora-orth-reg-weight=0"]),      # the plain loss, without the regulariser
        ("QLoRA (NF4 base, LoRA all-linear r 8)", "peft/lora",
         ALL_LINEAR_LORA + ["--lora-quantize-base=nf4"], 2e-3, []),
        ("IA3 (PEFT's GPT-2 targets)", "peft/ia3", [], 5e-3, []),
        ("prefix tuning (16 virtual tokens)", "peft/prefix",
         ["--prefix-num-virtual-tokens=16"], 5e-3, []),
        # the virtual tokens take positions: 112 tokens + 16 = n-positions
        ("prompt tuning (16 virtual tokens, T 112)", "peft/prompt",
         ["--prompt-num-virtual-tokens=16", "--seq-length=112"], 5e-3, ["--seq-length=112"]),
        ("P-tuning MLP (16 virtual tokens, h 128, T 112)", "peft/ptuning",
         ["--ptuning-num-virtual-tokens=16", "--ptuning-encoder-hidden-size=128",
          "--seq-length=112"], 5e-3, ["--seq-length=112"]),
        ("P-tuning LSTM (16 virtual tokens, h 128, T 112)", "peft/ptuning",
         ["--ptuning-num-virtual-tokens=16", "--ptuning-encoder-hidden-size=128",
          "--ptuning-encoder-reparameterization-type=LSTM", "--seq-length=112"], 5e-3,
         ["--seq-length=112"]),
    ]


def have_plugin(fw, name):
    root = os.environ.get("FW_PLUGIN_PATH", "")
    return any(os.path.exists(os.path.join(d, name + ".so")) for d in root.split(":") if d)


def measure_124m(fw, plugins, extra, steps, work, tag):
    """Peak RSS and ms/step of a few GPT-2 124M steps (B=4, T=256, random weights)."""
    run_dir = os.path.join(work, "gpt2_" + tag)
    cmd = [fw, "train", f"--plugins={plugins}", "--n-layer=12", "--n-head=12", "--n-embd=768",
           "--vocab-size=50257", "--n-positions=1024", "--micro-batch-size=4",
           "--seq-length=256", f"--train-iters={steps}", "--lr=1e-4", "--log-interval=1",
           f"--data={work}/gpt2_data.bin", f"--run-dir={run_dir}",
           f"--save-interval={steps + 1}"] + list(extra)
    t0 = time.time()
    _, err, _ = lvf.run(cmd, os.path.join(work, "gpt2_" + tag + ".log"))
    rss = re.search(r"peak memory \(RSS\) ([\d.]+) MiB; planned ([\d.]+) MiB", err)
    el = []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            r = lvf.json.loads(line)
            if "elapsed_s" in r:
                el.append(r["elapsed_s"])
    d = [b - a for a, b in zip(el, el[1:])]
    return {"rss": float(rss.group(1)) if rss else None,
            "planned": float(rss.group(2)) if rss else None,
            "step_ms": 1000 * min(d) if d else 1000 * (time.time() - t0) / steps}


def write_gpt2_data(path, n_tok):
    """An llm.c shard of n_tok token ids (uint16) below 50257."""
    import random
    rng = random.Random(0)
    hdr = [20240520, 1, n_tok] + [0] * 253
    with open(path, "wb") as f:
        f.write(b"".join(v.to_bytes(4, "little") for v in hdr))
        f.write(b"".join(rng.randrange(50257).to_bytes(2, "little") for _ in range(n_tok)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fwrun", default=os.path.join(lvf.ROOT, "build", "tools", "fwrun"))
    ap.add_argument("--pretrain-steps", type=int, default=600)
    ap.add_argument("--finetune-steps", type=int, default=300)
    ap.add_argument("--pretrain-lr", type=float, default=1e-3)
    ap.add_argument("--gpt2-steps", type=int, default=3,
                    help="measured GPT-2 124M steps per configuration (0: plan only)")
    ap.add_argument("--max-eval-batches", type=int, default=60)
    ap.add_argument("--keep", default=None, help="work in DIR and keep it")
    ap.add_argument("--only", default="", help="rows whose name contains one of these")
    ap.add_argument("--base", default=None, help="pretrained weights (skips pretraining)")
    a = ap.parse_args()
    fw = a.fwrun
    if "FW_PLUGIN_PATH" not in os.environ:
        os.environ["FW_PLUGIN_PATH"] = os.path.join(os.path.dirname(os.path.dirname(fw)),
                                                    "plugins")
    work = a.keep or tempfile.mkdtemp(prefix="peft_compare.")
    os.makedirs(work, exist_ok=True)
    t_start = time.time()
    rows, skipped, plans, measured = [], [], [], []
    B, T = lvf.B, lvf.T
    try:
        files_a = sorted(p for p in glob.glob("/usr/share/common-licenses/*")
                         if os.path.isfile(p) and not os.path.islink(p))
        files_b = sorted(glob.glob("/usr/share/vim/vim*/doc/*.txt"))
        if not files_a or not files_b:
            sys.exit("peft_compare: needs /usr/share/common-licenses and Vim's help files")
        tr_a, va_a, nva_a, _ = lvf.tokenize(fw, "a", files_a, "paragraph", work)
        tr_b, va_b, nva_b, _ = lvf.tokenize(fw, "b", files_b, "paragraph", work)
        it_a = max(1, min(a.max_eval_batches, (nva_a - 1) // (B * T)))
        it_b = max(1, min(a.max_eval_batches, (nva_b - 1) // (B * T)))
        weights = a.base or os.path.join(work, "pretrained.h5")
        if not a.base:
            pre_dir = os.path.join(work, "pretrain")
            lvf.train(fw, BASE + ",optim/adamw", tr_a, pre_dir, a.pretrain_steps,
                      a.pretrain_lr, [], work)
            ckpt = sorted(glob.glob(os.path.join(pre_dir, "ckpt-*.h5")))[-1]
            hf = os.path.join(work, "pretrain_hf")
            lvf.run([fw, "export", ckpt, hf])
            lvf.run([fw, "import", hf, weights])
        base_a = lvf.evaluate(fw, weights, va_a, it_a, work)
        base_b = lvf.evaluate(fw, weights, va_b, it_b, work)

        only = [w for w in a.only.split(",") if w]
        for i, (name, peft, opts, lr, eval_opts) in enumerate(methods(a.finetune_steps)):
            if only and not any(w in name for w in only):
                continue
            if peft and not have_plugin(fw, peft):
                skipped.append(f"{name}: {peft} is not built")
                continue
            plugins = BASE + ",optim/adamw" + (f",{peft}" if peft else "")
            d = os.path.join(work, f"ft{i}")
            r = lvf.train(fw, plugins, tr_b, d, a.finetune_steps, lr,
                          [f"--load={weights}"] + opts, work)
            if peft:
                adapter = sorted(glob.glob(os.path.join(d, "adapter-*.h5")))[-1]
                ev = lambda va, it: lvf.evaluate(fw, weights, va, it, work, adapter,
                                                 BASE + "," + peft) if not eval_opts else \
                    float(lvf.json.loads(lvf.run(
                        [fw, "eval", f"--plugins={BASE},{peft}", f"--load={weights}",
                         f"--valid-data={va}", f"--eval-iters={it}", f"--adapter={adapter}"]
                        + lvf.MODEL + eval_opts)[0].strip().splitlines()[-1])["eval_loss"])
            else:
                last = sorted(glob.glob(os.path.join(d, "ckpt-*.h5")))[-1]
                ev = lambda va, it: lvf.evaluate(fw, last, va, it, work)
            r["loss_b"], r["loss_a"] = ev(va_b, it_b), ev(va_a, it_a)
            r["name"], r["lr"] = name, lr
            rows.append(r)

        # GPT-2 124M: plans, then a few measured steps
        gpt2 = ["--n-layer=12", "--n-head=12", "--n-embd=768", "--vocab-size=50257",
                "--n-positions=1024"]
        cfgs = [("full fine-tuning", None, []),
                ("LoRA r 8, auto (c_attn)", "peft/lora", []),
                ("QLoRA: NF4 base, LoRA auto (c_attn)", "peft/lora",
                 ["--lora-quantize-base=nf4"]),
                ("QLoRA: NF4 base, LoRA all-linear", "peft/lora",
                 ["--lora-quantize-base=nf4", "--lora-target-modules=all-linear"]),
                ("AdaLoRA auto (c_attn), init_r 12", "peft/adalora",
                 ["--adalora-total-step=100"])]
        for name, peft, opts in cfgs if not only else []:     # --only: the rows alone
            if peft and not have_plugin(fw, peft):
                continue
            plugins = BASE + ",optim/adamw" + (f",{peft}" if peft else "")
            plans.append((name, lvf.plan(fw, plugins, gpt2 + opts)))
        if a.gpt2_steps > 0 and not only:
            write_gpt2_data(os.path.join(work, "gpt2_data.bin"),
                            (a.gpt2_steps + 1) * 4 * 256 + 1)
            measured.append(("full fine-tuning",
                             measure_124m(fw, BASE + ",optim/adamw", [], a.gpt2_steps, work,
                                          "full")))
            measured.append(("QLoRA: NF4 base, LoRA auto (c_attn)",
                             measure_124m(fw, BASE + ",optim/adamw,peft/lora",
                                          ["--lora-quantize-base=nf4"], a.gpt2_steps, work,
                                          "qlora")))
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"# PEFT methods vs full fine-tuning (fwrun, {os.cpu_count()} CPU cores)\n")
    print(machine_line() + "\n")
    print(f"Model: arch/decoder {' '.join(lvf.MODEL)} (byte tokenizer), f32; pretrained "
          f"{a.pretrain_steps} steps on A (Debian licences), fine-tuned {a.finetune_steps} "
          f"steps on B (Vim help). Held-out loss (nats/byte) over {it_b} batches of B, "
          f"{it_a} of A.\n")
    print("| method | lr | trainable params | peak RSS (MiB) | planned (MiB) | ms/step | "
          "loss B (new) | loss A (old) | A forgetting |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| pretrained on A | - | - | - | - | - | {base_b:.4f} | {base_a:.4f} | - |")
    for r in rows:
        print(f"| {r['name']} | {r['lr']:g} | {r['trainable']:,} ({r['pct']:.2f}%) | "
              f"{r['rss']:.1f} | {r['planned']:.1f} | {r['step_ms']:.1f} | {r['loss_b']:.4f} | "
              f"{r['loss_a']:.4f} | {r['loss_a'] - base_a:+.4f} |")
    for s in skipped:
        print(f"\nskipped: {s}")
    print("\n## GPT-2 124M (fwrun plan, f32, micro-batch 4 x 256 tokens)\n")
    print("| configuration | trainable params | weights | gradients | optimizer | activations "
          "| planned total (MiB) | this / full |")
    print("|---|---|---|---|---|---|---|---|")
    full_total = plans[0][1]["total"] if plans else None
    for name, p in plans:
        print(f"| {name} | {p['trainable']:,} ({p['pct']:.2f}%) | {p['weights']:.1f} | "
              f"{p['gradients']:.1f} | {p['optimizer']:.1f} | {p['activations']:.1f} | "
              f"{p['total']:.1f} | {p['total'] / full_total:.2f}x |")
    if measured:
        print(f"\nMeasured ({a.gpt2_steps} steps, random weights): ")
        print("| configuration | peak RSS (MiB) | planned (MiB) | best ms/step | RSS / full |")
        print("|---|---|---|---|---|")
        for name, m in measured:
            print(f"| {name} | {m['rss']:.1f} | {m['planned']:.1f} | {m['step_ms']:.0f} | "
                  f"{m['rss'] / measured[0][1]['rss']:.2f}x |")
    print(f"\n(total runtime {time.time() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
