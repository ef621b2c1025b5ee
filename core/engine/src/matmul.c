/* matmul.c - batched matrix multiply through oneDNN, forward and backward.
 *
 * Every product is C (..., M, N) (+)= A (..., M, K) B (..., K, N) on strided
 * operands: transposes and permuted views are only strides, so attention's
 * q @ k^T runs on the views of the fused qkv projection without a copy.
 * With p3.i set, a 4-D product batched over (B, H) writes its output
 * heads-major, (B, M, H, N): attention's P v lands in (B, T, H, D), the
 * output projection's layout, and its gradient is read back the same way.
 * oneDNN primitives are cached by their full descriptor.
 *
 * Kernels are chosen per product when its primitive is created: oneDNN's own
 * for the operands' dtype where it has one for this CPU (f32 everywhere; bf16
 * with AVX512-BF16 or AMX; f16 with AVX512-FP16). Otherwise, as for bf16 on
 * an AVX2-only CPU, the half-precision operands are widened to f32 and
 * multiplied by oneDNN's f32 kernel. On AVX-512 without BF16 oneDNN has a
 * bf16 kernel that emulates the instructions: it is not used, as it took
 * 2.5x the CPU time of f32 for a GPT-2 step where widening takes 1.2x
 * (bench/half_fallback.py). A product of two
 * bf16 or two f16 values is exact in f32, and both paths accumulate in f32,
 * so the two differ only in summation order. FW_MATMUL_FALLBACK=1 in the
 * environment (or fw_matmul_force_fallback) forces the widening path on any
 * CPU, so that it is tested everywhere.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <oneapi/dnnl/dnnl.h>

#include "half.h"
#include "internal.h"

/* A strided operand, logical shape (..., rows, cols), ndim 2..4. */
struct mm_operand {
	int ndim;
	int64_t ne[FW_MAX_DIMS];
	int64_t nb[FW_MAX_DIMS];
};

struct mm_key {
	struct mm_operand a, b, c;
	int dt;                      /* enum fw_dtype of a and b */
	int cdt;                     /* of c: f32, or a and b's half dtype */
	int accumulate;
	int bias;                    /* an f32 row vector (c's last dim) added to c */
};

/* How a half-precision operand reaches an f32 kernel. */
struct mm_widen {
	int64_t n;                   /* elements */
	bool dense;                  /* a permutation of a packed block: one linear pass */
	int inner;                   /* else: the dim of the smallest stride, packed first */
	struct mm_operand f32;       /* the widened operand's layout */
};

struct mm_entry {
	struct mm_key key;
	bool used;
	bool widen;                  /* operands widened to f32 (no native kernel) */
	bool unsupported;            /* no kernel writes this half c: callers round f32 */
	struct mm_widen wa, wb;
	dnnl_primitive_t prim;
	dnnl_memory_t mem_a, mem_b, mem_c, mem_bias;
};

#define MM_CACHE_SIZE 512

static struct {
	bool ready;
	bool force_fallback;
	bool bf16_native;            /* oneDNN's ISA has AVX512-BF16 (or AMX) */
	bool fail_primitives;        /* test hook */
	dnnl_engine_t engine;
	dnnl_stream_t stream;
	struct mm_entry entries[MM_CACHE_SIZE];
	int n_entries;
	float *scratch;              /* widened operands: a, then b */
	size_t scratch_floats;
} mm;

/* Guards mm: graphs of different contexts may run from different threads,
 * and an entry's memory objects get each call's data pointers. Taken by the
 * public entry points only. */
static pthread_mutex_t mm_lock = PTHREAD_MUTEX_INITIALIZER;

static enum fw_status dnnl_ready(struct fw_err *err)
{
	if (mm.ready)
		return FW_OK;
	if (dnnl_engine_create(&mm.engine, dnnl_cpu, 0) != dnnl_success ||
	    dnnl_stream_create(&mm.stream, mm.engine, dnnl_stream_default_flags) != dnnl_success)
		return fw_errorf(err, FW_ERR_INTERNAL, "matmul: cannot create a oneDNN CPU engine");
	const char *env = getenv("FW_MATMUL_FALLBACK");
	if (env && *env && strcmp(env, "0"))
		mm.force_fallback = true;
	/* the ISA oneDNN dispatches to (ONEDNN_MAX_CPU_ISA caps it) */
	dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
	mm.bf16_native = (isa & dnnl_cpu_isa_avx512_core_bf16) == dnnl_cpu_isa_avx512_core_bf16;
	mm.ready = true;
	return FW_OK;
}

static void entry_release(struct mm_entry *e)
{
	if (e->prim)
		dnnl_primitive_destroy(e->prim);
	if (e->mem_a)
		dnnl_memory_destroy(e->mem_a);
	if (e->mem_b)
		dnnl_memory_destroy(e->mem_b);
	if (e->mem_c)
		dnnl_memory_destroy(e->mem_c);
	if (e->mem_bias)
		dnnl_memory_destroy(e->mem_bias);
	memset(e, 0, sizeof(*e));
}

static void cache_clear(void)
{
	for (int i = 0; i < MM_CACHE_SIZE; i++)
		if (mm.entries[i].used)
			entry_release(&mm.entries[i]);
	mm.n_entries = 0;
	free(mm.scratch);
	mm.scratch = NULL;
	mm.scratch_floats = 0;
}

void fw_gemm_cache_clear(void)
{
	pthread_mutex_lock(&mm_lock);
	cache_clear();
	pthread_mutex_unlock(&mm_lock);
}

void fw_matmul_force_fallback(bool force)
{
	struct fw_err err;
	pthread_mutex_lock(&mm_lock);
	if (dnnl_ready(&err) == FW_OK) {
		if (mm.force_fallback != force)
			cache_clear();
		mm.force_fallback = force;
	}
	pthread_mutex_unlock(&mm_lock);
}

void fw_matmul_fail_primitives(bool fail)
{
	pthread_mutex_lock(&mm_lock);
	cache_clear();
	mm.fail_primitives = fail;
	pthread_mutex_unlock(&mm_lock);
}

static uint64_t key_hash(const struct mm_key *k)
{
	const unsigned char *p = (const unsigned char *)k;
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < sizeof(*k); i++)
		h = (h ^ p[i]) * 1099511628211ull;
	return h;
}

static dnnl_data_type_t dnnl_dt(int dt)
{
	return dt == FW_BF16 ? dnnl_bf16 : dt == FW_F16 ? dnnl_f16 : dnnl_f32;
}

static bool md_init(dnnl_memory_desc_t *md, const struct mm_operand *o, int dt)
{
	dnnl_dims_t ne = { 0 }, nb = { 0 };   /* oneDNN's arrays are DNNL_MAX_NDIMS long */
	for (int i = o->ndim - 1; i >= 0; i--) {
		ne[i] = o->ne[i];
		nb[i] = o->nb[i];
		/* A size-1 dim's stride addresses nothing, but oneDNN reads a
		 * layout from it: (1, K) with strides (1, 1) became a column-major
		 * operand whose gemm fails at execution (LoRA r=1). Give it the
		 * row-major value. */
		if (ne[i] == 1)
			nb[i] = i == o->ndim - 1 ? 1 : nb[i + 1] * ne[i + 1];
	}
	return dnnl_memory_desc_init_by_strides(md, o->ndim, ne, dnnl_dt(dt), nb) == dnnl_success;
}

/* The f32 bias of destination c: (1, .., 1, N), contiguous. */
static bool bias_md_init(dnnl_memory_desc_t *md, const struct mm_operand *c)
{
	struct mm_operand o = { .ndim = c->ndim };
	for (int i = 0; i < c->ndim; i++) {
		o.ne[i] = i == c->ndim - 1 ? c->ne[i] : 1;
		o.nb[i] = i == c->ndim - 1 ? 1 : c->ne[c->ndim - 1];
	}
	return md_init(md, &o, FW_F32);
}

/* --- widening half-precision operands to f32 ------------------------------------ */

/* The layout an operand takes in f32: its dims in the order of their
 * strides, packed. An operand whose elements fill a packed block (weights,
 * plain or transposed, and contiguous activations) keeps its strides; a
 * strided view (attention's q, k and v in the fused qkv) is packed in its
 * own dim order, so that each run along its unit-stride dim is one block
 * conversion, and oneDNN gets the layout f32 views of it have. */
static struct mm_widen widen_plan(const struct mm_operand *o)
{
	struct mm_widen w = { .n = 1, .inner = o->ndim - 1, .f32 = *o };
	int order[FW_MAX_DIMS], m = 0;
	for (int i = 0; i < o->ndim; i++) {
		w.n *= o->ne[i];
		if (o->ne[i] > 1)
			order[m++] = i;
	}
	for (int i = 1; i < m; i++)            /* dims by increasing stride */
		for (int j = i; j > 0 && o->nb[order[j]] < o->nb[order[j - 1]]; j--) {
			int t = order[j]; order[j] = order[j - 1]; order[j - 1] = t;
		}
	int64_t want = 1;
	w.dense = true;
	for (int i = 0; i < m; i++) {
		if (o->nb[order[i]] != want)
			w.dense = false;
		w.f32.nb[order[i]] = want;
		want *= o->ne[order[i]];
	}
	if (m)
		w.inner = order[0];
	return w;
}

/* dst (w's f32 layout) = o's elements at src, widened to f32: a block
 * conversion per run along w->inner when its stride is 1. */
static void widen_gather(float *dst, const struct mm_widen *w, const struct mm_operand *o,
			 const void *src, int dt)
{
	const uint16_t *s16 = src;
	void (*conv)(float *, const uint16_t *, int64_t) =
		dt == FW_BF16 ? fw_half_ops.bf16_to_f32 : fw_half_ops.f16_to_f32;
	int in = w->inner;
	int64_t len = o->ne[in], step = o->nb[in], runs = w->n / len;
	#pragma omp parallel for schedule(static) if (w->n > 65536)
	for (int64_t r = 0; r < runs; r++) {
		int64_t rem = r, so = 0, d = 0;
		for (int i = o->ndim - 1; i >= 0; i--) {
			if (i == in)
				continue;
			int64_t idx = rem % o->ne[i];
			rem /= o->ne[i];
			so += idx * o->nb[i];
			d += idx * w->f32.nb[i];
		}
		if (step == 1) {
			conv(dst + d, s16 + so, len);
			continue;
		}
		for (int64_t c = 0; c < len; c++)
			dst[d + c] = dt == FW_BF16 ? fw_bf16_to_f32(s16[so + c * step])
						   : fw_f16_to_f32(s16[so + c * step]);
	}
}

static void widen(float *dst, const struct mm_widen *w, const struct mm_operand *o,
		  const void *src, int dt)
{
	if (w->dense)
		fw_convert(dst, FW_F32, src, dt, w->n);
	else
		widen_gather(dst, w, o, src, dt);
}

static bool scratch_reserve(size_t floats)
{
	if (floats <= mm.scratch_floats)
		return true;
	float *p = NULL;
	if (posix_memalign((void **)&p, FW_ALIGN, floats * sizeof(float)) != 0)
		return false;
	free(mm.scratch);
	mm.scratch = p;
	mm.scratch_floats = floats;
	return true;
}

/* --- primitives -------------------------------------------------------------------- */

/* Whether dtype dt's products may use oneDNN's kernel for dt (else f32 on
 * widened operands): not when forced, nor bf16 that oneDNN would emulate. */
static bool native_dtype(int dt)
{
	if (dt == FW_F32)
		return true;
	return !mm.force_fallback && (dt != FW_BF16 || mm.bf16_native);
}

/* The matmul primitive for a, b (dtype dt) and c (f32); false if oneDNN has
 * none for them on this CPU. */
static bool primitive_create(dnnl_primitive_t *prim, const struct mm_operand *a,
			     const struct mm_operand *b, const struct mm_operand *c, int dt,
			     int cdt, bool accumulate, bool bias, char *impl, size_t impl_len)
{
	dnnl_memory_desc_t a_md, b_md, c_md, bias_md;
	dnnl_matmul_desc_t desc;
	dnnl_primitive_attr_t attr = NULL;
	dnnl_post_ops_t po = NULL;
	dnnl_primitive_desc_t pd = NULL;
	bool ok = false;

	*prim = NULL;
	if (mm.fail_primitives)
		return false;
	if (!md_init(&a_md, a, dt) || !md_init(&b_md, b, dt) || !md_init(&c_md, c, cdt) ||
	    (bias && !bias_md_init(&bias_md, c)))
		goto out;
	if (dnnl_matmul_desc_init(&desc, &a_md, &b_md, bias ? &bias_md : NULL, &c_md) !=
	    dnnl_success)
		goto out;
	if (dnnl_primitive_attr_create(&attr) != dnnl_success)
		goto out;
	if (accumulate) {
		if (dnnl_post_ops_create(&po) != dnnl_success ||
		    dnnl_post_ops_append_sum(po, 1.0f) != dnnl_success ||
		    dnnl_primitive_attr_set_post_ops(attr, po) != dnnl_success)
			goto out;
	}
	if (dnnl_primitive_desc_create(&pd, &desc, attr, mm.engine, NULL) != dnnl_success)
		goto out;
	if (impl) {
		const char *name = NULL;
		dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &name);
		snprintf(impl, impl_len, "%s", name ? name : "?");
	}
	ok = dnnl_primitive_create(prim, pd) == dnnl_success;
out:
	if (pd)
		dnnl_primitive_desc_destroy(pd);
	if (po)
		dnnl_post_ops_destroy(po);
	if (attr)
		dnnl_primitive_attr_destroy(attr);
	return ok;
}

static enum fw_status entry_create(struct mm_entry *e, const struct mm_key *k,
				   struct fw_err *err)
{
	const struct mm_operand *a = &k->a, *b = &k->b;
	dnnl_memory_desc_t a_md, b_md, c_md, bias_md;

	memset(e, 0, sizeof(*e));
	e->key = *k;
	if (!native_dtype(k->dt) || !primitive_create(&e->prim, a, b, &k->c, k->dt, k->cdt, k->accumulate,
					 k->bias, NULL, 0)) {
		if (k->dt == FW_F32)
			goto fail;
		e->widen = true;
		e->wa = widen_plan(&k->a);
		e->wb = widen_plan(&k->b);
		a = &e->wa.f32;
		b = &e->wb.f32;
		if (!primitive_create(&e->prim, a, b, &k->c, FW_F32, k->cdt, k->accumulate, k->bias,
				      NULL, 0))
			goto fail;
	}
	int dt = e->widen ? FW_F32 : k->dt;
	if (!md_init(&a_md, a, dt) || !md_init(&b_md, b, dt) || !md_init(&c_md, &k->c, k->cdt) ||
	    dnnl_memory_create(&e->mem_a, &a_md, mm.engine, DNNL_MEMORY_NONE) != dnnl_success ||
	    dnnl_memory_create(&e->mem_b, &b_md, mm.engine, DNNL_MEMORY_NONE) != dnnl_success ||
	    dnnl_memory_create(&e->mem_c, &c_md, mm.engine, DNNL_MEMORY_NONE) != dnnl_success)
		goto fail;
	if (k->bias && (!bias_md_init(&bias_md, &k->c) ||
			dnnl_memory_create(&e->mem_bias, &bias_md, mm.engine, DNNL_MEMORY_NONE) !=
			dnnl_success))
		goto fail;
	e->used = true;
	return FW_OK;
fail:
	entry_release(e);
	if (k->cdt != FW_F32) {      /* remembered: the caller rounds an f32 product */
		e->key = *k;
		e->used = e->unsupported = true;
		return FW_OK;
	}
	return fw_errorf(err, FW_ERR_INTERNAL, "matmul: oneDNN rejected a %dx%dx%d %s product",
			 (int)k->c.ne[k->c.ndim - 2], (int)k->c.ne[k->c.ndim - 1],
			 (int)k->a.ne[k->a.ndim - 1], fw_dtype_name(k->dt));
}

static struct mm_entry *entry_get(const struct mm_key *k, struct fw_err *err)
{
	uint64_t h = key_hash(k);
	for (int probe = 0; probe < MM_CACHE_SIZE; probe++) {
		struct mm_entry *e = &mm.entries[(h + probe) % MM_CACHE_SIZE];
		if (e->used && memcmp(&e->key, k, sizeof(*k)) == 0)
			return e;
		if (!e->used) {
			if (mm.n_entries >= MM_CACHE_SIZE * 3 / 4) {
				cache_clear();   /* rare: many shapes; start over */
				return entry_get(k, err);
			}
			if (entry_create(e, k, err) != FW_OK)
				return NULL;
			mm.n_entries++;
			return e;
		}
	}
	fw_errorf(err, FW_ERR_INTERNAL, "matmul: primitive cache full");
	return NULL;
}

static enum fw_status mm_run_locked(const struct mm_key *k, const void *a, const void *b,
				    void *c, const float *bias, struct fw_err *err)
{
	if (dnnl_ready(err) != FW_OK)
		return err->status;
	struct mm_entry *e = entry_get(k, err);
	if (!e)
		return err->status;
	if (e->unsupported)
		return FW_ERR_UNSUPPORTED;
	if (e->widen) {
		if (!scratch_reserve((size_t)(e->wa.n + e->wb.n)))
			return fw_errorf(err, FW_ERR_NOMEM, "matmul: no memory to widen a %s product",
					 fw_dtype_name(k->dt));
		float *wa = mm.scratch, *wb = mm.scratch + e->wa.n;
		widen(wa, &e->wa, &k->a, a, k->dt);
		widen(wb, &e->wb, &k->b, b, k->dt);
		a = wa;
		b = wb;
	}
	dnnl_memory_set_data_handle(e->mem_a, (void *)a);
	dnnl_memory_set_data_handle(e->mem_b, (void *)b);
	dnnl_memory_set_data_handle(e->mem_c, c);
	if (k->bias)
		dnnl_memory_set_data_handle(e->mem_bias, (void *)bias);
	dnnl_exec_arg_t args[4] = {
		{ DNNL_ARG_SRC, e->mem_a },
		{ DNNL_ARG_WEIGHTS, e->mem_b },
		{ DNNL_ARG_DST, e->mem_c },
		{ DNNL_ARG_BIAS, e->mem_bias },
	};
	if (dnnl_primitive_execute(e->prim, mm.stream, k->bias ? 4 : 3, args) != dnnl_success ||
	    dnnl_stream_wait(mm.stream) != dnnl_success)
		return fw_errorf(err, FW_ERR_INTERNAL, "matmul: oneDNN execution failed");
	return FW_OK;
}

/* c (+)= a b (+ bias) for strided operands of one descriptor. */
static enum fw_status mm_run(const struct mm_key *k, const void *a, const void *b, void *c,
			     const float *bias, struct fw_err *err)
{
	pthread_mutex_lock(&mm_lock);
	enum fw_status st = mm_run_locked(k, a, b, c, bias, err);
	pthread_mutex_unlock(&mm_lock);
	return st;
}

/* --- operands from tensors ---------------------------------------------------- */

static struct mm_operand operand(const struct fw_tensor *t, bool trans)
{
	struct mm_operand o = { .ndim = t->ndim };
	for (int i = 0; i < t->ndim; i++) {
		o.ne[i] = t->ne[i];
		o.nb[i] = t->nb[i];
	}
	if (trans) {
		int r = t->ndim - 2, c = t->ndim - 1;
		int64_t x = o.ne[r]; o.ne[r] = o.ne[c]; o.ne[c] = x;
		x = o.nb[r]; o.nb[r] = o.nb[c]; o.nb[c] = x;
	}
	return o;
}

/* The product's destination: out itself, or with p3.i set (heads-major
 * output) out (B, M, H, N) viewed as the product's (B, H, M, N). */
static struct mm_operand out_operand(const struct fw_tensor *out, const struct fw_tensor *t)
{
	struct mm_operand o = operand(t, false);
	if (out->params[3].i) {
		int64_t x = o.ne[1]; o.ne[1] = o.ne[2]; o.ne[2] = x;
		x = o.nb[1]; o.nb[1] = o.nb[2]; o.nb[2] = x;
	}
	return o;
}

/* Same shape and layout as t, but the contiguous strides of a gradient. */
static struct mm_operand grad_operand(const struct fw_tensor *t, bool trans)
{
	struct fw_tensor g = *t;
	fw_set_contiguous_strides(&g);
	return operand(&g, trans);
}

static struct mm_operand transposed(struct mm_operand o)
{
	int r = o.ndim - 2, c = o.ndim - 1;
	int64_t x = o.ne[r]; o.ne[r] = o.ne[c]; o.ne[c] = x;
	x = o.nb[r]; o.nb[r] = o.nb[c]; o.nb[c] = x;
	return o;
}

/* Folds the batch dims of o into its rows when memory allows: (B, M, K)
 * with nb[0] == M * nb[1] becomes (B*M, K). Returns false otherwise. */
static bool fold_rows(struct mm_operand *o)
{
	int r = o->ndim - 2;
	for (int i = r - 1; i >= 0; i--)
		if (o->ne[i] != 1 && o->nb[i] != o->ne[i + 1] * o->nb[i + 1])
			return false;
	int64_t rows = 1;
	for (int i = 0; i <= r; i++)
		rows *= o->ne[i];
	struct mm_operand f = { .ndim = 2 };
	f.ne[0] = rows;
	f.ne[1] = o->ne[o->ndim - 1];
	f.nb[0] = o->nb[r];
	f.nb[1] = o->nb[o->ndim - 1];
	*o = f;
	return true;
}

/* Pads a 2-D operand to nd dims with broadcast batch dims of size 1. */
static struct mm_operand pad_batch(struct mm_operand o, int nd)
{
	struct mm_operand p = { .ndim = nd };
	int off = nd - o.ndim;
	int64_t outer = o.ne[0] * o.nb[0];
	for (int i = 0; i < nd; i++) {
		if (i < off) {
			p.ne[i] = 1;
			p.nb[i] = outer;
		} else {
			p.ne[i] = o.ne[i - off];
			p.nb[i] = o.nb[i - off];
		}
	}
	return p;
}

/* c (+)= a b (+ bias, f32 (N) for an f32 c (.., M, N)) where b may lack a's
 * batch dims (then broadcast). */
static enum fw_status mm_product_bias(struct mm_operand a, struct mm_operand b,
				      struct mm_operand c, int dt, int cdt, bool accumulate,
				      const void *pa, const void *pb, void *pc, const float *bias,
				      struct fw_err *err)
{
	struct mm_key k;
	int last = c.ndim - 1;
	/* oneDNN has fast kernels for row-major destinations only (a column-major
	 * one falls back to its reference code, ~100x slower): compute
	 * C^T = B^T A^T instead (not with a bias, which is along c's rows). */
	if (c.nb[last] != 1 && c.nb[last - 1] == 1 && !bias)
		return mm_product_bias(transposed(b), transposed(a), transposed(c), dt, cdt,
				       accumulate, pb, pa, pc, NULL, err);
	memset(&k, 0, sizeof(k));
	if (a.ndim == 2 && b.ndim > 2)
		a = pad_batch(a, b.ndim);
	if (b.ndim == 2 && a.ndim > 2) {
		struct mm_operand fa = a, fc = c;
		if (fold_rows(&fa) && fold_rows(&fc)) {
			a = fa;
			c = fc;
		} else {
			b = pad_batch(b, a.ndim);
		}
	}
	k.a = a;
	k.b = b;
	k.c = c;
	k.dt = dt;
	k.cdt = cdt;
	k.accumulate = accumulate;
	k.bias = bias != NULL;
	return mm_run(&k, pa, pb, pc, bias, err);
}

static enum fw_status mm_product(struct mm_operand a, struct mm_operand b, struct mm_operand c,
				 int dt, int cdt, bool accumulate, const void *pa, const void *pb,
				 void *pc, struct fw_err *err)
{
	return mm_product_bias(a, b, c, dt, cdt, accumulate, pa, pb, pc, NULL, err);
}

/* --- causal blocks ---------------------------------------------------------------
 *
 * Causal attention's products over the lower triangle only (p4.i): the
 * square (.., T, T) side is cut into row blocks of tri_block(T) rows, and
 * row block [i0, i1) runs one product over the keys it can see:
 *   TRI_OUT       c's columns [0, i1) (the scores q k^T; c above its
 *                 diagonal is not needed: zeroed when c is written; added
 *                 to, it gets the diagonal blocks' products there);
 *   TRI_IN_LOWER  a's columns (the inner dim) [0, i1): a is zero after them
 *                 (P v; dQ = dS k);
 *   TRI_IN_UPPER  a's columns [i0, K): a is zero before them (dV = P^T dO;
 *                 dK = dS^T q).
 * The skipped entries are exact zeros of a, so only the summation's split
 * into blocks changes (each block is its own product). A product that is
 * not square on that side runs whole. */
enum { TRI_NONE, TRI_OUT, TRI_IN_LOWER, TRI_IN_UPPER };

static int64_t tri_block(int64_t T)
{
	return T >= 256 ? 64 : (T + 3) / 4;
}

/* rows [r0, r0 + nr) and columns [c0, c0 + nc) of o, at element *off */
static struct mm_operand sub_block(struct mm_operand o, int64_t r0, int64_t nr, int64_t c0,
				   int64_t nc, int64_t *off)
{
	int r = o.ndim - 2, c = o.ndim - 1;
	*off = r0 * o.nb[r] + c0 * o.nb[c];
	o.ne[r] = nr;
	o.ne[c] = nc;
	return o;
}

/* zeroes c above its diagonal in rows [r0, r1), in every batch */
static void zero_above(struct mm_operand c, void *pc, size_t es, int64_t r0, int64_t r1)
{
	int r = c.ndim - 2, l = c.ndim - 1;
	int64_t nbatch = 1;
	for (int i = 0; i < r; i++)
		nbatch *= c.ne[i];
	for (int64_t bi = 0; bi < nbatch; bi++) {
		int64_t rem = bi, off = 0;
		for (int i = r - 1; i >= 0; i--) {
			off += (rem % c.ne[i]) * c.nb[i];
			rem /= c.ne[i];
		}
		for (int64_t i = r0; i < r1; i++) {
			char *row = (char *)pc + (size_t)(off + i * c.nb[r]) * es;
			if (c.nb[l] == 1)            /* one run per row */
				memset(row + (size_t)(i + 1) * es, 0,
				       (size_t)(c.ne[l] - i - 1) * es);
			else
				for (int64_t j = i + 1; j < c.ne[l]; j++)
					memset(row + (size_t)(j * c.nb[l]) * es, 0, es);
		}
	}
}

static enum fw_status mm_tri(int tri, struct mm_operand a, struct mm_operand b,
			     struct mm_operand c, int dt, int cdt, bool accumulate, const void *pa,
			     const void *pb, void *pc, struct fw_err *err)
{
	int r = c.ndim - 2, l = c.ndim - 1;
	int64_t M = c.ne[r], N = c.ne[l], K = a.ne[l];
	if (tri == TRI_NONE || M != (tri == TRI_OUT ? N : K) || M < 2)
		return mm_product(a, b, c, dt, cdt, accumulate, pa, pb, pc, err);
	int64_t bs = tri_block(M);
	size_t ea = fw_dtype_size(dt), ec = fw_dtype_size(cdt);
	for (int64_t i0 = 0; i0 < M; i0 += bs) {
		int64_t m = bs < M - i0 ? bs : M - i0, i1 = i0 + m;
		int64_t k0 = tri == TRI_IN_UPPER ? i0 : 0;
		int64_t k1 = tri == TRI_IN_LOWER ? i1 : K, n1 = tri == TRI_OUT ? i1 : N;
		int64_t oa, ob, oc;
		struct mm_operand sa = sub_block(a, i0, m, k0, k1 - k0, &oa);
		struct mm_operand sb = sub_block(b, k0, k1 - k0, 0, n1, &ob);
		struct mm_operand sc = sub_block(c, i0, m, 0, n1, &oc);
		enum fw_status s = mm_product(sa, sb, sc, dt, cdt, accumulate,
					      (const char *)pa + (size_t)oa * ea,
					      (const char *)pb + (size_t)ob * ea,
					      (char *)pc + (size_t)oc * ec, err);
		if (s != FW_OK)
			return s;
		if (tri == TRI_OUT && !accumulate)
			zero_above(c, pc, ec, i0, i1);
	}
	return FW_OK;
}

/* The triangle of forward (which 0), dA (1) or dB^T (2) under the op's p4. */
static int tri_of(const struct fw_tensor *out, int which)
{
	static const int tri[3][3] = {
		[FW_MM_CAUSAL_OUT] = { TRI_OUT, TRI_IN_LOWER, TRI_IN_UPPER },
		[FW_MM_CAUSAL_A] = { TRI_IN_LOWER, TRI_OUT, TRI_IN_UPPER },
	};
	int p = out->params[4].i;
	return p == FW_MM_CAUSAL_OUT || p == FW_MM_CAUSAL_A ? tri[p][which] : TRI_NONE;
}

/* dB (K, N) (+)= sum over batches of A_i^T dC_i, for b broadcast over a's batch. */
static enum fw_status mm_reduce_batches(struct mm_operand a, struct mm_operand dc,
					struct mm_operand db, const void *pa, const void *pdc,
					void *pdb, int dt, int cdt, bool accumulate,
					struct fw_err *err)
{
	struct mm_operand fa = a, fc = dc;
	if (fold_rows(&fa) && fold_rows(&fc))
		return mm_product(transposed(fa), fc, db, dt, cdt, accumulate, pa, pdc, pdb, err);
	/* Fallback: one product per batch entry, accumulating. */
	int nd = a.ndim;
	int64_t nbatch = 1;
	for (int i = 0; i < nd - 2; i++)
		nbatch *= a.ne[i];
	struct mm_operand a2 = { .ndim = 2 }, c2 = { .ndim = 2 };
	for (int j = 0; j < 2; j++) {
		a2.ne[j] = a.ne[nd - 2 + j];
		a2.nb[j] = a.nb[nd - 2 + j];
		c2.ne[j] = dc.ne[nd - 2 + j];
		c2.nb[j] = dc.nb[nd - 2 + j];
	}
	size_t es = fw_dtype_size(dt);
	for (int64_t bi = 0; bi < nbatch; bi++) {
		int64_t rem = bi, oa = 0, oc = 0;
		for (int i = nd - 3; i >= 0; i--) {
			int64_t idx = rem % a.ne[i];
			rem /= a.ne[i];
			oa += idx * a.nb[i];
			oc += idx * dc.nb[i];
		}
		enum fw_status s = mm_product(transposed(a2), c2, db, dt, cdt, accumulate || bi,
					      (const char *)pa + oa * es,
					      (const char *)pdc + oc * es, pdb, err);
		if (s != FW_OK)
			return s;
	}
	return FW_OK;
}

/* --- the op --------------------------------------------------------------- */

static bool rows_unit_stride(const struct fw_tensor *t)
{
	return t->nb[t->ndim - 1] == 1 || t->nb[t->ndim - 2] == 1;
}

static enum fw_status matmul_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *a = out->src[0], *b = out->src[1];
	bool ta = out->params[0].i, tb = out->params[1].i;
	char sa[64], sb[64];

	if (!b)
		return fw_errorf(err, FW_ERR_INVALID, "matmul: second operand missing");
	if (a->dtype != b->dtype ||
	    (a->dtype != FW_F32 && a->dtype != FW_BF16 && a->dtype != FW_F16))
		return fw_errorf(err, FW_ERR_SHAPE,
				 "matmul: operands are %s and %s; need both f32, bf16 or f16",
				 fw_dtype_name(a->dtype), fw_dtype_name(b->dtype));
	if (a->ndim < 2 || b->ndim < 2 || (b->ndim != 2 && b->ndim != a->ndim))
		return fw_errorf(err, FW_ERR_SHAPE,
				 "matmul: shapes %s and %s: need >= 2 dims, b 2-D or as many dims as a",
				 fw_shape_str(a, sa, sizeof(sa)), fw_shape_str(b, sb, sizeof(sb)));
	int na = a->ndim, nbd = b->ndim;
	int64_t M = ta ? a->ne[na - 1] : a->ne[na - 2];
	int64_t K = ta ? a->ne[na - 2] : a->ne[na - 1];
	int64_t Kb = tb ? b->ne[nbd - 1] : b->ne[nbd - 2];
	int64_t N = tb ? b->ne[nbd - 2] : b->ne[nbd - 1];
	if (K != Kb)
		return fw_errorf(err, FW_ERR_SHAPE,
				 "matmul: inner dims differ: %s%s x %s%s (%lld vs %lld)",
				 fw_shape_str(a, sa, sizeof(sa)), ta ? "^T" : "",
				 fw_shape_str(b, sb, sizeof(sb)), tb ? "^T" : "",
				 (long long)K, (long long)Kb);
	if (nbd == na)
		for (int i = 0; i < na - 2; i++)
			if (a->ne[i] != b->ne[i])
				return fw_errorf(err, FW_ERR_SHAPE,
						 "matmul: batch dims of %s and %s differ",
						 fw_shape_str(a, sa, sizeof(sa)),
						 fw_shape_str(b, sb, sizeof(sb)));
	if (!rows_unit_stride(a) || !rows_unit_stride(b))
		return fw_errorf(err, FW_ERR_SHAPE, "matmul: operand without a unit stride");
	int dt_out = out->params[2].i;
	if (dt_out != FW_F32 && dt_out != FW_BF16 && dt_out != FW_F16)
		return fw_errorf(err, FW_ERR_INVALID, "matmul: output dtype %d is not f32, bf16 or f16",
				 dt_out);
	const struct fw_tensor *bias = out->src[2];
	if (bias && (bias->dtype != FW_F32 || bias->ndim != 1 || bias->ne[0] != N))
		return fw_errorf(err, FW_ERR_SHAPE, "matmul: the bias is %s %s, expected f32 [%lld]",
				 fw_dtype_name(bias->dtype),
				 fw_shape_str(bias, sa, sizeof(sa)), (long long)N);
	int causal = out->params[4].i;
	if (causal != FW_MM_CAUSAL_NONE && causal != FW_MM_CAUSAL_OUT && causal != FW_MM_CAUSAL_A)
		return fw_errorf(err, FW_ERR_INVALID, "matmul: causal mode %d is not 0, 1 or 2",
				 causal);
	bool heads = out->params[3].i != 0;
	if (heads && (na != 4 || nbd != 4 || bias))
		return fw_errorf(err, FW_ERR_SHAPE, "matmul: a heads-major output needs 4-D "
				 "operands and no bias, got %s and %s",
				 fw_shape_str(a, sa, sizeof(sa)), fw_shape_str(b, sb, sizeof(sb)));
	out->dtype = (enum fw_dtype)dt_out;
	out->ndim = na;
	for (int i = 0; i < na - 2; i++)
		out->ne[i] = a->ne[i];
	out->ne[na - 2] = M;
	out->ne[na - 1] = N;
	if (heads) {                            /* (B, M, H, N) */
		out->ne[1] = M;
		out->ne[2] = a->ne[1];
	}
	return FW_OK;
}

/* A half-precision output is the f32 product, in the workspace, rounded.
 * When a's rows fold and b is 2-D (a linear layer), the product is done
 * in blocks of rows whose f32 values fit in 16 MiB (or the whole output
 * when it is smaller), so the LM head's logits never exist in f32. */
#define HALF_OUT_MAX_BYTES ((int64_t)16 << 20)

static int64_t half_out_rows(const struct fw_tensor *out, struct mm_operand *fa)
{
	const struct fw_tensor *b = out->src[1];
	*fa = operand(out->src[0], out->params[0].i);
	if (b->ndim != 2 || !fold_rows(fa))
		return 0;
	int64_t N = out->ne[out->ndim - 1];
	int64_t rows = HALF_OUT_MAX_BYTES / (N * 4);
	return rows < 1 ? 1 : rows < fa->ne[0] ? rows : fa->ne[0];
}

static void matmul_forward_half(struct fw_tensor *out, const struct fw_exec *ex)
{
	const struct fw_tensor *a = out->src[0], *b = out->src[1];
	struct mm_operand fa, ob = operand(b, out->params[1].i);
	int64_t rows = half_out_rows(out, &fa), N = out->ne[out->ndim - 1];
	size_t ea = fw_dtype_size(a->dtype), eo = fw_dtype_size(out->dtype);
	const float *bias = out->src[2] ? fw_f32(out->src[2]) : NULL;
	struct fw_err err;
	/* oneDNN writes the half output itself where it has such a kernel,
	 * adding the f32 bias before it rounds */
	enum fw_status s = bias ? mm_product_bias(operand(a, out->params[0].i), ob,
						  out_operand(out, out), a->dtype, out->dtype,
						  false, a->data, b->data, out->data, bias, &err)
				: mm_tri(tri_of(out, 0), operand(a, out->params[0].i), ob,
					 out_operand(out, out), a->dtype, out->dtype, false, a->data,
					 b->data, out->data, &err);
	if (s != FW_ERR_UNSUPPORTED) {
		if (s != FW_OK)
			fw_kernel_fail(&err);
		return;
	}
	s = FW_OK;
	if (!rows) {           /* causal products keep their triangle */
		FW_ASSERT(ex->ws_size >= (size_t)fw_nelem(out) * 4);
		s = bias ? mm_product_bias(operand(a, out->params[0].i), ob, out_operand(out, out),
					   a->dtype, FW_F32, false, a->data, b->data, ex->ws, bias,
					   &err)
			 : mm_tri(tri_of(out, 0), operand(a, out->params[0].i), ob,
				  out_operand(out, out), a->dtype, FW_F32, false, a->data, b->data,
				  ex->ws, &err);
		struct mm_operand oc = out_operand(out, out);
		int64_t M = oc.ne[oc.ndim - 2];
		if (s == FW_OK)
			fw_convert(out->data, out->dtype, ex->ws, FW_F32, fw_nelem(out));
		if (s == FW_OK && tri_of(out, 0) == TRI_OUT && M == oc.ne[oc.ndim - 1])
			zero_above(oc, out->data, eo, 0, M);    /* as mm_tri leaves it */
	}
	for (int64_t r0 = 0; rows && r0 < fa.ne[0] && s == FW_OK; r0 += rows) {
		int64_t m = rows < fa.ne[0] - r0 ? rows : fa.ne[0] - r0;
		struct mm_operand ca = fa, cc = { .ndim = 2, .ne = { m, N }, .nb = { N, 1 } };
		ca.ne[0] = m;
		FW_ASSERT(ex->ws_size >= (size_t)(m * N) * 4);
		s = mm_product_bias(ca, ob, cc, a->dtype, FW_F32, false,
				    (const char *)a->data + (size_t)(r0 * fa.nb[0]) * ea, b->data,
				    ex->ws, bias, &err);
		if (s == FW_OK)
			fw_convert((char *)out->data + (size_t)(r0 * N) * eo, out->dtype, ex->ws,
				   FW_F32, m * N);
	}
	if (s != FW_OK)
		fw_kernel_fail(&err);
}

static void matmul_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	const struct fw_tensor *a = out->src[0], *b = out->src[1];
	struct fw_err err;
	if (out->dtype != FW_F32) {
		matmul_forward_half(out, ex);
		return;
	}
	const float *bias = out->src[2] ? fw_f32(out->src[2]) : NULL;
	struct mm_operand oa = operand(a, out->params[0].i), ob = operand(b, out->params[1].i);
	enum fw_status s = bias ? mm_product_bias(oa, ob, out_operand(out, out), a->dtype, FW_F32,
						  false, a->data, b->data, out->data, bias, &err)
				: mm_tri(tri_of(out, 0), oa, ob, out_operand(out, out), a->dtype,
					 FW_F32, false, a->data, b->data, out->data, &err);
	if (s != FW_OK)
		fw_kernel_fail(&err);
}

/* Bytes of the f32 product a half gradient of t takes before it is
 * rounded into it (0 for an f32 gradient, which products add into). */
static size_t half_grad_bytes(const struct fw_tensor *t)
{
	return t->grad && t->grad->dtype != FW_F32 ? align64((size_t)fw_nelem(t) * 4) : 0;
}

/* Backward's workspace: the output gradient rounded to the operands' half
 * dtype (when it is f32), then the f32 product a half source gradient takes. */
static size_t backward_ws_bytes(const struct fw_tensor *out)
{
	size_t bwd = 0;
	if (out->src[0]->dtype != FW_F32 && out->grad && out->grad->dtype == FW_F32)
		bwd = align64((size_t)fw_nelem(out) * 2);
	size_t ga = half_grad_bytes(out->src[0]), gb = half_grad_bytes(out->src[1]);
	return bwd + (ga > gb ? ga : gb);
}

/* dbias (N, f32) (+)= the sum of dC's rows (rows, N, contiguous, in its
 * own dtype dt; = when write). Each thread sums whole columns of a tile in
 * f32, 64-row blocks first and then the blocks, in the same order on every
 * thread count (a product ones (1, rows) dC ran at 10-18 GFLOP/s). */
static void bias_backward(float *db, const void *dc, enum fw_dtype dt, int64_t rows,
			  int64_t N, bool write)
{
	enum { TW = 128, RB = 64 };
	int64_t nt = (N + TW - 1) / TW;
	#pragma omp parallel for schedule(static) if (rows * N > PAR_MIN)
	for (int64_t tile = 0; tile < nt; tile++) {
		int64_t c0 = tile * TW, w = min64(TW, N - c0);
		float acc[TW], blk[TW], row[TW];
		for (int64_t j = 0; j < w; j++)
			acc[j] = write ? 0.0f : db[c0 + j];
		for (int64_t r0 = 0; r0 < rows; r0 += RB) {
			for (int64_t j = 0; j < w; j++)
				blk[j] = 0.0f;
			for (int64_t r = r0; r < min64(r0 + RB, rows); r++) {
				const float *x = row;
				if (dt == FW_F32)
					x = (const float *)dc + r * N + c0;
				else
					half_load(row, elem_ptr(dc, dt, r * N + c0), dt, w);
				#pragma omp simd
				for (int64_t j = 0; j < w; j++)
					blk[j] += x[j];
			}
			#pragma omp simd
			for (int64_t j = 0; j < w; j++)
				acc[j] += blk[j];
		}
		for (int64_t j = 0; j < w; j++)
			db[c0 + j] = acc[j];
	}
}

/* g (+)= the product, for a half gradient g: oneDNN adds into (or
 * writes) it itself (in f32, rounded once) where it has such a kernel,
 * else the f32 product goes through ws (a causal one over its triangle). */
static enum fw_status product_into_half(int tri, struct mm_operand x, struct mm_operand y,
					struct mm_operand c, int dt, const void *px,
					const void *py, struct fw_tensor *g, float *ws,
					bool accumulate, struct fw_err *err)
{
	enum fw_status s = mm_tri(tri, x, y, c, dt, g->dtype, accumulate, px, py, g->data, err);
	if (s != FW_ERR_UNSUPPORTED)
		return s;
	s = mm_tri(tri, x, y, c, dt, FW_F32, false, px, py, ws, err);
	if (s == FW_OK && accumulate)
		half_accumulate(g->data, g->dtype, ws, fw_nelem(g));
	else if (s == FW_OK)
		half_store(g->data, g->dtype, ws, fw_nelem(g));
	return s;
}

/* Under autocast the output gradient is already in the operands' half
 * dtype (as torch's autograd hands it to a bf16 mm); an f32 one is rounded
 * first. The products accumulate in f32; a source gradient that is half
 * (an activation's) gets the product rounded into it, an f32 one (a cast
 * weight's, bound for the fp32 main gradient) gets it added directly. */
static void matmul_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	const struct fw_tensor *a = out->src[0], *b = out->src[1];
	bool ta = out->params[0].i, tb = out->params[1].i;
	struct mm_operand dc = out_operand(out, out->grad);
	const void *pdc = out->grad->data;
	char *ws = ex->ws;
	int dt = a->dtype;
	/* a source whose gradient the graph did not zero is written (beta 0) */
	bool add_a = !(ex->grad_overwrite & 1u), add_b = !(ex->grad_overwrite & 2u);
	bool add_bias = !(ex->grad_overwrite & 4u);
	struct fw_err err;
	enum fw_status s;

	if (dt != FW_F32 && out->grad->dtype == FW_F32) {
		FW_ASSERT(ex->ws_size >= align64((size_t)fw_nelem(out) * 2));
		fw_convert(ws, dt, out->grad->data, FW_F32, fw_nelem(out));
		pdc = ws;
		ws += align64((size_t)fw_nelem(out) * 2);
	}
	if (a->grad) {
		/* dA (.., M, K) += dC (.., M, N) B^T (.., N, K) */
		struct mm_operand bt = transposed(operand(b, tb));
		if (a->grad->dtype != FW_F32)
			s = product_into_half(tri_of(out, 1), dc, bt, grad_operand(a, ta), dt,
					      pdc, b->data, a->grad, (float *)ws, add_a, &err);
		else
			s = mm_tri(tri_of(out, 1), dc, bt, grad_operand(a, ta), dt, FW_F32, add_a,
				   pdc, b->data, a->grad->data, &err);
		if (s != FW_OK) {
			fw_kernel_fail(&err);
			return;
		}
	}
	if (out->src[2] && out->src[2]->grad) {
		int64_t N = out->ne[out->ndim - 1];
		bias_backward(fw_f32(out->src[2]->grad), out->grad->data, out->grad->dtype,
			      fw_nelem(out) / N, N, !add_bias);
	}
	if (b->grad) {
		/* dB (.., K, N) += A^T (.., K, M) dC (.., M, N) */
		struct mm_operand at = operand(a, ta);
		struct mm_operand db = grad_operand(b, tb);
		bool half = b->grad->dtype != FW_F32;
		int tri = tri_of(out, 2);
		bool scores = out->params[4].i == FW_MM_CAUSAL_OUT && b->ndim == a->ndim;
		if (half && scores) {           /* dB^T = dC^T A, row blocks of dC^T */
			s = product_into_half(tri, transposed(dc), at, transposed(db), dt, pdc,
					      a->data, b->grad, (float *)ws, add_b, &err);
		} else if (half && b->ndim == a->ndim) {
			s = product_into_half(tri, transposed(at), dc, db, dt, a->data, pdc,
					      b->grad, (float *)ws, add_b, &err);
		} else if (half) {   /* a batch-reducing sum, in f32 */
			s = mm_reduce_batches(at, dc, db, a->data, pdc, ws, dt, FW_F32, false,
					      &err);
			if (s == FW_OK && add_b)
				half_accumulate(b->grad->data, b->grad->dtype, (float *)ws,
						fw_nelem(b));
			else if (s == FW_OK)
				half_store(b->grad->data, b->grad->dtype, (float *)ws,
					   fw_nelem(b));
		} else if (scores) {
			s = mm_tri(tri, transposed(dc), at, transposed(db), dt, FW_F32, add_b, pdc,
				   a->data, b->grad->data, &err);
		} else if (b->ndim == a->ndim) {
			s = mm_tri(tri, transposed(at), dc, db, dt, FW_F32, add_b, a->data, pdc,
				   b->grad->data, &err);
		} else {
			s = mm_reduce_batches(at, dc, db, a->data, pdc, b->grad->data, dt,
					      FW_F32, add_b, &err);
		}
		if (s != FW_OK)
			fw_kernel_fail(&err);
	}
}

static size_t matmul_workspace(const struct fw_tensor *out)
{
	struct mm_operand fa;
	size_t fwd = 0;
	if (out->dtype != FW_F32) {
		int64_t rows = half_out_rows(out, &fa), N = out->ne[out->ndim - 1];
		fwd = rows ? (size_t)(rows * N) * 4 : (size_t)fw_nelem(out) * 4;
	}
	size_t bwd = backward_ws_bytes(out);
	return fwd > bwd ? fwd : bwd;
}

/* The bias gradient reads only dC. */
static uint32_t matmul_saved(const struct fw_tensor *out)
{
	uint32_t m = 0;
	if (out->src[0]->grad)
		m |= 1u << 1;    /* dA needs B */
	if (out->src[1]->grad)
		m |= 1u << 0;    /* dB needs A */
	return m;
}

const struct fw_op_i fw_op_matmul_i = {
	.size = sizeof(struct fw_op_i),
	.name = "matmul",
	.flags = FW_OPF_STRIDED | FW_OPF_HALF | FW_OPF_HALF_GRAD | FW_OPF_GRAD_OVERWRITE,
	.infer = matmul_infer,
	.forward = matmul_forward,
	.backward = matmul_backward,
	.saved = matmul_saved,
	.workspace = matmul_workspace,
};

/* --- public GEMM entry for benchmarks: row-major, contiguous ------------------ */

enum fw_status fw_gemm_run(const struct fw_gemm *g, const void *a, const void *b, float *c)
{
	struct mm_key k;
	struct fw_err err;
	memset(&k, 0, sizeof(k));
	k.a.ndim = k.b.ndim = k.c.ndim = 3;
	k.a.ne[0] = k.b.ne[0] = k.c.ne[0] = g->batch;
	k.a.ne[1] = g->M; k.a.ne[2] = g->K;
	k.b.ne[1] = g->K; k.b.ne[2] = g->N;
	k.c.ne[1] = g->M; k.c.ne[2] = g->N;
	k.a.nb[0] = g->stride_a;
	k.b.nb[0] = g->stride_b;
	k.c.nb[0] = g->stride_c;
	if (g->trans_a) { k.a.nb[1] = 1; k.a.nb[2] = g->lda; }
	else { k.a.nb[1] = g->lda; k.a.nb[2] = 1; }
	if (g->trans_b) { k.b.nb[1] = 1; k.b.nb[2] = g->ldb; }
	else { k.b.nb[1] = g->ldb; k.b.nb[2] = 1; }
	k.c.nb[1] = g->ldc;
	k.c.nb[2] = 1;
	if (g->batch == 1) {
		k.a.nb[0] = g->M * g->K;
		k.b.nb[0] = g->K * g->N;
		k.c.nb[0] = g->M * g->N;
	}
	k.dt = g->dt_ab;
	k.cdt = FW_F32;
	k.accumulate = g->accumulate;
	return mm_run(&k, a, b, c, NULL, &err);
}

/* --- which kernel a dtype gets on this CPU ---------------------------------------- */

const char *fw_matmul_kernel(enum fw_dtype dt, char *buf, size_t len)
{
	struct fw_err err;
	struct mm_operand a = { .ndim = 2, .ne = { 256, 256 }, .nb = { 256, 1 } };
	dnnl_primitive_t prim = NULL;
	char impl[128];

	pthread_mutex_lock(&mm_lock);
	if (dnnl_ready(&err) != FW_OK) {
		pthread_mutex_unlock(&mm_lock);
		snprintf(buf, len, "none (no oneDNN CPU engine)");
		return buf;
	}
	bool native = native_dtype(dt);
	if (native && primitive_create(&prim, &a, &a, &a, dt, FW_F32, false, false, impl,
				       sizeof(impl))) {
		snprintf(buf, len, "oneDNN %s", impl);
	} else if (dt != FW_F32 && primitive_create(&prim, &a, &a, &a, FW_F32, FW_F32, false, false,
						    impl, sizeof(impl))) {
		snprintf(buf, len, "widened to f32, then oneDNN %s (%s)", impl,
			 mm.force_fallback ? "forced by FW_MATMUL_FALLBACK" :
			 native ? "oneDNN has no kernel for this CPU" :
			 "oneDNN has no native bf16 kernel for this CPU");
	} else {
		snprintf(buf, len, "none: oneDNN rejected a %s product", fw_dtype_name(dt));
	}
	if (prim)
		dnnl_primitive_destroy(prim);
	pthread_mutex_unlock(&mm_lock);
	return buf;
}
