/* test_lora.c - peft/lora's hooks in process, on arch/decoder + attention/mha:
 * freeze (only the adapters train, gradients for them only), the initial
 * values, merge/unmerge (same loss, weights restored, misuse refused), and
 * save/load round trips with the base fingerprint. The end-to-end parity
 * against PyTorch and the fwrun commands are in tests/lora_parity.py. */
#include <check.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "fw/io.h"
#include "fw/runtime/model.h"

static char plugin_path[4200];
static char scratch[4200];

#define ck_has(msg, s) \
	ck_assert_msg(strstr(msg, s) != NULL, "'%s' does not contain '%s'", msg, s)

struct rig {
	struct fw_loaded *arch, *att, *peft;
	struct fw_plugin_slots slots;
	struct fw_ctx *ctx;
	struct fw_model m;
	struct fw_graph *g;
	const struct fw_peft_i *pi;
};

/* A 2-layer GPT-2 of width 16 with LoRA options lopts (name, value, ..., NULL),
 * under autocast ac (FW_F32: off). */
static void rig_open_as(struct rig *r, const char *const *lopts, enum fw_dtype ac)
{
	static const char *const arch_opts[] = { "n-layer", "2", "n-head", "2", "n-embd", "16",
						 "vocab-size", "50", "n-positions", "16", NULL };
	struct fw_err err = { 0 };
	setenv("FW_PLUGIN_PATH", plugin_path, 1);
	memset(r, 0, sizeof(*r));
	r->arch = fwt_plugin_open("arch/decoder", FW_KIND_ARCH, arch_opts);
	r->att = fwt_plugin_open("attention/mha", FW_KIND_ATTENTION, NULL);
	r->peft = fwt_plugin_open("peft/lora", FW_KIND_PEFT, lopts);
	r->slots = (struct fw_plugin_slots){ .arch = r->arch, .attention = r->att, .peft = r->peft };
	r->ctx = fw_ctx_new();
	ck_assert(fw_ctx_set_autocast(r->ctx, ac) == FW_OK);
	r->pi = r->peft->desc->iface;
	/* the runtime's build: the arch, then peft/lora's freeze */
	struct fw_rt_model_spec spec = { .plugins = &r->slots, .batch = 2, .seq_len = 8,
					 .training = true, .seed = 1 };
	ck_assert_msg(fw_rt_model_build(&spec, r->ctx, &r->m, &err) == FW_OK, "%s", err.msg);
	r->g = fw_graph_new(r->ctx, &r->m.loss, 1, &(struct fw_graph_opts){
		.backward = true, .training = true });
	ck_assert_msg(r->g != NULL, "%s", fw_ctx_err(r->ctx)->msg);
	ck_assert(fw_ctx_init_params(r->ctx, 7) == FW_OK);
	int32_t *tok = r->m.tokens->data, *tgt = r->m.targets->data;
	for (int i = 0; i < 16; i++) {
		tok[i] = (i * 7 + 3) % 50;
		tgt[i] = (i * 11 + 5) % 50;
	}
}

static void rig_open(struct rig *r, const char *const *lopts)
{
	rig_open_as(r, lopts, FW_F32);
}

static void rig_close(struct rig *r)
{
	fw_graph_free(r->g);
	fw_ctx_free(r->ctx);
	fw_plugin_close(r->peft);
	fw_plugin_close(r->att);
	fw_plugin_close(r->arch);
}

static float loss_of(struct rig *r)
{
	ck_assert(fw_graph_forward(r->g) == FW_OK);
	return *(float *)r->m.loss->data;
}

static struct fw_tensor *find(struct rig *r, const char *name)
{
	struct fw_tensor *t = fw_ctx_find(r->ctx, name);
	ck_assert_msg(t != NULL, "no tensor %s", name);
	return t;
}

static bool is_lora(const struct fw_tensor *t)
{
	return strstr(t->name, ".lora_A.") || strstr(t->name, ".lora_B.");
}

/* Every B random, so that the adapter changes the output. */
static void randomize_b(struct rig *r, float scale)
{
	struct fwt_rng rng = fwt_rng_new(3);
	for (int i = 0; i < fw_ctx_n_tensors(r->ctx); i++) {
		struct fw_tensor *t = fw_ctx_tensor(r->ctx, i);
		if ((t->flags & FW_FLAG_PARAM) && strstr(t->name, ".lora_B."))
			fwt_fill_uniform(t->data, fw_nelem(t), &rng, -scale, scale);
	}
}

START_TEST(test_freeze)
{
	static const char *const o[] = { "lora-r", "4", "lora-target-modules", "all-linear", NULL };
	struct rig r;
	rig_open(&r, o);
	/* per layer: r (in + out) for c_attn 16->48, c_proj 16->16, c_fc 16->64, proj 64->16 */
	int64_t want = 2 * 4 * ((16 + 48) + (16 + 16) + (16 + 64) + (64 + 16));
	struct fw_memory_report mr;
	fw_graph_memory(r.g, &mr);
	ck_assert_int_eq(mr.n_trainable, want);
	ck_assert_int_eq(fw_graph_n_params(r.g), 16);
	ck_assert_msg(mr.bytes[FW_MEM_GRADIENTS] <= (size_t)want * 4 + 16 * 64,
		      "gradients %zu bytes for %lld trainable values", mr.bytes[FW_MEM_GRADIENTS],
		      (long long)want);
	for (int i = 0; i < fw_ctx_n_tensors(r.ctx); i++) {
		struct fw_tensor *t = fw_ctx_tensor(r.ctx, i);
		if (!(t->flags & FW_FLAG_PARAM))
			continue;
		bool own = is_lora(t);
		ck_assert_msg(!!(t->flags & FW_FLAG_TRAINABLE) == own, "%s", t->name);
		ck_assert_msg((t->grad != NULL) == own, "%s: gradient buffer", t->name);
	}
	rig_close(&r);
}
END_TEST

START_TEST(test_init_values)
{
	static const char *const o[] = { "lora-r", "4", NULL };           /* auto: c_attn */
	static const char *const og[] = { "lora-r", "4", "lora-init", "gaussian",
					   "lora-target-modules", "c_attn,c_fc", NULL };
	struct rig r;
	rig_open(&r, o);
	struct fw_tensor *a = find(&r, "h.0.attn.c_attn.lora_A.weight");
	struct fw_tensor *b = find(&r, "h.1.attn.c_attn.lora_B.weight");
	ck_assert(fw_ctx_find(r.ctx, "h.0.mlp.c_fc.lora_A.weight") == NULL);
	ck_assert_int_eq(a->ne[0], 4);
	ck_assert_int_eq(a->ne[1], 16);
	ck_assert_int_eq(b->ne[0], 48);
	ck_assert_int_eq(b->ne[1], 4);
	double bound = 1.0 / sqrt(16.0), mx = fwt_maxabs(a->data, fw_nelem(a));
	ck_assert_msg(mx <= bound && mx > 0.5 * bound, "max |A| %g, bound %g", mx, bound);
	ck_assert(fwt_maxabs(b->data, fw_nelem(b)) == 0.0);
	float l0 = loss_of(&r);
	rig_close(&r);

	/* other adapters (gaussian A) on the same base: B = 0 is a no-op, same loss */
	rig_open(&r, og);
	double sum = 0, sq = 0;
	int64_t n = 0;
	for (int i = 0; i < fw_ctx_n_tensors(r.ctx); i++) {
		struct fw_tensor *t = fw_ctx_tensor(r.ctx, i);
		if (!(t->flags & FW_FLAG_PARAM) || !strstr(t->name, ".lora_A."))
			continue;
		for (int64_t j = 0; j < fw_nelem(t); j++, n++) {
			sum += fw_f32(t)[j];
			sq += (double)fw_f32(t)[j] * fw_f32(t)[j];
		}
	}
	double sd = sqrt(sq / (double)n - (sum / (double)n) * (sum / (double)n));
	ck_assert_msg(fabs(sd - 0.25) < 0.025, "gaussian A: std %g, want 1/r = 0.25", sd);
	ck_assert_msg(fabs(loss_of(&r) - l0) <= 1e-6 * fabs(l0), "loss with B = 0 %g vs %g",
		      (double)loss_of(&r), (double)l0);
	rig_close(&r);
}
END_TEST

START_TEST(test_merge_unmerge)
{
	static const char *const o[] = { "lora-r", "4", "lora-alpha", "12",
					 "lora-target-modules", "c_attn,c_fc", NULL };
	struct rig r;
	struct fw_err err = { 0 };
	rig_open(&r, o);
	randomize_b(&r, 0.5f);
	float l0 = loss_of(&r);
	struct fw_tensor *w = find(&r, "h.1.mlp.c_fc.weight");
	int64_t n = fw_nelem(w);
	float *orig = malloc(sizeof(float) * (size_t)n), *delta = malloc(sizeof(float) * (size_t)n);
	memcpy(orig, w->data, sizeof(float) * (size_t)n);

	ck_assert_msg(r.pi->merge(r.peft->state, &r.m, &err) == FW_OK, "%s", err.msg);
	for (int64_t i = 0; i < n; i++)
		delta[i] = fw_f32(w)[i] - orig[i];
	ck_assert_msg(fwt_maxabs(delta, n) > 1e-3, "merge left W unchanged");
	float l1 = loss_of(&r);
	ck_assert_msg(fabs(l1 - l0) <= 1e-5 * fabs(l0), "merged loss %g vs %g", l1, l0);
	ck_assert_int_eq(r.pi->merge(r.peft->state, &r.m, &err), FW_ERR_INVALID);
	ck_has(err.msg, "already merged");
	char path[4400];
	snprintf(path, sizeof(path), "%s/merged.h5", scratch);
	ck_assert_int_eq(r.pi->save(r.peft->state, &r.m, path, &err), FW_ERR_INVALID);
	ck_has(err.msg, "merged");
	ck_assert(access(path, F_OK) != 0);
	ck_assert_int_eq(r.pi->load(r.peft->state, &r.m, path, &err), FW_ERR_INVALID);

	ck_assert_msg(r.pi->unmerge(r.peft->state, &r.m, &err) == FW_OK, "%s", err.msg);
	ck_assert(fwt_allclose("unmerged W", w->data, orig, n, 0, 1e-6) == 0);
	float l2 = loss_of(&r);
	ck_assert_msg(fabs(l2 - l0) <= 1e-6 * fabs(l0), "unmerged loss %g vs %g", l2, l0);
	ck_assert_int_eq(r.pi->unmerge(r.peft->state, &r.m, &err), FW_ERR_INVALID);
	ck_has(err.msg, "not merged");
	/* and the graph still trains the adapter */
	ck_assert(fw_graph_backward(r.g) == FW_OK);
	struct fw_tensor *a = find(&r, "h.0.attn.c_attn.lora_A.weight");
	ck_assert(fwt_maxabs(a->grad->data, fw_nelem(a)) > 0);
	free(orig);
	free(delta);
	rig_close(&r);
}
END_TEST

START_TEST(test_save_load)
{
	static const char *const o[] = { "lora-r", "2", "lora-target-modules", "c_attn,c_proj",
					 "lora-bias", "lora_only", NULL };
	struct rig r;
	struct fw_err err = { 0 };
	char path[4400], junk[4400];
	snprintf(path, sizeof(path), "%s/a.h5", scratch);
	snprintf(junk, sizeof(junk), "%s/junk.h5", scratch);
	rig_open(&r, o);
	randomize_b(&r, 0.5f);
	struct fw_tensor *bias = find(&r, "h.0.attn.c_proj.bias");
	fw_f32(bias)[3] = 0.25f;
	float l0 = loss_of(&r);
	ck_assert_msg(r.pi->save(r.peft->state, &r.m, path, &err) == FW_OK, "%s", err.msg);
	char *kind = NULL;
	ck_assert(fw_h5_read_attr(path, "fw_adapter", &kind, &err) == FW_OK);
	ck_assert_str_eq(kind, "peft/lora");
	fw_free(kind);
	struct fw_h5_entry *e = NULL;
	int ne = 0;
	ck_assert(fw_h5_list(path, &e, &ne, &err) == FW_OK);
	ck_assert_int_eq(ne, 6 * 2 + 6);   /* A, B of c_attn, attn.c_proj, mlp.c_proj x 2; biases */
	fw_free(e);

	/* wipe what the adapter holds, load it back: the same loss, bit for bit */
	for (int i = 0; i < fw_ctx_n_tensors(r.ctx); i++) {
		struct fw_tensor *t = fw_ctx_tensor(r.ctx, i);
		if ((t->flags & FW_FLAG_TRAINABLE))
			memset(t->data, 0, fw_nbytes(t));
	}
	ck_assert(loss_of(&r) != l0);
	ck_assert_msg(r.pi->load(r.peft->state, &r.m, path, &err) == FW_OK, "%s", err.msg);
	ck_assert(loss_of(&r) == l0);
	ck_assert(fw_f32(bias)[3] == 0.25f);

	/* another base: refused, one line naming the file */
	struct fw_tensor *wte = find(&r, "wte.weight");
	float keep = fw_f32(wte)[5];
	fw_f32(wte)[5] += 1.0f;
	ck_assert_int_eq(r.pi->load(r.peft->state, &r.m, path, &err), FW_ERR_INVALID);
	ck_has(err.msg, path);
	ck_has(err.msg, "different base model");
	ck_assert(!strchr(err.msg, '\n'));
	fw_f32(wte)[5] = keep;
	ck_assert_msg(r.pi->load(r.peft->state, &r.m, path, &err) == FW_OK, "%s", err.msg);

	/* not HDF5, missing */
	FILE *f = fopen(junk, "w");
	fputs("not an adapter", f);
	fclose(f);
	ck_assert_int_eq(r.pi->load(r.peft->state, &r.m, junk, &err), FW_ERR_FORMAT);
	ck_has(err.msg, junk);
	unlink(junk);
	ck_assert_int_eq(r.pi->load(r.peft->state, &r.m, junk, &err), FW_ERR_IO);
	ck_has(err.msg, junk);
	unlink(path);
	rig_close(&r);
}
END_TEST

/* Options are checked where they are known: init (syntax), freeze (names). */
START_TEST(test_bad_options)
{
	struct fw_loaded *p = NULL;
	struct fw_err err = { 0 };
	setenv("FW_PLUGIN_PATH", plugin_path, 1);
	ck_assert(fw_plugin_open("peft/lora", FW_KIND_PEFT, &p, &err) == FW_OK);
	ck_assert(fw_options_set(p->opts, "lora-alpha-pattern", "c_attn=-1", &err) == FW_OK);
	ck_assert(fw_options_resolve(p->opts, &err) == FW_OK);
	ck_assert_int_eq(fw_plugin_init(p, NULL, &err), FW_ERR_INVALID);
	ck_has(err.msg, "lora-alpha-pattern");
	ck_has(err.msg, "positive number");
	fw_plugin_close(p);
	ck_assert(fw_plugin_open("peft/lora", FW_KIND_PEFT, &p, &err) == FW_OK);
	ck_assert(fw_options_set(p->opts, "lora-target-modules", " , ", &err) == FW_OK);
	ck_assert(fw_options_resolve(p->opts, &err) == FW_OK);
	ck_assert_int_eq(fw_plugin_init(p, NULL, &err), FW_ERR_INVALID);
	ck_has(err.msg, "empty");
	fw_plugin_close(p);
}
END_TEST

/* The bf16 copies the graph keeps of the frozen base (fw/graph.h) after
 * merge, unmerge and the runtime's weight load: the next forward's loss
 * equals that of a graph built then (fresh casts) bit for bit. */
static float expect_fresh(struct rig *r, const char *what)
{
	float kept = loss_of(r);
	struct fw_graph *g = fw_graph_new(r->ctx, &r->m.loss, 1, &(struct fw_graph_opts){ 0 });
	ck_assert(g != NULL);
	ck_assert(fw_graph_forward(g) == FW_OK);
	float now = *(float *)r->m.loss->data;
	fw_graph_free(g);
	ck_assert_msg(memcmp(&kept, &now, sizeof(kept)) == 0, "%s: loss %.9g, fresh graph %.9g",
		      what, (double)kept, (double)now);
	return kept;
}

START_TEST(test_merge_load_bf16)
{
	static const char *const o[] = { "lora-r", "4", "lora-alpha", "12",
					 "lora-target-modules", "c_attn,c_fc", NULL };
	struct rig r;
	struct fw_err err = { 0 };
	unsetenv("FW_HALF_SHADOW_CHECK");      /* the kept copies as they run */
	rig_open_as(&r, o, FW_BF16);
	randomize_b(&r, 0.5f);
	struct fw_tensor *w = find(&r, "h.1.mlp.c_fc.weight");
	ck_assert(!(w->flags & FW_FLAG_TRAINABLE));
	float l0 = expect_fresh(&r, "first forward");

	ck_assert_msg(r.pi->merge(r.peft->state, &r.m, &err) == FW_OK, "%s", err.msg);
	float l1 = expect_fresh(&r, "after merge");
	ck_assert_msg(l1 != l0, "the merged bf16 loss is bit-identical: W's change not seen");
	ck_assert_msg(fabsf(l1 - l0) <= 2e-2f * fabsf(l0), "merged loss %g vs %g", l1, l0);
	ck_assert_msg(r.pi->unmerge(r.peft->state, &r.m, &err) == FW_OK, "%s", err.msg);
	float l2 = expect_fresh(&r, "after unmerge");
	ck_assert_msg(fabsf(l2 - l0) <= 1e-5f * fabsf(l0), "unmerged loss %g vs %g", l2, l0);

	/* the runtime's weight load: a file holding the base with W scaled */
	int np = 0, n_new = 0;
	struct fw_tensor **ps = malloc(sizeof(*ps) * (size_t)fw_ctx_n_tensors(r.ctx));
	for (int i = 0; i < fw_ctx_n_tensors(r.ctx); i++) {
		struct fw_tensor *t = fw_ctx_tensor(r.ctx, i);
		if ((t->flags & FW_FLAG_PARAM) && !(t->flags & FW_FLAG_BY_PEFT))
			ps[np++] = t;
	}
	for (int64_t i = 0; i < fw_nelem(w); i++)
		fw_f32(w)[i] *= 4.0f;
	char path[4400];
	snprintf(path, sizeof(path), "%s/base.h5", scratch);
	ck_assert_msg(fw_h5_save(path, ps, np, NULL, 0, &err) == FW_OK, "%s", err.msg);
	for (int64_t i = 0; i < fw_nelem(w); i++)
		fw_f32(w)[i] *= 0.25f;
	fw_tensor_mark_written(w);
	ck_assert(expect_fresh(&r, "restored") == l2);
	ck_assert_msg(fw_rt_model_load_weights(path, ps, np, &r.slots, true, &n_new, NULL, &err) ==
		      FW_OK, "%s", err.msg);
	ck_assert_msg(expect_fresh(&r, "after fw_rt_model_load_weights") != l2,
		      "the loaded W changed nothing");
	free(ps);
	unlink(path);
	rig_close(&r);
}
END_TEST

static Suite *lora_suite(void)
{
	Suite *s = suite_create("lora");
	TCase *tc = fwt_tcase("lora", 60);
	tcase_add_test(tc, test_freeze);
	tcase_add_test(tc, test_init_values);
	tcase_add_test(tc, test_merge_unmerge);
	tcase_add_test(tc, test_merge_load_bf16);
	tcase_add_test(tc, test_save_load);
	tcase_add_test(tc, test_bad_options);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	const char *b = getenv("FW_BUILD_DIR");
	if (!b || !*b) {
		fprintf(stderr, "test_lora: FW_BUILD_DIR not set (run through ctest)\n");
		return 2;
	}
	snprintf(plugin_path, sizeof(plugin_path), "%s/plugins", b);
	snprintf(scratch, sizeof(scratch), "/tmp/test_lora.XXXXXX");
	if (!mkdtemp(scratch)) {
		perror("mkdtemp");
		return 2;
	}
	int rc = fwt_run_suite(lora_suite());
	DIR *d = opendir(scratch);            /* what a failed test left behind */
	struct dirent *e;
	while (d && (e = readdir(d))) {
		char p[4600];
		if (e->d_name[0] == '.')
			continue;
		snprintf(p, sizeof(p), "%s/%s", scratch, e->d_name);
		unlink(p);
	}
	if (d)
		closedir(d);
	rmdir(scratch);
	return rc;
}
