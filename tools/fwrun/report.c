/* report.c - what every fwrun command prints its errors and the runtime's
 * log lines with ("fwrun: MSG" on stderr), and the one map from a status to
 * an exit code. Not a command: main.c dispatches, the command files call
 * these, and nothing here calls back into either. */
#define _GNU_SOURCE
#include <sched.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fwrun.h"

int exit_code(enum fw_status st)
{
	switch (st) {
	case FW_ERR_INVALID:
		return EXIT_USAGE;
	case FW_OK:                /* a failure without a status: still a failure */
	case FW_ERR_NOMEM:
	case FW_ERR_IO:
	case FW_ERR_FORMAT:
	case FW_ERR_SHAPE:
	case FW_ERR_NOT_FOUND:
	case FW_ERR_UNSUPPORTED:
	case FW_ERR_INTERNAL:
	case FW_STATUS_COUNT:
		break;
	}
	return EXIT_RUNTIME;
}

static void vsay(const char *fmt, va_list ap)
{
	char msg[8192];
	vsnprintf(msg, sizeof(msg), fmt, ap);
	const char *m = msg;
	while (!strncmp(m, "fwrun: ", 7))     /* messages that already name fwrun */
		m += 7;
	fprintf(stderr, "fwrun: %s\n", m);
}

void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsay(fmt, ap);
	va_end(ap);
}

int fail(enum fw_status st, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsay(fmt, ap);
	va_end(ap);
	return exit_code(st);
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
	if (x > -1e18 && x < 1e18 && x == (double)(long long)x)   /* range first: the cast is UB outside */
		snprintf(buf, len, "%lld", (long long)x);
	else
		snprintf(buf, len, "%g", x);
	return buf;
}

int allowed_cpus(void)
{
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof(set), &set) == 0)
		return CPU_COUNT(&set);
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? (int)n : 1;
}

void set_threads(int threads)
{
	if (threads <= 0)
		return;
	fw_set_num_threads(threads);
	int cpus = allowed_cpus();
	if (cpus < threads)
		say("warning: --threads=%d, but this process may run on %d CPU%s (its affinity "
		    "mask: taskset, or OMP_PROC_BIND/OMP_PLACES applied by a library's OpenMP "
		    "runtime), so its threads will share %s", threads, cpus, cpus == 1 ? "" : "s",
		    cpus == 1 ? "it" : "them");
}
