/* gelu.c - GELU's kernels at GPT-2 124M's MLP shape (B*T = 1024 rows of
 * 3072), f32 and bf16 (autocast), forward and backward, on the build's ISA
 * copy (AVX2) against the AVX-512 copy fw picks at run time where the CPU
 * has it (core/engine/src/ops_elementwise.c).
 *
 * The op's own forward and backward are called on a graph's bound buffers,
 * so only GELU is timed; under bf16 its input and both gradients are bf16,
 * as in GPT-2's MLP (backward adds into dx). Prints per case the median over --rounds
 * interleaved rounds of the CPU time (CLOCK_PROCESS_CPUTIME, all threads)
 * per call; the CPU time is the steadier number on a shared machine, and
 * --threads 1 (the default) leaves no barrier spinning in it.
 *
 *     ./build/gelu [--threads N] [--rounds R] [--calls C]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <omp.h>

#include "fw/fw.h"
#include "internal.h"

#define ROWS 1024
#define COLS 3072

static double cpu_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

struct gcase {
	enum fw_dtype dt;
	int form;
	struct fw_ctx *ctx;
	struct fw_graph *g;
	struct fw_tensor *y;
};

static void build(struct gcase *c)
{
	c->ctx = fw_ctx_new();
	if (c->dt != FW_F32)
		fw_ctx_set_autocast(c->ctx, c->dt);
	struct fw_tensor *x = fw_param(c->ctx, "x", FW_F32, 2, (int64_t[]){ ROWS, COLS }, true);
	struct fw_tensor *r = fw_input(c->ctx, "r", FW_F32, 2, (int64_t[]){ ROWS, COLS });
	/* under autocast GELU's input is a half node with a half gradient (in
	 * GPT-2 a matmul's output): here a scale by 1 of x's half copy */
	struct fw_tensor *h = c->dt == FW_F32 ? x : fw_scale(c->ctx, fw_cast(c->ctx, x, c->dt), 1.0f);
	c->y = fw_gelu(c->ctx, h, c->form);
	struct fw_tensor *loss = fw_sum(c->ctx, fw_mul(c->ctx, c->y, r), FW_AXIS_ALL, false);
	c->g = loss ? fw_graph_new(c->ctx, &loss, 1, &(struct fw_graph_opts){
		.backward = true, .training = true }) : NULL;
	if (!c->g) {
		fprintf(stderr, "gelu: %s\n", fw_ctx_err(c->ctx)->msg);
		exit(1);
	}
	uint64_t s = 12345;
	for (int64_t i = 0; i < (int64_t)ROWS * COLS; i++, s = s * 6364136223846793005ull + 1) {
		fw_f32(x)[i] = (float)(8.0 * ((double)(s >> 40) / 16777216.0 - 0.5));
		fw_f32(r)[i] = 1.0f;
	}
	if (fw_graph_forward(c->g) != FW_OK || fw_graph_backward(c->g) != FW_OK) {
		fprintf(stderr, "gelu: %s\n", fw_ctx_err(c->ctx)->msg);
		exit(1);
	}
}

/* CPU seconds per call of the op's forward (pass 0) or backward (pass 1). */
static double time_pass(struct gcase *c, int pass, int calls)
{
	const struct fw_op_i *vt = fw_op_get(FW_OP_GELU);
	const struct fw_exec ex = { .training = true };   /* backward adds into dx */
	double t0 = cpu_s();
	for (int i = 0; i < calls; i++) {
		if (pass == 0)
			vt->forward(c->y, &ex);
		else
			vt->backward(c->y, &ex);
	}
	return (cpu_s() - t0) / calls;
}

int main(int argc, char **argv)
{
	int threads = 1, rounds = 5, calls = 20;
	for (int i = 1; i < argc; i++) {
		if (i + 1 < argc && !strcmp(argv[i], "--threads"))
			threads = atoi(argv[++i]);
		else if (i + 1 < argc && !strcmp(argv[i], "--rounds"))
			rounds = atoi(argv[++i]);
		else if (i + 1 < argc && !strcmp(argv[i], "--calls"))
			calls = atoi(argv[++i]);
		else {
			fprintf(stderr, "usage: gelu [--threads N] [--rounds R (1-64)] [--calls C]\n");
			return 2;
		}
	}
	if (threads < 1 || rounds < 1 || rounds > 64 || calls < 1) {
		fprintf(stderr, "gelu: --threads and --calls must be positive, --rounds 1-64\n");
		return 2;
	}
	omp_set_num_threads(threads);
	bool has512 = fw_kernel_avx512();
	printf("gelu (%d x %d), %d thread(s), %d rounds of %d calls; AVX-512 copy: %s\n",
	       ROWS, COLS, threads, rounds, calls, has512 ? "yes" : "not on this CPU");
	static const enum fw_dtype dts[] = { FW_F32, FW_BF16 };
	printf("%-5s %-5s %-8s %10s %10s %8s\n", "dtype", "form", "pass", "avx2 ms",
	       "avx512 ms", "ratio");
	for (int d = 0; d < 2; d++) {
		for (int form = FW_GELU_ERF; form <= FW_GELU_TANH; form++) {
			struct gcase c = { .dt = dts[d], .form = form };
			build(&c);
			for (int pass = 0; pass < 2; pass++) {
				double t[2][64];
				for (int r = 0; r < rounds; r++) {
					for (int isa = 0; isa < (has512 ? 2 : 1); isa++) {
						fw_kernel_isa_force(isa == 1 ? NULL : "avx2");
						t[isa][r] = time_pass(&c, pass, calls);
					}
				}
				fw_kernel_isa_force(NULL);
				qsort(t[0], (size_t)rounds, sizeof(double), cmp_double);
				qsort(t[1], (size_t)rounds, sizeof(double), cmp_double);
				double a = t[0][rounds / 2] * 1e3, b = has512 ? t[1][rounds / 2] * 1e3 : 0;
				printf("%-5s %-5s %-8s %10.3f %10.3f %8.2f\n", fw_dtype_name(c.dt),
				       form == FW_GELU_TANH ? "tanh" : "erf",
				       pass ? "backward" : "forward", a, b, has512 ? a / b : 0.0);
			}
			fw_graph_free(c.g);
			fw_ctx_free(c.ctx);
		}
	}
	return 0;
}
