#!/usr/bin/python3
"""GPT-2 124M training step: fw (fwrun train) against PyTorch, same machine, same run.

Both train GPT-2 124M (12 layers, 12 heads, 768 wide, vocab 50257, 1024
positions, tied embeddings) in fp32 on the same random llm.c token shard with
B=4, T=256, AdamW (lr 6e-4 constant, betas 0.9/0.999, eps 1e-8, weight decay
0.1 on 2-D tensors), gradient clipping at 1.0, for --steps steps. Each runs in
its own process, so each peak RSS is its own (os.wait4 rusage of that child).
ms/step is the median of the steps after --warmup warm-up steps.

Run with Debian's interpreter (it has python3-torch 1.13 and numpy):

    /usr/bin/python3 bench/gpt2_train.py [--steps 6] [--build build] [--threads 2]

See bench/README.md ("gpt2_train") for the options and the PyTorch BLAS setup.
"""
import argparse
import ctypes
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import machine_line, openblas_coretype  # noqa: E402

MAGIC, VERSION = 20240520, 1
# --model: the shape. gpt2 is GPT-2 124M at the issue's B=4, T=256; small is
# the issue's 6-layer, 384-wide, 8192-vocab model at B=8 (for iterating).
MODELS = {
    "gpt2": dict(vocab=50257, n_pos=1024, n_layer=12, n_head=12, n_embd=768, B=4, T=256),
    "small": dict(vocab=8192, n_pos=1024, n_layer=6, n_head=6, n_embd=384, B=8, T=256),
}
M = MODELS["gpt2"]      # set from --model in main() and in the torch worker


def step_flops(m):
    """Model FLOPs of one training step (forward + backward = 3x forward):
    the linears 2*BT*12*L*C^2, the head 2*BT*V*C and attention's two
    products 2*2*B*L*T*T*C, as counted for MFU (PaLM appendix B, without
    causal halving since both sides compute the full T x T scores)."""
    bt, c, l = m["B"] * m["T"], m["n_embd"], m["n_layer"]
    fwd = 2 * bt * 12 * l * c * c + 2 * bt * m["vocab"] * c + 4 * m["B"] * l * m["T"] ** 2 * c
    return 3 * fwd
OPENBLAS_OMP_DIR = "/usr/lib/x86_64-linux-gnu/openblas-openmp"
REF_BLAS_DIR = "/usr/lib/x86_64-linux-gnu/blas"

# PyTorch configurations: name -> (env additions, torch settings).
# LD_LIBRARY_PATH picks the libblas.so.3 that libtorch_cpu.so loads, whatever
# the system alternative points to. mkldnn: torch.backends.mkldnn.enabled
# (on by default); foreach: AdamW's multi-tensor path (torch 1.13's CPU default
# is the per-tensor loop).
# OPENBLAS_CORETYPE is this CPU's kernel (machine.py): SkylakeX where there is
# AVX-512, Haswell otherwise, where SkylakeX dies with an illegal instruction.
_CORE = {"OPENBLAS_CORETYPE": openblas_coretype()}
_OB = {"LD_LIBRARY_PATH": OPENBLAS_OMP_DIR, **_CORE}
TORCH_CONFIGS = {
    "openblas-omp": (_OB, {"mkldnn": True, "foreach": False}),
    "openblas-omp-nomkldnn": (_OB, {"mkldnn": False, "foreach": False}),
    "openblas-omp-foreach": (_OB, {"mkldnn": True, "foreach": True}),
    # torch.autocast("cpu", dtype=torch.bfloat16) around the forward (bench/mixed_precision.py)
    "openblas-omp-bf16": (_OB, {"mkldnn": True, "foreach": False, "bf16": True}),
    "openblas-omp-auto": ({"LD_LIBRARY_PATH": OPENBLAS_OMP_DIR},
                          {"mkldnn": True, "foreach": False}),
    "system-blas": (_CORE, {"mkldnn": True, "foreach": False}),
    "reference-blas": ({"LD_LIBRARY_PATH": REF_BLAS_DIR},          # very slow
                       {"mkldnn": True, "foreach": False}),
}
DEFAULT_TORCH_CONFIG = "openblas-omp"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data

def write_shard(path, n_tokens, vocab, seed=1234):
    """An llm.c shard of n_tokens random tokens (standard library only)."""
    import array
    import random
    rng = random.Random(seed)
    header = array.array("i", [MAGIC, VERSION, n_tokens] + [0] * 253)
    toks = array.array("H", (rng.randrange(vocab) for _ in range(n_tokens)))
    if sys.byteorder != "little":
        header.byteswap()
        toks.byteswap()
    with open(path, "wb") as f:
        header.tofile(f)
        toks.tofile(f)


def read_shard(path):
    import numpy as np
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[0] == MAGIC and header[1] == VERSION, "not an llm.c shard"
    return np.fromfile(path, dtype="<u2", offset=1024, count=int(header[2]))


# --------------------------------------------------------------------------- process running

def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_busy_s():
    """Seconds of CPU time all CPUs spent busy (or stolen by the hypervisor)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_child(cmd, env, stdout_path, stderr_path):
    """Runs cmd; returns a dict: rc, peak_rss_mib (wait4 rusage of this child
    alone), wall_s, cpu_s (the child's user+system time), others_cores (the
    average number of cores that everything else kept busy meanwhile: the
    contention a shared machine added), sampled_peak_mib (VmRSS every 0.2 s)."""
    with open(stdout_path, "w") as out, open(stderr_path, "w") as err:
        busy0, t0 = cpu_busy_s(), time.perf_counter()
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        samples, done = [], threading.Event()

        def sample():
            while not done.wait(0.2):
                samples.append(rss_kib(p.pid))
        th = threading.Thread(target=sample, daemon=True)
        th.start()
        _, status, ru = os.wait4(p.pid, 0)
        wall, busy1 = time.perf_counter() - t0, cpu_busy_s()
        done.set()
        th.join()
        p.returncode = os.waitstatus_to_exitcode(status)
    cpu = ru.ru_utime + ru.ru_stime
    return {"rc": p.returncode, "peak_rss_mib": ru.ru_maxrss / 1024.0, "wall_s": wall,
            "cpu_s": cpu, "others_cores": max(0.0, (busy1 - busy0 - cpu) / wall),
            "sampled_peak_mib": max(samples, default=0) / 1024.0}


def busy_cores(window=5.0):
    """The average number of cores busy over the next `window` seconds (this
    script sleeps meanwhile, so it is other processes' load). Unlike the load
    average it does not remember our own previous measurement."""
    b0 = cpu_busy_s()
    time.sleep(window)
    return (cpu_busy_s() - b0) / window


def wait_for_quiet(args):
    """Waits, polling every 30 s for at most --max-wait s, until other
    processes keep at most --max-others cores busy; returns the load average."""
    waited = 0
    busy = busy_cores()
    while busy > args.max_others and waited < args.max_wait:
        log(f"  other processes keep {busy:.2f} cores busy (load average "
            f"{os.getloadavg()[0]:.2f}); waiting ({waited} of at most {args.max_wait} s)")
        time.sleep(25)
        waited += 30
        busy = busy_cores()
    if busy > args.max_others:
        log(f"  still {busy:.2f} cores busy after {waited} s; measuring anyway")
    return os.getloadavg()[0]


def step_stats(step_s, warmup, cpu_s=None):
    """ms/step: the median of the steps after warm-up, and the fastest of them
    (the steadier estimate when other jobs share the machine); cpu_ms_step:
    the median CPU time (all threads) of those steps, where recorded."""
    def after(v):
        return v[warmup:] if len(v) > warmup else v[-1:]
    rest = after(step_s)
    r = {"ms_step": statistics.median(rest) * 1000.0, "ms_min": min(rest) * 1000.0,
         "step_ms": [round(x * 1000, 1) for x in step_s], "cpu_ms_step": None}
    if cpu_s:
        r["cpu_ms_step"] = statistics.median(after(cpu_s)) * 1000.0
        r["cpu_steps_ms"] = [x * 1000.0 for x in cpu_s]
    return r


def measured(args, what, fn):
    """Runs fn() (one measured process); while other processes kept more than
    --max-others cores busy during it, waits for a quiet machine and measures
    again, at most --retries times. The result records the attempts."""
    for attempt in range(args.retries + 1):
        r = fn()
        if r is None:
            return r
        r["attempts"] = attempt + 1
        if r["others_cores"] <= args.max_others:
            return r
        log(f"  {what}: other processes kept {r['others_cores']:.2f} cores busy "
            f"(> {args.max_others})" + ("; measuring again" if attempt < args.retries else
                                        "; keeping this (contended) result"))
        if attempt < args.retries:
            wait_for_quiet(args)
    return r


# --------------------------------------------------------------------------- fw

def parse_variant(text):
    """NAME=ARGS, ARGS being fwrun options and KEY=VALUE environment settings
    separated by spaces, e.g. 'unfused=--fused-head-loss=false' or
    'bt0=KMP_BLOCKTIME=0'."""
    name, _, rest = text.partition("=")
    if not name or not rest:
        raise SystemExit(f"--fw-variant {text}: expected NAME=ARGS")
    flags = [a for a in rest.split() if a.startswith("--")]
    env = dict(a.split("=", 1) for a in rest.split() if not a.startswith("--") and "=" in a)
    return name, flags, env


def run_fw(args, shard, work, dtype="f32", flags=(), extra_env=None):
    build = os.path.abspath(args.build)
    fwrun = os.path.join(build, "tools", "fwrun")
    if os.path.isdir(fwrun):          # some generators put the binary in a folder
        fwrun = os.path.join(fwrun, "fwrun")
    run_dir = os.path.join(work, "fw-run")
    shutil.rmtree(run_dir, ignore_errors=True)
    # a variant's own --plugins replaces the default one (not a second flag)
    plugins = [f for f in flags if f.startswith("--plugins=")] or \
        ["--plugins=arch/decoder,attention/mha,optim/adamw"]
    flags = [f for f in flags if not f.startswith("--plugins=")]
    cmd = [fwrun, "train", plugins[-1],
           f"--data={shard}", f"--micro-batch-size={M['B']}", f"--seq-length={M['T']}",
           f"--n-layer={M['n_layer']}", f"--n-head={M['n_head']}", f"--n-embd={M['n_embd']}",
           f"--vocab-size={M['vocab']}", f"--n-positions={M['n_pos']}",
           f"--train-iters={args.steps}", "--lr=6e-4", "--lr-warmup-iters=0",
           "--lr-decay-style=constant", "--weight-decay=0.1", "--clip-grad=1.0",
           "--no-shuffle", f"--threads={args.threads}", f"--run-dir={run_dir}",
           *(["--bf16"] if dtype == "bf16" else []), *flags]
    if not os.access(fwrun, os.X_OK):
        raise SystemExit(f"{fwrun}: not built (see bench/README.md, gpt2_train)")
    env = dict(os.environ, FW_PLUGIN_PATH=os.path.join(build, "plugins"),
               OMP_NUM_THREADS=str(args.threads), **(extra_env or {}))
    log(f"  fw: FW_PLUGIN_PATH={env['FW_PLUGIN_PATH']} OMP_NUM_THREADS={args.threads} " +
        "".join(f"{k}={v} " for k, v in (extra_env or {}).items()) +
        " ".join(cmd))
    res = run_child(cmd, env, os.path.join(work, "fw.out"), os.path.join(work, "fw.err"))
    rc = res["rc"]
    with open(os.path.join(work, "fw.err")) as f:
        err_text = f.read()
    if rc != 0:
        log(err_text[-3000:])
        raise SystemExit(f"fwrun failed with exit status {rc}")
    rows = []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "loss" in r:
                rows.append(r)
    el = [r["elapsed_s"] for r in rows]
    step_s = [el[0]] + [b - a for a, b in zip(el, el[1:])]
    cp = [r.get("cpu_s") for r in rows]
    cpu_s = [b - a for a, b in zip(cp, cp[1:])] if None not in cp and len(cp) > 1 else None
    if cpu_s:
        cpu_s = [cpu_s[0]] + cpu_s       # step 1 has no start mark; never in the median
    m = re.search(r"peak memory \(RSS\) ([0-9.]+) MiB; planned ([0-9.]+) MiB", err_text)
    n = re.search(r"fwrun: (\d+) parameters", err_text)
    res.update(step_stats(step_s, args.warmup, cpu_s))
    res.update(loss0=rows[0]["loss"], loss_last=rows[-1]["loss"],
               losses=[r["loss"] for r in rows],
               self_peak_mib=float(m.group(1)) if m else None,
               planned_mib=float(m.group(2)) if m else None,
               n_params=int(n.group(1)) if n else None)
    shutil.rmtree(run_dir, ignore_errors=True)     # the checkpoint is ~1.5 GB
    return res


# --------------------------------------------------------------------------- torch

def run_torch(args, shard, work, config):
    extra, _ = TORCH_CONFIGS[config]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), **extra)
    if "LD_LIBRARY_PATH" in extra and os.environ.get("LD_LIBRARY_PATH"):
        env["LD_LIBRARY_PATH"] = extra["LD_LIBRARY_PATH"] + ":" + os.environ["LD_LIBRARY_PATH"]
    if "LD_LIBRARY_PATH" in extra and not os.path.isdir(extra["LD_LIBRARY_PATH"]):
        print(f"torch [{config}]: {extra['LD_LIBRARY_PATH']} is missing (install it once "
              "with --setup-blas, as root); skipped", flush=True)
        return None
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker", config,
           "--model", args.model,
           "--data", shard, "--steps", str(args.steps), "--threads", str(args.threads)]
    log(f"  torch [{config}]: " + " ".join(f"{k}={v}" for k, v in extra.items()) +
        f" OMP_NUM_THREADS={args.threads}")
    out, errp = os.path.join(work, f"torch-{config}.out"), os.path.join(work, f"torch-{config}.err")
    res = run_child(cmd, env, out, errp)
    if res["rc"] != 0:
        with open(errp) as f:
            log(f.read()[-3000:])
        raise SystemExit(f"torch worker failed with exit status {res['rc']}")
    with open(out) as f:
        r = json.loads(f.read().strip().splitlines()[-1])
    r.update(res)
    r.update(step_stats(r["step_s"], args.warmup, r.get("step_cpu_s")))
    return r


def loaded_libs():
    keep = re.compile(r"blas|lapack|dnnl|mkl|gomp|libomp|libiomp")
    libs = set()
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and keep.search(os.path.basename(parts[5])):
                libs.add(os.path.realpath(parts[5]))
    return sorted(libs)


def openblas_core(libs):
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
            fn = lib.openblas_get_corename
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_char_p
        cfg = lib.openblas_get_config
        cfg.restype = ctypes.c_char_p
        return f"{fn().decode()} ({cfg().decode().strip()})"
    return None


def torch_worker(config, data, steps, threads):
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    _, opts = TORCH_CONFIGS[config]
    torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = opts["mkldnn"]
    torch.manual_seed(1234)
    B, T, C, H, L = M["B"], M["T"], M["n_embd"], M["n_head"], M["n_layer"]
    VOCAB, N_POS = M["vocab"], M["n_pos"]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(C)
            self.c_attn = nn.Linear(C, 3 * C)
            self.c_proj = nn.Linear(C, C)
            self.ln_2 = nn.LayerNorm(C)
            self.c_fc = nn.Linear(C, 4 * C)
            self.mlp_proj = nn.Linear(4 * C, C)
            self.register_buffer("mask", torch.ones(T, T, dtype=torch.bool).triu(1),
                                 persistent=False)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q = q.view(b, t, H, C // H).transpose(1, 2)
            k = k.view(b, t, H, C // H).transpose(1, 2)
            v = v.view(b, t, H, C // H).transpose(1, 2)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // H))
            att = att.masked_fill(self.mask[:t, :t], float("-inf")).softmax(dim=-1)
            y = (att @ v).transpose(1, 2).contiguous().view(b, t, C)
            x = x + self.c_proj(y)
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT2(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(VOCAB, C)
            self.wpe = nn.Embedding(N_POS, C)
            self.h = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(C)
            # the same init as fw's arch/decoder
            for name, p in self.named_parameters():
                if p.dim() == 1:
                    nn.init.zeros_(p) if name.endswith("bias") else nn.init.ones_(p)
                elif name == "wpe.weight":
                    nn.init.normal_(p, 0.0, 0.01)
                elif name.endswith("c_proj.weight") or name.endswith("mlp_proj.weight"):
                    nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * L))
                else:
                    nn.init.normal_(p, 0.0, 0.02)

        def forward(self, idx, targets):
            t = idx.shape[1]
            x = self.wte(idx) + self.wpe.weight[:t]
            for blk in self.h:
                x = blk(x)
            logits = self.ln_f(x) @ self.wte.weight.t()          # tied head
            return F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1))

    model = GPT2()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=6e-4, betas=(0.9, 0.999), eps=1e-8, foreach=opts["foreach"])
    toks = torch.from_numpy(read_shard(data).astype(np.int64))
    step_s, cpu_s, losses = [], [], []
    for k in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        chunk = toks[k * B * T: k * B * T + B * T + 1]
        x, y = chunk[:-1].view(B, T), chunk[1:].view(B, T)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=opts.get("bf16", False)):
            loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lv = loss.item()
        step_s.append(time.perf_counter() - t0)
        cpu_s.append(time.process_time() - c0)
        losses.append(lv)
        print(f"torch step {k + 1}/{steps} loss {lv:.6f} {step_s[-1] * 1000:.0f} ms",
              file=sys.stderr, flush=True)
    libs = loaded_libs()
    print(json.dumps({
        "config": config, "torch": torch.__version__, "n_params": n_params,
        "threads": torch.get_num_threads(), "mkldnn": torch.backends.mkldnn.enabled,
        "foreach": opts["foreach"], "bf16_autocast": opts.get("bf16", False),
        "step_s": step_s, "step_cpu_s": cpu_s, "loss0": losses[0], "loss_last": losses[-1], "losses": losses,
        "libs": libs, "openblas_core": openblas_core(libs),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
    }))


# --------------------------------------------------------------------------- setup / main

def setup_blas():
    """Installs Debian's OpenMP OpenBLAS. apt makes it the libblas.so.3
    alternative (auto mode); the benchmark itself selects it with
    LD_LIBRARY_PATH either way."""
    if os.geteuid() != 0:
        raise SystemExit("--setup-blas needs root (apt-get, update-alternatives)")
    if not os.path.isdir(OPENBLAS_OMP_DIR):
        subprocess.run(["apt-get", "install", "-y", "-q", "libopenblas0-openmp"], check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    want = os.path.join(OPENBLAS_OMP_DIR, "libblas.so.3")
    if os.path.realpath("/usr/lib/x86_64-linux-gnu/libblas.so.3") != os.path.realpath(want):
        subprocess.run(["update-alternatives", "--set", "libblas.so.3-x86_64-linux-gnu", want],
                       check=True)
    subprocess.run(["update-alternatives", "--display", "libblas.so.3-x86_64-linux-gnu"])


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def print_table(run, fw, th, load):
    print(f"\n== run {run}  (load average before: {load[0]:.2f}, after: {load[1]:.2f})")
    hdr = f"{'':22s} {'fw':>12s} {'torch':>12s} {'fw/torch':>9s}"
    print(hdr)
    print("-" * len(hdr))

    def row(name, a, b, spec, with_ratio=True):
        ratio = a / b if with_ratio and a is not None and b else None
        print(f"{name:22s} {fmt(a, spec):>12s} {fmt(b, spec):>12s} {fmt(ratio, '.3f'):>9s}")
    g = (lambda d, k: d.get(k) if d else None)
    row("ms/step (median)", g(fw, "ms_step"), g(th, "ms_step"), ".1f")
    row("ms/step (fastest)", g(fw, "ms_min"), g(th, "ms_min"), ".1f")
    row("CPU ms/step (median)", g(fw, "cpu_ms_step"), g(th, "cpu_ms_step"), ".1f")
    row("peak RSS MiB", g(fw, "peak_rss_mib"), g(th, "peak_rss_mib"), ".1f")
    row("first-step loss", g(fw, "loss0"), g(th, "loss0"), ".4f", False)
    row("last-step loss", g(fw, "loss_last"), g(th, "loss_last"), ".4f", False)
    row("parameters", g(fw, "n_params"), g(th, "n_params"), "d", False)
    row("others' load (cores)", g(fw, "others_cores"), g(th, "others_cores"), ".2f", False)
    row("attempts", g(fw, "attempts"), g(th, "attempts"), "d", False)
    print(f"(ln({M['vocab']}) = {math.log(M['vocab']):.4f})")
    if fw and th:
        print("per-step loss fw:    " + " ".join(f"{x:.4f}" for x in fw["losses"]))
        print("per-step loss torch: " + " ".join(f"{x:.4f}" for x in th["losses"]))
    if fw:
        print(f"fw    per-step ms: {fw['step_ms']}  wall {fw['wall_s']:.1f} s; "
              f"fwrun's own peak {fmt(fw['self_peak_mib'], '.1f')} MiB, planned "
              f"{fmt(fw['planned_mib'], '.1f')} MiB, sampled {fw['sampled_peak_mib']:.1f} MiB")
    if th:
        print(f"torch per-step ms: {th['step_ms']}  wall {th['wall_s']:.1f} s; "
              f"config {th['config']}, torch {th['torch']}, {th['threads']} threads, "
              f"mkldnn {th['mkldnn']}, AdamW foreach {th['foreach']}, sampled peak "
              f"{th['sampled_peak_mib']:.1f} MiB")
    sys.stdout.flush()


def measure_peak(args):
    """The FMA (and AVX512-BF16 dpbf16) peak of this run: bench/gemm's
    --peak-only loops on --threads threads (None when it is not built)."""
    exe = os.path.join(os.path.abspath(args.build), "gemm")
    if not os.access(exe, os.X_OK):
        log(f"  {exe}: not built (cmake --build {args.build} --target gemm); no peak")
        return None
    out = subprocess.run([exe, "--peak-only", "--threads", str(args.threads)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def summarize(dtype, rounds, peak):
    """The min over rounds of each side's median step, their ratio, and the
    whole step's model FLOP/s against the run's measured peak."""
    fws = [f for f, _ in rounds if f]
    ths = [t for _, t in rounds if t]
    fw = min((f["ms_step"] for f in fws), default=None)
    th = min((t["ms_step"] for t in ths), default=None)
    flops = step_flops(M)
    print(f"\n== summary {dtype}: min over {len(rounds)} rounds of each side's median step")
    print(f"fw    {fmt(fw, '.1f')} ms/step (round medians "
          f"{[round(f['ms_step'], 1) for f in fws]}), peak RSS min "
          f"{fmt(min((f['peak_rss_mib'] for f in fws), default=None), '.0f')} MiB")
    print(f"torch {fmt(th, '.1f')} ms/step (round medians "
          f"{[round(t['ms_step'], 1) for t in ths]}), peak RSS min "
          f"{fmt(min((t['peak_rss_mib'] for t in ths), default=None), '.0f')} MiB")
    fwc = min((f["cpu_ms_step"] for f in fws if f.get("cpu_ms_step")), default=None)
    thc = min((t["cpu_ms_step"] for t in ths if t.get("cpu_ms_step")), default=None)
    print(f"CPU time (all threads) per step, min over rounds of the medians: fw "
          f"{fmt(fwc, '.1f')} ms, torch {fmt(thc, '.1f')} ms"
          + (f", fw/torch {fwc / thc:.3f}" if fwc and thc else ""))
    if fw and th:
        print(f"step time fw/torch: {fw / th:.3f} (issue target <= 0.6)")
        rss = min(f["peak_rss_mib"] for f in fws) / min(t["peak_rss_mib"] for t in ths)
        print(f"peak RSS fw/torch: {rss:.3f} (issue target <= 0.6)")
    if peak:
        dp = dtype == "bf16" and peak["dpbf16_gflops"] > 0
        # On a shared machine the all-thread loop rarely finds every core
        # free: threads x the one-thread peak is the higher, truer bound.
        fma = max(peak["fma_gflops"], peak["threads"] * peak["fma_1t_gflops"])
        pk = peak["dpbf16_gflops"] if dp else fma
        what = "AVX512-BF16 dpbf16 (all threads)" if dp else \
            f"FMA ({peak['fma_isa']}; max of all threads {peak['fma_gflops']:.1f} and " \
            f"{peak['threads']} x one thread {peak['fma_1t_gflops']:.1f})"
        print(f"step model FLOPs {flops / 1e9:.1f} GFLOP; {what} peak of this run "
              f"{pk:.1f} GFLOP/s on {peak['threads']} threads")
        for name, ms in (("fw", fw), ("torch", th)):
            if ms:
                g = flops / (ms / 1000) / 1e9
                print(f"  {name:5s} {g:.1f} GFLOP/s = {100 * g / pk:.1f}% of peak"
                      + (" (issue target >= 80%)" if name == "fw" else ""))
        # Per CPU second against one core's peak: what the step would reach on
        # cores of its own (spin-waiting counts as CPU time, so this is low).
        pk1 = peak["dpbf16_gflops"] / peak["threads"] if dp else peak["fma_1t_gflops"]
        for name, ms in (("fw", fwc), ("torch", thc)):
            if ms:
                g = flops / (ms / 1000) / 1e9
                print(f"  {name:5s} {g:.1f} GFLOP per CPU second = {100 * g / pk1:.1f}% of one "
                      f"core's peak {pk1:.1f}")


def main():
    global M
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=MODELS, default="gpt2",
                    help="gpt2 (124M, B=4 T=256) or small (6 layers, 384 wide, vocab 8192, B=8)")
    ap.add_argument("--dtype", default="f32",
                    help="comma-separated, of f32 and bf16 (fw --bf16, torch autocast bf16)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2, help="steps left out of the median")
    ap.add_argument("--build", default="build", help="fw build directory")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3,
                    help="rounds; each runs torch and fw once, alternating which goes first")
    ap.add_argument("--fw-variant", action="append", default=[], metavar="NAME=ARGS",
                    help="also run fw with these fwrun options / KEY=VALUE environment "
                    "settings in every round (repeatable), e.g. unfused=--fused-head-loss=false")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--skip-fw", action="store_true")
    ap.add_argument("--torch-config", default=DEFAULT_TORCH_CONFIG,
                    help="comma-separated, of: " + ", ".join(TORCH_CONFIGS) +
                    "; with several, each runs and the fastest gives the ratio")
    ap.add_argument("--setup-blas", action="store_true",
                    help="as root: apt-get install libopenblas0-openmp and select it as "
                    "libblas.so.3, then exit")
    ap.add_argument("--max-wait", type=int, default=60, help="seconds to wait for a quiet machine")
    ap.add_argument("--max-others", type=float, default=0.3,
                    help="before measuring, wait while other processes keep more cores busy than "
                    "this; remeasure a process when they did during it")
    ap.add_argument("--retries", type=int, default=0, help="remeasurements per process")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--torch-worker", metavar="CONFIG", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    M = MODELS[args.model]

    if args.torch_worker:
        return torch_worker(args.torch_worker, args.data, args.steps, args.threads)
    if args.setup_blas:
        return setup_blas()
    if not args.skip_torch:
        import importlib.util
        if importlib.util.find_spec("torch") is None:
            raise SystemExit(f"{sys.executable} has no torch: run with /usr/bin/python3 "
                             "(Debian's python3-torch) or pass --skip-torch")
    configs = [c for c in args.torch_config.split(",") if c]
    for c in configs:
        if c not in TORCH_CONFIGS:
            raise SystemExit(f"unknown --torch-config {c}; one of {', '.join(TORCH_CONFIGS)}")
    variants = [parse_variant(v) for v in args.fw_variant]
    dtypes = [d for d in args.dtype.split(",") if d]
    for d in dtypes:
        if d not in ("f32", "bf16"):
            raise SystemExit(f"--dtype {d}: expected f32 or bf16")

    work = tempfile.mkdtemp(prefix="fw-gpt2-bench-")
    shard = os.path.join(work, "train.bin")
    write_shard(shard, (args.steps + 1) * M["B"] * M["T"] + 1, M["vocab"])
    print(machine_line())
    print(f"model {args.model}: {M}; {args.steps} steps (median of steps "
          f"{args.warmup + 1}..{args.steps}), {args.threads} threads, {os.cpu_count()} CPUs, "
          f"{args.runs} interleaved rounds")
    peaks = []
    try:
        for dtype in dtypes:
            rounds, var_rounds = [], {}
            for run in range(1, args.runs + 1):
                log(f"{dtype} round {run}/{args.runs}")
                before = wait_for_quiet(args)
                pk = measure_peak(args)
                if pk:
                    peaks.append(pk)
                fw = th = None

                def do_fw():
                    return None if args.skip_fw else measured(
                        args, "fw", lambda: run_fw(args, shard, work, dtype))

                def do_torch():
                    best = None
                    for c in ([] if args.skip_torch else configs):
                        c = c + "-bf16" if dtype == "bf16" and not c.endswith("-bf16") else c
                        if c not in TORCH_CONFIGS:
                            raise SystemExit(f"no bf16 torch configuration for {c}")
                        r = measured(args, f"torch [{c}]",
                                     lambda c=c: run_torch(args, shard, work, c))
                        if r:
                            log(f"  torch [{c}]: {r['ms_step']:.1f} ms/step, libs {r['libs']}, "
                                f"OpenBLAS core {r['openblas_core']}")
                        if r and (best is None or r["ms_step"] < best["ms_step"]):
                            best = r
                    return best
                if run % 2:          # torch first in odd rounds, fw first in even ones
                    th = do_torch()
                    fw = do_fw()
                else:
                    fw = do_fw()
                    th = do_torch()
                after = os.getloadavg()[0]
                print(f"\n[{dtype}] order: {'torch, fw' if run % 2 else 'fw, torch'}; peak "
                      f"{fmt(pk and pk['fma_gflops'], '.1f')} GFLOP/s FMA")
                print_table(run, fw, th, (before, after))
                rounds.append((fw, th))
                for name, flags, env in variants:
                    r = measured(args, f"fw [{name}]",
                                 lambda: run_fw(args, shard, work, dtype, flags, env))
                    var_rounds.setdefault(name, []).append(r)
                    print(f"fw [{name}]: {r['ms_step']:.1f} ms/step median, {r['ms_min']:.1f} "
                          f"fastest, CPU {fmt(r['cpu_ms_step'], '.1f')} ms/step, peak RSS {r['peak_rss_mib']:.0f} MiB, planned "
                          f"{fmt(r['planned_mib'], '.0f')} MiB, others' load "
                          f"{r['others_cores']:.2f} cores, losses "
                          + " ".join(f"{x:.4f}" for x in r["losses"]))
            best_peak = dict(peaks[0], **{k: max(p[k] for p in peaks) for k in (
                "fma_gflops", "fma_1t_gflops", "dpbf16_gflops")}) if peaks else None
            summarize(dtype, rounds, best_peak)
            base = min((f["ms_step"] for f, _ in rounds if f), default=None)
            for name, rs in var_rounds.items():
                ms = min(r["ms_step"] for r in rs)
                cpu = min((r["cpu_ms_step"] for r in rs if r.get("cpu_ms_step")), default=None)
                base_cpu = min((f["cpu_ms_step"] for f, _ in rounds
                                if f and f.get("cpu_ms_step")), default=None)
                print(f"fw [{name}]: {ms:.1f} ms/step (min of round medians "
                      f"{[round(r['ms_step'], 1) for r in rs]}), CPU {fmt(cpu, '.1f')} ms/step, "
                      f"peak RSS {min(r['peak_rss_mib'] for r in rs):.0f} MiB"
                      + (f"; / plain fw: time {ms / base:.3f}" if base else "")
                      + (f", CPU {cpu / base_cpu:.3f}" if cpu and base_cpu else ""))
            th = next((t for _, t in rounds if t), None)
            if th:
                print(f"torch BLAS: OPENBLAS_CORETYPE={th['OPENBLAS_CORETYPE']}, "
                      f"OpenBLAS core {th['openblas_core']}")
                for lib in th["libs"]:
                    print(f"  loaded: {lib}")
        if peaks:
            print("peaks measured (FMA GFLOP/s): " +
                  ", ".join(f"{p['fma_gflops']:.1f}" for p in peaks) +
                  f"; one thread alone {max(p['fma_1t_gflops'] for p in peaks):.1f}")
        la = os.getloadavg()
        print(f"load average at the end: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
