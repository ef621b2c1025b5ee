/* lmhead.c - the LM head's forward + backward at GPT-2 124M's shape (N = B*T
 * = 1024 rows, C = 768, V = 50257, tied weight trainable): matmul +
 * cross_entropy against the fused lm_head_ce at several chunk sizes.
 *
 * Prints per variant: wall ms and CPU ms (all threads, CLOCK_PROCESS_CPUTIME)
 * per forward+backward, the median of --rounds interleaved rounds, and the
 * planned activations + workspace. On a shared machine the CPU time is the
 * steadier number; --threads 1 leaves no barrier spinning in it.
 *
 * --bf16 casts x and w to bf16 first (fwrun --bf16's head: cast nodes, f32
 * master copies); --auto-only times only the fused head at its default chunk
 * (for A/B runs of two builds).
 *
 *     ./build/lmhead [--threads N] [--rounds R] [--rows N] [--vocab V] [--bf16]
 *                    [--auto-only]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fw/fw.h"

static double clock_s(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

struct variant {
	const char *name;
	int chunk;               /* < 0: unfused */
	struct fw_ctx *ctx;
	struct fw_graph *g;
	struct fw_tensor *x, *w, *t;
	double wall[32], cpu[32];
	size_t plan;
};

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(double), cmp_double);
	return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void build(struct variant *v, int64_t N, int64_t C, int64_t V, enum fw_dtype dt)
{
	v->ctx = fw_ctx_new();
	v->x = fw_param(v->ctx, "x", FW_F32, 2, (int64_t[]){ N, C }, true);
	v->w = fw_param(v->ctx, "w", FW_F32, 2, (int64_t[]){ V, C }, true);
	v->t = fw_input(v->ctx, "t", FW_I32, 1, (int64_t[]){ N });
	struct fw_tensor *x = dt == FW_F32 ? v->x : fw_cast(v->ctx, v->x, dt);
	struct fw_tensor *w = dt == FW_F32 ? v->w : fw_cast(v->ctx, v->w, dt);
	struct fw_tensor *loss = v->chunk >= 0 ?
		fw_lm_head_cross_entropy(v->ctx, x, w, v->t, NULL, FW_IGNORE_INDEX, v->chunk) :
		fw_cross_entropy(v->ctx, fw_matmul(v->ctx, x, w, false, true), v->t, NULL,
				 FW_IGNORE_INDEX);
	v->g = loss ? fw_graph_new(v->ctx, &loss, 1, &(struct fw_graph_opts){
		.backward = true, .training = true }) : NULL;
	if (!v->g) {
		fprintf(stderr, "lmhead: %s: %s\n", v->name, fw_ctx_err(v->ctx)->msg);
		exit(1);
	}
	uint64_t s = 12345;
	for (int64_t i = 0; i < N * C; i++, s = s * 6364136223846793005ull + 1)
		fw_f32(v->x)[i] = (float)((double)(s >> 40) / 16777216.0 - 0.5);
	for (int64_t i = 0; i < V * C; i++, s = s * 6364136223846793005ull + 1)
		fw_f32(v->w)[i] = (float)(0.04 * ((double)(s >> 40) / 16777216.0 - 0.5));
	for (int64_t i = 0; i < N; i++)
		fw_i32(v->t)[i] = (int32_t)((i * 7919) % V);
	struct fw_memory_report r;
	fw_graph_memory(v->g, &r);
	v->plan = r.bytes[FW_MEM_ACTIVATIONS] + r.bytes[FW_MEM_WORKSPACE];
}

static void step(struct variant *v, int round)
{
	double w0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
	if (fw_graph_forward(v->g) != FW_OK || fw_graph_backward(v->g) != FW_OK) {
		fprintf(stderr, "lmhead: %s: %s\n", v->name, fw_ctx_err(v->ctx)->msg);
		exit(1);
	}
	v->wall[round] = clock_s(CLOCK_MONOTONIC) - w0;
	v->cpu[round] = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
}

int main(int argc, char **argv)
{
	int threads = 2, rounds = 5;
	bool auto_only = false;
	enum fw_dtype dt = FW_F32;
	int64_t N = 1024, C = 768, V = 50257;
	for (int i = 1; i < argc; i++) {
		if (i + 1 < argc && !strcmp(argv[i], "--threads"))
			threads = atoi(argv[++i]);
		else if (i + 1 < argc && !strcmp(argv[i], "--rounds"))
			rounds = atoi(argv[++i]);
		else if (i + 1 < argc && !strcmp(argv[i], "--rows"))
			N = atoll(argv[++i]);
		else if (i + 1 < argc && !strcmp(argv[i], "--vocab"))
			V = atoll(argv[++i]);
		else if (!strcmp(argv[i], "--bf16"))
			dt = FW_BF16;
		else if (!strcmp(argv[i], "--auto-only"))
			auto_only = true;
		else {
			fprintf(stderr, "usage: lmhead [--threads N] [--rounds R (1-32)] "
					"[--rows N] [--vocab V] [--bf16] [--auto-only]\n");
			return 2;
		}
	}
	if (threads < 1 || rounds < 1 || rounds > 32 || N < 1 || V < 1) {
		fprintf(stderr, "lmhead: --threads, --rounds (1-32), --rows and --vocab must be "
				"positive\n");
		return 2;
	}
	fw_set_num_threads(threads);
	struct variant vs[] = {
		{ .name = "matmul + cross_entropy", .chunk = -1 },
		{ .name = "lm_head_ce chunk 64", .chunk = 64 },
		{ .name = "lm_head_ce chunk 128", .chunk = 128 },
		{ .name = "lm_head_ce chunk 256", .chunk = 256 },
		{ .name = "lm_head_ce chunk 512", .chunk = 512 },
		{ .name = "lm_head_ce auto", .chunk = 0 },
	};
	int nv = (int)(sizeof(vs) / sizeof(vs[0]));
	if (auto_only) {
		vs[0] = vs[nv - 1];
		nv = 1;
	}
	for (int i = 0; i < nv; i++) {
		build(&vs[i], N, C, V, dt);
		step(&vs[i], 0);        /* warm-up: primitives, pages */
	}
	for (int r = 0; r < rounds; r++)
		for (int i = 0; i < nv; i++)
			step(&vs[(i + r) % nv], r);
	double fl = 3.0 * 2.0 * (double)N * (double)C * (double)V;
	printf("lm head fwd+bwd, %s, N=%lld C=%lld V=%lld, %d threads, median of %d rounds; "
	       "head FLOPs %.1f GFLOP (3 products, fused or not)\n", fw_dtype_name(dt),
	       (long long)N, (long long)C, (long long)V, threads, rounds, fl * 1e-9);
	printf("%-24s %10s %10s %12s %12s %14s\n", "variant", "wall ms", "cpu ms", "GFLOP/s wall",
	       "GFLOP/cpu-s", "plan act+ws MiB");
	for (int i = 0; i < nv; i++) {
		double w = median(vs[i].wall, rounds), c = median(vs[i].cpu, rounds);
		printf("%-24s %10.1f %10.1f %12.1f %12.1f %14.1f\n", vs[i].name, w * 1e3, c * 1e3,
		       fl / w * 1e-9, fl / c * 1e-9, (double)vs[i].plan / 1048576.0);
		fw_graph_free(vs[i].g);
		fw_ctx_free(vs[i].ctx);
	}
	return 0;
}
