/* test_threads.c - one OpenMP runtime, one thread pool.
 *
 * libdnnl is built against GNU libgomp; fw links LLVM's libomp first so that
 * libomp (which implements the GOMP_* entry points) serves oneDNN's parallel
 * regions too. If libgomp served them, it would start its own pool next to
 * libomp's, and with n threads the process would hold 1 + (n - 1) + (n - 1)
 * threads instead of n. Each test runs in a fresh forked process (Check's
 * fork mode), so the count below starts from a single thread.
 *
 * The bound is exact: with 2 threads a single pool is the main thread plus
 * one worker. A looser "<= 2 + 1" would pass with two pools (main + one
 * libomp worker + one libgomp worker = 3), as running this test with
 * LD_PRELOAD=libgomp.so.1 shows; this exact bound fails then.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "harness.h"

/* Threads of this process, with their names appended to names. */
static int count_threads(char *names, size_t len)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int n = 0;
	ck_assert_ptr_nonnull(d);
	names[0] = '\0';
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char path[300], comm[64] = "?";
		snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
		FILE *f = fopen(path, "r");
		if (f) {
			if (fgets(comm, sizeof(comm), f))
				comm[strcspn(comm, "\n")] = '\0';
			fclose(f);
		}
		size_t used = strlen(names);
		snprintf(names + used, len - used, "%s%s(%s)", n ? " " : "", e->d_name, comm);
		n++;
	}
	closedir(d);
	return n;
}

struct count_arg {
	int64_t total;
};

static void add_range(void *arg, int64_t b, int64_t e)
{
	#pragma omp atomic
	((struct count_arg *)arg)->total += e - b;
}

/* matmul (oneDNN) and element-wise ops big enough to run in parallel */
static void run_model(void)
{
	enum { B = 128, K = 128, N = 512 };   /* h (B, N) is 65536 elements */
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *x = fw_input(ctx, "x", FW_F32, 2, (int64_t[]){ B, K });
	struct fw_tensor *w1 = fw_param(ctx, "w1", FW_F32, 2, (int64_t[]){ N, K }, true);
	struct fw_tensor *b1 = fw_param(ctx, "b1", FW_F32, 1, (int64_t[]){ N }, true);
	struct fw_tensor *w2 = fw_param(ctx, "w2", FW_F32, 2, (int64_t[]){ N, K }, true);
	fw_param_set_init(w1, FW_INIT_NORMAL, 0.05f);
	fw_param_set_init(w2, FW_INIT_NORMAL, 0.05f);
	struct fw_tensor *h = fw_gelu(ctx, fw_linear(ctx, x, w1, b1), FW_GELU_TANH);
	h = fw_mul(ctx, h, fw_sigmoid(ctx, h));
	struct fw_tensor *y = fw_matmul(ctx, h, w2, false, false);
	struct fw_tensor *loss = fw_mean(ctx, fw_mul(ctx, y, y), FW_AXIS_ALL, false);
	ck_assert_msg(loss != NULL, "%s", fw_ctx_err(ctx)->msg);
	struct fw_graph *g = fw_graph_new(ctx, &loss, 1, &(struct fw_graph_opts){
		.backward = true, .training = true });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	ck_assert_int_eq(fw_ctx_init_params(ctx, 1), FW_OK);
	struct fwt_rng r = fwt_rng_new(2);
	fwt_fill_uniform(fw_f32(x), B * K, &r, -1, 1);
	for (int it = 0; it < 3; it++) {
		ck_assert_int_eq(fw_graph_forward(g), FW_OK);
		ck_assert_int_eq(fw_graph_backward(g), FW_OK);
	}
	ck_assert_msg(isfinite(fw_f32(loss)[0]), "loss %g", (double)fw_f32(loss)[0]);
	fw_graph_free(g);
	fw_ctx_free(ctx);
}

START_TEST(test_one_pool)
{
	char names[4096];
	ck_assert_int_eq(count_threads(names, sizeof(names)), 1);
	fw_set_num_threads(2);
	ck_assert_int_eq(omp_get_max_threads(), 2);
	ck_assert_int_eq(fw_get_num_threads(), 2);

	run_model();
	struct count_arg a = { 0 };
	fw_parallel_for(100000, add_range, &a);
	ck_assert_int_eq(a.total, 100000);
	ck_assert_int_eq(omp_get_max_threads(), 2);

	int n = count_threads(names, sizeof(names));
	ck_assert_msg(n <= 2, "%d threads after running with 2 (a second OpenMP pool?): %s",
		      n, names);
	/* libomp did start its worker: the run was parallel */
	ck_assert_msg(n >= 2, "only %d thread: nothing ran in parallel", n);
}
END_TEST

START_TEST(test_gomp_entry_points)
{
	/* The GOMP_* entry points oneDNN calls resolve to libomp, not libgomp. */
	static const char *const syms[] = {
		"GOMP_parallel", "GOMP_barrier", "omp_get_max_threads", "omp_get_thread_num",
	};
	for (size_t i = 0; i < sizeof(syms) / sizeof(syms[0]); i++) {
		void *p = dlsym(RTLD_DEFAULT, syms[i]);
		Dl_info info;
		ck_assert_msg(p != NULL, "%s is not defined in the process", syms[i]);
		ck_assert_msg(dladdr(p, &info) && info.dli_fname, "dladdr(%s) failed", syms[i]);
		ck_assert_msg(strstr(info.dli_fname, "libomp") != NULL,
			      "%s resolves to %s, not LLVM's libomp", syms[i], info.dli_fname);
	}
}
END_TEST

START_TEST(test_thread_count_follows_setting)
{
	char names[4096];
	fw_set_num_threads(1);
	ck_assert_int_eq(fw_get_num_threads(), 1);
	run_model();
	int n = count_threads(names, sizeof(names));
	ck_assert_msg(n == 1, "%d threads with fw_set_num_threads(1): %s", n, names);
	fw_set_num_threads(2);
	run_model();
	n = count_threads(names, sizeof(names));
	ck_assert_msg(n == 2, "%d threads with fw_set_num_threads(2): %s", n, names);
}
END_TEST

/* --- parallel kernels agree with serial ones -------------------------------------------
 *
 * Every kernel runs on one thread below ~32k elements, so the small parity
 * and gradient-check cases only exercise the serial paths. These cases are
 * big enough for the parallel ones (per-thread partial sums of weight and
 * bias gradients, split reductions, row-parallel softmax and cross-entropy)
 * and compare them with the serial path of the same kernel.
 */

static struct fw_tensor *p_add(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_add(c, in[0], in[1]);
}

static struct fw_tensor *p_sub(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_sub(c, in[0], in[1]);
}

static struct fw_tensor *p_mul(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_mul(c, in[0], in[1]);
}

static struct fw_tensor *p_unary(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	struct fw_tensor *x = in[0];
	x = fw_gelu(c, x, FW_GELU_ERF);
	x = fw_add(c, x, fw_silu(c, in[0]));
	x = fw_add(c, x, fw_tanh(c, fw_scale(c, in[0], 0.5f)));
	x = fw_add(c, x, fw_sigmoid(c, in[0]));
	return fw_add(c, x, fw_relu(c, fw_gelu(c, in[0], FW_GELU_TANH)));
}

static struct fw_tensor *p_matmul(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_matmul(c, in[0], in[1], false, true);
}

static struct fw_tensor *p_layernorm(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_layernorm(c, in[0], in[1], in[2], 1e-5f);
}

static struct fw_tensor *p_rmsnorm(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_rmsnorm(c, in[0], in[1], 1e-5f);
}

static struct fw_tensor *p_softmax(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_softmax(c, in[0], in[1], true, 0.5f);
}

static struct fw_tensor *p_ce(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_cross_entropy(c, in[0], in[1], in[2], FW_IGNORE_INDEX);
}

static struct fw_tensor *p_embedding(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_embedding(c, in[0], in[1]);
}

static struct fw_tensor *p_sum(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_sum(c, in[0], *(int *)u, false);
}

static struct fw_tensor *p_mean(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_mean(c, in[0], *(int *)u, true);
}

static struct fw_tensor *p_concat(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_concat(c, in[0], in[1], -1);
}

static struct fw_tensor *p_views(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	struct fw_tensor *t = fw_permute(c, in[0], (int[]){ 0, 2, 1 });
	return fw_cont(c, fw_slice(c, t, 2, 8, 100));
}

static struct fw_tensor *p_cast(struct fw_ctx *c, struct fw_tensor *const *in, void *u)
{
	return fw_cast(c, fw_cast(c, in[0], FW_BF16), FW_F32);
}

static const float *mask_half(void)
{
	static float m[256];
	for (int i = 0; i < 256; i++)
		m[i] = (i % 3) != 0;
	return m;
}

static int ax0 = 0, ax_last = -1, ax_all = FW_AXIS_ALL;

#define T(nm, ...) { .name = nm, .ndim = sizeof((int64_t[]){ __VA_ARGS__ }) / 8, \
		     .ne = { __VA_ARGS__ }, .grad = true }
#define TI(nm, hi, ...) { .name = nm, .dtype = FW_I32, .int_hi = hi, \
			  .ndim = sizeof((int64_t[]){ __VA_ARGS__ }) / 8, .ne = { __VA_ARGS__ } }

static const struct pcase {
	const char *name;
	fwt_build_fn build;
	void *user;
	int n;
	struct fwt_input in[3];
} pcases[] = {
	{ "add_row", p_add, NULL, 2, { T("a", 160, 256), T("b", 256) } },
	{ "sub_col", p_sub, NULL, 2, { T("a", 256, 160), T("b", 256, 1) } },
	{ "mul_gen", p_mul, NULL, 2, { T("a", 40, 1, 32), T("b", 30, 1) } },
	{ "mul_scalar", p_mul, NULL, 2, { T("a", 200, 200), T("b", 1) } },
	{ "unary", p_unary, NULL, 1, { T("x", 200, 200) } },
	{ "matmul", p_matmul, NULL, 2, { T("a", 96, 128), T("b", 80, 128) } },
	{ "layernorm", p_layernorm, NULL, 3, { T("x", 512, 96), T("w", 96), T("b", 96) } },
	{ "rmsnorm", p_rmsnorm, NULL, 2, { T("x", 512, 96), T("w", 96) } },
	{ "softmax_bias_rows", p_softmax, NULL, 2, { T("x", 4, 8, 32, 40), T("bias", 32, 40) } },
	{ "softmax_bias_one_row", p_softmax, NULL, 2, { T("x", 4, 8, 32, 40), T("bias", 40) } },
	{ "cross_entropy", p_ce, NULL, 3,
	  { T("logits", 256, 160), TI("t", 160, 256),
	    { .name = "m", .ndim = 1, .ne = { 256 }, .data = NULL } } },
	{ "embedding", p_embedding, NULL, 2, { T("table", 500, 64), TI("ids", 500, 12, 60) } },
	{ "sum_axis0_few_outputs", p_sum, &ax0, 1, { T("x", 300, 200) } },
	{ "sum_last_many_outputs", p_sum, &ax_last, 1, { T("x", 2000, 20) } },
	{ "sum_all", p_sum, &ax_all, 1, { T("x", 300, 200) } },
	{ "mean_axis0", p_mean, &ax0, 1, { T("x", 10, 40, 100) } },
	{ "concat", p_concat, NULL, 2, { T("a", 200, 60), T("b", 200, 140) } },
	{ "permute_slice", p_views, NULL, 1, { T("x", 4, 120, 100) } },
	{ "cast_bf16", p_cast, NULL, 1, { T("x", 200, 200) } },
};

#define N_PCASES ((int)(sizeof(pcases) / sizeof(pcases[0])))

START_TEST(test_parallel_matches_serial)
{
	const struct pcase *c = &pcases[_i];
	struct fwt_input in[3];
	memcpy(in, c->in, sizeof(in));
	if (strcmp(c->name, "cross_entropy") == 0)
		in[2].data = mask_half();
	int r = fwt_threadcheck(c->name, c->n, in, c->build, c->user, 2, 1e-5);
	ck_assert_msg(r == 0, "%s: %d elements differ between 1 and 2 threads (see stderr)",
		      c->name, r);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("threads");
	TCase *tc = fwt_tcase("openmp", 120);
	tcase_add_test(tc, test_one_pool);
	tcase_add_test(tc, test_gomp_entry_points);
	tcase_add_test(tc, test_thread_count_follows_setting);
	suite_add_tcase(s, tc);
	TCase *par = fwt_tcase("parallel", 120);
	tcase_add_loop_test(par, test_parallel_matches_serial, 0, N_PCASES);
	suite_add_tcase(s, par);
	return fwt_run_suite(s);
}
