/* test_graph.c - the graph engine: frozen parameters, gradient accumulation,
 * recomputation, the memory report and planner, views in backward, and
 * constructor errors. Expected values come from host arithmetic (views,
 * matmul of a reshaped weight) or from comparing two runs of fw with each
 * other (recompute vs not, accumulated vs single), never from stored fw
 * output.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

/* --- a stack of pre-norm MLP blocks ------------------------------------------------ */

enum { ROWS = 32, C = 32, H = 128 };

struct model {
	struct fw_ctx *ctx;
	struct fw_tensor *x, *loss, *out;
	struct fw_tensor *params[64];
	int n_params;
};

static struct fw_tensor *param(struct model *m, const char *fmt, int b, int ndim,
			       const int64_t *shape, enum fw_init init, float v)
{
	char name[64];
	snprintf(name, sizeof(name), fmt, b);
	struct fw_tensor *p = fw_param(m->ctx, name, FW_F32, ndim, shape, true);
	ck_assert_msg(p != NULL, "%s", fw_ctx_err(m->ctx)->msg);
	fw_param_set_init(p, init, v);
	m->params[m->n_params++] = p;
	return p;
}

/* h = h + dropout(W2 gelu(W1 layernorm(h) + b1) + b2) per block;
 * loss = mean(h * h). With ckpt, each block is one recompute segment; with
 * drop = 0 there is no dropout node. */
static void model_build_drop(struct model *m, int n_blocks, bool ckpt, float drop)
{
	memset(m, 0, sizeof(*m));
	m->ctx = fw_ctx_new();
	struct fw_ctx *ctx = m->ctx;
	m->x = fw_input(ctx, "x", FW_F32, 2, (int64_t[]){ ROWS, C });
	struct fw_tensor *h = m->x;
	for (int b = 0; b < n_blocks; b++) {
		struct fw_tensor *g = param(m, "b%d.ln.w", b, 1, (int64_t[]){ C }, FW_INIT_CONST, 1);
		struct fw_tensor *be = param(m, "b%d.ln.b", b, 1, (int64_t[]){ C }, FW_INIT_NORMAL, 0.1f);
		struct fw_tensor *w1 = param(m, "b%d.w1", b, 2, (int64_t[]){ H, C }, FW_INIT_NORMAL, 0.2f);
		struct fw_tensor *b1 = param(m, "b%d.b1", b, 1, (int64_t[]){ H }, FW_INIT_NORMAL, 0.1f);
		struct fw_tensor *w2 = param(m, "b%d.w2", b, 2, (int64_t[]){ C, H }, FW_INIT_NORMAL, 0.1f);
		struct fw_tensor *b2 = param(m, "b%d.b2", b, 1, (int64_t[]){ C }, FW_INIT_NORMAL, 0.1f);
		if (ckpt)
			fw_ctx_checkpoint_begin(ctx);
		struct fw_tensor *u = fw_layernorm(ctx, h, g, be, 1e-5f);
		u = fw_gelu(ctx, fw_linear(ctx, u, w1, b1), FW_GELU_TANH);
		u = fw_linear(ctx, u, w2, b2);
		if (drop > 0)
			u = fw_dropout(ctx, u, drop, 77);
		h = fw_add(ctx, h, u);
		if (ckpt)
			fw_ctx_checkpoint_end(ctx);
	}
	m->out = h;
	m->loss = fw_mean(ctx, fw_mul(ctx, h, h), FW_AXIS_ALL, false);
	ck_assert_msg(m->loss != NULL, "model: %s", fw_ctx_err(ctx)->msg);
}

static void model_build(struct model *m, int n_blocks, bool ckpt)
{
	model_build_drop(m, n_blocks, ckpt, 0);
}

static struct fw_graph *model_graph(struct model *m, bool backward, bool recompute)
{
	struct fw_tensor *outs[2] = { m->loss, m->out };
	struct fw_graph *g = fw_graph_new(m->ctx, outs, 2, &(struct fw_graph_opts){
		.backward = backward, .training = true, .recompute = recompute });
	ck_assert_msg(g != NULL, "graph: %s", fw_ctx_err(m->ctx)->msg);
	return g;
}

static void model_init(struct model *m)
{
	ck_assert_int_eq(fw_ctx_init_params(m->ctx, 2024), FW_OK);
	struct fwt_rng r = fwt_rng_new(1);
	fwt_fill_uniform(fw_f32(m->x), ROWS * C, &r, -1, 1);
}

/* All trainable gradients, concatenated. */
static float *grads_copy(struct model *m)
{
	int64_t n = 0;
	for (int i = 0; i < m->n_params; i++)
		n += fw_nelem(m->params[i]);
	float *g = malloc((size_t)n * sizeof(float)), *p = g;
	for (int i = 0; i < m->n_params; i++) {
		ck_assert_ptr_nonnull(m->params[i]->grad);
		memcpy(p, m->params[i]->grad->data, fw_nbytes(m->params[i]));
		p += fw_nelem(m->params[i]);
	}
	return g;
}

static int64_t grads_n(struct model *m)
{
	int64_t n = 0;
	for (int i = 0; i < m->n_params; i++)
		n += fw_nelem(m->params[i]);
	return n;
}

static void model_free(struct model *m)
{
	fw_ctx_free(m->ctx);
}

/* --- frozen parameters --------------------------------------------------------------- */

/* loss = mean(W2 relu(W1 x + b1)^2); W2 trainable or frozen */
static struct fw_tensor *two_layer(struct fw_ctx *ctx, bool w2_trainable,
				   struct fw_tensor **w1, struct fw_tensor **w2,
				   struct fw_tensor **x)
{
	*x = fw_input(ctx, "x", FW_F32, 2, (int64_t[]){ 8, 16 });
	*w1 = fw_param(ctx, "w1", FW_F32, 2, (int64_t[]){ 32, 16 }, true);
	struct fw_tensor *b1 = fw_param(ctx, "b1", FW_F32, 1, (int64_t[]){ 32 }, true);
	*w2 = fw_param(ctx, "w2", FW_F32, 2, (int64_t[]){ 16, 32 }, w2_trainable);
	fw_param_set_init(*w1, FW_INIT_NORMAL, 0.3f);
	fw_param_set_init(b1, FW_INIT_NORMAL, 0.3f);
	fw_param_set_init(*w2, FW_INIT_NORMAL, 0.3f);
	struct fw_tensor *h = fw_relu(ctx, fw_linear(ctx, *x, *w1, b1));
	struct fw_tensor *y = fw_linear(ctx, h, *w2, NULL);
	return fw_mean(ctx, fw_mul(ctx, y, y), FW_AXIS_ALL, false);
}

START_TEST(test_frozen)
{
	struct fw_tensor *w1[2], *w2[2], *x[2];
	struct fw_ctx *ctx[2];
	struct fw_graph *g[2];
	for (int k = 0; k < 2; k++) {
		ctx[k] = fw_ctx_new();
		struct fw_tensor *loss = two_layer(ctx[k], k == 1, &w1[k], &w2[k], &x[k]);
		ck_assert_msg(loss != NULL, "%s", fw_ctx_err(ctx[k])->msg);
		g[k] = fw_graph_new(ctx[k], &loss, 1, &(struct fw_graph_opts){
			.backward = true, .training = true });
		ck_assert_msg(g[k] != NULL, "%s", fw_ctx_err(ctx[k])->msg);
		/* the init RNG is keyed by name: both models get the same values */
		ck_assert_int_eq(fw_ctx_init_params(ctx[k], 9), FW_OK);
		struct fwt_rng r = fwt_rng_new(4);
		fwt_fill_uniform(fw_f32(x[k]), 8 * 16, &r, -1, 1);
		ck_assert_int_eq(fw_graph_forward(g[k]), FW_OK);
		ck_assert_int_eq(fw_graph_backward(g[k]), FW_OK);
	}
	/* k = 0: w2 frozen */
	ck_assert_msg(w2[0]->grad == NULL, "a frozen parameter got a gradient");
	ck_assert_int_eq(fw_graph_n_params(g[0]), 2);
	ck_assert_int_eq(fw_graph_n_params(g[1]), 3);
	for (int i = 0; i < fw_graph_n_params(g[0]); i++)
		ck_assert_ptr_ne(fw_graph_param(g[0], i), w2[0]);
	ck_assert_ptr_nonnull(w1[0]->grad);
	ck_assert_ptr_nonnull(w2[1]->grad);
	double gmax = fwt_maxabs(fw_f32(w1[0]->grad), 32 * 16);
	ck_assert_msg(gmax > 1e-4, "w1's gradient is zero with w2 frozen");
	/* freezing w2 does not change w1's gradient */
	ck_assert_int_eq(fwt_allclose("w1 grad, w2 frozen vs trainable", fw_f32(w1[0]->grad),
				      fw_f32(w1[1]->grad), 32 * 16, 1e-6, 1e-7 * gmax), 0);
	struct fw_memory_report r0, r1;
	fw_graph_memory(g[0], &r0);
	fw_graph_memory(g[1], &r1);
	ck_assert_uint_eq(r0.bytes[FW_MEM_GRADIENTS], (32 * 16 + 32) * 4);
	ck_assert_uint_eq(r1.bytes[FW_MEM_GRADIENTS], (32 * 16 + 32 + 16 * 32) * 4);
	for (int k = 0; k < 2; k++) {
		fw_graph_free(g[k]);
		fw_ctx_free(ctx[k]);
	}
}
END_TEST

/* --- two models on two threads ------------------------------------------------------ */

struct model_thread {
	struct fw_graph *g;
	struct fw_tensor *loss;
	float want;                 /* the loss computed alone */
	int bad;                    /* runs that failed or differed */
};

static void *run_model(void *arg)
{
	struct model_thread *m = arg;
	for (int i = 0; i < 200; i++) {
		if (fw_graph_forward(m->g) != FW_OK || fw_graph_backward(m->g) != FW_OK ||
		    fabsf(fw_f32(m->loss)[0] - m->want) > 1e-6f * fabsf(m->want))
			m->bad++;
	}
	return NULL;
}

/* Graphs of two contexts, run from two threads at once, compute what each
 * computes alone: the matmuls of both share the primitive cache (the same
 * shapes: the same entries), which a lock guards (fw/graph.h). */
START_TEST(test_two_threads)
{
	struct fw_ctx *ctx[2];
	struct model_thread m[2];
	pthread_t th[2];
	for (int k = 0; k < 2; k++) {
		struct fw_tensor *w1, *w2, *x;
		ctx[k] = fw_ctx_new();
		m[k] = (struct model_thread){ .loss = two_layer(ctx[k], true, &w1, &w2, &x) };
		ck_assert_msg(m[k].loss != NULL, "%s", fw_ctx_err(ctx[k])->msg);
		m[k].g = fw_graph_new(ctx[k], &m[k].loss, 1, &(struct fw_graph_opts){
			.backward = true, .training = true });
		ck_assert_msg(m[k].g != NULL, "%s", fw_ctx_err(ctx[k])->msg);
		ck_assert_int_eq(fw_ctx_init_params(ctx[k], 9 + (uint64_t)k), FW_OK);
		struct fwt_rng r = fwt_rng_new(4 + (uint64_t)k);
		fwt_fill_uniform(fw_f32(x), 8 * 16, &r, -1, 1);
		ck_assert_int_eq(fw_graph_forward(m[k].g), FW_OK);
		m[k].want = fw_f32(m[k].loss)[0];
	}
	ck_assert_msg(m[0].want != m[1].want, "the two models compute the same loss");
	for (int k = 0; k < 2; k++)
		ck_assert_int_eq(pthread_create(&th[k], NULL, run_model, &m[k]), 0);
	for (int k = 0; k < 2; k++)
		ck_assert_int_eq(pthread_join(th[k], NULL), 0);
	for (int k = 0; k < 2; k++) {
		ck_assert_msg(m[k].bad == 0, "model %d: %d of 200 runs failed or differed", k,
			      m[k].bad);
		fw_graph_free(m[k].g);
		fw_ctx_free(ctx[k]);
	}
}
END_TEST

/* --- gradient accumulation and loss scale ------------------------------------------- */

START_TEST(test_accumulate)
{
	struct model m;
	model_build(&m, 2, false);
	struct fw_graph *g = model_graph(&m, true, false);
	model_init(&m);
	int64_t n = grads_n(&m);

	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	ck_assert_int_eq(fw_graph_backward(g), FW_OK);
	float *g1 = grads_copy(&m);
	ck_assert_msg(fwt_maxabs(g1, n) > 0, "all gradients are zero");

	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	ck_assert_int_eq(fw_graph_backward(g), FW_OK);
	float *g2 = grads_copy(&m), *two = malloc((size_t)n * sizeof(float));
	for (int64_t i = 0; i < n; i++)
		two[i] = 2 * g1[i];
	ck_assert_int_eq(fwt_allclose("two backward passes", g2, two, n, 1e-6, 0), 0);

	fw_graph_zero_grad(g);
	fw_graph_grads_materialize(g);   /* zero_grad itself leaves them stale */
	float *z = grads_copy(&m);
	ck_assert_msg(fwt_maxabs(z, n) == 0, "zero_grad left a nonzero gradient");
	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	ck_assert_int_eq(fw_graph_backward(g), FW_OK);
	float *g3 = grads_copy(&m);
	ck_assert_msg(memcmp(g1, g3, (size_t)n * 4) == 0, "after zero_grad: another gradient");

	/* a loss scale multiplies every gradient (4 is exact in binary) */
	fw_graph_zero_grad(g);
	fw_graph_set_loss_scale(g, 4.0f);
	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	ck_assert_int_eq(fw_graph_backward(g), FW_OK);
	float *g4 = grads_copy(&m);
	for (int64_t i = 0; i < n; i++)
		two[i] = 4 * g1[i];
	ck_assert_int_eq(fwt_allclose("loss scale 4", g4, two, n, 1e-6, 0), 0);

	free(g1);
	free(g2);
	free(g3);
	free(g4);
	free(z);
	free(two);
	fw_graph_free(g);
	model_free(&m);
}
END_TEST

/* --- recomputation ------------------------------------------------------------------- */

START_TEST(test_recompute)
{
	/* dropout inside the segments: a recomputed forward must redraw the
	 * same mask, or the gradients would differ */
	struct model m;
	model_build_drop(&m, 8, true, 0.2f);
	struct fw_graph *g0 = model_graph(&m, true, false);
	struct fw_graph *g1 = model_graph(&m, true, true);
	model_init(&m);
	int64_t n = grads_n(&m);

	int n_drop = 0;
	for (int i = 0; i < fw_graph_n_nodes(g1); i++)
		n_drop += fw_graph_node(g1, i)->op == FW_OP_DROPOUT;
	ck_assert_int_eq(n_drop, 8);
	fw_graph_set_step(g0, 5);
	fw_graph_set_step(g1, 5);
	ck_assert_int_eq(fw_graph_forward(g0), FW_OK);
	ck_assert_int_eq(fw_graph_backward(g0), FW_OK);
	float l0 = fw_f32(m.loss)[0], *gr0 = grads_copy(&m);
	float *o0 = malloc(ROWS * C * sizeof(float));
	fwt_read_f32(m.out, o0);
	fw_graph_zero_grad(g0);

	ck_assert_int_eq(fw_graph_forward(g1), FW_OK);
	ck_assert_int_eq(fw_graph_backward(g1), FW_OK);
	float l1 = fw_f32(m.loss)[0], *gr1 = grads_copy(&m);
	float *o1 = malloc(ROWS * C * sizeof(float));
	fwt_read_f32(m.out, o1);

	ck_assert_msg(memcmp(&l0, &l1, 4) == 0, "loss %.9g vs %.9g with recompute",
		      (double)l0, (double)l1);
	ck_assert_msg(memcmp(o0, o1, ROWS * C * 4) == 0, "outputs differ with recompute");
	int64_t diff = 0;
	for (int64_t i = 0; i < n; i++)
		diff += memcmp(&gr0[i], &gr1[i], 4) != 0;
	if (diff)
		fwt_allclose("recompute grads", gr1, gr0, n, 0, 0);
	ck_assert_msg(diff == 0, "%lld of %lld gradients differ with recompute", (long long)diff,
		      (long long)n);

	struct fw_memory_report r0, r1;
	fw_graph_memory(g0, &r0);
	fw_graph_memory(g1, &r1);
	fprintf(stderr, "recompute: activations %zu bytes without, %zu with\n",
		r0.bytes[FW_MEM_ACTIVATIONS], r1.bytes[FW_MEM_ACTIVATIONS]);
	ck_assert_msg(r1.bytes[FW_MEM_ACTIVATIONS] < r0.bytes[FW_MEM_ACTIVATIONS],
		      "recompute does not save memory: %zu vs %zu bytes",
		      r1.bytes[FW_MEM_ACTIVATIONS], r0.bytes[FW_MEM_ACTIVATIONS]);

	/* running the plain graph again after the recompute one still agrees */
	fw_graph_zero_grad(g1);
	ck_assert_int_eq(fw_graph_forward(g0), FW_OK);
	ck_assert_int_eq(fw_graph_backward(g0), FW_OK);
	float *gr2 = grads_copy(&m);
	ck_assert_msg(memcmp(gr0, gr2, (size_t)n * 4) == 0, "switching graphs changed gradients");

	free(gr0);
	free(gr1);
	free(gr2);
	free(o0);
	free(o1);
	fw_graph_free(g0);
	fw_graph_free(g1);
	model_free(&m);
}
END_TEST

/* --- memory report and planner ---------------------------------------------------------- */

START_TEST(test_memory_report)
{
	/* sizes are multiples of 16 floats (64 bytes), so alignment adds nothing */
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *x = fw_input(ctx, "x", FW_F32, 2, (int64_t[]){ 8, 32 });
	struct fw_tensor *w1 = fw_param(ctx, "w1", FW_F32, 2, (int64_t[]){ 64, 32 }, true);
	struct fw_tensor *b1 = fw_param(ctx, "b1", FW_F32, 1, (int64_t[]){ 64 }, true);
	struct fw_tensor *w2 = fw_param(ctx, "w2", FW_F32, 2, (int64_t[]){ 32, 64 }, false);
	struct fw_tensor *e = fw_param(ctx, "emb", FW_BF16, 2, (int64_t[]){ 16, 32 }, false);
	struct fw_tensor *h = fw_gelu(ctx, fw_linear(ctx, x, w1, b1), FW_GELU_ERF);
	struct fw_tensor *y = fw_linear(ctx, h, w2, NULL);
	/* the frozen bf16 table joins through a cast */
	struct fw_tensor *ef = fw_cast(ctx, e, FW_F32);
	struct fw_tensor *z = fw_add(ctx, y, fw_slice(ctx, ef, 0, 0, 8));
	struct fw_tensor *loss = fw_sum(ctx, fw_mul(ctx, z, z), FW_AXIS_ALL, false);
	ck_assert_msg(loss != NULL, "%s", fw_ctx_err(ctx)->msg);
	struct fw_graph *g = fw_graph_new(ctx, &loss, 1, &(struct fw_graph_opts){
		.backward = true, .training = true });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);

	struct fw_memory_report r;
	fw_graph_memory(g, &r);
	size_t weights = fw_nbytes(w1) + fw_nbytes(b1) + fw_nbytes(w2) + fw_nbytes(e);
	size_t grads = fw_nbytes(w1) + fw_nbytes(b1);
	ck_assert_uint_eq(fw_nbytes(e), 16 * 32 * 2);
	ck_assert_uint_eq(r.bytes[FW_MEM_WEIGHTS], weights);
	ck_assert_uint_eq(r.bytes[FW_MEM_GRADIENTS], grads);
	ck_assert_uint_eq(r.bytes[FW_MEM_INPUTS], fw_nbytes(x));
	ck_assert_uint_eq(r.bytes[FW_MEM_OPTIMIZER], 0);
	ck_assert_int_eq(r.n_params, 64 * 32 + 64 + 32 * 64 + 16 * 32);
	ck_assert_int_eq(r.n_trainable, 64 * 32 + 64);
	size_t sum = 0;
	for (int c = 0; c < FW_MEM_CATEGORY_COUNT; c++)
		sum += r.bytes[c];
	ck_assert_uint_eq(r.total, sum);
	ck_assert_uint_le(r.bytes[FW_MEM_ACTIVATIONS], r.activations_unplanned);
	ck_assert_int_gt(r.n_buffers, 0);
	/* optimizer state is counted where it is allocated */
	ck_assert_ptr_nonnull(fw_ctx_alloc(ctx, 4096, FW_MEM_OPTIMIZER));
	fw_graph_memory(g, &r);
	ck_assert_uint_eq(r.bytes[FW_MEM_OPTIMIZER], 4096);
	fw_graph_free(g);
	fw_ctx_free(ctx);
}
END_TEST

START_TEST(test_planner_reuse)
{
	struct model m;
	model_build(&m, 8, false);
	struct fw_graph *gb = model_graph(&m, true, false);
	struct fw_graph *gf = model_graph(&m, false, false);
	model_init(&m);
	struct fw_memory_report rb, rf;
	fw_graph_memory(gb, &rb);
	fw_graph_memory(gf, &rf);
	fprintf(stderr, "planner: backward graph %zu of %zu bytes, forward-only %zu of %zu\n",
		rb.bytes[FW_MEM_ACTIVATIONS], rb.activations_unplanned,
		rf.bytes[FW_MEM_ACTIVATIONS], rf.activations_unplanned);
	ck_assert_uint_lt(rb.bytes[FW_MEM_ACTIVATIONS], rb.activations_unplanned);
	/* forward only: a block's buffers die within the next block, so 8 blocks
	 * need far less than the sum of all buffers */
	ck_assert_uint_lt(rf.bytes[FW_MEM_ACTIVATIONS], rf.activations_unplanned / 4);
	ck_assert_uint_lt(rf.bytes[FW_MEM_ACTIVATIONS], rb.bytes[FW_MEM_ACTIVATIONS]);

	/* the forward-only graph computes what the training graph computes */
	ck_assert_int_eq(fw_graph_forward(gb), FW_OK);
	float lb = fw_f32(m.loss)[0];
	ck_assert_int_eq(fw_graph_forward(gf), FW_OK);
	float lf = fw_f32(m.loss)[0];
	ck_assert_msg(lb == lf, "loss %.9g in the training graph, %.9g forward-only",
		      (double)lb, (double)lf);
	/* and backward on a forward-only graph is refused */
	ck_assert_int_ne(fw_graph_backward(gf), FW_OK);
	fw_graph_free(gb);
	fw_graph_free(gf);
	model_free(&m);
}
END_TEST

/* --- views in backward ------------------------------------------------------------------ */

static struct fw_graph *loss_graph(struct fw_ctx *ctx, struct fw_tensor *loss,
				   struct fw_tensor *keep)
{
	struct fw_tensor *outs[2] = { loss, keep };
	ck_assert_msg(loss != NULL, "%s", fw_ctx_err(ctx)->msg);
	struct fw_graph *g = fw_graph_new(ctx, outs, keep ? 2 : 1, &(struct fw_graph_opts){
		.backward = true, .training = true });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	return g;
}

START_TEST(test_views_chain)
{
	/* x (2,3,4) -> reshape (4,6) -> transpose (6,4) -> slice rows 1..3 -> (3,4):
	 * out[i][j] = x_flat[j * 6 + 1 + i] */
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *x = fw_param(ctx, "x", FW_F32, 3, (int64_t[]){ 2, 3, 4 }, true);
	struct fw_tensor *v = fw_reshape(ctx, x, 2, (int64_t[]){ 4, 6 });
	v = fw_slice(ctx, fw_transpose(ctx, v, 0, 1), 0, 1, 3);
	struct fw_tensor *r = fw_input(ctx, "R", FW_F32, 2, (int64_t[]){ 3, 4 });
	struct fw_tensor *loss = fw_sum(ctx, fw_mul(ctx, v, r), FW_AXIS_ALL, false);
	struct fw_graph *g = loss_graph(ctx, loss, v);
	float rv[12], want[24] = { 0 }, out[12];
	struct fwt_rng rng = fwt_rng_new(8);
	fwt_fill_uniform(rv, 12, &rng, -1, 1);
	fwt_write(r, rv);
	for (int i = 0; i < 24; i++)
		fw_f32(x)[i] = (float)i;
	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	ck_assert_int_eq(fw_graph_backward(g), FW_OK);
	ck_assert_int_eq(v->ne[0], 3);
	ck_assert_int_eq(v->ne[1], 4);
	fwt_read_f32(v, out);
	for (int i = 0; i < 3; i++)
		for (int j = 0; j < 4; j++) {
			ck_assert_msg(out[i * 4 + j] == (float)(j * 6 + 1 + i),
				      "view[%d][%d] = %g, expected x[%d]", i, j,
				      (double)out[i * 4 + j], j * 6 + 1 + i);
			want[j * 6 + 1 + i] = rv[i * 4 + j];
		}
	ck_assert_int_eq(fwt_allclose("grad through reshape/transpose/slice", fw_f32(x->grad),
				      want, 24, 0, 0), 0);
	fw_graph_free(g);
	fw_ctx_free(ctx);
}
END_TEST

START_TEST(test_views_overlap)
{
	/* two overlapping column slices of x (4,6) and a permuted copy: all
	 * three gradients add into x */
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *x = fw_param(ctx, "x", FW_F32, 2, (int64_t[]){ 4, 6 }, true);
	struct fw_tensor *r1 = fw_input(ctx, "R1", FW_F32, 2, (int64_t[]){ 4, 4 });
	struct fw_tensor *r2 = fw_input(ctx, "R2", FW_F32, 2, (int64_t[]){ 4, 4 });
	struct fw_tensor *r3 = fw_input(ctx, "R3", FW_F32, 2, (int64_t[]){ 6, 4 });
	struct fw_tensor *a = fw_mul(ctx, fw_slice(ctx, x, 1, 0, 4), r1);
	struct fw_tensor *b = fw_mul(ctx, fw_slice(ctx, x, 1, 2, 4), r2);
	struct fw_tensor *c = fw_mul(ctx, fw_cont(ctx, fw_permute(ctx, x, (int[]){ 1, 0 })), r3);
	struct fw_tensor *loss = fw_add(ctx, fw_add(ctx, fw_sum(ctx, a, FW_AXIS_ALL, false),
						    fw_sum(ctx, b, FW_AXIS_ALL, false)),
					fw_sum(ctx, c, FW_AXIS_ALL, false));
	struct fw_graph *g = loss_graph(ctx, loss, NULL);
	float v1[16], v2[16], v3[24], want[24];
	struct fwt_rng rng = fwt_rng_new(9);
	fwt_fill_uniform(v1, 16, &rng, -1, 1);
	fwt_fill_uniform(v2, 16, &rng, -1, 1);
	fwt_fill_uniform(v3, 24, &rng, -1, 1);
	fwt_write(r1, v1);
	fwt_write(r2, v2);
	fwt_write(r3, v3);
	fwt_fill_uniform(fw_f32(x), 24, &rng, -1, 1);
	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	ck_assert_int_eq(fw_graph_backward(g), FW_OK);
	for (int i = 0; i < 4; i++)
		for (int j = 0; j < 6; j++) {
			double w = v3[j * 4 + i];
			if (j < 4)
				w += v1[i * 4 + j];
			if (j >= 2)
				w += v2[i * 4 + j - 2];
			want[i * 6 + j] = (float)w;
		}
	ck_assert_int_eq(fwt_allclose("grad of overlapping views", fw_f32(x->grad), want, 24,
				      1e-6, 1e-7), 0);
	fw_graph_free(g);
	fw_ctx_free(ctx);
}
END_TEST

/* Gradient slots the graph must still zero although their first writer
 * can overwrite (FW_OPF_GRAD_OVERWRITE): one node twice among an op's
 * sources (add(h, h), h h^T), and a slice's source (written in part).
 * x (4, 6), h_k = 2 x; loss = sum((h1 + h1) R1) + sum(h2[:, 0:4] R2)
 * + sum(h3 h3^T R3), so dx = 4 R1 + 2 [R2, 0] + 2 (R3 + R3^T) h3. */
START_TEST(test_grad_shared_slots)
{
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *x = fw_param(ctx, "x", FW_F32, 2, (int64_t[]){ 4, 6 }, true);
	struct fw_tensor *r1 = fw_input(ctx, "R1", FW_F32, 2, (int64_t[]){ 4, 6 });
	struct fw_tensor *r2 = fw_input(ctx, "R2", FW_F32, 2, (int64_t[]){ 4, 4 });
	struct fw_tensor *r3 = fw_input(ctx, "R3", FW_F32, 2, (int64_t[]){ 4, 4 });
	struct fw_tensor *h1 = fw_scale(ctx, x, 2.0f), *h2 = fw_scale(ctx, x, 2.0f);
	struct fw_tensor *h3 = fw_scale(ctx, x, 2.0f);
	struct fw_tensor *a = fw_mul(ctx, fw_add(ctx, h1, h1), r1);
	struct fw_tensor *b = fw_mul(ctx, fw_slice(ctx, h2, 1, 0, 4), r2);
	struct fw_tensor *c = fw_mul(ctx, fw_matmul(ctx, h3, h3, false, true), r3);
	struct fw_tensor *loss = fw_add(ctx, fw_add(ctx, fw_sum(ctx, a, FW_AXIS_ALL, false),
						    fw_sum(ctx, b, FW_AXIS_ALL, false)),
					fw_sum(ctx, c, FW_AXIS_ALL, false));
	struct fw_graph *g = loss_graph(ctx, loss, NULL);
	float v1[24], v2[16], v3[16], xv[24], want[24];
	struct fwt_rng rng = fwt_rng_new(11);
	fwt_fill_uniform(v1, 24, &rng, -1, 1);
	fwt_fill_uniform(v2, 16, &rng, -1, 1);
	fwt_fill_uniform(v3, 16, &rng, -1, 1);
	fwt_fill_uniform(xv, 24, &rng, -1, 1);
	fwt_write(r1, v1);
	fwt_write(r2, v2);
	fwt_write(r3, v3);
	fwt_write(x, xv);
	for (int rep = 0; rep < 2; rep++) {     /* a second pass reuses the arena */
		fw_graph_zero_grad(g);
		ck_assert_int_eq(fw_graph_forward(g), FW_OK);
		ck_assert_int_eq(fw_graph_backward(g), FW_OK);
		for (int i = 0; i < 4; i++)
			for (int j = 0; j < 6; j++) {
				double w = 4.0 * v1[i * 6 + j] + (j < 4 ? 2.0 * v2[i * 4 + j] : 0.0);
				for (int k = 0; k < 4; k++)
					w += 2.0 * (v3[i * 4 + k] + v3[k * 4 + i]) * 2.0 * xv[k * 6 + j];
				want[i * 6 + j] = (float)w;
			}
		ck_assert_int_eq(fwt_allclose("grad through shared gradient slots",
					      fw_f32(x->grad), want, 24, 1e-5, 1e-6), 0);
	}
	fw_graph_free(g);
	fw_ctx_free(ctx);
}
END_TEST

START_TEST(test_views_reshaped_param)
{
	/* a flat parameter reshaped into a matmul weight: y = x (2,3) @ W (3,4),
	 * W = reshape(w (12)); d sum(y * R) / dW = x^T R */
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *x = fw_param(ctx, "x", FW_F32, 2, (int64_t[]){ 2, 3 }, true);
	struct fw_tensor *w = fw_param(ctx, "w", FW_F32, 1, (int64_t[]){ 12 }, true);
	struct fw_tensor *r = fw_input(ctx, "R", FW_F32, 2, (int64_t[]){ 2, 4 });
	struct fw_tensor *wm = fw_reshape(ctx, w, 2, (int64_t[]){ 3, -1 });
	struct fw_tensor *y = fw_matmul(ctx, x, wm, false, false);
	struct fw_tensor *loss = fw_sum(ctx, fw_mul(ctx, y, r), FW_AXIS_ALL, false);
	struct fw_graph *g = loss_graph(ctx, loss, y);
	float xv[6], wv[12], rv[8], out[8], want_y[8], want_w[12], want_x[6];
	struct fwt_rng rng = fwt_rng_new(10);
	fwt_fill_uniform(xv, 6, &rng, -1, 1);
	fwt_fill_uniform(wv, 12, &rng, -1, 1);
	fwt_fill_uniform(rv, 8, &rng, -1, 1);
	fwt_write(x, xv);
	fwt_write(w, wv);
	fwt_write(r, rv);
	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	ck_assert_int_eq(fw_graph_backward(g), FW_OK);
	for (int i = 0; i < 2; i++)
		for (int j = 0; j < 4; j++) {
			double s = 0;
			for (int k = 0; k < 3; k++)
				s += (double)xv[i * 3 + k] * wv[k * 4 + j];
			want_y[i * 4 + j] = (float)s;
		}
	for (int k = 0; k < 3; k++)
		for (int j = 0; j < 4; j++) {
			double s = 0;
			for (int i = 0; i < 2; i++)
				s += (double)xv[i * 3 + k] * rv[i * 4 + j];
			want_w[k * 4 + j] = (float)s;
		}
	for (int i = 0; i < 2; i++)
		for (int k = 0; k < 3; k++) {
			double s = 0;
			for (int j = 0; j < 4; j++)
				s += (double)rv[i * 4 + j] * wv[k * 4 + j];
			want_x[i * 3 + k] = (float)s;
		}
	fwt_read_f32(y, out);
	ck_assert_int_eq(fwt_allclose("y", out, want_y, 8, 1e-6, 1e-6), 0);
	ck_assert_int_eq(fwt_allclose("grad w (reshaped)", fw_f32(w->grad), want_w, 12, 1e-6, 1e-6), 0);
	ck_assert_int_eq(fwt_allclose("grad x", fw_f32(x->grad), want_x, 6, 1e-6, 1e-6), 0);
	fw_graph_free(g);
	fw_ctx_free(ctx);
}
END_TEST

/* Under autocast a half node's gradient is half (torch's autograd keeps a
 * bf16 tensor's gradient in bf16); the f32 residual-like output keeps an
 * f32 one, and the weight's bf16 copy passes its gradient straight into the
 * fp32 parameter's buffer (no gradient buffer of its own). */
START_TEST(test_autocast_gradient_dtypes)
{
	struct fw_ctx *ctx = fw_ctx_new();
	ck_assert_int_eq(fw_ctx_set_autocast(ctx, FW_BF16), FW_OK);
	struct fw_tensor *x = fw_param(ctx, "x", FW_F32, 2, (int64_t[]){ 4, 8 }, true);
	struct fw_tensor *w = fw_param(ctx, "w", FW_F32, 2, (int64_t[]){ 6, 8 }, true);
	struct fw_tensor *r = fw_input(ctx, "R", FW_F32, 2, (int64_t[]){ 4, 6 });
	struct fw_tensor *h = fw_linear(ctx, x, w, NULL);
	struct fw_tensor *a = fw_gelu(ctx, h, FW_GELU_TANH);
	struct fw_tensor *y = fw_mul(ctx, a, r);          /* bf16 * f32: f32 */
	struct fw_tensor *loss = fw_sum(ctx, y, FW_AXIS_ALL, false);
	struct fw_graph *g = loss_graph(ctx, loss, NULL);
	float xv[32], wv[48], rv[24];
	struct fwt_rng rng = fwt_rng_new(12);
	fwt_fill_uniform(xv, 32, &rng, -1, 1);
	fwt_fill_uniform(wv, 48, &rng, -1, 1);
	fwt_fill_uniform(rv, 24, &rng, -1, 1);
	fwt_write(x, xv);
	fwt_write(w, wv);
	fwt_write(r, rv);
	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	ck_assert_int_eq(fw_graph_backward(g), FW_OK);
	ck_assert_int_eq(h->dtype, FW_BF16);
	ck_assert_int_eq(h->grad->dtype, FW_BF16);
	ck_assert_int_eq(a->grad->dtype, FW_BF16);
	ck_assert_int_eq(y->grad->dtype, FW_F32);
	int copies = 0;
	for (int i = 0; i < fw_graph_n_nodes(g); i++) {
		struct fw_tensor *t = fw_graph_node(g, i);
		if (t->op != FW_OP_CAST || t->src[0] != w)
			continue;
		copies++;
		ck_assert_int_eq(t->dtype, FW_BF16);
		ck_assert_ptr_eq(t->grad->data, w->grad->data);
	}
	ck_assert_int_eq(copies, 1);
	for (int i = 0; i < 48; i++)
		ck_assert_msg(isfinite(fw_f32(w->grad)[i]) && fw_f32(w->grad)[i] != 0.0f,
			      "grad w[%d] = %g", i, (double)fw_f32(w->grad)[i]);
	fw_graph_free(g);
	fw_ctx_free(ctx);
}
END_TEST

/* --- constructor errors ------------------------------------------------------------------ */

#define EXPECT_SHAPE_ERROR(ctx, expr, opname) do { \
	int n0_ = fw_ctx_n_tensors(ctx); \
	fw_err_clear(fw_ctx_err(ctx)); \
	struct fw_tensor *t_ = (expr); \
	ck_assert_msg(t_ == NULL, "%s: accepted bad shapes", #expr); \
	ck_assert_msg(fw_ctx_err(ctx)->status == FW_ERR_SHAPE, "%s: status %s (%s)", #expr, \
		      fw_status_str(fw_ctx_err(ctx)->status), fw_ctx_err(ctx)->msg); \
	ck_assert_msg(strstr(fw_ctx_err(ctx)->msg, opname) != NULL, \
		      "%s: message '%s' does not name %s", #expr, fw_ctx_err(ctx)->msg, opname); \
	ck_assert_msg(fw_ctx_n_tensors(ctx) == n0_, "%s: a failed node stayed in the context", \
		      #expr); \
} while (0)

START_TEST(test_shape_errors)
{
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *a = fw_param(ctx, "a", FW_F32, 2, (int64_t[]){ 3, 4 }, true);
	struct fw_tensor *b = fw_param(ctx, "b", FW_F32, 2, (int64_t[]){ 5, 6 }, true);
	struct fw_tensor *v5 = fw_param(ctx, "v5", FW_F32, 1, (int64_t[]){ 5 }, true);
	struct fw_tensor *ids = fw_input(ctx, "ids", FW_I32, 1, (int64_t[]){ 3 });
	struct fw_tensor *t2 = fw_input(ctx, "t2", FW_I32, 1, (int64_t[]){ 2 });
	ck_assert_ptr_nonnull(a);

	EXPECT_SHAPE_ERROR(ctx, fw_matmul(ctx, a, b, false, false), "matmul");
	EXPECT_SHAPE_ERROR(ctx, fw_linear(ctx, a, b, NULL), "matmul");
	EXPECT_SHAPE_ERROR(ctx, fw_add(ctx, a, v5), "add");
	EXPECT_SHAPE_ERROR(ctx, fw_sub(ctx, a, b), "sub");
	EXPECT_SHAPE_ERROR(ctx, fw_mul(ctx, b, a), "mul");
	EXPECT_SHAPE_ERROR(ctx, fw_layernorm(ctx, a, v5, NULL, 1e-5f), "layernorm");
	EXPECT_SHAPE_ERROR(ctx, fw_rmsnorm(ctx, a, v5, 1e-5f), "rmsnorm");
	EXPECT_SHAPE_ERROR(ctx, fw_softmax(ctx, a, v5, false, 1.0f), "softmax");
	EXPECT_SHAPE_ERROR(ctx, fw_embedding(ctx, a, a), "embedding");
	EXPECT_SHAPE_ERROR(ctx, fw_cross_entropy(ctx, a, t2, NULL, -100), "cross_entropy");
	EXPECT_SHAPE_ERROR(ctx, fw_concat(ctx, a, b, 0), "concat");
	EXPECT_SHAPE_ERROR(ctx, fw_slice(ctx, a, 1, 2, 5), "slice");
	EXPECT_SHAPE_ERROR(ctx, fw_reshape(ctx, a, 2, (int64_t[]){ 5, 2 }), "reshape");
	EXPECT_SHAPE_ERROR(ctx, fw_permute(ctx, a, (int[]){ 0, 0 }), "permute");
	EXPECT_SHAPE_ERROR(ctx, fw_sum(ctx, a, 2, false), "sum");
	EXPECT_SHAPE_ERROR(ctx, fw_mean(ctx, a, -3, false), "mean");
	EXPECT_SHAPE_ERROR(ctx, fw_matmul(ctx, a, ids, false, false), "matmul");
	fw_ctx_free(ctx);
}
END_TEST

START_TEST(test_null_propagation)
{
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *a = fw_param(ctx, "a", FW_F32, 2, (int64_t[]){ 3, 4 }, true);
	struct fw_tensor *w = fw_param(ctx, "w", FW_F32, 2, (int64_t[]){ 5, 4 }, true);
	struct fw_tensor *bias = fw_param(ctx, "bias", FW_F32, 1, (int64_t[]){ 4 }, true);
	struct fw_tensor *t = fw_input(ctx, "t", FW_I32, 1, (int64_t[]){ 3 });
	struct fw_tensor *bad = fw_matmul(ctx, a, a, false, false);   /* (3,4)x(3,4) */
	ck_assert_ptr_null(bad);
	struct fw_err first = *fw_ctx_err(ctx);
	ck_assert_int_ne(first.status, FW_OK);
	int n0 = fw_ctx_n_tensors(ctx);

	struct fw_tensor *r[] = {
		fw_relu(ctx, bad), fw_gelu(ctx, bad, FW_GELU_ERF), fw_silu(ctx, bad),
		fw_tanh(ctx, bad), fw_sigmoid(ctx, bad), fw_scale(ctx, bad, 2.0f),
		fw_add(ctx, bad, a), fw_add(ctx, a, bad), fw_sub(ctx, a, bad), fw_mul(ctx, bad, a),
		fw_matmul(ctx, bad, a, false, false), fw_matmul(ctx, a, bad, false, true),
		fw_linear(ctx, bad, w, NULL), fw_linear(ctx, a, bad, NULL),
		fw_layernorm(ctx, bad, bias, bias, 1e-5f), fw_rmsnorm(ctx, bad, NULL, 1e-5f),
		fw_softmax(ctx, bad, NULL, true, 1.0f), fw_dropout(ctx, bad, 0.1f, 1),
		fw_cross_entropy(ctx, bad, t, NULL, -100), fw_cross_entropy(ctx, a, bad, NULL, -100),
		fw_embedding(ctx, bad, t), fw_embedding(ctx, w, bad),
		fw_concat(ctx, bad, a, 0), fw_concat(ctx, a, bad, 0),
		fw_slice(ctx, bad, 0, 0, 1), fw_reshape(ctx, bad, 1, (int64_t[]){ -1 }),
		fw_permute(ctx, bad, (int[]){ 1, 0 }), fw_transpose(ctx, bad, 0, 1),
		fw_cont(ctx, bad), fw_sum(ctx, bad, 0, false), fw_mean(ctx, bad, FW_AXIS_ALL, true),
		fw_cast(ctx, bad, FW_BF16),
		/* a chain checked once at the end, as ops.h suggests */
		fw_gelu(ctx, fw_linear(ctx, fw_layernorm(ctx, bad, NULL, NULL, 1e-5f), w, NULL),
			FW_GELU_TANH),
	};
	for (size_t i = 0; i < sizeof(r) / sizeof(r[0]); i++)
		ck_assert_msg(r[i] == NULL, "constructor %zu returned a node from a NULL source", i);
	ck_assert_int_eq(fw_ctx_err(ctx)->status, first.status);
	ck_assert_str_eq(fw_ctx_err(ctx)->msg, first.msg);
	ck_assert_int_eq(fw_ctx_n_tensors(ctx), n0);

	struct fw_tensor *outs[1] = { bad };
	ck_assert_ptr_null(fw_graph_new(ctx, outs, 1, &(struct fw_graph_opts){ .backward = true }));
	ck_assert_str_eq(fw_ctx_err(ctx)->msg, first.msg);
	struct fw_tensor *parts[2];
	ck_assert_int_ne(fw_split(ctx, bad, 0, 2, parts), FW_OK);
	ck_assert_str_eq(fw_ctx_err(ctx)->msg, first.msg);
	fw_ctx_free(ctx);
}
END_TEST

START_TEST(test_graph_misuse)
{
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *a = fw_param(ctx, "a", FW_F32, 2, (int64_t[]){ 3, 4 }, true);
	struct fw_tensor *y = fw_scale(ctx, a, 2.0f);
	ck_assert_ptr_nonnull(y);
	/* a loss must be one element */
	ck_assert_ptr_null(fw_graph_new(ctx, &y, 1, &(struct fw_graph_opts){ .backward = true }));
	ck_assert_int_ne(fw_ctx_err(ctx)->status, FW_OK);
	/* backward before forward */
	struct fw_tensor *loss = fw_sum(ctx, y, FW_AXIS_ALL, false);
	struct fw_graph *g = fw_graph_new(ctx, &loss, 1, &(struct fw_graph_opts){
		.backward = true });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	ck_assert_int_ne(fw_graph_backward(g), FW_OK);
	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	ck_assert_int_eq(fw_graph_backward(g), FW_OK);
	for (int i = 0; i < 12; i++)
		ck_assert_msg(fw_f32(a->grad)[i] == 2.0f, "d sum(2a)/da = %g",
			      (double)fw_f32(a->grad)[i]);
	fw_graph_free(g);
	fw_ctx_free(ctx);
}
END_TEST

/* Blocks of 8 MiB and more start on a 2 MiB boundary (so MADV_HUGEPAGE can
 * back them with huge pages); smaller ones keep the 64-byte alignment. */
START_TEST(test_big_blocks_aligned)
{
	size_t sizes[] = { 8u << 20, (16u << 20) + 12345, 1u << 20, 100 };
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		char *p = fw_malloc(sizes[i]);
		ck_assert_ptr_nonnull(p);
		size_t want = sizes[i] >= (8u << 20) ? 2u << 20 : 64;
		ck_assert_msg(((uintptr_t)p & (want - 1)) == 0, "%zu bytes at %p: not %zu-aligned",
			      sizes[i], (void *)p, want);
		memset(p, 1, sizes[i]);             /* the whole block is usable */
		fw_free(p);
	}
}
END_TEST

int main(void)
{
	Suite *s = suite_create("graph");
	TCase *tc = fwt_tcase("engine", 120);
	tcase_add_test(tc, test_frozen);
	tcase_add_test(tc, test_big_blocks_aligned);
	tcase_add_test(tc, test_two_threads);
	tcase_add_test(tc, test_accumulate);
	tcase_add_test(tc, test_recompute);
	tcase_add_test(tc, test_memory_report);
	tcase_add_test(tc, test_planner_reuse);
	tcase_add_test(tc, test_views_chain);
	tcase_add_test(tc, test_views_overlap);
	tcase_add_test(tc, test_views_reshaped_param);
	tcase_add_test(tc, test_grad_shared_slots);
	tcase_add_test(tc, test_autocast_gradient_dtypes);
	tcase_add_test(tc, test_shape_errors);
	tcase_add_test(tc, test_null_propagation);
	tcase_add_test(tc, test_graph_misuse);
	suite_add_tcase(s, tc);
	return fwt_run_suite(s);
}
