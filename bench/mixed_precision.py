#!/usr/bin/python3
"""GPT-2 124M training, B=4 T=256: fw --bf16 against fw fp32 and torch 1.13 bf16 autocast.

Three processes a round, in an order that rotates each round: fwrun train
(fp32), fwrun train --bf16, and PyTorch under torch.autocast("cpu",
dtype=torch.bfloat16) with OpenMP OpenBLAS (LD_LIBRARY_PATH=
/usr/lib/x86_64-linux-gnu/openblas-openmp, OPENBLAS_CORETYPE=SkylakeX on an
AVX-512 CPU, Haswell otherwise) and oneDNN (mkldnn) on. The model, data,
AdamW settings and step timing are bench/gpt2_train.py's (it runs each
process; ms/step is the median after --warmup steps; peak RSS is each
child's own). Prints the CPU's features (avx512_bf16, amx_bf16: whether
oneDNN has a native bf16 kernel here), the load before and after each round,
fw's matmul kernel per dtype (fwrun info), and per round and overall the
ratios fw fp32 / fw bf16 and torch bf16 / fw bf16 (above 1: fw bf16 faster).

    /usr/bin/python3 bench/mixed_precision.py [--build build] [--rounds 2] [--steps 5]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_train as gt  # noqa: E402
from machine import machine_line  # noqa: E402

TORCH = "openblas-omp-bf16"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build", help="fw build directory (Release)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2, help="steps left out of the median")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="gpt2", choices=sorted(gt.MODELS),
                    help="bench/gpt2_train.py's model table")
    ap.add_argument("--max-wait", type=int, default=0, help="seconds to wait for a quiet machine")
    ap.add_argument("--max-others", type=float, default=0.3)
    ap.add_argument("--retries", type=int, default=0, help="remeasurements of a busy run")
    ap.add_argument("--openblas-dir", default=gt.OPENBLAS_OMP_DIR,
                    help="the OpenMP OpenBLAS folder torch loads (libopenblas0-openmp's; "
                    "'apt-get download' + 'dpkg -x' give one without installing it)")
    args = ap.parse_args()
    gt.M = gt.MODELS[args.model]
    env, opts = gt.TORCH_CONFIGS[TORCH]
    gt.TORCH_CONFIGS[TORCH] = (dict(env, LD_LIBRARY_PATH=os.path.abspath(args.openblas_dir)), opts)

    fwrun = os.path.join(os.path.abspath(args.build), "tools", "fwrun")
    print(machine_line())
    info = subprocess.run([fwrun, "info"], capture_output=True, text=True).stdout
    for line in info.splitlines():
        if "bf16" in line or "f32" in line or "kernel" in line.lower():
            print("fwrun info: " + line.strip())
    print(f"GPT-2 124M, B=4 T=256, {args.steps} steps a run (median of steps "
          f"{args.warmup + 1}..{args.steps}), {args.threads} threads, {os.cpu_count()} CPUs, "
          f"{args.rounds} rounds")
    work = tempfile.mkdtemp(prefix="fw-mp-bench-")
    shard = os.path.join(work, "train.bin")
    gt.write_shard(shard, (args.steps + 1) * 4 * 256 + 1, gt.M["vocab"])
    runners = {
        "fw fp32": lambda: gt.run_fw(args, shard, work),
        "fw bf16": lambda: gt.run_fw(args, shard, work, "bf16"),
        "torch bf16": lambda: gt.run_torch(args, shard, work, TORCH),
    }
    names = list(runners)
    results = {n: [] for n in names}
    try:
        for r in range(args.rounds):
            order = names[r % 3:] + names[:r % 3]
            load0 = os.getloadavg()
            print(f"\n== round {r + 1}: {', '.join(order)}  (load average {load0[0]:.2f} "
                  f"{load0[1]:.2f} {load0[2]:.2f})")
            for n in order:
                res = gt.measured(args, n, runners[n])
                if res is None:
                    raise SystemExit(f"{n} did not run")
                results[n].append(res)
                print(f"  {n:11s} {res['ms_step']:9.1f} ms/step median ({res['ms_min']:.1f} "
                      f"fastest), peak RSS {res['peak_rss_mib']:7.1f} MiB"
                      + (f" (planned {res['planned_mib']:.1f})" if res.get("planned_mib") else "")
                      + f", loss {res['loss0']:.4f} -> {res['loss_last']:.4f}, others' load "
                      f"{res['others_cores']:.2f} cores", flush=True)
            fp, bf, tb = (results[n][-1]["ms_step"] for n in names)
            print(f"  fw fp32 / fw bf16 = {fp / bf:.3f}   torch bf16 / fw bf16 = {tb / bf:.3f}"
                  f"   (load average after {os.getloadavg()[0]:.2f})")
        med = {n: statistics.median(x["ms_step"] for x in results[n]) for n in names}
        rss = {n: max(x["peak_rss_mib"] for x in results[n]) for n in names}
        print("\n== over all rounds (median of the per-round medians)")
        for n in names:
            print(f"  {n:11s} {med[n]:9.1f} ms/step, peak RSS {rss[n]:.1f} MiB")
        print(f"  speed: fw fp32 / fw bf16 = {med['fw fp32'] / med['fw bf16']:.3f} (target "
              f">= 1.8 with native bf16), torch bf16 / fw bf16 = "
              f"{med['torch bf16'] / med['fw bf16']:.3f} (target >= 1.5)")
        print(f"  memory: fw bf16 / fw fp32 peak RSS = {rss['fw bf16'] / rss['fw fp32']:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
