/* peft/adalora - AdaLoRA as Hugging Face PEFT defines it (Zhang et al., 2023).
 *
 * Every targeted linear layer y = x W^T + b becomes (PEFT's SVDLinear)
 *
 *     y = x W^T + b + (x (A * E)^T B^T) * scaling / (ranknum + 1e-5)
 *
 * with A (r, in), E (r, 1) the singular values, B (out, r), r = init_r,
 * ranknum = init_r (PEFT never lowers it), scaling = lora_alpha. A and B
 * start N(0, 0.02), E at 0, so a new adapter is a no-op.
 *
 * PEFT's RankAllocator runs in after_backward, i.e. after every optimizer
 * step with the step's (clipped) gradients, without a user call: the
 * sensitivity |p * grad p| of every entry of A, B and E is smoothed (beta1)
 * and its uncertainty |ipt - ema| too (beta2); a triplet's score is the mean
 * score of its A row, the mean of its B column and its E entry. The total
 * rank budget follows the cubic schedule; every deltaT steps the lowest
 * scoring triplets (score <= the (init_bgt - budget)-th smallest) get E = 0.
 * At step total_step - tfinal the final allocation fixes the rank pattern,
 * which masks E at every later step.
 *
 * extra_loss adds orth_reg_weight * mean over all A and B of
 * ||P P^T - I||_F (A) and ||P^T P - I||_F (B), as PEFT's forward does
 * (PEFT adds it to every loss the model returns, eval included).
 *
 * The importance EMAs and each layer's rank pattern are FW_FLAG_STATE
 * tensors: checkpointed and restored on resume, not model parameters. The
 * rank pattern also goes into the adapter file; the PEFT export keeps only
 * the unmasked triplets, with "rank_pattern" in adapter_config.json.
 */
#include <fnmatch.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw/plugin.h"
#include "../common/peft_file.h"

#define ADALORA_KIND "peft/adalora"

enum { P_A = 0, P_B, P_E, N_PARTS };
static const char *const part_names[N_PARTS] = { "lora_A", "lora_B", "lora_E" };

struct pattern {
	const char *key;
	bool matched;
};

struct ada_layer {
	char name[FW_NAME_MAX];
	struct fw_tensor *w, *bias;
	struct fw_tensor *p[N_PARTS];            /* A (r, in), B (out, r), E (r, 1) */
	struct fw_tensor *ipt[N_PARTS], *unc[N_PARTS];   /* EMAs of sensitivity, uncertainty */
	struct fw_tensor *pattern;               /* (r, 1): 1 = triplet kept */
	struct fw_tensor *gate;                  /* scale node: scaling / (ranknum + 1e-5) */
	int64_t in, out, r;
	float factor;
};

struct ada {
	const struct fw_host *host;
	const struct fw_options *opts;
	int64_t init_r, target_r, tinit, tfinal, delta_t, total_step;
	double beta1, beta2, orth_w, alpha;
	bool auto_targets, merged, log_masks;
	char *text;
	struct pattern *targets;
	int n_targets;
	int orth_op;

	struct fw_ctx *ctx;
	struct ada_layer *layers;
	int n_layers, cap_layers, n_linears;
	char first[FW_NAME_MAX];         /* the model's first routed linear layer */
	float *scores;                           /* init_bgt triplet scores, then sorted */
};

static const char *const auto_names[] = { "c_attn", "q_proj", "v_proj", "query", "value",
					  "q", "v" };

static const char *last_part(const char *name)
{
	const char *dot = strrchr(name, '.');
	return dot ? dot + 1 : name;
}

static bool targeted(struct ada *s, const char *name)
{
	if (s->auto_targets) {
		for (size_t i = 0; i < sizeof(auto_names) / sizeof(auto_names[0]); i++)
			if (!strcmp(last_part(name), auto_names[i]))
				return true;
		return false;
	}
	bool hit = false;
	for (int i = 0; i < s->n_targets; i++)
		if (peft_match(s->targets[i].key, name))
			hit = s->targets[i].matched = true;
	return hit;
}

static struct fw_tensor *ctx_fail(const struct ada *s, struct fw_ctx *ctx, struct fw_err *err)
{
	const struct fw_err *ce = s->host->ctx_err(ctx);
	s->host->errorf(err, ce->status ? ce->status : FW_ERR_INTERNAL, "peft/adalora: %s",
			ce->msg);
	return NULL;
}

static void forget_model(struct ada *s)
{
	s->n_layers = 0;
	s->n_linears = 0;
	s->merged = false;
	for (int i = 0; i < s->n_targets; i++)
		s->targets[i].matched = false;
	if (s->scores)
		s->host->free(s->scores);
	s->scores = NULL;
}

/* --- the orthogonality op: ||P P^T - I||_F (rows) or ||P^T P - I||_F (columns) ------- */

static enum fw_status orth_infer(struct fw_tensor *out, struct fw_err *err)
{
	const struct fw_tensor *p = out->src[0];
	if (p->ndim != 2 || p->dtype != FW_F32 || !fw_is_contiguous(p))
		return fw_errorf(err, FW_ERR_SHAPE, "adalora_orth: needs a contiguous 2-D f32 "
				 "tensor");
	out->dtype = FW_F32;
	out->ndim = 1;
	out->ne[0] = 1;
	return FW_OK;
}

/* M = P P^T - I (rows: P is (r, n)) or P^T P - I (P is (n, r)); r x r, in doubles. */
static void orth_gram(const struct fw_tensor *p, bool rows, double *M, int64_t *r_out)
{
	const float *P = fw_f32(p);
	int64_t r = rows ? p->ne[0] : p->ne[1], n = rows ? p->ne[1] : p->ne[0];
	for (int64_t i = 0; i < r; i++)
		for (int64_t j = 0; j < r; j++) {
			double acc = 0;
			for (int64_t k = 0; k < n; k++)
				acc += rows ? (double)P[i * n + k] * P[j * n + k] :
					      (double)P[k * r + i] * P[k * r + j];
			M[i * r + j] = acc - (i == j);
		}
	*r_out = r;
}

static double frob(const double *M, int64_t r)
{
	double s = 0;
	for (int64_t i = 0; i < r * r; i++)
		s += M[i] * M[i];
	return sqrt(s);
}

static void orth_forward(struct fw_tensor *out, const struct fw_exec *ex)
{
	int64_t r;
	orth_gram(out->src[0], out->params[0].i, ex->ws, &r);
	fw_f32(out)[0] = (float)frob(ex->ws, r);
}

/* d||M||/dP = 2 M P / ||M|| (rows) or 2 P M / ||M|| (columns). */
static void orth_backward(struct fw_tensor *out, const struct fw_exec *ex)
{
	const struct fw_tensor *p = out->src[0];
	if (!p->grad)
		return;
	bool rows = out->params[0].i;
	double *M = ex->ws;
	int64_t r;
	orth_gram(p, rows, M, &r);
	double f = frob(M, r);
	if (!(f > 0))
		return;
	double c = 2.0 * fw_f32(out->grad)[0] / f;
	const float *P = fw_f32(p);
	float *G = fw_f32(p->grad);
	int64_t n = rows ? p->ne[1] : p->ne[0];
	for (int64_t a = 0; a < (rows ? r : n); a++)
		for (int64_t b = 0; b < (rows ? n : r); b++) {
			double acc = 0;
			for (int64_t k = 0; k < r; k++)
				acc += rows ? M[a * r + k] * P[k * n + b] : P[a * r + k] * M[k * r + b];
			G[a * (rows ? n : r) + b] += (float)(c * acc);
		}
}

static size_t orth_ws(const struct fw_tensor *out)
{
	const struct fw_tensor *p = out->src[0];
	int64_t r = out->params[0].i ? p->ne[0] : p->ne[1];
	return sizeof(double) * (size_t)(r * r);
}

static const struct fw_op_i orth_op = {
	.size = sizeof(struct fw_op_i), .name = "adalora_orth", .infer = orth_infer,
	.forward = orth_forward, .backward = orth_backward, .workspace = orth_ws,
};

/* --- hooks ----------------------------------------------------------------------------- */

/* A non-trainable tensor of the plugin's running state. */
static struct fw_tensor *state_tensor(struct ada *s, struct fw_model *m, const char *layer,
				      const char *what, int64_t d0, int64_t d1, float init)
{
	char n[FW_NAME_MAX + 32];
	snprintf(n, sizeof(n), "%s.%s", layer, what);
	struct fw_tensor *t = s->host->param(m->ctx, n, FW_F32, 2, (int64_t[]){ d0, d1 }, false);
	if (t) {
		t->flags |= FW_FLAG_STATE;
		s->host->init_const(m, t, init);
	}
	return t;
}

static struct fw_tensor *ada_wrap_linear(void *state, struct fw_model *m, const char *name,
					 struct fw_tensor *x, struct fw_tensor *w,
					 struct fw_tensor *bias, struct fw_err *err)
{
	struct ada *s = state;
	const struct fw_host *h = s->host;
	struct fw_ctx *ctx = m->ctx;
	if (peft_new_model(s->ctx, ctx, s->n_linears, s->first, name)) {
		forget_model(s);
		s->ctx = ctx;
	}
	if (s->n_linears++ == 0)
		snprintf(s->first, sizeof(s->first), "%s", name);
	if (!targeted(s, name))
		return NULL;
	if (w->ndim != 2 || w->dtype != FW_F32) {
		h->errorf(err, FW_ERR_UNSUPPORTED, "peft/adalora: %s: the base weight is %s with "
			  "%d dimensions; AdaLoRA needs a 2-D f32 weight", name,
			  fw_dtype_name(w->dtype), w->ndim);
		return NULL;
	}
	if (strlen(name) + 24 >= FW_NAME_MAX) {
		h->errorf(err, FW_ERR_INVALID, "peft/adalora: %s: name too long for its adapter "
			  "tensors", name);
		return NULL;
	}
	if (!peft_grow(h, (void **)&s->layers, s->n_layers, &s->cap_layers, sizeof(*s->layers))) {
		h->errorf(err, FW_ERR_NOMEM, "peft/adalora: out of memory");
		return NULL;
	}
	int64_t out = w->ne[0], in = w->ne[1], r = s->init_r;
	struct ada_layer ly = { .w = w, .bias = bias, .in = in, .out = out, .r = r };
	snprintf(ly.name, sizeof(ly.name), "%s", name);
	int64_t shp[N_PARTS][2] = { { r, in }, { out, r }, { r, 1 } };
	for (int k = 0; k < N_PARTS; k++) {
		char n[FW_NAME_MAX + 32], what[48];
		snprintf(n, sizeof(n), "%s.%s", name, part_names[k]);
		ly.p[k] = h->param(ctx, n, FW_F32, 2, shp[k], true);
		snprintf(what, sizeof(what), "%s.exp_avg_ipt", part_names[k]);
		ly.ipt[k] = state_tensor(s, m, name, what, shp[k][0], shp[k][1], 0.0f);
		snprintf(what, sizeof(what), "%s.exp_avg_unc", part_names[k]);
		ly.unc[k] = state_tensor(s, m, name, what, shp[k][0], shp[k][1], 0.0f);
		if (!ly.p[k] || !ly.ipt[k] || !ly.unc[k])
			return ctx_fail(s, ctx, err);
	}
	ly.pattern = state_tensor(s, m, name, "lora_E.rank_pattern", r, 1, 1.0f);
	if (!ly.pattern)
		return ctx_fail(s, ctx, err);
	h->init_normal(m, ly.p[P_A], 0.02f);
	h->init_normal(m, ly.p[P_B], 0.02f);
	h->init_const(m, ly.p[P_E], 0.0f);
	/* PEFT: scaling = lora_alpha; ranknum = r, never lowered. */
	ly.factor = (float)s->alpha / ((float)r + 1e-5f);

	struct fw_tensor *y = fw_linear(ctx, x, w, bias);
	struct fw_tensor *ae = h->mul(ctx, ly.p[P_A], ly.p[P_E]);          /* (r, in) */
	struct fw_tensor *u = h->matmul(ctx, x, ae, false, true);           /* (..., r) */
	ly.gate = h->scale(ctx, u, ly.factor);
	y = h->add(ctx, y, h->matmul(ctx, ly.gate, ly.p[P_B], false, true));
	if (!y)
		return ctx_fail(s, ctx, err);
	s->layers[s->n_layers++] = ly;
	return y;
}

static bool is_param(const struct ada *s, const struct fw_tensor *t)
{
	for (int i = 0; i < s->n_layers; i++)
		for (int k = 0; k < N_PARTS; k++)
			if (s->layers[i].p[k] == t)
				return true;
	return false;
}

static enum fw_status ada_freeze(void *state, struct fw_model *m, struct fw_err *err)
{
	struct ada *s = state;
	const struct fw_host *h = s->host;
	if (s->ctx != m->ctx) {
		forget_model(s);
		s->ctx = m->ctx;
	}
	for (int i = 0; i < s->n_targets; i++)
		if (!s->targets[i].matched)
			return h->errorf(err, FW_ERR_INVALID, "peft/adalora: --adalora-target-modules: "
					 "'%s' matches no linear layer (GPT-2's are h.N.attn.c_attn, "
					 "h.N.attn.c_proj, h.N.mlp.c_fc, h.N.mlp.c_proj)",
					 s->targets[i].key);
	if (s->n_layers == 0)
		return h->errorf(err, FW_ERR_INVALID, "peft/adalora: no linear layer matches %s (%d "
				 "linear layers routed); set --adalora-target-modules",
				 s->auto_targets ? "the default targets (c_attn; q_proj,v_proj; "
				 "query,value; q,v)" : "the targets", s->n_linears);
	int64_t n_train = 0;
	for (int i = 0; i < fw_ctx_n_tensors(m->ctx); i++) {
		struct fw_tensor *t = fw_ctx_tensor(m->ctx, i);
		if (!(t->flags & FW_FLAG_PARAM))
			continue;
		bool on = is_param(s, t) || peft_head_param(t);
		if (fw_param_set_trainable(m->ctx, t, on) != FW_OK)
			return h->errorf(err, FW_ERR_INVALID, "peft/adalora: %s",
					 h->ctx_err(m->ctx)->msg);
		n_train += on ? fw_nelem(t) : 0;
	}
	if (s->scores)
		h->free(s->scores);
	s->scores = h->malloc(sizeof(float) * (size_t)(2 * s->n_layers * s->init_r + 1));
	if (!s->scores)
		return h->errorf(err, FW_ERR_NOMEM, "peft/adalora: out of memory");
	h->log(FW_LOG_DEBUG, "peft/adalora: %d linear layers adapted (init_r %lld, target_r "
	       "%lld); %lld trainable values", s->n_layers, (long long)s->init_r,
	       (long long)s->target_r, (long long)n_train);
	return FW_OK;
}

static struct fw_tensor *ada_extra_loss(void *state, struct fw_model *m, struct fw_err *err)
{
	struct ada *s = state;
	const struct fw_host *h = s->host;
	struct fw_tensor *sum = NULL;
	if (s->orth_w == 0)
		return NULL;                     /* fw's "none" (PEFT refuses 0) */
	for (int i = 0; i < s->n_layers; i++)
		for (int k = P_A; k <= P_B; k++) {
			union fw_param rows = { .i = k == P_A };
			struct fw_tensor *src[1] = { s->layers[i].p[k] };
			struct fw_tensor *n = h->op(m->ctx, s->orth_op, src, 1, &rows, 1);
			sum = sum ? h->add(m->ctx, sum, n) : n;
		}
	if (!sum)
		return s->n_layers ? ctx_fail(s, m->ctx, err) : NULL;
	struct fw_tensor *r = h->scale(m->ctx, sum, (float)(s->orth_w / (2.0 * s->n_layers)));
	return r ? r : ctx_fail(s, m->ctx, err);
}

/* --- rank allocation (PEFT's RankAllocator) ----------------------------------------------- */

/* PEFT's budget_schedule: (budget, whether to mask at this step). */
static int64_t budget_at(const struct ada *s, int64_t step, bool *mask)
{
	int64_t init_bgt = s->init_r * s->n_layers, target_bgt = s->target_r * s->n_layers;
	if (step <= s->tinit) {
		*mask = false;
		return init_bgt;
	}
	if (step > s->total_step - s->tfinal) {
		*mask = true;
		return target_bgt;
	}
	double mul = 1.0 - (double)(step - s->tinit) /
			   (double)(s->total_step - s->tfinal - s->tinit);
	*mask = step % s->delta_t == 0;
	return (int64_t)((double)(init_bgt - target_bgt) * pow(mul, 3) + (double)target_bgt);
}

static void update_ipt(struct ada *s)
{
	float b1 = (float)s->beta1, c1 = (float)(1.0 - s->beta1);
	float b2 = (float)s->beta2, c2 = (float)(1.0 - s->beta2);
	for (int i = 0; i < s->n_layers; i++)
		for (int k = 0; k < N_PARTS; k++) {
			const struct fw_tensor *t = s->layers[i].p[k];
			const float *p = fw_f32(t), *g = t->grad ? fw_f32(t->grad) : NULL;
			float *e = fw_f32(s->layers[i].ipt[k]), *u = fw_f32(s->layers[i].unc[k]);
			for (int64_t j = 0; j < fw_nelem(t); j++) {
				float ipt = g ? fabsf(p[j] * g[j]) : 0.0f;
				float a = b1 * e[j], b = c1 * ipt;
				e[j] = a + b;
				float d = fabsf(ipt - e[j]);
				float x = b2 * u[j], y = c2 * d;
				u[j] = x + y;
			}
		}
}

/* mean over axis of exp_avg_ipt * exp_avg_unc of part k, for triplet q. */
static float part_score(const struct ada_layer *ly, int k, int64_t q)
{
	const float *e = fw_f32(ly->ipt[k]), *u = fw_f32(ly->unc[k]);
	if (k == P_E)
		return e[q] * u[q];
	double acc = 0;
	int64_t n = k == P_A ? ly->in : ly->out;
	for (int64_t j = 0; j < n; j++) {
		int64_t at = k == P_A ? q * ly->in + j : j * ly->r + q;
		acc += (double)(e[at] * u[at]);
	}
	return (float)(acc / (double)n);
}

static int cmp_float(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;
	return (x > y) - (x < y);
}

static void apply_pattern(struct ada *s)
{
	for (int i = 0; i < s->n_layers; i++) {
		const float *pt = fw_f32(s->layers[i].pattern);
		float *E = fw_f32(s->layers[i].p[P_E]);
		for (int64_t q = 0; q < s->layers[i].r; q++)
			if (pt[q] == 0.0f)
				E[q] = 0.0f;
	}
}

/* PEFT's mask_to_budget: the triplets scoring <= the (init_bgt - budget)-th
 * smallest score get E = 0 and leave the rank pattern. */
static void mask_to_budget(struct ada *s, int64_t step, int64_t budget)
{
	int64_t n = 0, k = s->init_r * s->n_layers - budget;
	for (int i = 0; i < s->n_layers; i++) {
		const struct ada_layer *ly = &s->layers[i];
		for (int64_t q = 0; q < ly->r; q++)
			s->scores[n++] = part_score(ly, P_E, q) +
					 (part_score(ly, P_A, q) + part_score(ly, P_B, q));
	}
	float *sorted = s->scores + n, thr = -INFINITY;     /* k <= 0: nothing masked */
	if (k > 0) {
		memcpy(sorted, s->scores, sizeof(float) * (size_t)n);
		qsort(sorted, (size_t)n, sizeof(float), cmp_float);
		thr = sorted[k - 1];
	}
	n = 0;
	for (int i = 0; i < s->n_layers; i++) {
		float *pt = fw_f32(s->layers[i].pattern);
		for (int64_t q = 0; q < s->layers[i].r; q++)
			pt[q] = s->scores[n++] <= thr ? 0.0f : 1.0f;
	}
	apply_pattern(s);
	if (!s->log_masks)
		return;
	char line[4096];
	size_t at = 0;
	for (int i = 0; i < s->n_layers && at + 8 < sizeof(line); i++) {
		const float *pt = fw_f32(s->layers[i].pattern);
		at += (size_t)snprintf(line + at, sizeof(line) - at, " %s ", s->layers[i].name);
		for (int64_t q = 0; q < s->layers[i].r && at + 2 < sizeof(line); q++)
			line[at++] = pt[q] != 0.0f ? '1' : '0';
		line[at] = '\0';
	}
	s->host->log(FW_LOG_INFO, "peft/adalora: step %lld: budget %lld, masks%s",
		     (long long)step, (long long)budget, line);
}

static enum fw_status ada_after_backward(void *state, struct fw_model *m, int64_t step,
					 struct fw_err *err)
{
	struct ada *s = state;
	if (s->ctx != m->ctx || s->n_layers == 0 || !s->scores)
		return s->host->errorf(err, FW_ERR_INVALID, "peft/adalora: no adapter was built");
	if (s->total_step <= 0)
		return s->host->errorf(err, FW_ERR_INVALID, "peft/adalora: --adalora-total-step is "
				       "not set (fwrun takes it from --train-iters)");
	int64_t end = s->total_step - s->tfinal;
	bool mask;
	int64_t budget = budget_at(s, step, &mask);
	if (step < end) {
		update_ipt(s);
		if (mask)
			mask_to_budget(s, step, budget);
	} else if (step == end) {
		mask_to_budget(s, step, budget);
		for (int i = 0; i < s->n_layers; i++)    /* PEFT's reset_ipt */
			for (int k = 0; k < N_PARTS; k++) {
				memset(fw_f32(s->layers[i].ipt[k]), 0, fw_nbytes(s->layers[i].ipt[k]));
				memset(fw_f32(s->layers[i].unc[k]), 0, fw_nbytes(s->layers[i].unc[k]));
			}
	} else {
		apply_pattern(s);
	}
	return FW_OK;
}

/* --- adapter files ------------------------------------------------------------------- */

/* In the file: A, B, E and the rank pattern of every layer. */
static int own_tensors(const struct ada *s, struct fw_tensor **own)
{
	int n = 0;
	for (int i = 0; i < s->n_layers; i++) {
		for (int k = 0; k < N_PARTS; k++)
			own[n++] = s->layers[i].p[k];
		own[n++] = s->layers[i].pattern;
	}
	return n;
}

static enum fw_status file_io(struct ada *s, struct fw_model *m, const char *path, bool saving,
			      struct fw_err *err)
{
	const struct fw_host *h = s->host;
	if (s->merged)
		return h->errorf(err, FW_ERR_INVALID, "peft/adalora: %s: cannot %s an adapter while "
				 "it is merged into the weights (unmerge first)", path,
				 saving ? "save" : "load");
	if (s->ctx != m->ctx || s->n_layers == 0)
		return h->errorf(err, FW_ERR_INVALID, "peft/adalora: %s: no adapter was built", path);
	struct peft_text mods = { .h = h };
	struct fw_tensor **own = h->malloc(sizeof(*own) * (size_t)(4 * s->n_layers + 1));
	if (!own)
		return h->errorf(err, FW_ERR_NOMEM, "peft/adalora: out of memory");
	int n = own_tensors(s, own);
	peft_put(&mods, "%s", "");
	for (int i = 0; i < s->n_layers; i++)
		peft_put(&mods, "%s\t%lld\t%lld\t%lld\t%.9g\n", s->layers[i].name,
			 (long long)s->layers[i].in, (long long)s->layers[i].out,
			 (long long)s->layers[i].r, (double)s->layers[i].factor);
	enum fw_status st;
	static const char *const structural[] = { "adalora-init-r", "adalora-lora-alpha" };
	if (mods.oom)
		st = h->errorf(err, FW_ERR_NOMEM, "peft/adalora: out of memory");
	else if (saving)
		st = peft_save(h, m->ctx, path, ADALORA_KIND, s->opts, own, n, "adalora_modules",
			       mods.s, err);
	else
		st = peft_load(h, m->ctx, path, ADALORA_KIND, s->opts, structural, 2, own, n,
			       "adalora_modules", mods.s, err);
	peft_text_free(&mods);
	h->free(own);
	return st;
}

static enum fw_status ada_save(void *state, struct fw_model *m, const char *path,
			       struct fw_err *err)
{
	return file_io(state, m, path, true, err);
}

static enum fw_status ada_load(void *state, struct fw_model *m, const char *path,
			       struct fw_err *err)
{
	return file_io(state, m, path, false, err);
}

/* --- merging ---------------------------------------------------------------------------- */

struct fold {
	const struct ada_layer *ly;
	float sign;
};

/* Rows [lo, hi) of W += sign * factor * B (A * E). */
static void fold_rows(void *arg, int64_t lo, int64_t hi)
{
	const struct fold *f = arg;
	const struct ada_layer *ly = f->ly;
	const float *A = fw_f32(ly->p[P_A]), *B = fw_f32(ly->p[P_B]), *E = fw_f32(ly->p[P_E]);
	float *W = fw_f32(ly->w);
	for (int64_t o = lo; o < hi; o++)
		for (int64_t k = 0; k < ly->r; k++) {
			float c = f->sign * ly->factor * B[o * ly->r + k] * E[k];
			if (c != 0.0f)
				for (int64_t i = 0; i < ly->in; i++)
					W[o * ly->in + i] += c * A[k * ly->in + i];
		}
}

static enum fw_status fold_all(struct ada *s, struct fw_model *m, bool merging,
			       struct fw_err *err)
{
	const struct fw_host *h = s->host;
	if (s->ctx != m->ctx || s->n_layers == 0)
		return h->errorf(err, FW_ERR_INVALID, "peft/adalora: no adapter was built");
	if (s->merged == merging)
		return h->errorf(err, FW_ERR_INVALID, "peft/adalora: the adapter is %s",
				 merging ? "already merged" : "not merged");
	for (int i = 0; i < s->n_layers; i++)
		if (!s->layers[i].w->data || !s->layers[i].p[P_A]->data)
			return h->errorf(err, FW_ERR_INVALID, "peft/adalora: %s: weights are not "
					 "allocated", s->layers[i].name);
	for (int i = 0; i < s->n_layers; i++) {
		struct fold f = { &s->layers[i], merging ? 1.0f : -1.0f };
		h->parallel_for(s->layers[i].out, fold_rows, &f);
		fw_tensor_mark_written(s->layers[i].w);
		s->layers[i].gate->params[0].f = merging ? 0.0f : s->layers[i].factor;
	}
	s->merged = merging;
	return FW_OK;
}

static enum fw_status ada_merge(void *state, struct fw_model *m, struct fw_err *err)
{
	return fold_all(state, m, true, err);
}

static enum fw_status ada_unmerge(void *state, struct fw_model *m, struct fw_err *err)
{
	return fold_all(state, m, false, err);
}

/* --- PEFT export ----------------------------------------------------------------------------- */

/* A copy of t's rows (axis 0) or columns (axis 1) where keep[q] != 0. */
static struct fw_tensor *kept(const struct fw_host *h, const struct fw_tensor *t, int axis,
			      const float *keep, int64_t r)
{
	int64_t n_keep = 0;
	for (int64_t q = 0; q < r; q++)
		n_keep += keep[q] != 0.0f;
	struct fw_tensor *c = h->malloc(sizeof(*c));
	if (!c)
		return NULL;
	*c = (struct fw_tensor){ .dtype = FW_F32, .ndim = 2 };
	c->ne[0] = axis == 0 ? n_keep : t->ne[0];
	c->ne[1] = axis == 0 ? t->ne[1] : n_keep;
	fw_set_contiguous_strides(c);
	c->data = h->malloc(fw_nbytes(c) + 4);
	if (!c->data) {
		h->free(c);
		return NULL;
	}
	const float *src = fw_f32(t);
	float *dst = fw_f32(c);
	int64_t o = 0;
	for (int64_t i = 0; i < t->ne[0]; i++)
		for (int64_t j = 0; j < t->ne[1]; j++)
			if (keep[axis == 0 ? i : j] != 0.0f)
				dst[o++] = src[i * t->ne[1] + j];
	return c;
}

static enum fw_status ada_export(const struct fw_host *h, const char *adapter, const char *dir,
				 const char *base_model, struct fw_err *err)
{
	char *mods = NULL, *cfgtext = NULL, *base_list = NULL;
	struct peft_tensors ts = { .h = h };
	struct peft_text cfg = { .h = h }, tg = { .h = h }, rp = { .h = h };
	struct peft_heads heads = { .mods = { .h = h } };
	struct fw_tensor *tp[64] = { 0 };
	char *keys[64] = { 0 };
	int n = 0;
	enum fw_status st;
	if ((st = peft_check_kind(h, ADALORA_KIND, adapter, err)) != FW_OK ||
	    (st = peft_attr(h, ADALORA_KIND, adapter, "adalora_modules", &mods, err)) != FW_OK ||
	    (st = peft_attr(h, ADALORA_KIND, adapter, "config", &cfgtext, err)) != FW_OK ||
	    (st = peft_attr(h, ADALORA_KIND, adapter, "base_tensors", &base_list, err)) != FW_OK ||
	    (st = peft_tensors_read(h, ADALORA_KIND, adapter, &ts, err)) != FW_OK ||
	    (st = peft_heads_collect_as(h, ADALORA_KIND, &ts, "base_model.model.", &heads,
					err)) != FW_OK)
		goto out;
	/* a T5's names are PEFT's as they are; an encoder's Linear layers are
	 * not GPT-2's Conv1D (fan_in_fan_out) */
	const char *task = peft_encoder_task(base_list, &ts);
	bool encoder = task && strcmp(task, "seq2seq");
	for (const char *s = mods; *s; s = strchr(s, '\n') ? strchr(s, '\n') + 1 : s + strlen(s)) {
		char name[FW_NAME_MAX], tn[FW_NAME_MAX + 32], hf[2 * FW_NAME_MAX];
		long long in, out, r;
		double factor;
		size_t len = strcspn(s, "\t");
		if (len == 0 || len >= sizeof(name) ||
		    sscanf(s + len, "\t%lld\t%lld\t%lld\t%lf", &in, &out, &r, &factor) != 4) {
			st = h->errorf(err, FW_ERR_FORMAT, "peft/adalora: %s: attribute "
				       "'adalora_modules' is malformed", adapter);
			goto out;
		}
		snprintf(name, sizeof(name), "%.*s", (int)len, s);
		const struct fw_tensor *t[N_PARTS + 1];
		const int64_t want[N_PARTS + 1][2] = { { r, in }, { out, r }, { r, 1 }, { r, 1 } };
		for (int k = 0; k <= N_PARTS; k++) {
			snprintf(tn, sizeof(tn), "%s.%s", name, k < N_PARTS ? part_names[k] :
				 "lora_E.rank_pattern");
			t[k] = peft_tensors_find(&ts, tn);
			if (!t[k] || t[k]->ndim != 2 || t[k]->ne[0] != want[k][0] ||
			    t[k]->ne[1] != want[k][1]) {
				st = h->errorf(err, FW_ERR_FORMAT, "peft/adalora: %s: tensor '%s' is "
					       "missing or not (%lld, %lld)", adapter, tn,
					       (long long)want[k][0], (long long)want[k][1]);
				goto out;
			}
		}
		if (n + N_PARTS > 64) {
			st = h->errorf(err, FW_ERR_INVALID, "peft/adalora: %s: too many layers to "
				       "export", adapter);
			goto out;
		}
		peft_hf_param_name(task, name, hf, sizeof(hf));
		const float *keep = fw_f32(t[N_PARTS]);
		peft_put(&rp, "%s\n    \"%s.lora_E\": [", rp.n ? "," : "", hf);
		for (long long q = 0; q < r; q++)
			peft_put(&rp, "%s%s", q ? ", " : "", keep[q] != 0.0f ? "true" : "false");
		peft_put(&rp, "]");
		peft_put(&tg, "%s", tg.n ? ", " : "");
		peft_put_json(&tg, encoder ? hf : name);
		for (int k = 0; k < N_PARTS; k++) {
			size_t kl = strlen(hf) + 32;
			if (!(keys[n] = h->malloc(kl)) ||
			    !(tp[n] = kept(h, t[k], k == P_B ? 1 : 0, keep, r))) {
				n += keys[n] != NULL;
				st = h->errorf(err, FW_ERR_NOMEM, "peft/adalora: out of memory");
				goto out;
			}
			snprintf(keys[n], kl, "base_model.model.%s.%s", hf, part_names[k]);
			n++;
		}
	}
	char v[12][64];
	static const char *const names[12] = {
		"adalora-init-r", "adalora-target-r", "adalora-tinit", "adalora-tfinal",
		"adalora-delta-t", "adalora-beta1", "adalora-beta2", "adalora-orth-reg-weight",
		"adalora-total-step", "adalora-lora-alpha", "adalora-target-modules", "",
	};
	for (int i = 0; i < 11; i++)
		if (!peft_ini_get(cfgtext, ADALORA_KIND, names[i], v[i], sizeof(v[i])))
			snprintf(v[i], sizeof(v[i]), "0");
	peft_put(&cfg, "{\n  \"base_model_name_or_path\": ");
	if (base_model)
		peft_put_json(&cfg, base_model);
	else
		peft_put(&cfg, "null");
	peft_put(&cfg, ",\n  \"beta1\": %s,\n  \"beta2\": %s,\n  \"bias\": \"none\",\n"
		 "  \"deltaT\": %s,\n  \"fan_in_fan_out\": %s,\n  \"inference_mode\": true,\n"
		 "  \"init_lora_weights\": true,\n  \"init_r\": %s,\n  \"lora_alpha\": %s,\n"
		 "  \"lora_dropout\": 0.0,\n  \"modules_to_save\": %s,\n"
		 "  \"orth_reg_weight\": %s,\n  \"peft_type\": \"ADALORA\",\n  \"r\": %s,\n"
		 "  \"rank_pattern\": {%s\n  },\n  \"revision\": null,\n  \"target_modules\": [%s],\n"
		 "  \"target_r\": %s,\n  \"task_type\": %s,\n  \"tfinal\": %s,\n"
		 "  \"tinit\": %s,\n  \"total_step\": %s\n}\n", v[5], v[6], v[4],
		 task ? "false" : "true", v[0], v[9], heads.mods.s, v[7], v[0], rp.s ? rp.s : "",
		 tg.s ? tg.s : "", v[1], peft_task_json(task), v[3], v[2], v[8]);
	if (cfg.oom || tg.oom || rp.oom) {
		st = h->errorf(err, FW_ERR_NOMEM, "peft/adalora: out of memory");
		goto out;
	}
	st = peft_write_export(h, ADALORA_KIND, dir, (const struct fw_tensor *const *)tp,
			       (const char *const *)keys, n, &heads, &cfg, err);
out:
	for (int i = 0; i < n; i++) {
		if (keys[i])
			h->free(keys[i]);
		if (tp[i]) {
			h->free(tp[i]->data);
			h->free(tp[i]);
		}
	}
	peft_text_free(&cfg);
	peft_text_free(&tg);
	peft_text_free(&rp);
	peft_heads_free(h, &heads);
	peft_tensors_free(&ts);
	fw_free(mods);
	fw_free(cfgtext);
	fw_free(base_list);
	return st;
}

/* --- life cycle ---------------------------------------------------------------------------- */

static void ada_fini(void *state)
{
	struct ada *s = state;
	if (!s)
		return;
	const struct fw_host *h = s->host;
	forget_model(s);
	void *arrays[] = { s->text, s->targets, s->layers };
	for (size_t i = 0; i < sizeof(arrays) / sizeof(arrays[0]); i++)
		if (arrays[i])
			h->free(arrays[i]);
	h->free(s);
}

static enum fw_status ada_init(const struct fw_host *host, const struct fw_options *opts,
			       void **state, struct fw_err *err)
{
	static int orth_id = -1;                 /* once per process */
	if (orth_id < 0 && (orth_id = host->op_register(&orth_op, err)) < 0)
		return err->status;
	struct ada *s = host->malloc(sizeof(*s));
	if (!s)
		return host->errorf(err, FW_ERR_NOMEM, "peft/adalora: out of memory");
	*s = (struct ada){
		.host = host, .opts = opts, .orth_op = orth_id,
		.init_r = fw_opt_int(opts, "adalora-init-r"),
		.target_r = fw_opt_int(opts, "adalora-target-r"),
		.tinit = fw_opt_int(opts, "adalora-tinit"),
		.tfinal = fw_opt_int(opts, "adalora-tfinal"),
		.delta_t = fw_opt_int(opts, "adalora-delta-t"),
		.total_step = fw_opt_int(opts, "adalora-total-step"),
		.beta1 = fw_opt_float(opts, "adalora-beta1"),
		.beta2 = fw_opt_float(opts, "adalora-beta2"),
		.orth_w = fw_opt_float(opts, "adalora-orth-reg-weight"),
		.alpha = fw_opt_float(opts, "adalora-lora-alpha"),
		.log_masks = fw_opt_bool(opts, "adalora-log-masks"),
	};
	enum fw_status st = FW_OK;
	if (s->target_r > s->init_r)
		st = host->errorf(err, FW_ERR_INVALID, "peft/adalora: --adalora-target-r (%lld) is "
				  "above --adalora-init-r (%lld)", (long long)s->target_r,
				  (long long)s->init_r);
	else if (s->total_step > 0 && s->tinit >= s->total_step - s->tfinal)
		st = host->errorf(err, FW_ERR_INVALID, "peft/adalora: --adalora-tinit (%lld) must be "
				  "below total_step - tfinal (%lld - %lld): no budgeting phase "
				  "is left", (long long)s->tinit, (long long)s->total_step,
				  (long long)s->tfinal);
	if (st != FW_OK)
		goto fail;
	const char *tg = fw_opt_str(opts, "adalora-target-modules");
	s->text = host->malloc(strlen(tg) + 1);
	if (!s->text) {
		st = host->errorf(err, FW_ERR_NOMEM, "peft/adalora: out of memory");
		goto fail;
	}
	memcpy(s->text, tg, strlen(tg) + 1);
	int cap = 1;
	for (const char *p = s->text; *p; p++)
		cap += *p == ',';
	if (!(s->targets = host->malloc(sizeof(*s->targets) * (size_t)cap))) {
		st = host->errorf(err, FW_ERR_NOMEM, "peft/adalora: out of memory");
		goto fail;
	}
	char *save = NULL;
	for (char *tok = strtok_r(s->text, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save))
		s->targets[s->n_targets++] = (struct pattern){ .key = tok };
	if (s->n_targets == 1 && !strcmp(s->targets[0].key, "auto")) {
		s->auto_targets = true;
		s->n_targets = 0;
	} else if (s->n_targets == 0) {
		st = host->errorf(err, FW_ERR_INVALID, "peft/adalora: --adalora-target-modules is "
				  "empty (use auto, or names such as c_attn,mlp.c_fc)");
		goto fail;
	}
	*state = s;
	return FW_OK;
fail:
	ada_fini(s);
	return st;
}

static const struct fw_peft_i iface = {
	.size = sizeof(struct fw_peft_i),
	.wrap_linear = ada_wrap_linear,
	.freeze = ada_freeze,
	.extra_loss = ada_extra_loss,
	.after_backward = ada_after_backward,
	.save = ada_save,
	.load = ada_load,
	.merge = ada_merge,
	.unmerge = ada_unmerge,
	.export_peft = ada_export,
};

static const struct fw_option_def options[] = {
	{ "adalora-init-r", FW_OPT_INT, "12", 1, 4096, NULL,
	  "rank of every adapter at the start (PEFT init_r)" },
	{ "adalora-target-r", FW_OPT_INT, "8", 1, 4096, NULL,
	  "average rank per layer at the end: the final budget is target_r x layers "
	  "(PEFT target_r)" },
	{ "adalora-tinit", FW_OPT_INT, "0", 0, 1e12, NULL,
	  "steps of warmup before the budget starts to fall (PEFT tinit)" },
	{ "adalora-tfinal", FW_OPT_INT, "0", 0, 1e12, NULL,
	  "last steps trained with the final rank pattern fixed (PEFT tfinal)" },
	{ "adalora-delta-t", FW_OPT_INT, "1", 1, 1e12, NULL,
	  "steps between two rank allocations while the budget falls (PEFT deltaT)" },
	{ "adalora-beta1", FW_OPT_FLOAT, "0.85", 0, 1, NULL,
	  "EMA factor of the sensitivity |p * grad| (PEFT beta1)" },
	{ "adalora-beta2", FW_OPT_FLOAT, "0.85", 0, 1, NULL,
	  "EMA factor of the uncertainty (PEFT beta2)" },
	{ "adalora-orth-reg-weight", FW_OPT_FLOAT, "0.5", 0, 1e6, NULL,
	  "weight of the orthogonality regulariser mean ||P^T P - I||_F; 0 = none, e.g. to "
	  "evaluate the plain loss (PEFT orth_reg_weight, which must be > 0 there)" },
	{ "adalora-total-step", FW_OPT_INT, "0", 0, 1e12, NULL,
	  "steps of the schedule; 0 = fwrun's --train-iters (PEFT total_step)" },
	{ "adalora-lora-alpha", FW_OPT_FLOAT, "8", 0, 1e6, NULL,
	  "scaling of the update: dW = B (A * E) alpha / (init_r + 1e-5) (PEFT lora_alpha)" },
	{ "adalora-target-modules", FW_OPT_STRING, "auto", 0, -1, NULL,
	  "comma-separated layer names or dotted suffixes (c_attn, mlp.c_fc), globs, or auto "
	  "(PEFT's defaults: c_attn for GPT-2; q_proj,v_proj; query,value; q,v)" },
	{ "adalora-log-masks", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "log the budget and every layer's kept triplets at each allocation" },
};

static const struct fw_plugin plugin = {
	FW_PLUGIN_HEADER,
	.kind = FW_KIND_PEFT,
	.name = ADALORA_KIND,
	.version = "1.0.0",
	.description = "AdaLoRA: SVD-form LoRA with importance-based rank allocation after every "
		       "step (PEFT semantics), adapter files, merge, PEFT export",
	.options = options,
	.n_options = (int)(sizeof(options) / sizeof(options[0])),
	.iface = &iface,
	.init = ada_init,
	.fini = ada_fini,
};

FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void)
{
	return &plugin;
}
