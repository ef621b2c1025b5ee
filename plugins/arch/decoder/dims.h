/* dims.h - the sizes arch/decoder accepts, in one place: the ranges of its
 * options (decoder.c) and the rules between them. fwrun import applies the
 * same rules to a Hugging Face config.json (tools/fwrun/hf.c), so a file it
 * writes is one the plugin builds. Header only: the plugin and fwrun share
 * no library code.
 */
#ifndef FW_DECODER_DIMS_H
#define FW_DECODER_DIMS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define DECODER_LAYER_MAX 1024
#define DECODER_HEAD_MAX 1024
#define DECODER_EMBD_MAX 65536
#define DECODER_VOCAB_MIN 2
#define DECODER_VOCAB_MAX (1 << 24)
#define DECODER_POS_MAX (1 << 20)
#define DECODER_EPS_MAX 1.0
#define DECODER_MLP_MULT 4              /* the MLP is DECODER_MLP_MULT * n_embd wide */

struct decoder_dims {
	int64_t n_layer, n_head, n_embd, vocab, n_pos;
	double eps;
};

/* Checks d; on the first broken rule writes "KEY VALUE is ..." to msg, with
 * the keys named by key[] (n_layer, n_head, n_embd, vocab, n_pos, eps: the
 * options' or config.json's names), and returns false. */
static inline bool decoder_dims_check(const struct decoder_dims *d, const char *const key[6],
				      char *msg, size_t len)
{
	const int64_t v[5] = { d->n_layer, d->n_head, d->n_embd, d->vocab, d->n_pos };
	const int64_t lo[5] = { 1, 1, 1, DECODER_VOCAB_MIN, 1 };
	const int64_t hi[5] = { DECODER_LAYER_MAX, DECODER_HEAD_MAX, DECODER_EMBD_MAX,
				DECODER_VOCAB_MAX, DECODER_POS_MAX };
	for (int i = 0; i < 5; i++) {
		if (v[i] <= 0) {
			snprintf(msg, len, "%s %lld is not positive", key[i], (long long)v[i]);
			return false;
		}
		if (v[i] < lo[i] || v[i] > hi[i]) {
			snprintf(msg, len, "%s %lld is out of range [%lld, %lld]", key[i],
				 (long long)v[i], (long long)lo[i], (long long)hi[i]);
			return false;
		}
	}
	if (d->n_embd % d->n_head) {
		snprintf(msg, len, "%s %lld is not divisible by %s %lld", key[2],
			 (long long)d->n_embd, key[1], (long long)d->n_head);
		return false;
	}
	/* Positive in float32 too: the norms compute in f32. NaN fails both. */
	if (!(d->eps > 0 && d->eps <= DECODER_EPS_MAX && (float)d->eps > 0)) {
		snprintf(msg, len, "%s %.9g is out of range (0, %g]%s", key[5], d->eps,
			 DECODER_EPS_MAX, d->eps > 0 && (float)d->eps == 0 ? " (0 in float32)" : "");
		return false;
	}
	return true;
}

/* The MLP width: ffn if set, else Megatron's default, 4h, or 2/3 of it
 * rounded down to a multiple of 64 for SwiGLU (0 when that is none). */
static inline int64_t decoder_ffn(int64_t ffn, int64_t n_embd, bool swiglu)
{
	if (ffn)
		return ffn;
	return swiglu ? (DECODER_MLP_MULT * n_embd * 2 / 3) / 64 * 64 : DECODER_MLP_MULT * n_embd;
}

#endif
