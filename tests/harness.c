/* harness.c - shared helpers for the Check test suites (see harness.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hdf5.h>

#include "harness.h"

/* --- random data ------------------------------------------------------------- */

uint64_t fwt_rng_u64(struct fwt_rng *r)
{
	uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

double fwt_rng_uniform(struct fwt_rng *r)
{
	return (double)(fwt_rng_u64(r) >> 11) / 9007199254740992.0;
}

void fwt_fill_uniform(float *x, int64_t n, struct fwt_rng *r, float lo, float hi)
{
	for (int64_t i = 0; i < n; i++)
		x[i] = (float)(lo + (hi - lo) * fwt_rng_uniform(r));
}

/* --- tensors -------------------------------------------------------------------- */

static float elem_f32(const struct fw_tensor *t, int64_t off)
{
	switch (t->dtype) {
	case FW_F32:
		return ((const float *)t->data)[off];
	case FW_BF16:
		return fw_bf16_to_f32(((const uint16_t *)t->data)[off]);
	case FW_F16:
		return fw_f16_to_f32(((const uint16_t *)t->data)[off]);
	case FW_I32:
		return (float)((const int32_t *)t->data)[off];
	default:
		return NAN;
	}
}

void fwt_read_f32(const struct fw_tensor *t, float *dst)
{
	int64_t ne[FW_MAX_DIMS], nb[FW_MAX_DIMS];
	int pad = FW_MAX_DIMS - t->ndim;

	for (int i = 0; i < FW_MAX_DIMS; i++) {
		ne[i] = i < pad ? 1 : t->ne[i - pad];
		nb[i] = i < pad ? 0 : t->nb[i - pad];
	}
	int64_t k = 0;
	for (int64_t a = 0; a < ne[0]; a++)
		for (int64_t b = 0; b < ne[1]; b++)
			for (int64_t c = 0; c < ne[2]; c++)
				for (int64_t d = 0; d < ne[3]; d++)
					dst[k++] = elem_f32(t, a * nb[0] + b * nb[1] +
								c * nb[2] + d * nb[3]);
}

void fwt_write(struct fw_tensor *t, const void *src)
{
	memcpy(t->data, src, fw_nbytes(t));
	fw_tensor_mark_written(t);
}

size_t fwt_remat_run(struct fw_ctx *ctx, struct fw_tensor *loss, bool remat,
		     struct fw_tensor *const *params, int n, uint64_t seed, float *grads)
{
	ck_assert_msg(loss != NULL, "%s", fw_ctx_err(ctx)->msg);
	setenv("FW_REMAT", remat ? "1" : "0", 1);
	struct fw_graph *g = fw_graph_new(ctx, &loss, 1, &(struct fw_graph_opts){
		.backward = true, .training = true, .recompute = true });
	unsetenv("FW_REMAT");
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	struct fwt_rng r = fwt_rng_new(seed);
	for (int i = 0; i < n; i++)
		fwt_fill_uniform(fw_f32(params[i]), fw_nelem(params[i]), &r, -1.0f, 1.0f);
	for (int pass = 0; pass < 2; pass++) {
		fw_graph_zero_grad(g);
		ck_assert_int_eq(fw_graph_forward(g), FW_OK);
		ck_assert_int_eq(fw_graph_backward(g), FW_OK);
	}
	for (int i = 0; i < n; i++) {
		memcpy(grads, params[i]->grad->data, (size_t)fw_nelem(params[i]) * sizeof(float));
		grads += fw_nelem(params[i]);
	}
	struct fw_memory_report m;
	fw_graph_memory(g, &m);
	fw_graph_free(g);
	return m.bytes[FW_MEM_ACTIVATIONS];
}

double fwt_maxabs(const float *x, int64_t n)
{
	double m = 0;
	for (int64_t i = 0; i < n; i++)
		if (fabs(x[i]) > m)
			m = fabs(x[i]);
	return m;
}

int64_t fwt_allclose(const char *what, const float *got, const float *exp, int64_t n,
		     double rtol, double atol)
{
	int64_t bad = 0, worst = -1;
	double worst_ratio = 0;

	for (int64_t i = 0; i < n; i++) {
		double g = got[i], e = exp[i], d = fabs(g - e);
		double bound = atol + rtol * fabs(e);
		bool ok;
		if (isfinite(g) && isfinite(e))
			ok = d <= bound;
		else
			ok = (isnan(g) && isnan(e)) || g == e;
		double ratio = ok ? d / (bound > 0 ? bound : 1) : INFINITY;
		if (worst < 0 || ratio > worst_ratio) {
			worst = i;
			worst_ratio = ratio;
		}
		if (ok)
			continue;
		if (bad < 5)
			fprintf(stderr, "%s: [%lld] got %.9g expected %.9g (|diff| %.3g > %.3g)\n",
				what, (long long)i, g, e, d, bound);
		bad++;
	}
	if (bad)
		fprintf(stderr, "%s: %lld of %lld elements differ (rtol %g, atol %g)\n", what,
			(long long)bad, (long long)n, rtol, atol);
	else if (getenv("FWT_VERBOSE") && worst >= 0)
		fprintf(stderr, "%s: ok, worst [%lld] |diff| %.3g = %.3f of the bound\n", what,
			(long long)worst, fabs((double)got[worst] - exp[worst]), worst_ratio);
	return bad;
}

/* --- finite-difference gradient check ---------------------------------------------- */

/* The graph every check runs: leaves for the inputs, out = build(...),
 * loss = sum(out * R); data written, nothing run yet. */
struct gc_run {
	const char *name;
	struct fw_ctx *ctx;
	struct fw_tensor *in[FWT_MAX_INPUTS];
	void *host[FWT_MAX_INPUTS];      /* each input's values, its dtype */
	struct fw_tensor *y, *loss;
	struct fw_graph *g;
	float *r, *obuf;                 /* R and a buffer, out's size */
	int64_t ny;
};

static void *gc_make_data(const struct fwt_input *in, int64_t n, struct fwt_rng *rng)
{
	size_t es = fw_dtype_size(in->dtype);
	void *p = malloc((size_t)n * es);
	if (!p)
		return NULL;
	if (in->data) {
		memcpy(p, in->data, (size_t)n * es);
		return p;
	}
	if (in->dtype == FW_I32) {
		int32_t hi = in->int_hi > 0 ? in->int_hi : 1;
		for (int64_t i = 0; i < n; i++)
			((int32_t *)p)[i] = (int32_t)(fwt_rng_u64(rng) % (uint64_t)hi);
		return p;
	}
	float lo = in->lo, hi = in->hi;
	if (lo == hi) {
		lo = -1.0f;
		hi = 1.0f;
	}
	float *f = malloc((size_t)n * sizeof(float));
	if (!f) {
		free(p);
		return NULL;
	}
	fwt_fill_uniform(f, n, rng, lo, hi);
	for (int64_t i = 0; i < n && in->min_abs > 0; i++)
		while (fabsf(f[i]) < in->min_abs)
			f[i] = (float)(lo + (hi - lo) * fwt_rng_uniform(rng));
	if (in->dtype == FW_F32)
		memcpy(p, f, (size_t)n * sizeof(float));
	else
		fw_convert(p, in->dtype, f, FW_F32, n);
	free(f);
	return p;
}

static void gc_free(struct gc_run *s)
{
	for (int j = 0; j < FWT_MAX_INPUTS; j++)
		free(s->host[j]);
	free(s->r);
	free(s->obuf);
	fw_graph_free(s->g);
	fw_ctx_free(s->ctx);
	memset(s, 0, sizeof(*s));
}

/* Under FW_GRAD_POISON (the *_grad_poison tests) the op under check reads
 * each input with a gradient through scale(x, 1), an exact node, so the
 * op's backward is the first writer of that node's gradient: the graph
 * does not zero it (poisons it) and the op must overwrite all of it. */
static bool gc_via_nodes(void)
{
	const char *p = getenv("FW_GRAD_POISON");
	return p && *p && strcmp(p, "0");
}

/* 0, or -1 with the reason on stderr (s is freed then). */
static int gc_setup(struct gc_run *s, const char *name, int n_inputs,
		    const struct fwt_input *inputs, fwt_build_fn build, void *user,
		    uint64_t seed, bool training)
{
	struct fwt_rng rng = fwt_rng_new(seed ^ 0x5eedull);
	struct fw_tensor *src[FWT_MAX_INPUTS] = { NULL };

	memset(s, 0, sizeof(*s));
	s->name = name;
	s->ctx = fw_ctx_new();
	if (!s->ctx || n_inputs < 0 || n_inputs > FWT_MAX_INPUTS) {
		fprintf(stderr, "%s: bad check setup (%d inputs)\n", name, n_inputs);
		goto fail;
	}
	for (int j = 0; j < n_inputs; j++) {
		const struct fwt_input *ip = &inputs[j];
		if (!ip->name)
			continue;       /* an absent optional source */
		if (ip->grad && ip->dtype != FW_F32) {
			fprintf(stderr, "%s: input %s: only f32 inputs have gradients\n", name,
				ip->name);
			goto fail;
		}
		s->in[j] = ip->grad ? fw_param(s->ctx, ip->name, FW_F32, ip->ndim, ip->ne, true)
				    : fw_input(s->ctx, ip->name, ip->dtype, ip->ndim, ip->ne);
		if (!s->in[j]) {
			fprintf(stderr, "%s: input %s: %s\n", name, ip->name,
				fw_ctx_err(s->ctx)->msg);
			goto fail;
		}
		s->host[j] = gc_make_data(ip, fw_nelem(s->in[j]), &rng);
		if (!s->host[j])
			goto fail;
		src[j] = ip->grad && gc_via_nodes() ? fw_scale(s->ctx, s->in[j], 1.0f) : s->in[j];
	}
	s->y = build(s->ctx, src, user);
	if (!s->y) {
		fprintf(stderr, "%s: build failed: %s\n", name, fw_ctx_err(s->ctx)->msg);
		goto fail;
	}
	if (s->y->dtype != FW_F32) {
		fprintf(stderr, "%s: the built op's output is %s, not f32\n", name,
			fw_dtype_name(s->y->dtype));
		goto fail;
	}
	struct fw_tensor *rt = fw_input(s->ctx, "check.R", FW_F32, s->y->ndim, s->y->ne);
	s->loss = fw_sum(s->ctx, fw_mul(s->ctx, s->y, rt), FW_AXIS_ALL, false);
	if (!s->loss) {
		fprintf(stderr, "%s: loss: %s\n", name, fw_ctx_err(s->ctx)->msg);
		goto fail;
	}
	struct fw_tensor *outs[2] = { s->loss, s->y };
	s->g = fw_graph_new(s->ctx, outs, 2, &(struct fw_graph_opts){
		.backward = true, .training = training });
	if (!s->g) {
		fprintf(stderr, "%s: graph: %s\n", name, fw_ctx_err(s->ctx)->msg);
		goto fail;
	}
	s->ny = fw_nelem(s->y);
	s->r = malloc((size_t)s->ny * sizeof(float));
	s->obuf = malloc((size_t)s->ny * sizeof(float));
	if (!s->r || !s->obuf)
		goto fail;
	fwt_fill_uniform(s->r, s->ny, &rng, -1.0f, 1.0f);
	fwt_write(rt, s->r);
	for (int j = 0; j < n_inputs; j++)
		if (s->in[j])
			fwt_write(s->in[j], s->host[j]);
	return 0;
fail:
	gc_free(s);
	return -1;
}

/* L = sum(out * R) on the host, in double; *mag gets sum |out * R|. */
static double host_loss(struct gc_run *s, double *mag)
{
	double l = 0, m = 0;
	fwt_read_f32(s->y, s->obuf);
	for (int64_t i = 0; i < s->ny; i++) {
		l += (double)s->obuf[i] * s->r[i];
		m += fabs((double)s->obuf[i] * s->r[i]);
	}
	if (mag)
		*mag = m;
	return l;
}

int fwt_gradcheck(const char *name, int n_inputs, const struct fwt_input *inputs,
		  fwt_build_fn build, void *user, double tol)
{
	struct fwt_gc_opts o = { .tol = tol };
	return fwt_gradcheck_ex(name, n_inputs, inputs, build, user, &o);
}

int fwt_gradcheck_ex(const char *name, int n_inputs, const struct fwt_input *inputs,
		     fwt_build_fn build, void *user, const struct fwt_gc_opts *opts)
{
	double tol = opts->tol > 0 ? opts->tol : 1e-2;
	struct gc_run s;
	float *ana = NULL;
	int ret = -1, reported = 0;
	int64_t fails = 0;

	if (gc_setup(&s, name, n_inputs, inputs, build, user, opts->seed, !opts->eval))
		return -1;
	fw_graph_set_step(s.g, opts->step);
	if (fw_graph_forward(s.g) != FW_OK || fw_graph_backward(s.g) != FW_OK) {
		fprintf(stderr, "%s: run: %s\n", name, fw_ctx_err(s.ctx)->msg);
		goto out;
	}
	double mag, l0 = host_loss(&s, &mag);
	float lf = fw_f32(s.loss)[0];
	if (!isfinite(l0) || !(fabs(lf - l0) <= 1e-5 * mag + 1e-6)) {
		fprintf(stderr, "%s: loss from fw_sum(fw_mul) %.9g, on the host %.9g\n", name,
			(double)lf, l0);
		fails++;
	}

	for (int j = 0; j < n_inputs; j++) {
		const struct fwt_input *ip = &inputs[j];
		if (!ip->grad || !ip->name)
			continue;
		struct fw_tensor *x = s.in[j];
		int64_t n = fw_nelem(x);
		if (!x->grad || !x->grad->data) {
			fprintf(stderr, "%s: input %s got no gradient\n", name, ip->name);
			fails += n;
			continue;
		}
		free(ana);
		ana = malloc((size_t)n * 2 * sizeof(float));
		if (!ana)
			goto out;
		float *num = ana + n;
		memcpy(ana, x->grad->data, (size_t)n * sizeof(float));
		double h = ip->h > 0 ? ip->h : 1e-2, gmax = 0, noise = 0;
		float *xd = fw_f32(x);
		for (int64_t i = 0; i < n; i++) {
			float x0 = xd[i];
			float xp = (float)(x0 + h), xm = (float)(x0 - h);
			double mp, mm;
			/* marked: a trainable parameter's kept half copy is cast again */
			xd[i] = xp;
			fw_tensor_mark_written(x);
			fw_graph_forward(s.g);
			double lp = host_loss(&s, &mp);
			xd[i] = xm;
			fw_tensor_mark_written(x);
			fw_graph_forward(s.g);
			double lm = host_loss(&s, &mm);
			xd[i] = x0;
			fw_tensor_mark_written(x);
			num[i] = (float)((lp - lm) / ((double)xp - (double)xm));
			if (fabs(num[i]) > gmax)
				gmax = fabs(num[i]);
			double nz = 16.0 * ldexp(mp + mm, -24) / ((double)xp - (double)xm);
			if (nz > noise)
				noise = nz;
		}
		double worst = 0;
		for (int64_t i = 0; i < n; i++) {
			double a = ana[i], nu = num[i], d = fabs(a - nu);
			double bound = tol * fmax(fabs(a), fabs(nu)) + tol * 0.1 * gmax + noise;
			if (isfinite(a) && d <= bound) {
				worst = fmax(worst, d / bound);
				continue;
			}
			if (reported++ < 10 && !opts->quiet)
				fprintf(stderr, "%s: d/d%s[%lld]: analytic %.7g numeric %.7g "
					"(|diff| %.3g > %.3g)\n", name, ip->name, (long long)i,
					a, nu, d, bound);
			fails++;
		}
		if (getenv("FWT_VERBOSE"))
			fprintf(stderr, "%s: d/d%s: max |grad| %.3g, noise bound %.2g, worst "
				"passing element at %.3f of its bound\n", name, ip->name, gmax,
				noise, worst);
	}
	fw_graph_forward(s.g);    /* leave the graph at the unperturbed values */
	ret = fails > INT32_MAX ? INT32_MAX : (int)fails;
	if (ret && !opts->quiet)
		fprintf(stderr, "%s: %d gradient elements outside tolerance\n", name, ret);
out:
	free(ana);
	gc_free(&s);
	return ret;
}

/* --- thread-count independence ------------------------------------------------------ */

/* out and every trainable gradient after one forward and backward with nt
 * threads, concatenated into a malloc'd buffer of *n floats. */
static float *tc_run(struct gc_run *s, int n_inputs, int nt, int64_t *n)
{
	int64_t total = s->ny;
	for (int j = 0; j < n_inputs; j++)
		if (s->in[j] && s->in[j]->grad)
			total += fw_nelem(s->in[j]);
	float *v = malloc((size_t)total * sizeof(float)), *p = v;
	if (!v)
		return NULL;
	fw_set_num_threads(nt);
	fw_graph_zero_grad(s->g);
	if (fw_graph_forward(s->g) != FW_OK || fw_graph_backward(s->g) != FW_OK) {
		fprintf(stderr, "%s: run: %s\n", s->name, fw_ctx_err(s->ctx)->msg);
		free(v);
		return NULL;
	}
	fwt_read_f32(s->y, p);
	p += s->ny;
	for (int j = 0; j < n_inputs; j++) {
		if (!s->in[j] || !s->in[j]->grad)
			continue;
		memcpy(p, s->in[j]->grad->data, fw_nbytes(s->in[j]));
		p += fw_nelem(s->in[j]);
	}
	*n = total;
	return v;
}

int fwt_threadcheck(const char *name, int n_inputs, const struct fwt_input *inputs,
		    fwt_build_fn build, void *user, int threads, double rtol)
{
	struct gc_run s;
	int ret = -1;
	int64_t n1 = 0, nn = 0;
	float *v1 = NULL, *vn = NULL;

	/* plan with the most threads: workspace sized for them */
	fw_set_num_threads(threads);
	if (gc_setup(&s, name, n_inputs, inputs, build, user, 1, true))
		return -1;
	v1 = tc_run(&s, n_inputs, 1, &n1);
	vn = tc_run(&s, n_inputs, threads, &nn);
	if (v1 && vn && n1 == nn) {
		char what[128];
		snprintf(what, sizeof(what), "%s: %d threads vs 1", name, threads);
		int64_t bad = fwt_allclose(what, vn, v1, n1, rtol,
					   rtol * 0.1 * fmax(fwt_maxabs(v1, n1), 1e-30));
		ret = bad > INT32_MAX ? INT32_MAX : (int)bad;
	}
	free(v1);
	free(vn);
	gc_free(&s);
	fw_set_num_threads(threads);
	return ret;
}

/* --- golden files (HDF5) ------------------------------------------------------------ */

struct fwt_h5 {
	hid_t f;
};

struct fwt_h5 *fwt_h5_open(const char *path)
{
	if (access(path, R_OK) != 0)
		return NULL;
	H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
	hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
	if (f < 0)
		return NULL;
	struct fwt_h5 *h = malloc(sizeof(*h));
	if (!h) {
		H5Fclose(f);
		return NULL;
	}
	h->f = f;
	return h;
}

void fwt_h5_close(struct fwt_h5 *f)
{
	if (!f)
		return;
	H5Fclose(f->f);
	free(f);
}

/* H5Lexists on every prefix: it fails on a missing intermediate group. */
bool fwt_h5_exists(struct fwt_h5 *f, const char *path)
{
	char buf[1024];
	size_t len = strlen(path);
	if (len >= sizeof(buf))
		return false;
	memcpy(buf, path, len + 1);
	for (size_t i = 1; i <= len; i++) {
		if (buf[i] != '/' && buf[i] != '\0')
			continue;
		char c = buf[i];
		buf[i] = '\0';
		htri_t e = H5Lexists(f->f, buf, H5P_DEFAULT);
		buf[i] = c;
		if (e <= 0)
			return false;
	}
	return true;
}

int fwt_h5_read(struct fwt_h5 *f, const char *path, struct fwt_array *a)
{
	int ret = -1;
	hid_t d = -1, s = -1, t = -1;
	hsize_t dims[8];

	memset(a, 0, sizeof(*a));
	if (!fwt_h5_exists(f, path)) {
		fprintf(stderr, "golden: no dataset '%s'\n", path);
		return -1;
	}
	d = H5Dopen2(f->f, path, H5P_DEFAULT);
	if (d < 0)
		goto out;
	s = H5Dget_space(d);
	t = H5Dget_type(d);
	int nd = H5Sget_simple_extent_ndims(s);
	if (nd < 0 || nd > FW_MAX_DIMS) {
		fprintf(stderr, "golden: '%s' has %d dims\n", path, nd);
		goto out;
	}
	H5Sget_simple_extent_dims(s, dims, NULL);
	a->ndim = nd ? nd : 1;
	a->n = 1;
	for (int i = 0; i < a->ndim; i++) {
		a->ne[i] = nd ? (int64_t)dims[i] : 1;
		a->n *= a->ne[i];
	}
	H5T_class_t cls = H5Tget_class(t);
	hid_t mem;
	if (cls == H5T_FLOAT) {
		a->dtype = FW_F32;
		mem = H5T_NATIVE_FLOAT;
	} else if (cls == H5T_INTEGER) {
		a->dtype = FW_I32;
		mem = H5T_NATIVE_INT32;
	} else {
		fprintf(stderr, "golden: '%s' is neither float nor integer\n", path);
		goto out;
	}
	a->data = malloc((size_t)(a->n ? a->n : 1) * 4);
	if (!a->data || H5Dread(d, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, a->data) < 0) {
		fprintf(stderr, "golden: cannot read '%s'\n", path);
		fwt_array_free(a);
		goto out;
	}
	ret = 0;
out:
	if (t >= 0)
		H5Tclose(t);
	if (s >= 0)
		H5Sclose(s);
	if (d >= 0)
		H5Dclose(d);
	return ret;
}

void fwt_array_free(struct fwt_array *a)
{
	free(a->data);
	a->data = NULL;
}

static hid_t attr_open(struct fwt_h5 *f, const char *obj, const char *name)
{
	if (!fwt_h5_exists(f, obj) && strcmp(obj, "/") != 0)
		return -1;
	if (H5Aexists_by_name(f->f, obj, name, H5P_DEFAULT) <= 0)
		return -1;
	return H5Aopen_by_name(f->f, obj, name, H5P_DEFAULT, H5P_DEFAULT);
}

int fwt_h5_attr_f64(struct fwt_h5 *f, const char *obj, const char *name, double *v, int max)
{
	hid_t a = attr_open(f, obj, name);
	if (a < 0)
		return -1;
	hid_t s = H5Aget_space(a);
	hssize_t n = H5Sget_simple_extent_npoints(s);
	double *tmp = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
	int ret = -1;
	if (tmp && n > 0 && H5Aread(a, H5T_NATIVE_DOUBLE, tmp) >= 0) {
		ret = (int)(n < max ? n : max);
		memcpy(v, tmp, (size_t)ret * sizeof(double));
	}
	free(tmp);
	H5Sclose(s);
	H5Aclose(a);
	return ret;
}

int fwt_h5_attr_str(struct fwt_h5 *f, const char *obj, const char *name, char *buf,
		    size_t len)
{
	hid_t a = attr_open(f, obj, name);
	int ret = -1;
	if (a < 0)
		return -1;
	hid_t t = H5Aget_type(a);
	if (H5Tget_class(t) != H5T_STRING || len == 0)
		goto out;
	if (H5Tis_variable_str(t) > 0) {
		char *s = NULL;
		hid_t mt = H5Tcopy(H5T_C_S1);
		H5Tset_size(mt, H5T_VARIABLE);
		H5Tset_cset(mt, H5Tget_cset(t));
		if (H5Aread(a, mt, &s) >= 0 && s) {
			snprintf(buf, len, "%s", s);
			H5free_memory(s);
			ret = 0;
		}
		H5Tclose(mt);
	} else {
		size_t sz = H5Tget_size(t);
		char *s = calloc(1, sz + 1);
		if (s && H5Aread(a, t, s) >= 0) {
			snprintf(buf, len, "%s", s);
			ret = 0;
		}
		free(s);
	}
out:
	H5Tclose(t);
	H5Aclose(a);
	return ret;
}

int fwt_h5_list(struct fwt_h5 *f, const char *group, char **names, int max)
{
	H5G_info_t info;
	int n = 0;
	if (strcmp(group, "/") != 0 && !fwt_h5_exists(f, group))
		return -1;
	if (H5Gget_info_by_name(f->f, group, &info, H5P_DEFAULT) < 0)
		return -1;
	for (hsize_t i = 0; i < info.nlinks && n < max; i++) {
		ssize_t len = H5Lget_name_by_idx(f->f, group, H5_INDEX_NAME, H5_ITER_INC, i,
						 NULL, 0, H5P_DEFAULT);
		if (len < 0)
			continue;
		char *s = malloc((size_t)len + 1);
		if (!s)
			break;
		H5Lget_name_by_idx(f->f, group, H5_INDEX_NAME, H5_ITER_INC, i, s,
				   (size_t)len + 1, H5P_DEFAULT);
		names[n++] = s;
	}
	return n;
}

/* --- running ----------------------------------------------------------------------- */

int fwt_run_suite(Suite *s)
{
	SRunner *sr = srunner_create(s);
	/* Fork mode unless CK_FORK=no asks otherwise (for a debugger). */
	const char *e = getenv("CK_FORK");
	if (!e || strcmp(e, "no") != 0)
		srunner_set_fork_status(sr, CK_FORK);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}

TCase *fwt_tcase(const char *name, double timeout_s)
{
	TCase *tc = tcase_create(name);
	tcase_set_timeout(tc, timeout_s);
	return tc;
}

/* --- allocation-failure injection ---------------------------------------------- */

static int alloc_calls, alloc_fail_at, alloc_live;

static void *failing_alloc(void *user, size_t size, size_t align)
{
	void *p = NULL;
	if (++alloc_calls == alloc_fail_at)
		return NULL;
	if (posix_memalign(&p, align, size ? size : align))
		return NULL;
	alloc_live++;
	return p;
}

static void counting_free(void *user, void *ptr)
{
	alloc_live--;
	free(ptr);
}

void fwt_fail_alloc_at(int n)
{
	alloc_calls = 0;
	alloc_fail_at = n;
	alloc_live = 0;
	fw_set_allocator(failing_alloc, counting_free, NULL);
}

int fwt_alloc_live(void)
{
	return alloc_live;
}

void fwt_alloc_restore(void)
{
	fw_set_allocator(NULL, NULL, NULL);
}

/* Whether a node below x casts a cache (a kv_write's result) to another dtype. */
static bool widens_cache(const struct fw_tensor *x, int depth)
{
	if (!x || depth > 64)
		return false;
	if (x->op == FW_OP_CAST && x->src[0] && x->src[0]->op == FW_OP_KV_WRITE)
		return true;
	for (int i = 0; i < FW_MAX_SRC; i++)
		if (widens_cache(x->src[i], depth + 1))
			return true;
	return false;
}

enum fw_dtype fwt_decode_run(const struct fwt_decode *d, const float *q, const float *k,
			     const float *v, float *y, float *kc, float *vc)
{
	int64_t T = d->T, nq = (int64_t)d->H * d->D, nkv = (int64_t)d->G * d->D;
	struct fw_ctx *ctx = fw_ctx_new();
	if (d->autocast != FW_F32)
		ck_assert_int_eq(fw_ctx_set_autocast(ctx, d->autocast), FW_OK);
	struct fw_kv_cache cache = {
		.len = fw_input(ctx, "len", FW_I32, 1, (int64_t[]){ 1 }),
		.mask = fw_input(ctx, "mask", FW_F32, 1, (int64_t[]){ T }), .max_len = T };
	struct fw_tensor *in[3] = {
		fw_input(ctx, "q", d->in_dt, 4, (int64_t[]){ 1, 1, d->H, d->D }),
		fw_input(ctx, "k", d->in_dt, 4, (int64_t[]){ 1, 1, d->G, d->D }),
		fw_input(ctx, "v", d->in_dt, 4, (int64_t[]){ 1, 1, d->G, d->D }) };
	struct fw_model m = { .size = sizeof(m), .ctx = ctx, .host = fw_host_table(),
			      .batch = 1, .seq_len = 1, .caches = &cache, .n_caches = 1 };
	struct fw_attn_spec spec = { .size = sizeof(spec), .name = "dec.attn", .n_head = d->H,
				     .n_kv_head = d->G, .head_dim = d->D,
				     .mask = FW_MASK_CAUSAL, .pos = d->pos, .rope_base = 10000.0f,
				     .cache = &cache };
	struct fw_err err = { 0 };
	const struct fw_attention_i *ai = d->plugin->desc->iface;
	struct fw_tensor *y1 = ai->attend(d->plugin->state, &m, &spec, in[0], in[1], in[2], &err);
	ck_assert_msg(y1 != NULL, "%s", err.msg);
	ck_assert_msg(!widens_cache(y1, 0), "the KV cache is cast before attention reads it");
	struct fw_graph *g = fw_graph_new(ctx, &y1, 1, &(struct fw_graph_opts){ 0 });
	ck_assert_msg(g != NULL, "%s", fw_ctx_err(ctx)->msg);
	memset(cache.k->data, 0, fw_nbytes(cache.k));
	memset(cache.v->data, 0, fw_nbytes(cache.v));
	const float *src[3] = { q, k, v };
	for (int64_t t = 0; t < T; t++) {
		fw_i32(cache.len)[0] = (int32_t)t;
		for (int64_t j = 0; j < T; j++)
			fw_f32(cache.mask)[j] = j <= t ? 0.0f : -INFINITY;
		for (int i = 0; i < 3; i++) {
			int64_t n = i ? nkv : nq;
			fw_convert(in[i]->data, d->in_dt, src[i] + t * n, FW_F32, n);
		}
		ck_assert_int_eq(fw_graph_forward(g), FW_OK);
		fwt_read_f32(y1, y + t * nq);
	}
	fwt_read_f32(cache.k, kc);
	fwt_read_f32(cache.v, vc);
	enum fw_dtype dt = cache.k->dtype;
	fw_graph_free(g);
	fw_ctx_free(ctx);
	return dt;
}

double fwt_round_to(enum fw_dtype dt, double x)
{
	if (dt == FW_F32)
		return (float)x;
	if (x == 0 || !isfinite(x))
		return x;
	int bits = dt == FW_BF16 ? 8 : 11, lo = dt == FW_BF16 ? -125 : -13, e;
	frexp(x, &e);                   /* |x| in [2^(e-1), 2^e) */
	double ulp = ldexp(1.0, (e < lo ? lo : e) - bits);   /* subnormals: fixed */
	return nearbyint(x / ulp) * ulp;
}

void fwt_check_half_decode(struct fw_loaded *plugin, enum fw_dtype dt, enum fw_pos_kind pos)
{
	enum { T = 11, H = 6, G = 2, D = 40, NQ = T * H * D, NKV = T * G * D };
	static float x[3][NQ], y[3][NQ], kc[3][NKV], vc[3][NKV];
	struct fwt_rng r = fwt_rng_new(77 + (uint64_t)dt);
	for (int i = 0; i < 3; i++) {
		fwt_fill_uniform(x[i], i ? NKV : NQ, &r, -1.5f, 1.5f);
		for (int64_t e = 0; e < (i ? NKV : NQ); e++)
			x[i][e] = (float)fwt_round_to(dt, x[i][e]);
	}
	const enum fw_dtype ac[3] = { FW_F32, dt, dt }, in[3] = { FW_F32, dt, FW_F32 };
	for (int w = 0; w < 3; w++) {
		struct fwt_decode d = { plugin, ac[w], in[w], pos, T, H, G, D };
		ck_assert_int_eq(fwt_decode_run(&d, x[0], x[1], x[2], y[w], kc[w], vc[w]), ac[w]);
	}
	const char *n = fw_dtype_name(dt);
	for (int w = 1; w < 3; w++)
		for (int64_t e = 0; e < NKV; e++)
			ck_assert_msg(kc[w][e] == (float)fwt_round_to(dt, kc[0][e]) &&
				      vc[w][e] == (float)fwt_round_to(dt, vc[0][e]),
				      "%s cache (%s inputs), element %lld: k %.9g v %.9g, f32 cache "
				      "k %.9g v %.9g", n, fw_dtype_name(in[w]), (long long)e,
				      (double)kc[w][e], (double)vc[w][e], (double)kc[0][e],
				      (double)vc[0][e]);
	ck_assert_msg(!memcmp(y[1], y[2], sizeof(y[1])),
		      "%s cache: %s inputs give other outputs than f32 inputs", n, n);
	if (pos != FW_POS_ROPE)
		ck_assert_msg(!memcmp(y[1], y[0], sizeof(y[0])),
			      "%s cache: other outputs than an f32 cache of the same values", n);
}

struct fw_loaded *fwt_plugin_open(const char *name, int kind, const char *const *opts)
{
	struct fw_loaded *p = NULL;
	struct fw_err err = { 0 };
	ck_assert_msg(fw_plugin_open(name, kind, &p, &err) == FW_OK, "%s", err.msg);
	for (int i = 0; opts && opts[i]; i += 2)
		ck_assert_msg(fw_options_set(p->opts, opts[i], opts[i + 1], &err) == FW_OK, "%s",
			      err.msg);
	ck_assert_msg(fw_options_resolve(p->opts, &err) == FW_OK, "%s", err.msg);
	ck_assert_msg(fw_plugin_init(p, NULL, &err) == FW_OK, "%s", err.msg);
	return p;
}
