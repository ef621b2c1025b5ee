/* test_half_isa.c - every instruction-set path of the f32 <-> bf16/f16
 * conversions this CPU runs (half_isa.c's row for each of isa.c's levels:
 * scalar, avx2, avx512, avx512bf16)
 * against references computed here in double arithmetic, independent of
 * fw's bit tricks:
 *
 *   - bf16/f16 -> f32: all 65536 values of each, decoded from sign,
 *     exponent and fraction with ldexp (NaNs: the same sign and payload, an
 *     f16 one made quiet);
 *   - f32 -> bf16/f16: round to nearest, ties to even, found by comparing
 *     the distances to the two neighbours in double; inputs are every
 *     pattern of the kept bits with the dropped bits at the tie, one below
 *     and above it, zero, all ones and a random value, so every exponent
 *     (subnormal, overflow to inf, inf, NaN) meets every rounding case;
 *     NaNs must stay NaNs, quiet and of the same sign.
 *
 * Each conversion runs as one call over an odd length (vector body and
 * scalar tail) through the path's kernels (fw_half_ops) and once through
 * fw_convert. Paths the CPU lacks are reported as not run (the scalar one
 * always runs); FW_KERNEL_ISA (or its old name FW_HALF_ISA) in the
 * environment is checked to pick its path.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw/machine.h"
#include "half.h"
#include "harness.h"

static const char *const paths[] = { "scalar", "avx2", "avx512", "avx512bf16" };
#define N_PATHS 4

static float from_bits(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static uint32_t bits_of(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
}

/* The value of a half (bf16: 8 exponent bits, 7 fraction bits; f16: 5 and
 * 10) in double; exponent all ones with fraction 0 gives inf, unless
 * `past_max` asks for the value a finite format would have there (2^emax+1),
 * which the rounding reference compares against. */
static double half_value(uint16_t h, bool bf16, bool past_max)
{
	int fb = bf16 ? 7 : 10, eb = bf16 ? 8 : 5, bias = (1 << (eb - 1)) - 1;
	int e = (h >> fb) & ((1 << eb) - 1), f = h & ((1 << fb) - 1);
	double s = (h & 0x8000) ? -1.0 : 1.0;
	if (e == (1 << eb) - 1 && !(past_max && f == 0))
		return f ? NAN : s * INFINITY;
	if (e == 0)
		return s * ldexp(f, 1 - bias - fb);
	return s * ldexp(f + (1 << fb), e - bias - fb);
}

/* The reference f32 of half h: its value; for a NaN, h's sign and payload,
 * and for f16 the quiet bit set (as F16C's vcvtph2ps does; a bf16 NaN
 * widens bit for bit, as torch's bf16 -> float does, signalling or not). */
static uint32_t ref_widen(uint16_t h, bool bf16)
{
	double v = half_value(h, bf16, false);
	if (!isnan(v))
		return bits_of((float)v);
	if (bf16)
		return (uint32_t)h << 16;
	return ((uint32_t)(h & 0x8000) << 16) | 0x7fc00000u | ((uint32_t)(h & 0x3ff) << 13);
}

/* Whether half h is the nearest-even rounding of f32 x (for a NaN: a quiet
 * NaN of x's sign). */
static bool rounds_to(float x, uint16_t h, bool bf16)
{
	int fb = bf16 ? 7 : 10, qbit = 1 << (fb - 1);
	double got = half_value(h, bf16, false);
	if (isnan(x))
		return isnan(got) && (h & qbit) && !!(h & 0x8000) == !!signbit(x);
	if (isnan(got) || !!(h & 0x8000) != !!signbit(x))
		return false;
	double ax = fabs((double)x), ag = fabs(got);
	if (isinf(ax))
		return isinf(ag);
	/* neighbours: the largest half magnitude <= ax and the next one up */
	uint16_t lo = 0;
	for (int b = 14; b >= 0; b--) {           /* binary search over magnitudes */
		uint16_t t = (uint16_t)(lo | (1u << b));
		if (half_value(t, bf16, true) <= ax)
			lo = t;
	}
	uint16_t hi = (uint16_t)(lo + 1);
	double dl = ax - half_value(lo, bf16, true), dh = half_value(hi, bf16, true) - ax;
	uint16_t want = dl < dh ? lo : dh < dl ? hi : (lo & 1) ? hi : lo;
	double wv = half_value(want, bf16, false);   /* 2^emax+1 is inf */
	return ag == fabs(wv) || (isinf(wv) && isinf(ag));
}

/* Inputs for rounding to a format that keeps the top `keep` bits of an f32:
 * every pattern of those with each of six patterns of the dropped bits. */
static int64_t rounding_inputs(int keep, float **out)
{
	int drop = 32 - keep;
	uint32_t tie = 1u << (drop - 1), all = (drop == 32 ? 0 : (1u << drop)) - 1;
	uint32_t low[6] = { 0, tie - 1, tie, tie + 1, all, 0 };
	int64_t n = ((int64_t)1 << keep) * 6;
	float *x = malloc(sizeof(float) * (size_t)n);
	struct fwt_rng r = fwt_rng_new(7);
	for (int64_t k = 0; x && k < ((int64_t)1 << keep); k++)
		for (int j = 0; j < 6; j++) {
			uint32_t l = j == 5 ? (uint32_t)fwt_rng_u64(&r) & all : low[j];
			x[k * 6 + j] = from_bits(((uint32_t)k << drop) | l);
		}
	*out = x;
	return n;
}

/* One path: both widenings over all 65536 halves, both roundings over the
 * inputs above; returns the number of wrong elements (the first few printed). */
static int64_t check_path(const char *path)
{
	int64_t bad = 0;
	for (int k = 0; k < 2; k++) {
		bool bf16 = k == 0;
		enum fw_dtype dt = bf16 ? FW_BF16 : FW_F16;
		enum { N = 65536 + 5 };               /* 5 past the end: a tail */
		uint16_t *h = malloc(sizeof(uint16_t) * N);
		float *w = malloc(sizeof(float) * N), *w2 = malloc(sizeof(float) * N);
		ck_assert(h && w && w2);
		for (int i = 0; i < N; i++)
			h[i] = (uint16_t)(i * 0x9e37u + 1);      /* all 65536, out of order */
		(bf16 ? fw_half_ops.bf16_to_f32 : fw_half_ops.f16_to_f32)(w, h, N);
		fw_convert(w2, FW_F32, h, dt, N);
		for (int i = 0; i < N; i++) {
			uint32_t want = ref_widen(h[i], bf16);
			if (bits_of(w[i]) != want || bits_of(w2[i]) != want) {
				if (bad++ < 5)
					fprintf(stderr, "%s: %s 0x%04x -> f32 0x%08x (fw_convert 0x%08x), "
						"want 0x%08x\n", path, fw_dtype_name(dt), h[i],
						bits_of(w[i]), bits_of(w2[i]), want);
			}
		}
		free(h);
		free(w);
		free(w2);

		float *x;
		int64_t n = rounding_inputs(bf16 ? 16 : 19, &x) - 1;     /* odd length */
		uint16_t *r = malloc(sizeof(uint16_t) * (size_t)n);
		uint16_t *r2 = malloc(sizeof(uint16_t) * (size_t)n);
		ck_assert(x && r && r2);
		(bf16 ? fw_half_ops.f32_to_bf16 : fw_half_ops.f32_to_f16)(r, x, n);
		fw_convert(r2, dt, x, FW_F32, n);
		for (int64_t i = 0; i < n; i++)
			if (!rounds_to(x[i], r[i], bf16) || r2[i] != r[i]) {
				if (bad++ < 5)
					fprintf(stderr, "%s: f32 0x%08x -> %s 0x%04x (fw_convert 0x%04x)\n",
						path, bits_of(x[i]), fw_dtype_name(dt), r[i], r2[i]);
			}
		free(x);
		free(r);
		free(r2);
	}
	return bad;
}

START_TEST(test_each_path)
{
	const char *path = paths[_i];
	enum fw_status st = fw_kernel_isa_force(path);
	if (st == FW_ERR_UNSUPPORTED && _i > 0) {
		printf("half conversions: %s: not run (this CPU lacks it)\n", path);
		return;
	}
	ck_assert_int_eq(st, FW_OK);
	ck_assert_str_eq(fw_kernel_isa(), path);
	int64_t bad = check_path(path);
	printf("half conversions: %s: %s\n", path, bad ? "WRONG" : "exact");
	ck_assert_msg(bad == 0, "%s: %lld wrong conversions", path, (long long)bad);
	fw_kernel_isa_force(NULL);
}
END_TEST

/* FW_KERNEL_ISA or FW_HALF_ISA (ctest runs this suite again with
 * FW_HALF_ISA=avx2) picked its path when libfw loaded (each test runs in a fork of that process);
 * without it, the CPU's best was picked, which forcing NULL gives again.
 * Unknown names are refused. */
START_TEST(test_choice)
{
	const char *env = getenv("FW_KERNEL_ISA") ? getenv("FW_KERNEL_ISA") : getenv("FW_HALF_ISA");
	const char *at_load = fw_kernel_isa();
	ck_assert_int_eq(fw_kernel_isa_force(NULL), FW_OK);
	const char *best = fw_kernel_isa();
	if (env)
		ck_assert_str_eq(at_load, env);
	else
		ck_assert_str_eq(at_load, best);
	ck_assert_int_eq(fw_kernel_isa_force("sse9"), FW_ERR_INVALID);
	ck_assert_str_eq(fw_kernel_isa(), best);
	ck_assert_str_eq(fw_kernel_isa_best(), best);
	printf("half conversions: this CPU's best path is %s\n", best);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("half_isa");
	TCase *tc = fwt_tcase("paths", 300);
	tcase_add_loop_test(tc, test_each_path, 0, N_PATHS);
	tcase_add_test(tc, test_choice);
	suite_add_tcase(s, tc);
	return fwt_run_suite(s);
}
