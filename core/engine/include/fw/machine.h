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

/* The instruction set of the f32 <-> bf16/f16 conversions (autocast's
 * kernels, fw_convert), picked when libfw loads from what the CPU runs:
 * "avx512bf16", "avx512", "avx2" (with F16C) or "scalar"; every one rounds
 * the same (nearest even, NaN kept quiet). FW_HALF_ISA=NAME picks a lower
 * one from the environment. */
const char *fw_half_isa(void);
/* Forces path name (tests), NULL = back to the CPU's best. FW_ERR_INVALID:
 * no such path; FW_ERR_UNSUPPORTED: this CPU cannot run it. Not thread-safe:
 * call it while no graph runs. */
enum fw_status fw_half_isa_force(const char *name);

/* Writes the whole report, one "key: value" a line. */
void fw_machine_report(FILE *f);

#ifdef __cplusplus
}
#endif

#endif
