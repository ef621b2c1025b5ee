#!/usr/bin/python3
"""generate_text.py - fwrun generate with text prompts, against PyTorch.

Usage: /usr/bin/python3 tests/generate_text.py --fwrun PATH --plugin-path DIR

The model is gpt2_parity.py's random GPT-2 (vocabulary 500, 64 positions) in
plain PyTorch, imported with `fwrun import`; text goes through the byte
tokenizer (ids 0..255 are the bytes, 256 is <|endoftext|>), so the torch
reference decodes ids to bytes directly. Only ids below 257 (the tokenizer's
vocabulary) may be sampled: the reference takes the argmax over those.

Checks, each counted as passed or failed:
  1. greedy text (ASCII and multi-byte UTF-8 prompt, --prompt and
     --prompt-file) equals torch greedy decoding, bytes for bytes; EOS stops
     and is not printed;
  2. --repetition-penalty=1.3 equals torch greedy with Hugging Face's
     RepetitionPenaltyLogitsProcessor rule, and differs from plain greedy;
  3. --stop: one string, a JSON array of two, strings spanning tokens, one
     that never occurs: the output is the torch continuation cut before the
     first match;
  4. sampling (temperature, top-k, top-p) is reproducible with one seed and
     differs with another;
  5. streaming: with --interactive and stdin held open, each completion can be
     read before the process ends, and /proc/PID/io counts at least one write
     per generated token;
  6. --interactive: three lines (one empty) give the two single-prompt outputs;
  7. a checkpoint from `fwrun train --tokenizer=byte` generates text with no
     --tokenizer (the stored one), equal to torch on its weights;
  8. bad inputs fail cleanly: exit code != 0, one stderr line "fwrun: ...".
Ends with "generate_text: N passed, M failed"; exit code 0 only if none failed.
"""
import json
import os
import re
import select
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_parity as gp  # noqa: E402

N_TOK = 257            # byte tokenizer: 256 bytes + <|endoftext|>
EOS = 256
PLUGINS = "--plugins=arch/decoder,attention/mha"
MARGIN = 1e-4          # smallest top-2 logit gap for greedy ids to be comparable

R = gp.Results()


class Fw:
    """fwrun with bytes in and out (generated text need not be UTF-8)."""

    def __init__(self, exe, plugin_path):
        self.exe = exe
        self.env = dict(os.environ, FW_PLUGIN_PATH=plugin_path, OMP_NUM_THREADS="2")

    def argv(self, args):
        return [self.exe] + [a if isinstance(a, bytes) else str(a) for a in args]

    def __call__(self, *args, stdin=None, timeout=120):
        return subprocess.run(self.argv(args), env=self.env, input=stdin,
                              capture_output=True, timeout=timeout)


def describe(p):
    return (f"exit {p.returncode}; stderr: {p.stderr.decode(errors='replace').strip()[-400:]!r}; "
            f"stdout: {p.stdout[-200:]!r}")


def torch_greedy(W, prompt, n_new, penalty=1.0):
    """Greedy bytes after prompt (bytes): argmax over the tokenizer's ids,
    stopping at EOS. With penalty != 1, Hugging Face's rule on every id of
    the context so far: score < 0 ? score * p : score / p. Returns (bytes,
    whether EOS ended it, the smallest top-2 margin)."""
    ids, out, margins = list(prompt), [], []
    with torch.no_grad():
        for _ in range(n_new):
            scores = gp.forward(W, torch.tensor([ids]))[0, -1, :N_TOK].clone()
            if penalty != 1.0:
                ctx = torch.tensor(sorted(set(ids)))
                s = torch.gather(scores, 0, ctx)
                s = torch.where(s < 0, s * penalty, s / penalty)
                scores.scatter_(0, ctx, s)
            top = torch.topk(scores, 2)
            margins.append(float(top.values[0] - top.values[1]))
            t = int(top.indices[0])
            if t == EOS:
                return bytes(out), True, min(margins)
            ids.append(t)
            out.append(t)
    return bytes(out), False, min(margins)


def gen(fw, h5, *extra, tokenizer=True, stdin=None):
    args = ["generate", PLUGINS, f"--load={h5}", "--threads=2"]
    if tokenizer:
        args.append("--tokenizer=byte")
    return fw(*(args + list(extra)), stdin=stdin)


def text_of(p):
    """The continuation fwrun printed, without its final newline (None if not there)."""
    return p.stdout[:-1] if p.returncode == 0 and p.stdout.endswith(b"\n") else None


def import_model(fw, work, name, W):
    d = os.path.join(work, "hf_" + name)
    gp.write_hf_dir(d, W, "F32")
    h5 = os.path.join(work, name + ".h5")
    p = fw("import", d, h5)
    return h5 if R.check(f"import of the {name} model", p.returncode == 0, describe(p)) else None


def text_weights():
    """gpt2_parity's random GPT-2, its output embedding rows shrunk except
    for printable ASCII, so that greedy text is mostly printable (stop
    strings fit on a command line and in JSON). Rows 257..499 keep their
    size: an fwrun that sampled past the tokenizer's vocabulary would show."""
    W = gp.random_weights(99, linear_std=0.2)
    keep = torch.zeros(gp.VOCAB, dtype=torch.bool)
    keep[32:127] = True
    keep[N_TOK:] = True
    W["wte.weight"][~keep] *= 0.25
    return W


# --- the checks -------------------------------------------------------------------------

PROMPT = "Grüße, naïve café: 日本"     # ASCII and 2- and 3-byte UTF-8
N_NEW = 24


def check_greedy(fw, work, W, h5):
    print("greedy:")
    pb = PROMPT.encode()
    ref, eos, margin = torch_greedy(W, pb, N_NEW)
    R.check("the torch reference is usable (no EOS, >= 8 distinct bytes, margin >= 1e-4)",
            not eos and len(set(ref)) >= 8 and margin >= MARGIN, f"{ref!r}, margin {margin:.2e}")
    with torch.no_grad():
        ids = list(pb + ref)
        logits = gp.forward(W, torch.tensor([ids]))[0, len(pb) - 1:-1]
        past = int((logits.argmax(-1) >= N_TOK).sum())
    R.check("the tokenizer's vocabulary limit matters (the argmax over all 500 ids is past "
            "257 at some steps)", past > 0, f"{past} of {len(ref)} steps")
    p = gen(fw, h5, f"--prompt={PROMPT}", f"--max-new-tokens={N_NEW}", "--temperature=0")
    R.check("--prompt greedy text equals torch (bytes)", text_of(p) == ref,
            f"fw {text_of(p)!r} torch {ref!r}; {describe(p)}")
    f = os.path.join(work, "prompt.txt")
    with open(f, "wb") as fh:
        fh.write(pb)
    p = gen(fw, h5, f"--prompt-file={f}", f"--max-new-tokens={N_NEW}", "--temperature=0")
    R.check("--prompt-file greedy text equals torch", text_of(p) == ref,
            f"fw {text_of(p)!r} torch {ref!r}; {describe(p)}")
    return ref


def check_eos(fw, work):
    """The unshrunk model often picks EOS: the text stops there, without it."""
    print("EOS:")
    W = gp.random_weights(99, linear_std=0.2)
    h5 = import_model(fw, work, "eos", W)
    if not h5:
        return
    for prompt in ("Hello", "abc", "The quick brown fox", "0123", "xyzzy", "q"):
        ref, eos, margin = torch_greedy(W, prompt.encode(), 30)
        if eos and len(ref) >= 2 and margin >= MARGIN:
            break
    else:
        R.check("a prompt whose torch continuation ends with EOS", False)
        return
    p = gen(fw, h5, f"--prompt={prompt}", "--max-new-tokens=30", "--temperature=0")
    R.check(f"EOS stops generation and is not printed ({len(ref)} bytes, then EOS)",
            text_of(p) == ref, f"fw {text_of(p)!r} torch {ref!r}; {describe(p)}")


def check_penalty(fw, W, h5):
    print("repetition penalty:")
    prompt = "aaaa bbbb aaaa bbbb"
    plain, _, m0 = torch_greedy(W, prompt.encode(), N_NEW)
    ref, _, margin = torch_greedy(W, prompt.encode(), N_NEW, penalty=1.3)
    R.check("torch: the penalty changes the greedy text (the check is not vacuous)",
            ref != plain and margin >= MARGIN and m0 >= MARGIN,
            f"plain {plain!r} penalised {ref!r} margins {m0:.2e} {margin:.2e}")
    p = gen(fw, h5, f"--prompt={prompt}", f"--max-new-tokens={N_NEW}", "--temperature=0",
            "--repetition-penalty=1.3")
    R.check("--repetition-penalty=1.3 greedy equals torch with HF's rule", text_of(p) == ref,
            f"fw {text_of(p)!r} torch {ref!r}; {describe(p)}")
    p = gen(fw, h5, f"--prompt={prompt}", f"--max-new-tokens={N_NEW}", "--temperature=0",
            "--repetition-penalty=1")
    R.check("--repetition-penalty=1 is plain greedy", text_of(p) == plain,
            f"fw {text_of(p)!r} torch {plain!r}")


def cut(text, stops):
    """text up to the first stop string to complete, cut at the earliest match."""
    ends = [text.find(s) + len(s) for s in stops if s in text]
    if not ends:
        return text
    head = text[:min(ends)]
    return text[:min(head.find(s) for s in stops if s in head)]


def check_stop(fw, h5, ref):
    print("stop strings:")
    # a 3-byte stop string whose first byte also occurs earlier (a false start
    # that is held back, then printed), and printable, to fit argv and JSON
    k = next((i for i in range(4, len(ref) - 3)
              if ref[i] in ref[:i] and all(32 <= b < 127 for b in ref[i:i + 3])), None)
    j = next((i for i in range(2, (k or 0) - 1)
              if all(32 <= b < 127 for b in ref[i:i + 2]) and ref[i:i + 2] not in ref[:i]),
             None)
    if not R.check("the torch continuation has printable stop-string material",
                   k is not None and j is not None, f"{ref!r}"):
        return
    one = ref[k:k + 3]
    cases = [
        ("a 3-byte stop string (spans 3 tokens)", one.decode(), [one]),
        ("a stop string that never occurs", "\x01never", [b"\x01never"]),
        ("a JSON array of two (the earlier one wins)",
         json.dumps([one.decode(), ref[j:j + 2].decode()]), [one, ref[j:j + 2]]),
        ("a JSON array of two (one never occurs)",
         json.dumps(["zzzzzzqq", one.decode()]), [b"zzzzzzqq", one]),
    ]
    for name, arg, stops in cases:
        want = cut(ref, stops)
        p = gen(fw, h5, f"--prompt={PROMPT}", f"--max-new-tokens={N_NEW}", "--temperature=0",
                f"--stop={arg}")
        R.check(f"--stop: {name}: {arg!r}", text_of(p) == want,
                f"fw {text_of(p)!r} want {want!r}; {describe(p)}")
    R.check("the stop cases cut the text (the checks are not vacuous)",
            len(cut(ref, cases[2][2])) < len(cut(ref, cases[0][2])) < len(ref))


def check_sampling(fw, h5):
    print("sampling:")
    args = [f"--prompt={PROMPT}", "--max-new-tokens=30", "--temperature=0.9", "--top-k=40",
            "--top-p=0.95", "--repetition-penalty=1.1"]
    a, b, c = (text_of(gen(fw, h5, *args, f"--seed={s}")) for s in (7, 7, 8))
    R.check("sampling: the same seed gives the same text", a is not None and a == b,
            f"{a!r} vs {b!r}")
    R.check("sampling: another seed gives another text", a is not None and a != c,
            f"{a!r} vs {c!r}")


def read_exactly(proc, n, timeout=60):
    """n bytes of proc's stdout, or what came before timeout / EOF."""
    fd, got, end = proc.stdout.fileno(), b"", time.time() + timeout
    while len(got) < n:
        ready, _, _ = select.select([fd], [], [], max(0.0, end - time.time()))
        if not ready:
            break
        chunk = os.read(fd, n - len(got))
        if not chunk:
            break
        got += chunk
    return got


def write_calls(pid):
    try:
        with open(f"/proc/{pid}/io") as f:
            return int(re.search(r"^syscw:\s*(\d+)", f.read(), re.M).group(1))
    except (OSError, AttributeError):
        return None


def check_interactive(fw, h5):
    print("interactive and streaming:")
    prompts = ["Hello there", "Grüße 日本"]
    args = ["--max-new-tokens=20", "--temperature=0.8", "--top-k=50", "--seed=5"]
    single = [gen(fw, h5, f"--prompt={q}", *args) for q in prompts]
    if not R.check("single-prompt runs", all(text_of(p) is not None for p in single),
                   "; ".join(describe(p) for p in single)):
        return
    feed = (prompts[0] + "\n\n" + prompts[1] + "\n").encode()
    p = gen(fw, h5, "--interactive", *args, stdin=feed)
    want = b"".join(q.stdout for q in single)
    R.check("--interactive: 3 lines (one empty) give the 2 single-prompt outputs",
            p.returncode == 0 and p.stdout == want, f"want {want!r}; {describe(p)}")
    p = gen(fw, h5, "--interactive", *args, stdin=feed + feed)
    R.check("--interactive: a prompt again gives the same text (fresh cache, same seed)",
            p.returncode == 0 and p.stdout == want + want, describe(p))

    # Streaming. stdin stays open, so fwrun cannot have exited: a completion
    # that can be read is one fwrun flushed while running. /proc/PID/io's
    # write count over the second prompt shows how many writes it took.
    proc = subprocess.Popen(fw.argv(["generate", PLUGINS, f"--load={h5}", "--tokenizer=byte",
                                     "--interactive", "--threads=2", *args]),
                            env=fw.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        proc.stdin.write(prompts[0].encode() + b"\n")
        proc.stdin.flush()
        first = read_exactly(proc, len(single[0].stdout))
        R.check("streaming: the first completion arrives while fwrun is still running",
                first == single[0].stdout and proc.poll() is None,
                f"read {first!r}, want {single[0].stdout!r}, running {proc.poll() is None}")
        before = write_calls(proc.pid)
        proc.stdin.write(prompts[1].encode() + b"\n")
        proc.stdin.flush()
        second = read_exactly(proc, len(single[1].stdout))
        after = write_calls(proc.pid)
        n_bytes = len(single[1].stdout) - 1     # byte tokens: one token a byte
        if before is None or after is None:
            R.skipped.append("write count (/proc/PID/io unreadable)")
            print("  (write count not checked: /proc/PID/io unreadable)")
        else:
            R.check(f"streaming: one write per token ({n_bytes} tokens, "
                    f"{after - before} writes)", second == single[1].stdout and
                    n_bytes >= 5 and after - before >= n_bytes,
                    f"read {second!r}")
        proc.stdin.close()
        rc = proc.wait(timeout=60)
        R.check("streaming: fwrun exits 0 at the end of stdin", rc == 0,
                proc.stderr.read().decode(errors="replace")[-300:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def check_trained(fw, work):
    print("trained checkpoint (stored tokenizer):")
    data = os.path.join(work, "train.txt")
    with open(data, "w") as f:
        f.write("the cat sat on the mat. the dog sat on the log. " * 40)
    run = os.path.join(work, "run")
    p = fw("train", "--plugins=arch/decoder,attention/mha,optim/adamw", f"--data={data}",
           "--tokenizer=byte", f"--n-layer={gp.N_LAYER}", f"--n-head={gp.N_HEAD}",
           f"--n-embd={gp.N_EMBD}", f"--vocab-size={gp.VOCAB}", f"--n-positions={gp.N_POS}",
           "--micro-batch-size=4", "--seq-length=32", "--train-iters=40", "--lr=3e-3",
           "--threads=2", f"--run-dir={run}")
    if not R.check("fwrun train --tokenizer=byte on a text file", p.returncode == 0,
                   describe(p)):
        return
    ck = sorted(f for f in os.listdir(run) if f.startswith("ckpt-"))
    if not R.check("train wrote a checkpoint", bool(ck), f"{os.listdir(run)}"):
        return
    ck = os.path.join(run, ck[-1])
    got = gp.h5_tensors(ck)
    W = {n: torch.from_numpy(got[n]).t().contiguous() if gp.is_conv1d(n)
         else torch.from_numpy(got[n]) for n, _ in gp.hf_names()}
    prompt = "the dog sat"
    ref, _, margin = torch_greedy(W, prompt.encode(), 16)
    R.check("torch on the trained weights is a usable reference (margin >= 1e-4)",
            margin >= MARGIN and len(ref) >= 4, f"{ref!r} margin {margin:.2e}")
    p = gen(fw, ck, f"--prompt={prompt}", "--max-new-tokens=16", "--temperature=0",
            tokenizer=False)
    R.check("the stored tokenizer is used (no --tokenizer): text equals torch",
            text_of(p) == ref, f"fw {text_of(p)!r} torch {ref!r}; {describe(p)}")


def check_failure(name, p, expect):
    lines = [l for l in p.stderr.decode(errors="replace").splitlines() if l.strip()]
    problems = []
    if p.returncode < 0:
        problems.append(f"killed by signal {-p.returncode}")
    elif p.returncode == 0:
        problems.append("exit code 0")
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines")
    line = lines[0] if lines else ""
    if not line.startswith("fwrun:"):
        problems.append("stderr does not start with 'fwrun:'")
    if not re.search(expect, line, re.I):
        problems.append(f"problem not described (/{expect}/)")
    if re.search(r"Sanitizer|Traceback|Segmentation|core dumped|Assertion", p.stderr.decode(
            errors="replace")):
        problems.append("crash report on stderr")
    R.check(name, not problems, "; ".join(problems) + (" - " if problems else "") +
            f"exit {p.returncode}: {p.stderr.strip()[:300]!r}")


def check_bad(fw, work, h5):
    print("bad input:")
    missing = os.path.join(work, "no-such-prompt.txt")
    empty = os.path.join(work, "empty.txt")
    open(empty, "w").close()
    long_prompt = "x" * 60
    cases = [
        ("--prompt without a tokenizer", dict(tokenizer=False), ["--prompt=hello"],
         r"--tokenizer"),
        ("--interactive without a tokenizer", dict(tokenizer=False), ["--interactive"],
         r"--tokenizer"),
        ("--prompt-file missing", {}, [f"--prompt-file={missing}"], re.escape(missing)),
        ("--prompt-file empty", {}, [f"--prompt-file={empty}"], r"empty"),
        ("--prompt and --prompt-tokens together", {}, ["--prompt=hi", "--prompt-tokens=1,2"],
         r"only one"),
        ("no prompt at all", {}, [], r"prompt"),
        ("prompt + max-new-tokens over n-positions", {},
         [f"--prompt={long_prompt}", "--max-new-tokens=10"], r"n-positions"),
        ("--stop that is not a JSON array of strings", {}, ["--prompt=hi", "--stop=[1, 2]"],
         r"--stop"),
        ("--stop with --prompt-tokens", {}, ["--prompt-tokens=1,2", "--stop=ab"], r"--stop"),
    ]
    for name, kw, args, expect in cases:
        check_failure(name, gen(fw, h5, *args, **kw), expect)
    # --interactive: a prompt too long is reported, and the next one answered
    ok = gen(fw, h5, "--prompt=hi", "--max-new-tokens=10", "--temperature=0")
    p = gen(fw, h5, "--interactive", "--max-new-tokens=10", "--temperature=0",
            stdin=(long_prompt + "\nhi\n").encode())
    err = [l for l in p.stderr.decode(errors="replace").splitlines() if l.strip()]
    R.check("--interactive: a prompt over n-positions is one error line; the next is answered",
            len(err) == 1 and err[0].startswith("fwrun:") and "n-positions" in err[0] and
            p.stdout == ok.stdout and ok.returncode == 0 and p.returncode != 0, describe(p))


def main():
    a, fw = gp.cli(__doc__, Fw)

    def body(work):
        W = text_weights()
        h5 = import_model(fw, work, "text", W)
        if h5:
            ref = check_greedy(fw, work, W, h5)
            check_eos(fw, work)
            check_penalty(fw, W, h5)
            check_stop(fw, h5, ref)
            check_sampling(fw, h5)
            check_interactive(fw, h5)
            check_trained(fw, work)
            check_bad(fw, work, h5)

    return R.run("generate_text", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
