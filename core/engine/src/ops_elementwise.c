/* ops_elementwise.c - broadcasting add/sub/mul, scale, activations, dropout.
 *
 * Sources and outputs are contiguous f32, or bf16/f16 for the ops flagged
 * FW_OPF_HALF (computing in f32 on blocks, half.h). Binary ops follow PyTorch
 * broadcasting: shapes are right-aligned and a dim of size 1 stretches.
 * Kernels first collapse the broadcast geometry (struct bc): dims of size 1
 * go, and neighbouring dims that every operand steps through alike merge.
 * A same-shape add thus becomes one flat loop, and a bias add (N, C) + (C)
 * becomes N rows of C against a row vector.
 *
 * Backward kernels add into the gradients. A broadcast operand's gradient is
 * a reduction: the row-vector case (bias) sums rows into per-thread double
 * partials, other patterns give each thread a disjoint part of the gradient.
 * No atomics, so results are the same from run to run.
 */
#include <math.h>
#include <string.h>

#include "half.h"
#include "kernel.h"
#include "vmath.h"


#define WS_MAX (64u << 20)   /* largest scratch the bias gradient asks for */
#define MAXT 64              /* threads of the scalar-gradient reduction */

static void copy_shape(struct fw_tensor *out, const struct fw_tensor *x)
{
	out->dtype = FW_F32;
	out->ndim = x->ndim;
	for (int i = 0; i < x->ndim; i++)
		out->ne[i] = x->ne[i];
}


/* --- broadcast geometry ------------------------------------------------------- */

bool fw_broadcastable(const struct fw_tensor *a, const struct fw_tensor *b,
		      int *ndim, int64_t *shape)
{
	int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
	int64_t ne[FW_MAX_DIMS];

	if (nd > FW_MAX_DIMS)
		return false;
	for (int i = 0; i < nd; i++) {
		int ia = i - (nd - a->ndim), ib = i - (nd - b->ndim);
		int64_t na = ia >= 0 ? a->ne[ia] : 1, nb = ib >= 0 ? b->ne[ib] : 1;
		if (na != nb && na != 1 && nb != 1)
			return false;
		ne[i] = na == 1 ? nb : na;
	}
	if (ndim)
		*ndim = nd;
	for (int i = 0; shape && i < nd; i++)
		shape[i] = ne[i];
	return true;
}

/* out's shape and the strides, in elements, with which three operands step
 * through it: s[0] is out itself (contiguous), s[1] and s[2] are two
 * broadcast operands (stride 0 along a broadcast dim). The last dim has
 * stride 0 or 1 for every operand. */
struct bc {
	int nd;                          /* collapsed dims, 1..4 */
	int64_t n;                       /* elements of out */
	int64_t d[FW_MAX_DIMS];          /* collapsed dims of out */
	int64_t s[3][FW_MAX_DIMS];
};

/* Collapses out against p and q, right-aligned; NULL stands for a constant
 * (stride 0 everywhere). A dim merges into the one inside it when every
 * operand steps through both as one: s[i] == s[i + 1] d[i + 1]. */
static void bc_init(struct bc *g, const struct fw_tensor *out,
		    const struct fw_tensor *p, const struct fw_tensor *q)
{
	const struct fw_tensor *t[3] = { out, p, q };
	int64_t s[3][FW_MAX_DIMS], cd[FW_MAX_DIMS], cs[3][FW_MAX_DIMS];
	int nd = out->ndim, m = 0;

	for (int k = 0; k < 3; k++) {
		int64_t st = 1;
		for (int i = nd - 1; i >= 0; i--) {
			int j = t[k] ? i - (nd - t[k]->ndim) : -1;
			int64_t ne = j >= 0 ? t[k]->ne[j] : 1;
			s[k][i] = ne == 1 ? 0 : st;
			st *= ne;
		}
	}
	/* Collapse from the innermost dim out: cd[0] is the innermost. */
	for (int i = nd - 1; i >= 0; i--) {
		if (out->ne[i] == 1)
			continue;
		bool merge = m > 0;
		for (int k = 0; k < 3 && merge; k++)
			merge = s[k][i] == cs[k][m - 1] * cd[m - 1];
		if (merge) {
			cd[m - 1] *= out->ne[i];
			continue;
		}
		cd[m] = out->ne[i];
		for (int k = 0; k < 3; k++)
			cs[k][m] = s[k][i];
		m++;
	}
	if (m == 0) {                    /* one element */
		cd[0] = 1;
		for (int k = 0; k < 3; k++)
			cs[k][0] = 0;
		m = 1;
	}
	g->nd = m;
	g->n = 1;
	for (int i = 0; i < m; i++) {
		g->d[i] = cd[m - 1 - i];
		g->n *= g->d[i];
		for (int k = 0; k < 3; k++)
			g->s[k][i] = cs[k][m - 1 - i];
	}
}

/* Offset of operand k at the start of row r (a row is the last dim). */
static inline int64_t bc_row_off(const struct bc *g, int k, int64_t r)
{
	int64_t off = 0;
	for (int i = g->nd - 2; i >= 0; i--) {
		off += r % g->d[i] * g->s[k][i];
		r /= g->d[i];
	}
	return off;
}

/* How operand 1 relates to out: same layout, one element, a row vector
 * against rows (only the last dim kept), or anything else. */
enum bc_kind { BC_FULL, BC_SCALAR, BC_ROWVEC, BC_GENERIC };

static enum bc_kind bc_kind_of(const struct bc *g)
{
	int kept = 0;
	for (int i = 0; i < g->nd; i++)
		kept += g->s[1][i] != 0;
	if (kept == 0)
		return BC_SCALAR;
	if (kept == g->nd)
		return BC_FULL;
	if (kept == 1 && g->s[1][g->nd - 1] != 0)
		return BC_ROWVEC;
	return BC_GENERIC;
}

/* --- add, sub, mul -------------------------------------------------------------- */

enum bin_op { BIN_ADD, BIN_SUB, BIN_MUL, BIN_ACC };

/* One loop per stride case (sa, sb each 0 or 1), so that each vectorises;
 * EXPR reads u = a[j sa] and v = b[j sb]. */
#define ROW_LOOP(EXPR) do {						\
	if (sa && sb) {							\
		_Pragma("omp simd")					\
		for (int64_t j = 0; j < n; j++) {			\
			float u = a[j], v = b[j];			\
			EXPR;						\
		}							\
	} else if (sa) {						\
		float v = b[0];						\
		_Pragma("omp simd")					\
		for (int64_t j = 0; j < n; j++) {			\
			float u = a[j];					\
			EXPR;						\
		}							\
	} else if (sb) {						\
		float u = a[0];						\
		_Pragma("omp simd")					\
		for (int64_t j = 0; j < n; j++) {			\
			float v = b[j];					\
			EXPR;						\
		}							\
	} else {							\
		float u = a[0], v = b[0];				\
		for (int64_t j = 0; j < n; j++)				\
			EXPR;						\
	}								\
} while (0)

/* y (n) = a op b, or y += a b for BIN_ACC. */
static void bin_row(enum bin_op op, float *y, const float *a, int64_t sa,
		    const float *b, int64_t sb, int64_t n)
{
	switch (op) {
	case BIN_ADD: ROW_LOOP(y[j] = u + v); break;
	case BIN_SUB: ROW_LOOP(y[j] = u - v); break;
	case BIN_MUL: ROW_LOOP(y[j] = u * v); break;
	case BIN_ACC: ROW_LOOP(y[j] += u * v); break;
	}
}

/* sum_j a[j] b[j sb] in double. */
static double dot_row(const float *a, const float *b, int64_t sb, int64_t n)
{
	double s = 0.0;
	if (sb) {
		#pragma omp simd reduction(+:s)
		for (int64_t j = 0; j < n; j++)
			s += (double)(a[j] * b[j]);
	} else {
		float v = b[0];
		#pragma omp simd reduction(+:s)
		for (int64_t j = 0; j < n; j++)
			s += (double)(a[j] * v);
	}
	return s;
}

/* y = a op b over out elements [e0, e1); y is laid out like out, a steps
 * with s[1], b with s[2]. */
static void bc_apply_range(const struct bc *g, enum bin_op op, float *y, const float *a,
			   const float *b, int64_t e0, int64_t e1)
{
	int64_t L = g->d[g->nd - 1], sa = g->s[1][g->nd - 1], sb = g->s[2][g->nd - 1];
	int64_t r = e0 / L, j = e0 % L;

	while (e0 < e1) {
		int64_t len = L - j < e1 - e0 ? L - j : e1 - e0;
		bin_row(op, y + e0, a + bc_row_off(g, 1, r) + j * sa, sa,
			b + bc_row_off(g, 2, r) + j * sb, sb, len);
		e0 += len;
		r++;
		j = 0;
	}
}

static void bc_apply(const struct bc *g, enum bin_op op, float *y, const float *a,
		     const float *b)
{
	#pragma omp parallel if (g->n > PAR_MIN)
	{
		int nt = omp_get_num_threads(), it = omp_get_thread_num();
		bc_apply_range(g, op, y, a, b, split_at(g->n, it, nt),
			       split_at(g->n, it + 1, nt));
	}
}

/* x is one element: dx += sum dy w, per-thread double partials summed in
 * thread order. */
static void bc_grad_scalar(const struct bc *g, float *dx, const float *dy, const float *w)
{
	double part[MAXT] = { 0 };
	int T = omp_get_max_threads() < MAXT ? omp_get_max_threads() : MAXT;
	int64_t L = g->d[g->nd - 1], sw = g->s[2][g->nd - 1];

	#pragma omp parallel num_threads(T) if (g->n > PAR_MIN)
	{
		int nt = omp_get_num_threads(), it = omp_get_thread_num();
		int64_t e0 = split_at(g->n, it, nt), e1 = split_at(g->n, it + 1, nt);
		int64_t r = e0 / L, j = e0 % L;
		double s = 0.0;
		while (e0 < e1) {
			int64_t len = L - j < e1 - e0 ? L - j : e1 - e0;
			s += dot_row(dy + e0, w + bc_row_off(g, 2, r) + j * sw, sw, len);
			e0 += len;
			r++;
			j = 0;
		}
		part[it] = s;
	}
	double s = 0.0;
	for (int t = 0; t < T; t++)
		s += part[t];
	dx[0] += (float)s;
}

/* Scratch of the row-vector gradient: one double row per thread. */
static size_t rowvec_bytes(const struct bc *g)
{
	return align64((size_t)g->d[g->nd - 1] * sizeof(double));
}

/* x is a row vector (L) against dy (R, L): dx[j] += sum_r dy[r, j] w(r, j).
 * Threads sum blocks of rows into double partials, then each owns a range
 * of columns and adds the partials up. False when ws is too small. */
static bool bc_grad_rowvec(const struct bc *g, float *dx, const float *dy, const float *w,
			   const struct fw_exec *ex)
{
	int64_t L = g->d[g->nd - 1], R = g->n / L, sw = g->s[2][g->nd - 1];
	size_t each = rowvec_bytes(g);
	int T = ws_threads(ex, each);

	if (T < 1)
		return false;
	#pragma omp parallel num_threads(T) if (g->n > PAR_MIN)
	{
		int nt = omp_get_num_threads(), it = omp_get_thread_num();
		double *p = (double *)((char *)ex->ws + (size_t)it * each);
		memset(p, 0, (size_t)L * sizeof(double));
		for (int64_t r = R * it / nt; r < R * (it + 1) / nt; r++) {
			const float *gr = dy + r * L, *wr = w + bc_row_off(g, 2, r);
			if (sw) {
				#pragma omp simd
				for (int64_t j = 0; j < L; j++)
					p[j] += (double)(gr[j] * wr[j]);
			} else {
				float v = wr[0];
				#pragma omp simd
				for (int64_t j = 0; j < L; j++)
					p[j] += (double)(gr[j] * v);
			}
		}
		#pragma omp barrier
		/* Thread it owns columns [c0, c1) of every partial. */
		int64_t c0 = split_at(L, it, nt), c1 = split_at(L, it + 1, nt);
		double *p0 = (double *)ex->ws;
		for (int t = 1; t < nt; t++) {
			const double *q = (const double *)((char *)ex->ws + (size_t)t * each);
			#pragma omp simd
			for (int64_t c = c0; c < c1; c++)
				p0[c] += q[c];
		}
		#pragma omp simd
		for (int64_t c = c0; c < c1; c++)
			dx[c] += (float)p0[c];
	}
	return true;
}

/* Any other broadcast: threads split the outermost dim along which x is
 * kept, so each owns a disjoint part of dx and walks its rows in order. */
static void bc_grad_generic(const struct bc *g, float *dx, const float *dy, const float *w)
{
	int64_t d[FW_MAX_DIMS], sy[FW_MAX_DIMS], sx[FW_MAX_DIMS], sw[FW_MAX_DIMS];
	int off = FW_MAX_DIMS - g->nd, k = 0;

	for (int i = 0; i < FW_MAX_DIMS; i++) {
		bool real = i >= off;
		d[i] = real ? g->d[i - off] : 1;
		sy[i] = real ? g->s[0][i - off] : 0;
		sx[i] = real ? g->s[1][i - off] : 0;
		sw[i] = real ? g->s[2][i - off] : 0;
	}
	while (k < FW_MAX_DIMS - 1 && sx[k] == 0)
		k++;

	#pragma omp parallel if (g->n > PAR_MIN)
	{
		int nt = omp_get_num_threads(), it = omp_get_thread_num();
		int64_t lo[FW_MAX_DIMS] = { 0 }, hi[FW_MAX_DIMS];
		for (int i = 0; i < FW_MAX_DIMS; i++)
			hi[i] = d[i];
		lo[k] = k == FW_MAX_DIMS - 1 ? split_at(d[k], it, nt) : d[k] * it / nt;
		hi[k] = k == FW_MAX_DIMS - 1 ? split_at(d[k], it + 1, nt) : d[k] * (it + 1) / nt;
		int64_t m = hi[3] - lo[3];
		for (int64_t i0 = lo[0]; i0 < hi[0]; i0++)
		for (int64_t i1 = lo[1]; i1 < hi[1]; i1++)
		for (int64_t i2 = lo[2]; i2 < hi[2] && m > 0; i2++) {
			int64_t oy = i0 * sy[0] + i1 * sy[1] + i2 * sy[2] + lo[3];
			int64_t ox = i0 * sx[0] + i1 * sx[1] + i2 * sx[2] + lo[3] * sx[3];
			int64_t ow = i0 * sw[0] + i1 * sw[1] + i2 * sw[2] + lo[3] * sw[3];
			if (sx[3])
				bin_row(BIN_ACC, dx + ox, dy + oy, 1, w + ow, sw[3], m);
			else
				dx[ox] += (float)dot_row(dy + oy, w + ow, sw[3], m);
		}
	}
}

/* dx += dy w reduced over the dims along which x is broadcast, where w is
 * the tensor wt or, when wt is NULL, the constant *w; dx = ... when write
 * (its buffer was not zeroed: fw_exec.grad_overwrite). */
static void bin_grad(const struct fw_tensor *out, const struct fw_tensor *x,
		     const struct fw_tensor *wt, const float *w, const struct fw_exec *ex,
		     bool write)
{
	struct bc g;
	float *dx = fw_f32(x->grad);
	const float *dy = fw_f32(out->grad);

	bc_init(&g, out, x, wt);
	enum bc_kind kind = bc_kind_of(&g);
	if (write && kind != BC_FULL)   /* a reduction: small, zeroed here */
		memset(dx, 0, (size_t)fw_nelem(x) * sizeof(float));
	switch (kind) {
	case BC_FULL:       /* dx is laid out like dy (s[1] == s[0]) */
		bc_apply(&g, write ? BIN_MUL : BIN_ACC, dx, dy, w);
		break;
	case BC_SCALAR:
		bc_grad_scalar(&g, dx, dy, w);
		break;
	case BC_ROWVEC:
		if (bc_grad_rowvec(&g, dx, dy, w, ex))
			break;
		/* no scratch: split columns instead */
		__attribute__((fallthrough));
	case BC_GENERIC:
		bc_grad_generic(&g, dx, dy, w);
		break;
	}
}

/* a and b are f32, bf16 or f16; the result is in their dtype when they
 * share a half one, else f32 (PyTorch's promotion). */
static enum fw_status bin_infer(struct fw_tensor *out, struct fw_err *err, const char *op)
{
	const struct fw_tensor *a = out->src[0], *b = out->src[1];
	char sa[64], sb[64];
	enum fw_status st;

	bool half = a && b && (is_half(a->dtype) || is_half(b->dtype)) &&
		    (is_half(a->dtype) || a->dtype == FW_F32) &&
		    (is_half(b->dtype) || b->dtype == FW_F32);
	if (!half && ((st = check_f32(op, "a", a, err)) != FW_OK ||
		      (st = check_f32(op, "b", b, err)) != FW_OK))
		return st;
	if (!fw_broadcastable(a, b, &out->ndim, out->ne))
		return fw_errorf(err, FW_ERR_SHAPE, "%s: shapes %s and %s do not broadcast",
				 op, fw_shape_str(a, sa, sizeof(sa)),
				 fw_shape_str(b, sb, sizeof(sb)));
	out->dtype = a->dtype == b->dtype ? a->dtype : FW_F32;
	return FW_OK;
}

/* bin_row on operands and a result of any float dtype, through f32 blocks
 * for the half ones (f32 ones are read and written in place). */
static void bin_row_half(enum bin_op op, void *y, enum fw_dtype ty, const void *a,
			 enum fw_dtype ta, int64_t sa, const void *b, enum fw_dtype tb,
			 int64_t sb, int64_t n)
{
	float ab[BLK], bb[BLK], yb[BLK];
	if (!sa)
		ab[0] = half_get(a, ta, 0);
	if (!sb)
		bb[0] = half_get(b, tb, 0);
	for (int64_t j0 = 0; j0 < n; j0 += BLK) {
		int64_t m = min64(BLK, n - j0);
		const float *ap = ab, *bp = bb;
		float *yp = ty == FW_F32 ? (float *)y + j0 : yb;
		if (sa && ta == FW_F32)
			ap = (const float *)a + j0;
		else if (sa)
			half_load(ab, elem_ptr(a, ta, j0), ta, m);
		if (sb && tb == FW_F32)
			bp = (const float *)b + j0;
		else if (sb)
			half_load(bb, elem_ptr(b, tb, j0), tb, m);
		bin_row(op, yp, ap, sa, bp, sb, m);
		if (ty != FW_F32)
			half_store(elem_ptr(y, ty, j0), ty, yb, m);
	}
}

/* bc_apply when some tensor is bf16 or f16. */
static void bc_apply_half(const struct bc *g, enum bin_op op, const struct fw_tensor *out,
			  const struct fw_tensor *a, const struct fw_tensor *b)
{
	int64_t L = g->d[g->nd - 1], sa = g->s[1][g->nd - 1], sb = g->s[2][g->nd - 1];

	#pragma omp parallel if (g->n > PAR_MIN)
	{
		int nt = omp_get_num_threads(), it = omp_get_thread_num();
		int64_t e0 = split_at(g->n, it, nt), e1 = split_at(g->n, it + 1, nt);
		int64_t r = e0 / L, j = e0 % L;
		while (e0 < e1) {
			int64_t len = L - j < e1 - e0 ? L - j : e1 - e0;
			bin_row_half(op, elem_ptr(out->data, out->dtype, e0), out->dtype,
				     elem_ptr(a->data, a->dtype, bc_row_off(g, 1, r) + j * sa),
				     a->dtype, sa,
				     elem_ptr(b->data, b->dtype, bc_row_off(g, 2, r) + j * sb),
				     b->dtype, sb, len);
			e0 += len;
			r++;
			j = 0;
		}
	}
}

static void bin_forward(struct fw_tensor *out, enum bin_op op)
{
	struct bc g;
	const struct fw_tensor *a = out->src[0], *b = out->src[1];
	bc_init(&g, out, a, b);
	if (out->dtype != FW_F32 || a->dtype != FW_F32 || b->dtype != FW_F32)
		bc_apply_half(&g, op, out, a, b);
	else
		bc_apply(&g, op, fw_f32(out), fw_f32(a), fw_f32(b));
}

/* A bf16/f16 operand weighs the other's gradient through an f32 copy at
 * the start of the workspace (backward only: nothing of it is kept). */
static size_t half_copy_bytes(const struct fw_tensor *t)
{
	return t->dtype == FW_F32 ? 0 : align64((size_t)fw_nelem(t) * sizeof(float));
}

/* dx (m, dtype dt) = s dy, or += s dy (rounded once), dy an f32 block. */
static void grad_block(void *dx, enum fw_dtype dt, const float *dy, float s, int64_t m,
		       bool write)
{
	float buf[BLK];
	if (dt == FW_F32) {
		float *d = dx;
		if (write) {
			#pragma omp simd
			for (int64_t j = 0; j < m; j++)
				d[j] = dy[j] * s;
		} else {
			#pragma omp simd
			for (int64_t j = 0; j < m; j++)
				d[j] += dy[j] * s;
		}
		return;
	}
	if (write && s == 1.0f) {
		half_store(dx, dt, dy, m);
		return;
	}
	if (write)
		memset(buf, 0, (size_t)m * sizeof(float));
	else
		half_load(buf, dx, dt, m);
	#pragma omp simd
	for (int64_t j = 0; j < m; j++)
		buf[j] += dy[j] * s;
	half_store(dx, dt, buf, m);
}

/* The operands of mask, laid out like out, in one pass over dy: dx_k =
 * (or +=) sign_k dy in dx_k's dtype. A gradient that both operands share
 * (a + a) gets (sign_0 + sign_1) dy, rounded once. */
static void addsub_grad_full(const struct fw_tensor *out, unsigned mask, const float *sign_k,
			     uint32_t overwrite)
{
	const struct fw_tensor *gy = out->grad;
	int64_t n = fw_nelem(out);
	float sign[2] = { sign_k[0], sign_k[1] };
	if (mask == 3u && out->src[0]->grad->data == out->src[1]->grad->data) {
		sign[0] += sign[1];
		mask = 1u;
	}

	#pragma omp parallel for schedule(static) if (n > PAR_MIN)
	for (int64_t i0 = 0; i0 < n; i0 += BLK) {
		float yb[BLK];
		int64_t m = min64(BLK, n - i0);
		const float *dy = yb;
		if (gy->dtype == FW_F32)
			dy = fw_f32(gy) + i0;
		else
			half_load(yb, elem_ptr(gy->data, gy->dtype, i0), gy->dtype, m);
		for (int k = 0; k < 2; k++) {
			const struct fw_tensor *gx = out->src[k]->grad;
			if (mask & (1u << k))
				grad_block(elem_ptr(gx->data, gx->dtype, i0), gx->dtype, dy, sign[k],
					   m, overwrite & (1u << k));
		}
	}
}

/* How operand k's gradient relates to dy (bin_grad's geometry, weighed by
 * the other operand when with_w), or -1 when no gradient flows there (a
 * parameter's gradient in a graph without backward: out has none). */
static int grad_kind(const struct fw_tensor *out, int k, bool with_w, struct bc *g)
{
	if (!out->grad || !out->src[k]->grad)
		return -1;
	bc_init(g, out, out->src[k], with_w ? out->src[1 - k] : NULL);
	return (int)bc_kind_of(g);
}

/* Bytes of the f32 copies through which a broadcast operand's gradient is
 * reduced when dy or that gradient is half: dy's (stage 0) and the
 * operand's (stage 1). */
static size_t addsub_stage_bytes(const struct fw_tensor *out, int stage)
{
	size_t need = 0;
	for (int k = 0; k < 2; k++) {
		struct bc g;
		int kind = grad_kind(out, k, false, &g);
		if (kind < 0 || kind == BC_FULL)
			continue;
		size_t bytes = stage == 0 ? half_copy_bytes(out->grad) :
			       half_copy_bytes(out->src[k]->grad);
		if (bytes > need)
			need = bytes;
	}
	return need;
}

/* A broadcast operand's gradient, a reduction of sign dy: bin_grad on f32
 * copies in the workspace of whichever of dy and dx is half. */
static void addsub_grad_reduced(struct fw_tensor *out, int k, const float *sign,
				const struct fw_exec *ex)
{
	struct fw_tensor *x = out->src[k], *gy = out->grad, *gx = x->grad;
	bool write = ex->grad_overwrite & (1u << k);
	if (gy->dtype == FW_F32 && gx->dtype == FW_F32) {
		bin_grad(out, x, NULL, &sign[k], ex, write);
		return;
	}
	struct fw_tensor gy32 = *gy, gx32 = *gx;
	char *p = ex->ws;
	if (is_half(gy->dtype)) {
		gy32.dtype = FW_F32;
		gy32.data = p;
		half_widen(gy32.data, gy->data, gy->dtype, fw_nelem(out));
	}
	p += addsub_stage_bytes(out, 0);
	if (is_half(gx->dtype)) {
		gx32.dtype = FW_F32;
		gx32.data = p;
	}
	p += addsub_stage_bytes(out, 1);
	struct fw_exec rest = *ex;
	rest.ws = p;
	rest.ws_size = ex->ws_size - (size_t)(p - (char *)ex->ws);
	out->grad = &gy32;
	x->grad = &gx32;
	bin_grad(out, x, NULL, &sign[k], &rest, write || gx32.data != gx->data);
	out->grad = gy;
	x->grad = gx;
	if (gx32.data == gx->data)
		return;
	if (write)
		half_store(gx->data, gx->dtype, gx32.data, fw_nelem(x));
	else
		half_accumulate(gx->data, gx->dtype, gx32.data, fw_nelem(x));
}

/* add and sub: da += dy, db += +-dy, each reduced to its operand's shape,
 * in the gradients' own dtypes (f32, bf16, f16). Operands laid out like
 * dy share one pass over it (a residual add writes both of its gradients
 * from one read). */
static void addsub_backward(struct fw_tensor *out, const struct fw_exec *ex, float sign_b)
{
	const float sign[2] = { 1.0f, sign_b };
	unsigned full = 0;
	for (int k = 0; k < 2; k++) {
		struct bc g;
		int kind = grad_kind(out, k, false, &g);
		if (kind == BC_FULL)
			full |= 1u << k;
		else if (kind >= 0)
			addsub_grad_reduced(out, k, sign, ex);
	}
	if (full)
		addsub_grad_full(out, full, sign, ex->grad_overwrite);
}

/* Bytes of scratch for the gradient of every row-vector operand with a
 * gradient (0 when too large: bin_grad then splits columns). with_w: the
 * other operand weighs the gradient (mul), as in bin_grad's geometry. */
static size_t bin_workspace(const struct fw_tensor *out, bool with_w)
{
	size_t need = 0;
	for (int k = 0; k < 2; k++) {
		struct bc g;
		if (grad_kind(out, k, with_w, &g) != BC_ROWVEC)
			continue;
		size_t bytes = (size_t)omp_get_max_threads() * rowvec_bytes(&g);
		if (bytes <= WS_MAX && bytes > need)
			need = bytes;
	}
	return need;
}

static size_t addsub_workspace(const struct fw_tensor *out)
{
	return addsub_stage_bytes(out, 0) + addsub_stage_bytes(out, 1) +
	       bin_workspace(out, false);
}

static size_t mul_workspace(const struct fw_tensor *out)
{
	size_t copy = 0;
	for (int k = 0; k < 2; k++)
		if (out->src[1 - k]->grad && half_copy_bytes(out->src[k]) > copy)
			copy = half_copy_bytes(out->src[k]);
	return copy + bin_workspace(out, true);
}

/* add and sub read no values in backward. */
static uint32_t saved_none(const struct fw_tensor *out)
{
	return 0;
}

/* Matches torch.add(a, b) with broadcasting. */
static enum fw_status add_infer(struct fw_tensor *out, struct fw_err *err)
{
	return bin_infer(out, err, "add");
}

static void add_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	bin_forward(out, BIN_ADD);
}

static void add_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	addsub_backward(out, ex, 1.0f);
}

const struct fw_op_i fw_op_add_i = {
	.size = sizeof(struct fw_op_i),
	.name = "add",
	.flags = FW_OPF_HALF | FW_OPF_HALF_GRAD | FW_OPF_GRAD_OVERWRITE,
	.infer = add_infer,
	.forward = add_forward,
	.backward = add_backward,
	.workspace = addsub_workspace,
	.saved = saved_none,
};

/* Matches torch.sub(a, b) with broadcasting. */
static enum fw_status sub_infer(struct fw_tensor *out, struct fw_err *err)
{
	return bin_infer(out, err, "sub");
}

static void sub_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	bin_forward(out, BIN_SUB);
}

static void sub_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	addsub_backward(out, ex, -1.0f);
}

const struct fw_op_i fw_op_sub_i = {
	.size = sizeof(struct fw_op_i),
	.name = "sub",
	.flags = FW_OPF_HALF | FW_OPF_HALF_GRAD | FW_OPF_GRAD_OVERWRITE,
	.infer = sub_infer,
	.forward = sub_forward,
	.backward = sub_backward,
	.workspace = addsub_workspace,
	.saved = saved_none,
};

/* Matches torch.mul(a, b) with broadcasting. */
static enum fw_status mul_infer(struct fw_tensor *out, struct fw_err *err)
{
	return bin_infer(out, err, "mul");
}

static void mul_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	bin_forward(out, BIN_MUL);
}

/* da += dy b, db += dy a, each reduced to its operand's shape. */
/* dx += dy w for x = src[k], w = src[1 - k]. */
static void mul_grad(struct fw_tensor *out, int k, const struct fw_exec *ex)
{
	const struct fw_tensor *x = out->src[k], *w = out->src[1 - k];
	size_t copy = half_copy_bytes(w);
	bool write = ex->grad_overwrite & (1u << k);
	if (!copy) {
		bin_grad(out, x, w, fw_f32(w), ex, write);
		return;
	}
	FW_ASSERT(ex->ws_size >= copy);
	fw_convert(ex->ws, FW_F32, w->data, w->dtype, fw_nelem(w));
	struct fw_exec rest = *ex;
	rest.ws = (char *)ex->ws + copy;
	rest.ws_size = ex->ws_size - copy;
	bin_grad(out, x, w, ex->ws, &rest, write);
}

static void mul_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	for (int k = 0; k < 2; k++)
		if (out->src[k]->grad)
			mul_grad(out, k, ex);
}

/* da needs b, db needs a. */
static uint32_t mul_saved(const struct fw_tensor *out)
{
	uint32_t m = 0;
	if (out->src[0]->grad)
		m |= 1u << 1;
	if (out->src[1]->grad)
		m |= 1u << 0;
	return m;
}

const struct fw_op_i fw_op_mul_i = {
	.size = sizeof(struct fw_op_i),
	.name = "mul",
	.flags = FW_OPF_HALF | FW_OPF_GRAD_OVERWRITE,
	.infer = mul_infer,
	.forward = mul_forward,
	.backward = mul_backward,
	.workspace = mul_workspace,
	.saved = mul_saved,
};

/* --- element-wise drivers: f32 in place, half through blocks ----------------------- */

/* Each element-wise op is a pair of row functions over n elements starting
 * at element i0: forward y = f(x), backward dx += dy f'(v) with v = x or y,
 * whichever saved() keeps. The drivers run them on the tensors directly when
 * those are f32, and otherwise on BLK-element f32 blocks converted from and
 * to bf16/f16 on the stack (computing in f32, as autocast's f32 ops do). */
typedef void (*fwd_row_fn)(const struct fw_tensor *out, const struct fw_exec *ex, float *y,
			   const float *x, int64_t i0, int64_t n);
typedef void (*bwd_row_fn)(const struct fw_tensor *out, const struct fw_exec *ex, float *dx,
			   const float *dy, const float *v, int64_t i0, int64_t n);

enum bwd_reads { READS_X, READS_Y, READS_NONE };

#define CHUNK 4096   /* elements per call on f32 data (a multiple of 16) */

static void unary_forward(struct fw_tensor *out, const struct fw_exec *ex, fwd_row_fn row)
{
	const struct fw_tensor *x = out->src[0];
	int64_t n = fw_nelem(out);

	if (x->dtype == FW_F32 && out->dtype == FW_F32) {
		const float *xp = fw_f32(x);
		float *yp = fw_f32(out);
		#pragma omp parallel for schedule(static) if (n > PAR_MIN)
		for (int64_t i0 = 0; i0 < n; i0 += CHUNK)
			row(out, ex, yp + i0, xp + i0, i0, min64(CHUNK, n - i0));
		return;
	}
	#pragma omp parallel for schedule(static) if (n > PAR_MIN)
	for (int64_t i0 = 0; i0 < n; i0 += BLK) {
		float xb[BLK], yb[BLK];
		int64_t m = min64(BLK, n - i0);
		half_load(xb, elem_ptr(x->data, x->dtype, i0), x->dtype, m);
		row(out, ex, yb, xb, i0, m);
		half_store(elem_ptr(out->data, out->dtype, i0), out->dtype, yb, m);
	}
}

static void unary_backward(struct fw_tensor *out, const struct fw_exec *ex, bwd_row_fn row,
			   enum bwd_reads reads)
{
	const struct fw_tensor *x = out->src[0];
	if (!x->grad)
		return;
	const struct fw_tensor *v = reads == READS_X ? x : reads == READS_Y ? out : NULL;
	const struct fw_tensor *gx = x->grad, *gy = out->grad;
	int64_t n = fw_nelem(out);
	bool write = ex->grad_overwrite & 1u;   /* dx not zeroed: zero each chunk in cache */

	if ((!v || v->dtype == FW_F32) && gx->dtype == FW_F32 && gy->dtype == FW_F32) {
		float *dx = fw_f32(gx);
		const float *dy = fw_f32(gy), *vp = v ? fw_f32(v) : NULL;
		#pragma omp parallel for schedule(static) if (n > PAR_MIN)
		for (int64_t i0 = 0; i0 < n; i0 += CHUNK) {
			int64_t m = min64(CHUNK, n - i0);
			if (write)
				memset(dx + i0, 0, (size_t)m * sizeof(float));
			row(out, ex, dx + i0, dy + i0, vp ? vp + i0 : NULL, i0, m);
		}
		return;
	}
	/* half values or gradients (autocast): dx's block read, added to and
	 * rounded back once */
	#pragma omp parallel for schedule(static) if (n > PAR_MIN)
	for (int64_t i0 = 0; i0 < n; i0 += BLK) {
		float vb[BLK], dyb[BLK], dxb[BLK];
		int64_t m = min64(BLK, n - i0);
		if (v)
			half_load(vb, elem_ptr(v->data, v->dtype, i0), v->dtype, m);
		half_load(dyb, elem_ptr(gy->data, gy->dtype, i0), gy->dtype, m);
		if (write)
			memset(dxb, 0, (size_t)m * sizeof(float));
		else
			half_load(dxb, elem_ptr(gx->data, gx->dtype, i0), gx->dtype, m);
		row(out, ex, dxb, dyb, v ? vb : NULL, i0, m);
		half_store(elem_ptr(gx->data, gx->dtype, i0), gx->dtype, dxb, m);
	}
}

/* Output like x: its shape, and its dtype when that is f32, bf16 or f16. */
static enum fw_status unary_infer(struct fw_tensor *out, struct fw_err *err, const char *op)
{
	const struct fw_tensor *x = out->src[0];
	if (x && is_half(x->dtype)) {
		copy_shape(out, x);
		out->dtype = x->dtype;
		return FW_OK;
	}
	enum fw_status st = check_f32(op, "x", x, err);
	if (st != FW_OK)
		return st;
	copy_shape(out, x);
	return FW_OK;
}

static uint32_t saved_x(const struct fw_tensor *out)
{
	return 1u << 0;
}

static uint32_t saved_y(const struct fw_tensor *out)
{
	return FW_SAVE_OUT;
}

/* --- scale ----------------------------------------------------------------------- */

/* Matches x * s for a Python float s. */
static enum fw_status scale_infer(struct fw_tensor *out, struct fw_err *err)
{
	if (!isfinite(out->params[0].f))
		return fw_errorf(err, FW_ERR_INVALID, "scale: factor %g is not finite",
				 (double)out->params[0].f);
	return unary_infer(out, err, "scale");
}

static void scale_row(const struct fw_tensor *out, const struct fw_exec *ex, float *y,
		      const float *x, int64_t i0, int64_t n)
{
	float s = out->params[0].f;
	#pragma omp simd
	for (int64_t i = 0; i < n; i++)
		y[i] = x[i] * s;
}

static void scale_grad_row(const struct fw_tensor *out, const struct fw_exec *ex, float *dx,
			   const float *dy, const float *v, int64_t i0, int64_t n)
{
	float s = out->params[0].f;
	#pragma omp simd
	for (int64_t i = 0; i < n; i++)
		dx[i] += dy[i] * s;
}

static void scale_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	unary_forward(out, ex, scale_row);
}

static void scale_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	unary_backward(out, ex, scale_grad_row, READS_NONE);
}

const struct fw_op_i fw_op_scale_i = {
	.size = sizeof(struct fw_op_i),
	.name = "scale",
	.flags = FW_OPF_HALF | FW_OPF_HALF_GRAD | FW_OPF_GRAD_OVERWRITE,
	.infer = scale_infer,
	.forward = scale_forward,
	.backward = scale_backward,
	.saved = saved_none,
};

/* --- activations ------------------------------------------------------------------ */

/* gelu: matches torch.nn.functional.gelu(x, approximate='none' | 'tanh'). */
#define GELU_BETA 0.7978845608028654f      /* sqrt(2 / pi) */
#define GELU_KAPPA 0.044715f
#define GELU_PDF 0.3989422804014327f       /* 1 / sqrt(2 pi) */
#define GELU_SQRT1_2 0.7071067811865476f   /* 1 / sqrt(2) */
/* The tanh form as x sigmoid(2u), u = beta (x + kappa x^3): one exp, no
 * cancellation in 1 + tanh(u) for x << 0. */
#define GELU_2BETA 1.5957691216057308f      /* 2 beta */
#define GELU_2BETA_KAPPA 0.0713548162726003f /* 2 beta kappa */
#define GELU_6BETA_KAPPA 0.2140644488178008f /* 6 beta kappa */

static enum fw_status gelu_infer(struct fw_tensor *out, struct fw_err *err)
{
	int form = out->params[0].i;
	if (form != FW_GELU_ERF && form != FW_GELU_TANH)
		return fw_errorf(err, FW_ERR_INVALID,
				 "gelu: form %d is neither FW_GELU_ERF (0) nor FW_GELU_TANH (1)",
				 form);
	return unary_infer(out, err, "gelu");
}

/* GELU and its derivative at one x; inlined into each loop below. */
static inline __attribute__((always_inline)) float gelu_value(int form, float x)
{
	if (form == FW_GELU_TANH)
		return x * vsigmoid(x * (GELU_2BETA + GELU_2BETA_KAPPA * (x * x)));
	return x * 0.5f * (1.0f + verf(x * GELU_SQRT1_2));
}

/* erf form: d/dx = Phi(x) + x phi(x); tanh form (ATen's GeluBackward,
 * 0.5 (1 + t) + 0.5 x (1 - t^2) beta (1 + 3 kappa x^2) with t = tanh(u)):
 * s + s (1 - s) x 2 beta (1 + 3 kappa x^2) with s = sigmoid(2u). */
static inline __attribute__((always_inline)) float gelu_slope(int form, float x)
{
	float x2 = x * x;
	if (form == FW_GELU_TANH) {
		float s = vsigmoid(x * (GELU_2BETA + GELU_2BETA_KAPPA * x2));
		return s + s * (1.0f - s) * (x * (GELU_2BETA + GELU_6BETA_KAPPA * x2));
	}
	float cdf = 0.5f * (1.0f + verf(x * GELU_SQRT1_2));
	return cdf + x * (GELU_PDF * vexp_neg(-0.5f * x2));
}

/* The loops, inlined into a copy per ISA below: on f32 blocks, and on bf16
 * tensors directly (no f32 block between; the rounding is bf16_round's,
 * nearest even, as half_store's). A loop per form, so each vectorises. */
static inline __attribute__((always_inline)) void
gelu_rows(int form, float *y, const float *xs, int64_t n)
{
	if (form == FW_GELU_TANH) {
		#pragma omp simd
		for (int64_t i = 0; i < n; i++)
			y[i] = gelu_value(FW_GELU_TANH, xs[i]);
	} else {
		#pragma omp simd
		for (int64_t i = 0; i < n; i++)
			y[i] = gelu_value(FW_GELU_ERF, xs[i]);
	}
}

static inline __attribute__((always_inline)) void
gelu_grad_rows(int form, float *dx, const float *dy, const float *xs, int64_t n)
{
	if (form == FW_GELU_TANH) {
		#pragma omp simd
		for (int64_t i = 0; i < n; i++)
			dx[i] += dy[i] * gelu_slope(FW_GELU_TANH, xs[i]);
	} else {
		#pragma omp simd
		for (int64_t i = 0; i < n; i++)
			dx[i] += dy[i] * gelu_slope(FW_GELU_ERF, xs[i]);
	}
}

static inline __attribute__((always_inline)) void
gelu_rows_bf16(int form, uint16_t *y, const uint16_t *xs, int64_t n)
{
	if (form == FW_GELU_TANH) {
		#pragma omp simd
		for (int64_t i = 0; i < n; i++)
			y[i] = bf16_round(gelu_value(FW_GELU_TANH, bf16_value(xs[i])));
	} else {
		#pragma omp simd
		for (int64_t i = 0; i < n; i++)
			y[i] = bf16_round(gelu_value(FW_GELU_ERF, bf16_value(xs[i])));
	}
}

/* dx = dy gelu'(x), or dx + dy gelu'(x) when add, rounded once, all bf16;
 * form and add are constants where it is inlined (one loop each). */
static inline __attribute__((always_inline)) void
gelu_grad_loop_bf16(int form, bool add, uint16_t *dx, const uint16_t *dy, const uint16_t *xs,
		    int64_t n)
{
	#pragma omp simd
	for (int64_t i = 0; i < n; i++) {
		float d = bf16_value(dy[i]) * gelu_slope(form, bf16_value(xs[i]));
		dx[i] = bf16_round(add ? bf16_value(dx[i]) + d : d);
	}
}

static inline __attribute__((always_inline)) void
gelu_grad_rows_bf16(int form, uint16_t *dx, const uint16_t *dy, const uint16_t *xs,
		    int64_t n, bool write)
{
	if (form == FW_GELU_TANH && write)
		gelu_grad_loop_bf16(FW_GELU_TANH, false, dx, dy, xs, n);
	else if (form == FW_GELU_TANH)
		gelu_grad_loop_bf16(FW_GELU_TANH, true, dx, dy, xs, n);
	else if (write)
		gelu_grad_loop_bf16(FW_GELU_ERF, false, dx, dy, xs, n);
	else
		gelu_grad_loop_bf16(FW_GELU_ERF, true, dx, dy, xs, n);
}

/* The row functions of the drivers, in the build's ISA and in AVX-512. */
#define GELU_ROWS(SUFFIX, TARGET)							\
static TARGET void gelu_row##SUFFIX(const struct fw_tensor *out, const struct fw_exec *ex,	\
				    float *y, const float *xs, int64_t i0, int64_t n)		\
{											\
	gelu_rows(out->params[0].i, y, xs, n);						\
}											\
static TARGET void gelu_grad_row##SUFFIX(const struct fw_tensor *out,			\
					 const struct fw_exec *ex, float *dx,		\
					 const float *dy, const float *xs, int64_t i0,	\
					 int64_t n)						\
{											\
	gelu_grad_rows(out->params[0].i, dx, dy, xs, n);				\
}

GELU_ROWS(, )
#if FW_HAVE_AVX512_KERNELS
/* The same loops in AVX-512: 1.3-1.7x the build's AVX2 on Zen 4 (one core,
 * bench numbers in bench/README.md). */
GELU_ROWS(_avx512, FW_TARGET_AVX512)

/* bf16 in and out, AVX-512 only: the loops over [i0, i0 + n) of the tensors
 * themselves, 10-20% faster there than through f32 blocks (the build's AVX2
 * copy was no faster that way: bench/README.md, "eltfuse"). */
static FW_TARGET_AVX512 void gelu_bf16_avx512(const struct fw_tensor *out, int64_t i0,
					      int64_t n)
{
	gelu_rows_bf16(out->params[0].i, (uint16_t *)out->data + i0,
		       (const uint16_t *)out->src[0]->data + i0, n);
}

static FW_TARGET_AVX512 void gelu_grad_bf16_avx512(const struct fw_tensor *out, int64_t i0,
						   int64_t n, bool write)
{
	gelu_grad_rows_bf16(out->params[0].i, (uint16_t *)out->src[0]->grad->data + i0,
			    (const uint16_t *)out->grad->data + i0,
			    (const uint16_t *)out->src[0]->data + i0, n, write);
}
#endif

typedef void (*gelu_bf16_fn)(const struct fw_tensor *out, int64_t i0, int64_t n);
typedef void (*gelu_grad_bf16_fn)(const struct fw_tensor *out, int64_t i0, int64_t n,
				  bool write);

/* bf16 in and out: the loops on the tensors, CHUNK elements a call. */
static bool gelu_all_bf16(const struct fw_tensor *out, bool grads)
{
	const struct fw_tensor *x = out->src[0];
	return x->dtype == FW_BF16 && out->dtype == FW_BF16 &&
	       (!grads || (out->grad->dtype == FW_BF16 && x->grad->dtype == FW_BF16));
}

static void gelu_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	fwd_row_fn row = gelu_row;
	gelu_bf16_fn bf = NULL;
#if FW_HAVE_AVX512_KERNELS
	if (fw_kernel_avx512()) {
		row = gelu_row_avx512;
		bf = gelu_bf16_avx512;
	}
#endif
	int64_t n = fw_nelem(out);
	if (!bf || !gelu_all_bf16(out, false)) {
		unary_forward(out, ex, row);
		return;
	}
	#pragma omp parallel for schedule(static) if (n > PAR_MIN)
	for (int64_t i0 = 0; i0 < n; i0 += CHUNK)
		bf(out, i0, min64(CHUNK, n - i0));
}

static void gelu_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	bwd_row_fn row = gelu_grad_row;
	gelu_grad_bf16_fn bf = NULL;
#if FW_HAVE_AVX512_KERNELS
	if (fw_kernel_avx512()) {
		row = gelu_grad_row_avx512;
		bf = gelu_grad_bf16_avx512;
	}
#endif
	int64_t n = fw_nelem(out);
	bool write = ex->grad_overwrite & 1u;
	if (!out->src[0]->grad)
		return;
	if (!bf || !gelu_all_bf16(out, true)) {
		unary_backward(out, ex, row, READS_X);
		return;
	}
	#pragma omp parallel for schedule(static) if (n > PAR_MIN)
	for (int64_t i0 = 0; i0 < n; i0 += CHUNK)
		bf(out, i0, min64(CHUNK, n - i0), write);
}

const struct fw_op_i fw_op_gelu_i = {
	.size = sizeof(struct fw_op_i),
	.name = "gelu",
	.flags = FW_OPF_HALF | FW_OPF_HALF_GRAD | FW_OPF_REMAT | FW_OPF_GRAD_OVERWRITE,
	.infer = gelu_infer,
	.forward = gelu_forward,
	.backward = gelu_backward,
	.saved = saved_x,
};

/* relu: matches torch.relu (NaN stays NaN; the gradient passes where y > 0
 * or y is NaN, as threshold_backward does). */
static enum fw_status relu_infer(struct fw_tensor *out, struct fw_err *err)
{
	return unary_infer(out, err, "relu");
}

static void relu_row(const struct fw_tensor *out, const struct fw_exec *ex, float *y,
		     const float *x, int64_t i0, int64_t n)
{
	#pragma omp simd
	for (int64_t i = 0; i < n; i++)
		y[i] = x[i] < 0.0f ? 0.0f : x[i];
}

static void relu_grad_row(const struct fw_tensor *out, const struct fw_exec *ex, float *dx,
			  const float *dy, const float *y, int64_t i0, int64_t n)
{
	#pragma omp simd
	for (int64_t i = 0; i < n; i++)
		dx[i] += y[i] <= 0.0f ? 0.0f : dy[i];
}

static void relu_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	unary_forward(out, ex, relu_row);
}

static void relu_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	unary_backward(out, ex, relu_grad_row, READS_Y);
}

const struct fw_op_i fw_op_relu_i = {
	.size = sizeof(struct fw_op_i),
	.name = "relu",
	.flags = FW_OPF_HALF | FW_OPF_HALF_GRAD | FW_OPF_GRAD_OVERWRITE,
	.infer = relu_infer,
	.forward = relu_forward,
	.backward = relu_backward,
	.saved = saved_y,
};

/* silu: matches torch.nn.functional.silu, x sigmoid(x). */
static enum fw_status silu_infer(struct fw_tensor *out, struct fw_err *err)
{
	return unary_infer(out, err, "silu");
}

static void silu_row(const struct fw_tensor *out, const struct fw_exec *ex, float *y,
		     const float *x, int64_t i0, int64_t n)
{
	#pragma omp simd
	for (int64_t i = 0; i < n; i++)
		y[i] = x[i] * vsigmoid(x[i]);
}

/* d/dx = s (1 + x (1 - s)), s = sigmoid(x). */
static void silu_grad_row(const struct fw_tensor *out, const struct fw_exec *ex, float *dx,
			  const float *dy, const float *xs, int64_t i0, int64_t n)
{
	#pragma omp simd
	for (int64_t i = 0; i < n; i++) {
		float x = xs[i], s = vsigmoid(x);
		dx[i] += dy[i] * (s * (1.0f + x * (1.0f - s)));
	}
}

static void silu_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	unary_forward(out, ex, silu_row);
}

static void silu_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	unary_backward(out, ex, silu_grad_row, READS_X);
}

const struct fw_op_i fw_op_silu_i = {
	.size = sizeof(struct fw_op_i),
	.name = "silu",
	.flags = FW_OPF_HALF | FW_OPF_HALF_GRAD | FW_OPF_REMAT | FW_OPF_GRAD_OVERWRITE,
	.infer = silu_infer,
	.forward = silu_forward,
	.backward = silu_backward,
	.saved = saved_x,
};

/* tanh: matches torch.tanh. */
static enum fw_status tanh_infer(struct fw_tensor *out, struct fw_err *err)
{
	return unary_infer(out, err, "tanh");
}

static void tanh_row(const struct fw_tensor *out, const struct fw_exec *ex, float *y,
		     const float *x, int64_t i0, int64_t n)
{
	#pragma omp simd
	for (int64_t i = 0; i < n; i++)
		y[i] = vtanh(x[i]);
}

/* d/dx = 1 - y^2. */
static void tanh_grad_row(const struct fw_tensor *out, const struct fw_exec *ex, float *dx,
			  const float *dy, const float *y, int64_t i0, int64_t n)
{
	#pragma omp simd
	for (int64_t i = 0; i < n; i++)
		dx[i] += dy[i] * (1.0f - y[i] * y[i]);
}

static void tanh_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	unary_forward(out, ex, tanh_row);
}

static void tanh_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	unary_backward(out, ex, tanh_grad_row, READS_Y);
}

const struct fw_op_i fw_op_tanh_i = {
	.size = sizeof(struct fw_op_i),
	.name = "tanh",
	.flags = FW_OPF_HALF | FW_OPF_HALF_GRAD | FW_OPF_GRAD_OVERWRITE,
	.infer = tanh_infer,
	.forward = tanh_forward,
	.backward = tanh_backward,
	.saved = saved_y,
};

/* sigmoid: matches torch.sigmoid. */
static enum fw_status sigmoid_infer(struct fw_tensor *out, struct fw_err *err)
{
	return unary_infer(out, err, "sigmoid");
}

static void sigmoid_row(const struct fw_tensor *out, const struct fw_exec *ex, float *y,
			const float *x, int64_t i0, int64_t n)
{
	#pragma omp simd
	for (int64_t i = 0; i < n; i++)
		y[i] = vsigmoid(x[i]);
}

/* d/dx = (1 - y) y. */
static void sigmoid_grad_row(const struct fw_tensor *out, const struct fw_exec *ex, float *dx,
			     const float *dy, const float *y, int64_t i0, int64_t n)
{
	#pragma omp simd
	for (int64_t i = 0; i < n; i++)
		dx[i] += dy[i] * (1.0f - y[i]) * y[i];
}

static void sigmoid_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	unary_forward(out, ex, sigmoid_row);
}

static void sigmoid_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	unary_backward(out, ex, sigmoid_grad_row, READS_Y);
}

const struct fw_op_i fw_op_sigmoid_i = {
	.size = sizeof(struct fw_op_i),
	.name = "sigmoid",
	.flags = FW_OPF_HALF | FW_OPF_HALF_GRAD | FW_OPF_GRAD_OVERWRITE,
	.infer = sigmoid_infer,
	.forward = sigmoid_forward,
	.backward = sigmoid_backward,
	.saved = saved_y,
};

/* --- dropout ------------------------------------------------------------------------ */

/* Inverted dropout, like torch.nn.functional.dropout(x, p, training): kept
 * elements are scaled by 1/(1 - p). The mask is not drawn from torch's RNG:
 * element i is kept iff fw_rng_u32(key, i) >= p 2^32, where the key hashes
 * (seed, graph step, node id). It depends on nothing else, so any thread
 * count, a recomputed segment and backward all see the same mask, and
 * backward needs no stored mask. */
static enum fw_status dropout_infer(struct fw_tensor *out, struct fw_err *err)
{
	float p = out->params[0].f;
	if (!(p >= 0.0f && p < 1.0f))
		return fw_errorf(err, FW_ERR_INVALID, "dropout: p %g is not in [0, 1)",
				 (double)p);
	return unary_infer(out, err, "dropout");
}

/* splitmix64 (Steele et al.): increment, then the finaliser. */
static uint64_t mix64(uint64_t z)
{
	z += 0x9E3779B97F4A7C15ull;
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

/* key = mix(mix(mix(seed) ^ step) ^ id): each input goes through a full
 * avalanche, so neighbouring steps or nodes give unrelated masks. */
static uint64_t dropout_key(const struct fw_tensor *out, const struct fw_exec *ex)
{
	uint64_t seed = (uint64_t)(uint32_t)out->params[1].i |
			(uint64_t)(uint32_t)out->params[2].i << 32;
	return mix64(mix64(mix64(seed) ^ (uint64_t)ex->step) ^ (uint64_t)(uint32_t)out->id);
}

static bool dropout_active(const struct fw_tensor *out, const struct fw_exec *ex)
{
	return ex->training && out->params[0].f > 0.0f;
}

/* Kept iff r >= thr; thr = p 2^32 rounded down, at most 2^32 - 1. */
static uint32_t dropout_threshold(float p)
{
	double t = (double)p * 4294967296.0;
	return t >= 4294967295.0 ? UINT32_MAX : (uint32_t)t;
}

static float dropout_scale(float p)
{
	return (float)(1.0 / (1.0 - (double)p));
}

/* y = kept(i) ? x s : 0 (dx += the same of dy); a copy when inactive. */
static void dropout_row(const struct fw_tensor *out, const struct fw_exec *ex, float *y,
			const float *x, int64_t i0, int64_t n)
{
	float p = out->params[0].f;
	if (!dropout_active(out, ex)) {
		memcpy(y, x, (size_t)n * sizeof(float));
		return;
	}
	uint64_t key = dropout_key(out, ex);
	uint32_t thr = dropout_threshold(p);
	float s = dropout_scale(p);
	#pragma omp simd
	for (int64_t i = 0; i < n; i++)
		y[i] = fw_rng_u32(key, (uint64_t)(i0 + i)) >= thr ? x[i] * s : 0.0f;
}

static void dropout_grad_row(const struct fw_tensor *out, const struct fw_exec *ex, float *dx,
			     const float *dy, const float *v, int64_t i0, int64_t n)
{
	float p = out->params[0].f;
	if (!dropout_active(out, ex)) {
		#pragma omp simd
		for (int64_t i = 0; i < n; i++)
			dx[i] += dy[i];
		return;
	}
	uint64_t key = dropout_key(out, ex);
	uint32_t thr = dropout_threshold(p);
	float s = dropout_scale(p);
	#pragma omp simd
	for (int64_t i = 0; i < n; i++)
		dx[i] += fw_rng_u32(key, (uint64_t)(i0 + i)) >= thr ? dy[i] * s : 0.0f;
}

static void dropout_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	unary_forward(out, ex, dropout_row);
}

static void dropout_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	unary_backward(out, ex, dropout_grad_row, READS_NONE);
}

const struct fw_op_i fw_op_dropout_i = {
	.size = sizeof(struct fw_op_i),
	.name = "dropout",
	.flags = FW_OPF_HALF | FW_OPF_HALF_GRAD | FW_OPF_GRAD_OVERWRITE,
	.infer = dropout_infer,
	.forward = dropout_forward,
	.backward = dropout_backward,
	.saved = saved_none,
};
