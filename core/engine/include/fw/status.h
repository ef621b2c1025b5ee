/* fw/status.h - status codes, error records, allocator hooks.
 *
 * Library code never exits: actions return enum fw_status and leave a one-line
 * message in a struct fw_err owned by the caller (or by a context).
 */
#ifndef FW_STATUS_H
#define FW_STATUS_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

enum fw_status {
	FW_OK = 0,
	FW_ERR_INVALID,     /* bad argument, option or value */
	FW_ERR_NOMEM,       /* allocation failed */
	FW_ERR_IO,          /* file missing, unreadable, unwritable */
	FW_ERR_FORMAT,      /* file exists but its content is wrong or corrupt */
	FW_ERR_SHAPE,       /* shapes or dtypes do not fit */
	FW_ERR_NOT_FOUND,   /* a named thing does not exist */
	FW_ERR_UNSUPPORTED, /* valid request this build cannot do */
	FW_ERR_INTERNAL,    /* a library (oneDNN, HDF5) failed unexpectedly */
	FW_STATUS_COUNT
};

#define FW_ERR_MSG_MAX 512

/* The last error of an operation: status plus one human-readable line. */
struct fw_err {
	enum fw_status status;
	char msg[FW_ERR_MSG_MAX];
};

const char *fw_status_str(enum fw_status s);

/* Records status and message in err (err may be NULL); returns status. */
enum fw_status fw_errorf(struct fw_err *err, enum fw_status status,
			 const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void fw_err_clear(struct fw_err *err);

/* Every allocation the core makes goes through these, so a test can inject
 * failures. fw_set_allocator(NULL, NULL, NULL) restores malloc/free. */
typedef void *(*fw_alloc_fn)(void *user, size_t size, size_t align);
typedef void (*fw_free_fn)(void *user, void *ptr);
void fw_set_allocator(fw_alloc_fn alloc, fw_free_fn free_fn, void *user);
void *fw_malloc(size_t size);                 /* 64-byte aligned; NULL on failure */
void *fw_calloc(size_t n, size_t size);       /* zeroed, overflow-checked */
void fw_free(void *ptr);
char *fw_strdup(const char *s);

/* Programmer errors only (broken invariants), never bad input. The handler
 * is hookable for tests; the default prints and aborts. */
typedef void (*fw_abort_fn)(const char *file, int line, const char *expr);
void fw_set_abort_handler(fw_abort_fn fn);
void fw_abort(const char *file, int line, const char *expr);
#define FW_ASSERT(x) \
	do { if (!(x)) fw_abort(__FILE__, __LINE__, #x); } while (0)

#ifdef __cplusplus
}
#endif
#endif
