/* test_fwrun.c - the fwrun command line, run as a child process: help and
 * exit codes, `list`, `plan`, every bad input (one clear line on stderr, a
 * normal non-zero exit, no partial output), training end to end with the test
 * plugins (tests/plugins) on synthetic llm.c token shards, metrics, config
 * round trip, exact resume from a checkpoint, SIGINT, and an out-of-tree
 * plugin (examples/hello-optim) built against an installed fw. */
#define _GNU_SOURCE            /* nftw, sched_setaffinity */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

extern char **environ;

static char build_dir[4096], source_dir[4096], fwrun[4200];
static char scratch[256];               /* per test case, made by the parent */
static char train_bin[512], valid_bin[512];
static char default_path[9000];         /* FW_PLUGIN_PATH of every test */

#define PLUGS "--plugins=arch/tiny,attention/naive,optim/adamw"
#define SMALL "--micro-batch-size=4", "--seq-length=16", "--threads=2", "--lr=1e-2"

/* --- files ------------------------------------------------------------------------ */

static char *read_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *s = malloc((size_t)n + 1);
	ck_assert(s != NULL);
	s[fread(s, 1, (size_t)n, f)] = '\0';
	fclose(f);
	return s;
}

static void write_file(const char *path, const void *data, size_t n)
{
	FILE *f = fopen(path, "wb");
	ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
	ck_assert(fwrite(data, 1, n, f) == n);
	ck_assert(fclose(f) == 0);
}

static bool exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void rm_rf(const char *path)
{
	nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* scratch/NAME */
static const char *tmp_path(char *buf, size_t len, const char *name)
{
	snprintf(buf, len, "%s/%s", scratch, name);
	return buf;
}

/* An llm.c shard: 256 little-endian int32 (magic, version, count), then
 * uint16 tokens. Mostly t' = 5t + 3 mod vocab (learnable), with a seeded
 * random restart every 37 tokens. */
static void write_shard(const char *path, int n, int vocab, uint32_t seed)
{
	size_t bytes = 1024 + 2 * (size_t)n;
	unsigned char *b = calloc(1, bytes);
	uint32_t hdr[3] = { 20240520, 1, (uint32_t)n }, tok = 1;
	ck_assert(b != NULL);
	for (int i = 0; i < 3; i++)
		for (int k = 0; k < 4; k++)
			b[4 * i + k] = (unsigned char)(hdr[i] >> (8 * k));
	for (int i = 0; i < n; i++) {
		if (i % 37 == 0) {
			seed = seed * 1103515245u + 12345u;
			tok = (seed >> 16) % (uint32_t)vocab;
		} else {
			tok = (tok * 5 + 3) % (uint32_t)vocab;
		}
		b[1024 + 2 * i] = (unsigned char)tok;
		b[1024 + 2 * i + 1] = (unsigned char)(tok >> 8);
	}
	write_file(path, b, bytes);
	free(b);
}

/* --- running fwrun ----------------------------------------------------------------- */

struct result {
	bool exited;            /* normal exit, not a signal */
	int code, sig;
	char *out, *err;
};

static void result_free(struct result *r)
{
	free(r->out);
	free(r->err);
	memset(r, 0, sizeof(*r));
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Starts argv[0] (found in PATH) with stdout/stderr into scratch files. */
static pid_t spawn(char *const *argv, const char *tag)
{
	char out[512], err[512];
	posix_spawn_file_actions_t fa;
	pid_t pid;
	snprintf(out, sizeof(out), "%s/%s.stdout", scratch, tag);
	snprintf(err, sizeof(err), "%s/%s.stderr", scratch, tag);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	posix_spawn_file_actions_addopen(&fa, 2, err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	int rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	ck_assert_msg(rc == 0, "cannot start %s: %s", argv[0], strerror(rc));
	return pid;
}

/* Waits up to limit seconds; a child still running then is killed. */
static void reap(pid_t pid, double limit, const char *tag, struct result *r)
{
	char path[512];
	int status = 0;
	double t0 = now_s();
	memset(r, 0, sizeof(*r));
	for (;;) {
		pid_t w = waitpid(pid, &status, WNOHANG);
		if (w == pid)
			break;
		ck_assert_msg(w == 0, "waitpid: %s", strerror(errno));
		if (now_s() - t0 > limit) {
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			ck_abort_msg("%s: still running after %.0f s", tag, limit);
		}
		usleep(10000);
	}
	r->exited = WIFEXITED(status);
	r->code = r->exited ? WEXITSTATUS(status) : -1;
	r->sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
	snprintf(path, sizeof(path), "%s/%s.stdout", scratch, tag);
	r->out = read_file(path);
	snprintf(path, sizeof(path), "%s/%s.stderr", scratch, tag);
	r->err = read_file(path);
	ck_assert(r->out && r->err);
}

#define MAX_ARGS 48

/* run(&r, "train", "--x=1", ..., NULL): fwrun with those arguments. */
static void run(struct result *r, const char *first, ...)
{
	static int n_runs;
	char *argv[MAX_ARGS + 2], tag[32];
	int n = 0;
	va_list ap;
	argv[n++] = fwrun;
	va_start(ap, first);
	for (const char *a = first; a; a = va_arg(ap, const char *)) {
		ck_assert(n < MAX_ARGS);
		argv[n++] = (char *)a;
	}
	va_end(ap);
	argv[n] = NULL;
	snprintf(tag, sizeof(tag), "run%d", ++n_runs);
	reap(spawn(argv, tag), 240, tag, r);
}

/* Exit, stderr and stdout, for assertion messages. */
static const char *diag(const struct result *r)
{
	static char buf[12000];
	snprintf(buf, sizeof(buf), "exit %d signal %d\n--- stderr:\n%.6000s--- stdout:\n%.4000s",
		 r->code, r->sig, r->err ? r->err : "", r->out ? r->out : "");
	return buf;
}
#define DIAG(r) "%s", diag(r)

static void expect_ok(const struct result *r)
{
	ck_assert_msg(r->exited && r->code == 0, DIAG(r));
}

static int count_lines(const char *s)
{
	int n = 0;
	for (; *s; s++)
		n += *s == '\n';
	return n;
}

/* A clean failure: a normal exit with code, and stderr one line
 * "fwrun: ..." containing each of the given strings. */
static void expect_fail(const struct result *r, int code, const char *s1, const char *s2,
			const char *s3)
{
	ck_assert_msg(r->exited, "killed by signal %d\n%s", r->sig, r->err);
	ck_assert_msg(r->code == code, "expected exit %d; %s", code, diag(r));
	ck_assert_msg(count_lines(r->err) == 1 && !strncmp(r->err, "fwrun: ", 7),
		      "stderr is not one 'fwrun: ' line:\n%s", r->err);
	const char *want[] = { s1, s2, s3 };
	for (int i = 0; i < 3; i++)
		ck_assert_msg(!want[i] || strstr(r->err, want[i]), "stderr lacks '%s':\n%s",
			      want[i], r->err);
}

#define ck_has(s, sub) ck_assert_msg(strstr(s, sub) != NULL, "no '%s' in:\n%s", sub, s)

/* --- metrics.jsonl -------------------------------------------------------------------- */

#define MAX_STEPS 64

struct metrics {
	int n_train, n_eval;
	char *train[MAX_STEPS], *eval[MAX_STEPS];   /* lines, by order */
	char *text;
};

static void metrics_read(struct metrics *m, const char *run_dir)
{
	char path[600];
	memset(m, 0, sizeof(*m));
	snprintf(path, sizeof(path), "%s/metrics.jsonl", run_dir);
	m->text = read_file(path);
	ck_assert_msg(m->text != NULL, "%s missing", path);
	for (char *save = NULL, *l = strtok_r(m->text, "\n", &save); l;
	     l = strtok_r(NULL, "\n", &save)) {
		ck_assert_msg(l[0] == '{' && l[strlen(l) - 1] == '}', "not a JSON object: %s", l);
		if (strstr(l, "\"eval_loss\":")) {
			ck_assert(m->n_eval < MAX_STEPS);
			m->eval[m->n_eval++] = l;
		} else {
			ck_assert(m->n_train < MAX_STEPS);
			m->train[m->n_train++] = l;
		}
	}
}

/* The text of "key": VALUE in a one-line JSON object ("" if absent). */
static const char *field(const char *line, const char *key, char *buf, size_t len)
{
	char pat[64];
	snprintf(pat, sizeof(pat), "\"%s\":", key);
	const char *p = strstr(line, pat);
	buf[0] = '\0';
	if (!p)
		return buf;
	p += strlen(pat);
	while (*p == ' ')
		p++;
	size_t n = strcspn(p, ",}");
	snprintf(buf, len, "%.*s", (int)(n < len ? n : len - 1), p);
	return buf;
}

static double field_f(const char *line, const char *key)
{
	char buf[64];
	field(line, key, buf, sizeof(buf));
	ck_assert_msg(buf[0], "no \"%s\" in %s", key, line);
	return strtod(buf, NULL);
}

/* Train lines are steps first..first+n-1 with every key. */
static void check_train_lines(const struct metrics *m, int first, int n)
{
	static const char *const keys[] = { "step", "loss", "lr", "grad_norm", "loss_scale",
					    "tokens", "tokens_per_s", "elapsed_s", "cpu_s" };
	ck_assert_int_eq(m->n_train, n);
	for (int i = 0; i < n; i++) {
		for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
			double v = field_f(m->train[i], keys[k]);
			ck_assert_msg(isfinite(v), "%s", m->train[i]);
		}
		ck_assert_int_eq((int)field_f(m->train[i], "step"), first + i);
		ck_assert_msg(field_f(m->train[i], "loss") > 0, "%s", m->train[i]);
	}
}

static double mean_loss(const struct metrics *m, int from, int n)
{
	double s = 0;
	for (int i = from; i < from + n; i++)
		s += field_f(m->train[i], "loss");
	return s / n;
}

/* --- fixtures: a scratch directory per test case, made and removed by the
 * parent process (so a failed test still cleans up). -------------------------- */

static void scratch_up(void)
{
	snprintf(scratch, sizeof(scratch), "%s/fw-test-fwrun-XXXXXX",
		 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (!mkdtemp(scratch)) {
		perror("mkdtemp");
		abort();
	}
	snprintf(train_bin, sizeof(train_bin), "%s/train.bin", scratch);
	snprintf(valid_bin, sizeof(valid_bin), "%s/valid.bin", scratch);
	write_shard(train_bin, 8192, 64, 1);
	write_shard(valid_bin, 2048, 64, 2);
}

static void scratch_down(void)
{
	rm_rf(scratch);
}

/* Each test starts from the same environment, also with CK_FORK=no. */
static void reset_env(void)
{
	setenv("FW_PLUGIN_PATH", default_path, 1);
}

/* --- help, usage, list, plan ---------------------------------------------------------- */

START_TEST(test_help)
{
	static const char *const cmds[] = { "train", "eval", "generate", "plan", "list",
					    "import", "export", "merge", "export-adapter", "tokenize" };
	struct result r;
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		char usage[64];
		run(&r, cmds[i], "--help", NULL);
		expect_ok(&r);
		snprintf(usage, sizeof(usage), "usage: fwrun %s", cmds[i]);
		ck_has(r.out, usage);
		ck_assert_msg(!r.err[0], "%s --help wrote to stderr:\n%s", cmds[i], r.err);
		result_free(&r);
	}
	run(&r, "--help", NULL);
	expect_ok(&r);
	ck_has(r.out, "commands:");
	result_free(&r);
	run(&r, "help", NULL);
	expect_ok(&r);
	result_free(&r);
	/* no command: usage on stderr, exit 2 */
	run(&r, NULL);
	ck_assert_msg(r.exited && r.code == 2, DIAG(&r));
	ck_has(r.err, "usage: fwrun COMMAND");
	result_free(&r);
	/* help with plugins lists their options too */
	run(&r, "train", PLUGS, "--help", NULL);
	expect_ok(&r);
	ck_has(r.out, "arch/tiny options:");
	ck_has(r.out, "--n-embd");
	ck_has(r.out, "optim/adamw options:");
	ck_has(r.out, "--micro-batch-size");
	result_free(&r);
}
END_TEST

START_TEST(test_usage_errors)
{
	struct result r;
	run(&r, "trian", NULL);
	expect_fail(&r, 2, "unknown command 'trian'", "did you mean 'train'", NULL);
	result_free(&r);
	run(&r, "frobnicate", NULL);
	expect_fail(&r, 2, "unknown command 'frobnicate'", NULL, NULL);
	ck_assert(!strstr(r.err, "did you mean"));
	result_free(&r);

	run(&r, "train", PLUGS, "--data", train_bin, "--micro-batch-sze=2", NULL);
	expect_fail(&r, 2, "unknown option '--micro-batch-sze'",
		    "did you mean '--micro-batch-size'", NULL);
	result_free(&r);
	run(&r, "train", PLUGS, "--data", train_bin, "--n-embed", "8", NULL);
	expect_fail(&r, 2, "unknown option '--n-embed'", "did you mean '--n-embd'", NULL);
	result_free(&r);
	run(&r, "train", PLUGS, "--data", train_bin, "--micro-batch-size=0", NULL);
	expect_fail(&r, 2, "'micro-batch-size'", "out of range", NULL);
	result_free(&r);
	run(&r, "train", PLUGS, "--data", train_bin, "--lr-decay-style=cosin", NULL);
	expect_fail(&r, 2, "'lr-decay-style'", "did you mean 'cosine'", NULL);
	result_free(&r);
	run(&r, "train", PLUGS, "--data", train_bin, "--n-layer=two", NULL);
	expect_fail(&r, 2, "'n-layer'", "'two'", NULL);
	result_free(&r);
	run(&r, "train", PLUGS, "--data", train_bin, "--lr", NULL);
	expect_fail(&r, 2, "'--lr' needs a value", NULL, NULL);
	result_free(&r);
	run(&r, "train", PLUGS, NULL);
	expect_fail(&r, 2, "--data", NULL, NULL);
	result_free(&r);
	run(&r, "list", "extra", NULL);
	expect_fail(&r, 2, "'extra'", NULL, NULL);
	result_free(&r);
}
END_TEST

/* The line of text that contains key also contains value. */
static void ck_line(const char *text, const char *key, const char *value)
{
	const char *p = strstr(text, key);
	ck_assert_msg(p != NULL, "no '%s' in:\n%s", key, text);
	const char *end = strchr(p, '\n');
	size_t n = end ? (size_t)(end - p) : strlen(p);
	const char *v = strstr(p, value);
	ck_assert_msg(v && v < p + n, "'%s' is not on the line of '%s' in:\n%s", value, key,
		      text);
}

START_TEST(test_list)
{
	struct result r;
	static const char *const want[][2] = {
		{ "arch/tiny 0.0.1", "tiny.so" }, { "--vocab-size", "default 64 " },
		{ "--n-embd", "default 16 " }, { "--n-head", "default 2 " },
		{ "--n-layer", "default 1 " }, { "attention/naive", "naive.so" },
		{ "peft/probe", "probe.so" }, { "--probe-target", "default mlp.fc " },
		{ "--probe-log", "default \"\"" }, { "--probe-extra-loss", "bool" },
		{ "optim/heavy", "heavy.so" }, { "--heavy-buffers", "int in [1, 64]" },
		{ "optim/adamw", "adamw.so" }, { "--adam-beta1", "default 0.9 " },
		{ "optim/sgd", "sgd.so" }, { "fwrun options", "" },
		{ "--lr-decay-style", "cosine" },
	};
	run(&r, "list", NULL);
	expect_ok(&r);
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		ck_line(r.out, want[i][0], want[i][1]);
	ck_assert_msg(!strstr(r.out, "optim/bad"), "%s", r.out);
	ck_assert_msg(!r.err[0], "%s", r.err);
	result_free(&r);

	/* A broken plugin on the path is skipped with a line naming it, and
	 * the rest is still listed: exit 1. */
	char dir[300], kind[320], link[360], target[4300], env[9000];
	tmp_path(dir, sizeof(dir), "path-with-broken");
	snprintf(kind, sizeof(kind), "%s/optim", dir);
	snprintf(link, sizeof(link), "%s/broken.so", kind);
	snprintf(target, sizeof(target), "%s/test-plugins-bad/abi_major.so", build_dir);
	ck_assert(mkdir(dir, 0755) == 0 && mkdir(kind, 0755) == 0);
	ck_assert(symlink(target, link) == 0);
	snprintf(env, sizeof(env), "%s:%s", dir, getenv("FW_PLUGIN_PATH"));
	setenv("FW_PLUGIN_PATH", env, 1);
	run(&r, "list", NULL);
	ck_assert_msg(r.exited && r.code == 1, DIAG(&r));
	ck_has(r.err, link);
	ck_has(r.err, "built for ABI");
	ck_assert_int_eq(count_lines(r.err), 1);
	ck_has(r.out, "arch/tiny");
	result_free(&r);
}
END_TEST

/* "parameters: N total, M trainable" */
static void plan_counts(const char *out, long long *total, long long *trainable)
{
	const char *p = strstr(out, "parameters:");
	ck_assert_msg(p && sscanf(p, "parameters: %lld total, %lld trainable", total,
				  trainable) == 2, "%s", out);
}

START_TEST(test_plan)
{
	struct result r;
	long long total, trainable;
	run(&r, "plan", PLUGS, SMALL, NULL);
	expect_ok(&r);
	plan_counts(r.out, &total, &trainable);
	ck_assert(total > 0 && trainable == total);
	static const char *const want[] = { "memory plan", "weights", "gradients", "optimizer",
					    "activations", "total", "MiB" };
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		ck_has(r.out, want[i]);
	result_free(&r);

	/* with peft/probe only the probe adapters train */
	long long total2, trainable2;
	run(&r, "plan", "--plugins=arch/tiny,attention/naive,peft/probe,optim/adamw", SMALL,
	    NULL);
	expect_ok(&r);
	plan_counts(r.out, &total2, &trainable2);
	ck_assert(trainable2 > 0 && trainable2 < total && total2 == total + trainable2);
	result_free(&r);
}
END_TEST

/* --threads wider than the CPU affinity mask (set here through the kernel,
 * as taskset or a library's OMP_PROC_BIND would) gets one warning line and
 * still runs; a mask wide enough gets none. */
START_TEST(test_narrow_affinity)
{
	cpu_set_t all, one;
	ck_assert_int_eq(sched_getaffinity(0, sizeof(all), &all), 0);
	int first = 0;
	while (!CPU_ISSET(first, &all))
		first++;
	CPU_ZERO(&one);
	CPU_SET(first, &one);
	ck_assert_int_eq(sched_setaffinity(0, sizeof(one), &one), 0);
	struct result r;
	run(&r, "plan", PLUGS, SMALL, NULL);                  /* SMALL: --threads=2 */
	expect_ok(&r);
	ck_has(r.err, "warning: --threads=2, but this process may run on 1 CPU (its affinity");
	result_free(&r);
	run(&r, "plan", PLUGS, "--micro-batch-size=4", "--seq-length=16", "--threads=1", NULL);
	expect_ok(&r);
	ck_assert_msg(!strstr(r.err, "affinity"), "warned at --threads=1:\n%s", r.err);
	result_free(&r);
	ck_assert_int_eq(sched_setaffinity(0, sizeof(all), &all), 0);
}
END_TEST

/* --- bad inputs -------------------------------------------------------------------------- */

struct bad_cli {
	const char *plugins;    /* --plugins value; %B = bad dir, %D = dup dir, %S = scratch */
	int code;
	const char *says[3];
};

static void expand(char *out, size_t len, const char *in)
{
	char bad[4300], dup[4300];
	size_t n = 0;
	snprintf(bad, sizeof(bad), "%s/test-plugins-bad", build_dir);
	snprintf(dup, sizeof(dup), "%s/test-plugins-dup", build_dir);
	for (const char *p = in; *p && n + 1 < len; p++) {
		const char *sub = NULL;
		if (p[0] == '%')
			sub = p[1] == 'B' ? bad : p[1] == 'D' ? dup : p[1] == 'S' ? scratch : NULL;
		if (sub) {
			n += (size_t)snprintf(out + n, len - n, "%s", sub);
			p++;
		} else {
			out[n++] = *p;
		}
	}
	out[n < len ? n : len - 1] = '\0';
}

START_TEST(test_bad_plugins_cli)
{
	char abi[64];
	snprintf(abi, sizeof(abi), "built for ABI %d.%d, fw is %d.%d", FW_ABI_MAJOR + 1,
		 FW_ABI_MINOR, FW_ABI_MAJOR, FW_ABI_MINOR);
	const struct bad_cli cases[] = {
		{ "arch/tiny,attention/naive,%B/no_entry.so", 1,
		  { "no_entry.so", "no 'fw_plugin_entry' symbol" } },
		{ "arch/tiny,attention/naive,%S/x.so", 1, { "x.so", "cannot load plugin" } },
		{ "arch/tiny,attention/naive,%B/entry_null.so", 1,
		  { "entry_null.so", "returned NULL" } },
		{ "arch/tiny,attention/naive,%B/abi_major.so", 1, { "abi_major.so", abi } },
		{ "arch/tiny,attention/naive,%B/fingerprint.so", 1,
		  { "fingerprint.so", "rebuild against this fw" } },
		{ "arch/tiny,attention/naive,%B/size_big.so", 1, { "size_big.so", "descriptor" } },
		{ "arch/tiny,attention/naive,%B/opt_default.so", 1,
		  { "opt_default.so", "bad default" } },
		/* FW_ERR_INVALID from init: the plugin refuses its options */
		{ "arch/tiny,attention/naive,%B/init_fail.so", 2,
		  { "optim/bad", "init failed", "the test asked this init to fail" } },
		{ "arch/tiny,attention/naive,optim/adamw,%D/optim/adamw.so", 2,
		  { "two plugins named 'optim/adamw'", "test-plugins-dup/optim/adamw.so" } },
		{ "arch/tiny,%D/arch/tiny.so,attention/naive,optim/adamw", 2,
		  { "two plugins named 'arch/tiny'", "test-plugins-dup/arch/tiny.so" } },
		{ "arch/tinyy,attention/naive,optim/adamw", 2,
		  { "unknown plugin 'arch/tinyy'", "available:", "arch/tiny" } },
		{ "arch/tiny,attention/naive,optim/adamw,optim/sgd", 2,
		  { "two optim plugins", "'optim/adamw'", "'optim/sgd'" } },
		{ "arch/tiny,attention/naive,%B/opt_collide.so", 2,
		  { "option 'seed'", "'optim/bad'", "also declared by fwrun" } },
		{ "arch/tiny,attention/naive,%B/opt_collide_plugin.so", 2,
		  { "option 'n-embd'", "'optim/bad'", "another plugin" } },
		{ "attention/naive,optim/adamw", 2, { "needs an arch plugin" } },
		{ "arch/tiny,optim/adamw", 2, { "h.0.attn", "no attention plugin" } },
		{ "arch/tiny,attention/naive", 1, { "needs an optim plugin" } },
		{ "arch/tiny,attention/naive,%S/missing.so,optim/adamw", 1,
		  { "missing.so", "no such plugin file" } },
	};
	char xso[300];
	write_file(tmp_path(xso, sizeof(xso), "x.so"), "not ELF\n", 8);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char spec[4096], arg[4200], rd[320], rdarg[400];
		struct result r;
		expand(spec, sizeof(spec), cases[i].plugins);
		snprintf(arg, sizeof(arg), "--plugins=%s", spec);
		snprintf(rd, sizeof(rd), "%s/rd-bad-%zu", scratch, i);
		snprintf(rdarg, sizeof(rdarg), "--run-dir=%s", rd);
		run(&r, "train", arg, "--data", train_bin, "--train-iters=2", rdarg, SMALL, NULL);
		expect_fail(&r, cases[i].code, cases[i].says[0], cases[i].says[1],
			    cases[i].says[2]);
		ck_assert_msg(!exists(rd), "case %zu left %s behind", i, rd);
		ck_assert_msg(!r.out[0], "stdout: %s", r.out);
		result_free(&r);
	}
}
END_TEST

START_TEST(test_bad_data)
{
	char bad[300], rd[320], rdarg[400], shortf[300];
	struct result r;
	snprintf(rd, sizeof(rd), "%s/rd-data", scratch);
	snprintf(rdarg, sizeof(rdarg), "--run-dir=%s", rd);
	write_file(tmp_path(bad, sizeof(bad), "bad.bin"), "0123456789", 10);
	run(&r, "train", PLUGS, "--data", bad, rdarg, SMALL, NULL);
	expect_fail(&r, 1, bad, NULL, NULL);
	result_free(&r);
	run(&r, "train", PLUGS, "--data=/nonexistent/train.bin", rdarg, SMALL, NULL);
	expect_fail(&r, 1, "/nonexistent/train.bin", NULL, NULL);
	result_free(&r);
	/* tokens outside the vocabulary of the model */
	run(&r, "train", PLUGS, "--data", train_bin, "--vocab-size=32", rdarg, SMALL, NULL);
	expect_fail(&r, 1, "train.bin", "vocabulary", NULL);
	result_free(&r);
	/* fewer tokens than one micro-batch */
	write_shard(tmp_path(shortf, sizeof(shortf), "short.bin"), 20, 64, 3);
	run(&r, "train", PLUGS, "--data", shortf, rdarg, SMALL, NULL);
	expect_fail(&r, 1, "short.bin", NULL, NULL);
	result_free(&r);
	/* a peft option that only the model's build can check fails before a
	 * byte of a huge, invalid data file is read */
	char huge[300], dataarg[400];
	int fd = open(tmp_path(huge, sizeof(huge), "huge.bin"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
	ck_assert(fd >= 0 && ftruncate(fd, (off_t)64 << 30) == 0 && close(fd) == 0);
	snprintf(dataarg, sizeof(dataarg), "--data=%s", huge);
	static const char *const cmds[] = { "train", "eval" };
	for (int i = 0; i < 2; i++) {
		run(&r, cmds[i], "--plugins=arch/decoder,attention/mha,peft/lora,optim/adamw",
		    "--lora-target-modules=c_atn", dataarg, "--load=", rdarg, "--n-layer=1",
		    "--n-head=2", "--n-embd=16", "--vocab-size=64", "--seq-length=8",
		    "--micro-batch-size=2", NULL);
		expect_fail(&r, 2, "peft/lora", "--lora-target-modules", "'c_atn'");
		result_free(&r);
	}
	unlink(huge);
	ck_assert(!exists(rd));
}
END_TEST

START_TEST(test_bad_checkpoints)
{
	char rd[320], rdarg[400], ckpt[400], junk[300], cut[300], empty[300], arg[600];
	struct result r;

	/* a good checkpoint to break */
	snprintf(rd, sizeof(rd), "%s/rd-good", scratch);
	snprintf(rdarg, sizeof(rdarg), "--run-dir=%s", rd);
	run(&r, "train", PLUGS, "--data", train_bin, "--train-iters=2", rdarg, SMALL, NULL);
	expect_ok(&r);
	result_free(&r);
	snprintf(ckpt, sizeof(ckpt), "%s/ckpt-00000002.h5", rd);
	ck_assert_msg(exists(ckpt), "%s missing", ckpt);

	snprintf(rd, sizeof(rd), "%s/rd-ckpt", scratch);
	snprintf(rdarg, sizeof(rdarg), "--run-dir=%s", rd);
	run(&r, "train", PLUGS, "--data", train_bin, "--load=/nonexistent/ckpt.h5", rdarg, SMALL,
	    NULL);
	expect_fail(&r, 1, "/nonexistent/ckpt.h5", NULL, NULL);
	result_free(&r);

	unsigned char noise[4096];
	uint32_t x = 12345;
	for (size_t i = 0; i < sizeof(noise); i++) {
		x = x * 1103515245u + 12345u;
		noise[i] = (unsigned char)(x >> 16);
	}
	write_file(tmp_path(junk, sizeof(junk), "junk.h5"), noise, sizeof(noise));
	snprintf(arg, sizeof(arg), "--load=%s", junk);
	run(&r, "train", PLUGS, "--data", train_bin, arg, rdarg, SMALL, NULL);
	expect_fail(&r, 1, junk, NULL, NULL);
	result_free(&r);

	char *full = read_file(ckpt);
	struct stat st;
	ck_assert(full && stat(ckpt, &st) == 0 && st.st_size > 64);
	write_file(tmp_path(cut, sizeof(cut), "cut.h5"), full, (size_t)st.st_size / 2);
	free(full);
	snprintf(arg, sizeof(arg), "--load=%s", cut);
	run(&r, "train", PLUGS, "--data", train_bin, arg, rdarg, SMALL, NULL);
	expect_fail(&r, 1, cut, NULL, NULL);
	result_free(&r);

	tmp_path(empty, sizeof(empty), "no-ckpts");
	ck_assert(mkdir(empty, 0755) == 0);
	snprintf(arg, sizeof(arg), "--load=%s", empty);
	run(&r, "train", PLUGS, "--data", train_bin, arg, rdarg, SMALL, NULL);
	expect_fail(&r, 1, empty, "no checkpoint", NULL);
	result_free(&r);

	/* trained with n-embd 16, loaded with 32: names a tensor and both shapes */
	snprintf(arg, sizeof(arg), "--load=%s", ckpt);
	run(&r, "train", PLUGS, "--data", train_bin, arg, rdarg, "--n-embd=32", SMALL, NULL);
	expect_fail(&r, 1, "wte", "[64, 16]", "[64, 32]");
	result_free(&r);
	ck_assert_msg(!exists(rd), "%s was created", rd);

	/* eval of a missing checkpoint */
	run(&r, "eval", PLUGS, "--valid-data", valid_bin, "--load=/nonexistent/c.h5", SMALL, NULL);
	expect_fail(&r, 1, "/nonexistent/c.h5", NULL, NULL);
	result_free(&r);
}
END_TEST

/* --- training ------------------------------------------------------------------------------ */

START_TEST(test_train_metrics)
{
	char rd[320], rdarg[400], path[500];
	struct result r;
	struct metrics m;
	snprintf(rd, sizeof(rd), "%s/rd-train", scratch);
	snprintf(rdarg, sizeof(rdarg), "--run-dir=%s", rd);
	run(&r, "train", PLUGS, "--data", train_bin, "--valid-data", valid_bin,
	    "--train-iters=30", "--eval-interval=10", "--eval-iters=2", "--lr-decay-style=constant",
	    rdarg, SMALL, NULL);
	expect_ok(&r);
	ck_has(r.err, "parameters");
	ck_has(r.err, "trainable");
	result_free(&r);

	snprintf(path, sizeof(path), "%s/config.ini", rd);
	ck_assert_msg(exists(path), "%s missing", path);
	snprintf(path, sizeof(path), "%s/ckpt-00000030.h5", rd);
	ck_assert_msg(exists(path), "%s missing", path);

	metrics_read(&m, rd);
	check_train_lines(&m, 1, 30);
	for (int i = 0; i < 30; i++)
		ck_assert_int_eq((long long)field_f(m.train[i], "tokens"), (i + 1) * 4 * 16);
	ck_assert_int_eq(m.n_eval, 3);
	for (int i = 0; i < 3; i++) {
		ck_assert_int_eq((int)field_f(m.eval[i], "step"), 10 * (i + 1));
		double el = field_f(m.eval[i], "eval_loss");
		ck_assert(isfinite(el) && el > 0);
	}
	double first = mean_loss(&m, 0, 5), last = mean_loss(&m, 25, 5);
	ck_assert_msg(last < first, "loss did not decrease: %g -> %g", first, last);
	free(m.text);

	/* eval of the final checkpoint: one JSON object on stdout */
	char load[600];
	snprintf(load, sizeof(load), "--load=%s", path);
	run(&r, "eval", PLUGS, "--valid-data", valid_bin, load, "--eval-iters=2", SMALL, NULL);
	expect_ok(&r);
	ck_has(r.out, "\"eval_loss\":");
	ck_assert_int_eq(count_lines(r.out), 1);
	result_free(&r);
}
END_TEST

/* The number after "KEY " in the probe log's "key value" lines. */
static long long probe_count(const char *log, const char *key)
{
	size_t n = strlen(key);
	for (const char *l = log; *l; l++) {
		if (!strncmp(l, key, n) && l[n] == ' ')
			return atoll(l + n + 1);
		l = strchr(l, '\n');
		if (!l)
			break;
	}
	ck_abort_msg("no %s in probe log:\n%s", key, log);
	return -1;
}

START_TEST(test_train_peft_probe)
{
	char rd[320], rdarg[400], logf[300], logarg[400];
	struct result r;
	struct metrics m;
	const int steps = 20;
	snprintf(rd, sizeof(rd), "%s/rd-probe", scratch);
	snprintf(rdarg, sizeof(rdarg), "--run-dir=%s", rd);
	snprintf(logarg, sizeof(logarg), "--probe-log=%s", tmp_path(logf, sizeof(logf), "probe.log"));
	run(&r, "train", "--plugins=arch/tiny,attention/naive,peft/probe,optim/adamw",
	    "--data", train_bin, "--train-iters=20", "--probe-target=mlp.fc,lm_head",
	    "--probe-extra-loss", "--lr=3e-2", "--lr-decay-style=constant", logarg, rdarg,
	    "--micro-batch-size=4", "--seq-length=16", "--threads=2", NULL);
	expect_ok(&r);

	char *log = read_file(logf);
	ck_assert_msg(log != NULL, "no probe log; %s", diag(&r));
	const int L = 1;        /* tiny's n-layer */
	ck_assert_int_eq(probe_count(log, "linear"), 6 * L + 1);   /* q k v proj fc proj, head */
	ck_assert_int_eq(probe_count(log, "wrapped"), L + 1);
	ck_assert_int_eq(probe_count(log, "embed"), 1);
	ck_assert_int_eq(probe_count(log, "kv"), L);
	ck_assert_int_eq(probe_count(log, "freeze"), 1);
	ck_assert_int_eq(probe_count(log, "frozen"), 2 + 16 * L + 3);
	ck_assert_int_eq(probe_count(log, "extra_loss"), 1);
	ck_assert_int_eq(probe_count(log, "after_backward"), steps);
	ck_assert_int_eq(probe_count(log, "last_step"), steps);

	/* only the probe adapters train */
	long long total = 0, trainable = 0;
	const char *p = strstr(r.err, "fwrun: ");
	while (p && sscanf(p, "fwrun: %lld parameters, %lld trainable", &total, &trainable) != 2)
		p = strstr(p + 1, "fwrun: ");
	ck_assert_msg(p != NULL, "no parameter count:\n%s", r.err);
	ck_assert_int_eq(trainable, probe_count(log, "probe_params"));
	ck_assert(trainable < total);
	free(log);
	result_free(&r);

	metrics_read(&m, rd);
	check_train_lines(&m, 1, steps);
	double first = mean_loss(&m, 0, 4), last = mean_loss(&m, steps - 4, 4);
	ck_assert_msg(last < first, "loss did not decrease: %g -> %g", first, last);
	free(m.text);
}
END_TEST

/* A checkpoint loaded into a run that trains new tensors (a PEFT adapter)
 * is refused unless --finetune takes its weights only, from step 0. */
START_TEST(test_finetune_from_checkpoint)
{
	char rd[320], rdarg[400], rd2[320], rd2arg[400], load[400];
	struct result r;
	snprintf(rd, sizeof(rd), "%s/rd-ft-base", scratch);
	snprintf(rdarg, sizeof(rdarg), "--run-dir=%s", rd);
	snprintf(rd2, sizeof(rd2), "%s/rd-ft", scratch);
	snprintf(rd2arg, sizeof(rd2arg), "--run-dir=%s", rd2);
	snprintf(load, sizeof(load), "--load=%s", rd);
	run(&r, "train", "--plugins=arch/tiny,attention/naive,optim/adamw", "--data", train_bin,
	    "--train-iters=3", "--micro-batch-size=4", "--seq-length=16", rdarg, NULL);
	expect_ok(&r);
	result_free(&r);
	run(&r, "train", "--plugins=arch/tiny,attention/naive,peft/probe,optim/adamw",
	    "--data", train_bin, "--train-iters=2", "--micro-batch-size=4", "--seq-length=16",
	    load, rd2arg, NULL);
	ck_assert_msg(r.exited && r.code == 1, "%s", diag(&r));
	ck_has(r.err, "--finetune");
	result_free(&r);
	run(&r, "train", "--plugins=arch/tiny,attention/naive,peft/probe,optim/adamw",
	    "--data", train_bin, "--train-iters=2", "--micro-batch-size=4", "--seq-length=16",
	    load, rd2arg, "--finetune", NULL);
	expect_ok(&r);
	struct metrics m;
	metrics_read(&m, rd2);
	check_train_lines(&m, 1, 2);      /* steps 1..2: started from step 0 */
	free(m.text);
	result_free(&r);
}
END_TEST

/* An error from a plugin hook mid-training: exit 1, the last stderr line says
 * why, and the plugin was still closed (its log written). */
START_TEST(test_hook_failure)
{
	char rd[320], rdarg[400], logf[300], logarg[400];
	struct result r;
	snprintf(rd, sizeof(rd), "%s/rd-fail", scratch);
	snprintf(rdarg, sizeof(rdarg), "--run-dir=%s", rd);
	snprintf(logarg, sizeof(logarg), "--probe-log=%s", tmp_path(logf, sizeof(logf), "fail.log"));
	run(&r, "train", "--plugins=arch/tiny,attention/naive,peft/probe,optim/adamw",
	    "--data", train_bin, "--train-iters=5", "--probe-fail-step=2", logarg, rdarg, SMALL,
	    NULL);
	ck_assert_msg(r.exited && r.code == 1, DIAG(&r));
	const char *last = r.err + strlen(r.err);
	ck_assert(last > r.err && last[-1] == '\n');
	for (last -= 1; last > r.err && last[-1] != '\n'; last--)
		;
	ck_assert_msg(!strncmp(last, "fwrun: ", 7) && strstr(last, "failing after step 2"),
		      "last line: %s", last);
	char *log = read_file(logf);
	ck_assert_msg(log != NULL, "peft/probe was not closed");
	ck_assert_int_eq(probe_count(log, "after_backward"), 2);
	free(log);
	result_free(&r);
}
END_TEST

/* The resolved config written to a run directory, fed back with --config,
 * resolves to the same config; the command line overrides the file. */
START_TEST(test_config_roundtrip)
{
	char a[320], b[320], c[320], arg[400], cfg[400], cfgarg[500], path[500];
	struct result r;
	snprintf(a, sizeof(a), "%s/rd-cfg-a", scratch);
	snprintf(arg, sizeof(arg), "--run-dir=%s", a);
	run(&r, "train", PLUGS, "--data", train_bin, "--train-iters=1", "--lr=0.02",
	    "--adam-beta1=0.8", "--n-embd=8", "--no-shuffle", "--micro-batch-size=2",
	    "--seq-length=8", "--threads=2", arg, NULL);
	expect_ok(&r);
	result_free(&r);
	snprintf(cfg, sizeof(cfg), "%s/config.ini", a);
	char *ta = read_file(cfg);
	ck_assert_msg(ta != NULL, "%s missing", cfg);
	static const char *const want[] = { "[run]", "plugins = arch/tiny,attention/naive,optim/adamw",
					    "lr = 0.02", "shuffle = false", "[arch/tiny]",
					    "n-embd = 8", "vocab-size = 64", "[optim/adamw]",
					    "adam-beta1 = 0.8", "adam-beta2 = 0.999" };
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		ck_has(ta, want[i]);

	/* replay: only run-dir differs */
	snprintf(b, sizeof(b), "%s/rd-cfg-b", scratch);
	snprintf(arg, sizeof(arg), "--run-dir=%s", b);
	snprintf(cfgarg, sizeof(cfgarg), "--config=%s", cfg);
	run(&r, "train", cfgarg, arg, NULL);
	expect_ok(&r);
	result_free(&r);
	snprintf(path, sizeof(path), "%s/config.ini", b);
	char *tb = read_file(path);
	ck_assert_msg(tb != NULL, "%s missing", path);
	char la[400], lb[400];
	snprintf(la, sizeof(la), "run-dir = %s\n", a);
	snprintf(lb, sizeof(lb), "run-dir = %s\n", b);
	char *pa = strstr(ta, la), *pb = strstr(tb, lb);
	ck_assert(pa && pb);
	ck_assert_msg(pa - ta == pb - tb && !strncmp(ta, tb, (size_t)(pa - ta)) &&
		      !strcmp(pa + strlen(la), pb + strlen(lb)),
		      "configs differ:\n%s\n---\n%s", ta, tb);

	/* command line over the file */
	snprintf(c, sizeof(c), "%s/rd-cfg-c", scratch);
	snprintf(arg, sizeof(arg), "--run-dir=%s", c);
	run(&r, "train", cfgarg, arg, "--adam-beta1=0.85", "--n-embd", "16", "--shuffle", NULL);
	expect_ok(&r);
	result_free(&r);
	snprintf(path, sizeof(path), "%s/config.ini", c);
	char *tc = read_file(path);
	ck_assert(tc != NULL);
	ck_has(tc, "adam-beta1 = 0.85\n");
	ck_has(tc, "n-embd = 16\n");
	ck_has(tc, "shuffle = true\n");
	ck_has(tc, "lr = 0.02\n");
	ck_has(tc, "adam-beta2 = 0.999\n");
	free(ta);
	free(tb);
	free(tc);

	/* errors in a config file name the file and line */
	char bad[300], text[300];
	snprintf(text, sizeof(text), "[run]\nplugins = arch/tiny,attention/naive,optim/adamw\n"
		 "micro-batch-sze = 2\n");
	write_file(tmp_path(bad, sizeof(bad), "bad.ini"), text, strlen(text));
	snprintf(cfgarg, sizeof(cfgarg), "--config=%s", bad);
	run(&r, "train", cfgarg, "--data", train_bin, NULL);
	expect_fail(&r, 2, "bad.ini:3:", "did you mean '--micro-batch-size'", NULL);
	result_free(&r);
	snprintf(text, sizeof(text), "plugins = arch/tiny,attention/naive,optim/adamw\n"
		 "[optim/sgd]\nsgd-momentum = 0.5\n");
	write_file(bad, text, strlen(text));
	run(&r, "train", cfgarg, "--data", train_bin, NULL);
	expect_fail(&r, 2, "bad.ini", "[optim/sgd]", "not loaded");
	result_free(&r);
	run(&r, "train", "--config=/nonexistent/run.ini", NULL);
	expect_fail(&r, 1, "/nonexistent/run.ini", NULL, NULL);
	result_free(&r);
}
END_TEST

/* Run A trains 8 steps (accumulation 2, shuffle, warmup + cosine) saving at
 * 4; run B resumes A's step-4 checkpoint to 8. Steps 5..8 must match bit
 * for bit. */
START_TEST(test_resume_exact)
{
	char a[320], b[320], c[320], arg[400], load[500];
	struct result r;
	struct metrics ma, mb, mc;
#define RESUME_ARGS "--data", train_bin, "--train-iters=8", "--save-interval=4", \
	"--micro-batch-size=2", "--global-batch-size=4", "--seq-length=16", "--shuffle", \
	"--lr=1e-2", "--min-lr=1e-3", "--lr-warmup-iters=2", "--lr-decay-style=cosine", \
	"--threads=2", "--seed=7"
	snprintf(a, sizeof(a), "%s/rd-resume-a", scratch);
	snprintf(arg, sizeof(arg), "--run-dir=%s", a);
	run(&r, "train", PLUGS, RESUME_ARGS, arg, NULL);
	expect_ok(&r);
	result_free(&r);
	snprintf(load, sizeof(load), "%s/ckpt-00000004.h5", a);
	ck_assert_msg(exists(load), "%s missing", load);

	snprintf(b, sizeof(b), "%s/rd-resume-b", scratch);
	snprintf(arg, sizeof(arg), "--run-dir=%s", b);
	snprintf(load, sizeof(load), "--load=%s/ckpt-00000004.h5", a);
	run(&r, "train", PLUGS, RESUME_ARGS, load, arg, NULL);
	expect_ok(&r);
	ck_has(r.err, "at step 4");
	result_free(&r);

	metrics_read(&ma, a);
	metrics_read(&mb, b);
	check_train_lines(&ma, 1, 8);
	check_train_lines(&mb, 5, 4);
	for (int i = 0; i < 4; i++) {
		static const char *const keys[] = { "loss", "lr", "grad_norm", "tokens" };
		for (int k = 0; k < 4; k++) {
			char va[64], vb[64];
			field(ma.train[4 + i], keys[k], va, sizeof(va));
			field(mb.train[i], keys[k], vb, sizeof(vb));
			ck_assert_msg(!strcmp(va, vb), "step %d %s: %s in run A, %s resumed", 5 + i,
				      keys[k], va, vb);
		}
	}

	/* --load=DIR takes the newest checkpoint there (step 8) */
	snprintf(c, sizeof(c), "%s/rd-resume-c", scratch);
	snprintf(arg, sizeof(arg), "--run-dir=%s", c);
	snprintf(load, sizeof(load), "--load=%s", a);
	run(&r, "train", PLUGS, RESUME_ARGS, load, arg, "--train-iters=10", NULL);
	expect_ok(&r);
	ck_has(r.err, "ckpt-00000008.h5");
	result_free(&r);
	metrics_read(&mc, c);
	check_train_lines(&mc, 9, 2);
	free(ma.text);
	free(mb.text);
	free(mc.text);
#undef RESUME_ARGS
}
END_TEST

static int file_lines(const char *path)
{
	char *s = read_file(path);
	int n = s ? count_lines(s) : 0;
	free(s);
	return n;
}

/* SIGINT during a long run: a checkpoint, a line naming it, exit 0; the
 * checkpoint resumes. */
START_TEST(test_sigint)
{
	char rd[320], rdarg[400], metrics[400], ckpt[400], want[500];
	struct result r;
	snprintf(rd, sizeof(rd), "%s/rd-sigint", scratch);
	snprintf(rdarg, sizeof(rdarg), "--run-dir=%s", rd);
	snprintf(metrics, sizeof(metrics), "%s/metrics.jsonl", rd);
	char *argv[] = { fwrun, "train", PLUGS, "--data", train_bin, "--train-iters=100000",
			 rdarg, "--micro-batch-size=4", "--seq-length=16", "--threads=2",
			 "--lr=1e-3", NULL };
	pid_t pid = spawn(argv, "sigint");
	double t0 = now_s();
	while (file_lines(metrics) < 3) {
		int status;
		ck_assert_msg(waitpid(pid, &status, WNOHANG) == 0, "fwrun ended early");
		if (now_s() - t0 > 120) {
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			ck_abort_msg("no 3 steps logged in 120 s");
		}
		usleep(20000);
	}
	ck_assert(kill(pid, SIGINT) == 0);
	double t1 = now_s();
	reap(pid, 30, "sigint", &r);
	ck_assert_msg(now_s() - t1 < 15, "took %.1f s to stop", now_s() - t1);
	ck_assert_msg(r.exited && r.code == 0, DIAG(&r));
	const char *p = strstr(r.err, "interrupted after step ");
	ck_assert_msg(p != NULL, "%s", r.err);
	long long step = atoll(p + strlen("interrupted after step "));
	ck_assert(step >= 3);
	snprintf(ckpt, sizeof(ckpt), "%s/ckpt-%08lld.h5", rd, step);
	snprintf(want, sizeof(want), "saved %s", ckpt);
	ck_has(r.err, want);
	ck_has(r.err, "resume with --load=");
	ck_assert(exists(ckpt));
	result_free(&r);

	/* resume for one more step */
	char rd2[320], rdarg2[400], load[500], iters[64];
	struct metrics m;
	snprintf(rd2, sizeof(rd2), "%s/rd-sigint-2", scratch);
	snprintf(rdarg2, sizeof(rdarg2), "--run-dir=%s", rd2);
	snprintf(load, sizeof(load), "--load=%s", rd);
	snprintf(iters, sizeof(iters), "--train-iters=%lld", step + 1);
	run(&r, "train", PLUGS, "--data", train_bin, iters, load, rdarg2, "--micro-batch-size=4",
	    "--seq-length=16", "--threads=2", "--lr=1e-3", NULL);
	expect_ok(&r);
	result_free(&r);
	metrics_read(&m, rd2);
	check_train_lines(&m, (int)step + 1, 1);
	free(m.text);
}
END_TEST

/* --- an out-of-tree plugin against an installed fw ---------------------------------- */

static void run_tool(char *const *argv, const char *tag)
{
	struct result r;
	reap(spawn(argv, tag), 240, tag, &r);
	ck_assert_msg(r.exited && r.code == 0, "%s failed: %s", argv[0], diag(&r));
	result_free(&r);
}

START_TEST(test_hello_optim)
{
	char prefix[300], bdir[300], src[4300], pp[400], so[400], env[9000], rd[320], rdarg[400];
	char plugins[500];
	struct result r;
	tmp_path(prefix, sizeof(prefix), "prefix");
	tmp_path(bdir, sizeof(bdir), "hello-build");
	snprintf(src, sizeof(src), "%s/examples/hello-optim", source_dir);
	snprintf(pp, sizeof(pp), "-DCMAKE_PREFIX_PATH=%s", prefix);
	setenv("CC", "clang", 1);

	char *install[] = { "cmake", "--install", build_dir, "--prefix", prefix, NULL };
	run_tool(install, "install");
	char *configure[] = { "cmake", "-S", src, "-B", bdir, pp, "-DCMAKE_BUILD_TYPE=Release",
			      NULL };
	run_tool(configure, "configure");
	char *build[] = { "cmake", "--build", bdir, NULL };
	run_tool(build, "build");
	snprintf(so, sizeof(so), "%s/plugins/optim/hello.so", bdir);
	ck_assert_msg(exists(so), "%s missing", so);

	snprintf(env, sizeof(env), "%s/plugins:%s", bdir, getenv("FW_PLUGIN_PATH"));
	setenv("FW_PLUGIN_PATH", env, 1);
	run(&r, "list", NULL);
	expect_ok(&r);
	ck_has(r.out, "optim/hello");
	ck_has(r.out, so);
	result_free(&r);

	snprintf(rd, sizeof(rd), "%s/rd-hello", scratch);
	snprintf(rdarg, sizeof(rdarg), "--run-dir=%s", rd);
	snprintf(plugins, sizeof(plugins), "--plugins=arch/tiny,attention/naive,%s", so);
	run(&r, "train", plugins, "--data", train_bin, "--train-iters=3", rdarg, SMALL, NULL);
	expect_ok(&r);
	result_free(&r);
	struct metrics m;
	metrics_read(&m, rd);
	check_train_lines(&m, 1, 3);
	free(m.text);
}
END_TEST

/* One map from status to exit code (report.c): the same failure exits the
 * same way in every command, and with --help too. */
START_TEST(test_exit_codes)
{
	static const char *const cmds[] = { "train", "eval", "generate", "plan" };
	struct result r;
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		for (int help = 0; help < 2; help++) {
			/* a missing file is a runtime failure (FW_ERR_IO) */
			run(&r, cmds[i], "--config=/nonexistent/run.ini", help ? "--help" : NULL,
			    NULL);
			expect_fail(&r, 1, "/nonexistent/run.ini", NULL, NULL);
			result_free(&r);
			/* a name the command line gets wrong is a usage error */
			run(&r, cmds[i], "--plugins=arch/nope", help ? "--help" : NULL, NULL);
			expect_fail(&r, 2, "arch/nope", NULL, NULL);
			result_free(&r);
			run(&r, cmds[i], PLUGS, "--no-such-option=1", help ? "--help" : NULL, NULL);
			expect_fail(&r, 2, "--no-such-option", NULL, NULL);
			result_free(&r);
		}
	}
}
END_TEST

static Suite *fwrun_suite(void)
{
	Suite *s = suite_create("fwrun");
	struct { const char *name; const TTest *test; } cases[] = {
		{ "help", test_help },
		{ "usage", test_usage_errors },
		{ "exit_codes", test_exit_codes },
		{ "list", test_list },
		{ "plan", test_plan },
		{ "narrow_affinity", test_narrow_affinity },
		{ "bad_plugins", test_bad_plugins_cli },
		{ "bad_data", test_bad_data },
		{ "bad_checkpoints", test_bad_checkpoints },
		{ "train", test_train_metrics },
		{ "peft_probe", test_train_peft_probe },
		{ "finetune", test_finetune_from_checkpoint },
		{ "hook_failure", test_hook_failure },
		{ "config", test_config_roundtrip },
		{ "resume", test_resume_exact },
		{ "sigint", test_sigint },
		{ "hello_optim", test_hello_optim },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		TCase *tc = tcase_create(cases[i].name);
		tcase_set_timeout(tc, 300);
		tcase_add_unchecked_fixture(tc, scratch_up, scratch_down);
		tcase_add_checked_fixture(tc, reset_env, NULL);
		tcase_add_test(tc, cases[i].test);
		suite_add_tcase(s, tc);
	}
	return s;
}

int main(void)
{
	const char *b = getenv("FW_BUILD_DIR"), *src = getenv("FW_SOURCE_DIR");
	if (!b || !*b || !src || !*src) {
		fprintf(stderr, "test_fwrun: FW_BUILD_DIR/FW_SOURCE_DIR not set (run through ctest)\n");
		return 1;
	}
	snprintf(build_dir, sizeof(build_dir), "%s", b);
	snprintf(source_dir, sizeof(source_dir), "%s", src);
	if (getenv("FW_FWRUN") && *getenv("FW_FWRUN"))
		snprintf(fwrun, sizeof(fwrun), "%s", getenv("FW_FWRUN"));
	else
		snprintf(fwrun, sizeof(fwrun), "%s/tools/fwrun", b);
	/* the test plugins, then the build tree's: nothing installed shadows them */
	snprintf(default_path, sizeof(default_path), "%s/test-plugins:%s/plugins", b, b);
	return fwt_run_suite(fwrun_suite());
}
