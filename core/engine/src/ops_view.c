/* ops_view.c - reshape, permute and slice views, the contiguous copy and
 * concat.
 *
 * A view shares its source's memory: forward only sets its data pointer.
 * Gradients are always contiguous in the view's own shape; reshape's gradient
 * aliases its source's gradient (the planner arranges it: both are in the same
 * row-major element order whatever the source's strides), permute and slice
 * scatter theirs back with a strided add.
 */
#include <string.h>

#include "half.h"
#include "internal.h"

/* Calls fn(dst_off, src_off) over a 4-D index space of shape ne, with
 * element strides da (destination) and sa (source). */
struct walk {
	int64_t ne[FW_MAX_DIMS], da[FW_MAX_DIMS], sa[FW_MAX_DIMS];
};

static struct walk walk_of(const struct fw_tensor *shape, const int64_t *dst_nb,
			   const int64_t *src_nb)
{
	struct walk w;
	int off = FW_MAX_DIMS - shape->ndim;
	for (int i = 0; i < FW_MAX_DIMS; i++) {
		bool real = i >= off;
		w.ne[i] = real ? shape->ne[i - off] : 1;
		w.da[i] = real ? dst_nb[i - off] : 0;
		w.sa[i] = real ? src_nb[i - off] : 0;
	}
	return w;
}

/* Element offsets of outer row o (a row is the last dim) in dst and src. */
static inline void walk_row(const struct walk *w, int64_t o, int64_t *d, int64_t *s)
{
	int64_t i0 = o / (w->ne[1] * w->ne[2]);
	int64_t i1 = (o / w->ne[2]) % w->ne[1];
	int64_t i2 = o % w->ne[2];
	*d = i0 * w->da[0] + i1 * w->da[1] + i2 * w->da[2];
	*s = i0 * w->sa[0] + i1 * w->sa[1] + i2 * w->sa[2];
}

/* dst[d] (+)= src[s] for f32 data. */
static void walk_f32(const struct walk *w, float *dst, const float *src, bool add)
{
	int64_t outer = w->ne[0] * w->ne[1] * w->ne[2];
	#pragma omp parallel for schedule(static) if (outer * w->ne[3] > 32768)
	for (int64_t o = 0; o < outer; o++) {
		int64_t od, os;
		walk_row(w, o, &od, &os);
		float *d = dst + od;
		const float *s = src + os;
		int64_t dd = w->da[3], ss = w->sa[3];
		if (dd == 1 && ss == 1 && !add) {       /* contiguous rows */
			memcpy(d, s, sizeof(float) * (size_t)w->ne[3]);
		} else if (dd == 1 && ss == 1) {
			#pragma omp simd
			for (int64_t i = 0; i < w->ne[3]; i++)
				d[i] += s[i];
		} else if (add) {
			for (int64_t i = 0; i < w->ne[3]; i++)
				d[i * dd] += s[i * ss];
		} else {
			for (int64_t i = 0; i < w->ne[3]; i++)
				d[i * dd] = s[i * ss];
		}
	}
}

/* dst[d] (+)= src[s] where either is bf16/f16 (half gradients under
 * autocast): each sum in f32, rounded once. */
static void walk_add_half(const struct walk *w, void *dst, enum fw_dtype dd, const void *src,
			  enum fw_dtype sd, bool add)
{
	int64_t outer = w->ne[0] * w->ne[1] * w->ne[2];
	#pragma omp parallel for schedule(static) if (outer * w->ne[3] > 32768)
	for (int64_t o = 0; o < outer; o++) {
		int64_t d, s;
		walk_row(w, o, &d, &s);
		if (w->da[3] == 1 && w->sa[3] == 1) {     /* rows: blocks of f32 */
			for (int64_t j0 = 0; j0 < w->ne[3]; j0 += BLK) {
				float db[BLK], sb[BLK];
				int64_t m = min64(BLK, w->ne[3] - j0);
				if (add) {
					half_load(db, elem_ptr(dst, dd, d + j0), dd, m);
					half_load(sb, elem_ptr(src, sd, s + j0), sd, m);
					#pragma omp simd
					for (int64_t j = 0; j < m; j++)
						db[j] += sb[j];
				} else {        /* a copy (-0 stays -0) */
					half_load(db, elem_ptr(src, sd, s + j0), sd, m);
				}
				half_store(elem_ptr(dst, dd, d + j0), dd, db, m);
			}
			continue;
		}
		for (int64_t i = 0; i < w->ne[3]; i++) {
			float v = half_get(src, sd, s + i * w->sa[3]);
			if (add)
				v += half_get(dst, dd, d + i * w->da[3]);
			half_store(elem_ptr(dst, dd, d + i * w->da[3]), dd, &v, 1);
		}
	}
}

/* dst[d] += src[s] (or = when !add) for gradients of any float dtype. */
static void walk_add(const struct walk *w, void *dst, enum fw_dtype dd, const void *src,
		     enum fw_dtype sd, bool add)
{
	if (dd == FW_F32 && sd == FW_F32)
		walk_f32(w, dst, src, add);
	else
		walk_add_half(w, dst, dd, src, sd, add);
}

/* Byte copy for any element size (cont of bf16/i32 views). */
static void walk_bytes(const struct walk *w, char *dst, const char *src, size_t es)
{
	int64_t outer = w->ne[0] * w->ne[1] * w->ne[2];
	#pragma omp parallel for schedule(static) if (outer * w->ne[3] > 32768)
	for (int64_t o = 0; o < outer; o++) {
		int64_t od, os;
		walk_row(w, o, &od, &os);
		char *d = dst + od * es;
		const char *s = src + os * es;
		if (w->da[3] == 1 && w->sa[3] == 1) {     /* contiguous rows */
			memcpy(d, s, (size_t)w->ne[3] * es);
			continue;
		}
		if (es == 2) {          /* bf16/f16 activations under autocast */
			uint16_t *d2 = (uint16_t *)(void *)d;
			const uint16_t *s2 = (const uint16_t *)(const void *)s;
			for (int64_t i = 0; i < w->ne[3]; i++)
				d2[i * w->da[3]] = s2[i * w->sa[3]];
			continue;
		}
		for (int64_t i = 0; i < w->ne[3]; i++)
			memcpy(d + i * w->da[3] * es, s + i * w->sa[3] * es, es);
	}
}

static void contiguous_strides(const struct fw_tensor *t, int64_t *nb)
{
	int64_t s = 1;
	for (int i = t->ndim - 1; i >= 0; i--) {
		nb[i] = s;
		s *= t->ne[i];
	}
}

static void view_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	const struct fw_tensor *src = out->src[0];
	out->data = (char *)src->data + out->view_offset * (int64_t)fw_dtype_size(src->dtype);
}

/* --- reshape --------------------------------------------------------------- */

/* Strides nb of x's elements, in row-major order, viewed as shape ne (nd
 * dims), as torch's view computes them: each run of x's dims that is
 * contiguous in memory may be split or merged freely. False when the shape
 * cuts across two runs (then only a copy has it). */
bool fw_view_strides(const struct fw_tensor *x, int nd, const int64_t *ne, int64_t *nb)
{
	int vd = nd - 1;
	int64_t base = x->nb[x->ndim - 1], run = 1, view = 1;
	for (int d = x->ndim - 1; d >= 0; d--) {
		run *= x->ne[d];
		if (d > 0 && (x->ne[d - 1] == 1 || x->nb[d - 1] == run * base))
			continue;                   /* the run goes on */
		while (vd >= 0 && (view < run || ne[vd] == 1)) {
			nb[vd] = view * base;
			view *= ne[vd--];
		}
		if (view != run)
			return false;
		if (d > 0) {
			base = x->nb[d - 1];
			run = view = 1;
		}
	}
	return vd < 0;
}

static enum fw_status reshape_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *x = out->src[0];
	int nd = out->params[0].i, infer_at = -1;
	int64_t known = 1, n = fw_nelem(x);
	char sx[64];

	if (x->dtype == FW_Q4)
		return fw_errorf(err, FW_ERR_UNSUPPORTED, "reshape: q4 tensors cannot be reshaped");
	for (int i = 0; i < nd; i++) {
		int64_t d = out->params[1 + i].i;
		if (d == -1) {
			if (infer_at >= 0)
				return fw_errorf(err, FW_ERR_SHAPE, "reshape: more than one -1");
			infer_at = i;
		} else {
			known *= d;
		}
		out->ne[i] = d;
	}
	if (infer_at >= 0) {
		if (n % known)
			return fw_errorf(err, FW_ERR_SHAPE, "reshape: %s cannot take a shape with %lld-element rows",
					 fw_shape_str(x, sx, sizeof(sx)), (long long)known);
		out->ne[infer_at] = n / known;
		known *= out->ne[infer_at];
	}
	if (known != n)
		return fw_errorf(err, FW_ERR_SHAPE, "reshape: %s has %lld elements, new shape has %lld",
				 fw_shape_str(x, sx, sizeof(sx)), (long long)n, (long long)known);
	out->ndim = nd;
	out->dtype = x->dtype;
	out->view_offset = 0;
	if (!fw_view_strides(x, nd, out->ne, out->nb))
		return fw_errorf(err, FW_ERR_SHAPE, "reshape: %s's strides allow no view of "
				 "this shape", fw_shape_str(x, sx, sizeof(sx)));
	return FW_OK;
}

/* The reshape gradient shares its source's gradient buffer: nothing to do. */
static void reshape_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
}

static uint32_t no_saved(const struct fw_tensor *out)
{
	return 0;
}

const struct fw_op_i fw_op_reshape_i = {
	.size = sizeof(struct fw_op_i),
	.name = "reshape",
	.flags = FW_OPF_VIEW | FW_OPF_STRIDED | FW_OPF_HALF | FW_OPF_HALF_GRAD,
	.infer = reshape_infer,
	.forward = view_forward,
	.backward = reshape_backward,
	.saved = no_saved,
};

/* --- permute --------------------------------------------------------------- */

static enum fw_status permute_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *x = out->src[0];
	bool seen[FW_MAX_DIMS] = { false };

	if (x->dtype == FW_Q4)
		return fw_errorf(err, FW_ERR_UNSUPPORTED, "permute: q4 tensors cannot be permuted");
	for (int i = 0; i < x->ndim; i++) {
		int p = out->params[i].i;
		if (p < 0 || p >= x->ndim || seen[p])
			return fw_errorf(err, FW_ERR_SHAPE,
					 "permute: not a permutation of %d dims", x->ndim);
		seen[p] = true;
		out->ne[i] = x->ne[p];
		out->nb[i] = x->nb[p];
	}
	out->ndim = x->ndim;
	out->dtype = x->dtype;
	out->view_offset = 0;
	return FW_OK;
}

/* x->grad (contiguous, x's shape) += permuted-back out->grad; = when the
 * graph did not zero it (fw_exec.grad_overwrite): a permutation covers it. */
static void permute_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	const struct fw_tensor *x = out->src[0];
	int64_t xs[FW_MAX_DIMS], dst[FW_MAX_DIMS], srcs[FW_MAX_DIMS];
	contiguous_strides(x, xs);
	contiguous_strides(out, srcs);
	for (int i = 0; i < out->ndim; i++)
		dst[i] = xs[out->params[i].i];
	struct walk w = walk_of(out, dst, srcs);
	walk_add(&w, x->grad->data, x->grad->dtype, out->grad->data, out->grad->dtype,
		 !(ex->grad_overwrite & 1u));
}

const struct fw_op_i fw_op_permute_i = {
	.size = sizeof(struct fw_op_i),
	.name = "permute",
	.flags = FW_OPF_VIEW | FW_OPF_STRIDED | FW_OPF_HALF | FW_OPF_HALF_GRAD |
		 FW_OPF_GRAD_OVERWRITE,
	.infer = permute_infer,
	.forward = view_forward,
	.backward = permute_backward,
	.saved = no_saved,
};

/* --- slice ----------------------------------------------------------------- */

static enum fw_status slice_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *x = out->src[0];
	int axis = out->params[0].i;
	int64_t start = out->params[1].i, len = out->params[2].i;
	char sx[64];

	if (axis < 0)
		axis += x->ndim;
	if (axis < 0 || axis >= x->ndim)
		return fw_errorf(err, FW_ERR_SHAPE, "slice: axis %d out of range for %s",
				 out->params[0].i, fw_shape_str(x, sx, sizeof(sx)));
	if (start < 0 || len < 1 || start + len > x->ne[axis])
		return fw_errorf(err, FW_ERR_SHAPE,
				 "slice: [%lld, %lld) out of range on axis %d of %s",
				 (long long)start, (long long)(start + len), axis,
				 fw_shape_str(x, sx, sizeof(sx)));
	if (x->dtype == FW_Q4)
		return fw_errorf(err, FW_ERR_UNSUPPORTED, "slice: q4 tensors cannot be sliced");
	out->params[0].i = axis;
	out->ndim = x->ndim;
	out->dtype = x->dtype;
	for (int i = 0; i < x->ndim; i++) {
		out->ne[i] = x->ne[i];
		out->nb[i] = x->nb[i];
	}
	out->ne[axis] = len;
	out->view_offset = start * x->nb[axis];
	return FW_OK;
}

static void slice_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	const struct fw_tensor *x = out->src[0];
	int axis = out->params[0].i;
	int64_t xs[FW_MAX_DIMS], gs[FW_MAX_DIMS];
	contiguous_strides(x, xs);
	contiguous_strides(out, gs);
	struct walk w = walk_of(out, xs, gs);
	void *dst = elem_ptr(x->grad->data, x->grad->dtype, out->params[1].i * xs[axis]);
	walk_add(&w, dst, x->grad->dtype, out->grad->data, out->grad->dtype, true);
}

const struct fw_op_i fw_op_slice_i = {
	.size = sizeof(struct fw_op_i),
	.name = "slice",
	.flags = FW_OPF_VIEW | FW_OPF_STRIDED | FW_OPF_HALF | FW_OPF_HALF_GRAD,
	.infer = slice_infer,
	.forward = view_forward,
	.backward = slice_backward,
	.saved = no_saved,
};

/* --- cont: contiguous copy of a strided tensor -------------------------------- */

static enum fw_status cont_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *x = out->src[0];
	if (x->dtype == FW_Q4)
		return fw_errorf(err, FW_ERR_UNSUPPORTED, "cont: q4 tensors cannot be copied");
	out->ndim = x->ndim;
	out->dtype = x->dtype;
	for (int i = 0; i < x->ndim; i++)
		out->ne[i] = x->ne[i];
	return FW_OK;
}

static void cont_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	const struct fw_tensor *x = out->src[0];
	int64_t os[FW_MAX_DIMS];
	contiguous_strides(out, os);
	struct walk w = walk_of(out, os, x->nb);
	if (x->dtype == FW_F32)
		walk_f32(&w, out->data, x->data, false);
	else
		walk_bytes(&w, out->data, x->data, fw_dtype_size(x->dtype));
}

/* Both gradients are contiguous in the same shape: a plain add (a copy
 * when the graph did not zero dx: fw_exec.grad_overwrite). */
static void cont_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	const struct fw_tensor *gx = out->src[0]->grad, *gy = out->grad;
	bool add = !(ex->grad_overwrite & 1u);
	if (gx->dtype != FW_F32 || gy->dtype != FW_F32) {
		int64_t os[FW_MAX_DIMS];
		contiguous_strides(out, os);
		struct walk w = walk_of(out, os, os);
		walk_add(&w, gx->data, gx->dtype, gy->data, gy->dtype, add);
		return;
	}
	float *dx = out->src[0]->grad->data;
	const float *dy = out->grad->data;
	int64_t n = fw_nelem(out);
	if (!add) {
		#pragma omp parallel for simd schedule(static) if (n > 65536)
		for (int64_t i = 0; i < n; i++)
			dx[i] = dy[i];
		return;
	}
	#pragma omp parallel for simd schedule(static) if (n > 65536)
	for (int64_t i = 0; i < n; i++)
		dx[i] += dy[i];
}

const struct fw_op_i fw_op_cont_i = {
	.size = sizeof(struct fw_op_i),
	.name = "cont",
	.flags = FW_OPF_STRIDED | FW_OPF_HALF | FW_OPF_HALF_GRAD | FW_OPF_GRAD_OVERWRITE,
	.infer = cont_infer,
	.forward = cont_forward,
	.backward = cont_backward,
	.saved = no_saved,
};

/* --- concat ------------------------------------------------------------------------ */

/* Matches torch.cat((a, b), axis), with torch's type promotion: a and b of
 * one float dtype give that dtype (bf16/f16 under autocast stay half: no
 * f32 copy), two dtypes give f32. The sources may be strided views (read in
 * place); out is contiguous. */
static enum fw_status concat_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *a = out->src[0], *b = out->src[1];
	int axis = out->params[0].i, ax;
	char sa[64], sb[64];

	if (!a || !b)
		return fw_errorf(err, FW_ERR_INVALID, "concat: %s is missing", a ? "b" : "a");
	if (!is_half(a->dtype) && a->dtype != FW_F32)
		return fw_errorf(err, FW_ERR_SHAPE, "concat: a is %s, expected f32, bf16 or f16",
				 fw_dtype_name(a->dtype));
	if (!is_half(b->dtype) && b->dtype != FW_F32)
		return fw_errorf(err, FW_ERR_SHAPE, "concat: b is %s, expected f32, bf16 or f16",
				 fw_dtype_name(b->dtype));
	if (a->ndim != b->ndim)
		return fw_errorf(err, FW_ERR_SHAPE, "concat: shapes %s and %s differ in rank",
				 fw_shape_str(a, sa, sizeof(sa)), fw_shape_str(b, sb, sizeof(sb)));
	if ((ax = axis_of(axis, a->ndim)) < 0)
		return fw_errorf(err, FW_ERR_SHAPE, "concat: axis %d is out of range for shape %s",
				 axis, fw_shape_str(a, sa, sizeof(sa)));
	for (int i = 0; i < a->ndim; i++)
		if (i != ax && a->ne[i] != b->ne[i])
			return fw_errorf(err, FW_ERR_SHAPE,
					 "concat: shapes %s and %s differ outside axis %d",
					 fw_shape_str(a, sa, sizeof(sa)),
					 fw_shape_str(b, sb, sizeof(sb)), axis);
	out->dtype = a->dtype == b->dtype ? a->dtype : FW_F32;
	out->ndim = a->ndim;
	for (int i = 0; i < a->ndim; i++)
		out->ne[i] = i == ax ? a->ne[i] + b->ne[i] : a->ne[i];
	return FW_OK;
}

/* Element offset in out (contiguous) where source k's block starts. */
static int64_t concat_at(const struct fw_tensor *out, const int64_t *os, int k)
{
	return k ? out->src[0]->ne[axis_of(out->params[0].i, out->ndim)] *
		   os[axis_of(out->params[0].i, out->ndim)] : 0;
}

static void concat_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	int64_t os[FW_MAX_DIMS];
	contiguous_strides(out, os);
	for (int k = 0; k < 2; k++) {
		const struct fw_tensor *x = out->src[k];
		struct walk w = walk_of(x, os, x->nb);
		void *y = elem_ptr(out->data, out->dtype, concat_at(out, os, k));
		if (x->dtype == out->dtype && x->dtype == FW_F32)
			walk_f32(&w, y, x->data, false);
		else if (x->dtype == out->dtype)
			walk_bytes(&w, y, x->data, fw_dtype_size(x->dtype));
		else
			walk_add(&w, y, out->dtype, x->data, x->dtype, false);   /* widened */
	}
}

/* da += dy's a block, db += its b block, in each gradient's dtype. */
static void concat_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	int64_t os[FW_MAX_DIMS], xs[FW_MAX_DIMS];
	contiguous_strides(out, os);
	for (int k = 0; k < 2; k++) {
		const struct fw_tensor *x = out->src[k], *gx = x->grad, *gy = out->grad;
		if (!gx)
			continue;
		contiguous_strides(x, xs);
		struct walk w = walk_of(x, xs, os);
		walk_add(&w, gx->data, gx->dtype, elem_ptr(gy->data, gy->dtype, concat_at(out, os, k)),
			 gy->dtype, true);
	}
}

const struct fw_op_i fw_op_concat_i = {
	.size = sizeof(struct fw_op_i),
	.name = "concat",
	.flags = FW_OPF_STRIDED | FW_OPF_HALF | FW_OPF_HALF_GRAD,
	.infer = concat_infer,
	.forward = concat_forward,
	.backward = concat_backward,
	.saved = no_saved,
};
