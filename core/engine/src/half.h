/* half.h - blocks of bf16/f16 values to and from f32, for kernels that read
 * or write half-precision activations and compute in f32 (autocast).
 *
 * Kernels convert a block of BLK elements at a time into an f32 buffer on
 * their stack, so no full-size f32 copy of a tensor is ever made. Both
 * directions round as fw_convert does (nearest even). The ISA is the
 * build's: F16C (in x86-64-v3, the portable build's target) converts f16
 * eight at a time; without it, scalar code. bf16 is integer arithmetic in
 * `omp simd` loops, which vectorise on AVX2 and AVX-512 alike.
 */
#ifndef FW_HALF_H
#define FW_HALF_H

#include <string.h>
#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "kernel.h"

#define BLK 512                   /* elements per converted block */

static inline bool is_half(enum fw_dtype dt)
{
	return dt == FW_BF16 || dt == FW_F16;
}

/* Element i of a float tensor's data (f32, bf16 or f16). */
static inline void *elem_ptr(const void *p, enum fw_dtype dt, int64_t i)
{
	return (char *)p + i * (dt == FW_F32 ? 4 : 2);
}

/* dst (n) = src (n) as f32. */
static inline void half_load(float *dst, const void *src, enum fw_dtype dt, int64_t n)
{
	if (dt == FW_F32) {
		memcpy(dst, src, (size_t)n * sizeof(float));
		return;
	}
	const uint16_t *h = src;
	if (dt == FW_BF16) {
		#pragma omp simd
		for (int64_t i = 0; i < n; i++) {
			uint32_t u = (uint32_t)h[i] << 16;
			memcpy(dst + i, &u, 4);
		}
		return;
	}
	int64_t i = 0;
#if defined(__F16C__)
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
#endif
	for (; i < n; i++)
		dst[i] = fw_f16_to_f32(h[i]);
}

/* dst (n) = src (n) rounded to dt. */
static inline void half_store(void *dst, enum fw_dtype dt, const float *src, int64_t n)
{
	if (dt == FW_F32) {
		memcpy(dst, src, (size_t)n * sizeof(float));
		return;
	}
	uint16_t *h = dst;
	if (dt == FW_BF16) {
		#pragma omp simd
		for (int64_t i = 0; i < n; i++) {
			uint32_t u;
			memcpy(&u, src + i, 4);
			uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
			uint32_t q = (u >> 16) | 0x40u;               /* NaN stays quiet */
			h[i] = (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? q : r);
		}
		return;
	}
	int64_t i = 0;
#if defined(__F16C__)
	for (; i + 8 <= n; i += 8)
		_mm_storeu_si128((__m128i *)(h + i),
				 _mm256_cvtps_ph(_mm256_loadu_ps(src + i),
						 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
	for (; i < n; i++)
		h[i] = fw_f32_to_f16(src[i]);
}

/* dst (n, dtype dt) += src (n, f32), rounded once per element. */
static inline void half_accumulate(void *dst, enum fw_dtype dt, const float *src, int64_t n)
{
	int64_t nb = (n + BLK - 1) / BLK;
	#pragma omp parallel for schedule(static) if (n > PAR_MIN)
	for (int64_t b = 0; b < nb; b++) {
		float buf[BLK];
		int64_t i0 = b * BLK, m = min64(BLK, n - i0);
		half_load(buf, elem_ptr(dst, dt, i0), dt, m);
		#pragma omp simd
		for (int64_t j = 0; j < m; j++)
			buf[j] += src[i0 + j];
		half_store(elem_ptr(dst, dt, i0), dt, buf, m);
	}
}

/* dst (n, f32) = src (n, dtype dt), in parallel blocks. */
static inline void half_widen(float *dst, const void *src, enum fw_dtype dt, int64_t n)
{
	int64_t nb = (n + BLK - 1) / BLK;
	#pragma omp parallel for schedule(static) if (n > PAR_MIN)
	for (int64_t b = 0; b < nb; b++)
		half_load(dst + b * BLK, elem_ptr(src, dt, b * BLK), dt, min64(BLK, n - b * BLK));
}

/* One element as f32. */
static inline float half_get(const void *p, enum fw_dtype dt, int64_t i)
{
	float v;
	half_load(&v, elem_ptr(p, dt, i), dt, 1);
	return v;
}

#endif
