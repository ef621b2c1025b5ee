/* hf_tok_driver.c - fw's side of tests/hf_tokenizers.py.
 *
 *   hf_tok_driver TOKENIZER_JSON IN.jsonl OUT.jsonl [--roundtrip]
 *
 * Loads the tokenizer with fw_tokenizer_load_hf_json (with --roundtrip:
 * then through fw_tokenizer_serialize/deserialize, as a checkpoint stores
 * it) and, for each {"text": ...} line of IN, writes one line
 * {"plain": ids, "special": ids, "decoded": text}: plain is Hugging Face's
 * encode(text, add_special_tokens=False) (specials matched, no
 * post-processor), special is add_special_tokens=True, decoded is
 * decode(special, skip_special_tokens=False). Exit 1 with one line on error.
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

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: hf_tok_driver TOKENIZER_JSON IN.jsonl OUT.jsonl [--roundtrip]\n");
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
	while ((n = getline(&line, &cap, in)) > 0) {
		json_error_t je;
		json_t *rec = json_loadb(line, (size_t)n, JSON_ALLOW_NUL, &je);
		json_t *tx = json_object_get(rec, "text");
		if (!json_is_string(tx)) {
			fprintf(stderr, "hf_tok_driver: bad input line: %s\n", je.text);
			rc = 1;
			break;
		}
		struct fw_token_buf a = { 0 }, b = { 0 };
		char *dec = NULL;
		size_t dl = 0;
		if (fw_tokenizer_encode_ex(t, json_string_value(tx), json_string_length(tx),
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
