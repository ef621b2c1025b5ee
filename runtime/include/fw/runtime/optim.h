/* fw/runtime/optim.h - an optimizer plugin driven over a graph's trainable
 * parameters: state tensors, parameter groups, clipping, the step.
 *
 *     struct fw_rt_optim *o = fw_rt_optim_new(ctx, g, optim, &(struct fw_rt_optim_config){
 *             .weight_decay = 0.1 }, &err);
 *     ... forward/backward ...
 *     double norm = fw_rt_optim_grad_norm(o);
 *     fw_rt_optim_step_scaled(o, lr, step, fw_rt_optim_clip_coef(1.0, norm), &err);
 *     fw_graph_zero_grad(g);
 *
 * State: n_state tensors per trainable parameter, named
 * "optim.<param>.<state name>" (the names checkpoints store), f32 of the
 * parameter's shape, zero at the start. Their data lives in ctx's optimizer
 * arena (FW_MEM_OPTIMIZER, counted in the memory report and freed with ctx);
 * the tensor records belong to the fw_rt_optim and are freed with it.
 *
 * A plugin with step_fused (ABI 1.7) reads the clip factor in its update
 * and writes the kept half copies of the parameters (fw/graph.h) from the
 * new values, so the next forward casts none of them. FW_OPTIM_FUSE=0 in
 * the environment calls its plain step instead, as for an older plugin: the
 * gradients scaled in a pass of their own, the copies cast in the forward.
 * Both give the same bits.
 */
#ifndef FW_RUNTIME_OPTIM_H
#define FW_RUNTIME_OPTIM_H

#include "fw/loader.h"

#ifdef __cplusplus
extern "C" {
#endif

struct fw_rt_optim;

/* One parameter group: its weight decay and a factor on the step's lr. */
struct fw_rt_param_group {
	double weight_decay;
	double lr_scale;                  /* 0 counts as 1 */
};

struct fw_rt_optim_config {
	/* Groups and the rule that sorts parameters into them. groups NULL:
	 * Megatron's two, weight_decay on matrices (ndim >= 2, group 0) and
	 * none on vectors (biases, norms; group 1). */
	const struct fw_rt_param_group *groups;
	int n_groups;
	/* The group of parameter p (0..n_groups-1); NULL: ndim >= 2 ? 0 : 1. */
	int (*group_of)(void *user, const struct fw_tensor *p);
	void *user;
	double weight_decay;              /* of the default groups */
};

/* An optimizer for the trainable parameters of g (in g's order), with the
 * initialised optim plugin optim. NULL with err set: FW_ERR_INVALID (no
 * optim plugin, a group index out of range), FW_ERR_NOMEM. */
struct fw_rt_optim *fw_rt_optim_new(struct fw_ctx *ctx, struct fw_graph *g,
				    const struct fw_loaded *optim,
				    const struct fw_rt_optim_config *cfg, struct fw_err *err);
void fw_rt_optim_free(struct fw_rt_optim *o);

/* The state tensors, parameter i's state s at [i * n_state + s]; *n gets
 * their count (0 for a stateless optimizer such as SGD). */
struct fw_tensor **fw_rt_optim_state(const struct fw_rt_optim *o, int *n);
/* State tensors per parameter (the plugin's n_state). */
int fw_rt_optim_n_state(const struct fw_rt_optim *o);
/* The group parameter i of g was put in. */
int fw_rt_optim_group(const struct fw_rt_optim *o, int param);

/* L2 norm of every trainable parameter's gradient. */
double fw_rt_optim_grad_norm(const struct fw_rt_optim *o);
/* Multiplies every gradient by inv_scale (a loss scaler's 1/scale) and
 * returns their L2 norm after it, in one pass: inf or NaN when any unscaled
 * gradient is (an f32's square always fits a double, so only a non-finite
 * gradient makes the sum non-finite). */
double fw_rt_optim_unscale_norm(struct fw_rt_optim *o, float inv_scale);
/* max_norm / (norm + 1e-6) as a float when that is below 1 (Megatron's
 * clip_grad), else 1; max_norm <= 0 gives 1. */
float fw_rt_optim_clip_coef(double max_norm, double norm);
/* Scales the gradients by fw_rt_optim_clip_coef(max_norm, norm) in place
 * when that is not 1. */
void fw_rt_optim_clip(struct fw_rt_optim *o, double max_norm, double norm);
/* Multiplies every gradient by c. */
void fw_rt_optim_scale_grads(struct fw_rt_optim *o, float c);

/* One update at lr (times each group's lr_scale), step counting from 1.
 * The plugin's error comes back named: "optim/adamw: ...". */
enum fw_status fw_rt_optim_step(struct fw_rt_optim *o, double lr, int64_t step,
				struct fw_err *err);
/* The same update on the gradients times grad_scale (the clip factor), bit
 * for bit what fw_rt_optim_scale_grads(o, grad_scale) then fw_rt_optim_step
 * give. With a fused plugin the gradients are left unscaled; otherwise they
 * are scaled in place. Every parameter is marked written, its kept half
 * copy current when the plugin wrote it. */
enum fw_status fw_rt_optim_step_scaled(struct fw_rt_optim *o, double lr, int64_t step,
				       float grad_scale, struct fw_err *err);

#ifdef __cplusplus
}
#endif
#endif
