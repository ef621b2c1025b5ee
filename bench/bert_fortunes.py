#!/usr/bin/python3
"""bert_fortunes.py - a BERT-style encoder from scratch on this machine's fortunes.

Usage: /usr/bin/python3 bench/bert_fortunes.py --fwrun build/tools/fwrun [--work DIR]
                                               [--mlm-iters N] [--cls-iters N]

1. Quotations of four Debian fortune files (/usr/share/games/fortunes:
   computers, politics, science, songs-poems), one a record, labelled by their
   file; shuffled (seed 1) into train 80% / dev 10% / test 10%.
2. Masked-LM pretraining (arch/encoder --head=mlm, byte tokenizer, BERT's
   15% / 80-10-10 masking) on the training quotations of those files and on
   every other fortune file (the test quotations are never seen).
3. Fine-tuning to classify the file (--head=seq-cls, --finetune from the MLM
   checkpoint: the pooler and classifier start fresh), and the same classifier
   trained from scratch for comparison.
4. Held-out test accuracy and macro-F1 against the majority-class baseline.
Prints one JSON line per result and a table at the end.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time

FORTUNES = "/usr/share/games/fortunes"
CLASSES = ["computers", "politics", "science", "songs-poems"]


def quotes(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    out = []
    for q in text.split("\n%\n"):
        q = q.strip()
        if 20 <= len(q) <= 1000:
            out.append(q)
    return out


def write_jsonl(path, recs):
    with open(path, "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fwrun", required=True)
    ap.add_argument("--work", default="runs/bert_fortunes")
    ap.add_argument("--mlm-iters", type=int, default=400)
    ap.add_argument("--cls-iters", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    rng = random.Random(1)
    recs = [{"text": q, "label": c} for c in CLASSES for q in quotes(os.path.join(FORTUNES, c))]
    rng.shuffle(recs)
    n = len(recs)
    train, dev, test = recs[:n * 8 // 10], recs[n * 8 // 10:n * 9 // 10], recs[n * 9 // 10:]
    p = {k: os.path.join(a.work, k + ".jsonl") for k in ("train", "dev", "test", "mlm")}
    write_jsonl(p["train"], train)
    write_jsonl(p["dev"], dev)
    write_jsonl(p["test"], test)
    others = [f for f in sorted(os.listdir(FORTUNES)) if "." not in f and f not in CLASSES]
    mlm = [{"text": r["text"]} for r in train]
    for f in others:
        mlm += [{"text": q} for q in quotes(os.path.join(FORTUNES, f))]
    write_jsonl(p["mlm"], mlm)
    print(json.dumps({"records": n, "train": len(train), "dev": len(dev), "test": len(test),
                      "mlm_documents": len(mlm), "other_files": len(others)}))
    model = ["--vocab-size=261", "--hidden-size=96", "--num-hidden-layers=3",
             "--num-attention-heads=4", "--intermediate-size=384",
             "--max-position-embeddings=96", "--seq-length=96", f"--threads={a.threads}"]
    plug = "--plugins=arch/encoder,attention/mha,optim/adamw"

    def run(*args):
        t0 = time.time()
        r = subprocess.run([a.fwrun] + list(args), capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"fwrun {args[0]} failed: {r.stderr[-2000:]}")
        return r, time.time() - t0

    mlm_dir = os.path.join(a.work, "mlm")
    _, s = run("train", plug, *model, "--tokenizer=byte", "--head=mlm", f"--data={p['mlm']}",
               "--micro-batch-size=16", f"--train-iters={a.mlm_iters}", "--lr=1e-3",
               "--lr-warmup-iters=50", "--lr-decay-style=cosine", "--weight-decay=0.01",
               "--eval-interval=100000", f"--run-dir={mlm_dir}", "--overwrite")
    print(json.dumps({"stage": "mlm pretraining", "iters": a.mlm_iters, "seconds": round(s, 1)}))
    results = {}
    for name, extra in (("pretrained", [f"--load={mlm_dir}", "--finetune", "--base-only"]),
                        ("from scratch", ["--tokenizer=byte"])):
        d = os.path.join(a.work, "cls_" + name.replace(" ", "_"))
        _, s = run("train", plug, *model, *extra, "--head=seq-cls",
                   f"--num-labels={len(CLASSES)}", f"--labels={','.join(CLASSES)}",
                   f"--data={p['train']}", f"--valid-data={p['dev']}", "--micro-batch-size=16",
                   f"--train-iters={a.cls_iters}", "--lr=5e-4", "--lr-warmup-iters=30",
                   "--lr-decay-style=linear", "--weight-decay=0.01", "--eval-interval=100000",
                   f"--run-dir={d}", "--overwrite")
        r, _ = run("eval", "--plugins=arch/encoder,attention/mha", f"--load={d}",
                   f"--valid-data={p['test']}", "--eval-iters=0", "--micro-batch-size=16",
                   "--seq-length=96",
                   f"--threads={a.threads}", f"--output={os.path.join(a.work, name[:4] + '.jsonl')}")
        m = json.loads(r.stdout.strip().splitlines()[-1])
        results[name] = m
        print(json.dumps({"stage": "classifier " + name, "train_seconds": round(s, 1),
                          "test_accuracy": m["accuracy"], "test_macro_f1": m["macro_f1"],
                          "confusion": m["confusion"]}))
    counts = {c: sum(r["label"] == c for r in test) for c in CLASSES}
    major = max(counts, key=counts.get)
    base = counts[major] / len(test)
    print(json.dumps({"majority_baseline": base, "majority_class": major, "test_counts": counts}))
    print(f"\n{'model':<28}{'test accuracy':>14}{'macro-F1':>10}")
    print(f"{'majority class (' + major + ')':<28}{base:>14.3f}{'':>10}")
    for k, m in results.items():
        print(f"{'encoder, ' + k:<28}{m['accuracy']:>14.3f}{m['macro_f1']:>10.3f}")


if __name__ == "__main__":
    main()
