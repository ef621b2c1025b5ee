/* fw/quant.h - NF4 4-bit weights for QLoRA, as bitsandbytes stores them
 * (quantize_4bit / dequantize_4bit with quant_type "nf4", blocksize 64 and
 * compress_statistics, i.e. double quantization).
 *
 * n weights w[0..n) (a (out, in) matrix row-major) become
 *
 *   codes    ceil(n / 2) bytes: the NF4 index of each weight, element 2j in
 *            the high nibble of byte j (bitsandbytes' packing); an FW_Q4
 *            tensor of the weight's logical shape holds them;
 *   qabsmax  one byte per block of 64 weights: the block's absmax, minus
 *            the mean absmax (the offset), coded with bitsandbytes' signed
 *            dynamic 8-bit map (create_dynamic_map) in blocks of 256;
 *   stats    f32: the 256-block scales (absmax of |absmax - offset|), then
 *            the offset: fw_nf4_n_stats(n) values.
 *
 * A weight is code[codes] * absmax of its block, where a block's absmax is
 * map8[qabsmax] * scale + offset. Storage: 4 + 8/64 + 32/(64 * 256) bits a
 * weight, plus one float: 4.127 bits, QLoRA's figure.
 */
#ifndef FW_QUANT_H
#define FW_QUANT_H

#include "fw/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

struct fw_ctx;

#define FW_NF4_BLOCK 64          /* weights per absmax */
#define FW_NF4_STATS_BLOCK 256   /* absmax values per 8-bit scale */

/* The 16 NF4 values (QLoRA's table, ascending). */
extern const float fw_nf4_code[16];

int64_t fw_nf4_n_blocks(int64_t n);    /* ceil(n / 64): absmax values, bytes of qabsmax */
int64_t fw_nf4_n_stats(int64_t n);     /* ceil(n_blocks / 256) + 1 floats */

/* bitsandbytes' create_dynamic_map(signed=True): 256 ascending values. */
void fw_nf4_dynamic_map(float map[256]);

/* Quantizes w[0..n) into codes, qabsmax and stats (sizes above). Each
 * weight gets the NF4 value nearest to w * (1 / absmax) (ties to the lower
 * one, as bitsandbytes' decision tree); an all-zero block gets code 0. */
void fw_nf4_quantize(const float *w, int64_t n, uint8_t *codes, uint8_t *qabsmax,
		     float *stats);
/* The double quantization alone: nb block absmax values (overwritten)
 * into qabsmax (nb bytes) and stats (ceil(nb / 256) + 1 floats). */
void fw_nf4_quantize_absmax(float *absmax, int64_t nb, uint8_t *qabsmax, float *stats);
/* The absmax of blocks [b0, b0 + nb) of an n-weight tensor. */
void fw_nf4_absmax(const uint8_t *qabsmax, const float *stats, int64_t n, int64_t b0,
		   int64_t nb, float *absmax);
/* Weights [i0, i0 + m) of an n-weight tensor, dequantized into out. */
void fw_nf4_dequantize(const uint8_t *codes, const uint8_t *qabsmax, const float *stats,
		       int64_t n, int64_t i0, int64_t m, float *out);

/* The three tensors of one NF4 weight, as checkpoints and peft/lora hold
 * them: codes (FW_Q4, the weight's shape, named like the weight), qabsmax
 * (FW_Q4 [2 * n_blocks]: one byte per block, "<name>.nf4_absmax") and stats
 * (f32 [n_stats], "<name>.nf4_stats"). */
#define FW_NF4_ABSMAX_SUFFIX ".nf4_absmax"
#define FW_NF4_STATS_SUFFIX ".nf4_stats"

/* y = x W^T for x (..., in) f32 and W (out, in) in NF4: the weight is
 * dequantized a tile of rows at a time into the workspace (never whole)
 * and multiplied there; backward gives x its gradient (W is frozen: no
 * gradient flows to codes or statistics). Under ctx's autocast (bf16/f16)
 * the tiles, x and the output gradient are rounded to that dtype and the
 * products accumulate in f32. Codes that are f32 when it runs (peft/lora's
 * merge swaps in the dequantized weight) are multiplied as they are. */
struct fw_tensor *fw_nf4_linear(struct fw_ctx *ctx, struct fw_tensor *x,
				struct fw_tensor *codes, struct fw_tensor *qabsmax,
				struct fw_tensor *stats);

#ifdef __cplusplus
}
#endif
#endif
