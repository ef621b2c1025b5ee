/* test_add_half.c - add and sub under autocast, whose backward writes the
 * operands' gradients in their own dtype (f32, bf16, f16): both operands of
 * a same-shape add from one pass over dy, a broadcast operand (bias row,
 * one element, a middle dim) through f32 copies of the half ones.
 *
 * Each case is loss = sum((A op B) * r) (+ sum(A * r2) + sum(B * r3) in the
 * "added" cases, built after, so that their backward writes the gradients
 * first and add's must add to them), where A and B are a scale by 1 of an
 * f32 parameter or of its half copy: a node whose gradient is f32 or half.
 * The oracle is the math in double: dA = the sum of r (and r2) over the
 * dims along which A is broadcast, dB the same of +-r, each rounded to its
 * gradient's dtype (one rounding: bound eps |want| plus half the spacing
 * of the dtype's subnormals) and carried exactly into the parameter's f32
 * gradient by the scale. r, r2, r3 hold values the half dtypes represent,
 * so the f32 dy and its half copy are the same numbers. The forward is
 * checked too: a op b in double, rounded once to the output's dtype.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define MAXN 1024

struct add_case {
	const char *name;
	int nda, ndb;
	int64_t sa[3], sb[3];
	enum fw_dtype ga, gb;        /* dtype of A's and B's values and gradients */
	bool sub, added, same;       /* same: B is A (a + a) */
};

static double round_to(enum fw_dtype dt, double v)
{
	float f = (float)v;
	return dt == FW_BF16 ? fw_bf16_to_f32(fw_f32_to_bf16(f)) :
	       dt == FW_F16 ? fw_f16_to_f32(fw_f32_to_f16(f)) : f;
}

static double eps_of(enum fw_dtype dt)
{
	return dt == FW_BF16 ? 0x1p-8 : dt == FW_F16 ? 0x1p-11 : 0x1p-24;
}

static double tiny_of(enum fw_dtype dt)
{
	return dt == FW_BF16 ? 0x1p-134 : dt == FW_F16 ? 0x1p-25 : 0x1p-150;
}

/* Index into a right-aligned broadcast operand of shape s (nd dims) of
 * element (i0, i1, i2) of the 3-D output. */
static int64_t bidx(const int64_t *s, int nd, const int64_t *idx)
{
	int64_t off = 0;
	for (int d = 0; d < nd; d++) {
		int od = 3 - nd + d;
		off = off * s[d] + (s[d] == 1 ? 0 : idx[od]);
	}
	return off;
}

static int64_t nel(const int64_t *s, int nd)
{
	int64_t n = 1;
	for (int d = 0; d < nd; d++)
		n *= s[d];
	return n;
}

/* A scale by 1 of p, or of its half copy: a node with a gradient of dtype dt. */
static struct fw_tensor *operand(struct fw_ctx *ctx, struct fw_tensor *p, enum fw_dtype dt)
{
	return fw_scale(ctx, dt == FW_F32 ? p : fw_cast(ctx, p, dt), 1.0f);
}

static void run_case(const struct add_case *c)
{
	struct fw_ctx *ctx = fw_ctx_new();
	enum fw_dtype ac = c->ga != FW_F32 ? c->ga : c->gb != FW_F32 ? c->gb : FW_BF16;
	ck_assert_int_eq(fw_ctx_set_autocast(ctx, ac), FW_OK);
	struct fw_tensor *pa = fw_param(ctx, "a", FW_F32, c->nda, c->sa, true);
	struct fw_tensor *pb = c->same ? pa : fw_param(ctx, "b", FW_F32, c->ndb, c->sb, true);
	const int64_t *sb = c->same ? c->sa : c->sb;
	int ndb = c->same ? c->nda : c->ndb;
	struct fw_tensor *A = operand(ctx, pa, c->ga);
	struct fw_tensor *B = c->same ? A : operand(ctx, pb, c->gb);
	struct fw_tensor *y = c->sub ? fw_sub(ctx, A, B) : fw_add(ctx, A, B);
	ck_assert_msg(y != NULL, "%s", fw_ctx_err(ctx)->msg);
	ck_assert_int_eq(y->ndim, 3);
	int64_t ys[3] = { y->ne[0], y->ne[1], y->ne[2] }, n = nel(ys, 3);
	ck_assert(n <= MAXN);
	struct fw_tensor *r = fw_input(ctx, "r", FW_F32, 3, ys);
	struct fw_tensor *r2 = fw_input(ctx, "r2", FW_F32, c->nda, c->sa);
	struct fw_tensor *r3 = fw_input(ctx, "r3", FW_F32, ndb, sb);
	struct fw_tensor *loss = fw_sum(ctx, fw_mul(ctx, y, r), FW_AXIS_ALL, false);
	if (c->added) {
		loss = fw_add(ctx, loss, fw_sum(ctx, fw_mul(ctx, A, r2), FW_AXIS_ALL, false));
		if (!c->same)
			loss = fw_add(ctx, loss, fw_sum(ctx, fw_mul(ctx, B, r3), FW_AXIS_ALL, false));
	}
	struct fw_tensor *outs[2] = { loss, y };
	struct fw_graph *g = fw_graph_new(ctx, outs, 2, &(struct fw_graph_opts){
		.backward = true, .training = true });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	ck_assert_int_eq(A->grad->dtype, c->ga);

	int64_t na = nel(c->sa, c->nda), nb = nel(sb, ndb);
	static float av[MAXN], bv[MAXN], rv[MAXN], r2v[MAXN], r3v[MAXN], yv[MAXN];
	static float ga[MAXN], gb[MAXN];
	struct fwt_rng rng = fwt_rng_new(7);
	fwt_fill_uniform(av, na, &rng, -2, 2);
	fwt_fill_uniform(bv, nb, &rng, -2, 2);
	fwt_fill_uniform(rv, n, &rng, -2, 2);
	fwt_fill_uniform(r2v, na, &rng, -2, 2);
	fwt_fill_uniform(r3v, nb, &rng, -2, 2);
	for (int64_t i = 0; i < n; i++)          /* exact in every dtype here */
		rv[i] = (float)round_to(FW_BF16, rv[i]);
	for (int64_t i = 0; i < MAXN; i++) {
		r2v[i] = (float)round_to(FW_BF16, r2v[i]);
		r3v[i] = (float)round_to(FW_BF16, r3v[i]);
	}
	fwt_write(pa, av);
	if (!c->same)
		fwt_write(pb, bv);
	fwt_write(r, rv);
	fwt_write(r2, r2v);
	fwt_write(r3, r3v);
	fw_graph_zero_grad(g);
	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	ck_assert_int_eq(fw_graph_backward(g), FW_OK);
	fwt_read_f32(y, yv);
	fwt_read_f32(pa->grad, ga);
	if (!c->same)
		fwt_read_f32(pb->grad, gb);

	/* the oracle in double */
	static double wa[MAXN], wb[MAXN], sa_abs[MAXN], sb_abs[MAXN];
	const float *bsrc = c->same ? av : bv;
	double sign = c->sub ? -1.0 : 1.0;
	memset(wa, 0, sizeof(wa));
	memset(wb, 0, sizeof(wb));
	memset(sa_abs, 0, sizeof(sa_abs));
	memset(sb_abs, 0, sizeof(sb_abs));
	int64_t bad = 0;
	for (int64_t i = 0; i < n; i++) {
		int64_t idx[3] = { i / (ys[1] * ys[2]), i / ys[2] % ys[1], i % ys[2] };
		int64_t ia = bidx(c->sa, c->nda, idx), ib = bidx(sb, ndb, idx);
		double a = round_to(c->ga, av[ia]), b = round_to(c->same ? c->ga : c->gb, bsrc[ib]);
		double want = round_to(y->dtype, a + sign * b);
		double tol = eps_of(y->dtype) * fabs(a + sign * b) + tiny_of(y->dtype);
		if (!(fabs(yv[i] - want) <= tol) && bad++ < 5)
			fprintf(stderr, "%s: y[%lld] %.9g want %.9g\n", c->name, (long long)i,
				(double)yv[i], want);
		wa[ia] += rv[i];
		sa_abs[ia] += fabs(rv[i]);
		if (c->same) {
			wa[ia] += sign * rv[i];
			sa_abs[ia] += fabs(rv[i]);
		} else {
			wb[ib] += sign * rv[i];
			sb_abs[ib] += fabs(rv[i]);
		}
	}
	for (int k = 0; k < (c->same ? 1 : 2); k++) {
		int64_t m = k ? nb : na;
		double *w = k ? wb : wa, *wabs = k ? sb_abs : sa_abs;
		const float *got = k ? gb : ga, *extra = k ? r3v : r2v;
		enum fw_dtype dt = k ? c->gb : c->ga;
		for (int64_t i = 0; i < m; i++) {
			/* the added cases: the other term is in the gradient first */
			double want = w[i] + (c->added ? extra[i] : 0.0);
			/* f32 sums of up to MAXN terms, then one rounding to dt */
			double tol = MAXN * 0x1p-24 * (wabs[i] + 2.0) + eps_of(dt) * fabs(want) +
				     tiny_of(dt);
			if (!(fabs(got[i] - want) <= tol) && bad++ < 5)
				fprintf(stderr, "%s: d%c[%lld] %.9g want %.9g\n", c->name, k ? 'b' : 'a',
					(long long)i, (double)got[i], want);
		}
	}
	ck_assert_msg(bad == 0, "%s: %lld elements out of bounds", c->name, (long long)bad);
	fw_graph_free(g);
	fw_ctx_free(ctx);
}

#define F32 FW_F32
#define BF FW_BF16
#define F16 FW_F16

static const struct add_case cases[] = {
	/* the residual add: f32 stream + a half product's output */
	{ "full f32+bf16", 3, 3, { 3, 5, 40 }, { 3, 5, 40 }, F32, BF, false, false, false },
	{ "full f32+bf16 added", 3, 3, { 3, 5, 40 }, { 3, 5, 40 }, F32, BF, false, true, false },
	{ "full bf16+bf16", 3, 3, { 3, 5, 40 }, { 3, 5, 40 }, BF, BF, false, false, false },
	{ "full bf16-bf16 added", 3, 3, { 3, 5, 40 }, { 3, 5, 40 }, BF, BF, true, true, false },
	{ "full f16-f32", 3, 3, { 3, 5, 40 }, { 3, 5, 40 }, F16, F32, true, false, false },
	{ "full f16+f16 added", 3, 3, { 3, 5, 40 }, { 3, 5, 40 }, F16, F16, false, true, false },
	{ "a+a bf16", 3, 0, { 3, 5, 40 }, { 0 }, BF, BF, false, false, true },
	{ "a+a bf16 added", 3, 0, { 3, 5, 40 }, { 0 }, BF, BF, false, true, true },
	/* broadcast operands: reductions */
	{ "rowvec bf16+bf16", 3, 1, { 3, 5, 40 }, { 40 }, BF, BF, false, false, false },
	{ "rowvec f32-bf16 added", 3, 1, { 3, 5, 40 }, { 40 }, F32, BF, true, true, false },
	{ "rowvec bf16+f32", 3, 1, { 3, 5, 40 }, { 40 }, BF, F32, false, true, false },
	{ "scalar bf16+bf16", 3, 1, { 3, 5, 40 }, { 1 }, BF, BF, false, true, false },
	{ "scalar f16-f16", 3, 1, { 3, 5, 40 }, { 1 }, F16, F16, true, false, false },
	{ "generic bf16+bf16", 3, 3, { 3, 5, 40 }, { 3, 1, 40 }, BF, BF, false, false, false },
	{ "generic both bf16 added", 3, 3, { 3, 1, 40 }, { 1, 5, 40 }, BF, BF, false, true, false },
	{ "generic f32+bf16", 3, 3, { 3, 1, 40 }, { 1, 5, 1 }, F32, BF, true, false, false },
};

START_TEST(test_add_half_case)
{
	run_case(&cases[_i]);
}
END_TEST

/* A graph without backward (eval) over a bias add: the trainable bias
 * has a gradient buffer, the add's output none; the forward is x + b. */
START_TEST(test_add_forward_only)
{
	struct fw_ctx *ctx = fw_ctx_new();
	ck_assert_int_eq(fw_ctx_set_autocast(ctx, FW_BF16), FW_OK);
	struct fw_tensor *x = fw_input(ctx, "x", FW_F32, 2, (int64_t[]){ 4, 8 });
	struct fw_tensor *b = fw_param(ctx, "b", FW_F32, 1, (int64_t[]){ 8 }, true);
	struct fw_tensor *y = fw_add(ctx, fw_cast(ctx, x, FW_BF16), b);
	struct fw_graph *g = fw_graph_new(ctx, &y, 1, &(struct fw_graph_opts){ .backward = false });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	float xv[32], bv[8], yv[32];
	struct fwt_rng rng = fwt_rng_new(3);
	fwt_fill_uniform(xv, 32, &rng, -2, 2);
	fwt_fill_uniform(bv, 8, &rng, -2, 2);
	fwt_write(x, xv);
	fwt_write(b, bv);
	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	fwt_read_f32(y, yv);
	for (int i = 0; i < 32; i++)     /* bf16 x + f32 b in f32: exact in double */
		ck_assert_float_eq(yv[i], (float)(round_to(FW_BF16, xv[i]) + (double)bv[i % 8]));
	fw_graph_free(g);
	fw_ctx_free(ctx);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("add_half");
	TCase *tc = fwt_tcase("core", 60);
	tcase_add_loop_test(tc, test_add_half_case, 0, (int)(sizeof(cases) / sizeof(cases[0])));
	tcase_add_test(tc, test_add_forward_only);
	suite_add_tcase(s, tc);
	return fwt_run_suite(s);
}
