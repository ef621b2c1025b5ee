#!/usr/bin/python3
"""t5_peft.py - PEFT on arch/encdec (T5) beyond training: generation with an
adapter, PEFT exports (task_type SEQ_2_SEQ_LM) re-applied in torch, and
generation_config.json's max_length 1.

Usage: /usr/bin/python3 tests/t5_peft.py --fwrun PATH --plugin-path DIR

Oracles (none of them fw's output):
  - fwrun generate --adapter with peft/lora, peft/ia3, peft/prompt, peft/prefix
    and peft/ptuning (MLP encoder) on a T5: greedy and --num-beams ids equal
    t5_parity's Hugging Face greedy and beam search transcriptions (no cache,
    the whole decoder rerun every step) over t5_features' torch forward with
    PEFT's formulas (LoRA/IA3 on the linears; prompt and P-tuning: virtual
    tokens before the encoder's inputs_embeds, PeftModelForSeq2SeqLM.generate;
    prefix: the decoder self-attention's past_key_values, positions after
    it). P-tuning's virtual tokens are PEFT's PromptEncoder MLP
    (Linear-ReLU-Linear-ReLU-Linear) evaluated in torch from the adapter's
    own tensors. Each adapter is trained by fwrun first, and the check only
    counts where the base model's torch ids differ, so it can fail.
  - fwrun export-adapter of each: adapter_config.json says task_type
    SEQ_2_SEQ_LM and uses T5's module names (no GPT-2 "transformer."); the
    safetensors keys, read back by a plain reader and mapped as PEFT loads
    them, re-applied in the torch forward give fw's eval loss within 1e-5
    relative.
  - generation_config.json max_length 1 on a T5: Hugging Face returns the
    decoder start token alone (MaxLengthCriteria at length 1), an empty
    target; fwrun generate prints an empty line and exits 0.
Ends with "t5_peft: N passed, M failed"; exit 0 only when nothing failed.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as g2  # noqa: E402
import t5_parity as t5  # noqa: E402
import t5_features as t5f  # noqa: E402  (peft_forward, pairs_setup)
from qlora_parity import read_safetensors  # noqa: E402

torch.set_num_threads(2)
R = g2.Results()
NVT = 3
MAX_NEW = 8
SOURCES = [[104, 101, 108, 108, 111, 32, 119, t5.EOS], [97, 98, 99, 32, 100, 101, t5.EOS]]

# method, plugin, options, the adapter's tensors as peft_forward takes them
METHODS = (
    ("lora", "peft/lora", []),
    ("ia3", "peft/ia3", []),
    ("prompt", "peft/prompt", [f"--prompt-num-virtual-tokens={NVT}"]),
    ("prefix", "peft/prefix", [f"--prefix-num-virtual-tokens={NVT}"]),
    ("ptuning", "peft/ptuning", [f"--ptuning-num-virtual-tokens={NVT}",
                                 "--ptuning-encoder-hidden-size=20"]),
)


def ptuning_tokens(A):
    """PEFT's PromptEncoder, MLP: mlp_head(embedding.weight)."""
    x = A["ptuning.embedding.weight"]
    for i in (0, 2, 4):
        x = x @ A[f"ptuning.mlp_head.{i}.weight"].t() + A[f"ptuning.mlp_head.{i}.bias"]
        x = F.relu(x) if i < 4 else x
    return x


def forward_of(kind, A):
    """(c, W, enc, mask, dec) -> logits: the base T5 (A None) or PEFT's method."""
    if A is None:
        return t5.t5_forward
    if kind == "ptuning":
        kind, A = "prompt", {"prompt.embedding.weight": ptuning_tokens(A)}
    nvt = NVT if kind in ("prompt", "prefix") else 0
    return lambda c, W, enc, mask, dec: t5f.peft_forward(c, W, A, kind, enc, mask, dec, nvt)


def reference_ids(kind, A, W, src, beams):
    """t5_parity's greedy or beam search (transformers 4.34-4.4x) over forward_of."""
    saved = t5.t5_forward
    t5.t5_forward = forward_of(kind, A)
    try:
        if beams == 1:
            return t5.ref_greedy(t5.SEQ, W, src, MAX_NEW, t5.EOS)
        old_eos, t5.GEN_EOS = t5.GEN_EOS, t5.EOS
        try:
            return t5.ref_beam(t5.SEQ, W, src, beams, MAX_NEW, 0.6)
        finally:
            t5.GEN_EOS = old_eos
    finally:
        t5.t5_forward = saved


def as_double(A):
    return {k: torch.tensor(np.asarray(v), dtype=torch.float64) for k, v in A.items()}


def eval_loss(kind, A, W, rows):
    """Mean cross-entropy over every target token of rows (fwrun eval's loss)."""
    fwd = forward_of(kind, A)
    enc, mask, dec, tgt = t5.padded(rows)
    with torch.no_grad():
        logits = fwd(t5.SEQ, W, torch.tensor(enc), torch.tensor(mask), torch.tensor(dec))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.tensor(tgt).reshape(-1),
                           ignore_index=-1).item()


def from_export(kind, d):
    """The export's tensors as PEFT loads them, named for peft_forward."""
    st = read_safetensors(os.path.join(d, "adapter_model.safetensors"))
    cfg = json.load(open(os.path.join(d, "adapter_config.json")))
    pre = "base_model.model."
    if kind in ("lora", "ia3"):
        bad = [k for k in st if not k.startswith(pre) or "transformer." in k]
        return cfg, bad, {k[len(pre):]: v for k, v in st.items()}
    emb = st.get("prompt_embeddings")
    if emb is None:
        return cfg, sorted(st), {}
    if kind == "prefix":     # (nvt, layers * 2 * kv): block 2l keys, 2l + 1 values
        kv = emb.shape[1] // (2 * cfg["num_layers"])
        return cfg, [], {f"prefix.h.{l}.kv": emb[:, 2 * l * kv:(2 * l + 2) * kv]
                         for l in range(cfg["num_layers"])}
    return cfg, [], {"prompt.embedding.weight": emb}


def check_generation_and_export(fw, work):
    recs, rows, data, W, ck, _ = t5f.pairs_setup(work, "gen", 71, 8)
    # cross-attention's V and O scaled up: the source (and so the virtual
    # tokens before it) then changes the greedy ids of this tiny random T5
    for k in W:
        if ".EncDecAttention.v." in k or ".EncDecAttention.o." in k:
            W[k] = W[k] * 4
    t5.write_ckpt(ck, t5.SEQ, W)
    Wd = {k: v.double() for k, v in W.items()}
    base_ids = {(tuple(s), b): reference_ids(None, None, Wd, s, b) for s in SOURCES
                for b in (1, 3)}
    for kind, plugin, opts in METHODS:
        plugins = f"--plugins=arch/encdec,attention/mha,optim/adamw,{plugin}"
        run = os.path.join(work, f"run_{kind}")
        p = fw("train", plugins, f"--load={ck}", f"--data={data}", "--tokenizer=byte",
               "--no-shuffle", f"--micro-batch-size={t5.TB}", f"--seq-length={t5.TT}",
               "--train-iters=6", "--lr=0.05", "--lr-decay-style=constant", "--threads=2",
               f"--seed={t5.SEED}", f"--run-dir={run}", *opts)
        ad = os.path.join(run, "adapter-00000006.h5")
        if not R.check(f"{plugin} on T5: fwrun train saves an adapter", p.returncode == 0 and
                       os.path.exists(ad), g2.describe(p)):
            continue
        A = as_double(t5f.adapter_tensors(ad))
        gen = ["generate", plugins.replace(",optim/adamw", ""), f"--load={ck}",
               f"--adapter={ad}", f"--max-new-tokens={MAX_NEW}", "--threads=2"]
        differs = 0
        for src in SOURCES:
            for beams in (1, 3):
                want = reference_ids(kind, A, Wd, src, beams)
                differs += want != base_ids[(tuple(src), beams)]
                extra = [f"--num-beams={beams}", "--length-penalty=0.6"] if beams > 1 else []
                p = fw(*gen, "--prompt-tokens=" + ",".join(map(str, src)), *extra)
                got = p.stdout.strip()
                R.check(f"{plugin} on T5: generate {'greedy' if beams == 1 else '--num-beams=3'} "
                        f"from {len(src)} source ids: torch's ids",
                        p.returncode == 0 and got == ",".join(map(str, want)),
                        f"fw {got!r} torch {want}; {g2.describe(p) if p.returncode else ''}")
        R.check(f"{plugin} on T5: the adapter changes torch's ids in {differs} of 4 runs "
                f"(the generation checks can fail)", differs >= 2, f"{differs}")
        # the PEFT export, re-applied in torch, against fw's eval
        d = os.path.join(work, f"export_{kind}")
        p = fw("export-adapter", ad, d)
        if not R.check(f"{plugin} on T5: fwrun export-adapter runs", p.returncode == 0,
                       g2.describe(p)):
            continue
        cfg, bad, B = from_export(kind, d)
        R.check(f"{plugin} on T5: the export's task_type is SEQ_2_SEQ_LM with T5's module names",
                cfg.get("task_type") == "SEQ_2_SEQ_LM" and not bad and B and
                (kind not in ("lora", "ia3") or cfg.get("fan_in_fan_out") is False),
                f"{cfg.get('task_type')} bad keys {bad[:3]}")
        if kind == "prefix":
            R.check("peft/prefix on T5: the export has PEFT's seq2seq num_transformer_submodules "
                    "2", cfg.get("num_transformer_submodules") == 2, f"{cfg}")
        p = fw("eval", plugins.replace(",optim/adamw", ""), f"--load={ck}", f"--adapter={ad}",
               f"--valid-data={data}", "--tokenizer=byte", f"--seq-length={t5.TT}",
               f"--micro-batch-size={len(rows)}", "--threads=2")
        got = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else None
        ref = eval_loss("prompt" if kind == "ptuning" else kind, as_double(B), Wd, rows) \
            if B else None
        base = eval_loss(None, None, Wd, rows)
        R.check(f"{plugin} on T5: the PEFT export re-applied in torch gives fw's eval loss "
                f"(1e-5 relative; the base's differs)", got is not None and ref is not None and
                g2.rel(got["eval_loss"], ref) <= 1e-5 and g2.rel(base, ref) > 1e-3,
                f"fw {got and got['eval_loss']} torch {ref} base {base}; {g2.describe(p)}")


def check_max_length_one(fw, work):
    """generation_config.json max_length 1: the start token alone (HF), an empty
    target, for greedy and beams; the flag --max-new-tokens still wins."""
    W = t5.random_weights(t5.SEQ, 73)
    side = os.path.join(work, "max_length_1")
    os.makedirs(side)
    ck = os.path.join(side, "model.h5")
    t5.write_ckpt(ck, t5.SEQ, W)
    with open(os.path.join(side, "generation_config.json"), "w") as f:
        json.dump({"max_length": 1}, f)
    want = t5.ref_greedy(t5.SEQ, {k: v.double() for k, v in W.items()}, SOURCES[0], 2, t5.EOS)
    for extra in ([], ["--num-beams=2"]):
        p = fw("generate", "--plugins=arch/encdec,attention/mha", f"--load={ck}",
               "--tokenizer=byte", "--prompt=hello", "--threads=2", *extra)
        R.check(f"generation_config max_length=1 on T5 {' '.join(extra)}: an empty target "
                f"(Hugging Face's start token alone), exit 0", p.returncode == 0 and
                p.stdout == "\n", g2.describe(p))
    p = fw("generate", "--plugins=arch/encdec,attention/mha", f"--load={ck}",
           "--prompt-tokens=" + ",".join(map(str, SOURCES[0])), "--max-new-tokens=2",
           "--threads=2")
    R.check("max_length=1 with --max-new-tokens=2: the flag wins, torch's 2 ids",
            p.returncode == 0 and p.stdout.strip() == ",".join(map(str, want)) and want,
            f"fw {p.stdout!r} torch {want}; {g2.describe(p)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fwrun", required=True)
    ap.add_argument("--plugin-path", required=True)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="t5_peft.")
    try:
        fw = g2.Fw(os.path.abspath(args.fwrun), os.path.abspath(args.plugin_path))
        check_generation_and_export(fw, work)
        check_max_length_one(fw, work)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"t5_peft: {R.passed} passed, {R.failed} failed")
    sys.exit(1 if R.failed else 0)


if __name__ == "__main__":
    main()
