/* trainer.c - the training loop and evaluation (fw/runtime/trainer.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fw/runtime/model.h"
#include "fw/runtime/tasks.h"
#include "fw/runtime/trainer.h"

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* seg (B, T) into m's positions and attn_bias. */
static void masks(struct fw_model *m, const int32_t *seg)
{
	if (seg && fw_rt_task_of_head(m->head))
		fw_rt_encoder_fill(m, seg);     /* an encoder: padding mask, token types */
	else if (seg)
		fw_rt_data_masks(seg, m->batch, m->seq_len, m->positions->data, m->attn_bias->data);
}

void fw_rt_batch_next(struct fw_rt_loader *l, struct fw_model *m, int32_t *seg)
{
	fw_rt_loader_next(l, m->tokens->data, m->targets->data, seg);
	masks(m, seg);
}

/* seg's elements: B x T, or B x the encoder's length when an
 * encoder-decoder's is longer (tasks.h). */
static size_t seg_elems(const struct fw_model *m)
{
	int64_t T = m->enc_tokens && m->enc_tokens->ne[1] > m->seq_len ? m->enc_tokens->ne[1] :
		    m->seq_len;
	return (size_t)(m->batch * T);
}

/* A micro-batch read ahead (tokens, targets of B*T, seg) into m. */
static void use_batch(struct fw_model *m, int32_t *seg, const int32_t *staged)
{
	size_t bt = (size_t)(m->batch * m->seq_len);
	memcpy(m->tokens->data, staged, sizeof(int32_t) * bt);
	memcpy(m->targets->data, staged + bt, sizeof(int32_t) * bt);
	if (seg) {
		memcpy(seg, staged + 2 * bt, sizeof(int32_t) * seg_elems(m));
		masks(m, seg);
	}
}

static int64_t model_vocab(const struct fw_model *m)
{
	const struct fw_tensor *lg = m->logits;
	return lg ? lg->ne[lg->ndim - 1] : 65536;
}

enum fw_status fw_rt_evaluate(const struct fw_rt_eval *e, double *loss, double *stats,
			      struct fw_err *err)
{
	struct fw_rt_loader *l = e->data;
	*loss = NAN;
	if (!l || e->n <= 0)
		return FW_OK;
	fw_rt_loader_seek(l, 0, 0);      /* the same batches at every evaluation */
	double sum = 0;
	int64_t counted = 0, V = model_vocab(e->m), BT = e->m->batch * e->m->seq_len;
	const int32_t *targets = e->m->targets->data;
	int64_t *hist = stats ? calloc((size_t)V, sizeof(int64_t)) : NULL;
	if (stats && !hist)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	for (int64_t i = 0; i < e->n; i++) {
		fw_rt_batch_next(l, e->m, e->seg);
		int64_t here = 0;
		for (int64_t j = 0; j < BT; j++)
			if (targets[j] >= 0 && targets[j] < V) {
				here++;
				if (hist)
					hist[targets[j]]++;
			}
		counted += here;
		if (fw_graph_forward(e->g) != FW_OK) {
			free(hist);
			return fw_errorf(err, FW_ERR_INTERNAL, "eval: %s",
					 fw_ctx_err(e->m->ctx)->msg);
		}
		sum += *(float *)e->m->loss->data * (e->per_token ? (double)here : 1.0);
	}
	if (stats) {
		double h = 0;
		for (int64_t v = 0; v < V; v++)
			if (hist[v])
				h -= (double)hist[v] / (double)counted *
				     log((double)hist[v] / (double)counted);
		stats[0] = (double)counted;
		stats[1] = counted ? h : NAN;
		free(hist);
	}
	*loss = e->per_token ? (counted ? sum / (double)counted : NAN) : sum / (double)e->n;
	return FW_OK;
}

/* One optimizer step over n_micro micro-batches: *loss their weighted mean. */
static enum fw_status one_step(struct fw_rt_trainer *t, int64_t it, int64_t n_micro,
			       float scale, int32_t *staged, int64_t *count, double *loss,
			       struct fw_err *err)
{
	struct fw_model *m = t->m;
	size_t bt = (size_t)(m->batch * m->seq_len), each = 2 * bt + seg_elems(m);
	int64_t total = 0;
	/* Per-token loss: the step's micro-batches are read ahead to count their
	 * loss tokens, and micro-batch k's mean is weighted count[k] / total. */
	for (int64_t k = 0; staged && k < n_micro; k++) {
		int32_t *b = staged + each * (size_t)k;
		fw_rt_loader_next(t->data, b, b + bt, b + 2 * bt);
		count[k] = 0;
		for (size_t j = 0; j < bt; j++)
			count[k] += b[bt + j] >= 0;
		total += count[k];
	}
	*loss = 0;
	for (int64_t k = 0; k < n_micro; k++) {
		double w = staged && total ? (double)count[k] / (double)total :
			   1.0 / (double)n_micro;
		if (staged)
			use_batch(m, t->seg, staged + each * (size_t)k);
		else
			fw_rt_batch_next(t->data, m, t->seg);
		fw_graph_set_loss_scale(t->g, (float)(w * scale));
		fw_graph_set_step(t->g, it * t->accum + k);
		if (fw_graph_forward(t->g) != FW_OK || fw_graph_backward(t->g) != FW_OK)
			return fw_errorf(err, FW_ERR_INTERNAL, "step %lld: %s", (long long)it,
					 fw_ctx_err(m->ctx)->msg);
		*loss += w * *(float *)m->loss->data;
	}
	return FW_OK;
}

/* --debug-inject-overflow: an inf in the first gradient of step it. */
static void inject(const struct fw_rt_trainer *t, int64_t it)
{
	for (int i = 0; i < t->n_inject_overflow; i++)
		if (t->inject_overflow[i] == it && fw_graph_n_params(t->g) > 0) {
			*(float *)fw_graph_param(t->g, 0)->grad->data = INFINITY;
			return;
		}
}

enum fw_status fw_rt_train(struct fw_rt_trainer *t, bool *stopped, struct fw_err *err)
{
	struct fw_rt_loader *d = t->data;
	const struct fw_loaded *pp = t->plugins ? t->plugins->peft : NULL;
	const struct fw_peft_i *peft = pp ? pp->desc->iface : NULL;
	size_t bt = (size_t)(t->m->batch * t->m->seq_len), each = 2 * bt + seg_elems(t->m);
	if (stopped)
		*stopped = false;
	if (d->n_micro < t->accum && t->drop_last)
		return fw_errorf(err, FW_ERR_INVALID, "%s: %lld micro-batches, fewer than one global "
				 "batch (%lld) with --drop-last", t->data_label ? t->data_label :
				 d->n_shards ? d->shards[0].path : "the data", (long long)d->n_micro,
				 (long long)t->accum);
	int32_t *staged = t->per_token ? malloc(sizeof(int32_t) * each * (size_t)t->accum) : NULL;
	int64_t *count = t->per_token ? malloc(sizeof(int64_t) * (size_t)t->accum) : NULL;
	if (t->per_token && (!staged || !count)) {
		free(staged);
		free(count);
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	}
	double t0 = now_s();
	int64_t start_tokens = t->tokens;
	enum fw_status st = FW_OK;
	while (t->step < t->iters) {
		int64_t it = t->step + 1, update = t->step - t->skipped + 1;
		double lr = fw_lr_at(&t->sched, update);
		if (fw_rt_loader_left(d) < t->accum && (t->drop_last || fw_rt_loader_left(d) == 0))
			fw_rt_loader_seek(d, d->epoch + 1, 0);
		int64_t n_micro = fw_rt_loader_left(d) < t->accum ? fw_rt_loader_left(d) : t->accum;
		double loss;
		float scale = t->scaler ? t->scaler->scale : 1.0f;
		if ((st = one_step(t, it, n_micro, scale, staged, count, &loss, err)) != FW_OK)
			break;
		inject(t, it);
		double norm = t->scaler ? fw_rt_optim_unscale_norm(t->optim, fw_rt_scaler_inv(t->scaler)) :
				fw_rt_optim_grad_norm(t->optim);
		bool skip = t->scaler && !isfinite(norm);
		if (!isfinite(loss) || (!isfinite(norm) && !skip)) {
			st = fw_errorf(err, FW_ERR_INTERNAL,
				       "step %lld: loss %g, gradient norm %g: training diverged",
				       (long long)it, loss, norm);
			break;
		}
		if (t->scaler)
			fw_rt_scaler_update(t->scaler, skip);
		if (skip) {
			t->skipped++;
			norm = NAN;
		} else {
			/* The clip factor is folded into the update; a peft
			 * after_backward may read the gradients (AdaLoRA's
			 * importance), so there they are clipped in place first. */
			float coef = fw_rt_optim_clip_coef(t->clip, norm);
			if (peft && peft->after_backward && coef != 1.0f) {
				fw_rt_optim_scale_grads(t->optim, coef);
				coef = 1.0f;
			}
			if ((st = fw_rt_optim_step_scaled(t->optim, lr, update, coef, err)) != FW_OK)
				break;
		}
		struct fw_err pe = { 0 };
		if (!skip && peft && peft->after_backward) {
			st = peft->after_backward(pp->state, t->m, update, &pe);
			fw_rt_mark_params_written(t->m->ctx, FW_FLAG_BY_PEFT);
			if (st != FW_OK) {
				st = fw_errorf(err, pe.status, "%s: %s", pp->desc->name, pe.msg);
				break;
			}
		}
		fw_graph_zero_grad(t->g);
		t->step = it;
		int64_t step_tokens = n_micro * (int64_t)bt;
		t->tokens += step_tokens;

		struct fw_rt_step_info info = {
			.step = it, .iters = t->iters, .loss = loss, .lr = lr, .grad_norm = norm,
			.loss_scale = t->scaler ? t->scaler->scale : 1.0f, .skipped = skip,
			.skipped_total = t->skipped,
			.step_tokens = step_tokens, .tokens = t->tokens,
			.run_tokens = t->tokens - start_tokens, .elapsed_s = now_s() - t0,
		};
		bool stop = t->hooks.on_step && t->hooks.on_step(t->hooks.user, &info) == FW_RT_STOP;
		if ((t->eval_every > 0 && it % t->eval_every == 0) || it == t->iters) {
			double vl = NAN;
			if (t->eval.data && (st = fw_rt_evaluate(&t->eval, &vl, NULL, err)) != FW_OK)
				break;
			stop = stop || (t->hooks.on_eval &&
				       t->hooks.on_eval(t->hooks.user, it, vl) == FW_RT_STOP);
		}
		if (((t->save_every > 0 && it % t->save_every == 0) || it == t->iters || stop) &&
		    t->hooks.on_save && (st = t->hooks.on_save(t->hooks.user, it, err)) != FW_OK)
			break;
		if (stop) {
			if (stopped)
				*stopped = true;
			break;
		}
	}
	free(staged);
	free(count);
	return st;
}
