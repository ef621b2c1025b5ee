/* optim/adamw - Adam with decoupled weight decay (Loshchilov & Hutter).
 * Matches torch.optim.AdamW: p *= 1 - lr*wd; m = b1 m + (1-b1) g;
 * v = b2 v + (1-b2) g^2; p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps).
 * The host puts 1-D tensors (biases, norm gains) in a group without decay. */
#include <math.h>

#include "fw/plugin.h"

struct adamw {
	const struct fw_host *host;
	float beta1, beta2, eps;
};

struct update {
	float *p, *g, *m, *v;
	float lr, wd, b1, b2, eps, c1, c2;
	float grad_scale;                 /* 1: g as is */
	void *half;                       /* the kept half copy to write, or NULL */
	enum fw_dtype half_dtype;
};

/* n elements from at of p, m, v with gradients g (bandwidth-bound):
 * vectorises */
static void update_block(void *arg, int64_t at, const float *restrict g, int64_t n)
{
	const struct update *u = arg;
	float *restrict p = u->p + at, *restrict m = u->m + at, *restrict v = u->v + at;
	const float decay = 1.0f - u->lr * u->wd, b1 = u->b1, b2 = u->b2;
	const float lr_c1 = u->lr / u->c1, inv_c2 = 1.0f / u->c2, eps = u->eps;
	#pragma omp simd
	for (int64_t i = 0; i < n; i++) {
		float mi = b1 * m[i] + (1.0f - b1) * g[i];
		float vi = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
		m[i] = mi;
		v[i] = vi;
		p[i] = p[i] * decay - lr_c1 * mi / (sqrtf(vi) * inv_c2 + eps);
	}
}

static void update_range(void *arg, int64_t begin, int64_t end)
{
	const struct update *u = arg;
	fw_optim_fused_range(u->g, u->grad_scale, u->p, u->half, u->half_dtype, begin, end,
			     update_block, arg);
}

/* One update; f NULL: the plain step (gradients as they are, no copies). */
static enum fw_status adamw_update(const struct adamw *a, const struct fw_optim_group *groups,
				   int n_groups, int64_t step, const struct fw_optim_fused *f)
{
	/* Like torch: bias corrections as 1 - beta^t, sqrt(1 - b2^t) on v. */
	float c1 = 1.0f - powf(a->beta1, (float)step);
	float c2 = sqrtf(1.0f - powf(a->beta2, (float)step));
#ifdef ADAMW_MUTANT_SKIP_COPY
	bool mutated = false;
#endif
	for (int gi = 0; gi < n_groups; gi++) {
		const struct fw_optim_group *grp = &groups[gi];
		for (int i = 0; i < grp->n_params; i++) {
			struct fw_tensor *p = grp->params[i];
			struct update u = {
				.p = p->data, .g = p->grad->data, .m = grp->state[i][0],
				.v = grp->state[i][1], .lr = grp->lr, .wd = grp->weight_decay,
				.b1 = a->beta1, .b2 = a->beta2, .eps = a->eps, .c1 = c1, .c2 = c2,
				.grad_scale = f ? f->grad_scale : 1.0f,
				.half = f && f->half ? f->half[gi][i] : NULL,
				.half_dtype = f ? f->half_dtype : FW_F32,
			};
#ifdef ADAMW_MUTANT_SKIP_COPY
			if (u.half && !mutated) {   /* tests/optim_fused.py's mutant */
				u.half = NULL;
				mutated = true;
			}
#endif
			a->host->parallel_for(fw_nelem(p), update_range, &u);
		}
	}
	return FW_OK;
}

static enum fw_status adamw_step(void *state, const struct fw_optim_group *groups, int n_groups,
				 int64_t step, struct fw_err *err)
{
	return adamw_update(state, groups, n_groups, step, NULL);
}

#ifndef ADAMW_ABI_1_6
static enum fw_status adamw_step_fused(void *state, const struct fw_optim_group *groups,
				       int n_groups, const struct fw_optim_fused *f,
				       struct fw_err *err)
{
	return adamw_update(state, groups, n_groups, f->step, f);
}
#endif

static enum fw_status adamw_init(const struct fw_host *host, const struct fw_options *opts,
				 void **state, struct fw_err *err)
{
	struct adamw *a = host->malloc(sizeof(*a));
	if (!a)
		return host->errorf(err, FW_ERR_NOMEM, "optim/adamw: out of memory");
	a->host = host;
	a->beta1 = (float)fw_opt_float(opts, "adam-beta1");
	a->beta2 = (float)fw_opt_float(opts, "adam-beta2");
	a->eps = (float)fw_opt_float(opts, "adam-eps");
	*state = a;
	return FW_OK;
}

static void adamw_fini(void *state)
{
	struct adamw *a = state;
	if (a)
		a->host->free(a);
}

static const char *const state_names[] = { "exp_avg", "exp_avg_sq" };

#ifdef ADAMW_ABI_1_6
/* tests/optim_fused.py's plugin of ABI 1.6: the same update, no step_fused */
static const struct fw_optim_i iface = {
	.size = FW_OPTIM_I_SIZE_1_0,
	.n_state = 2,
	.state_names = state_names,
	.step = adamw_step,
};
#else
static const struct fw_optim_i iface = {
	.size = sizeof(struct fw_optim_i),
	.n_state = 2,
	.state_names = state_names,
	.step = adamw_step,
	.step_fused = adamw_step_fused,
};
#endif

static const struct fw_option_def options[] = {
	{ "adam-beta1", FW_OPT_FLOAT, "0.9", 0, 1, NULL, "first-moment decay" },
	{ "adam-beta2", FW_OPT_FLOAT, "0.999", 0, 1, NULL, "second-moment decay" },
	{ "adam-eps", FW_OPT_FLOAT, "1e-8", 0, 1, NULL, "added to the denominator" },
};

/* Test builds (tests/plugins): built for ABI 1.6, or skipping one copy. */
#if defined(ADAMW_ABI_1_6)
#define ADAMW_NAME "optim/abi16adamw"
#elif defined(ADAMW_MUTANT_SKIP_COPY)
#define ADAMW_NAME "optim/mutadamw"
#else
#define ADAMW_NAME "optim/adamw"
#endif

static const struct fw_plugin plugin = {
#ifdef ADAMW_ABI_1_6
	.size = sizeof(struct fw_plugin), .abi_major = 1, .abi_minor = 6,
	.abi_fingerprint = FW_ABI_FINGERPRINT,
#else
	FW_PLUGIN_HEADER,
#endif
	.kind = FW_KIND_OPTIM,
	.name = ADAMW_NAME,
	.version = "1.0.0",
	.description = "AdamW: Adam with decoupled weight decay (torch.optim.AdamW semantics)",
	.options = options,
	.n_options = 3,
	.iface = &iface,
	.init = adamw_init,
	.fini = adamw_fini,
};

FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void)
{
	return &plugin;
}
