/* tensor.c - dtype facts, shapes, strides and precision conversion. */
#include <stdio.h>
#include <string.h>

#include "half.h"
#include "internal.h"

static const struct {
	const char *name;
	size_t size;
} dtypes[FW_DTYPE_COUNT] = {
	[FW_F32] = { "f32", 4 },
	[FW_BF16] = { "bf16", 2 },
	[FW_F16] = { "f16", 2 },
	[FW_I32] = { "i32", 4 },
	[FW_Q4] = { "q4", 1 },
};

size_t fw_dtype_size(enum fw_dtype t)
{
	return (unsigned)t < FW_DTYPE_COUNT ? dtypes[t].size : 0;
}

const char *fw_dtype_name(enum fw_dtype t)
{
	return (unsigned)t < FW_DTYPE_COUNT ? dtypes[t].name : "?";
}

int fw_dtype_from_name(const char *name)
{
	for (int i = 0; i < FW_DTYPE_COUNT; i++)
		if (strcmp(name, dtypes[i].name) == 0)
			return i;
	return -1;
}

int64_t fw_nelem(const struct fw_tensor *t)
{
	int64_t n = 1;
	for (int i = 0; i < t->ndim; i++)
		n *= t->ne[i];
	return n;
}

size_t fw_nbytes(const struct fw_tensor *t)
{
	int64_t n = fw_nelem(t);
	if (t->dtype == FW_Q4)
		return (size_t)(n + 1) / 2;
	return (size_t)n * fw_dtype_size(t->dtype);
}

void fw_set_contiguous_strides(struct fw_tensor *t)
{
	int64_t s = 1;
	for (int i = t->ndim - 1; i >= 0; i--) {
		t->nb[i] = s;
		s *= t->ne[i];
	}
}

bool fw_is_contiguous(const struct fw_tensor *t)
{
	int64_t s = 1;
	for (int i = t->ndim - 1; i >= 0; i--) {
		if (t->ne[i] != 1 && t->nb[i] != s)
			return false;
		s *= t->ne[i];
	}
	return true;
}

bool fw_same_shape(const struct fw_tensor *a, const struct fw_tensor *b)
{
	if (a->ndim != b->ndim)
		return false;
	for (int i = 0; i < a->ndim; i++)
		if (a->ne[i] != b->ne[i])
			return false;
	return true;
}

const char *fw_shape_str(const struct fw_tensor *t, char *buf, size_t len)
{
	size_t o = 0;
	o += snprintf(buf + o, len - o, "[");
	for (int i = 0; i < t->ndim && o < len; i++)
		o += snprintf(buf + o, len - o, i ? ", %lld" : "%lld", (long long)t->ne[i]);
	if (o < len)
		snprintf(buf + o, len - o, "]");
	return buf;
}

/* --- precision conversion --------------------------------------------------- */

uint16_t fw_f32_to_bf16(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	if ((u & 0x7fffffffu) > 0x7f800000u)         /* NaN: keep it quiet */
		return (uint16_t)((u >> 16) | 0x40);
	u += 0x7fffu + ((u >> 16) & 1u);              /* round to nearest even */
	return (uint16_t)(u >> 16);
}

float fw_bf16_to_f32(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, 4);
	return f;
}

/* IEEE half conversion in integer arithmetic (round to nearest even). */
uint16_t fw_f32_to_f16(float f)
{
	uint32_t x;
	memcpy(&x, &f, 4);
	uint32_t sign = (x >> 16) & 0x8000u;
	uint32_t absx = x & 0x7fffffffu;
	if (absx >= 0x7f800000u)                      /* inf or NaN */
		return (uint16_t)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0));
	if (absx >= 0x477ff000u)                      /* rounds past 65504 */
		return (uint16_t)(sign | 0x7c00u);
	if (absx < 0x38800000u) {                     /* subnormal or zero half */
		if (absx < 0x33000000u)
			return (uint16_t)sign;
		uint32_t e = absx >> 23, m = (absx & 0x7fffffu) | 0x800000u;
		int shift = 126 - (int)e;             /* 14..24 */
		uint32_t h = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
		if (rem > half || (rem == half && (h & 1)))
			h++;
		return (uint16_t)(sign | h);
	}
	uint32_t h = ((absx >> 13) - (112u << 10));   /* rebias exponent 127 -> 15 */
	uint32_t rem = absx & 0x1fffu;
	if (rem > 0x1000u || (rem == 0x1000u && (h & 1)))
		h++;
	return (uint16_t)(sign | h);
}

float fw_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ffu, x;
	if (e == 0x1f) {        /* inf, or a NaN made quiet (as F16C's vcvtph2ps) */
		x = sign | 0x7f800000u | (m << 13) | (m ? 0x400000u : 0);
	} else if (e) {
		x = sign | ((e + 112u) << 23) | (m << 13);
	} else if (m) {                               /* subnormal: normalise */
		e = 113;
		while (!(m & 0x400u)) {
			m <<= 1;
			e--;
		}
		x = sign | (e << 23) | ((m & 0x3ffu) << 13);
	} else {
		x = sign;
	}
	float f;
	memcpy(&f, &x, 4);
	return f;
}

static float load_elem(const void *p, enum fw_dtype t, int64_t i)
{
	switch (t) {
	case FW_F32: return ((const float *)p)[i];
	case FW_BF16: return fw_bf16_to_f32(((const uint16_t *)p)[i]);
	case FW_F16: return fw_f16_to_f32(((const uint16_t *)p)[i]);
	case FW_I32: return (float)((const int32_t *)p)[i];
	default: FW_ASSERT(!"load_elem: unsupported dtype"); return 0;
	}
}

void fw_convert(void *dst, enum fw_dtype dt, const void *src, enum fw_dtype st, int64_t n)
{
	if (dt == st) {
		memcpy(dst, src, (size_t)n * fw_dtype_size(dt));
		return;
	}
	/* The mixed-precision paths: half.h's conversions of the CPU's
	 * instruction set (half_isa.c), in parallel blocks. */
	if ((st == FW_F32 && is_half(dt)) || (is_half(st) && dt == FW_F32)) {
		enum { CHUNK = 16384 };
		if (n <= CHUNK) {       /* a row: no OpenMP region (about 1 us a call) */
			if (st == FW_F32)
				half_store(dst, dt, src, n);
			else
				half_load(dst, src, st, n);
			return;
		}
		int64_t nb = (n + CHUNK - 1) / CHUNK;
		#pragma omp parallel for schedule(static) if (n > 65536)
		for (int64_t b = 0; b < nb; b++) {
			int64_t i0 = b * CHUNK, m = n - i0 < CHUNK ? n - i0 : CHUNK;
			if (st == FW_F32)
				half_store(elem_ptr(dst, dt, i0), dt, (const float *)src + i0, m);
			else
				half_load((float *)dst + i0, elem_ptr(src, st, i0), st, m);
		}
		return;
	}
	#pragma omp parallel for schedule(static) if (n > 65536)
	for (int64_t i = 0; i < n; i++) {
		float v = load_elem(src, st, i);
		switch (dt) {
		case FW_F32: ((float *)dst)[i] = v; break;
		case FW_BF16: ((uint16_t *)dst)[i] = fw_f32_to_bf16(v); break;
		case FW_F16: ((uint16_t *)dst)[i] = fw_f32_to_f16(v); break;
		case FW_I32: ((int32_t *)dst)[i] = (int32_t)v; break;
		default: FW_ASSERT(!"fw_convert: unsupported dtype");
		}
	}
}
