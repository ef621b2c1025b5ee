// chat_template_reference.mjs - @huggingface/jinja's side of tests/chat_templates.py.
//   node chat_template_reference.mjs NODE_MODULES TEMPLATE_FILE IN.jsonl OUT.jsonl
// Each case line {"messages", "add_generation_prompt", "vars"} gives one line
// {"out": text} or {"error": message} (the template failing to parse is an
// error for every line).
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [mods, tfile, inFile, outFile] = process.argv.slice(2);
const { Template } = await import(pathToFileURL(path.join(mods, "@huggingface/jinja/dist/index.js")));
const text = fs.readFileSync(tfile, "utf8");
let tmpl = null, perr = null;
try { tmpl = new Template(text); } catch (e) { perr = String(e.message || e); }
const out = [];
for (const line of fs.readFileSync(inFile, "utf8").split("\n")) {
  if (!line) continue;
  const c = JSON.parse(line);
  if (!tmpl) { out.push(JSON.stringify({ error: perr })); continue; }
  try {
    const s = tmpl.render({ ...(c.vars || {}), messages: c.messages,
                            add_generation_prompt: !!c.add_generation_prompt });
    out.push(JSON.stringify({ out: s }));
  } catch (e) {
    out.push(JSON.stringify({ error: String(e.message || e) }));
  }
}
fs.writeFileSync(outFile, out.join("\n") + (out.length ? "\n" : ""));
