#!/usr/bin/python3
"""encoder_peft.py - prompt, prefix and P-tuning on arch/encoder with PEFT's semantics.

Usage: /usr/bin/python3 tests/encoder_peft.py --fwrun PATH --plugin-path DIR

The reference is bert_parity's plain-torch transcription of Hugging Face's
BertForSequenceClassification, fed as PEFT feeds it (bert_parity.encoder's
virtual / prefix arguments, written from PEFT's peft_model.py and HF's
modeling_bert, not from fw):
  - prompt tuning: inputs_embeds = cat(prompt, word_embeddings(input_ids)),
    token_type_ids with zeros and attention_mask with ones in front, so
    BertEmbeddings gives the virtual tokens positions 0..P-1 and type 0 and
    the real tokens P..; BertPooler takes hidden_states[:, 0], the first
    virtual token;
  - prefix tuning: past_key_values of P rows per layer, attention_mask with
    P ones in front, the tokens at positions P.. (past_key_values_length);
  - P-tuning: prompt tuning's inputs with the virtual tokens from PEFT's
    PromptEncoder (MLP; ptuning_parity.prompt_encoder);
  - the task head trains: PeftModelForSequenceClassification and
    ...ForTokenClassification add "classifier" and "score" to
    modules_to_save (peft_model.py), so classifier.* (BERT's Linear,
    RoBERTa's dense and out_proj) is a trained tensor of the adapter file and
    of the torch replay; the pooler stays frozen.
fw trains padded batches (the padding mask widened over the extra rows); the
reference runs every record alone, unpadded.
Checks, for BERT (two token types) and RoBERTa's options (position offset 2),
sequence classification, and BERT token classification:
  - 10 AdamW steps of each method (fw's initial adapter from a --lr=0 run):
    per-step loss and gradient norm within 1e-4 relative, the trained tensors
    (the method's and the head's) within 1e-4 (max |fw - torch| / max |torch|);
  - export-adapter: task_type SEQ_CLS / TOKEN_CLS, modules_to_save
    ["classifier"], keys prompt_embeddings and base_model.classifier.* (PEFT's
    save_and_load: a modules_to_save module's parameters saved without
    modules_to_save.default; a RoBERTa export with --base), and the export
    re-applied in torch gives fw's eval loss within 1e-5 (prefix tuning's
    prompt_embeddings split per layer as PEFT's get_prompt does);
  - the check can fail: the reference with fw's former numbering (virtual
    tokens without position and type embeddings, real tokens from position
    0) is off by more than 1e-3 in the first step's loss;
  - token classification: the loss on the real positions (PEFT's labels
    padded with -100 for the virtual ones);
  - BERT's MLM head under each method: 10 AdamW steps with fw's (seed, step)
    masking (bert_parity.mlm_mask) on the real rows; the export has
    task_type null and no head;
  - LoRA on a RoBERTa MLM base (two named layers, a rank pattern, the MLM
    transform in modules_to_save): export-adapter --base gives
    RobertaForMaskedLM's paths in keys, target_modules, rank_pattern and
    modules_to_save (roberta.encoder..., lm_head.dense), the export re-applied
    in torch gives fw's eval within 1e-5; without --base BERT's names and one
    warning line naming --base;
  - export-adapter --base with a GPT-2 base: transformer.h.N... as without it;
  - IA3 (key, value, output.dense; feedforward output.dense) and AdaLoRA
    (query, value; the budget falling 4 -> 2) on BERT and RoBERTa seq-cls
    (RoBERTa exported with --base), 6 fwrun steps with the head training:
    export-adapter gives task_type SEQ_CLS, modules_to_save ["classifier"],
    fan_in_fan_out false, bert.* / roberta.* paths in target_modules,
    feedforward_modules, rank_pattern (PEFT's suffix matching over the
    layers) and keys, the head under base_model.model.classifier.*; the
    export applied as PEFT's
    IA3 / SVDLinear forward gives fw's eval loss within 1e-5, and the base's
    loss is off it by more than 1e-3;
  - a sequence that with the virtual tokens passes --max-position-embeddings,
    and an adapter file from before heads trained: one "fwrun:" line, exit 1
    or 2.
Ends with "encoder_peft: N passed, M failed"; exit 0 only when none failed.
"""
import json
import os
import shutil
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bert_parity as bp  # noqa: E402  (the transcription, records, replay)
import gpt2_parity as g2  # noqa: E402
import ptuning_parity as ptp  # noqa: E402  (PEFT's PromptEncoder, transcribed)

R = bp.R
NVT = 4
PT = dict(kind="MLP", hidden=16)         # ptuning_parity.prompt_encoder's cfg
METHODS = {"prompt": ["--plugins=arch/encoder,attention/mha,optim/adamw,peft/prompt",
                      f"--prompt-num-virtual-tokens={NVT}"],
           "prefix": ["--plugins=arch/encoder,attention/mha,optim/adamw,peft/prefix",
                      f"--prefix-num-virtual-tokens={NVT}"],
           "ptuning": ["--plugins=arch/encoder,attention/mha,optim/adamw,peft/ptuning",
                       f"--ptuning-num-virtual-tokens={NVT}",
                       "--ptuning-encoder-reparameterization-type=MLP",
                       f"--ptuning-encoder-hidden-size={PT['hidden']}"]}


CLS_FLAGS = ["--labels=0,1,2"]
MLM_FLAGS = [f"--mlm-probability={bp.MLM_PROB}", f"--seed={bp.SEED}"]


def common(ck, data, flags=CLS_FLAGS):
    c = bp.TRAIN
    return [f"--load={ck}", f"--data={data}", "--no-shuffle", "--tokenizer=byte",
            f"--micro-batch-size={bp.B}", f"--seq-length={bp.T}", *flags,
            "--threads=2", "--clip-grad=0", f"--adam-beta1={c['BETA1']}",
            f"--adam-beta2={c['BETA2']}", f"--adam-eps={c['ADAM_EPS']}",
            "--lr-decay-style=constant"]


def adapter(path):
    with h5py.File(path, "r") as f:
        return {k: torch.from_numpy(np.array(v)) for k, v in f["tensors"].items()}


def peft_inputs(method, A, m):
    """bert_parity.encoder's keyword arguments for adapter tensors A."""
    if method == "prompt":
        return {"virtual": A["prompt.embedding.weight"]}
    if method == "ptuning":
        return {"virtual": ptp.prompt_encoder(A, PT)}
    return {"prefix": [A[f"prefix.h.{l}.kv"] for l in range(m["L"])]}


def with_heads(W, P):
    """The base weights with the trained head tensors of P in place."""
    return dict(W, **{k: v for k, v in P.items() if k in W})


def export_inputs(method, m, emb):
    """bert_parity.encoder's keyword arguments from PEFT's prompt_embeddings:
    prefix tuning's row (P, L*2*C) holds layer l's keys and values at
    [2lC, 2(l+1)C) (get_prompt's view(..., L*2, H, D).permute.split(2))."""
    if method != "prefix":
        return {"virtual": emb}
    C = m["C"]
    return {"prefix": [emb[:, 2 * l * C:2 * (l + 1) * C] for l in range(m["L"])]}


def former_inputs(m, W, method, A):
    """The reference under fw's former numbering: the real tokens from
    position 0 and, under prompt tuning, the virtual rows without position
    or type embedding (the table shifted by P rows; the virtual rows' type 0
    taken off their embeddings). W is changed in place; the caller passes a copy."""
    pe = W["embeddings.position_embeddings.weight"]
    o, C = m["offset"], pe.shape[1]
    W["embeddings.position_embeddings.weight"] = torch.cat([pe[:o], torch.zeros(NVT, C), pe[o:]])
    kw = peft_inputs(method, A, m)
    if method == "prompt":
        kw["virtual"] = kw["virtual"] - W["embeddings.token_type_embeddings.weight"][0]
    return kw


def seq_loss(m, W, batch, head_fn, kw):
    return F.cross_entropy(bp.seq_reference(m, W, batch, head=head_fn, **kw),
                           torch.tensor([r["label"] for r in batch]))


def tok_loss(m, W, batch, head_fn, kw):
    return F.cross_entropy(*bp.tok_reference(m, W, batch, **kw))


def mlm_loss(m, W, batch, index, kw):
    """bert_parity.mlm_loss with PEFT's inputs: the MLM head on the real rows
    (the last len(ids) of each record's output), the masking as fw draws it."""
    logits, targets = [], []
    for x, y in bp.mlm_mask(batch, index):
        lg = bp.mlm_logits(m, W, bp.one(m, W, x, [0] * len(x), **kw))[0][-len(x):]
        for j, t in enumerate(y):
            if t >= 0:
                logits.append(lg[j])
                targets.append(t)
    return F.cross_entropy(torch.stack(logits), torch.tensor(targets))


def check_method(fw, work, tag, m, head_fn, W, ck, train, train_path, method, loss_fn=seq_loss,
                 task="SEQ_CLS", flags=CLS_FLAGS, batches=None):
    """batches: the micro-batches of the steps (MLM: their rows, masked by
    step index in loss_fn's head_fn argument place)."""
    c = bp.TRAIN
    name = f"{tag} {method}"
    init_run = os.path.join(work, f"{tag}_{method}_init")
    p = fw("train", *METHODS[method], *common(ck, train_path, flags), "--train-iters=1",
           "--lr=0", "--weight-decay=0", f"--run-dir={init_run}")
    init = os.path.join(init_run, "adapter-00000001.h5")
    if not R.check(f"{name}: the initial adapter", p.returncode == 0 and os.path.exists(init),
                   g2.describe(p)):
        return None
    A0 = adapter(init)
    heads = sorted(k for k in W if k.startswith("classifier."))
    R.check(f"{name}: the adapter carries the task head {heads} (PEFT's modules_to_save), "
            f"not the pooler", [k for k in sorted(A0) if k in W] == heads and
            all(A0[k].equal(W[k]) for k in heads), f"{sorted(A0)}")
    run = os.path.join(work, f"{tag}_{method}_run")
    p = fw("train", *METHODS[method], *common(ck, train_path, flags), f"--adapter={init}",
           f"--train-iters={c['ITERS']}", f"--lr={c['LR']}", f"--weight-decay={c['WD']}",
           f"--run-dir={run}")
    if not R.check(f"{name}: train runs", p.returncode == 0, g2.describe(p)):
        return None
    P = {k: t.clone().requires_grad_(True) for k, t in A0.items()}

    def step_loss(P, k):
        if batches:
            return loss_fn(m, with_heads(W, P), batches[k], k, peft_inputs(method, P, m))
        batch = train[k * bp.B:(k + 1) * bp.B]
        return loss_fn(m, with_heads(W, P), batch, head_fn, peft_inputs(method, P, m))
    bp.compare_steps(f"{name} {task}", run, bp.adamw_replay(P, sorted(P), step_loss))
    if method != "ptuning" and not batches:
        batch = train[:bp.B]
        with torch.no_grad():
            Wf = dict(W)
            old = loss_fn(m, Wf, batch, head_fn, former_inputs(m, Wf, method, A0)).item()
        got = json.loads(open(os.path.join(run, "metrics.jsonl")).readline())
        R.check(f"{name}: the former numbering's first loss {old:.7f} is off fw's "
                f"{got.get('loss', 0):.7f} by more than 1e-3 (the check can fail)",
                g2.rel(got.get("loss", 0), old) > 1e-3)
    final = os.path.join(run, f"adapter-{c['ITERS']:08d}.h5")
    A = adapter(final)
    err = max(((A[k] - P[k].detach()).abs().max() / P[k].detach().abs().max()).item()
              for k in P) if sorted(A) == sorted(P) else float("inf")
    R.check(f"{name}: the trained tensors ({', '.join(sorted(P))}) within {bp.TOL_STEP:g}",
            err <= bp.TOL_STEP, f"max rel {err:.2e}")
    if heads:
        moved = max(float((A[k] - W[k]).abs().max()) for k in heads) \
            if sorted(A) == sorted(P) else 0
        R.check(f"{name}: the head moved from the base's (it trains)", moved > 1e-4,
                f"max |change| {moved:.2e}")
    if batches:
        return A0
    check_export(fw, work, name, m, head_fn, W, ck, train[:2 * bp.B], method, final, A,
                 loss_fn, task, heads, tag == "roberta")
    return A0


def check_export(fw, work, name, m, head_fn, W, ck, recs, method, final, A, loss_fn, task,
                 heads, with_base):
    """export-adapter's PEFT files, re-applied in torch, against fw's eval with the adapter."""
    out = os.path.join(work, name.replace(" ", "_") + "_peft")
    extra = [f"--base={ck}"] if with_base else []
    p = fw("export-adapter", final, out, *extra)
    if not R.check(f"{name}: export-adapter{' --base' if with_base else ''} runs",
                   p.returncode == 0, g2.describe(p)):
        return
    cfg = json.load(open(os.path.join(out, "adapter_config.json")))
    peft_type = {"prompt": "PROMPT_TUNING", "prefix": "PREFIX_TUNING", "ptuning": "P_TUNING"}
    R.check(f"{name} export: peft_type {peft_type[method]}, task_type {task}, modules_to_save "
            f"['classifier']", cfg.get("peft_type") == peft_type[method] and
            cfg.get("task_type") == task and cfg.get("modules_to_save") == ["classifier"],
            json.dumps(cfg)[:400])
    _, st = g2.read_st(os.path.join(out, "adapter_model.safetensors"))
    T2 = {k: torch.from_numpy(v[2].copy()) for k, v in st.items()}
    want = sorted(["prompt_embeddings"] + ["base_model." + k for k in heads])
    if not R.check(f"{name} export: keys {want}", sorted(T2) == want, f"{sorted(T2)}"):
        return
    head_w = {k[len("base_model."):]: t for k, t in T2.items() if k != "prompt_embeddings"}
    data = os.path.join(work, name.replace(" ", "_") + "_eval.jsonl")
    bp.write_jsonl(data, recs)
    with torch.no_grad():
        ref = loss_fn(m, dict(W, **head_w), recs, head_fn,
                      export_inputs(method, m, T2["prompt_embeddings"])).item()
    q, got = bp.fw_eval(fw, ck, data, "--labels=0,1,2", f"--adapter={final}",
                        plug=METHODS[method][0].replace(",optim/adamw", ""))
    if R.check(f"{name}: eval with the adapter runs", got is not None, g2.describe(q)):
        r = g2.rel(got["eval_loss"], ref)
        R.check(f"{name}: the PEFT export applied in torch {ref:.9g} vs fw eval "
                f"{got['eval_loss']:.9g}", r <= bp.TOL_EVAL, f"rel {r:.2e}")


def setup(work, name, m, head, seed, rows):
    """Random base weights written as NAME.h5, rows as NAME.jsonl."""
    W = bp.random_weights(m, head, seed)
    ck, path = (os.path.join(work, name + ext) for ext in (".h5", ".jsonl"))
    bp.write_ckpt(ck, m, head, W)
    bp.write_jsonl(path, rows)
    return W, ck, path


def check_old_adapter(fw, work, ck, data):
    """An adapter file from before heads trained (the head in its base list,
    not among its tensors): one "fwrun:" line naming the head, exit 1 or 2."""
    new = os.path.join(work, "bert_prompt_init", "adapter-00000001.h5")
    old = os.path.join(work, "old_prompt.h5")
    shutil.copy(new, old)
    with h5py.File(old, "r+") as f:
        heads = [n for n in f["tensors"] if n.startswith("classifier.")]
        dt = f.attrs["base_tensors"].split("\t")[1]
        lines = "".join(f"{n}\t{dt}\t{','.join(map(str, f['tensors'][n].shape))}\n"
                        for n in heads)
        for n in heads:
            del f["tensors"][n]
        f.attrs["base_tensors"] = f.attrs["base_tensors"] + lines
    with open(old, "r+b") as f:      # fw's seal no longer holds: read it as another writer's
        f.write(bytes(8))
    p, _ = bp.fw_eval(fw, ck, data, "--labels=0,1,2", f"--adapter={old}",
                      plug=METHODS["prompt"][0].replace(",optim/adamw", ""))
    lines = [l for l in p.stderr.strip().splitlines()
             if l.startswith("fwrun:") and "valid-data:" not in l]
    R.check("bad input: an adapter file whose base holds the task head: one 'fwrun:' line "
            "naming it, exit 1 or 2", p.returncode in (1, 2) and len(lines) == 1 and
            "classifier." in lines[0] and "train it again" in lines[0], g2.describe(p))


def check_token_cls(fw, work, rng):
    """Token classification: each method's 10 steps and export, the loss on
    the real positions' first sub-tokens (PEFT's labels -100 elsewhere)."""
    m = bp.BERT
    recs = bp.tok_records(rng, bp.B * bp.TRAIN["ITERS"])
    W, ck, path = setup(work, "tok", m, "token-cls", 33, recs)
    for method in METHODS:
        check_method(fw, work, "bert-tok", m, None, W, ck, recs, path, method, tok_loss,
                     "TOKEN_CLS")
    # 32 tokens and 9 virtual ones pass BERT's 40 positions
    p = fw("train", METHODS["prompt"][0], "--prompt-num-virtual-tokens=9", *common(ck, path),
           "--train-iters=1", f"--run-dir={os.path.join(work, 'tok_too_long')}")
    lines = [l for l in p.stderr.strip().splitlines() if l.startswith("fwrun:")]
    R.check("bad input: --seq-length plus the virtual tokens past --max-position-embeddings: "
            "one 'fwrun:' line naming both, exit 1 or 2", p.returncode in (1, 2) and
            len(lines) == 1 and "virtual tokens" in lines[0] and
            "--max-position-embeddings" in lines[0], g2.describe(p))


def check_mlm(fw, work, rng):
    """BERT's MLM head under each method: 10 AdamW steps with fw's dynamic
    masking (seeded by (seed, step), bert_parity.mlm_mask) on the real rows;
    the export has no task head and no PEFT task type (null)."""
    m = bp.BERT
    docs = bp.mlm_docs(rng, bp.B * bp.TRAIN["ITERS"])
    W, ck, path = setup(work, "mlm", m, "mlm", 34, [{"text": d} for d in docs])
    batches = bp.mlm_micro_batches(docs, bp.TRAIN["ITERS"])
    for method in METHODS:
        check_method(fw, work, "bert-mlm", m, None, W, ck, docs, path, method, mlm_loss,
                     "MLM", MLM_FLAGS, batches)
        final = os.path.join(work, f"bert-mlm_{method}_run", "adapter-00000010.h5")
        out = os.path.join(work, f"bert-mlm_{method}_peft")
        p = fw("export-adapter", final, out)
        if R.check(f"bert-mlm {method}: export-adapter runs", p.returncode == 0, g2.describe(p)):
            cfg = json.load(open(os.path.join(out, "adapter_config.json")))
            _, st = g2.read_st(os.path.join(out, "adapter_model.safetensors"))
            R.check(f"bert-mlm {method} export: task_type null, modules_to_save null, only "
                    f"prompt_embeddings", cfg.get("task_type", 0) is None and
                    cfg.get("modules_to_save", 0) is None and sorted(st) == ["prompt_embeddings"],
                    f"{sorted(st)} {json.dumps(cfg)[:300]}")


def check_lora_renames(fw, work, rng):
    """LoRA on a RoBERTa MLM base with a partial choice of layers, a rank
    pattern and the MLM head's transform in modules_to_save: export-adapter
    --base gives Hugging Face's RobertaForMaskedLM paths in the keys and in
    adapter_config.json (target_modules, rank_pattern, modules_to_save:
    roberta.encoder..., lm_head.dense); without --base BERT's (bert.*, cls.*).
    The --base export re-applied in torch (keys mapped back through
    bert_parity.hf_key) gives fw's eval loss within 1e-5."""
    m = bp.ROBERTA
    docs = bp.mlm_docs(rng, 2 * bp.B)
    W, ck, path = setup(work, "rmlm", m, "mlm", 35, [{"text": d} for d in docs])
    q, v = "encoder.layer.1.attention.self.query", "encoder.layer.0.attention.self.value"
    run = os.path.join(work, "rmlm_lora")
    p = fw("train", "--plugins=arch/encoder,attention/mha,optim/adamw,peft/lora",
           *common(ck, path, MLM_FLAGS), "--train-iters=2", "--lr=0.05", "--lora-r=4",
           "--lora-alpha=8", f"--lora-target-modules={q},{v}", f"--lora-rank-pattern={q}=2",
           "--lora-modules-to-save=cls.predictions.transform.dense", f"--run-dir={run}")
    final = os.path.join(run, "adapter-00000002.h5")
    if not R.check("roberta mlm lora: train runs", p.returncode == 0 and os.path.exists(final),
                   g2.describe(p)):
        return
    names = {bp.hf_key("RobertaForMaskedLM", n): n for n in W}
    for base, pre, head in ((True, "roberta.", "lm_head.dense"),
                            (False, "bert.", "cls.predictions.transform.dense")):
        out = os.path.join(work, f"rmlm_peft_{base}")
        p = fw("export-adapter", final, out, *([f"--base={ck}"] if base else []))
        tag = "--base" if base else "no --base"
        if not R.check(f"roberta mlm lora export ({tag}) runs", p.returncode == 0,
                       g2.describe(p)):
            continue
        warn = [l for l in p.stderr.splitlines() if l.startswith("fwrun: warning:")]
        R.check(f"roberta mlm lora export ({tag}): "
                f"{'no warning' if base else 'one warning line naming --base'}",
                warn == [] if base else len(warn) == 1 and "--base" in warn[0], f"{warn}")
        cfg = json.load(open(os.path.join(out, "adapter_config.json")))
        R.check(f"roberta mlm lora export ({tag}): target_modules, rank_pattern and "
                f"modules_to_save under {pre}* / {head}",
                sorted(cfg["target_modules"]) == sorted([pre + v, pre + q]) and
                cfg["rank_pattern"] == {pre + q: 2} and cfg["modules_to_save"] == [head] and
                cfg["task_type"] is None,
                json.dumps({k: cfg[k] for k in ("target_modules", "rank_pattern",
                                                "modules_to_save", "task_type")}))
        _, st = g2.read_st(os.path.join(out, "adapter_model.safetensors"))
        want = sorted([f"base_model.model.{pre}{md}.lora_{x}.weight" for md in (q, v)
                       for x in "AB"] + [f"base_model.model.{head}.{x}" for x in ("weight",
                                                                               "bias")])
        R.check(f"roberta mlm lora export ({tag}): keys {want}", sorted(st) == want,
                f"{sorted(st)}")
        if not base or sorted(st) != want:
            continue
        T2 = {k[len("base_model.model."):]: torch.from_numpy(a[2].copy()) for k, a in st.items()}
        lora = {md: (T2[f"{pre}{md}.lora_A.weight"], T2[f"{pre}{md}.lora_B.weight"],
                     cfg["lora_alpha"] / (2 if md == q else cfg["r"])) for md in (q, v)}
        We = dict(W, **{names[k]: t for k, t in T2.items() if ".lora_" not in k})
        with torch.no_grad():
            tot = [bp.mlm_loss(m, We, b, k, lora)
                   for k, b in enumerate(bp.mlm_micro_batches(docs, len(docs) // bp.B))]
        ref = sum(float(x) for x, _ in tot) / sum(c for _, c in tot)
        e, got = bp.fw_eval(fw, ck, path, *MLM_FLAGS, f"--adapter={final}",
                            plug=bp.PLUG + ",peft/lora")
        if R.check("roberta mlm lora: eval with the adapter runs", got is not None,
                   g2.describe(e)):
            r = g2.rel(got["eval_loss"], ref)
            R.check(f"roberta mlm lora: the --base export applied in torch {ref:.9g} vs fw "
                    f"eval {got['eval_loss']:.9g}", r <= bp.TOL_EVAL, f"rel {r:.2e}")


def check_gpt2_base(fw, work, rng):
    """export-adapter --base with a GPT-2 base: the map adds transformer. to
    what the plugin wrote already; a partial choice of layers under
    Hugging Face's path, the keys as without --base."""
    d = os.path.join(work, "gpt2")
    os.makedirs(d, exist_ok=True)
    h5 = g2.import_random(fw, d, g2.random_weights(3), R)
    if not h5:
        return
    data = os.path.join(d, "train.bin")
    g2.write_shard(data, rng.randint(0, g2.VOCAB, size=200).astype(np.uint16))
    run = os.path.join(d, "lora")
    p = fw("train", "--plugins=arch/decoder,attention/mha,optim/adamw,peft/lora", f"--load={h5}",
           f"--data={data}", "--micro-batch-size=2", "--seq-length=16", "--train-iters=1",
           "--lr=0.01", "--lora-target-modules=h.1.attn.c_attn", f"--run-dir={run}",
           "--threads=2")
    final = os.path.join(run, "adapter-00000001.h5")
    if not R.check("gpt2 lora: train runs", p.returncode == 0 and os.path.exists(final),
                   g2.describe(p)):
        return
    got = {}
    for tag, extra in (("--base", [f"--base={h5}"]), ("no --base", [])):
        out = os.path.join(d, tag.replace(" ", "_"))
        p = fw("export-adapter", final, out, *extra)
        if not R.check(f"gpt2 lora export ({tag}) runs, no warning", p.returncode == 0 and
                       "warning" not in p.stderr, g2.describe(p)):
            return
        cfg = json.load(open(os.path.join(out, "adapter_config.json")))
        _, st = g2.read_st(os.path.join(out, "adapter_model.safetensors"))
        got[tag] = (cfg["target_modules"], sorted(st))
    want = (["transformer.h.1.attn.c_attn"],
            [f"base_model.model.transformer.h.1.attn.c_attn.lora_{x}.weight" for x in "AB"])
    R.check(f"gpt2 lora export: target_modules and keys {want}, with and without --base",
            got.get("--base") == want and got.get("no --base") == want, f"{got}")


TUNERS = {"ia3": ["--plugins=arch/encoder,attention/mha,optim/adamw,peft/ia3",
                  "--ia3-target-modules=key,value,output.dense",
                  "--ia3-feedforward-modules=output.dense"],
          "adalora": ["--plugins=arch/encoder,attention/mha,optim/adamw,peft/adalora",
                      "--adalora-init-r=4", "--adalora-target-r=2", "--adalora-tinit=1",
                      "--adalora-tfinal=1", "--adalora-lora-alpha=8"]}


def suffix_targets(m, keys, pre="bert."):
    """The encoder's Linear layers PEFT's suffix matching picks for keys (the
    full name equal to a key or ending in "." + key), under BertModel's
    "bert." or RobertaModel's "roberta."."""
    mods = [f"{pre}encoder.layer.{l}.{n}" for l in range(m["L"])
            for n in ("attention.self.query", "attention.self.key", "attention.self.value",
                      "attention.output.dense", "intermediate.dense", "output.dense")]
    return sorted(md for md in mods if any(md == k or md.endswith("." + k) for k in keys))


def tuner_weights(method, cfg, T2, W, arch="bert."):
    """The export applied as PEFT applies it, on W's names: IA3
    (tuners/ia3/layer.py Linear.forward) y = base(x) * l for a target, y =
    base(x * l) for a feedforward one, folded into the layer's weight and
    bias (exact: l scales W's rows and b, or W's columns); AdaLoRA
    (tuners/adalora/layer.py SVDLinear.forward) y = base(x) + x (A * E)^T B^T
    * lora_alpha / (ranknum + 1e-5), ranknum = init_r (the cut tensors loaded
    as adalora_parity takes them). arch: the model's prefix ("bert.",
    "roberta."), fw's names without it. Returns (weights, lora)."""
    We = dict(W, **{k[len("base_model.model."):]: t for k, t in T2.items()
                    if k.startswith("base_model.model.classifier.")})
    pre = "base_model.model." + arch
    if method == "ia3":
        for k, l in T2.items():
            if not k.endswith(".ia3_l"):
                continue
            md = k[len(pre):-len(".ia3_l")]
            if arch + md in cfg["feedforward_modules"]:
                We[md + ".weight"] = W[md + ".weight"] * l.reshape(1, -1)
            else:
                We[md + ".weight"] = W[md + ".weight"] * l.reshape(-1, 1)
                We[md + ".bias"] = W[md + ".bias"] * l.reshape(-1)
        return We, None
    s = cfg["lora_alpha"] / (float(cfg["init_r"]) + 1e-5)
    mods = sorted({k[len(pre):].rsplit(".lora_", 1)[0] for k in T2 if ".lora_" in k})
    return We, {md: (T2[f"{pre}{md}.lora_A"] * T2[f"{pre}{md}.lora_E"],
                     T2[f"{pre}{md}.lora_B"], s) for md in mods}


def check_tuner_export(fw, work, rng):
    """IA3 and AdaLoRA on a BERT and a RoBERTa seq-cls base (the latter
    exported with --base): a few fwrun steps (the head trains as
    modules_to_save), export-adapter, the export re-applied in torch
    (tuner_weights) against fwrun eval with the adapter."""
    for tag, m, head, head_fn, records, arch in (
            ("bert", bp.BERT, "seq-cls", bp.seq_logits, bp.seq_records, "bert."),
            ("roberta", bp.ROBERTA, "seq-cls-roberta", bp.roberta_seq_logits,
             bp.single_records, "roberta.")):
        check_tuner_base(fw, work, rng, tag, m, head, head_fn, records, arch)


def check_tuner_base(fw, work, rng, tag, m, head, head_fn, records, arch):
    recs = records(rng, bp.B * 6)
    W, ck, path = setup(work, f"tuner_{tag}", m, head, 34, recs)
    heads = sorted(k for k in W if k.startswith("classifier."))
    want_targets = {"ia3": suffix_targets(m, ["key", "value", "output.dense"], arch),
                    "adalora": suffix_targets(m, ["query", "value"], arch)}
    extra = [f"--base={ck}"] if arch != "bert." else []
    for method, flags in TUNERS.items():
        name = f"{tag} {method}"
        run = os.path.join(work, f"tuner_{tag}_{method}")
        p = fw("train", *flags, *common(ck, path), "--train-iters=6", "--lr=0.05",
               "--weight-decay=0", f"--run-dir={run}")
        final = os.path.join(run, "adapter-00000006.h5")
        if not R.check(f"{name}: train runs", p.returncode == 0 and os.path.exists(final),
                       g2.describe(p)):
            continue
        out = os.path.join(work, f"tuner_{tag}_{method}_peft")
        p = fw("export-adapter", final, out, *extra)
        if not R.check(f"{name}: export-adapter {' '.join(extra)} of an adapter with a task "
                       "head runs",
                       p.returncode == 0, g2.describe(p)):
            continue
        cfg = json.load(open(os.path.join(out, "adapter_config.json")))
        tg = sorted(cfg.get("target_modules") or [])
        ff = sorted(cfg.get("feedforward_modules") or [])
        want_ff = suffix_targets(m, ["output.dense"], arch) if method == "ia3" else []
        R.check(f"{name} export: peft_type {method.upper()}, task_type SEQ_CLS, "
                f"modules_to_save ['classifier'], fan_in_fan_out false, target_modules "
                f"{want_targets[method]}", cfg.get("peft_type") == method.upper() and
                cfg.get("task_type") == "SEQ_CLS" and cfg.get("modules_to_save") ==
                ["classifier"] and cfg.get("fan_in_fan_out") is False and
                tg == want_targets[method] and ff == want_ff, json.dumps(cfg)[:600])
        _, st = g2.read_st(os.path.join(out, "adapter_model.safetensors"))
        T2 = {k: torch.from_numpy(v[2].copy()) for k, v in st.items()}
        parts = ["ia3_l"] if method == "ia3" else ["lora_A", "lora_B", "lora_E"]
        want = sorted([f"base_model.model.{t}.{x}" for t in want_targets[method]
                       for x in parts] + ["base_model.model." + k for k in heads])
        if not R.check(f"{name} export: keys {want}", sorted(T2) == want, f"{sorted(T2)}"):
            continue
        if method == "adalora":
            rp = cfg.get("rank_pattern") or {}
            kept = [sum(rp.get(t + ".lora_E", [])) for t in want_targets[method]]
            R.check(f"{name} export: rank_pattern per layer, the tensors cut to the kept "
                    f"ranks {kept} (budget fell from 4 to 2 on average)",
                    sorted(rp) == [t + ".lora_E" for t in want_targets[method]] and
                    sum(kept) < 4 * len(kept) and
                    all(T2[f"base_model.model.{t}.lora_E"].shape[0] == k
                        for t, k in zip(want_targets[method], kept)), json.dumps(rp))
        We, lora = tuner_weights(method, cfg, T2, W, arch)
        A = adapter(final)
        moved = max(float((A[k] - W[k]).abs().max()) for k in heads)
        R.check(f"{name}: the head trained (moved {moved:.2e}) and is exported as it is",
                moved > 1e-4 and all(We[k].equal(A[k]) for k in heads))
        no_orth = ["--adalora-orth-reg-weight=0"] if method == "adalora" else []
        q, got = bp.fw_eval(fw, ck, path, "--labels=0,1,2", f"--adapter={final}", *no_orth,
                            plug=flags[0].replace(",optim/adamw", ""))
        if not R.check(f"{name}: eval with the adapter runs", got is not None, g2.describe(q)):
            continue
        with torch.no_grad():
            ref = seq_loss(m, We, recs, head_fn, {"lora": lora}).item()
            base = seq_loss(m, W, recs, head_fn, {}).item()
        r = g2.rel(got["eval_loss"], ref)
        R.check(f"{name}: the PEFT export applied in torch {ref:.9g} vs fw eval "
                f"{got['eval_loss']:.9g}", r <= bp.TOL_EVAL, f"rel {r:.2e}")
        R.check(f"{name}: the base's loss {base:.9g} is off fw's by more than 1e-3 (the "
                f"check can fail)", g2.rel(got["eval_loss"], base) > 1e-3)


def main():
    a, fw = g2.cli(__doc__)

    def body(work):
        rng = np.random.RandomState(5)
        for tag, m, head, head_fn, seed, records in (
                ("bert", bp.BERT, "seq-cls", bp.seq_logits, 31, bp.seq_records),
                ("roberta", bp.ROBERTA, "seq-cls-roberta", bp.roberta_seq_logits, 32,
                 bp.single_records)):
            W = bp.random_weights(m, head, seed)
            ck = os.path.join(work, f"{tag}_seq.h5")
            bp.write_ckpt(ck, m, head, W)
            train = records(rng, bp.B * bp.TRAIN["ITERS"])
            train_path = os.path.join(work, f"{tag}_train.jsonl")
            bp.write_jsonl(train_path, train)
            for method in METHODS:
                check_method(fw, work, tag, m, head_fn, W, ck, train, train_path, method)
            if tag == "bert":
                check_old_adapter(fw, work, ck, train_path)
        check_token_cls(fw, work, rng)
        check_mlm(fw, work, rng)
        check_lora_renames(fw, work, rng)
        check_gpt2_base(fw, work, rng)
        check_tuner_export(fw, work, rng)

    return R.run("encoder_peft", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
