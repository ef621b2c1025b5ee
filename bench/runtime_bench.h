/* runtime_bench.h - what the runtime benches (decode.c, prefill.c) share: the
 * clock, medians, and a plugin opened with options. */
#ifndef FW_BENCH_RUNTIME_BENCH_H
#define FW_BENCH_RUNTIME_BENCH_H

#include <stdlib.h>
#include <time.h>

#include "fw/fw.h"
#include "fw/loader.h"

static inline double bench_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* This process's CPU seconds (every thread): a shared machine's load does
 * not change it much, unlike the wall clock. */
static inline double bench_cpu_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline int bench_cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* The median of t[0..n) (sorted in place). */
static inline double bench_median(double *t, int n)
{
	qsort(t, (size_t)n, sizeof(double), bench_cmp);
	return t[n / 2];
}

/* Plugin name of kind, its options set from opts (name, value pairs, NULL
 * ended), resolved and initialised; NULL with err set. */
static inline struct fw_loaded *bench_plugin(const char *name, enum fw_plugin_kind kind,
					     const char *const *opts, struct fw_err *err)
{
	struct fw_loaded *p = NULL;
	if (fw_plugin_open(name, kind, &p, err) != FW_OK)
		return NULL;
	for (int i = 0; opts && opts[i]; i += 2)
		if (fw_options_set(p->opts, opts[i], opts[i + 1], err) != FW_OK)
			goto fail;
	if (fw_options_resolve(p->opts, err) == FW_OK && fw_plugin_init(p, NULL, err) == FW_OK)
		return p;
fail:
	fw_plugin_close(p);
	return NULL;
}

#endif
