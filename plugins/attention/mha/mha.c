/* attention/mha - exact multi-head attention: MHA, GQA and MQA, with RoPE,
 * ALiBi or a relative bias.
 *
 * q (B, Tq, Hq, D), k and v (B, Tk, Hkv, D) are permuted to heads-first
 * views. With G = Hq / Hkv > 1 (GQA, MQA) the queries of a KV head's G heads
 * are copied next to each other, (B, Hkv, G*Tq, D), so one product per KV
 * head scores all of them: the repeated K/V are never materialised and the
 * products' backward sums dK and dV over each group. The scores are viewed as
 * (B, Hq, Tq, Tk) for the fused mask+softmax, then back for P v.
 * Position hooks: RoPE rotates q and k (plugin op mha.rope, NeoX halves or
 * GPT-J pairs, partial rotary dim, Llama-3 frequency scaling); ALiBi adds
 * -slope_h (i - j) to the scaled scores (op mha.alibi, BLOOM's slopes); a
 * relative bias (Hq, Tq, Tk) is added to the softmax's bias. While
 * generating, keys and values go through mha.kv_write into a per-layer cache
 * of Hkv heads, and the new queries attend over the whole cache under the
 * host's mask. A sequence bias (padding, packed documents; fw_attn_spec.bias)
 * is added in the same fused softmax, on top of the causal mask; fully masked
 * query rows give zeros.
 */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "fw/plugin.h"

struct mha {
	const struct fw_host *host;
	int kv_write_op, rope_op, alibi_op;
};

/* Kernels run without state; the host table of the process (one fw). */
static const struct fw_host *g_host;

/* --- kv_write ----------------------------------------------------------------- */

/* kv_write: src0 cache (B, Tmax, H, D), src1 new (B, Tq, H, D), src2 len i32
 * [1]. Copies new into cache rows [len, len + Tq) and returns the cache
 * itself (a view), so readers run after the write. */
static enum fw_status kv_write_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *c = out->src[0], *x = out->src[1], *len = out->src[2];
	if (!x || !len || c->ndim != 4 || x->ndim != 4 || c->ne[0] != x->ne[0] ||
	    c->ne[2] != x->ne[2] || c->ne[3] != x->ne[3] || x->ne[1] > c->ne[1] ||
	    c->dtype != FW_F32 || x->dtype != FW_F32 || len->dtype != FW_I32)
		return fw_errorf(err, FW_ERR_SHAPE, "mha.kv_write: cache and new rows do not fit");
	out->dtype = FW_F32;
	out->ndim = 4;
	for (int i = 0; i < 4; i++) {
		out->ne[i] = c->ne[i];
		out->nb[i] = c->nb[i];
	}
	out->view_offset = 0;
	return FW_OK;
}

static void kv_write_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	const struct fw_tensor *c = out->src[0], *x = out->src[1];
	int64_t pos = *(const int32_t *)out->src[2]->data;
	int64_t B = c->ne[0], Tmax = c->ne[1], Tq = x->ne[1], row = c->ne[2] * c->ne[3];
	if (pos < 0 || pos + Tq > Tmax)
		pos = pos < 0 ? 0 : Tmax - Tq;      /* the host checks; never write outside */
	for (int64_t b = 0; b < B; b++)
		memcpy((float *)c->data + (b * Tmax + pos) * row,
		       (const float *)x->data + b * Tq * row, sizeof(float) * (size_t)(Tq * row));
	out->data = c->data;
}

static const struct fw_op_i kv_write_op = {
	.size = sizeof(struct fw_op_i),
	.name = "mha.kv_write",
	.flags = FW_OPF_VIEW,
	.infer = kv_write_infer,
	.forward = kv_write_forward,
};

/* --- rope --------------------------------------------------------------------------
 *
 * mha.rope: src0 x (B, T, H, D), any strides; src1 (by p7 mode) positions
 * (B, T) i32 (mode 1) or the cache length i32 [1] (mode 2: position len + t);
 * mode 0: position t. p0.i rotary dim R (even, <= D), p1.i interleaved,
 * p2.f base, p3.f llama3 factor (0 = none), p4.f low_freq_factor,
 * p5.f high_freq_factor, p6.f original_max_position_embeddings.
 * Out (B, T, H, D) contiguous. Pair i (i < R/2) is (i, i + R/2) (NeoX/Llama,
 * HF rotate_half) or (2i, 2i + 1) (GPT-J), rotated by pos * inv_freq[i] with
 * inv_freq[i] = base^(-2i/R) (HF's float32 recipe); dims >= R pass through. */
enum { ROPE_ARANGE = 0, ROPE_POSITIONS, ROPE_OFFSET };
#define ROPE_MAX_PAIRS 4096

static enum fw_status rope_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *x = out->src[0], *p = out->src[1];
	int R = out->params[0].i, mode = out->params[7].i;
	if (x->ndim != 4 || x->dtype != FW_F32)
		return fw_errorf(err, FW_ERR_SHAPE, "mha.rope: x must be f32 (B, T, H, D)");
	if (R <= 0 || R % 2 || R > x->ne[3] || R / 2 > ROPE_MAX_PAIRS)
		return fw_errorf(err, FW_ERR_INVALID,
				 "mha.rope: rotary dim %d must be even, positive and at most the "
				 "head dim %lld", R, (long long)x->ne[3]);
	if (mode == ROPE_POSITIONS &&
	    (!p || p->dtype != FW_I32 || p->ndim != 2 || p->ne[0] != x->ne[0] ||
	     p->ne[1] != x->ne[1]))
		return fw_errorf(err, FW_ERR_SHAPE, "mha.rope: positions must be i32 (B, T) of x");
	if (mode == ROPE_OFFSET && (!p || p->dtype != FW_I32 || fw_nelem(p) != 1))
		return fw_errorf(err, FW_ERR_SHAPE, "mha.rope: the offset must be i32 [1]");
	out->dtype = FW_F32;
	out->ndim = 4;
	for (int i = 0; i < 4; i++)
		out->ne[i] = x->ne[i];
	return FW_OK;
}

/* inv_freq[R/2] as HF computes it (float32), with Llama-3 scaling
 * (transformers' _compute_llama3_parameters). */
static void rope_inv_freq(const struct fw_tensor *out, float *inv)
{
	int R = out->params[0].i;
	double base = out->params[2].f, factor = out->params[3].f;
	double lo = out->params[4].f, hi = out->params[5].f, old = out->params[6].f;
	for (int i = 0; i < R / 2; i++) {
		float f = (float)(1.0 / pow(base, (double)(2 * i) / R));
		if (factor > 0) {
			double low_wavelen = old / lo, high_wavelen = old / hi;
			double wavelen = 2 * M_PI / f;
			if (wavelen > low_wavelen) {
				f = (float)(f / factor);
			} else if (!(wavelen < high_wavelen)) {     /* medium: smooth */
				double s = (old / wavelen - lo) / (hi - lo);
				f = (float)((1 - s) * f / factor + s * f);
			}
		}
		inv[i] = f;
	}
}

static int64_t rope_pos(const struct fw_tensor *out, int64_t b, int64_t t)
{
	const struct fw_tensor *p = out->src[1];
	switch (out->params[7].i) {
	case ROPE_POSITIONS:
		return fw_i32(p)[b * p->nb[0] + t * p->nb[1]];
	case ROPE_OFFSET:
		return fw_i32(p)[0] + t;
	default:
		return t;
	}
}

/* One (b, t) row of all heads: y = rot(x) for forward, x = rot^T(y) for
 * backward (sign -1 and accumulation into dst). */
struct rope_job {
	const struct fw_tensor *out;
	const float *src;             /* forward: x (strided); backward: dy */
	float *dst;                   /* forward: y; backward: dx (+=) */
	const int64_t *snb;           /* src strides */
	bool backward;
};

static void rope_rows(void *arg, int64_t r0, int64_t r1)
{
	const struct rope_job *j = arg;
	const struct fw_tensor *out = j->out;
	int64_t T = out->ne[1], H = out->ne[2], D = out->ne[3];
	int R = out->params[0].i, P = R / 2;
	bool inter = out->params[1].i != 0;
	float inv[ROPE_MAX_PAIRS], c[ROPE_MAX_PAIRS], s[ROPE_MAX_PAIRS];
	rope_inv_freq(out, inv);
	float sg = j->backward ? -1.0f : 1.0f;
	for (int64_t r = r0; r < r1; r++) {
		int64_t b = r / T, t = r % T;
		float pos = (float)rope_pos(out, b, t);
		for (int i = 0; i < P; i++) {
			float a = pos * inv[i];           /* float32, as HF's freqs */
			c[i] = cosf(a);
			s[i] = sg * sinf(a);
		}
		for (int64_t h = 0; h < H; h++) {
			const float *x = j->src + b * j->snb[0] + t * j->snb[1] + h * j->snb[2];
			int64_t xs = j->snb[3];
			float *y = j->dst + ((b * T + t) * H + h) * D;
			for (int i = 0; i < P; i++) {
				int64_t i1 = inter ? 2 * i : i, i2 = inter ? 2 * i + 1 : i + P;
				float x1 = x[i1 * xs], x2 = x[i2 * xs];
				float y1 = x1 * c[i] - x2 * s[i], y2 = x2 * c[i] + x1 * s[i];
				if (j->backward) {
					y[i1] += y1;
					y[i2] += y2;
				} else {
					y[i1] = y1;
					y[i2] = y2;
				}
			}
			for (int64_t d = R; d < D; d++)
				y[d] = j->backward ? y[d] + x[d * xs] : x[d * xs];
		}
	}
}

static void rope_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	const struct fw_tensor *x = out->src[0];
	struct rope_job j = { out, fw_f32(x), fw_f32(out), x->nb, false };
	g_host->parallel_for(out->ne[0] * out->ne[1], rope_rows, &j);
}

static void rope_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	struct fw_tensor *x = out->src[0];
	if (!x->grad)
		return;
	/* the rotation is orthogonal: dx = rot(-angle) dy; gradients are
	 * contiguous in the source's shape */
	struct rope_job j = { out, fw_f32(out->grad), fw_f32(x->grad), out->nb, true };
	g_host->parallel_for(out->ne[0] * out->ne[1], rope_rows, &j);
}

static uint32_t rope_saved(const struct fw_tensor *out)
{
	return 1u << 1;                  /* positions only */
}

static const struct fw_op_i rope_op = {
	.size = sizeof(struct fw_op_i),
	.name = "mha.rope",
	.flags = FW_OPF_STRIDED,
	.infer = rope_infer,
	.forward = rope_forward,
	.backward = rope_backward,
	.saved = rope_saved,
};

/* --- alibi -------------------------------------------------------------------------
 *
 * mha.alibi: src0 scores (B, H, Tq, Tk), optional src1 cache length i32 [1];
 * p0.f scale. out = scale * x - slope_h * (i' - j) with i' = i + len (cache)
 * or i + Tk - Tq (the causal mask's alignment) and BLOOM's slopes. */

/* BLOOM's build_alibi_tensor: 2^(-8k/n) for k = 1..n with n the largest power
 * of two <= H, then every other slope of the 2n recipe for the rest. */
static float alibi_slope(int64_t H, int64_t h)
{
	int64_t n = 1;
	while (n * 2 <= H)
		n *= 2;
	if (h < n)
		return (float)pow(pow(2.0, -8.0 / (double)n), (double)(h + 1));
	return (float)pow(pow(2.0, -4.0 / (double)n), (double)(2 * (h - n) + 1));
}

static enum fw_status alibi_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *x = out->src[0], *len = out->src[1];
	if (x->ndim != 4 || x->dtype != FW_F32)
		return fw_errorf(err, FW_ERR_SHAPE, "mha.alibi: scores must be f32 (B, H, Tq, Tk)");
	if (len && (len->dtype != FW_I32 || fw_nelem(len) != 1))
		return fw_errorf(err, FW_ERR_SHAPE, "mha.alibi: the offset must be i32 [1]");
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

static void alibi_rows(void *arg, int64_t r0, int64_t r1)
{
	const struct alibi_job *j = arg;
	struct fw_tensor *out = j->out;
	int64_t H = out->ne[1], Tq = out->ne[2], Tk = out->ne[3];
	float scale = out->params[0].f;
	int64_t off = out->src[1] ? fw_i32(out->src[1])[0] : Tk - Tq;
	for (int64_t r = r0; r < r1; r++) {
		int64_t h = (r / Tq) % H, i = r % Tq + off;
		if (j->backward) {
			const float *dy = fw_f32(out->grad) + r * Tk;
			float *dx = fw_f32(out->src[0]->grad) + r * Tk;
			for (int64_t k = 0; k < Tk; k++)
				dx[k] += scale * dy[k];
			continue;
		}
		float slope = alibi_slope(H, h);
		const float *x = fw_f32(out->src[0]) + r * Tk;
		float *y = fw_f32(out) + r * Tk;
		for (int64_t k = 0; k < Tk; k++)
			y[k] = scale * x[k] - slope * (float)(i - k);
	}
}

static void alibi_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	struct alibi_job j = { out, false };
	g_host->parallel_for(out->ne[0] * out->ne[1] * out->ne[2], alibi_rows, &j);
}

static void alibi_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	struct alibi_job j = { out, true };
	if (out->src[0]->grad)
		g_host->parallel_for(out->ne[0] * out->ne[1] * out->ne[2], alibi_rows, &j);
}

static uint32_t alibi_saved(const struct fw_tensor *out)
{
	return 0;                        /* backward reads only the output's gradient */
}

static const struct fw_op_i alibi_op = {
	.size = sizeof(struct fw_op_i),
	.name = "mha.alibi",
	.infer = alibi_infer,
	.forward = alibi_forward,
	.backward = alibi_backward,
	.saved = alibi_saved,
};

/* --- attend ------------------------------------------------------------------------ */

static struct fw_tensor *cached(struct mha *s, struct fw_model *m,
				const struct fw_attn_spec *spec, struct fw_tensor **slot,
				struct fw_tensor *x, const char *what)
{
	const struct fw_host *h = s->host;
	if (!*slot) {
		char name[FW_NAME_MAX];
		int64_t shape[4] = { x->ne[0], spec->cache->max_len, x->ne[2], x->ne[3] };
		snprintf(name, sizeof(name), "kv_cache.%s.%s", spec->name, what);
		*slot = h->input(m->ctx, name, FW_F32, 4, shape);
	}
	struct fw_tensor *src[3] = { *slot, x, spec->cache->len };
	return *slot ? h->op(m->ctx, s->kv_write_op, src, 3, NULL, 0) : NULL;
}

static struct fw_tensor *rope(struct mha *s, struct fw_model *m,
			      const struct fw_attn_spec *spec, struct fw_tensor *x)
{
	union fw_param p[8] = { { .i = spec->rope_dim ? spec->rope_dim : spec->head_dim },
				{ .i = spec->rope_interleaved },
				{ .f = spec->rope_base > 0 ? spec->rope_base : 10000.0f } };
	if (FW_HAS(spec, rope_scale_orig_max_pos) && spec->rope_scale_factor > 0) {
		p[3].f = spec->rope_scale_factor;
		p[4].f = spec->rope_scale_low_freq;
		p[5].f = spec->rope_scale_high_freq;
		p[6].f = (float)spec->rope_scale_orig_max_pos;
	}
	struct fw_tensor *src[2] = { x, NULL };
	int n = 1;
	p[7].i = ROPE_ARANGE;
	if (spec->cache) {
		src[n++] = spec->cache->len;
		p[7].i = ROPE_OFFSET;
	} else if (m->positions) {
		src[n++] = m->positions;
		p[7].i = ROPE_POSITIONS;
	}
	return s->host->op(m->ctx, s->rope_op, src, n, p, 8);
}

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
	if (spec->pos == FW_POS_ROPE) {
		int r = spec->rope_dim ? spec->rope_dim : spec->head_dim;
		if (r < 0 || r % 2 || r > spec->head_dim || r / 2 > ROPE_MAX_PAIRS)
			return h->errorf(err, FW_ERR_INVALID,
					 "attention/mha: %s: rotary dim %d must be even, positive and at "
					 "most the head dim %d", n, r, spec->head_dim);
		if (!(spec->rope_base >= 0) || isinf(spec->rope_base))
			return h->errorf(err, FW_ERR_INVALID, "attention/mha: %s: rope base %g",
					 n, (double)spec->rope_base);
		if (!spec->cache && k->ne[1] != q->ne[1])
			return h->errorf(err, FW_ERR_UNSUPPORTED,
					 "attention/mha: %s: RoPE needs as many keys as queries (%lld "
					 "vs %lld): prepended keys are not supported", n,
					 (long long)k->ne[1], (long long)q->ne[1]);
		if (FW_HAS(spec, rope_scale_orig_max_pos) && spec->rope_scale_factor > 0 &&
		    (spec->rope_scale_factor < 1 || spec->rope_scale_orig_max_pos <= 0 ||
		     !(spec->rope_scale_low_freq > 0) ||
		     !(spec->rope_scale_high_freq > spec->rope_scale_low_freq)))
			return h->errorf(err, FW_ERR_INVALID,
					 "attention/mha: %s: llama3 rope scaling needs factor >= 1, "
					 "0 < low_freq_factor < high_freq_factor and original max "
					 "positions > 0", n);
	}
	if (spec->pos == FW_POS_RELATIVE && !spec->pos_bias)
		return h->errorf(err, FW_ERR_INVALID,
				 "attention/mha: %s: a relative position hook without pos_bias", n);
	if (spec->pos < FW_POS_NONE || spec->pos > FW_POS_RELATIVE)
		return h->errorf(err, FW_ERR_INVALID, "attention/mha: %s: unknown position kind %d",
				 n, (int)spec->pos);
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
		q = rope(s, m, spec, q);
		k = rope(s, m, spec, k);
	}
	struct fw_tensor *mask = spec->bias;     /* (B, 1, Tq, Tk): broadcast over heads */
	bool causal = spec->mask == FW_MASK_CAUSAL;
	if (spec->cache) {      /* generating: attend over the whole cache */
		k = cached(state, m, spec, &spec->cache->k, k, "k");
		v = cached(state, m, spec, &spec->cache->v, v, "v");
		mask = spec->cache->mask;
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
	struct fw_tensor *att = h->matmul(ctx, qh, kh, false, true);      /* (B, Hkv, G*Tq, Tk) */
	if (G > 1)
		att = h->reshape(ctx, att, 4, per_q);                     /* (B, Hq, Tq, Tk) */
	if (spec->pos == FW_POS_ALIBI) {
		struct fw_tensor *src[2] = { att, spec->cache ? spec->cache->len : NULL };
		union fw_param p = { .f = scale };
		att = h->op(ctx, s->alibi_op, src, spec->cache ? 2 : 1, &p, 1);
		scale = 1.0f;
	}
	att = h->softmax(ctx, att, mask, causal, scale);
	if (spec->dropout > 0.0f)
		att = h->dropout(ctx, att, spec->dropout, spec->seed);
	if (G > 1)
		att = h->reshape(ctx, att, 4, per_kv);
	struct fw_tensor *y = h->matmul(ctx, att, vh, false, false);      /* (B, Hkv, G*Tq, D) */
	int64_t heads[4] = { B, Hq, Tq, D };
	if (G > 1)
		y = h->reshape(ctx, y, 4, heads);
	y = h->cont(ctx, h->permute(ctx, y, to_heads));                   /* (B, Tq, Hq, D) */
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
	static int kv_write_id = -1, rope_id = -1, alibi_id = -1;   /* once per process */
	g_host = host;
	if (register_once(host, &kv_write_op, &kv_write_id, err) < 0 ||
	    register_once(host, &rope_op, &rope_id, err) < 0 ||
	    register_once(host, &alibi_op, &alibi_id, err) < 0)
		return err->status;
	struct mha *s = host->malloc(sizeof(*s));
	if (!s)
		return host->errorf(err, FW_ERR_NOMEM, "attention/mha: out of memory");
	*s = (struct mha){ .host = host, .kv_write_op = kv_write_id, .rope_op = rope_id,
			   .alibi_op = alibi_id };
	*state = s;
	return FW_OK;
}

static void mha_fini(void *state)
{
	struct mha *s = state;
	if (s)
		s->host->free(s);
}

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
	.iface = &iface,
	.init = mha_init,
	.fini = mha_fini,
};

FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void)
{
	return &plugin;
}
