#!/usr/bin/python3
"""attention.py - exact attention (attention/mha) vs attention/flash vs
attention/sparse (sliding window) vs torch 1.13's plain attention:
forward+backward time and memory per sequence length.

Usage (from the repository root, after a Release build):
    /usr/bin/python3 bench/attention.py [--build build] [--T 512,1024,2048,4096,8192]
        [--B 1] [--H 12] [--D 64] [--rounds 3] [--iters 3] [--threads N] [--no-torch]
        [--sparse-window 256 (0: no sparse column)] [--impls mha,flash,sparse,torch]

Each (T, implementation, round) runs in its own process, so that its peak RSS
is its own: build/attention (bench/attention.c) for the fw plugins, this
script's --worker mode for torch. Rounds interleave the implementations (the
order rotates each round); the table keeps each one's best round. Causal,
B x T x H x D f32 q, k, v, loss = sum(y * r), times of forward and
forward+backward (median of --iters after a warm-up, inside each run), and
"cpu": the CPU time (all threads) per forward+backward, steadier than wall
time on a shared machine.

Memory columns: "plan" is the fw graph's planned activations + workspace
(fw_graph_memory: every value and gradient between q, k, v and the loss);
"rss" is the run's peak RSS (q, k, v, their gradients and the runtime
included). torch's "plan" is what autograd keeps for this graph by its
shapes (scores and probabilities, (B, H, T, T) each, plus the output).
Prints the CPU and load first (bench/machine.py): numbers from different
machines, or from a busy one, are not comparable.
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # noqa: E402


def torch_worker(a):
    import resource
    import torch
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    shape = (a.B, a.H, a.T[0], a.D)
    q, k, v = (torch.rand(shape, generator=g).mul(2).sub(1).requires_grad_(True)
               for _ in range(3))
    r = torch.rand(shape, generator=g)
    T = a.T[0]
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)

    def fwd():
        att = (q @ k.transpose(-1, -2)) / (a.D ** 0.5)
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        return ((att @ v) * r).sum()

    fw_t, all_t = [], []
    cpu0 = 0.0
    for it in range(a.iters + 1):
        if it == 1:
            cpu0 = time.process_time()
        t0 = time.perf_counter()
        loss = fwd()
        t1 = time.perf_counter()
        for x in (q, k, v):
            x.grad = None
        loss.backward()
        t2 = time.perf_counter()
        if it:
            fw_t.append(t1 - t0)
            all_t.append(t2 - t0)
    cpu = (time.process_time() - cpu0) / a.iters
    fw_t.sort()
    all_t.sort()
    plan = 4 * (2 * a.B * a.H * T * T + a.B * a.H * T * a.D)
    print(json.dumps({"plugin": "torch", "T": T, "fwd_ms": fw_t[len(fw_t) // 2] * 1e3,
                      "fwd_bwd_ms": all_t[len(all_t) // 2] * 1e3, "cpu_ms": cpu * 1e3,
                      "plan": plan,
                      "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def run(cmd, env):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--T", default="512,1024,2048,4096,8192",
                    type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--H", type=int, default=12)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--sparse-window", type=int, default=256)
    ap.add_argument("--impls", default="mha,flash,sparse,torch",
                    help="which columns, comma-separated")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return torch_worker(a)

    print(machine.machine_line())
    exe = os.path.join(a.build, "attention")
    env = dict(os.environ, FW_PLUGIN_PATH=os.path.join(a.build, "plugins"),
               OMP_NUM_THREADS=str(a.threads),
               OPENBLAS_CORETYPE=machine.openblas_coretype())
    want = a.impls.split(",")
    impls = [f"attention/{n}" for n in ("mha", "flash", "sparse") if n in want and
             (n != "sparse" or a.sparse_window > 0)] + \
        ([] if a.no_torch or "torch" not in want else ["torch"])
    print(f"B={a.B} H={a.H} D={a.D} causal, f32, {a.threads} threads, {a.rounds} rounds "
          f"(order rotates), best round kept; times in ms, memory in MiB")
    print(f"{'T':>6} {'impl':>6} {'fwd':>9} {'fwd+bwd':>9} {'cpu':>9} {'plan':>9} {'rss':>9}")
    sys.stdout.flush()
    for T in a.T:
        best = {}
        for rd in range(a.rounds):
            order = impls[rd % len(impls):] + impls[:rd % len(impls)]
            for im in order:
                if im == "torch":
                    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--T", str(T),
                           "--B", str(a.B), "--H", str(a.H), "--D", str(a.D), "--iters",
                           str(a.iters), "--threads", str(a.threads)]
                else:
                    cmd = [exe, "--plugin", im, "--T", str(T), "--B", str(a.B), "--H",
                           str(a.H), "--D", str(a.D), "--iters", str(a.iters), "--threads",
                           str(a.threads)]
                    if im == "attention/sparse":
                        cmd += ["--opt", f"sparse-window={a.sparse_window}"]
                r = run(cmd, env)
                if "error" in r:
                    best[im] = r
                    continue
                if "plan" not in r:
                    r["plan"] = r["planned_activations"] + r["workspace"]
                if im not in best or "error" in best[im] or \
                        r["fwd_bwd_ms"] < best[im]["fwd_bwd_ms"]:
                    best[im] = r
        for im in impls:
            r = best[im]
            name = im.split("/")[-1]
            if "error" in r:
                print(f"{T:>6} {name:>6}  failed: {r['error']}")
                continue
            print(f"{T:>6} {name:>6} {r['fwd_ms']:>9.1f} {r['fwd_bwd_ms']:>9.1f} {r['cpu_ms']:>9.1f} "
                  f"{r['plan'] / 2**20:>9.1f} {r['peak_rss'] / 2**20:>9.1f}")
        m = best.get("attention/mha", {})
        for other in ("flash", "sparse"):
            f = best.get("attention/" + other, {})
            if "plan" in m and "plan" in f:
                print(f"{T:>6} mha/{other}: fwd+bwd time {m['fwd_bwd_ms'] / f['fwd_bwd_ms']:.2f}, "
                      f"cpu {m['cpu_ms'] / f['cpu_ms']:.2f} (> 1: {other} faster), planned "
                      f"memory {m['plan'] / f['plan']:.1f}")
        sys.stdout.flush()
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
