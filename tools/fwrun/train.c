/* train.c - fwrun train / eval / plan: a model from plugins, the training
 * loop (accumulation, clipping, schedule), evaluation, metrics, checkpoints,
 * resume and clean interruption. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "fwrun.h"

struct session {
	struct config cfg;
	struct fw_plugin_slots slots;
	struct fw_model model;
	struct fw_ctx *ctx;
	struct fw_graph *g;           /* training (or eval-only) graph */
	struct fw_graph *eval_g;
	struct fw_rt_optim *optim;    /* training (and plan) only */
	struct fw_rt_loader train, valid;
	bool have_train, have_valid;
	bool resumed;                 /* --load restored a checkpoint's whole state */
	struct fw_tokenizer *tok;     /* NULL: token ids only */
	char load_path[4200];         /* --load resolved, or "" */
	int32_t *seg;                 /* (B, T) sequence ids of the batch, when segmented */
	struct fw_lr_schedule sched;
	int64_t B, T, accum, iters;
	int64_t step;                 /* completed optimizer steps */
	int64_t tokens;               /* tokens consumed so far */
	char run_dir[4096], save_dir[4096];
	FILE *metrics;
	struct fw_err err;
	size_t base_rss;              /* before the model: code, libraries */
};

static volatile sig_atomic_t stop_requested;

/* A /proc/self/status field in bytes ("VmRSS: %zu kB"); 0 if unknown. */
static size_t proc_status_kb(const char *format)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	size_t kb = 0;
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, format, &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb * 1024;
}

/* Resident memory of this process now. */
static size_t rss_now(void)
{
	return proc_status_kb("VmRSS: %zu kB");
}

static void on_signal(int sig)
{
	stop_requested = sig;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int64_t opt_i(const struct session *s, const char *name)
{
	return fw_opt_int(s->cfg.run, name);
}

static double opt_f(const struct session *s, const char *name)
{
	return fw_opt_float(s->cfg.run, name);
}

static const char *opt_s(const struct session *s, const char *name)
{
	return fw_opt_str(s->cfg.run, name);
}

/* --- model ------------------------------------------------------------------------ */

/* Initialises every plugin (once) and fills the slots the arch sees. */
static enum fw_status init_plugins(struct session *s, struct fw_err *err)
{
	enum fw_status st;
	for (int k = 1; k < FW_KIND_COUNT; k++)
		if (s->cfg.plugin[k] && (st = fw_plugin_init(s->cfg.plugin[k], NULL, err)) != FW_OK)
			return st;
	s->slots = (struct fw_plugin_slots){
		.arch = s->cfg.plugin[FW_KIND_ARCH], .attention = s->cfg.plugin[FW_KIND_ATTENTION],
		.peft = s->cfg.plugin[FW_KIND_PEFT], .optim = s->cfg.plugin[FW_KIND_OPTIM],
	};
	return FW_OK;
}

/* The model spec of this session: its plugins, batch shape and seed. */
static struct fw_rt_model_spec model_spec(const struct session *s,
					  const struct fw_plugin_slots *slots, bool training)
{
	return (struct fw_rt_model_spec){
		.plugins = slots, .batch = s->B, .seq_len = s->T, .training = training,
		.seed = (uint64_t)opt_i(s, "seed"),
	};
}

/* Plugins and the arch's options checked before any data is read: the
 * model built once without data and without the peft plugin (whose hooks
 * see one model per run), then thrown away. */
static enum fw_status check_model(struct session *s, bool training, struct fw_err *err)
{
	struct fw_model m;
	struct fw_plugin_slots base = s->slots;
	base.peft = NULL;
	struct fw_rt_model_spec spec = model_spec(s, &base, training);
	struct fw_ctx *ctx = fw_ctx_new();
	if (!ctx)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	enum fw_status st = fw_rt_model_build(&spec, ctx, &m, err);
	fw_ctx_free(ctx);
	return st;
}

static enum fw_status build_model(struct session *s, bool training, struct fw_err *err)
{
	s->ctx = fw_ctx_new();
	if (!s->ctx)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	struct fw_rt_model_spec spec = model_spec(s, &s->slots, training);
	spec.segmented = (s->have_train && s->train.rows.n) || (s->have_valid && s->valid.rows.n);
	enum fw_status st = fw_rt_model_build(&spec, s->ctx, &s->model, err);
	if (st != FW_OK)
		return st;
	if (spec.segmented && !(s->seg = malloc(sizeof(int32_t) * (size_t)(s->B * s->T))))
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	return FW_OK;
}

static enum fw_status build_graphs(struct session *s, bool train, struct fw_err *err)
{
	struct fw_tensor *loss = s->model.loss;
	bool need_eval = !train || *opt_s(s, "valid-data");
	if (train) {
		/* Segments exist only where the arch asked for recomputation. */
		s->g = fw_graph_new(s->ctx, &loss, 1, &(struct fw_graph_opts){
			.backward = true, .training = true, .recompute = true });
		if (!s->g)
			return fw_errorf(err, fw_ctx_err(s->ctx)->status, "graph: %s",
					 fw_ctx_err(s->ctx)->msg);
	}
	if (!need_eval)
		return FW_OK;      /* no memory for an evaluation that never runs */
	/* Scoring (eval --score-data) reads the logits too. */
	struct fw_tensor *out[2] = { loss, s->model.logits };
	bool logits = !train && *opt_s(s, "score-data") && s->model.logits;
	s->eval_g = fw_graph_new(s->ctx, out, logits ? 2 : 1, &(struct fw_graph_opts){ 0 });
	if (!s->eval_g)
		return fw_errorf(err, fw_ctx_err(s->ctx)->status, "graph: %s",
				 fw_ctx_err(s->ctx)->msg);
	return FW_OK;
}

/* The optimizer: state tensors "optim.<param>.<state>", and Megatron's two
 * groups (no weight decay on 1-D tensors). */
static enum fw_status setup_optim(struct session *s, struct fw_err *err)
{
	s->optim = fw_rt_optim_new(s->ctx, s->g, s->slots.optim, &(struct fw_rt_optim_config){
		.weight_decay = opt_f(s, "weight-decay") }, err);
	return s->optim ? FW_OK : err->status;
}

static void free_session(struct session *s)
{
	if (s->metrics)
		fclose(s->metrics);
	fw_rt_optim_free(s->optim);
	if (s->have_train)
		fw_rt_loader_close(&s->train);
	if (s->have_valid)
		fw_rt_loader_close(&s->valid);
	fw_graph_free(s->eval_g);
	fw_graph_free(s->g);
	fw_ctx_free(s->ctx);
	fw_tokenizer_free(s->tok);
	free(s->seg);
	config_free(&s->cfg);
}

/* --- checkpoints ---------------------------------------------------------------------- */

static enum fw_status save_checkpoint(struct session *s, const char *path, struct fw_err *err)
{
	struct fw_tensor **params = NULL;
	int np = fw_rt_model_params(s->ctx, &params), ns = 0;
	struct fw_tensor **state = s->optim ? fw_rt_optim_state(s->optim, &ns) : NULL;
	char *config = config_dump(&s->cfg);
	char *tok = s->tok ? fw_tokenizer_serialize(s->tok, err) : NULL;
	enum fw_status st;
	if (s->tok && !tok)
		st = err->status;
	else if (np < 0 || !config)
		st = fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	else
		st = fw_rt_ckpt_save(path, params, np, state, ns, &(struct fw_rt_ckpt_meta){
			.config = config, .tokenizer = tok, .step = s->step, .tokens = s->tokens,
			.optimizer = s->slots.optim ? s->slots.optim->desc->name : "",
			.data_epoch = s->have_train ? s->train.epoch : 0,
			.data_cursor = s->have_train ? s->train.cursor : 0,
			.seed = opt_i(s, "seed") }, err);
	fw_free(tok);
	free(config);
	free(params);
	return st;
}

/* A checkpoint restores everything; a plain weights file only the weights. */
static enum fw_status load_checkpoint(struct session *s, const char *path, bool full,
				      struct fw_err *err)
{
	struct fw_tensor **params = NULL;
	int np = fw_rt_model_params(s->ctx, &params);
	enum fw_status st;
	if (np < 0)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	bool is_ckpt;
	if ((st = fw_rt_ckpt_probe(path, &is_ckpt, err)) != FW_OK) {
		free(params);
		return st;
	}
	int n_new = 0;
	st = load_params(path, params, np, &s->slots, fw_opt_bool(s->cfg.run, "base-only"), &n_new,
			 err);
	free(params);
	if (st == FW_OK && n_new && full && !*opt_s(s, "adapter"))
		fprintf(stderr, "fwrun: %d %s tensors are not in %s: they start from their "
			"initialisation\n", n_new, s->slots.peft->desc->name, path);
	if (st != FW_OK || !is_ckpt || !full || !s->optim)
		return st;
	if (fw_opt_bool(s->cfg.run, "finetune"))
		return FW_OK;      /* weights only: step 0, fresh optimizer, data from the start */
	if (n_new)
		return fw_errorf(err, FW_ERR_INVALID,
				 "%s: this run trains %d tensors the checkpoint has no optimizer "
				 "state for; add --finetune to start from its weights", path, n_new);
	int ns;
	struct fw_tensor **state = fw_rt_optim_state(s->optim, &ns);
	if ((st = fw_h5_load(path, state, ns, err)) != FW_OK)
		return st;
	s->resumed = true;
	struct fw_rt_ckpt_meta meta = { 0 };
	if ((st = fw_rt_ckpt_read_progress(path, &meta, err)) != FW_OK)
		return st;
	s->step = meta.step;
	s->tokens = meta.tokens;
	if (s->have_train)
		fw_rt_loader_seek(&s->train, meta.data_epoch, meta.data_cursor);
	return FW_OK;
}

/* --- run directory and metrics ------------------------------------------------------------ */


/* The writer's pid if name is a temporary file fwrun writes in a run
 * directory, FINAL.tmp.PID for FINAL config.ini, ckpt-N.h5 or adapter-N.h5;
 * 0 otherwise. */
static long temp_writer(const char *name)
{
	const char *t = NULL;
	for (const char *p = strstr(name, ".tmp."); p; p = strstr(p + 1, ".tmp."))
		t = p;
	if (!t || !t[5])
		return 0;
	long pid = 0;
	for (const char *p = t + 5; *p; p++) {
		if (!isdigit((unsigned char)*p) || pid > INT_MAX / 10)
			return 0;
		pid = pid * 10 + (*p - '0');
	}
	char final[256];
	snprintf(final, sizeof(final), "%.*s", (int)(t - name), name);
	bool ours = !strcmp(final, "config.ini") || fw_rt_numbered_name(final, "ckpt-", ".h5") >= 0 ||
		    fw_rt_numbered_name(final, "adapter-", ".h5") >= 0;
	return ours && pid <= INT_MAX ? pid : 0;
}

/* Removes the temporary files of writers killed mid-write. Only those whose
 * pid no process has: a live writer keeps its file. */
static void remove_stale_temps(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	while (d && (e = readdir(d))) {
		long pid = temp_writer(e->d_name);
		if (pid <= 0 || kill((pid_t)pid, 0) == 0 || errno != ESRCH)
			continue;
		char path[4400];
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		if (unlink(path) == 0)
			fprintf(stderr, "fwrun: removed %s (left by a writer that is gone)\n", path);
		else if (errno != ENOENT)
			fprintf(stderr, "fwrun: cannot remove %s: %s\n", path, strerror(errno));
	}
	if (d)
		closedir(d);
}

/* What a directory holds of a run: whether it has any of config.ini,
 * metrics.jsonl, ckpt-N.h5 or adapter-N.h5, and its newest checkpoint (path
 * and step, -1 if none). */
static bool holds_run(const char *dir, char *newest, size_t len, long long *step)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	bool any = false;
	*step = -1;
	while (d && (e = readdir(d))) {
		const char *n = e->d_name;
		long long k = ckpt_step(n);
		any |= !strcmp(n, "config.ini") || !strcmp(n, "metrics.jsonl") || k >= 0 ||
		       fw_rt_numbered_name(n, "adapter-", ".h5") >= 0;
		if (k > *step) {
			*step = k;
			snprintf(newest, len, "%s/%s", dir, n);
		}
	}
	if (d)
		closedir(d);
	return any;
}

/* --overwrite: the previous run's files move to dir/replaced-DATE-TIME. */
static enum fw_status set_aside(const char *dir, struct fw_err *err)
{
	char aside[4200], stamp[64];
	time_t t = time(NULL);
	struct tm tm;
	localtime_r(&t, &tm);
	strftime(stamp, sizeof(stamp), "replaced-%Y%m%d-%H%M%S", &tm);
	snprintf(aside, sizeof(aside), "%s/%s", dir, stamp);
	for (int i = 2; mkdir(aside, 0777) != 0; i++) {
		if (errno != EEXIST || i > 99)
			return fw_errorf(err, FW_ERR_IO, "%s: %s", aside, strerror(errno));
		snprintf(aside, sizeof(aside), "%s/%s-%d", dir, stamp, i);
	}
	DIR *d = opendir(dir);
	struct dirent *e;
	int moved = 0;
	enum fw_status st = FW_OK;
	while (d && st == FW_OK && (e = readdir(d))) {
		const char *n = e->d_name;
		if (strcmp(n, "config.ini") && strcmp(n, "metrics.jsonl") && ckpt_step(n) < 0 &&
		    fw_rt_numbered_name(n, "adapter-", ".h5") < 0)
			continue;
		char from[4400], to[4600];
		snprintf(from, sizeof(from), "%s/%s", dir, n);
		snprintf(to, sizeof(to), "%s/%s", aside, n);
		if (rename(from, to) != 0)
			st = fw_errorf(err, FW_ERR_IO, "--overwrite: cannot move %s to %s: %s", from,
				       aside, strerror(errno));
		moved++;
	}
	if (d)
		closedir(d);
	if (st == FW_OK)
		fprintf(stderr, "fwrun: --overwrite: moved the previous run's %d files to %s\n",
			moved, aside);
	return st;
}

/* A run directory belongs to one run (docs/training.md, "Run directory"):
 * one that holds another is refused unless --overwrite sets its files aside;
 * the same run may continue there when --load resumed one of its checkpoints
 * (or when it has none yet). *event is NULL for a fresh directory, else the
 * marker metrics.jsonl gets: "resume" or "restart". */
static enum fw_status claim_run_dir(struct session *s, const char **event, struct fw_err *err)
{
	char newest[4400] = "", prev_path[4400];
	long long step = -1, step2 = -1;
	const char *dirs[2] = { s->run_dir, strcmp(s->save_dir, s->run_dir) ? s->save_dir : NULL };
	bool held = holds_run(s->run_dir, newest, sizeof(newest), &step);
	if (dirs[1]) {
		char n2[4400] = "";
		held |= holds_run(s->save_dir, n2, sizeof(n2), &step2);
		if (step2 >= 0) {      /* checkpoints live in --save */
			step = step2;
			snprintf(newest, sizeof(newest), "%s", n2);
		}
	}
	*event = NULL;
	if (!held)
		return FW_OK;
	if (fw_opt_bool(s->cfg.run, "overwrite")) {
		enum fw_status st = set_aside(s->run_dir, err);
		if (st == FW_OK && dirs[1])
			st = set_aside(s->save_dir, err);
		return st;
	}
	/* Its configuration: config.ini, else its newest checkpoint's. */
	char *prev = NULL, *here = config_dump(&s->cfg);
	snprintf(prev_path, sizeof(prev_path), "%s/config.ini", s->run_dir);
	struct fw_err e = { 0 };
	size_t n;
	prev = fw_rt_read_file(prev_path, &n, &e);
	if (!prev && step >= 0) {
		char *attr = NULL;
		if (fw_rt_ckpt_read_config(newest, &attr, NULL) == FW_OK) {
			prev = strdup(attr);
			snprintf(prev_path, sizeof(prev_path), "%s", newest);
		}
		fw_free(attr);
	}
	char why[700] = "";
	enum fw_status st = FW_OK;
	if (!here) {
		st = fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	} else if (prev && !config_same_run(prev, here, prev_path, "this run", why, sizeof(why))) {
		st = fw_errorf(err, FW_ERR_INVALID,
			       "%s holds another run (%s); choose another --run-dir, resume that "
			       "run with its configuration, or pass --overwrite to set its files "
			       "aside", s->run_dir, why);
	} else if (step >= 0 && !s->resumed) {
		st = fw_errorf(err, FW_ERR_INVALID,
			       "%s already holds this run's checkpoints (the newest %s); resume "
			       "it with --load=%s, or pass --overwrite to set its files aside",
			       s->run_dir, newest, dirs[1] ? s->save_dir : s->run_dir);
	} else if (step > s->step) {
		st = fw_errorf(err, FW_ERR_INVALID,
			       "%s holds checkpoints past step %lld, which this run resumes from "
			       "(%s): checkpoints are never overwritten; resume from the newest "
			       "(--load=%s) or pass --overwrite", s->run_dir, (long long)s->step,
			       newest, dirs[1] ? s->save_dir : s->run_dir);
	} else {
		*event = s->resumed ? "resume" : "restart";
	}
	free(prev);
	free(here);
	return st;
}

/* {"type": "marker", ...}: where metrics.jsonl's records of another start of
 * the same run begin. */
static void write_marker(struct session *s, const char *event)
{
	json_t *m = json_pack("{s:s, s:s, s:I, s:I, s:s}", "type", "marker", "event", event,
			      "step", (json_int_t)s->step, "tokens", (json_int_t)s->tokens,
			      "load", s->load_path);
	char *text = m ? json_dumps(m, JSON_PRESERVE_ORDER) : NULL;
	if (text) {
		fprintf(s->metrics, "%s\n", text);
		fflush(s->metrics);
	}
	free(text);
	json_decref(m);
}

static enum fw_status open_run_dir(struct session *s, struct fw_err *err)
{
	const char *rd = opt_s(s, "run-dir");
	if (*rd) {
		snprintf(s->run_dir, sizeof(s->run_dir), "%s", rd);
	} else {
		time_t t = time(NULL);
		struct tm tm;
		localtime_r(&t, &tm);
		strftime(s->run_dir, sizeof(s->run_dir), "runs/%Y%m%d-%H%M%S", &tm);
	}
	const char *sv = opt_s(s, "save");
	snprintf(s->save_dir, sizeof(s->save_dir), "%s", *sv ? sv : s->run_dir);
	enum fw_status st = fw_dir_make(s->run_dir, err);
	if (st == FW_OK)
		st = fw_dir_make(s->save_dir, err);
	if (st != FW_OK)
		return st;
	remove_stale_temps(s->run_dir);
	if (strcmp(s->save_dir, s->run_dir))
		remove_stale_temps(s->save_dir);
	const char *event;
	if ((st = claim_run_dir(s, &event, err)) != FW_OK)
		return st;
	char path[4200];
	char *config = config_dump(&s->cfg);
	if (!config)
		return fw_errorf(err, FW_ERR_NOMEM, "out of memory");
	snprintf(path, sizeof(path), "%s/config.ini", s->run_dir);
	st = fw_file_write_atomic(path, config, strlen(config), err);
	free(config);
	if (st != FW_OK)
		return st;
	snprintf(path, sizeof(path), "%s/metrics.jsonl", s->run_dir);
	s->metrics = fopen(path, "a");
	if (!s->metrics)
		return fw_errorf(err, FW_ERR_IO, "%s: %s", path, strerror(errno));
	if (event) {
		write_marker(s, event);
		fprintf(stderr, "fwrun: %s this run in %s at step %lld; metrics.jsonl goes on after "
			"a marker record\n", strcmp(event, "resume") ? "restarting" : "resuming", s->run_dir, (long long)s->step);
	}
	return FW_OK;
}

/* --- training ----------------------------------------------------------------------------- */

static int64_t model_vocab(const struct session *s)
{
	const struct fw_tensor *lg = s->model.logits;
	return lg ? lg->ne[lg->ndim - 1] : 65536;
}

/* Mean loss of the first n validation micro-batches (fw_rt_evaluate). */
static struct fw_rt_eval eval_of(struct session *s, int64_t n)
{
	return (struct fw_rt_eval){
		.m = &s->model, .g = s->eval_g, .data = s->have_valid ? &s->valid : NULL,
		.seg = s->seg, .n = n,
		.per_token = fw_opt_bool(s->cfg.run, "calculate-per-token-loss"),
	};
}

static enum fw_status checkpoint_now(struct session *s, struct fw_err *err)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/ckpt-%08lld.h5", s->save_dir, (long long)s->step);
	struct stat fs;
	if (stat(path, &fs) == 0)
		return fw_errorf(err, FW_ERR_INVALID, "%s exists: checkpoints are never overwritten",
				 path);
	enum fw_status st = save_checkpoint(s, path, err);
	if (st == FW_OK)
		fprintf(stderr, "fwrun: saved %s\n", path);
	if (st == FW_OK)          /* adapter-only file next to it */
		st = adapter_save(&s->slots, &s->model, s->save_dir, s->step, err);
	return st;
}

/* The steps since the last log line: their mean loss and gradient norm,
 * and their tokens and time for the throughput. */
struct interval {
	double loss, norm, t0;
	int64_t steps, tokens;
};

static void progress(const struct session *s, struct interval *iv, int64_t first_step,
		     double lr, double now, double elapsed)
{
	bool tty = isatty(fileno(stderr));
	int64_t done = s->step - first_step;
	double eta = done > 0 ? elapsed / (double)done * (double)(s->iters - s->step) : 0;
	bool line = s->step % opt_i(s, "log-interval") == 0 || s->step == s->iters;
	if (!tty && !line)
		return;
	double n = iv->steps ? (double)iv->steps : 1, dt = now - iv->t0;
	double loss = iv->loss / n, norm = iv->norm / n;
	double tps = dt > 0 ? (double)iv->tokens / dt : 0;
	if (tty)
		fprintf(stderr, "\r\033[Kstep %lld/%lld  loss %.4f  grad norm %.3f  lr %.3e  "
			"%.0f tok/s  ETA %.0fs", (long long)s->step, (long long)s->iters, loss, norm,
			lr, tps, eta);
	else
		fprintf(stderr, "step %lld/%lld loss %.6f grad_norm %.4f lr %.6e tokens/s %.0f "
			"eta_s %.0f\n", (long long)s->step, (long long)s->iters, loss, norm, lr, tps,
			eta);
	if (tty && s->step == s->iters)
		fputc('\n', stderr);
	if (line)
		*iv = (struct interval){ .t0 = now };
}

/* What fwrun does between the trainer's steps: metrics.jsonl, the progress
 * line, and SIGINT/SIGTERM mapped to stopping after the step (and its save). */
struct train_log {
	struct session *s;
	struct interval iv;
	int64_t first_step;
	double t0;
};

static enum fw_rt_action on_step(void *user, const struct fw_rt_step_info *in)
{
	struct train_log *tl = user;
	struct session *s = tl->s;
	double tps = in->elapsed_s > 0 ? (double)in->run_tokens / in->elapsed_s : 0;
	fprintf(s->metrics,
		"{\"type\": \"train\", \"step\": %lld, \"loss\": %.9g, \"lr\": %.17g, "
		"\"grad_norm\": %.9g, "
		"\"loss_scale\": 1, \"tokens\": %lld, \"tokens_per_s\": %.1f, \"elapsed_s\": %.3f}\n",
		(long long)in->step, in->loss, in->lr, in->grad_norm, (long long)in->tokens, tps,
		in->elapsed_s);
	fflush(s->metrics);
	tl->iv.loss += in->loss;
	tl->iv.norm += in->grad_norm;
	tl->iv.steps++;
	tl->iv.tokens += in->step_tokens;
	s->step = in->step;
	s->tokens = in->tokens;
	progress(s, &tl->iv, tl->first_step, in->lr, tl->t0 + in->elapsed_s, in->elapsed_s);
	return stop_requested ? FW_RT_STOP : FW_RT_CONTINUE;
}

static enum fw_rt_action on_eval(void *user, int64_t step, double vl)
{
	struct train_log *tl = user;
	struct session *s = tl->s;
	if (isfinite(vl)) {
		fprintf(s->metrics, "{\"type\": \"eval\", \"step\": %lld, \"eval_loss\": %.9g}\n",
			(long long)step, vl);
		fflush(s->metrics);
		fprintf(stderr, "%sstep %lld: eval loss %.4f\n",
			isatty(fileno(stderr)) && step != s->iters ? "\n" : "", (long long)step, vl);
	}
	return stop_requested ? FW_RT_STOP : FW_RT_CONTINUE;
}

static enum fw_status on_save(void *user, int64_t step, struct fw_err *err)
{
	struct train_log *tl = user;
	tl->s->step = step;
	return checkpoint_now(tl->s, err);
}

static enum fw_status train_loop(struct session *s, struct fw_err *err)
{
	int64_t gbs = opt_i(s, "global-batch-size");
	if (gbs == 0)
		gbs = s->B;
	if (gbs % s->B)
		return fw_errorf(err, FW_ERR_INVALID,
				 "--global-batch-size %lld is not a multiple of --micro-batch-size %lld",
				 (long long)gbs, (long long)s->B);
	s->accum = gbs / s->B;
	struct train_log tl = { .s = s, .first_step = s->step, .t0 = now_s() };
	tl.iv.t0 = tl.t0;
	struct fw_rt_trainer t = {
		.m = &s->model, .g = s->g, .optim = s->optim, .plugins = &s->slots,
		.data = &s->train, .data_label = opt_s(s, "data"), .seg = s->seg,
		.sched = s->sched, .iters = s->iters, .accum = s->accum,
		.clip = opt_f(s, "clip-grad"), .drop_last = fw_opt_bool(s->cfg.run, "drop-last"),
		.per_token = fw_opt_bool(s->cfg.run, "calculate-per-token-loss"),
		.eval_every = opt_i(s, "eval-interval"), .save_every = opt_i(s, "save-interval"),
		.eval = eval_of(s, opt_i(s, "eval-iters")),
		.hooks = { .on_step = on_step, .on_eval = on_eval, .on_save = on_save, .user = &tl },
		.step = s->step, .tokens = s->tokens,
	};
	bool stopped = false;
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	enum fw_status st = fw_rt_train(&t, &stopped, err);
	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	s->step = t.step;
	s->tokens = t.tokens;
	if (st == FW_OK && stopped)
		fprintf(stderr, "fwrun: %s after step %lld; resume with --load=%s\n",
			stop_requested == SIGINT ? "interrupted" : "terminated",
			(long long)s->step, s->save_dir);
	return st;
}

static void set_schedule(struct session *s)
{
	s->iters = opt_i(s, "train-iters");
	int64_t decay = opt_i(s, "lr-decay-iters");
	if (decay == 0)
		decay = s->iters;
	int64_t warmup = opt_i(s, "lr-warmup-iters");
	double frac = opt_f(s, "lr-warmup-fraction");
	if (frac > 0)
		warmup = (int64_t)(frac * (double)decay);
	const char *style = opt_s(s, "lr-decay-style"), *wsd = opt_s(s, "lr-wsd-decay-style");
	s->sched = (struct fw_lr_schedule){
		.max_lr = opt_f(s, "lr"), .min_lr = opt_f(s, "min-lr"),
		.init_lr = opt_f(s, "lr-warmup-init"), .warmup = warmup, .decay = decay,
		.wsd_decay = opt_i(s, "lr-wsd-decay-iters"),
	};
	/* both are choice options with these names: parsed, they cannot fail */
	fw_lr_style_parse(style, &s->sched.style, NULL);
	fw_wsd_style_parse(wsd, &s->sched.wsd_style, NULL);
}

static const char train_usage[] =
	"usage: fwrun train --plugins=arch/X,optim/Y[,attention/Z,peft/W] --data=SHARDS [options]\n"
	"Trains a model; every option is listed by 'fwrun list' and 'fwrun train --help --plugins=...'.\n";


/* --load, the tokenizer, then the data: train reads --data (and
 * --valid-data), eval --valid-data (or --data). */
/* What session_open does with --data / --valid-data. */
enum data_use { DATA_NONE, DATA_REQUIRED, DATA_IF_GIVEN };

static enum fw_status open_datasets(struct session *s, bool train, enum data_use use,
				    struct fw_err *err)
{
	enum fw_status st;
	const char *load = opt_s(s, "load");
	if (*load && (st = resolve_load(load, s->load_path, sizeof(s->load_path), err)) != FW_OK)
		return st;
	s->tok = run_tokenizer(s->cfg.run, s->load_path, err);
	if (err->status)
		return err->status;
	const char *data = opt_s(s, "data"), *valid = opt_s(s, "valid-data");
	if (use == DATA_IF_GIVEN && !*data && !*valid)
		return FW_OK;
	if (train && !*data)
		return fw_errorf(err, FW_ERR_INVALID, "train needs --data=FILE[,...] (token shards, "
				 "text or JSONL)");
	if (!train && !*valid && !*data && !*opt_s(s, "score-data"))
		return fw_errorf(err, FW_ERR_INVALID, "eval needs --load=CKPT and "
				 "--valid-data=FILE[,...] or --score-data=FILE.jsonl");
	st = FW_OK;
	struct fw_rt_data_config dc = {
		.format = opt_s(s, "data-format"), .packed = !strcmp(opt_s(s, "packing"), "packed"),
		.truncate = !strcmp(opt_s(s, "too-long"), "truncate"),
		.chatml = !strcmp(opt_s(s, "chat-template"), "chatml"),
		.max_bad = opt_i(s, "max-bad-records"), .seed = (uint64_t)opt_i(s, "seed"),
		.B = s->B, .T = s->T,
	};
	if (train) {
		s->have_train = true;
		dc.shuffle = fw_opt_bool(s->cfg.run, "shuffle");
		st = fw_rt_dataset_open(&s->train, &dc, data, "data", s->tok, &fwrun_log, err);
		if (st != FW_OK)
			return st;
	}
	if (*valid || (!train && *data)) {
		s->have_valid = true;
		dc.shuffle = false;
		st = fw_rt_dataset_open(&s->valid, &dc, *valid ? valid : data,
					*valid ? "valid-data" : "data", s->tok, &fwrun_log, err);
	}
	return st;
}

static int session_open(struct session *s, const char *cmd, int argc, char **argv, bool train,
			enum data_use use, int *rc)
{
	char *pos[4];
	int np = 0;
	enum fw_status st;
	memset(s, 0, sizeof(*s));
	if (config_load(&s->cfg, cmd, argc, argv, true, pos, 0, &np, &s->err) != FW_OK) {
		*rc = die(s->err.status == FW_ERR_NOMEM || s->err.status == FW_ERR_IO ||
			  s->err.status == FW_ERR_FORMAT || s->err.status == FW_ERR_UNSUPPORTED ?
			  EXIT_RUNTIME : EXIT_USAGE, "%s", s->err.msg);
		return -1;
	}
	int threads = (int)opt_i(s, "threads");
	if (threads > 0)
		fw_set_num_threads(threads);
	s->base_rss = rss_now();
	s->B = opt_i(s, "micro-batch-size");
	s->T = opt_i(s, "seq-length");
	if (init_plugins(s, &s->err) != FW_OK || check_model(s, train, &s->err) != FW_OK) {
		*rc = die(s->err.status == FW_ERR_INVALID ? EXIT_USAGE : EXIT_RUNTIME, "%s",
			  s->err.msg);
		return -1;
	}
	if (use != DATA_NONE && (st = open_datasets(s, train, use, &s->err)) != FW_OK) {
		*rc = die(st == FW_ERR_INVALID ? EXIT_USAGE : EXIT_RUNTIME, "%s", s->err.msg);
		return -1;
	}
	if (build_model(s, train, &s->err) != FW_OK || build_graphs(s, train, &s->err) != FW_OK ||
	    (s->have_train && fw_rt_loader_check_vocab(&s->train, s->tok, model_vocab(s), &s->err)) ||
	    (s->have_valid && fw_rt_loader_check_vocab(&s->valid, s->tok, model_vocab(s), &s->err))) {
		/* INVALID: flags that cannot make this model (sizes, --seq-length) */
		*rc = die(s->err.status == FW_ERR_INVALID ? EXIT_USAGE : EXIT_RUNTIME, "%s",
			  s->err.msg);
		return -1;
	}
	return 0;
}

/* What came from --load's checkpoint and which options do nothing, said
 * once the command has everything it needs, so that an error stays one line. */
static void session_ready(struct session *s, const char *cmd, int argc, char **argv)
{
	config_report(&s->cfg);
	warn_unused_options(&s->cfg, cmd, argc, argv);
}

int cmd_train(int argc, char **argv)
{
	struct session s;
	int rc = EXIT_RUNTIME;
	if (wants_help(argc, argv))
		return command_help("train", train_usage, argc, argv);
	if (session_open(&s, "train", argc, argv, true, DATA_REQUIRED, &rc) != 0)
		goto out;
	set_schedule(&s);
	uint64_t seed = (uint64_t)opt_i(&s, "seed");
	if (setup_optim(&s, &s.err) != FW_OK || fw_ctx_init_params(s.ctx, seed) != FW_OK) {
		rc = die(EXIT_RUNTIME, "%s", s.err.msg[0] ? s.err.msg : fw_ctx_err(s.ctx)->msg);
		goto out;
	}
	if (*s.load_path) {
		if (load_checkpoint(&s, s.load_path, true, &s.err) != FW_OK ||
		    adapter_apply(&s.cfg, &s.slots, &s.model, false, &s.err) != FW_OK) {
			rc = die(EXIT_RUNTIME, "%s", s.err.msg);
			goto out;
		}
		fprintf(stderr, "fwrun: loaded %s at step %lld\n", s.load_path, (long long)s.step);
	} else if (adapter_apply(&s.cfg, &s.slots, &s.model, false, &s.err) != FW_OK) {
		rc = die(EXIT_RUNTIME, "%s", s.err.msg);   /* --adapter on a fresh model */
		goto out;
	}
	session_ready(&s, "train", argc, argv);
	if (open_run_dir(&s, &s.err) != FW_OK) {
		rc = die(s.err.status == FW_ERR_INVALID ? EXIT_USAGE : EXIT_RUNTIME, "%s", s.err.msg);
		goto out;
	}
	struct fw_memory_report mr;
	fw_graph_memory(s.g, &mr);
	fprintf(stderr, "fwrun: %lld parameters, %lld trainable (%.2f%%); run directory %s\n",
		(long long)mr.n_params, (long long)mr.n_trainable,
		mr.n_params ? 100.0 * (double)mr.n_trainable / (double)mr.n_params : 0.0, s.run_dir);
	if (train_loop(&s, &s.err) != FW_OK) {
		rc = die(EXIT_RUNTIME, "%s", s.err.msg);
		goto out;
	}
	/* VmHWM, not getrusage's ru_maxrss, which keeps the peak of the process
	 * that exec'd fwrun (a Python test harness, say). */
	fprintf(stderr, "fwrun: peak memory (RSS) %.1f MiB; planned %.1f MiB\n",
		proc_status_kb("VmHWM: %zu kB") / 1048576.0, mr.total / 1048576.0);
	rc = EXIT_OK;
out:
	free_session(&s);
	return rc;
}

static const char eval_usage[] =
	"usage: fwrun eval --plugins=arch/X[,...] --load=CKPT [--valid-data=FILES [--eval-iters=N]]\n"
	"                  [--score-data=FILE.jsonl]\n"
	"Prints one JSON object on stdout: {\"eval_loss\", \"perplexity\", \"eval_iters\", \"tokens\"}\n"
	"for --valid-data, and the scores of --score-data's prompt/response and multiple-choice\n"
	"records (docs/training.md, \"Eval\").\n";

/* Scoring needs a tokenizer with an EOS token and the logits. */
static enum fw_status eval_can_score(struct session *s, struct fw_err *err)
{
	if (!s->tok)
		return fw_errorf(err, FW_ERR_INVALID, "--score-data needs a tokenizer: a checkpoint "
				 "that stores one, or --tokenizer=byte (or gpt2 with --vocab-file "
				 "and --merge-file)");
	if (fw_tokenizer_eos(s->tok) < 0)
		return fw_errorf(err, FW_ERR_INVALID, "the %s tokenizer has no EOS token "
				 "(<|endoftext|>) to end responses with", fw_tokenizer_name(s->tok));
	struct fw_rt_loader none = { 0 };
	enum fw_status st = fw_rt_loader_check_vocab(&none, s->tok, model_vocab(s), err);
	if (st != FW_OK)
		return st;
	if (!s->model.logits)
		return fw_errorf(err, FW_ERR_UNSUPPORTED, "%s gives no logits to score with",
				 s->slots.arch->desc->name);
	return FW_OK;
}

static void put_json_num(double x)
{
	if (isfinite(x))
		printf("%.9g", x);
	else
		fputs("null", stdout);
}

int cmd_eval(int argc, char **argv)
{
	struct session s;
	int rc = EXIT_RUNTIME;
	char *scores = NULL;
	if (wants_help(argc, argv))
		return command_help("eval", eval_usage, argc, argv);
	if (session_open(&s, "eval", argc, argv, false, DATA_REQUIRED, &rc) != 0)
		goto out;
	const char *score = opt_s(&s, "score-data");
	if (!*s.load_path) {
		rc = die(EXIT_USAGE, "eval needs --load=CKPT and --valid-data=FILE[,...] or "
			 "--score-data=FILE.jsonl");
		goto out;
	}
	if (*score && eval_can_score(&s, &s.err) != FW_OK) {
		rc = die(s.err.status == FW_ERR_INVALID ? EXIT_USAGE : EXIT_RUNTIME, "%s", s.err.msg);
		goto out;
	}
	if (load_checkpoint(&s, s.load_path, false, &s.err) != FW_OK ||
	    adapter_apply(&s.cfg, &s.slots, &s.model, true, &s.err) != FW_OK) {
		rc = die(EXIT_RUNTIME, "%s", s.err.msg);
		goto out;
	}
	session_ready(&s, "eval", argc, argv);
	double loss = NAN;
	double stats[2] = { 0, NAN };
	int64_t iters = opt_i(&s, "eval-iters");
	if (s.have_valid && (iters == 0 || iters > s.valid.n_micro))
		iters = s.valid.n_micro;          /* the whole validation set, once */
	struct fw_rt_eval ev = eval_of(&s, iters);
	if (s.have_valid && fw_rt_evaluate(&ev, &loss, stats, &s.err) != FW_OK) {
		rc = die(EXIT_RUNTIME, "%s", s.err.msg);
		goto out;
	}
	if (*score && score_file(score, s.cfg.run, s.tok, &s.model, s.eval_g,
				 &scores, &s.err) != FW_OK) {
		rc = die(EXIT_RUNTIME, "%s", s.err.msg);
		goto out;
	}
	putchar('{');
	if (s.have_valid) {
		fputs("\"eval_loss\": ", stdout);
		put_json_num(loss);
		fputs(", \"perplexity\": ", stdout);
		put_json_num(exp(loss));
		printf(", \"eval_iters\": %lld, \"tokens\": %lld, \"unigram_loss\": ", (long long)iters,
		       (long long)stats[0]);
		put_json_num(stats[1]);
		fputs(scores ? ", " : "", stdout);
	}
	printf("%s}\n", scores ? scores : "");
	rc = EXIT_OK;
out:
	free(scores);
	free_session(&s);
	return rc;
}

static const char plan_usage[] =
	"usage: fwrun plan --plugins=arch/X,optim/Y[,...] [options]\n"
	"Builds the model and its memory plan without training and prints the bytes per category.\n";

static void plan_row(const char *name, double planned, const char *rule, double rule_bytes)
{
	printf("  %-12s %10.2f MiB", name, planned / 1048576.0);
	if (rule)
		printf("   %-26s %10.2f MiB  %+6.1f%%", rule, rule_bytes / 1048576.0,
		       rule_bytes > 0 ? 100.0 * (planned - rule_bytes) / rule_bytes : 0.0);
	printf("\n");
}

int cmd_plan(int argc, char **argv)
{
	struct session s;
	int rc = EXIT_RUNTIME;
	if (wants_help(argc, argv))
		return command_help("plan", plan_usage, argc, argv);
	if (session_open(&s, "plan", argc, argv, true, DATA_IF_GIVEN, &rc) != 0)
		goto out;
	if (s.slots.optim && setup_optim(&s, &s.err) != FW_OK) {
		rc = die(EXIT_RUNTIME, "%s", s.err.msg);
		goto out;
	}
	session_ready(&s, "plan", argc, argv);
	struct fw_memory_report mr, me = { 0 };
	fw_graph_memory(s.g, &mr);
	if (s.eval_g)
		fw_graph_memory(s.eval_g, &me);
	double P = (double)mr.n_params, Tr = (double)mr.n_trainable;
	int n_state = s.optim ? fw_rt_optim_n_state(s.optim) : 0;
	printf("parameters: %lld total, %lld trainable (%.2f%%)\n", (long long)mr.n_params,
	       (long long)mr.n_trainable, P > 0 ? 100.0 * Tr / P : 0.0);
	printf("memory plan for training, f32, micro-batch %lld x %lld tokens, from the real "
	       "graph:\n", (long long)s.B, (long long)s.T);
	printf("  %-12s %14s   %-26s %14s  %7s\n", "category", "planned", "rule of thumb", "",
	       "diff");
	plan_row("weights", (double)mr.bytes[FW_MEM_WEIGHTS], "4 B/param (fp32)", 4 * P);
	plan_row("gradients", (double)mr.bytes[FW_MEM_GRADIENTS], "4 B/trainable param", 4 * Tr);
	char rule[64];
	snprintf(rule, sizeof(rule), "%d x 4 B/trainable param", n_state);
	plan_row("optimizer", (double)mr.bytes[FW_MEM_OPTIMIZER], rule, 4.0 * n_state * Tr);
	plan_row("activations", (double)mr.bytes[FW_MEM_ACTIVATIONS], NULL, 0);
	if (s.eval_g)
		plan_row("eval acts", (double)me.bytes[FW_MEM_ACTIVATIONS], NULL, 0);
	plan_row("inputs", (double)mr.bytes[FW_MEM_INPUTS], NULL, 0);
	plan_row("workspace", (double)(mr.bytes[FW_MEM_WORKSPACE] + me.bytes[FW_MEM_WORKSPACE]),
		 NULL, 0);
	double total = (double)mr.total + (double)me.bytes[FW_MEM_ACTIVATIONS] +
		       (double)me.bytes[FW_MEM_WORKSPACE];
	plan_row("total", total, "16 B/trainable+4 B/frozen", 16 * Tr + 4 * (P - Tr));
	plan_row("process", (double)s.base_rss, NULL, 0);
	printf("  %-12s %10.1f MiB   (plan + process; compare with 'fwrun train's peak RSS)\n",
	       "expected", (total + (double)s.base_rss) / 1048576.0);
	printf("rules of thumb (docs): fp32 weights 4 B/param = %.1f MiB, fp16/bf16 2 B/param = "
	       "%.1f MiB;\nmixed-precision Adam 16-20 B/param = %.1f-%.1f MiB (fw keeps no fp16 "
	       "copy: %.0f B/trainable param here).\n", 4 * P / 1048576.0, 2 * P / 1048576.0,
	       16 * P / 1048576.0, 20 * P / 1048576.0, Tr > 0 ? (4.0 + 4 + 4.0 * n_state) : 0);
	printf("activations without reuse would take %.1f MiB (the planner shares buffers "
	       "whose lifetimes do not overlap)\n", mr.activations_unplanned / 1048576.0);
	rc = EXIT_OK;
out:
	free_session(&s);
	return rc;
}
