/* optim/omp: SGD whose update is an OpenMP loop (what the guide asks plugins
 * not to do, host->parallel_for is the rule, but what some will do). Built by
 * tests/abi/omp_plugin.sh to check which OpenMP runtime it links. */
#include <omp.h>

#include "fw/plugin.h"

static enum fw_status omp_step(void *state, const struct fw_optim_group *groups, int n_groups,
			       int64_t step, struct fw_err *err)
{
	for (int gi = 0; gi < n_groups; gi++) {
		for (int i = 0; i < groups[gi].n_params; i++) {
			struct fw_tensor *p = groups[gi].params[i];
			float *w = p->data, *g = p->grad->data, lr = groups[gi].lr;
			int64_t n = fw_nelem(p);
			#pragma omp parallel for if (n > 65536 && omp_get_max_threads() > 1)
			for (int64_t k = 0; k < n; k++)
				w[k] -= lr * g[k];
		}
	}
	return FW_OK;
}

static const struct fw_optim_i iface = { .size = sizeof(iface), .step = omp_step };

static const struct fw_plugin plugin = {
	FW_PLUGIN_HEADER, .kind = FW_KIND_OPTIM, .name = "optim/omp", .version = "1.0",
	.description = "SGD with an OpenMP loop", .iface = &iface,
};

const struct fw_plugin *fw_plugin_entry(void)
{
	return &plugin;
}
