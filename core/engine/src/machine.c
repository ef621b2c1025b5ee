/* machine.c - the CPU's features (isa.c detects them), fw's kernel level,
 * oneDNN's ISA, the OpenMP runtime and the kernel per dtype, for `fwrun
 * info` and the benchmarks' headers. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>
#include <oneapi/dnnl/dnnl.h>

#include "internal.h"

static const char *isa_name(dnnl_cpu_isa_t isa)
{
	switch (isa) {
	case dnnl_cpu_isa_sse41: return "sse41";
	case dnnl_cpu_isa_avx: return "avx";
	case dnnl_cpu_isa_avx2: return "avx2";
	case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
	case dnnl_cpu_isa_avx512_mic: return "avx512_mic";
	case dnnl_cpu_isa_avx512_mic_4ops: return "avx512_mic_4ops";
	case dnnl_cpu_isa_avx512_core: return "avx512_core";
	case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
	case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
	case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
	default: return "unknown";
	}
}

static const char *omp_library(void)
{
	Dl_info info;
	if (dladdr((void *)omp_get_max_threads, &info) && info.dli_fname)
		return info.dli_fname;
	return "unknown";
}

/* Every other OpenMP runtime mapped into the process (libgomp comes in with
 * libdnnl; libomp serves its GOMP_* entry points). */
static int list_runtime(struct dl_phdr_info *info, size_t size, void *data)
{
	const char *n = info->dlpi_name;
	if (n && (strstr(n, "libgomp") || strstr(n, "libiomp"))) {
		FILE *f = data;
		fprintf(f, ", also mapped: %s", n);
	}
	return 0;
}

void fw_machine_report(FILE *f)
{
	struct fw_cpu c;
	fw_cpu_detect(&c);
	fprintf(f, "cpu: %s\n", c.model);
	fprintf(f, "cpu features:");
	const struct { const char *name; bool on; } feats[] = {
		{ "avx2", c.avx2 }, { "fma", c.fma }, { "f16c", c.f16c },
		{ "avx512f", c.avx512f }, { "avx512bw", c.avx512bw }, { "avx512vl", c.avx512vl },
		{ "avx512dq", c.avx512dq }, { "avx512_vnni", c.avx512_vnni }, { "avx512_bf16", c.avx512_bf16 },
		{ "avx512_fp16", c.avx512_fp16 }, { "amx_tile", c.amx_tile },
		{ "amx_bf16", c.amx_bf16 }, { "amx_int8", c.amx_int8 },
	};
	for (size_t i = 0; i < sizeof(feats) / sizeof(feats[0]); i++)
		fprintf(f, " %s%s", feats[i].on ? "+" : "-", feats[i].name);
	fputc('\n', f);
#ifdef __clang__
	fprintf(f, "build: clang %d.%d.%d", __clang_major__, __clang_minor__, __clang_patchlevel__);
#else
	fprintf(f, "build: gcc %d.%d.%d", __GNUC__, __GNUC_MINOR__, __GNUC_PATCHLEVEL__);
#endif
	fprintf(f, ", -march=%s\n", FW_BUILD_MARCH);
	const dnnl_version_t *v = dnnl_version();
	const char *isa_var = getenv("ONEDNN_MAX_CPU_ISA") ? "ONEDNN_MAX_CPU_ISA" : "DNNL_MAX_CPU_ISA";
	const char *max_isa = getenv(isa_var);
	fprintf(f, "oneDNN: %d.%d.%d (%s), cpu runtime %s, dispatches to %s%s%s%s%s%s\n", v->major,
		v->minor, v->patch, v->hash ? v->hash : "?",
		v->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" :
		v->cpu_runtime == DNNL_RUNTIME_TBB ? "TBB" : "other",
		isa_name(dnnl_get_effective_cpu_isa()), max_isa ? " (" : "", max_isa ? isa_var : "",
		max_isa ? "=" : "", max_isa ? max_isa : "", max_isa ? ")" : "");
	fprintf(f, "OpenMP: %s (version %d), %d threads", omp_library(), _OPENMP,
		omp_get_max_threads());
	dl_iterate_phdr(list_runtime, f);
	fputc('\n', f);
	char buf[256];
	for (enum fw_dtype dt = FW_F32; dt <= FW_F16; dt++)
		fprintf(f, "matmul %s: %s\n", fw_dtype_name(dt), fw_matmul_kernel(dt, buf, sizeof(buf)));
	const char *env = getenv("FW_KERNEL_ISA") ? "FW_KERNEL_ISA" :
			  getenv("FW_HALF_ISA") ? "FW_HALF_ISA" : NULL;
	fprintf(f, "fw kernels: %s (this CPU: %s%s%s%s%s)\n", fw_kernel_isa(), fw_kernel_isa_best(),
		env ? "; " : "", env ? env : "", env ? "=" : "", env ? getenv(env) : "");
	fprintf(f, "half conversions: %s\n", fw_kernel_isa());
	fprintf(f, "GELU: %s copy\n", fw_kernel_avx512() ? "the AVX-512" : "the build's (-march)");
}
