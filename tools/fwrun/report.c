/* report.c - what every fwrun command prints its errors and the runtime's
 * log lines with: "fwrun: MSG" on stderr. Not a command: main.c dispatches,
 * the command files call these, and nothing here calls back into either. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "fwrun.h"

int die(int code, const char *fmt, ...)
{
	char msg[8192];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	const char *m = msg;
	while (!strncmp(m, "fwrun: ", 7))     /* messages that already name fwrun */
		m += 7;
	fprintf(stderr, "fwrun: %s\n", m);
	return code;
}

static void log_line(void *user, enum fw_log_level level, const char *line)
{
	(void)user;
	(void)level;
	fprintf(stderr, "fwrun: %s\n", line);
}

const struct fw_rt_log fwrun_log = { log_line, NULL };

const char *num_text(double x, char *buf, size_t len)
{
	if (x == (double)(long long)x && x > -1e18 && x < 1e18)
		snprintf(buf, len, "%lld", (long long)x);
	else
		snprintf(buf, len, "%g", x);
	return buf;
}
