/* attn_layout.c - attention's layout copies against strided products, alone.
 *
 * One layer's causal attention at GPT-2 124M's shape (B 4, T 256, 12 heads
 * of 64) from a fused qkv (B, T, 3C) input to the (B, T, C) output the
 * output projection reads, forward and backward (loss = sum(y * r)), built
 * two ways in one process:
 *   copies:  q, k, v sliced, copied (cont) and reshaped, P v permuted back
 *            and copied (what fw did before strided reshape views);
 *   strided: q, k, v as strided views of qkv, P v written heads-major
 *            (matmul p3), as attention/mha built it before causal blocks;
 *   causal:  strided, with q k^T, P v and their backward over the lower
 *            triangle's blocks only (matmul p4), as attention/mha builds it.
 * As in attention/mha, backward recomputes q k^T and the softmax
 * (FW_FLAG_REMAT). --dtype bf16 casts qkv to bf16 first, as autocast does.
 * Printed: per way the median over interleaved rounds of CPU time (user +
 * system, all threads) per forward+backward, steadier than wall time on a
 * shared machine; with --threads 1 no thread spins.
 *
 *   attn_layout [--threads N (1)] [--rounds R (7)] [--iters I (5)] [--T 256]
 *               [--dtype f32|bf16]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "fw/fw.h"

enum { B = 4, H = 12, D = 64, C = H * D };

static double cpu_seconds(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

struct way {
	struct fw_ctx *ctx;
	struct fw_graph *g;
	struct fw_tensor *qkv, *r;
};

static struct fw_tensor *heads(struct fw_ctx *c, struct fw_tensor *qkv, int64_t T, int part,
			       bool copy)
{
	static const int to_heads[4] = { 0, 2, 1, 3 };
	struct fw_tensor *x = fw_slice(c, qkv, 2, part * C, C);
	if (copy)
		x = fw_cont(c, x);
	return fw_permute(c, fw_reshape(c, x, 4, (int64_t[]){ B, T, H, D }), to_heads);
}

enum { COPIES, STRIDED, CAUSAL };

static struct way build(int64_t T, int how, enum fw_dtype dt)
{
	struct way w = { .ctx = fw_ctx_new() };
	struct fw_ctx *c = w.ctx;
	bool copy = how == COPIES, tri = how == CAUSAL;
	w.qkv = fw_param(c, "qkv", FW_F32, 3, (int64_t[]){ B, T, 3 * C }, true);
	w.r = fw_input(c, "r", FW_F32, 3, (int64_t[]){ B, T, C });
	struct fw_tensor *xh = dt == FW_F32 ? w.qkv : fw_cast(c, w.qkv, dt);
	struct fw_tensor *q = heads(c, xh, T, 0, copy), *k = heads(c, xh, T, 1, copy);
	struct fw_tensor *v = heads(c, xh, T, 2, copy);
	struct fw_tensor *src[2] = { q, k };
	union fw_param pm[5] = { { .i = 0 }, { .i = 1 }, { .i = (int32_t)dt }, { .i = 0 },
				 { .i = tri ? FW_MM_CAUSAL_OUT : FW_MM_CAUSAL_NONE } };
	struct fw_tensor *s = fw_op_custom(c, FW_OP_MATMUL, src, 2, pm, 5);
	struct fw_tensor *p = fw_softmax(c, s, NULL, true, 1.0f / sqrtf((float)D));
	if (p) {
		s->flags |= FW_FLAG_REMAT;
		p->flags |= FW_FLAG_REMAT;
	}
	struct fw_tensor *y;
	if (copy) {
		y = fw_cont(c, fw_permute(c, fw_matmul(c, p, v, false, false),
					  (const int[]){ 0, 2, 1, 3 }));
	} else {
		src[0] = p;
		src[1] = v;
		pm[1].i = 0;
		pm[3].i = 1;
		pm[4].i = tri ? FW_MM_CAUSAL_A : FW_MM_CAUSAL_NONE;
		y = fw_op_custom(c, FW_OP_MATMUL, src, 2, pm, 5);
	}
	y = fw_reshape(c, y, 3, (int64_t[]){ B, T, C });
	if (dt != FW_F32)
		y = fw_cast(c, y, FW_F32);
	struct fw_tensor *loss = fw_sum(c, fw_mul(c, y, w.r), FW_AXIS_ALL, false);
	if (!loss) {
		fprintf(stderr, "attn_layout: %s\n", fw_ctx_err(c)->msg);
		exit(1);
	}
	w.g = fw_graph_new(c, &loss, 1, &(struct fw_graph_opts){ .backward = true,
								  .training = true });
	if (!w.g) {
		fprintf(stderr, "attn_layout: %s\n", fw_ctx_err(c)->msg);
		exit(1);
	}
	float *x = fw_f32(w.qkv), *rv = fw_f32(w.r);
	for (int64_t i = 0; i < B * T * 3 * C; i++)
		x[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
	for (int64_t i = 0; i < B * T * C; i++)
		rv[i] = (float)((i * 40503u) % 1000) / 1000.0f - 0.5f;
	return w;
}

static double step_cpu(struct way *w, int iters)
{
	double t0 = cpu_seconds();
	for (int i = 0; i < iters; i++) {
		fw_graph_zero_grad(w->g);
		if (fw_graph_forward(w->g) != FW_OK || fw_graph_backward(w->g) != FW_OK) {
			fprintf(stderr, "attn_layout: %s\n", fw_ctx_err(w->ctx)->msg);
			exit(1);
		}
	}
	return (cpu_seconds() - t0) / iters;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	int threads = 1, rounds = 7, iters = 5;
	int64_t T = 256;
	enum fw_dtype dt = FW_F32;
	for (int i = 1; i < argc; i += 2) {     /* --option value pairs */
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(argv[i], "--threads") && v)
			threads = atoi(v);
		else if (!strcmp(argv[i], "--rounds") && v)
			rounds = atoi(v);
		else if (!strcmp(argv[i], "--iters") && v)
			iters = atoi(v);
		else if (!strcmp(argv[i], "--T") && v)
			T = atoll(v);
		else if (!strcmp(argv[i], "--dtype") && v && (!strcmp(v, "f32") || !strcmp(v, "bf16")))
			dt = strcmp(v, "f32") ? FW_BF16 : FW_F32;
		else {
			fprintf(stderr, "attn_layout: unknown option %s (see the file's header)\n",
				argv[i]);
			return 2;
		}
	}
	if (threads < 1 || rounds < 1 || rounds > 99 || iters < 1 || T < 1) {
		fprintf(stderr, "attn_layout: --threads, --rounds (<= 99), --iters and --T must "
			"be positive\n");
		return 2;
	}
	fw_set_num_threads(threads);
	struct way w[3] = { build(T, COPIES, dt), build(T, STRIDED, dt), build(T, CAUSAL, dt) };
	double t[3][99];
	for (int k = 0; k < 3; k++)
		step_cpu(&w[k], 1);                                   /* warm-up */
	for (int r = 0; r < rounds; r++)
		for (int j = 0; j < 3; j++) {
			int k = (r + j) % 3;                          /* rotate the order */
			t[k][r] = step_cpu(&w[k], iters);
		}
	static const char *name[3] = { "copies", "strided", "causal" };
	double med[3];
	for (int k = 0; k < 3; k++) {
		qsort(t[k], (size_t)rounds, sizeof(double), cmp);
		med[k] = t[k][rounds / 2];
		printf("%-8s %8.2f CPU ms per forward+backward (min %.2f, max %.2f)\n", name[k],
		       med[k] * 1e3, t[k][0] * 1e3, t[k][rounds - 1] * 1e3);
	}
	printf("B %d T %lld H %d D %d %s, %d threads, %d rounds x %d iters: strided / copies "
	       "%.3f, causal / strided %.3f\n", B, (long long)T, H, D, fw_dtype_name(dt), threads,
	       rounds, iters, med[1] / med[0], med[2] / med[1]);
	for (int k = 0; k < 3; k++) {
		fw_graph_free(w[k].g);
		fw_ctx_free(w[k].ctx);
	}
	return 0;
}
