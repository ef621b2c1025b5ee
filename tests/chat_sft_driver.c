/* chat_sft_driver.c - fw's side of tests/chat_sft.py: SFT examples from
 * conversations through a tokenizer_config.json chat template.
 *
 *   chat_sft_driver TOKENIZER_JSON TOKENIZER_CONFIG_JSON IN.jsonl OUT.jsonl
 *
 * Each input line is a record {"messages": [...]}; each output line is
 * {"ids": [...], "loss": [0/1...], "text": decode(ids)} or {"error": why}.
 *
 *   chat_sft_driver --prompt TOKENIZER_JSON IN.jsonl OUT.jsonl
 *
 * tests/chat_generate.py's side: generation prompts (fw/runtime/chat.h, auto
 * with the tokenizer_config.json beside TOKENIZER_JSON): each output line is
 * {"ids": prompt ids, "stop": the stop set} or {"error": why}.
 */
#define _GNU_SOURCE             /* getline */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fw/chat_template.h"
#include "fw/runtime/chat.h"
#include "fw/runtime/data.h"

static json_t *id_array(const int32_t *ids, size_t n)
{
	json_t *a = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, json_integer(ids[i]));
	return a;
}

static int prompts(char **argv)
{
	struct fw_err err = { 0 };
	struct fw_rt_chat c;
	struct fw_tokenizer *tok = fw_tokenizer_load_hf_json(argv[2], &err);
	FILE *in = fopen(argv[3], "r"), *out = fopen(argv[4], "w");
	if (!tok || !in || !out || fw_rt_chat_open(&c, tok, "auto", &err) != FW_OK) {
		fprintf(stderr, "chat_sft_driver: %s\n", err.status ? err.msg : "cannot open a file");
		return 1;
	}
	char *line = NULL;
	size_t cap = 0;
	while (getline(&line, &cap, in) > 0) {
		json_t *rec = json_loads(line, 0, NULL), *o = json_object();
		char *msgs = json_dumps(json_object_get(rec, "messages"), 0);
		struct fw_token_buf ids = { 0 };
		if (fw_rt_chat_prompt(&c, msgs ? msgs : "", &ids, &err) == FW_OK) {
			json_object_set_new(o, "ids", id_array(ids.ids, ids.n));
			json_object_set_new(o, "stop", id_array(c.stop, (size_t)c.n_stop));
		} else {
			json_object_set_new(o, "error", json_string(err.msg));
		}
		char *s = json_dumps(o, JSON_COMPACT);
		fprintf(out, "%s\n", s);
		free(s);
		free(msgs);
		fw_token_buf_free(&ids);
		json_decref(o);
		json_decref(rec);
	}
	free(line);
	fclose(in);
	fclose(out);
	fw_rt_chat_close(&c);
	fw_tokenizer_free(tok);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 5 && !strcmp(argv[1], "--prompt"))
		return prompts(argv);
	if (argc != 5) {
		fprintf(stderr, "usage: chat_sft_driver TOKENIZER_JSON TOKENIZER_CONFIG_JSON IN OUT\n");
		return 2;
	}
	struct fw_err err = { 0 };
	struct fw_tokenizer *tok = fw_tokenizer_load_hf_json(argv[1], &err);
	size_t len;
	char *cfg = tok ? fw_rt_read_file(argv[2], &len, &err) : NULL;
	struct fw_chat_template *tmpl = NULL;
	void *vars = NULL;
	struct fw_rt_encoder enc;
	if (!cfg || fw_rt_chat_template_from_config(cfg, argv[2], &tmpl, &vars, &err) != FW_OK ||
	    fw_rt_encoder_init(&enc, tok, false, &err) != FW_OK) {
		fprintf(stderr, "chat_sft_driver: %s\n", err.msg);
		return 1;
	}
	free(cfg);
	if (!tmpl) {
		fprintf(stderr, "chat_sft_driver: %s has no chat_template\n", argv[2]);
		return 1;
	}
	enc.jinja = tmpl;
	enc.jinja_vars = vars;
	FILE *in = fopen(argv[3], "r"), *out = fopen(argv[4], "w");
	if (!in || !out) {
		fprintf(stderr, "chat_sft_driver: cannot open %s\n", in ? argv[4] : argv[3]);
		return 1;
	}
	char *line = NULL;
	size_t cap = 0;
	while (getline(&line, &cap, in) > 0) {
		json_t *rec = json_loads(line, 0, NULL), *o = json_object();
		struct fw_rt_example ex;
		const char *why = NULL;
		if (fw_rt_example_from_json(&enc, rec, &ex, &why)) {
			json_t *ids = json_array(), *loss = json_array();
			for (int64_t i = 0; i < ex.n; i++) {
				json_array_append_new(ids, json_integer(ex.ids[i]));
				json_array_append_new(loss, json_integer(ex.loss[i]));
			}
			char *text = NULL;
			size_t tl = 0;
			if (fw_tokenizer_decode(tok, ex.ids, (size_t)ex.n, &text, &tl, &err) == FW_OK)
				json_object_set_new(o, "text", json_stringn(text, tl));
			fw_free(text);
			json_object_set_new(o, "ids", ids);
			json_object_set_new(o, "loss", loss);
			fw_rt_example_free(&ex);
		} else {
			json_object_set_new(o, "error", json_string(why));
		}
		char *s = json_dumps(o, JSON_COMPACT);
		fprintf(out, "%s\n", s);
		free(s);
		json_decref(o);
		json_decref(rec);
	}
	free(line);
	fclose(in);
	fclose(out);
	json_decref(vars);
	fw_chat_template_free(tmpl);
	fw_tokenizer_free(tok);
	return 0;
}
