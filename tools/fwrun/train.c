/* train.c - fwrun train: the session's model trained by the runtime's
 * trainer (fw_rt_train), with fwrun's metrics.jsonl, progress line, run
 * directory, checkpoints, resume and clean interruption (SIGINT/SIGTERM
 * mapped to the trainer's stop). */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "session.h"

/* SIGINT/SIGTERM have no handler: cmd_train blocks them before the session
 * starts any thread (the threads inherit the mask) and on_step takes them
 * with sigtimedwait. A handler's signal frame is pushed at the interrupted
 * thread's rsp, and oneDNN's f32 JIT GEMM (jit_avx512_common_gemm_f32,
 * jit_avx_gemm_f32; up to 3.11.0, Debian has 2.6) runs with rsp pointing
 * into a malloc'd workspace, so a frame pushed there corrupts the heap:
 * uxlfoundation/oneDNN#4845, fixed upstream by #4855. */
static sigset_t stop_signals;
static int stop_requested;

static void block_stop_signals(void)
{
	sigemptyset(&stop_signals);
	sigaddset(&stop_signals, SIGINT);
	sigaddset(&stop_signals, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
}

static bool stop_pending(void)
{
	static const struct timespec no_wait = { 0 };
	int sig = sigtimedwait(&stop_signals, NULL, &no_wait);
	if (sig > 0 && !stop_requested)
		stop_requested = sig;
	return stop_requested != 0;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
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
	} else if (prev && !config_same_run(prev, here, prev_path, "this run", &s->cfg, why,
					     sizeof(why))) {
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
	int64_t steps, normed, tokens;    /* normed: steps not skipped, whose norm counts */
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
	double loss = iv->loss / n, norm = iv->normed ? iv->norm / (double)iv->normed : NAN;
	double tps = dt > 0 ? (double)iv->tokens / dt : 0;
	if (tty)
		fprintf(stderr, "\r\033[Kstep %lld/%lld  loss %.4f  grad norm %.3f  lr %.3e  "
			"%.0f tok/s  ETA %.0fs", (long long)s->step, (long long)s->iters, loss, norm,
			lr, tps, eta);
	else
		fprintf(stderr, "step %lld/%lld loss %.6f grad_norm %.4f lr %.6e tokens/s %.0f "
			"eta_s %.0f", (long long)s->step, (long long)s->iters, loss, norm, lr, tps,
			eta);
	if (s->have_scaler)
		fprintf(stderr, tty ? "  loss scale %.6g  skipped %lld" : " loss_scale %.9g skipped %lld",
			(double)s->scaler.scale, (long long)s->skipped);
	if (!tty)
		fputc('\n', stderr);
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
	char norm[32] = "null";          /* a skipped step has none */
	if (!in->skipped)
		snprintf(norm, sizeof(norm), "%.9g", in->grad_norm);
	/* CPU time of all threads: steadier than elapsed_s on a shared machine */
	struct timespec cpu;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu);
	fprintf(s->metrics,
		"{\"type\": \"train\", \"step\": %lld, \"loss\": %.9g, \"lr\": %.17g, "
		"\"grad_norm\": %s, \"loss_scale\": %.9g, \"skipped\": %s, \"skipped_iters\": %lld, "
		"\"tokens\": %lld, \"tokens_per_s\": %.1f, \"elapsed_s\": %.3f, \"cpu_s\": %.3f}\n",
		(long long)in->step, in->loss, in->lr, norm, (double)in->loss_scale,
		in->skipped ? "true" : "false", (long long)in->skipped_total, (long long)in->tokens,
		tps, in->elapsed_s, (double)cpu.tv_sec + 1e-9 * (double)cpu.tv_nsec);
	fflush(s->metrics);
	tl->iv.loss += in->loss;
	if (!in->skipped) {
		tl->iv.norm += in->grad_norm;
		tl->iv.normed++;
	}
	tl->iv.steps++;
	s->skipped = in->skipped_total;
	tl->iv.tokens += in->step_tokens;
	s->step = in->step;
	s->tokens = in->tokens;
	progress(s, &tl->iv, tl->first_step, in->lr, tl->t0 + in->elapsed_s, in->elapsed_s);
	return stop_pending() ? FW_RT_STOP : FW_RT_CONTINUE;
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
	return stop_pending() ? FW_RT_STOP : FW_RT_CONTINUE;
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
		.scaler = s->have_scaler ? &s->scaler : NULL,
		.inject_overflow = s->inject, .n_inject_overflow = s->n_inject,
		.step = s->step, .skipped = s->skipped, .tokens = s->tokens,
	};
	bool stopped = false;
	enum fw_status st = fw_rt_train(&t, &stopped, err);
	s->step = t.step;
	s->tokens = t.tokens;
	s->skipped = t.skipped;
	if (s->have_scaler)
		fprintf(stderr, "fwrun: %lld of %lld steps skipped on overflow; loss scale %.9g\n",
			(long long)s->skipped, (long long)s->step, (double)s->scaler.scale);
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


int cmd_train(int argc, char **argv)
{
	struct session s;
	int rc = EXIT_RUNTIME;
	if (wants_help(argc, argv))
		return command_help("train", train_usage, argc, argv);
	block_stop_signals();   /* before session_open starts threads */
	if (session_open(&s, "train", argc, argv, true, DATA_REQUIRED, &rc) != 0)
		goto out;
	set_schedule(&s);
	uint64_t seed = (uint64_t)opt_i(&s, "seed");
	if (setup_optim(&s, &s.err) != FW_OK || fw_ctx_init_params(s.ctx, seed) != FW_OK) {
		rc = fail(s.err.msg[0] ? s.err.status : fw_ctx_err(s.ctx)->status, "%s",
			  s.err.msg[0] ? s.err.msg : fw_ctx_err(s.ctx)->msg);
		goto out;
	}
	if (*s.load_path) {
		if (load_checkpoint(&s, s.load_path, true, &s.err) != FW_OK ||
		    adapter_apply(&s.cfg, &s.slots, &s.model, false, &s.err) != FW_OK) {
			rc = fail(s.err.status, "%s", s.err.msg);
			goto out;
		}
		fprintf(stderr, "fwrun: loaded %s at step %lld\n", s.load_path, (long long)s.step);
	} else if (adapter_apply(&s.cfg, &s.slots, &s.model, false, &s.err) != FW_OK) {
		rc = fail(s.err.status, "%s", s.err.msg);   /* --adapter on a fresh model */
		goto out;
	}
	/* a new adapter (not from --adapter or the checkpoint) on its base */
	if (!*opt_s(&s, "adapter") && (!*s.load_path || s.n_new) &&
	    fw_rt_adapter_init(&s.slots, &s.model, &s.err) != FW_OK) {
		rc = fail(s.err.status, "%s", s.err.msg);
		goto out;
	}
	session_ready(&s, "train", argc, argv);
	if (open_run_dir(&s, &s.err) != FW_OK) {
		rc = fail(s.err.status, "%s", s.err.msg);
		goto out;
	}
	struct fw_memory_report mr;
	fw_graph_memory(s.g, &mr);
	fprintf(stderr, "fwrun: %lld parameters, %lld trainable (%.2f%%); run directory %s\n",
		(long long)mr.n_params, (long long)mr.n_trainable,
		mr.n_params ? 100.0 * (double)mr.n_trainable / (double)mr.n_params : 0.0, s.run_dir);
	if (train_loop(&s, &s.err) != FW_OK) {
		rc = fail(s.err.status, "%s", s.err.msg);
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

