/* fw/tensor.h - dtypes and the tensor struct.
 *
 * A tensor is both a value and a node of the compute graph (as in ggml).
 * Shapes are in PyTorch order: ne[0] is the outermost dimension, ne[ndim-1]
 * the innermost. Strides nb[] are in elements. All tensors are owned by a
 * struct fw_ctx; plugins never free them.
 */
#ifndef FW_TENSOR_H
#define FW_TENSOR_H

#include "fw/status.h"

#ifdef __cplusplus
extern "C" {
#endif

enum fw_dtype {
	FW_F32 = 0,
	FW_BF16,
	FW_F16,
	FW_I32,
	FW_Q4,          /* packed 4-bit codes, two per byte (storage only) */
	FW_DTYPE_COUNT
};

#define FW_MAX_DIMS 4
#define FW_MAX_SRC 4
#define FW_MAX_PARAMS 8
#define FW_NAME_MAX 96

/* Tensor flags. */
enum {
	FW_FLAG_PARAM = 1u << 0,       /* weight: lives in the weights arena */
	FW_FLAG_TRAINABLE = 1u << 1,   /* parameter that gets a gradient */
	FW_FLAG_INPUT = 1u << 2,       /* fed by the caller before each step */
	FW_FLAG_OUTPUT = 1u << 3,      /* kept alive after forward for reading */
	FW_FLAG_NEEDS_GRAD = 1u << 4,  /* some trainable parameter flows into it */
	FW_FLAG_VIEW = 1u << 5,        /* aliases the memory of view_src */
	FW_FLAG_GRAD = 1u << 6,        /* this tensor is another tensor's gradient */
	/* Who created a parameter, set by the host's routing (fw_host.linear,
	 * .attention, .embed); neither: the arch. Checkpoints record it. */
	FW_FLAG_BY_PEFT = 1u << 7,     /* in a peft plugin's hook */
	FW_FLAG_BY_ATTENTION = 1u << 8,/* in an attention plugin's attend */
	FW_FLAG_STATE = 1u << 9 ,       /* non-trainable parameter holding a plugin's running
					  state (AdaLoRA's importance EMAs): checkpointed and
					  restored, but no model weight: a weights file may
					  lack it (it keeps its init), no base fingerprint */
	FW_FLAG_TASK_HEAD = 1u << 10,  /* set by the arch: a task head's parameter (a
					  classifier, BERT's pooler) that a weights file may lack
					  (a base model fine-tuned for the task): it keeps its
					  init */
	FW_FLAG_REMAT = 1u << 11,      /* set on an op node: a graph with a backward
					  recomputes its output just before a backward
					  step reads it instead of keeping it from the
					  forward, as for FW_OPF_REMAT ops (op.h), where
					  its sources are kept or recomputed anyway */
	FW_FLAG_WRITTEN = 1u << 12,    /* a parameter's data changed since a graph last
					  read it: set by fw_tensor_mark_written, consumed
					  by the graphs (their cached half copies) */
	FW_FLAG_GRAD_CLEARED = 1u << 14,/* a trainable parameter whose gradient
					  fw_graph_zero_grad cleared without writing
					  it: the memory is stale until the first
					  writer of the next backward (or
					  fw_graph_grads_materialize) */
};

/* Initialisation recipe of a parameter, kept in params[0] (kind) and
 * params[1] (std or value) of the leaf until fw_ctx_init_params runs. */
enum fw_init { FW_INIT_ZERO = 0, FW_INIT_NORMAL, FW_INIT_CONST, FW_INIT_UNIFORM };

union fw_param {
	int32_t i;
	float f;
};

struct fw_tensor {
	enum fw_dtype dtype;
	int ndim;
	int64_t ne[FW_MAX_DIMS];        /* shape */
	int64_t nb[FW_MAX_DIMS];        /* strides, in elements */
	void *data;                     /* NULL until the graph is planned */

	int op;                         /* enum fw_op, or a registered plugin op id */
	struct fw_tensor *src[FW_MAX_SRC];
	union fw_param params[FW_MAX_PARAMS];
	struct fw_tensor *grad;         /* f32 gradient, NULL when none is needed */
	struct fw_tensor *view_src;     /* for views: the tensor whose memory we use */
	int64_t view_offset;            /* for views: offset into view_src, elements */
	uint32_t flags;
	int segment;                    /* recompute segment, 0 = none */
	int id;                         /* index in its context */
	char name[FW_NAME_MAX];
};

size_t fw_dtype_size(enum fw_dtype t);     /* bytes per element; Q4 returns 1 */
const char *fw_dtype_name(enum fw_dtype t);/* "f32", "bf16", ... */
int fw_dtype_from_name(const char *name);  /* -1 if unknown */

int64_t fw_nelem(const struct fw_tensor *t);
size_t fw_nbytes(const struct fw_tensor *t);       /* contiguous storage size */
bool fw_is_contiguous(const struct fw_tensor *t);
bool fw_same_shape(const struct fw_tensor *a, const struct fw_tensor *b);
/* Writes "[2, 3, 4]" into buf. */
const char *fw_shape_str(const struct fw_tensor *t, char *buf, size_t len);
/* Sets contiguous strides for the current shape. */
void fw_set_contiguous_strides(struct fw_tensor *t);

/* bf16/f16 conversion (round to nearest even). */
uint16_t fw_f32_to_bf16(float f);
float fw_bf16_to_f32(uint16_t h);
uint16_t fw_f32_to_f16(float f);
float fw_f16_to_f32(uint16_t h);
/* Converts n elements between any two of f32/bf16/f16. */
void fw_convert(void *dst, enum fw_dtype dt, const void *src, enum fw_dtype st,
		int64_t n);

/* The rule for writing a parameter's data: whoever changes the values (or
 * the data pointer) of a parameter once a graph may have read it calls
 * fw_tensor_mark_written(t) after the write. Graphs keep the half copy of
 * a frozen f32 parameter that autocast's matmuls read across forwards
 * (cast once, reused until the parameter is written: graph.h), and this
 * mark is what makes them cast it again. The engine's and runtime's own
 * writers do it (fw_ctx_init_params, fw_h5_load, the runtime's weight,
 * checkpoint and adapter loads, merges, optimizer steps, peft hooks);
 * a plugin or tool that writes t->data itself must too. */
static inline void fw_tensor_mark_written(struct fw_tensor *t)
{
	t->flags |= FW_FLAG_WRITTEN;
}

static inline float *fw_f32(const struct fw_tensor *t) { return (float *)t->data; }
static inline int32_t *fw_i32(const struct fw_tensor *t) { return (int32_t *)t->data; }

#ifdef __cplusplus
}
#endif
#endif
