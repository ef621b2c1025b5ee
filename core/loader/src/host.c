/* host.c - the service table plugins receive, and routing between plugins
 * while an arch builds its graph. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "loader_internal.h"

static enum fw_log_level log_threshold = FW_LOG_INFO;

void fw_log_set_level(enum fw_log_level level)
{
	log_threshold = level;
}

static void host_log(enum fw_log_level level, const char *fmt, ...)
{
	static const char *const tags[] = { "debug", "info", "warning", "error" };
	if ((unsigned)level > FW_LOG_ERROR)
		level = FW_LOG_ERROR;          /* a plugin's out-of-range level */
	if (level < log_threshold)
		return;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "fw: %s: ", tags[level]);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

/* Ops may be registered only while a plugin's init runs (fw_plugin_init
 * opens this window), as Redis modules register commands only on load. */
static int registering;

void fw_host_registration(bool open)
{
	registering += open ? 1 : -1;
}

static int host_op_register(const struct fw_op_i *op, struct fw_err *err)
{
	if (registering <= 0) {
		fw_errorf(err, FW_ERR_INVALID,
			  "op register: '%s' registered outside plugin init",
			  op && op->name ? op->name : "?");
		return -1;
	}
	return fw_op_register(op, err);
}

static void *host_malloc(size_t n)
{
	return fw_malloc(n);
}

/* The plugins loaded for one model, reached through m->host_private. */
static const struct fw_plugin_slots *slots(const struct fw_model *m)
{
	return m->host_private;
}

static struct fw_tensor *fail(struct fw_model *m, const struct fw_err *e)
{
	struct fw_err *ce = fw_ctx_err(m->ctx);
	*ce = *e;
	return NULL;
}

/* Marks the parameters created since tensor index t0 as the hook's (flag). */
static void owned_since(struct fw_model *m, int t0, uint32_t flag)
{
	for (int i = t0; i < fw_ctx_n_tensors(m->ctx); i++) {
		struct fw_tensor *t = fw_ctx_tensor(m->ctx, i);
		if (t->flags & FW_FLAG_PARAM)
			t->flags |= flag;
	}
}

static struct fw_tensor *host_linear(struct fw_model *m, const char *name, struct fw_tensor *x,
				     struct fw_tensor *w, struct fw_tensor *bias)
{
	const struct fw_plugin_slots *ps = slots(m);
	if (!x || !w)
		return NULL;
	if (ps && ps->peft) {
		const struct fw_peft_i *pi = ps->peft->desc->iface;
		if (pi->wrap_linear) {
			struct fw_err e = { 0 };
			int t0 = fw_ctx_n_tensors(m->ctx);
			struct fw_tensor *y = pi->wrap_linear(ps->peft->state, m, name, x, w, bias, &e);
			owned_since(m, t0, FW_FLAG_BY_PEFT);
			if (y)
				return y;
			if (e.status != FW_OK)
				return fail(m, &e);
		}
	}
	return fw_linear(m->ctx, x, w, bias);
}

static struct fw_tensor *host_attention(struct fw_model *m, const struct fw_attn_spec *spec,
					struct fw_tensor *q, struct fw_tensor *k,
					struct fw_tensor *v)
{
	const struct fw_plugin_slots *ps = slots(m);
	struct fw_err e = { 0 };
	if (!q || !k || !v)
		return NULL;
	if (!ps || !ps->attention) {
		fw_errorf(&e, FW_ERR_INVALID, "%s: no attention plugin loaded (add one to --plugins)",
			  spec->name);
		return fail(m, &e);
	}
	struct fw_attn_spec prefixed;           /* spec with the rows wrap_kv prepended */
	if (ps->peft) {
		const struct fw_peft_i *pi = ps->peft->desc->iface;
		int t0 = fw_ctx_n_tensors(m->ctx);
		int64_t rows = k->ne[1];
		enum fw_status st = pi->wrap_kv ? pi->wrap_kv(ps->peft->state, m, spec, &k, &v, &e) :
				    FW_OK;
		owned_since(m, t0, FW_FLAG_BY_PEFT);
		if (st != FW_OK)
			return fail(m, &e);
		if (k && k->ne[1] != rows) {
			memset(&prefixed, 0, sizeof(prefixed));
			memcpy(&prefixed, spec, spec->size < sizeof(prefixed) ? spec->size :
			       sizeof(prefixed));
			prefixed.size = sizeof(prefixed);
			prefixed.n_prefix = k->ne[1] - rows;
			spec = &prefixed;
		}
	}
	const struct fw_attention_i *ai = ps->attention->desc->iface;
	int t0 = fw_ctx_n_tensors(m->ctx);
	struct fw_tensor *y = ai->attend(ps->attention->state, m, spec, q, k, v, &e);
	owned_since(m, t0, FW_FLAG_BY_ATTENTION);
	if (!y && e.status != FW_OK)
		return fail(m, &e);
	return y;
}

static struct fw_tensor *host_embed(struct fw_model *m, struct fw_tensor *x)
{
	const struct fw_plugin_slots *ps = slots(m);
	if (!x)
		return NULL;
	if (ps && ps->peft) {
		const struct fw_peft_i *pi = ps->peft->desc->iface;
		if (pi->wrap_embed) {
			struct fw_err e = { 0 };
			int t0 = fw_ctx_n_tensors(m->ctx);
			struct fw_tensor *y = pi->wrap_embed(ps->peft->state, m, x, &e);
			owned_since(m, t0, FW_FLAG_BY_PEFT);
			if (!y && e.status != FW_OK)
				return fail(m, &e);
			if (y && (y->ndim != 3 || y->ne[0] != x->ne[0] || y->ne[2] != x->ne[2] ||
				  y->ne[1] < x->ne[1])) {
				fw_errorf(&e, FW_ERR_SHAPE, "%s: wrap_embed returned %lld x %lld x %lld "
					  "for embeddings %lld x %lld x %lld (only rows may be added)",
					  ps->peft->desc->name, (long long)y->ne[0],
					  (long long)y->ne[1], (long long)y->ne[2], (long long)x->ne[0],
					  (long long)x->ne[1], (long long)x->ne[2]);
				return fail(m, &e);
			}
			m->n_virtual = y ? y->ne[1] - x->ne[1] : 0;
			return y ? y : x;
		}
	}
	return x;
}

static void host_init_normal(struct fw_model *m, struct fw_tensor *p, float std)
{
	if (p)
		fw_param_set_init(p, FW_INIT_NORMAL, std);
}

static void host_init_const(struct fw_model *m, struct fw_tensor *p, float value)
{
	if (p)
		fw_param_set_init(p, value == 0.0f ? FW_INIT_ZERO : FW_INIT_CONST, value);
}

static const struct fw_host host = {
	.size = sizeof(struct fw_host),
	.abi_major = FW_ABI_MAJOR,
	.abi_minor = FW_ABI_MINOR,
	.malloc = host_malloc,
	.free = fw_free,
	.errorf = fw_errorf,
	.log = host_log,
	.op_register = host_op_register,
	.parallel_for = fw_parallel_for,
	.param = fw_param,
	.input = fw_input,
	.op = fw_op_custom,
	.matmul = fw_matmul,
	.add = fw_add,
	.mul = fw_mul,
	.scale = fw_scale,
	.reshape = fw_reshape,
	.permute = fw_permute,
	.slice = fw_slice,
	.cont = fw_cont,
	.concat = fw_concat,
	.softmax = fw_softmax,
	.dropout = fw_dropout,
	.embedding = fw_embedding,
	.layernorm = fw_layernorm,
	.rmsnorm = fw_rmsnorm,
	.gelu = fw_gelu,
	.silu = fw_silu,
	.relu = fw_relu,
	.tanh = fw_tanh,
	.cross_entropy = fw_cross_entropy,
	.sum = fw_sum,
	.checkpoint_begin = fw_ctx_checkpoint_begin,
	.checkpoint_end = fw_ctx_checkpoint_end,
	.ctx_err = fw_ctx_err,
	.ctx_alloc = fw_ctx_alloc,
	.linear = host_linear,
	.attention = host_attention,
	.embed = host_embed,
	.init_normal = host_init_normal,
	.init_const = host_init_const,
	.lm_head_cross_entropy = fw_lm_head_cross_entropy,
};

const struct fw_host *fw_host_table(void)
{
	return &host;
}
