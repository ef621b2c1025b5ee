/* peft/prompt - prompt tuning (Lester et al., 2021) with PEFT's
 * PromptEmbedding and PeftModelForCausalLM.
 *
 * nvt learned virtual-token embeddings prompt.embedding.weight (nvt, C) go
 * in front of the word embeddings (wrap_embed, the fw_model.n_virtual
 * contract of plugin.h): inputs_embeds = [prompt; wte(tokens)], positions
 * 0..nvt+T-1 over the whole, every real token sees the virtual ones, the
 * head sees the real rows only (so PEFT's loss with labels padded by -100
 * for the virtual tokens). Generation runs the virtual tokens through the KV
 * cache first.
 *
 * Init as PEFT's prompt_tuning_init: random (nn.Embedding: N(0, 1)), text
 * (the tokenized --prompt-tuning-init-text repeated or truncated to nvt,
 * those word embeddings copied) or sample_vocab (nvt word embeddings of
 * random ids); text and sample_vocab read the base (init_from_base).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fw/plugin.h"
#include "fw/tokenizer.h"
#include "../common/peft_file.h"
#include "../common/virtual_tokens.h"

#define PROMPT_KIND "peft/prompt"

enum init_kind { INIT_RANDOM = 0, INIT_TEXT, INIT_SAMPLE_VOCAB };
static const char *const init_names[] = { "random", "text", "sample_vocab", NULL };
static const char *const init_peft[] = { "RANDOM", "TEXT", "SAMPLE_VOCAB" };

struct prompt {
	const struct fw_host *host;
	const struct fw_options *opts;
	int64_t nvt;
	enum init_kind init;

	struct fw_ctx *ctx;                  /* the model the tensors below belong to */
	int subs;                            /* PEFT's num_transformer_submodules */
	struct fw_tensor *emb;               /* (subs * nvt, C) */
	struct fw_tensor *second;            /* the decoder's rows (subs 2), (nvt, C) */
	struct fw_tensor *words;             /* the word embedding table (V, C) */
	int layers;                          /* attention layers seen (for the export) */
	int64_t heads;
};

static struct fw_tensor *prompt_wrap_embed(void *state, struct fw_model *m, struct fw_tensor *x,
					   struct fw_err *err)
{
	struct prompt *s = state;
	const struct fw_host *h = s->host;
	/* by name: a new model's context may reuse a freed one's address */
	if (fw_ctx_find(m->ctx, "prompt.embedding.weight")) {
		if (s->ctx == m->ctx && vt_decoder_input(m, x))
			return vt_decoder(h, PROMPT_KIND, m, x, s->second, err);
		return h->errorf(err, FW_ERR_UNSUPPORTED, "peft/prompt: the arch embeds twice; "
				 "prompt tuning supports one input (or an encoder-decoder's)"), NULL;
	}
	s->ctx = m->ctx;
	s->layers = 0;
	s->heads = 0;
	s->second = NULL;
	s->words = vt_word_table(x);
	if (!(s->subs = vt_submodules(h, PROMPT_KIND, "prompt-num-transformer-submodules", m,
				      fw_opt_int(s->opts, "prompt-num-transformer-submodules"), err)))
		return NULL;
	int64_t shape[2] = { s->subs * s->nvt, x->ne[x->ndim - 1] };
	s->emb = h->param(m->ctx, "prompt.embedding.weight", FW_F32, 2, shape, true);
	if (!s->emb) {
		const struct fw_err *ce = h->ctx_err(m->ctx);
		return h->errorf(err, ce->status, "peft/prompt: %s", ce->msg), NULL;
	}
	h->init_normal(m, s->emb, 1.0f);          /* nn.Embedding: N(0, 1) */
	if (s->subs == 1)
		return vt_insert(h, PROMPT_KIND, m, x, s->emb, 0, err);
	/* PEFT's first nvt rows go to the encoder, the next nvt to the decoder */
	struct fw_tensor *first = h->cont(m->ctx, h->slice(m->ctx, s->emb, 0, 0, s->nvt));
	s->second = h->cont(m->ctx, h->slice(m->ctx, s->emb, 0, s->nvt, s->nvt));
	if (!first || !s->second) {
		const struct fw_err *ce = h->ctx_err(m->ctx);
		return h->errorf(err, ce->status, "peft/prompt: %s", ce->msg), NULL;
	}
	return vt_insert(h, PROMPT_KIND, m, x, first, 0, err);
}

/* Nothing changes in attention: the layers and heads are counted for the
 * export's num_layers and num_attention_heads. */
static enum fw_status prompt_wrap_kv(void *state, struct fw_model *m,
				     const struct fw_attn_spec *spec, struct fw_tensor **k,
				     struct fw_tensor **v, struct fw_err *err)
{
	struct prompt *s = state;
	(void)k, (void)v, (void)err;
	if (s->ctx == m->ctx) {
		s->layers++;
		s->heads = spec->n_head;
	}
	return FW_OK;
}

static enum fw_status prompt_freeze(void *state, struct fw_model *m, struct fw_err *err)
{
	struct prompt *s = state;
	const struct fw_host *h = s->host;
	if (s->ctx != m->ctx || !s->emb)
		return h->errorf(err, FW_ERR_UNSUPPORTED, "peft/prompt: the arch routes no input "
				 "embeddings through the host (host->embed), so there is nowhere to "
				 "put virtual tokens");
	if (s->init != INIT_RANDOM && !s->words)
		return h->errorf(err, FW_ERR_UNSUPPORTED, "peft/prompt: --prompt-tuning-init=%s "
				 "copies word embeddings, and the arch's input embeddings are not a "
				 "table lookup", init_names[s->init]);
	for (int i = 0; i < fw_ctx_n_tensors(m->ctx); i++) {
		struct fw_tensor *t = fw_ctx_tensor(m->ctx, i);
		if ((t->flags & FW_FLAG_PARAM) &&
		    fw_param_set_trainable(m->ctx, t, peft_trains(&s->emb, 1, t)) != FW_OK)
			return h->errorf(err, FW_ERR_INVALID, "peft/prompt: %s",
					 h->ctx_err(m->ctx)->msg);
	}
	return FW_OK;
}

/* PEFT's tokenizer_name_or_path: a tokenizer.json or a folder holding one. */
static enum fw_status text_ids(struct prompt *s, struct fw_token_buf *ids, struct fw_err *err)
{
	const struct fw_host *h = s->host;
	const char *path = fw_opt_str(s->opts, "prompt-tuning-tokenizer-name-or-path");
	const char *text = fw_opt_str(s->opts, "prompt-tuning-init-text");
	char file[4200];
	struct stat sb;
	snprintf(file, sizeof(file), "%s%s", path,
		 stat(path, &sb) == 0 && S_ISDIR(sb.st_mode) ? "/tokenizer.json" : "");
	struct fw_err e = { 0 };
	struct fw_tokenizer *tok = fw_tokenizer_load_hf_json(file, &e);
	if (!tok)
		return h->errorf(err, FW_ERR_INVALID, "peft/prompt: "
				 "--prompt-tuning-tokenizer-name-or-path: %s", e.msg);
	/* Hugging Face's tokenizer(text): add_special_tokens */
	enum fw_status st = fw_tokenizer_encode_ex(tok, text, strlen(text),
						   FW_TOKENIZE_ADD_SPECIAL, ids, &e);
	fw_tokenizer_free(tok);
	if (st != FW_OK)
		return h->errorf(err, st, "peft/prompt: --prompt-tuning-init-text: %s", e.msg);
	if (ids->n == 0)
		return h->errorf(err, FW_ERR_INVALID, "peft/prompt: --prompt-tuning-init-text "
				 "gives no tokens");
	return FW_OK;
}

/* text and sample_vocab: word embeddings copied into the new prompt. */
static enum fw_status prompt_init_from_base(void *state, struct fw_model *m, struct fw_err *err)
{
	struct prompt *s = state;
	const struct fw_host *h = s->host;
	if (s->init == INIT_RANDOM)
		return FW_OK;
	if (s->ctx != m->ctx || !s->emb || !s->words || !s->words->data || !s->emb->data ||
	    s->words->dtype != FW_F32)
		return h->errorf(err, FW_ERR_INVALID, "peft/prompt: the word embeddings are not "
				 "an allocated f32 table");
	int64_t V = s->words->ne[0], C = s->emb->ne[1];
	struct fw_token_buf ids = { 0 };
	if (s->init == INIT_TEXT) {
		enum fw_status st = text_ids(s, &ids, err);
		if (st != FW_OK) {
			fw_token_buf_free(&ids);
			return st;
		}
	}
	uint64_t key = fw_hash_str("peft/prompt sample_vocab", m->seed);
	for (int64_t p = 0; p < s->emb->ne[0]; p++) {
		/* text: repeated, then truncated to PEFT's total_virtual_tokens */
		int64_t id = s->init == INIT_TEXT ? ids.ids[p % (int64_t)ids.n] :
			     (int64_t)(fw_rng_uniform(key, (uint64_t)p) * (double)V) % V;
		if (id < 0 || id >= V) {
			fw_token_buf_free(&ids);
			return h->errorf(err, FW_ERR_INVALID, "peft/prompt: --prompt-tuning-init-text "
					 "has token id %lld, outside the model's vocabulary (%lld)",
					 (long long)id, (long long)V);
		}
		memcpy(fw_f32(s->emb) + p * s->emb->nb[0], fw_f32(s->words) + id * s->words->nb[0],
		       sizeof(float) * (size_t)C);
	}
	fw_token_buf_free(&ids);
	return FW_OK;
}

/* "nvt P\ntoken_dim C\nlayers L\nheads H\n" */
static void structure(const struct prompt *s, char *out, size_t len)
{
	int k = snprintf(out, len, "nvt %lld\ntoken_dim %lld\nlayers %d\nheads %lld\n",
			 (long long)s->nvt, (long long)s->emb->ne[1], s->layers, (long long)s->heads);
	if (s->subs == 2 && k > 0 && (size_t)k < len)      /* one submodule: as before */
		snprintf(out + k, len - (size_t)k, "submodules 2\n");
}

static enum fw_status file_io(struct prompt *s, struct fw_model *m, const char *path,
			      bool saving, struct fw_err *err)
{
	static const char *const structural[] = { "prompt-num-virtual-tokens" };
	if (s->ctx != m->ctx || !s->emb)
		return s->host->errorf(err, FW_ERR_INVALID, "peft/prompt: %s: no adapter was built",
				       path);
	char st[256];
	structure(s, st, sizeof(st));
	if (saving)
		return peft_save(s->host, m->ctx, path, PROMPT_KIND, s->opts, &s->emb, 1,
				 "prompt_layers", st, err);
	return peft_load(s->host, m->ctx, path, PROMPT_KIND, s->opts, structural, 1, &s->emb, 1,
			 "prompt_layers", st, err);
}

static enum fw_status prompt_save(void *state, struct fw_model *m, const char *path,
				  struct fw_err *err)
{
	return file_io(state, m, path, true, err);
}

static enum fw_status prompt_load(void *state, struct fw_model *m, const char *path,
				  struct fw_err *err)
{
	return file_io(state, m, path, false, err);
}

/* adapter_model.safetensors {prompt_embeddings (nvt, C)} and
 * adapter_config.json (PROMPT_TUNING) from the adapter file. */
static enum fw_status prompt_export(const struct fw_host *h, const char *adapter,
				    const char *dir, const char *base_model, struct fw_err *err)
{
	char *lay = NULL, *cfg_text = NULL, *base_list = NULL;
	struct peft_tensors ts = { .h = h };
	struct peft_text cfg = { .h = h };
	struct peft_heads heads = { .mods = { .h = h } };
	long long P = 0, C = 0, NH = 0;
	int L = 0;
	char init[64] = "random", text[2048] = "", tok[2048] = "";
	enum fw_status st;
	if ((st = peft_check_kind(h, PROMPT_KIND, adapter, err)) != FW_OK ||
	    (st = peft_attr(h, PROMPT_KIND, adapter, "prompt_layers", &lay, err)) != FW_OK ||
	    (st = peft_attr(h, PROMPT_KIND, adapter, "config", &cfg_text, err)) != FW_OK ||
	    (st = peft_attr(h, PROMPT_KIND, adapter, "base_tensors", &base_list, err)) != FW_OK ||
	    (st = peft_tensors_read(h, PROMPT_KIND, adapter, &ts, err)) != FW_OK ||
	    (st = peft_heads_collect(h, PROMPT_KIND, &ts, &heads, err)) != FW_OK)
		goto out;
	struct fw_tensor *e = peft_tensors_find(&ts, "prompt.embedding.weight");
	int subs = strstr(lay, "submodules 2\n") ? 2 : 1;    /* PEFT's total_virtual_tokens rows */
	if (sscanf(lay, "nvt %lld\ntoken_dim %lld\nlayers %d\nheads %lld", &P, &C, &L, &NH) != 4 ||
	    P <= 0 || C <= 0 || !e || e->ndim != 2 || e->ne[0] != subs * P || e->ne[1] != C) {
		st = h->errorf(err, FW_ERR_FORMAT, "peft/prompt: %s: attribute 'prompt_layers' or "
			       "tensor 'prompt.embedding.weight' is malformed", adapter);
		goto out;
	}
	peft_ini_get(cfg_text, PROMPT_KIND, "prompt-tuning-init", init, sizeof(init));
	peft_ini_get(cfg_text, PROMPT_KIND, "prompt-tuning-init-text", text, sizeof(text));
	peft_ini_get(cfg_text, PROMPT_KIND, "prompt-tuning-tokenizer-name-or-path", tok,
		     sizeof(tok));
	int ik = 0;
	while (init_names[ik] && strcmp(init_names[ik], init))
		ik++;
	peft_put(&cfg, "{\n  \"base_model_name_or_path\": ");
	if (base_model)
		peft_put_json(&cfg, base_model);
	else
		peft_put(&cfg, "null");
	peft_put(&cfg, ",\n  \"inference_mode\": true,\n  \"modules_to_save\": %s,\n"
		 "  \"num_attention_heads\": %lld,\n"
		 "  \"num_layers\": %d,\n  \"num_transformer_submodules\": %d,\n"
		 "  \"num_virtual_tokens\": %lld,\n  \"peft_type\": \"PROMPT_TUNING\",\n"
		 "  \"prompt_tuning_init\": \"%s\",\n  \"prompt_tuning_init_text\": ", heads.mods.s,
		 NH, L, subs, P,
		 init_peft[init_names[ik] ? ik : 0]);
	if (*text)
		peft_put_json(&cfg, text);
	else
		peft_put(&cfg, "null");
	peft_put(&cfg, ",\n  \"revision\": null,\n  \"task_type\": %s,\n"
		 "  \"token_dim\": %lld,\n  \"tokenizer_kwargs\": null,\n"
		 "  \"tokenizer_name_or_path\": ", peft_task_json(peft_encoder_task(base_list, &ts)),
		 C);
	if (*tok)
		peft_put_json(&cfg, tok);
	else
		peft_put(&cfg, "null");
	peft_put(&cfg, "\n}\n");
	if (cfg.oom) {
		st = h->errorf(err, FW_ERR_NOMEM, "peft/prompt: out of memory");
		goto out;
	}
	st = peft_write_prompt_export(h, PROMPT_KIND, dir, e, &heads, &cfg, err);
out:
	peft_heads_free(h, &heads);
	fw_free(base_list);
	peft_text_free(&cfg);
	peft_tensors_free(&ts);
	fw_free(lay);
	fw_free(cfg_text);
	return st;
}

static void prompt_fini(void *state)
{
	struct prompt *s = state;
	if (s)
		s->host->free(s);
}

static enum fw_status prompt_init(const struct fw_host *host, const struct fw_options *opts,
				  void **state, struct fw_err *err)
{
	const char *init = fw_opt_str(opts, "prompt-tuning-init");
	bool text = !strcmp(init, "text");
	bool has_text = *fw_opt_str(opts, "prompt-tuning-init-text");
	bool has_tok = *fw_opt_str(opts, "prompt-tuning-tokenizer-name-or-path");
	if (text && (!has_text || !has_tok))
		return host->errorf(err, FW_ERR_INVALID, "peft/prompt: --prompt-tuning-init=text "
				    "needs --prompt-tuning-init-text and "
				    "--prompt-tuning-tokenizer-name-or-path");
	if (!text && has_text)
		return host->errorf(err, FW_ERR_INVALID, "peft/prompt: --prompt-tuning-init-text "
				    "needs --prompt-tuning-init=text (it is %s)", init);
	struct prompt *s = host->malloc(sizeof(*s));
	if (!s)
		return host->errorf(err, FW_ERR_NOMEM, "peft/prompt: out of memory");
	memset(s, 0, sizeof(*s));
	s->host = host;
	s->opts = opts;
	s->nvt = fw_opt_int(opts, "prompt-num-virtual-tokens");
	while (init_names[s->init] && strcmp(init_names[s->init], init))
		s->init++;
	*state = s;
	return FW_OK;
}

static const struct fw_peft_i iface = {
	.size = sizeof(struct fw_peft_i),
	.wrap_embed = prompt_wrap_embed,
	.wrap_kv = prompt_wrap_kv,
	.freeze = prompt_freeze,
	.save = prompt_save,
	.load = prompt_load,
	.export_peft = prompt_export,
	.init_from_base = prompt_init_from_base,
};

static const struct fw_option_def options[] = {
	{ "prompt-num-virtual-tokens", FW_OPT_INT, NULL, 1, 4096, NULL,
	  "virtual tokens in front of the input (PEFT num_virtual_tokens; required)" },
	{ "prompt-num-transformer-submodules", FW_OPT_INT, "0", 0, 2, NULL,
	  "PEFT num_transformer_submodules: 2 puts a second set of virtual tokens before an "
	  "encoder-decoder's decoder inputs (training and eval; PEFT's generate leaves them out); "
	  "0 = PEFT's default, 2 on an encoder-decoder (SEQ_2_SEQ_LM), else 1" },
	{ "prompt-tuning-init", FW_OPT_CHOICE, "random", 0, -1, init_names,
	  "random (N(0,1)), text (the init text's word embeddings) or sample_vocab (word "
	  "embeddings of random ids) (PEFT prompt_tuning_init)" },
	{ "prompt-tuning-init-text", FW_OPT_STRING, "", 0, -1, NULL,
	  "text whose tokens, repeated or truncated to the virtual tokens, give their initial "
	  "embeddings (PEFT prompt_tuning_init_text)" },
	{ "prompt-tuning-tokenizer-name-or-path", FW_OPT_STRING, "", 0, -1, NULL,
	  "tokenizer.json (or a folder holding one) for the init text (PEFT "
	  "tokenizer_name_or_path)" },
};

static const struct fw_plugin plugin = {
	FW_PLUGIN_HEADER,
	.kind = FW_KIND_PEFT,
	.name = PROMPT_KIND,
	.version = "1.0.0",
	.description = "prompt tuning (PEFT semantics): learned virtual tokens in front of the "
		       "input through wrap_embed, text/sample_vocab init, adapter files, PEFT export",
	.options = options,
	.n_options = (int)(sizeof(options) / sizeof(options[0])),
	.iface = &iface,
	.init = prompt_init,
	.fini = prompt_fini,
};

FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void)
{
	return &plugin;
}
