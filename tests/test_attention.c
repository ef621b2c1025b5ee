/* test_attention.c - attention/mha's position hooks and grouped heads:
 * finite-difference gradient checks (fwt_gradcheck) of its op mha.alibi and
 * of whole attend() calls (GQA, MQA, RoPE, ALiBi, relative bias, sequence
 * mask) on odd shapes: T not a power of two, heads not a power of two,
 * head_dim 40 and 64; then attend's refusals of bad specs, BLOOM's slopes
 * through the op's forward, and where the core's fw_rope takes positions
 * from (its gradient checks are in test_gradcheck.c).
 * Forward values against torch are tests/llama_parity.py's job.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

static struct fw_loaded *mha;

static void load_mha(void)
{
	struct fw_err err = { 0 };
	if (mha)
		return;
	const char *b = getenv("FW_BUILD_DIR");
	char path[4200];
	snprintf(path, sizeof(path), "%s/plugins/attention/mha.so", b ? b : ".");
	ck_assert_msg(fw_plugin_open(path, FW_KIND_ATTENTION, &mha, &err) == FW_OK, "%s", err.msg);
	ck_assert_msg(fw_plugin_init(mha, NULL, &err) == FW_OK, "%s", err.msg);
}

static int op_named(const char *name)
{
	load_mha();
	for (int id = FW_OP_COUNT; fw_op_get(id); id++)
		if (!strcmp(fw_op_get(id)->name, name))
			return id;
	ck_abort_msg("op %s is not registered", name);
	return -1;
}

/* --- the ops ----------------------------------------------------------------------- */

/* RoPE through the core op, as attention plugins call it (fw_attn_rope) */
struct rope_args {
	int dim;
	enum fw_rope_pos mode;       /* positions or offset in in[1] */
	float base;
};

static struct fw_tensor *b_rope(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	const struct rope_args *a = u;
	return fw_rope(c, in[0], in[1], a->mode, a->dim, false, a->base, NULL);
}

struct alibi_args {
	float scale;
	bool offset;
};

static struct fw_tensor *b_alibi(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	const struct alibi_args *a = u;
	union fw_param p = { .f = a->scale };
	struct fw_tensor *src[2] = { in[0], in[1] };
	return fw_op_custom(c, op_named("mha.alibi"), src, a->offset ? 2 : 1, &p, 1);
}

static const int32_t packed_pos[2 * 5] = { 0, 1, 2, 0, 1, 3, 4, 0, 1, 2 };
static const int32_t offset_3[1] = { 3 };

#define F(nm, ...) { .name = nm, .ndim = sizeof((int64_t[]){ __VA_ARGS__ }) / 8, \
		     .ne = { __VA_ARGS__ }, .grad = true }
#define INT(nm, ptr, ...) { .name = nm, .dtype = FW_I32, \
			    .ndim = sizeof((int64_t[]){ __VA_ARGS__ }) / 8, \
			    .ne = { __VA_ARGS__ }, .data = ptr }
#define NONE { .name = NULL }

struct opcase {
	const char *name;
	fwt_build_fn build;
	const void *args;
	int n;
	struct fwt_input in[2];
};

static const struct alibi_args alibi_train = { .scale = 0.3f };
static const struct alibi_args alibi_decode = { .scale = 0.125f, .offset = true };

static const struct opcase op_cases[] = {
	{ "alibi 6 heads, T 5", b_alibi, &alibi_train, 2, { F("s", 2, 6, 5, 5), NONE } },
	{ "alibi 5 heads, decode offset", b_alibi, &alibi_decode, 2,
	  { F("s", 1, 5, 1, 7), INT("len", offset_3, 1) } },
	{ "alibi 3 heads, Tq < Tk", b_alibi, &alibi_train, 2, { F("s", 1, 3, 3, 7), NONE } },
};

START_TEST(test_op_grad)
{
	const struct opcase *c = &op_cases[_i];
	struct fwt_gc_opts o = { .seed = (uint64_t)_i + 1 };
	int r = fwt_gradcheck_ex(c->name, c->n, c->in, c->build, (void *)c->args, &o);
	ck_assert_msg(r == 0, "%s: gradient check failed (%d elements)", c->name, r);
}
END_TEST

/* --- attend ------------------------------------------------------------------------ */

struct attend_args {
	int n_head, n_kv_head, head_dim;
	enum fw_pos_kind pos;
	int rope_dim;
	bool interleaved, causal, with_bias, with_positions;
	int window;
};

#define AA(hq, hkv, d, p, ...) \
	{ .n_head = hq, .n_kv_head = hkv, .head_dim = d, .pos = p, __VA_ARGS__ }

/* in: q, k, v, then (by the args) bias (B, 1, T, T), positions (B, T), pos_bias */
static struct fw_tensor *b_attend(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	const struct attend_args *a = u;
	struct fw_err err = { 0 };
	load_mha();
	struct fw_model m = { .size = sizeof(m), .ctx = c, .host = fw_host_table(),
			      .batch = in[0]->ne[0], .seq_len = in[0]->ne[1] };
	struct fw_attn_spec spec = {
		.size = sizeof(spec), .name = "test.attn", .n_head = a->n_head,
		.n_kv_head = a->n_kv_head, .head_dim = a->head_dim,
		.mask = a->causal ? FW_MASK_CAUSAL : FW_MASK_BIDIRECTIONAL, .pos = a->pos,
		.rope_base = 10000.0f, .rope_dim = a->rope_dim, .rope_interleaved = a->interleaved,
		.window = a->window,
	};
	int k = 3;
	if (a->with_bias)
		spec.bias = in[k++];
	if (a->with_positions)
		m.positions = in[k++];
	if (a->pos == FW_POS_RELATIVE)
		spec.pos_bias = in[k++];
	const struct fw_attention_i *ai = mha->desc->iface;
	struct fw_tensor *y = ai->attend(mha->state, &m, &spec, in[0], in[1], in[2], &err);
	if (!y)
		fprintf(stderr, "attend: %s\n", err.msg);
	return y;
}

/* (2, 1, 5, 5): row 0 two packed examples [0..2] [3..4]; row 1 padding after 3 */
static float seg_bias[2 * 5 * 5];

static void fill_seg_bias(void)
{
	for (int b = 0; b < 2; b++)
		for (int i = 0; i < 5; i++)
			for (int j = 0; j < 5; j++) {
				bool see = b == 0 ? (i < 3) == (j < 3) : j < 3;
				seg_bias[(b * 5 + i) * 5 + j] = see ? 0.0f : -INFINITY;
			}
}

struct acase {
	const char *name;
	struct attend_args a;
	int n;
	struct fwt_input in[6];
};

#define CONSTF(nm, ptr, ...) { .name = nm, .ndim = sizeof((int64_t[]){ __VA_ARGS__ }) / 8, \
			       .ne = { __VA_ARGS__ }, .data = ptr }

static const struct acase attend_cases[] = {
	{ "GQA 6/2 heads, D 40, T 7, causal", AA(6, 2, 40, FW_POS_NONE, .causal = true), 3,
	  { F("q", 2, 7, 6, 40), F("k", 2, 7, 2, 40), F("v", 2, 7, 2, 40) } },
	{ "GQA 6/3 heads + RoPE NeoX, D 64, T 5", AA(6, 3, 64, FW_POS_ROPE, .causal = true), 3,
	  { F("q", 1, 5, 6, 64), F("k", 1, 5, 3, 64), F("v", 1, 5, 3, 64) } },
	{ "MQA 3/1 heads + RoPE GPT-J partial 24, D 40", AA(3, 1, 40, FW_POS_ROPE, .rope_dim = 24, .interleaved = true, .causal = true),
	  3, { F("q", 2, 5, 3, 40), F("k", 2, 5, 1, 40), F("v", 2, 5, 1, 40) } },
	{ "MQA 5/1 + ALiBi, D 40, bidirectional", AA(5, 1, 40, FW_POS_ALIBI, .causal = false), 3,
	  { F("q", 1, 6, 5, 40), F("k", 1, 6, 1, 40), F("v", 1, 6, 1, 40) } },
	{ "GQA 6/2 + ALiBi + packed mask, D 40", AA(6, 2, 40, FW_POS_ALIBI, .causal = true, .with_bias = true),
	  4, { F("q", 2, 5, 6, 40), F("k", 2, 5, 2, 40), F("v", 2, 5, 2, 40),
	       CONSTF("bias", seg_bias, 2, 1, 5, 5) } },
	{ "GQA 6/3 + RoPE with packed positions + mask, D 40",
	  AA(6, 3, 40, FW_POS_ROPE, .causal = true, .with_bias = true, .with_positions = true), 5,
	  { F("q", 2, 5, 6, 40), F("k", 2, 5, 3, 40), F("v", 2, 5, 3, 40),
	    CONSTF("bias", seg_bias, 2, 1, 5, 5), INT("pos", packed_pos, 2, 5) } },
	{ "GQA 6/2 + RoPE + sliding window 3 (op mha.window), D 40, T 7",
	  AA(6, 2, 40, FW_POS_ROPE, .causal = true, .window = 3), 3,
	  { F("q", 2, 7, 6, 40), F("k", 2, 7, 2, 40), F("v", 2, 7, 2, 40) } },
	{ "MQA 5/1 + ALiBi + window 2 + packed mask, D 40",
	  AA(5, 1, 40, FW_POS_ALIBI, .causal = true, .with_bias = true, .window = 2), 4,
	  { F("q", 2, 5, 5, 40), F("k", 2, 5, 1, 40), F("v", 2, 5, 1, 40),
	    CONSTF("bias", seg_bias, 2, 1, 5, 5) } },
	{ "relative bias (H, T, T), 3 heads, learned", AA(3, 3, 8, FW_POS_RELATIVE, .causal = true),
	  4, { F("q", 1, 5, 3, 8), F("k", 1, 5, 3, 8), F("v", 1, 5, 3, 8), F("pb", 3, 5, 5) } },
	/* MHA, causal: the products over the lower triangle's blocks (test_attn_causal.c) */
	{ "MHA 4 heads, D 8, T 9, causal", AA(4, 4, 8, FW_POS_NONE, .causal = true), 3,
	  { F("q", 1, 9, 4, 8), F("k", 1, 9, 4, 8), F("v", 1, 9, 4, 8) } },
	{ "MHA 4 heads + RoPE + packed mask, D 8", AA(4, 4, 8, FW_POS_ROPE, .causal = true,
	  .with_bias = true), 4, { F("q", 2, 5, 4, 8), F("k", 2, 5, 4, 8), F("v", 2, 5, 4, 8),
				   CONSTF("bias", seg_bias, 2, 1, 5, 5) } },
	{ "MHA 3 heads + ALiBi + window 4, D 8, T 9", AA(3, 3, 8, FW_POS_ALIBI, .causal = true,
	  .window = 4), 3, { F("q", 1, 9, 3, 8), F("k", 1, 9, 3, 8), F("v", 1, 9, 3, 8) } },
};

START_TEST(test_attend_grad)
{
	const struct acase *c = &attend_cases[_i];
	fill_seg_bias();
	struct fwt_gc_opts o = { .seed = (uint64_t)_i + 100 };
	int r = fwt_gradcheck_ex(c->name, c->n, c->in, b_attend, (void *)&c->a, &o);
	ck_assert_msg(r == 0, "%s: gradient check failed (%d elements)", c->name, r);
}
END_TEST

/* GQA without materialising K/V: the same values as MHA with K/V heads
 * repeated by hand (repeat_kv), forward and every gradient. */
START_TEST(test_gqa_equals_repeated)
{
	enum { B = 2, T = 7, H = 6, G = 2, D = 40 };
	load_mha();
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *q = fw_param(ctx, "q", FW_F32, 4, (int64_t[]){ B, T, H, D }, true);
	struct fw_tensor *k = fw_param(ctx, "k", FW_F32, 4, (int64_t[]){ B, T, G, D }, true);
	struct fw_tensor *v = fw_param(ctx, "v", FW_F32, 4, (int64_t[]){ B, T, G, D }, true);
	struct fw_tensor *kr = fw_param(ctx, "kr", FW_F32, 4, (int64_t[]){ B, T, H, D }, true);
	struct fw_tensor *vr = fw_param(ctx, "vr", FW_F32, 4, (int64_t[]){ B, T, H, D }, true);
	struct fw_tensor *q2 = fw_param(ctx, "q2", FW_F32, 4, (int64_t[]){ B, T, H, D }, true);
	struct attend_args ga = AA(H, G, D, FW_POS_ROPE, .causal = true);
	struct attend_args ma = AA(H, H, D, FW_POS_ROPE, .causal = true);
	struct fw_tensor *y1 = b_attend(ctx, (struct fw_tensor *[]){ q, k, v }, &ga);
	struct fw_tensor *y2 = b_attend(ctx, (struct fw_tensor *[]){ q2, kr, vr }, &ma);
	struct fw_tensor *l1 = fw_sum(ctx, fw_mul(ctx, y1, y1), FW_AXIS_ALL, false);
	struct fw_tensor *l2 = fw_sum(ctx, fw_mul(ctx, y2, y2), FW_AXIS_ALL, false);
	struct fw_tensor *loss = fw_add(ctx, l1, l2);
	ck_assert_msg(loss != NULL, "%s", fw_ctx_err(ctx)->msg);
	struct fw_graph *g = fw_graph_new(ctx, (struct fw_tensor *[]){ loss, y1, y2 }, 3,
					  &(struct fw_graph_opts){ .backward = true,
								   .training = true });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	struct fwt_rng r = fwt_rng_new(3);
	fwt_fill_uniform(fw_f32(q), B * T * H * D, &r, -1, 1);
	fwt_fill_uniform(fw_f32(k), B * T * G * D, &r, -1, 1);
	fwt_fill_uniform(fw_f32(v), B * T * G * D, &r, -1, 1);
	memcpy(fw_f32(q2), fw_f32(q), sizeof(float) * B * T * H * D);
	for (int i = 0; i < B * T; i++)         /* query head h uses KV head h / (H/G) */
		for (int h = 0; h < H; h++) {
			memcpy(fw_f32(kr) + (i * H + h) * D, fw_f32(k) + (i * G + h / (H / G)) * D,
			       sizeof(float) * D);
			memcpy(fw_f32(vr) + (i * H + h) * D, fw_f32(v) + (i * G + h / (H / G)) * D,
			       sizeof(float) * D);
		}
	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	ck_assert_int_eq(fw_graph_backward(g), FW_OK);
	ck_assert_int_eq(fwt_allclose("y", fw_f32(y1), fw_f32(y2), B * T * H * D, 1e-5, 1e-6), 0);
	ck_assert_int_eq(fwt_allclose("dq", fw_f32(q->grad), fw_f32(q2->grad), B * T * H * D,
				      1e-4, 1e-6), 0);
	/* dK, dV of a group = the sum of the repeated heads' gradients */
	static float dk[B * T * G * D], dv[B * T * G * D];
	memset(dk, 0, sizeof(dk));
	memset(dv, 0, sizeof(dv));
	for (int i = 0; i < B * T; i++)
		for (int h = 0; h < H; h++)
			for (int d = 0; d < D; d++) {
				dk[(i * G + h / (H / G)) * D + d] += fw_f32(kr->grad)[(i * H + h) * D + d];
				dv[(i * G + h / (H / G)) * D + d] += fw_f32(vr->grad)[(i * H + h) * D + d];
			}
	ck_assert_int_eq(fwt_allclose("dk", fw_f32(k->grad), dk, B * T * G * D, 1e-4, 1e-6), 0);
	ck_assert_int_eq(fwt_allclose("dv", fw_f32(v->grad), dv, B * T * G * D, 1e-4, 1e-6), 0);
	fw_graph_free(g);
	fw_ctx_free(ctx);
}
END_TEST

/* Two attend calls in a row (the second's queries are the first's output),
 * loss = sum(y * y): the gradients of q, k, v and the planned activation
 * bytes, with the scores and softmax recomputed in backward or kept. */
static size_t remat_attend(const struct attend_args *a, bool on, float *grads)
{
	enum { B = 2, T = 16 };
	int64_t H = a->n_head, G = a->n_kv_head, D = a->head_dim;
	load_mha();
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *q = fw_param(ctx, "q", FW_F32, 4, (int64_t[]){ B, T, H, D }, true);
	struct fw_tensor *k = fw_param(ctx, "k", FW_F32, 4, (int64_t[]){ B, T, G, D }, true);
	struct fw_tensor *v = fw_param(ctx, "v", FW_F32, 4, (int64_t[]){ B, T, G, D }, true);
	struct fw_tensor *y = b_attend(ctx, (struct fw_tensor *[]){ q, k, v }, (void *)a);
	y = b_attend(ctx, (struct fw_tensor *[]){ y, k, v }, (void *)a);
	struct fw_tensor *loss = fw_sum(ctx, fw_mul(ctx, y, y), FW_AXIS_ALL, false);
	size_t bytes = fwt_remat_run(ctx, loss, on, (struct fw_tensor *[]){ q, k, v }, 3, 9, grads);
	fw_ctx_free(ctx);
	return bytes;
}

/* Backward recomputes q k^T and the softmax (FW_FLAG_REMAT) instead of
 * keeping the probabilities: the same gradient bits as keeping them (the
 * same kernels on the same q, k; test_attend_grad checks those gradients
 * against finite differences), and a smaller plan (here the peak is in the
 * second call's backward, where its recomputed scores and probabilities
 * live; in a 12-layer GPT-2 the plan drops 144 MiB). MHA and GQA (a view
 * between the two);
 * with ALiBi between them nothing is recomputed and the plan is unchanged. */
START_TEST(test_attend_remat)
{
	static const struct attend_args cases[3] = {
		AA(4, 4, 8, FW_POS_NONE, .causal = true),
		AA(6, 2, 8, FW_POS_ROPE, .causal = true),
		AA(4, 4, 8, FW_POS_ALIBI, .causal = true),
	};
	static float on[2 * 16 * 6 * 8 * 3], off[2 * 16 * 6 * 8 * 3];
	for (int c = 0; c < 3; c++) {
		const struct attend_args *a = &cases[c];
		size_t n = (size_t)2 * 16 * (a->n_head + 2 * a->n_kv_head) * a->head_dim;
		size_t b_on = remat_attend(a, true, on), b_off = remat_attend(a, false, off);
		ck_assert_msg(memcmp(on, off, n * sizeof(float)) == 0, "case %d: gradients differ", c);
		if (a->pos == FW_POS_ALIBI)
			ck_assert_msg(b_on == b_off, "ALiBi: planned %zu bytes, %zu kept", b_on, b_off);
		else
			ck_assert_msg(b_on < b_off, "case %d: planned %zu bytes recomputing, %zu "
				      "keeping the probabilities", c, b_on, b_off);
	}
	/* --mha-recompute=false: an instance that keeps them plans as FW_REMAT=0 */
	struct fw_loaded *dflt = mha, *keep = NULL;
	struct fw_err err = { 0 };
	char path[4200];
	const char *b = getenv("FW_BUILD_DIR");
	snprintf(path, sizeof(path), "%s/plugins/attention/mha.so", b ? b : ".");
	ck_assert_msg(fw_plugin_open(path, FW_KIND_ATTENTION, &keep, &err) == FW_OK &&
		      fw_options_set(keep->opts, "mha-recompute", "false", &err) == FW_OK &&
		      fw_options_resolve(keep->opts, &err) == FW_OK &&
		      fw_plugin_init(keep, NULL, &err) == FW_OK, "%s", err.msg);
	mha = keep;
	size_t kept = remat_attend(&cases[0], true, on);
	mha = dflt;
	size_t b_off = remat_attend(&cases[0], false, off);
	ck_assert_msg(kept == b_off, "--mha-recompute=false planned %zu bytes, FW_REMAT=0 %zu",
		      kept, b_off);
	fw_plugin_close(keep);
}
END_TEST

/* Where RoPE's positions come from: a positions tensor (SFT rows restart at
 * 0, where the rotation is the identity) and a cache offset (rows 3, 4 of
 * a prompt continue at len = 3). Attention itself only sees position
 * differences, so these are checked on the op's values. */
START_TEST(test_rope_positions)
{
	enum { T = 5, H = 2, D = 8, N = T * H * D, ROW = H * D };
	static const int32_t pos[T] = { 0, 1, 2, 0, 1 }, three[1] = { 3 };
	struct rope_args ar = { .dim = D, .base = 100.0f }, ap = ar, ao = ar;
	ap.mode = FW_ROPE_POSITIONS;
	ao.mode = FW_ROPE_OFFSET;
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *x = fw_input(ctx, "x", FW_F32, 4, (int64_t[]){ 1, T, H, D });
	struct fw_tensor *xs = fw_input(ctx, "xs", FW_F32, 4, (int64_t[]){ 1, 2, H, D });
	struct fw_tensor *p = fw_input(ctx, "pos", FW_I32, 2, (int64_t[]){ 1, T });
	struct fw_tensor *len = fw_input(ctx, "len", FW_I32, 1, (int64_t[]){ 1 });
	struct fw_tensor *y[3] = { b_rope(ctx, (struct fw_tensor *[]){ x, NULL }, &ar),
				   b_rope(ctx, (struct fw_tensor *[]){ x, p }, &ap),
				   b_rope(ctx, (struct fw_tensor *[]){ xs, len }, &ao) };
	struct fw_graph *g = fw_graph_new(ctx, y, 3, &(struct fw_graph_opts){ 0 });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	struct fwt_rng r = fwt_rng_new(4);
	fwt_fill_uniform(fw_f32(x), N, &r, -1, 1);
	memcpy(fw_f32(xs), fw_f32(x) + 3 * ROW, sizeof(float) * 2 * ROW);
	memcpy(fw_i32(p), pos, sizeof(pos));
	memcpy(fw_i32(len), three, sizeof(three));
	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	const float *xv = fw_f32(x), *y_ar = fw_f32(y[0]), *y_pos = fw_f32(y[1]);
	ck_assert_int_eq(fwt_allclose("positions 0..2", y_pos, y_ar, 3 * ROW, 0, 0), 0);
	ck_assert_int_eq(fwt_allclose("restart at 0", y_pos + 3 * ROW, xv + 3 * ROW, ROW, 0, 0), 0);
	double moved = 0;
	for (int i = 0; i < ROW; i++)
		moved = fmax(moved, fabs(y_ar[3 * ROW + i] - xv[3 * ROW + i]));
	ck_assert_msg(moved > 0.01, "position 3 rotated nothing (max change %g)", moved);
	ck_assert_int_eq(fwt_allclose("cache offset 3", fw_f32(y[2]), y_ar + 3 * ROW, 2 * ROW,
				      1e-6, 1e-7), 0);
	fw_graph_free(g);
	fw_ctx_free(ctx);
}
END_TEST

/* SFT packing: a row holding two examples [0..2] [3..4], with positions
 * restarting and the block mask, gives each example what it gets alone
 * (mask, GQA and RoPE together, forward values; RoPE being relative, the
 * positions themselves are test_rope_positions' job). */
START_TEST(test_packed_equals_separate)
{
	enum { T = 5, H = 6, G = 3, D = 40 };
	static const int32_t pos[T] = { 0, 1, 2, 0, 1 };
	static const int64_t start[2] = { 0, 3 }, len[2] = { 3, 2 };
	load_mha();
	fill_seg_bias();
	struct attend_args packed = AA(H, G, D, FW_POS_ROPE, .causal = true, .with_bias = true,
				       .with_positions = true);
	struct attend_args alone = AA(H, G, D, FW_POS_ROPE, .causal = true);
	struct fwt_rng r = fwt_rng_new(9);
	static float q[T * H * D], k[T * G * D], v[T * G * D], y[T * H * D];
	fwt_fill_uniform(q, T * H * D, &r, -1, 1);
	fwt_fill_uniform(k, T * G * D, &r, -1, 1);
	fwt_fill_uniform(v, T * G * D, &r, -1, 1);
	for (int e = -1; e < 2; e++) {          /* -1: the packed row; 0, 1: each example */
		int64_t t0 = e < 0 ? 0 : start[e], n = e < 0 ? T : len[e];
		struct fw_ctx *ctx = fw_ctx_new();
		struct fw_tensor *in[5] = {
			fw_input(ctx, "q", FW_F32, 4, (int64_t[]){ 1, n, H, D }),
			fw_input(ctx, "k", FW_F32, 4, (int64_t[]){ 1, n, G, D }),
			fw_input(ctx, "v", FW_F32, 4, (int64_t[]){ 1, n, G, D }),
			e < 0 ? fw_input(ctx, "bias", FW_F32, 4, (int64_t[]){ 1, 1, T, T }) : NULL,
			e < 0 ? fw_input(ctx, "pos", FW_I32, 2, (int64_t[]){ 1, T }) : NULL,
		};
		struct fw_tensor *out = b_attend(ctx, in, e < 0 ? &packed : &alone);
		struct fw_graph *g = out ? fw_graph_new(ctx, &out, 1, &(struct fw_graph_opts){ 0 })
					 : NULL;
		ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
		memcpy(fw_f32(in[0]), q + t0 * H * D, sizeof(float) * (size_t)(n * H * D));
		memcpy(fw_f32(in[1]), k + t0 * G * D, sizeof(float) * (size_t)(n * G * D));
		memcpy(fw_f32(in[2]), v + t0 * G * D, sizeof(float) * (size_t)(n * G * D));
		if (e < 0) {
			memcpy(fw_f32(in[3]), seg_bias, sizeof(float) * T * T);   /* row 0 */
			memcpy(fw_i32(in[4]), pos, sizeof(pos));
		}
		ck_assert_int_eq(fw_graph_forward(g), FW_OK);
		if (e < 0)
			memcpy(y, fw_f32(out), sizeof(y));
		else
			ck_assert_int_eq(fwt_allclose(e ? "example 1" : "example 0", y + t0 * H * D,
						      fw_f32(out), n * H * D, 1e-5, 1e-6), 0);
		fw_graph_free(g);
		fw_ctx_free(ctx);
	}
}
END_TEST

/* BLOOM's slopes through mha.alibi's forward: zero scores give -slope*(i-j). */
START_TEST(test_alibi_slopes)
{
	/* build_alibi_tensor: 6 heads -> 2^-2, 2^-4, 2^-6, 2^-8, then 2^-1, 2^-3;
	 * 8 heads -> 2^-1 .. 2^-8; 12 heads -> 2^(-k) k=1..8, then 2^-0.5, 2^-1.5,
	 * 2^-2.5, 2^-3.5 */
	static const struct { int H; double e[12]; } want[] = {
		{ 6, { 2, 4, 6, 8, 1, 3 } },
		{ 8, { 1, 2, 3, 4, 5, 6, 7, 8 } },
		{ 12, { 1, 2, 3, 4, 5, 6, 7, 8, 0.5, 1.5, 2.5, 3.5 } },
		{ 1, { 8 } },
	};
	for (size_t w = 0; w < sizeof(want) / sizeof(want[0]); w++) {
		int H = want[w].H;
		struct fw_ctx *ctx = fw_ctx_new();
		struct fw_tensor *s = fw_input(ctx, "s", FW_F32, 4, (int64_t[]){ 1, H, 3, 3 });
		struct alibi_args a = { .scale = 1.0f };
		struct fw_tensor *y = b_alibi(ctx, (struct fw_tensor *[]){ s, NULL }, &a);
		struct fw_graph *g = fw_graph_new(ctx, &y, 1, &(struct fw_graph_opts){ 0 });
		ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
		memset(fw_f32(s), 0, sizeof(float) * (size_t)(H * 9));
		ck_assert_int_eq(fw_graph_forward(g), FW_OK);
		for (int h = 0; h < H; h++) {
			double slope = pow(2.0, -want[w].e[h]);
			/* row i = 2, key j = 0: -slope * 2 */
			double got = fw_f32(y)[h * 9 + 2 * 3 + 0];
			ck_assert_msg(fabs(got + 2 * slope) <= 1e-6 * slope,
				      "%d heads: head %d slope %.9g, want %.9g", H, h, -got / 2, slope);
		}
		fw_graph_free(g);
		fw_ctx_free(ctx);
	}
}
END_TEST

/* --- bad specs ------------------------------------------------------------------------ */

START_TEST(test_bad_specs)
{
	static const struct {
		struct attend_args a;
		int hq, hkv, d;
		const char *expect;
	} bad[] = {
		{ AA(6, 4, 40, FW_POS_NONE, .rope_dim = 0), 6, 4, 40, "not a multiple of 4 KV heads" },
		{ AA(4, 4, 40, FW_POS_ROPE, .rope_dim = 5), 4, 4, 40, "rotary dim 5 must be even" },
		{ AA(4, 4, 40, FW_POS_ROPE, .rope_dim = 48), 4, 4, 40, "at most the head dim 40" },
		{ AA(4, 2, 40, FW_POS_NONE, .rope_dim = 0), 4, 4, 40, "k, v (B, T, 2, 40)" },
		{ AA(4, 4, 8, FW_POS_RELATIVE, .rope_dim = 0), 4, 4, 8, "without pos_bias" },
	};
	load_mha();
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct fw_ctx *ctx = fw_ctx_new();
		struct fw_err err = { 0 };
		struct fw_model m = { .size = sizeof(m), .ctx = ctx, .host = fw_host_table() };
		struct fw_attn_spec spec = {
			.size = sizeof(spec), .name = "bad.attn", .n_head = bad[i].a.n_head,
			.n_kv_head = bad[i].a.n_kv_head, .head_dim = bad[i].a.head_dim,
			.pos = bad[i].a.pos, .rope_dim = bad[i].a.rope_dim,
		};
		struct fw_tensor *q = fw_input(ctx, "q", FW_F32, 4,
					       (int64_t[]){ 1, 3, bad[i].hq, bad[i].d });
		struct fw_tensor *kv = fw_input(ctx, "kv", FW_F32, 4,
						(int64_t[]){ 1, 3, bad[i].hkv, bad[i].d });
		const struct fw_attention_i *ai = mha->desc->iface;
		struct fw_tensor *y = ai->attend(mha->state, &m, &spec, q, kv, kv, &err);
		ck_assert_msg(y == NULL && err.status != FW_OK && strstr(err.msg, bad[i].expect) &&
			      strstr(err.msg, "bad.attn") && !strchr(err.msg, '\n'),
			      "case %zu: got '%s', want one line with '%s'", i, err.msg,
			      bad[i].expect);
		fw_ctx_free(ctx);
	}
}
END_TEST

int main(void)
{
	Suite *s = suite_create("attention");
	TCase *ops = fwt_tcase("ops", 120);
	tcase_add_loop_test(ops, test_op_grad, 0, (int)(sizeof(op_cases) / sizeof(op_cases[0])));
	tcase_add_test(ops, test_alibi_slopes);
	tcase_add_test(ops, test_rope_positions);
	suite_add_tcase(s, ops);
	TCase *att = fwt_tcase("attend", 300);
	tcase_add_loop_test(att, test_attend_grad, 0,
			    (int)(sizeof(attend_cases) / sizeof(attend_cases[0])));
	tcase_add_test(att, test_gqa_equals_repeated);
	tcase_add_test(att, test_attend_remat);
	tcase_add_test(att, test_packed_equals_separate);
	tcase_add_test(att, test_bad_specs);
	suite_add_tcase(s, att);
	return fwt_run_suite(s);
}
