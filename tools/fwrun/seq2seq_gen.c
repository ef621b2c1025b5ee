/* seq2seq_gen.c - fwrun generate for an encoder-decoder arch (arch/encdec):
 * the prompt is the source, the printed text the generated target
 * (fw/runtime/seq2seq.h). generate.c keeps the prompts, stop strings and
 * printing; this file opens the decoding model and runs one source. */
#include <stdlib.h>
#include <string.h>

#include "fwrun.h"

bool seq2seq_arch(const struct fw_plugin_slots *slots)
{
	struct fw_plugin_slots plain = { .arch = slots->arch, .attention = slots->attention };
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_model m = { 0 };
	struct fw_err e = { 0 };
	/* enc_tokens comes first: an attention plugin that refuses the model
	 * (attention/flash and T5's bias) says so when generation opens it */
	if (ctx)
		fw_rt_model_build(&(struct fw_rt_model_spec){ .plugins = &plain, .batch = 1,
							     .seq_len = 1 }, ctx, &m, &e);
	bool yes = m.enc_tokens != NULL;
	fw_ctx_free(ctx);
	return yes;
}

/* T5's ids in tok: <pad> (else 0) and </s> (added when missing). */
static enum fw_status specials(struct fw_tokenizer *tok, int32_t *pad, int32_t *eos,
			       struct fw_err *err)
{
	*pad = tok ? fw_tokenizer_find(tok, "<pad>", 5) : -1;
	*eos = tok ? fw_tokenizer_find(tok, "</s>", 4) : -1;
	*pad = *pad < 0 ? 0 : *pad;
	if (tok && *eos < 0)
		return fw_tokenizer_add_special(tok, "</s>", 4, eos, err);
	if (*eos < 0)
		*eos = 1;                 /* T5's eos_token_id with --prompt-tokens */
	return FW_OK;
}

enum fw_status s2s_gen_open(struct s2s_gen *g, const struct config *cfg,
			    const struct fw_plugin_slots *slots, const char *path,
			    struct fw_tokenizer *tok, int64_t max_source, int64_t max_new,
			    struct fw_err *err)
{
	const struct fw_options *o = cfg->run;
	memset(g, 0, sizeof(*g));
	g->add_eos = tok != NULL;
	g->max_source = max_source;
	g->o = (struct fw_rt_s2s_opts){ .max_new = max_new,
					.num_beams = (int)fw_opt_int(o, "num-beams"),
					.length_penalty = fw_opt_float(o, "length-penalty") };
	enum fw_status st = specials(tok, &g->o.pad, &g->o.eos, err);
	g->o.start = g->o.pad;
	int64_t enc_len = max_source + (g->add_eos ? 1 : 0);
	if (st == FW_OK && (!(g->src = malloc(sizeof(int32_t) * (size_t)enc_len)) ||
			    !(g->out = malloc(sizeof(int32_t) * (size_t)(max_new > 0 ? max_new : 1)))))
		st = fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	/* no new token (generation_config.json's max_length 1): the model is
	 * still opened and loaded, so that a bad one fails as it would */
	if (st == FW_OK)
		st = fw_rt_s2s_decoder_open(&g->d, slots, g->o.num_beams, enc_len,
					    max_new > 0 ? max_new : 1,
					    (uint64_t)fw_opt_int(o, "seed"), err);
	struct fw_tensor **params = NULL;
	int n_params = 0, n_new;
	if (st == FW_OK && (n_params = fw_rt_model_params(g->d.ctx, &params)) < 0)
		st = fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	if (st == FW_OK)
		st = fw_rt_model_load_weights(path, params, n_params, slots,
					      fw_opt_bool(o, "base-only"), &n_new, &fwrun_log, err);
	free(params);
	if (st == FW_OK)        /* --adapter: a peft plugin's tensors, as the decoder's */
		st = adapter_apply(cfg, slots, &g->d.m, true, err);
	return st;
}

enum fw_status s2s_gen_complete(struct s2s_gen *g, const int32_t *prompt, int64_t n,
				fw_rt_token_fn on_token, void *user, struct fw_err *err)
{
	if (n > g->max_source)
		return fw_errorf(err, FW_ERR_INVALID, "the source is %lld tokens, more than the %lld "
				 "the encoder was opened for (--encoder-seq-length)", (long long)n,
				 (long long)g->max_source);
	/* max_length 1: Hugging Face returns the decoder start token alone, an
	 * empty target */
	for (int64_t i = 0; g->o.max_new == 0 && i < n; i++)
		if (prompt[i] < 0 || prompt[i] >= g->d.V)
			return fw_errorf(err, FW_ERR_INVALID, "source: token %d is outside the "
					 "vocabulary (%d)", prompt[i], g->d.V);
	if (g->o.max_new == 0)
		return FW_OK;
	memcpy(g->src, prompt, sizeof(int32_t) * (size_t)n);
	if (g->add_eos)
		g->src[n++] = g->o.eos;   /* the source as T5's tokenizer ends it */
	g->o.on_token = on_token;
	g->o.user = user;
	int64_t n_out = 0;
	return fw_rt_s2s_generate(&g->d, g->src, n, &g->o, g->out, &n_out, err);
}

void s2s_gen_close(struct s2s_gen *g)
{
	fw_rt_s2s_decoder_close(&g->d);
	free(g->src);
	free(g->out);
	memset(g, 0, sizeof(*g));
}
