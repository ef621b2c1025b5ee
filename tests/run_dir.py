#!/usr/bin/env python3
"""Runs and checkpoints a user cannot get wrong (issue 18, items 1, 2, 4 and 6).

With a tiny byte-level GPT (1 layer, 16 wide, 257 tokens) on a few KB of
text, each check runs fwrun as a user would:

1. Trained tensors are never dropped in silence: a LoRA run's checkpoint
   loaded by eval, generate, train or export without peft/lora is refused in
   one line naming the adapter's tensors and the plugin; --base-only drops
   them on purpose (eval then scores the base model, not the adapted one).
2. A run directory belongs to one run: another configuration, or the same
   one started afresh over its checkpoints, is refused and leaves every file
   as it was; --load=DIR resumes it and appends to metrics.jsonl after a
   marker record; a checkpoint past the resumed step is never overwritten;
   --overwrite sets the old files aside; --load=DIR refuses a directory
   holding checkpoints of two configurations. metrics.jsonl records carry a
   type (train, eval, marker).
3. Checkpoints say what they are: eval, plan and generate --load=DIR alone
   take the run's plugins and batch shape (eval scores at the trained
   sequence length); after SIGINT the printed resume hint works as printed;
   --tokenizer=byte sets the vocabulary; a missing attention plugin or a too
   small vocabulary is reported before any data is read; merge, export and
   export-adapter take run directories and merge keeps the tokenizer; token
   shards record their tokenizer and shards of another one are refused.
4. Logs and help: the progress line shows the interval's mean loss and the
   gradient norm; --version; per-command --help; integer ranges print as
   integers; one "fwrun: " prefix; did-you-mean only for typos; a warning for
   options that do nothing; compressed inputs refused by name.

Run as: run_dir.py --fwrun build/tools/fwrun --plugin-path build/plugins
"""
import glob
import gzip
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

import h5py

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as gp  # noqa: E402  (Results, the fwrun driver, cli)

R = gp.Results()
MODEL = ["--n-layer=1", "--n-head=2", "--n-embd=16", "--vocab-size=257", "--n-positions=32",
         "--tokenizer=byte"]
SIZE = ["--seq-length=32", "--micro-batch-size=4", "--threads=2"]
BASE = "--plugins=arch/decoder,attention/mha,optim/adamw"
LORA = "--plugins=arch/decoder,attention/mha,optim/adamw,peft/lora"
INFER = "--plugins=arch/decoder,attention/mha"


def write_text(path, n_bytes):
    with open("/usr/share/common-licenses/GPL-3", "rb") as f:
        text = f.read()
    with open(path, "wb") as f:
        f.write(text[:n_bytes])


def records(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def snapshot(run):
    """{name: bytes} of every file directly in run."""
    out = {}
    for n in sorted(os.listdir(run)):
        p = os.path.join(run, n)
        if os.path.isfile(p):
            with open(p, "rb") as f:
                out[n] = f.read()
    return out


def one_line_error(p, *needles):
    """Exit code not 0, and one stderr line that holds every needle."""
    lines = [l for l in p.stderr.splitlines() if all(n in l for n in needles)]
    return p.returncode != 0 and len(lines) == 1


def eval_loss(p):
    try:
        return json.loads(p.stdout)["eval_loss"]
    except (ValueError, KeyError):
        return None


def check_foreign_tensors(fw, work, data):
    print("1. tensors no loaded plugin owns")
    base = os.path.join(work, "base")
    p = fw("train", BASE, *MODEL, *SIZE, f"--data={data}", "--train-iters=3",
           f"--run-dir={base}")
    if not R.check("a base model trains", p.returncode == 0, gp.describe(p)):
        return
    lora = os.path.join(work, "lora")
    p = fw("train", LORA, f"--load={base}", "--finetune", *SIZE, f"--data={data}",
           "--train-iters=4", "--lr=3e-2", "--lora-init=gaussian", f"--run-dir={lora}")
    if not R.check("a LoRA run on it trains", p.returncode == 0, gp.describe(p)):
        return
    ckpt = os.path.join(lora, "ckpt-00000004.h5")
    ev = ["eval", f"--load={lora}", f"--valid-data={data}", *SIZE, "--eval-iters=4"]

    p = fw(*ev[:1], INFER, *ev[1:])
    R.check("eval of the LoRA checkpoint without peft/lora is refused in one line naming "
            "the tensors and the plugin",
            one_line_error(p, "lora_A.weight", "peft/lora", "--base-only") and not p.stdout,
            gp.describe(p))
    p = fw(*ev[:1], INFER, *ev[1:], "--base-only")
    base_only = eval_loss(p)
    R.check("--base-only drops them on purpose, saying so",
            p.returncode == 0 and base_only is not None and "dropping" in p.stderr
            and "lora_B.weight" in p.stderr, gp.describe(p))
    p = fw(*ev[:1], INFER + ",peft/lora", *ev[1:])
    with_lora = eval_loss(p)
    R.check("with peft/lora the adapter counts (another loss than --base-only)",
            with_lora is not None and base_only is not None and with_lora != base_only,
            f"{with_lora} vs {base_only}; {gp.describe(p)}")
    p = fw("generate", INFER, f"--load={lora}", "--prompt-tokens=84,104", "--max-new-tokens=2")
    R.check("generate without peft/lora is refused",
            one_line_error(p, "lora_A.weight", "peft/lora"), gp.describe(p))
    p = fw("train", BASE, f"--load={ckpt}", *SIZE, f"--data={data}", "--train-iters=5",
           f"--run-dir={os.path.join(work, 'lora-dropped')}")
    R.check("train from it without peft/lora is refused, and makes no run directory",
            one_line_error(p, "lora_A.weight", "peft/lora")
            and not os.path.exists(os.path.join(work, "lora-dropped")), gp.describe(p))
    out = os.path.join(work, "export")
    p = fw("export", ckpt, out)
    R.check("export of it is refused (merge first, or --base-only)",
            one_line_error(p, "lora_A.weight", "fwrun merge", "--base-only")
            and not os.path.exists(os.path.join(out, "model.safetensors")), gp.describe(p))
    p = fw("export", ckpt, out, "--base-only")
    R.check("export --base-only writes the base weights",
            p.returncode == 0 and os.path.exists(os.path.join(out, "model.safetensors")),
            gp.describe(p))
    p = fw(*ev[:1], INFER, f"--load={base}", *ev[2:])
    R.check("a checkpoint with nothing foreign loads as before", eval_loss(p) is not None,
            gp.describe(p))


def check_run_dir(fw, work, data):
    print("2. a run directory belongs to one run")
    run = os.path.join(work, "run")
    first = ["train", BASE, *MODEL, *SIZE, f"--data={data}", f"--valid-data={data}",
             "--eval-iters=2", "--eval-interval=1", f"--run-dir={run}"]
    p = fw(*first, "--train-iters=2")
    if not R.check("a run trains", p.returncode == 0, gp.describe(p)):
        return
    recs = records(run)
    R.check("metrics.jsonl records carry a type: train and eval",
            [r.get("type") for r in recs] == ["train", "eval", "train", "eval"], str(recs))
    before = snapshot(run)

    p = fw(*first, "--train-iters=2", "--n-embd=32")
    R.check("another configuration in the same directory is refused, naming what differs",
            p.returncode == 2 and one_line_error(p, "holds another run", "--n-embd", "--overwrite"),
            gp.describe(p))
    R.check("... and every file of the first run is as it was", snapshot(run) == before)
    p = fw(*first, "--train-iters=2")
    R.check("the same configuration started afresh over its checkpoints is refused",
            p.returncode == 2 and one_line_error(p, "already holds", f"--load={run}"),
            gp.describe(p))
    R.check("... and every file is as it was", snapshot(run) == before)

    p = fw(*first, "--train-iters=4", f"--load={run}")
    recs = records(run)
    marks = [r for r in recs if r.get("type") == "marker"]
    R.check("--load=DIR resumes in its own directory: a marker, then steps 3 and 4",
            p.returncode == 0 and len(marks) == 1 and marks[0].get("event") == "resume"
            and marks[0].get("step") == 2
            and [r["step"] for r in recs if r.get("type") == "train"] == [1, 2, 3, 4]
            and recs[4] == marks[0], gp.describe(p) + f"; {recs}")
    ck4 = os.path.join(run, "ckpt-00000004.h5")
    with open(ck4, "rb") as f:
        ck4_bytes = f.read()
    p = fw(*first, "--train-iters=4", f"--load={os.path.join(run, 'ckpt-00000002.h5')}")
    with open(ck4, "rb") as f:
        same = f.read() == ck4_bytes
    R.check("resuming from an older checkpoint, which would write ckpt-4 again, is refused",
            p.returncode == 2 and one_line_error(p, "never overwritten") and same,
            gp.describe(p))

    # A run written by an older fw lacks the options added since: each reads
    # as its default, so the run resumes unless this run sets it otherwise.
    ini = os.path.join(run, "config.ini")
    with open(ini) as f:
        text = f.read()
    dropped = [line for line in text.splitlines()
               if line.startswith(("hysteresis = ", "adam-beta2 = "))]
    with open(ini, "w") as f:
        f.write("\n".join(line for line in text.splitlines() if line not in dropped) + "\n")
    p = fw(*first, "--train-iters=5", "--hysteresis=3", f"--load={run}")
    R.check("an option an older run's config.ini lacks, set here to another value, is refused",
            len(dropped) == 2 and p.returncode == 2
            and one_line_error(p, "holds another run", "--hysteresis", "not set"),
            gp.describe(p))
    p = fw(*first, "--train-iters=5", f"--load={run}")
    R.check("... and at their defaults (fwrun's and a plugin's), the older run resumes",
            p.returncode == 0 and [r["step"] for r in records(run)
                                   if r.get("type") == "train"] == [1, 2, 3, 4, 5],
            gp.describe(p))

    other = os.path.join(work, "other")
    p = fw("train", BASE, *MODEL, "--n-embd=32", *SIZE, f"--data={data}", "--train-iters=1",
           f"--run-dir={other}")
    mixed = os.path.join(work, "mixed")
    os.makedirs(mixed)
    shutil.copy(os.path.join(run, "ckpt-00000002.h5"), mixed)
    shutil.copy(os.path.join(other, "ckpt-00000001.h5"), os.path.join(mixed, "ckpt-00000009.h5"))
    p = fw("eval", INFER, f"--load={mixed}", f"--valid-data={data}", *SIZE)
    R.check("--load=DIR refuses a directory holding checkpoints of two configurations",
            one_line_error(p, "different configurations", "--n-embd"), gp.describe(p))

    p = fw(*first, "--train-iters=1", "--n-embd=32", "--overwrite")
    aside = glob.glob(os.path.join(run, "replaced-*"))
    recs = records(run) if p.returncode == 0 else []
    R.check("--overwrite starts the new run, the old files set aside",
            p.returncode == 0 and len(aside) == 1
            and sorted(os.listdir(aside[0])) == ["ckpt-00000002.h5", "ckpt-00000004.h5",
                                                 "ckpt-00000005.h5", "config.ini",
                                                 "metrics.jsonl"]
            and [r.get("type") for r in recs] == ["train", "eval"], gp.describe(p))


def check_self_describing(fw, work, data):
    print("3. checkpoints say what they are; run directories work everywhere")
    run = os.path.join(work, "long")
    p = fw("train", BASE, "--n-layer=1", "--n-head=2", "--n-embd=16", "--n-positions=128",
           "--tokenizer=byte", "--seq-length=128", "--micro-batch-size=2", "--threads=2",
           f"--data={data}", "--train-iters=2", f"--run-dir={run}")
    if not R.check("a byte-level run at 128 tokens trains", p.returncode == 0, gp.describe(p)):
        return
    with open(os.path.join(run, "config.ini")) as f:
        R.check("--tokenizer=byte sets the vocabulary (257)", "vocab-size = 257\n" in f.read()
                and "--vocab-size=257" in p.stderr, gp.describe(p))
    p = fw("eval", f"--load={run}", f"--valid-data={data}", "--eval-iters=3")
    try:
        out = json.loads(p.stdout)
    except ValueError:
        out = {}
    R.check("eval --load=DIR alone takes the plugins and the sequence length from the run",
            out.get("tokens") == 3 * 2 * 128 and "--seq-length=128" in p.stderr
            and "--plugins=arch/decoder,attention/mha" in p.stderr, gp.describe(p))
    p = fw("plan", f"--load={run}")
    R.check("plan --load=DIR too", p.returncode == 0 and "micro-batch 2 x 128" in p.stdout,
            gp.describe(p))
    p = fw("generate", f"--load={run}", "--prompt-tokens=84,104", "--max-new-tokens=2")
    R.check("generate --load=DIR alone", p.returncode == 0 and p.stdout.count(",") == 1,
            gp.describe(p))
    p = fw("train", "--plugins=arch/decoder,optim/adamw", "--tokenizer=byte", f"--data={data}",
           f"--run-dir={os.path.join(work, 'noattn')}")
    R.check("a missing attention plugin is reported before any data is read",
            p.returncode == 2 and "attention" in p.stderr and "data:" not in p.stderr
            and not os.path.exists(os.path.join(work, "noattn")), gp.describe(p))
    p = fw("train", BASE, "--tokenizer=byte", "--vocab-size=100", f"--data={data}",
           f"--run-dir={os.path.join(work, 'smallv')}")
    R.check("a vocabulary smaller than the tokenizer's is refused before any data is read",
            p.returncode == 2 and "257" in p.stderr and "data:" not in p.stderr, gp.describe(p))

    # the printed resume hint works as printed
    hint = os.path.join(work, "hint")
    proc = subprocess.Popen([fw.exe, "train", BASE, *MODEL, *SIZE, f"--data={data}",
                             "--train-iters=400", f"--run-dir={hint}"], env=fw.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(hint, "metrics.jsonl")
    t0 = time.time()
    while time.time() - t0 < 60 and proc.poll() is None:
        if os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    m = re.search(r"resume with (--load=\S+)", err)
    p = fw("train", m.group(1)) if m else None
    recs = records(hint) if p and p.returncode == 0 else []
    R.check("after SIGINT, 'fwrun train' with the printed --load=DIR alone finishes the run "
            "in its directory", p is not None and p.returncode == 0
            and [r["event"] for r in recs if r["type"] == "marker"] == ["resume"]
            and os.path.exists(os.path.join(hint, "ckpt-00000400.h5")),
            (gp.describe(p) if p else err[-400:]))

    # merge, export and export-adapter take run directories; merge keeps the tokenizer
    base, lora = os.path.join(work, "base"), os.path.join(work, "lora")
    merged = os.path.join(work, "merged.h5")
    p = fw("merge", lora, lora, merged)
    ok = p.returncode == 0
    if ok:
        with h5py.File(merged, "r") as f:
            attrs = {k: f.attrs[k] for k in f.attrs}
        ok = "tokenizer" in attrs and "peft/lora" not in str(attrs.get("config", ""))
    R.check("merge RUN_DIR RUN_DIR OUT: the newest checkpoint and adapter; the tokenizer "
            "kept, peft/lora left out", ok, gp.describe(p))
    p = fw("eval", f"--load={merged}", f"--valid-data={data}", "--eval-iters=4", *SIZE)
    q = fw("eval", INFER + ",peft/lora", f"--load={lora}", f"--valid-data={data}",
           "--eval-iters=4", *SIZE)
    R.check("the merged model scores as the adapted one, needing no plugins named",
            eval_loss(p) is not None and eval_loss(q) is not None
            and abs(eval_loss(p) - eval_loss(q)) < 1e-4, f"{gp.describe(p)}; {gp.describe(q)}")
    p = subprocess.run([fw.exe, "generate", f"--load={merged}", "--prompt=The",
                        "--max-new-tokens=2"], env=fw.env, capture_output=True, timeout=60)
    R.check("the merged model generates text with its tokenizer (bytes, not ids)",
            p.returncode == 0 and len(p.stdout) >= 2
            and not re.fullmatch(rb"\d+(,\d+)*\n", p.stdout),
            f"exit {p.returncode}: {p.stderr[-300:]!r}")
    p = fw("export", base, os.path.join(work, "hf-base"))
    R.check("export RUN_DIR", p.returncode == 0, gp.describe(p))
    try:
        with open(os.path.join(work, "hf-base", "config.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        cfg = {"error": str(e)}
    # the byte tokenizer's end of text is byte value 256, the one id past the bytes
    R.check("export of a byte-tokenizer model names its own end-of-text id (256), inside its "
            "257-token vocabulary, not GPT-2's 50256",
            cfg.get("eos_token_id") == 256 and cfg.get("bos_token_id") == 256
            and cfg.get("vocab_size") == 257, f"{cfg}")
    p = fw("export-adapter", lora, os.path.join(work, "peft"))
    R.check("export-adapter RUN_DIR", p.returncode == 0 and os.path.exists(
        os.path.join(work, "peft", "adapter_model.safetensors")), gp.describe(p))

    # token shards record their tokenizer
    import tokenize_cli as tc
    vocab_dir = os.path.join(work, "bpe")
    os.makedirs(vocab_dir)
    vp, mp, _ = tc.write_vocab(vocab_dir)
    p1 = fw("tokenize", "--tokenizer=byte", f"--out={os.path.join(work, 'sb')}", data)
    p2 = fw("tokenize", "--tokenizer=gpt2", f"--vocab-file={vp}", f"--merge-file={mp}",
            f"--out={os.path.join(work, 'sg')}", data)
    sb, sg = os.path.join(work, "sb_train_000000.bin"), os.path.join(work, "sg_train_000000.bin")
    with open(sb, "rb") as f:
        hdr = struct.unpack("<7i", f.read(28)) if p1.returncode == 0 else ()
    R.check("fwrun tokenize records its tokenizer after llm.c's three header words",
            len(hdr) == 7 and hdr[0] == 20240520 and hdr[3] == 0x6e6b6f74 and hdr[4] == 257,
            f"{hdr}; {gp.describe(p1)}")
    p = fw("train", BASE, *MODEL, *SIZE, f"--data={sb}", "--train-iters=1",
           f"--run-dir={os.path.join(work, 'sb-run')}")
    R.check("byte shards train with the byte tokenizer", p.returncode == 0, gp.describe(p))
    p = fw("train", BASE, *MODEL, "--vocab-size=300", *SIZE, f"--data={sg}", "--train-iters=1",
           f"--run-dir={os.path.join(work, 'sg-run')}")
    R.check("shards of another tokenizer are refused", p2.returncode == 0
            and one_line_error(p, sg, "another tokenizer"), gp.describe(p))


def check_logs_and_help(fw, work, data):
    print("4. logs and help")
    run = os.path.join(work, "logs")
    p = fw("train", BASE, *MODEL, *SIZE, f"--data={data}", "--train-iters=4",
           "--log-interval=2", f"--run-dir={run}")
    lines = re.findall(r"^step (\d+)/4 loss (\S+) grad_norm (\S+) lr (\S+) tokens/s (\S+)",
                       p.stderr, re.M)
    ok = p.returncode == 0 and [int(l[0]) for l in lines] == [2, 4]
    if ok:
        recs = [r for r in records(run) if r["type"] == "train"]
        for (step, loss, norm, _, _) in lines:
            k = int(step)
            want_loss = (recs[k - 2]["loss"] + recs[k - 1]["loss"]) / 2
            want_norm = (recs[k - 2]["grad_norm"] + recs[k - 1]["grad_norm"]) / 2
            ok &= abs(float(loss) - want_loss) < 1e-5 and abs(float(norm) - want_norm) < 1e-3
    R.check("the log line shows the interval's mean loss and grad norm, lr, tokens/s", ok,
            f"{lines}; {gp.describe(p)}")

    p = fw("--version")
    R.check("fwrun --version", p.returncode == 0 and p.stdout.startswith("fwrun (fw) "),
            gp.describe(p))
    helps = {c: fw(c, "--help", BASE).stdout for c in ("train", "eval", "generate", "plan")}
    R.check("train --help lists train's options only",
            "--lr " in helps["train"] and "--temperature" not in helps["train"]
            and "--adam-beta1" in helps["train"], helps["train"][-300:])
    R.check("eval --help lists eval's options only",
            "--valid-data" in helps["eval"] and "--lr " not in helps["eval"]
            and "--temperature" not in helps["eval"] and "--adam-beta1" not in helps["eval"],
            helps["eval"][-300:])
    R.check("generate --help lists generate's options only",
            "--temperature" in helps["generate"] and "--threads" in helps["generate"]
            and "--lr " not in helps["generate"]
            and "--save-interval" not in helps["generate"], helps["generate"][-300:])

    p = fw("generate", INFER, "--load=x", "--prompt=a", "--max-new-tokens=0")
    R.check("integer ranges print as integers",
            "[1, 1048576]" in p.stderr and "e+" not in p.stderr, gp.describe(p))
    p = fw("train", BASE, f"--data={data}", "--micro-batch-size=0")
    R.check("one 'fwrun: ' prefix", p.returncode == 2 and "fwrun: fwrun:" not in p.stderr
            and "out of range" in p.stderr, gp.describe(p))
    p = fw("serve")
    R.check("no did-you-mean for 'serve'", p.returncode == 2 and "did you mean" not in p.stderr,
            gp.describe(p))
    p = fw("train", BASE, f"--data={data}", "--max-length=3")
    R.check("no did-you-mean for '--max-length'",
            p.returncode == 2 and "unknown option" in p.stderr and "did you mean" not in p.stderr,
            gp.describe(p))
    p = fw("trian")
    R.check("a typo still gets one", "did you mean 'train'" in p.stderr, gp.describe(p))
    p = fw("train", BASE, *MODEL, *SIZE, f"--data={data}", "--train-iters=1",
           "--temperature=0.5", "--eval-interval=2", f"--run-dir={os.path.join(work, 'warn')}")
    R.check("options that do nothing get a warning each",
            p.returncode == 0 and "--temperature does nothing in train" in p.stderr
            and "--eval-interval does nothing without --valid-data" in p.stderr, gp.describe(p))
    ini = os.path.join(work, "warn.ini")
    with open(ini, "w") as f:
        f.write("temperature = 0.5\neval-interval = 2\ntop-k = 0\nlr = 0.001\n"
                "[optim/adamw]\nadam-beta1 = 0.8\n")
    p = fw("train", BASE, *MODEL, *SIZE, f"--data={data}", "--train-iters=1", f"--config={ini}",
           f"--run-dir={os.path.join(work, 'warn-ini')}")
    warns = [l for l in p.stderr.splitlines() if "warning:" in l]
    R.check("... also when they come from --config (but not those at their default)",
            p.returncode == 0 and len(warns) == 2
            and f"--temperature (from {ini}) does nothing in train (it is for generate)" in warns[0]
            and f"--eval-interval (from {ini}) does nothing without --valid-data" in warns[1],
            gp.describe(p))
    p = fw("eval", BASE, *SIZE, f"--load={os.path.join(work, 'warn-ini')}", f"--valid-data={data}", f"--config={ini}",
           "--eval-iters=1")
    warns = [l for l in p.stderr.splitlines() if "warning:" in l]
    R.check("... and an optimizer's option from --config in eval",
            p.returncode == 0 and any(f"--adam-beta1 (from {ini}) does nothing in eval" in w
                                      for w in warns), gp.describe(p))

    gz = data + ".gz"
    with open(data, "rb") as f, gzip.open(gz, "wb") as g:
        g.write(f.read())
    hidden = os.path.join(work, "packed.txt")
    shutil.copy(gz, hidden)
    for path in (gz, hidden):
        p = fw("train", BASE, *MODEL, *SIZE, f"--data={path}", "--train-iters=1",
               f"--run-dir={os.path.join(work, 'gz')}")
        R.check(f"compressed input {os.path.basename(path)} is refused by name",
                one_line_error(p, path, "gzip-compressed"), gp.describe(p))
    p = fw("tokenize", "--tokenizer=byte", f"--out={os.path.join(work, 'tok')}", hidden)
    R.check("... also by fwrun tokenize", one_line_error(p, "gzip-compressed"), gp.describe(p))


def check_failing_step(fw, work, data):
    print("5. a plugin's step that fails half-done")
    tp = os.path.join(os.path.dirname(fw.env["FW_PLUGIN_PATH"]), "test-plugins")
    env = dict(fw.env, FW_PLUGIN_PATH=fw.env["FW_PLUGIN_PATH"] + ":" + tp)
    heavy = "--plugins=arch/decoder,attention/mha,optim/heavy"

    def run(run_dir, *extra):
        return subprocess.run([fw.exe, "train", heavy, *MODEL, *SIZE, f"--data={data}",
                               "--save-interval=1", f"--run-dir={run_dir}", *extra],
                              env=env, capture_output=True, text=True, timeout=120)
    ref, bad = os.path.join(work, "heavy-ref"), os.path.join(work, "heavy-fail")
    p = run(ref, "--train-iters=5")
    if not R.check("optim/heavy trains 5 steps", p.returncode == 0, gp.describe(p)):
        return
    p = run(bad, "--train-iters=5", "--heavy-fail-step=3")
    err = [ln for ln in p.stderr.splitlines() if "fails on purpose" in ln]
    R.check("step 3 fails: non-zero exit, the plugin's error in one line",
            p.returncode != 0 and len(err) == 1 and err[0].startswith("fwrun: ")
            and err[0].count("optim/heavy:") == 1,
            gp.describe(p))
    names = sorted(os.listdir(bad)) if os.path.isdir(bad) else []
    R.check("nothing of the half-done step is saved: checkpoints 1 and 2 only, no temporary",
            [n for n in names if n.startswith("ckpt-")] ==
            ["ckpt-00000001.h5", "ckpt-00000002.h5"] and not any(".tmp." in n for n in names),
            f"{names}")

    def tensors(path):
        with h5py.File(path, "r") as f:
            return {k: f["tensors"][k][()].tobytes() for k in f["tensors"]}
    try:
        same = tensors(os.path.join(bad, "ckpt-00000002.h5")) == \
            tensors(os.path.join(ref, "ckpt-00000002.h5"))
    except OSError as e:
        same = str(e)
    R.check("the last checkpoint is intact: equal, bit for bit, to step 2 of a run that did not fail",
            same is True, f"{same}")


def main():
    a, fw = gp.cli(__doc__)

    def body(work):
        data = os.path.join(work, "train.txt")
        write_text(data, 16000)
        check_foreign_tensors(fw, work, data)
        check_run_dir(fw, work, data)
        check_self_describing(fw, work, data)
        check_logs_and_help(fw, work, data)
        check_failing_step(fw, work, data)

    return R.run("run_dir", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
