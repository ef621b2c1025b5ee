/* score.c - scoring JSONL records (fw/runtime/score.h; fwrun eval --score-data): log-likelihood of responses and
 * multiple-choice accuracy from JSONL records (docs/training.md, "Eval").
 *
 * A {"prompt", "response"} record (or "messages", or "text") is tokenized by
 * fw_rt_example_from_json and scored on exactly the tokens the SFT loss uses: the
 * response and the EOS after it. A {"prompt", "choices", "answer"} record
 * gives one sequence per choice, prompt then choice, scored on the choice's
 * tokens (no EOS), as lm-evaluation-harness does.
 *
 * Each sequence takes one row of a micro-batch, padded on the right: with
 * causal attention padding never reaches earlier positions, and only real
 * positions of the logits are read. log p is a log-softmax of the logits
 * row, in double precision.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fw/graph.h"
#include "fw/runtime/score.h"

/* --- reading JSONL ----------------------------------------------------------------------- */

/* --- records ------------------------------------------------------------------------------- */

struct seq {                  /* one row: a response, or one choice */
	struct fw_rt_example ex;    /* ex.loss marks the scored tokens */
	size_t chars;         /* a choice's characters (code points), for acc_norm */
	double logprob;       /* sum of log p over the scored tokens */
	int64_t n_scored;
};

struct rec {
	long line;
	int n_choices;        /* 0: a response */
	int answer;
	int64_t first;        /* its first sequence; -1: too long, not scored */
};

struct scoring {
	struct fw_rt_encoder enc;
	int64_t T;
	struct seq *seq;
	int64_t n_seq, cap_seq;
	struct rec *rec;
	int64_t n_rec, cap_rec;
	int64_t too_long;
};

static bool grow(void **p, int64_t *cap, int64_t n, size_t size)
{
	if (n < *cap)
		return true;
	int64_t c = *cap ? 2 * *cap : 64;
	void *q = realloc(*p, size * (size_t)c);
	if (!q)
		return false;
	*p = q;
	*cap = c;
	return true;
}

/* Code points of UTF-8 text: bytes that do not continue a sequence. */
static size_t utf8_chars(const char *s)
{
	size_t n = 0;
	for (; *s; s++)
		n += ((unsigned char)*s & 0xC0) != 0x80;
	return n;
}

static bool add_seq(struct scoring *sc, struct fw_rt_example *ex, size_t chars)
{
	if (!grow((void **)&sc->seq, &sc->cap_seq, sc->n_seq, sizeof(*sc->seq)))
		return false;
	sc->seq[sc->n_seq++] = (struct seq){ .ex = *ex, .chars = chars };
	return true;
}

static void drop_seqs(struct scoring *sc, int64_t from)
{
	while (sc->n_seq > from)
		fw_rt_example_free(&sc->seq[--sc->n_seq].ex);
}

/* A multiple-choice record's fields, or why it is bad. */
static bool choice_fields(json_t *r, const char **why)
{
	static _Thread_local char buf[96];    /* why a record is bad */
	json_t *prompt = json_object_get(r, "prompt"), *choices = json_object_get(r, "choices");
	json_t *answer = json_object_get(r, "answer");
	size_t i;
	json_t *c;
	if (!prompt || !json_is_string(prompt) || !*json_string_value(prompt))
		return *why = !prompt ? "'prompt' is missing" : !json_is_string(prompt) ?
			      "'prompt' is not a string" : "'prompt' is empty", false;
	if (!choices)
		return *why = "'choices' is missing", false;
	if (!json_is_array(choices) || json_array_size(choices) < 2)
		return *why = "'choices' is not an array of at least 2 strings", false;
	json_array_foreach(choices, i, c) {
		if (!json_is_string(c) || !*json_string_value(c)) {
			snprintf(buf, sizeof(buf), "choices[%zu] is %s", i,
				 json_is_string(c) ? "empty" : "not a string");
			return *why = buf, false;
		}
	}
	if (!answer)
		return *why = "'answer' is missing", false;
	if (!json_is_integer(answer))
		return *why = "'answer' is not an integer", false;
	if (json_integer_value(answer) < 0 ||
	    json_integer_value(answer) >= (json_int_t)json_array_size(choices)) {
		snprintf(buf, sizeof(buf), "'answer' is %lld, not a choice index 0..%zu",
			 (long long)json_integer_value(answer), json_array_size(choices) - 1);
		return *why = buf, false;
	}
	return true;
}

static enum fw_status add_record(void *arg, const void *record, long line, const char **why,
				 struct fw_err *err)
{
	struct scoring *sc = arg;
	json_t *r = (json_t *)record;
	int64_t first = sc->n_seq;
	struct rec rc = { .line = line, .first = first };
	struct fw_rt_example ex;
	bool choice = json_is_object(r) &&
		      (json_object_get(r, "choices") || json_object_get(r, "answer"));
	if (choice) {
		if (!choice_fields(r, why))
			return FW_OK;
		json_t *choices = json_object_get(r, "choices"), *c;
		size_t i;
		rc.n_choices = (int)json_array_size(choices);
		rc.answer = (int)json_integer_value(json_object_get(r, "answer"));
		json_array_foreach(choices, i, c) {
			/* The choice as a response: the same encoding, less the EOS. */
			json_t *pair = json_pack("{s:O, s:O}", "prompt", json_object_get(r, "prompt"),
						 "response", c);
			bool ok = pair && fw_rt_example_from_json(&sc->enc, pair, &ex, why);
			json_decref(pair);
			if (ok)
				ex.n--;
			if (!ok || !add_seq(sc, &ex, utf8_chars(json_string_value(c)))) {
				if (ok)
					fw_rt_example_free(&ex);
				drop_seqs(sc, first);
				return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
			}
		}
	} else {
		if (!fw_rt_example_from_json(&sc->enc, r, &ex, why))
			return FW_OK;
		if (ex.loss[0]) {          /* nothing before the first response token */
			fw_rt_example_free(&ex);
			return *why = "'prompt' is empty", FW_OK;
		}
		if (!add_seq(sc, &ex, 0)) {
			fw_rt_example_free(&ex);
			return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
		}
	}
	for (int64_t k = first; k < sc->n_seq; k++)
		if (sc->seq[k].ex.n - 1 > sc->T)
			rc.first = -1;         /* a row holds seq-length + 1 tokens */
	if (rc.first < 0) {
		drop_seqs(sc, first);
		sc->too_long++;
	}
	if (!grow((void **)&sc->rec, &sc->cap_rec, sc->n_rec, sizeof(*sc->rec)))
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	sc->rec[sc->n_rec++] = rc;
	return FW_OK;
}

/* --- running the model ----------------------------------------------------------------------- */

/* log softmax(logits[b, t, :])[target], in double precision. */
static double log_prob(const struct fw_tensor *lg, int64_t b, int64_t t, int32_t target)
{
	const float *row = (const float *)lg->data + b * lg->nb[0] + t * lg->nb[1];
	int64_t V = lg->ne[2], st = lg->nb[2];
	double mx = -INFINITY, sum = 0;
	for (int64_t v = 0; v < V; v++)
		mx = fmax(mx, (double)row[v * st]);
	for (int64_t v = 0; v < V; v++)
		sum += exp((double)row[v * st] - mx);
	return (double)row[target * st] - mx - log(sum);
}

static enum fw_status run_rows(struct scoring *sc, struct fw_model *m, struct fw_graph *g,
			       struct fw_err *err)
{
	int64_t B = m->batch, T = m->seq_len;
	const struct fw_tensor *lg = m->logits;
	if (!lg || lg->dtype != FW_F32 || lg->ndim != 3 || lg->ne[0] != B || lg->ne[1] != T)
		return fw_errorf(err, FW_ERR_UNSUPPORTED, "scoring needs f32 logits of shape "
				 "(%lld, %lld, vocab) from the arch", (long long)B, (long long)T);
	int32_t *seg = malloc(sizeof(int32_t) * (size_t)(B * T));
	if (!seg)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	int32_t *tokens = m->tokens->data, *targets = m->targets->data;
	for (int64_t s0 = 0; s0 < sc->n_seq; s0 += B) {
		int64_t rows = sc->n_seq - s0 < B ? sc->n_seq - s0 : B;
		for (int64_t b = 0; b < B; b++) {
			const struct fw_rt_example *ex = b < rows ? &sc->seq[s0 + b].ex : NULL;
			int64_t n = ex ? ex->n - 1 : 0;            /* positions used */
			for (int64_t i = 0; i < T; i++) {
				tokens[b * T + i] = i < n ? ex->ids[i] : 0;
				targets[b * T + i] = i < n && ex->loss[i + 1] ? ex->ids[i + 1] : -1;
				seg[b * T + i] = i < n;
			}
		}
		if (m->positions && m->attn_bias)
			fw_rt_data_masks(seg, B, T, m->positions->data, m->attn_bias->data);
		if (fw_graph_forward(g) != FW_OK) {
			free(seg);
			return fw_errorf(err, FW_ERR_INTERNAL, "score: %s", fw_ctx_err(m->ctx)->msg);
		}
		#pragma omp parallel for schedule(dynamic)
		for (int64_t b = 0; b < rows; b++) {
			struct seq *s = &sc->seq[s0 + b];
			for (int64_t i = 0; i + 1 < s->ex.n; i++) {
				if (!s->ex.loss[i + 1])
					continue;
				s->logprob += log_prob(lg, b, i, s->ex.ids[i + 1]);
				s->n_scored++;
			}
		}
	}
	free(seg);
	return FW_OK;
}

/* --- the report -------------------------------------------------------------------------------- */

static void put_num(FILE *f, double x)
{
	if (isfinite(x))
		fprintf(f, "%.9g", x);
	else
		fputs("null", f);
}

/* The choice with the largest log-likelihood (per byte of its text with
 * per_byte), the first on ties. */
static int argmax(const struct seq *s, int n, bool per_byte)
{
	int best = 0;
	for (int i = 1; i < n; i++) {
		double a = s[i].logprob, b = s[best].logprob;
		if (per_byte) {
			a /= (double)s[i].chars;
			b /= (double)s[best].chars;
		}
		if (a > b)
			best = i;
	}
	return best;
}

static void put_record(FILE *f, const struct scoring *sc, const struct rec *r)
{
	const struct seq *s = r->first >= 0 ? &sc->seq[r->first] : NULL;
	fprintf(f, "{\"line\": %ld, ", r->line);
	if (!s) {
		fputs("\"too_long\": true}", f);
	} else if (!r->n_choices) {
		fputs("\"logprob\": ", f);
		put_num(f, s->logprob);
		fprintf(f, ", \"tokens\": %lld}", (long long)s->n_scored);
	} else {
		fputs("\"logprobs\": [", f);
		for (int i = 0; i < r->n_choices; i++) {
			fputs(i ? ", " : "", f);
			put_num(f, s[i].logprob);
		}
		fputs("], \"chars\": [", f);
		for (int i = 0; i < r->n_choices; i++)
			fprintf(f, "%s%zu", i ? ", " : "", s[i].chars);
		fprintf(f, "], \"pred\": %d, \"pred_norm\": %d, \"answer\": %d}",
			argmax(s, r->n_choices, false), argmax(s, r->n_choices, true), r->answer);
	}
}

/* The results as JSON object members: totals first, then one entry a record. */
static char *report(const struct scoring *sc, const char *path, int64_t n_bad,
		    const struct fw_rt_log *log)
{
	int64_t n_resp = 0, n_tok = 0, n_choice = 0, acc = 0, acc_norm = 0;
	double sum = 0;
	for (int64_t k = 0; k < sc->n_rec; k++) {
		const struct rec *r = &sc->rec[k];
		if (r->first < 0)
			continue;
		const struct seq *s = &sc->seq[r->first];
		if (!r->n_choices) {
			n_resp++;
			n_tok += s->n_scored;
			sum += s->logprob;
		} else {
			n_choice++;
			acc += argmax(s, r->n_choices, false) == r->answer;
			acc_norm += argmax(s, r->n_choices, true) == r->answer;
		}
	}
	fw_rt_logf(log, FW_LOG_INFO, "score-data: %lld records scored (%lld responses, %lld "
		   "multiple choice), %lld bad records skipped, %lld longer than %lld tokens skipped",
		(long long)(n_resp + n_choice), (long long)n_resp, (long long)n_choice,
		(long long)n_bad, (long long)sc->too_long, (long long)sc->T + 1);

	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f)
		return NULL;
	json_t *name = json_string(path);
	char *quoted = name ? json_dumps(name, JSON_ENCODE_ANY) : NULL;
	json_decref(name);
	fprintf(f, "\"score_data\": %s, \"bad_records\": %lld, \"too_long\": %lld, "
		"\"response\": {\"records\": %lld, \"tokens\": %lld, \"mean_logprob\": ",
		quoted ? quoted : "null", (long long)n_bad, (long long)sc->too_long,
		(long long)n_resp, (long long)n_tok);
	free(quoted);
	put_num(f, n_tok ? sum / (double)n_tok : NAN);
	fputs(", \"mean_sum_logprob\": ", f);
	put_num(f, n_resp ? sum / (double)n_resp : NAN);
	fputs(", \"perplexity\": ", f);
	put_num(f, n_tok ? exp(-sum / (double)n_tok) : NAN);
	fprintf(f, "}, \"choice\": {\"records\": %lld, \"acc\": ", (long long)n_choice);
	put_num(f, n_choice ? (double)acc / (double)n_choice : NAN);
	fputs(", \"acc_norm\": ", f);
	put_num(f, n_choice ? (double)acc_norm / (double)n_choice : NAN);
	fputs("}, \"scores\": [", f);
	for (int64_t k = 0; k < sc->n_rec; k++) {
		fputs(k ? ", " : "", f);
		put_record(f, sc, &sc->rec[k]);
	}
	fputs("]", f);
	if (fclose(f) != 0) {
		free(buf);
		return NULL;
	}
	return buf;
}

enum fw_status fw_rt_score_file(const char *path, const struct fw_rt_score_config *cfg,
				struct fw_tokenizer *tok, struct fw_model *m, struct fw_graph *g,
				const struct fw_rt_log *log, char **json, struct fw_err *err)
{
	struct scoring sc = { .T = m->seq_len };
	enum fw_status est = fw_rt_encoder_init(&sc.enc, tok, cfg->chatml, err);
	if (est != FW_OK)
		return est;
	sc.enc.jinja = cfg->jinja;
	sc.enc.jinja_vars = cfg->jinja_vars;
	int64_t n_bad = 0;
	*json = NULL;
	enum fw_status st = fw_rt_jsonl_foreach(path, cfg->max_bad, &n_bad, add_record, &sc, log,
						err);
	if (st == FW_OK && sc.n_seq == 0)
		st = fw_errorf(err, FW_ERR_FORMAT, "%s: no records to score (%lld bad, %lld longer "
			       "than --seq-length=%lld + 1 tokens)", path, (long long)n_bad,
			       (long long)sc.too_long, (long long)sc.T);
	if (st == FW_OK)
		st = run_rows(&sc, m, g, err);
	if (st == FW_OK && !(*json = report(&sc, path, n_bad, log)))
		st = fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	drop_seqs(&sc, 0);
	free(sc.seq);
	free(sc.rec);
	return st;
}
