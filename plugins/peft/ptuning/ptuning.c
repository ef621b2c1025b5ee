/* peft/ptuning - P-tuning (Liu et al., 2021) with PEFT's PromptEncoder.
 *
 * nvt virtual tokens, as peft/prompt, but their embeddings are the output
 * of a prompt encoder over a learned table ptuning.embedding.weight (nvt, C):
 *   MLP:  Linear(C, h) - ReLU - Linear(h, h) - ReLU - Linear(h, C)
 *   LSTM: a bidirectional LSTM(C, h, num_layers) (fw_lstm, two directions
 *         concatenated per layer), then Linear(2h, 2h) - ReLU - Linear(2h, C)
 * with PEFT's module names (mlp_head.0/2/4, lstm_head.weight_ih_l0, ...) and
 * torch's inits. The encoder runs once per step on one sequence and its
 * output is broadcast over the batch (PEFT: prompt_tokens[:1]).
 *
 * A model built for inference (eval, generate) does not run the encoder:
 * when the adapter is loaded, the encoder's output is computed once and
 * frozen into plain virtual-token embeddings, as PEFT's inference mode
 * keeps only prompt_embeddings; the PEFT export writes that same table.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw/plugin.h"
#include "../common/peft_file.h"
#include "../common/virtual_tokens.h"

#define PT_KIND "peft/ptuning"
#define PT_MAX_PARAMS (1 + 16 * 8 + 6)   /* embedding, 16 LSTM layers, the MLP */

enum enc_kind { ENC_MLP = 0, ENC_LSTM };
static const char *const enc_names[] = { "MLP", "LSTM", NULL };

/* The encoder's shape: what its parameters are. */
struct enc_cfg {
	enum enc_kind kind;
	int64_t nvt, c, h;
	int layers;                           /* LSTM layers */
};

struct ptuning {
	const struct fw_host *host;
	const struct fw_options *opts;
	struct enc_cfg cfg;                   /* cfg.nvt: PEFT's total_virtual_tokens */
	int64_t nvt;                          /* num_virtual_tokens */
	int subs;                             /* PEFT's num_transformer_submodules */
	struct fw_tensor *second;             /* the decoder's rows (subs 2), (nvt, C) */
	int64_t at;                           /* the virtual tokens stand before token at */

	struct fw_ctx *ctx;
	struct fw_tensor *own[PT_MAX_PARAMS];
	int n_own;
	struct fw_tensor *frozen;             /* inference: the encoder's output (nvt, C) */
	int layers;
	int64_t heads;
};

/* --- the encoder, in any context ------------------------------------------------ */

/* Creates the parameter i of cfg's encoder (0 = the embedding, then the
 * encoder in PEFT's module order) in ctx: name, shape and torch's init
 * bound (0 for N(0, 1)). Returns the number of parameters when i < 0. */
static int enc_param(const struct enc_cfg *g, int i, char *name, size_t len, int64_t *shape,
		     int *ndim, float *bound)
{
	int64_t C = g->c, H = g->h;
	int n_lstm = g->kind == ENC_LSTM ? g->layers * 2 * 4 : 0;
	int n = 1 + n_lstm + (g->kind == ENC_LSTM ? 4 : 6);
	if (i < 0)
		return n;
	*ndim = 2;
	if (i == 0) {
		snprintf(name, len, "ptuning.embedding.weight");
		shape[0] = g->nvt, shape[1] = C, *bound = 0.0f;
		return n;
	}
	i--;
	if (i < n_lstm) {              /* per layer and direction: w_ih, w_hh, b_ih, b_hh */
		static const char *const w[4] = { "weight_ih", "weight_hh", "bias_ih", "bias_hh" };
		int l = i / 8, dir = i / 4 % 2, k = i % 4;
		snprintf(name, len, "ptuning.lstm_head.%s_l%d%s", w[k], l, dir ? "_reverse" : "");
		shape[0] = 4 * H;
		shape[1] = k == 0 ? (l ? 2 * H : C) : H;
		*ndim = k < 2 ? 2 : 1;
		*bound = (float)(1.0 / sqrt((double)H));           /* torch RNN: U(+-1/sqrt(h)) */
		return n;
	}
	i -= n_lstm;
	int lin = i / 2;                                           /* mlp_head.{0,2,4} */
	int64_t in, out;
	if (g->kind == ENC_LSTM) {
		in = 2 * H;
		out = lin ? C : 2 * H;
	} else {
		in = lin ? H : C;
		out = lin == 2 ? C : H;
	}
	snprintf(name, len, "ptuning.mlp_head.%d.%s", 2 * lin, i % 2 ? "bias" : "weight");
	shape[0] = out, shape[1] = in;
	*ndim = i % 2 ? 1 : 2;
	*bound = (float)(1.0 / sqrt((double)in));                  /* torch Linear */
	return n;
}

/* The encoder's output (nvt, C) from its parameters p (enc_param's order). */
static struct fw_tensor *enc_forward(const struct enc_cfg *g, struct fw_ctx *c,
				     struct fw_tensor *const *p)
{
	struct fw_tensor *x = p[0];
	int k = 1;
	if (g->kind == ENC_LSTM) {
		x = fw_reshape(c, x, 3, (int64_t[]){ 1, g->nvt, g->c });
		for (int l = 0; l < g->layers; l++, k += 8) {
			struct fw_tensor *f = fw_lstm(c, x, p[k], p[k + 1], fw_add(c, p[k + 2], p[k + 3]),
						      false);
			struct fw_tensor *r = fw_lstm(c, x, p[k + 4], p[k + 5],
						      fw_add(c, p[k + 6], p[k + 7]), true);
			x = fw_concat(c, f, r, 2);
		}
		x = fw_relu(c, fw_linear(c, x, p[k], p[k + 1]));
		x = fw_linear(c, x, p[k + 2], p[k + 3]);
		return fw_reshape(c, x, 2, (int64_t[]){ g->nvt, g->c });
	}
	x = fw_relu(c, fw_linear(c, x, p[1], p[2]));
	x = fw_relu(c, fw_linear(c, x, p[3], p[4]));
	return fw_linear(c, x, p[5], p[6]);
}

/* The encoder's output computed once, outside any model: values[i] are the
 * parameters' data (enc_param's order); out gets nvt * C floats. */
static enum fw_status enc_eval(const struct fw_host *h, const struct enc_cfg *g,
			       const float *const *values, float *out, struct fw_err *err)
{
	struct fw_ctx *c = fw_ctx_new();
	struct fw_tensor *p[PT_MAX_PARAMS];
	struct fw_graph *gr = NULL;
	enum fw_status st = FW_OK;
	int n = enc_param(g, -1, NULL, 0, NULL, NULL, NULL);
	if (!c)
		return h->errorf(err, FW_ERR_NOMEM, "peft/ptuning: out of memory");
	for (int i = 0; i < n; i++) {
		char name[FW_NAME_MAX];
		int64_t shape[2];
		int nd;
		float b;
		enc_param(g, i, name, sizeof(name), shape, &nd, &b);
		p[i] = fw_param(c, name, FW_F32, nd, shape, false);
	}
	struct fw_tensor *y = enc_forward(g, c, p);
	if (!y || fw_ctx_alloc_params(c) != FW_OK ||
	    !(gr = fw_graph_new(c, &y, 1, &(struct fw_graph_opts){ 0 }))) {
		st = h->errorf(err, fw_ctx_err(c)->status ? fw_ctx_err(c)->status : FW_ERR_INTERNAL,
			       "peft/ptuning: the encoder: %s", fw_ctx_err(c)->msg);
		goto out;
	}
	for (int i = 0; i < n; i++)
		memcpy(p[i]->data, values[i], fw_nbytes(p[i]));
	if (fw_graph_forward(gr) != FW_OK) {
		st = h->errorf(err, FW_ERR_INTERNAL, "peft/ptuning: the encoder: %s",
			       fw_ctx_err(c)->msg);
		goto out;
	}
	memcpy(out, y->data, sizeof(float) * (size_t)(g->nvt * g->c));
out:
	fw_graph_free(gr);
	fw_ctx_free(c);
	return st;
}

/* --- hooks --------------------------------------------------------------------------- */

static struct fw_tensor *ctx_fail(const struct ptuning *s, struct fw_ctx *c, struct fw_err *err)
{
	const struct fw_err *ce = s->host->ctx_err(c);
	s->host->errorf(err, ce->status ? ce->status : FW_ERR_INTERNAL, "peft/ptuning: %s",
			ce->msg);
	return NULL;
}

static struct fw_tensor *pt_wrap_embed(void *state, struct fw_model *m, struct fw_tensor *x,
				       struct fw_err *err)
{
	struct ptuning *s = state;
	const struct fw_host *h = s->host;
	/* by name: a new model's context may reuse a freed one's address */
	if (fw_ctx_find(m->ctx, "ptuning.embedding.weight")) {
		if (s->ctx == m->ctx && vt_decoder_input(m, x))
			return vt_decoder(h, PT_KIND, m, x, s->second, err);
		h->errorf(err, FW_ERR_UNSUPPORTED, "peft/ptuning: the arch embeds twice; P-tuning "
			  "supports one input (or an encoder-decoder's)");
		return NULL;
	}
	s->ctx = m->ctx;
	s->n_own = s->layers = 0;
	s->frozen = s->second = NULL;
	if (!(s->subs = vt_submodules(h, PT_KIND, "ptuning-num-transformer-submodules", m,
				      fw_opt_int(s->opts, "ptuning-num-transformer-submodules"), err)))
		return NULL;
	/* PEFT's PromptEncoder runs over all subs * nvt tokens (the LSTM as one
	 * sequence); the encoder takes the first nvt, the decoder the rest */
	s->cfg.nvt = s->subs * s->nvt;
	s->cfg.c = x->ne[x->ndim - 1];
	int n = enc_param(&s->cfg, -1, NULL, 0, NULL, NULL, NULL);
	for (int i = 0; i < n; i++) {
		char name[FW_NAME_MAX];
		int64_t shape[2];
		int nd;
		float b;
		enc_param(&s->cfg, i, name, sizeof(name), shape, &nd, &b);
		struct fw_tensor *t = h->param(m->ctx, name, FW_F32, nd, shape, true);
		if (!t)
			return ctx_fail(s, m->ctx, err);
		if (b > 0.0f)
			fw_param_set_init(t, FW_INIT_UNIFORM, b);
		else
			h->init_normal(m, t, 1.0f);              /* nn.Embedding: N(0, 1) */
		s->own[s->n_own++] = t;
	}
	struct fw_tensor *v;
	if (m->training) {
		v = enc_forward(&s->cfg, m->ctx, s->own);
	} else {            /* inference: the frozen output, filled when the adapter loads */
		v = s->frozen = h->input(m->ctx, "ptuning.prompt_embeddings", FW_F32, 2,
					 (int64_t[]){ s->cfg.nvt, s->cfg.c });
	}
	if (v && s->subs == 2) {
		s->second = h->cont(m->ctx, h->slice(m->ctx, v, 0, s->nvt, s->nvt));
		v = s->second ? h->cont(m->ctx, h->slice(m->ctx, v, 0, 0, s->nvt)) : NULL;
	}
	if (!v)
		return ctx_fail(s, m->ctx, err);
	return vt_insert(h, PT_KIND, m, x, v, s->at, err);
}

static enum fw_status pt_wrap_kv(void *state, struct fw_model *m, const struct fw_attn_spec *spec,
				 struct fw_tensor **k, struct fw_tensor **v, struct fw_err *err)
{
	struct ptuning *s = state;
	(void)k, (void)v, (void)err;
	if (s->ctx == m->ctx) {
		s->layers++;
		s->heads = spec->n_head;
	}
	return FW_OK;
}

static enum fw_status pt_freeze(void *state, struct fw_model *m, struct fw_err *err)
{
	struct ptuning *s = state;
	const struct fw_host *h = s->host;
	if (s->ctx != m->ctx || !s->n_own)
		return h->errorf(err, FW_ERR_UNSUPPORTED, "peft/ptuning: the arch routes no input "
				 "embeddings through the host (host->embed), so there is nowhere to "
				 "put virtual tokens");
	for (int i = 0; i < fw_ctx_n_tensors(m->ctx); i++) {
		struct fw_tensor *t = fw_ctx_tensor(m->ctx, i);
		if ((t->flags & FW_FLAG_PARAM) &&
		    fw_param_set_trainable(m->ctx, t, peft_trains(s->own, s->n_own, t)) != FW_OK)
			return h->errorf(err, FW_ERR_INVALID, "peft/ptuning: %s",
					 h->ctx_err(m->ctx)->msg);
	}
	return FW_OK;
}

/* "nvt P\ntoken_dim C\nencoder MLP|LSTM H L\nlayers N\nheads H\n" */
static void structure(const struct ptuning *s, char *out, size_t len)
{
	int k = snprintf(out, len, "nvt %lld\ntoken_dim %lld\nencoder %s %lld %d\nlayers %d\n"
			 "heads %lld\n", (long long)s->cfg.nvt, (long long)s->cfg.c,
			 enc_names[s->cfg.kind], (long long)s->cfg.h,
			 s->cfg.kind == ENC_LSTM ? s->cfg.layers : 0, s->layers, (long long)s->heads);
	if (s->subs == 2 && k > 0 && (size_t)k < len)      /* one submodule: as before */
		snprintf(out + k, len - (size_t)k, "submodules 2\n");
}

static bool parse_structure(const char *t, struct enc_cfg *g, int *layers, long long *heads)
{
	char kind[16];
	long long P, C, H;
	int L;
	if (sscanf(t, "nvt %lld\ntoken_dim %lld\nencoder %15s %lld %d\nlayers %d\nheads %lld", &P,
		   &C, kind, &H, &L, layers, heads) != 7 || P <= 0 || C <= 0 || H <= 0 || L < 0)
		return false;
	g->kind = strcmp(kind, "LSTM") ? ENC_MLP : ENC_LSTM;
	g->nvt = P, g->c = C, g->h = H, g->layers = L;
	return !strcmp(kind, "MLP") || (g->kind == ENC_LSTM && L > 0 && L <= 16);
}

static enum fw_status file_io(struct ptuning *s, struct fw_model *m, const char *path,
			      bool saving, struct fw_err *err)
{
	static const char *const structural[] = {
		"ptuning-num-virtual-tokens", "ptuning-encoder-reparameterization-type",
		"ptuning-encoder-hidden-size", "ptuning-encoder-num-layers",
		"ptuning-insert-position",
	};
	const struct fw_host *h = s->host;
	if (s->ctx != m->ctx || !s->n_own)
		return h->errorf(err, FW_ERR_INVALID, "peft/ptuning: %s: no adapter was built", path);
	char st[256];
	structure(s, st, sizeof(st));
	if (saving)
		return peft_save(h, m->ctx, path, PT_KIND, s->opts, s->own, s->n_own,
				 "ptuning_layers", st, err);
	enum fw_status r = peft_load(h, m->ctx, path, PT_KIND, s->opts, structural, 5, s->own,
				     s->n_own, "ptuning_layers", st, err);
	if (r != FW_OK || !s->frozen)
		return r;
	if (!s->frozen->data)
		return h->errorf(err, FW_ERR_INVALID, "peft/ptuning: %s: the model is not "
				 "allocated", path);
	const float *values[PT_MAX_PARAMS];
	for (int i = 0; i < s->n_own; i++)
		values[i] = fw_f32(s->own[i]);
	return enc_eval(h, &s->cfg, values, fw_f32(s->frozen), err);
}

static enum fw_status pt_save(void *state, struct fw_model *m, const char *path,
			      struct fw_err *err)
{
	return file_io(state, m, path, true, err);
}

static enum fw_status pt_load(void *state, struct fw_model *m, const char *path,
			      struct fw_err *err)
{
	return file_io(state, m, path, false, err);
}

/* PEFT's inference-mode adapter: prompt_embeddings = the encoder's output. */
static enum fw_status pt_export(const struct fw_host *h, const char *adapter, const char *dir,
				const char *base_model, struct fw_err *err)
{
	char *lay = NULL, *base_list = NULL;
	struct peft_tensors ts = { .h = h };
	struct peft_text cfg = { .h = h };
	struct peft_heads heads = { .mods = { .h = h } };
	struct fw_tensor out = { .dtype = FW_F32, .ndim = 2 };
	struct enc_cfg g = { 0 };
	int L = 0;
	long long NH = 0;
	const float *values[PT_MAX_PARAMS];
	enum fw_status st;
	if ((st = peft_check_kind(h, PT_KIND, adapter, err)) != FW_OK ||
	    (st = peft_attr(h, PT_KIND, adapter, "ptuning_layers", &lay, err)) != FW_OK ||
	    (st = peft_attr(h, PT_KIND, adapter, "base_tensors", &base_list, err)) != FW_OK ||
	    (st = peft_tensors_read(h, PT_KIND, adapter, &ts, err)) != FW_OK ||
	    (st = peft_heads_collect(h, PT_KIND, &ts, &heads, err)) != FW_OK)
		goto out;
	char *cfg_text = NULL, at[32] = "0";
	if ((st = peft_attr(h, PT_KIND, adapter, "config", &cfg_text, err)) != FW_OK)
		goto out;
	peft_ini_get(cfg_text, PT_KIND, "ptuning-insert-position", at, sizeof(at));
	fw_free(cfg_text);
	if (strcmp(at, "0")) {
		st = h->errorf(err, FW_ERR_UNSUPPORTED, "peft/ptuning: %s: trained with the virtual "
			       "tokens before token %s; PEFT's P-tuning puts them in front only, so "
			       "there is no PEFT equivalent to export", adapter, at);
		goto out;
	}
	int subs = strstr(lay, "submodules 2\n") ? 2 : 1;    /* g.nvt: all of them */
	if (!parse_structure(lay, &g, &L, &NH) || g.nvt % subs) {
		st = h->errorf(err, FW_ERR_FORMAT, "peft/ptuning: %s: attribute 'ptuning_layers' is "
			       "malformed", adapter);
		goto out;
	}
	int n = enc_param(&g, -1, NULL, 0, NULL, NULL, NULL);
	for (int i = 0; i < n; i++) {
		char name[FW_NAME_MAX];
		int64_t shape[2];
		int nd;
		float b;
		enc_param(&g, i, name, sizeof(name), shape, &nd, &b);
		struct fw_tensor *t = peft_tensors_find(&ts, name);
		if (!t || t->ndim != nd || t->ne[0] != shape[0] || (nd == 2 && t->ne[1] != shape[1])) {
			st = h->errorf(err, FW_ERR_FORMAT, "peft/ptuning: %s: tensor '%s' is missing "
				       "or misshapen", adapter, name);
			goto out;
		}
		values[i] = fw_f32(t);
	}
	out.ne[0] = g.nvt;
	out.ne[1] = g.c;
	fw_set_contiguous_strides(&out);
	if (!(out.data = h->malloc(fw_nbytes(&out)))) {
		st = h->errorf(err, FW_ERR_NOMEM, "peft/ptuning: out of memory");
		goto out;
	}
	if ((st = enc_eval(h, &g, values, out.data, err)) != FW_OK)
		goto out;
	peft_put(&cfg, "{\n  \"base_model_name_or_path\": ");
	if (base_model)
		peft_put_json(&cfg, base_model);
	else
		peft_put(&cfg, "null");
	peft_put(&cfg, ",\n  \"encoder_dropout\": 0.0,\n  \"encoder_hidden_size\": %lld,\n"
		 "  \"encoder_num_layers\": %d,\n  \"encoder_reparameterization_type\": \"%s\",\n"
		 "  \"inference_mode\": true,\n  \"modules_to_save\": %s,\n"
		 "  \"num_attention_heads\": %lld,\n"
		 "  \"num_layers\": %d,\n  \"num_transformer_submodules\": %d,\n"
		 "  \"num_virtual_tokens\": %lld,\n  \"peft_type\": \"P_TUNING\",\n"
		 "  \"revision\": null,\n  \"task_type\": %s,\n  \"token_dim\": %lld\n}\n",
		 (long long)g.h, g.kind == ENC_LSTM ? g.layers : 2, enc_names[g.kind], heads.mods.s,
		 NH, L, subs, (long long)g.nvt / subs, peft_task_json(peft_encoder_task(base_list, &ts)),
		 (long long)g.c);
	if (cfg.oom) {
		st = h->errorf(err, FW_ERR_NOMEM, "peft/ptuning: out of memory");
		goto out;
	}
	st = peft_write_prompt_export(h, PT_KIND, dir, &out, &heads, &cfg, err);
out:
	peft_heads_free(h, &heads);
	fw_free(base_list);
	if (out.data)
		h->free(out.data);
	peft_text_free(&cfg);
	peft_tensors_free(&ts);
	fw_free(lay);
	return st;
}

static void pt_fini(void *state)
{
	struct ptuning *s = state;
	if (s)
		s->host->free(s);
}

static enum fw_status pt_init(const struct fw_host *host, const struct fw_options *opts,
			      void **state, struct fw_err *err)
{
	struct ptuning *s = host->malloc(sizeof(*s));
	if (!s)
		return host->errorf(err, FW_ERR_NOMEM, "peft/ptuning: out of memory");
	memset(s, 0, sizeof(*s));
	s->host = host;
	s->opts = opts;
	s->cfg.kind = strcmp(fw_opt_str(opts, "ptuning-encoder-reparameterization-type"), "LSTM") ?
		      ENC_MLP : ENC_LSTM;
	s->nvt = s->cfg.nvt = fw_opt_int(opts, "ptuning-num-virtual-tokens");
	s->cfg.h = fw_opt_int(opts, "ptuning-encoder-hidden-size");
	s->cfg.layers = (int)fw_opt_int(opts, "ptuning-encoder-num-layers");
	s->at = fw_opt_int(opts, "ptuning-insert-position");
	*state = s;
	return FW_OK;
}

static const struct fw_peft_i iface = {
	.size = sizeof(struct fw_peft_i),
	.wrap_embed = pt_wrap_embed,
	.wrap_kv = pt_wrap_kv,
	.freeze = pt_freeze,
	.save = pt_save,
	.load = pt_load,
	.export_peft = pt_export,
};

static const struct fw_option_def options[] = {
	{ "ptuning-num-virtual-tokens", FW_OPT_INT, NULL, 1, 4096, NULL,
	  "virtual tokens in front of the input (PEFT num_virtual_tokens; required)" },
	{ "ptuning-encoder-reparameterization-type", FW_OPT_CHOICE, "MLP", 0, -1, enc_names,
	  "prompt encoder: MLP (Linear-ReLU-Linear-ReLU-Linear) or LSTM (bidirectional LSTM, "
	  "then Linear-ReLU-Linear) (PEFT encoder_reparameterization_type)" },
	{ "ptuning-encoder-hidden-size", FW_OPT_INT, NULL, 1, 1 << 16, NULL,
	  "the encoder's hidden size h (PEFT encoder_hidden_size; required)" },
	{ "ptuning-encoder-num-layers", FW_OPT_INT, "2", 1, 16, NULL,
	  "LSTM layers (PEFT encoder_num_layers; the MLP always has 3 linears, as PEFT)" },
	{ "ptuning-num-transformer-submodules", FW_OPT_INT, "0", 0, 2, NULL,
	  "PEFT num_transformer_submodules: 2 encodes twice the virtual tokens and puts the "
	  "second half before an encoder-decoder's decoder inputs (training and eval; PEFT's "
	  "generate leaves them out); 0 = PEFT's default, 2 on an encoder-decoder, else 1" },
	{ "ptuning-insert-position", FW_OPT_INT, "0", 0, 1 << 20, NULL,
	  "the virtual tokens stand before this token of each sequence: 0 = in front (PEFT); "
	  "K > 0 = after the first K tokens, as the P-tuning paper's templates (no PEFT export)" },
};

static const struct fw_plugin plugin = {
	FW_PLUGIN_HEADER,
	.kind = FW_KIND_PEFT,
	.name = PT_KIND,
	.version = "1.0.0",
	.description = "P-tuning (PEFT semantics): virtual tokens from an MLP or LSTM prompt "
		       "encoder, frozen into plain embeddings for inference, PEFT export",
	.options = options,
	.n_options = (int)(sizeof(options) / sizeof(options[0])),
	.iface = &iface,
	.init = pt_init,
	.fini = pt_fini,
};

FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void)
{
	return &plugin;
}
