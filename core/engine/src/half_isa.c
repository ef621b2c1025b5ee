/* half_isa.c - the f32 <-> bf16/f16 block conversions (half.h, fw_convert),
 * one set of kernels per level of isa.c's dispatcher:
 *
 *   avx512bf16  AVX512-BF16's vcvtneps2bf16 rounds f32 to bf16 (a block
 *               with an input below 2^-126, which it flushes to zero, is
 *               rounded in integer code instead); the rest as avx512
 *   avx512      AVX-512F/BW: 16 lanes; f16 through vcvtph2ps/vcvtps2ph
 *   avx2        AVX2 + F16C: 8 lanes
 *   scalar      fw_f32_to_bf16 and friends (tensor.c), an element at a time
 *
 * Every path rounds to nearest even and keeps NaNs quiet and signed, as
 * fw_f32_to_bf16/fw_f32_to_f16 do; tests/test_half_isa.c checks each one the
 * CPU has against exact references. */
#include <immintrin.h>
#include <string.h>

#include "half.h"

/* --- scalar ------------------------------------------------------------------ */

static void bf16_to_f32_scalar(float *dst, const uint16_t *src, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		dst[i] = fw_bf16_to_f32(src[i]);
}

static void f32_to_bf16_scalar(uint16_t *dst, const float *src, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		dst[i] = fw_f32_to_bf16(src[i]);
}

static void f16_to_f32_scalar(float *dst, const uint16_t *src, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		dst[i] = fw_f16_to_f32(src[i]);
}

static void f32_to_f16_scalar(uint16_t *dst, const float *src, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		dst[i] = fw_f32_to_f16(src[i]);
}

/* --- AVX2 + F16C ------------------------------------------------------------- */

#define AVX2 __attribute__((target("avx2,f16c")))

AVX2 static void bf16_to_f32_avx2(float *dst, const uint16_t *src, int64_t n)
{
	int64_t i = 0;
	for (; i + 8 <= n; i += 8) {
		__m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i)));
		_mm256_storeu_si256((__m256i *)(dst + i), _mm256_slli_epi32(w, 16));
	}
	bf16_to_f32_scalar(dst + i, src + i, n - i);
}

/* Eight f32 bit patterns rounded to bf16 (nearest even, NaN quiet), in the
 * low 16 bits of each lane. */
AVX2 static inline __m256i round_bf16_avx2(__m256i u)
{
	__m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
	__m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)),
						       lsb), 16);
	__m256i q = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
	__m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
					 _mm256_set1_epi32(0x7f800000));
	return _mm256_blendv_epi8(r, q, nan);
}

AVX2 static void f32_to_bf16_avx2(uint16_t *dst, const float *src, int64_t n)
{
	int64_t i = 0;
	for (; i + 16 <= n; i += 16) {
		__m256i a = round_bf16_avx2(_mm256_loadu_si256((const __m256i *)(src + i)));
		__m256i b = round_bf16_avx2(_mm256_loadu_si256((const __m256i *)(src + i + 8)));
		/* packus works per 128-bit lane: put the halves back in order */
		__m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xd8);
		_mm256_storeu_si256((__m256i *)(dst + i), p);
	}
	f32_to_bf16_scalar(dst + i, src + i, n - i);
}

AVX2 static void f16_to_f32_avx2(float *dst, const uint16_t *src, int64_t n)
{
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
	f16_to_f32_scalar(dst + i, src + i, n - i);
}

AVX2 static void f32_to_f16_avx2(uint16_t *dst, const float *src, int64_t n)
{
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm_storeu_si128((__m128i *)(dst + i),
				 _mm256_cvtps_ph(_mm256_loadu_ps(src + i),
						 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
	f32_to_f16_scalar(dst + i, src + i, n - i);
}

/* --- AVX-512F/BW -------------------------------------------------------------- */

#define AVX512 __attribute__((target("avx512f,avx512bw")))

AVX512 static void bf16_to_f32_avx512(float *dst, const uint16_t *src, int64_t n)
{
	int64_t i = 0;
	for (; i + 16 <= n; i += 16) {
		__m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(src + i)));
		_mm512_storeu_si512(dst + i, _mm512_slli_epi32(w, 16));
	}
	bf16_to_f32_scalar(dst + i, src + i, n - i);
}

AVX512 static inline __m512i round_bf16_avx512(__m512i u)
{
	__m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
	__m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
						       lsb), 16);
	__m512i q = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
	__mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
						_mm512_set1_epi32(0x7f800000));
	return _mm512_mask_mov_epi32(r, nan, q);
}

AVX512 static void f32_to_bf16_avx512(uint16_t *dst, const float *src, int64_t n)
{
	int64_t i = 0;
	for (; i + 16 <= n; i += 16) {
		__m512i r = round_bf16_avx512(_mm512_loadu_si512(src + i));
		_mm256_storeu_si256((__m256i *)(dst + i), _mm512_cvtepi32_epi16(r));
	}
	f32_to_bf16_scalar(dst + i, src + i, n - i);
}

AVX512 static void f16_to_f32_avx512(float *dst, const uint16_t *src, int64_t n)
{
	int64_t i = 0;
	for (; i + 16 <= n; i += 16)
		_mm512_storeu_ps(dst + i,
				 _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
	f16_to_f32_scalar(dst + i, src + i, n - i);
}

AVX512 static void f32_to_f16_avx512(uint16_t *dst, const float *src, int64_t n)
{
	int64_t i = 0;
	for (; i + 16 <= n; i += 16)
		_mm256_storeu_si256((__m256i *)(dst + i),
				    _mm512_cvtps_ph(_mm512_loadu_ps(src + i),
						    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
	f32_to_f16_scalar(dst + i, src + i, n - i);
}

/* --- AVX512-BF16 ---------------------------------------------------------------- */

#define AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512bf16")))

AVX512BF16 static void f32_to_bf16_avx512bf16(uint16_t *dst, const float *src, int64_t n)
{
	int64_t i = 0;
	for (; i + 16 <= n; i += 16) {
		__m512i u = _mm512_loadu_si512(src + i);
		__m256i h;
		__m256bh b = _mm512_cvtneps_pbh(_mm512_castsi512_ps(u));
		memcpy(&h, &b, sizeof(h));
		/* vcvtneps2bf16 treats inputs below 2^-126 as zero: round those
		 * (rare: exponent field 0, nonzero fraction) in integer code */
		__mmask16 tiny = _mm512_test_epi32_mask(u, _mm512_set1_epi32(0x007fffff)) &
				 ~_mm512_test_epi32_mask(u, _mm512_set1_epi32(0x7f800000));
		if (tiny)
			h = _mm512_cvtepi32_epi16(round_bf16_avx512(u));
		_mm256_storeu_si256((__m256i *)(dst + i), h);
	}
	f32_to_bf16_scalar(dst + i, src + i, n - i);
}

/* --- one row per level (isa.c picks it) ---------------------------------------- */

const struct fw_half_ops fw_half_ops_isa[FW_ISA_N] = {
	[FW_ISA_SCALAR] = { bf16_to_f32_scalar, f32_to_bf16_scalar, f16_to_f32_scalar,
			    f32_to_f16_scalar },
	[FW_ISA_AVX2] = { bf16_to_f32_avx2, f32_to_bf16_avx2, f16_to_f32_avx2, f32_to_f16_avx2 },
	[FW_ISA_AVX512] = { bf16_to_f32_avx512, f32_to_bf16_avx512, f16_to_f32_avx512,
			    f32_to_f16_avx512 },
	[FW_ISA_AVX512BF16] = { bf16_to_f32_avx512, f32_to_bf16_avx512bf16, f16_to_f32_avx512,
				f32_to_f16_avx512 },
};

/* Scalar until isa.c's constructor picks the level. */
struct fw_half_ops fw_half_ops = { bf16_to_f32_scalar, f32_to_bf16_scalar, f16_to_f32_scalar,
				   f32_to_f16_scalar };
