/* vmath.h - the one home of fw's vectorisable float math (exp, expm1,
 * sigmoid, tanh, erf), for kernels whose `omp simd` loops must vectorise.
 * Internal to libfw's engine (core/engine/src); tests/test_vmath.c checks the errors below
 * against libm in double.
 */
#ifndef FW_VMATH_H
#define FW_VMATH_H

#include <math.h>
#include <stdint.h>

/* glibc's expf/tanhf/erff do not vectorise (and clang then warns about the
 * `omp simd` loops). These do; errors measured against double over every
 * float in [-12, 12]: exp 1.1 ulp, expm1 0.9, sigmoid 2.8, tanh 2.5 and
 * erf 1.0 (1.2 on targets without FMA). */

/* e^x = 2^n (1 + p) for x <= 0, with x = n ln2 + r, |r| <= ln2/2 and
 * p = e^r - 1 from its Taylor series to r^7 (truncation < 2e-8 relative).
 * s = 2^n is built in the exponent bits, as in ARM optimized-routines. */
struct exp_parts {
	float s, p;
};

static inline struct exp_parts exp_split(float x)
{
	union { float f; uint32_t u; } z, s;
	float xc = x < -87.0f ? -87.0f : x;
	z.f = xc * 0x1.715476p+0f + 0x1.8p23f;          /* n in z's low bits */
	float n = z.f - 0x1.8p23f;
	float r = xc - n * 0x1.62e4p-1f;
	r = r - n * 0x1.7f7d1cp-20f;
	s.u = (z.u << 23) + 0x3f800000u;                /* 2^n */
	float p = 1.0f / 5040.0f;
	p = p * r + 1.0f / 720.0f;
	p = p * r + 1.0f / 120.0f;
	p = p * r + 1.0f / 24.0f;
	p = p * r + 1.0f / 6.0f;
	p = p * r + 0.5f;
	p = p * r * r + r;
	return (struct exp_parts){ s.f, p };
}

/* e^x for x <= 0; 0 below -87 (where e^x leaves the normal floats). */
static inline float vexp_neg(float x)
{
	struct exp_parts e = exp_split(x);
	return x < -87.0f ? 0.0f : e.s * e.p + e.s;
}

/* e^x - 1 for x <= 0, accurate near 0. */
static inline float vexpm1_neg(float x)
{
	struct exp_parts e = exp_split(x);
	return x < -87.0f ? -1.0f : e.s * e.p + (e.s - 1.0f);
}

/* 1 / (1 + e^-x), from e^-|x| so that both tails keep relative precision. */
static inline float vsigmoid(float x)
{
	float e = vexp_neg(-fabsf(x));
	float s = 1.0f / (1.0f + e);
	return x >= 0.0f ? s : e * s;
}

/* tanh|x| = -m / (2 + m) with m = e^(-2|x|) - 1. */
static inline float vtanh(float x)
{
	float m = vexpm1_neg(-2.0f * fabsf(x));
	return copysignf(-m / (2.0f + m), x);
}

/* erf(x) within 1 ulp: an odd polynomial below |x| = 0.9277, else
 * 1 - e^q(|x|). Coefficients by N. Juffa (public domain). Written as
 * a * b + c, which clang contracts to an FMA where the target has one
 * (fmaf would be a libm call per lane on targets without). */
static inline float verf(float x)
{
	float t = fabsf(x), s = x * x;
	float tc = t > 4.0f ? 4.0f : t;                 /* erf is 1 beyond */
	float r = -1.72853470e-5f * tc + 3.83197126e-4f;
	float u = -3.88396438e-3f * tc + 2.42546219e-2f;
	r = r * (tc * tc) + u;
	r = r * tc - 1.06777877e-1f;
	r = r * tc - 6.34846687e-1f;
	r = r * tc - 1.28717512e-1f;
	r = r * tc - tc;
	float big = copysignf(1.0f - vexp_neg(r), x);
	float q = -5.96761703e-4f;
	q = q * s + 4.99119423e-3f;
	q = q * s - 2.67681349e-2f;
	q = q * s + 1.12819925e-1f;
	q = q * s - 3.76125336e-1f;
	q = q * s + 1.28379166e-1f;
	q = q * x + x;
	return t > 0.927734375f ? big : q;
}

#endif
