/* test_flash.c - attention/flash, the fused flash attention:
 *  - finite-difference gradient checks (fwt_gradcheck) of whole attend()
 *    calls on odd shapes with small tiles (16 queries x 8 keys, so T = 37 and
 *    70 end in partial tiles): causal and bidirectional, heads 3, 5, 6 (not
 *    powers of two), head_dim 40 and 64, GQA and MQA, ALiBi, RoPE, packed
 *    examples with padding (the host's bias and positions);
 *  - the same values as attention/mha (forward 1e-5, every gradient 1e-4,
 *    relative) for every mask kind, with the default and with odd tiles;
 *  - thread-count independence of forward and backward (race-free tasks);
 *  - bf16 and f16 q, k, v read by the kernel: bit-identical to f32 inputs
 *    holding the same values (relative bias, key mask); decoding, the half
 *    cache holds each f32 value rounded once (an oracle in double), half k
 *    and v written as they are;
 *  - no (T, T) buffer: the planned activations grow linearly in T;
 *  - one-line refusals of what flash does not support.
 * flash against torch itself is tests/flash_parity.py's job.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "fw/loader.h"

/* flash with tiles 16 x 8, flash with its defaults (64 x 64), mha */
static struct fw_loaded *flash_small, *flash_def, *mha;

static struct fw_loaded *load(const char *name, const char *bq, const char *bk)
{
	struct fw_err err = { 0 };
	struct fw_loaded *p = NULL;
	const char *b = getenv("FW_BUILD_DIR");
	char path[4200];
	snprintf(path, sizeof(path), "%s/plugins/attention/%s.so", b ? b : ".", name);
	ck_assert_msg(fw_plugin_open(path, FW_KIND_ATTENTION, &p, &err) == FW_OK, "%s", err.msg);
	if (bq) {
		ck_assert_msg(fw_options_set(p->opts, "flash-block-q", bq, &err) == FW_OK, "%s",
			      err.msg);
		ck_assert_msg(fw_options_set(p->opts, "flash-block-k", bk, &err) == FW_OK, "%s",
			      err.msg);
		ck_assert_msg(fw_options_resolve(p->opts, &err) == FW_OK, "%s", err.msg);
	}
	ck_assert_msg(fw_plugin_init(p, NULL, &err) == FW_OK, "%s", err.msg);
	return p;
}

static void load_all(void)
{
	if (!flash_small) {
		flash_small = load("flash", "16", "8");
		flash_def = load("flash", NULL, NULL);
		mha = load("mha", NULL, NULL);
	}
}

/* --- masks: the host's (dataset_masks) bias and positions --------------------------- */

enum { MB = 2, MT = 37 };
/* row 0: examples [0, 12), [12, 30), padding [30, 37); row 1: [0, 25), padding */
static float seg_bias[MB * MT * MT];
static int32_t seg_pos[MB * MT];

static int seg_of(int b, int t)
{
	if (b == 0)
		return t < 12 ? 1 : t < 30 ? 2 : 0;
	return t < 25 ? 1 : 0;
}

static void fill_masks(void)
{
	for (int b = 0; b < MB; b++) {
		int p = 0;
		for (int i = 0; i < MT; i++) {
			int s = seg_of(b, i);
			p = i && s == seg_of(b, i - 1) ? p + 1 : 0;
			seg_pos[b * MT + i] = s ? p : 0;
			for (int j = 0; j < MT; j++)
				seg_bias[(b * MT + i) * MT + j] =
					s && seg_of(b, j) == s ? 0.0f : -INFINITY;
		}
	}
}

/* T5's key mask (B, 1, 1, T): row 0 pads [30, 37); row 1 hides keys 10, 11
 * (a hole) and pads [25, 37). */
static float key_mask[MB * MT];

static void fill_key_mask(void)
{
	for (int j = 0; j < MT; j++) {
		key_mask[j] = j < 30 ? 0.0f : -INFINITY;
		key_mask[MT + j] = j < 25 && j != 10 && j != 11 ? 0.0f : -INFINITY;
	}
}

/* --- attend ------------------------------------------------------------------------- */

struct attend_args {
	struct fw_loaded **plugin;
	int n_head, n_kv_head, head_dim;
	enum fw_pos_kind pos;
	int rope_dim;
	bool interleaved, causal, with_bias, with_positions, cross;
	float dropout;
	bool training;
};

#define AA(pl, hq, hkv, d, p, ...) \
	{ .plugin = pl, .n_head = hq, .n_kv_head = hkv, .head_dim = d, .pos = p, __VA_ARGS__ }

static struct fw_tensor *attend(struct fw_ctx *c, struct fw_tensor *const *in,
				const struct attend_args *a, struct fw_loaded *p, struct fw_err *err)
{
	struct fw_model m = { .size = sizeof(m), .ctx = c, .host = fw_host_table(),
			      .batch = in[0]->ne[0], .seq_len = in[0]->ne[1],
			      .training = a->training };
	struct fw_attn_spec spec = {
		.size = sizeof(spec), .name = "test.attn", .n_head = a->n_head,
		.n_kv_head = a->n_kv_head, .head_dim = a->head_dim,
		.mask = a->causal ? FW_MASK_CAUSAL : a->cross ? FW_MASK_CROSS : FW_MASK_BIDIRECTIONAL,
		.pos = a->pos,
		.rope_base = 10000.0f, .rope_dim = a->rope_dim, .rope_interleaved = a->interleaved,
		.dropout = a->dropout, .seed = 4242,
	};
	int k = 3;
	if (a->with_bias)
		spec.bias = in[k++];
	if (a->with_positions)
		m.positions = in[k++];
	if (a->pos == FW_POS_RELATIVE)
		spec.pos_bias = in[k++];
	const struct fw_attention_i *ai = p->desc->iface;
	return ai->attend(p->state, &m, &spec, in[0], in[1], in[2], err);
}

static struct fw_tensor *b_attend(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	const struct attend_args *a = u;
	struct fw_err err = { 0 };
	load_all();
	struct fw_tensor *y = attend(c, in, a, *a->plugin, &err);
	if (!y)
		fprintf(stderr, "attend: %s\n", err.msg);
	return y;
}

#define F(nm, ...) { .name = nm, .ndim = sizeof((int64_t[]){ __VA_ARGS__ }) / 8, \
		     .ne = { __VA_ARGS__ }, .grad = true }
#define CONSTF(nm, ptr, ...) { .name = nm, .ndim = sizeof((int64_t[]){ __VA_ARGS__ }) / 8, \
			       .ne = { __VA_ARGS__ }, .data = ptr }
#define INT(nm, ptr, ...) { .name = nm, .dtype = FW_I32, \
			    .ndim = sizeof((int64_t[]){ __VA_ARGS__ }) / 8, \
			    .ne = { __VA_ARGS__ }, .data = ptr }

struct acase {
	const char *name;
	struct attend_args a;
	int n;
	struct fwt_input in[5];
};

#define FS (&flash_small)

static const struct acase grad_cases[] = {
	{ "MHA 3 heads, D 40, T 37, causal", AA(FS, 3, 3, 40, FW_POS_NONE, .causal = true), 3,
	  { F("q", 1, 37, 3, 40), F("k", 1, 37, 3, 40), F("v", 1, 37, 3, 40) } },
	{ "GQA 6/2, D 64, T 37, bidirectional", AA(FS, 6, 2, 64, FW_POS_NONE), 3,
	  { F("q", 1, 37, 6, 64), F("k", 1, 37, 2, 64), F("v", 1, 37, 2, 64) } },
	{ "MQA 3/1 + ALiBi, D 40, T 70, causal",
	  AA(FS, 3, 1, 40, FW_POS_ALIBI, .causal = true), 3,
	  { F("q", 1, 70, 3, 40), F("k", 1, 70, 1, 40), F("v", 1, 70, 1, 40) } },
	{ "MQA 5/1 + ALiBi, D 40, T 37, bidirectional", AA(FS, 5, 1, 40, FW_POS_ALIBI), 3,
	  { F("q", 1, 37, 5, 40), F("k", 1, 37, 1, 40), F("v", 1, 37, 1, 40) } },
	{ "MQA 3/1 + RoPE NeoX, packed + padding, causal, D 40",
	  AA(FS, 3, 1, 40, FW_POS_ROPE, .causal = true, .with_bias = true,
	     .with_positions = true), 5,
	  { F("q", 2, 37, 3, 40), F("k", 2, 37, 1, 40), F("v", 2, 37, 1, 40),
	    CONSTF("bias", seg_bias, 2, 1, 37, 37), INT("pos", seg_pos, 2, 37) } },
	{ "MHA 3 + ALiBi, packed + padding, bidirectional, D 40",
	  AA(FS, 3, 3, 40, FW_POS_ALIBI, .with_bias = true, .with_positions = true), 5,
	  { F("q", 2, 37, 3, 40), F("k", 2, 37, 3, 40), F("v", 2, 37, 3, 40),
	    CONSTF("bias", seg_bias, 2, 1, 37, 37), INT("pos", seg_pos, 2, 37) } },
	{ "GQA 6/2 + dropout 0.3 (counter RNG), D 40, T 37, causal",
	  AA(FS, 6, 2, 40, FW_POS_NONE, .causal = true, .dropout = 0.3f, .training = true), 3,
	  { F("q", 1, 37, 6, 40), F("k", 1, 37, 2, 40), F("v", 1, 37, 2, 40) } },
	{ "MQA 3/1 + RoPE GPT-J partial 24, D 40, T 37, causal",
	  AA(FS, 3, 1, 40, FW_POS_ROPE, .rope_dim = 24, .interleaved = true, .causal = true), 3,
	  { F("q", 1, 37, 3, 40), F("k", 1, 37, 1, 40), F("v", 1, 37, 1, 40) } },
	/* T5: a relative bias (Hq, Tq, Tk) that trains (its gradient sums over
	 * the batch), with the encoder's key mask, causal, and GQA */
	{ "MHA 3 + relative bias + key mask (a hole), bidirectional, B 2, D 16",
	  AA(FS, 3, 3, 16, FW_POS_RELATIVE, .with_bias = true), 5,
	  { F("q", 2, 37, 3, 16), F("k", 2, 37, 3, 16), F("v", 2, 37, 3, 16),
	    CONSTF("keys", key_mask, 2, 1, 1, 37), F("pos_bias", 3, 37, 37) } },
	{ "MHA 3 + relative bias, causal, B 2, D 16, T 37",
	  AA(FS, 3, 3, 16, FW_POS_RELATIVE, .causal = true), 4,
	  { F("q", 2, 37, 3, 16), F("k", 2, 37, 3, 16), F("v", 2, 37, 3, 16),
	    F("pos_bias", 3, 37, 37) } },
	{ "GQA 6/2 + relative bias + dropout 0.2, causal, D 16, T 37",
	  AA(FS, 6, 2, 16, FW_POS_RELATIVE, .causal = true, .dropout = 0.2f, .training = true), 4,
	  { F("q", 1, 37, 6, 16), F("k", 1, 37, 2, 16), F("v", 1, 37, 2, 16),
	    F("pos_bias", 6, 37, 37) } },
	{ "cross-attention, 21 queries over 37 keys, key mask, MHA 3, D 16",
	  AA(FS, 3, 3, 16, FW_POS_NONE, .cross = true, .with_bias = true), 4,
	  { F("q", 2, 21, 3, 16), F("k", 2, 37, 3, 16), F("v", 2, 37, 3, 16),
	    CONSTF("keys", key_mask, 2, 1, 1, 37) } },
};

START_TEST(test_attend_grad)
{
	const struct acase *c = &grad_cases[_i];
	fill_masks();
	fill_key_mask();
	struct fwt_gc_opts o = { .seed = (uint64_t)_i + 200 };
	int r = fwt_gradcheck_ex(c->name, c->n, c->in, b_attend, (void *)&c->a, &o);
	ck_assert_msg(r == 0, "%s: gradient check failed (%d elements)", c->name, r);
}
END_TEST

/* --- flash == mha --------------------------------------------------------------------- */

struct vs_case {
	const char *name;
	int B, T, Hq, Hkv, D;
	enum fw_pos_kind pos;
	bool causal, masks;
};

static const struct vs_case vs_cases[] = {
	{ "causal, MHA 4, D 64, T 150", 2, 150, 4, 4, 64, FW_POS_NONE, true, false },
	{ "bidirectional, GQA 6/2, D 40, T 131", 1, 131, 6, 2, 40, FW_POS_NONE, false, false },
	{ "causal, MQA 5/1 + ALiBi, D 40, T 97", 2, 97, 5, 1, 40, FW_POS_ALIBI, true, false },
	{ "causal, GQA 6/3 + RoPE, packed + padding, D 64", 2, MT, 6, 3, 64, FW_POS_ROPE, true,
	  true },
	{ "bidirectional, packed + padding, ALiBi 3, D 40", 2, MT, 3, 3, 40, FW_POS_ALIBI, false,
	  true },
};

static void run_vs(const struct vs_case *c, struct fw_loaded *fl)
{
	int B = c->B, T = c->T, Hq = c->Hq, Hkv = c->Hkv, D = c->D;
	int64_t nq = (int64_t)B * T * Hq * D, nk = (int64_t)B * T * Hkv * D;
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *x[2][3], *y[2];
	struct fw_tensor *r = fw_input(ctx, "r", FW_F32, 4, (int64_t[]){ B, T, Hq, D });
	struct fw_tensor *bias = fw_input(ctx, "bias", FW_F32, 4, (int64_t[]){ B, 1, T, T });
	struct fw_tensor *pos = fw_input(ctx, "pos", FW_I32, 2, (int64_t[]){ B, T });
	struct attend_args a = AA(NULL, Hq, Hkv, D, c->pos, .causal = c->causal,
				  .with_bias = c->masks, .with_positions = c->masks);
	struct fw_tensor *loss = NULL;
	for (int s = 0; s < 2; s++) {
		char nm[8];
		for (int i = 0; i < 3; i++) {
			snprintf(nm, sizeof(nm), "%c%d", "qkv"[i], s);
			x[s][i] = fw_param(ctx, nm, FW_F32, 4,
					   (int64_t[]){ B, T, i ? Hkv : Hq, D }, true);
		}
		struct fw_err err = { 0 };
		struct fw_tensor *in[5] = { x[s][0], x[s][1], x[s][2], bias, pos };
		y[s] = attend(ctx, in, &a, s ? mha : fl, &err);
		ck_assert_msg(y[s] != NULL, "%s", err.msg);
		struct fw_tensor *l = fw_sum(ctx, fw_mul(ctx, y[s], r), FW_AXIS_ALL, false);
		loss = loss ? fw_add(ctx, loss, l) : l;
	}
	ck_assert_msg(loss != NULL, "%s", fw_ctx_err(ctx)->msg);
	struct fw_graph *g = fw_graph_new(ctx, (struct fw_tensor *[]){ loss, y[0], y[1] }, 3,
					  &(struct fw_graph_opts){ .backward = true,
								   .training = true });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	struct fwt_rng rng = fwt_rng_new(17);
	for (int i = 0; i < 3; i++) {
		int64_t n = i ? nk : nq;
		fwt_fill_uniform(fw_f32(x[0][i]), n, &rng, -2, 2);
		memcpy(fw_f32(x[1][i]), fw_f32(x[0][i]), sizeof(float) * (size_t)n);
	}
	fwt_fill_uniform(fw_f32(r), nq, &rng, -1, 1);
	if (c->masks) {
		memcpy(fw_f32(bias), seg_bias, sizeof(seg_bias));
		memcpy(fw_i32(pos), seg_pos, sizeof(seg_pos));
	}
	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	ck_assert_int_eq(fw_graph_backward(g), FW_OK);
	/* relative to the tensor's scale: |a - b| <= rtol |b| + rtol max|b| */
	static const char *const names[3] = { "dq", "dk", "dv" };
	float ymax = 0;
	for (int64_t i = 0; i < nq; i++)
		ymax = fmaxf(ymax, fabsf(fw_f32(y[1])[i]));
	ck_assert_int_eq(fwt_allclose("y", fw_f32(y[0]), fw_f32(y[1]), nq, 1e-5, 1e-5 * ymax), 0);
	for (int i = 0; i < 3; i++) {
		int64_t n = i ? nk : nq;
		const float *gm = fw_f32(x[1][i]->grad);
		float gmax = 0;
		for (int64_t e = 0; e < n; e++)
			gmax = fmaxf(gmax, fabsf(gm[e]));
		ck_assert_msg(gmax > 0, "%s of mha is all zero", names[i]);
		ck_assert_int_eq(fwt_allclose(names[i], fw_f32(x[0][i]->grad), gm, n, 1e-4,
					      1e-4 * gmax), 0);
	}
	fw_graph_free(g);
	fw_ctx_free(ctx);
}

START_TEST(test_equals_mha)
{
	load_all();
	fill_masks();
	run_vs(&vs_cases[_i], flash_def);
	run_vs(&vs_cases[_i], flash_small);
}
END_TEST

/* --- half precision in -------------------------------------------------------------- */

/* bf16 and f16 q, k, v (autocast's projections) are read by the kernel
 * as they are (with a relative bias k and v through their concat, which
 * stays half): the same output and gradients, bit for bit, as f32 q, k, v
 * holding the same (rounded) values, under a key mask; with a relative
 * bias dk and dv are the f32 ones rounded once (the concat's gradient is
 * half, as torch's autograd keeps k's and v's). */
static void run_half(enum fw_dtype dt, enum fw_pos_kind pos)
{
	enum { B = 2, T = 37, H = 3, D = 20 };
	int64_t nq = (int64_t)B * T * H * D;
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *x[2][3], *y[2], *loss = NULL;
	struct fw_tensor *r = fw_input(ctx, "r", FW_F32, 4, (int64_t[]){ B, T, H, D });
	struct fw_tensor *keys = fw_input(ctx, "keys", FW_F32, 4, (int64_t[]){ B, 1, 1, T });
	struct fw_tensor *pb = fw_param(ctx, "pb", FW_F32, 3, (int64_t[]){ H, T, T }, true);
	struct attend_args a = AA(NULL, H, H, D, pos, .with_bias = true);
	for (int s = 0; s < 2; s++) {
		struct fw_tensor *in[5];
		for (int i = 0; i < 3; i++) {
			char nm[8];
			snprintf(nm, sizeof(nm), "%c%d", "qkv"[i], s);
			x[s][i] = fw_param(ctx, nm, FW_F32, 4, (int64_t[]){ B, T, H, D }, true);
			in[i] = s ? x[s][i] : fw_cast(ctx, x[s][i], dt);
		}
		in[3] = keys;
		in[4] = pb;
		struct fw_err err = { 0 };
		y[s] = attend(ctx, in, &a, flash_small, &err);
		ck_assert_msg(y[s] != NULL, "%s", err.msg);
		struct fw_tensor *l = fw_sum(ctx, fw_mul(ctx, y[s], r), FW_AXIS_ALL, false);
		loss = loss ? fw_add(ctx, loss, l) : l;
	}
	struct fw_graph *g = fw_graph_new(ctx, (struct fw_tensor *[]){ loss, y[0], y[1] }, 3,
					  &(struct fw_graph_opts){ .backward = true,
								   .training = true });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	struct fwt_rng rng = fwt_rng_new(23);
	for (int i = 0; i < 3; i++) {
		float *v0 = fw_f32(x[0][i]);
		fwt_fill_uniform(v0, nq, &rng, -2, 2);
		for (int64_t e = 0; e < nq; e++)       /* values the half type holds exactly */
			v0[e] = dt == FW_BF16 ? fw_bf16_to_f32(fw_f32_to_bf16(v0[e])) :
				fw_f16_to_f32(fw_f32_to_f16(v0[e]));
		memcpy(fw_f32(x[1][i]), v0, sizeof(float) * (size_t)nq);
	}
	fwt_fill_uniform(fw_f32(r), nq, &rng, -1, 1);
	fwt_fill_uniform(fw_f32(pb), (int64_t)H * T * T, &rng, -1, 1);
	fill_key_mask();
	memcpy(fw_f32(keys), key_mask, sizeof(key_mask));
	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	ck_assert_int_eq(fw_graph_backward(g), FW_OK);
	ck_assert_msg(!memcmp(fw_f32(y[0]), fw_f32(y[1]), sizeof(float) * (size_t)nq),
		      "%s q, k, v: another output than f32", fw_dtype_name(dt));
	for (int i = 0; i < 3; i++) {
		const float *gh = fw_f32(x[0][i]->grad), *gf = fw_f32(x[1][i]->grad);
		bool rounded = i && pos == FW_POS_RELATIVE;
		for (int64_t e = 0; e < nq; e++)
			ck_assert_msg(gh[e] == (rounded ? (float)fwt_round_to(dt, gf[e]) : gf[e]),
				      "%s q, k, v: d%c[%lld] %.9g differs from f32's %.9g%s",
				      fw_dtype_name(dt), "qkv"[i], (long long)e, (double)gh[e],
				      (double)gf[e], rounded ? " rounded once" : "");
	}
	if (pos == FW_POS_RELATIVE)     /* no f32 copy of k and v */
		for (int i = 0; i < fw_ctx_n_tensors(ctx); i++) {
			const struct fw_tensor *t = fw_ctx_tensor(ctx, i);
			ck_assert_msg(!(t->op == FW_OP_CAST && t->dtype == FW_F32),
				      "%s: a cast to f32 in the graph", fw_dtype_name(dt));
		}
	fw_graph_free(g);
	fw_ctx_free(ctx);
}

START_TEST(test_half_inputs)
{
	load_all();
	run_half(FW_BF16, FW_POS_NONE);
	run_half(FW_F16, FW_POS_NONE);
	run_half(FW_BF16, FW_POS_RELATIVE);
}
END_TEST

/* Decoding under --bf16/--fp16: new half k and v go into the half cache
 * as they are (no f32 round trip), f32 ones (after RoPE) rounded once; the
 * cache holds what rounding an f32 cache's values gives, and the outputs
 * are those of f32 inputs of the same values (fwt_check_half_decode). */
START_TEST(test_half_cache)
{
	load_all();
	fwt_check_half_decode(flash_def, FW_BF16, FW_POS_NONE);
	fwt_check_half_decode(flash_def, FW_F16, FW_POS_NONE);
	fwt_check_half_decode(flash_small, FW_BF16, FW_POS_ROPE);
}
END_TEST

/* --- threads, memory ------------------------------------------------------------------- */

START_TEST(test_threads)
{
	static const struct attend_args a = AA(&flash_def, 6, 2, 64, FW_POS_ALIBI, .causal = true,
					       .with_bias = true, .with_positions = true);
	struct fwt_input in[5] = { F("q", 2, 37, 6, 64), F("k", 2, 37, 2, 64),
				   F("v", 2, 37, 2, 64), CONSTF("bias", seg_bias, 2, 1, 37, 37),
				   INT("pos", seg_pos, 2, 37) };
	static const struct attend_args big = AA(&flash_small, 4, 4, 40, FW_POS_NONE,
						 .causal = true);
	struct fwt_input inb[3] = { F("q", 1, 300, 4, 40), F("k", 1, 300, 4, 40),
				    F("v", 1, 300, 4, 40) };
	load_all();
	fill_masks();
	/* each task writes its own rows and tiles: bit-identical with any threads */
	ck_assert_int_eq(fwt_threadcheck("flash packed", 5, in, b_attend, (void *)&a, 4, 0), 0);
	ck_assert_int_eq(fwt_threadcheck("flash T 300", 3, inb, b_attend, (void *)&big, 3, 0), 0);
}
END_TEST

/* Planned attention memory (activations, their gradients, workspace): flash's
 * grows as T, mha's as T^2. */
static size_t planned(struct fw_loaded *p, int T)
{
	enum { H = 4, D = 32 };
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *in[3];
	for (int i = 0; i < 3; i++)
		in[i] = fw_param(ctx, i == 0 ? "q" : i == 1 ? "k" : "v", FW_F32, 4,
				 (int64_t[]){ 1, T, H, D }, true);
	struct attend_args a = AA(NULL, H, H, D, FW_POS_NONE, .causal = true);
	struct fw_err err = { 0 };
	struct fw_tensor *y = attend(ctx, in, &a, p, &err);
	ck_assert_msg(y != NULL, "%s", err.msg);
	struct fw_tensor *loss = fw_sum(ctx, fw_mul(ctx, y, y), FW_AXIS_ALL, false);
	struct fw_graph *g = fw_graph_new(ctx, &loss, 1,
					  &(struct fw_graph_opts){ .backward = true,
								   .training = true });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	struct fw_memory_report mr;
	fw_graph_memory(g, &mr);
	size_t n = mr.bytes[FW_MEM_ACTIVATIONS] + mr.bytes[FW_MEM_WORKSPACE];
	fw_graph_free(g);
	fw_ctx_free(ctx);
	return n;
}

START_TEST(test_memory_linear)
{
	load_all();
	size_t f1 = planned(flash_def, 512), f2 = planned(flash_def, 1024);
	size_t m2 = planned(mha, 1024);
	/* (1, T, 4, 32) f32 is 64 KiB at T = 512: a (4, T, T) matrix would be 4 MiB */
	ck_assert_msg(f2 <= 2 * f1 + 4096, "flash: %zu bytes at T 512, %zu at 1024", f1, f2);
	ck_assert_msg(f2 * 10 <= m2, "flash %zu bytes, mha %zu at T 1024", f2, m2);
}
END_TEST

/* --- refusals ------------------------------------------------------------------------------ */

START_TEST(test_bad_specs)
{
	static const struct {
		struct attend_args a;
		int hq, hkv, d;
		const char *expect;
	} bad[] = {
		{ AA(NULL, 6, 4, 40, FW_POS_NONE), 6, 4, 40, "not a multiple of 4 KV heads" },
		{ AA(NULL, 4, 4, 40, FW_POS_ROPE, .rope_dim = 5), 4, 4, 40, "rotary dim 5 must be even" },
		{ AA(NULL, 4, 4, 40, FW_POS_ROPE, .rope_dim = 48), 4, 4, 40, "at most the head dim 40" },
		{ AA(NULL, 2, 2, 8, FW_POS_RELATIVE), 2, 2, 8,
		  "the relative position bias must be f32 (2, 3, 3)" },
		{ AA(NULL, 4, 4, 8, FW_POS_NONE, .dropout = 1.0f, .training = true), 4, 4, 8,
		  "attention dropout 1 is not in [0, 1)" },
	};
	load_all();
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct fw_ctx *ctx = fw_ctx_new();
		struct fw_err err = { 0 };
		struct fw_tensor *q = fw_input(ctx, "q", FW_F32, 4,
					       (int64_t[]){ 1, 3, bad[i].hq, bad[i].d });
		struct fw_tensor *kv = fw_input(ctx, "kv", FW_F32, 4,
						(int64_t[]){ 1, 3, bad[i].hkv, bad[i].d });
		struct fw_tensor *pb = fw_input(ctx, "pb", FW_F32, 3, (int64_t[]){ 4, 3, 3 });
		struct fw_tensor *in[4] = { q, kv, kv, pb };
		struct fw_tensor *y = attend(ctx, in, &bad[i].a, flash_def, &err);
		ck_assert_msg(y == NULL && err.status == FW_ERR_INVALID &&
			      strstr(err.msg, bad[i].expect) &&
			      strstr(err.msg, "attention/flash: test.attn: ") && !strchr(err.msg, '\n'),
			      "case %zu: got '%s', want one line with '%s'", i, err.msg,
			      bad[i].expect);
		fw_ctx_free(ctx);
	}
	/* q, k, v that disagree with the spec: a shape error, one line */
	{
		struct fw_ctx *ctx = fw_ctx_new();
		struct fw_err err = { 0 };
		struct fw_tensor *q = fw_input(ctx, "q", FW_F32, 4, (int64_t[]){ 1, 3, 4, 40 });
		struct attend_args a = AA(NULL, 4, 2, 40, FW_POS_NONE);
		ck_assert(attend(ctx, (struct fw_tensor *[]){ q, q, q }, &a, flash_def, &err) == NULL);
		ck_assert_msg(err.status == FW_ERR_SHAPE && strstr(err.msg, "k, v (B, T, 2, 40)") &&
			      !strchr(err.msg, '\n'), "got '%s'", err.msg);
		fw_ctx_free(ctx);
	}
	/* dropout is fine when not training (eval, generation) */
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_err err = { 0 };
	struct fw_tensor *q = fw_input(ctx, "q", FW_F32, 4, (int64_t[]){ 1, 3, 2, 8 });
	struct attend_args a = AA(NULL, 2, 2, 8, FW_POS_NONE, .dropout = 0.1f);
	ck_assert_msg(attend(ctx, (struct fw_tensor *[]){ q, q, q }, &a, flash_def, &err) != NULL,
		      "%s", err.msg);
	fw_ctx_free(ctx);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("flash");
	TCase *gc = fwt_tcase("gradcheck", 600);
	tcase_add_loop_test(gc, test_attend_grad, 0,
			    (int)(sizeof(grad_cases) / sizeof(grad_cases[0])));
	suite_add_tcase(s, gc);
	TCase *half = fwt_tcase("half", 300);
	tcase_add_test(half, test_half_inputs);
	tcase_add_test(half, test_half_cache);
	suite_add_tcase(s, half);
	TCase *vs = fwt_tcase("mha", 300);
	tcase_add_loop_test(vs, test_equals_mha, 0, (int)(sizeof(vs_cases) / sizeof(vs_cases[0])));
	tcase_add_test(vs, test_threads);
	tcase_add_test(vs, test_memory_linear);
	tcase_add_test(vs, test_bad_specs);
	suite_add_tcase(s, vs);
	return fwt_run_suite(s);
}
