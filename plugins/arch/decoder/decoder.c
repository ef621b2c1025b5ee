/* arch/decoder - a decoder-only causal transformer: GPT-2 by default, Llama
 * by switches.
 *
 * Pre-norm blocks, learned positions, GELU (tanh) MLP, tied input and output
 * embeddings, as Hugging Face's GPT2LMHeadModel. Parameter names are HF's
 * without the "transformer." prefix; linear weights use torch's Linear layout
 * (out, in), i.e. the transpose of HF GPT-2's Conv1D tensors (import and
 * export transpose them). Llama-style choices use Megatron-LM's flags:
 * --normalization=RMSNorm, --swiglu, --position-embedding-type=rope (or
 * alibi, none), --group-query-attention --num-query-groups,
 * --disable-bias-linear, --untie-embeddings-and-output-weights. The fused
 * c_attn rows are [q (H*D); k (G*D); v (G*D)] for G KV heads; with --swiglu,
 * c_fc's rows are [gate (F); up (F)] and the MLP is c_proj(silu(gate) * up).
 * Attention and its position hooks go through the attention plugin.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "fw/plugin.h"

#include "dims.h"
#include "hf.h"

enum pos_type { POS_LEARNED = 0, POS_ROPE, POS_ALIBI, POS_NONE };

struct decoder {
	const struct fw_host *host;
	int64_t n_layer, n_head, n_kv_head, n_embd, vocab, n_pos, ffn;
	float dropout, eps;
	bool rmsnorm, bias, qkv_bias, tie, recompute, swiglu, fused_head;
	enum pos_type pos;
	float rope_base;
	int rope_dim;
	bool rope_interleaved;
	float rope_factor, rope_low, rope_high;
	int rope_orig;
	int64_t window;
};

static struct fw_tensor *param(const struct decoder *d, struct fw_model *m, int nd,
			       int64_t d0, int64_t d1, const char *fmt, int layer)
{
	char name[FW_NAME_MAX];
	int64_t shape[2] = { d0, d1 };
	snprintf(name, sizeof(name), fmt, layer);
	return d->host->param(m->ctx, name, FW_F32, nd, shape, true);
}

static struct fw_tensor *norm(const struct decoder *d, struct fw_model *m,
			      struct fw_tensor *x, const char *prefix, int layer)
{
	char w[64], b[64];
	snprintf(w, sizeof(w), "%s.weight", prefix);
	snprintf(b, sizeof(b), "%s.bias", prefix);
	struct fw_tensor *g = param(d, m, 1, d->n_embd, 0, w, layer);
	d->host->init_const(m, g, 1.0f);
	if (d->rmsnorm)
		return d->host->rmsnorm(m->ctx, x, g, d->eps);
	struct fw_tensor *bb = param(d, m, 1, d->n_embd, 0, b, layer);
	d->host->init_const(m, bb, 0.0f);
	return d->host->layernorm(m->ctx, x, g, bb, d->eps);
}

/* A named linear layer (weight (out, in), a bias with d->bias or with_bias),
 * routed through the host so a PEFT plugin can wrap it. */
static struct fw_tensor *linear_b(const struct decoder *d, struct fw_model *m,
				  struct fw_tensor *x, int64_t in, int64_t out,
				  const char *name, int layer, float std, bool with_bias)
{
	char n[64], w[80], b[80];
	snprintf(n, sizeof(n), name, layer);
	snprintf(w, sizeof(w), "%s.weight", n);
	snprintf(b, sizeof(b), "%s.bias", n);
	struct fw_tensor *wt = param(d, m, 2, out, in, w, 0);
	d->host->init_normal(m, wt, std);
	struct fw_tensor *bt = NULL;
	if (d->bias || with_bias) {
		bt = param(d, m, 1, out, 0, b, 0);
		d->host->init_const(m, bt, 0.0f);
	}
	return d->host->linear(m, n, x, wt, bt);
}

static struct fw_tensor *linear(const struct decoder *d, struct fw_model *m,
				struct fw_tensor *x, int64_t in, int64_t out,
				const char *name, int layer, float std)
{
	return linear_b(d, m, x, in, out, name, layer, std, false);
}

static struct fw_tensor *dropout(const struct decoder *d, struct fw_model *m,
				 struct fw_tensor *x, int salt)
{
	if (d->dropout <= 0.0f || !x)
		return x;
	return d->host->dropout(m->ctx, x, d->dropout, m->seed * 1000003u + (uint64_t)salt);
}

static struct fw_tensor *block(const struct decoder *d, struct fw_model *m,
			       struct fw_tensor *x, struct fw_tensor *bias, int l)
{
	const struct fw_host *h = d->host;
	if (!x)                 /* an earlier layer failed: the context has the error */
		return NULL;
	int64_t B = m->batch, T = x->ne[1], C = d->n_embd, H = d->n_head, D = C / H;
	int64_t G = d->n_kv_head, KV = G * D, F = d->ffn;
	float proj_std = 0.02f / sqrtf(2.0f * (float)d->n_layer);
	char name[64];
	static const enum fw_pos_kind pos_kind[] = { FW_POS_NONE, FW_POS_ROPE, FW_POS_ALIBI,
						     FW_POS_NONE };

	/* attention */
	struct fw_tensor *a = norm(d, m, x, "h.%d.ln_1", l);
	struct fw_tensor *qkv = linear_b(d, m, a, C, C + 2 * KV, "h.%d.attn.c_attn", l, 0.02f,
					 d->qkv_bias);
	struct fw_tensor *q = h->slice(m->ctx, qkv, 2, 0, C);
	struct fw_tensor *k = h->slice(m->ctx, qkv, 2, C, KV);
	struct fw_tensor *v = h->slice(m->ctx, qkv, 2, C + KV, KV);
	int64_t heads[4] = { B, T, H, D }, kv_heads[4] = { B, T, G, D };
	q = h->reshape(m->ctx, q, 4, heads);
	k = h->reshape(m->ctx, k, 4, kv_heads);
	v = h->reshape(m->ctx, v, 4, kv_heads);
	snprintf(name, sizeof(name), "h.%d.attn", l);
	struct fw_attn_spec spec = {
		.size = sizeof(spec), .name = name, .layer = l, .n_head = (int)H,
		.n_kv_head = (int)G, .head_dim = (int)D, .mask = FW_MASK_CAUSAL,
		.dropout = d->dropout, .seed = m->seed * 7919u + (uint64_t)l,
		.cache = m->caches && l < m->n_caches ? &m->caches[l] : NULL,
		.bias = bias, .pos = pos_kind[d->pos], .rope_base = d->rope_base,
		.rope_dim = d->rope_dim, .rope_interleaved = d->rope_interleaved,
		.rope_scale_factor = d->rope_factor, .rope_scale_low_freq = d->rope_low,
		.rope_scale_high_freq = d->rope_high, .rope_scale_orig_max_pos = d->rope_orig,
		.window = d->window,
	};
	struct fw_tensor *y = h->attention(m, &spec, q, k, v);     /* (B, T, H, D) */
	int64_t flat[3] = { B, T, C };
	y = h->reshape(m->ctx, y, 3, flat);
	y = linear(d, m, y, C, C, "h.%d.attn.c_proj", l, proj_std);
	x = h->add(m->ctx, x, dropout(d, m, y, 2 * l));

	/* MLP */
	struct fw_tensor *f = norm(d, m, x, "h.%d.ln_2", l);
	if (d->swiglu) {        /* Llama: down(silu(gate) * up), gate and up fused */
		f = linear(d, m, f, C, 2 * F, "h.%d.mlp.c_fc", l, 0.02f);
		struct fw_tensor *gate = h->slice(m->ctx, f, 2, 0, F);
		f = h->mul(m->ctx, h->silu(m->ctx, gate), h->slice(m->ctx, f, 2, F, F));
	} else {
		f = linear(d, m, f, C, F, "h.%d.mlp.c_fc", l, 0.02f);
		f = h->gelu(m->ctx, f, FW_GELU_TANH);
	}
	f = linear(d, m, f, F, C, "h.%d.mlp.c_proj", l, proj_std);
	return h->add(m->ctx, x, dropout(d, m, f, 2 * l + 1));
}

static enum fw_status fail(const struct decoder *d, struct fw_model *m, struct fw_err *err)
{
	struct fw_err *e = d->host->ctx_err(m->ctx);
	return d->host->errorf(err, e->status ? e->status : FW_ERR_INTERNAL, "arch/decoder: %s",
			       e->msg);
}

/* (B, P + T, ...) from virtual rows v (P, ...), broadcast over the batch, and
 * real rows r (B, T, ...); like is any finite (B, P + T, ...) tensor. */
static struct fw_tensor *virtual_rows(const struct decoder *d, struct fw_model *m,
				      struct fw_tensor *like, int64_t P, struct fw_tensor *v,
				      struct fw_tensor *r)
{
	const struct fw_host *h = d->host;
	struct fw_tensor *zero = h->scale(m->ctx, h->slice(m->ctx, like, 1, 0, P), 0.0f);
	return h->concat(m->ctx, h->add(m->ctx, zero, v), r, 1);
}

/* attn_bias (B, 1, T, T) widened to (B, 1, P + T, P + T): every query may
 * see the P virtual keys (the causal mask keeps virtual queries off the
 * real keys). x is the (B, P + T, C) input, finite. */
static struct fw_tensor *widen_bias(const struct decoder *d, struct fw_model *m,
				    struct fw_tensor *x, int64_t P)
{
	const struct fw_host *h = d->host;
	struct fw_ctx *c = m->ctx;
	int64_t B = x->ne[0], N = x->ne[1], T = N - P;
	/* zeros (B, 1, N, N): a column of x and a row of x, times 0 */
	struct fw_tensor *col = h->reshape(c, h->slice(c, x, 2, 0, 1), 4, (int64_t[]){ B, 1, N, 1 });
	struct fw_tensor *row = h->reshape(c, h->cont(c, h->slice(c, h->slice(c, x, 0, 0, 1), 2, 0, 1)),
					   4, (int64_t[]){ 1, 1, 1, N });
	struct fw_tensor *zero = h->scale(c, h->add(c, col, row), 0.0f);
	struct fw_tensor *real = h->concat(c, h->slice(c, h->slice(c, zero, 2, 0, T), 3, 0, P),
					   m->attn_bias, 3);
	return h->concat(c, h->slice(c, zero, 2, 0, P), real, 2);
}

static enum fw_status decoder_build(void *state, struct fw_model *m, struct fw_err *err)
{
	const struct decoder *d = state;
	const struct fw_host *h = d->host;
	int64_t B = m->batch, T = m->seq_len, C = d->n_embd;

	if (T > d->n_pos)
		return h->errorf(err, FW_ERR_INVALID,
				 "arch/decoder: --seq-length %lld exceeds --n-positions %lld",
				 (long long)T, (long long)d->n_pos);
	bool decode = m->caches != NULL;
	/* per-row cache slots (B, T) take a prefill chunk; a shared length one token */
	bool slots = decode && m->caches[0].len && m->caches[0].len->ndim == 2;
	if (decode && (m->n_caches != d->n_layer || m->caches[0].max_len > d->n_pos ||
		       (T != 1 && !slots)))
		return h->errorf(err, FW_ERR_INVALID,
				 "arch/decoder: generating needs %lld caches of at most %lld positions "
				 "and one token a step", (long long)d->n_layer, (long long)d->n_pos);
	int64_t bt[2] = { B, T };
	m->tokens = h->input(m->ctx, "tokens", FW_I32, 2, bt);
	if (!decode)
		m->targets = h->input(m->ctx, "targets", FW_I32, 2, bt);
	if (!decode && m->segmented) {
		int64_t bqk[4] = { B, 1, T, T };
		m->positions = h->input(m->ctx, "positions", FW_I32, 2, bt);
		m->attn_bias = h->input(m->ctx, "attn_bias", FW_F32, 4, bqk);
	}
	struct fw_tensor *wte = param(d, m, 2, d->vocab, C, "wte.weight", 0);
	h->init_normal(m, wte, 0.02f);
	/* virtual tokens (prompt tuning) come in front, as PEFT concatenates them */
	struct fw_tensor *x = h->embed(m, h->embedding(m->ctx, wte, m->tokens));
	int64_t P = FW_HAS(m, n_virtual) && !decode ? m->n_virtual : 0;
	int64_t K = P ? m->virtual_at : 0;       /* the virtual rows stand before token K */
	if (!x)
		return fail(d, m, err);
	if (K < 0 || K >= T || (K && m->positions))
		return h->errorf(err, FW_ERR_UNSUPPORTED, "arch/decoder: virtual tokens before "
				 "token %lld: %s", (long long)K, K && m->positions ?
				 "segmented (SFT) rows take them only in front" :
				 "outside the sequence");
	if (P && T + P > d->n_pos)
		return h->errorf(err, FW_ERR_INVALID, "arch/decoder: --seq-length %lld plus %lld "
				 "virtual tokens exceeds --n-positions %lld", (long long)T,
				 (long long)P, (long long)d->n_pos);
	/* a key/value prefix (prefix tuning) stands as past tokens: the real
	 * ones are at positions S.., as Hugging Face numbers them after
	 * past_key_values */
	int64_t S = FW_HAS(m, n_prefix) && !decode ? m->n_prefix : 0;
	if (S && d->pos == POS_LEARNED && T + S > d->n_pos)
		return h->errorf(err, FW_ERR_INVALID, "arch/decoder: --seq-length %lld plus the "
				 "%lld prefix positions exceeds --n-positions %lld", (long long)T,
				 (long long)S, (long long)d->n_pos);
	if (d->pos == POS_LEARNED) {    /* RoPE and ALiBi act inside attention */
		struct fw_tensor *wpe = param(d, m, 2, d->n_pos, C, "wpe.weight", 0);
		h->init_normal(m, wpe, 0.01f);
		struct fw_tensor *pos;
		if (decode)             /* the cache length, or each token's slot (B, T) */
			pos = h->embedding(m->ctx, wpe, m->caches[0].len);
		else if (m->positions && !P)    /* each token's place in its own sequence */
			pos = h->embedding(m->ctx, wpe, m->positions);
		else if (m->positions)  /* the same, after the P virtual tokens */
			pos = virtual_rows(d, m, x, P, h->slice(m->ctx, wpe, 0, 0, P),
					   h->embedding(m->ctx, h->slice(m->ctx, wpe, 0, P, d->n_pos - P),
							m->positions));
		else
			pos = !S && T + P == d->n_pos ? wpe : h->slice(m->ctx, wpe, 0, S, T + P);
		x = h->add(m->ctx, x, pos);
	} else if (P && d->pos == POS_ROPE && m->positions) {
		return h->errorf(err, FW_ERR_UNSUPPORTED, "arch/decoder: virtual tokens with RoPE "
				 "and segmented (SFT) rows are not supported");
	}
	x = dropout(d, m, x, -1);
	struct fw_tensor *bias = P && m->attn_bias ? widen_bias(d, m, x, P) : m->attn_bias;
	for (int l = 0; l < d->n_layer; l++) {
		if (d->recompute)
			h->checkpoint_begin(m->ctx);
		x = block(d, m, x, bias, l);
		if (d->recompute)
			h->checkpoint_end(m->ctx);
	}
	/* The head sees the rows that predict real tokens: the last virtual row
	 * predicts token K, the row of token K-1 (which precedes them) nothing. */
	if (P && K > 1)
		x = h->concat(m->ctx, h->slice(m->ctx, x, 1, 0, K - 1),
			      h->slice(m->ctx, x, 1, K - 1 + P, T - K + 1), 1);
	else if (P)
		x = h->slice(m->ctx, x, 1, P, T);
	x = norm(d, m, x, "ln_f", 0);
	struct fw_tensor *head = wte;
	if (!d->tie) {
		head = param(d, m, 2, d->vocab, C, "lm_head.weight", 0);
		h->init_normal(m, head, 0.02f);
	}
	/* The logits for whoever asks (generate, scoring); a training graph asks
	 * only for the loss, which the fused op computes without them. */
	m->logits = h->matmul(m->ctx, x, head, false, true);      /* (B, T, V) */
	if (decode)
		return m->logits ? FW_OK : fail(d, m, err);
	if (d->fused_head && FW_HAS(h, lm_head_cross_entropy))
		m->loss = h->lm_head_cross_entropy(m->ctx, x, head, m->targets, m->loss_mask,
						   FW_IGNORE_INDEX, 0);
	else
		m->loss = h->cross_entropy(m->ctx, m->logits, m->targets, m->loss_mask,
					   FW_IGNORE_INDEX);
	return m->loss ? FW_OK : fail(d, m, err);
}

static int decoder_layers(void *state, const struct fw_model *m)
{
	return (int)((const struct decoder *)state)->n_layer;
}

/* The rules between the Llama-style options; false with why set. */
static bool decoder_options_check(struct decoder *d, const struct fw_options *o, char *why,
				  size_t len)
{
	bool gqa = fw_opt_bool(o, "group-query-attention");
	int64_t groups = fw_opt_int(o, "num-query-groups"), D = d->n_embd / d->n_head;
	if (!gqa && groups != 1) {
		snprintf(why, len, "--num-query-groups %lld needs --group-query-attention",
			 (long long)groups);
		return false;
	}
	d->n_kv_head = gqa ? groups : d->n_head;
	if (d->n_head % d->n_kv_head) {
		snprintf(why, len, "--n-head %lld is not a multiple of --num-query-groups %lld",
			 (long long)d->n_head, (long long)d->n_kv_head);
		return false;
	}
	double pct = fw_opt_float(o, "rotary-percent");
	if (d->pos != POS_ROPE) {
		static const char *const rope_only[] = { "rotary-interleaved", "use-rope-scaling" };
		for (int i = 0; i < 2; i++)
			if (fw_opt_bool(o, rope_only[i])) {
				snprintf(why, len, "--%s needs --position-embedding-type=rope",
					 rope_only[i]);
				return false;
			}
		if (pct != 1.0 || fw_opt_float(o, "rotary-base") != 10000.0) {
			snprintf(why, len, "--rotary-%s needs --position-embedding-type=rope",
				 pct != 1.0 ? "percent" : "base");
			return false;
		}
	} else {
		/* as GPT-NeoX's rotary_ndims and Megatron's int(kv_channels * percent) */
		d->rope_dim = (int)(D * pct);
		if (d->rope_dim <= 0 || d->rope_dim % 2 || d->rope_dim > D) {
			snprintf(why, len, "--rotary-percent %g gives a rotary dim of %d for head dim "
				 "%lld: it must be even and in [2, %lld]", pct, d->rope_dim,
				 (long long)D, (long long)D);
			return false;
		}
		if (fw_opt_bool(o, "use-rope-scaling")) {
			d->rope_factor = (float)fw_opt_float(o, "rope-scaling-factor");
			d->rope_low = (float)fw_opt_float(o, "rope-scaling-low-freq-factor");
			d->rope_high = (float)fw_opt_float(o, "rope-scaling-high-freq-factor");
			d->rope_orig = (int)fw_opt_int(o, "rope-scaling-original-max-position-embeddings");
			if (!(d->rope_high > d->rope_low)) {
				snprintf(why, len, "--rope-scaling-high-freq-factor %g must exceed "
					 "--rope-scaling-low-freq-factor %g", (double)d->rope_high,
					 (double)d->rope_low);
				return false;
			}
		}
	}
	d->ffn = decoder_ffn(fw_opt_int(o, "ffn-hidden-size"), d->n_embd, d->swiglu);
	if (d->ffn <= 0) {
		snprintf(why, len, "--swiglu with --n-embd %lld gives no MLP width by Megatron's "
			 "rule (4h * 2/3, a multiple of 64): set --ffn-hidden-size",
			 (long long)d->n_embd);
		return false;
	}
	return true;
}

static enum fw_status decoder_init(const struct fw_host *host, const struct fw_options *o,
				   void **state, struct fw_err *err)
{
	struct decoder *d = host->malloc(sizeof(*d));
	if (!d)
		return host->errorf(err, FW_ERR_NOMEM, "arch/decoder: out of memory");
	static const char *const pos_types[] = { "learned_absolute", "rope", "alibi", "none" };
	int pos = 0;
	while (pos < 3 && strcmp(fw_opt_str(o, "position-embedding-type"), pos_types[pos]))
		pos++;
	/* --normalization, --disable-bias-linear and --untie-... are Megatron's
	 * names for --norm, --bias and --tie-embeddings: either spelling of the
	 * non-default choice selects it. */
	*d = (struct decoder){
		.host = host, .n_layer = fw_opt_int(o, "n-layer"), .n_head = fw_opt_int(o, "n-head"),
		.n_embd = fw_opt_int(o, "n-embd"), .vocab = fw_opt_int(o, "vocab-size"),
		.n_pos = fw_opt_int(o, "n-positions"), .dropout = (float)fw_opt_float(o, "dropout"),
		.eps = (float)fw_opt_float(o, "layer-norm-eps"),
		.rmsnorm = !strcmp(fw_opt_str(o, "norm"), "rmsnorm") ||
			   !strcmp(fw_opt_str(o, "normalization"), "RMSNorm"),
		.bias = fw_opt_bool(o, "bias") && !fw_opt_bool(o, "disable-bias-linear"),
		.qkv_bias = fw_opt_bool(o, "add-qkv-bias"),
		.tie = fw_opt_bool(o, "tie-embeddings") &&
		       !fw_opt_bool(o, "untie-embeddings-and-output-weights"),
		.recompute = fw_opt_bool(o, "recompute-activations"),
		.fused_head = fw_opt_bool(o, "fused-head-loss"),
		.swiglu = fw_opt_bool(o, "swiglu"), .pos = (enum pos_type)pos,
		.rope_base = (float)fw_opt_float(o, "rotary-base"),
		.rope_interleaved = fw_opt_bool(o, "rotary-interleaved"),
		.window = fw_opt_int(o, "sliding-window"),
	};
	/* The option ranges hold already; this adds the rules between options
	 * (the same ones fwrun import applies to a config.json). */
	static const char *const keys[6] = { "--n-layer", "--n-head", "--n-embd", "--vocab-size",
					     "--n-positions", "--layer-norm-eps" };
	struct decoder_dims dims = { d->n_layer, d->n_head, d->n_embd, d->vocab, d->n_pos,
				     fw_opt_float(o, "layer-norm-eps") };
	char why[200];
	if (!decoder_dims_check(&dims, keys, why, sizeof(why)) ||
	    !decoder_options_check(d, o, why, sizeof(why))) {
		host->free(d);
		return host->errorf(err, FW_ERR_INVALID, "arch/decoder: %s", why);
	}
	*state = d;
	return FW_OK;
}

static void decoder_fini(void *state)
{
	struct decoder *d = state;
	if (d)
		d->host->free(d);
}

static const char *const norms[] = { "layernorm", "rmsnorm", NULL };
static const char *const normalizations[] = { "LayerNorm", "RMSNorm", NULL };
static const char *const positions[] = { "learned_absolute", "rope", "alibi", "none", NULL };

static const struct fw_option_def options[] = {
	{ "n-layer", FW_OPT_INT, "12", 1, DECODER_LAYER_MAX, NULL, "transformer blocks" },
	{ "n-head", FW_OPT_INT, "12", 1, DECODER_HEAD_MAX, NULL,
	  "attention heads (a divisor of n-embd)" },
	{ "n-embd", FW_OPT_INT, "768", 1, DECODER_EMBD_MAX, NULL, "model width" },
	{ "vocab-size", FW_OPT_INT, "50257", DECODER_VOCAB_MIN, DECODER_VOCAB_MAX, NULL,
	  "vocabulary size" },
	{ "n-positions", FW_OPT_INT, "1024", 1, DECODER_POS_MAX, NULL,
	  "learned positions (max sequence)" },
	{ "dropout", FW_OPT_FLOAT, "0.0", 0, 0.99, NULL,
	  "dropout on embeddings, residual branches and attention (GPT-2 used 0.1)" },
	{ "layer-norm-eps", FW_OPT_FLOAT, "1e-5", 0, DECODER_EPS_MAX, NULL,
	  "norm epsilon (> 0)" },
	{ "norm", FW_OPT_CHOICE, "layernorm", 0, -1, norms, "layernorm (GPT-2) or rmsnorm (Llama)" },
	{ "bias", FW_OPT_BOOL, "true", 0, -1, NULL, "biases in linear layers and norms" },
	{ "tie-embeddings", FW_OPT_BOOL, "true", 0, -1, NULL,
	  "output head shares the token embedding" },
	{ "recompute-activations", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "recompute each block's activations in backward (less memory, ~1.3x compute)" },
	{ "fused-head-loss", FW_OPT_BOOL, "true", 0, -1, NULL,
	  "the head's product and the loss in row chunks: no (B, T, V) logits or gradient "
	  "in training (false: matmul + cross_entropy)" },
	/* Megatron-LM's names for the Llama family */
	{ "normalization", FW_OPT_CHOICE, "LayerNorm", 0, -1, normalizations,
	  "LayerNorm or RMSNorm (RMSNorm here or --norm=rmsnorm selects RMSNorm)" },
	{ "disable-bias-linear", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "no biases in linear layers (same as --bias=false)" },
	{ "add-qkv-bias", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "a bias on c_attn (q, k, v) even without other biases, as Qwen2" },
	{ "untie-embeddings-and-output-weights", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "a separate lm_head.weight (same as --tie-embeddings=false)" },
	{ "swiglu", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "SwiGLU MLP as Llama: c_proj(silu(gate) * up), c_fc rows [gate; up]" },
	{ "ffn-hidden-size", FW_OPT_INT, "0", 0, DECODER_EMBD_MAX * DECODER_MLP_MULT, NULL,
	  "MLP width; 0 = 4 * n-embd, or with --swiglu Megatron's 4h*2/3 rounded down to 64" },
	{ "group-query-attention", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "grouped-query attention with --num-query-groups KV heads" },
	{ "num-query-groups", FW_OPT_INT, "1", 1, DECODER_HEAD_MAX, NULL,
	  "KV heads under --group-query-attention (1 = multi-query); divides n-head" },
	{ "sliding-window", FW_OPT_INT, "0", 0, DECODER_POS_MAX, NULL,
	  "causal sliding window as Mistral: position i sees i-w < j <= i; 0 = none (the "
	  "attention plugin must support it: mha, or sparse with the same window)" },
	{ "position-embedding-type", FW_OPT_CHOICE, "learned_absolute", 0, -1, positions,
	  "learned_absolute (GPT-2), rope (Llama), alibi (BLOOM) or none" },
	{ "rotary-base", FW_OPT_FLOAT, "10000", 1, 1e12, NULL, "RoPE base (theta)" },
	{ "rotary-percent", FW_OPT_FLOAT, "1.0", 0, 1, NULL,
	  "fraction of each head's dims that RoPE rotates (GPT-NeoX rotary_pct)" },
	{ "rotary-interleaved", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "rotate pairs (2i, 2i+1) as GPT-J, not halves (i, i+R/2) as NeoX/Llama" },
	{ "use-rope-scaling", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "Llama-3 RoPE frequency scaling (HF rope_scaling rope_type llama3)" },
	{ "rope-scaling-factor", FW_OPT_FLOAT, "8.0", 1, 1e6, NULL, "llama3 scaling: factor" },
	{ "rope-scaling-low-freq-factor", FW_OPT_FLOAT, "1.0", 1e-6, 1e6, NULL,
	  "llama3 scaling: low_freq_factor" },
	{ "rope-scaling-high-freq-factor", FW_OPT_FLOAT, "4.0", 1e-6, 1e6, NULL,
	  "llama3 scaling: high_freq_factor" },
	{ "rope-scaling-original-max-position-embeddings", FW_OPT_INT, "8192", 1, DECODER_POS_MAX,
	  NULL, "llama3 scaling: original_max_position_embeddings" },
};

static const struct fw_arch_i iface = {
	.size = sizeof(struct fw_arch_i),
	.build = decoder_build,
	.n_layers = decoder_layers,
	.hf_maps = (const struct fw_hf_map *const[]){ &decoder_hf_gpt2, &decoder_hf_llama,
							     &decoder_hf_qwen2, &decoder_hf_mistral, NULL },
};

static const struct fw_plugin plugin = {
	FW_PLUGIN_HEADER,
	.kind = FW_KIND_ARCH,
	.name = "arch/decoder",
	.version = "1.1.0",
	.description = "decoder-only transformer: GPT-2 by default; Llama (RMSNorm, SwiGLU, RoPE, "
		       "GQA) by switches",
	.options = options,
	.n_options = (int)(sizeof(options) / sizeof(options[0])),
	.iface = &iface,
	.init = decoder_init,
	.fini = decoder_fini,
};

FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void)
{
	return &plugin;
}
