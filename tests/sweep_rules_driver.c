/* sweep_rules_driver.c - the early-stopping rules of fw/runtime/sweep.h on
 * cases read as JSON from stdin, decisions printed as JSON (tests/sweep_cli.py
 * compares them with its NumPy transcription of the rules).
 * Input: {"median": [{"minimize", "grace", "min_trials", "t", "self": [steps, values],
 *                     "done": [[steps, values], ...]}, ...],
 *         "asha": [{"minimize", "min_steps", "eta", "max_steps",
 *                   "reports": [[trial, step, value], ...]}, ...]}
 * Output: {"median": [bool, ...], "asha": [[bool per report], ...]} */
#include <stdio.h>
#include <stdlib.h>

#include <jansson.h>

#include "fw/runtime/sweep.h"

struct curve_buf {
	int64_t *step;
	double *value;
};

static struct fw_sweep_curve curve_of(json_t *pair, struct curve_buf *b)
{
	json_t *s = json_array_get(pair, 0), *v = json_array_get(pair, 1);
	int n = (int)json_array_size(s);
	b->step = calloc((size_t)n + 1, sizeof(int64_t));
	b->value = calloc((size_t)n + 1, sizeof(double));
	for (int i = 0; i < n; i++) {
		b->step[i] = json_integer_value(json_array_get(s, (size_t)i));
		b->value[i] = json_number_value(json_array_get(v, (size_t)i));
	}
	return (struct fw_sweep_curve){ b->step, b->value, n };
}

int main(void)
{
	json_error_t e;
	json_t *in = json_loadf(stdin, 0, &e);
	if (!in) {
		fprintf(stderr, "sweep_rules_driver: bad input: %s\n", e.text);
		return 2;
	}
	json_t *out = json_object(), *med = json_array(), *asha = json_array();
	size_t i;
	json_t *c;
	json_array_foreach(json_object_get(in, "median"), i, c) {
		struct fw_sweep_rule r = { FW_SWEEP_STOP_MEDIAN,
					   json_integer_value(json_object_get(c, "grace")),
					   (int)json_integer_value(json_object_get(c, "min_trials")), 1, 3 };
		json_t *done = json_object_get(c, "done");
		int n = (int)json_array_size(done);
		struct curve_buf self_b, *bufs = calloc((size_t)n + 1, sizeof(*bufs));
		struct fw_sweep_curve *curves = calloc((size_t)n + 1, sizeof(*curves));
		for (int k = 0; k < n; k++)
			curves[k] = curve_of(json_array_get(done, (size_t)k), &bufs[k]);
		struct fw_sweep_curve self = curve_of(json_object_get(c, "self"), &self_b);
		bool stop = fw_sweep_median_stop(&r, json_is_true(json_object_get(c, "minimize")),
						 &self, json_integer_value(json_object_get(c, "t")),
						 curves, n);
		json_array_append_new(med, json_boolean(stop));
		for (int k = 0; k < n; k++) {
			free(bufs[k].step);
			free(bufs[k].value);
		}
		free(self_b.step);
		free(self_b.value);
		free(bufs);
		free(curves);
	}
	json_array_foreach(json_object_get(in, "asha"), i, c) {
		struct fw_sweep_rule r = { FW_SWEEP_STOP_ASHA, 0, 0,
					   json_integer_value(json_object_get(c, "min_steps")),
					   json_number_value(json_object_get(c, "eta")) };
		struct fw_sweep_asha a;
		fw_sweep_asha_init(&a, &r, json_is_true(json_object_get(c, "minimize")),
				   json_integer_value(json_object_get(c, "max_steps")));
		json_t *dec = json_array(), *rep;
		size_t k;
		json_array_foreach(json_object_get(c, "reports"), k, rep) {
			bool stop = fw_sweep_asha_report(&a, json_integer_value(json_array_get(rep, 0)),
							 json_integer_value(json_array_get(rep, 1)),
							 json_number_value(json_array_get(rep, 2)));
			json_array_append_new(dec, json_boolean(stop));
		}
		fw_sweep_asha_free(&a);
		json_array_append_new(asha, dec);
	}
	json_object_set_new(out, "median", med);
	json_object_set_new(out, "asha", asha);
	json_dumpf(out, stdout, JSON_COMPACT);
	putchar('\n');
	json_decref(out);
	json_decref(in);
	return 0;
}
