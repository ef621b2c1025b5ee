/* attention/mha - exact multi-head attention, causal or bidirectional.
 *
 * q (B, Tq, H, D), k and v (B, Tk, H, D) are permuted to (B, H, T, D) as
 * strided views (no copy), then softmax(q k^T / sqrt(D) + mask) v with the
 * mask fused into the softmax; the output is permuted back to (B, Tq, H, D).
 * While generating, keys and values go through the plugin's own op
 * "mha.kv_write" into a per-layer cache, and the new queries attend over the
 * whole cache under the host's mask. A sequence bias (padding, packed
 * documents; fw_attn_spec.bias) is added in the same fused softmax, on top
 * of the causal mask; fully masked query rows give zeros.
 * Not yet: grouped-query heads, position hooks (each is refused with a
 * clear error).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "fw/plugin.h"

struct mha {
	const struct fw_host *host;
	int kv_write_op;
};

/* kv_write: src0 cache (B, Tmax, H, D), src1 new (B, Tq, H, D), src2 len i32
 * [1]. Copies new into cache rows [len, len + Tq) and returns the cache
 * itself (a view), so readers run after the write. */
static enum fw_status kv_write_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *c = out->src[0], *x = out->src[1], *len = out->src[2];
	if (!x || !len || c->ndim != 4 || x->ndim != 4 || c->ne[0] != x->ne[0] ||
	    c->ne[2] != x->ne[2] || c->ne[3] != x->ne[3] || x->ne[1] > c->ne[1] ||
	    c->dtype != FW_F32 || x->dtype != FW_F32 || len->dtype != FW_I32)
		return fw_errorf(err, FW_ERR_SHAPE, "mha.kv_write: cache and new rows do not fit");
	out->dtype = FW_F32;
	out->ndim = 4;
	for (int i = 0; i < 4; i++) {
		out->ne[i] = c->ne[i];
		out->nb[i] = c->nb[i];
	}
	out->view_offset = 0;
	return FW_OK;
}

static void kv_write_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	const struct fw_tensor *c = out->src[0], *x = out->src[1];
	int64_t pos = *(const int32_t *)out->src[2]->data;
	int64_t B = c->ne[0], Tmax = c->ne[1], Tq = x->ne[1], row = c->ne[2] * c->ne[3];
	if (pos < 0 || pos + Tq > Tmax)
		pos = pos < 0 ? 0 : Tmax - Tq;      /* the host checks; never write outside */
	for (int64_t b = 0; b < B; b++)
		memcpy((float *)c->data + (b * Tmax + pos) * row,
		       (const float *)x->data + b * Tq * row, sizeof(float) * (size_t)(Tq * row));
	out->data = c->data;
}

static const struct fw_op_i kv_write_op = {
	.size = sizeof(struct fw_op_i),
	.name = "mha.kv_write",
	.flags = FW_OPF_VIEW,
	.infer = kv_write_infer,
	.forward = kv_write_forward,
};

static struct fw_tensor *cached(struct mha *s, struct fw_model *m,
				const struct fw_attn_spec *spec, struct fw_tensor **slot,
				struct fw_tensor *x, const char *what)
{
	const struct fw_host *h = s->host;
	if (!*slot) {
		char name[FW_NAME_MAX];
		int64_t shape[4] = { x->ne[0], spec->cache->max_len, x->ne[2], x->ne[3] };
		snprintf(name, sizeof(name), "kv_cache.%s.%s", spec->name, what);
		*slot = h->input(m->ctx, name, FW_F32, 4, shape);
	}
	struct fw_tensor *src[3] = { *slot, x, spec->cache->len };
	return *slot ? h->op(m->ctx, s->kv_write_op, src, 3, NULL, 0) : NULL;
}

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
	if (spec->pos != FW_POS_NONE)
		return h->errorf(err, FW_ERR_UNSUPPORTED,
				 "attention/mha: %s: position hooks (RoPE, ALiBi, relative) are not "
				 "supported by this plugin yet", spec->name), NULL;
	if (spec->bias && spec->cache)
		return h->errorf(err, FW_ERR_UNSUPPORTED,
				 "attention/mha: %s: a sequence mask while generating with a cache is "
				 "not supported", spec->name), NULL;
	struct fw_tensor *mask = spec->bias;     /* (B, 1, Tq, Tk): broadcast over heads */
	bool causal = spec->mask == FW_MASK_CAUSAL;
	if (spec->cache) {      /* generating: attend over the whole cache */
		k = cached(state, m, spec, &spec->cache->k, k, "k");
		v = cached(state, m, spec, &spec->cache->v, v, "v");
		mask = spec->cache->mask;
		causal = false;         /* the mask already hides future positions */
	}
	float scale = spec->scale > 0 ? spec->scale : 1.0f / sqrtf((float)spec->head_dim);
	struct fw_tensor *qh = h->permute(ctx, q, to_heads);              /* (B, H, Tq, D) */
	struct fw_tensor *kh = h->permute(ctx, k, to_heads);              /* (B, H, Tk, D) */
	struct fw_tensor *vh = h->permute(ctx, v, to_heads);
	struct fw_tensor *att = h->matmul(ctx, qh, kh, false, true);      /* (B, H, Tq, Tk) */
	att = h->softmax(ctx, att, mask, causal, scale);
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
	static int kv_write_id = -1;        /* registered once per process */
	if (kv_write_id < 0) {
		kv_write_id = host->op_register(&kv_write_op, err);
		if (kv_write_id < 0)
			return err->status;
	}
	struct mha *s = host->malloc(sizeof(*s));
	if (!s)
		return host->errorf(err, FW_ERR_NOMEM, "attention/mha: out of memory");
	s->host = host;
	s->kv_write_op = kv_write_id;
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
