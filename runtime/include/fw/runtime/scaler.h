/* fw/runtime/scaler.h - loss scaling for mixed precision, with the
 * semantics of Megatron-LM's ConstantGradScaler and DynamicGradScaler.
 *
 * The loss is multiplied by scale before the backward; the gradients are
 * multiplied by 1/scale (fw_rt_optim_unscale_norm, which also finds inf/nan
 * in the same pass). A step whose unscaled gradients hold an inf or NaN is
 * skipped: no optimizer step, no scheduler step. Then update():
 *
 *   overflow: growth_tracker = 0; hysteresis_tracker -= 1;
 *             if hysteresis_tracker <= 0: scale = max(scale * 0.5, min_scale)
 *   else:     growth_tracker += 1;
 *             if growth_tracker == window: growth_tracker = 0,
 *                 hysteresis_tracker = hysteresis, scale *= 2
 *
 * As in Megatron, hysteresis_tracker is restored only when the scale grows,
 * so after a first back-off every further overflow halves the scale until
 * the next growth. A constant scaler never changes (overflowing steps are
 * still skipped). The scale is an f32, as Megatron's is.
 */
#ifndef FW_RUNTIME_SCALER_H
#define FW_RUNTIME_SCALER_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct fw_rt_grad_scaler {
	bool dynamic;                     /* false: a constant scale */
	float scale, min_scale;
	int64_t window, hysteresis;       /* --loss-scale-window, --hysteresis */
	/* state, kept in checkpoints */
	int64_t growth_tracker, hysteresis_tracker;
};

/* Megatron's DynamicGradScaler(initial, min, 2.0, 0.5, window, hysteresis). */
struct fw_rt_grad_scaler fw_rt_scaler_dynamic(float initial, float min_scale, int64_t window,
					      int64_t hysteresis);
/* Megatron's ConstantGradScaler(scale). */
struct fw_rt_grad_scaler fw_rt_scaler_constant(float scale);
/* 1/scale as Megatron computes it: (float)(1.0 / (double)scale). */
float fw_rt_scaler_inv(const struct fw_rt_grad_scaler *s);
/* After a step: found_inf says whether its gradients overflowed. */
void fw_rt_scaler_update(struct fw_rt_grad_scaler *s, bool found_inf);

#ifdef __cplusplus
}
#endif
#endif
