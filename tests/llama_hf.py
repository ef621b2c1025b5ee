#!/usr/bin/python3
"""llama_hf.py - fwrun import / export of Hugging Face Llama, Mistral and Qwen2 folders.

Usage: /usr/bin/python3 tests/llama_hf.py --fwrun PATH --plugin-path DIR

Each model is a random-weight Hugging Face folder written here by hand
(config.json as transformers writes it, safetensors; llama sharded into
model-0000N-of-00002.safetensors with model.safetensors.index.json; mistral
in BF16 with sliding_window 8), and the same weights, under Hugging Face's names, run in a
plain-torch transcription of modeling_llama / modeling_mistral /
modeling_qwen2 (separate q/k/v/o, gate/up/down projections, Qwen2's q/k/v
biases, Mistral's window mask (i - j < sliding_window, as current
modeling_mistral), LlamaRMSNorm, rotate_half RoPE with rope_theta and llama3
rope_scaling, repeat_kv), written from the published code, not from fw.
Checks: fwrun import; fwrun eval against torch's mean cross-entropy (1e-5
relative; Mistral also under attention/sparse's equal window, and refused by
attention/flash); fwrun generate greedy ids identical to torch's; Llama and
Qwen2: 10 AdamW steps of fwrun train from the imported file against
torch.optim.AdamW on the transcription (per-step loss 1e-4); fwrun export
(Hugging Face's names and shapes, values bit-exact, config.json keys that
transformers reads back) and import of the export bit-exact to the first
import; bad folders (rope_scaling yarn, a missing shard, an index that puts
a tensor in the wrong shard, sliding_window 0, attention_bias):
one "fwrun:" line naming the file, a non-zero exit, no output file. A Llama
of 50300 ids without a tokenizer exports no end-of-text id (not GPT-2's 50256).
Ends with "llama_hf: N passed, M failed"; exit 0 only when none failed.
"""
import json
import math
import os
import re
import shutil
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as g2  # noqa: E402  (Results, Fw, safetensors writer, shards)
import llama_parity as lp  # noqa: E402  (rms_norm, rotate_half, repeat_kv, llama3 freqs)

torch.set_num_threads(2)
R = g2.Results()
lp.R = R

VOCAB = 301
EVAL_B, EVAL_T, EVAL_K = 2, 37, 2
PROMPT = [5, 17, 42, 300, 7, 99, 3]
GEN_NEW = 12
TOL_EVAL = 1e-5

BASE = dict(vocab_size=VOCAB, max_position_embeddings=128, hidden_act="silu",
            initializer_range=0.02, use_cache=True, torch_dtype="float32",
            attention_dropout=0.0, bos_token_id=1, eos_token_id=2)
MODELS = {
    "llama": dict(BASE, model_type="llama", architectures=["LlamaForCausalLM"],
                  num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                  hidden_size=96, intermediate_size=80, rms_norm_eps=1e-5, rope_theta=500000.0,
                  rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                    high_freq_factor=4.0, original_max_position_embeddings=64),
                  tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                  pretraining_tp=1),
    "mistral": dict(BASE, model_type="mistral", architectures=["MistralForCausalLM"],
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                    hidden_size=64, intermediate_size=96, rms_norm_eps=1e-6, rope_theta=10000.0,
                    sliding_window=8, tie_word_embeddings=True, torch_dtype="bfloat16"),
    "qwen2": dict(BASE, model_type="qwen2", architectures=["Qwen2ForCausalLM"],
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  hidden_size=64, intermediate_size=72, rms_norm_eps=1e-6, rope_theta=1000000,
                  use_sliding_window=False, sliding_window=4096, max_window_layers=2,
                  tie_word_embeddings=False, rope_scaling=None),
}
SHARDED = {"llama"}


def hf_names(c):
    """Hugging Face's tensors of the model: [(key, shape)]."""
    C, H = c["hidden_size"], c["num_attention_heads"]
    G, Fd, D = c["num_key_value_heads"], c["intermediate_size"], C // H
    V = c["vocab_size"]
    out = [("model.embed_tokens.weight", (V, C))]
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        out += [(p + "input_layernorm.weight", (C,)),
                (p + "self_attn.q_proj.weight", (H * D, C)),
                (p + "self_attn.k_proj.weight", (G * D, C)),
                (p + "self_attn.v_proj.weight", (G * D, C)),
                (p + "self_attn.o_proj.weight", (C, H * D)),
                (p + "post_attention_layernorm.weight", (C,)),
                (p + "mlp.gate_proj.weight", (Fd, C)), (p + "mlp.up_proj.weight", (Fd, C)),
                (p + "mlp.down_proj.weight", (C, Fd))]
        if c["model_type"] == "qwen2":
            out += [(p + f"self_attn.{x}_proj.bias", (n,))
                    for x, n in (("q", H * D), ("k", G * D), ("v", G * D))]
    out.append(("model.norm.weight", (C,)))
    if not c["tie_word_embeddings"]:
        out.append(("lm_head.weight", (V, C)))
    return out


def random_hf(c, seed):
    g = torch.Generator().manual_seed(seed)
    W = {}
    for n, shape in hf_names(c):
        if "norm" in n:
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif n.endswith(".bias"):
            t = 0.1 * torch.randn(shape, generator=g)
        elif "embed" in n or n.startswith("lm_head"):
            t = 0.5 * torch.randn(shape, generator=g)
        else:
            t = 0.2 * torch.randn(shape, generator=g)
        W[n] = t.float().contiguous()
    return W


def st_dtype(c):
    return {"float32": "F32", "bfloat16": "BF16"}[c["torch_dtype"]]


def write_hf(d, c, W, shards=1):
    """config.json and the weights; shards > 1: model-0000N-of-0000M files + index."""
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    dt = st_dtype(c)
    keys = [k for k, _ in hf_names(c)]
    if shards == 1:
        ent = [(k, dt, list(W[k].shape), g2.to_bytes(W[k], dt)) for k in keys]
        g2.write_st(os.path.join(d, "model.safetensors"), *g2.st_header(ent))
        return
    wmap, total = {}, 0
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[s::shards]
        ent = [(k, dt, list(W[k].shape), g2.to_bytes(W[k], dt)) for k in part]
        g2.write_st(os.path.join(d, name), *g2.st_header(ent))
        for k in part:
            wmap[k] = name
            total += W[k].numel() * 4
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wmap}, f, indent=2)


# --- the reference: modeling_llama's math under Hugging Face's names --------------------

def hf_forward(c, W, idx):
    """Logits (B, T, V); idx (B, T) int64."""
    B, T = idx.shape
    C, H, G = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    D, eps = C // H, c["rms_norm_eps"]
    pos = torch.arange(T)
    inv = 1.0 / (float(c["rope_theta"]) ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    rs = c.get("rope_scaling")
    if rs:
        inv = lp.llama3_inv_freq(inv, dict(factor=rs["factor"], low=rs["low_freq_factor"],
                                           high=rs["high_freq_factor"],
                                           orig=rs["original_max_position_embeddings"]))
    freqs = pos.float()[:, None] * inv[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    allowed = torch.ones(T, T, dtype=torch.bool).tril()
    if c.get("sliding_window") and c["model_type"] == "mistral":
        allowed &= (pos[:, None] - pos[None, :]) < c["sliding_window"]
    x = W["model.embed_tokens.weight"][idx]
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."

        def proj(h, n):
            y = h @ W[p + n + ".weight"].t()
            return y + W[p + n + ".bias"] if p + n + ".bias" in W else y

        h = lp.rms_norm(x, W[p + "input_layernorm.weight"], eps)
        q = proj(h, "self_attn.q_proj").view(B, T, H, D).transpose(1, 2)
        k = proj(h, "self_attn.k_proj").view(B, T, G, D).transpose(1, 2)
        v = proj(h, "self_attn.v_proj").view(B, T, G, D).transpose(1, 2)
        q = q * cos + lp.rotate_half(q) * sin
        k = k * cos + lp.rotate_half(k) * sin
        k, v = lp.repeat_kv(k, H // G), lp.repeat_kv(v, H // G)
        att = (q @ k.transpose(2, 3)) / math.sqrt(D)
        att = att.masked_fill(~allowed, torch.finfo(att.dtype).min)
        att = torch.softmax(att, dim=-1, dtype=torch.float32)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + proj(y, "self_attn.o_proj")
        h = lp.rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        x = x + proj(F.silu(proj(h, "mlp.gate_proj")) * proj(h, "mlp.up_proj"), "mlp.down_proj")
    x = lp.rms_norm(x, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight"] if c["tie_word_embeddings"] else W["lm_head.weight"]
    return x @ head.t()


# --- checks ------------------------------------------------------------------------------

PLUG = "--plugins=arch/decoder,attention/mha"


def check_model(fw, work, name, c, seed, val, val_path):
    W = random_hf(c, seed)
    Wr = {k: g2.rounded(v, st_dtype(c)) for k, v in W.items()}     # as the file holds them
    d = os.path.join(work, name)
    write_hf(d, c, W, 2 if name in SHARDED else 1)
    h5 = os.path.join(work, name + ".h5")
    p = fw("import", d, h5)
    if not R.check(f"{name}: import{' (2 shards + index)' if name in SHARDED else ''} runs",
                   p.returncode == 0, g2.describe(p)):
        return
    with torch.no_grad():
        ref = sum(F.cross_entropy(hf_forward(c, Wr, x).reshape(-1, VOCAB), y.reshape(-1)).item()
                  for x, y in (g2.micro_batch(val, k, EVAL_B, EVAL_T)
                               for k in range(EVAL_K))) / EVAL_K
    p = fw("eval", PLUG, f"--load={h5}", f"--valid-data={val_path}",
           f"--micro-batch-size={EVAL_B}", f"--seq-length={EVAL_T}", f"--eval-iters={EVAL_K}",
           "--threads=2")
    if R.check(f"{name}: eval runs", p.returncode == 0, g2.describe(p)):
        got = json.loads(p.stdout.strip().splitlines()[-1])["eval_loss"]
        r = g2.rel(got, ref)
        R.check(f"{name}: eval fw {got:.9g} vs torch {ref:.9g}", r <= TOL_EVAL, f"rel {r:.2e}")
    want, margin = lp.greedy(lambda idx: hf_forward(c, Wr, idx), PROMPT, GEN_NEW)
    p = fw("generate", PLUG, f"--load={h5}", "--prompt-tokens=" + ",".join(map(str, PROMPT)),
           f"--max-new-tokens={GEN_NEW}", "--temperature=0", "--threads=2")
    if R.check(f"{name}: generate runs", p.returncode == 0, g2.describe(p)):
        got = [int(t) for t in re.findall(r"-?\d+", p.stdout)]
        if got[:len(PROMPT)] == PROMPT and len(got) == len(PROMPT) + GEN_NEW:
            got = got[len(PROMPT):]
        R.check(f"{name}: greedy {GEN_NEW} tokens identical to torch", got == want,
                f"fw {got} torch {want}; smallest torch top-2 margin {margin:.2e}")
    if c.get("sliding_window") and name == "mistral":
        check_window_plugins(fw, name, c, h5, ref, val_path)
    if name in ("llama", "qwen2"):
        check_train(fw, work, name, c, Wr, h5)
    check_export(fw, work, name, c, Wr, h5)


def check_train(fw, work, name, c, Wr, h5):
    """lp.TRAIN's AdamW steps from the imported folder's weights: fwrun train
    against torch.optim.AdamW on hf_forward under Hugging Face's names (decay on
    matrices, none on norms and biases, as fw's groups)."""
    t = lp.TRAIN
    tokens = np.random.RandomState(12).randint(0, VOCAB, size=t["ITERS"] * t["B"] * t["T"] +
                                               40).astype(np.uint16)
    path = os.path.join(work, name + "_train.bin")
    g2.write_shard(path, tokens)
    run = os.path.join(work, name + "_train")
    p = fw("train", PLUG + ",optim/adamw", f"--load={h5}", f"--data={path}", "--no-shuffle",
           f"--micro-batch-size={t['B']}", f"--seq-length={t['T']}",
           f"--train-iters={t['ITERS']}", f"--lr={t['LR']}", "--lr-decay-style=constant",
           f"--weight-decay={t['WD']}", "--clip-grad=0", f"--adam-beta1={t['BETA1']}",
           f"--adam-beta2={t['BETA2']}", f"--adam-eps={t['ADAM_EPS']}", f"--run-dir={run}",
           "--threads=2")
    if not R.check(f"{name}: train from the imported folder runs", p.returncode == 0,
                   g2.describe(p)):
        return
    P = {n: w.clone().requires_grad_(True) for n, w in Wr.items()}
    opt = torch.optim.AdamW([{"params": [w for w in P.values() if w.dim() >= 2],
                              "weight_decay": t["WD"]},
                             {"params": [w for w in P.values() if w.dim() < 2],
                              "weight_decay": 0.0}],
                            lr=t["LR"], betas=(t["BETA1"], t["BETA2"]), eps=t["ADAM_EPS"])
    ref = []
    for k in range(t["ITERS"]):
        x, y = g2.micro_batch(tokens, k, t["B"], t["T"])
        opt.zero_grad()
        loss = F.cross_entropy(hf_forward(c, P, x).reshape(-1, VOCAB), y.reshape(-1))
        loss.backward()
        ref.append(loss.item())
        opt.step()
    got = [o["loss"] for o in map(json.loads, open(os.path.join(run, "metrics.jsonl")))
           if "lr" in o]
    w = max(g2.rel(a, b) for a, b in zip(got, ref)) if len(got) == len(ref) else float("inf")
    R.check(f"{name}: {t['ITERS']} AdamW steps from the import, per-step loss within "
            f"{lp.TOL_STEP:g} of torch's", w <= lp.TOL_STEP,
            f"max rel {w:.2e}; fw {[round(v, 6) for v in got]} torch {[round(v, 6) for v in ref]}")


def check_window_plugins(fw, name, c, h5, ref, val_path):
    """The window through attention/sparse's equal window; refused by flash and by
    sparse with another window: one line, exit 2."""
    w = c["sliding_window"]
    ev = [f"--load={h5}", f"--valid-data={val_path}", f"--micro-batch-size={EVAL_B}",
          f"--seq-length={EVAL_T}", f"--eval-iters={EVAL_K}", "--threads=2"]
    p = fw("eval", "--plugins=arch/decoder,attention/sparse", "--sparse-pattern=window",
           f"--sparse-window={w}", *ev)
    if R.check(f"{name}: eval under attention/sparse --sparse-window={w} runs",
               p.returncode == 0, g2.describe(p)):
        got = json.loads(p.stdout.strip().splitlines()[-1])["eval_loss"]
        r = g2.rel(got, ref)
        R.check(f"{name}: sparse window eval fw {got:.9g} vs torch {ref:.9g}", r <= TOL_EVAL,
                f"rel {r:.2e}")
    for what, args, expect in (
            ("attention/flash", ["--plugins=arch/decoder,attention/flash"],
             "sliding window .* is not supported"),
            (f"attention/sparse --sparse-window={w + 1}",
             ["--plugins=arch/decoder,attention/sparse", f"--sparse-window={w + 1}"],
             f"--sparse-window={w}")):
        p = fw("eval", *args, *ev)
        lines = [l for l in p.stderr.splitlines() if l.strip()]
        R.check(f"{name}: window {w} under {what}: one line, exit 2",
                p.returncode == 2 and len(lines) == 1 and re.search(expect, lines[0]) is not None,
                g2.describe(p))


def check_export(fw, work, name, c, Wr, h5):
    ex = os.path.join(work, name + "_export")
    p = fw("export", h5, ex)
    if not R.check(f"{name}: export runs", p.returncode == 0, g2.describe(p)):
        return
    _, tensors = g2.read_st(os.path.join(ex, "model.safetensors"))
    names = dict(hf_names(c))
    R.check(f"{name}: export has exactly Hugging Face's tensor names", set(tensors) == set(names),
            f"extra {sorted(set(tensors) - set(names))[:4]} "
            f"missing {sorted(set(names) - set(tensors))[:4]}")
    bad = [k for k in names if k in tensors and (
        tensors[k][0] != "F32" or tuple(tensors[k][1]) != names[k] or
        tensors[k][2].astype(np.float32).tobytes() != Wr[k].numpy().tobytes())]
    R.check(f"{name}: export F32, HF shapes, values bit-exact to the folder's", not bad,
            f"{bad[:4]}")
    with open(os.path.join(ex, "config.json")) as f:
        cfg = json.load(f)
    mt = c["model_type"]
    keys = ["num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_size",
            "intermediate_size", "vocab_size", "max_position_embeddings", "tie_word_embeddings",
            "hidden_act"]
    diff = {k: (cfg.get(k), c[k]) for k in keys if cfg.get(k) != c[k]}
    for k in ("rms_norm_eps", "rope_theta"):
        if cfg.get(k) is None or abs(cfg[k] - c[k]) > 1e-12 * abs(c[k]):
            diff[k] = (cfg.get(k), c[k])
    if cfg.get("model_type") != mt or cfg.get("architectures") != [
            {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
             "mistral": "MistralForCausalLM"}[mt]]:
        diff["model_type"] = (cfg.get("model_type"), cfg.get("architectures"))
    if cfg.get("torch_dtype") != "float32":
        diff["torch_dtype"] = cfg.get("torch_dtype")
    want_rs = c.get("rope_scaling")
    got_rs = cfg.get("rope_scaling", "absent")
    if want_rs != got_rs:
        diff["rope_scaling"] = (got_rs, want_rs)
    if mt == "mistral" and cfg.get("sliding_window") != c["sliding_window"]:
        diff["sliding_window"] = cfg.get("sliding_window")
    if mt == "llama" and cfg.get("attention_bias") is not False:
        diff["attention_bias"] = cfg.get("attention_bias")
    R.check(f"{name}: export config.json has the keys transformers reads", not diff, f"{diff}")
    again = os.path.join(work, name + "_again.h5")
    p = fw("import", ex, again)
    if not R.check(f"{name}: re-import of the export runs", p.returncode == 0, g2.describe(p)):
        return
    a, b = g2.h5_tensors(h5), g2.h5_tensors(again)
    diff = [n for n in a if n not in b or a[n].dtype != b[n].dtype or
            a[n].shape != b[n].shape or a[n].tobytes() != b[n].tobytes()]
    R.check(f"{name}: import(export(x)) == x bit-exactly, every tensor",
            set(a) == set(b) and not diff, f"differ: {diff[:5]}; names {sorted(set(a) ^ set(b))}")


def bad_folder(work, tag, name, over=None, shards=1, after=None):
    c = dict(MODELS[name], **(over or {}))
    d = os.path.join(work, "bad_" + tag)
    shutil.rmtree(d, ignore_errors=True)
    write_hf(d, c, random_hf(c, 3), shards)
    if after:
        after(d)
    return d


def drop_shard(d):
    os.remove(os.path.join(d, "model-00002-of-00002.safetensors"))


def wrong_shard(d):
    path = os.path.join(d, "model.safetensors.index.json")
    with open(path) as f:
        idx = json.load(f)
    idx["weight_map"]["model.norm.weight"] = ("model-00002-of-00002.safetensors"
                                              if idx["weight_map"]["model.norm.weight"].startswith(
                                                  "model-00001") else
                                              "model-00001-of-00002.safetensors")
    with open(path, "w") as f:
        json.dump(idx, f)


def check_eos_export(fw, work):
    """A Llama without a tokenizer whose vocabulary holds id 50256: export
    names no end-of-text id (GPT-2's 50256 is not Llama's)."""
    c = dict(MODELS["llama"], vocab_size=50300, hidden_size=16, num_attention_heads=2,
             num_key_value_heads=1, intermediate_size=16, num_hidden_layers=1,
             tie_word_embeddings=True, rope_scaling=None)
    d = os.path.join(work, "llama_v50300")
    write_hf(d, c, random_hf(c, 7))
    h5 = os.path.join(work, "llama_v50300.h5")
    ex = os.path.join(work, "llama_v50300_export")
    p = fw("import", d, h5)
    if R.check("llama, vocabulary 50300, no tokenizer: import runs", p.returncode == 0,
               g2.describe(p)):
        p = fw("export", h5, ex)
        cfg = json.load(open(os.path.join(ex, "config.json"))) if p.returncode == 0 else {}
        R.check("llama, vocabulary 50300, no tokenizer: export writes no eos/bos id (not "
                "GPT-2's 50256)", p.returncode == 0 and "eos_token_id" not in cfg and
                "bos_token_id" not in cfg, f"{g2.describe(p)}; eos {cfg.get('eos_token_id')}")


def check_bad(fw, work):
    yarn = dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=32)
    cases = [
        ("rope_scaling type yarn", "llama", dict(rope_scaling=yarn), 1, None, "config.json",
         r"rope_scaling type \"yarn\" is not supported"),
        ("a missing shard", "llama", None, 2, drop_shard, "model-00002-of-00002.safetensors",
         r"model\.safetensors\.index\.json"),
        ("an index that puts a tensor in the wrong shard", "llama", None, 2, wrong_shard,
         "model.safetensors.index.json", r"model\.norm\.weight"),
        ("mistral sliding_window 0", "mistral", dict(sliding_window=0), 1, None,
         "config.json", r"sliding_window 0 is not null or an integer"),
        ("llama attention_bias true", "llama", dict(attention_bias=True), 1, None,
         "config.json", r"attention_bias true"),
        ("qwen2 use_sliding_window true", "qwen2", dict(use_sliding_window=True), 1, None,
         "config.json", r"use_sliding_window true"),
        ("num_key_value_heads 4 with 6 heads", "llama", dict(num_key_value_heads=4), 1, None,
         "config.json", r"num_key_value_heads 4"),
    ]
    for i, (what, name, over, shards, after, named, expect) in enumerate(cases):
        d = bad_folder(work, str(i), name, over, shards, after)
        out = os.path.join(work, "bad_out.h5")
        p = fw("import", d, out)
        lines = [l for l in p.stderr.splitlines() if l.strip()]
        problems = []
        if p.returncode not in (1, 2):
            problems.append(f"exit {p.returncode}")
        if len(lines) != 1 or not lines[0].startswith("fwrun:"):
            problems.append(f"{len(lines)} stderr lines")
        elif named not in lines[0] or not re.search(expect, lines[0]):
            problems.append("file or problem not named")
        if os.path.exists(out):
            problems.append("output written")
        R.check(f"bad folder: {what}: one line, exit 1/2, no output", not problems,
                f"{problems}: {g2.describe(p)}")


def main():
    a, fw = g2.cli(__doc__)

    def body(work):
        rng = np.random.RandomState(11)
        val = rng.randint(0, VOCAB, size=EVAL_K * EVAL_B * EVAL_T + 40).astype(np.uint16)
        val_path = os.path.join(work, "val.bin")
        g2.write_shard(val_path, val)
        for i, (name, c) in enumerate(MODELS.items()):
            print(f"{name}:")
            check_model(fw, work, name, c, 500 + i, val, val_path)
        check_eos_export(fw, work)
        check_bad(fw, work)

    return R.run("llama_hf", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
