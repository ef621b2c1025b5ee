/* fw/runtime/seq2seq.h - generation with an encoder-decoder (arch/encdec).
 *
 * The source runs through the encoder once (the arch's cross_out graph:
 * each decoder layer's cross-attention K and V), copied into the decoding
 * model's cross_in inputs; the decoder then takes one token a step with
 * self-attention KV caches. Greedy decoding, sampling (the decoder's
 * sampler), or beam search as Hugging Face's generate (num_beams,
 * length_penalty; early_stopping false; a hypothesis scored by its
 * log-likelihood / generated length^length_penalty, the decoder start
 * token not counted, as BeamHypotheses.add with generated_len since
 * transformers 4.34): the beams are the decoding model's rows, and their
 * caches are reordered as beams are kept.
 *
 *     struct fw_rt_s2s_decoder d;
 *     fw_rt_s2s_decoder_open(&d, &slots, beams, enc_len, max_len, seed, &err);
 *     n = fw_rt_model_params(d.ctx, &params); fw_rt_model_load_weights(...);
 *     fw_rt_s2s_generate(&d, src, n_src, &opts, out, &n_out, &err);
 *     fw_rt_s2s_decoder_close(&d);
 */
#ifndef FW_RUNTIME_SEQ2SEQ_H
#define FW_RUNTIME_SEQ2SEQ_H

#include "fw/runtime/generate.h"
#include "fw/runtime/model.h"

#ifdef __cplusplus
extern "C" {
#endif

struct fw_rt_s2s_decoder {
	struct fw_ctx *ctx;
	struct fw_model m;                /* beams rows, one decoder token a step */
	struct fw_graph *enc_g;           /* enc_tokens -> cross_out */
	struct fw_graph *step_g;          /* tokens, cross_in, caches -> logits */
	struct fw_kv_cache *caches;
	int n_layers;
	struct fw_tensor *len, *mask, *enc_bias;
	int64_t beams, enc_len, max_len;
	int64_t n_prefix;                 /* prefix tuning's rows before each cache's tokens */
	int V;
};

/* The decoding model of plugins (an arch with fw_model.cross_out, and an
 * attention plugin) for beams rows, sources of up to enc_len tokens and
 * max_len decoder positions. Its parameters are uninitialised: load them.
 * FW_ERR_UNSUPPORTED: the arch cannot generate, or has no encoder. */
enum fw_status fw_rt_s2s_decoder_open(struct fw_rt_s2s_decoder *d,
				      const struct fw_plugin_slots *plugins, int64_t beams,
				      int64_t enc_len, int64_t max_len, uint64_t seed,
				      struct fw_err *err);
void fw_rt_s2s_decoder_close(struct fw_rt_s2s_decoder *d);

struct fw_rt_s2s_opts {
	int64_t max_new;                  /* tokens to generate at most */
	int num_beams;                    /* 1: greedy; at most the decoder's beams */
	double length_penalty;            /* beam scores: sum of log-probs / length^this */
	int32_t start, eos, pad;          /* T5: 0, 1, 0 */
	/* One beam: the next token as the decoder's fw_rt_generate picks it
	 * (fw/runtime/sample.h): the repetition penalty over the start token
	 * and the tokens generated so far, then the sampler over the first
	 * n_sample ids (0: all) at temperature (0: greedy), with the decoder
	 * position (0 for the first generated token) as the RNG counter. */
	double temperature;
	int top_k;
	double top_p;                     /* 0 is taken as 1 */
	double penalty;                   /* 0 is taken as 1 (none) */
	int n_sample;
	uint64_t key;
	/* Each generated token in order, the eos included (one beam: as it is
	 * chosen; beams: the best hypothesis once the search ends); FW_RT_STOP
	 * ends the output there. NULL: none. */
	fw_rt_token_fn on_token;
	void *user;
};

/* Generates the target of src[0..n_src) (n_src <= enc_len, padded with
 * pad): out[0..*n_out) the generated ids, without the start token, ending
 * in eos when the decoding finished before max_new. out holds max_new ids.
 * FW_ERR_INVALID: an empty or too long source, an id outside the
 * vocabulary, max_new beyond the cache, num_beams beyond the decoder's. */
enum fw_status fw_rt_s2s_generate(struct fw_rt_s2s_decoder *d, const int32_t *src,
				  int64_t n_src, const struct fw_rt_s2s_opts *o, int32_t *out,
				  int64_t *n_out, struct fw_err *err);

#ifdef __cplusplus
}
#endif
#endif
