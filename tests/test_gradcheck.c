/* test_gradcheck.c - finite-difference gradient checks of every built-in op
 * (fwt_gradcheck in harness.c: central differences, see harness.h for the
 * tolerance; kv_write, which has no gradient, gets a value check), the
 * checker itself on a registered plugin op (a correct one passes, a wrong one
 * is caught), dropout's mask statistics and determinism, and cross-entropy's
 * ignored tokens.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

/* Arguments of the op under test, passed to the builders as user data. */
struct args {
	bool ta, tb, causal, keepdim, reverse;
	int axis, form, ignore, nd, chunk;
	float s, eps, p;
	int64_t start, len;
	int perm[FW_MAX_DIMS];
	int64_t shape[FW_MAX_DIMS];
	uint64_t seed;
	/* rope: mode enum fw_rope_pos (in[1] = positions or offset), llama3 if factor > 0 */
	int rope_dim, rope_mode;
	bool interleaved;
	float base;
	struct fw_rope_llama3 l3;
};

#define ARGS(x) ((const struct args *)(x))

static struct fw_tensor *b_lstm(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_lstm(c, in[0], in[1], in[2], in[3], ARGS(u)->reverse);
}

static struct fw_tensor *b_matmul(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_matmul(c, in[0], in[1], ARGS(u)->ta, ARGS(u)->tb);
}

static struct fw_tensor *b_linear(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_linear(c, in[0], in[1], in[2]);
}

/* x (3, 2, 4) permuted to (2, 3, 4): rows that do not fold into one
 * matrix, so the bias is added to a batched product. */
static struct fw_tensor *b_linear_perm(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_linear(c, fw_permute(c, in[0], (const int[]){ 1, 0, 2 }), in[1], in[2]);
}

static struct fw_tensor *b_add(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_add(c, in[0], in[1]);
}

static struct fw_tensor *b_sub(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_sub(c, in[0], in[1]);
}

static struct fw_tensor *b_mul(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_mul(c, in[0], in[1]);
}

static struct fw_tensor *b_scale(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_scale(c, in[0], ARGS(u)->s);
}

static struct fw_tensor *b_embedding(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_embedding(c, in[0], in[1]);
}

static struct fw_tensor *b_layernorm(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_layernorm(c, in[0], in[1], in[2], ARGS(u)->eps);
}

static struct fw_tensor *b_rmsnorm(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_rmsnorm(c, in[0], in[1], ARGS(u)->eps);
}

static struct fw_tensor *b_gelu(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_gelu(c, in[0], ARGS(u)->form);
}

static struct fw_tensor *b_relu(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_relu(c, in[0]);
}

static struct fw_tensor *b_silu(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_silu(c, in[0]);
}

static struct fw_tensor *b_tanh(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_tanh(c, in[0]);
}

static struct fw_tensor *b_sigmoid(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_sigmoid(c, in[0]);
}

static struct fw_tensor *b_softmax(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_softmax(c, in[0], in[1], ARGS(u)->causal, ARGS(u)->s);
}

static struct fw_tensor *b_dropout(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_dropout(c, in[0], ARGS(u)->p, ARGS(u)->seed);
}

static struct fw_tensor *b_ce(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_cross_entropy(c, in[0], in[1], in[2], ARGS(u)->ignore);
}

/* A block whose norm and activation outputs backward recomputes instead of
 * keeping (graph.c add_remat): layernorm -> reshape (a view) -> matmul ->
 * gelu -> rmsnorm -> silu -> matmul, x (2, 3, 6), w (6), W1 (5, 6), W2 (4, 5). */
static struct fw_tensor *b_remat(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	struct fw_tensor *ln = fw_layernorm(c, in[0], in[1], NULL, 1e-5f);
	struct fw_tensor *h = fw_matmul(c, fw_reshape(c, ln, 2, (int64_t[]){ 6, 6 }), in[2],
					false, true);
	struct fw_tensor *s = fw_silu(c, fw_rmsnorm(c, fw_gelu(c, h, FW_GELU_TANH), NULL, 1e-6f));
	return fw_matmul(c, s, in[3], false, true);
}

static struct fw_tensor *b_lmce(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_lm_head_cross_entropy(c, in[0], in[1], in[2], in[3], ARGS(u)->ignore,
					ARGS(u)->chunk);
}

static struct fw_tensor *b_concat(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_concat(c, in[0], in[1], ARGS(u)->axis);
}

static struct fw_tensor *b_slice(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_slice(c, in[0], ARGS(u)->axis, ARGS(u)->start, ARGS(u)->len);
}

static struct fw_tensor *b_reshape(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	/* through an op so the reshape's gradient aliases a node's gradient */
	return fw_tanh(c, fw_reshape(c, fw_scale(c, in[0], 1.5f), ARGS(u)->nd, ARGS(u)->shape));
}

static struct fw_tensor *b_permute(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_sigmoid(c, fw_permute(c, in[0], ARGS(u)->perm));
}

static struct fw_tensor *b_transpose_cont(struct fw_ctx *c, struct fw_tensor *const *in,
					  void *u)
{
	return fw_cont(c, fw_transpose(c, in[0], 0, -1));
}

static struct fw_tensor *b_transpose_mm(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_matmul(c, in[0], fw_transpose(c, in[1], -1, -2), false, false);
}

static struct fw_tensor *b_reshape_views(struct fw_ctx *c, struct fw_tensor *const *in,
					 void *u)
{
	/* reshape of a transposed (copied) and of a sliced (aliased) view */
	struct fw_tensor *a = fw_reshape(c, fw_transpose(c, in[0], 0, 1), 1, (int64_t[]){ -1 });
	struct fw_tensor *b = fw_reshape(c, fw_slice(c, in[0], 0, 1, 2), 1, (int64_t[]){ -1 });
	return fw_concat(c, fw_tanh(c, a), fw_sigmoid(c, b), 0);
}

/* q-like (B, T, 12) split as attention splits its fused qkv projection: a
 * slice of the last dim reshaped to (B, T, H, D) is a strided view (no
 * copy), permuted heads-first. */
static struct fw_tensor *b_reshape_heads(struct fw_ctx *c, struct fw_tensor *const *in,
					 void *u)
{
	struct fw_tensor *q = fw_reshape(c, fw_slice(c, in[0], 2, 2, 8), 4,
					 (int64_t[]){ 2, 3, 2, 4 });
	return fw_sigmoid(c, fw_permute(c, q, (const int[]){ 0, 2, 1, 3 }));
}

/* The matmul's heads-major output (p3): a (B, H, M, K) b (B, H, K, N) gives
 * (B, M, H, N); with ARGS(u)->tb both come as attention's permuted views of
 * (B, M, H, K) and (B, N, H, K) inputs, b transposed. */
static struct fw_tensor *b_matmul_heads(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	static const int swap[4] = { 0, 2, 1, 3 };
	struct fw_tensor *src[2] = { in[0], in[1] };
	if (ARGS(u)->tb) {
		src[0] = fw_permute(c, in[0], swap);
		src[1] = fw_permute(c, in[1], swap);
	}
	union fw_param p[4] = { { .i = 0 }, { .i = ARGS(u)->tb }, { .i = FW_F32 }, { .i = 1 } };
	return fw_op_custom(c, FW_OP_MATMUL, src, 2, p, 4);
}

static struct fw_tensor *b_sum(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_sum(c, in[0], ARGS(u)->axis, ARGS(u)->keepdim);
}

static struct fw_tensor *b_mean(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_mean(c, in[0], ARGS(u)->axis, ARGS(u)->keepdim);
}

static struct fw_tensor *b_cast(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_cast(c, fw_cast(c, in[0], FW_BF16), FW_F32);
}

static struct fw_tensor *b_rope(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	const struct args *a = u;
	return fw_rope(c, in[0], in[1], a->rope_mode, a->rope_dim, a->interleaved, a->base,
		       a->l3.factor > 0 ? &a->l3 : NULL);
}

/* rope reads a strided view in place: x (B, H, T, D) seen as (B, T, H, D) */
static struct fw_tensor *b_rope_view(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	struct fw_tensor *x = fw_permute(c, in[0], (int[]){ 0, 2, 1, 3 });
	ck_assert(x && !fw_is_contiguous(x));
	return b_rope(c, (struct fw_tensor *[]){ x, in[1] }, u);
}

/* --- data for the inputs that are not plain random ------------------------------- */

static const int32_t ids_2x3[] = { 1, 3, 1, 6, 0, 3 };
static const int32_t ids_oob[] = { 2, -1, 5, 6, 0, 2, 100, 1 };
static const int32_t tgt_2x3[] = { 1, 6, 0, 3, 3, 2 };
static const int32_t tgt_ign[] = { 1, FW_IGNORE_INDEX, 4, 0, 5, 3, -1, 2 };
static const float ce_mask[] = { 1, 1, 1, 0, 1, 1, 1, 1 };
static const float pad_mask[] = {            /* (2, 1, 5): key padding */
	0, 0, 0, -INFINITY, -INFINITY,
	-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY,
};
static const float row_mask[] = {            /* (3, 4): row 1 fully masked */
	0, 0, -INFINITY, 0,
	-INFINITY, -INFINITY, -INFINITY, -INFINITY,
	0, 0, 0, 0,
};
static const int32_t packed_pos[2 * 5] = { 0, 1, 2, 0, 1, 3, 4, 0, 1, 2 };
static const int32_t offset_11[1] = { 11 };
/* Multiples of 1/32 with at most 8 significant bits: exact in bf16, and so
 * are x +- 1/32, so the round trip through bf16 is exact at every probe. */
static float bf16_grid[24];

/* --- the table ------------------------------------------------------------------- */

#define F(nm, ...) { .name = nm, .ndim = sizeof((int64_t[]){ __VA_ARGS__ }) / 8, \
		     .ne = { __VA_ARGS__ }, .grad = true }
#define FR(nm, lo_, hi_, ...) { .name = nm, .ndim = sizeof((int64_t[]){ __VA_ARGS__ }) / 8, \
				.ne = { __VA_ARGS__ }, .grad = true, .lo = lo_, .hi = hi_ }
#define CONST(nm, ptr, ...) { .name = nm, .ndim = sizeof((int64_t[]){ __VA_ARGS__ }) / 8, \
			      .ne = { __VA_ARGS__ }, .data = ptr }
#define INT(nm, ptr, ...) { .name = nm, .dtype = FW_I32, \
			    .ndim = sizeof((int64_t[]){ __VA_ARGS__ }) / 8, \
			    .ne = { __VA_ARGS__ }, .data = ptr }
#define NONE { .name = NULL }

struct gentry {
	const char *name;
	fwt_build_fn build;
	struct args a;
	int n;
	struct fwt_input in[4];
	double tol;
};

static struct gentry cases[] = {
	{ "matmul", b_matmul, { 0 }, 2, { F("a", 3, 4), F("b", 4, 5) }, 0 },
	{ "matmul_ta", b_matmul, { .ta = true }, 2, { F("a", 4, 3), F("b", 4, 5) }, 0 },
	{ "matmul_tb", b_matmul, { .tb = true }, 2, { F("a", 3, 4), F("b", 5, 4) }, 0 },
	{ "matmul_tab", b_matmul, { .ta = true, .tb = true }, 2,
	  { F("a", 4, 3), F("b", 5, 4) }, 0 },
	{ "matmul_b3", b_matmul, { 0 }, 2, { F("a", 2, 3, 4), F("b", 2, 4, 2) }, 0 },
	{ "matmul_b4_tb", b_matmul, { .tb = true }, 2,
	  { F("a", 2, 2, 3, 4), F("b", 2, 2, 5, 4) }, 0 },
	{ "matmul_bcast", b_matmul, { 0 }, 2, { F("a", 2, 3, 4), F("b", 4, 3) }, 0 },
	{ "matmul_bcast_ta", b_matmul, { .ta = true }, 2, { F("a", 2, 4, 3), F("b", 4, 3) }, 0 },
	{ "matmul_heads_out", b_matmul_heads, { 0 }, 2,
	  { F("a", 2, 3, 4, 5), F("b", 2, 3, 5, 2) }, 0 },
	{ "matmul_heads_out_views", b_matmul_heads, { .tb = true }, 2,
	  { F("q", 2, 4, 3, 5), F("k", 2, 2, 3, 5) }, 0 },
	{ "linear", b_linear, { 0 }, 3, { F("x", 2, 3, 4), F("w", 5, 4), F("bias", 5) }, 0 },
	/* the bias gradient's column sum: two tiles of 128 columns (one
	 * partial), two blocks of 64 rows (one partial) */
	{ "linear_wide", b_linear, { 0 }, 3, { F("x", 2, 40, 3), F("w", 133, 3), F("bias", 133) },
	  0 },
	{ "linear_strided", b_linear_perm, { 0 }, 3,
	  { F("x", 3, 2, 4), F("w", 5, 4), F("bias", 5) }, 0 },
	{ "add", b_add, { 0 }, 2, { F("a", 3, 4), F("b", 3, 4) }, 0 },
	{ "add_row", b_add, { 0 }, 2, { F("a", 2, 3, 4), F("b", 4) }, 0 },
	{ "add_gen", b_add, { 0 }, 2, { F("a", 2, 1, 4), F("b", 3, 1) }, 0 },
	{ "sub", b_sub, { 0 }, 2, { F("a", 3, 4), F("b", 3, 4) }, 0 },
	{ "sub_left", b_sub, { 0 }, 2, { F("a", 3, 1), F("b", 2, 3, 4) }, 0 },
	{ "sub_gen", b_sub, { 0 }, 2, { F("a", 2, 1, 4), F("b", 3, 1) }, 0 },
	{ "mul", b_mul, { 0 }, 2, { F("a", 3, 4), F("b", 3, 4) }, 0 },
	{ "mul_row", b_mul, { 0 }, 2, { F("a", 2, 3, 4), F("b", 4) }, 0 },
	{ "mul_gen", b_mul, { 0 }, 2, { F("a", 2, 1, 4), F("b", 3, 1) }, 0 },
	{ "scale", b_scale, { .s = -1.75f }, 1, { F("x", 3, 4) }, 0 },
	{ "embedding", b_embedding, { 0 }, 2, { F("table", 7, 5), INT("ids", ids_2x3, 2, 3) }, 0 },
	{ "embedding_oob", b_embedding, { 0 }, 2,
	  { F("table", 6, 3), INT("ids", ids_oob, 2, 4) }, 0 },
	{ "layernorm", b_layernorm, { .eps = 1e-5f }, 3,
	  { FR("x", -2, 2, 3, 6), FR("w", 0.5f, 1.5f, 6), F("b", 6) }, 0 },
	{ "layernorm_w", b_layernorm, { .eps = 1e-3f }, 2,
	  { FR("x", -2, 2, 3, 5), FR("w", 0.5f, 1.5f, 5) }, 0 },
	{ "layernorm_b", b_layernorm, { .eps = 1e-5f }, 3,
	  { FR("x", -2, 2, 3, 5), NONE, F("b", 5) }, 0 },
	{ "layernorm_plain", b_layernorm, { .eps = 1e-5f }, 1, { FR("x", -2, 2, 2, 2, 5) }, 0 },
	{ "rmsnorm", b_rmsnorm, { .eps = 1e-6f }, 2, { FR("x", -2, 2, 3, 6), FR("w", 0.5f, 1.5f, 6) }, 0 },
	{ "rmsnorm_plain", b_rmsnorm, { .eps = 1e-5f }, 1, { FR("x", -2, 2, 4, 5) }, 0 },
	{ "gelu_erf", b_gelu, { .form = FW_GELU_ERF }, 1, { FR("x", -4, 4, 3, 7) }, 0 },
	{ "gelu_tanh", b_gelu, { .form = FW_GELU_TANH }, 1, { FR("x", -4, 4, 3, 7) }, 0 },
	{ "relu", b_relu, { 0 }, 1,
	  { { .name = "x", .ndim = 2, .ne = { 3, 7 }, .grad = true, .lo = -2, .hi = 2,
	      .min_abs = 0.05f } }, 0 },
	{ "silu", b_silu, { 0 }, 1, { FR("x", -5, 5, 3, 7) }, 0 },
	{ "tanh", b_tanh, { 0 }, 1, { FR("x", -3, 3, 3, 7) }, 0 },
	{ "sigmoid", b_sigmoid, { 0 }, 1, { FR("x", -6, 6, 3, 7) }, 0 },
	{ "softmax", b_softmax, { .s = 1.0f }, 2, { FR("x", -2, 2, 3, 6), NONE }, 0 },
	{ "softmax_scale", b_softmax, { .s = 0.35f }, 2, { FR("x", -4, 4, 2, 3, 6), NONE }, 0 },
	{ "softmax_causal", b_softmax, { .causal = true, .s = 1.0f }, 2,
	  { FR("x", -2, 2, 2, 4, 4), NONE }, 0 },
	{ "softmax_causal_tq_lt_tk", b_softmax, { .causal = true, .s = 0.5f }, 2,
	  { FR("x", -2, 2, 2, 3, 5), NONE }, 0 },
	{ "softmax_bias", b_softmax, { .s = 0.5f }, 2,
	  { FR("x", -2, 2, 2, 3, 4, 4), F("bias", 4, 4) }, 0 },
	{ "softmax_bias_bcast_causal", b_softmax, { .causal = true, .s = 1.0f }, 2,
	  { FR("x", -2, 2, 2, 3, 5), F("bias", 2, 1, 5) }, 0 },
	{ "softmax_padmask", b_softmax, { .s = 0.7f }, 2,
	  { FR("x", -2, 2, 2, 3, 5), CONST("mask", pad_mask, 2, 1, 5) }, 0 },
	{ "softmax_rowmask_causal", b_softmax, { .causal = true, .s = 1.0f }, 2,
	  { FR("x", -2, 2, 2, 3, 4), CONST("mask", row_mask, 3, 4) }, 0 },
	{ "dropout", b_dropout, { .p = 0.25f, .seed = 1234 }, 1, { F("x", 4, 8) }, 0 },
	{ "cross_entropy", b_ce, { .ignore = FW_IGNORE_INDEX }, 3,
	  { FR("logits", -3, 3, 2, 3, 7), INT("targets", tgt_2x3, 2, 3), NONE }, 0 },
	{ "cross_entropy_ignore_mask", b_ce, { .ignore = FW_IGNORE_INDEX }, 3,
	  { FR("logits", -3, 3, 8, 6), INT("targets", tgt_ign, 8), CONST("mask", ce_mask, 8) }, 0 },
	/* x @ w^T and cross-entropy fused, in chunks of 2 and 3 rows and one chunk */
	{ "remat_block", b_remat, { 0 }, 4,
	  { FR("x", -2, 2, 2, 3, 6), FR("w", 0.5f, 1.5f, 6), F("W1", 5, 6), F("W2", 4, 5) }, 0 },
	{ "lm_head_ce_chunk2", b_lmce, { .ignore = FW_IGNORE_INDEX, .chunk = 2 }, 4,
	  { FR("x", -1, 1, 2, 3, 4), FR("w", -1, 1, 7, 4), INT("targets", tgt_2x3, 2, 3), NONE }, 0 },
	{ "lm_head_ce_ignore_mask_chunk3", b_lmce, { .ignore = FW_IGNORE_INDEX, .chunk = 3 }, 4,
	  { FR("x", -1, 1, 8, 5), FR("w", -1, 1, 6, 5), INT("targets", tgt_ign, 8),
	    CONST("mask", ce_mask, 8) }, 0 },
	{ "lm_head_ce_auto", b_lmce, { .ignore = FW_IGNORE_INDEX }, 4,
	  { FR("x", -1, 1, 2, 3, 4), FR("w", -1, 1, 7, 4), INT("targets", tgt_2x3, 2, 3), NONE }, 0 },
	{ "concat_axis0", b_concat, { .axis = 0 }, 2, { F("a", 2, 3), F("b", 4, 3) }, 0 },
	{ "concat_last", b_concat, { .axis = 2 }, 2, { F("a", 2, 3, 2), F("b", 2, 3, 4) }, 0 },
	{ "concat_neg", b_concat, { .axis = -2 }, 2, { F("a", 2, 2, 3), F("b", 2, 1, 3) }, 0 },
	{ "slice_mid", b_slice, { .axis = 1, .start = 2, .len = 3 }, 1, { F("x", 4, 6) }, 0 },
	{ "slice_first", b_slice, { .axis = 0, .start = 1, .len = 2 }, 1, { F("x", 4, 3, 2) }, 0 },
	{ "reshape", b_reshape, { .nd = 2, .shape = { 4, -1 } }, 1, { F("x", 2, 3, 4) }, 0 },
	{ "reshape_of_views", b_reshape_views, { 0 }, 1, { F("x", 4, 3) }, 0 },
	{ "reshape_heads", b_reshape_heads, { 0 }, 1, { F("qkv", 2, 3, 12) }, 0 },
	{ "permute", b_permute, { .perm = { 2, 0, 1 } }, 1, { F("x", 2, 3, 4) }, 0 },
	{ "transpose_cont", b_transpose_cont, { 0 }, 1, { F("x", 3, 2, 5) }, 0 },
	{ "transpose_matmul", b_transpose_mm, { 0 }, 2, { F("q", 2, 3, 4), F("k", 2, 5, 4) }, 0 },
	{ "sum_axis", b_sum, { .axis = 1 }, 1, { F("x", 3, 4, 5) }, 0 },
	{ "sum_keepdim", b_sum, { .axis = -1, .keepdim = true }, 1, { F("x", 3, 4, 5) }, 0 },
	{ "sum_all", b_sum, { .axis = FW_AXIS_ALL }, 1, { F("x", 3, 4) }, 0 },
	{ "mean_axis", b_mean, { .axis = 0 }, 1, { F("x", 3, 4, 5) }, 0 },
	{ "mean_keepdim", b_mean, { .axis = 1, .keepdim = true }, 1, { F("x", 3, 4, 5) }, 0 },
	{ "mean_all", b_mean, { .axis = FW_AXIS_ALL, .keepdim = true }, 1, { F("x", 2, 3, 4) }, 0 },
	{ "cast_bf16", b_cast, { 0 }, 1,
	  { { .name = "x", .ndim = 2, .ne = { 4, 6 }, .grad = true, .data = bf16_grid,
	      .h = 1.0 / 32 } }, 0 },
	{ "rope_neox_d40", b_rope, { .rope_dim = 40, .base = 10000.0f }, 2,
	  { F("x", 2, 5, 3, 40), NONE }, 0 },
	{ "rope_neox_partial16_d64_positions", b_rope,
	  { .rope_dim = 16, .rope_mode = FW_ROPE_POSITIONS, .base = 500.0f }, 2,
	  { F("x", 2, 5, 3, 64), INT("pos", packed_pos, 2, 5) }, 0 },
	{ "rope_gptj_partial24_d40_llama3", b_rope,
	  { .rope_dim = 24, .interleaved = true, .base = 10000.0f,
	    .l3 = { .factor = 8.0f, .low_freq_factor = 1.0f, .high_freq_factor = 4.0f,
		    .original_max_position_embeddings = 16.0f } }, 2,
	  { F("x", 1, 7, 3, 40), NONE }, 0 },
	{ "rope_neox_d64_llama3_offset", b_rope,
	  { .rope_dim = 64, .rope_mode = FW_ROPE_OFFSET, .base = 500000.0f,
	    .l3 = { .factor = 8.0f, .low_freq_factor = 1.0f, .high_freq_factor = 4.0f,
		    .original_max_position_embeddings = 8.0f } }, 2,
	  { F("x", 1, 3, 2, 64), INT("len", offset_11, 1) }, 0 },
	{ "rope_gptj_d64_offset", b_rope,
	  { .rope_dim = 64, .interleaved = true, .rope_mode = FW_ROPE_OFFSET, .base = 10000.0f },
	  2, { F("x", 2, 3, 5, 64), INT("len", offset_11, 1) }, 0 },
	{ "rope_gptj_partial8_d40_positions_view", b_rope_view,
	  { .rope_dim = 8, .interleaved = true, .rope_mode = FW_ROPE_POSITIONS, .base = 100.0f },
	  2, { F("x", 2, 3, 5, 40), INT("pos", packed_pos, 2, 5) }, 0 },
	{ "rope_neox_d40_view", b_rope_view, { .rope_dim = 40, .base = 10000.0f }, 2,
	  { F("x", 2, 3, 5, 40), NONE }, 0 },
	/* H = 3: w_ih (12, I), w_hh (12, 3); both directions */
	{ "lstm", b_lstm, { 0 }, 4,
	  { F("x", 2, 4, 5), F("w_ih", 12, 5), F("w_hh", 12, 3), F("bias", 12) }, 0 },
	{ "lstm_reverse", b_lstm, { .reverse = true }, 4,
	  { F("x", 2, 4, 5), F("w_ih", 12, 5), F("w_hh", 12, 3), F("bias", 12) }, 0 },
};

#define N_CASES ((int)(sizeof(cases) / sizeof(cases[0])))

START_TEST(test_op)
{
	struct gentry *e = &cases[_i];
	for (int k = 0; k < 24; k++)
		bf16_grid[k] = (float)((k * 37) % 241 - 120) / 32.0f;
	/* NONE is an absent optional source: the builder gets NULL there */
	struct fwt_gc_opts o = { .tol = e->tol, .seed = (uint64_t)_i };
	int r = fwt_gradcheck_ex(e->name, e->n, e->in, e->build, &e->a, &o);
	ck_assert_msg(r == 0, "%s: gradient check failed (%d elements, details on stderr)",
		      e->name, r);
}
END_TEST

/* --- the checker on a plugin op ------------------------------------------------- */

/* y = x^2 * w (w broadcast over rows of x (R, C), w (C)); the bad variant
 * forgets the factor 2 in dx. */
static enum fw_status sq_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *x = out->src[0], *w = out->src[1];
	if (x->ndim != 2 || w->ndim != 1 || w->ne[0] != x->ne[1])
		return fw_errorf(err, FW_ERR_SHAPE, "square: bad shapes");
	out->dtype = FW_F32;
	out->ndim = 2;
	out->ne[0] = x->ne[0];
	out->ne[1] = x->ne[1];
	return FW_OK;
}

static void sq_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	const float *x = fw_f32(out->src[0]), *w = fw_f32(out->src[1]);
	int64_t C = out->ne[1];
	for (int64_t i = 0; i < fw_nelem(out); i++)
		fw_f32(out)[i] = x[i] * x[i] * w[i % C];
}

static void sq_backward_k(struct fw_tensor *out, float k)
{
	const float *x = fw_f32(out->src[0]), *w = fw_f32(out->src[1]);
	const float *dy = fw_f32(out->grad);
	int64_t C = out->ne[1];
	for (int64_t i = 0; i < fw_nelem(out); i++) {
		if (out->src[0]->grad)
			fw_f32(out->src[0]->grad)[i] += k * x[i] * w[i % C] * dy[i];
		if (out->src[1]->grad)
			fw_f32(out->src[1]->grad)[i % C] += x[i] * x[i] * dy[i];
	}
}

static void sq_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	sq_backward_k(out, 2.0f);
}

static void sq_backward_bad(struct fw_tensor *out, const struct fw_exec *ex)
{
	sq_backward_k(out, 1.0f);
}

static const struct fw_op_i sq_op = {
	.size = sizeof(struct fw_op_i), .name = "gradcheck.square",
	.infer = sq_infer, .forward = sq_forward, .backward = sq_backward,
};
static const struct fw_op_i sq_bad_op = {
	.size = sizeof(struct fw_op_i), .name = "gradcheck.square_bad",
	.infer = sq_infer, .forward = sq_forward, .backward = sq_backward_bad,
};

static int op_id(const struct fw_op_i *vt)
{
	for (int id = FW_OP_COUNT; fw_op_get(id); id++)
		if (fw_op_get(id) == vt)
			return id;
	struct fw_err err = { 0 };
	int id = fw_op_register(vt, &err);
	ck_assert_msg(id >= FW_OP_COUNT, "register %s: %s", vt->name, err.msg);
	return id;
}

static struct fw_tensor *b_plugin(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	struct fw_tensor *src[2] = { in[0], in[1] };
	return fw_op_custom(c, *(int *)u, src, 2, NULL, 0);
}

START_TEST(test_plugin_op)
{
	struct fwt_input in[2] = { F("x", 3, 4), F("w", 4) };
	int good = op_id(&sq_op), bad = op_id(&sq_bad_op);
	ck_assert_int_eq(fwt_gradcheck("plugin square", 2, in, b_plugin, &good, 1e-2), 0);
	struct fwt_gc_opts o = { .quiet = true };
	int r = fwt_gradcheck_ex("plugin square_bad", 2, in, b_plugin, &bad, &o);
	/* every dx element is off by a factor 2; dw is right */
	ck_assert_msg(r >= 10 && r <= 12, "a wrong backward gave %d failing elements, expected 12", r);
}
END_TEST

/* --- dropout ------------------------------------------------------------------------ */

#define DN 100000

struct drop {
	struct fw_ctx *ctx;
	struct fw_tensor *x, *y, *loss;
	struct fw_graph *g;
};

/* y = dropout(x, p, seed), x a trainable (1e5) parameter; with_loss adds
 * loss = sum(y) and a backward pass. */
static struct drop drop_new(float p, uint64_t seed, bool training, bool with_loss)
{
	struct drop d = { .ctx = fw_ctx_new() };
	d.x = fw_param(d.ctx, "x", FW_F32, 1, (int64_t[]){ DN }, true);
	d.y = fw_dropout(d.ctx, d.x, p, seed);
	ck_assert_msg(d.y != NULL, "dropout: %s", fw_ctx_err(d.ctx)->msg);
	struct fw_tensor *outs[2] = { d.y, d.y };
	int n = 1;
	if (with_loss) {
		d.loss = fw_sum(d.ctx, d.y, FW_AXIS_ALL, false);
		outs[0] = d.loss;
		n = 2;
	}
	d.g = fw_graph_new(d.ctx, outs, n, &(struct fw_graph_opts){
		.backward = with_loss, .training = training });
	ck_assert_msg(d.g != NULL, "graph: %s", fw_ctx_err(d.ctx)->msg);
	struct fwt_rng r = fwt_rng_new(7);
	fwt_fill_uniform(fw_f32(d.x), DN, &r, 0.5f, 1.5f);
	return d;
}

static void drop_free(struct drop *d)
{
	fw_graph_free(d->g);
	fw_ctx_free(d->ctx);
}

START_TEST(test_dropout_stats)
{
	const float p = 0.3f;
	struct drop d = drop_new(p, 42, true, false);
	ck_assert_int_eq(fw_graph_forward(d.g), FW_OK);
	const float *x = fw_f32(d.x), *y = fw_f32(d.y);
	int64_t kept = 0;
	for (int64_t i = 0; i < DN; i++) {
		if (y[i] == 0.0f)
			continue;
		kept++;
		double want = x[i] / (1.0 - p);
		ck_assert_msg(fabs(y[i] - want) <= 1e-6 * want,
			      "kept element %lld is %.9g, expected x/(1-p) = %.9g",
			      (long long)i, (double)y[i], want);
	}
	double frac = (double)kept / DN, sigma = sqrt(p * (1 - p) / DN);
	ck_assert_msg(fabs(frac - (1 - p)) <= 4 * sigma,
		      "kept fraction %.5f, expected %.2f +- %.5f (4 sigma)", frac, 1 - p,
		      4 * sigma);
	drop_free(&d);
}
END_TEST

START_TEST(test_dropout_threads)
{
	struct drop d = drop_new(0.5f, 99, true, false);
	float *y1 = malloc(DN * sizeof(float));
	fw_set_num_threads(1);
	ck_assert_int_eq(fw_graph_forward(d.g), FW_OK);
	memcpy(y1, fw_f32(d.y), DN * sizeof(float));
	fw_set_num_threads(2);
	ck_assert_int_eq(fw_get_num_threads(), 2);
	ck_assert_int_eq(fw_graph_forward(d.g), FW_OK);
	ck_assert_msg(memcmp(y1, fw_f32(d.y), DN * sizeof(float)) == 0,
		      "dropout differs between 1 and 2 threads");
	/* and the same again on a rerun */
	ck_assert_int_eq(fw_graph_forward(d.g), FW_OK);
	ck_assert(memcmp(y1, fw_f32(d.y), DN * sizeof(float)) == 0);
	free(y1);
	drop_free(&d);
}
END_TEST

START_TEST(test_dropout_backward_mask)
{
	const float p = 0.25f;
	fw_set_num_threads(2);
	struct drop d = drop_new(p, 5, true, true);
	fw_graph_set_step(d.g, 3);
	ck_assert_int_eq(fw_graph_forward(d.g), FW_OK);
	ck_assert_int_eq(fw_graph_backward(d.g), FW_OK);
	const float *x = fw_f32(d.x), *y = fw_f32(d.y), *gx = fw_f32(d.x->grad);
	int64_t bad = 0, zeros = 0;
	for (int64_t i = 0; i < DN; i++) {
		/* d sum(y) / dx = mask / (1 - p): the forward's mask */
		float want = y[i] != 0.0f ? 1.0f / (1.0f - p) : 0.0f;
		zeros += y[i] == 0.0f;
		if (fabsf(gx[i] - want) > 1e-6f * want || fabsf(x[i] * gx[i] - y[i]) > 1e-6f * y[i])
			bad++;
	}
	ck_assert_msg(bad == 0, "%lld gradients do not follow the forward mask", (long long)bad);
	ck_assert(zeros > DN / 5 && zeros < DN / 3);
	drop_free(&d);
}
END_TEST

static int64_t mask_diff(const float *a, const float *b, int64_t n)
{
	int64_t k = 0;
	for (int64_t i = 0; i < n; i++)
		k += (a[i] == 0.0f) != (b[i] == 0.0f);
	return k;
}

START_TEST(test_dropout_step_seed_node)
{
	const float p = 0.3f;
	struct drop d = drop_new(p, 11, true, false);
	float *a = malloc(DN * sizeof(float));
	double expect = 2 * p * (1 - p) * DN;     /* mismatches of two independent masks */

	fw_graph_set_step(d.g, 1);
	fw_graph_forward(d.g);
	memcpy(a, fw_f32(d.y), DN * sizeof(float));
	fw_graph_set_step(d.g, 2);
	fw_graph_forward(d.g);
	int64_t k = mask_diff(a, fw_f32(d.y), DN);
	ck_assert_msg(k > 0.8 * expect && k < 1.2 * expect,
		      "steps 1 and 2: %lld of %d mask entries differ, expected ~%.0f",
		      (long long)k, DN, expect);
	fw_graph_set_step(d.g, 1);
	fw_graph_forward(d.g);
	ck_assert_msg(memcmp(a, fw_f32(d.y), DN * sizeof(float)) == 0,
		      "the same step gave another mask");
	drop_free(&d);

	struct drop e = drop_new(p, 12, true, false);
	fw_graph_set_step(e.g, 1);
	fw_graph_forward(e.g);
	k = mask_diff(a, fw_f32(e.y), DN);
	ck_assert_msg(k > 0.8 * expect, "seeds 11 and 12 give masks differing in %lld only",
		      (long long)k);
	drop_free(&e);

	/* two dropout nodes with the same seed in one graph: different masks */
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *x = fw_input(ctx, "x", FW_F32, 1, (int64_t[]){ DN });
	struct fw_tensor *y[2] = { fw_dropout(ctx, x, p, 3), fw_dropout(ctx, x, p, 3) };
	struct fw_graph *g = fw_graph_new(ctx, y, 2, &(struct fw_graph_opts){ .training = true });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	for (int64_t i = 0; i < DN; i++)
		fw_f32(x)[i] = 1.0f;
	fw_graph_forward(g);
	k = mask_diff(fw_f32(y[0]), fw_f32(y[1]), DN);
	ck_assert_msg(k > 0.8 * expect, "two nodes, one seed: masks differ in %lld only",
		      (long long)k);
	fw_graph_free(g);
	fw_ctx_free(ctx);
	free(a);
}
END_TEST

START_TEST(test_dropout_eval_identity)
{
	struct drop d = drop_new(0.5f, 42, false, true);
	ck_assert_int_eq(fw_graph_forward(d.g), FW_OK);
	ck_assert_msg(memcmp(fw_f32(d.x), fw_f32(d.y), DN * sizeof(float)) == 0,
		      "dropout without training is not the identity");
	ck_assert_int_eq(fw_graph_backward(d.g), FW_OK);
	for (int64_t i = 0; i < DN; i++)
		ck_assert_msg(fw_f32(d.x->grad)[i] == 1.0f, "eval dropout grad[%lld] = %g",
			      (long long)i, (double)fw_f32(d.x->grad)[i]);
	drop_free(&d);
}
END_TEST

/* --- cross-entropy: ignored and masked tokens get no gradient ---------------------- */

START_TEST(test_ce_ignored_zero_grad)
{
	enum { N = 6, V = 5 };
	static const int32_t tgt[N] = { 1, FW_IGNORE_INDEX, 3, 0, 7, 2 };   /* 7: out of range */
	static const float mask[N] = { 1, 1, 0, 1, 1, 1 };
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *x = fw_param(ctx, "logits", FW_F32, 2, (int64_t[]){ N, V }, true);
	struct fw_tensor *t = fw_input(ctx, "t", FW_I32, 1, (int64_t[]){ N });
	struct fw_tensor *m = fw_input(ctx, "m", FW_F32, 1, (int64_t[]){ N });
	struct fw_tensor *loss = fw_cross_entropy(ctx, x, t, m, FW_IGNORE_INDEX);
	ck_assert_msg(loss != NULL, "%s", fw_ctx_err(ctx)->msg);
	struct fw_graph *g = fw_graph_new(ctx, &loss, 1, &(struct fw_graph_opts){
		.backward = true, .training = true });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	struct fwt_rng r = fwt_rng_new(3);
	fwt_fill_uniform(fw_f32(x), N * V, &r, -3, 3);
	fwt_write(t, tgt);
	fwt_write(m, mask);
	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	ck_assert_int_eq(fw_graph_backward(g), FW_OK);

	/* the reference on the host, in double: mean over rows 0, 3, 5 */
	double want = 0;
	const float *xv = fw_f32(x), *gx = fw_f32(x->grad);
	int counted[N] = { 1, 0, 0, 1, 0, 1 }, n = 3;
	for (int i = 0; i < N; i++) {
		if (!counted[i])
			continue;
		double mx = -INFINITY, s = 0;
		for (int j = 0; j < V; j++)
			mx = fmax(mx, xv[i * V + j]);
		for (int j = 0; j < V; j++)
			s += exp(xv[i * V + j] - mx);
		want += (mx + log(s) - xv[i * V + tgt[i]]) / n;
		for (int j = 0; j < V; j++) {
			double gw = (exp(xv[i * V + j] - mx) / s - (j == tgt[i])) / n;
			ck_assert_msg(fabs(gx[i * V + j] - gw) <= 1e-6 + 1e-5 * fabs(gw),
				      "grad[%d][%d] = %.9g, expected %.9g", i, j,
				      (double)gx[i * V + j], gw);
		}
	}
	ck_assert_msg(fabs(fw_f32(loss)[0] - want) <= 1e-5 * fabs(want),
		      "loss %.9g, expected %.9g", (double)fw_f32(loss)[0], want);
	for (int i = 0; i < N; i++)
		for (int j = 0; j < V && !counted[i]; j++)
			ck_assert_msg(gx[i * V + j] == 0.0f,
				      "row %d (ignored/masked/out of range) has grad[%d] = %g", i,
				      j, (double)gx[i * V + j]);
	fw_graph_free(g);
	fw_ctx_free(ctx);
}
END_TEST

/* --- the fused LM head: the same loss and gradients as matmul + cross-entropy ------ */

struct lmce_run {
	float loss;
	float *dx, *dw;          /* NULL when that input has no gradient */
	size_t act_ws;           /* planned activations + workspace */
	float eval_loss;         /* of a forward-only graph */
	size_t eval_act_ws;      /* its plan */
};

/* One forward + backward of the head, fused (chunk >= 0) or not (chunk < 0). */
static struct lmce_run lmce_run(int chunk, bool w_grad, enum fw_dtype autocast, int64_t N,
				int64_t C, int64_t V, const float *xv, const float *wv,
				const int32_t *tv, const float *mv)
{
	struct fw_ctx *ctx = fw_ctx_new();
	ck_assert_int_eq(fw_ctx_set_autocast(ctx, autocast), FW_OK);
	struct fw_tensor *x = fw_param(ctx, "x", FW_F32, 2, (int64_t[]){ N, C }, true);
	struct fw_tensor *w = fw_param(ctx, "w", FW_F32, 2, (int64_t[]){ V, C }, w_grad);
	struct fw_tensor *t = fw_input(ctx, "t", FW_I32, 1, (int64_t[]){ N });
	struct fw_tensor *m = fw_input(ctx, "m", FW_F32, 1, (int64_t[]){ N });
	struct fw_tensor *loss = chunk >= 0 ?
		fw_lm_head_cross_entropy(ctx, x, w, t, m, FW_IGNORE_INDEX, chunk) :
		fw_cross_entropy(ctx, fw_matmul(ctx, x, w, false, true), t, m, FW_IGNORE_INDEX);
	ck_assert_msg(loss != NULL, "%s", fw_ctx_err(ctx)->msg);
	struct fw_graph *g = fw_graph_new(ctx, &loss, 1, &(struct fw_graph_opts){
		.backward = true, .training = true });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	memcpy(x->data, xv, (size_t)(N * C) * sizeof(float));
	memcpy(w->data, wv, (size_t)(V * C) * sizeof(float));
	fwt_write(t, tv);
	fwt_write(m, mv);
	/* A loss gradient other than 1, as loss scaling gives. The fused head
	 * rounds dlogits to a half dtype before it scales them by the loss
	 * gradient, the unfused one after: a power of two keeps the two
	 * roundings alike. */
	fw_graph_set_loss_scale(g, autocast == FW_F32 ? 3.0f : 4.0f);
	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	ck_assert_int_eq(fw_graph_backward(g), FW_OK);
	struct fw_memory_report r;
	fw_graph_memory(g, &r);
	struct lmce_run out = { .loss = fw_f32(loss)[0],
				.act_ws = r.bytes[FW_MEM_ACTIVATIONS] + r.bytes[FW_MEM_WORKSPACE] };
	struct fw_graph *ge = fw_graph_new(ctx, &loss, 1, &(struct fw_graph_opts){ 0 });
	ck_assert_msg(ge != NULL, "%s", fw_ctx_err(ctx)->msg);
	ck_assert_int_eq(fw_graph_forward(ge), FW_OK);
	fw_graph_memory(ge, &r);
	out.eval_loss = fw_f32(loss)[0];
	out.eval_act_ws = r.bytes[FW_MEM_ACTIVATIONS] + r.bytes[FW_MEM_WORKSPACE];
	fw_graph_free(ge);
	out.dx = malloc((size_t)(N * C) * sizeof(float));
	memcpy(out.dx, x->grad->data, (size_t)(N * C) * sizeof(float));
	ck_assert(w_grad == (w->grad != NULL));
	if (w->grad) {
		out.dw = malloc((size_t)(V * C) * sizeof(float));
		memcpy(out.dw, w->grad->data, (size_t)(V * C) * sizeof(float));
	}
	fw_graph_free(g);
	fw_ctx_free(ctx);
	return out;
}

static void close_all(const char *what, const float *a, const float *b, int64_t n, float tol)
{
	for (int64_t i = 0; i < n; i++)
		ck_assert_msg(fabsf(a[i] - b[i]) <= 1e-2f * tol + tol * fabsf(b[i]),
			      "%s[%lld]: fused %.9g, unfused %.9g", what, (long long)i,
			      (double)a[i], (double)b[i]);
}

/* 74 rows in chunks of 16 (the last one short) and in one automatic chunk,
 * with ignored, masked and out-of-range targets, with w frozen (LoRA), in f32
 * and under bf16 and f16 autocast (both sides round x, w, the logits and
 * dlogits to the half dtype alike; only the summation order differs), with a
 * loss gradient of 3 (4 under autocast): the unfused graph, each of whose ops passes the
 * finite-difference and PyTorch checks, is the reference. The fused plan
 * drops the logits and their gradient (2 N V floats) but for one chunk of
 * logits in the workspace and, in f32 and bf16, the dx forward computes for
 * backward (the stash: N C floats; w's gradient, a parameter's, forward adds
 * straight in, so no V C floats of dw), which the plan counts; f16
 * recomputes the logits in backward instead. The unfused logits and their gradient are f32, or half under
 * autocast (as torch keeps a bf16 tensor's gradient). A forward-only graph
 * of the same loss plans no stash. The second shape is wider than its
 * vocabulary (C > V, as a small classifier's): f16 backward computes dx's
 * chunk transposed, (C, rows), where the chunk's f32 logits (rows, V) were,
 * so the workspace must hold the larger of the two. */
static const struct { int64_t N, C, V; } lmce_shapes[] = { { 74, 24, 300 }, { 20, 40, 6 } };

START_TEST(test_lmce_matches_unfused)
{
	const int64_t N = lmce_shapes[_i].N, C = lmce_shapes[_i].C, V = lmce_shapes[_i].V;
	static float xv[74 * 300], wv[300 * 40], mv[74];
	static int32_t tv[74];
	struct fwt_rng r = fwt_rng_new(11);
	fwt_fill_uniform(xv, N * C, &r, -1, 1);
	fwt_fill_uniform(wv, V * C, &r, -1, 1);
	for (int i = 0; i < N; i++) {
		tv[i] = (int32_t)((i * 37 + 5) % V);
		mv[i] = i % 9 == 4 ? 0.0f : 1.0f;
	}
	tv[3] = FW_IGNORE_INDEX;
	tv[10] = V + 2;
	for (int run = 0; run < 6; run++) {
		bool frozen = run & 1;
		enum fw_dtype ac = run < 2 ? FW_F32 : run < 4 ? FW_BF16 : FW_F16;
		float tol = ac == FW_F32 ? 1e-4f : 2e-3f;
		struct lmce_run ref = lmce_run(-1, !frozen, ac, N, C, V, xv, wv, tv, mv);
		for (int k = 0; k < 2; k++) {
			int chunk = k ? 0 : 16;
			struct lmce_run f = lmce_run(chunk, !frozen, ac, N, C, V, xv, wv, tv, mv);
			ck_assert_msg(fabsf(f.loss - ref.loss) <= 0.1f * tol * fabsf(ref.loss),
				      "%s chunk %d: loss %.9g, unfused %.9g", fw_dtype_name(ac),
				      chunk, (double)f.loss, (double)ref.loss);
			close_all("dx", f.dx, ref.dx, N * C, tol);
			if (!frozen)
				close_all("dw", f.dw, ref.dw, V * C, tol);
			ck_assert_msg(f.eval_loss == f.loss, "%s chunk %d: eval loss %.9g, training %.9g",
				      fw_dtype_name(ac), chunk, (double)f.eval_loss, (double)f.loss);
			/* a chunk of f32 logits, and of half dlogits under autocast */
			size_t chunk_bytes = (size_t)(chunk ? chunk : N) * V * (ac == FW_F32 ? 4 : 6);
			size_t stash = ac == FW_F16 ? 0 : N * C * sizeof(float);
			size_t logit_bytes = ac == FW_F32 ? sizeof(float) : 2;
			ck_assert_msg(f.act_ws + 2 * N * V * logit_bytes <=
				      ref.act_ws + chunk_bytes + stash + 4096,
				      "%s chunk %d: planned %zu bytes, unfused %zu", fw_dtype_name(ac),
				      chunk, f.act_ws, ref.act_ws);
			ck_assert_msg(f.act_ws >= f.eval_act_ws + stash,
				      "%s chunk %d: planned %zu bytes, forward-only %zu: the stash "
				      "(%zu) is not planned", fw_dtype_name(ac), chunk, f.act_ws,
				      f.eval_act_ws, stash);
			size_t half_copies = ac == FW_F32 ? 0 : (N * C + V * C) * 2;   /* x, w */
			ck_assert_msg(f.eval_act_ws <= chunk_bytes + half_copies + 4096,
				      "%s chunk %d: the forward-only graph plans %zu bytes",
				      fw_dtype_name(ac), chunk, f.eval_act_ws);
			free(f.dx);
			free(f.dw);
		}
		free(ref.dx);
		free(ref.dw);
	}
}
END_TEST

/* Gradients of x, w, W1, W2 of b_remat's block under loss = sum(y * y),
 * and the planned activation bytes, with recomputation on or off. */
static size_t remat_run(bool on, float *grads)
{
	static const int64_t shapes[4][3] = { { 2, 3, 6 }, { 6 }, { 5, 6 }, { 4, 5 } };
	static const int ndims[4] = { 3, 1, 2, 2 };
	static const char *names[4] = { "x", "w", "W1", "W2" };
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *in[4];
	for (int k = 0; k < 4; k++)
		in[k] = fw_param(ctx, names[k], FW_F32, ndims[k], shapes[k], true);
	struct fw_tensor *y = b_remat(ctx, in, NULL);
	struct fw_tensor *loss = fw_sum(ctx, fw_mul(ctx, y, y), FW_AXIS_ALL, false);
	size_t bytes = fwt_remat_run(ctx, loss, on, in, 4, 3, grads);
	fw_ctx_free(ctx);
	return bytes;
}

/* Recomputing the norms' and activations' outputs in backward gives the
 * same bits as keeping them (the same kernels on the same inputs; the
 * remat_block gradient check compares with finite differences), and the
 * plan drops what was kept: of the 5 x 6 block sizes the norms, gelu and
 * silu write, at least the layernorm's and gelu's (both read by matmuls). */
START_TEST(test_remat_matches_kept)
{
	enum { N_GRAD = 36 + 6 + 30 + 20 };
	float on[N_GRAD], off[N_GRAD];
	size_t bytes_on = remat_run(true, on), bytes_off = remat_run(false, off);
	ck_assert(memcmp(on, off, sizeof(on)) == 0);
	ck_assert_msg(bytes_on < bytes_off, "planned %zu bytes with recomputation, %zu without",
		      bytes_on, bytes_off);
}
END_TEST

/* The head's graph for test_lmce_grad_in_forward: fused as the loss itself
 * (forward adds dw into w's gradient), fused under a scale by 1 (not the
 * loss: dw goes through the stash), or unfused. */
enum lmce_kind { LMCE_LOSS, LMCE_SCALED, LMCE_UNFUSED };

struct lmce_graph {
	struct fw_ctx *ctx;
	struct fw_tensor *x, *w, *t, *loss;
	struct fw_graph *g;
};

static struct lmce_graph lmce_graph(enum lmce_kind kind, int64_t N, int64_t C, int64_t V,
				    const float *xv, const float *wv)
{
	struct lmce_graph h = { .ctx = fw_ctx_new() };
	h.x = fw_param(h.ctx, "x", FW_F32, 2, (int64_t[]){ N, C }, true);
	h.w = fw_param(h.ctx, "w", FW_F32, 2, (int64_t[]){ V, C }, true);
	h.t = fw_input(h.ctx, "t", FW_I32, 1, (int64_t[]){ N });
	h.loss = kind == LMCE_UNFUSED ?
		 fw_cross_entropy(h.ctx, fw_matmul(h.ctx, h.x, h.w, false, true), h.t, NULL,
				  FW_IGNORE_INDEX) :
		 fw_lm_head_cross_entropy(h.ctx, h.x, h.w, h.t, NULL, FW_IGNORE_INDEX, 16);
	if (kind == LMCE_SCALED)
		h.loss = fw_scale(h.ctx, h.loss, 1.0f);
	ck_assert_msg(h.loss != NULL, "%s", fw_ctx_err(h.ctx)->msg);
	h.g = fw_graph_new(h.ctx, &h.loss, 1, &(struct fw_graph_opts){
		.backward = true, .training = true });
	ck_assert_msg(h.g != NULL, "%s", fw_ctx_err(h.ctx)->msg);
	memcpy(h.x->data, xv, (size_t)(N * C) * sizeof(float));
	memcpy(h.w->data, wv, (size_t)(V * C) * sizeof(float));
	return h;
}

/* One micro-batch: targets tv, loss gradient scale. */
static void lmce_micro(struct lmce_graph *h, const int32_t *tv, float scale)
{
	fwt_write(h->t, tv);
	fw_graph_set_loss_scale(h->g, scale);
	ck_assert_int_eq(fw_graph_forward(h->g), FW_OK);
	ck_assert_int_eq(fw_graph_backward(h->g), FW_OK);
}

static void lmce_graph_free(struct lmce_graph *h)
{
	fw_graph_free(h->g);
	fw_ctx_free(h->ctx);
}

/* When the fused head is the loss and w a parameter, forward adds dw into
 * w's gradient for the loss scale it is given (no (V, C) stash):
 * - one micro-batch at scale 1 gives the same bits as the stash path (the
 *   same head under a scale by 1), which adds the same sums in backward;
 * - two micro-batches at 1/3 and 2/3 (the trainer's gradient accumulation)
 *   match the unfused graph, each of whose ops passes the finite-difference
 *   and PyTorch checks, at test_lmce_matches_unfused's f32 tolerance;
 * - a second forward before backward, or a loss scale changed between
 *   forward and backward, is refused with one line, not a wrong gradient. */
START_TEST(test_lmce_grad_in_forward)
{
	enum { N = 40, C = 16, V = 200 };
	static float xv[N * C], wv[V * C];
	static int32_t t1[N], t2[N];
	struct fwt_rng r = fwt_rng_new(5);
	fwt_fill_uniform(xv, N * C, &r, -1, 1);
	fwt_fill_uniform(wv, V * C, &r, -1, 1);
	for (int i = 0; i < N; i++) {
		t1[i] = (int32_t)((i * 37 + 5) % V);
		t2[i] = (int32_t)((i * 11 + 3) % V);
	}
	t1[7] = FW_IGNORE_INDEX;

	struct lmce_graph a = lmce_graph(LMCE_LOSS, N, C, V, xv, wv);
	struct lmce_graph b = lmce_graph(LMCE_SCALED, N, C, V, xv, wv);
	struct fw_memory_report ra, rb;
	fw_graph_memory(a.g, &ra);
	fw_graph_memory(b.g, &rb);
	ck_assert_msg(ra.bytes[FW_MEM_ACTIVATIONS] + V * C * sizeof(float) <=
		      rb.bytes[FW_MEM_ACTIVATIONS],
		      "the loss's plan (%zu bytes) keeps the dw stash (%zu with it)",
		      ra.bytes[FW_MEM_ACTIVATIONS], rb.bytes[FW_MEM_ACTIVATIONS]);
	lmce_micro(&a, t1, 1.0f);
	lmce_micro(&b, t1, 1.0f);
	ck_assert(memcmp(a.w->grad->data, b.w->grad->data, V * C * sizeof(float)) == 0);
	ck_assert(memcmp(a.x->grad->data, b.x->grad->data, N * C * sizeof(float)) == 0);
	lmce_graph_free(&b);

	fw_graph_zero_grad(a.g);
	struct lmce_graph u = lmce_graph(LMCE_UNFUSED, N, C, V, xv, wv);
	lmce_micro(&a, t1, 1.0f / 3.0f);
	lmce_micro(&a, t2, 2.0f / 3.0f);
	lmce_micro(&u, t1, 1.0f / 3.0f);
	lmce_micro(&u, t2, 2.0f / 3.0f);
	close_all("dw", fw_f32(a.w->grad), fw_f32(u.w->grad), V * C, 1e-4f);
	close_all("dx", fw_f32(a.x->grad), fw_f32(u.x->grad), N * C, 1e-4f);
	lmce_graph_free(&u);

	ck_assert_int_eq(fw_graph_forward(a.g), FW_OK);
	ck_assert_int_eq(fw_graph_forward(a.g), FW_ERR_INVALID);
	ck_assert_str_eq(fw_ctx_err(a.ctx)->msg, "graph: forward again before backward: the "
			 "loss's forward already added its weight's gradient");
	fw_graph_set_loss_scale(a.g, 2.0f);
	ck_assert_int_eq(fw_graph_forward(a.g), FW_ERR_INVALID);   /* still pending */
	lmce_graph_free(&a);

	a = lmce_graph(LMCE_LOSS, N, C, V, xv, wv);
	fwt_write(a.t, t1);
	ck_assert_int_eq(fw_graph_forward(a.g), FW_OK);
	fw_graph_set_loss_scale(a.g, 2.0f);
	ck_assert_int_ne(fw_graph_backward(a.g), FW_OK);
	ck_assert_msg(strstr(fw_ctx_err(a.ctx)->msg, "set the loss scale before forward"),
		      "%s", fw_ctx_err(a.ctx)->msg);
	lmce_graph_free(&a);
}
END_TEST

/* kv_write has no gradient: a value check. Rows land at [len, len + Tq) of
 * every batch row, the rest of the cache is kept, a reader of the result sees
 * the write, and a len past the end is clamped (never writes outside). */
START_TEST(test_kv_write)
{
	enum { B = 2, TMAX = 6, TQ = 2, H = 3, D = 5, ROW = H * D };
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *cache = fw_input(ctx, "cache", FW_F32, 4,
					   (int64_t[]){ B, TMAX, H, D });
	struct fw_tensor *x = fw_param(ctx, "x", FW_F32, 4, (int64_t[]){ B, TQ, H, D }, true);
	struct fw_tensor *len = fw_input(ctx, "len", FW_I32, 1, (int64_t[]){ 1 });
	struct fw_tensor *w = fw_kv_write(ctx, cache, x, len);
	ck_assert_msg(w != NULL, "%s", fw_ctx_err(ctx)->msg);
	ck_assert(!(w->flags & FW_FLAG_NEEDS_GRAD));
	struct fw_tensor *y = fw_cont(ctx, w);
	ck_assert(fw_kv_write(ctx, cache, x, NULL) == NULL);
	struct fw_tensor *bad = fw_input(ctx, "bad", FW_F32, 4, (int64_t[]){ B, TQ, H, D + 1 });
	ck_assert(fw_kv_write(ctx, cache, bad, len) == NULL);
	ck_assert_str_eq(fw_ctx_err(ctx)->msg, "kv_write: cache and new rows do not fit");
	struct fw_graph *g = fw_graph_new(ctx, &y, 1, &(struct fw_graph_opts){ 0 });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	for (int at = 0; at < 2; at++) {
		int32_t l = at ? 5 : 3, where = at ? TMAX - TQ : 3;   /* 5 + 2 > 6: clamped */
		for (int i = 0; i < B * TMAX * ROW; i++)
			fw_f32(cache)[i] = -1.0f - (float)i;
		for (int i = 0; i < B * TQ * ROW; i++)
			fw_f32(x)[i] = (float)i;
		fw_i32(len)[0] = l;
		ck_assert_int_eq(fw_graph_forward(g), FW_OK);
		for (int b = 0; b < B; b++)
			for (int t = 0; t < TMAX; t++)
				for (int e = 0; e < ROW; e++) {
					int i = (b * TMAX + t) * ROW + e;
					float want = t >= where && t < where + TQ ?
						     (float)((b * TQ + t - where) * ROW + e) :
						     -1.0f - (float)i;
					ck_assert_msg(fw_f32(cache)[i] == want && fw_f32(y)[i] == want,
						      "len %d: b %d t %d e %d: cache %g, read %g, want %g",
						      l, b, t, e, (double)fw_f32(cache)[i],
						      (double)fw_f32(y)[i], (double)want);
				}
	}
	fw_graph_free(g);
	fw_ctx_free(ctx);
}
END_TEST

/* A half cache (--bf16/--fp16 generation): f32 rows are rounded to the
 * cache's dtype on the way in (nearest even; the values are picked so the
 * answer is known by hand: 1 + 2^-9 is a bf16 tie that goes down to 1,
 * 1 + 3 * 2^-9 one that goes up to 1 + 2^-7, 1 + 2^-12 an f16 tie down to
 * 1, 1 + 3 * 2^-12 up to 1 + 2^-10), half rows are copied bit for bit, and
 * the view a reader gets is the cache's dtype. */
START_TEST(test_kv_write_half)
{
	static const float in[4] = { 1.0f + 0x1p-9f, 1.0f + 0x3p-9f, 1.0f + 0x1p-12f, -2.5f };
	static const float bf[4] = { 1.0f, 1.0f + 0x1p-7f, 1.0f, -2.5f };
	static const float hf[4] = { 1.0f + 0x1p-9f, 1.0f + 0x3p-9f, 1.0f, -2.5f };
	for (int k = 0; k < 2; k++) {
		enum fw_dtype dt = k ? FW_F16 : FW_BF16;
		const float *want = k ? hf : bf;
		struct fw_ctx *ctx = fw_ctx_new();
		struct fw_tensor *cache = fw_input(ctx, "cache", dt, 4, (int64_t[]){ 1, 3, 1, 4 });
		struct fw_tensor *x = fw_input(ctx, "x", FW_F32, 4, (int64_t[]){ 1, 1, 1, 4 });
		struct fw_tensor *xh = fw_input(ctx, "xh", dt, 4, (int64_t[]){ 1, 1, 1, 4 });
		struct fw_tensor *len = fw_input(ctx, "len", FW_I32, 1, (int64_t[]){ 1 });
		struct fw_tensor *one = fw_input(ctx, "one", FW_I32, 1, (int64_t[]){ 1 });
		struct fw_tensor *w = fw_kv_write(ctx, fw_kv_write(ctx, cache, x, len), xh, one);
		ck_assert_msg(w != NULL, "%s", fw_ctx_err(ctx)->msg);
		ck_assert_int_eq(w->dtype, dt);
		struct fw_graph *g = fw_graph_new(ctx, &w, 1, &(struct fw_graph_opts){ 0 });
		ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
		uint16_t *c = cache->data, *h = xh->data;
		memset(c, 0xff, 12 * sizeof(uint16_t));          /* NaN: untouched rows */
		for (int i = 0; i < 4; i++) {
			fw_f32(x)[i] = in[i];
			h[i] = (uint16_t)(0x1234 + i);
		}
		fw_i32(len)[0] = 0;
		fw_i32(one)[0] = 1;
		ck_assert_int_eq(fw_graph_forward(g), FW_OK);
		for (int i = 0; i < 4; i++) {
			float got = dt == FW_BF16 ? fw_bf16_to_f32(c[i]) : fw_f16_to_f32(c[i]);
			ck_assert_msg(got == want[i], "%s: row 0 [%d] %a, want %a",
				      fw_dtype_name(dt), i, (double)got, (double)want[i]);
			ck_assert_uint_eq(c[4 + i], 0x1234 + i);
			ck_assert_uint_eq(c[8 + i], 0xffff);
		}
		fw_graph_free(g);
		fw_ctx_free(ctx);
	}
}
END_TEST

/* A reshape that splits or merges dims contiguous in memory is a strided
 * view (torch's view rule); one that cuts across strides copies first. */
START_TEST(test_reshape_strided_view)
{
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *x = fw_input(ctx, "x", FW_F32, 3, (int64_t[]){ 2, 3, 12 });
	struct fw_tensor *k = fw_slice(ctx, x, 2, 4, 4);
	struct fw_tensor *kh = fw_reshape(ctx, k, 4, (int64_t[]){ 2, 3, 2, 2 });
	ck_assert_msg(kh != NULL, "%s", fw_ctx_err(ctx)->msg);
	ck_assert_ptr_eq(kh->src[0], k);                   /* no copy between */
	static const int64_t want[4] = { 36, 12, 2, 1 };
	for (int i = 0; i < 4; i++)
		ck_assert_int_eq(kh->nb[i], want[i]);
	struct fw_tensor *rows = fw_reshape(ctx, k, 2, (int64_t[]){ -1, 4 });   /* (6, 4) */
	ck_assert_ptr_eq(rows->src[0], k);
	ck_assert_int_eq(rows->nb[0], 12);
	struct fw_tensor *flat = fw_reshape(ctx, k, 1, (int64_t[]){ 24 });
	ck_assert_int_eq(flat->src[0]->op, FW_OP_CONT);    /* the rows are 12 apart */
	struct fw_tensor *t = fw_transpose(ctx, x, 0, 1);    /* (3, 2, 12) */
	struct fw_tensor *m = fw_reshape(ctx, t, 2, (int64_t[]){ 6, 12 });
	ck_assert_int_eq(m->src[0]->op, FW_OP_CONT);
	struct fw_tensor *s = fw_reshape(ctx, t, 4, (int64_t[]){ 3, 2, 3, 4 });
	ck_assert_ptr_eq(s->src[0], t);
	static const int64_t ws[4] = { 12, 36, 4, 1 };
	for (int i = 0; i < 4; i++)
		ck_assert_int_eq(s->nb[i], ws[i]);
	fw_ctx_free(ctx);
}
END_TEST

/* The heads-major product's values against a plain loop over
 * y[b, m, h, n] = sum_k q[b, m, h, k] kt[b, n, h, k] (attention's scores
 * layout, read through permuted views). */
START_TEST(test_matmul_heads_values)
{
	enum { B = 2, M = 5, H = 3, N = 4, K = 6 };
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *q = fw_input(ctx, "q", FW_F32, 4, (int64_t[]){ B, M, H, K });
	struct fw_tensor *kt = fw_input(ctx, "k", FW_F32, 4, (int64_t[]){ B, N, H, K });
	struct args a = { .tb = true };
	struct fw_tensor *in[2] = { q, kt };
	struct fw_tensor *y = b_matmul_heads(ctx, in, &a);
	ck_assert_msg(y != NULL, "%s", fw_ctx_err(ctx)->msg);
	ck_assert_int_eq(y->ne[1], M);
	ck_assert_int_eq(y->ne[2], H);
	struct fw_graph *g = fw_graph_new(ctx, &y, 1, &(struct fw_graph_opts){ 0 });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	struct fwt_rng r = fwt_rng_new(7);
	fwt_fill_uniform(fw_f32(q), B * M * H * K, &r, -1, 1);
	fwt_fill_uniform(fw_f32(kt), B * N * H * K, &r, -1, 1);
	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	static float want[B * M * H * N];
	for (int b = 0; b < B; b++)
		for (int m = 0; m < M; m++)
			for (int h = 0; h < H; h++)
				for (int n = 0; n < N; n++) {
					double acc = 0;
					for (int k = 0; k < K; k++)
						acc += (double)fw_f32(q)[((b * M + m) * H + h) * K + k] *
						       fw_f32(kt)[((b * N + n) * H + h) * K + k];
					want[((b * M + m) * H + h) * N + n] = (float)acc;
				}
	ck_assert_int_eq(fwt_allclose("heads", fw_f32(y), want, B * M * H * N, 1e-6, 1e-5), 0);
	fw_graph_free(g);
	fw_ctx_free(ctx);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("gradcheck");
	TCase *ops = fwt_tcase("ops", 120);
	tcase_add_loop_test(ops, test_op, 0, N_CASES);
	tcase_add_test(ops, test_plugin_op);
	tcase_add_test(ops, test_kv_write);
	tcase_add_test(ops, test_kv_write_half);
	tcase_add_test(ops, test_reshape_strided_view);
	tcase_add_test(ops, test_matmul_heads_values);
	suite_add_tcase(s, ops);
	TCase *drop = fwt_tcase("dropout", 120);
	tcase_add_test(drop, test_dropout_stats);
	tcase_add_test(drop, test_dropout_threads);
	tcase_add_test(drop, test_dropout_backward_mask);
	tcase_add_test(drop, test_dropout_step_seed_node);
	tcase_add_test(drop, test_dropout_eval_identity);
	suite_add_tcase(s, drop);
	TCase *ce = fwt_tcase("cross_entropy", 120);
	tcase_add_test(ce, test_ce_ignored_zero_grad);
	tcase_add_loop_test(ce, test_lmce_matches_unfused, 0,
			    (int)(sizeof(lmce_shapes) / sizeof(lmce_shapes[0])));
	tcase_add_test(ce, test_lmce_grad_in_forward);
	tcase_add_test(ce, test_remat_matches_kept);
	suite_add_tcase(s, ce);
	return fwt_run_suite(s);
}
