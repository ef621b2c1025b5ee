/* s2s_eval.c - fwrun eval --predict-with-generate for an encoder-decoder:
 * each {"input", "target"} record of --valid-data is generated from its
 * input (greedy or --num-beams) and scored against its target text with
 * SQuAD v1.1's exact match and token F1 (fw/runtime/squad.h). */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "session.h"

struct gen_eval {
	struct session *s;
	struct s2s_gen g;
	struct fw_token_buf ids;
	int32_t *out;
	int64_t n_out;
	double em, f1;
	int64_t n;
	json_t *lines;                    /* --output's records, or NULL */
};

static enum fw_rt_action keep_token(void *user, int32_t tok)
{
	struct gen_eval *e = user;
	if (tok == e->g.o.eos)
		return FW_RT_STOP;
	e->out[e->n_out++] = tok;
	return FW_RT_CONTINUE;
}

static enum fw_status one_record(void *arg, const void *json_record, long line, const char **why,
				 struct fw_err *err)
{
	struct gen_eval *e = arg;
	json_t *in = json_object_get(json_record, "input"), *tg = json_object_get(json_record,
										   "target");
	(void)line;
	if (!json_is_string(in) || !json_is_string(tg)) {
		*why = "--predict-with-generate takes {\"input\", \"target\"} records (strings)";
		return FW_OK;
	}
	e->ids.n = 0;
	if (fw_tokenizer_encode(e->s->tok, json_string_value(in), json_string_length(in), false,
				&e->ids, err) != FW_OK)
		return err->status;
	int64_t n = (int64_t)e->ids.n < e->g.max_source ? (int64_t)e->ids.n : e->g.max_source;
	e->n_out = 0;
	char *text = NULL, *pred = NULL;
	size_t len = 0;
	double em = 0, f1 = 0;
	enum fw_status st = s2s_gen_complete(&e->g, e->ids.ids, n, keep_token, e, err);
	if (st == FW_OK)
		st = fw_tokenizer_decode(e->s->tok, e->out, (size_t)e->n_out, &text, &len, err);
	if (st == FW_OK && !(pred = fw_rt_utf8_repair(text, len)))
		st = fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	if (st == FW_OK)
		st = fw_rt_squad_score(pred, strlen(pred), json_string_value(tg),
				       json_string_length(tg), &em, &f1, err);
	if (st == FW_OK && e->lines &&
	    json_array_append_new(e->lines, json_pack("{s:O, s:O, s:s, s:f, s:f}", "input", in,
						      "target", tg, "prediction", pred,
						      "exact_match", em, "f1", f1)) != 0)
		st = fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	e->em += em;
	e->f1 += f1;
	e->n++;
	fw_free(text);
	free(pred);
	return st;
}

static enum fw_status write_lines(json_t *lines, const char *path, struct fw_err *err)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	size_t i;
	json_t *v;
	json_array_foreach(lines, i, v) {
		char *l = json_dumps(v, JSON_PRESERVE_ORDER | JSON_COMPACT);
		if (l)
			fprintf(f, "%s\n", l);
		free(l);
	}
	fclose(f);
	enum fw_status st = buf ? fw_file_write_atomic(path, buf, len, err) :
			    fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	free(buf);
	return st;
}

enum fw_status s2s_eval_generate(struct session *s, int64_t enc_len, int64_t dec_len,
				 const char *output, struct s2s_scores *out, struct fw_err *err)
{
	struct gen_eval e = { .s = s };
	const char *paths = *opt_s(s, "valid-data") ? opt_s(s, "valid-data") : opt_s(s, "data");
	if (!s->tok)
		return fw_errorf(err, FW_ERR_INVALID, "--predict-with-generate needs a tokenizer: a "
				 "checkpoint that stores one, or --tokenizer");
	/* sources as training cuts them: enc_len - 1 tokens and </s>; targets
	 * of up to dec_len tokens, </s> included */
	enum fw_status st = s2s_gen_open(&e.g, &s->cfg, &s->slots, s->load_path, s->tok,
					 enc_len - 1, dec_len, err);
	if (st == FW_OK)        /* ids past the tokenizer's (a padded vocabulary) never come */
		e.g.o.n_sample = fw_tokenizer_vocab_size(s->tok);
	if (st == FW_OK && !(e.out = malloc(sizeof(int32_t) * (size_t)dec_len)))
		st = fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	if (st == FW_OK && *output && !(e.lines = json_array()))
		st = fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	char *list = st == FW_OK ? fw_strdup(paths) : NULL;
	if (st == FW_OK && !list)
		st = fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	int64_t bad = 0;
	for (char *p = list, *next; st == FW_OK && p && *p; p = next) {
		next = strchr(p, ',');
		if (next)
			*next++ = '\0';
		st = fw_rt_jsonl_foreach(p, opt_i(s, "max-bad-records"), &bad, one_record, &e,
					 &fwrun_log, err);
	}
	if (st == FW_OK && e.n == 0)
		st = fw_errorf(err, FW_ERR_INVALID, "--predict-with-generate: %s has no {\"input\", "
			       "\"target\"} records", paths);
	if (st == FW_OK && e.lines)
		st = write_lines(e.lines, output, err);
	*out = (struct s2s_scores){ .exact_match = e.n ? 100.0 * e.em / (double)e.n : 0,
				    .f1 = e.n ? 100.0 * e.f1 / (double)e.n : 0, .records = e.n };
	fw_free(list);
	json_decref(e.lines);
	free(e.out);
	fw_token_buf_free(&e.ids);
	s2s_gen_close(&e.g);
	return st;
}
