/* peft/common/virtual_tokens.h - virtual tokens in front of the input
 * embeddings (prompt tuning, P-tuning), as PEFT's PeftModelForCausalLM
 * concatenates them: the fw_model.n_virtual contract of plugin.h (ABI 1.3).
 * Header-only, included by one plugin each.
 */
#ifndef FW_PEFT_VIRTUAL_TOKENS_H
#define FW_PEFT_VIRTUAL_TOKENS_H

#include <stdio.h>
#include <string.h>

#include "fw/plugin.h"

/* The word embeddings x (B, T, C) with the virtual tokens v (P, C) before
 * token at (0: in front): (B, P + T, C). While decoding (T = 1) the shape
 * stays and the host picks the row with m->virtual_select (1, P + 1),
 * created here, for every row of the batch (all at one step): v[p] for
 * column p, x for column P. NULL with err set on
 * failure. */
static inline struct fw_tensor *vt_insert(const struct fw_host *h, const char *kind,
					  struct fw_model *m, struct fw_tensor *x,
					  struct fw_tensor *v, int64_t at, struct fw_err *err)
{
	struct fw_ctx *c = m->ctx;
	int64_t P = v->ne[0], C = v->ne[1];
	struct fw_tensor *y;
	if (!FW_HAS(m, virtual_select)) {
		h->errorf(err, FW_ERR_UNSUPPORTED, "%s: the host predates virtual tokens (ABI 1.3)",
			  kind);
		return NULL;
	}
	if (x->ndim != 3 || x->ne[2] != C) {
		h->errorf(err, FW_ERR_SHAPE, "%s: input embeddings of width %lld, virtual tokens of "
			  "%lld", kind, (long long)(x->ndim == 3 ? x->ne[2] : -1), (long long)C);
		return NULL;
	}
	m->virtual_at = at;
	if (m->caches) {
		if (x->ne[1] != 1) {    /* rows of a batch are all at one step */
			h->errorf(err, FW_ERR_UNSUPPORTED, "%s: decoding with virtual tokens needs "
				  "one token a step", kind);
			return NULL;
		}
		int64_t shape[2] = { 1, P + 1 };
		struct fw_tensor *sel = h->input(c, "peft.virtual_select", FW_F32, 2, shape);
		m->virtual_select = sel;
		struct fw_tensor *pick = h->matmul(c, h->cont(c, h->slice(c, sel, 1, 0, P)), v,
						   false, false);                   /* (1, C) */
		struct fw_tensor *keep = h->slice(c, sel, 1, P, 1);                 /* (1, 1) */
		y = h->add(c, h->reshape(c, pick, 3, (int64_t[]){ 1, 1, C }),
			   h->mul(c, x, h->reshape(c, h->cont(c, keep), 3, (int64_t[]){ 1, 1, 1 })));
	} else {
		/* zeros (B, 1, C) from x, so that v broadcasts over the batch */
		struct fw_tensor *zero = h->scale(c, h->slice(c, x, 1, 0, 1), 0.0f);
		y = h->add(c, zero, v);
		if (at > 0 && at < x->ne[1])
			y = h->concat(c, h->concat(c, h->slice(c, x, 1, 0, at), y, 1),
				      h->slice(c, x, 1, at, x->ne[1] - at), 1);
		else if (at == 0)
			y = h->concat(c, y, x, 1);
		else
			y = NULL, h->errorf(err, FW_ERR_INVALID, "%s: virtual tokens before token "
					    "%lld of %lld", kind, (long long)at, (long long)x->ne[1]);
	}
	if (!y && !err->status) {
		const struct fw_err *ce = h->ctx_err(c);
		h->errorf(err, ce->status ? ce->status : FW_ERR_INTERNAL, "%s: %s", kind, ce->msg);
	}
	return y;
}

/* PEFT's num_transformer_submodules: opt when given (> 0), else its
 * default, 2 on an encoder-decoder (task_type SEQ_2_SEQ_LM), 1 otherwise;
 * 0 with err set for 2 without an encoder-decoder. */
static inline int vt_submodules(const struct fw_host *h, const char *kind, const char *option,
				const struct fw_model *m, int64_t opt, struct fw_err *err)
{
	if (opt == 2 && !m->enc_tokens)
		return h->errorf(err, FW_ERR_INVALID, "%s: --%s=2 puts virtual tokens before a "
				 "decoder's inputs too, and the arch has no encoder-decoder", kind,
				 option), 0;
	return opt > 0 ? (int)opt : m->enc_tokens ? 2 : 1;
}

/* Whether x is the lookup of an encoder-decoder's decoder ids (arch/encdec
 * embeds them through host->embed after the encoder's). */
static inline bool vt_decoder_input(const struct fw_model *m, const struct fw_tensor *x)
{
	return m->enc_tokens && x && x->op == FW_OP_EMBEDDING && x->src[1] == m->tokens;
}

/* PEFT's second submodule (PeftModelForSeq2SeqLM.forward): the virtual
 * tokens v (P, C) before the decoder's word embeddings x (B, T, C), in
 * training and eval; none while decoding, as its generate passes the
 * encoder's alone. NULL: x unchanged (err set on failure). */
static inline struct fw_tensor *vt_decoder(const struct fw_host *h, const char *kind,
					   struct fw_model *m, struct fw_tensor *x,
					   struct fw_tensor *v, struct fw_err *err)
{
	struct fw_ctx *c = m->ctx;
	if (!v || m->caches)
		return NULL;
	struct fw_tensor *zero = h->scale(c, h->slice(c, x, 1, 0, 1), 0.0f);
	struct fw_tensor *y = h->concat(c, h->add(c, zero, v), x, 1);
	if (!y) {
		const struct fw_err *ce = h->ctx_err(c);
		h->errorf(err, ce->status ? ce->status : FW_ERR_INTERNAL, "%s: %s", kind, ce->msg);
	}
	return y;
}

/* The table the word embeddings x were looked up in (its embedding op's
 * source), or NULL when x is not an embedding lookup. */
static inline struct fw_tensor *vt_word_table(struct fw_tensor *x)
{
	return x && x->op == FW_OP_EMBEDDING ? x->src[0] : NULL;
}

#endif
