/* seq2seq_gen.c - fwrun generate for an encoder-decoder arch (arch/encdec):
 * the prompt is the source, the printed text the generated target
 * (fw/runtime/seq2seq.h). */
#include <stdlib.h>
#include <string.h>

#include "fwrun.h"

bool seq2seq_arch(const struct fw_plugin_slots *slots)
{
	struct fw_plugin_slots plain = { .arch = slots->arch, .attention = slots->attention };
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_model m;
	struct fw_err e = { 0 };
	bool yes = ctx && fw_rt_model_build(&(struct fw_rt_model_spec){
		.plugins = &plain, .batch = 1, .seq_len = 1 }, ctx, &m, &e) == FW_OK && m.enc_tokens;
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

int seq2seq_generate(struct config *cfg, const struct fw_plugin_slots *slots, const char *path,
		     struct fw_tokenizer *tok, const int32_t *prompt, int64_t n_prompt,
		     bool interactive)
{
	const struct fw_options *o = cfg->run;
	if (interactive || slots->peft || fw_opt_bool(o, "chat") || *fw_opt_str(o, "stop"))
		return fail(FW_ERR_UNSUPPORTED, "generate: %s takes a source (--prompt, "
			    "--prompt-file or --prompt-tokens) without --interactive, --chat, --stop "
			    "or a peft plugin", slots->arch->desc->name);
	struct fw_err err = { 0 };
	struct fw_rt_s2s_decoder d = { 0 };
	struct fw_tensor **params = NULL;
	int32_t pad, eos, *src = malloc(sizeof(int32_t) * (size_t)(n_prompt + 1)), *out = NULL;
	int64_t max_new = fw_opt_int(o, "max-new-tokens"), n_src = n_prompt, n_out = 0;
	int beams = (int)fw_opt_int(o, "num-beams"), rc = EXIT_RUNTIME, n_params = 0, n_new;
	if (!src || !(out = malloc(sizeof(int32_t) * (size_t)max_new))) {
		free(src);
		return fail(FW_ERR_NOMEM, "out of memory");
	}
	memcpy(src, prompt, sizeof(int32_t) * (size_t)n_prompt);
	struct fw_rt_s2s_opts go = { .max_new = max_new, .num_beams = beams,
				     .length_penalty = fw_opt_float(o, "length-penalty") };
	enum fw_status st = specials(tok, &pad, &eos, &err);
	if (st == FW_OK && tok)
		src[n_src++] = eos;       /* the source as T5's tokenizer ends it */
	go.start = go.pad = pad;
	go.eos = eos;
	if (st == FW_OK)
		st = fw_rt_s2s_decoder_open(&d, slots, beams, n_src, max_new,
					    (uint64_t)fw_opt_int(o, "seed"), &err);
	if (st == FW_OK && (n_params = fw_rt_model_params(d.ctx, &params)) < 0)
		st = fw_errorf(&err, FW_ERR_NOMEM, "out of memory");
	if (st == FW_OK)
		st = fw_rt_model_load_weights(path, params, n_params, slots,
					      fw_opt_bool(o, "base-only"), &n_new, &fwrun_log, &err);
	if (st == FW_OK) {
		config_report(cfg);
		st = fw_rt_s2s_generate(&d, src, n_src, &go, out, &n_out, &err);
	}
	if (st == FW_OK && n_out && out[n_out - 1] == eos && tok)
		n_out--;                  /* the text ends before </s> */
	if (st == FW_OK && tok) {
		char *text = NULL;
		size_t len = 0;
		st = fw_tokenizer_decode(tok, out, (size_t)n_out, &text, &len, &err);
		if (st == FW_OK) {
			fwrite(text, 1, len, stdout);
			putchar('\n');
		}
		fw_free(text);
	} else if (st == FW_OK) {
		for (int64_t i = 0; i < n_out; i++)
			printf("%s%d", i ? "," : "", out[i]);
		putchar('\n');
	}
	rc = st == FW_OK ? EXIT_OK : fail(err.status, "%s", err.msg);
	free(params);
	free(src);
	free(out);
	fw_rt_s2s_decoder_close(&d);
	return rc;
}
