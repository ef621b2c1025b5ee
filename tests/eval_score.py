#!/usr/bin/python3
"""eval_score.py - fwrun eval (loss, perplexity) and --score-data against PyTorch.

Usage: /usr/bin/python3 tests/eval_score.py --fwrun PATH --plugin-path DIR

A small random GPT-2 (tests/gpt2_parity.py's plain-torch GPT2LMHeadModel) is
imported into fw and scored with the byte tokenizer (ids = UTF-8 bytes, EOS
256). The oracle runs every sequence alone in torch, unpadded. Checks:
  1. eval of a shard: eval_loss equals torch's mean cross-entropy, perplexity
     is exp(eval_loss), tokens = B*T*iters; eval of padded SFT JSONL: the
     mean of per-micro-batch response-only means, tokens = response tokens;
  2. prompt/response (and chat) scoring: per-record log-likelihood of the
     response tokens and the EOS, and the means and perplexity, equal
     torch's log_softmax at those positions (1e-5 relative), with multi-byte
     UTF-8, records of different lengths (padding) and a partial last
     micro-batch; a record over seq-length + 1 tokens is counted as too_long;
  3. multiple choice: per-choice log-likelihoods, predictions, acc and
     acc_norm (per character) equal torch's, on records where acc and acc_norm
     disagree and accuracy is neither 0 nor 1;
  4. bad records: FILE:LINE messages and skipping up to --max-bad-records,
     exit 1 with an fwrun: line past it, damaged files never crash;
  5. --score-data without a tokenizer, or a missing file: one line, exit != 0;
     --valid-data and --score-data together give both results.
Ends with "eval_score: N passed, M failed"; exit code 0 only without failures.
"""
import json
import math
import os
import random
import re
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as gp  # noqa: E402
from sft_parity import damaged_copies, encode, write_jsonl  # noqa: E402  (the SFT token rules)

torch.set_num_threads(2)
R = gp.Results()
EOS = 256                 # the byte tokenizer's <|endoftext|>
T = 64                    # seq-length (= n-positions)
PLUGINS = "--plugins=arch/decoder,attention/mha"
TOL = 1e-5                # relative

RESPONSES = [
    {"prompt": "Q: What is 2+2?\nA:", "response": " 4"},
    {"prompt": "Caf\u00e9 \u2615 ", "response": "na\u00efve \u00fcber \U0001F600"},
    {"prompt": "Translate to French: the black cat sleeps\n", "response": "le chat noir dort"},
    {"messages": [{"role": "user", "content": "hi"},
                  {"role": "assistant", "content": "hello"},
                  {"role": "user", "content": "bye"},
                  {"role": "assistant", "content": "ciao"}]},
    {"prompt": "x", "response": "y"},
]
LONG = {"prompt": "Long prompt here: ", "response": "z" * 60}

# Choices of very different byte lengths: the shortest wins on the raw sum of
# a near-uniform model, the per-byte mean decides otherwise.
CHOICES = [
    ("The sky is", [" blue", " a vast expanse of scattered light", " up"]),
    ("2 + 2 =", [" 4", " four, as everybody knows", " 22"]),
    ("Capital of France:", [" Paris", " P", " the city of light on the Seine"]),
    ("Caf\u00e9 au", [" lait", " \u00e9t\u00e9 \u2615\u2615", " l"]),
    ("Tea is", [" \u2615\u2615\u2615\u2615\u2615\u2615\u2615", " hot", " t"]),
    ("Colour of grass:", [" green", " g", " a deep and lively green in spring"]),
    ("Opposite of hot:", [" cold", " freezing cold weather all year", " c"]),
    ("Cats say", [" meow", " m", " purr purr purr purr", " mew"]),
    ("Dogs say", [" woof", " a loud bark at the mail carrier", " w"]),
]


def torch_logprobs(W, ids):
    """log p(ids[i+1] | ids[:i+1]) for every i, the sequence alone."""
    with torch.no_grad():
        logits = gp.forward(W, torch.tensor(ids[:-1]).unsqueeze(0))[0].double()
        return torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:]).unsqueeze(1))[:, 0]


def torch_score(W, ids, loss):
    lp = torch_logprobs(W, ids)
    flags = torch.tensor(loss[1:])
    return float(lp[flags].sum()), int(flags.sum())


def run_eval(fw, h5, *args):
    p = fw("eval", PLUGINS, f"--load={h5}", f"--seq-length={T}", "--threads=2", *args)
    out = None
    if p.returncode == 0:
        try:
            lines = p.stdout.strip().splitlines()
            out = json.loads(lines[0]) if len(lines) == 1 else None
        except ValueError:
            out = None
    return p, out


def close(a, b, tol=TOL):
    return a is not None and gp.rel(a, b) <= tol


def check_loss(fw, work, W, h5):
    print("eval loss:")
    B, K, Tl = 2, 3, 32
    rng = np.random.RandomState(3)
    tokens = rng.randint(0, gp.VOCAB, size=K * B * Tl + 1 + 20).astype(np.uint16)
    shard = os.path.join(work, "val.bin")
    gp.write_shard(shard, tokens)
    with torch.no_grad():
        ref = sum(gp.ce(W, *gp.micro_batch(tokens, k, B, Tl)).item() for k in range(K)) / K
    p = fw("eval", PLUGINS, f"--load={h5}", f"--valid-data={shard}", f"--micro-batch-size={B}",
           f"--seq-length={Tl}", f"--eval-iters={K}", "--threads=2")
    try:
        out = json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        out = None
    if R.check("shard: eval runs and prints one JSON line", p.returncode == 0 and out,
               gp.describe(p)):
        R.check("shard: eval_loss equals torch's", close(out["eval_loss"], ref),
                f"fw {out['eval_loss']:.9g} torch {ref:.9g}")
        R.check("shard: perplexity = exp(eval_loss)",
                close(out["perplexity"], math.exp(out["eval_loss"]), 1e-7),
                f"{out['perplexity']} vs exp {math.exp(out['eval_loss'])}")
        R.check("shard: eval_iters and tokens = B*T*iters",
                out["eval_iters"] == K and out["tokens"] == K * B * Tl, str(out))
        targets = np.concatenate([gp.micro_batch(tokens, k, B, Tl)[1].numpy().ravel()
                                  for k in range(K)])
        freq = np.bincount(targets) / len(targets)
        h = float(-(freq[freq > 0] * np.log(freq[freq > 0])).sum())
        R.check("shard: unigram_loss is the entropy of the evaluated targets (numpy)",
                close(out["unigram_loss"], h, 1e-9), f"fw {out['unigram_loss']} numpy {h}")
    p = fw("eval", PLUGINS, f"--load={h5}", f"--valid-data={shard}", f"--micro-batch-size={B}",
           f"--seq-length={Tl}", "--eval-iters=0", "--threads=2")
    n_micro = (len(tokens) - 1) // (B * Tl)
    R.check("shard: --eval-iters=0 evaluates every micro-batch once",
            p.returncode == 0 and json.loads(p.stdout)["eval_iters"] == n_micro, gp.describe(p))

    # SFT: one example a row (padded), B rows a micro-batch, no shuffling.
    recs = RESPONSES[:4]
    data = os.path.join(work, "sft.jsonl")
    write_jsonl(data, recs)
    ex = [encode(r) for r in recs]
    means, count, total = [], 0, 0.0
    for k in range(0, len(ex), B):
        s, n = 0.0, 0
        for ids, loss in ex[k:k + B]:
            a, b = torch_score(W, ids, loss)
            s, n = s + a, n + b
        means.append(-s / n)
        count += n
        total -= s
    ref = sum(means) / len(means)
    p, out = run_eval(fw, h5, f"--valid-data={data}", "--tokenizer=byte", "--packing=padded",
                      f"--micro-batch-size={B}", f"--eval-iters={len(means)}")
    if R.check("SFT JSONL: eval runs", out is not None, gp.describe(p)):
        R.check("SFT JSONL: eval_loss = mean of per-micro-batch response-only means",
                close(out["eval_loss"], ref), f"fw {out['eval_loss']:.9g} torch {ref:.9g}")
        R.check("SFT JSONL: tokens counts the response tokens (and EOS) in the loss",
                out["tokens"] == count, f"fw {out['tokens']} want {count}")
    p, out = run_eval(fw, h5, f"--valid-data={data}", "--tokenizer=byte", "--packing=padded",
                      f"--micro-batch-size={B}", "--eval-iters=0", "--calculate-per-token-loss")
    R.check("SFT JSONL, --calculate-per-token-loss: eval_loss = mean over every response token",
            out is not None and close(out["eval_loss"], total / count) and
            not close(ref, total / count, 1e-4),
            f"fw {out and out['eval_loss']} torch {total / count:.9g} (per batch {ref:.9g})")
    return shard


def check_responses(fw, work, W, h5):
    print("prompt/response scoring:")
    data = os.path.join(work, "resp.jsonl")
    recs = RESPONSES[:3] + [LONG] + RESPONSES[3:]
    write_jsonl(data, recs)
    ex = [encode(r) for r in RESPONSES]
    ref = [torch_score(W, ids, loss) for ids, loss in ex]
    assert len(encode(LONG)[0]) - 1 > T and all(len(ids) - 1 <= T for ids, _ in ex)
    assert len({len(ids) for ids, _ in ex}) > 2
    total = sum(s for s, _ in ref)
    ntok = sum(n for _, n in ref)
    for B in (3, 1):               # 3: a partial last micro-batch; 1: no padding rows
        p, out = run_eval(fw, h5, f"--score-data={data}", "--tokenizer=byte",
                          f"--micro-batch-size={B}")
        if not R.check(f"B={B}: eval --score-data runs and prints one JSON line",
                       out is not None, gp.describe(p)):
            continue
        got = [s for s in out["scores"] if "logprob" in s]
        lines = [s["line"] for s in got]
        bad = [(i, g["logprob"], r[0]) for i, (g, r) in enumerate(zip(got, ref))
               if not close(g["logprob"], r[0]) or g["tokens"] != r[1]]
        R.check(f"B={B}: per-record log-likelihood of response + EOS equals torch's",
                len(got) == len(ref) and lines == [1, 2, 3, 5, 6] and not bad,
                f"lines {lines}; differ {bad[:3]}")
        r = out["response"]
        R.check(f"B={B}: records, tokens, mean per token / per record, perplexity",
                r["records"] == len(ref) and r["tokens"] == ntok and
                close(r["mean_logprob"], total / ntok) and
                close(r["mean_sum_logprob"], total / len(ref)) and
                close(r["perplexity"], math.exp(-total / ntok)),
                f"fw {r}; torch mean {total / ntok:.9g} per record {total / len(ref):.9g}")
        R.check(f"B={B}: the record over seq-length + 1 tokens is skipped as too_long",
                out["too_long"] == 1 and {"line": 4, "too_long": True} in out["scores"] and
                out["choice"]["records"] == 0 and out["choice"]["acc"] is None, str(out)[:300])
    # The scored tokens are the SFT loss tokens: the prompt is not scored.
    ids, loss = ex[0]
    whole = float(torch_logprobs(W, ids).sum())
    R.check("the prompt's own tokens are not in the score (differs from the whole sequence)",
            abs(whole - ref[0][0]) > 1.0, f"{whole:.4f} vs {ref[0][0]:.4f}")


def check_choices(fw, work, W, h5):
    print("multiple choice:")
    ref = []
    for prompt, choices in CHOICES:
        pb = list(prompt.encode("utf-8"))
        sums, nbytes = [], []
        for c in choices:
            cb = list(c.encode("utf-8"))
            lp = torch_logprobs(W, pb + cb)
            sums.append(float(lp[len(pb) - 1:].sum()))
            nbytes.append(len(c))      # characters, as lm-evaluation-harness's len(choice)
        norm = [s / n for s, n in zip(sums, nbytes)]
        ref.append((sums, nbytes, int(np.argmax(sums)), int(np.argmax(norm)), norm))
    # Answers: where acc and acc_norm pick the same choice, another one (both
    # wrong); where they differ, the acc_norm pick on the first such record and
    # the acc pick on the others: acc = (d - 1) / n, acc_norm = 1 / n.
    dis = [i for i, r in enumerate(ref) if r[2] != r[3]]
    answers = [(r[2] + 1) % len(r[0]) if r[2] == r[3] else r[3] if i == dis[0] else r[2]
               for i, r in enumerate(ref)]
    acc = sum(a == r[2] for a, r in zip(answers, ref)) / len(ref)
    acc_norm = sum(a == r[3] for a, r in zip(answers, ref)) / len(ref)
    margin = min(min(abs(x - y) for x in v for y in v if x is not y) for v in
                 [r[0] for r in ref] + [r[4] for r in ref])
    R.check("the data: acc and acc_norm pick different choices somewhere, accuracy not 0 or 1, "
            "no near ties", len(dis) >= 3 and 0 < acc < 1 and acc != acc_norm and margin > 1e-4,
            f"{len(dis)} records disagree, acc {acc} acc_norm {acc_norm}, margin {margin:.2e}")
    recs = [{"prompt": p, "choices": c, "answer": a} for (p, c), a in zip(CHOICES, answers)]
    data = os.path.join(work, "mc.jsonl")
    write_jsonl(data, recs)
    p, out = run_eval(fw, h5, f"--score-data={data}", "--tokenizer=byte",
                      "--micro-batch-size=4")
    if not R.check("eval --score-data with multiple-choice records runs", out is not None,
                   gp.describe(p)):
        return
    got = out["scores"]
    bad = [i for i, (g, r) in enumerate(zip(got, ref))
           if len(g["logprobs"]) != len(r[0]) or
           not all(close(x, y) for x, y in zip(g["logprobs"], r[0]))]
    R.check("per-choice log-likelihoods (choice tokens only) equal torch's",
            len(got) == len(ref) and not bad, f"records differ: {bad}")
    R.check("per-record characters, pred and pred_norm equal torch's",
            all(g["chars"] == r[1] and g["pred"] == r[2] and g["pred_norm"] == r[3] and
                g["answer"] == a for g, r, a in zip(got, ref, answers)), str(got[:2]))
    c = out["choice"]
    R.check("acc and acc_norm equal torch's", c["records"] == len(ref) and
            close(c["acc"], acc, 1e-9) and close(c["acc_norm"], acc_norm, 1e-9),
            f"fw {c}; torch acc {acc} acc_norm {acc_norm}")
    R.check("no prompt/response results in a multiple-choice file",
            out["response"]["records"] == 0 and out["response"]["mean_logprob"] is None,
            str(out["response"]))


def check_bad(fw, work, h5):
    print("bad records:")
    bad_lines = ['{"prompt": "a", "choices": ["x", "y"], "answer": ',    # invalid JSON
                 '{"prompt": "a", "answer": 0}',                          # no choices
                 '{"prompt": "a", "choices": ["x", "y"], "answer": 2}',   # out of range
                 '{"prompt": "a", "choices": ["x", ""], "answer": 0}',    # empty choice
                 '{"prompt": "a", "choices": ["x", "y"], "answer": "0"}',
                 '{"prompt": "", "response": "r"}',                       # empty prompt
                 '{"prompt": "a", "response": ""}',
                 '[1, 2]']
    good = [RESPONSES[0], {"prompt": "Q", "choices": [" a", " bb"], "answer": 1}]
    data = os.path.join(work, "bad.jsonl")
    write_jsonl(data, good, bad_lines)
    n = len(bad_lines)
    p, out = run_eval(fw, h5, f"--score-data={data}", "--tokenizer=byte",
                      f"--max-bad-records={n}")
    nums = [int(m.group(1)) for m in re.finditer(r"^fwrun: \S*bad\.jsonl:(\d+): .*\(record "
                                                  r"skipped\)$", p.stderr, re.M)]
    R.check("each bad record reported as FILE:LINE and skipped; the good ones scored",
            out is not None and nums == list(range(3, 3 + n)) and out["bad_records"] == n and
            [s["line"] for s in out["scores"]] == [1, 2], gp.describe(p))
    p, out = run_eval(fw, h5, f"--score-data={data}", "--tokenizer=byte",
                      f"--max-bad-records={n - 1}")
    last = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""
    R.check("one more than --max-bad-records: exit 1, an fwrun: line naming FILE:LINE",
            p.returncode == 1 and not p.stdout.strip() and last.startswith("fwrun: ") and
            f"bad.jsonl:{2 + n}:" in last and "max-bad-records" in last, gp.describe(p))
    p, out = run_eval(fw, h5, f"--score-data={data}", "--tokenizer=byte", "--max-bad-records=0")
    R.check("--max-bad-records=0: exactly one fwrun: line, exit 1",
            p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1 and
            p.stderr.startswith("fwrun: ") and "bad.jsonl:3:" in p.stderr, gp.describe(p))
    # Damage: truncation, byte flips, inserted junk: scores or an fwrun: line.
    raw = open(data, "rb").read()
    rnd = random.Random(11)
    crashes = []
    for path in damaged_copies(raw, work, 12, rnd):
        p, out = run_eval(fw, h5, f"--score-data={path}", "--tokenizer=byte",
                          "--max-bad-records=4")
        ok = (p.returncode == 0 and out is not None) or \
            (p.returncode == 1 and p.stderr.strip().splitlines()[-1].startswith("fwrun: "))
        if not ok:
            crashes.append(f"{path}: {gp.describe(p)}")
    R.check("12 damaged files: every run scores or stops with an fwrun: line",
            not crashes, "; ".join(crashes[:2]))


def check_usage(fw, work, W, h5, shard):
    print("usage:")
    data = os.path.join(work, "resp.jsonl")
    p, _ = run_eval(fw, h5, f"--score-data={data}")
    R.check("--score-data without a tokenizer: one fwrun: line, exit != 0",
            p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1 and
            p.stderr.startswith("fwrun: ") and "tokenizer" in p.stderr and not p.stdout,
            gp.describe(p))
    p, _ = run_eval(fw, h5, f"--score-data={os.path.join(work, 'missing.jsonl')}",
                    "--tokenizer=byte")
    R.check("a missing --score-data file: one line naming it, exit 1",
            p.returncode == 1 and "missing.jsonl" in p.stderr and
            len(p.stderr.strip().splitlines()) == 1, gp.describe(p))
    args = ("--tokenizer=byte", "--micro-batch-size=2", "--eval-iters=2")
    p1, a = run_eval(fw, h5, f"--valid-data={shard}", *args)
    p2, b = run_eval(fw, h5, f"--score-data={data}", *args)
    p3, c = run_eval(fw, h5, f"--valid-data={shard}", f"--score-data={data}", *args)
    R.check("--valid-data with --score-data: one line with the loss and the scores, as "
            "each alone", a and b and c and
            all(c[k] == a[k] for k in ("eval_loss", "perplexity", "eval_iters", "tokens")) and
            c["response"] == b["response"] and c["scores"] == b["scores"],
            f"{gp.describe(p3)}")
    # SFT validation data makes the model segmented: scoring then fills its
    # positions and attention masks, and must give the same numbers.
    sft = os.path.join(work, "sft.jsonl")
    p4, d = run_eval(fw, h5, f"--valid-data={sft}", f"--score-data={data}", *args)
    R.check("--valid-data of SFT records (a segmented model) with --score-data: the same "
            "scores", d and b and "eval_loss" in d and len(d["scores"]) == len(b["scores"]) and
            all(x.get("tokens") == y.get("tokens") and
                ("logprob" not in y or close(x["logprob"], y["logprob"]))
                for x, y in zip(d["scores"], b["scores"])), gp.describe(p4))


def main():
    a, fw = gp.cli(__doc__)

    def body(work):
        W = gp.random_weights(2024)
        h5 = gp.import_random(fw, work, W, R)
        if h5:
            shard = check_loss(fw, work, W, h5)
            check_responses(fw, work, W, h5)
            check_choices(fw, work, W, h5)
            check_bad(fw, work, h5)
            check_usage(fw, work, W, h5, shard)

    return R.run("eval_score", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
