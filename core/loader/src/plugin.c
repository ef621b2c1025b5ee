/* plugin.c - finding, loading and checking plugins. */
#define _GNU_SOURCE            /* dladdr */
#include <dirent.h>
#include <dlfcn.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "loader_internal.h"

#ifndef FW_BUILD_DIR
#define FW_BUILD_DIR ""
#endif

const char *fw_plugin_kind_name(int kind)
{
	static const char *const names[FW_KIND_COUNT] = {
		[FW_KIND_ARCH] = "arch", [FW_KIND_ATTENTION] = "attention",
		[FW_KIND_PEFT] = "peft", [FW_KIND_OPTIM] = "optim",
	};
	return kind > 0 && kind < FW_KIND_COUNT ? names[kind] : "?";
}

/* --- search path ------------------------------------------------------------------ */

/* A directory already in dirs[0..k): searched (and listed) once only. */
static bool listed(char *const *dirs, size_t k, const char *dir)
{
	for (size_t i = 0; i < k; i++)
		if (dirs[i] && !strcmp(dirs[i], dir))
			return true;
	return false;
}

/* The plugins that belong to this libfw, into dir: LIBDIR/fw/plugins beside
 * the installed library, found from where libfw was loaded (so a moved
 * install still finds its own), or BUILD/plugins for the build tree's libfw.
 * False when the library's own path cannot be found. */
static bool own_plugin_dir(char *dir, size_t size)
{
	Dl_info info;
	if (!dladdr((void *)own_plugin_dir, &info) || !info.dli_fname)
		return false;
	char *lib = realpath(info.dli_fname, NULL);
	if (!lib)
		return false;
	*strrchr(lib, '/') = 0;
	char *build = *FW_BUILD_DIR ? realpath(FW_BUILD_DIR, NULL) : NULL;
	if (build && !strcmp(lib, build))
		snprintf(dir, size, "%s/plugins", FW_BUILD_DIR);
	else
		snprintf(dir, size, "%s/fw/plugins", lib);
	free(build);
	free(lib);
	return true;
}

char **fw_plugin_search_dirs(void)
{
	const char *env = getenv("FW_PLUGIN_PATH");
	size_t n = 3;
	for (const char *p = env; p && *p; p++)
		n += *p == ':';
	char **dirs = fw_calloc(n + 1, sizeof(char *));
	if (!dirs)
		return NULL;
	size_t k = 0;
	if (env && *env) {
		char *copy = fw_strdup(env), *save = NULL;
		if (!copy) {
			fw_free(dirs);
			return NULL;
		}
		for (char *tok = strtok_r(copy, ":", &save); tok; tok = strtok_r(NULL, ":", &save))
			if (*tok && !listed(dirs, k, tok))
				dirs[k++] = fw_strdup(tok);
		fw_free(copy);
	}
	char own[PATH_MAX + 16];
	if (own_plugin_dir(own, sizeof(own)) && !listed(dirs, k, own))
		dirs[k++] = fw_strdup(own);
	for (size_t i = 0; i < k; i++) {
		if (!dirs[i]) {        /* an allocation failed: give up cleanly */
			for (size_t j = 0; j < k; j++)
				fw_free(dirs[j]);
			fw_free(dirs);
			return NULL;
		}
	}
	return dirs;
}

static void free_strv(char **v)
{
	for (size_t i = 0; v && v[i]; i++)
		fw_free(v[i]);
	fw_free(v);
}

void fw_plugin_paths_free(char **paths, int n)
{
	for (int i = 0; i < n; i++)
		fw_free(paths[i]);
	fw_free(paths);
}

static bool is_file(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static char *join3(const char *a, const char *b, const char *c)
{
	size_t n = strlen(a) + strlen(b) + strlen(c) + 1;
	char *s = fw_malloc(n);
	if (s)
		snprintf(s, n, "%s%s%s", a, b, c);
	return s;
}

enum fw_status fw_plugin_discover(char ***paths, int *n, struct fw_err *err)
{
	char **dirs = fw_plugin_search_dirs();
	int cap = 16, cnt = 0;
	char **out = fw_malloc((size_t)cap * sizeof(char *));
	enum fw_status s = FW_OK;

	if (!dirs || !out) {
		s = fw_errorf(err, FW_ERR_NOMEM, "plugins: out of memory");
		goto done;
	}
	for (size_t d = 0; dirs[d]; d++) {
		for (int kind = 1; kind < FW_KIND_COUNT; kind++) {
			char *sub = join3(dirs[d], "/", fw_plugin_kind_name(kind));
			if (!sub) {
				s = fw_errorf(err, FW_ERR_NOMEM, "plugins: out of memory");
				goto done;
			}
			DIR *dir = opendir(sub);
			struct dirent *e;
			while (dir && (e = readdir(dir))) {
				size_t l = strlen(e->d_name);
				if (l < 4 || strcmp(e->d_name + l - 3, ".so"))
					continue;
				char *base = join3(sub, "/", e->d_name);
				if (!base) {
					s = fw_errorf(err, FW_ERR_NOMEM, "plugins: out of memory");
					break;
				}
				if (cnt == cap) {
					char **nb = fw_malloc((size_t)cap * 2 * sizeof(char *));
					if (!nb) {
						fw_free(base);
						s = fw_errorf(err, FW_ERR_NOMEM, "plugins: out of memory");
						break;
					}
					memcpy(nb, out, (size_t)cnt * sizeof(char *));
					fw_free(out);
					out = nb;
					cap *= 2;
				}
				out[cnt++] = base;
			}
			if (dir)
				closedir(dir);
			fw_free(sub);
			if (s != FW_OK)
				goto done;
		}
	}
done:
	free_strv(dirs);
	if (s != FW_OK) {
		fw_plugin_paths_free(out, out ? cnt : 0);
		return s;
	}
	*paths = out;
	*n = cnt;
	return FW_OK;
}

/* A path to a .so file, not a plugin name. */
static bool is_so_path(const char *s)
{
	size_t l = strlen(s);
	return l > 3 && strcmp(s + l - 3, ".so") == 0;
}

enum fw_status fw_plugin_resolve(const char *name, char **path, struct fw_err *err)
{
	if (is_so_path(name)) {
		if (!is_file(name))
			return fw_errorf(err, FW_ERR_IO, "%s: no such plugin file", name);
		*path = fw_strdup(name);
		return *path ? FW_OK : fw_errorf(err, FW_ERR_NOMEM, "plugins: out of memory");
	}
	char **dirs = fw_plugin_search_dirs();
	if (!dirs)
		return fw_errorf(err, FW_ERR_NOMEM, "plugins: out of memory");
	for (size_t d = 0; dirs[d]; d++) {
		char *p = join3(dirs[d], "/", name);
		char *so = p ? join3(p, ".so", "") : NULL;
		fw_free(p);
		if (!so) {
			free_strv(dirs);
			return fw_errorf(err, FW_ERR_NOMEM, "plugins: out of memory");
		}
		if (is_file(so)) {
			free_strv(dirs);
			*path = so;
			return FW_OK;
		}
		fw_free(so);
	}
	free_strv(dirs);

	/* Not found: name what exists. */
	char **found = NULL;
	int n = 0;
	char list[1024] = "";
	if (fw_plugin_discover(&found, &n, NULL) == FW_OK) {
		for (int i = 0; i < n; i++) {
			/* ".../KIND/NAME.so" -> "KIND/NAME" */
			char *end = found[i] + strlen(found[i]) - 3, *slash = end;
			int seen = 0;
			while (slash > found[i] && !(slash[-1] == '/' && ++seen == 2))
				slash--;
			size_t used = strlen(list);
			snprintf(list + used, sizeof(list) - used, "%s%.*s", i ? ", " : "",
				 (int)(end - slash), slash);
		}
		fw_plugin_paths_free(found, n);
	}
	return fw_errorf(err, FW_ERR_NOT_FOUND, "unknown plugin '%s'; available: %s", name,
			 *list ? list : "none (set FW_PLUGIN_PATH)");
}

/* --- checking -------------------------------------------------------------------- */

/* The sizes each minor of this major froze (plugin.h): members beyond them
 * did not exist then. */
struct abi_sizes {
	size_t plugin;
	size_t iface[FW_KIND_COUNT];
};
#define SIZES_1_0 { FW_PLUGIN_SIZE_1_0, { \
	[FW_KIND_ARCH] = FW_ARCH_I_SIZE_1_0, [FW_KIND_ATTENTION] = FW_ATTENTION_I_SIZE_1_0, \
	[FW_KIND_PEFT] = FW_PEFT_I_SIZE_1_0, [FW_KIND_OPTIM] = FW_OPTIM_I_SIZE_1_0 } }
#define SIZES_1_2 { FW_PLUGIN_SIZE_1_0, { \
	[FW_KIND_ARCH] = FW_ARCH_I_SIZE_1_0, [FW_KIND_ATTENTION] = FW_ATTENTION_I_SIZE_1_0, \
	[FW_KIND_PEFT] = FW_PEFT_I_SIZE_1_2, [FW_KIND_OPTIM] = FW_OPTIM_I_SIZE_1_0 } }
#define SIZES_1_3 { FW_PLUGIN_SIZE_1_0, { \
	[FW_KIND_ARCH] = FW_ARCH_I_SIZE_1_3, [FW_KIND_ATTENTION] = FW_ATTENTION_I_SIZE_1_0, \
	[FW_KIND_PEFT] = FW_PEFT_I_SIZE_1_3, [FW_KIND_OPTIM] = FW_OPTIM_I_SIZE_1_0 } }
#define SIZES_1_7 { FW_PLUGIN_SIZE_1_0, { \
	[FW_KIND_ARCH] = FW_ARCH_I_SIZE_1_3, [FW_KIND_ATTENTION] = FW_ATTENTION_I_SIZE_1_0, \
	[FW_KIND_PEFT] = FW_PEFT_I_SIZE_1_3, [FW_KIND_OPTIM] = FW_OPTIM_I_SIZE_1_7 } }
static const struct abi_sizes frozen[FW_ABI_MINOR + 1] = {
	[0] = SIZES_1_0,
	[1] = SIZES_1_0,             /* 1.1 appended to fw_model only */
	[2] = SIZES_1_2,             /* 1.2: the fingerprint; fw_peft_i.export_peft */
	[3] = SIZES_1_3,             /* 1.3: fw_peft_i.check, init_from_base; fw_arch_i.hf_maps; fw_model.n_virtual */
	[4] = SIZES_1_3,             /* 1.4 appended to host-owned structs only: fw_model.enc_len..n_cross,
					fw_host.lm_head_cross_entropy */
	[5] = SIZES_1_3,             /* 1.5 appended to host-owned structs only: fw_model.n_prefix,
					fw_attn_spec.n_prefix; per-row cache slots (fw_kv_cache.len) */
	[6] = SIZES_1_3,             /* 1.6 appended to host-owned fw_exec only: grad_overwrite */
	[7] = SIZES_1_7,             /* 1.7: fw_optim_i.step_fused (struct fw_optim_fused) */
};
#undef SIZES_1_0
#undef SIZES_1_2
#undef SIZES_1_3
#undef SIZES_1_7
_Static_assert(FW_ABI_MINOR == 7, "a new minor needs its row in frozen[] and, if it "
	       "changes the fingerprint, a case in fingerprint_of()");

/* The fingerprint a plugin of this minor carries. 1.0 and 1.1 hashed the
 * sizes of fw_tensor and fw_op_i as they were then (both may grow since). */
static uint32_t fingerprint_of(unsigned minor)
{
	if (minor >= 2)
		return FW_ABI_FINGERPRINT;
	size_t tensor = FW_SIZE_THROUGH(struct fw_tensor, name);
	tensor = (tensor + sizeof(int64_t) - 1) / sizeof(int64_t) * sizeof(int64_t);
	return (uint32_t)(tensor * 1000003u ^ FW_OP_I_SIZE_1_0 * 10007u ^
			  sizeof(struct fw_err) * 101u ^ sizeof(union fw_param) * 7u ^ FW_MAX_DIMS);
}

/* The ABI head, then d copied into dc (and its interface into ic) at this
 * fw's size: only what d's minor and sizes cover, the rest zero. */
static enum fw_status read_descriptor(const struct fw_plugin *d, const char *path,
				      struct fw_plugin *dc, union fw_any_iface *ic,
				      struct fw_err *err)
{
	if (!d)
		return fw_errorf(err, FW_ERR_FORMAT, "%s: fw_plugin_entry returned NULL", path);
	/* Only the fixed-layout head may be read before these checks pass. */
	if (d->size < FW_SIZE_THROUGH(struct fw_plugin, abi_fingerprint))
		return fw_errorf(err, FW_ERR_FORMAT,
				 "%s: descriptor is %u bytes, too small to be an fw plugin",
				 path, d->size);
	if (d->abi_major != FW_ABI_MAJOR || d->abi_minor > FW_ABI_MINOR)
		return fw_errorf(err, FW_ERR_UNSUPPORTED,
				 "%s: built for ABI %u.%u, fw is %u.%u", path, d->abi_major,
				 d->abi_minor, FW_ABI_MAJOR, FW_ABI_MINOR);
	if (d->abi_fingerprint != fingerprint_of(d->abi_minor))
		return fw_errorf(err, FW_ERR_UNSUPPORTED,
				 "%s: struct layouts differ (fingerprint %08x, fw %u.%u expects "
				 "%08x for ABI %u.%u): rebuild against this fw", path,
				 d->abi_fingerprint, FW_ABI_MAJOR, FW_ABI_MINOR,
				 fingerprint_of(d->abi_minor), d->abi_major, d->abi_minor);
	const struct abi_sizes *fz = &frozen[d->abi_minor];
	if (d->size < fz->plugin || d->size > sizeof(struct fw_plugin))
		return fw_errorf(err, FW_ERR_UNSUPPORTED,
				 "%s: descriptor is %u bytes, fw expects %zu to %zu for ABI %u.%u",
				 path, d->size, fz->plugin, sizeof(struct fw_plugin), d->abi_major,
				 d->abi_minor);
	memset(dc, 0, sizeof(*dc));
	memcpy(dc, d, fz->plugin);
	memset(ic, 0, sizeof(*ic));
	if (dc->kind <= 0 || dc->kind >= FW_KIND_COUNT)
		return fw_errorf(err, FW_ERR_FORMAT, "%s: unknown plugin kind %d", path,
				 (int)dc->kind);
	const char *kn = fw_plugin_kind_name(dc->kind);
	if (!dc->iface)
		return fw_errorf(err, FW_ERR_FORMAT, "%s: plugin '%s' lacks its %s interface",
				 path, dc->name ? dc->name : "(null)", kn);
	/* The interface starts with its size: all members of the plugin's minor. */
	size_t isize = *(const size_t *)dc->iface;
	static const size_t iface_size[FW_KIND_COUNT] = {
		[FW_KIND_ARCH] = sizeof(struct fw_arch_i),
		[FW_KIND_ATTENTION] = sizeof(struct fw_attention_i),
		[FW_KIND_PEFT] = sizeof(struct fw_peft_i),
		[FW_KIND_OPTIM] = sizeof(struct fw_optim_i),
	};
	size_t ours = iface_size[dc->kind], need = fz->iface[dc->kind];
	if (isize < need || isize > ours)
		return fw_errorf(err, FW_ERR_UNSUPPORTED,
				 "%s: %s interface is %zu bytes, fw expects %zu to %zu for ABI %u.%u",
				 path, kn, isize, need, ours, d->abi_major, d->abi_minor);
	memcpy(ic, dc->iface, need);
	dc->iface = ic;
	return FW_OK;
}

/* Option names: lower case letters and digits in words joined by single
 * dashes, starting with a letter ("lora-r", "adam-beta1"). */
static bool option_name_ok(const char *s)
{
	if (!(*s >= 'a' && *s <= 'z'))
		return false;
	for (const char *p = s; *p; p++) {
		bool word = (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9');
		if (!word && !(*p == '-' && p[1] && p[1] != '-'))
			return false;
	}
	return true;
}

/* Members without which the host cannot use a plugin of this kind. */
static enum fw_status check_required(const struct fw_plugin *d, const char *path,
				     struct fw_err *err)
{
	const union fw_any_iface *i = d->iface;
	const char *missing = NULL;
	switch (d->kind) {
	case FW_KIND_ARCH:
		missing = !i->arch.build ? "fw_arch_i.build" : NULL;
		break;
	case FW_KIND_ATTENTION:
		missing = !i->attention.attend ? "fw_attention_i.attend" : NULL;
		break;
	default:                     /* peft: every hook is optional */
		break;
	case FW_KIND_OPTIM:
		if (!i->optim.step)
			missing = "fw_optim_i.step";
		else if (i->optim.n_state < 0)
			return fw_errorf(err, FW_ERR_FORMAT, "%s: plugin '%s' has n_state %d",
					 path, d->name, i->optim.n_state);
		else if (i->optim.n_state > 0 && !i->optim.state_names)
			missing = "fw_optim_i.state_names";
		for (int k = 0; !missing && k < i->optim.n_state; k++)
			if (!i->optim.state_names[k] || !*i->optim.state_names[k])
				return fw_errorf(err, FW_ERR_FORMAT,
						 "%s: plugin '%s' state name %d is empty", path,
						 d->name, k);
		break;
	}
	if (missing)
		return fw_errorf(err, FW_ERR_FORMAT, "%s: plugin '%s' has no %s (required)", path,
				 d->name, missing);
	return FW_OK;
}

/* d already read by read_descriptor. */
static enum fw_status check_read(const struct fw_plugin *d, const char *path, int expect_kind,
				 struct fw_err *err)
{
	const char *kn = fw_plugin_kind_name(d->kind);
	size_t kl = strlen(kn);
	if (!d->name || strncmp(d->name, kn, kl) || d->name[kl] != '/' || !d->name[kl + 1] ||
	    strchr(d->name + kl + 1, '/'))
		return fw_errorf(err, FW_ERR_FORMAT,
				 "%s: plugin name '%s' is not of the form '%s/NAME'", path,
				 d->name ? d->name : "(null)", kn);
	if (expect_kind && (int)d->kind != expect_kind)
		return fw_errorf(err, FW_ERR_INVALID,
				 "%s: plugin '%s' is of kind '%s', but this slot needs kind '%s'",
				 path, d->name, kn, fw_plugin_kind_name(expect_kind));
	if (!d->version)
		return fw_errorf(err, FW_ERR_FORMAT, "%s: plugin '%s' lacks a version", path,
				 d->name);
	enum fw_status s = check_required(d, path, err);
	if (s != FW_OK)
		return s;
	if (d->n_options < 0 || (d->n_options > 0 && !d->options))
		return fw_errorf(err, FW_ERR_FORMAT, "%s: plugin '%s' has a bad option table",
				 path, d->name);
	for (int i = 0; i < d->n_options; i++) {
		const struct fw_option_def *o = &d->options[i];
		if (!o->name || !*o->name || o->type < FW_OPT_BOOL || o->type > FW_OPT_CHOICE ||
		    (o->type == FW_OPT_CHOICE && !o->choices))
			return fw_errorf(err, FW_ERR_FORMAT,
					 "%s: plugin '%s' option %d is malformed", path, d->name, i);
		if (!option_name_ok(o->name))
			return fw_errorf(err, FW_ERR_FORMAT,
					 "%s: plugin '%s' option '%s': names are lower case words "
					 "joined by dashes ('adam-beta1')", path, d->name, o->name);
		for (int j = 0; j < i; j++)
			if (!strcmp(d->options[j].name, o->name))
				return fw_errorf(err, FW_ERR_FORMAT,
						 "%s: plugin '%s' option '%s' is declared twice",
						 path, d->name, o->name);
	}
	/* Defaults must pass their own validation. */
	struct fw_options *opts = fw_options_new(d->options, d->n_options, d->name);
	if (!opts)
		return fw_errorf(err, FW_ERR_NOMEM, "%s: out of memory", path);
	for (int i = 0; i < d->n_options; i++) {
		struct fw_err e = { 0 };
		if (d->options[i].def &&
		    fw_options_set(opts, d->options[i].name, d->options[i].def, &e) != FW_OK) {
			fw_options_free(opts);
			if (e.status == FW_ERR_NOMEM)
				return fw_errorf(err, FW_ERR_NOMEM, "%s: out of memory", path);
			return fw_errorf(err, FW_ERR_FORMAT, "%s: bad default: %s", path, e.msg);
		}
	}
	fw_options_free(opts);
	return FW_OK;
}

enum fw_status fw_plugin_check(const struct fw_plugin *d, const char *path, int expect_kind,
			       struct fw_err *err)
{
	struct fw_plugin dc;
	union fw_any_iface ic;
	enum fw_status s = read_descriptor(d, path, &dc, &ic, err);
	return s != FW_OK ? s : check_read(&dc, path, expect_kind, err);
}

/* --- loading ------------------------------------------------------------------------ */

enum fw_status fw_plugin_open(const char *name_or_path, int expect_kind,
			      struct fw_loaded **out, struct fw_err *err)
{
	char *path = NULL;
	bool by_path = is_so_path(name_or_path);
	enum fw_status s = fw_plugin_resolve(name_or_path, &path, err);
	if (s != FW_OK)
		return s;

	/* dlopen of a non-ELF file or one with missing symbols fails here. */
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		const char *why = dlerror();
		s = fw_errorf(err, FW_ERR_FORMAT, "%s: cannot load plugin: %s", path,
			      why ? why : "unknown dlopen error");
		goto fail;
	}
	dlerror();
	fw_plugin_entry_fn entry = (fw_plugin_entry_fn)dlsym(h, FW_PLUGIN_ENTRY_SYMBOL);
	if (!entry) {
		s = fw_errorf(err, FW_ERR_FORMAT,
			      "%s: no '%s' symbol: not an fw plugin", path, FW_PLUGIN_ENTRY_SYMBOL);
		goto fail;      /* the handle stays open: we never dlclose */
	}
	struct fw_loaded *p = fw_calloc(1, sizeof(*p));
	if (!p) {
		s = fw_errorf(err, FW_ERR_NOMEM, "%s: out of memory", path);
		goto fail;
	}
	const struct fw_plugin *d = &p->desc_full;
	s = read_descriptor(entry(), path, &p->desc_full, &p->iface_full, err);
	if (s == FW_OK)
		s = check_read(d, path, expect_kind, err);
	if (s == FW_OK && !by_path && strcmp(d->name, name_or_path))
		s = fw_errorf(err, FW_ERR_FORMAT,
			      "%s: plugin names itself '%s', but was loaded as '%s' from its path",
			      path, d->name, name_or_path);
	struct fw_options *opts = NULL;
	if (s == FW_OK && !(opts = fw_options_new(d->options, d->n_options, d->name)))
		s = fw_errorf(err, FW_ERR_NOMEM, "%s: out of memory", path);
	if (s != FW_OK) {
		fw_free(p);
		goto fail;
	}
	p->desc = d;
	p->path = path;
	p->opts = opts;
	*out = p;
	return FW_OK;
fail:
	fw_free(path);
	return s;
}

enum fw_status fw_plugin_init(struct fw_loaded *p, const struct fw_host *host,
			      struct fw_err *err)
{
	enum fw_status s = fw_options_resolve(p->opts, err);
	if (s != FW_OK)
		return s;
	if (!p->desc->init) {
		p->initialized = true;
		return FW_OK;
	}
	struct fw_err perr = { 0 };
	fw_host_registration(true);
	s = p->desc->init(host ? host : fw_host_table(), p->opts, &p->state, &perr);
	fw_host_registration(false);
	if (s != FW_OK) {
		/* Plugins often name themselves already: do not say it twice. */
		size_t nl = strlen(p->desc->name);
		const char *msg = perr.msg[0] ? perr.msg : fw_status_str(s);
		if (!strncmp(msg, p->desc->name, nl) && msg[nl] == ':')
			msg += nl + 1 + (msg[nl + 1] == ' ');
		return fw_errorf(err, s, "%s: init failed: %s", p->desc->name, msg);
	}
	p->initialized = true;
	return FW_OK;
}

void fw_plugin_close(struct fw_loaded *p)
{
	if (!p)
		return;
	if (p->initialized && p->desc->fini)
		p->desc->fini(p->state);
	fw_options_free(p->opts);
	fw_free(p->path);
	fw_free(p);
}
