#!/usr/bin/python3
"""encoder_peft.py - prompt and prefix tuning on arch/encoder with PEFT's semantics.

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
    P ones in front, the tokens at positions P.. (past_key_values_length).
fw trains padded batches (the padding mask widened over the extra rows); the
reference runs every record alone, unpadded.
Checks, for BERT (two token types) and RoBERTa's options (position offset 2):
  - 10 AdamW steps of the prompt / prefix (fw's initial adapter from a --lr=0
    run): per-step loss and gradient norm within 1e-4 relative, the trained
    tensors within 1e-4 (max |fw - torch| / max |torch|);
  - the check can fail: the reference with fw's former numbering (virtual
    tokens without position and type embeddings, real tokens from position
    0) is off by more than 1e-3 in the first step's loss;
  - token classification with a prompt: eval loss within 1e-5 (the logits of
    the real positions; PEFT's labels padded with -100 for the virtual ones);
  - a sequence that with the virtual tokens passes --max-position-embeddings:
    one "fwrun:" line, exit 1 or 2.
Ends with "encoder_peft: N passed, M failed"; exit 0 only when none failed.
"""
import json
import os
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bert_parity as bp  # noqa: E402  (the transcription, records, replay)
import gpt2_parity as g2  # noqa: E402

R = bp.R
NVT = 4
METHODS = {"prompt": ["--plugins=arch/encoder,attention/mha,optim/adamw,peft/prompt",
                      f"--prompt-num-virtual-tokens={NVT}"],
           "prefix": ["--plugins=arch/encoder,attention/mha,optim/adamw,peft/prefix",
                      f"--prefix-num-virtual-tokens={NVT}"]}


def common(ck, data):
    c = bp.TRAIN
    return [f"--load={ck}", f"--data={data}", "--no-shuffle", "--tokenizer=byte",
            f"--micro-batch-size={bp.B}", f"--seq-length={bp.T}", "--labels=0,1,2",
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
    return {"prefix": [A[f"prefix.h.{l}.kv"] for l in range(m["L"])]}


def former(m, W, recs, head_fn, method, A):
    """The reference under fw's former numbering: the real tokens from
    position 0 and, under prompt tuning, the virtual rows without position
    or type embedding (the table shifted by P rows; the virtual rows' type 0
    taken off their embeddings)."""
    pe = W["embeddings.position_embeddings.weight"]
    o, C = m["offset"], pe.shape[1]
    Wf = dict(W, **{"embeddings.position_embeddings.weight":
                    torch.cat([pe[:o], torch.zeros(NVT, C), pe[o:]])})
    kw = peft_inputs(method, A, m)
    if method == "prompt":
        kw["virtual"] = kw["virtual"] - W["embeddings.token_type_embeddings.weight"][0]
    return bp.seq_reference(m, Wf, recs, head=head_fn, **kw)


def check_method(fw, work, tag, m, head_fn, W, ck, train, train_path, method):
    c = bp.TRAIN
    name = f"{tag} {method}"
    init_run = os.path.join(work, f"{tag}_{method}_init")
    p = fw("train", *METHODS[method], *common(ck, train_path), "--train-iters=1", "--lr=0",
           "--weight-decay=0", f"--run-dir={init_run}")
    init = os.path.join(init_run, "adapter-00000001.h5")
    if not R.check(f"{name}: the initial adapter", p.returncode == 0 and os.path.exists(init),
                   g2.describe(p)):
        return None
    A0 = adapter(init)
    run = os.path.join(work, f"{tag}_{method}_run")
    p = fw("train", *METHODS[method], *common(ck, train_path), f"--adapter={init}",
           f"--train-iters={c['ITERS']}", f"--lr={c['LR']}", f"--weight-decay={c['WD']}",
           f"--run-dir={run}")
    if not R.check(f"{name}: train runs", p.returncode == 0, g2.describe(p)):
        return None
    P = {k: t.clone().requires_grad_(True) for k, t in A0.items()}

    def step_loss(P, k):
        batch = train[k * bp.B:(k + 1) * bp.B]
        return F.cross_entropy(bp.seq_reference(m, W, batch, head=head_fn,
                                                **peft_inputs(method, P, m)),
                               torch.tensor([r["label"] for r in batch]))
    bp.compare_steps(f"{name} seq-cls", run, bp.adamw_replay(P, sorted(P), step_loss))
    batch = train[:bp.B]
    with torch.no_grad():
        old = F.cross_entropy(former(m, W, batch, head_fn, method, A0),
                              torch.tensor([r["label"] for r in batch])).item()
    got = json.loads(open(os.path.join(run, "metrics.jsonl")).readline())
    R.check(f"{name}: the former numbering's first loss {old:.7f} is off fw's "
            f"{got.get('loss', 0):.7f} by more than 1e-3 (the check can fail)",
            g2.rel(got.get("loss", 0), old) > 1e-3)
    A = adapter(os.path.join(run, f"adapter-{c['ITERS']:08d}.h5"))
    err = max(((A[k] - P[k].detach()).abs().max() / P[k].detach().abs().max()).item()
              for k in P) if sorted(A) == sorted(P) else float("inf")
    R.check(f"{name}: the trained tensors ({', '.join(sorted(P))}) within {bp.TOL_STEP:g}",
            err <= bp.TOL_STEP, f"max rel {err:.2e}")
    return A0


def check_token_cls(fw, work, rng):
    """Token classification: fw's eval loss with each method's initial
    adapter against torch on the real positions."""
    m = bp.BERT
    W = bp.random_weights(m, "token-cls", 33)
    ck = os.path.join(work, "tok.h5")
    bp.write_ckpt(ck, m, "token-cls", W)
    recs = bp.tok_records(rng, 8)
    path = os.path.join(work, "tok.jsonl")
    bp.write_jsonl(path, recs)
    for method, opts in METHODS.items():
        run = os.path.join(work, f"tok_{method}_init")
        p = fw("train", *opts, *common(ck, path), "--train-iters=1", "--lr=0",
               "--weight-decay=0", f"--run-dir={run}")
        init = os.path.join(run, "adapter-00000001.h5")
        if not R.check(f"token-cls {method}: the initial adapter", p.returncode == 0 and
                       os.path.exists(init), g2.describe(p)):
            continue
        with torch.no_grad():
            ref = F.cross_entropy(*bp.tok_reference(m, W, recs, **peft_inputs(
                method, adapter(init), m))).item()
        p, got = bp.fw_eval(fw, ck, path, "--labels=0,1,2", f"--adapter={init}",
                            plug=opts[0].replace(",optim/adamw", ""))
        if R.check(f"token-cls {method}: eval runs", got is not None, g2.describe(p)):
            r = g2.rel(got["eval_loss"], ref)
            R.check(f"token-cls {method}: eval loss fw {got['eval_loss']:.9g} vs torch "
                    f"{ref:.9g} (real positions)", r <= bp.TOL_EVAL, f"rel {r:.2e}")
    # 32 tokens and 9 virtual ones pass BERT's 40 positions
    p = fw("train", METHODS["prompt"][0], "--prompt-num-virtual-tokens=9", *common(ck, path),
           "--train-iters=1", f"--run-dir={os.path.join(work, 'tok_too_long')}")
    lines = [l for l in p.stderr.strip().splitlines() if l.startswith("fwrun:")]
    R.check("bad input: --seq-length plus the virtual tokens past --max-position-embeddings: "
            "one 'fwrun:' line naming both, exit 1 or 2", p.returncode in (1, 2) and
            len(lines) == 1 and "virtual tokens" in lines[0] and
            "--max-position-embeddings" in lines[0], g2.describe(p))


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
        check_token_cls(fw, work, rng)

    return R.run("encoder_peft", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
