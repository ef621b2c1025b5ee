/* arch/decoder - GPT-2: a decoder-only causal transformer.
 *
 * Pre-LayerNorm blocks, learned positions, GELU (tanh) MLP, tied input and
 * output embeddings, as Hugging Face's GPT2LMHeadModel. Parameter names are
 * HF's without the "transformer." prefix; linear weights use torch's Linear
 * layout (out, in), i.e. the transpose of HF GPT-2's Conv1D tensors (import
 * and export transpose them). Llama-style choices are switches: --norm,
 * --bias, --tie-embeddings; attention goes through the attention plugin.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "fw/plugin.h"

#include "dims.h"

struct decoder {
	const struct fw_host *host;
	int64_t n_layer, n_head, n_embd, vocab, n_pos;
	float dropout, eps;
	bool rmsnorm, bias, tie, recompute;
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

/* A named linear layer (weight (out, in), optional bias), routed through the
 * host so a PEFT plugin can wrap it. */
static struct fw_tensor *linear(const struct decoder *d, struct fw_model *m,
				struct fw_tensor *x, int64_t in, int64_t out,
				const char *name, int layer, float std)
{
	char n[64], w[80], b[80];
	snprintf(n, sizeof(n), name, layer);
	snprintf(w, sizeof(w), "%s.weight", n);
	snprintf(b, sizeof(b), "%s.bias", n);
	struct fw_tensor *wt = param(d, m, 2, out, in, w, 0);
	d->host->init_normal(m, wt, std);
	struct fw_tensor *bt = NULL;
	if (d->bias) {
		bt = param(d, m, 1, out, 0, b, 0);
		d->host->init_const(m, bt, 0.0f);
	}
	return d->host->linear(m, n, x, wt, bt);
}

static struct fw_tensor *dropout(const struct decoder *d, struct fw_model *m,
				 struct fw_tensor *x, int salt)
{
	if (d->dropout <= 0.0f || !x)
		return x;
	return d->host->dropout(m->ctx, x, d->dropout, m->seed * 1000003u + (uint64_t)salt);
}

static struct fw_tensor *block(const struct decoder *d, struct fw_model *m,
			       struct fw_tensor *x, int l)
{
	const struct fw_host *h = d->host;
	int64_t B = m->batch, T = m->seq_len, C = d->n_embd, H = d->n_head, D = C / H;
	float proj_std = 0.02f / sqrtf(2.0f * (float)d->n_layer);
	char name[64];

	/* attention */
	struct fw_tensor *a = norm(d, m, x, "h.%d.ln_1", l);
	struct fw_tensor *qkv = linear(d, m, a, C, 3 * C, "h.%d.attn.c_attn", l, 0.02f);
	struct fw_tensor *q = h->slice(m->ctx, qkv, 2, 0, C);
	struct fw_tensor *k = h->slice(m->ctx, qkv, 2, C, C);
	struct fw_tensor *v = h->slice(m->ctx, qkv, 2, 2 * C, C);
	int64_t heads[4] = { B, T, H, D };
	q = h->reshape(m->ctx, q, 4, heads);
	k = h->reshape(m->ctx, k, 4, heads);
	v = h->reshape(m->ctx, v, 4, heads);
	snprintf(name, sizeof(name), "h.%d.attn", l);
	struct fw_attn_spec spec = {
		.size = sizeof(spec), .name = name, .layer = l, .n_head = (int)H,
		.n_kv_head = (int)H, .head_dim = (int)D, .mask = FW_MASK_CAUSAL,
		.dropout = d->dropout, .seed = m->seed * 7919u + (uint64_t)l,
		.cache = m->caches && l < m->n_caches ? &m->caches[l] : NULL,
		.bias = m->attn_bias,
	};
	struct fw_tensor *y = h->attention(m, &spec, q, k, v);     /* (B, T, H, D) */
	int64_t flat[3] = { B, T, C };
	y = h->reshape(m->ctx, y, 3, flat);
	y = linear(d, m, y, C, C, "h.%d.attn.c_proj", l, proj_std);
	x = h->add(m->ctx, x, dropout(d, m, y, 2 * l));

	/* MLP */
	struct fw_tensor *f = norm(d, m, x, "h.%d.ln_2", l);
	f = linear(d, m, f, C, 4 * C, "h.%d.mlp.c_fc", l, 0.02f);
	f = h->gelu(m->ctx, f, FW_GELU_TANH);
	f = linear(d, m, f, 4 * C, C, "h.%d.mlp.c_proj", l, proj_std);
	return h->add(m->ctx, x, dropout(d, m, f, 2 * l + 1));
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
	if (decode && (m->n_caches != d->n_layer || m->caches[0].max_len > d->n_pos || T != 1))
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
	struct fw_tensor *wpe = param(d, m, 2, d->n_pos, C, "wpe.weight", 0);
	h->init_normal(m, wte, 0.02f);
	h->init_normal(m, wpe, 0.01f);
	struct fw_tensor *pos;
	if (decode)             /* the position of this step's token: cache length */
		pos = h->embedding(m->ctx, wpe, m->caches[0].len);
	else if (m->positions)  /* each token's place in its own sequence */
		pos = h->embedding(m->ctx, wpe, m->positions);
	else
		pos = T == d->n_pos ? wpe : h->slice(m->ctx, wpe, 0, 0, T);
	struct fw_tensor *x = h->add(m->ctx, h->embedding(m->ctx, wte, m->tokens), pos);
	x = dropout(d, m, h->embed(m, x), -1);
	for (int l = 0; l < d->n_layer; l++) {
		if (d->recompute)
			h->checkpoint_begin(m->ctx);
		x = block(d, m, x, l);
		if (d->recompute)
			h->checkpoint_end(m->ctx);
	}
	x = norm(d, m, x, "ln_f", 0);
	struct fw_tensor *head = wte;
	if (!d->tie) {
		head = param(d, m, 2, d->vocab, C, "lm_head.weight", 0);
		h->init_normal(m, head, 0.02f);
	}
	m->logits = h->matmul(m->ctx, x, head, false, true);      /* (B, T, V) */
	if (decode)
		return m->logits ? FW_OK : h->errorf(err, h->ctx_err(m->ctx)->status,
						     "arch/decoder: %s", h->ctx_err(m->ctx)->msg);
	m->loss = h->cross_entropy(m->ctx, m->logits, m->targets, m->loss_mask, FW_IGNORE_INDEX);
	if (!m->loss) {
		struct fw_err *e = h->ctx_err(m->ctx);
		return h->errorf(err, e->status ? e->status : FW_ERR_INTERNAL, "arch/decoder: %s",
				 e->msg);
	}
	return FW_OK;
}

static int decoder_layers(void *state, const struct fw_model *m)
{
	return (int)((const struct decoder *)state)->n_layer;
}

static enum fw_status decoder_init(const struct fw_host *host, const struct fw_options *o,
				   void **state, struct fw_err *err)
{
	struct decoder *d = host->malloc(sizeof(*d));
	if (!d)
		return host->errorf(err, FW_ERR_NOMEM, "arch/decoder: out of memory");
	*d = (struct decoder){
		.host = host, .n_layer = fw_opt_int(o, "n-layer"), .n_head = fw_opt_int(o, "n-head"),
		.n_embd = fw_opt_int(o, "n-embd"), .vocab = fw_opt_int(o, "vocab-size"),
		.n_pos = fw_opt_int(o, "n-positions"), .dropout = (float)fw_opt_float(o, "dropout"),
		.eps = (float)fw_opt_float(o, "layer-norm-eps"),
		.rmsnorm = !strcmp(fw_opt_str(o, "norm"), "rmsnorm"),
		.bias = fw_opt_bool(o, "bias"), .tie = fw_opt_bool(o, "tie-embeddings"),
		.recompute = fw_opt_bool(o, "recompute-activations"),
	};
	/* The option ranges hold already; this adds the rules between options
	 * (the same ones fwrun import applies to a config.json). */
	static const char *const keys[6] = { "--n-layer", "--n-head", "--n-embd", "--vocab-size",
					     "--n-positions", "--layer-norm-eps" };
	struct decoder_dims dims = { d->n_layer, d->n_head, d->n_embd, d->vocab, d->n_pos,
				     fw_opt_float(o, "layer-norm-eps") };
	char why[160];
	if (!decoder_dims_check(&dims, keys, why, sizeof(why))) {
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
};

static const struct fw_arch_i iface = {
	.size = sizeof(struct fw_arch_i),
	.build = decoder_build,
	.n_layers = decoder_layers,
};

static const struct fw_plugin plugin = {
	FW_PLUGIN_HEADER,
	.kind = FW_KIND_ARCH,
	.name = "arch/decoder",
	.version = "1.0.0",
	.description = "GPT-2 decoder: pre-LayerNorm, learned positions, GELU, tied embeddings",
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
