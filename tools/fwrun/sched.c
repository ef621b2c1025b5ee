/* sched.c - learning-rate schedule with Megatron-LM's styles and flags.
 *
 * Iterations count from 1. Warmup: lr = init + (max - init) * n / warmup for
 * n <= warmup, so the first iteration already moves (like llm.c's
 * (step+1)/warmup) and iteration `warmup` runs at the peak. After warmup,
 * r = (n - warmup) / (decay - warmup) and lr = min + coeff(r) * (max - min);
 * past `decay` the lr stays at min. Documented in docs/training.md.
 */
#include <math.h>

#include "fwrun.h"

const char *const lr_styles[] = { "constant", "linear", "cosine", "inverse-square-root",
				  "WSD", NULL };
const char *const wsd_styles[] = { "exponential", "linear", "cosine", "minus_sqrt", NULL };

enum { CONSTANT, LINEAR, COSINE, INV_SQRT, WSD };
enum { WSD_EXP, WSD_LINEAR, WSD_COSINE, WSD_MINUS_SQRT };

double lr_at(const struct lr_schedule *s, int64_t n)
{
	if (s->warmup > 0 && n <= s->warmup)
		return s->init_lr + (s->max_lr - s->init_lr) * (double)n / (double)s->warmup;
	if (s->style == CONSTANT)
		return s->max_lr;
	if (n > s->decay)
		return s->min_lr;
	if (s->style == INV_SQRT) {
		double w = s->warmup > 1 ? (double)s->warmup : 1.0;
		double lr = s->max_lr * sqrt(w) / sqrt(n > 1 ? (double)n : 1.0);
		return lr > s->min_lr ? lr : s->min_lr;
	}
	double span = (double)(s->decay - s->warmup);
	double r = span > 0 ? (double)(n - s->warmup) / span : 1.0, coeff;
	switch (s->style) {
	case LINEAR:
		coeff = 1.0 - r;
		break;
	case COSINE:
		coeff = 0.5 * (cos(M_PI * r) + 1.0);
		break;
	default: {      /* WSD: stable, then anneal over the last wsd_decay iterations */
		int64_t anneal_start = s->decay - s->wsd_decay;
		if (n <= anneal_start) {
			coeff = 1.0;
			break;
		}
		double a = (double)(n - anneal_start) / (double)s->wsd_decay;
		switch (s->wsd_style) {
		case WSD_EXP: coeff = 2.0 * pow(0.5, a) - 1.0; break;
		case WSD_LINEAR: coeff = 1.0 - a; break;
		case WSD_COSINE: coeff = 0.5 * (cos(M_PI * a) + 1.0); break;
		default: coeff = 1.0 - sqrt(a); break;
		}
	}
	}
	return s->min_lr + coeff * (s->max_lr - s->min_lr);
}
