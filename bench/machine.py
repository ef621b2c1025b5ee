"""What a benchmark must say about the machine it ran on, and the OpenBLAS
kernel torch should use there. Figures from different CPUs are not comparable,
so every bench script prints machine_line() first.

OpenBLAS's SkylakeX kernel needs AVX-512 (it dies with "Illegal instruction"
elsewhere); Haswell is its AVX2/FMA kernel, which Zen also runs."""
import os

FEATURES = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
            "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def openblas_coretype(flags=None):
    """The OpenBLAS kernel for this CPU: SkylakeX with AVX-512, else Haswell."""
    return "SkylakeX" if "avx512f" in (cpu_flags() if flags is None else flags) else "Haswell"


def machine_line():
    flags = cpu_flags()
    feats = " ".join(("+" if f in flags else "-") + f for f in FEATURES)
    load = os.getloadavg()
    return (f"cpu: {cpu_model()}, {os.cpu_count()} CPUs; {feats}\n"
            f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
            f"torch's OpenBLAS kernel here: {openblas_coretype(flags)}")
