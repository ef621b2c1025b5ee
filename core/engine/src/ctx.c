/* ctx.c - contexts: the tensors they own and their persistent memory. */
#include <stdarg.h>
#include <stdio.h>
#include <math.h>
#include <string.h>

#include "internal.h"

struct fw_ctx *fw_ctx_new(void)
{
	struct fw_ctx *ctx = fw_calloc(1, sizeof(*ctx));
	return ctx;
}

enum fw_status fw_ctx_set_autocast(struct fw_ctx *ctx, enum fw_dtype dt)
{
	if (dt != FW_F32 && dt != FW_BF16 && dt != FW_F16)
		return fw_errorf(&ctx->err, FW_ERR_INVALID, "autocast: %s is not f32, bf16 or f16",
				 fw_dtype_name(dt));
	ctx->autocast = dt;
	return FW_OK;
}

enum fw_dtype fw_ctx_autocast(const struct fw_ctx *ctx)
{
	return ctx->autocast;
}

void fw_ctx_free(struct fw_ctx *ctx)
{
	if (!ctx)
		return;
	for (int i = 0; i < ctx->n_tensors; i++)
		fw_free(ctx->tensors[i]);
	fw_free(ctx->tensors);
	fw_free(ctx->version);
	while (ctx->kept) {
		struct fw_kept *next = ctx->kept->next;
		fw_free(ctx->kept);
		ctx->kept = next;
	}
	struct fw_block *b = ctx->blocks;
	while (b) {
		struct fw_block *next = b->next;
		fw_free(b->ptr);
		fw_free(b);
		b = next;
	}
	fw_free(ctx);
}

uint64_t fw_ctx_version(struct fw_ctx *ctx, struct fw_tensor *t)
{
	if (t->id >= ctx->n_version) {
		int n = ctx->n_tensors > t->id ? ctx->n_tensors : t->id + 1;
		uint64_t *v = fw_calloc((size_t)n, sizeof(*v));
		if (!v)
			return ++ctx->clock;   /* untracked: a new version each time */
		if (ctx->n_version)
			memcpy(v, ctx->version, (size_t)ctx->n_version * sizeof(*v));
		fw_free(ctx->version);
		ctx->version = v;
		ctx->n_version = n;
	}
	if (t->flags & FW_FLAG_WRITTEN) {
		t->flags &= ~(uint32_t)FW_FLAG_WRITTEN;
		ctx->version[t->id] = ++ctx->clock;
	}
	return ctx->version[t->id];
}

struct fw_kept *fw_ctx_kept(struct fw_ctx *ctx, const struct fw_tensor *param,
			    enum fw_dtype dt)
{
	for (struct fw_kept *k = ctx->kept; k; k = k->next)
		if (k->param == param && k->dtype == dt)
			return k;
	struct fw_kept *k = fw_calloc(1, sizeof(*k));
	if (!k) {
		fw_errorf(&ctx->err, FW_ERR_NOMEM, "graph: out of memory");
		return NULL;
	}
	k->data = fw_ctx_alloc(ctx, (size_t)fw_nelem(param) * fw_dtype_size(dt), FW_MEM_WEIGHTS);
	if (!k->data) {
		fw_free(k);
		return NULL;
	}
	k->param = param;
	k->dtype = dt;
	k->next = ctx->kept;
	ctx->kept = k;
	return k;
}

void *fw_ctx_kept_copy(struct fw_ctx *ctx, const struct fw_tensor *p, enum fw_dtype dt)
{
	for (struct fw_kept *k = ctx->kept; k; k = k->next)
		if (k->param == p && k->dtype == dt)
			return k->data;
	return NULL;
}

void fw_ctx_kept_written(struct fw_ctx *ctx, struct fw_tensor *p, enum fw_dtype dt)
{
	fw_tensor_mark_written(p);
	uint64_t ver = fw_ctx_version(ctx, p);    /* other copies of p go stale */
	for (struct fw_kept *k = ctx->kept; k; k = k->next)
		if (k->param == p && k->dtype == dt) {
			k->valid = true;
			k->version = ver;
			k->src = p->data;
		}
}

struct fw_err *fw_ctx_err(struct fw_ctx *ctx)
{
	return &ctx->err;
}

int fw_ctx_n_tensors(const struct fw_ctx *ctx)
{
	return ctx->n_tensors;
}

struct fw_tensor *fw_ctx_tensor(const struct fw_ctx *ctx, int i)
{
	return i >= 0 && i < ctx->n_tensors ? ctx->tensors[i] : NULL;
}

struct fw_tensor *fw_ctx_find(const struct fw_ctx *ctx, const char *name)
{
	for (int i = 0; i < ctx->n_tensors; i++)
		if (strcmp(ctx->tensors[i]->name, name) == 0)
			return ctx->tensors[i];
	return NULL;
}

void fw_tensor_set_name(struct fw_tensor *t, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(t->name, sizeof(t->name), fmt, ap);
	va_end(ap);
}

struct fw_tensor *fw_tensor_new(struct fw_ctx *ctx, enum fw_dtype dt, int ndim,
				const int64_t *shape)
{
	if (ndim < 0 || ndim > FW_MAX_DIMS || (unsigned)dt >= FW_DTYPE_COUNT) {
		fw_errorf(&ctx->err, FW_ERR_INVALID, "tensor: %d dims or dtype %d unsupported",
			  ndim, (int)dt);
		return NULL;
	}
	for (int i = 0; i < ndim; i++) {
		if (shape[i] <= 0) {
			fw_errorf(&ctx->err, FW_ERR_SHAPE,
				  "tensor: dimension %d has size %lld", i, (long long)shape[i]);
			return NULL;
		}
	}
	if (ctx->n_tensors == ctx->cap_tensors) {
		int cap = ctx->cap_tensors ? 2 * ctx->cap_tensors : 256;
		struct fw_tensor **nt = fw_malloc((size_t)cap * sizeof(*nt));
		if (!nt) {
			fw_errorf(&ctx->err, FW_ERR_NOMEM, "tensor: out of memory");
			return NULL;
		}
		if (ctx->n_tensors)
			memcpy(nt, ctx->tensors, (size_t)ctx->n_tensors * sizeof(*nt));
		fw_free(ctx->tensors);
		ctx->tensors = nt;
		ctx->cap_tensors = cap;
	}
	struct fw_tensor *t = fw_calloc(1, sizeof(*t));
	if (!t) {
		fw_errorf(&ctx->err, FW_ERR_NOMEM, "tensor: out of memory");
		return NULL;
	}
	t->dtype = dt;
	t->ndim = ndim;
	for (int i = 0; i < ndim; i++)
		t->ne[i] = shape[i];
	fw_set_contiguous_strides(t);
	t->id = ctx->n_tensors;
	t->segment = ctx->segment_cur;
	ctx->tensors[ctx->n_tensors++] = t;
	return t;
}

static struct fw_tensor *leaf_new(struct fw_ctx *ctx, const char *name, enum fw_dtype dt,
				  int ndim, const int64_t *shape, uint32_t flags)
{
	if (!name || !*name) {
		fw_errorf(&ctx->err, FW_ERR_INVALID, "tensor: a parameter or input needs a name");
		return NULL;
	}
	if (fw_ctx_find(ctx, name)) {
		fw_errorf(&ctx->err, FW_ERR_INVALID, "tensor: name '%s' is already used", name);
		return NULL;
	}
	struct fw_tensor *t = fw_tensor_new(ctx, dt, ndim, shape);
	if (!t)
		return NULL;
	t->flags = flags;
	t->segment = 0;
	snprintf(t->name, sizeof(t->name), "%s", name);
	return t;
}

struct fw_tensor *fw_param(struct fw_ctx *ctx, const char *name, enum fw_dtype dt,
			   int ndim, const int64_t *shape, bool trainable)
{
	if (trainable && dt != FW_F32) {
		fw_errorf(&ctx->err, FW_ERR_UNSUPPORTED,
			  "param '%s': trainable parameters must be f32 (got %s)",
			  name ? name : "?", fw_dtype_name(dt));
		return NULL;
	}
	uint32_t f = FW_FLAG_PARAM | (trainable ? FW_FLAG_TRAINABLE | FW_FLAG_NEEDS_GRAD : 0);
	return leaf_new(ctx, name, dt, ndim, shape, f);
}

struct fw_tensor *fw_input(struct fw_ctx *ctx, const char *name, enum fw_dtype dt,
			   int ndim, const int64_t *shape)
{
	return leaf_new(ctx, name, dt, ndim, shape, FW_FLAG_INPUT);
}

enum fw_status fw_param_set_trainable(struct fw_ctx *ctx, struct fw_tensor *p, bool on)
{
	if (!(p->flags & FW_FLAG_PARAM))
		return fw_errorf(&ctx->err, FW_ERR_INVALID, "'%s' is not a parameter", p->name);
	if (p->data)
		return fw_errorf(&ctx->err, FW_ERR_INVALID,
				 "'%s': trainability is fixed once parameters are allocated",
				 p->name);
	if (on && p->dtype != FW_F32)
		return fw_errorf(&ctx->err, FW_ERR_UNSUPPORTED,
				 "'%s': trainable parameters must be f32", p->name);
	if (on)
		p->flags |= FW_FLAG_TRAINABLE | FW_FLAG_NEEDS_GRAD;
	else
		p->flags &= ~(uint32_t)(FW_FLAG_TRAINABLE | FW_FLAG_NEEDS_GRAD);
	return FW_OK;
}

void fw_ctx_checkpoint_begin(struct fw_ctx *ctx)
{
	ctx->segment_cur = ++ctx->segment_next;
}

void fw_ctx_checkpoint_end(struct fw_ctx *ctx)
{
	ctx->segment_cur = 0;
}

void *fw_ctx_alloc(struct fw_ctx *ctx, size_t bytes, enum fw_mem_category cat)
{
	struct fw_block *b = fw_calloc(1, sizeof(*b));
	void *p = b ? fw_calloc(1, bytes ? bytes : 1) : NULL;
	if (!p) {
		fw_free(b);
		fw_errorf(&ctx->err, FW_ERR_NOMEM, "out of memory allocating %zu bytes of %s",
			  bytes, fw_mem_category_name(cat));
		return NULL;
	}
	b->ptr = p;
	b->bytes = bytes;
	b->cat = cat;
	b->next = ctx->blocks;
	ctx->blocks = b;
	ctx->mem[cat] += bytes;
	return p;
}

static size_t align_up(size_t n)
{
	return (n + FW_ALIGN - 1) & ~(size_t)(FW_ALIGN - 1);
}

enum fw_status fw_ctx_alloc_params(struct fw_ctx *ctx)
{
	size_t sz[FW_MEM_CATEGORY_COUNT] = { 0 };
	int n = ctx->n_tensors;

	for (int i = 0; i < n; i++) {
		struct fw_tensor *t = ctx->tensors[i];
		if (t->data || !(t->flags & (FW_FLAG_PARAM | FW_FLAG_INPUT)))
			continue;
		size_t b = align_up(fw_nbytes(t));
		if (t->flags & FW_FLAG_INPUT) {
			sz[FW_MEM_INPUTS] += b;
		} else {
			sz[FW_MEM_WEIGHTS] += b;
			if (t->flags & FW_FLAG_TRAINABLE)
				sz[FW_MEM_GRADIENTS] += align_up((size_t)fw_nelem(t) * 4);
		}
	}
	char *base[FW_MEM_CATEGORY_COUNT] = { 0 };
	for (int c = 0; c < FW_MEM_CATEGORY_COUNT; c++) {
		if (!sz[c])
			continue;
		base[c] = fw_ctx_alloc(ctx, sz[c], c);
		if (!base[c])
			return ctx->err.status;
	}
	for (int i = 0; i < n; i++) {
		struct fw_tensor *t = ctx->tensors[i];
		if (t->data || !(t->flags & (FW_FLAG_PARAM | FW_FLAG_INPUT)))
			continue;
		enum fw_mem_category c = (t->flags & FW_FLAG_INPUT) ? FW_MEM_INPUTS : FW_MEM_WEIGHTS;
		t->data = base[c];
		base[c] += align_up(fw_nbytes(t));
		if (!(t->flags & FW_FLAG_TRAINABLE))
			continue;
		struct fw_tensor *g = fw_tensor_new(ctx, FW_F32, t->ndim, t->ne);
		if (!g)
			return ctx->err.status;
		g->flags = FW_FLAG_GRAD;
		g->segment = 0;
		snprintf(g->name, sizeof(g->name), "%.80s.grad", t->name);
		g->data = base[FW_MEM_GRADIENTS];
		base[FW_MEM_GRADIENTS] += align_up((size_t)fw_nelem(t) * 4);
		t->grad = g;
	}
	return FW_OK;
}

const char *fw_mem_category_name(enum fw_mem_category c)
{
	static const char *const names[FW_MEM_CATEGORY_COUNT] = {
		"weights", "gradients", "optimizer", "activations", "inputs", "workspace",
	};
	return (unsigned)c < FW_MEM_CATEGORY_COUNT ? names[c] : "?";
}

/* --- parameter initialisation -------------------------------------------------- */

void fw_param_set_init(struct fw_tensor *p, enum fw_init kind, float value)
{
	p->params[0].i = kind;
	p->params[1].f = value;
}

uint64_t fw_hash_str(const char *s, uint64_t seed)
{
	uint64_t h = 1469598103934665603ull ^ seed;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ull;
	return h;
}

double fw_rng_uniform(uint64_t key, uint64_t counter)
{
	uint64_t hi = fw_rng_u32(key, 2 * counter), lo = fw_rng_u32(key, 2 * counter + 1);
	return (double)((hi << 21) ^ lo) / 9007199254740992.0;   /* 53 bits */
}

float fw_rng_normal(uint64_t key, uint64_t counter)
{
	/* Box-Muller on two uniforms of this counter. */
	double u = fw_rng_uniform(key, 2 * counter) + 1e-300;
	double v = fw_rng_uniform(key, 2 * counter + 1);
	return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

enum fw_status fw_ctx_init_params(struct fw_ctx *ctx, uint64_t seed)
{
	for (int i = 0; i < ctx->n_tensors; i++) {
		struct fw_tensor *t = ctx->tensors[i];
		if (!(t->flags & FW_FLAG_PARAM))
			continue;
		if (!t->data)
			return fw_errorf(&ctx->err, FW_ERR_INVALID,
					 "init: parameter '%s' is not allocated", t->name);
		if (t->dtype != FW_F32)
			continue;      /* quantised/bf16 weights come from files */
		fw_tensor_mark_written(t);
		float *d = t->data;
		int64_t n = fw_nelem(t);
		uint64_t key = fw_hash_str(t->name, seed);
		float v = t->params[1].f;
		switch (t->params[0].i) {
		case FW_INIT_NORMAL:
			#pragma omp parallel for schedule(static) if (n > 65536)
			for (int64_t j = 0; j < n; j++)
				d[j] = v * fw_rng_normal(key, (uint64_t)j);
			break;
		case FW_INIT_UNIFORM:
			#pragma omp parallel for schedule(static) if (n > 65536)
			for (int64_t j = 0; j < n; j++)
				d[j] = v * (float)(2.0 * fw_rng_uniform(key, (uint64_t)j) - 1.0);
			break;
		case FW_INIT_CONST:
			for (int64_t j = 0; j < n; j++)
				d[j] = v;
			break;
		default:
			memset(d, 0, (size_t)n * 4);
		}
	}
	return FW_OK;
}
