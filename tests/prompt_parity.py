#!/usr/bin/python3
"""prompt_parity.py - peft/prompt (prompt tuning) against a plain-PyTorch
transcription of Hugging Face PEFT's prompt learning for a causal LM.

Usage: /usr/bin/python3 tests/prompt_parity.py --fwrun PATH --plugin-path DIR

The small random GPT-2 of gpt2_parity.py (2 layers, width 64, vocabulary 500,
64 positions) runs in torch as GPT2LMHeadModel, with PEFT's
PeftModelForCausalLM.forward for prompt learning written out by hand (no peft
or transformers package):

    inputs_embeds = word_embeddings(input_ids)
    prompts = prompt_encoder.embedding.weight           (nvt, C), expanded to B
    inputs_embeds = cat((prompts, inputs_embeds), dim=1)
    labels = cat((full((B, nvt), -100), labels), dim=1)
    GPT2Model: position_ids = arange(nvt + T), the causal mask over all rows;
    GPT2LMHeadModel: loss = CE(logits[:, :-1], labels[:, 1:]), ignore -100.

fw's data gives next-token targets y for tokens x; in PEFT's terms that is
input_ids = x followed by y's last token and labels = [-100, y], which is how
the reference below is called. PromptTuningInit: RANDOM nn.Embedding N(0, 1);
TEXT tokenizer(text)["input_ids"] repeated / truncated to nvt, those word
embeddings copied; SAMPLE_VOCAB word embeddings of random ids.

Checks: 10 AdamW steps (every step's loss and grad norm within 1e-4 relative,
the final prompt within 1e-4), the trainable count, the adapter file, base
weights unchanged, resume bit-exact, eval with --adapter against torch, the
PEFT export (adapter_config.json PROMPT_TUNING, prompt_embeddings) re-applied
in torch, the three inits, greedy generation with the virtual tokens against
torch, and one-line refusals.
Ends with "prompt_parity: N passed, M failed"; exit 0 only when nothing failed.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as g2          # noqa: E402
import lora_parity as lp          # noqa: E402
import bpe_reference as bpe       # noqa: E402  (GPT-2's byte alphabet)
import peft_parity as pp          # noqa: E402
import sft_parity as sft          # noqa: E402

torch.set_num_threads(2)

N_LAYER, N_HEAD, N_EMBD, VOCAB, EPS = g2.N_LAYER, g2.N_HEAD, g2.N_EMBD, g2.VOCAB, g2.EPS
NVT = 4
PLUGINS = "--plugins=arch/decoder,attention/mha,optim/adamw,peft/prompt"
EVAL = "--plugins=arch/decoder,attention/mha,peft/prompt"
TOL_EVAL = 1e-5
R = g2.R
rel = g2.rel


# --- the reference ------------------------------------------------------------------

def gpt2(W, inputs_embeds):
    """GPT2LMHeadModel on inputs_embeds (B, N, C): positions 0..N-1, causal."""
    B, N, C = inputs_embeds.shape
    H, D = N_HEAD, C // N_HEAD
    x = inputs_embeds + W["wpe.weight"][:N]
    causal = torch.ones(N, N, dtype=torch.bool).tril()
    for l in range(N_LAYER):
        p = f"h.{l}."

        def lin(t, name):
            return t @ W[p + name + ".weight"] + W[p + name + ".bias"]
        a = F.layer_norm(x, (C,), W[p + "ln_1.weight"], W[p + "ln_1.bias"], EPS)
        q, k, v = lin(a, "attn.c_attn").split(C, dim=2)
        q, k, v = (t.view(B, N, H, D).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        att = torch.softmax(att.masked_fill(~causal, torch.finfo(att.dtype).min), dim=-1)
        x = x + lin((att @ v).transpose(1, 2).reshape(B, N, C), "attn.c_proj")
        f = F.layer_norm(x, (C,), W[p + "ln_2.weight"], W[p + "ln_2.bias"], EPS)
        x = x + lin(F.gelu(lin(f, "mlp.c_fc"), approximate="tanh"), "mlp.c_proj")
    x = F.layer_norm(x, (C,), W["ln_f.weight"], W["ln_f.bias"], EPS)
    return x @ W["wte.weight"].t()


def peft_logits(W, input_ids, prompt):
    """PeftModelForCausalLM.forward for prompt learning, up to the logits."""
    B = input_ids.shape[0]
    inputs_embeds = W["wte.weight"][input_ids]
    prompts = prompt.unsqueeze(0).expand(B, -1, -1)
    return gpt2(W, torch.cat((prompts, inputs_embeds), dim=1))


def peft_loss(W, input_ids, labels, prompt):
    B, P = input_ids.shape[0], prompt.shape[0]
    logits = peft_logits(W, input_ids, prompt)
    labels = torch.cat((torch.full((B, P), -100, dtype=labels.dtype), labels), dim=1)
    return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1),
                           ignore_index=-100)


def ce(W, x, y, prompt):
    """fw's (tokens x, next-token targets y) in PEFT's terms."""
    input_ids = torch.cat((x, y[:, -1:]), dim=1)
    labels = torch.cat((torch.full_like(y[:, :1], -100), y), dim=1)
    return peft_loss(W, input_ids, labels, prompt)


def eval_loss(W, tokens, prompt):
    with torch.no_grad():
        return sum(ce(W, *g2.micro_batch(tokens, k, lp.EVAL_B, lp.EVAL_T), prompt).item()
                   for k in range(lp.EVAL_K)) / lp.EVAL_K


# --- a byte-level tokenizer.json for the init text ------------------------------------------

def write_tokenizer(path):
    """A byte-level BPE without merges: one token per byte, ids in GPT-2's byte
    order. Returns the tokenizer as a function (the oracle of its ids)."""
    b2u = bpe.bytes_to_unicode()
    vocab = {ch: i for i, ch in enumerate(b2u.values())}
    tj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
          "normalizer": None,
          "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                            "use_regex": True},
          "post_processor": None, "decoder": {"type": "ByteLevel"},
          "model": {"type": "BPE", "dropout": None, "unk_token": None,
                    "continuing_subword_prefix": "", "end_of_word_suffix": "",
                    "fuse_unk": False, "vocab": vocab, "merges": []}}
    with open(path, "w") as f:
        json.dump(tj, f)
    return lambda text: [vocab[b2u[b]] for b in text.encode()]


# --- checks ------------------------------------------------------------------------------

def init_run(fw, work, base, train_path, name, *opts):
    """fwrun train --lr=0 for one step: the initial prompt in the adapter."""
    run = os.path.join(work, f"init_{name}")
    p = fw("train", PLUGINS, f"--load={base}", f"--data={train_path}", "--no-shuffle",
           "--micro-batch-size=2", "--seq-length=32", "--train-iters=1", "--lr=0",
           "--weight-decay=0", f"--run-dir={run}", "--threads=2", *opts)
    path = os.path.join(run, "adapter-00000001.h5")
    ok = R.check(f"[{name}] fwrun train --lr=0 saves the initial prompt",
                 p.returncode == 0 and os.path.exists(path), g2.describe(p))
    return (g2.h5_tensors(path), path, p) if ok else (None, None, p)


def check_inits(fw, work, base, W, train_path):
    wte = W["wte.weight"].numpy()
    init, _, _ = init_run(fw, work, base, train_path, "random", f"--prompt-num-virtual-tokens={NVT}")
    if init:
        e = init.get("prompt.embedding.weight", np.zeros(0))
        R.check("[random] prompt (nvt, C), N(0, 1) as nn.Embedding (std within 0.2 of 1)",
                e.shape == (NVT, N_EMBD) and abs(float(e.std()) - 1) < 0.2 and
                abs(float(e.mean())) < 0.2, f"{e.shape} std {e.std() if e.size else 0}")
    tok_path = os.path.join(work, "tokenizer.json")
    encode = write_tokenizer(tok_path)
    for text, nvt in (("ab c", 7), ("hello world", 3)):
        name = f"text-{nvt}"
        init, _, p = init_run(fw, work, base, train_path, name, f"--prompt-num-virtual-tokens={nvt}",
                              "--prompt-tuning-init=text", f"--prompt-tuning-init-text={text}",
                              f"--prompt-tuning-tokenizer-name-or-path={tok_path}")
        if not init:
            continue
        ids = encode(text)
        ids = (ids * math.ceil(nvt / len(ids)))[:nvt]           # PEFT: repeat, truncate
        e = init.get("prompt.embedding.weight", np.zeros(0))
        R.check(f"[{name}] {text!r} -> ids {ids}: the prompt is those word embeddings, "
                "bit for bit", e.shape == (nvt, N_EMBD) and
                e.tobytes() == wte[ids].astype(np.float32).tobytes(),
                f"{e.shape}")
    init, _, _ = init_run(fw, work, base, train_path, "sample_vocab",
                          f"--prompt-num-virtual-tokens={NVT}", "--prompt-tuning-init=sample_vocab")
    if init:
        e = init.get("prompt.embedding.weight", np.zeros((0, N_EMBD)))
        rows = [int(np.nonzero((wte == r).all(axis=1))[0][0]) if (wte == r).all(axis=1).any()
                else None for r in e]
        R.check("[sample_vocab] every prompt row is a word embedding, not all the same one",
                len(rows) == NVT and None not in rows and len(set(rows)) > 1, f"{rows}")


def check_train(fw, work, base, W, tokens, train_path, val_tokens, val_path):
    tag = "prompt"
    c = pp.TRAIN
    init, init_path, p = init_run(fw, work, base, train_path, "train-init",
                                  f"--prompt-num-virtual-tokens={NVT}")
    if not init:
        return None
    n_base = sum(int(np.prod(s)) for _, s in g2.hf_names())
    pp.check_count(tag, p, NVT * N_EMBD, n_base + NVT * N_EMBD)
    q = fw("plan", PLUGINS, f"--prompt-num-virtual-tokens={NVT}", f"--n-layer={N_LAYER}",
           f"--n-head={N_HEAD}", f"--n-embd={N_EMBD}", f"--vocab-size={VOCAB}",
           f"--n-positions={g2.N_POS}", "--micro-batch-size=2", "--seq-length=32")
    R.check(f"[{tag}] fwrun plan counts the prompt as the only trainable tensor",
            q.returncode == 0 and f"parameters: {n_base + NVT * N_EMBD} total, "
            f"{NVT * N_EMBD} trainable" in q.stdout + q.stderr, g2.describe(q))
    run = os.path.join(work, "run_prompt")
    p = fw("train", PLUGINS, f"--load={base}", f"--adapter={init_path}",
           f"--data={train_path}", f"--run-dir={run}", *pp.train_args())
    if not R.check(f"[{tag}] fwrun train --adapter (options from the file) runs",
                   p.returncode == 0, g2.describe(p)):
        return None
    P = {"prompt.embedding.weight":
         torch.from_numpy(init["prompt.embedding.weight"].copy()).requires_grad_(True)}
    ref, final = pp.torch_train(P, lambda x, y: ce(W, x, y, P["prompt.embedding.weight"]),
                                tokens)
    got = lp.metrics(run)
    wl, wn = pp.compare_steps(tag, got, ref)
    last = os.path.join(run, f"adapter-{c['ITERS']:08d}.h5")
    fin = g2.h5_tensors(last) if os.path.exists(last) else {}
    wf = pp.compare_final(tag, fin, final)
    a = lp.h5_attrs(last) if fin else {}
    R.check(f"[{tag}] adapter attributes: fw_adapter, config, prompt_layers, base fingerprint",
            a.get("fw_adapter") == "peft/prompt" and "[peft/prompt]" in a.get("config", "") and
            f"nvt {NVT}\ntoken_dim {N_EMBD}\nlayers {N_LAYER}\n" in a.get("prompt_layers", "")
            and re.fullmatch(r"[0-9a-f]{16}", a.get("base_hash", "")) is not None,
            f"{sorted(a)}")
    pp.check_base_unchanged(tag, os.path.join(run, f"ckpt-{c['ITERS']:08d}.h5"), base)
    pp.check_resume(tag, fw, work, run, PLUGINS, train_path, got)

    # eval against torch (a stronger prompt, so that it matters), then the export
    rng = np.random.RandomState(3)
    strong = {k: (v + 2.0 * rng.randn(*v.shape)).astype(np.float32) for k, v in fin.items()}
    sp = os.path.join(work, "strong_prompt.h5")
    lp.write_adapter(last, sp, strong)
    prompt = torch.from_numpy(strong["prompt.embedding.weight"])
    E = [f"--valid-data={val_path}"]
    want = eval_loss(W, val_tokens, prompt)
    with torch.no_grad():
        plain = sum(F.cross_entropy(g2.forward(W, x).reshape(-1, VOCAB), y.reshape(-1)).item()
                    for x, y in (g2.micro_batch(val_tokens, k, lp.EVAL_B, lp.EVAL_T)
                                 for k in range(lp.EVAL_K))) / lp.EVAL_K
    loss, p = lp.eval_fw(fw, EVAL, f"--load={base}", f"--adapter={sp}", *E)
    R.check(f"[{tag}] eval --adapter within {TOL_EVAL:g} of torch, not the plain model's",
            loss is not None and rel(loss, want) <= TOL_EVAL and rel(loss, plain) > 10 * TOL_EVAL,
            f"fw {loss} torch {want} plain {plain}; {g2.describe(p) if loss is None else ''}")
    out = os.path.join(work, "export_prompt")
    p = fw("export-adapter", sp, out, "--base-model=gpt2-tiny-test")
    if R.check(f"[{tag}] export-adapter runs", p.returncode == 0, g2.describe(p)):
        with open(os.path.join(out, "adapter_config.json")) as f:
            ec = json.load(f)
        R.check(f"[{tag}] adapter_config.json: PROMPT_TUNING, CAUSAL_LM, nvt, token_dim, "
                "layers, heads, init", ec.get("peft_type") == "PROMPT_TUNING" and
                ec.get("task_type") == "CAUSAL_LM" and ec.get("num_virtual_tokens") == NVT and
                ec.get("token_dim") == N_EMBD and ec.get("num_layers") == N_LAYER and
                ec.get("num_attention_heads") == N_HEAD and
                ec.get("num_transformer_submodules") == 1 and
                ec.get("prompt_tuning_init") == "RANDOM" and
                ec.get("base_model_name_or_path") == "gpt2-tiny-test", json.dumps(ec)[:400])
        _, st = g2.read_st(os.path.join(out, "adapter_model.safetensors"))
        ok = set(st) == {"prompt_embeddings"} and tuple(st["prompt_embeddings"][1]) == (
            NVT, N_EMBD)
        R.check(f"[{tag}] adapter_model.safetensors: prompt_embeddings (nvt, C)", ok,
                f"{[(k, v[1]) for k, v in st.items()]}")
        if ok:
            ex = eval_loss(W, val_tokens, torch.from_numpy(st["prompt_embeddings"][2].copy()))
            R.check(f"[{tag}] the export applied in torch (PEFT's forward) reproduces fw's "
                    f"eval loss", loss is not None and rel(ex, loss) <= TOL_EVAL,
                    f"torch {ex} fw {loss}")
    p = fw("eval", EVAL, f"--load={base}", f"--adapter={sp}", "--merge-adapter", *E,
           "--micro-batch-size=2", "--seq-length=32", "--eval-iters=1")
    R.check(f"[{tag}] --merge-adapter is refused in one line (nothing to merge)",
            p.returncode != 0 and "merge" in p.stderr and
            len(p.stderr.strip().splitlines()) == 1, p.stderr[-300:])
    print(f"  [{tag}] max relative difference: loss {wl:.2e}, grad norm {wn:.2e}; "
          f"final prompt (abs) {wf if wf is not None else float('nan'):.2e}")
    return last


def check_generate_rows(fw, work, h5, ap, ref):
    """--prompts: the virtual tokens in front of every row; rows of other
    lengths decoded together give torch's ids and their own batch-1 runs."""
    short = g2.PROMPT[:2]
    path = os.path.join(work, "rows.jsonl")
    with open(path, "w") as f:
        for t in (short, g2.PROMPT, short):
            f.write(json.dumps({"tokens": t}) + "\n")
    p = fw("generate", EVAL, f"--load={h5}", f"--adapter={ap}", f"--prompts={path}",
           "--batch-size=3", f"--max-new-tokens={g2.GEN_NEW}", "--temperature=0", "--threads=2")
    if not R.check("[generate] --prompts with the prompt adapter runs", p.returncode == 0,
                   g2.describe(p)):
        return
    rows = [json.loads(line)["tokens"] for line in p.stdout.splitlines()]
    q = fw("generate", EVAL, f"--load={h5}", f"--adapter={ap}",
           "--prompt-tokens=" + ",".join(map(str, short)), f"--max-new-tokens={g2.GEN_NEW}",
           "--temperature=0", "--threads=2")
    alone = [int(t) for t in q.stdout.strip().split(",")] if q.returncode == 0 else None
    R.check("[generate] --prompts rows of 2, 6, 2 ids: torch's ids for the long one, the "
            "batch-1 run for the short ones", len(rows) == 3 and rows[1] == ref and
            rows[0] == rows[2] == alone, f"rows {rows} torch {ref} alone {alone}")


def check_generate(fw, work, train_path):
    """Greedy decoding with the virtual tokens through the KV cache against
    torch's full forward of [prompt; word embeddings]."""
    tag = "generate"
    W = g2.random_weights(99, linear_std=0.2)
    g2.write_hf_dir(os.path.join(work, "hf_gen"), W, "F32")
    h5 = os.path.join(work, "gen.h5")
    p = fw("import", os.path.join(work, "hf_gen"), h5)
    if not R.check(f"[{tag}] import of the generation model", p.returncode == 0,
                   g2.describe(p)):
        return
    init, init_path, _ = init_run(fw, work, h5, train_path, "gen-init",
                                  f"--prompt-num-virtual-tokens={NVT}")
    if not init:
        return
    rng = np.random.RandomState(11)
    pr = (0.5 * rng.randn(NVT, N_EMBD)).astype(np.float32)
    ap = os.path.join(work, "gen_prompt.h5")
    lp.write_adapter(init_path, ap, {"prompt.embedding.weight": pr})
    prompt = torch.from_numpy(pr)
    ids, margins = list(g2.PROMPT), []
    with torch.no_grad():
        plain = list(g2.PROMPT)
        for _ in range(g2.GEN_NEW):
            logits = peft_logits(W, torch.tensor([ids]), prompt)[0, -1]
            top = torch.topk(logits, 2)
            margins.append(float(top.values[0] - top.values[1]))
            ids.append(int(top.indices[0]))
            plain.append(int(torch.argmax(g2.forward(W, torch.tensor([plain]))[0, -1])))
    ref = ids[len(g2.PROMPT):]
    R.check(f"[{tag}] the torch reference is usable (>= 8 distinct tokens, margins >= 1e-4, "
            "differs from the model without the prompt)", len(set(ref)) >= 8 and
            min(margins) >= 1e-4 and ref != plain[len(g2.PROMPT):],
            f"{len(set(ref))} distinct, margin {min(margins):.2e}")
    p = fw("generate", EVAL, f"--load={h5}", f"--adapter={ap}",
           "--prompt-tokens=" + ",".join(map(str, g2.PROMPT)), f"--max-new-tokens={g2.GEN_NEW}",
           "--temperature=0", "--seed=1", "--threads=2")
    if not R.check(f"[{tag}] fwrun generate with the prompt adapter runs", p.returncode == 0,
                   g2.describe(p)):
        return
    got = [int(t) for t in re.findall(r"-?\d+", p.stdout)]
    if len(got) == len(g2.PROMPT) + g2.GEN_NEW and got[:len(g2.PROMPT)] == g2.PROMPT:
        got = got[len(g2.PROMPT):]
    R.check(f"[{tag}] greedy {g2.GEN_NEW} tokens identical to torch's (virtual tokens at "
            "positions 0..nvt-1)", got == ref, f"fw {got} torch {ref}")
    check_generate_rows(fw, work, h5, ap, ref)
    n = g2.N_POS - NVT - 3
    p = fw("generate", EVAL, f"--load={h5}", f"--adapter={ap}",
           "--prompt-tokens=" + ",".join(["5"] * n), "--max-new-tokens=4", "--threads=2")
    R.check(f"[{tag}] a prompt that fits n-positions but not with the virtual tokens: usage "
            "error, one line", p.returncode == 2 and "less its virtual tokens" in p.stderr and
            len(p.stderr.strip().splitlines()) == 1, g2.describe(p))
    p = subprocess.run([fw.exe, "generate", EVAL, f"--load={h5}", f"--adapter={ap}",
                        "--interactive", "--tokenizer=byte", "--max-new-tokens=3",
                        "--threads=2"], env=fw.env, input=b"hi\n", capture_output=True,
                       timeout=60)        # bytes: the random model writes any bytes
    R.check(f"[{tag}] --interactive (a cache of n-positions less the virtual tokens) runs",
            p.returncode == 0, p.stderr.decode(errors="replace")[-300:])


def check_sft(fw, work, base, W, train_path):
    """SFT rows (segmented: packed examples, padding): every example sees the
    virtual tokens, its own tokens at positions nvt.., its response tokens in
    the loss. The oracle runs each example alone through PEFT's forward; one
    SGD step with lr 1 gives fw's gradient of the prompt back."""
    T = 56                                     # + nvt <= 64 positions
    init, init_path, _ = init_run(fw, work, base, train_path, "sft-init",
                                  f"--prompt-num-virtual-tokens={NVT}")
    if not init:
        return
    # small values, so that before - after (f32) keeps the gradient's digits
    start = (0.05 * np.random.RandomState(5).randn(NVT, N_EMBD)).astype(np.float32)
    init_path2 = os.path.join(work, "sft_prompt.h5")
    lp.write_adapter(init_path, init_path2, {"prompt.embedding.weight": start})
    recs = [r for r in sft.RECORDS if len(sft.encode(r)[0]) - 1 <= T]
    data = os.path.join(work, "sft.jsonl")
    sft.write_jsonl(data, recs)
    prompt = torch.from_numpy(start.copy()).requires_grad_(True)
    total, count = 0.0, 0
    for ids, flags in map(sft.encode, recs):
        logits = peft_logits(W, torch.tensor([ids[:-1]]), prompt)[0, NVT:]
        nll = F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")
        f = torch.tensor(flags[1:])
        total, count = total + nll[f].sum(), count + int(f.sum())
    ref = total / count
    ref.backward()
    g_ref = prompt.grad.numpy().astype(np.float64)
    for packing in ("packed", "padded"):
        run = os.path.join(work, f"sft-{packing}")
        p = fw("train", "--plugins=arch/decoder,attention/mha,optim/sgd,peft/prompt",
               f"--load={base}", f"--adapter={init_path2}", "--tokenizer=byte", f"--data={data}",
               f"--seq-length={T}", "--micro-batch-size=8", "--train-iters=1", "--lr=1",
               "--lr-decay-style=constant", "--sgd-momentum=0", "--weight-decay=0",
               "--clip-grad=0", "--no-shuffle", f"--packing={packing}", f"--run-dir={run}",
               "--threads=2")
        if not R.check(f"[sft] {packing}: fwrun train runs", p.returncode == 0, g2.describe(p)):
            continue
        loss = lp.metrics(run)[0]["loss"]
        after = g2.h5_tensors(os.path.join(run, "adapter-00000001.h5"))["prompt.embedding.weight"]
        g = start.astype(np.float64) - after.astype(np.float64)
        e = float(np.abs(g - g_ref).max() / np.abs(g_ref).max())
        R.check(f"[sft] {packing}: loss and prompt gradient equal the per-example oracle's",
                rel(loss, float(ref)) <= 1e-5 and e <= 1e-4,
                f"loss fw {loss:.8f} torch {float(ref):.8f}; grad max rel error {e:.1e}")


def check_refusals(fw, work, base, train_path):
    E = [f"--data={train_path}", "--micro-batch-size=2", "--train-iters=1", "--lr=0",
         "--threads=2"]
    p = fw("train", PLUGINS, f"--load={base}", f"--run-dir={os.path.join(work, 'long')}",
           "--seq-length=62", "--prompt-num-virtual-tokens=4", *E)
    R.check("[refusal] sequence plus virtual tokens beyond n-positions: one line",
            p.returncode != 0 and "virtual tokens exceeds --n-positions" in p.stderr and
            len(p.stderr.strip().splitlines()) == 1, p.stderr[-300:])
    p = fw("train", PLUGINS, f"--load={base}", f"--run-dir={os.path.join(work, 'txt')}",
           "--seq-length=32", "--prompt-num-virtual-tokens=4", "--prompt-tuning-init-text=hi",
           *E)
    R.check("[refusal] an init text without --prompt-tuning-init=text: one line",
            p.returncode != 0 and "--prompt-tuning-init=text" in p.stderr and
            len(p.stderr.strip().splitlines()) == 1, p.stderr[-300:])
    p = fw("train", PLUGINS, f"--load={base}", f"--run-dir={os.path.join(work, 'tok')}",
           "--seq-length=32", "--prompt-num-virtual-tokens=4", "--prompt-tuning-init=text",
           "--prompt-tuning-init-text=hi",
           f"--prompt-tuning-tokenizer-name-or-path={os.path.join(work, 'nope.json')}", *E)
    # read once the base is loaded (init_from_base), after fwrun's progress lines
    R.check("[refusal] a missing tokenizer file: one error line naming the option",
            p.returncode != 0 and "prompt-tuning-tokenizer-name-or-path" in
            p.stderr.strip().splitlines()[-1] and p.stderr.count("peft/prompt: ") == 1 and
            not os.path.exists(os.path.join(work, "tok", "ckpt-00000001.h5")), p.stderr[-300:])
    p = fw("train", PLUGINS, f"--load={base}", f"--run-dir={os.path.join(work, 'req')}",
           "--seq-length=32", *E)
    R.check("[refusal] --prompt-num-virtual-tokens is required", p.returncode != 0 and
            "prompt-num-virtual-tokens" in p.stderr, p.stderr[-300:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fwrun", required=True)
    ap.add_argument("--plugin-path", required=True)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    fw = g2.Fw(os.path.abspath(a.fwrun), os.path.abspath(a.plugin_path))

    def body(work):
        W, tokens, train_path, val_tokens, val_path, base = pp.fixture(fw, work)
        if not base:
            return
        check_train(fw, work, base, W, tokens, train_path, val_tokens, val_path)
        check_inits(fw, work, base, W, train_path)
        check_generate(fw, work, train_path)
        check_sft(fw, work, base, W, train_path)
        check_refusals(fw, work, base, train_path)

    return R.run("prompt_parity", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
