/* half.h - blocks of bf16/f16 values to and from f32, for kernels that read
 * or write half-precision activations and compute in f32 (autocast).
 *
 * Kernels convert a block of BLK elements at a time into an f32 buffer on
 * their stack, so no full-size f32 copy of a tensor is ever made. Both
 * directions round as fw_convert does (nearest even). The instruction set
 * is picked at run time (isa.c's level: AVX512-BF16, AVX-512, AVX2 + F16C
 * or scalar; fw_kernel_isa in fw/machine.h).
 */
#ifndef FW_HALF_H
#define FW_HALF_H

#include <string.h>

#include "kernel.h"

/* The conversions of the level in use (isa.c), and of each level. */
struct fw_half_ops {
	void (*bf16_to_f32)(float *dst, const uint16_t *src, int64_t n);
	void (*f32_to_bf16)(uint16_t *dst, const float *src, int64_t n);
	void (*f16_to_f32)(float *dst, const uint16_t *src, int64_t n);
	void (*f32_to_f16)(uint16_t *dst, const float *src, int64_t n);
};
extern struct fw_half_ops fw_half_ops;
extern const struct fw_half_ops fw_half_ops_isa[FW_ISA_N];

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

/* One bf16 as f32, and one f32 rounded to bf16 (as fw_f32_to_bf16). */
static inline float bf16_value(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static inline uint16_t bf16_round(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	if ((u & 0x7fffffffu) > 0x7f800000u)          /* NaN: keep it quiet */
		return (uint16_t)((u >> 16) | 0x40u);
	return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* dst (n) = src (n) as f32. */
static inline void half_load(float *dst, const void *src, enum fw_dtype dt, int64_t n)
{
	if (dt == FW_F32)
		memcpy(dst, src, (size_t)n * sizeof(float));
	else if (n == 1 && dt == FW_BF16)      /* one element (half_get): inline */
		dst[0] = bf16_value(*(const uint16_t *)src);
	else if (n == 1)
		dst[0] = fw_f16_to_f32(*(const uint16_t *)src);
	else if (dt == FW_BF16)
		fw_half_ops.bf16_to_f32(dst, src, n);
	else
		fw_half_ops.f16_to_f32(dst, src, n);
}

/* dst (n) = src (n) rounded to dt. */
static inline void half_store(void *dst, enum fw_dtype dt, const float *src, int64_t n)
{
	if (dt == FW_F32)
		memcpy(dst, src, (size_t)n * sizeof(float));
	else if (n == 1 && dt == FW_BF16)
		*(uint16_t *)dst = bf16_round(src[0]);
	else if (n == 1)
		*(uint16_t *)dst = fw_f32_to_f16(src[0]);
	else if (dt == FW_BF16)
		fw_half_ops.f32_to_bf16(dst, src, n);
	else
		fw_half_ops.f32_to_f16(dst, src, n);
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
