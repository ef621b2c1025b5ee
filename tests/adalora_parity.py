#!/usr/bin/python3
"""adalora_parity.py - peft/adalora against a plain-PyTorch transcription of
Hugging Face PEFT's AdaLoRA (tuners/adalora: SVDLinear, RankAllocator,
AdaLoraModel.forward and update_and_allocate), step by step.

Usage: /usr/bin/python3 tests/adalora_parity.py --fwrun PATH --plugin-path DIR

The small random GPT-2 of gpt2_parity.py is imported; PyTorch runs it as
GPT2LMHeadModel with, on every targeted layer (written from PEFT's source,
no peft package):

  y = base(x) + (x @ (A * E).T @ B.T) * lora_alpha / (ranknum + 1e-5),
  ranknum = init_r; loss += orth_reg_weight * mean over A, B of
  ||A A^T - I||_F, ||B^T B - I||_F.

After each AdamW step (the trainer's order: clip, step, then
update_and_allocate(step) with the clipped gradients), PEFT's allocator:
importance |p * grad| EMA (beta1), uncertainty EMA (beta2), triplet score
= E + mean over the A row + mean over the B column, the cubic budget, the
k-th smallest score as threshold (E masked where score <= it) every deltaT
steps, the forced final allocation at total_step - tfinal (EMAs reset), and
the fixed rank pattern after it.

Checks: every step's loss and grad norm within 1e-4 relative, the budget
and the kept triplets of every layer at every allocation identical, the
final A, B, E within 1e-4 and the final rank pattern identical; the
trainable count; resuming from the step-5 checkpoint (mid-schedule: the
EMAs must come back) bit for bit; eval --adapter and --merge-adapter
against torch; the PEFT export (rank_pattern, truncated tensors under
PEFT's keys) applied in torch gives fw's eval loss; refusals.
Ends with "adalora_parity: N passed, M failed"; exit 0 only when nothing failed.
"""
import json
import math
import os
import re
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as g2          # noqa: E402
import lora_parity as lp          # noqa: E402
import peft_parity as pp          # noqa: E402

torch.set_num_threads(2)

R, rel = g2.R, g2.rel
N_LAYER, N_EMBD = g2.N_LAYER, g2.N_EMBD
TRAIN = pp.TRAIN
CFG = dict(init_r=6, target_r=3, tinit=1, tfinal=3, deltaT=2, beta1=0.85, beta2=0.85,
           orth=0.5, alpha=8.0, targets=("attn.c_attn", "mlp.c_fc"))
OPTS = [f"--adalora-init-r={CFG['init_r']}", f"--adalora-target-r={CFG['target_r']}",
        f"--adalora-tinit={CFG['tinit']}", f"--adalora-tfinal={CFG['tfinal']}",
        f"--adalora-delta-t={CFG['deltaT']}", "--adalora-target-modules=c_attn,mlp.c_fc",
        "--adalora-log-masks"]
PLUGINS = "--plugins=arch/decoder,attention/mha,optim/adamw,peft/adalora"
EVAL = "--plugins=arch/decoder,attention/mha,peft/adalora"
DIMS = {"attn.c_attn": (N_EMBD, 3 * N_EMBD), "mlp.c_fc": (N_EMBD, 4 * N_EMBD)}


def layers():
    return [f"h.{l}.{k}" for l in range(N_LAYER) for k in CFG["targets"]]


# --- PEFT's AdaLoRA in plain torch --------------------------------------------------------

def lora_map(P, r):
    """lp.forward's (A', B, s) per layer: A' = A * E, s = alpha / (ranknum + 1e-5)."""
    ranknum = torch.tensor([float(r)]) + 1e-5
    return {m: (P[m + ".lora_A"] * P[m + ".lora_E"], P[m + ".lora_B"],
                CFG["alpha"] / ranknum) for m in layers()}


def orth_term(P):
    """AdaLoraModel.forward: orth_reg_weight * mean of ||cov - I||_F over A and B."""
    reg, n = 0, 0
    for m in layers():
        for part in ("lora_A", "lora_B"):
            p = P[f"{m}.{part}"]
            cov = p @ p.T if part == "lora_A" else p.T @ p
            reg = reg + torch.norm(cov - torch.eye(*cov.size()), p="fro")
            n += 1
    return CFG["orth"] * reg / n


def loss_fn(W, P, x, y):
    return lp.ce(W, lora_map(P, CFG["init_r"]), x, y) + orth_term(P)


class RankAllocator:
    """PEFT's RankAllocator and AdaLoraModel.update_and_allocate for one adapter."""

    def __init__(self, P, total_step):
        self.P, self.T = P, total_step
        self.init_bgt = sum(P[m + ".lora_A"].shape[0] for m in layers())
        self.target_bgt = CFG["target_r"] * len(layers())
        self.ipt, self.exp_ipt, self.exp_unc = {}, {}, {}
        self.rank_pattern = None
        self.log = []

    def budget_schedule(self, step):
        tinit, tfinal, T = CFG["tinit"], CFG["tfinal"], self.T
        if step <= tinit:
            return self.init_bgt, False
        if step > T - tfinal:
            return self.target_bgt, True
        mul_coeff = 1 - (step - tinit) / (T - tfinal - tinit)
        budget = int((self.init_bgt - self.target_bgt) * (mul_coeff ** 3) + self.target_bgt)
        return budget, step % CFG["deltaT"] == 0

    def update_ipt(self):
        b1, b2 = CFG["beta1"], CFG["beta2"]
        for n, p in self.P.items():
            if n not in self.ipt:
                self.ipt[n] = torch.zeros_like(p)
                self.exp_ipt[n] = torch.zeros_like(p)
                self.exp_unc[n] = torch.zeros_like(p)
            with torch.no_grad():
                self.ipt[n] = (p * p.grad).abs().detach()
                self.exp_ipt[n] = b1 * self.exp_ipt[n] + (1 - b1) * self.ipt[n]
                self.exp_unc[n] = b2 * self.exp_unc[n] + \
                    (1 - b2) * (self.ipt[n] - self.exp_ipt[n]).abs()

    def score(self, n):
        return self.exp_ipt[n] * self.exp_unc[n]

    def mask_to_budget(self, step, budget):
        triplet, all_score = {}, []
        for m in layers():
            a = torch.mean(self.score(m + ".lora_A"), dim=1, keepdim=True)
            b = torch.mean(self.score(m + ".lora_B"), dim=0, keepdim=False).view(-1, 1)
            ipt_ab = torch.cat([a, b], dim=1).sum(dim=1, keepdim=False)
            s = self.score(m + ".lora_E").view(-1) + ipt_ab.view(-1)
            triplet[m] = s.view(-1, 1)
            all_score.append(s.view(-1))
        thr = torch.kthvalue(torch.cat(all_score), k=self.init_bgt - budget)[0].item()
        pattern = {}
        with torch.no_grad():
            for m in layers():
                self.P[m + ".lora_E"].masked_fill_(triplet[m] <= thr, 0.0)
                pattern[m] = (~(triplet[m] <= thr)).view(-1).tolist()
        self.log.append((step, budget, pattern))
        return pattern

    def mask_using_rank_pattern(self):
        with torch.no_grad():
            for m in layers():
                keep = torch.tensor(self.rank_pattern[m]).unsqueeze(-1)
                self.P[m + ".lora_E"].masked_fill_(~keep, 0.0)

    def update_and_allocate(self, step):
        end = self.T - CFG["tfinal"]
        if step < end:
            self.update_ipt()
            budget, mask_ind = self.budget_schedule(step)
            if mask_ind:
                self.rank_pattern = self.mask_to_budget(step, budget)
        elif step == end:
            budget, _ = self.budget_schedule(step)
            self.rank_pattern = self.mask_to_budget(step, budget)
            self.ipt, self.exp_ipt, self.exp_unc = {}, {}, {}
        else:
            self.mask_using_rank_pattern()


def torch_train(W, P, tokens):
    alloc = RankAllocator(P, TRAIN["ITERS"])
    steps, final = pp.torch_train(P, lambda x, y: loss_fn(W, P, x, y), tokens,
                                  alloc.update_and_allocate)
    return steps, final, alloc


def fw_masks(stderr):
    """[(step, budget, {layer: [bool]})] from --adalora-log-masks lines."""
    out = []
    for m in re.finditer(r"peft/adalora: step (\d+): budget (\d+), masks((?: \S+ [01]+)+)",
                         stderr):
        f = m.group(3).split()
        out.append((int(m.group(1)), int(m.group(2)),
                    {f[i]: [ch == "1" for ch in f[i + 1]] for i in range(0, len(f), 2)}))
    return out


def eval_loss(W, P, tokens):
    with torch.no_grad():
        return lp.eval_loss(W, lora_map(P, CFG["init_r"]), tokens) + float(orth_term(P))


# --- the checks ---------------------------------------------------------------------------

def check_merge_file(fw, work, base, last, fin, W, val_tokens, E):
    """fwrun merge of the trained adapter with its singular values made larger (x50,
    so that the update shows): the merged model's logits (torch on the merged file)
    equal the adapter model's (torch, PEFT's forward: B (A * E) alpha / (ranknum +
    1e-5)), and fwrun eval of the merged file (no peft plugin) equals torch's
    cross-entropy of the adapter model (the orthogonality term is training's)."""
    strong = {k: v * 50.0 if k.endswith(".lora_E") else v for k, v in fin.items()}
    sp = os.path.join(work, "strong.h5")
    lp.write_adapter(last, sp, strong)
    merged = os.path.join(work, "merged.h5")
    p = fw("merge", base, sp, merged)
    if not R.check("[adalora] fwrun merge runs", p.returncode == 0 and os.path.exists(merged),
                   g2.describe(p)):
        return
    mw = g2.h5_tensors(merged)
    Wm = {k: torch.from_numpy(v.T.copy() if g2.is_conv1d(k) else v) for k, v in mw.items()}
    Ps = {k: torch.from_numpy(v) for k, v in strong.items() if not k.endswith("pattern")}
    L = lora_map(Ps, CFG["init_r"])
    x, _ = g2.micro_batch(val_tokens, 0, lp.EVAL_B, lp.EVAL_T)
    with torch.no_grad():
        lm, la, lb = lp.forward(Wm, {}, x), lp.forward(W, L, x), lp.forward(W, {}, x)
    d, effect = float((lm - la).abs().max()), float((la - lb).abs().max())
    R.check("[adalora] the merged file's logits equal the adapter model's within 1e-5 (torch "
            "on both), and differ from the base's", set(mw) == set(W) and d <= 1e-5 and
            effect > 1e-2, f"max |diff| {d:.2e}; adapter effect {effect:.2e}")
    want = lp.eval_loss(W, L, val_tokens)
    mg, p = lp.eval_fw(fw, "--plugins=arch/decoder,attention/mha", f"--load={merged}", *E)
    R.check(f"[adalora] eval of the merged file (no peft plugin) within {pp.TOL_EVAL:g} of "
            "torch's cross-entropy of the adapter model", mg is not None and
            rel(mg, want) <= pp.TOL_EVAL, f"fw {mg} torch {want}; {g2.describe(p)[-200:]}")


def check_all(fw, work, base, W, tokens, train_path, val_tokens, val_path):
    tag = "adalora"
    # The initial adapter: the same run with lr 0 saves it at step 1 (no allocation
    # before tinit), so torch starts from fw's N(0, 0.02) draws.
    init_run = os.path.join(work, "init")
    p = fw("train", PLUGINS, f"--load={base}", f"--data={train_path}",
           f"--run-dir={init_run}", *pp.train_args(), "--lr=0", "--min-lr=0",
           "--weight-decay=0", "--save-interval=1", *OPTS)
    init_path = os.path.join(init_run, "adapter-00000001.h5")
    if not R.check(f"[{tag}] fwrun train --lr=0 saves the initial adapter",
                   p.returncode == 0 and os.path.exists(init_path), g2.describe(p)):
        return
    init = g2.h5_tensors(init_path)
    r = CFG["init_r"]
    want = {}
    for m in layers():
        i, o = DIMS[m.split(".", 2)[2]]
        want.update({m + ".lora_A": (r, i), m + ".lora_B": (o, r), m + ".lora_E": (r, 1),
                     m + ".lora_E.rank_pattern": (r, 1)})
    R.check(f"[{tag}] the adapter holds A (r, in), B (out, r), E (r, 1) and the rank "
            "pattern of every layer (no EMAs)",
            {k: v.shape for k, v in init.items()} == want, f"{sorted(init)[:5]}")
    stdA = np.concatenate([init[m + ".lora_A"].ravel() for m in layers()]).std()
    R.check(f"[{tag}] init: E = 0, A and B ~ N(0, 0.02)",
            all(not init[m + ".lora_E"].any() for m in layers()) and 0.018 < stdA < 0.022,
            f"std(A) {stdA:.4f}")
    n_train = sum(int(np.prod(s)) for k, s in want.items() if not k.endswith("pattern"))
    pp.check_count(tag, p, n_train, sum(int(np.prod(s)) for _, s in g2.hf_names()) + n_train)

    run = os.path.join(work, "run")
    p = fw("train", PLUGINS, f"--load={base}", f"--data={train_path}", f"--run-dir={run}",
           *pp.train_args(), *OPTS)
    if not R.check(f"[{tag}] fwrun train runs (total_step from --train-iters)",
                   p.returncode == 0, g2.describe(p)):
        return
    P = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in init.items()
         if not k.endswith("pattern")}
    ref, final, alloc = torch_train(W, P, tokens)
    got = lp.metrics(run)
    wl, wn = pp.compare_steps(tag, got, ref)
    masks = fw_masks(p.stderr)
    for step, budget, pat in alloc.log:
        print(f"  torch step {step}: budget {budget}, ranks "
              f"{[sum(v) for v in pat.values()]}")
    R.check(f"[{tag}] allocations at the same steps with the same budgets "
            f"({[(s, b) for s, b, _ in alloc.log]})",
            [(s, b) for s, b, _ in masks] == [(s, b) for s, b, _ in alloc.log],
            f"fw {[(s, b) for s, b, _ in masks]}")
    R.check(f"[{tag}] every allocation keeps the same triplets of every layer",
            len(masks) == len(alloc.log) and all(a[2] == b[2] for a, b in zip(masks, alloc.log)),
            f"fw {[m[2] for m in masks][:2]} torch {[m[2] for m in alloc.log][:2]}")
    last = os.path.join(run, f"adapter-{TRAIN['ITERS']:08d}.h5")
    fin = g2.h5_tensors(last) if os.path.exists(last) else {}
    wf = pp.compare_final(tag, fin, final)
    R.check(f"[{tag}] the saved rank pattern is torch's final one",
            bool(fin) and all((fin[m + ".lora_E.rank_pattern"].ravel() != 0).tolist() ==
                              alloc.rank_pattern[m] for m in layers()))
    ck = g2.h5_tensors(os.path.join(run, "ckpt-00000005.h5"))
    R.check(f"[{tag}] the checkpoint holds the importance EMAs",
            "h.0.attn.c_attn.lora_A.exp_avg_ipt" in ck and
            "h.1.mlp.c_fc.lora_E.exp_avg_unc" in ck and
            np.abs(ck["h.0.attn.c_attn.lora_A.exp_avg_ipt"]).max() > 0)
    pp.check_base_unchanged(tag, os.path.join(run, f"ckpt-{TRAIN['ITERS']:08d}.h5"), base)
    pp.check_resume(tag, fw, work, run, PLUGINS, train_path, got)

    # eval, merge, export
    E = [f"--valid-data={val_path}"]
    Pf = {k: torch.from_numpy(v) for k, v in fin.items() if not k.endswith("pattern")}
    want_eval = eval_loss(W, Pf, val_tokens)
    loss, p = lp.eval_fw(fw, EVAL, f"--load={base}", f"--adapter={last}", *E)
    base_loss = lp.eval_loss(W, {}, val_tokens)
    R.check(f"[{tag}] eval --adapter within {pp.TOL_EVAL:g} of torch (CE + orth term, as "
            "PEFT's forward)", loss is not None and rel(loss, want_eval) <= pp.TOL_EVAL,
            f"fw {loss} torch {want_eval} base {base_loss}; {g2.describe(p)[-200:]}")
    merged, p = lp.eval_fw(fw, EVAL, f"--load={base}", f"--adapter={last}",
                           "--merge-adapter", *E)
    R.check(f"[{tag}] eval --merge-adapter gives the unmerged loss within {pp.TOL_EVAL:g}",
            merged is not None and loss is not None and rel(merged, loss) <= pp.TOL_EVAL,
            f"merged {merged} unmerged {loss}")
    check_merge_file(fw, work, base, last, fin, W, val_tokens, E)
    out = os.path.join(work, "export")
    p = fw("export-adapter", last, out, "--base-model=gpt2-tiny-test")
    if not R.check(f"[{tag}] export-adapter runs", p.returncode == 0, g2.describe(p)):
        return
    with open(os.path.join(out, "adapter_config.json")) as f:
        ec = json.load(f)
    rp = ec.get("rank_pattern") or {}
    R.check(f"[{tag}] adapter_config.json: ADALORA, its fields, rank_pattern per layer",
            ec.get("peft_type") == "ADALORA" and ec.get("init_r") == r and
            ec.get("target_r") == CFG["target_r"] and ec.get("total_step") == TRAIN["ITERS"]
            and ec.get("tinit") == CFG["tinit"] and ec.get("deltaT") == CFG["deltaT"] and
            ec.get("orth_reg_weight") == CFG["orth"] and ec.get("lora_alpha") == CFG["alpha"]
            and set(rp) == {f"transformer.{m}.lora_E" for m in layers()} and
            all(rp[f"transformer.{m}.lora_E"] == alloc.rank_pattern[m] for m in layers()),
            json.dumps(ec)[:400])
    _, st = g2.read_st(os.path.join(out, "adapter_model.safetensors"))
    ok = True
    Pe = {}
    for m in layers():
        keep = alloc.rank_pattern[m]
        kk = sum(keep)
        i, o = DIMS[m.split(".", 2)[2]]
        for part, shape in (("lora_A", (kk, i)), ("lora_B", (o, kk)), ("lora_E", (kk, 1))):
            key = f"base_model.model.transformer.{m}.{part}"
            ok = ok and key in st and tuple(st[key][1]) == shape
            if ok:
                Pe[f"{m}.{part}"] = torch.from_numpy(st[key][2].copy())
    R.check(f"[{tag}] adapter_model.safetensors: PEFT's keys, tensors cut to the kept "
            "triplets (resize_state_dict_by_rank_pattern)", ok and len(st) == 3 * len(layers()),
            f"{sorted((k, v[1]) for k, v in st.items())[:3]}")
    if ok:
        # PEFT loads the cut tensors with ranknum kept at init_r
        ce_ex = lp.eval_loss(W, lora_map(Pe, r), val_tokens)
        with torch.no_grad():
            ex = ce_ex + float(orth_term(Pf))
        R.check(f"[{tag}] the export applied in torch reproduces fw's eval loss",
                loss is not None and rel(ex, loss) <= pp.TOL_EVAL, f"torch {ex} fw {loss}")
    # refusals
    bad = [f"--load={base}", f"--data={train_path}", f"--run-dir={os.path.join(work, 'bad')}",
           "--micro-batch-size=2", "--seq-length=32", "--train-iters=4", "--lr=0"]
    p = fw("train", PLUGINS, *bad, "--adalora-tinit=4")
    R.check(f"[{tag}] a schedule with no budgeting phase is refused in one line",
            p.returncode != 0 and "budgeting phase" in p.stderr and
            len(p.stderr.strip().splitlines()) == 1, p.stderr[-300:])
    p = fw("train", PLUGINS, *bad, "--adalora-target-r=20")
    R.check(f"[{tag}] target_r above init_r is refused", p.returncode != 0 and
            "adalora-target-r" in p.stderr, p.stderr[-300:])
    p = fw("train", PLUGINS, *bad, "--adalora-target-modules=c_atn")
    R.check(f"[{tag}] a target that matches nothing is refused", p.returncode != 0 and
            "c_atn" in p.stderr and "matches no linear layer" in p.stderr, p.stderr[-300:])
    print(f"  [{tag}] max relative difference: loss {wl:.2e}, grad norm {wn:.2e}; final "
          f"tensors (abs) {wf if wf is not None else float('nan'):.2e}")


def main():
    a, fw = g2.cli(__doc__)

    def body(work):
        W = g2.random_weights(1234)
        rng = np.random.RandomState(42)
        c = TRAIN
        need = c["ITERS"] * (c["GBS"] // c["B"]) * c["B"] * c["T"] + 1
        tokens = rng.randint(0, g2.VOCAB, size=need + 37).astype(np.uint16)
        val_tokens = rng.randint(0, g2.VOCAB, size=lp.EVAL_K * lp.EVAL_B * lp.EVAL_T + 51) \
            .astype(np.uint16)
        train_path, val_path = os.path.join(work, "train.bin"), os.path.join(work, "val.bin")
        g2.write_shard(train_path, tokens)
        g2.write_shard(val_path, val_tokens)
        base = g2.import_random(fw, work, W, R)
        if base:
            check_all(fw, work, base, W, tokens, train_path, val_tokens, val_path)

    return R.run("adalora_parity", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
