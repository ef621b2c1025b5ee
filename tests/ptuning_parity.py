#!/usr/bin/python3
"""ptuning_parity.py - peft/ptuning (P-tuning) against a plain-PyTorch
transcription of Hugging Face PEFT's PromptEncoder and prompt-learning forward.

Usage: /usr/bin/python3 tests/ptuning_parity.py --fwrun PATH --plugin-path DIR

PEFT's PromptEncoder (peft/tuners/p_tuning/model.py), written out by hand:
    input_embeds = embedding(indices)                      (nvt, C)
    MLP:  mlp_head = Linear(C, h), ReLU, Linear(h, h), ReLU, Linear(h, C)
    LSTM: lstm_head = torch.nn.LSTM(C, h, num_layers, bidirectional=True,
                                    batch_first=True)
          mlp_head = Linear(2h, 2h), ReLU, Linear(2h, C)
          output = mlp_head(lstm_head(input_embeds)[0])
and PeftModel.get_prompt (prompt_tokens[:1], then repeated over the batch);
the rest is prompt_parity.py's transcription of PeftModelForCausalLM (virtual
tokens concatenated before the word embeddings, positions over the whole).
PEFT's saved inference-mode adapter holds prompt_embeddings = the encoder's
output (get_prompt_embedding_to_save), which the export must equal.

Checks per encoder: 10 AdamW steps (every step's loss and grad norm within
1e-4 relative, final encoder tensors within 1e-4), the trainable count, the
adapter file, eval (inference: the frozen encoder output) against torch, the
export's prompt_embeddings against torch's encoder output and re-applied in
torch; MLP: resume bit-exact. Generation (MLP, virtual tokens after token 3;
prompt_parity.py has them in front): greedy ids through the KV cache = torch's full forward, for one
prompt and for three prompts of different lengths in two rows (--prompts).
Ends with "ptuning_parity: N passed, M failed"; exit 0 only when nothing failed.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as g2          # noqa: E402
import lora_parity as lp          # noqa: E402
import peft_parity as pp          # noqa: E402
import prompt_parity as prp       # noqa: E402

torch.set_num_threads(2)

N_EMBD, N_LAYER, N_HEAD = g2.N_EMBD, g2.N_LAYER, g2.N_HEAD
PLUGINS = "--plugins=arch/decoder,attention/mha,optim/adamw,peft/ptuning"
EVAL = "--plugins=arch/decoder,attention/mha,peft/ptuning"
TOL_EVAL = 1e-5
R = g2.R
rel = g2.rel
CONFIGS = [dict(name="ptuning-mlp", kind="MLP", nvt=5, hidden=24, layers=2, at=0),
           dict(name="ptuning-lstm", kind="LSTM", nvt=5, hidden=12, layers=2, at=0),
           dict(name="ptuning-mlp-at3", kind="MLP", nvt=4, hidden=16, layers=2, at=3)]


def opts(cfg):
    return [f"--ptuning-num-virtual-tokens={cfg['nvt']}",
            f"--ptuning-encoder-reparameterization-type={cfg['kind']}",
            f"--ptuning-encoder-hidden-size={cfg['hidden']}",
            f"--ptuning-encoder-num-layers={cfg['layers']}",
            f"--ptuning-insert-position={cfg['at']}"]


def insert(ids_embeds, prompt, at):
    """The virtual tokens before token at of every row (0: in front, PEFT)."""
    pr = prompt.unsqueeze(0).expand(ids_embeds.shape[0], -1, -1)
    return torch.cat((ids_embeds[:, :at], pr, ids_embeds[:, at:]), dim=1)


def ce(W, x, y, prompt, at):
    """PEFT's forward and HF's shifted loss, the virtual tokens (labels -100)
    inserted before token at; fw's (x, y) as input_ids = x + [y_T], labels =
    [-100] + y (prompt_parity.ce: at 0)."""
    B, P = x.shape[0], prompt.shape[0]
    input_ids = torch.cat((x, y[:, -1:]), dim=1)
    labels = torch.cat((torch.full_like(y[:, :1], -100), y), dim=1)
    labels = torch.cat((labels[:, :at], torch.full((B, P), -100, dtype=labels.dtype),
                        labels[:, at:]), dim=1)
    logits = prp.gpt2(W, insert(W["wte.weight"][input_ids], prompt, at))
    return F.cross_entropy(logits[:, :-1].reshape(-1, g2.VOCAB), labels[:, 1:].reshape(-1),
                           ignore_index=-100)


def eval_loss(W, tokens, prompt, at):
    with torch.no_grad():
        return sum(ce(W, *g2.micro_batch(tokens, k, lp.EVAL_B, lp.EVAL_T), prompt, at).item()
                   for k in range(lp.EVAL_K)) / lp.EVAL_K


def prompt_encoder(P, cfg):
    """PEFT's PromptEncoder.forward on indices arange(nvt), batch 1 -> (nvt, C)."""
    x = P["ptuning.embedding.weight"].unsqueeze(0)
    k = "ptuning.mlp_head."
    if cfg["kind"] == "LSTM":
        h = cfg["hidden"]
        lstm = torch.nn.LSTM(N_EMBD, h, num_layers=cfg["layers"], bidirectional=True,
                             batch_first=True)
        for n in lstm._flat_weights_names:        # the trained tensors themselves
            lstm._parameters[n] = P["ptuning.lstm_head." + n]
        lstm._flat_weights = [lstm._parameters[n] for n in lstm._flat_weights_names]
        x = lstm(x)[0]
        x = F.relu(F.linear(x, P[k + "0.weight"], P[k + "0.bias"]))
        x = F.linear(x, P[k + "2.weight"], P[k + "2.bias"])
    else:
        x = F.relu(F.linear(x, P[k + "0.weight"], P[k + "0.bias"]))
        x = F.relu(F.linear(x, P[k + "2.weight"], P[k + "2.bias"]))
        x = F.linear(x, P[k + "4.weight"], P[k + "4.bias"])
    return x[0]


def expected_shapes(cfg):
    C, h, L = N_EMBD, cfg["hidden"], cfg["layers"]
    s = {"ptuning.embedding.weight": (cfg["nvt"], C)}
    if cfg["kind"] == "LSTM":
        for l in range(L):
            for d in ("", "_reverse"):
                s[f"ptuning.lstm_head.weight_ih_l{l}{d}"] = (4 * h, C if l == 0 else 2 * h)
                s[f"ptuning.lstm_head.weight_hh_l{l}{d}"] = (4 * h, h)
                s[f"ptuning.lstm_head.bias_ih_l{l}{d}"] = (4 * h,)
                s[f"ptuning.lstm_head.bias_hh_l{l}{d}"] = (4 * h,)
        dims = [(2 * h, 2 * h), (2 * h, C)]
    else:
        dims = [(C, h), (h, h), (h, C)]
    for i, (a, b) in enumerate(dims):
        s[f"ptuning.mlp_head.{2 * i}.weight"] = (b, a)
        s[f"ptuning.mlp_head.{2 * i}.bias"] = (b,)
    return s


def check(fw, work, base, W, tokens, train_path, val_tokens, val_path, cfg):
    tag = cfg["name"]
    c = pp.TRAIN
    print(f"P-tuning: {' '.join(opts(cfg))}")
    init_run = os.path.join(work, f"init_{tag}")
    p = fw("train", PLUGINS, f"--load={base}", f"--data={train_path}", "--no-shuffle",
           f"--micro-batch-size={c['B']}", f"--seq-length={c['T']}", "--train-iters=1",
           "--lr=0", "--weight-decay=0", f"--run-dir={init_run}", "--threads=2", *opts(cfg))
    init_path = os.path.join(init_run, "adapter-00000001.h5")
    if not R.check(f"[{tag}] fwrun train --lr=0 saves the initial encoder",
                   p.returncode == 0 and os.path.exists(init_path), g2.describe(p)):
        return
    init = g2.h5_tensors(init_path)
    shapes = expected_shapes(cfg)
    R.check(f"[{tag}] the adapter holds PEFT's PromptEncoder parameters, PEFT's shapes",
            {k: v.shape for k, v in init.items()} == shapes,
            f"{sorted((k, v.shape) for k, v in init.items())}")
    n_train = sum(int(np.prod(s)) for s in shapes.values())
    pp.check_count(tag, p, n_train, sum(int(np.prod(s)) for _, s in g2.hf_names()) + n_train)
    run = os.path.join(work, f"run_{tag}")
    p = fw("train", PLUGINS, f"--load={base}", f"--adapter={init_path}",
           f"--data={train_path}", f"--run-dir={run}", *pp.train_args())
    if not R.check(f"[{tag}] fwrun train --adapter (options from the file) runs",
                   p.returncode == 0, g2.describe(p)):
        return
    P = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in init.items()}
    ref, final = pp.torch_train(P, lambda x, y: ce(W, x, y, prompt_encoder(P, cfg), cfg["at"]),
                                tokens)
    got = lp.metrics(run)
    wl, wn = pp.compare_steps(tag, got, ref)
    last = os.path.join(run, f"adapter-{c['ITERS']:08d}.h5")
    fin = g2.h5_tensors(last) if os.path.exists(last) else {}
    wf = pp.compare_final(tag, fin, final)
    pp.check_base_unchanged(tag, os.path.join(run, f"ckpt-{c['ITERS']:08d}.h5"), base)
    if cfg["kind"] == "MLP":
        pp.check_resume(tag, fw, work, run, PLUGINS, train_path, got)
    if not fin:
        return
    Pf = {k: torch.from_numpy(v) for k, v in fin.items()}
    with torch.no_grad():
        enc = prompt_encoder(Pf, cfg)
    want = eval_loss(W, val_tokens, enc, cfg["at"])
    loss, p = lp.eval_fw(fw, EVAL, f"--load={base}", f"--adapter={last}",
                         f"--valid-data={val_path}")
    R.check(f"[{tag}] eval --adapter (the encoder's output frozen at load) within "
            f"{TOL_EVAL:g} of torch", loss is not None and rel(loss, want) <= TOL_EVAL,
            f"fw {loss} torch {want}; {g2.describe(p) if loss is None else ''}")
    out = os.path.join(work, f"export_{tag}")
    p = fw("export-adapter", last, out)
    if cfg["at"]:
        R.check(f"[{tag}] export-adapter is refused in one line (PEFT only prepends)",
                p.returncode != 0 and "no PEFT equivalent" in p.stderr and
                len(p.stderr.strip().splitlines()) == 1, g2.describe(p))
        check_generate(fw, work, cfg, W, train_path)
        return
    if not R.check(f"[{tag}] export-adapter runs", p.returncode == 0, g2.describe(p)):
        return
    with open(os.path.join(out, "adapter_config.json")) as f:
        ec = json.load(f)
    R.check(f"[{tag}] adapter_config.json: P_TUNING, encoder type and size, nvt, token_dim",
            ec.get("peft_type") == "P_TUNING" and ec.get("task_type") == "CAUSAL_LM" and
            ec.get("encoder_reparameterization_type") == cfg["kind"] and
            ec.get("encoder_hidden_size") == cfg["hidden"] and
            ec.get("num_virtual_tokens") == cfg["nvt"] and ec.get("token_dim") == N_EMBD and
            ec.get("num_layers") == N_LAYER and ec.get("inference_mode") is True,
            json.dumps(ec)[:400])
    _, st = g2.read_st(os.path.join(out, "adapter_model.safetensors"))
    ok = set(st) == {"prompt_embeddings"} and tuple(st["prompt_embeddings"][1]) == (
        cfg["nvt"], N_EMBD)
    R.check(f"[{tag}] adapter_model.safetensors: prompt_embeddings (nvt, C)", ok,
            f"{[(k, v[1]) for k, v in st.items()]}")
    if ok:
        pe = st["prompt_embeddings"][2]
        d = float(np.abs(pe.astype(np.float64) - enc.numpy()).max())
        R.check(f"[{tag}] prompt_embeddings is torch's PromptEncoder output (within 1e-5)",
                d <= 1e-5, f"max |diff| {d:.2e}")
        ex = eval_loss(W, val_tokens, torch.from_numpy(pe.copy()), 0)
        R.check(f"[{tag}] the export applied in torch reproduces fw's eval loss",
                loss is not None and rel(ex, loss) <= TOL_EVAL, f"torch {ex} fw {loss}")
    print(f"  [{tag}] max relative difference: loss {wl:.2e}, grad norm {wn:.2e}; "
          f"final tensors (abs) {wf if wf is not None else float('nan'):.2e}")


def torch_greedy(W, enc, prompt, at, n):
    """n greedy ids after prompt with the virtual tokens enc before token at
    (torch's full forward each step), and the smallest top-2 margin."""
    ids, margin = list(prompt), 1e9
    with torch.no_grad():
        for _ in range(n):
            logits = prp.gpt2(W, insert(W["wte.weight"][torch.tensor([ids])], enc, at))
            top = torch.topk(logits[0, -1], 2)
            margin = min(margin, float(top.values[0] - top.values[1]))
            ids.append(int(top.indices[0]))
    return ids[len(prompt):], margin


def check_rows(fw, work, cfg, W, enc, h5, strong):
    """--prompts: three prompts of different lengths in two rows (the virtual
    tokens after token at of each), each = torch's greedy ids."""
    tag = cfg["name"]
    prompts = [list(g2.PROMPT), [5, 9, 300, 41], [7, 8, 9, 77, 78, 79, 80, 81, 82, 3]]
    path = os.path.join(work, f"rows_{tag}.jsonl")
    with open(path, "w") as f:
        for t in prompts:
            f.write(json.dumps({"tokens": t}) + "\n")
    p = fw("generate", EVAL, f"--load={h5}", f"--adapter={strong}", f"--prompts={path}",
           "--batch-size=2", f"--max-new-tokens={g2.GEN_NEW}", "--temperature=0", "--threads=2")
    rows = sorted((json.loads(x) for x in p.stdout.split("\n") if x.strip()),
                  key=lambda r: r["index"]) if p.returncode == 0 else []
    for i, t in enumerate(prompts):
        ref, margin = torch_greedy(W, enc, t, cfg["at"], g2.GEN_NEW)
        got = rows[i]["tokens"] if i < len(rows) else None
        R.check(f"[{tag}] --prompts in 2 rows: prompt {i} ({len(t)} ids) = torch's greedy ids "
                f"(virtual tokens after token {cfg['at']})", got == ref and margin >= 1e-4,
                f"fw {got} torch {ref}; margin {margin:.2e}; {g2.describe(p)}")


def check_generate(fw, work, cfg, W_unused, train_path):
    """Greedy decoding through the KV cache, the virtual tokens (the frozen
    encoder output) after prompt token at, against torch's full forward."""
    tag = cfg["name"]
    W = g2.random_weights(99, linear_std=0.2)
    g2.write_hf_dir(os.path.join(work, "hf_gen"), W, "F32")
    h5 = os.path.join(work, "gen.h5")
    p = fw("import", os.path.join(work, "hf_gen"), h5)
    run = os.path.join(work, f"gen_{tag}")
    p = fw("train", PLUGINS, f"--load={h5}", f"--data={train_path}", "--micro-batch-size=2",
           "--seq-length=32", "--train-iters=1", "--lr=0", "--weight-decay=0",
           f"--run-dir={run}", "--threads=2", *opts(cfg))
    ap = os.path.join(run, "adapter-00000001.h5")
    if not R.check(f"[{tag}] an adapter on the generation model", p.returncode == 0,
                   g2.describe(p)):
        return
    P = {k: torch.from_numpy(v) for k, v in g2.h5_tensors(ap).items()}
    with torch.no_grad():
        enc = 3 * prompt_encoder(P, cfg)
        P["ptuning.mlp_head.4.weight"] = 3 * P["ptuning.mlp_head.4.weight"]
        P["ptuning.mlp_head.4.bias"] = 3 * P["ptuning.mlp_head.4.bias"]
        strong = os.path.join(work, f"gen_{tag}.h5")
        lp.write_adapter(ap, strong, {k: v.numpy() for k, v in P.items()})
        plain = list(g2.PROMPT)
        for _ in range(g2.GEN_NEW):
            plain.append(int(torch.argmax(g2.forward(W, torch.tensor([plain]))[0, -1])))
    ref, margin = torch_greedy(W, enc, g2.PROMPT, cfg["at"], g2.GEN_NEW)
    R.check(f"[{tag}] the torch reference is usable (>= 8 distinct tokens, margins >= 1e-4, "
            "differs from the model without virtual tokens)", len(set(ref)) >= 8 and
            margin >= 1e-4 and ref != plain[len(g2.PROMPT):],
            f"{len(set(ref))} distinct, margin {margin:.2e}")
    p = fw("generate", EVAL, f"--load={h5}", f"--adapter={strong}",
           "--prompt-tokens=" + ",".join(map(str, g2.PROMPT)), f"--max-new-tokens={g2.GEN_NEW}",
           "--temperature=0", "--seed=1", "--threads=2")
    got = [int(t) for t in p.stdout.replace(",", " ").split()] if p.returncode == 0 else []
    R.check(f"[{tag}] greedy {g2.GEN_NEW} tokens identical to torch's (virtual tokens after "
            f"prompt token {cfg['at']}, through the KV cache)", got == ref,
            f"fw {got} torch {ref}; {g2.describe(p)}")
    check_rows(fw, work, cfg, W, enc, h5, strong)
    # Without --adapter the frozen encoder output would be empty: refused.
    for cmd in (["generate", EVAL, f"--load={h5}", "--prompt-tokens=1,2", "--max-new-tokens=2",
                 *opts(cfg)],
                ["generate", EVAL, f"--load={os.path.join(run, 'ckpt-00000001.h5')}",
                 "--prompt-tokens=1,2", "--max-new-tokens=2"],
                ["eval", EVAL, f"--load={os.path.join(run, 'ckpt-00000001.h5')}",
                 f"--valid-data={train_path}", "--micro-batch-size=1", "--seq-length=16",
                 "--eval-iters=1"]):
        p = fw(*cmd)
        R.check(f"[{tag}] {cmd[0]} {os.path.basename(cmd[2])} without --adapter is refused in "
                "one line (exit 2) that asks for it",
                p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and
                "--adapter" in p.stderr and not p.stdout.strip(), g2.describe(p))


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
        for cfg in CONFIGS:
            check(fw, work, base, W, tokens, train_path, val_tokens, val_path, cfg)
        p = fw("train", PLUGINS, f"--load={base}", f"--data={train_path}", "--seq-length=32",
               "--train-iters=1", "--ptuning-num-virtual-tokens=2",
               f"--run-dir={os.path.join(work, 'noh')}")
        R.check("[ptuning] --ptuning-encoder-hidden-size is required (as PEFT's)",
                p.returncode != 0 and "ptuning-encoder-hidden-size" in p.stderr,
                p.stderr[-300:])

    return R.run("ptuning_parity", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
