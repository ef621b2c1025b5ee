/* ops.c - the op registry, node construction and the built-in constructors. */
#include <stdio.h>
#include <string.h>

#include "internal.h"

#define FW_MAX_PLUGIN_OPS 256

static const struct fw_op_i *builtin_ops[FW_OP_COUNT] = {
	[FW_OP_MATMUL] = &fw_op_matmul_i,
	[FW_OP_ADD] = &fw_op_add_i,
	[FW_OP_SUB] = &fw_op_sub_i,
	[FW_OP_MUL] = &fw_op_mul_i,
	[FW_OP_SCALE] = &fw_op_scale_i,
	[FW_OP_EMBEDDING] = &fw_op_embedding_i,
	[FW_OP_LAYERNORM] = &fw_op_layernorm_i,
	[FW_OP_RMSNORM] = &fw_op_rmsnorm_i,
	[FW_OP_GELU] = &fw_op_gelu_i,
	[FW_OP_RELU] = &fw_op_relu_i,
	[FW_OP_SILU] = &fw_op_silu_i,
	[FW_OP_TANH] = &fw_op_tanh_i,
	[FW_OP_SIGMOID] = &fw_op_sigmoid_i,
	[FW_OP_SOFTMAX] = &fw_op_softmax_i,
	[FW_OP_DROPOUT] = &fw_op_dropout_i,
	[FW_OP_CROSS_ENTROPY] = &fw_op_cross_entropy_i,
	[FW_OP_CONCAT] = &fw_op_concat_i,
	[FW_OP_SLICE] = &fw_op_slice_i,
	[FW_OP_RESHAPE] = &fw_op_reshape_i,
	[FW_OP_PERMUTE] = &fw_op_permute_i,
	[FW_OP_CONT] = &fw_op_cont_i,
	[FW_OP_SUM] = &fw_op_sum_i,
	[FW_OP_MEAN] = &fw_op_mean_i,
	[FW_OP_CAST] = &fw_op_cast_i,
	[FW_OP_ROPE] = &fw_op_rope_i,
	[FW_OP_KV_WRITE] = &fw_op_kv_write_i,
	[FW_OP_LSTM] = &fw_op_lstm_i,
	[FW_OP_LMHEAD_CE] = &fw_op_lmhead_ce_i,
};
_Static_assert(FW_OP_COUNT == 29, "update builtin_ops when adding an op");

static const struct fw_op_i *plugin_ops[FW_MAX_PLUGIN_OPS];
static int n_plugin_ops;

const struct fw_op_i *fw_op_get(int op)
{
	if (op > FW_OP_NONE && op < FW_OP_COUNT)
		return builtin_ops[op];
	if (op >= FW_OP_COUNT && op < FW_OP_COUNT + n_plugin_ops)
		return plugin_ops[op - FW_OP_COUNT];
	return NULL;
}

size_t fw_op_stash_bytes(const struct fw_tensor *out, bool grad_in_forward)
{
	return out->op == FW_OP_LMHEAD_CE ? fw_lmce_stash_bytes(out, grad_in_forward) : 0;
}

const char *fw_op_name(int op)
{
	if (op == FW_OP_NONE)
		return "none";
	const struct fw_op_i *vt = fw_op_get(op);
	return vt ? vt->name : "?";
}

int fw_op_register(const struct fw_op_i *op, struct fw_err *err)
{
	if (!op || op->size < offsetof(struct fw_op_i, saved) || !op->name ||
	    !op->infer || !op->forward) {
		fw_errorf(err, FW_ERR_INVALID,
			  "op register: '%s' lacks size, name, infer or forward",
			  op && op->name ? op->name : "?");
		return -1;
	}
	if (op->size > sizeof(struct fw_op_i)) {
		fw_errorf(err, FW_ERR_UNSUPPORTED,
			  "op register: '%s' was built against a newer fw (op struct %zu > %zu bytes)",
			  op->name, op->size, sizeof(struct fw_op_i));
		return -1;
	}
	for (int i = 1; i < FW_OP_COUNT + n_plugin_ops; i++) {
		if (strcmp(fw_op_name(i), op->name) == 0) {
			fw_errorf(err, FW_ERR_INVALID, "op register: an op named '%s' exists",
				  op->name);
			return -1;
		}
	}
	if (n_plugin_ops == FW_MAX_PLUGIN_OPS) {
		fw_errorf(err, FW_ERR_NOMEM, "op register: more than %d plugin ops",
			  FW_MAX_PLUGIN_OPS);
		return -1;
	}
	plugin_ops[n_plugin_ops] = op;
	return FW_OP_COUNT + n_plugin_ops++;
}

/* --- node construction ----------------------------------------------------- */

struct fw_tensor *fw_op_custom(struct fw_ctx *ctx, int op, struct fw_tensor **src,
			       int n_src, const union fw_param *params, int n_params)
{
	const struct fw_op_i *vt = fw_op_get(op);
	if (!vt) {
		fw_errorf(&ctx->err, FW_ERR_INVALID, "op %d is not registered", op);
		return NULL;
	}
	if (n_src < 0 || n_src > FW_MAX_SRC || n_params < 0 || n_params > FW_MAX_PARAMS) {
		fw_errorf(&ctx->err, FW_ERR_INVALID, "%s: %d sources, %d params is too many",
			  vt->name, n_src, n_params);
		return NULL;
	}
	if (n_src > 0 && !src[0])
		return NULL;            /* an earlier constructor failed */

	struct fw_tensor *in[FW_MAX_SRC] = { 0 };
	for (int i = 0; i < n_src; i++) {
		in[i] = src[i];
		if (in[i] && ctx->autocast != FW_F32 && !(vt->flags & FW_OPF_HALF) &&
		    (in[i]->dtype == FW_BF16 || in[i]->dtype == FW_F16)) {
			in[i] = fw_cast(ctx, in[i], FW_F32);   /* an op with f32 kernels only */
			if (!in[i])
				return NULL;
		}
		if (in[i] && !(vt->flags & FW_OPF_STRIDED) && !fw_is_contiguous(in[i])) {
			in[i] = fw_cont(ctx, in[i]);
			if (!in[i])
				return NULL;
		}
	}

	int64_t one = 1;
	struct fw_tensor *t = fw_tensor_new(ctx, FW_F32, 1, &one);
	if (!t)
		return NULL;
	t->op = op;
	for (int i = 0; i < n_src; i++)
		t->src[i] = in[i];
	for (int i = 0; i < n_params; i++)
		t->params[i] = params[i];
	if (vt->flags & FW_OPF_VIEW) {
		t->flags |= FW_FLAG_VIEW;
		t->view_src = in[0];
	}
	enum fw_status s = vt->infer(t, &ctx->err);
	if (s != FW_OK) {
		ctx->n_tensors--;      /* the failed node was the last one added */
		fw_free(t);
		return NULL;
	}
	FW_ASSERT(t->ndim >= 1 && t->ndim <= FW_MAX_DIMS);
	for (int i = 0; i < t->ndim; i++)
		FW_ASSERT(t->ne[i] > 0);
	if (!(vt->flags & FW_OPF_VIEW))
		fw_set_contiguous_strides(t);
	for (int i = 0; i < n_src; i++)
		if (in[i] && (in[i]->flags & FW_FLAG_NEEDS_GRAD) && vt->backward)
			t->flags |= FW_FLAG_NEEDS_GRAD;
	snprintf(t->name, sizeof(t->name), "%s#%d", vt->name, t->id);
	return t;
}

static struct fw_tensor *node(struct fw_ctx *ctx, int op, int n_src,
			      struct fw_tensor *a, struct fw_tensor *b, struct fw_tensor *c,
			      int n_params, const union fw_param *p)
{
	struct fw_tensor *src[3] = { a, b, c };
	/* A missing required source means an earlier failure: keep its error. */
	if (!a)
		return NULL;
	return fw_op_custom(ctx, op, src, n_src, p, n_params);
}

#define P(...) ((const union fw_param[]){ __VA_ARGS__ })

/* Autocast's product operands: f32 ones cast to ac. */
static void cast_operands(struct fw_ctx *ctx, struct fw_tensor **a, struct fw_tensor **b,
			  enum fw_dtype ac)
{
	if ((*a)->dtype == FW_F32)
		*a = fw_cast(ctx, *a, ac);
	if ((*b)->dtype == FW_F32)
		*b = fw_cast(ctx, *b, ac);
}

struct fw_tensor *fw_matmul(struct fw_ctx *ctx, struct fw_tensor *a, struct fw_tensor *b,
			    bool ta, bool tb)
{
	if (!a || !b)
		return NULL;
	enum fw_dtype ac = ctx->autocast;
	if (ac == FW_F32)
		return node(ctx, FW_OP_MATMUL, 2, a, b, NULL, 2, P({ .i = ta }, { .i = tb }));
	/* Autocast: operands in ac (f32 ones cast), the result in ac too. */
	cast_operands(ctx, &a, &b, ac);
	return node(ctx, FW_OP_MATMUL, 2, a, b, NULL, 3,
		    P({ .i = ta }, { .i = tb }, { .i = ac }));
}

struct fw_tensor *fw_linear(struct fw_ctx *ctx, struct fw_tensor *x, struct fw_tensor *w,
			    struct fw_tensor *bias)
{
	/* An f32 bias rides in the product's oneDNN call (one pass over the
	 * output less, and its gradient straight from dy). Under autocast it
	 * is added in f32 before the product is rounded to half. */
	enum fw_dtype ac = ctx->autocast;
	if (x && w && bias && bias->dtype == FW_F32 && bias->ndim == 1 &&
	    fw_is_contiguous(bias)) {
		if (ac == FW_F32)
			return node(ctx, FW_OP_MATMUL, 3, x, w, bias, 2,
				    P({ .i = false }, { .i = true }));
		cast_operands(ctx, &x, &w, ac);
		return node(ctx, FW_OP_MATMUL, 3, x, w, bias, 3,
			    P({ .i = false }, { .i = true }, { .i = ac }));
	}
	struct fw_tensor *y = fw_matmul(ctx, x, w, false, true);
	if (bias && ac != FW_F32 && bias->dtype == FW_F32)
		bias = fw_cast(ctx, bias, ac);      /* as torch's autocast linear */
	return bias ? fw_add(ctx, y, bias) : y;
}

#define BINARY(fn, OP) \
	struct fw_tensor *fn(struct fw_ctx *ctx, struct fw_tensor *a, struct fw_tensor *b) \
	{ \
		if (!b) \
			return NULL; \
		return node(ctx, OP, 2, a, b, NULL, 0, NULL); \
	}
BINARY(fw_add, FW_OP_ADD)
BINARY(fw_sub, FW_OP_SUB)
BINARY(fw_mul, FW_OP_MUL)

#define UNARY(fn, OP) \
	struct fw_tensor *fn(struct fw_ctx *ctx, struct fw_tensor *x) \
	{ \
		return node(ctx, OP, 1, x, NULL, NULL, 0, NULL); \
	}
UNARY(fw_relu, FW_OP_RELU)
UNARY(fw_silu, FW_OP_SILU)
UNARY(fw_tanh, FW_OP_TANH)
UNARY(fw_sigmoid, FW_OP_SIGMOID)
UNARY(fw_cont, FW_OP_CONT)

struct fw_tensor *fw_scale(struct fw_ctx *ctx, struct fw_tensor *a, float s)
{
	return node(ctx, FW_OP_SCALE, 1, a, NULL, NULL, 1, P({ .f = s }));
}

struct fw_tensor *fw_embedding(struct fw_ctx *ctx, struct fw_tensor *table,
			       struct fw_tensor *ids)
{
	if (!ids)
		return NULL;
	return node(ctx, FW_OP_EMBEDDING, 2, table, ids, NULL, 0, NULL);
}

struct fw_tensor *fw_layernorm(struct fw_ctx *ctx, struct fw_tensor *x,
			       struct fw_tensor *w, struct fw_tensor *b, float eps)
{
	return node(ctx, FW_OP_LAYERNORM, 3, x, w, b, 1, P({ .f = eps }));
}

struct fw_tensor *fw_rmsnorm(struct fw_ctx *ctx, struct fw_tensor *x, struct fw_tensor *w,
			     float eps)
{
	return node(ctx, FW_OP_RMSNORM, 2, x, w, NULL, 1, P({ .f = eps }));
}

struct fw_tensor *fw_gelu(struct fw_ctx *ctx, struct fw_tensor *x, enum fw_gelu_form form)
{
	return node(ctx, FW_OP_GELU, 1, x, NULL, NULL, 1, P({ .i = form }));
}

struct fw_tensor *fw_softmax(struct fw_ctx *ctx, struct fw_tensor *x, struct fw_tensor *bias,
			     bool causal, float scale)
{
	return node(ctx, FW_OP_SOFTMAX, 2, x, bias, NULL, 2,
		    P({ .i = causal }, { .f = scale }));
}

struct fw_tensor *fw_dropout(struct fw_ctx *ctx, struct fw_tensor *x, float p, uint64_t seed)
{
	return node(ctx, FW_OP_DROPOUT, 1, x, NULL, NULL, 3,
		    P({ .f = p }, { .i = (int32_t)(uint32_t)seed },
		      { .i = (int32_t)(uint32_t)(seed >> 32) }));
}

struct fw_tensor *fw_cross_entropy(struct fw_ctx *ctx, struct fw_tensor *logits,
				   struct fw_tensor *targets, struct fw_tensor *mask,
				   int ignore_index)
{
	if (!targets)
		return NULL;
	return node(ctx, FW_OP_CROSS_ENTROPY, 3, logits, targets, mask, 1,
		    P({ .i = ignore_index }));
}

struct fw_tensor *fw_lm_head_cross_entropy(struct fw_ctx *ctx, struct fw_tensor *x,
					   struct fw_tensor *w, struct fw_tensor *targets,
					   struct fw_tensor *mask, int ignore_index,
					   int chunk_rows)
{
	if (!x || !w || !targets)
		return NULL;
	if (ctx->autocast != FW_F32 && x->dtype == FW_F32)
		x = fw_cast(ctx, x, ctx->autocast);
	if (ctx->autocast != FW_F32 && w->dtype == FW_F32)
		w = fw_cast(ctx, w, ctx->autocast);
	struct fw_tensor *src[4] = { x, w, targets, mask };
	return fw_op_custom(ctx, FW_OP_LMHEAD_CE, src, 4,
			    P({ .i = ignore_index }, { .i = chunk_rows }), 2);
}

struct fw_tensor *fw_concat(struct fw_ctx *ctx, struct fw_tensor *a, struct fw_tensor *b,
			    int axis)
{
	if (!b)
		return NULL;
	return node(ctx, FW_OP_CONCAT, 2, a, b, NULL, 1, P({ .i = axis }));
}

struct fw_tensor *fw_slice(struct fw_ctx *ctx, struct fw_tensor *x, int axis,
			   int64_t start, int64_t length)
{
	if (start < 0 || start > INT32_MAX || length < 1 || length > INT32_MAX) {
		fw_errorf(&ctx->err, FW_ERR_SHAPE, "slice: start %lld length %lld out of range",
			  (long long)start, (long long)length);
		return NULL;
	}
	return node(ctx, FW_OP_SLICE, 1, x, NULL, NULL, 3,
		    P({ .i = axis }, { .i = (int32_t)start }, { .i = (int32_t)length }));
}

enum fw_status fw_split(struct fw_ctx *ctx, struct fw_tensor *x, int axis, int n,
			struct fw_tensor **out)
{
	if (!x)
		return ctx->err.status ? ctx->err.status : FW_ERR_INVALID;
	int ax = axis < 0 ? axis + x->ndim : axis;
	if (ax < 0 || ax >= x->ndim || n < 1 || x->ne[ax] % n)
		return fw_errorf(&ctx->err, FW_ERR_SHAPE,
				 "split: axis %d of size %lld cannot be split in %d", axis,
				 ax >= 0 && ax < x->ndim ? (long long)x->ne[ax] : -1LL, n);
	int64_t len = x->ne[ax] / n;
	for (int i = 0; i < n; i++) {
		out[i] = fw_slice(ctx, x, ax, i * len, len);
		if (!out[i])
			return ctx->err.status;
	}
	return FW_OK;
}

/* Whether x (any strides) reshaped to shape (one -1 allowed) is a view. */
static bool reshape_is_view(const struct fw_tensor *x, int ndim, const int64_t *shape)
{
	int64_t ne[FW_MAX_DIMS], nb[FW_MAX_DIMS], known = 1;
	int at = -1;
	for (int i = 0; i < ndim; i++) {
		ne[i] = shape[i];
		if (shape[i] == -1)
			at = i;
		else
			known *= shape[i];
	}
	if (at >= 0)
		ne[at] = fw_nelem(x) / known;
	return fw_view_strides(x, ndim, ne, nb);
}

struct fw_tensor *fw_reshape(struct fw_ctx *ctx, struct fw_tensor *x, int ndim,
			     const int64_t *shape)
{
	if (ndim < 1 || ndim > FW_MAX_DIMS) {
		fw_errorf(&ctx->err, FW_ERR_SHAPE, "reshape: %d dims unsupported", ndim);
		return NULL;
	}
	union fw_param p[FW_MAX_PARAMS] = { { .i = ndim } };
	for (int i = 0; i < ndim; i++) {
		if (shape[i] > INT32_MAX || shape[i] < -1 || shape[i] == 0) {
			fw_errorf(&ctx->err, FW_ERR_SHAPE, "reshape: bad size %lld",
				  (long long)shape[i]);
			return NULL;
		}
		p[1 + i].i = (int32_t)shape[i];
	}
	if (x && !fw_is_contiguous(x) && !reshape_is_view(x, ndim, shape))
		x = fw_cont(ctx, x);             /* the new shape cuts across x's strides */
	return node(ctx, FW_OP_RESHAPE, 1, x, NULL, NULL, 1 + ndim, p);
}

struct fw_tensor *fw_permute(struct fw_ctx *ctx, struct fw_tensor *x, const int *perm)
{
	if (!x)
		return NULL;
	union fw_param p[FW_MAX_DIMS];
	for (int i = 0; i < x->ndim; i++)
		p[i].i = perm[i];
	return node(ctx, FW_OP_PERMUTE, 1, x, NULL, NULL, x->ndim, p);
}

struct fw_tensor *fw_transpose(struct fw_ctx *ctx, struct fw_tensor *x, int d0, int d1)
{
	if (!x)
		return NULL;
	int perm[FW_MAX_DIMS];
	int a = d0 < 0 ? d0 + x->ndim : d0, b = d1 < 0 ? d1 + x->ndim : d1;
	if (a < 0 || a >= x->ndim || b < 0 || b >= x->ndim) {
		fw_errorf(&ctx->err, FW_ERR_SHAPE, "transpose: dims %d, %d out of range for %d dims",
			  d0, d1, x->ndim);
		return NULL;
	}
	for (int i = 0; i < x->ndim; i++)
		perm[i] = i;
	perm[a] = b;
	perm[b] = a;
	return fw_permute(ctx, x, perm);
}

static struct fw_tensor *reduce(struct fw_ctx *ctx, int op, struct fw_tensor *x, int axis,
				bool keepdim)
{
	return node(ctx, op, 1, x, NULL, NULL, 2, P({ .i = axis }, { .i = keepdim }));
}

struct fw_tensor *fw_sum(struct fw_ctx *ctx, struct fw_tensor *x, int axis, bool keepdim)
{
	return reduce(ctx, FW_OP_SUM, x, axis, keepdim);
}

struct fw_tensor *fw_mean(struct fw_ctx *ctx, struct fw_tensor *x, int axis, bool keepdim)
{
	return reduce(ctx, FW_OP_MEAN, x, axis, keepdim);
}

struct fw_tensor *fw_cast(struct fw_ctx *ctx, struct fw_tensor *x, enum fw_dtype dt)
{
	return node(ctx, FW_OP_CAST, 1, x, NULL, NULL, 1, P({ .i = dt }));
}

struct fw_tensor *fw_rope(struct fw_ctx *ctx, struct fw_tensor *x, struct fw_tensor *pos,
			  enum fw_rope_pos mode, int rotary_dim, bool interleaved, float base,
			  const struct fw_rope_llama3 *l3)
{
	if (mode != FW_ROPE_ARANGE && !pos)
		return NULL;
	const struct fw_rope_llama3 none = { 0 };
	if (!l3)
		l3 = &none;
	return node(ctx, FW_OP_ROPE, mode != FW_ROPE_ARANGE ? 2 : 1, x, pos, NULL, 8,
		    P({ .i = rotary_dim }, { .i = interleaved }, { .f = base },
		      { .f = l3->factor }, { .f = l3->low_freq_factor },
		      { .f = l3->high_freq_factor }, { .f = l3->original_max_position_embeddings },
		      { .i = mode }));
}

struct fw_tensor *fw_kv_write(struct fw_ctx *ctx, struct fw_tensor *cache,
			      struct fw_tensor *rows, struct fw_tensor *len)
{
	if (!rows || !len || !cache)
		return NULL;
	if (rows->dtype != cache->dtype)        /* e.g. f32 keys into a bf16 cache */
		rows = fw_cast(ctx, rows, cache->dtype);
	return node(ctx, FW_OP_KV_WRITE, 3, cache, rows, len, 0, NULL);
}

struct fw_tensor *fw_lstm(struct fw_ctx *ctx, struct fw_tensor *x, struct fw_tensor *w_ih,
			  struct fw_tensor *w_hh, struct fw_tensor *bias, bool reverse)
{
	struct fw_tensor *src[4] = { x, w_ih, w_hh, bias };
	if (!x || !w_ih || !w_hh || !bias)
		return NULL;
	return fw_op_custom(ctx, FW_OP_LSTM, src, 4, P({ .i = reverse }), 1);
}
