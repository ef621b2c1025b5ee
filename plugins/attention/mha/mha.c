/* attention/mha - exact multi-head attention: MHA, GQA and MQA, with RoPE,
 * ALiBi or a relative bias.
 *
 * q (B, Tq, Hq, D), k and v (B, Tk, Hkv, D) are permuted to heads-first
 * views (strided views of the fused qkv projection: no copy). Without
 * groups, P v is written heads-major straight into (B, Tq, Hq, D) (the
 * matmul's p3), so the output needs no copy either. With G = Hq / Hkv > 1
 * (GQA, MQA) the queries of a KV head's G heads are copied next to each
 * other, (B, Hkv, G*Tq, D), so one product per KV head scores all of them:
 * the repeated K/V are never materialised and the products' backward sums
 * dK and dV over each group. The scores are viewed as (B, Hq, Tq, Tk) for
 * the fused mask+softmax, then back for P v. Causal MHA runs q k^T, P v and
 * their backward over the lower triangle's row blocks only (matmul p4).
 * Position hooks: RoPE rotates q and k (the core's fw_rope, NeoX halves or
 * GPT-J pairs, partial rotary dim, Llama-3 frequency scaling); ALiBi adds
 * -slope_h (i - j) to the scaled scores (op mha.alibi, BLOOM's slopes from
 * fw_alibi_slope); a relative bias (Hq, Tq, Tk) is added to the softmax's
 * bias. While generating, keys and values go through the core's fw_kv_write
 * (fw_attn_cache_write) into a per-layer cache of Hkv heads, and the new
 * queries attend over the whole cache under the host's mask. A sequence bias
 * (padding, packed documents; fw_attn_spec.bias) is added in the same fused
 * softmax, on top of the causal mask; fully masked query rows give zeros.
 */
#include <math.h>
#include <stddef.h>

#include "fw/plugin.h"

struct mha {
	const struct fw_host *host;
	int alibi_op, window_op;
	bool recompute;          /* --mha-recompute */
};

/* Kernels run without state; the host table of the process (one fw). */
static const struct fw_host *g_host;

/* --- alibi -------------------------------------------------------------------------
 *
 * mha.alibi: src0 scores (B, H, Tq, Tk), optional src1 cache length i32 [1]
 * or per-row cache slots i32 (B, Tq); p0.f scale. out = scale * x - slope_h *
 * (i' - j) with i' = i + len or slots[b, i] (cache) or i + Tk - Tq (the
 * causal mask's alignment) and BLOOM's slopes. */

/* mha.alibi and mha.window: scores (B, H, Tq, Tk) in and out. */
static enum fw_status scores_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *x = out->src[0], *len = out->src[1];
	if (x->ndim != 4 || x->dtype != FW_F32)
		return fw_errorf(err, FW_ERR_SHAPE, "mha: scores must be f32 (B, H, Tq, Tk)");
	if (len && (len->dtype != FW_I32 || !fw_is_contiguous(len) ||
		    (len->ndim == 2 ? len->ne[0] != x->ne[0] || len->ne[1] != x->ne[2] :
				      fw_nelem(len) != 1)))
		return fw_errorf(err, FW_ERR_SHAPE, "mha: the offset must be i32 [1] or slots "
				 "(B, Tq)");
	out->dtype = FW_F32;
	out->ndim = 4;
	for (int i = 0; i < 4; i++)
		out->ne[i] = x->ne[i];
	return FW_OK;
}

struct alibi_job {
	struct fw_tensor *out;
	bool backward;
};

/* Score row r's query position: the cache slot, or row + offset. */
static int64_t query_pos(const struct fw_tensor *out, int64_t r)
{
	const struct fw_tensor *len = out->src[1];
	int64_t H = out->ne[1], Tq = out->ne[2], Tk = out->ne[3];
	if (len && len->ndim == 2)
		return fw_i32(len)[(r / (H * Tq)) * Tq + r % Tq];
	return r % Tq + (len ? fw_i32(len)[0] : Tk - Tq);
}

static void alibi_rows(void *arg, int64_t r0, int64_t r1)
{
	const struct alibi_job *j = arg;
	struct fw_tensor *out = j->out;
	int64_t H = out->ne[1], Tq = out->ne[2], Tk = out->ne[3];
	float scale = out->params[0].f;
	for (int64_t r = r0; r < r1; r++) {
		int64_t h = (r / Tq) % H, i = query_pos(out, r);
		if (j->backward) {
			const float *dy = fw_f32(out->grad) + r * Tk;
			float *dx = fw_f32(out->src[0]->grad) + r * Tk;
			for (int64_t k = 0; k < Tk; k++)
				dx[k] += scale * dy[k];
			continue;
		}
		float slope = fw_alibi_slope(H, h);
		const float *x = fw_f32(out->src[0]) + r * Tk;
		float *y = fw_f32(out) + r * Tk;
		for (int64_t k = 0; k < Tk; k++)
			y[k] = scale * x[k] - slope * (float)(i - k);
	}
}

/* rows over every score row, forward or (when the scores need one) backward */
static void score_rows(struct fw_tensor *out, bool backward,
		       void (*rows)(void *, int64_t, int64_t))
{
	struct alibi_job j = { out, backward };
	if (!backward || out->src[0]->grad)
		g_host->parallel_for(out->ne[0] * out->ne[1] * out->ne[2], rows, &j);
}

static void alibi_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	score_rows(out, false, alibi_rows);
}

static void alibi_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	score_rows(out, true, alibi_rows);
}

static uint32_t alibi_saved(const struct fw_tensor *out)
{
	return 0;                        /* backward reads only the output's gradient */
}

static const struct fw_op_i alibi_op = {
	.size = sizeof(struct fw_op_i),
	.name = "mha.alibi",
	.infer = scores_infer,
	.forward = alibi_forward,
	.backward = alibi_backward,
	.saved = alibi_saved,
};

/* --- sliding window -----------------------------------------------------------------
 *
 * mha.window: src0 scores (B, H, Tq, Tk), optional src1 cache length i32 [1]
 * or slots (B, Tq); p0.i the window w (0: none). out = x where i' - j < w
 * and, with slots, j <= i' (per-row caches have no mask), -inf elsewhere
 * (i' as in mha.alibi); the gradient flows through the kept scores only. */

static void window_rows(void *arg, int64_t r0, int64_t r1)
{
	const struct alibi_job *j = arg;
	struct fw_tensor *out = j->out;
	int64_t Tk = out->ne[3], w = out->params[0].i;
	bool slots = out->src[1] && out->src[1]->ndim == 2;
	for (int64_t r = r0; r < r1; r++) {
		int64_t i = query_pos(out, r);
		const float *x = fw_f32(j->backward ? out->grad : out->src[0]) + r * Tk;
		float *y = fw_f32(j->backward ? out->src[0]->grad : out) + r * Tk;
		for (int64_t k = 0; k < Tk; k++) {
			bool kept = (w <= 0 || i - k < w) && (!slots || k <= i);
			if (j->backward)
				y[k] += kept ? x[k] : 0.0f;
			else
				y[k] = kept ? x[k] : -INFINITY;
		}
	}
}

static void window_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	score_rows(out, false, window_rows);
}

static void window_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	score_rows(out, true, window_rows);
}

static const struct fw_op_i window_op = {
	.size = sizeof(struct fw_op_i),
	.name = "mha.window",
	.infer = scores_infer,
	.forward = window_forward,
	.backward = window_backward,
	.saved = alibi_saved,
};

/* --- attend ------------------------------------------------------------------------ */

/* The spec's rules, each one line naming the layer (exit 2 in fwrun). */
static enum fw_status check_spec(const struct fw_host *h, const struct fw_attn_spec *spec,
				 const struct fw_tensor *q, const struct fw_tensor *k,
				 struct fw_err *err)
{
	const char *n = spec->name;
	if (spec->n_head <= 0 || spec->n_kv_head <= 0 || spec->n_head % spec->n_kv_head)
		return h->errorf(err, FW_ERR_INVALID,
				 "attention/mha: %s: %d query heads are not a multiple of %d KV heads",
				 n, spec->n_head, spec->n_kv_head);
	if (q->ndim != 4 || k->ndim != 4 || q->ne[2] != spec->n_head ||
	    k->ne[2] != spec->n_kv_head || q->ne[3] != spec->head_dim || k->ne[3] != q->ne[3])
		return h->errorf(err, FW_ERR_SHAPE,
				 "attention/mha: %s: q must be (B, T, %d, %d) and k, v (B, T, %d, %d)",
				 n, spec->n_head, spec->head_dim, spec->n_kv_head, spec->head_dim);
	if (fw_attn_check_rope(spec, q, k, "attention/mha", FW_ERR_UNSUPPORTED, err) != FW_OK)
		return err->status;
	if (spec->pos == FW_POS_RELATIVE && !spec->pos_bias)
		return h->errorf(err, FW_ERR_INVALID,
				 "attention/mha: %s: a relative position hook without pos_bias", n);
	if (spec->pos < FW_POS_NONE || spec->pos > FW_POS_RELATIVE)
		return h->errorf(err, FW_ERR_INVALID, "attention/mha: %s: unknown position kind %d",
				 n, (int)spec->pos);
	if (FW_HAS(spec, window) && (spec->window < 0 ||
				     (spec->window > 0 && spec->mask != FW_MASK_CAUSAL)))
		return h->errorf(err, FW_ERR_INVALID, "attention/mha: %s: a sliding window (%lld) "
				 "needs causal attention and a positive width", n,
				 (long long)spec->window);
	if (spec->bias && spec->cache)
		return h->errorf(err, FW_ERR_UNSUPPORTED,
				 "attention/mha: %s: a sequence mask while generating with a cache is "
				 "not supported", n);
	return FW_OK;
}

static struct fw_tensor *mha_attend(void *state, struct fw_model *m,
				    const struct fw_attn_spec *spec, struct fw_tensor *q,
				    struct fw_tensor *k, struct fw_tensor *v, struct fw_err *err)
{
	struct mha *s = state;
	const struct fw_host *h = s->host;
	struct fw_ctx *ctx = m->ctx;
	static const int to_heads[4] = { 0, 2, 1, 3 };

	if (check_spec(h, spec, q, k, err) != FW_OK)
		return NULL;
	int64_t B = q->ne[0], Tq = q->ne[1], Hq = spec->n_head, Hkv = spec->n_kv_head;
	int64_t D = spec->head_dim, G = Hq / Hkv;
	if (spec->pos == FW_POS_ROPE) {
		q = fw_attn_rope(m, spec, q);
		k = fw_attn_rope(m, spec, k);
	}
	struct fw_tensor *mask = spec->bias;     /* (B, 1, Tq, Tk): broadcast over heads */
	bool causal = spec->mask == FW_MASK_CAUSAL;
	struct fw_tensor *slots = fw_attn_cache_slots(spec);
	if (spec->cache) {      /* generating: attend over the whole cache */
		k = fw_attn_cache_write(m, spec, &spec->cache->k, k, "k");
		v = fw_attn_cache_write(m, spec, &spec->cache->v, v, "v");
		mask = slots ? NULL : spec->cache->mask;  /* per-row slots: mha.window masks */
		causal = false;         /* the mask already hides future positions */
	}
	if (spec->pos == FW_POS_RELATIVE)        /* (Hq, Tq, Tk), learned by the arch */
		mask = mask ? h->add(ctx, mask, spec->pos_bias) : spec->pos_bias;
	float scale = spec->scale > 0 ? spec->scale : 1.0f / sqrtf((float)D);
	struct fw_tensor *qh = h->permute(ctx, q, to_heads);              /* (B, Hq, Tq, D) */
	struct fw_tensor *kh = h->permute(ctx, k, to_heads);              /* (B, Hkv, Tk, D) */
	struct fw_tensor *vh = h->permute(ctx, v, to_heads);
	int64_t Tk = k ? k->ne[1] : 0;
	int64_t grouped[4] = { B, Hkv, G * Tq, D };                       /* a KV head's queries */
	int64_t per_kv[4] = { B, Hkv, G * Tq, Tk }, per_q[4] = { B, Hq, Tq, Tk };
	if (G > 1)
		qh = h->reshape(ctx, h->cont(ctx, qh), 4, grouped);
	struct fw_tensor *scores = h->matmul(ctx, qh, kh, false, true);   /* (B, Hkv, G*Tq, Tk) */
	struct fw_tensor *att = scores;
	if (G > 1)
		att = h->reshape(ctx, att, 4, per_q);                     /* (B, Hq, Tq, Tk) */
	if (spec->pos == FW_POS_ALIBI) {
		struct fw_tensor *src[2] = { att, spec->cache ? spec->cache->len : NULL };
		union fw_param p = { .f = scale };
		att = h->op(ctx, s->alibi_op, src, spec->cache ? 2 : 1, &p, 1);
		scale = 1.0f;
	}
	if ((FW_HAS(spec, window) && spec->window > 0) || slots) {
		struct fw_tensor *src[2] = { att, spec->cache ? spec->cache->len : NULL };
		int64_t w = FW_HAS(spec, window) ? spec->window : 0;
		union fw_param p = { .i = (int32_t)(w < INT32_MAX ? w : INT32_MAX) };
		att = h->op(ctx, s->window_op, src, spec->cache ? 2 : 1, &p, 1);
	}
	/* Causal self-attention: the products run over the lower triangle's
	 * blocks only (FW_MATMUL's p4): q k^T where its scores go straight to
	 * the causal softmax, P v (and their backward) always. */
	bool tri = causal && !spec->cache && G == 1 && Tq == Tk && scores;
	if (tri && att == scores)
		scores->params[4].i = FW_MM_CAUSAL_OUT;
	att = h->softmax(ctx, att, mask, causal, scale);
	/* Backward recomputes the scores and the softmax from q and k, which
	 * it keeps anyway, instead of keeping the (B, Hq, Tq, Tk) probabilities
	 * (the chain breaks, and they are kept, where ALiBi or a window sits
	 * between). */
	if (att && !spec->cache && s->recompute) {
		scores->flags |= FW_FLAG_REMAT;
		att->flags |= FW_FLAG_REMAT;
	}
	if (spec->dropout > 0.0f)
		att = h->dropout(ctx, att, spec->dropout, spec->seed);
	struct fw_tensor *y;
	if (G == 1 && att && vh && att->dtype == vh->dtype) {
		/* P v written heads-major: (B, Tq, Hq, D) without a copy */
		struct fw_tensor *src[2] = { att, vh };
		union fw_param p[5] = { { .i = 0 }, { .i = 0 }, { .i = (int32_t)att->dtype },
					{ .i = 1 }, { .i = tri ? FW_MM_CAUSAL_A : FW_MM_CAUSAL_NONE } };
		y = h->op(ctx, FW_OP_MATMUL, src, 2, p, 5);
	} else {
		if (G > 1)
			att = h->reshape(ctx, att, 4, per_kv);
		y = h->matmul(ctx, att, vh, false, false);                /* (B, Hkv, G*Tq, D) */
		int64_t heads[4] = { B, Hq, Tq, D };
		if (G > 1)
			y = h->reshape(ctx, y, 4, heads);
		y = h->cont(ctx, h->permute(ctx, y, to_heads));           /* (B, Tq, Hq, D) */
	}
	if (!y) {
		struct fw_err *e = h->ctx_err(ctx);
		return h->errorf(err, e->status ? e->status : FW_ERR_INTERNAL,
				 "attention/mha: %s: %s", spec->name, e->msg), NULL;
	}
	return y;
}

static int register_once(const struct fw_host *host, const struct fw_op_i *op, int *id,
			 struct fw_err *err)
{
	if (*id < 0)
		*id = host->op_register(op, err);
	return *id;
}

static enum fw_status mha_init(const struct fw_host *host, const struct fw_options *o,
			       void **state, struct fw_err *err)
{
	static int alibi_id = -1, window_id = -1;   /* once per process */
	g_host = host;
	if (register_once(host, &alibi_op, &alibi_id, err) < 0 ||
	    register_once(host, &window_op, &window_id, err) < 0)
		return err->status;
	struct mha *s = host->malloc(sizeof(*s));
	if (!s)
		return host->errorf(err, FW_ERR_NOMEM, "attention/mha: out of memory");
	*s = (struct mha){ .host = host, .alibi_op = alibi_id, .window_op = window_id,
			   .recompute = !o || fw_opt_bool(o, "mha-recompute") };
	*state = s;
	return FW_OK;
}

static void mha_fini(void *state)
{
	struct mha *s = state;
	if (s)
		s->host->free(s);
}

static const struct fw_option_def options[] = {
	{ "mha-recompute", FW_OPT_BOOL, "true", 0, -1, NULL,
	  "training: recompute q k^T and the softmax in backward instead of keeping the "
	  "(B, H, T, T) probabilities (less memory, one more q k^T and softmax per layer)" },
};

static const struct fw_attention_i iface = {
	.size = sizeof(struct fw_attention_i),
	.attend = mha_attend,
};

static const struct fw_plugin plugin = {
	FW_PLUGIN_HEADER,
	.kind = FW_KIND_ATTENTION,
	.name = "attention/mha",
	.version = "1.1.0",
	.description = "exact attention (MHA/GQA/MQA; RoPE, ALiBi, relative bias), fused "
		       "mask+softmax",
	.options = options,
	.n_options = 1,
	.iface = &iface,
	.init = mha_init,
	.fini = mha_fini,
};

FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void)
{
	return &plugin;
}
