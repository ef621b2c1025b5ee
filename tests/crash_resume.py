#!/usr/bin/python3
"""crash_resume.py - fwrun train killed with SIGKILL, mid-checkpoint included, resumes exactly.

Usage: /usr/bin/python3 tests/crash_resume.py --fwrun PATH --plugin-path DIR [--seed N]

A tiny byte-level decoder (2 layers, width 32, AdamW, warmup + cosine, a
checkpoint after every step, an evaluation every 10) trains once without
interruption: the reference. Then one run directory goes through a chain of
20 SIGKILLs (a seeded RNG, seed printed) until training finishes, each run
after the first started with the documented resume command

    fwrun train --config=RUN/config.ini --load=RUN --run-dir=RUN

(the first command again while the directory has no checkpoint yet). 12 of
the kills wait for the k-th (1-3) checkpoint temporary ckpt-N.h5.tmp.PID of
the run to appear, then kill after a random delay of up to 0.3 ms: a kill
inside the checkpoint write. The other 8 kill at a random time from process
start to a few steps in (loading, training, evaluation, writes). A kill is
counted as inside a checkpoint write when the killed process left its
temporary file behind; at least 8 must be.

Checks, each counted as passed or failed:
  1. after every kill: every complete checkpoint (exactly ckpt-<digits>.h5)
     opens with h5py and equals the reference run's checkpoint of its step,
     tensor for tensor (weights and Adam state) and in its step, data_epoch,
     data_cursor and tokens attributes, bit for bit; `fwrun eval --load=FILE`
     loads the newest one (its fw seal included); metrics.jsonl has only
     whole lines;
  2. every resumed run exits 0 or dies by our SIGKILL, and loads the newest
     complete checkpoint, never a temporary file;
  3. each stale temporary file is removed by the next run that opens the
     run directory, with one "fwrun: removed ... (left by a writer that is
     gone)" line; decoys planted halfway are handled: temporaries of a dead
     pid (checkpoint, config.ini, adapter) are removed, one of a live pid
     (this script's) is kept and never loaded, and names that are not exactly
     ckpt-<digits>.h5 (ckpt-N.h5~, .bak, a sign, a space) are never loaded;
  4. at the end: every step 1..ITERS has its checkpoint, and every
     metrics.jsonl record (step, loss, lr, grad_norm, tokens, eval_loss; a
     step logged again after a resume included) is the reference's, as the
     exact text fwrun wrote; no temporary file is left but the live decoy.
Ends with "crash_resume: N passed, M failed"; exit 0 only without failures.
"""
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as gp  # noqa: E402  (Results, the fwrun driver, cli)

R = gp.Results()
ITERS = 40
N_KILLS = 20
N_TMP_KILLS = 12          # aimed at a checkpoint write
MIN_TMP_HITS = 8
MODEL = ["--plugins=arch/decoder,attention/mha,optim/adamw", "--tokenizer=byte",
         "--n-layer=2", "--n-head=2", "--n-embd=32", "--n-positions=32", "--vocab-size=257"]
TRAIN = ["--micro-batch-size=2", "--global-batch-size=4", "--seq-length=32",
         f"--train-iters={ITERS}", "--lr=3e-3", "--min-lr=3e-4", "--lr-decay-style=cosine",
         "--lr-warmup-iters=5", "--weight-decay=0.1", "--clip-grad=1.0", "--save-interval=1",
         "--eval-interval=10", "--eval-iters=2", "--threads=2", "--log-interval=1"]
CKPT = re.compile(r"ckpt-(\d+)\.h5$")
REMOVED = re.compile(r"^fwrun: removed (.*) \(left by a writer that is gone\)$", re.M)
LOADED = re.compile(r"^fwrun: loaded (.*) at step (\d+)$", re.M)
OPENED = "; run directory "           # printed once the run directory is open
FIELDS = ("step", "loss", "lr", "grad_norm", "loss_scale", "tokens", "eval_loss")


def write_text(path, n_words, seed):
    r = random.Random(seed)
    words = "the cat dog sat on a mat log and ran far away to see sun moon".split()
    with open(path, "w") as f:
        f.write(" ".join(r.choice(words) for _ in range(n_words)) + ".\n")


def final_ckpts(run):
    """{step: name} of the complete checkpoints in run."""
    out = {}
    for n in os.listdir(run) if os.path.isdir(run) else ():
        m = CKPT.fullmatch(n)
        if m:
            out[int(m.group(1))] = n
    return out


def temps(run):
    return sorted(n for n in os.listdir(run) if ".tmp." in n) if os.path.isdir(run) else []


def metric_lines(run):
    """metrics.jsonl as [(key, {field: exact text})]; numbers stay the text
    fwrun printed (parse_float=str), so equal means bit for bit at that text."""
    out = []
    if not os.path.exists(os.path.join(run, "metrics.jsonl")):
        return out               # the first run was killed before it opened the file
    with open(os.path.join(run, "metrics.jsonl")) as f:
        for i, line in enumerate(f, 1):
            if not line.endswith("\n"):
                raise ValueError(f"metrics.jsonl:{i}: a partial line {line!r}")
            rec = json.loads(line, parse_float=str, parse_int=str)
            if rec.get("type") == "marker":      # where a resumed run's records begin
                continue
            kind = "eval" if "eval_loss" in rec else "train"
            out.append(((int(rec["step"]), kind), {k: rec[k] for k in FIELDS if k in rec}))
    return out


def h5_state(path):
    """(tensors {name: bytes}, attrs) of a checkpoint, read with h5py."""
    with h5py.File(path, "r") as f:
        t = {k: np.array(f["tensors"][k]).tobytes() for k in f["tensors"].keys()}
        a = {k: (f.attrs[k].decode() if isinstance(f.attrs[k], bytes) else str(f.attrs[k]))
             for k in ("fw_checkpoint", "step", "data_epoch", "data_cursor", "tokens")}
    return t, a


class Chain:
    def __init__(self, fw, work, ref, ref_state, val):
        self.fw, self.work, self.ref, self.ref_state, self.val = fw, work, ref, ref_state, val
        self.run = os.path.join(work, "run")
        self.checked = {}        # name -> (inode, size, mtime) already compared
        self.pending = {}        # stale temp name -> kill index that left it
        self.reported = set()    # temps some run said it removed
        self.n_runs = 0
        self.bad = []            # failures collected during the chain

    def fail(self, what):
        self.bad.append(what)
        print(f"    ! {what}")

    def command(self, first_cmd):
        if not final_ckpts(self.run):
            return first_cmd
        return ["train", f"--config={self.run}/config.ini", f"--load={self.run}",
                f"--run-dir={self.run}"]

    def start(self, args):
        self.n_runs += 1
        self.err_path = os.path.join(self.work, f"stderr.{self.n_runs}")
        self.newest_before = max(final_ckpts(self.run) or [-1])
        err = open(self.err_path, "w")
        p = subprocess.Popen([self.fw.exe] + args, env=self.fw.env, stdout=subprocess.DEVNULL,
                             stderr=err)
        err.close()
        return p

    def after_run(self, p, killed):
        """Checks on the run that just ended (killed or not)."""
        with open(self.err_path) as f:
            log = f.read()
        if not killed and p.returncode != 0:
            self.fail(f"run {self.n_runs} exited {p.returncode} without being killed: "
                      f"{log.strip()[-500:]!r}")
            return False
        if killed and p.returncode not in (-signal.SIGKILL, 0):
            self.fail(f"run {self.n_runs} ended with {p.returncode}, not by SIGKILL: "
                      f"{log.strip()[-500:]!r}")
            return False
        for m in LOADED.finditer(log):
            want = os.path.join(self.run, f"ckpt-{self.newest_before:08d}.h5")
            if m.group(1) != want:
                self.fail(f"run {self.n_runs} loaded {m.group(1)}, not the newest complete "
                          f"checkpoint {want}")
        for path in REMOVED.findall(log):
            name = os.path.basename(path)
            if os.path.dirname(path) != self.run or name not in self.pending:
                self.fail(f"run {self.n_runs} removed {path}, not a stale temporary")
            self.reported.add(name)
            self.pending.pop(name, None)
        if killed and OPENED not in log:
            # Killed during start-up: the kill may land between a stale
            # temporary's unlink and its "removed" line, so one that is gone
            # now was removed by this run without a word. Nothing to check.
            for name in [n for n in self.pending
                         if not os.path.exists(os.path.join(self.run, n))]:
                self.pending.pop(name)
        if OPENED in log:        # it got past the cleanup: nothing stale may be left
            for name in list(self.pending):
                if os.path.exists(os.path.join(self.run, name)):
                    self.fail(f"run {self.n_runs} opened the run directory but left the stale "
                              f"{name} (from kill {self.pending[name]})")
                else:
                    self.fail(f"{name} disappeared without a 'removed' line in run "
                              f"{self.n_runs}'s log: {log.strip()[-400:]!r}")
                self.pending.pop(name)
        return True

    def check_dir(self, label):
        """Every complete checkpoint is the reference's; eval loads the newest;
        metrics.jsonl has whole lines only."""
        cks = final_ckpts(self.run)
        for step, name in sorted(cks.items()):
            path = os.path.join(self.run, name)
            st = os.stat(path)
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            if self.checked.get(name) == key:
                continue
            self.checked[name] = key
            try:
                t, a = h5_state(path)
            except Exception as e:      # noqa: BLE001  (any h5py failure is the finding)
                self.fail(f"{label}: {name} does not open with h5py: {e}")
                continue
            rt, ra = self.ref_state(step)
            if a != ra or a["step"] != str(step):
                self.fail(f"{label}: {name} attributes {a} vs the reference's {ra}")
            diff = sorted(k for k in set(t) | set(rt) if t.get(k) != rt.get(k))
            if diff:
                self.fail(f"{label}: {name} differs from the reference's in {diff[:4]}")
        if cks:
            newest = os.path.join(self.run, cks[max(cks)])
            p = self.fw("eval", MODEL[0].replace(",optim/adamw", ""), f"--load={newest}",
                        f"--valid-data={self.val}", "--micro-batch-size=2", "--seq-length=32",
                        "--eval-iters=2", "--threads=2")
            if p.returncode != 0 or '"eval_loss"' not in p.stdout:
                self.fail(f"{label}: fwrun eval --load={newest}: {gp.describe(p)}")
        try:
            metric_lines(self.run)
        except (ValueError, KeyError) as e:
            self.fail(f"{label}: {e}")


def kill_at_tmp(p, run, nth, delay, limit):
    """SIGKILLs p `delay` seconds after the nth checkpoint temporary of p
    appears in run. False if p ended (or limit passed) first."""
    suffix = f".tmp.{p.pid}"
    seen = set()
    t_end = time.monotonic() + limit
    while p.poll() is None and time.monotonic() < t_end:
        for n in os.listdir(run) if os.path.isdir(run) else ():
            if n.startswith("ckpt-") and n.endswith(suffix) and n not in seen:
                seen.add(n)
                if len(seen) >= nth:
                    t = time.perf_counter() + delay
                    while time.perf_counter() < t:
                        pass
                    p.send_signal(signal.SIGKILL)
                    return True
    return False


def kill_after(p, delay):
    try:
        p.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        return True


def dead_pid():
    """The pid of a child that has exited and been reaped (no process has it)."""
    for _ in range(20):
        c = subprocess.Popen(["true"])
        c.wait()
        try:
            os.kill(c.pid, 0)
        except ProcessLookupError:
            return c.pid
    raise RuntimeError("no dead pid found")


def plant_decoys(run):
    """Files a lax ckpt-%lld.h5 match would take (all newer than any real
    checkpoint, garbage inside), and temporaries of a dead and a live writer.
    Returns (removed, kept): the names the next run must remove, and keep."""
    dead, live = dead_pid(), os.getpid()
    rnd = os.urandom(4096)
    removed = [f"ckpt-99999999.h5.tmp.{dead}", f"config.ini.tmp.{dead}",
               f"adapter-00000003.h5.tmp.{dead}"]
    kept = [f"ckpt-99999998.h5.tmp.{live}", "ckpt-99999997.h5~", "ckpt-99999996.h5.bak",
            "ckpt-+99999995.h5", "ckpt- 99999994.h5", "ckpt-99999993.h5.h5", f"notes.tmp.{dead}"]
    for n in removed + kept:
        with open(os.path.join(run, n), "wb") as f:
            f.write(rnd)
    return removed, kept


def main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fwrun", required=True)
    ap.add_argument("--plugin-path", required=True)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--seed", type=int, default=None, help="the kill schedule's seed")
    a = ap.parse_args()
    fw = gp.Fw(os.path.abspath(a.fwrun), os.path.abspath(a.plugin_path))
    seed = a.seed if a.seed is not None else int.from_bytes(os.urandom(4), "little")
    print(f"seed {seed} (rerun with --seed={seed})")
    rng = random.Random(seed)

    def body(work):
        data, val = os.path.join(work, "train.txt"), os.path.join(work, "val.txt")
        write_text(data, 4000, 1)
        write_text(val, 400, 2)
        first = ["train", *MODEL, *TRAIN, f"--data={data}", f"--valid-data={val}"]

        print("reference (uninterrupted):")
        ref = os.path.join(work, "ref")
        t0 = time.monotonic()
        p = fw(*first, f"--run-dir={ref}", timeout=300)
        wall = time.monotonic() - t0
        if not R.check("the uninterrupted run trains", p.returncode == 0,
                       gp.describe(p) if p.returncode else ""):
            return
        ref_metrics = {}
        for key, rec in metric_lines(ref):
            ref_metrics[key] = rec
        R.check(f"the reference logs steps 1..{ITERS} once each and writes every checkpoint",
                sorted(k[0] for k in ref_metrics if k[1] == "train") == list(range(1, ITERS + 1))
                and sorted(final_ckpts(ref)) == list(range(1, ITERS + 1)))
        elapsed = float(ref_metrics[(ITERS, "train")]["elapsed_s"]) \
            if "elapsed_s" in ref_metrics[(ITERS, "train")] else wall
        startup = max(wall - elapsed, 0.05)
        step_s = max(wall - startup, 0.01) / ITERS
        print(f"  {wall:.2f} s: start-up ~{startup:.2f} s, ~{1000 * step_s:.1f} ms a step "
              f"(checkpoint included)")
        ref_cache = {}

        def ref_state(step):
            if step not in ref_cache:
                ref_cache[step] = h5_state(os.path.join(ref, f"ckpt-{step:08d}.h5"))
            return ref_cache[step]

        print(f"chain: {N_KILLS} SIGKILLs on one run directory, each followed by a resume:")
        c = Chain(fw, work, ref, ref_state, val)
        kinds = ["tmp"] * N_TMP_KILLS + ["time"] * (N_KILLS - N_TMP_KILLS)
        rng.shuffle(kinds)
        hits = config_hits = kills = 0
        decoys = None
        for i, kind in enumerate(kinds, 1):
            if i == N_KILLS // 2 + 1 and os.path.isdir(c.run):
                decoys = plant_decoys(c.run)
                for n in decoys[0]:
                    c.pending[n] = "decoy"
                print(f"  planted decoys: remove {decoys[0]}, keep {decoys[1]}")
            p = c.start(c.command(first + [f"--run-dir={c.run}"]))
            if kind == "tmp":
                nth, delay = rng.randint(1, 3), rng.uniform(0, 3e-4)
                what = f"at checkpoint temporary #{nth} + {1e6 * delay:.0f} us"
                killed = kill_at_tmp(p, c.run, nth, delay, limit=120)
            else:
                delay = rng.uniform(0, startup + 3 * step_s)
                what = f"at {delay:.3f} s"
                killed = kill_after(p, delay)
            p.wait(timeout=120)
            left = [n for n in temps(c.run) if n.endswith(f".tmp.{p.pid}")] \
                if os.path.isdir(c.run) else []
            in_ckpt = any(n.startswith("ckpt-") for n in left)
            hits += in_ckpt
            config_hits += any(n.startswith("config.ini") for n in left)
            kills += killed and p.returncode == -signal.SIGKILL
            newest = max(final_ckpts(c.run) or [0]) if os.path.isdir(c.run) else 0
            print(f"  kill {i:2d} ({kind:4s}) {what}: rc {p.returncode}, newest checkpoint "
                  f"{newest}, left {left or 'nothing'}" + ("  [inside a checkpoint write]"
                                                          if in_ckpt else ""))
            if not c.after_run(p, killed):
                break
            for n in left:
                c.pending[n] = i
            if p.returncode == 0:
                c.fail(f"training finished before kill {i}: the kill schedule is too slow")
                break
            if os.path.isdir(c.run):
                c.check_dir(f"after kill {i}")
            if decoys:
                for n in decoys[1]:
                    if not os.path.exists(os.path.join(c.run, n)):
                        c.fail(f"decoy {n} (not stale, or not fwrun's) was removed")
        else:
            p = c.start(c.command(first + [f"--run-dir={c.run}"]))
            try:
                p.wait(timeout=300)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if c.after_run(p, False):
                c.check_dir("at the end")
        R.check(f"{N_KILLS} SIGKILLs landed", kills == N_KILLS, f"{kills}")
        R.check(f"at least {MIN_TMP_HITS} kills inside a checkpoint write",
                hits >= MIN_TMP_HITS, f"{hits} of {N_KILLS}; {config_hits} inside config.ini's")
        print(f"  {hits} of {kills} kills inside a checkpoint write (a ckpt-N.h5.tmp.PID left "
              f"behind), {config_hits} inside config.ini's; {c.n_runs} runs")
        R.check("after every kill: each complete checkpoint equals the reference's, eval "
                "loads the newest, resumes load the newest, stale temporaries are removed "
                "and reported", not c.bad, "; ".join(c.bad[:3]) + (" ..." if len(c.bad) > 3
                                                                  else ""))
        if decoys:
            left = temps(c.run)
            R.check("decoys: dead writers' temporaries removed, the live writer's and "
                    "foreign names kept", not any(n in left for n in decoys[0]) and
                    all(os.path.exists(os.path.join(c.run, n)) for n in decoys[1]),
                    f"left {left}")
            for n in decoys[1]:
                os.unlink(os.path.join(c.run, n))
        else:
            R.check("decoys planted", False)
        R.check("no temporary file left", not temps(c.run), f"{temps(c.run)}")
        cks = final_ckpts(c.run)
        R.check(f"a checkpoint for every step 1..{ITERS}",
                sorted(cks) == list(range(1, ITERS + 1)), f"{sorted(cks)}")
        got = metric_lines(c.run)
        wrong = [(k, rec, ref_metrics.get(k)) for k, rec in got
                 if rec != {f: v for f, v in (ref_metrics.get(k) or {}).items() if f in FIELDS}]
        steps = {k for k, _ in got}
        R.check(f"metrics.jsonl: every record ({len(got)}, {len(got) - len(steps)} logged "
                "again after a resume) equals the reference's, bit for bit",
                not wrong, f"first: {wrong[:1]}")
        R.check("metrics.jsonl: every step and evaluation of the reference is there",
                steps == set(ref_metrics), f"missing {sorted(set(ref_metrics) - steps)[:5]}")

    return R.run("crash_resume", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
