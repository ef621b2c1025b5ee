/* sweepdir.h - what fwrun sweep and fwrun report read: a run's
 * metrics.jsonl as curves, and a sweep directory's sweep.jsonl. */
#ifndef FWRUN_SWEEPDIR_H
#define FWRUN_SWEEPDIR_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

/* A run's train loss and eval loss per step. A marker record (a resumed or
 * restarted run) drops the records past its step, so the curves are those
 * of one uninterrupted run. */
struct run_curves {
	int64_t *train_step, *eval_step;
	double *train_loss, *eval_loss;
	int n_train, n_eval, cap_train, cap_eval;
};

/* Reads RUN_DIR/metrics.jsonl; false (curves empty) if it cannot be read. */
bool curves_read(const char *run_dir, struct run_curves *c);
void curves_free(struct run_curves *c);
/* The curve of metric (eval_loss or loss). */
void curves_metric(const struct run_curves *c, const char *metric, const int64_t **step,
		   const double **value, int *n);

/* sweep.jsonl's records, the last one per trial id wins (json objects,
 * owned); n is their count. NULL with n = 0 when there is no file. */
json_t **sweep_records(const char *dir, int *n);
void sweep_records_free(json_t **r, int n);
/* The record of trial id, or NULL. */
json_t *sweep_record_of(json_t **r, int n, const char *id);

#endif
