/* optim/hello - the smallest useful fw plugin: plain SGD, p -= lr * g.
 * No momentum, hence no optimizer state, and weight decay as in AdamW
 * (decoupled): p *= 1 - lr * wd, which the host sets to 0 for 1-D tensors. */
#include "fw/plugin.h"

struct hello {
	const struct fw_host *host;
	bool decay;
};

struct update {
	float *p;
	const float *g;
	float lr, keep;
};

/* One thread's share of one parameter; the host owns the threads. */
static void update_range(void *arg, int64_t begin, int64_t end)
{
	const struct update *u = arg;
	for (int64_t i = begin; i < end; i++)
		u->p[i] = u->p[i] * u->keep - u->lr * u->g[i];
}

static enum fw_status hello_step(void *state, const struct fw_optim_group *groups,
				 int n_groups, int64_t step, struct fw_err *err)
{
	const struct hello *h = state;
	for (int gi = 0; gi < n_groups; gi++) {
		const struct fw_optim_group *grp = &groups[gi];
		float wd = h->decay ? grp->weight_decay : 0.0f;
		for (int i = 0; i < grp->n_params; i++) {
			struct fw_tensor *p = grp->params[i];
			struct update u = {
				.p = p->data, .g = p->grad->data, .lr = grp->lr,
				.keep = 1.0f - grp->lr * wd,
			};
			h->host->parallel_for(fw_nelem(p), update_range, &u);
		}
	}
	return FW_OK;
}

static enum fw_status hello_init(const struct fw_host *host, const struct fw_options *opts,
				 void **state, struct fw_err *err)
{
	struct hello *h = host->malloc(sizeof(*h));
	if (!h)
		return host->errorf(err, FW_ERR_NOMEM, "optim/hello: out of memory");
	h->host = host;
	h->decay = fw_opt_bool(opts, "hello-decay");
	host->log(FW_LOG_DEBUG, "optim/hello: ready (weight decay %s)", h->decay ? "on" : "off");
	*state = h;
	return FW_OK;
}

static void hello_fini(void *state)
{
	struct hello *h = state;
	if (h)
		h->host->free(h);
}

static const struct fw_optim_i iface = {
	.size = sizeof(struct fw_optim_i),
	.n_state = 0,
	.step = hello_step,
};

static const struct fw_option_def options[] = {
	{ "hello-decay", FW_OPT_BOOL, "false", 0, -1, NULL,
	  "apply --weight-decay (decoupled, as AdamW)" },
};

static const struct fw_plugin plugin = {
	FW_PLUGIN_HEADER,
	.kind = FW_KIND_OPTIM,
	.name = "optim/hello",
	.version = "1.0.0",
	.description = "plain SGD without momentum: an out-of-tree example plugin",
	.options = options,
	.n_options = 1,
	.iface = &iface,
	.init = hello_init,
	.fini = hello_fini,
};

FW_PLUGIN_EXPORT const struct fw_plugin *fw_plugin_entry(void)
{
	return &plugin;
}
