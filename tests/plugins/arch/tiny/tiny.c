/* arch/tiny - a one-block causal LM for tests that reaches every hook the
 * host offers an arch: inputs, named parameters with init recipes,
 * host->embedding + host->embed (peft), host->linear for every projection
 * (peft), host->attention (attention plugin), cross entropy into m->loss.
 *
 * tokens, targets are (B,T) i32; x is (B,T,C); q, k, v are (B,T,H,D). */
#include <stdio.h>

#include "fw/plugin.h"

struct tiny {
	const struct fw_host *host;
	int64_t V, C, H, L;
};

static enum fw_status tiny_init(const struct fw_host *host, const struct fw_options *opts,
				void **state, struct fw_err *err)
{
	struct tiny *t = host->malloc(sizeof(*t));
	if (!t)
		return host->errorf(err, FW_ERR_NOMEM, "arch/tiny: out of memory");
	t->host = host;
	t->V = fw_opt_int(opts, "vocab-size");
	t->C = fw_opt_int(opts, "n-embd");
	t->H = fw_opt_int(opts, "n-head");
	t->L = fw_opt_int(opts, "n-layer");
	if (t->C % t->H) {
		host->free(t);
		return host->errorf(err, FW_ERR_INVALID,
				    "arch/tiny: --n-embd %lld is not a multiple of --n-head %lld",
				    (long long)fw_opt_int(opts, "n-embd"),
				    (long long)fw_opt_int(opts, "n-head"));
	}
	*state = t;
	return FW_OK;
}

static void tiny_fini(void *state)
{
	struct tiny *t = state;
	if (t)
		t->host->free(t);
}

/* A parameter with its init recipe; NULL propagates like an op. */
static struct fw_tensor *param(struct fw_model *m, const char *name, int ndim,
			       const int64_t *shape, int init, float v)
{
	const struct fw_host *h = m->host;
	struct fw_tensor *p = h->param(m->ctx, name, FW_F32, ndim, shape, true);
	if (init)
		h->init_normal(m, p, v);
	else
		h->init_const(m, p, v);
	return p;
}

/* Linear layer "NAME" (out <- in) with weight NAME.weight and bias NAME.bias,
 * routed through host->linear so a peft plugin can wrap it. */
static struct fw_tensor *dense(struct fw_model *m, const char *name, struct fw_tensor *x,
			       int64_t in, int64_t out, bool bias)
{
	char wn[FW_NAME_MAX], bn[FW_NAME_MAX];
	snprintf(wn, sizeof(wn), "%s.weight", name);
	snprintf(bn, sizeof(bn), "%s.bias", name);
	struct fw_tensor *w = param(m, wn, 2, (int64_t[]){ out, in }, 1, 0.02f);
	struct fw_tensor *b = bias ? param(m, bn, 1, (int64_t[]){ out }, 0, 0.0f) : NULL;
	if (!w || (bias && !b))
		return NULL;
	return m->host->linear(m, name, x, w, b);
}

static struct fw_tensor *norm(struct fw_model *m, const char *name, struct fw_tensor *x,
			      int64_t C)
{
	char wn[FW_NAME_MAX], bn[FW_NAME_MAX];
	snprintf(wn, sizeof(wn), "%s.weight", name);
	snprintf(bn, sizeof(bn), "%s.bias", name);
	struct fw_tensor *w = param(m, wn, 1, (int64_t[]){ C }, 0, 1.0f);
	struct fw_tensor *b = param(m, bn, 1, (int64_t[]){ C }, 0, 0.0f);
	return m->host->layernorm(m->ctx, x, w, b, 1e-5f);
}

static struct fw_tensor *block(const struct tiny *t, struct fw_model *m, int l,
			       struct fw_tensor *x)
{
	const struct fw_host *h = m->host;
	struct fw_ctx *ctx = m->ctx;
	int64_t B = m->batch, T = m->seq_len, C = t->C, H = t->H, D = C / H;
	int64_t bthd[4] = { B, T, H, D }, btc[3] = { B, T, C };
	char n[FW_NAME_MAX], at[FW_NAME_MAX];

	snprintf(n, sizeof(n), "h.%d.ln_1", l);
	struct fw_tensor *a = norm(m, n, x, C);
	snprintf(n, sizeof(n), "h.%d.attn.q", l);
	struct fw_tensor *q = h->reshape(ctx, dense(m, n, a, C, C, true), 4, bthd);
	snprintf(n, sizeof(n), "h.%d.attn.k", l);
	struct fw_tensor *k = h->reshape(ctx, dense(m, n, a, C, C, true), 4, bthd);
	snprintf(n, sizeof(n), "h.%d.attn.v", l);
	struct fw_tensor *v = h->reshape(ctx, dense(m, n, a, C, C, true), 4, bthd);
	if (!q || !k || !v)
		return NULL;
	snprintf(at, sizeof(at), "h.%d.attn", l);
	struct fw_attn_spec spec = {
		.size = sizeof(spec), .name = at, .layer = l,
		.n_head = (int)H, .n_kv_head = (int)H, .head_dim = (int)D,
		.mask = FW_MASK_CAUSAL, .pos = FW_POS_NONE, .rope_base = 10000.0f,
		.seed = m->seed,
	};
	struct fw_tensor *y = h->attention(m, &spec, q, k, v);       /* (B,T,H,D) */
	y = h->reshape(ctx, y, 3, btc);
	snprintf(n, sizeof(n), "h.%d.attn.proj", l);
	x = h->add(ctx, x, dense(m, n, y, C, C, true));

	snprintf(n, sizeof(n), "h.%d.ln_2", l);
	a = norm(m, n, x, C);
	snprintf(n, sizeof(n), "h.%d.mlp.fc", l);
	a = h->gelu(ctx, dense(m, n, a, C, 4 * C, true), FW_GELU_TANH);
	snprintf(n, sizeof(n), "h.%d.mlp.proj", l);
	return h->add(ctx, x, dense(m, n, a, 4 * C, C, true));
}

static enum fw_status tiny_build(void *state, struct fw_model *m, struct fw_err *err)
{
	const struct tiny *t = state;
	const struct fw_host *h = m->host;
	struct fw_ctx *ctx = m->ctx;
	int64_t B = m->batch, T = m->seq_len, V = t->V, C = t->C;

	if (m->caches)
		return h->errorf(err, FW_ERR_UNSUPPORTED,
				 "arch/tiny: incremental decoding is not supported");
	m->tokens = h->input(ctx, "tokens", FW_I32, 2, (int64_t[]){ B, T });
	m->targets = h->input(ctx, "targets", FW_I32, 2, (int64_t[]){ B, T });
	struct fw_tensor *wte = param(m, "wte", 2, (int64_t[]){ V, C }, 1, 0.02f);
	struct fw_tensor *wpe = param(m, "wpe", 2, (int64_t[]){ T, C }, 1, 0.01f);
	if (!m->tokens || !m->targets)
		return h->ctx_err(ctx)->status;

	struct fw_tensor *x = h->add(ctx, h->embedding(ctx, wte, m->tokens), wpe);
	x = h->embed(m, x);                                          /* (B,T,C) */
	for (int l = 0; l < t->L; l++)
		x = block(t, m, l, x);
	x = norm(m, "ln_f", x, C);
	m->logits = dense(m, "lm_head", x, C, V, false);             /* (B,T,V) */
	m->loss = h->cross_entropy(ctx, m->logits, m->targets, NULL, FW_IGNORE_INDEX);
	if (!m->loss) {
		const struct fw_err *ce = h->ctx_err(ctx);
		return h->errorf(err, ce->status ? ce->status : FW_ERR_INTERNAL, "%s",
				 ce->msg[0] ? ce->msg : "building the graph failed");
	}
	return FW_OK;
}

static int tiny_n_layers(void *state, const struct fw_model *m)
{
	const struct tiny *t = state;
	return (int)t->L;
}

static const struct fw_arch_i iface = {
	.size = sizeof(struct fw_arch_i),
	.build = tiny_build,
	.n_layers = tiny_n_layers,
};

static const struct fw_option_def options[] = {
	{ "vocab-size", FW_OPT_INT, "64", 2, 65536, NULL, "vocabulary size" },
	{ "n-embd", FW_OPT_INT, "16", 1, 4096, NULL, "embedding width C" },
	{ "n-head", FW_OPT_INT, "2", 1, 64, NULL, "attention heads H (C % H == 0)" },
	{ "n-layer", FW_OPT_INT, "1", 1, 64, NULL, "transformer blocks" },
};

static const struct fw_plugin plugin = {
	FW_PLUGIN_HEADER,
	.kind = FW_KIND_ARCH,
	.name = "arch/tiny",
#ifdef TINY_DUPLICATE
	.version = "0.0.2-duplicate",
#else
	.version = "0.0.1",
#endif
	.description = "tiny causal LM for tests: every host hook, one block by default",
	.options = options,
	.n_options = 4,
	.iface = &iface,
	.init = tiny_init,
	.fini = tiny_fini,
};

FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void)
{
	return &plugin;
}
