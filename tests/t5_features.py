#!/usr/bin/python3
"""t5_features.py - arch/encdec (T5) beyond t5_parity: generation options,
eval --predict-with-generate, PEFT on T5, attention plugins.

Usage: /usr/bin/python3 tests/t5_features.py --fwrun PATH --plugin-path DIR --driver PATH

Oracles (none of them fw's output):
  - SQuAD v1.1's metric: a transcription of the official evaluation script
    (normalize_answer, f1_score, exact_match_score) against
    fw_rt_squad_score through tests/t5_driver --squad, on hand-picked and
    random pairs (articles, punctuation, Unicode case and spaces); EM equal,
    F1 within 1e-12.
  - fwrun eval --predict-with-generate: the predictions are t5_parity's torch
    greedy search decoded as bytes; each record's exact match and F1, and
    their means in percent, are the script's on (prediction, target).
  - fwrun generate with sampling (--temperature, --top-k, --top-p,
    --repetition-penalty, --seed): a torch transcription of HF's repetition
    penalty and of the sampler fw/runtime/sample.h documents (the draws from
    the counter RNG fw_rng_uniform, splitmix64, transcribed); --stop against
    the torch greedy text cut at the stop string; --interactive line by line
    against torch; --chat without a template refused in one line;
    generation_config.json's max_length as Hugging Face's for an
    encoder-decoder (max_length - 1 new tokens, not less the source) against
    torch greedy with that many tokens.
  - beam search scored as transformers 4.34+ BeamHypotheses.add
    (generated_len without the decoder start token): fw against the
    transcription on sources where the older count (start token included)
    picks another hypothesis, so the check can fail.
  - PEFT on T5 (peft/lora, peft/ia3 with their T5 defaults, peft/prompt,
    peft/prefix): 10 fwrun train AdamW steps from fw's initial adapter
    against torch.optim.AdamW on t5_parity's transcription with PEFT's
    formulas written out (LoRA y = W x + (alpha/r) B A x; IA3 y = l * W x, or
    W (l * x) for feedforward wo; prompt tuning: virtual tokens before the
    encoder's inputs_embeds with mask ones, PeftModelForSeq2SeqLM; prefix
    tuning: past_key_values for the decoder's self-attention only, relative
    positions shifted by the prefix as T5Attention computes them); loss and
    gradient norm of every step within 1e-4 relative.
  (attention/flash and attention/sparse on T5: tests/t5_attention.py.)
Ends with "t5_features: N passed, M failed"; exit 0 only when nothing failed.
"""
import argparse
import collections
import json
import math
import os
import random
import re
import shutil
import string
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as g2  # noqa: E402
import t5_parity as t5  # noqa: E402  (the T5 transcription, weights, records)

torch.set_num_threads(2)
R = g2.Results()
M64 = (1 << 64) - 1


# --- the official SQuAD v1.1 evaluation script, transcribed -----------------------------

def normalize_answer(s):
    def remove_articles(text):
        return re.sub(r'\b(a|an|the)\b', ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def f1_score(prediction, ground_truth):
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def exact_match_score(prediction, ground_truth):
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def check_squad(args, work):
    pairs = [("The Cat", "cat"), ("a  cat,  the dog!", "Cat dog"), ("an_apple", "an apple"),
             ("Théâtre Noir", "THÉÂTRE noir"), ("ΣΑΣ", "σας"), ("", ""), ("the", ""),
             ("x y z", "x x y"), ("x x y", "x y"), ("the€x", "€x"), ("a\u00a0b", "a b"),
             ("1,000", "1000"), ("x\u2028y", "x y"), ("\x1cfoo\x1d", "foo"),
             ("Anthe theory", "anthe theory"), ("naïve café", "naive cafe"),
             ("A-team", "team"), ("a.b", "ab"), ("THE\tEND", "end"), ("ǅemal", "ǆemal"),
             ("Straße", "strasse"), ("İstanbul", "i̇stanbul"), ("٣ apples", "٣ Apples")]
    rng = random.Random(5)
    pool = list("abcdefgh ABC.,!-'_é€Σ") + [" the ", " a ", " an ", "\t", "\u3000", "٣"]
    for _ in range(300):
        pairs.append(tuple("".join(rng.choice(pool) for _ in range(rng.randint(0, 14)))
                           for _ in range(2)))
    path = os.path.join(work, "squad.bin")
    with open(path, "wb") as f:
        for p, r in pairs:
            f.write(p.encode() + b"\0" + r.encode() + b"\0")
    p = subprocess.run([args.driver, "--squad", path], capture_output=True, text=True,
                       timeout=60)
    got = [tuple(map(float, ln.split())) for ln in p.stdout.splitlines()]
    if not R.check("squad: t5_driver --squad runs", p.returncode == 0 and len(got) == len(pairs),
                   g2.describe(p)):
        return
    bad = [(pp, rr, g, (float(exact_match_score(pp, rr)), f1_score(pp, rr)))
           for (pp, rr), g in zip(pairs, got)
           if g[0] != float(exact_match_score(pp, rr)) or abs(g[1] - f1_score(pp, rr)) > 1e-12]
    partial = sum(0 < f1_score(pp, rr) < 1 for pp, rr in pairs)
    R.check(f"squad: exact match and F1 of {len(pairs)} pairs as the official SQuAD v1.1 "
            f"script's ({partial} with partial F1)", not bad and partial > 5, f"{bad[:3]}")


# --- models ---------------------------------------------------------------------------------

BYTE_V = 258                     # the byte tokenizer, <|endoftext|> 256, </s> 257 (added)
BYTE_EOS = 257
ASCII = dict(t5.GATED_UNTIED, vocab_size=BYTE_V)


def ascii_weights(seed):
    """A random untied T5 whose head can only pick lower-case letters, the space
    and </s> (the other rows zero: their logit 0 stays below the best of ~28
    random ones), </s> made likely so that texts end."""
    W = t5.random_weights(ASCII, seed)
    head = W["lm_head.weight"].clone()
    keep = torch.zeros(BYTE_V, dtype=torch.bool)
    keep[[ord(" ")] + list(range(ord("a"), ord("z") + 1)) + [BYTE_EOS]] = True
    head[~keep] = 0
    head[BYTE_EOS] *= 2.0
    W["lm_head.weight"] = head
    return W


def byte_text(ids):
    return bytes(i for i in ids if i < 256).decode("utf-8", "replace")


def ascii_model(work, seed, texts, max_new):
    """ascii_weights(seed) as a checkpoint, and torch's greedy target text of
    each source text (its bytes and </s>)."""
    W = ascii_weights(seed)
    ck = os.path.join(work, f"ascii_{seed}.h5")
    t5.write_ckpt(ck, ASCII, W)
    Wd = {k: v.double() for k, v in W.items()}
    return ck, [byte_text(t5.ref_greedy(ASCII, Wd, list(s.encode()) + [BYTE_EOS], max_new,
                                        BYTE_EOS)) for s in texts]


# --- eval --predict-with-generate -----------------------------------------------------------

def check_eval_generate(fw, work):
    T = 16
    inputs = ["abc def", "hello", "the quick fox", "zz top", "mnop"]
    ck, preds = ascii_model(work, 61, inputs, T)
    # targets that exercise the metric: equal up to case and articles, one
    # extra word, unrelated
    targets = [preds[0].upper() + "!", "The " + preds[1], preds[2] + " extra words",
               "unrelated", preds[4]]
    path = os.path.join(work, "gen_eval.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps({"input": i, "target": t}) + "\n" for i, t in zip(inputs, targets))
    out = os.path.join(work, "gen_eval_out.jsonl")
    p = fw("eval", "--plugins=arch/encdec,attention/mha", f"--load={ck}", f"--valid-data={path}",
           "--tokenizer=byte", "--micro-batch-size=2", f"--seq-length={T}",
           "--predict-with-generate", f"--output={out}", "--threads=2")
    got = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else None
    if not R.check("eval --predict-with-generate runs", got is not None and os.path.exists(out),
                   g2.describe(p)):
        return
    rows = [json.loads(ln) for ln in open(out)]
    R.check("eval --predict-with-generate: each prediction is torch's greedy target",
            [r["prediction"] for r in rows] == preds,
            f"fw {[r['prediction'] for r in rows]} torch {preds}")
    em = [float(exact_match_score(r["prediction"], t)) for r, t in zip(rows, targets)]
    f1 = [f1_score(r["prediction"], t) for r, t in zip(rows, targets)]
    per = all(r["exact_match"] == e and abs(r["f1"] - f) < 1e-9 for r, e, f in zip(rows, em, f1))
    R.check(f"eval --predict-with-generate: per-record EM {em} and F1 "
            f"{[round(x, 3) for x in f1]} as the SQuAD script's",
            per and 0 < sum(em) < len(em) and any(0 < x < 1 for x in f1),
            f"fw {[(r['exact_match'], r['f1']) for r in rows]}")
    R.check("eval --predict-with-generate: exact_match and f1 are the script's means in percent",
            abs(got["exact_match"] - 100 * sum(em) / len(em)) < 1e-6 and
            abs(got["f1"] - 100 * sum(f1) / len(f1)) < 1e-6 and got["generated"] == len(rows),
            f"{got}")
    p = fw("eval", "--plugins=arch/encdec,attention/mha", f"--load={ck}", f"--valid-data={path}",
           "--tokenizer=byte", f"--seq-length={T}", f"--output={out}.2", "--threads=2")
    err = [ln for ln in p.stderr.strip().splitlines() if "seq2seq rows of" not in ln]
    R.check("eval --output on seq2seq without --predict-with-generate: one-line refusal "
            "(after the data summary), exit 2, no file",
            p.returncode == 2 and len(err) == 1 and "--output" in err[0] and
            not os.path.exists(out + ".2"), g2.describe(p))


# --- sampling, stop strings, interactive, chat ---------------------------------------------

def fw_hash_str(s, seed):
    h = 1469598103934665603 ^ seed
    for ch in s.encode():
        h = ((h ^ ch) * 1099511628211) & M64
    return h


def rng_u32(key, counter):
    z = (key ^ (counter * 0x9E3779B97F4A7C15)) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    z ^= z >> 31
    return z >> 32


def rng_uniform(key, counter):
    hi, lo = rng_u32(key, 2 * counter), rng_u32(key, 2 * counter + 1)
    return ((hi << 21) ^ lo) / 9007199254740992.0


def sample(logits, temp, top_k, top_p, key, counter):
    """fw/runtime/sample.h: logits / temperature, the top_k largest (ties to the
    lower id), the shortest prefix whose probability reaches top_p, one drawn
    with the counter RNG."""
    z = [(float(v) / temp, i) for i, v in enumerate(logits.tolist())]
    m = max(v for v, _ in z)
    z.sort(key=lambda t: (-t[0], t[1]))
    n = top_k if 0 < top_k < len(z) else len(z)
    p = [math.exp(v - m) for v, _ in z[:n]]
    s, acc = sum(p), 0.0
    for i in range(n):
        acc += p[i] / s
        if acc >= top_p:
            n = i + 1
            break
    r = rng_uniform(key, counter) * sum(p[:n])
    for i in range(n):
        r -= p[i]
        if r <= 0:
            return z[i][1]
    return z[n - 1][1]


def ref_sample(c, W, src, max_new, eos, temp, top_k, top_p, penalty, seed):
    """Decoding with HF's RepetitionPenaltyLogitsProcessor over the decoder's
    ids (start token included), then the sampler, counter = step."""
    enc = torch.tensor([src])
    seq, key = [0], fw_hash_str("generate", seed)
    with torch.no_grad():
        for q in range(max_new):
            lg = t5.t5_forward(c, W, enc, torch.ones_like(enc), torch.tensor([seq]))[0, -1].clone()
            ids = torch.tensor(sorted(set(seq)))
            sc = lg[ids]
            lg[ids] = torch.where(sc < 0, sc * penalty, sc / penalty)
            t = sample(lg, temp, top_k, top_p, key, q)
            seq.append(t)
            if t == eos:
                break
    return seq[1:]


def check_sampling(fw, work):
    c = t5.GATED_UNTIED
    W = t5.random_weights(c, 71)
    W["lm_head.weight"] = W["lm_head.weight"].clone()
    W["lm_head.weight"][t5.GEN_EOS] *= 1.5
    ck = os.path.join(work, "sample.h5")
    t5.write_ckpt(ck, c, W)
    Wd = {k: v.double() for k, v in W.items()}
    src = [35, 7, 18, 13, 48, 44]
    outs = {}
    for seed, extra, (temp, k, tp, pen) in (
            (5, ["--temperature=0.8", "--top-k=20", "--top-p=0.9", "--repetition-penalty=1.3"],
             (0.8, 20, 0.9, 1.3)),
            (6, ["--temperature=0.8", "--top-k=20", "--top-p=0.9", "--repetition-penalty=1.3"],
             (0.8, 20, 0.9, 1.3)),
            (5, ["--temperature=1.5"], (1.5, 0, 1.0, 1.0))):
        ref = ref_sample(c, Wd, src, 12, t5.GEN_EOS, temp, k, tp, pen, seed)
        runs = [fw("generate", "--plugins=arch/encdec,attention/mha", f"--load={ck}",
                   "--prompt-tokens=" + ",".join(map(str, src)), "--max-new-tokens=12",
                   f"--seed={seed}", "--threads=2", *extra) for _ in range(2)]
        got = [p.stdout.strip() for p in runs]
        outs[(seed, tuple(extra))] = ref
        R.check(f"generate sampling seed {seed} {' '.join(extra)}: the ids of the torch "
                f"transcription, twice", all(p.returncode == 0 for p in runs) and
                got == [",".join(map(str, ref))] * 2,
                f"fw {got} torch {ref}; {g2.describe(runs[0])}")
    a = list(outs.values())
    R.check("generate sampling: seeds 5 and 6 sample different targets (the check can fail)",
            a[0] != a[1], f"{a[0]} {a[1]}")


def check_text_generation(fw, work):
    prompts = ["hello there", "abc"]
    ck, refs = ascii_model(work, 62, prompts, 20)
    base = ["generate", "--plugins=arch/encdec,attention/mha", f"--load={ck}",
            "--tokenizer=byte", "--max-new-tokens=20", "--threads=2"]
    p = fw(*base, f"--prompt={prompts[0]}")
    R.check("generate --prompt (greedy, the default without generation_config): torch's text",
            p.returncode == 0 and p.stdout == refs[0] + "\n", f"fw {p.stdout!r} torch {refs[0]!r}")
    text = refs[0]
    stop = text[len(text) // 2:len(text) // 2 + 2] if len(text) >= 4 else ""
    if R.check("generate --stop: the greedy text is long enough to hold a stop string",
               len(stop) == 2, repr(text)):
        p = fw(*base, f"--prompt={prompts[0]}", f"--stop={stop}")
        want = text[:text.index(stop)] + "\n"
        R.check(f"generate --stop={stop!r}: the text up to the stop string",
                p.returncode == 0 and p.stdout == want, f"fw {p.stdout!r} want {want!r}")
        p = fw(*base, f"--prompt={prompts[0]}", json.dumps(["qqqq", stop]).join(["--stop=", ""]))
        R.check("generate --stop='[...]' (a JSON list): the text up to the first match",
                p.returncode == 0 and p.stdout == want, f"fw {p.stdout!r} want {want!r}")
    p = subprocess.run([fw.exe] + base + ["--interactive", "--encoder-seq-length=24"],
                       input="\n".join(prompts) + "\n", env=fw.env, capture_output=True,
                       text=True, timeout=120)
    R.check("generate --interactive: one target a line of stdin, torch's texts",
            p.returncode == 0 and p.stdout == "".join(r + "\n" for r in refs),
            f"fw {p.stdout!r} torch {refs}; {g2.describe(p)}")
    p = subprocess.run([fw.exe] + base + ["--interactive", "--encoder-seq-length=4"],
                       input="a much longer source\n", env=fw.env, capture_output=True,
                       text=True, timeout=120)
    R.check("generate --interactive: a source beyond --encoder-seq-length is reported",
            p.returncode == 1 and "--encoder-seq-length" in p.stderr, g2.describe(p))
    # generation_config.json's max_length bounds the decoder's ids, its start
    # token included (Hugging Face's MaxLengthCriteria): max_length - 1 new
    # tokens, whatever the source's length
    side = os.path.join(work, "max_length")
    os.makedirs(side, exist_ok=True)
    shutil.copy(ck, os.path.join(side, "model.h5"))
    L = 6
    with open(os.path.join(side, "generation_config.json"), "w") as f:
        json.dump({"max_length": L}, f)
    src = list(prompts[0].encode()) + [BYTE_EOS]
    W = {k: v.double() for k, v in ascii_weights(62).items()}
    want = byte_text(t5.ref_greedy(ASCII, W, src, L - 1, BYTE_EOS))
    if R.check(f"generation_config max_length={L}: torch's greedy target is longer than "
               f"{L - 1} tokens and the source than {L} (the check can fail)",
               len(refs[0]) > L - 1 and len(src) > L and len(want) == L - 1, repr(refs[0])):
        p = fw("generate", "--plugins=arch/encdec,attention/mha",
               f"--load={os.path.join(side, 'model.h5')}", "--tokenizer=byte",
               f"--prompt={prompts[0]}", "--threads=2")
        R.check(f"generate with generation_config max_length={L} on T5: max_length - 1 "
                f"tokens, torch's greedy text", p.returncode == 0 and p.stdout == want + "\n",
                f"fw {p.stdout!r} torch {want!r}; {g2.describe(p)}")
    p = fw(*base, "--prompt=hi", "--chat")
    R.check("generate --chat on a T5 without a chat template: one-line refusal",
            p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1 and
            "chat template" in p.stderr and not p.stdout, g2.describe(p))
    p = fw(*base, "--prompt=hi", "--num-beams=2", "--temperature=0.7")
    R.check("generate --num-beams with --temperature: one-line refusal (exit 2)",
            p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, g2.describe(p))


# --- beam search length normalisation -------------------------------------------------------

def check_beam_length(args, work):
    c = t5.GATED_UNTIED
    differ, ok, bad = 0, 0, []
    runs = 0
    for seed in (81, 82, 83):
        W = t5.random_weights(c, seed)
        W["lm_head.weight"] = W["lm_head.weight"].clone()
        W["lm_head.weight"][t5.GEN_EOS] *= 2.5
        h5 = os.path.join(work, f"beam_{seed}.h5")
        t5.write_weights(h5, c, W)
        Wd = {k: v.double() for k, v in W.items()}
        rng = np.random.RandomState(seed)
        for _ in range(3):
            src = rng.randint(2, c["vocab_size"], rng.randint(3, 9)).tolist()
            for N, lp in ((3, 2.0), (4, 1.0), (2, -1.0)):
                new = t5.ref_beam(c, Wd, src, N, 10, lp)
                old = t5.ref_beam(c, Wd, src, N, 10, lp, prompt_len=0)
                got = t5.fw_generate(args, work, c, h5, src, N, 10, 10, lp)
                runs += 1
                differ += new != old
                ok += got == new
                if got != new:
                    bad.append((src, N, lp, got if isinstance(got, list) else g2.describe(got),
                                new))
    R.check(f"beam search: ids identical to transformers >= 4.34's scoring (generated length, "
            f"no start token) in {runs} runs, {differ} of which the older count changes",
            ok == runs and differ > 0, f"{bad[:2]}")


# --- PEFT on T5 -----------------------------------------------------------------------------

def peft_forward(c, W, A, kind, enc_ids, enc_mask, dec_ids, nvt=0, dec_virtual=None):
    """t5_parity's T5ForConditionalGeneration with PEFT's method on top, from its
    formulas: lin() is every linear layer (LoRA, IA3), prompt tuning prepends to
    the encoder's inputs_embeds, prefix tuning hands past_key_values to the
    decoder's self-attention. dec_virtual (P2, C): PeftModelForSeq2SeqLM's
    num_transformer_submodules 2, virtual tokens before the decoder's
    inputs_embeds, their logits dropped (its labels of -100 there)."""
    eps, H, D = c["layer_norm_epsilon"], c["num_heads"], c["d_kv"]
    fmin = torch.finfo(torch.float64).min

    def lin(name, x):
        y = x @ W[name + ".weight"].t() if kind != "ia3" or name + ".ia3_l" not in A or \
            A[name + ".ia3_l"].shape[0] != 1 else (x * A[name + ".ia3_l"][0]) @ W[name + ".weight"].t()
        if kind == "lora" and name + ".lora_A.weight" in A:
            y = y + (x @ A[name + ".lora_A.weight"].t()) @ A[name + ".lora_B.weight"].t()
        if kind == "ia3" and name + ".ia3_l" in A and A[name + ".ia3_l"].shape[1] == 1:
            y = y * A[name + ".ia3_l"][:, 0]
        return y

    def attention(p, x, kv, bias, prefix=None):
        N, q, k = x.shape[0], x.shape[1], kv.shape[1]
        shape = lambda t, n: t.view(N, n, H, D).transpose(1, 2)  # noqa: E731
        Q, K, Vv = shape(lin(p + ".q", x), q), shape(lin(p + ".k", kv), k), shape(lin(p + ".v", kv), k)
        if prefix is not None:
            pk, pv = prefix
            K = torch.cat([pk.expand(N, -1, -1, -1), K], 2)
            Vv = torch.cat([pv.expand(N, -1, -1, -1), Vv], 2)
        att = (Q @ K.transpose(3, 2) + bias).softmax(-1)
        return lin(p + ".o", (att @ Vv).transpose(1, 2).reshape(N, q, H * D))

    def ffn(p, x):
        d = p + ".DenseReluDense."
        if c["feed_forward_proj"] == "gated-gelu":
            h = t5.gelu_new(lin(d + "wi_0", x)) * lin(d + "wi_1", x)
        else:
            h = F.relu(lin(d + "wi", x))
        return lin(d + "wo", h)

    x = W["shared.weight"][enc_ids]
    mask = enc_mask.double()
    if kind == "prompt":
        x = torch.cat([A["prompt.embedding.weight"].expand(x.shape[0], -1, -1), x], 1)
        mask = torch.cat([torch.ones(x.shape[0], nvt, dtype=torch.float64), mask], 1)
    S, Td = x.shape[1], dec_ids.shape[1]
    ext = (1.0 - mask[:, None, None, :]) * fmin
    pb = t5.compute_bias(c, W["encoder.block.0.layer.0.SelfAttention.relative_attention_bias"
                              ".weight"], S, S, True) + ext
    for l in range(c["num_layers"]):
        p = f"encoder.block.{l}.layer"
        h = t5.layer_norm(x, W[p + ".0.layer_norm.weight"], eps)
        x = x + attention(p + ".0.SelfAttention", h, h, pb)
        x = x + ffn(p + ".1", t5.layer_norm(x, W[p + ".1.layer_norm.weight"], eps))
    enc = t5.layer_norm(x, W["encoder.final_layer_norm.weight"], eps)
    P = nvt if kind == "prefix" else 0
    # T5Attention with a past of P: positions P..P+Td-1 against keys 0..P+Td-1
    full = t5.compute_bias(c, W["decoder.block.0.layer.0.SelfAttention.relative_attention_bias"
                                ".weight"], P + Td, P + Td, False)[:, :, P:, :]
    causal = torch.tril(torch.ones(Td, P + Td), diagonal=P)[None, None]
    dpb = full + (1.0 - causal.double()) * fmin
    y = W["shared.weight"][dec_ids]
    P2 = 0 if dec_virtual is None else dec_virtual.shape[0]
    if P2:
        y = torch.cat([dec_virtual.expand(y.shape[0], -1, -1), y], 1)
        Td = y.shape[1]
        full = t5.compute_bias(c, W["decoder.block.0.layer.0.SelfAttention.relative_attention_bias"
                                    ".weight"], Td, Td, False)
        dpb = full + (1.0 - torch.tril(torch.ones(Td, Td)).double()[None, None]) * fmin
    for l in range(c["num_decoder_layers"]):
        p = f"decoder.block.{l}.layer"
        pre = None
        if P:
            kv = A[f"prefix.h.{l}.kv"]
            pre = (kv[:, :H * D].reshape(P, H, D).transpose(0, 1)[None],
                   kv[:, H * D:].reshape(P, H, D).transpose(0, 1)[None])
        h = t5.layer_norm(y, W[p + ".0.layer_norm.weight"], eps)
        y = y + attention(p + ".0.SelfAttention", h, h, dpb, pre)
        y = y + attention(p + ".1.EncDecAttention", t5.layer_norm(y, W[p + ".1.layer_norm.weight"],
                                                                 eps), enc, ext)
        y = y + ffn(p + ".2", t5.layer_norm(y, W[p + ".2.layer_norm.weight"], eps))
    y = t5.layer_norm(y, W["decoder.final_layer_norm.weight"], eps)[:, P2:]
    if c["tie_word_embeddings"]:
        return (y * c["d_model"] ** -0.5) @ W["shared.weight"].t()
    return y @ W["lm_head.weight"].t()


def peft_replay(c, W, A0, kind, micro, nvt):
    """torch.optim.AdamW on the adapter tensors alone (all 2-D: decayed), as
    fwrun train sets it up: [(loss, gradient norm)] a step."""
    Wd = {k: v.double() for k, v in W.items()}
    A = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in A0.items()}
    order = sorted(A)
    opt = torch.optim.AdamW([A[n] for n in order], lr=t5.TRAIN["LR"],
                            betas=(t5.TRAIN["BETA1"], t5.TRAIN["BETA2"]), eps=t5.TRAIN["ADAM_EPS"],
                            weight_decay=t5.TRAIN["WD"])
    out = []
    for k in range(t5.TRAIN["ITERS"]):
        opt.zero_grad()
        enc, mask, dec, tgt = t5.padded(micro(k))
        logits = peft_forward(c, Wd, A, kind, torch.tensor(enc), torch.tensor(mask),
                              torch.tensor(dec), nvt)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                               torch.tensor(tgt).reshape(-1), ignore_index=-1)
        loss.backward()
        out.append((loss.item(), math.sqrt(sum(float((A[n].grad ** 2).sum()) for n in order))))
        opt.step()
    return out


def adapter_tensors(path):
    with h5py.File(path, "r") as f:
        return {k: np.array(v) for k, v in f["tensors"].items()}


def pairs_setup(work, name, seed, n, te=t5.TT, td=t5.TT):
    """n random {"input", "target"} records in a JSONL file, a random t5.SEQ
    checkpoint, and micro(k): the rows (cut to te, td) of micro-batch k."""
    recs = t5.pair_records(np.random.RandomState(seed), n)
    data = os.path.join(work, f"{name}_pairs.jsonl")
    with open(data, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    W = t5.random_weights(t5.SEQ, seed)
    ck = os.path.join(work, f"{name}_base.h5")
    t5.write_ckpt(ck, t5.SEQ, W)
    rows = [t5.pair_row(r, te, td) for r in recs]
    per = (len(rows) + t5.TB - 1) // t5.TB
    return recs, rows, data, W, ck, lambda k: rows[(k % per) * t5.TB:(k % per + 1) * t5.TB]


def check_peft(fw, work, attn="attention/mha", only=None):
    """only: the kinds to run (lora, ia3, prompt, prefix), else all."""
    c = t5.SEQ
    _, _, data, W, ck, micro = pairs_setup(work, "peft", 91, 12)
    tr = t5.TRAIN
    common = [f"--load={ck}", f"--data={data}", "--tokenizer=byte", "--no-shuffle",
              f"--micro-batch-size={t5.TB}", f"--seq-length={t5.TT}", "--threads=2",
              f"--seed={t5.SEED}"]
    for kind, plugin, opts, nvt, expect in (
            ("lora", "peft/lora", [], 0, ["SelfAttention.q.lora_A", "EncDecAttention.v.lora_B"]),
            ("ia3", "peft/ia3", [], 0, ["SelfAttention.k.ia3_l", "EncDecAttention.v.ia3_l",
                                        "DenseReluDense.wo.ia3_l"]),
            ("prompt", "peft/prompt", ["--prompt-num-virtual-tokens=3",
                                       "--prompt-num-transformer-submodules=1"], 3,
             ["prompt.embedding.weight"]),
            ("prefix", "peft/prefix", ["--prefix-num-virtual-tokens=2"], 2, ["prefix.h.1.kv"])):
        if only and kind not in only:
            continue
        plugins = f"--plugins=arch/encdec,{attn},optim/adamw,{plugin}"
        tag = f"{kind}_{attn.replace('/', '_')}"
        init_run = os.path.join(work, f"peft_init_{tag}")
        p = fw("train", plugins, *common, *opts, "--train-iters=1", "--lr=0", "--weight-decay=0",
               f"--run-dir={init_run}")
        init = os.path.join(init_run, "adapter-00000001.h5")
        if not R.check(f"{plugin} on T5{'' if attn == 'attention/mha' else ' with ' + attn}: fwrun train --lr=0 saves the initial adapter",
                       p.returncode == 0 and os.path.exists(init), g2.describe(p)):
            continue
        A0 = adapter_tensors(init)
        names = sorted(A0)
        R.check(f"{plugin} on T5{'' if attn == 'attention/mha' else ' with ' + attn}: the adapter holds {', '.join(expect)} ({len(names)} tensors)",
                all(any(e in n for n in names) for e in expect) and
                (kind != "prefix" or len(names) == c["num_decoder_layers"]),
                f"{names[:6]}")
        run = os.path.join(work, f"peft_{tag}")
        p = fw("train", plugins, *common, f"--adapter={init}", f"--train-iters={tr['ITERS']}",
               f"--lr={tr['LR']}", "--lr-decay-style=constant", f"--weight-decay={tr['WD']}",
               "--clip-grad=0", f"--adam-beta1={tr['BETA1']}", f"--adam-beta2={tr['BETA2']}",
               f"--adam-eps={tr['ADAM_EPS']}", f"--run-dir={run}")
        if not R.check(f"{plugin} on T5{'' if attn == 'attention/mha' else ' with ' + attn}: fwrun train --adapter runs", p.returncode == 0,
                       g2.describe(p)):
            continue
        ref = peft_replay(c, W, A0, kind, micro, nvt)
        got = [o for o in map(json.loads, open(os.path.join(run, "metrics.jsonl"))) if "lr" in o]
        if not R.check(f"{plugin} on T5{'' if attn == 'attention/mha' else ' with ' + attn}: {len(ref)} steps logged", len(got) == len(ref),
                       f"{len(got)}"):
            continue
        wl = max(g2.rel(g["loss"], r[0]) for g, r in zip(got, ref))
        wn = max(g2.rel(g["grad_norm"], r[1]) for g, r in zip(got, ref))
        moved = abs(ref[-1][0] - ref[0][0]) > 1e-3
        R.check(f"{plugin} on T5{'' if attn == 'attention/mha' else ' with ' + attn}: {len(ref)} AdamW steps, loss and gradient norm within 1e-4 of "
                f"PEFT's formulas in torch", wl <= 1e-4 and wn <= 1e-4 and moved,
                f"max rel loss {wl:.2e}, norm {wn:.2e}; fw {got[-1]['loss']:.7f} torch "
                f"{ref[-1][0]:.7f} (first {ref[0][0]:.7f})")


# --- separate encoder and decoder lengths ---------------------------------------------------

def check_lengths(fw, work):
    """--encoder-seq-length 12, --decoder-seq-length 6 (inputs cut to 11 tokens
    and </s>, targets to 5 and </s>): 10 AdamW steps against the torch replay
    of rows cut that way; the checkpoint keeps the lengths for eval."""
    c, te, td = t5.SEQ, 12, 6
    recs, rows, data, W, ck, micro = pairs_setup(work, "len", 97, 10, te, td)
    run = os.path.join(work, "len_run")
    p = t5.fw_train(fw, run, ck, data, "--no-shuffle", f"--train-iters={t5.TRAIN['ITERS']}",
                    f"--encoder-seq-length={te}", f"--decoder-seq-length={td}")
    if not R.check("--encoder-seq-length/--decoder-seq-length: fwrun train runs",
                   p.returncode == 0, g2.describe(p)):
        return
    ref = t5.adamw_replay(c, W, micro, te, td)
    got = [o for o in map(json.loads, open(os.path.join(run, "metrics.jsonl"))) if "lr" in o]
    wl = max(g2.rel(g["loss"], r[0]) for g, r in zip(got, ref))
    wn = max(g2.rel(g["grad_norm"], r[1]) for g, r in zip(got, ref))
    R.check(f"--encoder-seq-length={te} --decoder-seq-length={td}: {len(ref)} AdamW steps within "
            f"1e-4 of torch on rows cut to those lengths", len(got) == len(ref) and wl <= 1e-4
            and wn <= 1e-4, f"max rel loss {wl:.2e}, norm {wn:.2e}")
    n_targets = sum(len(r[2]) for r in rows)
    n_full = sum(len(t5.pair_row(r)[2]) for r in recs)
    last = os.path.join(run, f"ckpt-{t5.TRAIN['ITERS']:08d}.h5")
    evals = [fw("eval", "--plugins=arch/encdec,attention/mha", f"--load={last}",
                f"--valid-data={data}", "--threads=2", *extra)
             for extra in ([], [f"--encoder-seq-length={te}", f"--decoder-seq-length={td}"])]
    outs = [json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else None
            for p in evals]
    R.check(f"eval of the checkpoint takes its encoder/decoder lengths: {n_targets} target tokens "
            f"(not the {n_full} of --seq-length rows), as with the flags given",
            outs[0] is not None and outs[0] == outs[1] and outs[0]["targets"] == n_targets and
            n_targets != n_full, f"{outs}; {g2.describe(evals[0])}")
    # the read-ahead of --calculate-per-token-loss holds the longer encoder rows
    run = os.path.join(work, "len_per_token")
    p = t5.fw_train(fw, run, ck, data, "--no-shuffle", "--train-iters=1",
                    f"--global-batch-size={2 * t5.TB}", "--calculate-per-token-loss",
                    f"--encoder-seq-length={te}", f"--decoder-seq-length={td}")
    with torch.no_grad():
        tot, cnt = t5.batch_loss(c, {k: v.double() for k, v in W.items()}, rows[:2 * t5.TB],
                                 te, td)
    got = [o for o in map(json.loads, open(os.path.join(run, "metrics.jsonl"))) if "lr" in o] \
        if p.returncode == 0 else []
    R.check("--calculate-per-token-loss with a longer encoder: the first step's loss is torch's "
            "mean over both micro-batches' targets", len(got) == 1 and
            g2.rel(got[0]["loss"], tot.item() / cnt) <= 1e-5,
            f"{got} torch {tot.item() / cnt}; {g2.describe(p)}")
    p = fw("train", "--plugins=arch/decoder,attention/mha,optim/adamw", "--n-layer=1",
           "--n-embd=16", "--n-head=2", "--vocab-size=300", "--n-positions=32",
           f"--data={data}", "--tokenizer=byte", "--seq-length=16", "--encoder-seq-length=8",
           "--train-iters=1",
           f"--run-dir={os.path.join(work, 'len_dec')}", "--threads=2")
    R.check("--encoder-seq-length with a decoder arch: one-line refusal (exit 2)",
            p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and
            "--encoder-seq-length" in p.stderr, g2.describe(p))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fwrun", required=True)
    ap.add_argument("--plugin-path", required=True)
    ap.add_argument("--driver", required=True)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    args.plugin_path = os.path.abspath(args.plugin_path)
    work = tempfile.mkdtemp(prefix="t5_features.")
    try:
        fw = g2.Fw(os.path.abspath(args.fwrun), args.plugin_path)
        check_squad(args, work)
        check_eval_generate(fw, work)
        check_sampling(fw, work)
        check_text_generation(fw, work)
        check_beam_length(args, work)
        check_peft(fw, work)
        check_lengths(fw, work)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"t5_features: {R.passed} passed, {R.failed} failed")
    sys.exit(1 if R.failed else 0)


if __name__ == "__main__":
    main()
