/* ops_quant.c - NF4 weights (fw/quant.h): bitsandbytes' 4-bit NF4 blocks with
 * double-quantized absmax, and the fused dequantize-matmul op. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "fw/quant.h"
#include "kernel.h"

const float fw_nf4_code[16] = {
	-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
	-0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
	0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f,
	0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
	0.7229568362236023f, 1.0f,
};

int64_t fw_nf4_n_blocks(int64_t n)
{
	return (n + FW_NF4_BLOCK - 1) / FW_NF4_BLOCK;
}

int64_t fw_nf4_n_stats(int64_t n)
{
	return (fw_nf4_n_blocks(n) + FW_NF4_STATS_BLOCK - 1) / FW_NF4_STATS_BLOCK + 1;
}

/* torch.linspace(0.1, 1, steps) in float32 as ATen's CPU kernel computes it
 * under its AVX2 build (the one bitsandbytes' map gets on most x86 CPUs):
 * step = (end - start) / (steps - 1); below half way start + step * k, from
 * there end - step * (steps - k - 1), each one FMA; in vectors of 8 (two a
 * round, while 16 remain) the first lane so and lane j that plus j * step,
 * rounded apart; the rest one by one. */
static void torch_linspace(int64_t steps, float *out)
{
	const int64_t lanes = 8;
	float start = 0.1f, end = 1.0f, step = (end - start) / (float)(steps - 1);
	int64_t half = steps / 2, k = 0;
	for (; k <= steps - 2 * lanes; k += 2 * lanes) {
		for (int64_t v = k; v < k + 2 * lanes; v += lanes) {
			float base = v < half ? fmaf(step, (float)v, start) :
				     fmaf(-step, (float)(steps - v - 1), end);
			for (int64_t j = 0; j < lanes; j++) {
				float dj = (float)j * step;     /* no FMA: fp-contract is off here */
				out[v + j] = base + dj;
			}
		}
	}
	for (; k < steps; k++)
		out[k] = k < half ? fmaf(step, (float)k, start) :
			 fmaf(-step, (float)(steps - k - 1), end);
}

static int cmp_float(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;
	return (x > y) - (x < y);
}

void fw_nf4_dynamic_map(float map[256])
{
	int n = 0;
	for (int i = 0; i < 7; i++) {            /* max_exponent_bits 7, signed */
		int64_t items = ((int64_t)1 << i) + 1;
		float p10 = (float)pow(10.0, -6 + i), bounds[65];
		torch_linspace(items, bounds);
		for (int64_t k = 0; k + 1 < items; k++) {
			float mean = (bounds[k] + bounds[k + 1]) / 2.0f;
			map[n++] = p10 * mean;
			map[n++] = -(p10 * mean);
		}
	}
	map[n++] = 0.0f;
	map[n++] = 1.0f;
	qsort(map, 256, sizeof(float), cmp_float);
}

static float g_map8[256];
static pthread_once_t g_map8_once = PTHREAD_ONCE_INIT;

static void map8_init(void)
{
	fw_nf4_dynamic_map(g_map8);
}

static const float *map8(void)
{
	pthread_once(&g_map8_once, map8_init);
	return g_map8;
}

/* Index of the NF4 value nearest to x: how many midpoints x is above (NaN: 0). */
static unsigned nf4_index(float x)
{
	unsigned q = 0;
	for (int k = 0; k < 15; k++)
		q += x > (float)(((double)fw_nf4_code[k] + fw_nf4_code[k + 1]) / 2.0);
	return q;
}

/* Index of the nearest value of the ascending map (the left one on a tie). */
static unsigned map_index(const float *map, float x)
{
	int lo = 0, hi = 255;
	while (lo < hi) {                /* the last index with map[i] <= x, or 0 */
		int mid = (lo + hi + 1) / 2;
		if (map[mid] <= x)
			lo = mid;
		else
			hi = mid - 1;
	}
	if (lo < 255 && fabsf(x - map[lo + 1]) < fabsf(x - map[lo]))
		lo++;
	return (unsigned)lo;
}

void fw_nf4_quantize(const float *w, int64_t n, uint8_t *codes, uint8_t *qabsmax,
		     float *stats)
{
	int64_t nb = fw_nf4_n_blocks(n);
	float *absmax = malloc(sizeof(float) * (size_t)(nb + 1));
	FW_ASSERT(absmax);
	memset(codes, 0, (size_t)(n + 1) / 2);
	for (int64_t b = 0; b < nb; b++) {
		int64_t lo = b * FW_NF4_BLOCK, hi = min64(n, lo + FW_NF4_BLOCK);
		float m = 0.0f;
		for (int64_t i = lo; i < hi; i++)
			m = fmaxf(m, fabsf(w[i]));
		absmax[b] = m;
		float inv = 1.0f / m;
		for (int64_t i = lo; i < hi; i++) {
			unsigned q = nf4_index(w[i] * inv);
			codes[i / 2] |= (uint8_t)(i % 2 ? q : q << 4);
		}
	}
	fw_nf4_quantize_absmax(absmax, nb, qabsmax, stats);
	free(absmax);
}

void fw_nf4_quantize_absmax(float *absmax, int64_t nb, uint8_t *qabsmax, float *stats)
{
	/* absmax - mean, coded with the 8-bit dynamic map in blocks of 256 */
	int64_t nb2 = (nb + FW_NF4_STATS_BLOCK - 1) / FW_NF4_STATS_BLOCK;
	double sum = 0;
	for (int64_t b = 0; b < nb; b++)
		sum += absmax[b];
	const float *map = map8();
	float offset = (float)(sum / (double)nb);
	for (int64_t b = 0; b < nb; b++)
		absmax[b] -= offset;
	for (int64_t j = 0; j < nb2; j++) {
		int64_t lo = j * FW_NF4_STATS_BLOCK, hi = min64(nb, lo + FW_NF4_STATS_BLOCK);
		float m = 0.0f;
		for (int64_t b = lo; b < hi; b++)
			m = fmaxf(m, fabsf(absmax[b]));
		stats[j] = m;
		float inv = 1.0f / m;
		for (int64_t b = lo; b < hi; b++)
			qabsmax[b] = (uint8_t)map_index(map, absmax[b] * inv);
	}
	stats[nb2] = offset;
}

void fw_nf4_absmax(const uint8_t *qabsmax, const float *stats, int64_t n, int64_t b0,
		   int64_t nb, float *absmax)
{
	const float *map = map8();
	float offset = stats[fw_nf4_n_stats(n) - 1];
	/* two roundings, as bitsandbytes' dequantize_blockwise and then += offset
	 * (fp-contract is off for this file: no FMA) */
	for (int64_t b = b0; b < b0 + nb; b++) {
		float scaled = map[qabsmax[b]] * stats[b / FW_NF4_STATS_BLOCK];
		absmax[b - b0] = scaled + offset;
	}
}

void fw_nf4_dequantize(const uint8_t *codes, const uint8_t *qabsmax, const float *stats,
		       int64_t n, int64_t i0, int64_t m, float *out)
{
	int64_t i = i0, end = i0 + m;
	while (i < end) {
		int64_t b = i / FW_NF4_BLOCK, stop = min64(end, (b + 1) * FW_NF4_BLOCK);
		float a;
		fw_nf4_absmax(qabsmax, stats, n, b, 1, &a);
		for (; i < stop; i++) {
			unsigned q = i % 2 ? codes[i / 2] & 15u : codes[i / 2] >> 4;
			out[i - i0] = fw_nf4_code[q] * a;
		}
	}
}

/* --- the fused op: y = x W^T, W dequantized a tile of rows at a time ------------- */

/* params[0]: the dtype the products run in: f32, or bf16/f16 under autocast
 * (QLoRA's compute dtype). In half precision the tile is dequantized in f32
 * and rounded to the half type (as bitsandbytes' dequantize_4bit into a bf16
 * weight), x and the output gradient are rounded once per call, and the
 * products accumulate in f32 (fw_gemm: oneDNN's AVX512-BF16 / AMX kernels
 * where the CPU has them, else the operands widened to f32). A codes tensor
 * that is f32 is a dequantized weight (peft/lora's merge) used as is. */

#define TILE_ELEMS 65536   /* weights dequantized at once (256 KiB of f32) */
#define DQ_CHUNK 256       /* f32 scratch per thread on the way to a half tile */

static int64_t tile_rows(const struct fw_tensor *codes)
{
	int64_t in = codes->ne[1], r = TILE_ELEMS / in;
	return r < 1 ? 1 : r > codes->ne[0] ? codes->ne[0] : r;
}

static enum fw_dtype compute_dt(const struct fw_tensor *out)
{
	return (enum fw_dtype)out->params[0].i;
}

static bool dense_weight(const struct fw_tensor *out)
{
	return out->src[1]->dtype == FW_F32;
}

struct dq_job {
	const struct fw_tensor *codes, *qabsmax, *stats;
	int64_t row0;
	enum fw_dtype dt;
	void *dst;
};

static void dq_rows(void *arg, int64_t lo, int64_t hi)
{
	const struct dq_job *j = arg;
	int64_t in = j->codes->ne[1], n = fw_nelem(j->codes);
	const uint8_t *c = j->codes->data, *qa = j->qabsmax->data;
	const float *st = fw_f32(j->stats);
	if (j->dt == FW_F32) {
		fw_nf4_dequantize(c, qa, st, n, (j->row0 + lo) * in, (hi - lo) * in,
				  (float *)j->dst + lo * in);
		return;
	}
	uint16_t *h = (uint16_t *)j->dst + lo * in;
	float buf[DQ_CHUNK];
	for (int64_t i = 0, m = (hi - lo) * in; i < m; i += DQ_CHUNK) {
		int64_t k = min64(DQ_CHUNK, m - i);
		fw_nf4_dequantize(c, qa, st, n, (j->row0 + lo) * in + i, k, buf);
		for (int64_t e = 0; e < k; e++)
			h[i + e] = j->dt == FW_BF16 ? fw_f32_to_bf16(buf[e]) : fw_f32_to_f16(buf[e]);
	}
}

/* Rows [r0, r0 + tr) of the op's weight (fewer at the end) dequantized into
 * tile in the compute dtype; returns how many. */
static int64_t load_tile(const struct fw_tensor *out, void *tile, int64_t r0, int64_t tr)
{
	int64_t rows = min64(tr, out->src[1]->ne[0] - r0);
	struct dq_job j = { out->src[1], out->src[2], out->src[3], r0, compute_dt(out), tile };
	fw_parallel_for(rows, dq_rows, &j);
	return rows;
}

static enum fw_status nf4_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *x = out->src[0], *c = out->src[1], *qa = out->src[2],
			       *st = out->src[3];
	enum fw_dtype dt = compute_dt(out);
	if (x->dtype != FW_F32 || !fw_is_contiguous(x))
		return fw_errorf(err, FW_ERR_SHAPE, "nf4_linear: x must be contiguous f32");
	if (dt != FW_F32 && dt != FW_BF16 && dt != FW_F16)
		return fw_errorf(err, FW_ERR_SHAPE, "nf4_linear: compute dtype %s is not f32, "
				 "bf16 or f16", fw_dtype_name(dt));
	if ((c->dtype != FW_Q4 && c->dtype != FW_F32) || c->ndim != 2 ||
	    c->ne[1] != x->ne[x->ndim - 1])
		return fw_errorf(err, FW_ERR_SHAPE, "nf4_linear: the codes must be a q4 (out, %lld) "
				 "weight", (long long)x->ne[x->ndim - 1]);
	int64_t n = fw_nelem(c);
	if (qa->dtype != FW_Q4 || fw_nelem(qa) != 2 * fw_nf4_n_blocks(n) ||
	    st->dtype != FW_F32 || fw_nelem(st) != fw_nf4_n_stats(n))
		return fw_errorf(err, FW_ERR_SHAPE, "nf4_linear: the statistics of a %lld-weight "
				 "tensor are q4 [%lld] and f32 [%lld]", (long long)n,
				 (long long)(2 * fw_nf4_n_blocks(n)), (long long)fw_nf4_n_stats(n));
	out->dtype = FW_F32;
	out->ndim = x->ndim;
	memcpy(out->ne, x->ne, sizeof(out->ne));
	out->ne[out->ndim - 1] = c->ne[0];
	return FW_OK;
}

static void gemm_or_fail(const struct fw_gemm *g, const void *a, const void *b, float *c)
{
	if (fw_gemm_run(g, a, b, c) != FW_OK) {
		struct fw_err e = { 0 };
		fw_errorf(&e, FW_ERR_INTERNAL, "nf4_linear: the matrix product failed");
		fw_kernel_fail(&e);
	}
}

/* The workspace: [the tile][x or the output gradient in the half dtype]. */
static size_t tile_bytes(const struct fw_tensor *out)
{
	const struct fw_tensor *c = out->src[1];
	size_t el = compute_dt(out) == FW_F32 ? sizeof(float) : sizeof(uint16_t);
	return (el * (size_t)(tile_rows(c) * c->ne[1]) + 63) / 64 * 64;
}

/* a (M, K) f32 as the compute dtype: itself, or rounded into ws. */
static const void *operand(const struct fw_tensor *out, const float *a, int64_t n, void *ws)
{
	enum fw_dtype dt = compute_dt(out);
	if (dt == FW_F32)
		return a;
	fw_convert(ws, dt, a, FW_F32, n);
	return ws;
}

static void nf4_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	const struct fw_tensor *x = out->src[0], *c = out->src[1];
	int64_t in = c->ne[1], nout = c->ne[0], M = fw_nelem(x) / in, tr = tile_rows(c);
	enum fw_dtype dt = compute_dt(out);
	if (dense_weight(out)) {
		struct fw_gemm g = { .batch = 1, .M = M, .N = nout, .K = in, .trans_b = true,
				     .lda = in, .ldb = in, .ldc = nout, .dt_ab = FW_F32 };
		gemm_or_fail(&g, fw_f32(x), fw_f32(c), fw_f32(out));
		return;
	}
	void *tile = ex->ws;
	const void *a = operand(out, fw_f32(x), M * in, (char *)ex->ws + tile_bytes(out));
	for (int64_t r0 = 0; r0 < nout; r0 += tr) {
		int64_t rows = load_tile(out, tile, r0, tr);
		struct fw_gemm g = { .batch = 1, .M = M, .N = rows, .K = in, .trans_b = true,
				     .lda = in, .ldb = in, .ldc = nout, .dt_ab = dt };
		gemm_or_fail(&g, a, tile, fw_f32(out) + r0);
	}
}

static void nf4_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	const struct fw_tensor *x = out->src[0], *c = out->src[1];
	if (!x->grad)
		return;
	int64_t in = c->ne[1], nout = c->ne[0], M = fw_nelem(x) / in, tr = tile_rows(c);
	enum fw_dtype dt = compute_dt(out);
	if (dense_weight(out)) {
		struct fw_gemm g = { .batch = 1, .M = M, .N = in, .K = nout, .lda = nout,
				     .ldb = in, .ldc = in, .dt_ab = FW_F32, .accumulate = true };
		gemm_or_fail(&g, fw_f32(out->grad), fw_f32(c), fw_f32(x->grad));
		return;
	}
	void *tile = ex->ws;
	const void *dy = operand(out, fw_f32(out->grad), M * nout,
				 (char *)ex->ws + tile_bytes(out));
	size_t el = dt == FW_F32 ? sizeof(float) : sizeof(uint16_t);
	for (int64_t r0 = 0; r0 < nout; r0 += tr) {
		int64_t rows = load_tile(out, tile, r0, tr);
		struct fw_gemm g = { .batch = 1, .M = M, .N = in, .K = rows, .lda = nout,
				     .ldb = in, .ldc = in, .dt_ab = dt, .accumulate = true };
		gemm_or_fail(&g, (const char *)dy + (size_t)r0 * el, tile, fw_f32(x->grad));
	}
}

static size_t nf4_workspace(const struct fw_tensor *out)
{
	const struct fw_tensor *x = out->src[0], *c = out->src[1];
	if (compute_dt(out) == FW_F32)
		return tile_bytes(out);
	int64_t M = fw_nelem(x) / c->ne[1];
	return tile_bytes(out) + sizeof(uint16_t) * (size_t)(M * (c->ne[1] > c->ne[0] ?
								   c->ne[1] : c->ne[0]));
}

static uint32_t nf4_saved(const struct fw_tensor *out)
{
	(void)out;
	return 1u << 1 | 1u << 2 | 1u << 3;      /* the weight; x only for its shape */
}

static const struct fw_op_i nf4_op = {
	.size = sizeof(struct fw_op_i), .name = "nf4_linear", .infer = nf4_infer,
	.forward = nf4_forward, .backward = nf4_backward, .workspace = nf4_workspace,
	.saved = nf4_saved,
};

static int g_nf4_id = -1;
static pthread_once_t g_nf4_once = PTHREAD_ONCE_INIT;

static void nf4_register(void)
{
	struct fw_err e = { 0 };
	g_nf4_id = fw_op_register(&nf4_op, &e);
}

struct fw_tensor *fw_nf4_linear(struct fw_ctx *ctx, struct fw_tensor *x,
				struct fw_tensor *codes, struct fw_tensor *qabsmax,
				struct fw_tensor *stats)
{
	if (!x || !codes || !qabsmax || !stats)
		return NULL;
	pthread_once(&g_nf4_once, nf4_register);
	if (g_nf4_id < 0) {
		fw_errorf(fw_ctx_err(ctx), FW_ERR_INTERNAL, "nf4_linear: the op could not be "
			  "registered");
		return NULL;
	}
	if (!fw_is_contiguous(x))
		x = fw_cont(ctx, x);
	struct fw_tensor *src[4] = { x, codes, qabsmax, stats };
	union fw_param dt = { .i = (int32_t)fw_ctx_autocast(ctx) };
	return fw_op_custom(ctx, g_nf4_id, src, 4, &dt, 1);
}
