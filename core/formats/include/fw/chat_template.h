/* fw/chat_template.h - Hugging Face chat templates (the Jinja subset they use).
 *
 * A tokenizer_config.json's "chat_template" is a Jinja template that turns a
 * conversation into the prompt text a model was trained on. fw renders it
 * with its own small Jinja interpreter (core/formats/src/chat_template.c): no Jinja
 * library for C is packaged in Debian, so the subset real templates use is
 * written here, and tests/chat_templates.py checks it byte for byte against
 * @huggingface/jinja (the JavaScript implementation transformers.js uses) on
 * the real templates of Llama-3, Qwen3, Gemma3, Llama-2 and ChatML.
 *
 *   struct fw_err err = { 0 };
 *   struct fw_chat_template *t = fw_chat_template_compile(text, &err);
 *   if (!t) { puts(err.msg); return; }   // one line: "chat template: line 3:
 *                                        //  col 7: expected '%}'"
 *   char *s = fw_chat_template_render_json(t,
 *           "[{\"role\": \"user\", \"content\": \"hi\"}]", true,
 *           "{\"bos_token\": \"<s>\", \"eos_token\": \"</s>\"}", &err);
 *   ...
 *   fw_free(s);
 *   fw_chat_template_free(t);
 *
 * Semantics follow @huggingface/jinja where it and Python's Jinja differ
 * (HF's settings: trim_blocks and lstrip_blocks on, the template's final
 * newline dropped; `true` renders as "true"; `'a' + 1` concatenates).
 * Supported: {{ }}, {% %}, {# #}, whitespace control; if/elif/else, for
 * (loop.index/index0/revindex/revindex0/first/last/length/previtem/nextitem,
 * else, an `if` filter, unpacking, break/continue), set (names,
 * `ns.attr`, tuples, {% set x %}...{% endset %}), macro with defaults;
 * literals, lists, dicts, tuples, attributes, subscripts and slices, `in`,
 * `is` tests, comparisons, and/or/not, `~`, + - * / // % **, a if b else c;
 * the filters and methods listed in docs/tokenizers.md; the globals
 * raise_exception, range, namespace and strftime_now.
 */
#ifndef FW_CHAT_TEMPLATE_H
#define FW_CHAT_TEMPLATE_H

#include <stdbool.h>

#include "fw/status.h"

#ifdef __cplusplus
extern "C" {
#endif

struct json_t; /* jansson */
struct fw_chat_template;

/* Parses a template. NULL on error with one line in err: FW_ERR_FORMAT and
 * the line and column of a syntax error, FW_ERR_NOMEM. */
struct fw_chat_template *fw_chat_template_compile(const char *text, struct fw_err *err);

/* Renders the template with `messages` (a JSON array, not modified),
 * `add_generation_prompt`, and the members of `extra` (a JSON object or
 * NULL: bos_token, eos_token, tools, enable_thinking, ...) as variables.
 * Returns the text (caller fw_free()s it) or NULL with one line in err:
 * FW_ERR_INVALID for an error the template raises (raise_exception's
 * message), an operation on values that do not allow it, or a bad argument,
 * each with the template's line and column; FW_ERR_NOMEM. */
char *fw_chat_template_render(const struct fw_chat_template *t, const struct json_t *messages,
			      bool add_generation_prompt, const struct json_t *extra,
			      struct fw_err *err);

/* The same with JSON text for messages and extra (extra may be NULL).
 * Damaged JSON: FW_ERR_FORMAT, one line. */
char *fw_chat_template_render_json(const struct fw_chat_template *t, const char *messages_json,
				   bool add_generation_prompt, const char *extra_json,
				   struct fw_err *err);

void fw_chat_template_free(struct fw_chat_template *t);

#ifdef __cplusplus
}
#endif
#endif
