/* ops_attn.c - the position and cache pieces every attention shares: RoPE,
 * the KV-cache write and BLOOM's ALiBi slopes
 * (the fw_attn_* helpers of fw/plugin.h that use them are the loader's:
 * attn_spec.c).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

/* --- kv_write -------------------------------------------------------------------
 *
 * src0 cache (B, Tmax, H, D), src1 new (B, Tq, H, D), src2 len i32 [1] or
 * slots i32 (B, Tq). Copies new into cache rows [len, len + Tq), or row
 * (b, t) into slot slots[b, t], and returns the cache itself (a view), so
 * readers run after the write. cache and new share one float dtype: f32, or
 * bf16/f16 under autocast (fw_kv_write casts new to the cache's). No
 * gradient. */
static enum fw_status kv_write_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *c = out->src[0], *x = out->src[1], *len = out->src[2];
	if (!x || !len || c->ndim != 4 || x->ndim != 4 || c->ne[0] != x->ne[0] ||
	    c->ne[2] != x->ne[2] || c->ne[3] != x->ne[3] || x->ne[1] > c->ne[1] ||
	    c->dtype != x->dtype || (c->dtype != FW_F32 && c->dtype != FW_BF16 && c->dtype != FW_F16) ||
	    len->dtype != FW_I32 ||
	    (len->ndim == 2 ? len->ne[0] != x->ne[0] || len->ne[1] != x->ne[1] ||
				!fw_is_contiguous(len) : fw_nelem(len) != 1))
		return fw_errorf(err, FW_ERR_SHAPE, "kv_write: cache and new rows do not fit");
	out->dtype = c->dtype;
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
	const int32_t *slots = out->src[2]->data;
	int64_t pos = slots[0];
	int64_t B = c->ne[0], Tmax = c->ne[1], Tq = x->ne[1];
	size_t row = (size_t)(c->ne[2] * c->ne[3]) * fw_dtype_size(c->dtype);   /* bytes */
	char *cd = c->data;
	const char *xd = x->data;
	if (out->src[2]->ndim == 2) {
		for (int64_t b = 0; b < B; b++)         /* per-row slots */
			for (int64_t t = 0; t < Tq; t++) {
				int64_t at = slots[b * Tq + t];
				at = at < 0 ? 0 : at >= Tmax ? Tmax - 1 : at;
				memcpy(cd + (size_t)(b * Tmax + at) * row,
				       xd + (size_t)(b * Tq + t) * row, row);
			}
		out->data = c->data;
		return;
	}
	if (pos < 0 || pos + Tq > Tmax)
		pos = pos < 0 ? 0 : Tmax - Tq;      /* the host checks; never write outside */
	for (int64_t b = 0; b < B; b++)
		memcpy(cd + (size_t)(b * Tmax + pos) * row, xd + (size_t)(b * Tq) * row,
		       (size_t)Tq * row);
	out->data = c->data;
}

const struct fw_op_i fw_op_kv_write_i = {
	.size = sizeof(struct fw_op_i),
	.name = "kv_write",
	.flags = FW_OPF_VIEW | FW_OPF_HALF,   /* a half cache holds half rows */
	.infer = kv_write_infer,
	.forward = kv_write_forward,
};

/* --- rope -------------------------------------------------------------------------
 *
 * src0 x (B, T, H, D), any strides; src1 (by p7, enum fw_rope_pos) positions
 * (B, T) i32 or the offset i32 [1]. p0.i rotary dim R, p1.i interleaved,
 * p2.f base, p3.f llama3 factor (0 = none), p4.f low_freq_factor,
 * p5.f high_freq_factor, p6.f original_max_position_embeddings.
 * Out (B, T, H, D) contiguous. Pair i (i < R/2) is (i, i + R/2) (NeoX/Llama,
 * HF rotate_half) or (2i, 2i + 1) (GPT-J), rotated by pos * inv_freq[i] with
 * inv_freq[i] = base^(-2i/R) (HF's float32 recipe); dims >= R pass through. */
static enum fw_status rope_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *x = out->src[0], *p = out->src[1];
	int R = out->params[0].i, mode = out->params[7].i;
	if (x->ndim != 4 || x->dtype != FW_F32)
		return fw_errorf(err, FW_ERR_SHAPE, "rope: x must be f32 (B, T, H, D)");
	if (R <= 0 || R % 2 || R > x->ne[3] || R / 2 > FW_ROPE_MAX_PAIRS)
		return fw_errorf(err, FW_ERR_INVALID,
				 "rope: rotary dim %d must be even, positive and at most the "
				 "head dim %lld", R, (long long)x->ne[3]);
	if (mode < FW_ROPE_ARANGE || mode > FW_ROPE_OFFSET)
		return fw_errorf(err, FW_ERR_INVALID, "rope: unknown position mode %d", mode);
	if (mode == FW_ROPE_POSITIONS &&
	    (!p || p->dtype != FW_I32 || p->ndim != 2 || p->ne[0] != x->ne[0] ||
	     p->ne[1] != x->ne[1]))
		return fw_errorf(err, FW_ERR_SHAPE, "rope: positions must be i32 (B, T) of x");
	if (mode == FW_ROPE_OFFSET && (!p || p->dtype != FW_I32 || fw_nelem(p) != 1))
		return fw_errorf(err, FW_ERR_SHAPE, "rope: the offset must be i32 [1]");
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
	case FW_ROPE_POSITIONS:
		return fw_i32(p)[b * p->nb[0] + t * p->nb[1]];
	case FW_ROPE_OFFSET:
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
	float inv[FW_ROPE_MAX_PAIRS], c[FW_ROPE_MAX_PAIRS], s[FW_ROPE_MAX_PAIRS];
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
	fw_parallel_for(out->ne[0] * out->ne[1], rope_rows, &j);
}

static void rope_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	struct fw_tensor *x = out->src[0];
	if (!x->grad)
		return;
	/* the rotation is orthogonal: dx = rot(-angle) dy; gradients are
	 * contiguous in the source's shape */
	struct rope_job j = { out, fw_f32(out->grad), fw_f32(x->grad), out->nb, true };
	fw_parallel_for(out->ne[0] * out->ne[1], rope_rows, &j);
}

static uint32_t rope_saved(const struct fw_tensor *out)
{
	return 1u << 1;                  /* positions only */
}

const struct fw_op_i fw_op_rope_i = {
	.size = sizeof(struct fw_op_i),
	.name = "rope",
	.flags = FW_OPF_STRIDED,
	.infer = rope_infer,
	.forward = rope_forward,
	.backward = rope_backward,
	.saved = rope_saved,
};

/* --- alibi ------------------------------------------------------------------------ */

/* BLOOM's build_alibi_tensor: 2^(-8k/n) for k = 1..n with n the largest power
 * of two <= H, then every other slope of the 2n recipe for the rest. */
float fw_alibi_slope(int64_t n_head, int64_t h)
{
	int64_t n = 1;
	while (n * 2 <= n_head)
		n *= 2;
	if (h < n)
		return (float)pow(pow(2.0, -8.0 / (double)n), (double)(h + 1));
	return (float)pow(pow(2.0, -4.0 / (double)n), (double)(2 * (h - n) + 1));
}
