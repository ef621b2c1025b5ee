/* attention/naive - exact multi-head attention from host ops, the reference
 * the fused attention plugins are compared with:
 *
 *     y = softmax(scale * q k^T + bias, causal) v      per (batch, head)
 *
 * q, k, v are (B,T,H,D); the output is (B,T,H,D), contiguous. Only plain
 * multi-head attention: n_kv_head must equal n_head, no rotary positions, no
 * generation cache. */
#include <math.h>
#include <stddef.h>

#include "fw/plugin.h"

/* A spec field the caller's struct is large enough to hold. */
#define HAS(spec, field) \
	((spec)->size >= offsetof(struct fw_attn_spec, field) + sizeof((spec)->field))

static struct fw_tensor *naive_attend(void *state, struct fw_model *m,
				      const struct fw_attn_spec *spec, struct fw_tensor *q,
				      struct fw_tensor *k, struct fw_tensor *v, struct fw_err *err)
{
	const struct fw_host *h = m->host;
	struct fw_ctx *ctx = m->ctx;
	static const int to_bhtd[4] = { 0, 2, 1, 3 };   /* (B,T,H,D) <-> (B,H,T,D) */

	if (!HAS(spec, scale)) {
		h->errorf(err, FW_ERR_UNSUPPORTED,
			  "attention/naive: attention spec of %zu bytes is too old", spec->size);
		return NULL;
	}
	if (spec->n_kv_head != spec->n_head) {
		h->errorf(err, FW_ERR_UNSUPPORTED,
			  "attention/naive: %s: n_kv_head %d != n_head %d (grouped-query "
			  "attention) is not supported", spec->name, spec->n_kv_head,
			  spec->n_head);
		return NULL;
	}
	if (spec->cache || spec->pos == FW_POS_ROPE || spec->pos == FW_POS_ALIBI) {
		h->errorf(err, FW_ERR_UNSUPPORTED,
			  "attention/naive: %s: %s is not supported", spec->name,
			  spec->cache ? "a generation cache" : "rotary/ALiBi positions");
		return NULL;
	}
	int64_t D = q->ne[3];
	float scale = spec->scale != 0.0f ? spec->scale : 1.0f / sqrtf((float)D);

	/* Additive bias: sequences (B,1,Tq,Tk), relative bias (H,Tq,Tk). */
	struct fw_tensor *bias = spec->bias;
	if (spec->pos == FW_POS_RELATIVE && spec->pos_bias)
		bias = bias ? h->add(ctx, bias, spec->pos_bias) : spec->pos_bias;

	struct fw_tensor *qh = h->permute(ctx, q, to_bhtd);            /* (B,H,Tq,D) */
	struct fw_tensor *kh = h->permute(ctx, k, to_bhtd);            /* (B,H,Tk,D) */
	struct fw_tensor *vh = h->permute(ctx, v, to_bhtd);            /* (B,H,Tk,D) */
	struct fw_tensor *att = h->matmul(ctx, qh, kh, false, true);   /* (B,H,Tq,Tk) */
	att = h->softmax(ctx, att, bias, spec->mask == FW_MASK_CAUSAL, scale);
	if (m->training && spec->dropout > 0.0f)
		att = h->dropout(ctx, att, spec->dropout, spec->seed ^ (uint64_t)spec->layer);
	struct fw_tensor *y = h->matmul(ctx, att, vh, false, false);   /* (B,H,Tq,D) */
	y = h->cont(ctx, h->permute(ctx, y, to_bhtd));                /* (B,Tq,H,D) */
	if (!y) {
		const struct fw_err *ce = h->ctx_err(ctx);
		h->errorf(err, ce->status ? ce->status : FW_ERR_INTERNAL, "attention/naive: %s: %s",
			  spec->name, ce->msg);
	}
	return y;
}

static const struct fw_attention_i iface = {
	.size = sizeof(struct fw_attention_i),
	.attend = naive_attend,
};

static const struct fw_plugin plugin = {
	FW_PLUGIN_HEADER,
	.kind = FW_KIND_ATTENTION,
	.name = "attention/naive",
	.version = "0.0.1",
	.description = "exact multi-head attention from host ops (reference, no GQA)",
	.iface = &iface,
};

FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void)
{
	return &plugin;
}
