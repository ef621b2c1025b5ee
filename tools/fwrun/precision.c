/* precision.c - fwrun's mixed-precision options (--bf16, --fp16, the loss
 * scale flags, --debug-inject-overflow) checked and turned into the
 * session's loss scaler (docs/mixed-precision.md). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "session.h"

/* "STEP[,STEP...]" of positive steps into s->inject. */
static enum fw_status parse_steps(struct session *s, const char *text, struct fw_err *err)
{
	int n = 1;
	for (const char *p = text; *p; p++)
		n += *p == ',';
	s->inject = calloc((size_t)n, sizeof(*s->inject));
	if (!s->inject)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	for (const char *p = text;;) {
		char *end;
		errno = 0;
		long long v = strtoll(p, &end, 10);
		if (end == p || v < 1 || errno || (*end && *end != ','))
			return fw_errorf(err, FW_ERR_INVALID, "--debug-inject-overflow=%s: expected "
					 "steps (positive integers) separated by commas", text);
		s->inject[s->n_inject++] = v;
		if (!*end)
			return FW_OK;
		p = end + 1;
	}
}

enum fw_status precision_choice(bool bf16, bool fp16, enum fw_dtype *dt, struct fw_err *err)
{
	if (bf16 && fp16)
		return fw_errorf(err, FW_ERR_INVALID, "--bf16 and --fp16 exclude each other: "
				 "choose one");
	*dt = bf16 ? FW_BF16 : fp16 ? FW_F16 : FW_F32;
	return FW_OK;
}

enum fw_status precision_setup(struct session *s, struct fw_err *err)
{
	bool fp16 = opt_b(s, "fp16");
	const char *ls = opt_s(s, "loss-scale");
	double init = opt_f(s, "initial-loss-scale"), min = opt_f(s, "min-loss-scale");
	if (precision_choice(opt_b(s, "bf16"), fp16, &s->precision, err) != FW_OK)
		return err->status;
	if (min > init)
		return fw_errorf(err, FW_ERR_INVALID, "--min-loss-scale %g is above "
				 "--initial-loss-scale %g", min, init);
	if (*ls) {
		char *end;
		double v = strtod(ls, &end);
		if (*end || !(v > 0) || v > 3.4e38)
			return fw_errorf(err, FW_ERR_INVALID, "--loss-scale=%s: expected a positive "
					 "number (leave it unset for dynamic scaling)", ls);
		s->scaler = fw_rt_scaler_constant((float)v);
		s->have_scaler = true;
	} else if (fp16) {
		s->scaler = fw_rt_scaler_dynamic((float)init, (float)min,
						 opt_i(s, "loss-scale-window"), opt_i(s, "hysteresis"));
		s->have_scaler = true;
	}
	const char *inj = opt_s(s, "debug-inject-overflow");
	return *inj ? parse_steps(s, inj, err) : FW_OK;
}
