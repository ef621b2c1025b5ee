/* ops_reduce.c - sum and mean over an axis or all elements, cast.
 *
 * Sums accumulate in double, so that long reductions stay within an ulp of
 * PyTorch's cascade sums. A reduction views x as (O, A, I): O outer rows,
 * the reduced axis A and I inner elements; out is (O, I). Threads never
 * share an output; when there are too few outputs to split, they split the
 * reduced axis into per-thread double partials and add those up in thread
 * order (no atomics).
 */
#include <string.h>

#include "kernel.h"


#define FEW 1024        /* outputs up to which threads split the reduced axis */
#define CH 256          /* inner columns one work item sums */

/* --- sum and mean ------------------------------------------------------------- */

/* Matches torch.sum(x, axis, keepdim) and torch.mean(x, axis, keepdim);
 * FW_AXIS_ALL matches torch.sum(x) but gives shape [1] (with keepdim: all
 * dims 1, as torch), as does reducing the only dim of a 1-d x without keepdim. */
struct red {
	int64_t O, A, I;
	bool mean;
};

static struct red red_of(const struct fw_tensor *out, bool mean)
{
	const struct fw_tensor *x = out->src[0];
	struct red r = { 1, 1, 1, mean };
	int ax = out->params[0].i == FW_AXIS_ALL ? -1 : axis_of(out->params[0].i, x->ndim);

	if (ax < 0) {
		r.A = fw_nelem(x);
		return r;
	}
	for (int i = 0; i < x->ndim; i++) {
		if (i < ax)
			r.O *= x->ne[i];
		else if (i > ax)
			r.I *= x->ne[i];
	}
	r.A = x->ne[ax];
	return r;
}

static enum fw_status red_infer(struct fw_tensor *out, struct fw_err *err, const char *op)
{
	const struct fw_tensor *x = out->src[0];
	int axis = out->params[0].i;
	bool keep = out->params[1].i != 0;
	enum fw_status st;
	char s[64];

	if ((st = check_f32(op, "x", x, err)) != FW_OK)
		return st;
	out->dtype = FW_F32;
	out->ndim = 0;
	if (axis == FW_AXIS_ALL && keep) {
		out->ndim = x->ndim;
		for (int i = 0; i < x->ndim; i++)
			out->ne[i] = 1;
	} else if (axis != FW_AXIS_ALL) {
		int ax = axis_of(axis, x->ndim);
		if (ax < 0)
			return fw_errorf(err, FW_ERR_SHAPE, "%s: axis %d is out of range for shape %s",
					 op, axis, fw_shape_str(x, s, sizeof(s)));
		for (int i = 0; i < x->ndim; i++) {
			if (i != ax)
				out->ne[out->ndim++] = x->ne[i];
			else if (keep)
				out->ne[out->ndim++] = 1;
		}
	}
	if (out->ndim == 0) {
		out->ndim = 1;
		out->ne[0] = 1;
	}
	return FW_OK;
}

static double sum_row(const float *x, int64_t n)
{
	double s = 0.0;
	#pragma omp simd reduction(+:s)
	for (int64_t j = 0; j < n; j++)
		s += (double)x[j];
	return s;
}

/* Scratch of the split-axis case: one double per output and thread. */
static size_t red_part_bytes(const struct red *r)
{
	return align64((size_t)(r->O * r->I) * sizeof(double));
}

static bool red_split_axis(const struct red *r)
{
	return r->O * r->I <= FEW && r->O * r->A * r->I > PAR_MIN;
}

static size_t red_workspace(const struct fw_tensor *out)
{
	struct red r = red_of(out, false);
	return red_split_axis(&r) ? (size_t)omp_get_max_threads() * red_part_bytes(&r) : 0;
}

/* Few outputs: thread it sums x (O, [a0, a1), I) into its partial (O, I). */
static void red_forward_split(const struct red *r, const float *x, float *y,
			      const struct fw_exec *ex, int T)
{
	int64_t O = r->O, A = r->A, I = r->I, P = O * I;
	size_t each = red_part_bytes(r);
	double div = r->mean ? (double)A : 1.0;

	#pragma omp parallel num_threads(T)
	{
		int nt = omp_get_num_threads(), it = omp_get_thread_num();
		double *p = (double *)((char *)ex->ws + (size_t)it * each);
		int64_t a0 = A * it / nt, a1 = A * (it + 1) / nt;
		memset(p, 0, (size_t)P * sizeof(double));
		for (int64_t o = 0; o < O; o++) {
			if (I == 1) {
				p[o] = sum_row(x + o * A + a0, a1 - a0);
				continue;
			}
			for (int64_t a = a0; a < a1; a++) {
				const float *row = x + (o * A + a) * I;
				double *q = p + o * I;
				#pragma omp simd
				for (int64_t i = 0; i < I; i++)
					q[i] += (double)row[i];
			}
		}
		#pragma omp barrier
		/* Thread it owns outputs [q0, q1) and adds the partials in order. */
		int64_t q0 = P * it / nt, q1 = P * (it + 1) / nt;
		for (int64_t q = q0; q < q1; q++) {
			double s = 0.0;
			for (int t = 0; t < nt; t++)
				s += ((const double *)((const char *)ex->ws + (size_t)t * each))[q];
			y[q] = (float)(s / div);
		}
	}
}

static void red_forward(struct fw_tensor *out, const struct fw_exec *ex, bool mean)
{
	struct red r = red_of(out, mean);
	const float *x = fw_f32(out->src[0]);   /* (O, A, I) */
	float *y = fw_f32(out);                 /* (O, I) */
	int64_t O = r.O, A = r.A, I = r.I, n = O * A * I;
	double div = r.mean ? (double)A : 1.0;

	if (red_split_axis(&r)) {
		int T = ws_threads(ex, red_part_bytes(&r));
		if (T > 1) {
			red_forward_split(&r, x, y, ex, T);
			return;
		}
	}
	if (I == 1) {
		/* Rows of A contiguous values. */
		#pragma omp parallel for schedule(static) if (n > PAR_MIN)
		for (int64_t o = 0; o < O; o++)
			y[o] = (float)(sum_row(x + o * A, A) / div);
		return;
	}
	/* Work items are (o, block of up to CH columns): each sums its block
	 * over A in double. Narrow blocks when there are few items. */
	int64_t ch = min64(I, CH);
	while (ch > 16 && O * ((I + ch - 1) / ch) < 4 * (int64_t)omp_get_max_threads())
		ch /= 2;
	int64_t nc = (I + ch - 1) / ch;
	#pragma omp parallel for schedule(static) if (n > PAR_MIN)
	for (int64_t item = 0; item < O * nc; item++) {
		int64_t o = item / nc, i0 = item % nc * ch, w = min64(ch, I - i0);
		double acc[CH];
		for (int64_t j = 0; j < w; j++)
			acc[j] = 0.0;
		for (int64_t a = 0; a < A; a++) {
			const float *row = x + (o * A + a) * I + i0;
			#pragma omp simd
			for (int64_t j = 0; j < w; j++)
				acc[j] += (double)row[j];
		}
		for (int64_t j = 0; j < w; j++)
			y[o * I + i0 + j] = (float)(acc[j] / div);
	}
}

/* dx (O, A, I) += dy (O, 1, I), divided by A for mean (as torch divides the
 * expanded gradient). Threads split dx's elements. */
static void red_backward(struct fw_tensor *out, const struct fw_exec *ex, bool mean)
{
	const struct fw_tensor *xt = out->src[0];
	if (!xt->grad)
		return;
	struct red r = red_of(out, mean);
	int64_t A = r.A, I = r.I, n = r.O * A * I;
	const float *dy = fw_f32(out->grad);   /* (O, I) */
	float *dx = fw_f32(xt->grad);          /* (O, A, I) */
	float div = r.mean ? (float)A : 1.0f;
	/* I == 1: rows o of A elements get dy[o]; else rows (o, a) of I get dy[o]. */
	int64_t L = I == 1 ? A : I;

	#pragma omp parallel if (n > PAR_MIN)
	{
		int nt = omp_get_num_threads(), it = omp_get_thread_num();
		int64_t e = split_at(n, it, nt), e1 = split_at(n, it + 1, nt);
		while (e < e1) {
			int64_t q = e / L, j = e % L, len = min64(L - j, e1 - e);
			float *d = dx + e;
			if (I == 1) {
				float v = dy[q] / div;
				#pragma omp simd
				for (int64_t k = 0; k < len; k++)
					d[k] += v;
			} else {
				const float *g = dy + q / A * I + j;
				#pragma omp simd
				for (int64_t k = 0; k < len; k++)
					d[k] += g[k] / div;
			}
			e += len;
		}
	}
}

/* Backward needs only the shapes. */
static uint32_t saved_none(const struct fw_tensor *out)
{
	return 0;
}

static enum fw_status sum_infer(struct fw_tensor *out, struct fw_err *err)
{
	return red_infer(out, err, "sum");
}

static void sum_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	red_forward(out, ex, false);
}

static void sum_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	red_backward(out, ex, false);
}

const struct fw_op_i fw_op_sum_i = {
	.size = sizeof(struct fw_op_i),
	.name = "sum",
	.infer = sum_infer,
	.forward = sum_forward,
	.backward = sum_backward,
	.workspace = red_workspace,
	.saved = saved_none,
};

static enum fw_status mean_infer(struct fw_tensor *out, struct fw_err *err)
{
	return red_infer(out, err, "mean");
}

static void mean_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	red_forward(out, ex, true);
}

static void mean_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	red_backward(out, ex, true);
}

const struct fw_op_i fw_op_mean_i = {
	.size = sizeof(struct fw_op_i),
	.name = "mean",
	.infer = mean_infer,
	.forward = mean_forward,
	.backward = mean_backward,
	.workspace = red_workspace,
	.saved = saved_none,
};

/* --- cast ------------------------------------------------------------------------- */

/* Matches x.to(dtype) between f32, bf16 and f16 (round to nearest even).
 * The gradient stays f32 and passes through unchanged, as under autocast. */
static bool is_float(int dt)
{
	return dt == FW_F32 || dt == FW_BF16 || dt == FW_F16;
}

static enum fw_status cast_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *x = out->src[0];
	int dt = out->params[0].i;

	if (!x)
		return fw_errorf(err, FW_ERR_INVALID, "cast: x is missing");
	if (!is_float(x->dtype))
		return fw_errorf(err, FW_ERR_SHAPE, "cast: x is %s, expected f32, bf16 or f16",
				 fw_dtype_name(x->dtype));
	if (!is_float(dt))
		return fw_errorf(err, FW_ERR_INVALID,
				 "cast: target dtype %d (%s) is not f32, bf16 or f16", dt,
				 fw_dtype_name((enum fw_dtype)dt));
	out->dtype = (enum fw_dtype)dt;
	out->ndim = x->ndim;
	for (int i = 0; i < x->ndim; i++)
		out->ne[i] = x->ne[i];
	return FW_OK;
}

/* x may be a strided view (autocast casts attention's q, k, v views): each
 * row of its last dim converted in one call when that dim is unit-stride. */
static void cast_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	const struct fw_tensor *x = out->src[0];
	if (out->flags & FW_FLAG_VIEW) {      /* folded into x's op (graph.c): x is out's dtype */
		out->data = x->data;
		return;
	}
	if (fw_is_contiguous(x)) {
		fw_convert(out->data, out->dtype, x->data, x->dtype, fw_nelem(out));
		return;
	}
	int nd = x->ndim;
	int64_t cols = x->ne[nd - 1], rows = fw_nelem(out) / cols, cs = x->nb[nd - 1];
	size_t xs = fw_dtype_size(x->dtype), os = fw_dtype_size(out->dtype);

	for (int64_t r = 0; r < rows; r++) {      /* serial: fw_convert has its own threads */
		int64_t off = 0, rem = r;
		for (int d = nd - 2; d >= 0; d--) {
			off += rem % x->ne[d] * x->nb[d];
			rem /= x->ne[d];
		}
		const char *src = (const char *)x->data + (size_t)off * xs;
		char *dst = (char *)out->data + (size_t)(r * cols) * os;
		if (cs == 1)
			fw_convert(dst, out->dtype, src, x->dtype, cols);
		else
			for (int64_t c = 0; c < cols; c++)
				fw_convert(dst + (size_t)c * os, out->dtype,
					   src + (size_t)(c * cs) * xs, x->dtype, 1);
	}
}

/* dx += dy, both f32 (dx = dy when the graph did not zero it:
 * fw_exec.grad_overwrite); nothing when the graph gave the cast its
 * source's gradient buffer (an f32 source: graph.c's shares_grad). */
static void cast_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	const struct fw_tensor *xt = out->src[0];
	if (!xt->grad || xt->grad->data == out->grad->data)
		return;
	const float *dy = fw_f32(out->grad);
	float *dx = fw_f32(xt->grad);
	int64_t n = fw_nelem(out);

	if (ex->grad_overwrite & 1u) {
		memcpy(dx, dy, (size_t)n * sizeof(float));
		return;
	}
	#pragma omp parallel for simd schedule(static) if (n > PAR_MIN)
	for (int64_t i = 0; i < n; i++)
		dx[i] += dy[i];
}

const struct fw_op_i fw_op_cast_i = {
	.size = sizeof(struct fw_op_i),
	.name = "cast",
	.flags = FW_OPF_STRIDED | FW_OPF_HALF | FW_OPF_GRAD_OVERWRITE,
	.infer = cast_infer,
	.forward = cast_forward,
	.backward = cast_backward,
	.saved = saved_none,
};
