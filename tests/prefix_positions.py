#!/usr/bin/python3
"""prefix_positions.py - peft/prefix on RoPE and ALiBi models against plain-torch
transcriptions of Hugging Face taking PEFT's prefix as past_key_values.

Usage: /usr/bin/python3 tests/prefix_positions.py --fwrun PATH --plugin-path DIR

PEFT's PeftModelForCausalLM.forward passes get_prompt's (key, value) pairs as
past_key_values (and, for prefix tuning, prepends ones for them to the
attention mask). What Hugging Face then does, written out here from its code:
  - Llama (modeling_llama): past_seen_tokens = the cache length (nvt);
    cache_position = arange(past_seen, past_seen + T) = position_ids; the
    rotary embedding rotates the new q and k only; the cache update
    concatenates the past (prefix) keys, unrotated, in front; repeat_kv for
    GQA; the causal mask lets query i see keys j <= past + i.
  - BLOOM (modeling_bloom.build_alibi_tensor): alibi = slopes * ((cumsum(mask)
    - 1) * mask) over the widened mask, so key j (prefix first) sits at
    position j; no position embedding.
Models: llama_parity's random "llama" (6 query heads, 2 KV heads, Llama-3
rope scaling) and "alibi" (6 heads). Checks: fwrun eval with the adapter
against torch (1e-5 relative) under attention/mha and attention/flash; 10
AdamW steps of fwrun train against torch (every step's loss and grad norm 1e-4
relative, final prefix 1e-4); a learned-position model whose n-positions
cannot hold nvt + T is refused in one line.
Ends with "prefix_positions: N passed, M failed"; exit 0 only when none failed.
"""
import math
import os
import re
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as g2          # noqa: E402
import llama_parity as lm         # noqa: E402  (models, checkpoints, RoPE, slopes)
import lora_parity as lp          # noqa: E402  (eval driver, metrics)
import peft_parity as pp          # noqa: E402  (training loop, comparisons)

torch.set_num_threads(2)
R = pp.R
NVT = 3
VOCAB = lm.VOCAB


def forward(m, W, idx, table):
    """Logits (B, T, V) of the model with PEFT's prefix table (nvt, L*2*G*D) as
    past_key_values, as Hugging Face computes them."""
    B, T = idx.shape
    C, H, G = m["C"], m["n_head"], m["n_kv"]
    D, Fd, L = C // H, m["ffn"], m["n_layer"]
    P = table.shape[0]
    # get_prompt: view (1, nvt, 2L, G, D), permute [2, 0, 3, 1, 4]: (2L, 1, G, P, D)
    pkv = table.view(1, P, 2 * L, G, D).permute([2, 0, 3, 1, 4])
    pos = torch.arange(P, P + T)                     # cache_position after the past

    def lin(x, n):
        y = x @ W[n + ".weight"].t()
        return y + W[n + ".bias"] if m["bias"] else y

    def norm(x, n):
        if m["norm"] == "rms":
            return lm.rms_norm(x, W[n + ".weight"], m["eps"])
        return F.layer_norm(x, (C,), W[n + ".weight"], W[n + ".bias"], m["eps"])

    x = W["wte.weight"][idx]
    mask = torch.cat([torch.ones(T, P, dtype=torch.bool),
                      torch.ones(T, T, dtype=torch.bool).tril()], dim=1)
    for l in range(L):
        p = f"h.{l}."
        q, k, v = lin(norm(x, p + "ln_1"), p + "attn.c_attn").split([H * D, G * D, G * D], -1)
        q = q.view(B, T, H, D).transpose(1, 2)
        k = k.view(B, T, G, D).transpose(1, 2)
        v = v.view(B, T, G, D).transpose(1, 2)
        if m["pos"] == "rope":                       # new tokens only
            q, k = lm.apply_rope(m, q, pos), lm.apply_rope(m, k, pos)
        k = torch.cat([pkv[2 * l].expand(B, -1, -1, -1), k], dim=2)     # cache update
        v = torch.cat([pkv[2 * l + 1].expand(B, -1, -1, -1), v], dim=2)
        k, v = lm.repeat_kv(k, H // G), lm.repeat_kv(v, H // G)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        if m["pos"] == "alibi":                      # (cumsum(ones) - 1): key j at j
            att = att + lm.bloom_slopes(H)[:, None, None] * torch.arange(P + T).float()
        att = torch.softmax(att.masked_fill(~mask, torch.finfo(att.dtype).min), dim=-1)
        x = x + lin((att @ v).transpose(1, 2).reshape(B, T, C), p + "attn.c_proj")
        f = lin(norm(x, p + "ln_2"), p + "mlp.c_fc")
        if m["mlp"] == "swiglu":
            gate, up = f.split([Fd, Fd], dim=-1)
            f = F.silu(gate) * up
        else:
            f = F.gelu(f, approximate="tanh")
        x = x + lin(f, p + "mlp.c_proj")
    x = norm(x, "ln_f")
    return x @ (W["wte.weight"] if m["tie"] else W["lm_head.weight"]).t()


def ce(m, W, x, y, table):
    return F.cross_entropy(forward(m, W, x, table).reshape(-1, VOCAB), y.reshape(-1))


def table_of(P, m):
    return torch.cat([P[f"prefix.h.{l}.kv"] for l in range(m["n_layer"])], dim=1)


def plugins(attn="mha", train=False):
    return f"--plugins=arch/decoder,attention/{attn}" + (",optim/adamw" if train else "") + \
        ",peft/prefix"


def check_model(fw, work, name, m, tokens, train_path, val_tokens, val_path):
    W = lm.random_weights(m, 7)
    base = os.path.join(work, f"{name}.h5")
    lm.write_ckpt(base, m, W)
    c = pp.TRAIN
    init_run = os.path.join(work, f"init_{name}")
    p = fw("train", plugins(train=True), f"--load={base}", f"--data={train_path}",
           f"--run-dir={init_run}", f"--prefix-num-virtual-tokens={NVT}", "--train-iters=1",
           "--lr=0", "--weight-decay=0", f"--micro-batch-size={c['B']}",
           f"--seq-length={c['T']}", "--threads=2")
    init_path = os.path.join(init_run, "adapter-00000001.h5")
    if not R.check(f"{name}: fwrun train --lr=0 saves the initial prefix", p.returncode == 0 and
                   os.path.exists(init_path), g2.describe(p)):
        return
    run = os.path.join(work, f"run_{name}")
    p = fw("train", plugins(train=True), f"--load={base}", f"--adapter={init_path}",
           f"--data={train_path}", f"--run-dir={run}", *pp.train_args())
    if not R.check(f"{name}: fwrun train --adapter runs", p.returncode == 0, g2.describe(p)):
        return
    init = g2.h5_tensors(init_path)
    P = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in init.items()}
    ref, final = pp.torch_train(P, lambda x, y: ce(m, W, x, y, table_of(P, m)), tokens)
    wl, wn = pp.compare_steps(name, lp.metrics(run), ref)
    last = os.path.join(run, f"adapter-{c['ITERS']:08d}.h5")
    fin = g2.h5_tensors(last) if os.path.exists(last) else {}
    wf = pp.compare_final(name, fin, final)
    if not fin:
        return
    table = table_of({k: torch.from_numpy(v) for k, v in fin.items()}, m)
    with torch.no_grad():
        want = sum(ce(m, W, *g2.micro_batch(val_tokens, k, lp.EVAL_B, lp.EVAL_T), table).item()
                   for k in range(lp.EVAL_K)) / lp.EVAL_K
    for attn in ("mha", "flash"):
        loss, p = lp.eval_fw(fw, plugins(attn), f"--load={base}", f"--adapter={last}",
                             f"--valid-data={val_path}")
        R.check(f"{name}: eval --adapter under attention/{attn} within {pp.TOL_EVAL:g} of "
                f"torch", loss is not None and g2.rel(loss, want) <= pp.TOL_EVAL,
                f"fw {loss} torch {want}; {g2.describe(p)[-300:]}")
    print(f"  [{name}] max relative difference: loss {wl:.2e}, grad norm {wn:.2e}; "
          f"final tensors (abs) {wf if wf is not None else float('nan'):.2e}")


def check_generate(fw, work, name, m, train_path):
    """Greedy generation with a prefix: fw's KV caches start with the prefix
    rows, torch recomputes the whole sequence with the prefix as past."""
    W = lm.random_weights(m, 99, std=0.25)      # blocks that matter for the argmax
    base = os.path.join(work, f"{name}_gen.h5")
    lm.write_ckpt(base, m, W)
    run = os.path.join(work, f"gen_{name}")
    p = fw("train", plugins(train=True), f"--load={base}", f"--data={train_path}",
           f"--run-dir={run}", f"--prefix-num-virtual-tokens={NVT}", "--train-iters=1",
           "--lr=0", "--micro-batch-size=1", "--seq-length=16", "--threads=2")
    adapter = os.path.join(run, "adapter-00000001.h5")
    if not R.check(f"{name}: a prefix for generation", p.returncode == 0 and
                   os.path.exists(adapter), g2.describe(p)):
        return
    table = table_of({k: torch.from_numpy(v) for k, v in g2.h5_tensors(adapter).items()}, m)
    ref, margin = lm.greedy(lambda idx: forward(m, W, idx, table), lm.PROMPT, lm.GEN_NEW)
    plain, _ = lm.greedy(lambda idx: lm.forward(m, W, idx), lm.PROMPT, lm.GEN_NEW)
    R.check(f"{name}: the prefix changes torch's greedy ids (the check can fail)",
            ref != plain, f"{ref}")
    p = fw("generate", plugins(), f"--load={base}", f"--adapter={adapter}",
           "--prompt-tokens=" + ",".join(map(str, lm.PROMPT)),
           f"--max-new-tokens={lm.GEN_NEW}", "--temperature=0", "--threads=2")
    if not R.check(f"{name}: generate with a prefix runs", p.returncode == 0, g2.describe(p)):
        return
    got = [int(t) for t in re.findall(r"-?\d+", p.stdout)]
    if got[:len(lm.PROMPT)] == lm.PROMPT and len(got) == len(lm.PROMPT) + lm.GEN_NEW:
        got = got[len(lm.PROMPT):]
    R.check(f"{name}: greedy {lm.GEN_NEW} tokens with the prefix in the KV cache identical "
            f"to torch", got == ref, f"fw {got} torch {ref}; smallest torch top-2 margin "
            f"{margin:.2e}")


def check_too_long(fw, work, train_path):
    """Learned positions: nvt + T must fit in n-positions."""
    T = pp.TRAIN["T"]
    p = fw("train", plugins(train=True), f"--data={train_path}", "--n-layer=1", "--n-head=2",
           "--n-embd=16", f"--vocab-size={VOCAB}", f"--n-positions={T + NVT - 1}",
           f"--seq-length={T}", "--micro-batch-size=1", "--train-iters=1", "--threads=2",
           f"--prefix-num-virtual-tokens={NVT}", f"--run-dir={os.path.join(work, 'long')}")
    R.check("learned positions: --seq-length plus the prefix beyond --n-positions is refused "
            "in one line", p.returncode != 0 and "prefix" in p.stderr and
            "n-positions" in p.stderr and len(p.stderr.strip().splitlines()) == 1,
            p.stderr[-300:])


def main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fwrun", required=True)
    ap.add_argument("--plugin-path", required=True)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    fw = g2.Fw(os.path.abspath(a.fwrun), os.path.abspath(a.plugin_path))

    def body(work):
        rng = np.random.RandomState(5)
        c = pp.TRAIN
        need = c["ITERS"] * (c["GBS"] // c["B"]) * c["B"] * c["T"] + 1
        tokens = rng.randint(0, VOCAB, size=need + 37).astype(np.uint16)
        val_tokens = rng.randint(0, VOCAB, size=lp.EVAL_K * lp.EVAL_B * lp.EVAL_T + 51) \
            .astype(np.uint16)
        train_path, val_path = os.path.join(work, "train.bin"), os.path.join(work, "val.bin")
        g2.write_shard(train_path, tokens)
        g2.write_shard(val_path, val_tokens)
        for name in ("llama", "alibi"):
            check_model(fw, work, name, lm.MODELS[name], tokens, train_path, val_tokens,
                        val_path)
            check_generate(fw, work, name, lm.MODELS[name], train_path)
        check_too_long(fw, work, train_path)

    return R.run("prefix_positions", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
