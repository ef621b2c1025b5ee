/* optim.c - an optimizer plugin over a graph's parameters (fw/runtime/optim.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw/runtime/optim.h"

struct fw_rt_optim {
	const struct fw_loaded *plugin;
	const struct fw_optim_i *iface;
	struct fw_ctx *ctx;
	struct fw_graph *g;
	int n_params, n_state, n_groups;
	bool fuse;                        /* the plugin's step_fused is used */
	struct fw_tensor *state_t;        /* n_params * n_state records */
	struct fw_tensor **state;         /* pointers to them, as checkpoints take them */
	int *group_of;                    /* per parameter */
	struct fw_rt_param_group *cfg;    /* per group */
	struct fw_optim_group *groups;    /* what the plugin sees */
	struct fw_tensor **params;        /* groups' params, n_params in all */
	float ***slots;                   /* groups' state, n_params in all */
	float **data;                     /* n_params * n_state state pointers */
	void **half;                      /* n_params kept half copies, in groups' runs */
	void ***half_of;                  /* per group: its run of half */
};

void fw_rt_optim_free(struct fw_rt_optim *o)
{
	if (!o)
		return;
	free(o->state_t);
	free(o->state);
	free(o->group_of);
	free(o->cfg);
	free(o->groups);
	free(o->params);
	free(o->slots);
	free(o->data);
	free(o->half);
	free(o->half_of);
	free(o);
}

static int default_group(void *user, const struct fw_tensor *p)
{
	return p->ndim >= 2 ? 0 : 1;
}

struct fw_rt_optim *fw_rt_optim_new(struct fw_ctx *ctx, struct fw_graph *g,
				    const struct fw_loaded *optim,
				    const struct fw_rt_optim_config *cfg, struct fw_err *err)
{
	if (!optim) {
		fw_errorf(err, FW_ERR_NOT_FOUND,
			  "training needs an optim plugin (e.g. --plugins=...,optim/adamw)");
		return NULL;
	}
	struct fw_rt_optim *o = calloc(1, sizeof(*o));
	if (!o)
		goto nomem;
	o->plugin = optim;
	o->iface = optim->desc->iface;
	o->ctx = ctx;
	o->g = g;
	/* FW_OPTIM_FUSE=0: the plugin's plain step, as a plugin built before
	 * ABI 1.7 gets (a separate clipping pass; copies cast in the forward) */
	const char *fuse = getenv("FW_OPTIM_FUSE");
	o->fuse = o->iface->step_fused && !(fuse && !strcmp(fuse, "0"));
	int np = o->n_params = fw_graph_n_params(g), ns = o->n_state = o->iface->n_state;
	struct fw_rt_param_group two[2] = { { cfg->weight_decay, 1 }, { 0, 1 } };
	const struct fw_rt_param_group *groups = cfg->groups ? cfg->groups : two;
	int ng = o->n_groups = cfg->groups ? cfg->n_groups : 2;
	int (*group_of)(void *, const struct fw_tensor *) =
		cfg->group_of ? cfg->group_of : default_group;
	o->state_t = calloc((size_t)(np * ns) + 1, sizeof(*o->state_t));
	o->state = calloc((size_t)(np * ns) + 1, sizeof(*o->state));
	o->group_of = calloc((size_t)np + 1, sizeof(int));
	o->cfg = calloc((size_t)ng + 1, sizeof(*o->cfg));
	o->groups = calloc((size_t)ng + 1, sizeof(*o->groups));
	o->params = calloc((size_t)np + 1, sizeof(*o->params));
	o->slots = calloc((size_t)np + 1, sizeof(*o->slots));
	o->data = calloc((size_t)(np * ns) + 1, sizeof(*o->data));
	o->half = calloc((size_t)np + 1, sizeof(*o->half));
	o->half_of = calloc((size_t)ng + 1, sizeof(*o->half_of));
	if (!o->state_t || !o->state || !o->group_of || !o->cfg || !o->groups || !o->params ||
	    !o->slots || !o->data || !o->half || !o->half_of)
		goto nomem;
	if (ng < 1) {
		fw_errorf(err, FW_ERR_INVALID, "optimizer: no parameter groups");
		goto fail;
	}
	memcpy(o->cfg, groups, sizeof(*o->cfg) * (size_t)ng);
	for (int i = 0; i < np; i++) {
		int k = group_of(cfg->user, fw_graph_param(g, i));
		if (k < 0 || k >= ng) {
			fw_errorf(err, FW_ERR_INVALID, "optimizer: parameter %s put in group %d of %d",
				  fw_graph_param(g, i)->name, k, ng);
			goto fail;
		}
		o->group_of[i] = k;
		o->groups[k].n_params++;
	}
	/* groups' params and state as contiguous runs of the shared arrays */
	for (int k = 0, at = 0; k < ng; k++) {
		o->groups[k].params = o->params + at;
		o->groups[k].state = o->slots + at;
		o->half_of[k] = o->half + at;
		at += o->groups[k].n_params;
		o->groups[k].n_params = 0;
	}
	for (int i = 0; i < np; i++) {
		struct fw_tensor *p = fw_graph_param(g, i);
		struct fw_optim_group *grp = &o->groups[o->group_of[i]];
		grp->state[grp->n_params] = o->data + (size_t)i * (size_t)ns;
		grp->params[grp->n_params++] = p;
		for (int k = 0; k < ns; k++) {
			struct fw_tensor *t = &o->state_t[i * ns + k];
			*t = (struct fw_tensor){ .dtype = FW_F32, .ndim = p->ndim };
			memcpy(t->ne, p->ne, sizeof(t->ne));
			fw_set_contiguous_strides(t);
			snprintf(t->name, sizeof(t->name), "optim.%.60s.%.24s", p->name,
				 o->iface->state_names[k]);
			t->data = fw_ctx_alloc(ctx, fw_nbytes(t), FW_MEM_OPTIMIZER);
			if (!t->data) {
				fw_errorf(err, FW_ERR_NOMEM, "optimizer state: %s",
					  fw_ctx_err(ctx)->msg);
				goto fail;
			}
			o->state[i * ns + k] = t;
			o->data[i * ns + k] = t->data;
		}
	}
	return o;
nomem:
	fw_errorf(err, FW_ERR_NOMEM, "out of memory");
fail:
	fw_rt_optim_free(o);
	return NULL;
}

struct fw_tensor **fw_rt_optim_state(const struct fw_rt_optim *o, int *n)
{
	*n = o->n_params * o->n_state;
	return o->state;
}

int fw_rt_optim_n_state(const struct fw_rt_optim *o)
{
	return o->n_state;
}

int fw_rt_optim_group(const struct fw_rt_optim *o, int param)
{
	return o->group_of[param];
}

/* The sums of squares are double and vectorised (omp simd: several partial
 * sums per thread; a plain double reduction runs at one add's latency). */
double fw_rt_optim_grad_norm(const struct fw_rt_optim *o)
{
	double sum = 0;
	for (int i = 0; i < o->n_params; i++) {
		const struct fw_tensor *p = fw_graph_param(o->g, i);
		const float *g = p->grad->data;
		int64_t n = fw_nelem(p);
		double part = 0;
		#pragma omp parallel for simd reduction(+:part) schedule(static) if (n > 65536)
		for (int64_t j = 0; j < n; j++)
			part += (double)g[j] * g[j];
		sum += part;
	}
	return sqrt(sum);
}

double fw_rt_optim_unscale_norm(struct fw_rt_optim *o, float inv_scale)
{
	double sum = 0;
	for (int i = 0; i < o->n_params; i++) {
		const struct fw_tensor *p = fw_graph_param(o->g, i);
		float *g = p->grad->data;
		int64_t n = fw_nelem(p);
		double part = 0;
		#pragma omp parallel for simd reduction(+:part) schedule(static) if (n > 65536)
		for (int64_t j = 0; j < n; j++) {
			g[j] *= inv_scale;
			part += (double)g[j] * g[j];
		}
		sum += part;
	}
	return sqrt(sum);
}

void fw_rt_optim_scale_grads(struct fw_rt_optim *o, float c)
{
	for (int i = 0; i < o->n_params; i++) {
		const struct fw_tensor *p = fw_graph_param(o->g, i);
		float *g = p->grad->data;
		int64_t n = fw_nelem(p);
		#pragma omp parallel for schedule(static) if (n > 65536)
		for (int64_t j = 0; j < n; j++)
			g[j] *= c;
	}
}

float fw_rt_optim_clip_coef(double max_norm, double norm)
{
	return max_norm > 0 && max_norm / (norm + 1e-6) < 1.0 ? (float)(max_norm / (norm + 1e-6)) :
	       1.0f;
}

void fw_rt_optim_clip(struct fw_rt_optim *o, double max_norm, double norm)
{
	float c = fw_rt_optim_clip_coef(max_norm, norm);
	if (c != 1.0f)
		fw_rt_optim_scale_grads(o, c);
}

/* The fused step: the kept half copies of the autocast dtype as the plugin
 * sees them, and after it each written copy current (fw/graph.h). */
static enum fw_status step_fused(struct fw_rt_optim *o, int64_t step, float grad_scale,
				 struct fw_err *oe)
{
	enum fw_dtype dt = fw_ctx_autocast(o->ctx);
	bool half = dt != FW_F32;
	for (int k = 0; k < o->n_groups; k++)
		for (int i = 0; i < o->groups[k].n_params; i++)
			o->half_of[k][i] = half ? fw_ctx_kept_copy(o->ctx, o->groups[k].params[i], dt) :
					   NULL;
	struct fw_optim_fused f = {
		.size = sizeof(f), .step = step, .grad_scale = grad_scale, .half_dtype = dt,
		.half = half ? (void *const *const *)o->half_of : NULL,
	};
	enum fw_status st = o->iface->step_fused(o->plugin->state, o->groups, o->n_groups, &f, oe);
	for (int k = 0; k < o->n_groups; k++)
		for (int i = 0; i < o->groups[k].n_params; i++) {
			struct fw_tensor *p = o->groups[k].params[i];
			if (st == FW_OK && o->half_of[k][i])
				fw_ctx_kept_written(o->ctx, p, dt);
			else
				fw_tensor_mark_written(p);
		}
	return st;
}

enum fw_status fw_rt_optim_step(struct fw_rt_optim *o, double lr, int64_t step,
				struct fw_err *err)
{
	return fw_rt_optim_step_scaled(o, lr, step, 1.0f, err);
}

enum fw_status fw_rt_optim_step_scaled(struct fw_rt_optim *o, double lr, int64_t step,
				       float grad_scale, struct fw_err *err)
{
	for (int k = 0; k < o->n_groups; k++) {
		double scale = o->cfg[k].lr_scale ? o->cfg[k].lr_scale : 1.0;
		o->groups[k].lr = (float)(lr * scale);
		o->groups[k].weight_decay = (float)o->cfg[k].weight_decay;
	}
	struct fw_err oe = { 0 };
	enum fw_status st;
	if (o->fuse)
		st = step_fused(o, step, grad_scale, &oe);
	else {
		if (grad_scale != 1.0f)
			fw_rt_optim_scale_grads(o, grad_scale);
		st = o->iface->step(o->plugin->state, o->groups, o->n_groups, step, &oe);
		for (int k = 0; k < o->n_groups; k++)
			for (int i = 0; i < o->groups[k].n_params; i++)
				fw_tensor_mark_written(o->groups[k].params[i]);
	}
	if (st != FW_OK)
		return fw_errorf(err, oe.status ? oe.status : st, "%s: %s", o->plugin->desc->name,
				 oe.msg);
	return FW_OK;
}
