/* matmul.c - batched matrix multiply through oneDNN, forward and backward.
 *
 * Every product is C (..., M, N) (+)= A (..., M, K) B (..., K, N) on strided
 * operands: transposes and permuted views are only strides, so attention's
 * q @ k^T runs on the views of the fused qkv projection without a copy.
 * oneDNN primitives are cached by their full descriptor.
 */
#include <string.h>

#include <oneapi/dnnl/dnnl.h>

#include "internal.h"

/* A strided operand, logical shape (..., rows, cols), ndim 2..4. */
struct mm_operand {
	int ndim;
	int64_t ne[FW_MAX_DIMS];
	int64_t nb[FW_MAX_DIMS];
};

struct mm_key {
	struct mm_operand a, b, c;
	int dt;                      /* enum fw_dtype of a and b; c is f32 */
	int accumulate;
};

struct mm_entry {
	struct mm_key key;
	bool used;
	dnnl_primitive_t prim;
	dnnl_memory_t mem_a, mem_b, mem_c;
};

#define MM_CACHE_SIZE 512

static struct {
	bool ready;
	dnnl_engine_t engine;
	dnnl_stream_t stream;
	struct mm_entry entries[MM_CACHE_SIZE];
	int n_entries;
} mm;

static enum fw_status dnnl_ready(struct fw_err *err)
{
	if (mm.ready)
		return FW_OK;
	if (dnnl_engine_create(&mm.engine, dnnl_cpu, 0) != dnnl_success ||
	    dnnl_stream_create(&mm.stream, mm.engine, dnnl_stream_default_flags) != dnnl_success)
		return fw_errorf(err, FW_ERR_INTERNAL, "matmul: cannot create a oneDNN CPU engine");
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
	memset(e, 0, sizeof(*e));
}

void fw_gemm_cache_clear(void)
{
	for (int i = 0; i < MM_CACHE_SIZE; i++)
		if (mm.entries[i].used)
			entry_release(&mm.entries[i]);
	mm.n_entries = 0;
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
	return dnnl_memory_desc_init_by_strides(md, o->ndim, o->ne, dnnl_dt(dt), o->nb) ==
	       dnnl_success;
}

static enum fw_status entry_create(struct mm_entry *e, const struct mm_key *k,
				   struct fw_err *err)
{
	dnnl_memory_desc_t a_md, b_md, c_md;
	dnnl_matmul_desc_t desc;
	dnnl_primitive_attr_t attr = NULL;
	dnnl_post_ops_t po = NULL;
	dnnl_primitive_desc_t pd = NULL;
	enum fw_status s = FW_ERR_INTERNAL;

	memset(e, 0, sizeof(*e));
	e->key = *k;
	if (!md_init(&a_md, &k->a, k->dt) || !md_init(&b_md, &k->b, k->dt) ||
	    !md_init(&c_md, &k->c, FW_F32))
		goto fail;
	if (dnnl_matmul_desc_init(&desc, &a_md, &b_md, NULL, &c_md) != dnnl_success)
		goto fail;
	if (dnnl_primitive_attr_create(&attr) != dnnl_success)
		goto fail;
	if (k->accumulate) {
		if (dnnl_post_ops_create(&po) != dnnl_success ||
		    dnnl_post_ops_append_sum(po, 1.0f) != dnnl_success ||
		    dnnl_primitive_attr_set_post_ops(attr, po) != dnnl_success)
			goto fail;
	}
	if (dnnl_primitive_desc_create(&pd, &desc, attr, mm.engine, NULL) != dnnl_success)
		goto fail;
	if (dnnl_primitive_create(&e->prim, pd) != dnnl_success)
		goto fail;
	if (dnnl_memory_create(&e->mem_a, &a_md, mm.engine, DNNL_MEMORY_NONE) != dnnl_success ||
	    dnnl_memory_create(&e->mem_b, &b_md, mm.engine, DNNL_MEMORY_NONE) != dnnl_success ||
	    dnnl_memory_create(&e->mem_c, &c_md, mm.engine, DNNL_MEMORY_NONE) != dnnl_success)
		goto fail;
	e->used = true;
	s = FW_OK;
	goto out;
fail:
	entry_release(e);
	fw_errorf(err, FW_ERR_INTERNAL, "matmul: oneDNN rejected a %dx%dx%d %s product",
		  (int)k->c.ne[k->c.ndim - 2], (int)k->c.ne[k->c.ndim - 1],
		  (int)k->a.ne[k->a.ndim - 1], fw_dtype_name(k->dt));
out:
	if (pd)
		dnnl_primitive_desc_destroy(pd);
	if (po)
		dnnl_post_ops_destroy(po);
	if (attr)
		dnnl_primitive_attr_destroy(attr);
	return s;
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
				fw_gemm_cache_clear();   /* rare: many shapes; start over */
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

/* c (+)= a b for strided operands of one descriptor. */
static enum fw_status mm_run(const struct mm_key *k, const void *a, const void *b, float *c,
			     struct fw_err *err)
{
	if (dnnl_ready(err) != FW_OK)
		return err->status;
	struct mm_entry *e = entry_get(k, err);
	if (!e)
		return err->status;
	dnnl_memory_set_data_handle(e->mem_a, (void *)a);
	dnnl_memory_set_data_handle(e->mem_b, (void *)b);
	dnnl_memory_set_data_handle(e->mem_c, c);
	dnnl_exec_arg_t args[3] = {
		{ DNNL_ARG_SRC, e->mem_a },
		{ DNNL_ARG_WEIGHTS, e->mem_b },
		{ DNNL_ARG_DST, e->mem_c },
	};
	if (dnnl_primitive_execute(e->prim, mm.stream, 3, args) != dnnl_success ||
	    dnnl_stream_wait(mm.stream) != dnnl_success)
		return fw_errorf(err, FW_ERR_INTERNAL, "matmul: oneDNN execution failed");
	return FW_OK;
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

/* c (+)= a b where b may lack a's batch dims (then broadcast). */
static enum fw_status mm_product(struct mm_operand a, struct mm_operand b, struct mm_operand c,
				 int dt, bool accumulate, const void *pa, const void *pb,
				 float *pc, struct fw_err *err)
{
	struct mm_key k;
	int last = c.ndim - 1;
	/* oneDNN has fast kernels for row-major destinations only (a column-major
	 * one falls back to its reference code, ~100x slower): compute
	 * C^T = B^T A^T instead. */
	if (c.nb[last] != 1 && c.nb[last - 1] == 1)
		return mm_product(transposed(b), transposed(a), transposed(c), dt, accumulate,
				  pb, pa, pc, err);
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
	k.accumulate = accumulate;
	return mm_run(&k, pa, pb, pc, err);
}

/* dB (K, N) += sum over batches of A_i^T dC_i, for b broadcast over a's batch. */
static enum fw_status mm_reduce_batches(struct mm_operand a, struct mm_operand dc,
					struct mm_operand db, const void *pa, const void *pdc,
					float *pdb, int dt, struct fw_err *err)
{
	struct mm_operand fa = a, fc = dc;
	if (fold_rows(&fa) && fold_rows(&fc))
		return mm_product(transposed(fa), fc, db, dt, true, pa, pdc, pdb, err);
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
		enum fw_status s = mm_product(transposed(a2), c2, db, dt, true,
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
	if (a->dtype != b->dtype || (a->dtype != FW_F32 && a->dtype != FW_BF16))
		return fw_errorf(err, FW_ERR_SHAPE, "matmul: operands are %s and %s; need both f32 or both bf16",
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
	out->dtype = FW_F32;
	out->ndim = na;
	for (int i = 0; i < na - 2; i++)
		out->ne[i] = a->ne[i];
	out->ne[na - 2] = M;
	out->ne[na - 1] = N;
	return FW_OK;
}

static void matmul_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	const struct fw_tensor *a = out->src[0], *b = out->src[1];
	struct fw_err err;
	enum fw_status s = mm_product(operand(a, out->params[0].i), operand(b, out->params[1].i),
				      operand(out, false), a->dtype, false, a->data, b->data,
				      out->data, &err);
	FW_ASSERT(s == FW_OK);
}

static void matmul_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	const struct fw_tensor *a = out->src[0], *b = out->src[1];
	bool ta = out->params[0].i, tb = out->params[1].i;
	struct mm_operand dc = operand(out->grad, false);
	const void *pdc = out->grad->data;
	int dt = a->dtype;
	struct fw_err err;
	enum fw_status s;

	/* bf16 products take the output gradient rounded to bf16 (as autocast
	 * does); the products still accumulate in f32. */
	if (dt == FW_BF16) {
		FW_ASSERT(ex->ws_size >= (size_t)fw_nelem(out) * 2);
		fw_convert(ex->ws, FW_BF16, out->grad->data, FW_F32, fw_nelem(out));
		pdc = ex->ws;
	}
	if (a->grad) {
		/* dA (.., M, K) += dC (.., M, N) B^T (.., N, K) */
		struct mm_operand bt = transposed(operand(b, tb));
		s = mm_product(dc, bt, grad_operand(a, ta), dt, true, pdc, b->data,
			       a->grad->data, &err);
		FW_ASSERT(s == FW_OK);
	}
	if (b->grad) {
		/* dB (.., K, N) += A^T (.., K, M) dC (.., M, N) */
		struct mm_operand at = operand(a, ta);
		struct mm_operand db = grad_operand(b, tb);
		if (b->ndim == a->ndim)
			s = mm_product(transposed(at), dc, db, dt, true, a->data, pdc,
				       b->grad->data, &err);
		else
			s = mm_reduce_batches(at, dc, db, a->data, pdc, b->grad->data, dt, &err);
		FW_ASSERT(s == FW_OK);
	}
}

static size_t matmul_workspace(const struct fw_tensor *out)
{
	return out->src[0]->dtype == FW_BF16 ? (size_t)fw_nelem(out) * 2 : 0;
}

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
	.flags = FW_OPF_STRIDED,
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
	k.accumulate = g->accumulate;
	return mm_run(&k, a, b, c, &err);
}
