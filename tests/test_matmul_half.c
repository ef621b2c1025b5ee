/* test_matmul_half.c - bf16 and f16 products on every CPU, by both kernels.
 *
 * A bf16 or f16 matmul runs on oneDNN's own kernel where this CPU has one,
 * and otherwise widens its operands to f32 (core/engine/src/matmul.c). Both paths
 * are checked here on every machine: the native one as found, and the
 * widening one forced with fw_matmul_force_fallback. The oracle is plain
 * double-precision math on the operands' half-precision values: a product
 * of two bf16 or two f16 numbers is exact in f32, so the only error left is
 * f32 accumulation, bounded by
 *
 *     |c - c_exact| <= 2 K eps32 sum_k |a_ik b_kj|       (eps32 = 2^-24)
 *
 * (the textbook bound is K eps; the factor 2 covers blocked summation with
 * a final add into the destination). Shapes are odd on purpose (no dim a
 * multiple of a vector or tile), with transposes, batch strides, padded
 * leading dimensions (the widening path's strided gather) and accumulation.
 * The kernel each path used is printed, so a log shows which ran.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "internal.h"

struct gcase {
	const char *name;
	int64_t batch, M, N, K;
	bool ta, tb, accumulate;
	int64_t pad;                 /* extra elements per row of a and b */
};

static const struct gcase gcases[] = {
	{ "plain", 1, 37, 29, 53, false, false, false, 0 },
	{ "trans_b", 1, 41, 67, 75, false, true, false, 0 },
	{ "trans_a", 1, 19, 33, 130, true, false, false, 0 },
	{ "both_trans_acc", 1, 23, 31, 47, true, true, true, 0 },
	{ "batched", 3, 17, 21, 40, false, true, false, 0 },
	{ "padded_rows", 2, 13, 27, 35, false, false, true, 5 },
	{ "padded_trans", 1, 64, 48, 96, true, true, false, 3 },
};
#define N_GCASES ((int)(sizeof(gcases) / sizeof(gcases[0])))

static const enum fw_dtype half_types[] = { FW_BF16, FW_F16 };

static uint16_t to_half(enum fw_dtype dt, float v)
{
	return dt == FW_BF16 ? fw_f32_to_bf16(v) : fw_f32_to_f16(v);
}

static double from_half(enum fw_dtype dt, uint16_t h)
{
	return dt == FW_BF16 ? fw_bf16_to_f32(h) : fw_f16_to_f32(h);
}

/* Runs one case on the current path; returns the number of bad elements. */
static int run_case(const struct gcase *g, enum fw_dtype dt, const char *path)
{
	/* a: logical (M, K), stored (M, K + pad) or transposed (K, M + pad). */
	int64_t a_rows = g->ta ? g->K : g->M, a_cols = (g->ta ? g->M : g->K) + g->pad;
	int64_t b_rows = g->tb ? g->N : g->K, b_cols = (g->tb ? g->K : g->N) + g->pad;
	int64_t sa = a_rows * a_cols + 7, sb = b_rows * b_cols + 3, sc = g->M * g->N + 5;
	int64_t na = g->batch * sa, nb = g->batch * sb, nc = g->batch * sc;
	uint16_t *a = malloc(sizeof(uint16_t) * (size_t)na);
	uint16_t *b = malloc(sizeof(uint16_t) * (size_t)nb);
	float *c = malloc(sizeof(float) * (size_t)nc), *c0 = malloc(sizeof(float) * (size_t)nc);
	ck_assert(a && b && c && c0);
	struct fwt_rng r = fwt_rng_new(7 + (uint64_t)g->K);
	for (int64_t i = 0; i < na; i++)
		a[i] = to_half(dt, (float)(fwt_rng_uniform(&r) * 4 - 2));
	for (int64_t i = 0; i < nb; i++)
		b[i] = to_half(dt, (float)(fwt_rng_uniform(&r) * 4 - 2));
	for (int64_t i = 0; i < nc; i++)
		c0[i] = g->accumulate ? (float)(fwt_rng_uniform(&r) - 0.5) : NAN;
	memcpy(c, c0, sizeof(float) * (size_t)nc);

	struct fw_gemm gm = {
		.batch = g->batch, .M = g->M, .N = g->N, .K = g->K,
		.trans_a = g->ta, .trans_b = g->tb, .lda = a_cols, .ldb = b_cols, .ldc = g->N,
		.stride_a = sa, .stride_b = sb, .stride_c = sc, .dt_ab = dt,
		.accumulate = g->accumulate,
	};
	ck_assert_int_eq(fw_gemm_run(&gm, a, b, c), FW_OK);

	int bad = 0;
	double worst = 0;
	for (int64_t p = 0; p < g->batch; p++)
		for (int64_t i = 0; i < g->M; i++)
			for (int64_t j = 0; j < g->N; j++) {
				double exact = g->accumulate ? c0[p * sc + i * g->N + j] : 0;
				double mag = fabs(exact);
				for (int64_t k = 0; k < g->K; k++) {
					int64_t ia = g->ta ? k * a_cols + i : i * a_cols + k;
					int64_t ib = g->tb ? j * b_cols + k : k * b_cols + j;
					double t = from_half(dt, a[p * sa + ia]) *
						   from_half(dt, b[p * sb + ib]);
					exact += t;
					mag += fabs(t);
				}
				double got = c[p * sc + i * g->N + j];
				double bound = 2.0 * (double)(g->K + 1) * 0x1p-24 * mag;
				double e = fabs(got - exact);
				if (!(e <= bound)) {
					if (bad < 5)
						fprintf(stderr, "%s %s %s: c[%lld,%lld,%lld] = %.9g, "
							"exact %.9g (bound %.2g)\n", g->name,
							fw_dtype_name(dt), path, (long long)p,
							(long long)i, (long long)j, got, exact, bound);
					bad++;
				}
				if (mag > 0 && e / mag > worst)
					worst = e / mag;
			}
	/* The padding after each batch of c is never written. */
	for (int64_t p = 0; p < g->batch; p++)
		for (int64_t i = g->M * g->N; i < sc; i++)
			if (memcmp(&c[p * sc + i], &c0[p * sc + i], sizeof(float)) != 0)
				bad++;
	printf("%-15s %-4s %-8s worst |err|/sum|ab| %.2e\n", g->name, fw_dtype_name(dt), path,
	       worst);
	free(a);
	free(b);
	free(c);
	free(c0);
	return bad;
}

START_TEST(test_native_path)
{
	char kern[256];
	/* set by the ctest variants that cap oneDNN's ISA (CMakeLists.txt) */
	const char *want_bf16 = getenv("FW_TEST_BF16_KERNEL");
	for (int d = 0; d < 2; d++) {
		fw_matmul_force_fallback(false);
		const char *k = fw_matmul_kernel(half_types[d], kern, sizeof(kern));
		printf("matmul %s as found: %s\n", fw_dtype_name(half_types[d]), k);
		if (want_bf16 && half_types[d] == FW_BF16)
			ck_assert_msg(strstr(k, want_bf16) != NULL, "bf16 kernel %s, expected %s", k,
				      want_bf16);
		int bad = run_case(&gcases[_i], half_types[d], "native");
		ck_assert_msg(bad == 0, "%s %s: %d elements off", gcases[_i].name,
			      fw_dtype_name(half_types[d]), bad);
	}
}
END_TEST

START_TEST(test_widening_path)
{
	char kern[256];
	for (int d = 0; d < 2; d++) {
		fw_matmul_force_fallback(true);
		const char *k = fw_matmul_kernel(half_types[d], kern, sizeof(kern));
		printf("matmul %s forced: %s\n", fw_dtype_name(half_types[d]), k);
		ck_assert_msg(strstr(k, "widened to f32") != NULL, "fallback not taken: %s", k);
		int bad = run_case(&gcases[_i], half_types[d], "widened");
		ck_assert_msg(bad == 0, "%s %s: %d elements off", gcases[_i].name,
			      fw_dtype_name(half_types[d]), bad);
	}
	fw_matmul_force_fallback(false);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("matmul_half");
	TCase *tc = fwt_tcase("paths", 120);
	tcase_add_loop_test(tc, test_native_path, 0, N_GCASES);
	tcase_add_loop_test(tc, test_widening_path, 0, N_GCASES);
	suite_add_tcase(s, tc);
	return fwt_run_suite(s);
}
