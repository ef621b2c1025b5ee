/* isa.c - the one instruction-set dispatcher of fw's own kernels: what the
 * CPU and its OS run (cpuid, and XCR0 for the register state the OS saves),
 * the level in use, and forcing a lower one.
 *
 * Levels, each one including those below it:
 *   scalar      the half conversions an element at a time (tensor.c)
 *   avx2        AVX2, FMA and F16C: 8-lane half conversions (half_isa.c)
 *   avx512      AVX-512 F, BW, VL and DQ: 16-lane conversions, and the
 *               AVX-512 copies of hot loops (GELU, ops_elementwise.c)
 *   avx512bf16  AVX512-BF16 too: vcvtneps2bf16 rounds f32 to bf16
 * The rest of fw is compiled for the build's -march (x86-64-v3, i.e. AVX2,
 * by default), which no level turns off. AMX (tile, BF16, INT8) and
 * AVX512-FP16 are detected and reported: oneDNN's matmuls use them, no fw
 * kernel of its own does.
 *
 * FW_KERNEL_ISA=NAME picks a lower level when libfw loads (FW_HALF_ISA, the
 * name it had when it covered only the conversions, is read too);
 * fw_kernel_isa_force picks one from a test. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "half.h"

static const char *const isa_names[FW_ISA_N] = { "scalar", "avx2", "avx512", "avx512bf16" };

enum fw_isa fw_isa_current = FW_ISA_SCALAR;

#if defined(__x86_64__) || defined(__i386__)
static unsigned long long xcr0(void)
{
	unsigned lo, hi;
	__asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return (unsigned long long)hi << 32 | lo;
}

/* The brand string of cpuid leaves 0x80000002-4, leading blanks dropped. */
static void cpu_brand(char *model, size_t len)
{
	unsigned r[12], max = __get_cpuid_max(0x80000000, NULL);
	if (max < 0x80000004) {
		snprintf(model, len, "unknown");
		return;
	}
	for (unsigned i = 0; i < 3; i++)
		__get_cpuid(0x80000002 + i, &r[4 * i], &r[4 * i + 1], &r[4 * i + 2], &r[4 * i + 3]);
	char s[49];
	memcpy(s, r, 48);
	s[48] = '\0';
	const char *p = s;
	while (*p == ' ')
		p++;
	snprintf(model, len, "%s", *p ? p : "unknown");
	for (size_t n = strlen(model); n && model[n - 1] == ' '; n--)
		model[n - 1] = '\0';
}
#endif

void fw_cpu_detect(struct fw_cpu *cpu)
{
	memset(cpu, 0, sizeof(*cpu));
	snprintf(cpu->model, sizeof(cpu->model), "unknown");
#if defined(__x86_64__) || defined(__i386__)
	cpu_brand(cpu->model, sizeof(cpu->model));
	unsigned a, b, c, d;
	if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE))
		return;
	unsigned long long x = xcr0();
	bool ymm = (x & 0x6) == 0x6, zmm = ymm && (x & 0xe0) == 0xe0;
	bool tiles = (x & 0x60000) == 0x60000;           /* XTILECFG, XTILEDATA */
	cpu->fma = ymm && (c & bit_FMA);
	cpu->f16c = ymm && (c & bit_F16C);
	if (!ymm || !(c & bit_AVX) || !__get_cpuid_count(7, 0, &a, &b, &c, &d))
		return;
	cpu->avx2 = b & bit_AVX2;
	cpu->avx512f = zmm && (b & bit_AVX512F);
	cpu->avx512bw = cpu->avx512f && (b & bit_AVX512BW);
	cpu->avx512vl = cpu->avx512f && (b & bit_AVX512VL);
	cpu->avx512dq = cpu->avx512f && (b & bit_AVX512DQ);
	cpu->avx512_vnni = cpu->avx512f && (c & (1u << 11));
	cpu->avx512_fp16 = cpu->avx512f && (d & (1u << 23));
	cpu->amx_bf16 = tiles && (d & (1u << 22));
	cpu->amx_tile = tiles && (d & (1u << 24));
	cpu->amx_int8 = tiles && (d & (1u << 25));
	unsigned a1, b1, c1, d1;
	cpu->avx512_bf16 = cpu->avx512f && __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1) &&
			   (a1 & (1u << 5));
#endif
}

/* The highest level this CPU and OS run. */
static enum fw_isa best_isa(void)
{
	struct fw_cpu c;
	fw_cpu_detect(&c);
	if (!c.avx2 || !c.fma || !c.f16c)
		return FW_ISA_SCALAR;
	if (!c.avx512f || !c.avx512bw || !c.avx512vl || !c.avx512dq)
		return FW_ISA_AVX2;
	return c.avx512_bf16 ? FW_ISA_AVX512BF16 : FW_ISA_AVX512;
}

static void use(enum fw_isa isa)
{
	fw_isa_current = isa;
	fw_half_ops = fw_half_ops_isa[isa];
}

enum fw_status fw_kernel_isa_force(const char *name)
{
	enum fw_isa best = best_isa();
	if (!name) {
		use(best);
		return FW_OK;
	}
	int i = 0;
	while (i < FW_ISA_N && strcmp(name, isa_names[i]))
		i++;
	if (i == FW_ISA_N)
		return FW_ERR_INVALID;
	if (i > (int)best)
		return FW_ERR_UNSUPPORTED;
	use((enum fw_isa)i);
	return FW_OK;
}

const char *fw_kernel_isa(void)
{
	return isa_names[fw_isa_current];
}

const char *fw_kernel_isa_best(void)
{
	return isa_names[best_isa()];
}

/* At load: the CPU's best level, or the environment's if it names one the
 * CPU runs (else one line on stderr, and the best). */
__attribute__((constructor)) static void isa_init(void)
{
	const char *var = getenv("FW_KERNEL_ISA") ? "FW_KERNEL_ISA" : "FW_HALF_ISA";
	const char *env = getenv(var);
	enum fw_status st = env ? fw_kernel_isa_force(env) : FW_OK;
	if (!env || st != FW_OK)
		fw_kernel_isa_force(NULL);
	if (st != FW_OK)
		fprintf(stderr, "fw: %s=%s: %s; using %s\n", var, env,
			st == FW_ERR_INVALID ? "not scalar, avx2, avx512 or avx512bf16" :
			"this CPU cannot run it", fw_kernel_isa());
}
