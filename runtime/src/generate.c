/* generate.c - decoding with a KV cache (fw/runtime/generate.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw/runtime/generate.h"

void fw_rt_decoder_close(struct fw_rt_decoder *d)
{
	fw_graph_free(d->g);
	fw_ctx_free(d->ctx);
	free(d->caches);
	free(d->cands);
	free(d->scores);
	free(d->seen);
	memset(d, 0, sizeof(*d));
}

/* The decoding model with caches of cache_len positions, up to its graph. */
static enum fw_status build(struct fw_rt_decoder *d, const struct fw_plugin_slots *plugins,
			    int rows, int64_t cache_len, uint64_t seed, enum fw_dtype precision,
			    struct fw_err *err)
{
	d->rows = rows;
	d->n_layers = fw_rt_model_n_layers(plugins);
	if (d->n_layers <= 0)
		return fw_errorf(err, FW_ERR_UNSUPPORTED,
				 "generate: the arch plugin does not support generation");
	d->ctx = fw_ctx_new();
	d->caches = calloc((size_t)d->n_layers, sizeof(*d->caches));
	if (!d->ctx || !d->caches)
		return fw_errorf(err, FW_ERR_NOMEM, "generate: out of memory");
	if (fw_ctx_set_autocast(d->ctx, precision) != FW_OK)
		return fw_errorf(err, FW_ERR_INVALID, "generate: %s", fw_ctx_err(d->ctx)->msg);
	d->len = fw_input(d->ctx, "gen.len", FW_I32, 1, (int64_t[]){ 1 });
	d->mask = fw_input(d->ctx, "gen.mask", FW_F32, 1, (int64_t[]){ cache_len });
	for (int l = 0; l < d->n_layers; l++)
		d->caches[l] = (struct fw_kv_cache){ .len = d->len, .mask = d->mask,
						     .max_len = cache_len };
	return fw_rt_model_build(&(struct fw_rt_model_spec){
		.plugins = plugins, .batch = rows, .seed = seed, .caches = d->caches,
		.n_caches = d->n_layers },
		d->ctx, &d->m, err);
}

/* Key/value prefix rows (prefix tuning) in front of every cache: the
 * plugin writes them each step, the tokens come after them. */
static int64_t prefix_rows(const struct fw_model *m)
{
	return FW_HAS(m, n_prefix) ? m->n_prefix : 0;
}

enum fw_status fw_rt_decoder_virtual(const struct fw_plugin_slots *plugins, int64_t *n_virtual,
				     struct fw_err *err)
{
	struct fw_rt_decoder d;
	memset(&d, 0, sizeof(d));
	enum fw_status st = build(&d, plugins, 1, 1, 0, FW_F32, err);
	*n_virtual = st == FW_OK && d.m.virtual_select ? d.m.virtual_select->ne[1] - 1 : 0;
	*n_virtual += st == FW_OK ? prefix_rows(&d.m) : 0;
	fw_rt_decoder_close(&d);
	return st;
}

enum fw_status fw_rt_decoder_open(struct fw_rt_decoder *d, const struct fw_plugin_slots *plugins,
				  int64_t max_len, uint64_t seed, struct fw_err *err)
{
	return fw_rt_decoder_open_as(d, plugins, 1, max_len, seed, FW_F32, err);
}

enum fw_status fw_rt_decoder_open_rows(struct fw_rt_decoder *d,
				       const struct fw_plugin_slots *plugins, int rows,
				       int64_t max_len, uint64_t seed, struct fw_err *err)
{
	return fw_rt_decoder_open_as(d, plugins, rows, max_len, seed, FW_F32, err);
}

enum fw_status fw_rt_decoder_open_as(struct fw_rt_decoder *d,
				     const struct fw_plugin_slots *plugins, int rows,
				     int64_t max_len, uint64_t seed, enum fw_dtype precision,
				     struct fw_err *err)
{
	memset(d, 0, sizeof(*d));
	if (rows < 1)
		return fw_errorf(err, FW_ERR_INVALID, "generate: %d rows (at least 1)", rows);
	enum fw_status st = build(d, plugins, rows, max_len, seed, precision, err);
	/* Virtual tokens (prompt tuning) take the first cache positions: the
	 * model is built again with room for them. */
	int64_t P = st == FW_OK && d->m.virtual_select ? d->m.virtual_select->ne[1] - 1 : 0;
	int64_t S = st == FW_OK ? prefix_rows(&d->m) : 0;
	if (P + S > 0) {
		fw_rt_decoder_close(d);
		struct fw_err e = { 0 };
		if ((st = build(d, plugins, rows, max_len + P + S, seed, precision, &e)) != FW_OK)
			fw_errorf(err, st, "generate: %lld %s and %lld positions: %s",
				  (long long)(P + S), P ? "virtual tokens" : "prefix rows",
				  (long long)max_len, e.msg);
	}
	if (st != FW_OK) {
		fw_rt_decoder_close(d);
		return st;
	}
	d->max_len = max_len;
	d->n_virtual = P;
	d->g = fw_graph_new(d->ctx, &d->m.logits, 1, &(struct fw_graph_opts){ 0 });
	if (!d->g) {
		st = fw_errorf(err, fw_ctx_err(d->ctx)->status, "graph: %s", fw_ctx_err(d->ctx)->msg);
		fw_rt_decoder_close(d);
		return st;
	}
	d->V = (int)d->m.logits->ne[d->m.logits->ndim - 1];
	d->cands = malloc(sizeof(*d->cands) * (size_t)d->V);
	d->scores = malloc(sizeof(*d->scores) * (size_t)d->V);
	d->seen = malloc((size_t)d->V * (size_t)rows);
	if (!d->cands || !d->scores || !d->seen) {
		fw_rt_decoder_close(d);
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	}
	return FW_OK;
}

/* Row r's ids checked against the cache and the vocabulary. */
static enum fw_status check_row(const struct fw_rt_decoder *d, const struct fw_rt_gen_row *row,
				int r, int64_t max_new, struct fw_err *err)
{
	char at[32] = "";
	if (d->rows > 1)
		snprintf(at, sizeof(at), "row %d: ", r);
	if (row->n <= 0 || !row->prompt)
		return fw_errorf(err, FW_ERR_INVALID, "generate: %san empty prompt", at);
	if (max_new < 0 || row->n + max_new > d->max_len)
		return fw_errorf(err, FW_ERR_INVALID, "generate: %s%lld prompt and %lld new tokens, "
				 "more than the cache holds (%lld)", at, (long long)row->n,
				 (long long)max_new, (long long)d->max_len);
	for (int64_t i = 0; i < row->n; i++)
		if (row->prompt[i] < 0 || row->prompt[i] >= d->V)
			return fw_errorf(err, FW_ERR_INVALID, "prompt: %stoken %d is outside the "
					 "vocabulary (%d)", at, row->prompt[i], d->V);
	int64_t K = d->n_virtual ? d->m.virtual_at : 0;
	if (K > row->n)
		return fw_errorf(err, FW_ERR_INVALID, "generate: %sthe virtual tokens stand after "
				 "prompt token %lld, and the prompt has %lld", at, (long long)K,
				 (long long)row->n);
	return FW_OK;
}

/* log softmax(x[0..n))[at] */
static float log_prob(const float *x, int n, int at)
{
	return (float)((double)x[at] - fw_rt_logsumexp(x, n));
}

enum fw_status fw_rt_generate_rows(struct fw_rt_decoder *d, const struct fw_rt_gen_row *rows,
				   int n_rows, const struct fw_rt_gen_opts *o,
				   fw_rt_row_token_fn on_token, void *user, struct fw_err *err)
{
	if (n_rows < 1 || n_rows > d->rows)
		return fw_errorf(err, FW_ERR_INVALID, "generate: %d prompts for a decoder of %d "
				 "rows", n_rows, d->rows);
	for (int r = 0; r < n_rows; r++) {
		int64_t mn = rows[r].max_new > 0 ? rows[r].max_new : o->max_new;
		if (check_row(d, &rows[r], r, mn, err) != FW_OK)
			return err->status;
	}
	int R = d->rows, V = d->V;
	int n_sample = o->n_sample > 0 && o->n_sample < V ? o->n_sample : V;
	int64_t *made = calloc((size_t)R, sizeof(*made));
	int32_t *next = calloc((size_t)R, sizeof(*next));      /* each row's next sampled id */
	bool *done = malloc(sizeof(*done) * (size_t)R);
	if (!made || !next || !done) {
		free(made);
		free(next);
		free(done);
		return fw_errorf(err, FW_ERR_NOMEM, "generate: out of memory");
	}
	float *mk = d->mask->data;
	int64_t P = d->n_virtual;
	float *sel = P ? d->m.virtual_select->data : NULL;
	int32_t *tokens = d->m.tokens->data;
	int64_t S = prefix_rows(&d->m);                 /* cache rows 0..S-1, seen by all */
	for (int64_t j = 0; j < d->mask->ne[0]; j++)    /* an empty cache */
		mk[j] = j < S ? 0.0f : -INFINITY;
	memset(d->seen, 0, (size_t)V * (size_t)R);
	for (int r = 0; r < R; r++) {
		done[r] = r >= n_rows;          /* rows past n_rows idle on token 0 */
		for (int64_t i = 0; r < n_rows && i < rows[r].n; i++)
			d->seen[(size_t)r * V + rows[r].prompt[i]] = 1;
	}
	/* The virtual tokens stand before prompt token K (0: in front); they
	 * take cache positions K..K+P-1 of every row. */
	int64_t K = P ? d->m.virtual_at : 0;
	enum fw_status st = FW_OK;
	int active = 0;
	for (int r = 0; r < n_rows; r++) {
		done[r] = (rows[r].max_new > 0 ? rows[r].max_new : o->max_new) <= 0;
		active += !done[r];
	}
	for (int64_t q = 0; active > 0; q++) {
		bool virt = q >= K && q < K + P;
		int64_t p = q < K ? q : q - P;           /* the real token's position */
		*(int32_t *)d->len->data = (int32_t)(S + q);
		mk[S + q] = 0.0f;
		for (int r = 0; r < R; r++)
			tokens[r] = virt || done[r] ? 0 : p < rows[r].n ? rows[r].prompt[p] : next[r];
		if (P) {
			memset(sel, 0, sizeof(float) * (size_t)(P + 1));
			sel[virt ? q - K : P] = 1.0f;
		}
		if (fw_graph_forward(d->g) != FW_OK) {
			st = fw_errorf(err, FW_ERR_INTERNAL, "generate: %s", fw_ctx_err(d->ctx)->msg);
			break;
		}
		const float *logits = d->m.logits->data;     /* (rows, 1, V) */
		for (int r = 0; r < n_rows; r++) {
			if (done[r] || q + 1 < rows[r].n + P)   /* prefill */
				continue;
			const float *lg = logits + (size_t)r * V;
			uint8_t *seen = d->seen + (size_t)r * V;
			/* Repetition penalty (CTRL, as Hugging Face's processor):
			 * before temperature, on every id already in the context. */
			fw_rt_repetition_penalty(lg, seen, n_sample, o->penalty, d->scores);
			int32_t tok = fw_rt_sample(d->scores, n_sample, o->temperature, o->top_k,
						   o->top_p, o->key, (uint64_t)(q - P), d->cands);
			seen[tok] = 1;
			next[r] = tok;
			int64_t max_new = rows[r].max_new > 0 ? rows[r].max_new : o->max_new;
			bool stop = on_token && on_token(user, r, tok, log_prob(lg, V, tok)) ==
				    FW_RT_STOP;
			if (stop || ++made[r] >= max_new) {
				done[r] = true;
				active--;
			}
		}
	}
	free(made);
	free(next);
	free(done);
	return st;
}

struct one_row {
	fw_rt_token_fn fn;
	void *user;
};

static enum fw_rt_action one_row_token(void *user, int row, int32_t token, float logprob)
{
	const struct one_row *u = user;
	return u->fn ? u->fn(u->user, token) : FW_RT_CONTINUE;
}

enum fw_status fw_rt_generate(struct fw_rt_decoder *d, const int32_t *prompt, int64_t n,
			      const struct fw_rt_gen_opts *o, fw_rt_token_fn on_token, void *user,
			      struct fw_err *err)
{
	struct fw_rt_gen_row row = { .prompt = prompt, .n = n, .max_new = o->max_new };
	struct one_row u = { on_token, user };
	return fw_rt_generate_rows(d, &row, 1, o, one_row_token, &u, err);
}
