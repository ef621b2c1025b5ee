/* internal.h - private to the core: context layout and the built-in op table. */
#ifndef FW_INTERNAL_H
#define FW_INTERNAL_H

/* The engine's own public headers only: nothing of formats, loader or above. */
#include "fw/status.h"
#include "fw/tensor.h"
#include "fw/ops.h"
#include "fw/op.h"
#include "fw/graph.h"
#include "fw/machine.h"

#define FW_ALIGN 64

struct fw_block {                /* one persistent allocation owned by a ctx */
	struct fw_block *next;
	enum fw_mem_category cat;
	size_t bytes;
	void *ptr;
};

/* The half copy of a frozen f32 parameter that autocast's casts read,
 * kept across forwards and shared by every graph of the context. */
struct fw_kept {
	struct fw_kept *next;
	const struct fw_tensor *param;
	enum fw_dtype dtype;
	void *data;                  /* FW_MEM_WEIGHTS storage of the context */
	bool valid;                  /* data holds param cast at version, from src */
	uint64_t version;
	const void *src;
};

struct fw_ctx {
	struct fw_err err;
	struct fw_tensor **tensors;  /* every tensor, in creation order */
	int n_tensors, cap_tensors;
	struct fw_block *blocks;
	size_t mem[FW_MEM_CATEGORY_COUNT];
	int segment_next;            /* next checkpoint segment id */
	int segment_cur;             /* 0 outside checkpoint_begin/end */
	enum fw_dtype autocast;      /* fw_ctx_set_autocast: F32 = off */
	struct fw_graph *bound;      /* whose buffers the tensors point at now */
	uint64_t *version;           /* per tensor id: bumped when a write is seen */
	int n_version;
	uint64_t clock;              /* the last version handed out */
	struct fw_kept *kept;
};

/* param's kept copy in dt, made (storage counted as weights) on first use;
 * NULL with ctx's error set when out of memory. */
struct fw_kept *fw_ctx_kept(struct fw_ctx *ctx, const struct fw_tensor *param,
			    enum fw_dtype dt);

/* Tensor t's data version in ctx: a parameter marked written
 * (fw_tensor_mark_written) gets a new one here and its mark is cleared, so
 * every graph of ctx sees the change. 0 until the first mark. */
uint64_t fw_ctx_version(struct fw_ctx *ctx, struct fw_tensor *t);

/* Built-in op vtables, one per enum fw_op (defined in the ops_*.c files). */
extern const struct fw_op_i fw_op_matmul_i, fw_op_add_i, fw_op_sub_i, fw_op_mul_i,
	fw_op_scale_i, fw_op_embedding_i, fw_op_layernorm_i, fw_op_rmsnorm_i,
	fw_op_gelu_i, fw_op_relu_i, fw_op_silu_i, fw_op_tanh_i, fw_op_sigmoid_i,
	fw_op_softmax_i, fw_op_dropout_i, fw_op_cross_entropy_i, fw_op_concat_i,
	fw_op_slice_i, fw_op_reshape_i, fw_op_permute_i, fw_op_cont_i, fw_op_sum_i,
	fw_op_mean_i, fw_op_cast_i, fw_op_rope_i, fw_op_kv_write_i, fw_op_lstm_i,
	fw_op_lmhead_ce_i;

/* Creates a bare tensor in ctx (no op); NULL with ctx->err set on failure. */
struct fw_tensor *fw_tensor_new(struct fw_ctx *ctx, enum fw_dtype dt, int ndim,
				const int64_t *shape);

/* Broadcasting helpers for element-wise kernels (PyTorch rules). */
bool fw_broadcastable(const struct fw_tensor *a, const struct fw_tensor *b,
		      int *ndim, int64_t *shape);

/* Strides of x's elements viewed as shape ne (torch's view rule); false when
 * only a copy has that shape (ops_view.c). */
bool fw_view_strides(const struct fw_tensor *x, int nd, const int64_t *ne, int64_t *nb);

/* oneDNN matmul: C[b] (M,N) (+)= op(A[b]) op(B[b]) for row-major operands with
 * leading dims lda/ldb/ldc and batch strides (0 = broadcast). dt_ab is FW_F32
 * or FW_BF16; C is f32. accumulate adds into C. Primitives are cached. */
struct fw_gemm {
	int64_t batch, M, N, K;
	bool trans_a, trans_b;
	int64_t lda, ldb, ldc;
	int64_t stride_a, stride_b, stride_c;
	enum fw_dtype dt_ab;
	bool accumulate;
};
enum fw_status fw_gemm_run(const struct fw_gemm *g, const void *a, const void *b,
			   float *c);
void fw_gemm_cache_clear(void);
/* Test hook: oneDNN primitive creation fails (as for a shape or ISA oneDNN
 * cannot serve) while fail is true; the primitive cache is cleared. */
void fw_matmul_fail_primitives(bool fail);

/* A kernel that cannot run (a oneDNN primitive it cannot create or execute)
 * reports it here instead of aborting: the running fw_graph_forward or
 * fw_graph_backward stops after this step and returns e->status, with the
 * message in the context's error. Outside a graph run it is a broken
 * invariant (FW_ASSERT). Kernels call it from the thread that runs the
 * graph, not from inside a parallel region. */
void fw_kernel_fail(const struct fw_err *e);

/* The instruction-set level of fw's own kernels (isa.c; fw_kernel_isa in
 * fw/machine.h names it): picked once at load, lowered by FW_KERNEL_ISA or
 * fw_kernel_isa_force. */
enum fw_isa { FW_ISA_SCALAR, FW_ISA_AVX2, FW_ISA_AVX512, FW_ISA_AVX512BF16, FW_ISA_N };
extern enum fw_isa fw_isa_current;

/* Whether fw's own AVX-512 kernel copies run (GELU's): level avx512 or up. */
static inline bool fw_kernel_avx512(void)
{
	return fw_isa_current >= FW_ISA_AVX512;
}

/* Bytes a built-in op keeps from its forward to its backward besides its
 * output (lm_head_ce: the gradients it computes in forward); 0 for most.
 * Asked at plan time, for nodes with a backward, gradients attached. The
 * graph plans them as a buffer that lives from the node's forward (and
 * recompute) step to its backward step. */
size_t fw_op_stash_bytes(const struct fw_tensor *out, bool grad_in_forward);
/* That buffer, while the node's forward or backward kernel runs in a graph
 * that planned one; NULL otherwise (no backward, no gradient to compute). */
void *fw_kernel_stash(void);
size_t fw_lmce_stash_bytes(const struct fw_tensor *out, bool grad_in_forward);
/* grad_in_forward: the node is the graph's loss, run once per forward, and
 * its weight's gradient is a parameter's persistent buffer, which nothing
 * else writes before the node's backward. Its forward may then add that
 * gradient straight in, for the loss gradient backward will seed, which
 * fw_kernel_dloss gives while the forward kernel runs (NaN otherwise). */
float fw_kernel_dloss(void);

#endif
