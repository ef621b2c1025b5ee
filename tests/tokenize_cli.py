#!/usr/bin/env python3
"""tokenize_cli.py - `fwrun tokenize` end to end.

- byte tokenizer: shard header (magic 20240520, version 1, count), EOS before
  every document, documents per file / paragraph / line, the exact
  validation split of --valid-fraction, several shards with --shard-tokens;
- GPT-2 style BPE (a synthetic vocab.json + merges.txt): JSONL input, the
  shards equal --print-ids with EOS prepended, --allow-special;
- over 65536 tokens: version 2 shards with uint32 tokens, read by fwrun train
  (and a token beyond the model's vocabulary rejected);
- a progress bar on a terminal (a pty), plain output otherwise;
- bad input: missing or corrupt vocab.json, malformed merges.txt (file:line),
  an invalid JSONL line (file:line), missing input, bad options: one line on
  stderr, a non-zero exit, and no shard (nor temporary file) left behind.

usage: tokenize_cli.py --fwrun PATH --plugin-path DIR
"""
import argparse
import json
import os
import pty
import select
import shutil
import struct
import subprocess
import sys
import tempfile

FAILS = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILS.append(what)


def read_shard(path):
    with open(path, "rb") as f:
        data = f.read()
    hdr = struct.unpack("<256i", data[:1024])
    width = 2 if hdr[1] == 1 else 4
    n = (len(data) - 1024) // width
    toks = list(struct.unpack("<%d%s" % (n, "H" if width == 2 else "I"), data[1024:]))
    return hdr[0], hdr[1], hdr[2], toks


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def write_vocab(d, extra=0):
    """256 bytes, a few merges, extra <|tN|> specials, <|endoftext|> last."""
    be = bytes_to_unicode()
    vocab = {be[b]: b for b in range(256)}
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w"), ("o", "r"),
              ("Ġw", "or"), ("l", "d"), ("Ġwor", "ld")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    for i in range(extra):
        vocab["<|t%d|>" % i] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    vp, mp = os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt")
    with open(vp, "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(mp, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join("%s %s\n" % m for m in merges))
    return vp, mp, vocab


def shards_in(d):
    return sorted(f for f in os.listdir(d) if ".bin" in f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fwrun", required=True)
    ap.add_argument("--plugin-path", required=True)
    a = ap.parse_args()
    env = dict(os.environ, FW_PLUGIN_PATH=a.plugin_path, OMP_NUM_THREADS="1")
    tmp = tempfile.mkdtemp(prefix="fw-tokenize.")

    def run(*args, **kw):
        return subprocess.run([a.fwrun, "tokenize", *args], capture_output=True, env=env, **kw)

    try:
        # --- byte tokenizer, text files ---------------------------------------------------
        t1, t2 = os.path.join(tmp, "a.txt"), os.path.join(tmp, "b.txt")
        with open(t1, "wb") as f:
            f.write(b"first para\nline two\n\nsecond para\n\n\nthird \xff\n")
        with open(t2, "wb") as f:
            f.write(b"other file\n")
        out = os.path.join(tmp, "byte")
        p = run("--tokenizer=byte", "--out=" + out, t1, t2)
        check(p.returncode == 0, "byte: exit 0 (%s)" % p.stderr.decode().strip()[-200:])
        m, v, n, toks = read_shard(out + "_train_000000.bin")
        want = [256] + list(open(t1, "rb").read()) + [256] + list(b"other file\n")
        check((m, v, n) == (20240520, 1, len(want)) and toks == want,
              "byte: header magic/version/count and tokens: EOS then the bytes of each file")
        check(not os.path.exists(out + "_val_000000.bin"), "byte: no validation shard by default")

        for split, docs in (("paragraph", [b"first para\nline two", b"second para", b"third \xff\n"]),
                            ("line", [b"first para", b"line two", b"second para", b"third \xff"])):
            p = run("--tokenizer=byte", "--split=" + split, "--print-ids", t1)
            lines = p.stdout.decode().splitlines()
            got = [bytes(int(x) for x in l.split()) for l in lines]
            check(p.returncode == 0 and got == docs, "byte: --split=%s documents" % split)

        # --valid-fraction: exactly floor(n F) documents, evenly spread
        lines = os.path.join(tmp, "lines.txt")
        with open(lines, "w") as f:
            for i in range(100):
                f.write("document %d\n" % i)
        out = os.path.join(tmp, "split")
        p = run("--tokenizer=byte", "--split=line", "--valid-fraction=0.1", "--out=" + out, lines)
        _, _, _, tr = read_shard(out + "_train_000000.bin")
        _, _, _, va = read_shard(out + "_val_000000.bin")
        vdocs = [bytes(x for x in d) for d in _split(va, 256)]
        tdocs = [bytes(x for x in d) for d in _split(tr, 256)]
        check(p.returncode == 0 and len(vdocs) == 10 and len(tdocs) == 90 and
              vdocs == [("document %d" % i).encode() for i in range(9, 100, 10)],
              "--valid-fraction=0.1: documents 9, 19, ..., 99 in val, 90 in train")

        # several shards
        big = os.path.join(tmp, "big.txt")
        with open(big, "wb") as f:
            f.write(b"x" * 5000)
        out = os.path.join(tmp, "multi")
        p = run("--tokenizer=byte", "--shard-tokens=2048", "--out=" + out, big)
        names = shards_in(tmp)
        multi = [s for s in names if s.startswith("multi_")]
        sizes = [read_shard(os.path.join(tmp, s))[2] for s in multi]
        check(p.returncode == 0 and multi == ["multi_train_%06d.bin" % i for i in range(3)] and
              sizes == [2048, 2048, 905], "--shard-tokens=2048: 5001 tokens in 3 shards")
        check(not [s for s in names if ".tmp" in s], "no temporary files left")

        # --- BPE, JSONL --------------------------------------------------------------------
        vp, mp, vocab = write_vocab(tmp)
        eos = vocab["<|endoftext|>"]
        jl = os.path.join(tmp, "docs.jsonl")
        texts = ["hello world", "hello<|endoftext|> world", "", "nul \u0000 é 😀\r\n\t end",
                 "hello world " * 50]
        with open(jl, "w") as f:
            for t in texts:
                f.write(json.dumps({"text": t, "id": 1}) + "\n")
            f.write("\n")
        p = run("--vocab-file", vp, "--merge-file", mp, "--print-ids", jl)
        ids = [[int(x) for x in l.split()] for l in p.stdout.decode().splitlines()]
        check(p.returncode == 0 and len(ids) == len(texts) and
              ids[0] == [vocab["hello"], vocab["Ġworld"]] and eos not in ids[1],
              "gpt2: --print-ids, <|endoftext|> is text without --allow-special")
        p = run("--vocab-file", vp, "--merge-file", mp, "--print-ids", "--allow-special", jl)
        ids2 = [[int(x) for x in l.split()] for l in p.stdout.decode().splitlines()]
        check(p.returncode == 0 and ids2[1] == [vocab["hello"], eos, vocab["Ġworld"]],
              "gpt2: --allow-special turns <|endoftext|> into the EOS token")
        out = os.path.join(tmp, "bpe")
        p = run("--vocab-file", vp, "--merge-file", mp, "--out", out, jl)
        _, v, _, toks = read_shard(out + "_train_000000.bin")
        check(p.returncode == 0 and v == 1 and toks == [x for d in ids for x in [eos] + d],
              "gpt2: shard = EOS + ids of each document (empty documents included)")

        # --- over 65536 tokens: version 2, uint32, read by fwrun train ---------------------
        d2 = os.path.join(tmp, "v2")
        os.mkdir(d2)
        vp2, mp2, vocab2 = write_vocab(d2, extra=70000)
        eos2 = vocab2["<|endoftext|>"]
        txt = os.path.join(d2, "t.txt")
        with open(txt, "w") as f:
            for i in range(300):
                f.write("hello world <|t69999|> %d\n" % i)
        out = os.path.join(d2, "big")
        p = run("--vocab-file=" + vp2, "--merge-file=" + mp2, "--split=line", "--allow-special",
                "--out=" + out, txt)
        m, v, n, toks = read_shard(out + "_train_000000.bin")
        check(p.returncode == 0 and (m, v) == (20240520, 2) and toks[0] == eos2 > 65535 and
              vocab2["<|t69999|>"] in toks and n == len(toks),
              "vocabulary of %d: version 2 shard with uint32 tokens" % len(vocab2))
        run_dir = os.path.join(d2, "run")
        train = [a.fwrun, "train", "--plugins=arch/decoder,attention/mha,optim/sgd",
                 "--n-layer=1", "--n-head=1", "--n-embd=8", "--vocab-size=%d" % len(vocab2),
                 "--n-positions=16", "--seq-length=16", "--micro-batch-size=1",
                 "--data=" + out + "_train_000000.bin", "--run-dir=" + run_dir,
                 "--train-iters=2"]
        p = subprocess.run(train, capture_output=True, text=True, env=env)
        ok = p.returncode == 0 and os.path.exists(os.path.join(run_dir, "metrics.jsonl"))
        check(ok, "fwrun train reads a version 2 shard" +
              ("" if ok else " (%s)" % p.stderr.strip()[-300:]))
        train[train.index("--vocab-size=%d" % len(vocab2))] = "--vocab-size=%d" % (eos2 - 10)
        p = subprocess.run(train, capture_output=True, text=True, env=env)
        check(p.returncode != 0 and "outside the vocabulary" in p.stderr,
              "fwrun train rejects a uint32 token beyond the vocabulary")

        # --- progress bar on a terminal ----------------------------------------------------
        master, slave = pty.openpty()
        out = os.path.join(tmp, "tty")
        pr = subprocess.Popen([a.fwrun, "tokenize", "--tokenizer=byte", "--out=" + out, big],
                              stderr=slave, stdout=subprocess.DEVNULL, env=env)
        os.close(slave)
        tty = b""
        while True:
            r, _, _ = select.select([master], [], [], 10)
            if not r:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            tty += chunk
        pr.wait()
        os.close(master)
        check(pr.returncode == 0 and b"\r" in tty and b"100%" in tty,
              "a terminal gets a progress bar")
        p = run("--tokenizer=byte", "--out=" + os.path.join(tmp, "pipe"), big)
        check(b"\r" not in p.stderr and b"tokenized 1 documents" in p.stderr,
              "a pipe gets one summary line")

        # --- bad input ---------------------------------------------------------------------
        bad = os.path.join(tmp, "bad")
        os.mkdir(bad)
        with open(os.path.join(bad, "corrupt.json"), "w") as f:
            f.write('{"a": 0, ')
        with open(os.path.join(bad, "merges.txt"), "w") as f:
            f.write("#version: 0.2\nh e\nhe\n")
        with open(os.path.join(bad, "docs.jsonl"), "w") as f:
            f.write('{"text": "hello"}\n{"text": "world"}\n{"text": "broken\n{"text": "x"}\n')
        with open(os.path.join(bad, "nofield.jsonl"), "w") as f:
            f.write('{"text": "hello"}\n{"body": "world"}\n')
        with open(os.path.join(bad, "array.jsonl"), "w") as f:
            f.write('["hello"]\n')
        o = os.path.join(bad, "out")
        cases = [
            ("missing vocab", ["--vocab-file", os.path.join(bad, "nope.json"), "--merge-file", mp, jl],
             1, "nope.json"),
            ("corrupt vocab", ["--vocab-file", os.path.join(bad, "corrupt.json"), "--merge-file", mp, jl],
             1, "corrupt.json:1"),
            ("malformed merges", ["--vocab-file", vp, "--merge-file", os.path.join(bad, "merges.txt"), jl],
             1, "merges.txt:3:"),
            ("invalid JSONL line", ["--vocab-file", vp, "--merge-file", mp,
                                    os.path.join(bad, "docs.jsonl")], 1, "docs.jsonl:3:"),
            ("JSONL line without the field", ["--tokenizer=byte",
                                              os.path.join(bad, "nofield.jsonl")], 1,
             "nofield.jsonl:2: no string field 'text'"),
            ("JSONL line not an object", ["--tokenizer=byte", os.path.join(bad, "array.jsonl")],
             1, "array.jsonl:1: not a JSON object"),
            ("missing input", ["--tokenizer=byte", os.path.join(bad, "none.txt")], 1, "none.txt"),
            ("gpt2 without files", [jl], 2, "--vocab-file"),
            ("byte with files", ["--tokenizer=byte", "--vocab-file", vp, jl], 2, "byte"),
            ("unknown option", ["--tokenizer=byte", "--valid-fraktion=0.1", jl], 2,
             "valid-fraction"),
            ("bad choice", ["--tokenizer=bpe", jl], 2, "tokenizer"),
            ("fraction out of range", ["--tokenizer=byte", "--valid-fraction=2", jl], 2,
             "valid-fraction"),
        ]
        for name, args, code, has in cases:
            p = run("--out=" + o, *args)
            err = p.stderr.decode()
            lines = [l for l in err.splitlines() if l.strip()]
            check(p.returncode == code and len(lines) == 1 and has in lines[0] and
                  lines[0].startswith("fwrun: ") and not [f for f in os.listdir(bad) if ".bin" in f],
                  "%s: exit %d, one line with '%s', no output (%r)" %
                  (name, code, has, err.strip()[-160:]))
        p = run("--tokenizer=byte", jl)
        check(p.returncode == 2 and b"--out" in p.stderr and p.stderr.count(b"\n") == 1,
              "no --out: a one-line usage error")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if FAILS:
        print("tokenize_cli: %d FAILED" % len(FAILS))
        sys.exit(1)
    print("tokenize_cli: all passed")


def _split(toks, eos):
    docs, cur = [], None
    for t in toks:
        if t == eos:
            if cur is not None:
                docs.append(cur)
            cur = []
        else:
            cur.append(t)
    if cur is not None:
        docs.append(cur)
    return docs


if __name__ == "__main__":
    main()
