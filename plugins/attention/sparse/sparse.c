/* attention/sparse - block-sparse attention: sliding window with global
 * tokens (Longformer/Mistral), Sparse Transformer's strided and fixed
 * factorised patterns (Child et al. 2019), and BigBird (window + global +
 * seeded random blocks).
 *
 * Every pattern is a function of (query position i, key position j) that the
 * kernel never evaluates densely: for each query row, visit_row() lists the
 * key intervals [a, b) the pattern allows, and only those keys are scored.
 * Work and memory are O(T * keys per row); no (T, T) mask or score matrix
 * exists. One fused op, sparse.attn, computes
 *     y_i = sum_j softmax_j(scale q_i.k_j - alibi + bias_ij) v_j
 * over the listed keys with an online softmax (running max and sum, as
 * FlashAttention); the backward recomputes each row's scores once (for
 * its log-sum-exp) and keeps them for the gradient pass; nothing is saved
 * but the output: extra memory O(Tk + D) a thread, and in training under
 * autocast a 256 KiB tile of half k and v rows widened once (struct tile).
 *
 * Positions: with m->positions (SFT rows) each row's pattern is evaluated in
 * its own example's coordinates (position p = positions[b, i], example start
 * i - p), so a packed row gives what each example gives alone; the host's
 * bias (B, 1, T, T) is read only at the pairs computed. RoPE and the KV
 * cache write are the core's (fw_attn_rope, fw_attn_cache_write, as for
 * attention/mha); ALiBi uses the core's fw_alibi_slope and mha's alignment
 * inside the kernel. T5 (arch/encdec): its relative bias (Hq, Tq, Tk) is
 * added at the pairs computed and trains; its padding is a key mask (B, 1,
 * 1, Tk); cross-attention visits every key (a pattern over two sequences'
 * positions means nothing).
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw/halfrow.h"
#include "fw/plugin.h"

#define SPARSE_MAX_D 1024          /* head dim: per-thread row buffers live on the stack */
#define SPARSE_MAX_GLOBAL 4096     /* listed global positions */
#define SPARSE_MAX_RANDOM 64

enum pattern { PAT_WINDOW = 0, PAT_STRIDED, PAT_FIXED, PAT_BIGBIRD };
static const char *const pattern_names[] = { "window", "strided", "fixed", "bigbird", NULL };

struct sparse {
	const struct fw_host *host;
	int attn_op;
	enum pattern pat;
	int64_t window;            /* window: keys per side, the query included */
	int64_t stride;            /* strided and fixed: l */
	int64_t summary;           /* fixed: c summary columns of each block */
	int64_t block;             /* bigbird: block size */
	int64_t n_random;          /* bigbird: random key blocks per query block */
	int64_t global_blocks;     /* bigbird: the first g blocks are global */
	uint64_t seed;             /* bigbird: random blocks */
	int64_t n_global;          /* window: sorted, distinct global positions */
	int64_t *global;
};

/* Kernels run without state; the host table of the process (one fw). */
static const struct fw_host *g_host;

/* --- patterns ------------------------------------------------------------------------
 *
 * visit_row lists, in increasing order and disjoint, the key intervals
 * [a, b) that query position i may attend, 0 <= a < b <= n (n: keys of the
 * example, or of the row). Causal: every key is <= i. h is the query head,
 * layer the spec's layer (BigBird's random blocks depend on both). */
typedef void (*visit_fn)(void *arg, int64_t a, int64_t b);

static bool is_global(const struct sparse *s, int64_t i)
{
	int64_t lo = 0, hi = s->n_global;
	while (lo < hi) {
		int64_t mid = (lo + hi) / 2;
		if (s->global[mid] < i)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < s->n_global && s->global[lo] == i;
}

static uint64_t splitmix64(uint64_t x)
{
	uint64_t z = x + 0x9E3779B97F4A7C15ull;
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

/* BigBird's random key blocks of query block qb: r distinct indices of the
 * nc candidates by Floyd's sampling, each draw u_t = hash(seed, layer, head,
 * qb, t) mod (j + 1), hash = splitmix64 chained over the values (README). */
static int bigbird_random(const struct sparse *s, int layer, int64_t h, int64_t qb, int64_t nc,
			  int64_t *out)
{
	int64_t r = s->n_random;
	if (nc <= r) {
		for (int64_t t = 0; t < nc; t++)
			out[t] = t;
		return (int)nc;
	}
	int n = 0;
	for (int64_t t = 0, j = nc - r; j < nc; t++, j++) {
		uint64_t x = s->seed;
		x = splitmix64(x ^ (uint64_t)layer);
		x = splitmix64(x ^ (uint64_t)h);
		x = splitmix64(x ^ (uint64_t)qb);
		x = splitmix64(x ^ (uint64_t)t);
		int64_t u = (int64_t)(x % (uint64_t)(j + 1));
		bool seen = false;
		for (int k = 0; k < n; k++)
			seen |= out[k] == u;
		out[n++] = seen ? j : u;
	}
	return n;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

static void visit_row(const struct sparse *s, int64_t i, int64_t n, bool causal, int layer,
		      int64_t h, visit_fn fn, void *arg)
{
	int64_t hi = causal ? (i + 1 < n ? i + 1 : n) : n;    /* keys [0, hi) at most */
	switch (s->pat) {
	case PAT_WINDOW: {
		if (s->n_global && is_global(s, i)) {
			fn(arg, 0, hi);
			return;
		}
		int64_t ws = i - s->window + 1 > 0 ? i - s->window + 1 : 0;
		int64_t we = causal ? hi : (i + s->window < n ? i + s->window : n);
		int64_t g = 0;
		for (; g < s->n_global && s->global[g] < ws && s->global[g] < hi; g++)
			fn(arg, s->global[g], s->global[g] + 1);
		if (ws < we)
			fn(arg, ws, we);
		for (; g < s->n_global && s->global[g] < hi; g++)
			if (s->global[g] >= we)
				fn(arg, s->global[g], s->global[g] + 1);
		return;
	}
	case PAT_STRIDED: {
		int64_t l = s->stride, ls = i - l > 0 ? i - l : 0;
		int64_t le = causal ? hi : (i + l + 1 < n ? i + l + 1 : n);
		for (int64_t j = i % l; j < ls; j += l)
			fn(arg, j, j + 1);
		fn(arg, ls, le);
		if (!causal)
			for (int64_t j = i + 2 * l; j < n; j += l)
				fn(arg, j, j + 1);
		return;
	}
	case PAT_FIXED: {
		int64_t l = s->stride, c = s->summary, bi = i / l, nb = (n + l - 1) / l;
		for (int64_t k = 0; k < nb && (!causal || k <= bi); k++) {
			int64_t a = k == bi ? k * l : k * l + l - c;
			int64_t b = k * l + l < n ? k * l + l : n;
			if (k == bi && causal)
				b = hi;
			if (a < b)
				fn(arg, a, b);
		}
		return;
	}
	case PAT_BIGBIRD: {
		int64_t bs = s->block, qb = i / bs, nb = (n + bs - 1) / bs, g = s->global_blocks;
		if (qb < g) {
			fn(arg, 0, hi);
			return;
		}
		int64_t blocks[SPARSE_MAX_RANDOM + 3], cand[SPARSE_MAX_RANDOM], nk = 0;
		/* the window blocks [wlo, whi]: qb-1, qb, qb+1 (causal: qb-1, qb) that
		 * are not global; the random candidates are the other blocks >= g
		 * (causal: below qb-1), numbered in increasing order */
		int64_t wlo = qb - 1 > g ? qb - 1 : g;
		int64_t whi = causal ? qb : (qb + 1 < nb - 1 ? qb + 1 : nb - 1);
		int64_t nc = causal ? wlo - g : nb - g - (whi - wlo + 1);
		int nr = bigbird_random(s, layer, h, qb, nc, cand);
		for (int t = 0; t < nr; t++) {
			int64_t k = g + cand[t];
			blocks[nk++] = k >= wlo ? k + whi - wlo + 1 : k;
		}
		for (int64_t w = wlo; w <= whi; w++)
			blocks[nk++] = w;
		qsort(blocks, (size_t)nk, sizeof(blocks[0]), cmp_i64);
		if (g > 0)
			fn(arg, 0, g * bs < hi ? g * bs : hi);
		for (int64_t t = 0; t < nk; t++) {
			int64_t a = blocks[t] * bs, b = a + bs < hi ? a + bs : hi;
			if (a < b)
				fn(arg, a, b);
		}
		return;
	}
	}
}
/* --- the fused attention op ------------------------------------------------------------
 *
 * sparse.attn, p6 mode:
 *   SA_TRAIN: src0 q (B, Tq, Hq, D), src1 kv (B, Tk, Hkv, 2D) (k then v in
 *     each head's row), src2 bias (B, 1, Tq, Tk) or a key mask (B, 1, 1,
 *     Tk) f32 or NULL, src3 positions (B, Tq) i32 or NULL (then Tq == Tk),
 *     or with SP_REL the relative bias (Hq, Tq, Tk) f32.
 *   SA_DECODE: src0 q (B, Tq, Hq, D), src1 k cache and src2 v cache (B, Tk,
 *     Hkv, D), src3 len i32 [1] or per-row slots (B, Tq): query t sits at
 *     position len + t or slots[b, t], causal. With SP_REL: src1 the caches
 *     as one kv (B, Tk, Hkv, 2D), src2 the relative bias (Hq, Tq, Tk).
 * p0, p1 the plugin state (struct sparse *, low and high 32 bits), p2
 * causal, p3.f scale, p4 alibi, p5 layer, p7 bits SP_REL (a relative bias:
 * added to the scores; its gradient is dS summed over the batch, so one
 * backward task per KV head runs every batch row) and SP_DENSE (every key
 * of [0, Tk): cross-attention, where a pattern over positions of two
 * sequences means nothing). Out (B, Tq, Hq, D). Query head h uses KV head
 * h / (Hq / Hkv). Query i sits at position i + Tk - Tq (mha's alignment)
 * unless positions or a cache say otherwise. */
enum { SA_TRAIN = 0, SA_DECODE = 1 };
enum { SP_REL = 1, SP_DENSE = 2 };

/* The keys query i visits: the pattern's, or all n (SP_DENSE). */
static void visit_keys(const struct fw_tensor *out, const struct sparse *s, int64_t i,
		       int64_t n, bool causal, int layer, int64_t h, visit_fn fn, void *arg)
{
	if (out->params[7].i & SP_DENSE)
		fn(arg, 0, n);
	else
		visit_row(s, i, n, causal, layer, h, fn, arg);
}

static const struct sparse *op_state(const struct fw_tensor *out)
{
	uintptr_t lo = (uint32_t)out->params[0].i, hi = (uint32_t)out->params[1].i;
	return (const struct sparse *)(lo | (hi << 16 << 16));
}

static bool is_float(const struct fw_tensor *x)
{
	return x->dtype == FW_F32 || x->dtype == FW_BF16 || x->dtype == FW_F16;
}

static enum fw_status attn_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *q = out->src[0], *k = out->src[1], *x2 = out->src[2],
			       *x3 = out->src[3];
	int mode = out->params[6].i;
	bool rel = (out->params[7].i & SP_REL) != 0;
	const struct fw_tensor *pb = mode == SA_TRAIN ? x3 : x2;
	if (!q || !k || q->ndim != 4 || k->ndim != 4 || !is_float(q) || !is_float(k) ||
	    k->ne[0] != q->ne[0] || k->ne[2] <= 0 || q->ne[2] % k->ne[2] ||
	    q->ne[3] > SPARSE_MAX_D ||
	    k->ne[3] != (mode == SA_TRAIN || rel ? 2 : 1) * q->ne[3])
		return fw_errorf(err, FW_ERR_SHAPE, "sparse.attn: q must be f32, bf16 or f16 (B, Tq, "
				 "Hq, D) and k, v (B, Tk, Hkv, D) with Hkv dividing Hq, D <= %d",
				 SPARSE_MAX_D);
	int64_t B = q->ne[0], Tq = q->ne[1], Tk = k->ne[1];
	if (rel && (!pb || pb->dtype != FW_F32 || pb->ndim != 3 || !fw_is_contiguous(pb) ||
		    pb->ne[0] != q->ne[2] || pb->ne[1] != Tq || pb->ne[2] != Tk))
		return fw_errorf(err, FW_ERR_SHAPE, "sparse.attn: the relative bias must be f32 "
				 "(Hq, Tq, Tk)");
	if (mode == SA_TRAIN) {
		if (x2 && (x2->dtype != FW_F32 || x2->ndim != 4 || x2->ne[0] != B || x2->ne[1] != 1 ||
			   (x2->ne[2] != Tq && x2->ne[2] != 1) || x2->ne[3] != Tk ||
			   !fw_is_contiguous(x2)))
			return fw_errorf(err, FW_ERR_SHAPE, "sparse.attn: the bias must be f32 (B, 1, "
					 "Tq, Tk) or (B, 1, 1, Tk)");
		if (x3 && !rel && (x3->dtype != FW_I32 || x3->ndim != 2 || x3->ne[0] != B ||
				   x3->ne[1] != Tq || Tq != Tk))
			return fw_errorf(err, FW_ERR_SHAPE,
					 "sparse.attn: positions must be i32 (B, T) with Tq == Tk");
	} else if (!x2 || !x3 || (!rel && (x2->ndim != 4 || x2->dtype != k->dtype ||
					   memcmp(x2->ne, k->ne, sizeof(k->ne)))) ||
		   x3->dtype != FW_I32 ||
		   !fw_is_contiguous(x3) ||
		   (x3->ndim == 2 ? x3->ne[0] != B || x3->ne[1] != Tq : fw_nelem(x3) != 1)) {
		return fw_errorf(err, FW_ERR_SHAPE, "sparse.attn: decoding needs k, v caches of one "
				 "shape and dtype and the length i32 [1] or per-row slots (B, Tq)");
	}
	out->dtype = FW_F32;
	out->ndim = 4;
	for (int i = 0; i < 4; i++)
		out->ne[i] = q->ne[i];
	return FW_OK;
}

/* Training's half key and value rows widened once for the queries that
 * share them: a direct-mapped per-thread cache of 2D-float rows (k then v),
 * key j in slot j mod cap, tagged with the row's element offset in kv (so
 * it tells batch rows and KV heads apart). Rows run in (b, h, i) order and
 * neighbouring queries share most of their keys: a window widens each key
 * about once per KV head, not once per query that visits it. cap is a power
 * of two >= CHUNK, so one chunk's keys never evict each other. */
struct tile {
	float *f;                     /* (cap, 2D) */
	int64_t *tag;                 /* (cap) element offset of the cached row, or -1 */
	int64_t cap;
};

/* What one query row needs while its keys are visited. q, k and v may be
 * bf16 or f16 (autocast's projections, a half KV cache): in training k and
 * v go through the tile, elsewhere they are read in place, a row at a time
 * widened to f32 (fw/halfrow.h). */
struct row {
	const struct sparse *s;
	const float *q;               /* (D), f32 */
	const void *kd, *vd;          /* the key and value tensors' data */
	enum fw_dtype kdt, vdt;
	int64_t k0, v0;               /* elements: row j = 0 of this (b, kv head) */
	float *kt, *vt;               /* (D) each: a half row widened */
	struct tile *tile;            /* half k and v in training, or NULL */
	float *dk, *dv;               /* the gradients at row j = 0, or NULL */
	int64_t rs;                   /* elements from key j to key j + 1 */
	int64_t D;
	const float *bias;            /* (Tk) bias row, or NULL */
	const float *pb;              /* (Tk) relative bias row, or NULL */
	float *dpb;                   /* its gradient, or NULL */
	int64_t shift;                /* row index of the example's position 0 */
	int64_t ipos;                 /* the query's position in the row (ALiBi) */
	float scale, slope;
	/* forward: running max, sum and output; backward: */
	float m, l;
	float *acc;
	float *scores;                /* backward: the row's scores, kept by the first pass */
	int64_t n_scores;             /* for the second, which reads them in the same order */
	float lse, dsum;
	const float *dout;            /* (D) */
	float *dq;                    /* (D), accumulated */
};

/* 8 floats: GCC and Clang vector extensions, unaligned loads through memcpy. */
typedef float v8f __attribute__((vector_size(32)));

static inline v8f ld8(const float *p)
{
	v8f v;
	memcpy(&v, p, sizeof(v));
	return v;
}

/* 8 bf16 widened in registers (a shift), so that a bf16 key or value row
 * is read in place, without a widened copy per query. */
typedef uint16_t v8h __attribute__((vector_size(16)));
typedef uint32_t v8u __attribute__((vector_size(32)));

static inline v8f ld8_bf16(const uint16_t *p)
{
	v8h h;
	memcpy(&h, p, sizeof(h));
	v8u u = __builtin_convertvector(h, v8u) << 16;
	v8f f;
	memcpy(&f, &u, sizeof(f));
	return f;
}

/* 8 elements of b (f32, or bf16 when bf) from element d as f32, and one. */
static inline v8f ld8_as(const void *b, bool bf, int64_t d)
{
	return bf ? ld8_bf16((const uint16_t *)b + d) : ld8((const float *)b + d);
}

static inline float at_as(const void *b, bool bf, int64_t d)
{
	if (!bf)
		return ((const float *)b)[d];
	uint32_t u = (uint32_t)((const uint16_t *)b)[d] << 16;
	float f;
	memcpy(&f, &u, sizeof(f));
	return f;
}

/* a . b with b f32 or bf16 (a constant at each call: two copies, the
 * same operations in the same order, so the same bits for the same
 * values). */
static inline float dot_as(const float *a, const void *b, bool bf, int64_t n)
{
	v8f s0 = { 0 }, s1 = { 0 };
	int64_t d = 0;
	for (; d + 16 <= n; d += 16) {
		s0 += ld8(a + d) * ld8_as(b, bf, d);
		s1 += ld8(a + d + 8) * ld8_as(b, bf, d + 8);
	}
	for (; d + 8 <= n; d += 8)
		s0 += ld8(a + d) * ld8_as(b, bf, d);
	s0 += s1;
	float r = ((s0[0] + s0[1]) + (s0[2] + s0[3])) + ((s0[4] + s0[5]) + (s0[6] + s0[7]));
	for (; d < n; d++)
		r += a[d] * at_as(b, bf, d);
	return r;
}

/* The dots of a with 4 f32 rows b[0..3], each the same bits as dot(a,
 * b[k], n): the same two accumulators, then the same sum tree
 * ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)) for the 4 rows at once
 * (two pairwise-add levels and the two halves added; a + b == b + a). */
static inline void dot4(const float *a, const float *const *b, int64_t n, float *out)
{
	v8f s[4];
	int64_t d0 = n & ~(int64_t)7;
	for (int k = 0; k < 4; k++) {
		v8f s0 = { 0 }, s1 = { 0 };
		int64_t d = 0;
		for (; d + 16 <= n; d += 16) {
			s0 += ld8(a + d) * ld8(b[k] + d);
			s1 += ld8(a + d + 8) * ld8(b[k] + d + 8);
		}
		for (; d + 8 <= n; d += 8)
			s0 += ld8(a + d) * ld8(b[k] + d);
		s[k] = s0 + s1;
	}
	v8f p01 = __builtin_shufflevector(s[0], s[1], 0, 2, 8, 10, 4, 6, 12, 14) +
		  __builtin_shufflevector(s[0], s[1], 1, 3, 9, 11, 5, 7, 13, 15);
	v8f p23 = __builtin_shufflevector(s[2], s[3], 0, 2, 8, 10, 4, 6, 12, 14) +
		  __builtin_shufflevector(s[2], s[3], 1, 3, 9, 11, 5, 7, 13, 15);
	/* p01: s0's (0+1) (2+3), s1's (0+1) (2+3), s0's (4+5) (6+7), s1's ... */
	v8f q = __builtin_shufflevector(p01, p23, 0, 2, 8, 10, 4, 6, 12, 14) +
		__builtin_shufflevector(p01, p23, 1, 3, 9, 11, 5, 7, 13, 15);
	/* q: rows 0..3's (0+1)+(2+3), then their (4+5)+(6+7) */
	for (int k = 0; k < 4; k++) {
		float r = q[k] + q[k + 4];
		for (int64_t d = d0; d < n; d++)
			r += a[d] * b[k][d];
		out[k] = r;
	}
}

static inline void axpy_as(float *y, float a, const void *x, bool bf, int64_t n)
{
	for (int64_t d = 0; d < n; d++)
		y[d] += a * at_as(x, bf, d);
}

static inline float dot(const float *a, const float *b, int64_t n)
{
	return dot_as(a, b, false, n);
}

static inline void axpy(float *y, float a, const float *x, int64_t n)
{
	axpy_as(y, a, x, false, n);
}

/* Key j's k and v (2D floats) from the tile, widened on a miss. */
static inline const float *tile_row(const struct row *r, int64_t j)
{
	struct tile *t = r->tile;
	int64_t off = r->k0 + j * r->rs, slot = j & (t->cap - 1);
	float *p = t->f + slot * 2 * r->D;
	if (t->tag[slot] != off) {
		fw_row_f32(r->kd, r->kdt, off, 1, 2 * r->D, p);
		t->tag[slot] = off;
	}
	return p;
}

/* Key and value row j as f32. */
static inline const float *key_row(const struct row *r, int64_t j)
{
	if (r->tile)
		return tile_row(r, j);
	return fw_row_as_f32(r->kd, r->kdt, r->k0 + j * r->rs, 1, r->D, r->kt);
}

static inline const float *value_row(const struct row *r, int64_t j)
{
	if (r->tile)
		return tile_row(r, j) + r->D;
	return fw_row_as_f32(r->vd, r->vdt, r->v0 + j * r->rs, 1, r->D, r->vt);
}

/* bf16 k or v read in place, widened in registers (decoding's cache). */
static inline bool in_place(const struct row *r, enum fw_dtype dt)
{
	return !r->tile && dt == FW_BF16;
}

/* The score of key j from its dot with the query. */
static inline float score_of(const struct row *r, float qk, int64_t j)
{
	float sc = r->scale * qk;
	if (r->slope != 0.0f)
		sc -= r->slope * (float)(r->ipos - j);
	if (r->bias)
		sc += r->bias[j];
	if (r->pb)
		sc += r->pb[j];
	return sc;
}

/* The score of key j, whose row is kj (NULL: read it in place, bf16). */
static inline float score(const struct row *r, const float *kj, int64_t j)
{
	return score_of(r, kj ? dot(r->q, kj, r->D) :
			dot_as(r->q, (const uint16_t *)r->kd + r->k0 + j * r->rs, true, r->D), j);
}

/* Keys are scored CHUNK at a time; the running max moves once a chunk. */
#define CHUNK 32

static void fwd_visit(void *arg, int64_t a, int64_t b)
{
	struct row *r = arg;
	int64_t D = r->D;
	float sc[CHUNK];
	for (int64_t j0 = a + r->shift, end = b + r->shift; j0 < end; j0 += CHUNK) {
		int n = end - j0 < CHUNK ? (int)(end - j0) : CHUNK;
		float mx = -INFINITY;
		bool kh = in_place(r, r->kdt);
		int t = 0;
		if (r->tile || r->kdt == FW_F32)       /* rows stay put: 4 at a time */
			for (; t + 4 <= n; t += 4) {
				const float *kr[4];
				for (int u = 0; u < 4; u++)
					kr[u] = key_row(r, j0 + t + u);
				dot4(r->q, kr, D, sc + t);
				for (int u = 0; u < 4; u++)
					sc[t + u] = score_of(r, sc[t + u], j0 + t + u);
			}
		for (; t < n; t++)
			sc[t] = score(r, kh ? NULL : key_row(r, j0 + t), j0 + t);
		for (t = 0; t < n; t++)
			mx = sc[t] > mx ? sc[t] : mx;
		if (r->scores) {
			memcpy(r->scores + r->n_scores, sc, sizeof(float) * (size_t)n);
			r->n_scores += n;
		}
		if (!(mx > -INFINITY))
			continue;                 /* all masked by the bias */
		if (mx > r->m) {
			float corr = expf(r->m - mx);
			r->l *= corr;
			if (r->acc)
				for (int64_t d = 0; d < D; d++)
					r->acc[d] *= corr;
			r->m = mx;
		}
		for (int t = 0; t < n; t++) {
			if (!(sc[t] > -INFINITY))
				continue;
			float p = expf(sc[t] - r->m);
			r->l += p;
			if (r->acc && in_place(r, r->vdt))
				axpy_as(r->acc, p, (const uint16_t *)r->vd + r->v0 + (j0 + t) * r->rs,
					true, D);
			else if (r->acc)
				axpy(r->acc, p, value_row(r, j0 + t), D);
		}
	}
}

static void bwd_visit(void *arg, int64_t a, int64_t b)
{
	struct row *r = arg;
	int64_t D = r->D;
	bool kh = in_place(r, r->kdt), vh = in_place(r, r->vdt);
	for (int64_t j = a + r->shift; j < b + r->shift; j++) {
		const float *kj = kh ? NULL : key_row(r, j);
		float sc = r->scores ? r->scores[r->n_scores++] : score(r, kj, j);
		if (!(sc > -INFINITY))
			continue;
		float p = expf(sc - r->lse);
		const void *kp = kh ? (const uint16_t *)r->kd + r->k0 + j * r->rs : (const void *)kj;
		const void *vp = vh ? (const uint16_t *)r->vd + r->v0 + j * r->rs :
				      (const void *)value_row(r, j);
		float dsu = p * (dot_as(r->dout, vp, vh, D) - r->dsum), ds = dsu * r->scale;
		if (r->dpb)
			r->dpb[j] += dsu;         /* the bias enters unscaled */
		axpy_as(r->dq, ds, kp, kh, D);
		if (r->dk)
			axpy(r->dk + j * r->rs, ds, r->q, D);
		if (r->dv)
			axpy(r->dv + j * r->rs, p, r->dout, D);
	}
}

struct attn_job {
	struct fw_tensor *out;
};

/* A tile for out's half k and v in training (a thread's, freed by
 * tile_free), or an empty one (f32 or decoding: read in place; or no
 * memory: read in place too, the same values). */
static struct tile tile_new(const struct fw_tensor *out)
{
	struct tile t = { 0 };
	const struct fw_tensor *kv = out->src[1];
	if (out->params[6].i != SA_TRAIN || kv->dtype == FW_F32)
		return t;
	int64_t row = sizeof(float) * kv->ne[3], cap = CHUNK;
	while (cap < 1024 && 2 * cap * row <= (256 << 10))
		cap *= 2;                 /* 256 KiB: stays in L2 */
	t.f = g_host->malloc((size_t)(cap * row));
	t.tag = g_host->malloc(sizeof(int64_t) * (size_t)cap);
	if (!t.f || !t.tag) {
		g_host->free(t.f);
		g_host->free(t.tag);
		return (struct tile){ 0 };
	}
	for (int64_t s = 0; s < cap; s++)
		t.tag[s] = -1;
	t.cap = cap;
	return t;
}

static void tile_free(struct tile *t)
{
	g_host->free(t->f);
	g_host->free(t->tag);
}

/* The relative bias's gradient (training), or NULL. */
static const struct fw_tensor *bias_grad(const struct fw_tensor *out)
{
	bool rel = (out->params[7].i & SP_REL) && out->params[6].i == SA_TRAIN;
	return rel && out->src[3] ? out->src[3]->grad : NULL;
}

/* Sets up query row (b, i, h): everything but the pass state; buf holds
 * 3 D floats (q, a key and a value row widened). Returns the query's
 * position in its example and the example's key count in *n. */
static int64_t row_init(struct row *r, const struct fw_tensor *out, int64_t b, int64_t i,
			int64_t h, bool grads, float *buf, struct tile *tile, int64_t *n)
{
	const struct fw_tensor *q = out->src[0], *k = out->src[1];
	int mode = out->params[6].i;
	bool rel = (out->params[7].i & SP_REL) != 0;
	int64_t Tq = q->ne[1], Hq = q->ne[2], D = q->ne[3], Tk = k->ne[1], Hkv = k->ne[2];
	int64_t hk = h / (Hq / Hkv), kw = mode == SA_TRAIN || rel ? 2 * D : D;
	*r = (struct row){ .s = op_state(out), .D = D, .scale = out->params[3].f, .m = -INFINITY };
	r->q = fw_row_as_f32(q->data, q->dtype, ((b * Tq + i) * Hq + h) * D, 1, D, buf);
	r->kt = buf + D;
	r->vt = buf + 2 * D;
	r->rs = Hkv * kw;
	r->kd = r->vd = k->data;
	r->kdt = r->vdt = k->dtype;
	r->k0 = r->v0 = b * Tk * r->rs + hk * kw;
	if (mode == SA_TRAIN) {
		r->tile = tile->cap ? tile : NULL;
		r->v0 += D;
		if (grads && k->grad) {
			r->dk = fw_f32(k->grad) + b * Tk * r->rs + hk * kw;
			r->dv = r->dk + D;
		}
		const struct fw_tensor *bias = out->src[2];
		if (bias)       /* (B, 1, Tq, Tk), or a key mask (B, 1, 1, Tk) */
			r->bias = fw_f32(bias) + (b * bias->ne[2] + (bias->ne[2] > 1 ? i : 0)) * Tk;
	} else if (rel) {
		r->v0 += D;
	} else {
		r->vd = out->src[2]->data;
		r->vdt = out->src[2]->dtype;
	}
	const struct fw_tensor *pb = rel ? out->src[mode == SA_TRAIN ? 3 : 2] : NULL;
	if (pb) {
		r->pb = fw_f32(pb) + (h * Tq + i) * Tk;
		if (grads && pb->grad)
			r->dpb = fw_f32(pb->grad) + (h * Tq + i) * Tk;
	}
	const struct fw_tensor *len = out->src[3];
	int64_t off = mode == SA_DECODE ? fw_i32(len)[0] : Tk - Tq, pos = i + off;
	if (mode == SA_DECODE && len->ndim == 2)     /* per-row slots */
		pos = fw_i32(len)[b * Tq + i];
	r->ipos = pos;
	if (out->params[4].i)
		r->slope = fw_alibi_slope(Hq, h);
	*n = Tk;
	if (mode == SA_TRAIN && out->src[3] && !rel) {   /* SFT rows: the example's coordinates */
		pos = fw_i32(out->src[3])[b * Tq + i];
		if (pos < 0 || pos > i)
			pos = i;                  /* not a position in this row: the row's own */
		r->shift = i - pos;
		*n = Tk - r->shift;
	}
	return pos;
}

static void attn_fwd_rows(void *arg, int64_t r0, int64_t r1)
{
	const struct attn_job *jb = arg;
	struct fw_tensor *out = jb->out;
	int64_t Tq = out->ne[1], Hq = out->ne[2], D = out->ne[3];
	bool causal = out->params[2].i != 0;
	int layer = out->params[5].i;
	float acc[SPARSE_MAX_D], buf[3 * SPARSE_MAX_D];
	struct tile tile = tile_new(out);
	for (int64_t rr = r0; rr < r1; rr++) {
		/* rows in (b, h, i) order: neighbours share most of their keys */
		int64_t i = rr % Tq, h = (rr / Tq) % Hq, b = rr / (Hq * Tq), n;
		struct row r;
		int64_t pos = row_init(&r, out, b, i, h, false, buf, &tile, &n);
		memset(acc, 0, sizeof(float) * (size_t)D);
		r.acc = acc;
		visit_keys(out, r.s, pos, n, causal, layer, h, fwd_visit, &r);
		float *y = fw_f32(out) + ((b * Tq + i) * Hq + h) * D;
		float inv = r.l > 0 ? 1.0f / r.l : 0.0f;     /* no visible key: zeros, as mha */
		for (int64_t d = 0; d < D; d++)
			y[d] = acc[d] * inv;
	}
	tile_free(&tile);
}

static void attn_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	struct attn_job j = { out };
	g_host->parallel_for(out->ne[0] * out->ne[1] * out->ne[2], attn_fwd_rows, &j);
}

/* The backward of batch row b's query heads of KV head hk. */
static void bwd_rows(struct fw_tensor *out, int64_t b, int64_t hk, struct tile *tile,
		     float *scores)
{
	const struct fw_tensor *q = out->src[0], *k = out->src[1];
	int64_t Tq = out->ne[1], Hq = out->ne[2], D = out->ne[3], G = Hq / k->ne[2];
	bool causal = out->params[2].i != 0;
	int layer = out->params[5].i;
	float dq[SPARSE_MAX_D], buf[3 * SPARSE_MAX_D];
	for (int64_t h = hk * G; h < (hk + 1) * G; h++)
		for (int64_t i = 0; i < Tq; i++) {
			struct row r;
			int64_t n, pos = row_init(&r, out, b, i, h, true, buf, tile, &n);
			int64_t o = ((b * Tq + i) * Hq + h) * D;
			r.scores = scores;
			visit_keys(out, r.s, pos, n, causal, layer, h, fwd_visit, &r);
			r.n_scores = 0;
			if (!(r.l > 0))
				continue;             /* no visible key: output 0, no gradient */
			r.lse = r.m + logf(r.l);
			r.dout = fw_f32(out->grad) + o;
			r.dsum = dot(r.dout, fw_f32(out) + o, D);
			memset(dq, 0, sizeof(float) * (size_t)D);
			r.dq = dq;
			visit_keys(out, r.s, pos, n, causal, layer, h, bwd_visit, &r);
			if (q->grad) {
				float *g = fw_f32(q->grad) + o;
				for (int64_t d = 0; d < D; d++)
					g[d] += dq[d];
			}
		}
}

/* One task per (b, kv head): it owns dK and dV of that head and dQ of its
 * query heads, so no two threads write the same gradient. With the relative
 * bias's gradient, one task per kv head over every b: it owns the bias rows
 * of its query heads too. */
static void attn_bwd_tasks(void *arg, int64_t t0, int64_t t1)
{
	const struct attn_job *jb = arg;
	struct fw_tensor *out = jb->out;
	int64_t B = out->ne[0], Hkv = out->src[1]->ne[2];
	struct tile tile = tile_new(out);
	/* a row visits each key at most once: Tk scores (NULL: recomputed) */
	float *scores = g_host->malloc(sizeof(float) * (size_t)out->src[1]->ne[1]);
	for (int64_t t = t0; t < t1; t++) {
		if (!bias_grad(out)) {
			bwd_rows(out, t / Hkv, t % Hkv, &tile, scores);
			continue;
		}
		for (int64_t b = 0; b < B; b++)
			bwd_rows(out, b, t, &tile, scores);
	}
	g_host->free(scores);
	tile_free(&tile);
}

static void attn_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	struct attn_job j = { out };
	if (out->params[6].i != SA_TRAIN ||
	    (!out->src[0]->grad && !out->src[1]->grad && !bias_grad(out)))
		return;
	g_host->parallel_for((bias_grad(out) ? 1 : out->ne[0]) * out->src[1]->ne[2],
			     attn_bwd_tasks, &j);
}

static const struct fw_op_i attn_op = {
	.size = sizeof(struct fw_op_i),
	.name = "sparse.attn",
	.flags = FW_OPF_HALF,      /* reads bf16/f16 q, k, v and caches; f32 out */
	.infer = attn_infer,
	.forward = attn_forward,
	.backward = attn_backward,
};

/* --- attend ------------------------------------------------------------------------ */

/* The spec's rules and the pattern's, each one line naming the layer. The
 * combinations this plugin does not support are FW_ERR_INVALID too, not
 * FW_ERR_UNSUPPORTED: they are the user's configuration, and fwrun exits 2
 * (usage) only for FW_ERR_INVALID. */
static enum fw_status check_spec(const struct sparse *s, const struct fw_model *m,
				 const struct fw_attn_spec *spec, const struct fw_tensor *q,
				 const struct fw_tensor *k, struct fw_err *err)
{
	const struct fw_host *h = s->host;
	const char *n = spec->name;
	if (spec->n_head <= 0 || spec->n_kv_head <= 0 || spec->n_head % spec->n_kv_head)
		return h->errorf(err, FW_ERR_INVALID,
				 "attention/sparse: %s: %d query heads are not a multiple of %d KV "
				 "heads", n, spec->n_head, spec->n_kv_head);
	if (q->ndim != 4 || k->ndim != 4 || q->ne[2] != spec->n_head ||
	    k->ne[2] != spec->n_kv_head || q->ne[3] != spec->head_dim || k->ne[3] != q->ne[3])
		return h->errorf(err, FW_ERR_SHAPE,
				 "attention/sparse: %s: q must be (B, T, %d, %d) and k, v (B, T, %d, %d)",
				 n, spec->n_head, spec->head_dim, spec->n_kv_head, spec->head_dim);
	if (spec->head_dim > SPARSE_MAX_D)
		return h->errorf(err, FW_ERR_INVALID,
				 "attention/sparse: %s: head dim %d is above the kernel's %d", n,
				 spec->head_dim, SPARSE_MAX_D);
	if (fw_attn_check_rope(spec, q, k, "attention/sparse", FW_ERR_INVALID, err) != FW_OK)
		return err->status;
	int64_t Tk = spec->cache ? spec->cache->max_len : k->ne[1];
	const struct fw_tensor *pb = spec->pos_bias;
	if (spec->pos == FW_POS_RELATIVE && (!pb || pb->dtype != FW_F32 || pb->ndim != 3 ||
					     pb->ne[0] != spec->n_head || pb->ne[1] != q->ne[1] ||
					     pb->ne[2] != Tk))
		return h->errorf(err, FW_ERR_INVALID,
				 "attention/sparse: %s: the relative position bias must be f32 (%d, "
				 "%lld, %lld): (heads, queries, keys)", n, spec->n_head,
				 (long long)q->ne[1], (long long)Tk);
	if (spec->pos == FW_POS_RELATIVE && FW_HAS(m, positions) && m->positions && !spec->cache)
		return h->errorf(err, FW_ERR_INVALID,
				 "attention/sparse: %s: a relative position bias with packed rows "
				 "(positions) is not supported", n);
	if (spec->pos < FW_POS_NONE || spec->pos > FW_POS_RELATIVE)
		return h->errorf(err, FW_ERR_INVALID, "attention/sparse: %s: unknown position kind %d",
				 n, (int)spec->pos);
	if (spec->mask != FW_MASK_CAUSAL && spec->mask != FW_MASK_BIDIRECTIONAL &&
	    spec->mask != FW_MASK_CROSS)
		return h->errorf(err, FW_ERR_INVALID, "attention/sparse: %s: unknown mask kind %d",
				 n, (int)spec->mask);
	const struct fw_tensor *sb = spec->bias;
	if (sb && (sb->ndim != 4 || sb->ne[0] != q->ne[0] || sb->ne[1] != 1 ||
		   (sb->ne[2] != q->ne[1] && sb->ne[2] != 1) || sb->ne[3] != k->ne[1]))
		return h->errorf(err, FW_ERR_INVALID,
				 "attention/sparse: %s: the sequence mask must be (B, 1, Tq, Tk) or a "
				 "key mask (B, 1, 1, Tk)", n);
	if (spec->cache && spec->mask != FW_MASK_CAUSAL)
		return h->errorf(err, FW_ERR_INVALID,
				 "attention/sparse: %s: generating with a cache needs causal attention", n);
	if (spec->bias && spec->cache)
		return h->errorf(err, FW_ERR_INVALID,
				 "attention/sparse: %s: a sequence mask while generating with a cache "
				 "is not supported", n);
	if (spec->dropout > 0.0f && m->training)
		return h->errorf(err, FW_ERR_INVALID,
				 "attention/sparse: %s: dropout on the attention probabilities (%g) "
				 "is not supported: set it to 0", n, (double)spec->dropout);
	if (FW_HAS(m, positions) && m->positions && !spec->cache && k->ne[1] != q->ne[1])
		return h->errorf(err, FW_ERR_INVALID,
				 "attention/sparse: %s: packed rows (positions) need as many keys as "
				 "queries (%lld vs %lld)", n, (long long)k->ne[1], (long long)q->ne[1]);
	/* the arch's window is this plugin's when they are the same mask */
	if (FW_HAS(spec, window) && spec->window &&
	    (s->pat != PAT_WINDOW || s->n_global || s->window != spec->window ||
	     spec->mask != FW_MASK_CAUSAL))
		return h->errorf(err, FW_ERR_INVALID,
				 "attention/sparse: %s: the model's sliding window (%lld) needs "
				 "--sparse-pattern=window --sparse-window=%lld without global tokens",
				 n, (long long)spec->window, (long long)spec->window);
	if (s->pat == PAT_WINDOW && s->n_global && s->global[s->n_global - 1] >= Tk &&
	    spec->mask != FW_MASK_CROSS)
		return h->errorf(err, FW_ERR_INVALID,
				 "attention/sparse: %s: global token %lld is beyond the sequence "
				 "(T = %lld): --sparse-global and --sparse-global-first must stay "
				 "below T", n, (long long)s->global[s->n_global - 1], (long long)Tk);
	return FW_OK;
}

static struct fw_tensor *sparse_attend(void *state, struct fw_model *m,
				       const struct fw_attn_spec *spec, struct fw_tensor *q,
				       struct fw_tensor *k, struct fw_tensor *v, struct fw_err *err)
{
	struct sparse *s = state;
	const struct fw_host *h = s->host;
	struct fw_ctx *ctx = m->ctx;

	if (check_spec(s, m, spec, q, k, err) != FW_OK)
		return NULL;
	if (spec->pos == FW_POS_ROPE) {
		q = fw_attn_rope(m, spec, q);
		k = fw_attn_rope(m, spec, k);
	}
	float scale = spec->scale > 0 ? spec->scale : 1.0f / sqrtf((float)spec->head_dim);
	uintptr_t p = (uintptr_t)s;
	bool rel = spec->pos == FW_POS_RELATIVE;
	union fw_param par[8] = { { .i = (int32_t)(uint32_t)p },
				  { .i = (int32_t)(uint32_t)(p >> 16 >> 16) },
				  { .i = spec->mask == FW_MASK_CAUSAL || spec->cache }, { .f = scale },
				  { .i = spec->pos == FW_POS_ALIBI }, { .i = spec->layer }, { .i = 0 },
				  { .i = (rel ? SP_REL : 0) |
					 (spec->mask == FW_MASK_CROSS ? SP_DENSE : 0) } };
	struct fw_tensor *src[4];
	if (spec->cache) {      /* generating: the causal pattern at position len */
		src[0] = q;
		src[1] = fw_attn_cache_write(m, spec, &spec->cache->k, k, "k");
		src[2] = fw_attn_cache_write(m, spec, &spec->cache->v, v, "v");
		src[3] = spec->cache->len;
		if (rel && src[1] && src[2]) {  /* four sources: the caches as one kv */
			src[1] = h->concat(ctx, src[1], src[2], 3);
			src[2] = spec->pos_bias;
		}
		par[6].i = SA_DECODE;
	} else {
		src[0] = q;
		src[1] = k && v ? h->concat(ctx, k, v, 3) : NULL;       /* (B, Tk, Hkv, 2D) */
		src[2] = spec->bias;
		src[3] = rel ? spec->pos_bias : FW_HAS(m, positions) ? m->positions : NULL;
		par[6].i = SA_TRAIN;
	}
	bool built = q && src[1] && (!spec->cache || src[2]);
	struct fw_tensor *y = built ? h->op(ctx, s->attn_op, src, 4, par, 8) : NULL;
	if (!y) {
		struct fw_err *e = h->ctx_err(ctx);
		return h->errorf(err, e->status ? e->status : FW_ERR_INTERNAL,
				 "attention/sparse: %s: %s", spec->name, e->msg), NULL;
	}
	return y;
}

/* --- plugin ------------------------------------------------------------------------- */

static int register_once(const struct fw_host *host, const struct fw_op_i *op, int *id,
			 struct fw_err *err)
{
	if (*id < 0)
		*id = host->op_register(op, err);
	return *id;
}

/* "0, 7,12": sorted and distinct into s->global (with 0 .. first-1). */
static enum fw_status parse_global(struct sparse *s, const char *list, int64_t first,
				   struct fw_err *err)
{
	const struct fw_host *h = s->host;
	int64_t n = 0, cap = first + 1;
	for (const char *c = list; *c; c++)
		cap += *c == ',';
	cap += 1;
	if (first > SPARSE_MAX_GLOBAL || cap > SPARSE_MAX_GLOBAL + 2)
		return h->errorf(err, FW_ERR_INVALID, "attention/sparse: at most %d global tokens",
				 SPARSE_MAX_GLOBAL);
	s->global = h->malloc(sizeof(int64_t) * (size_t)cap);
	if (!s->global)
		return h->errorf(err, FW_ERR_NOMEM, "attention/sparse: out of memory");
	for (int64_t i = 0; i < first; i++)
		s->global[n++] = i;
	for (const char *c = list; *c;) {
		while (*c == ' ' || *c == ',')
			c++;
		if (!*c)
			break;
		char *end;
		long long v = strtoll(c, &end, 10);
		if (end == c || v < 0 || v >= (1ll << 40) || (*end && *end != ',' && *end != ' '))
			return h->errorf(err, FW_ERR_INVALID, "attention/sparse: --sparse-global "
					 "'%s': want positions >= 0 separated by commas", list);
		s->global[n++] = v;
		c = end;
	}
	qsort(s->global, (size_t)n, sizeof(int64_t), cmp_i64);
	int64_t u = 0;
	for (int64_t i = 0; i < n; i++)
		if (!u || s->global[u - 1] != s->global[i])
			s->global[u++] = s->global[i];
	s->n_global = u;
	return FW_OK;
}

static void sparse_fini(void *state)
{
	struct sparse *s = state;
	if (s) {
		s->host->free(s->global);
		s->host->free(s);
	}
}

static enum fw_status sparse_init(const struct fw_host *host, const struct fw_options *o,
				  void **state, struct fw_err *err)
{
	static int attn_id = -1;                    /* once per process */
	g_host = host;
	if (register_once(host, &attn_op, &attn_id, err) < 0)
		return err->status;
	struct sparse *s = host->malloc(sizeof(*s));
	if (!s)
		return host->errorf(err, FW_ERR_NOMEM, "attention/sparse: out of memory");
	*s = (struct sparse){ .host = host, .attn_op = attn_id };
	const char *pat = fw_opt_str(o, "sparse-pattern");
	for (int i = 0; pattern_names[i]; i++)
		if (pat && !strcmp(pat, pattern_names[i]))
			s->pat = (enum pattern)i;
	s->window = fw_opt_int(o, "sparse-window");
	s->stride = fw_opt_int(o, "sparse-stride");
	s->summary = fw_opt_int(o, "sparse-summary");
	s->block = fw_opt_int(o, "sparse-block");
	s->n_random = fw_opt_int(o, "sparse-random-blocks");
	s->global_blocks = fw_opt_int(o, "sparse-global-blocks");
	s->seed = (uint64_t)fw_opt_int(o, "sparse-seed");
	const char *glist = fw_opt_str(o, "sparse-global");
	int64_t first = fw_opt_int(o, "sparse-global-first");
	enum fw_status st = FW_OK;
	if (s->window < 1 || s->stride < 1 || s->block < 1 || s->summary < 1)
		st = host->errorf(err, FW_ERR_INVALID, "attention/sparse: --sparse-window, "
				  "--sparse-stride, --sparse-block and --sparse-summary must be >= 1");
	else if (s->pat == PAT_FIXED && s->summary > s->stride)
		st = host->errorf(err, FW_ERR_INVALID, "attention/sparse: --sparse-summary %lld "
				  "must be at most --sparse-stride %lld (c summary columns of each "
				  "block of l)", (long long)s->summary, (long long)s->stride);
	else if (s->pat != PAT_WINDOW && ((glist && *glist) || first > 0))
		st = host->errorf(err, FW_ERR_INVALID, "attention/sparse: global tokens "
				  "(--sparse-global, --sparse-global-first) belong to "
				  "--sparse-pattern=window, not %s (bigbird: --sparse-global-blocks)",
				  pattern_names[s->pat]);
	else
		st = parse_global(s, glist ? glist : "", first, err);
	if (st != FW_OK) {
		sparse_fini(s);
		return st;
	}
	*state = s;
	return FW_OK;
}

static const struct fw_option_def options[] = {
	{ "sparse-pattern", FW_OPT_CHOICE, "window", 0, -1, pattern_names,
	  "window (Longformer/Mistral), strided or fixed (Sparse Transformer), bigbird" },
	{ "sparse-window", FW_OPT_INT, "256", 1, 1e9, NULL,
	  "window: keys per side, the query included (causal: i-w < j <= i)" },
	{ "sparse-global", FW_OPT_STRING, "", 0, -1, NULL,
	  "window: global token positions, comma-separated (attend and are attended everywhere)" },
	{ "sparse-global-first", FW_OPT_INT, "0", 0, 1e9, NULL,
	  "window: the first n positions are global too" },
	{ "sparse-stride", FW_OPT_INT, "128", 1, 1e9, NULL,
	  "strided and fixed: the stride / block length l" },
	{ "sparse-summary", FW_OPT_INT, "8", 1, 1e9, NULL,
	  "fixed: c summary columns, the last c of each block of l" },
	{ "sparse-block", FW_OPT_INT, "64", 1, 1e9, NULL, "bigbird: block size" },
	{ "sparse-random-blocks", FW_OPT_INT, "3", 0, SPARSE_MAX_RANDOM, NULL,
	  "bigbird: random key blocks per query block" },
	{ "sparse-global-blocks", FW_OPT_INT, "1", 0, 1e9, NULL,
	  "bigbird: the first g blocks are global" },
	{ "sparse-seed", FW_OPT_INT, "0", 0, 2147483647.0, NULL,
	  "bigbird: seed of the random blocks (kept in checkpoints with the other options)" },
};

static const struct fw_attention_i iface = {
	.size = sizeof(struct fw_attention_i),
	.attend = sparse_attend,
};

static const struct fw_plugin plugin = {
	FW_PLUGIN_HEADER,
	.kind = FW_KIND_ATTENTION,
	.name = "attention/sparse",
	.version = "1.0.0",
	.description = "sparse attention: sliding window + global tokens, strided, fixed, "
		       "BigBird; fused kernel, O(T * keys per row)",
	.options = options,
	.n_options = (int)(sizeof(options) / sizeof(options[0])),
	.iface = &iface,
	.init = sparse_init,
	.fini = sparse_fini,
};

FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void)
{
	return &plugin;
}
