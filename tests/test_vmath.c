/* test_vmath.c - core/engine/src/vmath.h, the one home of fw's vectorisable exp,
 * expm1, sigmoid, tanh and erf (softmax, cross-entropy, GELU and the other
 * kernels of ops_nn.c and ops_elementwise.c), against glibc's double
 * functions across each range. Bounds in float ulps of the
 * double result: the header documents exp 1.1, expm1 0.9, sigmoid 2.8,
 * tanh 2.5, erf 1.0 (1.2 without FMA); the asserts allow a little over
 * that, and the maxima are printed.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "harness.h"
#include "vmath.h"

/* |got - want| in ulps of want as a float (the float spacing at want;
 * the smallest normal's spacing below it). */
static double ulps(float got, double want)
{
	float w = (float)fabs(want);
	if (w < 0x1p-126f)
		w = 0x1p-126f;
	double ulp = (double)nextafterf(w, INFINITY) - (double)w;
	return fabs((double)got - want) / ulp;
}

/* The largest error of f against ref over [lo, hi]: 400001 evenly spaced
 * points, and the small magnitudes +-1.37 * 2^-k (k = 1..120) inside it. */
static double worst(float (*f)(float), double (*ref)(double), float lo, float hi, float *at)
{
	double w = 0;
	for (int i = 0; i <= 400000 + 240; i++) {
		float x = i <= 400000 ? lo + (hi - lo) * (float)i / 400000.0f :
			  ((i - 400001) % 2 ? -1.37f : 1.37f) * ldexpf(1.0f, -((i - 400001) / 2 + 1));
		if (x < lo || x > hi)
			continue;
		double u = ulps(f(x), ref((double)x));
		if (u > w || isnan(u)) {
			w = isnan(u) ? INFINITY : u;
			*at = x;
		}
	}
	return w;
}

static double sigmoid_d(double x) { return 1.0 / (1.0 + exp(-x)); }
static float exp_f(float x) { return vexp_neg(x); }
static float expm1_f(float x) { return vexpm1_neg(x); }
static float sigmoid_f(float x) { return vsigmoid(x); }
static float tanh_f(float x) { return vtanh(x); }
static float erf_f(float x) { return verf(x); }

START_TEST(test_bounds)
{
	static const struct {
		const char *name;
		float (*f)(float);
		double (*ref)(double);
		float lo, hi;
		double bound;
	} c[] = {
		{ "exp", exp_f, exp, -87.0f, 0.0f, 1.5 },
		{ "expm1", expm1_f, expm1, -87.0f, 0.0f, 1.5 },
		{ "sigmoid", sigmoid_f, sigmoid_d, -12.0f, 12.0f, 3.5 },
		{ "tanh", tanh_f, tanh, -12.0f, 12.0f, 3.0 },
		{ "erf", erf_f, erf, -12.0f, 12.0f, 1.5 },
	};
	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
		float at = 0;
		double w = worst(c[i].f, c[i].ref, c[i].lo, c[i].hi, &at);
		printf("test_vmath: %-7s max %.2f ulp (at %.9g)\n", c[i].name, w, at);
		ck_assert_msg(w <= c[i].bound, "%s: %.2f ulp at %.9g, bound %.1f", c[i].name, w, at,
			      c[i].bound);
	}
	/* the ends: below the normal floats exp is 0 and expm1 -1; -inf too */
	ck_assert_float_eq(vexp_neg(-100.0f), 0.0f);
	ck_assert_float_eq(vexp_neg(-INFINITY), 0.0f);
	ck_assert_float_eq(vexpm1_neg(-100.0f), -1.0f);
	ck_assert_float_eq(vexp_neg(0.0f), 1.0f);
	ck_assert(isnan(vexp_neg(NAN)));
}
END_TEST

int main(void)
{
	Suite *s = suite_create("vmath");
	TCase *tc = fwt_tcase("bounds", 120);
	tcase_add_test(tc, test_bounds);
	suite_add_tcase(s, tc);
	return fwt_run_suite(s);
}
