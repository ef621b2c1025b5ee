/* fw/ops.h - the built-in ops and their graph constructors.
 *
 * Every constructor adds one node to ctx and returns it, or returns NULL and
 * records the reason in fw_ctx_err(ctx). A NULL source makes a constructor
 * return NULL without touching the recorded error, so a model builder can
 * check once at the end:
 *
 *     struct fw_tensor *h = fw_layernorm(ctx, x, g, b, 1e-5f);
 *     h = fw_gelu(ctx, fw_linear(ctx, h, w, bias), FW_GELU_TANH);
 *     if (!h) return fw_ctx_err(ctx)->status;
 *
 * Each op has a forward and a backward kernel, and each passes the
 * finite-difference and PyTorch-parity tests in tests/.
 */
#ifndef FW_OPS_H
#define FW_OPS_H

#include "fw/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

struct fw_ctx;

/* The closed set of built-in ops. Plugin ops get ids >= FW_OP_COUNT. */
enum fw_op {
	FW_OP_NONE = 0,     /* leaf: parameter, input or constant */
	FW_OP_MATMUL,       /* p0 trans_a, p1 trans_b, p2.i output dtype (0 = f32),
			       p3.i heads-major output: 4-D (B, H, M, N) product as (B, M, H, N),
			       p4.i enum fw_matmul_causal */
	FW_OP_ADD,          /* broadcasting, PyTorch rules */
	FW_OP_SUB,
	FW_OP_MUL,
	FW_OP_SCALE,        /* p0.f scale */
	FW_OP_EMBEDDING,    /* src0 table (V,C), src1 ids i32 */
	FW_OP_LAYERNORM,    /* src1 weight|NULL, src2 bias|NULL, p0.f eps */
	FW_OP_RMSNORM,      /* src1 weight|NULL, p0.f eps */
	FW_OP_GELU,         /* p0.i enum fw_gelu_form */
	FW_OP_RELU,
	FW_OP_SILU,
	FW_OP_TANH,
	FW_OP_SIGMOID,
	FW_OP_SOFTMAX,      /* src1 bias|NULL, p0.i causal, p1.f scale */
	FW_OP_DROPOUT,      /* p0.f prob, p1.i seed_lo, p2.i seed_hi */
	FW_OP_CROSS_ENTROPY,/* src1 targets i32, src2 mask f32|NULL, p0.i ignore_index */
	FW_OP_CONCAT,       /* p0.i axis */
	FW_OP_SLICE,        /* view; p0.i axis, p1.i start, p2.i length */
	FW_OP_RESHAPE,      /* view; strided where torch's view rule allows */
	FW_OP_PERMUTE,      /* view; p0..p3 permutation */
	FW_OP_CONT,         /* contiguous copy */
	FW_OP_SUM,          /* p0.i axis or FW_AXIS_ALL, p1.i keepdim */
	FW_OP_MEAN,         /* p0.i axis or FW_AXIS_ALL, p1.i keepdim */
	FW_OP_CAST,         /* p0.i target dtype; gradient passes through as f32 */
	FW_OP_ROPE,         /* src1 positions|offset|NULL; p0.i rotary dim, p1.i interleaved,
			       p2.f base, p3..p6.f llama3 scaling, p7.i enum fw_rope_pos */
	FW_OP_KV_WRITE,     /* view of src0 cache; src1 new rows, src2 len i32 [1] */
	FW_OP_LSTM,         /* src1 w_ih, src2 w_hh, src3 bias; p0.i reverse */
	FW_OP_LMHEAD_CE,    /* src0 x, src1 w (V, C), src2 targets i32, src3 mask f32|NULL;
			       p0.i ignore_index, p1.i rows per chunk (0 = auto) */
	FW_OP_COUNT
};

/* FW_OP_MATMUL's p4: a causal attention product over the lower triangle of its
 * square (.., T, T) side, in row blocks (the host falls back to the whole
 * product where that side is not square). The caller promises:
 * FW_MM_CAUSAL_OUT  the output is the scores of a causal softmax, which reads
 *                   entries j <= i only (the others are written 0), and its
 *                   gradient is 0 above the diagonal;
 * FW_MM_CAUSAL_A    a is causal probabilities, exactly 0 above its diagonal;
 *                   a's gradient there is not meaningful (0 where written;
 *                   added to, some entries near the diagonal get products). */
enum fw_matmul_causal {
	FW_MM_CAUSAL_NONE = 0,
	FW_MM_CAUSAL_OUT = 1,
	FW_MM_CAUSAL_A = 2,
};

#define FW_AXIS_ALL INT32_MIN
#define FW_IGNORE_INDEX (-100)

enum fw_gelu_form { FW_GELU_ERF = 0, FW_GELU_TANH = 1 };

const char *fw_op_name(int op);

/* Leaves. */
struct fw_tensor *fw_param(struct fw_ctx *ctx, const char *name, enum fw_dtype dt,
			   int ndim, const int64_t *shape, bool trainable);
struct fw_tensor *fw_input(struct fw_ctx *ctx, const char *name, enum fw_dtype dt,
			   int ndim, const int64_t *shape);

/* a (..., M, K) x b (..., K, N) -> (..., M, N), f32 out. With trans_a, a is
 * (..., K, M); with trans_b, b is (..., N, K). b has a's batch dims or none.
 * a and b are both f32 or both bf16. */
struct fw_tensor *fw_matmul(struct fw_ctx *ctx, struct fw_tensor *a,
			    struct fw_tensor *b, bool trans_a, bool trans_b);
/* x (..., in) @ w(out, in)^T + bias(out); bias may be NULL. Like torch Linear.
 * A contiguous f32 bias is the matmul node's third source, added by oneDNN
 * in the product; under autocast it is added in f32 before the product is
 * rounded to the half dtype (one rounding; torch rounds the bias to half
 * first). Another bias is a separate add. */
struct fw_tensor *fw_linear(struct fw_ctx *ctx, struct fw_tensor *x,
			    struct fw_tensor *w, struct fw_tensor *bias);

struct fw_tensor *fw_add(struct fw_ctx *ctx, struct fw_tensor *a, struct fw_tensor *b);
struct fw_tensor *fw_sub(struct fw_ctx *ctx, struct fw_tensor *a, struct fw_tensor *b);
struct fw_tensor *fw_mul(struct fw_ctx *ctx, struct fw_tensor *a, struct fw_tensor *b);
struct fw_tensor *fw_scale(struct fw_ctx *ctx, struct fw_tensor *a, float s);

/* Rows of table (V, C) for ids (...) i32 -> (..., C). An id outside [0, V)
 * gives a zero row and no gradient (data loaders validate ids). */
struct fw_tensor *fw_embedding(struct fw_ctx *ctx, struct fw_tensor *table,
			       struct fw_tensor *ids);
struct fw_tensor *fw_layernorm(struct fw_ctx *ctx, struct fw_tensor *x,
			       struct fw_tensor *w, struct fw_tensor *b, float eps);
struct fw_tensor *fw_rmsnorm(struct fw_ctx *ctx, struct fw_tensor *x,
			     struct fw_tensor *w, float eps);

struct fw_tensor *fw_gelu(struct fw_ctx *ctx, struct fw_tensor *x, enum fw_gelu_form form);
struct fw_tensor *fw_relu(struct fw_ctx *ctx, struct fw_tensor *x);
struct fw_tensor *fw_silu(struct fw_ctx *ctx, struct fw_tensor *x);
struct fw_tensor *fw_tanh(struct fw_ctx *ctx, struct fw_tensor *x);
struct fw_tensor *fw_sigmoid(struct fw_ctx *ctx, struct fw_tensor *x);

/* softmax(scale * x + bias) over the last axis. bias (may be NULL) broadcasts
 * to x. With causal, x is (..., Tq, Tk) and key j is masked for query i when
 * j > i + (Tk - Tq). */
struct fw_tensor *fw_softmax(struct fw_ctx *ctx, struct fw_tensor *x,
			     struct fw_tensor *bias, bool causal, float scale);

/* Inverted dropout with a counter-based RNG: the mask depends only on
 * (seed, graph step, node, element), never on thread count. Identity when
 * the graph is built without training. */
struct fw_tensor *fw_dropout(struct fw_ctx *ctx, struct fw_tensor *x, float p,
			     uint64_t seed);

/* Mean cross-entropy of logits (..., V) against targets (...) i32 over the
 * counted tokens: target != ignore_index and (mask == NULL or mask != 0).
 * Returns shape [1]. Zero counted tokens gives loss 0. A target outside
 * [0, V) other than ignore_index is not counted. mask is 0/non-0, not a weight. */
struct fw_tensor *fw_cross_entropy(struct fw_ctx *ctx, struct fw_tensor *logits,
				   struct fw_tensor *targets, struct fw_tensor *mask,
				   int ignore_index);
/* cross_entropy(x (..., C) @ w (V, C)^T, targets, mask, ignore_index) without
 * the (..., V) logits or their gradient: forward computes the logits of
 * chunk_rows rows at a time in the workspace, so the graph never holds more
 * than chunk_rows x V of them. In a graph with a backward, forward also
 * computes the gradients of x and w (for a unit loss gradient) into a buffer
 * the plan keeps until backward, which scales them by the loss gradient
 * (under f16 autocast backward recomputes the logits instead). chunk_rows 0
 * picks about 64 MiB of f32 logits a chunk, 128 MiB when x is half (fewer
 * passes over dw). Under autocast x and w are cast as
 * for fw_matmul. */
struct fw_tensor *fw_lm_head_cross_entropy(struct fw_ctx *ctx, struct fw_tensor *x,
					   struct fw_tensor *w, struct fw_tensor *targets,
					   struct fw_tensor *mask, int ignore_index,
					   int chunk_rows);

struct fw_tensor *fw_concat(struct fw_ctx *ctx, struct fw_tensor *a,
			    struct fw_tensor *b, int axis);
struct fw_tensor *fw_slice(struct fw_ctx *ctx, struct fw_tensor *x, int axis,
			   int64_t start, int64_t length);
/* Splits x along axis into n equal parts written to out[0..n-1]. */
enum fw_status fw_split(struct fw_ctx *ctx, struct fw_tensor *x, int axis, int n,
			struct fw_tensor **out);
/* One dim of shape may be -1. A view of x, strided when x is (splitting or
 * merging dims that are contiguous in memory, as torch's view); a copy of x
 * reshaped when its strides allow no view. */
struct fw_tensor *fw_reshape(struct fw_ctx *ctx, struct fw_tensor *x, int ndim,
			     const int64_t *shape);
struct fw_tensor *fw_permute(struct fw_ctx *ctx, struct fw_tensor *x, const int *perm);
struct fw_tensor *fw_transpose(struct fw_ctx *ctx, struct fw_tensor *x, int d0, int d1);
struct fw_tensor *fw_cont(struct fw_ctx *ctx, struct fw_tensor *x);
struct fw_tensor *fw_sum(struct fw_ctx *ctx, struct fw_tensor *x, int axis, bool keepdim);
struct fw_tensor *fw_mean(struct fw_ctx *ctx, struct fw_tensor *x, int axis, bool keepdim);
struct fw_tensor *fw_cast(struct fw_ctx *ctx, struct fw_tensor *x, enum fw_dtype dt);

/* --- attention building blocks (attention plugins share them) --------------- */

/* Where fw_rope's positions come from. */
enum fw_rope_pos {
	FW_ROPE_ARANGE = 0,  /* position t; pos is NULL */
	FW_ROPE_POSITIONS,   /* pos (B, T) i32: each token's position (packed rows) */
	FW_ROPE_OFFSET,      /* pos i32 [1]: position pos[0] + t (a KV cache's length) */
};

/* Llama-3 frequency scaling, as Hugging Face's rope_scaling
 * {"rope_type": "llama3"} (transformers' _compute_llama3_parameters). */
struct fw_rope_llama3 {
	float factor, low_freq_factor, high_freq_factor;
	float original_max_position_embeddings;
};

#define FW_ROPE_MAX_PAIRS 4096   /* rotary_dim / 2 at most */

/* Rotary position embedding of x (B, T, H, D) (any strides) -> (B, T, H, D).
 * Pair i < rotary_dim/2 is (i, i + rotary_dim/2) (NeoX/Llama, HF rotate_half)
 * or, interleaved, (2i, 2i + 1) (GPT-J), rotated by pos * inv_freq[i] with
 * inv_freq[i] = base^(-2i/rotary_dim) in HF's float32 recipe, then scaled by
 * llama3 (NULL = none); dims >= rotary_dim pass through. rotary_dim is even,
 * positive and at most D. Matches HF apply_rotary_pos_emb. */
struct fw_tensor *fw_rope(struct fw_ctx *ctx, struct fw_tensor *x, struct fw_tensor *pos,
			  enum fw_rope_pos mode, int rotary_dim, bool interleaved, float base,
			  const struct fw_rope_llama3 *llama3);

/* KV-cache write: copies rows (B, Tq, H, D) into cache (B, Tmax, H, D) at
 * rows [len, len + Tq) (len i32 [1], read when the graph runs; clamped so
 * nothing is written outside), or, with len i32 (B, Tq) of slots, row (b, t)
 * at slot len[b, t] (clamped the same way), and returns a view of the cache, so that its
 * readers run after the write. cache is an input that outlives graphs, f32
 * or (under autocast) bf16/f16; rows of another dtype are cast to it.
 * No gradient. */
struct fw_tensor *fw_kv_write(struct fw_ctx *ctx, struct fw_tensor *cache,
			      struct fw_tensor *rows, struct fw_tensor *len);

/* One LSTM layer in one direction, as torch.nn.LSTM (batch_first) with gate
 * order (i, f, g, o) and a zero initial state: x (B, T, I), w_ih (4H, I),
 * w_hh (4H, H), bias (4H) = torch's b_ih + b_hh; returns h (B, T, H). With
 * reverse the steps run T-1..0 (the second direction of a bidirectional
 * layer; h[:, t] is still time t). Differentiable in every input. */
struct fw_tensor *fw_lstm(struct fw_ctx *ctx, struct fw_tensor *x, struct fw_tensor *w_ih,
			  struct fw_tensor *w_hh, struct fw_tensor *bias, bool reverse);

/* ALiBi slope of head h of n_head, as BLOOM's build_alibi_tensor: 2^(-8k/n)
 * for k = 1..n with n the largest power of two <= n_head, then every other
 * slope of the 2n recipe for the remaining heads. */
float fw_alibi_slope(int64_t n_head, int64_t h);

#ifdef __cplusplus
}
#endif
#endif
