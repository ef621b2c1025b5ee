/* chat.c - chat prompts for generation and their stop tokens (fw/runtime/chat.h). */
#define _GNU_SOURCE             /* memmem */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fw/chat_template.h"
#include "fw/runtime/chat.h"
#include "fw/runtime/data.h"

static void add_stop(struct fw_rt_chat *c, int32_t id)
{
	if (id < 0 || fw_rt_chat_is_stop(c, id) || c->n_stop == FW_RT_CHAT_MAX_STOP)
		return;
	c->stop[c->n_stop++] = id;
}

/* The special token at text[0..) (after whitespace), or -1. */
static int32_t special_at(struct fw_tokenizer *tok, const char *text)
{
	text += strspn(text, " \t\n\r");
	size_t n = strlen(text), len = 0;
	struct fw_token_buf t = { 0 };
	struct fw_err e = { 0 };
	int32_t id = -1;
	if (n && fw_tokenizer_encode_ex(tok, text, n > 64 ? 64 : n, FW_TOKENIZE_SPLIT_SPECIAL, &t,
					&e) == FW_OK && t.n && fw_tokenizer_is_special(tok, t.ids[0])) {
		const char *b = fw_tokenizer_token(tok, t.ids[0], &len);
		if (b && len <= n && !memcmp(text, b, len))
			id = t.ids[0];
	}
	fw_token_buf_free(&t);
	return id;
}

/* The template's end of turn: the special token after a probe answer. */
static int32_t template_turn_end(const struct fw_rt_chat *c)
{
	static const char probe[] = "[{\"role\": \"user\", \"content\": \"Hi\"}, "
		"{\"role\": \"assistant\", \"content\": \"fw-probe-answer\"}]";
	struct fw_err e = { 0 };
	json_t *msgs = json_loads(probe, 0, NULL);
	char *s = msgs ? fw_chat_template_render(c->jinja, msgs, false, c->vars, &e) : NULL;
	const char *at = s ? strstr(s, "fw-probe-answer") : NULL;
	int32_t id = at ? special_at(c->tok, at + strlen("fw-probe-answer")) : -1;
	fw_free(s);
	json_decref(msgs);
	return id;
}

enum fw_status fw_rt_chat_open(struct fw_rt_chat *c, struct fw_tokenizer *tok,
			       const char *format, struct fw_err *err)
{
	*c = (struct fw_rt_chat){ .tok = tok, .im_start = -1, .im_end = -1 };
	enum fw_status st = FW_OK;
	const char *cfg = fw_tokenizer_config(tok, NULL);
	if (!strcmp(format, "auto") && cfg &&
	    (st = fw_rt_chat_template_from_config(cfg, "the tokenizer's tokenizer_config.json",
						  &c->jinja, &c->vars, err)) != FW_OK)
		return st;
	if (!strcmp(format, "chatml")) {
		struct fw_rt_encoder enc;
		if ((st = fw_rt_encoder_init(&enc, tok, true, err)) != FW_OK)
			return st;
		c->chatml = true;
		c->im_start = enc.im_start;
		c->im_end = enc.im_end;
	}
	add_stop(c, fw_tokenizer_eos(tok));
	add_stop(c, c->im_end);
	if (c->jinja) {
		const char *eos = json_string_value(json_object_get(c->vars, "eos_token"));
		add_stop(c, eos ? special_at(tok, eos) : -1);
		add_stop(c, template_turn_end(c));
	}
	return FW_OK;
}

/* Tokenizes one piece; special is a marker's text (<|im_start|>). */
static enum fw_status piece(const struct fw_rt_chat *c, const char *text, bool special,
			    struct fw_token_buf *ids, struct fw_err *err)
{
	return fw_tokenizer_encode_ex(c->tok, text, strlen(text),
				      special ? FW_TOKENIZE_SPLIT_SPECIAL : 0, ids, err);
}

/* plain and chatml: each piece tokenized alone, as fw_rt_example_from_json
 * builds a record's messages, then the assistant's header. */
static enum fw_status fw_format(const struct fw_rt_chat *c, json_t *msgs, struct fw_token_buf *ids,
				struct fw_err *err)
{
	static const char *const roles[][3] = {
		{ "system", "System:\n", "system\n" }, { "user", "User:\n", "user\n" },
		{ "assistant", "Assistant:\n", "assistant\n" },
	};
	size_t n = json_array_size(msgs);
	for (size_t i = 0; i <= n; i++) {
		json_t *m = json_array_get(msgs, i);
		const char *role = i < n ? json_string_value(json_object_get(m, "role")) : "assistant";
		const char *content = i < n ? json_string_value(json_object_get(m, "content")) : "";
		int r = -1;
		for (int k = 0; k < 3 && role; k++)
			if (!strcmp(role, roles[k][0]))
				r = k;
		if (r < 0 || !content)
			return fw_errorf(err, FW_ERR_INVALID, "chat messages[%zu]: %s", i, r < 0 ?
					 "'role' is not system, user or assistant" :
					 "'content' missing or not a string");
		/* {text, special}; the generation header ends at the role */
		const char *plain[] = { i ? "\n\n" : "", roles[r][1], content };
		const char *chatml[] = { "<|im_start|>", roles[r][2], content, "<|im_end|>", "\n" };
		const char *const *p = c->chatml ? chatml : plain;
		int np = c->chatml ? (i < n ? 5 : 2) : (i < n ? 3 : 2);
		for (int k = 0; k < np; k++) {
			enum fw_status st = piece(c, p[k], c->chatml && (k == 0 || k == 3), ids, err);
			if (st != FW_OK)
				return st;
		}
	}
	return FW_OK;
}

enum fw_status fw_rt_chat_prompt(const struct fw_rt_chat *c, const char *messages_json,
				 struct fw_token_buf *ids, struct fw_err *err)
{
	json_error_t je;
	json_t *msgs = json_loads(messages_json, 0, &je);
	enum fw_status st;
	if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
		st = fw_errorf(err, msgs ? FW_ERR_INVALID : FW_ERR_FORMAT, "chat messages: %s",
			       msgs ? "not a non-empty JSON array of messages" : je.text);
	} else if (!c->jinja) {
		st = fw_format(c, msgs, ids, err);
	} else {
		char *s = fw_chat_template_render(c->jinja, msgs, true, c->vars, err);
		st = s ? fw_tokenizer_encode_ex(c->tok, s, strlen(s), FW_TOKENIZE_SPLIT_SPECIAL, ids,
						err) : err->status;
		fw_free(s);
	}
	json_decref(msgs);
	return st;
}

bool fw_rt_chat_is_stop(const struct fw_rt_chat *c, int32_t id)
{
	for (int i = 0; i < c->n_stop; i++)
		if (c->stop[i] == id)
			return true;
	return false;
}

void fw_rt_chat_close(struct fw_rt_chat *c)
{
	fw_chat_template_free(c->jinja);
	json_decref(c->vars);
	memset(c, 0, sizeof(*c));
}
