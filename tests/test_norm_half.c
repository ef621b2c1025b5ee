/* test_norm_half.c - LayerNorm and RMSNorm kernels with bf16/f16 rows, at
 * each kernel level this CPU runs (isa.c): an f32 x with a half output (the
 * graph's folded autocast cast, graph.c's fold_casts), a half x, and
 * backward with a half dy writing or adding into an f32 or half dx
 * (FW_OPF_HALF_GRAD), dweight/dbias in f32.
 *
 * The kernels are called directly with the dtypes of each case. The oracle
 * is the math in double from the same inputs (x, w, b, dy and the old dx
 * hold values the half dtypes represent, so f32 and half copies are the
 * same numbers): a half result must be the double value rounded once, so
 * within half an ulp of it plus f32 arithmetic's slack (2^-16 of the
 * terms' magnitude, far below a half ulp); rounding twice (dx's row
 * contribution rounded to half before it is added) breaks that bound. An
 * f32 result must be within the slack. A gradient the kernel is told to
 * write (fw_exec.grad_overwrite) starts as NaN, so an element it leaves
 * unwritten fails.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "half.h"

static const char *const levels[] = { "scalar", "avx2", "avx512", "avx512bf16" };

static double to_double(const void *p, enum fw_dtype dt, int64_t i)
{
	return dt == FW_F32 ? ((const float *)p)[i] : half_get(p, dt, i);
}

static void from_double(void *p, enum fw_dtype dt, int64_t i, double v)
{
	float f = (float)v;
	half_store(elem_ptr(p, dt, i), dt, &f, 1);
}

/* Half the spacing of dt's values around v (0 for f32: its results get the slack only). */
static double half_ulp(enum fw_dtype dt, double v)
{
	if (dt == FW_F32)
		return 0.0;
	int p = dt == FW_BF16 ? 7 : 10, e;
	frexp(fabs(v), &e);
	double u = ldexp(1.0, e - 1 - p), tiny = dt == FW_BF16 ? 0x1p-133 : 0x1p-24;
	return 0.5 * (u > tiny ? u : tiny);
}

/* A value in [lo, hi] that bf16 and f16 both represent: a multiple of
 * 2^-k with at most 8 significant bits (|hi|, |lo| <= 2^(8-k)). */
static float representable(struct fwt_rng *r, float lo, float hi, int k)
{
	float v = lo + (hi - lo) * (float)fwt_rng_uniform(r);
	return ldexpf(nearbyintf(ldexpf(v, k)), -k);
}

struct norm_case {
	bool center;                     /* layernorm (else rmsnorm) */
	int64_t N, C;
	enum fw_dtype x, out, dy, dx;    /* dx: x's gradient */
	bool ow;                         /* backward writes dx, dw, db (unzeroed) */
};

struct worst {
	double y, dx, dw;                /* worst |error| / bound */
};

static char cur_case[160];   /* for a failure's message */
static char first_bad[400];  /* the case's first element out of bounds ("" if none) */

/* Records |got - want| / bound (an assertion per element would cost Check a
 * pipe write each); run_case asserts once. */
static void check_val(double got, double want, double bound, double *worst, const char *what,
		      int64_t i)
{
	double r = fabs(got - want) / bound;
	if (!(r <= 1.0 && isfinite(got)) && !first_bad[0])
		snprintf(first_bad, sizeof(first_bad), "%s %s[%lld]: got %.9g, want %.9g (bound %.3g)",
			 cur_case, what, (long long)i, got, want, bound);
	*worst = r > *worst ? r : *worst;
}

static void run_case(const struct norm_case *k, struct worst *wst)
{
	const int64_t N = k->N, C = k->C;
	struct fw_ctx *ctx = fw_ctx_new();
	struct fwt_rng r = fwt_rng_new((uint64_t)(N * 131 + C + k->x * 7 + k->dy * 3));
	first_bad[0] = 0;
	int64_t xs[2] = { N, C }, cs[1] = { C };
	struct fw_tensor *x = fw_input(ctx, "x", k->x, 2, xs);
	struct fw_tensor *w = fw_param(ctx, "w", FW_F32, 1, cs, true);
	struct fw_tensor *b = k->center ? fw_param(ctx, "b", FW_F32, 1, cs, true) : NULL;
	struct fw_tensor *y = k->center ? fw_layernorm(ctx, x, w, b, 1e-5f) :
					  fw_rmsnorm(ctx, x, w, 1e-6f);
	ck_assert_msg(y, "%s", fw_ctx_err(ctx)->msg);
	ck_assert_int_eq(fw_ctx_alloc_params(ctx), FW_OK);
	y->dtype = k->out;              /* an f32 x with a half output: as the fold leaves it */
	struct fw_tensor gy = *y, gx = *x, gw = *w, gb = b ? *b : *w;
	gy.dtype = k->dy;
	gx.dtype = k->dx;
	gw.dtype = gb.dtype = FW_F32;
	x->data = malloc((size_t)(N * C) * 4);
	y->data = malloc((size_t)(N * C) * 4);
	gy.data = malloc((size_t)(N * C) * 4);
	gx.data = malloc((size_t)(N * C) * 4);
	gw.data = malloc((size_t)C * 4);
	gb.data = malloc((size_t)C * 4);
	double *xd = malloc((size_t)(N * C) * sizeof(double)), *dyd = malloc((size_t)(N * C) * 8);
	double *dx0 = malloc((size_t)(N * C) * 8), *wd = malloc((size_t)C * 8);
	double *bd = malloc((size_t)C * 8), *dw0 = malloc((size_t)C * 8), *db0 = malloc((size_t)C * 8);
	for (int64_t i = 0; i < N * C; i++) {
		/* layernorm's x has a mean of 2 to remove */
		xd[i] = k->center ? representable(&r, 0.0f, 4.0f, 5) : representable(&r, -2, 2, 6);
		dyd[i] = representable(&r, -1.0f, 1.0f, 7);
		dx0[i] = k->ow ? 0.0 : representable(&r, -0.25f, 0.25f, 9);
		from_double(x->data, k->x, i, xd[i]);
		from_double(gy.data, k->dy, i, dyd[i]);
		from_double(gx.data, k->dx, i, dx0[i]);
	}
	for (int64_t c = 0; c < C; c++) {
		wd[c] = representable(&r, 0.5f, 1.5f, 6);
		bd[c] = k->center ? representable(&r, -0.5f, 0.5f, 8) : 0.0;
		dw0[c] = k->ow ? 0.0 : representable(&r, -1.0f, 1.0f, 7);
		db0[c] = k->ow ? 0.0 : representable(&r, -1.0f, 1.0f, 7);
		((float *)w->data)[c] = (float)wd[c];
		if (b)
			((float *)b->data)[c] = (float)bd[c];
		((float *)gw.data)[c] = (float)dw0[c];
		((float *)gb.data)[c] = (float)db0[c];
	}
	if (k->ow) {                    /* all-ones bytes are NaN in every float dtype */
		memset(gx.data, 0xff, (size_t)(N * C) * 4);
		memset(gw.data, 0xff, (size_t)C * 4);
		memset(gb.data, 0xff, (size_t)C * 4);
	}
	y->grad = &gy;
	x->grad = &gx;
	w->grad = &gw;
	if (b)
		b->grad = &gb;

	const struct fw_op_i *vt = fw_op_get(y->op);
	ck_assert(vt->flags & FW_OPF_HALF_GRAD && vt->flags & FW_OPF_NARROW_OUT);
	size_t ws_bytes = vt->workspace(y);
	struct fw_exec ex = { .ws = malloc(ws_bytes ? ws_bytes : 1), .ws_size = ws_bytes,
			      .training = true, .grad_overwrite = k->ow ? 7u : 0u };
	vt->forward(y, &ex);
	vt->backward(y, &ex);

	double *dwd = calloc((size_t)C, 8), *dbd = calloc((size_t)C, 8);
	double *swt = calloc((size_t)C, 8), *sbt = calloc((size_t)C, 8);
	for (int64_t n = 0; n < N; n++) {
		const double *xr = xd + n * C, *dy = dyd + n * C;
		double m = 0, v = 0, sg = 0, sgx = 0, gmag = 0;
		for (int64_t c = 0; c < C; c++)
			m += k->center ? xr[c] / C : 0.0;
		for (int64_t c = 0; c < C; c++)
			v += (xr[c] - m) * (xr[c] - m) / C;
		double rs = 1.0 / sqrt(v + (k->center ? 1e-5 : 1e-6));
		for (int64_t c = 0; c < C; c++) {
			double xh = (xr[c] - m) * rs, g = dy[c] * wd[c];
			double want = xh * wd[c] + bd[c];
			double got = to_double(y->data, k->out, n * C + c);
			double slack = 0x1p-16 * (fabs(xh * wd[c]) + fabs(bd[c]) + 1.0);
			check_val(got, want, half_ulp(k->out, want) + slack, &wst->y, "y", n * C + c);
			sg += g / C;
			sgx += g * xh / C;
			gmag += fabs(g) / C;
			dwd[c] += dy[c] * xh;
			dbd[c] += dy[c];
			swt[c] += fabs(dy[c] * xh);
			sbt[c] += fabs(dy[c]);
		}
		if (!k->center)
			sg = 0;
		for (int64_t c = 0; c < C; c++) {
			double xh = (xr[c] - m) * rs, g = dy[c] * wd[c];
			double want = dx0[n * C + c] + rs * (g - sg - xh * sgx);
			double got = to_double(gx.data, k->dx, n * C + c);
			double slack = 0x1p-16 * (rs * (fabs(g) + gmag + fabs(xh) * gmag) +
						  fabs(dx0[n * C + c]));
			check_val(got, want, half_ulp(k->dx, want) + slack, &wst->dx, "dx", n * C + c);
		}
	}
	for (int64_t c = 0; c < C; c++) {
		check_val(((float *)gw.data)[c], dw0[c] + dwd[c],
			  0x1p-16 * (swt[c] + fabs(dw0[c]) + 1e-30), &wst->dw, "dw", c);
		if (b)
			check_val(((float *)gb.data)[c], db0[c] + dbd[c],
				  0x1p-16 * (sbt[c] + fabs(db0[c]) + 1e-30), &wst->dw, "db", c);
	}
	ck_assert_msg(!first_bad[0], "%s", first_bad);
	free(dwd), free(dbd), free(swt), free(sbt);
	free(xd), free(dyd), free(dx0), free(wd), free(bd), free(dw0), free(db0);
	free(ex.ws);
	free(x->data), free(y->data), free(gy.data), free(gx.data), free(gw.data), free(gb.data);
	x->data = y->data = NULL;
	x->grad = y->grad = w->grad = NULL;
	if (b)
		b->grad = NULL;
	fw_ctx_free(ctx);
}

static void run_all(const char *isa)
{
	static const int64_t shapes[][2] = { { 37, 70 }, { 48, 1030 } };   /* serial, threaded */
	static const enum fw_dtype halves[] = { FW_BF16, FW_F16 };
	for (int h = 0; h < 2; h++) {
		enum fw_dtype dt = halves[h];
		/* x, out, dy, dx: the fold's f32 x and half output (f32 gradients, or a
		 * half dy into an f32 dx), and a half x (the half residual stream) */
		const enum fw_dtype combos[][4] = {
			{ FW_F32, dt, FW_F32, FW_F32 }, { FW_F32, dt, dt, FW_F32 },
			{ dt, dt, dt, dt }, { dt, dt, FW_F32, dt },
		};
		for (int center = 0; center < 2; center++)
			for (int s = 0; s < 2; s++)
				for (int cb = 0; cb < 4; cb++)
					for (int ow = 0; ow < 2; ow++) {
						struct norm_case k = {
							.center = center, .N = shapes[s][0],
							.C = shapes[s][1], .x = combos[cb][0],
							.out = combos[cb][1], .dy = combos[cb][2],
							.dx = combos[cb][3], .ow = ow,
						};
						struct worst w = { 0 };
						snprintf(cur_case, sizeof(cur_case),
							 "%s %s %s x %s out %s dy %s dx %s %lldx%lld %s",
							 isa, center ? "layernorm" : "rmsnorm",
							 fw_dtype_name(dt), fw_dtype_name(k.x),
							 fw_dtype_name(k.out), fw_dtype_name(k.dy),
							 fw_dtype_name(k.dx), (long long)k.N,
							 (long long)k.C, ow ? "write" : "add");
						run_case(&k, &w);
						printf("%s %s %-4s x %-4s out %-4s dy %-4s dx %-4s %lldx%lld"
						       " %s: worst error/bound y %.3f dx %.3f dw,db %.3f\n",
						       isa, center ? "layernorm" : "rmsnorm",
						       fw_dtype_name(dt), fw_dtype_name(k.x),
						       fw_dtype_name(k.out), fw_dtype_name(k.dy),
						       fw_dtype_name(k.dx), (long long)k.N,
						       (long long)k.C, ow ? "write" : "add", w.y, w.dx,
						       w.dw);
					}
	}
}

/* Each level this CPU runs (the conversions half.h uses change with it). */
START_TEST(test_norm_level)
{
	enum fw_status st = fw_kernel_isa_force(levels[_i]);
	if (st == FW_ERR_UNSUPPORTED) {
		printf("norm %s: this CPU cannot run it; not run here\n", levels[_i]);
		return;
	}
	ck_assert_int_eq(st, FW_OK);
	run_all(levels[_i]);
	ck_assert_int_eq(fw_kernel_isa_force(NULL), FW_OK);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("norm_half");
	TCase *tc = fwt_tcase("core", 240);
	tcase_add_loop_test(tc, test_norm_level, 0, 4);
	suite_add_tcase(s, tc);
	return fwt_run_suite(s);
}
