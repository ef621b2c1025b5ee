#!/usr/bin/python3
"""loss_scaling.py - fwrun's loss scaling against Megatron-LM's DynamicGradScaler.

Usage: /usr/bin/python3 tests/loss_scaling.py --fwrun PATH --plugin-path DIR [--keep]

The oracle is MegatronDynamicGradScaler below: a plain transcription of
megatron/core/optimizer/grad_scaler.py (DynamicGradScaler.update, with the
scale an f32 as Megatron's torch tensor is) and of Megatron's training step
(an overflow skips the optimizer step and the scheduler's; the iteration
still counts). fwrun trains a tiny byte-level GPT with --fp16 and overflows
injected at chosen steps (--debug-inject-overflow); checks:

  1. per step, fw's loss_scale (after the update, as Megatron logs it),
     skipped flag, running skipped count and lr equal the transcription's,
     over sequences that exercise hysteresis, back-off, the --min-loss-scale
     floor, growth after --loss-scale-window good steps, and the hysteresis
     tracker kept (not reset) across good steps short of a growth; at the
     defaults (2^32) --fp16's f16 matmuls overflow for real, and there the
     transcription is driven by every step fw skipped (the injected ones
     among them);
  2. an overflow at step k: the checkpoints of steps k-1 and k hold
     bit-identical weights and Adam state, and no checkpoint holds a NaN or
     inf; the lr of step k+1 is the lr step k would have had;
  3. resume from the middle of a scaled run (scaler mid-window, hysteresis
     spent) reproduces the uninterrupted run bit for bit: final checkpoint
     tensors and scaler attributes, and every metrics record after it;
  4. --loss-scale=S is a constant scaler (skips, never changes), --bf16
     alone has no scaler (loss_scale 1), and an overflow without a scaler
     stops the run as diverged (exit 1);
  5. bad input: --bf16 with --fp16, a non-positive --loss-scale,
     --min-loss-scale above --initial-loss-scale, a bad step list: one line,
     exit 2.
"""
import json
import os
import random
import shutil
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as gp  # noqa: E402  (Results, the fwrun driver, cli)

R = gp.Results()
MODEL = ["--plugins=arch/decoder,attention/mha,optim/adamw", "--tokenizer=byte",
         "--n-layer=2", "--n-head=2", "--n-embd=32", "--n-positions=32", "--vocab-size=257",
         "--micro-batch-size=2", "--seq-length=32", "--threads=2", "--weight-decay=0.1"]
LR = 3e-3


class MegatronDynamicGradScaler:
    """megatron/core/optimizer/grad_scaler.py, DynamicGradScaler, on a numpy f32."""

    def __init__(self, initial_scale, min_scale, growth_factor, backoff_factor,
                 growth_interval, hysteresis):
        self.scale = np.float32(initial_scale)
        self.min_scale = np.float32(min_scale)
        self.growth_factor = np.float32(growth_factor)
        self.backoff_factor = np.float32(backoff_factor)
        self.growth_interval = growth_interval
        self.hysteresis = hysteresis
        self._growth_tracker = 0
        self._hysteresis_tracker = self.hysteresis

    def update(self, found_inf):
        if found_inf:
            self._growth_tracker = 0
            self._hysteresis_tracker -= 1
            if self._hysteresis_tracker <= 0:
                self.scale = max(np.float32(self.scale * self.backoff_factor), self.min_scale)
        else:
            self._growth_tracker += 1
            if self._growth_tracker == self.growth_interval:
                self._growth_tracker = 0
                self._hysteresis_tracker = self.hysteresis
                self.scale = np.float32(self.scale * self.growth_factor)


def linear_lr(n, iters):
    """fw's linear decay without warmup (docs/training.md): lr at update n."""
    return LR * (1.0 - n / iters)


def megatron_steps(iters, overflow, initial, min_scale, window, hysteresis):
    """Per iteration: (loss_scale after the update, skipped, skipped so far, lr)."""
    s = MegatronDynamicGradScaler(initial, min_scale, 2.0, 0.5, window, hysteresis)
    out, updates, skipped = [], 0, 0
    for it in range(1, iters + 1):
        lr = linear_lr(updates + 1, iters)     # the scheduler moves only on updates
        found_inf = it in overflow
        s.update(found_inf)
        if found_inf:
            skipped += 1
        else:
            updates += 1
        out.append((float(s.scale), found_inf, skipped, lr))
    return out


def write_text(path, seed):
    r = random.Random(seed)
    words = "the cat dog sat on a mat log and ran far away to see sun moon".split()
    with open(path, "w") as f:
        f.write(" ".join(r.choice(words) for _ in range(4000)) + ".\n")


def train(fw, run, data, iters, *extra):
    return fw("train", *MODEL, f"--data={data}", f"--train-iters={iters}", f"--lr={LR}",
              "--lr-decay-style=linear", f"--run-dir={run}", *extra)


def tail(p):
    """What a failed fwrun said (nothing for a success)."""
    return p.stderr[-400:] if p.returncode else ""


def records(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    return [r for r in recs if r.get("type") == "train"]


def h5(path):
    with h5py.File(path, "r") as f:
        t = {k: np.array(f["tensors"][k]) for k in f["tensors"].keys()}
        a = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in f.attrs.items()}
    return t, a


def ckpt(run, step):
    return os.path.join(run, f"ckpt-{step:08d}.h5")


def check_sequence(fw, work, data, name, iters, overflow, initial, min_scale, window, hyst,
                   natural=False):
    """natural: the scale is high enough for real fp16 overflows, so the
    transcription is driven by every step fw skipped (the injected ones must
    be among them); otherwise only the injected steps may overflow."""
    run = os.path.join(work, name)
    p = train(fw, run, data, iters, "--fp16", f"--initial-loss-scale={initial}",
              f"--min-loss-scale={min_scale}", f"--loss-scale-window={window}",
              f"--hysteresis={hyst}",
              "--debug-inject-overflow=" + ",".join(str(k) for k in sorted(overflow)))
    if not R.check(f"{name}: fwrun train exits 0", p.returncode == 0, tail(p)):
        return
    got = records(run)
    if natural:
        found = {r["step"] for r in got if r["skipped"]}
        R.check(f"{name}: every injected step skipped, and real fp16 overflows too "
                f"({len(found - overflow)} more)", overflow <= found and found - overflow,
                f"skipped {sorted(found)}")
        overflow = found
    want = megatron_steps(iters, overflow, initial, min_scale, window, hyst)
    bad = []
    for rec, (scale, skipped, total, lr) in zip(got, want):
        if (np.float32(rec["loss_scale"]) != np.float32(scale) or rec["skipped"] != skipped or
                rec["skipped_iters"] != total or abs(rec["lr"] - lr) > 1e-12 or
                (rec["grad_norm"] is None) != skipped):
            bad.append(f"step {rec['step']}: fw scale {rec['loss_scale']} skipped "
                       f"{rec['skipped']} ({rec['skipped_iters']}) lr {rec['lr']}; Megatron "
                       f"{scale} {skipped} ({total}) {lr}")
    scales = [w[0] for w in want]
    R.check(f"{name}: {iters} steps, scale/skipped/count/lr step for step as Megatron's",
            len(got) == iters and not bad,
            "; ".join(bad[:3]) or f"scales {scales[0]:g} .. {min(scales):g} .. {scales[-1]:g}, "
            f"{want[-1][2]} skipped")
    return run


def check_skip_is_noop(fw, work, data):
    run = os.path.join(work, "noop")
    k = 4
    p = train(fw, run, data, 7, "--fp16", "--initial-loss-scale=65536", "--save-interval=1",
              f"--debug-inject-overflow={k}")
    if not R.check("noop: fwrun train exits 0", p.returncode == 0, tail(p)):
        return
    before, _ = h5(ckpt(run, k - 1))
    after, attrs = h5(ckpt(run, k))
    same = sorted(before) == sorted(after) and all(
        before[n].tobytes() == after[n].tobytes() for n in before)
    n_adam = sum(n.startswith("optim.") for n in before)
    R.check(f"noop: overflow at step {k}: weights and Adam state after it bit-identical to "
            f"before it ({len(before) - n_adam} weights, {n_adam} Adam tensors)",
            same and n_adam > 0)
    finite = all(np.isfinite(h5(ckpt(run, s))[0][n]).all() for s in range(1, 8)
                 for n in before)
    R.check("noop: no NaN/inf in any weight or Adam state of steps 1..7", finite)
    recs = records(run)
    R.check(f"noop: the lr did not advance at step {k} (step {k + 1} uses step {k}'s lr)",
            recs[k]["lr"] == recs[k - 1]["lr"] and recs[k - 1]["lr"] != recs[k - 2]["lr"],
            f"lr {recs[k - 2]['lr']}, {recs[k - 1]['lr']}, {recs[k]['lr']}")
    R.check("noop: the checkpoint counts the skip (skipped_iters 1)",
            attrs.get("skipped_iters") == "1", str(attrs.get("skipped_iters")))
    moved = any(h5(ckpt(run, k + 1))[0][n].tobytes() != after[n].tobytes() for n in after)
    R.check(f"noop: step {k + 1} updates the weights again", moved)


def check_resume(fw, work, data):
    flags = ["--fp16", "--initial-loss-scale=1024", "--loss-scale-window=4",
             "--hysteresis=3", "--debug-inject-overflow=2,4,5,11", "--save-interval=1"]
    ref = os.path.join(work, "resume-ref")
    p = train(fw, ref, data, 14, *flags)
    if not R.check("resume: reference run exits 0", p.returncode == 0, tail(p)):
        return
    mid = 6             # growth tracker 1 of 4, hysteresis tracker 1 of 3 after step 6
    run = os.path.join(work, "resume-run")
    os.makedirs(run)
    shutil.copy(ckpt(ref, mid), run)
    p = train(fw, run, data, 14, *flags, f"--load={run}")
    if not R.check("resume: resumed run exits 0", p.returncode == 0, tail(p)):
        return
    ta, aa = h5(ckpt(ref, 14))
    tb, ab = h5(ckpt(run, 14))
    keys = ("loss_scale", "growth_tracker", "hysteresis_tracker", "skipped_iters", "step")
    R.check("resume: final weights and Adam state bit-identical to the uninterrupted run",
            sorted(ta) == sorted(tb) and all(ta[n].tobytes() == tb[n].tobytes() for n in ta))
    R.check("resume: final scaler state identical",
            all(aa.get(k) == ab.get(k) for k in keys) and "loss_scale" in aa,
            " ".join(f"{k}={aa.get(k)}/{ab.get(k)}" for k in keys))
    _, am = h5(ckpt(ref, mid))
    want = megatron_steps(mid, {2, 4, 5}, 1024, 1, 4, 3)
    R.check(f"resume: the step-{mid} checkpoint's scaler is mid-window with hysteresis spent "
            "(so the resume has state to restore)",
            am.get("growth_tracker") == "1" and am.get("hysteresis_tracker") == "0" and
            float(am.get("loss_scale", "nan")) == want[-1][0],
            " ".join(f"{k}={am.get(k)}" for k in keys))
    fields = ("step", "loss", "lr", "grad_norm", "loss_scale", "skipped", "skipped_iters",
              "tokens")
    ra = [{k: r[k] for k in fields} for r in records(ref) if r["step"] > mid]
    rb = [{k: r[k] for k in fields} for r in records(run) if r["step"] > mid]
    R.check(f"resume: metrics of steps {mid + 1}..14 identical", ra == rb and len(ra) == 14 - mid)


def check_modes(fw, work, data):
    run = os.path.join(work, "static")
    p = train(fw, run, data, 5, "--bf16", "--loss-scale=128", "--debug-inject-overflow=2,3")
    recs = records(run) if p.returncode == 0 else []
    R.check("static: --bf16 --loss-scale=128 skips the overflowing steps at a constant scale",
            [(r["loss_scale"], r["skipped"]) for r in recs] ==
            [(128, False), (128, True), (128, True), (128, False), (128, False)],
            p.stderr[-300:] if p.returncode else str([(r["loss_scale"], r["skipped"]) for r in recs]))
    run = os.path.join(work, "bf16")
    p = train(fw, run, data, 3, "--bf16")
    recs = records(run) if p.returncode == 0 else []
    R.check("bf16: no scaler by default (loss_scale 1, nothing skipped)",
            len(recs) == 3 and all(r["loss_scale"] == 1 and not r["skipped"] for r in recs),
            tail(p))
    run = os.path.join(work, "fp32inject")
    p = train(fw, run, data, 3, "--debug-inject-overflow=2")
    R.check("fp32: an overflow without a scaler stops the run as diverged (exit 1)",
            p.returncode == 1 and "diverged" in p.stderr, p.stderr.strip().splitlines()[-1])


def check_bad(fw, work, data):
    cases = [
        (["--bf16", "--fp16"], "--bf16 and --fp16"),
        (["--fp16", "--loss-scale=0"], "--loss-scale=0"),
        (["--loss-scale=-2"], "--loss-scale=-2"),
        (["--loss-scale=abc"], "--loss-scale=abc"),
        (["--fp16", "--initial-loss-scale=16", "--min-loss-scale=32"], "--min-loss-scale"),
        (["--debug-inject-overflow=3,,4"], "--debug-inject-overflow"),
        (["--hysteresis=0"], "hysteresis"),
        (["--loss-scale-window=0"], "loss-scale-window"),
    ]
    for i, (flags, needle) in enumerate(cases):
        run = os.path.join(work, f"bad{i}")
        p = train(fw, run, data, 2, *flags)
        lines = p.stderr.strip().splitlines()
        R.check(f"bad input {' '.join(flags)}: exit 2, one line naming it",
                p.returncode == 2 and len(lines) == 1 and needle in lines[0] and
                not os.path.exists(os.path.join(run, "metrics.jsonl")),
                f"rc {p.returncode}: {p.stderr.strip()[:200]}")


def main():
    args, fw = gp.cli(__doc__)

    def body(work):
        data = os.path.join(work, "train.txt")
        write_text(data, 7)
        # hysteresis 2, window 3: back-off on the 2nd overflow, then on every
        # one until a growth; the floor (min 64) reached; growth after 3 good.
        check_sequence(fw, work, data, "seq-a", 24, {2, 3, 4, 5, 6, 9, 10, 11, 12, 20},
                       1024, 64, 3, 2)
        # hysteresis 3: good steps short of a growth keep the tracker spent.
        check_sequence(fw, work, data, "seq-b", 20, {1, 3, 5, 6, 14, 15, 16, 17}, 2 ** 16,
                       1, 4, 3)
        # the defaults (2^32, window 1000, hysteresis 2): f16 gradients overflow
        # for real until the scale has fallen far enough.
        check_sequence(fw, work, data, "seq-c", 30, {1, 2, 25}, 2 ** 32, 1, 1000, 2,
                       natural=True)
        check_skip_is_noop(fw, work, data)
        check_resume(fw, work, data)
        check_modes(fw, work, data)
        check_bad(fw, work, data)

    sys.exit(R.run("loss_scaling", args.keep, body))


if __name__ == "__main__":
    main()
