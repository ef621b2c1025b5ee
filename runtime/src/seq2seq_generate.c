/* seq2seq_generate.c - encoder-decoder generation: the encoder once, then
 * greedy decoding or beam search over KV caches (fw/runtime/seq2seq.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fw/runtime/sample.h"
#include "fw/runtime/seq2seq.h"

void fw_rt_s2s_decoder_close(struct fw_rt_s2s_decoder *d)
{
	fw_graph_free(d->enc_g);
	fw_graph_free(d->step_g);
	fw_ctx_free(d->ctx);
	free(d->caches);
	memset(d, 0, sizeof(*d));
}

/* The decoding model in d->ctx with caches of cache_len rows. */
static enum fw_status build(struct fw_rt_s2s_decoder *d, const struct fw_plugin_slots *plugins,
			    int64_t beams, int64_t enc_len, int64_t cache_len, uint64_t seed,
			    struct fw_err *err)
{
	d->len = fw_input(d->ctx, "gen.len", FW_I32, 1, (int64_t[]){ 1 });
	d->mask = fw_input(d->ctx, "gen.mask", FW_F32, 1, (int64_t[]){ cache_len });
	for (int l = 0; l < d->n_layers; l++)
		d->caches[l] = (struct fw_kv_cache){ .len = d->len, .mask = d->mask,
						     .max_len = cache_len };
	return fw_rt_model_build(&(struct fw_rt_model_spec){
		.plugins = plugins, .seed = seed, .caches = d->caches, .n_caches = d->n_layers,
		.batch = beams, .enc_len = enc_len }, d->ctx, &d->m, err);
}

enum fw_status fw_rt_s2s_decoder_open(struct fw_rt_s2s_decoder *d,
				      const struct fw_plugin_slots *plugins, int64_t beams,
				      int64_t enc_len, int64_t max_len, uint64_t seed,
				      struct fw_err *err)
{
	memset(d, 0, sizeof(*d));
	if (beams < 1 || enc_len < 1 || max_len < 1)
		return fw_errorf(err, FW_ERR_INVALID, "generate: beams, source and target lengths "
				 "must be positive");
	d->n_layers = fw_rt_model_n_layers(plugins);
	if (d->n_layers <= 0)
		return fw_errorf(err, FW_ERR_UNSUPPORTED,
				 "generate: the arch plugin does not support generation");
	d->ctx = fw_ctx_new();
	d->caches = calloc((size_t)d->n_layers, sizeof(*d->caches));
	if (!d->ctx || !d->caches) {
		fw_rt_s2s_decoder_close(d);
		return fw_errorf(err, FW_ERR_NOMEM, "generate: out of memory");
	}
	enum fw_status st = build(d, plugins, beams, enc_len, max_len, seed, err);
	/* prefix tuning: the prefix rows take the first cache slots of every
	 * decoder layer; built again with room for them */
	int64_t S = st == FW_OK && FW_HAS(&d->m, n_prefix) ? d->m.n_prefix : 0;
	if (S > 0) {
		fw_ctx_free(d->ctx);
		memset(&d->m, 0, sizeof(d->m));
		if (!(d->ctx = fw_ctx_new()))
			st = fw_errorf(err, FW_ERR_NOMEM, "generate: out of memory");
		else
			st = build(d, plugins, beams, enc_len, max_len + S, seed, err);
	}
	if (st == FW_OK && (d->m.n_cross <= 0 || !d->m.enc_tokens))
		st = fw_errorf(err, FW_ERR_UNSUPPORTED, "generate: %s has no encoder to run",
			       plugins->arch->desc->name);
	if (st == FW_OK) {
		d->enc_g = fw_graph_new(d->ctx, d->m.cross_out, d->m.n_cross,
					&(struct fw_graph_opts){ 0 });
		d->step_g = d->enc_g ? fw_graph_new(d->ctx, &d->m.logits, 1,
						    &(struct fw_graph_opts){ 0 }) : NULL;
		if (!d->step_g)
			st = fw_errorf(err, fw_ctx_err(d->ctx)->status, "graph: %s",
				       fw_ctx_err(d->ctx)->msg);
	}
	if (st != FW_OK) {
		fw_rt_s2s_decoder_close(d);
		return st;
	}
	d->enc_bias = fw_ctx_find(d->ctx, "enc_bias");
	d->beams = beams;
	d->enc_len = enc_len;
	d->max_len = max_len;
	d->n_prefix = S;
	d->V = (int)d->m.logits->ne[d->m.logits->ndim - 1];
	return FW_OK;
}

/* The source in every row, padded; the encoder once; its K/V into the
 * decoder's inputs; an empty cache. */
static enum fw_status encode(struct fw_rt_s2s_decoder *d, const int32_t *src, int64_t n,
			     int32_t pad, struct fw_err *err)
{
	int32_t *ids = d->m.enc_tokens->data;
	float *bias = d->enc_bias ? d->enc_bias->data : NULL;
	for (int64_t b = 0; b < d->beams; b++)
		for (int64_t i = 0; i < d->enc_len; i++) {
			ids[b * d->enc_len + i] = i < n ? src[i] : pad;
			if (bias)
				bias[b * d->enc_len + i] = i < n ? 0.0f : -INFINITY;
		}
	if (fw_graph_forward(d->enc_g) != FW_OK)
		return fw_errorf(err, FW_ERR_INTERNAL, "generate: %s", fw_ctx_err(d->ctx)->msg);
	for (int i = 0; i < d->m.n_cross; i++)
		memcpy(d->m.cross_in[i]->data, d->m.cross_out[i]->data, fw_nbytes(d->m.cross_in[i]));
	float *mk = d->mask->data;
	for (int64_t j = 0; j < d->n_prefix + d->max_len; j++)
		mk[j] = j < d->n_prefix ? 0.0f : -INFINITY;   /* the prefix rows are seen */
	return FW_OK;
}

/* One decoder step at position q (cache slot n_prefix + q) with tokens[b]
 * in row b: logits (B, V). */
static enum fw_status step(struct fw_rt_s2s_decoder *d, int64_t q, const int32_t *tokens,
			   struct fw_err *err)
{
	*(int32_t *)d->len->data = (int32_t)(d->n_prefix + q);
	((float *)d->mask->data)[d->n_prefix + q] = 0.0f;
	memcpy(d->m.tokens->data, tokens, sizeof(int32_t) * (size_t)d->beams);
	if (fw_graph_forward(d->step_g) != FW_OK)
		return fw_errorf(err, FW_ERR_INTERNAL, "generate: %s", fw_ctx_err(d->ctx)->msg);
	return FW_OK;
}

/* log_softmax of a row into out (double). */
static void log_softmax(const float *x, int n, double *out)
{
	double lse = fw_rt_logsumexp(x, n);
	for (int i = 0; i < n; i++)
		out[i] = (double)x[i] - lse;
}

/* The caches' rows reordered: row b takes old row from[b]. */
static enum fw_status reorder(struct fw_rt_s2s_decoder *d, const int64_t *from, struct fw_err *err)
{
	for (int l = 0; l < d->n_layers; l++) {
		struct fw_tensor *kv[2] = { d->caches[l].k, d->caches[l].v };
		for (int w = 0; w < 2; w++) {
			if (!kv[w])
				continue;
			size_t row = fw_nbytes(kv[w]) / (size_t)d->beams;
			char *copy = malloc(fw_nbytes(kv[w])), *data = kv[w]->data;
			if (!copy)
				return fw_errorf(err, FW_ERR_NOMEM, "generate: out of memory");
			memcpy(copy, data, fw_nbytes(kv[w]));
			for (int64_t b = 0; b < d->beams; b++)
				memcpy(data + (size_t)b * row, copy + (size_t)from[b] * row, row);
			free(copy);
		}
	}
	return FW_OK;
}

/* Hugging Face's BeamHypotheses: the num_beams best finished hypotheses. */
struct hyps {
	int n, cap;
	double worst;
	double *score;
	int64_t *len;                     /* tokens, the start token included */
	int32_t *tok;                     /* cap rows of width */
	int64_t width;
};

/* A hypothesis of len tokens (the start token included, not the eos that
 * ends it) scored as BeamHypotheses.add with generated_len = len - 1: the
 * start token is the decoder's prompt (transformers >= 4.34). */
static void hyps_add(struct hyps *h, const int32_t *tok, int64_t len, double sum_logprobs,
		     double length_penalty)
{
	double score = sum_logprobs / pow((double)(len - 1), length_penalty);
	if (h->n >= h->cap - 1 && !(score > h->worst))
		return;
	int k = h->n++;
	h->score[k] = score;
	h->len[k] = len;
	memcpy(h->tok + k * h->width, tok, sizeof(int32_t) * (size_t)len);
	if (h->n < h->cap) {
		h->worst = score < h->worst ? score : h->worst;
		return;
	}
	/* one more than num_beams: drop the worst, the next worst becomes worst */
	int lo = 0;
	for (int i = 1; i < h->n; i++)
		if (h->score[i] < h->score[lo])
			lo = i;
	for (int i = lo; i + 1 < h->n; i++) {
		h->score[i] = h->score[i + 1];
		h->len[i] = h->len[i + 1];
		memmove(h->tok + i * h->width, h->tok + (i + 1) * h->width,
			sizeof(int32_t) * (size_t)h->width);
	}
	h->n--;
	h->worst = INFINITY;
	for (int i = 0; i < h->n; i++)
		h->worst = h->score[i] < h->worst ? h->score[i] : h->worst;
}

struct cand {
	double score;
	int64_t beam;
	int32_t token;
};

/* The k best of scores[0..n) (beam-major, V a beam), best first; equal
 * scores in index order (torch.topk's order is not specified). */
static void top_k(const double *scores, int64_t n, int V, int k, struct cand *out)
{
	for (int j = 0; j < k; j++)
		out[j] = (struct cand){ -INFINITY, -1, -1 };
	for (int64_t i = 0; i < n; i++) {
		if (!(scores[i] > out[k - 1].score))
			continue;
		int j = k - 1;
		while (j > 0 && scores[i] > out[j - 1].score) {
			out[j] = out[j - 1];
			j--;
		}
		out[j] = (struct cand){ scores[i], i / V, (int32_t)(i % V) };
	}
}

static enum fw_status beam_search(struct fw_rt_s2s_decoder *d, const struct fw_rt_s2s_opts *o,
				  int32_t *out, int64_t *n_out, struct fw_err *err)
{
	int N = o->num_beams, V = d->V;
	int64_t W = o->max_new + 1;
	double *scores = malloc(sizeof(double) * (size_t)N * (size_t)V);
	double *beam_scores = malloc(sizeof(double) * (size_t)N);
	int32_t *seq = malloc(sizeof(int32_t) * (size_t)(N * W)), *next = malloc(sizeof(int32_t) *
										   (size_t)(N * W));
	int32_t *last = calloc((size_t)d->beams, sizeof(int32_t));
	int64_t *from = calloc((size_t)d->beams, sizeof(int64_t));
	struct cand *top = malloc(sizeof(struct cand) * (size_t)(2 * N));
	struct hyps h = { .cap = N + 1, .worst = 1e9, .width = W,
			  .score = malloc(sizeof(double) * (size_t)(N + 1)),
			  .len = malloc(sizeof(int64_t) * (size_t)(N + 1)),
			  .tok = malloc(sizeof(int32_t) * (size_t)((N + 1) * W)) };
	enum fw_status st = FW_OK;
	if (!scores || !beam_scores || !seq || !next || !last || !from || !top || !h.score ||
	    !h.len || !h.tok)
		st = fw_errorf(err, FW_ERR_NOMEM, "generate: out of memory");
	for (int b = 0; st == FW_OK && b < N; b++) {
		beam_scores[b] = b ? -1e9 : 0.0;   /* only the first beam expands at first */
		seq[b * W] = o->start;
		last[b] = o->start;
	}
	int64_t cur = 1;                          /* tokens in each beam, the start included */
	bool done = false;
	while (st == FW_OK && !done && cur < W) {
		if ((st = step(d, cur - 1, last, err)) != FW_OK)
			break;
		const float *lg = d->m.logits->data;
		for (int b = 0; b < N; b++) {
			log_softmax(lg + (size_t)b * V, V, scores + (size_t)b * V);
			for (int v = 0; v < V; v++)
				scores[(size_t)b * V + v] += beam_scores[b];
		}
		top_k(scores, (int64_t)N * V, V, 2 * N, top);
		int kept = 0;
		for (int r = 0; r < 2 * N && kept < N; r++) {
			if (top[r].token == o->eos) {
				if (r < N)
					hyps_add(&h, seq + top[r].beam * W, cur, top[r].score,
						 o->length_penalty);
				continue;
			}
			beam_scores[kept] = top[r].score;
			from[kept] = top[r].beam;
			memcpy(next + kept * W, seq + top[r].beam * W, sizeof(int32_t) * (size_t)cur);
			next[kept * W + cur] = top[r].token;
			last[kept] = top[r].token;
			kept++;
		}
		/* is_done, early_stopping false: no open beam can beat the worst kept */
		done = h.n >= N && h.worst >= top[0].score / pow((double)(cur - 1),
								  o->length_penalty);
		memcpy(seq, next, sizeof(int32_t) * (size_t)(N * W));
		st = reorder(d, from, err);
		cur++;
	}
	for (int b = 0; st == FW_OK && !done && b < N; b++)   /* finalize: the open beams */
		hyps_add(&h, seq + b * W, cur, beam_scores[b], o->length_penalty);
	if (st == FW_OK) {
		int best = 0;
		for (int i = 1; i < h.n; i++)
			if (h.score[i] >= h.score[best])
				best = i;
		int64_t n = h.len[best];
		*n_out = 0;
		for (int64_t i = 1; i < n; i++)
			out[(*n_out)++] = h.tok[best * W + i];
		if (n < W)                        /* finished: the eos it ended with */
			out[(*n_out)++] = o->eos;
		for (int64_t i = 0; o->on_token && i < *n_out; i++)
			if (o->on_token(o->user, out[i]) == FW_RT_STOP) {
				*n_out = i + 1;
				break;
			}
	}
	free(scores);
	free(beam_scores);
	free(seq);
	free(next);
	free(last);
	free(from);
	free(top);
	free(h.score);
	free(h.len);
	free(h.tok);
	return st;
}

/* Greedy decoding or sampling in row 0 (fw/runtime/seq2seq.h). */
static enum fw_status one_beam(struct fw_rt_s2s_decoder *d, const struct fw_rt_s2s_opts *o,
			       int32_t *out, int64_t *n_out, struct fw_err *err)
{
	int V = d->V, ns = o->n_sample > 0 && o->n_sample < V ? o->n_sample : V;
	double penalty = o->penalty > 0 ? o->penalty : 1.0;
	int32_t *tok = calloc((size_t)d->beams, sizeof(int32_t));
	struct fw_rt_cand *cands = malloc(sizeof(*cands) * (size_t)V);
	float *scores = malloc(sizeof(float) * (size_t)V);
	uint8_t *seen = calloc((size_t)V, 1);
	enum fw_status st = FW_OK;
	if (!tok || !cands || !scores || !seen)
		st = fw_errorf(err, FW_ERR_NOMEM, "generate: out of memory");
	if (st == FW_OK) {
		tok[0] = o->start;
		if (o->start >= 0 && o->start < V)
			seen[o->start] = 1;
	}
	for (int64_t q = 0; st == FW_OK && q < o->max_new; q++) {
		if ((st = step(d, q, tok, err)) != FW_OK)
			break;
		const float *lg = d->m.logits->data;
		if (penalty != 1.0) {
			fw_rt_repetition_penalty(lg, seen, ns, penalty, scores);
			lg = scores;
		}
		tok[0] = fw_rt_sample(lg, ns, o->temperature, o->top_k,
				      o->top_p > 0 ? o->top_p : 1.0, o->key, (uint64_t)q, cands);
		seen[tok[0]] = 1;
		out[(*n_out)++] = tok[0];
		if (o->on_token && o->on_token(o->user, tok[0]) == FW_RT_STOP)
			break;
		if (tok[0] == o->eos)
			break;
	}
	free(tok);
	free(cands);
	free(scores);
	free(seen);
	return st;
}

enum fw_status fw_rt_s2s_generate(struct fw_rt_s2s_decoder *d, const int32_t *src,
				  int64_t n_src, const struct fw_rt_s2s_opts *o, int32_t *out,
				  int64_t *n_out, struct fw_err *err)
{
	*n_out = 0;
	if (n_src <= 0 || n_src > d->enc_len)
		return fw_errorf(err, FW_ERR_INVALID, "generate: a source of %lld tokens (the "
				 "encoder takes 1 to %lld)", (long long)n_src, (long long)d->enc_len);
	if (o->max_new < 1 || o->max_new > d->max_len)
		return fw_errorf(err, FW_ERR_INVALID, "generate: %lld new tokens, the cache holds "
				 "%lld", (long long)o->max_new, (long long)d->max_len);
	if (o->num_beams < 1 || o->num_beams > d->beams)
		return fw_errorf(err, FW_ERR_INVALID, "generate: --num-beams %d (the decoder has "
				 "%lld rows)", o->num_beams, (long long)d->beams);
	for (int64_t i = 0; i < n_src; i++)
		if (src[i] < 0 || src[i] >= d->V)
			return fw_errorf(err, FW_ERR_INVALID, "source: token %d is outside the "
					 "vocabulary (%d)", src[i], d->V);
	enum fw_status st = encode(d, src, n_src, o->pad, err);
	if (st != FW_OK || o->num_beams > 1)
		return st != FW_OK ? st : beam_search(d, o, out, n_out, err);
	return one_beam(d, o, out, n_out, err);
}
