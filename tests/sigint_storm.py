#!/usr/bin/python3
"""sigint_storm.py - fwrun train stops cleanly under a storm of SIGINT/SIGTERM.

Usage: /usr/bin/python3 tests/sigint_storm.py --fwrun PATH --plugin-path DIR

What it guards: oneDNN's f32 JIT GEMM (jit_avx512_common_gemm_f32 and
jit_avx_gemm_f32, up to 3.11.0; Debian ships 2.6) runs with rsp pointing into
a malloc'd workspace (uxlfoundation/oneDNN#4845, fixed by #4855). A signal
handler's frame is pushed at the interrupted thread's rsp, so a SIGINT handled
while that kernel runs writes the frame into the heap, and glibc aborts later
("corrupted size vs. prev_size while consolidating"). fwrun train installs no
handler: it blocks SIGINT and SIGTERM in every thread and takes them between
steps with sigtimedwait.

A byte-level decoder (1 layer, width 64, 257 tokens, micro-batch 16: the
fused LM head's products spend a good part of each step in that GEMM) on a
few KB of text. Checks, each counted as passed or failed:
  1. while the first run trains, every thread of fwrun (/proc/PID/task/*/status)
     blocks SIGINT and SIGTERM and has no handler for either;
  2. RUNS runs, each sent SIGINT (even runs) or SIGTERM (odd runs) every 0.1 ms
     or so from its first logged step until it exits: every run exits 0 (not by
     a signal: a damaged heap aborts), prints "interrupted (terminated) after
     step N; resume with --load=DIR", and its ckpt-N.h5 holds step N.
Ends with "sigint_storm: N passed, M failed"; exit 0 only without failures.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import h5py

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as gp  # noqa: E402  (Results, the fwrun driver)

R = gp.Results()
RUNS = 8
PERIOD_S = 1e-4
COMMAND = ["train", "--plugins=arch/decoder,attention/mha,optim/adamw", "--tokenizer=byte",
           "--n-layer=1", "--n-head=2", "--n-embd=64", "--n-positions=32", "--vocab-size=257",
           "--seq-length=32", "--micro-batch-size=16", "--threads=2", "--train-iters=100000"]
STOPPED = re.compile(r"fwrun: (interrupted|terminated) after step (\d+); resume with --load=(\S+)")
STOP_BITS = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))


def thread_masks(pid):
    """[(tid, SigBlk, SigCgt)] of every thread of pid."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            st = dict(line.split(":", 1) for line in f if ":" in line)
        out.append((tid, int(st["SigBlk"], 16), int(st["SigCgt"], 16)))
    return out


def wait_first_step(p, run):
    metrics = os.path.join(run, "metrics.jsonl")
    t0 = time.time()
    while time.time() - t0 < 120 and p.poll() is None:
        if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
            return True
        time.sleep(0.001)
    return False


def main():
    a, fw = gp.cli(__doc__)

    def body(work):
        data = os.path.join(work, "train.txt")
        shutil.copy("/usr/share/common-licenses/GPL-3", data)
        bad, sent_total, exits = [], 0, {}
        for k in range(RUNS):
            sig = signal.SIGINT if k % 2 == 0 else signal.SIGTERM
            run = os.path.join(work, f"run{k}")
            p = subprocess.Popen([fw.exe, *COMMAND, f"--data={data}", f"--run-dir={run}"],
                                 env=fw.env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
            if not wait_first_step(p, run):
                p.kill()
                bad.append(f"run {k}: no step logged; {p.communicate()[1][-300:]!r}")
                continue
            if k == 0:
                masks = thread_masks(p.pid)
                R.check("every thread of a training fwrun blocks SIGINT and SIGTERM and has "
                        "no handler for them", masks and all(
                            blk & STOP_BITS == STOP_BITS and not cgt & STOP_BITS
                            for _, blk, cgt in masks),
                        ", ".join(f"{t}: SigBlk {b:x} SigCgt {c:x}" for t, b, c in masks))
            sent = 0
            while p.poll() is None:
                try:
                    os.kill(p.pid, sig)
                except ProcessLookupError:
                    break
                sent += 1
                time.sleep(PERIOD_S)
            err = p.communicate(timeout=120)[1]
            sent_total += sent
            exits[p.returncode] = exits.get(p.returncode, 0) + 1
            m = STOPPED.search(err)
            word = "interrupted" if sig == signal.SIGINT else "terminated"
            if p.returncode != 0 or not m or m.group(1) != word or m.group(3) != run:
                bad.append(f"run {k} ({signal.Signals(sig).name}, {sent} sent): exit "
                           f"{p.returncode}; {err.strip()[-300:]!r}")
                continue
            step = int(m.group(2))
            ckpt = os.path.join(run, f"ckpt-{step:08d}.h5")
            try:
                with h5py.File(ckpt, "r") as f:
                    got = int(f.attrs["step"])
            except OSError as e:
                got = f"{e}"
            if got != step:
                bad.append(f"run {k}: {ckpt}: step {got}, wanted {step}")
        print(f"  {RUNS} runs, {sent_total} signals sent; exit statuses (-N: signal N) {exits}")
        R.check(f"{RUNS} runs under a SIGINT/SIGTERM storm: each exits 0 with its resume "
                "line and a checkpoint of the step it names", not bad, "; ".join(bad[:3]))

    return R.run("sigint_storm", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
