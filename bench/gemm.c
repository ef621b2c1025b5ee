/* gemm.c - GEMM benchmark: fw's matmul against a bare oneDNN call and the
 * machine's measured FMA peak, on the GPT-2 124M linear layers.
 *
 * For each shape (M = B*T rows; K in, N out) it times the three products of
 * a torch-style Linear, Y = X W^T (X: M x K, W: N x K):
 *
 *   fwd   Y    = X W^T     (M x K) (K x N)
 *   bwd   dX  += dY W      (M x N) (N x K)
 *   bwd   dW  += dY^T X    (N x M) (M x K)
 *
 * in f32 and in bf16 (bf16 operands, f32 result), three ways:
 *
 *   bare   one dnnl_matmul primitive per product, created once and executed
 *          in the loop: the floor fw is measured against.
 *   run    fw_gemm_run(), the core's internal entry (primitive cache).
 *   graph  an fw graph X, W -> fw_matmul(X, W, trans_b) -> loss, timed with
 *          fw_graph_forward and fw_graph_backward (backward = dX + dW).
 *          The loss is fw_sum when the core has it, else a bench-local sum
 *          op; its own cost is measured on a graph holding only the loss and
 *          subtracted in the "net" column. In bf16 the graph's X and W come
 *          from a bench-local view op that exposes a bf16 input as a tensor
 *          that gets a gradient (fw only trains f32 parameters), so the
 *          matmul's own dX and dW are computed but no cast is timed.
 *
 * Backward products accumulate into their destination (a sum post-op) in all
 * three, as the graph does. Times are medians over rounds that interleave
 * all the ways; overhead % = (t_fw / t_bare - 1) * 100. Peak: an AVX-512
 * FMA throughput loop (and AVX512-BF16 dot products) on every OpenMP thread,
 * before and after the GEMMs, the better kept.
 *
 * A "diag" row times bare oneDNN on dW^T = X^T dY with a column-major
 * destination, the descriptor a trans_b matmul's dW naturally maps to;
 * oneDNN 2.x has only its reference kernel for it (100-1000x slower), so it
 * and any graph backward found that slow are timed by one call, and only
 * with --slow on every shape.
 *
 *   gemm [--threads N] [--quick] [--dtype f32|bf16|all] [--slow]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>

#include <immintrin.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>

#include "fw/fw.h"
#include "internal.h"

#define MAX_ROUNDS 16

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(const double *v, int n)
{
	double t[MAX_ROUNDS];
	memcpy(t, v, (size_t)n * sizeof(double));
	qsort(t, (size_t)n, sizeof(double), cmp_double);
	return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

static void die(const char *what, const char *msg)
{
	fprintf(stderr, "gemm: %s: %s\n", what, msg);
	exit(1);
}

/* Process CPU seconds (all threads). */
static double cpu_seconds(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
	       1e-6 * (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

/* CPU and wall seconds of the timed rounds: how much of the cores we got. */
static double noise_cpu, noise_wall;

/* --- options ------------------------------------------------------------------ */

static struct {
	int threads;
	bool quick;
	bool slow;           /* time products that fall back to oneDNN's ref kernel */
	bool do_f32, do_bf16;
	bool peak_only;      /* print the peaks as one JSON line and exit */
	double case_s;       /* timed seconds per case */
	int rounds;          /* interleaved timed repetitions per case */
} opt = { .do_f32 = true, .do_bf16 = true };

static void usage(FILE *f)
{
	fprintf(f, "usage: gemm [--threads N] [--quick] [--dtype f32|bf16|all] [--slow] [--peak-only]\n"
		   "  --threads N   OpenMP threads (default: all cores)\n"
		   "  --quick       shorter timing (about 0.1 s a case instead of 0.4 s)\n"
		   "  --dtype D     f32, bf16 or all (default all)\n"
		   "  --peak-only   only measure the FMA (and dpbf16) peaks; print them as one\n"
		   "                JSON line (bench/gpt2_train.py reads it)\n"
		   "  --slow        also time (one call each) what runs on oneDNN's reference\n"
		   "                kernel: the diag row, and a graph backward found that slow\n"
		   "                on attn-proj, on every shape (minutes)\n");
}

static void parse_args(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
			opt.threads = atoi(argv[++i]);
			if (opt.threads < 1)
				die("--threads", "needs a positive count");
		} else if (!strcmp(argv[i], "--quick")) {
			opt.quick = true;
		} else if (!strcmp(argv[i], "--peak-only")) {
			opt.peak_only = true;
		} else if (!strcmp(argv[i], "--slow")) {
			opt.slow = true;
		} else if (!strcmp(argv[i], "--dtype") && i + 1 < argc) {
			const char *d = argv[++i];
			opt.do_f32 = !strcmp(d, "f32") || !strcmp(d, "all");
			opt.do_bf16 = !strcmp(d, "bf16") || !strcmp(d, "all");
			if (!opt.do_f32 && !opt.do_bf16)
				die("--dtype", "expects f32, bf16 or all");
		} else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(stdout);
			exit(0);
		} else {
			usage(stderr);
			exit(2);
		}
	}
	opt.case_s = opt.quick ? 0.1 : 0.4;
	opt.rounds = opt.quick ? 5 : 9;
}

/* --- peak: FMA and BF16 dot-product throughput loops --------------------------- */

static volatile float sink;

/* Each loop is compiled for its ISA whatever -march the build has, and run
 * only where /proc/cpuinfo shows that ISA (main). */
#define FMA512_FLOPS_PER_ITER (16 * 16 * 2)
__attribute__((noinline, target("avx512f"))) static void fma512_loop(long n)
{
	const __m512 m = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-7f);
	__m512 a0 = _mm512_set1_ps(1.0f), a1 = _mm512_set1_ps(1.1f), a2 = _mm512_set1_ps(1.2f),
	       a3 = _mm512_set1_ps(1.3f), a4 = _mm512_set1_ps(1.4f), a5 = _mm512_set1_ps(1.5f),
	       a6 = _mm512_set1_ps(1.6f), a7 = _mm512_set1_ps(1.7f), a8 = _mm512_set1_ps(1.8f),
	       a9 = _mm512_set1_ps(1.9f), a10 = _mm512_set1_ps(2.0f), a11 = _mm512_set1_ps(2.1f),
	       a12 = _mm512_set1_ps(2.2f), a13 = _mm512_set1_ps(2.3f), a14 = _mm512_set1_ps(2.4f),
	       a15 = _mm512_set1_ps(2.5f);
	for (long i = 0; i < n; i++) {
		a0 = _mm512_fmadd_ps(a0, m, c);   a1 = _mm512_fmadd_ps(a1, m, c);
		a2 = _mm512_fmadd_ps(a2, m, c);   a3 = _mm512_fmadd_ps(a3, m, c);
		a4 = _mm512_fmadd_ps(a4, m, c);   a5 = _mm512_fmadd_ps(a5, m, c);
		a6 = _mm512_fmadd_ps(a6, m, c);   a7 = _mm512_fmadd_ps(a7, m, c);
		a8 = _mm512_fmadd_ps(a8, m, c);   a9 = _mm512_fmadd_ps(a9, m, c);
		a10 = _mm512_fmadd_ps(a10, m, c); a11 = _mm512_fmadd_ps(a11, m, c);
		a12 = _mm512_fmadd_ps(a12, m, c); a13 = _mm512_fmadd_ps(a13, m, c);
		a14 = _mm512_fmadd_ps(a14, m, c); a15 = _mm512_fmadd_ps(a15, m, c);
	}
	__m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
				 _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
	s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a8, a9),
							 _mm512_add_ps(a10, a11)),
					   _mm512_add_ps(_mm512_add_ps(a12, a13),
							 _mm512_add_ps(a14, a15))));
	sink = _mm512_reduce_add_ps(s);
}

#define FMA256_FLOPS_PER_ITER (12 * 8 * 2)
__attribute__((noinline, target("avx2,fma"))) static void fma256_loop(long n)
{
	const __m256 m = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
	__m256 a[12];
	for (int j = 0; j < 12; j++)
		a[j] = _mm256_set1_ps(1.0f + 0.1f * (float)j);
	for (long i = 0; i < n; i++)
		for (int j = 0; j < 12; j++)
			a[j] = _mm256_fmadd_ps(a[j], m, c);
	float s = 0, t[8];
	for (int j = 0; j < 12; j++) {
		_mm256_storeu_ps(t, a[j]);
		for (int k = 0; k < 8; k++)
			s += t[k];
	}
	sink = s;
}

#define DP_FLOPS_PER_ITER (16 * 32 * 2)
__attribute__((noinline, target("avx512f,avx512bf16"))) static void dpbf16_loop(long n)
{
	const __m512bh x = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(2e-3f));
	const __m512bh y = _mm512_cvtne2ps_pbh(_mm512_set1_ps(3e-3f), _mm512_set1_ps(1e-3f));
	__m512 a[16];
	for (int j = 0; j < 16; j++)
		a[j] = _mm512_set1_ps((float)j);
	for (long i = 0; i < n; i++) {
		a[0] = _mm512_dpbf16_ps(a[0], x, y);   a[1] = _mm512_dpbf16_ps(a[1], x, y);
		a[2] = _mm512_dpbf16_ps(a[2], x, y);   a[3] = _mm512_dpbf16_ps(a[3], x, y);
		a[4] = _mm512_dpbf16_ps(a[4], x, y);   a[5] = _mm512_dpbf16_ps(a[5], x, y);
		a[6] = _mm512_dpbf16_ps(a[6], x, y);   a[7] = _mm512_dpbf16_ps(a[7], x, y);
		a[8] = _mm512_dpbf16_ps(a[8], x, y);   a[9] = _mm512_dpbf16_ps(a[9], x, y);
		a[10] = _mm512_dpbf16_ps(a[10], x, y); a[11] = _mm512_dpbf16_ps(a[11], x, y);
		a[12] = _mm512_dpbf16_ps(a[12], x, y); a[13] = _mm512_dpbf16_ps(a[13], x, y);
		a[14] = _mm512_dpbf16_ps(a[14], x, y); a[15] = _mm512_dpbf16_ps(a[15], x, y);
	}
	__m512 s = a[0];
	for (int j = 1; j < 16; j++)
		s = _mm512_add_ps(s, a[j]);
	sink = _mm512_reduce_add_ps(s);
}

/* GFLOP/s of loop() run on every thread at once: the best of a few reps. */
static double peak_gflops(void (*loop)(long), double flops_per_iter, int threads)
{
	long n = 1 << 16;
	double t;
	for (;;) {                       /* calibrate on one thread */
		t = now();
		loop(n);
		t = now() - t;
		if (t > 0.02 || n > (1L << 40))
			break;
		n *= 4;
	}
	/* Many short reps, the best kept: on a shared machine some of them find
	 * the cores idle. */
	n = (long)((double)n * 0.02 / t) + 1;
	double best = 0;
	for (int rep = 0; rep < (opt.quick ? 10 : 25); rep++) {
		double t0 = now();
		#pragma omp parallel num_threads(threads)
		loop(n);
		double g = flops_per_iter * (double)n * threads / (now() - t0) * 1e-9;
		if (g > best)
			best = g;
	}
	return best;
}

/* --- data ------------------------------------------------------------------------ */

static uint64_t rng_state = 0x243F6A8885A308D3ull;

static float frand(void)         /* uniform in [-1, 1) */
{
	rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
	return (float)((double)(rng_state >> 40) / 8388608.0 - 1.0);
}

static void *xalloc(size_t bytes)
{
	void *p = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
	if (!p)
		die("memory", "out of memory");
	memset(p, 0, bytes);
	return p;
}

/* n random values of dtype dt (f32 or bf16). */
static void fill(void *p, enum fw_dtype dt, int64_t n)
{
	for (int64_t i = 0; i < n; i++) {
		float v = frand();
		if (dt == FW_BF16)
			((uint16_t *)p)[i] = fw_f32_to_bf16(v);
		else
			((float *)p)[i] = v;
	}
}

static float load(const void *p, enum fw_dtype dt, int64_t i)
{
	return dt == FW_BF16 ? fw_bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

/* --- bare oneDNN ------------------------------------------------------------------- */

static dnnl_engine_t bare_engine;
static dnnl_stream_t bare_stream;

/* A 2-D operand: rows x cols with element strides (rs, cs). */
struct opnd {
	int64_t rows, cols, rs, cs;
};

struct bare {
	dnnl_primitive_t prim;
	dnnl_memory_t a, b, c;
	char impl[64];
};

#define DNNL_CHECK(x) \
	do { if ((x) != dnnl_success) die("oneDNN", #x); } while (0)

static void bare_create(struct bare *p, enum fw_dtype dt, struct opnd oa, struct opnd ob,
			struct opnd oc, bool accumulate, void *a, void *b, float *c)
{
	dnnl_data_type_t ddt = dt == FW_BF16 ? dnnl_bf16 : dnnl_f32;
	dnnl_memory_desc_t amd, bmd, cmd;
	dnnl_dims_t ad = { oa.rows, oa.cols }, as = { oa.rs, oa.cs };
	dnnl_dims_t bd = { ob.rows, ob.cols }, bs = { ob.rs, ob.cs };
	dnnl_dims_t cd = { oc.rows, oc.cols }, cs = { oc.rs, oc.cs };
	DNNL_CHECK(dnnl_memory_desc_init_by_strides(&amd, 2, ad, ddt, as));
	DNNL_CHECK(dnnl_memory_desc_init_by_strides(&bmd, 2, bd, ddt, bs));
	DNNL_CHECK(dnnl_memory_desc_init_by_strides(&cmd, 2, cd, dnnl_f32, cs));
	dnnl_matmul_desc_t desc;
	DNNL_CHECK(dnnl_matmul_desc_init(&desc, &amd, &bmd, NULL, &cmd));
	dnnl_primitive_attr_t attr;
	DNNL_CHECK(dnnl_primitive_attr_create(&attr));
	dnnl_post_ops_t po = NULL;
	if (accumulate) {
		DNNL_CHECK(dnnl_post_ops_create(&po));
		DNNL_CHECK(dnnl_post_ops_append_sum(po, 1.0f));
		DNNL_CHECK(dnnl_primitive_attr_set_post_ops(attr, po));
	}
	dnnl_primitive_desc_t pd;
	DNNL_CHECK(dnnl_primitive_desc_create(&pd, &desc, attr, bare_engine, NULL));
	const char *impl = NULL;
	if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) != dnnl_success ||
	    !impl)
		impl = "?";
	snprintf(p->impl, sizeof(p->impl), "%s", impl);
	DNNL_CHECK(dnnl_primitive_create(&p->prim, pd));
	DNNL_CHECK(dnnl_memory_create(&p->a, &amd, bare_engine, a));
	DNNL_CHECK(dnnl_memory_create(&p->b, &bmd, bare_engine, b));
	DNNL_CHECK(dnnl_memory_create(&p->c, &cmd, bare_engine, c));
	dnnl_primitive_desc_destroy(pd);
	if (po)
		dnnl_post_ops_destroy(po);
	dnnl_primitive_attr_destroy(attr);
}

static void bare_destroy(struct bare *p)
{
	dnnl_primitive_destroy(p->prim);
	dnnl_memory_destroy(p->a);
	dnnl_memory_destroy(p->b);
	dnnl_memory_destroy(p->c);
}

static void bare_exec(struct bare *p)
{
	dnnl_exec_arg_t args[3] = {
		{ DNNL_ARG_SRC, p->a }, { DNNL_ARG_WEIGHTS, p->b }, { DNNL_ARG_DST, p->c },
	};
	DNNL_CHECK(dnnl_primitive_execute(p->prim, bare_stream, 3, args));
	DNNL_CHECK(dnnl_stream_wait(bare_stream));
}

/* --- bench-local ops: a sum loss, and a bf16 "leaf with a gradient" ------------------ */

struct sum_arg {
	const float *x;
	int64_t n, chunk;
	double part[256];
	float *gx;
	float g;
};

static void sum_range(void *arg, int64_t b, int64_t e)
{
	struct sum_arg *s = arg;
	for (int64_t c = b; c < e; c++) {
		int64_t lo = c * s->chunk, hi = lo + s->chunk < s->n ? lo + s->chunk : s->n;
		float acc = 0;
		for (int64_t i = lo; i < hi; i++)
			acc += s->x[i];
		s->part[c] = acc;
	}
}

static void sum_grad_range(void *arg, int64_t b, int64_t e)
{
	struct sum_arg *s = arg;
	for (int64_t i = b; i < e; i++)
		s->gx[i] += s->g;
}

static enum fw_status bsum_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *x = out->src[0];
	if (x->dtype != FW_F32 || !fw_is_contiguous(x))
		return fw_errorf(err, FW_ERR_SHAPE, "bench_sum: needs a contiguous f32 tensor");
	out->dtype = FW_F32;
	out->ndim = 1;
	out->ne[0] = 1;
	return FW_OK;
}

static void bsum_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	static struct sum_arg s;
	s.x = out->src[0]->data;
	s.n = fw_nelem(out->src[0]);
	s.chunk = (s.n + 255) / 256;
	fw_parallel_for(256, sum_range, &s);
	double t = 0;
	for (int c = 0; c < 256; c++)
		t += s.part[c];
	fw_f32(out)[0] = (float)t;
}

static void bsum_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	struct sum_arg s = { .gx = out->src[0]->grad->data, .g = fw_f32(out->grad)[0] };
	fw_parallel_for(fw_nelem(out->src[0]), sum_grad_range, &s);
}

static uint32_t bsum_saved(const struct fw_tensor *out)
{
	return 0;
}

static const struct fw_op_i bench_sum_i = {
	.size = sizeof(struct fw_op_i),
	.name = "bench_sum",
	.infer = bsum_infer,
	.forward = bsum_forward,
	.backward = bsum_backward,
	.saved = bsum_saved,
};

/* out = view of src[0] (a bf16 input); src[1] is a 1-element trainable f32
 * parameter that only makes the graph give out a gradient buffer. Its
 * backward does nothing: the gradient the matmul writes stays in out->grad. */
static enum fw_status gleaf_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *x = out->src[0];
	out->dtype = x->dtype;
	out->ndim = x->ndim;
	for (int i = 0; i < x->ndim; i++) {
		out->ne[i] = x->ne[i];
		out->nb[i] = x->nb[i];
	}
	out->view_offset = 0;
	return FW_OK;
}

static void gleaf_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	out->data = out->src[0]->data;
}

static void gleaf_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
}

static const struct fw_op_i bench_grad_leaf_i = {
	.size = sizeof(struct fw_op_i),
	.name = "bench_grad_leaf",
	.flags = FW_OPF_VIEW | FW_OPF_STRIDED,
	.infer = gleaf_infer,
	.forward = gleaf_forward,
	.backward = gleaf_backward,
	.saved = bsum_saved,
};

static int op_bench_sum = -1, op_grad_leaf = -1;
static bool use_fw_sum;

static struct fw_tensor *loss_of(struct fw_ctx *ctx, struct fw_tensor *y)
{
	if (!y)
		return NULL;
	if (use_fw_sum)
		return fw_sum(ctx, y, FW_AXIS_ALL, false);
	return fw_op_custom(ctx, op_bench_sum, &y, 1, NULL, 0);
}

/* --- one benchmark shape ---------------------------------------------------------------- */

enum { P_FWD, P_DX, P_DW, P_DWT, N_PROD };
static const char *const prod_label[N_PROD] = {
	"fwd  Y = X W^T", "bwd  dX += dY W", "bwd  dW += dY^T X", "diag dW^T += X^T dY",
};

static const char *const prod_short[N_PROD] = { "fwd", "dX", "dW", "dW^T" };

struct shape {
	const char *name;
	int64_t M, K, N;
};

static const struct shape shapes[] = {
	{ "qkv", 1024, 768, 2304 },
	{ "attn-proj", 1024, 768, 768 },
	{ "mlp-up", 1024, 768, 3072 },
	{ "mlp-down", 1024, 3072, 768 },
};
#define N_SHAPES ((int)(sizeof(shapes) / sizeof(shapes[0])))

/* Per-round seconds of every timed thing of one (shape, dtype). */
enum {
	T_BARE, T_RUN = T_BARE + N_PROD, T_GRAPH_F = T_RUN + 3, T_GRAPH_B, T_LOSS_F, T_LOSS_B,
	N_T
};

struct result {
	bool have_graph;     /* graph and loss-only graph built */
	bool graph_bwd;      /* graph backward timed */
	bool diag;           /* diag dW^T timed */
	bool diag_single;    /* diag timed by one call (oneDNN reference kernel) */
	bool graph_single;   /* graph bwd timed by one call (it was > 10x bare) */
	double t[N_T][MAX_ROUNDS];
	char impl[N_PROD][64];
	char check[96];
	char note[160];
};

struct bench {
	const struct shape *s;
	enum fw_dtype dt;
	void *x, *w, *dy;                /* operands in dt */
	float *y, *dx, *dw, *dwt;        /* f32 outputs */
	struct bare bare[N_PROD];
	struct fw_gemm gemm[3];
	const void *ga[3], *gb[3];
	float *gc[3];
	struct fw_ctx *ctx, *lctx;
	struct fw_graph *graph, *lgraph;
	struct fw_tensor *gx, *gw;       /* the graph's X and W (gradients read back) */
};

/* One timed call: adds its seconds to t[0]; graph units (forward, then
 * backward) add the forward's to t[0] and the backward's to t[1]. */
enum unit_kind { U_BARE, U_RUN, U_GRAPH, U_GRAPH_FWD, U_LOSS, U_LOSS_FWD };

static void unit_call(struct bench *b, enum unit_kind k, int i, double *t)
{
	double t0 = now(), t1, t2;
	switch (k) {
	case U_BARE:
		bare_exec(&b->bare[i]);
		t[0] += now() - t0;
		return;
	case U_RUN:
		if (fw_gemm_run(&b->gemm[i], b->ga[i], b->gb[i], b->gc[i]) != FW_OK)
			die("fw_gemm_run", "failed");
		t[0] += now() - t0;
		return;
	case U_GRAPH_FWD:
	case U_LOSS_FWD:
		fw_graph_forward(k == U_GRAPH_FWD ? b->graph : b->lgraph);
		t[0] += now() - t0;
		return;
	case U_GRAPH:
	case U_LOSS: {
		struct fw_graph *g = k == U_GRAPH ? b->graph : b->lgraph;
		fw_graph_forward(g);
		t1 = now();
		if (fw_graph_backward(g) != FW_OK)
			die("fw_graph_backward", "failed");
		t2 = now();
		t[0] += t1 - t0;
		t[1] += t2 - t1;
		return;
	}
	}
}

static void build_graphs(struct bench *b, struct result *r)
{
	const struct shape *s = b->s;
	int64_t xs[2] = { s->M, s->K }, ws[2] = { s->N, s->K }, ys[2] = { s->M, s->N }, one = 1;
	struct fw_tensor *X, *W;
	struct fw_ctx *ctx = b->ctx = fw_ctx_new();
	if (!ctx)
		die("fw_ctx_new", "failed");
	if (b->dt == FW_F32) {
		X = fw_param(ctx, "x", FW_F32, 2, xs, true);
		W = fw_param(ctx, "w", FW_F32, 2, ws, true);
	} else {
		struct fw_tensor *src[2];
		src[0] = fw_input(ctx, "x_bf16", FW_BF16, 2, xs);
		src[1] = fw_param(ctx, "x_g", FW_F32, 1, &one, true);
		X = src[0] && src[1] ? fw_op_custom(ctx, op_grad_leaf, src, 2, NULL, 0) : NULL;
		src[0] = fw_input(ctx, "w_bf16", FW_BF16, 2, ws);
		src[1] = fw_param(ctx, "w_g", FW_F32, 1, &one, true);
		W = src[0] && src[1] ? fw_op_custom(ctx, op_grad_leaf, src, 2, NULL, 0) : NULL;
	}
	struct fw_tensor *loss = loss_of(ctx, X && W ? fw_matmul(ctx, X, W, false, true) : NULL);
	struct fw_graph_opts go = { .backward = true, .training = true };
	b->graph = loss ? fw_graph_new(ctx, &loss, 1, &go) : NULL;
	if (!b->graph) {
		snprintf(r->note, sizeof(r->note), "; graph n/a: %.100s", fw_ctx_err(ctx)->msg);
		return;
	}
	/* Same operand values as the bare and fw_gemm_run cases. */
	const struct fw_tensor *xd = b->dt == FW_F32 ? X : X->src[0];
	const struct fw_tensor *wd = b->dt == FW_F32 ? W : W->src[0];
	memcpy(xd->data, b->x, fw_nbytes(xd));
	memcpy(wd->data, b->w, fw_nbytes(wd));
	b->gx = X;
	b->gw = W;

	/* The loss alone, on a trainable (M, N) parameter: its cost is subtracted. */
	struct fw_ctx *lctx = b->lctx = fw_ctx_new();
	if (!lctx)
		die("fw_ctx_new", "failed");
	struct fw_tensor *p = fw_param(lctx, "y", FW_F32, 2, ys, true);
	struct fw_tensor *lt = loss_of(lctx, p);
	b->lgraph = lt ? fw_graph_new(lctx, &lt, 1, &go) : NULL;
	r->have_graph = b->lgraph != NULL;
	if (!b->lgraph)
		snprintf(r->note, sizeof(r->note), "; loss graph n/a: %.100s", fw_ctx_err(lctx)->msg);
	else
		fill(p->data, FW_F32, fw_nelem(p));
}

/* max |a - b| / max |b| over n f32 values */
static double rel_err(const float *a, const float *b, int64_t n)
{
	double d = 0, m = 1e-30;
	for (int64_t i = 0; i < n; i++) {
		d = fmax(d, fabs((double)a[i] - b[i]));
		m = fmax(m, fabs((double)b[i]));
	}
	return d / m;
}

/* Checks the three ways against each other and against a direct reference
 * before timing; the result goes into r->check. */
static void check(struct bench *b, struct result *r)
{
	const struct shape *s = b->s;
	int64_t M = s->M, K = s->K, N = s->N;
	double tol = b->dt == FW_BF16 ? 1e-2 : 1e-4, worst = 0;
	/* errors: run vs bare, diag vs dW, bare spot, graph dX, graph dW */
	double e[5] = { 0, 0, 0, 0, 0 };
	static const char *const e_name[5] = { "run", "diag", "bare", "graph dX", "graph dW" };
	float *ref = xalloc((size_t)(M > N ? M : N) * (size_t)(N > K ? N : K) * 4);
	int64_t nout[3] = { M * N, M * K, N * K };
	float *dst[3] = { b->y, b->dx, b->dw };

	/* fw_gemm_run vs bare, from zeroed destinations. */
	for (int i = 0; i < 3; i++) {
		memset(dst[i], 0, (size_t)nout[i] * 4);
		bare_exec(&b->bare[i]);
		memcpy(ref, dst[i], (size_t)nout[i] * 4);
		memset(dst[i], 0, (size_t)nout[i] * 4);
		if (fw_gemm_run(&b->gemm[i], b->ga[i], b->gb[i], b->gc[i]) != FW_OK)
			die("fw_gemm_run", "failed");
		e[0] = fmax(e[0], rel_err(dst[i], ref, nout[i]));
	}
	/* bare dW^T (a column-major destination) vs bare dW; when oneDNN runs
	 * it with its reference kernel, this one call is also its timing. */
	if (r->diag) {
		memset(b->dwt, 0, (size_t)(N * K) * 4);
		double t0 = now();
		bare_exec(&b->bare[P_DWT]);
		t0 = now() - t0;
		for (int round = 0; r->diag_single && round < opt.rounds; round++)
			r->t[T_BARE + P_DWT][round] = t0;
		/* dW^T (K, N) column-major is dW (N, K) row-major in memory. */
		memset(b->dw, 0, (size_t)(N * K) * 4);
		bare_exec(&b->bare[P_DW]);
		e[1] = rel_err(b->dwt, b->dw, N * K);
	}

	/* A single spot check of bare Y against a direct dot product. */
	double dot = 0;
	memset(b->y, 0, (size_t)(M * N) * 4);
	bare_exec(&b->bare[P_FWD]);
	for (int64_t k = 0; k < K; k++)
		dot += (double)load(b->x, b->dt, 5 * K + k) * load(b->w, b->dt, 7 * K + k);
	e[2] = fabs(dot - b->y[5 * N + 7]) / (fabs(dot) + 1.0);

	/* Graph: with dL/dY = 1, dX[m][k] = sum_n W[n][k] and dW[n][k] = sum_m X[m][k]. */
	if (b->graph && r->graph_bwd) {
		double tb = now();
		bare_exec(&b->bare[P_DX]);
		bare_exec(&b->bare[P_DW]);
		tb = now() - tb;
		if (b->dt == FW_F32)
			fw_graph_zero_grad(b->graph);
		fw_graph_forward(b->graph);
		double t0 = now();
		fw_graph_backward(b->graph);
		t0 = now() - t0;
		/* Seconds where bare takes milliseconds (a reference kernel): keep
		 * this one call as the timing. */
		r->graph_single = t0 > 0.5 && t0 > 10 * tb;
		for (int round = 0; r->graph_single && round < opt.rounds; round++)
			r->t[T_GRAPH_B][round] = t0;
		for (int64_t i = 0; i < M * K; i++)
			ref[i] = 0;
		for (int64_t k = 0; k < K; k++) {
			double cw = 0;
			for (int64_t j = 0; j < N; j++)
				cw += load(b->w, b->dt, j * K + k);
			for (int64_t m = 0; m < M; m++)
				ref[m * K + k] = (float)cw;
		}
		e[3] = rel_err(b->gx->grad->data, ref, M * K);
		for (int64_t k = 0; k < K; k++) {
			double cx = 0;
			for (int64_t m = 0; m < M; m++)
				cx += load(b->x, b->dt, m * K + k);
			for (int64_t j = 0; j < N; j++)
				ref[j * K + k] = (float)cx;
		}
		e[4] = rel_err(b->gw->grad->data, ref, N * K);
	}
	int bad = 0;
	for (int i = 0; i < 5; i++) {
		worst = fmax(worst, e[i]);
		bad = e[i] > e[bad] ? i : bad;
	}
	if (worst < tol)
		snprintf(r->check, sizeof(r->check), "check ok (max rel err %.1e%s)", worst,
			 b->graph && r->graph_bwd ? ", graph dX/dW included" : "");
	else
		snprintf(r->check, sizeof(r->check), "CHECK FAILED: %s rel err %.1e "
			 "(run %.0e diag %.0e dX %.0e dW %.0e)", e_name[bad], e[bad],
			 e[0], e[1], e[3], e[4]);
	free(ref);
}

static void bench_shape(const struct shape *s, enum fw_dtype dt, struct result *r,
			bool *graph_slow)
{
	struct bench b = { .s = s, .dt = dt };
	int64_t M = s->M, K = s->K, N = s->N;
	size_t es = fw_dtype_size(dt);
	memset(r, 0, sizeof(*r));

	b.x = xalloc((size_t)(M * K) * es);
	b.w = xalloc((size_t)(N * K) * es);
	b.dy = xalloc((size_t)(M * N) * es);
	b.y = xalloc((size_t)(M * N) * 4);
	b.dx = xalloc((size_t)(M * K) * 4);
	b.dw = xalloc((size_t)(N * K) * 4);
	b.dwt = xalloc((size_t)(N * K) * 4);
	fill(b.x, dt, M * K);
	fill(b.w, dt, N * K);
	fill(b.dy, dt, M * N);

	/* Bare oneDNN, the layouts of a torch Linear (all row-major in memory). */
	bare_create(&b.bare[P_FWD], dt, (struct opnd){ M, K, K, 1 }, (struct opnd){ K, N, 1, K },
		    (struct opnd){ M, N, N, 1 }, false, b.x, b.w, b.y);
	bare_create(&b.bare[P_DX], dt, (struct opnd){ M, N, N, 1 }, (struct opnd){ N, K, K, 1 },
		    (struct opnd){ M, K, K, 1 }, true, b.dy, b.w, b.dx);
	bare_create(&b.bare[P_DW], dt, (struct opnd){ N, M, 1, N }, (struct opnd){ M, K, K, 1 },
		    (struct opnd){ N, K, K, 1 }, true, b.dy, b.x, b.dw);
	/* What fw's graph backward asks for: dW^T (K, N) = X^T dY into W's
	 * row-major gradient, i.e. a column-major destination. */
	bare_create(&b.bare[P_DWT], dt, (struct opnd){ K, M, 1, K }, (struct opnd){ M, N, N, 1 },
		    (struct opnd){ K, N, 1, K }, true, b.x, b.dy, b.dwt);
	for (int i = 0; i < N_PROD; i++)
		snprintf(r->impl[i], sizeof(r->impl[i]), "%s", b.bare[i].impl);

	/* fw_gemm_run on the same buffers and layouts as bare. */
	b.gemm[0] = (struct fw_gemm){ .batch = 1, .M = M, .N = N, .K = K, .trans_b = true,
				      .lda = K, .ldb = K, .ldc = N, .dt_ab = dt };
	b.ga[0] = b.x; b.gb[0] = b.w; b.gc[0] = b.y;
	b.gemm[1] = (struct fw_gemm){ .batch = 1, .M = M, .N = K, .K = N,
				      .lda = N, .ldb = K, .ldc = K, .dt_ab = dt, .accumulate = true };
	b.ga[1] = b.dy; b.gb[1] = b.w; b.gc[1] = b.dx;
	b.gemm[2] = (struct fw_gemm){ .batch = 1, .M = N, .N = K, .K = M, .trans_a = true,
				      .lda = N, .ldb = K, .ldc = K, .dt_ab = dt, .accumulate = true };
	b.ga[2] = b.dy; b.gb[2] = b.x; b.gc[2] = b.dw;

	build_graphs(&b, r);
	/* Where oneDNN has only its reference kernel (a column-major destination
	 * in 2.x), one call takes seconds to a minute. The diag product is timed
	 * then only with --slow; a graph backward that turns out that slow on
	 * the first shape (attn-proj, the smallest) is timed by that one call
	 * and skipped on the later shapes unless --slow. */
	bool ref = !strncmp(r->impl[P_DWT], "ref", 3);
	r->diag = !ref || opt.slow;
	r->diag_single = ref;
	r->graph_bwd = r->have_graph && (!*graph_slow || opt.slow);
	if (r->have_graph && !r->graph_bwd)
		snprintf(r->note, sizeof(r->note),
			 "; graph bwd not timed: slow on attn-proj (--slow to time it)");
	check(&b, r);
	if (r->graph_single)
		*graph_slow = true;

	/* The timed units, interleaved round by round so that noise from other
	 * processes hits every method alike. Forward passes are timed repeated
	 * (as bare is), backward passes each after its forward (kept: t[1]). */
	struct unit {
		enum unit_kind k;
		int i, slot, part;
		long iters;
	} u[N_PROD + 3 + 4];
	int nu = 0;
	for (int i = 0; i < N_PROD; i++)
		if (i != P_DWT || (r->diag && !r->diag_single))
			u[nu++] = (struct unit){ U_BARE, i, T_BARE + i, 0, 0 };
	for (int i = 0; i < 3; i++)
		u[nu++] = (struct unit){ U_RUN, i, T_RUN + i, 0, 0 };
	if (r->have_graph) {
		u[nu++] = (struct unit){ U_GRAPH_FWD, 0, T_GRAPH_F, 0, 0 };
		if (r->graph_bwd && !r->graph_single)
			u[nu++] = (struct unit){ U_GRAPH, 0, T_GRAPH_B, 1, 0 };
		u[nu++] = (struct unit){ U_LOSS_FWD, 0, T_LOSS_F, 0, 0 };
		u[nu++] = (struct unit){ U_LOSS, 0, T_LOSS_B, 1, 0 };
	}
	for (int j = 0; j < nu; j++) {        /* warm up, then size a round */
		double t[2] = { 0, 0 };
		unit_call(&b, u[j].k, u[j].i, t);
		unit_call(&b, u[j].k, u[j].i, t);
		t[0] = t[1] = 0;
		unit_call(&b, u[j].k, u[j].i, t);
		double per_round = opt.case_s / opt.rounds, one = t[0] + t[1];
		u[j].iters = one > 0 ? (long)ceil(per_round / one) : 1;
		if (u[j].iters < 1)
			u[j].iters = 1;
	}
	double cpu0 = cpu_seconds(), wall0 = now();
	for (int round = 0; round < opt.rounds; round++) {
		for (int j = 0; j < nu; j++) {
			double t[2] = { 0, 0 };
			for (long it = 0; it < u[j].iters; it++)
				unit_call(&b, u[j].k, u[j].i, t);
			r->t[u[j].slot][round] = t[u[j].part] / (double)u[j].iters;
		}
	}
	noise_cpu += cpu_seconds() - cpu0;
	noise_wall += now() - wall0;

	for (int i = 0; i < N_PROD; i++)
		bare_destroy(&b.bare[i]);
	fw_graph_free(b.graph);
	fw_graph_free(b.lgraph);
	if (b.ctx)
		fw_ctx_free(b.ctx);
	if (b.lctx)
		fw_ctx_free(b.lctx);
	free(b.x); free(b.w); free(b.dy); free(b.y); free(b.dx); free(b.dw); free(b.dwt);
}

/* --- report ------------------------------------------------------------------------------ */

/* Per-round combinations of timed slots. */
static void combine(const struct result *r, const int *slots, int n, int sign_from, double *out)
{
	for (int round = 0; round < opt.rounds; round++) {
		double t = 0;
		for (int j = 0; j < n; j++)
			t += (j >= sign_from ? -1 : 1) * r->t[slots[j]][round];
		out[round] = t;
	}
}

/* Overhead %: median time against median time (as the GFLOP/s columns). */
static double med_ratio(const double *a, const double *b)
{
	return (median(a, opt.rounds) / median(b, opt.rounds) - 1.0) * 100.0;
}

struct summary {
	bool have;
	double peak;
	double up_fwd_run, up_fwd_graph, up_worst_run;   /* mlp-up GF/s */
	double max_ovh_run, max_ovh_graph, max_ovh_net;
	char where_run[48], where_graph[48], where_net[48];
	double t_bare, t_run, t_graph;                    /* sums over shapes, fwd + bwd */
	double worst_dwt;                                 /* max t(dW^T) / t(dW) */
	const char *worst_dwt_shape;
	bool failed_check, missing_graph, graph_bwd_partial;
};

static void print_dtype(enum fw_dtype dt, const struct result *res, double peak,
			const char *peak_name, struct summary *sm)
{
	const char *dn = fw_dtype_name(dt);
	printf("\n== %s: X, W, dY in %s; Y, dX, dW in f32. %%pk = %% of the %s peak (%.1f GFLOP/s)\n",
	       dn, dn, peak_name, peak);
	printf("%-22s %-8s %-7s %-5s | %-7s %-5s %-7s | %-7s %-5s %-7s %-7s | %s\n",
	       "product", "bare ms", "GFLOP/s", "%pk", "run", "%pk", "ovh%", "graph", "%pk",
	       "ovh%", "net%", "oneDNN impl (bare)");
	memset(sm, 0, sizeof(*sm));
	sm->have = true;
	sm->peak = peak;
	sm->max_ovh_run = sm->max_ovh_graph = sm->max_ovh_net = -1e9;
	for (int si = 0; si < N_SHAPES; si++) {
		const struct shape *s = &shapes[si];
		const struct result *r = &res[si];
		double flop = 2.0 * (double)s->M * (double)s->N * (double)s->K;
		printf("-- %s: M=%lld K=%lld N=%lld (%.2f GFLOP a product); %s%s\n", s->name,
		       (long long)s->M, (long long)s->K, (long long)s->N, flop * 1e-9, r->check,
		       r->note);
		if (strncmp(r->check, "check ok", 8))
			sm->failed_check = true;
		if (!r->have_graph)
			sm->missing_graph = true;
		else if (!r->graph_bwd)
			sm->graph_bwd_partial = true;
		/* Rows: fwd, dX, dW, bwd (dX + dW), diag dW^T. */
		for (int row = 0; row < 5; row++) {
			double tb[MAX_ROUNDS], tr[MAX_ROUNDS], tg[MAX_ROUNDS], tl[MAX_ROUNDS];
			double nprod = row == 3 ? 2 : 1;
			bool has_run = row < 4;
			bool has_graph = r->have_graph && (row == 0 || (row == 3 && r->graph_bwd));
			bool single = (row == 3 && has_graph && r->graph_single) ||
				      (row == 4 && r->diag_single);
			const char *label;
			int sl[2];
			if (row < 3) {
				label = prod_label[row];
				combine(r, (int[]){ T_BARE + row }, 1, 1, tb);
				combine(r, (int[]){ T_RUN + row }, 1, 1, tr);
			} else if (row == 3) {
				label = "bwd  dX + dW (2 prods)";
				combine(r, (int[]){ T_BARE + P_DX, T_BARE + P_DW }, 2, 2, tb);
				combine(r, (int[]){ T_RUN + P_DX, T_RUN + P_DW }, 2, 2, tr);
			} else {
				label = prod_label[P_DWT];
				combine(r, (int[]){ T_BARE + P_DWT }, 1, 1, tb);
			}
			if (has_graph) {
				sl[0] = row == 0 ? T_GRAPH_F : T_GRAPH_B;
				sl[1] = row == 0 ? T_LOSS_F : T_LOSS_B;
				combine(r, sl, 1, 1, tg);
				combine(r, sl, 2, 1, tl);   /* graph - loss alone */
			}
			if (row == 4 && !r->diag) {
				printf("%-22s %8s %7s %5s | %7s %5s %7s | %7s %5s %7s %7s | %s "
				       "(not timed: --slow)\n", label, "-", "", "", "", "", "", "", "",
				       "", "", r->impl[P_DWT]);
				continue;
			}
			double mb = median(tb, opt.rounds);
			double gb = nprod * flop / mb * 1e-9;
			printf("%-22s %8.3f %7.1f %5.1f |", label, mb * 1e3, gb, 100 * gb / peak);
			if (has_run) {
				double mr = median(tr, opt.rounds), gr = nprod * flop / mr * 1e-9;
				double o = med_ratio(tr, tb);
				printf(" %7.1f %5.1f %+6.1f%% |", gr, 100 * gr / peak, o);
				if (row != 3 && o > sm->max_ovh_run) {
					sm->max_ovh_run = o;
					snprintf(sm->where_run, sizeof(sm->where_run), "%s %s",
						 s->name, prod_short[row]);
				}
				if (si == 2 && row == 0)
					sm->up_fwd_run = gr;
				if (si == 2 && row < 3 && (sm->up_worst_run == 0 || gr < sm->up_worst_run))
					sm->up_worst_run = gr;
			} else {
				printf(" %7s %5s %7s |", "", "", "");
			}
			if (has_graph) {
				double mg = median(tg, opt.rounds), gg = nprod * flop / mg * 1e-9;
				double o = med_ratio(tg, tb), on = med_ratio(tl, tb);
				printf(" %7.1f %5.1f %+6.1f%% %+6.1f%% |", gg, 100 * gg / peak, o, on);
				if (o > sm->max_ovh_graph) {
					sm->max_ovh_graph = o;
					snprintf(sm->where_graph, sizeof(sm->where_graph), "%s %s",
						 s->name, row ? "bwd" : "fwd");
				}
				if (on > sm->max_ovh_net) {
					sm->max_ovh_net = on;
					snprintf(sm->where_net, sizeof(sm->where_net), "%s %s",
						 s->name, row ? "bwd" : "fwd");
				}
				if (si == 2 && row == 0)
					sm->up_fwd_graph = gg;
			} else {
				printf(" %7s %5s %7s %7s |", row == 3 && r->have_graph ? "n/t" : "",
				       "", "", "");
			}
			if (row < 3)
				printf(" %s", r->impl[row]);
			else if (row == 4)
				printf(" %s", r->impl[P_DWT]);
			if (single)
				printf(" (%s timed by one call: slow)", row == 3 ? "graph" : "bare");
			printf("\n");
			if (row == 0 || row == 3) {
				sm->t_bare += mb;
				if (has_run)
					sm->t_run += median(tr, opt.rounds);
				if (has_graph)
					sm->t_graph += median(tg, opt.rounds);
			}
			if (row == 4 && r->diag) {
				double tdw[MAX_ROUNDS];
				combine(r, (int[]){ T_BARE + P_DW }, 1, 1, tdw);
				double q = mb / median(tdw, opt.rounds);
				if (q > sm->worst_dwt) {
					sm->worst_dwt = q;
					sm->worst_dwt_shape = s->name;
				}
			}
		}
		if (r->have_graph) {
			double lf[MAX_ROUNDS], lb[MAX_ROUNDS];
			combine(r, (int[]){ T_LOSS_F }, 1, 1, lf);
			combine(r, (int[]){ T_LOSS_B }, 1, 1, lb);
			printf("%-22s fwd %.3f ms, bwd %.3f ms (subtracted in net%%)\n",
			       "   loss op alone:", median(lf, opt.rounds) * 1e3,
			       median(lb, opt.rounds) * 1e3);
		}
	}
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	parse_args(argc, argv);
	fw_set_num_threads(opt.threads ? opt.threads : omp_get_num_procs());
	int nt = omp_get_max_threads();

	const dnnl_version_t *v = dnnl_version();
	struct fw_cpu cpuf;
	fw_cpu_detect(&cpuf);
	const char *cpu = cpuf.model;
	/* The peak loops and the bf16 rows this CPU can run. */
	const bool fma512 = cpuf.avx512f, dpbf16 = cpuf.avx512f && cpuf.avx512_bf16;
	void (*fma_loop)(long) = fma512 ? fma512_loop : fma256_loop;
	const double fma_flops = fma512 ? FMA512_FLOPS_PER_ITER : FMA256_FLOPS_PER_ITER;
	const char *peak_isa = fma512 ? "AVX-512 _mm512_fmadd_ps" :
			       "AVX2 _mm256_fmadd_ps (no AVX-512 on this CPU)";
	if (opt.do_bf16 && !(cpuf.avx512_bf16 || cpuf.amx_bf16)) {
		printf("bf16: SKIPPED, this CPU has neither avx512_bf16 nor amx_bf16 (fw widens bf16 "
		       "products to f32 there; --dtype f32 measures that kernel)\n");
		opt.do_bf16 = false;
	}
	if (opt.peak_only) {
		double fma = peak_gflops(fma_loop, fma_flops, nt);
		double one = peak_gflops(fma_loop, fma_flops, 1);
		double dp = dpbf16 ? peak_gflops(dpbf16_loop, DP_FLOPS_PER_ITER, nt) : 0;
		printf("{\"threads\": %d, \"fma_gflops\": %.2f, \"fma_1t_gflops\": %.2f, "
		       "\"dpbf16_gflops\": %.2f, \"fma_isa\": \"%s\"}\n",
		       nt, fma, one, dp, fma512 ? "avx512" : "avx2");
		return 0;
	}
	fw_machine_report(stdout);
	printf("fw gemm benchmark: GPT-2 124M linears, M = B*T = 1024\n");
	printf("fw %d.%d.%d, oneDNN %d.%d.%d (%s, cpu runtime %s), %d OpenMP threads "
	       "(omp_get_max_threads), %d cores online, cpu: %s\n",
	       FW_VERSION_MAJOR, FW_VERSION_MINOR, FW_VERSION_PATCH, v->major, v->minor,
	       v->patch, v->hash, v->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" :
	       v->cpu_runtime == DNNL_RUNTIME_SEQ ? "sequential" : "other",
	       nt, omp_get_num_procs(), cpu);

	/* Ops: fw_sum when the core has it, else the bench's own sum. */
	struct fw_err err = { 0 };
	use_fw_sum = fw_op_get(FW_OP_SUM) != NULL;
	op_bench_sum = fw_op_register(&bench_sum_i, &err);
	op_grad_leaf = fw_op_register(&bench_grad_leaf_i, &err);
	if (op_bench_sum < 0 || op_grad_leaf < 0)
		die("fw_op_register", err.msg);
	printf("method: %s a case, median of %d interleaved rounds (CLOCK_MONOTONIC), after 2 "
	       "warm-up calls; graph loss = %s\n", opt.quick ? "~0.1 s" : "~0.4 s", opt.rounds,
	       use_fw_sum ? "fw_sum(Y, FW_AXIS_ALL)" :
	       "bench-local sum op (fw_sum not in this build: ops_reduce.c missing)");
	printf("columns: bare = dnnl_matmul primitive executed directly; run = fw_gemm_run; "
	       "graph = fw_graph_forward (repeated) and\n"
	       "         fw_graph_backward (bwd = dX + dW, each after a forward); ovh%% = t_fw / "
	       "t_bare - 1 (of the medians);\n"
	       "         net%% = graph ovh%% after subtracting the loss op alone (a loss-only "
	       "graph); %%pk = %% of the measured peak\n"
	       "         diag = bare oneDNN computing dW^T = X^T dY into W's row-major gradient "
	       "(a column-major destination), the descriptor fw's\n"
	       "         matmul backward builds for dW of a trans_b matmul\n");

	DNNL_CHECK(dnnl_engine_create(&bare_engine, dnnl_cpu, 0));
	DNNL_CHECK(dnnl_stream_create(&bare_stream, bare_engine, dnnl_stream_default_flags));

	/* Peaks, before and after the GEMMs: the higher of the two is used. */
	double fma0 = peak_gflops(fma_loop, fma_flops, nt);
	double fma_1t = peak_gflops(fma_loop, fma_flops, 1);
	double dp0 = dpbf16 ? peak_gflops(dpbf16_loop, DP_FLOPS_PER_ITER, nt) : 0;

	static struct result res[2][N_SHAPES];
	struct summary sum[2] = { 0 };
	enum fw_dtype dts[2] = { FW_F32, FW_BF16 };
	bool on[2] = { opt.do_f32, opt.do_bf16 };
	/* attn-proj, the smallest, first: it probes for slow paths. */
	static const int order[N_SHAPES] = { 1, 0, 2, 3 };
	for (int d = 0; d < 2; d++) {
		bool graph_slow = false;
		for (int j = 0; j < N_SHAPES && on[d]; j++)
			bench_shape(&shapes[order[j]], dts[d], &res[d][order[j]], &graph_slow);
	}

	double fma1 = peak_gflops(fma_loop, fma_flops, nt);
	double dp1 = dpbf16 ? peak_gflops(dpbf16_loop, DP_FLOPS_PER_ITER, nt) : 0;
	double fma_peak = fmax(fma0, fma1), dp_peak = fmax(dp0, dp1);
	printf("peak: FMA %s x%d chains: %.1f GFLOP/s on %d threads = %.1f GFLOP/s per core "
	       "(best of before %.1f / after %.1f; one thread alone: %.1f)\n",
	       peak_isa, fma512 ? 16 : 12, fma_peak, nt, fma_peak / nt, fma0, fma1, fma_1t);
	if (dpbf16)
		printf("peak: AVX512-BF16 _mm512_dpbf16_ps x16 chains: %.1f GFLOP/s on %d threads "
		       "= %.1f GFLOP/s per core, %.2fx the FMA peak (before %.1f / after %.1f)\n",
		       dp_peak, nt, dp_peak / nt, fma_peak > 0 ? dp_peak / fma_peak : 0, dp0, dp1);
	else
		printf("peak: no AVX512-BF16 on this CPU; bf16 %%pk uses the FMA peak\n");
	printf("peak: AMX-BF16 is not measured by these loops (bf16 %%pk is against dpbf16)\n");
	if (nt > 1 && fma_peak < 0.9 * nt * fma_1t)
		printf("peak: WARNING: %d threads reached only %.0f%% of %d x one thread: the cores "
		       "were not all free (shared machine?); %%pk is then too high\n",
		       nt, 100 * fma_peak / (nt * fma_1t), nt);
	printf("noise: the timed rounds got %.0f%% of %d cores over %.1f s (CPU time / wall / "
	       "threads); well under 100%% means other\n"
	       "       processes took CPU: GFLOP/s and %%pk are then low and ovh%% noisy; rerun\n",
	       100 * noise_cpu / (noise_wall * nt), nt, noise_wall);
	if (fma_peak <= 0)
		fma_peak = 1e-9;
	if (dp_peak <= 0)
		dp_peak = fma_peak;

	for (int d = 0; d < 2; d++)
		if (on[d])
			print_dtype(dts[d], res[d], d ? dp_peak : fma_peak,
				    d ? (dpbf16 ? "AVX512-BF16 dpbf16" : "FMA") : "FMA",
				    &sum[d]);

	printf("\n");
	for (int d = 0; d < 2; d++) {
		struct summary *sm = &sum[d];
		if (!sm->have)
			continue;
		printf("SUMMARY %s (%d threads): mlp-up 1024x3072x768 fwd: fw_gemm_run %.1f GFLOP/s "
		       "= %.1f%% of peak %.1f",
		       fw_dtype_name(dts[d]), nt, sm->up_fwd_run, 100 * sm->up_fwd_run / sm->peak,
		       sm->peak);
		if (sm->up_fwd_graph > 0)
			printf(", graph %.1f = %.1f%%", sm->up_fwd_graph,
			       100 * sm->up_fwd_graph / sm->peak);
		printf(" (slowest of its 3 products %.1f%%)", 100 * sm->up_worst_run / sm->peak);
		if (d == 0)
			printf(" [target >= 60%%: %s]",
			       100 * sm->up_fwd_run / sm->peak >= 60 ? "PASS" : "FAIL");
		printf("; max overhead vs bare: run %+.1f%% (%s)", sm->max_ovh_run, sm->where_run);
		if (!sm->missing_graph)
			printf(", graph %+.1f%% (%s), graph net of loss %+.1f%% (%s)",
			       sm->max_ovh_graph, sm->where_graph, sm->max_ovh_net, sm->where_net);
		bool ok = sm->max_ovh_run < 15 && (sm->missing_graph || sm->max_ovh_net < 15);
		printf(" [target < 15%%: %s]", ok ? "PASS" : "FAIL");
		if (d == 1 && sum[0].have)
			printf("; bf16 speedup over f32 (fwd+bwd, all shapes): bare %.2fx, run %.2fx",
			       sum[0].t_bare / sm->t_bare, sum[0].t_run / sm->t_run);
		if (d == 1 && sum[0].have && !sm->missing_graph && !sum[0].missing_graph &&
		    !sm->graph_bwd_partial && !sum[0].graph_bwd_partial)
			printf(", graph %.2fx", sum[0].t_graph / sm->t_graph);
		if (sm->worst_dwt > 0)
			printf("; diag (column-major dst) dW^T up to %.1fx the time of dW (%s)",
			       sm->worst_dwt, sm->worst_dwt_shape);
		if (sm->failed_check)
			printf("; SOME CHECKS FAILED");
		if (sm->missing_graph)
			printf("; graph not measured");
		else if (sm->graph_bwd_partial)
			printf("; graph bwd timed on some shapes only (see notes; --slow)");
		printf("\n");
	}
	fw_gemm_cache_clear();
	dnnl_stream_destroy(bare_stream);
	dnnl_engine_destroy(bare_engine);
	return 0;
}
