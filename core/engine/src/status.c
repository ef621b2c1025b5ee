/* status.c - errors, allocator hooks, assertion handler. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

static const char *const status_names[FW_STATUS_COUNT] = {
	[FW_OK] = "ok",
	[FW_ERR_INVALID] = "invalid argument",
	[FW_ERR_NOMEM] = "out of memory",
	[FW_ERR_IO] = "I/O error",
	[FW_ERR_FORMAT] = "bad file format",
	[FW_ERR_SHAPE] = "shape mismatch",
	[FW_ERR_NOT_FOUND] = "not found",
	[FW_ERR_UNSUPPORTED] = "unsupported",
	[FW_ERR_INTERNAL] = "internal error",
};

const char *fw_status_str(enum fw_status s)
{
	return (unsigned)s < FW_STATUS_COUNT ? status_names[s] : "unknown status";
}

enum fw_status fw_errorf(struct fw_err *err, enum fw_status status, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
		err->status = status;
	}
	return status;
}

void fw_err_clear(struct fw_err *err)
{
	if (err) {
		err->status = FW_OK;
		err->msg[0] = '\0';
	}
}

/* --- allocator ------------------------------------------------------------ */

#define HUGE_PAGE (2u << 20)
#define HUGE_MIN (8u << 20)    /* blocks from here on ask for huge pages */

/* FW_HUGEPAGES=0 turns the advice off. */
static bool huge_pages_wanted(void)
{
	static int wanted = -1;
	if (wanted < 0) {
		const char *e = getenv("FW_HUGEPAGES");
		wanted = !(e && !strcmp(e, "0"));
	}
	return wanted;
}

/* Big blocks (arenas, weights, optimizer state) start on a 2 MiB boundary
 * and ask for transparent huge pages, which the default madvise mode of
 * /sys/kernel/mm/transparent_hugepage gives only on request: fewer TLB
 * misses in the products and fewer page faults on first touch. */
static void *default_alloc(void *user, size_t size, size_t align)
{
	void *p = NULL;
	(void)user;
	bool huge = size >= HUGE_MIN && huge_pages_wanted();
	if (posix_memalign(&p, huge ? HUGE_PAGE : align, size ? size : align) != 0)
		return NULL;
#ifdef MADV_HUGEPAGE
	if (huge)
		madvise(p, size & ~(size_t)(HUGE_PAGE - 1), MADV_HUGEPAGE);
#endif
	return p;
}

static void default_free(void *user, void *ptr)
{
	(void)user;
	free(ptr);
}

static fw_alloc_fn alloc_fn = default_alloc;
static fw_free_fn free_fn = default_free;
static void *alloc_user;

void fw_set_allocator(fw_alloc_fn a, fw_free_fn f, void *user)
{
	alloc_fn = a ? a : default_alloc;
	free_fn = f ? f : default_free;
	alloc_user = user;
}

void *fw_malloc(size_t size)
{
	return alloc_fn(alloc_user, size, FW_ALIGN);
}

void *fw_calloc(size_t n, size_t size)
{
	if (size && n > SIZE_MAX / size)
		return NULL;
	void *p = fw_malloc(n * size);
	if (p)
		memset(p, 0, n * size);
	return p;
}

void fw_free(void *ptr)
{
	if (ptr)
		free_fn(alloc_user, ptr);
}

char *fw_strdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *p = fw_malloc(n);
	if (p)
		memcpy(p, s, n);
	return p;
}

/* --- programmer errors ---------------------------------------------------- */

static void default_abort(const char *file, int line, const char *expr)
{
	fprintf(stderr, "fw: assertion failed at %s:%d: %s\n", file, line, expr);
	abort();
}

static fw_abort_fn abort_fn = default_abort;

void fw_set_abort_handler(fw_abort_fn fn)
{
	abort_fn = fn ? fn : default_abort;
}

void fw_abort(const char *file, int line, const char *expr)
{
	abort_fn(file, line, expr);
	abort();  /* a handler that returns still stops here */
}
