/* half_convert.c - the f32 <-> bf16/f16 conversions (half_isa.c) on each
 * instruction-set path this CPU runs, one thread, in CPU time (steadier than
 * wall time on a shared machine): nanoseconds per element, best of the
 * rounds, over a block that stays in L2 (16384 elements, as half.h's kernels
 * convert a block at a time) and one that does not (16M elements).
 *
 * usage: half_convert [--rounds N]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fw/machine.h"
#include "half.h"

static double cpu_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
	return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv)
{
	int rounds = 5;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--rounds") && i + 1 < argc) {
			rounds = atoi(argv[++i]);
		} else {
			fprintf(stderr, "usage: half_convert [--rounds N]\n");
			return 2;
		}
	}
	static const char *const paths[] = { "scalar", "avx2", "avx512", "avx512bf16" };
	static const int64_t sizes[] = { 16384, 16 << 20 };
	int64_t nmax = sizes[1];
	float *f = malloc(sizeof(float) * (size_t)nmax);
	uint16_t *h = malloc(sizeof(uint16_t) * (size_t)nmax);
	if (!f || !h)
		return 1;
	for (int64_t i = 0; i < nmax; i++)
		f[i] = (float)((i * 7919) % 100003) * 1e-3f - 50.0f;
	printf("ns per element, one thread, best of %d rounds (CPU time)\n", rounds);
	printf("%-11s %9s %12s %12s %12s %12s\n", "path", "elements", "f32->bf16", "bf16->f32",
	       "f32->f16", "f16->f32");
	for (int p = 0; p < 4; p++) {
		if (fw_kernel_isa_force(paths[p]) != FW_OK)
			continue;
		for (int s = 0; s < 2; s++) {
			int64_t n = sizes[s], reps = nmax / n;
			double best[4] = { 1e30, 1e30, 1e30, 1e30 };
			for (int r = 0; r < rounds; r++)
				for (int k = 0; k < 4; k++) {
					double t0 = cpu_s();
					for (int64_t j = 0; j < reps; j++) {
						if (k == 0)
							fw_half_ops.f32_to_bf16(h, f, n);
						else if (k == 1)
							fw_half_ops.bf16_to_f32(f, h, n);
						else if (k == 2)
							fw_half_ops.f32_to_f16(h, f, n);
						else
							fw_half_ops.f16_to_f32(f, h, n);
					}
					double t = (cpu_s() - t0) / (double)(reps * n) * 1e9;
					best[k] = t < best[k] ? t : best[k];
				}
			printf("%-11s %9lld %12.3f %12.3f %12.3f %12.3f\n", paths[p], (long long)n,
			       best[0], best[1], best[2], best[3]);
		}
	}
	fw_kernel_isa_force(NULL);
	printf("picked at load: %s\n", fw_kernel_isa());
	free(f);
	free(h);
	return 0;
}
