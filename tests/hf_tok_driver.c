/* hf_tok_driver.c - fw's side of tests/hf_tokenizers.py.
 *
 *   hf_tok_driver TOKENIZER_JSON IN.jsonl OUT.jsonl [--roundtrip]
 *
 * Loads the tokenizer with fw_tokenizer_load_hf_json (with --roundtrip:
 * then through fw_tokenizer_serialize/deserialize, as a checkpoint stores
 * it) and, for each {"text": ...} line of IN, writes one line
 * {"plain": ids, "special": ids, "decoded": text, "offsets": [[start, end],
 * ...]}: plain is Hugging Face's encode(text, add_special_tokens=False)
 * (specials matched, no post-processor), special is add_special_tokens=True,
 * decoded is decode(special, skip_special_tokens=False), offsets are the
 * byte offsets of special's tokens from fw_tokenizer_encode_pair with
 * FW_TOKENIZE_OFFSETS, and "offsets_ids" its ids. Exit 1 with one line on
 * error.
 *
 *   hf_tok_driver TOKENIZER_JSON IN.jsonl OUT.jsonl --pairs
 *
 * For each {"a", "b" (null: single), "add", "trunc": null or {"max",
 * "strategy": "LongestFirst"|"OnlyFirst"|"OnlySecond", "direction":
 * "left"|"right"}, "pad": null or {"max" (absent: longest), "direction",
 * "multiple", "id", "type_id"}, "file": true for the tokenizer.json's own
 * truncation and padding instead} line: fw_tokenizer_encode_pair's
 * {"ids", "type_ids", "attention_mask", "special_tokens_mask"}, or
 * {"error": message}.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fw/tokenizer.h"

static json_t *ids_json(const struct fw_token_buf *b)
{
	json_t *a = json_array();
	for (size_t i = 0; a && i < b->n; i++)
		json_array_append_new(a, json_integer(b->ids[i]));
	return a;
}

static json_t *u32_json(const uint32_t *v, size_t n)
{
	json_t *a = json_array();
	for (size_t i = 0; a && i < n; i++)
		json_array_append_new(a, json_integer(v[i]));
	return a;
}

static json_t *u8_json(const uint8_t *v, size_t n)
{
	json_t *a = json_array();
	for (size_t i = 0; a && i < n; i++)
		json_array_append_new(a, json_integer(v[i]));
	return a;
}

static json_t *offsets_json(const struct fw_encoding *e)
{
	json_t *a = json_array();
	for (size_t i = 0; a && i < e->n; i++)
		json_array_append_new(a, json_pack("[II]", (json_int_t)e->offsets[i].start,
						   (json_int_t)e->offsets[i].end));
	return a;
}

static json_t *pair_line(struct fw_tokenizer *t, json_t *rec)
{
	struct fw_encode_options o = { 0 };
	json_t *a = json_object_get(rec, "a"), *b = json_object_get(rec, "b");
	json_t *tr = json_object_get(rec, "trunc"), *pd = json_object_get(rec, "pad");
	o.flags = FW_TOKENIZE_SPLIT_SPECIAL | FW_TOKENIZE_OFFSETS |
		  (json_is_true(json_object_get(rec, "file")) ? FW_TOKENIZE_FILE_OPTIONS : 0) |
		  (json_is_true(json_object_get(rec, "add")) ? FW_TOKENIZE_ADD_SPECIAL : 0);
	if (json_is_object(tr)) {
		const char *s = json_string_value(json_object_get(tr, "strategy"));
		const char *d = json_string_value(json_object_get(tr, "direction"));
		s = s ? s : "";
		o.truncation = !strcmp(s, "OnlyFirst") ? FW_TRUNCATE_ONLY_FIRST :
			       !strcmp(s, "OnlySecond") ? FW_TRUNCATE_ONLY_SECOND :
			       FW_TRUNCATE_LONGEST_FIRST;
		o.max_length = (size_t)json_integer_value(json_object_get(tr, "max"));
		o.truncate_left = d && !strcmp(d, "left");
	}
	/* the reference's Fixed(0) pads nothing, even to a multiple */
	json_t *fixed = json_object_get(pd, "max");
	if (json_is_object(pd) && !(fixed && json_integer_value(fixed) == 0)) {
		const char *d = json_string_value(json_object_get(pd, "direction"));
		o.pad = true;
		o.pad_length = (size_t)json_integer_value(json_object_get(pd, "max"));
		o.pad_multiple = (size_t)json_integer_value(json_object_get(pd, "multiple"));
		o.pad_left = d && !strcmp(d, "left");
		o.pad_id = (int32_t)json_integer_value(json_object_get(pd, "id"));
		o.pad_type_id = (uint32_t)json_integer_value(json_object_get(pd, "type_id"));
	}
	struct fw_encoding e = { 0 };
	struct fw_err err = { 0 };
	json_t *res = json_object();
	if (fw_tokenizer_encode_pair(t, json_string_value(a), json_string_length(a),
				     json_is_string(b) ? json_string_value(b) : NULL,
				     json_string_length(b), &o, &e, &err) != FW_OK) {
		json_object_set_new(res, "error", json_string(err.msg));
		return res;
	}
	json_object_set_new(res, "ids", ids_json(&(struct fw_token_buf){ e.ids, e.n, e.n }));
	json_object_set_new(res, "type_ids", u32_json(e.type_ids, e.n));
	json_object_set_new(res, "attention_mask", u8_json(e.attention_mask, e.n));
	json_object_set_new(res, "special_tokens_mask", u8_json(e.special_tokens_mask, e.n));
	json_object_set_new(res, "offsets", offsets_json(&e));
	fw_encoding_free(&e);
	return res;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: hf_tok_driver TOKENIZER_JSON IN.jsonl OUT.jsonl [--roundtrip|--pairs]\n");
		return 2;
	}
	struct fw_err err = { 0 };
	struct fw_tokenizer *t = fw_tokenizer_load_hf_json(argv[1], &err);
	if (!t) {
		fprintf(stderr, "%s\n", err.msg);
		return 1;
	}
	if (argc > 4 && !strcmp(argv[4], "--roundtrip")) {
		char *s = fw_tokenizer_serialize(t, &err);
		struct fw_tokenizer *u = s ? fw_tokenizer_deserialize(s, strlen(s), "stored", &err) : NULL;
		fw_free(s);
		fw_tokenizer_free(t);
		if (!u) {
			fprintf(stderr, "%s\n", err.msg);
			return 1;
		}
		t = u;
	}
	FILE *in = fopen(argv[2], "r"), *out = fopen(argv[3], "w");
	if (!in || !out) {
		fprintf(stderr, "hf_tok_driver: cannot open %s or %s\n", argv[2], argv[3]);
		return 1;
	}
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	int rc = 0;
	bool pairs = argc > 4 && !strcmp(argv[4], "--pairs");
	while ((n = getline(&line, &cap, in)) > 0) {
		json_error_t je;
		json_t *rec = json_loadb(line, (size_t)n, JSON_ALLOW_NUL, &je);
		if (pairs) {
			json_t *o = rec ? pair_line(t, rec) : NULL;
			char *txt = o ? json_dumps(o, JSON_COMPACT) : NULL;
			fprintf(out, "%s\n", txt ? txt : "{}");
			free(txt);
			json_decref(o);
			json_decref(rec);
			continue;
		}
		json_t *tx = json_object_get(rec, "text");
		if (!json_is_string(tx)) {
			fprintf(stderr, "hf_tok_driver: bad input line: %s\n", je.text);
			rc = 1;
			break;
		}
		struct fw_token_buf a = { 0 }, b = { 0 };
		struct fw_encoding e = { 0 };
		const struct fw_encode_options eo = { .flags = FW_TOKENIZE_SPLIT_SPECIAL |
			FW_TOKENIZE_ADD_SPECIAL | FW_TOKENIZE_OFFSETS };
		char *dec = NULL;
		size_t dl = 0;
		if (fw_tokenizer_encode_pair(t, json_string_value(tx), json_string_length(tx), NULL, 0,
					     &eo, &e, &err) != FW_OK ||
		    fw_tokenizer_encode_ex(t, json_string_value(tx), json_string_length(tx),
					   FW_TOKENIZE_SPLIT_SPECIAL, &a, &err) != FW_OK ||
		    fw_tokenizer_encode_ex(t, json_string_value(tx), json_string_length(tx),
					   FW_TOKENIZE_SPLIT_SPECIAL | FW_TOKENIZE_ADD_SPECIAL, &b,
					   &err) != FW_OK ||
		    fw_tokenizer_decode(t, b.ids, b.n, &dec, &dl, &err) != FW_OK) {
			fprintf(stderr, "%s\n", err.msg);
			rc = 1;
		}
		json_t *o = json_object();
		json_object_set_new(o, "plain", ids_json(&a));
		json_object_set_new(o, "special", ids_json(&b));
		json_t *d = dec ? json_stringn(dec, dl) : NULL;
		json_object_set_new(o, "decoded", d ? d : json_string("<invalid UTF-8>"));
		json_object_set_new(o, "offsets", offsets_json(&e));
		json_object_set_new(o, "offsets_ids", ids_json(&(struct fw_token_buf){ e.ids, e.n, e.n }));
		fw_encoding_free(&e);
		char *txt = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
		fprintf(out, "%s\n", txt ? txt : "{}");
		free(txt);
		json_decref(o);
		json_decref(rec);
		fw_free(dec);
		fw_token_buf_free(&a);
		fw_token_buf_free(&b);
		if (rc)
			break;
	}
	free(line);
	fclose(in);
	fclose(out);
	fw_tokenizer_free(t);
	return rc;
}
