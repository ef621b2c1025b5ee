/* test_gelu_isa.c - GELU's forward and backward at each kernel level this
 * CPU runs (core/engine/src/isa.c): scalar and avx2 run the build's copy
 * (x86-64-v3) with those levels' half conversions, avx512 and avx512bf16
 * the AVX-512 copy (ops_elementwise.c) with theirs (avx512bf16: f32 -> bf16
 * through vcvtneps2bf16, whose flush of f32 subnormals half_isa.c works
 * around: x = 1e-39 gives a subnormal output); the log says which ran. Both
 * forms (erf, tanh), f32, and bf16 and f16 autocast, through a graph: loss =
 * sum(gelu(x) * r), so dx = r gelu'(x).
 *
 * The oracle is the formula in double with libm's erf, tanh and exp
 * (torch.nn.functional.gelu's definition and ATen's GeluBackward), on the
 * values the kernel saw (x and r rounded to bf16 under autocast). Bounds:
 * vmath.h's erf/tanh are within 2.5 float ulps, and 1 + tanh cancels for
 * x << 0, so an f32 result may differ by 8 eps32 (|x| + |y|) for y, and
 * 16 eps32 |r| (1 + |x|) for dx; a bf16 output adds its own rounding
 * (eps16 |y|, eps16 = 2^-8, plus half the spacing of its subnormals). The x values span [-9, 9] (both tails, where
 * erf is 1 and e^(-x^2/2) underflows), over more elements than one thread's
 * share (the parallel path), in a length that is no multiple of a vector.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "half.h"
#include "harness.h"

#define ROWS 37
#define COLS 1031
#define N ((int64_t)ROWS * COLS)
#define EPS32 0x1p-24
#define EPS16 0x1p-8

static double gelu_ref(int form, double x)
{
	if (form == FW_GELU_TANH)
		return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
	return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
}

static double gelu_grad_ref(int form, double x)
{
	if (form == FW_GELU_TANH) {
		double b = sqrt(2.0 / M_PI), t = tanh(b * (x + 0.044715 * x * x * x));
		return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * b * (1.0 + 3 * 0.044715 * x * x);
	}
	return 0.5 * (1.0 + erf(x / sqrt(2.0))) + x * exp(-0.5 * x * x) / sqrt(2.0 * M_PI);
}

static double as_dtype(enum fw_dtype dt, float v)
{
	return dt == FW_BF16 ? fw_bf16_to_f32(fw_f32_to_bf16(v)) :
	       dt == FW_F16 ? fw_f16_to_f32(fw_f32_to_f16(v)) : v;
}

/* Half the spacing of dt's subnormals: the most correct rounding can
 * move a value there (bf16 2^-133, f16 2^-24 apart). */
static double half_spacing(enum fw_dtype dt)
{
	return dt == FW_BF16 ? 0x1p-134 : dt == FW_F16 ? 0x1p-25 : 0;
}

/* How GELU's input gets its gradient: from a cast (f32), or, under
 * autocast, as a half node's (a scale by 1 between: GELU's backward then
 * writes the half gradient, or adds to what sum(x r2) wrote there first). */
enum grad_mode { GRAD_F32, GRAD_HALF, GRAD_HALF_ADDED };

static const char *const mode_names[] = { "", " (half dx)", " (half dx, added)" };

/* One form and dtype on the current ISA copy; returns the elements out of bounds. */
static int64_t run(int form, enum fw_dtype dt, enum grad_mode mode, const char *isa)
{
	struct fw_ctx *ctx = fw_ctx_new();
	if (dt != FW_F32)
		ck_assert_int_eq(fw_ctx_set_autocast(ctx, dt), FW_OK);
	struct fw_tensor *x = fw_param(ctx, "x", FW_F32, 2, (int64_t[]){ ROWS, COLS }, true);
	struct fw_tensor *r = fw_input(ctx, "r", FW_F32, 2, (int64_t[]){ ROWS, COLS });
	struct fw_tensor *r2 = fw_input(ctx, "r2", FW_F32, 2, (int64_t[]){ ROWS, COLS });
	struct fw_tensor *xin = dt == FW_F32 ? x : fw_cast(ctx, x, dt);
	if (mode != GRAD_F32)
		xin = fw_scale(ctx, xin, 1.0f);
	struct fw_tensor *y = fw_gelu(ctx, xin, form);
	struct fw_tensor *loss = fw_sum(ctx, fw_mul(ctx, y, r), FW_AXIS_ALL, false);
	if (mode == GRAD_HALF_ADDED)      /* created last: its backward runs first */
		loss = fw_add(ctx, loss, fw_sum(ctx, fw_mul(ctx, xin, r2), FW_AXIS_ALL, false));
	ck_assert_msg(loss != NULL, "%s", fw_ctx_err(ctx)->msg);
	ck_assert_int_eq(y->dtype, dt);
	struct fw_tensor *outs[2] = { loss, y };
	struct fw_graph *g = fw_graph_new(ctx, outs, 2, &(struct fw_graph_opts){
		.backward = true, .training = true });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);

	float *xv = malloc(sizeof(float) * N), *rv = malloc(sizeof(float) * N);
	float *yv = malloc(sizeof(float) * N), *dx = malloc(sizeof(float) * N);
	float *r2v = malloc(sizeof(float) * N);
	ck_assert(xv && rv && yv && dx && r2v);
	struct fwt_rng rng = fwt_rng_new(31 + (uint64_t)form);
	fwt_fill_uniform(xv, N, &rng, -9, 9);
	fwt_fill_uniform(rv, N, &rng, -2, 2);
	fwt_fill_uniform(r2v, N, &rng, -2, 2);
	for (int64_t i = 0; i < N; i++)       /* what the half gradient holds exactly */
		r2v[i] = (float)as_dtype(dt, r2v[i]);
	xv[0] = 0.0f; xv[1] = -0.0f; xv[2] = 1e-30f; xv[3] = -1e-30f; xv[4] = 30.0f; xv[5] = -30.0f;
	xv[6] = 1e-39f; xv[7] = -3e-39f;
	fwt_write(x, xv);
	fwt_write(r, rv);
	fwt_write(r2, r2v);
	fw_graph_zero_grad(g);
	ck_assert_int_eq(fw_graph_forward(g), FW_OK);
	ck_assert_int_eq(fw_graph_backward(g), FW_OK);
	fwt_read_f32(y, yv);
	fwt_read_f32(x->grad, dx);

	int64_t bad = 0;
	double worst_y = 0, worst_dx = 0;
	for (int64_t i = 0; i < N; i++) {
		double xi = as_dtype(dt, xv[i]), ri = as_dtype(dt, rv[i]);
		double want = gelu_ref(form, xi);
		double tol_y = 8 * EPS32 * (fabs(xi) + fabs(want)) +
			       (dt == FW_F32 ? 0 : EPS16 * fabs(want) + half_spacing(dt));
		double want_dx = ri * gelu_grad_ref(form, xi) +
				 (mode == GRAD_HALF_ADDED ? r2v[i] : 0.0);
		double tol_dx = 16 * EPS32 * fabs(ri) * (1 + fabs(xi)) +
				(mode == GRAD_F32 ? 0 : EPS16 * fabs(want_dx) + half_spacing(dt));
		double ey = fabs(yv[i] - want), ed = fabs(dx[i] - want_dx);
		worst_y = fmax(worst_y, tol_y > 0 ? ey / tol_y : ey);
		worst_dx = fmax(worst_dx, tol_dx > 0 ? ed / tol_dx : ed);
		if (!(ey <= tol_y) || !(ed <= tol_dx)) {
			if (bad++ < 5)
				fprintf(stderr, "%s %s %s%s: x %.9g r %.9g: y %.9g want %.9g, "
					"dx %.9g want %.9g\n", isa,
					form == FW_GELU_TANH ? "tanh" : "erf", fw_dtype_name(dt),
					mode_names[mode], xi, ri, (double)yv[i], want, (double)dx[i],
					want_dx);
		}
	}
	printf("gelu %s %-4s %-4s: worst error / bound: y %.3f, dx %.3f%s\n", isa,
	       form == FW_GELU_TANH ? "tanh" : "erf", fw_dtype_name(dt), worst_y, worst_dx,
	       mode_names[mode]);
	free(xv);
	free(r2v);
	free(rv);
	free(yv);
	free(dx);
	fw_graph_free(g);
	fw_ctx_free(ctx);
	return bad;
}

static void run_all(const char *isa)
{
	static const enum fw_dtype dts[] = { FW_F32, FW_BF16, FW_F16 };
	for (int form = FW_GELU_ERF; form <= FW_GELU_TANH; form++)
		for (int d = 0; d < 3; d++)
			for (int m = GRAD_F32; m <= (d ? GRAD_HALF_ADDED : GRAD_F32); m++)
				ck_assert_int_eq(run(form, dts[d], (enum grad_mode)m, isa), 0);
}

static const char *const levels[] = { "scalar", "avx2", "avx512", "avx512bf16" };

/* What level isa turns on: the AVX-512 GELU copy from avx512 up, and
 * exactly that level's half conversions (half_isa.c's row). */
static void check_kernels(enum fw_isa isa)
{
	ck_assert_str_eq(fw_kernel_isa(), levels[isa]);
	ck_assert_int_eq(fw_kernel_avx512(), isa >= FW_ISA_AVX512);
	ck_assert(!memcmp(&fw_half_ops, &fw_half_ops_isa[isa], sizeof(fw_half_ops)));
}

/* Each level this CPU runs (isa.c): GELU and its half conversions; a CPU
 * with every AVX-512 subset that level needs must get it. */
START_TEST(test_gelu_level)
{
	struct fw_cpu cpu;
	fw_cpu_detect(&cpu);
	bool has512 = cpu.avx512f && cpu.avx512bw && cpu.avx512vl && cpu.avx512dq;
	bool can[] = { true, cpu.avx2 && cpu.fma && cpu.f16c, has512, has512 && cpu.avx512_bf16 };
	enum fw_status st = fw_kernel_isa_force(levels[_i]);
	ck_assert_int_eq(st, can[_i] ? FW_OK : FW_ERR_UNSUPPORTED);
	if (st != FW_OK) {
		printf("gelu %s: this CPU cannot run it; not run here\n", levels[_i]);
		return;
	}
	check_kernels((enum fw_isa)_i);
	run_all(levels[_i]);
	ck_assert_int_eq(fw_kernel_isa_force(NULL), FW_OK);
}
END_TEST

/* The level picked at load (each test runs in a fork of that process):
 * the one FW_KERNEL_ISA or FW_HALF_ISA names (ctest runs this suite with
 * FW_KERNEL_ISA=avx2 and FW_HALF_ISA=avx2: then no AVX-512 kernel runs),
 * else the CPU's best. */
START_TEST(test_level_at_load)
{
	const char *env = getenv("FW_KERNEL_ISA") ? getenv("FW_KERNEL_ISA") : getenv("FW_HALF_ISA");
	const char *want = env ? env : fw_kernel_isa_best();
	int at = 0;
	while (at < FW_ISA_N && strcmp(levels[at], want))
		at++;
	ck_assert_msg(at < FW_ISA_N, "no level %s", want);
	check_kernels((enum fw_isa)at);
	if (env && !strcmp(env, "avx2")) {
		ck_assert(!fw_kernel_avx512());
		ck_assert(fw_half_ops.f32_to_bf16 != fw_half_ops_isa[FW_ISA_AVX512].f32_to_bf16 &&
			  fw_half_ops.f32_to_bf16 != fw_half_ops_isa[FW_ISA_AVX512BF16].f32_to_bf16 &&
			  fw_half_ops.bf16_to_f32 != fw_half_ops_isa[FW_ISA_AVX512].bf16_to_f32 &&
			  fw_half_ops.f16_to_f32 != fw_half_ops_isa[FW_ISA_AVX512].f16_to_f32 &&
			  fw_half_ops.f32_to_f16 != fw_half_ops_isa[FW_ISA_AVX512].f32_to_f16);
	}
	run_all(want);
	ck_assert_int_eq(fw_kernel_isa_force("avx3"), FW_ERR_INVALID);
	ck_assert_str_eq(fw_kernel_isa(), want);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("gelu_isa");
	TCase *tc = fwt_tcase("core", 120);
	tcase_add_loop_test(tc, test_gelu_level, 0, 4);
	tcase_add_test(tc, test_level_at_load);
	suite_add_tcase(s, tc);
	return fwt_run_suite(s);
}
