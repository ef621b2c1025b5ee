/* generate.c - decoding with a KV cache (fw/runtime/generate.h). */
#include <math.h>
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
			    int64_t cache_len, uint64_t seed, enum fw_dtype precision,
			    struct fw_err *err)
{
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
		.plugins = plugins, .seed = seed, .caches = d->caches, .n_caches = d->n_layers },
		d->ctx, &d->m, err);
}

enum fw_status fw_rt_decoder_virtual(const struct fw_plugin_slots *plugins, int64_t *n_virtual,
				     struct fw_err *err)
{
	struct fw_rt_decoder d;
	memset(&d, 0, sizeof(d));
	enum fw_status st = build(&d, plugins, 1, 0, FW_F32, err);
	*n_virtual = st == FW_OK && d.m.virtual_select ? d.m.virtual_select->ne[1] - 1 : 0;
	fw_rt_decoder_close(&d);
	return st;
}

enum fw_status fw_rt_decoder_open(struct fw_rt_decoder *d, const struct fw_plugin_slots *plugins,
				  int64_t max_len, uint64_t seed, struct fw_err *err)
{
	return fw_rt_decoder_open_as(d, plugins, max_len, seed, FW_F32, err);
}

enum fw_status fw_rt_decoder_open_as(struct fw_rt_decoder *d,
				     const struct fw_plugin_slots *plugins, int64_t max_len,
				     uint64_t seed, enum fw_dtype precision, struct fw_err *err)
{
	memset(d, 0, sizeof(*d));
	enum fw_status st = build(d, plugins, max_len, seed, precision, err);
	/* Virtual tokens (prompt tuning) take the first cache positions: the
	 * model is built again with room for them. */
	int64_t P = st == FW_OK && d->m.virtual_select ? d->m.virtual_select->ne[1] - 1 : 0;
	if (P > 0) {
		fw_rt_decoder_close(d);
		struct fw_err e = { 0 };
		if ((st = build(d, plugins, max_len + P, seed, precision, &e)) != FW_OK)
			fw_errorf(err, st, "generate: %lld virtual tokens and %lld positions: %s",
				  (long long)P, (long long)max_len, e.msg);
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
	d->seen = malloc((size_t)d->V);
	if (!d->cands || !d->scores || !d->seen) {
		fw_rt_decoder_close(d);
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	}
	return FW_OK;
}

enum fw_status fw_rt_generate(struct fw_rt_decoder *d, const int32_t *prompt, int64_t n,
			      const struct fw_rt_gen_opts *o, fw_rt_token_fn on_token, void *user,
			      struct fw_err *err)
{
	if (n <= 0)
		return fw_errorf(err, FW_ERR_INVALID, "generate: an empty prompt");
	if (n + o->max_new > d->max_len)
		return fw_errorf(err, FW_ERR_INVALID, "generate: %lld prompt and %lld new tokens, "
				 "more than the cache holds (%lld)", (long long)n,
				 (long long)o->max_new, (long long)d->max_len);
	for (int64_t i = 0; i < n; i++)
		if (prompt[i] < 0 || prompt[i] >= d->V)
			return fw_errorf(err, FW_ERR_INVALID, "prompt: token %d is outside the "
					 "vocabulary (%d)", prompt[i], d->V);
	int n_sample = o->n_sample > 0 && o->n_sample < d->V ? o->n_sample : d->V;
	float *mk = d->mask->data;
	int64_t P = d->n_virtual;
	float *sel = P ? d->m.virtual_select->data : NULL;
	for (int64_t j = 0; j < d->max_len + P; j++)    /* an empty cache */
		mk[j] = -INFINITY;
	memset(d->seen, 0, (size_t)d->V);
	for (int64_t i = 0; i < n; i++)
		d->seen[prompt[i]] = 1;
	/* The virtual tokens stand before prompt token K (0: in front); they
	 * take cache positions K..K+P-1. */
	int64_t K = P ? d->m.virtual_at : 0;
	if (K > n)
		return fw_errorf(err, FW_ERR_INVALID, "generate: the virtual tokens stand after "
				 "prompt token %lld, and the prompt has %lld", (long long)K,
				 (long long)n);
	int32_t tok = prompt[0];
	for (int64_t q = 0; q < n + P + o->max_new - 1; q++) {
		bool virt = q >= K && q < K + P;
		*(int32_t *)d->len->data = (int32_t)q;
		mk[q] = 0.0f;
		*(int32_t *)d->m.tokens->data = virt ? 0 : tok;
		if (P) {
			memset(sel, 0, sizeof(float) * (size_t)(P + 1));
			sel[virt ? q - K : P] = 1.0f;
		}
		if (fw_graph_forward(d->g) != FW_OK)
			return fw_errorf(err, FW_ERR_INTERNAL, "generate: %s",
					 fw_ctx_err(d->ctx)->msg);
		int64_t next = q + 1;
		if (next < n + P) {                      /* prefill */
			if (next < K || next >= K + P)
				tok = prompt[next < K ? next : next - P];
			continue;
		}
		int64_t p = q - P;                       /* the position without virtual tokens */
		/* Repetition penalty (CTRL, as Hugging Face's processor): before
		 * temperature, on every id already in the context. */
		fw_rt_repetition_penalty(d->m.logits->data, d->seen, n_sample, o->penalty,
					 d->scores);
		tok = fw_rt_sample(d->scores, n_sample, o->temperature, o->top_k, o->top_p, o->key,
				   (uint64_t)p, d->cands);
		d->seen[tok] = 1;
		if (on_token && on_token(user, tok) == FW_RT_STOP)
			break;
	}
	return FW_OK;
}
