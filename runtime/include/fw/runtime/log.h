/* fw/runtime/log.h - where the runtime's messages go: the caller's callback.
 *
 * The runtime never prints. What it has to say (a dataset's summary, a
 * skipped record) is one line, without a trailing newline or a program name,
 * handed to the callback of a struct fw_rt_log; a NULL log (or callback)
 * drops it. fwrun prints "fwrun: LINE" on stderr.
 */
#ifndef FW_RUNTIME_LOG_H
#define FW_RUNTIME_LOG_H

#include "fw/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef void (*fw_rt_log_fn)(void *user, enum fw_log_level level, const char *line);

struct fw_rt_log {
	fw_rt_log_fn fn;
	void *user;
};

/* Formats one line and hands it to log (if any). */
void fw_rt_logf(const struct fw_rt_log *log, enum fw_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#ifdef __cplusplus
}
#endif
#endif
