/* dataset.c - training and validation data from token shards, plain text
 * and JSONL (docs/data-formats.md).
 *
 * Plain text (text files, or JSONL records {"text": ...}) is pretraining
 * data: each document becomes the EOS token then its tokens, the documents
 * follow each other in one stream, and the stream is cut into windows of
 * seq-length + 1 tokens like a shard.
 *
 * JSONL records with "prompt"/"response" or "messages" are SFT examples:
 * only response tokens (and the EOS that ends each response) are in the
 * loss. Examples never cross a row: with --packing=packed, consecutive
 * examples share a row and each attends only to itself (its own positions
 * from 0, a block-diagonal causal mask); with --packing=padded each example
 * has a row of its own. Either way the rest of a row is padding, outside
 * attention and the loss. A {"text"} record in an SFT file is an example
 * with every token in the loss.
 */
#define _GNU_SOURCE             /* getline */
#include <errno.h>
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fw/chat_template.h"
#include "fw/graph.h"
#include "fw/runtime/data.h"

/* --- one record ------------------------------------------------------------------------ */

/* Appends the tokens of text[0..len) (flags: FW_TOKENIZE_*). */
static bool push_n(struct fw_tokenizer *tok, struct fw_rt_example *ex, const char *text,
		   size_t len, bool loss, unsigned flags)
{
	struct fw_token_buf b = { 0 };
	struct fw_err e = { 0 };
	if (fw_tokenizer_encode_ex(tok, text, len, flags, &b, &e) != FW_OK)
		return false;
	int32_t *ids = realloc(ex->ids, sizeof(int32_t) * (size_t)(ex->n + (int64_t)b.n + 1));
	uint8_t *ls = ids ? realloc(ex->loss, (size_t)(ex->n + (int64_t)b.n + 1)) : NULL;
	if (ids)
		ex->ids = ids;
	if (ls)
		ex->loss = ls;
	if (!ids || !ls) {
		fw_token_buf_free(&b);
		return false;
	}
	for (size_t i = 0; i < b.n; i++) {
		ex->ids[ex->n] = b.ids[i];
		ex->loss[ex->n++] = loss;
	}
	fw_token_buf_free(&b);
	return true;
}

static bool push(struct fw_tokenizer *tok, struct fw_rt_example *ex, const char *text, bool loss)
{
	return push_n(tok, ex, text, strlen(text), loss, 0);
}

/* Appends one token id (a special token: EOS, a chat marker). */
static bool push_id(struct fw_rt_example *ex, int32_t id, bool loss)
{
	int32_t *ids = realloc(ex->ids, sizeof(int32_t) * (size_t)(ex->n + 1));
	uint8_t *ls = ids ? realloc(ex->loss, (size_t)(ex->n + 1)) : NULL;
	if (ids)
		ex->ids = ids;
	if (ls)
		ex->loss = ls;
	if (!ids || !ls)
		return false;
	ex->ids[ex->n] = id;
	ex->loss[ex->n++] = loss;
	return true;
}

static bool push_eos(struct fw_tokenizer *tok, struct fw_rt_example *ex, bool loss)
{
	return push_id(ex, fw_tokenizer_eos(tok), loss);
}

enum fw_status fw_rt_encoder_init(struct fw_rt_encoder *e, struct fw_tokenizer *tok,
				  bool chatml, struct fw_err *err)
{
	*e = (struct fw_rt_encoder){ .tok = tok, .chatml = chatml, .im_start = -1, .im_end = -1 };
	if (!e->chatml || !tok)
		return FW_OK;
	enum fw_status st = fw_tokenizer_add_special(tok, "<|im_start|>", 12, &e->im_start, err);
	if (st == FW_OK)
		st = fw_tokenizer_add_special(tok, "<|im_end|>", 10, &e->im_end, err);
	return st;
}

void fw_rt_example_free(struct fw_rt_example *ex)
{
	free(ex->ids);
	free(ex->loss);
	memset(ex, 0, sizeof(*ex));
}

/* The chat templates. plain: each message is "<Role>:\n<content>",
 * messages are separated by "\n\n", and each assistant content is followed
 * by EOS. chatml: each message is <|im_start|> "<role>\n" <content>
 * <|im_end|> "\n". Assistant contents and the EOS / <|im_end|> after them
 * are in the loss, nothing else is. */
static bool render_messages(const struct fw_rt_encoder *enc, json_t *msgs, struct fw_rt_example *ex,
			    const char **why)
{
	static const char *const roles[][3] = {
		{ "system", "System:\n", "system\n" }, { "user", "User:\n", "user\n" },
		{ "assistant", "Assistant:\n", "assistant\n" },
	};
	static _Thread_local char buf[96];    /* why a record is bad */
	struct fw_tokenizer *tok = enc->tok;
	if (!json_is_array(msgs) || json_array_size(msgs) == 0)
		return *why = "'messages' is not a non-empty array", false;
	bool any_assistant = false;
	size_t i;
	json_t *m;
	json_array_foreach(msgs, i, m) {
		json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
		int r = -1;
		for (int k = 0; k < 3 && json_is_string(role); k++)
			if (!strcmp(json_string_value(role), roles[k][0]))
				r = k;
		if (!json_is_object(m) || r < 0 || !json_is_string(content)) {
			snprintf(buf, sizeof(buf), "messages[%zu]: %s", i,
				 !json_is_object(m) ? "not an object" :
				 !json_is_string(role) ? "'role' missing or not a string" :
				 r < 0 ? "role is not system, user or assistant" :
				 "'content' missing or not a string");
			return *why = buf, false;
		}
		if (!*json_string_value(content)) {
			snprintf(buf, sizeof(buf), "messages[%zu]: empty 'content'", i);
			return *why = buf, false;
		}
		bool a = r == 2, ok;
		any_assistant |= a;
		if (enc->chatml)
			ok = push_id(ex, enc->im_start, false) && push(tok, ex, roles[r][2], false) &&
			     push(tok, ex, json_string_value(content), a) &&
			     push_id(ex, enc->im_end, a) && push(tok, ex, "\n", false);
		else
			ok = (!i || push(tok, ex, "\n\n", false)) && push(tok, ex, roles[r][1], false) &&
			     push(tok, ex, json_string_value(content), a) &&
			     (!a || push_eos(tok, ex, true));
		if (!ok)
			return *why = "out of memory", false;
	}
	if (!any_assistant)
		return *why = "'messages' has no assistant message", false;
	return true;
}

enum fw_status fw_rt_chat_template_from_config(const char *config_json, const char *where,
					       struct fw_chat_template **tmpl, void **vars,
					       struct fw_err *err)
{
	*tmpl = NULL;
	*vars = NULL;
	json_error_t je;
	json_t *cfg = json_loads(config_json, JSON_DECODE_INT_AS_REAL, &je);   /* model_max_length 1e30 */
	if (!json_is_object(cfg)) {
		json_decref(cfg);
		return fw_errorf(err, FW_ERR_FORMAT, "%s: not a JSON object (line %d: %s)", where,
				 je.line, cfg ? "not an object" : je.text);
	}
	json_t *t = json_object_get(cfg, "chat_template");
	if (json_is_array(t)) {         /* [{"name", "template"}]: the default one */
		size_t i;
		json_t *e, *def = NULL;
		json_array_foreach(t, i, e)
			if (!def || !strcmp(json_string_value(json_object_get(e, "name")) ?
					    json_string_value(json_object_get(e, "name")) : "", "default"))
				def = json_object_get(e, "template");
		t = def;
	}
	enum fw_status st = FW_OK;
	if (json_is_string(t)) {
		json_t *v = json_object();
		static const char *const keys[] = { "bos_token", "eos_token", "unk_token",
			"pad_token" };
		for (size_t k = 0; v && k < sizeof(keys) / sizeof(keys[0]); k++) {
			json_t *x = json_object_get(cfg, keys[k]);
			if (json_is_object(x))  /* {"content": ..., "special": ...} */
				x = json_object_get(x, "content");
			if (json_is_string(x))
				json_object_set(v, keys[k], x);
		}
		struct fw_err e = { 0 };
		*tmpl = v ? fw_chat_template_compile(json_string_value(t), &e) : NULL;
		if (!*tmpl) {
			json_decref(v);
			st = v ? fw_errorf(err, e.status, "%s: chat_template: %s", where, e.msg) :
				fw_errorf(err, FW_ERR_NOMEM, "%s: out of memory", where);
		} else {
			*vars = v;
		}
	}
	json_decref(cfg);
	return st;
}

/* messages[0..n) rendered by the Jinja template, or NULL with why. */
static char *render_upto(const struct fw_rt_encoder *enc, json_t *msgs, size_t n, bool gen,
			 char *buf, size_t nbuf, const char **why)
{
	json_t *part = json_array();
	for (size_t i = 0; part && i < n; i++)
		json_array_append(part, json_array_get(msgs, i));
	struct fw_err e = { 0 };
	char *s = part ? fw_chat_template_render(enc->jinja, part, gen, enc->jinja_vars, &e) : NULL;
	json_decref(part);
	if (!s) {
		snprintf(buf, nbuf, "chat template: %.500s", part ? e.msg : "out of memory");
		*why = buf;
	}
	return s;
}

/* One assistant turn of a rendered conversation: its content at
 * all[at..at+n), and the end-of-turn id after it (-1: none). */
struct turn {
	size_t at, n;
	int32_t eot;
};

/* Whether a token's bytes are all whitespace (or Metaspace's "▁"). */
static bool blank_token(const char *b, size_t len)
{
	for (size_t i = 0; b && i < len; i++) {
		if (i + 3 <= len && !memcmp(b + i, "\xe2\x96\x81", 3))
			i += 2;
		else if (!strchr(" \t\n\r", b[i]) || !b[i])
			return false;
	}
	return b != NULL;
}

/* Whether b[0..nb) occurs in a[from..na): its index, or -1. */
static int64_t find_ids(const int32_t *a, size_t na, size_t from, const int32_t *b, size_t nb)
{
	for (size_t i = from; nb && i + nb <= na; i++)
		if (!memcmp(a + i, b, nb * sizeof(int32_t)))
			return (int64_t)i;
	return -1;
}

/* When the pieces tokenized apart differ from the whole render tokenized at
 * once (a normalizer that prepends "▁" to each piece, as Llama-2's and
 * Mistral's: the space before a content is its own token when the content
 * is cut out, part of it in the whole), the example becomes the whole
 * render's ids, and each content's own ids are found in them: the first
 * place at or after the tokens of the text before it, less one (the
 * token the content's first may absorb), and after the previous content.
 * Whitespace tokens may stand between a content and its end of turn. False
 * with why when a content's ids are not in the whole (the loss cannot be
 * placed exactly). */
static bool align_whole(struct fw_tokenizer *tok, const char *all, const struct turn *turns,
			size_t n_turns, struct fw_rt_example *ex, const char **why)
{
	const unsigned SPLIT = FW_TOKENIZE_SPLIT_SPECIAL;
	struct fw_token_buf w = { 0 }, c = { 0 }, pre = { 0 };
	struct fw_err e = { 0 };
	if (fw_tokenizer_encode_ex(tok, all, strlen(all), SPLIT, &w, &e) != FW_OK)
		return *why = "out of memory", false;
	bool same = w.n == (size_t)ex->n && !memcmp(w.ids, ex->ids, w.n * sizeof(int32_t));
	bool ok = true;
	uint8_t *loss = same ? NULL : calloc(w.n ? w.n : 1, 1);
	if (!same && !loss)
		ok = !(*why = "out of memory");
	size_t from = 0;
	for (size_t k = 0; !same && ok && k < n_turns; k++) {
		c.n = pre.n = 0;
		if (fw_tokenizer_encode_ex(tok, all + turns[k].at, turns[k].n, 0, &c, &e) != FW_OK ||
		    fw_tokenizer_encode_ex(tok, all, turns[k].at, SPLIT, &pre, &e) != FW_OK) {
			ok = !(*why = "out of memory");
			break;
		}
		size_t lb = pre.n ? pre.n - 1 : 0;
		int64_t i = find_ids(w.ids, w.n, lb > from ? lb : from, c.ids, c.n);
		if (i < 0) {
			ok = !(*why = "the assistant's content tokenizes differently inside the "
				      "rendered conversation: the loss cannot be placed exactly");
			break;
		}
		size_t j = (size_t)i + c.n;
		memset(loss + i, 1, c.n);
		for (size_t q = j; turns[k].eot >= 0 && q < w.n; q++) {
			size_t len = 0;
			const char *b = fw_tokenizer_token(tok, w.ids[q], &len);
			if (w.ids[q] == turns[k].eot) {
				loss[q] = 1;
				j = q + 1;
				break;
			}
			if (!blank_token(b, len) || fw_tokenizer_is_special(tok, w.ids[q]))
				break;
		}
		from = j;
	}
	if (!same && ok) {
		free(ex->ids);
		free(ex->loss);
		ex->ids = malloc(sizeof(int32_t) * (w.n ? w.n : 1));
		if (!ex->ids) {
			ex->loss = loss;
			ex->n = 0;
			loss = NULL;
			ok = !(*why = "out of memory");
		} else {
			memcpy(ex->ids, w.ids, sizeof(int32_t) * w.n);
			ex->loss = loss;
			ex->n = (int64_t)w.n;
			loss = NULL;
		}
	}
	free(loss);
	fw_token_buf_free(&w);
	fw_token_buf_free(&c);
	fw_token_buf_free(&pre);
	return ok;
}

/* A tokenizer_config.json chat template (docs/tokenizers.md, "SFT with a
 * chat template"): the whole conversation is rendered once (T), and for
 * each assistant message i the conversation before it with the generation
 * prompt (P_i), which must be a prefix of T. Its content is the first
 * place in T after P_i (and after the previous one) that shows it as given,
 * else stripped of its leading, trailing, or both whitespace. The text between contents is tokenized without loss (special
 * tokens recognized, none added); each content is tokenized alone into the
 * loss, and so is the special token that follows it (after whitespace):
 * the end of the turn (<|eot_id|>, <|im_end|>, </s>, ...). The pieces'
 * ids must be the whole render's (align_whole otherwise). */
static bool render_jinja(const struct fw_rt_encoder *enc, json_t *msgs, struct fw_rt_example *ex,
			 const char **why)
{
	static _Thread_local char buf[600];   /* why a record is bad */
	const unsigned SPLIT = FW_TOKENIZE_SPLIT_SPECIAL;
	struct fw_tokenizer *tok = enc->tok;
	if (!json_is_array(msgs) || json_array_size(msgs) == 0)
		return *why = "'messages' is not a non-empty array", false;
	char *all = render_upto(enc, msgs, json_array_size(msgs), false, buf, sizeof(buf), why);
	if (!all)
		return false;
	size_t at = 0, n_all = strlen(all), n_turns = 0;
	bool ok = true, any = false;
	struct turn *turns = calloc(json_array_size(msgs), sizeof(*turns));
	if (!turns)
		ok = !(*why = "out of memory");
	for (size_t i = 0; ok && i < json_array_size(msgs); i++) {
		json_t *m = json_array_get(msgs, i), *content = json_object_get(m, "content");
		const char *role = json_string_value(json_object_get(m, "role"));
		if (!role || strcmp(role, "assistant"))
			continue;
		if (!json_is_string(content) || !*json_string_value(content)) {
			snprintf(buf, sizeof(buf), "messages[%zu]: an assistant 'content' must be a "
				 "non-empty string", i);
			ok = !(*why = buf);
			break;
		}
		char *pre = render_upto(enc, msgs, i, true, buf, sizeof(buf), why);
		if (!pre) {
			ok = false;
			break;
		}
		size_t np = strlen(pre);
		bool prefix = np <= n_all && !memcmp(pre, all, np);
		fw_free(pre);
		const char *c0 = json_string_value(content), *found = NULL, *c = c0;
		size_t n0 = json_string_length(content), from = np > at ? np : at, nc = n0;
		size_t lead = strspn(c0, " \t\n\r"), trail = 0;
		while (trail < n0 - lead && strchr(" \t\n\r", c0[n0 - 1 - trail]))
			trail++;
		/* as given, else as the template may strip it: left, right, both */
		for (int k = 0; prefix && !found && k < 4; k++) {
			c = c0 + (k & 1 ? lead : 0);
			nc = n0 - (k & 1 ? lead : 0) - (k & 2 ? trail : 0);
			if (nc && (k == 0 || (k & 1 ? lead : 0) + (k & 2 ? trail : 0)))
				found = memmem(all + from, n_all - from, c, nc);
		}
		if (!found) {
			snprintf(buf, sizeof(buf), "messages[%zu]: %s", i, prefix ?
				 "the chat template does not show the assistant's content" :
				 "the chat template renders the conversation before this message "
				 "differently alone (it is not a prefix): the loss cannot be placed");
			ok = !(*why = buf);
			break;
		}
		size_t a = (size_t)(found - all), e = a + nc, w = e;
		while (w < n_all && strchr(" \t\n\r", all[w]))
			w++;
		ok = push_n(tok, ex, all + at, a - at, false, SPLIT) &&
		     push_n(tok, ex, all + a, nc, true, 0) &&
		     push_n(tok, ex, all + e, w - e, false, SPLIT);
		/* the end of the turn: a special token right after the content */
		struct fw_token_buf t = { 0 };
		struct fw_err er = { 0 };
		size_t next = w;
		turns[n_turns] = (struct turn){ .at = a, .n = nc, .eot = -1 };
		if (ok && w < n_all && fw_tokenizer_encode_ex(tok, all + w, n_all - w > 64 ? 64 :
							      n_all - w, SPLIT, &t, &er) == FW_OK &&
		    t.n && fw_tokenizer_is_special(tok, t.ids[0])) {
			size_t len = 0;
			const char *sp = fw_tokenizer_token(tok, t.ids[0], &len);
			if (sp && len <= n_all - w && !memcmp(all + w, sp, len)) {
				ok = push_id(ex, t.ids[0], true);
				next = w + len;
				turns[n_turns].eot = t.ids[0];
			}
		}
		fw_token_buf_free(&t);
		at = next;
		any = true;
		n_turns++;
		if (!ok && !*why)
			*why = "out of memory";
	}
	if (ok && !any)
		ok = !(*why = "'messages' has no assistant message");
	if (ok && !push_n(tok, ex, all + at, n_all - at, false, SPLIT))
		ok = !(*why = "out of memory");
	if (ok)
		ok = align_whole(tok, all, turns, n_turns, ex, why);
	free(turns);
	fw_free(all);
	return ok;
}

bool fw_rt_example_from_json(const struct fw_rt_encoder *enc, const void *record, struct fw_rt_example *ex,
		       const char **why)
{
	struct fw_tokenizer *tok = enc->tok;
	json_t *r = (json_t *)record;
	memset(ex, 0, sizeof(*ex));
	*why = NULL;
	if (!json_is_object(r))
		return *why = "not a JSON object", false;
	json_t *prompt = json_object_get(r, "prompt"), *resp = json_object_get(r, "response");
	json_t *msgs = json_object_get(r, "messages"), *text = json_object_get(r, "text");
	bool ok;
	if (msgs) {
		ok = enc->jinja ? render_jinja(enc, msgs, ex, why) : render_messages(enc, msgs, ex, why);
	} else if (prompt || resp) {
		if (!prompt || !resp)
			*why = prompt ? "'response' is missing" : "'prompt' is missing";
		else if (!json_is_string(prompt) || !json_is_string(resp))
			*why = json_is_string(prompt) ? "'response' is not a string" :
			       "'prompt' is not a string";
		else if (!*json_string_value(resp))
			*why = "'response' is empty";
		else if (!push(tok, ex, json_string_value(prompt), false) ||
			 !push(tok, ex, json_string_value(resp), true) || !push_eos(tok, ex, true))
			*why = "out of memory";
		ok = !*why;
	} else if (text) {
		if (!json_is_string(text))
			*why = "'text' is not a string";
		else if (!*json_string_value(text))
			*why = "'text' is empty";
		else if (!push_eos(tok, ex, false) || !push(tok, ex, json_string_value(text), true))
			*why = "out of memory";
		ok = !*why;
	} else {
		*why = "no 'prompt'/'response', 'messages' or 'text' field";
		ok = false;
	}
	if (!ok)
		fw_rt_example_free(ex);
	return ok;
}

/* --- reading files ----------------------------------------------------------------------- */

struct collect {
	const char *path;                /* the file being read */
	struct fw_rt_example *ex;
	int64_t n, cap;
	bool sft;                        /* some record is prompt/response or messages */
	int64_t records, bad, max_bad;
	struct fw_rt_encoder enc;
	uint32_t *stream;                /* plain text: EOS doc EOS doc ... */
	int64_t n_stream, cap_stream;
};

static bool add_example(struct collect *c, struct fw_rt_example *ex)
{
	if (c->n == c->cap) {
		int64_t cap = c->cap ? 2 * c->cap : 256;
		struct fw_rt_example *p = realloc(c->ex, sizeof(*p) * (size_t)cap);
		if (!p)
			return false;
		c->ex = p;
		c->cap = cap;
	}
	c->ex[c->n++] = *ex;
	return true;
}

char *fw_rt_read_file(const char *path, size_t *len, struct fw_err *err)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		fw_errorf(err, FW_ERR_IO, "%s: %s", path, strerror(errno));
		return NULL;
	}
	char *buf = NULL;
	size_t cap = 0;
	*len = 0;
	for (;;) {
		if (*len + 65536 + 1 > cap) {
			cap = cap ? 2 * cap : 1 << 20;
			char *p = realloc(buf, cap);
			if (!p) {
				free(buf);
				fclose(f);
				fw_errorf(err, FW_ERR_NOMEM, "%s: out of memory", path);
				return NULL;
			}
			buf = p;
		}
		size_t got = fread(buf + *len, 1, 65536, f);
		*len += got;
		if (got < 65536)
			break;
	}
	bool bad = ferror(f);
	fclose(f);
	if (bad) {
		free(buf);
		fw_errorf(err, FW_ERR_IO, "%s: read error", path);
		return NULL;
	}
	buf[*len] = '\0';
	return buf;
}

static enum fw_status read_text(struct collect *c, struct fw_tokenizer *tok, const char *path,
				struct fw_err *err)
{
	size_t len;
	char *text = fw_rt_read_file(path, &len, err);
	if (!text)
		return err->status;
	if (len == 0) {
		free(text);
		return fw_errorf(err, FW_ERR_FORMAT, "%s: empty file", path);
	}
	struct fw_rt_example ex = { 0 };
	bool ok = push_eos(tok, &ex, true);
	free(ex.loss);
	struct fw_token_buf b = { 0 };
	enum fw_status st = ok ? fw_tokenizer_encode(tok, text, len, false, &b, err) :
		fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	free(text);
	if (st == FW_OK) {
		int64_t need = c->n_stream + 1 + (int64_t)b.n;
		if (need > c->cap_stream) {
			uint32_t *p = realloc(c->stream, sizeof(uint32_t) * (size_t)need);
			if (!p)
				st = fw_errorf(err, FW_ERR_NOMEM, "out of memory");
			else
				c->stream = p, c->cap_stream = need;
		}
	}
	if (st == FW_OK) {
		c->stream[c->n_stream++] = (uint32_t)ex.ids[0];
		for (size_t i = 0; i < b.n; i++)
			c->stream[c->n_stream++] = (uint32_t)b.ids[i];
	}
	free(ex.ids);
	fw_token_buf_free(&b);
	return st;
}

enum fw_status fw_rt_jsonl_foreach(const char *path, int64_t max_bad, int64_t *n_bad,
				   fw_rt_jsonl_fn fn, void *arg, const struct fw_rt_log *log,
				   struct fw_err *err)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return fw_errorf(err, FW_ERR_IO, "%s: %s", path, strerror(errno));
	enum fw_status st = FW_OK;
	char *text = NULL;
	size_t cap = 0;
	ssize_t got;
	long line = 0;
	while (st == FW_OK && (got = getline(&text, &cap, f)) >= 0) {
		size_t ll = (size_t)got;
		line++;
		while (ll && (text[ll - 1] == '\n' || text[ll - 1] == '\r' || text[ll - 1] == ' ' ||
			      text[ll - 1] == '\t'))
			ll--;
		if (strspn(text, " \t") >= ll)
			continue;                       /* blank line */
		json_error_t je;
		json_t *rec = json_loadb(text, ll, JSON_REJECT_DUPLICATES, &je);
		const char *why = NULL;
		char msg[256];
		if (!rec) {
			snprintf(msg, sizeof(msg), "invalid JSON: %s", je.text);
			why = msg;
		} else {
			st = fn(arg, rec, line, &why, err);
		}
		json_decref(rec);
		if (st != FW_OK || !why)
			continue;
		if (++*n_bad > max_bad) {
			st = fw_errorf(err, FW_ERR_FORMAT, "%s:%ld: %s; that is %lld bad records, more "
				       "than --max-bad-records=%lld", path, line, why,
				       (long long)*n_bad, (long long)max_bad);
			break;
		}
		fw_rt_logf(log, FW_LOG_WARN, "%s:%ld: %s (record skipped)", path, line, why);
	}
	if (st == FW_OK && ferror(f))
		st = fw_errorf(err, FW_ERR_IO, "%s: read error", path);
	free(text);
	fclose(f);
	return st;
}

static enum fw_status collect_record(void *arg, const void *rec, long line, const char **why,
				     struct fw_err *err)
{
	struct collect *c = arg;
	struct fw_rt_example ex;
	c->records++;
	if (json_object_get((json_t *)rec, "input") && json_object_get((json_t *)rec, "target") &&
	    !json_object_get((json_t *)rec, "prompt"))
		return fw_errorf(err, FW_ERR_INVALID, "%s:%ld: an {\"input\", \"target\"} record is "
				 "seq2seq data, for an encoder-decoder arch (arch/encdec); this model "
				 "reads prompt/response, messages or text records", c->path, line);
	if (!fw_rt_example_from_json(&c->enc, rec, &ex, why))
		return FW_OK;
	if (json_object_get((json_t *)rec, "prompt") || json_object_get((json_t *)rec, "messages"))
		c->sft = true;
	if (!add_example(c, &ex)) {
		fw_rt_example_free(&ex);
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	}
	return FW_OK;
}

/* --- rows ---------------------------------------------------------------------------------- */

enum fw_status fw_rt_rows_layout(const struct fw_rt_example *examples, int64_t n_ex, int64_t T,
				 bool packed, bool truncate, bool shuffle, uint64_t seed,
				 struct fw_rt_rows *r, struct fw_rt_layout_stats *ls, struct fw_err *err)
{
	int64_t *order = malloc(sizeof(int64_t) * (size_t)(n_ex ? n_ex : 1));
	if (!order)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	for (int64_t i = 0; i < n_ex; i++)
		order[i] = i;
	uint64_t key = fw_hash_str("sft-order", seed);
	for (int64_t i = n_ex - 1; shuffle && i > 0; i--) {
		int64_t j = (int64_t)(fw_rng_uniform(key, (uint64_t)i) * (double)(i + 1));
		int64_t t = order[i];
		order[i] = order[j];
		order[j] = t;
	}
	memset(r, 0, sizeof(*r));
	r->T = T;
	int64_t cap = 0, used = T;      /* positions used in the last row */
	int32_t seg = 0;
	for (int64_t k = 0; k < n_ex; k++) {
		const struct fw_rt_example *ex = &examples[order[k]];
		int64_t n = ex->n;
		if (n - 1 > T) {
			bool any = false;
			for (int64_t i = 1; i <= T; i++)
				any |= ex->loss[i];
			if (!truncate || !any) {
				ls->dropped++;
				continue;
			}
			ls->truncated++;
			n = T + 1;
		}
		if (n < 2) {
			ls->dropped++;
			continue;
		}
		if (!packed || used + n - 1 > T) {      /* a new row */
			if (r->n == cap) {
				cap = cap ? 2 * cap : 64;
				int32_t *a = realloc(r->tokens, sizeof(int32_t) * (size_t)(cap * T));
				int32_t *b = a ? realloc(r->targets, sizeof(int32_t) * (size_t)(cap * T)) : NULL;
				int32_t *s = b ? realloc(r->seg, sizeof(int32_t) * (size_t)(cap * T)) : NULL;
				if (a)
					r->tokens = a;
				if (b)
					r->targets = b;
				if (s)
					r->seg = s;
				if (!s) {
					free(order);
					return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
				}
			}
			int64_t at = r->n++ * T;
			for (int64_t i = 0; i < T; i++) {
				r->tokens[at + i] = 0;
				r->targets[at + i] = -1;
				r->seg[at + i] = 0;
			}
			used = 0;
			seg = 0;
		}
		int64_t at = (r->n - 1) * T + used;
		seg++;
		for (int64_t i = 0; i + 1 < n; i++) {
			r->tokens[at + i] = ex->ids[i];
			r->targets[at + i] = ex->loss[i + 1] ? ex->ids[i + 1] : -1;
			r->seg[at + i] = seg;
			ls->loss_positions += ex->loss[i + 1];
		}
		used += n - 1;
	}
	free(order);
	ls->rows = r->n;
	return FW_OK;
}

/* --- the dataset ---------------------------------------------------------------------------- */

static const char *file_format(const char *path, const char *opt)
{
	if (strcmp(opt, "auto"))
		return opt;
	size_t n = strlen(path);
	if (n >= 4 && !strcmp(path + n - 4, ".bin"))
		return "shards";
	if ((n >= 6 && !strcmp(path + n - 6, ".jsonl")) || (n >= 5 && !strcmp(path + n - 5, ".json")))
		return "jsonl";
	return "text";
}

enum fw_status fw_rt_refuse_compressed(const char *path, struct fw_err *err)
{
	static const struct {
		const char *ext, *name;
		unsigned char magic[6];
		size_t n;
	} kinds[] = {
		{ ".gz", "gzip", { 0x1f, 0x8b }, 2 },
		{ ".zst", "zstd", { 0x28, 0xb5, 0x2f, 0xfd }, 4 },
		{ ".xz", "xz", { 0xfd, '7', 'z', 'X', 'Z', 0 }, 6 },
		{ ".bz2", "bzip2", { 'B', 'Z', 'h' }, 3 },
	};
	unsigned char head[6] = { 0 };
	FILE *f = fopen(path, "rb");
	size_t got = f ? fread(head, 1, sizeof(head), f) : 0;
	if (f)
		fclose(f);
	size_t len = strlen(path);
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		size_t el = strlen(kinds[i].ext);
		bool ext = len > el && !strcmp(path + len - el, kinds[i].ext);
		bool magic = got >= kinds[i].n && !memcmp(head, kinds[i].magic, kinds[i].n);
		if (ext || magic)
			return fw_errorf(err, FW_ERR_UNSUPPORTED, "%s is %s-compressed: fwrun reads "
					 "uncompressed files only; decompress it first", path,
					 kinds[i].name);
	}
	return FW_OK;
}

enum fw_status fw_rt_dataset_open(struct fw_rt_loader *l, const struct fw_rt_data_config *cfg,
				  const char *paths, const char *what, struct fw_tokenizer *tok,
				  const struct fw_rt_log *log, struct fw_err *err)
{
	const char *fmt_opt = cfg->format;
	uint64_t seed = cfg->seed;
	bool shuffle = cfg->shuffle;
	int64_t B = cfg->B, T = cfg->T;
	memset(l, 0, sizeof(*l));
	char *copy = strdup(paths), *save = NULL;
	if (!copy)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	int n_shards = 0, n_other = 0;
	enum fw_status zs = FW_OK;
	for (char *p = strtok_r(copy, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
		*(strcmp(file_format(p, fmt_opt), "shards") ? &n_other : &n_shards) += 1;
		if (zs == FW_OK)
			zs = fw_rt_refuse_compressed(p, err);
	}
	free(copy);
	if (zs != FW_OK)
		return zs;
	if (n_shards && n_other)
		return fw_errorf(err, FW_ERR_INVALID, "--%s mixes token shards with text or JSONL "
				 "files", what);
	if (!n_other)
		return fw_rt_loader_open(l, paths, B, T, shuffle, seed, err);
	if (!tok)
		return fw_errorf(err, FW_ERR_INVALID, "--%s is text or JSONL: it needs a tokenizer "
				 "(--tokenizer=byte, or gpt2 with --vocab-file and --merge-file)", what);
	if (fw_tokenizer_eos(tok) < 0)
		return fw_errorf(err, FW_ERR_INVALID, "the %s tokenizer has no EOS token "
				 "(<|endoftext|>) to end documents with", fw_tokenizer_name(tok));

	struct collect c = { .max_bad = cfg->max_bad };
	enum fw_status st = fw_rt_encoder_init(&c.enc, tok, cfg->chatml, err);
	c.enc.jinja = cfg->jinja;
	c.enc.jinja_vars = cfg->jinja_vars;
	if (st != FW_OK)
		return st;
	copy = strdup(paths);
	if (!copy)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	for (char *p = strtok_r(copy, ",", &save); p && st == FW_OK; p = strtok_r(NULL, ",", &save)) {
		c.path = p;
		st = strcmp(file_format(p, fmt_opt), "jsonl") ? read_text(&c, tok, p, err) :
			fw_rt_jsonl_foreach(p, c.max_bad, &c.bad, collect_record, &c, log, err);
	}
	if (st == FW_OK && !c.sft) {
		/* Plain text only: JSONL text records join the stream as documents. */
		for (int64_t k = 0; k < c.n && st == FW_OK; k++) {
			const struct fw_rt_example *ex = &c.ex[k];
			if (c.n_stream + ex->n > c.cap_stream) {
				int64_t cap = 2 * (c.n_stream + ex->n);
				uint32_t *p = realloc(c.stream, sizeof(uint32_t) * (size_t)cap);
				if (!p) {
					st = fw_errorf(err, FW_ERR_NOMEM, "out of memory");
					break;
				}
				c.stream = p;
				c.cap_stream = cap;
			}
			for (int64_t i = 0; i < ex->n; i++)
				c.stream[c.n_stream++] = (uint32_t)ex->ids[i];
		}
		if (st == FW_OK) {
			fw_rt_logf(log, FW_LOG_INFO, "%s: %lld tokens of plain text (%lld bad records "
				   "skipped), %lld sequences of %lld", what, (long long)c.n_stream,
				(long long)c.bad, (long long)((c.n_stream - 1) / T), (long long)T);
			st = fw_rt_loader_from_stream(l, paths, c.stream, c.n_stream, B, T, shuffle, seed,
						err);
			c.stream = NULL;
		}
	} else if (st == FW_OK) {
		if (c.n_stream)
			st = fw_errorf(err, FW_ERR_INVALID, "--%s mixes plain text files with SFT "
				       "JSONL records; give text as {\"text\": ...} records", what);
		struct fw_rt_rows r;
		struct fw_rt_layout_stats ls = { 0 };
		bool packed = cfg->packed;
		if (st == FW_OK)
			st = fw_rt_rows_layout(c.ex, c.n, T, packed, cfg->truncate, shuffle, seed, &r,
					       &ls, err);
		if (st == FW_OK && r.n == 0)
			st = fw_errorf(err, FW_ERR_FORMAT, "--%s: no usable examples (%lld records, "
				       "%lld bad, %lld longer than --seq-length=%lld dropped)", what,
				       (long long)c.records, (long long)c.bad, (long long)ls.dropped,
				       (long long)T);
		if (st == FW_OK) {
			fw_rt_logf(log, FW_LOG_INFO, "%s: %lld examples (%lld bad records skipped, %lld "
				   "truncated, %lld dropped as longer than %lld), %s into %lld rows, "
				   "%.1f%% of positions in the loss", what, (long long)c.n,
				(long long)c.bad, (long long)ls.truncated, (long long)ls.dropped,
				(long long)T + 1, packed ? "packed" : "padded", (long long)r.n,
				100.0 * (double)ls.loss_positions / (double)(r.n * T));
			st = fw_rt_loader_from_rows(l, &r, B, shuffle, seed, err);
		}
	}
	for (int64_t k = 0; k < c.n; k++)
		fw_rt_example_free(&c.ex[k]);
	free(c.ex);
	free(c.stream);
	free(copy);
	return st;
}

enum fw_status fw_rt_loader_check_vocab(const struct fw_rt_loader *l, const struct fw_tokenizer *tok,
				  int64_t vocab, struct fw_err *err)
{
	if (tok && fw_tokenizer_vocab_size(tok) > vocab)
		return fw_errorf(err, FW_ERR_INVALID, "the %s tokenizer has %d tokens, more than the "
				 "model's vocabulary (%lld)", fw_tokenizer_name(tok),
				 fw_tokenizer_vocab_size(tok), (long long)vocab);
	for (int i = 0; i < l->n_shards; i++) {
		const struct fw_rt_shard *s = &l->shards[i];
		if (tok && s->tok_vocab &&
		    (fw_tokenizer_vocab_size(tok) < s->tok_vocab ||
		     fw_rt_tokenizer_fingerprint(tok, s->tok_vocab) != s->tok_fingerprint))
			return fw_errorf(err, FW_ERR_INVALID, "%s was made by another tokenizer (%d "
					 "tokens) than this run's (%s, %d tokens): tokenize it with the "
					 "run's, or train with the one that made it", s->path,
					 s->tok_vocab, fw_tokenizer_name(tok),
					 fw_tokenizer_vocab_size(tok));
		for (int64_t k = 0; k < s->n_tokens; k++) {
			uint32_t t = s->tokens ? s->tokens[k] : s->tokens32[k];
			if (t >= vocab)
				return fw_errorf(err, FW_ERR_FORMAT, "%s: token %u at position %lld is "
						 "outside the vocabulary (%lld)", s->path, t,
						 (long long)k, (long long)vocab);
		}
	}
	return FW_OK;
}

void fw_rt_data_masks(const int32_t *seg, int64_t B, int64_t T, int32_t *positions, float *bias)
{
	for (int64_t b = 0; b < B; b++) {
		const int32_t *s = seg + b * T;
		int32_t p = 0;
		for (int64_t q = 0; q < T; q++) {
			p = q && s[q] == s[q - 1] ? p + 1 : 0;
			positions[b * T + q] = s[q] ? p : 0;
			float *row = bias + (b * T + q) * T;
			for (int64_t k = 0; k < T; k++)
				row[k] = s[q] && s[k] == s[q] ? 0.0f : -INFINITY;
		}
	}
}
