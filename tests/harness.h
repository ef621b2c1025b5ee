/* harness.h - shared helpers for the Check test suites.
 *
 * Linked into every tests/test_*.c executable; depends on fw, Check and the
 * HDF5 C API only (HDF5 stays inside harness.c).
 *
 *   fwt_rng_*         deterministic random data (splitmix64), no global state
 *   fwt_read_f32      a tensor's values as contiguous f32, any strides/dtype
 *   fwt_allclose      element-wise |got - exp| <= atol + rtol |exp|, with a
 *                     report of the worst element
 *   fwt_gradcheck     finite-difference check of every trainable input of any
 *                     op, built-in or registered with fw_op_register
 *   fwt_h5_*          read datasets and attributes of a golden file
 *   fwt_run_suite     runs a Suite in fork mode, returns the exit code
 *   fwt_fail_alloc_at fail the core's Nth allocation, count live blocks
 */
#ifndef FW_TEST_HARNESS_H
#define FW_TEST_HARNESS_H

#include <check.h>
#include <stdio.h>

#include "fw/fw.h"

/* --- random data ------------------------------------------------------------- */

struct fwt_rng {
	uint64_t s;
};

static inline struct fwt_rng fwt_rng_new(uint64_t seed)
{
	return (struct fwt_rng){ seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull };
}
uint64_t fwt_rng_u64(struct fwt_rng *r);
double fwt_rng_uniform(struct fwt_rng *r);            /* [0, 1) */
void fwt_fill_uniform(float *x, int64_t n, struct fwt_rng *r, float lo, float hi);

/* --- tensors -------------------------------------------------------------------- */

/* Copies t's n elements into dst as f32 in logical (row-major) order,
 * following t->nb; f32, bf16, f16 and i32 are converted. */
void fwt_read_f32(const struct fw_tensor *t, float *dst);
/* Writes n contiguous values of t's dtype into t->data (a leaf). */
void fwt_write(struct fw_tensor *t, const void *src);
/* Builds loss's backward graph with FW_REMAT on or off (graph.c's
 * recomputation of cheap outputs), fills the n f32 parameters with uniform
 * values in [-1, 1) from seed, runs forward and backward twice (the second
 * on a reused arena), copies their gradients one after another into grads,
 * frees the graph and returns its planned activation bytes. */
size_t fwt_remat_run(struct fw_ctx *ctx, struct fw_tensor *loss, bool remat,
		     struct fw_tensor *const *params, int n, uint64_t seed, float *grads);

/* Compares got against exp element-wise: passes where
 * |got - exp| <= atol + rtol * |exp| (and both are finite, or both the same
 * non-finite value). Prints the first few failures to stderr, prefixed by
 * what (and, with FWT_VERBOSE set, how close the worst passing element came).
 * Returns the number of failing elements. */
int64_t fwt_allclose(const char *what, const float *got, const float *exp, int64_t n,
		     double rtol, double atol);
/* The largest |x| of n values (0 for n == 0). */
double fwt_maxabs(const float *x, int64_t n);

/* --- finite-difference gradient check ---------------------------------------------
 *
 * The checker makes a context, creates one leaf per struct fwt_input (f32
 * inputs with .grad become trainable fw_param leaves, everything else
 * fw_input leaves), calls build(ctx, leaves, user) to construct the op under
 * test, and forms loss = sum(out * R) with R a fixed random tensor of out's
 * shape. out must be f32 (cast a bf16 result back). It runs forward and
 * backward once for the analytic gradient, then for every element x_i of
 * every .grad input the central difference
 *
 *     n_i = (L(x_i + h) - L(x_i - h)) / (2h),   L = sum(out * R) in double,
 *
 * where L is summed on the host in double from fw's f32 output so the only
 * rounding noise is that of out itself.
 *
 * Tolerance. An element passes when
 *
 *     |a_i - n_i| <= tol * max(|a_i|, |n_i|) + tol * 0.1 * G + noise
 *
 * with G the largest |n_j| of that input (a floor relative to the gradient's
 * scale, so elements whose true gradient is ~0 are not held to a relative
 * bound) and noise = 16 * 2^-24 * sum|out * R| / h, a bound on what f32
 * rounding of out (a few ulp per element) can move the difference quotient.
 * The truncation error of the central difference is h^2/6 * f''' per
 * element: with the default h = 1e-2 and inputs of order 1 it is ~1e-5
 * relative, well inside tol = 1e-2, while h is large enough that the f32
 * noise term stays around 1e-4. A missing gradient (a_i = 0, n_i != 0), a
 * wrong sign or a factor-of-two error all fail this bound.
 * Ops with kinks (relu) need inputs kept away from the kink (.min_abs);
 * rounding ops (cast to bf16) need inputs and h on the rounding grid.
 */
struct fwt_input {
	const char *name;            /* NULL: an absent optional source (NULL leaf) */
	enum fw_dtype dtype;         /* FW_F32 (0), FW_I32, FW_BF16, ... */
	int ndim;
	int64_t ne[FW_MAX_DIMS];
	bool grad;                   /* f32 only: trainable, gradient checked */
	const void *data;            /* NULL: random; else n values of dtype */
	float lo, hi;                /* random range, lo == hi: [-1, 1] */
	float min_abs;               /* random f32: keep |x| >= min_abs */
	int32_t int_hi;              /* random i32: uniform in [0, int_hi) */
	double h;                    /* finite-difference step, 0: 1e-2 */
};

typedef struct fw_tensor *(*fwt_build_fn)(struct fw_ctx *ctx, struct fw_tensor *const *in,
					  void *user);

struct fwt_gc_opts {
	double tol;                  /* see above; 0: 1e-2 */
	uint64_t seed;               /* data and R; 0 is a valid seed */
	bool eval;                   /* build the graph without training */
	int64_t step;                /* graph step (dropout masks) */
	bool quiet;                  /* no per-element report on failure */
};

#define FWT_MAX_INPUTS 16

/* Returns the number of failing elements (0 = pass), or -1 when the graph
 * could not be built or run (the reason is printed). At most
 * FWT_MAX_INPUTS inputs. */
int fwt_gradcheck(const char *name, int n_inputs, const struct fwt_input *inputs,
		  fwt_build_fn build, void *user, double tol);
int fwt_gradcheck_ex(const char *name, int n_inputs, const struct fwt_input *inputs,
		     fwt_build_fn build, void *user, const struct fwt_gc_opts *opts);

/* Thread-count independence: builds the same graph as fwt_gradcheck (planned
 * with `threads` threads), runs forward and backward once with 1 thread and
 * once with `threads`, and compares out and every gradient element-wise with
 * |a - b| <= rtol |b| + 0.1 rtol max|b|. The serial run is the reference (its
 * kernels are the ones the torch goldens check at small sizes); inputs should
 * be big enough to take the kernels' parallel paths. Partial sums may combine
 * in another order with more threads, hence a tolerance, not bit equality.
 * Returns the number of differing elements, or -1 if the graph failed. */
int fwt_threadcheck(const char *name, int n_inputs, const struct fwt_input *inputs,
		    fwt_build_fn build, void *user, int threads, double rtol);

/* --- golden files (HDF5) ------------------------------------------------------------ */

struct fwt_h5;                   /* an open file */

/* A dataset read into memory: f32 (float classes) or i32 (integer classes). */
struct fwt_array {
	enum fw_dtype dtype;
	int ndim;
	int64_t ne[FW_MAX_DIMS];
	int64_t n;
	void *data;                  /* malloc'd; fwt_array_free */
};

struct fwt_h5 *fwt_h5_open(const char *path);      /* NULL if missing/unreadable */
void fwt_h5_close(struct fwt_h5 *f);
bool fwt_h5_exists(struct fwt_h5 *f, const char *path);
/* 0 on success, -1 (message on stderr) when missing or of an unsupported
 * type or rank (scalars are read as shape [1]). */
int fwt_h5_read(struct fwt_h5 *f, const char *path, struct fwt_array *a);
void fwt_array_free(struct fwt_array *a);
/* Numeric attribute of object obj: up to max values into v; returns the
 * count, or -1 when absent. */
int fwt_h5_attr_f64(struct fwt_h5 *f, const char *obj, const char *name, double *v,
		    int max);
/* String attribute into buf; -1 when absent. */
int fwt_h5_attr_str(struct fwt_h5 *f, const char *obj, const char *name, char *buf,
		    size_t len);
/* Names of the members of group ("/" for the root): fills up to max
 * malloc'd strings (free() them), returns the count, -1 if no such group. */
int fwt_h5_list(struct fwt_h5 *f, const char *group, char **names, int max);

/* --- decoding through an attention plugin ---------------------------------------- */

struct fwt_decode {
	struct fw_loaded *plugin;    /* an attention plugin */
	enum fw_dtype autocast;      /* the context's (FW_F32: none): the cache's dtype */
	enum fw_dtype in_dt;         /* the dtype of the q, k, v inputs */
	enum fw_pos_kind pos;
	int T, H, G, D;              /* steps (the cache's length), heads, KV heads, head dim */
};
/* Decodes T tokens, one a step, over a KV cache of T positions (as
 * fw_rt_decoder does, batch 1): step t's q, k, v are rows t of q (T, H, D),
 * k and v (T, G, D), converted to in_dt. y (T, H, D) gets each step's
 * output, kc and vc (T, G, D) the cache's values after the last step, as
 * f32. Returns the cache's dtype. Fails if the graph casts the cache (the
 * kernel must read it in place). */
enum fw_dtype fwt_decode_run(const struct fwt_decode *d, const float *q, const float *k,
			     const float *v, float *y, float *kc, float *vc);

/* x rounded to dt (f32, bf16, f16) to nearest, ties to even, in double
 * arithmetic (frexp, nearbyint): an oracle independent of fw's bit tricks,
 * for values inside dt's range. */
double fwt_round_to(enum fw_dtype dt, double x);

/* An attention plugin's decoding with a half KV cache (autocast dt, RoPE or
 * not), three ways over the same values (q, k, v random, rounded to dt): an
 * f32 cache with f32 inputs, a dt cache with dt inputs (written as they
 * are) and a dt cache with f32 inputs (kv_write rounds them). Asserts that
 * both dt caches hold every value of the f32 cache rounded once to dt
 * (fwt_round_to), that the two dt runs give the same outputs bit for bit,
 * and without RoPE that these equal the f32 run's bit for bit (the kernel
 * reads the cache's half rows widened, exactly). */
void fwt_check_half_decode(struct fw_loaded *plugin, enum fw_dtype dt, enum fw_pos_kind pos);

/* --- running ----------------------------------------------------------------------- */

/* Runs s in fork mode with CK_NORMAL output; returns 0 if all passed, else 1. */
/* Opens plugin name (of kind), sets opts (name, value, ..., NULL; may be
 * NULL), resolves and initialises it; fails the test on any error. */
struct fw_loaded *fwt_plugin_open(const char *name, int kind, const char *const *opts);
int fwt_run_suite(Suite *s);
/* A TCase with the given timeout in seconds. */
TCase *fwt_tcase(const char *name, double timeout_s);

/* Allocation-failure injection through fw_set_allocator: allocation number n
 * (from 1, counted from this call) fails, every other succeeds and is
 * counted until freed. fwt_alloc_restore() puts malloc/free back. */
void fwt_fail_alloc_at(int n);
int fwt_alloc_live(void);
void fwt_alloc_restore(void);

#endif
