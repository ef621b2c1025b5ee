/* generate.c - fwrun generate: sample tokens from a model with a KV cache.
 *
 * The arch builds a one-token decoding graph whose attention layers keep
 * their keys and values in per-layer caches, so each new token costs one
 * step over the cache (O(T)), not a forward over the whole sequence.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fwrun.h"

struct cand {
	float p;
	int id;
};

static int by_prob(const void *a, const void *b)
{
	const struct cand *x = a, *y = b;
	return x->p < y->p ? 1 : x->p > y->p ? -1 : x->id - y->id;
}

/* Greedy at temperature 0; otherwise temperature, top-k, then top-p. */
static int sample(const float *logits, int V, double temp, int top_k, double top_p,
		  uint64_t key, uint64_t counter, struct cand *c)
{
	int best = 0;
	for (int i = 1; i < V; i++)
		if (logits[i] > logits[best])
			best = i;
	if (temp <= 0)
		return best;
	for (int i = 0; i < V; i++)
		c[i] = (struct cand){ (float)((logits[i] - logits[best]) / temp), i };
	qsort(c, (size_t)V, sizeof(*c), by_prob);
	int n = top_k > 0 && top_k < V ? top_k : V;
	double sum = 0;
	for (int i = 0; i < n; i++)
		sum += c[i].p = expf(c[i].p);
	double acc = 0;
	for (int i = 0; i < n; i++) {           /* nucleus: smallest prefix >= top_p */
		acc += c[i].p / sum;
		if (acc >= top_p) {
			n = i + 1;
			break;
		}
	}
	double total = 0;
	for (int i = 0; i < n; i++)
		total += c[i].p;
	double r = fw_rng_uniform(key, counter) * total;
	for (int i = 0; i < n; i++) {
		r -= c[i].p;
		if (r <= 0)
			return c[i].id;
	}
	return c[n - 1].id;
}

static int parse_tokens(const char *s, int **out, int *n)
{
	int cap = 16;
	*n = 0;
	*out = malloc(sizeof(int) * (size_t)cap);
	while (*out && *s) {
		char *end;
		long v = strtol(s, &end, 10);
		if (end == s || v < 0 || v > 1 << 30)
			return -1;
		if (*n == cap && !(*out = realloc(*out, sizeof(int) * (size_t)(cap *= 2))))
			return -1;
		(*out)[(*n)++] = (int)v;
		s = end;
		if (*s == ',')
			s++;
		else if (*s)
			return -1;
	}
	return *out ? 0 : -1;
}

int cmd_generate(int argc, char **argv)
{
	struct config cfg;
	struct fw_err err = { 0 };
	char *pos[2];
	int np = 0, rc = EXIT_RUNTIME, *prompt = NULL, n_prompt = 0;
	struct fw_ctx *ctx = NULL;
	struct fw_graph *g = NULL;
	struct fw_kv_cache *caches = NULL;
	struct fw_tensor **params = NULL;
	struct cand *cands = NULL;

	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			printf("usage: fwrun generate --plugins=arch/X,attention/Y --load=CKPT "
			       "--prompt-tokens=1,2,3 [--max-new-tokens=N] [--temperature=T] "
			       "[--top-k=K] [--top-p=P] [--seed=S]\n"
			       "Prints the generated token ids, comma-separated, as they are "
			       "produced. --temperature=0 is greedy.\n");
			return EXIT_OK;
		}
	}
	if (config_load(&cfg, argc, argv, true, pos, 0, &np, &err) != FW_OK) {
		rc = die(err.status == FW_ERR_INVALID || err.status == FW_ERR_NOT_FOUND ?
			 EXIT_USAGE : EXIT_RUNTIME, "%s", err.msg);
		config_free(&cfg);
		return rc;
	}
	const struct fw_options *o = cfg.run;
	if (!*fw_opt_str(o, "load") || parse_tokens(fw_opt_str(o, "prompt-tokens"), &prompt,
						   &n_prompt) != 0 || n_prompt == 0) {
		rc = die(EXIT_USAGE, "generate needs --load=CKPT and --prompt-tokens=ID,ID,... "
			 "(non-negative integers)");
		goto out;
	}
	if (fw_opt_int(o, "threads") > 0)
		fw_set_num_threads((int)fw_opt_int(o, "threads"));
	for (int k = 1; k < FW_KIND_COUNT; k++)
		if (cfg.plugin[k] && fw_plugin_init(cfg.plugin[k], NULL, &err) != FW_OK) {
			rc = die(EXIT_RUNTIME, "%s", err.msg);
			goto out;
		}
	struct fw_plugin_slots slots = {
		.arch = cfg.plugin[FW_KIND_ARCH], .attention = cfg.plugin[FW_KIND_ATTENTION],
		.peft = cfg.plugin[FW_KIND_PEFT],
	};
	const struct fw_arch_i *arch = slots.arch->desc->iface;
	int64_t max_new = fw_opt_int(o, "max-new-tokens"), total = n_prompt + max_new;
	int layers = arch->n_layers ? arch->n_layers(slots.arch->state, NULL) : 0;
	ctx = fw_ctx_new();
	caches = calloc((size_t)(layers > 0 ? layers : 1), sizeof(*caches));
	if (!ctx || !caches || layers <= 0) {
		rc = die(EXIT_RUNTIME, "generate: %s", layers <= 0 ?
			 "the arch plugin does not support generation" : "out of memory");
		goto out;
	}
	struct fw_tensor *len = fw_input(ctx, "gen.len", FW_I32, 1, (int64_t[]){ 1 });
	struct fw_tensor *mask = fw_input(ctx, "gen.mask", FW_F32, 1, (int64_t[]){ total });
	for (int l = 0; l < layers; l++)
		caches[l] = (struct fw_kv_cache){ .len = len, .mask = mask, .max_len = total };
	struct fw_model m = {
		.size = sizeof(m), .ctx = ctx, .host = fw_host_table(), .opts = slots.arch->opts,
		.batch = 1, .seq_len = 1, .head = FW_HEAD_LM, .training = false,
		.seed = (uint64_t)fw_opt_int(o, "seed"), .caches = caches, .n_caches = layers,
		.host_private = &slots,
	};
	struct fw_err e = { 0 };
	if (arch->build(slots.arch->state, &m, &e) != FW_OK || !m.logits) {
		rc = die(EXIT_RUNTIME, "%s", e.msg[0] ? e.msg : fw_ctx_err(ctx)->msg);
		goto out;
	}
	const struct fw_peft_i *peft = slots.peft ? slots.peft->desc->iface : NULL;
	if (peft && peft->freeze && peft->freeze(slots.peft->state, &m, &e) != FW_OK) {
		rc = die(EXIT_RUNTIME, "%s", e.msg);     /* checks its options, marks its own */
		goto out;
	}
	g = fw_graph_new(ctx, &m.logits, 1, &(struct fw_graph_opts){ 0 });
	if (!g) {
		rc = die(EXIT_RUNTIME, "graph: %s", fw_ctx_err(ctx)->msg);
		goto out;
	}
	/* Weights: every parameter by name from the checkpoint. */
	int n_params = 0;
	params = malloc(sizeof(*params) * (size_t)fw_ctx_n_tensors(ctx));
	for (int i = 0; params && i < fw_ctx_n_tensors(ctx); i++)
		if (fw_ctx_tensor(ctx, i)->flags & FW_FLAG_PARAM)
			params[n_params++] = fw_ctx_tensor(ctx, i);
	char path[4200];
	int n_new;
	if (!params || resolve_load(fw_opt_str(o, "load"), path, sizeof(path), &err) != FW_OK ||
	    load_params(path, params, n_params, peft != NULL, &n_new, &err) != FW_OK ||
	    adapter_apply(&cfg, &slots, &m, true, &err) != FW_OK) {
		rc = die(EXIT_RUNTIME, "%s", params ? err.msg : "out of memory");
		goto out;
	}
	int V = (int)m.logits->ne[m.logits->ndim - 1];
	for (int i = 0; i < n_prompt; i++)
		if (prompt[i] >= V) {
			rc = die(EXIT_USAGE, "--prompt-tokens: token %d is outside the vocabulary (%d)",
				 prompt[i], V);
			goto out;
		}
	cands = malloc(sizeof(*cands) * (size_t)V);
	if (!cands) {
		rc = die(EXIT_RUNTIME, "out of memory");
		goto out;
	}
	double temp = fw_opt_float(o, "temperature"), top_p = fw_opt_float(o, "top-p");
	int top_k = (int)fw_opt_int(o, "top-k");
	uint64_t key = fw_hash_str("generate", (uint64_t)fw_opt_int(o, "seed"));
	float *mk = mask->data;
	for (int64_t j = 0; j < total; j++)
		mk[j] = -INFINITY;
	int tok = prompt[0], printed = 0;
	for (int64_t p = 0; p < total - 1; p++) {
		*(int32_t *)len->data = (int32_t)p;
		mk[p] = 0.0f;
		*(int32_t *)m.tokens->data = tok;
		if (fw_graph_forward(g) != FW_OK) {
			rc = die(EXIT_RUNTIME, "generate: %s", fw_ctx_err(ctx)->msg);
			goto out;
		}
		if (p + 1 < n_prompt) {
			tok = prompt[p + 1];
			continue;
		}
		tok = sample(m.logits->data, V, temp, top_k, top_p, key, (uint64_t)p, cands);
		printf("%s%d", printed++ ? "," : "", tok);
		fflush(stdout);
	}
	printf("\n");
	rc = EXIT_OK;
out:
	free(cands);
	free(params);
	fw_graph_free(g);
	fw_ctx_free(ctx);
	free(caches);
	free(prompt);
	config_free(&cfg);
	return rc;
}
