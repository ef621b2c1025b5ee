/* info.c - fwrun info: the version, and what decides speed on this machine. */
#include <string.h>

#include "fwrun.h"

int cmd_info(int argc, char **argv)
{
	if (argc > 0 && (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h"))) {
		puts("usage: fwrun info\n"
		     "\n"
		     "Prints fw's version and plugin ABI, the CPU and its features, the ISA\n"
		     "oneDNN dispatches to, the OpenMP runtime and its threads, and the matmul\n"
		     "kernel each dtype gets, and the level of fw's own kernels (half\n"
		     "conversions, GELU's AVX-512 copy). ONEDNN_MAX_CPU_ISA limits oneDNN's\n"
		     "ISA; FW_KERNEL_ISA=scalar|avx2|avx512|avx512bf16 fw's own (a lower\n"
		     "level than the CPU's best); FW_MATMUL_FALLBACK=1 forces bf16/f16\n"
		     "products through f32.");
		return EXIT_OK;
	}
	if (argc > 0)
		return fail(FW_ERR_INVALID, "info: unexpected argument '%s'", argv[0]);
	printf("fw: %d.%d.%d, plugin ABI %d.%d\n", FW_VERSION_MAJOR, FW_VERSION_MINOR,
	       FW_VERSION_PATCH, FW_ABI_MAJOR, FW_ABI_MINOR);
	fw_machine_report(stdout);
	return EXIT_OK;
}
