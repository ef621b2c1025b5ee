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

/* The CPU as cpuid describes it (the brand string; a feature is set when
 * the CPU has it and XCR0 says the OS saves its registers). */
struct fw_cpu {
	char model[128];
	bool avx2, fma, f16c;
	bool avx512f, avx512bw, avx512vl, avx512_vnni, avx512_bf16, avx512_fp16;
	bool amx_tile, amx_bf16, amx_int8;
	bool avx512dq;
};
void fw_cpu_detect(struct fw_cpu *cpu);

/* The kernel a matmul of two dtype-dt operands gets on this CPU, e.g.
 * "oneDNN brg:avx512_core_amx" or "widened to f32, then oneDNN ...". */
const char *fw_matmul_kernel(enum fw_dtype dt, char *buf, size_t len);

/* Forces (or stops forcing) bf16/f16 products through the f32 widening path
 * even where oneDNN has a native kernel. FW_MATMUL_FALLBACK=1 does the same
 * from the environment. Clears the primitive cache. */
void fw_matmul_force_fallback(bool force);

/* The instruction-set level of fw's own kernels (core/engine/src/isa.c):
 * "avx512bf16" (AVX512-BF16's vcvtneps2bf16 for f32 -> bf16), "avx512"
 * (AVX-512 F/BW/VL/DQ: the half conversions and GELU's AVX-512 copy),
 * "avx2" (AVX2 + FMA + F16C) or "scalar" (conversions an element at a
 * time). Picked when libfw loads: the best this CPU runs, or a lower one
 * named by FW_KERNEL_ISA (FW_HALF_ISA is read too, its old name). Every
 * level rounds the same (nearest even, NaN kept quiet). */
const char *fw_kernel_isa(void);
/* The best level this CPU and OS run. */
const char *fw_kernel_isa_best(void);
/* Forces level name (tests, benches), NULL = back to the CPU's best.
 * FW_ERR_INVALID: no such level; FW_ERR_UNSUPPORTED: this CPU cannot run
 * it. Not thread-safe: call it while no graph runs. */
enum fw_status fw_kernel_isa_force(const char *name);

/* Writes the whole report, one "key: value" a line. */
void fw_machine_report(FILE *f);

#ifdef __cplusplus
}
#endif

#endif
