/* adapter.c - PEFT adapters in fwrun: --adapter lists, applying one through
 * the peft plugin's load/merge hooks, adapter files next to checkpoints,
 * loading a base model that lacks the adapter's tensors, and the commands
 * merge (fold an adapter into a weights file) and export-adapter (PEFT's
 * adapter_config.json + adapter_model.safetensors).
 *
 * --adapter=[NAME=]PATH[,[NAME=]PATH...] names one or more adapter files (a
 * bare PATH is named after its file, "a.h5" -> "a"); --adapter-name=NAME
 * picks the one this run applies (default: the first). Every listed adapter
 * is checked against the loaded base model; only the chosen one is applied.
 * The file format is peft/lora's (plugins/peft/lora/lora_format.h).
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ini.h>
#include <jansson.h>

#include "fwrun.h"
#include "../../plugins/peft/lora/lora_format.h"

#define MAX_ADAPTERS 16

struct adapter_ref {
	char name[64];
	char path[4096];
};

/* --- --adapter lists -------------------------------------------------------------- */

static bool good_name(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '_' || *s == '-' || *s == '.'))
			return false;
	return true;
}

static enum fw_status parse_adapters(const char *spec, struct adapter_ref *refs, int *n,
				     struct fw_err *err)
{
	*n = 0;
	for (const char *s = spec; *s;) {
		const char *end = strchr(s, ',');
		size_t len = end ? (size_t)(end - s) : strlen(s);
		char item[4200];
		if (len >= sizeof(item))
			return fw_errorf(err, FW_ERR_INVALID, "--adapter: entry too long");
		memcpy(item, s, len);
		item[len] = '\0';
		s += len + (end != NULL);
		if (!len)
			continue;
		if (*n == MAX_ADAPTERS)
			return fw_errorf(err, FW_ERR_INVALID, "--adapter: more than %d adapters",
					 MAX_ADAPTERS);
		struct adapter_ref *r = &refs[*n];
		char *eq = strchr(item, '=');
		if (eq) {
			*eq = '\0';
			bool fits = snprintf(r->name, sizeof(r->name), "%s", item) < (int)sizeof(r->name);
			if (snprintf(r->path, sizeof(r->path), "%s", eq + 1) >= (int)sizeof(r->path))
				return fw_errorf(err, FW_ERR_INVALID, "--adapter: path of '%s' too long",
						 item);
			if (!good_name(r->name) || !fits)
				return fw_errorf(err, FW_ERR_INVALID,
						 "--adapter: '%s' is not an adapter name (letters, "
						 "digits, '_', '-', '.')", item);
		} else {
			const char *base = strrchr(item, '/');
			base = base ? base + 1 : item;
			size_t bl = strlen(base);
			if (bl > 3 && !strcmp(base + bl - 3, ".h5"))
				bl -= 3;
			if (bl >= sizeof(r->name) ||
			    snprintf(r->path, sizeof(r->path), "%s", item) >= (int)sizeof(r->path))
				return fw_errorf(err, FW_ERR_INVALID, "--adapter: '%s' is too long", item);
			snprintf(r->name, sizeof(r->name), "%.*s", (int)bl, base);
		}
		if (!r->path[0])
			return fw_errorf(err, FW_ERR_INVALID, "--adapter: '%s' names no file", r->name);
		for (int i = 0; i < *n; i++)
			if (!strcmp(refs[i].name, r->name))
				return fw_errorf(err, FW_ERR_INVALID,
						 "--adapter: two adapters named '%s' (%s, %s); name them "
						 "NAME=PATH", r->name, refs[i].path, r->path);
		(*n)++;
	}
	if (*n == 0)
		return fw_errorf(err, FW_ERR_INVALID, "--adapter: no adapter file given");
	return FW_OK;
}

static int pick(const struct adapter_ref *refs, int n, const char *want, struct fw_err *err)
{
	if (!want || !*want)
		return 0;
	const char *names[MAX_ADAPTERS];
	char list[1024] = "";
	for (int i = 0; i < n; i++) {
		if (!strcmp(refs[i].name, want))
			return i;
		names[i] = refs[i].name;
		snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", i ? ", " : "",
			 refs[i].name);
	}
	const char *near = fw_nearest_name(want, names, n);
	fw_errorf(err, FW_ERR_INVALID, "--adapter-name: no adapter named '%s'%s%s%s; --adapter "
		  "names %s", want, near ? " (did you mean '" : "", near ? near : "",
		  near ? "'?)" : "", list);
	return -1;
}

/* Fills the peft plugin's unset options from the chosen adapter's config,
 * so that --adapter=a.h5 needs no --lora-r etc. Problems with the file are
 * reported later, when the adapter is applied. */
static int ini_fill(void *user, const char *section, const char *name, const char *value
#if INI_HANDLER_LINENO
		    , int lineno
#endif
		    )
{
	struct config *c = user;
	struct fw_loaded *p = c->plugin[FW_KIND_PEFT];
	if (p && !strcmp(p->desc->name, section) && !fw_options_has(p->opts, name))
		fw_options_set(p->opts, name, value, NULL);     /* unknown keys: ignored */
	return 1;
}

void adapter_config_defaults(struct config *c, const char *spec, const char *name)
{
	struct adapter_ref refs[MAX_ADAPTERS];
	int n, i;
	struct fw_err err = { 0 };
	char *text = NULL;
	if (!c->plugin[FW_KIND_PEFT] || !spec || !*spec ||
	    parse_adapters(spec, refs, &n, &err) != FW_OK || (i = pick(refs, n, name, &err)) < 0)
		return;
	if (fw_rt_ckpt_read_config(refs[i].path, &text, NULL) != FW_OK)
		return;
	ini_parse_string(text, ini_fill, c);
	fw_free(text);
}

/* --- checks of adapter files against the model or a weights file ------------------------ */

/* Where the base tensors of a check come from. */
struct base_src {
	struct fw_ctx *ctx;              /* a built model, or */
	struct fw_tensor *tensors;       /* tensors read from a file */
	int n;
};

static struct fw_tensor *base_find(const struct base_src *b, const char *name)
{
	if (b->ctx)
		return fw_ctx_find(b->ctx, name);
	for (int i = 0; i < b->n; i++)
		if (!strcmp(b->tensors[i].name, name))
			return &b->tensors[i];
	return NULL;
}

/* Reads a string attribute; a missing one is a clear FORMAT error. */
static enum fw_status attr(const char *path, const char *name, char **v, struct fw_err *err)
{
	enum fw_status st = fw_h5_read_attr(path, name, v, err);
	if (st == FW_ERR_NOT_FOUND)
		return fw_errorf(err, FW_ERR_FORMAT,
				 "%s: attribute '%s' missing: not a complete %s adapter file", path,
				 name, LORA_KIND);
	return st;
}

/* The adapter's kind: FORMAT "not an adapter" for models and checkpoints. */
static enum fw_status adapter_kind(const char *path, char **kind, struct fw_err *err)
{
	enum fw_status st = fw_h5_read_attr(path, "fw_adapter", kind, err);
	if (st == FW_ERR_NOT_FOUND)
		return fw_errorf(err, FW_ERR_FORMAT,
				 "%s: not an adapter file (no 'fw_adapter' attribute); a model or "
				 "checkpoint goes to --load", path);
	return st;
}

/* Every tensor of the adapter's base_tensors list is in src with the same
 * dtype and shape, and the fingerprint of their data matches. */
static enum fw_status check_base(const char *path, const struct base_src *src,
				 const char *what, struct fw_err *err)
{
	char *list = NULL, *hash = NULL;
	enum fw_status st;
	if ((st = attr(path, "base_tensors", &list, err)) != FW_OK ||
	    (st = attr(path, "base_hash", &hash, err)) != FW_OK)
		goto out;
	uint64_t h = LORA_HASH_SEED;
	struct lora_base_entry e;
	bool ok;
	int line = 1;
	for (const char *s = list, *next; ; s = next, line++) {
		next = lora_base_next(s, &e, &ok);
		if (!ok) {
			st = fw_errorf(err, FW_ERR_FORMAT,
				       "%s: attribute 'base_tensors' is malformed (line %d)", path, line);
			goto out;
		}
		if (!next)
			break;
		struct fw_tensor *t = base_find(src, e.name);
		struct fw_tensor want = { .ndim = e.ndim };
		memcpy(want.ne, e.ne, sizeof(want.ne));
		char ws[96], hs[96] = "";
		lora_shape_text(&want, ws, sizeof(ws));
		if (t)
			lora_shape_text(t, hs, sizeof(hs));
		if (!t) {
			st = fw_errorf(err, FW_ERR_SHAPE,
				       "%s: the adapter was trained on a different base model: its "
				       "base has %s %s [%s], %s has no such tensor", path, e.name,
				       e.dtype, ws, what);
			goto out;
		}
		if (strcmp(fw_dtype_name(t->dtype), e.dtype) || strcmp(ws, hs)) {
			st = fw_errorf(err, FW_ERR_SHAPE,
				       "%s: the adapter was trained on a different base model: its "
				       "base has %s %s [%s], %s has %s [%s]", path, e.name, e.dtype, ws,
				       what, fw_dtype_name(t->dtype), hs);
			goto out;
		}
		h = lora_hash_tensor(h, t);
	}
	char hex[24];
	snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)h);
	if (strcmp(hex, hash))
		st = fw_errorf(err, FW_ERR_INVALID,
			       "%s: the adapter was trained on a different base model: same "
			       "tensors, other weights (base fingerprint %s in %s, %.20s in the "
			       "adapter)", path, hex, what, hash);
out:
	fw_free(list);
	fw_free(hash);
	return st;
}

/* --- applying an adapter to a built model ------------------------------------------------ */

enum fw_status adapter_apply(const struct config *c, const struct fw_plugin_slots *slots,
			     struct fw_model *m, bool inference, struct fw_err *err)
{
	const char *spec = fw_opt_str(c->run, "adapter"), *want = fw_opt_str(c->run, "adapter-name");
	bool merge = fw_opt_bool(c->run, "merge-adapter");
	struct adapter_ref refs[MAX_ADAPTERS];
	int n;
	enum fw_status st;

	if (!*spec) {
		if (merge || *want)
			return fw_errorf(err, FW_ERR_INVALID, "--%s needs --adapter=FILE.h5",
					 merge ? "merge-adapter" : "adapter-name");
		return FW_OK;
	}
	if (merge && !inference)
		return fw_errorf(err, FW_ERR_INVALID,
				 "--merge-adapter is for eval and generate; training keeps the "
				 "adapter separate");
	if ((st = parse_adapters(spec, refs, &n, err)) != FW_OK)
		return st;
	int a = pick(refs, n, want, err);
	if (a < 0)
		return err->status;
	if (!slots->peft) {
		char *kind = NULL;
		bool known = fw_h5_read_attr(refs[a].path, "fw_adapter", &kind, NULL) == FW_OK;
		st = fw_errorf(err, FW_ERR_INVALID, "--adapter needs a peft plugin: add %s to "
			       "--plugins", known ? kind : "one (e.g. peft/lora)");
		fw_free(kind);
		return st;
	}
	const struct fw_peft_i *pi = slots->peft->desc->iface;
	const char *pname = slots->peft->desc->name;
	if (!pi->load || (merge && !pi->merge))
		return fw_errorf(err, FW_ERR_UNSUPPORTED, "%s cannot %s adapters", pname,
				 pi->load ? "merge" : "load");
	/* The others: readable adapters of this plugin, for this base. */
	struct base_src src = { .ctx = m->ctx };
	for (int i = 0; i < n; i++) {
		if (i == a)
			continue;
		char *kind = NULL;
		if ((st = adapter_kind(refs[i].path, &kind, err)) != FW_OK)
			return st;
		bool same = !strcmp(kind, pname);
		if (!same)
			fw_errorf(err, FW_ERR_INVALID, "%s: an adapter of '%.60s', this run loads %s",
				  refs[i].path, kind, pname);
		fw_free(kind);
		if (!same)
			return FW_ERR_INVALID;
		if (!strcmp(pname, LORA_KIND) &&
		    (st = check_base(refs[i].path, &src, "this model", err)) != FW_OK)
			return st;
	}
	if ((st = fw_rt_adapter_load(slots, m, refs[a].path, merge, err)) != FW_OK)
		return st;
	fprintf(stderr, "fwrun: adapter '%s' (%s) applied%s\n", refs[a].name, refs[a].path,
		merge ? ", merged into the weights" : "");
	return FW_OK;
}

enum fw_status adapter_save(const struct fw_plugin_slots *slots, struct fw_model *m,
			    const char *dir, int64_t step, struct fw_err *err)
{
	if (!slots->peft)
		return FW_OK;
	char path[4200];
	snprintf(path, sizeof(path), "%s/adapter-%08lld.h5", dir, (long long)step);
	bool saved;
	enum fw_status st = fw_rt_adapter_save(slots, m, path, &saved, err);
	if (st == FW_OK && saved)
		fprintf(stderr, "fwrun: saved %s\n", path);
	return st;
}

/* --- files of tensors in memory ---------------------------------------------------------------- */

struct tensor_set {
	struct fw_tensor *t;
	int n;
};

static void set_free(struct tensor_set *s)
{
	for (int i = 0; s->t && i < s->n; i++)
		free(s->t[i].data);
	free(s->t);
	s->t = NULL;
	s->n = 0;
}

static struct fw_tensor *set_find(const struct tensor_set *s, const char *name)
{
	for (int i = 0; i < s->n; i++)
		if (!strcmp(s->t[i].name, name))
			return &s->t[i];
	return NULL;
}

/* Reads the tensors of path for which keep(entry) is true (all if NULL). */
static enum fw_status read_tensors(const char *path, struct tensor_set *s,
				   bool (*keep)(const struct fw_h5_entry *, void *), void *arg,
				   struct fw_err *err)
{
	struct fw_h5_entry *ents = NULL;
	int ne = 0;
	enum fw_status st = fw_h5_list(path, &ents, &ne, err);
	memset(s, 0, sizeof(*s));
	if (st != FW_OK)
		return st;
	s->t = calloc((size_t)ne + 1, sizeof(*s->t));
	struct fw_tensor **ptr = calloc((size_t)ne + 1, sizeof(*ptr));
	if (!s->t || !ptr) {
		st = fw_errorf(err, FW_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (int i = 0; i < ne; i++) {
		if (keep && !keep(&ents[i], arg))
			continue;
		if (ents[i].dtype == FW_Q4) {
			st = fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: tensor '%s' is q4: merging "
				       "into quantised weights is not supported", path, ents[i].name);
			goto out;
		}
		struct fw_tensor *t = &s->t[s->n];
		snprintf(t->name, sizeof(t->name), "%s", ents[i].name);
		t->dtype = ents[i].dtype;
		t->ndim = ents[i].ndim;
		memcpy(t->ne, ents[i].ne, sizeof(t->ne));
		fw_set_contiguous_strides(t);
		t->data = malloc(fw_nbytes(t) ? fw_nbytes(t) : 1);
		if (!t->data) {
			st = fw_errorf(err, FW_ERR_NOMEM, "out of memory");
			goto out;
		}
		ptr[s->n++] = t;
	}
	st = fw_h5_load(path, ptr, s->n, err);
out:
	free(ptr);
	fw_free(ents);
	if (st != FW_OK)
		set_free(s);
	return st;
}

/* What an adapter file holds, read and checked. */
struct adapter_file {
	char *kind, *config, *modules, *base_list;
	struct lora_module_entry *mods;
	int n_mods;
	struct tensor_set t;
};

static void adapter_file_free(struct adapter_file *a)
{
	fw_free(a->kind);
	fw_free(a->config);
	fw_free(a->modules);
	fw_free(a->base_list);
	free(a->mods);
	set_free(&a->t);
	memset(a, 0, sizeof(*a));
}

static struct fw_tensor *adapter_tensor(const char *path, struct adapter_file *a,
					const struct lora_module_entry *m, const char *which,
					int64_t d0, int64_t d1, struct fw_err *err)
{
	char name[FW_NAME_MAX + 32];
	snprintf(name, sizeof(name), "%s.lora_%s.weight", m->name, which);
	struct fw_tensor *t = set_find(&a->t, name);
	if (!t)
		fw_errorf(err, FW_ERR_FORMAT, "%s: tensor '%s' missing", path, name);
	else if (t->dtype != FW_F32 || t->ndim != 2 || t->ne[0] != d0 || t->ne[1] != d1) {
		fw_errorf(err, FW_ERR_SHAPE, "%s: tensor '%s' is %s [%lld, %lld], expected f32 "
			  "[%lld, %lld]", path, name, fw_dtype_name(t->dtype), (long long)t->ne[0],
			  (long long)(t->ndim > 1 ? t->ne[1] : 0), (long long)d0, (long long)d1);
		t = NULL;
	}
	return t;
}

static enum fw_status adapter_read(const char *path, struct adapter_file *a, struct fw_err *err)
{
	enum fw_status st;
	memset(a, 0, sizeof(*a));
	if ((st = adapter_kind(path, &a->kind, err)) != FW_OK)
		return st;
	if (strcmp(a->kind, LORA_KIND))
		return fw_errorf(err, FW_ERR_UNSUPPORTED, "%s: an adapter of '%.60s'; only %s "
				 "adapters can be merged or exported", path, a->kind, LORA_KIND);
	if ((st = attr(path, "config", &a->config, err)) != FW_OK ||
	    (st = attr(path, "lora_modules", &a->modules, err)) != FW_OK ||
	    (st = attr(path, "base_tensors", &a->base_list, err)) != FW_OK)
		return st;
	int cap = 1;
	for (const char *s = a->modules; *s; s++)
		cap += *s == '\n';
	a->mods = calloc((size_t)cap, sizeof(*a->mods));
	if (!a->mods)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	bool ok;
	for (const char *s = a->modules, *next; ; s = next) {
		next = lora_module_next(s, &a->mods[a->n_mods], &ok);
		if (!ok)
			return fw_errorf(err, FW_ERR_FORMAT, "%s: attribute 'lora_modules' is "
					 "malformed (line %d)", path, a->n_mods + 1);
		if (!next)
			break;
		if (++a->n_mods == cap)
			break;
	}
	if (a->n_mods == 0)
		return fw_errorf(err, FW_ERR_FORMAT, "%s: the adapter adapts no layer", path);
	if ((st = read_tensors(path, &a->t, NULL, NULL, err)) != FW_OK)
		return st;
	for (int i = 0; i < a->n_mods; i++) {
		const struct lora_module_entry *m = &a->mods[i];
		if (!adapter_tensor(path, a, m, "A", m->r, m->in, err) ||
		    !adapter_tensor(path, a, m, "B", m->out, m->r, err))
			return err->status;
		if (!isfinite(m->scaling))
			return fw_errorf(err, FW_ERR_FORMAT, "%s: %s: scaling %g", path, m->name,
					 m->scaling);
	}
	return FW_OK;
}

/* --- fwrun merge --------------------------------------------------------------------------------- */

static bool in_list(const struct fw_h5_entry *e, void *arg)
{
	const char *list = arg;
	size_t n = strlen(e->name);
	for (const char *s = list; s && *s;) {
		if (!strncmp(s, e->name, n) && s[n] == '\t' && (s == list || s[-1] == '\n'))
			return true;
		s = strchr(s, '\n');
		s = s ? s + 1 : NULL;
	}
	return false;
}

/* NAME.lora_A.weight or NAME.lora_B.weight: a factor merge folds in. */
static bool lora_factor(const char *name)
{
	size_t l = strlen(name);
	return l > 14 && (!strcmp(name + l - 14, ".lora_A.weight") ||
			  !strcmp(name + l - 14, ".lora_B.weight"));
}

static const char merge_usage[] =
	"usage: fwrun merge BASE.h5 ADAPTER.h5 OUT.h5\n"
	"BASE and ADAPTER may be run directories: the newest ckpt-N.h5 and adapter-N.h5 in them.\n"
	"Folds a LoRA adapter into the base model it was trained on: W += scaling * B A for\n"
	"every adapted layer (and the adapter's biases, if it trained some). OUT.h5 is a\n"
	"weights file for --load, without a peft plugin. A base with other tensors or other\n"
	"weights than the adapter's is refused.\n";

int cmd_merge(int argc, char **argv)
{
	if (argc >= 1 && (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h"))) {
		fputs(merge_usage, stdout);
		return EXIT_OK;
	}
	if (argc != 3)
		return die(EXIT_USAGE, "merge: usage: fwrun merge BASE.h5 ADAPTER.h5 OUT.h5");
	char base_buf[4200], ad_buf[4200];
	struct fw_err err = { 0 };
	if (resolve_load(argv[0], base_buf, sizeof(base_buf), &err) != FW_OK ||
	    resolve_adapter(argv[1], ad_buf, sizeof(ad_buf), &err) != FW_OK)
		return die(EXIT_RUNTIME, "%s", err.msg);
	const char *base_path = base_buf, *ad_path = ad_buf, *out_path = argv[2];
	char *tok = NULL, *plain = NULL;
	struct adapter_file a;
	struct tensor_set base = { 0 };
	struct fw_h5_entry *ents = NULL;
	struct fw_tensor **out = NULL;
	char *cfg = NULL, *arch = NULL, *source = NULL;
	int rc = EXIT_RUNTIME, ne = 0;

	if (adapter_read(ad_path, &a, &err) != FW_OK ||
	    read_tensors(base_path, &base, in_list, a.base_list, &err) != FW_OK) {
		rc = die(EXIT_RUNTIME, "%s", err.msg);
		goto out;
	}
	struct base_src src = { .tensors = base.t, .n = base.n };
	if (check_base(ad_path, &src, base_path, &err) != FW_OK) {
		rc = die(EXIT_RUNTIME, "%s", err.msg);
		goto out;
	}
	for (int i = 0; i < a.n_mods; i++) {
		const struct lora_module_entry *m = &a.mods[i];
		char wn[FW_NAME_MAX + 16];
		snprintf(wn, sizeof(wn), "%s.weight", m->name);
		struct fw_tensor *w = set_find(&base, wn);
		if (!w || w->dtype != FW_F32 || w->ndim != 2 || w->ne[0] != m->out ||
		    w->ne[1] != m->in) {
			rc = die(EXIT_RUNTIME, "%s: '%s' is not an f32 [%lld, %lld] weight, so %s "
				 "cannot merge into it", base_path, wn, (long long)m->out,
				 (long long)m->in, ad_path);
			goto out;
		}
		const float *A = set_find(&a.t, (snprintf(wn, sizeof(wn), "%s.lora_A.weight",
							   m->name), wn))->data;
		const float *B = set_find(&a.t, (snprintf(wn, sizeof(wn), "%s.lora_B.weight",
							   m->name), wn))->data;
		float *W = w->data, s = (float)m->scaling;
		for (int64_t o = 0; o < m->out; o++)
			for (int64_t k = 0; k < m->r; k++) {
				float c = s * B[o * m->r + k];
				for (int64_t j = 0; j < m->in && c != 0.0f; j++)
					W[o * m->in + j] += c * A[k * m->in + j];
			}
	}
	/* The output: BASE's order; the adapter's biases replace the base's. */
	if (fw_h5_list(base_path, &ents, &ne, &err) != FW_OK) {
		rc = die(EXIT_RUNTIME, "%s", err.msg);
		goto out;
	}
	out = calloc((size_t)(ne + a.t.n) + 1, sizeof(*out));
	if (!out) {
		rc = die(EXIT_RUNTIME, "out of memory");
		goto out;
	}
	/* (A base that is a LoRA run's checkpoint holds the factors too: they
	 * are folded in, not copied.) */
	int n = 0;
	for (int i = 0; i < ne; i++) {
		struct fw_tensor *t = set_find(&base, ents[i].name);
		struct fw_tensor *b = set_find(&a.t, ents[i].name);
		if (b && lora_factor(b->name))
			continue;
		if (b || t)
			out[n++] = b ? b : t;
	}
	for (int i = 0; i < a.t.n; i++) {
		bool listed = false;
		for (int k = 0; k < n && !listed; k++)
			listed = out[k] == &a.t.t[i];
		if (!lora_factor(a.t.t[i].name) && !listed)
			out[n++] = &a.t.t[i];
	}
	fw_rt_ckpt_read_config(base_path, &cfg, NULL);
	fw_h5_read_attr(base_path, "fw_arch", &arch, NULL);
	fw_h5_read_attr(base_path, "source", &source, NULL);
	fw_h5_read_attr(base_path, TOKENIZER_ATTR, &tok, NULL);
	plain = cfg ? config_without_peft(cfg) : NULL;
	char from[8420];          /* both paths are under 4200 bytes */
	snprintf(from, sizeof(from), "%s + %s", base_path, ad_path);
	struct fw_h5_attr attrs[5];
	int na = 0;
	attrs[na++] = (struct fw_h5_attr){ "merged_from", from };
	if (cfg)
		attrs[na++] = (struct fw_h5_attr){ "config", plain ? plain : cfg };
	if (tok)                /* the model's tokenizer stays with it */
		attrs[na++] = (struct fw_h5_attr){ TOKENIZER_ATTR, tok };
	if (arch)
		attrs[na++] = (struct fw_h5_attr){ "fw_arch", arch };
	if (source)
		attrs[na++] = (struct fw_h5_attr){ "source", source };
	if (fw_h5_save(out_path, out, n, attrs, na, &err) != FW_OK) {
		rc = die(EXIT_RUNTIME, "%s", err.msg);
		goto out;
	}
	fprintf(stderr, "fwrun: merged %s (%d layers) into %s: %s (%d tensors%s)\n", ad_path,
		a.n_mods, base_path, out_path, n, tok ? ", the tokenizer" : "");
	rc = EXIT_OK;
out:
	fw_free(tok);
	free(plain);
	fw_free(cfg);
	fw_free(arch);
	fw_free(source);
	fw_free(ents);
	free(out);
	set_free(&base);
	adapter_file_free(&a);
	return rc;
}

/* --- fwrun export-adapter --------------------------------------------------------------------- */

/* fw's GPT-2 names (arch/decoder) to Hugging Face's GPT2LMHeadModel module names. */
static void hf_name(const char *fw, char *out, size_t len)
{
	snprintf(out, len, "%s%s", strncmp(fw, "lm_head", 7) ? "transformer." : "", fw);
}

static bool ini_value(const char *text, const char *key, char *out, size_t len)
{
	char pat[96];
	snprintf(pat, sizeof(pat), "\n%s = ", key);
	const char *p = strstr(text, pat);
	if (!p)
		return false;
	p += strlen(pat);
	size_t n = strcspn(p, "\n");
	snprintf(out, len, "%.*s", (int)(n < len ? n : len - 1), p);
	return true;
}

/* An adapter of another peft plugin than peft/lora: that plugin's
 * export_peft hook writes it (true, with *rc set); false for LoRA files. */
static bool export_by_plugin(const char *path, const char *dir, const char *base_model,
			     int *rc)
{
	char *kind = NULL;
	struct fw_loaded *p = NULL;
	struct fw_err err = { 0 };
	if (fw_h5_read_attr(path, "fw_adapter", &kind, NULL) != FW_OK || !strcmp(kind, LORA_KIND)) {
		fw_free(kind);
		return false;          /* adapter_read below names what is wrong */
	}
	if (fw_plugin_open(kind, FW_KIND_PEFT, &p, &err) != FW_OK)
		*rc = die(EXIT_RUNTIME, "%s: an adapter of '%.60s': %s", path, kind, err.msg);
	else if (!p->desc->iface || !((const struct fw_peft_i *)p->desc->iface)->export_peft)
		*rc = die(EXIT_RUNTIME, "%s: %s cannot export adapters to PEFT's layout", path, kind);
	else if (mkdir(dir, 0777) != 0 && errno != EEXIST)
		*rc = die(EXIT_RUNTIME, "%s: %s", dir, strerror(errno));
	else if (((const struct fw_peft_i *)p->desc->iface)->export_peft(fw_host_table(), path, dir,
									  base_model, &err) != FW_OK)
		*rc = die(EXIT_RUNTIME, "%s", err.msg);
	else {
		fprintf(stderr, "fwrun: exported %s (%s) to %s\n", path, kind, dir);
		*rc = EXIT_OK;
	}
	if (p)
		fw_plugin_close(p);
	fw_free(kind);
	return true;
}

static const char export_usage[] =
	"usage: fwrun export-adapter ADAPTER.h5 OUT_DIR [--base-model=NAME]\n"
	"ADAPTER may be a run directory: its newest adapter-N.h5.\n"
	"Writes a peft/lora adapter in Hugging Face PEFT's layout: OUT_DIR/adapter_config.json\n"
	"and OUT_DIR/adapter_model.safetensors with PEFT's key names for GPT-2\n"
	"(base_model.model.transformer.h.N.attn.c_attn.lora_A.weight (r, in), lora_B.weight\n"
	"(out, r); fan_in_fan_out true), or for arch/encoder BERT's (base_model.model.bert.encoder.\n"
	"layer.N.attention.self.query.lora_A.weight; task_type SEQ_CLS or TOKEN_CLS; a classifier\n"
	"trained next to the adapter in modules_to_save). --base-model fills base_model_name_or_path.\n";

int cmd_export_adapter(int argc, char **argv)
{
	const char *pos[2], *base_model = NULL;
	int np = 0;
	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			fputs(export_usage, stdout);
			return EXIT_OK;
		}
		if (!strncmp(argv[i], "--base-model=", 13))
			base_model = argv[i] + 13;
		else if (!strncmp(argv[i], "--", 2))
			return die(EXIT_USAGE, "export-adapter: unknown option '%s' (only "
				   "--base-model=NAME)", argv[i]);
		else if (np < 2)
			pos[np++] = argv[i];
		else
			return die(EXIT_USAGE, "export-adapter: unexpected argument '%s'", argv[i]);
	}
	if (np != 2)
		return die(EXIT_USAGE, "export-adapter: usage: fwrun export-adapter ADAPTER.h5 "
			   "OUT_DIR [--base-model=NAME]");
	char ad_buf[4200];
	struct fw_err err = { 0 };
	if (resolve_adapter(pos[0], ad_buf, sizeof(ad_buf), &err) != FW_OK)
		return die(EXIT_RUNTIME, "%s", err.msg);
	const char *ad_path = ad_buf, *dir = pos[1];
	struct adapter_file a;
	json_t *cfg = NULL;
	int rc = EXIT_RUNTIME;

	if (export_by_plugin(ad_path, dir, base_model, &rc))
		return rc;

	if (adapter_read(ad_path, &a, &err) != FW_OK) {
		rc = die(EXIT_RUNTIME, "%s", err.msg);
		goto out;
	}
	char r_s[32] = "8", alpha_s[32] = "8", drop_s[32] = "0", bias_s[32] = "none";
	char rs_s[16] = "false", init_s[32] = "kaiming";
	ini_value(a.config, "lora-r", r_s, sizeof(r_s));
	ini_value(a.config, "lora-alpha", alpha_s, sizeof(alpha_s));
	ini_value(a.config, "lora-dropout", drop_s, sizeof(drop_s));
	ini_value(a.config, "lora-bias", bias_s, sizeof(bias_s));
	ini_value(a.config, "lora-use-rslora", rs_s, sizeof(rs_s));
	ini_value(a.config, "lora-init", init_s, sizeof(init_s));
	long long r = strtoll(r_s, NULL, 10);
	double alpha = strtod(alpha_s, NULL);
	/* An arch/encoder base: BERT's keys; the task from its head's tensors. */
	const char *task = bert_adapter_task(a.base_list);

	/* Tensors under PEFT's keys (the module's bias is base_layer.bias). */
	struct fw_tensor **tp = calloc((size_t)a.t.n + 1, sizeof(*tp));
	if (!tp) {
		free(tp);
		rc = die(EXIT_RUNTIME, "out of memory");
		goto out;
	}
	json_t *saves = json_array();   /* modules_to_save: the modules whose weight it carries */
	for (int i = 0; i < a.t.n; i++) {
		struct fw_tensor *t = &a.t.t[i];
		char hf[2 * FW_NAME_MAX], key[3 * FW_NAME_MAX], mod[FW_NAME_MAX];
		size_t l = strlen(t->name);
		if (l > 7 && !strcmp(t->name + l - 7, ".weight") && !lora_factor(t->name)) {
			snprintf(mod, sizeof(mod), "%.*s", (int)(l - 7), t->name);
			if (task)
				bert_peft_name(task, mod, hf, sizeof(hf));
			else
				hf_name(mod, hf, sizeof(hf));
			json_array_append_new(saves, json_string(hf));
		}
		bool adapted_bias = false;
		if (l > 5 && !strcmp(t->name + l - 5, ".bias")) {
			snprintf(mod, sizeof(mod), "%.*s", (int)(l - 5), t->name);
			for (int k = 0; k < a.n_mods && !adapted_bias; k++)
				adapted_bias = !strcmp(a.mods[k].name, mod);
		}
		if (adapted_bias) {
			if (task)
				bert_peft_name(task, mod, hf, sizeof(hf));
			else
				hf_name(mod, hf, sizeof(hf));
			snprintf(key, sizeof(key), "base_model.model.%s.base_layer.bias", hf);
		} else {
			if (task)
				bert_peft_name(task, t->name, hf, sizeof(hf));
			else
				hf_name(t->name, hf, sizeof(hf));
			snprintf(key, sizeof(key), "base_model.model.%s", hf);
		}
		if (strlen(key) >= FW_NAME_MAX) {
			free(tp);
			rc = die(EXIT_RUNTIME, "export-adapter: key '%s' is too long", key);
			goto out;
		}
		snprintf(t->name, sizeof(t->name), "%s", key);
		tp[i] = t;
	}
	if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
		free(tp);
		rc = die(EXIT_RUNTIME, "%s: %s", dir, strerror(errno));
		goto out;
	}
	char path[4200];
	snprintf(path, sizeof(path), "%s/adapter_model.safetensors", dir);
	const char *meta[] = { "format", "pt", NULL };
	enum fw_status st = fw_st_save(path, tp, a.t.n, meta, &err);
	free(tp);
	if (st != FW_OK) {
		rc = die(EXIT_RUNTIME, "%s", err.msg);
		goto out;
	}

	/* target_modules: a layer kind adapted everywhere is named by its last
	 * part ("c_attn"); a partial choice by the layers' names. */
	json_t *targets = json_array(), *rank_pat = json_object(), *alpha_pat = json_object();
	for (int i = 0; i < a.n_mods; i++) {
		const char *nm = a.mods[i].name, *dot = strrchr(nm, '.');
		const char *last = dot ? dot + 1 : nm;
		int adapted = 0, total = 0;
		for (int k = 0; k < a.n_mods; k++) {
			const char *d2 = strrchr(a.mods[k].name, '.');
			adapted += !strcmp(d2 ? d2 + 1 : a.mods[k].name, last);
		}
		struct lora_base_entry e;
		bool ok;
		for (const char *s = a.base_list, *next; (next = lora_base_next(s, &e, &ok)); s = next) {
			size_t el = strlen(e.name), ll = strlen(last);
			total += e.ndim == 2 && el > ll + 8 && !strcmp(e.name + el - 7, ".weight") &&
				 !strncmp(e.name + el - 7 - ll, last, ll) && e.name[el - 8 - ll] == '.';
		}
		const char *entry = adapted == total ? last : nm;
		bool dup = false;
		for (size_t k = 0; k < json_array_size(targets) && !dup; k++)
			dup = !strcmp(json_string_value(json_array_get(targets, k)), entry);
		if (!dup)
			json_array_append_new(targets, json_string(entry));
		if (a.mods[i].r != r)
			json_object_set_new(rank_pat, nm, json_integer(a.mods[i].r));
		if (fabs(a.mods[i].alpha - alpha) > 1e-9 * fabs(alpha))
			json_object_set_new(alpha_pat, nm, json_real(a.mods[i].alpha));
	}
	json_t *alpha_j = alpha == floor(alpha) && fabs(alpha) < 1e15 ?
			  json_integer((json_int_t)alpha) : json_real(alpha);
	cfg = json_pack("{s:s, s:o, s:o, s:I, s:o, s:f, s:o, s:s, s:b, s:b, s:o, s:o, s:o, "
			"s:b, s:o, s:n, s:n, s:n, s:b, s:b}",
			"peft_type", "LORA", "task_type",
			!task ? json_string("CAUSAL_LM") : !strcmp(task, "mlm") ? json_null() :
			json_string(!strcmp(task, "seq-cls") ? "SEQ_CLS" : "TOKEN_CLS"),
			"base_model_name_or_path", base_model ? json_string(base_model) : json_null(),
			"r", (json_int_t)r, "lora_alpha", alpha_j, "lora_dropout", strtod(drop_s, NULL),
			"target_modules", targets, "bias", bias_s, "fan_in_fan_out", !task,
			"use_rslora", !strcmp(rs_s, "true"),
			"init_lora_weights", strcmp(init_s, "gaussian") ? json_true() :
			json_string("gaussian"),
			"rank_pattern", rank_pat, "alpha_pattern", alpha_pat, "inference_mode", 1,
			"modules_to_save", json_array_size(saves) ? saves : (json_decref(saves), json_null()),
			"layers_to_transform", "layers_pattern", "revision",
			"use_dora", 0, "lora_bias", 0);
	snprintf(path, sizeof(path), "%s/adapter_config.json", dir);
	struct fw_err werr = { 0 };
	enum fw_status wst = write_json_file(path, cfg, &werr);
	if (wst != FW_OK) {
		rc = die(EXIT_RUNTIME, "%s", werr.msg);
		goto out;
	}
	fprintf(stderr, "fwrun: exported %s (%d layers, %d tensors) to %s\n", ad_path, a.n_mods,
		a.t.n, dir);
	rc = EXIT_OK;
out:
	json_decref(cfg);
	adapter_file_free(&a);
	return rc;
}
