/* fw/runtime/genconfig.h - a Hugging Face generation_config.json.
 *
 *     struct fw_rt_genconfig g;
 *     if (fw_rt_genconfig_parse(text, len, "model/generation_config.json", &g, &err) != FW_OK)
 *             ...;                     // one line naming the file and the key
 *
 * The keys fwrun generate uses as defaults (docs/tokenizers.md): eos_token_id
 * (an integer or a list), bos_token_id, pad_token_id, max_new_tokens,
 * max_length, do_sample, temperature, top_k, top_p, repetition_penalty.
 * Other keys (transformers_version, num_beams, ...) are ignored. A key that
 * is absent or null is not "has"; one of the wrong type or out of range is
 * FW_ERR_FORMAT.
 */
#ifndef FW_RUNTIME_GENCONFIG_H
#define FW_RUNTIME_GENCONFIG_H

#include "fw/status.h"

#define FW_RT_GENCONFIG_MAX_EOS 16

struct fw_rt_genconfig {
	int32_t eos[FW_RT_GENCONFIG_MAX_EOS];
	int n_eos;
	int32_t bos, pad;                 /* -1: absent */
	int64_t max_new_tokens, max_length;     /* -1: absent */
	bool has_do_sample, do_sample;
	bool has_temperature, has_top_k, has_top_p, has_penalty;
	double temperature, top_p, penalty;
	int top_k;
};

enum fw_status fw_rt_genconfig_parse(const char *text, size_t len, const char *where,
				     struct fw_rt_genconfig *g, struct fw_err *err);

#endif
