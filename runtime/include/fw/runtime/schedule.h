/* fw/runtime/schedule.h - the learning-rate schedule, Megatron-LM's formula.
 *
 * A pure function of the schedule and the iteration: no state, so a resumed
 * run and a fresh one agree at every step. Iterations count from 1.
 *
 *   warmup (n <= warmup):  lr = init + (max - init) * n / warmup
 *     (the first iteration already moves, and iteration `warmup` is at max);
 *   constant:              lr = max after warmup;
 *   past decay (n > decay): lr = min;
 *   inverse-square-root:   lr = max(min, max * sqrt(max(warmup, 1)) / sqrt(max(n, 1)));
 *   otherwise, with r = (n - warmup) / (decay - warmup) (1 when decay == warmup),
 *     lr = min + coeff * (max - min) where coeff is
 *     linear 1 - r;  cosine (cos(pi r) + 1) / 2;
 *     WSD: 1 until decay - wsd_decay, then with a = the fraction of the last
 *     wsd_decay iterations gone: exponential 2 * 0.5^a - 1, linear 1 - a,
 *     cosine (cos(pi a) + 1) / 2, minus_sqrt 1 - sqrt(a).
 *
 * Documented for users in docs/training.md; tests/lr_schedule.py checks
 * fwrun's logged lr against Megatron's get_lr, tests/test_rt_schedule.c this
 * function against hand-derived values.
 */
#ifndef FW_RUNTIME_SCHEDULE_H
#define FW_RUNTIME_SCHEDULE_H

#include <stdint.h>

#include "fw/status.h"

#ifdef __cplusplus
extern "C" {
#endif

enum fw_lr_style { FW_LR_CONSTANT, FW_LR_LINEAR, FW_LR_COSINE, FW_LR_INV_SQRT, FW_LR_WSD };
enum fw_wsd_style { FW_WSD_EXPONENTIAL, FW_WSD_LINEAR, FW_WSD_COSINE, FW_WSD_MINUS_SQRT };

/* Megatron's names of each style, indexed by the enums, NULL-terminated
 * (usable directly as an FW_OPT_CHOICE list). */
extern const char *const fw_lr_style_names[];
extern const char *const fw_wsd_style_names[];

struct fw_lr_schedule {
	double max_lr, min_lr, init_lr;
	int64_t warmup, decay;            /* iterations */
	enum fw_lr_style style;
	enum fw_wsd_style wsd_style;
	int64_t wsd_decay;                /* WSD: the annealing iterations at the end */
};

/* lr for iteration n (1-based). */
double fw_lr_at(const struct fw_lr_schedule *s, int64_t n);

/* The style named name (one of the lists above); FW_ERR_INVALID otherwise. */
enum fw_status fw_lr_style_parse(const char *name, enum fw_lr_style *style, struct fw_err *err);
enum fw_status fw_wsd_style_parse(const char *name, enum fw_wsd_style *style,
				  struct fw_err *err);

#ifdef __cplusplus
}
#endif
#endif
