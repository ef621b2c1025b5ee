/* test_linear_half.c - fw_linear with an f32 bias under bf16 and f16
 * autocast: the bias rides in the half product's oneDNN call (added in f32
 * before the output is rounded, no separate add node) and its gradient is
 * the sum of dy's rows (core/engine/src/ops.c, matmul.c). Checked on the
 * native kernel as found and on the f32 widening path forced with
 * fw_matmul_force_fallback.
 *
 * The oracle is double-precision math on the values the kernels saw (x, w
 * and the loss weights r rounded to the half dtype): y = half(x w^T + b),
 * dy = half(r), db = sum_rows dy, dx = dy w, dw = dy^T x. A product of two
 * half numbers is exact in f32, so the error is f32 accumulation,
 * |c - c_exact| <= 2 K eps32 sum_k |a_ik b_kj| (as in test_matmul_half.c),
 * plus, for y, its rounding to half (eps16 |y|: 2^-8 bf16, 2^-11 f16).
 * N > 128 and ROWS > 64: the bias gradient's column sum runs over two
 * column tiles (one partial) and two row blocks (one partial).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "harness.h"
#include "internal.h"

#define B 3
#define T 30
#define ROWS (B * T)
#define K 40
#define N 150
#define EPS32 0x1p-24

static double rnd(enum fw_dtype dt, float v)
{
	return dt == FW_BF16 ? fw_bf16_to_f32(fw_f32_to_bf16(v)) : fw_f16_to_f32(fw_f32_to_f16(v));
}

static int check(const char *what, const float *got, const double *want, const double *tol,
		 int n)
{
	int bad = 0;
	double worst = 0;
	for (int i = 0; i < n; i++) {
		double e = fabs(got[i] - want[i]);
		worst = fmax(worst, e / tol[i]);
		if (!(e <= tol[i]) && bad++ < 3)
			fprintf(stderr, "%s[%d] = %.9g, want %.9g (bound %.3g)\n", what, i,
				(double)got[i], want[i], tol[i]);
	}
	printf("  %-3s worst error / bound %.3f\n", what, worst);
	return bad;
}

/* c (rows, cols) = sum_j p[i, j] q[j, k] with p[i, j] at p + i ps_i + j ps_j
 * and q[j, k] at q + j qs_j + k qs_k; tol: the f32 accumulation bound. */
static void product_ref(const double *p, int ps_i, int ps_j, const double *q, int qs_j,
			int qs_k, int rows, int cols, int inner, double *c, double *tol)
{
	for (int i = 0; i < rows; i++)
		for (int k = 0; k < cols; k++) {
			double s = 0, a = 0;
			for (int j = 0; j < inner; j++) {
				double t = p[i * ps_i + j * ps_j] * q[j * qs_j + k * qs_k];
				s += t;
				a += fabs(t);
			}
			c[i * cols + k] = s;
			tol[i * cols + k] = 2 * inner * EPS32 * a + 1e-30;
		}
}

static void run(enum fw_dtype dt, const char *path)
{
	struct fw_ctx *ctx = fw_ctx_new();
	ck_assert_int_eq(fw_ctx_set_autocast(ctx, dt), FW_OK);
	struct fw_tensor *x = fw_param(ctx, "x", FW_F32, 3, (int64_t[]){ B, T, K }, true);
	struct fw_tensor *w = fw_param(ctx, "w", FW_F32, 2, (int64_t[]){ N, K }, true);
	struct fw_tensor *b = fw_param(ctx, "b", FW_F32, 1, (int64_t[]){ N }, true);
	struct fw_tensor *r = fw_input(ctx, "r", FW_F32, 3, (int64_t[]){ B, T, N });
	struct fw_tensor *y = fw_linear(ctx, x, w, b);
	ck_assert_msg(y != NULL, "%s", fw_ctx_err(ctx)->msg);
	ck_assert_int_eq(y->op, FW_OP_MATMUL);
	ck_assert_ptr_eq(y->src[2], b);
	ck_assert_int_eq(y->dtype, dt);
	struct fw_tensor *loss = fw_sum(ctx, fw_mul(ctx, y, r), FW_AXIS_ALL, false);
	struct fw_tensor *outs[2] = { loss, y };
	struct fw_graph *g = fw_graph_new(ctx, outs, 2, &(struct fw_graph_opts){
		.backward = true, .training = true });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	for (int i = 0; i < fw_graph_n_nodes(g); i++)
		ck_assert_int_ne(fw_graph_node(g, i)->op, FW_OP_ADD);

	static float xv[ROWS * K], wv[N * K], bv[N], rv[ROWS * N];
	struct fwt_rng rng = fwt_rng_new(5 + (uint64_t)dt);
	fwt_fill_uniform(xv, ROWS * K, &rng, -2, 2);
	fwt_fill_uniform(wv, N * K, &rng, -1, 1);
	fwt_fill_uniform(bv, N, &rng, -3, 3);
	fwt_fill_uniform(rv, ROWS * N, &rng, -1, 1);
	fwt_write(x, xv);
	fwt_write(w, wv);
	fwt_write(b, bv);
	fwt_write(r, rv);
	/* twice: the second backward must overwrite the first's gradients
	 * (cleared by zero_grad, not zeroed) */
	for (int pass = 0; pass < 2; pass++) {
		fw_graph_zero_grad(g);
		ck_assert_int_eq(fw_graph_forward(g), FW_OK);
		ck_assert_int_eq(fw_graph_backward(g), FW_OK);
	}

	static float yv[ROWS * N];
	static double want[ROWS * N + N * K + ROWS * K], tol[ROWS * N + N * K + ROWS * K];
	static double xh[ROWS * K], wh[N * K], dy[ROWS * N];
	double eps16 = dt == FW_BF16 ? 0x1p-8 : 0x1p-11;
	for (int i = 0; i < ROWS * K; i++)
		xh[i] = rnd(dt, xv[i]);
	for (int i = 0; i < N * K; i++)
		wh[i] = rnd(dt, wv[i]);
	for (int i = 0; i < ROWS * N; i++)
		dy[i] = rnd(dt, rv[i]);
	printf("linear %s, %s path:\n", fw_dtype_name(dt), path);
	int bad = 0;

	fwt_read_f32(y, yv);
	for (int m = 0; m < ROWS; m++)
		for (int n = 0; n < N; n++) {
			double s = bv[n], a = fabs(bv[n]);
			for (int k = 0; k < K; k++) {
				s += xh[m * K + k] * wh[n * K + k];
				a += fabs(xh[m * K + k] * wh[n * K + k]);
			}
			want[m * N + n] = s;
			tol[m * N + n] = 2 * (K + 1) * EPS32 * a + eps16 * fabs(s);
		}
	bad += check("y", yv, want, tol, ROWS * N);

	for (int n = 0; n < N; n++) {
		double s = 0, a = 0;
		for (int m = 0; m < ROWS; m++) {
			s += dy[m * N + n];
			a += fabs(dy[m * N + n]);
		}
		want[n] = s;
		tol[n] = 2 * ROWS * EPS32 * a + 1e-30;
	}
	bad += check("db", fw_f32(b->grad), want, tol, N);

	/* dx (ROWS, K) = dy (ROWS, N) w (N, K); dw (N, K) = dy^T x (ROWS, K) */
	product_ref(dy, N, 1, wh, K, 1, ROWS, K, N, want, tol);
	bad += check("dx", fw_f32(x->grad), want, tol, ROWS * K);
	product_ref(dy, 1, N, xh, K, 1, N, K, ROWS, want, tol);
	bad += check("dw", fw_f32(w->grad), want, tol, N * K);
	ck_assert_int_eq(bad, 0);
	fw_graph_free(g);
	fw_ctx_free(ctx);
}

START_TEST(test_linear_bias_native)
{
	fw_matmul_force_fallback(false);
	run(FW_BF16, "native");
	run(FW_F16, "native");
}
END_TEST

START_TEST(test_linear_bias_fallback)
{
	fw_matmul_force_fallback(true);
	run(FW_BF16, "widening");
	run(FW_F16, "widening");
	fw_matmul_force_fallback(false);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("linear_half");
	TCase *tc = fwt_tcase("core", 60);
	tcase_add_test(tc, test_linear_bias_native);
	tcase_add_test(tc, test_linear_bias_fallback);
	suite_add_tcase(s, tc);
	return fwt_run_suite(s);
}
