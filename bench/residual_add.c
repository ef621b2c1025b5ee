/* residual_add.c - GPT-2 124M's residual add under bf16 autocast at its
 * shape (B*T = 1024 rows of 768): y = x + h with x f32 (the residual
 * stream) and h bf16 with a bf16 gradient (a matmul's output; here 2 z
 * for z's bf16 copy, a scale, which has one too), and loss = sum(y); x is
 * 0.5 w for an f32 parameter w, so that its gradient is an activation's,
 * as in GPT-2. Scale, cast and sum are the rest of the graph.
 *
 * Times the graph's forward and backward as fwrun runs them, so the graph's
 * own work for the add (f32 copies of half gradients, when the op wants
 * them) is in the number. Prints the median over --rounds of the CPU time
 * (CLOCK_PROCESS_CPUTIME, all threads) per forward and per backward; run
 * the same binary against two builds of libfw (LD_LIBRARY_PATH) and
 * interleave the runs for an A/B on a shared machine.
 *
 *     ./build/residual_add [--threads N (1)] [--rounds R (9)] [--calls C (20)]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "fw/fw.h"
#include "runtime_bench.h"

#define ROWS 1024
#define COLS 768

static void check(enum fw_status st, struct fw_ctx *ctx)
{
	if (st != FW_OK) {
		fprintf(stderr, "residual_add: %s\n", fw_ctx_err(ctx)->msg);
		exit(1);
	}
}

int main(int argc, char **argv)
{
	int threads = 1, rounds = 9, calls = 20;
	for (int i = 1; i < argc; i++) {
		if (i + 1 < argc && !strcmp(argv[i], "--threads"))
			threads = atoi(argv[++i]);
		else if (i + 1 < argc && !strcmp(argv[i], "--rounds"))
			rounds = atoi(argv[++i]);
		else if (i + 1 < argc && !strcmp(argv[i], "--calls"))
			calls = atoi(argv[++i]);
		else {
			fprintf(stderr, "usage: residual_add [--threads N] [--rounds R (1-64)] "
				"[--calls C]\n");
			return 2;
		}
	}
	if (threads < 1 || rounds < 1 || rounds > 64 || calls < 1) {
		fprintf(stderr, "residual_add: --threads and --calls must be positive, "
			"--rounds 1-64\n");
		return 2;
	}
	omp_set_num_threads(threads);

	struct fw_ctx *ctx = fw_ctx_new();
	fw_ctx_set_autocast(ctx, FW_BF16);
	int64_t shape[2] = { ROWS, COLS };
	struct fw_tensor *x = fw_param(ctx, "x", FW_F32, 2, shape, true);
	struct fw_tensor *z = fw_param(ctx, "z", FW_F32, 2, shape, true);
	struct fw_tensor *h = fw_scale(ctx, fw_cast(ctx, z, FW_BF16), 2.0f);
	/* the residual stream is an activation: its gradient is a slot */
	struct fw_tensor *xa = fw_scale(ctx, x, 0.5f);
	struct fw_tensor *loss = fw_sum(ctx, fw_add(ctx, xa, h), FW_AXIS_ALL, false);
	struct fw_graph *g = loss ? fw_graph_new(ctx, &loss, 1, &(struct fw_graph_opts){
		.backward = true, .training = true }) : NULL;
	if (!g)
		check(FW_ERR_INVALID, ctx);
	uint64_t s = 12345;
	for (int64_t i = 0; i < (int64_t)ROWS * COLS; i++, s = s * 6364136223846793005ull + 1) {
		fw_f32(x)[i] = (float)((double)(s >> 40) / 16777216.0 - 0.5);
		fw_f32(z)[i] = (float)(4.0 * ((double)(s >> 20 & 0xfffff) / 1048576.0 - 0.5));
	}

	double t[2][64];
	for (int r = 0; r < rounds; r++) {
		double fwd = 0.0, bwd = 0.0;
		for (int c = 0; c < calls; c++) {
			double t0 = bench_cpu_now();
			check(fw_graph_forward(g), ctx);
			double t1 = bench_cpu_now();
			check(fw_graph_backward(g), ctx);
			bwd += bench_cpu_now() - t1;
			fwd += t1 - t0;
		}
		t[0][r] = fwd / calls;
		t[1][r] = bwd / calls;
	}
	printf("residual_add (%d x %d, f32 + bf16), %d thread(s), isa %s: "
	       "forward %.3f ms, backward %.3f ms (CPU, median of %d rounds of %d)\n",
	       ROWS, COLS, threads, fw_kernel_isa(), bench_median(t[0], rounds) * 1e3,
	       bench_median(t[1], rounds) * 1e3, rounds, calls);
	fw_graph_free(g);
	fw_ctx_free(ctx);
	return 0;
}
