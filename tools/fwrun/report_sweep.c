/* report_sweep.c - fwrun report DIR...: the results of runs and sweeps as a
 * table (markdown and CSV, sorted by the metric, one column per axis, mean
 * and std per configuration), loss curves of every trial and the metric
 * against each axis, plotted by gnuplot (Debian's gnuplot-nox) as SVG files,
 * and report.html holding all of it inline (no script, no network). */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "fwrun.h"
#include "sweepdir.h"

extern char **environ;

static const char report_usage[] =
	"usage: fwrun report DIR... [--out=DIR] [--metric=eval_loss|loss] [--direction=min|max]\n"
	"Reports runs (directories with metrics.jsonl) and sweeps (with sweep.jsonl):\n"
	"results.md and results.csv (sorted by the metric's final value, one column per axis,\n"
	"mean and std per configuration), train_loss.svg, eval_loss.svg and metric_vs_AXIS.svg\n"
	"(gnuplot), and report.html with all of it inline. OUT defaults to DIR/report for one\n"
	"DIR, else ./report. The metric and direction default to the sweep's (eval_loss, min).\n";

struct trial {
	char label[64], dir[4400], status[16], *error;
	int64_t seed, steps;
	json_t *params;               /* axis -> value (string) */
	double final, best, time_s, rss;
	struct run_curves c;
};

struct report {
	struct trial *t;
	int n;
	char metric[32];
	bool minimize, metric_set;
	const char **axis;
	int n_axes;
};

static struct trial *new_trial(struct report *r)
{
	struct trial *t = realloc(r->t, sizeof(*t) * (size_t)(r->n + 1));
	if (!t)
		return NULL;
	r->t = t;
	t = &r->t[r->n++];
	*t = (struct trial){ .seed = -1, .final = NAN, .best = NAN, .time_s = NAN, .rss = NAN };
	t->params = json_object();
	return t;
}

static bool is_dir_with(const char *dir, const char *file)
{
	char p[4400];
	struct stat st;
	snprintf(p, sizeof(p), "%s/%s", dir, file);
	return stat(p, &st) == 0;
}

static int add_sweep(struct report *r, const char *dir)
{
	char ini[4300];
	snprintf(ini, sizeof(ini), "%s/sweep.ini", dir);
	struct fw_sweep sw;
	struct fw_err err = { 0 };
	if (fw_sweep_parse(ini, &sw, &err) == FW_OK) {
		if (!r->metric_set) {
			snprintf(r->metric, sizeof(r->metric), "%s", sw.metric);
			r->minimize = sw.minimize;
		}
		fw_sweep_free(&sw);
	}
	int n = 0;
	json_t **rec = sweep_records(dir, &n);
	for (int i = 0; i < n; i++) {
		struct trial *t = new_trial(r);
		if (!t)
			break;
		json_t *x = rec[i];
		snprintf(t->label, sizeof(t->label), "t%lld",
			 (long long)json_integer_value(json_object_get(x, "index")) + 1);
		snprintf(t->dir, sizeof(t->dir), "%s/%s", dir,
			 json_string_value(json_object_get(x, "dir")) ?
			 json_string_value(json_object_get(x, "dir")) : "");
		snprintf(t->status, sizeof(t->status), "%s",
			 json_string_value(json_object_get(x, "status")) ?
			 json_string_value(json_object_get(x, "status")) : "?");
		const char *e = json_string_value(json_object_get(x, "error"));
		t->error = e ? strdup(e) : NULL;
		json_t *seed = json_object_get(x, "seed");
		t->seed = json_is_integer(seed) ? json_integer_value(seed) : -1;
		const char *k;
		json_t *v;
		json_object_foreach(json_object_get(x, "params"), k, v)
			json_object_set_new(t->params, k, json_string(json_is_string(v) ?
								    json_string_value(v) : "-"));
		t->time_s = json_number_value(json_object_get(x, "time_s"));
		t->rss = json_number_value(json_object_get(x, "peak_rss_mib"));
		json_t *ss = json_object_get(x, "stop_step");
		curves_read(t->dir, &t->c);
		for (int s = 0; ss && s < 2; s++) {      /* a stopped trial's results end there */
			int64_t *steps = s ? t->c.eval_step : t->c.train_step;
			int *cnt = s ? &t->c.n_eval : &t->c.n_train;
			while (*cnt && steps[*cnt - 1] > json_integer_value(ss))
				(*cnt)--;
		}
	}
	sweep_records_free(rec, n);
	return 0;
}

/* config.ini's [run] keys as they are, a plugin's as SECTION.KEY. */
static int config_entry(void *arg, const char *section, const char *key, const char *value,
			int line)
{
	char k[300];
	(void)line;
	if (!key)
		return 1;
	if (*section && strcmp(section, "run"))
		snprintf(k, sizeof(k), "%s.%s", section, key);
	else
		snprintf(k, sizeof(k), "%s", key);
	json_object_set_new(arg, k, json_string(value));
	return 1;
}

/* A run directory: its config.ini's options become axes where runs differ. */
static int add_run(struct report *r, const char *dir)
{
	struct trial *t = new_trial(r);
	if (!t)
		return fail(FW_ERR_NOMEM, "out of memory");
	const char *base = strrchr(dir, '/') && strrchr(dir, '/')[1] ? strrchr(dir, '/') + 1 : dir;
	snprintf(t->label, sizeof(t->label), "%.63s", base);
	snprintf(t->dir, sizeof(t->dir), "%s", dir);
	snprintf(t->status, sizeof(t->status), "run");
	curves_read(dir, &t->c);
	char path[4400];
	size_t n;
	snprintf(path, sizeof(path), "%s/config.ini", dir);
	char *text = fw_rt_read_file(path, &n, NULL);
	if (text)
		fw_rt_ini_parse(text, config_entry, t->params);
	free(text);
	const char *seed = json_string_value(json_object_get(t->params, "seed"));
	t->seed = seed ? strtoll(seed, NULL, 10) : -1;
	return 0;
}

/* Options of run directories that only say where and how often a run writes. */
static bool incidental(const char *key)
{
	static const char *const skip[] = { "run-dir", "save", "load", "log-interval",
					    "save-interval", "threads", "overwrite", "seed" };
	for (size_t i = 0; i < sizeof(skip) / sizeof(skip[0]); i++)
		if (!strcmp(key, skip[i]))
			return true;
	return false;
}

/* Axes: every sweep parameter, and the run options whose values differ. */
static void find_axes(struct report *r)
{
	r->axis = calloc(512, sizeof(char *));
	for (int i = 0; r->axis && i < r->n; i++) {
		const char *k;
		json_t *v;
		json_object_foreach(r->t[i].params, k, v) {
			bool have = false, differ = strcmp(r->t[i].status, "run") != 0;
			for (int a = 0; a < r->n_axes; a++)
				have |= !strcmp(r->axis[a], k);
			if (have || r->n_axes == 512 || (!differ && incidental(k)))
				continue;
			for (int j = 0; j < r->n && !differ; j++) {
				const char *w = json_string_value(json_object_get(r->t[j].params, k));
				differ = !w || strcmp(w, json_string_value(v));
			}
			if (differ)
				r->axis[r->n_axes++] = k;
		}
	}
}

static void summarize(struct report *r, struct trial *t)
{
	const int64_t *step;
	const double *val;
	int n;
	curves_metric(&t->c, r->metric, &step, &val, &n);
	t->final = n ? val[n - 1] : NAN;
	for (int i = 0; i < n; i++)
		if (isnan(t->best) || (r->minimize ? val[i] < t->best : val[i] > t->best))
			t->best = val[i];
	t->steps = t->c.n_train ? t->c.train_step[t->c.n_train - 1] : 0;
}

static const struct report *sort_r;

static int by_metric(const void *a, const void *b)
{
	const struct trial *x = a, *y = b;
	if (isnan(x->final) || isnan(y->final))
		return isnan(x->final) - isnan(y->final);
	double d = sort_r->minimize ? x->final - y->final : y->final - x->final;
	return (d > 0) - (d < 0);
}

static const char *param(const struct trial *t, const char *axis)
{
	const char *v = json_string_value(json_object_get(t->params, axis));
	return v ? v : "";
}

/* --- tables ----------------------------------------------------------------------------------- */

static void csv_field(FILE *f, const char *s)
{
	if (!strpbrk(s, ",\"\n")) {
		fputs(s, f);
		return;
	}
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"')
			fputc('"', f);
		fputc(*s, f);
	}
	fputc('"', f);
}

static void html_text(FILE *f, const char *s)
{
	for (; *s; s++)
		switch (*s) {
		case '<': fputs("&lt;", f); break;
		case '>': fputs("&gt;", f); break;
		case '&': fputs("&amp;", f); break;
		case '"': fputs("&quot;", f); break;
		default: fputc(*s, f);
		}
}

enum fmt { MD, CSV, HTML };

static void cell(FILE *f, enum fmt fm, const char *s, bool first)
{
	if (fm == CSV) {
		if (!first)
			fputc(',', f);
		csv_field(f, s);
	} else if (fm == MD) {
		fprintf(f, "%s %s |", first ? "|" : "", s);
	} else {
		fputs("<td>", f);
		html_text(f, s);
		fputs("</td>", f);
	}
}

static const char *num(double x, char *buf)
{
	if (isnan(x))
		snprintf(buf, 32, "-");
	else
		snprintf(buf, 32, "%.6g", x);
	return buf;
}

static void results_table(FILE *f, const struct report *r, enum fmt fm)
{
	char b[32];
	static const char *const tail[] = { "seed", "status", "final", "best", "steps", "time_s",
					    "peak_rss_mib" };
	if (fm == HTML)
		fputs("<table id=\"results\"><tr>", f);
	for (int c = -2; c < r->n_axes + 7; c++) {
		const char *h = c == -2 ? "rank" : c == -1 ? "trial" : c < r->n_axes ? r->axis[c] :
				tail[c - r->n_axes];
		if (fm == HTML) {
			fputs("<th>", f);
			html_text(f, h);
			fputs("</th>", f);
		} else {
			cell(f, fm, h, c == -2);
		}
	}
	fputs(fm == HTML ? "</tr>\n" : "\n", f);
	if (fm == MD) {
		for (int c = -2; c < r->n_axes + 7; c++)
			fputs(c == -2 ? "|---|" : "---|", f);
		fputc('\n', f);
	}
	for (int i = 0; i < r->n; i++) {
		const struct trial *t = &r->t[i];
		char rank[16], seed[32], steps[32];
		snprintf(rank, sizeof(rank), "%d", i + 1);
		snprintf(seed, sizeof(seed), "%lld", (long long)t->seed);
		snprintf(steps, sizeof(steps), "%lld", (long long)t->steps);
		if (fm == HTML)
			fputs("<tr>", f);
		cell(f, fm, rank, true);
		cell(f, fm, t->label, false);
		for (int a = 0; a < r->n_axes; a++)
			cell(f, fm, param(t, r->axis[a]), false);
		cell(f, fm, t->seed >= 0 ? seed : "-", false);
		cell(f, fm, t->status, false);
		cell(f, fm, num(t->final, b), false);
		cell(f, fm, num(t->best, b), false);
		cell(f, fm, steps, false);
		cell(f, fm, num(t->time_s, b), false);
		cell(f, fm, num(t->rss, b), false);
		fputs(fm == HTML ? "</tr>\n" : "\n", f);
	}
	if (fm == HTML)
		fputs("</table>\n", f);
}

/* Mean and std of the final metric per configuration (the axes' values). */
static void aggregate_table(FILE *f, const struct report *r, enum fmt fm)
{
	bool *seen = calloc((size_t)r->n + 1, sizeof(bool));
	double *x = calloc((size_t)r->n + 1, sizeof(double));
	if (!seen || !x)
		goto out;
	if (fm == HTML)
		fputs("<table id=\"aggregates\"><tr>", f);
	for (int c = 0; c < r->n_axes + 3; c++) {
		const char *h = c < r->n_axes ? r->axis[c] : c == r->n_axes ? "n" :
				c == r->n_axes + 1 ? "mean" : "std";
		if (fm == HTML) {
			fputs("<th>", f);
			html_text(f, h);
			fputs("</th>", f);
		} else {
			cell(f, fm, h, c == 0);
		}
	}
	fputs(fm == HTML ? "</tr>\n" : "\n", f);
	if (fm == MD) {
		for (int c = 0; c < r->n_axes + 3; c++)
			fputs(c == 0 ? "|---|" : "---|", f);
		fputc('\n', f);
	}
	for (int i = 0; i < r->n; i++) {
		if (seen[i])
			continue;
		int n = 0;
		for (int j = i; j < r->n; j++) {
			bool same = true;
			for (int a = 0; a < r->n_axes && same; a++)
				same = !strcmp(param(&r->t[i], r->axis[a]), param(&r->t[j], r->axis[a]));
			if (!same)
				continue;
			seen[j] = true;
			if (!isnan(r->t[j].final))
				x[n++] = r->t[j].final;
		}
		double mean, std;
		char b1[32], b2[32], cnt[16];
		fw_sweep_mean_std(x, n, &mean, &std);
		snprintf(cnt, sizeof(cnt), "%d", n);
		if (fm == HTML)
			fputs("<tr>", f);
		for (int a = 0; a < r->n_axes; a++)
			cell(f, fm, param(&r->t[i], r->axis[a]), a == 0);
		cell(f, fm, cnt, r->n_axes == 0);
		cell(f, fm, num(mean, b1), false);
		cell(f, fm, n > 1 ? num(std, b2) : "-", false);
		fputs(fm == HTML ? "</tr>\n" : "\n", f);
	}
	if (fm == HTML)
		fputs("</table>\n", f);
out:
	free(seen);
	free(x);
}

/* --- plots (gnuplot) -------------------------------------------------------------------------- */

static void gp_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fputc('\\', f);
		fputc(*s, f);
	}
	fputc('"', f);
}

static void trial_title(const struct report *r, const struct trial *t, char *out, size_t len)
{
	size_t n = (size_t)snprintf(out, len, "%s", t->label);
	for (int a = 0; a < r->n_axes && n < len; a++)
		n += (size_t)snprintf(out + n, len - n, " %s=%s", r->axis[a], param(t, r->axis[a]));
	if (t->seed >= 0 && n < len)
		snprintf(out + n, len - n, " seed=%lld", (long long)t->seed);
}

static bool all_numeric(const struct report *r, const char *axis, bool *positive)
{
	*positive = true;
	for (int i = 0; i < r->n; i++) {
		char *end;
		const char *v = param(&r->t[i], axis);
		double x = strtod(v, &end);
		if (end == v || *end)
			return false;
		*positive &= x > 0;
	}
	return true;
}

/* An axis as a file name part: [a-z0-9-], anything else '_'. */
static void safe_name(const char *axis, char *out, size_t len)
{
	snprintf(out, len, "%s", axis);
	for (char *c = out; *c; c++)
		if (!(*c >= 'a' && *c <= 'z') && !(*c >= '0' && *c <= '9') && *c != '-')
			*c = '_';
}

static int write_data(const char *out, struct report *r, FILE *gp)
{
	char path[4400];
	snprintf(path, sizeof(path), "%s/data", out);
	struct fw_err err = { 0 };
	if (fw_dir_make(path, &err) != FW_OK)
		return fail(err.status ? err.status : FW_ERR_IO, "%s", err.msg);
	for (int i = 0; i < r->n; i++) {
		struct trial *t = &r->t[i];
		for (int e = 0; e < 2; e++) {
			snprintf(path, sizeof(path), "%s/data/%d.%s", out, i, e ? "eval" : "train");
			FILE *f = fopen(path, "w");
			if (!f)
				return fail(FW_ERR_IO, "%s: %s", path, strerror(errno));
			int n = e ? t->c.n_eval : t->c.n_train;
			for (int k = 0; k < n; k++)
				fprintf(f, "%lld %.9g\n", (long long)(e ? t->c.eval_step : t->c.train_step)[k],
					(e ? t->c.eval_loss : t->c.train_loss)[k]);
			fclose(f);
		}
	}
	fprintf(gp, "set terminal svg size 900,540 dynamic enhanced font 'sans,11'\n"
		"set grid\nset key outside right top noenhanced\nset style data lines\n");
	for (int e = 0; e < 2; e++) {
		fprintf(gp, "set output '%s/%s_loss.svg'\nset xlabel 'step'\nset ylabel '%s'\n"
			"set title '%s loss per trial'\n", out, e ? "eval" : "train",
			e ? "eval loss" : "train loss", e ? "held-out" : "training");
		int plotted = 0;
		for (int i = 0; i < r->n; i++) {
			if (!(e ? r->t[i].c.n_eval : r->t[i].c.n_train))
				continue;
			char title[600];
			trial_title(r, &r->t[i], title, sizeof(title));
			fprintf(gp, "%s'%s/data/%d.%s' using 1:2 with %s title ", plotted ? ", \\\n  " :
				"plot ", out, i, e ? "eval" : "train", e ? "linespoints" : "lines");
			gp_string(gp, title);
			plotted++;
		}
		if (!plotted)           /* an empty plot says so instead of failing */
			fprintf(gp, "set label 1 'no %s records' at graph 0.4, 0.5\nplot [0:1][0:1] NaN "
				"notitle\nunset label 1", e ? "eval" : "train");
		fputc('\n', gp);
	}
	/* the metric against each axis: the trials' final values, per value */
	for (int a = 0; a < r->n_axes; a++) {
		char safe[128];
		safe_name(r->axis[a], safe, sizeof(safe));
		snprintf(path, sizeof(path), "%s/data/axis%d", out, a);
		FILE *f = fopen(path, "w");
		if (!f)
			return fail(FW_ERR_IO, "%s: %s", path, strerror(errno));
		bool positive, numeric = all_numeric(r, r->axis[a], &positive);
		const char *cats[512];
		int n_cats = 0;
		for (int i = 0; i < r->n; i++) {
			const char *v = param(&r->t[i], r->axis[a]);
			int c = 0;
			while (c < n_cats && strcmp(cats[c], v))
				c++;
			if (c == n_cats && n_cats < 512)
				cats[n_cats++] = v;
			if (isnan(r->t[i].final))
				continue;
			if (numeric)
				fprintf(f, "%s %.9g\n", v, r->t[i].final);
			else
				fprintf(f, "%d %.9g \"%s\"\n", c, r->t[i].final, v);
		}
		fclose(f);
		fprintf(gp, "set output '%s/metric_vs_%s.svg'\nset title '%s (final) against %s'\n"
			"set xlabel '%s'\nset ylabel '%s'\nunset logscale x\nset xtics autofreq\n",
			out, safe, r->metric, r->axis[a], r->axis[a], r->metric);
		if (numeric && positive)
			fprintf(gp, "set logscale x\n");
		fprintf(gp, "plot '%s' using 1:2%s with points pointtype 7 pointsize 1.2 title "
			"'trials'\n", path, numeric ? "" : ":xtic(3)");
	}
	return 0;
}

static int run_gnuplot(const char *script)
{
	pid_t pid;
	char *argv[] = { "gnuplot", (char *)script, NULL };
	int e = posix_spawnp(&pid, "gnuplot", NULL, NULL, argv, environ);
	if (e)
		return fail(FW_ERR_IO, "report: cannot run gnuplot (%s); install Debian's gnuplot-nox",
			   strerror(e));
	int status;
	if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status))
		return fail(FW_ERR_IO, "report: gnuplot failed on %s", script);
	return 0;
}

static void inline_svg(FILE *html, const char *path, const char *id, const char *caption)
{
	size_t n;
	char *svg = fw_rt_read_file(path, &n, NULL);
	fprintf(html, "<figure id=\"%s\">\n", id);
	const char *start = svg ? strstr(svg, "<svg") : NULL;
	if (start)
		fputs(start, html);
	fprintf(html, "<figcaption>");
	html_text(html, caption);
	fprintf(html, "</figcaption></figure>\n");
	free(svg);
}

static int write_file(const char *out, const char *name, const char *text, size_t len)
{
	char path[4400];
	struct fw_err err = { 0 };
	snprintf(path, sizeof(path), "%s/%s", out, name);
	if (fw_file_write_atomic(path, text, len, &err) != FW_OK)
		return fail(err.status ? err.status : FW_ERR_IO, "%s", err.msg);
	return 0;
}

static int write_outputs(const char *out, struct report *r)
{
	char *buf = NULL;
	size_t len = 0;
	int rc = 0;
	struct fw_err err = { 0 };
	if (fw_dir_make(out, &err) != FW_OK)
		return fail(err.status ? err.status : FW_ERR_IO, "%s", err.msg);
	const struct trial *best = r->n && !isnan(r->t[0].final) ? &r->t[0] : NULL;
	char best_text[800] = "no trial has the metric";
	if (best) {
		trial_title(r, best, best_text, sizeof(best_text));
		snprintf(best_text + strlen(best_text), sizeof(best_text) - strlen(best_text),
			 ": %s %.6g", r->metric, best->final);
	}
	FILE *f = open_memstream(&buf, &len);
	fprintf(f, "# fw report\n\n%d trials; metric %s (%s), sorted by its final value.\n\n"
		"Best: %s\n\n", r->n, r->metric, r->minimize ? "min" : "max", best_text);
	results_table(f, r, MD);
	fprintf(f, "\n## Per configuration (final %s over seeds; std is the sample std)\n\n",
		r->metric);
	aggregate_table(f, r, MD);
	fclose(f);
	rc = write_file(out, "results.md", buf, len);
	free(buf);
	f = open_memstream(&buf, &len);
	results_table(f, r, CSV);
	fclose(f);
	if (!rc)
		rc = write_file(out, "results.csv", buf, len);
	free(buf);
	if (rc)
		return rc;
	f = open_memstream(&buf, &len);
	rc = write_data(out, r, f);
	fclose(f);
	if (!rc)
		rc = write_file(out, "plots.gp", buf, len);
	free(buf);
	char script[4400];
	snprintf(script, sizeof(script), "%s/plots.gp", out);
	if (rc || (rc = run_gnuplot(script)))
		return rc;
	f = open_memstream(&buf, &len);
	fprintf(f, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>fw report</title>\n"
		"<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
		"td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}"
		"figure{margin:1em 0}</style></head><body>\n<h1>fw report</h1>\n<p>%d trials; "
		"metric %s (%s), sorted by its final value.</p>\n<p id=\"best\">Best: ", r->n,
		r->metric, r->minimize ? "min" : "max");
	html_text(f, best_text);
	fputs("</p>\n<h2>Results</h2>\n", f);
	results_table(f, r, HTML);
	fputs("<h2>Per configuration</h2>\n", f);
	aggregate_table(f, r, HTML);
	fputs("<h2>Loss curves</h2>\n", f);
	char path[4400];
	snprintf(path, sizeof(path), "%s/train_loss.svg", out);
	inline_svg(f, path, "train-loss", "training loss of every trial");
	snprintf(path, sizeof(path), "%s/eval_loss.svg", out);
	inline_svg(f, path, "eval-loss", "held-out loss of every trial with evaluations");
	fputs("<h2>Metric against each axis</h2>\n", f);
	for (int a = 0; a < r->n_axes; a++) {
		char safe[128], id[160], svg[4600];
		safe_name(r->axis[a], safe, sizeof(safe));
		snprintf(svg, sizeof(svg), "%s/metric_vs_%s.svg", out, safe);
		snprintf(id, sizeof(id), "axis-%s", safe);
		inline_svg(f, svg, id, r->axis[a]);
	}
	fputs("</body></html>\n", f);
	fclose(f);
	rc = write_file(out, "report.html", buf, len);
	free(buf);
	if (!rc)
		fprintf(stderr, "fwrun: report: %s/report.html, results.md, results.csv and %d SVG "
			"plots (%d trials)\n", out, 2 + r->n_axes, r->n);
	return rc;
}

int cmd_report(int argc, char **argv)
{
	struct report r = { .minimize = true };
	snprintf(r.metric, sizeof(r.metric), "eval_loss");
	const char *out = NULL, *dirs[256];
	int n_dirs = 0, rc = 0;
	bool dir_set = false;
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			fputs(report_usage, stdout);
			return EXIT_OK;
		} else if (!strncmp(a, "--out=", 6)) {
			out = a + 6;
		} else if (!strncmp(a, "--metric=", 9)) {
			if (strcmp(a + 9, "eval_loss") && strcmp(a + 9, "loss"))
				return fail(FW_ERR_INVALID, "report: --metric=%s: eval_loss or loss", a + 9);
			snprintf(r.metric, sizeof(r.metric), "%s", a + 9);
			r.metric_set = true;
		} else if (!strncmp(a, "--direction=", 12)) {
			if (strcmp(a + 12, "min") && strcmp(a + 12, "max"))
				return fail(FW_ERR_INVALID, "report: --direction=%s: min or max", a + 12);
			r.minimize = !strcmp(a + 12, "min");
			dir_set = true;
		} else if (a[0] == '-') {
			return fail(FW_ERR_INVALID, "report: unknown option '%s' (see fwrun report --help)", a);
		} else if (n_dirs < 256) {
			dirs[n_dirs++] = a;
		}
	}
	if (!n_dirs)
		return fail(FW_ERR_INVALID, "report: no directory (see fwrun report --help)");
	for (int i = 0; i < n_dirs && !rc; i++) {
		if (is_dir_with(dirs[i], "sweep.jsonl")) {
			bool minimize = r.minimize;
			rc = add_sweep(&r, dirs[i]);      /* the first sweep's metric, unless given */
			if (dir_set)
				r.minimize = minimize;
			r.metric_set = true;
		} else if (is_dir_with(dirs[i], "metrics.jsonl")) {
			rc = add_run(&r, dirs[i]);
		} else {
			rc = fail(FW_ERR_INVALID, "report: %s holds neither sweep.jsonl (a sweep) nor "
				 "metrics.jsonl (a run)", dirs[i]);
		}
	}
	char def[4300];
	if (!out) {
		snprintf(def, sizeof(def), n_dirs == 1 ? "%s/report" : "report", dirs[0]);
		out = def;
	}
	if (!rc) {
		bool evals = false;
		for (int i = 0; i < r.n; i++)
			evals |= r.t[i].c.n_eval > 0;
		if (!r.metric_set && !evals)      /* runs without --valid-data */
			snprintf(r.metric, sizeof(r.metric), "loss");
		find_axes(&r);
		for (int i = 0; i < r.n; i++)
			summarize(&r, &r.t[i]);
		sort_r = &r;
		qsort(r.t, (size_t)r.n, sizeof(*r.t), by_metric);
		rc = write_outputs(out, &r);
	}
	for (int i = 0; i < r.n; i++) {
		curves_free(&r.t[i].c);
		json_decref(r.t[i].params);
		free(r.t[i].error);
	}
	free(r.t);
	free(r.axis);
	return rc;
}
