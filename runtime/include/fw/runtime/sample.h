/* fw/runtime/sample.h - choosing the next token from logits.
 *
 * Greedy at temperature 0; otherwise the logits divided by the temperature,
 * the top_k most likely (0: all), then the smallest prefix of them whose
 * probability reaches top_p (nucleus), one drawn with the counter-based RNG:
 * the draw depends only on (key, counter), so a seed and a position always
 * give the same token. Ties go to the lower id.
 */
#ifndef FW_RUNTIME_SAMPLE_H
#define FW_RUNTIME_SAMPLE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Scratch of the sampler: V of them. */
struct fw_rt_cand {
	float p;
	int id;
};

/* The first index of the largest of x[0..n) (greedy decoding, accuracy). */
int64_t fw_rt_argmax(const float *x, int64_t n);
/* log(sum(exp(x[0..n)))), in double, shifted by the maximum. */
double fw_rt_logsumexp(const float *x, int64_t n);

/* The sampled id of logits[0..V). */
int fw_rt_sample(const float *logits, int V, double temperature, int top_k, double top_p,
		 uint64_t key, uint64_t counter, struct fw_rt_cand *scratch);

/* CTRL's repetition penalty, as Hugging Face's processor applies it before
 * the temperature: out[i] = logits[i] for ids not seen, logits[i] / penalty
 * for seen ids with a positive logit, logits[i] * penalty otherwise. */
void fw_rt_repetition_penalty(const float *logits, const uint8_t *seen, int n, double penalty,
			      float *out);

#ifdef __cplusplus
}
#endif
#endif
