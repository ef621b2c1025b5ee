#!/usr/bin/python3
"""t5_parity.py - arch/encdec (T5) against a plain-torch transcription.

Usage: /usr/bin/python3 tests/t5_parity.py --fwrun PATH --plugin-path DIR --driver PATH

The reference is written from Hugging Face's modeling_t5 (T5LayerNorm,
T5Attention with _relative_position_bucket and compute_bias, the extended
attention masks (1 - mask) * finfo.min, T5DenseActDense and
T5DenseGatedActDense with gelu_new, T5ForConditionalGeneration's tied head
scaled by d_model ** -0.5), in float64, not from fw. Random weights in HF's
names are written as an fw tensors file; tests/t5_driver runs one forward and
backward of fw's model on the same padded batch.
Checks:
  - the relative position buckets for every distance in [-300, 300], both
    directions, two bucket settings, against the transcription of
    _relative_position_bucket;
  - loss within 1e-5 relative, logits and the gradient of every parameter
    within 2e-5 of the largest: ReLU FFN with a tied head, gated-GELU with an
    untied head, gated-GELU tied with more decoder than encoder blocks and
    num_heads * d_kv != d_model; padding in encoder and decoder inputs;
  - padding: changing the pad token's embedding changes no logit of a real
    decoder position (encoder self-attention and cross-attention mask it),
    while changing a real token's embedding does.
  - Hugging Face folders of the three models (one with the embed_tokens
    copies): fwrun import, loss and gradients of the imported file against
    torch, fwrun export bit for bit with T5Config's values; import refusals
    (no relative attention table, feed_forward_proj gated-silu, a model_type
    no arch reads): one line, no output file;
  - seq2seq data through fwrun ({"input", "target"} JSONL, padded): eval
    loss within 1e-5, 10 AdamW steps (loss and gradient norm per step within
    1e-4) against torch.optim.AdamW on the transcription, ReLU/tied and
    gated-GELU/untied; such records for a decoder-only arch are refused;
  - span corruption: the noise masks against a transcription of
    run_t5_mlm_flax's random_spans_noise_mask (numpy's shuffle replaced by
    fw's documented one) for many lengths and keys, with the 0.15 / 3
    statistics; text documents through fwrun eval (loss within 1e-5 against
    HF's create_sentinel_ids / filter_input_ids transcribed) and 10 AdamW
    steps; a resumed run bit-identical to an uninterrupted one.
Ends with "t5_parity: N passed, M failed"; exit 0 only when none failed.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as g2  # noqa: E402  (Results, rel, describe)

torch.set_num_threads(2)
R = g2.Results()

V = 50
PAD = V - 1           # padding id of the test batches (the start token is 0)
B, T = 3, 12
TOL_LOSS, TOL_GRAD = 1e-5, 2e-5

RELU_TIED = dict(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
                 relative_attention_num_buckets=32, relative_attention_max_distance=128,
                 feed_forward_proj="relu", tie_word_embeddings=True, layer_norm_epsilon=1e-6)
GATED_UNTIED = dict(RELU_TIED, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
GATED_ODD = dict(RELU_TIED, d_kv=6, num_decoder_layers=3, feed_forward_proj="gated-gelu",
                 relative_attention_num_buckets=8, relative_attention_max_distance=10)


def flags(c):
    return [f"{k.replace('_', '-')}={str(v).lower() if isinstance(v, bool) else v}"
            for k, v in c.items()]


def names(c):
    C, H, D, Fd, nb = c["d_model"], c["num_heads"], c["d_kv"], c["d_ff"], \
        c["relative_attention_num_buckets"]
    gated = c["feed_forward_proj"].startswith("gated")
    out = [("shared.weight", (c["vocab_size"], C))]

    def attn(p):
        return [(p + ".q.weight", (H * D, C)), (p + ".k.weight", (H * D, C)),
                (p + ".v.weight", (H * D, C)), (p + ".o.weight", (C, H * D))]

    def ffn(p):
        wi = [(p + ".DenseReluDense.wi_0.weight", (Fd, C)), (p + ".DenseReluDense.wi_1.weight", (Fd, C))] \
            if gated else [(p + ".DenseReluDense.wi.weight", (Fd, C))]
        return wi + [(p + ".DenseReluDense.wo.weight", (C, Fd))]

    for stack, n, parts in (("encoder", c["num_layers"], 2), ("decoder", c["num_decoder_layers"], 3)):
        for l in range(n):
            p = f"{stack}.block.{l}.layer"
            out += attn(p + ".0.SelfAttention")
            if l == 0:
                out.append((p + ".0.SelfAttention.relative_attention_bias.weight", (nb, H)))
            out.append((p + ".0.layer_norm.weight", (C,)))
            if parts == 3:
                out += attn(p + ".1.EncDecAttention") + [(p + ".1.layer_norm.weight", (C,))]
            out += ffn(f"{p}.{parts - 1}") + [(f"{p}.{parts - 1}.layer_norm.weight", (C,))]
        out.append((f"{stack}.final_layer_norm.weight", (C,)))
    if not c["tie_word_embeddings"]:
        out.append(("lm_head.weight", (c["vocab_size"], C)))
    return out


def random_weights(c, seed):
    g = torch.Generator().manual_seed(seed)
    W = {}
    for n, shape in names(c):
        if "layer_norm" in n:
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif n == "shared.weight":
            t = torch.randn(shape, generator=g)
        elif "relative_attention_bias" in n:
            t = 0.5 * torch.randn(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g) / math.sqrt(shape[1])
        W[n] = t.float().contiguous()
    return W


def write_weights(path, c, W):
    with h5py.File(path, "w") as f:
        f.attrs["fw_format"] = "fw-tensors"
        f.attrs["fw_format_version"] = np.int32(1)
        f.attrs["fw_arch"] = "arch/encdec"
        t = f.create_group("tensors", track_order=True)
        for n, _ in names(c):
            t[n] = W[n].numpy()


# --- the reference: Hugging Face modeling_t5, transcribed ---------------------------------

def relative_position_bucket(relative_position, bidirectional=True, num_buckets=32,
                             max_distance=128):
    relative_buckets = 0
    if bidirectional:
        num_buckets //= 2
        relative_buckets += (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
    else:
        relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    relative_position_if_large = max_exact + (
        torch.log(relative_position.float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    relative_position_if_large = torch.min(
        relative_position_if_large, torch.full_like(relative_position_if_large, num_buckets - 1))
    relative_buckets += torch.where(is_small, relative_position, relative_position_if_large)
    return relative_buckets


def compute_bias(c, table, q_len, k_len, bidirectional):
    context_position = torch.arange(q_len, dtype=torch.long)[:, None]
    memory_position = torch.arange(k_len, dtype=torch.long)[None, :]
    bucket = relative_position_bucket(memory_position - context_position, bidirectional,
                                      c["relative_attention_num_buckets"],
                                      c["relative_attention_max_distance"])
    return table[bucket].permute([2, 0, 1]).unsqueeze(0)      # (1, H, q, k)


def layer_norm(x, w, eps):
    variance = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(variance + eps))


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def t5_attention(c, W, p, x, kv, bias):
    N, q, k = x.shape[0], x.shape[1], kv.shape[1]
    H, D = c["num_heads"], c["d_kv"]
    shape = lambda t, n: t.view(N, n, H, D).transpose(1, 2)  # noqa: E731
    Q = shape(x @ W[p + ".q.weight"].t(), q)
    K = shape(kv @ W[p + ".k.weight"].t(), k)
    Vv = shape(kv @ W[p + ".v.weight"].t(), k)
    scores = Q @ K.transpose(3, 2) + bias                     # no 1/sqrt(d)
    attn = scores.softmax(-1)
    return (attn @ Vv).transpose(1, 2).reshape(N, q, H * D) @ W[p + ".o.weight"].t()


def t5_ffn(c, W, p, x):
    d = p + ".DenseReluDense."
    if c["feed_forward_proj"] == "gated-gelu":
        h = gelu_new(x @ W[d + "wi_0.weight"].t()) * (x @ W[d + "wi_1.weight"].t())
    else:
        h = F.relu(x @ W[d + "wi.weight"].t())
    return h @ W[d + "wo.weight"].t()


def t5_forward(c, W, enc_ids, enc_mask, dec_ids):
    """T5ForConditionalGeneration's logits for a padded batch."""
    eps = c["layer_norm_epsilon"]
    fmin = torch.finfo(W["shared.weight"].dtype).min
    S, Td = enc_ids.shape[1], dec_ids.shape[1]
    ext = (1.0 - enc_mask[:, None, None, :].to(W["shared.weight"].dtype)) * fmin
    x = W["shared.weight"][enc_ids]
    pb = compute_bias(c, W["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
                      S, S, True) + ext
    for l in range(c["num_layers"]):
        p = f"encoder.block.{l}.layer"
        x = x + t5_attention(c, W, p + ".0.SelfAttention",
                             layer_norm(x, W[p + ".0.layer_norm.weight"], eps),
                             layer_norm(x, W[p + ".0.layer_norm.weight"], eps), pb)
        x = x + t5_ffn(c, W, p + ".1", layer_norm(x, W[p + ".1.layer_norm.weight"], eps))
    enc = layer_norm(x, W["encoder.final_layer_norm.weight"], eps)

    causal = torch.tril(torch.ones(Td, Td))[None, None]
    dpb = compute_bias(c, W["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
                       Td, Td, False) + (1.0 - causal.to(ext.dtype)) * fmin
    y = W["shared.weight"][dec_ids]
    for l in range(c["num_decoder_layers"]):
        p = f"decoder.block.{l}.layer"
        h = layer_norm(y, W[p + ".0.layer_norm.weight"], eps)
        y = y + t5_attention(c, W, p + ".0.SelfAttention", h, h, dpb)
        y = y + t5_attention(c, W, p + ".1.EncDecAttention",
                             layer_norm(y, W[p + ".1.layer_norm.weight"], eps), enc, ext)
        y = y + t5_ffn(c, W, p + ".2", layer_norm(y, W[p + ".2.layer_norm.weight"], eps))
    y = layer_norm(y, W["decoder.final_layer_norm.weight"], eps)
    if c["tie_word_embeddings"]:
        return (y * c["d_model"] ** -0.5) @ W["shared.weight"].t()
    return y @ W["lm_head.weight"].t()


# --- batches ------------------------------------------------------------------------------

def batch(seed):
    """Encoder ids, mask, decoder inputs (start token 0 + targets shifted right)
    and targets (-1 on padding), padded with PAD to T, lengths varied."""
    rng = np.random.RandomState(seed)
    enc = np.full((B, T), PAD, np.int32)
    mask = np.zeros((B, T), np.int32)
    dec = np.full((B, T), PAD, np.int32)
    tgt = np.full((B, T), -1, np.int32)
    for b, (ne, nt) in enumerate([(T, T), (5, 7), (9, 3)]):
        enc[b, :ne] = rng.randint(1, PAD, ne)
        mask[b, :ne] = 1
        y = rng.randint(1, PAD, nt)
        tgt[b, :nt] = y
        dec[b, 0] = 0
        dec[b, 1:nt] = y[:-1]
    return enc, mask, dec, tgt


def run_fw(args, work, c, W, enc, mask, dec, tgt, h5=None, attn="mha"):
    """fw's loss, logits (B, T, V) and {name: gradient}, or None; the weights
    W, or the fw file h5; attn: the attention plugin."""
    d = tempfile.mkdtemp(dir=work)
    if h5:
        shutil.copy(h5, os.path.join(d, "weights.h5"))
    else:
        write_weights(os.path.join(d, "weights.h5"), c, W)
    with open(os.path.join(d, "case.txt"), "w") as f:
        f.write(f"{B} {T} 0\n")
    enc.tofile(os.path.join(d, "enc.i32"))
    dec.tofile(os.path.join(d, "dec.i32"))
    tgt.tofile(os.path.join(d, "tgt.i32"))
    np.where(mask[:, None, None, :] > 0, 0.0, -np.inf).astype(np.float32).tofile(
        os.path.join(d, "enc_bias.f32"))
    p = subprocess.run([args.driver, os.path.join(args.plugin_path, "arch", "encdec.so"),
                        os.path.join(args.plugin_path, "attention", attn + ".so"), d] + flags(c),
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, OMP_NUM_THREADS="2"))
    if not R.check("t5_driver runs", p.returncode == 0, g2.describe(p)):
        return None
    loss = float(np.fromfile(os.path.join(d, "loss.f32"), np.float32)[0])
    logits = np.fromfile(os.path.join(d, "logits.f32"), np.float32).reshape(B, T, -1)
    flat = np.fromfile(os.path.join(d, "grads.f32"), np.float32)
    grads, at = {}, 0
    for line in open(os.path.join(d, "names.txt")):
        n, k = line.split()
        grads[n] = flat[at:at + int(k)]
        at += int(k)
    return loss, logits, grads


def reference(c, W, enc, mask, dec, tgt):
    P = {n: t.double().clone().requires_grad_(True) for n, t in W.items()}
    logits = t5_forward(c, P, torch.tensor(enc).long(), torch.tensor(mask), torch.tensor(dec).long())
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.tensor(tgt).long().reshape(-1),
                           ignore_index=-1)
    loss.backward()
    return loss.item(), logits.detach(), {n: t.grad for n, t in P.items()}


def err(a, b):
    a, b = torch.as_tensor(np.asarray(a), dtype=torch.float64).reshape(-1), b.double().reshape(-1)
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


# --- Hugging Face folders -----------------------------------------------------------------

CONFIG_KEYS = ("d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
               "relative_attention_num_buckets", "relative_attention_max_distance",
               "feed_forward_proj", "tie_word_embeddings", "layer_norm_epsilon")


def hf_config(c):
    return dict(architectures=["T5ForConditionalGeneration"], model_type="t5",
                dropout_rate=0.0, is_encoder_decoder=True, decoder_start_token_id=0,
                pad_token_id=0, eos_token_id=1, **c)


def write_hf(d, c, W, copies=False, drop=None, **config):
    """W under HF's keys in d (config.json, model.safetensors); copies: the
    embed_tokens.weight copies of shared.weight older files carry; drop: a key
    left out."""
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(dict(hf_config(c), **config), f, indent=2)
    keys = [n for n, _ in names(c) if n != drop]
    if copies:
        keys += ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]
    ents = [(k, "F32", list(W[k if "embed_tokens" not in k else "shared.weight"].shape),
             W[k if "embed_tokens" not in k else "shared.weight"].numpy().astype("<f4").tobytes())
            for k in keys]
    g2.write_st(os.path.join(d, "model.safetensors"), *g2.st_header(ents))


def check_hf(args, fw, work, name, c, seed, copies):
    """Import a random HF folder, the loss and gradients of fw on it against
    torch, export it back bit for bit."""
    W = random_weights(c, seed)
    hf, h5 = os.path.join(work, f"hf_{seed}"), os.path.join(work, f"hf_{seed}.h5")
    write_hf(hf, c, W, copies)
    p = fw("import", hf, h5)
    if not R.check(f"HF {name}: fwrun import", p.returncode == 0, g2.describe(p)):
        return
    enc, mask, dec, tgt = batch(seed)
    got = run_fw(args, work, c, W, enc, mask, dec, tgt, h5=h5)
    if got is None:
        return
    rl, _, rg = reference(c, W, enc, mask, dec, tgt)
    worst = max(err(got[2][n], rg[n]) for n in rg)
    R.check(f"HF {name}: imported model's loss (rel {g2.rel(got[0], rl):.1e}) and gradients "
            f"(worst {worst:.1e}) match torch", g2.rel(got[0], rl) <= TOL_LOSS and
            worst <= TOL_GRAD)
    out = os.path.join(work, f"hf_{seed}_export")
    p = fw("export", h5, out)
    if not R.check(f"HF {name}: fwrun export", p.returncode == 0, g2.describe(p)):
        return
    _, st = g2.read_st(os.path.join(out, "model.safetensors"))
    want = {n for n, _ in names(c)}
    same = set(st) == want and all(
        st[n][0] == "F32" and np.array_equal(st[n][2].view("<u4"), W[n].numpy().view("<u4"))
        for n in want)
    R.check(f"HF {name}: export writes every tensor under HF's key, bit for bit", same,
            f"keys differ: {sorted(set(st) ^ want)[:4]}")
    cfg = json.load(open(os.path.join(out, "config.json")))
    bad = [k for k in CONFIG_KEYS + ("vocab_size", "model_type") if cfg.get(k) != hf_config(c)[k]]
    R.check(f"HF {name}: exported config.json has T5Config's values", not bad and
            cfg.get("architectures") == ["T5ForConditionalGeneration"], f"differ: {bad}")


def check_hf_refusals(fw, work):
    c = RELU_TIED
    W = random_weights(c, 3)
    cases = (("no relative attention table",
              dict(drop="encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
              "relative_attention_bias"),
             ("feed_forward_proj gated-silu", dict(feed_forward_proj="gated-silu"),
              "feed_forward_proj"),
             ("model_type bart with T5 tensors", dict(model_type="bart"), "model_type"))
    for i, (what, kw, needle) in enumerate(cases):
        d, h5 = os.path.join(work, f"bad_hf_{i}"), os.path.join(work, f"bad_hf_{i}.h5")
        drop = kw.pop("drop", None)
        write_hf(d, c, W, drop=drop, **kw)
        p = fw("import", d, h5)
        lines = p.stderr.strip().splitlines()
        R.check(f"HF import refuses {what}: one line naming it, exit 1 or 2, no file",
                p.returncode in (1, 2) and len(lines) == 1 and needle in lines[0] and
                not os.path.exists(h5), g2.describe(p))


# --- seq2seq data and training through fwrun ----------------------------------------------

SEQ_V = 300                      # bytes, <|endoftext|> 256, </s> 257 (added), sentinels 299 down
EOS, START = 257, 0
TB, TT = 4, 16                   # fwrun's micro-batch and --seq-length
SEQ = dict(RELU_TIED, vocab_size=SEQ_V)
SEQ_GATED = dict(GATED_UNTIED, vocab_size=SEQ_V)
TRAIN = dict(ITERS=10, LR=2e-3, WD=0.1, BETA1=0.9, BETA2=0.95, ADAM_EPS=1e-8)
SEED = 1234
M64 = (1 << 64) - 1


def write_ckpt(path, c, W):
    """W as an fw checkpoint of arch/encdec with c's options (its config INI)."""
    write_weights(path, c, W)
    with h5py.File(path, "a") as f:
        f.attrs["config"] = "[arch/encdec]\n" + "".join(
            f"{a.partition('=')[0]} = {a.partition('=')[2]}\n" for a in flags(c))


def pair_records(rng, n):
    words = lambda: "".join(chr(97 + rng.randint(8)) for _ in range(rng.randint(2, 9)))  # noqa
    return [{"input": words() + " " + words(), "target": words()} for _ in range(n)]


def pair_row(r, te=TT, td=TT):
    """fw's documented seq2seq row: ids + </s> (cut to te, td), the decoder's
    input = start + target shifted right."""
    enc = (list(r["input"].encode())[:te - 1]) + [EOS]
    tgt = (list(r["target"].encode())[:td - 1]) + [EOS]
    return enc, [START] + tgt[:-1], tgt


def padded(rows, te=TT, td=TT):
    """[(enc, dec, tgt)] as padded arrays (pad 0, targets -1), te and td wide."""
    n = len(rows)
    enc, mask = np.zeros((n, te), np.int64), np.zeros((n, te), np.int64)
    dec, tgt = np.zeros((n, td), np.int64), np.full((n, td), -1, np.int64)
    for i, (e, d, t) in enumerate(rows):
        enc[i, :len(e)], mask[i, :len(e)] = e, 1
        dec[i, :len(d)], tgt[i, :len(t)] = d, t
    return enc, mask, dec, tgt


def batch_loss(c, P, rows, te=TT, td=TT):
    enc, mask, dec, tgt = padded(rows, te, td)
    logits = t5_forward(c, P, torch.tensor(enc), torch.tensor(mask), torch.tensor(dec))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.tensor(tgt).reshape(-1),
                           ignore_index=-1, reduction="sum"), int((tgt >= 0).sum())


def adamw_replay(c, W, micro, te=TT, td=TT):
    """torch.optim.AdamW with Megatron's groups (no decay on 1-D tensors), as
    fwrun sets it up: [(loss, gradient norm)] a step; micro(k) the rows of step k."""
    P = {n: t.double().clone().requires_grad_(True) for n, t in W.items()}
    order = [n for n, _ in names(c)]
    opt = torch.optim.AdamW([{"params": [P[n] for n in order if P[n].dim() >= 2],
                              "weight_decay": TRAIN["WD"]},
                             {"params": [P[n] for n in order if P[n].dim() < 2],
                              "weight_decay": 0.0}],
                            lr=TRAIN["LR"], betas=(TRAIN["BETA1"], TRAIN["BETA2"]),
                            eps=TRAIN["ADAM_EPS"])
    out = []
    for k in range(TRAIN["ITERS"]):
        opt.zero_grad()
        total, count = batch_loss(c, P, micro(k), te, td)
        loss = total / count
        loss.backward()
        out.append((loss.item(), math.sqrt(sum(float((P[n].grad ** 2).sum()) for n in order))))
        opt.step()
    return out


def fw_train(fw, run, ck, data, *extra, attn="attention/mha"):
    return fw("train", f"--plugins=arch/encdec,{attn},optim/adamw", f"--load={ck}",
              f"--data={data}", "--tokenizer=byte", f"--micro-batch-size={TB}",
              f"--seq-length={TT}", f"--lr={TRAIN['LR']}", "--lr-decay-style=constant",
              f"--weight-decay={TRAIN['WD']}", "--clip-grad=0", f"--adam-beta1={TRAIN['BETA1']}",
              f"--adam-beta2={TRAIN['BETA2']}", f"--adam-eps={TRAIN['ADAM_EPS']}",
              f"--run-dir={run}", f"--seed={SEED}", "--threads=2", *extra)


def compare_steps(name, run, ref):
    got = [o for o in map(json.loads, open(os.path.join(run, "metrics.jsonl"))) if "lr" in o]
    if not R.check(f"{name}: {len(ref)} steps logged", len(got) == len(ref), f"{len(got)}"):
        return
    wl = max(g2.rel(g["loss"], r[0]) for g, r in zip(got, ref))
    wn = max(g2.rel(g["grad_norm"], r[1]) for g, r in zip(got, ref))
    R.check(f"{name}: {len(ref)} AdamW steps, per-step loss and gradient norm within 1e-4 of "
            f"torch", wl <= 1e-4 and wn <= 1e-4, f"max rel loss {wl:.2e}, norm {wn:.2e}; last "
            f"fw {got[-1]['loss']:.7f} torch {ref[-1][0]:.7f}")


def check_sft(fw, work, c, name, seed, attn="attention/mha", opts=()):
    """fwrun train on {"input", "target"} JSONL vs the torch replay; fwrun eval;
    attn: the attention plugin, opts: its options."""
    rng = np.random.RandomState(seed)
    recs = pair_records(rng, 18)         # 5 micro-batches a pass, the last one padded
    path = os.path.join(work, f"pairs_{seed}.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    W = random_weights(c, seed)
    ck = os.path.join(work, f"s2s_{seed}.h5")
    write_ckpt(ck, c, W)
    rows = [pair_row(r) for r in recs]
    per = (len(rows) + TB - 1) // TB
    micro = lambda k: rows[(k % per) * TB:(k % per + 1) * TB]  # noqa: E731
    with torch.no_grad():
        s, n = 0.0, 0
        for k in range(per):
            l, cnt = batch_loss(c, {k2: v.double() for k2, v in W.items()}, micro(k))
            s, n = s + l.item(), n + cnt
    p = fw("eval", f"--plugins=arch/encdec,{attn}", f"--load={ck}",
           f"--valid-data={path}", "--tokenizer=byte", f"--micro-batch-size={TB}",
           f"--seq-length={TT}", "--threads=2", *opts)
    got = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else None
    if R.check(f"seq2seq {name}: fwrun eval runs", got is not None, g2.describe(p)):
        r = g2.rel(got["eval_loss"], s / n)
        R.check(f"seq2seq {name}: eval loss over {n} target tokens fw {got['eval_loss']:.9g} "
                f"vs torch {s / n:.9g}", r <= TOL_LOSS and got["targets"] == n, f"rel {r:.2e}")
    run = os.path.join(work, f"sft_{seed}_{attn.replace('/', '_')}")
    p = fw_train(fw, run, ck, path, "--no-shuffle", f"--train-iters={TRAIN['ITERS']}", *opts,
                 attn=attn)
    if R.check(f"seq2seq {name}: fwrun train runs", p.returncode == 0, g2.describe(p)):
        compare_steps(f"seq2seq {name}", run, adamw_replay(c, W, micro))


# fw's span corruption: Hugging Face's run_t5_mlm_flax functions, transcribed,
# with numpy's shuffle replaced by fw's documented one (tasks.h, seq2seq.c).

def mix(x):
    x = (x + 0x9e3779b97f4a7c15) & M64
    x = ((x ^ (x >> 30)) * 0xbf58476d1ce4e5b9) & M64
    x = ((x ^ (x >> 27)) * 0x94d049bb133111eb) & M64
    return x ^ (x >> 31)


def fw_shuffle(a, key):
    for i in range(len(a) - 1, 0, -1):
        j = mix(key ^ i) % (i + 1)
        a[i], a[j] = a[j], a[i]


def compute_input_and_target_lengths(inputs_length, noise_density, mean_noise_span_length):
    def _tokens_length_to_inputs_length_targets_length(tokens_length):
        num_noise_tokens = int(round(tokens_length * noise_density))
        num_nonnoise_tokens = tokens_length - num_noise_tokens
        num_noise_spans = int(round(num_noise_tokens / mean_noise_span_length))
        return num_nonnoise_tokens + num_noise_spans + 1, num_noise_tokens + num_noise_spans + 1

    tokens_length = inputs_length
    while _tokens_length_to_inputs_length_targets_length(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    return tokens_length


def random_spans_noise_mask(length, noise_density, mean_noise_span_length, key):
    num_noise_tokens = int(np.round(length * noise_density))
    num_noise_tokens = min(max(num_noise_tokens, 1), length - 1)
    num_noise_spans = int(np.round(num_noise_tokens / mean_noise_span_length))
    num_noise_spans = max(num_noise_spans, 1)
    num_nonnoise_tokens = length - num_noise_tokens

    def _random_segmentation(num_items, num_segments, k):
        mask_indices = list(np.arange(num_items - 1) < (num_segments - 1))
        fw_shuffle(mask_indices, k)                      # np.random.shuffle in HF
        first_in_segment = np.pad(np.array(mask_indices, dtype=bool), [[1, 0]])
        segment_id = np.cumsum(first_in_segment)
        _, segment_length = np.unique(segment_id, return_counts=True)
        return segment_length

    noise_span_lengths = _random_segmentation(num_noise_tokens, num_noise_spans, mix(key ^ 1))
    nonnoise_span_lengths = _random_segmentation(num_nonnoise_tokens, num_noise_spans,
                                                 mix(key ^ 2))
    interleaved_span_lengths = np.reshape(
        np.stack([nonnoise_span_lengths, noise_span_lengths], axis=1), [num_noise_spans * 2])
    span_starts = np.cumsum(interleaved_span_lengths)[:-1]
    span_start_indicator = np.zeros((length,), dtype=np.int8)
    span_start_indicator[span_starts] = True
    span_num = np.cumsum(span_start_indicator)
    return np.equal(span_num % 2, 1)


def create_sentinel_ids(mask_indices, top):
    start_indices = mask_indices - np.roll(mask_indices, 1, axis=-1) * mask_indices
    start_indices[:, 0] = mask_indices[:, 0]
    sentinel_ids = np.where(start_indices != 0, np.cumsum(start_indices, axis=-1), start_indices)
    sentinel_ids = np.where(sentinel_ids != 0, (top - sentinel_ids), 0)
    sentinel_ids -= mask_indices - start_indices
    return sentinel_ids


def filter_input_ids(input_ids, sentinel_ids):
    input_ids_full = np.where(sentinel_ids != 0, sentinel_ids, input_ids)
    input_ids = input_ids_full[input_ids_full >= 0].reshape((input_ids.shape[0], -1))
    return np.concatenate([input_ids, np.full((input_ids.shape[0], 1), EOS)], axis=-1)


def span_rows(texts, index, seed):
    """The corrupted rows of micro-batch index of text documents (no shuffle)."""
    L = compute_input_and_target_lengths(TT, 0.15, 3.0)
    stream = [t for d in texts for t in list(d.encode()) + [EOS]]
    raw = [stream[k:k + L] for k in range(0, len(stream) - L + 1, L)]
    per = (len(raw) + TB - 1) // TB
    base = mix(mix(seed) ^ index)
    out = []
    for b, row in enumerate(raw[(index % per) * TB:(index % per + 1) * TB]):
        ids = np.array([row])
        mask = random_spans_noise_mask(L, 0.15, 3.0, mix(base ^ b))[None].astype(np.int8)
        enc = filter_input_ids(ids, create_sentinel_ids(mask, SEQ_V))[0].tolist()
        tgt = filter_input_ids(ids, create_sentinel_ids(1 - mask, SEQ_V))[0].tolist()
        out.append((enc, [START] + tgt[:-1], tgt))
    return out, per


def check_bad_data(fw, work):
    """{"input", "target"} records for a decoder-only arch: one line naming the
    file and line, exit 2, no run directory."""
    path, run = os.path.join(work, "pairs_bad.jsonl"), os.path.join(work, "gpt2_on_pairs")
    with open(path, "w") as f:
        f.write(json.dumps({"input": "abc", "target": "cba"}) + "\n")
    p = fw("train", "--plugins=arch/decoder,attention/mha,optim/adamw", "--n-layer=1",
           "--n-head=2", "--n-embd=16", "--vocab-size=300", "--n-positions=32",
           f"--data={path}", "--tokenizer=byte", "--micro-batch-size=1", "--seq-length=8",
           "--train-iters=1", f"--run-dir={run}")
    lines = p.stderr.strip().splitlines()
    R.check("seq2seq records for a decoder-only arch: one line naming file:line, exit 2, "
            "nothing written", p.returncode == 2 and len(lines) == 1 and
            f"{path}:1:" in lines[0] and "encoder-decoder" in lines[0] and
            not os.path.exists(run), g2.describe(p))


def check_noise_masks(args):
    """fw_rt_span_noise_mask against HF's random_spans_noise_mask (with fw's
    shuffle) for many lengths and keys; the densities and span lengths."""
    bad, noise, spans, total = [], 0, 0, 0
    for length in list(range(20, 120, 7)) + [568]:
        for key in (1, 99, 2 ** 63 + 5):
            for dens, mean in ((0.15, 3.0), (0.3, 5.0)):
                p = subprocess.run([args.driver, "--spans", str(length), str(key), str(dens),
                                    str(mean)], capture_output=True, text=True, timeout=30)
                ref = "".join("1" if x else "0" for x in
                              random_spans_noise_mask(length, dens, mean, key))
                if p.stdout.strip() != ref:
                    bad.append((length, key, dens))
                if dens == 0.15:
                    noise += ref.count("1")
                    spans += ref.count("01") + ref.startswith("1")
                    total += length
    R.check("span corruption: the noise masks equal HF's random_spans_noise_mask (fw's "
            "shuffle) for 16 lengths, 3 keys, 2 settings", not bad, f"differ: {bad[:4]}")
    R.check("span corruption: noise density 0.15 and mean span 3 over those masks",
            abs(noise / total - 0.15) < 0.01 and abs(noise / spans - 3.0) < 0.3,
            f"density {noise / total:.4f}, mean span {noise / spans:.2f}")


def check_span(fw, work):
    rng = np.random.RandomState(4)
    texts = [" ".join("".join(chr(97 + rng.randint(10)) for _ in range(rng.randint(2, 7)))
                      for _ in range(rng.randint(3, 12))) for _ in range(14)]
    path = os.path.join(work, "docs.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    c = SEQ
    W = random_weights(c, 31)
    ck = os.path.join(work, "span.h5")
    write_ckpt(ck, c, W)
    _, per = span_rows(texts, 0, SEED)
    with torch.no_grad():
        s, n = 0.0, 0
        for k in range(per):
            l, cnt = batch_loss(c, {k2: v.double() for k2, v in W.items()}, span_rows(texts, k, SEED)[0])
            s, n = s + l.item(), n + cnt
    p = fw("eval", "--plugins=arch/encdec,attention/mha", f"--load={ck}",
           f"--valid-data={path}", "--tokenizer=byte", f"--micro-batch-size={TB}",
           f"--seq-length={TT}", "--threads=2", f"--seed={SEED}")
    got = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else None
    if R.check("span corruption: fwrun eval runs", got is not None, g2.describe(p)):
        r = g2.rel(got["eval_loss"], s / n)
        R.check(f"span corruption: eval loss over {n} targets (HF's noise mask, sentinels, "
                f"filter) fw {got['eval_loss']:.9g} vs torch {s / n:.9g}",
                r <= TOL_LOSS and got["targets"] == n, f"rel {r:.2e}")
    run = os.path.join(work, "span_run")
    p = fw_train(fw, run, ck, path, "--no-shuffle", f"--train-iters={TRAIN['ITERS']}")
    if R.check("span corruption: fwrun train runs", p.returncode == 0, g2.describe(p)):
        compare_steps("span corruption", run,
                      adamw_replay(c, W, lambda k: span_rows(texts, k, SEED)[0]))
    # resume: 4 steps then --load the run to 10, shuffled: the corruption of
    # each micro-batch comes back with the loader's position
    runs = {}
    for tag, legs in (("straight", [TRAIN["ITERS"]]), ("resumed", [4, TRAIN["ITERS"]])):
        d = os.path.join(work, f"span_{tag}")
        for it in legs:
            first = it == legs[0]
            p = fw("train", "--plugins=arch/encdec,attention/mha,optim/adamw",
                   f"--load={ck}" if first else f"--load={d}", f"--data={path}",
                   *(["--tokenizer=byte"] if first else []), f"--micro-batch-size={TB}",
                   f"--seq-length={TT}", f"--train-iters={it}", "--lr=2e-3",
                   "--lr-decay-style=constant", "--save-interval=4", f"--run-dir={d}",
                   f"--seed={SEED + 1}", "--threads=2")
            if not R.check(f"span corruption: {tag} run to step {it}", p.returncode == 0,
                           g2.describe(p)):
                return
        runs[tag] = {o["step"]: o["loss"] for o in map(json.loads, open(os.path.join(
            d, "metrics.jsonl"))) if "lr" in o}
    same = [runs["resumed"].get(k) == runs["straight"][k] for k in range(5, TRAIN["ITERS"] + 1)]
    R.check("span corruption: a resumed run corrupts and trains exactly as the uninterrupted "
            "one (steps 5-10 bit-identical)", all(same), f"{runs}")


# --- generation -----------------------------------------------------------------------------

GEN_EOS = 1


def ref_greedy(c, W, src, max_new, eos=GEN_EOS):
    """Hugging Face's greedy search, the decoder rerun on the whole prefix each step."""
    enc = torch.tensor([src])
    seq = [START]
    with torch.no_grad():
        for _ in range(max_new):
            t = int(t5_forward(c, W, enc, torch.ones_like(enc), torch.tensor([seq]))[0, -1].argmax())
            seq.append(t)
            if t == eos:
                break
    return seq[1:]


def length_normed(score, n, lp):
    """score / n ** lp in IEEE arithmetic (Python raises at n = 0, which only a
    first-step </s> hypothesis reaches)."""
    d = float(n) ** lp if n > 0 else (1.0 if lp == 0 else math.inf if lp < 0 else 0.0)
    return score / d if d != 0 else (-math.inf if score < 0 else math.inf)


def ref_beam(c, W, src, N, max_new, lp, prompt_len=1):
    """Hugging Face's beam search (BeamSearchScorer, BeamHypotheses; early_stopping
    false, one sequence) as transformers 4.34-4.4x has it, transcribed, without
    caches: a hypothesis is scored by its sum of log-probabilities / generated_len
    ** lp, generated_len = its length less the decoder prompt (the start token),
    and is_done divides by cur_len - decoder_prompt_len. prompt_len=0 counts the
    start token as releases before 4.34 did."""
    V = c["vocab_size"]
    enc = torch.tensor([src] * N)
    seqs, beam_scores = [[START] for _ in range(N)], [0.0] + [-1e9] * (N - 1)
    hyps, worst = [], [1e9]
    max_length, cur, done = max_new + 1, 1, False

    def add(seq, sum_logprobs):
        score = length_normed(sum_logprobs, len(seq) - prompt_len, lp)
        if len(hyps) < N or score > worst[0]:
            hyps.append((score, seq))
            if len(hyps) > N:
                ranked = sorted([(s, i) for i, (s, _) in enumerate(hyps)])
                del hyps[ranked[0][1]]
                worst[0] = ranked[1][0]
            else:
                worst[0] = min(score, worst[0])

    with torch.no_grad():
        while True:
            logits = t5_forward(c, W, enc, torch.ones_like(enc), torch.tensor(seqs))[:, -1]
            scores = F.log_softmax(logits.double(), -1) + torch.tensor(beam_scores)[:, None]
            top_s, top_i = torch.topk(scores.reshape(-1), 2 * N)
            new = []
            for r, (sc, i) in enumerate(zip(top_s.tolist(), top_i.tolist())):
                b, t = i // V, i % V
                if t == GEN_EOS:
                    if r < N:
                        add(seqs[b], sc)
                else:
                    new.append((sc, seqs[b] + [t]))
                if len(new) == N:
                    break
            done = done or (len(hyps) >= N and worst[0] >= length_normed(max(top_s.tolist()),
                                                                      cur - prompt_len, lp))
            beam_scores, seqs = [x for x, _ in new], [q for _, q in new]
            cur += 1
            if done or cur >= max_length:
                break
    if not done:
        for b in range(N):
            add(seqs[b], beam_scores[b])
    best = sorted(hyps, key=lambda x: x[0])[-1][1]
    return best[1:] + ([GEN_EOS] if len(best) < max_length else [])


def fw_generate(args, work, c, h5, src, beams, enc_len, max_new, lp):
    d = tempfile.mkdtemp(dir=work)
    shutil.copy(h5, os.path.join(d, "weights.h5"))
    with open(os.path.join(d, "gen.txt"), "w") as f:
        f.write(f"{beams} {enc_len} {max_new} {lp} {START} {GEN_EOS} 0\n")
    np.array(src, np.int32).tofile(os.path.join(d, "src.i32"))
    p = subprocess.run([args.driver, "--generate", os.path.join(args.plugin_path, "arch", "encdec.so"),
                        os.path.join(args.plugin_path, "attention", "mha.so"), d] + flags(c),
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, OMP_NUM_THREADS="2"))
    if p.returncode != 0:
        return p
    return np.fromfile(os.path.join(d, "out.i32"), np.int32).tolist()


def check_generate_cli(fw, work):
    """fwrun generate on an arch/encdec checkpoint: --prompt-tokens is the
    source, the ids printed are the target (greedy, then --num-beams with
    --length-penalty), against the torch transcriptions."""
    c = GATED_UNTIED
    W = random_weights(c, 52)
    W["lm_head.weight"] = W["lm_head.weight"].clone()
    W["lm_head.weight"][GEN_EOS] *= 2.5
    ck = os.path.join(work, "gen_cli.h5")
    write_ckpt(ck, c, W)
    Wd = {k: v.double() for k, v in W.items()}
    src = [35, 7, 18, 13, 48, 44]
    for extra, ref in (([], ref_greedy(c, Wd, src, 10)),
                       (["--num-beams=3", "--length-penalty=0.6"], ref_beam(c, Wd, src, 3, 10, 0.6))):
        p = fw("generate", "--plugins=arch/encdec,attention/mha", f"--load={ck}",
               "--prompt-tokens=" + ",".join(map(str, src)),
               "--max-new-tokens=10", "--threads=2", *extra)
        got = p.stdout.strip()
        R.check(f"fwrun generate {' '.join(extra) or 'greedy'}: the ids torch generates",
                p.returncode == 0 and got == ",".join(map(str, ref)),
                f"fw {got!r} torch {ref}; {g2.describe(p) if p.returncode else ''}")


def check_generation(args, work):
    """fw_rt_s2s_generate (encoder once, cross K/V once, KV caches, beams as
    rows with reordered caches) against the transcriptions above on random
    models whose </s> is made likely, so that hypotheses end at different
    steps."""
    for name, c, seed in (("relu, tied", RELU_TIED, 51), ("gated-gelu, untied", GATED_UNTIED, 52),
                          ("3 decoder blocks, 8 buckets", GATED_ODD, 53)):
        W = random_weights(c, seed)
        head = "shared.weight" if c["tie_word_embeddings"] else "lm_head.weight"
        W[head] = W[head].clone()
        W[head][GEN_EOS] *= 2.5
        h5 = os.path.join(work, f"gen_{seed}.h5")
        write_weights(h5, c, W)
        Wd = {k: v.double() for k, v in W.items()}
        rng = np.random.RandomState(seed)
        srcs = [rng.randint(2, c["vocab_size"], rng.randint(3, 9)).tolist() for _ in range(3)]
        greedy_ok, beam_ok, ended, runs, bad = 0, 0, 0, 0, []
        for src in srcs:
            got = fw_generate(args, work, c, h5, src, 1, 10, 12, 1.0)
            ref = ref_greedy(c, Wd, src, 12)
            greedy_ok += got == ref
            if got != ref:
                bad.append(("greedy", src, got if isinstance(got, list) else g2.describe(got), ref))
            for N, lp in ((2, 1.0), (4, 0.6), (3, 2.0)):
                got = fw_generate(args, work, c, h5, src, N, 10, 12, lp)
                ref = ref_beam(c, Wd, src, N, 12, lp)
                beam_ok += got == ref
                runs += 1
                ended += ref[-1:] == [GEN_EOS] and len(ref) < 12
                if got != ref:
                    bad.append((f"beams {N} lp {lp}", src, got if isinstance(got, list) else
                                g2.describe(got), ref))
        R.check(f"generation {name}: greedy ids identical to torch for {len(srcs)} sources",
                greedy_ok == len(srcs), f"{bad[:2]}")
        R.check(f"generation {name}: beam search (2/4/3 beams, length penalty 1/0.6/2) ids "
                f"identical to HF's algorithm in torch, {runs} runs ({ended} ended by </s>)",
                beam_ok == runs, f"{bad[:2]}")


# --- checks -------------------------------------------------------------------------------

def check_buckets(args):
    for bidi in (True, False):
        for nb, md in ((32, 128), (16, 40)):
            p = subprocess.run([args.driver, "--buckets", "-300", "300", str(int(bidi)), str(nb),
                                str(md)], capture_output=True, text=True, timeout=30)
            got = [int(x) for x in p.stdout.split()]
            ref = relative_position_bucket(torch.arange(-300, 301), bidi, nb, md).tolist()
            bad = [d for d, a, b in zip(range(-300, 301), got, ref) if a != b]
            R.check(f"relative position bucket, {'bidirectional' if bidi else 'causal'}, "
                    f"{nb} buckets, max distance {md}: every distance in [-300, 300]",
                    p.returncode == 0 and got == ref, f"differs at {bad[:5]}" if bad else "")


def check_model(args, work, name, c, seed, attn="mha"):
    W = random_weights(c, seed)
    enc, mask, dec, tgt = batch(seed)
    got = run_fw(args, work, c, W, enc, mask, dec, tgt, attn=attn)
    if got is None:
        return None
    loss, logits, grads = got
    rl, rlog, rg = reference(c, W, enc, mask, dec, tgt)
    r = g2.rel(loss, rl)
    R.check(f"{name}: loss fw {loss:.9g} vs torch {rl:.9g}", r <= TOL_LOSS, f"rel {r:.2e}")
    real = torch.tensor(tgt >= 0)
    e = err(logits[real.numpy()], rlog[real])
    R.check(f"{name}: logits of real positions within {TOL_GRAD:g}", e <= TOL_GRAD, f"{e:.2e}")
    missing = sorted(set(rg) ^ set(grads))
    if not R.check(f"{name}: fw has exactly the reference's {len(rg)} parameters", not missing,
                   f"differ: {missing[:4]}"):
        return None
    worst = max(((err(grads[n], rg[n]), n) for n in rg))
    R.check(f"{name}: gradient of each of {len(rg)} parameters within {TOL_GRAD:g} of its "
            f"largest", worst[0] <= TOL_GRAD, f"worst {worst[1]} {worst[0]:.2e}")
    return W, logits


def check_padding(args, work, c, W, base, attn="mha"):
    enc, mask, dec, tgt = batch(5)
    real = tgt >= 0
    g = torch.Generator().manual_seed(7)
    for what, row, same in (("the pad token", PAD, True), ("a real token", int(enc[1, 0]), False)):
        W2 = dict(W)
        E = W["shared.weight"].clone()
        E[row] += 3.0 * torch.randn(E.shape[1], generator=g)
        W2["shared.weight"] = E
        got = run_fw(args, work, c, W2, enc, mask, dec, tgt, attn=attn)
        if got is None:
            return
        diff = float(np.abs(got[1][real] - base[real]).max())
        if same:
            R.check("padding: the pad embedding perturbed changes no logit of a real decoder "
                    "position (encoder and cross-attention mask it)", diff <= 1e-6, f"{diff:.2e}")
        else:
            R.check("padding: a real token's embedding perturbed moves the logits (the check "
                    "can fail)", diff > 1e-3, f"{diff:.2e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fwrun", required=True)
    ap.add_argument("--plugin-path", required=True)
    ap.add_argument("--driver", required=True)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    args.plugin_path = os.path.abspath(args.plugin_path)
    work = tempfile.mkdtemp(prefix="t5_parity.")
    try:
        check_buckets(args)
        check_model(args, work, "relu, tied head", RELU_TIED, 5)
        untied = check_model(args, work, "gated-gelu, untied head", GATED_UNTIED, 5)
        check_model(args, work, "gated-gelu tied, 3 decoder blocks, d_kv 6, 8 buckets",
                    GATED_ODD, 11)
        if untied:
            check_padding(args, work, GATED_UNTIED, *untied)
        fw = g2.Fw(os.path.abspath(args.fwrun), args.plugin_path)
        check_hf(args, fw, work, "relu, tied, embed_tokens copies", RELU_TIED, 21, True)
        check_hf(args, fw, work, "gated-gelu, untied (Flan-T5 layout)", GATED_UNTIED, 22, False)
        check_hf(args, fw, work, "gated-gelu, 3 decoder blocks", GATED_ODD, 23, False)
        check_hf_refusals(fw, work)
        check_sft(fw, work, SEQ, "relu, tied", 41)
        check_sft(fw, work, SEQ_GATED, "gated-gelu, untied", 42)
        check_generation(args, work)
        check_generate_cli(fw, work)
        check_bad_data(fw, work)
        check_noise_masks(args)
        check_span(fw, work)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"t5_parity: {R.passed} passed, {R.failed} failed")
    sys.exit(1 if R.failed else 0)


if __name__ == "__main__":
    main()
