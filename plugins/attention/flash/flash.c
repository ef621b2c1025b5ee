/* attention/flash - fused CPU flash attention, forward and backward
 * (FlashAttention-2: Dao 2023, Algorithms 1 and 2), for MHA, GQA and MQA,
 * with ALiBi in the kernel, RoPE before it, segment masks without a dense
 * mask, key masks, T5's relative bias (trained) added per tile, and the
 * generation cache.
 *
 * Ops (registered once per process):
 *   flash.ranges  q (B, Tq, Hq, D) for its shape, then optional positions
 *                 (B, T) i32, the host's sequence bias (B, 1, T, T) or a key
 *                 mask (B, 1, 1, Tk) f32 and the cache length i32 [1] ->
 *                 (B, 3 Tq [+ Tk]) i32: for each query row the key interval
 *                 [lo, hi) it may see and its absolute position (ALiBi,
 *                 causal alignment), then the key mask. O(T), no gradient.
 *   flash.attn    q, k (B, Tk, Hkv, D), v, ranges -> one f32 buffer holding
 *                 O (B, Tq, Hq, D) followed by the logsumexp (B, Hq, Tq).
 *                 Forward: tiles of BQ queries x BK keys, online softmax
 *                 (running max m and sum l, rescaled accumulator); key tiles
 *                 outside a query tile's intervals (above the causal
 *                 diagonal, other packed examples, padding, beyond the valid
 *                 cache length) are never visited. Backward recomputes
 *                 S = scale q k^T (+ ALiBi) per tile and P = exp(S - lse):
 *                 pass 1, one task per (b, KV head, key tile), owns dK, dV of
 *                 that tile over all G query heads of the group:
 *                 dV += P^T dO, dP = dO V^T, D = rowsum(dO o O),
 *                 dS = P o (dP - D), dK += scale dS^T Q; pass 2, one task
 *                 per (b, query head, query tile), owns dQ:
 *                 dQ += scale dS K. No atomics, no (T, T) buffer: the only
 *                 extra memory is the logsumexp and per-thread tiles.
 *                 Dropout (training graphs, p4.f > 0): P's element (b, h, i, j)
 *                 is kept, times 1/(1 - p), iff fw_rng_u32(key, ((b Hq + h)
 *                 Tq + i) Tk + j) >= p 2^32 (the core dropout op's rule on
 *                 mha's (B, H, Tq, Tk) probabilities), with key = u32(seed,
 *                 2 step) << 32 | u32(seed, 2 step + 1) for the spec's seed
 *                 (p5, p6) and the graph step: the backward regenerates the
 *                 mask per tile, nothing is stored. The row sums l and the
 *                 logsumexp are of the undropped P; O = (P o Z) V / l,
 *                 dV += (P o Z)^T dO, dS = P o (Z o dO V^T - D).
 *   flash.out     view of the first B*Tq*Hq*D elements: O (B, Tq, Hq, D).
 * RoPE, the cache write and ALiBi's slopes are the core's (fw_attn_rope,
 * fw_attn_cache_write, fw_alibi_slope), as for attention/mha.
 * Tasks are handed out through host->parallel_for: one item per workspace
 * slot (threads at plan time), each pulling task numbers from an atomic
 * counter, biggest tiles first.
 */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "fw/halfrow.h"
#include "fw/plugin.h"

struct flash {
	const struct fw_host *host;
	int bq, bk;
};

static const struct fw_host *g_host;
static int g_ranges_op = -1, g_attn_op = -1, g_out_op = -1;

#define MAX_SLOTS 256

/* --- ranges ----------------------------------------------------------------------------
 *
 * src0 q (shape only), then by p0.i bits: 1 positions (B, T) i32, 2 bias
 * (B, 1, T, T) f32, 4 cache length i32 [1] or per-row slots (B, Tq), in that
 * order. p1.i causal, p2.i Tk. Out (B, Tq, 3) i32: lo, hi, qpos. Query i
 * sits at qpos = i + len or slots[b, i] (cache) or i + Tk - Tq (the causal
 * mask's alignment, as mha's). Keys visible: [0, Tk), or [0, len + Tq) with
 * a cache, [0, qpos] with slots; with a bias, the row's
 * interval of zeros (its example): from the positions in O(1) per row
 * (start = i - pos[i], checked against the bias at the interval's edges),
 * else by scanning the row; a row whose diagonal is -inf (padding) sees
 * nothing. Causal: hi <= qpos + 1. RG_KEYS (in the bias's place): a key
 * mask (B, 1, 1, Tk), padding of keys for every query (T5's encoder and
 * cross-attention): each row's interval shrinks to the first and last
 * visible key, and the mask's values follow the triples, B rows of
 * 3 Tq + Tk i32 (the floats' bits), for the kernel to add. Out (B, 3 Tq
 * [+ Tk]) i32. */
enum { RG_POS = 1, RG_BIAS = 2, RG_LEN = 4, RG_KEYS = 8 };

static enum fw_status ranges_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *q = out->src[0];
	int f = out->params[0].i, k = 1;
	int64_t B = q->ne[0], Tq = q->ne[1];
	if (f & RG_POS) {
		const struct fw_tensor *p = out->src[k++];
		if (!p || p->dtype != FW_I32 || p->ndim != 2 || p->ne[0] != B || p->ne[1] != Tq)
			return fw_errorf(err, FW_ERR_SHAPE, "flash.ranges: positions must be i32 "
					 "(B, T) of q");
	}
	if (f & RG_KEYS) {
		const struct fw_tensor *b = out->src[k++];
		if (!b || b->dtype != FW_F32 || b->ndim != 4 || b->ne[0] != B || b->ne[1] != 1 ||
		    b->ne[2] != 1 || b->ne[3] != out->params[2].i)
			return fw_errorf(err, FW_ERR_SHAPE, "flash.ranges: the key mask must be f32 "
					 "(B, 1, 1, Tk)");
	} else if (f & RG_BIAS) {
		const struct fw_tensor *b = out->src[k++];
		if (!b || b->dtype != FW_F32 || b->ndim != 4 || b->ne[0] != B || b->ne[1] != 1 ||
		    b->ne[2] != Tq || b->ne[3] != Tq || out->params[2].i != Tq)
			return fw_errorf(err, FW_ERR_SHAPE, "flash.ranges: the sequence bias must be "
					 "f32 (B, 1, T, T) with as many keys as queries");
	}
	if (f & RG_LEN) {
		const struct fw_tensor *l = out->src[k++];
		if (!l || l->dtype != FW_I32 || !fw_is_contiguous(l) ||
		    (l->ndim == 2 ? l->ne[0] != B || l->ne[1] != Tq : fw_nelem(l) != 1))
			return fw_errorf(err, FW_ERR_SHAPE, "flash.ranges: the cache length must be "
					 "i32 [1] or per-row slots (B, Tq)");
	}
	out->dtype = FW_I32;
	out->ndim = 2;
	out->ne[0] = B;
	out->ne[1] = 3 * Tq + (f & RG_KEYS ? out->params[2].i : 0);
	return FW_OK;
}

static bool seen(const float *row, int64_t s, int64_t j)
{
	return row[j * s] == 0.0f;
}

static void ranges_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	const struct fw_tensor *q = out->src[0], *pos = NULL, *bias = NULL, *len = NULL;
	const struct fw_tensor *keys = NULL;
	int f = out->params[0].i, k = 1;
	bool causal = out->params[1].i != 0;
	if (f & RG_POS)
		pos = out->src[k++];
	if (f & RG_KEYS)
		keys = out->src[k++];
	else if (f & RG_BIAS)
		bias = out->src[k++];
	if (f & RG_LEN)
		len = out->src[k++];
	int64_t B = q->ne[0], Tq = q->ne[1], Tk = out->params[2].i;
	int64_t off = len ? fw_i32(len)[0] : Tk - Tq;
	int64_t valid = len ? off + Tq : Tk;
	if (valid > Tk)
		valid = Tk;
	if (valid < 0)
		valid = 0;
	int32_t *rg = fw_i32(out);
	const int32_t *slots = len && len->ndim == 2 ? fw_i32(len) : NULL;
	int64_t rs = out->ne[1];
	for (int64_t b = 0; b < B; b++) {
		int32_t *r = rg + b * rs;
		for (int64_t i = 0; i < Tq; i++) {
			int64_t at = slots ? slots[b * Tq + i] : i + off;
			r[3 * i] = 0;         /* per-row slots: keys [0, slot] of the row */
			r[3 * i + 1] = (int32_t)(slots ? (at < Tk ? at + 1 : Tk) : valid);
			r[3 * i + 2] = (int32_t)at;
		}
		if (!bias)
			continue;
		/* Tq == Tk (checked at build). Left edges, then right edges from
		 * the right: a row's example ends where the next row's does when
		 * both start at the same key. Each guess is checked against the
		 * bias at the interval's edges, else the row is scanned. */
		int64_t s = bias->nb[3];
		for (int64_t i = 0; i < Tq; i++) {
			const float *row = fw_f32(bias) + b * bias->nb[0] + i * bias->nb[2];
			int64_t lo = -1;
			if (!seen(row, s, i)) {            /* padding: sees nothing */
				r[3 * i] = r[3 * i + 1] = 0;
				continue;
			}
			if (pos)
				lo = i - fw_i32(pos)[b * pos->nb[0] + i * pos->nb[1]];
			if (lo < 0 || lo > i || !seen(row, s, lo) || (lo > 0 && seen(row, s, lo - 1)))
				for (lo = 0; !seen(row, s, lo); lo++)
					;
			r[3 * i] = (int32_t)lo;
		}
		for (int64_t i = Tq - 1; i >= 0; i--) {
			const float *row = fw_f32(bias) + b * bias->nb[0] + i * bias->nb[2];
			if (!seen(row, s, i))
				continue;
			int64_t hi = i + 1;
			if (i + 1 < Tq && r[3 * (i + 1)] == r[3 * i] && r[3 * (i + 1) + 1] > i + 1)
				hi = r[3 * (i + 1) + 1];
			if (!seen(row, s, hi - 1) || (hi < Tk && seen(row, s, hi)))
				for (hi = Tk; !seen(row, s, hi - 1); hi--)
					;
			r[3 * i + 1] = (int32_t)hi;
		}
	}
	for (int64_t b = 0; keys && b < B; b++) {
		const float *kr = fw_f32(keys) + b * keys->nb[0];
		int64_t s = keys->nb[3], first = Tk, last = -1;
		float *kb = (float *)(rg + b * rs + 3 * Tq);
		for (int64_t j = 0; j < Tk; j++) {
			kb[j] = kr[j * s];
			if (kb[j] != -INFINITY) {
				first = first < j ? first : j;
				last = j;
			}
		}
		for (int64_t i = 0; i < Tq; i++) {
			int32_t *r = rg + b * rs + 3 * i;
			r[0] = r[0] > first ? r[0] : (int32_t)first;
			r[1] = r[1] < last + 1 ? r[1] : (int32_t)(last + 1);
		}
	}
	for (int64_t b = 0; b < B; b++)
		for (int64_t i = 0; i < Tq; i++) {
			int32_t *r = rg + b * rs + 3 * i;
			if (causal && r[1] > r[2] + 1)
				r[1] = r[2] + 1;
			if (r[1] < r[0])
				r[1] = r[0];
		}
}

static const struct fw_op_i ranges_op = {
	.size = sizeof(struct fw_op_i),
	.name = "flash.ranges",
	.flags = FW_OPF_STRIDED,
	.infer = ranges_infer,
	.forward = ranges_forward,
};

/* --- the fused kernel ------------------------------------------------------------------
 *
 * flash.attn: src q (B, Tq, Hq, D), k, v (B, Tk, Hkv, D), any strides;
 * ranges (B, 3 Tq [+ Tk]) i32. p0.f scale, p1.i ALiBi, p2.i BQ, p3.i BK,
 * p4.f dropout, p5, p6 its seed, p7.i bits: FA_POS a relative bias, FA_KEYS
 * the ranges carry a key mask. With FA_POS the sources are q, kv (B, Tk,
 * Hkv, 2D) (k then v in each head's row), the bias (Hq, Tq, Tk) f32 (any
 * strides) and the ranges: S = scale q k^T + bias + key mask, and the
 * bias's gradient is dS summed over the batch (one dQ task per (head,
 * query tile) runs every batch row, so it owns those bias rows). Out: f32
 * [B*Tq*Hq*D + B*Hq*Tq]: O (B, Tq, Hq, D), then lse (B, Hq, Tq) (-inf for a
 * row that sees no key; its O is 0). */
enum { FA_POS = 1, FA_KEYS = 2 };

/* Vectors of 8 floats (GNU vector extensions: gcc and clang both keep them
 * in registers, AVX2 ymm at -march=x86-64-v3). */
typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

static inline v8 ld8(const float *p)
{
	v8 v;
	memcpy(&v, p, sizeof(v));
	return v;
}

static inline void st8(float *p, v8 v)
{
	memcpy(p, &v, sizeof(v));
}

static inline v8 splat(float s)
{
	return (v8){ s, s, s, s, s, s, s, s };
}

/* mask ? a : b, mask lanes all ones or zero (a vector comparison) */
static inline v8 sel(v8i mask, v8 a, v8 b)
{
	v8i ai, bi;
	memcpy(&ai, &a, sizeof(a));
	memcpy(&bi, &b, sizeof(b));
	ai = (mask & ai) | (~mask & bi);
	memcpy(&a, &ai, sizeof(a));
	return a;
}

/* exp(x) (Cephes expf: range reduction, degree-6 polynomial, about 1 ulp),
 * exactly 0 below -87 and for -inf; x above 88 is clamped. */
static inline v8 fexp8(v8 x)
{
	v8 lo = splat(-87.0f), hi = splat(88.0f);
	v8i under = x < lo;
	v8 xc = sel(under, lo, sel(x > hi, hi, x));
	v8 t = xc * 1.44269504088896341f + 0.5f;
	v8i n = __builtin_convertvector(t, v8i);             /* truncates */
	n += (v8i)(__builtin_convertvector(n, v8) > t);      /* -1: floor below 0 */
	v8 nf = __builtin_convertvector(n, v8);
	v8 r = xc - nf * 0.693359375f + nf * 2.12194440e-4f;
	v8 p = splat(1.9875691500E-4f);
	p = p * r + 1.3981999507E-3f;
	p = p * r + 8.3334519073E-3f;
	p = p * r + 4.1665795894E-2f;
	p = p * r + 1.6666665459E-1f;
	p = p * r + 5.0000001201E-1f;
	p = p * r * r + r + 1.0f;
	v8i e = (n + 127) << 23;
	v8 scale;
	memcpy(&scale, &e, sizeof(scale));
	return sel(under, splat(0.0f), p * scale);
}

struct dims {
	int64_t B, Tq, Tk, Hq, Hkv, G, D, BQ, BK, nqt, nkt;
	int64_t DB, nblk;            /* decoding (Tq = 1): keys a block, blocks a row */
	int64_t Dp, BQp, BKp;        /* padded to NR (16) */
	float scale;
	bool alibi;
	bool drop;                   /* dropout in this run (training, p > 0) */
	uint32_t drop_thr;           /* kept iff the draw >= this */
	float drop_scale;            /* 1 / (1 - p) */
	uint64_t drop_key;
	int64_t rgs;                 /* i32 a batch row of the ranges */
	bool pos, keys;              /* FA_POS, FA_KEYS */
};

#define MR 4                    /* micro-kernel rows */
#define NR 16                   /* micro-kernel columns: two AVX2 vectors */
#define UP(x, m) (((x) + (m) - 1) / (m) * (m))

static struct dims dims_of(const struct fw_tensor *out)
{
	const struct fw_tensor *q = out->src[0], *k = out->src[1];
	struct dims d = { .B = q->ne[0], .Tq = q->ne[1], .Hq = q->ne[2], .D = q->ne[3],
			  .Tk = k->ne[1], .Hkv = k->ne[2], .scale = out->params[0].f,
			  .alibi = out->params[1].i != 0, .BQ = out->params[2].i,
			  .BK = out->params[3].i };
	d.G = d.Hq / d.Hkv;
	d.nqt = (d.Tq + d.BQ - 1) / d.BQ;
	d.nkt = (d.Tk + d.BK - 1) / d.BK;
	d.Dp = UP(d.D, NR);
	d.BQp = UP(d.BQ, NR);
	d.BKp = UP(d.BK, NR);
	d.DB = 256;
	d.nblk = d.Tq == 1 ? (d.Tk + d.DB - 1) / d.DB : 0;
	d.pos = (out->params[7].i & FA_POS) != 0;
	d.keys = (out->params[7].i & FA_KEYS) != 0;
	d.rgs = 3 * d.Tq + (d.keys ? d.Tk : 0);
	return d;
}

/* Dropout's factor for 8 probabilities with RNG counters c0 + t * stride:
 * 1/(1 - p) kept, 0 dropped. */
static inline v8 keep8(const struct dims *d, uint64_t c0, int64_t stride)
{
	float z[8];
	for (int t = 0; t < 8; t++)
		z[t] = fw_rng_u32(d->drop_key, c0 + (uint64_t)(t * stride)) >= d->drop_thr ?
		       d->drop_scale : 0.0f;
	return ld8(z);
}

/* The RNG counter of probability (b, h, i, j): its index in (B, Hq, Tq, Tk). */
static uint64_t drop_counter(const struct dims *d, int64_t b, int64_t h, int64_t i, int64_t j)
{
	return (uint64_t)(((b * d->Hq + h) * d->Tq + i) * d->Tk + j);
}

/* Floats of one thread's tiles, the most any pass uses: three BQp x Dp
 * (Q, dO, dQ or acc, some transposed), four BKp x Dp (K, V, KT, VT, dK, dV),
 * two BQp x BKp (scores, dP) and eight BQp (row statistics and intervals). */
static size_t slot_floats(const struct dims *d)
{
	size_t n = (size_t)(3 * d->BQp * d->Dp + 4 * d->BKp * d->Dp + 2 * d->BQp * d->BKp +
			    8 * d->BQp);
	size_t dec = (size_t)(d->Hq * (d->DB + d->Dp) + d->Dp);   /* task_decode */
	n = d->Tq == 1 && dec > n ? dec : n;
	return (n + 15) & ~(size_t)15;                  /* 64-byte slots */
}

/* Floats of the decoding partials (task_decode), in front of the slots. */
static size_t partial_floats(const struct dims *d)
{
	size_t n = (size_t)(d->B * d->nblk * d->Hq * (d->D + 2));
	return (n + 15) & ~(size_t)15;
}

static bool is_float(const struct fw_tensor *x)
{
	return x->dtype == FW_F32 || x->dtype == FW_BF16 || x->dtype == FW_F16;
}

static enum fw_status attn_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *q = out->src[0], *k = out->src[1], *v = out->src[2],
			       *rg = out->src[3];
	int fa = out->params[7].i;
	if (fa & FA_POS) {      /* q, kv, bias, ranges: k and v as kv's halves */
		const struct fw_tensor *pb = v;
		if (!k || !pb || q->ndim != 4 || k->ndim != 4 || !is_float(q) || !is_float(k) ||
		    k->ne[0] != q->ne[0] || k->ne[3] != 2 * q->ne[3] ||
		    k->ne[2] <= 0 || q->ne[2] % k->ne[2])
			return fw_errorf(err, FW_ERR_SHAPE, "flash.attn: q must be f32, bf16 or f16 (B, "
					 "Tq, Hq, D) and kv (B, Tk, Hkv, 2D) with Hq a multiple of Hkv");
		if (pb->dtype != FW_F32 || pb->ndim != 3 || pb->ne[0] != q->ne[2] ||
		    pb->ne[1] != q->ne[1] || pb->ne[2] != k->ne[1])
			return fw_errorf(err, FW_ERR_SHAPE, "flash.attn: the relative bias must be f32 "
					 "(Hq, Tq, Tk)");
		v = k;
	}
	if (!k || !v || !rg || q->ndim != 4 || k->ndim != 4 || v->ndim != 4 ||
	    !is_float(q) || !is_float(k) || v->dtype != k->dtype ||
	    k->ne[0] != q->ne[0] || k->ne[3] != (fa & FA_POS ? 2 : 1) * q->ne[3] ||
	    v->ne[0] != k->ne[0] ||
	    v->ne[1] != k->ne[1] || v->ne[2] != k->ne[2] || v->ne[3] != k->ne[3] ||
	    k->ne[2] <= 0 || q->ne[2] % k->ne[2])
		return fw_errorf(err, FW_ERR_SHAPE, "flash.attn: q must be f32, bf16 or f16 (B, Tq, "
				 "Hq, D) and k, v of one dtype (B, Tk, Hkv, D) with Hq a multiple "
				 "of Hkv");
	if (rg->dtype != FW_I32 || rg->ndim != 2 || rg->ne[0] != q->ne[0] ||
	    rg->ne[1] != 3 * q->ne[1] + (fa & FA_KEYS ? k->ne[1] : 0))
		return fw_errorf(err, FW_ERR_SHAPE, "flash.attn: ranges must be i32 (B, 3 Tq "
				 "[+ Tk])");
	if (out->params[2].i < 1 || out->params[3].i < 1)
		return fw_errorf(err, FW_ERR_INVALID, "flash.attn: tile sizes must be positive");
	if (!(out->params[4].f >= 0.0f && out->params[4].f < 1.0f))
		return fw_errorf(err, FW_ERR_INVALID, "flash.attn: dropout %g is not in [0, 1)",
				 (double)out->params[4].f);
	int64_t n = fw_nelem(q);
	out->dtype = FW_F32;
	out->ndim = 1;
	out->ne[0] = n + q->ne[0] * q->ne[2] * q->ne[1];
	return FW_OK;
}

static size_t attn_workspace(const struct fw_tensor *out)
{
	struct dims d = dims_of(out);
	int t = fw_get_num_threads();
	t = t < 1 ? 1 : t > MAX_SLOTS ? MAX_SLOTS : t;
	return ((size_t)t * slot_floats(&d) + partial_floats(&d)) * sizeof(float);
}

/* C[i][j] += sum_k A(i, k) B[k][j] for i < M (a multiple of MR), j < N (a
 * multiple of NR), k < K; A(i, k) = A[i * sai + k * sak]. The MR x NR
 * accumulators are vectors of 8 (GNU vector extensions, so that gcc and clang
 * both keep them in registers: AVX2 ymm at -march=x86-64-v3). */
static void mm(int64_t M, int64_t N, int64_t K, const float *A, int64_t sai, int64_t sak,
	       const float *B, int64_t ldb, float *C, int64_t ldc)
{
	for (int64_t i0 = 0; i0 < M; i0 += MR) {
		const float *a = A + i0 * sai;
		for (int64_t j0 = 0; j0 < N; j0 += NR) {
			v8 c[MR][2];
			for (int i = 0; i < MR; i++) {
				c[i][0] = ld8(C + (i0 + i) * ldc + j0);
				c[i][1] = ld8(C + (i0 + i) * ldc + j0 + 8);
			}
			for (int64_t k = 0; k < K; k++) {
				v8 b0 = ld8(B + k * ldb + j0), b1 = ld8(B + k * ldb + j0 + 8);
				for (int i = 0; i < MR; i++) {
					float s = a[i * sai + k * sak];
					v8 av = { s, s, s, s, s, s, s, s };
					c[i][0] += av * b0;
					c[i][1] += av * b1;
				}
			}
			for (int i = 0; i < MR; i++) {
				st8(C + (i0 + i) * ldc + j0, c[i][0]);
				st8(C + (i0 + i) * ldc + j0 + 8, c[i][1]);
			}
		}
	}
}

static void zero_rows(float *x, int64_t rows, int64_t cols, int64_t ld)
{
	for (int64_t r = 0; r < rows; r++)
		memset(x + r * ld, 0, sizeof(float) * (size_t)cols);
}

/* q, k and v may arrive in half precision (autocast); tiles are f32:
 * fw/halfrow.h widens what is read. */
static inline float elem(const struct fw_tensor *x, int64_t i)
{
	return fw_elem_f32(x->data, x->dtype, i);
}

static void read_row(const struct fw_tensor *x, int64_t at, int64_t es, int64_t D, float *o)
{
	fw_row_f32(x->data, x->dtype, at, es, D, o);
}

/* rows [t0, t0 + n) of head h of x (B, T, H, D), any strides -> dst[n][ld];
 * columns D..ld and rows n..np are zeroed */
static void load_rows(const struct fw_tensor *x, int64_t b, int64_t h, int64_t t0, int64_t n,
		      int64_t np, int64_t D, int64_t ld, float *dst)
{
	for (int64_t r = 0; r < n; r++) {
		float *o = dst + r * ld;
		read_row(x, b * x->nb[0] + (t0 + r) * x->nb[1] + h * x->nb[2], x->nb[3], D, o);
		memset(o + D, 0, sizeof(float) * (size_t)(ld - D));
	}
	zero_rows(dst + n * ld, np - n, ld, ld);
}

/* n rows of D elements at src + r * rs + e * es, transposed: dst[e][r]
 * (ld), columns n..np zeroed */
static void gather_t(const float *src, int64_t rs, int64_t es, int64_t n, int64_t np, int64_t D,
		     int64_t ld, float *dst)
{
	for (int64_t r = 0; r < n; r++)
		for (int64_t e = 0; e < D; e++)
			dst[e * ld + r] = src[r * rs + e * es];
	for (int64_t e = 0; e < D; e++)
		memset(dst + e * ld + n, 0, sizeof(float) * (size_t)(np - n));
}

/* rows [t0, t0 + n) of head h of x (B, T, H, D), transposed: dst[e][r] */
static void load_rows_t(const struct fw_tensor *x, int64_t b, int64_t h, int64_t t0, int64_t n,
			int64_t np, int64_t D, int64_t ld, float *dst)
{
	int64_t at = b * x->nb[0] + t0 * x->nb[1] + h * x->nb[2];
	if (x->dtype == FW_F32) {
		gather_t(fw_f32(x) + at, x->nb[1], x->nb[3], n, np, D, ld, dst);
		return;
	}
	for (int64_t r = 0; r < n; r++)
		for (int64_t e = 0; e < D; e++)
			dst[e * ld + r] = elem(x, at + r * x->nb[1] + e * x->nb[3]);
	for (int64_t e = 0; e < D; e++)
		memset(dst + e * ld + n, 0, sizeof(float) * (size_t)(np - n));
}

static inline v8i ld8i(const int32_t *p)
{
	v8i v;
	memcpy(&v, p, sizeof(v));
	return v;
}

static inline v8 max8(v8 a, v8 b)
{
	return sel(a > b, a, b);
}

/* A query tile's rows: key interval [lo, hi) and position; rows nr..np see
 * nothing. */
static void row_info(const int32_t *rg, int64_t nr, int64_t np, int32_t *lo, int32_t *hi,
		     int32_t *qp)
{
	for (int64_t r = 0; r < np; r++) {
		lo[r] = r < nr ? rg[3 * r] : 0;
		hi[r] = r < nr ? rg[3 * r + 1] : 0;
		qp[r] = r < nr ? rg[3 * r + 2] : 0;
	}
}

/* Transposed scores, St[c][r] (ld BQp) = scale k_c . q_r - slope (qpos_r - j)
 * for key j = j0 + c inside row r's interval, -inf elsewhere and for c >= nc;
 * K (nc rows of Dp, zeroed to MR), QT (D x BQp, zeroed columns), nrq a
 * multiple of NR. */
static void scores_t(const struct dims *d, const float *K, const float *QT, int64_t nc,
		     int64_t nrq, int64_t j0, const int32_t *lo, const int32_t *hi,
		     const int32_t *qp, float slope, float *St)
{
	int64_t BQp = d->BQp, ncr = UP(nc, MR);
	zero_rows(St, ncr, nrq, BQp);
	mm(ncr, nrq, d->D, K, d->Dp, 1, QT, BQp, St, BQp);
	for (int64_t c = 0; c < ncr; c++) {
		float *s = St + c * BQp;
		int32_t j = (int32_t)(j0 + c);
		for (int64_t r = 0; r < nrq; r += 8) {
			v8i ok = (ld8i(lo + r) <= j) & (ld8i(hi + r) > j);
			v8 v = d->scale * ld8(s + r) -
			       slope * __builtin_convertvector(ld8i(qp + r) - j, v8);
			st8(s + r, c < nc ? sel(ok, v, splat(-INFINITY)) : splat(-INFINITY));
		}
	}
}

/* S[r][c] (ld BKp) = scale q_r . k_c - slope (qpos_r - j) for key j = j0 + c
 * inside the row's interval, -inf outside (and for c >= nc); Q (nr x Dp,
 * rows zero-padded to MR), KT (D x BKp, columns zero-padded). */
static void scores(const struct dims *d, const float *Q, const float *KT, int64_t nr,
		   int64_t nc, int64_t j0, const int32_t *rg, float slope, float *S)
{
	int64_t BKp = d->BKp, nrp = UP(nr, MR), ncp = UP(nc, NR);
	zero_rows(S, nrp, ncp, BKp);
	mm(nrp, ncp, d->D, Q, d->Dp, 1, KT, BKp, S, BKp);
	for (int64_t r = 0; r < nr; r++) {
		float *s = S + r * BKp;
		int64_t lo = rg[3 * r] - j0, hi = rg[3 * r + 1] - j0;
		if (hi > nc)
			hi = nc;
		float qp = (float)(rg[3 * r + 2] - j0), sc = d->scale;
		for (int64_t c = 0; c < ncp; c += 8) {
			v8i ci = (v8i){ 0, 1, 2, 3, 4, 5, 6, 7 } + (int32_t)c;
			v8 v = sc * ld8(s + c) - slope * (qp - __builtin_convertvector(ci, v8));
			st8(s + c, sel((ci >= (int32_t)lo) & (ci < (int32_t)hi), v,
				       splat(-INFINITY)));
		}
	}
}

/* The key interval a query tile's rows see: [*lo, *hi), empty if none. */
static void tile_keys(const int32_t *rg, int64_t nr, int64_t *lo, int64_t *hi)
{
	*lo = INT64_MAX;
	*hi = 0;
	for (int64_t r = 0; r < nr; r++) {
		if (rg[3 * r] >= rg[3 * r + 1])
			continue;
		if (rg[3 * r] < *lo)
			*lo = rg[3 * r];
		if (rg[3 * r + 1] > *hi)
			*hi = rg[3 * r + 1];
	}
	if (*hi <= *lo)
		*lo = *hi = 0;
}

enum { PASS_FWD, PASS_DKV, PASS_DQ, PASS_DEC, PASS_DEC_SUM };

struct attn_job {
	struct fw_tensor *out;
	struct dims d;
	const struct fw_tensor *k, *v;   /* src 1, 2, or kv's halves (FA_POS) */
	struct fw_tensor *kg, *vg;       /* their gradients, or NULL */
	struct fw_tensor kv_view[4];     /* the halves of kv and of its gradient */
	const struct fw_tensor *pb;      /* the relative bias (Hq, Tq, Tk), or NULL */
	struct fw_tensor *pbg;           /* its gradient, or NULL */
	float *ws;
	float *part;                 /* decoding partials */
	size_t slot;
	int pass;
	int64_t n_tasks, next;
};

/* Row b's ranges: the triples, then (FA_KEYS) the key mask's floats. */
static const int32_t *ranges_row(const struct attn_job *j, int64_t b)
{
	return fw_i32(j->out->src[3]) + b * j->d.rgs;
}

static const float *key_mask(const struct attn_job *j, int64_t b)
{
	return j->d.keys ? (const float *)(ranges_row(j, b) + 3 * j->d.Tq) : NULL;
}

/* The relative bias and key mask of rows [r0, r0 + nr) of head h, keys
 * [j0, j0 + nc), added to a score tile: S[r * rs + c * cs]. */
static void add_bias(const struct attn_job *j, int64_t b, int64_t h, int64_t r0, int64_t nr,
		     int64_t j0, int64_t nc, float *S, int64_t rs, int64_t cs)
{
	const struct fw_tensor *pb = j->pb;
	const float *km = key_mask(j, b);
	if (!pb && !km)
		return;
	for (int64_t r = 0; r < nr; r++)
		for (int64_t c = 0; c < nc; c++) {
			float x = km ? km[j0 + c] : 0.0f;
			if (pb)
				x += fw_f32(pb)[h * pb->nb[0] + (r0 + r) * pb->nb[1] +
						(j0 + c) * pb->nb[2]];
			S[r * rs + c * cs] += x;
		}
}

/* Forward of one (b, h, query tile), on transposed scores St (keys x
 * queries): Q^T is gathered once, K and V rows are copied per key tile, and
 * the row statistics run 8 query rows a vector. */
static void task_forward(const struct attn_job *j, float *w, int64_t task)
{
	const struct dims *d = &j->d;
	const struct fw_tensor *out = j->out, *q = out->src[0], *k = j->k, *v = j->v;
	int64_t D = d->D, Dp = d->Dp, BQ = d->BQ, BK = d->BK, BKp = d->BKp, BQp = d->BQp;
	int64_t qt = d->nqt - 1 - task % d->nqt, bh = task / d->nqt;
	int64_t b = bh / d->Hq, h = bh % d->Hq, hk = h / d->G;
	int64_t r0 = qt * BQ, nr = d->Tq - r0 < BQ ? d->Tq - r0 : BQ, nrq = UP(nr, NR);
	float *QT = w, *acc = QT + Dp * BQp, *K = acc + BQp * Dp, *V = K + BKp * Dp;
	float *St = V + BKp * Dp, *m = St + BKp * BQp, *l = m + BQp, *al = l + BQp, *ms = al + BQp;
	int32_t *lo = (int32_t *)(ms + BQp), *hi = lo + BQp, *qp = hi + BQp;
	const int32_t *rg = ranges_row(j, b) + r0 * 3;
	float slope = d->alibi ? fw_alibi_slope(d->Hq, h) : 0.0f;
	int64_t klo, khi;
	tile_keys(rg, nr, &klo, &khi);
	row_info(rg, nr, nrq, lo, hi, qp);
	load_rows_t(q, b, h, r0, nr, nrq, D, BQp, QT);
	zero_rows(acc, nrq, Dp, Dp);
	for (int64_t r = 0; r < nrq; r++) {
		m[r] = -INFINITY;
		l[r] = 0.0f;
	}
	for (int64_t j0 = klo - klo % BK; j0 < khi; j0 += BK) {
		int64_t nc = d->Tk - j0 < BK ? d->Tk - j0 : BK, ncr = UP(nc, MR);
		load_rows(k, b, hk, j0, nc, ncr, D, Dp, K);
		load_rows(v, b, hk, j0, nc, nc, D, Dp, V);
		scores_t(d, K, QT, nc, nrq, j0, lo, hi, qp, slope, St);
		add_bias(j, b, h, r0, nr, j0, nc, St, 1, BQp);
		for (int64_t r = 0; r < nrq; r += 8) {
			v8 mx = splat(-INFINITY);
			for (int64_t c = 0; c < ncr; c++)
				mx = max8(mx, ld8(St + c * BQp + r));
			v8 mo = ld8(m + r), mn = max8(mo, mx);
			v8 safe = sel(mn == -INFINITY, splat(0.0f), mn);  /* rows seeing nothing yet */
			st8(m + r, mn);
			st8(ms + r, safe);
			st8(al + r, fexp8(mo - safe));
		}
		for (int64_t c = 0; c < ncr; c++)
			for (int64_t r = 0; r < nrq; r += 8)
				st8(St + c * BQp + r, fexp8(ld8(St + c * BQp + r) - ld8(ms + r)));
		for (int64_t r = 0; r < nrq; r += 8) {
			v8 sm = splat(0.0f);
			for (int64_t c = 0; c < nc; c++)
				sm += ld8(St + c * BQp + r);
			st8(l + r, ld8(al + r) * ld8(l + r) + sm);
		}
		for (int64_t c = 0; d->drop && c < nc; c++) {      /* P o Z for the values */
			uint64_t c0 = drop_counter(d, b, h, r0, j0 + c);
			for (int64_t r = 0; r < nrq; r += 8)
				st8(St + c * BQp + r,
				    ld8(St + c * BQp + r) * keep8(d, c0 + (uint64_t)(r * d->Tk), d->Tk));
		}
		for (int64_t r = 0; r < nr; r++) {
			float *a = acc + r * Dp, f = al[r];
			if (f != 1.0f)
				for (int64_t e = 0; e < Dp; e++)
					a[e] *= f;
		}
		mm(nrq, Dp, nc, St, 1, BQp, V, Dp, acc, Dp);     /* acc += P V */
	}
	float *o = fw_f32(out), *lse = o + d->B * d->Tq * d->Hq * D;
	for (int64_t r = 0; r < nr; r++) {
		float *dst = o + ((b * d->Tq + r0 + r) * d->Hq + h) * D;
		float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
		for (int64_t e = 0; e < D; e++)
			dst[e] = acc[r * Dp + e] * inv;
		lse[(b * d->Hq + h) * d->Tq + r0 + r] = l[r] > 0.0f ? m[r] + logf(l[r]) : -INFINITY;
	}
}

/* x's row t of head h in batch b (B, T, H, D), contiguous in D, or gathered
 * (a half cache: widened) into tmp. */
static const float *head_row(const struct fw_tensor *x, int64_t b, int64_t t, int64_t h,
			     int64_t D, float *tmp)
{
	int64_t at = b * x->nb[0] + t * x->nb[1] + h * x->nb[2];
	return fw_row_as_f32(x->data, x->dtype, at, x->nb[3], D, tmp);
}

/* Decoding (one query a row, Flash-Decoding's split over keys): task (b,
 * block) scores keys [blk DB, (blk + 1) DB) of row b's interval for every
 * query head, reading each key's row of all heads once, in order, and
 * leaves per head the block's max m, sum l and unnormalised P V (D) in the
 * partials; decode_sum then merges a row's blocks per head. The cost follows
 * the cache length, and every thread has blocks even at batch 1. */
static float *dec_partial(const struct attn_job *j, int64_t b, int64_t blk, int64_t h)
{
	const struct dims *d = &j->d;
	return j->part + ((b * d->nblk + blk) * d->Hq + h) * (d->D + 2);
}

static void task_decode(const struct attn_job *j, float *w, int64_t task)
{
	const struct dims *d = &j->d;
	const struct fw_tensor *out = j->out, *q = out->src[0], *k = j->k, *v = j->v;
	int64_t D = d->D, Dp = d->Dp, DB = d->DB, Hq = d->Hq, D8 = D - D % 8;
	int64_t b = task / d->nblk, blk = task % d->nblk;
	const int32_t *rg = ranges_row(j, b);
	int64_t a = blk * DB > rg[0] ? blk * DB : rg[0];
	int64_t e = (blk + 1) * DB < rg[1] ? (blk + 1) * DB : rg[1], qpos = rg[2];
	e = e < d->Tk ? e : d->Tk;
	int64_t n = e - a, n8 = UP(n > 0 ? n : 0, 8);
	float *S = w, *Q = S + Hq * DB, *tmp = Q + Hq * Dp;    /* S: Hq x DB, Q: Hq x Dp */
	for (int64_t h = 0; h < Hq; h++) {
		float *P = dec_partial(j, b, blk, h);
		P[0] = -INFINITY;
		P[1] = 0.0f;
		memset(P + 2, 0, sizeof(float) * (size_t)D);
		if (n > 0)
			memcpy(Q + h * Dp, head_row(q, b, 0, h, D, tmp), sizeof(float) * (size_t)D);
	}
	if (n <= 0)
		return;
	for (int64_t c = 0; c < n; c++)
		for (int64_t h = 0; h < Hq; h++) {
			const float *kr = head_row(k, b, a + c, h / d->G, D, tmp), *qv = Q + h * Dp;
			v8 dv = splat(0.0f);
			for (int64_t x = 0; x < D8; x += 8)
				dv += ld8(qv + x) * ld8(kr + x);
			float dot = 0.0f;
			for (int x = 0; x < 8; x++)
				dot += dv[x];
			for (int64_t x = D8; x < D; x++)
				dot += qv[x] * kr[x];
			float slope = d->alibi ? fw_alibi_slope(Hq, h) : 0.0f;
			S[h * DB + c] = d->scale * dot - slope * (float)(qpos - (a + c));
		}
	for (int64_t h = 0; h < Hq; h++)
		add_bias(j, b, h, 0, 1, a, n, S + h * DB, 0, 1);
	for (int64_t h = 0; h < Hq; h++) {
		float *s = S + h * DB, mx = -INFINITY, *P = dec_partial(j, b, blk, h);
		for (int64_t c = 0; c < n; c++)
			mx = s[c] > mx ? s[c] : mx;
		if (mx == -INFINITY) {          /* every key of the block masked */
			memset(s, 0, sizeof(float) * (size_t)n);
			continue;
		}
		for (int64_t c = n; c < n8; c++)
			s[c] = -INFINITY;
		v8 sum = splat(0.0f);
		for (int64_t c = 0; c < n8; c += 8) {
			v8 p = fexp8(ld8(s + c) - mx);
			st8(s + c, p);
			sum += p;
		}
		P[0] = mx;
		for (int x = 0; x < 8; x++)
			P[1] += sum[x];
	}
	for (int64_t c = 0; c < n; c++)
		for (int64_t h = 0; h < Hq; h++) {
			const float *vr = head_row(v, b, a + c, h / d->G, D, tmp);
			float *acc = dec_partial(j, b, blk, h) + 2;
			v8 pv = splat(S[h * DB + c]);
			for (int64_t x = 0; x < D8; x += 8)
				st8(acc + x, ld8(acc + x) + pv * ld8(vr + x));
			for (int64_t x = D8; x < D; x++)
				acc[x] += S[h * DB + c] * vr[x];
		}
}

/* Task (b, h): O and lse from the blocks' partials. */
static void task_decode_sum(const struct attn_job *j, int64_t task)
{
	const struct dims *d = &j->d;
	int64_t D = d->D, b = task / d->Hq, h = task % d->Hq;
	float M = -INFINITY, L = 0.0f;
	for (int64_t blk = 0; blk < d->nblk; blk++) {
		float m = dec_partial(j, b, blk, h)[0];
		M = m > M ? m : M;
	}
	float *o = fw_f32(j->out) + (b * d->Hq + h) * D, *lse = fw_f32(j->out) + d->B * d->Hq * D;
	memset(o, 0, sizeof(float) * (size_t)D);
	for (int64_t blk = 0; M > -INFINITY && blk < d->nblk; blk++) {
		const float *P = dec_partial(j, b, blk, h);
		if (P[0] == -INFINITY)
			continue;
		float f = expf(P[0] - M);
		L += f * P[1];
		for (int64_t x = 0; x < D; x++)
			o[x] += f * P[2 + x];
	}
	float inv = L > 0.0f ? 1.0f / L : 0.0f;
	for (int64_t x = 0; x < D; x++)
		o[x] *= inv;
	lse[b * d->Hq + h] = L > 0.0f ? M + logf(L) : -INFINITY;
}

/* One (query tile, key tile) step of the backward: P = exp(S - lse) into
 * S, dS = P o (dP - Dv) into dP, with dP = dO V^T. Q, dO (nr x Dp), KT, VT
 * (D x BKp). Columns >= nc of P and dS are 0. With dropout (c0: the RNG
 * counter of the tile's first row and key) S holds P o Z and dS = P o (Z o
 * dP - Dv). */
static void tile_ds(const struct attn_job *j, int64_t b, int64_t h, int64_t r0,
		    const float *Q, const float *dO, const float *KT, const float *VT,
		    const float *lse, const float *Dv, int64_t nr, int64_t nc, int64_t j0,
		    const int32_t *rg, float slope, uint64_t c0, float *S, float *dP)
{
	const struct dims *d = &j->d;
	int64_t BKp = d->BKp, nrp = UP(nr, MR), ncp = UP(nc, NR);
	scores(d, Q, KT, nr, nc, j0, rg, slope, S);
	add_bias(j, b, h, r0, nr, j0, nc, S, BKp, 1);
	zero_rows(dP, nrp, ncp, BKp);
	mm(nrp, ncp, d->D, dO, d->Dp, 1, VT, BKp, dP, BKp);
	for (int64_t r = 0; r < nrp; r++) {
		float *s = S + r * BKp, *dp = dP + r * BKp, L = r < nr ? lse[r] : -INFINITY;
		if (L == -INFINITY) {
			memset(s, 0, sizeof(float) * (size_t)ncp);
			memset(dp, 0, sizeof(float) * (size_t)ncp);
			continue;
		}
		float dv = Dv[r];
		for (int64_t c = 0; c < ncp; c += 8) {
			v8 p = fexp8(ld8(s + c) - L);
			v8 z = d->drop ? keep8(d, c0 + (uint64_t)(r * d->Tk + c), 1) : splat(1.0f);
			st8(s + c, p * z);
			st8(dp + c, p * (z * ld8(dp + c) - dv));
		}
	}
}

/* Q, dO (padded), lse and Dv = rowsum(dO o O) of rows [r0, r0 + nr) of head h. */
static void load_query_side(const struct attn_job *j, int64_t b, int64_t h, int64_t r0,
			    int64_t nr, float *Q, float *dO, float *lse, float *Dv)
{
	const struct dims *d = &j->d;
	const struct fw_tensor *out = j->out;
	int64_t D = d->D, Dp = d->Dp, nrp = UP(nr, MR);
	const float *o = fw_f32(out), *go = fw_f32(out->grad);
	const float *ls = o + d->B * d->Tq * d->Hq * D + (b * d->Hq + h) * d->Tq + r0;
	load_rows(out->src[0], b, h, r0, nr, nrp, D, Dp, Q);
	for (int64_t r = 0; r < nr; r++) {
		int64_t at = ((b * d->Tq + r0 + r) * d->Hq + h) * D;
		float acc = 0.0f;
		memcpy(dO + r * Dp, go + at, sizeof(float) * (size_t)D);
		memset(dO + r * Dp + D, 0, sizeof(float) * (size_t)(Dp - D));
		for (int64_t e = 0; e < D; e++)
			acc += go[at + e] * o[at + e];
		Dv[r] = acc;
		lse[r] = ls[r];
	}
	zero_rows(dO + nr * Dp, nrp - nr, Dp, Dp);
}

/* add n rows x[n][ld] * s into head h of g (contiguous (B, T, H, D)) */
static void add_rows(struct fw_tensor *g, int64_t b, int64_t h, int64_t t0, int64_t n,
		     int64_t D, const float *x, int64_t ld, float s)
{
	for (int64_t r = 0; r < n; r++) {
		float *dst = fw_f32(g) + b * g->nb[0] + (t0 + r) * g->nb[1] + h * g->nb[2];
		for (int64_t e = 0; e < D; e++)
			dst[e * g->nb[3]] += s * x[r * ld + e];
	}
}

static void task_dkv(const struct attn_job *j, float *w, int64_t task)
{
	const struct dims *d = &j->d;
	const struct fw_tensor *k = j->k, *v = j->v;
	int64_t D = d->D, Dp = d->Dp, BQ = d->BQ, BK = d->BK, BKp = d->BKp, BQp = d->BQp;
	int64_t kt = task % d->nkt, bh = task / d->nkt;
	int64_t b = bh / d->Hkv, hk = bh % d->Hkv;
	int64_t j0 = kt * BK, nc = d->Tk - j0 < BK ? d->Tk - j0 : BK, ncp = UP(nc, NR);
	int64_t ncr = UP(nc, MR);
	float *Q = w, *dO = Q + BQp * Dp, *KT = dO + 2 * BQp * Dp, *VT = KT + BKp * Dp;
	float *dK = VT + BKp * Dp, *dV = dK + BKp * Dp, *S = dV + BKp * Dp, *dP = S + BQp * BKp;
	float *lse = dP + BQp * BKp, *Dv = lse + BQp;
	load_rows_t(k, b, hk, j0, nc, ncp, D, BKp, KT);
	load_rows_t(v, b, hk, j0, nc, ncp, D, BKp, VT);
	zero_rows(dK, ncr, Dp, Dp);
	zero_rows(dV, ncr, Dp, Dp);
	bool any = false;
	for (int64_t h = hk * d->G; h < (hk + 1) * d->G; h++) {
		float slope = d->alibi ? fw_alibi_slope(d->Hq, h) : 0.0f;
		for (int64_t qt = 0; qt < d->nqt; qt++) {
			int64_t r0 = qt * BQ, nr = d->Tq - r0 < BQ ? d->Tq - r0 : BQ, klo, khi;
			const int32_t *rg = ranges_row(j, b) + r0 * 3;
			tile_keys(rg, nr, &klo, &khi);
			if (khi <= j0 || klo >= j0 + nc)
				continue;
			any = true;
			load_query_side(j, b, h, r0, nr, Q, dO, lse, Dv);
			tile_ds(j, b, h, r0, Q, dO, KT, VT, lse, Dv, nr, nc, j0, rg, slope,
				drop_counter(d, b, h, r0, j0), S, dP);
			mm(ncr, Dp, nr, S, 1, BKp, dO, Dp, dV, Dp);     /* dV += P^T dO */
			mm(ncr, Dp, nr, dP, 1, BKp, Q, Dp, dK, Dp);     /* dK += dS^T Q */
		}
	}
	if (!any)
		return;
	if (j->kg)
		add_rows(j->kg, b, hk, j0, nc, D, dK, Dp, d->scale);
	if (j->vg)
		add_rows(j->vg, b, hk, j0, nc, D, dV, Dp, 1.0f);
}

/* dQ of one (b, h, query tile), on transposed scores as the forward:
 * St = K Q^T, dPt = V dO^T, dSt = Pt o (dPt - D), dQ += dS K; the
 * relative bias's gradient += dS. */
static void dq_tile(const struct attn_job *j, float *w, int64_t b, int64_t h, int64_t qt)
{
	const struct dims *d = &j->d;
	const struct fw_tensor *out = j->out, *q = out->src[0], *k = j->k, *v = j->v;
	int64_t D = d->D, Dp = d->Dp, BQ = d->BQ, BK = d->BK, BKp = d->BKp, BQp = d->BQp;
	int64_t hk = h / d->G;
	int64_t r0 = qt * BQ, nr = d->Tq - r0 < BQ ? d->Tq - r0 : BQ, nrq = UP(nr, NR), klo, khi;
	float *QT = w, *dOT = QT + Dp * BQp, *dQ = dOT + Dp * BQp, *K = dQ + BQp * Dp;
	float *V = K + BKp * Dp, *St = V + BKp * Dp, *dPt = St + BKp * BQp, *Ls = dPt + BKp * BQp;
	float *Dv = Ls + BQp;
	int32_t *lo = (int32_t *)(Dv + BQp), *hi = lo + BQp, *qp = hi + BQp;
	const int32_t *rg = ranges_row(j, b) + r0 * 3;
	float slope = d->alibi ? fw_alibi_slope(d->Hq, h) : 0.0f;
	tile_keys(rg, nr, &klo, &khi);
	if (khi <= klo)
		return;
	row_info(rg, nr, nrq, lo, hi, qp);
	const float *o = fw_f32(out), *go = fw_f32(out->grad);
	const float *ls = o + d->B * d->Tq * d->Hq * D + (b * d->Hq + h) * d->Tq + r0;
	int64_t at0 = ((b * d->Tq + r0) * d->Hq + h) * D, rs = d->Hq * D;
	load_rows_t(q, b, h, r0, nr, nrq, D, BQp, QT);
	gather_t(go + at0, rs, 1, nr, nrq, D, BQp, dOT);
	for (int64_t r = 0; r < nrq; r++) {
		float acc = 0.0f;
		for (int64_t e = 0; r < nr && e < D; e++)
			acc += go[at0 + r * rs + e] * o[at0 + r * rs + e];
		Dv[r] = acc;
		Ls[r] = r < nr && ls[r] != -INFINITY ? ls[r] : INFINITY;     /* P = 0 */
	}
	zero_rows(dQ, nrq, Dp, Dp);
	for (int64_t j0 = klo - klo % BK; j0 < khi; j0 += BK) {
		int64_t nc = d->Tk - j0 < BK ? d->Tk - j0 : BK, ncr = UP(nc, MR);
		load_rows(k, b, hk, j0, nc, ncr, D, Dp, K);
		load_rows(v, b, hk, j0, nc, ncr, D, Dp, V);
		scores_t(d, K, QT, nc, nrq, j0, lo, hi, qp, slope, St);
		add_bias(j, b, h, r0, nr, j0, nc, St, 1, BQp);
		zero_rows(dPt, ncr, nrq, BQp);
		mm(ncr, nrq, D, V, Dp, 1, dOT, BQp, dPt, BQp);          /* dPt = V dO^T */
		for (int64_t c = 0; c < ncr; c++) {
			uint64_t c0 = drop_counter(d, b, h, r0, j0 + c);
			for (int64_t r = 0; r < nrq; r += 8) {
				v8 p = fexp8(ld8(St + c * BQp + r) - ld8(Ls + r));
				v8 z = d->drop ? keep8(d, c0 + (uint64_t)(r * d->Tk), d->Tk) :
					 splat(1.0f);
				float *dp = dPt + c * BQp + r;
				st8(dp, p * (z * ld8(dp) - ld8(Dv + r)));
			}
		}
		if (j->pbg)             /* dbias[h, i, j] += dS (bias rows this task owns) */
			for (int64_t r = 0; r < nr; r++) {
				float *g = fw_f32(j->pbg) + h * j->pbg->nb[0] +
					   (r0 + r) * j->pbg->nb[1];
				for (int64_t c = 0; c < nc; c++)
					g[(j0 + c) * j->pbg->nb[2]] += dPt[c * BQp + r];
			}
		mm(nrq, Dp, nc, dPt, 1, BQp, K, Dp, dQ, Dp);            /* dQ += dS K */
	}
	if (q->grad)
		add_rows(q->grad, b, h, r0, nr, D, dQ, Dp, d->scale);
}

/* Task (b, h, query tile); with the bias's gradient, (h, query tile) over
 * every b. */
static void task_dq(const struct attn_job *j, float *w, int64_t task)
{
	const struct dims *d = &j->d;
	int64_t qt = d->nqt - 1 - task % d->nqt, bh = task / d->nqt;
	if (!j->pbg) {
		dq_tile(j, w, bh / d->Hq, bh % d->Hq, qt);
		return;
	}
	for (int64_t b = 0; b < d->B; b++)
		dq_tile(j, w, b, bh, qt);
}

static void attn_worker(void *arg, int64_t s0, int64_t s1)
{
	struct attn_job *j = arg;
	for (int64_t s = s0; s < s1; s++) {
		float *w = j->ws + (size_t)s * j->slot;
		int64_t t;
		while ((t = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED)) < j->n_tasks) {
			if (j->pass == PASS_DEC)
				task_decode(j, w, t);
			else if (j->pass == PASS_DEC_SUM)
				task_decode_sum(j, t);
			else if (j->pass == PASS_FWD)
				task_forward(j, w, t);
			else if (j->pass == PASS_DKV)
				task_dkv(j, w, t);
			else
				task_dq(j, w, t);
		}
	}
}

/* k, v and their gradients: the sources, or the halves of kv (FA_POS). */
static void set_kv(struct attn_job *j)
{
	struct fw_tensor *out = j->out, *k = out->src[1];
	if (!j->d.pos) {
		j->k = k;
		j->v = out->src[2];
		j->kg = k->grad;
		j->vg = out->src[2]->grad;
		return;
	}
	j->pb = out->src[2];
	j->pbg = out->src[2]->grad;
	for (int i = 0; i < 4; i++) {
		const struct fw_tensor *x = i < 2 ? k : k->grad;
		if (!x)
			continue;
		j->kv_view[i] = *x;
		j->kv_view[i].ne[3] = j->d.D;
		j->kv_view[i].data = (char *)x->data + (i % 2) * j->d.D * x->nb[3] *
						      (int64_t)fw_dtype_size(x->dtype);
	}
	j->k = &j->kv_view[0];
	j->v = &j->kv_view[1];
	j->kg = k->grad ? &j->kv_view[2] : NULL;
	j->vg = k->grad ? &j->kv_view[3] : NULL;
}

static void attn_run(struct fw_tensor *out, const struct fw_exec *ex, int pass)
{
	struct attn_job j = { .out = out, .d = dims_of(out), .ws = ex->ws, .pass = pass };
	float p = out->params[4].f;
	set_kv(&j);
	if (ex->training && p > 0.0f) {
		uint64_t seed = (uint64_t)(uint32_t)out->params[5].i |
				(uint64_t)(uint32_t)out->params[6].i << 32;
		double thr = (double)p * 4294967296.0;
		j.d.drop = true;
		j.d.drop_thr = thr >= 4294967295.0 ? UINT32_MAX : (uint32_t)thr;
		j.d.drop_scale = (float)(1.0 / (1.0 - (double)p));
		j.d.drop_key = (uint64_t)fw_rng_u32(seed, 2 * (uint64_t)ex->step) << 32 |
			       fw_rng_u32(seed, 2 * (uint64_t)ex->step + 1);
	}
	j.slot = slot_floats(&j.d);
	j.part = ex->ws;
	j.ws = j.part + partial_floats(&j.d);
	int64_t slots = (int64_t)((ex->ws_size / sizeof(float) - partial_floats(&j.d)) / j.slot);
	FW_ASSERT(slots >= 1 && ex->ws);       /* the planner always asks workspace() */
	bool decode = pass == PASS_FWD && j.d.Tq == 1 && !j.d.drop;   /* one query a row */
	for (int step = 0; step < (decode ? 2 : 1); step++) {
		if (decode)
			j.pass = step ? PASS_DEC_SUM : PASS_DEC;
		j.n_tasks = j.pass == PASS_DKV ? j.d.B * j.d.Hkv * j.d.nkt :
			    j.pass == PASS_DEC ? j.d.B * j.d.nblk :
			    j.pass == PASS_DEC_SUM ? j.d.B * j.d.Hq :
			    j.pass == PASS_DQ && j.pbg ? j.d.Hq * j.d.nqt :
			    j.d.B * j.d.Hq * j.d.nqt;
		j.next = 0;
		g_host->parallel_for(slots < j.n_tasks ? slots : j.n_tasks, attn_worker, &j);
	}
}

static void attn_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	attn_run(out, ex, PASS_FWD);
}

static void attn_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	bool pos = (out->params[7].i & FA_POS) != 0;
	if (out->src[1]->grad || (!pos && out->src[2]->grad))
		attn_run(out, ex, PASS_DKV);
	if (out->src[0]->grad || (pos && out->src[2]->grad))
		attn_run(out, ex, PASS_DQ);
}

static const struct fw_op_i attn_op = {
	.size = sizeof(struct fw_op_i),
	.name = "flash.attn",
	.flags = FW_OPF_STRIDED | FW_OPF_HALF,     /* reads bf16/f16 q, k, v; f32 out */
	.infer = attn_infer,
	.forward = attn_forward,
	.backward = attn_backward,
	.workspace = attn_workspace,
};

/* --- out: O as (B, Tq, Hq, D), a view of the fused buffer ------------------------------- */

static enum fw_status out_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *f = out->src[0];
	int64_t n = 1;
	out->dtype = FW_F32;
	out->ndim = 4;
	for (int i = 3; i >= 0; i--) {
		out->ne[i] = out->params[i].i;
		out->nb[i] = n;
		n *= out->ne[i];
	}
	if (f->ndim != 1 || f->dtype != FW_F32 || n > f->ne[0] || n <= 0)
		return fw_errorf(err, FW_ERR_SHAPE, "flash.out: not a flash.attn buffer");
	out->view_offset = 0;
	return FW_OK;
}

static void out_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	out->data = out->src[0]->data;
}

static void out_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	struct fw_tensor *f = out->src[0];
	if (!f->grad)
		return;
	float *dst = fw_f32(f->grad);
	const float *g = fw_f32(out->grad);
	int64_t n = fw_nelem(out);
	for (int64_t i = 0; i < n; i++)
		dst[i] += g[i];
}

static uint32_t out_saved(const struct fw_tensor *out)
{
	return 0;
}

static const struct fw_op_i out_op = {
	.size = sizeof(struct fw_op_i),
	.name = "flash.out",
	.flags = FW_OPF_VIEW,
	.infer = out_infer,
	.forward = out_forward,
	.backward = out_backward,
	.saved = out_saved,
};

/* --- attend ------------------------------------------------------------------------------ */

/* The spec's rules and what flash does not do, each one line naming the
 * layer; FW_ERR_INVALID, so fwrun exits 2 (shape mismatches: FW_ERR_SHAPE). */
static enum fw_status check_spec(const struct fw_host *h, const struct fw_model *m,
				 const struct fw_attn_spec *spec, const struct fw_tensor *q,
				 const struct fw_tensor *k, const struct fw_tensor *v,
				 struct fw_err *err)
{
	const char *n = spec->name;
	if (spec->n_head <= 0 || spec->n_kv_head <= 0 || spec->n_head % spec->n_kv_head)
		return h->errorf(err, FW_ERR_INVALID,
				 "attention/flash: %s: %d query heads are not a multiple of %d KV "
				 "heads", n, spec->n_head, spec->n_kv_head);
	if (!q || !k || !v || q->ndim != 4 || k->ndim != 4 || v->ndim != 4 ||
	    q->ne[2] != spec->n_head || k->ne[2] != spec->n_kv_head ||
	    q->ne[3] != spec->head_dim || k->ne[3] != q->ne[3] || v->ne[2] != k->ne[2] ||
	    v->ne[3] != k->ne[3] || v->ne[1] != k->ne[1] || k->ne[0] != q->ne[0])
		return h->errorf(err, FW_ERR_SHAPE,
				 "attention/flash: %s: q must be (B, T, %d, %d) and k, v (B, T, %d, %d)",
				 n, spec->n_head, spec->head_dim, spec->n_kv_head, spec->head_dim);
	if (!is_float(q) || !is_float(k) || !is_float(v))
		return h->errorf(err, FW_ERR_INVALID,
				 "attention/flash: %s: q, k, v in %s: f32, bf16 or f16 are supported",
				 n, fw_dtype_name(!is_float(q) ? q->dtype : !is_float(k) ? k->dtype :
						  v->dtype));
	if (fw_attn_check_rope(spec, q, k, "attention/flash", FW_ERR_INVALID, err) != FW_OK)
		return err->status;
	int64_t Tk = spec->cache ? spec->cache->max_len : k->ne[1];
	const struct fw_tensor *pb = spec->pos_bias;
	if (spec->pos == FW_POS_RELATIVE && (!pb || pb->dtype != FW_F32 || pb->ndim != 3 ||
					     pb->ne[0] != spec->n_head || pb->ne[1] != q->ne[1] ||
					     pb->ne[2] != Tk))
		return h->errorf(err, FW_ERR_INVALID,
				 "attention/flash: %s: the relative position bias must be f32 (%d, "
				 "%lld, %lld): (heads, queries, keys)", n, spec->n_head,
				 (long long)q->ne[1], (long long)Tk);
	if (spec->pos < FW_POS_NONE || spec->pos > FW_POS_RELATIVE)
		return h->errorf(err, FW_ERR_INVALID, "attention/flash: %s: unknown position kind %d",
				 n, (int)spec->pos);
	if (spec->mask < FW_MASK_CAUSAL || spec->mask > FW_MASK_CROSS)
		return h->errorf(err, FW_ERR_INVALID, "attention/flash: %s: unknown mask kind %d",
				 n, (int)spec->mask);
	if (!(spec->dropout >= 0.0f && spec->dropout < 1.0f))
		return h->errorf(err, FW_ERR_INVALID,
				 "attention/flash: %s: attention dropout %g is not in [0, 1)", n,
				 (double)spec->dropout);
	if (FW_HAS(spec, window) && spec->window)
		return h->errorf(err, FW_ERR_INVALID,
				 "attention/flash: %s: a sliding window (%lld) is not supported; use "
				 "attention/mha, or attention/sparse --sparse-window=%lld", n,
				 (long long)spec->window, (long long)spec->window);
	if (spec->bias && spec->cache)
		return h->errorf(err, FW_ERR_INVALID,
				 "attention/flash: %s: a sequence mask while generating with a cache "
				 "is not supported", n);
	const struct fw_tensor *sb = spec->bias;
	bool key_mask = sb && sb->ndim == 4 && sb->ne[2] == 1 && sb->ne[3] == k->ne[1];
	if (sb && !key_mask && k->ne[1] != q->ne[1])
		return h->errorf(err, FW_ERR_INVALID,
				 "attention/flash: %s: a (B, 1, Tq, Tk) sequence mask with %lld keys "
				 "for %lld queries (prepended keys) is not supported; a key mask (B, 1, "
				 "1, Tk) is", n, (long long)k->ne[1], (long long)q->ne[1]);
	if (sb && (sb->ndim != 4 || sb->dtype != FW_F32 || sb->ne[0] != q->ne[0] ||
		   sb->ne[1] != 1 || (!key_mask && (sb->ne[2] != q->ne[1] ||
						    sb->ne[3] != q->ne[1]))))
		return h->errorf(err, FW_ERR_INVALID,
				 "attention/flash: %s: the sequence mask must be f32 (B, 1, T, T) (a "
				 "segment mask) or (B, 1, 1, Tk) (a key mask); per-head or other "
				 "shapes are not supported", n);
	if (m->positions && (m->positions->dtype != FW_I32 || m->positions->ndim != 2 ||
			     m->positions->ne[0] != q->ne[0] || m->positions->ne[1] != q->ne[1]))
		return h->errorf(err, FW_ERR_SHAPE,
				 "attention/flash: %s: positions must be i32 (B, T) of q", n);
	if (k->ne[1] > INT32_MAX / 2 || (spec->cache && spec->cache->max_len > INT32_MAX / 2))
		return h->errorf(err, FW_ERR_INVALID, "attention/flash: %s: too many keys", n);
	return FW_OK;
}

static struct fw_tensor *flash_attend(void *state, struct fw_model *m,
				      const struct fw_attn_spec *spec, struct fw_tensor *q,
				      struct fw_tensor *k, struct fw_tensor *v, struct fw_err *err)
{
	struct flash *s = state;
	const struct fw_host *h = s->host;
	struct fw_ctx *ctx = m->ctx;
	struct fw_tensor **qkv[3] = { &q, &k, &v };

	/* Under --bf16/--fp16 (autocast) the projections arrive in half
	 * precision: the kernel reads them as they are (f32 tiles and
	 * accumulation). Generating, the cache write stores half k and v as
	 * they are (f32 ones, e.g. after RoPE, rounded once into the cache's
	 * dtype) and the kernel reads the cache in place. Otherwise k and v of
	 * two dtypes are cast to f32 first. With a relative bias their concat
	 * keeps the half dtype. */
	bool cast = !spec->cache && k && v && k->dtype != v->dtype;
	for (int i = 0; i < 3; i++)
		if (cast && *qkv[i] &&
		    ((*qkv[i])->dtype == FW_BF16 || (*qkv[i])->dtype == FW_F16))
			*qkv[i] = h->op(ctx, FW_OP_CAST, qkv[i], 1, &(union fw_param){ .i = FW_F32 }, 1);
	if (check_spec(h, m, spec, q, k, v, err) != FW_OK)
		return NULL;
	int64_t B = q->ne[0], Tq = q->ne[1], Hq = spec->n_head, D = spec->head_dim;
	if (spec->pos == FW_POS_ROPE) {
		q = fw_attn_rope(m, spec, q);
		k = fw_attn_rope(m, spec, k);
	}
	bool causal = spec->mask == FW_MASK_CAUSAL;
	if (spec->cache) {      /* generating: keys [0, len + Tq) of the cache */
		k = fw_attn_cache_write(m, spec, &spec->cache->k, k, "k");
		v = fw_attn_cache_write(m, spec, &spec->cache->v, v, "v");
	}
	float scale = spec->scale > 0 ? spec->scale : 1.0f / sqrtf((float)D);
	struct fw_tensor *rsrc[4] = { q };
	int nr = 1, flags = 0;
	bool key_mask = spec->bias && spec->bias->ne[2] == 1 && spec->bias->ne[3] == k->ne[1];
	bool use_pos = spec->bias && !key_mask && m->positions && !spec->cache;
	if (use_pos) {
		rsrc[nr++] = m->positions;
		flags |= RG_POS;
	}
	if (spec->bias) {
		rsrc[nr++] = spec->bias;
		flags |= key_mask ? RG_KEYS : RG_BIAS;
	}
	if (spec->cache) {
		rsrc[nr++] = spec->cache->len;
		flags |= RG_LEN;
	}
	int64_t Tk = k ? k->ne[1] : 0;
	union fw_param rp[3] = { { .i = flags }, { .i = causal }, { .i = (int32_t)Tk } };
	struct fw_tensor *rg = q && k ? h->op(ctx, g_ranges_op, rsrc, nr, rp, 3) : NULL;
	bool rel = spec->pos == FW_POS_RELATIVE;
	union fw_param ap[8] = { { .f = scale }, { .i = spec->pos == FW_POS_ALIBI },
				 { .i = s->bq }, { .i = s->bk }, { .f = spec->dropout },
				 { .i = (int32_t)(uint32_t)spec->seed },
				 { .i = (int32_t)(uint32_t)(spec->seed >> 32) },
				 { .i = (rel ? FA_POS : 0) | (key_mask ? FA_KEYS : 0) } };
	/* with a relative bias, k and v travel as one (B, Tk, Hkv, 2D) tensor:
	 * an op has four sources */
	struct fw_tensor *asrc[4] = { q, rel ? h->concat(ctx, k, v, 3) : k,
				      rel ? spec->pos_bias : v, rg };
	struct fw_tensor *f = rg && asrc[1] ? h->op(ctx, g_attn_op, asrc, 4, ap, 8) : NULL;
	union fw_param op[4] = { { .i = (int32_t)B }, { .i = (int32_t)Tq }, { .i = (int32_t)Hq },
				 { .i = (int32_t)D } };
	struct fw_tensor *y = f ? h->op(ctx, g_out_op, &f, 1, op, 4) : NULL;
	if (!y) {
		struct fw_err *e = h->ctx_err(ctx);
		return h->errorf(err, e->status ? e->status : FW_ERR_INTERNAL,
				 "attention/flash: %s: %s", spec->name, e->msg), NULL;
	}
	return y;
}

static int register_once(const struct fw_host *host, const struct fw_op_i *op, int *id,
			 struct fw_err *err)
{
	if (*id < 0)
		*id = host->op_register(op, err);
	return *id;
}

static enum fw_status flash_init(const struct fw_host *host, const struct fw_options *o,
				 void **state, struct fw_err *err)
{
	g_host = host;
	if (register_once(host, &ranges_op, &g_ranges_op, err) < 0 ||
	    register_once(host, &attn_op, &g_attn_op, err) < 0 ||
	    register_once(host, &out_op, &g_out_op, err) < 0)
		return err->status;
	struct flash *s = host->malloc(sizeof(*s));
	if (!s)
		return host->errorf(err, FW_ERR_NOMEM, "attention/flash: out of memory");
	*s = (struct flash){ .host = host, .bq = 64, .bk = 64 };
	if (o) {
		s->bq = (int)fw_opt_int(o, "flash-block-q");
		s->bk = (int)fw_opt_int(o, "flash-block-k");
	}
	*state = s;
	return FW_OK;
}

static void flash_fini(void *state)
{
	struct flash *s = state;
	if (s)
		s->host->free(s);
}

static const struct fw_option_def options[] = {
	{ "flash-block-q", FW_OPT_INT, "64", 1, 1024, NULL,
	  "query rows per tile (a task of the thread pool)" },
	{ "flash-block-k", FW_OPT_INT, "64", 1, 1024, NULL,
	  "keys per tile of the online softmax" },
};

static const struct fw_attention_i iface = {
	.size = sizeof(struct fw_attention_i),
	.attend = flash_attend,
};

static const struct fw_plugin plugin = {
	FW_PLUGIN_HEADER,
	.kind = FW_KIND_ATTENTION,
	.name = "attention/flash",
	.version = "1.0.0",
	.description = "fused flash attention (FlashAttention-2 tiles, online softmax, O(T) "
		       "memory): MHA/GQA/MQA, RoPE, ALiBi, segment masks, KV cache",
	.options = options,
	.n_options = 2,
	.iface = &iface,
	.init = flash_init,
	.fini = flash_fini,
};

FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void)
{
	return &plugin;
}
