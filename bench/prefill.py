#!/usr/bin/python3
"""prefill.py - a prompt read in one forward (prefill) against one token a step,
and the decoding rate after it: fw (bench/prefill.c) with attention/mha and
attention/flash, and plain torch 1.13 on the same shape.

Usage (from the repository root, after a Release build):
    /usr/bin/python3 bench/prefill.py [--build build] [--prompt 512] [--new 32]
        [--rounds 3] [--n-layer 12] [--n-head 12] [--n-embd 768] [--vocab 50257]
        [--threads N] [--bf16] [--no-torch]

GPT-2 124M by default, random weights, batch 1. fw: prefill_ms is
fw_rt_generate of the prompt and one token (the prefill forwards), steps_ms
the prompt through the one-token decoding graph (a forward per token, how
prompts were read before), decode_ms the time per generated token after the
prompt. torch (this script's --worker mode): the full forward over the prompt
with causal attention (prefill, filling (1, H, 1024, D) caches), the prompt a
token a step through the cached step, and the cached step after the prompt.
Medians of --rounds after a warm-up. Prints the CPU and load first
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
    C, H, L, N = a.n_embd, a.n_head, a.n_layer, 1024
    D = C // H

    def w(*shape):
        return torch.randn(*shape, generator=g) * 0.02

    wte, wpe = w(a.vocab, C), w(N, C)
    blocks = [dict(ln1=torch.ones(C), qkv=w(C, 3 * C), bqkv=torch.zeros(3 * C), proj=w(C, C),
                   ln2=torch.ones(C), fc=w(C, 4 * C), proj2=w(4 * C, C)) for _ in range(L)]
    caches = [(torch.zeros(1, H, N, D), torch.zeros(1, H, N, D)) for _ in range(L)]
    zero = torch.zeros(C)

    def forward(toks, p0):
        """toks (T,) at positions p0..p0+T-1, the caches before p0 filled."""
        T = toks.shape[0]
        x = wte[toks] + wpe[p0:p0 + T]
        mask = torch.ones(T, p0 + T, dtype=torch.bool).tril(p0)
        for b, (kc, vc) in zip(blocks, caches):
            h = F.layer_norm(x, (C,), b["ln1"], zero)
            q, k, v = (h @ b["qkv"] + b["bqkv"]).view(T, 3, H, D).permute(1, 2, 0, 3)
            kc[0, :, p0:p0 + T] = k
            vc[0, :, p0:p0 + T] = v
            att = (q @ kc[0, :, :p0 + T].transpose(-1, -2)) / D ** 0.5
            att = att.masked_fill(~mask, float("-inf")).softmax(-1)
            y = (att @ vc[0, :, :p0 + T]).permute(1, 0, 2).reshape(T, C)
            x = x + y @ b["proj"]
            h = F.layer_norm(x, (C,), b["ln2"], zero)
            x = x + F.gelu(h @ b["fc"], approximate="tanh") @ b["proj2"]
        return F.layer_norm(x[-1:], (C,), torch.ones(C), zero) @ wte.t()

    prompt = torch.randint(0, a.vocab, (a.prompt,), generator=g)

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def decode():
        forward(prompt, 0)
        for i in range(a.new):
            forward(torch.tensor([1]), a.prompt + i)

    def steps():
        for t in range(a.prompt):
            forward(prompt[t:t + 1], t)

    tp, ts, td = [], [], []
    with torch.no_grad():
        timed(lambda: forward(prompt, 0))
        for _ in range(a.rounds):
            tp.append(timed(lambda: forward(prompt, 0)))
            ts.append(timed(steps))
            td.append((timed(decode) - tp[-1]) / a.new)
    med = [sorted(t)[len(t) // 2] * 1e3 for t in (tp, ts, td)]
    print(json.dumps({"plugin": "torch", "prefill_ms": med[0], "steps_ms": med[1],
                      "decode_ms": med[2]}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n-layer", type=int, default=12)
    ap.add_argument("--n-head", type=int, default=12)
    ap.add_argument("--n-embd", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return torch_worker(a)

    print(machine.machine_line())
    env = dict(os.environ, FW_PLUGIN_PATH=os.path.join(a.build, "plugins"),
               OMP_NUM_THREADS=str(a.threads), OPENBLAS_CORETYPE=machine.openblas_coretype())
    shape = ["--n-layer", str(a.n_layer), "--n-head", str(a.n_head), "--n-embd", str(a.n_embd),
             "--vocab", str(a.vocab), "--prompt", str(a.prompt), "--new", str(a.new),
             "--rounds", str(a.rounds), "--threads", str(a.threads)]
    impls = ["attention/mha", "attention/flash"] + ([] if a.no_torch else ["torch"])
    res = {}
    for im in impls:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker"] + shape \
            if im == "torch" else [os.path.join(a.build, "prefill"), "--plugin", im] + shape + \
            (["--bf16"] if a.bf16 else [])
        res[im] = run(cmd, env)
    print(f"GPT-2-shaped decoder: {a.n_layer} layers, {a.n_head} heads, width {a.n_embd}, "
          f"vocabulary {a.vocab}; prompt {a.prompt} tokens, batch 1, {a.threads} threads"
          f"{', fw in bf16' if a.bf16 else ''}; medians of {a.rounds} rounds")
    print(f"{'':>10} {'prefill ms':>11} {'steps ms':>10} {'x':>6} {'decode ms':>10} {'tok/s':>7}")
    for im in impls:
        r = res[im]
        if "error" in r:
            print(f"{im.split('/')[-1]:>10} failed: {r['error']}")
            continue
        print(f"{im.split('/')[-1]:>10} {r['prefill_ms']:>11.1f} {r['steps_ms']:>10.1f} "
              f"{r['steps_ms'] / r['prefill_ms']:>6.1f} {r['decode_ms']:>10.2f} "
              f"{1e3 / r['decode_ms']:>7.1f}")
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
