/* schedule.c - Megatron-LM's learning-rate formula (fw/runtime/schedule.h). */
#include <math.h>
#include <string.h>

#include "fw/runtime/schedule.h"

const char *const fw_lr_style_names[] = { "constant", "linear", "cosine",
					  "inverse-square-root", "WSD", NULL };
const char *const fw_wsd_style_names[] = { "exponential", "linear", "cosine", "minus_sqrt",
					   NULL };

double fw_lr_at(const struct fw_lr_schedule *s, int64_t n)
{
	if (s->warmup > 0 && n <= s->warmup)
		return s->init_lr + (s->max_lr - s->init_lr) * (double)n / (double)s->warmup;
	if (s->style == FW_LR_CONSTANT)
		return s->max_lr;
	if (n > s->decay)
		return s->min_lr;
	if (s->style == FW_LR_INV_SQRT) {
		double w = s->warmup > 1 ? (double)s->warmup : 1.0;
		double lr = s->max_lr * sqrt(w) / sqrt(n > 1 ? (double)n : 1.0);
		return lr > s->min_lr ? lr : s->min_lr;
	}
	double span = (double)(s->decay - s->warmup);
	double r = span > 0 ? (double)(n - s->warmup) / span : 1.0, coeff;
	switch (s->style) {
	case FW_LR_LINEAR:
		coeff = 1.0 - r;
		break;
	case FW_LR_COSINE:
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
		case FW_WSD_EXPONENTIAL: coeff = 2.0 * pow(0.5, a) - 1.0; break;
		case FW_WSD_LINEAR: coeff = 1.0 - a; break;
		case FW_WSD_COSINE: coeff = 0.5 * (cos(M_PI * a) + 1.0); break;
		default: coeff = 1.0 - sqrt(a); break;
		}
	}
	}
	return s->min_lr + coeff * (s->max_lr - s->min_lr);
}

static int index_of(const char *const *names, const char *name)
{
	for (int i = 0; names[i]; i++)
		if (!strcmp(names[i], name))
			return i;
	return -1;
}

enum fw_status fw_lr_style_parse(const char *name, enum fw_lr_style *style, struct fw_err *err)
{
	int i = index_of(fw_lr_style_names, name);
	if (i < 0)
		return fw_errorf(err, FW_ERR_INVALID, "unknown lr decay style '%s'", name);
	*style = (enum fw_lr_style)i;
	return FW_OK;
}

enum fw_status fw_wsd_style_parse(const char *name, enum fw_wsd_style *style,
				  struct fw_err *err)
{
	int i = index_of(fw_wsd_style_names, name);
	if (i < 0)
		return fw_errorf(err, FW_ERR_INVALID, "unknown WSD decay style '%s'", name);
	*style = (enum fw_wsd_style)i;
	return FW_OK;
}
