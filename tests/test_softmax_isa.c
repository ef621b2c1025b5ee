/* test_softmax_isa.c - the f32 softmax's forward and backward on each ISA
 * copy this CPU can run: the build's (x86-64-v3, AVX2) always, and the
 * AVX-512 copy (core/engine/src/ops_nn.c, chosen at run time by
 * fw_kernel_avx512) where the CPU has AVX-512; the log says which ran.
 * Attention's use, through a graph: y = softmax(scale x + bias, causal) with
 * a per-key bias (B, 1, 1, Tk) and Tq < Tk, loss = sum(y * r), so
 * dx = scale y (r - sum(y r)) and dbias sums that over rows.
 *
 * The oracle is the formula in double with libm's exp (torch.softmax's
 * definition; its backward as ATen's _softmax_backward_data). Bounds: the
 * exp polynomial (vmath.h) is within 2 float ulps and the row sums have
 * Tk terms, so y may differ by 8 eps32 y + Tk eps32 y, and dx by 16 eps32
 * scale y (|r| + sum |y r|) + the y error times |r - dot|. Rows are longer
 * than a vector (67 keys, no multiple of 8 or 16) and there are more of them
 * than one thread's share (the parallel path).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "internal.h"

#define B 3
#define H 4
#define TQ 61
#define TK 67
#define NX ((int64_t)B * H * TQ * TK)
#define EPS32 0x1p-24

static const float scale = 0.37f;

/* Returns the elements out of bounds on the current ISA copy. */
static int64_t run(const char *isa)
{
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *x = fw_param(ctx, "x", FW_F32, 4, (int64_t[]){ B, H, TQ, TK }, true);
	struct fw_tensor *bias = fw_param(ctx, "bias", FW_F32, 4, (int64_t[]){ B, 1, 1, TK },
					  true);
	struct fw_tensor *r = fw_input(ctx, "r", FW_F32, 4, (int64_t[]){ B, H, TQ, TK });
	struct fw_tensor *y = fw_softmax(ctx, x, bias, true, scale);
	struct fw_tensor *loss = fw_sum(ctx, fw_mul(ctx, y, r), FW_AXIS_ALL, false);
	ck_assert_msg(loss != NULL, "%s", fw_ctx_err(ctx)->msg);
	struct fw_tensor *outs[2] = { loss, y };
	struct fw_graph *g = fw_graph_new(ctx, outs, 2, &(struct fw_graph_opts){
		.backward = true, .training = true });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);

	float *xv = malloc(sizeof(float) * NX), *rv = malloc(sizeof(float) * NX);
	float *yv = malloc(sizeof(float) * NX), *dx = malloc(sizeof(float) * NX);
	float bv[B * TK], db[B * TK];
	double *want_db = calloc(B * TK, sizeof(double)), *dbtol = calloc(B * TK, sizeof(double));
	ck_assert(xv && rv && yv && dx && want_db && dbtol);
	struct fwt_rng rng = fwt_rng_new(57);
	fwt_fill_uniform(xv, NX, &rng, -12, 12);
	fwt_fill_uniform(rv, NX, &rng, -2, 2);
	fwt_fill_uniform(bv, B * TK, &rng, -3, 1);
	bv[5] = -INFINITY;                         /* a padded key */
	fwt_write(x, xv);
	fwt_write(r, rv);
	fwt_write(bias, bv);
	fw_graph_zero_grad(g);
	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	ck_assert_int_eq(fw_graph_backward(g), FW_OK);
	fwt_read_f32(y, yv);
	fwt_read_f32(x->grad, dx);
	fwt_read_f32(bias->grad, db);

	int64_t bad = 0;
	double worst_y = 0, worst_dx = 0, worst_db = 0, z[TK], w[TK];
	for (int64_t row = 0; row < (int64_t)B * H * TQ; row++) {
		int64_t b = row / (H * TQ), i = row % TQ, nv = i + TK - TQ + 1;
		const float *xr = xv + row * TK, *rr = rv + row * TK;
		double m = -INFINITY, s = 0, dot = 0, ayr = 0;
		for (int64_t j = 0; j < nv; j++) {
			z[j] = (double)scale * xr[j] + bv[b * TK + j];
			m = fmax(m, z[j]);
		}
		for (int64_t j = 0; j < nv; j++)
			s += (w[j] = exp(z[j] - m));
		for (int64_t j = 0; j < nv; j++) {
			w[j] /= s;
			dot += w[j] * rr[j];
			ayr += fabs(w[j] * rr[j]);
		}
		for (int64_t j = 0; j < TK; j++) {
			double want = j < nv ? w[j] : 0, ds = j < nv ? w[j] * (rr[j] - dot) : 0;
			double tol_y = (8 + TK) * EPS32 * want;
			double tol_ds = 16 * EPS32 * want * (fabs(rr[j]) + ayr) +
					tol_y * (fabs(rr[j]) + fabs(dot));
			double ey = fabs(yv[row * TK + j] - want);
			double ed = fabs(dx[row * TK + j] - scale * ds);
			want_db[b * TK + j] += ds;
			dbtol[b * TK + j] += tol_ds;
			worst_y = fmax(worst_y, tol_y > 0 ? ey / tol_y : ey);
			worst_dx = fmax(worst_dx, tol_ds > 0 ? ed / (scale * tol_ds) : ed);
			if (!(ey <= tol_y) || !(ed <= scale * tol_ds)) {
				if (bad++ < 5)
					fprintf(stderr, "%s: row %lld key %lld: y %.9g want %.9g, "
						"dx %.9g want %.9g\n", isa, (long long)row,
						(long long)j, (double)yv[row * TK + j], want,
						(double)dx[row * TK + j], scale * ds);
			}
		}
	}
	for (int64_t e = 0; e < B * TK; e++) {
		/* plus the rounding of the f32 sum over H * TQ rows */
		double tol = dbtol[e] + H * TQ * EPS32 * fabs(want_db[e]) + 1e-12;
		double err = fabs(db[e] - want_db[e]);
		worst_db = fmax(worst_db, err / tol);
		if (!(err <= tol) && bad++ < 5)
			fprintf(stderr, "%s: dbias[%lld] %.9g want %.9g\n", isa, (long long)e,
				(double)db[e], want_db[e]);
	}
	printf("softmax %s: worst error / bound: y %.3f, dx %.3f, dbias %.3f\n", isa, worst_y,
	       worst_dx, worst_db);
	free(xv);
	free(rv);
	free(yv);
	free(dx);
	free(want_db);
	free(dbtol);
	fw_graph_free(g);
	fw_ctx_free(ctx);
	return bad;
}

START_TEST(test_softmax_build_isa)
{
	fw_kernel_allow_avx512(false);
	ck_assert(!fw_kernel_avx512());
	ck_assert_int_eq(run("avx2"), 0);
	fw_kernel_allow_avx512(true);
}
END_TEST

START_TEST(test_softmax_avx512)
{
	if (fwt_avx512_copy_runs("softmax"))
		ck_assert_int_eq(run("avx512"), 0);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("softmax_isa");
	TCase *tc = fwt_tcase("core", 120);
	tcase_add_test(tc, test_softmax_build_isa);
	tcase_add_test(tc, test_softmax_avx512);
	suite_add_tcase(s, tc);
	return fwt_run_suite(s);
}
