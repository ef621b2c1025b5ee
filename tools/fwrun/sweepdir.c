/* sweepdir.c - metrics.jsonl curves and sweep.jsonl records (sweepdir.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sweepdir.h"

static bool push(int64_t **steps, double **values, int *n, int *cap, int64_t step, double v)
{
	if (*n == *cap) {
		int c = *cap ? 2 * *cap : 256;
		int64_t *s = realloc(*steps, sizeof(int64_t) * (size_t)c);
		if (s)
			*steps = s;
		double *x = realloc(*values, sizeof(double) * (size_t)c);
		if (x)
			*values = x;
		if (!s || !x)
			return false;
		*cap = c;
	}
	(*steps)[*n] = step;
	(*values)[(*n)++] = v;
	return true;
}

static void drop_after(const int64_t *steps, int *n, int64_t step)
{
	while (*n > 0 && steps[*n - 1] > step)
		(*n)--;
}

bool curves_read(const char *run_dir, struct run_curves *c)
{
	char path[4200], line[8192];
	*c = (struct run_curves){ 0 };
	snprintf(path, sizeof(path), "%s/metrics.jsonl", run_dir);
	FILE *f = fopen(path, "r");
	if (!f)
		return false;
	while (fgets(line, sizeof(line), f)) {
		json_t *r = json_loads(line, 0, NULL);
		const char *type = json_string_value(json_object_get(r, "type"));
		json_int_t step = json_integer_value(json_object_get(r, "step"));
		if (type && !strcmp(type, "marker")) {
			drop_after(c->train_step, &c->n_train, step);
			drop_after(c->eval_step, &c->n_eval, step);
		} else if (type && !strcmp(type, "train")) {
			push(&c->train_step, &c->train_loss, &c->n_train, &c->cap_train, step,
			     json_number_value(json_object_get(r, "loss")));
		} else if (type && !strcmp(type, "eval")) {
			push(&c->eval_step, &c->eval_loss, &c->n_eval, &c->cap_eval, step,
			     json_number_value(json_object_get(r, "eval_loss")));
		}
		json_decref(r);
	}
	fclose(f);
	return true;
}

void curves_free(struct run_curves *c)
{
	free(c->train_step);
	free(c->eval_step);
	free(c->train_loss);
	free(c->eval_loss);
	*c = (struct run_curves){ 0 };
}

void curves_metric(const struct run_curves *c, const char *metric, const int64_t **step,
		   const double **value, int *n)
{
	bool eval = !strcmp(metric, "eval_loss");
	*step = eval ? c->eval_step : c->train_step;
	*value = eval ? c->eval_loss : c->train_loss;
	*n = eval ? c->n_eval : c->n_train;
}

json_t *sweep_record_of(json_t **r, int n, const char *id)
{
	for (int i = 0; i < n; i++) {
		const char *t = json_string_value(json_object_get(r[i], "id"));
		if (t && !strcmp(t, id))
			return r[i];
	}
	return NULL;
}

json_t **sweep_records(const char *dir, int *n)
{
	char path[4200], line[65536];
	snprintf(path, sizeof(path), "%s/sweep.jsonl", dir);
	*n = 0;
	FILE *f = fopen(path, "r");
	if (!f)
		return NULL;
	json_t **r = NULL;
	while (fgets(line, sizeof(line), f)) {
		json_t *rec = json_loads(line, 0, NULL);
		const char *id = json_string_value(json_object_get(rec, "id"));
		if (!id) {                /* a torn last line of a killed writer */
			json_decref(rec);
			continue;
		}
		json_t *old = sweep_record_of(r, *n, id);
		if (old) {               /* the later record wins, in the earlier place */
			json_object_clear(old);
			json_object_update(old, rec);
			json_decref(rec);
			continue;
		}
		json_t **nr = realloc(r, sizeof(json_t *) * (size_t)(*n + 1));
		if (!nr) {
			json_decref(rec);
			break;
		}
		r = nr;
		r[(*n)++] = rec;
	}
	fclose(f);
	return r;
}

void sweep_records_free(json_t **r, int n)
{
	for (int i = 0; i < n; i++)
		json_decref(r[i]);
	free(r);
}
