/* test_half_shadow.c - the half copies a graph keeps of frozen f32
 * parameters under autocast (fw/graph.h): cast in the first forward, reused
 * by later ones, and cast again after each way of writing the parameter
 * (fw_tensor_mark_written, fw_h5_load, fw_ctx_init_params, a data pointer
 * swap). After each
 * write the next forward must equal a freshly built graph's bit for bit
 * and a bf16 matmul computed here in double from the format's rounding;
 * a write that skips the mark must be caught by FW_HALF_SHADOW_CHECK.
 * LoRA's merge and the runtime's weight load on a bf16 model are in
 * tests/test_lora.c; the whole training run against torch autocast, kept
 * copies against FW_HALF_SHADOW=0, in tests/lora_parity.py. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "fw/io.h"

static char scratch[4200];

enum { M = 5, K = 40, N = 24 };

/* f32 -> bf16 -> f32, round to nearest even (finite inputs), from the
 * format's definition rather than fw's converters. */
static float bf16_round(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof(u));
	u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
	memcpy(&f, &u, sizeof(f));
	return f;
}

static float bf16_bits_to_f32(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, sizeof(f));
	return f;
}

struct lin {
	struct fw_ctx *ctx;
	struct fw_tensor *x, *w, *y;
	struct fw_graph *g;
};

/* y = x w^T under bf16 autocast, w a frozen parameter. */
static void lin_open(struct lin *l)
{
	l->ctx = fw_ctx_new();
	ck_assert(fw_ctx_set_autocast(l->ctx, FW_BF16) == FW_OK);
	l->x = fw_input(l->ctx, "x", FW_F32, 2, (int64_t[]){ M, K });
	l->w = fw_param(l->ctx, "w", FW_F32, 2, (int64_t[]){ N, K }, false);
	l->y = fw_linear(l->ctx, l->x, l->w, NULL);
	ck_assert_msg(l->y && l->y->dtype == FW_BF16, "%s", fw_ctx_err(l->ctx)->msg);
	l->g = fw_graph_new(l->ctx, &l->y, 1, &(struct fw_graph_opts){ 0 });
	ck_assert_msg(l->g != NULL, "%s", fw_ctx_err(l->ctx)->msg);
	struct fwt_rng r = fwt_rng_new(11);
	fwt_fill_uniform(fw_f32(l->x), M * K, &r, -1.0f, 1.0f);
	fwt_fill_uniform(fw_f32(l->w), N * K, &r, -1.0f, 1.0f);
}

static void lin_close(struct lin *l)
{
	fw_graph_free(l->g);
	fw_ctx_free(l->ctx);
}

/* The graph's output after a forward, as f32. */
static void forward(struct fw_graph *g, struct fw_tensor *y, float *out)
{
	ck_assert_msg(fw_graph_forward(g) == FW_OK, "forward of %s failed", y->name);
	const uint16_t *h = y->data;
	for (int i = 0; i < M * N; i++)
		out[i] = bf16_bits_to_f32(h[i]);
}

/* y of a graph built now over the same leaves (its casts all fresh). */
static void fresh(struct lin *l, float *out)
{
	struct fw_tensor *y = fw_linear(l->ctx, l->x, l->w, NULL);
	struct fw_graph *g = fw_graph_new(l->ctx, &y, 1, &(struct fw_graph_opts){ 0 });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(l->ctx)->msg);
	forward(g, y, out);
	fw_graph_free(g);
}

/* The bf16 product in double: bf16(x) bf16(w)^T, rounded once to bf16. */
static void reference(const struct lin *l, float *out)
{
	const float *x = fw_f32(l->x), *w = fw_f32(l->w);
	for (int i = 0; i < M; i++)
		for (int j = 0; j < N; j++) {
			double s = 0.0;
			for (int k = 0; k < K; k++)
				s += (double)bf16_round(x[i * K + k]) * bf16_round(w[j * K + k]);
			out[i * N + j] = bf16_round((float)s);
		}
}

/* l's output now: equal to a fresh graph's and within one bf16 rounding
 * (2^-8 relative, plus f32 accumulation order) of the reference. */
static void expect_current(struct lin *l, const char *what)
{
	float got[M * N], want[M * N], ref[M * N];
	forward(l->g, l->y, got);
	fresh(l, want);
	ck_assert_msg(memcmp(got, want, sizeof(got)) == 0,
		      "%s: the kept graph's output differs from a fresh graph's", what);
	reference(l, ref);
	ck_assert_msg(fwt_allclose(what, got, ref, M * N, 1e-3, 8e-3) == 0,
		      "%s: output differs from the bf16 reference", what);
}

static void expect_equal(const float *a, const float *b, bool equal, const char *what)
{
	ck_assert_msg((memcmp(a, b, sizeof(float) * M * N) == 0) == equal, "%s", what);
}

static void scale_w(struct lin *l, float s)
{
	for (int i = 0; i < N * K; i++)
		fw_f32(l->w)[i] *= s;
}

START_TEST(test_api_write)
{
	struct lin l;
	unsetenv("FW_HALF_SHADOW_CHECK");
	lin_open(&l);
	float first[M * N], now[M * N];
	expect_current(&l, "first forward");
	forward(l.g, l.y, first);

	/* A write that skips the mark: the kept copy is stale (the rule is
	 * the writer's; this is what FW_HALF_SHADOW_CHECK catches below). */
	scale_w(&l, -2.0f);
	forward(l.g, l.y, now);
	expect_equal(now, first, true, "an unmarked write was seen: nothing is kept");

	fw_tensor_mark_written(l.w);
	expect_current(&l, "after fw_tensor_mark_written");
	forward(l.g, l.y, now);
	expect_equal(now, first, false, "the marked write changed nothing");

	/* A second graph of the context sees a write the first one consumed. */
	float second[M * N];
	struct fw_tensor *y2 = fw_linear(l.ctx, l.x, l.w, NULL);
	struct fw_graph *g2 = fw_graph_new(l.ctx, &y2, 1, &(struct fw_graph_opts){ 0 });
	ck_assert(g2 != NULL);
	forward(g2, y2, second);
	scale_w(&l, 0.25f);
	fw_tensor_mark_written(l.w);
	expect_current(&l, "graph 1 after a write");
	forward(l.g, l.y, now);
	forward(g2, y2, second);
	expect_equal(second, now, true, "graph 2 kept its copy after graph 1 saw the write");
	fw_graph_free(g2);
	lin_close(&l);
}
END_TEST

START_TEST(test_other_writers)
{
	struct lin l;
	unsetenv("FW_HALF_SHADOW_CHECK");
	lin_open(&l);
	expect_current(&l, "first forward");

	/* fw_h5_load (checkpoint and weight files) */
	char path[4400];
	snprintf(path, sizeof(path), "%s/w.h5", scratch);
	float *keep = malloc(sizeof(float) * N * K);
	memcpy(keep, l.w->data, sizeof(float) * N * K);
	scale_w(&l, 3.0f);
	struct fw_err err = { 0 };
	ck_assert_msg(fw_h5_save(path, &l.w, 1, NULL, 0, &err) == FW_OK, "%s", err.msg);
	memcpy(l.w->data, keep, sizeof(float) * N * K);
	fw_tensor_mark_written(l.w);
	expect_current(&l, "restored");
	ck_assert_msg(fw_h5_load(path, &l.w, 1, &err) == FW_OK, "%s", err.msg);
	ck_assert(fw_f32(l.w)[0] == 3.0f * keep[0]);
	expect_current(&l, "after fw_h5_load");

	/* fw_ctx_init_params */
	fw_param_set_init(l.w, FW_INIT_NORMAL, 0.5f);
	ck_assert(fw_ctx_init_params(l.ctx, 99) == FW_OK);
	expect_current(&l, "after fw_ctx_init_params");

	/* another buffer behind the parameter, unmarked: the pointer is checked */
	float *other = malloc(sizeof(float) * N * K);
	for (int i = 0; i < N * K; i++)
		other[i] = keep[i] * -0.5f;
	void *own = l.w->data;
	l.w->data = other;
	expect_current(&l, "after a data pointer swap");
	l.w->data = own;
	expect_current(&l, "after swapping back");
	free(other);
	free(keep);
	lin_close(&l);
}
END_TEST

START_TEST(test_check_and_off)
{
	struct lin l;
	setenv("FW_HALF_SHADOW_CHECK", "1", 1);
	lin_open(&l);
	float first[M * N];
	forward(l.g, l.y, first);
	scale_w(&l, 2.0f);                /* unmarked */
	ck_assert_int_eq(fw_graph_forward(l.g), FW_ERR_INTERNAL);
	const char *msg = fw_ctx_err(l.ctx)->msg;
	ck_assert_msg(strstr(msg, "'w' is stale") && strstr(msg, "fw_tensor_mark_written"),
		      "%s", msg);
	lin_close(&l);
	unsetenv("FW_HALF_SHADOW_CHECK");

	/* FW_HALF_SHADOW=0: every forward casts, an unmarked write included */
	setenv("FW_HALF_SHADOW", "0", 1);
	lin_open(&l);
	forward(l.g, l.y, first);
	scale_w(&l, 2.0f);
	expect_current(&l, "FW_HALF_SHADOW=0 after an unmarked write");
	unsetenv("FW_HALF_SHADOW");
	lin_close(&l);
}
END_TEST

int main(void)
{
	snprintf(scratch, sizeof(scratch), "/tmp/test_half_shadow.XXXXXX");
	if (!mkdtemp(scratch)) {
		perror("mkdtemp");
		return 2;
	}
	Suite *s = suite_create("half_shadow");
	TCase *tc = fwt_tcase("kept", 120);
	tcase_add_test(tc, test_api_write);
	tcase_add_test(tc, test_other_writers);
	tcase_add_test(tc, test_check_and_off);
	suite_add_tcase(s, tc);
	int rc = fwt_run_suite(s);
	char p[4400];
	snprintf(p, sizeof(p), "%s/w.h5", scratch);
	unlink(p);
	rmdir(scratch);
	return rc;
}
