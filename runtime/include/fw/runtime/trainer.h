/* fw/runtime/trainer.h - the training loop and evaluation, with callbacks.
 *
 * The loop: for each step, the micro-batches of one global batch (gradient
 * accumulation; with per_token, each micro-batch's mean weighted by its
 * loss tokens), the gradient norm, clipping, the optimizer step at the
 * schedule's lr (the clip factor folded into it: fw_rt_optim_step_scaled;
 * with a peft after_backward the gradients are clipped in place first, so
 * the hook sees them clipped), the peft plugin's after_backward; then on_step with the
 * step's metrics, an evaluation when due (every eval_every steps and at the
 * last) reported to on_eval, and a save when due (every save_every steps,
 * the last, or when a callback asked to stop) through on_save. With a loss
 * scaler (fw/runtime/scaler.h) the backward is seeded with the scale, the
 * gradients are unscaled and checked for inf/nan in the pass that takes
 * their norm, and a step that overflowed is skipped: no optimizer step, no
 * scheduler step, no after_backward; it is still a step (iteration) of the
 * run, as in Megatron, and counted in skipped. The lr and the optimizer's
 * step number are those of the (step - skipped + 1)-th update. A callback
 * returning FW_RT_STOP ends the loop after that step's save. The trainer
 * installs no signal handlers and prints nothing: a program maps its
 * signals and log lines onto the callbacks (fwrun: tools/fwrun/train.c).
 */
#ifndef FW_RUNTIME_TRAINER_H
#define FW_RUNTIME_TRAINER_H

#include "fw/runtime/data.h"
#include "fw/runtime/optim.h"
#include "fw/runtime/scaler.h"
#include "fw/runtime/schedule.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The next micro-batch of l into m's tokens and targets; for a segmented
 * model also seg (scratch of batch * seq_len, may be NULL otherwise) and
 * from it m's positions and attn_bias. */
void fw_rt_batch_next(struct fw_rt_loader *l, struct fw_model *m, int32_t *seg);

/* An evaluation: the mean loss of the first n micro-batches of data (from
 * its start every time) through graph g (forward only) of model m. */
struct fw_rt_eval {
	struct fw_model *m;
	struct fw_graph *g;
	struct fw_rt_loader *data;
	int32_t *seg;                     /* segmented models: scratch (B, T) */
	int64_t n;
	bool per_token;                   /* each micro-batch weighted by its loss tokens */
};
/* *loss is NaN without data or with n <= 0. With stats (may be NULL):
 * stats[0] = targets in the loss, stats[1] = their unigram entropy in nats
 * (the loss of the best model that ignores context, fitted to them). */
enum fw_status fw_rt_evaluate(const struct fw_rt_eval *e, double *loss, double *stats,
			      struct fw_err *err);

enum fw_rt_action { FW_RT_CONTINUE, FW_RT_STOP };

struct fw_rt_step_info {
	int64_t step, iters;              /* this step (from 1) of iters */
	double loss, lr, grad_norm;       /* grad_norm: of the unscaled gradients; NaN when skipped */
	float loss_scale;                 /* the scale after this step's update (1: no scaler) */
	bool skipped;                     /* overflow: no optimizer or scheduler step */
	int64_t skipped_total;            /* skipped steps so far (a resumed run's included) */
	int64_t step_tokens;              /* this step's tokens */
	int64_t tokens;                   /* all tokens so far (a resumed run's included) */
	int64_t run_tokens;               /* tokens since fw_rt_train began */
	double elapsed_s;                 /* since fw_rt_train began */
};

struct fw_rt_trainer_hooks {
	/* After each step. NULL: continue. */
	enum fw_rt_action (*on_step)(void *user, const struct fw_rt_step_info *info);
	/* After an evaluation (loss NaN when there is no validation data). */
	enum fw_rt_action (*on_eval)(void *user, int64_t step, double loss);
	/* A save is due: write a checkpoint of step (state in the trainer). */
	enum fw_status (*on_save)(void *user, int64_t step, struct fw_err *err);
	void *user;
};

struct fw_rt_trainer {
	struct fw_model *m;
	struct fw_graph *g;                /* training graph of m (backward) */
	struct fw_rt_optim *optim;
	const struct fw_plugin_slots *plugins;   /* peft's after_backward, if any */
	struct fw_rt_loader *data;
	const char *data_label;            /* names data in messages (NULL: its first file) */
	int32_t *seg;                      /* segmented models: scratch (B, T) */
	struct fw_lr_schedule sched;
	int64_t iters;                     /* last step */
	int64_t accum;                     /* micro-batches per step (>= 1) */
	double clip;                       /* max gradient norm; <= 0: none */
	bool drop_last;                    /* an epoch's last partial global batch is skipped */
	bool per_token;
	int64_t eval_every, save_every;    /* 0: only at the last step */
	struct fw_rt_eval eval;            /* eval.data NULL: no evaluation */
	struct fw_rt_trainer_hooks hooks;
	struct fw_rt_grad_scaler *scaler;  /* NULL: none (a non-finite gradient stops the run) */
	/* Fault injection (--debug-inject-overflow): the gradients of these
	 * steps get an inf after the backward. */
	const int64_t *inject_overflow;
	int n_inject_overflow;
	/* progress, read and updated: completed steps (skipped ones included),
	 * skipped steps, and tokens consumed */
	int64_t step, skipped, tokens;
};

/* Runs steps step+1 .. iters. *stopped (may be NULL) tells whether a
 * callback stopped it. Errors: FW_ERR_INVALID (drop_last with less data
 * than one global batch), FW_ERR_INTERNAL (a kernel failed, or the loss or
 * gradient norm is not finite: "training diverged"), the optimizer's, the
 * peft plugin's and on_save's errors. */
enum fw_status fw_rt_train(struct fw_rt_trainer *t, bool *stopped, struct fw_err *err);

#ifdef __cplusplus
}
#endif
#endif
