/* softmax_isa.c - the f32 softmax's two ISA copies at attention's shape.
 *
 * Causal softmax over GPT-2 124M's scores (B 4, H 12, T 256), forward and
 * backward through a graph (loss = sum(y * r)), with the AVX-512 row
 * kernels allowed and not (fw_kernel_allow_avx512) in interleaved rounds in
 * one process; the loss's own cost, timed on a graph without the softmax,
 * is subtracted. Printed: median CPU ms per forward+backward of each copy
 * and their ratio. Without AVX-512 both rows run the build's copy.
 *
 *   softmax_isa [--rounds R (21)] [--threads N (1)]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "fw/fw.h"
#include "internal.h"

static const int64_t shape[4] = { 4, 12, 256, 256 };
#define N ((int64_t)4 * 12 * 256 * 256)

static double cpu_seconds(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* loss = sum(softmax(x) * r), or sum(x * r) without the softmax */
static struct fw_graph *build(struct fw_ctx *c, bool softmax)
{
	struct fw_tensor *x = fw_param(c, "x", FW_F32, 4, shape, true);
	struct fw_tensor *r = fw_input(c, "r", FW_F32, 4, shape);
	struct fw_tensor *y = softmax ? fw_softmax(c, x, NULL, true, 0.125f) : x;
	struct fw_tensor *loss = fw_sum(c, fw_mul(c, y, r), FW_AXIS_ALL, false);
	struct fw_graph *g = loss ? fw_graph_new(c, &loss, 1, &(struct fw_graph_opts){
		.backward = true, .training = true }) : NULL;
	if (!g) {
		fprintf(stderr, "softmax_isa: %s\n", fw_ctx_err(c)->msg);
		exit(1);
	}
	for (int64_t i = 0; i < N; i++) {
		fw_f32(x)[i] = (float)((i * 2654435761u) % 1000) / 100.0f - 5.0f;
		fw_f32(r)[i] = (float)((i * 40503u) % 1000) / 1000.0f;
	}
	return g;
}

static double run(struct fw_graph *g, int iters)
{
	double t0 = cpu_seconds();
	for (int i = 0; i < iters; i++) {
		fw_graph_zero_grad(g);
		if (fw_graph_forward(g) != FW_OK || fw_graph_backward(g) != FW_OK) {
			fprintf(stderr, "softmax_isa: a graph run failed\n");
			exit(1);
		}
	}
	return (cpu_seconds() - t0) / iters;
}

int main(int argc, char **argv)
{
	int rounds = 21, threads = 1;
	for (int i = 1; i < argc; i += 2) {
		if (i + 1 < argc && !strcmp(argv[i], "--rounds")) {
			rounds = atoi(argv[i + 1]);
		} else if (i + 1 < argc && !strcmp(argv[i], "--threads")) {
			threads = atoi(argv[i + 1]);
		} else {
			fprintf(stderr, "softmax_isa: unknown option %s (see the file's header)\n",
				argv[i]);
			return 2;
		}
	}
	if (rounds < 1 || rounds > 99 || threads < 1) {
		fprintf(stderr, "softmax_isa: --rounds must be 1..99 and --threads positive\n");
		return 2;
	}
	fw_set_num_threads(threads);
	struct fw_ctx *c = fw_ctx_new(), *c0 = fw_ctx_new();
	struct fw_graph *g = build(c, true), *g0 = build(c0, false);
	double t[3][99];
	for (int r = 0; r < rounds; r++)
		for (int k = 0; k < 3; k++) {
			fw_kernel_allow_avx512(k == 1);
			t[k][r] = run(k == 2 ? g0 : g, 4);
		}
	fw_kernel_allow_avx512(true);
	for (int k = 0; k < 3; k++)
		qsort(t[k], (size_t)rounds, sizeof(double), cmp);
	double base = t[0][rounds / 2] - t[2][rounds / 2];
	double wide = t[1][rounds / 2] - t[2][rounds / 2];
	printf("softmax fwd+bwd (4, 12, 256, 256) causal, %d threads, %d rounds: build's copy "
	       "%.2f CPU ms, AVX-512 copy %.2f%s, ratio %.3f (loss alone %.2f, subtracted)\n",
	       threads, rounds, base * 1e3, wide * 1e3,
	       fw_kernel_avx512() ? "" : " (no AVX-512 here: the build's copy)", wide / base,
	       t[2][rounds / 2] * 1e3);
	fw_graph_free(g);
	fw_graph_free(g0);
	fw_ctx_free(c);
	fw_ctx_free(c0);
	return 0;
}
