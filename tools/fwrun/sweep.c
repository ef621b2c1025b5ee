/* sweep.c - fwrun sweep FILE --dir=DIR: each trial of a sweep file
 * (fw/runtime/sweep.h) is a normal 'fwrun train' run, a child process of
 * this binary, in DIR/trials/ID; DIR/sweep.jsonl records each trial's end.
 * Parallel (--jobs), resumable (a rerun skips finished trials and resumes
 * interrupted ones from their newest checkpoint), with early stopping, and
 * spread over MPI ranks (--launcher=mpi) or Slurm array tasks
 * (--launcher=slurm writes the script, each task runs --trial=K). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "fwrun.h"
#include "sweepdir.h"

static const char sweep_usage[] =
	"usage: fwrun sweep FILE --dir=DIR [--jobs=N] [--threads=K] [--launcher=local|mpi|slurm]\n"
	"                   [--trial=K] [--list]\n"
	"Runs every trial of the sweep file FILE as an 'fwrun train' run in DIR/trials/ID and\n"
	"records each in DIR/sweep.jsonl. Running it again skips finished trials, resumes\n"
	"interrupted ones from their newest checkpoint and adds trials the file gained.\n"
	"  --dir=DIR        the sweep directory (required)\n"
	"  --jobs=N         trials at once (default 1); N x threads <= cores\n"
	"  --threads=K      OpenMP threads per trial (default cores / N)\n"
	"  --launcher=L     local (default); mpi: under mpirun, rank r runs trials r, r+size, ...;\n"
	"                   slurm: write DIR/sweep.sbatch, an array job of --trial=K tasks\n"
	"  --trial=K        run trial K only (what each Slurm array task does)\n"
	"  --list           print the trials (JSON lines) and run nothing\n"
	"Exit status: 0 when every trial finished (or was stopped early), 2 for a bad sweep\n"
	"file or option, 1 when the sweep could not run, else 10 + failed trials (at most 110).\n"
	"The file's format: fw/runtime/sweep.h and docs/training.md, \"Sweeps\".\n";

enum { EXIT_FAILED_TRIALS = 10 };

/* SIGINT/SIGTERM: no new trials; the running ones stop after their step
 * and save (fwrun train's own handling), and are resumed by a rerun. */
static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
	interrupted = sig;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* --- the sweep file against the plugins and options fwrun knows ----------------------- */

static bool has_option(const struct fw_options *o, const char *name)
{
	for (int i = 0; o && i < fw_options_count(o); i++)
		if (!strcmp(fw_options_def(o, i)->name, name))
			return true;
	return false;
}

struct plugin_set {
	struct fw_loaded *p[64];
	int n;
};

static struct fw_loaded *plugin_named(const struct plugin_set *ps, const char *name)
{
	for (int i = 0; i < ps->n; i++)
		if (!strcmp(ps->p[i]->desc->name, name))
			return ps->p[i];
	return NULL;
}

/* Opens the plugin name (once); exit code 2 naming line and key if it is
 * not found or not of kind (0: any). */
static int open_plugin(struct plugin_set *ps, const char *file, int line, const char *key,
		       const char *name, int kind)
{
	if (!strcmp(name, "none") || plugin_named(ps, name))
		return 0;
	struct fw_loaded *p = NULL;
	struct fw_err err = { 0 };
	if (fw_plugin_open(name, 0, &p, &err) != FW_OK)
		return fail(FW_ERR_INVALID, "%s:%d: %s: unknown plugin '%s' (%s)", file, line, key, name,
			   err.msg);
	if (kind && (int)p->desc->kind != kind) {
		int k = p->desc->kind;
		fw_plugin_close(p);
		return fail(FW_ERR_INVALID, "%s:%d: %s: '%s' is of kind %s, not %s", file, line, key,
			   name, fw_plugin_kind_name(k), fw_plugin_kind_name(kind));
	}
	if (ps->n == 64) {
		fw_plugin_close(p);
		return fail(FW_ERR_INVALID, "%s:%d: %s: more than 64 plugins", file, line, key);
	}
	ps->p[ps->n++] = p;
	return 0;
}

static int kind_of(const char *name)
{
	for (int k = 1; k < FW_KIND_COUNT; k++)
		if (!strcmp(fw_plugin_kind_name(k), name))
			return k;
	return 0;
}

/* An option known to fwrun or to one of the plugins the sweep can load. */
static int check_option(const struct plugin_set *ps, const char *file, int line,
			const char *key)
{
	int n_run;
	const struct fw_option_def *run = run_option_defs(&n_run);
	const char *names[1024];
	int n = 0;
	for (int i = 0; i < n_run; i++) {
		if (!strcmp(run[i].name, key))
			return 0;
		names[n++] = run[i].name;
	}
	for (int p = 0; p < ps->n; p++) {
		if (has_option(ps->p[p]->opts, key))
			return 0;
		for (int i = 0; i < fw_options_count(ps->p[p]->opts) && n < 1024; i++)
			names[n++] = fw_options_def(ps->p[p]->opts, i)->name;
	}
	const char *near = fw_nearest_name(key, names, n);
	return fail(FW_ERR_INVALID, "%s:%d: %s: unknown option (of fwrun and the sweep's plugins)%s%s%s",
		   file, line, key, near ? "; did you mean '" : "", near ? near : "",
		   near ? "'?" : "");
}

static int check_sweep(const struct fw_sweep *sw, struct plugin_set *ps)
{
	const char *f = sw->path;
	int rc = 0;
	for (int i = 0; i < sw->n_base && !rc; i++) {
		const struct fw_sweep_entry *e = &sw->base[i];
		if ((*e->section && strcmp(e->section, "run")) || strcmp(e->key, "plugins"))
			continue;
		char *list = strdup(e->value), *save = NULL;
		for (char *t = strtok_r(list, ", ", &save); t && !rc; t = strtok_r(NULL, ", ", &save))
			rc = open_plugin(ps, f, e->line, "plugins", t, 0);
		free(list);
	}
	for (int a = 0; a < sw->n_axes && !rc; a++)
		for (int k = 0; k < sw->axis[a].n_keys && !rc; k++) {
			const struct fw_sweep_axis *x = &sw->axis[a];
			if (strncmp(x->key[k], "plugins.", 8))
				continue;
			if (x->dist != FW_SWEEP_LIST && x->dist != FW_SWEEP_CHOICE)
				return fail(FW_ERR_INVALID, "%s:%d: %s: a plugin axis takes a list of plugins "
					   "or choice()", f, x->line[k], x->key[k]);
			for (int v = 0; v < x->n_values && !rc; v++)
				if (strcmp(x->value[k][v], "-"))
					rc = open_plugin(ps, f, x->line[k], x->key[k], x->value[k][v],
							 kind_of(x->key[k] + 8));
		}
	for (int i = 0; i < sw->n_base && !rc; i++) {
		const struct fw_sweep_entry *e = &sw->base[i];
		if (!*e->section || !strcmp(e->section, "run")) {
			rc = check_option(ps, f, e->line, e->key);
			continue;
		}
		struct fw_loaded *p = plugin_named(ps, e->section);
		if (!p)
			rc = fail(FW_ERR_INVALID, "%s:%d: %s: section [%s] names a plugin the sweep does not "
				 "load", f, e->line, e->key, e->section);
		else if (!has_option(p->opts, e->key))
			rc = fail(FW_ERR_INVALID, "%s:%d: %s: unknown option of %s", f, e->line, e->key,
				 e->section);
	}
	for (int a = 0; a < sw->n_axes && !rc; a++)
		for (int k = 0; k < sw->axis[a].n_keys && !rc; k++)
			if (strncmp(sw->axis[a].key[k], "plugins.", 8))
				rc = check_option(ps, f, sw->axis[a].line[k], sw->axis[a].key[k]);
	int line = 1;
	for (int i = 0; i < sw->n_setting; i++)
		if (!strcmp(sw->setting[i].key, "metric"))
			line = sw->setting[i].line;
	if (!rc && !strcmp(sw->metric, "eval_loss") && !fw_sweep_base_value(sw, "valid-data"))
		rc = fail(FW_ERR_INVALID, "%s:%d: metric: eval_loss needs valid-data in the base run "
			 "(or metric = loss)", f, line);
	if (!rc && sw->rule.kind != FW_SWEEP_STOP_NONE && strcmp(sw->metric, "eval_loss"))
		rc = fail(FW_ERR_INVALID, "%s:%d: early-stop: the rules decide at eval steps; they need "
			 "metric = eval_loss", f, line);
	return rc;
}

/* --- the sweep directory ------------------------------------------------------------------- */

/* DIR/sweep.ini is the sweep file the directory was made with (the latest
 * compatible one). A changed definition is refused; added trials are taken. */
static int claim_dir(const char *dir, const char *file, const struct fw_sweep *sw)
{
	struct fw_err err = { 0 };
	char path[4200];
	if (fw_dir_make(dir, &err) != FW_OK)
		return fail(err.status ? err.status : FW_ERR_IO, "%s", err.msg);
	snprintf(path, sizeof(path), "%s/trials", dir);
	if (fw_dir_make(path, &err) != FW_OK)
		return fail(err.status ? err.status : FW_ERR_IO, "%s", err.msg);
	snprintf(path, sizeof(path), "%s/sweep.ini", dir);
	size_t n;
	struct stat st;
	if (stat(path, &st) == 0) {
		struct fw_sweep old;
		if (fw_sweep_parse(path, &old, &err) != FW_OK)
			return fail(err.status ? err.status : FW_ERR_IO, "%s (the sweep directory's copy)", err.msg);
		char why[800];
		bool ok = fw_sweep_compatible(&old, sw, why, sizeof(why));
		fw_sweep_free(&old);
		if (!ok)
			return fail(FW_ERR_INVALID, "%s; %s was made by another definition (%s): use another "
				   "--dir", why, dir, path);
	}
	char *text = fw_rt_read_file(file, &n, &err);
	if (!text || fw_file_write_atomic(path, text, n, &err) != FW_OK) {
		free(text);
		return fail(err.status ? err.status : FW_ERR_IO, "%s", err.msg);
	}
	free(text);
	return 0;
}

/* One line appended with one write(2): whole even when ranks or array tasks
 * append at once. */
static int append_record(const char *dir, json_t *rec)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/sweep.jsonl", dir);
	char *text = json_dumps(rec, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
	bool ok = false;
	if (text && fd >= 0) {
		size_t len = strlen(text);
		text[len] = '\n';         /* json_dumps leaves room: overwrite the NUL */
		ok = write(fd, text, len + 1) == (ssize_t)(len + 1) && fsync(fd) == 0;
	}
	if (fd >= 0)
		close(fd);
	free(text);
	return ok ? 0 : fail(FW_ERR_IO, "%s: cannot append: %s", path, strerror(errno));
}

/* --- running trials ---------------------------------------------------------------------- */

struct running {
	struct fw_sweep_trial t;
	pid_t pid;
	double t0;
	char dir[4200];
	int64_t step, iters;
	double loss;
	int n_eval_seen;
	const char *stop_rule;        /* set when the rule stopped it */
	int64_t stop_step;
	char rule_text[200];
};

struct sweep_run {
	struct fw_sweep sw;
	const char *dir, *self;
	int threads;
	bool tty;
	int64_t total;
	/* completed trials' metric curves (median rule, ASHA replay) */
	struct run_curves *done;
	int64_t *done_index;
	int n_done;
	int failed, finished;
	int lines_drawn;
	int rank;                     /* MPI rank, -1 without MPI */
};

static int64_t config_int(const char *run_dir, const char *key, int64_t dflt)
{
	char path[4400];
	size_t n;
	snprintf(path, sizeof(path), "%s/config.ini", run_dir);
	char *text = fw_rt_read_file(path, &n, NULL);
	char *v = text ? fw_rt_ini_lookup(text, "run", key) : NULL;
	int64_t r = v ? strtoll(v, NULL, 10) : dflt;
	free(v);
	free(text);
	return r;
}

static bool has_checkpoint(const char *dir)
{
	char path[4400];
	struct fw_err err = { 0 };
	return resolve_load(dir, path, sizeof(path), &err) == FW_OK &&
	       ckpt_step(strrchr(path, '/') ? strrchr(path, '/') + 1 : path) >= 0;
}

static pid_t start_trial(struct sweep_run *r, struct running *run)
{
	char ini_path[4300], cfg[4400], rd[4400], load[4400], threads[64], log_path[4300];
	snprintf(run->dir, sizeof(run->dir), "%s/trials/%s", r->dir, run->t.id);
	struct fw_err err = { 0 };
	if (fw_dir_make(run->dir, &err) != FW_OK) {
		fail(err.status ? err.status : FW_ERR_IO, "%s", err.msg);
		return -1;
	}
	char *ini = fw_sweep_trial_ini(&r->sw, &run->t);
	snprintf(ini_path, sizeof(ini_path), "%s/trial.ini", run->dir);
	if (!ini || fw_file_write_atomic(ini_path, ini, strlen(ini), &err) != FW_OK) {
		free(ini);
		fail(FW_ERR_IO, "%s", ini ? err.msg : "out of memory");
		return -1;
	}
	free(ini);
	snprintf(cfg, sizeof(cfg), "--config=%s", ini_path);
	snprintf(rd, sizeof(rd), "--run-dir=%s", run->dir);
	snprintf(load, sizeof(load), "--load=%s", run->dir);
	snprintf(threads, sizeof(threads), "--threads=%d", r->threads);
	char *argv[] = { (char *)r->self, "train", cfg, rd, threads,
			 has_checkpoint(run->dir) ? load : NULL, NULL };
	snprintf(log_path, sizeof(log_path), "%s/train.log", run->dir);
	fflush(NULL);
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid == 0) {
		/* the trial dies with the sweep (kill -9 included); a rerun resumes it */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		int fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT, 0666);
		if (fd < 0)
			_exit(127);
		dup2(fd, 1);
		dup2(fd, 2);
		close(fd);
		char omp[32];
		snprintf(omp, sizeof(omp), "%d", r->threads);
		setenv("OMP_NUM_THREADS", omp, 1);
		execv(r->self, argv);
		_exit(127);
	}
	if (pid < 0)
		fail(FW_ERR_IO, "cannot start a trial: %s", strerror(errno));
	run->pid = pid;
	run->t0 = now_s();
	return pid;
}

/* The last "fwrun: " line of the trial's log: its error. */
static void last_error(const char *dir, char *out, size_t len)
{
	char path[4300], line[2048];
	snprintf(path, sizeof(path), "%s/train.log", dir);
	snprintf(out, len, "exited without an error line (see %.900s)", path);
	FILE *f = fopen(path, "r");
	while (f && fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = '\0';
		if (!strncmp(line, "fwrun: ", 7) && !strstr(line, "warning:") &&
		    strncmp(line, "fwrun: saved", 12) && strncmp(line, "fwrun: peak", 11))
			snprintf(out, len, "%.900s", line + 7);
	}
	if (f)
		fclose(f);
}

static json_t *params_json(const struct fw_sweep_trial *t)
{
	json_t *p = json_object();
	for (int i = 0; p && i < t->n; i++)
		json_object_set_new(p, t->key[i], t->value[i] ? json_string(t->value[i]) : json_null());
	return p;
}

/* A stopped trial's results are those up to the step the rule stopped it
 * at: the steps it ran until SIGTERM took effect are not counted. */
static void truncate_curves(struct run_curves *c, int64_t stop_step)
{
	while (stop_step >= 0 && c->n_train && c->train_step[c->n_train - 1] > stop_step)
		c->n_train--;
	while (stop_step >= 0 && c->n_eval && c->eval_step[c->n_eval - 1] > stop_step)
		c->n_eval--;
}

static void remember_done(struct sweep_run *r, int64_t index, const char *dir,
			  int64_t stop_step)
{
	struct run_curves *d = realloc(r->done, sizeof(*d) * (size_t)(r->n_done + 1));
	int64_t *ix = realloc(r->done_index, sizeof(int64_t) * (size_t)(r->n_done + 1));
	if (d)
		r->done = d;
	if (ix)
		r->done_index = ix;
	if (!d || !ix)
		return;
	curves_read(dir, &r->done[r->n_done]);
	truncate_curves(&r->done[r->n_done], stop_step);
	r->done_index[r->n_done++] = index;
}

static int finish_trial(struct sweep_run *r, struct running *run, int status,
			const struct rusage *ru)
{
	struct run_curves c;
	/* A trial the rule stopped may take the SIGTERM after its training loop,
	 * where fwrun train no longer catches it: stopped all the same. */
	bool ok = (WIFEXITED(status) && WEXITSTATUS(status) == 0) ||
		  (run->stop_rule && WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM);
	curves_read(run->dir, &c);
	int64_t last = c.n_train ? c.train_step[c.n_train - 1] : 0;
	if (run->iters <= 0)
		run->iters = config_int(run->dir, "train-iters", 0);
	if ((ok && !run->stop_rule && last < run->iters) || (!ok && interrupted)) {
		fprintf(stderr, "sweep: trial %lld/%lld %s interrupted at step %lld; the same "
			"command resumes it\n", (long long)run->t.index + 1, (long long)r->total,
			run->t.id, (long long)last);
		curves_free(&c);
		return 0;
	}
	if (ok && run->stop_rule)
		truncate_curves(&c, run->stop_step);
	const int64_t *step;
	const double *val;
	int n;
	curves_metric(&c, r->sw.metric, &step, &val, &n);
	double best = NAN, final = n ? val[n - 1] : NAN;
	int64_t best_step = -1;
	for (int i = 0; i < n; i++)
		if (isnan(best) || (r->sw.minimize ? val[i] < best : val[i] > best)) {
			best = val[i];
			best_step = step[i];
		}
	const char *st = !ok ? "failed" : run->stop_rule ? "stopped" : "done";
	char error[1024] = "";
	if (!ok && WIFSIGNALED(status))
		snprintf(error, sizeof(error), "killed by signal %d", WTERMSIG(status));
	else if (!ok)
		last_error(run->dir, error, sizeof(error));
	json_t *rec = json_pack("{s:s, s:I, s:s, s:o, s:s, s:s}", "id", run->t.id, "index",
				(json_int_t)run->t.index, "dir", run->dir + strlen(r->dir) + 1,
				"params", params_json(&run->t), "plugins", "", "status", st);
	char *plugins = fw_sweep_trial_plugins(&r->sw, &run->t);
	json_object_set_new(rec, "plugins", json_string(plugins ? plugins : ""));
	free(plugins);
	json_object_set_new(rec, "seed", run->t.seed >= 0 ? json_integer(run->t.seed) : json_null());
	json_object_set_new(rec, "config", json_integer(run->t.config));
	if (*error)
		json_object_set_new(rec, "error", json_string(error));
	if (ok && run->stop_rule) {
		json_object_set_new(rec, "rule", json_string(run->rule_text));
		json_object_set_new(rec, "stop_step", json_integer(run->stop_step));
	}
	if (r->rank >= 0)
		json_object_set_new(rec, "rank", json_integer(r->rank));
	json_object_set_new(rec, "metric", json_string(r->sw.metric));
	json_object_set_new(rec, "final", isnan(final) ? json_null() : json_real(final));
	json_object_set_new(rec, "best", isnan(best) ? json_null() : json_real(best));
	json_object_set_new(rec, "best_step", json_integer(best_step));
	json_object_set_new(rec, "steps", json_integer(c.n_train ? c.train_step[c.n_train - 1] : 0));
	json_object_set_new(rec, "time_s", json_real(round((now_s() - run->t0) * 1000) / 1000));
	json_object_set_new(rec, "peak_rss_mib", json_real(round(ru->ru_maxrss / 1024.0 * 10) / 10));
	json_object_set_new(rec, "threads", json_integer(r->threads));
	int rc = append_record(r->dir, rec);
	json_decref(rec);
	curves_free(&c);
	r->finished++;
	if (!ok)
		r->failed++;
	else
		remember_done(r, run->t.index, run->dir, run->stop_rule ? run->stop_step : -1);
	char line[1400];
	if (!ok)
		snprintf(line, sizeof(line), "failed: %s", error);
	else
		snprintf(line, sizeof(line), "%s: %s %.6g (best %.6g at step %lld) in %.1f s%s%.200s", st,
			 r->sw.metric, final, best, (long long)best_step, now_s() - run->t0,
			 run->stop_rule ? "; " : "", run->stop_rule ? run->rule_text : "");
	fprintf(stderr, "sweep: trial %lld/%lld %s %s\n", (long long)run->t.index + 1,
		(long long)r->total, run->t.id, line);
	return rc;
}

/* --- early stopping, at each new eval record of a running trial ------------------------- */

/* Whether the rule stops the trial at its k-th eval (c's first k + 1 evals). */
static bool rule_stops(struct sweep_run *r, struct running *run, const struct run_curves *c,
		       int k)
{
	const struct fw_sweep_rule *rule = &r->sw.rule;
	struct fw_sweep_curve self = { c->eval_step, c->eval_loss, k + 1 };
	bool stop = false;
	if (rule->kind == FW_SWEEP_STOP_MEDIAN) {
		struct fw_sweep_curve *done = calloc((size_t)r->n_done + 1, sizeof(*done));
		for (int i = 0; done && i < r->n_done; i++)
			done[i] = (struct fw_sweep_curve){ r->done[i].eval_step, r->done[i].eval_loss,
							   r->done[i].n_eval };
		stop = done && fw_sweep_median_stop(rule, r->sw.minimize, &self, c->eval_step[k],
						    done, r->n_done);
		free(done);
		return stop;
	}
	/* ASHA's rungs: the completed trials in the order they finished, then this one */
	struct fw_sweep_asha a;
	fw_sweep_asha_init(&a, rule, r->sw.minimize, run->iters);
	for (int i = 0; i < r->n_done; i++)
		for (int e = 0; e < r->done[i].n_eval; e++)
			fw_sweep_asha_report(&a, r->done_index[i], r->done[i].eval_step[e],
					     r->done[i].eval_loss[e]);
	for (int e = 0; e <= k; e++)
		stop = fw_sweep_asha_report(&a, run->t.index, c->eval_step[e], c->eval_loss[e]);
	fw_sweep_asha_free(&a);
	return stop;
}

static void check_rule(struct sweep_run *r, struct running *run, const struct run_curves *c,
		       int first, bool alive)
{
	const struct fw_sweep_rule *rule = &r->sw.rule;
	for (int k = first; k < c->n_eval; k++) {
		if (!rule_stops(r, run, c, k))
			continue;
		int64_t t = c->eval_step[k];
		run->stop_step = t;
		if (rule->kind == FW_SWEEP_STOP_MEDIAN)
			snprintf(run->rule_text, sizeof(run->rule_text),
				 "median: best eval_loss up to step %lld worse than the median of %d "
				 "completed trials' running means (grace %lld steps, min %d trials)",
				 (long long)t, r->n_done, (long long)rule->grace_steps,
				 rule->min_trials);
		else
			snprintf(run->rule_text, sizeof(run->rule_text),
				 "asha: eval_loss at step %lld below the top 1/%g of its rung "
				 "(first rung %lld steps)", (long long)t, rule->asha_eta,
				 (long long)rule->asha_min_steps);
		run->stop_rule = rule->kind == FW_SWEEP_STOP_MEDIAN ? "median" : "asha";
		if (alive)        /* fwrun train stops after the step and saves */
			kill(run->pid, SIGTERM);
		return;
	}
}

/* Reads the trial's metrics and applies the rule to its new evals: while it
 * runs, a stop is SIGTERM; evals read only once it ended (a trial faster than
 * the polling) are decided all the same, so that the decisions do not depend
 * on timing. */
static void poll_trial(struct sweep_run *r, struct running *run, bool running)
{
	struct run_curves c;
	if (!curves_read(run->dir, &c))
		return;
	if (run->iters <= 0)
		run->iters = config_int(run->dir, "train-iters", 0);
	if (c.n_train) {
		run->step = c.train_step[c.n_train - 1];
		run->loss = c.train_loss[c.n_train - 1];
	}
	if (c.n_eval > run->n_eval_seen) {
		if (!r->tty)
			fprintf(stderr, "sweep: trial %lld/%lld %s step %lld: eval_loss %.4f\n",
				(long long)run->t.index + 1, (long long)r->total, run->t.id,
				(long long)c.eval_step[c.n_eval - 1], c.eval_loss[c.n_eval - 1]);
		if (r->sw.rule.kind != FW_SWEEP_STOP_NONE && !run->stop_rule)
			check_rule(r, run, &c, run->n_eval_seen, running);
		run->n_eval_seen = c.n_eval;
	}
	curves_free(&c);
}

/* On a terminal, one line per running trial, redrawn in place. */
static void draw(struct sweep_run *r, struct running *runs, int n)
{
	if (!r->tty)
		return;
	if (r->lines_drawn)
		fprintf(stderr, "\033[%dA", r->lines_drawn);
	for (int i = 0; i < n; i++) {
		struct running *x = &runs[i];
		double el = now_s() - x->t0;
		double eta = x->step > 0 && x->iters > x->step ?
			     el / (double)x->step * (double)(x->iters - x->step) : 0;
		if (x->step <= 0 || x->iters <= 0)
			fprintf(stderr, "\033[K  trial %lld/%lld %s starting\n",
				(long long)x->t.index + 1, (long long)r->total, x->t.id);
		else
			fprintf(stderr, "\033[K  trial %lld/%lld %s step %lld/%lld loss %.4f ETA "
				"%.0fs\n", (long long)x->t.index + 1, (long long)r->total, x->t.id,
				(long long)x->step, (long long)x->iters, x->loss, eta);
	}
	for (int i = n; i < r->lines_drawn; i++)
		fprintf(stderr, "\033[K\n");
	r->lines_drawn = n > r->lines_drawn ? n : r->lines_drawn;
}

static void clear_drawn(struct sweep_run *r)
{
	if (r->tty && r->lines_drawn) {
		fprintf(stderr, "\033[%dA\033[J", r->lines_drawn);
		r->lines_drawn = 0;
	}
}

static int run_trials(struct sweep_run *r, const int64_t *pending, int64_t n_pending, int jobs)
{
	struct running *runs = calloc((size_t)jobs, sizeof(*runs));
	int n_run = 0, rc = 0;
	int64_t next = 0;
	if (!runs)
		return fail(FW_ERR_NOMEM, "out of memory");
	bool forwarded = false;
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	while ((next < n_pending || n_run > 0) && !rc) {
		if (interrupted && !forwarded) {   /* a terminal's ^C reached them already */
			for (int i = 0; i < n_run; i++)
				kill(runs[i].pid, SIGTERM);
			forwarded = true;
			next = n_pending;
		}
		while (n_run < jobs && next < n_pending && !rc) {
			struct running *x = &runs[n_run];
			struct fw_err err = { 0 };
			*x = (struct running){ 0 };
			if (fw_sweep_trial(&r->sw, pending[next++], &x->t, &err) != FW_OK) {
				rc = fail(err.status ? err.status : FW_ERR_IO, "%s", err.msg);
				break;
			}
			clear_drawn(r);
			fprintf(stderr, "sweep: trial %lld/%lld %s started:", (long long)x->t.index + 1,
				(long long)r->total, x->t.id);
			for (int i = 0; i < x->t.n; i++)
				fprintf(stderr, " %s=%s", x->t.key[i], x->t.value[i] ? x->t.value[i] : "-");
			if (x->t.seed >= 0)
				fprintf(stderr, " seed=%lld", (long long)x->t.seed);
			fprintf(stderr, "\n");
			if (start_trial(r, x) < 0) {
				fw_sweep_trial_free(&x->t);
				rc = EXIT_RUNTIME;
				break;
			}
			n_run++;
		}
		int status;
		struct rusage ru;
		pid_t pid = wait4(-1, &status, WNOHANG, &ru);
		if (pid > 0) {
			for (int i = 0; i < n_run; i++)
				if (runs[i].pid == pid) {
					poll_trial(r, &runs[i], false);
					clear_drawn(r);
					rc = finish_trial(r, &runs[i], status, &ru);
					fw_sweep_trial_free(&runs[i].t);
					runs[i] = runs[--n_run];
					break;
				}
			continue;
		}
		for (int i = 0; i < n_run; i++)
			poll_trial(r, &runs[i], true);
		draw(r, runs, n_run);
		usleep(200000);
	}
	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	clear_drawn(r);
	for (int i = 0; i < n_run; i++) {      /* only after an error of the sweep itself */
		kill(runs[i].pid, SIGTERM);
		waitpid(runs[i].pid, NULL, 0);
		fw_sweep_trial_free(&runs[i].t);
	}
	free(runs);
	return rc;
}

/* --- launchers -------------------------------------------------------------------------------- */

static int env_int(const char *a, const char *b, int dflt)
{
	const char *v = getenv(a);
	if (!v)
		v = getenv(b);
	return v ? atoi(v) : dflt;
}

static int write_sbatch(const struct sweep_run *r, const char *file, int jobs)
{
	char path[4300], dir[4200], abs_file[4200];
	if (!realpath(r->dir, dir) || !realpath(file, abs_file))
		return fail(FW_ERR_IO, "%s: %s", r->dir, strerror(errno));
	snprintf(path, sizeof(path), "%s/sweep.sbatch", r->dir);
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	if (!f)
		return fail(FW_ERR_NOMEM, "out of memory");
	fprintf(f, "#!/bin/bash\n"
		"# fwrun sweep %s: one array task per trial (written by --launcher=slurm)\n"
		"#SBATCH --job-name=fw-sweep\n"
		"#SBATCH --array=0-%lld%s%.0d\n"
		"#SBATCH --ntasks=1\n"
		"#SBATCH --cpus-per-task=%d\n"
		"#SBATCH --output=%s/slurm-%%A_%%a.out\n"
		"export OMP_NUM_THREADS=\"${SLURM_CPUS_PER_TASK:-%d}\"\n"
		"exec '%s' sweep '%s' --dir='%s' --trial=\"$SLURM_ARRAY_TASK_ID\" "
		"--threads=\"$OMP_NUM_THREADS\"\n",
		abs_file, (long long)r->total - 1, jobs > 1 ? "%" : "", jobs > 1 ? jobs : 0,
		r->threads, dir, r->threads, r->self, abs_file, dir);
	fclose(f);
	struct fw_err err = { 0 };
	enum fw_status st = fw_file_write_atomic(path, text, len, &err);
	free(text);
	if (st != FW_OK)
		return fail(err.status ? err.status : FW_ERR_IO, "%s", err.msg);
	chmod(path, 0755);
	fprintf(stderr, "fwrun: wrote %s (%lld array tasks); submit it with: sbatch %s\n", path,
		(long long)r->total, path);
	return EXIT_OK;
}

static int list_trials(const struct sweep_run *r)
{
	for (int64_t i = 0; i < r->total; i++) {
		struct fw_sweep_trial t;
		struct fw_err err = { 0 };
		if (fw_sweep_trial(&r->sw, i, &t, &err) != FW_OK)
			return fail(err.status ? err.status : FW_ERR_IO, "%s", err.msg);
		char *plugins = fw_sweep_trial_plugins(&r->sw, &t);
		json_t *j = json_pack("{s:I, s:s, s:I, s:o, s:o, s:s}", "index", (json_int_t)i, "id",
				      t.id, "config", (json_int_t)t.config, "seed",
				      t.seed >= 0 ? json_integer(t.seed) : json_null(), "params",
				      params_json(&t), "plugins", plugins ? plugins : "");
		char *text = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
		if (text)
			printf("%s\n", text);
		free(text);
		json_decref(j);
		free(plugins);
		fw_sweep_trial_free(&t);
	}
	return EXIT_OK;
}

/* --- the command ------------------------------------------------------------------------------ */

static const char *arg_value(const char *a, const char *name)
{
	size_t n = strlen(name);
	return !strncmp(a, name, n) && a[n] == '=' ? a + n + 1 : NULL;
}

static bool positive(const char *v, long long *out, long long min)
{
	char *end;
	*out = strtoll(v, &end, 10);
	return *v && !*end && *out >= min;
}

int cmd_sweep(int argc, char **argv)
{
	const char *file = NULL, *dir = NULL, *launcher = "local", *v;
	long long jobs = 1, threads = 0, trial = -1;
	bool list = false;
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			fputs(sweep_usage, stdout);
			return EXIT_OK;
		} else if ((v = arg_value(a, "--dir"))) {
			dir = v;
		} else if ((v = arg_value(a, "--jobs"))) {
			if (!positive(v, &jobs, 1))
				return fail(FW_ERR_INVALID, "--jobs=%s: a number of trials >= 1", v);
		} else if ((v = arg_value(a, "--threads"))) {
			if (!positive(v, &threads, 1))
				return fail(FW_ERR_INVALID, "--threads=%s: a number of threads >= 1", v);
		} else if ((v = arg_value(a, "--trial"))) {
			if (!positive(v, &trial, 0))
				return fail(FW_ERR_INVALID, "--trial=%s: a trial index >= 0", v);
		} else if ((v = arg_value(a, "--launcher"))) {
			if (strcmp(v, "local") && strcmp(v, "mpi") && strcmp(v, "slurm"))
				return fail(FW_ERR_INVALID, "--launcher=%s: local, mpi or slurm", v);
			launcher = v;
		} else if (!strcmp(a, "--list")) {
			list = true;
		} else if (a[0] == '-') {
			return fail(FW_ERR_INVALID, "sweep: unknown option '%s' (see fwrun sweep --help)", a);
		} else if (file) {
			return fail(FW_ERR_INVALID, "sweep: one sweep file, not '%s' and '%s'", file, a);
		} else {
			file = a;
		}
	}
	if (!file)
		return fail(FW_ERR_INVALID, "sweep: no sweep file (see fwrun sweep --help)");
	if (!dir && !list)
		return fail(FW_ERR_INVALID, "sweep: --dir=DIR is required");
	struct sweep_run r = { .dir = dir, .tty = isatty(2), .rank = -1 };
	struct fw_err err = { 0 };
	if (fw_sweep_parse(file, &r.sw, &err) != FW_OK)
		return fail(err.status ? err.status : FW_ERR_IO, "%s", err.msg);
	struct plugin_set ps = { .n = 0 };
	int rc = check_sweep(&r.sw, &ps);
	for (int i = 0; i < ps.n; i++)
		fw_plugin_close(ps.p[i]);
	r.total = fw_sweep_count(&r.sw);
	if (rc || list) {
		if (!rc)
			rc = list_trials(&r);
		fw_sweep_free(&r.sw);
		return rc;
	}
	if (trial >= r.total) {
		fw_sweep_free(&r.sw);
		return fail(FW_ERR_INVALID, "--trial=%lld: %s has %lld trials (0 to %lld)", trial, file,
			   (long long)r.total, (long long)r.total - 1);
	}
	/* ranks of one node share its cores */
	bool mpi = !strcmp(launcher, "mpi");
	int rank = mpi ? env_int("OMPI_COMM_WORLD_RANK", "PMI_RANK", -1) : 0;
	int size = mpi ? env_int("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", -1) : 1;
	int local = mpi ? env_int("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", 1) : 1;
	if (mpi && (rank < 0 || size < 1)) {
		fw_sweep_free(&r.sw);
		return fail(FW_ERR_INVALID, "--launcher=mpi: no MPI rank in the environment; run it "
			   "under mpirun (mpirun -np N fwrun sweep ... --launcher=mpi)");
	}
	if (mpi)
		r.rank = rank;
	int ncores = allowed_cpus() / (local > 0 ? local : 1);
	if (ncores < 1)
		ncores = 1;
	r.threads = threads ? (int)threads : (int)(ncores / jobs > 0 ? ncores / jobs : 1);
	if (jobs * r.threads > ncores && strcmp(launcher, "slurm")) {
		fw_sweep_free(&r.sw);
		return fail(FW_ERR_INVALID, "--jobs=%lld x %d threads = %lld threads > %d cores%s: fewer "
			   "jobs or threads", jobs, r.threads, jobs * r.threads, ncores,
			   local > 1 ? " of this rank" : "");
	}
	char self[4096];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0) {
		fw_sweep_free(&r.sw);
		return fail(FW_ERR_IO, "cannot find fwrun's own path: %s", strerror(errno));
	}
	self[n] = '\0';
	r.self = self;
	if ((rc = claim_dir(dir, file, &r.sw)) != 0) {
		fw_sweep_free(&r.sw);
		return rc;
	}
	if (!strcmp(launcher, "slurm")) {
		rc = write_sbatch(&r, file, (int)jobs);
		fw_sweep_free(&r.sw);
		return rc;
	}
	/* what is left: not finished (done or stopped) in sweep.jsonl */
	int n_rec = 0;
	json_t **rec = sweep_records(dir, &n_rec);
	int64_t *pending = calloc((size_t)r.total + 1, sizeof(int64_t)), n_pending = 0, skipped = 0;
	for (int64_t i = 0; pending && i < r.total; i++) {
		if ((trial >= 0 && i != trial) || (trial < 0 && i % size != rank))
			continue;
		struct fw_sweep_trial t;
		if (fw_sweep_trial(&r.sw, i, &t, &err) != FW_OK)
			break;
		json_t *old = sweep_record_of(rec, n_rec, t.id);
		const char *st = json_string_value(json_object_get(old, "status"));
		if (st && (!strcmp(st, "done") || !strcmp(st, "stopped"))) {
			skipped++;
			char d[4300];
			snprintf(d, sizeof(d), "%s/trials/%s", dir, t.id);
			json_t *ss = json_object_get(old, "stop_step");
			remember_done(&r, i, d, ss ? json_integer_value(ss) : -1);
		} else {
			pending[n_pending++] = i;
		}
		fw_sweep_trial_free(&t);
	}
	sweep_records_free(rec, n_rec);
	if (!pending) {
		fw_sweep_free(&r.sw);
		return fail(FW_ERR_NOMEM, "out of memory");
	}
	fprintf(stderr, "sweep: %lld trials in %s; %lld to run%s, %lld finished before; %lld at "
		"once x %d threads%s\n", (long long)r.total, file, (long long)n_pending,
		mpi ? " on this rank" : "", (long long)skipped, jobs, r.threads,
		r.sw.rule.kind == FW_SWEEP_STOP_NONE ? "" :
		r.sw.rule.kind == FW_SWEEP_STOP_MEDIAN ? "; early stopping: median" :
		"; early stopping: asha");
	rc = run_trials(&r, pending, n_pending, (int)jobs);
	free(pending);
	for (int i = 0; i < r.n_done; i++)
		curves_free(&r.done[i]);
	free(r.done);
	free(r.done_index);
	fw_sweep_free(&r.sw);
	if (rc)
		return rc;
	if (interrupted)
		return fail(FW_ERR_IO, "sweep: %s; the same command goes on where it stopped",
			   interrupted == SIGINT ? "interrupted" : "terminated");
	fprintf(stderr, "sweep: %d trials run, %d failed; results in %s/sweep.jsonl\n",
		r.finished, r.failed, dir);
	return r.failed ? EXIT_FAILED_TRIALS + (r.failed < 100 ? r.failed : 100) : EXIT_OK;
}
