/* fw/op.h - the op interface: how built-in and plugin ops plug into the graph.
 *
 * An op is a vtable. Built-in ops fill a closed table indexed by enum fw_op;
 * plugins add their own with fw_op_register() while they load and get back a
 * run-time id. Kernels never start threads: they split work with
 * fw_parallel_for(), and the core owns the OpenMP runtime.
 */
#ifndef FW_OP_H
#define FW_OP_H

#include "fw/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

struct fw_ctx;

/* What a kernel may use while it runs. */
struct fw_exec {
	void *ws;           /* scratch of the size workspace() asked for */
	size_t ws_size;
	int64_t step;       /* graph step counter (dropout RNG) */
	bool training;      /* false in forward-only/eval graphs */
	/* Since ABI 1.6, backward only, for ops with FW_OPF_GRAD_OVERWRITE:
	 * bit k = src[k]'s gradient buffer was not zeroed and this call is its
	 * first writer, so backward must WRITE every element of it (its own
	 * contribution, as if added to zeros) instead of adding. The buffer
	 * is an activation's slot or a parameter's gradient cleared by
	 * fw_graph_zero_grad. (The fused LM head's forward, which writes its
	 * weight's gradient, gets bit 1 too.) */
	uint32_t grad_overwrite;
};

#define FW_SAVE_OUT (1u << FW_MAX_SRC)   /* bit for the output in saved() */

enum {
	FW_OPF_STRIDED = 1u << 0,  /* forward accepts non-contiguous sources */
	FW_OPF_VIEW = 1u << 1,     /* output aliases src[0]; forward only sets data */
	/* Kernels read bf16/f16 float sources (computing in f32) and write the
	 * dtype infer picks. Under autocast (fw_ctx_set_autocast), the half
	 * sources of an op without this flag are cast to f32 first. */
	FW_OPF_HALF = 1u << 2,
	/* Backward reads and adds into bf16/f16 gradients itself. Under
	 * autocast a half node's gradient is in its dtype (as torch's autograd
	 * keeps it); for an op without this flag the graph hands backward f32
	 * copies in the workspace and rounds what it added back (graph.c). */
	FW_OPF_HALF_GRAD = 1u << 3,
	/* Cheap to run again (norms, activations): when a backward step reads
	 * the output and every source that is an op node is kept for this op's
	 * own backward (saved()) or is recomputed itself (FW_FLAG_REMAT), a
	 * graph with a backward recomputes the output just before that step
	 * instead of keeping it from the forward (graph.c). */
	FW_OPF_REMAT = 1u << 4,
	/* Backward honours fw_exec.grad_overwrite: the graph then skips zeroing
	 * a source's gradient slot, or a parameter's cleared gradient, that
	 * this node's backward writes first, and tells the kernel to store
	 * instead of add (graph.c). A kernel that cannot write every element
	 * of such a source zeroes it itself first. */
	FW_OPF_GRAD_OVERWRITE = 1u << 5,
	/* Forward can write a bf16/f16 output from an f32 src[0], rounding its
	 * f32 result once on store (norms): a graph with autocast's cast of
	 * such an output as its one reader folds the cast into the op, which
	 * then writes the cast's dtype itself; the cast becomes a view of it
	 * and the output's gradient stays f32 (graph.c's fold_casts). */
	FW_OPF_NARROW_OUT = 1u << 6,
};

struct fw_op_i {
	size_t size;        /* sizeof(struct fw_op_i) the op was built with */
	const char *name;
	uint32_t flags;     /* FW_OPF_* */
	/* Required: set out->dtype, ndim, ne from out->src and out->params.
	 * Return FW_OK or an error recorded in err. */
	enum fw_status (*infer)(struct fw_tensor *out, struct fw_err *err);
	/* Required: compute out->data from the sources. */
	void (*forward)(struct fw_tensor *out, const struct fw_exec *ex);
	/* Optional (NULL = no gradient flows through): ADD into src[i]->grad->data
	 * for every src[i] whose grad is non-NULL, reading out->grad->data
	 * (write instead where ex->grad_overwrite says so, FW_OPF_GRAD_OVERWRITE). */
	void (*backward)(struct fw_tensor *out, const struct fw_exec *ex);
	/* Optional: scratch bytes forward or backward need (0 if NULL). Asked
	 * once at plan time (threads = fw_get_num_threads() then, gradients of
	 * the sources already attached); the graph has ONE scratch buffer,
	 * shared by all ops and not preserved from forward to backward. */
	size_t (*workspace)(const struct fw_tensor *out);
	/* Optional: values backward reads, bit i = src[i], FW_SAVE_OUT = output.
	 * NULL = all sources and the output. Fewer bits = less memory. */
	uint32_t (*saved)(const struct fw_tensor *out);
};

/* Registers a plugin op; returns its id (>= FW_OP_COUNT) or -1 with err set. */
int fw_op_register(const struct fw_op_i *op, struct fw_err *err);
const struct fw_op_i *fw_op_get(int op);
/* Adds a node of any op (built-in or registered) to ctx. */
struct fw_tensor *fw_op_custom(struct fw_ctx *ctx, int op, struct fw_tensor **src,
			       int n_src, const union fw_param *params, int n_params);

/* Runs fn over [0, n) split into contiguous chunks across the core's threads. */
typedef void (*fw_range_fn)(void *arg, int64_t begin, int64_t end);
void fw_parallel_for(int64_t n, fw_range_fn fn, void *arg);
void fw_set_num_threads(int n);
int fw_get_num_threads(void);

#ifdef __cplusplus
}
#endif
#endif
