/* fw/loader.h - host side of plugins: finding, loading, checking, options.
 *
 * Plugins are found by name ("attention/flash") in FW_PLUGIN_PATH (colon
 * separated), then the install directory, then the build tree; a path to a
 * .so also works. Each plugin is loaded with dlopen(RTLD_NOW | RTLD_LOCAL)
 * and checked (size, ABI, fingerprint, kind, name) before anything else in
 * it is read. Plugins are never dlclose'd: their code may have run inside
 * the OpenMP runtime.
 *
 * This header is for hosts (fwrun, tests, programs embedding fw): plugins
 * never include it (see the rule in fw/plugin.h).
 */
#ifndef FW_LOADER_H
#define FW_LOADER_H

#include "fw/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Any kind's interface, at this fw's size. */
union fw_any_iface {
	size_t size;
	struct fw_arch_i arch;
	struct fw_attention_i attention;
	struct fw_peft_i peft;
	struct fw_optim_i optim;
};

struct fw_loaded {
	/* The plugin's descriptor as this fw reads it: desc points at desc_full,
	 * whose iface points at iface_full, both copied at this fw's size from
	 * the plugin's. Members the plugin's ABI minor and sizes do not cover
	 * are NULL (0), so callers read every member without checking sizes;
	 * the size fields keep the plugin's own values. */
	const struct fw_plugin *desc;
	char *path;                  /* resolved .so path */
	struct fw_options *opts;     /* resolved options (defaults filled) */
	void *state;                 /* from init */
	bool initialized;
	struct fw_plugin desc_full;
	union fw_any_iface iface_full;
};

/* The plugins serving one model; fw_model.host_private points here so the
 * host can route linear layers, attention and embeddings while an arch builds. */
struct fw_plugin_slots {
	struct fw_loaded *arch, *attention, *peft, *optim;
};

void fw_log_set_level(enum fw_log_level level);

/* The host table every plugin receives. */
const struct fw_host *fw_host_table(void);

/* Resolves NAME ("kind/name") or a path to a .so file into path (malloc'd).
 * FW_ERR_NOT_FOUND lists the plugins that were found instead. */
enum fw_status fw_plugin_resolve(const char *name, char **path, struct fw_err *err);

/* Loads and validates one plugin; expect_kind 0 = any. */
enum fw_status fw_plugin_open(const char *name_or_path, int expect_kind,
			      struct fw_loaded **out, struct fw_err *err);
/* Runs the plugin's init with its resolved options and host (NULL = the
 * real host table; tests pass a fake one). */
enum fw_status fw_plugin_init(struct fw_loaded *p, const struct fw_host *host,
			      struct fw_err *err);
/* fini and free (the shared object stays mapped). */
void fw_plugin_close(struct fw_loaded *p);

/* Checks a descriptor as the loader does (exposed for tests): ABI version
 * and sizes, kind, name, required members, option table and defaults. */
enum fw_status fw_plugin_check(const struct fw_plugin *d, const char *path, int expect_kind,
			       struct fw_err *err);

/* Every plugin .so found on the search path, as malloc'd paths. */
enum fw_status fw_plugin_discover(char ***paths, int *n, struct fw_err *err);
void fw_plugin_paths_free(char **paths, int n);
/* The search directories in order (malloc'd strings, NULL-terminated). */
char **fw_plugin_search_dirs(void);

/* --- options ------------------------------------------------------------------- */

/* Creates option values for defs, all unset. */
struct fw_options *fw_options_new(const struct fw_option_def *defs, int n, const char *owner);
void fw_options_free(struct fw_options *o);
/* Sets one value from text; checks type, range and choices. An unknown name
 * is FW_ERR_NOT_FOUND with the nearest valid name suggested. */
enum fw_status fw_options_set(struct fw_options *o, const char *name, const char *value,
			      struct fw_err *err);
bool fw_options_has(const struct fw_options *o, const char *name);
/* Fills defaults; a required option still unset is an error. */
enum fw_status fw_options_resolve(struct fw_options *o, struct fw_err *err);
/* fw_options_count, fw_options_def, fw_options_value and fw_nearest_name
 * are in fw/plugin.h: plugins use them too. */
const char *fw_options_owner(const struct fw_options *o);

#ifdef __cplusplus
}
#endif
#endif
