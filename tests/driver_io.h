/* driver_io.h - the oracle drivers' file exchange with their Python side
 * (tests/flash_eval.c, tests/t5_driver.c): raw arrays as DIR/NAME files. */
#ifndef FW_TEST_DRIVER_IO_H
#define FW_TEST_DRIVER_IO_H

#include <stdbool.h>
#include <stdio.h>

/* Writes or reads exactly bytes of data as dir/name; 0, or -1 with one line
 * on stderr prefixed by prog. */
static inline int driver_io(const char *prog, const char *dir, const char *name, void *data,
			    size_t bytes, bool write)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, write ? "wb" : "rb");
	size_t n = 0;
	if (f) {
		n = write ? fwrite(data, 1, bytes, f) : fread(data, 1, bytes, f);
		fclose(f);
	}
	if (n != bytes) {
		fprintf(stderr, "%s: %s: cannot %s %zu bytes\n", prog, path,
			write ? "write" : "read", bytes);
		return -1;
	}
	return 0;
}

#endif
