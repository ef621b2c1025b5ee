/* finetune.c - LoRA fine-tuning of a small GPT-2 through fw's runtime API
 * alone: plugins opened by name, the model built from a spec, AdamW through
 * fw_rt_optim, the runtime's trainer (Megatron's cosine schedule, clipping,
 * gradient accumulation, a callback per step), and the adapter saved by the
 * peft plugin's own hook.
 *
 *   lora-finetune OUT_ADAPTER.h5 [BASE_WEIGHTS.h5]
 *
 * Without base weights the base model starts from its initialisation (a
 * stand-in for a pretrained checkpoint); either way only the LoRA factors
 * train. The data is the bytes of a short text, one token per byte, in
 * shuffled windows.
 * Exits 0 when the loss fell, 1 on an error or when it did not. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <fw/runtime.h>

enum { B = 4, T = 32, STEPS = 60 };

static const char text[] =
	"It is a truth universally acknowledged, that a single man in possession of a good "
	"fortune, must be in want of a wife. However little known the feelings or views of "
	"such a man may be on his first entering a neighbourhood, this truth is so well fixed "
	"in the minds of the surrounding families, that he is considered the rightful property "
	"of some one or other of their daughters. ";

/* Opens and initialises one plugin with options (name, value, ..., NULL). */
static struct fw_loaded *plugin(const char *name, int kind, const char *const *opts,
				struct fw_err *err)
{
	struct fw_loaded *p = NULL;
	if (fw_plugin_open(name, kind, &p, err) != FW_OK)
		return NULL;
	for (int i = 0; opts && opts[i]; i += 2)
		if (fw_options_set(p->opts, opts[i], opts[i + 1], err) != FW_OK)
			goto fail;
	if (fw_options_resolve(p->opts, err) == FW_OK && fw_plugin_init(p, NULL, err) == FW_OK)
		return p;
fail:
	fw_plugin_close(p);
	return NULL;
}

/* Each step: the loss, now and then a line. */
struct progress {
	double first, last;
};

static enum fw_rt_action on_step(void *user, const struct fw_rt_step_info *in)
{
	struct progress *p = user;
	if (in->step == 1)
		p->first = in->loss;
	p->last = in->loss;
	if (in->step % 10 == 0 || in->step == 1)
		printf("step %3lld  loss %.4f  lr %.2e  grad norm %.3f\n", (long long)in->step,
		       in->loss, in->lr, in->grad_norm);
	return FW_RT_CONTINUE;
}

int main(int argc, char **argv)
{
	static const char *const arch_opts[] = { "n-layer", "2", "n-head", "4", "n-embd", "64",
						 "vocab-size", "256", "n-positions", "64", NULL };
	static const char *const lora_opts[] = { "lora-r", "8", "lora-alpha", "16", NULL };
	struct fw_err err = { 0 };
	struct fw_plugin_slots slots = { 0 };
	struct fw_ctx *ctx = NULL;
	struct fw_graph *g = NULL;
	struct fw_rt_optim *opt = NULL;
	struct fw_rt_loader data;
	bool have_data = false;
	struct fw_model m;
	int rc = 1;
	if (argc < 2) {
		fprintf(stderr, "usage: %s OUT_ADAPTER.h5 [BASE_WEIGHTS.h5]\n", argv[0]);
		return 2;
	}
	if (!(slots.arch = plugin("arch/decoder", FW_KIND_ARCH, arch_opts, &err)) ||
	    !(slots.attention = plugin("attention/mha", FW_KIND_ATTENTION, NULL, &err)) ||
	    !(slots.peft = plugin("peft/lora", FW_KIND_PEFT, lora_opts, &err)) ||
	    !(slots.optim = plugin("optim/adamw", FW_KIND_OPTIM, NULL, &err)))
		goto out;

	/* The model: the arch, then LoRA's freeze of every base weight. */
	struct fw_rt_model_spec spec = { .plugins = &slots, .batch = B, .seq_len = T,
					 .seed = 1234, .training = true };
	if (!(ctx = fw_ctx_new()) || fw_rt_model_build(&spec, ctx, &m, &err) != FW_OK)
		goto out;
	g = fw_graph_new(ctx, &m.loss, 1, &(struct fw_graph_opts){ .backward = true,
								    .training = true });
	if (!g || fw_ctx_init_params(ctx, spec.seed) != FW_OK) {
		err = *fw_ctx_err(ctx);
		goto out;
	}
	if (argc > 2) {             /* base weights: every frozen parameter, by name */
		struct fw_tensor **params = NULL, **base = NULL;
		int n = fw_rt_model_params(ctx, &params), nb = 0;
		base = n >= 0 ? malloc(sizeof(*base) * (size_t)(n + 1)) : NULL;
		for (int i = 0; base && i < n; i++)
			if (!(params[i]->flags & FW_FLAG_TRAINABLE))
				base[nb++] = params[i];
		enum fw_status st = base ? fw_h5_load(argv[2], base, nb, &err) :
				    fw_errorf(&err, FW_ERR_NOMEM, "out of memory");
		free(base);
		free(params);
		if (st != FW_OK)
			goto out;
	}
	struct fw_memory_report mr;
	fw_graph_memory(g, &mr);
	printf("%lld parameters, %lld trainable (LoRA)\n", (long long)mr.n_params,
	       (long long)mr.n_trainable);

	/* The data: the text's bytes, one token each, as a stream of windows. */
	int64_t n_text = (int64_t)sizeof(text) - 1;
	uint32_t *stream = malloc(sizeof(uint32_t) * (size_t)n_text);
	for (int64_t i = 0; stream && i < n_text; i++)
		stream[i] = (unsigned char)text[i];
	if (!stream) {
		fw_errorf(&err, FW_ERR_NOMEM, "out of memory");
		goto out;
	}
	have_data = true;           /* the loader owns the stream from here */
	if (fw_rt_loader_from_stream(&data, "text", stream, n_text, B, T, true, spec.seed,
				     &err) != FW_OK)
		goto out;
	/* AdamW, weight decay on matrices only; cosine from 3e-3 to 3e-4. */
	opt = fw_rt_optim_new(ctx, g, slots.optim, &(struct fw_rt_optim_config){
		.weight_decay = 0.01 }, &err);
	if (!opt)
		goto out;
	struct progress prog = { 0 };
	struct fw_rt_trainer t = {
		.m = &m, .g = g, .optim = opt, .plugins = &slots, .data = &data,
		.sched = { .max_lr = 3e-3, .min_lr = 3e-4, .warmup = 5, .decay = STEPS,
			   .style = FW_LR_COSINE },
		.iters = STEPS, .accum = 2, .clip = 1.0,
		.hooks = { .on_step = on_step, .user = &prog },
	};
	if (fw_rt_train(&t, NULL, &err) != FW_OK)
		goto out;
	bool saved = false;
	if (fw_rt_adapter_save(&slots, &m, argv[1], &saved, &err) != FW_OK)
		goto out;
	printf("loss %.4f -> %.4f; adapter %s%s\n", prog.first, prog.last,
	       saved ? "saved to " : "not saved", saved ? argv[1] : "");
	rc = prog.last < prog.first - 0.1 ? 0 : 1;
out:
	if (err.status)
		fprintf(stderr, "lora-finetune: %s\n", err.msg);
	if (have_data)
		fw_rt_loader_close(&data);
	fw_rt_optim_free(opt);
	fw_graph_free(g);
	fw_ctx_free(ctx);
	fw_plugin_close(slots.optim);
	fw_plugin_close(slots.peft);
	fw_plugin_close(slots.attention);
	fw_plugin_close(slots.arch);
	return rc;
}
