#!/usr/bin/python3
"""decode.py - time per generated token against the position: fw's decoder with
attention/mha (attends over the whole cache) and attention/flash (over the
valid length only), and a plain torch 1.13 decode step of the same model.

Usage (from the repository root, after a Release build):
    /usr/bin/python3 bench/decode.py [--build build] [--max-len 4096]
        [--at 128,512,1024,2048,4000] [--n-layer 4] [--n-head 8] [--n-embd 512]
        [--vocab 4096] [--rounds 3] [--steps 16] [--threads N] [--no-torch]

The model is GPT-2-shaped (pre-norm blocks, learned positions, GELU MLP of 4C,
tied head), batch 1, one token a step, random weights. fw: build/decode
(bench/decode.c) builds the runtime's decoder with caches of --max-len
positions and times one step at each --at position (median of --steps after
two warm-ups). torch (this script's --worker mode): the same step in plain
torch with preallocated (1, H, max_len, D) caches, attending over the first
p + 1 positions as Hugging Face's cache does. Each (implementation, round)
is its own process; rounds rotate the order, and the table keeps each
implementation's best round per position. Prints the CPU and load first
(bench/machine.py): numbers from a busy machine are noise.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # noqa: E402
from attention import run  # noqa: E402  (one process, its last JSON line)


def torch_worker(a):
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    C, H, L = a.n_embd, a.n_head, a.n_layer
    D = C // H

    def w(*shape):
        return torch.randn(*shape, generator=g) * 0.02

    wte, wpe = w(a.vocab, C), w(a.max_len, C)
    blocks = [dict(ln1=torch.ones(C), qkv=w(C, 3 * C), bqkv=torch.zeros(3 * C), proj=w(C, C),
                   ln2=torch.ones(C), fc=w(C, 4 * C), proj2=w(4 * C, C)) for _ in range(L)]
    caches = [(torch.randn(1, H, a.max_len, D, generator=g),
               torch.randn(1, H, a.max_len, D, generator=g)) for _ in range(L)]
    zero = torch.zeros(C)

    def step(tok, p):
        x = wte[tok] + wpe[p]
        for b, (kc, vc) in zip(blocks, caches):
            h = F.layer_norm(x, (C,), b["ln1"], zero)
            q, k, v = (h @ b["qkv"] + b["bqkv"]).view(3, H, D).unbind(0)
            kc[0, :, p] = k
            vc[0, :, p] = v
            att = torch.einsum("hd,htd->ht", q, kc[0, :, :p + 1]) / D ** 0.5
            y = torch.einsum("ht,htd->hd", att.softmax(-1), vc[0, :, :p + 1]).reshape(C)
            x = x + y @ b["proj"]
            h = F.layer_norm(x, (C,), b["ln2"], zero)
            x = x + F.gelu(h @ b["fc"], approximate="tanh") @ b["proj2"]
        return F.layer_norm(x, (C,), torch.ones(C), zero) @ wte.t()

    ms = {}
    with torch.no_grad():
        for p in a.at:
            t = []
            for i in range(a.steps + 2):
                t0 = time.perf_counter()
                step(1, p)
                if i >= 2:
                    t.append(time.perf_counter() - t0)
            t.sort()
            ms[str(p)] = t[len(t) // 2] * 1e3
    print(json.dumps({"plugin": "torch", "max_len": a.max_len, "ms": ms}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--max-len", type=int, default=4096)
    ap.add_argument("--at", default="128,512,1024,2048,4000",
                    type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=8)
    ap.add_argument("--n-embd", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return torch_worker(a)

    print(machine.machine_line())
    env = dict(os.environ, FW_PLUGIN_PATH=os.path.join(a.build, "plugins"),
               OMP_NUM_THREADS=str(a.threads), OPENBLAS_CORETYPE=machine.openblas_coretype())
    shape = ["--n-layer", str(a.n_layer), "--n-head", str(a.n_head), "--n-embd", str(a.n_embd),
             "--vocab", str(a.vocab), "--max-len", str(a.max_len), "--steps", str(a.steps),
             "--threads", str(a.threads), "--at", ",".join(map(str, a.at))]
    impls = ["attention/mha", "attention/flash"] + ([] if a.no_torch else ["torch"])
    best = {}
    for rd in range(a.rounds):
        for im in impls[rd % len(impls):] + impls[:rd % len(impls)]:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker"] + shape \
                if im == "torch" else [os.path.join(a.build, "decode"), "--plugin", im] + shape
            r = run(cmd, env)
            if "error" in r:
                best.setdefault(im, r)
                continue
            old = best.get(im, {}).get("ms", {})
            best[im] = {"ms": {p: min(v, old.get(p, v)) for p, v in r["ms"].items()}}
    print(f"GPT-2-shaped decoder: {a.n_layer} layers, {a.n_head} heads, width {a.n_embd}, "
          f"vocabulary {a.vocab}, cache {a.max_len} positions, batch 1, {a.threads} threads; "
          f"ms per token, best of {a.rounds} interleaved rounds (median of {a.steps} steps)")
    names = [im.split("/")[-1] for im in impls]
    print(f"{'position':>9} " + " ".join(f"{n:>9}" for n in names))
    for p in a.at:
        cells = []
        for im in impls:
            r = best.get(im, {})
            cells.append(f"{r['ms'][str(p)]:>9.3f}" if "ms" in r else f"{'failed':>9}")
        print(f"{p:>9} " + " ".join(cells))
    for im in impls:
        if "error" in best.get(im, {}):
            print(f"{im}: {best[im]['error']}")
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
