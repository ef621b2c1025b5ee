#!/usr/bin/python3
"""t5_attention.py - T5 (arch/encdec) with attention/flash and attention/sparse.

Usage: /usr/bin/python3 tests/t5_attention.py --fwrun PATH --plugin-path DIR --driver PATH

The oracle is t5_parity.py's plain-torch T5 transcription (float64, written
from Hugging Face's modeling_t5, not from fw). T5's relative position bias
(H, Tq, Tk) enters flash's and sparse's kernels as an additive bias and
trains (its gradient is dS summed over the batch, shared by every layer of
a stack); the encoder's padding mask arrives as a key mask (B, 1, 1, Tk) in
the encoder and in cross-attention (Tq != Tk in generation).
Checks:
  - attention/flash through tests/t5_driver: loss within 1e-5 relative,
    logits and the gradient of every parameter (the two relative bias
    tables included) within 2e-5 of the largest, ReLU/tied and gated-GELU
    with 3 decoder blocks and 8 buckets; the pad embedding perturbed changes
    no real logit;
  - fwrun train with --attention=flash and with attention/sparse
    --sparse-window=3 (self-attention under the window, cross-attention
    dense): 10 AdamW steps, per-step loss and gradient norm within 1e-4 of
    torch.optim.AdamW on the transcription, and fwrun eval's loss within
    1e-5; for sparse the transcription's self-attention biases carry the
    window (|i - j| < 3 in the encoder, i - j < 3 in the decoder);
  - fwrun generate (KV cache, the relative bias of the query at the cache
    length, cross-attention over the encoder's keys): greedy and 3-beam ids
    identical to torch's, flash and sparse (window 3);
  - flash under PEFT's prompt tuning (3 virtual tokens in front of the
    encoder: a wider key mask and relative bias) and prefix tuning (2 prefix
    keys in the decoder's self-attention: Tk = Tq + 2, the bias shifted):
    10 AdamW steps within 1e-4 of t5_features' torch transcription of
    PEFT's formulas.
Ends with "t5_attention: N passed, M failed"; exit 0 only when none failed.
"""
import argparse
import os
import shutil
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as g2  # noqa: E402
import t5_features as tf  # noqa: E402  (PEFT on T5 against PEFT's formulas)
import t5_parity as t5  # noqa: E402

R = t5.R
WINDOW = 3                       # --sparse-window: keys per side, the query included
_compute_bias = t5.compute_bias


def windowed_bias(c, table, q_len, k_len, bidirectional):
    """T5's bias with attention/sparse's window pattern as a mask: key j is
    seen from query i iff |i - j| < WINDOW (encoder) or i - j < WINDOW
    (decoder; the causal mask is T5's own). A large finite negative, not
    -inf: a padded encoder row may see only padding, and torch would make
    NaN of it (fw gives that row zeros; no real position reads it)."""
    i = torch.arange(q_len)[:, None]
    j = torch.arange(k_len)[None, :]
    seen = (i - j).abs() < WINDOW if bidirectional else (i - j) < WINDOW
    return _compute_bias(c, table, q_len, k_len, bidirectional) + torch.where(
        seen, 0.0, -1e9).to(table.dtype)


def check_generate(fw, work, attn, opts, name):
    """fwrun generate greedy and with 3 beams against the transcription."""
    c = t5.GATED_UNTIED
    W = t5.random_weights(c, 52)
    W["lm_head.weight"] = W["lm_head.weight"].clone()
    W["lm_head.weight"][t5.GEN_EOS] *= 2.5
    ck = os.path.join(work, f"gen_{attn.replace('/', '_')}.h5")
    t5.write_ckpt(ck, c, W)
    Wd = {k: v.double() for k, v in W.items()}
    for src in ([35, 7, 18, 13, 48, 44], [9, 21, 5]):
        for extra, ref in (([], t5.ref_greedy(c, Wd, src, 10)),
                           (["--num-beams=3", "--length-penalty=0.6"],
                            t5.ref_beam(c, Wd, src, 3, 10, 0.6))):
            p = fw("generate", f"--plugins=arch/encdec,{attn}", f"--load={ck}",
                   "--prompt-tokens=" + ",".join(map(str, src)), "--max-new-tokens=10",
                   "--threads=2", *opts, *extra)
            got = p.stdout.strip()
            R.check(f"{name}: fwrun generate {' '.join(extra) or 'greedy'} from {len(src)} "
                    f"source tokens: the ids torch generates",
                    p.returncode == 0 and got == ",".join(map(str, ref)),
                    f"fw {got!r} torch {ref}; {g2.describe(p) if p.returncode else ''}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fwrun", required=True)
    ap.add_argument("--plugin-path", required=True)
    ap.add_argument("--driver", required=True)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    args.plugin_path = os.path.abspath(args.plugin_path)
    work = tempfile.mkdtemp(prefix="t5_attention.")
    try:
        untied = t5.check_model(args, work, "flash: gated-gelu, untied head", t5.GATED_UNTIED,
                                5, "flash")
        t5.check_model(args, work, "flash: gated-gelu tied, 3 decoder blocks, d_kv 6, 8 buckets",
                       t5.GATED_ODD, 11, "flash")
        if untied:
            t5.check_padding(args, work, t5.GATED_UNTIED, *untied, attn="flash")
        fw = g2.Fw(os.path.abspath(args.fwrun), args.plugin_path)
        t5.check_sft(fw, work, t5.SEQ, "flash, relu, tied", 41, "attention/flash")
        t5.check_sft(fw, work, t5.SEQ_GATED, "flash, gated-gelu, untied", 42, "attention/flash")
        check_generate(fw, work, "attention/flash", (), "flash")
        tf.check_peft(fw, work, "attention/flash", ("prompt", "prefix"))
        sparse = ("--sparse-pattern=window", f"--sparse-window={WINDOW}")
        t5.compute_bias = windowed_bias
        try:
            t5.check_sft(fw, work, t5.SEQ, f"sparse window {WINDOW}, relu, tied", 41,
                         "attention/sparse", sparse)
            check_generate(fw, work, "attention/sparse", sparse, f"sparse window {WINDOW}")
        finally:
            t5.compute_bias = _compute_bias
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    passed, failed = R.passed + tf.R.passed, R.failed + tf.R.failed
    print(f"t5_attention: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
