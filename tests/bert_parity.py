#!/usr/bin/python3
"""bert_parity.py - arch/encoder (BERT, RoBERTa options) against a plain-torch transcription.

Usage: /usr/bin/python3 tests/bert_parity.py --fwrun PATH --plugin-path DIR

The reference is written from Hugging Face's modeling_bert (BertEmbeddings,
BertSelfAttention with the extended attention mask (1 - mask) * finfo.min,
BertSelfOutput / BertOutput post-LayerNorm, GELU erf, BertPooler tanh on
[CLS], BertLMPredictionHead with the decoder tied to the word embeddings and
its own bias), not from fw. Random weights in HF's names (without "bert.")
are written as an fw checkpoint. Inputs are BERT's: [CLS] text [SEP]
(text_pair [SEP], token type 1), byte tokens with [CLS] [SEP] [MASK] [PAD]
after the byte tokenizer's 257. fw runs padded batches; the reference runs
every record alone, unpadded, so padding must change nothing.
Checks:
  - eval loss (sequence classification with pairs, token classification,
    MLM) within 1e-5 relative; classification logits (eval --output) within
    1e-5; RoBERTa options (position offset 2, one token type) on MLM;
  - 10 AdamW steps (sequence classification, MLM) per-step loss and
    gradient norm within 1e-4;
  - LoRA on token classification and MLM: 3 trained steps exported with
    export-adapter (task_type TOKEN_CLS with the classifier in
    modules_to_save; none for MLM) and re-applied in torch: eval loss
    within 1e-5 of fw's with the adapter; the same for the sequence
    classifiers' 10-step LoRA (BERT: bert.* keys; RoBERTa with
    export-adapter --base: roberta.encoder.layer.N... keys, task_type
    SEQ_CLS, classifier.dense / out_proj saved), and --base naming a missing
    file refused in one line with no folder left;
  - the MLM masking: fw's documented draw (splitmix64 of seed, micro-batch
    index, position; tasks.h) replayed here, so the MLM losses above also pin
    which tokens are masked and how;
  - padding: changing [PAD]'s embedding changes no logit of a real token,
    while changing a real token's does;
  - RoBERTa sentence pairs with a RobertaProcessing tokenizer.json (<s> a </s></s>
    b </s>, one token type): eval loss and logits against torch on the ids npm
    tokenizers (Hugging Face's library) gives encode(a, b);
  - --tokenizer=byte with an MLM head: --vocab-size becomes 261 (the task's four
    specials), a smaller one is refused in one line;
  - --seq-cls-head=roberta (RobertaClassificationHead) on RoBERTa's options:
    eval loss and logits within 1e-5, 10 AdamW steps (loss, gradient norm)
    within 1e-4, and 10 LoRA steps with the whole classifier (dense and
    out_proj) in modules_to_save; --hidden-dropout-prob=0.3 in training
    (the head's two dropouts and the encoder's): the loss moves from p = 0
    (torch's), repeats bit for bit with the same --seed, moves with another;
  - Hugging Face folders (HF keys, the tied decoder included, config.json
    with id2label) of BertForSequenceClassification, BertForTokenClassification,
    BertForMaskedLM, RobertaForMaskedLM, RobertaForSequenceClassification and
    BertModel: fwrun import, eval
    against the transcription on the folder's weights (1e-5), export back bit
    for bit with the same config values; BertModel fine-tunes as a classifier;
  - bad input: a label outside the stored list, tokens and labels of
    different lengths, a config.json whose model_type disagrees with its
    class: one "fwrun:" line, exit 1 or 2, no output file.
Ends with "bert_parity: N passed, M failed"; exit 0 only when none failed.
"""
import json
import math
import os
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as g2  # noqa: E402  (Results, Fw, cli, rel, describe)

torch.set_num_threads(2)
R = g2.Results()

CLS, SEP, MASK, PAD = 257, 258, 259, 260    # after the byte tokens and <|endoftext|>
VOCAB = 261
T = 32
B = 4
TOL_EVAL, TOL_STEP = 1e-5, 1e-4
TRAIN = dict(ITERS=10, LR=2e-3, WD=0.1, BETA1=0.9, BETA2=0.95, ADAM_EPS=1e-8)
MLM_PROB = 0.15
SEED = 1234

BERT = dict(L=2, H=4, C=32, F=64, P=40, types=2, offset=0, eps=1e-12)
ROBERTA = dict(L=2, H=2, C=24, F=48, P=40, types=1, offset=2, eps=1e-5)


def flags(m, head, labels=3):
    if head == "seq-cls-mean":
        return flags(m, "seq-cls", labels) + ["--pooling=mean"]
    if head == "seq-cls-roberta":
        return flags(m, "seq-cls", labels) + ["--seq-cls-head=roberta"]
    return [f"--num-hidden-layers={m['L']}", f"--num-attention-heads={m['H']}",
            f"--hidden-size={m['C']}", f"--intermediate-size={m['F']}",
            f"--max-position-embeddings={m['P']}", f"--type-vocab-size={m['types']}",
            f"--position-offset={m['offset']}", f"--layer-norm-eps={m['eps']}",
            f"--vocab-size={VOCAB}", f"--head={head}", f"--num-labels={labels}"]


def names(m, head, labels=3):
    C, Fd = m["C"], m["F"]
    out = [("embeddings.word_embeddings.weight", (VOCAB, C)),
           ("embeddings.position_embeddings.weight", (m["P"], C)),
           ("embeddings.token_type_embeddings.weight", (m["types"], C)),
           ("embeddings.LayerNorm.weight", (C,)), ("embeddings.LayerNorm.bias", (C,))]
    for l in range(m["L"]):
        p = f"encoder.layer.{l}."
        for n in ("query", "key", "value"):
            out += [(p + f"attention.self.{n}.weight", (C, C)), (p + f"attention.self.{n}.bias", (C,))]
        out += [(p + "attention.output.dense.weight", (C, C)), (p + "attention.output.dense.bias", (C,)),
                (p + "attention.output.LayerNorm.weight", (C,)),
                (p + "attention.output.LayerNorm.bias", (C,)),
                (p + "intermediate.dense.weight", (Fd, C)), (p + "intermediate.dense.bias", (Fd,)),
                (p + "output.dense.weight", (C, Fd)), (p + "output.dense.bias", (C,)),
                (p + "output.LayerNorm.weight", (C,)), (p + "output.LayerNorm.bias", (C,))]
    if head == "mlm":
        out += [("cls.predictions.transform.dense.weight", (C, C)),
                ("cls.predictions.transform.dense.bias", (C,)),
                ("cls.predictions.transform.LayerNorm.weight", (C,)),
                ("cls.predictions.transform.LayerNorm.bias", (C,)),
                ("cls.predictions.bias", (VOCAB,))]
    elif head == "seq-cls":
        out += [("pooler.dense.weight", (C, C)), ("pooler.dense.bias", (C,)),
                ("classifier.weight", (labels, C)), ("classifier.bias", (labels,))]
    elif head == "seq-cls-mean":               # mean pooling: no pooler
        out += [("classifier.weight", (labels, C)), ("classifier.bias", (labels,))]
    elif head == "seq-cls-roberta":            # RobertaClassificationHead
        out += [("classifier.dense.weight", (C, C)), ("classifier.dense.bias", (C,)),
                ("classifier.out_proj.weight", (labels, C)), ("classifier.out_proj.bias", (labels,))]
    else:
        out += [("classifier.weight", (labels, C)), ("classifier.bias", (labels,))]
    return out


def random_weights(m, head, seed):
    g = torch.Generator().manual_seed(seed)
    W = {}
    for n, shape in names(m, head):
        if "LayerNorm" in n:
            t = (1.0 if n.endswith("weight") else 0.0) + 0.1 * torch.randn(shape, generator=g)
        elif n.endswith("bias"):
            t = 0.05 * torch.randn(shape, generator=g)
        else:
            t = 0.1 * torch.randn(shape, generator=g)
        W[n] = t.float().contiguous()
    return W


def write_ckpt(path, m, head, W):
    ini = "[arch/encoder]\n" + "".join(f"{a[2:].partition('=')[0]} = {a.partition('=')[2]}\n"
                                       for a in flags(m, head))
    with h5py.File(path, "w") as f:
        f.attrs["fw_format"] = "fw-tensors"
        f.attrs["fw_format_version"] = np.int32(1)
        f.attrs["fw_arch"] = "arch/encoder"
        f.attrs["config"] = ini
        t = f.create_group("tensors", track_order=True)
        for n, _ in names(m, head):
            t[n] = W[n].numpy()


# --- the reference: Hugging Face modeling_bert, transcribed -----------------------------

def encoder(m, W, ids, types, mask, lora=None, virtual=None, prefix=None):
    """BertModel's sequence output for ids (N, S), types (N, S), mask (N, S) 1/0;
    lora: {module: (A, B, scaling)} adds PEFT's scaling * B(A(x)) to those.
    PEFT's prompt learning: virtual (P, C) prompt tuning's embeddings, which
    PeftModelForSequenceClassification puts in front of the word embeddings
    (inputs_embeds), with P zeros in front of token_type_ids and P ones of
    attention_mask (output (N, P + S, C), positions 0..P+S-1 as BertEmbeddings
    numbers inputs_embeds); prefix [(P, 2C)] per layer, keys then values, as
    past_key_values: P ones in front of the mask, the tokens at positions
    P.. (past_key_values_length)."""
    N, S = ids.shape
    C, H = m["C"], m["H"]
    D = C // H
    x = W["embeddings.word_embeddings.weight"][ids]
    past = 0 if prefix is None else prefix[0].shape[0]
    if virtual is not None:
        x = torch.cat([virtual[None].expand(N, -1, -1), x], 1)
        types = torch.cat([torch.zeros(N, virtual.shape[0], dtype=types.dtype), types], 1)
    mask = torch.cat([torch.ones(N, x.shape[1] - S + past, dtype=mask.dtype), mask], 1)
    pos = torch.arange(past, past + x.shape[1]) + m["offset"]
    x = (x + W["embeddings.position_embeddings.weight"][pos][None] +
         W["embeddings.token_type_embeddings.weight"][types])
    ln = lambda x, n: F.layer_norm(x, (C,), W[n + ".weight"], W[n + ".bias"], m["eps"])  # noqa
    def lin(x, n):
        y = F.linear(x, W[n + ".weight"], W[n + ".bias"])
        if lora and n in lora:
            A, Bm, s = lora[n]
            y = y + s * F.linear(F.linear(x, A), Bm)
        return y
    x = ln(x, "embeddings.LayerNorm")
    ext = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    heads = lambda t: t.view(t.shape[0], -1, H, D).permute(0, 2, 1, 3)  # noqa
    for l in range(m["L"]):
        p = f"encoder.layer.{l}."
        q, k, v = (heads(lin(x, p + "attention.self." + n)) for n in ("query", "key", "value"))
        if prefix is not None:
            pk, pv = (heads(t[None]).expand(N, -1, -1, -1) for t in prefix[l].split(C, 1))
            k, v = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(D) + ext
        ctx = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(N, -1, C)
        x = ln(lin(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        h = F.gelu(lin(x, p + "intermediate.dense"))
        x = ln(lin(h, p + "output.dense") + x, p + "output.LayerNorm")
    return x


def mlm_logits(m, W, x):
    C = m["C"]
    h = F.gelu(F.linear(x, W["cls.predictions.transform.dense.weight"],
                        W["cls.predictions.transform.dense.bias"]))
    h = F.layer_norm(h, (C,), W["cls.predictions.transform.LayerNorm.weight"],
                     W["cls.predictions.transform.LayerNorm.bias"], m["eps"])
    return h @ W["embeddings.word_embeddings.weight"].t() + W["cls.predictions.bias"]


def seq_logits(W, x):
    pooled = torch.tanh(F.linear(x[:, 0], W["pooler.dense.weight"], W["pooler.dense.bias"]))
    return F.linear(pooled, W["classifier.weight"], W["classifier.bias"])


def roberta_seq_logits(W, x):
    """RobertaClassificationHead (dropout off): out_proj(tanh(dense(x[:, 0])))."""
    h = torch.tanh(F.linear(x[:, 0], W["classifier.dense.weight"], W["classifier.dense.bias"]))
    return F.linear(h, W["classifier.out_proj.weight"], W["classifier.out_proj.bias"])


def tok_logits(W, x):
    return F.linear(x, W["classifier.weight"], W["classifier.bias"])


def one(m, W, ids, types, lora=None, **peft):
    """The encoder on one record alone: no padding."""
    t = torch.tensor([ids])
    return encoder(m, W, t, torch.tensor([types]), torch.ones_like(t), lora, **peft)


# --- records and their inputs, as BERT lays them out ------------------------------------

def words(rng, n):
    return " ".join("".join(chr(97 + rng.randint(26)) for _ in range(rng.randint(1, 6)))
                    for _ in range(n))


def seq_records(rng, n):
    out = []
    for i in range(n):
        r = {"text": words(rng, rng.randint(1, 4)), "label": int(rng.randint(3))}
        if i % 2:
            r["text_pair"] = words(rng, rng.randint(1, 3))
        out.append(r)
    return out


def seq_inputs(r):
    a = list(r["text"].encode())
    ids, types = [CLS] + a + [SEP], [0] * (len(a) + 2)
    if "text_pair" in r:
        b = list(r["text_pair"].encode())
        ids, types = ids + b + [SEP], types + [1] * (len(b) + 1)
    assert len(ids) <= T
    return ids, types


def tok_records(rng, n):
    out = []
    for _ in range(n):
        ws = [words(rng, 1) for _ in range(rng.randint(1, 5))]
        out.append({"tokens": ws, "labels": [int(rng.randint(3)) for _ in ws]})
    return out


def tok_inputs(r):
    ids, first = [CLS], []
    for w, y in zip(r["tokens"], r["labels"]):
        first.append((len(ids), y))
        ids += list(w.encode())
    ids.append(SEP)
    assert len(ids) <= T
    return ids, first


def mlm_docs(rng, n):
    return [words(rng, rng.randint(2, 6)) for _ in range(n)]


M64 = (1 << 64) - 1


def mix(x):                                     # splitmix64's finaliser (tasks.h's draw)
    x = (x + 0x9e3779b97f4a7c15) & M64
    x = ((x ^ (x >> 30)) * 0xbf58476d1ce4e5b9) & M64
    x = ((x ^ (x >> 27)) * 0x94d049bb133111eb) & M64
    return x ^ (x >> 31)


def unit(h):
    return (h >> 11) * (1.0 / 9007199254740992.0)


def mlm_mask(rows, index):
    """rows: B lists of ids (the rows of micro-batch index, unpadded, each at
    offset b * T). Returns the masked ids and targets (-1 = not in the loss)."""
    base = mix(mix(SEED) ^ index)
    out = []
    for b, ids in enumerate(rows):
        x, y = list(ids), [-1] * len(ids)
        for j, t in enumerate(ids):
            if t in (CLS, SEP, PAD):
                continue
            h = mix(base ^ (b * T + j))
            if unit(h) >= MLM_PROB:
                continue
            y[j] = t
            r = unit(mix(h ^ 0x6d6c6d))
            if r < 0.8:
                x[j] = MASK
            elif r < 0.9:
                x[j] = mix(h ^ 0x72616e64) % VOCAB
        out.append((x, y))
    return out


def write_jsonl(path, recs):
    with open(path, "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")


# --- checks -----------------------------------------------------------------------------

PLUG = "--plugins=arch/encoder,attention/mha"
TRAIN_PLUG = PLUG + ",optim/adamw"


def fw_eval(fw, ck, data, *extra, plug=PLUG):
    p = fw("eval", plug, f"--load={ck}", f"--valid-data={data}", "--tokenizer=byte",
           f"--micro-batch-size={B}", f"--seq-length={T}", "--threads=2", *extra)
    return p, (json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else None)


def seq_reference(m, W, recs, lora=None, head=seq_logits, **peft):
    logits = [head(W, one(m, W, *seq_inputs(r), lora, **peft))[0] for r in recs]
    return torch.stack(logits)


def check_mean_pooling(fw, work, m, recs, path):
    """--pooling=mean: the classifier on the mean of the real tokens' outputs
    (sentence-transformers' mean pooling), against torch on unpadded records."""
    W = random_weights(m, "seq-cls-mean", 21)
    ck = os.path.join(work, "seq_mean.h5")
    write_ckpt(ck, m, "seq-cls-mean", W)
    with torch.no_grad():
        ref = torch.stack([tok_logits(W, one(m, W, *seq_inputs(r))[0].mean(0)) for r in recs])
    out = os.path.join(work, "mean_pred.jsonl")
    p, got = fw_eval(fw, ck, path, "--labels=0,1,2", f"--output={out}")
    if R.check("seq-cls --pooling=mean: eval runs", got is not None, g2.describe(p)):
        err = logit_err([q["logits"] for q in map(json.loads, open(out))], ref)
        R.check("seq-cls --pooling=mean: logits within 1e-5 of torch", err <= TOL_EVAL,
                f"max err / max |logit| {err:.2e}")


def check_seq_eval(fw, work, m, W, ck, recs, path):
    with torch.no_grad():
        ref = seq_reference(m, W, recs)
        loss = F.cross_entropy(ref, torch.tensor([r["label"] for r in recs])).item()
    out = os.path.join(work, "pred.jsonl")
    p, got = fw_eval(fw, ck, path, "--labels=0,1,2", f"--output={out}")
    if not R.check("seq-cls: eval runs", got is not None, g2.describe(p)):
        return
    r = g2.rel(got["eval_loss"], loss)
    R.check(f"seq-cls (pairs, padding): eval loss fw {got['eval_loss']:.9g} vs torch {loss:.9g}",
            r <= TOL_EVAL, f"rel {r:.2e}")
    pred = [json.loads(l) for l in open(out)]
    err = logit_err([q["logits"] for q in pred], ref)
    R.check(f"seq-cls: logits of {len(pred)} records within {TOL_EVAL:g}",
            len(pred) == len(recs) and err <= TOL_EVAL, f"max err / max |logit| {err:.2e}")
    acc = float((ref.argmax(-1) == torch.tensor([r["label"] for r in recs])).double().mean())
    R.check("seq-cls: accuracy as torch's argmax", abs(got["accuracy"] - acc) < 1e-8,
            f"fw {got['accuracy']} torch {acc}")
    cm = np.zeros((3, 3), dtype=int)
    for r, q in zip(recs, ref.argmax(-1).tolist()):
        cm[r["label"], q] += 1
    R.check("seq-cls: confusion matrix", got["confusion"] == cm.tolist(), f"{got['confusion']}")


def tok_reference(m, W, recs, lora=None, **peft):
    """First sub-tokens' logits and labels; with virtual tokens (peft) those of
    the real positions, the last len(ids)."""
    logits, labels = [], []
    for r in recs:
        ids, first = tok_inputs(r)
        x = tok_logits(W, one(m, W, ids, [0] * len(ids), lora, **peft))[0][-len(ids):]
        for j, y in first:
            logits.append(x[j])
            labels.append(y)
    return torch.stack(logits), torch.tensor(labels)


def single_records(rng, n):
    """Sequence-classification records without a pair (RoBERTa has one token type)."""
    return [{"text": words(rng, rng.randint(1, 4)), "label": int(rng.randint(3))}
            for _ in range(n)]


def roberta_tokenizer(path):
    """A RoBERTa-style tokenizer.json of VOCAB tokens: GPT-2's 256 byte
    characters, <s> </s> <pad> <mask>, one merge ("Ġ a"); RobertaProcessing."""
    import bpe_reference as br
    vocab = {br.BYTE_ENC[b]: b for b in range(256)}
    specials = ["<s>", "</s>", "<pad>", "<mask>"]
    vocab.update({t: 256 + i for i, t in enumerate(specials)})
    vocab[br.BYTE_ENC[32] + "a"] = VOCAB - 1
    assert len(vocab) == VOCAB
    added = [{"id": vocab[t], "content": t, "single_word": False, "lstrip": t == "<mask>",
              "rstrip": False, "normalized": False, "special": True} for t in specials]
    bl = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    j = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
         "normalizer": None, "pre_tokenizer": bl,
         "post_processor": {"type": "RobertaProcessing", "sep": ["</s>", vocab["</s>"]],
                            "cls": ["<s>", vocab["<s>"]], "trim_offsets": True,
                            "add_prefix_space": True},
         "decoder": bl,
         "model": {"type": "BPE", "dropout": None, "unk_token": None,
                   "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": False,
                   "byte_fallback": False, "ignore_merges": False, "vocab": vocab,
                   "merges": [br.BYTE_ENC[32] + " a"]}}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False)


def check_roberta_pairs(fw, work, rng, node_tokenizers):
    """RoBERTa sentence pairs (<s> a </s></s> b </s>, one token type) with a
    RobertaProcessing tokenizer.json: fw's eval loss and logits against torch's
    RobertaClassificationHead on the ids Hugging Face's tokenizers library
    (npm tokenizers) gives encode(a, b)."""
    m, head = ROBERTA, "seq-cls-roberta"
    tok = os.path.join(work, "roberta_tokenizer.json")
    roberta_tokenizer(tok)
    recs = [{"text": words(rng, rng.randint(1, 3)), "text_pair": words(rng, rng.randint(1, 3)),
             "label": int(rng.randint(3))} for _ in range(8)]
    path = os.path.join(work, "rpairs.jsonl")
    write_jsonl(path, recs)
    cases, ref_out = os.path.join(work, "rpairs.cases"), os.path.join(work, "rpairs.ref")
    with open(cases, "w") as f:
        for r in recs:
            f.write(json.dumps({"a": r["text"], "b": r["text_pair"], "add": True, "trunc": None,
                                "pad": None}) + "\n")
    if not R.check("roberta pairs: the reference tokenizer (npm tokenizers; hf_tokenizers.py "
                   "--fetch-only installs it) is there", os.path.isdir(node_tokenizers),
                   node_tokenizers):
        return
    import subprocess
    p = subprocess.run(["node", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                             "hf_reference.js"), node_tokenizers, "pairs", tok,
                        cases, ref_out], capture_output=True, text=True)
    if not R.check("roberta pairs: the reference encodes them", p.returncode == 0, p.stderr[-400:]):
        return
    ref_rows = [json.loads(l) for l in open(ref_out)]
    sep = json.load(open(tok))["model"]["vocab"]["</s>"]
    R.check("roberta pairs: the reference's rows are <s> a </s></s> b </s>, type ids 0",
            all(x["ids"].count(sep) == 3 and set(x["type_ids"]) == {0} and len(x["ids"]) <= T
                for x in ref_rows), str(ref_rows[0])[:200])
    W = random_weights(m, head, 17)
    ck = os.path.join(work, "rpairs.h5")
    write_ckpt(ck, m, head, W)
    with torch.no_grad():
        ref = torch.stack([roberta_seq_logits(W, one(m, W, x["ids"], x["type_ids"]))[0]
                           for x in ref_rows])
        loss = F.cross_entropy(ref, torch.tensor([r["label"] for r in recs])).item()
    out = os.path.join(work, "rpairs_pred.jsonl")
    p = fw("eval", PLUG, f"--load={ck}", f"--valid-data={path}", "--tokenizer=gpt2",
           f"--vocab-file={tok}", f"--micro-batch-size={B}", f"--seq-length={T}", "--threads=2",
           "--labels=0,1,2", f"--output={out}")
    got = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else None
    check_eval_logits("roberta pairs", "roberta seq-cls pairs", p, got, out, ref, loss)


def check_eval_logits(what, which, p, got, out, ref, loss):
    """fw's eval (process p, its metrics got, its --output file out) against
    torch's logits ref and loss."""
    if R.check(f"{what}: eval runs", got is not None, g2.describe(p)):
        r = g2.rel(got["eval_loss"], loss)
        err = logit_err([q["logits"] for q in map(json.loads, open(out))], ref)
        R.check(f"{which}: eval loss fw {got['eval_loss']:.9g} vs torch "
                f"{loss:.9g}, logits within {TOL_EVAL:g}", r <= TOL_EVAL and err <= TOL_EVAL,
                f"rel {r:.2e}, max err / max |logit| {err:.2e}")


def check_roberta_seq(fw, work, rng):
    """--seq-cls-head=roberta on RoBERTa's options: eval loss and logits, then
    10 AdamW steps (loss, gradient norm) against torch's RobertaClassificationHead."""
    m, head = ROBERTA, "seq-cls-roberta"
    recs = single_records(rng, 8)
    path = os.path.join(work, "rseq.jsonl")
    write_jsonl(path, recs)
    W = random_weights(m, head, 16)
    ck = os.path.join(work, "rseq.h5")
    write_ckpt(ck, m, head, W)
    y = torch.tensor([r["label"] for r in recs])
    with torch.no_grad():
        ref = seq_reference(m, W, recs, head=roberta_seq_logits)
        loss = F.cross_entropy(ref, y).item()
    out = os.path.join(work, "rseq_pred.jsonl")
    p, got = fw_eval(fw, ck, path, "--labels=0,1,2", f"--output={out}")
    check_eval_logits("roberta seq-cls", "roberta seq-cls (padding)", p, got, out, ref, loss)
    train = single_records(rng, B * TRAIN["ITERS"])
    train_path = os.path.join(work, "rseq_train.jsonl")
    write_jsonl(train_path, train)

    def step(P, k):
        rs = train[k * B:(k + 1) * B]
        return F.cross_entropy(seq_reference(m, P, rs, head=roberta_seq_logits),
                               torch.tensor([r["label"] for r in rs]))
    check_train(fw, work, "roberta seq-cls", m, head, W, ck, train_path, step)
    check_roberta_dropout(fw, work, ck, train_path, lambda: step(W, 0))
    check_lora(fw, work, m, W, ck, train, train_path, recs, path, roberta_seq_logits,
               [n for n, _ in names(m, head) if n.startswith("classifier.")], " roberta")


def check_roberta_dropout(fw, work, ck, train_path, first_ref):
    """--hidden-dropout-prob in training with RobertaClassificationHead (its
    two dropouts, the encoder's too): p = 0 is torch's loss without dropout,
    p = 0.3 changes the first step's loss and repeats bit for bit with the
    same --seed, and another seed draws another loss."""
    def first_loss(tag, prob, seed):
        run = os.path.join(work, f"rdrop_{tag}")
        p = fw("train", TRAIN_PLUG, f"--load={ck}", f"--data={train_path}", "--no-shuffle",
               "--tokenizer=byte", f"--micro-batch-size={B}", f"--seq-length={T}",
               "--train-iters=1", "--lr=0", "--lr-decay-style=constant", "--labels=0,1,2",
               f"--hidden-dropout-prob={prob}", f"--seed={seed}", "--threads=2",
               f"--run-dir={run}")
        if not R.check(f"roberta dropout {tag}: train runs", p.returncode == 0, g2.describe(p)):
            return None
        got = [o for o in map(json.loads, open(os.path.join(run, "metrics.jsonl"))) if "lr" in o]
        return (got[0]["loss"], got[0]["grad_norm"]) if got else None
    with torch.no_grad():
        ref = first_ref().item()
    l0 = first_loss("p0", 0.0, SEED)
    a, b, c = (first_loss(t, 0.3, sd) for t, sd in (("a", SEED), ("b", SEED), ("c", SEED + 1)))
    if not all((l0, a, b, c)):
        return
    R.check(f"roberta dropout p=0: first loss fw {l0[0]:.9g} vs torch {ref:.9g}",
            g2.rel(l0[0], ref) <= TOL_STEP, f"rel {g2.rel(l0[0], ref):.2e}")
    R.check(f"roberta dropout p=0.3: the loss moves from p=0 ({a[0]:.7f} vs {l0[0]:.7f})",
            g2.rel(a[0], l0[0]) > 1e-4, f"rel {g2.rel(a[0], l0[0]):.2e}")
    R.check("roberta dropout p=0.3: the same --seed gives the same loss and gradient norm "
            "bit for bit", a == b, f"{a} vs {b}")
    R.check("roberta dropout p=0.3: another --seed draws another loss", a[0] != c[0],
            f"{a} vs {c}")


def check_tok_eval(fw, work, m, W, ck, recs, path):
    with torch.no_grad():
        ref, y = tok_reference(m, W, recs)
        loss = F.cross_entropy(ref, y).item()
    out = os.path.join(work, "tok_pred.jsonl")
    p, got = fw_eval(fw, ck, path, "--labels=0,1,2", f"--output={out}")
    if not R.check("token-cls: eval runs", got is not None, g2.describe(p)):
        return
    r = g2.rel(got["eval_loss"], loss)
    R.check(f"token-cls: eval loss fw {got['eval_loss']:.9g} vs torch {loss:.9g}",
            r <= TOL_EVAL, f"rel {r:.2e}")
    pred = [json.loads(l) for l in open(out)]
    err = logit_err([w for q in pred for w in q["logits"]], ref)
    R.check("token-cls: logits on first sub-tokens within 1e-5", err <= TOL_EVAL,
            f"max err / max |logit| {err:.2e}")
    # predictions for records without labels: the same words, the same logits
    bare = os.path.join(work, "tok_bare.jsonl")
    write_jsonl(bare, [{"tokens": r["tokens"]} for r in recs])
    bout = os.path.join(work, "tok_bare_pred.jsonl")
    p, gb = fw_eval(fw, ck, bare, "--labels=0,1,2", f"--output={bout}")
    if R.check("token-cls without labels: eval --output runs", gb is not None, g2.describe(p)):
        eb = logit_err([w for q in map(json.loads, open(bout)) for w in q["logits"]], ref)
        R.check("token-cls without labels: a prediction per word, logits within 1e-5, "
                "no targets counted", eb <= TOL_EVAL and gb["targets"] == 0,
                f"err {eb:.2e}, targets {gb['targets']}")
    # attention/flash serves the encoder too: bidirectional, the padding mask as bias
    fout = os.path.join(work, "tok_pred_flash.jsonl")
    p, gf = fw_eval(fw, ck, path, "--labels=0,1,2", f"--output={fout}",
                    plug="--plugins=arch/encoder,attention/flash")
    if R.check("token-cls with attention/flash: eval runs", gf is not None, g2.describe(p)):
        ef = logit_err([w for q in map(json.loads, open(fout)) for w in q["logits"]], ref)
        R.check("token-cls with attention/flash: logits within 1e-5 of torch", ef <= TOL_EVAL,
                f"max err / max |logit| {ef:.2e}")
    return pred


def mlm_micro_batches(docs, n):
    """The rows of the first n micro-batches (no shuffle): one document a row."""
    rows = [[CLS] + list(d.encode()) + [SEP] for d in docs]
    return [rows[k * B:(k + 1) * B] for k in range(n)]


def mlm_loss(m, W, batch, index, lora=None):
    logits, targets = [], []
    for x, y in mlm_mask(batch, index):
        lg = mlm_logits(m, W, one(m, W, x, [0] * len(x), lora))[0]
        for j, t in enumerate(y):
            if t >= 0:
                logits.append(lg[j])
                targets.append(t)
    return F.cross_entropy(torch.stack(logits), torch.tensor(targets), reduction="sum"), \
        len(targets)


def check_mlm_eval(fw, work, name, m, W, ck, docs, path):
    n = len(docs) // B
    with torch.no_grad():
        s, c = 0.0, 0
        for k, batch in enumerate(mlm_micro_batches(docs, n)):
            l, cnt = mlm_loss(m, W, batch, k)
            s, c = s + l.item(), c + cnt
    ref = s / c
    p, got = fw_eval(fw, ck, path, f"--mlm-probability={MLM_PROB}", f"--seed={SEED}")
    if not R.check(f"{name} mlm: eval runs", got is not None, g2.describe(p)):
        return
    r = g2.rel(got["eval_loss"], ref)
    R.check(f"{name} mlm: eval loss over {c} masked tokens fw {got['eval_loss']:.9g} vs torch "
            f"{ref:.9g}", r <= TOL_EVAL and got["targets"] == c,
            f"rel {r:.2e}, fw targets {got['targets']}")


def adamw_replay(P, order, step_loss):
    """torch.optim.AdamW with Megatron's groups (no decay on 1-D tensors) as fw
    sets it up, for TRAIN's steps: [(loss, gradient norm)] per step."""
    c = TRAIN
    opt = torch.optim.AdamW([{"params": [P[n] for n in order if P[n].dim() >= 2],
                              "weight_decay": c["WD"]},
                             {"params": [P[n] for n in order if P[n].dim() < 2],
                              "weight_decay": 0.0}],
                            lr=c["LR"], betas=(c["BETA1"], c["BETA2"]), eps=c["ADAM_EPS"])
    ref = []
    for k in range(c["ITERS"]):
        opt.zero_grad()
        loss = step_loss(P, k)
        loss.backward()
        ref.append((loss.item(), math.sqrt(sum(float((P[n].grad.double() ** 2).sum())
                                               for n in order))))
        opt.step()
    return ref


def compare_steps(name, run, ref):
    """fwrun's metrics.jsonl against the replay: per-step loss and gradient norm."""
    c = TRAIN
    got = [o for o in map(json.loads, open(os.path.join(run, "metrics.jsonl"))) if "lr" in o]
    if not R.check(f"{name}: {c['ITERS']} steps logged", len(got) == c["ITERS"], f"{len(got)}"):
        return
    wl = max(g2.rel(g["loss"], r[0]) for g, r in zip(got, ref))
    wn = max(g2.rel(g["grad_norm"], r[1]) for g, r in zip(got, ref))
    R.check(f"{name}: {c['ITERS']} AdamW steps, per-step loss within {TOL_STEP:g}",
            wl <= TOL_STEP, f"max rel {wl:.2e}; last fw {got[-1]['loss']:.7f} torch {ref[-1][0]:.7f}")
    R.check(f"{name}: per-step gradient norm within {TOL_STEP:g}", wn <= TOL_STEP,
            f"max rel {wn:.2e}")


def logit_err(got, ref):
    """max |got - ref| / max |ref| (inf when the shapes differ)."""
    got = torch.tensor(got, dtype=torch.float64)
    if got.shape != ref.shape:
        return math.inf
    return ((got - ref.double()).abs().max() / ref.double().abs().max()).item()


def check_train(fw, work, name, m, head, W, ck, path, step_loss):
    c = TRAIN
    run = os.path.join(work, name + "_run")
    p = fw("train", TRAIN_PLUG, f"--load={ck}", f"--data={path}", "--no-shuffle",
           "--tokenizer=byte", f"--micro-batch-size={B}", f"--seq-length={T}",
           f"--train-iters={c['ITERS']}", f"--lr={c['LR']}", "--lr-decay-style=constant",
           f"--weight-decay={c['WD']}", "--clip-grad=0", f"--adam-beta1={c['BETA1']}",
           f"--adam-beta2={c['BETA2']}", f"--adam-eps={c['ADAM_EPS']}", f"--run-dir={run}",
           f"--seed={SEED}", f"--mlm-probability={MLM_PROB}", "--threads=2",
           *(["--labels=0,1,2"] if head != "mlm" else []))
    if not R.check(f"{name}: train runs", p.returncode == 0, g2.describe(p)):
        return
    P = {n: t.clone().requires_grad_(True) for n, t in W.items()}
    compare_steps(name, run, adamw_replay(P, [n for n, _ in names(m, head)], step_loss))
    if head != "mlm":
        return
    # resume: 4 steps, then --load the run and go on to 10 (shuffled data,
    # so the masking's micro-batch index must come back from the checkpoint)
    runs = {}
    for tag, legs in (("straight", [c["ITERS"]]), ("resumed", [4, c["ITERS"]])):
        d = os.path.join(work, f"{name}_{tag}")
        for it in legs:
            first = it == legs[0]            # a resumed leg takes the stored tokenizer
            p = fw("train", TRAIN_PLUG, f"--load={ck}" if first else f"--load={d}",
                   f"--data={path}", *(["--tokenizer=byte"] if first else []),
                   f"--micro-batch-size={B}",
                   f"--seq-length={T}", f"--train-iters={it}", f"--lr={c['LR']}",
                   "--lr-decay-style=constant", "--save-interval=4", f"--run-dir={d}",
                   f"--seed={SEED + 1}", "--threads=2")
            if not R.check(f"{name}: {tag} run to step {it}", p.returncode == 0, g2.describe(p)):
                return
        runs[tag] = {o["step"]: o["loss"] for o in map(json.loads,
                                                         open(os.path.join(d, "metrics.jsonl")))
                     if "lr" in o}
    same = [runs["resumed"].get(k) == runs["straight"][k] for k in range(5, c["ITERS"] + 1)]
    R.check(f"{name}: a resumed run masks and trains exactly as the uninterrupted one "
            f"(steps 5-{c['ITERS']} bit-identical losses)", all(same),
            f"straight {runs['straight']}, resumed {runs['resumed']}")


def check_padding(fw, work, m, W, recs, path, base_pred):
    """[PAD]'s embedding perturbed: every real position's logits stay; a real
    token's embedding perturbed: they move (the check can fail)."""
    for what, row, same in (("[PAD]", PAD, True), ("a real token ('a')", 97, False)):
        W2 = dict(W)
        E = W["embeddings.word_embeddings.weight"].clone()
        E[row] += 3.0 * torch.randn(E.shape[1], generator=torch.Generator().manual_seed(7))
        W2["embeddings.word_embeddings.weight"] = E
        ck = os.path.join(work, f"tok_perturbed_{row}.h5")
        write_ckpt(ck, m, "token-cls", W2)
        out = os.path.join(work, f"tok_pred_{row}.jsonl")
        p, got = fw_eval(fw, ck, path, "--labels=0,1,2", f"--output={out}")
        if not R.check(f"padding: eval with {what} perturbed runs", got is not None,
                       g2.describe(p)):
            return
        a = np.array([w for q in base_pred for w in q["logits"]])
        b = np.array([w for q in (json.loads(l) for l in open(out)) for w in q["logits"]])
        diff = float(np.abs(a - b).max())
        if same:
            R.check("padding: [PAD]'s embedding changes no real token's logits", diff == 0.0,
                    f"max |diff| {diff:.3g}")
        else:
            R.check("padding: control: a real token's embedding does change them", diff > 1e-3,
                    f"max |diff| {diff:.3g}")


def check_bad(fw, work, ck_seq, ck_tok):
    bad_label = os.path.join(work, "bad_label.jsonl")
    write_jsonl(bad_label, [{"text": "abc", "label": 1}, {"text": "de", "label": "seven"}])
    bad_len = os.path.join(work, "bad_len.jsonl")
    write_jsonl(bad_len, [{"tokens": ["ab", "c"], "labels": [0]}])
    for what, ck, path, needle in (("a label outside --labels", ck_seq, bad_label, "seven"),
                                   ("tokens and labels of different lengths", ck_tok, bad_len,
                                    "2 tokens but 1 labels")):
        out = os.path.join(work, "bad_out.jsonl")
        p, _ = fw_eval(fw, ck, path, "--labels=0,1,2", f"--output={out}")
        lines = [l for l in p.stderr.strip().splitlines() if l]
        R.check(f"bad input: {what}: exit 1/2, one 'fwrun:' line naming file and line, no output",
                p.returncode in (1, 2) and len(lines) == 1 and lines[0].startswith("fwrun:") and
                os.path.basename(path) + ":" in lines[0] and needle in lines[0] and
                not os.path.exists(out), g2.describe(p))
    # --tokenizer=byte from scratch: the vocabulary holds the 257 byte tokens and the
    # four the head's task adds (BERT's [CLS] [SEP] [MASK] [PAD]), whatever the arch's name
    docs = os.path.join(work, "vocab_docs.jsonl")
    write_jsonl(docs, [{"text": "abc de"}] * (2 * B))
    small = flags(BERT, "mlm")[:-3]                # no --vocab-size, --head, --num-labels
    for vocab, ok in ((None, True), (VOCAB - 1, False)):
        run = os.path.join(work, "vocab_run%s" % (vocab or ""))
        p = fw("train", TRAIN_PLUG, *small, "--head=mlm", "--tokenizer=byte", f"--data={docs}",
               f"--micro-batch-size={B}", f"--seq-length={T}", "--train-iters=1", "--threads=2",
               f"--run-dir={run}", *([f"--vocab-size={vocab}"] if vocab else []))
        if ok:
            cfg = open(os.path.join(run, "config.ini")).read() if p.returncode == 0 else ""
            R.check(f"--tokenizer=byte with an MLM head: --vocab-size={VOCAB} (257 + 4)",
                    p.returncode == 0 and f"--vocab-size={VOCAB} " in p.stderr and
                    f"vocab-size = {VOCAB}\n" in cfg, g2.describe(p))
        else:
            lines = [l for l in p.stderr.strip().splitlines() if l]
            R.check(f"--vocab-size={vocab} with the MLM head's specials: exit 2, one line",
                    p.returncode == 2 and len(lines) == 1 and f"--vocab-size={vocab}" in lines[0]
                    and f"get {VOCAB}" in lines[0], g2.describe(p))


# --- LoRA (PEFT's) on sequence classification ---------------------------------------------

LORA_R, LORA_ALPHA = 4, 8.0
LORA_PLUG = TRAIN_PLUG + ",peft/lora"


def check_lora(fw, work, m, W, ck, train_recs, train_path, recs, path, head=seq_logits,
               cls=("classifier.weight", "classifier.bias"), tag="", export=True):
    """fw's initial adapter (A random, B = 0, the classifier as the base has it),
    then 10 AdamW steps replayed in torch on A, B of query and value and the
    whole classifier (modules_to_save: cls, RoBERTa's classifier.dense and
    .out_proj too); the PEFT export re-applied in torch."""
    c = TRAIN
    common = [f"--load={ck}", f"--data={train_path}", "--no-shuffle", "--tokenizer=byte",
              f"--micro-batch-size={B}", f"--seq-length={T}", "--labels=0,1,2", "--threads=2",
              "--clip-grad=0", f"--adam-beta1={c['BETA1']}", f"--adam-beta2={c['BETA2']}",
              f"--adam-eps={c['ADAM_EPS']}", "--lr-decay-style=constant"]
    init_run = os.path.join(work, "lora_init" + tag)
    p = fw("train", LORA_PLUG, *common, "--train-iters=1", "--lr=0", "--weight-decay=0",
           f"--lora-r={LORA_R}", f"--lora-alpha={LORA_ALPHA}", f"--run-dir={init_run}")
    init = os.path.join(init_run, "adapter-00000001.h5")
    if not R.check(f"lora{tag}: the initial adapter", p.returncode == 0 and os.path.exists(init),
                   g2.describe(p)):
        return
    with h5py.File(init, "r") as f:
        A0 = {k: torch.from_numpy(np.array(v)) for k, v in f["tensors"].items()}
    mods = sorted({k.rsplit(".lora_", 1)[0] for k in A0 if ".lora_" in k})
    want = [f"encoder.layer.{l}.attention.self.{n}" for l in range(m["L"])
            for n in ("query", "value")]
    R.check(f"lora{tag}: PEFT's default targets query, value; the classifier carried ({cls})",
            mods == sorted(want) and all(n in A0 for n in cls),
            f"{mods}, {sorted(k for k in A0 if '.lora_' not in k)}")
    run = os.path.join(work, "lora_run" + tag)
    p = fw("train", LORA_PLUG, *common, f"--adapter={init}", f"--train-iters={c['ITERS']}",
           f"--lr={c['LR']}", f"--weight-decay={c['WD']}", f"--run-dir={run}")
    if not R.check(f"lora{tag}: train runs", p.returncode == 0, g2.describe(p)):
        return
    s = LORA_ALPHA / LORA_R
    P = {k: t.clone().requires_grad_(True) for k, t in A0.items()}

    def step_loss(P, k):
        Wk = dict(W, **{n: P[n] for n in cls})
        lora = {md: (P[md + ".lora_A.weight"], P[md + ".lora_B.weight"], s) for md in mods}
        batch = train_recs[k * B:(k + 1) * B]
        return F.cross_entropy(seq_reference(m, Wk, batch, lora, head),
                               torch.tensor([r["label"] for r in batch]))
    compare_steps(f"lora{tag} seq-cls", run, adamw_replay(P, list(P), step_loss))
    if not export:
        return
    # the PEFT export, applied in torch to the HF-named base: BertForSequence-
    # Classification's modules under bert. (no --base), RobertaForSequence-
    # Classification's under roberta. (--base names the RoBERTa checkpoint)
    final = os.path.join(run, "adapter-00000010.h5")
    out = os.path.join(work, "peft_export" + tag.strip())
    mt = "roberta" if m is ROBERTA else "bert"
    p = fw("export-adapter", final, out, *([f"--base={ck}"] if mt == "roberta" else []))
    if not R.check(f"lora{tag}: export-adapter", p.returncode == 0, g2.describe(p)):
        return
    cfg = json.load(open(os.path.join(out, "adapter_config.json")))
    saves = sorted({n.rsplit(".", 1)[0] for n in cls})
    R.check(f"lora{tag} export: task_type SEQ_CLS, targets query/value, modules_to_save {saves}, "
            "fan_in_fan_out false", cfg["task_type"] == "SEQ_CLS" and
            sorted(cfg["target_modules"]) == ["query", "value"] and
            sorted(cfg["modules_to_save"]) == saves and cfg["fan_in_fan_out"] is False and
            cfg["r"] == LORA_R and cfg["lora_alpha"] == LORA_ALPHA,
            json.dumps({k: cfg[k] for k in ("task_type", "target_modules", "modules_to_save")}))
    _, st = g2.read_st(os.path.join(out, "adapter_model.safetensors"))
    pre = "base_model.model."
    keys_ok = all(k.startswith(f"{pre}{mt}.encoder.layer.") or k.startswith(pre + "classifier.")
                  for k in st)
    R.check(f"lora{tag} export: PEFT's keys (base_model.model.{mt}.encoder.layer.N....lora_A."
            "weight, base_model.model.classifier....weight)",
            keys_ok and len(st) == 2 * len(mods) + len(cls), f"{sorted(st)[:3]}")
    T2 = {k[len(pre):]: torch.from_numpy(v[2].copy()) for k, v in st.items()}
    lora = {md: (T2[f"{mt}.{md}.lora_A.weight"], T2[f"{mt}.{md}.lora_B.weight"],
                 cfg["lora_alpha"] / cfg["r"]) for md in mods if f"{mt}.{md}.lora_A.weight" in T2}
    We = dict(W, **{n: T2[n] for n in cls if n in T2})
    R.check(f"lora{tag} export: every adapted module and saved tensor re-applied",
            len(lora) == len(mods) and all(n in T2 for n in cls), f"{sorted(T2)[:4]}")
    with torch.no_grad():
        ref_loss = F.cross_entropy(seq_reference(m, We, recs, lora, head),
                                   torch.tensor([r["label"] for r in recs])).item()
    q = fw("eval", PLUG + ",peft/lora", f"--load={ck}", f"--adapter={final}",
           f"--valid-data={path}", "--tokenizer=byte", f"--micro-batch-size={B}",
           f"--seq-length={T}", "--labels=0,1,2", "--threads=2")
    if R.check(f"lora{tag}: eval with the adapter runs", q.returncode == 0, g2.describe(q)):
        got = json.loads(q.stdout.strip().splitlines()[-1])["eval_loss"]
        r = g2.rel(got, ref_loss)
        R.check(f"lora{tag}: the PEFT export applied in torch {ref_loss:.9g} vs fw eval {got:.9g}",
                r <= TOL_EVAL, f"rel {r:.2e}")
    if mt == "roberta":
        bad = os.path.join(work, "peft_export_bad")
        p = fw("export-adapter", final, bad, f"--base={os.path.join(work, 'missing.h5')}")
        lines = [l for l in p.stderr.strip().splitlines() if l]
        R.check("lora export --base=missing.h5: one line naming it, no folder left",
                p.returncode != 0 and len(lines) == 1 and "missing.h5" in lines[0] and
                not os.path.exists(bad), g2.describe(p))


def check_lora_export(fw, work, name, ck, train_path, eval_path, flags_, task_type, saves,
                      ref_loss):
    """LoRA trained 3 steps on a token-classification or MLM base, its PEFT
    export (export-adapter) re-applied in torch to the base weights: the
    loss must equal fw's eval with the adapter."""
    run = os.path.join(work, "lora_" + name)
    p = fw("train", LORA_PLUG, f"--load={ck}", f"--data={train_path}", "--no-shuffle",
           "--tokenizer=byte", f"--micro-batch-size={B}", f"--seq-length={T}", "--threads=2",
           "--train-iters=3", "--lr=0.05", "--lr-decay-style=constant", "--clip-grad=0",
           f"--lora-r={LORA_R}", f"--lora-alpha={LORA_ALPHA}", f"--run-dir={run}", *flags_)
    final = os.path.join(run, "adapter-00000003.h5")
    if not R.check(f"lora {name}: train runs", p.returncode == 0 and os.path.exists(final),
                   g2.describe(p)):
        return
    out = os.path.join(work, "peft_" + name)
    p = fw("export-adapter", final, out)
    if not R.check(f"lora {name}: export-adapter", p.returncode == 0, g2.describe(p)):
        return
    cfg = json.load(open(os.path.join(out, "adapter_config.json")))
    R.check(f"lora {name} export: task_type {task_type}, targets query/value, modules_to_save "
            f"{saves}", cfg["task_type"] == task_type and
            sorted(cfg["target_modules"]) == ["query", "value"] and cfg["modules_to_save"] == saves,
            json.dumps(cfg)[:300])
    _, st = g2.read_st(os.path.join(out, "adapter_model.safetensors"))
    pre = "base_model.model."
    T2 = {k[len(pre):]: torch.from_numpy(v[2].copy()) for k, v in st.items()}
    lora = {k[len("bert."):-len(".lora_A.weight")]:
            (T2[k], T2[k.replace("lora_A", "lora_B")], cfg["lora_alpha"] / cfg["r"])
            for k in T2 if k.startswith("bert.") and k.endswith(".lora_A.weight")}
    full = {k: t for k, t in T2.items() if ".lora_" not in k}
    moved = max(float(Bm.abs().max()) for _, Bm, _ in lora.values()) if lora else 0.0
    R.check(f"lora {name} export: PEFT's keys, {len(lora)} adapted modules, B trained (not 0)",
            all(k.startswith("bert.encoder.layer.") or k.split(".")[0] in (saves or []) for k in T2) and
            len(lora) == 2 * BERT["L"] and moved > 0, f"{sorted(T2)[:3]}, max |B| {moved:.2e}")
    with torch.no_grad():
        ref = ref_loss(full, lora)
    q, got = fw_eval(fw, ck, eval_path, f"--adapter={final}", *flags_, plug=PLUG + ",peft/lora")
    if R.check(f"lora {name}: eval with the adapter runs", got is not None, g2.describe(q)):
        r = g2.rel(got["eval_loss"], ref)
        R.check(f"lora {name}: the PEFT export applied in torch {ref:.9g} vs fw eval "
                f"{got['eval_loss']:.9g}", r <= TOL_EVAL, f"rel {r:.2e}")


# --- Hugging Face folders -------------------------------------------------------------------

HF_CLASSES = {          # class: (model_type, fw head, config of the test model)
    "BertForSequenceClassification": ("bert", "seq-cls", BERT),
    "BertForTokenClassification": ("bert", "token-cls", BERT),
    "BertForMaskedLM": ("bert", "mlm", BERT),
    "RobertaForMaskedLM": ("roberta", "mlm", ROBERTA),
    "RobertaForSequenceClassification": ("roberta", "seq-cls-roberta", ROBERTA),
    "BertModel": ("bert", "base", BERT),
}
LABEL_NAMES = ["neg", "neutral", "pos"]


def hf_key(cls, name):
    """Hugging Face's key of a module path of this test's names."""
    mt = HF_CLASSES[cls][0]
    if mt == "roberta":
        for a, b in (("cls.predictions.transform.dense.", "lm_head.dense."),
                     ("cls.predictions.transform.LayerNorm.", "lm_head.layer_norm."),
                     ("cls.predictions.bias", "lm_head.bias")):
            if name.startswith(a):
                return b + name[len(a):]
    if name.startswith(("cls.", "classifier.")) or cls == "BertModel":
        return name                            # a base model saves no prefix
    return f"{mt}.{name}"


def hf_state(cls, W):
    """The state dict HF would save: the tied decoder too (import must skip it);
    a BertModel's every other key with the "bert." prefix a model saved from
    a task class has."""
    out = {("bert." if cls == "BertModel" and i % 2 else "") + hf_key(cls, n): t
           for i, (n, t) in enumerate(W.items())}
    if "cls.predictions.bias" in W:
        dec = "lm_head.decoder" if HF_CLASSES[cls][0] == "roberta" else "cls.predictions.decoder"
        out[dec + ".weight"] = W["embeddings.word_embeddings.weight"]
        out[dec + ".bias"] = W["cls.predictions.bias"]
    return out


def hf_config(cls, m):
    mt = HF_CLASSES[cls][0]
    c = {"architectures": [cls], "model_type": mt, "num_hidden_layers": m["L"],
         "num_attention_heads": m["H"], "hidden_size": m["C"], "intermediate_size": m["F"],
         "vocab_size": VOCAB, "max_position_embeddings": m["P"], "type_vocab_size": m["types"],
         "layer_norm_eps": m["eps"], "hidden_act": "gelu", "position_embedding_type": "absolute",
         "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    if mt == "roberta":
        c["pad_token_id"] = 1                  # positions start at padding_idx + 1 = 2
    if cls in ("BertForSequenceClassification", "BertForTokenClassification",
               "RobertaForSequenceClassification"):
        c["id2label"] = {str(i): n for i, n in enumerate(LABEL_NAMES)}
        c["label2id"] = {n: i for i, n in enumerate(LABEL_NAMES)}
    return c


def write_hf(d, cls, m, W, config=None):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config or hf_config(cls, m), f)
    st = hf_state(cls, W)
    header, data = g2.st_header([(k, "F32", list(t.shape), g2.to_bytes(t, "F32"))
                                 for k, t in sorted(st.items())])
    g2.write_st(os.path.join(d, "model.safetensors"), header, data)


def check_hf(fw, work, rng):
    seq = [dict(r, label=LABEL_NAMES[r["label"]]) for r in seq_records(rng, 8)]
    seq_path = os.path.join(work, "hf_seq.jsonl")
    write_jsonl(seq_path, seq)
    seq_single = [r for r in seq if "text_pair" not in r]
    seq_single_path = os.path.join(work, "hf_seq_single.jsonl")
    write_jsonl(seq_single_path, seq_single)
    tok = [dict(r, labels=[LABEL_NAMES[y] for y in r["labels"]]) for r in tok_records(rng, 8)]
    tok_path = os.path.join(work, "hf_tok.jsonl")
    write_jsonl(tok_path, tok)
    docs = mlm_docs(rng, 2 * B)
    mlm_path = os.path.join(work, "hf_mlm.jsonl")
    write_jsonl(mlm_path, [{"text": d} for d in docs])
    for i, (cls, (mt, head, m)) in enumerate(HF_CLASSES.items()):
        W = random_weights(m, "seq-cls" if head == "base" else head, 50 + i)
        if head == "base":
            del W["classifier.weight"], W["classifier.bias"]
        d = os.path.join(work, "hf_" + cls)
        write_hf(d, cls, m, W)
        h5 = os.path.join(work, cls + ".h5")
        p = fw("import", d, h5)
        if not R.check(f"{cls}: import", p.returncode == 0, g2.describe(p)):
            continue
        with torch.no_grad():
            if head == "seq-cls":
                ref = F.cross_entropy(seq_reference(m, W, seq),
                                      torch.tensor([LABEL_NAMES.index(r["label"]) for r in seq]))
                q, got = fw_eval(fw, h5, seq_path)
            elif head == "seq-cls-roberta":   # one token type: no pairs
                ref = F.cross_entropy(seq_reference(m, W, seq_single, head=roberta_seq_logits),
                                      torch.tensor([LABEL_NAMES.index(r["label"])
                                                    for r in seq_single]))
                q, got = fw_eval(fw, h5, seq_single_path)
            elif head == "token-cls":
                lg, y = tok_reference(m, W, [dict(r, labels=[LABEL_NAMES.index(x) for x in
                                                             r["labels"]]) for r in tok])
                ref = F.cross_entropy(lg, y)
                q, got = fw_eval(fw, h5, tok_path)
            elif head == "mlm":
                s, c = 0.0, 0
                for k, batch in enumerate(mlm_micro_batches(docs, 2)):
                    l, cnt = mlm_loss(m, W, batch, k)
                    s, c = s + l.item(), c + cnt
                ref = torch.tensor(s / c)
                q, got = fw_eval(fw, h5, mlm_path, f"--mlm-probability={MLM_PROB}",
                                 f"--seed={SEED}")
        if head != "base" and R.check(f"{cls}: eval of the import runs (labels from id2label)",
                                      got is not None, g2.describe(q)):
            r = g2.rel(got["eval_loss"], ref.item())
            R.check(f"{cls}: eval loss fw {got['eval_loss']:.9g} vs torch on the HF folder "
                    f"{ref.item():.9g}", r <= TOL_EVAL, f"rel {r:.2e}")
        if head == "base":
            run = os.path.join(work, "base_run")
            q = fw("train", TRAIN_PLUG, f"--load={h5}", "--finetune", f"--data={seq_path}",
                   "--tokenizer=byte", f"--micro-batch-size={B}", f"--seq-length={T}",
                   "--train-iters=2", "--num-labels=3", f"--run-dir={run}", "--threads=2")
            R.check("BertModel: fine-tunes as a classifier, the classifier initialised fresh",
                    q.returncode == 0 and "task head tensors are not in" in q.stderr,
                    g2.describe(q))
        out = os.path.join(work, "export_" + cls)
        p = fw("export", h5, out)
        if not R.check(f"{cls}: export", p.returncode == 0, g2.describe(p)):
            continue
        _, back = g2.read_st(os.path.join(out, "model.safetensors"))
        want = {hf_key(cls, n): t for n, t in W.items()}
        same = set(back) == set(want) and all(
            np.array_equal(back[k][2], want[k].numpy()) for k in want)
        R.check(f"{cls}: export gives back every tensor bit for bit under HF's keys", same,
                f"keys only in export {sorted(set(back) - set(want))[:3]}, missing "
                f"{sorted(set(want) - set(back))[:3]}")
        cfg = json.load(open(os.path.join(out, "config.json")))
        orig = hf_config(cls, m)
        diff = [k for k in orig if k != "label2id" and cfg.get(k) != orig[k]]
        if head == "base":
            diff = [k for k in diff if k != "architectures"]
        R.check(f"{cls}: exported config.json has the original's values", not diff,
                f"differs: {[(k, cfg.get(k), orig[k]) for k in diff]}")
    # model_type that disagrees with the class
    d = os.path.join(work, "hf_mismatch")
    W = random_weights(BERT, "mlm", 60)
    write_hf(d, "BertForMaskedLM", BERT, W,
             dict(hf_config("BertForMaskedLM", BERT), model_type="roberta"))
    h5 = os.path.join(work, "mismatch.h5")
    p = fw("import", d, h5)
    lines = [l for l in p.stderr.strip().splitlines() if l]
    R.check("bad input: config.json model_type disagreeing with the class: one line, exit 2, "
            "no output", p.returncode == 2 and len(lines) == 1 and "model_type" in lines[0] and
            "config.json" in lines[0] and not os.path.exists(h5), g2.describe(p))


def main():
    a, fw = g2.cli(__doc__)

    def body(work):
        rng = np.random.RandomState(3)
        # sequence classification: pairs and padding
        seq = seq_records(rng, 12)
        seq_path = os.path.join(work, "seq.jsonl")
        write_jsonl(seq_path, seq)
        W = random_weights(BERT, "seq-cls", 11)
        ck_seq = os.path.join(work, "seq.h5")
        write_ckpt(ck_seq, BERT, "seq-cls", W)
        check_seq_eval(fw, work, BERT, W, ck_seq, seq, seq_path)
        check_mean_pooling(fw, work, BERT, seq, seq_path)
        train_seq = seq_records(rng, B * TRAIN["ITERS"])
        train_seq_path = os.path.join(work, "seq_train.jsonl")
        write_jsonl(train_seq_path, train_seq)

        def seq_step(P, k):
            recs = train_seq[k * B:(k + 1) * B]
            return F.cross_entropy(seq_reference(BERT, P, recs),
                                   torch.tensor([r["label"] for r in recs]))
        check_train(fw, work, "seq-cls", BERT, "seq-cls", W, ck_seq, train_seq_path, seq_step)
        check_lora(fw, work, BERT, W, ck_seq, train_seq, train_seq_path, seq, seq_path)

        # token classification
        tok = tok_records(rng, 8)
        tok_path = os.path.join(work, "tok.jsonl")
        write_jsonl(tok_path, tok)
        Wt = random_weights(BERT, "token-cls", 12)
        ck_tok = os.path.join(work, "tok.h5")
        write_ckpt(ck_tok, BERT, "token-cls", Wt)
        pred = check_tok_eval(fw, work, BERT, Wt, ck_tok, tok, tok_path)
        if pred:
            check_padding(fw, work, BERT, Wt, tok, tok_path, pred)
        check_lora_export(
            fw, work, "token-cls", ck_tok, tok_path, tok_path, ["--labels=0,1,2"], "TOKEN_CLS",
            ["classifier"],
            lambda full, lora: F.cross_entropy(*tok_reference(BERT, dict(Wt, **full), tok,
                                                              lora)).item())

        # masked LM, BERT and RoBERTa options
        docs = mlm_docs(rng, 4 * B)
        mlm_path = os.path.join(work, "mlm.jsonl")
        write_jsonl(mlm_path, [{"text": d} for d in docs])
        for name, m, seed in (("bert", BERT, 13), ("roberta", ROBERTA, 14)):
            Wm = random_weights(m, "mlm", seed)
            ck = os.path.join(work, name + "_mlm.h5")
            write_ckpt(ck, m, "mlm", Wm)
            check_mlm_eval(fw, work, name, m, Wm, ck, docs, mlm_path)
        train_docs = mlm_docs(rng, B * TRAIN["ITERS"])
        train_mlm = os.path.join(work, "mlm_train.jsonl")
        write_jsonl(train_mlm, [{"text": d} for d in train_docs])
        Wm = random_weights(BERT, "mlm", 15)
        ck = os.path.join(work, "bert_mlm_train.h5")
        write_ckpt(ck, BERT, "mlm", Wm)
        batches = mlm_micro_batches(train_docs, TRAIN["ITERS"])

        def mlm_step(P, k):
            s, c = mlm_loss(BERT, P, batches[k], k)
            return s / c
        check_train(fw, work, "mlm", BERT, "mlm", Wm, ck, train_mlm, mlm_step)

        def mlm_ref(full, lora):
            n = len(docs) // B
            tot = [mlm_loss(BERT, dict(Wm, **full), b, k, lora)
                   for k, b in enumerate(mlm_micro_batches(docs, n))]
            return sum(float(x) for x, _ in tot) / sum(c for _, c in tot)
        check_lora_export(fw, work, "mlm", ck, train_mlm, mlm_path,
                          [f"--mlm-probability={MLM_PROB}", f"--seed={SEED}"], None, None, mlm_ref)
        check_roberta_seq(fw, work, rng)
        check_roberta_pairs(fw, work, rng, os.path.join(
            os.path.dirname(os.path.abspath(a.plugin_path)), "node-hf", "node_modules",
            "tokenizers"))
        check_bad(fw, work, ck_seq, ck_tok)
        check_hf(fw, work, rng)

    return R.run("bert_parity", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
