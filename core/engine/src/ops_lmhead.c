/* ops_lmhead.c - the LM head's product and cross-entropy, fused in row chunks.
 *
 * loss = cross_entropy(x @ w^T, targets, mask, ignore_index), the same value
 * and gradients as fw_matmul + fw_cross_entropy, without the (N, V) logits
 * or their gradient in the graph. Forward computes the logits of R rows at a
 * time into the workspace and keeps only the loss; backward computes each
 * chunk's logits again, turns them into their gradient in place and adds
 * dx += dlogits w and dw += dlogits^T x. The price is one more head product
 * (the recomputation) for R x V floats of memory instead of two (N, V)
 * tensors. The idea is Liger-Kernel's and Unsloth's fused cross-entropy.
 */
#include <math.h>
#include <string.h>

#include "kernel.h"
#include "vmath.h"

#define CHUNK_BYTES (64u << 20)   /* logits a chunk holds when chunk_rows is 0 */

struct lmce {
	const void *x, *w;       /* (N, C) and (V, C), dtype dt */
	const int32_t *t;        /* (N) */
	const float *mask;       /* (N) or NULL */
	int64_t N, C, V, R;      /* R: rows per chunk */
	int32_t ignore;
	enum fw_dtype dt;
};

static int64_t chunk_rows(int64_t N, int64_t V, int asked)
{
	if (asked > 0)
		return min64(asked, N);
	int64_t most = (int64_t)(CHUNK_BYTES / ((size_t)V * sizeof(float)));
	most = most < 16 ? 16 : most;
	int64_t n_chunks = (N + most - 1) / most;
	int64_t r = (N + n_chunks - 1) / n_chunks;     /* even chunks, multiples of 16 */
	return min64((r + 15) & ~(int64_t)15, N);
}

static struct lmce lmce_of(const struct fw_tensor *out)
{
	const struct fw_tensor *x = out->src[0], *w = out->src[1];
	int64_t C = x->ne[x->ndim - 1], N = fw_nelem(x) / C, V = w->ne[0];
	return (struct lmce){
		.x = x->data, .w = w->data, .t = fw_i32(out->src[2]),
		.mask = out->src[3] ? fw_f32(out->src[3]) : NULL,
		.N = N, .C = C, .V = V, .R = chunk_rows(N, V, out->params[1].i),
		.ignore = out->params[0].i, .dt = x->dtype,
	};
}

static bool lmce_counted(const struct lmce *c, int64_t n)
{
	int32_t t = c->t[n];
	return t != c->ignore && t >= 0 && t < c->V && (!c->mask || c->mask[n] != 0.0f);
}

static enum fw_status lmce_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *x = out->src[0], *w = out->src[1], *t = out->src[2],
			       *m = out->src[3];
	char sx[64], sw[64], st[64];

	if (!w || !t)
		return fw_errorf(err, FW_ERR_INVALID, "lm_head_ce: %s is missing",
				 w ? "targets" : "the head weight");
	if (x->dtype != w->dtype || (x->dtype != FW_F32 && x->dtype != FW_BF16 &&
				     x->dtype != FW_F16))
		return fw_errorf(err, FW_ERR_SHAPE, "lm_head_ce: x is %s and w %s, expected both "
				 "f32, bf16 or f16", fw_dtype_name(x->dtype),
				 fw_dtype_name(w->dtype));
	if (w->ndim != 2 || w->ne[1] != x->ne[x->ndim - 1] || x->ndim < 2)
		return fw_errorf(err, FW_ERR_SHAPE, "lm_head_ce: x %s and w %s: expected x "
				 "(..., C) and w (V, C)", fw_shape_str(x, sx, sizeof(sx)),
				 fw_shape_str(w, sw, sizeof(sw)));
	bool ok = t->dtype == FW_I32 && t->ndim == x->ndim - 1;
	for (int i = 0; ok && i < t->ndim; i++)
		ok = t->ne[i] == x->ne[i];
	if (!ok)
		return fw_errorf(err, FW_ERR_SHAPE, "lm_head_ce: targets are %s %s, expected i32 "
				 "of x's shape %s without the last dim", fw_dtype_name(t->dtype),
				 fw_shape_str(t, st, sizeof(st)), fw_shape_str(x, sx, sizeof(sx)));
	if (m && (m->dtype != FW_F32 || !fw_same_shape(m, t)))
		return fw_errorf(err, FW_ERR_SHAPE, "lm_head_ce: the mask must be f32 of the "
				 "targets' shape %s", fw_shape_str(t, st, sizeof(st)));
	out->dtype = FW_F32;
	out->ndim = 1;
	out->ne[0] = 1;
	return FW_OK;
}

static const void *rows_at(const void *p, enum fw_dtype dt, int64_t offset)
{
	return (const char *)p + offset * (int64_t)fw_dtype_size(dt);
}

/* logits (n, V) = x[r0 .. r0+n) w^T into lg. In a half dtype they are
 * rounded to it, as an autocast matmul returns them to cross-entropy
 * (half: the workspace's half area, n V elements). */
static enum fw_status chunk_logits(const struct lmce *c, int64_t r0, int64_t n, float *lg,
				   void *half)
{
	struct fw_gemm g = {
		.batch = 1, .M = n, .N = c->V, .K = c->C, .trans_b = true,
		.lda = c->C, .ldb = c->C, .ldc = c->V, .dt_ab = c->dt,
	};
	enum fw_status st = fw_gemm_run(&g, rows_at(c->x, c->dt, r0 * c->C), c->w, lg);
	if (st == FW_OK && c->dt != FW_F32) {
		fw_convert(half, c->dt, lg, FW_F32, n * c->V);
		fw_convert(lg, FW_F32, half, c->dt, n * c->V);
	}
	return st;
}

static void lmce_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	struct lmce c = lmce_of(out);
	float *lg = ex->ws;
	void *half = (char *)ex->ws + align64((size_t)(c.R * c.V) * sizeof(float));
	double loss = 0.0;
	int64_t k = 0;

	for (int64_t r0 = 0; r0 < c.N; r0 += c.R) {
		int64_t n = min64(c.R, c.N - r0);
		struct fw_err err;
		if (chunk_logits(&c, r0, n, lg, half) != FW_OK) {
			fw_errorf(&err, FW_ERR_INTERNAL, "lm_head_ce: the logits product failed");
			fw_kernel_fail(&err);
			return;
		}
		#pragma omp parallel for schedule(static) reduction(+:loss, k) if (n * c.V > PAR_MIN)
		for (int64_t i = 0; i < n; i++) {
			if (!lmce_counted(&c, r0 + i))
				continue;
			const float *row = lg + i * c.V;
			loss += fw_row_logsumexp(row, FW_F32, c.V, NULL, NULL) -
				(double)row[c.t[r0 + i]];
			k++;
		}
	}
	fw_f32(out)[0] = k ? (float)(loss / (double)k) : 0.0f;
}

static size_t lmce_workspace(const struct fw_tensor *out)
{
	struct lmce c = lmce_of(out);
	size_t n = (size_t)(c.R * c.V);
	/* f32 logits, and their gradient rounded to x's dtype for a half product */
	return align64(n * sizeof(float)) + (c.dt != FW_F32 ? align64(n * 2) : 0);
}

/* The chunk's logits become their gradient: (softmax - onehot) * scale on
 * counted rows, 0 on the others. */
static void chunk_grad(const struct lmce *c, int64_t r0, int64_t n, float *lg, float scale)
{
	int64_t V = c->V;
	#pragma omp parallel for schedule(static) if (n * V > PAR_MIN)
	for (int64_t i = 0; i < n; i++) {
		float *row = lg + i * V;
		if (!lmce_counted(c, r0 + i)) {
			memset(row, 0, (size_t)V * sizeof(float));
			continue;
		}
		float lse = (float)fw_row_logsumexp(row, FW_F32, V, NULL, NULL);
		#pragma omp simd
		for (int64_t j = 0; j < V; j++)
			row[j] = scale * vexp_neg(row[j] - lse);
		row[c->t[r0 + i]] -= scale;
	}
}

static void lmce_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	const struct fw_tensor *xt = out->src[0], *wt = out->src[1];
	if (!xt->grad && !wt->grad)
		return;
	struct lmce c = lmce_of(out);
	int64_t k = 0;
	for (int64_t n = 0; n < c.N; n++)
		k += lmce_counted(&c, n);
	if (!k)
		return;
	float scale = (float)((double)fw_f32(out->grad)[0] / (double)k);
	float *lg = ex->ws;
	void *half = (char *)ex->ws + align64((size_t)(c.R * c.V) * sizeof(float));
	const void *dl = c.dt == FW_F32 ? (const void *)lg : half;
	struct fw_err err;

	for (int64_t r0 = 0; r0 < c.N; r0 += c.R) {
		int64_t n = min64(c.R, c.N - r0);
		if (chunk_logits(&c, r0, n, lg, half) != FW_OK)
			goto fail;
		chunk_grad(&c, r0, n, lg, scale);
		if (c.dt != FW_F32)
			fw_convert(half, c.dt, lg, FW_F32, n * c.V);
		if (xt->grad) {         /* dx (n, C) += dlogits (n, V) w (V, C) */
			struct fw_gemm g = {
				.batch = 1, .M = n, .N = c.C, .K = c.V, .lda = c.V, .ldb = c.C,
				.ldc = c.C, .dt_ab = c.dt, .accumulate = true,
			};
			if (fw_gemm_run(&g, dl, c.w, fw_f32(xt->grad) + r0 * c.C) != FW_OK)
				goto fail;
		}
		if (wt->grad) {         /* dw (V, C) += dlogits^T (V, n) x (n, C) */
			struct fw_gemm g = {
				.batch = 1, .M = c.V, .N = c.C, .K = n, .trans_a = true,
				.lda = c.V, .ldb = c.C, .ldc = c.C, .dt_ab = c.dt,
				.accumulate = true,
			};
			if (fw_gemm_run(&g, dl, rows_at(c.x, c.dt, r0 * c.C), fw_f32(wt->grad)) !=
			    FW_OK)
				goto fail;
		}
	}
	return;
fail:
	fw_errorf(&err, FW_ERR_INTERNAL, "lm_head_ce: a head product failed in backward");
	fw_kernel_fail(&err);
}

/* Backward recomputes the logits: every source. */
static uint32_t lmce_saved(const struct fw_tensor *out)
{
	return 0xfu & ~(out->src[3] ? 0u : 1u << 3);
}

const struct fw_op_i fw_op_lmhead_ce_i = {
	.size = sizeof(struct fw_op_i),
	.name = "lm_head_ce",
	.flags = FW_OPF_HALF,        /* x and w in bf16/f16 products, f32 accumulation */
	.infer = lmce_infer,
	.forward = lmce_forward,
	.backward = lmce_backward,
	.workspace = lmce_workspace,
	.saved = lmce_saved,
};
