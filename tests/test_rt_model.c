/* test_rt_model.c - the runtime's model and optimizer (fw/runtime/model.h,
 * optim.h) on a 2-layer GPT-2 of width 16 from the real plugins:
 *   - two models in one process: a frozen reference sharing the base weights
 *     of a LoRA model that trains; both step, the reference never moves;
 *   - parameter groups: the default rule, custom groups with their own
 *     weight decay and lr factor (checked against SGD's update by hand);
 *   - clipping: the norm, and gradients scaled to the limit;
 *   - state tensors: names, shapes, zero start, in the optimizer arena;
 *   - the trainer: callbacks in order, evaluation and save schedule, a stop
 *     asked by a callback, resuming;
 *   - weights by name: new adapter tensors kept, foreign tensors refused or
 *     dropped with a warning;
 *   - decoding: greedy tokens through the KV cache equal the argmax of a
 *     full forward over the same sequence;
 *   - a peft plugin building a second model whose context has the freed
 *     first one's address (as fwrun generate's builds may): it starts
 *     afresh, and its adapter file holds the new model's tensors. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "fw/runtime.h"

enum { B = 2, T = 8, V = 50 };

/* One model: its own plugin instances, context, graph and inputs. */
struct net {
	struct fw_loaded *arch, *att, *peft, *optim;
	struct fw_plugin_slots slots;
	struct fw_ctx *ctx;
	struct fw_model m;
	struct fw_graph *g;
};

/* Builds a net; peft and optim (NULL for none) name plugins. */
static void net_open(struct net *n, const char *peft, const char *optim,
		     const char *const *optim_opts, bool train)
{
	static const char *const arch_opts[] = { "n-layer", "2", "n-head", "2", "n-embd", "16",
						 "vocab-size", "50", "n-positions", "16", NULL };
	static const char *const lora_opts[] = { "lora-r", "4", NULL };
	struct fw_err err = { 0 };
	memset(n, 0, sizeof(*n));
	n->arch = fwt_plugin_open("arch/decoder", FW_KIND_ARCH, arch_opts);
	n->att = fwt_plugin_open("attention/mha", FW_KIND_ATTENTION, NULL);
	n->peft = peft ? fwt_plugin_open(peft, FW_KIND_PEFT, lora_opts) : NULL;
	n->optim = optim ? fwt_plugin_open(optim, FW_KIND_OPTIM, optim_opts) : NULL;
	n->slots = (struct fw_plugin_slots){ .arch = n->arch, .attention = n->att,
					     .peft = n->peft, .optim = n->optim };
	n->ctx = fw_ctx_new();
	struct fw_rt_model_spec spec = { .plugins = &n->slots, .batch = B, .seq_len = T,
					 .training = train, .seed = 1 };
	ck_assert_msg(fw_rt_model_build(&spec, n->ctx, &n->m, &err) == FW_OK, "%s", err.msg);
}

static void net_graph(struct net *n, bool backward)
{
	n->g = fw_graph_new(n->ctx, &n->m.loss, 1, &(struct fw_graph_opts){
		.backward = backward, .training = backward });
	ck_assert_msg(n->g != NULL, "%s", fw_ctx_err(n->ctx)->msg);
	int32_t *tok = n->m.tokens->data, *tgt = n->m.targets->data;
	for (int i = 0; i < B * T; i++) {
		tok[i] = (i * 7 + 3) % V;
		tgt[i] = (i * 11 + 5) % V;
	}
}

static void net_close(struct net *n)
{
	fw_graph_free(n->g);
	fw_ctx_free(n->ctx);
	fw_plugin_close(n->optim);
	fw_plugin_close(n->peft);
	fw_plugin_close(n->att);
	fw_plugin_close(n->arch);
}

static float forward(struct net *n)
{
	ck_assert_int_eq(fw_graph_forward(n->g), FW_OK);
	return *(float *)n->m.loss->data;
}

/* A frozen reference (no peft) shares the base weights of a LoRA model:
 * equal losses at the start (LoRA's B is zero), the LoRA model's loss
 * falls as it trains, the reference's stays exactly where it was. */
START_TEST(test_two_models_share_base)
{
	static const char *const adamw[] = { NULL };
	struct net pol, ref;
	struct fw_err err = { 0 };
	net_open(&pol, "peft/lora", "optim/adamw", adamw, true);
	net_graph(&pol, true);
	ck_assert_int_eq(fw_ctx_init_params(pol.ctx, 7), FW_OK);
	net_open(&ref, NULL, NULL, NULL, false);
	int n_shared = 0;
	ck_assert_msg(fw_rt_model_share_weights(ref.ctx, pol.ctx, &n_shared, &err) == FW_OK,
		      "%s", err.msg);
	struct fw_tensor **rp = NULL, **pp = NULL;
	int nr = fw_rt_model_params(ref.ctx, &rp), np = fw_rt_model_params(pol.ctx, &pp);
	ck_assert_int_eq(n_shared, nr);                 /* every base tensor */
	ck_assert_int_gt(np, nr);                       /* plus the adapter's */
	for (int i = 0; i < nr; i++) {
		ck_assert(rp[i]->data == fw_ctx_find(pol.ctx, rp[i]->name)->data);
		ck_assert(!(rp[i]->flags & FW_FLAG_TRAINABLE));
	}
	net_graph(&ref, false);                         /* no init: the weights are pol's */
	struct fw_memory_report mr;
	fw_graph_memory(ref.g, &mr);
	ck_assert_int_eq(mr.n_trainable, 0);

	float l0 = forward(&pol), r0 = forward(&ref);
	ck_assert_msg(fabsf(l0 - r0) < 1e-6f, "policy %g, reference %g", l0, r0);

	struct fw_rt_optim *o = fw_rt_optim_new(pol.ctx, pol.g, pol.optim,
						&(struct fw_rt_optim_config){ .weight_decay = 0 },
						&err);
	ck_assert_msg(o != NULL, "%s", err.msg);
	float l = l0;
	for (int step = 1; step <= 20; step++) {
		l = forward(&pol);
		ck_assert_int_eq(fw_graph_backward(pol.g), FW_OK);
		ck_assert_int_eq(fw_rt_optim_step(o, 1e-2, step, &err), FW_OK);
		fw_graph_zero_grad(pol.g);
		float r = forward(&ref);                /* the reference steps too */
		ck_assert_msg(r == r0, "step %d: reference loss moved %g -> %g", step, r0, r);
	}
	ck_assert_msg(l < l0 - 0.05f, "LoRA did not train: %g -> %g", l0, l);
	fw_rt_optim_free(o);
	free(rp);
	free(pp);
	net_close(&ref);
	net_close(&pol);
}
END_TEST

/* Sharing after allocation is refused, naming the tensor. */
START_TEST(test_share_too_late)
{
	struct net a, b;
	struct fw_err err = { 0 };
	net_open(&a, NULL, NULL, NULL, false);
	net_graph(&a, false);
	net_open(&b, NULL, NULL, NULL, false);
	net_graph(&b, false);
	ck_assert_int_eq(fw_rt_model_share_weights(b.ctx, a.ctx, NULL, &err), FW_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "already allocated"));
	/* copying works between allocated models */
	ck_assert_int_eq(fw_ctx_init_params(a.ctx, 3), FW_OK);
	int n = 0;
	ck_assert_int_eq(fw_rt_model_copy_weights(b.ctx, a.ctx, &n, &err), FW_OK);
	ck_assert_int_gt(n, 0);
	ck_assert(forward(&a) == forward(&b));
	net_close(&b);
	net_close(&a);
}
END_TEST

/* Group of 2-D weights (decay 0.5, lr x1), embeddings (wte/wpe: decay 0,
 * lr x0.25), everything else (decay 0, lr x2): one SGD step (momentum 0)
 * moves each parameter by -lr * scale * (g + wd * p). */
static int three_groups(void *user, const struct fw_tensor *p)
{
	(void)user;
	if (!strcmp(p->name, "wte.weight") || !strcmp(p->name, "wpe.weight"))
		return 1;
	return p->ndim >= 2 ? 0 : 2;
}

START_TEST(test_param_groups)
{
	static const char *const sgd[] = { "sgd-momentum", "0", NULL };
	static const struct fw_rt_param_group groups[3] = { { 0.5, 1 }, { 0, 0.25 }, { 0, 2 } };
	struct net n;
	struct fw_err err = { 0 };
	net_open(&n, NULL, "optim/sgd", sgd, true);
	net_graph(&n, true);
	ck_assert_int_eq(fw_ctx_init_params(n.ctx, 5), FW_OK);
	/* the default rule first */
	struct fw_rt_optim *o = fw_rt_optim_new(n.ctx, n.g, n.optim,
						&(struct fw_rt_optim_config){ .weight_decay = 0.1 },
						&err);
	ck_assert_msg(o != NULL, "%s", err.msg);
	for (int i = 0; i < fw_graph_n_params(n.g); i++)
		ck_assert_int_eq(fw_rt_optim_group(o, i), fw_graph_param(n.g, i)->ndim >= 2 ? 0 : 1);
	fw_rt_optim_free(o);
	/* a group index out of range is refused */
	ck_assert(fw_rt_optim_new(n.ctx, n.g, n.optim, &(struct fw_rt_optim_config){
		.groups = groups, .n_groups = 2, .group_of = three_groups }, &err) == NULL);
	ck_assert_int_eq(err.status, FW_ERR_INVALID);

	o = fw_rt_optim_new(n.ctx, n.g, n.optim, &(struct fw_rt_optim_config){
		.groups = groups, .n_groups = 3, .group_of = three_groups }, &err);
	ck_assert_msg(o != NULL, "%s", err.msg);
	int np = fw_graph_n_params(n.g);
	float **before = calloc((size_t)np, sizeof(float *));
	float **grads = calloc((size_t)np, sizeof(float *));
	forward(&n);
	ck_assert_int_eq(fw_graph_backward(n.g), FW_OK);
	for (int i = 0; i < np; i++) {
		struct fw_tensor *p = fw_graph_param(n.g, i);
		size_t bytes = sizeof(float) * (size_t)fw_nelem(p);
		before[i] = malloc(bytes);
		grads[i] = malloc(bytes);
		memcpy(before[i], p->data, bytes);
		memcpy(grads[i], p->grad->data, bytes);
	}
	const double lr = 0.1;
	ck_assert_int_eq(fw_rt_optim_step(o, lr, 1, &err), FW_OK);
	int seen[3] = { 0 };
	for (int i = 0; i < np; i++) {
		struct fw_tensor *p = fw_graph_param(n.g, i);
		int k = fw_rt_optim_group(o, i);
		ck_assert_int_eq(k, three_groups(NULL, p));
		seen[k]++;
		for (int64_t j = 0; j < fw_nelem(p); j++) {
			float want = before[i][j] - (float)(lr * groups[k].lr_scale) *
				     (grads[i][j] + (float)groups[k].weight_decay * before[i][j]);
			ck_assert_msg(fabsf(fw_f32(p)[j] - want) <= 1e-6f + 1e-6f * fabsf(want),
				      "%s[%lld]: %g, want %g", p->name, (long long)j,
				      fw_f32(p)[j], want);
		}
		free(before[i]);
		free(grads[i]);
	}
	ck_assert(seen[0] > 0 && seen[1] == 2 && seen[2] > 0);
	free(before);
	free(grads);
	/* state: one momentum buffer per parameter, named for checkpoints */
	int ns = 0;
	struct fw_tensor **st = fw_rt_optim_state(o, &ns);
	ck_assert_int_eq(ns, np * fw_rt_optim_n_state(o));
	ck_assert_int_eq(fw_rt_optim_n_state(o), 1);
	char want[2 * FW_NAME_MAX];
	snprintf(want, sizeof(want), "optim.%s.momentum_buffer", fw_graph_param(n.g, 0)->name);
	ck_assert_str_eq(st[0]->name, want);
	ck_assert(fw_same_shape(st[0], fw_graph_param(n.g, 0)));
	fw_rt_optim_free(o);
	net_close(&n);
}
END_TEST

/* Clipping: the L2 norm over every gradient, scaled to max_norm when above
 * it, untouched below; adamw's two state tensors start at zero and count in
 * the optimizer arena. */
START_TEST(test_clip_and_state)
{
	static const char *const adamw[] = { NULL };
	struct net n;
	struct fw_err err = { 0 };
	net_open(&n, NULL, "optim/adamw", adamw, true);
	net_graph(&n, true);
	ck_assert_int_eq(fw_ctx_init_params(n.ctx, 5), FW_OK);
	struct fw_memory_report m0, m1;
	fw_graph_memory(n.g, &m0);
	struct fw_rt_optim *o = fw_rt_optim_new(n.ctx, n.g, n.optim,
						&(struct fw_rt_optim_config){ 0 }, &err);
	ck_assert_msg(o != NULL, "%s", err.msg);
	fw_graph_memory(n.g, &m1);
	ck_assert_int_eq(m1.bytes[FW_MEM_OPTIMIZER] - m0.bytes[FW_MEM_OPTIMIZER],
			 2 * 4 * m1.n_trainable);
	int ns;
	struct fw_tensor **st = fw_rt_optim_state(o, &ns);
	ck_assert_int_eq(ns, 2 * fw_graph_n_params(n.g));
	for (int i = 0; i < ns; i++)
		for (int64_t j = 0; j < fw_nelem(st[i]); j++)
			ck_assert(fw_f32(st[i])[j] == 0.0f);
	forward(&n);
	ck_assert_int_eq(fw_graph_backward(n.g), FW_OK);
	double sum = 0;
	for (int i = 0; i < fw_graph_n_params(n.g); i++) {
		struct fw_tensor *p = fw_graph_param(n.g, i);
		for (int64_t j = 0; j < fw_nelem(p); j++)
			sum += (double)fw_f32(p->grad)[j] * fw_f32(p->grad)[j];
	}
	double norm = fw_rt_optim_grad_norm(o);
	ck_assert_msg(fabs(norm - sqrt(sum)) <= 1e-9 * sqrt(sum), "%g vs %g", norm, sqrt(sum));
	fw_rt_optim_clip(o, 2 * norm, norm);                /* below the limit: untouched */
	ck_assert(fw_rt_optim_grad_norm(o) == norm);
	fw_rt_optim_clip(o, norm / 4, norm);
	double clipped = fw_rt_optim_grad_norm(o);
	ck_assert_msg(fabs(clipped - norm / 4) < 1e-5 * norm, "%g, want %g", clipped, norm / 4);
	ck_assert_int_eq(fw_rt_optim_step(o, 1e-3, 1, &err), FW_OK);
	bool moved = false;
	for (int i = 0; i < ns; i++)
		moved |= fw_f32(st[i])[0] != 0.0f;
	ck_assert(moved);
	fw_rt_optim_free(o);
	net_close(&n);
}
END_TEST

/* The trainer's callbacks: every step reported in order, evaluations at
 * eval_every, a stop asked by on_step after step 7 ends the run after that
 * step's save; the progress counts what ran. */
struct seen {
	int64_t steps[16], evals[16], saves[16];
	int n_steps, n_evals, n_saves;
	double first_loss, last_loss;
};

static enum fw_rt_action seen_step(void *user, const struct fw_rt_step_info *in)
{
	struct seen *s = user;
	s->steps[s->n_steps++] = in->step;
	if (in->step == 1)
		s->first_loss = in->loss;
	s->last_loss = in->loss;
	ck_assert_int_eq(in->step_tokens, 2 * B * T);
	ck_assert(in->lr > 0 && in->grad_norm > 0);
	return in->step == 7 ? FW_RT_STOP : FW_RT_CONTINUE;
}

static enum fw_rt_action seen_eval(void *user, int64_t step, double loss)
{
	struct seen *s = user;
	ck_assert(isfinite(loss));
	s->evals[s->n_evals++] = step;
	return FW_RT_CONTINUE;
}

static enum fw_status seen_save(void *user, int64_t step, struct fw_err *err)
{
	struct seen *s = user;
	s->saves[s->n_saves++] = step;
	return FW_OK;
}

START_TEST(test_trainer_callbacks)
{
	static const char *const adamw[] = { NULL };
	struct net n;
	struct fw_err err = { 0 };
	net_open(&n, NULL, "optim/adamw", adamw, true);
	net_graph(&n, true);
	struct fw_graph *eval_g = fw_graph_new(n.ctx, &n.m.loss, 1, &(struct fw_graph_opts){ 0 });
	ck_assert_msg(eval_g != NULL, "%s", fw_ctx_err(n.ctx)->msg);
	ck_assert_int_eq(fw_ctx_init_params(n.ctx, 5), FW_OK);
	struct fw_rt_loader train, valid;
	int64_t len = 20 * B * T + 1;
	uint32_t *a = malloc(sizeof(uint32_t) * (size_t)len), *b = malloc(sizeof(uint32_t) * (size_t)len);
	for (int64_t i = 0; i < len; i++)
		a[i] = b[i] = (uint32_t)((i * 7) % 13);           /* a pattern to learn */
	ck_assert_int_eq(fw_rt_loader_from_stream(&train, "train", a, len, B, T, true, 1, &err),
			 FW_OK);
	ck_assert_int_eq(fw_rt_loader_from_stream(&valid, "valid", b, len, B, T, false, 1, &err),
			 FW_OK);
	struct fw_rt_optim *o = fw_rt_optim_new(n.ctx, n.g, n.optim,
						&(struct fw_rt_optim_config){ 0 }, &err);
	ck_assert_msg(o != NULL, "%s", err.msg);
	struct seen seen = { 0 };
	struct fw_rt_trainer t = {
		.m = &n.m, .g = n.g, .optim = o, .plugins = &n.slots, .data = &train,
		.sched = { .max_lr = 1e-2, .min_lr = 1e-3, .warmup = 2, .decay = 10,
			   .style = FW_LR_COSINE },
		.iters = 10, .accum = 2, .clip = 1.0, .eval_every = 3,
		.eval = { .m = &n.m, .g = eval_g, .data = &valid, .n = 2 },
		.hooks = { seen_step, seen_eval, seen_save, &seen },
	};
	bool stopped = false;
	ck_assert_msg(fw_rt_train(&t, &stopped, &err) == FW_OK, "%s", err.msg);
	ck_assert(stopped);
	ck_assert_int_eq(t.step, 7);
	ck_assert_int_eq(t.tokens, 7 * 2 * B * T);
	ck_assert_int_eq(seen.n_steps, 7);
	for (int i = 0; i < 7; i++)
		ck_assert_int_eq(seen.steps[i], i + 1);
	ck_assert_int_eq(seen.n_evals, 2);
	ck_assert(seen.evals[0] == 3 && seen.evals[1] == 6);
	ck_assert_int_eq(seen.n_saves, 1);
	ck_assert_int_eq(seen.saves[0], 7);
	ck_assert_msg(seen.last_loss < seen.first_loss, "%g -> %g", seen.first_loss,
		      seen.last_loss);
	/* resuming runs the rest: steps 8..10, a save at the last */
	seen.n_saves = 0;
	t.hooks.on_step = NULL;
	ck_assert_int_eq(fw_rt_train(&t, &stopped, &err), FW_OK);
	ck_assert(!stopped);
	ck_assert_int_eq(t.step, 10);
	ck_assert(seen.n_saves == 1 && seen.saves[0] == 10);
	fw_rt_optim_free(o);
	fw_rt_loader_close(&train);
	fw_rt_loader_close(&valid);
	fw_graph_free(eval_g);
	net_close(&n);
}
END_TEST

/* Greedy decoding through the KV cache gives, at every step, the argmax of
 * a full forward over the same tokens; a callback's stop ends it. */
struct tokens {
	int32_t ids[16];
	int n, stop_after;
};

static enum fw_rt_action keep_token(void *user, int32_t tok)
{
	struct tokens *t = user;
	t->ids[t->n++] = tok;
	return t->stop_after && t->n >= t->stop_after ? FW_RT_STOP : FW_RT_CONTINUE;
}

START_TEST(test_decoder_matches_forward)
{
	struct net n;
	struct fw_err err = { 0 };
	net_open(&n, NULL, NULL, NULL, false);
	n.g = fw_graph_new(n.ctx, &n.m.logits, 1, &(struct fw_graph_opts){ 0 });
	ck_assert_msg(n.g != NULL, "%s", fw_ctx_err(n.ctx)->msg);
	ck_assert_int_eq(fw_ctx_init_params(n.ctx, 11), FW_OK);
	struct fw_rt_decoder d;
	ck_assert_msg(fw_rt_decoder_open(&d, &n.slots, T, 1, &err) == FW_OK, "%s", err.msg);
	int copied = 0;
	ck_assert_int_eq(fw_rt_model_copy_weights(d.ctx, n.ctx, &copied, &err), FW_OK);
	ck_assert_int_gt(copied, 0);
	const int32_t prompt[3] = { 5, 17, 3 };
	struct tokens got = { .n = 0 };
	struct fw_rt_gen_opts o = { .max_new = T - 3, .temperature = 0, .top_p = 1, .penalty = 1 };
	ck_assert_msg(fw_rt_generate(&d, prompt, 3, &o, keep_token, &got, &err) == FW_OK, "%s",
		      err.msg);
	ck_assert_int_eq(got.n, T - 3);
	/* the same tokens through the full model, row 0 of the batch */
	int32_t *tok = n.m.tokens->data;
	memset(tok, 0, sizeof(int32_t) * B * T);
	memcpy(tok, prompt, sizeof(prompt));
	memcpy(tok + 3, got.ids, sizeof(int32_t) * (size_t)(T - 3));
	ck_assert_int_eq(fw_graph_forward(n.g), FW_OK);
	const float *lg = n.m.logits->data;
	for (int k = 0; k < T - 3; k++) {
		const float *row = lg + (int64_t)(2 + k) * V;
		int best = 0;
		for (int v = 1; v < V; v++)
			best = row[v] > row[best] ? v : best;
		ck_assert_msg(best == got.ids[k], "step %d: decoded %d, full forward %d", k,
			      got.ids[k], best);
	}
	/* a callback's stop */
	struct tokens two = { .stop_after = 2 };
	ck_assert_int_eq(fw_rt_generate(&d, prompt, 3, &o, keep_token, &two, &err), FW_OK);
	ck_assert(two.n == 2 && two.ids[0] == got.ids[0] && two.ids[1] == got.ids[1]);
	/* more than the cache holds */
	o.max_new = T;
	ck_assert_int_eq(fw_rt_generate(&d, prompt, 3, &o, keep_token, &two, &err), FW_ERR_INVALID);
	fw_rt_decoder_close(&d);
	net_close(&n);
}
END_TEST

/* Rows of different lengths decoded together: each row's greedy ids and
 * log-probabilities are those of the full (uncached) forward of its own
 * sequence, row r of the batch; a callback's stop and a row's max_new end
 * that row only. */
struct row_tokens {
	struct tokens t[B + 1];
	float lp[B + 1][16];
};

static enum fw_rt_action keep_row_token(void *user, int row, int32_t tok, float logprob)
{
	struct row_tokens *r = user;
	struct tokens *t = &r->t[row];
	r->lp[row][t->n] = logprob;
	return keep_token(t, tok);
}

START_TEST(test_decoder_rows)
{
	struct net n;
	struct fw_err err = { 0 };
	net_open(&n, NULL, NULL, NULL, false);
	n.g = fw_graph_new(n.ctx, &n.m.logits, 1, &(struct fw_graph_opts){ 0 });
	ck_assert_msg(n.g != NULL, "%s", fw_ctx_err(n.ctx)->msg);
	ck_assert_int_eq(fw_ctx_init_params(n.ctx, 13), FW_OK);
	struct fw_rt_decoder d;
	ck_assert_msg(fw_rt_decoder_open_rows(&d, &n.slots, B, T, 1, &err) == FW_OK, "%s",
		      err.msg);
	ck_assert_int_eq(fw_rt_model_copy_weights(d.ctx, n.ctx, NULL, &err), FW_OK);
	const int32_t p0[1] = { 9 }, p1[4] = { 5, 17, 3, 41 };
	struct fw_rt_gen_row rows[B] = { { p0, 1, 0 }, { p1, 4, 0 } };
	struct fw_rt_gen_opts o = { .max_new = T - 4, .temperature = 0, .top_p = 1, .penalty = 1 };
	struct row_tokens got = { 0 };
	ck_assert_msg(fw_rt_generate_rows(&d, rows, B, &o, keep_row_token, &got, &err) == FW_OK,
		      "%s", err.msg);
	ck_assert(got.t[0].n == T - 4 && got.t[1].n == T - 4);
	int32_t *tok = n.m.tokens->data;
	memset(tok, 0, sizeof(int32_t) * B * T);
	for (int r = 0; r < B; r++) {
		memcpy(tok + r * T, rows[r].prompt, sizeof(int32_t) * (size_t)rows[r].n);
		memcpy(tok + r * T + rows[r].n, got.t[r].ids, sizeof(int32_t) * (size_t)(T - 4));
	}
	ck_assert_int_eq(fw_graph_forward(n.g), FW_OK);
	for (int r = 0; r < B; r++)
		for (int k = 0; k < T - 4; k++) {
			const float *row = (const float *)n.m.logits->data +
					   ((int64_t)r * T + rows[r].n - 1 + k) * V;
			int best = 0;
			double sum = 0;
			for (int v = 1; v < V; v++)
				best = row[v] > row[best] ? v : best;
			for (int v = 0; v < V; v++)
				sum += exp((double)row[v] - row[best]);
			double lp = -log(sum);
			ck_assert_msg(best == got.t[r].ids[k] && fabs(lp - got.lp[r][k]) < 1e-4,
				      "row %d step %d: decoded %d (log p %g), full forward %d (%g)", r,
				      k, got.t[r].ids[k], got.lp[r][k], best, lp);
		}
	/* row 0 stops after 2 (callback), row 1 after 3 (its max_new): the
	 * other row's ids do not change */
	struct row_tokens cut = { .t = { { .stop_after = 2 }, { .stop_after = 0 } } };
	rows[1].max_new = 3;
	ck_assert_int_eq(fw_rt_generate_rows(&d, rows, B, &o, keep_row_token, &cut, &err), FW_OK);
	ck_assert(cut.t[0].n == 2 && cut.t[1].n == 3);
	ck_assert(!memcmp(cut.t[0].ids, got.t[0].ids, 2 * sizeof(int32_t)) &&
		  !memcmp(cut.t[1].ids, got.t[1].ids, 3 * sizeof(int32_t)));
	/* three prompts in two rows: row 0 stops after 2 (its max_new) and takes
	 * the third prompt (p0 again), which decodes as it did in a row of its
	 * own; the callback's row is the prompt's index */
	struct fw_rt_gen_row three[B + 1] = { { p0, 1, 2 }, { p1, 4, 0 }, { p0, 1, 0 } };
	struct row_tokens q = { 0 };
	ck_assert_msg(fw_rt_generate_rows(&d, three, B + 1, &o, keep_row_token, &q, &err) == FW_OK,
		      "%s", err.msg);
	ck_assert(q.t[0].n == 2 && q.t[1].n == T - 4 && q.t[2].n == T - 4);
	ck_assert(!memcmp(q.t[0].ids, got.t[0].ids, 2 * sizeof(int32_t)) &&
		  !memcmp(q.t[1].ids, got.t[1].ids, (T - 4) * sizeof(int32_t)) &&
		  !memcmp(q.t[2].ids, got.t[0].ids, (T - 4) * sizeof(int32_t)));
	/* one row of a two-row decoder; no prompt; a row past the cache */
	ck_assert_int_eq(fw_rt_generate_rows(&d, rows + 1, 1, &o, keep_row_token, &cut, &err),
			 FW_OK);
	ck_assert_int_eq(fw_rt_generate_rows(&d, rows, 0, &o, keep_row_token, &cut, &err),
			 FW_ERR_INVALID);
	rows[0].max_new = T;
	ck_assert_int_eq(fw_rt_generate_rows(&d, rows, B, &o, keep_row_token, &cut, &err),
			 FW_ERR_INVALID);
	ck_assert_msg(strstr(err.msg, "row 0: ") != NULL, "%s", err.msg);
	fw_rt_decoder_close(&d);
	net_close(&n);
}
END_TEST

/* An attention plugin built for ABI 1.4 knows only the shared cache length:
 * the decoder, which gives per-row slots, refuses it in one line. */
START_TEST(test_decoder_old_abi)
{
	struct net n;
	struct fw_err err = { 0 };
	net_open(&n, NULL, NULL, NULL, false);
	struct fw_rt_decoder d;
	n.slots.attention->desc_full.abi_minor = 4;
	ck_assert_int_eq(fw_rt_decoder_open(&d, &n.slots, T, 1, &err), FW_ERR_UNSUPPORTED);
	ck_assert_msg(strstr(err.msg, "attention/mha is built for ABI 1.4") &&
		      strstr(err.msg, "per-row cache slots (1.5)") && !strchr(err.msg, '\n'),
		      "%s", err.msg);
	n.slots.attention->desc_full.abi_minor = FW_ABI_MINOR;
	ck_assert_msg(fw_rt_decoder_open(&d, &n.slots, T, 1, &err) == FW_OK, "%s", err.msg);
	fw_rt_decoder_close(&d);
	net_close(&n);
}
END_TEST

/* fw_rt_decoder_open_as(FW_BF16) decodes under autocast, its prefill model
 * too: their logits are f32 (cast from the bf16 head), the prompt's close to
 * the f32 decoder's but not the same. */
START_TEST(test_decoder_bf16)
{
	struct net n;
	struct fw_err err = { 0 };
	net_open(&n, NULL, NULL, NULL, false);
	ck_assert_int_eq(fw_ctx_alloc_params(n.ctx), FW_OK);
	ck_assert_int_eq(fw_ctx_init_params(n.ctx, 11), FW_OK);
	struct fw_rt_decoder d[2];
	float *last[2];
	const int32_t prompt[3] = { 5, 17, 3 };
	struct fw_rt_gen_opts o = { .max_new = 1, .temperature = 0, .top_p = 1, .penalty = 1 };
	for (int i = 0; i < 2; i++) {
		int copied = 0;
		struct tokens got = { .n = 0 };
		ck_assert_msg(fw_rt_decoder_open_as(&d[i], &n.slots, 1, T, 1,
						    i ? FW_BF16 : FW_F32, &err) == FW_OK, "%s", err.msg);
		ck_assert_int_eq(fw_rt_model_copy_weights(d[i].ctx, n.ctx, &copied, &err), FW_OK);
		ck_assert_msg(fw_rt_generate(&d[i], prompt, 3, &o, keep_token, &got, &err) == FW_OK,
			      "%s", err.msg);
		/* the prompt's prefill gave the token: its model's last row */
		const struct fw_rt_prefill *p = &d[i].pre[0];
		ck_assert(d[i].n_pre == 1 && p->m.logits->dtype == FW_F32 &&
			  d[i].m.logits->dtype == FW_F32);
		last[i] = (float *)p->m.logits->data + (p->T - 1) * V;
	}
	ck_assert_int_eq(d[1].m.logits->src[0]->dtype, FW_BF16);
	ck_assert_int_eq(d[1].pre[0].m.logits->src[0]->dtype, FW_BF16);
	double worst = 0, big = 0, diff = 0;
	for (int v = 0; v < V; v++) {
		double e = fabs((double)last[1][v] - last[0][v]);
		worst = e > worst ? e : worst;
		big = fabs(last[0][v]) > big ? fabs(last[0][v]) : big;
		diff += e;
	}
	/* a few bf16 roundings (2^-8 each) of the largest logit */
	ck_assert_msg(worst <= 0x1p-5 * fmax(1.0, big) && diff > 0, "worst %g of max %g", worst,
		      big);
	fw_rt_decoder_close(&d[0]);
	fw_rt_decoder_close(&d[1]);
	ck_assert_int_eq(fw_rt_decoder_open_as(&d[0], &n.slots, 1, T, 1, FW_I32, &err),
			 FW_ERR_INVALID);
	net_close(&n);
}
END_TEST

/* Weights by name: a LoRA model takes a base file and keeps its new adapter
 * tensors; a base model refuses a LoRA checkpoint's adapter tensors (named,
 * with the plugin they need) unless base_only drops them, with a warning. */
struct warned {
	char line[512];
	int n;
};

static void warn_cb(void *user, enum fw_log_level level, const char *line)
{
	struct warned *w = user;
	ck_assert_int_eq(level, FW_LOG_WARN);
	snprintf(w->line, sizeof(w->line), "%s", line);
	w->n++;
}

START_TEST(test_load_weights)
{
	static const char *const adamw[] = { NULL };
	struct net base, lora;
	struct fw_err err = { 0 };
	char dir[] = "/tmp/fw_rt_weights.XXXXXX", bpath[300], lpath[300];
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(bpath, sizeof(bpath), "%s/base.h5", dir);
	snprintf(lpath, sizeof(lpath), "%s/lora.h5", dir);
	net_open(&base, NULL, NULL, NULL, false);
	net_graph(&base, false);
	ck_assert_int_eq(fw_ctx_init_params(base.ctx, 3), FW_OK);
	struct fw_tensor **bp = NULL, **lp = NULL;
	int nb = fw_rt_model_params(base.ctx, &bp);
	ck_assert_int_eq(fw_h5_save(bpath, bp, nb, NULL, 0, &err), FW_OK);

	net_open(&lora, "peft/lora", "optim/adamw", adamw, true);
	net_graph(&lora, true);
	ck_assert_int_eq(fw_ctx_init_params(lora.ctx, 4), FW_OK);
	int nl = fw_rt_model_params(lora.ctx, &lp), n_new = -1;
	ck_assert_msg(fw_rt_model_load_weights(bpath, lp, nl, &lora.slots, false, &n_new, NULL,
					       &err) == FW_OK, "%s", err.msg);
	ck_assert_int_eq(n_new, nl - nb);                       /* the adapter's, kept */
	ck_assert_msg(fw_rt_model_load_weights(bpath, lp, nl, &lora.slots, false, NULL, NULL,
					       &err) == FW_OK, "%s", err.msg);  /* no count asked */
	for (int i = 0; i < nb; i++)
		ck_assert(!memcmp(bp[i]->data, fw_ctx_find(lora.ctx, bp[i]->name)->data,
				  fw_nbytes(bp[i])));
	ck_assert_int_eq(fw_h5_save(lpath, lp, nl, NULL, 0, &err), FW_OK);

	ck_assert_int_eq(fw_rt_model_load_weights(lpath, bp, nb, &base.slots, false, &n_new, NULL,
						  &err), FW_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "lora_A"));
	ck_assert_ptr_nonnull(strstr(err.msg, "no loaded plugin owns"));
	struct warned w = { .n = 0 };
	struct fw_rt_log log = { warn_cb, &w };
	ck_assert_msg(fw_rt_model_load_weights(lpath, bp, nb, &base.slots, true, &n_new, &log,
					       &err) == FW_OK, "%s", err.msg);
	ck_assert_int_eq(w.n, 1);
	ck_assert_ptr_nonnull(strstr(w.line, "dropping"));

	/* A checkpoint records each tensor's owner: the adapter's tensors are
	 * exactly those the base model lacks (the oracle: a model built without
	 * the peft plugin), peft/lora's; the rest arch/decoder's. A refusal
	 * names that owner even where the file has no configuration to say it. */
	char cpath[300];
	snprintf(cpath, sizeof(cpath), "%s/ckpt.h5", dir);
	ck_assert_msg(fw_rt_ckpt_save(cpath, lp, nl, NULL, 0, &(struct fw_rt_ckpt_meta){
			.plugins = &lora.slots }, &err) == FW_OK, "%s", err.msg);
	int n_lora = 0;
	for (int i = 0; i < nl; i++) {
		char *o = fw_rt_ckpt_owner(cpath, lp[i]->name);
		bool in_base = fw_ctx_find(base.ctx, lp[i]->name) != NULL;
		ck_assert_msg(o && !strcmp(o, in_base ? "arch/decoder" : "peft/lora"), "%s: %s",
			      lp[i]->name, o ? o : "(none)");
		n_lora += !in_base;
		fw_free(o);
	}
	ck_assert_int_eq(n_lora, nl - nb);
	ck_assert_ptr_null(fw_rt_ckpt_owner(cpath, "no.such.tensor"));
	ck_assert_ptr_null(fw_rt_ckpt_owner(lpath, lp[0]->name));     /* no owners recorded */
	ck_assert_int_eq(fw_rt_model_load_weights(cpath, bp, nb, &base.slots, false, &n_new, NULL,
						  &err), FW_ERR_INVALID);
	ck_assert_msg(strstr(err.msg, "they need peft/lora:"), "%s", err.msg);
	unlink(cpath);
	unlink(bpath);
	unlink(lpath);
	rmdir(dir);
	free(bp);
	free(lp);
	net_close(&lora);
	net_close(&base);
}
END_TEST

/* Errors name the plugin; a missing arch or optimizer is refused. */
START_TEST(test_build_errors)
{
	struct fw_err err = { 0 };
	struct fw_model m;
	struct fw_ctx *ctx = fw_ctx_new();
	struct fw_plugin_slots none = { 0 };
	ck_assert_int_eq(fw_rt_model_build(&(struct fw_rt_model_spec){ .plugins = &none }, ctx,
					   &m, &err), FW_ERR_INVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "arch"));
	ck_assert(fw_rt_optim_new(ctx, NULL, NULL, &(struct fw_rt_optim_config){ 0 }, &err) ==
		  NULL);
	ck_assert_ptr_nonnull(strstr(err.msg, "optim plugin"));
	fw_ctx_free(ctx);
}
END_TEST

/* An allocator that gives a freed context's memory to the next allocation
 * of its size, as malloc may (and does, often, outside ASan). */
static struct {
	void *watch, *keep;
	size_t size, last;
} g_re;

static void *re_alloc(void *user, size_t size, size_t align)
{
	(void)user;
	if (g_re.keep && size == g_re.size) {
		void *p = g_re.keep;
		g_re.keep = NULL;
		return p;
	}
	void *p = NULL;
	if (posix_memalign(&p, align, size ? size : align) != 0)
		return NULL;
	g_re.last = size;
	return p;
}

static void re_free(void *user, void *p)
{
	(void)user;
	if (p && p == g_re.watch) {
		g_re.keep = p;
		g_re.watch = NULL;
		return;
	}
	free(p);
}

START_TEST(test_peft_rebuild_same_address)
{
	static const char *const prefix_opts[] = { "prefix-num-virtual-tokens", "3", NULL };
	static const char *const lora_opts[] = { "lora-r", "4", NULL };
	static const char *const ada_opts[] = { "adalora-total-step", "10", NULL };
	static const struct {
		const char *name, *const *opts, *first;
	} cases[] = {
		{ "peft/prefix", prefix_opts, "prefix.h.0.kv" },
		{ "peft/lora", lora_opts, "h.0.attn.c_attn.lora_A.weight" },
		{ "peft/ia3", NULL, "h.0.mlp.c_proj.ia3_l" },
		{ "peft/adalora", ada_opts, "h.0.attn.c_attn.lora_E" },
	};
	static const char *const arch_opts[] = { "n-layer", "2", "n-head", "2", "n-embd", "16",
						 "vocab-size", "50", "n-positions", "16", NULL };
	char dir[] = "/tmp/fw_rt_rebuild.XXXXXX", path[300];
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/adapter.h5", dir);
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		struct fw_err err = { 0 };
		struct fw_plugin_slots slots = {
			.arch = fwt_plugin_open("arch/decoder", FW_KIND_ARCH, arch_opts),
			.attention = fwt_plugin_open("attention/mha", FW_KIND_ATTENTION, NULL),
			.peft = fwt_plugin_open(cases[c].name, FW_KIND_PEFT, cases[c].opts),
		};
		struct fw_rt_model_spec spec = { .plugins = &slots, .batch = B, .seq_len = T,
						 .training = true, .seed = 1 };
		struct fw_model m;
		fw_set_allocator(re_alloc, re_free, NULL);
		struct fw_ctx *first = fw_ctx_new();
		g_re.size = g_re.last;
		ck_assert_msg(fw_rt_model_build(&spec, first, &m, &err) == FW_OK, "%s", err.msg);
		g_re.watch = first;
		fw_ctx_free(first);
		struct fw_ctx *ctx = fw_ctx_new();
		fw_set_allocator(NULL, NULL, NULL);
		ck_assert_msg(ctx == first, "%s: the second context did not get the first's address",
			      cases[c].name);
		ck_assert_msg(fw_rt_model_build(&spec, ctx, &m, &err) == FW_OK, "%s: %s",
			      cases[c].name, err.msg);
		ck_assert_msg(fw_ctx_find(ctx, cases[c].first) != NULL, "%s: no %s in the rebuilt "
			      "model", cases[c].name, cases[c].first);
		ck_assert_int_eq(fw_ctx_alloc_params(ctx), FW_OK);
		ck_assert_int_eq(fw_ctx_init_params(ctx, 3), FW_OK);
		bool saved = false;
		ck_assert_msg(fw_rt_adapter_save(&slots, &m, path, &saved, &err) == FW_OK && saved,
			      "%s: %s", cases[c].name, err.msg);
		/* the file: the rebuilt model's tensors, every trainable one among them */
		struct fw_h5_entry *ents = NULL;
		int ne = 0;
		ck_assert_int_eq(fw_h5_list(path, &ents, &ne, &err), FW_OK);
		for (int i = 0; i < ne; i++)
			ck_assert_msg(fw_ctx_find(ctx, ents[i].name) != NULL, "%s: saved %s, which "
				      "the rebuilt model lacks", cases[c].name, ents[i].name);
		for (int i = 0; i < fw_ctx_n_tensors(ctx); i++) {
			const struct fw_tensor *t = fw_ctx_tensor(ctx, i);
			bool listed = false;
			for (int k = 0; k < ne && !listed; k++)
				listed = !strcmp(ents[k].name, t->name);
			ck_assert_msg(listed || !(t->flags & FW_FLAG_TRAINABLE), "%s: trainable %s "
				      "not saved", cases[c].name, t->name);
		}
		fw_free(ents);
		fw_ctx_free(ctx);
		fw_plugin_close(slots.peft);
		fw_plugin_close(slots.attention);
		fw_plugin_close(slots.arch);
		unlink(path);
	}
	rmdir(dir);
}
END_TEST

int main(void)
{
	const char *b = getenv("FW_BUILD_DIR");
	if (!b || !*b) {
		fprintf(stderr, "test_rt_model: FW_BUILD_DIR not set (run through ctest)\n");
		return 2;
	}
	char path[4200];
	snprintf(path, sizeof(path), "%s/plugins", b);
	setenv("FW_PLUGIN_PATH", path, 1);
	Suite *s = suite_create("rt_model");
	TCase *tc = fwt_tcase("model", 120);
	tcase_add_test(tc, test_two_models_share_base);
	tcase_add_test(tc, test_share_too_late);
	tcase_add_test(tc, test_param_groups);
	tcase_add_test(tc, test_clip_and_state);
	tcase_add_test(tc, test_trainer_callbacks);
	tcase_add_test(tc, test_decoder_matches_forward);
	tcase_add_test(tc, test_decoder_rows);
	tcase_add_test(tc, test_decoder_bf16);
	tcase_add_test(tc, test_decoder_old_abi);
	tcase_add_test(tc, test_load_weights);
	tcase_add_test(tc, test_build_errors);
	tcase_add_test(tc, test_peft_rebuild_same_address);
	suite_add_tcase(s, tc);
	return fwt_run_suite(s);
}
