/* adapter.c - PEFT adapters in fwrun: --adapter lists, applying one through
 * the peft plugin's load/merge hooks, adapter files next to checkpoints,
 * loading a base model that lacks the adapter's tensors, and the commands
 * merge (fold an adapter into a weights file) and export-adapter (PEFT's
 * adapter_config.json + adapter_model.safetensors).
 *
 * --adapter=[NAME=]PATH[,[NAME=]PATH...] names one or more adapter files (a
 * bare PATH is named after its file, "a.h5" -> "a"); --adapter-name=NAME
 * picks the one this run applies (default: the first). Every listed adapter
 * is checked against the loaded base model (the peft plugin's check hook);
 * only the chosen one is applied. The file format is the plugin's own: this
 * file knows only the "fw_adapter" attribute that names the plugin.
 */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


#include "fwrun.h"

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
static int ini_fill(void *user, const char *section, const char *name, const char *value,
		    int line)
{
	struct config *c = user;
	if (!name)
		return 1;        /* a section line */
	(void)line;
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
	fw_rt_ini_parse(text, ini_fill, c);
	fw_free(text);
}

/* --- adapter files ----------------------------------------------------------------------- */

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
		/* P-tuning's inference model holds the prompt encoder's frozen
		 * output instead of the encoder, and only its load fills it. */
		if (inference && slots->peft && !strcmp(slots->peft->desc->name, "peft/ptuning"))
			return fw_errorf(err, FW_ERR_INVALID, "peft/ptuning: eval and generate use the "
					 "prompt encoder's output frozen from an adapter file: pass "
					 "--adapter=FILE.h5 (a run's adapter-N.h5)");
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
		if (pi->check && (st = pi->check(slots->peft->state, m, refs[i].path, err)) != FW_OK)
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

/* --- fwrun merge --------------------------------------------------------------------------------- */

/* The plugins that build BASE's model with the adapter of kind: its arch
 * (file_arch_name), the attention of its run configuration or, for an
 * imported file, the reference attention/mha, which owns no weights. */
static enum fw_status merge_plugins(const char *base, const char *kind, char *out, size_t len,
				    struct fw_err *err)
{
	char *config = NULL, *list = NULL, arch[256], attention[256] = "attention/mha";
	enum fw_status st = file_arch_name(base, arch, sizeof(arch), err);
	if (st == FW_OK && fw_rt_ckpt_read_config(base, &config, NULL) == FW_OK)
		list = fw_rt_ini_lookup(config, "run", "plugins");
	for (char *save = NULL, *p = list ? strtok_r(list, ",", &save) : NULL; p;
	     p = strtok_r(NULL, ",", &save)) {
		p += strspn(p, " ");
		if (!strncmp(p, "attention/", 10))
			snprintf(attention, sizeof(attention), "%s", p);
	}
	free(list);
	fw_free(config);
	if (st == FW_OK)
		snprintf(out, len, "--plugins=%s,%s,%s", arch, attention, kind);
	return st;
}

static const char merge_usage[] =
	"usage: fwrun merge BASE.h5 ADAPTER.h5 OUT.h5 [--dtype=f32|bf16|f16]\n"
	"BASE and ADAPTER may be run directories: the newest ckpt-N.h5 and adapter-N.h5 in them.\n"
	"Folds an adapter into the base model it was trained on with its peft plugin's merge\n"
	"(LoRA: W += scaling * B A for every adapted layer, and the adapter's biases, if it\n"
	"trained some; QLoRA: every 4-bit weight dequantized to f32 first, so OUT is all f32).\n"
	"OUT.h5 is a weights file for --load, without a peft plugin. A base with\n"
	"other tensors or other weights than the adapter's is refused. --dtype=bf16 or f16\n"
	"rounds the merged f32 weights to that dtype (nearest even), as fwrun export does.\n";

int cmd_merge(int argc, char **argv)
{
	if (argc >= 1 && (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h"))) {
		fputs(merge_usage, stdout);
		return EXIT_OK;
	}
	static const char usage[] = "merge: usage: fwrun merge BASE.h5 ADAPTER.h5 OUT.h5 "
				    "[--dtype=f32|bf16|f16]";
	const char *file[3];
	int n_file = 0;
	enum fw_dtype dt = FW_F32;
	for (int i = 0; i < argc; i++) {
		if (!strncmp(argv[i], "--dtype=", 8)) {
			if (export_dtype(argv[i] + 8, &dt) != 0)
				return fail(FW_ERR_INVALID, "merge: --dtype=%s: expected f32, bf16 or "
					    "f16", argv[i] + 8);
		} else if (!strncmp(argv[i], "--", 2) || n_file == 3) {
			return fail(FW_ERR_INVALID, "%s", usage);
		} else {
			file[n_file++] = argv[i];
		}
	}
	if (n_file != 3)
		return fail(FW_ERR_INVALID, "%s", usage);
	char base_path[4200], ad_path[4200], plugins[800], load[4300], adapter[4300];
	struct fw_err err = { 0 };
	char *kind = NULL;
	if (resolve_load(file[0], base_path, sizeof(base_path), &err) != FW_OK ||
	    resolve_adapter(file[1], ad_path, sizeof(ad_path), &err) != FW_OK ||
	    adapter_kind(ad_path, &kind, &err) != FW_OK ||
	    merge_plugins(base_path, kind, plugins, sizeof(plugins), &err) != FW_OK) {
		fw_free(kind);
		return fail(err.status, "%s", err.msg);
	}
	fw_free(kind);
	const char *out_path = file[2];
	snprintf(load, sizeof(load), "--load=%s", base_path);
	snprintf(adapter, sizeof(adapter), "--adapter=%s", ad_path);
	char *args[] = { plugins, load, adapter, "--merge-adapter" }, *pos[1];
	struct config cfg;
	struct fw_plugin_slots slots = { 0 };
	struct fw_ctx *ctx = NULL;
	struct fw_model m;
	struct fw_tensor **params = NULL, **out = NULL, *rounded = NULL;   /* --dtype copies */
	char *tok = NULL, *plain = NULL, *conf = NULL, *arch = NULL, *source = NULL;
	int np = 0, n_params = 0, n = 0, n_new, rc;
	enum fw_status st = config_load(&cfg, "eval", 4, args, true, pos, 0, &np, &err);
	for (int k = 1; st == FW_OK && k < FW_KIND_COUNT; k++)
		if (cfg.plugin[k])
			st = fw_plugin_init(cfg.plugin[k], NULL, &err);
	if (st == FW_OK) {
		/* The model at its smallest: merging needs its weights only. */
		slots = (struct fw_plugin_slots){ .arch = cfg.plugin[FW_KIND_ARCH],
						  .attention = cfg.plugin[FW_KIND_ATTENTION],
						  .peft = cfg.plugin[FW_KIND_PEFT] };
		struct fw_rt_model_spec spec = { .plugins = &slots, .batch = 1, .seq_len = 1 };
		st = (ctx = fw_ctx_new()) ? fw_rt_model_build(&spec, ctx, &m, &err) :
		     fw_errorf(&err, FW_ERR_NOMEM, "out of memory");
	}
	if (st == FW_OK && (st = fw_ctx_alloc_params(ctx)) != FW_OK)
		err = *fw_ctx_err(ctx);
	if (st == FW_OK && (n_params = fw_rt_model_params(ctx, &params)) < 0)
		st = fw_errorf(&err, FW_ERR_NOMEM, "out of memory");
	if (st == FW_OK)
		st = fw_rt_model_load_weights(base_path, params, n_params, &slots, false, &n_new,
					      &fwrun_log, &err);
	if (st == FW_OK)
		st = adapter_apply(&cfg, &slots, &m, true, &err);
	/* The output: the model's parameters but the peft plugin's own. */
	if (st == FW_OK && !(out = calloc((size_t)n_params + 1, sizeof(*out))))
		st = fw_errorf(&err, FW_ERR_NOMEM, "out of memory");
	for (int i = 0; st == FW_OK && i < n_params; i++)
		if (!(params[i]->flags & FW_FLAG_BY_PEFT))
			out[n++] = params[i];
	if (st == FW_OK && dt != FW_F32 && !(rounded = calloc((size_t)n + 1, sizeof(*rounded))))
		st = fw_errorf(&err, FW_ERR_NOMEM, "out of memory");
	for (int i = 0; st == FW_OK && rounded && i < n; i++) {
		if (out[i]->dtype != FW_F32)
			continue;
		struct fw_tensor *r = &rounded[i];
		*r = *out[i];
		r->dtype = dt;
		fw_set_contiguous_strides(r);
		if (!(r->data = malloc(fw_nbytes(r) + 1))) {
			st = fw_errorf(&err, FW_ERR_NOMEM, "out of memory");
			break;
		}
		fw_convert(r->data, dt, out[i]->data, FW_F32, fw_nelem(r));
		out[i] = r;
	}
	if (st == FW_OK) {
		fw_rt_ckpt_read_config(base_path, &conf, NULL);
		fw_h5_read_attr(base_path, "fw_arch", &arch, NULL);
		fw_h5_read_attr(base_path, "source", &source, NULL);
		fw_h5_read_attr(base_path, TOKENIZER_ATTR, &tok, NULL);
		plain = conf ? config_without_peft(conf) : NULL;
		char from[8420];          /* both paths are under 4200 bytes */
		snprintf(from, sizeof(from), "%s + %s", base_path, ad_path);
		struct fw_h5_attr attrs[5];
		int na = 0;
		attrs[na++] = (struct fw_h5_attr){ "merged_from", from };
		if (conf)
			attrs[na++] = (struct fw_h5_attr){ "config", plain ? plain : conf };
		if (tok)                /* the model's tokenizer stays with it */
			attrs[na++] = (struct fw_h5_attr){ TOKENIZER_ATTR, tok };
		if (arch)
			attrs[na++] = (struct fw_h5_attr){ "fw_arch", arch };
		if (source)
			attrs[na++] = (struct fw_h5_attr){ "source", source };
		st = fw_h5_save(out_path, out, n, attrs, na, &err);
	}
	if (st == FW_OK) {
		fprintf(stderr, "fwrun: merged %s into %s: %s (%d tensors%s)\n", ad_path, base_path,
			out_path, n, tok ? ", the tokenizer" : "");
		rc = EXIT_OK;
	} else {
		rc = fail(err.status ? err.status : st, "%s", err.msg);
	}
	fw_free(tok);
	free(plain);
	fw_free(conf);
	fw_free(arch);
	fw_free(source);
	for (int i = 0; rounded && i < n; i++)
		free(rounded[i].data);
	free(rounded);
	free(out);
	free(params);
	fw_ctx_free(ctx);
	config_free(&cfg);
	return rc;
}

/* --- fwrun export-adapter --------------------------------------------------------------------- */

static const char export_usage[] =
	"usage: fwrun export-adapter ADAPTER.h5 OUT_DIR [--base-model=NAME] [--base=BASE.h5]\n"
	"ADAPTER may be a run directory: its newest adapter-N.h5.\n"
	"Writes the adapter in Hugging Face PEFT's layout with its peft plugin's export_peft:\n"
	"OUT_DIR/adapter_config.json and OUT_DIR/adapter_model.safetensors with PEFT's key\n"
	"names (peft/lora for GPT-2: base_model.model.transformer.h.N.attn.c_attn.lora_A.weight\n"
	"(r, in), lora_B.weight (out, r); fan_in_fan_out true). --base-model fills\n"
	"base_model_name_or_path. --base names the model the adapter was trained on: the\n"
	"keys and adapter_config.json's module paths take those of the Hugging Face class\n"
	"fwrun export writes for it (a RoBERTa base: base_model.model.roberta.encoder.layer.N...;\n"
	"without --base an arch/encoder adapter is named for BERT's classes, bert.*, with one\n"
	"warning line).\n";

/* A directory this command made, with what a failed export left in it. */
static void remove_made_dir(const char *dir)
{
	DIR *d = opendir(dir);
	for (struct dirent *e; d && (e = readdir(d));) {
		char path[4400];
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
		    snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) < (int)sizeof(path))
			unlink(path);
	}
	if (d)
		closedir(d);
	rmdir(dir);
}

/* An adapter file does not record its base's arch options, so an encoder
 * adapter exported without --base takes BERT's names: one warning line. */
static void warn_encoder_names(const char *path)
{
	char *list = NULL;
	struct fw_err e = { 0 };
	if (fw_h5_read_attr(path, "base_tensors", &list, &e) == FW_OK &&
	    (!strncmp(list, "embeddings.word_embeddings.weight\t", 34) ||
	     strstr(list, "\nembeddings.word_embeddings.weight\t")))
		fprintf(stderr, "fwrun: warning: %s: an encoder adapter exported without --base takes "
			"BERT's module names (bert.*, cls.*); for a RoBERTa base give "
			"--base=BASE.h5\n", path);
	fw_free(list);
}

/* The adapter's own plugin writes it (export_peft); a directory this made
 * is removed again when that fails. */
static int export_by_plugin(const char *path, const char *dir, const char *base_model,
			    const char *base)
{
	char *kind = NULL;
	struct fw_loaded *p = NULL;
	struct fw_err err = { 0 };
	int rc;
	bool made = false;
	const struct fw_peft_i *pi = NULL;
	if (adapter_kind(path, &kind, &err) != FW_OK)
		rc = fail(err.status, "%s", err.msg);
	else if (fw_plugin_open(kind, FW_KIND_PEFT, &p, &err) != FW_OK)
		rc = fail(err.status, "%s: an adapter of '%.60s': %s", path, kind, err.msg);
	else if (!(pi = p->desc->iface) || !pi->export_peft)
		rc = fail(FW_ERR_UNSUPPORTED, "%s: %s cannot export adapters to PEFT's layout", path,
			  kind);
	else if (!(made = mkdir(dir, 0777) == 0) && errno != EEXIST)
		rc = fail(FW_ERR_IO, "%s: %s", dir, strerror(errno));
	else if (pi->export_peft(fw_host_table(), path, dir, base_model, &err) != FW_OK ||
		 (base && adapter_hf_keys(base, dir, &err) != FW_OK)) {
		rc = fail(err.status, "%s", err.msg);
		if (made)
			remove_made_dir(dir);
	} else {
		if (!base)
			warn_encoder_names(path);
		fprintf(stderr, "fwrun: exported %s (%s) to %s\n", path, kind, dir);
		rc = EXIT_OK;
	}
	if (p)
		fw_plugin_close(p);
	fw_free(kind);
	return rc;
}

int cmd_export_adapter(int argc, char **argv)
{
	const char *pos[2], *base_model = NULL, *base = NULL;
	int np = 0;
	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			fputs(export_usage, stdout);
			return EXIT_OK;
		}
		if (!strncmp(argv[i], "--base-model=", 13))
			base_model = argv[i] + 13;
		else if (!strncmp(argv[i], "--base=", 7) && argv[i][7])
			base = argv[i] + 7;
		else if (!strncmp(argv[i], "--", 2))
			return fail(FW_ERR_INVALID, "export-adapter: unknown option '%s' (only "
				   "--base-model=NAME, --base=BASE.h5)", argv[i]);
		else if (np < 2)
			pos[np++] = argv[i];
		else
			return fail(FW_ERR_INVALID, "export-adapter: unexpected argument '%s'", argv[i]);
	}
	if (np != 2)
		return fail(FW_ERR_INVALID, "export-adapter: usage: fwrun export-adapter ADAPTER.h5 "
			   "OUT_DIR [--base-model=NAME] [--base=BASE.h5]");
	char ad_buf[4200];
	struct fw_err err = { 0 };
	if (resolve_adapter(pos[0], ad_buf, sizeof(ad_buf), &err) != FW_OK)
		return fail(err.status, "%s", err.msg);
	return export_by_plugin(ad_buf, pos[1], base_model, base);
}
