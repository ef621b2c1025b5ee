#!/usr/bin/python3
"""generation_config.py - generation_config.json: fwrun import/export and generate's defaults.

Usage: /usr/bin/python3 tests/generation_config.py --fwrun PATH --plugin-path DIR

The model is generate_text.py's random GPT-2 in plain PyTorch with the byte
tokenizer (ids are bytes, 256 is <|endoftext|>); greedy text is checked
against torch greedy decoding. The generation_config.json files have the
shape of real ones (Llama-3's: bos, a list of eos ids, do_sample,
temperature, top_p, transformers_version; GPT-2's: one eos id).
Checks:
  1. import keeps the folder's generation_config.json and export writes it
     back byte for byte;
  2. do_sample absent or false: greedy, as Hugging Face's generate, equal to
     torch greedy; max_new_tokens caps it; max_length alone caps prompt +
     new tokens;
  3. eos_token_id (a list): generation stops at the first listed id, which
     is not printed (text) or is the last id (--prompt-tokens), as in torch
     greedy cut there;
  4. do_sample true: equal to the same command with the file's temperature,
     top_p and Hugging Face's default top_k=50 given as flags, and the flags
     on the command line win over the file;
  5. a generation_config.json beside a checkpoint that stores none is read;
  6. bad files: a wrong type or a damaged file is one "fwrun:" line naming
     the file and the key, at import (no output file) and at generate.
Ends with "generation_config: N passed, M failed"; exit 0 only if none failed.
"""
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import generate_text as gt  # noqa: E402
import gpt2_parity as gp  # noqa: E402

R = gt.R
PROMPT = "Hello, world"
LLAMA3_SHAPE = {"bos_token_id": 128000, "do_sample": True, "eos_token_id": [128001, 128008, 128009],
                "temperature": 0.6, "top_p": 0.9, "transformers_version": "4.45.0.dev0"}


def write_dir(work, name, W, genconfig):
    d = os.path.join(work, "hf_" + name)
    gp.write_hf_dir(d, W, "F32")
    if genconfig is not None:
        with open(os.path.join(d, "generation_config.json"), "w") as f:
            f.write(genconfig if isinstance(genconfig, str) else json.dumps(genconfig, indent=2))
    return d


def imported(fw, work, name, W, genconfig):
    d = write_dir(work, name, W, genconfig)
    h5 = os.path.join(work, name + ".h5")
    p = fw("import", d, h5)
    ok = R.check(f"import {name}", p.returncode == 0, gt.describe(p))
    return (d, h5) if ok else (d, None)


def greedy_ids(W, prompt, n):
    """torch greedy ids over the whole vocabulary."""
    ids = list(prompt)
    with gt.torch.no_grad():
        for _ in range(n):
            ids.append(int(gp.forward(W, gt.torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


def text(fw, h5, *extra):
    return gt.text_of(gt.gen(fw, h5, f"--prompt={PROMPT}", *extra))


def main():
    a, fw = gp.cli(__doc__, gt.Fw)

    def body(work):
        W = gt.text_weights()
        ref, _, margin = gt.torch_greedy(W, PROMPT.encode(), 20)
        R.check("the torch reference is usable (20 bytes, margin >= 1e-4)",
                len(ref) == 20 and margin >= gt.MARGIN, f"{ref!r}, margin {margin:.2e}")
        # 1. import and export keep the file
        shape = json.dumps(LLAMA3_SHAPE, indent=2) + "\n"
        d, h5 = imported(fw, work, "llama3_shape", W, shape)
        if not h5:
            return
        out = os.path.join(work, "exported")
        p = fw("export", h5, out)
        got = open(os.path.join(out, "generation_config.json")).read() \
            if os.path.exists(os.path.join(out, "generation_config.json")) else None
        R.check("export writes generation_config.json back byte for byte",
                p.returncode == 0 and got == shape, gt.describe(p))
        # 2. greedy when do_sample is absent or false, max_new_tokens / max_length
        for name, cfg in [("absent", {"eos_token_id": 256, "max_new_tokens": 12}),
                          ("false", {"do_sample": False, "temperature": 0.6, "top_k": 3,
                                     "eos_token_id": 256, "max_new_tokens": 12})]:
            _, h = imported(fw, work, "greedy_" + name, W, cfg)
            t = text(fw, h, "--seed=3") if h else None
            R.check(f"do_sample {name}: greedy, max_new_tokens=12, equal to torch",
                    t == ref[:12], f"{t!r} vs {ref[:12]!r}")
        _, h = imported(fw, work, "max_length", W, {"max_length": len(PROMPT.encode()) + 7})
        t = text(fw, h) if h else None
        R.check("max_length alone: prompt + 7 new tokens", t == ref[:7], f"{t!r} vs {ref[:7]!r}")
        # 3. eos_token_id as a list: the first listed id that comes stops
        stop = ref[9]
        first = ref.index(bytes([stop]))
        _, h = imported(fw, work, "eos_list", W, {"eos_token_id": [300, stop, 256],
                                                  "max_new_tokens": 20})
        t = text(fw, h) if h else None
        R.check("eos_token_id list: text stops before the first listed id",
                t == ref[:first], f"{t!r} vs {ref[:first]!r}")
        # --prompt-tokens samples the whole vocabulary: its own torch greedy
        full = greedy_ids(W, list(PROMPT.encode()), 20)
        stop_id = full[9]
        _, h = imported(fw, work, "eos_ids", W, {"eos_token_id": [stop_id, 499],
                                                 "max_new_tokens": 20})
        p = gt.gen(fw, h, "--prompt-tokens=" + ",".join(str(b) for b in PROMPT.encode()),
                   tokenizer=False) if h else None
        ids = p.stdout.decode().strip() if p and p.returncode == 0 else None
        want = ",".join(str(i) for i in full[:full.index(stop_id) + 1])
        R.check("eos_token_id list: ids end with the stop id (kept, as Hugging Face)",
                ids == want, f"{ids!r} vs {want!r}")
        # 4. sampling: the file's values, Hugging Face's top_k default; flags win
        t_file = text(fw, h5, "--seed=11", "--max-new-tokens=24")
        t_flags = text(fw, h5, "--seed=11", "--max-new-tokens=24", "--temperature=0.6",
                       "--top-p=0.9", "--top-k=50")
        R.check("do_sample true: the same as temperature 0.6, top_p 0.9, top_k 50 as flags",
                t_file is not None and t_file == t_flags, f"{t_file!r} vs {t_flags!r}")
        t_greedy = text(fw, h5, "--seed=11", "--max-new-tokens=20", "--temperature=0")
        R.check("a flag wins over the file (--temperature=0 is greedy)",
                t_greedy == ref[:20], f"{t_greedy!r} vs {ref[:20]!r}")
        ini = os.path.join(work, "greedy.ini")
        with open(ini, "w") as f:
            f.write("[run]\ntemperature = 0\n")
        t_ini = text(fw, h5, "--seed=11", "--max-new-tokens=20", f"--config={ini}")
        R.check("... and so does a --config file's value",
                t_ini == ref[:20], f"{t_ini!r} vs {ref[:20]!r}")
        # 5. a file beside a checkpoint without the attribute
        side = os.path.join(work, "side")
        os.makedirs(side)
        _, h = imported(fw, work, "plain", W, None)
        if h:
            shutil.copy(h, os.path.join(side, "model.h5"))
            with open(os.path.join(side, "generation_config.json"), "w") as f:
                json.dump({"eos_token_id": 256, "max_new_tokens": 5}, f)
            t = text(fw, os.path.join(side, "model.h5"))
            R.check("generation_config.json beside the checkpoint: max_new_tokens=5",
                    t == ref[:5], f"{t!r} vs {ref[:5]!r}")
            with open(os.path.join(side, "generation_config.json"), "w") as f:
                json.dump({"temperature": "hot"}, f)
            p = gt.gen(fw, os.path.join(side, "model.h5"), f"--prompt={PROMPT}")
            err = p.stderr.decode().strip().splitlines()
            R.check("generate: a bad file beside it is one line naming it and the key",
                    p.returncode != 0 and len(err) == 1 and err[0].startswith("fwrun:") and
                    "generation_config.json" in err[0] and "temperature" in err[0],
                    gt.describe(p))
        # 6. bad files at import: one line, no output
        for name, cfg, key in [("eos_type", {"eos_token_id": "</s>"}, "eos_token_id"),
                               ("top_p_range", {"top_p": 1.5}, "top_p"),
                               ("damaged", "{\"do_sample\": tru", "not valid JSON")]:
            dd = write_dir(work, "bad_" + name, W, cfg)
            outp = os.path.join(work, "bad_" + name + ".h5")
            p = fw("import", dd, outp)
            err = p.stderr.decode().strip().splitlines()
            R.check(f"import refuses {name}: one line naming the file and '{key}', no output",
                    p.returncode != 0 and len(err) == 1 and err[0].startswith("fwrun:") and
                    "generation_config.json" in err[0] and key in err[0] and
                    not os.path.exists(outp), gt.describe(p))

    return R.run("generation_config", a.keep, body)


if __name__ == "__main__":
    sys.exit(main())
