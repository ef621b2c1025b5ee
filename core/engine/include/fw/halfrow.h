/* fw/halfrow.h - f32, bf16 or f16 tensor data read as f32, for kernels
 * (plugins' too) of ops flagged FW_OPF_HALF (fw/op.h) that compute in f32:
 * an element, or a row of n elements widened into the caller's buffer
 * (contiguous rows through fw_convert's vector kernels). attention/flash
 * and attention/sparse read their q, k, v and half KV caches in place
 * through these. */
#ifndef FW_HALFROW_H
#define FW_HALFROW_H

#include <string.h>

#include "fw/tensor.h"

/* Element i (in elements) of data of dtype dt, as f32. */
static inline float fw_elem_f32(const void *data, enum fw_dtype dt, int64_t i)
{
	if (dt == FW_F32)
		return ((const float *)data)[i];
	uint16_t u = ((const uint16_t *)data)[i];
	return dt == FW_BF16 ? fw_bf16_to_f32(u) : fw_f16_to_f32(u);
}

/* n elements of data from element at, es apart, into o (f32). bf16 is
 * widened inline (a shift: short rows, e.g. a head's, cost no call); f16
 * rows through fw_convert. */
static inline void fw_row_f32(const void *data, enum fw_dtype dt, int64_t at, int64_t es,
			      int64_t n, float *o)
{
	if (dt == FW_F32 && es == 1) {
		memcpy(o, (const float *)data + at, sizeof(float) * (size_t)n);
	} else if (dt == FW_BF16) {
		const uint16_t *h = (const uint16_t *)data + at;
		for (int64_t e = 0; e < n; e++) {
			uint32_t u = (uint32_t)h[e * es] << 16;
			memcpy(o + e, &u, sizeof(u));
		}
	} else if (es == 1) {
		fw_convert(o, FW_F32, (const char *)data + at * (int64_t)fw_dtype_size(dt), dt, n);
	} else {
		for (int64_t e = 0; e < n; e++)
			o[e] = fw_elem_f32(data, dt, at + e * es);
	}
}

/* The same row as f32: a pointer into data where it already is (f32,
 * contiguous), else widened into tmp (n floats). */
static inline const float *fw_row_as_f32(const void *data, enum fw_dtype dt, int64_t at,
					 int64_t es, int64_t n, float *tmp)
{
	if (dt == FW_F32 && es == 1)
		return (const float *)data + at;
	fw_row_f32(data, dt, at, es, n, tmp);
	return tmp;
}

#endif
