/* test_attn_causal.c - causal attention's products over the lower triangle
 * (FW_OP_MATMUL's p4, core/engine/src/matmul.c), f32 and bf16, forward and
 * backward, against plain double-precision math.
 *
 * The operands are what attention/mha hands the op: heads-first permuted
 * views of (B, T, H, D) tensors, the scores q k^T (FW_MM_CAUSAL_OUT) and the
 * heads-major product P v (FW_MM_CAUSAL_A, p3). T = 9, 70 and 300 cut into
 * 4 blocks of 3 and 18 (the last one short) and 64-row blocks (the last 44).
 * Inputs are multiples of 1/16 in [-2, 2) (exact in bf16), so the only
 * errors are f32 accumulation, bounded as in test_matmul_half.c by
 * 2 (K + 1) eps32 sum |a b|, and for bf16 one rounding of the result
 * (2^-8 |exact|: the output, and a gradient that is bf16 on its way).
 * The scores must be exactly 0 above the diagonal (P's gradient there is
 * not meaningful: only finite). A skipped block that is not masked, or a
 * block cut short, fails the values or the gradients.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

enum { B = 2, H = 3, D = 8 };

static const int to_heads[4] = { 0, 2, 1, 3 };

static float grid(struct fwt_rng *r)
{
	return (float)floor(fwt_rng_uniform(r) * 64 - 32) / 16.0f;
}

struct check {
	const char *what;
	int bad;
	double worst;
};

/* got vs exact with |got - exact| <= 2 (K + 1) eps32 mag + half |exact| */
static void expect(struct check *c, float got, double exact, double mag, int64_t K, bool half,
		   int64_t at)
{
	double bound = 2.0 * (double)(K + 1) * 0x1p-24 * mag + (half ? 0x1p-8 * fabs(exact) : 0);
	double e = fabs(got - exact);
	if (!(e <= bound)) {
		if (c->bad < 5)
			fprintf(stderr, "%s: [%lld] = %.9g, exact %.9g (bound %.2g)\n", c->what,
				(long long)at, got, exact, bound);
		c->bad++;
	}
	if (mag > 0 && e / mag > c->worst)
		c->worst = e / mag;
}

static void zero_above(struct check *c, float got, int64_t at)
{
	if (got != 0.0f) {
		if (c->bad < 5)
			fprintf(stderr, "%s: [%lld] = %g above the diagonal, want 0\n", c->what,
				(long long)at, got);
		c->bad++;
	}
}

static int report(const struct check *c, enum fw_dtype dt, int64_t T)
{
	printf("T %3lld %-4s %-6s worst |err|/sum|ab| %.2e, %d bad\n", (long long)T,
	       fw_dtype_name(dt), c->what, c->worst, c->bad);
	return c->bad;
}

/* a node of dt from the f32 leaf x */
static struct fw_tensor *as(struct fw_ctx *ctx, struct fw_tensor *x, enum fw_dtype dt)
{
	return dt == FW_F32 ? x : fw_cast(ctx, x, dt);
}

/* the op on heads-first views of a and b (both (B, T, H, X)), as mha builds it */
static struct fw_tensor *product(struct fw_ctx *ctx, struct fw_tensor *a, struct fw_tensor *b,
				 enum fw_dtype dt, enum fw_matmul_causal mode)
{
	bool scores = mode == FW_MM_CAUSAL_OUT;
	struct fw_tensor *src[2] = { fw_permute(ctx, as(ctx, a, dt), to_heads),
				     fw_permute(ctx, as(ctx, b, dt), to_heads) };
	union fw_param p[5] = { { .i = 0 }, { .i = scores }, { .i = (int32_t)dt },
				{ .i = !scores }, { .i = mode } };
	return fw_op_custom(ctx, FW_OP_MATMUL, src, 2, p, 5);
}

static struct fw_graph *train_graph(struct fw_ctx *ctx, struct fw_tensor *out,
				    struct fw_tensor *w)
{
	struct fw_tensor *loss = fw_sum(ctx, fw_mul(ctx, as(ctx, out, FW_F32), w), FW_AXIS_ALL,
					false);
	ck_assert_msg(loss != NULL, "%s", fw_ctx_err(ctx)->msg);
	struct fw_graph *g = fw_graph_new(ctx, (struct fw_tensor *[]){ loss, out }, 2,
					  &(struct fw_graph_opts){ .backward = true,
								   .training = true });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	return g;
}

/* (B, T, H, D) tensors; (B, H, T, T) ones through strides st (b, h, i, j) */
#define X(x, b, t, h, d) (x)[(((b) * T + (t)) * H + (h)) * D + (d)]
#define M(x, st, b, h, i, j) (x)[(b) * (st)[0] + (h) * (st)[1] + (i) * (st)[2] + (j) * (st)[3]]

/* got[i, j] = x[i] . y[j] for j <= i; above the diagonal exactly 0 (zero)
 * or only finite */
static void check_dots(struct check *c, const float *got, const int64_t *st, const float *x,
		       const float *y, int64_t T, bool half, bool zero)
{
	for (int64_t b = 0; b < B; b++)
		for (int64_t h = 0; h < H; h++)
			for (int64_t i = 0; i < T; i++)
				for (int64_t j = 0; j < T; j++) {
					float g = M(got, st, b, h, i, j);
					int64_t at = &M(got, st, b, h, i, j) - got;
					double ex = 0, mag = 0;
					for (int64_t d = 0; d < D; d++) {
						double t = (double)X(x, b, i, h, d) * X(y, b, j, h, d);
						ex += t;
						mag += fabs(t);
					}
					if (j <= i)
						expect(c, g, ex, mag, D, half, at);
					else if (zero)
						zero_above(c, g, at);
					else if (!isfinite(g))
						c->bad++;
				}
}

/* g1[t] = sum_u m[t, u] x1[u] and g2[t] = sum_u m[u, t] x2[u] */
static void check_mx(struct check *c1, const float *g1, struct check *c2, const float *g2,
		     const float *m, const int64_t *st, const float *x1, const float *x2,
		     int64_t T, bool half)
{
	for (int64_t b = 0; b < B; b++)
		for (int64_t h = 0; h < H; h++)
			for (int64_t t = 0; t < T; t++)
				for (int64_t d = 0; d < D; d++) {
					double e1 = 0, m1 = 0, e2 = 0, m2 = 0;
					for (int64_t u = 0; u < T; u++) {
						double p = (double)M(m, st, b, h, t, u) * X(x1, b, u, h, d);
						double q = (double)M(m, st, b, h, u, t) * X(x2, b, u, h, d);
						e1 += p;
						m1 += fabs(p);
						e2 += q;
						m2 += fabs(q);
					}
					int64_t at = &X(g1, b, t, h, d) - g1;
					expect(c1, X(g1, b, t, h, d), e1, m1, T, half, at);
					expect(c2, X(g2, b, t, h, d), e2, m2, T, half, at);
				}
}

/* mode FW_MM_CAUSAL_OUT: s = q k^T (B, H, T, T), loss = sum(s w) with w 0
 * above the diagonal (what a causal softmax hands back).
 * mode FW_MM_CAUSAL_A: y = P v written heads-major (B, T, H, D), P lower
 * triangular, stored (B, T, H, T) and permuted as v is (a half view's
 * gradient); loss = sum(y w). */
static int run_case(enum fw_matmul_causal mode, enum fw_dtype dt, int64_t T)
{
	bool half = dt != FW_F32, scores = mode == FW_MM_CAUSAL_OUT;
	int64_t nx = B * T * H * D, nm = B * H * T * T;
	const int64_t *tt = scores ? (int64_t[]){ B, H, T, T } : (int64_t[]){ B, T, H, T };
	const int64_t *bthd = (int64_t[]){ B, T, H, D };
	/* (b, h, i, j) strides of the (T, T) tensor */
	const int64_t *st = scores ? (int64_t[]){ H * T * T, T * T, T, 1 }
				   : (int64_t[]){ T * H * T, T, H * T, 1 };
	struct fw_ctx *ctx = fw_ctx_new();
	/* scores: a q, b k; probabilities: a P, b v */
	struct fw_tensor *a = fw_param(ctx, "a", FW_F32, 4, scores ? bthd : tt, true);
	struct fw_tensor *bx = fw_param(ctx, "b", FW_F32, 4, bthd, true);
	struct fw_tensor *w = fw_input(ctx, "w", FW_F32, 4, scores ? tt : bthd);
	struct fw_tensor *out = product(ctx, a, bx, dt, mode);
	struct fw_graph *g = train_graph(ctx, out, w);
	struct fwt_rng r = fwt_rng_new((scores ? 11 : 23) + (uint64_t)T);
	float *av = fw_f32(a), *bv = fw_f32(bx), *wv = fw_f32(w);
	float *tri = scores ? wv : av, *full = scores ? av : wv;
	for (int64_t b = 0; b < B; b++)              /* the lower triangular one */
		for (int64_t h = 0; h < H; h++)
			for (int64_t i = 0; i < T; i++)
				for (int64_t j = 0; j < T; j++)
					M(tri, st, b, h, i, j) = j <= i ? grid(&r) : 0.0f;
	for (int64_t i = 0; i < nx; i++) {
		full[i] = grid(&r);
		bv[i] = grid(&r);
	}
	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	ck_assert_int_eq(fw_graph_backward(g), FW_OK);
	float *ov = malloc(sizeof(float) * (size_t)(scores ? nm : nx));
	ck_assert(ov);
	fwt_read_f32(out, ov);
	const float *da = fw_f32(a->grad), *db = fw_f32(bx->grad);
	struct check co = { .what = scores ? "s" : "y" }, ca = { .what = scores ? "dq" : "dP" };
	struct check cb = { .what = scores ? "dk" : "dv" };
	if (scores) {
		/* s[i, j] = q[i] . k[j]; dq = w k; dk = w^T q */
		check_dots(&co, ov, st, av, bv, T, half, true);
		check_mx(&ca, da, &cb, db, wv, st, bv, av, T, half);
	} else {
		/* y = P v; dv = P^T w; dP[i, j] = w[i] . v[j] (above: not meaningful) */
		check_mx(&co, ov, &cb, db, av, st, bv, wv, T, half);
		check_dots(&ca, da, st, wv, bv, T, half, false);
	}
	free(ov);
	fw_graph_free(g);
	fw_ctx_free(ctx);
	return report(&co, dt, T) + report(&ca, dt, T) + report(&cb, dt, T);
}

static const int64_t lengths[] = { 9, 70, 300 };
static const enum fw_dtype dtypes[] = { FW_F32, FW_BF16 };

START_TEST(test_scores)
{
	for (int d = 0; d < 2; d++) {
		int bad = run_case(FW_MM_CAUSAL_OUT, dtypes[d], lengths[_i]);
		ck_assert_msg(bad == 0, "q k^T, T %lld %s: %d elements off", (long long)lengths[_i],
			      fw_dtype_name(dtypes[d]), bad);
	}
}
END_TEST

START_TEST(test_probs)
{
	for (int d = 0; d < 2; d++) {
		int bad = run_case(FW_MM_CAUSAL_A, dtypes[d], lengths[_i]);
		ck_assert_msg(bad == 0, "P v, T %lld %s: %d elements off", (long long)lengths[_i],
			      fw_dtype_name(dtypes[d]), bad);
	}
}
END_TEST

/* A bad p4 is refused when the node is built. */
START_TEST(test_bad_mode)
{
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *a = fw_input(ctx, "a", FW_F32, 2, (int64_t[]){ 3, 3 });
	union fw_param p[5] = { { .i = 0 }, { .i = 0 }, { .i = 0 }, { .i = 0 }, { .i = 3 } };
	struct fw_tensor *y = fw_op_custom(ctx, FW_OP_MATMUL, (struct fw_tensor *[]){ a, a }, 2,
					   p, 5);
	ck_assert_ptr_null(y);
	ck_assert_msg(strstr(fw_ctx_err(ctx)->msg, "causal mode 3"), "%s", fw_ctx_err(ctx)->msg);
	fw_ctx_free(ctx);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("attn_causal");
	TCase *tc = fwt_tcase("products", 300);
	tcase_add_loop_test(tc, test_scores, 0, 3);
	tcase_add_loop_test(tc, test_probs, 0, 3);
	tcase_add_test(tc, test_bad_mode);
	suite_add_tcase(s, tc);
	return fwt_run_suite(s);
}
