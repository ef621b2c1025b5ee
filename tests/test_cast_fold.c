/* test_cast_fold.c - which graphs fold autocast's cast of a norm's output
 * into the norm (core/engine/src/graph.c, fold_casts; FW_OPF_NARROW_OUT).
 *
 * A folded cast is a view of its norm, which then has the cast's dtype; an
 * unfolded one converts the norm's f32 output. Folded: a pre-LN block
 * (norm -> linear), GPT-2 and Llama (RMSNorm) under bf16 from the real arch
 * plugin. Not folded: a post-LN block whose norm output is also the
 * residual (a hand-built one and BERT's from arch/encoder), a norm that is a
 * graph output, f32 training, and FW_CAST_FOLD=0. The arithmetic is the
 * same either way: a pre-LN graph's loss and gradients, folded and not,
 * are compared bit for bit here, and whole training runs in
 * tests/cast_fold.py.
 */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "fw/runtime.h"

enum { B = 6, C = 40, N = 24 };

struct counts {
	int folded, unfolded;   /* casts of a norm's output */
};

static bool is_norm(const struct fw_tensor *t)
{
	return t->op == FW_OP_LAYERNORM || t->op == FW_OP_RMSNORM;
}

/* Counts the casts of norm outputs in g; checks that each folded one is a
 * view of a norm of its dtype, and that each unfolded one reads an f32
 * norm whose output has another reader in g (or is an output) unless g was
 * built with FW_CAST_FOLD=0 (fold off). */
static struct counts count_casts(struct fw_graph *g, struct fw_tensor **outs, int n_outs,
				 bool fold)
{
	struct counts k = { 0 };
	for (int i = 0; i < fw_graph_n_nodes(g); i++) {
		struct fw_tensor *c = fw_graph_node(g, i), *x = c->src[0];
		if (c->op != FW_OP_CAST || !is_norm(x))
			continue;
		if (c->flags & FW_FLAG_VIEW) {
			ck_assert(c->view_src == x && x->dtype == c->dtype && x->dtype != FW_F32);
			k.folded++;
			continue;
		}
		ck_assert_int_eq(x->dtype, FW_F32);
		int readers = 0;
		for (int j = 0; j < fw_graph_n_nodes(g); j++)
			for (int s = 0; s < FW_MAX_SRC; s++)
				readers += fw_graph_node(g, j)->src[s] == x;
		for (int o = 0; o < n_outs; o++)
			readers += outs[o] == x;
		ck_assert_msg(readers > 1 || !fold, "the cast of '%s' is its one reader but was not folded",
			      x->name);
		k.unfolded++;
	}
	return k;
}

/* loss = mean(linear(LN(x)) [+ LN(x) when post]) under bf16 autocast. */
struct small {
	struct fw_ctx *ctx;
	struct fw_tensor *x, *g, *b, *w, *ln, *loss;
	struct fw_graph *gr;
};

static void small_open(struct small *s, bool post, bool ln_output)
{
	s->ctx = fw_ctx_new();
	ck_assert_int_eq(fw_ctx_set_autocast(s->ctx, FW_BF16), FW_OK);
	s->x = fw_input(s->ctx, "x", FW_F32, 2, (int64_t[]){ B, C });
	s->g = fw_param(s->ctx, "g", FW_F32, 1, (int64_t[]){ C }, true);
	s->b = fw_param(s->ctx, "b", FW_F32, 1, (int64_t[]){ C }, true);
	s->w = fw_param(s->ctx, "w", FW_F32, 2, (int64_t[]){ post ? C : N, C }, true);
	s->ln = fw_layernorm(s->ctx, s->x, s->g, s->b, 1e-5f);
	struct fw_tensor *y = fw_linear(s->ctx, s->ln, s->w, NULL);
	if (post)
		y = fw_add(s->ctx, y, s->ln);
	s->loss = fw_mean(s->ctx, fw_mean(s->ctx, y, 1, false), 0, false);
	ck_assert_msg(s->loss, "%s", fw_ctx_err(s->ctx)->msg);
	struct fw_tensor *outs[2] = { s->loss, s->ln };
	s->gr = fw_graph_new(s->ctx, outs, ln_output ? 2 : 1,
			     &(struct fw_graph_opts){ .backward = true, .training = true });
	ck_assert_msg(s->gr, "%s", fw_ctx_err(s->ctx)->msg);
	ck_assert_int_eq(fw_ctx_init_params(s->ctx, 5), FW_OK);
	struct fwt_rng r = fwt_rng_new(3);
	fwt_fill_uniform(s->x->data, B * C, &r, -2.0f, 2.0f);
	fwt_fill_uniform(s->g->data, C, &r, 0.5f, 1.5f);
	fwt_fill_uniform(s->b->data, C, &r, -0.5f, 0.5f);
}

static void small_close(struct small *s)
{
	fw_graph_free(s->gr);
	fw_ctx_free(s->ctx);
}

static struct counts small_counts(struct small *s, bool ln_output, bool fold)
{
	struct fw_tensor *outs[2] = { s->loss, s->ln };
	return count_casts(s->gr, outs, ln_output ? 2 : 1, fold);
}

START_TEST(test_small_graphs)
{
	struct small s[2];
	/* pre-LN: folded; the same graph with FW_CAST_FOLD=0 is the oracle */
	setenv("FW_CAST_FOLD", "0", 1);
	small_open(&s[0], false, false);
	unsetenv("FW_CAST_FOLD");
	small_open(&s[1], false, false);
	struct counts k0 = small_counts(&s[0], false, false);
	struct counts k1 = small_counts(&s[1], false, true);
	ck_assert(k0.folded == 0 && k0.unfolded == 1 && s[0].ln->dtype == FW_F32);
	ck_assert(k1.folded == 1 && k1.unfolded == 0 && s[1].ln->dtype == FW_BF16);
	for (int i = 0; i < 2; i++) {
		ck_assert_int_eq(fw_graph_forward(s[i].gr), FW_OK);
		ck_assert_int_eq(fw_graph_backward(s[i].gr), FW_OK);
	}
	ck_assert(!memcmp(s[0].loss->data, s[1].loss->data, sizeof(float)));
	const struct fw_tensor *p[2][3] = { { s[0].g, s[0].b, s[0].w }, { s[1].g, s[1].b, s[1].w } };
	for (int j = 0; j < 3; j++)
		ck_assert_msg(!memcmp(p[0][j]->grad->data, p[1][j]->grad->data,
				      (size_t)fw_nelem(p[0][j]) * sizeof(float)),
			      "%s's gradient differs folded", p[0][j]->name);
	small_close(&s[0]);
	small_close(&s[1]);

	/* post-LN (the norm's output is also the residual), and a norm that is
	 * an output: not folded */
	small_open(&s[0], true, false);
	struct counts k = small_counts(&s[0], false, true);
	ck_assert(k.folded == 0 && k.unfolded == 1 && s[0].ln->dtype == FW_F32);
	small_close(&s[0]);
	small_open(&s[0], false, true);
	k = small_counts(&s[0], true, true);
	ck_assert(k.folded == 0 && k.unfolded == 1 && s[0].ln->dtype == FW_F32);
	small_close(&s[0]);
}
END_TEST

/* A training graph of arch (decoder or encoder) with opts, at precision. */
static struct counts arch_counts(const char *arch, const char *const *opts,
				 enum fw_dtype precision)
{
	struct fw_err err = { 0 };
	struct fw_loaded *a = fwt_plugin_open(arch, FW_KIND_ARCH, opts);
	struct fw_loaded *att = fwt_plugin_open("attention/mha", FW_KIND_ATTENTION, NULL);
	struct fw_plugin_slots slots = { .arch = a, .attention = att };
	struct fw_ctx *ctx = fw_ctx_new();
	ck_assert_int_eq(fw_ctx_set_autocast(ctx, precision), FW_OK);
	struct fw_model m;
	struct fw_rt_model_spec spec = { .plugins = &slots, .batch = 2, .seq_len = 8,
					 .training = true, .seed = 1 };
	ck_assert_msg(fw_rt_model_build(&spec, ctx, &m, &err) == FW_OK, "%s", err.msg);
	struct fw_graph *g = fw_graph_new(ctx, &m.loss, 1, &(struct fw_graph_opts){
		.backward = true, .training = true });
	ck_assert_msg(g, "%s", fw_ctx_err(ctx)->msg);
	const char *env = getenv("FW_CAST_FOLD");
	struct counts k = count_casts(g, &m.loss, 1, !env || strcmp(env, "0"));
	fw_graph_free(g);
	fw_ctx_free(ctx);
	fw_plugin_close(att);
	fw_plugin_close(a);
	return k;
}

START_TEST(test_arch_graphs)
{
	static const char *const gpt2[] = { "n-layer", "2", "n-head", "2", "n-embd", "16",
					    "vocab-size", "50", "n-positions", "16", NULL };
	static const char *const llama[] = {
		"n-layer", "2", "n-head", "2", "n-embd", "16", "vocab-size", "50",
		"n-positions", "16", "normalization", "RMSNorm", "swiglu", "1",
		"ffn-hidden-size", "24", "disable-bias-linear", "1",
		"position-embedding-type", "rope", NULL };
	static const char *const bert[] = {
		"num-hidden-layers", "2", "num-attention-heads", "2", "hidden-size", "16",
		"intermediate-size", "32", "vocab-size", "50", "max-position-embeddings", "16",
		NULL };
	/* GPT-2 and Llama: every block's two norms and the final one feed a
	 * matmul only; f32 has no casts */
	struct counts k = arch_counts("arch/decoder", gpt2, FW_BF16);
	ck_assert_msg(k.folded >= 4 && k.unfolded == 0, "gpt2: %d folded, %d not", k.folded,
		      k.unfolded);
	k = arch_counts("arch/decoder", llama, FW_BF16);
	ck_assert_msg(k.folded >= 4 && k.unfolded == 0, "llama: %d folded, %d not", k.folded,
		      k.unfolded);
	k = arch_counts("arch/decoder", gpt2, FW_F32);
	ck_assert(k.folded == 0 && k.unfolded == 0);
	setenv("FW_CAST_FOLD", "0", 1);
	k = arch_counts("arch/decoder", gpt2, FW_BF16);
	unsetenv("FW_CAST_FOLD");
	ck_assert_msg(k.folded == 0 && k.unfolded >= 4, "gpt2 FW_CAST_FOLD=0: %d folded, %d not",
		      k.folded, k.unfolded);
	/* BERT: each block's two post-LN norms are the residual too */
	k = arch_counts("arch/encoder", bert, FW_BF16);
	ck_assert_msg(k.unfolded >= 4, "bert: %d folded, %d not", k.folded, k.unfolded);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("cast_fold");
	TCase *tc = fwt_tcase("core", 120);
	tcase_add_test(tc, test_small_graphs);
	tcase_add_test(tc, test_arch_graphs);
	suite_add_tcase(s, tc);
	return fwt_run_suite(s);
}
