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

RELU_TIED = dict(d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
                 relative_attention_num_buckets=32, relative_attention_max_distance=128,
                 feed_forward_proj="relu", tie_word_embeddings=True, layer_norm_epsilon=1e-6)
GATED_UNTIED = dict(RELU_TIED, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
GATED_ODD = dict(RELU_TIED, d_kv=6, num_decoder_layers=3, feed_forward_proj="gated-gelu",
                 relative_attention_num_buckets=8, relative_attention_max_distance=10)


def flags(c):
    return [f"{k.replace('_', '-')}={str(v).lower() if isinstance(v, bool) else v}"
            for k, v in c.items()] + [f"vocab-size={V}"]


def names(c):
    C, H, D, Fd, nb = c["d_model"], c["num_heads"], c["d_kv"], c["d_ff"], \
        c["relative_attention_num_buckets"]
    gated = c["feed_forward_proj"].startswith("gated")
    out = [("shared.weight", (V, C))]

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
        out.append(("lm_head.weight", (V, C)))
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


def run_fw(args, work, c, W, enc, mask, dec, tgt, h5=None):
    """fw's loss, logits (B, T, V) and {name: gradient}, or None; the weights
    W, or the fw file h5."""
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
                        os.path.join(args.plugin_path, "attention", "mha.so"), d] + flags(c),
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, OMP_NUM_THREADS="2"))
    if not R.check("t5_driver runs", p.returncode == 0, g2.describe(p)):
        return None
    loss = float(np.fromfile(os.path.join(d, "loss.f32"), np.float32)[0])
    logits = np.fromfile(os.path.join(d, "logits.f32"), np.float32).reshape(B, T, V)
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
    loss = F.cross_entropy(logits.reshape(-1, V), torch.tensor(tgt).long().reshape(-1),
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
    return dict(architectures=["T5ForConditionalGeneration"], model_type="t5", vocab_size=V,
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


def check_model(args, work, name, c, seed):
    W = random_weights(c, seed)
    enc, mask, dec, tgt = batch(seed)
    got = run_fw(args, work, c, W, enc, mask, dec, tgt)
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


def check_padding(args, work, c, W, base):
    enc, mask, dec, tgt = batch(5)
    real = tgt >= 0
    g = torch.Generator().manual_seed(7)
    for what, row, same in (("the pad token", PAD, True), ("a real token", int(enc[1, 0]), False)):
        W2 = dict(W)
        E = W["shared.weight"].clone()
        E[row] += 3.0 * torch.randn(E.shape[1], generator=g)
        W2["shared.weight"] = E
        got = run_fw(args, work, c, W2, enc, mask, dec, tgt)
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
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"t5_parity: {R.passed} passed, {R.failed} failed")
    sys.exit(1 if R.failed else 0)


if __name__ == "__main__":
    main()
