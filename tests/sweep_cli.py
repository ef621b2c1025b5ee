#!/usr/bin/python3
"""sweep_cli.py - fwrun sweep: expansion, bad files, failures, kill -9 resume, changes,
early stopping, MPI and Slurm launchers.

Usage: /usr/bin/python3 tests/sweep_cli.py --fwrun PATH --plugin-path DIR --rules DRIVER

Oracles, none of them fw's output:
  - expansion: itertools.product over the axes (the documented order), and a
    transcription of the documented draws (splitmix64, then uniform, log-uniform,
    int, choice, formatted %.6g); log-uniform's median checked against the math;
  - bad sweep files: exit 2 and one stderr line "FILE:LINE: KEY: ..." with the
    line counted here;
  - kill -9 of the sweep process mid-trial, then the same command: the results
    (sweep.jsonl metrics, every metrics.jsonl record after resume markers) equal
    an uninterrupted sweep's, exactly;
  - early stopping: median stopping and ASHA transcribed from Ray Tune's
    MedianStoppingRule / ASHAScheduler with NumPy (np.median, np.nanpercentile),
    on synthetic curves through tests/sweep_rules_driver, and on the decisions
    a real sweep recorded;
  - the progress view under script(1)'s pty: redrawn "trial K/N ID step S/M loss L ETA Ts" lines;
  - mpirun -np 2 (Debian's OpenMPI): every trial exactly once, rank r runs trials
    r, r + 2, ...; the Slurm script run by bash as an array task would run it.
Ends with "sweep_cli: N passed, M failed".
"""
import argparse
import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as gp  # noqa: E402  (Results, the fwrun driver)

R = gp.Results()
M64 = (1 << 64) - 1


# --- the documented draws (fw/runtime/sweep.h), transcribed --------------------------------

def splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def uniform(seed, index, axis):
    x = splitmix64(seed ^ ((index * 0x9E3779B97F4A7C15) & M64) ^ ((axis << 32) & M64))
    return (x >> 11) * 2.0 ** -53


def draw(dist, args, u):
    if dist == "uniform":
        return "%.6g" % (args[0] + u * (args[1] - args[0]))
    if dist == "loguniform":
        lo, hi = np.log(args[0]), np.log(args[1])
        return "%.6g" % float(np.exp(lo + u * (hi - lo)))
    if dist == "int":
        return "%d" % (int(args[0]) + int(np.floor(u * (args[1] - args[0] + 1))))
    return args[int(np.floor(u * len(args)))]


# --- the early-stopping rules, after Ray Tune (min mode negates the metric) ---------------

def median_stop(minimize, grace, min_trials, self_curve, t, done):
    """MedianStoppingRule.on_trial_result without time windows."""
    if t < grace:
        return False
    sgn = -1.0 if minimize else 1.0
    mine = [sgn * v for s, v in zip(*self_curve) if s <= t]
    if not mine:
        return False
    best = max(mine)
    means = [np.mean([sgn * v for s, v in zip(*c) if s <= t]) for c in done
             if any(s <= t for s in c[0])]
    if len(means) < min_trials or not means:
        return False
    return best < np.median(means)


def asha(minimize, min_steps, eta, max_steps, reports):
    """ASHAScheduler's _Bracket.on_result: rungs highest first, once per trial."""
    rungs = []
    m = float(min_steps)
    while m < max_steps:
        rungs.append((int(m), {}))
        m *= eta
    rungs.reverse()
    out = []
    for trial, step, value in reports:
        v = -value if minimize else value
        action = False
        for milestone, recorded in rungs:
            if step < milestone or trial in recorded:
                continue
            if recorded:
                cutoff = np.nanpercentile(list(recorded.values()), (1 - 1 / eta) * 100)
                action = bool(v < cutoff)
            recorded[trial] = v
            break
        out.append(action)
    return out


# --- helpers ------------------------------------------------------------------------------------

BASE = """[run]
plugins = arch/decoder, attention/mha, optim/adamw
tokenizer = byte
data = {work}/train.txt
valid-data = {work}/valid.txt
micro-batch-size = 2
seq-length = 32
train-iters = {iters}
eval-interval = {eval_every}
eval-iters = 2
save-interval = {save_every}
log-interval = 5

[arch/decoder]
n-layer = 1
n-head = 2
n-embd = 16
n-positions = 32
vocab-size = 257
"""


def base(work, iters=12, eval_every=4, save_every=4):
    return BASE.format(work=work, iters=iters, eval_every=eval_every, save_every=save_every)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def records(d):
    out = {}
    p = os.path.join(d, "sweep.jsonl")
    if os.path.exists(p):
        for line in open(p):
            r = json.loads(line)
            out[r["id"]] = r
    return out


def all_records(d):
    p = os.path.join(d, "sweep.jsonl")
    return [json.loads(line) for line in open(p)] if os.path.exists(p) else []


def curves(run_dir):
    """metrics.jsonl as one uninterrupted run: a marker drops what is past its step."""
    train, ev = [], []
    for line in open(os.path.join(run_dir, "metrics.jsonl")):
        r = json.loads(line)
        if r["type"] == "marker":
            train = [x for x in train if x["step"] <= r["step"]]
            ev = [x for x in ev if x["step"] <= r["step"]]
        elif r["type"] == "train":
            train.append({k: r[k] for k in ("step", "loss", "lr", "grad_norm", "tokens")})
        elif r["type"] == "eval":
            ev.append({"step": r["step"], "eval_loss": r["eval_loss"]})
    return train, ev


def listing(fw, path):
    p = fw("sweep", path, "--list")
    if p.returncode != 0:
        raise RuntimeError(f"--list failed: {p.stderr}")
    return [json.loads(line) for line in p.stdout.splitlines()]


# --- the checks ----------------------------------------------------------------------------------

def check_grid(fw, work):
    lrs, wds, link, seeds = ["1e-3", "3e-3", "1e-2"], ["0", "0.1"], [("0", "0"), ("5", "1e-4")], [7, 8]
    path = write(f"{work}/grid.ini", "[sweep]\nmetric = loss\nseeds = 7, 8\n" + base(work) +
                 "[grid]\nlr = 1e-3, 3e-3, 1e-2\nweight-decay = 0, 0.1\n"
                 "plugins.attention = attention/mha, attention/flash\n"
                 "[link warm]\nlr-warmup-iters = 0, 5\nmin-lr = 0, 1e-4\n")
    got = listing(fw, path)
    want = list(itertools.product(lrs, wds, ["attention/mha", "attention/flash"], link, seeds))
    R.check("grid: count is the product of the axes and seeds", len(got) == len(want) == 48,
            f"{len(got)} trials")
    ok = all(g["params"] == {"lr": w[0], "weight-decay": w[1], "plugins.attention": w[2],
                             "lr-warmup-iters": w[3][0], "min-lr": w[3][1]} and g["seed"] == w[4]
             and g["plugins"] == f"arch/decoder,{w[2]},optim/adamw" and g["index"] == i
             for i, (g, w) in enumerate(zip(got, want)))
    R.check("grid: trials in itertools.product order, seeds fastest, plugin axis replaces the kind",
            ok)
    R.check("grid: ids unique", len({g["id"] for g in got}) == len(got))
    # values added to an axis: the old trials keep their ids
    path2 = write(f"{work}/grid2.ini", open(path).read().replace("lr = 1e-3, 3e-3, 1e-2",
                                                                  "lr = 1e-3, 3e-3, 1e-2, 3e-2"))
    got2 = listing(fw, path2)
    R.check("grid: an added value adds 16 trials and keeps the 48 ids",
            len(got2) == 64 and {g["id"] for g in got} <= {g["id"] for g in got2})


def check_random(fw, work):
    axes = [("lr", "loguniform", [1e-4, 1e-2]), ("weight-decay", "uniform", [0.0, 0.2]),
            ("lr-warmup-iters", "int", [0, 10]), ("lr-decay-style", "choice", ["linear", "cosine"])]
    text = ("[sweep]\nmetric = loss\ntrials = 200\nseed = 3\nrepeats = 2\n" + base(work) +
            "[grid]\nmin-lr = 0, 1e-5\n[random]\nlr = loguniform(1e-4, 1e-2)\n"
            "weight-decay = uniform(0, 0.2)\nlr-warmup-iters = int(0, 10)\n"
            "lr-decay-style = choice(linear, cosine)\n")
    got = listing(fw, write(f"{work}/random.ini", text))
    R.check("random: 2 grid values x 200 draws x 2 repeats", len(got) == 800, f"{len(got)}")
    bad = 0
    for i, g in enumerate(got):
        rep, rest = i % 2, i // 2
        d, gi = rest % 200, rest // 200
        want = {"min-lr": ["0", "1e-5"][gi]}
        for a, (k, dist, args) in enumerate(axes, start=1):
            want[k] = draw(dist, args, uniform(3, d, a))
        bad += g["params"] != want or g["seed"] != 1234 + rep
    R.check("random: every draw equals the transcription (splitmix64, %.6g), seeds base + r",
            bad == 0, f"{bad} differ")
    lr = np.array([float(g["params"]["lr"]) for g in got[::2]])
    R.check("random: log-uniform(1e-4, 1e-2) has its median near 1e-3",
            abs(np.mean(lr < 1e-3) - 0.5) < 0.06 and lr.min() >= 1e-4 and lr.max() <= 1e-2,
            f"{np.mean(lr < 1e-3):.3f} below 1e-3")
    ints = {int(g["params"]["lr-warmup-iters"]) for g in got}
    R.check("random: int(0, 10) draws 0..10 inclusive", ints == set(range(11)), f"{sorted(ints)}")
    again = listing(fw, f"{work}/random.ini")
    R.check("random: the same file draws the same trials", again == got)
    other = listing(fw, write(f"{work}/random3.ini", text.replace("seed = 3", "seed = 4")))
    R.check("random: another seed draws others",
            sum(a["params"] != b["params"] for a, b in zip(got, other)) > 700)
    more = listing(fw, write(f"{work}/random4.ini", text.replace("trials = 200", "trials = 210")))
    R.check("random: more trials keep the old ones", {g["id"] for g in got} <= {g["id"] for g in more}
            and len(more) == 840)


def check_bad_files(fw, work):
    head = "[sweep]\nmetric = loss\n" + base(work)
    n = head.count("\n") + 2          # the line after "[grid]" / "[random]"
    cases = [
        ("unknown option", "[grid]\nlrr = 1e-3, 3e-3\n", n, "lrr"),
        ("unknown plugin", "[grid]\nplugins.attention = attention/mha, attention/nope\n", n,
         "plugins.attention"),
        ("plugin of another kind", "[grid]\nplugins.attention = optim/sgd\n", n,
         "plugins.attention"),
        ("empty axis", "[grid]\nlr =\n", n, "lr"),
        ("low >= high", "[random]\nlr = uniform(0.5, 0.1)\n", n, "lr"),
        ("log-uniform low <= 0", "[random]\nlr = loguniform(0, 0.1)\n", n, "lr"),
        ("unequal linked block", "[link a]\nlr = 1, 2\nmin-lr = 1\n", n + 1, "min-lr"),
    ]
    for name, tail, line, key in cases:
        path = write(f"{work}/bad.ini", head + tail)
        p = fw("sweep", path, f"--dir={work}/bad")
        lines = p.stderr.strip().splitlines()
        R.check(f"bad file: {name}: exit 2, one line naming file:line: key",
                p.returncode == 2 and len(lines) == 1 and
                lines[0].startswith(f"fwrun: {path}:{line}: {key}:"), p.stderr.strip())
    for name, text, line, key in [
            ("unknown metric", "[sweep]\nmetric = accuracy\n", 2, "metric"),
            ("trials < 1", "[sweep]\nmetric = loss\ntrials = 0\n", 3, "trials")]:
        path = write(f"{work}/bad.ini", text + base(work) + "[random]\nlr = uniform(0, 1)\n")
        p = fw("sweep", path, f"--dir={work}/bad")
        lines = p.stderr.strip().splitlines()
        R.check(f"bad file: {name}: exit 2, one line naming file:line: key",
                p.returncode == 2 and len(lines) == 1 and
                lines[0].startswith(f"fwrun: {path}:{line}: {key}:"), p.stderr.strip())
    R.check("bad file: nothing written", not os.path.exists(f"{work}/bad"))


def check_failing_trial(fw, work):
    path = write(f"{work}/fail.ini", "[sweep]\nmetric = eval_loss\n" + base(work) +
                 "[grid]\nlr-decay-style = cosine, bogus, linear\n")
    p = fw("sweep", path, f"--dir={work}/fail", "--jobs=2", timeout=300)
    recs = records(f"{work}/fail")
    by = {r["params"]["lr-decay-style"]: r for r in recs.values()}
    R.check("failing trial: exit status 10 + 1 failed", p.returncode == 11,
            f"rc {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
    R.check("failing trial: recorded failed with its error line",
            by.get("bogus", {}).get("status") == "failed" and "bogus" in by["bogus"].get("error", ""),
            by.get("bogus", {}).get("error"))
    R.check("failing trial: the others finished",
            all(by.get(v, {}).get("status") == "done" and by[v]["steps"] == 12 and
                by[v]["final"] is not None for v in ("cosine", "linear")))
    r = by.get("cosine", {})
    R.check("record: time, peak RSS, best <= final, threads 1 (2 jobs on 2 cores)",
            r.get("time_s", 0) > 0 and r.get("peak_rss_mib", 0) > 1 and
            r["best"] <= r["final"] and r.get("threads") == 1, json.dumps(r)[:300])


def pids_with(arg):
    """The processes with arg in their command line."""
    out = []
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and arg in open(f"/proc/{d}/cmdline", "rb").read().decode().split("\0"):
                out.append(int(d))
        except OSError:
            pass
    return out


def running(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def run_until(fw, args, cond, timeout=120):
    p = subprocess.Popen([fw.exe] + args, env=fw.env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while time.time() - t0 < timeout and p.poll() is None and not cond():
        time.sleep(0.02)
    return p


def check_kill_resume(fw, work):
    text = "[sweep]\nmetric = eval_loss\n" + base(work, iters=40, eval_every=10, save_every=5) + \
        "[grid]\nlr = 1e-3, 3e-3\n"
    path = write(f"{work}/resume.ini", text)
    ref = fw("sweep", path, f"--dir={work}/ref", timeout=300)
    R.check("resume: the uninterrupted sweep", ref.returncode == 0, ref.stderr[-300:])
    trials = listing(fw, path)
    second = f"{work}/cut/trials/{trials[1]['id']}"

    def mid_second():      # the second trial past its step-15 checkpoint
        try:
            return any(json.loads(l).get("step", 0) >= 17 for l in open(f"{second}/metrics.jsonl"))
        except (OSError, ValueError):
            return False
    p = run_until(fw, ["sweep", path, f"--dir={work}/cut"], mid_second)
    alive = p.poll() is None
    trial_pids = pids_with(f"--run-dir={second}")
    p.send_signal(signal.SIGKILL)
    p.communicate()
    time.sleep(0.5)
    left = [q for q in trial_pids if running(q)]
    R.check("resume: killed -9 mid-trial, and the trial died with it",
            alive and len(trial_pids) == 1 and not left, f"trial {trial_pids}, left {left}")
    before = records(f"{work}/cut")
    again = fw("sweep", path, f"--dir={work}/cut", timeout=300)
    log = open(f"{second}/train.log").read()
    R.check("resume: the rerun skips the finished trial and resumes the other from a checkpoint",
            again.returncode == 0 and len(before) == 1 and "1 finished before" in again.stderr and
            any(int(k) % 5 == 0 and 15 <= int(k) < 40
                for k in re.findall(r"^fwrun: loaded \S+ckpt-\d+\.h5 at step (\d+)$", log, re.M)),
            again.stderr[-400:] + log[-300:])
    a, b = records(f"{work}/ref"), records(f"{work}/cut")
    keys = ("status", "final", "best", "best_step", "steps", "params", "seed")
    R.check("resume: sweep.jsonl results equal the uninterrupted sweep's",
            a.keys() == b.keys() and all({k: a[i][k] for k in keys} == {k: b[i][k] for k in keys}
                                         for i in a))
    same = all(curves(f"{work}/ref/trials/{t['id']}") == curves(f"{work}/cut/trials/{t['id']}")
               for t in trials)
    R.check("resume: every step's loss, lr, grad norm and eval loss equal, bit for bit", same)
    # SIGTERM: the running trial stops after its step and is not recorded; a rerun finishes it
    first = f"{work}/term/trials/{trials[0]['id']}"

    def mid_first():
        try:
            return any(json.loads(l).get("step", 0) >= 12 for l in open(f"{first}/metrics.jsonl"))
        except (OSError, ValueError):
            return False
    p = run_until(fw, ["sweep", path, f"--dir={work}/term"], mid_first)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate()
    R.check("SIGTERM: exit 1, the running trial left for the rerun, not recorded as done",
            p.returncode == 1 and "interrupted at step" in err and not records(f"{work}/term"),
            err[-300:])
    again = fw("sweep", path, f"--dir={work}/term", timeout=300)
    c = records(f"{work}/term")
    R.check("SIGTERM: the rerun's results equal the uninterrupted sweep's",
            again.returncode == 0 and c.keys() == a.keys() and
            all({k: a[i][k] for k in keys} == {k: c[i][k] for k in keys} for i in a) and
            all(curves(f"{work}/ref/trials/{t['id']}") == curves(f"{work}/term/trials/{t['id']}")
                for t in trials))
    third = fw("sweep", path, f"--dir={work}/cut")
    R.check("resume: a third run has nothing to do", third.returncode == 0 and
            "0 to run, 2 finished before" in third.stderr and len(all_records(f"{work}/cut")) == 2,
            third.stderr.strip())
    # changes: a base key is refused naming it; an added value adds one trial
    changed = write(f"{work}/resume2.ini", text.replace("seq-length = 32", "seq-length = 16"))
    p = fw("sweep", changed, f"--dir={work}/cut")
    line = text.split("\n").index("seq-length = 32") + 1
    R.check("change: a changed base key is refused in one line naming file:line: key",
            p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and
            f"resume2.ini:{line}: seq-length:" in p.stderr, p.stderr.strip())
    removed = write(f"{work}/resume3.ini", text.replace("lr = 1e-3, 3e-3", "lr = 1e-3, 2e-3"))
    p = fw("sweep", removed, f"--dir={work}/cut")
    R.check("change: a changed axis value is refused naming the key",
            p.returncode == 2 and ": lr: value 3e-3" in p.stderr, p.stderr.strip())
    added = write(f"{work}/resume4.ini", text.replace("lr = 1e-3, 3e-3", "lr = 1e-3, 3e-3, 1e-2"))
    p = fw("sweep", added, f"--dir={work}/cut", timeout=300)
    R.check("change: an added value runs only the new trial",
            p.returncode == 0 and "1 to run, 2 finished before" in p.stderr and
            len(records(f"{work}/cut")) == 3, p.stderr.strip()[-300:])


def check_rules_synthetic(driver):
    rng = np.random.RandomState(7)
    med, ash = [], []
    for case in range(300):
        n_done = rng.randint(0, 8)
        steps = list(range(10, 110, 10))
        curve = lambda: (steps[:rng.randint(1, 11)],
                         list(np.round(3 + rng.randn() + np.cumsum(rng.randn(10) * 0.3), 6)))
        done = []
        for _ in range(n_done):
            s, v = curve()
            done.append([s, v[:len(s)]])
        s, v = curve()
        med.append({"minimize": bool(rng.rand() < 0.7), "grace": int(rng.choice([0, 20, 50])),
                    "min_trials": int(rng.randint(1, 4)), "t": int(s[-1]),
                    "self": [s, v[:len(s)]], "done": done})
    for case in range(100):
        eta = float(rng.choice([2, 3, 4]))
        reports = []
        for trial in range(rng.randint(1, 15)):
            for step in range(5, 105, 5)[:rng.randint(1, 21)]:
                reports.append([trial, step, float(np.round(rng.rand() * 5, 6))])
        if rng.rand() < 0.5:
            rng.shuffle(reports)
            reports.sort(key=lambda r: (r[0] % 3, r[1]))     # interleaved trials
        ash.append({"minimize": bool(rng.rand() < 0.7), "min_steps": int(rng.choice([1, 5, 10])),
                    "eta": eta, "max_steps": 100, "reports": reports})
    p = subprocess.run([driver], input=json.dumps({"median": med, "asha": ash}),
                       capture_output=True, text=True)
    out = json.loads(p.stdout)
    want_m = [median_stop(c["minimize"], c["grace"], c["min_trials"], c["self"], c["t"], c["done"])
              for c in med]
    want_a = [asha(c["minimize"], c["min_steps"], c["eta"], c["max_steps"],
                   [tuple(r) for r in c["reports"]]) for c in ash]
    R.check("median stopping: 300 synthetic cases equal the NumPy transcription",
            out["median"] == want_m, f"{sum(want_m)} stop")
    R.check("ASHA: 100 synthetic report sequences equal the NumPy transcription",
            out["asha"] == want_a, f"{sum(map(sum, want_a))} stops of {sum(map(len, want_a))}")


def check_rules_live(fw, work):
    """A real sweep's decisions, replayed against the transcription."""
    for rule, extra in (("median", "grace-steps = 10\nmin-trials = 2\n"),
                        ("asha", "asha-min-steps = 10\nasha-eta = 2\n")):
        text = (f"[sweep]\nmetric = eval_loss\nearly-stop = {rule}\n{extra}" +
                base(work, iters=60, eval_every=10, save_every=60) +
                "[grid]\nlr = 1e-2, 1e-5, 3e-3, 1e-6, 2e-5, 1e-3\n")
        d = f"{work}/{rule}"
        p = fw("sweep", write(f"{work}/{rule}.ini", text), f"--dir={d}", "--jobs=1", timeout=600)
        recs = all_records(d)
        stopped = [r for r in recs if r["status"] == "stopped"]
        done_curves, ok, asha_reports, bad = [], True, [], []
        for r in recs:
            _, ev = curves(f"{d}/{r['dir']}")
            last = r.get("stop_step", r["steps"])     # a stopped trial's results end there
            c = ([e["step"] for e in ev if e["step"] <= last],
                 [e["eval_loss"] for e in ev if e["step"] <= last])
            for k, t in enumerate(c[0]):
                part = (c[0][:k + 1], c[1][:k + 1])
                if rule == "median":
                    want = median_stop(True, 10, 2, part, t, done_curves)
                else:
                    want = asha(True, 10, 2.0, 60,
                                asha_reports + [(r["index"], s, v) for s, v in zip(*part)])[-1]
                if want != (r["status"] == "stopped" and t == r["stop_step"]):
                    ok = False
                    bad.append((r["index"], r["status"], t, want))
            done_curves.append(c)
            asha_reports += [(r["index"], s, v) for s, v in zip(*c)]
        R.check(f"{rule}: a live sweep stops trials exactly where the transcription says",
                p.returncode == 0 and stopped and ok and
                all(r["rule"].startswith(rule + ":") for r in stopped),
                f"{len(stopped)} of {len(recs)} stopped; rc {p.returncode}; differ: {bad}")


def check_mpi(fw, work):
    mpirun = shutil.which("mpirun")
    if not R.check("mpi: mpirun (Debian's openmpi-bin) is installed", mpirun is not None):
        return
    path = write(f"{work}/mpi.ini", "[sweep]\nmetric = loss\nrepeats = 2\n" + base(work) +
                 "[grid]\nlr = 1e-3, 3e-3, 1e-2\n")
    cmd = [mpirun, "--allow-run-as-root", "--oversubscribe", "-np", "2", "-x", "FW_PLUGIN_PATH",
           fw.exe, "sweep", path, f"--dir={work}/mpi", "--launcher=mpi", "--threads=1"]
    p = subprocess.run(cmd, env=fw.env, capture_output=True, text=True, timeout=300)
    recs = all_records(f"{work}/mpi")
    idx = sorted(r["index"] for r in recs)
    runs = [open(f"{work}/mpi/{r['dir']}/train.log").read().count("; run directory ") for r in recs]
    R.check("mpi: mpirun -np 2 runs each of the 6 trials exactly once",
            p.returncode == 0 and idx == list(range(6)) and runs == [1] * 6,
            f"rc {p.returncode} {idx} {runs} {p.stderr[-300:]}")
    R.check("mpi: rank r runs trials r, r + 2, r + 4", all(r["rank"] == r["index"] % 2 for r in recs))
    p = fw("sweep", path, f"--dir={work}/mpi2", "--launcher=mpi")
    R.check("mpi: without mpirun, exit 2 and one line", p.returncode == 2 and
            "mpirun" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr.strip())


def check_slurm(fw, work):
    path = write(f"{work}/slurm.ini", "[sweep]\nmetric = loss\n" + base(work) +
                 "[grid]\nlr = 1e-3, 3e-3, 1e-2\n")
    d = f"{work}/slurm"
    p = fw("sweep", path, f"--dir={d}", "--launcher=slurm", "--jobs=2", "--threads=1")
    script = open(f"{d}/sweep.sbatch").read() if os.path.exists(f"{d}/sweep.sbatch") else ""
    lines = script.splitlines()
    R.check("slurm: the script is an array job of 3 tasks, 2 at once, 1 cpu each",
            p.returncode == 0 and lines[:1] == ["#!/bin/bash"] and
            "#SBATCH --array=0-2%2" in lines and "#SBATCH --cpus-per-task=1" in lines and
            any(l.startswith("exec ") and "--trial=\"$SLURM_ARRAY_TASK_ID\"" in l and
                f"--dir='{os.path.realpath(d)}'" in l for l in lines), script)
    for k in (2, 0, 1, 0):            # as array tasks would, one of them twice
        env = dict(fw.env, SLURM_ARRAY_TASK_ID=str(k), SLURM_CPUS_PER_TASK="1")
        q = subprocess.run(["bash", f"{d}/sweep.sbatch"], env=env, capture_output=True, text=True,
                           timeout=300)
        R.check(f"slurm: task {k} exits 0", q.returncode == 0, q.stderr[-300:])
    recs = all_records(d)
    R.check("slurm: each trial ran once (the repeated task found its trial done)",
            sorted(r["index"] for r in recs) == [0, 1, 2], f"{[r['index'] for r in recs]}")
    q = fw("sweep", path, f"--dir={d}", "--trial=3")
    R.check("slurm: --trial past the end is exit 2", q.returncode == 2, q.stderr.strip())


def png_pixels(path):
    """A PNG (8-bit RGB or RGBA, as Chromium writes) as a numpy array, by zlib."""
    import struct
    import zlib
    data = open(path, "rb").read()
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, color = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    bpp = {2: 3, 6: 4}[color]
    raw = zlib.decompress(idat)
    out = np.zeros((h, w * bpp), dtype=np.int64)
    stride = w * bpp
    for y in range(h):
        f, line = raw[y * (stride + 1)], np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1)
        line = line.astype(np.int64)
        prev = out[y - 1] if y else np.zeros(stride, np.int64)
        cur = np.zeros(stride, np.int64)
        for x in range(stride):
            a = cur[x - bpp] if x >= bpp else 0
            b, c = prev[x], (prev[x - bpp] if x >= bpp else 0)
            if f == 0:
                p = 0
            elif f == 1:
                p = a
            elif f == 2:
                p = b
            elif f == 3:
                p = (a + b) // 2
            else:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                p = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            cur[x] = (line[x] + p) & 255
        out[y] = cur
    return out.reshape(h, w, bpp)


def check_report(fw, work):
    """fwrun report on the sweeps above: table order and aggregates against the
    records (NumPy), and report.html in headless Chromium."""
    d = f"{work}/mpi"               # 3 lr values x 2 seeds, metric loss
    if not os.path.exists(f"{d}/sweep.jsonl"):
        check_mpi(fw, work)
    p = fw("report", d)
    R.check("report: exit 0 and the files", p.returncode == 0 and all(
        os.path.exists(f"{d}/report/{f}") for f in ("results.md", "results.csv", "report.html",
                                                   "train_loss.svg", "eval_loss.svg",
                                                   "metric_vs_lr.svg")), p.stderr.strip())
    recs = all_records(d)
    rows = [line.split(",") for line in open(f"{d}/report/results.csv").read().splitlines()]
    head, rows = rows[0], rows[1:]
    want = sorted(recs, key=lambda r: r["final"])
    R.check("report: CSV sorted by the final metric, lr a column, seeds and values from the records",
            head[:4] == ["rank", "trial", "lr", "seed"] and
            [(r[2], int(r[3]), float(r[5])) for r in rows] ==
            [(w["params"]["lr"], w["seed"], float("%.6g" % w["final"])) for w in want],
            f"{head} {rows[:2]}")
    md = open(f"{d}/report/results.md").read()
    ok = True
    for lr in ("1e-3", "3e-3", "1e-2"):
        x = [r["final"] for r in recs if r["params"]["lr"] == lr]
        line = [l for l in md.splitlines() if l.startswith(f"| {lr} | 2 |")]
        ok &= len(line) == 1 and line[0] == f"| {lr} | 2 | {np.mean(x):.6g} | {np.std(x, ddof=1):.6g} |"
    R.check("report: mean and sample std per configuration equal NumPy's", ok)
    R.check("report: the best configuration named", f"Best: t{want[0]['index'] + 1} lr=" in md)
    # several runs: the options that differ become the axes
    runs = [f"{d}/{r['dir']}" for r in recs if r["index"] in (0, 2)]     # lr 1e-3, 3e-3
    p = fw("report", *runs, f"--out={work}/runs-report")
    md2 = open(f"{work}/runs-report/results.md").read() if p.returncode == 0 else ""
    R.check("report: two run directories, their differing options as columns",
            p.returncode == 0 and "| rank | trial | lr | seed |" in md2 and
            md2.count("\n| 1 |") + md2.count("\n| 2 |") == 2, p.stderr.strip())
    chromium = shutil.which("chromium")
    if not R.check("report: chromium (Debian's) is installed", chromium is not None):
        return
    html = f"file://{d}/report/report.html"
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run(flags + ["--dump-dom", html], capture_output=True, text=True, timeout=120)
    console = [l for l in dom.stderr.splitlines() if "CONSOLE" in l or "Uncaught" in l]
    R.check("report: the page loads in headless Chromium without console messages",
            dom.returncode == 0 and "</html>" in dom.stdout and not console, "\n".join(console))
    figure = dom.stdout.split('<figure id="train-loss">')[1].split("</figure>")[0] \
        if '<figure id="train-loss">' in dom.stdout else ""
    series = figure.count('<g id="gnuplot_plot_')
    R.check("report: the train-loss chart has one series per trial", series == len(recs) == 6,
            f"{series} series, {len(recs)} trials")
    shot = f"{work}/report.png"
    subprocess.run(flags + ["--window-size=1000,1400", f"--screenshot={shot}", html],
                   capture_output=True, text=True, timeout=120)
    px = png_pixels(shot) if os.path.exists(shot) else np.zeros((1, 1, 3))
    dark = np.mean(px[:, :, :3].min(axis=2) < 200)
    R.check("report: the screenshot is not blank", dark > 0.01 and len(np.unique(px)) > 10,
            f"{dark:.3f} of the pixels drawn")


def check_progress(fw, work):
    """On a terminal (script(1)'s pty): one redrawn line per running trial.
    The trials are long (100000 steps); the sweep is stopped with SIGTERM once
    both trials have shown a progress line (or after 240 s), so the check
    does not depend on how fast the machine runs them."""
    path = write(f"{work}/tty.ini", "[sweep]\nmetric = loss\n" +
                 base(work, iters=100000, eval_every=100000, save_every=100000) +
                 "[grid]\nlr = 1e-3, 3e-3\n")
    cmd = f"'{fw.exe}' sweep '{path}' --dir='{work}/tty' --jobs=2"
    pat = re.compile(r"\x1b\[K  trial ([12])/2 [0-9a-f]{16} step (\d+)/100000 loss \d+\.\d{4} "
                     r"ETA \d+s")
    p = subprocess.Popen(["script", "-qec", cmd, "/dev/null"], env=fw.env, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    os.set_blocking(p.stdout.fileno(), False)
    out, t0 = b"", time.time()
    while time.time() - t0 < 240 and p.poll() is None:
        chunk = p.stdout.read() or b""
        out += chunk
        if {m[0] for m in pat.findall(out.decode(errors="replace"))} == {"1", "2"}:
            break
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    out = out.decode(errors="replace")
    live = pat.findall(out)
    R.check("progress: on a terminal, lines 'trial K/N ID step S/N loss L ETA Ts' redrawn in place,"
            " one per running trial",
            {m[0] for m in live} == {"1", "2"} and all(0 < int(x) <= 100000 for _, x in live) and
            re.search(r"\x1b\[[12]A", out) is not None, f"{len(live)} progress lines")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fwrun", required=True)
    ap.add_argument("--plugin-path", required=True)
    ap.add_argument("--rules", required=True, help="tests/sweep_rules_driver")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--only", default="", help="run the checks whose name has this")
    a = ap.parse_args()
    fw = gp.Fw(os.path.abspath(a.fwrun), os.path.abspath(a.plugin_path))

    def body(work):
        r = random.Random(1)
        words = "the cat dog sat on a mat log and ran far away to see sun moon".split()
        write(f"{work}/train.txt", " ".join(r.choice(words) for _ in range(4000)) + ".\n")
        write(f"{work}/valid.txt", " ".join(r.choice(words) for _ in range(800)) + ".\n")
        checks = [("grid", lambda: check_grid(fw, work)), ("random", lambda: check_random(fw, work)),
                  ("bad_files", lambda: check_bad_files(fw, work)),
                  ("rules_synthetic", lambda: check_rules_synthetic(os.path.abspath(a.rules))),
                  ("failing_trial", lambda: check_failing_trial(fw, work)),
                  ("kill_resume", lambda: check_kill_resume(fw, work)),
                  ("rules_live", lambda: check_rules_live(fw, work)),
                  ("mpi", lambda: check_mpi(fw, work)), ("slurm", lambda: check_slurm(fw, work)),
                  ("report", lambda: check_report(fw, work)),
                  ("progress", lambda: check_progress(fw, work))]
        for name, check in checks:
            if a.only in name:
                check()
    return R.run("sweep_cli", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
