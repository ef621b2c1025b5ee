/* model.c - a model from plugin instances (fw/runtime/model.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw/runtime/model.h"

/* "NAME: msg" unless msg already starts with the plugin's name. */
static enum fw_status named_err(struct fw_err *err, enum fw_status st, const char *name,
				const char *msg)
{
	bool named = !strncmp(msg, name, strlen(name));
	return fw_errorf(err, st, "%s%s%s", named ? "" : name, named ? "" : ": ", msg);
}

enum fw_status fw_rt_model_build(const struct fw_rt_model_spec *spec, struct fw_ctx *ctx,
				 struct fw_model *m, struct fw_err *err)
{
	const struct fw_plugin_slots *slots = spec->plugins;
	if (!slots || !slots->arch)
		return fw_errorf(err, FW_ERR_INVALID, "a model needs an arch plugin");
	bool decode = spec->caches != NULL;
	*m = (struct fw_model){
		.size = sizeof(struct fw_model), .ctx = ctx, .host = fw_host_table(),
		.opts = slots->arch->opts,
		.batch = decode && spec->batch < 1 ? 1 : spec->batch,
		.seq_len = decode && spec->seq_len < 1 ? 1 : spec->seq_len, .head = FW_HEAD_LM,
		.training = spec->training, .seed = spec->seed,
		.host_private = (void *)slots, .segmented = spec->segmented,
		.caches = spec->caches, .n_caches = spec->n_caches, .enc_len = spec->enc_len,
	};
	const struct fw_arch_i *arch = slots->arch->desc->iface;
	const char *an = slots->arch->desc->name;
	struct fw_err e = { 0 };
	enum fw_status st = arch->build(slots->arch->state, m, &e);
	bool complete = decode ? m->logits != NULL : m->loss && m->tokens && m->targets;
	if (st != FW_OK || !complete) {
		const struct fw_err *src = e.status ? &e : fw_ctx_err(ctx);
		return named_err(err, src->status ? src->status : FW_ERR_INVALID, an,
				 src->msg[0] ? src->msg : decode ? "build gave no logits" :
				 "build gave no loss or inputs");
	}
	/* an encoder-decoder takes its padding from seq2seq rows (enc_tokens,
	 * enc_bias: fw_rt_encoder_fill) */
	if (spec->segmented && !m->enc_tokens && (!m->positions || !m->attn_bias))
		return fw_errorf(err, FW_ERR_UNSUPPORTED, "%s cannot train on SFT examples: it "
				 "gives no positions/attn_bias inputs for packed or padded rows", an);
	/* Under autocast the head's logits are bf16/f16; their readers (sampling,
	 * classification metrics) get f32. Graphs that do not output the
	 * logits never run this cast. */
	if (m->logits && m->logits->dtype != FW_F32 &&
	    !(m->logits = fw_cast(ctx, m->logits, FW_F32)))
		return named_err(err, fw_ctx_err(ctx)->status, an, fw_ctx_err(ctx)->msg);
	if (!slots->peft)
		return FW_OK;
	const struct fw_peft_i *pi = slots->peft->desc->iface;
	const char *pn = slots->peft->desc->name;
	int t0 = fw_ctx_n_tensors(ctx);     /* what freeze and extra_loss create is peft's */
	if (pi->freeze && (st = pi->freeze(slots->peft->state, m, &e)) != FW_OK)
		return named_err(err, st, pn, e.msg);
	if (pi->extra_loss && m->loss) {
		struct fw_tensor *x = pi->extra_loss(slots->peft->state, m, &e);
		if (!x && e.status)
			return fw_errorf(err, e.status, "%s: %s", pn, e.msg);
		if (x)
			m->loss = fw_add(ctx, m->loss, x);
	}
	for (int i = t0; i < fw_ctx_n_tensors(ctx); i++)
		if (fw_ctx_tensor(ctx, i)->flags & FW_FLAG_PARAM)
			fw_ctx_tensor(ctx, i)->flags |= FW_FLAG_BY_PEFT;
	return FW_OK;
}

enum fw_status fw_rt_plugin_twin(const struct fw_loaded *p, struct fw_loaded **twin,
				 struct fw_err *err)
{
	enum fw_status st = fw_plugin_open(p->path, p->desc->kind, twin, err);
	for (int i = 0; st == FW_OK && i < fw_options_count(p->opts); i++) {
		const char *name = fw_options_def(p->opts, i)->name;
		if (fw_options_has(p->opts, name))
			st = fw_options_set((*twin)->opts, name, fw_options_value(p->opts, i), err);
	}
	if (st == FW_OK)
		st = fw_options_resolve((*twin)->opts, err);
	if (st == FW_OK)
		st = fw_plugin_init(*twin, NULL, err);
	if (st != FW_OK && *twin) {
		fw_plugin_close(*twin);
		*twin = NULL;
	}
	return st;
}

const char *fw_rt_param_owner(const struct fw_tensor *p, const struct fw_plugin_slots *plugins)
{
	const struct fw_loaded *o = p->flags & FW_FLAG_BY_PEFT ? plugins->peft :
				    p->flags & FW_FLAG_BY_ATTENTION ? plugins->attention :
				    plugins->arch;
	return o ? o->desc->name : "";
}

int fw_rt_model_n_layers(const struct fw_plugin_slots *plugins)
{
	const struct fw_arch_i *arch = plugins->arch->desc->iface;
	int n = arch->n_layers ? arch->n_layers(plugins->arch->state, NULL) : 0;
	return n > 0 ? n : 0;
}

int fw_rt_model_params(const struct fw_ctx *ctx, struct fw_tensor ***params)
{
	int n = 0, nt = fw_ctx_n_tensors(ctx);
	struct fw_tensor **v = malloc(sizeof(*v) * (size_t)(nt + 1));
	for (int i = 0; v && i < nt; i++)
		if (fw_ctx_tensor(ctx, i)->flags & FW_FLAG_PARAM)
			v[n++] = fw_ctx_tensor(ctx, i);
	*params = v;
	return v ? n : -1;
}

/* Calls fn(p, q, err) for each parameter p of dst with a twin q in src (same
 * name, dtype and shape); stops at the first error. *n counts the calls. */
static enum fw_status each_twin(struct fw_ctx *dst, const struct fw_ctx *src, int *n,
				enum fw_status (*fn)(struct fw_ctx *dst, struct fw_tensor *p,
						     const struct fw_tensor *q, struct fw_err *err),
				struct fw_err *err)
{
	int count = 0;
	for (int i = 0; i < fw_ctx_n_tensors(dst); i++) {
		struct fw_tensor *p = fw_ctx_tensor(dst, i);
		if (!(p->flags & FW_FLAG_PARAM))
			continue;
		const struct fw_tensor *q = fw_ctx_find(src, p->name);
		if (!q || !(q->flags & FW_FLAG_PARAM) || q->dtype != p->dtype ||
		    !fw_same_shape(p, q))
			continue;
		enum fw_status st = fn(dst, p, q, err);
		if (st != FW_OK)
			return st;
		count++;
	}
	if (n)
		*n = count;
	return FW_OK;
}

static enum fw_status share_one(struct fw_ctx *dst, struct fw_tensor *p,
				const struct fw_tensor *q, struct fw_err *err)
{
	if (!q->data)
		return fw_errorf(err, FW_ERR_INVALID, "share weights: %s is not allocated in the "
				 "source model", q->name);
	if (p->data)
		return fw_errorf(err, FW_ERR_INVALID, "share weights: %s is already allocated "
				 "(share before the first graph)", p->name);
	enum fw_status st = fw_param_set_trainable(dst, p, false);
	if (st != FW_OK)
		return fw_errorf(err, st, "share weights: %s", fw_ctx_err(dst)->msg);
	p->data = q->data;
	return FW_OK;
}

void fw_rt_mark_params_written(struct fw_ctx *ctx, uint32_t need)
{
	for (int i = 0; i < fw_ctx_n_tensors(ctx); i++) {
		struct fw_tensor *t = fw_ctx_tensor(ctx, i);
		if ((t->flags & FW_FLAG_PARAM) && (t->flags & need) == need)
			fw_tensor_mark_written(t);
	}
}

static enum fw_status copy_one(struct fw_ctx *dst, struct fw_tensor *p,
			       const struct fw_tensor *q, struct fw_err *err)
{
	if (!p->data || !q->data)
		return fw_errorf(err, FW_ERR_INVALID, "copy weights: %s is not allocated", p->name);
	if (p->data != q->data)
		memcpy(p->data, q->data, fw_nbytes(p));
	fw_tensor_mark_written(p);
	return FW_OK;
}

enum fw_status fw_rt_model_share_weights(struct fw_ctx *dst, const struct fw_ctx *src,
					 int *n_shared, struct fw_err *err)
{
	return each_twin(dst, src, n_shared, share_one, err);
}

enum fw_status fw_rt_model_copy_weights(struct fw_ctx *dst, const struct fw_ctx *src,
					int *n_copied, struct fw_err *err)
{
	return each_twin(dst, src, n_copied, copy_one, err);
}
