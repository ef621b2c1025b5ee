/* ops_lmhead.c - the LM head's product and cross-entropy, fused in row chunks.
 *
 * loss = cross_entropy(x @ w^T, targets, mask, ignore_index), the same value
 * and gradients as fw_matmul + fw_cross_entropy, without the (N, V) logits
 * or their gradient in the graph. Forward computes the logits of R rows at a
 * time into the workspace, the loss, and, in a graph with a backward, turns
 * each chunk's logits into their gradient in place and computes the
 * gradients for a unit loss gradient into the node's stash (graph.c):
 * dx = dlogits w and dw = sum of the chunks' dlogits^T x. The loss is a
 * graph's end, so backward only adds dloss times them: three head products
 * in all, as unfused, for R x V floats of workspace and an (N + V) x C stash
 * instead of two (N, V) tensors. The idea is Liger-Kernel's and Unsloth's
 * fused cross-entropy. Where the graph allows it (fw_kernel_dloss: the node
 * is the loss of a training graph and w's gradient a parameter's), forward
 * scales dlogits by the loss gradient backward will seed and adds dw
 * straight into w's gradient, and the stash keeps only dx: (V, C) floats
 * less, the same sums as backward's (the gradient is zero or last
 * micro-batch's, and nothing else writes it before this node's backward).
 *
 * Under f16 autocast the gradient is rounded to f16 for its products, and it
 * must be scaled by the loss scale first (it would underflow unscaled): there
 * is no stash, and backward computes the logits again with the scale known.
 */
#include <math.h>
#include <string.h>

#include "half.h"
#include "kernel.h"
#include "vmath.h"

#define CHUNK_BYTES (64u << 20)   /* f32 logits a chunk holds when chunk_rows is 0 */

struct lmce {
	const void *x, *w;       /* (N, C) and (V, C), dtype dt */
	const int32_t *t;        /* (N) */
	const float *mask;       /* (N) or NULL */
	int64_t N, C, V, R;      /* R: rows per chunk */
	int32_t ignore;
	enum fw_dtype dt;
};

/* Auto rows: CHUNK_BYTES of f32 logits, twice that in a half dtype. Each
 * chunk reads and writes the f32 dw (V, C) once; with products twice as
 * fast that pass weighs twice as much (bf16, 2 threads: 512 rows took 0.94
 * of 256's time, bench/README.md "lmhead"). */
static int64_t chunk_rows(int64_t N, int64_t V, enum fw_dtype dt, int asked)
{
	if (asked > 0)
		return min64(asked, N);
	size_t budget = dt == FW_F32 ? CHUNK_BYTES : 2 * (size_t)CHUNK_BYTES;
	int64_t most = (int64_t)(budget / ((size_t)V * sizeof(float)));
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
		.N = N, .C = C, .V = V, .R = chunk_rows(N, V, x->dtype, out->params[1].i),
		.ignore = out->params[0].i, .dt = x->dtype,
	};
}

/* The workspace: the chunk's f32 logits (R, V), then in a half dtype their
 * gradient rounded to it (R, V). Under f16 (no stash) backward computes dx's
 * chunk transposed, (C, R), in the f32 area once the gradient is rounded. */
static size_t f32_area(const struct lmce *c)
{
	int64_t cols = c->dt == FW_F16 && c->C > c->V ? c->C : c->V;
	return align64((size_t)(c->R * cols) * sizeof(float));
}

/* The stash: the count of rows in the loss, whether forward added dw into
 * w's gradient and for which loss gradient (its dx is then scaled by it),
 * then dx transposed (C, N) when x has a gradient and dw (V, C) when w has
 * one and forward does not add it, f32. */
struct lmce_stash_head {
	int64_t k;
	float dloss;
	bool dw_added;
};

struct lmce_stash {
	struct lmce_stash_head *h;
	float *dx, *dw;
};

static size_t stash_header(void)
{
	return align64(sizeof(struct lmce_stash_head));
}

size_t fw_lmce_stash_bytes(const struct fw_tensor *out, bool grad_in_forward)
{
	const struct fw_tensor *x = out->src[0], *w = out->src[1];
	int64_t C = x->ne[x->ndim - 1], N = fw_nelem(x) / C, V = w->ne[0];
	if (x->dtype == FW_F16 || (!x->grad && !w->grad))
		return 0;
	return stash_header() + (x->grad ? align64((size_t)(N * C) * sizeof(float)) : 0) +
	       (w->grad && !grad_in_forward ? align64((size_t)(V * C) * sizeof(float)) : 0);
}

/* dw_stashed: forward did not add dw into w's gradient (fw_kernel_dloss is
 * NaN in forward; in backward the header tells). */
static struct lmce_stash stash_of(const struct fw_tensor *out, const struct lmce *c,
				  bool dw_stashed)
{
	char *p = fw_kernel_stash();
	struct lmce_stash s = { 0 };
	if (!p)
		return s;
	s.h = (struct lmce_stash_head *)p;
	p += stash_header();
	if (out->src[0]->grad) {
		s.dx = (float *)p;
		p += align64((size_t)(c->N * c->C) * sizeof(float));
	}
	if (out->src[1]->grad && dw_stashed)
		s.dw = (float *)p;
	return s;
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

/* logits (n, V) = x[r0 .. r0+n) w^T into lg, f32 (chunk_loss_grad rounds
 * them to a half dtype). */
static enum fw_status chunk_logits(const struct lmce *c, int64_t r0, int64_t n, float *lg)
{
	struct fw_gemm g = {
		.batch = 1, .M = n, .N = c->V, .K = c->C, .trans_b = true,
		.lda = c->C, .ldb = c->C, .ldc = c->V, .dt_ab = c->dt,
	};
	return fw_gemm_run(&g, rows_at(c->x, c->dt, r0 * c->C), c->w, lg);
}

static int64_t lmce_count(const struct lmce *c)
{
	int64_t k = 0;
	for (int64_t n = 0; n < c->N; n++)
		k += lmce_counted(c, n);
	return k;
}

/* dx (n, C) += s dxt^T (= when write), dxt (C, n) at leading dim ld. */
static void add_transposed(float *dx, const float *dxt, float s, int64_t ld, int64_t n,
			   int64_t C, bool write)
{
	enum { T = 32 };
	#pragma omp parallel for schedule(static) if (n * C > PAR_MIN)
	for (int64_t i0 = 0; i0 < n; i0 += T)
		for (int64_t c0 = 0; c0 < C; c0 += T)
			for (int64_t i = i0; i < min64(i0 + T, n); i++)
				for (int64_t j = c0; j < min64(c0 + T, C); j++)
					dx[i * C + j] = (write ? 0.0f : dx[i * C + j]) +
							s * dxt[j * ld + i];
}

/* dx's chunk transposed, dxt (C, n) at leading dim ldt, = dlogits w, and dw
 * (+)= dlogits^T x, for the chunk's gradient dl (n, V) in x's dtype. dx is
 * computed as w^T dlogits^T: with both operands transposed oneDNN runs
 * gemm:jit, which is faster than its brgemm on dlogits w (bench/README.md,
 * "The LM head's products"). */
static enum fw_status chunk_products(const struct lmce *c, int64_t r0, int64_t n,
				     const void *dl, float *dxt, int64_t ldt, float *dw,
				     bool dw_add)
{
	if (dxt) {        /* dxt (C, n) = w^T (C, V) dlogits^T (V, n) */
		struct fw_gemm g = {
			.batch = 1, .M = c->C, .N = n, .K = c->V, .trans_a = true,
			.trans_b = true, .lda = c->C, .ldb = c->V, .ldc = ldt, .dt_ab = c->dt,
		};
		if (fw_gemm_run(&g, c->w, dl, dxt) != FW_OK)
			return FW_ERR_INTERNAL;
	}
	if (dw) {         /* dw (V, C) (+)= dlogits^T (V, n) x (n, C) */
		struct fw_gemm g = {
			.batch = 1, .M = c->V, .N = c->C, .K = n, .trans_a = true,
			.lda = c->V, .ldb = c->C, .ldc = c->C, .dt_ab = c->dt,
			.accumulate = dw_add,
		};
		if (fw_gemm_run(&g, dl, rows_at(c->x, c->dt, r0 * c->C), dw) != FW_OK)
			return FW_ERR_INTERNAL;
	}
	return FW_OK;
}

/* The chunk's loss terms; with grad, its logits also become their gradient
 * in place: (softmax - onehot) * scale on counted rows, 0 on the others. In
 * a half dtype the logits are first rounded to it, as an autocast matmul
 * returns them to cross-entropy, and the gradient is also written rounded to
 * half (n, V) for the products. Each row is done while it is in cache. */
static double chunk_loss_grad(const struct lmce *c, int64_t r0, int64_t n, float *lg,
			      void *half, bool grad, float scale)
{
	int64_t V = c->V;
	bool rounded = c->dt != FW_F32;
	double loss = 0.0;
	#pragma omp parallel for schedule(static) reduction(+:loss) if (n * V > PAR_MIN)
	for (int64_t i = 0; i < n; i++) {
		float *row = lg + i * V;
		void *hrow = rounded ? elem_ptr(half, c->dt, i * V) : NULL;
		if (!lmce_counted(c, r0 + i)) {
			if (grad)
				memset(rounded ? hrow : (void *)row, 0,
				       (size_t)V * fw_dtype_size(c->dt));
			continue;
		}
		if (rounded) {
			half_store(hrow, c->dt, row, V);
			half_load(row, hrow, c->dt, V);
		}
		int32_t t = c->t[r0 + i];
		float lse = (float)fw_row_logsumexp(row, FW_F32, V, NULL, NULL);
		loss += (double)lse - (double)row[t];
		if (grad) {
			#pragma omp simd
			for (int64_t j = 0; j < V; j++)
				row[j] = scale * vexp_neg(row[j] - lse);
			row[t] -= scale;
			if (rounded)
				half_store(hrow, c->dt, row, V);
		}
	}
	return loss;
}

static void lmce_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	struct lmce c = lmce_of(out);
	float dloss = fw_kernel_dloss();
	bool direct = !isnan(dloss) && out->src[1]->grad;
	struct lmce_stash st = stash_of(out, &c, !direct);
	float *lg = ex->ws;
	void *half = (char *)ex->ws + f32_area(&c);
	const void *dl = c.dt == FW_F32 ? (const void *)lg : half;
	double loss = 0.0;
	int64_t k = lmce_count(&c);
	/* the gradients of a unit loss gradient (of dloss when direct), when
	 * backward will want them */
	bool grad = st.h != NULL;
	direct &= grad;
	float scale = k ? (float)((direct ? (double)dloss : 1.0) / (double)k) : 0.0f;
	float *dw = direct ? fw_f32(out->src[1]->grad) : st.dw;
	/* a cleared gradient of w is written (fw_exec.grad_overwrite) */
	bool dw_write = !direct || (ex->grad_overwrite & 2u);
	struct fw_err err;

	if (st.h)
		*st.h = (struct lmce_stash_head){ .k = k, .dloss = dloss, .dw_added = direct };
	for (int64_t r0 = 0; r0 < c.N && k; r0 += c.R) {
		int64_t n = min64(c.R, c.N - r0);
		if (chunk_logits(&c, r0, n, lg) != FW_OK)
			goto fail;
		loss += chunk_loss_grad(&c, r0, n, lg, half, grad, scale);
		if (grad && chunk_products(&c, r0, n, dl, st.dx ? st.dx + r0 : NULL, c.N, dw,
					   !dw_write || r0 > 0) != FW_OK)
			goto fail;
	}
	if (direct && dw_write && !k)
		memset(dw, 0, (size_t)(c.V * c.C) * sizeof(float));
	fw_f32(out)[0] = k ? (float)(loss / (double)k) : 0.0f;
	return;
fail:
	fw_errorf(&err, FW_ERR_INTERNAL, "lm_head_ce: a head product failed in forward");
	fw_kernel_fail(&err);
}

static size_t lmce_workspace(const struct fw_tensor *out)
{
	struct lmce c = lmce_of(out);
	return f32_area(&c) + (c.dt != FW_F32 ? align64((size_t)(c.R * c.V) * 2) : 0);
}

/* g += s * d over n floats (g = s * d when write) */
static void add_scaled(float *g, const float *d, float s, int64_t n, bool write)
{
	#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
	for (int64_t i = 0; i < n; i++)
		g[i] = write ? s * d[i] : g[i] + s * d[i];
}

static void lmce_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	const struct fw_tensor *xt = out->src[0], *wt = out->src[1];
	if (!xt->grad && !wt->grad)
		return;
	struct lmce c = lmce_of(out);
	float dloss = fw_f32(out->grad)[0];
	struct lmce_stash st = stash_of(out, &c, true);
	struct fw_err err;
	/* gradients the graph did not zero (fw_exec.grad_overwrite) */
	float *gx = xt->grad && (ex->grad_overwrite & 1u) ? fw_f32(xt->grad) : NULL;
	float *gw = wt->grad && (ex->grad_overwrite & 2u) ? fw_f32(wt->grad) : NULL;
	if (st.h) {             /* forward computed the gradients (of a unit dloss) */
		if (st.h->dw_added) {   /* and added dw, for its dloss, into w's gradient */
			st.dw = NULL;
			if (st.h->dloss != dloss) {
				fw_errorf(&err, FW_ERR_INVALID, "lm_head_ce: forward added the "
					  "weight's gradient for a loss gradient of %g, backward "
					  "seeds %g (set the loss scale before forward)",
					  (double)st.h->dloss, (double)dloss);
				fw_kernel_fail(&err);
				return;
			}
			dloss = 1.0f;
		}
		if (st.dx && st.h->k)
			add_transposed(fw_f32(xt->grad), st.dx, dloss, c.N, c.N, c.C, gx != NULL);
		else if (gx)
			memset(gx, 0, (size_t)(c.N * c.C) * sizeof(float));
		if (st.dw && st.h->k)
			add_scaled(fw_f32(wt->grad), st.dw, dloss, c.V * c.C, gw != NULL);
		else if (gw)
			memset(gw, 0, (size_t)(c.V * c.C) * sizeof(float));
		return;
	}
	if (gx)
		memset(gx, 0, (size_t)(c.N * c.C) * sizeof(float));
	if (gw)
		memset(gw, 0, (size_t)(c.V * c.C) * sizeof(float));
	int64_t k = lmce_count(&c);
	if (!k)
		return;
	float scale = (float)((double)dloss / (double)k);
	float *lg = ex->ws;
	void *half = (char *)ex->ws + f32_area(&c);
	const void *dl = half;

	FW_ASSERT(c.dt == FW_F16);      /* f32 and bf16 always have a stash here */
	for (int64_t r0 = 0; r0 < c.N; r0 += c.R) {
		int64_t n = min64(c.R, c.N - r0);
		if (chunk_logits(&c, r0, n, lg) != FW_OK)
			goto fail;
		chunk_loss_grad(&c, r0, n, lg, half, true, scale);
		/* dl is the half area: the f32 logits' area holds dx's chunk */
		if (chunk_products(&c, r0, n, dl, xt->grad ? lg : NULL, n,
				   wt->grad ? fw_f32(wt->grad) : NULL, true) != FW_OK)
			goto fail;
		if (xt->grad)
			add_transposed(fw_f32(xt->grad) + r0 * c.C, lg, 1.0f, n, n, c.C, false);
	}
	return;
fail:
	fw_errorf(&err, FW_ERR_INTERNAL, "lm_head_ce: a head product failed in backward");
	fw_kernel_fail(&err);
}

/* With a stash backward reads nothing else; without, it recomputes the
 * logits from every source. */
static uint32_t lmce_saved(const struct fw_tensor *out)
{
	if (fw_lmce_stash_bytes(out, false))
		return 0;
	return 0xfu & ~(out->src[3] ? 0u : 1u << 3);
}

const struct fw_op_i fw_op_lmhead_ce_i = {
	.size = sizeof(struct fw_op_i),
	.name = "lm_head_ce",
	/* x and w in bf16/f16 products, f32 accumulation */
	.flags = FW_OPF_HALF | FW_OPF_GRAD_OVERWRITE,
	.infer = lmce_infer,
	.forward = lmce_forward,
	.backward = lmce_backward,
	.workspace = lmce_workspace,
	.saved = lmce_saved,
};
