/* fw/graph.h - contexts, graphs, memory planning and execution.
 *
 * Life of a training step:
 *
 *     struct fw_ctx *ctx = fw_ctx_new();
 *     struct fw_tensor *x = fw_input(ctx, "x", FW_F32, 2, (int64_t[]){B, C});
 *     struct fw_tensor *w = fw_param(ctx, "w", FW_F32, 2, (int64_t[]){C, C}, true);
 *     ... build the forward expression up to a scalar loss ...
 *     struct fw_graph *g = fw_graph_new(ctx, &loss, 1, &(struct fw_graph_opts){
 *             .backward = true, .training = true });
 *     for (;;) {            // no allocation inside the loop
 *             fill x->data;
 *             fw_graph_forward(g);
 *             fw_graph_backward(g);   // adds into w->grad->data
 *             optimizer step; fw_graph_zero_grad(g);   // lazy: see below
 *     }
 *
 * fw_graph_new derives the backward schedule, decides which activations must
 * live until their backward, inserts recomputation for checkpointed segments,
 * and packs every activation and activation-gradient buffer into one arena by
 * lifetime. Parameters live in the weights arena, their gradients in the
 * gradient arena (trainable ones only: frozen parameters get no gradient and
 * no backward work that only they need).
 */
#ifndef FW_GRAPH_H
#define FW_GRAPH_H

#include "fw/ops.h"
#include "fw/op.h"

#ifdef __cplusplus
extern "C" {
#endif

struct fw_ctx;
struct fw_graph;

/* A context owns tensors and parameters; its graphs (fw_graph_new) are freed
 * before it. Graphs of one context share its tensors, so they run one at a
 * time; graphs of different contexts are independent (two models in one
 * process) and may run from different threads: their matmuls share oneDNN's
 * primitive cache under a lock, and each run's kernels use the OpenMP pool. */
struct fw_ctx *fw_ctx_new(void);
void fw_ctx_free(struct fw_ctx *ctx);
/* The context's last error; never NULL. */
struct fw_err *fw_ctx_err(struct fw_ctx *ctx);

int fw_ctx_n_tensors(const struct fw_ctx *ctx);
struct fw_tensor *fw_ctx_tensor(const struct fw_ctx *ctx, int i);
struct fw_tensor *fw_ctx_find(const struct fw_ctx *ctx, const char *name);
void fw_tensor_set_name(struct fw_tensor *t, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Marks a parameter trainable or frozen; only before fw_ctx_alloc_params. */
enum fw_status fw_param_set_trainable(struct fw_ctx *ctx, struct fw_tensor *p, bool on);

/* Mixed precision, like torch.autocast: every fw_matmul (and fw_linear)
 * built on ctx from now on whose operands are f32 gets them cast to dt
 * (FW_BF16 or FW_F16; FW_F32 turns it off). The product then runs in dt with
 * f32 accumulation and a dt result; ops flagged FW_OPF_HALF read it as is,
 * others get it cast to f32. A dt node's gradient is dt (as torch's autograd
 * keeps it); a cast's is f32 and shares its f32 source's buffer, so
 * parameters and their gradients stay f32 (docs/mixed-precision.md). The
 * operands a matmul keeps for its backward are the dt copies.
 * A cast of an f32 parameter (frozen or trainable) keeps its output across
 * forwards: the context holds that copy (counted as FW_MEM_WEIGHTS, shared
 * by its graphs), the first forward casts it and a later one again only
 * when the parameter was marked written (fw_tensor_mark_written,
 * fw/tensor.h) or its data pointer changed, unless the writer wrote the
 * copy too (fw_ctx_kept_written: the optimizer's step). FW_HALF_SHADOW=0 in
 * the environment casts every forward; FW_HALF_SHADOW_CHECK=1 fails a
 * forward that finds a current kept copy different from a fresh cast (a
 * write that was not marked, or a copy written wrong). */
enum fw_status fw_ctx_set_autocast(struct fw_ctx *ctx, enum fw_dtype dt);
enum fw_dtype fw_ctx_autocast(const struct fw_ctx *ctx);
/* The kept dt copy of parameter p that ctx's graphs read (fw_nelem(p)
 * elements of dt), or NULL when they keep none (no graph casts p to dt, or
 * FW_HALF_SHADOW=0). */
void *fw_ctx_kept_copy(struct fw_ctx *ctx, const struct fw_tensor *p, enum fw_dtype dt);
/* p's data was written and its kept dt copy with it, exactly as
 * fw_convert(copy, dt, p->data, FW_F32, n) writes it: p is marked written
 * (its other copies are cast again) and the next forward casts nothing for
 * this one. */
void fw_ctx_kept_written(struct fw_ctx *ctx, struct fw_tensor *p, enum fw_dtype dt);

/* Nodes created between begin and end form one recompute segment: with
 * fw_graph_opts.recompute their activations are dropped after forward and
 * recomputed before the segment's backward (activation checkpointing). */
void fw_ctx_checkpoint_begin(struct fw_ctx *ctx);
void fw_ctx_checkpoint_end(struct fw_ctx *ctx);

/* Allocates storage for all parameters not yet allocated (weights arena,
 * zero-filled) and gradients of trainable ones, and for inputs. Called by
 * fw_graph_new if needed. */
enum fw_status fw_ctx_alloc_params(struct fw_ctx *ctx);

/* Records how a parameter is initialised (applied by fw_ctx_init_params). */
void fw_param_set_init(struct fw_tensor *p, enum fw_init kind, float value);
/* Fills every parameter from its recipe with a counter-based RNG keyed by
 * (seed, parameter name): the values do not depend on creation order or
 * thread count. NORMAL: N(0, value^2); UNIFORM: U(-value, value). */
enum fw_status fw_ctx_init_params(struct fw_ctx *ctx, uint64_t seed);
/* Counter-based RNG: a 32-bit random value for (key, counter), the same on
 * every thread count (Philox-like mixing, splitmix64 finaliser). Inline, so
 * that kernels (dropout, attention/flash's dropout) draw one per element. */
static inline uint32_t fw_rng_u32(uint64_t key, uint64_t counter)
{
	uint64_t z = key ^ (counter * 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	z ^= z >> 31;
	return (uint32_t)(z >> 32);
}
/* A standard normal / uniform [0,1) sample for (key, counter). */
float fw_rng_normal(uint64_t key, uint64_t counter);
double fw_rng_uniform(uint64_t key, uint64_t counter);
uint64_t fw_hash_str(const char *s, uint64_t seed);

/* Memory categories of the report. */
enum fw_mem_category {
	FW_MEM_WEIGHTS = 0,
	FW_MEM_GRADIENTS,
	FW_MEM_OPTIMIZER,
	FW_MEM_ACTIVATIONS,   /* planned arena: activations and their gradients */
	FW_MEM_INPUTS,
	FW_MEM_WORKSPACE,
	FW_MEM_CATEGORY_COUNT
};
const char *fw_mem_category_name(enum fw_mem_category c);

/* Zeroed persistent storage owned by ctx and counted in a category
 * (optimizer state uses FW_MEM_OPTIMIZER). NULL on failure with err set. */
void *fw_ctx_alloc(struct fw_ctx *ctx, size_t bytes, enum fw_mem_category cat);

struct fw_graph_opts {
	bool backward;     /* derive and plan the backward pass from outputs[0] */
	bool training;     /* dropout active */
	bool recompute;    /* honour checkpoint segments */
};

/* outputs[0] must be a one-element loss when opts->backward. All outputs stay
 * readable after fw_graph_forward. NULL on failure with fw_ctx_err set. */
struct fw_graph *fw_graph_new(struct fw_ctx *ctx, struct fw_tensor **outputs,
			      int n_outputs, const struct fw_graph_opts *opts);
void fw_graph_free(struct fw_graph *g);

/* Runs the forward steps. A kernel that cannot run (a oneDNN primitive that
 * cannot be created or executed for its shape, dtype or CPU) stops the run:
 * the status comes back (FW_ERR_INTERNAL, FW_ERR_NOMEM) with one line in
 * fw_ctx_err naming the node and op, outputs are not valid, and backward
 * refuses to run until a forward succeeds. The process never aborts.
 * In a graph with a backward whose loss is a fused LM head
 * (fw_lm_head_cross_entropy) on a trainable weight, forward already adds
 * that weight's gradient for the loss scale set now: pair each forward with
 * one backward (a second forward first is refused with FW_ERR_INVALID), and
 * set the loss scale before forward. */
enum fw_status fw_graph_forward(struct fw_graph *g);
/* Seeds d(loss) = 1 (or the value set by fw_graph_set_loss_scale) and adds
 * parameter gradients into their grad buffers: call once per micro-batch to
 * accumulate, and fw_graph_zero_grad after the optimizer step. Errors as for
 * fw_graph_forward; after a failed backward the gradients are partial. */
enum fw_status fw_graph_backward(struct fw_graph *g);
/* Clears the gradients of g's trainable parameters without touching their
 * memory (as torch's zero_grad(set_to_none=True)): each gets
 * FW_FLAG_GRAD_CLEARED, and the first kernel of the next forward/backward
 * (of any graph of the context) that writes it overwrites it (a product
 * with beta 0, no oneDNN sum post-op), or zeroes it just before when the
 * kernel can only add; later writers and later micro-batches add as before.
 * A backward returns with every one of g's gradients written (those no step
 * wrote are zeroed). Between zero_grad and the next backward the grad
 * buffers hold stale values: a reader there (nothing in the runtime reads
 * them; tests that check the zeroing do) calls fw_graph_grads_materialize,
 * which zeroes the cleared ones. Zeroing on demand, not on read, because a
 * grad's data is a plain pointer that kernels and plugins read directly.
 * FW_GRAD_ZERO_ALL=1 zeroes eagerly here (the old path); FW_GRAD_POISON=1
 * fills cleared gradients with NaN, so a kernel that adds into one fails. */
void fw_graph_zero_grad(struct fw_graph *g);
void fw_graph_grads_materialize(struct fw_graph *g);
void fw_graph_set_step(struct fw_graph *g, int64_t step);
void fw_graph_set_loss_scale(struct fw_graph *g, float scale);

int fw_graph_n_nodes(const struct fw_graph *g);
struct fw_tensor *fw_graph_node(const struct fw_graph *g, int i);
/* Trainable parameters reachable from the outputs, in creation order. */
int fw_graph_n_params(const struct fw_graph *g);
struct fw_tensor *fw_graph_param(const struct fw_graph *g, int i);

struct fw_memory_report {
	size_t bytes[FW_MEM_CATEGORY_COUNT];
	size_t total;
	size_t activations_unplanned; /* sum of buffer sizes without reuse */
	int64_t n_params, n_trainable;
	int n_buffers;                /* planned buffers */
};
void fw_graph_memory(const struct fw_graph *g, struct fw_memory_report *r);
/* Writes a human-readable report, one category a line. */
void fw_memory_report_print(const struct fw_memory_report *r, void *file);

#ifdef __cplusplus
}
#endif
#endif
