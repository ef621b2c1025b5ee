/* test_sparse.c - attention/sparse:
 *  - finite-difference gradient checks (fwt_gradcheck) of whole attend()
 *    calls for every pattern, causal and bidirectional, on odd shapes: T not
 *    a multiple of the block or stride, heads not a power of two (3, 5, 6),
 *    head_dim 40 and 64, GQA/MQA, RoPE, ALiBi, packed rows;
 *  - against attention/mha given the same pattern as a dense additive mask
 *    built here from the papers' definitions (ref_allowed below, written
 *    without the plugin's interval code): forward 1e-5 relative, dQ, dK, dV
 *    1e-4 relative, for each pattern, causal and bidirectional, packed SFT
 *    rows (positions restarting, segment bias), and a window >= T without
 *    any mask;
 *  - decoding with the KV cache, one token at a time, equals the full causal
 *    forward row by row, for every pattern;
 *  - 1 and 2 threads give the same values, bit for bit;
 *  - bf16 and f16 under autocast: q read in half, and decoding's half KV
 *    cache read in place, bit-identical to f32 inputs of the same values,
 *    the cache holding each f32 value rounded once (an oracle in double);
 *  - T5's relative bias (H, Tq, Tk), trained: finite-difference checks of
 *    its gradient (summed over the batch) with q, k, v, under a window and
 *    BigBird, with a key mask (B, 1, 1, Tk) holding a hole; cross-attention
 *    (dense: every key, 7 queries over 13 keys) under a key mask;
 *  - refusals: one line naming the layer or the option.
 * tests/sparse_parity.py checks the same patterns through fwrun against torch.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

enum { P_WINDOW, P_STRIDED, P_FIXED, P_BIGBIRD };
static const char *const pat_names[] = { "window", "strided", "fixed", "bigbird" };

/* A pattern and its parameters, as the options set them. */
struct pat {
	int kind;
	int64_t w;                   /* window */
	int64_t glob[4], n_glob;     /* window: listed globals */
	int64_t first;               /* window: the first n are global */
	int64_t l, c;                /* strided, fixed */
	int64_t bs, r, g;            /* bigbird */
	int64_t seed;
};

/* --- the reference pattern, from the definitions ----------------------------------- */

static uint64_t mix(uint64_t x)   /* splitmix64, as the README specifies */
{
	x += 0x9E3779B97F4A7C15ull;
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
	x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
	return x ^ (x >> 31);
}

/* BigBird: is key block kb one of query block qb's random blocks? The
 * candidates are the blocks k >= g with |k - qb| > 1 (causal: k < qb - 1),
 * in increasing order; r of them are drawn by Floyd's algorithm. */
static bool ref_random(const struct pat *p, int layer, int h, int64_t qb, int64_t kb,
		       int64_t nb, bool causal)
{
	int64_t cand[512], nc = 0, S[64], n = 0;
	for (int64_t k = p->g; k < nb; k++)
		if (!(k >= qb - 1 && k <= qb + 1) && !(causal && k >= qb - 1))
			cand[nc++] = k;
	if (nc <= p->r) {
		for (int64_t t = 0; t < nc; t++)
			if (cand[t] == kb)
				return true;
		return false;
	}
	for (int64_t t = 0, j = nc - p->r; j < nc; t++, j++) {
		uint64_t x = (uint64_t)p->seed;
		x = mix(x ^ (uint64_t)layer);
		x = mix(x ^ (uint64_t)h);
		x = mix(x ^ (uint64_t)qb);
		x = mix(x ^ (uint64_t)t);
		int64_t u = (int64_t)(x % (uint64_t)(j + 1));
		bool seen = false;
		for (int64_t s = 0; s < n; s++)
			seen |= S[s] == u;
		S[n++] = seen ? j : u;
	}
	for (int64_t s = 0; s < n; s++)
		if (cand[S[s]] == kb)
			return true;
	return false;
}

static bool ref_global(const struct pat *p, int64_t t)
{
	if (t < p->first)
		return true;
	for (int64_t k = 0; k < p->n_glob; k++)
		if (p->glob[k] == t)
			return true;
	return false;
}

/* May query position i attend key position j (0 <= i, j < n)? */
static bool ref_allowed(const struct pat *p, int64_t i, int64_t j, int64_t n, bool causal,
			int layer, int h)
{
	if (causal && j > i)
		return false;
	int64_t d = i > j ? i - j : j - i;
	switch (p->kind) {
	case P_WINDOW:      /* Longformer: |i - j| < w (causal: 0 <= i - j < w), globals */
		return d < p->w || ref_global(p, i) || ref_global(p, j);
	case P_STRIDED:     /* Child et al. A1: |i - j| <= l; A2: (i - j) mod l == 0 */
		return d <= p->l || d % p->l == 0;
	case P_FIXED:       /* A1: same block of l; A2: j mod l >= l - c */
		return i / p->l == j / p->l || j % p->l >= p->l - p->c;
	default: {          /* BigBird: global blocks, 3 sliding blocks, random blocks */
		int64_t qb = i / p->bs, kb = j / p->bs;
		return qb < p->g || kb < p->g || (qb - kb <= 1 && kb - qb <= 1) ||
		       ref_random(p, layer, h, qb, kb, (n + p->bs - 1) / p->bs, causal);
	}
	}
}

/* --- plugins -------------------------------------------------------------------------- */

/* Every plugin a test opened, closed by the fixture after the test. */
static struct fw_loaded *opened[64];
static int n_opened;

static void close_opened(void)
{
	while (n_opened > 0)
		fw_plugin_close(opened[--n_opened]);
}

static struct fw_loaded *open_plugin(const char *name, const char *const *opts,
				     struct fw_err *err)
{
	struct fw_loaded *p = NULL;
	const char *b = getenv("FW_BUILD_DIR");
	char path[4200];
	snprintf(path, sizeof(path), "%s/plugins/%s.so", b ? b : ".", name);
	ck_assert_msg(fw_plugin_open(path, FW_KIND_ATTENTION, &p, err) == FW_OK, "%s", err->msg);
	for (int i = 0; opts && opts[i]; i += 2)
		ck_assert_msg(fw_options_set(p->opts, opts[i], opts[i + 1], err) == FW_OK, "%s",
			      err->msg);
	ck_assert_msg(fw_options_resolve(p->opts, err) == FW_OK, "%s", err->msg);
	if (fw_plugin_init(p, NULL, err) != FW_OK) {
		fw_plugin_close(p);
		return NULL;
	}
	ck_assert_int_lt(n_opened, (int)(sizeof(opened) / sizeof(opened[0])));
	opened[n_opened++] = p;
	return p;
}

static struct fw_loaded *open_sparse(const struct pat *p)
{
	static char v[9][64];
	const char *o[24] = { "sparse-pattern", pat_names[p->kind] };
	int n = 2;
#define OPT(name, fmt, val) (snprintf(v[n / 2], sizeof(v[0]), fmt, val), o[n++] = name, \
			     o[n] = v[n / 2], n++)
	OPT("sparse-window", "%lld", (long long)(p->w ? p->w : 256));
	OPT("sparse-stride", "%lld", (long long)(p->l ? p->l : 128));
	OPT("sparse-summary", "%lld", (long long)(p->c ? p->c : 8));
	OPT("sparse-block", "%lld", (long long)(p->bs ? p->bs : 64));
	OPT("sparse-random-blocks", "%lld", (long long)p->r);
	OPT("sparse-global-blocks", "%lld", (long long)p->g);
	OPT("sparse-seed", "%lld", (long long)p->seed);
	OPT("sparse-global-first", "%lld", (long long)p->first);
#undef OPT
	static char gl[64];
	gl[0] = 0;
	for (int64_t k = 0; k < p->n_glob; k++)
		snprintf(gl + strlen(gl), sizeof(gl) - strlen(gl), "%s%lld", k ? "," : "",
			 (long long)p->glob[k]);
	o[n++] = "sparse-global";
	o[n++] = gl;
	o[n] = NULL;
	struct fw_err err = { 0 };
	struct fw_loaded *l = open_plugin("attention/sparse", o, &err);
	ck_assert_msg(l != NULL, "%s", err.msg);
	return l;
}

/* --- attend --------------------------------------------------------------------------- */

struct acfg {
	struct pat p;
	int hq, hkv, d;
	bool causal;
	enum fw_pos_kind pos;
	bool packed;                 /* bias (B, 1, T, T) and positions (B, T) inputs */
	int layer;
};

struct call {
	struct fw_loaded *plugin;
	const struct acfg *a;
	struct fw_tensor *pos_bias;  /* mha only: per-head mask */
};

/* in: q, k, v, then bias and positions when packed */
static struct fw_tensor *attend(struct fw_ctx *c, struct fw_tensor *const *in,
				const struct call *cl, enum fw_mask_kind mask)
{
	const struct acfg *a = cl->a;
	struct fw_err err = { 0 };
	struct fw_model m = { .size = sizeof(m), .ctx = c, .host = fw_host_table(),
			      .batch = in[0]->ne[0], .seq_len = in[0]->ne[1], .training = true };
	struct fw_attn_spec spec = {
		.size = sizeof(spec), .name = "test.attn", .layer = a->layer, .n_head = a->hq,
		.n_kv_head = a->hkv, .head_dim = a->d, .mask = mask, .pos = a->pos,
		.rope_base = 10000.0f,
	};
	if (a->packed) {
		spec.bias = in[3];
		m.positions = in[4];
	}
	if (cl->pos_bias) {
		spec.pos = FW_POS_RELATIVE;
		spec.pos_bias = cl->pos_bias;
	}
	const struct fw_attention_i *ai = cl->plugin->desc->iface;
	struct fw_tensor *y = ai->attend(cl->plugin->state, &m, &spec, in[0], in[1], in[2], &err);
	if (!y)
		fprintf(stderr, "attend: %s\n", err.msg);
	return y;
}

static struct fw_tensor *b_sparse(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	const struct call *cl = u;
	return attend(c, in, cl, cl->a->causal ? FW_MASK_CAUSAL : FW_MASK_BIDIRECTIONAL);
}

/* Packed rows: B = 2, row 0 holds examples [0, s0) and [s0, T), row 1 one
 * example [0, T - 3) then padding. */
static void packed_rows(int64_t T, int32_t *seg)
{
	int64_t s0 = T / 2 - 1;
	for (int64_t t = 0; t < T; t++) {
		seg[t] = t < s0 ? 1 : 2;
		seg[T + t] = t < T - 3 ? 1 : 0;
	}
}

/* positions and bias as fwrun's dataset_masks makes them */
static void packed_masks(int64_t T, int32_t *pos, float *bias)
{
	int32_t seg[2 * 64];
	packed_rows(T, seg);
	for (int64_t b = 0; b < 2; b++) {
		int32_t p = 0;
		for (int64_t i = 0; i < T; i++) {
			const int32_t *s = seg + b * T;
			p = i && s[i] == s[i - 1] ? p + 1 : 0;
			pos[b * T + i] = s[i] ? p : 0;
			for (int64_t j = 0; j < T; j++)
				bias[(b * T + i) * T + j] = s[i] && s[j] == s[i] ? 0.0f : -INFINITY;
		}
	}
}

#define W(...) { .kind = P_WINDOW, __VA_ARGS__ }
#define S(...) { .kind = P_STRIDED, __VA_ARGS__ }
#define FX(...) { .kind = P_FIXED, __VA_ARGS__ }
#define BB(...) { .kind = P_BIGBIRD, __VA_ARGS__ }
#define AC(P, HQ, HKV, DD, ...) { .p = P, .hq = HQ, .hkv = HKV, .d = DD, __VA_ARGS__ }

struct ccase {
	const char *name;
	struct acfg a;
	int64_t B, T;
};

/* Shared by the gradient checks and the comparison with mha. */
static const struct ccase cases[] = {
	{ "window 4 + globals {0, 6}, causal, GQA 6/2, D 40, RoPE",
	  AC(W(.w = 4, .glob = { 6, 0 }, .n_glob = 2), 6, 2, 40, .causal = true, .pos = FW_POS_ROPE), 2, 13 },
	{ "window 3 + first 2 global, bidirectional, MQA 5/1, D 40, ALiBi",
	  AC(W(.w = 3, .first = 2), 5, 1, 40, .causal = false, .pos = FW_POS_ALIBI), 1, 11 },
	{ "strided l 3, causal, 3 heads, D 64",
	  AC(S(.l = 3), 3, 3, 64, .causal = true, .pos = FW_POS_NONE), 2, 13 },
	{ "strided l 4, bidirectional, GQA 6/3, D 40, ALiBi",
	  AC(S(.l = 4), 6, 3, 40, .causal = false, .pos = FW_POS_ALIBI), 1, 14 },
	{ "fixed l 4 c 2, causal, GQA 6/2, D 40, RoPE",
	  AC(FX(.l = 4, .c = 2), 6, 2, 40, .causal = true, .pos = FW_POS_ROPE), 1, 13 },
	{ "fixed l 5 c 1, bidirectional, MQA 3/1, D 64",
	  AC(FX(.l = 5, .c = 1), 3, 1, 64, .causal = false, .pos = FW_POS_NONE), 2, 12 },
	{ "bigbird block 3, 2 random, 1 global, causal, GQA 6/2, D 40, layer 1",
	  AC(BB(.bs = 3, .r = 2, .g = 1, .seed = 7), 6, 2, 40, .causal = true, .pos = FW_POS_NONE, .layer = 1), 1, 20 },
	{ "bigbird block 2, 3 random, 2 global, bidirectional, 3 heads, D 64",
	  AC(BB(.bs = 2, .r = 3, .g = 2, .seed = 11), 3, 3, 64, .causal = false, .pos = FW_POS_NONE), 1, 17 },
	{ "packed rows: window 3, causal, GQA 6/3, D 40, RoPE",
	  AC(W(.w = 3, .first = 1), 6, 3, 40, .causal = true, .pos = FW_POS_ROPE, .packed = true), 2, 13 },
	{ "packed rows: fixed l 3 c 1, causal, 5 heads, D 40, ALiBi",
	  AC(FX(.l = 3, .c = 1), 5, 5, 40, .causal = true, .pos = FW_POS_ALIBI, .packed = true), 2, 13 },
	{ "packed rows: strided l 2, bidirectional, 3 heads, D 40",
	  AC(S(.l = 2), 3, 3, 40, .causal = false, .pos = FW_POS_NONE, .packed = true), 2, 11 },
	{ "packed rows: bigbird block 2, 1 random, causal, GQA 6/2, D 40",
	  AC(BB(.bs = 2, .r = 1, .g = 1, .seed = 3), 6, 2, 40, .causal = true, .pos = FW_POS_NONE, .packed = true),
	  1, 15 },
};

#define NCASES ((int)(sizeof(cases) / sizeof(cases[0])))

START_TEST(test_attend_grad)
{
	const struct ccase *c = &cases[_i];
	const struct acfg *a = &c->a;
	static int32_t pos[2 * 64];
	static float bias[2 * 64 * 64];
	packed_masks(c->T, pos, bias);
	struct call cl = { open_sparse(&a->p), a, NULL };
	struct fwt_input in[5] = {
		{ .name = "q", .ndim = 4, .ne = { c->B, c->T, a->hq, a->d }, .grad = true },
		{ .name = "k", .ndim = 4, .ne = { c->B, c->T, a->hkv, a->d }, .grad = true },
		{ .name = "v", .ndim = 4, .ne = { c->B, c->T, a->hkv, a->d }, .grad = true },
		{ .name = "bias", .ndim = 4, .ne = { c->B, 1, c->T, c->T }, .data = bias },
		{ .name = "pos", .dtype = FW_I32, .ndim = 2, .ne = { c->B, c->T }, .data = pos },
	};
	struct fwt_gc_opts o = { .seed = (uint64_t)_i + 1 };
	int r = fwt_gradcheck_ex(c->name, a->packed ? 5 : 3, in, b_sparse, &cl, &o);
	ck_assert_msg(r == 0, "%s: gradient check failed (%d elements)", c->name, r);
}
END_TEST

/* --- half precision in ------------------------------------------------------------- */

/* Casts to f32 among ctx's nodes, and concats of dtype dt. */
static void count_copies(struct fw_ctx *ctx, enum fw_dtype dt, int *casts_f32, int *cats_dt)
{
	*casts_f32 = *cats_dt = 0;
	for (int i = 0; i < fw_ctx_n_tensors(ctx); i++) {
		const struct fw_tensor *t = fw_ctx_tensor(ctx, i);
		*casts_f32 += t->op == FW_OP_CAST && t->dtype == FW_F32;
		*cats_dt += t->op == FW_OP_CONCAT && t->dtype == dt;
	}
}

/* Training under --bf16/--fp16 (autocast): q, k, v arrive in half and the
 * kernel reads them as they are (k and v through their concat, which keeps
 * them half: no f32 copy, no cast in the graph): the same output and dq,
 * bit for bit, as f32 inputs holding the same (rounded) values; dk and dv
 * are the f32 run's rounded once to the half dtype (the concat's gradient
 * is half, as torch's autograd keeps k's and v's under autocast). */
static void run_half(enum fw_dtype dt, const struct ccase *c)
{
	const struct acfg *a = &c->a;
	struct call cl = { open_sparse(&a->p), a, NULL };
	static int32_t pos[2 * 64];
	static float bias[2 * 64 * 64];
	if (a->packed) {
		ck_assert(c->B <= 2 && c->T <= 64);
		packed_masks(c->T, pos, bias);
	}
	struct fw_ctx *ctx = fw_ctx_new();
	ck_assert_int_eq(fw_ctx_set_autocast(ctx, dt), FW_OK);
	int64_t ne[3][4] = { { c->B, c->T, a->hq, a->d }, { c->B, c->T, a->hkv, a->d },
			     { c->B, c->T, a->hkv, a->d } };
	int64_t nq = c->B * c->T * a->hq * a->d;
	struct fw_tensor *x[2][3], *y[2], *loss = NULL;
	struct fw_tensor *r = fw_input(ctx, "r", FW_F32, 4, ne[0]);
	struct fw_tensor *tb = fw_input(ctx, "bias", FW_F32, 4, (int64_t[]){ c->B, 1, c->T, c->T });
	struct fw_tensor *tp = fw_input(ctx, "pos", FW_I32, 2, (int64_t[]){ c->B, c->T });
	for (int s = 0; s < 2; s++) {
		struct fw_tensor *in[5] = { NULL, NULL, NULL, tb, tp };
		for (int i = 0; i < 3; i++) {
			char nm[8];
			snprintf(nm, sizeof(nm), "%c%d", "qkv"[i], s);
			x[s][i] = fw_param(ctx, nm, FW_F32, 4, ne[i], true);
			in[i] = s ? x[s][i] : fw_cast(ctx, x[s][i], dt);
		}
		y[s] = b_sparse(ctx, in, &cl);
		ck_assert(y[s] != NULL);
		struct fw_tensor *l = fw_sum(ctx, fw_mul(ctx, y[s], r), FW_AXIS_ALL, false);
		loss = loss ? fw_add(ctx, loss, l) : l;
	}
	ck_assert_int_eq(y[0]->src[0]->dtype, dt);   /* q read in half */
	ck_assert_int_eq(y[0]->src[1]->op, FW_OP_CONCAT);
	ck_assert_int_eq(y[0]->src[1]->dtype, dt);   /* k and v too */
	int casts_f32, cats_dt;
	count_copies(ctx, dt, &casts_f32, &cats_dt);
	ck_assert_msg(casts_f32 == 0 && cats_dt == 1, "%s: %d casts to f32, %d %s concats",
		      c->name, casts_f32, cats_dt, fw_dtype_name(dt));
	struct fw_graph *g = fw_graph_new(ctx, (struct fw_tensor *[]){ loss, y[0], y[1] }, 3,
					  &(struct fw_graph_opts){ .backward = true,
								   .training = true });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	struct fwt_rng rng = fwt_rng_new(29);
	for (int i = 0; i < 3; i++) {
		int64_t n = fw_nelem(x[0][i]);
		float *v0 = fw_f32(x[0][i]);
		fwt_fill_uniform(v0, n, &rng, -2, 2);
		for (int64_t e = 0; e < n; e++)
			v0[e] = (float)fwt_round_to(dt, v0[e]);
		memcpy(fw_f32(x[1][i]), v0, sizeof(float) * (size_t)n);
	}
	fwt_fill_uniform(fw_f32(r), nq, &rng, -1, 1);
	if (a->packed) {
		memcpy(fw_f32(tb), bias, sizeof(float) * (size_t)(c->B * c->T * c->T));
		memcpy(fw_i32(tp), pos, sizeof(int32_t) * (size_t)(c->B * c->T));
	}
	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	ck_assert_int_eq(fw_graph_backward(g), FW_OK);
	ck_assert_msg(!memcmp(fw_f32(y[0]), fw_f32(y[1]), sizeof(float) * (size_t)nq),
		      "%s: %s q, k, v: another output than f32", c->name, fw_dtype_name(dt));
	ck_assert_msg(!memcmp(fw_f32(x[0][0]->grad), fw_f32(x[1][0]->grad),
			      sizeof(float) * (size_t)nq),
		      "%s: %s q, k, v: dq differs from f32's", c->name, fw_dtype_name(dt));
	for (int i = 1; i < 3; i++) {
		const float *gh = fw_f32(x[0][i]->grad), *gf = fw_f32(x[1][i]->grad);
		for (int64_t e = 0; e < fw_nelem(x[0][i]); e++)
			ck_assert_msg(gh[e] == (float)fwt_round_to(dt, gf[e]),
				      "%s: %s d%c[%lld] %.9g, want %.9g (f32's rounded once)",
				      c->name, fw_dtype_name(dt), "qkv"[i], (long long)e,
				      (double)gh[e], fwt_round_to(dt, gf[e]));
	}
	fw_graph_free(g);
	fw_ctx_free(ctx);
}

/* Longer rows for the kernel's tile (half k and v rows widened once, in
 * a direct-mapped cache of a power of two >= 32 rows, 256 KiB: 512 rows at
 * D 64, 128 at D 256): T is several tiles and no multiple of one, windows
 * straddle the wrap, a global token's row visits every key and every row
 * visits the global key (scattered slots evicting window keys), and GQA/MQA
 * query heads of several KV heads and batch rows share a thread's tile. */
static const struct ccase tile_cases[] = {
	{ "window 37 + global {5}, causal, GQA 4/2, D 64, T 1100",
	  AC(W(.w = 37, .glob = { 5 }, .n_glob = 1), 4, 2, 64, .causal = true, .pos = FW_POS_NONE),
	  2, 1100 },
	{ "window 20 + global {150}, bidirectional, MQA 3/1, D 256, ALiBi, T 300",
	  AC(W(.w = 20, .glob = { 150 }, .n_glob = 1), 3, 1, 256, .causal = false,
	     .pos = FW_POS_ALIBI), 1, 300 },
	{ "strided l 50, causal, 2 heads, D 64, T 700",
	  AC(S(.l = 50), 2, 2, 64, .causal = true, .pos = FW_POS_NONE), 1, 700 },
};

START_TEST(test_half_inputs)
{
	run_half(FW_BF16, &cases[2]);       /* strided, 3 heads, D 64 */
	run_half(FW_F16, &cases[3]);        /* strided, bidirectional, GQA, ALiBi */
	run_half(FW_BF16, &cases[11]);      /* packed rows, BigBird */
	run_half(FW_BF16, &tile_cases[0]);
	run_half(FW_F16, &tile_cases[1]);
	run_half(FW_BF16, &tile_cases[2]);
}
END_TEST

/* Decoding under --bf16/--fp16: the kernel reads the half KV cache in
 * place, and it holds the f32 values rounded once (fwt_check_half_decode):
 * the window pattern with a global token, and BigBird. */
START_TEST(test_half_cache)
{
	static const struct pat w = W(.w = 3, .glob = { 5 }, .n_glob = 1, .first = 1);
	static const struct pat bb = BB(.bs = 2, .r = 2, .g = 1, .seed = 5);
	fwt_check_half_decode(open_sparse(&w), FW_BF16, FW_POS_NONE);
	fwt_check_half_decode(open_sparse(&w), FW_F16, FW_POS_ALIBI);
	fwt_check_half_decode(open_sparse(&bb), FW_BF16, FW_POS_ROPE);
}
END_TEST

/* --- T5: relative bias, key mask, cross-attention ----------------------------------- */

struct rcase {
	const char *name;
	struct pat p;
	int hq, hkv, d;
	enum fw_mask_kind mask;
	bool rel;
	int64_t B, Tq, Tk;
};

static const struct rcase rel_cases[] = {
	{ "relative bias + key mask, window 3, bidirectional, 3 heads, D 16",
	  W(.w = 3), 3, 3, 16, FW_MASK_BIDIRECTIONAL, true, 2, 13, 13 },
	{ "relative bias, bigbird block 2, 1 random, causal, GQA 6/2, D 16",
	  BB(.bs = 2, .r = 1, .g = 1, .seed = 5), 6, 2, 16, FW_MASK_CAUSAL, true, 2, 13, 13 },
	{ "cross-attention (every key), 7 queries over 13 keys, key mask, GQA 4/2, D 16",
	  S(.l = 2), 4, 2, 16, FW_MASK_CROSS, false, 2, 7, 13 },
};

struct rcall {
	struct fw_loaded *plugin;
	const struct rcase *c;
};

/* in: q, k, v, the key mask, then the relative bias */
static struct fw_tensor *b_rel(struct fw_ctx *ctx, struct fw_tensor *const *in, void *u)
{
	const struct rcall *cl = u;
	const struct rcase *c = cl->c;
	struct fw_err err = { 0 };
	struct fw_model m = { .size = sizeof(m), .ctx = ctx, .host = fw_host_table(),
			      .batch = c->B, .seq_len = c->Tq, .training = true };
	struct fw_attn_spec spec = {
		.size = sizeof(spec), .name = "t5.attn", .n_head = c->hq, .n_kv_head = c->hkv,
		.head_dim = c->d, .mask = c->mask, .bias = in[3], .scale = 1.0f,
		.pos = c->rel ? FW_POS_RELATIVE : FW_POS_NONE, .pos_bias = c->rel ? in[4] : NULL,
	};
	const struct fw_attention_i *ai = cl->plugin->desc->iface;
	struct fw_tensor *y = ai->attend(cl->plugin->state, &m, &spec, in[0], in[1], in[2], &err);
	if (!y)
		fprintf(stderr, "attend: %s\n", err.msg);
	return y;
}

START_TEST(test_relative_grad)
{
	const struct rcase *c = &rel_cases[_i];
	static float keys[2 * 13];
	for (int j = 0; j < 13; j++) {      /* row 0 pads [10, 13); row 1 hides key 4 */
		keys[j] = j < 10 ? 0.0f : -INFINITY;
		keys[13 + j] = j == 4 ? -INFINITY : 0.0f;
	}
	struct rcall cl = { open_sparse(&c->p), c };
	struct fwt_input in[5] = {
		{ .name = "q", .ndim = 4, .ne = { c->B, c->Tq, c->hq, c->d }, .grad = true },
		{ .name = "k", .ndim = 4, .ne = { c->B, c->Tk, c->hkv, c->d }, .grad = true },
		{ .name = "v", .ndim = 4, .ne = { c->B, c->Tk, c->hkv, c->d }, .grad = true },
		{ .name = "keys", .ndim = 4, .ne = { c->B, 1, 1, c->Tk }, .data = keys },
		{ .name = "pos_bias", .ndim = 3, .ne = { c->hq, c->Tq, c->Tk }, .grad = true },
	};
	struct fwt_gc_opts o = { .seed = (uint64_t)_i + 300 };
	int r = fwt_gradcheck_ex(c->name, c->rel ? 5 : 4, in, b_rel, &cl, &o);
	ck_assert_msg(r == 0, "%s: gradient check failed (%d elements)", c->name, r);
}
END_TEST

/* The kernels split rows (forward) and KV heads (backward) across threads,
 * each output and gradient element written by one: the same values with 1
 * and 2 threads, bit for bit. */
START_TEST(test_threads)
{
	const struct ccase *c = &cases[0];
	const struct acfg *a = &c->a;
	struct call cl = { open_sparse(&a->p), a, NULL };
	struct fwt_input in[3] = {
		{ .name = "q", .ndim = 4, .ne = { 2, 40, a->hq, a->d }, .grad = true },
		{ .name = "k", .ndim = 4, .ne = { 2, 40, a->hkv, a->d }, .grad = true },
		{ .name = "v", .ndim = 4, .ne = { 2, 40, a->hkv, a->d }, .grad = true },
	};
	ck_assert_int_eq(fwt_threadcheck(c->name, 3, in, b_sparse, &cl, 2, 0.0), 0);
}
END_TEST

/* The same case through attention/sparse and through attention/mha with
 * the pattern as a dense mask: bias (B, 1, T, T) (segments and the pattern)
 * or, for BigBird's per-head random blocks, a relative bias (H, T, T). */
static void compare_with_mha(const struct ccase *c)
{
	const struct acfg *a = &c->a;
	int64_t B = c->B, T = c->T, H = a->hq, G = a->hkv, D = a->d;
	int64_t nq = B * T * H * D, nkv = B * T * G * D;
	static int32_t pos[2 * 64];
	static float seg_bias[2 * 64 * 64];
	packed_masks(T, pos, seg_bias);
	struct fw_err err = { 0 };
	struct call sp = { open_sparse(&a->p), a, NULL };
	struct fw_loaded *mha = open_plugin("attention/mha", NULL, &err);
	ck_assert_msg(mha != NULL, "%s", err.msg);
	bool per_head = a->p.kind == P_BIGBIRD;
	ck_assert(!per_head || (a->pos == FW_POS_NONE && (!a->packed || B == 1)));
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *x[2][5];
	for (int s = 0; s < 2; s++) {
		x[s][0] = fw_param(ctx, s ? "q2" : "q", FW_F32, 4, (int64_t[]){ B, T, H, D }, true);
		x[s][1] = fw_param(ctx, s ? "k2" : "k", FW_F32, 4, (int64_t[]){ B, T, G, D }, true);
		x[s][2] = fw_param(ctx, s ? "v2" : "v", FW_F32, 4, (int64_t[]){ B, T, G, D }, true);
		x[s][3] = fw_input(ctx, s ? "bias2" : "bias", FW_F32, 4, (int64_t[]){ B, 1, T, T });
		x[s][4] = fw_input(ctx, s ? "pos2" : "pos", FW_I32, 2, (int64_t[]){ B, T });
	}
	struct fw_tensor *hb = fw_input(ctx, "head_bias", FW_F32, 3, (int64_t[]){ H, T, T });
	struct fw_tensor *wy = fw_input(ctx, "wy", FW_F32, 4, (int64_t[]){ B, T, H, D });
	/* mha: bidirectional under the full mask; with the bias input always,
	 * and positions only for RoPE (they are what mha reads them for) */
	struct acfg am = *a;
	am.packed = true;
	struct call mc = { mha, &am, per_head ? hb : NULL };
	struct fw_tensor *y1 = b_sparse(ctx, x[0], &sp);
	struct fw_tensor *mx[5] = { x[1][0], x[1][1], x[1][2], x[1][3],
				    a->packed ? x[1][4] : NULL };
	struct fw_tensor *y2 = attend(ctx, mx, &mc, FW_MASK_BIDIRECTIONAL);
	struct fw_tensor *loss = fw_add(ctx, fw_sum(ctx, fw_mul(ctx, y1, wy), FW_AXIS_ALL, false),
					fw_sum(ctx, fw_mul(ctx, y2, wy), FW_AXIS_ALL, false));
	ck_assert_msg(loss != NULL, "%s", fw_ctx_err(ctx)->msg);
	struct fw_graph *g = fw_graph_new(ctx, (struct fw_tensor *[]){ loss, y1, y2 }, 3,
					  &(struct fw_graph_opts){ .backward = true,
								   .training = true });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	struct fwt_rng r = fwt_rng_new(17);
	fwt_fill_uniform(fw_f32(x[0][0]), nq, &r, -1.5f, 1.5f);
	fwt_fill_uniform(fw_f32(x[0][1]), nkv, &r, -1.5f, 1.5f);
	fwt_fill_uniform(fw_f32(x[0][2]), nkv, &r, -1, 1);
	fwt_fill_uniform(fw_f32(wy), nq, &r, -1, 1);
	for (int t = 0; t < 3; t++)
		memcpy(fw_f32(x[1][t]), fw_f32(x[0][t]), sizeof(float) * (size_t)(t ? nkv : nq));
	float *mb = fw_f32(x[1][3]), *hbv = fw_f32(hb);
	for (int64_t h = 0; h < H; h++)
		for (int64_t i = 0; i < T; i++)
			for (int64_t j = 0; j < T; j++) {
				/* packed: row 0's examples (B is 1) */
				int64_t pi = a->packed ? pos[i] : i, pj = pi - (i - j);
				bool see = pj >= 0 && ref_allowed(&a->p, pi, pj, T - (i - pi),
								  a->causal, a->layer, (int)h);
				hbv[(h * T + i) * T + j] = per_head && !see ? -INFINITY : 0.0f;
			}
	for (int64_t b = 0; b < B; b++)
		for (int64_t i = 0; i < T; i++)
			for (int64_t j = 0; j < T; j++) {
				float *o = &mb[(b * T + i) * T + j];
				int64_t pi = a->packed ? pos[b * T + i] : i;
				int64_t pj = pi - (i - j), n = T - (i - pi);
				bool see = a->packed ? seg_bias[(b * T + i) * T + j] == 0.0f : true;
				if (!per_head)        /* in the example's coordinates */
					see = see && pj >= 0 &&
					      ref_allowed(&a->p, pi, pj, n, a->causal, a->layer, 0);
				else
					see = see && (!a->causal || j <= i);
				*o = see ? 0.0f : -INFINITY;
			}
	memcpy(fw_f32(x[0][3]), seg_bias, sizeof(float) * (size_t)(B * T * T));
	memcpy(fw_i32(x[0][4]), pos, sizeof(int32_t) * (size_t)(B * T));
	memcpy(fw_i32(x[1][4]), pos, sizeof(int32_t) * (size_t)(B * T));
	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	ck_assert_int_eq(fw_graph_backward(g), FW_OK);
	double ymax = fwt_maxabs(fw_f32(y2), nq);
	ck_assert_msg(ymax > 0.05, "%s: mha's output is all ~0 (%g)", c->name, ymax);
	int64_t bad = fwt_allclose("y", fw_f32(y1), fw_f32(y2), nq, 1e-5, 1e-6);
	bad += fwt_allclose("dq", fw_f32(x[0][0]->grad), fw_f32(x[1][0]->grad), nq, 1e-4, 1e-6);
	bad += fwt_allclose("dk", fw_f32(x[0][1]->grad), fw_f32(x[1][1]->grad), nkv, 1e-4, 1e-6);
	bad += fwt_allclose("dv", fw_f32(x[0][2]->grad), fw_f32(x[1][2]->grad), nkv, 1e-4, 1e-6);
	ck_assert_msg(bad == 0, "%s: %lld elements differ from mha under the dense mask",
		      c->name, (long long)bad);
	fw_graph_free(g);
	fw_ctx_free(ctx);
}

START_TEST(test_equals_mha_masked)
{
	compare_with_mha(&cases[_i]);
}
END_TEST

/* A window of at least T is exact causal attention: the same as mha with no
 * mask of its own (GQA 6/2, RoPE, T 13). */
START_TEST(test_full_window_is_mha)
{
	static const struct ccase full = {
		"window 13 = T", AC(W(.w = 13), 6, 2, 40, .causal = true, .pos = FW_POS_ROPE), 2, 13 };
	const struct acfg *a = &full.a;
	int64_t B = full.B, T = full.T, nq = B * T * 6 * 40, nkv = B * T * 2 * 40;
	struct fw_err err = { 0 };
	struct call sp = { open_sparse(&a->p), a, NULL };
	struct call mc = { open_plugin("attention/mha", NULL, &err), a, NULL };
	ck_assert_msg(mc.plugin != NULL, "%s", err.msg);
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *q = fw_param(ctx, "q", FW_F32, 4, (int64_t[]){ B, T, 6, 40 }, true);
	struct fw_tensor *k = fw_param(ctx, "k", FW_F32, 4, (int64_t[]){ B, T, 2, 40 }, true);
	struct fw_tensor *v = fw_param(ctx, "v", FW_F32, 4, (int64_t[]){ B, T, 2, 40 }, true);
	struct fw_tensor *y1 = b_sparse(ctx, (struct fw_tensor *[]){ q, k, v }, &sp);
	struct fw_tensor *y2 = b_sparse(ctx, (struct fw_tensor *[]){ q, k, v }, &mc);
	struct fw_tensor *d = fw_sub(ctx, y1, y2);
	struct fw_tensor *loss = fw_sum(ctx, fw_mul(ctx, y1, y1), FW_AXIS_ALL, false);
	ck_assert_msg(loss && d, "%s", fw_ctx_err(ctx)->msg);
	struct fw_graph *g = fw_graph_new(ctx, (struct fw_tensor *[]){ loss, y1, y2 }, 3,
					  &(struct fw_graph_opts){ .backward = true,
								   .training = true });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	struct fwt_rng r = fwt_rng_new(5);
	fwt_fill_uniform(fw_f32(q), nq, &r, -1, 1);
	fwt_fill_uniform(fw_f32(k), nkv, &r, -1, 1);
	fwt_fill_uniform(fw_f32(v), nkv, &r, -1, 1);
	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	ck_assert_int_eq(fwt_allclose("y", fw_f32(y1), fw_f32(y2), nq, 1e-5, 1e-6), 0);
	fw_graph_free(g);
	fw_ctx_free(ctx);
}
END_TEST

/* --- decoding ------------------------------------------------------------------------ */

/* Decoding T tokens one at a time through the cache gives, at each step,
 * the full causal forward's row of that position (GQA 6/2, RoPE or ALiBi). */
static const struct acfg decode_cases[] = {
	AC(W(.w = 3, .glob = { 5 }, .n_glob = 1, .first = 1), 6, 2, 40, .causal = true, .pos = FW_POS_ROPE),
	AC(S(.l = 3), 6, 2, 40, .causal = true, .pos = FW_POS_ALIBI),
	AC(FX(.l = 4, .c = 1), 6, 2, 40, .causal = true, .pos = FW_POS_ROPE),
	AC(BB(.bs = 2, .r = 2, .g = 1, .seed = 5), 6, 2, 40, .causal = true, .pos = FW_POS_NONE, .layer = 2),
};

START_TEST(test_decode_equals_full)
{
	enum { T = 14, H = 6, G = 2, D = 40, NQ = T * H * D, NKV = T * G * D };
	const struct acfg *a = &decode_cases[_i];
	struct call cl = { open_sparse(&a->p), a, NULL };
	static float q[NQ], k[NKV], v[NKV], full[NQ];
	struct fwt_rng r = fwt_rng_new(21);
	fwt_fill_uniform(q, NQ, &r, -1.5f, 1.5f);
	fwt_fill_uniform(k, NKV, &r, -1.5f, 1.5f);
	fwt_fill_uniform(v, NKV, &r, -1, 1);
	/* the full forward */
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *in[3] = { fw_input(ctx, "q", FW_F32, 4, (int64_t[]){ 1, T, H, D }),
				    fw_input(ctx, "k", FW_F32, 4, (int64_t[]){ 1, T, G, D }),
				    fw_input(ctx, "v", FW_F32, 4, (int64_t[]){ 1, T, G, D }) };
	struct fw_tensor *y = b_sparse(ctx, in, &cl);
	struct fw_graph *g = y ? fw_graph_new(ctx, &y, 1, &(struct fw_graph_opts){ 0 }) : NULL;
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	memcpy(fw_f32(in[0]), q, sizeof(q));
	memcpy(fw_f32(in[1]), k, sizeof(k));
	memcpy(fw_f32(in[2]), v, sizeof(v));
	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	memcpy(full, fw_f32(y), sizeof(full));
	fw_graph_free(g);
	fw_ctx_free(ctx);
	/* one token a step */
	ctx = fw_ctx_new();
	struct fw_kv_cache cache = {
		.len = fw_input(ctx, "len", FW_I32, 1, (int64_t[]){ 1 }),
		.mask = fw_input(ctx, "mask", FW_F32, 1, (int64_t[]){ T }), .max_len = T };
	struct fw_tensor *sq = fw_input(ctx, "q", FW_F32, 4, (int64_t[]){ 1, 1, H, D });
	struct fw_tensor *sk = fw_input(ctx, "k", FW_F32, 4, (int64_t[]){ 1, 1, G, D });
	struct fw_tensor *sv = fw_input(ctx, "v", FW_F32, 4, (int64_t[]){ 1, 1, G, D });
	struct fw_err err = { 0 };
	struct fw_model m = { .size = sizeof(m), .ctx = ctx, .host = fw_host_table(),
			      .batch = 1, .seq_len = 1, .caches = &cache, .n_caches = 1 };
	struct fw_attn_spec spec = { .size = sizeof(spec), .name = "dec.attn", .layer = a->layer,
				     .n_head = H, .n_kv_head = G, .head_dim = D,
				     .mask = FW_MASK_CAUSAL, .pos = a->pos, .rope_base = 10000.0f,
				     .cache = &cache };
	const struct fw_attention_i *ai = cl.plugin->desc->iface;
	struct fw_tensor *ys = ai->attend(cl.plugin->state, &m, &spec, sq, sk, sv, &err);
	ck_assert_msg(ys != NULL, "%s", err.msg);
	g = fw_graph_new(ctx, &ys, 1, &(struct fw_graph_opts){ 0 });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	memset(fw_f32(cache.k), 0, sizeof(float) * NKV);
	memset(fw_f32(cache.v), 0, sizeof(float) * NKV);
	for (int t = 0; t < T; t++) {
		fw_i32(cache.len)[0] = t;
		for (int j = 0; j < T; j++)
			fw_f32(cache.mask)[j] = j <= t ? 0.0f : -INFINITY;
		memcpy(fw_f32(sq), q + t * H * D, sizeof(float) * H * D);
		memcpy(fw_f32(sk), k + t * G * D, sizeof(float) * G * D);
		memcpy(fw_f32(sv), v + t * G * D, sizeof(float) * G * D);
		ck_assert_int_eq(fw_graph_forward(g), FW_OK);
		char what[64];
		snprintf(what, sizeof(what), "%s step %d", pat_names[a->p.kind], t);
		ck_assert_int_eq(fwt_allclose(what, fw_f32(ys), full + t * H * D, H * D, 1e-5, 1e-6),
				 0);
	}
	fw_graph_free(g);
	fw_ctx_free(ctx);
}
END_TEST

/* --- refusals -------------------------------------------------------------------------- */

START_TEST(test_bad_specs)
{
	static const struct {
		struct pat p;
		int hq, hkv;
		enum fw_mask_kind mask;
		enum fw_pos_kind pos;
		float dropout;
		bool cache;
		const char *expect;
	} bad[] = {
		{ W(.w = 2, .glob = { 3, 9 }, .n_glob = 2), 4, 4, FW_MASK_CAUSAL, FW_POS_NONE, 0,
		  false, "global token 9 is beyond the sequence (T = 7)" },
		{ W(.w = 2, .first = 8), 4, 4, FW_MASK_CAUSAL, FW_POS_NONE, 0, false,
		  "global token 7 is beyond the sequence (T = 7)" },
		{ W(.w = 2), 6, 4, FW_MASK_CAUSAL, FW_POS_NONE, 0, false,
		  "not a multiple of 4 KV heads" },
		{ S(.l = 2), 4, 4, FW_MASK_CAUSAL, FW_POS_RELATIVE, 0, false,
		  "the relative position bias must be f32 (4, 7, 7)" },
		{ W(.w = 2), 4, 4, FW_MASK_CAUSAL, FW_POS_NONE, 0.1f, false, "dropout" },
		{ W(.w = 2), 4, 4, FW_MASK_BIDIRECTIONAL, FW_POS_NONE, 0, true,
		  "generating with a cache needs causal attention" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct fw_loaded *l = open_sparse(&bad[i].p);
		struct fw_ctx *ctx = fw_ctx_new();
		struct fw_err err = { 0 };
		struct fw_kv_cache cache = {
			.len = fw_input(ctx, "len", FW_I32, 1, (int64_t[]){ 1 }),
			.mask = fw_input(ctx, "mask", FW_F32, 1, (int64_t[]){ 7 }), .max_len = 7 };
		struct fw_model m = { .size = sizeof(m), .ctx = ctx, .host = fw_host_table(),
				      .training = true };
		struct fw_attn_spec spec = {
			.size = sizeof(spec), .name = "bad.attn", .n_head = bad[i].hq,
			.n_kv_head = bad[i].hkv, .head_dim = 8, .mask = bad[i].mask,
			.pos = bad[i].pos, .dropout = bad[i].dropout,
			.cache = bad[i].cache ? &cache : NULL,
		};
		int64_t T = bad[i].cache ? 1 : 7;
		struct fw_tensor *q = fw_input(ctx, "q", FW_F32, 4, (int64_t[]){ 1, T, bad[i].hq, 8 });
		struct fw_tensor *kv = fw_input(ctx, "kv", FW_F32, 4,
						(int64_t[]){ 1, T, bad[i].hkv, 8 });
		const struct fw_attention_i *ai = l->desc->iface;
		struct fw_tensor *y = ai->attend(l->state, &m, &spec, q, kv, kv, &err);
		ck_assert_msg(y == NULL && err.status != FW_OK && strstr(err.msg, bad[i].expect) &&
			      strstr(err.msg, "bad.attn") && !strchr(err.msg, '\n'),
			      "case %zu: got '%s', want one line with '%s'", i, err.msg,
			      bad[i].expect);
		fw_ctx_free(ctx);
	}
	/* a relative bias with packed rows: the op has no source left for both */
	struct pat wp = W(.w = 2);
	struct fw_loaded *l = open_sparse(&wp);
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_err err = { 0 };
	struct fw_model m = { .size = sizeof(m), .ctx = ctx, .host = fw_host_table(),
			      .positions = fw_input(ctx, "pos", FW_I32, 2, (int64_t[]){ 1, 7 }) };
	struct fw_tensor *q = fw_input(ctx, "q", FW_F32, 4, (int64_t[]){ 1, 7, 2, 8 });
	struct fw_attn_spec spec = {
		.size = sizeof(spec), .name = "bad.attn", .n_head = 2, .n_kv_head = 2,
		.head_dim = 8, .pos = FW_POS_RELATIVE,
		.pos_bias = fw_input(ctx, "pb", FW_F32, 3, (int64_t[]){ 2, 7, 7 }),
	};
	const struct fw_attention_i *ai = l->desc->iface;
	ck_assert(ai->attend(l->state, &m, &spec, q, q, q, &err) == NULL);
	ck_assert_msg(err.status == FW_ERR_INVALID && strstr(err.msg, "bad.attn") &&
		      strstr(err.msg, "relative position bias with packed rows") &&
		      !strchr(err.msg, '\n'), "got '%s'", err.msg);
	fw_ctx_free(ctx);
}
END_TEST

/* Options that init refuses, each with one line naming the option. */
START_TEST(test_bad_options)
{
	static const struct {
		const char *o[6];
		const char *expect;
	} bad[] = {
		{ { "sparse-pattern", "fixed", "sparse-stride", "4", "sparse-summary", "5" },
		  "--sparse-summary 5 must be at most --sparse-stride 4" },
		{ { "sparse-pattern", "strided", "sparse-global", "3" }, "belong to --sparse-pattern=window" },
		{ { "sparse-pattern", "bigbird", "sparse-global-first", "2" }, "not bigbird" },
		{ { "sparse-global", "3,x" }, "want positions >= 0" },
		{ { "sparse-global", "-1" }, "want positions >= 0" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct fw_err err = { 0 };
		const char *o[8] = { 0 };
		memcpy(o, bad[i].o, sizeof(bad[i].o));
		struct fw_loaded *l = open_plugin("attention/sparse", o, &err);
		ck_assert_msg(l == NULL && strstr(err.msg, bad[i].expect) && !strchr(err.msg, '\n'),
			      "case %zu: got '%s', want one line with '%s'", i, err.msg,
			      bad[i].expect);
	}
	/* the option table's own range: a window of 0 */
	struct fw_loaded *p = NULL;
	struct fw_err err = { 0 };
	const char *b = getenv("FW_BUILD_DIR");
	char path[4200];
	snprintf(path, sizeof(path), "%s/plugins/attention/sparse.so", b ? b : ".");
	ck_assert_msg(fw_plugin_open(path, FW_KIND_ATTENTION, &p, &err) == FW_OK, "%s", err.msg);
	ck_assert(fw_options_set(p->opts, "sparse-window", "0", &err) != FW_OK);
	ck_assert_msg(strstr(err.msg, "sparse-window"), "%s", err.msg);
	fw_plugin_close(p);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("sparse");
	TCase *gc = fwt_tcase("gradcheck", 600);
	tcase_add_loop_test(gc, test_attend_grad, 0, NCASES);
	tcase_add_loop_test(gc, test_relative_grad, 0,
			    (int)(sizeof(rel_cases) / sizeof(rel_cases[0])));
	tcase_add_test(gc, test_threads);
	tcase_add_checked_fixture(gc, NULL, close_opened);
	suite_add_tcase(s, gc);
	TCase *ref = fwt_tcase("reference", 300);
	tcase_add_loop_test(ref, test_equals_mha_masked, 0, NCASES);
	tcase_add_test(ref, test_full_window_is_mha);
	tcase_add_loop_test(ref, test_decode_equals_full, 0,
			    (int)(sizeof(decode_cases) / sizeof(decode_cases[0])));
	tcase_add_checked_fixture(ref, NULL, close_opened);
	suite_add_tcase(s, ref);
	TCase *half = fwt_tcase("half", 300);
	tcase_add_test(half, test_half_inputs);
	tcase_add_test(half, test_half_cache);
	tcase_add_checked_fixture(half, NULL, close_opened);
	suite_add_tcase(s, half);
	TCase *bad = fwt_tcase("refusals", 60);
	tcase_add_test(bad, test_bad_specs);
	tcase_add_test(bad, test_bad_options);
	tcase_add_checked_fixture(bad, NULL, close_opened);
	suite_add_tcase(s, bad);
	return fwt_run_suite(s);
}
