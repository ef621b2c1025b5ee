/* ops_nn.c - embedding, layer/RMS norm, softmax and cross-entropy.
 *
 * All sources and outputs are contiguous f32 (ids and targets i32), except
 * that a norm's x, output and gradients, softmax's x and output and
 * cross-entropy's logits may be bf16 or f16 (autocast): those rows are read
 * in f32 blocks (half.h) and computed in f32.
 * Rows are
 * the last axis and independent, so forward kernels split rows across
 * threads. Backward kernels add into the gradients; reductions over rows
 * (norm weights, broadcast softmax bias, embedding table) go to per-thread
 * partials or to threads that own disjoint parts of the result, never atomics.
 *
 * Dims: N rows, C channels, V vocabulary, Tq queries, Tk keys.
 */
#include <math.h>
#include <string.h>

#include "half.h"
#include "kernel.h"
#include "vmath.h"

#define WS_MAX (32u << 20)   /* largest optional scratch a kernel asks for */

/* max(x[0..n)), -inf when n == 0 or all are -inf; NaN entries are skipped
 * (they reach the result through exp anyway). Sixteen running maxima,
 * because clang does not vectorise a `reduction(max:)` over floats. */
static float row_max(const float *x, int64_t n)
{
	float l[16], m = -INFINITY;
	int64_t j = 0;
	for (int k = 0; k < 16; k++)
		l[k] = -INFINITY;
	for (; j + 16 <= n; j += 16)
		for (int k = 0; k < 16; k++)
			l[k] = x[j + k] > l[k] ? x[j + k] : l[k];
	for (; j < n; j++)
		m = x[j] > m ? x[j] : m;
	for (int k = 0; k < 16; k++)
		m = l[k] > m ? l[k] : m;
	return m;
}

static const char *dt_name(const struct fw_tensor *t)
{
	return fw_dtype_name(t->dtype);
}

/* --- embedding ------------------------------------------------------------- */

/* out (..., C) = table (V, C)[ids (...)]. Matches torch.nn.functional.embedding.
 * An id outside [0, V) is a data error (the loader validates ids): its row
 * is written as zeros and gets no gradient, so a bad batch never reads or
 * writes out of bounds. */
static enum fw_status embedding_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *tab = out->src[0], *ids = out->src[1];
	char s[64];

	if (!ids)
		return fw_errorf(err, FW_ERR_INVALID, "embedding: ids are missing");
	if (tab->dtype != FW_F32)
		return fw_errorf(err, FW_ERR_SHAPE, "embedding: table is %s, expected f32",
				 dt_name(tab));
	if (ids->dtype != FW_I32)
		return fw_errorf(err, FW_ERR_SHAPE, "embedding: ids are %s, expected i32",
				 dt_name(ids));
	if (tab->ndim != 2)
		return fw_errorf(err, FW_ERR_SHAPE,
				 "embedding: table has shape %s, expected (V, C)",
				 fw_shape_str(tab, s, sizeof(s)));
	if (ids->ndim > FW_MAX_DIMS - 1)
		return fw_errorf(err, FW_ERR_SHAPE,
				 "embedding: ids have shape %s, at most %d dims allowed",
				 fw_shape_str(ids, s, sizeof(s)), FW_MAX_DIMS - 1);
	out->dtype = FW_F32;
	out->ndim = ids->ndim + 1;
	for (int i = 0; i < ids->ndim; i++)
		out->ne[i] = ids->ne[i];
	out->ne[ids->ndim] = tab->ne[1];
	return FW_OK;
}

static void embedding_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	const struct fw_tensor *tab = out->src[0], *ids = out->src[1];
	int64_t V = tab->ne[0], C = tab->ne[1], N = fw_nelem(ids);
	const float *w = fw_f32(tab);     /* (V, C) */
	const int32_t *id = fw_i32(ids);  /* (N) */
	float *y = fw_f32(out);           /* (N, C) */

	#pragma omp parallel for schedule(static) if (N * C > PAR_MIN)
	for (int64_t n = 0; n < N; n++) {
		if (id[n] < 0 || id[n] >= V)
			memset(y + n * C, 0, (size_t)C * sizeof(float));
		else
			memcpy(y + n * C, w + id[n] * C, (size_t)C * sizeof(float));
	}
}

/* dtable[ids[n]] += dout[n]. Each thread owns a range of columns (cut at
 * cache lines), so repeated ids never race and the sum order is fixed. */
static void embedding_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	const struct fw_tensor *tab = out->src[0], *ids = out->src[1];
	if (!tab->grad)
		return;
	int64_t V = tab->ne[0], C = tab->ne[1], N = fw_nelem(ids);
	const int32_t *id = fw_i32(ids);       /* (N) */
	const float *dy = fw_f32(out->grad);   /* (N, C) */
	float *dw = fw_f32(tab->grad);         /* (V, C) */

	#pragma omp parallel if (N * C > PAR_MIN)
	{
		int nt = omp_get_num_threads(), it = omp_get_thread_num();
		int64_t lines = (C + 15) / 16;
		int64_t c0 = min64(C, lines * it / nt * 16);
		int64_t c1 = min64(C, lines * (it + 1) / nt * 16);
		for (int64_t n = 0; n < N && c0 < c1; n++) {
			if (id[n] < 0 || id[n] >= V)
				continue;
			float *d = dw + id[n] * C;
			const float *g = dy + n * C;
			#pragma omp simd
			for (int64_t c = c0; c < c1; c++)
				d[c] += g[c];
		}
	}
}

static uint32_t embedding_saved(const struct fw_tensor *out)
{
	return 1u << 1;   /* ids */
}

const struct fw_op_i fw_op_embedding_i = {
	.size = sizeof(struct fw_op_i),
	.name = "embedding",
	.infer = embedding_infer,
	.forward = embedding_forward,
	.backward = embedding_backward,
	.saved = embedding_saved,
};

/* --- layernorm and rmsnorm --------------------------------------------------- */

/* Both normalise x (..., C) over the last axis; layernorm centres first.
 * Backward recomputes mean and rstd from x (the workspace does not live
 * from forward to backward); that costs one more pass over a row that is
 * in cache anyway. */

static enum fw_status norm_check_vec(const char *op, const char *what,
				     const struct fw_tensor *v, int64_t C,
				     struct fw_err *err)
{
	char s[64];
	if (!v)
		return FW_OK;
	if (v->dtype != FW_F32)
		return fw_errorf(err, FW_ERR_SHAPE, "%s: %s is %s, expected f32", op, what,
				 dt_name(v));
	if (v->ndim != 1 || v->ne[0] != C)
		return fw_errorf(err, FW_ERR_SHAPE, "%s: %s has shape %s, expected [%lld]",
				 op, what, fw_shape_str(v, s, sizeof(s)), (long long)C);
	return FW_OK;
}

static enum fw_status norm_infer(struct fw_tensor *out, struct fw_err *err,
				 const char *op, bool center)
{
	const struct fw_tensor *x = out->src[0];
	float eps = out->params[0].f;
	enum fw_status st;

	if (x->dtype != FW_F32 && !is_half(x->dtype))
		return fw_errorf(err, FW_ERR_SHAPE, "%s: x is %s, expected f32, bf16 or f16", op,
				 dt_name(x));
	int64_t C = x->ne[x->ndim - 1];
	if ((st = norm_check_vec(op, "weight", out->src[1], C, err)) != FW_OK)
		return st;
	if (center && (st = norm_check_vec(op, "bias", out->src[2], C, err)) != FW_OK)
		return st;
	if (!(eps >= 0.0f) || isinf(eps))
		return fw_errorf(err, FW_ERR_INVALID, "%s: eps %g must be finite and >= 0",
				 op, (double)eps);
	out->dtype = x->dtype;
	out->ndim = x->ndim;
	for (int i = 0; i < x->ndim; i++)
		out->ne[i] = x->ne[i];
	return FW_OK;
}

static enum fw_status layernorm_infer(struct fw_tensor *out, struct fw_err *err)
{
	return norm_infer(out, err, "layernorm", true);
}

static enum fw_status rmsnorm_infer(struct fw_tensor *out, struct fw_err *err)
{
	return norm_infer(out, err, "rmsnorm", false);
}

/* mean and 1/sqrt(var + eps) of a row, two passes (biased variance); for
 * rmsnorm the mean is 0 and var is mean(x^2). */
static void norm_stats(const float *x, int64_t C, float eps, bool center,
		       float *mean, float *rstd)
{
	float m = 0.0f, v = 0.0f;
	if (center) {
		#pragma omp simd reduction(+:m)
		for (int64_t c = 0; c < C; c++)
			m += x[c];
		m /= (float)C;
	}
	#pragma omp simd reduction(+:v)
	for (int64_t c = 0; c < C; c++)
		v += (x[c] - m) * (x[c] - m);
	*mean = m;
	*rstd = 1.0f / sqrtf(v / (float)C + eps);
}

/* Per-thread workspace: the dweight/dbias partials (when there is a weight
 * or a bias), then, when x, the output or a gradient is bf16/f16, three f32
 * rows: x, the output or dy, and dx. */
static size_t norm_part_bytes(int64_t C);

static bool grad_half(const struct fw_tensor *t)
{
	return t->grad && is_half(t->grad->dtype);
}

static size_t norm_row_bytes(const struct fw_tensor *out)
{
	const struct fw_tensor *x = out->src[0];
	bool half = is_half(x->dtype) || is_half(out->dtype) || grad_half(x) || grad_half(out);
	return half ? 3 * align64((size_t)x->ne[x->ndim - 1] * sizeof(float)) : 0;
}

static size_t norm_stride(const struct fw_tensor *out)
{
	const struct fw_tensor *x = out->src[0];
	size_t parts = out->src[1] || out->src[2] ? norm_part_bytes(x->ne[x->ndim - 1]) : 0;
	return parts + norm_row_bytes(out);
}

/* Thread it's first f32 row, or NULL when everything is f32. */
static float *norm_row_buf(const struct fw_tensor *out, const struct fw_exec *ex, int it)
{
	size_t stride = norm_stride(out), row = norm_row_bytes(out);
	return row ? (float *)((char *)ex->ws + (size_t)it * stride + (stride - row)) : NULL;
}

/* Row k of the three in buf. */
static float *norm_buf_row(float *buf, int k, int64_t C)
{
	return buf ? buf + (size_t)k * (align64((size_t)C * sizeof(float)) / sizeof(float)) : NULL;
}

/* Threads for a norm kernel: as many as have a row buffer. */
static int norm_threads(const struct fw_tensor *out, const struct fw_exec *ex)
{
	int T = norm_row_bytes(out) ? ws_threads(ex, norm_stride(out)) : omp_get_max_threads();
	FW_ASSERT(T >= 1);   /* workspace() asked for it */
	return T;
}

/* Row n of an (N, C) float tensor's data as f32: in place, or converted into buf. */
static const float *norm_row(const void *p, enum fw_dtype dt, int64_t n, int64_t C, float *buf)
{
	if (dt == FW_F32)
		return (const float *)p + n * C;
	half_load(buf, elem_ptr(p, dt, n * C), dt, C);
	return buf;
}

/* The output is x's dtype, or bf16/f16 from an f32 x when the graph folded
 * the cast that read it (FW_OPF_NARROW_OUT): either way the f32 result is
 * rounded once as it is stored. */
static void norm_forward(struct fw_tensor *out, const struct fw_exec *ex, bool center)
{
	const struct fw_tensor *x = out->src[0];
	const float *w = out->src[1] ? fw_f32(out->src[1]) : NULL;            /* (C) */
	const float *b = center && out->src[2] ? fw_f32(out->src[2]) : NULL;  /* (C) */
	float eps = out->params[0].f;
	int64_t C = x->ne[x->ndim - 1], N = fw_nelem(x) / C;

	#pragma omp parallel num_threads(norm_threads(out, ex)) if (N * C > PAR_MIN)
	{
		float *buf = norm_row_buf(out, ex, omp_get_thread_num());
		#pragma omp for schedule(static)
		for (int64_t n = 0; n < N; n++) {
			const float *xr = norm_row(x->data, x->dtype, n, C, buf);  /* x is (N, C) */
			float *y = out->dtype == FW_F32 ? fw_f32(out) + n * C      /* y is (N, C) */
							: norm_buf_row(buf, 1, C);
			float m, rs;
			norm_stats(xr, C, eps, center, &m, &rs);
			if (w && b) {
				#pragma omp simd
				for (int64_t c = 0; c < C; c++)
					y[c] = (xr[c] - m) * rs * w[c] + b[c];
			} else if (w) {
				#pragma omp simd
				for (int64_t c = 0; c < C; c++)
					y[c] = (xr[c] - m) * rs * w[c];
			} else if (b) {
				#pragma omp simd
				for (int64_t c = 0; c < C; c++)
					y[c] = (xr[c] - m) * rs + b[c];
			} else {
				#pragma omp simd
				for (int64_t c = 0; c < C; c++)
					y[c] = (xr[c] - m) * rs;
			}
			if (out->dtype != FW_F32)
				half_store(elem_ptr(out->data, out->dtype, n * C), out->dtype, y, C);
		}
	}
}

/* One row: xhat = (x - mean) rstd, g = dy w.
 * dx += rstd (g - mean(g) - xhat mean(g xhat))   (layernorm)
 * dx += rstd (g - xhat mean(g xhat))             (rmsnorm)
 * dw += dy xhat, db += dy into the partials pw, pb. */
static void norm_backward_row(const float *x, const float *dy, const float *w,
			      float *dx, float *pw, float *pb, int64_t C,
			      float eps, bool center, bool write_dx)
{
	float m, rs, sg = 0.0f, sgx = 0.0f;
	norm_stats(x, C, eps, center, &m, &rs);
	if (dx) {
		#pragma omp simd reduction(+:sg, sgx)
		for (int64_t c = 0; c < C; c++) {
			float g = w ? dy[c] * w[c] : dy[c];
			sg += g;
			sgx += g * (x[c] - m) * rs;
		}
		sg = center ? sg / (float)C : 0.0f;
		sgx /= (float)C;
		#pragma omp simd
		for (int64_t c = 0; c < C; c++) {
			float g = w ? dy[c] * w[c] : dy[c];
			float v = rs * (g - sg - (x[c] - m) * rs * sgx);
			dx[c] = write_dx ? v : dx[c] + v;
		}
	}
	if (pw && pb) {
		#pragma omp simd
		for (int64_t c = 0; c < C; c++) {
			pw[c] += dy[c] * ((x[c] - m) * rs);
			pb[c] += dy[c];
		}
	} else if (pw) {
		#pragma omp simd
		for (int64_t c = 0; c < C; c++)
			pw[c] += dy[c] * ((x[c] - m) * rs);
	} else if (pb) {
		#pragma omp simd
		for (int64_t c = 0; c < C; c++)
			pb[c] += dy[c];
	}
}

/* Per-thread scratch for dweight and dbias: float partials over a block of
 * NORM_FLUSH rows, flushed into double partials (exact enough over any N,
 * and the per-row work stays in float). */
#define NORM_FLUSH 32

struct norm_part {
	float *fw, *fb;
	double *dw, *db;
};

static size_t norm_part_bytes(int64_t C)
{
	return 2 * align64((size_t)C * sizeof(float)) + 2 * align64((size_t)C * sizeof(double));
}

static struct norm_part norm_part_of(void *ws, int t, int64_t C, size_t stride)
{
	char *p = (char *)ws + (size_t)t * stride;
	size_t fs = align64((size_t)C * sizeof(float)), ds = align64((size_t)C * sizeof(double));
	return (struct norm_part){
		.fw = (float *)p, .fb = (float *)(p + fs),
		.dw = (double *)(p + 2 * fs), .db = (double *)(p + 2 * fs + ds),
	};
}

static size_t norm_workspace(const struct fw_tensor *out)
{
	return (size_t)omp_get_max_threads() * norm_stride(out);
}

/* One row's backward with x, dy and dx each f32 or bf16/f16 (FW_OPF_HALF_GRAD):
 * half rows go through buf's three f32 rows, and a half dx is rounded once
 * after its row's contribution is added (written when wx). */
struct norm_bwd {
	const struct fw_tensor *x, *dy, *dx;   /* dx: x's gradient, or NULL */
	const float *w;
	int64_t C;
	float eps;
	bool center, wx;
};

static void norm_bwd_row(const struct norm_bwd *b, int64_t n, float *buf, float *pw, float *pb)
{
	int64_t C = b->C;
	const float *x = norm_row(b->x->data, b->x->dtype, n, C, norm_buf_row(buf, 0, C));
	const float *dy = norm_row(b->dy->data, b->dy->dtype, n, C, norm_buf_row(buf, 1, C));
	void *dxp = b->dx ? elem_ptr(b->dx->data, b->dx->dtype, n * C) : NULL;
	bool half = dxp && b->dx->dtype != FW_F32;
	float *dx = half ? norm_buf_row(buf, 2, C) : dxp;
	if (half && !b->wx)
		half_load(dx, dxp, b->dx->dtype, C);
	norm_backward_row(x, dy, b->w, dx, pw, pb, C, b->eps, b->center, b->wx);
	if (half)
		half_store(dxp, b->dx->dtype, dx, C);
}

static void norm_backward(struct fw_tensor *out, const struct fw_exec *ex, bool center)
{
	const struct fw_tensor *x = out->src[0], *wt = out->src[1];
	const struct fw_tensor *bt = center ? out->src[2] : NULL;
	int64_t C = x->ne[x->ndim - 1], N = fw_nelem(x) / C;
	float *dw = wt && wt->grad ? fw_f32(wt->grad) : NULL;  /* (C) */
	float *db = bt && bt->grad ? fw_f32(bt->grad) : NULL;  /* (C) */
	/* gradients the graph did not zero (fw_exec.grad_overwrite) are written */
	bool ww = ex->grad_overwrite & 2u, wb = ex->grad_overwrite & 4u;
	const struct norm_bwd nb = {
		.x = x, .dy = out->grad, .dx = x->grad, .w = wt ? fw_f32(wt) : NULL, .C = C,
		.eps = out->params[0].f, .center = center, .wx = ex->grad_overwrite & 1u,
	};

	if (!dw && !db) {
		if (!x->grad)
			return;
		#pragma omp parallel num_threads(norm_threads(out, ex)) if (N * C > PAR_MIN)
		{
			float *buf = norm_row_buf(out, ex, omp_get_thread_num());
			#pragma omp for schedule(static)
			for (int64_t n = 0; n < N; n++)
				norm_bwd_row(&nb, n, buf, NULL, NULL);
		}
		return;
	}

	size_t stride = norm_stride(out);
	int T = ws_threads(ex, stride);
	FW_ASSERT(T >= 1);   /* workspace() asked for it */
	#pragma omp parallel num_threads(T) if (N * C > PAR_MIN)
	{
		int nt = omp_get_num_threads(), it = omp_get_thread_num();
		struct norm_part p = norm_part_of(ex->ws, it, C, stride);
		float *buf = norm_row_buf(out, ex, it);
		memset(p.fw, 0, norm_part_bytes(C));
		int64_t n0 = N * it / nt, n1 = N * (it + 1) / nt;
		for (int64_t n = n0; n < n1; n++) {
			norm_bwd_row(&nb, n, buf, dw ? p.fw : NULL, db ? p.fb : NULL);
			if ((n - n0) % NORM_FLUSH != NORM_FLUSH - 1 && n != n1 - 1)
				continue;
			#pragma omp simd
			for (int64_t c = 0; c < C; c++) {
				p.dw[c] += p.fw[c];
				p.db[c] += p.fb[c];
				p.fw[c] = p.fb[c] = 0.0f;
			}
		}
		#pragma omp barrier
		/* Sum the partials: each thread owns a range of columns. */
		int64_t c0 = C * it / nt, c1 = C * (it + 1) / nt;
		for (int64_t c = c0; c < c1; c++) {
			double sw = 0.0, sb = 0.0;
			for (int t = 0; t < nt; t++) {
				struct norm_part q = norm_part_of(ex->ws, t, C, stride);
				sw += q.dw[c];
				sb += q.db[c];
			}
			if (dw)
				dw[c] = ww ? (float)sw : dw[c] + (float)sw;
			if (db)
				db[c] = wb ? (float)sb : db[c] + (float)sb;
		}
	}
}

/* Matches torch.nn.functional.layer_norm(x, (C,), w, b, eps). */
static void layernorm_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	norm_forward(out, ex, true);
}

static void layernorm_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	norm_backward(out, ex, true);
}

/* Backward reads x and the weight, not the bias or the output. */
static uint32_t norm_saved(const struct fw_tensor *out)
{
	return 1u << 0 | (out->src[1] ? 1u << 1 : 0);
}

const struct fw_op_i fw_op_layernorm_i = {
	.size = sizeof(struct fw_op_i),
	.name = "layernorm",
	.flags = FW_OPF_HALF | FW_OPF_HALF_GRAD | FW_OPF_REMAT | FW_OPF_GRAD_OVERWRITE |
		 FW_OPF_NARROW_OUT,
	.infer = layernorm_infer,
	.forward = layernorm_forward,
	.backward = layernorm_backward,
	.workspace = norm_workspace,
	.saved = norm_saved,
};

/* Matches Llama/T5 RMSNorm: x * rsqrt(mean(x^2) + eps) * w. */
static void rmsnorm_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	norm_forward(out, ex, false);
}

static void rmsnorm_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	norm_backward(out, ex, false);
}

const struct fw_op_i fw_op_rmsnorm_i = {
	.size = sizeof(struct fw_op_i),
	.name = "rmsnorm",
	.flags = FW_OPF_HALF | FW_OPF_HALF_GRAD | FW_OPF_REMAT | FW_OPF_GRAD_OVERWRITE |
		 FW_OPF_NARROW_OUT,
	.infer = rmsnorm_infer,
	.forward = rmsnorm_forward,
	.backward = rmsnorm_backward,
	.workspace = norm_workspace,
	.saved = norm_saved,
};

/* --- softmax ------------------------------------------------------------------ */

/* y = softmax(scale * x + bias + causal mask) over the last axis.
 * Matches torch.softmax(scale * x + bias (+ -inf above the causal diagonal), -1),
 * except that fully masked rows give zeros instead of NaN.
 *
 * x is viewed as (R, Tk) rows, padded on the left to 4 dims (d0, d1, Tq, Tk);
 * bias is (b0, b1, bq, Tkb) with each b equal to x's dim or 1, so row r reads
 * bias row q(r) = i0 rs[0] + i1 rs[1] + iq rs[2] (rs = 0 on broadcast dims). */
struct sm_geom {
	int64_t d[FW_MAX_DIMS];    /* x's dims, left-padded with 1 */
	int64_t rs[3];             /* bias row strides per leading dim */
	int64_t R, Tq, Tk, Tkb;    /* rows, queries, keys, bias last dim (1 or Tk) */
	int64_t nbr;               /* bias rows */
	bool causal;
	float scale;
};

static struct sm_geom sm_geom_of(const struct fw_tensor *out)
{
	const struct fw_tensor *x = out->src[0], *b = out->src[1];
	struct sm_geom g = { .causal = out->params[0].i != 0, .scale = out->params[1].f };
	int64_t bd[FW_MAX_DIMS];
	int ox = FW_MAX_DIMS - x->ndim, ob = b ? FW_MAX_DIMS - b->ndim : 0;

	for (int i = 0; i < FW_MAX_DIMS; i++) {
		g.d[i] = i >= ox ? x->ne[i - ox] : 1;
		bd[i] = b && i >= ob ? b->ne[i - ob] : 1;
	}
	g.R = g.d[0] * g.d[1] * g.d[2];
	g.Tq = g.d[2];
	g.Tk = g.d[3];
	g.Tkb = bd[3];
	g.nbr = bd[0] * bd[1] * bd[2];
	g.rs[2] = bd[2] > 1 ? 1 : 0;
	g.rs[1] = bd[1] > 1 ? bd[2] : 0;
	g.rs[0] = bd[0] > 1 ? bd[1] * bd[2] : 0;
	return g;
}

static int64_t sm_bias_row(const struct sm_geom *g, int64_t r)
{
	int64_t iq = r % g->d[2], i1 = (r / g->d[2]) % g->d[1], i0 = r / (g->d[2] * g->d[1]);
	return i0 * g->rs[0] + i1 * g->rs[1] + iq * g->rs[2];
}

/* Keys row r may attend to: all, or j <= i + (Tk - Tq) when causal. */
static int64_t sm_valid(const struct sm_geom *g, int64_t r)
{
	if (!g->causal)
		return g->Tk;
	int64_t nv = r % g->Tq + g->Tk - g->Tq + 1;
	return nv < 0 ? 0 : nv > g->Tk ? g->Tk : nv;
}

static enum fw_status softmax_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *x = out->src[0], *b = out->src[1];
	char sx[64], sb[64];

	if (x->dtype != FW_F32 && !is_half(x->dtype))
		return fw_errorf(err, FW_ERR_SHAPE, "softmax: x is %s, expected f32, bf16 or f16",
				 dt_name(x));
	if (out->params[0].i && x->ndim < 2)
		return fw_errorf(err, FW_ERR_SHAPE,
				 "softmax: causal needs x of at least 2 dims (Tq, Tk), got %s",
				 fw_shape_str(x, sx, sizeof(sx)));
	if (!isfinite(out->params[1].f))
		return fw_errorf(err, FW_ERR_INVALID, "softmax: scale %g is not finite",
				 (double)out->params[1].f);
	if (b) {
		if (b->dtype != FW_F32)
			return fw_errorf(err, FW_ERR_SHAPE, "softmax: bias is %s, expected f32",
					 dt_name(b));
		bool ok = b->ndim <= x->ndim;
		for (int i = 1; ok && i <= b->ndim; i++) {
			int64_t bn = b->ne[b->ndim - i], xn = x->ne[x->ndim - i];
			ok = bn == xn || bn == 1;
		}
		if (!ok)
			return fw_errorf(err, FW_ERR_SHAPE,
					 "softmax: bias of shape %s does not broadcast to x %s",
					 fw_shape_str(b, sb, sizeof(sb)),
					 fw_shape_str(x, sx, sizeof(sx)));
	}
	out->dtype = x->dtype;
	out->ndim = x->ndim;
	for (int i = 0; i < x->ndim; i++)
		out->ne[i] = x->ne[i];
	return FW_OK;
}

/* y (Tk) = softmax(scale x + b) over the first nv entries, 0 after them.
 * b is NULL, a full row (Tkb == Tk) or one value (Tkb == 1). */
static void softmax_row(float *y, const float *x, const float *b, int64_t Tkb,
			int64_t Tk, int64_t nv, float scale)
{
	float s = 0.0f;
	if (b && Tkb > 1) {
		#pragma omp simd
		for (int64_t j = 0; j < nv; j++)
			y[j] = scale * x[j] + b[j];
	} else {
		float bv = b ? b[0] : 0.0f;
		#pragma omp simd
		for (int64_t j = 0; j < nv; j++)
			y[j] = scale * x[j] + bv;
	}
	float m = row_max(y, nv);
	for (int64_t j = nv; j < Tk; j++)
		y[j] = 0.0f;
	if (m == -INFINITY) {
		/* Fully masked (all -inf): zeros; a NaN input stays NaN. */
		for (int64_t j = 0; j < nv; j++)
			y[j] = isnan(y[j]) ? y[j] : 0.0f;
		return;
	}
	#pragma omp simd reduction(+:s)
	for (int64_t j = 0; j < nv; j++) {
		y[j] = vexp_neg(y[j] - m);
		s += y[j];
	}
	float inv = 1.0f / s;
	#pragma omp simd
	for (int64_t j = 0; j < nv; j++)
		y[j] *= inv;
}

/* z (n) = scale x[j0, j0 + n) + b, from a row of dtype dt. */
static void sm_z_block(float *z, const void *x, enum fw_dtype dt, const float *b, int64_t Tkb,
		       int64_t j0, int64_t n, float scale)
{
	half_load(z, elem_ptr(x, dt, j0), dt, n);
	if (b && Tkb > 1) {
		#pragma omp simd
		for (int64_t j = 0; j < n; j++)
			z[j] = scale * z[j] + b[j0 + j];
	} else {
		float bv = b ? b[0] : 0.0f;
		#pragma omp simd
		for (int64_t j = 0; j < n; j++)
			z[j] = scale * z[j] + bv;
	}
}

/* softmax_row for a bf16/f16 row x and y: z is rebuilt block by block in
 * each of three passes (max, sum of exps, output), all in f32. */
static void softmax_row_half(void *y, const void *x, enum fw_dtype dt, const float *b,
			     int64_t Tkb, int64_t Tk, int64_t nv, float scale)
{
	float z[BLK], m = -INFINITY, s = 0.0f;
	if (Tk <= BLK && nv > 0) {
		/* the row fits one block: widened once, then softmax_row's passes */
		float yf[BLK];
		half_load(z, x, dt, nv);
		softmax_row(yf, z, b, Tkb, Tk, nv, scale);
		half_store(y, dt, yf, Tk);
		return;
	}
	for (int64_t j0 = 0; j0 < nv; j0 += BLK) {
		int64_t n = min64(BLK, nv - j0);
		sm_z_block(z, x, dt, b, Tkb, j0, n, scale);
		float mb = row_max(z, n);
		m = mb > m ? mb : m;
	}
	for (int64_t j0 = 0; j0 < nv && m != -INFINITY; j0 += BLK) {
		int64_t n = min64(BLK, nv - j0);
		sm_z_block(z, x, dt, b, Tkb, j0, n, scale);
		#pragma omp simd reduction(+:s)
		for (int64_t j = 0; j < n; j++)
			s += vexp_neg(z[j] - m);
	}
	float inv = 1.0f / s;
	for (int64_t j0 = 0; j0 < Tk; j0 += BLK) {
		int64_t n = min64(BLK, Tk - j0), nz = min64(n, nv - j0 > 0 ? nv - j0 : 0);
		sm_z_block(z, x, dt, b, Tkb, j0, nz, scale);
		if (m == -INFINITY) {
			/* Fully masked (all -inf): zeros; a NaN input stays NaN. */
			for (int64_t j = 0; j < nz; j++)
				z[j] = isnan(z[j]) ? z[j] : 0.0f;
		} else {
			#pragma omp simd
			for (int64_t j = 0; j < nz; j++)
				z[j] = vexp_neg(z[j] - m) * inv;
		}
		for (int64_t j = nz; j < n; j++)
			z[j] = 0.0f;
		half_store(elem_ptr(y, dt, j0), dt, z, n);
	}
}

static void softmax_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	struct sm_geom g = sm_geom_of(out);
	const struct fw_tensor *xt = out->src[0];
	const float *b = out->src[1] ? fw_f32(out->src[1]) : NULL;       /* (nbr, Tkb) */

	if (out->dtype != FW_F32) {
		#pragma omp parallel for schedule(static) if (g.R * g.Tk > PAR_MIN)
		for (int64_t r = 0; r < g.R; r++)
			softmax_row_half(elem_ptr(out->data, out->dtype, r * g.Tk),
					 elem_ptr(xt->data, xt->dtype, r * g.Tk), out->dtype,
					 b ? b + sm_bias_row(&g, r) * g.Tkb : NULL, g.Tkb, g.Tk,
					 sm_valid(&g, r), g.scale);
		return;
	}
	const float *x = fw_f32(xt);                                     /* (R, Tk) */
	float *y = fw_f32(out);                                          /* (R, Tk) */
	#pragma omp parallel for schedule(static) if (g.R * g.Tk > PAR_MIN)
	for (int64_t r = 0; r < g.R; r++)
		softmax_row(y + r * g.Tk, x + r * g.Tk,
			    b ? b + sm_bias_row(&g, r) * g.Tkb : NULL, g.Tkb, g.Tk,
			    sm_valid(&g, r), g.scale);
}

/* One row, over its nv unmasked keys: dS = y (dy - sum(dy y));
 * dx += scale dS; db += dS (summed to one value when Tkb == 1). */
static void softmax_backward_row(float *dx, float *db, int64_t Tkb, const float *y,
				 const float *dy, int64_t nv, float scale)
{
	float dot = 0.0f;
	#pragma omp simd reduction(+:dot)
	for (int64_t j = 0; j < nv; j++)
		dot += y[j] * dy[j];
	if (dx) {
		#pragma omp simd
		for (int64_t j = 0; j < nv; j++)
			dx[j] += scale * (y[j] * (dy[j] - dot));
	}
	if (db && Tkb > 1) {
		#pragma omp simd
		for (int64_t j = 0; j < nv; j++)
			db[j] += y[j] * (dy[j] - dot);
	} else if (db) {
		float s = 0.0f;
		#pragma omp simd reduction(+:s)
		for (int64_t j = 0; j < nv; j++)
			s += y[j] * (dy[j] - dot);
		db[0] += s;
	}
}

/* softmax_backward_row for a bf16/f16 y, read in f32 blocks twice. */
static void softmax_backward_row_half(float *dx, float *db, int64_t Tkb, const void *y,
				      enum fw_dtype dt, const float *dy, int64_t nv, float scale)
{
	float yb[BLK], dot = 0.0f, s = 0.0f;
	for (int64_t j0 = 0; j0 < nv; j0 += BLK) {
		int64_t n = min64(BLK, nv - j0);
		half_load(yb, elem_ptr(y, dt, j0), dt, n);
		#pragma omp simd reduction(+:dot)
		for (int64_t j = 0; j < n; j++)
			dot += yb[j] * dy[j0 + j];
	}
	for (int64_t j0 = 0; j0 < nv; j0 += BLK) {
		int64_t n = min64(BLK, nv - j0);
		half_load(yb, elem_ptr(y, dt, j0), dt, n);
		if (dx) {
			#pragma omp simd
			for (int64_t j = 0; j < n; j++)
				dx[j0 + j] += scale * (yb[j] * (dy[j0 + j] - dot));
		}
		if (db && Tkb > 1) {
			#pragma omp simd
			for (int64_t j = 0; j < n; j++)
				db[j0 + j] += yb[j] * (dy[j0 + j] - dot);
		} else if (db) {
			#pragma omp simd reduction(+:s)
			for (int64_t j = 0; j < n; j++)
				s += yb[j] * (dy[j0 + j] - dot);
		}
	}
	if (db && Tkb == 1)
		db[0] += s;
}

/* softmax_backward_row_half with a half dy and/or dx (dydt, dxdt): each is
 * read in the same f32 blocks, and dx's row rounded once, to the value the
 * graph's f32 copies would give; write: dx's row is not added to. The dot
 * is summed block by block as there, so the bits are the same. */
static void softmax_backward_row_halfgrad(void *dx, enum fw_dtype dxdt, float *db, int64_t Tkb,
					  const void *y, enum fw_dtype ydt, const void *dy,
					  enum fw_dtype dydt, int64_t Tk, int64_t nv, float scale,
					  bool write)
{
	float yb[BLK], gb[BLK], xb[BLK], dot = 0.0f, s = 0.0f;
	for (int64_t j0 = 0; j0 < nv; j0 += BLK) {
		int64_t n = min64(BLK, nv - j0);
		half_load(yb, elem_ptr(y, ydt, j0), ydt, n);
		half_load(gb, elem_ptr(dy, dydt, j0), dydt, n);
		#pragma omp simd reduction(+:dot)
		for (int64_t j = 0; j < n; j++)
			dot += yb[j] * gb[j];
	}
	for (int64_t j0 = 0; j0 < Tk; j0 += BLK) {
		int64_t n = min64(BLK, Tk - j0), nz = min64(n, nv - j0 > 0 ? nv - j0 : 0);
		if (nz > 0) {
			half_load(yb, elem_ptr(y, ydt, j0), ydt, nz);
			half_load(gb, elem_ptr(dy, dydt, j0), dydt, nz);
		}
		if (dx) {
			if (write)
				memset(xb, 0, (size_t)n * sizeof(float));
			else
				half_load(xb, elem_ptr(dx, dxdt, j0), dxdt, n);
			#pragma omp simd
			for (int64_t j = 0; j < nz; j++)
				xb[j] += scale * (yb[j] * (gb[j] - dot));
			half_store(elem_ptr(dx, dxdt, j0), dxdt, xb, n);
		}
		if (db && Tkb > 1) {
			#pragma omp simd
			for (int64_t j = 0; j < nz; j++)
				db[j0 + j] += yb[j] * (gb[j] - dot);
		} else if (db) {
			#pragma omp simd reduction(+:s)
			for (int64_t j = 0; j < nz; j++)
				s += yb[j] * (gb[j] - dot);
		}
	}
	if (db && Tkb == 1)
		db[0] += s;
}

/* Row r's backward, for y, dy and dx of any float dtype (dx, dy: the row's
 * start); write_dx: dx's row was not zeroed (fw_exec.grad_overwrite), so it
 * is here, in cache. */
static void sm_grad_row(const struct fw_tensor *out, const struct sm_geom *g, int64_t r,
			void *dx, float *db, const void *dy, bool write_dx)
{
	int64_t Tk = g->Tk, nv = sm_valid(g, r);
	enum fw_dtype dydt = out->grad->dtype;
	enum fw_dtype dxdt = out->src[0]->grad ? out->src[0]->grad->dtype : FW_F32;
	const void *y = elem_ptr(out->data, out->dtype, r * Tk);
	if (dydt != FW_F32 || dxdt != FW_F32) {
		softmax_backward_row_halfgrad(dx, dxdt, db, g->Tkb, y, out->dtype, dy, dydt, Tk,
					      nv, g->scale, write_dx);
		return;
	}
	if (dx && write_dx)
		memset(dx, 0, (size_t)Tk * sizeof(float));
	if (out->dtype == FW_F32)
		softmax_backward_row(dx, db, g->Tkb, y, dy, nv, g->scale);
	else
		softmax_backward_row_half(dx, db, g->Tkb, y, out->dtype, dy, nv, g->scale);
}

/* When the bias has fewer rows than there are threads (a (Tk) or (B, 1, 1, Tk)
 * bias), each thread sums its rows' dbias into private partials; otherwise
 * threads own disjoint bias rows. */
static size_t sm_part_bytes(const struct sm_geom *g)
{
	return align64((size_t)(g->nbr * g->Tkb) * sizeof(float));
}

static size_t softmax_workspace(const struct fw_tensor *out)
{
	if (!out->src[1])
		return 0;
	struct sm_geom g = sm_geom_of(out);
	size_t nt = (size_t)omp_get_max_threads();
	size_t bytes = nt * sm_part_bytes(&g);
	if (g.nbr == g.R || g.nbr >= (int64_t)nt || bytes > WS_MAX)
		return 0;
	return bytes;
}

static void softmax_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	struct sm_geom g = sm_geom_of(out);
	const struct fw_tensor *xt = out->src[0], *bt = out->src[1];
	const void *dy0 = out->grad->data;                      /* (R, Tk), any float dtype */
	void *dx0 = xt->grad ? xt->grad->data : NULL;           /* (R, Tk), any float dtype */
	enum fw_dtype dydt = out->grad->dtype, dxdt = xt->grad ? xt->grad->dtype : FW_F32;
	float *db = bt && bt->grad ? fw_f32(bt->grad) : NULL;   /* (nbr, Tkb) */
	int64_t Tk = g.Tk, Tkb = g.Tkb;
	bool par = g.R * Tk > PAR_MIN;
	bool wx = ex->grad_overwrite & 1u;

	if (!dx0 && !db)
		return;
	if (db && (ex->grad_overwrite & 2u))
		memset(db, 0, (size_t)fw_nelem(bt) * sizeof(float));
	if (!db || g.nbr == g.R) {
		/* Rows map to distinct bias rows (or no dbias): plain row split. */
		#pragma omp parallel for schedule(static) if (par)
		for (int64_t r = 0; r < g.R; r++)
			sm_grad_row(out, &g, r, dx0 ? elem_ptr(dx0, dxdt, r * Tk) : NULL,
				    db ? db + sm_bias_row(&g, r) * Tkb : NULL, elem_ptr(dy0, dydt, r * Tk), wx);
		return;
	}

	size_t each = sm_part_bytes(&g);
	int T = ws_threads(ex, each);
	if (par && T >= 2 && g.nbr < omp_get_max_threads()) {
		int64_t E = g.nbr * Tkb;
		#pragma omp parallel num_threads(T)
		{
			int nt = omp_get_num_threads(), it = omp_get_thread_num();
			float *p = (float *)((char *)ex->ws + (size_t)it * each);
			memset(p, 0, (size_t)E * sizeof(float));
			int64_t r0 = g.R * it / nt, r1 = g.R * (it + 1) / nt;
			for (int64_t r = r0; r < r1; r++)
				sm_grad_row(out, &g, r, dx0 ? elem_ptr(dx0, dxdt, r * Tk) : NULL,
					    p + sm_bias_row(&g, r) * Tkb, elem_ptr(dy0, dydt, r * Tk), wx);
			#pragma omp barrier
			int64_t e0 = E * it / nt, e1 = E * (it + 1) / nt;
			for (int t = 0; t < nt; t++) {
				const float *q = (const float *)((char *)ex->ws + (size_t)t * each);
				for (int64_t e = e0; e < e1; e++)
					db[e] += q[e];
			}
		}
		return;
	}

	/* Each thread owns bias rows [q0, q1) and does every x row that maps
	 * to them (dx rows too, so each x row is done exactly once). */
	#pragma omp parallel if (par)
	{
		int nt = omp_get_num_threads(), it = omp_get_thread_num();
		int64_t q0 = g.nbr * it / nt, q1 = g.nbr * (it + 1) / nt;
		for (int64_t r = 0; r < g.R && q0 < q1; r++) {
			int64_t q = sm_bias_row(&g, r);
			if (q < q0 || q >= q1)
				continue;
			sm_grad_row(out, &g, r, dx0 ? elem_ptr(dx0, dxdt, r * Tk) : NULL, db + q * Tkb,
				    elem_ptr(dy0, dydt, r * Tk), wx);
		}
	}
}

/* Backward needs only y. */
static uint32_t softmax_saved(const struct fw_tensor *out)
{
	return FW_SAVE_OUT;
}

const struct fw_op_i fw_op_softmax_i = {
	.size = sizeof(struct fw_op_i),
	.name = "softmax",
	.flags = FW_OPF_HALF | FW_OPF_HALF_GRAD | FW_OPF_GRAD_OVERWRITE,
	.infer = softmax_infer,
	.forward = softmax_forward,
	.backward = softmax_backward,
	.workspace = softmax_workspace,
	.saved = softmax_saved,
};

/* --- cross-entropy -------------------------------------------------------------- */

/* loss = mean over counted rows of logsumexp(logits) - logits[target].
 * Matches torch.nn.functional.cross_entropy(logits.view(-1, V), targets.view(-1),
 * ignore_index=...) with mask != 0 rows counted. A target outside [0, V)
 * that is not ignore_index is a data error (the loader validates): the row
 * is not counted and gets no gradient. Zero counted rows: loss 0, no grad. */
static enum fw_status cross_entropy_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *x = out->src[0], *t = out->src[1], *m = out->src[2];
	char sx[64], st[64], sm[64];

	if (!t)
		return fw_errorf(err, FW_ERR_INVALID, "cross_entropy: targets are missing");
	if (x->dtype != FW_F32 && !is_half(x->dtype))
		return fw_errorf(err, FW_ERR_SHAPE,
				 "cross_entropy: logits are %s, expected f32, bf16 or f16",
				 dt_name(x));
	if (t->dtype != FW_I32)
		return fw_errorf(err, FW_ERR_SHAPE, "cross_entropy: targets are %s, expected i32",
				 dt_name(t));
	bool ok = t->ndim == x->ndim - 1 || (x->ndim == 1 && t->ndim == 1 && t->ne[0] == 1);
	for (int i = 0; ok && i < x->ndim - 1; i++)
		ok = t->ne[i] == x->ne[i];
	if (!ok)
		return fw_errorf(err, FW_ERR_SHAPE,
				 "cross_entropy: targets have shape %s, expected logits' %s "
				 "without the last dim",
				 fw_shape_str(t, st, sizeof(st)), fw_shape_str(x, sx, sizeof(sx)));
	if (m && m->dtype != FW_F32)
		return fw_errorf(err, FW_ERR_SHAPE, "cross_entropy: mask is %s, expected f32",
				 dt_name(m));
	if (m && !fw_same_shape(m, t))
		return fw_errorf(err, FW_ERR_SHAPE,
				 "cross_entropy: mask has shape %s, expected the targets' %s",
				 fw_shape_str(m, sm, sizeof(sm)), fw_shape_str(t, st, sizeof(st)));
	out->dtype = FW_F32;
	out->ndim = 1;
	out->ne[0] = 1;
	return FW_OK;
}

struct ce_rows {
	const void *x;         /* logits (N, V) */
	enum fw_dtype dt;      /* the logits' f32, bf16 or f16 */
	const int32_t *t;      /* targets (N) */
	const float *mask;     /* (N) or NULL */
	int64_t N, V;
	int32_t ignore;
};

static struct ce_rows ce_rows_of(const struct fw_tensor *out)
{
	const struct fw_tensor *x = out->src[0];
	int64_t V = x->ne[x->ndim - 1];
	return (struct ce_rows){
		.x = x->data, .dt = x->dtype, .t = fw_i32(out->src[1]),
		.mask = out->src[2] ? fw_f32(out->src[2]) : NULL,
		.N = fw_nelem(x) / V, .V = V, .ignore = out->params[0].i,
	};
}

static bool ce_counted(const struct ce_rows *c, int64_t n)
{
	int32_t t = c->t[n];
	return t != c->ignore && t >= 0 && t < c->V && (!c->mask || c->mask[n] != 0.0f);
}

static int64_t ce_count(const struct ce_rows *c)
{
	int64_t k = 0;
	for (int64_t n = 0; n < c->N; n++)
		k += ce_counted(c, n);
	return k;
}

/* log(sum(exp(x))) of a row. The row is read in blocks that stay in L1:
 * block max, then block exp-sum, merged into a running (max, sum) as in
 * online softmax, so a long row is read from memory once with one exp per
 * element. With e != NULL, e gets exp(x - block max) and bm the block maxima,
 * which lets backward skip the second exp. */
#define LSE_BLOCK 2048

static int64_t lse_blocks(int64_t V)
{
	return (V + LSE_BLOCK - 1) / LSE_BLOCK;
}

double fw_row_logsumexp(const void *x, enum fw_dtype dt, int64_t V, float *e, float *bm)
{
	double m = -INFINITY, s = 0.0;
	float cb[LSE_BLOCK];                /* a bf16/f16 block as f32 */
	for (int64_t j0 = 0, b = 0; j0 < V; j0 += LSE_BLOCK, b++) {
		int64_t n = min64(LSE_BLOCK, V - j0);
		const float *xb = (const float *)x + j0;
		if (dt != FW_F32) {
			half_load(cb, elem_ptr(x, dt, j0), dt, n);
			xb = cb;
		}
		float mb = row_max(xb, n), sb = 0.0f;
		if (bm)
			bm[b] = mb;
		if (mb == -INFINITY) {          /* all -inf: adds nothing */
			if (e)
				memset(e + j0, 0, (size_t)n * sizeof(float));
			continue;
		}
		if (e) {
			float *eb = e + j0;
			#pragma omp simd reduction(+:sb)
			for (int64_t j = 0; j < n; j++) {
				eb[j] = vexp_neg(xb[j] - mb);
				sb += eb[j];
			}
		} else {
			#pragma omp simd reduction(+:sb)
			for (int64_t j = 0; j < n; j++)
				sb += vexp_neg(xb[j] - mb);
		}
		if (mb > m) {
			s = s * exp(m - mb) + sb;
			m = mb;
		} else {
			s += sb * exp(mb - m);
		}
	}
	return m + log(s);
}

static void cross_entropy_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	struct ce_rows c = ce_rows_of(out);
	double loss = 0.0;
	int64_t k = 0;

	#pragma omp parallel for schedule(static) reduction(+:loss, k) if (c.N * c.V > PAR_MIN)
	for (int64_t n = 0; n < c.N; n++) {
		if (!ce_counted(&c, n))
			continue;
		const void *xr = elem_ptr(c.x, c.dt, n * c.V);
		loss += fw_row_logsumexp(xr, c.dt, c.V, NULL, NULL) - (double)half_get(xr, c.dt, c.t[n]);
		k++;
	}
	fw_f32(out)[0] = k ? (float)(loss / (double)k) : 0.0f;
}

static bool half_grad(const struct fw_tensor *x)
{
	return x->grad && x->grad->dtype != FW_F32;
}

/* Per-thread scratch for backward: one row of exps and its block maxima,
 * and for a half gradient (bf16/f16 logits under autocast) an f32 row of
 * it. */
static size_t ce_part_bytes(int64_t V, bool half)
{
	return align64((size_t)V * sizeof(float)) * (half ? 2 : 1) +
	       align64((size_t)lse_blocks(V) * sizeof(float));
}

static size_t cross_entropy_workspace(const struct fw_tensor *out)
{
	const struct fw_tensor *x = out->src[0];
	bool half = half_grad(x);
	size_t bytes = (size_t)omp_get_max_threads() * ce_part_bytes(x->ne[x->ndim - 1], half);
	/* without it, backward recomputes exp (an f32 gradient only) */
	return bytes <= WS_MAX || half ? bytes : 0;
}

/* dlogits += (softmax - onehot(target)) dloss / count on counted rows;
 * when the graph did not zero dlogits (fw_exec.grad_overwrite) each row is
 * zeroed here first, in cache, and rows not counted are zeroed. */
static void cross_entropy_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	const struct fw_tensor *xt = out->src[0];
	if (!xt->grad)
		return;
	struct ce_rows c = ce_rows_of(out);
	int64_t k = ce_count(&c), V = c.V;
	bool write = ex->grad_overwrite & 1u;
	size_t gsize = fw_dtype_size(xt->grad->dtype);
	if (!k) {
		if (write)
			memset(xt->grad->data, 0, (size_t)fw_nelem(xt) * gsize);
		return;
	}
	float scale = (float)((double)fw_f32(out->grad)[0] / (double)k);
	bool half = half_grad(xt);
	enum fw_dtype gdt = xt->grad->dtype;
	size_t each = ce_part_bytes(V, half), row = align64((size_t)V * sizeof(float));
	int T = ws_threads(ex, each);
	FW_ASSERT(!half || T > 0);

	#pragma omp parallel num_threads(T > 0 ? T : 1) if (c.N * V > PAR_MIN)
	{
		int it = omp_get_thread_num();
		char *p = T > 0 ? (char *)ex->ws + (size_t)it * each : NULL;
		float *e = p ? (float *)p : NULL;
		float *bm = p ? (float *)(p + row * (half ? 2 : 1)) : NULL;
		#pragma omp for schedule(static)
		for (int64_t n = 0; n < c.N; n++) {
			void *dr = elem_ptr(xt->grad->data, gdt, n * V);
			if (!ce_counted(&c, n)) {
				if (write)
					memset(dr, 0, (size_t)V * gsize);
				continue;
			}
			const void *xr = elem_ptr(c.x, c.dt, n * V);
			float *d = half ? (float *)(p + row) : dr;
			if (write)
				memset(d, 0, (size_t)V * sizeof(float));
			else if (half)
				half_load(d, dr, gdt, V);
			double lse = fw_row_logsumexp(xr, c.dt, V, e, bm);
			if (e) {
				/* softmax = e * exp(block max - lse) */
				for (int64_t j0 = 0, b = 0; j0 < V; j0 += LSE_BLOCK, b++) {
					int64_t nb = min64(LSE_BLOCK, V - j0);
					float f = scale * (float)exp((double)bm[b] - lse);
					#pragma omp simd
					for (int64_t j = j0; j < j0 + nb; j++)
						d[j] += e[j] * f;
				}
			} else {
				float l = (float)lse, xb[BLK];
				for (int64_t j0 = 0; j0 < V; j0 += BLK) {
					int64_t nb = min64(BLK, V - j0);
					half_load(xb, elem_ptr(xr, c.dt, j0), c.dt, nb);
					#pragma omp simd
					for (int64_t j = 0; j < nb; j++)
						d[j0 + j] += scale * vexp_neg(xb[j] - l);
				}
			}
			d[c.t[n]] -= scale;
			if (half)
				half_store(dr, gdt, d, V);
		}
	}
}

/* Backward recomputes the softmax: logits, targets and the mask. */
static uint32_t cross_entropy_saved(const struct fw_tensor *out)
{
	return 1u << 0 | 1u << 1 | (out->src[2] ? 1u << 2 : 0);
}

const struct fw_op_i fw_op_cross_entropy_i = {
	.size = sizeof(struct fw_op_i),
	.name = "cross_entropy",
	.flags = FW_OPF_HALF | FW_OPF_HALF_GRAD | FW_OPF_GRAD_OVERWRITE,
	.infer = cross_entropy_infer,
	.forward = cross_entropy_forward,
	.backward = cross_entropy_backward,
	.workspace = cross_entropy_workspace,
	.saved = cross_entropy_saved,
};
