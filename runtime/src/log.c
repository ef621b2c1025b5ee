/* log.c - the caller's log callback (fw/runtime/log.h). */
#include <stdarg.h>
#include <stdio.h>

#include "fw/runtime/log.h"

void fw_rt_logf(const struct fw_rt_log *log, enum fw_log_level level, const char *fmt, ...)
{
	if (!log || !log->fn)
		return;
	char line[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	log->fn(log->user, level, line);
}
