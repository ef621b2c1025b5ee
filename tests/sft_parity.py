#!/usr/bin/python3
"""sft_parity.py - SFT data in fwrun against a PyTorch oracle.

Usage: /usr/bin/python3 tests/sft_parity.py --fwrun PATH --plugin-path DIR

A small random GPT-2 (tests/gpt2_parity.py's plain-torch GPT2LMHeadModel) is
imported into fw, then fine-tuned for one step of plain SGD (lr 1, no
momentum, decay or clipping) on a JSONL file of prompt/response and chat
records with the byte tokenizer. One step of SGD with lr 1 moves each weight
by exactly its gradient, so the checkpoint gives fw's gradient back.

The oracle runs every example on its own in torch (positions from 0, plain
causal attention, no padding) and averages the cross-entropy over response
tokens (and the EOS that ends each response) only, as docs/data-formats.md
specifies. Checks:
  1. loss and full gradient equal the oracle's, with --packing=packed and
     --packing=padded (so neither padding nor the other examples of a packed
     row leak into an example, in attention or in the loss);
  2. the same oracle with prompt tokens in the loss gives a gradient far from
     fw's: the masking is what makes 1. pass (prompt tokens contribute no
     gradient in fw);
  3. --too-long=truncate and --too-long=drop: counts in the log and the
     oracle on truncated / dropped examples;
  4. bad records: FILE:LINE messages, skipping up to --max-bad-records, a
     clear error past it; 40 randomly damaged files never crash the loader.
Ends with "sft_parity: N passed, M failed"; exit code 0 only without failures.
"""
import json
import os
import random
import subprocess
import re
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as gp  # noqa: E402

torch.set_num_threads(2)
R = gp.Results()
EOS = 256                 # the byte tokenizer's <|endoftext|>
T = 64                    # seq-length (n-positions)
PLUGINS = "--plugins=arch/decoder,attention/mha,optim/sgd"
TOL_LOSS = 1e-5           # relative
TOL_GRAD = 1e-4           # max |g_fw - g_torch| / max |g_torch|, per tensor

RECORDS = [
    {"prompt": "Q: What is 2+2?\nA:", "response": " 4"},
    {"prompt": "Translate to French: cat\n", "response": "chat"},
    {"messages": [{"role": "user", "content": "hi"},
                  {"role": "assistant", "content": "hello"},
                  {"role": "user", "content": "bye"},
                  {"role": "assistant", "content": "ciao"}]},
    {"prompt": "Caf\u00e9 \u2615 ", "response": "na\u00efve \u00fcber"},
    {"prompt": "", "response": "no prompt at all"},
    {"messages": [{"role": "system", "content": "Be kind."},
                  {"role": "user", "content": "2+3?"},
                  {"role": "assistant", "content": "5"}]},
    {"text": "plain text in the loss"},
]
LONG = {"prompt": "Long prompt here: ", "response": "x" * 40 + " and more " * 3}


IM_START, IM_END = 257, 258  # --chat-template=chatml's specials after the byte tokenizer's EOS


def encode(rec, chatml=False):
    """ids and loss flags per docs/data-formats.md, byte tokenizer."""
    ids, loss = [], []

    def put(s, flag):
        b = list(s.encode("utf-8"))
        ids.extend(b)
        loss.extend([flag] * len(b))

    if "messages" in rec and chatml:
        for m in rec["messages"]:
            a = m["role"] == "assistant"
            ids.append(IM_START)
            loss.append(False)
            put(m["role"] + "\n", False)
            put(m["content"], a)
            ids.append(IM_END)
            loss.append(a)
            put("\n", False)
    elif "messages" in rec:
        for i, m in enumerate(rec["messages"]):
            if i:
                put("\n\n", False)
            put(m["role"].capitalize() + ":\n", False)
            a = m["role"] == "assistant"
            put(m["content"], a)
            if a:
                ids.append(EOS)
                loss.append(True)
    elif "text" in rec:
        ids.append(EOS)
        loss.append(False)
        put(rec["text"], True)
    else:
        put(rec["prompt"], False)
        put(rec["response"], True)
        ids.append(EOS)
        loss.append(True)
    return ids, loss


def oracle(W, examples, prompt_in_loss=False, per_example=False):
    """Mean cross-entropy over the flagged targets of every example, each run
    alone (per_example: the mean of each example's mean); returns (loss,
    {name: grad})."""
    P = {k: v.clone().requires_grad_(True) for k, v in W.items()}
    total, count, means = 0.0, 0, []
    for ids, loss in examples:
        x = torch.tensor(ids[:-1]).unsqueeze(0)
        y = torch.tensor(ids[1:])
        flags = torch.tensor(loss[1:]) if not prompt_in_loss else torch.ones(len(ids) - 1,
                                                                            dtype=torch.bool)
        logits = gp.forward(P, x)[0]
        nll = F.cross_entropy(logits, y, reduction="none")
        total = total + nll[flags].sum()
        count += int(flags.sum())
        means.append(nll[flags].mean())
    loss = sum(means) / len(means) if per_example else total / count
    loss.backward()
    return float(loss), {k: v.grad.detach() for k, v in P.items()}


def fw_grad(fw, work, h5, data, tag, extra=(), tokenizer=("--tokenizer=byte",)):
    """One SGD step with lr 1: returns (process, metrics of step 1, grads)."""
    run = os.path.join(work, "run-" + tag)
    p = fw("train", PLUGINS, f"--load={h5}", "--finetune", *tokenizer,
           f"--data={data}", f"--seq-length={T}", "--micro-batch-size=8", "--train-iters=1",
           "--lr=1", "--lr-decay-style=constant", "--sgd-momentum=0", "--weight-decay=0",
           "--clip-grad=0", "--no-shuffle", f"--run-dir={run}", "--threads=2", *extra)
    if p.returncode != 0:
        return p, None, None
    with open(os.path.join(run, "metrics.jsonl")) as f:
        m = [json.loads(l) for l in f if '"lr"' in l][0]
    after = gp.h5_tensors(os.path.join(run, "ckpt-00000001.h5"))
    m["checkpoint"] = os.path.join(run, "ckpt-00000001.h5")
    before = gp.h5_tensors(h5)
    g = {}
    for n, _ in gp.hf_names():
        d = torch.from_numpy(before[n].astype(np.float64) - after[n].astype(np.float64))
        g[n] = d.t() if gp.is_conv1d(n) else d        # back to the torch (Conv1D) layout
    return p, m, g


def grad_error(g_fw, g_ref):
    worst, where = 0.0, ""
    for n, r in g_ref.items():
        r = r.double()
        e = float((g_fw[n] - r).abs().max() / max(float(r.abs().max()), 1e-12))
        if n.endswith("attn.c_attn.bias"):       # the k third has an exact zero gradient
            C = gp.N_EMBD
            e = float(torch.cat([(g_fw[n] - r)[:C], (g_fw[n] - r)[2 * C:]]).abs().max() /
                      max(float(r.abs().max()), 1e-12))
        if e > worst:
            worst, where = e, n
    return worst, where


def write_jsonl(path, recs, raw_lines=()):
    with open(path, "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        for l in raw_lines:
            f.write(l + "\n")


def check_parity(fw, work, W, h5):
    data = os.path.join(work, "sft.jsonl")
    write_jsonl(data, RECORDS)
    examples = [encode(r) for r in RECORDS]
    assert all(len(ids) - 1 <= T for ids, _ in examples)
    ref_loss, ref_g = oracle(W, examples)
    _, all_g = oracle(W, examples, prompt_in_loss=True)
    for packing in ("packed", "padded"):
        p, m, g = fw_grad(fw, work, h5, data, packing, [f"--packing={packing}"])
        if not R.check(f"{packing}: fwrun train runs", p.returncode == 0, gp.describe(p)):
            continue
        rows = re.search(r"into (\d+) rows", p.stderr)
        R.check(f"{packing}: {'fewer rows than examples' if packing == 'packed' else 'one row per example'}",
                rows and (int(rows.group(1)) < len(RECORDS) if packing == "packed"
                          else int(rows.group(1)) == len(RECORDS)), p.stderr.strip()[-300:])
        rl = gp.rel(m["loss"], ref_loss)
        R.check(f"{packing}: loss equals torch's response-only mean within {TOL_LOSS:g}",
                rl <= TOL_LOSS, f"fw {m['loss']:.8f} torch {ref_loss:.8f} rel {rl:.1e}")
        e, where = grad_error(g, ref_g)
        R.check(f"{packing}: gradient equals torch's response-only gradient within {TOL_GRAD:g}",
                e <= TOL_GRAD, f"max rel error {e:.2e} in {where}")
        e_all, where_all = grad_error(g, all_g)
        R.check(f"{packing}: the gradient with prompt tokens in the loss is far from fw's "
                "(prompt tokens contribute nothing)", e_all > 100 * TOL_GRAD,
                f"max rel difference {e_all:.2e} in {where_all}")
        print(f"  {packing}: loss fw {m['loss']:.8f} torch {ref_loss:.8f} (rel {rl:.1e}); "
              f"gradient max rel error {e:.1e} ({where}); vs all-token gradient {e_all:.2f}")
    # Accumulation over one-example micro-batches: by default each micro-batch
    # mean counts equally; --calculate-per-token-loss weighs every loss token
    # of the step equally, as the full batch above does.
    ex_loss, ex_g = oracle(W, examples, per_example=True)
    acc = ["--packing=padded", "--micro-batch-size=1", f"--global-batch-size={len(RECORDS)}"]
    for tag, extra, (rl_, rg_) in (("mean of micro-batch means", [], (ex_loss, ex_g)),
                                   ("--calculate-per-token-loss", ["--calculate-per-token-loss"],
                                    (ref_loss, ref_g))):
        p, m, g = fw_grad(fw, work, h5, data, "acc" + str(len(extra)), acc + extra)
        if not R.check(f"accumulation, {tag}: runs", p.returncode == 0, gp.describe(p)):
            continue
        e, where = grad_error(g, rg_)
        R.check(f"accumulation over {len(RECORDS)} micro-batches, {tag}: loss and gradient "
                "equal torch's", gp.rel(m["loss"], rl_) <= TOL_LOSS and e <= TOL_GRAD,
                f"loss fw {m['loss']:.8f} torch {rl_:.8f}; grad err {e:.1e} in {where}")
    R.check("the two accumulation rules differ on this data (the checks above can fail)",
            gp.rel(ex_loss, ref_loss) > 1e-3, f"{ex_loss:.6f} vs {ref_loss:.6f}")


def check_chatml(fw, work, W, h5):
    """--chat-template=chatml: the oracle on ChatML ids; generation parses the
    markers in a prompt and stops at <|im_end|>."""
    recs = [r for r in RECORDS if "messages" in r]
    data = os.path.join(work, "chat.jsonl")
    write_jsonl(data, recs)
    examples = [encode(r, chatml=True) for r in recs]
    ref_loss, ref_g = oracle(W, examples)
    p, m, g = fw_grad(fw, work, h5, data, "chatml", ["--chat-template=chatml"])
    if not R.check("--chat-template=chatml: runs", p.returncode == 0, gp.describe(p)):
        return
    e, where = grad_error(g, ref_g)
    R.check("--chat-template=chatml: loss and gradient equal torch's on the ChatML ids "
            "(assistant contents and their <|im_end|> in the loss)",
            gp.rel(m["loss"], ref_loss) <= TOL_LOSS and e <= TOL_GRAD,
            f"loss fw {m['loss']:.8f} torch {ref_loss:.8f}; grad err {e:.1e} in {where}")
    # Generation: a model whose first greedy token is <|im_end|> (its output
    # row set to 1.5 x that of torch's greedy choice t, which needs logit t > 0;
    # the prompt does not contain <|im_end|>, so nothing else changes).
    prompt = [IM_START] + list(b"user\nhi")
    with torch.no_grad():
        logits = gp.forward(W, torch.tensor([prompt]))[0, -1]
    t = int(torch.argmax(logits))
    W2 = dict(W)
    W2["wte.weight"] = W["wte.weight"].clone()
    W2["wte.weight"][IM_END] = 1.5 * W["wte.weight"][t]
    R.check("the ChatML stop model: torch's greedy first token has a positive logit",
            float(logits[t]) > 0.05, f"logit {float(logits[t]):.4f}")
    os.makedirs(os.path.join(work, "im"), exist_ok=True)
    h2 = gp.import_random(fw, os.path.join(work, "im"), W2, R)
    if not h2:
        return
    outs = {}
    for tmpl in ("chatml", "plain"):
        run = os.path.join(work, "im", "run-" + tmpl)
        p = fw("train", PLUGINS, f"--load={h2}", "--finetune", "--tokenizer=byte",
               f"--data={data}", f"--chat-template={tmpl}", f"--seq-length={T}",
               "--micro-batch-size=4", "--train-iters=1", "--lr=0", f"--run-dir={run}")
        g = subprocess.run([fw.exe, "generate", "--plugins=arch/decoder,attention/mha",
                            f"--load={run}", "--prompt=<|im_start|>user\nhi",
                            "--temperature=0", "--max-new-tokens=8"], env=fw.env,
                           capture_output=True, timeout=120)
        outs[tmpl] = (p.returncode, g.returncode, g.stdout)
    R.check("generate with a ChatML checkpoint: '<|im_start|>' in the prompt is the special "
            "token and <|im_end|> ends the answer (nothing printed); without ChatML's "
            "specials the same weights print other text",
            outs["chatml"] == (0, 0, b"\n") and outs["plain"][:2] == (0, 0) and
            outs["plain"][2] != b"\n", str(outs))


def check_too_long(fw, work, W, h5):
    recs = RECORDS[:2] + [LONG]
    data = os.path.join(work, "long.jsonl")
    write_jsonl(data, recs)
    ids, loss = encode(LONG)
    assert len(ids) - 1 > T and any(loss[1:T + 1])
    short = [encode(r) for r in RECORDS[:2]]
    for mode, examples in (("truncate", short + [(ids[:T + 1], loss[:T + 1])]),
                           ("drop", short)):
        p, m, g = fw_grad(fw, work, h5, data, mode, [f"--too-long={mode}"])
        if not R.check(f"--too-long={mode}: runs", p.returncode == 0, gp.describe(p)):
            continue
        want = "1 truncated, 0 dropped" if mode == "truncate" else "0 truncated, 1 dropped"
        R.check(f"--too-long={mode}: the log counts it ({want})", want in p.stderr,
                p.stderr.strip()[-300:])
        ref_loss, ref_g = oracle(W, examples)
        e, where = grad_error(g, ref_g)
        R.check(f"--too-long={mode}: loss and gradient equal torch's on the "
                f"{'truncated' if mode == 'truncate' else 'remaining'} examples",
                gp.rel(m["loss"], ref_loss) <= TOL_LOSS and e <= TOL_GRAD,
                f"loss fw {m['loss']:.8f} torch {ref_loss:.8f}; grad err {e:.1e} in {where}")


def damaged_copies(good, work, n, rnd):
    """n damaged copies of the bytes good (truncated, bytes overwritten, junk
    inserted, in turn) written to work/damagedI.jsonl; yields their paths."""
    for i in range(n):
        b = bytearray(good)
        if i % 3 == 0:
            b = b[:rnd.randrange(len(b))]
        elif i % 3 == 1:
            for _ in range(rnd.randrange(1, 20)):
                b[rnd.randrange(len(b))] = rnd.randrange(256)
        else:
            at = rnd.randrange(len(b))
            b[at:at] = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 50)))
        path = os.path.join(work, f"damaged{i}.jsonl")
        with open(path, "wb") as f:
            f.write(b)
        yield path


def check_bad_records(fw, work, h5):
    bad_lines = ['{"prompt": "a", "response": ', '{"prompt": 3, "response": "x"}',
                 '{"prompt": "a"}', '{"prompt": "a", "response": ""}', '[1, 2]',
                 '{"messages": [{"role": "robot", "content": "x"}]}',
                 '{"messages": [{"role": "user", "content": "only a user"}]}']
    data = os.path.join(work, "bad.jsonl")
    write_jsonl(data, RECORDS[:3], bad_lines)
    p, _, _ = fw_grad(fw, work, h5, data, "bad", ["--max-bad-records=7"])
    lines = [l for l in p.stderr.splitlines() if "record skipped" in l]
    nums = [int(re.search(r"bad\.jsonl:(\d+):", l).group(1)) for l in lines
            if re.search(r"bad\.jsonl:(\d+):", l)]
    R.check("bad records: each reported with FILE:LINE and skipped, training goes on",
            p.returncode == 0 and nums == list(range(4, 11)), gp.describe(p))
    p, _, _ = fw_grad(fw, work, h5, data, "bad2", ["--max-bad-records=6"])
    last = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""
    R.check("bad records: one more than --max-bad-records stops the run with a clear error",
            p.returncode == 1 and last.startswith("fwrun: ") and "bad.jsonl:10:" in last
            and "max-bad-records" in last, gp.describe(p))
    p, _, _ = fw_grad(fw, work, h5, os.path.join(work, "missing.jsonl"), "missing")
    R.check("missing data file: one line naming it, exit 1",
            p.returncode == 1 and "missing.jsonl" in p.stderr and
            len(p.stderr.strip().splitlines()) == 1, gp.describe(p))
    # Damage: random truncation, byte flips, inserted junk. Any outcome but a
    # crash, a hang or an error without "fwrun:" is a failure.
    good = open(os.path.join(work, "sft.jsonl"), "rb").read()
    rnd = random.Random(7)
    crashes = []
    for i, path in enumerate(damaged_copies(good, work, 40, rnd)):
        p, _, _ = fw_grad(fw, work, h5, path, f"dmg{i}", ["--max-bad-records=2"])
        ok = p.returncode == 0 or (p.returncode == 1 and p.stderr.strip().splitlines()[-1]
                                   .startswith("fwrun: "))
        if not ok:
            crashes.append(f"{path}: {gp.describe(p)}")
    R.check("40 damaged JSONL files: every run trains or stops with an fwrun: line",
            not crashes, "; ".join(crashes[:3]))


def main():
    a, fw = gp.cli(__doc__)

    def body(work):
        W = gp.random_weights(99)
        h5 = gp.import_random(fw, work, W, R)
        if h5:
            check_parity(fw, work, W, h5)
            check_chatml(fw, work, W, h5)
            check_too_long(fw, work, W, h5)
            check_bad_records(fw, work, h5)

    return R.run("sft_parity", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
