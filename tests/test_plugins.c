/* test_plugins.c - the plugin loader, its checks, typed options, and
 * allocation failures injected through the host table and the core
 * allocator. The plugins come from tests/plugins (built into
 * $FW_BUILD_DIR/test-plugins*) and plugins/ (the build tree's plugins/). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

static char build_dir[4096];
static char default_path[9000];     /* FW_PLUGIN_PATH of every test */

/* Each test starts from the same process state, also with CK_FORK=no. */
static void reset_state(void)
{
	setenv("FW_PLUGIN_PATH", default_path, 1);
	fw_set_allocator(NULL, NULL, NULL);
	fw_set_abort_handler(NULL);
}

static const char *good_dir(void)
{
	static char d[4200];
	snprintf(d, sizeof(d), "%s/test-plugins", build_dir);
	return d;
}

/* $FW_BUILD_DIR/test-plugins-bad/DEFECT.so */
static const char *bad_path(const char *defect)
{
	static char p[4300];
	snprintf(p, sizeof(p), "%s/test-plugins-bad/%s.so", build_dir, defect);
	return p;
}

/* Every error message is one line that names the file. */
#define ck_one_line(msg) \
	ck_assert_msg(!strchr(msg, '\n') && (msg)[0], "not one line: '%s'", msg)
#define ck_has(msg, s) \
	ck_assert_msg(strstr(msg, s) != NULL, "'%s' does not contain '%s'", msg, s)

/* --- loading good plugins -------------------------------------------------------- */

START_TEST(test_open_good)
{
	static const struct { const char *name; int kind; int n_options; } good[] = {
		{ "arch/tiny", FW_KIND_ARCH, 4 },
		{ "attention/naive", FW_KIND_ATTENTION, 0 },
		{ "peft/probe", FW_KIND_PEFT, 6 },
		{ "optim/heavy", FW_KIND_OPTIM, 2 },
		{ "optim/adamw", FW_KIND_OPTIM, 3 },
		{ "optim/sgd", FW_KIND_OPTIM, 2 },
	};
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		struct fw_loaded *p = NULL;
		struct fw_err err = { 0 };
		enum fw_status s = fw_plugin_open(good[i].name, good[i].kind, &p, &err);
		ck_assert_msg(s == FW_OK, "%s: %s", good[i].name, err.msg);
		ck_assert_str_eq(p->desc->name, good[i].name);
		ck_assert_int_eq(p->desc->n_options, good[i].n_options);
		ck_assert_int_eq(fw_options_count(p->opts), good[i].n_options);
		char tail[128];
		snprintf(tail, sizeof(tail), "/%s.so", good[i].name);
		ck_assert_msg(strlen(p->path) > strlen(tail) &&
			      !strcmp(p->path + strlen(p->path) - strlen(tail), tail),
			      "%s resolved to %s", good[i].name, p->path);
		ck_assert_msg(fw_plugin_init(p, NULL, &err) == FW_OK, "%s", err.msg);
		ck_assert(p->initialized);
		fw_plugin_close(p);
	}
}
END_TEST

START_TEST(test_open_by_path)
{
	char path[4300];
	struct fw_loaded *p = NULL;
	struct fw_err err = { 0 };
	snprintf(path, sizeof(path), "%s/arch/tiny.so", good_dir());
	ck_assert_msg(fw_plugin_open(path, FW_KIND_ARCH, &p, &err) == FW_OK, "%s", err.msg);
	ck_assert_str_eq(p->path, path);
	/* tiny's defaults are resolved by init */
	ck_assert_msg(fw_plugin_init(p, NULL, &err) == FW_OK, "%s", err.msg);
	ck_assert_int_eq(fw_opt_int(p->opts, "vocab-size"), 64);
	ck_assert_int_eq(fw_opt_int(p->opts, "n-embd"), 16);
	ck_assert_int_eq(fw_opt_int(p->opts, "n-head"), 2);
	ck_assert_int_eq(fw_opt_int(p->opts, "n-layer"), 1);
	fw_plugin_close(p);
	fw_plugin_close(NULL);
}
END_TEST

/* --- broken plugins ------------------------------------------------------------------ */

struct bad_case {
	const char *defect;
	enum fw_status status;
	const char *says[3];
};

START_TEST(test_bad_plugins)
{
	char abi_major[64], abi_minor[64], size_big[96], iface_small[96];
	snprintf(iface_small, sizeof(iface_small), "optim interface is %zu bytes, fw expects %zu",
		 offsetof(struct fw_optim_i, step), (size_t)FW_OPTIM_I_SIZE_1_7);
	snprintf(abi_major, sizeof(abi_major), "built for ABI %d.%d, fw is %d.%d",
		 FW_ABI_MAJOR + 1, FW_ABI_MINOR, FW_ABI_MAJOR, FW_ABI_MINOR);
	snprintf(abi_minor, sizeof(abi_minor), "built for ABI %d.%d, fw is %d.%d",
		 FW_ABI_MAJOR, FW_ABI_MINOR + 1, FW_ABI_MAJOR, FW_ABI_MINOR);
	snprintf(size_big, sizeof(size_big), "descriptor is %zu bytes, fw expects %zu to %zu",
		 sizeof(struct fw_plugin) + 16, (size_t)FW_PLUGIN_SIZE_1_0,
		 sizeof(struct fw_plugin));
	const struct bad_case cases[] = {
		{ "no_entry", FW_ERR_FORMAT, { "no 'fw_plugin_entry' symbol", "not an fw plugin" } },
		{ "entry_null", FW_ERR_FORMAT, { "fw_plugin_entry returned NULL" } },
		{ "abi_major", FW_ERR_UNSUPPORTED, { abi_major } },
		{ "abi_minor", FW_ERR_UNSUPPORTED, { abi_minor } },
		{ "fingerprint", FW_ERR_UNSUPPORTED, { "struct layouts differ", "rebuild" } },
		{ "size_big", FW_ERR_UNSUPPORTED, { size_big } },
		{ "size_small", FW_ERR_FORMAT, { "descriptor is 8 bytes", "too small" } },
		{ "kind", FW_ERR_FORMAT, { "unknown plugin kind 99" } },
		{ "name", FW_ERR_FORMAT, { "'arch/bad'", "'optim/NAME'" } },
		{ "no_iface", FW_ERR_FORMAT, { "optim/bad", "interface" } },
		{ "opt_table", FW_ERR_FORMAT, { "optim/bad", "bad option table" } },
		{ "opt_type", FW_ERR_FORMAT, { "option 2 is malformed" } },
		{ "opt_choices", FW_ERR_FORMAT, { "option 2 is malformed" } },
		{ "opt_noname", FW_ERR_FORMAT, { "option 2 is malformed" } },
		{ "opt_default", FW_ERR_FORMAT, { "bad default", "'bad-count'", "'many'" } },
		{ "opt_range", FW_ERR_FORMAT, { "bad default", "'bad-count'", "out of range" } },
		{ "opt_choice_default", FW_ERR_FORMAT, { "bad default", "'bad-shade'", "'blue'" } },
		{ "opt_dup", FW_ERR_FORMAT, { "'bad-level'", "declared twice" } },
		/* what the guide promises, checked at load (issue 18) */
		{ "no_step", FW_ERR_FORMAT, { "'optim/bad'", "no fw_optim_i.step (required)" } },
		{ "state_names", FW_ERR_FORMAT, { "no fw_optim_i.state_names (required)" } },
		{ "opt_case", FW_ERR_FORMAT, { "'Lion_Beta1'", "lower case words joined by dashes" } },
		/* an interface without all of its ABI minor's members */
		{ "iface_small", FW_ERR_UNSUPPORTED, { iface_small, "ABI 1." } },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct bad_case *c = &cases[i];
		const char *path = bad_path(c->defect);
		struct fw_loaded *p = NULL;
		struct fw_err err = { 0 };
		ck_assert_msg(access(path, R_OK) == 0, "%s was not built", path);
		enum fw_status s = fw_plugin_open(path, 0, &p, &err);
		ck_assert_msg(s == c->status, "%s: status %s, expected %s (%s)", c->defect,
			      fw_status_str(s), fw_status_str(c->status), err.msg);
		ck_assert_msg(p == NULL, "%s: a plugin came back", c->defect);
		ck_assert_int_eq(err.status, s);
		ck_one_line(err.msg);
		ck_has(err.msg, path);
		for (int k = 0; k < 3 && c->says[k]; k++)
			ck_has(err.msg, c->says[k]);
	}
}
END_TEST

/* The defect-free build of bad.c loads: each defect above is the only one. */
START_TEST(test_bad_baseline)
{
	struct fw_loaded *p = NULL;
	struct fw_err err = { 0 };
	ck_assert_msg(fw_plugin_open(bad_path("none"), FW_KIND_OPTIM, &p, &err) == FW_OK,
		      "%s", err.msg);
	ck_assert_str_eq(p->desc->name, "optim/bad");
	ck_assert_msg(fw_plugin_init(p, NULL, &err) == FW_OK, "%s", err.msg);
	ck_assert_int_eq(fw_opt_int(p->opts, "bad-level"), 3);
	ck_assert_str_eq(fw_opt_str(p->opts, "bad-colour"), "red");
	fw_plugin_close(p);
}
END_TEST

/* fw/plugin.h declares fw_plugin_entry (exported), so a definition needs no
 * prototype of its own and cannot be hidden by mistake. */
_Static_assert(__builtin_types_compatible_p(__typeof__(&fw_plugin_entry), fw_plugin_entry_fn),
	       "fw/plugin.h declares fw_plugin_entry");

START_TEST(test_entry_unmarked_is_exported)
{
	struct fw_loaded *p = NULL;
	struct fw_err err = { 0 };
	ck_assert_msg(fw_plugin_open(bad_path("entry_unmarked"), FW_KIND_OPTIM, &p, &err) ==
		      FW_OK, "%s", err.msg);
	fw_plugin_close(p);
}
END_TEST

/* Loaded by name, a plugin must call itself by that name; by path it may not. */
START_TEST(test_name_must_match_path)
{
	char dir[4300], path[4400];
	snprintf(dir, sizeof(dir), "%s/test-plugins-misnamed", build_dir);
	snprintf(path, sizeof(path), "%s/optim/foo.so", dir);
	setenv("FW_PLUGIN_PATH", dir, 1);
	struct fw_loaded *p = NULL;
	struct fw_err err = { 0 };
	ck_assert_int_eq(fw_plugin_open("optim/foo", FW_KIND_OPTIM, &p, &err), FW_ERR_FORMAT);
	ck_assert_ptr_null(p);
	ck_one_line(err.msg);
	ck_has(err.msg, path);
	ck_has(err.msg, "names itself 'optim/bad', but was loaded as 'optim/foo'");
	ck_assert_msg(fw_plugin_open(path, FW_KIND_OPTIM, &p, &err) == FW_OK, "%s", err.msg);
	ck_assert_str_eq(p->desc->name, "optim/bad");
	fw_plugin_close(p);
}
END_TEST

/* A valid descriptor for fw_plugin_check, built here without dlopen. */
static enum fw_status noop_step(void *state, const struct fw_optim_group *groups, int n_groups,
				int64_t step, struct fw_err *err)
{
	return FW_OK;
}

static const struct fw_optim_i check_oi = { .size = sizeof(check_oi), .step = noop_step };

static struct fw_plugin check_desc(void)
{
	return (struct fw_plugin){
		FW_PLUGIN_HEADER, .kind = FW_KIND_OPTIM, .name = "optim/x", .version = "1",
		.iface = &check_oi,
	};
}

/* A plugin built against the frozen ABI 1.0 headers loads, and its step runs
 * in today's fw (tests/abi/plugin-1.0/old10.c). */
START_TEST(test_abi_1_0_plugin)
{
	char path[4400];
	snprintf(path, sizeof(path), "%s/test-plugins-abi/optim/old10.so", build_dir);
	struct fw_loaded *p = NULL;
	struct fw_err err = { 0 };
	ck_assert_msg(fw_plugin_open(path, FW_KIND_OPTIM, &p, &err) == FW_OK, "%s", err.msg);
	ck_assert_int_eq(p->desc->abi_major, 1);
	ck_assert_int_eq(p->desc->abi_minor, 0);
	ck_assert_uint_eq(p->desc->size, FW_PLUGIN_SIZE_1_0);
	ck_assert_msg(fw_options_set(p->opts, "old10-momentum", "0.5", &err) == FW_OK, "%s",
		      err.msg);
	ck_assert_msg(fw_plugin_init(p, NULL, &err) == FW_OK, "%s", err.msg);

	/* callers read the loader's full-size copies, not the plugin's structs */
	ck_assert_ptr_eq(p->desc, &p->desc_full);
	ck_assert_ptr_eq(p->desc->iface, &p->iface_full);
	const struct fw_optim_i *oi = p->desc->iface;
	ck_assert_uint_eq(oi->size, FW_OPTIM_I_SIZE_1_0);
	ck_assert_int_eq(oi->n_state, 1);
	ck_assert_str_eq(oi->state_names[0], "momentum_buffer");
	float w[3] = { 1, 2, 3 }, g[3] = { 0.5f, -1, 2 }, buf[3] = { 0 };
	struct fw_tensor gt = { .dtype = FW_F32, .ndim = 1, .ne = { 3 }, .nb = { 1 }, .data = g };
	struct fw_tensor wt = { .dtype = FW_F32, .ndim = 1, .ne = { 3 }, .nb = { 1 }, .data = w,
				.grad = &gt };
	struct fw_tensor *params[1] = { &wt };
	float *st[1] = { buf };
	float **states[1] = { st };
	struct fw_optim_group grp = { .lr = 0.1f, .weight_decay = 0, .n_params = 1,
				      .params = params, .state = states };
	ck_assert_msg(oi->step(p->state, &grp, 1, 1, &err) == FW_OK, "%s", err.msg);
	ck_assert_msg(oi->step(p->state, &grp, 1, 2, &err) == FW_OK, "%s", err.msg);
	/* buf = g, then 0.5 g + g; w -= 0.1 (g + 1.5 g) */
	for (int i = 0; i < 3; i++)
		ck_assert_float_eq_tol(w[i], (float)(i + 1) - 0.25f * g[i], 1e-6f);
	ck_assert_int_eq(oi->step(p->state, &grp, 1, 0, &err), FW_ERR_INVALID);
	ck_has(err.msg, "optim/old10: step 0 < 1");
	fw_plugin_close(p);
}
END_TEST

/* Descriptor and interface sizes are checked against the frozen sizes of
 * the minor the plugin declares. */
START_TEST(test_abi_sizes)
{
	struct fw_plugin d = check_desc();
	struct fw_err err = { 0 };
	ck_assert_int_eq(fw_plugin_check(&d, "x.so", 0, &err), FW_OK);
	/* the smallest descriptor and interface of this minor are accepted */
	d.size = FW_PLUGIN_SIZE_1_0;
	ck_assert_int_eq(fw_plugin_check(&d, "x.so", 0, &err), FW_OK);
	struct fw_optim_i small = check_oi;
	small.size = FW_OPTIM_I_SIZE_1_7;
	d.iface = &small;
	ck_assert_int_eq(fw_plugin_check(&d, "x.so", 0, &err), FW_OK);
	/* one byte short of a member is refused, naming the sizes and the minor */
	small.size = FW_OPTIM_I_SIZE_1_7 - 1;
	ck_assert_int_eq(fw_plugin_check(&d, "x.so", 0, &err), FW_ERR_UNSUPPORTED);
	ck_one_line(err.msg);
	char want[160];
	snprintf(want, sizeof(want), "x.so: optim interface is %zu bytes, fw expects %zu to %zu "
		 "for ABI %d.%d", (size_t)FW_OPTIM_I_SIZE_1_7 - 1, (size_t)FW_OPTIM_I_SIZE_1_7,
		 sizeof(struct fw_optim_i), FW_ABI_MAJOR, FW_ABI_MINOR);
	ck_assert_str_eq(err.msg, want);
	/* 1.6 had no step_fused: an optimizer of 1.6 without it is accepted */
	d.abi_minor = 6;
	small.size = FW_OPTIM_I_SIZE_1_0;
	ck_assert_int_eq(fw_plugin_check(&d, "x.so", 0, &err), FW_OK);
	d.abi_minor = FW_ABI_MINOR;
	d.iface = &check_oi;
	d.size = FW_PLUGIN_SIZE_1_0 - 1;
	ck_assert_int_eq(fw_plugin_check(&d, "x.so", 0, &err), FW_ERR_UNSUPPORTED);
	ck_has(err.msg, "descriptor is");
	d.size = sizeof(d);

	/* a newer minor: one line with both versions */
	d.abi_minor = FW_ABI_MINOR + 1;
	ck_assert_int_eq(fw_plugin_check(&d, "x.so", 0, &err), FW_ERR_UNSUPPORTED);
	snprintf(want, sizeof(want), "x.so: built for ABI %d.%d, fw is %d.%d", FW_ABI_MAJOR,
		 FW_ABI_MINOR + 1, FW_ABI_MAJOR, FW_ABI_MINOR);
	ck_assert_str_eq(err.msg, want);
	/* an older minor carries the fingerprint of its time: today's is refused */
	d.abi_minor = 0;
	ck_assert_int_eq(fw_plugin_check(&d, "x.so", 0, &err), FW_ERR_UNSUPPORTED);
	ck_has(err.msg, "for ABI 1.0): rebuild");

	/* 1.3 appended fw_peft_i.check: a peft plugin of 1.2 without it loads,
	 * one that says 1.3 must have it */
	static const struct fw_peft_i peft12 = { .size = FW_PEFT_I_SIZE_1_2 };
	struct fw_plugin p = { FW_PLUGIN_HEADER, .kind = FW_KIND_PEFT, .name = "peft/x",
			       .version = "1", .iface = &peft12 };
	ck_assert_uint_lt(FW_PEFT_I_SIZE_1_2, FW_PEFT_I_SIZE_1_3);
	p.abi_minor = 2;
	ck_assert_msg(fw_plugin_check(&p, "x.so", 0, &err) == FW_OK, "%s", err.msg);
	p.abi_minor = 3;
	ck_assert_int_eq(fw_plugin_check(&p, "x.so", 0, &err), FW_ERR_UNSUPPORTED);
	snprintf(want, sizeof(want), "x.so: peft interface is %zu bytes, fw expects %zu to %zu "
		 "for ABI 1.3", (size_t)FW_PEFT_I_SIZE_1_2, (size_t)FW_PEFT_I_SIZE_1_3,
		 sizeof(struct fw_peft_i));
	ck_assert_str_eq(err.msg, want);
}
END_TEST

/* arch/decoder's Hugging Face map (ABI 1.3 fw_arch_i.hf_maps) is GPT-2 as
 * transformers has it (GPT2Config, GPT2Model): the config keys of its
 * sizes (n_ctx an older name of n_positions), the "transformer." prefix,
 * and Conv1D weights stored (in, out): c_attn, c_proj and c_fc weights
 * transposed, biases, norms and embeddings not. */
START_TEST(test_decoder_hf_map)
{
	struct fw_loaded *p = fwt_plugin_open("arch/decoder", FW_KIND_ARCH, NULL);
	const struct fw_arch_i *ai = p->desc->iface;
	ck_assert_ptr_nonnull(ai->hf_maps);
	const struct fw_hf_map *m = ai->hf_maps[0];
	ck_assert_ptr_nonnull(m);
	/* then the Llama family (hf_llama.c; tests/llama_hf.py runs them) */
	static const char *const family[] = { "llama", "qwen2", "mistral" };
	for (int i = 0; i < 3; i++)
		ck_assert_str_eq(ai->hf_maps[1 + i]->model_type, family[i]);
	ck_assert_ptr_null(ai->hf_maps[4]);
	ck_assert_str_eq(m->model_type, "gpt2");
	ck_assert_str_eq(m->architecture, "GPT2LMHeadModel");
	static const char *const pairs[][2] = {
		{ "n_layer", "n-layer" }, { "n_head", "n-head" }, { "n_embd", "n-embd" },
		{ "vocab_size", "vocab-size" }, { "n_positions", "n-positions" },
		{ "n_ctx", "n-positions" }, { "layer_norm_epsilon", "layer-norm-eps" },
		{ "tie_word_embeddings", "tie-embeddings" },
	};
	ck_assert_int_eq(m->n_keys, 8);
	for (int i = 0; i < 8; i++) {
		ck_assert_str_eq(m->keys[i].key, pairs[i][0]);
		ck_assert_str_eq(m->keys[i].option, pairs[i][1]);
	}
	ck_assert_str_eq(m->key_prefixes[0], "transformer.");
	static const struct { const char *name; bool tr; } t[] = {
		{ "wte.weight", false }, { "wpe.weight", false }, { "h.3.ln_1.weight", false },
		{ "h.3.attn.c_attn.weight", true }, { "h.3.attn.c_attn.bias", false },
		{ "h.3.attn.c_proj.weight", true }, { "h.3.mlp.c_fc.weight", true },
		{ "h.3.mlp.c_proj.weight", true }, { "h.3.mlp.c_proj.bias", false },
		{ "ln_f.bias", false }, { "lm_head.weight", false },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		char key[FW_NAME_MAX];
		bool tr = !t[i].tr;
		ck_assert(m->tensor_key(p->opts, t[i].name, key, sizeof(key), &tr));
		ck_assert_str_eq(key, t[i].name);
		ck_assert_msg(tr == t[i].tr, "%s", t[i].name);
	}
	ck_assert(m->describes(p->opts));         /* the defaults are GPT-2's */
	fw_plugin_close(p);
	static const char *const llama[] = { "norm", "rmsnorm", NULL };
	p = fwt_plugin_open("arch/decoder", FW_KIND_ARCH, llama);
	ck_assert(!((const struct fw_arch_i *)p->desc->iface)->hf_maps[0]->describes(p->opts));
	fw_plugin_close(p);
}
END_TEST

START_TEST(test_init_fails)
{
	struct fw_loaded *p = NULL;
	struct fw_err err = { 0 };
	ck_assert_msg(fw_plugin_open(bad_path("init_fail"), 0, &p, &err) == FW_OK, "%s",
		      err.msg);
	enum fw_status s = fw_plugin_init(p, NULL, &err);
	ck_assert_int_eq(s, FW_ERR_INVALID);
	ck_assert_int_eq(err.status, FW_ERR_INVALID);
	ck_one_line(err.msg);
	ck_has(err.msg, "optim/bad: init failed");
	ck_has(err.msg, "the test asked this init to fail");
	ck_assert(!p->initialized);
	fw_plugin_close(p);     /* no fini after a failed init */
}
END_TEST

/* Files that are not shared objects, or not there. */
START_TEST(test_not_a_plugin_file)
{
	char dir[] = "/tmp/fw-test-plugins-XXXXXX", path[128], empty[128], sub[128];
	ck_assert(mkdtemp(dir) != NULL);
	snprintf(path, sizeof(path), "%s/x.so", dir);
	snprintf(empty, sizeof(empty), "%s/empty.so", dir);
	snprintf(sub, sizeof(sub), "%s/dir.so", dir);
	FILE *f = fopen(path, "w");
	ck_assert(f != NULL);
	fputs("this is not an ELF shared object\n", f);
	fclose(f);
	f = fopen(empty, "w");
	ck_assert(f != NULL);
	fclose(f);
	ck_assert_int_eq(mkdir(sub, 0700), 0);

	const char *files[] = { path, empty };
	for (int i = 0; i < 2; i++) {
		struct fw_loaded *p = NULL;
		struct fw_err err = { 0 };
		ck_assert_int_eq(fw_plugin_open(files[i], 0, &p, &err), FW_ERR_FORMAT);
		ck_assert(p == NULL);
		ck_one_line(err.msg);
		ck_has(err.msg, files[i]);
		ck_has(err.msg, "cannot load plugin");
	}
	const char *missing[] = { "/nonexistent/dir/y.so", sub };
	for (int i = 0; i < 2; i++) {
		struct fw_loaded *p = NULL;
		struct fw_err err = { 0 };
		ck_assert_int_eq(fw_plugin_open(missing[i], 0, &p, &err), FW_ERR_IO);
		ck_one_line(err.msg);
		ck_has(err.msg, missing[i]);
		ck_has(err.msg, "no such plugin file");
	}
	unlink(path);
	unlink(empty);
	rmdir(sub);
	rmdir(dir);
}
END_TEST

START_TEST(test_unknown_name_lists_available)
{
	struct fw_loaded *p = NULL;
	struct fw_err err = { 0 };
	ck_assert_int_eq(fw_plugin_open("arch/tinny", 0, &p, &err), FW_ERR_NOT_FOUND);
	ck_assert(p == NULL);
	ck_one_line(err.msg);
	ck_has(err.msg, "unknown plugin 'arch/tinny'");
	ck_has(err.msg, "available:");
	ck_has(err.msg, "arch/tiny");
	ck_has(err.msg, "attention/naive");
	ck_has(err.msg, "peft/probe");
	ck_has(err.msg, "optim/adamw");
	/* a kind that does not exist */
	ck_assert_int_eq(fw_plugin_open("tokenizer/bpe", 0, &p, &err), FW_ERR_NOT_FOUND);
	ck_has(err.msg, "unknown plugin 'tokenizer/bpe'");
}
END_TEST

START_TEST(test_wrong_kind)
{
	struct fw_loaded *p = NULL;
	struct fw_err err = { 0 };
	ck_assert_int_eq(fw_plugin_open("optim/adamw", FW_KIND_ARCH, &p, &err), FW_ERR_INVALID);
	ck_assert(p == NULL);
	ck_one_line(err.msg);
	ck_has(err.msg, "adamw.so");
	ck_has(err.msg, "'optim/adamw'");
	ck_has(err.msg, "this slot needs kind 'arch'");
	ck_assert_int_eq(fw_plugin_open("arch/tiny", FW_KIND_ATTENTION, &p, &err), FW_ERR_INVALID);
	ck_has(err.msg, "tiny.so");
	ck_has(err.msg, "this slot needs kind 'attention'");
	ck_assert_int_eq(fw_plugin_open("peft/probe", FW_KIND_OPTIM, &p, &err), FW_ERR_INVALID);
	ck_has(err.msg, "this slot needs kind 'optim'");
}
END_TEST

/* Two plugins named optim/adamw: the loader takes the first on the search
 * path (FW_PLUGIN_PATH before the build tree); both load by path. fwrun
 * refuses to use both (test_fwrun.c). */
START_TEST(test_same_name)
{
	char dup[4300], real[4300], env[9000];
	snprintf(dup, sizeof(dup), "%s/test-plugins-dup", build_dir);
	snprintf(real, sizeof(real), "%s/plugins/optim/adamw.so", build_dir);
	struct fw_loaded *a = NULL, *b = NULL;
	struct fw_err err = { 0 };

	ck_assert_msg(fw_plugin_open("optim/adamw", 0, &a, &err) == FW_OK, "%s", err.msg);
	ck_assert_str_eq(a->path, real);
	snprintf(env, sizeof(env), "%s:%s/plugins", dup, build_dir);
	setenv("FW_PLUGIN_PATH", env, 1);
	ck_assert_msg(fw_plugin_open("optim/adamw", 0, &b, &err) == FW_OK, "%s", err.msg);
	ck_assert_str_eq(b->path + strlen(dup), "/optim/adamw.so");
	ck_assert_str_eq(a->desc->name, b->desc->name);
	ck_assert(a->desc != b->desc);
	fw_plugin_close(a);
	fw_plugin_close(b);

	char **paths = NULL;
	int n = 0, seen = 0;
	ck_assert_int_eq(fw_plugin_discover(&paths, &n, &err), FW_OK);
	for (int i = 0; i < n; i++)
		seen += strlen(paths[i]) > 14 &&
			!strcmp(paths[i] + strlen(paths[i]) - 15, "/optim/adamw.so");
	ck_assert_int_ge(seen, 2);
	fw_plugin_paths_free(paths, n);
}
END_TEST

START_TEST(test_search_dirs)
{
	setenv("FW_PLUGIN_PATH", "/a::/b/c:", 1);
	char **d = fw_plugin_search_dirs();
	ck_assert(d != NULL);
	ck_assert_str_eq(d[0], "/a");
	ck_assert_str_eq(d[1], "/b/c");
	int n = 0;
	while (d[n])
		n++;
	ck_assert_int_ge(n, 3);         /* then the install dir and the build tree */
	char build_plugins[4300];
	snprintf(build_plugins, sizeof(build_plugins), "%s/plugins", build_dir);
	ck_assert_str_eq(d[n - 1], build_plugins);
	for (int i = 0; i < n; i++)
		fw_free(d[i]);
	fw_free(d);

	/* each directory once, even when FW_PLUGIN_PATH names the build tree */
	snprintf(build_plugins, sizeof(build_plugins), "/a:%s/plugins:/a", build_dir);
	setenv("FW_PLUGIN_PATH", build_plugins, 1);
	d = fw_plugin_search_dirs();
	ck_assert(d != NULL);
	for (int i = 0; d[i]; i++)
		for (int j = 0; j < i; j++)
			ck_assert_msg(strcmp(d[i], d[j]), "%s listed twice", d[i]);
	for (int i = 0; d[i]; i++)
		fw_free(d[i]);
	fw_free(d);

	unsetenv("FW_PLUGIN_PATH");
	d = fw_plugin_search_dirs();
	ck_assert(d != NULL && d[0] != NULL);
	ck_assert_str_ne(d[0], "/a");
	for (int i = 0; d[i]; i++)
		fw_free(d[i]);
	fw_free(d);
}
END_TEST

START_TEST(test_discover)
{
	char **paths = NULL;
	int n = 0;
	struct fw_err err = { 0 };
	static const char *const want[] = { "/arch/tiny.so", "/attention/naive.so",
					    "/peft/probe.so", "/optim/heavy.so",
					    "/optim/adamw.so", "/optim/sgd.so" };
	ck_assert_int_eq(fw_plugin_discover(&paths, &n, &err), FW_OK);
	for (size_t w = 0; w < sizeof(want) / sizeof(want[0]); w++) {
		bool found = false;
		for (int i = 0; i < n; i++)
			found |= strstr(paths[i], want[w]) != NULL;
		ck_assert_msg(found, "%s not discovered", want[w]);
	}
	/* the broken ones are never on the default search path */
	for (int i = 0; i < n; i++)
		ck_assert_msg(!strstr(paths[i], "test-plugins-bad") &&
			      !strstr(paths[i], "test-plugins-dup"), "found %s", paths[i]);
	fw_plugin_paths_free(paths, n);
}
END_TEST

/* fw_plugin_check on descriptors built here, without dlopen. */
START_TEST(test_check_descriptor)
{
	struct fw_plugin d = check_desc();
	struct fw_err err = { 0 };
	ck_assert_int_eq(fw_plugin_check(&d, "x.so", 0, &err), FW_OK);
	ck_assert_int_eq(fw_plugin_check(&d, "x.so", FW_KIND_OPTIM, &err), FW_OK);
	ck_assert_int_eq(fw_plugin_check(NULL, "x.so", 0, &err), FW_ERR_FORMAT);
	ck_has(err.msg, "x.so");

	d.abi_major = 7;
	d.abi_minor = 3;
	ck_assert_int_eq(fw_plugin_check(&d, "x.so", 0, &err), FW_ERR_UNSUPPORTED);
	char want[96];
	snprintf(want, sizeof(want), "x.so: built for ABI 7.3, fw is %d.%d", FW_ABI_MAJOR,
		 FW_ABI_MINOR);
	ck_assert_str_eq(err.msg, want);

	/* an older minor of the same major is accepted (with the fingerprint of
	 * its time: see test_abi_sizes and test_abi_1_0_plugin) */
	d.abi_major = FW_ABI_MAJOR;
	d.abi_minor = FW_ABI_MINOR;
	ck_assert_int_eq(fw_plugin_check(&d, "x.so", 0, &err), FW_OK);

	d.name = "optim/";
	ck_assert_int_eq(fw_plugin_check(&d, "x.so", 0, &err), FW_ERR_FORMAT);
	d.name = "optim/a/b";
	ck_assert_int_eq(fw_plugin_check(&d, "x.so", 0, &err), FW_ERR_FORMAT);
	d.name = NULL;
	ck_assert_int_eq(fw_plugin_check(&d, "x.so", 0, &err), FW_ERR_FORMAT);
	ck_has(err.msg, "(null)");
	d.name = "optim/x";
	d.version = NULL;
	ck_assert_int_eq(fw_plugin_check(&d, "x.so", 0, &err), FW_ERR_FORMAT);
	d.version = "1";
	d.n_options = -1;
	ck_assert_int_eq(fw_plugin_check(&d, "x.so", 0, &err), FW_ERR_FORMAT);
	d.n_options = 0;
	ck_assert_int_eq(fw_plugin_kind_name(FW_KIND_ATTENTION)[0], 'a');
	ck_assert_str_eq(fw_plugin_kind_name(0), "?");
	ck_assert_str_eq(fw_plugin_kind_name(FW_KIND_COUNT), "?");

	/* A bad default with no error record: must not crash. */
	static const struct fw_option_def bad[] = {
		{ "n", FW_OPT_INT, "x", 0, -1, NULL, NULL },
	};
	d.options = bad;
	d.n_options = 1;
	ck_assert_int_eq(fw_plugin_check(&d, "x.so", 0, NULL), FW_ERR_FORMAT);
	ck_assert_int_eq(fw_plugin_check(&d, "x.so", 0, &err), FW_ERR_FORMAT);
	ck_has(err.msg, "x.so: bad default");
	ck_has(err.msg, "'n'");
}
END_TEST

/* --- the test plugins in process ------------------------------------------------------ */

static struct fw_loaded *open_init(const char *name, int kind)
{
	struct fw_loaded *p = NULL;
	struct fw_err err = { 0 };
	ck_assert_msg(fw_plugin_open(name, kind, &p, &err) == FW_OK, "%s", err.msg);
	ck_assert_msg(fw_plugin_init(p, NULL, &err) == FW_OK, "%s", err.msg);
	return p;
}

static float frand(uint32_t *s)
{
	*s = *s * 1664525u + 1013904223u;
	return (float)(*s >> 8) / (float)(1u << 24) * 2.0f - 1.0f;
}

/* attention/naive against a direct loop: y[b,i,h] = sum_j p_ij v[b,j,h] with
 * p = softmax_j(q.k / sqrt(D)) over j <= i. q, k, v, y are (B,T,H,D). */
START_TEST(test_naive_attention)
{
	enum { B = 2, T = 5, H = 2, D = 4 };
	struct fw_loaded *att = open_init("attention/naive", FW_KIND_ATTENTION);
	struct fw_plugin_slots slots = { .attention = att };
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_model m = { .size = sizeof(m), .ctx = ctx, .host = fw_host_table(),
			      .batch = B, .seq_len = T, .host_private = &slots };
	const int64_t shape[4] = { B, T, H, D };
	struct fw_tensor *q = fw_input(ctx, "q", FW_F32, 4, shape);
	struct fw_tensor *k = fw_input(ctx, "k", FW_F32, 4, shape);
	struct fw_tensor *v = fw_input(ctx, "v", FW_F32, 4, shape);
	struct fw_attn_spec spec = { .size = sizeof(spec), .name = "t.attn", .n_head = H,
				     .n_kv_head = H, .head_dim = D, .mask = FW_MASK_CAUSAL };
	struct fw_tensor *y = m.host->attention(&m, &spec, q, k, v);
	ck_assert_msg(y != NULL, "%s", fw_ctx_err(ctx)->msg);
	ck_assert_int_eq(y->ndim, 4);
	for (int i = 0; i < 4; i++)
		ck_assert_int_eq(y->ne[i], shape[i]);
	struct fw_graph *g = fw_graph_new(ctx, &y, 1, &(struct fw_graph_opts){ 0 });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	uint32_t seed = 7;
	for (int i = 0; i < B * T * H * D; i++) {
		fw_f32(q)[i] = frand(&seed);
		fw_f32(k)[i] = frand(&seed);
		fw_f32(v)[i] = frand(&seed);
	}
	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
#define AT(t, b, i, h, d) fw_f32(t)[(((b) * T + (i)) * H + (h)) * D + (d)]
	for (int b = 0; b < B; b++)
		for (int h = 0; h < H; h++)
			for (int i = 0; i < T; i++) {
				double p[T], mx = -1e30, sum = 0;
				for (int j = 0; j <= i; j++) {
					double dot = 0;
					for (int d = 0; d < D; d++)
						dot += AT(q, b, i, h, d) * AT(k, b, j, h, d);
					p[j] = dot / sqrt((double)D);
					mx = p[j] > mx ? p[j] : mx;
				}
				for (int j = 0; j <= i; j++)
					sum += p[j] = exp(p[j] - mx);
				for (int d = 0; d < D; d++) {
					double want = 0;
					for (int j = 0; j <= i; j++)
						want += p[j] / sum * AT(v, b, j, h, d);
					ck_assert_msg(fabs(AT(y, b, i, h, d) - want) < 1e-5,
						      "y[%d,%d,%d,%d] = %g, want %g", b, i, h, d,
						      AT(y, b, i, h, d), want);
				}
			}
#undef AT
	fw_graph_free(g);
	fw_ctx_free(ctx);
	fw_plugin_close(att);
}
END_TEST

/* Grouped-query attention is refused with a message naming it. */
START_TEST(test_naive_refuses_gqa)
{
	struct fw_loaded *att = open_init("attention/naive", FW_KIND_ATTENTION);
	struct fw_plugin_slots slots = { .attention = att };
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_model m = { .size = sizeof(m), .ctx = ctx, .host = fw_host_table(),
			      .batch = 1, .seq_len = 3, .host_private = &slots };
	struct fw_tensor *q = fw_input(ctx, "q", FW_F32, 4, (int64_t[]){ 1, 3, 4, 2 });
	struct fw_tensor *kv = fw_input(ctx, "kv", FW_F32, 4, (int64_t[]){ 1, 3, 2, 2 });
	struct fw_attn_spec spec = { .size = sizeof(spec), .name = "h.1.attn", .n_head = 4,
				     .n_kv_head = 2, .head_dim = 2 };
	ck_assert(m.host->attention(&m, &spec, q, kv, kv) == NULL);
	const struct fw_err *e = fw_ctx_err(ctx);
	ck_assert_int_eq(e->status, FW_ERR_UNSUPPORTED);
	ck_one_line(e->msg);
	ck_has(e->msg, "attention/naive");
	ck_has(e->msg, "h.1.attn");
	ck_has(e->msg, "n_kv_head 2 != n_head 4");
	fw_ctx_free(ctx);
	fw_plugin_close(att);
}
END_TEST

/* arch/tiny + attention/naive + peft/probe built in process: stable names,
 * every hook reached, freeze leaves only the probe adapters trainable. */
START_TEST(test_tiny_with_probe)
{
	static const char *const base[] = {
		"wte", "wpe", "h.0.ln_1.weight", "h.0.ln_1.bias", "h.0.attn.q.weight",
		"h.0.attn.q.bias", "h.0.attn.k.weight", "h.0.attn.k.bias", "h.0.attn.v.weight",
		"h.0.attn.v.bias", "h.0.attn.proj.weight", "h.0.attn.proj.bias",
		"h.0.ln_2.weight", "h.0.ln_2.bias", "h.0.mlp.fc.weight", "h.0.mlp.fc.bias",
		"h.0.mlp.proj.weight", "h.0.mlp.proj.bias", "ln_f.weight", "ln_f.bias",
		"lm_head.weight",
	};
	static const char *const own[] = { "h.0.mlp.fc.probe_A", "h.0.mlp.fc.probe_B" };
	struct fw_err err = { 0 };
	struct fw_loaded *arch = open_init("arch/tiny", FW_KIND_ARCH);
	struct fw_loaded *att = open_init("attention/naive", FW_KIND_ATTENTION);
	struct fw_loaded *peft = NULL;
	ck_assert(fw_plugin_open("peft/probe", FW_KIND_PEFT, &peft, &err) == FW_OK);
	ck_assert(fw_options_set(peft->opts, "probe-extra-loss", "yes", &err) == FW_OK);
	ck_assert_msg(fw_plugin_init(peft, NULL, &err) == FW_OK, "%s", err.msg);
	struct fw_plugin_slots slots = { .arch = arch, .attention = att, .peft = peft };
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_model m = { .size = sizeof(m), .ctx = ctx, .host = fw_host_table(),
			      .opts = arch->opts, .batch = 2, .seq_len = 8, .training = true,
			      .seed = 1, .host_private = &slots };
	const struct fw_arch_i *ai = arch->desc->iface;
	const struct fw_peft_i *pi = peft->desc->iface;

	ck_assert_int_eq(ai->n_layers(arch->state, &m), 1);
	enum fw_status s = ai->build(arch->state, &m, &err);
	ck_assert_msg(s == FW_OK, "%s / %s", err.msg, fw_ctx_err(ctx)->msg);
	ck_assert(m.tokens && m.targets && m.loss && m.logits);
	ck_assert_int_eq(m.tokens->dtype, FW_I32);
	ck_assert_int_eq(m.logits->ndim, 3);
	ck_assert_int_eq(m.logits->ne[2], 64);
	ck_assert_int_eq(fw_nelem(m.loss), 1);

	int n_params = 0;
	for (int i = 0; i < fw_ctx_n_tensors(ctx); i++)
		n_params += (fw_ctx_tensor(ctx, i)->flags & FW_FLAG_PARAM) != 0;
	ck_assert_int_eq(n_params, 21 + 2);
	for (size_t i = 0; i < sizeof(base) / sizeof(base[0]); i++)
		ck_assert_msg(fw_ctx_find(ctx, base[i]) != NULL, "no parameter %s", base[i]);
	for (int i = 0; i < 2; i++)
		ck_assert_msg(fw_ctx_find(ctx, own[i]) != NULL, "no parameter %s", own[i]);

	ck_assert_int_eq(pi->freeze(peft->state, &m, &err), FW_OK);
	for (size_t i = 0; i < sizeof(base) / sizeof(base[0]); i++)
		ck_assert(!(fw_ctx_find(ctx, base[i])->flags & FW_FLAG_TRAINABLE));
	for (int i = 0; i < 2; i++)
		ck_assert(fw_ctx_find(ctx, own[i])->flags & FW_FLAG_TRAINABLE);
	struct fw_tensor *extra = pi->extra_loss(peft->state, &m, &err);
	ck_assert_msg(extra != NULL, "%s", err.msg);
	struct fw_tensor *loss = fw_add(ctx, m.loss, extra);
	struct fw_graph *g = fw_graph_new(ctx, &loss, 1, &(struct fw_graph_opts){
		.backward = true, .training = true });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	ck_assert_int_eq(fw_graph_n_params(g), 2);
	struct fw_memory_report r;
	fw_graph_memory(g, &r);
	ck_assert_int_eq(r.n_trainable, 4 * 16 + 64 * 4);

	/* the adapter I/O hooks say plainly that they are not there */
	ck_assert_int_eq(pi->save(peft->state, &m, "/tmp/x.h5", &err), FW_ERR_UNSUPPORTED);
	ck_has(err.msg, "peft/probe");
	ck_assert_int_eq(pi->load(peft->state, &m, "/tmp/x.h5", &err), FW_ERR_UNSUPPORTED);
	ck_assert_int_eq(pi->merge(peft->state, &m, &err), FW_ERR_UNSUPPORTED);
	ck_assert_int_eq(pi->unmerge(peft->state, &m, &err), FW_ERR_UNSUPPORTED);
	ck_assert_int_eq(pi->after_backward(peft->state, &m, 1, &err), FW_OK);

	fw_graph_free(g);
	fw_ctx_free(ctx);
	fw_plugin_close(peft);
	fw_plugin_close(att);
	fw_plugin_close(arch);
}
END_TEST

/* tiny's init checks its options against each other. */
START_TEST(test_tiny_bad_heads)
{
	struct fw_loaded *p = NULL;
	struct fw_err err = { 0 };
	ck_assert(fw_plugin_open("arch/tiny", FW_KIND_ARCH, &p, &err) == FW_OK);
	ck_assert(fw_options_set(p->opts, "n-head", "3", &err) == FW_OK);
	ck_assert_int_eq(fw_plugin_init(p, NULL, &err), FW_ERR_INVALID);
	ck_one_line(err.msg);
	ck_has(err.msg, "arch/tiny: init failed");
	ck_has(err.msg, "--n-embd 16 is not a multiple of --n-head 3");
	fw_plugin_close(p);
}
END_TEST

/* --- allocation failures through the host table ------------------------------------ */

static struct {
	int calls, fail_at, live;
} fake;

static void *fake_malloc(size_t n)
{
	if (++fake.calls == fake.fail_at)
		return NULL;
	void *p = fw_malloc(n);
	if (p)
		fake.live++;
	return p;
}

static void fake_free(void *p)
{
	if (p)
		fake.live--;
	fw_free(p);
}

/* For N = 1, 2, ...: init with a host whose Nth malloc fails returns
 * FW_ERR_NOMEM and holds nothing, until init no longer reaches N. */
static int host_failures(const char *name)
{
	struct fw_host host = *fw_host_table();
	host.malloc = fake_malloc;
	host.free = fake_free;
	for (int n = 1; n < 1000; n++) {
		struct fw_loaded *p = NULL;
		struct fw_err err = { 0 };
		ck_assert_msg(fw_plugin_open(name, 0, &p, &err) == FW_OK, "%s", err.msg);
		fake.calls = fake.live = 0;
		fake.fail_at = n;
		enum fw_status s = fw_plugin_init(p, &host, &err);
		if (s == FW_OK) {
			ck_assert_msg(fake.calls < n, "%s: malloc %d failed unnoticed", name, n);
			ck_assert_int_gt(fake.live, 0);
			fw_plugin_close(p);
			ck_assert_msg(fake.live == 0, "%s: %d blocks left after fini", name,
				      fake.live);
			return n - 1;
		}
		ck_assert_msg(s == FW_ERR_NOMEM, "%s, failing malloc %d: %s (%s)", name, n,
			      fw_status_str(s), err.msg);
		ck_one_line(err.msg);
		ck_has(err.msg, "out of memory");
		ck_assert_msg(fake.live == 0, "%s: %d blocks leaked when malloc %d failed", name,
			      fake.live, n);
		ck_assert(!p->initialized);
		fw_plugin_close(p);
	}
	ck_abort_msg("%s: init never succeeded", name);
	return -1;
}

START_TEST(test_host_malloc_heavy)
{
	int n = host_failures("optim/heavy");
	ck_assert_int_eq(n, 3 + 6);     /* state, label, table, 6 buffers */
}
END_TEST

START_TEST(test_host_malloc_adamw)
{
	ck_assert_int_ge(host_failures("optim/adamw"), 1);
}
END_TEST

START_TEST(test_host_malloc_others)
{
	ck_assert_int_ge(host_failures("optim/sgd"), 1);
	ck_assert_int_ge(host_failures("arch/tiny"), 1);
	ck_assert_int_ge(host_failures("peft/probe"), 1);
}
END_TEST

/* The size-stamped host table: what plugins may rely on. */
START_TEST(test_host_table)
{
	const struct fw_host *h = fw_host_table();
	ck_assert_uint_eq(h->size, sizeof(struct fw_host));
	ck_assert_int_eq(h->abi_major, FW_ABI_MAJOR);
	ck_assert_int_eq(h->abi_minor, FW_ABI_MINOR);
	void *const *fn = (void *const *)&h->malloc;
	void *const *end = (void *const *)((const char *)h + sizeof(*h));
	for (int i = 0; fn + i < end; i++)
		ck_assert_msg(fn[i] != NULL, "host table member %d is NULL", i);
	/* a level out of range is clamped, not used as an index */
	h->log((enum fw_log_level)1000, "test_host_table: a log line at level %d", 1000);
	h->log((enum fw_log_level)-1, "test_host_table: a log line at level %d", -1);
}
END_TEST

/* --- allocation failures in the core allocator --------------------------------------- */

struct core_fail {
	int calls, fail_at, live;
};

static void *core_alloc(void *user, size_t size, size_t align)
{
	struct core_fail *f = user;
	void *p = NULL;
	if (++f->calls == f->fail_at)
		return NULL;
	if (posix_memalign(&p, align, size ? size : align) != 0)
		return NULL;
	f->live++;
	return p;
}

static void core_free(void *user, void *ptr)
{
	struct core_fail *f = user;
	f->live--;
	free(ptr);
}

/* open + set + resolve + init + close of one plugin; the first failing step's
 * status, FW_OK when all passed. */
static enum fw_status lifecycle(const char *name, const char *opt, const char *value,
				struct fw_err *err)
{
	struct fw_loaded *p = NULL;
	enum fw_status s = fw_plugin_open(name, 0, &p, err);
	if (s != FW_OK)
		return s;
	if (opt)
		s = fw_options_set(p->opts, opt, value, err);
	if (s == FW_OK)
		s = fw_options_resolve(p->opts, err);
	if (s == FW_OK)
		s = fw_plugin_init(p, NULL, err);
	fw_plugin_close(p);
	return s;
}

static void core_failures(const char *name, const char *opt, const char *value,
			  enum fw_status expect)
{
	for (int n = 1; n < 10000; n++) {
		struct core_fail f = { .fail_at = n };
		struct fw_err err = { 0 };
		fw_set_allocator(core_alloc, core_free, &f);
		enum fw_status s = lifecycle(name, opt, value, &err);
		fw_set_allocator(NULL, NULL, NULL);
		ck_assert_msg(f.live == 0, "%s: %d blocks leaked when allocation %d failed (%s)",
			      name, f.live, n, err.msg);
		if (f.calls < n) {       /* nothing failed: the normal outcome */
			ck_assert_msg(s == expect, "%s: %s (%s)", name, fw_status_str(s), err.msg);
			ck_assert_int_gt(n, 1);         /* some allocation was failed */
			return;
		}
		ck_assert_msg(s == FW_ERR_NOMEM, "%s, allocation %d failing: %s (%s)", name, n,
			      fw_status_str(s), err.msg);
		ck_one_line(err.msg);
		ck_has(err.msg, "out of memory");
	}
	ck_abort_msg("%s: never completed", name);
}

START_TEST(test_core_alloc_open)
{
	char tiny[4300];
	snprintf(tiny, sizeof(tiny), "%s/arch/tiny.so", good_dir());
	core_failures("optim/adamw", "adam-beta1", "0.8", FW_OK);
	core_failures("optim/heavy", "heavy-buffers", "3", FW_OK);
	core_failures("peft/probe", "probe-target", "attn.q,mlp", FW_OK);
	core_failures(tiny, "n-embd", "32", FW_OK);
	core_failures(bad_path("none"), NULL, NULL, FW_OK);
	core_failures(bad_path("init_fail"), NULL, NULL, FW_ERR_INVALID);
	core_failures(bad_path("opt_range"), NULL, NULL, FW_ERR_FORMAT);
	core_failures(bad_path("abi_major"), NULL, NULL, FW_ERR_UNSUPPORTED);
	core_failures("optim/adamw", "adam-beta", "0.8", FW_ERR_NOT_FOUND);
}
END_TEST

START_TEST(test_core_alloc_options)
{
	static const char *const ch[] = { "a", "b", NULL };
	static const struct fw_option_def defs[] = {
		{ "i", FW_OPT_INT, "1", 0, 9, NULL, NULL },
		{ "s", FW_OPT_STRING, "text", 0, -1, NULL, NULL },
		{ "c", FW_OPT_CHOICE, "b", 0, -1, ch, NULL },
		{ "f", FW_OPT_FLOAT, "0.5", 0, 1, NULL, NULL },
	};
	for (int n = 1; n < 100; n++) {
		struct core_fail f = { .fail_at = n };
		struct fw_err err = { 0 };
		enum fw_status s = FW_ERR_NOMEM;
		fw_set_allocator(core_alloc, core_free, &f);
		struct fw_options *o = fw_options_new(defs, 4, "owner");
		if (o) {
			s = fw_options_set(o, "i", "7", &err);
			if (s == FW_OK)
				s = fw_options_set(o, "i", "8", &err);
			if (s == FW_OK)
				s = fw_options_resolve(o, &err);
			if (s == FW_OK)
				ck_assert_str_eq(fw_options_value(o, 1), "text");
			fw_options_free(o);
		}
		fw_set_allocator(NULL, NULL, NULL);
		ck_assert_msg(f.live == 0, "%d blocks leaked when allocation %d failed", f.live, n);
		if (f.calls < n) {
			ck_assert_int_eq(s, FW_OK);
			return;
		}
		ck_assert_msg(s == FW_ERR_NOMEM, "allocation %d: %s", n, fw_status_str(s));
	}
	ck_abort_msg("never completed");
}
END_TEST

/* --- options ----------------------------------------------------------------------------- */

static const char *const shapes[] = { "circle", "square", "triangle", NULL };
static const struct fw_option_def opt_defs[] = {
	{ "verbose", FW_OPT_BOOL, "false", 0, -1, NULL, "talk" },
	{ "count", FW_OPT_INT, "3", 1, 10, NULL, "how many" },
	{ "ratio", FW_OPT_FLOAT, "0.5", 0, 1, NULL, "a fraction" },
	{ "label", FW_OPT_STRING, "", 0, -1, NULL, "any text" },
	{ "shape", FW_OPT_CHOICE, "square", 0, -1, shapes, "one of three" },
	{ "free-int", FW_OPT_INT, "-5", 0, -1, NULL, "unbounded" },
	{ "needed", FW_OPT_STRING, NULL, 0, -1, NULL, "required" },
};
#define N_OPT_DEFS ((int)(sizeof(opt_defs) / sizeof(opt_defs[0])))

static struct fw_options *opts_new(void)
{
	struct fw_options *o = fw_options_new(opt_defs, N_OPT_DEFS, "test/opts");
	ck_assert(o != NULL);
	return o;
}

static void set_ok(struct fw_options *o, const char *name, const char *v)
{
	struct fw_err err = { 0 };
	ck_assert_msg(fw_options_set(o, name, v, &err) == FW_OK, "%s=%s: %s", name, v, err.msg);
}

static void set_bad(struct fw_options *o, const char *name, const char *v,
		    enum fw_status status, const char *says)
{
	struct fw_err err = { 0 };
	ck_assert_msg(fw_options_set(o, name, v, &err) == status, "%s=%s: expected %s, got '%s'",
		      name, v, fw_status_str(status), err.msg);
	ck_one_line(err.msg);
	ck_has(err.msg, "test/opts");
	ck_has(err.msg, says);
}

START_TEST(test_options_types)
{
	struct fw_options *o = opts_new();
	static const char *const yes[] = { "true", "1", "yes", "on", "TRUE", "On" };
	static const char *const no[] = { "false", "0", "no", "off", "False" };
	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		set_ok(o, "verbose", yes[i]);
		set_ok(o, "needed", "x");
		ck_assert(fw_options_resolve(o, NULL) == FW_OK);
		ck_assert(fw_opt_bool(o, "verbose"));
	}
	for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
		set_ok(o, "verbose", no[i]);
		ck_assert(!fw_opt_bool(o, "verbose"));
	}
	set_bad(o, "verbose", "maybe", FW_ERR_INVALID, "true or false");
	set_bad(o, "verbose", "", FW_ERR_INVALID, "true or false");

	set_ok(o, "count", "10");
	ck_assert_int_eq(fw_opt_int(o, "count"), 10);
	set_ok(o, "count", "1");
	ck_assert_int_eq(fw_opt_int(o, "count"), 1);
	set_bad(o, "count", "11", FW_ERR_INVALID, "out of range [1, 10]");
	set_bad(o, "count", "0", FW_ERR_INVALID, "out of range");
	set_bad(o, "count", "2.5", FW_ERR_INVALID, "takes an integer, not '2.5'");
	set_bad(o, "count", "three", FW_ERR_INVALID, "takes an integer");
	set_bad(o, "count", "", FW_ERR_INVALID, "takes an integer");
	set_bad(o, "count", "99999999999999999999", FW_ERR_INVALID, "integer");
	ck_assert_int_eq(fw_opt_int(o, "count"), 1);     /* a failed set changes nothing */
	ck_assert_str_eq(fw_options_value(o, 1), "1");

	set_ok(o, "free-int", "-123456789012");
	ck_assert(fw_opt_int(o, "free-int") == -123456789012LL);

	set_ok(o, "ratio", "1e-3");
	ck_assert(fw_opt_float(o, "ratio") == 1e-3);
	set_ok(o, "ratio", "1");
	set_bad(o, "ratio", "1.5", FW_ERR_INVALID, "out of range");
	set_bad(o, "ratio", "-0.1", FW_ERR_INVALID, "out of range");
	set_bad(o, "ratio", "nan", FW_ERR_INVALID, "takes a number");
	set_bad(o, "ratio", "inf", FW_ERR_INVALID, "takes a number");
	set_bad(o, "ratio", "1e999", FW_ERR_INVALID, "takes a number");
	set_bad(o, "ratio", "0.5x", FW_ERR_INVALID, "takes a number");

	set_ok(o, "label", "any text, even = and ,");
	ck_assert_str_eq(fw_opt_str(o, "label"), "any text, even = and ,");
	set_ok(o, "label", "");
	ck_assert_str_eq(fw_opt_str(o, "label"), "");

	set_ok(o, "shape", "triangle");
	ck_assert_str_eq(fw_opt_str(o, "shape"), "triangle");
	set_bad(o, "shape", "sqare", FW_ERR_INVALID, "did you mean 'square'?");
	set_bad(o, "shape", "hexagon", FW_ERR_INVALID, "must be one of circle, square, triangle");
	struct fw_err err = { 0 };
	fw_options_set(o, "shape", "hexagon", &err);
	ck_assert_msg(!strstr(err.msg, "did you mean"), "%s", err.msg);
	set_bad(o, "shape", "Square", FW_ERR_INVALID, "did you mean 'square'?");
	fw_options_free(o);
}
END_TEST

START_TEST(test_options_unknown)
{
	struct fw_options *o = opts_new();
	set_bad(o, "verbos", "1", FW_ERR_NOT_FOUND, "unknown option 'verbos' (did you mean 'verbose'?)");
	set_bad(o, "cuont", "1", FW_ERR_NOT_FOUND, "did you mean 'count'?");
	set_bad(o, "free_int", "1", FW_ERR_NOT_FOUND, "did you mean 'free-int'?");
	struct fw_err err = { 0 };
	ck_assert_int_eq(fw_options_set(o, "learning-rate", "1", &err), FW_ERR_NOT_FOUND);
	ck_has(err.msg, "unknown option 'learning-rate'");
	ck_assert_msg(!strstr(err.msg, "did you mean"), "%s", err.msg);
	ck_assert(!fw_options_has(o, "learning-rate"));
	fw_options_free(o);
}
END_TEST

START_TEST(test_options_resolve)
{
	struct fw_options *o = opts_new();
	struct fw_err err = { 0 };
	ck_assert_str_eq(fw_options_owner(o), "test/opts");
	ck_assert_int_eq(fw_options_count(o), N_OPT_DEFS);
	ck_assert_str_eq(fw_options_def(o, 4)->name, "shape");
	ck_assert(!fw_options_has(o, "count"));
	ck_assert_str_eq(fw_options_value(o, 1), "");

	/* a required option left unset */
	ck_assert_int_eq(fw_options_resolve(o, &err), FW_ERR_INVALID);
	ck_one_line(err.msg);
	ck_has(err.msg, "test/opts: option 'needed' is required");

	set_ok(o, "count", "7");
	set_ok(o, "needed", "here");
	ck_assert_int_eq(fw_options_resolve(o, &err), FW_OK);
	/* set values stay, the rest take their defaults */
	ck_assert_int_eq(fw_opt_int(o, "count"), 7);
	ck_assert(!fw_opt_bool(o, "verbose"));
	ck_assert(fw_opt_float(o, "ratio") == 0.5);
	ck_assert_str_eq(fw_opt_str(o, "label"), "");
	ck_assert_str_eq(fw_opt_str(o, "shape"), "square");
	ck_assert_int_eq(fw_opt_int(o, "free-int"), -5);
	ck_assert_str_eq(fw_opt_str(o, "needed"), "here");
	ck_assert(fw_options_has(o, "ratio"));
	ck_assert_str_eq(fw_options_value(o, 2), "0.5");
	/* resolving again changes nothing */
	ck_assert_int_eq(fw_options_resolve(o, &err), FW_OK);
	ck_assert_int_eq(fw_opt_int(o, "count"), 7);
	fw_options_free(o);

	/* no options at all */
	o = fw_options_new(NULL, 0, NULL);
	ck_assert(o != NULL);
	ck_assert_int_eq(fw_options_count(o), 0);
	ck_assert_str_eq(fw_options_owner(o), "");
	ck_assert_int_eq(fw_options_resolve(o, &err), FW_OK);
	ck_assert_int_eq(fw_options_set(o, "x", "1", &err), FW_ERR_NOT_FOUND);
	fw_options_free(o);
	fw_options_free(NULL);
}
END_TEST

static void exit_on_abort(const char *file, int line, const char *expr)
{
	_exit(42);
}

/* Reading an option with the wrong type is a programmer error. */
START_TEST(test_options_wrong_type)
{
	struct fw_options *o = opts_new();
	set_ok(o, "needed", "x");
	ck_assert_int_eq(fw_options_resolve(o, NULL), FW_OK);
	fw_set_abort_handler(exit_on_abort);
	(void)fw_opt_int(o, "ratio");
	ck_abort_msg("fw_opt_int on a float option returned");
}
END_TEST

START_TEST(test_options_undeclared)
{
	struct fw_options *o = opts_new();
	fw_set_abort_handler(exit_on_abort);
	(void)fw_opt_str(o, "nothing");
	ck_abort_msg("fw_opt_str on an undeclared option returned");
}
END_TEST

START_TEST(test_nearest_name)
{
	static const char *const names[] = { "micro-batch-size", "global-batch-size", "lr",
					     "min-lr", "seq-length" };
	ck_assert_str_eq(fw_nearest_name("micro-batch-sze", names, 5), "micro-batch-size");
	ck_assert_str_eq(fw_nearest_name("seq-lenght", names, 5), "seq-length");
	ck_assert_str_eq(fw_nearest_name("lr", names, 5), "lr");
	ck_assert_str_eq(fw_nearest_name("ls", names, 5), "lr");
	ck_assert(fw_nearest_name("tokenizer", names, 5) == NULL);
	ck_assert(fw_nearest_name("x", names, 0) == NULL);
	char longname[200];
	memset(longname, 'a', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	ck_assert(fw_nearest_name(longname, names, 5) == NULL);
}
END_TEST

/* Ops register only while a plugin's init runs: mha registers its alibi
 * op there; the same call through the host table outside init is refused. */
static enum fw_status late_infer(struct fw_tensor *out, struct fw_err *err)
{
	return FW_OK;
}

static void late_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
}

START_TEST(test_register_only_in_init)
{
	static const struct fw_op_i late = {
		.size = sizeof(struct fw_op_i), .name = "test.late", .infer = late_infer,
		.forward = late_forward,
	};
	struct fw_err err = { 0 };
	ck_assert_int_eq(fw_host_table()->op_register(&late, &err), -1);
	ck_one_line(err.msg);
	ck_has(err.msg, "outside plugin init");
	struct fw_loaded *p = NULL;
	ck_assert_int_eq(fw_plugin_open("attention/mha", FW_KIND_ATTENTION, &p, &err), FW_OK);
	ck_assert_int_eq(fw_plugin_init(p, NULL, &err), FW_OK);
	fw_plugin_close(p);
}
END_TEST

static Suite *plugins_suite(void)
{
	Suite *s = suite_create("plugins");
	TCase *tc = tcase_create("loader");
	tcase_set_timeout(tc, 300);
	tcase_add_checked_fixture(tc, reset_state, NULL);
	tcase_add_test(tc, test_open_good);
	tcase_add_test(tc, test_register_only_in_init);
	tcase_add_test(tc, test_open_by_path);
	tcase_add_test(tc, test_bad_plugins);
	tcase_add_test(tc, test_bad_baseline);
	tcase_add_test(tc, test_entry_unmarked_is_exported);
	tcase_add_test(tc, test_name_must_match_path);
	tcase_add_test(tc, test_abi_1_0_plugin);
	tcase_add_test(tc, test_abi_sizes);
	tcase_add_test(tc, test_decoder_hf_map);
	tcase_add_test(tc, test_init_fails);
	tcase_add_test(tc, test_not_a_plugin_file);
	tcase_add_test(tc, test_unknown_name_lists_available);
	tcase_add_test(tc, test_wrong_kind);
	tcase_add_test(tc, test_same_name);
	tcase_add_test(tc, test_search_dirs);
	tcase_add_test(tc, test_discover);
	tcase_add_test(tc, test_check_descriptor);
	tcase_add_test(tc, test_host_table);
	suite_add_tcase(s, tc);

	tc = tcase_create("models");
	tcase_set_timeout(tc, 300);
	tcase_add_checked_fixture(tc, reset_state, NULL);
	tcase_add_test(tc, test_naive_attention);
	tcase_add_test(tc, test_naive_refuses_gqa);
	tcase_add_test(tc, test_tiny_with_probe);
	tcase_add_test(tc, test_tiny_bad_heads);
	suite_add_tcase(s, tc);

	tc = tcase_create("alloc");
	tcase_set_timeout(tc, 300);
	tcase_add_checked_fixture(tc, reset_state, NULL);
	tcase_add_test(tc, test_host_malloc_heavy);
	tcase_add_test(tc, test_host_malloc_adamw);
	tcase_add_test(tc, test_host_malloc_others);
	tcase_add_test(tc, test_core_alloc_open);
	tcase_add_test(tc, test_core_alloc_options);
	suite_add_tcase(s, tc);

	tc = tcase_create("options");
	tcase_set_timeout(tc, 300);
	tcase_add_checked_fixture(tc, reset_state, NULL);
	tcase_add_test(tc, test_options_types);
	tcase_add_test(tc, test_options_unknown);
	tcase_add_test(tc, test_options_resolve);
	tcase_add_exit_test(tc, test_options_wrong_type, 42);
	tcase_add_exit_test(tc, test_options_undeclared, 42);
	tcase_add_test(tc, test_nearest_name);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	const char *b = getenv("FW_BUILD_DIR");
	if (!b || !*b) {
		fprintf(stderr, "test_plugins: FW_BUILD_DIR is not set (run through ctest)\n");
		return 1;
	}
	snprintf(build_dir, sizeof(build_dir), "%s", b);
	/* test plugins first, then the build tree's: nothing installed shadows them */
	snprintf(default_path, sizeof(default_path), "%s/test-plugins:%s/plugins", b, b);
	return fwt_run_suite(plugins_suite());
}
