/* generate.c - decoding with a KV cache (fw/runtime/generate.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw/runtime/generate.h"

static void prefill_free(struct fw_rt_prefill *p)
{
	fw_graph_free(p->g);
	fw_ctx_free(p->ctx);
	free(p->caches);
}

void fw_rt_decoder_close(struct fw_rt_decoder *d)
{
	for (int i = 0; i < d->n_pre; i++)
		prefill_free(&d->pre[i]);
	fw_graph_free(d->g);
	fw_ctx_free(d->ctx);
	free(d->caches);
	free(d->cands);
	free(d->scores);
	free(d->seen);
	memset(d, 0, sizeof(*d));
}

/* The arch and attention plugins must know per-row cache slots (ABI 1.5). */
static enum fw_status check_abi(const struct fw_plugin_slots *plugins, struct fw_err *err)
{
	const struct fw_loaded *need[2] = { plugins->arch, plugins->attention };
	for (int i = 0; i < 2; i++)
		if (need[i] && need[i]->desc->abi_major == FW_ABI_MAJOR &&
		    need[i]->desc->abi_minor < 5)
			return fw_errorf(err, FW_ERR_UNSUPPORTED, "generate: %s is built for ABI "
					 "%d.%d; generating needs per-row cache slots (1.5): "
					 "rebuild it against this fw", need[i]->desc->name,
					 need[i]->desc->abi_major, need[i]->desc->abi_minor);
	return FW_OK;
}

/* A decoding model of batch x T tokens in ctx under precision, its caches
 * of cache_len positions reading their slots from the input (batch, T). */
static enum fw_status build_model(struct fw_ctx *ctx, const struct fw_plugin_slots *plugins,
				  int batch, int64_t T, int n_layers, int64_t cache_len,
				  uint64_t seed, enum fw_dtype precision, struct fw_model *m,
				  struct fw_kv_cache *caches, struct fw_tensor **slots,
				  struct fw_err *err)
{
	if (fw_ctx_set_autocast(ctx, precision) != FW_OK)
		return fw_errorf(err, FW_ERR_INVALID, "generate: %s", fw_ctx_err(ctx)->msg);
	*slots = fw_input(ctx, "gen.slots", FW_I32, 2, (int64_t[]){ batch, T });
	for (int l = 0; l < n_layers; l++)
		caches[l] = (struct fw_kv_cache){ .len = *slots, .max_len = cache_len };
	return fw_rt_model_build(&(struct fw_rt_model_spec){
		.plugins = plugins, .batch = batch, .seq_len = T, .seed = seed, .caches = caches,
		.n_caches = n_layers },
		ctx, m, err);
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
	if (check_abi(plugins, err) != FW_OK)
		return err->status;
	d->ctx = fw_ctx_new();
	d->caches = calloc((size_t)d->n_layers, sizeof(*d->caches));
	if (!d->ctx || !d->caches)
		return fw_errorf(err, FW_ERR_NOMEM, "generate: out of memory");
	d->plugins = plugins;
	d->seed = seed;
	d->precision = precision;
	return build_model(d->ctx, plugins, rows, 1, d->n_layers, cache_len, seed, precision,
			   &d->m, d->caches, &d->slots, err);
}

/* Key/value prefix rows (prefix tuning) in front of every cache: the
 * plugin writes them each step, the tokens' slots come after them. */
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

/* The cache's own tensor under the writes chained on it: a peft plugin's
 * write (prefix tuning's rows) may stand before the attention's. */
static struct fw_tensor *cache_tensor(struct fw_tensor *t)
{
	while (t->op == FW_OP_KV_WRITE)
		t = t->src[0];
	return t;
}

size_t fw_rt_decoder_cache_bytes(const struct fw_rt_decoder *d, enum fw_dtype *dtype)
{
	size_t bytes = 0;
	*dtype = FW_F32;
	for (int l = 0; d->caches && l < d->n_layers; l++) {
		struct fw_tensor *kv[2] = { d->caches[l].k, d->caches[l].v };
		for (int w = 0; w < 2; w++)
			if (kv[w]) {
				const struct fw_tensor *c = cache_tensor(kv[w]);
				bytes += fw_nbytes(c);
				*dtype = c->dtype;
			}
	}
	return bytes;
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
	/* Virtual tokens (prompt tuning) and prefix rows (prefix tuning) take
	 * the first cache positions: the model is built again with room for
	 * them. */
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
	d->n_prefix = S;
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
	for (int l = 0; l < d->n_layers; l++) {         /* never-written slots read as 0 */
		struct fw_tensor *k = cache_tensor(d->caches[l].k), *v = cache_tensor(d->caches[l].v);
		memset(k->data, 0, fw_nbytes(k));
		memset(v->data, 0, fw_nbytes(v));
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

/* --- prefill ---------------------------------------------------------------------- */

static int64_t cache_len(const struct fw_rt_decoder *d)
{
	return d->max_len + d->n_virtual + d->n_prefix;
}

/* The prefill model of T tokens, d->pre[d->n_pre], sharing d's weights and
 * the caches of the prefill models built before it. */
static enum fw_status prefill_build(struct fw_rt_decoder *d, int64_t T, struct fw_err *err)
{
	struct fw_rt_prefill *p = &d->pre[d->n_pre];
	memset(p, 0, sizeof(*p));
	p->T = T;
	p->ctx = fw_ctx_new();
	p->caches = calloc((size_t)d->n_layers, sizeof(*p->caches));
	if (!p->ctx || !p->caches) {
		prefill_free(p);
		return fw_errorf(err, FW_ERR_NOMEM, "generate: out of memory");
	}
	d->n_pre++;
	struct fw_err e = { 0 };
	enum fw_status st = build_model(p->ctx, d->plugins, 1, T, d->n_layers, cache_len(d),
					d->seed, d->precision, &p->m, p->caches, &p->slots, &e);
	int n_shared = 0, n_params = 0;
	for (int i = 0; st == FW_OK && i < fw_ctx_n_tensors(p->ctx); i++)
		n_params += (fw_ctx_tensor(p->ctx, i)->flags & FW_FLAG_PARAM) != 0;
	if (st == FW_OK)
		st = fw_rt_model_share_weights(p->ctx, d->ctx, &n_shared, &e);
	if (st == FW_OK && n_shared != n_params)
		st = fw_errorf(&e, FW_ERR_INTERNAL, "%d of its %d parameters are not the "
			       "decoder's", n_params - n_shared, n_params);
	for (int l = 0; st == FW_OK && l < d->n_layers; l++) {
		struct fw_kv_cache *c = &p->caches[l], *first = &d->pre[0].caches[l];
		if (!c->k || !c->v)
			st = fw_errorf(&e, FW_ERR_INTERNAL, "layer %d wrote no cache", l);
		else if (p != d->pre) {         /* one prompt's cache for every length */
			c->k->data = first->k->data;
			c->v->data = first->v->data;
		}
	}
	if (st == FW_OK &&
	    !(p->g = fw_graph_new(p->ctx, &p->m.logits, 1, &(struct fw_graph_opts){ 0 })))
		st = fw_errorf(&e, fw_ctx_err(p->ctx)->status, "graph: %s", fw_ctx_err(p->ctx)->msg);
	if (st != FW_OK)
		return fw_errorf(err, st, "generate: the prefill model of %lld tokens: %s",
				 (long long)T, e.msg);
	return FW_OK;
}

/* The prefill model for n more tokens: the shortest that takes them all,
 * else the longest. */
static enum fw_status prefill_model(struct fw_rt_decoder *d, int64_t n,
				    struct fw_rt_prefill **out, struct fw_err *err)
{
	int64_t most = cache_len(d) < FW_RT_PREFILL_MAX ? cache_len(d) : FW_RT_PREFILL_MAX;
	int64_t T = 16;
	while (T < n && T < most)
		T *= 4;
	T = T < most ? T : most;
	for (int i = 0; i < d->n_pre; i++)
		if (d->pre[i].T == T)
			return *out = &d->pre[i], FW_OK;
	if (d->n_pre == FW_RT_PREFILL_SIZES)
		return fw_errorf(err, FW_ERR_INTERNAL, "generate: no prefill model left");
	*out = &d->pre[d->n_pre];
	return prefill_build(d, T, err);
}

/* Runs prompt[0..n) through the prefill models into row r of the caches;
 * *logits: the last token's (V). */
static enum fw_status prefill(struct fw_rt_decoder *d, int r, const int32_t *prompt, int64_t n,
			      const float **logits, struct fw_err *err)
{
	int64_t L = cache_len(d);
	for (int64_t at = 0; at < n;) {
		struct fw_rt_prefill *p = NULL;
		if (prefill_model(d, n - at, &p, err) != FW_OK)
			return err->status;
		/* the chunk's tokens at its end, so that its last row is the last
		 * token's; the padding in front writes the last slot, which no
		 * prompt token sees and decoding writes before it reads */
		int64_t T = p->T, k = n - at < T ? n - at : T, pad = T - k;
		int32_t *tok = p->m.tokens->data, *slot = p->slots->data;
		for (int64_t t = 0; t < T; t++) {
			tok[t] = t < pad ? 0 : prompt[at + t - pad];
			slot[t] = (int32_t)(t < pad ? L - 1 : at + t - pad);
		}
		if (fw_graph_forward(p->g) != FW_OK)
			return fw_errorf(err, FW_ERR_INTERNAL, "generate: %s",
					 fw_ctx_err(p->ctx)->msg);
		at += k;
		*logits = (const float *)p->m.logits->data + (size_t)(T - 1) * (size_t)d->V;
	}
	for (int l = 0; l < d->n_layers; l++) {
		struct fw_kv_cache *src = &d->pre[0].caches[l], *dst = &d->caches[l];
		size_t per = fw_nbytes(src->k) / (size_t)L;           /* one slot of a row */
		memcpy((char *)dst->k->data + (size_t)r * L * per, src->k->data, (size_t)n * per);
		memcpy((char *)dst->v->data + (size_t)r * L * per, src->v->data, (size_t)n * per);
	}
	return FW_OK;
}

/* --- decoding ----------------------------------------------------------------------- */

/* What a generation keeps per prompt. */
struct run {
	struct fw_rt_decoder *d;
	const struct fw_rt_gen_row *rows;
	const struct fw_rt_gen_opts *o;
	fw_rt_row_token_fn on_token;
	void *user;
	int n_sample;
	int64_t *made;                    /* per prompt: tokens generated */
};

static int64_t max_new_of(const struct run *u, int i)
{
	return u->rows[i].max_new > 0 ? u->rows[i].max_new : u->o->max_new;
}

/* Samples prompt i's next token from lg (V) in decoder row r, counter c;
 * true when the prompt is done. */
static bool emit(struct run *u, int r, int i, const float *lg, int64_t c, int32_t *tok)
{
	struct fw_rt_decoder *d = u->d;
	const struct fw_rt_gen_opts *o = u->o;
	uint8_t *seen = d->seen + (size_t)r * d->V;
	/* Repetition penalty (CTRL, as Hugging Face's processor): before
	 * temperature, on every id already in the context. */
	fw_rt_repetition_penalty(lg, seen, u->n_sample, o->penalty, d->scores);
	*tok = fw_rt_sample(d->scores, u->n_sample, o->temperature, o->top_k, o->top_p, o->key,
			    (uint64_t)c, d->cands);
	seen[*tok] = 1;
	bool stop = u->on_token && u->on_token(u->user, i, *tok, log_prob(lg, d->V, *tok)) ==
		    FW_RT_STOP;
	return stop || ++u->made[i] >= max_new_of(u, i);
}

static void mark_seen(struct fw_rt_decoder *d, int r, const struct fw_rt_gen_row *row)
{
	memset(d->seen + (size_t)r * d->V, 0, (size_t)d->V);
	for (int64_t t = 0; t < row->n; t++)
		d->seen[(size_t)r * d->V + row->prompt[t]] = 1;
}

/* Continuous batching: each free row takes the next prompt and prefills it
 * (with a peft plugin: reads it a token a step, below); then one step for
 * every row that still runs. */
static enum fw_status run_batched(struct run *u, int n_rows, struct fw_err *err)
{
	struct fw_rt_decoder *d = u->d;
	int R = d->rows;
	int64_t L = cache_len(d);
	int *who = malloc(sizeof(*who) * (size_t)R);          /* each row's prompt; -1: free */
	int64_t *len = malloc(sizeof(*len) * (size_t)R);      /* each row's next slot */
	int32_t *next = malloc(sizeof(*next) * (size_t)R);
	if (!who || !len || !next) {
		free(who);
		free(len);
		free(next);
		return fw_errorf(err, FW_ERR_NOMEM, "generate: out of memory");
	}
	int32_t *tokens = d->m.tokens->data, *slots = d->slots->data;
	enum fw_status st = FW_OK;
	int pending = 0;
	/* A peft plugin keeps per-model state (LoRA's merge switches a node of
	 * the model it built), which a prefill model would not share: its
	 * prompts go through the step graph, a token a step per row, after
	 * the prefix rows (prefix tuning) of every cache. */
	bool pre = !d->plugins->peft;
	int64_t S = d->n_prefix;
	for (int r = 0; r < R; r++)
		who[r] = -1;
	for (;;) {
		int active = 0;
		for (int r = 0; r < R && st == FW_OK; r++) {
			while (who[r] < 0 && pending < n_rows) {
				int i = pending++;
				const struct fw_rt_gen_row *row = &u->rows[i];
				const float *lg = NULL;
				if (max_new_of(u, i) <= 0)
					continue;
				mark_seen(d, r, row);
				len[r] = pre ? row->n : 0;
				if (!pre)
					who[r] = i;
				else if ((st = prefill(d, r, row->prompt, row->n, &lg, err)) != FW_OK)
					break;
				else if (!emit(u, r, i, lg, row->n - 1, &next[r]))
					who[r] = i;
			}
			active += who[r] >= 0;
		}
		if (st != FW_OK || !active)
			break;
		for (int r = 0; r < R; r++) {   /* a free row writes the last slot, unread */
			const struct fw_rt_gen_row *row = who[r] >= 0 ? &u->rows[who[r]] : NULL;
			tokens[r] = !row ? 0 : len[r] < row->n ? row->prompt[len[r]] : next[r];
			slots[r] = (int32_t)(row ? S + len[r] : L - 1);
		}
		if (fw_graph_forward(d->g) != FW_OK) {
			st = fw_errorf(err, FW_ERR_INTERNAL, "generate: %s", fw_ctx_err(d->ctx)->msg);
			break;
		}
		const float *logits = d->m.logits->data;     /* (rows, 1, V) */
		for (int r = 0; r < R; r++) {
			if (who[r] < 0 || ++len[r] < u->rows[who[r]].n)    /* still reading */
				continue;
			if (emit(u, r, who[r], logits + (size_t)r * d->V, len[r] - 1, &next[r]))
				who[r] = -1;
		}
	}
	free(who);
	free(len);
	free(next);
	return st;
}

/* Virtual tokens: rows[0..n) together, one token a step, every row from
 * position 0; the P virtual tokens stand before prompt token K (0: in
 * front) and take positions K..K+P-1 of every row. */
static enum fw_status run_stepwise(struct run *u, const struct fw_rt_gen_row *rows, int first,
				   int n, struct fw_err *err)
{
	struct fw_rt_decoder *d = u->d;
	int R = d->rows;
	int64_t P = d->n_virtual, K = d->m.virtual_at;
	int32_t *next = calloc((size_t)R, sizeof(*next));      /* each row's next sampled id */
	bool *done = malloc(sizeof(*done) * (size_t)R);
	if (!next || !done) {
		free(next);
		free(done);
		return fw_errorf(err, FW_ERR_NOMEM, "generate: out of memory");
	}
	float *sel = d->m.virtual_select->data;
	int32_t *tokens = d->m.tokens->data, *slots = d->slots->data;
	int active = 0;
	for (int r = 0; r < R; r++) {
		done[r] = r >= n || max_new_of(u, first + r) <= 0;    /* idle rows take token 0 */
		active += !done[r];
		if (r < n)
			mark_seen(d, r, &rows[r]);
	}
	enum fw_status st = FW_OK;
	for (int64_t q = 0; active > 0; q++) {
		bool virt = q >= K && q < K + P;
		int64_t p = q < K ? q : q - P;           /* the real token's position */
		for (int r = 0; r < R; r++) {
			tokens[r] = virt || done[r] ? 0 : p < rows[r].n ? rows[r].prompt[p] : next[r];
			slots[r] = (int32_t)q;
		}
		memset(sel, 0, sizeof(float) * (size_t)(P + 1));
		sel[virt ? q - K : P] = 1.0f;
		if (fw_graph_forward(d->g) != FW_OK) {
			st = fw_errorf(err, FW_ERR_INTERNAL, "generate: %s", fw_ctx_err(d->ctx)->msg);
			break;
		}
		const float *logits = d->m.logits->data;     /* (rows, 1, V) */
		for (int r = 0; r < n; r++) {
			if (done[r] || q + 1 < rows[r].n + P)   /* the prompt */
				continue;
			if (emit(u, r, first + r, logits + (size_t)r * d->V, q - P, &next[r])) {
				done[r] = true;
				active--;
			}
		}
	}
	free(next);
	free(done);
	return st;
}

enum fw_status fw_rt_generate_rows(struct fw_rt_decoder *d, const struct fw_rt_gen_row *rows,
				   int n_rows, const struct fw_rt_gen_opts *o,
				   fw_rt_row_token_fn on_token, void *user, struct fw_err *err)
{
	if (n_rows < 1)
		return fw_errorf(err, FW_ERR_INVALID, "generate: %d prompts", n_rows);
	for (int r = 0; r < n_rows; r++) {
		int64_t mn = rows[r].max_new > 0 ? rows[r].max_new : o->max_new;
		if (check_row(d, &rows[r], r, mn, err) != FW_OK)
			return err->status;
	}
	struct run u = { .d = d, .rows = rows, .o = o, .on_token = on_token, .user = user,
			 .n_sample = o->n_sample > 0 && o->n_sample < d->V ? o->n_sample : d->V,
			 .made = calloc((size_t)n_rows, sizeof(*u.made)) };
	if (!u.made)
		return fw_errorf(err, FW_ERR_NOMEM, "generate: out of memory");
	enum fw_status st = FW_OK;
	if (!d->n_virtual)
		st = run_batched(&u, n_rows, err);
	for (int first = 0; d->n_virtual && st == FW_OK && first < n_rows; first += d->rows)
		st = run_stepwise(&u, rows + first, first,
				  n_rows - first < d->rows ? n_rows - first : d->rows, err);
	free(u.made);
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
