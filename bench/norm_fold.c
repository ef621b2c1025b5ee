/* norm_fold.c - what folding autocast's cast into a LayerNorm (graph.c's
 * fold_casts) costs and saves per pre-LN block and step, in CPU time, one
 * thread (steadier than wall time on a shared machine), at GPT-2 124M's
 * shape under --bf16 (B*T = 1024 rows of 768):
 *
 *   unfolded: layernorm forward (f32 out) + cast to bf16 (a full pass) +
 *             layernorm backward; the cast's output is kept for the matmul
 *   folded:   layernorm forward (bf16 out), again in backward (recomputed
 *             for the matmul instead of kept) + layernorm backward
 *
 * and the same backward with a bf16 dy and dx (FW_OPF_HALF_GRAD, the half
 * residual stream's case) against the f32 one. Milliseconds per call, best
 * of the rounds.
 *
 * usage: norm_fold [--rounds N] [--rows N] [--cols N]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fw/fw.h"
#include "half.h"

static double cpu_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
	return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

struct norm {
	struct fw_ctx *ctx;
	struct fw_tensor *x, *y, gy, gx, gw, gb;
	struct fw_exec ex;
	const struct fw_op_i *vt;
};

/* LayerNorm of an (R, C) x of dtype xt into out dtype yt; gradients of dtype gt
 * for y and x, f32 for the weight and bias. */
static void norm_open(struct norm *n, int64_t R, int64_t C, enum fw_dtype xt, enum fw_dtype yt,
		      enum fw_dtype gt)
{
	n->ctx = fw_ctx_new();
	n->x = fw_input(n->ctx, "x", xt, 2, (int64_t[]){ R, C });
	struct fw_tensor *w = fw_param(n->ctx, "w", FW_F32, 1, (int64_t[]){ C }, true);
	struct fw_tensor *b = fw_param(n->ctx, "b", FW_F32, 1, (int64_t[]){ C }, true);
	n->y = fw_layernorm(n->ctx, n->x, w, b, 1e-5f);
	if (!n->y || fw_ctx_alloc_params(n->ctx) != FW_OK || fw_ctx_init_params(n->ctx, 1) != FW_OK) {
		fprintf(stderr, "norm_fold: %s\n", fw_ctx_err(n->ctx)->msg);
		exit(1);
	}
	n->y->dtype = yt;            /* as the fold leaves it */
	n->gy = *n->y;
	n->gx = *n->x;
	n->gw = *w;
	n->gb = *b;
	n->gy.dtype = n->gx.dtype = gt;
	size_t bytes = (size_t)(R * C) * 4;
	n->x->data = calloc(1, bytes);
	n->y->data = calloc(1, bytes);
	n->gy.data = calloc(1, bytes);
	n->gx.data = calloc(1, bytes);
	n->gw.data = calloc(1, (size_t)C * 4);
	n->gb.data = calloc(1, (size_t)C * 4);
	for (int64_t i = 0; i < R * C; i++) {
		float v = (float)((i * 7919) % 1009) * 1e-3f - 0.5f;
		half_store(elem_ptr(n->x->data, xt, i), xt, &v, 1);
		half_store(elem_ptr(n->gy.data, gt, i), gt, &v, 1);
	}
	n->y->grad = &n->gy;
	n->x->grad = &n->gx;
	w->grad = &n->gw;
	b->grad = &n->gb;
	n->vt = fw_op_get(n->y->op);
	size_t ws = n->vt->workspace(n->y);
	n->ex = (struct fw_exec){ .ws = malloc(ws ? ws : 1), .ws_size = ws, .training = true,
				  .grad_overwrite = 7u };
}

/* Best milliseconds per call of what (0 forward, 1 backward, 2 cast of y to bf16). */
static double best_ms(struct norm *n, int what, int rounds, void *cast_out)
{
	double best = 1e30;
	enum { CALLS = 20 };
	for (int r = 0; r < rounds; r++) {
		double t0 = cpu_s();
		for (int i = 0; i < CALLS; i++) {
			if (what == 0)
				n->vt->forward(n->y, &n->ex);
			else if (what == 1)
				n->vt->backward(n->y, &n->ex);
			else
				fw_convert(cast_out, FW_BF16, n->y->data, FW_F32, fw_nelem(n->y));
		}
		double ms = (cpu_s() - t0) * 1e3 / CALLS;
		best = ms < best ? ms : best;
	}
	return best;
}

int main(int argc, char **argv)
{
	int rounds = 7;
	int64_t R = 1024, C = 768;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
			rounds = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--rows") && i + 1 < argc)
			R = atoll(argv[++i]);
		else if (!strcmp(argv[i], "--cols") && i + 1 < argc)
			C = atoll(argv[++i]);
		else {
			fprintf(stderr, "usage: norm_fold [--rounds N] [--rows N] [--cols N]\n");
			return 2;
		}
	}
	if (rounds < 1 || R < 1 || C < 1) {
		fprintf(stderr, "norm_fold: --rounds, --rows and --cols must be positive\n");
		return 2;
	}
	fw_set_num_threads(1);
	struct norm f32, fold, half;
	norm_open(&f32, R, C, FW_F32, FW_F32, FW_F32);
	norm_open(&fold, R, C, FW_F32, FW_BF16, FW_F32);
	norm_open(&half, R, C, FW_BF16, FW_BF16, FW_BF16);
	void *cast_out = malloc((size_t)(R * C) * 2);
	double fwd32 = best_ms(&f32, 0, rounds, NULL), cast = best_ms(&f32, 2, rounds, cast_out);
	double bwd32 = best_ms(&f32, 1, rounds, NULL), fwd16 = best_ms(&fold, 0, rounds, NULL);
	double bwdh = best_ms(&half, 1, rounds, NULL);
	printf("layernorm %lldx%lld, kernel level %s, one thread, best of %d rounds (CPU ms per call)\n",
	       (long long)R, (long long)C, fw_kernel_isa(), rounds);
	printf("  forward, f32 out          %8.3f\n", fwd32);
	printf("  cast f32 -> bf16          %8.3f\n", cast);
	printf("  forward, bf16 out (fold)  %8.3f\n", fwd16);
	printf("  backward, f32 dy and dx   %8.3f\n", bwd32);
	printf("  backward, bf16 x, dy, dx  %8.3f\n", bwdh);
	printf("per block and step: unfolded (forward + cast + backward) %.3f, "
	       "folded (forward + recompute + backward) %.3f\n", fwd32 + cast + bwd32,
	       2 * fwd16 + bwd32);
	return 0;
}
