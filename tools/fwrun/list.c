/* list.c - fwrun list: every plugin on the search path with its options. */
#include <stdlib.h>
#include <string.h>

#include "fwrun.h"

static void print_def(const struct fw_option_def *d)
{
	char kind[160] = "", lo[32], hi[32];
	switch (d->type) {
	case FW_OPT_BOOL: snprintf(kind, sizeof(kind), "bool"); break;
	case FW_OPT_INT:
	case FW_OPT_FLOAT:
		if (d->min <= d->max)
			snprintf(kind, sizeof(kind), "%s in [%s, %s]",
				 d->type == FW_OPT_INT ? "int" : "float",
				 num_text(d->min, lo, sizeof(lo)), num_text(d->max, hi, sizeof(hi)));
		else
			snprintf(kind, sizeof(kind), "%s", d->type == FW_OPT_INT ? "int" : "float");
		break;
	case FW_OPT_STRING: snprintf(kind, sizeof(kind), "string"); break;
	case FW_OPT_CHOICE:
		for (int i = 0; d->choices[i]; i++) {
			strncat(kind, i ? "|" : "", sizeof(kind) - strlen(kind) - 1);
			strncat(kind, d->choices[i], sizeof(kind) - strlen(kind) - 1);
		}
		break;
	}
	printf("    --%-22s %-28s default %-10s %s\n", d->name, kind,
	       d->def ? (*d->def ? d->def : "\"\"") : "(required)", d->help ? d->help : "");
}

int cmd_list(int argc, char **argv)
{
	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			printf("usage: fwrun list\nLists every plugin found on the search path "
			       "(FW_PLUGIN_PATH, install directory, build tree) and fwrun's own "
			       "options, with types, defaults and help.\n");
			return EXIT_OK;
		}
		return fail(FW_ERR_INVALID, "list: unexpected argument '%s'", argv[i]);
	}
	char **paths = NULL;
	int n = 0, bad = 0;
	struct fw_err err = { 0 };
	char **dirs = fw_plugin_search_dirs();
	printf("search path:");
	for (int i = 0; dirs && dirs[i]; i++) {
		printf(" %s", dirs[i]);
		fw_free(dirs[i]);
	}
	fw_free(dirs);
	printf("\n\n");
	if (fw_plugin_discover(&paths, &n, &err) != FW_OK)
		return fail(err.status, "%s", err.msg);
	for (int i = 0; i < n; i++) {
		struct fw_loaded *p = NULL;
		if (fw_plugin_open(paths[i], 0, &p, &err) != FW_OK) {
			fprintf(stderr, "fwrun: skipping %s\n", err.msg);
			bad++;
			continue;
		}
		printf("%s %s  (%s)\n  %s\n", p->desc->name, p->desc->version, p->path,
		       p->desc->description ? p->desc->description : "");
		for (int k = 0; k < p->desc->n_options; k++)
			print_def(&p->desc->options[k]);
		printf("\n");
		fw_plugin_close(p);
	}
	if (n == 0)
		printf("no plugins found\n\n");
	int nd;
	const struct fw_option_def *defs = run_option_defs(&nd);
	printf("fwrun options (train, eval, plan):\n");
	for (int k = 0; k < nd; k++)
		print_def(&defs[k]);
	fw_plugin_paths_free(paths, n);
	return bad ? EXIT_RUNTIME : EXIT_OK;
}
