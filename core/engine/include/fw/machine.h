/* fw/machine.h - what decides speed on this machine, as torch.__config__.show()
 * tells it: the CPU's features, the ISA oneDNN dispatches to, the OpenMP
 * runtime and its threads, and the matmul kernel each dtype gets. */
#ifndef FW_MACHINE_H
#define FW_MACHINE_H

#include <stdio.h>

#include "fw/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The CPU as /proc/cpuinfo describes it (its first processor). */
struct fw_cpu {
	char model[128];
	bool avx2, fma, f16c;
	bool avx512f, avx512bw, avx512vl, avx512_vnni, avx512_bf16, avx512_fp16;
	bool amx_tile, amx_bf16, amx_int8;
};
void fw_cpu_detect(struct fw_cpu *cpu);

/* The kernel a matmul of two dtype-dt operands gets on this CPU, e.g.
 * "oneDNN brg:avx512_core_amx" or "widened to f32, then oneDNN ...". */
const char *fw_matmul_kernel(enum fw_dtype dt, char *buf, size_t len);

/* Forces (or stops forcing) bf16/f16 products through the f32 widening path
 * even where oneDNN has a native kernel. FW_MATMUL_FALLBACK=1 does the same
 * from the environment. Clears the primitive cache. */
void fw_matmul_force_fallback(bool force);

/* Writes the whole report, one "key: value" a line. */
void fw_machine_report(FILE *f);

#ifdef __cplusplus
}
#endif

#endif
