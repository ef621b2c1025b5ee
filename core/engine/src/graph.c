/* graph.c - schedule, memory plan and execution of a forward/backward graph.
 *
 * The schedule is a list of steps: FWD(node) for every node in topological
 * order, then for the backward pass BWD(node) in reverse order, preceded by
 * RECOMP(node) steps that rerun a checkpointed segment's forward just before
 * its backward needs it, or that recompute one cheap output (a norm's, an
 * activation's) that a backward step reads (add_remat). Walking the schedule
 * once tells, for every buffer (node value, recomputed value, node gradient),
 * the first and last step that touches it; buffers whose lifetimes do not
 * overlap share memory, and every buffer gets a fixed offset in one arena.
 * Nothing is allocated while running.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "half.h"
#include "internal.h"

enum step_kind { STEP_FWD, STEP_RECOMP, STEP_BWD };

struct step {
	enum step_kind kind;
	int node;                   /* index into g->nodes */
	uint32_t overwrite;         /* BWD: fw_exec.grad_overwrite (mark_overwrites) */
	int param[FW_MAX_SRC];      /* per source: the g->params index whose gradient
				       this step writes, or -1 (mark_param_writers) */
	uint32_t param_ow;          /* of those, the sources it can overwrite */
};

struct slot {                      /* one planned buffer */
	size_t bytes;
	int first, last;            /* steps that touch it */
	size_t offset;
	bool is_grad;               /* zeroed before its first step */
	bool overwritten;           /* is_grad, but its first step writes it all */
};

struct fw_graph {
	struct fw_ctx *ctx;
	struct fw_graph_opts opts;
	struct fw_tensor **nodes;   /* non-leaf tensors, topological order */
	int n_nodes;
	struct fw_tensor **outputs;
	int n_outputs;
	struct fw_tensor **params;  /* trainable parameters reachable */
	int n_params;
	struct fw_tensor **leaves;  /* parameters and inputs reachable */
	int n_leaves;

	struct step *steps;
	int n_steps, n_fwd_steps;

	struct slot *slots;
	int n_slots;
	int *val_slot, *rec_slot;   /* per node: forward and recompute value slots */
	int *grad_slot;             /* per node: gradient slot, -1 if none */
	int *stash_slot;            /* per node: what forward keeps for backward, -1 if none */
	char *remat;                /* per node: recomputed for backward (add_remat) */
	char *grad_in_fwd;          /* per node: forward adds its weight's gradient */
	bool any_grad_in_fwd;
	size_t *widen_bytes;        /* per node: f32 gradient copies its backward needs */
	struct fw_kept **kept;      /* per node: the kept half copy it stands for, or NULL */
	bool kept_check;            /* FW_HALF_SHADOW_CHECK=1 */
	struct fw_tensor **grads;   /* per node: gradient tensor or NULL */
	int *zero_order;            /* grad slots sorted by first step */
	int n_zero;
	bool poison;                /* FW_GRAD_POISON: overwritten slots start NaN */
	bool zero_all;              /* FW_GRAD_ZERO_ALL: zero_grad zeroes eagerly */
	size_t zero_bytes, overwrite_bytes;   /* per backward, for the profile */
	double param_zeroed, param_written;   /* bytes of cleared parameter gradients,
					         all runs: zeroed, overwritten */

	char *arena;
	size_t arena_bytes, unplanned_bytes;
	void *ws;
	size_t ws_bytes;

	int64_t step;
	float loss_scale;
	bool forward_done;
	struct op_time *prof;       /* FW_OP_PROFILE set: per op id, else NULL */
	int n_prof;
	double prof_zero;           /* zeroing gradient slots */
};

/* FW_OP_PROFILE=1: wall time per op and pass, printed to stderr when the
 * graph is freed (for finding where a step's time goes; bench/README.md). */
struct op_time {
	double s[3];                /* forward, recompute, backward */
	int64_t calls[3];
};

static size_t align_up(size_t n)
{
	return (n + FW_ALIGN - 1) & ~(size_t)(FW_ALIGN - 1);
}

static bool is_leaf(const struct fw_tensor *t)
{
	return t->op == FW_OP_NONE;
}

static bool is_view(const struct fw_tensor *t)
{
	return t->flags & FW_FLAG_VIEW;
}

/* Whether p lies in one of ctx's own weight blocks (not a parameter that
 * shares another context's storage, whose writes that context marks). */
static bool owns_weight(const struct fw_ctx *ctx, const void *p)
{
	for (const struct fw_block *b = ctx->blocks; b; b = b->next)
		if (b->cat == FW_MEM_WEIGHTS && (const char *)p >= (const char *)b->ptr &&
		    (const char *)p < (const char *)b->ptr + b->bytes)
			return true;
	return false;
}

/* A cast to half of an f32 parameter (frozen or trainable) stored in ctx:
 * its output is kept across forwards and cast again only when the parameter
 * changed without its copy (fw/graph.h). */
static bool keeps_copy(const struct fw_ctx *ctx, const struct fw_tensor *t)
{
	const struct fw_tensor *x = t->src[0];
	return t->op == FW_OP_CAST && !is_view(t) && t->dtype != FW_F32 && is_leaf(x) &&
	       (x->flags & FW_FLAG_PARAM) && x->dtype == FW_F32 && x->data &&
	       owns_weight(ctx, x->data);
}

/* --- collecting nodes -------------------------------------------------------- */

/* Post-order DFS from the outputs with an explicit stack; pos[] maps tensor id
 * to node index (-1 for leaves and unvisited). */
static enum fw_status collect(struct fw_graph *g, int *pos)
{
	struct fw_ctx *ctx = g->ctx;
	int n = ctx->n_tensors;
	char *state = fw_calloc((size_t)n, 1);  /* 0 new, 1 open, 2 done */
	int *stack = fw_malloc((size_t)n * 2 * sizeof(int));
	enum fw_status s = FW_OK;

	g->nodes = fw_malloc((size_t)n * sizeof(*g->nodes));
	g->leaves = fw_malloc((size_t)n * sizeof(*g->leaves));
	if (!state || !stack || !g->nodes || !g->leaves) {
		s = fw_errorf(&ctx->err, FW_ERR_NOMEM, "graph: out of memory");
		goto out;
	}
	for (int i = 0; i < n; i++)
		pos[i] = -1;
	for (int o = 0; o < g->n_outputs; o++) {
		int sp = 0;
		stack[sp++] = g->outputs[o]->id;
		while (sp) {
			int id = stack[sp - 1];
			struct fw_tensor *t = ctx->tensors[id];
			if (state[id] == 2) {
				sp--;
				continue;
			}
			if (state[id] == 0) {
				state[id] = 1;
				for (int k = FW_MAX_SRC - 1; k >= 0; k--)
					if (t->src[k] && state[t->src[k]->id] == 0)
						stack[sp++] = t->src[k]->id;
				continue;
			}
			state[id] = 2;
			sp--;
			if (is_leaf(t)) {
				g->leaves[g->n_leaves++] = t;
			} else {
				pos[id] = g->n_nodes;
				g->nodes[g->n_nodes++] = t;
			}
		}
	}
out:
	fw_free(state);
	fw_free(stack);
	return s;
}

/* Folds autocast's cast to half of a norm's f32 output (pre-LN blocks:
 * norm -> cast -> matmul) into the norm (FW_OPF_NARROW_OUT): the norm
 * rounds its f32 result to the half dtype as it stores it, bit for bit
 * what the cast wrote, and the cast becomes a view of it, so no f32 copy
 * is written and the half one stays recomputable. Only when every reader
 * of the norm in ctx is such a cast to that dtype (a head may cast the
 * final norm twice: logits and loss) and the norm is not an output: BERT's
 * post-LN norm, also the residual, keeps its cast. A second graph over ctx
 * finds the casts already folded. FW_CAST_FOLD=0: off. */
static void fold_casts(struct fw_graph *g)
{
	const char *env = getenv("FW_CAST_FOLD");
	struct fw_ctx *ctx = g->ctx;
	if (env && !strcmp(env, "0"))
		return;
	for (int i = 0; i < g->n_nodes; i++) {
		struct fw_tensor *c = g->nodes[i], *x = c->src[0];
		if (c->op != FW_OP_CAST || is_view(c) || !is_half(c->dtype) || is_leaf(x) ||
		    is_view(x) || x->dtype != FW_F32 ||
		    !(fw_op_get(x->op)->flags & FW_OPF_NARROW_OUT))
			continue;
		bool only_casts = !(x->flags & FW_FLAG_OUTPUT);
		for (int o = 0; o < g->n_outputs; o++)
			only_casts &= g->outputs[o] != x;
		for (int j = 0; j < ctx->n_tensors && only_casts; j++) {
			const struct fw_tensor *r = ctx->tensors[j];
			for (int k = 0; k < FW_MAX_SRC; k++)
				only_casts &= r->src[k] != x || (r->op == FW_OP_CAST && k == 0 &&
								 r->dtype == c->dtype);
		}
		if (!only_casts)
			continue;
		x->dtype = c->dtype;
		for (int j = 0; j < ctx->n_tensors; j++) {
			struct fw_tensor *r = ctx->tensors[j];
			if (r->src[0] == x) {
				r->flags |= FW_FLAG_VIEW;
				r->view_src = x;
			}
		}
	}
}

/* --- schedule ------------------------------------------------------------------ */

/* Marks nodes on a path from a trainable parameter to the loss. */
static void mark_grad_nodes(struct fw_graph *g, const int *pos, bool *has_grad)
{
	bool *reaches = fw_calloc((size_t)g->n_nodes, 1);
	int li = pos[g->outputs[0]->id];
	if (!reaches)
		return;
	if (li >= 0)
		reaches[li] = true;
	for (int i = g->n_nodes - 1; i >= 0; i--) {
		if (!reaches[i])
			continue;
		struct fw_tensor *t = g->nodes[i];
		for (int k = 0; k < FW_MAX_SRC; k++)
			if (t->src[k] && pos[t->src[k]->id] >= 0)
				reaches[pos[t->src[k]->id]] = true;
	}
	for (int i = 0; i < g->n_nodes; i++) {
		struct fw_tensor *t = g->nodes[i];
		const struct fw_op_i *vt = fw_op_get(t->op);
		bool need = false;
		for (int k = 0; k < FW_MAX_SRC && vt->backward; k++) {
			struct fw_tensor *s = t->src[k];
			if (!s)
				continue;
			if (is_leaf(s) ? (s->flags & FW_FLAG_TRAINABLE) != 0
				       : has_grad[pos[s->id]])
				need = true;
		}
		has_grad[i] = need && reaches[i];
	}
	fw_free(reaches);
}

static enum fw_status build_schedule(struct fw_graph *g, const bool *has_grad)
{
	int n = g->n_nodes;
	bool recompute = g->opts.backward && g->opts.recompute;
	g->steps = fw_malloc((size_t)(3 * n + 1) * sizeof(*g->steps));
	if (!g->steps)
		return fw_errorf(&g->ctx->err, FW_ERR_NOMEM, "graph: out of memory");
	for (int i = 0; i < n; i++)
		g->steps[g->n_steps++] = (struct step){ .kind = STEP_FWD, .node = i };
	g->n_fwd_steps = g->n_steps;
	if (!g->opts.backward)
		return FW_OK;

	int max_seg = 0;
	for (int i = 0; i < n; i++)
		if (g->nodes[i]->segment > max_seg)
			max_seg = g->nodes[i]->segment;
	bool *done = fw_calloc((size_t)max_seg + 1, 1);
	if (!done)
		return fw_errorf(&g->ctx->err, FW_ERR_NOMEM, "graph: out of memory");
	for (int i = n - 1; i >= 0; i--) {
		struct fw_tensor *t = g->nodes[i];
		if (!has_grad[i])
			continue;
		int seg = t->segment;
		if (recompute && seg > 0 && !done[seg]) {
			done[seg] = true;
			for (int j = 0; j < n; j++)
				if (g->nodes[j]->segment == seg && !g->kept[j])
					g->steps[g->n_steps++] =
						(struct step){ .kind = STEP_RECOMP, .node = j };
		}
		if (t->op != FW_OP_RESHAPE)   /* its gradient aliases its source's */
			g->steps[g->n_steps++] = (struct step){ .kind = STEP_BWD, .node = i };
	}
	fw_free(done);
	return FW_OK;
}

/* Whether node i's forward may add its weight's (src[1]) gradient, as
 * fw_kernel_dloss describes: the node is the loss, runs once per forward
 * (not in a recomputed segment), and that gradient is a parameter's
 * persistent buffer (its own, or the one a cast or reshape of it shares). */
static bool grad_in_forward(const struct fw_graph *g, const int *pos, const bool *has_grad,
			    int i)
{
	const struct fw_tensor *t = g->nodes[i], *w = t->src[1];
	if (i != pos[g->outputs[0]->id] || !has_grad[i] || !w || !w->grad ||
	    (g->opts.recompute && t->segment > 0))
		return false;
	return pos[w->id] < 0 || g->grad_slot[pos[w->id]] < 0;
}

/* --- lifetimes and offsets ------------------------------------------------------ */

static int slot_new(struct fw_graph *g, size_t bytes, bool is_grad)
{
	struct slot *s = &g->slots[g->n_slots];
	s->bytes = align_up(bytes);
	s->first = -1;
	s->last = -1;
	s->is_grad = is_grad;
	return g->n_slots++;
}

static void touch(struct fw_graph *g, int slot, int step)
{
	if (slot < 0)
		return;
	struct slot *s = &g->slots[slot];
	if (s->first < 0 || step < s->first)
		s->first = step;
	if (step > s->last)
		s->last = step;
}

/* The slot a tensor's current data lives in, following views; -1 when
 * persistent (leaves). bound[] is the slot each node was last computed into. */
static int value_slot(const int *pos, const int *bound, const struct fw_tensor *t)
{
	int p = pos[t->id];
	return p < 0 ? -1 : bound[p];
}

static int grad_slot_of(const struct fw_graph *g, const int *pos, const struct fw_tensor *t)
{
	int p = pos[t->id];
	return p < 0 ? -1 : g->grad_slot[p];
}

/* A node's gradient dtype: its own when half (a matmul's, GELU's or
 * softmax's output under autocast, as torch's autograd keeps it), else f32.
 * A cast's gradient is f32 (it feeds the fp32 main gradients or an f32
 * op's), and a reshape shares its source's. */
static enum fw_dtype grad_dtype(const struct fw_graph *g, const int *pos,
				const struct fw_tensor *t)
{
	if (t->op == FW_OP_CAST)
		return FW_F32;
	if (t->src[0] && t->src[0]->dtype == FW_F32 &&
	    (fw_op_get(t->op)->flags & FW_OPF_NARROW_OUT))
		return FW_F32;          /* a folded cast's source: it shares the cast's */
	if (t->op == FW_OP_RESHAPE) {
		int p = pos[t->src[0]->id];
		return p >= 0 && g->grads[p] ? g->grads[p]->dtype : FW_F32;
	}
	return is_half(t->dtype) ? t->dtype : FW_F32;
}

/* A cast to half of an f32 tensor with an f32 gradient (autocast's copy of
 * a weight or of a layer norm's output, or a folded cast: fold_casts)
 * passes its gradient through unchanged: it shares its source's buffer (a
 * parameter's persistent gradient, or the source node's slot), as a
 * reshape does, and its backward has nothing to add. */
static bool shares_grad(const struct fw_graph *g, const int *pos, const struct fw_tensor *t)
{
	if (t->op != FW_OP_CAST || (t->src[0]->dtype != FW_F32 && !is_view(t)))
		return false;
	int p = pos[t->src[0]->id];
	return p < 0 ? t->src[0]->grad != NULL : g->grads[p] && g->grads[p]->dtype == FW_F32;
}

/* The f32 gradient copies node t's backward gets in front of its workspace
 * (0 when its op reads and writes half gradients itself): its own output
 * gradient, and a zeroed buffer per source whose gradient is half. */
static size_t widen_bytes_of(const struct fw_tensor *t)
{
	const struct fw_op_i *vt = fw_op_get(t->op);
	size_t n = 0;
	if (!t->grad || !vt->backward || (vt->flags & FW_OPF_HALF_GRAD))
		return 0;
	if (is_half(t->grad->dtype))
		n += align64((size_t)fw_nelem(t) * sizeof(float));
	for (int k = 0; k < FW_MAX_SRC; k++) {
		const struct fw_tensor *x = t->src[k];
		bool seen = false;
		for (int j = 0; j < k; j++)
			seen |= t->src[j] == x;
		if (x && !seen && x->grad && is_half(x->grad->dtype))
			n += align64((size_t)fw_nelem(x) * sizeof(float));
	}
	return n;
}

/* --- recomputing cheap outputs ------------------------------------------------------ */

/* The node or leaf whose buffer a view chain aliases. */
static const struct fw_tensor *view_root(const struct fw_tensor *t)
{
	while (is_view(t) && t->view_src)
		t = t->view_src;
	return t;
}

/* A cheap op (FW_OPF_REMAT, or a node flagged FW_FLAG_REMAT) whose own
 * backward keeps every source that is a node, or whose other sources are
 * recomputed too: running it again in backward keeps nothing extra alive.
 * Nodes are visited in order, so a source's verdict is known. */
static bool remat_ok(const struct fw_graph *g, const int *pos, const bool *has_grad, int i)
{
	const struct fw_tensor *t = g->nodes[i];
	const struct fw_op_i *vt = fw_op_get(t->op);
	if (!(vt->flags & FW_OPF_REMAT) && !(t->flags & FW_FLAG_REMAT))
		return false;
	if (is_view(t) || !has_grad[i] || !vt->saved ||
	    g->rec_slot[i] >= 0)      /* a checkpointed segment's: recomputed anyway */
		return false;
	uint32_t saved = vt->saved(t);
	for (int k = 0; k < FW_MAX_SRC; k++) {
		int p = t->src[k] ? pos[t->src[k]->id] : -1;
		if (p >= 0 && !(saved & (1u << k)) && !g->remat[p])
			return false;
	}
	return true;
}

/* Appends the RECOMP steps that node i needs before a backward step reads
 * it, once: first those of its recomputed sources (a view's chain, or what
 * its forward reads), then its own. */
static void remat_step(struct fw_graph *g, const int *pos, struct step *steps, int *ns, int i)
{
	struct fw_tensor *t = g->nodes[i];
	if (g->remat[i] != 1)
		return;
	for (int k = 0; k < FW_MAX_SRC; k++)
		if (t->src[k] && pos[t->src[k]->id] >= 0)
			remat_step(g, pos, steps, ns, pos[t->src[k]->id]);
	steps[(*ns)++] = (struct step){ .kind = STEP_RECOMP, .node = i };
	g->remat[i] = 2;
}

/* Outputs of cheap ops (and views of them) that a later backward step reads
 * are computed again just before the first such step, into a second slot,
 * instead of living from the forward to the backward (FW_REMAT=0: off). */
static enum fw_status add_remat(struct fw_graph *g, const int *pos, const bool *has_grad)
{
	int n = g->n_nodes;
	const char *env = getenv("FW_REMAT");
	g->remat = fw_calloc((size_t)n + 1, 1);     /* 1: recompute, 2: scheduled */
	if (!g->remat)
		return fw_errorf(&g->ctx->err, FW_ERR_NOMEM, "graph: out of memory");
	if (!g->opts.backward || (env && !strcmp(env, "0")))
		return FW_OK;
	for (int i = 0; i < n; i++) {
		const struct fw_tensor *t = g->nodes[i];
		int root = pos[view_root(t)->id];
		bool out = false;                       /* outputs stay readable */
		for (int o = 0; o < g->n_outputs; o++)
			out |= view_root(g->outputs[o]) == t;
		if (is_view(t))
			g->remat[i] = root >= 0 && g->remat[root];
		else
			g->remat[i] = !out && remat_ok(g, pos, has_grad, i);
	}
	struct step *steps = fw_malloc((size_t)(g->n_steps + n + 1) * sizeof(*steps));
	if (!steps)
		return fw_errorf(&g->ctx->err, FW_ERR_NOMEM, "graph: out of memory");
	int ns = 0;
	for (int si = 0; si < g->n_steps; si++) {
		struct step st = g->steps[si];
		struct fw_tensor *t = g->nodes[st.node];
		const struct fw_op_i *vt = fw_op_get(t->op);
		/* what the step reads: a segment's recompute reads every source */
		uint32_t saved = st.kind == STEP_FWD ? 0 : st.kind == STEP_RECOMP ?
				 FW_SAVE_OUT - 1 : vt->saved ? vt->saved(t) : 0xffffffffu;
		for (int k = 0; k < FW_MAX_SRC; k++)
			if (t->src[k] && (saved & (1u << k)) && pos[t->src[k]->id] >= 0)
				remat_step(g, pos, steps, &ns, pos[t->src[k]->id]);
		if (saved & FW_SAVE_OUT)
			remat_step(g, pos, steps, &ns, st.node);
		steps[ns++] = st;
	}
	fw_free(g->steps);
	g->steps = steps;
	g->n_steps = ns;
	for (int i = 0; i < n; i++)
		if (g->remat[i] == 2 && !is_view(g->nodes[i]))
			g->rec_slot[i] = slot_new(g, fw_nbytes(g->nodes[i]), false);
	return FW_OK;
}

/* A gradient slot needs no zeroing when the first step that touches it is
 * the backward of an op that can overwrite (FW_OPF_GRAD_OVERWRITE) and it
 * is exactly one source's gradient there (not repeated, not the node's own
 * gradient shared through a cast): that step writes it instead of adding
 * (fw_exec.grad_overwrite). Parameters' gradients are persistent, not
 * slots, and keep accumulating. FW_GRAD_ZERO_ALL=1 zeroes every slot. */
static void mark_overwrites(struct fw_graph *g, const int *pos)
{
	const char *env = getenv("FW_GRAD_ZERO_ALL");
	if (env && *env && strcmp(env, "0"))
		return;
	int loss = g->grad_slot[pos[g->outputs[0]->id]];
	for (int si = g->n_fwd_steps; si < g->n_steps; si++) {
		struct step *st = &g->steps[si];
		const struct fw_tensor *t = g->nodes[st->node];
		if (st->kind != STEP_BWD || !(fw_op_get(t->op)->flags & FW_OPF_GRAD_OVERWRITE))
			continue;
		for (int k = 0; k < FW_MAX_SRC; k++) {
			int s = t->src[k] ? grad_slot_of(g, pos, t->src[k]) : -1;
			if (s < 0 || s == loss || s == g->grad_slot[st->node] ||
			    !g->slots[s].is_grad || g->slots[s].first != si)
				continue;
			bool repeated = false;
			for (int j = 0; j < FW_MAX_SRC; j++)
				repeated |= j != k && t->src[j] &&
					    grad_slot_of(g, pos, t->src[j]) == s;
			if (repeated)
				continue;
			st->overwrite |= 1u << k;
			g->slots[s].overwritten = true;
		}
	}
}

/* The g->params index of the trainable parameter whose persistent gradient
 * is t's gradient (t itself, or a reshape or sharing cast of it), or -1. */
static int grad_param_of(const struct fw_graph *g, const int *pos, const struct fw_tensor *t)
{
	for (int p; (p = pos[t->id]) >= 0; t = t->src[0])
		if (!g->grads[p] || g->grad_slot[p] >= 0)
			return -1;
	for (int i = 0; i < g->n_params; i++)
		if (g->params[i] == t)
			return i;
	return -1;
}

/* Which parameter gradients each step writes (a backward step, and the
 * forward of a loss that adds its weight's gradient there), and which of
 * them it can overwrite: an op with FW_OPF_GRAD_OVERWRITE on a source that
 * it does not also see through another source or as its own gradient. At
 * run time the first writer of a cleared gradient (FW_FLAG_GRAD_CLEARED)
 * overwrites it, or zeroes it first when it cannot (claim_params). */
static void mark_param_writers(struct fw_graph *g, const int *pos)
{
	for (int si = 0; si < g->n_steps; si++) {
		struct step *st = &g->steps[si];
		const struct fw_tensor *t = g->nodes[st->node];
		bool fwd_writer = st->kind == STEP_FWD && g->grad_in_fwd[st->node];
		for (int k = 0; k < FW_MAX_SRC; k++)
			st->param[k] = -1;
		st->param_ow = 0;
		if (st->kind != STEP_BWD && !fwd_writer)
			continue;
		int self = grad_param_of(g, pos, t);
		for (int k = 0; k < FW_MAX_SRC; k++) {
			/* the loss's backward does not write what its forward wrote */
			bool in_fwd = g->grad_in_fwd[st->node] && k == 1;
			if (t->src[k] && in_fwd == fwd_writer)
				st->param[k] = grad_param_of(g, pos, t->src[k]);
			if (st->param[k] == self)
				st->param[k] = -1;
		}
		if (!(fw_op_get(t->op)->flags & FW_OPF_GRAD_OVERWRITE))
			continue;
		for (int k = 0; k < FW_MAX_SRC; k++) {
			bool repeated = false;
			for (int j = 0; j < FW_MAX_SRC; j++)
				repeated |= j != k && st->param[j] == st->param[k];
			if (st->param[k] >= 0 && !repeated)
				st->param_ow |= 1u << k;
		}
	}
}

static enum fw_status plan(struct fw_graph *g, const int *pos, const bool *has_grad)
{
	int n = g->n_nodes;
	struct fw_ctx *ctx = g->ctx;
	int *bound = fw_malloc((size_t)(n ? n : 1) * sizeof(int));
	g->slots = fw_calloc((size_t)4 * n + 1, sizeof(*g->slots));
	g->val_slot = fw_malloc((size_t)(n ? n : 1) * sizeof(int));
	g->rec_slot = fw_malloc((size_t)(n ? n : 1) * sizeof(int));
	g->grad_slot = fw_malloc((size_t)(n ? n : 1) * sizeof(int));
	g->stash_slot = fw_malloc((size_t)(n ? n : 1) * sizeof(int));
	g->grads = fw_calloc((size_t)(n ? n : 1), sizeof(*g->grads));
	if (!bound || !g->slots || !g->val_slot || !g->rec_slot || !g->grad_slot ||
	    !g->stash_slot || !g->grads) {
		fw_free(bound);
		return fw_errorf(&ctx->err, FW_ERR_NOMEM, "graph: out of memory");
	}

	/* Value slots: views share their source's; recomputed nodes get a second. */
	bool recompute = g->opts.backward && g->opts.recompute;
	for (int i = 0; i < n; i++) {
		struct fw_tensor *t = g->nodes[i];
		if (is_view(t)) {
			g->val_slot[i] = value_slot(pos, g->val_slot, t->view_src);
			g->rec_slot[i] = -1;
		} else {
			g->val_slot[i] = slot_new(g, fw_nbytes(t), false);
			g->rec_slot[i] = recompute && t->segment > 0 && !g->kept[i] ?
					 slot_new(g, fw_nbytes(t), false) : -1;
		}
		g->grad_slot[i] = -1;
		g->stash_slot[i] = -1;
	}
	/* Gradient tensors and slots (reshape shares its source's gradient). */
	for (int i = 0; i < n && g->opts.backward; i++) {
		struct fw_tensor *t = g->nodes[i];
		if (!has_grad[i])
			continue;
		struct fw_tensor *gt = fw_tensor_new(ctx, grad_dtype(g, pos, t), t->ndim, t->ne);
		if (!gt) {
			fw_free(bound);
			return ctx->err.status;
		}
		gt->flags = FW_FLAG_GRAD;
		gt->segment = 0;
		snprintf(gt->name, sizeof(gt->name), "%.80s.grad", t->name);
		g->grads[i] = gt;
		struct fw_tensor *src = t->src[0];
		if (t->op == FW_OP_RESHAPE || shares_grad(g, pos, t))
			g->grad_slot[i] = grad_slot_of(g, pos, src);   /* -1: a param's grad */
		else
			g->grad_slot[i] = slot_new(g, fw_nbytes(gt), true);
	}

	/* saved() and workspace() look at which sources have gradients: point
	 * the nodes at this graph's gradient tensors now (data comes with bind). */
	for (int i = 0; i < n; i++)
		g->nodes[i]->grad = g->grads[i];
	g->ctx->bound = NULL;
	if (add_remat(g, pos, has_grad) != FW_OK) {
		fw_free(bound);
		return g->ctx->err.status;
	}
	/* Stashes: kept from a node's forward (and recompute) to its backward. */
	g->grad_in_fwd = fw_calloc((size_t)n + 1, 1);
	if (!g->grad_in_fwd) {
		fw_free(bound);
		return fw_errorf(&ctx->err, FW_ERR_NOMEM, "graph: out of memory");
	}
	for (int i = 0; i < n && g->opts.backward; i++) {
		bool direct = grad_in_forward(g, pos, has_grad, i);
		size_t bytes = has_grad[i] ? fw_op_stash_bytes(g->nodes[i], direct) : 0;
		g->grad_in_fwd[i] = direct && bytes;
		g->any_grad_in_fwd |= direct && bytes;
		if (bytes)
			g->stash_slot[i] = slot_new(g, bytes, false);
	}

	/* Walk the schedule exactly as the executor will. */
	for (int i = 0; i < n; i++)
		bound[i] = -1;
	bool *recomputed = fw_calloc((size_t)n + 1, 1);
	if (!recomputed) {
		fw_free(bound);
		return fw_errorf(&ctx->err, FW_ERR_NOMEM, "graph: out of memory");
	}
	for (int si = 0; si < g->n_steps; si++) {
		struct step *st = &g->steps[si];
		struct fw_tensor *t = g->nodes[st->node];
		const struct fw_op_i *vt = fw_op_get(t->op);
		int i = st->node;
		touch(g, g->stash_slot[i], si);
		if (st->kind != STEP_BWD) {
			for (int k = 0; k < FW_MAX_SRC; k++)
				if (t->src[k])
					touch(g, value_slot(pos, bound, t->src[k]), si);
			if (is_view(t))
				bound[i] = value_slot(pos, bound, t->view_src);
			else if (g->kept[i])         /* the context's copy, no slot */
				bound[i] = -1;
			else
				bound[i] = st->kind == STEP_RECOMP ? g->rec_slot[i] : g->val_slot[i];
			touch(g, bound[i], si);
			continue;
		}
		/* BWD: reads its gradient and the saved values, adds into sources'. */
		if (si == g->n_fwd_steps)
			touch(g, g->grad_slot[pos[g->outputs[0]->id]], si);
		touch(g, g->grad_slot[i], si);
		uint32_t saved = vt->saved ? vt->saved(t) : 0xffffffffu;
		for (int k = 0; k < FW_MAX_SRC; k++) {
			if (!t->src[k])
				continue;
			if (saved & (1u << k))
				touch(g, value_slot(pos, bound, t->src[k]), si);
			touch(g, grad_slot_of(g, pos, t->src[k]), si);
		}
		if (saved & FW_SAVE_OUT)
			touch(g, bound[i], si);
	}
	/* The loss gradient is seeded at the start of backward; outputs stay. */
	if (g->opts.backward && g->n_steps > g->n_fwd_steps)
		touch(g, g->grad_slot[pos[g->outputs[0]->id]], g->n_fwd_steps);
	for (int o = 0; o < g->n_outputs; o++)
		touch(g, g->val_slot[pos[g->outputs[o]->id]], g->n_steps);
	fw_free(recomputed);
	fw_free(bound);

	/* Greedy by size: biggest first, lowest offset that fits among the
	 * already placed slots whose lifetimes overlap. */
	int ns = g->n_slots;
	int *order = fw_malloc((size_t)(ns ? ns : 1) * sizeof(int));
	int *placed = fw_malloc((size_t)(ns ? ns : 1) * sizeof(int));
	if (!order || !placed) {
		fw_free(order);
		fw_free(placed);
		return fw_errorf(&ctx->err, FW_ERR_NOMEM, "graph: out of memory");
	}
	int n_order = 0;
	for (int s = 0; s < ns; s++) {
		if (g->slots[s].first < 0)
			continue;           /* never touched: no memory */
		g->unplanned_bytes += g->slots[s].bytes;
		order[n_order++] = s;
	}
	for (int a = 1; a < n_order; a++) {      /* insertion sort, size desc */
		int v = order[a], b = a - 1;
		while (b >= 0 && g->slots[order[b]].bytes < g->slots[v].bytes) {
			order[b + 1] = order[b];
			b--;
		}
		order[b + 1] = v;
	}
	int n_placed = 0;
	for (int a = 0; a < n_order; a++) {
		struct slot *s = &g->slots[order[a]];
		size_t off = 0;
		bool moved = true;
		while (moved) {          /* bump past every overlapping conflict */
			moved = false;
			for (int b = 0; b < n_placed; b++) {
				struct slot *p = &g->slots[placed[b]];
				if (p->last < s->first || s->last < p->first)
					continue;
				if (off < p->offset + p->bytes && p->offset < off + s->bytes) {
					off = p->offset + p->bytes;
					moved = true;
				}
			}
		}
		s->offset = off;
		if (off + s->bytes > g->arena_bytes)
			g->arena_bytes = off + s->bytes;
		placed[n_placed++] = order[a];
	}
	/* Gradient slots in order of their first step, for zeroing. */
	if (g->opts.backward)
		mark_overwrites(g, pos);
	mark_param_writers(g, pos);
	const char *zero_all = getenv("FW_GRAD_ZERO_ALL");
	g->zero_all = zero_all && *zero_all && strcmp(zero_all, "0");
	const char *poison = getenv("FW_GRAD_POISON");
	g->poison = poison && *poison && strcmp(poison, "0");
	g->zero_order = order;
	g->n_zero = 0;
	for (int s = 0; s < ns; s++) {
		struct slot *sl = &g->slots[s];
		if (!sl->is_grad || sl->first < 0)
			continue;
		if (sl->overwritten)
			g->overwrite_bytes += sl->bytes;
		else
			g->zero_bytes += sl->bytes;
		if (!sl->overwritten || g->poison)
			g->zero_order[g->n_zero++] = s;
	}
	for (int a = 1; a < g->n_zero; a++) {
		int v = g->zero_order[a], b = a - 1;
		while (b >= 0 && g->slots[g->zero_order[b]].first > g->slots[v].first) {
			g->zero_order[b + 1] = g->zero_order[b];
			b--;
		}
		g->zero_order[b + 1] = v;
	}
	fw_free(placed);
	return FW_OK;
}

/* --- construction ---------------------------------------------------------------- */

struct fw_graph *fw_graph_new(struct fw_ctx *ctx, struct fw_tensor **outputs, int n_outputs,
			      const struct fw_graph_opts *opts)
{
	struct fw_graph *g = NULL;
	int *pos = NULL;
	bool *has_grad = NULL;

	if (n_outputs < 1 || !outputs) {
		fw_errorf(&ctx->err, FW_ERR_INVALID, "graph: no outputs");
		return NULL;
	}
	for (int o = 0; o < n_outputs; o++) {
		if (!outputs[o]) {
			if (ctx->err.status == FW_OK)
				fw_errorf(&ctx->err, FW_ERR_INVALID, "graph: output %d is NULL", o);
			return NULL;
		}
		if (is_leaf(outputs[o])) {
			fw_errorf(&ctx->err, FW_ERR_INVALID,
				  "graph: output '%s' is a parameter or input, not an op",
				  outputs[o]->name);
			return NULL;
		}
	}
	if (opts->backward && fw_nelem(outputs[0]) != 1) {
		char sh[64];
		fw_errorf(&ctx->err, FW_ERR_SHAPE, "graph: the loss '%s' has shape %s, not one element",
			  outputs[0]->name, fw_shape_str(outputs[0], sh, sizeof(sh)));
		return NULL;
	}
	if (fw_ctx_alloc_params(ctx) != FW_OK)
		return NULL;

	g = fw_calloc(1, sizeof(*g));
	if (!g)
		goto nomem;
	g->ctx = ctx;
	g->opts = *opts;
	g->loss_scale = 1.0f;
	g->outputs = fw_malloc((size_t)n_outputs * sizeof(*outputs));
	if (!g->outputs)
		goto nomem;
	memcpy(g->outputs, outputs, (size_t)n_outputs * sizeof(*outputs));
	g->n_outputs = n_outputs;
	pos = fw_malloc((size_t)ctx->n_tensors * sizeof(int));
	if (!pos)
		goto nomem;
	if (collect(g, pos) != FW_OK)
		goto fail;
	fold_casts(g);
	has_grad = fw_calloc((size_t)g->n_nodes + 1, 1);
	g->params = fw_malloc((size_t)(g->n_leaves + 1) * sizeof(*g->params));
	if (!has_grad || !g->params)
		goto nomem;
	for (int i = 0; i < g->n_leaves; i++)
		if ((g->leaves[i]->flags & FW_FLAG_TRAINABLE) && opts->backward)
			g->params[g->n_params++] = g->leaves[i];
	if (opts->backward)
		mark_grad_nodes(g, pos, has_grad);
	g->kept = fw_calloc((size_t)g->n_nodes + 1, sizeof(*g->kept));
	if (!g->kept)
		goto nomem;
	const char *keep = getenv("FW_HALF_SHADOW"), *check = getenv("FW_HALF_SHADOW_CHECK");
	g->kept_check = check && *check && strcmp(check, "0");
	for (int i = 0; i < g->n_nodes && !(keep && !strcmp(keep, "0")); i++)
		if (keeps_copy(ctx, g->nodes[i]) &&
		    !(g->kept[i] = fw_ctx_kept(ctx, g->nodes[i]->src[0], g->nodes[i]->dtype)))
			goto fail;
	if (build_schedule(g, has_grad) != FW_OK)
		goto fail;
	/* The tensor list may grow (gradient tensors): pos covers old ids only,
	 * and only old tensors are looked up. */
	if (plan(g, pos, has_grad) != FW_OK)
		goto fail;

	g->widen_bytes = fw_calloc((size_t)g->n_nodes + 1, sizeof(size_t));
	if (!g->widen_bytes)
		goto nomem;
	for (int i = 0; i < g->n_nodes; i++) {
		const struct fw_op_i *vt = fw_op_get(g->nodes[i]->op);
		g->widen_bytes[i] = g->opts.backward ? widen_bytes_of(g->nodes[i]) : 0;
		size_t w = g->widen_bytes[i] + (vt->workspace ? vt->workspace(g->nodes[i]) : 0);
		if (w > g->ws_bytes)
			g->ws_bytes = w;
	}
	g->arena = g->arena_bytes ? fw_malloc(g->arena_bytes) : NULL;
	g->ws = g->ws_bytes ? fw_malloc(g->ws_bytes) : NULL;
	if ((g->arena_bytes && !g->arena) || (g->ws_bytes && !g->ws)) {
		fw_errorf(&ctx->err, FW_ERR_NOMEM,
			  "graph: cannot allocate %zu bytes of activations and %zu of workspace",
			  g->arena_bytes, g->ws_bytes);
		goto fail;
	}
	for (int o = 0; o < n_outputs; o++)
		outputs[o]->flags |= FW_FLAG_OUTPUT;
	const char *prof = getenv("FW_OP_PROFILE");
	if (prof && *prof && strcmp(prof, "0")) {
		int n_ops = FW_OP_COUNT;
		for (int i = 0; i < g->n_nodes; i++)
			if (g->nodes[i]->op >= n_ops)
				n_ops = g->nodes[i]->op + 1;
		g->prof = fw_calloc((size_t)n_ops, sizeof(*g->prof));
		g->n_prof = g->prof ? n_ops : 0;
	}
	fw_free(pos);
	fw_free(has_grad);
	return g;
nomem:
	fw_errorf(&ctx->err, FW_ERR_NOMEM, "graph: out of memory");
fail:
	fw_free(pos);
	fw_free(has_grad);
	fw_graph_free(g);
	return NULL;
}

static void profile_print(const struct fw_graph *g)
{
	static const char *pass[3] = { "forward", "recompute", "backward" };
	double total = 0.0;
	for (int op = 0; op < g->n_prof; op++)
		total += g->prof[op].s[0] + g->prof[op].s[1] + g->prof[op].s[2];
	fprintf(stderr, "fw op profile (%d nodes, %.3f s in kernels, %.3f s zeroing gradients;\n"
		"  a backward zeroes %.1f MiB of gradients and overwrites %.1f MiB unzeroed):\n",
		g->n_nodes, total, g->prof_zero, g->zero_bytes / 1048576.0,
		g->overwrite_bytes / 1048576.0);
	fprintf(stderr, "  cleared parameter gradients, all runs: %.4f MiB zeroed, "
		"%.4f MiB overwritten\n", g->param_zeroed / 1048576.0,
		g->param_written / 1048576.0);
	for (int op = 0; op < g->n_prof; op++)
		for (int k = 0; k < 3; k++)
			if (g->prof[op].calls[k])
				fprintf(stderr, "  %-14s %-9s %10.3f s %5.1f%% %8lld calls\n",
					fw_op_get(op)->name, pass[k], g->prof[op].s[k],
					total > 0 ? 100.0 * g->prof[op].s[k] / total : 0.0,
					(long long)g->prof[op].calls[k]);
}

void fw_graph_free(struct fw_graph *g)
{
	if (!g)
		return;
	if (g->prof) {
		profile_print(g);
		fw_free(g->prof);
	}
	if (g->ctx->bound == g)
		g->ctx->bound = NULL;
	fw_free(g->nodes);
	fw_free(g->outputs);
	fw_free(g->params);
	fw_free(g->leaves);
	fw_free(g->steps);
	fw_free(g->slots);
	fw_free(g->val_slot);
	fw_free(g->rec_slot);
	fw_free(g->grad_slot);
	fw_free(g->stash_slot);
	fw_free(g->remat);
	fw_free(g->grad_in_fwd);
	fw_free(g->widen_bytes);
	fw_free(g->kept);
	fw_free(g->grads);
	fw_free(g->zero_order);
	fw_free(g->arena);
	fw_free(g->ws);
	fw_free(g);
}

/* --- execution --------------------------------------------------------------------- */

/* Points every node's data and grad at this graph's buffers. */
static void bind(struct fw_graph *g)
{
	if (g->ctx->bound == g)
		return;
	for (int i = 0; i < g->n_nodes; i++) {
		struct fw_tensor *t = g->nodes[i];
		if (g->kept[i])
			t->data = g->kept[i]->data;
		else if (!is_view(t))
			t->data = g->arena + g->slots[g->val_slot[i]].offset;
		t->grad = g->grads[i];
		if (t->grad) {
			int s = g->grad_slot[i];
			if (s >= 0)
				t->grad->data = g->arena + g->slots[s].offset;
			else   /* reshape or cast of a parameter: share its persistent gradient */
				t->grad->data = t->src[0]->grad->data;
		}
	}
	g->ctx->bound = g;
}

static struct fw_exec exec_of(const struct fw_graph *g)
{
	return (struct fw_exec){
		.ws = g->ws, .ws_size = g->ws_bytes, .step = g->step,
		.training = g->opts.training,
	};
}

/* Where fw_kernel_fail records while this thread runs a graph (NULL
 * otherwise): kernels report from the thread that runs the graph, outside
 * their parallel regions. */
static _Thread_local struct fw_err *kernel_err;
static _Thread_local void *kernel_stash;
static _Thread_local float kernel_dloss = NAN;

float fw_kernel_dloss(void)
{
	return kernel_dloss;
}

void *fw_kernel_stash(void)
{
	return kernel_stash;
}

void fw_kernel_fail(const struct fw_err *e)
{
	FW_ASSERT(kernel_err && "a kernel failed outside a graph run");
	if (kernel_err->status == FW_OK)
		*kernel_err = *e;
}

/* Runs step si's kernel; FW_OK, or the kernel's failure as ctx's error. */
static enum fw_status run_step(struct fw_graph *g, int si, bool backward,
			       const struct fw_exec *ex)
{
	struct fw_tensor *t = g->nodes[g->steps[si].node];
	const struct fw_op_i *vt = fw_op_get(t->op);
	struct fw_err e = { 0 };
	double t0 = g->prof ? omp_get_wtime() : 0.0;
	int stash = g->stash_slot[g->steps[si].node];
	kernel_err = &e;
	kernel_stash = stash >= 0 ? g->arena + g->slots[stash].offset : NULL;
	kernel_dloss = !backward && g->grad_in_fwd[g->steps[si].node] ? g->loss_scale : NAN;
	if (backward)
		vt->backward(t, ex);
	else
		vt->forward(t, ex);
	kernel_err = NULL;
	kernel_stash = NULL;
	kernel_dloss = NAN;
	if (g->prof) {
		int k = backward ? 2 : g->steps[si].kind == STEP_RECOMP ? 1 : 0;
		g->prof[t->op].s[k] += omp_get_wtime() - t0;
		g->prof[t->op].calls[k]++;
	}
	if (e.status == FW_OK)
		return FW_OK;
	return fw_errorf(&g->ctx->err, e.status, "graph: %s of '%s' (%s): %s",
			 backward ? "backward" : "forward", t->name[0] ? t->name : "unnamed",
			 vt->name, e.msg);
}

/* FW_HALF_SHADOW_CHECK=1: the kept half copy t must equal a fresh cast of
 * its parameter; one that does not was written without
 * fw_tensor_mark_written. */
static enum fw_status check_kept(struct fw_graph *g, const struct fw_tensor *t)
{
	size_t bytes = fw_nbytes(t);
	void *fresh = fw_malloc(bytes ? bytes : 1);
	if (!fresh)
		return fw_errorf(&g->ctx->err, FW_ERR_NOMEM, "graph: out of memory");
	fw_convert(fresh, t->dtype, t->src[0]->data, FW_F32, fw_nelem(t));
	bool same = memcmp(fresh, t->data, bytes) == 0;
	fw_free(fresh);
	if (same)
		return FW_OK;
	return fw_errorf(&g->ctx->err, FW_ERR_INTERNAL,
			 "graph: the kept %s copy of '%s' is stale: its data changed without "
			 "fw_tensor_mark_written (FW_HALF_SHADOW_CHECK)", fw_dtype_name(t->dtype),
			 t->src[0]->name);
}

static void grad_fill(struct fw_graph *g, struct fw_tensor *p, int byte)
{
	double t0 = g->prof ? omp_get_wtime() : 0.0;
	memset(p->grad->data, byte, (size_t)fw_nelem(p) * sizeof(float));
	g->param_zeroed += (double)fw_nelem(p) * sizeof(float);
	if (g->prof)
		g->prof_zero += omp_get_wtime() - t0;
}

/* Claims the cleared parameter gradients step si writes: the bits of
 * those it overwrites (fw_exec.grad_overwrite); the others are zeroed now,
 * as it adds into them. */
static uint32_t claim_params(struct fw_graph *g, int si)
{
	const struct step *st = &g->steps[si];
	uint32_t ow = 0;
	for (int k = 0; k < FW_MAX_SRC; k++) {
		struct fw_tensor *p = st->param[k] >= 0 ? g->params[st->param[k]] : NULL;
		if (!p || !(p->flags & FW_FLAG_GRAD_CLEARED))
			continue;
		p->flags &= ~FW_FLAG_GRAD_CLEARED;
		if (st->param_ow & (1u << k)) {
			ow |= 1u << k;
			g->param_written += (double)fw_nelem(p) * sizeof(float);
		} else {
			grad_fill(g, p, 0);
		}
	}
	return ow;
}

void fw_graph_grads_materialize(struct fw_graph *g)
{
	for (int i = 0; i < g->n_params; i++)
		if (g->params[i]->flags & FW_FLAG_GRAD_CLEARED) {
			g->params[i]->flags &= ~FW_FLAG_GRAD_CLEARED;
			grad_fill(g, g->params[i], 0);
		}
}

enum fw_status fw_graph_forward(struct fw_graph *g)
{
	if (g->forward_done && g->any_grad_in_fwd)
		return fw_errorf(&g->ctx->err, FW_ERR_INVALID,
				 "graph: forward again before backward: the loss's forward "
				 "already added its weight's gradient");
	bind(g);
	struct fw_exec ex = exec_of(g);
	g->forward_done = false;
	for (int si = 0; si < g->n_fwd_steps; si++) {
		int i = g->steps[si].node;
		struct fw_tensor *t = g->nodes[i];
		struct fw_kept *k = g->kept[i];
		if (k)
			t->data = k->data;
		else if (!is_view(t))
			t->data = g->arena + g->slots[g->val_slot[i]].offset;
		uint64_t ver = k ? fw_ctx_version(g->ctx, t->src[0]) : 0;
		if (k && k->valid && k->version == ver && k->src == t->src[0]->data) {
			enum fw_status s = g->kept_check ? check_kept(g, t) : FW_OK;
			if (s != FW_OK)
				return s;
			continue;             /* the copy is current: no cast */
		}
		ex.grad_overwrite = g->grad_in_fwd[i] ? claim_params(g, si) : 0;
		enum fw_status s = run_step(g, si, false, &ex);
		if (s != FW_OK)
			return s;
		if (k) {
			k->valid = true;
			k->version = ver;
			k->src = t->src[0]->data;
		}
	}
	g->forward_done = true;
	return FW_OK;
}

/* Backward of an op that knows only f32 gradients, on a node whose own or
 * whose sources' gradients are half: the kernel sees f32 copies in the
 * workspace, and what it added is rounded into the half gradients after. */
static enum fw_status run_backward_widened(struct fw_graph *g, int si, const struct fw_exec *ex)
{
	struct fw_tensor *t = g->nodes[g->steps[si].node];
	struct fw_tensor *y = t->grad, gy, gx[FW_MAX_SRC], *x[FW_MAX_SRC] = { NULL };
	char *p = ex->ws;

	uint32_t ow = ex->grad_overwrite;
	if (is_half(y->dtype)) {
		gy = *y;
		gy.dtype = FW_F32;
		gy.data = p;
		half_widen((float *)p, y->data, y->dtype, fw_nelem(t));
		p += align64((size_t)fw_nelem(t) * sizeof(float));
		t->grad = &gy;
	}
	for (int k = 0; k < FW_MAX_SRC; k++) {
		struct fw_tensor *s = t->src[k];
		if (!s || !s->grad || !is_half(s->grad->dtype))
			continue;       /* a repeated source already points at its copy */
		size_t bytes = (size_t)fw_nelem(s) * sizeof(float);
		x[k] = s->grad;
		gx[k] = *s->grad;
		gx[k].dtype = FW_F32;
		gx[k].data = p;
		if (!(ow & (1u << k)))
			memset(p, 0, bytes);
		else if (g->poison)
			memset(p, 0xff, bytes);
		p += align64(bytes);
		s->grad = &gx[k];
	}
	struct fw_exec e = *ex;
	e.ws = p;
	e.ws_size = ex->ws_size - (size_t)(p - (char *)ex->ws);
	enum fw_status rc = run_step(g, si, true, &e);
	t->grad = y;
	for (int k = 0; k < FW_MAX_SRC; k++) {
		if (!x[k])
			continue;
		if (ow & (1u << k))
			half_store(x[k]->data, x[k]->dtype, gx[k].data, fw_nelem(t->src[k]));
		else
			half_accumulate(x[k]->data, x[k]->dtype, gx[k].data, fw_nelem(t->src[k]));
		t->src[k]->grad = x[k];
	}
	return rc;
}

enum fw_status fw_graph_backward(struct fw_graph *g)
{
	if (!g->opts.backward)
		return fw_errorf(&g->ctx->err, FW_ERR_INVALID,
				 "graph: built without backward");
	if (!g->forward_done)
		return fw_errorf(&g->ctx->err, FW_ERR_INVALID,
				 "graph: backward called before forward");
	bind(g);
	struct fw_exec ex = exec_of(g);
	enum fw_status rc = FW_OK;
	int z = 0;
	struct fw_tensor *loss = g->outputs[0];
	for (int si = g->n_fwd_steps; si < g->n_steps; si++) {
		double t0 = g->prof ? omp_get_wtime() : 0.0;
		while (z < g->n_zero && g->slots[g->zero_order[z]].first <= si) {
			struct slot *s = &g->slots[g->zero_order[z++]];
			/* all-ones bytes are NaN in f32, bf16 and f16 */
			memset(g->arena + s->offset, s->overwritten ? 0xff : 0, s->bytes);
		}
		if (g->prof)
			g->prof_zero += omp_get_wtime() - t0;
		if (si == g->n_fwd_steps && loss->grad)
			half_store(loss->grad->data, loss->grad->dtype, &g->loss_scale, 1);
		struct step *st = &g->steps[si];
		struct fw_tensor *t = g->nodes[st->node];
		if (st->kind != STEP_BWD && !is_view(t))
			t->data = g->arena + g->slots[g->rec_slot[st->node]].offset;
		ex.grad_overwrite = st->kind == STEP_BWD ? st->overwrite | claim_params(g, si) : 0;
		if (st->kind == STEP_BWD && g->widen_bytes[st->node])
			rc = run_backward_widened(g, si, &ex);
		else
			rc = run_step(g, si, st->kind == STEP_BWD, &ex);
		if (rc != FW_OK)
			break;
	}
	fw_graph_grads_materialize(g);   /* those no step wrote */
	/* Leave value pointers at their forward buffers for reading outputs. */
	for (int i = 0; i < g->n_nodes; i++)
		if (g->rec_slot[i] >= 0)
			g->nodes[i]->data = g->arena + g->slots[g->val_slot[i]].offset;
	for (int i = 0; i < g->n_nodes; i++)         /* views of recomputed nodes */
		if (g->remat[i] && is_view(g->nodes[i]))
			fw_op_get(g->nodes[i]->op)->forward(g->nodes[i], &ex);
	g->forward_done = false;
	return rc;
}

void fw_graph_zero_grad(struct fw_graph *g)
{
	for (int i = 0; i < g->n_params; i++) {
		struct fw_tensor *p = g->params[i];
		if (g->zero_all) {
			p->flags &= ~FW_FLAG_GRAD_CLEARED;
			grad_fill(g, p, 0);
			continue;
		}
		p->flags |= FW_FLAG_GRAD_CLEARED;
		if (g->poison)   /* all-ones bytes are NaN */
			memset(p->grad->data, 0xff, (size_t)fw_nelem(p) * sizeof(float));
	}
}

void fw_graph_set_step(struct fw_graph *g, int64_t step)
{
	g->step = step;
}

void fw_graph_set_loss_scale(struct fw_graph *g, float scale)
{
	g->loss_scale = scale;
}

int fw_graph_n_nodes(const struct fw_graph *g)
{
	return g->n_nodes;
}

struct fw_tensor *fw_graph_node(const struct fw_graph *g, int i)
{
	return i >= 0 && i < g->n_nodes ? g->nodes[i] : NULL;
}

int fw_graph_n_params(const struct fw_graph *g)
{
	return g->n_params;
}

struct fw_tensor *fw_graph_param(const struct fw_graph *g, int i)
{
	return i >= 0 && i < g->n_params ? g->params[i] : NULL;
}

void fw_graph_memory(const struct fw_graph *g, struct fw_memory_report *r)
{
	memset(r, 0, sizeof(*r));
	for (int c = 0; c < FW_MEM_CATEGORY_COUNT; c++)
		r->bytes[c] = g->ctx->mem[c];
	r->bytes[FW_MEM_ACTIVATIONS] = g->arena_bytes;
	r->bytes[FW_MEM_WORKSPACE] = g->ws_bytes;
	for (int c = 0; c < FW_MEM_CATEGORY_COUNT; c++)
		r->total += r->bytes[c];
	r->activations_unplanned = g->unplanned_bytes;
	for (int i = 0; i < g->n_leaves; i++) {
		const struct fw_tensor *t = g->leaves[i];
		if (!(t->flags & FW_FLAG_PARAM))
			continue;
		r->n_params += fw_nelem(t);
		if (t->flags & FW_FLAG_TRAINABLE)
			r->n_trainable += fw_nelem(t);
	}
	for (int s = 0; s < g->n_slots; s++)
		if (g->slots[s].first >= 0)
			r->n_buffers++;
}

void fw_memory_report_print(const struct fw_memory_report *r, void *file)
{
	FILE *f = file;
	for (int c = 0; c < FW_MEM_CATEGORY_COUNT; c++)
		fprintf(f, "  %-12s %12.2f MiB\n", fw_mem_category_name(c),
			r->bytes[c] / 1048576.0);
	fprintf(f, "  %-12s %12.2f MiB (activations without reuse: %.2f MiB)\n", "total",
		r->total / 1048576.0, r->activations_unplanned / 1048576.0);
}

/* --- threads ---------------------------------------------------------------------- */

void fw_set_num_threads(int n)
{
	if (n > 0)
		omp_set_num_threads(n);
}

int fw_get_num_threads(void)
{
	return omp_get_max_threads();
}

void fw_parallel_for(int64_t n, fw_range_fn fn, void *arg)
{
	if (n <= 0)
		return;
	#pragma omp parallel
	{
		int nt = omp_get_num_threads(), it = omp_get_thread_num();
		int64_t chunk = (n + nt - 1) / nt;
		int64_t b = it * chunk, e = b + chunk < n ? b + chunk : n;
		if (b < e)
			fn(arg, b, e);
	}
}
