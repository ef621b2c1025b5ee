/* attn_spec.c - the fw_attn_* helpers of fw/plugin.h: a struct fw_attn_spec
 * turned into the engine's RoPE and KV-cache ops for attention plugins.
 */
#include <math.h>
#include <stdio.h>

#include "fw/plugin.h"

enum fw_status fw_attn_check_rope(const struct fw_attn_spec *spec, const struct fw_tensor *q,
				  const struct fw_tensor *k, const char *plugin,
				  enum fw_status prepended, struct fw_err *err)
{
	const char *n = spec->name;
	if (spec->pos != FW_POS_ROPE)
		return FW_OK;
	int r = spec->rope_dim ? spec->rope_dim : spec->head_dim;
	if (r < 0 || r % 2 || r > spec->head_dim || r / 2 > FW_ROPE_MAX_PAIRS)
		return fw_errorf(err, FW_ERR_INVALID,
				 "%s: %s: rotary dim %d must be even, positive and at most the head "
				 "dim %d", plugin, n, r, spec->head_dim);
	if (!(spec->rope_base >= 0) || isinf(spec->rope_base))
		return fw_errorf(err, FW_ERR_INVALID, "%s: %s: rope base %g", plugin, n,
				 (double)spec->rope_base);
	int64_t prefix = FW_HAS(spec, n_prefix) ? spec->n_prefix : 0;
	if (!spec->cache && k->ne[1] != q->ne[1] + prefix)
		return fw_errorf(err, prepended,
				 "%s: %s: RoPE needs as many keys as queries (%lld vs %lld): "
				 "prepended keys are not supported", plugin, n, (long long)k->ne[1],
				 (long long)q->ne[1]);
	if (FW_HAS(spec, rope_scale_orig_max_pos) && spec->rope_scale_factor > 0 &&
	    (spec->rope_scale_factor < 1 || spec->rope_scale_orig_max_pos <= 0 ||
	     !(spec->rope_scale_low_freq > 0) ||
	     !(spec->rope_scale_high_freq > spec->rope_scale_low_freq)))
		return fw_errorf(err, FW_ERR_INVALID,
				 "%s: %s: llama3 rope scaling needs factor >= 1, 0 < low_freq_factor "
				 "< high_freq_factor and original max positions > 0", plugin, n);
	return FW_OK;
}

struct fw_tensor *fw_attn_cache_slots(const struct fw_attn_spec *spec)
{
	struct fw_tensor *len = spec->cache ? spec->cache->len : NULL;
	return len && len->ndim == 2 ? len : NULL;
}

/* i32 [1] holding P, one per context: the RoPE offset of the tokens after a
 * prefix of P keys. */
static struct fw_tensor *prefix_offset(struct fw_model *m, int64_t P)
{
	static const char name[] = "rope_prefix_offset";
	struct fw_tensor *t = fw_ctx_find(m->ctx, name);
	if (t)
		return t;
	int32_t *at = fw_ctx_alloc(m->ctx, sizeof(int32_t), FW_MEM_INPUTS);
	if (!at || !(t = fw_input(m->ctx, name, FW_I32, 1, (int64_t[]){ 1 })))
		return NULL;
	*at = (int32_t)P;
	t->data = at;
	return t;
}

/* fw_rope of x as spec asks, at positions pos (mode). */
static struct fw_tensor *rope_at(struct fw_model *m, const struct fw_attn_spec *spec,
				 struct fw_tensor *x, struct fw_tensor *pos, enum fw_rope_pos mode)
{
	struct fw_rope_llama3 l3 = { 0 };
	bool scaled = FW_HAS(spec, rope_scale_orig_max_pos) && spec->rope_scale_factor > 0;
	if (scaled)
		l3 = (struct fw_rope_llama3){ spec->rope_scale_factor, spec->rope_scale_low_freq,
					      spec->rope_scale_high_freq,
					      (float)spec->rope_scale_orig_max_pos };
	return fw_rope(m->ctx, x, pos, mode, spec->rope_dim ? spec->rope_dim : spec->head_dim,
		       spec->rope_interleaved, spec->rope_base > 0 ? spec->rope_base : 10000.0f,
		       scaled ? &l3 : NULL);
}

struct fw_tensor *fw_attn_rope(struct fw_model *m, const struct fw_attn_spec *spec,
			       struct fw_tensor *x)
{
	if (spec->cache)        /* the cache length, or each token's slot (B, T) */
		return rope_at(m, spec, x, spec->cache->len,
			       fw_attn_cache_slots(spec) ? FW_ROPE_POSITIONS : FW_ROPE_OFFSET);
	if (FW_HAS(m, positions) && m->positions)
		return rope_at(m, spec, x, m->positions, FW_ROPE_POSITIONS);
	/* After P prefix keys (prefix tuning): the queries and the real keys
	 * from position P on, as cached keys the prefix keys unrotated. */
	int64_t P = FW_HAS(spec, n_prefix) && x ? spec->n_prefix : 0;
	if (P <= 0)
		return rope_at(m, spec, x, NULL, FW_ROPE_ARANGE);
	struct fw_tensor *off = prefix_offset(m, P);
	if (x->ne[1] != m->seq_len + P)         /* the queries */
		return off ? rope_at(m, spec, x, off, FW_ROPE_OFFSET) : NULL;
	struct fw_tensor *real = fw_cont(m->ctx, fw_slice(m->ctx, x, 1, P, x->ne[1] - P));
	real = off ? rope_at(m, spec, real, off, FW_ROPE_OFFSET) : NULL;
	return real ? fw_concat(m->ctx, fw_cont(m->ctx, fw_slice(m->ctx, x, 1, 0, P)), real, 1) :
	       NULL;
}

struct fw_tensor *fw_attn_cache_write(struct fw_model *m, const struct fw_attn_spec *spec,
				      struct fw_tensor **slot, struct fw_tensor *x,
				      const char *what)
{
	if (!x)
		return NULL;
	if (!*slot) {
		char name[FW_NAME_MAX];
		int64_t shape[4] = { x->ne[0], spec->cache->max_len, x->ne[2], x->ne[3] };
		snprintf(name, sizeof(name), "kv_cache.%s.%s", spec->name, what);
		*slot = fw_input(m->ctx, name, fw_ctx_autocast(m->ctx), 4, shape);
	}
	return *slot ? fw_kv_write(m->ctx, *slot, x, spec->cache->len) : NULL;
}
