/* attention/mha - exact multi-head attention, causal or bidirectional.
 *
 * q (B, Tq, H, D), k and v (B, Tk, H, D) are permuted to (B, H, T, D) as
 * strided views (no copy), then softmax(q k^T / sqrt(D) + mask) v with the
 * mask fused into the softmax; the output is permuted back to (B, Tq, H, D).
 * Not yet: grouped-query heads, position hooks, padding masks, KV cache
 * (each is refused with a clear error).
 */
#include <math.h>

#include "fw/plugin.h"

struct mha {
	const struct fw_host *host;
};

static struct fw_tensor *mha_attend(void *state, struct fw_model *m,
				    const struct fw_attn_spec *spec, struct fw_tensor *q,
				    struct fw_tensor *k, struct fw_tensor *v, struct fw_err *err)
{
	const struct fw_host *h = ((struct mha *)state)->host;
	struct fw_ctx *ctx = m->ctx;
	static const int to_heads[4] = { 0, 2, 1, 3 };

	if (spec->n_kv_head != spec->n_head)
		return h->errorf(err, FW_ERR_UNSUPPORTED,
				 "attention/mha: %s has %d KV heads for %d query heads; "
				 "grouped-query attention is not supported by this plugin",
				 spec->name, spec->n_kv_head, spec->n_head), NULL;
	if (spec->pos != FW_POS_NONE || spec->cache || spec->padding)
		return h->errorf(err, FW_ERR_UNSUPPORTED,
				 "attention/mha: %s: position hooks, padding masks and the KV cache "
				 "are not supported by this plugin yet", spec->name), NULL;
	float scale = spec->scale > 0 ? spec->scale : 1.0f / sqrtf((float)spec->head_dim);
	struct fw_tensor *qh = h->permute(ctx, q, to_heads);              /* (B, H, Tq, D) */
	struct fw_tensor *kh = h->permute(ctx, k, to_heads);              /* (B, H, Tk, D) */
	struct fw_tensor *vh = h->permute(ctx, v, to_heads);
	struct fw_tensor *att = h->matmul(ctx, qh, kh, false, true);      /* (B, H, Tq, Tk) */
	att = h->softmax(ctx, att, NULL, spec->mask == FW_MASK_CAUSAL, scale);
	if (spec->dropout > 0.0f)
		att = h->dropout(ctx, att, spec->dropout, spec->seed);
	struct fw_tensor *y = h->matmul(ctx, att, vh, false, false);      /* (B, H, Tq, D) */
	y = h->cont(ctx, h->permute(ctx, y, to_heads));                   /* (B, Tq, H, D) */
	if (!y) {
		struct fw_err *e = h->ctx_err(ctx);
		return h->errorf(err, e->status ? e->status : FW_ERR_INTERNAL,
				 "attention/mha: %s: %s", spec->name, e->msg), NULL;
	}
	return y;
}

static enum fw_status mha_init(const struct fw_host *host, const struct fw_options *o,
			       void **state, struct fw_err *err)
{
	struct mha *s = host->malloc(sizeof(*s));
	if (!s)
		return host->errorf(err, FW_ERR_NOMEM, "attention/mha: out of memory");
	s->host = host;
	*state = s;
	return FW_OK;
}

static void mha_fini(void *state)
{
	struct mha *s = state;
	if (s)
		s->host->free(s);
}

static const struct fw_attention_i iface = {
	.size = sizeof(struct fw_attention_i),
	.attend = mha_attend,
};

static const struct fw_plugin plugin = {
	FW_PLUGIN_HEADER,
	.kind = FW_KIND_ATTENTION,
	.name = "attention/mha",
	.version = "1.0.0",
	.description = "exact multi-head attention (causal or bidirectional), fused mask+softmax",
	.iface = &iface,
	.init = mha_init,
	.fini = mha_fini,
};

FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void)
{
	return &plugin;
}
