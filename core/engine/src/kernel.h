/* kernel.h - private helpers shared by the op kernels. */
#ifndef FW_KERNEL_H
#define FW_KERNEL_H

#include <omp.h>

#include "internal.h"

/* UBSan's checks keep clang from vectorising `omp simd` loops, and -Werror
 * would turn the resulting -Wpass-failed into a failed sanitizer build. */
#if defined(__clang__) && defined(__has_feature)
#if __has_feature(undefined_behavior_sanitizer)
#pragma clang diagnostic ignored "-Wpass-failed"
#endif
#endif

/* AVX-512 copies of hot loops (GELU), compiled beside the build's ISA
 * (x86-64-v3 by default) and chosen at run time by fw_kernel_avx512()
 * (isa.c's level). A build for an AVX-512 -march has no separate copy:
 * its own code is AVX-512 already, whatever the level. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__AVX512F__)
#define FW_HAVE_AVX512_KERNELS 1
#if defined(__clang__)
#define FW_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq")))
#else
#define FW_TARGET_AVX512 \
	__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,prefer-vector-width=512")))
#endif
#else
#define FW_HAVE_AVX512_KERNELS 0
#endif

#define PAR_MIN 32768   /* elements below which a kernel runs on one thread */

static inline int64_t min64(int64_t a, int64_t b)
{
	return a < b ? a : b;
}

static inline size_t align64(size_t n)
{
	return (n + 63) & ~(size_t)63;
}

/* Start of thread it's share of [0, n), cut at multiples of 16 floats so
 * that two threads never write the same cache line. */
static inline int64_t split_at(int64_t n, int it, int nt)
{
	return it >= nt ? n : (n * it / nt) & ~(int64_t)15;
}

/* Number of threads whose per-thread scratch of `each` bytes fits in ws
 * (the workspace was sized with the thread count at plan time). */
static inline int ws_threads(const struct fw_exec *ex, size_t each)
{
	int nt = omp_get_max_threads();
	size_t fit = ex && ex->ws ? ex->ws_size / each : 0;
	return (size_t)nt < fit ? nt : (int)fit;
}

static inline enum fw_status check_f32(const char *op, const char *what,
				       const struct fw_tensor *t, struct fw_err *err)
{
	if (!t)
		return fw_errorf(err, FW_ERR_INVALID, "%s: %s is missing", op, what);
	if (t->dtype != FW_F32)
		return fw_errorf(err, FW_ERR_SHAPE, "%s: %s is %s, expected f32", op, what,
				 fw_dtype_name(t->dtype));
	return FW_OK;
}

/* log(sum(exp(x))) of a row of V values of dtype dt (f32, bf16, f16), read
 * once (ops_nn.c); with e and bm non-NULL it also leaves exp(x - block max)
 * in e and the block maxima in bm. */
double fw_row_logsumexp(const void *x, enum fw_dtype dt, int64_t V, float *e, float *bm);

/* Axis in [0, ndim), or -1 when out of range; negative counts from the end. */
static inline int axis_of(int axis, int ndim)
{
	int ax = axis < 0 ? axis + ndim : axis;
	return ax >= 0 && ax < ndim ? ax : -1;
}

#endif
