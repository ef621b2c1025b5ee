#!/usr/bin/python3
"""What --bf16 and --fp16 cost on CPUs without native bf16: GPT-2 124M
training (B=4 T=256, bench/gpt2_train.py's model and settings) in fp32, bf16
and f16, each under three instruction sets emulated on this CPU:

  native    what this CPU runs (AVX512-BF16 here: oneDNN's bf16 kernel)
  avx512    ONEDNN_MAX_CPU_ISA=AVX512_CORE FW_KERNEL_ISA=avx512: AVX-512
            without BF16 (Skylake-X, Cascade Lake); oneDNN emulates bf16
  avx2      ONEDNN_MAX_CPU_ISA=AVX2 FW_KERNEL_ISA=avx2: an AVX2-only CPU;
            half operands are widened to f32 for oneDNN's f32 kernel

One fwrun process a run, --threads (1) threads; the nine runs go in an order
that rotates each round. Prints the CPU and load, fw's matmul kernel per
dtype under each setting (fwrun info), per run ms/step (wall, median after
--warmup) and CPU s/step (the process's user+system time between step marks
in metrics.jsonl, mean over the steps after --warmup), and per setting the
slowdowns bf16 / fp32 and f16 / fp32 of CPU time. CPU time, not wall time,
is the figure to compare on a shared machine.

    /usr/bin/python3 bench/half_fallback.py [--build build] [--rounds 1] [--steps 3]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_train as gt  # noqa: E402
from machine import machine_line  # noqa: E402

ISAS = {
    "native": {},
    "avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "FW_KERNEL_ISA": "avx512"},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "FW_KERNEL_ISA": "avx2"},
}
DTYPES = {"fp32": (), "bf16": ("--bf16",), "fp16": ("--fp16",)}


def cpu_s_step(res, warmup):
    """Mean CPU seconds of the steps after warm-up (step k's is the CPU time
    between the marks of steps k-1 and k)."""
    steps = [s / 1000.0 for s in res["cpu_steps_ms"][warmup:]]
    return statistics.mean(steps) if steps else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build", help="fw build directory (Release)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="steps left out (at least 1)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="gpt2", choices=sorted(gt.MODELS))
    ap.add_argument("--isa", default=",".join(ISAS), help="comma-separated subset of "
                    + ", ".join(ISAS))
    ap.add_argument("--dtype", default=",".join(DTYPES), help="comma-separated subset of "
                    + ", ".join(DTYPES))
    args = ap.parse_args()
    if args.warmup < 1 or args.steps <= args.warmup:
        raise SystemExit("half_fallback.py: need --steps > --warmup >= 1")
    isas, dtypes = args.isa.split(","), args.dtype.split(",")
    for name in isas:
        if name not in ISAS:
            raise SystemExit(f"half_fallback.py: --isa {name}: not one of {', '.join(ISAS)}")
    for name in dtypes:
        if name not in DTYPES:
            raise SystemExit(f"half_fallback.py: --dtype {name}: not one of {', '.join(DTYPES)}")
    gt.M = gt.MODELS[args.model]
    fwrun = os.path.join(os.path.abspath(args.build), "tools", "fwrun")

    print(machine_line())
    for isa in isas:
        info = subprocess.run([fwrun, "info"], capture_output=True, text=True,
                              env=dict(os.environ, **ISAS[isa])).stdout
        for line in info.splitlines():
            if line.startswith(("matmul ", "fw kernels", "oneDNN")):
                print(f"{isa:7s} fwrun info: {line.strip()}")
    m = gt.M
    print(f"{args.model}: {m['n_layer']} layers, {m['n_embd']} wide, B={m['B']} T={m['T']}; "
          f"{args.steps} steps a run (steps {args.warmup + 1}..{args.steps} counted), "
          f"{args.threads} thread(s), {args.rounds} round(s)")
    work = tempfile.mkdtemp(prefix="fw-half-fallback-")
    shard = os.path.join(work, "train.bin")
    gt.write_shard(shard, (args.steps + 1) * m["B"] * m["T"] + 1, m["vocab"])
    runs = [(isa, dt) for isa in isas for dt in dtypes]
    cpu = {r: [] for r in runs}
    for rnd in range(args.rounds):
        order = runs[rnd % len(runs):] + runs[:rnd % len(runs)]
        la = os.getloadavg()
        print(f"\n== round {rnd + 1} (load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f})")
        for isa, dt in order:
            res = gt.run_fw(args, shard, work, "f32", DTYPES[dt], ISAS[isa])
            cpu_ms = res.get("cpu_steps_ms")
            if not cpu_ms:
                raise SystemExit("half_fallback.py: metrics.jsonl has no cpu_s")
            c = cpu_s_step(res, args.warmup)
            cpu[(isa, dt)].append(c)
            print(f"{isa:7s} {dt}: {res['ms_step']:8.0f} ms/step (wall)  {c:7.2f} CPU s/step  "
                  f"loss {res['loss0']:.4f} -> {res['loss_last']:.4f}  "
                  f"(others kept {res['others_cores']:.2f} cores busy)", flush=True)
    la = os.getloadavg()
    print(f"\n== CPU s/step, median over rounds (load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f})")
    for isa in isas:
        med = {dt: statistics.median(cpu[(isa, dt)]) for dt in dtypes}
        line = "  ".join(f"{dt} {med[dt]:.2f}" for dt in dtypes)
        if "fp32" in med:
            line += "".join(f"  {dt}/fp32 {med[dt] / med['fp32']:.2f}x" for dt in dtypes
                            if dt != "fp32")
        print(f"{isa:7s} {line}")


if __name__ == "__main__":
    main()
