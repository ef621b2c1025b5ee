/* scaler.c - Megatron's loss scalers (fw/runtime/scaler.h). */
#include "fw/runtime/scaler.h"

struct fw_rt_grad_scaler fw_rt_scaler_dynamic(float initial, float min_scale, int64_t window,
					      int64_t hysteresis)
{
	return (struct fw_rt_grad_scaler){
		.dynamic = true, .scale = initial, .min_scale = min_scale, .window = window,
		.hysteresis = hysteresis, .hysteresis_tracker = hysteresis,
	};
}

struct fw_rt_grad_scaler fw_rt_scaler_constant(float scale)
{
	return (struct fw_rt_grad_scaler){ .scale = scale };
}

float fw_rt_scaler_inv(const struct fw_rt_grad_scaler *s)
{
	return (float)(1.0 / (double)s->scale);
}

void fw_rt_scaler_update(struct fw_rt_grad_scaler *s, bool found_inf)
{
	if (!s->dynamic)
		return;
	if (found_inf) {
		s->growth_tracker = 0;
		if (--s->hysteresis_tracker <= 0) {
			float half = s->scale * 0.5f;
			s->scale = half > s->min_scale ? half : s->min_scale;
		}
	} else if (++s->growth_tracker == s->window) {
		s->growth_tracker = 0;
		s->hysteresis_tracker = s->hysteresis;
		s->scale *= 2.0f;
	}
}
