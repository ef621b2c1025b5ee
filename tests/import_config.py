#!/usr/bin/python3
"""import_config.py - fwrun import and train refuse model sizes arch/decoder cannot build.

Usage: /usr/bin/python3 tests/import_config.py --fwrun PATH --plugin-path BUILD/plugins

A tiny GPT-2 Hugging Face folder (config.json + model.safetensors, written as
tests/gpt2_parity.py writes them) must import, and so must the variants of
config.json that arch/decoder computes the same way (every tanh-GELU name,
n_inner null or 4 * n_embd, n_ctx instead of n_positions, the GPT-2 switches
at their defaults, reorder_and_upcast_attn, a tokenizer that fits); the
imported file then trains a step. Each bad value of config.json, one case a
rule (sizes, n_embd % n_head, ranges, vocab_size against the folder's
tokenizer, activation_function, layer_norm_epsilon, tie_word_embeddings,
n_inner, model_type, scale_attn_weights, scale_attn_by_inverse_layer_idx,
add_cross_attention, values of the wrong type), and each safetensors file
that disagrees with config.json (a tensor's shape, blocks past n_layer),
must fail with exit code 1 and exactly one stderr line naming the file, the
key and the value, leaving nothing in the output folder (no .h5, no
temporary file). fwrun train with the same sizes as flags must fail with
exit code 2 (usage) and one line naming the option and the value, without
creating its run directory.
Ends with "import_config: N passed, M failed".
"""
import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as gp  # noqa: E402
from tokenize_cli import write_vocab  # noqa: E402  (266 tokens: 256 bytes, merges, EOS)

R = gp.Results()

N_LAYER, N_HEAD, N_EMBD, VOCAB, N_POS = 2, 4, 32, 300, 16


def hf_tensors(n_layer=N_LAYER, C=N_EMBD, vocab=VOCAB, n_pos=N_POS, inner=None, tie=True):
    """[(name, shape)] of a GPT-2 in Hugging Face's layout (Conv1D (in, out))."""
    F = inner or 4 * C
    out = [("wte.weight", (vocab, C)), ("wpe.weight", (n_pos, C))]
    for l in range(n_layer):
        p = f"h.{l}."
        out += [(p + "ln_1.weight", (C,)), (p + "ln_1.bias", (C,)),
                (p + "attn.c_attn.weight", (C, 3 * C)), (p + "attn.c_attn.bias", (3 * C,)),
                (p + "attn.c_proj.weight", (C, C)), (p + "attn.c_proj.bias", (C,)),
                (p + "ln_2.weight", (C,)), (p + "ln_2.bias", (C,)),
                (p + "mlp.c_fc.weight", (C, F)), (p + "mlp.c_fc.bias", (F,)),
                (p + "mlp.c_proj.weight", (F, C)), (p + "mlp.c_proj.bias", (C,))]
    out += [("ln_f.weight", (C,)), ("ln_f.bias", (C,))]
    if not tie:
        out.append(("lm_head.weight", (vocab, C)))
    return out


def config(**over):
    c = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": N_LAYER,
         "n_head": N_HEAD, "n_embd": N_EMBD, "vocab_size": VOCAB, "n_positions": N_POS,
         "n_ctx": N_POS, "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True,
         "activation_function": "gelu_new", "resid_pdrop": 0.0, "embd_pdrop": 0.0,
         "attn_pdrop": 0.0}
    for k, v in over.items():
        if v is DROP:
            c.pop(k, None)
        else:
            c[k] = v
    return c


DROP = object()          # config(key=DROP): the key is left out


def write_folder(d, cfg, tensors=None, tokenizer=False):
    """A Hugging Face folder: cfg as config.json (a dict, or raw text), the
    tensors (default: those of the base config) with small random values."""
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write(cfg if isinstance(cfg, str) else json.dumps(cfg, indent=2))
    rng = np.random.RandomState(len(d))
    entries = [("transformer." + n if i % 2 else n, "F32", list(s),
                (0.02 * rng.randn(*s)).astype("<f4").tobytes())
               for i, (n, s) in enumerate(tensors or hf_tensors())]
    gp.write_st(os.path.join(d, "model.safetensors"), *gp.st_header(entries))
    if tokenizer:
        write_vocab(d)


def one_line(p):
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    return lines, (lines[0] if len(lines) == 1 else "")


def check_imports(fw, work):
    """The valid folder and its accepted variants import; the first trains a
    step from the file. Returns the path of the first import (or None)."""
    print("valid config.json:")
    good = [
        ("the tiny GPT-2", config(), None, False),
        ("explicit defaults of the GPT-2 switches, n_inner null",
         config(n_inner=None, scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
                add_cross_attention=False), None, False),
        ("n_inner = 4 * n_embd, reorder_and_upcast_attn true (fw computes in f32)",
         config(n_inner=4 * N_EMBD, reorder_and_upcast_attn=True), None, False),
        ("activation_function gelu_pytorch_tanh", config(activation_function="gelu_pytorch_tanh"),
         None, False),
        ("activation_function gelu_fast", config(activation_function="gelu_fast"), None, False),
        ("activation_function gelu_accurate", config(activation_function="gelu_accurate"),
         None, False),
        ("no activation_function, layer_norm_epsilon, tie_word_embeddings (HF defaults)",
         config(activation_function=DROP, layer_norm_epsilon=DROP, tie_word_embeddings=DROP),
         None, False),
        ("n_ctx without n_positions", config(n_positions=DROP), None, False),
        ("untied lm_head", config(tie_word_embeddings=False), hf_tensors(tie=False), False),
        ("a tokenizer of 266 tokens, vocab_size 300", config(), None, True),
    ]
    first = None
    for i, (name, cfg, tensors, tok) in enumerate(good):
        d = os.path.join(work, f"good{i}")
        write_folder(d, cfg, tensors, tok)
        out = os.path.join(work, f"good{i}.h5")
        p = fw("import", d, out)
        if R.check(f"imports: {name}", p.returncode == 0 and os.path.exists(out), gp.describe(p)) \
                and first is None:
            first = out
    if first:
        shard = os.path.join(work, "train.bin")
        gp.write_shard(shard, np.random.RandomState(1).randint(0, VOCAB, 200))
        p = fw("train", "--plugins=arch/decoder,attention/mha,optim/adamw", f"--load={first}",
               f"--data={shard}", "--micro-batch-size=1", f"--seq-length={N_POS}",
               "--train-iters=1", f"--run-dir={os.path.join(work, 'run-good')}", "--threads=2")
        R.check("the imported file trains a step", p.returncode == 0, gp.describe(p))
    return first


def bad_import_cases():
    """(name, config.json (dict or text), tensors, tokenizer, file, key, value):
    file is the file the line must name, key and value regexes."""
    C, cases = N_EMBD, []

    def case(name, cfg, key, value, tensors=None, tokenizer=False, file="config.json"):
        cases.append((name, cfg, tensors, tokenizer, file, key, value))

    # sizes (each with a safetensors file that fits it where one can)
    case("n_embd not divisible by n_head", config(n_embd=30), r"n_embd", r"\b30\b.*n_head\b.*\b4\b",
         tensors=hf_tensors(C=30))
    case("n_layer 0", config(n_layer=0), r"n_layer", r"\b0\b", tensors=hf_tensors(n_layer=0))
    case("n_head 0", config(n_head=0), r"n_head", r"\b0\b")
    case("n_head negative", config(n_head=-4), r"n_head", r"-4\b")
    case("n_embd 0", config(n_embd=0), r"n_embd", r"\b0\b")
    case("vocab_size 0", config(vocab_size=0), r"vocab_size", r"\b0\b")
    case("n_positions 0", config(n_positions=0), r"n_positions", r"\b0\b")
    case("n_ctx 0 (no n_positions)", config(n_positions=DROP, n_ctx=0), r"n_ctx", r"\b0\b")
    case("n_layer past arch/decoder's 1024", config(n_layer=5000), r"n_layer", r"\b5000\b")
    case("vocab_size 1 (arch/decoder needs 2)", config(vocab_size=1), r"vocab_size", r"\b1\b",
         tensors=hf_tensors(vocab=1))
    case("n_embd missing", config(n_embd=DROP), r"n_embd", r"missing")
    case("n_embd a string", config(n_embd="32"), r"n_embd", r'"32"')
    case("n_layer a float", config(n_layer=2.0), r"n_layer", r"\b2\.0\b")
    case("vocab_size smaller than the folder's tokenizer (266)",
         config(vocab_size=200), r"vocab_size", r"\b200\b.*\b266\b",
         tensors=hf_tensors(vocab=200), tokenizer=True)
    # activation
    case("activation_function gelu (the erf form)", config(activation_function="gelu"),
         r"activation_function", r'"gelu"')
    case("activation_function relu", config(activation_function="relu"),
         r"activation_function", r'"relu"')
    case("activation_function not a string", config(activation_function=1),
         r"activation_function", r"\b1\b")
    # layer_norm_epsilon
    case("layer_norm_epsilon 0", config(layer_norm_epsilon=0), r"layer_norm_epsilon", r"\b0\b")
    case("layer_norm_epsilon negative", config(layer_norm_epsilon=-1e-5), r"layer_norm_epsilon",
         r"-1e-0?5")
    case("layer_norm_epsilon above 1", config(layer_norm_epsilon=2.5), r"layer_norm_epsilon",
         r"2\.5")
    case("layer_norm_epsilon a string", config(layer_norm_epsilon="1e-5"), r"layer_norm_epsilon",
         r'"1e-5"')
    case("layer_norm_epsilon NaN (as Python writes it)", json.dumps(config(layer_norm_epsilon=float("nan"))),
         r"layer_norm_epsilon", r"NaN")
    case("layer_norm_epsilon Infinity", json.dumps(config(layer_norm_epsilon=float("inf"))),
         r"layer_norm_epsilon", r"Infinity")
    case("layer_norm_epsilon 0 in float32", config(layer_norm_epsilon=1e-50),
         r"layer_norm_epsilon", r"1e-50")
    # tie_word_embeddings
    case("tie_word_embeddings a string", config(tie_word_embeddings="false"),
         r"tie_word_embeddings", r'"false"')
    case("tie_word_embeddings null", config(tie_word_embeddings=None), r"tie_word_embeddings",
         r"null")
    # n_inner
    case("n_inner not 4 * n_embd", config(n_inner=96), r"n_inner", r"\b96\b",
         tensors=hf_tensors(inner=96))
    case("n_inner a string", config(n_inner="128"), r"n_inner", r'"128"')
    # switches that change the math
    case("scale_attn_weights false", config(scale_attn_weights=False), r"scale_attn_weights",
         r"false")
    case("scale_attn_by_inverse_layer_idx true", config(scale_attn_by_inverse_layer_idx=True),
         r"scale_attn_by_inverse_layer_idx", r"true")
    case("add_cross_attention true", config(add_cross_attention=True), r"add_cross_attention",
         r"true")
    case("reorder_and_upcast_attn not a boolean", config(reorder_and_upcast_attn="yes"),
         r"reorder_and_upcast_attn", r'"yes"')
    case("model_type not a string", config(model_type=2), r"model_type", r"\b2\b")
    case("config.json an array", "[1, 2]", r"JSON object", r"")
    # model.safetensors against config.json
    case("wte rows against vocab_size", config(vocab_size=VOCAB + 8), r"wte\.weight.*vocab_size",
         rf"\[{VOCAB}, {C}\].*\[{VOCAB + 8}, {C}\]", file="model.safetensors")
    case("wpe rows against n_positions", config(n_positions=N_POS * 2, n_ctx=N_POS * 2),
         r"wpe\.weight.*n_positions", rf"\[{N_POS}, {C}\].*\[{2 * N_POS}, {C}\]",
         file="model.safetensors")
    case("c_fc width against n_embd (n_inner null)", config(n_inner=None),
         r"h\.0\.mlp\.c_fc\.weight.*n_embd", rf"\[{C}, 96\].*\[{C}, {4 * C}\]",
         tensors=hf_tensors(inner=96), file="model.safetensors")
    case("blocks past n_layer", config(n_layer=1), r"h\.1\..*n_layer", r"\b1\b",
         file="model.safetensors")
    return cases


def check_bad_imports(fw, work):
    print("bad config.json (and safetensors against it):")
    for i, (name, cfg, tensors, tok, file, key, value) in enumerate(bad_import_cases()):
        d = os.path.join(work, f"bad{i}")
        write_folder(d, cfg, tensors, tok)
        outd = os.path.join(work, f"bad{i}_out")
        os.makedirs(outd)
        p = fw("import", d, os.path.join(outd, "out.h5"))
        lines, line = one_line(p)
        named = os.path.join(d, file)
        problems = []
        if p.returncode != 1:
            problems.append(f"exit {p.returncode}, not 1")
        if len(lines) != 1:
            problems.append(f"{len(lines)} stderr lines")
        if not line.startswith("fwrun: " + named):
            problems.append(f"the line does not start with 'fwrun: {named}'")
        if not re.search(key, line):
            problems.append(f"key not named (/{key}/)")
        if not re.search(value, line):
            problems.append(f"value not named (/{value}/)")
        if os.listdir(outd):
            problems.append(f"left {os.listdir(outd)}")
        R.check(f"import refuses {name}", not problems,
                "; ".join(problems) + (" - " if problems else "") + repr(p.stderr.strip()[:400]))


def check_bad_train(fw, work):
    print("fwrun train with the same values as flags:")
    shard = os.path.join(work, "flags.bin")
    gp.write_shard(shard, np.random.RandomState(2).randint(0, 64, 400))
    base = ["--plugins=arch/decoder,attention/mha,optim/adamw", f"--data={shard}",
            "--micro-batch-size=1", "--seq-length=8", "--train-iters=1", "--threads=2",
            "--n-layer=1", "--n-head=2", "--n-embd=16", "--vocab-size=64", "--n-positions=16"]
    cases = [
        ("--n-embd not divisible by --n-head", ["--n-embd=30", "--n-head=4"],
         r"n-embd\b.*\b30\b.*n-head\b.*\b4\b"),
        ("--n-layer 0", ["--n-layer=0"], r"n-layer.*\b0\b"),
        ("--n-head 0", ["--n-head=0"], r"n-head.*\b0\b"),
        ("--n-embd 0", ["--n-embd=0"], r"n-embd.*\b0\b"),
        ("--vocab-size 1", ["--vocab-size=1"], r"vocab-size.*\b1\b"),
        ("--n-positions 0", ["--n-positions=0"], r"n-positions.*\b0\b"),
        ("--seq-length past --n-positions", ["--seq-length=32"],
         r"seq-length\b.*\b32\b.*n-positions\b.*\b16\b"),
        ("--layer-norm-eps 0", ["--layer-norm-eps=0"], r"layer-norm-eps.*\b0\b"),
        ("--layer-norm-eps nan", ["--layer-norm-eps=nan"], r"layer-norm-eps.*nan"),
        ("--layer-norm-eps 0 in float32", ["--layer-norm-eps=1e-50"], r"layer-norm-eps.*1e-50"),
        ("--vocab-size below the byte tokenizer's 257", ["--tokenizer=byte"],
         r"257.*vocab.*\b64\b"),
    ]
    for i, (name, flags, expect) in enumerate(cases):
        run_dir = os.path.join(work, f"run-bad{i}")
        p = fw("train", *base, *flags, f"--run-dir={run_dir}")
        lines, line = one_line(p)
        problems = []
        if p.returncode != 2:
            problems.append(f"exit {p.returncode}, not 2")
        if len(lines) != 1:
            problems.append(f"{len(lines)} stderr lines")
        if not line.startswith("fwrun: "):
            problems.append("the line does not start with 'fwrun: '")
        if not re.search(expect, line):
            problems.append(f"option and value not named (/{expect}/)")
        if os.path.exists(run_dir):
            problems.append(f"created {run_dir}")
        R.check(f"train refuses {name}", not problems,
                "; ".join(problems) + (" - " if problems else "") + repr(p.stderr.strip()[:400]))


def main():
    a, fw = gp.cli(__doc__)

    def body(work):
        check_imports(fw, work)
        check_bad_imports(fw, work)
        check_bad_train(fw, work)

    return R.run("import_config", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
