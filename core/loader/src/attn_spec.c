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
	if (!spec->cache && k->ne[1] != q->ne[1])
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

struct fw_tensor *fw_attn_rope(struct fw_model *m, const struct fw_attn_spec *spec,
			       struct fw_tensor *x)
{
	struct fw_rope_llama3 l3 = { 0 };
	bool scaled = FW_HAS(spec, rope_scale_orig_max_pos) && spec->rope_scale_factor > 0;
	if (scaled)
		l3 = (struct fw_rope_llama3){ spec->rope_scale_factor, spec->rope_scale_low_freq,
					      spec->rope_scale_high_freq,
					      (float)spec->rope_scale_orig_max_pos };
	struct fw_tensor *pos = NULL;
	enum fw_rope_pos mode = FW_ROPE_ARANGE;
	if (spec->cache) {      /* the cache length, or each token's slot (B, T) */
		pos = spec->cache->len;
		mode = fw_attn_cache_slots(spec) ? FW_ROPE_POSITIONS : FW_ROPE_OFFSET;
	} else if (FW_HAS(m, positions) && m->positions) {
		pos = m->positions;
		mode = FW_ROPE_POSITIONS;
	}
	return fw_rope(m->ctx, x, pos, mode, spec->rope_dim ? spec->rope_dim : spec->head_dim,
		       spec->rope_interleaved, spec->rope_base > 0 ? spec->rope_base : 10000.0f,
		       scaled ? &l3 : NULL);
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
		*slot = fw_input(m->ctx, name, FW_F32, 4, shape);
	}
	return *slot ? fw_kv_write(m->ctx, *slot, x, spec->cache->len) : NULL;
}
