/* fw/runtime/generate.h - decoding with a KV cache.
 *
 * The arch builds a one-token decoding graph whose attention layers keep
 * their keys and values in per-layer caches of max_len positions, so each
 * new token costs one step over the cache, not a forward over the whole
 * sequence. The prompt is run through the cache (prefill) one position at a
 * time; then each step's logits get the repetition penalty and the sampler
 * (fw/runtime/sample.h), with the position as the RNG counter, so a prompt
 * and a key always give the same completion.
 *
 *     struct fw_rt_decoder d;
 *     fw_rt_decoder_open(&d, &slots, 256, seed, &err);     // then load weights:
 *     n = fw_rt_model_params(d.ctx, &params); fw_rt_model_load_weights(...);
 *     fw_rt_generate(&d, prompt, n_prompt, &opts, on_token, user, &err);
 *     fw_rt_decoder_close(&d);
 */
#ifndef FW_RUNTIME_GENERATE_H
#define FW_RUNTIME_GENERATE_H

#include "fw/runtime/model.h"
#include "fw/runtime/sample.h"
#include "fw/runtime/trainer.h"

#ifdef __cplusplus
extern "C" {
#endif

struct fw_rt_decoder {
	struct fw_ctx *ctx;               /* owns the model's tensors */
	struct fw_model m;                /* batch 1, one token a step */
	struct fw_graph *g;               /* tokens -> logits */
	struct fw_kv_cache *caches;
	int n_layers;
	struct fw_tensor *len, *mask;     /* the position, and which cache slots are seen */
	int64_t max_len;                  /* cache positions for real tokens */
	int64_t n_virtual;                /* virtual tokens (prompt tuning) in front of them */
	int V;                            /* the logits' vocabulary */
	struct fw_rt_cand *cands;         /* scratch of V */
	float *scores;
	uint8_t *seen;                    /* ids in the context so far */
};

/* Builds the decoding model of plugins (arch, attention, optional peft:
 * its freeze runs) with caches of max_len positions, plus the virtual
 * tokens of a prompt-tuning peft plugin (fw_model.n_virtual), which
 * fw_rt_generate runs first. Its parameters are
 * uninitialised: load them (fw_rt_model_load_weights) or init them.
 * FW_ERR_UNSUPPORTED: the arch cannot generate (no n_layers). */
enum fw_status fw_rt_decoder_open(struct fw_rt_decoder *d, const struct fw_plugin_slots *plugins,
				  int64_t max_len, uint64_t seed, struct fw_err *err);
/* The same with the model built under fw_ctx_set_autocast(precision):
 * FW_BF16 or FW_F16 runs its matmuls and activations in that dtype
 * (docs/mixed-precision.md), FW_F32 is fw_rt_decoder_open. */
enum fw_status fw_rt_decoder_open_as(struct fw_rt_decoder *d,
				     const struct fw_plugin_slots *plugins, int64_t max_len,
				     uint64_t seed, enum fw_dtype precision, struct fw_err *err);
void fw_rt_decoder_close(struct fw_rt_decoder *d);
/* The virtual tokens a decoder of plugins runs first (0 without a
 * prompt-tuning peft plugin): positions the prompt cannot use. */
enum fw_status fw_rt_decoder_virtual(const struct fw_plugin_slots *plugins, int64_t *n_virtual,
				     struct fw_err *err);

struct fw_rt_gen_opts {
	int64_t max_new;                  /* tokens to generate at most */
	int n_sample;                     /* ids that may be sampled (0: V) */
	double temperature;               /* 0: greedy */
	int top_k;                        /* 0: all */
	double top_p;                     /* 1: all */
	double penalty;                   /* repetition penalty; 1: none */
	uint64_t key;                     /* the sampler's RNG key */
};

/* Called with each generated token; FW_RT_STOP ends the generation (EOS, a
 * stop string: the caller decides). */
typedef enum fw_rt_action (*fw_rt_token_fn)(void *user, int32_t token);

/* Runs prompt[0..n) from an empty cache, then generates up to max_new
 * tokens. FW_ERR_INVALID: n == 0, a prompt id outside the vocabulary, or
 * n + max_new more than the cache holds; FW_ERR_INTERNAL: a kernel failed. */
enum fw_status fw_rt_generate(struct fw_rt_decoder *d, const int32_t *prompt, int64_t n,
			      const struct fw_rt_gen_opts *o, fw_rt_token_fn on_token, void *user,
			      struct fw_err *err);

#ifdef __cplusplus
}
#endif
#endif
