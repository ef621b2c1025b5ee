/* peft/prefix - prefix tuning (Li & Liang, 2021) with PEFT's PrefixEncoder.
 *
 * Every attention layer l gets nvt learned key and value rows in front of
 * its own (wrap_kv): k' = [P_k(l); k], v' = [P_v(l); v], (B, nvt + T, Hkv,
 * D), with kv_dim = Hkv * D (GQA and MQA work). The causal mask of the
 * attention plugin lets query i see keys j <= i + nvt, so every query sees
 * the whole prefix. Positions are PEFT's (it passes the prefix as
 * past_key_values): the real tokens stand at nvt..nvt+T-1 (fw_model.
 * n_prefix, set in wrap_embed); RoPE leaves the prefix keys unrotated and
 * ALiBi puts them at 0..nvt-1.
 *
 * PEFT's table is one (nvt, layers * 2 * kv_dim) tensor whose column block
 * 2l is layer l's keys and 2l + 1 its values. fw keeps it per layer (the
 * number of layers is known only once the arch has built them): without
 * projection prefix.h.L.kv (nvt, 2 kv_dim) = [keys | values] of layer l;
 * with projection (PEFT prefix_projection) an embedding prefix.embedding
 * (nvt, C), prefix.transform.0 Linear(C, h), tanh, and per layer the rows of
 * the last Linear(h, layers * 2 * kv_dim) that make layer l's block,
 * prefix.h.L.transform.2.weight (2 kv_dim, h) and .bias. The maths and
 * AdamW's updates are PEFT's; the export concatenates the blocks into
 * PEFT's prompt_embeddings (with projection: the projected table, as PEFT
 * saves it in inference mode).
 *
 * An encoder-decoder (m->enc_tokens, T5) as PEFT's PeftModelForSeq2SeqLM:
 * the decoder's self-attention layers get prefixes, the encoder's
 * self-attention and cross-attention none; fw_model.n_prefix tells the
 * arch the prefix length, for its relative position bias.
 *
 * Generation: the prefix fills the first nvt rows of each KV cache (an
 * encoder-decoder's: its decoder self-attention caches).
 * Refused in one line: an attention bias (packed or padded SFT rows), an
 * arch that routes no attention through the host.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw/plugin.h"
#include "../common/peft_file.h"

#define PREFIX_KIND "peft/prefix"
#define MAX_LAYERS 256

struct prefix {
	const struct fw_host *host;
	const struct fw_options *opts;
	int64_t nvt, hidden;
	bool projection;

	struct fw_ctx *ctx;
	char first[FW_NAME_MAX];             /* the model's first attention layer */
	int n_layers;
	int64_t kv, c, heads;                /* kv_dim, token dim, query heads */
	struct fw_tensor *emb, *w0, *b0;     /* projection */
	struct fw_tensor *hid;               /* tanh(emb W0^T + b0), (nvt, h) */
	struct fw_tensor *own[MAX_LAYERS * 2 + 3];
	int n_own;
};

static struct fw_tensor *param(struct prefix *s, struct fw_model *m, const char *name,
			       int64_t d0, int64_t d1, int kind, float v)
{
	int64_t shape[2] = { d0, d1 };
	struct fw_tensor *t = s->host->param(m->ctx, name, FW_F32, d1 ? 2 : 1, shape, true);
	if (!t)
		return NULL;
	if (kind == FW_INIT_NORMAL)
		s->host->init_normal(m, t, v);
	else
		fw_param_set_init(t, FW_INIT_UNIFORM, v);      /* torch Linear: U(+-1/sqrt(in)) */
	s->own[s->n_own++] = t;
	return t;
}

static enum fw_status ctx_fail(const struct prefix *s, struct fw_ctx *ctx, struct fw_err *err)
{
	const struct fw_err *ce = s->host->ctx_err(ctx);
	return s->host->errorf(err, ce->status ? ce->status : FW_ERR_INTERNAL, "peft/prefix: %s",
			       ce->msg);
}

/* Decoding: the cache *slot (created here as fw_attn_cache_write would,
 * "kv_cache.<layer>.<what>" (B, max_len, Hkv, D)) with the prefix rows x
 * (B, nvt, Hkv, D) written at rows 0..nvt-1 before each step; the host
 * starts the cache length at nvt (fw_model.n_prefix) and builds again with
 * room for them when the first cache has none. */
static enum fw_status cache_prefix(const struct prefix *s, struct fw_model *m,
				   const struct fw_attn_spec *spec, struct fw_tensor **slot,
				   struct fw_tensor *x, const char *what, struct fw_err *err)
{
	const struct fw_host *h = s->host;
	static const char row0_name[] = "prefix.cache_row0";
	struct fw_tensor *row0 = fw_ctx_find(m->ctx, row0_name);
	if (!x)
		return ctx_fail(s, m->ctx, err);
	if (!row0) {
		int32_t *at = h->ctx_alloc(m->ctx, sizeof(int32_t), FW_MEM_INPUTS);
		if (!at || !(row0 = h->input(m->ctx, row0_name, FW_I32, 1, (int64_t[]){ 1 })))
			return ctx_fail(s, m->ctx, err);
		row0->data = at;                /* zeroed: row 0 */
	}
	if (!*slot) {
		char name[FW_NAME_MAX];
		int64_t shape[4] = { x->ne[0], spec->cache->max_len, x->ne[2], x->ne[3] };
		snprintf(name, sizeof(name), "kv_cache.%s.%s", spec->name, what);
		if (!(*slot = h->input(m->ctx, name, fw_ctx_autocast(m->ctx), 4, shape)))
			return ctx_fail(s, m->ctx, err);
	}
	if (spec->cache->max_len <= x->ne[1])    /* a probe that learns n_prefix: no room */
		return FW_OK;
	*slot = fw_kv_write(m->ctx, *slot, x, row0);
	return *slot ? FW_OK : ctx_fail(s, m->ctx, err);
}

static enum fw_status prefix_wrap_kv(void *state, struct fw_model *m,
				     const struct fw_attn_spec *spec, struct fw_tensor **k,
				     struct fw_tensor **v, struct fw_err *err)
{
	struct prefix *s = state;
	const struct fw_host *h = s->host;
	struct fw_ctx *ctx = m->ctx;
	if (peft_new_model(s->ctx, ctx, s->n_layers, s->first, spec->name)) {
		s->ctx = ctx;
		s->n_layers = s->n_own = 0;
		s->emb = s->w0 = s->b0 = s->hid = NULL;
	}
	/* An encoder-decoder: PeftModelForSeq2SeqLM hands its past_key_values to
	 * the decoder alone, and starts its cross-attention cache empty: only the
	 * decoder's (causal) self-attention gets a prefix. */
	if (m->enc_tokens && spec->mask != FW_MASK_CAUSAL)
		return FW_OK;
	if ((spec->pos == FW_POS_ROPE || spec->pos == FW_POS_ALIBI) &&
	    !(FW_HAS(m, n_prefix) && m->n_prefix == s->nvt))
		return h->errorf(err, FW_ERR_UNSUPPORTED, "peft/prefix: %s: the arch does not "
				 "number positions after the prefix (host->embed), so %s would not "
				 "see it as past keys", spec->name,
				 spec->pos == FW_POS_ROPE ? "RoPE" : "ALiBi");
	/* a bias the arch widened over the prefix keys (arch/encoder's padding
	 * mask, as PEFT extends attention_mask with ones) is kept */
	if (spec->bias && spec->bias->ne[3] != (*k)->ne[1] + s->nvt)
		return h->errorf(err, FW_ERR_UNSUPPORTED, "peft/prefix: %s: an attention bias "
				 "(packed or padded SFT rows) does not cover the prefix; use plain "
				 "text or --packing with one sequence a row", spec->name);
	if (spec->mask != FW_MASK_CAUSAL && spec->mask != FW_MASK_BIDIRECTIONAL)
		return h->errorf(err, FW_ERR_UNSUPPORTED, "peft/prefix: %s: cross-attention takes "
				 "no prefix", spec->name);
	if (s->n_layers >= MAX_LAYERS)
		return h->errorf(err, FW_ERR_UNSUPPORTED, "peft/prefix: more than %d layers",
				 MAX_LAYERS);
	int64_t B = (*k)->ne[0], G = spec->n_kv_head, D = spec->head_dim, KV = G * D;
	int64_t P = s->nvt, C = (int64_t)spec->n_head * D;
	if (s->n_layers == 0) {
		s->kv = KV;
		s->c = C;
		s->heads = spec->n_head;
	} else if (KV != s->kv) {
		return h->errorf(err, FW_ERR_UNSUPPORTED, "peft/prefix: %s: kv_dim %lld differs "
				 "from the first layer's %lld", spec->name, (long long)KV,
				 (long long)s->kv);
	}
	char n[FW_NAME_MAX];
	int l = s->n_layers;
	if (l == 0)
		snprintf(s->first, sizeof(s->first), "%s", spec->name);
	struct fw_tensor *blk;                            /* (P, 2 KV): [keys | values] */
	if (!s->projection) {
		snprintf(n, sizeof(n), "prefix.h.%d.kv", l);
		blk = param(s, m, n, P, 2 * KV, FW_INIT_NORMAL, 1.0f);  /* nn.Embedding: N(0, 1) */
	} else {
		if (!s->hid) {
			int64_t Hd = s->hidden;
			if (!(s->emb = param(s, m, "prefix.embedding.weight", P, C, FW_INIT_NORMAL,
					     1.0f)) ||
			    !(s->w0 = param(s, m, "prefix.transform.0.weight", Hd, C, FW_INIT_UNIFORM,
					    (float)(1.0 / sqrt((double)C)))) ||
			    !(s->b0 = param(s, m, "prefix.transform.0.bias", Hd, 0, FW_INIT_UNIFORM,
					    (float)(1.0 / sqrt((double)C)))))
				return ctx_fail(s, ctx, err);
			s->hid = h->tanh(ctx, fw_linear(ctx, s->emb, s->w0, s->b0));
		}
		float bound = (float)(1.0 / sqrt((double)s->hidden));
		struct fw_tensor *w2, *b2;
		snprintf(n, sizeof(n), "prefix.h.%d.transform.2.weight", l);
		w2 = param(s, m, n, 2 * KV, s->hidden, FW_INIT_UNIFORM, bound);
		snprintf(n, sizeof(n), "prefix.h.%d.transform.2.bias", l);
		b2 = w2 ? param(s, m, n, 2 * KV, 0, FW_INIT_UNIFORM, bound) : NULL;
		blk = b2 ? fw_linear(ctx, s->hid, w2, b2) : NULL;
	}
	if (!blk)
		return ctx_fail(s, ctx, err);
	int64_t one[4] = { 1, P, G, D };
	/* zeros (B, 1, G, D) from k, so that the prefix broadcasts over the batch */
	struct fw_tensor *zero = h->scale(ctx, h->slice(ctx, *k, 1, 0, 1), 0.0f);
	struct fw_tensor *pk = h->reshape(ctx, h->cont(ctx, h->slice(ctx, blk, 1, 0, KV)), 4, one);
	struct fw_tensor *pv = h->reshape(ctx, h->cont(ctx, h->slice(ctx, blk, 1, KV, KV)), 4, one);
	pk = h->add(ctx, zero, pk);
	pv = h->add(ctx, zero, pv);
	s->n_layers++;
	(void)B;
	if (spec->cache)        /* decoding: the prefix fills the cache's first rows */
		return cache_prefix(s, m, spec, &spec->cache->k, pk, "k", err) != FW_OK ? err->status :
		       cache_prefix(s, m, spec, &spec->cache->v, pv, "v", err);
	struct fw_tensor *nk = h->concat(ctx, pk, *k, 1);
	struct fw_tensor *nv = h->concat(ctx, pv, *v, 1);
	if (!nk || !nv)
		return ctx_fail(s, ctx, err);
	*k = nk;
	*v = nv;
	return FW_OK;
}

/* The arch's word embeddings pass here before it makes positions: the
 * real tokens stand after the prefix, at positions nvt.. (PEFT's
 * past_key_values). */
static struct fw_tensor *prefix_wrap_embed(void *state, struct fw_model *m, struct fw_tensor *x,
					   struct fw_err *err)
{
	const struct prefix *s = state;
	(void)x, (void)err;
	if (FW_HAS(m, n_prefix))
		m->n_prefix = s->nvt;
	return NULL;
}

static enum fw_status prefix_freeze(void *state, struct fw_model *m, struct fw_err *err)
{
	struct prefix *s = state;
	const struct fw_host *h = s->host;
	if (s->ctx != m->ctx || s->n_layers == 0)
		return h->errorf(err, FW_ERR_UNSUPPORTED, "peft/prefix: the arch routes no "
				 "attention through the host (wrap_kv), so there is nothing to "
				 "prefix");
	for (int i = 0; i < fw_ctx_n_tensors(m->ctx); i++) {
		struct fw_tensor *t = fw_ctx_tensor(m->ctx, i);
		if ((t->flags & FW_FLAG_PARAM) &&
		    fw_param_set_trainable(m->ctx, t, peft_trains(s->own, s->n_own, t)) != FW_OK)
			return h->errorf(err, FW_ERR_INVALID, "peft/prefix: %s",
					 h->ctx_err(m->ctx)->msg);
	}
	return FW_OK;
}

/* "layers L\nnvt P\nkv_dim KV\ntoken_dim C\nheads N\nprojection 0|1 H\n" */
static void structure(const struct prefix *s, char *out, size_t len)
{
	snprintf(out, len, "layers %d\nnvt %lld\nkv_dim %lld\ntoken_dim %lld\nheads %lld\n"
		 "projection %d %lld\n", s->n_layers, (long long)s->nvt, (long long)s->kv,
		 (long long)s->c, (long long)s->heads,
		 s->projection, (long long)(s->projection ? s->hidden : 0));
}

static enum fw_status file_io(struct prefix *s, struct fw_model *m, const char *path,
			      bool saving, struct fw_err *err)
{
	if (s->ctx != m->ctx || s->n_layers == 0)
		return s->host->errorf(err, FW_ERR_INVALID, "peft/prefix: %s: no adapter was built",
				       path);
	char st[256];
	structure(s, st, sizeof(st));
	if (saving)
		return peft_save(s->host, m->ctx, path, PREFIX_KIND, s->opts, s->own, s->n_own,
				 "prefix_layers", st, err);
	return peft_load(s->host, m->ctx, path, PREFIX_KIND, s->opts, NULL, 0, s->own, s->n_own,
			 "prefix_layers", st, err);
}

static enum fw_status prefix_save(void *state, struct fw_model *m, const char *path,
				  struct fw_err *err)
{
	return file_io(state, m, path, true, err);
}

static enum fw_status prefix_load(void *state, struct fw_model *m, const char *path,
				  struct fw_err *err)
{
	return file_io(state, m, path, false, err);
}

/* PEFT's prompt_embeddings (nvt, L * 2 * kv_dim) from the adapter file. */
static enum fw_status prefix_export(const struct fw_host *h, const char *adapter,
				    const char *dir, const char *base_model, struct fw_err *err)
{
	char *lay = NULL, *base_list = NULL;
	struct peft_tensors ts = { .h = h };
	struct fw_tensor out = { .dtype = FW_F32, .ndim = 2 };
	struct peft_text cfg = { .h = h };
	struct peft_heads heads = { .mods = { .h = h } };
	float *hid = NULL;
	int L = 0, proj = 0;
	long long P = 0, KV = 0, C = 0, Hd = 0, NH = 0;
	enum fw_status st;
	/* T5: PEFT's SEQ_2_SEQ_LM default of two submodules, one table whose
	 * copy for cross-attention T5 leaves unused (fw's decoder-only prefix) */
	bool s2s = peft_seq2seq_file(adapter);
	if ((st = peft_check_kind(h, PREFIX_KIND, adapter, err)) != FW_OK ||
	    (st = peft_attr(h, PREFIX_KIND, adapter, "prefix_layers", &lay, err)) != FW_OK ||
	    (st = peft_attr(h, PREFIX_KIND, adapter, "base_tensors", &base_list, err)) != FW_OK ||
	    (st = peft_tensors_read(h, PREFIX_KIND, adapter, &ts, err)) != FW_OK ||
	    (st = peft_heads_collect(h, PREFIX_KIND, &ts, &heads, err)) != FW_OK)
		goto out;
	if (sscanf(lay, "layers %d\nnvt %lld\nkv_dim %lld\ntoken_dim %lld\nheads %lld\n"
		   "projection %d %lld", &L, &P, &KV, &C, &NH, &proj, &Hd) != 7 || L <= 0 || P <= 0 || KV <= 0 || C <= 0 ||
	    (proj && Hd <= 0)) {
		st = h->errorf(err, FW_ERR_FORMAT, "peft/prefix: %s: attribute 'prefix_layers' is "
			       "malformed", adapter);
		goto out;
	}
	out.ne[0] = P;
	out.ne[1] = (int64_t)L * 2 * KV;
	fw_set_contiguous_strides(&out);
	snprintf(out.name, sizeof(out.name), "prompt_embeddings");
	if (!(out.data = h->malloc(fw_nbytes(&out))) ||
	    (proj && !(hid = h->malloc(sizeof(float) * (size_t)(P * Hd))))) {
		st = h->errorf(err, FW_ERR_NOMEM, "peft/prefix: out of memory");
		goto out;
	}
	float *o = out.data;
	if (proj) {
		struct fw_tensor *e = peft_tensors_find(&ts, "prefix.embedding.weight");
		struct fw_tensor *w = peft_tensors_find(&ts, "prefix.transform.0.weight");
		struct fw_tensor *b = peft_tensors_find(&ts, "prefix.transform.0.bias");
		if (!e || !w || !b || fw_nelem(e) != P * C || fw_nelem(w) != Hd * C ||
		    fw_nelem(b) != Hd) {
			st = h->errorf(err, FW_ERR_FORMAT, "peft/prefix: %s: the projection's "
				       "tensors are missing or misshapen", adapter);
			goto out;
		}
		for (long long p = 0; p < P; p++)
			for (long long j = 0; j < Hd; j++) {
				double a = fw_f32(b)[j];
				for (long long c = 0; c < C; c++)
					a += (double)fw_f32(e)[p * C + c] * fw_f32(w)[j * C + c];
				hid[p * Hd + j] = (float)tanh(a);
			}
	}
	for (int l = 0; l < L; l++) {
		char n[FW_NAME_MAX];
		if (!proj) {
			snprintf(n, sizeof(n), "prefix.h.%d.kv", l);
			struct fw_tensor *t = peft_tensors_find(&ts, n);
			if (!t || fw_nelem(t) != P * 2 * KV) {
				st = h->errorf(err, FW_ERR_FORMAT, "peft/prefix: %s: tensor '%s' is "
					       "missing or not (%lld, %lld)", adapter, n, P, 2 * KV);
				goto out;
			}
			for (long long p = 0; p < P; p++)
				memcpy(o + p * out.ne[1] + l * 2 * KV, fw_f32(t) + p * 2 * KV,
				       sizeof(float) * (size_t)(2 * KV));
			continue;
		}
		snprintf(n, sizeof(n), "prefix.h.%d.transform.2.weight", l);
		struct fw_tensor *w = peft_tensors_find(&ts, n);
		snprintf(n, sizeof(n), "prefix.h.%d.transform.2.bias", l);
		struct fw_tensor *b = peft_tensors_find(&ts, n);
		if (!w || !b || fw_nelem(w) != 2 * KV * Hd || fw_nelem(b) != 2 * KV) {
			st = h->errorf(err, FW_ERR_FORMAT, "peft/prefix: %s: layer %d's projection is "
				       "missing or misshapen", adapter, l);
			goto out;
		}
		for (long long p = 0; p < P; p++)
			for (long long r = 0; r < 2 * KV; r++) {
				double a = fw_f32(b)[r];
				for (long long j = 0; j < Hd; j++)
					a += (double)hid[p * Hd + j] * fw_f32(w)[r * Hd + j];
				o[p * out.ne[1] + l * 2 * KV + r] = (float)a;
			}
	}
	peft_put(&cfg, "{\n  \"base_model_name_or_path\": ");
	if (base_model)
		peft_put_json(&cfg, base_model);
	else
		peft_put(&cfg, "null");
	peft_put(&cfg, ",\n  \"encoder_hidden_size\": %lld,\n  \"inference_mode\": true,\n"
		 "  \"modules_to_save\": %s,\n"
		 "  \"num_attention_heads\": %lld,\n  \"num_layers\": %d,\n"
		 "  \"num_transformer_submodules\": %d,\n  \"num_virtual_tokens\": %lld,\n"
		 "  \"peft_type\": \"PREFIX_TUNING\",\n  \"prefix_projection\": %s,\n"
		 "  \"revision\": null,\n  \"task_type\": %s,\n  \"token_dim\": %lld\n}\n",
		 proj ? Hd : C, heads.mods.s, NH, L, s2s ? 2 : 1, P, proj ? "true" : "false",
		 peft_task_json(peft_encoder_task(base_list, &ts)), C);
	if (cfg.oom) {
		st = h->errorf(err, FW_ERR_NOMEM, "peft/prefix: out of memory");
		goto out;
	}
	st = peft_write_prompt_export(h, PREFIX_KIND, dir, &out, &heads, &cfg, err);
out:
	peft_heads_free(h, &heads);
	fw_free(base_list);
	if (out.data)
		h->free(out.data);
	if (hid)
		h->free(hid);
	peft_text_free(&cfg);
	peft_tensors_free(&ts);
	fw_free(lay);
	return st;
}

static void prefix_fini(void *state)
{
	struct prefix *s = state;
	if (s)
		s->host->free(s);
}

static enum fw_status prefix_init(const struct fw_host *host, const struct fw_options *opts,
				  void **state, struct fw_err *err)
{
	struct prefix *s = host->malloc(sizeof(*s));
	if (!s)
		return host->errorf(err, FW_ERR_NOMEM, "peft/prefix: out of memory");
	memset(s, 0, sizeof(*s));
	s->host = host;
	s->opts = opts;
	s->nvt = fw_opt_int(opts, "prefix-num-virtual-tokens");
	s->projection = fw_opt_bool(opts, "prefix-projection");
	s->hidden = fw_opt_int(opts, "prefix-encoder-hidden-size");
	if (s->projection && s->hidden <= 0) {
		host->free(s);
		return host->errorf(err, FW_ERR_INVALID, "peft/prefix: --prefix-projection needs "
				    "--prefix-encoder-hidden-size (PEFT encoder_hidden_size)");
	}
	*state = s;
	return FW_OK;
}

static const struct fw_peft_i iface = {
	.size = sizeof(struct fw_peft_i),
	.wrap_embed = prefix_wrap_embed,
	.wrap_kv = prefix_wrap_kv,
	.freeze = prefix_freeze,
	.save = prefix_save,
	.load = prefix_load,
	.export_peft = prefix_export,
};

static const struct fw_option_def options[] = {
	{ "prefix-num-virtual-tokens", FW_OPT_INT, NULL, 1, 4096, NULL,
	  "prefix length: key/value rows prepended in every attention layer (PEFT "
	  "num_virtual_tokens; required)" },
	{ "prefix-projection", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "reparametrise the prefix: Embedding(nvt, C) -> Linear(C, h) -> tanh -> "
	  "Linear(h, layers*2*kv_dim) (PEFT prefix_projection)" },
	{ "prefix-encoder-hidden-size", FW_OPT_INT, "0", 0, 1 << 20, NULL,
	  "h of the projection (PEFT encoder_hidden_size); needed with --prefix-projection" },
};

static const struct fw_plugin plugin = {
	FW_PLUGIN_HEADER,
	.kind = FW_KIND_PEFT,
	.name = PREFIX_KIND,
	.version = "1.0.0",
	.description = "prefix tuning (PEFT semantics): learned per-layer key/value prefixes "
		       "through wrap_kv, optional MLP reparametrisation, adapter files, PEFT export",
	.options = options,
	.n_options = (int)(sizeof(options) / sizeof(options[0])),
	.iface = &iface,
	.init = prefix_init,
	.fini = prefix_fini,
};

FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void)
{
	return &plugin;
}
