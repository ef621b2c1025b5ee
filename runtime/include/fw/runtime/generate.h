/* fw/runtime/generate.h - decoding with a KV cache.
 *
 * The arch builds a decoding graph whose attention layers keep their keys
 * and values in per-layer caches of max_len positions, so each new token
 * costs one step over the cache, not a forward over the whole sequence.
 * Every row has its own cache slots (fw_kv_cache.len of shape (rows, T),
 * ABI 1.5): a row's position is its own, and rows of different prompt
 * lengths never wait for each other.
 *
 * Prefill: a prompt runs through a batch-1 model of T tokens in one forward
 * (chunks of up to FW_RT_PREFILL_MAX tokens, causal inside the chunk), which
 * writes every layer's cache; its rows then move into the prompt's row of
 * the decoding caches, and decoding goes on one token a step for all rows.
 * The prefill models share the decoder's weights; they are built on the
 * first generation (the weights must be loaded by then). With a peft plugin
 * there is no prefill model (a peft instance keeps per-model state, e.g.
 * LoRA's merge switches a node of the model it built): a prompt goes
 * through the decoding graph a token a step, in its own row, while the
 * other rows decode.
 * Each step's logits get the repetition penalty and the sampler
 * (fw/runtime/sample.h), with the position as the RNG counter, so a prompt
 * and a key always give the same completion.
 *
 * Batches: fw_rt_generate_rows takes any number of prompts; a decoder
 * opened for R rows decodes up to R together, and a row that stops (its
 * max_new, or FW_RT_STOP from the callback) takes the next prompt at once
 * (continuous batching): the newcomer's prefill runs between two steps of
 * the others. Each prompt's prefill is the batch-1 one, and its decoding
 * row sees only its own slots, so its completion is the batch-1 completion
 * of that prompt with the same key.
 * Virtual tokens (prompt tuning, P-tuning): the peft plugin takes them one
 * token a step for all rows together (fw_model.virtual_select), so such a
 * decoder reads prompts one token a step, R prompts at a time, every row
 * from position 0 (a short prompt starts generating while a longer one is
 * still being read); the completions are still the batch-1 ones.
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

#define FW_RT_PREFILL_MAX 512             /* prompt tokens one prefill forward reads */
#define FW_RT_PREFILL_SIZES 4             /* chunk lengths: 16, 64, 256, 512 */

/* A batch-1 model reading T prompt tokens a forward into its own caches
 * (one prompt's worth, shared by every chunk length). */
struct fw_rt_prefill {
	struct fw_ctx *ctx;
	struct fw_model m;
	struct fw_graph *g;
	struct fw_kv_cache *caches;
	struct fw_tensor *slots;          /* (1, T) i32: each token's position */
	int64_t T;
};

struct fw_rt_decoder {
	struct fw_ctx *ctx;               /* owns the model's tensors */
	struct fw_model m;                /* rows, one token a step */
	struct fw_graph *g;               /* tokens -> logits */
	struct fw_kv_cache *caches;
	int n_layers;
	int rows;                         /* prompts decoded together */
	struct fw_tensor *slots;          /* (rows, 1) i32: each row's position this step */
	int64_t max_len;                  /* cache positions for real tokens */
	int64_t n_virtual;                /* virtual tokens (prompt tuning) in front of them */
	int64_t n_prefix;                 /* prefix tuning's key/value rows before those */
	int V;                            /* the logits' vocabulary */
	struct fw_rt_cand *cands;         /* scratch of V */
	float *scores;
	uint8_t *seen;                    /* rows x V: ids in each row's context so far */
	/* prefill models, built on first use from these (plugins must outlive d) */
	const struct fw_plugin_slots *plugins;
	uint64_t seed;
	enum fw_dtype precision;
	struct fw_rt_prefill pre[FW_RT_PREFILL_SIZES];
	int n_pre;
};

/* Builds the decoding model of plugins (arch, attention, optional peft:
 * its freeze runs; arch and attention built for ABI 1.5 or later, else
 * FW_ERR_UNSUPPORTED naming the plugin) with caches of max_len positions, plus the virtual
 * tokens of a prompt-tuning peft plugin (fw_model.n_virtual), which
 * fw_rt_generate runs first. Its parameters are
 * uninitialised: load them (fw_rt_model_load_weights) or init them.
 * FW_ERR_UNSUPPORTED: the arch cannot generate (no n_layers). */
enum fw_status fw_rt_decoder_open(struct fw_rt_decoder *d, const struct fw_plugin_slots *plugins,
				  int64_t max_len, uint64_t seed, struct fw_err *err);
/* The same for rows prompts decoded together (fw_rt_generate_rows); the
 * caches hold rows x max_len positions. FW_ERR_INVALID: rows < 1. */
enum fw_status fw_rt_decoder_open_rows(struct fw_rt_decoder *d,
				       const struct fw_plugin_slots *plugins, int rows,
				       int64_t max_len, uint64_t seed, struct fw_err *err);
/* Either with the model built under fw_ctx_set_autocast(precision):
 * FW_BF16 or FW_F16 runs its matmuls and activations in that dtype
 * (docs/mixed-precision.md), FW_F32 is fw_rt_decoder_open_rows. */
enum fw_status fw_rt_decoder_open_as(struct fw_rt_decoder *d,
				     const struct fw_plugin_slots *plugins, int rows,
				     int64_t max_len, uint64_t seed, enum fw_dtype precision,
				     struct fw_err *err);
void fw_rt_decoder_close(struct fw_rt_decoder *d);
/* Bytes of d's key/value caches (all layers, rows and positions) at their
 * dtype, which *dtype gets (f32, or the precision's bf16/f16); 0 before
 * the first layer's cache exists. */
size_t fw_rt_decoder_cache_bytes(const struct fw_rt_decoder *d, enum fw_dtype *dtype);
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

/* One prompt of a batch. */
struct fw_rt_gen_row {
	const int32_t *prompt;
	int64_t n;
	int64_t max_new;                  /* this row's limit; 0: the options' max_new */
};

/* Called with each token generated for row (0..n_rows), and its
 * log-probability under the model: the log-softmax of the step's logits
 * over the whole vocabulary, before the penalty and the temperature.
 * FW_RT_STOP ends that row only. Per row, the calls come in order. */
typedef enum fw_rt_action (*fw_rt_row_token_fn)(void *user, int row, int32_t token,
						 float logprob);

/* Runs the prompts rows[0..n_rows), up to d->rows at a time, each from an
 * empty cache as fw_rt_generate runs one prompt, until every one has
 * stopped; a stopped row takes the next prompt. on_token's row is the
 * prompt's index in rows. FW_ERR_INVALID as fw_rt_generate's, naming the
 * row, or n_rows < 1; FW_ERR_INTERNAL: a kernel failed. */
enum fw_status fw_rt_generate_rows(struct fw_rt_decoder *d, const struct fw_rt_gen_row *rows,
				   int n_rows, const struct fw_rt_gen_opts *o,
				   fw_rt_row_token_fn on_token, void *user, struct fw_err *err);

#ifdef __cplusplus
}
#endif
#endif
