/* test_quant.c - NF4 weights (fw/quant.h): the fused dequantize-matmul op
 * against x W^T on the dequantized weight in double, over several tiles;
 * finite-difference gradients of x through it and of LoRA factors on top;
 * the storage size; and the double-quantization round trip. (The codes and
 * absmax against bitsandbytes' algorithm: tests/qlora_parity.py.)
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fw/quant.h"
#include "harness.h"

/* n bytes at least, so that the harness may copy n "elements" of a q4 input. */
struct nf4 {
	int64_t out, in, n;
	float *w, *deq;
	uint8_t *codes, *qabs;
	float *stats;
};

static struct nf4 nf4_make(int64_t out, int64_t in, uint64_t seed)
{
	struct nf4 q = { .out = out, .in = in, .n = out * in };
	struct fwt_rng r = fwt_rng_new(seed);
	int64_t nb = fw_nf4_n_blocks(q.n);
	q.w = malloc(sizeof(float) * (size_t)q.n);
	q.deq = malloc(sizeof(float) * (size_t)q.n);
	q.codes = calloc((size_t)q.n, 1);
	q.qabs = calloc((size_t)(2 * nb), 1);
	q.stats = malloc(sizeof(float) * (size_t)fw_nf4_n_stats(q.n));
	ck_assert(q.w && q.deq && q.codes && q.qabs && q.stats);
	/* rows of different scales, so that the absmax values spread */
	for (int64_t o = 0; o < out; o++)
		fwt_fill_uniform(q.w + o * in, in, &r, -0.02f * (float)(1 + o % 7),
				 0.02f * (float)(1 + o % 7));
	fw_nf4_quantize(q.w, q.n, q.codes, q.qabs, q.stats);
	fw_nf4_dequantize(q.codes, q.qabs, q.stats, q.n, 0, q.n, q.deq);
	return q;
}

static void nf4_free(struct nf4 *q)
{
	free(q->w);
	free(q->deq);
	free(q->codes);
	free(q->qabs);
	free(q->stats);
}

START_TEST(test_round_trip)
{
	struct nf4 q = nf4_make(300, 256, 1);      /* 1200 blocks: 5 scale blocks */
	ck_assert_int_eq(fw_nf4_n_stats(q.n), 5 + 1);
	float map[256], absmax[1200];
	fw_nf4_dynamic_map(map);
	for (int i = 0; i < 255; i++)
		ck_assert(map[i] < map[i + 1]);
	ck_assert(map[255] == 1.0f && map[0] > -1.0f && map[0] < -0.99f);
	fw_nf4_absmax(q.qabs, q.stats, q.n, 0, 1200, absmax);
	for (int64_t b = 0; b < 1200; b++) {
		float m = 0;
		for (int64_t i = b * 64; i < b * 64 + 64; i++)
			m = fmaxf(m, fabsf(q.w[i]));
		/* 8-bit dynamic codes: a few percent of the largest |absmax - offset| */
		ck_assert_msg(fabsf(absmax[b] - m) <= 0.02f * q.stats[b / 256] + 1e-7f,
			      "block %lld: absmax %g, true %g", (long long)b, (double)absmax[b],
			      (double)m);
		for (int64_t i = b * 64; i < b * 64 + 64; i++) {
			/* the nearest NF4 value: within half the widest gap (0.1385) */
			ck_assert_msg(fabsf(q.deq[i] - q.w[i]) <= 0.14f * m + 0.03f * m,
				      "weight %lld: %g -> %g", (long long)i, (double)q.w[i],
				      (double)q.deq[i]);
		}
	}
	/* storage of a GPT-2 c_attn weight: QLoRA's 4.127 bits a parameter */
	int64_t n = 768 * 2304;
	double bits = 8.0 * ((double)(n + 1) / 2 + (double)fw_nf4_n_blocks(n) +
			     4.0 * (double)fw_nf4_n_stats(n)) / (double)n;
	ck_assert_msg(bits <= 4.13, "%g bits a parameter", bits);
	nf4_free(&q);
}
END_TEST

/* x (M, in) @ W^T for the dequantized W, in double, against the fused op. */
START_TEST(test_forward_tiles)
{
	struct nf4 q = nf4_make(200, 1000, 2);        /* 65 rows a tile: 4 tiles */
	struct fw_ctx *ctx = fw_ctx_new();
	int64_t M = 5;
	struct fw_tensor *x = fw_input(ctx, "x", FW_F32, 2, (int64_t[]){ M, q.in });
	struct fw_tensor *c = fw_input(ctx, "w", FW_Q4, 2, (int64_t[]){ q.out, q.in });
	struct fw_tensor *a = fw_input(ctx, "w.nf4_absmax", FW_Q4, 1,
				       (int64_t[]){ 2 * fw_nf4_n_blocks(q.n) });
	struct fw_tensor *s = fw_input(ctx, "w.nf4_stats", FW_F32, 1,
				       (int64_t[]){ fw_nf4_n_stats(q.n) });
	struct fw_tensor *y = fw_nf4_linear(ctx, x, c, a, s);
	ck_assert_msg(y != NULL, "%s", fw_ctx_err(ctx)->msg);
	struct fw_graph *g = fw_graph_new(ctx, &y, 1, &(struct fw_graph_opts){ 0 });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	struct fwt_rng r = fwt_rng_new(3);
	fwt_fill_uniform(fw_f32(x), M * q.in, &r, -1.0f, 1.0f);
	fwt_write(c, q.codes);
	fwt_write(a, q.qabs);
	fwt_write(s, q.stats);
	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	double worst = 0;
	for (int64_t m = 0; m < M; m++)
		for (int64_t o = 0; o < q.out; o++) {
			double acc = 0, mag = 0;
			for (int64_t i = 0; i < q.in; i++) {
				acc += (double)fw_f32(x)[m * q.in + i] * q.deq[o * q.in + i];
				mag += fabs((double)fw_f32(x)[m * q.in + i] * q.deq[o * q.in + i]);
			}
			double d = fabs(fw_f32(y)[m * q.out + o] - acc) / (mag + 1e-30);
			worst = d > worst ? d : worst;
		}
	ck_assert_msg(worst < 1e-6, "relative difference %g", worst);
	fw_graph_free(g);
	fw_ctx_free(ctx);
	nf4_free(&q);
}
END_TEST

static struct nf4 g_q;

static struct fw_tensor *b_qlora(struct fw_ctx *ctx, struct fw_tensor *const *in, void *u)
{
	(void)u;
	struct fw_tensor *y = fw_nf4_linear(ctx, in[0], in[3], in[4], in[5]);
	struct fw_tensor *d = fw_matmul(ctx, fw_scale(ctx, fw_matmul(ctx, in[0], in[1], false,
								     true), 2.0f),
					in[2], false, true);
	return fw_add(ctx, y, d);
}

START_TEST(test_gradcheck)
{
	g_q = nf4_make(70, 96, 4);
	int64_t nb = fw_nf4_n_blocks(g_q.n);
	struct fwt_input in[6] = {
		{ .name = "x", .ndim = 3, .ne = { 2, 3, 96 }, .grad = true },
		{ .name = "A", .ndim = 2, .ne = { 4, 96 }, .grad = true },
		{ .name = "B", .ndim = 2, .ne = { 70, 4 }, .grad = true },
		{ .name = "w", .dtype = FW_Q4, .ndim = 2, .ne = { 70, 96 }, .data = g_q.codes },
		{ .name = "w.nf4_absmax", .dtype = FW_Q4, .ndim = 1, .ne = { 2 * nb },
		  .data = g_q.qabs },
		{ .name = "w.nf4_stats", .ndim = 1, .ne = { fw_nf4_n_stats(g_q.n) },
		  .data = g_q.stats },
	};
	ck_assert_int_eq(fwt_gradcheck("nf4_linear + LoRA", 6, in, b_qlora, NULL, 1e-2), 0);
	nf4_free(&g_q);
}
END_TEST

/* bf16 rounding to nearest even, written from the format (not fw's helper). */
static double bf16_round(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
	memcpy(&f, &u, 4);
	return f;
}

/* Under bf16 autocast (QLoRA's compute dtype) the op multiplies the bf16
 * roundings of x and of each dequantized weight, and in the backward of the
 * output gradient, accumulating in f32: against that product in double
 * (sum of |terms| as the scale), and farther from the f32 product. */
START_TEST(test_bf16_tiles)
{
	struct nf4 q = nf4_make(200, 1000, 5);        /* 4 tiles */
	struct fw_ctx *ctx = fw_ctx_new();
	ck_assert_int_eq(fw_ctx_set_autocast(ctx, FW_BF16), FW_OK);
	int64_t M = 5;
	struct fw_tensor *x = fw_param(ctx, "x", FW_F32, 2, (int64_t[]){ M, q.in }, true);
	struct fw_tensor *c = fw_input(ctx, "w", FW_Q4, 2, (int64_t[]){ q.out, q.in });
	struct fw_tensor *a = fw_input(ctx, "w.nf4_absmax", FW_Q4, 1,
				       (int64_t[]){ 2 * fw_nf4_n_blocks(q.n) });
	struct fw_tensor *s = fw_input(ctx, "w.nf4_stats", FW_F32, 1,
				       (int64_t[]){ fw_nf4_n_stats(q.n) });
	struct fw_tensor *rt = fw_input(ctx, "r", FW_F32, 2, (int64_t[]){ M, q.out });
	struct fw_tensor *y = fw_nf4_linear(ctx, x, c, a, s);
	struct fw_tensor *loss = fw_sum(ctx, fw_mul(ctx, y, rt), FW_AXIS_ALL, false);
	ck_assert_msg(loss != NULL, "%s", fw_ctx_err(ctx)->msg);
	ck_assert_int_eq(fw_ctx_alloc_params(ctx), FW_OK);
	struct fw_tensor *outs[2] = { loss, y };
	struct fw_graph *g = fw_graph_new(ctx, outs, 2, &(struct fw_graph_opts){
		.backward = true });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	struct fwt_rng r = fwt_rng_new(6);
	fwt_fill_uniform(fw_f32(x), M * q.in, &r, -1.0f, 1.0f);
	fwt_fill_uniform(fw_f32(rt), M * q.out, &r, -1.0f, 1.0f);
	fwt_write(c, q.codes);
	fwt_write(a, q.qabs);
	fwt_write(s, q.stats);
	fw_graph_zero_grad(g);
	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	ck_assert_int_eq(fw_graph_backward(g), FW_OK);
	double worst = 0, worst_f32 = 0, worst_dx = 0;
	for (int64_t m = 0; m < M; m++)
		for (int64_t o = 0; o < q.out; o++) {
			double acc = 0, acc32 = 0, mag = 0;
			for (int64_t i = 0; i < q.in; i++) {
				float xv = fw_f32(x)[m * q.in + i], wv = q.deq[o * q.in + i];
				acc += bf16_round(xv) * bf16_round(wv);
				acc32 += (double)xv * wv;
				mag += fabs((double)xv * wv);
			}
			double yv = fw_f32(y)[m * q.out + o];
			worst = fmax(worst, fabs(yv - acc) / mag);
			worst_f32 = fmax(worst_f32, fabs(yv - acc32) / mag);
		}
	for (int64_t m = 0; m < M; m++)
		for (int64_t i = 0; i < q.in; i++) {
			double acc = 0, mag = 0;
			for (int64_t o = 0; o < q.out; o++) {
				double t = bf16_round(fw_f32(rt)[m * q.out + o]) *
					   bf16_round(q.deq[o * q.in + i]);
				acc += t;
				mag += fabs(t);
			}
			worst_dx = fmax(worst_dx, fabs(fw_f32(x->grad)[m * q.in + i] - acc) / mag);
		}
	ck_assert_msg(worst < 1e-6 && worst_dx < 1e-6 && worst_f32 > 1e-4,
		      "y: %g from the bf16 product, %g from the f32 one; dx: %g", worst, worst_f32,
		      worst_dx);
	fw_graph_free(g);
	fw_ctx_free(ctx);
	nf4_free(&q);
}
END_TEST

/* peft/lora's merge hands the op an f32 weight in place of the codes: it
 * multiplies that weight as it is (forward and input gradient). */
START_TEST(test_dense_weight)
{
	g_q = nf4_make(70, 96, 7);
	int64_t nb = fw_nf4_n_blocks(g_q.n);
	struct fwt_input in[6] = {
		{ .name = "x", .ndim = 3, .ne = { 2, 3, 96 }, .grad = true },
		{ .name = "A", .ndim = 2, .ne = { 4, 96 }, .grad = true },
		{ .name = "B", .ndim = 2, .ne = { 70, 4 }, .grad = true },
		{ .name = "w", .ndim = 2, .ne = { 70, 96 }, .data = g_q.deq },
		{ .name = "w.nf4_absmax", .dtype = FW_Q4, .ndim = 1, .ne = { 2 * nb },
		  .data = g_q.qabs },
		{ .name = "w.nf4_stats", .ndim = 1, .ne = { fw_nf4_n_stats(g_q.n) },
		  .data = g_q.stats },
	};
	ck_assert_int_eq(fwt_gradcheck("nf4_linear (dense) + LoRA", 6, in, b_qlora, NULL, 1e-2),
			 0);
	nf4_free(&g_q);
}
END_TEST

/* y = nf4(x) + 2 * (x A^T) B^T: the QLoRA layer. */
START_TEST(test_bad_shapes)
{
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_tensor *x = fw_input(ctx, "x", FW_F32, 2, (int64_t[]){ 2, 64 });
	struct fw_tensor *c = fw_input(ctx, "w", FW_Q4, 2, (int64_t[]){ 8, 64 });
	struct fw_tensor *a = fw_input(ctx, "a", FW_Q4, 1, (int64_t[]){ 4 });   /* 2 expected */
	struct fw_tensor *s = fw_input(ctx, "s", FW_F32, 1, (int64_t[]){ 2 });
	ck_assert_ptr_null(fw_nf4_linear(ctx, x, c, a, s));
	ck_assert_ptr_nonnull(strstr(fw_ctx_err(ctx)->msg, "nf4_linear"));
	fw_ctx_free(ctx);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("quant");
	TCase *t = fwt_tcase("nf4", 120);
	tcase_add_test(t, test_round_trip);
	tcase_add_test(t, test_forward_tiles);
	tcase_add_test(t, test_gradcheck);
	tcase_add_test(t, test_bf16_tiles);
	tcase_add_test(t, test_dense_weight);
	tcase_add_test(t, test_bad_shapes);
	suite_add_tcase(s, t);
	return fwt_run_suite(s);
}
